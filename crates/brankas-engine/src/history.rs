//! Type and system history (`GET [type]/_history`, `GET _history`), inside the walls the
//! access model sets: one patient's record, or the directory. There is no history across
//! patients, as there is no search across them: a caller names the patient (`patient=<id>`)
//! or is bound to one (a patient's own client), and the record's gate admits it or not.
//!
//! The versions are listed from the store by partition and write time (which it keeps in the
//! clear); only the versions served are opened, each through the same checks a read of it
//! would pass (scopes with their restrictions, labels, consent, photo redaction). What is
//! hidden is left out of the page, never refused and never counted. Pages continue from a
//! place in the listing sealed into a cursor bound to the client, so a page stays right while
//! new versions are written.

use crate::access::Act;
use crate::crud::HistoryWindow;
use crate::search::{CURSOR_SECONDS, now_secs};
use crate::{Admitted, Engine, EngineError, Result, Stored, ahead, safe_type};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use brankas_auth::Principal;
use brankas_store::{PartitionId, RecordKey, VersionPos, VersionRow};
use serde_json::json;

/// Versions one `_at` window may hold (the record is walked to find them).
const MAX_AT_VERSIONS: usize = 10_000;

/// Versions read at a time while an `_at` window walks the record.
const AT_BATCH: usize = 5_000;

/// `GET [type]/_history` or `GET _history` as the HTTP layer hands it over.
#[derive(Clone, Debug, Default)]
pub struct HistoryRequest {
    /// The type; `None` for system history (every type of the record).
    pub resource_type: Option<String>,
    /// `patient`: whose record (a patient's own client need not say).
    pub patient: Option<String>,
    pub window: HistoryWindow,
    /// `_count`: the page size (the engine's default when absent, capped at its largest).
    pub count: Option<usize>,
    /// The parameters used, as given (the self link's query).
    pub used: Vec<(String, String)>,
}

/// One page of a history, at any level.
#[derive(Debug)]
pub struct HistoryPage {
    /// Newest first; deleted versions are delete markers (only their id is meaningful).
    pub versions: Vec<Stored>,
    /// The query of the next page's link (a sealed cursor, or the next versions' window),
    /// when the listing goes on.
    pub next: Option<String>,
    /// The query of the self link: the parameters used (the record, the window, the page
    /// size); any other was ignored.
    pub this: String,
    /// How many versions the listing holds in all, when it is known (one resource's history).
    pub total: Option<u64>,
}

impl HistoryRequest {
    /// The parameters of type and system history: `_count`, `_since`, `_at` (R4), and
    /// `patient`, which names the record. Others are ignored (the answer's self link names
    /// those used), or refused under strict handling.
    pub fn from_query(resource_type: Option<String>, pairs: &[(String, String)], strict: bool) -> Result<Self> {
        let bad = |m: String| EngineError::BadRequest(m);
        let mut req = HistoryRequest { resource_type, ..Default::default() };
        let mut seen: Vec<&str> = Vec::new();
        for (k, v) in pairs {
            if matches!(k.as_str(), "_count" | "_since" | "_at" | "patient") && seen.contains(&k.as_str()) {
                return Err(bad(format!("{k} may be given once")));
            }
            seen.push(k);
            if matches!(k.as_str(), "_count" | "_since" | "_at" | "patient") {
                req.used.push((k.clone(), v.clone()));
            }
            let date = |name: &str| brankas_search::date_range(v).ok_or_else(|| bad(format!("{name} must be a FHIR date, dateTime or instant")));
            match k.as_str() {
                "_count" => {
                    let n =
                        v.parse::<usize>().ok().filter(|n| *n > 0 && v.bytes().all(|b| b.is_ascii_digit())).ok_or_else(|| bad("_count must be a positive whole number".into()))?;
                    req.count = Some(n);
                }
                "_since" => req.window.since = Some(date("_since")?.0),
                "_at" => req.window.at = Some(date("_at")?),
                "patient" => {
                    let id = v.strip_prefix("Patient/").unwrap_or(v);
                    if !brankas_fhir::is_valid_id(id) {
                        return Err(bad("patient must be a Patient id (or Patient/<id>)".into()));
                    }
                    req.patient = Some(id.to_string());
                }
                "_format" | "_pretty" => {}
                other if strict => return Err(bad(format!("parameter '{}' is not supported by history", crate::safe_param(other)))),
                _ => {}
            }
        }
        Ok(req)
    }
}

