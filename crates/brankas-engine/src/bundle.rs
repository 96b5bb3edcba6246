//! Transaction and batch Bundles.
//!
//! A transaction is all-or-nothing: every entry is resolved (server ids assigned, `urn:uuid`
//! and conditional references rewritten, conditional creates and updates decided), prepared
//! (validated, placed, sealed) and then committed as one store batch. A batch runs each entry
//! on its own and reports each outcome.

use std::collections::{HashMap, HashSet};

use brankas_auth::Principal;
use brankas_store::{Expect, RecordKey};
use serde_json::Value;

use crate::access::Act;
use crate::crud::{check_type, new_id, now_us};
use crate::{Engine, EngineError, Prepared, Result, Stored};

/// The outcome of one Bundle entry, for the HTTP layer to render.
#[derive(Debug)]
pub struct EntryOutcome {
    /// HTTP status of the entry (201, 200, 204, 4xx…).
    pub status: u16,
    /// The resource written or read, if any.
    pub stored: Option<Stored>,
    /// `Type/id` of the resource concerned, for `Location`.
    pub location: Option<(String, String)>,
    /// A failed entry of a batch.
    pub error: Option<EngineError>,
    /// A search (or `$everything`) entry's page, with the path its paging links go to.
    pub page: Option<(crate::Page, String)>,
    /// A history entry's page, with the path its links go to.
    pub history: Option<(crate::HistoryPage, String)>,
}

impl EntryOutcome {
    fn failed(e: EngineError) -> Self {
        EntryOutcome { status: 0, stored: None, location: None, error: Some(e), page: None, history: None }
    }

    fn done(status: u16, location: Option<(String, String)>, stored: Option<Stored>) -> Self {
        EntryOutcome { status, stored, location, error: None, page: None, history: None }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

struct Entry {
    method: Method,
    url: String,
    full_url: Option<String>,
    resource: Option<Value>,
    if_none_exist: Option<String>,
    if_match: Option<u64>,
    if_none_match: Option<u64>,
    /// `ifModifiedSince`, µs since the epoch.
    if_modified_since: Option<i64>,
}

/// Parses `W/"3"` or `"3"` or `3`.
pub fn parse_etag(s: &str) -> Option<u64> {
    s.trim().trim_start_matches("W/").trim_matches('"').parse().ok()
}

fn parse_entries(bundle: &Value, max: usize) -> Result<Vec<Entry>> {
    let bad = |m: &str| EngineError::BadRequest(m.to_string());
    let entries = match bundle.get("entry") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad("Bundle.entry must be an array")),
    };
    if entries.len() > max {
        return Err(EngineError::Unprocessable(format!("a Bundle may hold at most {max} entries")));
    }
    let mut parsed = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let req = e.get("request").ok_or_else(|| bad(&format!("Bundle.entry[{i}].request is missing")))?;
            let method = match req.get("method").and_then(Value::as_str) {
                Some("GET") => Method::Get,
                Some("POST") => Method::Post,
                Some("PUT") => Method::Put,
                Some("DELETE") => Method::Delete,
                Some("PATCH") => Method::Patch,
                Some("HEAD") => return Err(bad(&format!("Bundle.entry[{i}]: method not supported"))),
                _ => return Err(bad(&format!("Bundle.entry[{i}].request.method is missing or invalid"))),
            };
            let url = req.get("url").and_then(Value::as_str).ok_or_else(|| bad(&format!("Bundle.entry[{i}].request.url is missing")))?;
            let resource = e.get("resource").cloned();
            if matches!(method, Method::Post | Method::Put | Method::Patch) && resource.is_none() {
                return Err(bad(&format!("Bundle.entry[{i}].resource is missing")));
            }
            Ok(Entry {
                method,
                url: url.trim_start_matches('/').to_string(),
                full_url: e.get("fullUrl").and_then(Value::as_str).map(String::from),
                resource,
                if_none_exist: req.get("ifNoneExist").and_then(Value::as_str).map(String::from),
                if_match: req.get("ifMatch").and_then(Value::as_str).and_then(parse_etag),
                if_none_match: req.get("ifNoneMatch").and_then(Value::as_str).and_then(parse_etag),
                if_modified_since: match req.get("ifModifiedSince").and_then(Value::as_str) {
                    None => None,
                    Some(t) => Some(brankas_search::date_range(t).ok_or_else(|| bad(&format!("Bundle.entry[{i}].request.ifModifiedSince is not an instant")))?.0),
                },
            })
        })
        .collect::<Result<Vec<Entry>>>()?;
    bind_binaries(&mut parsed);
    Ok(parsed)
}

