//! Access control: who may touch which patient's data (invariant 5 of the threat model).
//!
//! Deny by default. A request reaches a patient's data only when all of these allow it:
//!
//! - **scopes** (SMART v2): the resource type and interaction ([`Engine::require`]);
//! - **role**: `admin`, `security-officer` and `researcher` reach no patient data at all; a
//!   `patient` client only its own patient's compartment; `facility-system` and `clinician`
//!   clients as below;
//! - **care relationship**: a facility's clients (and its clinicians) reach a patient's
//!   clinical data only while the facility has a care relationship with the patient, within
//!   [`crate::Limits::care_days`]. No credential can make one for its own facility
//!   (invariant 13): a relationship comes from evidence outside it: the facility registered
//!   the patient (its client created the Patient), a facility already in the patient's care
//!   (or the patient's own client) wrote an Encounter there (`serviceProvider`), an
//!   EpisodeOfCare it manages, a referral ServiceRequest to it (`performer`) or the
//!   Patient's `managingOrganization`, or the operator imported the data for it (`brankas
//!   import --organization`). What a facility writes without standing establishes nothing.
//!   Exact identity lookups (by NIK etc.) stay possible without one, and answer with the
//!   Patient (demographics) only;
//! - **own writes**: a facility reaches the records it wrote itself (the server stamps each
//!   record of a patient with its writers, see [`WRITTEN_BY`]), and nothing else of the
//!   patient's, without a relationship;
//! - **the patient's permit**: a Consent `permit` naming the organization opens what it
//!   covers, only when the patient's own client wrote it (the Consent's current version);
//!   anyone's Consent can restrict (a deny), none but the patient's can open;
//! - **break-glass**: a facility client that states purpose of use `BTG` and a reason gets
//!   [`crate::Limits::break_glass_minutes`] of access to that one patient; the grant is
//!   recorded with the patient and raises a security alert (a log line without patient data;
//!   the durable alert and audit record come with the audit log).
//!
//! The relationships and break-glass grants of a patient live in one internal record in the
//! patient's own partition (type [`CARE_TYPE`], sealed under the patient's key like
//! everything else there), written in the same atomic batch as the data that establishes
//! them, so every replica sees the same answer and erasing the patient erases it too.
//!
//! Leakage at rest (documented as the threat model asks): a thief of the database sees that
//! a patient partition holds a record of type `BrankasCare`, its size (which grows with the
//! number of organizations and grants) and when it was written; not which organizations.

use std::collections::BTreeMap;

use brankas_auth::{Principal, Role};
use brankas_store::{Expect, NewVersion, PartitionId, RecordKey, StoreError, VersionRow, WriteBatch};
use brankas_vault::RecordAad;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crud::now_us;
use crate::{Engine, EngineError, Prepared, Result};

/// Resource type of the internal care record. Not a FHIR type: never served, never matched
/// by a search (searches name FHIR types), skipped by `$everything`.
pub(crate) const CARE_TYPE: &str = "BrankasCare";

const US_PER_DAY: i64 = 86_400_000_000;

/// A patient's care relationships and break-glass grants.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Care {
    /// The partition, hex (the record's id, checked against its record key on every read).
    id: String,
    /// `Organization/<id>` → the latest time (µs) a relationship was established.
    #[serde(default)]
    orgs: BTreeMap<String, i64>,
    /// Client id → when its break-glass access to this patient ends (µs).
    #[serde(default)]
    btg: BTreeMap<String, i64>,
    /// `Organization/<id>` → the latest time (µs) it wrote into this record, with or without
    /// a relationship: it then reaches the records it wrote (not the rest).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    wrote: BTreeMap<String, i64>,
    /// `<client id> <purpose>` → until when the client's stated purpose of use other than
    /// treatment (registered, with a reason) is honoured for this patient without a new alert.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pou: BTreeMap<String, i64>,
}

/// What a time-limited, alerted grant is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grant {
    /// Break-glass (`BTG`): opens the record, overriding consent and labels.
    BreakGlass,
    /// A registered purpose of use other than treatment: the patient's consent is evaluated
    /// for it, nothing is opened by it.
    Purpose,
}

/// What one write tells about a patient's care, by patient partition.
#[derive(Clone, Debug, Default)]
pub(crate) struct PartitionFacts {
    /// Relationships the written records name (`Organization/<id>`, time in µs): recorded
    /// only when the writer has standing in the patient's care.
    named: Vec<(String, i64)>,
    /// Relationships certain from the write itself: the registrar creating the Patient, the
    /// operator's import for a facility.
    own: Vec<(String, i64)>,
    /// The writing organization (it reaches what it wrote).
    writer: Option<String>,
    /// The writer has standing without a relationship of its own: the operator's tools, the
    /// patient's own client, the registrar of a new patient.
    vouched: bool,
}

/// Care facts by patient partition.
pub(crate) type CareFacts = BTreeMap<PartitionId, PartitionFacts>;

/// Merges `more` into `into` (the importer gathers a whole group's facts).
pub(crate) fn merge_facts(into: &mut CareFacts, more: CareFacts) {
    for (p, mut f) in more {
        let e = into.entry(p).or_default();
        e.named.append(&mut f.named);
        e.own.append(&mut f.own);
        e.writer = e.writer.take().or(f.writer);
        e.vouched |= f.vouched;
    }
}

/// Extension (in `meta.extension`) with which the server stamps every record of a patient
/// with the organizations (or the patient) that wrote it, one `valueReference` each. Set by
/// the server on each write and never taken from the client (a client's is removed). A
/// record keeps its earlier writers across updates; a Consent names only the writer of its
/// current version (its permits count only when that is the patient).
///
/// Why in the record: the check costs nothing for a caller in the patient's care (never
/// evaluated) and one look into an already decrypted record otherwise; keeping the list in
/// the care record instead would grow with every record and be read on every request.
pub const WRITTEN_BY: &str = "https://brankas.id/fhir/StructureDefinition/written-by";

/// Most writers kept on one record (the earliest are dropped first).
const MAX_WRITERS: usize = 16;

/// The writers stamped on a record.
pub(crate) fn writers(resource: &Value) -> Vec<&str> {
    resource
        .get("meta")
        .and_then(|m| m.get("extension"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("url").and_then(Value::as_str) == Some(WRITTEN_BY))
        .filter_map(|e| e.get("valueReference").and_then(|r| r.get("reference")).and_then(Value::as_str))
        .collect()
}

/// Removes every writer stamp (a client's is never trusted).
pub(crate) fn strip_writers(resource: &mut Value) {
    let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) else { return };
    if let Some(ext) = meta.get_mut("extension").and_then(Value::as_array_mut) {
        ext.retain(|e| e.get("url").and_then(Value::as_str) != Some(WRITTEN_BY));
        if ext.is_empty() {
            meta.remove("extension");
        }
    }
}

