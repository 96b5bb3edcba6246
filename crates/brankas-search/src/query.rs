//! Parsed search queries: parsing (§3.1.1), in-memory matching and sorting.

use std::cmp::Ordering;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::date::{self, Range};
use crate::decimal::Dec;
use crate::error::QueryError;
use crate::fhirpath::{Item, Node, reference_text};
use crate::reference;
use crate::registry::{ParamKind, Registry, SearchParam};
use crate::text;

/// More query parameters than this is refused ([`QueryError::TooComplex`]).
pub const MAX_PARAMS: usize = 50;
/// More OR-values (summed over all parameters) than this is refused.
pub const MAX_OR_VALUES: usize = 100;

/// Control parameters that this server does not implement; using them is an
/// error rather than being silently ignored, since ignoring `_include` or
/// `_has` would return a different answer than the client asked for.
const UNSUPPORTED_CONTROL: &[&str] = &["_has", "_contained", "_containedType", "_filter", "_list", "_type", "_query", "_text", "_content"];

// ---------------------------------------------------------------- public types

/// One `_sort` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// The parameter sorted by (`date`, `_lastUpdated`, `_id`).
    pub param: String,
    /// `true` for `-param`.
    pub descending: bool,
}

/// `_summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    /// `_summary=true`: only summary elements.
    True,
    /// `_summary=text`: text, id, meta and mandatory elements.
    Text,
    /// `_summary=data`: everything but the narrative.
    Data,
    /// `_summary=count`: only the total, no entries.
    Count,
    /// `_summary=false`: everything.
    False,
}

/// `_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotalMode {
    /// `_total=none`.
    None,
    /// `_total=estimate`.
    Estimate,
    /// `_total=accurate`.
    Accurate,
}

/// The result-shaping parameters of a query (§3.1.1.5): everything that
/// does not select resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultParams {
    /// `_count` as given; the caller caps it.
    pub count: Option<usize>,
    /// `_sort` keys, in order.
    pub sort: Vec<SortKey>,
    /// `_summary`.
    pub summary: Option<Summary>,
    /// `_total`.
    pub total: Option<TotalMode>,
    /// `_elements`, split on commas, empty names dropped.
    pub elements: Vec<String>,
    /// `_format`, as given.
    pub format: Option<String>,
    /// `_pretty`.
    pub pretty: Option<bool>,
    /// `_include` values, in order.
    pub include: Vec<Include>,
    /// `_revinclude` values, in order.
    pub revinclude: Vec<Include>,
}

/// One `_include` or `_revinclude` (R4 §3.1.1.5.4): the references that reference
/// parameter `param` of `source` finds. For `_include` they are followed from the results
/// to what they point at; for `_revinclude` they are found pointing at the results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The resource type the parameter belongs to (`Observation` in `Observation:subject`).
    pub source: String,
    /// The reference parameter's code, or `None` for `*` (every reference parameter).
    pub param: Option<String>,
    /// Only references to this type (`Observation:subject:Patient`).
    pub target: Option<String>,
    /// `:iterate` (`:recurse`, its STU3 name, is taken as the same): applied to included
    /// resources too, not only to the matches.
    pub iterate: bool,
}

/// Most `_include` and `_revinclude` values in one query.
const MAX_INCLUDES: usize = 16;

/// An exact-identity lookup on Patient (see [`Query::identity`]). Values are
/// as given (unescaped, not normalised). `Debug` redacts them: they are
/// patient data.
#[derive(Clone, PartialEq, Eq)]
pub enum IdentityQuery {
    /// `identifier=system|value`, both present.
    Identifier {
        /// The identifier system (e.g. the NIK namespace URI).
        system: String,
        /// The identifier value.
        value: String,
    },
    /// `phone=<v>` or `telecom=<v>` (or `telecom=phone|<v>`).
    Phone(String),
    /// `name=<v>` with `birthdate=YYYY-MM-DD`, optionally `gender=<code>`.
    NameBirthDate {
        /// The name as searched.
        name: String,
        /// The birth date, `YYYY-MM-DD`.
        birth_date: String,
        /// The gender code, if given once as a plain value.
        gender: Option<String>,
    },
}

impl fmt::Debug for IdentityQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityQuery::Identifier { .. } => f.write_str("Identifier { .. }"),
            IdentityQuery::Phone(_) => f.write_str("Phone(..)"),
            IdentityQuery::NameBirthDate { gender, .. } => {
                write!(f, "NameBirthDate {{ gender: {} .. }}", gender.is_some())
            }
        }
    }
}

