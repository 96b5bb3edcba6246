//! QIDO-RS query parameters (PS3.18 8.3.4) and matching (PS3.4 C.2.2.2).

use std::collections::BTreeSet;
use std::fmt;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_dictionary_std::StandardDataDictionary;

use super::glob::glob_chars;
use super::rows::{InstanceRow, SeriesRow, StudyRow};
use crate::uid::is_valid_uid;

/// The largest accepted query: names plus values, in bytes.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// The most UIDs accepted in one UID list.
pub const MAX_UIDS: usize = 1000;
/// Parameter names are cut to this many characters in errors.
const MAX_NAME_IN_ERROR: usize = 64;

/// The level of a QIDO-RS search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// `/studies`
    Study,
    /// `/series`, `/studies/{study}/series`
    Series,
    /// `/instances`, `/studies/{study}/instances`,
    /// `/studies/{study}/series/{series}/instances`
    Instance,
}

/// Why a QIDO-RS query was refused.
///
/// Carries the offending parameter's name (cut to 64 characters, control
/// characters replaced), never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QidoError {
    /// The query exceeds [`MAX_QUERY_BYTES`].
    #[error("query too large")]
    TooLarge,
    /// Not a parameter or attribute this server supports at this level.
    #[error("unsupported query parameter {0}")]
    UnsupportedParameter(String),
    /// The value is not valid for the parameter.
    #[error("invalid value for query parameter {0}")]
    InvalidValue(String),
    /// A UID list longer than [`MAX_UIDS`].
    #[error("too many values for query parameter {0}")]
    TooManyValues(String),
    /// The parameter (or the same attribute under another name) was given
    /// twice.
    #[error("query parameter {0} given more than once")]
    DuplicateParameter(String),
}

fn param_name(name: &str) -> String {
    name.chars().take(MAX_NAME_IN_ERROR).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Matchable attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attr {
    StudyInstanceUid,
    SeriesInstanceUid,
    SopInstanceUid,
    SopClassUid,
    PatientId,
    PatientName,
    PatientBirthDate,
    PatientSex,
    StudyDate,
    AccessionNumber,
    StudyDescription,
    ReferringPhysicianName,
    StudyId,
    ModalitiesInStudy,
    Modality,
    SeriesDescription,
    SeriesNumber,
    BodyPartExamined,
    InstanceNumber,
}

/// How an attribute's value is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// UID list matching (comma or backslash separated).
    Uid,
    /// Single date or range (DA).
    Date,
    /// Single integer value (IS).
    Int,
    /// Single value or wildcard, case-sensitive (LO, SH).
    Text,
    /// Single value or wildcard, case-insensitive, on the whole name or any
    /// component group (PN).
    Name,
    /// Comma-separated list of single values or wildcards, any of which may
    /// match, case-sensitive (CS).
    Code,
}

struct Def {
    attr: Attr,
    keyword: &'static str,
    tag: u32,
    kind: Kind,
    /// The level the attribute belongs to: a query accepts the attributes
    /// of its level and of the levels above (PS3.18 10.6.1.2).
    owner: Level,
}

use Level::{Instance as INSTANCE, Series as SERIES, Study as STUDY};

