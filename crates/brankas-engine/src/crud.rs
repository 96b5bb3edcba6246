//! Single-resource interactions and the write preparation shared with bundles and import.

use brankas_auth::Principal;
use brankas_fhir::IdentityTerm;
use brankas_store::{Expect, PartitionId, VersionRow};
use brankas_vault::{BlindTerm, RecordAad};
use serde_json::{Map, Value, json};

use crate::access::Act;
use crate::{Admitted, Disclosure, Engine, EngineError, Prepared, Result, Stored, WriteOutcome, safe_type};

pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// FHIR `instant` for a time in microseconds (millisecond precision, UTC).
pub fn instant(us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", t.year(), t.month() as u8, t.day(), t.hour(), t.minute(), t.second(), t.millisecond())
}

impl Engine {
    /// Checks a resource body against its type and the R4 structure; NIK rules for Patients.
    pub(crate) fn validate(&self, rtype: &str, resource: &Value) -> Result<()> {
        if !brankas_fhir::is_resource_type(rtype) {
            return Err(EngineError::BadRequest("unknown resource type".into()));
        }
        match resource.get("resourceType").and_then(Value::as_str) {
            Some(t) if t == rtype => {}
            Some(_) => return Err(EngineError::BadRequest("resourceType does not match the URL".into())),
            None => return Err(EngineError::BadRequest("resourceType is missing".into())),
        }
        brankas_fhir::validate_resource(resource).map_err(|e| EngineError::Invalid(e.0))?;
        if rtype == "Patient" {
            // A disagreement with the birth date or gender is a flag (`prepare`), not a refusal.
            brankas_fhir::check_patient_nik(resource).map_err(EngineError::Nik)?;
        }
        Ok(())
    }

    /// `POST [type]/$validate`: whether `resource` would be accepted as a create of `rtype`
    /// (structure, the official definitions, NIK rules), without storing anything or
    /// resolving references; the resource as it would be flagged (data-quality tags). For a
    /// client that may create or update the type.
    pub fn validate_only(&self, who: &Principal, rtype: &str, mut resource: Value) -> Result<Value> {
        check_type(rtype)?;
        if self.require(who, rtype, 'c').is_err() {
            self.require(who, rtype, 'u')?;
        }
        if rtype == "Patient" {
            brankas_fhir::flag_patient_nik(&mut resource);
        }
        self.validate(rtype, &resource)?;
        Ok(resource)
    }

    /// The patient a served or written resource belongs to, for its audit record: the
    /// Patient's own id, or the patient its compartment reference names, with that patient's
    /// partition. `None` for the directory.
    pub fn audit_subject(&self, resource: &Value) -> Option<(String, PartitionId)> {
        let rtype = resource.get("resourceType").and_then(Value::as_str)?;
        let pid = if rtype == "Patient" {
            resource.get("id").and_then(Value::as_str)?.to_string()
        } else if rtype == "Binary" {
            crate::binary::binary_patient(resource)?.to_string()
        } else if self.registry.in_patient_compartment(rtype) {
            self.registry.patient_refs(rtype, resource).into_iter().next()?
        } else {
            return None;
        };
        let partition = self.vault.patient_partition(&pid);
        Some((pid, partition))
    }

    /// The partition of the patient with id `patient_id` (audit queries name patients so).
    pub fn patient_partition(&self, patient_id: &str) -> PartitionId {
        self.vault.patient_partition(patient_id)
    }

    /// The partition that owns a resource (see the crate docs).
    pub(crate) fn partition_of(&self, rtype: &str, id: &str, resource: &Value) -> PartitionId {
        if rtype == "Patient" {
            return self.vault.patient_partition(id);
        }
        if rtype == "Binary"
            && let Some(p) = crate::binary::binary_patient(resource)
        {
            return self.vault.patient_partition(p);
        }
        if self.registry.in_patient_compartment(rtype)
            && let Some(p) = self.registry.patient_refs(rtype, resource).first()
        {
            return self.vault.patient_partition(p);
        }
        self.vault.system_partition()
    }

    /// Blind-index terms of a resource: identity values of Patients, and identifiers of
    /// resources outside patient compartments (the directory), which conditional references
    /// name. Clinical resources get none: their content is never indexed.
    pub(crate) fn index_terms(&self, rtype: &str, resource: &Value) -> Option<Vec<BlindTerm>> {
        if rtype == "Patient" {
            let terms = brankas_fhir::patient_identity_terms(resource)
                .into_iter()
                .map(|t| match t {
                    IdentityTerm::Identifier { system, value } => self.patient_identifier_term(&system, &value),
                    IdentityTerm::Phone(p) => self.vault.blind_term("phone", &[&p]),
                    IdentityTerm::NameBirthDate { name, birth_date } => self.vault.blind_term("name-birthdate", &[&name, &birth_date]),
                })
                .collect();
            return Some(terms);
        }
        if rtype == "ImagingStudy" {
            // DICOMweb finds a study by its UID (an exact lookup, like an identity's).
            return Some(self.imaging_terms(resource));
        }
        if self.registry.in_patient_compartment(rtype) {
            return None;
        }
        let mut terms = Vec::new();
        if let Some(ids) = resource.get("identifier").and_then(Value::as_array) {
            for i in ids {
                if let (Some(s), Some(v)) = (i.get("system").and_then(Value::as_str), i.get("value").and_then(Value::as_str)) {
                    terms.push(self.vault.blind_term("identifier", &[rtype, s, &brankas_fhir::normalize_identifier_value(v)]));
                }
            }
        }
        Some(terms)
    }

