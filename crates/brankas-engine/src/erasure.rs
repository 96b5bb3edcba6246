//! Erasure of a patient's record for a lawful reason (threat model invariant 9: forgetting is
//! real), by crypto-shredding.
//!
//! [`Engine::erase_patient`] destroys the patient's data key for good: its bucket's shred key
//! gets a new generation, the bucket's other patients are rewrapped under it, the old
//! generation is destroyed and the erasure is written to the ledger beside the key file (see
//! `brankas_vault`'s `shred` module). The partition's rows lose their blind-index terms and
//! their sealed bytes, and its data key becomes a tombstone, so a read of the patient is
//! `410 Gone` (never a 5xx). The audit trail keeps its pseudonymous records; the caller adds
//! the erasure's own record.
//!
//! [`apply_ledger`] re-applies the ledger to a data directory, which every opening does, so an
//! older backup restored later loses the erased patients again and gets its peers' new wraps.
//!
//! Retention (Permenkes 24/2022: medical records are kept at least 25 years): erasure is
//! refused while the patient's youngest record was written less than [`RETENTION_YEARS`] ago,
//! unless the reason is one that overrides retention ([`ErasureReason::overrides_retention`]).
//!
//! *Guarantee for data keys of earlier releases:* a data key still wrapped by the KEK directly
//! (written before shred keys existed, not yet moved by `brankas keys rotate`) is erased in
//! this directory (tombstone, rows cleared, ledger entry re-applied to any copy opened later),
//! but a copy taken before it was moved into its bucket holds it wrapped by the KEK, which the
//! key file still opens: [`ErasureReport::reaches_older_copies`] says so.

use brankas_auth::{Principal, Role};
use brankas_store::{PartitionId, Store, StoredDek, WrappedKey};
use brankas_vault::{Vault, bucket_of, bucket_scan_start};

use crate::{Engine, EngineError, Result};

/// Years a medical record is kept (Permenkes 24/2022) before it may be erased on request.
pub const RETENTION_YEARS: i64 = 25;
const US_PER_YEAR: i64 = 365 * 86_400_000_000 + 86_400_000_000 / 4;

/// Meta name of the ledger position this data directory has applied (`<count> <mac>`).
pub const LEDGER_META: &str = "erasure.ledger";

/// The lawful reasons for an erasure: a closed set of codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErasureReason {
    /// The record was created by mistake (a test patient, the wrong person): overrides retention.
    CreatedInError,
    /// The patient is registered twice and this registration is the duplicate (its data
    /// merged into the other first): overrides retention.
    DuplicateRegistration,
    /// A court ordered the erasure: overrides retention.
    CourtOrder,
    /// The data was processed unlawfully (UU 27/2022): overrides retention.
    UnlawfulProcessing,
    /// The patient asks for erasure: only once the retention period has passed.
    PatientRequest,
    /// The retention period has passed: only then.
    RetentionExpired,
}

impl ErasureReason {
    pub const ALL: [ErasureReason; 6] = [
        ErasureReason::CreatedInError,
        ErasureReason::DuplicateRegistration,
        ErasureReason::CourtOrder,
        ErasureReason::UnlawfulProcessing,
        ErasureReason::PatientRequest,
        ErasureReason::RetentionExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErasureReason::CreatedInError => "created-in-error",
            ErasureReason::DuplicateRegistration => "duplicate-registration",
            ErasureReason::CourtOrder => "court-order",
            ErasureReason::UnlawfulProcessing => "unlawful-processing",
            ErasureReason::PatientRequest => "patient-request",
            ErasureReason::RetentionExpired => "retention-expired",
        }
    }

    /// The code, or an error listing the codes.
    pub fn parse(code: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == code)
            .ok_or_else(|| EngineError::BadRequest(format!("unknown erasure reason; one of: {}", Self::ALL.map(|r| r.as_str()).join(", "))))
    }

    /// Whether the reason allows erasure within the retention period.
    pub fn overrides_retention(self) -> bool {
        !matches!(self, ErasureReason::PatientRequest | ErasureReason::RetentionExpired)
    }
}