/// Stamps `list` as the record's writers (after [`strip_writers`]).
pub(crate) fn stamp_writers(resource: &mut Value, list: &[String]) {
    if list.is_empty() {
        return;
    }
    let Some(obj) = resource.as_object_mut() else { return };
    let meta = obj.entry("meta").or_insert_with(|| serde_json::json!({}));
    let Some(meta) = meta.as_object_mut() else { return };
    let ext = meta.entry("extension").or_insert_with(|| serde_json::json!([]));
    if let Some(a) = ext.as_array_mut() {
        for w in list {
            a.push(serde_json::json!({"url": WRITTEN_BY, "valueReference": {"reference": w}}));
        }
    }
}

/// What a caller writes as: its organization (facility, clinician, the operator's import for
/// one), or `Patient/<id>` for a patient's own client.
pub(crate) fn writer_of(who: &Principal) -> Option<String> {
    match who.role() {
        Role::Patient => who.patient().map(String::from),
        Role::FacilitySystem | Role::Clinician => who.organization().map(String::from),
        _ if who.is_local_operator() => who.organization().map(String::from),
        _ => None,
    }
}

/// What lets a facility's (or clinician's) client reach a patient's record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Reach {
    /// An active break-glass grant.
    btg: bool,
    /// Its organization is part of the patient's care: the whole record.
    care: bool,
    /// A Consent the patient wrote permits it by name: what the permit covers.
    permit: bool,
    /// It wrote into the record: what it wrote.
    wrote: bool,
}

impl Reach {
    fn any(&self) -> bool {
        self.btg || self.care || self.permit || self.wrote
    }
}

/// One actor of a Consent provision, as far as this server can tell who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Actor {
    /// `Organization/<id>` or `Practitioner/<id>` of this server, in that one normal form
    /// (whether written relative, versioned, or as an absolute URL on this server's base).
    Known(String),
    /// Certainly no facility or clinician (a Patient, a RelatedPerson).
    Never,
    /// Who it is cannot be told with certainty: an identifier instead of a reference, a
    /// `urn:uuid` left unresolved, a contained resource, a conditional reference, an absolute
    /// URL on another server (or another scheme), a group-like type (CareTeam, Group,
    /// PractitionerRole...) or anything malformed. A deny naming it applies to every caller;
    /// a permit naming it grants nobody (fail closed).
    Unknown,
}

impl Actor {
    /// The actor named by `actor.reference` (a FHIR Reference), against this server's base
    /// URL (`https://host/fhir`, without a trailing slash), when it is known.
    pub(crate) fn of_reference(reference: Option<&Value>, base: Option<&str>) -> Actor {
        let Some(s) = reference.and_then(|r| r.get("reference")).and_then(Value::as_str) else {
            return Actor::Unknown;
        };
        Self::of_str(s, base)
    }

    fn of_str(s: &str, base: Option<&str>) -> Actor {
        // An absolute URL on this server's base (scheme and host compared without case)
        // is its relative form; never a second absolute hop.
        if let Some(base) = base.map(|b| b.trim_end_matches('/')).filter(|b| !b.is_empty())
            && s.get(..base.len()).is_some_and(|head| head.eq_ignore_ascii_case(base))
        {
            return match s[base.len()..].strip_prefix('/') {
                Some(rest) if !rest.contains(':') => Self::of_str(rest, None),
                _ => Actor::Unknown,
            };
        }
        match brankas_fhir::parse_reference(s) {
            Some(brankas_fhir::RefKind::Local { rtype, id, .. }) => match rtype {
                "Organization" | "Practitioner" => Actor::Known(format!("{rtype}/{id}")),
                "Patient" | "RelatedPerson" => Actor::Never,
                _ => Actor::Unknown,
            },
            // Another server's (or a contained, conditional, unresolved urn:uuid...).
            _ => Actor::Unknown,
        }
    }
}

/// Whether a provision applies to a caller: certainly, certainly not, or maybe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Applies {
    Yes,
    No,
    Maybe,
}

/// One provision of an active Consent, with its nested provisions: exceptions that, where
/// they apply, override it (FHIR R4 Consent.provision). Conditions a provision leaves empty
/// apply to everything (a nested one inherits its parent's).
///
/// Fail closed: where the server cannot tell whether a provision covers the caller (an
/// [`Actor::Unknown`], or conditions it does not evaluate: `data`, `dataPeriod`, `code`), a
/// deny applies and a permit does not.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ConsentRule {
    permit: bool,
    /// Empty means everyone.
    actors: Vec<Actor>,
    /// PurposeOfUse codes; empty means any.
    purposes: Vec<String>,
    /// Resource types; empty means all.
    classes: Vec<String>,
    /// Security label codes; empty means any record.
    labels: Vec<String>,
    /// Validity, µs; open ends are MIN / MAX.
    start: i64,
    end: i64,
    /// Restricted by conditions the server does not evaluate (inherited).
    uncertain: bool,
    /// Written by the patient's own client (set by the caller of
    /// [`ConsentRule::from_consent`]; false by default): only then may it grant anything.
    /// Anyone's Consent may restrict.
    pub(crate) trusted: bool,
    exceptions: Vec<ConsentRule>,
}

fn codes(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array).into_iter().flatten().filter_map(|c| c.get("code").and_then(Value::as_str).map(String::from)).collect()
}

/// The codes of a resource's `meta.security`.
pub(crate) fn security_labels(resource: &Value) -> Vec<String> {
    codes(resource.get("meta").and_then(|m| m.get("security")))
}

impl ConsentRule {
    /// The base provision of one Consent resource, if it is an active privacy consent;
    /// `base` is this server's base URL (absolute references to it are its own).
    pub(crate) fn from_consent(c: &Value, base: Option<&str>) -> Option<ConsentRule> {
        if c.get("status").and_then(Value::as_str) != Some("active") {
            return None;
        }
        let privacy = c
            .get("scope")
            .and_then(|s| s.get("coding"))
            .and_then(Value::as_array)
            .is_none_or(|cs| cs.iter().any(|x| x.get("code").and_then(Value::as_str) == Some("patient-privacy")));
        if !privacy {
            return None;
        }
        Some(Self::build(c.get("provision")?, None, 0, base))
    }

