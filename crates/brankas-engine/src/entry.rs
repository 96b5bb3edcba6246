//! Sealed search entries: what a search inside one patient decides on without opening every
//! record whole.
//!
//! Each current version of a resource carries, in the same commit, an *entry*: a small copy
//! of the resource holding only `resourceType`, `id`, `meta` (security labels, the
//! `written-by` writer stamps, `lastUpdated`, tags) and the elements the type's `patient` and
//! `subject` parameters read. That is everything the gates read (`RecordView::permits`: labels,
//! consent by type and label, writer stamps), the default order (`_lastUpdated`, then `id`),
//! and what a search naming only its patient matches on. A search whose criteria and sort keys
//! read no more ([`brankas_search::Query::reads`], [`gate_suffices`]: the usual
//! `Observation?patient=X&_count=50`, `Patient/X/Observation`) opens the entries, a few hundred
//! bytes each, filters, gates, sorts and counts them, and opens whole only the records of the
//! page it returns. Other searches open the records whole, as before entries existed; what
//! needs more of a record than its entry holds after the search (scope restrictions, a
//! count's disclosure) first gets the record whole ([`Engine::widen`]).
//!
//! At rest an entry is sealed under the patient's data key, bound like its record to type,
//! record key, version, partition and key version, under an AAD domain of its own
//! ([`brankas_vault::DataKey::seal_entry`]): it reveals nothing but its size. The record served
//! from a search decided on entries is the version each entry is sealed to.
//!
//! The plaintext starts with a fingerprint of the rule for the type (format and element
//! names): an entry written under another rule is not used, and its record is opened whole, as
//! is a record written before entries existed.

use std::collections::BTreeSet;

use brankas_search::{Query, Registry};
use brankas_store::EntryRow;
use brankas_vault::RecordAad;
use serde_json::Value;

use crate::{Engine, EngineError, Result, Stored};

/// Bumped whenever the rule of [`entry_copy`] changes in a way the registry does not show.
const FORMAT: u8 = 3;

/// Elements of an entry besides those the type's `patient` and `subject` parameters read.
const KEPT: &[&str] = &["resourceType", "id", "meta"];

/// Marks a [`Stored`] made from a search entry: its resource is the entry, never served as it is.
#[derive(Clone, Debug)]
pub(crate) struct EntryCopy;

/// What the rule gives for one type (computed once per registry and type: every seal and
/// every entry opened needs it).
struct Rule {
    fingerprint: [u8; 8],
    kept: BTreeSet<String>,
}

type Rules = std::sync::RwLock<std::collections::HashMap<(usize, String), std::sync::Arc<Rule>>>;
static RULES: std::sync::LazyLock<Rules> = std::sync::LazyLock::new(Default::default);

fn rule(registry: &Registry, rtype: &str) -> std::sync::Arc<Rule> {
    let k = (registry as *const Registry as usize, rtype.to_string());
    if let Some(r) = RULES.read().ok().and_then(|m| m.get(&k).cloned()) {
        return r;
    }
    let kept = kept_elements(registry, rtype);
    let r = std::sync::Arc::new(Rule { fingerprint: compute_fingerprint(rtype, &kept), kept });
    if let Ok(mut m) = RULES.write() {
        m.insert(k, r.clone());
    }
    r
}

fn kept_elements(registry: &Registry, rtype: &str) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = KEPT.iter().map(|s| s.to_string()).collect();
    for code in ["patient", "subject"] {
        if let Some(r) = registry.param_reads(rtype, code) {
            out.extend(r);
        }
    }
    out
}

