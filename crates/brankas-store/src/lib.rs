//! The storage seam of Brankas.
//!
//! [`Store`] is the one trait every backend implements: the embedded [`SqliteStore`] (the
//! default, one file in the data directory) and, later, PostgreSQL. The [`conformance`]
//! module is the single test suite every backend must pass unchanged.
//!
//! *Architecture invariant:* this crate never sees plaintext or keys. Records arrive sealed
//! ([`VersionRow::sealed`]), keys arrive wrapped ([`brankas_vault::WrappedKey`]), resources are
//! named by keyed hashes ([`RecordKey`]), patients by keyed pseudonyms ([`PartitionId`]) and
//! identity lookups by blind-index terms ([`BlindTerm`]). What a thief of the database learns is
//! what the threat model accepts: counts, sizes, resource types, write times, and equality of
//! blind-indexed values.
//!
//! ```
//! use brankas_store::{SqliteStore, Store};
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStore::open(&dir.path().join("brankas.db")).unwrap();
//! assert!(store.get_meta("absent").unwrap().is_none());
//! ```

pub mod conformance;
mod sqlite;

pub use brankas_vault::{BlindTerm, PartitionId, RecordKey, WrappedKey};
pub use sqlite::SqliteStore;

/// Errors of a storage backend. They carry no row content.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An optimistic-concurrency expectation of a [`WriteBatch`] did not hold; nothing was written.
    #[error("write conflict on item {index} of the batch")]
    Conflict { index: usize },
    /// Another writer stored a different data key for a partition this batch brings a new key
    /// for; nothing was written. Prepare the writes again with the stored key.
    #[error("a data key of the batch lost a race with another writer")]
    DataKeyRace,
    /// A version's partition has no stored data key and the batch brings none; nothing was
    /// written (the rows would be unreadable).
    #[error("a version's partition has no data key")]
    MissingDataKey,
    /// A stored value could not be decoded (corruption or tampering).
    #[error("stored data is corrupt")]
    Corrupt,
    /// The backend failed (I/O, disk full, locked database...).
    #[error("storage backend: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One stored version of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRow {
    pub key: RecordKey,
    /// 1, 2, 3… per resource.
    pub version: u64,
    /// The partition whose data key sealed this version.
    pub partition: PartitionId,
    /// Resource type (accepted leakage, see the threat model).
    pub resource_type: String,
    /// True for a delete marker.
    pub deleted: bool,
    /// Write time, microseconds since the Unix epoch (accepted leakage).
    pub last_updated_us: i64,
    /// Version of the partition's data key that sealed it.
    pub dek_version: u32,
    /// The sealed resource (or sealed delete marker).
    pub sealed: Vec<u8>,
}

/// A partition's wrapped data key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDek {
    pub partition: PartitionId,
    pub wrapped: WrappedKey,
}

/// What the current version of a record must be for a write to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Whatever it is (or absent).
    Any,
    /// The record must not exist yet (create with a chosen id).
    Absent,
    /// The current version must be exactly this one (update, If-Match).
    Version(u64),
}

/// A new version and the condition under which it may be written.
#[derive(Clone, Debug)]
pub struct NewVersion {
    pub row: VersionRow,
    pub expect: Expect,
}

/// An atomic unit of writes: all of it lands, or none of it.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// New versions, applied in order; each becomes its record's current version.
    pub versions: Vec<NewVersion>,
    /// Records whose blind-index terms are replaced: all old terms of the record are
    /// removed, then these terms added (an empty list just removes).
    pub index: Vec<(RecordKey, Vec<BlindTerm>)>,
    /// Data keys first used by this batch, stored atomically with it: inserted if the
    /// partition has none; the same key already stored is fine; a different one is
    /// [`StoreError::DataKeyRace`]. Every partition of `versions` must have a key, stored
    /// before or brought here, or the batch is [`StoreError::MissingDataKey`].
    pub deks: Vec<StoredDek>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.index.is_empty() && self.deks.is_empty()
    }
}

/// The storage of one Brankas deployment.
///
/// Implementations are synchronous (callers run them on blocking threads) and must be safe to
/// share between threads. Every method either completes or has no effect; `commit` is durable
/// when it returns (it survives `kill -9` of the process).
pub trait Store: Send + Sync + 'static {
    /// A small named value (e.g. the wrapped system root, the schema version).
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Sets a named value, durably.
    fn put_meta(&self, name: &str, value: &[u8]) -> Result<()>;

    /// The wrapped data key of a partition.
    fn get_dek(&self, partition: &PartitionId) -> Result<Option<StoredDek>>;
    /// Stores a partition's first data key unless one exists; returns the one that is stored
    /// afterwards (so of two racing creators, both use the winner's key).
    fn insert_dek(&self, dek: &StoredDek) -> Result<StoredDek>;
    /// Data keys in partition order after `after`, at most `limit` (for key rotation).
    fn scan_deks(&self, after: Option<&PartitionId>, limit: usize) -> Result<Vec<StoredDek>>;
    /// Replaces a partition's wrapped key if it is still `old` (rotation racing nothing else).
    fn replace_dek(&self, old: &StoredDek, new: &StoredDek) -> Result<bool>;

    /// The current version of a record, deleted or not. A current pointer that disagrees with
    /// the row it names, or names a version older than the record's newest, is
    /// [`StoreError::Corrupt`] (so is such a row met by `partition_current`).
    fn current(&self, key: &RecordKey) -> Result<Option<VersionRow>>;
    /// One version of a record.
    fn version(&self, key: &RecordKey, version: u64) -> Result<Option<VersionRow>>;
    /// Versions of a record, newest first, with version < `before` if given, at most `limit`.
    fn history(&self, key: &RecordKey, before: Option<u64>, limit: usize) -> Result<Vec<VersionRow>>;
    /// Current, non-deleted versions in a partition, of one type or of all types.
    fn partition_current(&self, partition: &PartitionId, resource_type: Option<&str>) -> Result<Vec<VersionRow>>;
    /// Records whose blind-index terms include `term`.
    fn lookup(&self, term: &BlindTerm) -> Result<Vec<RecordKey>>;
    /// Applies a batch atomically and durably, checking every [`Expect`] first.
    fn commit(&self, batch: &WriteBatch) -> Result<()>;
    /// Applies many independent batches in one durable transaction (bulk import): each batch
    /// is all-or-nothing; the result lists each batch's outcome.
    fn commit_many(&self, batches: &[WriteBatch]) -> Result<Vec<Result<()>>>;

    /// Records `key` as used until `expires_at_us` (microseconds since the Unix epoch) and
    /// returns true, or returns false if it is already recorded and not yet expired: a
    /// one-time check shared by every replica (e.g. the `jti` of client assertions). Expired
    /// entries may be forgotten.
    fn use_once(&self, key: &[u8; 32], expires_at_us: i64) -> Result<bool>;

    /// A client registration document (not patient data), by client id.
    fn get_client(&self, client_id: &str) -> Result<Option<Vec<u8>>>;
    /// Creates or replaces a client registration document.
    fn put_client(&self, client_id: &str, doc: &[u8]) -> Result<()>;
    /// All client ids.
    fn list_clients(&self) -> Result<Vec<String>>;
}