    fn build(p: &Value, parent: Option<&ConsentRule>, depth: usize, base: Option<&str>) -> ConsentRule {
        let period = p.get("period");
        let bound = |k: &str, hi: bool| period.and_then(|x| x.get(k)).and_then(Value::as_str).and_then(brankas_search::instant_range).map(|(lo, h)| if hi { h } else { lo });
        let inherit = |mine: Vec<String>, theirs: Option<&Vec<String>>| {
            if mine.is_empty() { theirs.cloned().unwrap_or_default() } else { mine }
        };
        let actors: Vec<Actor> = match p.get("actor") {
            None => Vec::new(),
            // An actor element that is not a list of actors names someone unknown.
            Some(a) => match a.as_array() {
                Some(list) => list.iter().map(|a| Actor::of_reference(a.get("reference"), base)).collect(),
                None => vec![Actor::Unknown],
            },
        };
        let mut rule = ConsentRule {
            // A nested provision without a type is the opposite of its parent (an exception);
            // a base provision without one denies.
            permit: match p.get("type").and_then(Value::as_str) {
                Some("permit") => true,
                Some("deny") => false,
                _ => parent.is_some_and(|x| !x.permit),
            },
            actors: if actors.is_empty() { parent.map(|x| x.actors.clone()).unwrap_or_default() } else { actors },
            purposes: inherit(codes(p.get("purpose")), parent.map(|x| &x.purposes)),
            classes: inherit(codes(p.get("class")), parent.map(|x| &x.classes)),
            labels: inherit(codes(p.get("securityLabel")), parent.map(|x| &x.labels)),
            start: bound("start", false).or(parent.map(|x| x.start)).unwrap_or(i64::MIN),
            end: bound("end", true).or(parent.map(|x| x.end)).unwrap_or(i64::MAX),
            uncertain: parent.is_some_and(|x| x.uncertain) || ["data", "dataPeriod", "code"].iter().any(|k| p.get(*k).is_some()),
            trusted: false,
            exceptions: Vec::new(),
        };
        if depth < 4 {
            let children: Vec<ConsentRule> = p.get("provision").and_then(Value::as_array).into_iter().flatten().map(|c| Self::build(c, Some(&rule), depth + 1, base)).collect();
            rule.exceptions = children;
        } else if p.get("provision").is_some() {
            // Deeper nesting is not evaluated: what this provision allows is uncertain.
            rule.uncertain = true;
        }
        rule
    }

    fn applies_to_actor(&self, who: &Principal, now: i64) -> Applies {
        if !(self.start..self.end).contains(&now) || !(self.purposes.is_empty() || self.purposes.iter().any(|p| p == who.purpose())) {
            return Applies::No;
        }
        if self.actors.is_empty() {
            return Applies::Yes;
        }
        let named = |a: &Actor| match a {
            Actor::Known(r) => who.organization() == Some(r.as_str()) || who.practitioner() == Some(r.as_str()),
            _ => false,
        };
        if self.actors.iter().any(named) {
            Applies::Yes
        } else if self.actors.contains(&Actor::Unknown) {
            Applies::Maybe
        } else {
            Applies::No
        }
    }

    fn applies_to_record(&self, rtype: &str, labels: &[String]) -> bool {
        (self.classes.is_empty() || self.classes.iter().any(|c| c == rtype)) && (self.labels.is_empty() || self.labels.iter().any(|l| labels.contains(l)))
    }

    /// Permit (true), deny (false) or no opinion, for this caller and record. A provision
    /// that may cover the caller denies if it is a deny, and grants nothing if a permit.
    fn decide(&self, who: &Principal, now: i64, rtype: &str, labels: &[String]) -> Option<bool> {
        if !self.applies_to_record(rtype, labels) {
            return None;
        }
        let certain = match self.applies_to_actor(who, now) {
            Applies::No => return None,
            Applies::Yes => !self.uncertain,
            Applies::Maybe => false,
        };
        let mut d = (certain || !self.permit).then_some(self.permit);
        for e in &self.exceptions {
            if let Some(x) = e.decide(who, now, rtype, labels) {
                d = Some(x);
            }
        }
        d
    }

    /// Whether this provision or one of its exceptions permits this caller by name, with
    /// certainty.
    /// [`ConsentRule::decide`] for a Consent's base provision: a Consent the patient did not
    /// write may deny, never permit.
    fn decide_top(&self, who: &Principal, now: i64, rtype: &str, labels: &[String]) -> Option<bool> {
        match self.decide(who, now, rtype, labels) {
            Some(true) if !self.trusted => None,
            d => d,
        }
    }

    /// Whether a Consent the patient wrote permits this caller by name, with certainty.
    fn permits_by_name(&self, who: &Principal, now: i64) -> bool {
        self.trusted && self.names_permitted(who, now)
    }

    fn names_permitted(&self, who: &Principal, now: i64) -> bool {
        (self.permit && !self.uncertain && !self.actors.is_empty() && self.applies_to_actor(who, now) == Applies::Yes)
            || self.exceptions.iter().any(|e| e.names_permitted(who, now))
    }
}

/// How one patient's records are shown to one caller (see [`Engine::record_view`]).
pub(crate) struct RecordView {
    /// Nothing restricted (own patient, operator, break-glass, directory).
    open: bool,
    /// The caller's organization is part of the patient's care: every record, unless the
    /// consent denies it. Else a record needs a permit of the patient's, or `writer` among
    /// its writers.
    care: bool,
    /// The caller's organization, when it wrote into the record (it reaches what it wrote).
    writer: Option<String>,
    /// The patient's consent rules.
    rules: Vec<ConsentRule>,
    now: i64,
}

impl RecordView {
    /// Nothing restricted.
    pub(crate) const OPEN: RecordView = RecordView { open: true, care: true, writer: None, rules: Vec::new(), now: 0 };

    /// Restricted by labels, the patient's consent `rules`, and what the caller reaches.
    pub(crate) fn restricted(rules: Vec<ConsentRule>, care: bool, writer: Option<String>, now: i64) -> RecordView {
        RecordView { open: false, care, writer, rules, now }
    }

    /// Sensitive labels (`meta.security`) need an explicit grant for each.
    pub(crate) fn labels_permit(&self, who: &Principal, resource: &Value) -> bool {
        self.open
            || security_labels(resource).iter().filter(|l| l.as_str() != "PHOTO" && brankas_auth::SENSITIVE_CATEGORIES.contains(&l.as_str())).all(|l| who.has_sensitive_grant(l))
    }

    /// Whether the caller reaches this record by care or by having written it (the check
    /// looks into the record only for a caller outside the patient's care).
    fn stands_in(&self, resource: &Value) -> bool {
        self.care || self.writer.as_deref().is_some_and(|w| writers(resource).contains(&w))
    }

    pub(crate) fn consent_permits(&self, who: &Principal, rtype: &str, resource: &Value) -> bool {
        if self.open {
            return true;
        }
        let standing = self.stands_in(resource);
        if self.rules.is_empty() {
            return standing;
        }
        let labels = security_labels(resource);
        let decisions: Vec<bool> = self.rules.iter().filter_map(|r| r.decide_top(who, self.now, rtype, &labels)).collect();
        !decisions.contains(&false) && (standing || decisions.contains(&true))
    }

