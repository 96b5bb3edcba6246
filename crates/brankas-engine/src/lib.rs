//! The FHIR repository of Brankas: where ciphertext becomes resources and back.
//!
//! [`Engine`] implements the FHIR interactions (create, read, vread, update, delete, history,
//! search, compartment search, `$everything`, transaction and batch Bundles) and the offline
//! bulk import, over a [`brankas_store::Store`] that only ever sees sealed rows.
//!
//! How a resource is placed: the Patient CompartmentDefinition names, per resource type, the
//! references that put a resource in a patient's compartment. The first patient found (in the
//! definition's order, e.g. `subject` before `performer`) owns the resource: it is sealed under
//! that patient's data key and stored in that patient's partition (a keyed pseudonym of the
//! patient id). Resources in no patient's compartment (Organization, Practitioner…), and
//! compartment types that name no patient, go to the system partition under the system key.
//!
//! How search works without plaintext indexes: a clinical search must name one patient; the
//! engine decrypts that patient's search entries of the type (small pruned copies of the
//! records, sealed under the same key, see `entry`), evaluates the query in memory
//! (`brankas_search`), and opens whole only the records it returns. Nothing about clinical
//! content is indexed at rest in the clear. Across patients only
//! exact identity lookups exist, through blind-index terms (HMAC) of identifiers, phone numbers
//! and name + birth date.
//!
//! *Architecture invariant:* every public operation takes the caller's [`Principal`] and checks
//! its scopes before touching data; no operation returns data whose ciphertext failed
//! authentication (it fails with [`EngineError::Integrity`]).
//!
//! *Accepted leakage, documented here because this crate introduces it:* the store learns each
//! record's resource type, version count, write times and owning partition (so the number of
//! resources per pseudonymous patient), and equality of blind-indexed identity values. A
//! search entry adds only its length (a sealed copy of part of a record it sits beside).

mod access;
mod ahead;
mod binary;
mod bundle;
mod chain;
mod crud;
mod disclosure;
mod entry;
pub mod erasure;
mod history;
mod imaging;
mod import;
mod include;
mod search;
mod verify;
mod worklist;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use brankas_auth::Principal;
use brankas_search::Registry;
use brankas_store::{BlobStore, Expect, PartitionId, RecordKey, Store, StoreError, StoredDek, VersionRow, WrappedKey, WriteBatch};

pub use binary::{AttachmentLimits, BinaryTarget, BlobReader, BlobSink, NewBlob};
use brankas_vault::{BlindTerm, DataKey, RecordAad, Vault, VaultError};
pub use imaging::{StoredInstance, dicom_metadata, instance_of, study_uid_of};
use serde_json::Value;

pub use ahead::WRITE_AHEAD_TEXT;
pub use bundle::{EntryOutcome, parse_etag};
pub use crud::{HistoryWindow, PatchBody, instant};
pub use disclosure::{Admitted, Disclosed, Disclosure, Unaudited};
pub use erasure::{ErasureReason, ErasureReport, LedgerApplied, apply_ledger};
pub use history::{HistoryPage, HistoryRequest};
pub use import::{ImportStats, Importer};
pub use search::{EverythingRequest, Page, SearchRequest, safe_param};
pub use verify::{RowProblem, VerifiedRow};
pub use worklist::MAX_WORKLIST_DAYS;

/// Meta name under which the wrapped system root is stored.
pub const ROOT_META: &str = "system-root";