// ---------------------------------------------------------------- internals

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// Splits a leading comparison prefix off a number/date/quantity value
/// (none means `eq`).
fn split_prefix(s: &str) -> (Prefix, &str) {
    let p = match s.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, s),
    };
    (p, &s[2..])
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Modifier {
    None,
    Missing,
    Exact,
    Contains,
    Not,
    Text,
    OfType,
    Identifier,
    Type(String),
    Below,
    Above,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrMode {
    Prefix,
    Exact,
    Contains,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UriMode {
    Exact,
    Below,
    Above,
}

/// A parsed token `[system|]code`: `system` `None` = any system, `Some("")`
/// = no system (`|code`); `code` `None` = any code (`system|`).
#[derive(Debug, Clone)]
struct TokenQ {
    system: Option<String>,
    code: Option<String>,
}

#[derive(Debug, Clone)]
enum RefQ {
    Typed {
        ty: String,
        id: String,
        version: Option<String>,
    },
    /// A bare id where the parameter has several target types.
    Id(String),
    /// Any other literal (absolute URL, canonical, urn:) and, when it ends
    /// in `Type/id`, those parts.
    Literal {
        text: String,
        tail: Option<(String, String, Option<String>)>,
    },
}

#[derive(Debug, Clone)]
struct NumQ {
    prefix: Prefix,
    v: Dec,
    lo: Dec,
    hi: Dec,
}

#[derive(Debug, Clone)]
enum Matcher {
    Number(NumQ),
    Date {
        prefix: Prefix,
        range: Range,
        /// Widening for `ap`.
        pad: i64,
        /// `YYYY-MM-DD` without prefix (only for [`Query::identity`]).
        plain_day: Option<String>,
    },
    Str {
        raw: String,
        folded: String,
        mode: StrMode,
    },
    Token(TokenQ),
    TokenText(String),
    TokenOfType {
        system: String,
        code: String,
        value: String,
    },
    Ref(RefQ),
    RefIdentifier(TokenQ),
    Quantity {
        num: NumQ,
        system: Option<String>,
        code: Option<String>,
    },
    Uri {
        value: String,
        mode: UriMode,
    },
}

#[derive(Debug, Clone)]
enum Test {
    Missing(bool),
    Any { values: Vec<Matcher>, negate: bool },
}

#[derive(Debug, Clone)]
struct Criterion {
    code: String,
    kind: ParamKind,
    modifier: Modifier,
    expr: Arc<Node>,
    test: Test,
}

#[derive(Debug, Clone)]
enum SortBy {
    Id,
    Date(Arc<Node>),
}

/// A parsed search on one resource type.
///
/// Built by [`Query::parse`]; evaluated per resource with
/// [`Query::matches`]; results ordered with [`Query::compare`] or
/// [`Query::sort_resources`]. Its `Debug` output shows parameter names only,
/// never values.
#[derive(Clone)]
pub struct Query {
    resource_type: String,
    criteria: Vec<Criterion>,
    result: ResultParams,
    sort_by: Vec<SortBy>,
    unknown: Vec<String>,
    canonical: String,
    pinned: Option<String>,
    identity: Option<IdentityQuery>,
}

impl fmt::Debug for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Query")
            .field("resource_type", &self.resource_type)
            .field("criteria", &self.criteria.iter().map(|c| c.code.as_str()).collect::<Vec<_>>())
            .field("sort", &self.result.sort)
            .field("unknown", &self.unknown)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------- escaping

/// Splits on `sep` not preceded by a backslash; pieces keep their escapes.
fn split_unescaped(s: &str, sep: u8) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == sep {
            out.push(&s[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    out.push(&s[start.min(s.len())..]);
    out
}

/// Removes search escapes (`\,` `\|` `\$` `\\`); other backslashes stay.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\'
            && let Some(&n) = it.peek()
            && matches!(n, ',' | '|' | '$' | '\\')
        {
            out.push(n);
            it.next();
            continue;
        }
        out.push(c);
    }
    out
}

/// Percent-encodes the characters that would make a canonical form ambiguous.
fn canon_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'&' | b'=' | b'+') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

// ---------------------------------------------------------------- parsing

fn parse_number(s: &str) -> Option<NumQ> {
    let (prefix, rest) = split_prefix(s);
    let v = Dec::parse(rest)?;
    let (lo, hi) = v.precision_bounds()?;
    Some(NumQ { prefix, v, lo, hi })
}

fn parse_token(s: &str) -> Option<TokenQ> {
    let parts = split_unescaped(s, b'|');
    match parts.as_slice() {
        [code] => Some(TokenQ { system: None, code: Some(unescape(code)) }),
        [sys, code] => {
            if sys.is_empty() && code.is_empty() {
                return None;
            }
            Some(TokenQ { system: Some(unescape(sys)), code: (!code.is_empty()).then(|| unescape(code)) })
        }
        _ => None,
    }
}

fn parse_reference(s: &str, param: &SearchParam, modifier: &Modifier) -> Option<RefQ> {
    let v = unescape(s);
    let typed = |p: reference::Parts<'_>| RefQ::Typed { ty: p.ty.to_owned(), id: p.id.to_owned(), version: p.version.map(str::to_owned) };
    if let Modifier::Type(t) = modifier {
        if reference::is_id(&v) {
            return Some(RefQ::Typed { ty: t.clone(), id: v, version: None });
        }
        // `subject:Patient=Patient/1` is redundant but fine; another type
        // in the value contradicts the modifier.
        return match reference::parse(&v) {
            Some(p) if p.ty == t && !v.contains("://") => Some(typed(p)),
            _ => None,
        };
    }
    if v.contains("://") || v.starts_with("urn:") {
        let tail = reference::parse(&v).map(|p| (p.ty.to_owned(), p.id.to_owned(), p.version.map(str::to_owned)));
        return Some(RefQ::Literal { text: v, tail });
    }
    if let Some(p) = reference::parse(&v) {
        return Some(typed(p));
    }
    if reference::is_id(&v) {
        // A bare id is unambiguous when the parameter has one target type.
        return Some(match param.targets.as_slice() {
            [only] => RefQ::Typed { ty: only.clone(), id: v, version: None },
            _ => RefQ::Id(v),
        });
    }
    Some(RefQ::Literal { text: v, tail: None })
}

fn parse_modifier(registry: &Registry, param: &SearchParam, m: Option<&str>) -> Option<Modifier> {
    let Some(m) = m else {
        return Some(Modifier::None);
    };
    if m == "missing" {
        return Some(Modifier::Missing);
    }
    Some(match (param.kind, m) {
        (ParamKind::String, "exact") => Modifier::Exact,
        (ParamKind::String, "contains") => Modifier::Contains,
        (ParamKind::Token, "not") => Modifier::Not,
        (ParamKind::Token, "text") => Modifier::Text,
        (ParamKind::Token, "of-type") => Modifier::OfType,
        (ParamKind::Reference, "identifier") => Modifier::Identifier,
        (ParamKind::Reference, t) if registry.is_resource_type(t) && (param.targets.is_empty() || param.targets.iter().any(|x| x == t)) => Modifier::Type(t.to_owned()),
        (ParamKind::Uri, "below") => Modifier::Below,
        (ParamKind::Uri, "above") => Modifier::Above,
        _ => return None,
    })
}

fn parse_matcher(param: &SearchParam, modifier: &Modifier, raw: &str, now: i64) -> Option<Matcher> {
    if raw.is_empty() {
        return None;
    }
    Some(match param.kind {
        ParamKind::Number => Matcher::Number(parse_number(&unescape(raw))?),
        ParamKind::Date => {
            let v = unescape(raw);
            let (prefix, rest) = split_prefix(&v);
            let range = date::parse_range(rest)?;
            // `ap`: 10% of the distance between the value and now (§3.1.1.4.7).
            let pad = now.saturating_sub(range.lo).saturating_abs() / 10;
            let plain_day = (prefix == Prefix::Eq && rest.len() == 10).then(|| rest.to_owned());
            Matcher::Date { prefix, range, pad, plain_day }
        }
        ParamKind::String => {
            let v = unescape(raw);
            Matcher::Str {
                folded: text::fold_string(&v),
                raw: v,
                mode: match modifier {
                    Modifier::Exact => StrMode::Exact,
                    Modifier::Contains => StrMode::Contains,
                    _ => StrMode::Prefix,
                },
            }
        }
        ParamKind::Token => match modifier {
            Modifier::Text => Matcher::TokenText(text::fold_string(&unescape(raw))),
            Modifier::OfType => {
                let parts = split_unescaped(raw, b'|');
                let [s, c, v] = parts.as_slice() else {
                    return None;
                };
                if s.is_empty() || c.is_empty() || v.is_empty() {
                    return None;
                }
                Matcher::TokenOfType { system: unescape(s), code: unescape(c), value: unescape(v) }
            }
            _ => Matcher::Token(parse_token(raw)?),
        },
        ParamKind::Reference => match modifier {
            Modifier::Identifier => Matcher::RefIdentifier(parse_token(raw)?),
            _ => Matcher::Ref(parse_reference(raw, param, modifier)?),
        },
        ParamKind::Quantity => {
            let parts = split_unescaped(raw, b'|');
            let (num, system, code) = match parts.as_slice() {
                [n] => (*n, None, None),
                [n, s, c] => (*n, (!s.is_empty()).then(|| unescape(s)), (!c.is_empty()).then(|| unescape(c))),
                _ => return None,
            };
            Matcher::Quantity { num: parse_number(&unescape(num))?, system, code }
        }
        ParamKind::Uri => Matcher::Uri {
            value: unescape(raw),
            mode: match modifier {
                Modifier::Below => UriMode::Below,
                Modifier::Above => UriMode::Above,
                _ => UriMode::Exact,
            },
        },
        ParamKind::Composite | ParamKind::Special => return None,
    })
}

impl Query {
    /// Parses the query pairs (already percent-decoded by the HTTP layer) of
    /// a search on `resource_type`.
    ///
    /// Repeating a parameter ANDs its occurrences; commas inside a value OR
    /// (`\,` escapes a comma). Pairs with an empty value are ignored, as the
    /// spec asks. Unknown parameter names do not fail: they are listed in
    /// [`Query::unknown_params`] for the caller to decide strict vs lenient.
    pub fn parse(registry: &Registry, resource_type: &str, pairs: &[(String, String)]) -> Result<Query, QueryError> {
        if !registry.is_resource_type(resource_type) {
            return Err(QueryError::UnknownResourceType);
        }
        if pairs.len() > MAX_PARAMS {
            return Err(QueryError::TooComplex);
        }
        let now = date::now_us();
        let mut q = Query {
            resource_type: resource_type.to_owned(),
            criteria: Vec::new(),
            result: ResultParams::default(),
            sort_by: Vec::new(),
            unknown: Vec::new(),
            canonical: String::new(),
            pinned: None,
            identity: None,
        };
        let mut or_values = 0usize;
        let mut seen_result: Vec<&str> = Vec::new();
        let mut canon: Vec<String> = Vec::new();

        for (name, value) in pairs {
            if value.is_empty() {
                continue;
            }
            let mut c = String::new();
            canon_encode(name, &mut c);
            c.push('=');
            canon_encode(value, &mut c);
            canon.push(c);

            let (code, modifier) = match name.split_once(':') {
                Some((c, m)) => (c, Some(m)),
                None => (name.as_str(), None),
            };

            if code == "_include" || code == "_revinclude" {
                let iterate = match modifier {
                    None => false,
                    Some("iterate" | "recurse") => true,
                    Some(_) => return Err(QueryError::modifier(name)),
                };
                let rev = code == "_revinclude";
                let inc = parse_include(registry, &q.resource_type, value, iterate, rev).ok_or_else(|| QueryError::bad_value(code))?;
                let list = if rev { &mut q.result.revinclude } else { &mut q.result.include };
                if !list.contains(&inc) {
                    list.push(inc);
                }
                if q.result.include.len() + q.result.revinclude.len() > MAX_INCLUDES {
                    return Err(QueryError::TooComplex);
                }
                continue;
            }
            if let Some(key) = ["_count", "_sort", "_summary", "_total", "_elements", "_format", "_pretty"].into_iter().find(|k| *k == code) {
                if modifier.is_some() {
                    return Err(QueryError::modifier(name));
                }
                // Repeating a result parameter is ambiguous (which wins?) and
                // would make the canonical form order-dependent.
                if seen_result.contains(&key) {
                    return Err(QueryError::bad_value(key));
                }
                seen_result.push(key);
                q.parse_result_param(registry, key, value)?;
                continue;
            }
            if UNSUPPORTED_CONTROL.contains(&code) {
                return Err(QueryError::unsupported(name));
            }
            if name.contains('.') {
                // Chaining (`subject.name`, `subject:Patient.name`).
                let base = code.split('.').next().unwrap_or(code);
                if registry.param(resource_type, base).is_some() {
                    return Err(QueryError::unsupported(name));
                }
                q.unknown.push(name.clone());
                continue;
            }
            let Some(param) = registry.param(resource_type, code) else {
                q.unknown.push(name.clone());
                continue;
            };
            if !param.is_supported() {
                return Err(QueryError::unsupported(name));
            }
            let expr = param.expr.clone().ok_or_else(|| QueryError::unsupported(name))?;
            let modifier = parse_modifier(registry, param, modifier).ok_or_else(|| QueryError::modifier(name))?;
            let test = if modifier == Modifier::Missing {
                or_values += 1;
                match value.as_str() {
                    "true" => Test::Missing(true),
                    "false" => Test::Missing(false),
                    _ => return Err(QueryError::bad_value(name)),
                }
            } else {
                let raw_values = split_unescaped(value, b',');
                or_values += raw_values.len();
                if or_values > MAX_OR_VALUES {
                    return Err(QueryError::TooComplex);
                }
                let values = raw_values.iter().map(|v| parse_matcher(param, &modifier, v, now)).collect::<Option<Vec<_>>>().ok_or_else(|| QueryError::bad_value(name))?;
                Test::Any { values, negate: modifier == Modifier::Not }
            };
            if or_values > MAX_OR_VALUES {
                return Err(QueryError::TooComplex);
            }
            q.criteria.push(Criterion { code: code.to_owned(), kind: param.kind, modifier, expr, test });
        }

        canon.sort();
        q.canonical = format!("{resource_type}?{}", canon.join("&"));
        q.pinned = q.compute_pinned(registry);
        q.identity = q.compute_identity();
        Ok(q)
    }

    /// `_include`/`_revinclude` values of the query.
    pub fn includes(&self) -> (&[Include], &[Include]) {
        (&self.result.include, &self.result.revinclude)
    }

    fn parse_result_param(&mut self, registry: &Registry, key: &str, value: &str) -> Result<(), QueryError> {
        let r = &mut self.result;
        match key {
            "_count" => {
                if !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(QueryError::bad_value(key));
                }
                r.count = Some(value.parse().map_err(|_| QueryError::bad_value(key))?);
            }
            "_summary" => {
                r.summary = Some(match value {
                    "true" => Summary::True,
                    "text" => Summary::Text,
                    "data" => Summary::Data,
                    "count" => Summary::Count,
                    "false" => Summary::False,
                    _ => return Err(QueryError::bad_value(key)),
                });
            }
            "_total" => {
                r.total = Some(match value {
                    "none" => TotalMode::None,
                    "estimate" => TotalMode::Estimate,
                    "accurate" => TotalMode::Accurate,
                    _ => return Err(QueryError::bad_value(key)),
                });
            }
            "_pretty" => {
                r.pretty = Some(match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(QueryError::bad_value(key)),
                });
            }
            "_format" => r.format = Some(value.to_owned()),
            "_elements" => {
                r.elements = value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
            }
            "_sort" => {
                for item in value.split(',') {
                    let (descending, p) = match item.strip_prefix('-') {
                        Some(p) => (true, p),
                        None => (false, item),
                    };
                    if p.is_empty() {
                        return Err(QueryError::bad_value(key));
                    }
                    let by = if p == "_id" {
                        SortBy::Id
                    } else {
                        match registry.param(&self.resource_type, p) {
                            Some(sp) if sp.kind == ParamKind::Date && sp.expr.is_some() => SortBy::Date(sp.expr.clone().ok_or_else(|| QueryError::sort(p))?),
                            // A known parameter is named; anything else in a
                            // `_sort` value is arbitrary client text (a value,
                            // possibly patient data), so it is not echoed.
                            Some(_) => return Err(QueryError::sort(p)),
                            None => return Err(QueryError::sort(key)),
                        }
                    };
                    self.sort_by.push(by);
                    self.result.sort.push(SortKey { param: p.to_owned(), descending });
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn count_code(&self, code: &str) -> usize {
        self.criteria.iter().filter(|c| c.code == code).count()
    }

    /// A criterion given exactly once, without modifier (other than those
    /// allowed by `ok_mod`), with exactly one value.
    fn single<'q>(&'q self, code: &str, ok_mod: impl Fn(&Modifier) -> bool) -> Option<&'q Matcher> {
        if self.count_code(code) != 1 {
            return None;
        }
        let c = self.criteria.iter().find(|c| c.code == code)?;
        if !ok_mod(&c.modifier) {
            return None;
        }
        match &c.test {
            Test::Any { values, negate: false } if values.len() == 1 => values.first(),
            _ => None,
        }
    }

    fn compute_pinned(&self, registry: &Registry) -> Option<String> {
        let ty = self.resource_type.as_str();
        if ty == "Patient"
            && let Some(Matcher::Token(TokenQ { system: None, code: Some(id) })) = self.single("_id", |m| *m == Modifier::None)
            && reference::is_id(id)
        {
            return Some(id.clone());
        }
        // A Patient resource belongs to its own compartment only (see
        // `Registry::patient_refs`), so `Patient?link=Patient/x` does not pin
        // to x even though `link` is Patient's compartment parameter.
        if ty == "Patient" || !registry.in_patient_compartment(ty) {
            return None;
        }
        let compartment = registry.compartment_params(ty);
        for c in &self.criteria {
            // `patient` is always a Patient-only view of a compartment
            // parameter (checked by a test against the definitions).
            if c.kind != ParamKind::Reference || !(compartment.contains(&c.code) || c.code == "patient") {
                continue;
            }
            let ok_mod = |m: &Modifier| match m {
                Modifier::None => true,
                Modifier::Type(t) => t == "Patient",
                _ => false,
            };
            let id = match self.single(&c.code, ok_mod) {
                Some(Matcher::Ref(RefQ::Typed { ty, id, .. })) if ty == "Patient" => id,
                Some(Matcher::Ref(RefQ::Literal { tail: Some((ty, id, _)), .. })) if ty == "Patient" => id,
                _ => continue,
            };
            return Some(id.clone());
        }
        None
    }

    fn compute_identity(&self) -> Option<IdentityQuery> {
        if self.resource_type != "Patient" {
            return None;
        }
        let plain = |m: &Modifier| *m == Modifier::None;
        if let Some(Matcher::Token(TokenQ { system: Some(system), code: Some(value) })) = self.single("identifier", plain)
            && !system.is_empty()
        {
            return Some(IdentityQuery::Identifier { system: system.clone(), value: value.clone() });
        }
        for (code, systems) in [("phone", &[][..]), ("telecom", &["phone"][..])] {
            if let Some(Matcher::Token(TokenQ { system, code: Some(v) })) = self.single(code, plain)
                && system.as_deref().is_none_or(|s| systems.contains(&s))
            {
                return Some(IdentityQuery::Phone(v.clone()));
            }
        }
        if let Some(Matcher::Str { raw: name, mode: StrMode::Prefix, .. }) = self.single("name", plain)
            && let Some(Matcher::Date { plain_day: Some(day), .. }) = self.single("birthdate", plain)
        {
            let gender = match self.single("gender", plain) {
                Some(Matcher::Token(TokenQ { system: None, code: Some(g) })) => Some(g.clone()),
                _ => None,
            };
            return Some(IdentityQuery::NameBirthDate { name: name.clone(), birth_date: day.clone(), gender });
        }
        None
    }

    // ------------------------------------------------------------ accessors

    /// The resource type searched on.
    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }

    /// `_count` as given (the caller caps it).
    pub fn count(&self) -> Option<usize> {
        self.result.count
    }

    /// The `_sort` keys, in order.
    pub fn sort(&self) -> &[SortKey] {
        &self.result.sort
    }

    /// All result-shaping parameters (`_count`, `_sort`, `_summary`,
    /// `_total`, `_elements`, `_format`, `_pretty`).
    pub fn result_params(&self) -> &ResultParams {
        &self.result
    }

    /// Parameter names (with any modifier) that are not search parameters
    /// of this resource type. `parse` does not fail on them; the caller
    /// decides between strict (`Prefer: handling=strict`) and lenient.
    pub fn unknown_params(&self) -> &[String] {
        &self.unknown
    }

    /// The top-level elements of the resource its criteria and sort keys read (`resourceType`
    /// aside), or `None` when some expression may read more than named elements. A resource
    /// pruned to these elements matches and sorts exactly as the whole one.
    pub fn reads(&self) -> Option<std::collections::BTreeSet<String>> {
        let mut names = std::collections::BTreeSet::new();
        for c in &self.criteria {
            if !c.expr.context_members(&mut names) {
                return None;
            }
        }
        for by in &self.sort_by {
            match by {
                SortBy::Id => {
                    names.insert("id".to_string());
                }
                SortBy::Date(e) => {
                    if !e.context_members(&mut names) {
                        return None;
                    }
                }
            }
        }
        Some(names)
    }

    /// Whether the query selects anything at all (has criteria); a query
    /// with only result parameters matches every resource.
    pub fn has_criteria(&self) -> bool {
        !self.criteria.is_empty()
    }

    /// The single Patient id this query pins the search to, if any: a
    /// reference parameter that is one of this type's compartment parameters
    /// (or its `patient` parameter, always a Patient-only view of one),
    /// given once with exactly one value, as `Patient/<id>` (also absolute or
    /// versioned), as a bare id where the parameter's only target is Patient
    /// (`patient=123`), or with the `:Patient` modifier; or `_id` on Patient
    /// (Patient's own compartment parameter `link` does not pin: a Patient
    /// resource belongs to its own compartment).
    ///
    /// Note that a compartment parameter other than the primary one (e.g.
    /// Observation `performer`) pins the compartment, not the primary owner.
    pub fn pinned_patient(&self) -> Option<&str> {
        self.pinned.as_deref()
    }

    /// For Patient searches: the exact-identity part of the query, if it has
    /// one: `identifier=system|value` (both present), `phone=<v>` /
    /// `telecom=<v>` (or `telecom=phone|<v>`), or `name=<v>` together with
    /// `birthdate=YYYY-MM-DD` (no prefix or `eq`) and optionally `gender`.
    /// Each must be given once, without modifier, with a single value. The
    /// query may hold further criteria: use this to find candidates, then
    /// still apply [`Query::matches`]. Values are raw (not normalised).
    pub fn identity(&self) -> Option<IdentityQuery> {
        self.identity.clone()
    }

    /// Canonical form of the whole query (resource type, every non-empty
    /// pair, result parameters and unknown names included), stable under
    /// reordering of the pairs: for opaque paging cursors. It contains the
    /// query values, so treat it as patient data (encrypt/MAC it).
    pub fn canonical(&self) -> String {
        self.canonical.clone()
    }

    // ------------------------------------------------------------ matching

    /// Whether `resource` satisfies every criterion. A resource of another
    /// type never matches.
    pub fn matches(&self, resource: &Value) -> bool {
        if let Some(t) = resource.get("resourceType").and_then(Value::as_str)
            && t != self.resource_type
        {
            return false;
        }
        self.criteria.iter().all(|c| c.matches(resource))
    }

    /// Orders two resources by the `_sort` keys (values missing last in
    /// both directions), ties broken by `_id`. For a date parameter with
    /// several values, ascending uses the earliest start and descending the
    /// latest end.
    pub fn compare(&self, a: &Value, b: &Value) -> Ordering {
        for (by, key) in self.sort_by.iter().zip(&self.result.sort) {
            let ord = cmp_keys(sort_value(by, key.descending, a), sort_value(by, key.descending, b), key.descending);
            if ord != Ordering::Equal {
                return ord;
            }
        }
        id_of(a).cmp(&id_of(b))
    }

    /// Sorts `items` by [`Query::compare`], extracting each resource's keys
    /// once instead of per comparison.
    pub fn sort_resources<T>(&self, items: &mut Vec<T>, resource: impl Fn(&T) -> &Value) {
        let mut keyed: Vec<(Vec<Option<OwnedKey>>, Option<String>, T)> = std::mem::take(items)
            .into_iter()
            .map(|t| {
                let v = resource(&t);
                let keys = self.sort_by.iter().zip(&self.result.sort).map(|(by, k)| sort_value(by, k.descending, v).map(OwnedKey::from)).collect();
                let id = id_of(v).map(str::to_owned);
                (keys, id, t)
            })
            .collect();
        keyed.sort_by(|a, b| {
            for ((x, y), k) in a.0.iter().zip(&b.0).zip(&self.result.sort) {
                let ord = cmp_keys(x.as_ref().map(OwnedKey::borrow), y.as_ref().map(OwnedKey::borrow), k.descending);
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            a.1.cmp(&b.1)
        });
        items.extend(keyed.into_iter().map(|(_, _, t)| t));
    }
}

// ---------------------------------------------------------------- sorting

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SortVal<'a> {
    Time(i64),
    Str(&'a str),
}

#[derive(Debug, Clone)]
enum OwnedKey {
    Time(i64),
    Str(String),
}

impl From<SortVal<'_>> for OwnedKey {
    fn from(v: SortVal<'_>) -> Self {
        match v {
            SortVal::Time(t) => OwnedKey::Time(t),
            SortVal::Str(s) => OwnedKey::Str(s.to_owned()),
        }
    }
}