    pub(crate) fn permits(&self, who: &Principal, rtype: &str, resource: &Value) -> bool {
        self.labels_permit(who, resource) && self.consent_permits(who, rtype, resource)
    }

    /// Removes what the caller may see only with a grant: patient photos.
    pub(crate) fn redact(&self, who: &Principal, rtype: &str, resource: &mut Value) {
        if !self.open {
            redact_photo(who, rtype, resource);
        }
    }
}

/// A Patient's photos are shown only to clients granted `PHOTO` (and to the patient): the
/// element is removed and the resource marked REDACTED (HL7 v3 ObservationValue), so that
/// nobody takes it for the whole record.
pub(crate) fn redact_photo(who: &Principal, rtype: &str, resource: &mut Value) {
    if rtype != "Patient" || who.is_local_operator() || who.role() == Role::Patient || who.has_sensitive_grant("PHOTO") {
        return;
    }
    let Some(obj) = resource.as_object_mut() else { return };
    if obj.remove("photo").is_none() {
        return;
    }
    let meta = obj.entry("meta").or_insert_with(|| serde_json::json!({}));
    if let Some(m) = meta.as_object_mut() {
        let sec = m.entry("security").or_insert_with(|| serde_json::json!([]));
        if let Some(a) = sec.as_array_mut() {
            a.push(serde_json::json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "REDACTED"}));
        }
    }
}

/// Sets `map[org]` to `t` when new or later by more than a day; whether it changed.
fn bump(map: &mut BTreeMap<String, i64>, org: &str, t: i64) -> bool {
    match map.get_mut(org) {
        None => {
            map.insert(org.to_string(), t);
            true
        }
        Some(e) if t > *e + US_PER_DAY => {
            *e = t;
            true
        }
        Some(_) => false,
    }
}

/// What a request does with patient data (for the messages of denials).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Act {
    Read,
    Write,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn forbidden(m: &str) -> EngineError {
    EngineError::Forbidden(m.into())
}

/// The organizations a written resource relates to its patient, with the clinical time of the
/// relationship when the resource gives one (else `now`).
fn relationships(rtype: &str, resource: &Value, now: i64) -> Vec<(String, i64)> {
    let org_ref = |v: Option<&Value>| -> Option<String> {
        let r = v?.get("reference")?.as_str()?;
        let id = r.strip_prefix("Organization/")?;
        brankas_fhir::is_valid_id(id).then(|| r.to_string())
    };
    // The end of a Period (or its start, if open), else now; never in the future.
    let when = |period: Option<&Value>| -> i64 {
        let p = period.and_then(|p| p.get("end").or_else(|| p.get("start"))).and_then(Value::as_str);
        p.and_then(brankas_search::instant_range).map(|(lo, _)| lo.min(now)).unwrap_or(now)
    };
    let mut out = Vec::new();
    match rtype {
        "Encounter" => {
            if let Some(o) = org_ref(resource.get("serviceProvider")) {
                out.push((o, when(resource.get("period"))));
            }
        }
        "EpisodeOfCare" => {
            if let Some(o) = org_ref(resource.get("managingOrganization")) {
                out.push((o, when(resource.get("period"))));
            }
        }
        "ServiceRequest" => {
            for p in resource.get("performer").and_then(Value::as_array).into_iter().flatten() {
                if let Some(o) = org_ref(Some(p)) {
                    out.push((o, now));
                }
            }
        }
        "Patient" => {
            if let Some(o) = org_ref(resource.get("managingOrganization")) {
                out.push((o, now));
            }
        }
        _ => {}
    }
    out
}

impl Engine {
    /// The role part of the gate, before any data is looked at: may this caller touch patient
    /// data at all, and for writes, which?
    pub(crate) fn role_allows_patient_data(&self, who: &Principal) -> Result<()> {
        match who.role() {
            Role::Admin => Err(forbidden("the admin role reaches no patient data (separation of duties)")),
            Role::SecurityOfficer => Err(forbidden("the security-officer role reaches audit data, not patient data")),
            Role::Researcher => Err(forbidden("the researcher role has no access to the clinical API")),
            Role::Patient | Role::FacilitySystem | Role::Clinician => Ok(()),
        }
    }

    /// The SMART v2 query restrictions of the caller's scopes for `perm` on `rtype`
    /// (`system/Observation.rs?category=laboratory`): `None` when some granting scope has no
    /// restriction, else the queries of which a resource must match one. A restriction that
    /// names a parameter unknown for the type matches nothing (it must never widen access).
    pub(crate) fn scope_restrictions(&self, who: &Principal, rtype: &str, perm: char) -> Result<Option<Vec<brankas_search::Query>>> {
        let mut out = Vec::new();
        for s in who.scopes().resource_scopes().iter().filter(|s| (s.resource_type == "*" || s.resource_type == rtype) && s.perms.contains(perm)) {
            match &s.query {
                None => return Ok(None),
                Some(q) => {
                    let pairs = crate::search::parse_query_string(q);
                    if let Ok(query) = brankas_search::Query::parse(self.registry, rtype, &pairs)
                        && query.unknown_params().is_empty()
                    {
                        out.push(query);
                    }
                }
            }
        }
        Ok(Some(out))
    }

    /// Whether the caller's scopes let it `perm` this resource, restrictions included.
    pub(crate) fn scope_permits_resource(&self, who: &Principal, rtype: &str, perm: char, resource: &Value) -> Result<bool> {
        if who.is_local_operator() {
            return Ok(true);
        }
        Ok(match self.scope_restrictions(who, rtype, perm)? {
            None => true,
            Some(qs) => qs.iter().any(|q| q.matches(resource)),
        })
    }

    /// [`Engine::scope_permits_resource`] as a gate.
    pub(crate) fn gate_scope_resource(&self, who: &Principal, rtype: &str, perm: char, resource: &Value) -> Result<()> {
        if self.scope_permits_resource(who, rtype, perm, resource)? {
            Ok(())
        } else {
            Err(forbidden("the scope that grants this is restricted to other records of this type (its query does not match)"))
        }
    }

    /// Whether `partition` belongs to a patient (not the directory).
    pub(crate) fn is_patient_partition(&self, partition: &PartitionId) -> bool {
        *partition != self.vault.system_partition()
    }

    /// The directory (resources outside every patient compartment): scopes decide, but roles
    /// without a clinical purpose do not read it through the clinical API, and only admins
    /// and facility systems maintain it.
    pub(crate) fn gate_directory(&self, who: &Principal, act: Act) -> Result<()> {
        match (who.role(), act) {
            (Role::Researcher, _) => Err(forbidden("the researcher role has no access to the clinical API")),
            (Role::SecurityOfficer, _) => Err(forbidden("the security-officer role reaches audit data only")),
            (Role::Admin | Role::FacilitySystem, _) | (Role::Clinician | Role::Patient, Act::Read) => Ok(()),
            (Role::Clinician | Role::Patient, Act::Write) => Err(forbidden("the directory is maintained by administrators and facility systems")),
        }
    }