/// Errors of repository operations; the HTTP layer maps each to a status and an
/// OperationOutcome. Messages never contain resource content or query values.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("resource not found")]
    NotFound,
    #[error("resource was deleted")]
    Gone,
    #[error("version conflict: the resource was changed concurrently")]
    Conflict,
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("invalid resource")]
    Invalid(Vec<brankas_fhir::Issue>),
    #[error("invalid national identity number (NIK): {0}")]
    Nik(brankas_fhir::NikError),
    /// Another Patient holds the NIK the write gives (a reference to it, or a phrase when it
    /// could not be read).
    #[error("a Patient with this NIK already exists: {0}; update that Patient instead of creating another")]
    NikHeld(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("search not supported: {0}")]
    Search(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMedia(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("stored data failed its integrity check and was not served")]
    Integrity,
    #[error("storage unavailable")]
    Store(#[source] StoreError),
    #[error("key handling failed")]
    Vault(#[source] VaultError),
    /// The write's audit record could not be made durable, so nothing was committed.
    #[error("the audit log cannot be written; nothing was stored")]
    AuditUnavailable,
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            // A racing replica stored another key for a new patient first: retry.
            StoreError::Conflict { .. } | StoreError::DataKeyRace => EngineError::Conflict,
            StoreError::Corrupt => EngineError::Integrity,
            StoreError::TermHeld { .. } => EngineError::NikHeld("another Patient".into()),
            e => EngineError::Store(e),
        }
    }
}

impl From<VaultError> for EngineError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Integrity => EngineError::Integrity,
            // The partition was erased (crypto-shredding): gone for good.
            VaultError::Erased => EngineError::Gone,
            e => EngineError::Vault(e),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Limits of the repository, documented in the README.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Page size when `_count` is absent.
    pub default_count: usize,
    /// Largest page size; larger `_count` values are capped.
    pub max_count: usize,
    /// Most entries in one transaction or batch Bundle.
    pub max_bundle_entries: usize,
    /// Most resources decrypted to answer one search (a patient with more of one type gets
    /// a 400 asking for a narrower search instead of an unbounded scan).
    pub max_scan: usize,
    /// Most resources `_include` and `_revinclude` add to one page.
    pub max_include: usize,
    /// Most versions returned by one history page.
    pub max_history: usize,
    /// How long a care relationship (an Encounter at a facility, data it submitted...) lets
    /// the facility's clients reach the patient's record, in days.
    pub care_days: u32,
    /// How long a break-glass grant lasts, in minutes.
    pub break_glass_minutes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { default_count: 50, max_count: 500, max_bundle_entries: 20_000, max_scan: 200_000, max_include: 1_000, max_history: 500, care_days: 730, break_glass_minutes: 60 }
    }
}

/// A resource as stored, decrypted, with its version facts.
#[derive(Clone, Debug)]
pub struct Stored {
    pub resource: Value,
    pub version: u64,
    pub last_updated_us: i64,
    pub deleted: bool,
    /// The partition the row was stored in (the patient whose record it is, or the system
    /// partition): what an answer serving it discloses.
    pub(crate) partition: PartitionId,
    /// Set when `resource` is only the record's search entry (a pruned copy, see [`entry`]):
    /// the entry's JSON, checked against the whole record when it is served
    /// ([`Engine::complete`]). Never served as it is.
    pub(crate) entry: Option<entry::EntryCopy>,
}

impl Stored {
    /// `W/"<version>"`.
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }
}

/// Result of a create or update.
#[derive(Debug)]
pub struct WriteOutcome {
    pub stored: Stored,
    /// True when a new resource came into being (201), false for an update or a conditional
    /// create that found an existing match (200).
    pub created: bool,
}

/// The repository.
pub struct Engine {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    registry: &'static Registry,
    limits: Limits,
    /// Unwrapped data keys by partition; bounded, cleared when full.
    deks: Mutex<HashMap<PartitionId, Arc<DataKey>>>,
    /// Lookups of `deks` that found the key, and that had to unwrap it (for metrics).
    key_cache: [std::sync::atomic::AtomicU64; 2],
    /// Whole records and search entries opened (see [`Engine::open_counts`]).
    opens: [std::sync::atomic::AtomicU64; 2],
    /// Data keys made for partitions that have none stored yet, with their wrapped form.
    /// They reach the store inside the first batch that uses them ([`Engine::attach_new_keys`]),
    /// so a new patient costs no separate durable commit; concurrent writers in this process
    /// share the same pending key. Bounded: when cleared, a batch in flight that needed a
    /// cleared key fails with `MissingDataKey` (nothing written), it is never stored keyless.
    pending_deks: Mutex<HashMap<PartitionId, (Arc<DataKey>, WrappedKey)>>,
    /// Where attachments' sealed bytes go (see [`binary`]); `None` refuses attachments.
    blobs: Option<Arc<dyn BlobStore>>,
    attachments: binary::AttachmentLimits,
    /// Serialises ImagingStudy updates from DICOM stores within this process.
    imaging: Mutex<()>,
    /// This server's FHIR base URL, once the server knows it: absolute references to it in
    /// Consents name its own resources ([`Engine::set_base_url`]).
    base_url: std::sync::OnceLock<String>,
    /// Where the records written ahead of every commit go ([`Engine::set_audit`], see
    /// [`ahead`]); unset, every write fails.
    audit: std::sync::OnceLock<Arc<brankas_audit::AuditLog>>,
}