#[rustfmt::skip]
const DEFS: &[Def] = &[
    Def { attr: Attr::StudyInstanceUid, keyword: "StudyInstanceUID", tag: 0x0020_000D, kind: Kind::Uid, owner: STUDY },
    Def { attr: Attr::SeriesInstanceUid, keyword: "SeriesInstanceUID", tag: 0x0020_000E, kind: Kind::Uid, owner: SERIES },
    Def { attr: Attr::SopInstanceUid, keyword: "SOPInstanceUID", tag: 0x0008_0018, kind: Kind::Uid, owner: INSTANCE },
    Def { attr: Attr::SopClassUid, keyword: "SOPClassUID", tag: 0x0008_0016, kind: Kind::Uid, owner: INSTANCE },
    Def { attr: Attr::PatientId, keyword: "PatientID", tag: 0x0010_0020, kind: Kind::Text, owner: STUDY },
    Def { attr: Attr::PatientName, keyword: "PatientName", tag: 0x0010_0010, kind: Kind::Name, owner: STUDY },
    Def { attr: Attr::PatientBirthDate, keyword: "PatientBirthDate", tag: 0x0010_0030, kind: Kind::Date, owner: STUDY },
    Def { attr: Attr::PatientSex, keyword: "PatientSex", tag: 0x0010_0040, kind: Kind::Code, owner: STUDY },
    Def { attr: Attr::StudyDate, keyword: "StudyDate", tag: 0x0008_0020, kind: Kind::Date, owner: STUDY },
    Def { attr: Attr::AccessionNumber, keyword: "AccessionNumber", tag: 0x0008_0050, kind: Kind::Text, owner: STUDY },
    Def { attr: Attr::StudyDescription, keyword: "StudyDescription", tag: 0x0008_1030, kind: Kind::Text, owner: STUDY },
    Def { attr: Attr::ReferringPhysicianName, keyword: "ReferringPhysicianName", tag: 0x0008_0090, kind: Kind::Name, owner: STUDY },
    Def { attr: Attr::StudyId, keyword: "StudyID", tag: 0x0020_0010, kind: Kind::Text, owner: STUDY },
    Def { attr: Attr::ModalitiesInStudy, keyword: "ModalitiesInStudy", tag: 0x0008_0061, kind: Kind::Code, owner: STUDY },
    Def { attr: Attr::Modality, keyword: "Modality", tag: 0x0008_0060, kind: Kind::Code, owner: SERIES },
    Def { attr: Attr::SeriesDescription, keyword: "SeriesDescription", tag: 0x0008_103E, kind: Kind::Text, owner: SERIES },
    Def { attr: Attr::SeriesNumber, keyword: "SeriesNumber", tag: 0x0020_0011, kind: Kind::Int, owner: SERIES },
    Def { attr: Attr::BodyPartExamined, keyword: "BodyPartExamined", tag: 0x0018_0015, kind: Kind::Code, owner: SERIES },
    Def { attr: Attr::InstanceNumber, keyword: "InstanceNumber", tag: 0x0020_0013, kind: Kind::Int, owner: INSTANCE },
];

/// Parses `GGGGEEEE` (either case).
fn hex_tag(name: &str) -> Option<u32> {
    if name.len() == 8 && name.bytes().all(|b| b.is_ascii_hexdigit()) { u32::from_str_radix(name, 16).ok() } else { None }
}

fn find_def(name: &str) -> Option<&'static Def> {
    match hex_tag(name) {
        Some(tag) => DEFS.iter().find(|d| d.tag == tag),
        None => DEFS.iter().find(|d| d.keyword == name),
    }
}

/// A single value or wildcard pattern, as characters.
#[derive(Clone)]
struct Pattern(Vec<char>);

impl Pattern {
    fn new(s: &str) -> Self {
        Pattern(s.chars().collect())
    }

    fn matches(&self, value: &str) -> bool {
        let text: Vec<char> = value.chars().collect();
        glob_chars(&self.0, &text)
    }
}

fn is_universal(pattern: &str) -> bool {
    pattern.chars().all(|c| c == '*')
}

#[derive(Clone)]
enum Matcher {
    /// Empty value or `*`: every entity matches (the attribute is only
    /// asked for).
    Universal,
    Uids(Vec<String>),
    Date {
        from: Option<u32>,
        to: Option<u32>,
    },
    Int(i64),
    Text(Pattern),
    Name(Pattern),
    Codes(Vec<Pattern>),
}

/// `YYYYMMDD` with a plausible month and day.
fn parse_date(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = s.parse().ok()?;
    let (month, day) = ((n / 100) % 100, n % 100);
    ((1..=12).contains(&month) && (1..=31).contains(&day)).then_some(n)
}

/// A stored DA value; the old `YYYY.MM.DD` form is tolerated.
fn stored_date(value: &str) -> Option<u32> {
    let digits: String = value.trim().chars().filter(|&c| c != '.').collect();
    parse_date(&digits)
}