/// Where a history listing reads: one patient's record, or the directory.
struct Walls {
    partition: PartitionId,
    patient: Option<String>,
    view: crate::access::RecordView,
}

impl Engine {
    /// Any history a URL asks for: of one resource (`[type]/[id]/_history`), of a type
    /// (`[type]/_history`) or of the system (`_history`), a paging link's `_page` included.
    pub fn history_of(&self, who: &Principal, rtype: Option<&str>, id: Option<&str>, pairs: &[(String, String)], strict: bool) -> Result<Admitted<HistoryPage>> {
        if let (Some(t), Some(id)) = (rtype, id) {
            return self.instance_history(who, t, id, pairs);
        }
        match pairs.iter().find(|(k, _)| k == "_page") {
            Some((_, cursor)) => self.type_history_page(who, cursor),
            None => self.type_history(who, &HistoryRequest::from_query(rtype.map(String::from), pairs, strict)?),
        }
    }

    /// `GET [type]/[id]/_history`: `_count`, `_since` and `_at`, and `_before_version` in its
    /// own next links (versions are numbered, so a page continues below the last one shown).
    fn instance_history(&self, who: &Principal, rtype: &str, id: &str, pairs: &[(String, String)]) -> Result<Admitted<HistoryPage>> {
        let count = pairs.iter().find(|(k, _)| k == "_count").and_then(|(_, v)| v.parse::<usize>().ok()).unwrap_or(self.limits.default_count);
        // The page size really used, so that a full page gets its `next` link.
        let count = count.clamp(1, self.limits.max_history);
        let before = pairs.iter().find(|(k, _)| k == "_before_version").and_then(|(_, v)| v.parse::<u64>().ok());
        let date = |name: &str| -> Result<Option<(i64, i64)>> {
            match pairs.iter().find(|(k, _)| k == name) {
                None => Ok(None),
                Some((_, v)) => brankas_search::date_range(v).map(Some).ok_or_else(|| EngineError::BadRequest(format!("{name} must be a FHIR date, dateTime or instant"))),
            }
        };
        let window = HistoryWindow { since: date("_since")?.map(|(lo, _)| lo), at: date("_at")? };
        let kept: Vec<(String, String)> = pairs.iter().filter(|(k, _)| k == "_since" || k == "_at").cloned().collect();
        let again = form_urlencoded::Serializer::new(String::new()).extend_pairs(&kept).finish();
        let listed = if window.since.is_some() || window.at.is_some() {
            self.history_window(who, rtype, id, window, count, before)?
        } else {
            let mut page = self.history(who, rtype, id, count, before)?;
            // Versions are numbered 1, 2, 3… (a delete is a version too), so the newest one's
            // number is how many there are: the total counts all of them, not this page.
            let total = match (before, page.unreleased().first()) {
                (None, Some(newest)) => newest.version,
                _ => {
                    let newest = self.history(who, rtype, id, 1, None)?;
                    page.take(newest).first().map_or(0, |s| s.version)
                }
            };
            page.map(|p| (p, total))
        };
        Ok(listed.map(|(versions, total)| {
            let next = match versions.last() {
                Some(last) if last.version > 1 && versions.len() >= count => {
                    let window = if again.is_empty() { String::new() } else { format!("&{again}") };
                    Some(format!("_count={count}&_before_version={}{window}", last.version))
                }
                _ => None,
            };
            HistoryPage { versions, next, this: again, total: Some(total) }
        }))
    }

    /// `GET [type]/_history` and `GET _history`: the versions of one patient's record (of one
    /// type, or all), or of one directory type, that the caller may see, newest first.
    pub fn type_history(&self, who: &Principal, req: &HistoryRequest) -> Result<Admitted<HistoryPage>> {
        self.history_from(who, req, None)
    }