impl OwnedKey {
    fn borrow(&self) -> SortVal<'_> {
        match self {
            OwnedKey::Time(t) => SortVal::Time(*t),
            OwnedKey::Str(s) => SortVal::Str(s),
        }
    }
}

fn id_of(v: &Value) -> Option<&str> {
    v.get("id").and_then(Value::as_str)
}

fn sort_value<'a>(by: &'a SortBy, descending: bool, v: &'a Value) -> Option<SortVal<'a>> {
    match by {
        SortBy::Id => id_of(v).map(SortVal::Str),
        SortBy::Date(e) => {
            let mut best: Option<i64> = None;
            let _ = e.eval(Item::root(v), &mut |it| {
                date::for_each_range(it.value, &mut |r| {
                    let x = if descending { r.hi } else { r.lo };
                    best = Some(match best {
                        None => x,
                        Some(b) if descending => b.max(x),
                        Some(b) => b.min(x),
                    });
                    false
                });
                ControlFlow::Continue(())
            });
            best.map(SortVal::Time)
        }
    }
}

fn cmp_keys(a: Option<SortVal<'_>>, b: Option<SortVal<'_>>, descending: bool) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => {
            if descending {
                y.cmp(&x)
            } else {
                x.cmp(&y)
            }
        }
    }
}

