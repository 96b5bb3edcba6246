//! Search: exact identity lookups across patients, in-memory evaluation within one patient.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use brankas_auth::{Principal, Role};
use brankas_search::{IdentityQuery, Query, QueryError, Summary};
use brankas_store::{EntryRow, PartitionId, VersionRow};
use brankas_vault::BlindTerm;
use serde_json::{Value, json};

use crate::access::Act;
use crate::{Admitted, Disclosure, Engine, EngineError, Result, Stored, crud::check_type};

/// A search as the HTTP layer hands it over.
#[derive(Clone, Debug, Default)]
pub struct SearchRequest {
    pub resource_type: String,
    /// Query pairs, percent-decoded.
    pub pairs: Vec<(String, String)>,
    /// `Patient/[id]/[type]` compartment searches name the patient here.
    pub compartment: Option<String>,
    /// First result to return.
    pub offset: usize,
    /// Unknown parameters are an error (FHIR `Prefer: handling=strict`); otherwise they are
    /// ignored and named in [`Page::ignored`] (lenient, the default R4 servers apply).
    pub strict: bool,
}

/// One page of results.
#[derive(Debug)]
pub struct Page {
    pub resources: Vec<Stored>,
    /// Number of matches in all pages.
    pub total: usize,
    pub offset: usize,
    pub count: usize,
    /// Opaque cursors (sealed, bound to the client, expiring) for the links.
    pub next: Option<String>,
    pub previous: Option<String>,
    pub this: String,
    /// The parameters used, URL-encoded, for the self link (which also carries `this`);
    /// `None` when a value is a person's identity (a NIK, a name, a birth date, a phone…),
    /// which never appears in a link.
    pub used: Option<String>,
    /// Names of the parameters that were not understood and so were ignored (lenient
    /// handling, the default), sanitised: the answer reports them.
    pub ignored: Vec<String>,
    /// What `_include` and `_revinclude` added (`search.mode` `include`).
    pub included: Vec<Stored>,
    /// Warnings for the answer's OperationOutcome (what was not followed, and why): names of
    /// types and parameters only.
    pub notes: Vec<String>,
}

/// Names of search parameters whose values say who a person is: a search using one of
/// them (as a parameter, a chain's step or a modifier's base) gets no parameters in its links.
const IDENTITY_PARAMS: &[&str] =
    &["identifier", "telecom", "phone", "email", "name", "family", "given", "birthdate", "address", "address-city", "address-postalcode", "address-state", "phonetic"];

/// The query a search's self link shows: the parameters used (those not understood are left
/// out, as they were ignored), or `None` for a Patient search, a chain, or any search naming
/// a person's identity.
fn used_query(rtype: &str, pairs: &[(String, String)], unknown: &[String], chained: bool) -> Option<String> {
    let identifying = |k: &str| k.split([':', '.']).any(|part| IDENTITY_PARAMS.contains(&part));
    if rtype == "Patient" || chained || pairs.iter().any(|(k, _)| identifying(k)) {
        return None;
    }
    let kept = pairs.iter().filter(|(k, _)| k != "_page" && !unknown.contains(k));
    Some(form_urlencoded::Serializer::new(String::new()).extend_pairs(kept).finish())
}

/// The query a `$everything` self link shows.
fn everything_query(req: &EverythingRequest, count: usize) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("_count", &count.to_string());
    if let Some(t) = req.since {
        q.append_pair("_since", &crate::instant(t));
    }
    if !req.types.is_empty() {
        q.append_pair("_type", &req.types.join(","));
    }
    q.finish()
}

/// The patient a search names, when its gate admitted the search: (partition, patient id).
pub(crate) type Pinned = Option<(PartitionId, Option<String>)>;

/// How long a paging cursor stays valid.
pub(crate) const CURSOR_SECONDS: u64 = 900;

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn qerr(e: QueryError) -> EngineError {
    EngineError::Search(e.to_string())
}