/// `url` elements (e.g. `Attachment.url`) that name another entry's `fullUrl` follow it to its
/// new `Type/id`, as R4's transaction rules ask for uri and url elements.
fn rewrite_urls(v: &mut Value, map: &HashMap<String, String>, depth: usize) {
    if depth > 64 {
        return;
    }
    match v {
        Value::Object(o) => {
            if let Some(Value::String(u)) = o.get_mut("url")
                && let Some(to) = map.get(u.as_str())
            {
                *u = to.clone();
            }
            o.values_mut().for_each(|x| rewrite_urls(x, map, depth + 1));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_urls(x, map, depth + 1)),
        _ => {}
    }
}

/// A Binary without a `securityContext` belongs to the patient of the resource in the same
/// Bundle whose attachment points to it (`url` = the Binary's `fullUrl` or `Binary/<id>`),
/// e.g. a DocumentReference or Media with a `subject`: that subject becomes its context (a
/// `urn:uuid` is resolved with the other references).
fn bind_binaries(entries: &mut [Entry]) {
    fn urls<'a>(v: &'a Value, out: &mut Vec<&'a str>, depth: usize) {
        if depth > 64 {
            return;
        }
        match v {
            Value::Object(o) => {
                if let Some(Value::String(u)) = o.get("url") {
                    out.push(u);
                }
                o.values().for_each(|x| urls(x, out, depth + 1));
            }
            Value::Array(a) => a.iter().for_each(|x| urls(x, out, depth + 1)),
            _ => {}
        }
    }
    let mut owners: Vec<(String, String)> = Vec::new();
    for r in entries.iter().filter_map(|e| e.resource.as_ref()) {
        let Some(subject) = r.pointer("/subject/reference").and_then(Value::as_str) else { continue };
        let mut found = Vec::new();
        urls(r, &mut found, 0);
        owners.extend(found.into_iter().map(|u| (u.to_string(), subject.to_string())));
    }
    if owners.is_empty() {
        return;
    }
    for e in entries.iter_mut() {
        let full_url = e.full_url.clone();
        let Some(r) = e.resource.as_mut() else { continue };
        if r.get("resourceType").and_then(Value::as_str) != Some("Binary") || r.get("securityContext").is_some() {
            continue;
        }
        let own = r.get("id").and_then(Value::as_str).map(|id| format!("Binary/{id}"));
        if let Some((_, subject)) = owners.iter().find(|(u, _)| Some(u) == full_url.as_ref() || Some(u) == own.as_ref()) {
            r["securityContext"] = serde_json::json!({"reference": subject});
        }
    }
}

/// Splits `Type/id` (optionally with a leading base URL is not accepted: entries use
/// relative URLs).
fn split_instance(url: &str) -> Option<(&str, &str)> {
    let (t, id) = url.split_once('/')?;
    (brankas_fhir::is_resource_type(t) && brankas_fhir::is_valid_id(id)).then_some((t, id))
}

/// What a transaction will do, decided before anything is written.
pub(crate) struct PreparedTransaction {
    pub prepared: Vec<Prepared>,
    /// Per entry: index into `prepared`, or a ready outcome (conditional create that matched,
    /// delete of nothing), or a GET to run after the commit.
    plan: Vec<Planned>,
    gets: Vec<(usize, GetEntry)>,
    /// What the preparation read of the store, so that a caller preparing ahead of other
    /// commits (the bulk importer) can tell whether those commits made it stale: the records
    /// whose current version it read ...
    pub reads: Vec<RecordKey>,
    /// ... and the resource types it queried (conditional create, update or reference).
    pub queried: Vec<String>,
}

/// What a GET entry asks.
pub(crate) struct GetEntry {
    url: String,
    if_none_match: Option<u64>,
    if_modified_since: Option<i64>,
}

impl From<&Entry> for GetEntry {
    fn from(e: &Entry) -> Self {
        GetEntry { url: e.url.clone(), if_none_match: e.if_none_match, if_modified_since: e.if_modified_since }
    }
}