const PENDING_DEKS: usize = 100_000;

const DEK_CACHE: usize = 50_000;

/// One version prepared for writing: sealed row plus index terms.
pub(crate) struct Prepared {
    pub row: VersionRow,
    pub expect: Expect,
    /// The version's sealed search entry ([`entry`]); none for delete markers.
    pub entry: Option<Vec<u8>>,
    pub index: Option<(RecordKey, Vec<BlindTerm>)>,
    /// Terms among `index` that no other record may hold (a Patient's NIK).
    pub unique: Vec<BlindTerm>,
    pub stored: Stored,
    pub created: bool,
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, vault: Arc<Vault>) -> Self {
        Self {
            store,
            vault,
            registry: Registry::r4(),
            limits: Limits::default(),
            deks: Mutex::new(HashMap::new()),
            key_cache: Default::default(),
            opens: Default::default(),
            pending_deks: Mutex::new(HashMap::new()),
            blobs: None,
            attachments: binary::AttachmentLimits::default(),
            imaging: Mutex::new(()),
            base_url: std::sync::OnceLock::new(),
            audit: std::sync::OnceLock::new(),
        }
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Stores attachments (Binary content, DICOM instances) in `blobs`.
    pub fn with_blobs(mut self, blobs: Arc<dyn BlobStore>, limits: AttachmentLimits) -> Self {
        self.blobs = Some(blobs);
        self.attachments = limits;
        self
    }

    /// Tells the repository the FHIR base URL it is served at (`https://host/fhir`), once:
    /// absolute references to this server in Consents are compared in their relative form.
    /// Without it every absolute reference is another server's.
    pub fn set_base_url(&self, base: &str) {
        let _ = self.base_url.set(base.trim_end_matches('/').to_string());
    }

    pub(crate) fn base_url(&self) -> Option<&str> {
        self.base_url.get().map(String::as_str)
    }

    pub fn attachment_limits(&self) -> &AttachmentLimits {
        &self.attachments
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    // ----- authorisation gate -----

    /// Every operation passes here first: the SMART scopes (resource type and interaction).
    /// The role, facility and patient checks of [`access`] follow once the data's owner is
    /// known ([`Engine::gate_row`]).
    pub(crate) fn require(&self, who: &Principal, resource_type: &str, perm: char) -> Result<()> {
        if who.scopes().permits(resource_type, perm) {
            Ok(())
        } else {
            let what = match perm {
                'c' => "create",
                'r' => "read",
                'u' => "update",
                'd' => "delete",
                _ => "search",
            };
            Err(EngineError::Forbidden(format!("no scope grants {what} on {}", safe_type(resource_type))))
        }
    }

    /// The gate for a stored row about to be served or changed: internal records are never
    /// served; a patient's rows pass [`Engine::gate_patient`], the directory's
    /// [`Engine::gate_directory`]. The operator's local tools pass. Returns how the row's
    /// partition is shown to the caller, for [`Engine::gate_record`].
    pub(crate) fn gate_row(&self, who: &Principal, row: &VersionRow, act: access::Act) -> Result<access::RecordView> {
        if ahead::is_internal(&row.resource_type) {
            return Err(EngineError::NotFound);
        }
        if who.is_local_operator() {
            return Ok(access::RecordView::OPEN);
        }
        if self.is_patient_partition(&row.partition) { self.gate_patient(who, &row.partition, act) } else { self.gate_directory(who, act).map(|()| access::RecordView::OPEN) }
    }

    /// The gate for a new version about to be written into `partition` (a create, or an
    /// update that moves a resource to another patient).
    pub(crate) fn gate_new(&self, who: &Principal, partition: &PartitionId) -> Result<()> {
        if who.is_local_operator() {
            return Ok(());
        }
        if self.is_patient_partition(partition) { self.gate_patient_write(who, partition) } else { self.gate_directory(who, access::Act::Write) }
    }

    // ----- keys -----

    pub(crate) fn data_key(&self, partition: &PartitionId, create: bool) -> Result<Option<Arc<DataKey>>> {
        if let Some(k) = self.deks.lock().map_err(|_| EngineError::Integrity)?.get(partition) {
            self.key_cache[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Some(k.clone()));
        }
        self.key_cache[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = match self.store.get_dek(partition)? {
            Some(d) => Arc::new(self.vault.open_data_key(partition, &d.wrapped)?),
            None if create => {
                // A new partition: the key is stored with the first batch that uses it.
                let mut pending = self.pending_deks.lock().map_err(|_| EngineError::Integrity)?;
                if let Some((k, _)) = pending.get(partition) {
                    return Ok(Some(k.clone()));
                }
                // Another request of this process may have committed the partition's first key
                // since the read above (its pending key is settled only after its commit, under
                // this lock): read again before making a second key that would lose the race.
                if let Some(d) = self.store.get_dek(partition)? {
                    drop(pending);
                    let key = Arc::new(self.vault.open_data_key(partition, &d.wrapped)?);
                    self.cache_key(partition, key.clone())?;
                    return Ok(Some(key));
                }
                let (k, wrapped) = self.vault.new_data_key(partition)?;
                let k = Arc::new(k);
                if pending.len() >= PENDING_DEKS {
                    pending.clear();
                }
                pending.insert(*partition, (k.clone(), wrapped));
                return Ok(Some(k));
            }
            None => return Ok(None),
        };
        self.cache_key(partition, key.clone())?;
        Ok(Some(key))
    }

    /// Data-key cache lookups since start: `(hits, misses)`.
    pub fn key_cache_counts(&self) -> (u64, u64) {
        (self.key_cache[0].load(std::sync::atomic::Ordering::Relaxed), self.key_cache[1].load(std::sync::atomic::Ordering::Relaxed))
    }

    fn cache_key(&self, partition: &PartitionId, key: Arc<DataKey>) -> Result<()> {
        let mut cache = self.deks.lock().map_err(|_| EngineError::Integrity)?;
        if cache.len() >= DEK_CACHE {
            cache.clear();
        }
        cache.insert(*partition, key);
        Ok(())
    }

    /// Adds to `batch` the pending data keys of the partitions its versions use.
    pub(crate) fn attach_new_keys(&self, batch: &mut WriteBatch) -> Result<()> {
        let pending = self.pending_deks.lock().map_err(|_| EngineError::Integrity)?;
        if pending.is_empty() {
            return Ok(());
        }
        // List entries are sealed under the system partition's key.
        let system = (!batch.list_entries.is_empty()).then(|| self.vault.system_partition());
        let partitions: Vec<PartitionId> = batch.versions.iter().map(|v| v.row.partition).chain(system).collect();
        for p in &partitions {
            if let Some((_, wrapped)) = pending.get(p)
                && !batch.deks.iter().any(|d| &d.partition == p)
            {
                batch.deks.push(StoredDek { partition: *p, wrapped: wrapped.clone() });
            }
        }
        Ok(())
    }

    /// After `batch` was committed (`ok`) or lost a data-key race: its pending keys are now
    /// stored keys, or are dropped so that the next attempt uses the stored one.
    pub(crate) fn settle_new_keys(&self, batch: &WriteBatch, ok: bool) -> Result<()> {
        if batch.deks.is_empty() {
            return Ok(());
        }
        let mut done = Vec::new();
        {
            let mut pending = self.pending_deks.lock().map_err(|_| EngineError::Integrity)?;
            for d in &batch.deks {
                if let Some((k, _)) = pending.remove(&d.partition) {
                    done.push((d.partition, k));
                }
            }
        }
        if ok {
            for (p, k) in done {
                self.cache_key(&p, k)?;
            }
        }
        Ok(())
    }

    /// Commits one batch, bringing the data keys of new partitions along (see
    /// [`Engine::commit_with_keys`]).
    pub(crate) fn commit_batch(&self, who: &Principal, batch: WriteBatch, named: &[ahead::Named], kind: Option<(&str, &str)>) -> Result<()> {
        Ok(self.commit_with_keys(who, batch, named, kind)??)
    }

    /// Commits one batch with the data keys of new partitions, and settles those keys by the
    /// outcome. Its audit records (one per partition written, naming `named`) are made durable
    /// first; if they cannot be, nothing is committed ([`ahead`]). The outer error is the
    /// engine's own; the inner one is the store's answer, for callers that retry on some of them.
    pub(crate) fn commit_with_keys(
        &self,
        who: &Principal,
        mut batch: WriteBatch,
        named: &[ahead::Named],
        kind: Option<(&str, &str)>,
    ) -> Result<std::result::Result<(), StoreError>> {
        self.attach_new_keys(&mut batch)?;
        let ahead = self.write_ahead(who, &[&batch], named, kind)?;
        let r = self.commit_audited(&batch, &ahead)?;
        match &r {
            Ok(()) => self.settle_new_keys(&batch, true)?,
            Err(StoreError::DataKeyRace) => self.settle_new_keys(&batch, false)?,
            Err(_) => {}
        }
        Ok(r)
    }

    /// Forgets cached data keys (after key rotation they stay valid; used by tests and to
    /// bound memory).
    pub fn clear_key_cache(&self) {
        if let Ok(mut c) = self.deks.lock() {
            c.clear();
        }
    }

    // ----- decoding rows -----

    /// Decrypts a stored row and checks it is what it claims to be: the AAD binds type,
    /// record key, version and partition; the id inside must hash to the row's record key.
    /// `expect` names the resource the caller asked for, when it knows it.
    pub(crate) fn open_row(&self, row: &VersionRow, expect: Option<(&str, &str)>) -> Result<Stored> {
        if let Some((t, _)) = expect
            && row.resource_type != t
        {
            return Err(EngineError::Integrity);
        }
        if row.sealed.is_empty() {
            // Cleared by an erasure (possibly by another process, while this one still holds
            // the key in its cache): gone if the stored key is the tombstone, else tampering.
            return Err(match self.store.get_dek(&row.partition)? {
                Some(d) if d.wrapped.is_erased() => {
                    if let Ok(mut c) = self.deks.lock() {
                        c.remove(&row.partition);
                    }
                    EngineError::Gone
                }
                _ => EngineError::Integrity,
            });
        }
        let key = self.data_key(&row.partition, false)?.ok_or(EngineError::Integrity)?;
        let aad = RecordAad { resource_type: &row.resource_type, record: &row.key, version: row.version, partition: &row.partition, dek_version: row.dek_version };
        let plain = key.open(&aad, &row.sealed)?;
        self.opens[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resource: Value = serde_json::from_slice(&plain).map_err(|_| EngineError::Integrity)?;
        let id = resource.get("id").and_then(Value::as_str).ok_or(EngineError::Integrity)?;
        if self.vault.record_key(&row.resource_type, id) != row.key || expect.is_some_and(|(_, eid)| eid != id) {
            return Err(EngineError::Integrity);
        }
        Ok(Stored { resource, version: row.version, last_updated_us: row.last_updated_us, deleted: row.deleted, partition: row.partition, entry: None })
    }
}

pub(crate) fn safe_type(t: &str) -> &str {
    if brankas_fhir::is_resource_type(t) { t } else { "this type" }
}
