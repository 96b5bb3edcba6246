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

pub mod blob;
pub mod conformance;
mod pg;
mod sqlite;

pub use blob::{BlobId, BlobStore, BlobWriter, FileBlobStore};
pub use brankas_vault::{BlindTerm, PartitionId, RecordKey, WrappedKey};
pub use pg::{PgOptions, PostgresStore};
pub use sqlite::{CheckDepth, FileCheck, SqliteStore};

/// Errors of a storage backend. They carry no row content.
#[derive(Clone, Debug, thiserror::Error)]
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
    /// A term of the batch's [`WriteBatch::unique`] is held by another record (`holder`);
    /// nothing was written.
    #[error("a unique blind-index term is held by another record")]
    TermHeld { holder: RecordKey },
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

/// A place in a partition's versions as [`Store::partition_versions`] lists them (newest
/// first): a listing continues with the versions that come after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionPos {
    pub last_updated_us: i64,
    pub key: RecordKey,
    pub version: u64,
}

impl VersionPos {
    /// The place of a row.
    pub fn of(row: &VersionRow) -> Self {
        VersionPos { last_updated_us: row.last_updated_us, key: row.key, version: row.version }
    }
    /// The place just before every version written at or after `t`: a listing from it holds
    /// the versions written before `t`.
    pub fn written_before(t: i64) -> Self {
        VersionPos { last_updated_us: t, key: RecordKey([0; 32]), version: 0 }
    }
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
    /// The version's sealed search entry (a small sealed copy of what search reads, bound to
    /// the same record and version), stored beside the current version and replaced with it;
    /// `None` stores none (the record's previous entry goes too).
    pub entry: Option<Vec<u8>>,
}

/// A current, non-deleted version as a search sees it first: the row's facts and its sealed
/// search entry, without the sealed resource (read with [`Store::version`] when served).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRow {
    pub key: RecordKey,
    pub version: u64,
    pub partition: PartitionId,
    pub resource_type: String,
    pub last_updated_us: i64,
    pub dek_version: u32,
    /// The sealed search entry of exactly this version; `None` when it has none (written
    /// before entries existed, or erased).
    pub entry: Option<Vec<u8>>,
}

/// One entry of an append-only list (a facility's work list): the list's tag and the entry's
/// id, both keyed hashes, and the sealed content. The store learns how many entries each tag
/// holds and when they were written, never what they say (a record key, sealed, so that a
/// list does not link the records it names at rest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    pub list: [u8; 32],
    pub entry: [u8; 32],
    pub sealed: Vec<u8>,
}

/// The meta value a database holds when it was made by a release that kept work lists as
/// whole documents (before list entries existed): such documents may still be stored and are
/// read beside the entries. A database created with list entries never has it.
pub const META_LEGACY_LISTS: &str = "legacy-list-documents";

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
    /// List entries added: each inserted unless its `(list, entry)` is already stored (then
    /// the stored one stays). They carry no expectation and never conflict; they are not
    /// versions (the version counter does not count them).
    pub list_entries: Vec<ListEntry>,
    /// Terms that, once the batch's index changes are applied, must be held by the given
    /// record alone (a national identity number names one patient): checked in the same
    /// transaction, so two concurrent batches cannot both take a term. Another holder makes
    /// the batch [`StoreError::TermHeld`] and nothing is written. Each term must also be among
    /// the record's terms in [`WriteBatch::index`].
    pub unique: Vec<(RecordKey, BlindTerm)>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.index.is_empty() && self.deks.is_empty() && self.list_entries.is_empty()
    }
}

/// One record of the audit log as stored: its position, write time, the patient it concerns
/// (by pseudonym), a keyed tag of the actor (client), and the sealed record. The store learns
/// which opaque actor touched which opaque patient when (accepted leakage, like write times),
/// nothing of what or why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    /// Position in the log, from 0, without gaps.
    pub seq: u64,
    pub time_us: i64,
    pub partition: Option<PartitionId>,
    pub actor: [u8; 32],
    pub sealed: Vec<u8>,
}

/// A signed checkpoint of the audit log (a C2SP signed note naming size and tree head).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditCheckpointRow {
    pub size: u64,
    pub time_us: i64,
    pub note: String,
}