enum Planned {
    Write(usize),
    Done(Box<EntryOutcome>),
    Get,
}

impl Engine {
    /// `POST /` with a transaction Bundle.
    pub fn transaction(&self, who: &Principal, bundle: &Value) -> Result<crate::Admitted<Vec<EntryOutcome>>> {
        let tx = self.prepare_transaction(who, bundle)?;
        self.commit_prepared(who, &tx.prepared)?;
        let mut searched = crate::Admitted::nothing(());
        let out = self.finish_transaction(who, tx, &mut searched)?;
        Ok(self.admit_entries(out, searched))
    }

    /// A Bundle's answer discloses every resource its entries return (reads, writes echoed,
    /// conditional matches), whether or not `Prefer: return=minimal` then leaves them out, and
    /// what its searches disclosed (`searched`).
    fn admit_entries(&self, out: Vec<EntryOutcome>, searched: crate::Admitted<()>) -> crate::Admitted<Vec<EntryOutcome>> {
        let d = self.disclosure_of(out.iter().filter_map(|e| e.stored.as_ref()));
        let mut admitted = crate::Admitted::new(out, d);
        admitted.take(searched);
        admitted
    }

    pub(crate) fn finish_transaction(&self, who: &Principal, tx: PreparedTransaction, searched: &mut crate::Admitted<()>) -> Result<Vec<EntryOutcome>> {
        let PreparedTransaction { prepared, plan, gets, .. } = tx;
        let mut prepared: Vec<Option<Prepared>> = prepared.into_iter().map(Some).collect();
        let mut out = Vec::with_capacity(plan.len());
        for p in plan {
            out.push(match p {
                Planned::Write(i) => {
                    let p = prepared[i].take().ok_or(EngineError::Integrity)?;
                    let t = p.row.resource_type.clone();
                    let id = p.stored.resource.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                    let status = if p.stored.deleted {
                        204
                    } else if p.created {
                        201
                    } else {
                        200
                    };
                    EntryOutcome::done(status, Some((t, id)), Some(p.stored))
                }
                Planned::Done(o) => *o,
                Planned::Get => EntryOutcome::done(0, None, None),
            });
        }
        for (i, get) in gets {
            out[i] = self.entry_get(who, &get, searched).unwrap_or_else(EntryOutcome::failed);
        }
        Ok(out)
    }

