//! Access control: who may touch which patient's data (invariant 5 of the threat model).
//!
//! Deny by default. A request reaches a patient's data only when all of these allow it:
//!
//! - **scopes** (SMART v2): the resource type and interaction ([`Engine::require`]);
//! - **role**: `admin`, `security-officer` and `researcher` reach no patient data at all; a
//!   `patient` client only its own patient's compartment; `facility-system` and `clinician`
//!   clients as below;
//! - **care relationship**: a facility's clients (and its clinicians) reach a patient's
//!   clinical data only while the facility has a care relationship with the patient: an
//!   Encounter there (`serviceProvider`), an EpisodeOfCare it manages, a referral
//!   ServiceRequest to it (`performer`), the Patient's `managingOrganization`, or data it
//!   submitted, within [`crate::Limits::care_days`]. Exact identity lookups (by NIK etc.)
//!   stay possible without one, and answer with the Patient (demographics) only;
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
}

/// Relationships to record, by patient partition: (`Organization/<id>`, time in µs).
pub(crate) type CareFacts = BTreeMap<PartitionId, Vec<(String, i64)>>;

/// Merges `more` into `into` (the importer gathers a whole group's facts).
pub(crate) fn merge_facts(into: &mut CareFacts, more: CareFacts) {
    for (p, mut r) in more {
        into.entry(p).or_default().append(&mut r);
    }
}

/// Why a caller may reach a patient's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Basis {
    /// Its organization is part of the patient's care.
    Care,
    /// An active break-glass grant.
    BreakGlass,
    /// A Consent of the patient permits it by name.
    Consent,
}

/// One provision of an active Consent, with its nested provisions: exceptions that, where
/// they apply, override it (FHIR R4 Consent.provision). Conditions a provision leaves empty
/// apply to everything (a nested one inherits its parent's).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ConsentRule {
    permit: bool,
    /// `Organization/<id>` or `Practitioner/<id>`; empty means everyone.
    actors: Vec<String>,
    /// PurposeOfUse codes; empty means any.
    purposes: Vec<String>,
    /// Resource types; empty means all.
    classes: Vec<String>,
    /// Security label codes; empty means any record.
    labels: Vec<String>,
    /// Validity, µs; open ends are MIN / MAX.
    start: i64,
    end: i64,
    exceptions: Vec<ConsentRule>,
}

fn codes(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("code").and_then(Value::as_str).map(String::from))
        .collect()
}

/// The codes of a resource's `meta.security`.
pub(crate) fn security_labels(resource: &Value) -> Vec<String> {
    codes(resource.get("meta").and_then(|m| m.get("security")))
}

impl ConsentRule {
    /// The base provision of one Consent resource, if it is an active privacy consent.
    pub(crate) fn from_consent(c: &Value) -> Option<ConsentRule> {
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
        Some(Self::build(c.get("provision")?, None, 0))
    }

