//! DICOM instances as FHIR: each stored instance is a `Binary` (`application/dicom`, its
//! Part 10 bytes in a sealed blob, its DICOM JSON metadata and study/series/instance
//! attributes as extensions of `Binary._data`) in its patient's partition, and the patient's
//! `ImagingStudy` lists it (series, instance, and an extension naming the Binary).
//!
//! A study is found across patients only by its Study Instance UID, through a blind-index
//! term, like an identity lookup; everything else about imaging is read inside one patient.
//! A study belongs to one patient: instances of a known study for another patient are refused.
//!
//! *Accepted leakage, introduced here:* one blind-index term per ImagingStudy (an HMAC of its
//! Study Instance UID), so the store learns which record holds a given study UID if it can
//! compute that HMAC (it cannot without the vault's key). A UID is a high-entropy, unguessable
//! value, not a low-cardinality attribute.
//!
//! Known limit: an instance's Binary and the study's new version are two commits; a failure
//! between them leaves a Binary no study lists (readable as a Binary, not through DICOMweb).
//! Study updates are serialised within a replica; two replicas creating the same new study
//! at the same moment could each create one (the lookup then sees both).

use std::collections::BTreeSet;

use base64::Engine as _;
use brankas_auth::Principal;
use brankas_dicom::Instance;
use brankas_vault::BlindTerm;
use serde_json::{Value, json};

use crate::access::Act;
use crate::binary::BinaryTarget;
use crate::{Admitted, Engine, EngineError, Result, Stored};

/// On `ImagingStudy.series.instance`: the Binary holding the instance.
pub const INSTANCE_BINARY_EXT: &str = "https://brankas.id/fhir/StructureDefinition/dicom-instance-binary";
/// On `Binary._data`: the instance's DICOM JSON metadata (bulk data by reference), base64.
pub const DICOM_METADATA_EXT: &str = "https://brankas.id/fhir/StructureDefinition/dicom-metadata";
/// On `Binary._data`: the instance's identifying attributes (JSON), base64.
pub const DICOM_INSTANCE_EXT: &str = "https://brankas.id/fhir/StructureDefinition/dicom-instance";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const UID_SYSTEM: &str = "urn:dicom:uid";

/// An instance stored by [`Engine::store_instance`].
pub struct StoredInstance {
    pub binary: Stored,
    pub binary_id: String,
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

fn ext_value(resource: &Value, url: &str) -> Option<Vec<u8>> {
    let exts = resource.get("_data")?.get("extension")?.as_array()?;
    let v = exts.iter().find(|e| e.get("url").and_then(Value::as_str) == Some(url))?.get("valueBase64Binary")?.as_str()?;
    base64::engine::general_purpose::STANDARD.decode(v).ok()
}

/// The instance facts stored on a DICOM Binary.
pub fn instance_of(binary: &Value) -> Option<Instance> {
    serde_json::from_slice(&ext_value(binary, DICOM_INSTANCE_EXT)?).ok()
}

/// The DICOM JSON (PS3.18 F.2) metadata stored on a DICOM Binary, bulk data by reference.
pub fn dicom_metadata(binary: &Value) -> Option<Value> {
    serde_json::from_slice(&ext_value(binary, DICOM_METADATA_EXT)?).ok()
}

/// `urn:oid:` form of a UID, as FHIR identifiers and codings carry it.
fn oid(uid: &str) -> String {
    format!("urn:oid:{uid}")
}

/// The Study Instance UID of an ImagingStudy.
pub fn study_uid_of(study: &Value) -> Option<String> {
    study.get("identifier")?.as_array()?.iter().find_map(|i| {
        (i.get("system").and_then(Value::as_str) == Some(UID_SYSTEM)).then(|| i.get("value").and_then(Value::as_str).map(|v| v.trim_start_matches("urn:oid:").to_string()))?
    })
}

/// `YYYYMMDD` as a FHIR date (a time without a time zone cannot be a FHIR dateTime).
fn fhir_date(d: &str) -> Option<String> {
    let d = d.trim();
    (d.len() == 8 && d.bytes().all(|c| c.is_ascii_digit())).then(|| format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..8]))
}

impl Engine {
    fn study_term(&self, uid: &str) -> BlindTerm {
        self.vault.blind_term("dicom-study", &[uid])
    }

    /// Blind-index terms of an ImagingStudy: its Study Instance UIDs.
    pub(crate) fn imaging_terms(&self, study: &Value) -> Vec<BlindTerm> {
        study_uid_of(study).map(|u| vec![self.study_term(&u)]).unwrap_or_default()
    }

    /// The current ImagingStudy rows with this Study Instance UID, ungated.
    fn studies_by_uid(&self, uid: &str) -> Result<Vec<(brankas_store::VersionRow, Stored)>> {
        let hits = self.term_hits(&self.study_term(uid), "ImagingStudy")?;
        // A tampered index row must not lead to another study.
        if hits.iter().any(|(_, s)| study_uid_of(&s.resource).as_deref() != Some(uid)) {
            return Err(EngineError::Integrity);
        }
        Ok(hits)
    }