    /// Continues a type or system history from a paging cursor made for this client.
    pub fn type_history_page(&self, who: &Principal, cursor: &str) -> Result<Admitted<HistoryPage>> {
        let v = self.open_cursor_value(who, cursor)?;
        let bad = || EngineError::BadRequest("invalid or expired paging link".into());
        if v["h"].as_bool() != Some(true) {
            return Err(bad());
        }
        let key = B64.decode(v["k"].as_str().ok_or_else(bad)?).ok().and_then(|k| <[u8; 32]>::try_from(k).ok()).ok_or_else(bad)?;
        let after = VersionPos { last_updated_us: v["u"].as_i64().ok_or_else(bad)?, key: RecordKey(key), version: v["v"].as_u64().ok_or_else(bad)? };
        let at = match (v["al"].as_i64(), v["ah"].as_i64()) {
            (Some(lo), Some(hi)) => Some((lo, hi)),
            _ => None,
        };
        let req = HistoryRequest {
            resource_type: v["t"].as_str().map(String::from),
            patient: v["p"].as_str().map(String::from),
            window: HistoryWindow { since: v["s"].as_i64(), at },
            count: v["n"].as_u64().map(|n| n as usize),
            used: v["g"].as_array().into_iter().flatten().filter_map(|p| Some((p.get(0)?.as_str()?.to_string(), p.get(1)?.as_str()?.to_string()))).collect(),
        };
        self.history_from(who, &req, Some(after))
    }