    /// A GET entry: a read (`Type/id`, with `ifNoneMatch` and `ifModifiedSince`), a version
    /// read (`Type/id/_history/n`), a history (of a resource, a type or the system), a search (`Type?…`, `Patient/id/Type?…`, a paging link's
    /// `?_page=…`) or `Patient/id/$everything`, each as its own request would be, unknown
    /// search parameters ignored and reported (lenient handling).
    fn entry_get(&self, who: &Principal, e: &GetEntry, searched: &mut crate::Admitted<()>) -> Result<EntryOutcome> {
        let (path, query) = e.url.split_once('?').unwrap_or((e.url.as_str(), ""));
        let pairs = crate::search::parse_query_string(query);
        let cursor = pairs.iter().find(|(k, _)| k == "_page").map(|(_, c)| c.clone());
        let parts: Vec<&str> = path.split('/').collect();
        // An entry's URL is in the Bundle's body, not in a request URL: its self link shows
        // the page's cursor only.
        let searchset = |mut page: crate::Page, links: String| {
            page.used = None;
            EntryOutcome { status: 200, stored: None, location: None, error: None, page: Some((page, links)), history: None }
        };
        let history = |page: crate::HistoryPage, links: String| EntryOutcome { status: 200, stored: None, location: None, error: None, page: None, history: Some((page, links)) };
        match parts.as_slice() {
            ["AuditEvent", ..] => Err(EngineError::BadRequest("AuditEvent is searched directly (GET /fhir/AuditEvent?patient=...), not inside a Bundle".into())),
            ["_history"] => Ok(history(searched.take(self.history_of(who, None, None, &pairs, false)?), "_history".into())),
            [t, "_history"] => {
                check_type(t)?;
                Ok(history(searched.take(self.history_of(who, Some(t), None, &pairs, false)?), format!("{t}/_history")))
            }
            [t, id, "_history"] => {
                check_type(t)?;
                Ok(history(searched.take(self.history_of(who, Some(t), Some(id), &pairs, false)?), format!("{t}/{id}/_history")))
            }
            [t] => {
                check_type(t)?;
                let page = match cursor {
                    Some(c) => self.search_page(who, &c)?,
                    None => self.search(who, &crate::SearchRequest { resource_type: t.to_string(), pairs, compartment: None, offset: 0, strict: false })?,
                };
                Ok(searchset(searched.take(page), t.to_string()))
            }
            [t, id] => {
                let s = self.read_gated(who, t, id)?;
                let unchanged = e.if_none_match.map(|v| v == s.version).or_else(|| e.if_modified_since.map(|t| s.last_updated_us < t + 1_000_000)).unwrap_or(false);
                let loc = Some((t.to_string(), id.to_string()));
                // Not modified: nothing of the resource is returned, but its version was read.
                Ok(if unchanged { EntryOutcome::done(304, loc, None) } else { EntryOutcome::done(200, loc, Some(s)) })
            }
            [t, id, "_history", v] => {
                let v = v.parse::<u64>().map_err(|_| EngineError::NotFound)?;
                let s = self.vread_gated(who, t, id, v)?;
                Ok(EntryOutcome::done(200, Some((t.to_string(), id.to_string())), Some(s)))
            }
            ["Patient", id, "$everything"] => {
                let page = match cursor {
                    Some(c) => self.everything_page(who, &c)?,
                    None => self.everything(who, &crate::EverythingRequest::from_query(id.to_string(), &pairs, false)?)?,
                };
                Ok(searchset(searched.take(page), format!("Patient/{id}/$everything")))
            }
            ["Patient", id, t] if brankas_fhir::is_resource_type(t) => {
                let page = match cursor {
                    Some(c) => self.search_page(who, &c)?,
                    None => self.search(who, &crate::SearchRequest { resource_type: t.to_string(), pairs, compartment: Some(id.to_string()), offset: 0, strict: false })?,
                };
                Ok(searchset(searched.take(page), t.to_string()))
            }
            _ => Err(EngineError::BadRequest("this request is not supported inside a Bundle: reads, version reads, histories, searches and $everything are".into())),
        }
    }