    /// The ImagingStudy with this Study Instance UID, if `who` may read it.
    pub fn study_by_uid(&self, who: &Principal, uid: &str) -> Result<Admitted<Stored>> {
        self.require(who, "ImagingStudy", 'r')?;
        // Access is decided on the row (its patient) before the study is decrypted.
        let row = self.term_rows(&self.study_term(uid), "ImagingStudy")?.into_iter().next().ok_or(EngineError::NotFound)?;
        let view = self.gate_row(who, &row, Act::Read)?;
        let mut s = self.open_row(&row, None)?;
        // A tampered index row must not lead to another study.
        if study_uid_of(&s.resource).as_deref() != Some(uid) {
            return Err(EngineError::Integrity);
        }
        self.gate_record(who, &view, "ImagingStudy", 'r', &mut s.resource)?;
        let d = self.disclosure_of([&s]);
        Ok(Admitted::new(s, d))
    }

    /// The patient's study with this UID, if there is one; refuses a study of another patient.
    fn patient_study(&self, partition: &brankas_store::PartitionId, study_uid: &str) -> Result<Option<(brankas_store::VersionRow, Stored)>> {
        let found = self.studies_by_uid(study_uid)?;
        if found.iter().any(|(row, _)| row.partition != *partition) {
            return Err(EngineError::Unprocessable("this study belongs to another patient".into()));
        }
        Ok(found.into_iter().next())
    }

    /// Refuses a study UID that belongs to another patient (before instances are stored for it).
    pub fn check_study_patient(&self, patient_id: &str, study_uid: &str) -> Result<()> {
        self.patient_study(&self.vault.patient_partition(patient_id), study_uid).map(drop)
    }

    /// Stores one DICOM instance's bytes as a Binary of the target's patient, with its
    /// metadata. The study is updated separately ([`Engine::link_instances`]).
    pub fn store_instance(&self, who: &Principal, target: &BinaryTarget, bytes: &[u8], instance: &Instance, metadata: &Value) -> Result<Admitted<StoredInstance>> {
        let mut sink = self.blob_sink(target)?;
        sink.write(bytes)?;
        let blob = sink.finish()?;
        let inst = serde_json::to_vec(instance).map_err(|_| EngineError::Integrity)?;
        let meta = serde_json::to_vec(metadata).map_err(|_| EngineError::Integrity)?;
        let extra = vec![json!({"url": DICOM_INSTANCE_EXT, "valueBase64Binary": b64(&inst)}), json!({"url": DICOM_METADATA_EXT, "valueBase64Binary": b64(&meta)})];
        let out = self.binary_commit_with(who, target, "application/dicom", blob, None, extra)?;
        let d = self.disclosure_of([&out.stored]);
        Ok(Admitted::new(StoredInstance { binary: out.stored, binary_id: target.id.clone() }, d))
    }

    /// Adds stored instances to their patient's ImagingStudy (creating it), one new version
    /// per study.
    pub fn link_instances(&self, who: &Principal, patient_id: &str, items: &[(String, Instance)]) -> Result<Admitted<Vec<Stored>>> {
        let _one_at_a_time = self.imaging.lock().map_err(|_| EngineError::Integrity)?;
        let mut by_study: Vec<(&str, Vec<&(String, Instance)>)> = Vec::new();
        for it in items {
            match by_study.iter_mut().find(|(u, _)| *u == it.1.study_uid) {
                Some((_, v)) => v.push(it),
                None => by_study.push((&it.1.study_uid, vec![it])),
            }
        }
        let partition = self.vault.patient_partition(patient_id);
        let mut out = Vec::new();
        for (uid, list) in by_study {
            let existing = self.patient_study(&partition, uid)?;
            let (id, mut study, version) = match existing {
                Some((row, s)) => (s.resource.get("id").and_then(Value::as_str).unwrap_or_default().to_string(), s.resource, Some(row.version)),
                None => (crate::crud::new_id()?, new_study(patient_id, &list[0].1), None),
            };
            for (binary_id, inst) in list {
                add_instance(&mut study, binary_id, inst, who.organization());
            }
            study["id"] = json!(id);
            let w = match version {
                Some(v) => self.update_gated(who, "ImagingStudy", &id, study, Some(v))?,
                None => self.update_gated(who, "ImagingStudy", &id, study, None)?,
            };
            out.push(w.stored);
        }
        let d = self.disclosure_of(&out);
        Ok(Admitted::new(out, d))
    }