/// The entry of `resource`: its elements the rule keeps.
pub(crate) fn entry_copy(registry: &Registry, rtype: &str, resource: &Value) -> Value {
    let Some(obj) = resource.as_object() else { return resource.clone() };
    let r = rule(registry, rtype);
    Value::Object(obj.iter().filter(|(k, _)| r.kept.contains(k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Whether a search by `query` on `rtype` can decide on entries: its criteria and sort keys
/// read only the elements an entry keeps. (Never for Patient, whose photos decide redaction.)
pub(crate) fn gate_suffices(registry: &Registry, rtype: &str, query: &Query) -> bool {
    rtype != "Patient" && query.reads().is_some_and(|r| r.is_subset(&rule(registry, rtype).kept))
}

/// The fingerprint of the rule for `rtype`: FNV-1a over [`FORMAT`], the type and the element
/// names kept.
pub(crate) fn fingerprint(registry: &Registry, rtype: &str) -> [u8; 8] {
    rule(registry, rtype).fingerprint
}

fn compute_fingerprint(rtype: &str, kept: &BTreeSet<String>) -> [u8; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for x in b {
            h ^= u64::from(*x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(&[FORMAT]);
    eat(rtype.as_bytes());
    kept.iter().for_each(|n| eat(n.as_bytes()));
    h.to_be_bytes()
}

impl Engine {
    /// Seals the entry of a version about to be written (same AAD as its record).
    pub(crate) fn seal_entry(&self, key: &brankas_vault::DataKey, aad: &RecordAad<'_>, resource: &Value) -> Result<Vec<u8>> {
        let mut plain = fingerprint(self.registry, aad.resource_type).to_vec();
        serde_json::to_writer(&mut plain, &entry_copy(self.registry, aad.resource_type, resource)).map_err(|_| EngineError::Integrity)?;
        Ok(key.seal_entry(aad, &plain)?)
    }

    /// Opens a current row's entry as a [`Stored`] holding the entry; `None` when the row has
    /// no usable entry (written before entries, under another rule, or erased). An entry that
    /// does not open under its row's AAD, or names another record, is an integrity error.
    pub(crate) fn open_entry(&self, row: &EntryRow) -> Result<Option<Stored>> {
        let Some(sealed) = &row.entry else { return Ok(None) };
        let key = self.data_key(&row.partition, false)?.ok_or(EngineError::Integrity)?;
        let aad = RecordAad { resource_type: &row.resource_type, record: &row.key, version: row.version, partition: &row.partition, dek_version: row.dek_version };
        let plain = key.open_entry(&aad, sealed)?;
        self.opens[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if plain.len() < 8 || plain[..8] != fingerprint(self.registry, &row.resource_type) {
            return Ok(None);
        }
        let resource: Value = serde_json::from_slice(&plain[8..]).map_err(|_| EngineError::Integrity)?;
        let id = resource.get("id").and_then(Value::as_str).ok_or(EngineError::Integrity)?;
        if resource.get("resourceType").and_then(Value::as_str) != Some(row.resource_type.as_str()) || self.vault.record_key(&row.resource_type, id) != row.key {
            return Err(EngineError::Integrity);
        }
        Ok(Some(Stored { resource, version: row.version, last_updated_us: row.last_updated_us, deleted: false, partition: row.partition, entry: Some(EntryCopy) }))
    }

    /// A current row as search sees it first: its entry, or the whole record when it has none.
    pub(crate) fn open_for_search(&self, row: &EntryRow) -> Result<Stored> {
        if let Some(s) = self.open_entry(row)? {
            return Ok(s);
        }
        let full = self.store.version(&row.key, row.version)?.ok_or(EngineError::Integrity)?;
        if full.partition != row.partition || full.resource_type != row.resource_type || full.deleted {
            return Err(EngineError::Integrity);
        }
        self.open_row(&full, None)
    }

    /// Gives a [`Stored`] made from an entry its whole record (for what reads more than an
    /// entry holds: scope restrictions, a count's disclosure). Others are left as they are.
    pub(crate) fn widen(&self, s: &mut Stored) -> Result<()> {
        if s.entry.is_some() {
            let entry = std::mem::replace(s, Stored { resource: Value::Null, version: 0, last_updated_us: 0, deleted: false, partition: s.partition, entry: None });
            *s = self.whole(entry)?;
        }
        Ok(())
    }

    /// The whole record behind a [`Stored`] made from an entry (others are returned as they
    /// are). The record served is the version the entry is sealed to (its AEAD binds it to
    /// this record key, version, partition and key; the store returns only the current
    /// version's entry), so every decision taken on the entry is the one the record gets: the
    /// entry was made from this very version in its commit, under the rule its fingerprint
    /// names. That each entry equals its record's is checked by `brankas verify` (and by the
    /// property test of the rule), not again on every page.
    pub(crate) fn complete(&self, _who: &brankas_auth::Principal, s: Stored) -> Result<Stored> {
        self.whole(s)
    }

    fn whole(&self, s: Stored) -> Result<Stored> {
        if s.entry.is_none() {
            return Ok(s);
        }
        let rtype = s.resource.get("resourceType").and_then(Value::as_str).ok_or(EngineError::Integrity)?;
        let id = s.resource.get("id").and_then(Value::as_str).ok_or(EngineError::Integrity)?;
        let key = self.vault.record_key(rtype, id);
        let row = self.store.version(&key, s.version)?.ok_or(EngineError::Integrity)?;
        if row.partition != s.partition || row.deleted {
            return Err(EngineError::Integrity);
        }
        let full = self.open_row(&row, Some((rtype, id)))?;
        if full.version != s.version || full.partition != s.partition {
            return Err(EngineError::Integrity);
        }
        Ok(full)
    }

    /// Records opened since start: `(whole records, search entries)` (for metrics and tests).
    pub fn open_counts(&self) -> (u64, u64) {
        (self.opens[0].load(std::sync::atomic::Ordering::Relaxed), self.opens[1].load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{ConsentRule, RecordView, WRITTEN_BY};
    use brankas_auth::Principal;
    use brankas_search::Query;
    use serde_json::json;

    /// xorshift64*: a fixed sequence, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[self.below(xs.len())]
        }
        fn coin(&mut self) -> bool {
            self.next() & 1 == 1
        }
    }

    const CODES: &[&str] = &["94558-4", "8310-5", "8867-4", "718-7", "ecg-1"];
    const LABELS: &[&str] = &["HIV", "PSY", "R", "N", "PHOTO"];
    const WRITERS: &[&str] = &["Organization/rs-a", "Organization/rs-b", "Patient/p1"];

    fn date(rng: &mut Rng) -> String {
        format!("20{:02}-{:02}-{:02}T{:02}:00:00+07:00", 18 + rng.below(8), 1 + rng.below(12), 1 + rng.below(28), rng.below(24))
    }

    fn coding(rng: &mut Rng) -> Value {
        json!({"coding": [{"system": "http://loinc.org", "code": rng.pick(CODES), "display": "Some display"}], "text": "free text"})
    }

    /// A resource of `rtype` with a random selection of elements, searchable and not.
    fn resource(rng: &mut Rng, rtype: &str, i: usize) -> Value {
        let mut o = json!({"resourceType": rtype, "id": format!("r{i}")});
        let mut meta = json!({"versionId": "1", "lastUpdated": date(rng)});
        if rng.coin() {
            meta["security"] = json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": rng.pick(LABELS)}]);
        }
        if rng.coin() {
            meta["extension"] = json!([{"url": WRITTEN_BY, "valueReference": {"reference": rng.pick(WRITERS)}}]);
        }
        if rng.below(4) == 0 {
            meta["tag"] = json!([{"system": "urn:t", "code": "t1"}]);
        }
        o["meta"] = meta;
        let subject = json!({"reference": format!("Patient/p{}", rng.below(2))});
        let mut set = |k: &str, v: Value, rng: &mut Rng| {
            if rng.below(3) != 0 {
                o[k] = v;
            }
        };
        set("text", json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">narrative</div>"}), rng);
        set("note", json!([{"text": "clinician's note"}]), rng);
        set("identifier", json!([{"system": "urn:id", "value": format!("v{}", rng.below(5))}]), rng);
        match rtype {
            "Observation" => {
                set("status", json!(rng.pick(&["final", "amended", "preliminary"])), rng);
                set("code", coding(rng), rng);
                set("category", json!([coding(rng)]), rng);
                set("subject", subject, rng);
                set("performer", json!([{"reference": "Organization/rs-a"}]), rng);
                set("interpretation", json!([coding(rng)]), rng);
                set("issued", json!(date(rng)), rng);
                match rng.below(4) {
                    0 => set("effectiveDateTime", json!(date(rng)), rng),
                    1 => set("effectivePeriod", json!({"start": date(rng), "end": date(rng)}), rng),
                    _ => {}
                }
                match rng.below(4) {
                    0 => set("valueQuantity", json!({"value": rng.below(300) as f64 / 10.0, "system": "http://unitsofmeasure.org", "code": "mg/dL"}), rng),
                    1 => set("valueString", json!("positive"), rng),
                    2 => set("valueCodeableConcept", coding(rng), rng),
                    _ => set("valueSampledData", json!({"origin": {"value": 0}, "period": 10, "dimensions": 1, "data": "1 2 3"}), rng),
                }
                set("component", json!([{"code": coding(rng), "valueQuantity": {"value": rng.below(100), "code": "mm[Hg]"}}]), rng);
            }
            "Condition" => {
                set("clinicalStatus", json!({"coding": [{"code": rng.pick(&["active", "resolved"])}]}), rng);
                set("code", coding(rng), rng);
                set("subject", subject, rng);
                set("onsetDateTime", json!(date(rng)), rng);
                set("recordedDate", json!(date(rng)), rng);
                set("evidence", json!([{"detail": [{"reference": "Observation/o1"}]}]), rng);
            }
            "Encounter" => {
                set("status", json!(rng.pick(&["finished", "in-progress"])), rng);
                set("class", json!({"code": rng.pick(&["AMB", "IMP"])}), rng);
                set("subject", subject, rng);
                set("period", json!({"start": date(rng), "end": date(rng)}), rng);
                set("serviceProvider", json!({"reference": "Organization/rs-a"}), rng);
                set("reasonCode", json!([coding(rng)]), rng);
            }
            _ => {
                set("name", json!([{"family": rng.pick(&["Lestari", "Wibowo"]), "given": ["Sri"]}]), rng);
                set("gender", json!(rng.pick(&["female", "male"])), rng);
                set("birthDate", json!(format!("19{:02}-0{}-1{}", 50 + rng.below(49), 1 + rng.below(9), rng.below(9))), rng);
                set("telecom", json!([{"system": "phone", "value": "08123456789"}]), rng);
                set("address", json!([{"city": "Jakarta"}]), rng);
                set("photo", json!([{"contentType": "image/png", "data": "AAAA"}]), rng);
                set("communication", json!([{"language": coding(rng)}]), rng);
            }
        }
        o
    }

    fn queries(rtype: &str) -> Vec<Vec<(&'static str, String)>> {
        let common: Vec<Vec<(&str, String)>> = vec![
            vec![],
            vec![("_lastUpdated", "ge2021-01-01".into())],
            vec![("_security", "HIV".into())],
            vec![("_tag", "urn:t|t1".into())],
            vec![("_id", "r3,r5,r8".into())],
            vec![("identifier", "urn:id|v2".into())],
            vec![("_sort", "_lastUpdated".into())],
            vec![("_sort", "-_id".into())],
        ];
        let own: Vec<Vec<(&str, String)>> = match rtype {
            "Observation" => vec![
                vec![("code", "http://loinc.org|8310-5".into())],
                vec![("code:text", "free".into())],
                vec![("status", "final,amended".into()), ("date", "ge2021-06-01".into())],
                vec![("value-quantity", "gt10".into())],
                vec![("value-quantity:missing", "true".into())],
                vec![("subject", "Patient/p1".into())],
                vec![("patient", "Patient/p1".into()), ("_sort", "-_lastUpdated".into())],
                vec![("category", "8867-4".into()), ("_sort", "-date".into())],
                vec![("combo-code", "718-7".into())],
                vec![("component-code", "ecg-1".into())],
                vec![("value-string", "pos".into())],
                vec![("performer", "Organization/rs-a".into())],
                vec![("_sort", "date".into())],
            ],
            "Condition" => vec![
                vec![("clinical-status", "active".into())],
                vec![("onset-date", "lt2022".into()), ("_sort", "-onset-date".into())],
                vec![("code", "94558-4".into())],
                vec![("evidence-detail", "Observation/o1".into())],
                vec![("recorded-date", "ge2020".into())],
            ],
            "Encounter" => vec![
                vec![("class", "AMB".into())],
                vec![("date", "ge2020-01-01".into()), ("_sort", "-date".into())],
                vec![("service-provider", "Organization/rs-a".into())],
                vec![("reason-code", "8310-5".into())],
            ],
            _ => vec![
                vec![("name", "lest".into())],
                vec![("family:exact", "Wibowo".into())],
                vec![("gender", "female".into()), ("birthdate", "lt1980".into())],
                vec![("phone", "08123456789".into())],
                vec![("address-city", "jak".into())],
                vec![("language", "718-7".into())],
                vec![("_sort", "birthdate".into())],
            ],
        };
        common.into_iter().chain(own).collect()
    }

    /// Labels and consent decide on an entry exactly as on the whole resource, and so do the
    /// searches decided on entries (those whose criteria and sort keys read only what an entry
    /// keeps), for random resources and queries; other searches are never decided on entries.
    #[test]
    fn an_entry_decides_as_the_whole_resource() {
        let registry = Registry::r4();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let now = brankas_search::instant_range("2026-11-30").unwrap().0;
        let deny_hiv = json!({"resourceType": "Consent", "status": "active", "scope": {"coding": [{"code": "patient-privacy"}]},
            "provision": {"type": "deny", "securityLabel": [{"code": "HIV"}]}});
        let permit_b = json!({"resourceType": "Consent", "status": "active", "scope": {"coding": [{"code": "patient-privacy"}]},
            "provision": {"type": "permit", "actor": [{"role": {"coding": [{"code": "PRCP"}]}, "reference": {"reference": "Organization/rs-b"}}], "class": [{"code": "Condition"}]}});
        let mut trusted = ConsentRule::from_consent(&permit_b, None).unwrap();
        trusted.trusted = true;
        let who = [Principal::local_operator_for(Some("Organization/rs-a".into())), Principal::local_operator_for(Some("Organization/rs-b".into()))];
        let views = [
            RecordView::OPEN,
            RecordView::restricted(Vec::new(), true, None, now),
            RecordView::restricted(vec![ConsentRule::from_consent(&deny_hiv, None).unwrap()], true, None, now),
            RecordView::restricted(vec![trusted], false, Some("Organization/rs-b".into()), now),
            RecordView::restricted(Vec::new(), false, Some("Organization/rs-a".into()), now),
        ];
        let mut checked = (0usize, 0usize, 0usize, 0usize);
        for rtype in ["Observation", "Condition", "Encounter", "Patient"] {
            let full: Vec<Value> = (0..120).map(|i| resource(&mut rng, rtype, i)).collect();
            let entries: Vec<Value> = full.iter().map(|r| entry_copy(registry, rtype, r)).collect();
            assert!(entries.iter().zip(&full).any(|(p, f)| p.to_string().len() < f.to_string().len()), "{rtype}: an entry keeps everything");
            for (f, e) in full.iter().zip(&entries) {
                assert_eq!(registry.patient_refs(rtype, f), registry.patient_refs(rtype, e), "{rtype}: owner");
                for v in &views {
                    for w in &who {
                        assert_eq!(v.permits(w, rtype, f), v.permits(w, rtype, e), "{rtype}: gate on {f}");
                    }
                }
            }
            for pairs in queries(rtype) {
                let pairs: Vec<(String, String)> = pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                let q = Query::parse(registry, rtype, &pairs).unwrap_or_else(|e| panic!("{rtype} {pairs:?}: {e}"));
                assert!(q.unknown_params().is_empty(), "{rtype} {pairs:?}");
                if !gate_suffices(registry, rtype, &q) {
                    checked.2 += 1;
                    continue;
                }
                let hits: Vec<bool> = full.iter().map(|r| q.matches(r)).collect();
                assert_eq!(hits, entries.iter().map(|r| q.matches(r)).collect::<Vec<_>>(), "{rtype} {pairs:?}: matches");
                checked.0 += hits.iter().filter(|h| **h).count();
                checked.1 += hits.iter().filter(|h| !**h).count();
                let mut by_full: Vec<(usize, &Value)> = full.iter().enumerate().collect();
                let mut by_entry: Vec<(usize, &Value)> = entries.iter().enumerate().collect();
                q.sort_resources(&mut by_full, |t| t.1);
                q.sort_resources(&mut by_entry, |t| t.1);
                assert_eq!(by_full.iter().map(|t| t.0).collect::<Vec<_>>(), by_entry.iter().map(|t| t.0).collect::<Vec<_>>(), "{rtype} {pairs:?}: sorted");
                checked.3 += 1;
            }
        }
        // Not vacuous: some queries are decided on entries (both matching and missing), and
        // others are not (they read more than an entry keeps).
        assert!(checked.0 > 100 && checked.1 > 100 && checked.2 > 20 && checked.3 >= 12, "{checked:?}");
    }

    #[test]
    fn the_fingerprint_follows_the_rule() {
        let r = Registry::r4();
        assert_eq!(fingerprint(r, "Observation"), fingerprint(r, "Observation"));
        assert_ne!(fingerprint(r, "Observation"), fingerprint(r, "Condition"));
    }
}