/// What an erasure did.
#[derive(Clone, Debug)]
pub struct ErasureReport {
    /// Records of the patient whose rows were cleared.
    pub records: u64,
    /// The shred-key bucket and its new generation.
    pub bucket: u16,
    pub generation: u32,
    /// Other patients of the bucket rewrapped under the new generation.
    pub peers: usize,
    /// The erasure's position in the ledger.
    pub ledger_entry: u64,
    /// False when the patient's data key was still wrapped by the KEK directly: a copy of the
    /// directory taken before it was moved into its bucket can still open it.
    pub reaches_older_copies: bool,
}

/// What re-applying the ledger did to a data directory.
#[derive(Clone, Debug, Default)]
pub struct LedgerApplied {
    /// Entries in the ledger, and how many were applied now (0 when the directory had them).
    pub entries: u64,
    pub applied: u64,
    /// Data keys of bucket peers replaced by their newer wraps.
    pub rewrapped: u64,
}

use crate::crud::now_us;

/// Now, in microseconds since the Unix epoch (the time erasures are stamped with).
pub fn now() -> i64 {
    now_us()
}

impl Engine {
    /// Checks that `who` may erase patient `id` for `reason` now: the caller is the operator's
    /// CLI or a security officer, the patient exists and is not yet erased, and retention
    /// allows it. Returns the patient's partition.
    pub fn erasure_allowed(&self, who: &Principal, id: &str, reason: ErasureReason) -> Result<PartitionId> {
        if !who.is_local_operator() && who.role() != Role::SecurityOfficer {
            return Err(EngineError::Forbidden("an erasure is carried out by a security officer (the second person) or the operator".into()));
        }
        self.erasure_check(id, reason)
    }

    /// The checks of [`Engine::erasure_allowed`] on the patient and the reason, for whoever
    /// asks (an erasure request, before a second person approves it).
    pub fn erasure_check(&self, id: &str, reason: ErasureReason) -> Result<PartitionId> {
        if !brankas_fhir::is_valid_id(id) {
            return Err(EngineError::NotFound);
        }
        let p = self.patient_partition(id);
        let dek = self.store.get_dek(&p)?;
        if dek.as_ref().is_some_and(|d| d.wrapped.is_erased()) {
            return Err(EngineError::Gone);
        }
        let patient = self.store.current(&self.vault.record_key("Patient", id))?;
        if dek.is_none() || patient.is_none() {
            return Err(EngineError::NotFound);
        }
        if !reason.overrides_retention() {
            let youngest = self.store.partition_current(&p, None)?.iter().map(|r| r.last_updated_us).chain(patient.map(|r| r.last_updated_us)).max().unwrap_or(0);
            if now_us() - youngest < RETENTION_YEARS * US_PER_YEAR {
                return Err(EngineError::Unprocessable(format!(
                    "the record is within its retention period ({RETENTION_YEARS} years after its last entry, Permenkes 24/2022); the reason {} does not allow erasure before it ends",
                    reason.as_str()
                )));
            }
        }
        Ok(p)
    }

