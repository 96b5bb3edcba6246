//! Facility work lists: the one cross-patient search, for a facility's own clients.
//!
//! `Encounter?service-provider=Organization/<own>&date=ge…&date=le…` (the day's visits),
//! `ServiceRequest?performer=Organization/<own>&authored=ge…&authored=le…` (incoming
//! referrals) and `ImagingStudy?performer=Organization/<own>&started=ge…&started=le…` (the
//! studies its modalities sent, by study date) find, across patients, the records that name the caller's own organization,
//! within a bounded date range. No other cross-patient search exists.
//!
//! The index is an append-only list per (organization, type, hour): one store entry
//! ([`brankas_store::ListEntry`]) per record that joined it, written in the same atomic batch
//! as the record. A list is named by its tag, a keyed hash of its id (the record key of
//! [`WORKLIST_TYPE`] and `Organization/x|Encounter|<hour>`); an entry by a keyed hash of the
//! list id and the record key, so that the same record joining the same list again (an update
//! that stays in the hour) stores nothing new; its content, the record key, is sealed under
//! the system partition's data key and bound to its tag and id ([`brankas_vault::EntryAad`]).
//! Entries carry no expectation: any number of writers add to one list at once without a
//! conflict, and the list costs one small row per visit, never a rewrite.
//!
//! At rest this reveals the number of entries per tag and when they were written, never which
//! organization, day or patients (tags and ids are keyed hashes; record keys are sealed, so two
//! patients' visits to the same facility in the same hour are not linked). A read gathers the
//! entries of every hour of the range, opens and dedupes them, then re-reads and re-checks each
//! record against the query (it may have changed or moved since); the patient's consent and
//! sensitive labels apply as to any other read, and erased patients' records are skipped
//! (their entries stay: sealed under the system key, they name nothing readable).
//!
//! Releases before list entries kept each list as one sealed document of type
//! [`WORKLIST_TYPE`], rewritten whole when a record joined it. Those documents are still read,
//! beside the entries, in a database converted from that layout (the store marks it with
//! [`brankas_store::META_LEGACY_LISTS`]); nothing writes them any more.

use std::collections::{BTreeMap, BTreeSet};

use brankas_auth::{Principal, Role};
use brankas_search::Query;
use brankas_store::{ListEntry, META_LEGACY_LISTS, RecordKey, VersionRow};
use brankas_vault::EntryAad;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Engine, EngineError, Result, Stored};

/// Resource type of the work-list documents of earlier releases (never served or matched by a
/// search, no longer written), and the domain of the lists' tags.
pub(crate) const WORKLIST_TYPE: &str = "BrankasWorklist";

/// The domain of entry ids (a keyed hash of list id and record key; never a stored type).
const ENTRY_DOMAIN: &str = "BrankasWorklistEntry";

/// Longest date range of one work-list search, in days.
pub const MAX_WORKLIST_DAYS: i64 = 92;

const US_PER_DAY: i64 = 86_400_000_000;
const US_PER_HOUR: i64 = 3_600_000_000;

/// Work-list entries to add: list id (`Organization/x|Encounter|<hour>`) → record keys.
pub(crate) type WorklistFacts = BTreeMap<String, BTreeSet<RecordKey>>;

