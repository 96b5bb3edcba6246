//! Chained parameters and `_has` (R4 §3.1.1.4.5, §3.1.1.4.6), inside the walls a search keeps.
//!
//! - A chain reaches patients by identity only: `subject.identifier=system|value`,
//!   `patient.telecom=…`, `subject:Patient.name=…` with `subject:Patient.birthdate=…`. The
//!   chained part is answered by the Patient identity lookup (the blind index, with its own
//!   rules), and the search then runs once per patient found, each through that patient's gate
//!   as `patient=Patient/<id>` would. Chains through other types, or to patients by anything
//!   but identity, would list records across patients: refused.
//! - `_has:Type:param:criterion=value` keeps a result when a `Type` resource in the same
//!   patient's record (or the directory, for a directory type) references it through `param`
//!   and meets the criterion. Each such look is a search of that record, through its gate; the
//!   patients looked at are disclosed whether the result is kept or not (an empty answer tells
//!   about them too). One level: `_has` inside `_has` is refused.

use brankas_auth::Principal;
use brankas_search::{ParamKind, Query};
use brankas_store::PartitionId;

use crate::{Engine, EngineError, Result, Stored};

/// The records a search looked into: (partition, patient id).
pub(crate) type Looked = Vec<(PartitionId, Option<String>)>;

/// One `_has`: (type, reference parameter, criterion name, value).
pub(crate) type Has = (String, String, String, String);

/// Most results a `_has` looks behind (each is a search of one record).
const MAX_HAS: usize = 1_000;

/// A search's pairs with the chains and `_has` taken out.
pub(crate) struct Split {
    pub plain: Vec<(String, String)>,
    /// The reference parameter a chain goes through, and the chained pairs (`identifier=…`).
    pub chain: Option<(String, Vec<(String, String)>)>,
    /// The `_has` conditions.
    pub has: Vec<Has>,
}

fn unsupported(m: &str) -> EngineError {
    EngineError::Search(m.to_string())
}

impl Engine {
    /// Takes chains and `_has` out of `pairs` for `rtype`, checking their form.
    pub(crate) fn split_chains(&self, rtype: &str, pairs: &[(String, String)]) -> Result<Split> {
        let mut out = Split { plain: Vec::new(), chain: None, has: Vec::new() };
        for (k, v) in pairs {
            if let Some(rest) = k.strip_prefix("_has:") {
                let mut it = rest.splitn(3, ':');
                let (Some(t), Some(param), Some(criterion)) = (it.next(), it.next(), it.next()) else {
                    return Err(EngineError::BadRequest("_has is _has:Type:reference-parameter:criterion=value".into()));
                };
                if criterion.starts_with("_has") {
                    return Err(unsupported("_has inside _has is not supported"));
                }
                let p = self.registry.param(t, param).filter(|p| p.kind == ParamKind::Reference && p.targets.iter().any(|x| x == rtype));
                if !brankas_fhir::is_resource_type(t) || p.is_none() {
                    return Err(EngineError::BadRequest(format!(
                        "_has: {} has no reference parameter {} to {rtype}",
                        crate::search::safe_param(t),
                        crate::search::safe_param(param)
                    )));
                }
                out.has.push((t.to_string(), param.to_string(), criterion.to_string(), v.clone()));
                continue;
            }
            let Some((base, chained)) = k.split_once('.') else {
                out.plain.push((k.clone(), v.clone()));
                continue;
            };
            // `subject.identifier` or `subject:Patient.identifier`.
            let (param, target) = match base.split_once(':') {
                Some((p, t)) => (p, Some(t)),
                None => (base, None),
            };
            let Some(sp) = self.registry.param(rtype, param).filter(|p| p.kind == ParamKind::Reference) else {
                // Not a reference parameter of the type: an unknown parameter (reported).
                out.plain.push((k.clone(), v.clone()));
                continue;
            };
            if target.is_some_and(|t| t != "Patient") || !sp.targets.iter().any(|t| t == "Patient") || chained.contains('.') {
                return Err(unsupported(
                    "chained parameters reach patients only, by identity (e.g. subject.identifier=system|value); other chains would list records across patients",
                ));
            }
            match &mut out.chain {
                Some((p, list)) if p == param => list.push((chained.to_string(), v.clone())),
                Some(_) => return Err(unsupported("one chained reference parameter per search")),
                None => out.chain = Some((param.to_string(), vec![(chained.to_string(), v.clone())])),
            }
        }
        Ok(out)
    }

    /// The ids of the patients a chain's identity names, found as `Patient?<chained>` would
    /// find them (the identity lookup's own rules apply).
    pub(crate) fn chain_patients(&self, who: &Principal, chained: &[(String, String)]) -> Result<Vec<String>> {
        let q = Query::parse(self.registry, "Patient", chained).map_err(|e| EngineError::Search(e.to_string()))?;
        if q.identity().is_none() {
            return Err(unsupported("a chain to Patient is an exact identity: .identifier=system|value, .telecom (phone), or .name with .birthdate (and optionally .gender)"));
        }
        let (found, _) = self.candidates(who, "Patient", &q, None, chained, None)?;
        Ok(found.iter().filter_map(|s| s.resource.get("id").and_then(serde_json::Value::as_str)).map(String::from).collect())
    }

    /// Keeps the matches some `_has` resource points at; the records looked into, for the
    /// disclosure.
    pub(crate) fn apply_has(&self, who: &Principal, matches: Vec<Stored>, has: &[Has]) -> Result<(Vec<Stored>, Looked)> {
        if has.is_empty() {
            return Ok((matches, Vec::new()));
        }
        if matches.len() > MAX_HAS {
            return Err(EngineError::Search(format!("_has looks behind at most {MAX_HAS} results; narrow the search")));
        }
        let mut kept = Vec::new();
        let mut looked: Looked = Vec::new();
        for m in matches {
            let t = m.resource.get("resourceType").and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
            let id = m.resource.get("id").and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
            let mut all = true;
            for (ht, param, criterion, value) in has {
                let pairs = vec![(param.clone(), format!("{t}/{id}")), (criterion.clone(), value.clone())];
                let q = Query::parse(self.registry, ht, &pairs).map_err(|e| EngineError::Search(format!("_has: {e}")))?;
                if !q.unknown_params().is_empty() {
                    return Err(EngineError::Search(format!("_has: unknown search parameter '{}' for {ht}", crate::search::safe_param(criterion))));
                }
                let compartment = if self.registry.in_patient_compartment(ht) {
                    match self.audit_subject(&m.resource).filter(|(_, p)| *p == m.partition) {
                        Some((pid, p)) => {
                            looked.push((p, Some(pid.clone())));
                            Some(pid)
                        }
                        // A directory resource: who references it lies across patients.
                        None => return Err(unsupported("_has from a directory resource to patients' records would cross patients")),
                    }
                } else {
                    None
                };
                let (mut found, _) = self.candidates(who, ht, &q, compartment.as_deref(), &pairs, None)?;
                self.restrict_to_scopes(who, ht, &mut found)?;
                if found.is_empty() {
                    all = false;
                    break;
                }
            }
            if all {
                kept.push(m);
            }
        }
        Ok((kept, looked))
    }
}