    /// What lets a facility's (or clinician's) client reach a patient.
    fn reach(&self, who: &Principal, partition: &PartitionId, rules: &[ConsentRule], now: i64) -> Result<Reach> {
        let Some(org) = who.organization() else { return Ok(Reach::default()) };
        let mut r = Reach::default();
        if let Some(care) = self.care(partition)? {
            r.btg = care.btg.get(who.client_id()).is_some_and(|until| *until > now);
            r.care = self.in_care(&care, org, now);
            r.wrote = care.wrote.contains_key(org);
        }
        r.permit = rules.iter().any(|c| c.permits_by_name(who, now));
        Ok(r)
    }

    /// Whether `org` has a live relationship in `care`.
    fn in_care(&self, care: &Care, org: &str, now: i64) -> bool {
        care.orgs.get(org).is_some_and(|t| *t >= now - i64::from(self.limits.care_days) * US_PER_DAY)
    }

    /// The gate for one patient's data (`partition`), before any of it is decrypted, for
    /// reading or for changing what exists. Break-glass, when the request asks for it and
    /// nothing else allows, is granted here (and recorded). The patient's consent applies to
    /// each record as it is served, through the [`RecordView`] returned (read with the same
    /// Consents and care record as the decision, so they are read once per request).
    pub(crate) fn gate_patient(&self, who: &Principal, partition: &PartitionId, act: Act) -> Result<RecordView> {
        who.trail().note(partition);
        self.role_allows_patient_data(who)?;
        if who.role() == Role::Patient {
            let own = who.patient().and_then(|p| p.strip_prefix("Patient/")).map(|id| self.vault.patient_partition(id));
            return if own.as_ref() == Some(partition) { Ok(RecordView::OPEN) } else { Err(forbidden("a patient client reaches its own patient's record only")) };
        }
        if who.organization().is_none() {
            return Err(forbidden("this client acts for no organization"));
        }
        let now = now_us();
        let rules = self.consent_rules(partition)?;
        let btg = who.purpose() == "BTG";
        let reach = self.reach(who, partition, &rules, now)?;
        if reach.btg {
            return Ok(RecordView::OPEN);
        }
        // Breaking the glass is explicit: it is granted (and alerted) whenever asked for and
        // not already held, also where care allows but the patient's consent hides.
        // Break-glass overrides consent and labels: the view is open.
        if btg {
            return self.grant(who, partition, now, Grant::BreakGlass).map(|()| RecordView::OPEN);
        }
        if !reach.any() {
            return Err(forbidden(match act {
                Act::Read => {
                    "your organization has no care relationship with this patient (an identity lookup answers with the Patient only; in an emergency, state purpose of use BTG and a reason)"
                }
                Act::Write => "your organization has no care relationship with this patient",
            }));
        }
        // Another purpose than treatment changes what the consent allows: it is honoured
        // like break-glass (registered, with a reason, time-limited, alerted).
        if who.states_other_purpose() {
            self.grant(who, partition, now, Grant::Purpose)?;
        }
        Ok(self.view_of(who, rules, reach, now))
    }

    fn view_of(&self, who: &Principal, rules: Vec<ConsentRule>, reach: Reach, now: i64) -> RecordView {
        let writer = if reach.wrote && !reach.care { who.organization().map(String::from) } else { None };
        RecordView::restricted(rules, reach.care, writer, now)
    }

    /// How the records of one partition are shown to this caller, read once for a batch of
    /// records: the patient's consent, sensitive labels, photos. Nothing is restricted for a
    /// patient's own client, the operator's tools, or under break-glass (which overrides
    /// consent and labels, and is alerted).
    /// For callers that reach the partition without [`Engine::gate_patient`] (work lists,
    /// whose care relationship the list itself proves).
    pub(crate) fn record_view(&self, who: &Principal, partition: &PartitionId) -> Result<RecordView> {
        if who.is_local_operator() || who.role() == Role::Patient || !self.is_patient_partition(partition) {
            return Ok(RecordView::OPEN);
        }
        let rules = self.consent_rules(partition)?;
        let now = now_us();
        let reach = self.reach(who, partition, &rules, now)?;
        if reach.btg {
            return Ok(RecordView::OPEN);
        }
        if reach.any() && who.states_other_purpose() {
            self.grant(who, partition, now, Grant::Purpose)?;
        }
        Ok(self.view_of(who, rules, reach, now))
    }

    /// The per-record gate, once a record is decrypted: the scope's query restriction for
    /// `perm`, and the view its partition's gate returned (labels, consent, redaction).
    pub(crate) fn gate_record(&self, who: &Principal, view: &RecordView, rtype: &str, perm: char, resource: &mut Value) -> Result<()> {
        self.gate_scope_resource(who, rtype, perm, resource)?;
        if !view.labels_permit(who, resource) {
            return Err(forbidden("this record carries a sensitive label your client holds no grant for"));
        }
        if !view.consent_permits(who, rtype, resource) {
            return Err(forbidden(if view.stands_in(resource) {
                "the patient's consent does not allow your organization this record"
            } else {
                "your organization has no care relationship with this patient: it reaches only the records it wrote (and what the patient's consent permits it)"
            }));
        }
        view.redact(who, rtype, resource);
        Ok(())
    }

    /// Keeps the records of one patient's partition the caller may see (consent), for search
    /// results: what is hidden is left out, not refused, and not counted.
    pub(crate) fn filter_consent(&self, who: &Principal, view: &RecordView, rtype: &str, found: Vec<crate::Stored>) -> Result<Vec<crate::Stored>> {
        Ok(found
            .into_iter()
            .filter(|s| view.permits(who, rtype, &s.resource))
            .map(|mut s| {
                view.redact(who, rtype, &mut s.resource);
                s
            })
            .collect())
    }

    /// The rules of the patient's active Consents (privacy consents; others are ignored).
    fn consent_rules(&self, partition: &PartitionId) -> Result<Vec<ConsentRule>> {
        if !self.is_patient_partition(partition) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for row in self.store.partition_current(partition, Some("Consent"))? {
            let c = self.open_row(&row, None)?;
            if let Some(mut rule) = ConsentRule::from_consent(&c.resource, self.base_url()) {
                // Only the patient's own client writing the current version makes it a grant.
                let patient = self.registry.patient_refs("Consent", &c.resource).into_iter().next().map(|id| format!("Patient/{id}"));
                rule.trusted = patient.is_some_and(|p| writers(&c.resource) == [p.as_str()]);
                out.push(rule);
            }
        }
        Ok(out)
    }