    /// The blind term of a Patient's identifier (its system and normalised value).
    fn patient_identifier_term(&self, system: &str, value: &str) -> BlindTerm {
        self.vault.blind_term("identifier", &["Patient", system, value])
    }

    /// The blind terms of a Patient's own NIKs: one patient each (the store refuses a second
    /// holder, [`brankas_store::WriteBatch::unique`]). The same terms as its identity index.
    pub(crate) fn nik_terms(&self, patient: &Value) -> Vec<BlindTerm> {
        brankas_fhir::patient_identity_terms(patient)
            .into_iter()
            .filter_map(|t| match t {
                IdentityTerm::Identifier { system, value } if system == brankas_fhir::NIK_SYSTEM => Some(self.patient_identifier_term(&system, &value)),
                _ => None,
            })
            .collect()
    }

    /// The error for a write whose NIK another record holds, naming that Patient.
    pub(crate) fn nik_held(&self, holder: &brankas_store::RecordKey) -> EngineError {
        let name = self
            .store
            .current(holder)
            .ok()
            .flatten()
            .filter(|row| row.resource_type == "Patient" && !row.deleted)
            .and_then(|row| self.open_row(&row, None).ok())
            .and_then(|s| s.resource.get("id").and_then(Value::as_str).map(|id| format!("Patient/{id}")));
        EngineError::NikHeld(name.unwrap_or_else(|| "another Patient".into()))
    }

