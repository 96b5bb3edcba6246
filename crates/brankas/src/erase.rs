//! `brankas erase` and the erasure ledger at opening (crypto-shredding; see
//! `brankas_engine::erasure` and `brankas_vault`'s shred keys).

use std::path::Path;

use anyhow::{Context, Result};
use brankas_engine::{ErasureReason, LedgerApplied};
use brankas_store::Store;
use brankas_vault::Vault;

/// Attaches the shred keys and the erasure ledger kept beside the key file `kp`.
pub(crate) fn attach(vault: Vault, kp: &Path) -> Result<Vault> {
    vault.with_erasure(kp).context("opening the shred keys beside the key file")
}

/// Re-applies the erasure ledger kept with the key material to a data directory: every
/// opening calls it (before the state anchor is checked and anything is served), and so must a
/// restore. An older copy of the directory loses its erased patients again and gets their
/// bucket peers' new wraps. A ledger that fails its checks stops the opening.
pub(crate) fn apply_erasure_ledger(store: &dyn Store, vault: &Vault) -> Result<LedgerApplied> {
    let applied = brankas_engine::apply_ledger(store, vault).map_err(|e| anyhow::anyhow!("{e}: {}", source_text(&e))).context("re-applying the erasure ledger")?;
    if applied.applied > 0 {
        tracing::warn!(entries = applied.applied, rewrapped = applied.rewrapped, "erasures re-applied to this data directory (an older copy, or an interrupted erasure)");
    }
    Ok(applied)
}

fn source_text(e: &brankas_engine::EngineError) -> String {
    std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default()
}

/// `brankas erase --patient Patient/<id> --reason CODE`: audited as the local operator
/// (before the key is destroyed; a failure is audited too).
pub(crate) fn run(data_dir: &Path, key_file: Option<&Path>, patient: &str, reason: &str, note: Option<String>) -> Result<()> {
    let id = patient.strip_prefix("Patient/").filter(|i| brankas_fhir::is_valid_id(i)).context("--patient must be Patient/<id>")?;
    let reason = ErasureReason::parse(reason).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(n) = &note
        && (n.len() > 500 || n.chars().any(char::is_control))
    {
        anyhow::bail!("--note must be one line of at most 500 characters");
    }
    let o = crate::open(data_dir, key_file)?;
    let who = brankas_auth::Principal::local_operator();
    let partition = o.engine.patient_partition(id);
    // Checked before the request is audited, so a refusal needs no erasure record.
    o.engine.erasure_allowed(&who, id, reason).map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = |outcome: &str| format!("erasure ({}): {outcome}{}", reason.as_str(), note.as_ref().map(|n| format!("; {n}")).unwrap_or_default());
    record(&o, partition, id, true, text("requested by the operator"))?;
    match o.engine.erase_patient(&who, id, reason) {
        Ok(r) => {
            record(&o, partition, id, true, text(&format!("carried out, ledger entry {}", r.ledger_entry)))?;
            println!(
                "{}",
                serde_json::json!({"erased": format!("Patient/{id}"), "reason": reason.as_str(), "records": r.records, "bucket": r.bucket,
                    "generation": r.generation, "peers_rewrapped": r.peers, "ledger_entry": r.ledger_entry, "reaches_older_copies": r.reaches_older_copies})
            );
            if !r.reaches_older_copies {
                eprintln!(
                    "warning: this patient's data key was wrapped by the key file directly (stored before shred keys); copies of the data directory taken before `brankas keys rotate` moved it into its bucket can still open it"
                );
            }
            Ok(())
        }
        Err(e) => {
            let _ = record(&o, partition, id, false, text("failed"));
            Err(anyhow::anyhow!("{e}")).context("the erasure failed")
        }
    }
}

/// The erasure's audit record: in the patient's partition (pseudonymous, like every record
/// about the patient), interaction `erase`, the reason code in its text.
pub(crate) fn record(o: &crate::Opened, partition: brankas_store::PartitionId, id: &str, ok: bool, text: String) -> Result<()> {
    let entry = brankas_audit::AuditEntry {
        interaction: "erase".into(),
        action: "D".into(),
        outcome: Some(if ok { brankas_audit::Outcome::Success } else { brankas_audit::Outcome::MinorFailure }),
        outcome_text: Some(text),
        client_id: "local-operator".into(),
        role: "operator".into(),
        patient: Some(id.to_string()),
        ..Default::default()
    };
    o.audit
        .record_blocking(vec![brankas_audit::NewRecord { partition: Some(partition), client_id: "local-operator".into(), entry }])
        .context("the audit log cannot be written; nothing erased")?;
    Ok(())
}