/// The appender's state after the last append: the log's size and the right edge of its
/// Merkle tree (opaque to the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditHead {
    pub size: u64,
    pub frontier: Vec<u8>,
}

/// One atomic append to the audit log: records continuing the log, the complete subtree
/// hashes they finished (`(level, index, hash)`), the new head, and optionally a checkpoint.
#[derive(Clone, Debug, Default)]
pub struct AuditAppend {
    pub rows: Vec<AuditRow>,
    pub nodes: Vec<(u8, u64, [u8; 32])>,
    pub head: Option<AuditHead>,
    pub checkpoint: Option<AuditCheckpointRow>,
}

/// The answer of [`Store::guard_admit`]: whether the patients were admitted, and the distinct
/// patients counted in the hour and the day (after admission, or as they would have been).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardAdmission {
    pub admitted: bool,
    pub hour: u32,
    pub day: u32,
}

/// A security alert (no patient data: kinds, clients, counts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertRow {
    /// Assigned by the store on insert (ignored there).
    pub id: u64,
    pub time_us: i64,
    pub kind: String,
    pub severity: String,
    pub client_id: Option<String>,
    /// JSON with the alert's details.
    pub detail: String,
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
    /// Erases a partition's rows (crypto-shredding, with the shred key destroyed by the
    /// vault): in one transaction, its data key becomes the tombstone
    /// ([`WrappedKey::erased`], inserted if it had none), the blind-index terms of its
    /// records are removed, and the sealed bytes of their versions are overwritten with
    /// nothing (the rows, their count and the current pointers stay, so history and the
    /// state anchor's version count are unchanged, and reads find an erased patient instead
    /// of a missing one). Returns the number of records. Idempotent.
    fn erase_partition(&self, partition: &PartitionId) -> Result<u64>;

    /// The current version of a record, deleted or not. A current pointer that disagrees with
    /// the row it names, or names a version older than the record's newest, is
    /// [`StoreError::Corrupt`] (so is such a row met by `partition_current`).
    fn current(&self, key: &RecordKey) -> Result<Option<VersionRow>>;
    /// One version of a record.
    fn version(&self, key: &RecordKey, version: u64) -> Result<Option<VersionRow>>;
    /// Versions of a record, newest first, with version < `before` if given, at most `limit`.
    fn history(&self, key: &RecordKey, before: Option<u64>, limit: usize) -> Result<Vec<VersionRow>>;
    /// The versions (deleted ones too) of the records a partition holds, of one type or of
    /// all types, that were sealed in that partition, newest first in [`VersionPos`] order:
    /// write time, then record key, then version, all descending. Only versions written at
    /// or after `since_us`, and strictly after `after` in that order (paging), at most
    /// `limit`. A record moved to another partition is listed by neither for the versions
    /// before its move. Type and system history read it.
    fn partition_versions(&self, partition: &PartitionId, resource_type: Option<&str>, since_us: Option<i64>, after: Option<&VersionPos>, limit: usize) -> Result<Vec<VersionRow>>;
    /// Current, non-deleted versions in a partition, of one type or of all types.
    fn partition_current(&self, partition: &PartitionId, resource_type: Option<&str>) -> Result<Vec<VersionRow>>;
    /// [`Store::partition_current`] without the sealed resources: each current, non-deleted
    /// version's facts with its search entry (see [`NewVersion::entry`]). The same checks of
    /// the current pointer apply ([`StoreError::Corrupt`]); an entry stored for another
    /// version than the current one is not returned.
    fn partition_entries(&self, partition: &PartitionId, resource_type: Option<&str>) -> Result<Vec<EntryRow>>;
    /// Records whose blind-index terms include `term`.
    fn lookup(&self, term: &BlindTerm) -> Result<Vec<RecordKey>>;
    /// The entries of the lists `lists` (one point query per tag), in `(list, entry)` order;
    /// a tag without entries adds nothing.
    fn list_entries(&self, lists: &[[u8; 32]]) -> Result<Vec<ListEntry>>;
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

    /// The audit log's head (size and Merkle frontier), `None` while the log is empty.
    fn audit_head(&self) -> Result<Option<AuditHead>>;
    /// Appends to the audit log atomically and durably. The rows must continue the log
    /// exactly (the first at the stored head's size, then without gaps) and `head` must be
    /// given when rows are; otherwise [`StoreError::Conflict`] (another replica appended
    /// first) and nothing is written.
    fn audit_append(&self, append: &AuditAppend) -> Result<()>;
    /// Audit records from position `from` on, in order, at most `limit`.
    fn audit_rows(&self, from: u64, limit: usize) -> Result<Vec<AuditRow>>;
    /// Stored subtree hashes of `level` from index `from` on, in order, at most `limit`.
    fn audit_nodes(&self, level: u8, from: u64, limit: usize) -> Result<Vec<(u64, [u8; 32])>>;
    /// Checkpoints with size >= `from_size`, by size, at most `limit`.
    fn audit_checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<AuditCheckpointRow>>;
    /// The checkpoint of the largest size.
    fn audit_latest_checkpoint(&self) -> Result<Option<AuditCheckpointRow>>;
    /// One patient's audit records, newest first, with position < `before` if given.
    fn audit_by_partition(&self, partition: &PartitionId, before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>>;
    /// One actor's audit records, newest first, with position < `before` if given.
    fn audit_by_actor(&self, actor: &[u8; 32], before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>>;
    /// Audit records newest first, with position < `before` if given (a time window walks
    /// back from its end until records are older than it).
    fn audit_latest(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>>;
    /// Where the audit log's held records begin: `(first position held, the signed note that
    /// marks it)`, `None` while nothing was archived. The records before it were moved to an
    /// archive (`brankas audit archive`).
    fn audit_archived(&self) -> Result<Option<(u64, String)>>;
    /// Removes the audit records before `to` once they are archived (the caller wrote and
    /// synced the archive first): records `to` and `note` as where the held records begin, then
    /// deletes the rows in short transactions (a crash part-way leaves rows below the mark,
    /// which a later call removes) and returns the freed pages to the file system. Stored
    /// subtree hashes, checkpoints and the head are kept. [`StoreError::Conflict`] when `to`
    /// is before the current mark or beyond the log.
    fn audit_archive(&self, to: u64, note: &str) -> Result<()>;

    /// Admits `partitions` into `client`'s distinct-patient counts of the clock hour `hour`
    /// and the UTC day `day` if neither count then exceeds its limit; otherwise changes
    /// nothing. Atomic, and shared by every replica (one budget however requests spread).
    fn guard_admit(&self, client: &str, hour: i64, day: i64, partitions: &[PartitionId], per_hour: u32, per_day: u32) -> Result<GuardAdmission>;
    /// Distinct patients counted for `client` in the hour and the day.
    fn guard_usage(&self, client: &str, hour: i64, day: i64) -> Result<(u32, u32)>;
    /// Marks partitions as canaries (planted trip-wire patients).
    fn canary_add(&self, partitions: &[PartitionId]) -> Result<()>;
    /// The canaries among `partitions`.
    fn canaries_among(&self, partitions: &[PartitionId]) -> Result<Vec<PartitionId>>;
    /// Records that `client` was seen at `address`; returns whether the address is new for it
    /// and how many other addresses it was seen at before.
    fn guard_address(&self, client: &str, address: &str, now_us: i64) -> Result<(bool, u32)>;
    /// Adds one to a named daily counter of `client` (e.g. break-glass grants) and returns it.
    fn guard_bump(&self, client: &str, counter: &str, day: i64) -> Result<u32>;
    /// Stores an alert; returns its id.
    fn alert_add(&self, alert: &AlertRow) -> Result<u64>;
    /// Alerts newest first, with id < `before` if given.
    fn alerts(&self, before: Option<u64>, limit: usize) -> Result<Vec<AlertRow>>;

    /// The counters the state anchor follows, cheap to read: version rows stored (a counter
    /// kept in the same transaction as every commit) and the guard state's identity.
    fn state_counters(&self) -> Result<StateCounters>;
    /// Version rows actually present (a count over the table, proportional to its size): at
    /// start, checked against [`StateCounters::versions`] and the anchor.
    fn versions_present(&self) -> Result<u64>;
    /// Every canary partition, in order.
    fn canaries(&self) -> Result<Vec<PartitionId>>;
}

/// See [`Store::state_counters`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateCounters {
    /// Version rows committed, kept with each commit (only ever grows).
    pub versions: u64,
    /// A random identity given to the guard's state when it is created: a deleted or
    /// replaced guard database comes back with another one.
    pub guard_epoch: String,
}