    /// Validates, stamps meta, places and seals one resource. `current` is the record's
    /// current row, read by the caller (None when absent).
    // The writer (`who`) is an argument of its own so that no write can be sealed without
    // the server's writer stamp.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare(&self, who: &Principal, rtype: &str, id: &str, mut resource: Value, current: Option<&VersionRow>, expect: Expect, now: i64) -> Result<Prepared> {
        let obj = resource.as_object_mut().ok_or_else(|| EngineError::BadRequest("a resource must be a JSON object".into()))?;
        obj.insert("id".into(), Value::String(id.into()));
        let version = current.map(|c| c.version + 1).unwrap_or(1);
        let meta = obj.entry("meta").or_insert_with(|| Value::Object(Map::new()));
        let meta = meta.as_object_mut().ok_or_else(|| EngineError::BadRequest("meta must be an object".into()))?;
        meta.insert("versionId".into(), Value::String(version.to_string()));
        meta.insert("lastUpdated".into(), Value::String(instant(now)));
        // Who wrote a record is the server's to say, never the client's; so are data-quality flags.
        crate::access::strip_writers(&mut resource);
        if rtype == "Patient" {
            brankas_fhir::flag_patient_nik(&mut resource);
        }
        // Validate after stamping, so server-set meta is checked too.
        self.validate(rtype, &resource)?;
        let partition = self.partition_of(rtype, id, &resource);
        if self.is_patient_partition(&partition) {
            let w = self.writers_after(who, rtype, current, &partition)?;
            crate::access::stamp_writers(&mut resource, &w);
        }
        let key = self.data_key(&partition, true)?.ok_or(EngineError::Integrity)?;
        self.prepare_attachments(rtype, id, &mut resource, &key)?;
        let rkey = self.vault.record_key(rtype, id);
        let bytes = serde_json::to_vec(&resource).map_err(|_| EngineError::BadRequest("resource cannot be encoded".into()))?;
        let dek_version = 1;
        let aad = RecordAad { resource_type: rtype, record: &rkey, version, partition: &partition, dek_version };
        let sealed = key.seal(&aad, &bytes)?;
        let entry = Some(self.seal_entry(&key, &aad, &resource)?);
        let index = self.index_terms(rtype, &resource).map(|t| (rkey, t));
        let unique = if rtype == "Patient" { self.nik_terms(&resource) } else { Vec::new() };
        Ok(Prepared {
            row: VersionRow { key: rkey, version, partition, resource_type: rtype.into(), deleted: false, last_updated_us: now, dek_version, sealed },
            expect,
            entry,
            index,
            unique,
            stored: Stored { resource, version, last_updated_us: now, deleted: false, partition, entry: None },
            created: current.is_none_or(|c| c.deleted),
        })
    }

    /// Prepares a delete marker for an existing, not yet deleted record.
    pub(crate) fn prepare_delete(&self, rtype: &str, id: &str, current: &VersionRow, now: i64) -> Result<Prepared> {
        let version = current.version + 1;
        let tomb = json!({"resourceType": rtype, "id": id, "meta": {"versionId": version.to_string(), "lastUpdated": instant(now)}});
        let partition = current.partition;
        let key = self.data_key(&partition, true)?.ok_or(EngineError::Integrity)?;
        let aad = RecordAad { resource_type: rtype, record: &current.key, version, partition: &partition, dek_version: 1 };
        let sealed = key.seal(&aad, &serde_json::to_vec(&tomb).map_err(|_| EngineError::Integrity)?)?;
        Ok(Prepared {
            row: VersionRow { key: current.key, version, partition, resource_type: rtype.into(), deleted: true, last_updated_us: now, dek_version: 1, sealed },
            expect: Expect::Version(current.version),
            entry: None,
            // Identity lookups must no longer find a deleted patient.
            index: Some((current.key, Vec::new())),
            unique: Vec::new(),
            stored: Stored { resource: tomb, version, last_updated_us: now, deleted: true, partition: current.partition, entry: None },
            created: false,
        })
    }

    /// Commits prepared versions, with the care relationships they establish.
    pub(crate) fn commit_prepared(&self, who: &Principal, prepared: &[Prepared]) -> Result<()> {
        self.commit_with_care(who, prepared)
    }

    pub(crate) fn current_row(&self, rtype: &str, id: &str) -> Result<Option<VersionRow>> {
        Ok(self.store.current(&self.vault.record_key(rtype, id))?)
    }

    /// What serving these resources discloses: the patient records among them (the directory
    /// is not patient data; delete markers carry nothing).
    pub(crate) fn disclosure_of<'a>(&self, served: impl IntoIterator<Item = &'a Stored>) -> Disclosure {
        let mut d = Disclosure::none();
        for s in served {
            self.disclose(&mut d, s);
        }
        d
    }

    /// Adds one served resource to a disclosure.
    pub(crate) fn disclose(&self, d: &mut Disclosure, s: &Stored) {
        if s.deleted || !self.is_patient_partition(&s.partition) {
            return;
        }
        let pid = self.audit_subject(&s.resource).filter(|(_, p)| *p == s.partition).map(|(id, _)| id);
        d.record(s.partition, pid, &s.resource);
    }

    /// A write's answer: the version written (or found, for a conditional create), echoed.
    pub(crate) fn admit_write(&self, w: WriteOutcome) -> Admitted<WriteOutcome> {
        let d = self.disclosure_of([&w.stored]);
        Admitted::new(w, d)
    }

    /// `POST [type]`, with optional `If-None-Exist` (conditional create).
    pub fn create(&self, who: &Principal, rtype: &str, resource: Value, if_none_exist: Option<&str>) -> Result<Admitted<WriteOutcome>> {
        self.create_gated(who, rtype, resource, if_none_exist).map(|w| self.admit_write(w))
    }

    pub(crate) fn create_gated(&self, who: &Principal, rtype: &str, mut resource: Value, if_none_exist: Option<&str>) -> Result<WriteOutcome> {
        self.require(who, rtype, 'c')?;
        self.bind_binary(who, rtype, &mut resource)?;
        if let Some(q) = if_none_exist {
            let found = self.conditional_match(who, rtype, q, Some(&resource))?;
            match found.len() {
                0 => {}
                1 => return Ok(WriteOutcome { stored: found.into_iter().next().ok_or(EngineError::Integrity)?, created: false }),
                _ => return Err(EngineError::PreconditionFailed("If-None-Exist matched more than one resource".into())),
            }
        }
        let id = new_id()?;
        if rtype == "Binary" {
            // Checked before the content is sealed into a blob, not only after.
            self.gate_new(who, &self.partition_of(rtype, &id, &resource))?;
        }
        let p = self.prepare(who, rtype, &id, resource, None, Expect::Absent, now_us())?;
        self.gate_new(who, &p.row.partition)?;
        self.gate_scope_resource(who, rtype, 'c', &p.stored.resource)?;
        self.commit_prepared(who, std::slice::from_ref(&p))?;
        Ok(WriteOutcome { stored: p.stored, created: true })
    }

    /// `PUT [type]/[id]`: update, or create with the client's id when absent.
    pub fn update(&self, who: &Principal, rtype: &str, id: &str, resource: Value, if_match: Option<u64>) -> Result<Admitted<WriteOutcome>> {
        self.update_gated(who, rtype, id, resource, if_match).map(|w| self.admit_write(w))
    }

    pub(crate) fn update_gated(&self, who: &Principal, rtype: &str, id: &str, mut resource: Value, if_match: Option<u64>) -> Result<WriteOutcome> {
        if !brankas_fhir::is_valid_id(id) {
            return Err(EngineError::BadRequest("invalid resource id".into()));
        }
        match resource.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id => {}
            _ => return Err(EngineError::BadRequest("the resource id must be present and equal the id in the URL".into())),
        }
        check_type(rtype)?;
        if rtype == "Binary" {
            self.bind_binary(who, rtype, &mut resource)?;
            // Checked before the content is sealed into a blob, not only after.
            self.gate_new(who, &self.partition_of(rtype, id, &resource))?;
        }
        self.write_version(who, rtype, id, resource, if_match)
    }

    /// The write of `update`, once the request is checked: a new version of `rtype/id` (or its
    /// first), gated on the version it replaces and on where the new one goes.
    pub(crate) fn write_version(&self, who: &Principal, rtype: &str, id: &str, resource: Value, if_match: Option<u64>) -> Result<WriteOutcome> {
        let current = self.current_row(rtype, id)?;
        let live = current.as_ref().filter(|c| !c.deleted);
        let perm = if live.is_some() { 'u' } else { 'c' };
        self.require(who, rtype, perm)?;
        let view = live.map(|c| self.gate_row(who, c, Act::Write)).transpose()?;
        let expect = match (if_match, &current) {
            (Some(v), Some(c)) if c.version == v && !c.deleted => Expect::Version(v),
            (Some(_), _) => return Err(EngineError::PreconditionFailed("If-Match does not match the current version".into())),
            (None, Some(c)) => Expect::Version(c.version),
            (None, None) => Expect::Absent,
        };
        let p = self.prepare(who, rtype, id, resource, current.as_ref(), expect, now_us())?;
        self.gate_new(who, &p.row.partition)?;
        self.gate_scope_resource(who, rtype, perm, &p.stored.resource)?;
        if let (Some(c), Some(view)) = (live, &view) {
            // The version replaced must be within the scope too.
            let mut old = self.open_row(c, Some((rtype, id)))?;
            self.gate_record(who, view, rtype, 'u', &mut old.resource)?;
        }
        self.commit_prepared(who, std::slice::from_ref(&p))?;
        Ok(WriteOutcome { created: p.created, stored: p.stored })
    }

    /// A directory entry (a resource in no patient's compartment: Organization,
    /// Practitioner…) for the server's own texts, e.g. a facility's name in a patient's access
    /// history. Never a patient's record: those are read only through the gates.
    pub fn directory_entry(&self, rtype: &str, id: &str) -> Result<Option<Stored>> {
        check_type(rtype)?;
        if !brankas_fhir::is_valid_id(id) || self.registry.in_patient_compartment(rtype) || matches!(rtype, "Patient" | "Binary") {
            return Ok(None);
        }
        let Some(row) = self.current_row(rtype, id)? else { return Ok(None) };
        if row.deleted || self.is_patient_partition(&row.partition) {
            return Ok(None);
        }
        self.open_row(&row, Some((rtype, id))).map(Some)
    }

    /// A patient's identity for a breach report or notification, read for a security officer
    /// (whom no gate admits to patient data): the Patient as stored, or `None`. The report
    /// that shows it is itself a disclosure: the caller audits and budgets every patient it
    /// names.
    pub fn breach_identity(&self, officer: &Principal, patient_id: &str) -> Result<Option<Admitted<Stored>>> {
        if officer.role() != brankas_auth::Role::SecurityOfficer && !officer.is_local_operator() {
            return Err(EngineError::Forbidden("identities for breach reports are read by security officers".into()));
        }
        if !brankas_fhir::is_valid_id(patient_id) {
            return Ok(None);
        }
        let Some(row) = self.current_row("Patient", patient_id)? else { return Ok(None) };
        if row.deleted {
            return Ok(None);
        }
        let s = self.open_row(&row, Some(("Patient", patient_id)))?;
        let d = self.disclosure_of([&s]);
        Ok(Some(Admitted::new(s, d)))
    }

    /// `GET [type]/[id]`.
    pub fn read(&self, who: &Principal, rtype: &str, id: &str) -> Result<Admitted<Stored>> {
        let s = self.read_gated(who, rtype, id)?;
        let d = self.disclosure_of([&s]);
        Ok(Admitted::new(s, d))
    }

    pub(crate) fn read_gated(&self, who: &Principal, rtype: &str, id: &str) -> Result<Stored> {
        check_type(rtype)?;
        self.require(who, rtype, 'r')?;
        if !brankas_fhir::is_valid_id(id) {
            return Err(EngineError::NotFound);
        }
        let row = self.current_row(rtype, id)?.ok_or(EngineError::NotFound)?;
        self.serve_row(who, rtype, id, &row)
    }

    /// The read of `row`, the current row of `rtype`/`id` (scope and id already checked):
    /// gated, opened, then gated on its content and redacted.
    pub(crate) fn serve_row(&self, who: &Principal, rtype: &str, id: &str, row: &VersionRow) -> Result<Stored> {
        let view = self.gate_row(who, row, Act::Read)?;
        if row.deleted {
            return Err(EngineError::Gone);
        }
        let mut s = self.open_row(row, Some((rtype, id)))?;
        self.gate_record(who, &view, rtype, 'r', &mut s.resource)?;
        Ok(s)
    }

    /// `GET [type]/[id]/_history/[vid]`.
    pub fn vread(&self, who: &Principal, rtype: &str, id: &str, version: u64) -> Result<Admitted<Stored>> {
        let s = self.vread_gated(who, rtype, id, version)?;
        let d = self.disclosure_of([&s]);
        Ok(Admitted::new(s, d))
    }

    pub(crate) fn vread_gated(&self, who: &Principal, rtype: &str, id: &str, version: u64) -> Result<Stored> {
        check_type(rtype)?;
        self.require(who, rtype, 'r')?;
        if !brankas_fhir::is_valid_id(id) {
            return Err(EngineError::NotFound);
        }
        let row = self.store.version(&self.vault.record_key(rtype, id), version)?.ok_or(EngineError::NotFound)?;
        let view = self.gate_row(who, &row, Act::Read)?;
        if row.deleted {
            return Err(EngineError::Gone);
        }
        let mut s = self.open_row(&row, Some((rtype, id)))?;
        self.gate_record(who, &view, rtype, 'r', &mut s.resource)?;
        Ok(s)
    }

    /// `PATCH [type]/[id]`: applies a JSON Patch (RFC 6902) or a JSON Merge Patch (RFC 7386)
    /// to the current version and writes the result as the next one. The caller must be able
    /// to read the resource whole (the patched answer shows all of it; a resource partly
    /// hidden from the caller is refused rather than patched on a partial view) and to update
    /// it; the new version must still be the same resource (type and id) and valid R4. The
    /// write expects the version the patch was applied to, so a concurrent change is a
    /// conflict, never lost.
    pub fn patch(&self, who: &Principal, rtype: &str, id: &str, body: &PatchBody, if_match: Option<u64>) -> Result<Admitted<WriteOutcome>> {
        let (doc, version) = self.patched(who, rtype, id, body, if_match)?;
        let w = self.update_gated(who, rtype, id, doc, Some(version))?;
        Ok(self.admit_write(w))
    }

    /// The resource `rtype`/`id` with `body` applied, and the version it was applied to (which
    /// the write must expect): the caller must be able to read the resource whole.
    pub(crate) fn patched(&self, who: &Principal, rtype: &str, id: &str, body: &PatchBody, if_match: Option<u64>) -> Result<(Value, u64)> {
        let seen = self.read_gated(who, rtype, id)?;
        if if_match.is_some_and(|v| v != seen.version) {
            return Err(EngineError::PreconditionFailed("If-Match does not match the current version".into()));
        }
        let row = self.current_row(rtype, id)?.ok_or(EngineError::NotFound)?;
        if row.version != seen.version {
            return Err(EngineError::Conflict);
        }
        let mut doc = self.open_row(&row, Some((rtype, id)))?.resource;
        if doc != seen.resource {
            return Err(EngineError::Forbidden("part of this resource is hidden from this client; it cannot be patched (update it whole)".into()));
        }
        match body {
            PatchBody::Json(ops) => json_patch::patch(&mut doc, ops).map_err(|e| {
                let why = match e.kind {
                    json_patch::PatchErrorKind::TestFailed => "its test failed",
                    json_patch::PatchErrorKind::InvalidFromPointer => "its from path does not exist",
                    json_patch::PatchErrorKind::CannotMoveInsideItself => "it moves a value inside itself",
                    _ => "its path does not exist",
                };
                EngineError::Unprocessable(format!("JSON Patch operation {} was not applied: {why}; nothing was changed", e.operation))
            })?,
            PatchBody::Merge(m) => json_patch::merge(&mut doc, m),
            PatchBody::FhirPath(p) => brankas_fhir::fhirpath_patch::apply(&mut doc, p).map_err(|e| EngineError::Unprocessable(format!("{e}; nothing was changed")))?,
            PatchBody::Meta { add, meta } => {
                apply_meta(&mut doc, meta, *add)?;
            }
        }
        if doc.get("resourceType").and_then(Value::as_str) != Some(rtype) || doc.get("id").and_then(Value::as_str) != Some(id) {
            return Err(EngineError::Unprocessable("a patch may not change the resource's type or id".into()));
        }
        Ok((doc, seen.version))
    }

    /// `$meta-add` and `$meta-delete` (R4 Resource-meta-add, -delete): profiles, security
    /// labels and tags added to, or removed from, the current version's meta. Written as a new
    /// version (a stored version is never changed in place), gated as a patch is (the caller
    /// reads the resource whole and may update it); nothing is written when nothing changes.
    /// Returns the resource as it then is.
    pub fn meta_change(&self, who: &Principal, rtype: &str, id: &str, meta: &Value, add: bool) -> Result<Admitted<Stored>> {
        check_type(rtype)?;
        self.require(who, rtype, 'u')?;
        let seen = self.read_gated(who, rtype, id)?;
        let mut probe = seen.resource.clone();
        if !apply_meta(&mut probe, meta, add)? {
            let d = self.disclosure_of(std::slice::from_ref(&seen));
            return Ok(Admitted::new(seen, d));
        }
        Ok(self.patch(who, rtype, id, &PatchBody::Meta { add, meta: meta.clone() }, Some(seen.version))?.map(|w| w.stored))
    }

    /// The id of the one resource a conditional interaction's criteria match, as the caller
    /// sees them (`resource` pins clinical criteria to its patient); `None` when none does,
    /// a failed precondition (412) when more than one does.
    fn single_match(&self, who: &Principal, rtype: &str, criteria: &str, resource: Option<&Value>, interaction: &str) -> Result<Option<String>> {
        check_type(rtype)?;
        match self.conditional_match(who, rtype, criteria, resource)?.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.resource.get("id").and_then(Value::as_str).ok_or(EngineError::Integrity)?.to_string())),
            _ => Err(EngineError::PreconditionFailed(format!("the conditional {interaction}'s criteria matched more than one resource"))),
        }
    }

    /// `PATCH [type]?[criteria]` (conditional patch): no match is 404, one match is patched,
    /// more than one is a failed precondition (412).
    pub fn conditional_patch(&self, who: &Principal, rtype: &str, criteria: &str, body: &PatchBody, if_match: Option<u64>) -> Result<Admitted<WriteOutcome>> {
        let id = self.single_match(who, rtype, criteria, None, "patch")?.ok_or(EngineError::NotFound)?;
        self.patch(who, rtype, &id, body, if_match)
    }

    /// `PUT [type]?[criteria]` (conditional update): no match creates (with the body's id, or
    /// a new one), one match updates that resource (a body id naming another is refused), more
    /// than one is a failed precondition (412). The criteria are evaluated as the caller sees.
    pub fn conditional_update(&self, who: &Principal, rtype: &str, criteria: &str, mut resource: Value, if_match: Option<u64>) -> Result<Admitted<WriteOutcome>> {
        let found = self.single_match(who, rtype, criteria, Some(&resource), "update")?;
        let body_id = resource.get("id").and_then(Value::as_str).map(String::from);
        let id = match (found, body_id) {
            (Some(id), Some(b)) if b != id => {
                return Err(EngineError::BadRequest("the resource id differs from the id of the resource the criteria found".into()));
            }
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => new_id()?,
        };
        let obj = resource.as_object_mut().ok_or_else(|| EngineError::BadRequest("a resource must be a JSON object".into()))?;
        obj.insert("id".into(), Value::String(id.clone()));
        self.update(who, rtype, &id, resource, if_match)
    }

    /// `DELETE [type]?[criteria]` (conditional delete, one resource at a time): no match is
    /// 404, one match is deleted, more than one is a failed precondition (412).
    pub fn conditional_delete(&self, who: &Principal, rtype: &str, criteria: &str, if_match: Option<u64>) -> Result<Option<Stored>> {
        check_type(rtype)?;
        self.require(who, rtype, 'd')?;
        let id = self.single_match(who, rtype, criteria, None, "delete")?.ok_or(EngineError::NotFound)?;
        self.delete(who, rtype, &id, if_match)
    }

    /// `DELETE [type]/[id]`: writes a delete marker version. Deleting what does not exist, or
    /// is already deleted, succeeds without a new version (idempotent, per FHIR).
    pub fn delete(&self, who: &Principal, rtype: &str, id: &str, if_match: Option<u64>) -> Result<Option<Stored>> {
        check_type(rtype)?;
        self.require(who, rtype, 'd')?;
        if !brankas_fhir::is_valid_id(id) {
            return Err(EngineError::NotFound);
        }
        let Some(current) = self.current_row(rtype, id)? else { return Ok(None) };
        let view = self.gate_row(who, &current, Act::Write)?;
        if current.deleted {
            return Ok(None);
        }
        if if_match.is_some_and(|v| v != current.version) {
            return Err(EngineError::PreconditionFailed("If-Match does not match the current version".into()));
        }
        let mut old = self.open_row(&current, Some((rtype, id)))?;
        self.gate_record(who, &view, rtype, 'd', &mut old.resource)?;
        let p = self.prepare_delete(rtype, id, &current, now_us())?;
        self.commit_prepared(who, std::slice::from_ref(&p))?;
        Ok(Some(p.stored))
    }

    /// `GET [type]/[id]/_history`: versions newest first, `before` a version number for paging.
    pub fn history(&self, who: &Principal, rtype: &str, id: &str, count: usize, before: Option<u64>) -> Result<Admitted<Vec<Stored>>> {
        let v = self.history_gated(who, rtype, id, count, before)?;
        let d = self.disclosure_of(&v);
        Ok(Admitted::new(v, d))
    }

    fn history_gated(&self, who: &Principal, rtype: &str, id: &str, count: usize, before: Option<u64>) -> Result<Vec<Stored>> {
        check_type(rtype)?;
        self.require(who, rtype, 'r')?;
        if !brankas_fhir::is_valid_id(id) {
            return Err(EngineError::NotFound);
        }
        let rows = self.store.history(&self.vault.record_key(rtype, id), before, count.clamp(1, self.limits.max_history))?;
        if rows.is_empty() && before.is_none() {
            return Err(EngineError::NotFound);
        }
        self.open_versions(who, rtype, id, &rows)
    }

    /// `GET [type]/[id]/_history?_since=…` or `_at=…`: the versions in the window, newest
    /// first, `count` of them below version `before`, and how many the window holds in all.
    /// `_since`: versions written at or after it. `_at`: the versions that were current at some
    /// moment of the period its precision covers (written in it, and the one current when it
    /// began). Decided on the versions' write times, which the store keeps in the clear; only
    /// the page is opened, through the same gates as any history.
    pub fn history_window(&self, who: &Principal, rtype: &str, id: &str, window: HistoryWindow, count: usize, before: Option<u64>) -> Result<Admitted<(Vec<Stored>, u64)>> {
        check_type(rtype)?;
        self.require(who, rtype, 'r')?;
        if !brankas_fhir::is_valid_id(id) {
            return Err(EngineError::NotFound);
        }
        let key = self.vault.record_key(rtype, id);
        let mut matching: Vec<VersionRow> = Vec::new();
        let mut cursor = None;
        let mut any = false;
        'walk: loop {
            let rows = self.store.history(&key, cursor, self.limits.max_history)?;
            if rows.is_empty() {
                break;
            }
            any = true;
            for r in rows {
                cursor = Some(r.version);
                let t = r.last_updated_us;
                if window.since.is_some_and(|s| t < s) {
                    break 'walk;
                }
                if let Some((lo, hi)) = window.at {
                    if t >= hi {
                        continue;
                    }
                    if t < lo {
                        matching.push(r);
                        break 'walk;
                    }
                }
                if matching.len() >= MAX_WINDOW_VERSIONS {
                    return Err(EngineError::TooLarge(format!("more than {MAX_WINDOW_VERSIONS} versions in the window; narrow _since or _at")));
                }
                matching.push(r);
            }
        }
        if !any {
            return Err(EngineError::NotFound);
        }
        let total = matching.len() as u64;
        let page: Vec<VersionRow> = matching.into_iter().filter(|r| before.is_none_or(|b| r.version < b)).take(count.clamp(1, self.limits.max_history)).collect();
        let v = self.open_versions(who, rtype, id, &page)?;
        let d = self.disclosure_of(&v);
        Ok(Admitted::new((v, total), d))
    }

    /// Versions of one record, each gated (a resource may have moved between patients) and
    /// opened.
    fn open_versions(&self, who: &Principal, rtype: &str, id: &str, rows: &[VersionRow]) -> Result<Vec<Stored>> {
        // Every version is gated: a resource may have moved between patients.
        // Versions in one partition share its view.
        let mut views: Vec<(PartitionId, crate::access::RecordView)> = Vec::new();
        let mut at = Vec::with_capacity(rows.len());
        for r in rows {
            let i = match views.iter().position(|(p, _)| *p == r.partition) {
                Some(i) => i,
                None => {
                    views.push((r.partition, self.gate_row(who, r, Act::Read)?));
                    views.len() - 1
                }
            };
            at.push(i);
        }
        let mut out: Vec<Stored> = rows.iter().map(|r| self.open_row(r, Some((rtype, id)))).collect::<Result<_>>()?;
        for (i, s) in at.into_iter().zip(out.iter_mut()).filter(|(_, s)| !s.deleted) {
            self.gate_record(who, &views[i].1, rtype, 'r', &mut s.resource)?;
        }
        Ok(out)
    }
}