    fn history_from(&self, who: &Principal, req: &HistoryRequest, after: Option<VersionPos>) -> Result<Admitted<HistoryPage>> {
        let rtype = req.resource_type.as_deref();
        if let Some(t) = rtype {
            crate::crud::check_type(t)?;
            self.require(who, t, 'r')?;
        }
        let walls = self.history_walls(who, rtype, req.patient.as_deref())?;
        let count = req.count.unwrap_or(self.limits.default_count).clamp(1, self.limits.max_history.min(self.page_limit(who)));
        // What the caller's scopes let it read at all (system history lists every type).
        let readable = |row: &VersionRow| !ahead::is_internal(&row.resource_type) && (who.is_local_operator() || who.scopes().permits(&row.resource_type, 'r'));
        let mut served: Vec<Stored> = Vec::with_capacity(count);
        let mut last: Option<VersionPos> = None;
        let mut more = false;
        match req.window.at {
            None => {
                let mut from = after;
                let mut examined = 0usize;
                'walk: loop {
                    let rows = self.store.partition_versions(&walls.partition, rtype, req.window.since, from.as_ref(), count + 1)?;
                    let full = rows.len() > count;
                    for row in &rows {
                        // A full page, or enough looked at for one answer (what is hidden
                        // may be most of a record): the rest is for the next page.
                        if served.len() == count || examined == self.limits.max_scan {
                            more = true;
                            break 'walk;
                        }
                        examined += 1;
                        from = Some(VersionPos::of(row));
                        last = from;
                        if readable(row)
                            && let Some(s) = self.history_version(who, &walls, row)?
                        {
                            served.push(s);
                        }
                    }
                    if !full {
                        break;
                    }
                }
            }
            Some((lo, hi)) => {
                // The versions current at some moment of [lo, hi): those written in it, and
                // each record's newest one written before it began.
                let mut matching: Vec<VersionRow> = Vec::new();
                let mut before_lo: std::collections::HashSet<RecordKey> = std::collections::HashSet::new();
                let mut from = Some(VersionPos::written_before(hi));
                let mut walked = 0usize;
                loop {
                    // Each call sorts the record's versions again: few, large batches.
                    let rows = self.store.partition_versions(&walls.partition, rtype, req.window.since, from.as_ref(), AT_BATCH)?;
                    let n = rows.len();
                    walked += n;
                    if walked > self.limits.max_scan {
                        return Err(EngineError::TooLarge("too many versions to walk for _at; narrow it with _since or a type".into()));
                    }
                    for row in rows {
                        from = Some(VersionPos::of(&row));
                        if row.last_updated_us < lo && !before_lo.insert(row.key) {
                            continue;
                        }
                        if matching.len() >= MAX_AT_VERSIONS {
                            return Err(EngineError::TooLarge(format!("more than {MAX_AT_VERSIONS} versions in the window; narrow _at, or add _since or a type")));
                        }
                        matching.push(row);
                    }
                    if n < AT_BATCH {
                        break;
                    }
                }
                for row in matching.iter().filter(|r| after.is_none_or(|a| listed_after(&VersionPos::of(r), &a))) {
                    if served.len() == count {
                        more = true;
                        break;
                    }
                    last = Some(VersionPos::of(row));
                    if readable(row)
                        && let Some(s) = self.history_version(who, &walls, row)?
                    {
                        served.push(s);
                    }
                }
            }
        }
        let next = match (more, last) {
            (true, Some(pos)) => Some(format!("_page={}", self.seal_history_cursor(who, req, &pos)?)),
            _ => None,
        };
        let mut d = self.disclosure_of(&served);
        if let Some(pid) = &walls.patient {
            d.patient(walls.partition, Some(pid.clone()));
        }
        let mut this = form_urlencoded::Serializer::new(String::new());
        if req.patient.is_none()
            && let Some(p) = &walls.patient
        {
            // The record a patient's own client reads without naming it.
            this.append_pair("patient", p);
        }
        this.extend_pairs(&req.used);
        let page = HistoryPage { versions: served, next, this: this.finish(), total: None };
        Ok(Admitted::new(page, d))
    }

    /// The record a history reads, and the caller's view of it; or the directory.
    fn history_walls(&self, who: &Principal, rtype: Option<&str>, patient: Option<&str>) -> Result<Walls> {
        let of_patients = rtype.is_none_or(|t| t == "Patient" || t == "Binary" || self.registry.in_patient_compartment(t));
        let named = match patient {
            Some(_) if !of_patients => {
                return Err(EngineError::BadRequest(format!(
                    "{} is not in the Patient compartment: its history is the directory's, without patient",
                    safe_type(rtype.unwrap_or_default())
                )));
            }
            Some(p) => Some(p.to_string()),
            None => who.patient().and_then(|p| p.strip_prefix("Patient/")).map(String::from),
        };
        let Some(pid) = named else {
            if of_patients && rtype != Some("Binary") {
                let what = rtype.map_or_else(|| "system history".to_string(), |t| format!("the history of {t}"));
                return Err(EngineError::Search(format!(
                    "{what} is kept per patient, never across patients: name one patient with patient=<id> (or read Patient/<id>/_history for the Patient alone)"
                )));
            }
            if !who.is_local_operator() {
                self.gate_directory(who, Act::Read)?;
            }
            return Ok(Walls { partition: self.vault.system_partition(), patient: None, view: crate::access::RecordView::OPEN });
        };
        if !brankas_fhir::is_valid_id(&pid) {
            return Err(EngineError::NotFound);
        }
        // The record's gate, as a read of its Patient would pass it (care, consent, break-glass,
        // budget): a patient the caller may not reach is refused, one that never existed is
        // not found.
        let row = self.current_row("Patient", &pid)?.ok_or(EngineError::NotFound)?;
        let view = self.gate_row(who, &row, Act::Read)?;
        Ok(Walls { partition: row.partition, patient: Some(pid), view })
    }

    /// One listed version as a read of it would serve it, or `None` when the caller may not
    /// see it (left out, never refused). Delete markers carry nothing but their id.
    fn history_version(&self, who: &Principal, walls: &Walls, row: &VersionRow) -> Result<Option<Stored>> {
        let mut s = self.open_row(row, None)?;
        if s.deleted {
            return Ok(Some(s));
        }
        let rtype = row.resource_type.as_str();
        if !walls.view.permits(who, rtype, &s.resource) || !self.scope_permits_resource(who, rtype, 'r', &s.resource)? {
            return Ok(None);
        }
        walls.view.redact(who, rtype, &mut s.resource);
        Ok(Some(s))
    }

    fn seal_history_cursor(&self, who: &Principal, req: &HistoryRequest, pos: &VersionPos) -> Result<String> {
        let state = json!({
            "c": who.client_id(), "h": true, "t": req.resource_type, "p": req.patient, "s": req.window.since,
            "al": req.window.at.map(|a| a.0), "ah": req.window.at.map(|a| a.1), "n": req.count, "g": req.used,
            "u": pos.last_updated_us, "k": B64.encode(pos.key.0), "v": pos.version, "x": now_secs() + CURSOR_SECONDS,
        });
        let sealed = self.vault.seal_cursor(&serde_json::to_vec(&state).map_err(|_| EngineError::Integrity)?)?;
        Ok(B64.encode(sealed))
    }
}

/// Whether `a` comes after `b` in a listing newest first (write time, record key, version,
/// all descending).
fn listed_after(a: &VersionPos, b: &VersionPos) -> bool {
    (a.last_updated_us, a.key.0, a.version) < (b.last_updated_us, b.key.0, b.version)
}