/// Percent-decodes an `a=b&c=d` query (used for If-None-Exist and conditional references).
pub(crate) fn parse_query_string(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.trim_start_matches('?').as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

impl Engine {
    /// Runs a search and returns the requested page, with what it discloses: the patients of
    /// the records on the page as admitted (before `_elements`/`_summary` trim them), every
    /// record counted when the answer is a count (`_summary=count`), and the patient a search
    /// names whenever its gate admitted the search (even an empty page or a count tells about
    /// that patient's record).
    pub fn search(&self, who: &Principal, req: &SearchRequest) -> Result<Admitted<Page>> {
        check_type(&req.resource_type)?;
        self.require(who, &req.resource_type, 's')?;
        let split = self.split_chains(&req.resource_type, &req.pairs)?;
        let query = Query::parse(self.registry, &req.resource_type, &split.plain).map_err(qerr)?;
        if req.strict && !query.unknown_params().is_empty() {
            return Err(EngineError::Search(format!("unknown search parameter '{}' for {}", safe_param(&query.unknown_params()[0]), req.resource_type)));
        }
        // The patients the search was admitted to (and looked into): disclosed, even by an
        // empty page or a count.
        let mut pinned: Vec<(PartitionId, Option<String>)> = Vec::new();
        let mut matches = match &split.chain {
            None => {
                let (m, p) = self.candidates(who, &req.resource_type, &query, req.compartment.as_deref(), &split.plain, None)?;
                pinned.extend(p);
                m
            }
            Some((param, chained)) => {
                // Once per patient the chained identity names, as `param=Patient/<id>`.
                let ids = self.chain_patients(who, chained)?;
                let many = ids.len() > 1;
                let mut all = Vec::new();
                for id in ids {
                    let mut pairs = split.plain.clone();
                    pairs.push((param.clone(), format!("Patient/{id}")));
                    let q = Query::parse(self.registry, &req.resource_type, &pairs).map_err(qerr)?;
                    match self.candidates(who, &req.resource_type, &q, req.compartment.as_deref(), &pairs, None) {
                        Ok((m, p)) => {
                            pinned.extend(p);
                            all.extend(m);
                        }
                        // Of several people found, those the caller cannot reach are left out.
                        Err(EngineError::Forbidden(_)) if many => {}
                        Err(e) => return Err(e),
                    }
                }
                all
            }
        };
        let (kept, looked) = self.apply_has(who, matches, &split.has)?;
        matches = kept;
        pinned.extend(looked);
        // Scope query restrictions filter before counting: a page never reveals (not even
        // in its total) a resource the caller may not see.
        self.restrict_to_scopes(who, &req.resource_type, &mut matches)?;
        matches.sort_by(|a, b| {
            if query.sort().is_empty() {
                b.last_updated_us.cmp(&a.last_updated_us).then_with(|| id_of(&a.resource).cmp(id_of(&b.resource)))
            } else {
                query.compare(&a.resource, &b.resource)
            }
        });
        let count = query.count().unwrap_or(self.limits.default_count).min(self.page_limit(who));
        let rp = query.result_params();
        let summary_count = matches!(rp.summary, Some(Summary::Count));
        let total = matches.len();
        let offset = req.offset.min(total);
        let take = if summary_count || count == 0 { 0 } else { count };
        let mut disclosure = Disclosure::none();
        let pinned_partition = match pinned.as_slice() {
            [(p, _)] => Some(*p),
            _ => None,
        };
        for (p, pid) in pinned {
            disclosure.patient(p, pid);
        }
        if take == 0 {
            // The answer is a count: every record counted informed it (its categories read
            // more than a gate copy holds).
            matches.iter_mut().try_for_each(|s| self.widen(s))?;
            matches.iter().for_each(|s| self.disclose(&mut disclosure, s));
        }
        // Only the page is opened whole (the rest was decided on search entries).
        let resources_all: Vec<Stored> = matches.into_iter().skip(offset).take(take).map(|s| self.complete(who, s)).collect::<Result<_>>()?;
        resources_all.iter().for_each(|s| self.disclose(&mut disclosure, s));
        let (include, revinclude) = query.includes();
        let included = self.included(who, &resources_all, pinned_partition, include, revinclude, &mut disclosure)?;
        let mut resources = resources_all;
        if let Some(how) = trim_of(rp) {
            resources.iter_mut().for_each(|s| brankas_fhir::definitions::trim(&mut s.resource, how));
        }
        let cursor = |o: usize| self.seal_cursor(who, req, o);
        let page = Page {
            next: if take > 0 && offset + take < total { Some(cursor(offset + take)?) } else { None },
            previous: if offset > 0 && take > 0 { Some(cursor(offset.saturating_sub(take))?) } else { None },
            this: cursor(offset)?,
            used: used_query(&req.resource_type, &req.pairs, query.unknown_params(), split.chain.is_some()),
            resources,
            total,
            offset,
            count: take,
            ignored: query.unknown_params().iter().map(|p| safe_param(p)).collect(),
            included: included.resources,
            notes: included.notes.into_iter().collect(),
        };
        Ok(Admitted::new(page, disclosure))
    }

    /// The largest page `who` gets: the engine's, or the client's own when smaller.
    pub(crate) fn page_limit(&self, who: &Principal) -> usize {
        who.limits().map_or(self.limits.max_count, |l| self.limits.max_count.min(l.max_page as usize)).max(1)
    }

    /// Continues a search from an opaque paging cursor made for this client.
    pub fn search_page(&self, who: &Principal, cursor: &str) -> Result<Admitted<Page>> {
        let req = self.open_cursor(who, cursor)?;
        self.search(who, &req)
    }

    fn seal_cursor(&self, who: &Principal, req: &SearchRequest, offset: usize) -> Result<String> {
        let state = json!({
            "c": who.client_id(), "t": req.resource_type, "p": req.pairs, "k": req.compartment,
            "o": offset, "s": req.strict, "x": now_secs() + CURSOR_SECONDS,
        });
        let sealed = self.vault.seal_cursor(&serde_json::to_vec(&state).map_err(|_| EngineError::Integrity)?)?;
        Ok(B64.encode(sealed))
    }

    /// The state sealed in a paging cursor, if it was made for this client and has not expired.
    pub(crate) fn open_cursor_value(&self, who: &Principal, cursor: &str) -> Result<Value> {
        let bad = || EngineError::BadRequest("invalid or expired paging link".into());
        if cursor.len() > 16_384 {
            return Err(bad());
        }
        let sealed = B64.decode(cursor).map_err(|_| bad())?;
        let plain = self.vault.open_cursor(&sealed).map_err(|_| bad())?;
        let v: Value = serde_json::from_slice(&plain).map_err(|_| bad())?;
        if v["c"].as_str() != Some(who.client_id()) || v["x"].as_u64().is_none_or(|x| x < now_secs()) {
            return Err(bad());
        }
        Ok(v)
    }

    fn open_cursor(&self, who: &Principal, cursor: &str) -> Result<SearchRequest> {
        let bad = || EngineError::BadRequest("invalid or expired paging link".into());
        let v = self.open_cursor_value(who, cursor)?;
        if v["e"].as_bool() == Some(true) || v["h"].as_bool() == Some(true) {
            return Err(bad());
        }
        let pairs = v["p"].as_array().ok_or_else(bad)?.iter().filter_map(|p| Some((p.get(0)?.as_str()?.to_string(), p.get(1)?.as_str()?.to_string()))).collect();
        Ok(SearchRequest {
            resource_type: v["t"].as_str().ok_or_else(bad)?.to_string(),
            pairs,
            compartment: v["k"].as_str().map(String::from),
            offset: v["o"].as_u64().ok_or_else(bad)? as usize,
            strict: v["s"].as_bool().unwrap_or(true),
        })
    }

    /// All matches of a parsed query that `who` may see, unsorted. `owner` pins a conditional
    /// operation to the partition of the resource being written.
    ///
    /// Access is decided before anything is decrypted where the query names its patient (a
    /// compartment search, `patient=`): without access the answer is 403, whatever exists. An
    /// identity lookup of Patients answers facilities without a care relationship too (that
    /// is how a visit is registered), and answers a patient client with its own record only.
    pub(crate) fn candidates(
        &self,
        who: &Principal,
        rtype: &str,
        query: &Query,
        compartment: Option<&str>,
        pairs: &[(String, String)],
        owner: Option<PartitionId>,
    ) -> Result<(Vec<Stored>, Pinned)> {
        let in_compartment = self.registry.in_patient_compartment(rtype);
        if let Some(pid) = compartment {
            if !brankas_fhir::is_valid_id(pid) {
                return Err(EngineError::NotFound);
            }
            if !in_compartment {
                return Err(EngineError::Search(format!("{rtype} is not in the Patient compartment")));
            }
            let partition = self.vault.patient_partition(pid);
            let view = self.gate_partition_read(who, &partition)?;
            let found = self.scan(partition, rtype, query, Some(pid))?;
            return Ok((self.filter_consent(who, &view, rtype, found)?, Some((partition, Some(pid.to_string())))));
        }
        if rtype == "Patient" {
            if let Some(id) = query.pinned_patient() {
                let row = self.current_row("Patient", id)?;
                let Some(r) = row else { return Ok((Vec::new(), None)) };
                let view = self.gate_row(who, &r, Act::Read)?;
                let partition = r.partition;
                let found = self.filter_rows(vec![r], query)?;
                return Ok((self.filter_consent(who, &view, rtype, found)?, Some((partition, Some(id.to_string())))));
            }
            if let Some(identity) = query.identity() {
                if !who.is_local_operator() {
                    self.role_allows_patient_data(who)?;
                }
                let own = who.patient().and_then(|p| p.strip_prefix("Patient/")).map(|id| self.vault.patient_partition(id));
                // A patient's client finds its own patient only: others' rows are never opened.
                let only = if who.role() == Role::Patient { Some(own) } else { None };
                let hits = self.identity_search(&identity, pairs, only)?;
                return Ok((
                    match (who.role(), own) {
                        (Role::Patient, own) => hits.into_iter().filter(|(row, _)| Some(&row.partition) == own.as_ref()).map(|(_, s)| s).collect(),
                        // Demographics: photos only with a grant.
                        _ => hits
                            .into_iter()
                            .map(|(_, mut s)| {
                                crate::access::redact_photo(who, "Patient", &mut s.resource);
                                s
                            })
                            .collect(),
                    },
                    None,
                ));
            }
            if let Some(p) = owner {
                return self.scan_owned(who, p, rtype, query).map(|f| (f, None));
            }
            return Err(EngineError::Search(
                "Patient searches must be an exact identity lookup: identifier=system|value, telecom (phone), or name with birthdate (and optionally gender); listing or fuzzy-searching patients is not permitted".into(),
            ));
        }
        if in_compartment {
            if let Some(pid) = query.pinned_patient() {
                let partition = self.vault.patient_partition(pid);
                let view = self.gate_partition_read(who, &partition)?;
                let found = self.scan(partition, rtype, query, Some(pid))?;
                return Ok((self.filter_consent(who, &view, rtype, found)?, Some((partition, Some(pid.to_string())))));
            }
            if let Some(p) = owner {
                return self.scan_owned(who, p, rtype, query).map(|f| (f, None));
            }
            if let Some(r) = self.worklist_search(who, rtype, query, pairs) {
                return r.map(|f| (f, None));
            }
            return Err(EngineError::Search(format!(
                "searching {rtype} across patients is not permitted: give exactly one patient (patient=Patient/<id> or subject=Patient/<id>)"
            )));
        }
        if !who.is_local_operator() {
            self.gate_directory(who, Act::Read)?;
        }
        self.scan(self.vault.system_partition(), rtype, query, None).map(|f| (f, None))
    }

    /// Read access to one patient's partition, for searches that name the patient.
    fn gate_partition_read(&self, who: &Principal, partition: &PartitionId) -> Result<crate::access::RecordView> {
        if who.is_local_operator() { Ok(crate::access::RecordView::OPEN) } else { self.gate_patient(who, partition, Act::Read) }
    }

    /// A conditional operation's search inside the partition of the resource being written:
    /// its matches are answers (a conditional create returns the match) and its emptiness is
    /// a fact about the patient's record, so it needs read access to that patient, decided
    /// before anything of the partition is decrypted.
    fn scan_owned(&self, who: &Principal, partition: PartitionId, rtype: &str, query: &Query) -> Result<Vec<Stored>> {
        if !self.is_patient_partition(&partition) {
            return self.scan(partition, rtype, query, None);
        }
        // Nothing of the type stored (e.g. the patient is new in this very transaction):
        // nothing to decrypt, and nothing to decide.
        let rows = self.store.partition_entries(&partition, Some(rtype))?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let view = self.gate_partition_read(who, &partition)?;
        let found = self.scan(partition, rtype, query, None)?;
        self.filter_consent(who, &view, rtype, found)
    }

    /// The current records of one partition and type that match `query`: decided on their
    /// search entries where the query's criteria and sort keys read no more than an entry
    /// holds ([`crate::entry::gate_suffices`]), else on the records opened whole.
    fn scan(&self, partition: PartitionId, rtype: &str, query: &Query, _patient: Option<&str>) -> Result<Vec<Stored>> {
        if crate::entry::gate_suffices(self.registry, rtype, query) {
            return self.scan_rows(self.store.partition_entries(&partition, Some(rtype))?, query);
        }
        let rows = self.store.partition_current(&partition, Some(rtype))?;
        if rows.len() > self.limits.max_scan {
            return Err(EngineError::Search("too many resources to search; narrow the search".into()));
        }
        self.filter_rows(rows, query)
    }

    /// The current rows of one partition and type that match `query`, within the scan
    /// bound, decided on their search entries ([`crate::entry`]): what is returned is the
    /// entry where the row has one, and must pass [`Engine::complete`] before it is served
    /// (what needs more of a record first gets it whole, [`Engine::widen`]).
    fn scan_rows(&self, rows: Vec<EntryRow>, query: &Query) -> Result<Vec<Stored>> {
        if rows.len() > self.limits.max_scan {
            return Err(EngineError::Search("too many resources to search; narrow the search".into()));
        }
        let mut out = Vec::new();
        for row in &rows {
            let s = self.open_for_search(row)?;
            if query.matches(&s.resource) {
                out.push(s);
            }
        }
        Ok(out)
    }

    fn filter_rows(&self, rows: Vec<VersionRow>, query: &Query) -> Result<Vec<Stored>> {
        let mut out = Vec::new();
        for row in rows.iter().filter(|r| !r.deleted) {
            let s = self.open_row(row, None)?;
            if query.matches(&s.resource) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Exact identity lookup through the blind index. `only`, when given, is the one partition
    /// whose hits may be opened (a patient's client): other hits are dropped before decryption.
    fn identity_search(&self, identity: &IdentityQuery, pairs: &[(String, String)], only: Option<Option<PartitionId>>) -> Result<Vec<(VersionRow, Stored)>> {
        let (term, used): (_, &[&str]) = match identity {
            IdentityQuery::Identifier { system, value } => {
                (self.vault.blind_term("identifier", &["Patient", system, &brankas_fhir::normalize_identifier_value(value)]), &["identifier"])
            }
            IdentityQuery::Phone(p) => {
                let n = brankas_fhir::normalize_phone(p).ok_or_else(|| EngineError::Search("phone number is not valid".into()))?;
                (self.vault.blind_term("phone", &[&n]), &["telecom", "phone"])
            }
            IdentityQuery::NameBirthDate { name, birth_date, .. } => {
                (self.vault.blind_term("name-birthdate", &[&brankas_fhir::normalize_name(name), birth_date]), &["name", "birthdate"])
            }
        };
        // The rest of the query (e.g. gender, active) filters the exact hits as usual.
        let rest: Vec<(String, String)> = pairs.iter().filter(|(k, _)| !used.contains(&k.split(':').next().unwrap_or(""))).cloned().collect();
        let residual = Query::parse(self.registry, "Patient", &rest).map_err(qerr)?;
        let mut out = Vec::new();
        for (row, s) in self.term_hits_in(&term, "Patient", only)? {
            // A tampered index row must not make a lookup return someone else: the hit must
            // itself carry the identity that was asked for.
            if !self.index_terms("Patient", &s.resource).is_some_and(|t| t.contains(&term)) {
                return Err(EngineError::Integrity);
            }
            if residual.matches(&s.resource) {
                out.push((row, s));
            }
        }
        Ok(out)
    }

    /// The current, live records of type `rtype` a blind-index term points to, opened and
    /// ungated. Callers check that each hit really carries the term (the index is not trusted).
    pub(crate) fn term_hits(&self, term: &BlindTerm, rtype: &str) -> Result<Vec<(VersionRow, Stored)>> {
        self.term_hits_in(term, rtype, None)
    }

    /// The current, live rows of type `rtype` a blind-index term points to, still sealed.
    pub(crate) fn term_rows(&self, term: &BlindTerm, rtype: &str) -> Result<Vec<VersionRow>> {
        let mut out = Vec::new();
        for key in self.store.lookup(term)? {
            let Some(row) = self.store.current(&key)? else { continue };
            if !row.deleted && row.resource_type == rtype {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// [`Engine::term_hits`], opening only rows of partition `only` when it is given.
    fn term_hits_in(&self, term: &BlindTerm, rtype: &str, only: Option<Option<PartitionId>>) -> Result<Vec<(VersionRow, Stored)>> {
        self.term_rows(term, rtype)?
            .into_iter()
            .filter(|row| only.as_ref().is_none_or(|p| p.as_ref() == Some(&row.partition)))
            .map(|row| self.open_row(&row, None).map(|s| (row, s)))
            .collect()
    }

    /// Evaluates a conditional query (If-None-Exist, conditional update, conditional
    /// reference). `resource`, when given, pins clinical queries to its own patient.
    pub(crate) fn conditional_match(&self, who: &Principal, rtype: &str, q: &str, resource: Option<&Value>) -> Result<Vec<Stored>> {
        check_type(rtype)?;
        self.require(who, rtype, 's')?;
        let pairs = parse_query_string(q);
        if pairs.is_empty() {
            return Err(EngineError::BadRequest("empty conditional query".into()));
        }
        let query = Query::parse(self.registry, rtype, &pairs).map_err(qerr)?;
        if !query.unknown_params().is_empty() {
            return Err(EngineError::Search(format!("unknown search parameter '{}'", safe_param(&query.unknown_params()[0]))));
        }
        let owner = resource.and_then(|r| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or("");
            if rtype == "Patient" {
                None
            } else if self.registry.in_patient_compartment(rtype) {
                self.registry.patient_refs(rtype, r).first().map(|p| self.vault.patient_partition(p))
            } else {
                let _ = id;
                None
            }
        });
        let (found, _) = self.candidates(who, rtype, &query, None, &pairs, owner)?;
        self.served_matches(who, rtype, found)
    }

    /// Keeps the matches the caller's scope query restrictions allow (a search never reveals,
    /// not even in its total, a resource the caller may not see).
    pub(crate) fn restrict_to_scopes(&self, who: &Principal, rtype: &str, matches: &mut Vec<Stored>) -> Result<()> {
        if !who.is_local_operator()
            && let Some(qs) = self.scope_restrictions(who, rtype, 's')?
        {
            matches.iter_mut().try_for_each(|s| self.widen(s))?;
            matches.retain(|s| qs.iter().any(|q| q.matches(&s.resource)));
        }
        Ok(())
    }

    /// Matches of [`Engine::candidates`] as served: within the scopes, opened whole.
    pub(crate) fn served_matches(&self, who: &Principal, rtype: &str, mut found: Vec<Stored>) -> Result<Vec<Stored>> {
        self.restrict_to_scopes(who, rtype, &mut found)?;
        found.into_iter().map(|s| self.complete(who, s)).collect()
    }

    /// `Patient/[id]/$everything` (R4 §Patient-everything): the patient's whole compartment
    /// that the caller may see (scopes, consent, labels, redaction), one page at a time: the
    /// Patient first, then by type and time. Decided on the search entries; only the page is
    /// opened whole, and only the page (with the patient) is disclosed.
    pub fn everything(&self, who: &Principal, req: &EverythingRequest) -> Result<Admitted<Page>> {
        self.require(who, "Patient", 'r')?;
        let patient_id = req.patient_id.as_str();
        if !brankas_fhir::is_valid_id(patient_id) {
            return Err(EngineError::NotFound);
        }
        if let Some(t) = req.types.iter().find(|t| !self.registry.in_patient_compartment(t)) {
            return Err(EngineError::BadRequest(format!("_type {} is not in the Patient compartment", safe_param(t))));
        }
        let patient = self.current_row("Patient", patient_id)?.ok_or(EngineError::NotFound)?;
        let view = self.gate_row(who, &patient, Act::Read)?;
        if patient.deleted {
            return Err(EngineError::Gone);
        }
        let partition = self.vault.patient_partition(patient_id);
        let mut rows = self.store.partition_entries(&partition, None)?;
        rows.retain(|r| {
            !crate::ahead::is_internal(&r.resource_type)
                && who.scopes().permits(&r.resource_type, 'r')
                && (req.types.is_empty() || req.types.contains(&r.resource_type))
                && req.since.is_none_or(|t| r.last_updated_us >= t)
        });
        if rows.len() > self.limits.max_scan {
            return Err(EngineError::Search("compartment too large for one $everything: narrow it with _type or _since".into()));
        }
        // The Patient first, then by type and time: a stable, readable order.
        rows.sort_by(|a, b| {
            (a.resource_type != "Patient")
                .cmp(&(b.resource_type != "Patient"))
                .then_with(|| a.resource_type.cmp(&b.resource_type))
                .then(a.last_updated_us.cmp(&b.last_updated_us))
                .then_with(|| a.key.0.cmp(&b.key.0))
        });
        let mut restrictions: std::collections::HashMap<String, Option<Vec<Query>>> = std::collections::HashMap::new();
        let mut visible = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut s = self.open_for_search(row)?;
            if !view.permits(who, &row.resource_type, &s.resource) {
                continue;
            }
            if !who.is_local_operator() {
                if !restrictions.contains_key(&row.resource_type) {
                    restrictions.insert(row.resource_type.clone(), self.scope_restrictions(who, &row.resource_type, 'r')?);
                }
                if let Some(Some(qs)) = restrictions.get(&row.resource_type) {
                    self.widen(&mut s)?;
                    if !qs.iter().any(|q| q.matches(&s.resource)) {
                        continue;
                    }
                }
            }
            visible.push(s);
        }
        let total = visible.len();
        let count = req.count.unwrap_or(self.limits.default_count).clamp(1, self.page_limit(who));
        let offset = req.offset.min(total);
        let mut page = Vec::with_capacity(count.min(total - offset));
        for s in visible.into_iter().skip(offset).take(count) {
            let rtype = s.resource.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
            let mut s = self.complete(who, s)?;
            view.redact(who, &rtype, &mut s.resource);
            page.push(s);
        }
        let mut d = self.disclosure_of(&page);
        d.patient(patient.partition, Some(patient_id.to_string()));
        let cursor = |o: usize| self.seal_everything_cursor(who, req, o, count);
        let page = Page {
            next: if offset + count < total { Some(cursor(offset + count)?) } else { None },
            previous: if offset > 0 { Some(cursor(offset.saturating_sub(count))?) } else { None },
            this: cursor(offset)?,
            used: Some(everything_query(req, count)),
            resources: page,
            total,
            offset,
            count,
            ignored: req.ignored.clone(),
            included: Vec::new(),
            notes: Vec::new(),
        };
        Ok(Admitted::new(page, d))
    }

    /// Continues `$everything` from a paging cursor made for this client.
    pub fn everything_page(&self, who: &Principal, cursor: &str) -> Result<Admitted<Page>> {
        let v = self.open_cursor_value(who, cursor)?;
        let bad = || EngineError::BadRequest("invalid or expired paging link".into());
        if v["e"].as_bool() != Some(true) {
            return Err(bad());
        }
        let strings = |k: &str| -> Vec<String> { v[k].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect() };
        let req = EverythingRequest {
            patient_id: v["k"].as_str().ok_or_else(bad)?.to_string(),
            types: strings("t"),
            since: v["s"].as_i64(),
            count: v["n"].as_u64().map(|n| n as usize),
            offset: v["o"].as_u64().ok_or_else(bad)? as usize,
            ignored: strings("i"),
        };
        self.everything(who, &req)
    }

    fn seal_everything_cursor(&self, who: &Principal, req: &EverythingRequest, offset: usize, count: usize) -> Result<String> {
        let state = json!({
            "c": who.client_id(), "e": true, "k": req.patient_id, "t": req.types, "s": req.since,
            "n": count, "o": offset, "i": req.ignored, "x": now_secs() + CURSOR_SECONDS,
        });
        let sealed = self.vault.seal_cursor(&serde_json::to_vec(&state).map_err(|_| EngineError::Integrity)?)?;
        Ok(B64.encode(sealed))
    }
}

impl EverythingRequest {
    /// The parameters of `Patient/[id]/$everything` (R4: `_count`, `_since`, `_type`).
    /// `start` and `end`, which select by each resource's clinical date, are not supported:
    /// like any other parameter not understood they are ignored and reported, or refused
    /// under strict handling.
    pub fn from_query(patient_id: String, pairs: &[(String, String)], strict: bool) -> Result<Self> {
        let bad = |m: String| EngineError::BadRequest(m);
        let mut req = EverythingRequest { patient_id, ..Default::default() };
        let mut seen: Vec<&str> = Vec::new();
        for (k, v) in pairs {
            if matches!(k.as_str(), "_count" | "_since" | "_type") && seen.contains(&k.as_str()) {
                return Err(bad(format!("{k} may be given once")));
            }
            seen.push(k);
            match k.as_str() {
                "_count" => {
                    let n =
                        v.parse::<usize>().ok().filter(|n| *n > 0 && v.bytes().all(|b| b.is_ascii_digit())).ok_or_else(|| bad("_count must be a positive whole number".into()))?;
                    req.count = Some(n);
                }
                "_since" => {
                    let (lo, _) = brankas_search::date_range(v).ok_or_else(|| bad("_since must be a FHIR date, dateTime or instant".into()))?;
                    req.since = Some(lo);
                }
                "_type" => {
                    for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        if !brankas_fhir::is_resource_type(t) {
                            return Err(bad("_type names an unknown resource type".into()));
                        }
                        if !req.types.iter().any(|x| x == t) {
                            req.types.push(t.to_string());
                        }
                    }
                }
                "_format" | "_pretty" => {}
                other => {
                    let name = safe_param(other);
                    if strict {
                        return Err(bad(format!("parameter '{name}' is not supported by $everything")));
                    }
                    req.ignored.push(name);
                }
            }
        }
        Ok(req)
    }
}

/// `Patient/[id]/$everything` as the HTTP layer hands it over.
#[derive(Clone, Debug, Default)]
pub struct EverythingRequest {
    pub patient_id: String,
    /// `_type`: only these types (each in the Patient compartment); empty for all.
    pub types: Vec<String>,
    /// `_since`: only resources last updated at or after this instant (µs since the epoch).
    pub since: Option<i64>,
    /// `_count`: the page size (the engine's default when absent, capped at its largest).
    pub count: Option<usize>,
    /// First result to return.
    pub offset: usize,
    /// Parameters not understood (reported, lenient handling).
    pub ignored: Vec<String>,
}

/// How `_summary` or `_elements` trims each resource of an answer (`None`: whole).
pub fn trim_of(rp: &brankas_search::ResultParams) -> Option<brankas_fhir::definitions::Trim<'_>> {
    use brankas_fhir::definitions::Trim;
    match rp.summary {
        Some(Summary::True) => Some(Trim::Summary),
        Some(Summary::Text) => Some(Trim::Text),
        _ if !rp.elements.is_empty() => Some(Trim::Elements(&rp.elements)),
        Some(Summary::Data) => Some(Trim::Data),
        _ => None,
    }
}

fn id_of(v: &Value) -> &str {
    v.get("id").and_then(Value::as_str).unwrap_or("")
}

/// A parameter name fit to echo: ASCII name characters only, bounded.
pub fn safe_param(p: &str) -> String {
    p.chars().filter(|c| c.is_ascii_alphanumeric() || "_-:.".contains(*c)).take(64).collect()
}