/// The window of `_history?_since=` / `_at=`, in microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default)]
pub struct HistoryWindow {
    /// Versions written at or after this instant.
    pub since: Option<i64>,
    /// The half-open period `[lo, hi)` whose current versions are asked for.
    pub at: Option<(i64, i64)>,
}

/// Most versions one `_since`/`_at` window may hold (it is walked whole to count them).
const MAX_WINDOW_VERSIONS: usize = 10_000;

/// The body of a PATCH.
#[derive(Debug)]
pub enum PatchBody {
    /// JSON Patch (RFC 6902), `application/json-patch+json`: applied whole or not at all.
    Json(json_patch::Patch),
    /// JSON Merge Patch (RFC 7386): members replace, `null` removes.
    Merge(Value),
    /// FHIRPath Patch: a `Parameters` resource of operations ([`brankas_fhir::fhirpath_patch`]).
    FhirPath(Value),
    /// `$meta-add` (`add`) or `$meta-delete`: the profiles, security labels and tags of a
    /// `Meta` added to, or removed from, the resource's own.
    Meta { add: bool, meta: Value },
}

impl PatchBody {
    /// The patch a Bundle entry carries (R4 §3.1.0.7.3): a FHIRPath Patch `Parameters`, or a
    /// Binary whose `contentType` is `application/json-patch+json` (or
    /// `application/merge-patch+json`) and whose `data` is the patch, base64-encoded.
    pub fn from_binary(resource: &Value) -> Result<PatchBody> {
        use base64::Engine as _;
        let bad = |m: &str| EngineError::BadRequest(m.to_string());
        match resource.get("resourceType").and_then(Value::as_str) {
            Some("Binary") => {}
            Some("Parameters") => return Ok(PatchBody::FhirPath(resource.clone())),
            _ => return Err(bad("a PATCH entry's resource is a Binary holding a JSON Patch")),
        }
        let ct = resource.get("contentType").and_then(Value::as_str).unwrap_or_default();
        let data = resource.get("data").and_then(Value::as_str).ok_or_else(|| bad("the patch Binary has no data"))?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(data).map_err(|_| bad("the patch Binary's data is not base64"))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad("the patch Binary's data is not JSON"))?;
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => {
                Ok(PatchBody::Json(serde_json::from_value(v).map_err(|_| bad("the JSON Patch has an operation that is not valid (op, path, value or from)"))?))
            }
            "application/merge-patch+json" if v.is_object() => Ok(PatchBody::Merge(v)),
            _ => Err(EngineError::UnsupportedMedia("a patch Binary's contentType is application/json-patch+json or application/merge-patch+json".into())),
        }
    }
}

