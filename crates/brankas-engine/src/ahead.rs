//! Write-ahead audit: no write is committed without its audit record.
//!
//! Every store commit of the engine passes [`Engine::commit_audited`] (or, for a group of the
//! bulk import, [`Engine::commit_many_audited`]), which requires a [`WriteAhead`]: the proof
//! that records naming every partition the batch writes are durable in the audit log. Only
//! [`brankas_audit::AuditLog::record_ahead`] makes one, after its append, so the order is the
//! type's: audit record first, data second. If the append fails, nothing is committed
//! (the caller gets [`EngineError::AuditUnavailable`], a 503). If the data commit then fails,
//! or the process dies between the two, the log holds the record of an attempted write: the
//! safe direction (over-reporting, never an unaudited write). The HTTP layer still writes each
//! request's outcome record after the engine answers.
//!
//! One record per patient partition the batch writes (and one without a patient for the
//! directory's resources), naming the writer (client, role, organization, request id,
//! address: [`Principal::request`]), the `Type/id/_history/version` of each record written,
//! no outcome yet (`outcome_text` says it was written ahead). Internal records (care
//! relationships, work lists, import markers) are not named; a patient partition written only
//! through its care record (a break-glass grant) still gets its record.

use std::collections::BTreeMap;

use brankas_audit::{AuditEntry, NewRecord, WriteAhead};
use brankas_auth::Principal;
use brankas_store::{PartitionId, StoreError, WriteBatch};

use crate::{Engine, EngineError, Prepared, Result};

/// What the records written ahead of a write say in place of an outcome.
pub const WRITE_AHEAD_TEXT: &str = "write-ahead: recorded before the write was committed";

/// A resource version a batch writes, as its write-ahead record names it.
pub(crate) struct Named {
    pub partition: PartitionId,
    /// The patient's id, when the version says it (the Patient itself, or a reference).
    pub patient: Option<String>,
    /// `Type/id/_history/version`.
    pub reference: String,
    /// `C`, `U` or `D`.
    pub action: char,
}

/// Types the engine keeps for itself, never served and never named in audit records.
pub(crate) fn is_internal(resource_type: &str) -> bool {
    resource_type == crate::access::CARE_TYPE || resource_type == crate::worklist::WORKLIST_TYPE || resource_type == crate::import::MARK_TYPE
}

impl Engine {
    /// The audit log the write-ahead records go to, set once at start by the server or the
    /// command-line tool. Without it every write fails (closed).
    pub fn set_audit(&self, audit: std::sync::Arc<brankas_audit::AuditLog>) {
        let _ = self.audit.set(audit);
    }

    /// The versions of `prepared` as their write-ahead records name them.
    pub(crate) fn named(&self, prepared: &[Prepared]) -> Vec<Named> {
        prepared
            .iter()
            .map(|p| {
                let id = p.stored.resource.get("id").and_then(serde_json::Value::as_str).unwrap_or_default();
                let patient = self.audit_subject(&p.stored.resource).filter(|(_, part)| *part == p.row.partition).map(|(pid, _)| pid);
                let action = if p.row.deleted {
                    'D'
                } else if p.row.version == 1 {
                    'C'
                } else {
                    'U'
                };
                Named { partition: p.row.partition, patient, reference: format!("{}/{id}/_history/{}", p.row.resource_type, p.row.version), action }
            })
            .collect()
    }

    /// The write-ahead records of `batches`: one per patient partition they write, one without a
    /// patient for the directory's resources. `kind` names the interaction when the versions do
    /// not (an access grant, an import); otherwise it follows the versions named.
    fn ahead_records(&self, who: &Principal, batches: &[&WriteBatch], named: &[Named], kind: Option<(&str, &str)>) -> Vec<NewRecord> {
        // By partition written (`None`: the directory).
        let mut parts: BTreeMap<Option<PartitionId>, Vec<&Named>> = BTreeMap::new();
        for v in batches.iter().flat_map(|b| &b.versions) {
            let p = &v.row.partition;
            if self.is_patient_partition(p) {
                parts.entry(Some(*p)).or_default();
            } else if !is_internal(&v.row.resource_type) {
                parts.entry(None).or_default();
            }
        }
        for n in named {
            let key = if self.is_patient_partition(&n.partition) { Some(n.partition) } else { None };
            if let Some(list) = parts.get_mut(&key) {
                list.push(n);
            }
        }
        let req = who.request();
        let role = if who.is_local_operator() { "operator" } else { who.role().as_str() };
        parts
            .into_iter()
            .map(|(partition, list)| {
                let (interaction, action) = kind.unwrap_or_else(|| {
                    let first = list.first().map_or('U', |n| n.action);
                    match (first, list.iter().all(|n| n.action == first)) {
                        ('C', true) => ("create", "C"),
                        ('D', true) => ("delete", "D"),
                        (_, true) => ("update", "U"),
                        _ => ("transaction", "E"),
                    }
                });
                let mut entry = AuditEntry {
                    interaction: interaction.into(),
                    action: action.into(),
                    outcome: None,
                    outcome_text: Some(WRITE_AHEAD_TEXT.into()),
                    client_id: who.client_id().into(),
                    role: role.into(),
                    organization: who.organization().map(String::from),
                    practitioner: who.practitioner().map(String::from),
                    acting_patient: who.patient().map(String::from),
                    address: req.address.clone(),
                    request_id: req.request_id.clone(),
                    purpose: Some(who.purpose().to_string()),
                    break_glass: who.break_glass_reason().map(String::from),
                    patient: list.iter().find_map(|n| n.patient.clone()),
                    ..Default::default()
                };
                for n in list {
                    entry.add_resource(n.reference.clone());
                }
                NewRecord { partition, client_id: who.client_id().into(), entry }
            })
            .collect()
    }

    /// Makes the write-ahead records of `batches` durable (see the module docs).
    pub(crate) fn write_ahead(&self, who: &Principal, batches: &[&WriteBatch], named: &[Named], kind: Option<(&str, &str)>) -> Result<WriteAhead> {
        let audit = self.audit.get().ok_or(EngineError::AuditUnavailable)?;
        audit.record_ahead(self.ahead_records(who, batches, named, kind)).map_err(|e| {
            tracing::error!(error = %e, "write-ahead audit records could not be written; nothing is committed");
            EngineError::AuditUnavailable
        })
    }

    /// Whether `ahead` names every partition `batch` writes (internal records of the directory
    /// excepted).
    fn covered(&self, batch: &WriteBatch, ahead: &WriteAhead) -> Result<()> {
        let all = batch.versions.iter().all(|v| {
            let p = &v.row.partition;
            if self.is_patient_partition(p) { ahead.covers(Some(p)) } else { is_internal(&v.row.resource_type) || ahead.covers(None) }
        });
        if all {
            Ok(())
        } else {
            tracing::error!("a write's audit records do not name every partition it writes; nothing is committed");
            Err(EngineError::AuditUnavailable)
        }
    }

    /// The one store commit of a batch: only with the proof that its audit records are durable.
    pub(crate) fn commit_audited(&self, batch: &WriteBatch, ahead: &WriteAhead) -> Result<std::result::Result<(), StoreError>> {
        self.covered(batch, ahead)?;
        Ok(self.store.commit(batch))
    }

    /// The store commit of an import group's batches, each all-or-nothing, with the proof that
    /// their audit records are durable.
    pub(crate) fn commit_many_audited(&self, batches: &[WriteBatch], ahead: &WriteAhead) -> Result<Vec<std::result::Result<(), StoreError>>> {
        for b in batches {
            self.covered(b, ahead)?;
        }
        Ok(self.store.commit_many(batches)?)
    }
}
