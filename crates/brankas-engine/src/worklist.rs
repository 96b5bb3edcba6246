//! Facility work lists: the one cross-patient search, for a facility's own clients.
//!
//! `Encounter?service-provider=Organization/<own>&date=ge…&date=le…` (the day's visits) and
//! `ServiceRequest?performer=Organization/<own>&authored=ge…&authored=le…` (incoming
//! referrals) find, across patients, the records that name the caller's own organization,
//! within a bounded date range. No other cross-patient search exists.
//!
//! The index is a sealed list per (organization, type, hour) of the record keys that named the
//! organization, kept in the system partition as an internal record (type [`WORKLIST_TYPE`])
//! and written in the same atomic batch as the record. At rest it reveals the number and size
//! of such lists and when they were written, never which organization, day or patients (its
//! record key is a keyed hash; its content is sealed). A hit is re-read and re-checked against
//! the query (a record may have changed since), and the patient's consent and sensitive
//! labels apply to it as to any other read. Lists are per hour so that each stays small
//! (a list is rewritten whole when a record joins it): a hospital with 2,000 visits a day
//! rewrites lists of about a hundred keys.

use std::collections::{BTreeMap, BTreeSet};

use brankas_auth::{Principal, Role};
use brankas_search::Query;
use brankas_store::{Expect, NewVersion, RecordKey, VersionRow};
use brankas_vault::RecordAad;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Engine, EngineError, Result, Stored};

/// Resource type of the internal work-list records (never served or matched by a search).
pub(crate) const WORKLIST_TYPE: &str = "BrankasWorklist";

/// Longest date range of one work-list search, in days.
pub const MAX_WORKLIST_DAYS: i64 = 92;

const US_PER_DAY: i64 = 86_400_000_000;
const US_PER_HOUR: i64 = 3_600_000_000;

/// Work-list entries to add: list id (`Organization/x|Encounter|<hour>`) → record keys.
pub(crate) type WorklistFacts = BTreeMap<String, BTreeSet<RecordKey>>;

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

/// The parameters of the two work lists: (organization parameter, date parameter).
fn params_of(rtype: &str) -> Option<(&'static str, &'static str)> {
    match rtype {
        "Encounter" => Some(("service-provider", "date")),
        "ServiceRequest" => Some(("performer", "authored")),
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

    /// New versions of the work lists `facts` adds to (only those that gain a key).
    pub(crate) fn worklist_versions(&self, facts: &WorklistFacts, now: i64) -> Result<Vec<NewVersion>> {
        let mut out = Vec::new();
        let partition = self.vault.system_partition();
        for (id, keys) in facts {
            let current = self.worklist_row(id)?;
            let mut wl = current.as_ref().map(|(w, _)| Worklist { id: w.id.clone(), keys: w.keys.clone() }).unwrap_or(Worklist { id: id.clone(), keys: BTreeSet::new() });
            let before = wl.keys.len();
            wl.keys.extend(keys.iter().map(|k| hex(&k.0)));
            if wl.keys.len() == before {
                continue;
            }
            let key = self.vault.record_key(WORKLIST_TYPE, id);
            let version = current.as_ref().map(|(_, r)| r.version + 1).unwrap_or(1);
            let dek = self.data_key(&partition, true)?.ok_or(EngineError::Integrity)?;
            let aad = RecordAad { resource_type: WORKLIST_TYPE, record: &key, version, partition: &partition, dek_version: 1 };
            let sealed = dek.seal(&aad, &serde_json::to_vec(&wl).map_err(|_| EngineError::Integrity)?)?;
            let row = VersionRow { key, version, partition, resource_type: WORKLIST_TYPE.into(), deleted: false, last_updated_us: now, dek_version: 1, sealed };
            let expect = current.as_ref().map(|(_, r)| Expect::Version(r.version)).unwrap_or(Expect::Absent);
            out.push(NewVersion { row, expect, entry: None });
        }
        Ok(out)
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
        let mut out = Vec::new();
        for hour in now - days.clamp(1, 3660) * 24..=now {
            if let Some((wl, _)) = self.worklist_row(&list_id(organization, "Encounter", hour))? {
                out.push((hour, wl.keys.len()));
            }
        }
        Ok(out)
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
        let mut keys = BTreeSet::new();
        for hour in first..=last {
            if let Some((wl, _)) = self.worklist_row(&list_id(&org, rtype, hour))? {
                keys.extend(wl.keys.iter().filter_map(|k| unhex(k)).map(RecordKey));
            }
        }
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
            // An erased patient's records stay listed (the lists are not rewritten) but are
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
    use serde_json::json;

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