/// Adds (or removes) the profiles, security labels and tags of `change` (a `Meta`) to (from)
/// `doc`'s meta; codings are the same when their system and code are. Whether anything changed.
fn apply_meta(doc: &mut Value, change: &Value, add: bool) -> Result<bool> {
    let bad = |m: &str| EngineError::BadRequest(m.to_string());
    let change = change.as_object().ok_or_else(|| bad("the meta parameter is a Meta"))?;
    if change.keys().any(|k| !matches!(k.as_str(), "profile" | "security" | "tag")) {
        return Err(bad("$meta-add and $meta-delete change a resource's profile, security and tag only"));
    }
    let obj = doc.as_object_mut().ok_or(EngineError::Integrity)?;
    let meta = obj.entry("meta").or_insert_with(|| json!({})).as_object_mut().ok_or(EngineError::Integrity)?;
    let mut changed = false;
    for key in ["profile", "security", "tag"] {
        let Some(given) = change.get(key) else { continue };
        let given = given.as_array().ok_or_else(|| bad("meta.profile, meta.security and meta.tag are lists"))?;
        let same = |a: &Value, b: &Value| -> bool { if key == "profile" { a == b } else { a.get("system") == b.get("system") && a.get("code") == b.get("code") } };
        for g in given {
            let ok = if key == "profile" { g.as_str().is_some_and(|p| !p.is_empty()) } else { g.get("code").and_then(Value::as_str).is_some_and(|c| !c.is_empty()) };
            if !ok {
                return Err(bad("each profile is a canonical URL, and each security label or tag a Coding with a code"));
            }
        }
        let list = meta.entry(key).or_insert_with(|| json!([])).as_array_mut().ok_or(EngineError::Integrity)?;
        let before = list.len();
        if add {
            for g in given {
                if !list.iter().any(|x| same(x, g)) {
                    list.push(g.clone());
                    changed = true;
                }
            }
        } else {
            list.retain(|x| !given.iter().any(|g| same(x, g)));
            changed |= list.len() != before;
        }
        if list.is_empty() {
            meta.remove(key);
        }
    }
    Ok(changed)
}

/// A new server-assigned id: 128 random bits, hex (reveals nothing, never guessable).
pub(crate) fn new_id() -> Result<String> {
    Ok(brankas_vault::random_id(16)?)
}

pub(crate) fn check_type(rtype: &str) -> Result<()> {
    if brankas_fhir::is_resource_type(rtype) { Ok(()) } else { Err(EngineError::BadRequest(format!("unknown resource type {}", safe_type(rtype)))) }
}