/// Lower-cases a PN and drops trailing empty components (`Doe^John^^` is
/// `Doe^John`, PS3.5 6.2).
fn normalize_name(s: &str) -> String {
    s.trim().trim_end_matches(['^', ' ']).to_lowercase()
}

impl Matcher {
    /// Fails if the value is invalid for the kind.
    fn parse(kind: Kind, value: &str) -> Result<Matcher, Invalid> {
        let value = value.trim_matches(' ');
        if value.is_empty() {
            return Ok(Matcher::Universal);
        }
        match kind {
            Kind::Uid => {
                let uids: Vec<String> = value.split([',', '\\']).map(|u| u.trim().to_owned()).collect();
                if uids.len() > MAX_UIDS {
                    return Err(Invalid::TooMany);
                }
                if !uids.iter().all(|u| is_valid_uid(u)) {
                    return Err(Invalid::Value);
                }
                Ok(Matcher::Uids(uids))
            }
            Kind::Date => {
                let (from, to) = match value.split_once('-') {
                    None => {
                        let d = parse_date(value).ok_or(Invalid::Value)?;
                        (Some(d), Some(d))
                    }
                    Some((a, b)) => {
                        let bound = |s: &str| -> Result<Option<u32>, Invalid> { if s.is_empty() { Ok(None) } else { parse_date(s).map(Some).ok_or(Invalid::Value) } };
                        (bound(a)?, bound(b)?)
                    }
                };
                match (from, to) {
                    (None, None) => Err(Invalid::Value),
                    (Some(a), Some(b)) if a > b => Err(Invalid::Value),
                    _ => Ok(Matcher::Date { from, to }),
                }
            }
            Kind::Int => {
                if !value.trim_start_matches(['+', '-']).bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Invalid::Value);
                }
                value.parse().map(Matcher::Int).map_err(|_| Invalid::Value)
            }
            Kind::Text if is_universal(value) => Ok(Matcher::Universal),
            Kind::Text => Ok(Matcher::Text(Pattern::new(value))),
            Kind::Name => {
                let name = normalize_name(value);
                if is_universal(&name) { Ok(Matcher::Universal) } else { Ok(Matcher::Name(Pattern::new(&name))) }
            }
            Kind::Code => {
                let codes: Vec<&str> = value.split(',').map(str::trim).collect();
                if codes.iter().any(|c| c.is_empty()) {
                    return Err(Invalid::Value);
                }
                if codes.iter().any(|c| is_universal(c)) {
                    return Ok(Matcher::Universal);
                }
                Ok(Matcher::Codes(codes.into_iter().map(Pattern::new).collect()))
            }
        }
    }

    fn matches(&self, field: Field<'_>) -> bool {
        match (self, field) {
            // Left to the row that has the attribute.
            (_, Field::Unavailable) | (Matcher::Universal, _) => true,
            (Matcher::Uids(uids), Field::Text(Some(v))) => uids.iter().any(|u| u == v),
            (Matcher::Date { from, to }, Field::Text(Some(v))) => stored_date(v).is_some_and(|d| from.is_none_or(|f| d >= f) && to.is_none_or(|t| d <= t)),
            (Matcher::Int(n), Field::Int(Some(v))) => v == *n,
            // A multi-valued attribute matches if one of its values does.
            (Matcher::Text(p), Field::Text(Some(v))) => v.split('\\').any(|x| p.matches(x)),
            (Matcher::Name(p), Field::Text(Some(v))) => v.split('\\').any(|name| {
                let name = normalize_name(name);
                p.matches(&name) || name.split('=').any(|group| p.matches(normalize_group(group)))
            }),
            (Matcher::Codes(ps), Field::Text(Some(v))) => v.split('\\').any(|x| ps.iter().any(|p| p.matches(x.trim()))),
            (Matcher::Codes(ps), Field::List(list)) => list.iter().any(|x| ps.iter().any(|p| p.matches(x))),
            _ => false,
        }
    }
}

fn normalize_group(group: &str) -> &str {
    group.trim_end_matches(['^', ' '])
}