// ---------------------------------------------------------------- matching

impl Criterion {
    fn matches(&self, resource: &Value) -> bool {
        let root = Item::root(resource);
        match &self.test {
            Test::Missing(missing) => {
                let present = self.expr.eval(root, &mut |_| ControlFlow::Break(())).is_break();
                present != *missing
            }
            Test::Any { values, negate } => {
                let hit = self
                    .expr
                    .eval(root, &mut |it| {
                        if values.iter().any(|m| m.matches(it)) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
                    })
                    .is_break();
                hit != *negate
            }
        }
    }
}

fn str_field<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    o.get(k).and_then(Value::as_str)
}

/// Interval comparison shared by number and quantity. `None` bounds are
/// unbounded (a Range with only `low` or only `high`); a point has lo = hi.
fn cmp_num(q: &NumQ, t_lo: Option<Dec>, t_hi: Option<Dec>) -> bool {
    let v = q.v;
    let eq = || t_lo.is_some_and(|l| l >= q.lo) && t_hi.is_some_and(|h| h < q.hi);
    match q.prefix {
        Prefix::Eq => eq(),
        Prefix::Ne => !eq(),
        Prefix::Gt => t_hi.is_none_or(|h| h > v),
        Prefix::Lt => t_lo.is_none_or(|l| l < v),
        Prefix::Ge => t_hi.is_none_or(|h| h >= v),
        Prefix::Le => t_lo.is_none_or(|l| l <= v),
        Prefix::Sa => t_lo.is_some_and(|l| l > v),
        Prefix::Eb => t_hi.is_some_and(|h| h < v),
        Prefix::Ap => {
            // 10% of the value (§3.1.1.4.6), at least the implicit precision.
            let vf = v.to_f64();
            let pad = (vf.abs() * 0.1).max((q.hi.to_f64() - q.lo.to_f64()) / 2.0);
            t_lo.is_none_or(|l| l.to_f64() <= vf + pad) && t_hi.is_none_or(|h| h.to_f64() >= vf - pad)
        }
    }
}