    /// A write into a patient's partition: role first; a facility may add to any patient's
    /// record (a visit of a patient found by identity), which gives it the records it wrote
    /// and nothing else ([`Engine::care_versions`]); a patient's client only its own record.
    pub(crate) fn gate_patient_write(&self, who: &Principal, partition: &PartitionId) -> Result<()> {
        who.trail().note(partition);
        self.role_allows_patient_data(who)?;
        match who.role() {
            Role::Patient => self.gate_patient(who, partition, Act::Write).map(drop),
            _ if who.organization().is_some() => Ok(()),
            _ => Err(forbidden("this client acts for no organization")),
        }
    }

    fn care_key(&self, partition: &PartitionId) -> (RecordKey, String) {
        let id = hex(&partition.0);
        (self.vault.record_key(CARE_TYPE, &id), id)
    }

    /// The stored care record of a patient, with its row.
    fn care_row(&self, partition: &PartitionId) -> Result<Option<(Care, VersionRow)>> {
        let (key, id) = self.care_key(partition);
        let Some(row) = self.store.current(&key)? else { return Ok(None) };
        if row.resource_type != CARE_TYPE || row.partition != *partition {
            return Err(EngineError::Integrity);
        }
        let s = self.open_row(&row, Some((CARE_TYPE, &id)))?;
        let care: Care = serde_json::from_value(s.resource).map_err(|_| EngineError::Integrity)?;
        Ok(Some((care, row)))
    }

    fn care(&self, partition: &PartitionId) -> Result<Option<Care>> {
        Ok(self.care_row(partition)?.map(|(c, _)| c))
    }

    /// Seals a new version of a patient's care record.
    fn prepare_care(&self, partition: &PartitionId, care: &Care, current: Option<&VersionRow>, now: i64) -> Result<(NewVersion, RecordKey)> {
        let (key, _) = self.care_key(partition);
        let version = current.map(|c| c.version + 1).unwrap_or(1);
        let dek = self.data_key(partition, true)?.ok_or(EngineError::Integrity)?;
        let aad = RecordAad { resource_type: CARE_TYPE, record: &key, version, partition, dek_version: 1 };
        let sealed = dek.seal(&aad, &serde_json::to_vec(care).map_err(|_| EngineError::Integrity)?)?;
        let row = VersionRow { key, version, partition: *partition, resource_type: CARE_TYPE.into(), deleted: false, last_updated_us: now, dek_version: 1, sealed };
        let expect = current.map(|c| Expect::Version(c.version)).unwrap_or(Expect::Absent);
        Ok((NewVersion { row, expect, entry: None }, key))
    }

    /// What `prepared` (about to be written by `who`) tells about the patients' care, by
    /// patient partition: the relationships the records name, the writer, and whether the
    /// writer's standing is certain without a relationship (the operator's tools, the
    /// patient's own client, the registrar creating a new Patient). Pure: reads nothing.
    pub(crate) fn care_facts(&self, who: &Principal, prepared: &[Prepared], now: i64) -> CareFacts {
        let mut facts = CareFacts::new();
        let org = match who.role() {
            Role::FacilitySystem | Role::Clinician => who.organization(),
            _ if who.is_local_operator() => who.organization(),
            _ => None,
        };
        for p in prepared.iter().filter(|p| !p.row.deleted && self.is_patient_partition(&p.row.partition)) {
            let f = facts.entry(p.row.partition).or_default();
            f.named.extend(relationships(&p.row.resource_type, &p.stored.resource, now));
            f.writer = org.map(String::from);
            // The registrar: its client creates the Patient (its first version, never a
            // deleted one brought back, which could have data of its own).
            let registrar = p.row.resource_type == "Patient" && p.row.version == 1 && org.is_some();
            if who.is_local_operator() || who.role() == Role::Patient || registrar {
                f.vouched = true;
                if let Some(o) = org {
                    f.own.push((o.to_string(), now));
                }
            }
        }
        facts
    }

    /// New care-record versions for `facts`, against the records as stored now. The
    /// relationships the records name count only when the writer has standing (vouched, or
    /// itself in the patient's care by evidence); the writer is recorded as such. A record is
    /// rewritten only when an organization is new to it or its time moves forward by more
    /// than a day, so most writes add nothing.
    pub(crate) fn care_versions(&self, facts: &CareFacts, now: i64) -> Result<Vec<NewVersion>> {
        let mut out = Vec::new();
        for (partition, f) in facts {
            let current = self.care_row(partition)?;
            let mut care = current.as_ref().map(|(c, _)| c.clone()).unwrap_or_else(|| Care { id: hex(&partition.0), ..Default::default() });
            let standing = f.vouched || f.writer.as_deref().is_some_and(|w| self.in_care(&care, w, now));
            let mut changed = false;
            let named: &[(String, i64)] = if standing { &f.named } else { &[] };
            for (org, t) in f.own.iter().chain(named) {
                changed |= bump(&mut care.orgs, org, *t);
            }
            if let Some(w) = &f.writer {
                changed |= bump(&mut care.wrote, w, now);
            }
            if changed {
                out.push(self.prepare_care(partition, &care, current.as_ref().map(|(_, r)| r), now)?.0);
            }
        }
        Ok(out)
    }

    /// Clinical resources of patient-compartment types must name a patient that exists: a
    /// live stored Patient, or one written in the same batch. One that names none would
    /// land in the directory, where every facility could read, overwrite and delete it.
    pub(crate) fn check_patients_exist(&self, prepared: &[Prepared]) -> Result<()> {
        let mut known: Vec<PartitionId> = prepared.iter().filter(|p| !p.row.deleted && p.row.resource_type == "Patient").map(|p| p.row.partition).collect();
        for p in prepared.iter().filter(|p| !p.row.deleted) {
            let rtype = p.row.resource_type.as_str();
            if rtype == "Patient" || !self.registry.in_patient_compartment(rtype) || known.contains(&p.row.partition) {
                continue;
            }
            let what = crate::safe_type(rtype);
            if !self.is_patient_partition(&p.row.partition) {
                return Err(EngineError::Unprocessable(format!(
                    "a {what} belongs to a patient's record: it must name its patient (e.g. subject or patient) as Patient/<id> of this server"
                )));
            }
            let pid = self.registry.patient_refs(rtype, &p.stored.resource).into_iter().next().ok_or(EngineError::Integrity)?;
            if self.current_row("Patient", &pid)?.is_none_or(|r| r.deleted) {
                return Err(EngineError::Unprocessable(format!(
                    "the patient this {what} names does not exist on this server (create the Patient first, or in the same transaction)"
                )));
            }
            known.push(p.row.partition);
        }
        Ok(())
    }