enum Invalid {
    Value,
    TooMany,
}

/// A row's value for an attribute.
#[derive(Clone, Copy)]
enum Field<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
    List(&'a [String]),
    /// The row type does not have the attribute: another row (the study of
    /// a series, the series of an instance) is matched against it.
    Unavailable,
}

fn study_field(row: &StudyRow, attr: Attr) -> Field<'_> {
    fn text(v: &Option<String>) -> Field<'_> {
        Field::Text(v.as_deref())
    }
    match attr {
        Attr::StudyInstanceUid => Field::Text(Some(&row.study_uid)),
        Attr::PatientId => text(&row.patient_id),
        Attr::PatientName => text(&row.patient_name),
        Attr::PatientBirthDate => text(&row.patient_birth_date),
        Attr::PatientSex => text(&row.patient_sex),
        Attr::StudyDate => text(&row.study_date),
        Attr::AccessionNumber => text(&row.accession_number),
        Attr::StudyDescription => text(&row.study_description),
        Attr::ReferringPhysicianName => text(&row.referring_physician_name),
        Attr::StudyId => text(&row.study_id),
        Attr::ModalitiesInStudy => Field::List(&row.modalities_in_study),
        _ => Field::Unavailable,
    }
}

fn series_field(row: &SeriesRow, attr: Attr) -> Field<'_> {
    match attr {
        Attr::StudyInstanceUid => Field::Text(Some(&row.study_uid)),
        Attr::SeriesInstanceUid => Field::Text(Some(&row.series_uid)),
        Attr::Modality => Field::Text(row.modality.as_deref()),
        Attr::SeriesDescription => Field::Text(row.series_description.as_deref()),
        Attr::SeriesNumber => Field::Int(row.series_number.map(i64::from)),
        Attr::BodyPartExamined => Field::Text(row.body_part_examined.as_deref()),
        _ => Field::Unavailable,
    }
}

fn instance_field(row: &InstanceRow, attr: Attr) -> Field<'_> {
    match attr {
        Attr::StudyInstanceUid => Field::Text(Some(&row.study_uid)),
        Attr::SeriesInstanceUid => Field::Text(Some(&row.series_uid)),
        Attr::SopInstanceUid => Field::Text(Some(&row.sop_instance_uid)),
        Attr::SopClassUid => Field::Text(Some(&row.sop_class_uid)),
        Attr::InstanceNumber => Field::Int(row.instance_number.map(i64::from)),
        _ => Field::Unavailable,
    }
}

/// The attributes asked for with `includefield`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncludeFields {
    all: bool,
    tags: BTreeSet<u32>,
}

impl IncludeFields {
    /// Whether `includefield=all` was given.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// The tags asked for by keyword or tag, as `0xGGGGEEEE`, sorted.
    pub fn tags(&self) -> impl Iterator<Item = u32> + '_ {
        self.tags.iter().copied()
    }

    /// Whether the attribute `0xGGGGEEEE` was asked for (always true with
    /// `all`).
    pub fn contains(&self, tag: u32) -> bool {
        self.all || self.tags.contains(&tag)
    }

    /// Adds one `includefield` value: `all`, or a comma-separated list of
    /// keywords (from the standard dictionary) and `GGGGEEEE` tags.
    fn add(&mut self, value: &str) -> Result<(), Invalid> {
        for field in value.split(',').map(str::trim) {
            if field == "all" {
                self.all = true;
            } else if let Some(tag) = hex_tag(field) {
                self.tags.insert(tag);
            } else if let Some(entry) = StandardDataDictionary.by_name(field) {
                let tag = entry.tag();
                self.tags.insert((u32::from(tag.0) << 16) | u32::from(tag.1));
            } else {
                return Err(Invalid::Value);
            }
        }
        Ok(())
    }
}

struct Filter {
    def: &'static Def,
    /// The attribute matched (Modality becomes ModalitiesInStudy in a study
    /// search).
    attr: Attr,
    matcher: Matcher,
}

fn rank(level: Level) -> u8 {
    match level {
        Level::Study => 0,
        Level::Series => 1,
        Level::Instance => 2,
    }
}