    fn build(p: &Value, parent: Option<&ConsentRule>, depth: usize) -> ConsentRule {
        let period = p.get("period");
        let bound = |k: &str, hi: bool| {
            period.and_then(|x| x.get(k)).and_then(Value::as_str).and_then(brankas_search::instant_range).map(|(lo, h)| if hi { h } else { lo })
        };
        let inherit = |mine: Vec<String>, theirs: Option<&Vec<String>>| if mine.is_empty() { theirs.cloned().unwrap_or_default() } else { mine };
        let mut rule = ConsentRule {
            // A nested provision without a type is the opposite of its parent (an exception).
            permit: match p.get("type").and_then(Value::as_str) {
                Some("permit") => true,
                Some("deny") => false,
                _ => parent.is_some_and(|x| !x.permit),
            },
            actors: inherit(
                p.get("actor")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.get("reference").and_then(|r| r.get("reference")).and_then(Value::as_str).map(String::from))
                    .collect(),
                parent.map(|x| &x.actors),
            ),
            purposes: inherit(codes(p.get("purpose")), parent.map(|x| &x.purposes)),
            classes: inherit(codes(p.get("class")), parent.map(|x| &x.classes)),
            labels: inherit(codes(p.get("securityLabel")), parent.map(|x| &x.labels)),
            start: bound("start", false).or(parent.map(|x| x.start)).unwrap_or(i64::MIN),
            end: bound("end", true).or(parent.map(|x| x.end)).unwrap_or(i64::MAX),
            exceptions: Vec::new(),
        };
        if depth < 4 {
            let children: Vec<ConsentRule> =
                p.get("provision").and_then(Value::as_array).into_iter().flatten().map(|c| Self::build(c, Some(&rule), depth + 1)).collect();
            rule.exceptions = children;
        }
        rule
    }

    fn applies_to_actor(&self, who: &Principal, now: i64) -> bool {
        (self.start..self.end).contains(&now)
            && (self.actors.is_empty()
                || who.organization().is_some_and(|o| self.actors.iter().any(|a| a == o))
                || who.practitioner().is_some_and(|p| self.actors.iter().any(|a| a == p)))
            && (self.purposes.is_empty() || self.purposes.iter().any(|p| p == who.purpose()))
    }

    fn applies_to_record(&self, rtype: &str, labels: &[String]) -> bool {
        (self.classes.is_empty() || self.classes.iter().any(|c| c == rtype)) && (self.labels.is_empty() || self.labels.iter().any(|l| labels.contains(l)))
    }

    /// Permit (true), deny (false) or no opinion, for this caller and record.
    fn decide(&self, who: &Principal, now: i64, rtype: &str, labels: &[String]) -> Option<bool> {
        if !(self.applies_to_actor(who, now) && self.applies_to_record(rtype, labels)) {
            return None;
        }
        let mut d = self.permit;
        for e in &self.exceptions {
            if let Some(x) = e.decide(who, now, rtype, labels) {
                d = x;
            }
        }
        Some(d)
    }

    /// Whether this provision or one of its exceptions permits this caller by name.
    fn names_permitted(&self, who: &Principal, now: i64) -> bool {
        (self.permit && !self.actors.is_empty() && self.applies_to_actor(who, now)) || self.exceptions.iter().any(|e| e.names_permitted(who, now))
    }
}

/// How one patient's records are shown to one caller (see [`Engine::record_view`]).
pub(crate) struct RecordView {
    /// Nothing restricted (own patient, operator, break-glass, directory).
    open: bool,
    consent: Option<ConsentView>,
}

impl RecordView {
    /// Nothing restricted.
    pub(crate) const OPEN: RecordView = RecordView { open: true, consent: None };

    /// Restricted by labels and, where the patient has active Consents, by their `rules`
    /// (`care`: the caller reaches the patient through a care relationship).
    fn restricted(rules: Vec<ConsentRule>, care: bool, now: i64) -> RecordView {
        let consent = (!rules.is_empty()).then_some(ConsentView { rules, care, now });
        RecordView { open: false, consent }
    }

    /// Sensitive labels (`meta.security`) need an explicit grant for each.
    pub(crate) fn labels_permit(&self, who: &Principal, resource: &Value) -> bool {
        self.open
            || security_labels(resource)
                .iter()
                .filter(|l| l.as_str() != "PHOTO" && brankas_auth::SENSITIVE_CATEGORIES.contains(&l.as_str()))
                .all(|l| who.has_sensitive_grant(l))
    }