fn dec_of(v: Option<&Value>) -> Option<Dec> {
    match v? {
        Value::Number(n) => Dec::parse(n.as_str()),
        _ => None,
    }
}

fn cmp_date(prefix: Prefix, s: Range, pad: i64, t: Range) -> bool {
    let eq = s.lo <= t.lo && t.hi <= s.hi;
    match prefix {
        Prefix::Eq => eq,
        Prefix::Ne => !eq,
        Prefix::Gt => t.hi > s.hi,
        Prefix::Lt => t.lo < s.lo,
        Prefix::Ge => t.hi > s.hi || eq,
        Prefix::Le => t.lo < s.lo || eq,
        Prefix::Sa => t.lo >= s.hi,
        Prefix::Eb => t.hi <= s.lo,
        Prefix::Ap => t.lo < s.hi.saturating_add(pad) && t.hi > s.lo.saturating_sub(pad),
    }
}

/// Does a token query match `system`/`code` of a Coding, Identifier or
/// ContactPoint (where `code` is the value)?
fn sys_code(q: &TokenQ, t_sys: Option<&str>, t_code: Option<&str>) -> bool {
    let sys_ok = match q.system.as_deref() {
        None => true,
        Some("") => t_sys.is_none_or(str::is_empty),
        Some(s) => t_sys == Some(s),
    };
    sys_ok
        && match q.code.as_deref() {
            None => t_code.is_some(),
            Some(c) => t_code == Some(c),
        }
}