/// A work-list document of an earlier release.
#[derive(Serialize, Deserialize)]
struct Worklist {
    id: String,
    /// Record keys, hex.
    keys: BTreeSet<String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn list_id(org: &str, rtype: &str, hour: i64) -> String {
    format!("{org}|{rtype}|{hour}")
}

/// The parameters of the work lists: (organization parameter, date parameter).
fn params_of(rtype: &str) -> Option<(&'static str, &'static str)> {
    match rtype {
        "Encounter" => Some(("service-provider", "date")),
        "ServiceRequest" => Some(("performer", "authored")),
        "ImagingStudy" => Some(("performer", "started")),
        _ => None,
    }
}

/// The (organization, hour) entries a record belongs to.
pub(crate) fn entries(rtype: &str, resource: &Value, now: i64) -> Vec<(String, i64)> {
    let day_of = |s: Option<&Value>| -> i64 { s.and_then(Value::as_str).and_then(brankas_search::instant_range).map(|(lo, _)| lo).unwrap_or(now).div_euclid(US_PER_HOUR) };
    let org = |v: &Value| -> Option<String> {
        let r = v.get("reference")?.as_str()?;
        brankas_fhir::is_valid_id(r.strip_prefix("Organization/")?).then(|| r.to_string())
    };
    match rtype {
        "Encounter" => {
            let day = day_of(resource.get("period").and_then(|p| p.get("start")));
            resource.get("serviceProvider").and_then(org).map(|o| vec![(o, day)]).unwrap_or_default()
        }
        "ServiceRequest" => {
            let day = day_of(resource.get("authoredOn"));
            resource.get("performer").and_then(Value::as_array).into_iter().flatten().filter_map(org).map(|o| (o, day)).collect()
        }
        "ImagingStudy" => {
            // The facilities that performed a series (the sender of a DICOM study), by the
            // study's start.
            let day = day_of(resource.get("started"));
            let mut orgs: Vec<(String, i64)> = resource
                .get("series")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|s| s.get("performer").and_then(Value::as_array).into_iter().flatten())
                .filter_map(|p| p.get("actor").and_then(org))
                .map(|o| (o, day))
                .collect();
            orgs.sort();
            orgs.dedup();
            orgs
        }
        _ => Vec::new(),
    }
}

/// The hour range `[first, last]` a work-list query names through `param` (ge/gt/le/lt/eq
/// prefixes), or why it cannot be served.
fn day_range(pairs: &[(String, String)], param: &str) -> Result<(i64, i64)> {
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    for (_, v) in pairs.iter().filter(|(k, _)| k == param) {
        let (prefix, date) = if v.len() > 2 && v.as_bytes()[..2].iter().all(u8::is_ascii_lowercase) { v.split_at(2) } else { ("eq", v.as_str()) };
        let (a, b) = brankas_search::instant_range(date).ok_or_else(|| EngineError::Search(format!("{param}: not a date")))?;
        match prefix {
            "ge" | "gt" | "sa" => lo = lo.max(a),
            "le" | "lt" | "eb" => hi = hi.min(b - 1),
            "eq" => {
                lo = lo.max(a);
                hi = hi.min(b - 1);
            }
            _ => return Err(EngineError::Search(format!("{param}: prefix not supported in a work list"))),
        }
    }
    if lo == i64::MIN || hi == i64::MAX {
        return Err(EngineError::Search(format!("a work list needs a bounded {param} range (e.g. {param}=ge2026-11-01&{param}=le2026-11-30), at most {MAX_WORKLIST_DAYS} days")));
    }
    if hi < lo {
        return Ok((1, 0));
    }
    if (hi - lo) / US_PER_DAY + 1 > MAX_WORKLIST_DAYS {
        return Err(EngineError::Search(format!("a work list covers at most {MAX_WORKLIST_DAYS} days; narrow the {param} range")));
    }
    Ok((lo.div_euclid(US_PER_HOUR), hi.div_euclid(US_PER_HOUR)))
}

impl Engine {
    /// A work-list document of an earlier release.
    fn worklist_row(&self, id: &str) -> Result<Option<(Worklist, VersionRow)>> {
        let key = self.vault.record_key(WORKLIST_TYPE, id);
        let Some(row) = self.store.current(&key)? else { return Ok(None) };
        if row.resource_type != WORKLIST_TYPE || row.partition != self.vault.system_partition() {
            return Err(EngineError::Integrity);
        }
        let s = self.open_row(&row, Some((WORKLIST_TYPE, id)))?;
        let wl: Worklist = serde_json::from_value(s.resource).map_err(|_| EngineError::Integrity)?;
        Ok(Some((wl, row)))
    }

    /// The tag of list `id` in the store.
    fn list_tag(&self, id: &str) -> [u8; 32] {
        self.vault.record_key(WORKLIST_TYPE, id).0
    }

    /// The id of `key`'s entry in list `id`: the same record joining the same list again has
    /// the same entry.
    fn entry_id(&self, id: &str, key: &RecordKey) -> [u8; 32] {
        self.vault.record_key(ENTRY_DOMAIN, &format!("{id}|{}", hex(&key.0))).0
    }