    /// The writers a new version of a record carries: its earlier writers (read from the
    /// version it replaces in the same patient's record; not for a Consent, whose grants
    /// depend on who wrote its current version) and `who`.
    pub(crate) fn writers_after(&self, who: &Principal, rtype: &str, current: Option<&VersionRow>, partition: &PartitionId) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        if rtype != "Consent"
            && let Some(c) = current.filter(|c| !c.deleted && c.partition == *partition)
        {
            let old = self.open_row(c, None)?;
            out = writers(&old.resource).into_iter().map(String::from).collect();
        }
        if let Some(me) = writer_of(who) {
            out.retain(|w| *w != me);
            out.push(me);
        }
        if out.len() > MAX_WRITERS {
            out.drain(..out.len() - MAX_WRITERS);
        }
        Ok(out)
    }

    /// Records a break-glass grant (or a purpose-of-use grant) for `who` on `partition`, with
    /// retries against concurrent writers of the same care record, and raises the alert. A
    /// purpose grant still running is not renewed (nor alerted again).
    fn grant(&self, who: &Principal, partition: &PartitionId, now: i64, kind: Grant) -> Result<()> {
        let until = now + i64::from(self.limits.break_glass_minutes) * 60_000_000;
        let pou_key = format!("{} {}", who.client_id(), who.purpose());
        for _ in 0..5 {
            let current = self.care_row(partition)?;
            let mut care = current.as_ref().map(|(c, _)| c.clone()).unwrap_or_else(|| Care { id: hex(&partition.0), ..Default::default() });
            match kind {
                Grant::BreakGlass => {
                    care.btg.retain(|_, t| *t > now);
                    care.btg.insert(who.client_id().to_string(), until);
                }
                Grant::Purpose => {
                    if care.pou.get(&pou_key).is_some_and(|t| *t > now) {
                        return Ok(());
                    }
                    care.pou.retain(|_, t| *t > now);
                    care.pou.insert(pou_key.clone(), until);
                }
            }
            let (nv, _) = self.prepare_care(partition, &care, current.as_ref().map(|(_, r)| r), now)?;
            match self.commit_batch(who, WriteBatch { versions: vec![nv], ..Default::default() }, &[], Some(("access-grant", "U"))) {
                Ok(()) => {
                    // The HTTP layer raises the alert (and the audit record names the patient).
                    who.trail().note_break_glass();
                    // The log line names the client, never the patient (whose identity the log
                    // must not hold); the audit record will name the patient's opaque id.
                    tracing::warn!(
                        target: "brankas::alert",
                        client_id = who.client_id(),
                        organization = who.organization().unwrap_or(""),
                        purpose = who.purpose(),
                        minutes = self.limits.break_glass_minutes,
                        "{}",
                        match kind {
                            Grant::BreakGlass => "break-glass access granted",
                            Grant::Purpose => "access for a purpose of use other than treatment granted",
                        }
                    );
                    return Ok(());
                }
                Err(EngineError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Conflict)
    }

    /// Commits prepared resource versions together with the care-record versions they imply,
    /// retrying (with freshly read care records) when only a care record lost a race.
    pub(crate) fn commit_with_care(&self, who: &Principal, prepared: &[Prepared]) -> Result<()> {
        // Work-list entries are appended (no expectation), so a busy facility's writers never
        // race on them; only a care record that changed under a write is read again.
        self.check_patients_exist(prepared)?;
        let named = self.named(prepared);
        let entries = self.worklist_entries(&crate::worklist::facts_of(prepared, now_us()))?;
        for _ in 0..16 {
            let now = now_us();
            let care = self.care_versions(&self.care_facts(who, prepared, now), now)?;
            let mut batch = WriteBatch { list_entries: entries.clone(), ..Default::default() };
            for p in prepared {
                batch.versions.push(NewVersion { row: p.row.clone(), expect: p.expect, entry: p.entry.clone() });
                if let Some(ix) = &p.index {
                    batch.index.push(ix.clone());
                }
                batch.unique.extend(p.unique.iter().map(|t| (p.row.key, *t)));
            }
            let n = batch.versions.len();
            batch.versions.extend(care);
            match self.commit_with_keys(who, batch, &named, None)? {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict { index }) if index >= n => continue,
                Err(StoreError::TermHeld { holder }) => return Err(self.nik_held(&holder)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Conflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facility(org: &str, purpose: Option<&str>) -> Principal {
        Principal::local_operator_for(Some(org.into())).with_purpose(purpose, Some("a stated reason")).unwrap()
    }

    #[test]
    fn consent_provisions_nest_as_exceptions_within_their_period_and_purpose() {
        let c = json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"code": "patient-privacy"}]},
            "provision": {"type": "deny", "period": {"start": "2020-01-01", "end": "2030-12-31"},
                "class": [{"code": "Observation"}],
                "provision": [{"actor": [{"reference": {"reference": "Organization/rs-a"}}], "purpose": [{"code": "TREAT"}]}]}});
        let mut rule = ConsentRule::from_consent(&c, None).unwrap();
        rule.trusted = true;
        let now = brankas_search::instant_range("2026-11-30").unwrap().0;
        let (a, b) = (facility("Organization/rs-a", None), facility("Organization/rs-b", None));
        assert_eq!(rule.decide(&b, now, "Observation", &[]), Some(false), "denied to everyone");
        assert_eq!(rule.decide(&a, now, "Observation", &[]), Some(true), "the nested provision is an exception");
        assert_eq!(rule.decide(&facility("Organization/rs-a", Some("HRESCH")), now, "Observation", &[]), Some(false), "only for treatment");
        assert_eq!(rule.decide(&b, now, "Condition", &[]), None, "other types are not covered");
        let later = brankas_search::instant_range("2031-06-01").unwrap().0;
        assert_eq!(rule.decide(&b, later, "Observation", &[]), None, "expired");
        assert!(rule.names_permitted(&a, now) && !rule.names_permitted(&b, now));
        let mut draft = c.clone();
        draft["status"] = json!("draft");
        assert!(ConsentRule::from_consent(&draft, None).is_none(), "only active consents count");
        let mut research = c;
        research["scope"] = json!({"coding": [{"code": "research"}]});
        assert!(ConsentRule::from_consent(&research, None).is_none(), "only privacy consents restrict access");
    }

    /// A deny of everything to one actor (given as `actor.reference`), with `base` as the
    /// server's base URL.
    fn deny_to(reference: Value, base: Option<&str>) -> ConsentRule {
        let c = json!({"resourceType": "Consent", "status": "active",
            "provision": {"type": "deny", "actor": [{"role": {"coding": [{"code": "PRCP"}]}, "reference": reference}]}});
        ConsentRule::from_consent(&c, base).unwrap()
    }

    fn permit_to(reference: Value, base: Option<&str>) -> ConsentRule {
        let c = json!({"resourceType": "Consent", "status": "active",
            "provision": {"type": "permit", "actor": [{"role": {"coding": [{"code": "PRCP"}]}, "reference": reference}]}});
        ConsentRule::from_consent(&c, base).unwrap()
    }

    #[test]
    fn consent_actors_are_compared_in_one_normal_form_and_fail_closed() {
        let base = Some("https://brankas.test/fhir");
        let now = 0;
        let (a, b) = (facility("Organization/rs-a", None), facility("Organization/rs-b", None));
        let dr = Principal::local_operator_for(Some("Organization/rs-b".into()));
        // The same organization, however it is written: denied to A only.
        for r in [
            json!({"reference": "Organization/rs-a"}),
            json!({"reference": "Organization/rs-a/_history/3"}),
            json!({"reference": "https://brankas.test/fhir/Organization/rs-a"}),
            json!({"reference": "HTTPS://Brankas.Test/fhir/Organization/rs-a/_history/1"}),
        ] {
            let rule = deny_to(r.clone(), base);
            assert_eq!(rule.decide(&a, now, "Observation", &[]), Some(false), "{r}: A is denied");
            assert_eq!(rule.decide(&b, now, "Observation", &[]), None, "{r}: B is not named");
            let rule = permit_to(r.clone(), base);
            assert!(rule.names_permitted(&a, now) && !rule.names_permitted(&b, now), "{r}: a permit names A");
        }
        // Who these name cannot be told: a deny denies everyone, a permit grants nobody.
        for r in [
            json!({"reference": "https://other.example/fhir/Organization/rs-a"}),
            json!({"reference": "http://brankas.test/fhir/Organization/rs-a"}),
            json!({"reference": "https://brankas.test/fhirx/Organization/rs-a"}),
            json!({"reference": "https://brankas.test/fhir/https://x/Organization/rs-a"}),
            json!({"reference": "urn:uuid:0b3a2e7a-4d7e-4e4e-9f0a-2a4f0c1e2b3c"}),
            json!({"reference": "#org1"}),
            json!({"reference": "Organization?identifier=https://sirs.kemkes.go.id|1234"}),
            json!({"reference": "CareTeam/ct-1"}),
            json!({"reference": "PractitionerRole/pr-1"}),
            json!({"reference": "Organization/../rs-a"}),
            json!({"identifier": {"system": "https://sirs.kemkes.go.id", "value": "3171015"}}),
            json!({"display": "RS A"}),
            json!("Organization/rs-a"),
        ] {
            let rule = deny_to(r.clone(), base);
            for who in [&a, &b, &dr] {
                assert_eq!(rule.decide(who, now, "Observation", &[]), Some(false), "{r}: an uncertain deny denies");
            }
            let rule = permit_to(r.clone(), base);
            assert!(!rule.names_permitted(&a, now), "{r}: an uncertain permit names nobody");
            assert_eq!(rule.decide(&a, now, "Observation", &[]), None, "{r}: and grants nothing");
        }
        // Without a known base URL, every absolute reference is another server's.
        assert_eq!(deny_to(json!({"reference": "https://brankas.test/fhir/Organization/rs-b"}), None).decide(&a, now, "Observation", &[]), Some(false));
        // A patient or related person is certainly not a facility.
        assert_eq!(deny_to(json!({"reference": "Patient/p1"}), base).decide(&a, now, "Observation", &[]), None);
        // An uncertain actor among certain ones: the deny holds for everyone.
        let c = json!({"resourceType": "Consent", "status": "active", "provision": {"type": "deny",
            "actor": [{"reference": {"reference": "Organization/rs-b"}}, {"reference": {"identifier": {"value": "x"}}}]}});
        assert_eq!(ConsentRule::from_consent(&c, base).unwrap().decide(&a, now, "Observation", &[]), Some(false));
        // A deny nested in a permit that names someone unknown still denies.
        let c = json!({"resourceType": "Consent", "status": "active", "provision": {"type": "permit",
            "actor": [{"reference": {"reference": "https://other.example/Organization/rs-a"}}],
            "provision": [{"type": "deny", "class": [{"code": "Observation"}]}]}});
        let rule = ConsentRule::from_consent(&c, base).unwrap();
        assert_eq!(rule.decide(&a, now, "Observation", &[]), Some(false));
        assert_eq!(rule.decide(&a, now, "Condition", &[]), None, "the permit grants nothing");
        // Conditions not evaluated (specific data): the deny covers more, the permit nothing.
        let c = json!({"resourceType": "Consent", "status": "active", "provision": {"type": "permit",
            "actor": [{"reference": {"reference": "Organization/rs-a"}}], "data": [{"meaning": "instance", "reference": {"reference": "Observation/o1"}}]}});
        let rule = ConsentRule::from_consent(&c, base).unwrap();
        assert!(!rule.names_permitted(&a, now));
        assert_eq!(rule.decide(&a, now, "Observation", &[]), None);
        let c = json!({"resourceType": "Consent", "status": "active", "provision": {"type": "deny",
            "actor": [{"reference": {"reference": "Organization/rs-a"}}], "data": [{"meaning": "instance", "reference": {"reference": "Observation/o1"}}]}});
        assert_eq!(ConsentRule::from_consent(&c, base).unwrap().decide(&a, now, "Condition", &[]), Some(false));
    }

    #[test]
    fn relationships_come_from_the_resources_that_name_a_facility() {
        let now = 2_000_000_000_000_000;
        let enc = json!({"resourceType": "Encounter", "serviceProvider": {"reference": "Organization/rs-1"},
                         "period": {"start": "2021-07-14T09:00:00+07:00", "end": "2021-07-14T10:00:00+07:00"}});
        let r = relationships("Encounter", &enc, now);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, "Organization/rs-1");
        assert_eq!(r[0].1, brankas_search::instant_range("2021-07-14T10:00:00+07:00").unwrap().0, "the visit's time, not the write's");
        let future = json!({"resourceType": "Encounter", "serviceProvider": {"reference": "Organization/rs-1"}, "period": {"start": "2999-01-01"}});
        assert_eq!(relationships("Encounter", &future, now)[0].1, now, "never later than now");
        let sr = json!({"resourceType": "ServiceRequest", "performer": [{"reference": "Practitioner/x"}, {"reference": "Organization/rs-2"}]});
        assert_eq!(relationships("ServiceRequest", &sr, now), vec![("Organization/rs-2".to_string(), now)]);
        let eoc = json!({"resourceType": "EpisodeOfCare", "managingOrganization": {"reference": "Organization/pkm-3"}});
        assert_eq!(relationships("EpisodeOfCare", &eoc, now)[0].0, "Organization/pkm-3");
        let obs = json!({"resourceType": "Observation", "performer": [{"reference": "Organization/rs-1"}]});
        assert!(relationships("Observation", &obs, now).is_empty(), "only the listed kinds of record relate a facility");
        let odd = json!({"resourceType": "Encounter", "serviceProvider": {"reference": "Organization/../x"}});
        assert!(relationships("Encounter", &odd, now).is_empty());
    }
}