fn token_matches(q: &TokenQ, v: &Value) -> bool {
    match v {
        // Primitive code/string/uri/id: no system of its own, so only the
        // code part is compared (`system|` alone matches any value).
        Value::String(s) => q.code.as_deref().is_none_or(|c| c == s),
        Value::Bool(b) => q.code.as_deref() == Some(if *b { "true" } else { "false" }),
        Value::Number(n) => q.code.as_deref().and_then(Dec::parse).zip(Dec::parse(n.as_str())).is_some_and(|(a, b)| a == b),
        Value::Object(o) => {
            if let Some(Value::Array(codings)) = o.get("coding") {
                return codings.iter().any(|c| c.as_object().is_some_and(|c| sys_code(q, str_field(c, "system"), str_field(c, "code"))));
            }
            if let Some(code) = str_field(o, "code") {
                return sys_code(q, str_field(o, "system"), Some(code));
            }
            if let Some(value) = str_field(o, "value") {
                // Identifier (system|value) and ContactPoint (system is
                // phone/email/...; `telecom=phone|123` works, `telecom=123` too).
                return sys_code(q, str_field(o, "system"), Some(value));
            }
            false
        }
        _ => false,
    }
}

/// `:text`: the text of a CodeableConcept, the display of its codings, the
/// display of a Coding, or an Identifier's type text.
fn token_text_matches(folded: &str, v: &Value) -> bool {
    let Value::Object(o) = v else {
        return false;
    };
    let hit = |s: Option<&str>| s.is_some_and(|s| text::folded_starts_with(s, folded));
    if hit(str_field(o, "text")) || hit(str_field(o, "display")) {
        return true;
    }
    if let Some(Value::Array(codings)) = o.get("coding")
        && codings.iter().any(|c| hit(c.get("display").and_then(Value::as_str)))
    {
        return true;
    }
    o.get("type").and_then(|t| t.get("text")).and_then(Value::as_str).is_some_and(|s| text::folded_starts_with(s, folded))
}