    /// Resolves and prepares every entry of a transaction without writing anything.
    pub(crate) fn prepare_transaction(&self, who: &Principal, bundle: &Value) -> Result<PreparedTransaction> {
        let entries = parse_entries(bundle, self.limits.max_bundle_entries)?;
        let now = now_us();
        // 1. Decide the target of every write and map fullUrls to Type/id. Conditional creates
        // and updates of clinical resources come last: their query runs within the resource's
        // own patient, who may be named by the urn of another entry (resolved by then).
        let mut targets: Vec<Option<(String, String)>> = (0..entries.len()).map(|_| None).collect();
        let mut plan: Vec<Option<Planned>> = (0..entries.len()).map(|_| None).collect();
        let mut map: HashMap<String, String> = HashMap::new();
        let mut queried: Vec<String> = Vec::new();
        let mut reads = Vec::new();
        let dependent = |e: &Entry| {
            let conditional = match e.method {
                Method::Post => e.if_none_exist.is_some(),
                Method::Put => split_instance(&e.url).is_none(),
                _ => false,
            };
            let t = e.url.split(['?', '/']).next().unwrap_or("");
            conditional && t != "Patient" && self.registry.in_patient_compartment(t)
        };
        let order: Vec<usize> = (0..entries.len()).filter(|&i| !dependent(&entries[i])).chain((0..entries.len()).filter(|&i| dependent(&entries[i]))).collect();
        for i in order {
            let e = &entries[i];
            // What a conditional query sees of the resource: its references to other entries
            // resolved as far as known, so that it is pinned to the right patient.
            let resolved = e.resource.as_ref().filter(|_| dependent(e)).map(|r| {
                let mut r = r.clone();
                brankas_fhir::for_each_reference_mut(&mut r, &mut |x: &mut String| {
                    if let Some(to) = map.get(x.as_str()) {
                        *x = to.clone();
                    }
                });
                r
            });
            let view = resolved.as_ref().or(e.resource.as_ref());
            let target = match e.method {
                Method::Post => {
                    let t = e.url.as_str();
                    check_type(t)?;
                    self.require(who, t, 'c')?;
                    let mut existing = None;
                    if let Some(q) = &e.if_none_exist {
                        queried.push(t.to_string());
                        let found = self.conditional_match(who, t, q, view)?;
                        match found.len() {
                            0 => {}
                            1 => existing = found.into_iter().next(),
                            _ => return Err(EngineError::PreconditionFailed(format!("Bundle.entry[{i}]: ifNoneExist matched more than one resource"))),
                        }
                    }
                    match existing {
                        Some(s) => {
                            let id = s.resource.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                            plan[i] = Some(Planned::Done(Box::new(EntryOutcome::done(200, Some((t.into(), id.clone())), Some(s)))));
                            Some((t.to_string(), id))
                        }
                        None => Some((t.to_string(), new_id()?)),
                    }
                }
                Method::Put => {
                    if let Some((t, id)) = split_instance(&e.url) {
                        Some((t.to_string(), id.to_string()))
                    } else if let Some((t, q)) = e.url.split_once('?') {
                        check_type(t)?;
                        queried.push(t.to_string());
                        let found = self.conditional_match(who, t, q, view)?;
                        match found.len() {
                            0 => {
                                let id = match e.resource.as_ref().and_then(|r| r.get("id")).and_then(Value::as_str) {
                                    Some(id) => id.to_string(),
                                    None => new_id()?,
                                };
                                Some((t.to_string(), id))
                            }
                            1 => Some((t.to_string(), found[0].resource.get("id").and_then(Value::as_str).unwrap_or_default().to_string())),
                            _ => return Err(EngineError::PreconditionFailed(format!("Bundle.entry[{i}]: conditional update matched more than one resource"))),
                        }
                    } else {
                        return Err(EngineError::BadRequest(format!("Bundle.entry[{i}].request.url must be Type/id or Type?query")));
                    }
                }
                Method::Delete | Method::Patch => {
                    if let Some((t, id)) = split_instance(&e.url) {
                        Some((t.to_string(), id.to_string()))
                    } else if let Some((t, q)) = e.url.split_once('?') {
                        let what = if e.method == Method::Delete { "delete" } else { "patch" };
                        check_type(t)?;
                        queried.push(t.to_string());
                        match self.conditional_match(who, t, q, None)?.as_slice() {
                            [] => return Err(EngineError::PreconditionFailed(format!("Bundle.entry[{i}]: the conditional {what}'s criteria matched nothing"))),
                            [one] => Some((t.to_string(), one.resource.get("id").and_then(Value::as_str).unwrap_or_default().to_string())),
                            _ => return Err(EngineError::PreconditionFailed(format!("Bundle.entry[{i}]: the conditional {what}'s criteria matched more than one resource"))),
                        }
                    } else {
                        return Err(EngineError::BadRequest(format!("Bundle.entry[{i}].request.url must be Type/id or Type?query")));
                    }
                }
                Method::Get => None,
            };
            if let (Some(full), Some((t, id))) = (&e.full_url, &target) {
                map.insert(full.clone(), format!("{t}/{id}"));
            }
            targets[i] = target;
        }
        // 2. Write each resource, with references rewritten.
        let mut seen = HashSet::new();
        let mut prepared = Vec::new();
        let mut gets = Vec::new();
        for (i, (e, target)) in entries.into_iter().zip(targets).enumerate() {
            if plan[i].is_some() {
                continue;
            }
            if e.method == Method::Get {
                plan[i] = Some(Planned::Get);
                gets.push((i, GetEntry::from(&e)));
                continue;
            }
            let (t, id) = target.ok_or(EngineError::Integrity)?;
            if !seen.insert((t.clone(), id.clone())) {
                return Err(EngineError::BadRequest(format!("Bundle.entry[{i}]: the same resource appears twice in one transaction")));
            }
            let rkey = self.vault.record_key(&t, &id);
            let current = self.store.current(&rkey)?;
            reads.push(rkey);
            let p = match e.method {
                Method::Delete => {
                    self.require(who, &t, 'd')?;
                    match current.as_ref().filter(|c| !c.deleted) {
                        None => {
                            plan[i] = Some(Planned::Done(Box::new(EntryOutcome::done(204, Some((t, id)), None))));
                            continue;
                        }
                        Some(c) => {
                            let view = self.gate_row(who, c, Act::Write)?;
                            let mut old = self.open_row(c, Some((&t, &id)))?;
                            self.gate_record(who, &view, &t, 'd', &mut old.resource)?;
                            if e.if_match.is_some_and(|v| v != c.version) {
                                return Err(EngineError::PreconditionFailed(format!("Bundle.entry[{i}]: ifMatch does not match")));
                            }
                            self.prepare_delete(&t, &id, c, now)?
                        }
                    }
                }
                _ => {
                    let mut resource = e.resource.ok_or(EngineError::Integrity)?;
                    let mut if_match = e.if_match;
                    if e.method == Method::Patch {
                        // The patch applies to the current version, read whole as the caller
                        // sees it; the write expects that version.
                        let body = crate::PatchBody::from_binary(&resource).map_err(|err| in_entry(err, i))?;
                        let (doc, version) = self.patched(who, &t, &id, &body, e.if_match).map_err(|err| in_entry(err, i))?;
                        resource = doc;
                        if_match = Some(version);
                    }
                    if resource.get("resourceType").and_then(Value::as_str) != Some(t.as_str()) {
                        return Err(EngineError::BadRequest(format!("Bundle.entry[{i}]: resourceType does not match request.url")));
                    }
                    self.rewrite_references(who, &mut resource, &map, i, &mut queried)?;
                    let live = current.as_ref().filter(|c| !c.deleted);
                    self.require(who, &t, if live.is_some() { 'u' } else { 'c' })?;
                    let view = live.map(|c| self.gate_row(who, c, Act::Write)).transpose()?;
                    let expect = match (e.method, if_match, &current) {
                        (Method::Post, _, _) => Expect::Absent,
                        (_, Some(v), Some(c)) if c.version == v && !c.deleted => Expect::Version(v),
                        (_, Some(_), _) => return Err(EngineError::PreconditionFailed(format!("Bundle.entry[{i}]: ifMatch does not match"))),
                        (_, None, Some(c)) => Expect::Version(c.version),
                        (_, None, None) => Expect::Absent,
                    };
                    let p = self.prepare(who, &t, &id, resource, current.as_ref(), expect, now).map_err(|err| in_entry(err, i))?;
                    self.gate_new(who, &p.row.partition)?;
                    self.gate_scope_resource(who, &t, if live.is_some() { 'u' } else { 'c' }, &p.stored.resource)?;
                    if let (Some(c), Some(view)) = (live, &view) {
                        let mut old = self.open_row(c, Some((&t, &id)))?;
                        self.gate_record(who, view, &t, 'u', &mut old.resource)?;
                    }
                    p
                }
            };
            plan[i] = Some(Planned::Write(prepared.len()));
            prepared.push(p);
        }
        Ok(PreparedTransaction { prepared, plan: plan.into_iter().map(|p| p.unwrap_or(Planned::Get)).collect(), gets, reads, queried })
    }