/// A checked QIDO-RS query.
///
/// Supported attributes, by keyword or `GGGGEEEE` tag (hex digits in either
/// case). A search accepts the attributes of its level and of the levels
/// above (PS3.18 10.6.1.2: a series search may match study attributes, an
/// instance search study and series attributes):
///
/// | level | attribute | matching |
/// |---|---|---|
/// | study | StudyInstanceUID | UID list |
/// | study | PatientID, AccessionNumber, StudyID, StudyDescription | single value or wildcard, case-sensitive |
/// | study | PatientName, ReferringPhysicianName | single value or wildcard, case-insensitive |
/// | study | StudyDate, PatientBirthDate | date or range |
/// | study | PatientSex, ModalitiesInStudy | code list |
/// | series | SeriesInstanceUID | UID list |
/// | series | Modality (in a study search: ModalitiesInStudy) | code list |
/// | series | BodyPartExamined | code list |
/// | series | SeriesDescription | single value or wildcard, case-sensitive |
/// | series | SeriesNumber | integer |
/// | instance | SOPInstanceUID, SOPClassUID | UID list |
/// | instance | InstanceNumber | integer |
///
/// SeriesDate is not supported ([`SeriesRow`] has no date): refused like
/// any unsupported attribute.
///
/// * **UID list**: one UID or several separated by commas (or backslashes),
///   at most [`MAX_UIDS`], each checked for UID syntax.
/// * **Single value or wildcard** (PS3.4 C.2.2.2.1, C.2.2.2.4): `*` matches
///   any run of characters, `?` one character, otherwise the whole value
///   must be equal. Values are trimmed of spaces. A multi-valued attribute
///   matches if one of its values does.
/// * **Person names** are compared case-insensitively, ignoring trailing
///   empty components (`Doe^John^^`), against the whole name and against
///   each component group (alphabetic, ideographic, phonetic), with
///   `fuzzymatching=false` semantics whatever `fuzzymatching` says.
/// * **Code list**: comma-separated values or wildcards, any of which may
///   match; ModalitiesInStudy matches if any modality of the study does.
/// * **Date or range** (PS3.4 C.2.2.2.5): `YYYYMMDD`, `A-B`, `-B` or `A-`,
///   inclusive.
/// * **Integer**: an optionally signed decimal integer, equal.
/// * An empty value, or only `*`, is universal matching: every entity
///   matches. Non-universal matching never matches an entity that lacks the
///   value.
///
/// Each row is matched against the attributes it has: [`Query::matches_study`]
/// checks the study attributes (and ignores the others), and so on. A series
/// search carrying study attributes must therefore check the series' study
/// with `matches_study` as well as the series with `matches_series`; an
/// instance search, the study, the series and the instance.
///
/// Other parameters: `limit` and `offset` (non-negative integers, exposed
/// for the caller to page with), `includefield` (see [`IncludeFields`]; may
/// be repeated), `fuzzymatching` (`true` or `false`: accepted, but no fuzzy
/// matching is done; the caller may answer a warning when
/// [`Query::fuzzy_matching`] is true), and `patient` (the server's own
/// parameter, ignored here). Anything else — unknown parameters, attributes
/// not supported at the level, sequence paths — is a
/// [`QidoError::UnsupportedParameter`]. An attribute given twice is a
/// [`QidoError::DuplicateParameter`].
///
/// `Debug` shows the attribute keywords but not the values (they can hold
/// patient names and identifiers).
pub struct Query {
    level: Level,
    filters: Vec<Filter>,
    limit: Option<usize>,
    offset: usize,
    include: IncludeFields,
    fuzzy: bool,
}

impl fmt::Debug for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Query")
            .field("level", &self.level)
            .field("attributes", &self.filters.iter().map(|f| f.def.keyword).collect::<Vec<_>>())
            .field("limit", &self.limit)
            .field("offset", &self.offset)
            .field("include", &self.include)
            .field("fuzzy_matching", &self.fuzzy)
            .finish()
    }
}

