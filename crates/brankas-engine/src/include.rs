//! `_include` and `_revinclude` (R4 §3.1.1.5.4): what a page's resources reference, and what
//! references them, inside the walls a search keeps.
//!
//! - Every included resource passes the gates a read (`_include`) or a search
//!   (`_revinclude`) of the caller's own would: scopes, care, consent, labels, redaction.
//!   What the caller may not see, what does not exist and what is deleted are left out alike,
//!   so the answer does not tell them apart.
//! - A reference never leads into another patient's record: `_include` follows references
//!   only into the partitions the page itself came from (and the directory), and
//!   `_revinclude` looks for referencing records only in the partition of the resource
//!   referenced (and the directory). Anything else is named in the answer's notes and not
//!   followed; those records are reached by reading or searching them, through their own gate.
//! - Breaking the glass is asked for by reading or searching the patient's record: a
//!   break-the-glass client's includes reach no patient's record but the one its search was
//!   admitted to, so a reference never breaks the glass on someone else.
//! - What is included is disclosed like the page: audited and charged to the caller's budget.
//! - At most [`crate::Limits::max_include`] resources per page, `:iterate` at most
//!   [`MAX_ROUNDS`] levels deep.

use std::collections::{BTreeSet, HashSet};

use brankas_auth::Principal;
use brankas_search::{Include, ParamKind, Query};
use brankas_store::PartitionId;
use serde_json::Value;

use crate::{Disclosure, Engine, EngineError, Result, Stored};

/// How many levels `:iterate` follows (the matches' own includes are the first).
pub const MAX_ROUNDS: usize = 4;

/// What a page's includes add.
#[derive(Debug, Default)]
pub(crate) struct Included {
    pub resources: Vec<Stored>,
    /// Plain-language notes for the answer's OperationOutcome (types and parameter names
    /// only, never values).
    pub notes: BTreeSet<String>,
}

fn key_of(v: &Value) -> (String, String) {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    (s("resourceType"), s("id"))
}

/// Whether a gate's refusal or an absence: left out of an include, alike.
fn left_out(e: &EngineError) -> bool {
    matches!(e, EngineError::Forbidden(_) | EngineError::NotFound | EngineError::Gone)
}

impl Engine {
    /// The resources `include` and `revinclude` add to `page` (already served: gated,
    /// whole), each gated as the caller's own read or search would be; what they disclose is
    /// added to `d`. `pinned` is the partition the search itself was admitted to, if any.
    pub(crate) fn included(
        &self,
        who: &Principal,
        page: &[Stored],
        pinned: Option<PartitionId>,
        include: &[Include],
        revinclude: &[Include],
        d: &mut Disclosure,
    ) -> Result<Included> {
        let mut out = Included::default();
        if include.is_empty() && revinclude.is_empty() {
            return Ok(out);
        }
        let mut seen: HashSet<(String, String)> = page.iter().map(|s| key_of(&s.resource)).collect();
        // The partitions whose records this answer may reach through a reference.
        let mut reach: HashSet<PartitionId> = page.iter().map(|s| s.partition).chain(pinned).collect();
        reach.insert(self.vault.system_partition());
        let max = self.limits.max_include;
        let mut from = 0usize;
        for round in 0..MAX_ROUNDS {
            let inc: Vec<&Include> = include.iter().filter(|i| round == 0 || i.iterate).collect();
            let rev: Vec<&Include> = revinclude.iter().filter(|i| round == 0 || i.iterate).collect();
            if inc.is_empty() && rev.is_empty() {
                break;
            }
            // This round's sources, borrowed: the page, then what the last round added.
            let sources: &[Stored] = if round == 0 { page } else { &out.resources[from..] };
            if sources.is_empty() {
                break;
            }
            from = out.resources.len();
            let mut new: Vec<Stored> = Vec::new();
            for src in sources {
                let (stype, sid) = key_of(&src.resource);
                for spec in inc.iter().filter(|i| i.source == stype) {
                    for (t, id) in self.registry.references(&stype, spec.param.as_deref(), &src.resource) {
                        if spec.target.as_ref().is_some_and(|want| *want != t) || !self.registry.is_resource_type(&t) || !seen.insert((t.clone(), id.clone())) {
                            continue;
                        }
                        if let Some(s) = self.include_one(who, &t, &id, &reach, pinned, &mut out.notes)? {
                            new.push(s);
                        }
                    }
                }
                for spec in &rev {
                    for s in self.revinclude_one(who, spec, src, &stype, &sid, pinned, &mut out.notes)? {
                        if seen.insert(key_of(&s.resource)) {
                            reach.insert(s.partition);
                            new.push(s);
                        }
                    }
                }
                if out.resources.len() + new.len() > max {
                    break;
                }
            }
            if out.resources.len() + new.len() > max {
                new.truncate(max - out.resources.len());
                out.notes
                    .insert(format!("more resources were to be included than one page carries ({max}); the rest were left out: ask for a smaller _count or fewer _include values"));
                out.resources.extend(new);
                break;
            }
            out.resources.extend(new);
        }
        out.resources.iter().for_each(|s| self.disclose(d, s));
        Ok(out)
    }