/// Fields searched by a `string` parameter on a complex element: HumanName
/// (family, given, prefix, suffix, text) and Address (line, city, district,
/// state, postalCode, country, text). `use`, `type` etc. are deliberately
/// absent: `name=official` must not match every official name.
const STRING_FIELDS: &[&str] = &["family", "given", "prefix", "suffix", "text", "line", "city", "district", "state", "postalCode", "country"];

fn string_matches(mode: StrMode, raw: &str, folded: &str, v: &Value) -> bool {
    let one = |s: &str| match mode {
        StrMode::Prefix => text::folded_starts_with(s, folded),
        StrMode::Contains => text::folded_contains(s, folded),
        StrMode::Exact => s == raw,
    };
    match v {
        Value::String(s) => one(s),
        Value::Object(o) => STRING_FIELDS.iter().any(|k| match o.get(*k) {
            Some(Value::String(s)) => one(s),
            Some(Value::Array(a)) => a.iter().any(|x| x.as_str().is_some_and(one)),
            _ => false,
        }),
        _ => false,
    }
}

fn ref_matches(q: &RefQ, v: &Value) -> bool {
    let Some(t) = reference_text(v) else {
        return false;
    };
    match q {
        RefQ::Typed { ty, id, version } => reference::parse(t).is_some_and(|p| p.ty == ty && p.id == id && version.as_deref().is_none_or(|ver| p.version == Some(ver))),
        RefQ::Id(id) => reference::parse(t).is_some_and(|p| p.id == id),
        RefQ::Literal { text, tail } => {
            // Exact text, or a canonical `url|version` against a bare url,
            // or (for absolute URLs) the same `Type/id` tail: the server's
            // own base is not known here, so any base is accepted.
            t == text
                || t.split_once('|').is_some_and(|(base, _)| base == text)
                || tail.as_ref().is_some_and(|(ty, id, ver)| reference::parse(t).is_some_and(|p| p.ty == ty && p.id == id && ver.as_deref().is_none_or(|x| p.version == Some(x))))
        }
    }
}