    /// The instances of a study (optionally of one series, or one instance) as stored, read
    /// with `who`'s rights: the Binaries the study names.
    pub fn study_instances(&self, who: &Principal, study: &Stored, series_uid: Option<&str>, sop_uid: Option<&str>) -> Result<Admitted<Vec<Stored>>> {
        let mut out = Vec::new();
        for series in study.resource.get("series").and_then(Value::as_array).into_iter().flatten() {
            if series_uid.is_some_and(|u| series.get("uid").and_then(Value::as_str) != Some(u)) {
                continue;
            }
            for i in series.get("instance").and_then(Value::as_array).into_iter().flatten() {
                if sop_uid.is_some_and(|u| i.get("uid").and_then(Value::as_str) != Some(u)) {
                    continue;
                }
                let Some(bid) = i
                    .get("extension")
                    .and_then(Value::as_array)
                    .and_then(|e| e.iter().find(|x| x.get("url").and_then(Value::as_str) == Some(INSTANCE_BINARY_EXT)))
                    .and_then(|x| x.pointer("/valueReference/reference"))
                    .and_then(Value::as_str)
                    .and_then(|r| r.strip_prefix("Binary/"))
                else {
                    continue;
                };
                let b = match self.read_gated(who, "Binary", bid) {
                    Ok(b) => b,
                    Err(EngineError::NotFound | EngineError::Gone) => continue,
                    Err(e) => return Err(e),
                };
                out.push(b);
            }
        }
        let d = self.disclosure_of(&out);
        Ok(Admitted::new(out, d))
    }
}

fn new_study(patient_id: &str, first: &Instance) -> Value {
    let mut s = json!({
        "resourceType": "ImagingStudy",
        "status": "available",
        "identifier": [{"system": UID_SYSTEM, "value": oid(&first.study_uid)}],
        "subject": {"reference": format!("Patient/{patient_id}")},
    });
    if let Some(a) = first.accession_number.as_deref().filter(|a| !a.is_empty())
        && let Some(ids) = s["identifier"].as_array_mut()
    {
        ids.push(json!({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}, "value": a}));
    }
    if let Some(d) = first.study_date.as_deref().and_then(fhir_date) {
        s["started"] = json!(d);
    }
    if let Some(d) = first.study_description.as_deref().filter(|d| !d.is_empty()) {
        s["description"] = json!(d);
    }
    s
}

/// Adds an instance to its series (creating the series). A new series names the sending
/// facility as its performer, which puts the study in that facility's imaging work list.
fn add_instance(study: &mut Value, binary_id: &str, inst: &Instance, sender: Option<&str>) {
    if study.get("series").and_then(Value::as_array).is_none() {
        study["series"] = json!([]);
    }
    let Some(series_list) = study["series"].as_array_mut() else { return };
    let idx = match series_list.iter().position(|s| s.get("uid").and_then(Value::as_str) == Some(inst.series_uid.as_str())) {
        Some(i) => i,
        None => {
            let mut s = json!({"uid": inst.series_uid, "modality": {"system": DCM, "code": inst.modality.as_deref().filter(|m| !m.is_empty()).unwrap_or("OT")}});
            if let Some(n) = inst.series_number.filter(|n| *n >= 0) {
                s["number"] = json!(n);
            }
            if let Some(d) = inst.series_description.as_deref().filter(|d| !d.is_empty()) {
                s["description"] = json!(d);
            }
            if let Some(d) = inst.series_date.as_deref().and_then(fhir_date) {
                s["started"] = json!(d);
            }
            if let Some(org) = sender {
                s["performer"] =
                    json!([{"function": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRF"}]}, "actor": {"reference": org}}]);
            }
            series_list.push(s);
            series_list.len() - 1
        }
    };
    let series = &mut series_list[idx];
    if series.get("instance").and_then(Value::as_array).is_none() {
        series["instance"] = json!([]);
    }
    let mut i = json!({
        "extension": [{"url": INSTANCE_BINARY_EXT, "valueReference": {"reference": format!("Binary/{binary_id}")}}],
        "uid": inst.sop_instance_uid,
        "sopClass": {"system": "urn:ietf:rfc:3986", "code": oid(&inst.sop_class_uid)},
    });
    if let Some(n) = inst.instance_number.filter(|n| *n >= 0) {
        i["number"] = json!(n);
    }
    if let Some(list) = series["instance"].as_array_mut() {
        match list.iter().position(|x| x.get("uid").and_then(Value::as_str) == Some(inst.sop_instance_uid.as_str())) {
            Some(p) => list[p] = i,
            None => list.push(i),
        }
        let n = list.len();
        series["numberOfInstances"] = json!(n);
    }
    // Study-level counts and modalities follow the series.
    let series_list = study["series"].as_array().cloned().unwrap_or_default();
    let total: u64 = series_list.iter().filter_map(|s| s.get("numberOfInstances").and_then(Value::as_u64)).sum();
    let modalities: BTreeSet<String> = series_list.iter().filter_map(|s| s.pointer("/modality/code").and_then(Value::as_str).map(String::from)).collect();
    study["numberOfSeries"] = json!(series_list.len());
    study["numberOfInstances"] = json!(total);
    study["modality"] = Value::Array(modalities.into_iter().map(|m| json!({"system": DCM, "code": m})).collect());
}