    /// Erases patient `id` (see the module documentation). `who` is the operator's CLI or the
    /// security officer who approved the request; the caller audits it.
    pub fn erase_patient(&self, who: &Principal, id: &str, reason: ErasureReason) -> Result<ErasureReport> {
        let p = self.erasure_allowed(who, id, reason)?;
        let own = self.store.get_dek(&p)?.ok_or(EngineError::NotFound)?;
        let erasure = self.vault.begin_erasure(&p)?;
        let b = erasure.bucket();
        // Passes until one finds nothing left under an older generation: a data key another
        // process stored just before it saw the new generation is caught by the next pass.
        for _pass in 0..10 {
            let mut moved = 0;
            for d in bucket_deks(&*self.store, b)? {
                if let Some(w) = erasure.rewrap_peer(&d.partition, &d.wrapped)?
                    && self.store.replace_dek(&d, &StoredDek { partition: d.partition, wrapped: w })?
                {
                    moved += 1;
                }
            }
            if moved == 0 {
                break;
            }
        }
        let peers: Vec<(PartitionId, WrappedKey)> =
            bucket_deks(&*self.store, b)?.into_iter().filter(|d| d.partition != p && d.wrapped.shred_generation().is_some()).map(|d| (d.partition, d.wrapped)).collect();
        // The ledger entry first: from then on the erasure is settled (the old generation is
        // destroyed) and, should clearing the rows fail now, the next opening re-applies it.
        let rec = erasure.finish(reason.as_str(), now_us(), &peers)?;
        self.forget_key(&p);
        let records = self.store.erase_partition(&p)?;
        Ok(ErasureReport { records, bucket: b, generation: rec.generation, peers: peers.len(), ledger_entry: rec.n, reaches_older_copies: !own.wrapped.is_kek_wrapped() })
    }

    /// Drops a partition's key from the caches (after its erasure).
    fn forget_key(&self, p: &PartitionId) {
        if let Ok(mut c) = self.deks.lock() {
            c.remove(p);
        }
        if let Ok(mut c) = self.pending_deks.lock() {
            c.remove(p);
        }
    }
}

/// Every stored data key of bucket `b`.
fn bucket_deks(store: &dyn Store, b: u16) -> Result<Vec<StoredDek>> {
    let mut out = Vec::new();
    let mut after = bucket_scan_start(b);
    loop {
        let page = store.scan_deks(after.as_ref(), 512)?;
        let Some(last) = page.last() else { break };
        after = Some(last.partition);
        let full = page.len() == 512;
        for d in page {
            if bucket_of(&d.partition) != b {
                return Ok(out);
            }
            out.push(d);
        }
        if !full {
            break;
        }
    }
    Ok(out)
}

/// Re-applies the erasure ledger kept with the key material to a data directory: each erased
/// partition gets its tombstone and loses its rows' terms and sealed bytes, and each peer
/// still wrapped under an older generation of its bucket's key gets the wrap the ledger
/// carries. Called whenever a data directory is opened (and after a restore); entries the
/// directory has applied already (`LEDGER_META`) are skipped. A ledger that fails its checks
/// (edited, truncated, removed while the shred keys name erasures) is an error: the
/// directory is not opened.
pub fn apply_ledger(store: &dyn Store, vault: &Vault) -> Result<LedgerApplied> {
    let records = vault.erasure_ledger()?;
    let mut out = LedgerApplied { entries: records.len() as u64, ..Default::default() };
    let done = store.get_meta(LEDGER_META)?.and_then(|m| {
        let m = String::from_utf8(m).ok()?;
        let (n, mac) = m.split_once(' ')?;
        let n: usize = n.parse().ok()?;
        (n <= records.len() && (n == 0 || records[n - 1].mac == mac)).then_some(n)
    });
    let start = done.unwrap_or(0);
    if start == records.len() {
        return Ok(out);
    }
    for r in &records[start..] {
        store.erase_partition(&r.partition)?;
        for (p, w) in &r.peers {
            let Some(d) = store.get_dek(p)? else { continue };
            // Only a key under an older generation is replaced: one erased since, or still
            // wrapped by the KEK (this copy is older than its move into the bucket), stays.
            if d.wrapped.shred_generation().is_some_and(|g| g < r.generation) && store.replace_dek(&d, &StoredDek { partition: *p, wrapped: w.clone() })? {
                out.rewrapped += 1;
            }
        }
        out.applied += 1;
    }
    let last = records.last().map(|r| r.mac.clone()).unwrap_or_default();
    store.put_meta(LEDGER_META, format!("{} {last}", records.len()).as_bytes())?;
    Ok(out)
}