fn unit_ok(system: Option<&str>, code: Option<&str>, o: &Map<String, Value>) -> bool {
    let (t_sys, t_code, unit, currency) = (str_field(o, "system"), str_field(o, "code"), str_field(o, "unit"), str_field(o, "currency"));
    match (system, code) {
        (None, None) => true,
        // Money: the currency is an ISO 4217 code.
        (Some(s), c) if currency.is_some() => s == "urn:iso:std:iso:4217" && c.is_none_or(|c| Some(c) == currency),
        (Some(s), c) => t_sys == Some(s) && c.is_none_or(|c| t_code == Some(c)),
        (None, Some(c)) => t_code == Some(c) || unit == Some(c) || currency == Some(c),
    }
}

fn quantity_matches(num: &NumQ, system: Option<&str>, code: Option<&str>, v: &Value) -> bool {
    match v {
        Value::Number(n) => system.is_none() && code.is_none() && Dec::parse(n.as_str()).is_some_and(|d| cmp_num(num, Some(d), Some(d))),
        Value::Object(o) => {
            if o.contains_key("low") || o.contains_key("high") {
                // Range: its bounds carry the units.
                let low = o.get("low").and_then(Value::as_object);
                let high = o.get("high").and_then(Value::as_object);
                let units = low.or(high).is_some_and(|b| unit_ok(system, code, b));
                let lo = low.and_then(|b| dec_of(b.get("value")));
                let hi = high.and_then(|b| dec_of(b.get("value")));
                return units && (lo.is_some() || hi.is_some()) && cmp_num(num, lo, hi);
            }
            let Some(d) = dec_of(o.get("value")) else {
                return false;
            };
            unit_ok(system, code, o) && cmp_num(num, Some(d), Some(d))
        }
        _ => false,
    }
}

fn number_matches(q: &NumQ, v: &Value) -> bool {
    match v {
        Value::Number(n) => Dec::parse(n.as_str()).is_some_and(|d| cmp_num(q, Some(d), Some(d))),
        Value::Object(o) if o.contains_key("low") || o.contains_key("high") => {
            let lo = o.get("low").and_then(|b| dec_of(b.get("value")));
            let hi = o.get("high").and_then(|b| dec_of(b.get("value")));
            (lo.is_some() || hi.is_some()) && cmp_num(q, lo, hi)
        }
        _ => false,
    }
}

impl Matcher {
    fn matches(&self, it: Item<'_>) -> bool {
        let v = it.value;
        match self {
            Matcher::Number(q) => number_matches(q, v),
            Matcher::Date { prefix, range, pad, .. } => date::for_each_range(v, &mut |t| cmp_date(*prefix, *range, *pad, t)),
            Matcher::Str { raw, folded, mode } => string_matches(*mode, raw, folded, v),
            Matcher::Token(q) => token_matches(q, v),
            Matcher::TokenText(folded) => token_text_matches(folded, v),
            Matcher::TokenOfType { system, code, value } => {
                v.get("value").and_then(Value::as_str) == Some(value.as_str())
                    && v.get("type").and_then(|t| t.get("coding")).and_then(Value::as_array).is_some_and(|cs| {
                        cs.iter().any(|c| c.get("system").and_then(Value::as_str) == Some(system.as_str()) && c.get("code").and_then(Value::as_str) == Some(code.as_str()))
                    })
            }
            Matcher::Ref(q) => ref_matches(q, v),
            Matcher::RefIdentifier(q) => v.get("identifier").is_some_and(|id| token_matches(q, id)),
            Matcher::Quantity { num, system, code } => quantity_matches(num, system.as_deref(), code.as_deref(), v),
            Matcher::Uri { value, mode } => v.as_str().is_some_and(|t| match mode {
                UriMode::Exact => t == value,
                UriMode::Below => t.starts_with(value.as_str()),
                UriMode::Above => value.starts_with(t),
            }),
        }
    }
}

/// Parses `Source:param[:Target]` or `Source:*`. Without `:iterate`, an `_include` must start
/// from the searched type and a `_revinclude` must be able to point at it.
fn parse_include(registry: &Registry, searched: &str, value: &str, iterate: bool, rev: bool) -> Option<Include> {
    let mut parts = value.split(':');
    let source = parts.next()?;
    let param = parts.next()?;
    let target = parts.next();
    if parts.next().is_some() || !registry.is_resource_type(source) {
        return None;
    }
    let targets: Vec<&str> = if param == "*" {
        if target.is_some() {
            return None;
        }
        registry.params_for(source).filter(|p| p.kind == ParamKind::Reference && p.is_supported()).flat_map(|p| p.targets.iter().map(String::as_str)).collect()
    } else {
        let p = registry.param(source, param).filter(|p| p.kind == ParamKind::Reference && p.is_supported())?;
        p.targets.iter().map(String::as_str).collect()
    };
    if let Some(t) = target
        && !targets.contains(&t)
    {
        return None;
    }
    if !iterate {
        let fits = if rev { target.map_or_else(|| targets.contains(&searched), |t| t == searched) } else { source == searched };
        if !fits {
            return None;
        }
    }
    Some(Include { source: source.to_owned(), param: (param != "*").then(|| param.to_owned()), target: target.map(str::to_owned), iterate })
}