    /// The list entries `facts` adds, sealed, for the batch that writes the records.
    pub(crate) fn worklist_entries(&self, facts: &WorklistFacts) -> Result<Vec<ListEntry>> {
        if facts.is_empty() {
            return Ok(Vec::new());
        }
        let partition = self.vault.system_partition();
        let dek = self.data_key(&partition, true)?.ok_or(EngineError::Integrity)?;
        let mut out = Vec::new();
        for (id, keys) in facts {
            let list = self.list_tag(id);
            for key in keys {
                let entry = self.entry_id(id, key);
                let sealed = dek.seal_list_entry(&EntryAad { list: &list, entry: &entry, partition: &partition, dek_version: 1 }, &key.0)?;
                out.push(ListEntry { list, entry, sealed });
            }
        }
        Ok(out)
    }

    /// Opens a list entry: the record key it holds. An entry that does not open under its tag
    /// and id, or whose id is not its record's in this list, is [`EngineError::Integrity`].
    fn open_list_entry(&self, id: Option<&str>, e: &ListEntry) -> Result<RecordKey> {
        let partition = self.vault.system_partition();
        let dek = self.data_key(&partition, false)?.ok_or(EngineError::Integrity)?;
        let plain = dek.open_list_entry(&EntryAad { list: &e.list, entry: &e.entry, partition: &partition, dek_version: 1 }, &e.sealed)?;
        let key = RecordKey(plain.as_slice().try_into().map_err(|_| EngineError::Integrity)?);
        if id.is_some_and(|id| self.entry_id(id, &key) != e.entry) {
            return Err(EngineError::Integrity);
        }
        Ok(key)
    }

    /// The record keys of the lists `ids`, per list (entries, and the documents of an earlier
    /// release where the database may hold them).
    fn worklist_keys(&self, ids: &[String]) -> Result<Vec<BTreeSet<RecordKey>>> {
        let tags: BTreeMap<[u8; 32], usize> = ids.iter().enumerate().map(|(i, id)| (self.list_tag(id), i)).collect();
        let mut out = vec![BTreeSet::new(); ids.len()];
        for e in self.store.list_entries(&tags.keys().copied().collect::<Vec<_>>())? {
            let i = *tags.get(&e.list).ok_or(EngineError::Integrity)?;
            out[i].insert(self.open_list_entry(Some(&ids[i]), &e)?);
        }
        if self.store.get_meta(META_LEGACY_LISTS)?.is_some() {
            for (i, id) in ids.iter().enumerate() {
                if let Some((wl, _)) = self.worklist_row(id)? {
                    out[i].extend(wl.keys.iter().filter_map(|k| unhex(k)).map(RecordKey));
                }
            }
        }
        Ok(out)
    }

    /// Checks a stored list entry without serving it (`brankas verify`): it opens under the
    /// system partition's key, bound to its tag and id, and holds a record key.
    pub fn verify_list_entry(&self, e: &ListEntry) -> std::result::Result<(), crate::RowProblem> {
        match self.open_list_entry(None, e) {
            Ok(_) => Ok(()),
            Err(EngineError::Integrity) => Err(crate::RowProblem::DoesNotOpen),
            Err(e) => Err(crate::RowProblem::Unavailable(e.to_string())),
        }
    }

    /// How a facility's visits are spread over time: `(hour, visits)` of every hour in the
    /// last `days` days that holds any of `organization`'s Encounters, oldest first. For
    /// placing canaries where walks of the work list pass (`brankas-api`'s `canary.rs`); only
    /// the organization's own writer (or the operator) may ask, and it learns counts only.
    pub fn visit_profile(&self, who: &Principal, organization: &str, days: i64) -> Result<Vec<(i64, usize)>> {
        if !who.is_local_operator() && (who.role() != Role::FacilitySystem || who.organization() != Some(organization)) {
            return Err(EngineError::Forbidden("a facility's visit profile is its own".into()));
        }
        let now = crate::crud::now_us().div_euclid(US_PER_HOUR);
        let hours: Vec<i64> = (now - days.clamp(1, 3660) * 24..=now).collect();
        let ids: Vec<String> = hours.iter().map(|h| list_id(organization, "Encounter", *h)).collect();
        Ok(hours.into_iter().zip(self.worklist_keys(&ids)?).filter(|(_, k)| !k.is_empty()).map(|(h, k)| (h, k.len())).collect())
    }