    /// One referenced resource, read as the caller would read it, if it lies where this
    /// answer may reach.
    fn include_one(
        &self,
        who: &Principal,
        rtype: &str,
        id: &str,
        reach: &HashSet<PartitionId>,
        pinned: Option<PartitionId>,
        notes: &mut BTreeSet<String>,
    ) -> Result<Option<Stored>> {
        if !brankas_fhir::is_valid_id(id) || crate::ahead::is_internal(rtype) || self.require(who, rtype, 'r').is_err() {
            return Ok(None);
        }
        let Some(row) = self.current_row(rtype, id)? else { return Ok(None) };
        if !reach.contains(&row.partition) {
            // Another patient's record: told apart from absence only by the reference the
            // caller already holds (the type it names), never by what exists.
            notes.insert(format!("references to {rtype} resources in another patient's record are not followed by _include; read them directly"));
            return Ok(None);
        }
        if self.would_break_glass(who, &row.partition, pinned, notes) {
            return Ok(None);
        }
        match self.serve_row(who, rtype, id, &row) {
            Ok(s) => Ok(Some(s)),
            Err(e) if left_out(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The resources of `spec.source` whose reference parameter points at `target`, searched
    /// as the caller's own search would be, in the target's own partition (or the directory).
    #[allow(clippy::too_many_arguments)]
    fn revinclude_one(
        &self,
        who: &Principal,
        spec: &Include,
        target: &Stored,
        ttype: &str,
        tid: &str,
        pinned: Option<PartitionId>,
        notes: &mut BTreeSet<String>,
    ) -> Result<Vec<Stored>> {
        let params: Vec<&str> = match &spec.param {
            Some(p) => vec![p.as_str()],
            None => self.registry.params_for(&spec.source).filter(|p| p.kind == ParamKind::Reference && p.is_supported()).map(|p| p.code.as_str()).collect(),
        };
        let params: Vec<&str> = params
            .into_iter()
            .filter(|p| spec.target.as_deref().is_none_or(|t| t == ttype) && self.registry.param(&spec.source, p).is_some_and(|sp| sp.targets.iter().any(|t| t == ttype)))
            .collect();
        if spec.source == "AuditEvent" {
            notes.insert("AuditEvent is read through the audit log's own search, not through _revinclude".into());
            return Ok(Vec::new());
        }
        if params.is_empty() || crate::ahead::is_internal(&spec.source) || self.require(who, &spec.source, 's').is_err() {
            return Ok(Vec::new());
        }
        let compartment = if self.registry.in_patient_compartment(&spec.source) {
            match self.audit_subject(&target.resource).filter(|(_, p)| *p == target.partition) {
                Some(_) if self.would_break_glass(who, &target.partition, pinned, notes) => return Ok(Vec::new()),
                Some((pid, _)) => Some(pid),
                None => {
                    notes.insert(format!("_revinclude of {} is followed only from records of one patient; from {ttype} it would cross patients", spec.source));
                    return Ok(Vec::new());
                }
            }
        } else {
            None
        };
        let mut found = Vec::new();
        for p in params {
            let pairs = vec![(p.to_owned(), format!("{ttype}/{tid}"))];
            let query = Query::parse(self.registry, &spec.source, &pairs).map_err(|e| EngineError::Search(e.to_string()))?;
            let matches = match self.candidates(who, &spec.source, &query, compartment.as_deref(), &pairs, None) {
                Ok((m, _)) => m,
                Err(e) if left_out(&e) => continue,
                Err(e) => return Err(e),
            };
            found.extend(self.served_matches(who, &spec.source, matches)?);
        }
        Ok(found)
    }

    /// Whether following into `partition` would be a break-the-glass client's first reach of
    /// that patient: not done (and noted).
    fn would_break_glass(&self, who: &Principal, partition: &PartitionId, pinned: Option<PartitionId>, notes: &mut BTreeSet<String>) -> bool {
        let blocked = who.purpose() == "BTG" && self.is_patient_partition(partition) && pinned != Some(*partition);
        if blocked {
            notes.insert("break-the-glass access is opened by reading or searching the patient's record itself, never through _include or _revinclude".into());
        }
        blocked
    }
}