    pub(crate) fn consent_permits(&self, who: &Principal, rtype: &str, resource: &Value) -> bool {
        self.open || self.consent.as_ref().is_none_or(|c| c.permits(who, rtype, resource))
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

/// A patient's consent rules as they apply to one caller.
pub(crate) struct ConsentView {
    rules: Vec<ConsentRule>,
    /// The caller's organization is part of the patient's care (else it rests on a permit).
    care: bool,
    now: i64,
}

impl ConsentView {
    pub(crate) fn permits(&self, who: &Principal, rtype: &str, resource: &Value) -> bool {
        let labels = security_labels(resource);
        let decisions: Vec<bool> = self.rules.iter().filter_map(|r| r.decide(who, self.now, rtype, &labels)).collect();
        !decisions.contains(&false) && (self.care || decisions.contains(&true))
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

    /// Why a facility's (or clinician's) client may reach a patient, if it may.
    fn basis(&self, who: &Principal, partition: &PartitionId, rules: &[ConsentRule], now: i64) -> Result<Option<Basis>> {
        let Some(org) = who.organization() else { return Ok(None) };
        if let Some(care) = self.care(partition)? {
            if care.btg.get(who.client_id()).is_some_and(|until| *until > now) {
                return Ok(Some(Basis::BreakGlass));
            }
            if care.orgs.get(org).is_some_and(|t| *t >= now - i64::from(self.limits.care_days) * US_PER_DAY) {
                return Ok(Some(Basis::Care));
            }
        }
        if rules.iter().any(|r| r.names_permitted(who, now)) {
            return Ok(Some(Basis::Consent));
        }
        Ok(None)
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
            return if own.as_ref() == Some(partition) {
                Ok(RecordView::OPEN)
            } else {
                Err(forbidden("a patient client reaches its own patient's record only"))
            };
        }
        if who.organization().is_none() {
            return Err(forbidden("this client acts for no organization"));
        }
        let now = now_us();
        let rules = self.consent_rules(partition)?;
        match self.basis(who, partition, &rules, now)? {
            // Breaking the glass is explicit: it is granted (and alerted) whenever asked for
            // and not already held, also where care allows but the patient's consent hides.
            // Break-glass overrides consent and labels: the view is open.
            Some(b) if b != Basis::BreakGlass && who.break_glass_reason().is_some() => {
                self.grant_break_glass(who, partition, now).map(|()| RecordView::OPEN)
            }
            Some(Basis::BreakGlass) => Ok(RecordView::OPEN),
            Some(b) => Ok(RecordView::restricted(rules, b == Basis::Care, now)),
            None if who.break_glass_reason().is_some() => self.grant_break_glass(who, partition, now).map(|()| RecordView::OPEN),
            None => Err(forbidden(match act {
                Act::Read => "your organization has no care relationship with this patient (an identity lookup answers with the Patient only; in an emergency, state purpose of use BTG and a reason)",
                Act::Write => "your organization has no care relationship with this patient",
            })),
        }
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
        match self.basis(who, partition, &rules, now)? {
            Some(Basis::BreakGlass) => Ok(RecordView::OPEN),
            basis => Ok(RecordView::restricted(rules, basis == Some(Basis::Care), now)),
        }
    }

    /// The per-record gate, once a record is decrypted: the scope's query restriction for
    /// `perm`, and the view its partition's gate returned (labels, consent, redaction).
    pub(crate) fn gate_record(&self, who: &Principal, view: &RecordView, rtype: &str, perm: char, resource: &mut Value) -> Result<()> {
        self.gate_scope_resource(who, rtype, perm, resource)?;
        if !view.labels_permit(who, resource) {
            return Err(forbidden("this record carries a sensitive label your client holds no grant for"));
        }
        if !view.consent_permits(who, rtype, resource) {
            return Err(forbidden("the patient's consent does not allow your organization this record"));
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
            out.extend(ConsentRule::from_consent(&c.resource));
        }
        Ok(out)
    }

    /// A write into a patient's partition: role first; a facility's write is allowed when it
    /// is itself part of the patient's care (it will establish or refresh the relationship,
    /// see [`Engine::care_facts`]), a patient's only into its own record.
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
        Ok((NewVersion { row, expect }, key))
    }

    /// The relationships `prepared` (about to be written by `who`) establishes, by patient
    /// partition: the organizations the resources name, and the writer's own organization.
    /// Pure: reads nothing.
    pub(crate) fn care_facts(&self, who: &Principal, prepared: &[Prepared], now: i64) -> CareFacts {
        let mut facts = CareFacts::new();
        for p in prepared.iter().filter(|p| !p.row.deleted && self.is_patient_partition(&p.row.partition)) {
            let rels = facts.entry(p.row.partition).or_default();
            rels.extend(relationships(&p.row.resource_type, &p.stored.resource, now));
            if (who.is_local_operator() || matches!(who.role(), Role::FacilitySystem | Role::Clinician))
                && let Some(org) = who.organization()
            {
                rels.push((org.to_string(), now));
            }
        }
        facts.retain(|_, r| !r.is_empty());
        facts
    }

    /// New care-record versions for `facts`, against the records as stored now. A record is
    /// rewritten only when an organization is new to it or its time moves forward by more
    /// than a day, so most writes add nothing.
    pub(crate) fn care_versions(&self, facts: &CareFacts, now: i64) -> Result<Vec<NewVersion>> {
        let mut out = Vec::new();
        for (partition, rels) in facts {
            let current = self.care_row(partition)?;
            let mut care = current.as_ref().map(|(c, _)| c.clone()).unwrap_or_else(|| Care { id: hex(&partition.0), ..Default::default() });
            let mut changed = false;
            for (org, t) in rels {
                match care.orgs.get_mut(org) {
                    None => {
                        care.orgs.insert(org.clone(), *t);
                        changed = true;
                    }
                    Some(e) if *t > *e + US_PER_DAY => {
                        *e = *t;
                        changed = true;
                    }
                    Some(_) => {}
                }
            }
            if changed {
                out.push(self.prepare_care(partition, &care, current.as_ref().map(|(_, r)| r), now)?.0);
            }
        }
        Ok(out)
    }

    /// Records a break-glass grant for `who` on `partition`, with retries against concurrent
    /// writers of the same care record, and raises the alert.
    fn grant_break_glass(&self, who: &Principal, partition: &PartitionId, now: i64) -> Result<()> {
        let until = now + i64::from(self.limits.break_glass_minutes) * 60_000_000;
        for _ in 0..5 {
            let current = self.care_row(partition)?;
            let mut care = current.as_ref().map(|(c, _)| c.clone()).unwrap_or_else(|| Care { id: hex(&partition.0), ..Default::default() });
            care.btg.retain(|_, t| *t > now);
            care.btg.insert(who.client_id().to_string(), until);
            let (nv, _) = self.prepare_care(partition, &care, current.as_ref().map(|(_, r)| r), now)?;
            match self.commit_batch(WriteBatch { versions: vec![nv], ..Default::default() }) {
                Ok(()) => {
                    // The HTTP layer raises the alert (and the audit record names the patient).
                    who.trail().note_break_glass();
                    // The log line names the client, never the patient (whose identity the log
                    // must not hold); the audit record will name the patient's opaque id.
                    tracing::warn!(
                        target: "brankas::alert",
                        client_id = who.client_id(),
                        organization = who.organization().unwrap_or(""),
                        minutes = self.limits.break_glass_minutes,
                        "break-glass access granted"
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
        // A busy facility's writers all add to the same work list; a lost race is retried
        // with the list read again.
        for _ in 0..16 {
            let now = now_us();
            let mut care = self.care_versions(&self.care_facts(who, prepared, now), now)?;
            care.extend(self.worklist_versions(&crate::worklist::facts_of(prepared, now), now)?);
            let mut batch = WriteBatch::default();
            for p in prepared {
                batch.versions.push(NewVersion { row: p.row.clone(), expect: p.expect });
                if let Some(ix) = &p.index {
                    batch.index.push(ix.clone());
                }
            }
            let n = batch.versions.len();
            batch.versions.extend(care);
            match self.commit_with_keys(batch)? {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict { index }) if index >= n => continue,
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
        Principal::local_operator_for(Some(org.into())).with_purpose(purpose, None).unwrap()
    }

    #[test]
    fn consent_provisions_nest_as_exceptions_within_their_period_and_purpose() {
        let c = json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"code": "patient-privacy"}]},
            "provision": {"type": "deny", "period": {"start": "2020-01-01", "end": "2030-12-31"},
                "class": [{"code": "Observation"}],
                "provision": [{"actor": [{"reference": {"reference": "Organization/rs-a"}}], "purpose": [{"code": "TREAT"}]}]}});
        let rule = ConsentRule::from_consent(&c).unwrap();
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
        assert!(ConsentRule::from_consent(&draft).is_none(), "only active consents count");
        let mut research = c;
        research["scope"] = json!({"coding": [{"code": "research"}]});
        assert!(ConsentRule::from_consent(&research).is_none(), "only privacy consents restrict access");
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