/// A non-negative decimal integer of at most `u32::MAX`.
fn parse_count(value: &str) -> Option<usize> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u32>().ok().and_then(|n| usize::try_from(n).ok())
}

impl Query {
    /// Parses the decoded query pairs of a search at `level`; see [`Query`]
    /// for what is accepted.
    pub fn parse(level: Level, pairs: &[(String, String)]) -> Result<Query, QidoError> {
        let size = pairs.iter().fold(0usize, |n, (k, v)| n.saturating_add(k.len()).saturating_add(v.len()));
        if size > MAX_QUERY_BYTES {
            return Err(QidoError::TooLarge);
        }
        let mut query = Query { level, filters: Vec::new(), limit: None, offset: 0, include: IncludeFields::default(), fuzzy: false };
        let mut seen: Vec<&str> = Vec::new();
        let mut once = |key: &'static str, name: &str| {
            if seen.contains(&key) {
                Err(QidoError::DuplicateParameter(param_name(name)))
            } else {
                seen.push(key);
                Ok(())
            }
        };
        let invalid = |name: &str| QidoError::InvalidValue(param_name(name));
        for (name, value) in pairs {
            match name.as_str() {
                "patient" => {}
                "limit" => {
                    once("limit", name)?;
                    query.limit = Some(parse_count(value).ok_or_else(|| invalid(name))?);
                }
                "offset" => {
                    once("offset", name)?;
                    query.offset = parse_count(value).ok_or_else(|| invalid(name))?;
                }
                "fuzzymatching" => {
                    once("fuzzymatching", name)?;
                    query.fuzzy = match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(invalid(name)),
                    };
                }
                "includefield" => query.include.add(value).map_err(|_| invalid(name))?,
                _ => {
                    let def =
                        find_def(name).filter(|d| rank(d.owner) <= rank(level) || d.attr == Attr::Modality).ok_or_else(|| QidoError::UnsupportedParameter(param_name(name)))?;
                    once(def.keyword, name)?;
                    // In a study search, Modality means ModalitiesInStudy.
                    let attr = match (def.attr, level) {
                        (Attr::Modality, Level::Study) => Attr::ModalitiesInStudy,
                        (attr, _) => attr,
                    };
                    let matcher = Matcher::parse(def.kind, value).map_err(|e| match e {
                        Invalid::Value => invalid(name),
                        Invalid::TooMany => QidoError::TooManyValues(param_name(name)),
                    })?;
                    query.filters.push(Filter { def, attr, matcher });
                }
            }
        }
        Ok(query)
    }

    /// The level the query was parsed for.
    pub fn level(&self) -> Level {
        self.level
    }

    /// `limit`, if given: return at most this many rows.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// `offset` (0 if not given): skip this many matching rows.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// `includefield`.
    pub fn include_fields(&self) -> &IncludeFields {
        &self.include
    }

    /// Whether `fuzzymatching=true` was asked for (it is not performed).
    pub fn fuzzy_matching(&self) -> bool {
        self.fuzzy
    }

    /// The matched attributes (keyword and `0xGGGGEEEE` tag), in query order,
    /// universal matches included.
    pub fn attributes(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        self.filters.iter().map(|f| (f.def.keyword, f.def.tag))
    }

    /// Whether the study matches every study attribute of the query (other
    /// attributes are ignored: see [`Query`]).
    pub fn matches_study(&self, row: &StudyRow) -> bool {
        self.filters.iter().all(|f| f.matcher.matches(study_field(row, f.attr)))
    }

    /// Whether the series matches every attribute of the query that a
    /// series row has (StudyInstanceUID and the series attributes).
    pub fn matches_series(&self, row: &SeriesRow) -> bool {
        self.filters.iter().all(|f| f.matcher.matches(series_field(row, f.attr)))
    }

    /// Whether the instance matches every attribute of the query that an
    /// instance row has (StudyInstanceUID, SeriesInstanceUID and the
    /// instance attributes).
    pub fn matches_instance(&self, row: &InstanceRow) -> bool {
        self.filters.iter().all(|f| f.matcher.matches(instance_field(row, f.attr)))
    }
}