    fn rewrite_references(&self, who: &Principal, resource: &mut Value, map: &HashMap<String, String>, entry: usize, queried: &mut Vec<String>) -> Result<()> {
        let mut conditional = Vec::new();
        rewrite_urls(resource, map, 0);
        brankas_fhir::for_each_reference_mut(resource, &mut |r: &mut String| {
            if let Some(to) = map.get(r.as_str()) {
                *r = to.clone();
            } else if r.starts_with("urn:uuid:") || r.starts_with("urn:oid:") {
                // Left for the check below: an unresolved placeholder is an error.
                conditional.push(r.clone());
            } else if let Some((t, _)) = r.split_once('?')
                && brankas_fhir::is_resource_type(t)
            {
                conditional.push(r.clone());
            }
        });
        if conditional.is_empty() {
            return Ok(());
        }
        let mut resolved: HashMap<String, String> = HashMap::new();
        for c in conditional {
            if c.starts_with("urn:") {
                return Err(EngineError::BadRequest(format!("Bundle.entry[{entry}]: a urn reference names no entry of this Bundle")));
            }
            let (t, q) = c.split_once('?').ok_or(EngineError::Integrity)?;
            queried.push(t.to_string());
            let found = self.conditional_match(who, t, q, None)?;
            match found.len() {
                1 => {
                    let id = found[0].resource.get("id").and_then(Value::as_str).unwrap_or_default();
                    resolved.insert(c.clone(), format!("{t}/{id}"));
                }
                0 => return Err(EngineError::PreconditionFailed(format!("Bundle.entry[{entry}]: a conditional reference matched nothing"))),
                _ => return Err(EngineError::PreconditionFailed(format!("Bundle.entry[{entry}]: a conditional reference matched more than one resource"))),
            }
        }
        brankas_fhir::for_each_reference_mut(resource, &mut |r: &mut String| {
            if let Some(to) = resolved.get(r.as_str()) {
                *r = to.clone();
            }
        });
        Ok(())
    }