    /// Serves a work-list search if the query is one (`None` otherwise).
    pub(crate) fn worklist_search(&self, who: &Principal, rtype: &str, query: &Query, pairs: &[(String, String)]) -> Option<Result<Vec<Stored>>> {
        let (org_param, date_param) = params_of(rtype)?;
        let org_value = pairs.iter().find(|(k, _)| k == org_param).map(|(_, v)| v.as_str())?;
        Some(self.run_worklist(who, rtype, query, pairs, org_value, date_param))
    }

    fn run_worklist(&self, who: &Principal, rtype: &str, query: &Query, pairs: &[(String, String)], org_value: &str, date_param: &str) -> Result<Vec<Stored>> {
        let org = if org_value.starts_with("Organization/") { org_value.to_string() } else { format!("Organization/{org_value}") };
        if !who.is_local_operator() && (!matches!(who.role(), Role::FacilitySystem | Role::Clinician) || who.organization() != Some(org.as_str())) {
            return Err(EngineError::Forbidden("a work list is searched by the organization's own clients only, for that organization".into()));
        }
        let (first, last) = day_range(pairs, date_param)?;
        let ids: Vec<String> = (first..=last).map(|h| list_id(&org, rtype, h)).collect();
        let keys: BTreeSet<RecordKey> = self.worklist_keys(&ids)?.into_iter().flatten().collect();
        if keys.len() > self.limits.max_scan {
            return Err(EngineError::Search("too many records in this work list; narrow the date range".into()));
        }
        let mut out = Vec::new();
        let mut views = BTreeMap::new();
        for key in keys {
            let Some(row) = self.store.current(&key)? else { continue };
            if row.deleted || row.resource_type != rtype {
                continue;
            }
            // An erased patient's records stay listed (entries are never removed) but are
            // gone: skipped.
            if matches!(self.data_key(&row.partition, false), Err(EngineError::Gone)) {
                continue;
            }
            // How this patient's records are shown to the caller is decided before any of them
            // is decrypted.
            let view = match views.entry(row.partition) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(self.record_view(who, &row.partition)?),
            };
            let mut s = self.open_row(&row, None)?;
            // The record may have changed since it was listed: it must still name this
            // organization, and match the whole query.
            if !entries(rtype, &s.resource, 0).iter().any(|(o, _)| *o == org) || !query.matches(&s.resource) {
                continue;
            }
            if !view.permits(who, rtype, &s.resource) {
                continue;
            }
            view.redact(who, rtype, &mut s.resource);
            out.push(s);
        }
        Ok(out)
    }
}