    /// `POST /` with a batch Bundle: each entry on its own.
    pub fn batch(&self, who: &Principal, bundle: &Value) -> Result<crate::Admitted<Vec<EntryOutcome>>> {
        let entries = parse_entries(bundle, self.limits.max_bundle_entries)?;
        let mut out = Vec::with_capacity(entries.len());
        let mut searched = crate::Admitted::nothing(());
        for e in entries {
            let r: Result<EntryOutcome> = (|| match e.method {
                Method::Get => self.entry_get(who, &GetEntry::from(&e), &mut searched),
                Method::Post => {
                    let w = self.create_gated(who, &e.url, e.resource.clone().ok_or(EngineError::Integrity)?, e.if_none_exist.as_deref())?;
                    let id = w.stored.resource.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                    Ok(EntryOutcome::done(if w.created { 201 } else { 200 }, Some((e.url.clone(), id)), Some(w.stored)))
                }
                Method::Put => {
                    let resource = e.resource.clone().ok_or(EngineError::Integrity)?;
                    let w = match split_instance(&e.url) {
                        Some((t, id)) => self.update_gated(who, t, id, resource, e.if_match)?,
                        None => {
                            let (t, q) = e.url.split_once('?').ok_or_else(|| EngineError::BadRequest("PUT needs Type/id or Type?criteria".into()))?;
                            searched.take(self.conditional_update(who, t, q, resource, e.if_match)?)
                        }
                    };
                    Ok(EntryOutcome::done(if w.created { 201 } else { 200 }, self.location_of(&w.stored), Some(w.stored)))
                }
                Method::Patch => {
                    let body = crate::PatchBody::from_binary(e.resource.as_ref().ok_or(EngineError::Integrity)?)?;
                    let w = searched.take(match split_instance(&e.url) {
                        Some((t, id)) => self.patch(who, t, id, &body, e.if_match)?,
                        None => {
                            let (t, q) = e.url.split_once('?').ok_or_else(|| EngineError::BadRequest("PATCH needs Type/id or Type?criteria".into()))?;
                            self.conditional_patch(who, t, q, &body, e.if_match)?
                        }
                    });
                    Ok(EntryOutcome::done(200, self.location_of(&w.stored), Some(w.stored)))
                }
                Method::Delete => {
                    let loc = match split_instance(&e.url) {
                        Some((t, id)) => {
                            self.delete(who, t, id, e.if_match)?;
                            (t.to_string(), id.to_string())
                        }
                        None => {
                            let (t, q) = e.url.split_once('?').ok_or_else(|| EngineError::BadRequest("DELETE needs Type/id or Type?criteria".into()))?;
                            let gone = self.conditional_delete(who, t, q, e.if_match)?;
                            (t.to_string(), gone.as_ref().and_then(|s| s.resource.get("id")).and_then(Value::as_str).unwrap_or_default().to_string())
                        }
                    };
                    Ok(EntryOutcome::done(204, Some(loc), None))
                }
            })();
            out.push(r.unwrap_or_else(EntryOutcome::failed));
        }
        Ok(self.admit_entries(out, searched))
    }

    fn location_of(&self, s: &Stored) -> Option<(String, String)> {
        let t = s.resource.get("resourceType").and_then(Value::as_str)?;
        let id = s.resource.get("id").and_then(Value::as_str)?;
        Some((t.to_string(), id.to_string()))
    }
}

/// Prefixes validation issue paths with the entry they came from.
fn in_entry(err: EngineError, i: usize) -> EngineError {
    match err {
        EngineError::Invalid(mut issues) => {
            for is in &mut issues {
                is.path = format!("Bundle.entry[{i}].resource.{}", is.path);
            }
            EngineError::Invalid(issues)
        }
        EngineError::BadRequest(m) => EngineError::BadRequest(format!("Bundle.entry[{i}]: {m}")),
        e => e,
    }
}