/// The work-list entries of prepared versions.
pub(crate) fn facts_of(prepared: &[crate::Prepared], now: i64) -> WorklistFacts {
    let mut facts = WorklistFacts::new();
    for p in prepared.iter().filter(|p| !p.row.deleted) {
        for (org, hour) in entries(&p.row.resource_type, &p.stored.resource, now) {
            facts.entry(list_id(&org, &p.row.resource_type, hour)).or_default().insert(p.row.key);
        }
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use brankas_store::{Expect, NewVersion, SqliteStore, Store, WriteBatch};
    use brankas_vault::{KeyFile, RecordAad, Vault};
    use serde_json::json;
    use std::sync::Arc;

    /// An engine over a fresh data directory in `dir`, writing its audit log there.
    fn engine(dir: &std::path::Path) -> Engine {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("brankas.db")).unwrap());
        let provider = Arc::new(KeyFile::create(&dir.join("key")).unwrap());
        let (vault, _) = Vault::create(provider).unwrap();
        let vault = Arc::new(vault);
        let engine = Engine::new(store.clone(), vault.clone());
        engine.set_audit(Arc::new(brankas_audit::AuditLog::open(store, vault).unwrap()));
        engine
    }

    fn visit(pid: &str, start: &str) -> Value {
        json!({"resourceType": "Encounter", "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{pid}")}, "serviceProvider": {"reference": "Organization/rs-a"}, "period": {"start": start, "end": start.replace("T08", "T09")}})
    }

    fn found(engine: &Engine, who: &Principal, date: &str) -> Vec<String> {
        let pairs = vec![("service-provider".to_string(), "Organization/rs-a".to_string()), ("date".to_string(), date.to_string())];
        let query = Query::parse(engine.registry, "Encounter", &pairs).unwrap();
        let mut ids: Vec<String> =
            engine.worklist_search(who, "Encounter", &query, &pairs).unwrap().unwrap().into_iter().map(|s| s.resource["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    }

    /// A data directory of the release that kept each list as one document: its documents
    /// are still read (beside the entries written since), as long as the store says the
    /// database comes from that layout.
    #[test]
    fn work_list_documents_of_an_earlier_release_are_still_read() {
        let dir = std::env::temp_dir().join(format!("brankas-worklist-{}", brankas_vault::random_id(8).unwrap()));
        std::fs::create_dir_all(&dir).unwrap();
        let engine = engine(&dir);
        let who = Principal::local_operator_for(Some("Organization/rs-a".into()));
        let _ = engine.update(&who, "Patient", "p1", json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Lestari"}]}), None).unwrap();
        // Written now: an entry.
        let mut new = visit("p1", "2026-11-30T08:10:00+07:00");
        new["id"] = json!("e-new");
        let _ = engine.update(&who, "Encounter", "e-new", new, None).unwrap();
        // Written by the earlier release: the record without an entry, and the hour's list
        // document naming it.
        let old = {
            let mut v = visit("p1", "2026-11-30T08:40:00+07:00");
            v["id"] = json!("e-old");
            v
        };
        let now = crate::crud::now_us();
        let p = engine.prepare(&who, "Encounter", "e-old", old.clone(), None, Expect::Absent, now).unwrap();
        let mut batch = WriteBatch { versions: vec![NewVersion { row: p.row.clone(), expect: Expect::Absent, entry: None }], ..Default::default() };
        let (org, hour) = entries("Encounter", &old, now).remove(0);
        let id = list_id(&org, "Encounter", hour);
        let key = engine.vault.record_key(WORKLIST_TYPE, &id);
        let partition = engine.vault.system_partition();
        let doc = serde_json::to_vec(&Worklist { id: id.clone(), keys: [hex(&p.row.key.0)].into() }).unwrap();
        let dek = engine.data_key(&partition, true).unwrap().unwrap();
        let sealed = dek.seal(&RecordAad { resource_type: WORKLIST_TYPE, record: &key, version: 1, partition: &partition, dek_version: 1 }, &doc).unwrap();
        let row = VersionRow { key, version: 1, partition, resource_type: WORKLIST_TYPE.into(), deleted: false, last_updated_us: now, dek_version: 1, sealed };
        batch.versions.push(NewVersion { row, expect: Expect::Absent, entry: None });
        engine.attach_new_keys(&mut batch).unwrap();
        engine.store.commit(&batch).unwrap();
        assert_eq!(found(&engine, &who, "2026-11-30"), vec!["e-new".to_string()], "documents are looked for only in a database of that layout");
        engine.store.put_meta(META_LEGACY_LISTS, &[1]).unwrap();
        assert_eq!(found(&engine, &who, "2026-11-30"), vec!["e-new".to_string(), "e-old".to_string()], "the entry and the document");
        // A database made with entries has no documents, and does not look for them.
        let fresh_dir = dir.join("fresh");
        std::fs::create_dir_all(&fresh_dir).unwrap();
        assert_eq!(SqliteStore::open(&fresh_dir.join("brankas.db")).unwrap().get_meta(META_LEGACY_LISTS).unwrap(), None);
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn entries_and_day_ranges() {
        let enc = json!({"serviceProvider": {"reference": "Organization/rs-a"}, "period": {"start": "2026-11-30T08:00:00+07:00"}});
        let e = entries("Encounter", &enc, 0);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "Organization/rs-a");
        let p = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        let (a, b) = day_range(&p(&[("date", "ge2026-11-01"), ("date", "le2026-11-30")]), "date").unwrap();
        assert_eq!(b - a + 1, 30 * 24);
        let (a, b) = day_range(&p(&[("date", "2026-11-30")]), "date").unwrap();
        assert_eq!(b - a + 1, 24);
        assert!(day_range(&p(&[("date", "ge2026-01-01")]), "date").is_err(), "unbounded");
        assert!(day_range(&p(&[("date", "ge2026-01-01"), ("date", "le2026-12-31")]), "date").is_err(), "a year is too long");
        assert!(day_range(&p(&[]), "date").is_err());
        let sr = json!({"performer": [{"reference": "Organization/rs-b"}, {"reference": "Practitioner/x"}], "authoredOn": "2026-11-29"});
        assert_eq!(entries("ServiceRequest", &sr, 0).len(), 1);
        assert!(entries("Observation", &sr, 0).is_empty());
    }
}
