//! The appender: records of concurrent requests are sealed, extend the Merkle tree and are
//! written in one durable append (group commit), then each request is answered.
//!
//! Group commits are led by the waiting requests themselves: a synchronous caller
//! ([`AuditLog::record_blocking`], the request path's blocking task) queues its records and takes
//! the writer's lock; whoever holds it drains the whole queue (its own records and every
//! record queued while the previous append was being synced) into one append, answers every
//! submitter in it, and lets the next waiter in, which usually finds its records already
//! durable. No hand-off to another thread sits on that path. Asynchronous submitters
//! ([`AuditLog::record`]) wake a background thread that leads for them; the same thread signs a
//! checkpoint at least once a second while records arrive, and one more when records wait
//! unsigned for a second.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use brankas_store::{AuditAppend, AuditCheckpointRow, AuditHead, AuditRow, PartitionId, Store, StoreError};
use brankas_vault::Vault;
use tokio::sync::oneshot;

use crate::merkle::{self, Frontier, Hash, HashSource, STORED_LEVELS};
use crate::note::Checkpoint;
use crate::{AuditEntry, leaf_of, row_context};

/// Checkpoints are signed at least this often while records arrive.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Records taken into one append at most.
const MAX_BATCH: usize = 4096;
/// Appends retried after another replica appended first.
const RETRIES: usize = 8;

/// Errors of the audit log. None carries record content.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Records could not be made durable: the request they describe must fail.
    #[error("the audit log cannot be written")]
    Unavailable,
    /// The log is shutting down.
    #[error("the audit log is stopped")]
    Stopped,
    /// A stored record or checkpoint failed authentication.
    #[error("an audit record failed authentication")]
    Integrity,
    /// A proof was asked for beyond the log.
    #[error("no such position in the audit log")]
    OutOfRange,
    /// The records needed were archived (`brankas audit archive`): the hot log holds those from
    /// `first` on; older ones are read and verified from the archive.
    #[error("audit records before position {first} are archived; the archive holds them")]
    Archived { first: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A record to append: the patient it concerns (by partition), the client that acted, and
/// what happened.
pub struct NewRecord {
    pub partition: Option<PartitionId>,
    pub client_id: String,
    pub entry: AuditEntry,
}

/// Proof that a set of records is durable in the log: which patients' disclosures they
/// recorded as served. Only [`AuditLog::record_receipt`] makes one, after the append, so code
/// that holds a `Receipt` for a patient has written that patient's successful record first
/// (the engine's `Admitted::release` requires one covering every patient it disclosed).
pub struct Receipt {
    position: u64,
    served: std::collections::BTreeSet<PartitionId>,
}

impl Receipt {
    /// Position of the last record appended.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Whether a successful record for this patient's partition was appended.
    pub fn covers(&self, partition: &PartitionId) -> bool {
        self.served.contains(partition)
    }
}

/// Names nothing: positions only.
impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt").field("position", &self.position).field("patients", &self.served.len()).finish()
    }
}

/// Proof that the write-ahead records of a write are durable (the data is not committed yet):
/// which partitions they name (`None`: the directory, resources in no patient's compartment).
/// Only [`AuditLog::record_ahead`] makes one, after the append, so code that holds a
/// `WriteAhead` covering a partition has made a record of the write to that partition durable
/// first: the engine's one store commit requires one covering every partition it writes, so
/// no write is committed without its audit record (a crash between the two leaves a record of
/// an attempted write, never an unaudited write).
pub struct WriteAhead {
    position: u64,
    partitions: std::collections::BTreeSet<Option<PartitionId>>,
}

impl WriteAhead {
    /// Position of the last record appended.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Whether a record of the write names this partition (`None`: the directory).
    pub fn covers(&self, partition: Option<&PartitionId>) -> bool {
        self.partitions.contains(&partition.copied())
    }
}

/// Names nothing: positions only.
impl std::fmt::Debug for WriteAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteAhead").field("position", &self.position).field("partitions", &self.partitions.len()).finish()
    }
}

/// What the appender last saw of the log's storage, for a readiness check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendHealth {
    /// Nothing appended by this process yet.
    Unknown,
    /// The last append was durable.
    Ok,
    /// The last append failed: requests fail until an append succeeds again.
    Failing,
}

fn served_partitions(records: &[NewRecord]) -> std::collections::BTreeSet<PartitionId> {
    records.iter().filter(|r| r.entry.outcome == Some(crate::Outcome::Success)).filter_map(|r| r.partition).collect()
}

/// A record read back.
#[derive(Debug)]
pub struct Opened {
    pub seq: u64,
    pub time_us: i64,
    pub partition: Option<PartitionId>,
    pub entry: AuditEntry,
}

/// An inclusion or consistency proof with the tree sizes it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    pub hashes: Vec<Hash>,
}

type Reply = oneshot::Sender<Result<u64, AuditError>>;

/// Records submitted together, and where their answer goes.
type Submission = (Vec<NewRecord>, Reply);

/// Submitted sets of records, each answered as a whole.
struct Queue {
    pending: Vec<(Vec<NewRecord>, Reply)>,
    stop: bool,
}

struct Shared {
    /// What the appender knows between appends; its lock is the leader's: whoever holds it
    /// appends the queue's records.
    state: Mutex<WriterState>,
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    origin: String,
    public_key: [u8; 32],
    queue: Mutex<Queue>,
    wake: Condvar,
    /// The last append's outcome (see [`AppendHealth`]): 0 unknown, 1 ok, 2 failing.
    last: std::sync::atomic::AtomicU8,
    /// When a readiness probe last appended (so probes write at most one record a second).
    probed: Mutex<Option<Instant>>,
}

/// The audit log of one server. Dropping it stops the appender after the records already
/// submitted, and signs a final checkpoint.
pub struct AuditLog {
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.stop = true;
        }
        self.shared.wake.notify_all();
        if let Some(t) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = t.join();
        }
    }
}

impl AuditLog {
    /// Opens the log on `store` and starts its appender.
    pub fn open(store: Arc<dyn Store>, vault: Arc<Vault>) -> Result<Self, AuditError> {
        let public_key = vault.audit_public_key();
        let origin = crate::origin(&public_key);
        let state = WriterState::load(&*store)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            store,
            vault,
            origin,
            public_key,
            queue: Mutex::new(Queue { pending: Vec::new(), stop: false }),
            wake: Condvar::new(),
            last: std::sync::atomic::AtomicU8::new(0),
            probed: Mutex::new(None),
        });
        let s = shared.clone();
        let writer = std::thread::Builder::new().name("audit-append".into()).spawn(move || appender(s)).map_err(|_| AuditError::Unavailable)?;
        Ok(Self { shared, writer: Mutex::new(Some(writer)) })
    }

    /// The origin line of this log's checkpoints.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// The Ed25519 key that verifies this log's checkpoints.
    pub fn public_key(&self) -> [u8; 32] {
        self.shared.public_key
    }

    /// Submits records; the receiver answers (with the last record's position) once all of
    /// them are durable, or with the error that kept them from being written.
    pub fn submit(&self, records: Vec<NewRecord>) -> oneshot::Receiver<Result<u64, AuditError>> {
        let (rx, queued) = self.enqueue(records);
        if queued {
            self.shared.wake.notify_one();
        }
        rx
    }

    /// Queues records; `true` if they wait in the queue (else the receiver is answered).
    fn enqueue(&self, records: Vec<NewRecord>) -> (oneshot::Receiver<Result<u64, AuditError>>, bool) {
        let (tx, rx) = oneshot::channel();
        if records.is_empty() {
            let _ = tx.send(Ok(0));
            return (rx, false);
        }
        let Ok(mut q) = self.shared.queue.lock() else {
            let _ = tx.send(Err(AuditError::Unavailable));
            return (rx, false);
        };
        if q.stop {
            let _ = tx.send(Err(AuditError::Stopped));
            return (rx, false);
        }
        q.pending.push((records, tx));
        (rx, true)
    }

    /// Appends records and waits until they are durable. When no append is in progress the
    /// caller leads the group commit itself, on its own thread (an idle log has nobody to
    /// gather: handing the records to the appender thread would only add two thread
    /// switches to the request's latency); while one is in progress, the records join the
    /// queue that the appender thread commits next, and the caller waits without blocking.
    /// So at most one caller at a time blocks its thread on the log's writes.
    pub async fn record(&self, records: Vec<NewRecord>) -> Result<u64, AuditError> {
        let (mut rx, queued) = self.enqueue(records);
        if queued {
            match self.shared.state.try_lock() {
                Ok(mut state) => {
                    lead(&self.shared, &mut state);
                }
                Err(std::sync::TryLockError::WouldBlock) => {}
                Err(std::sync::TryLockError::Poisoned(_)) => return Err(AuditError::Unavailable),
            }
            // Not in the batch just led (a queue longer than one batch), or an append is in
            // progress: the appender thread takes it.
            match rx.try_recv() {
                Ok(r) => return r,
                Err(oneshot::error::TryRecvError::Closed) => return Err(AuditError::Unavailable),
                Err(oneshot::error::TryRecvError::Empty) => self.shared.wake.notify_one(),
            }
        }
        rx.await.map_err(|_| AuditError::Unavailable)?
    }

    /// Appends records, waits until they are durable, and returns the [`Receipt`] naming the
    /// partitions whose records say they were served (outcome success).
    pub async fn record_receipt(&self, records: Vec<NewRecord>) -> Result<Receipt, AuditError> {
        let served = served_partitions(&records);
        let position = self.record(records).await?;
        Ok(Receipt { position, served })
    }

    /// [`AuditLog::record_receipt`] from synchronous code (the CLI).
    pub fn record_receipt_blocking(&self, records: Vec<NewRecord>) -> Result<Receipt, AuditError> {
        let served = served_partitions(&records);
        let position = self.record_blocking(records)?;
        Ok(Receipt { position, served })
    }

    /// Appends the write-ahead records of a write from synchronous code (the engine, on a
    /// blocking thread) and waits until they are durable: the [`WriteAhead`] it returns names
    /// the partitions they cover, and is what the engine's store commit requires.
    pub fn record_ahead(&self, records: Vec<NewRecord>) -> Result<WriteAhead, AuditError> {
        let partitions = records.iter().map(|r| r.partition).collect();
        let position = self.record_blocking(records)?;
        Ok(WriteAhead { position, partitions })
    }

    /// The outcome of the last append (for a readiness check).
    pub fn health(&self) -> AppendHealth {
        match self.shared.last.load(std::sync::atomic::Ordering::Relaxed) {
            1 => AppendHealth::Ok,
            2 => AppendHealth::Failing,
            _ => AppendHealth::Unknown,
        }
    }

    /// Whether the log can be written, for a readiness check: the last append's outcome; while
    /// the last append failed, one probe record (no patient, client `readiness-probe`) at most
    /// once a second tells whether appends work again. (Whether the stored head can be read is
    /// the caller's check, on a blocking thread: [`head`].)
    pub async fn ready(&self) -> bool {
        if self.health() != AppendHealth::Failing {
            return true;
        }
        let due = match self.shared.probed.lock() {
            Ok(mut t) if t.is_none_or(|t| t.elapsed() >= CHECKPOINT_EVERY) => {
                *t = Some(Instant::now());
                true
            }
            _ => false,
        };
        if !due {
            return false;
        }
        let entry = AuditEntry {
            interaction: "readiness-probe".into(),
            action: "E".into(),
            outcome: Some(crate::Outcome::Success),
            outcome_text: Some("the last append had failed; this record tests whether the log can be written again".into()),
            client_id: "readiness-probe".into(),
            role: "server".into(),
            ..Default::default()
        };
        self.record(vec![NewRecord { partition: None, client_id: "readiness-probe".into(), entry }]).await.is_ok()
    }

    /// Appends records from synchronous code (a request's blocking task, the CLI) and waits
    /// until they are durable, leading the group commit itself: it takes the writer's lock and
    /// appends everything queued, unless the holder before it already did. (Whoever drains a
    /// submission holds the lock until it has answered it, so once this caller holds the lock
    /// its records are either answered or still queued.)
    pub fn record_blocking(&self, records: Vec<NewRecord>) -> Result<u64, AuditError> {
        let (mut rx, queued) = self.enqueue(records);
        if !queued {
            return rx.blocking_recv().map_err(|_| AuditError::Unavailable)?;
        }
        loop {
            match rx.try_recv() {
                Ok(r) => return r,
                Err(oneshot::error::TryRecvError::Closed) => return Err(AuditError::Unavailable),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let Ok(mut state) = self.shared.state.lock() else { return Err(AuditError::Unavailable) };
            match rx.try_recv() {
                Ok(r) => return r,
                Err(oneshot::error::TryRecvError::Closed) => return Err(AuditError::Unavailable),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            if !lead(&self.shared, &mut state) {
                return Err(AuditError::Unavailable);
            }
        }
    }

    /// The newest signed checkpoint (a C2SP signed note).
    pub fn latest_checkpoint(&self) -> Result<Option<AuditCheckpointRow>, AuditError> {
        Ok(self.shared.store.audit_latest_checkpoint()?)
    }

    /// The inclusion proof of record `seq` in the tree of size `size`.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Proof, AuditError> {
        self.check_size(size)?;
        if seq >= size {
            return Err(AuditError::OutOfRange);
        }
        let mut src = StoreSource { store: &*self.shared.store };
        Ok(Proof { hashes: merkle::inclusion_proof(&mut src, seq, size)? })
    }

    /// The leaf hash of record `seq` (to check an inclusion proof against).
    pub fn leaf_hash(&self, seq: u64) -> Result<Hash, AuditError> {
        let rows = self.shared.store.audit_rows(seq, 1)?;
        match rows.first().filter(|r| r.seq == seq) {
            Some(r) => Ok(leaf_of(r)),
            None => Err(archived_before(&*self.shared.store, seq)?.unwrap_or(AuditError::OutOfRange)),
        }
    }

    /// The tree head of the first `size` records.
    pub fn root(&self, size: u64) -> Result<Hash, AuditError> {
        self.check_size(size)?;
        let mut src = StoreSource { store: &*self.shared.store };
        merkle::root(&mut src, size)
    }

    /// The consistency proof between the trees of sizes `old` and `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Proof, AuditError> {
        self.check_size(new)?;
        if old == 0 || old > new {
            return Err(AuditError::OutOfRange);
        }
        let mut src = StoreSource { store: &*self.shared.store };
        Ok(Proof { hashes: merkle::consistency_proof(&mut src, old, new)? })
    }

    fn check_size(&self, size: u64) -> Result<(), AuditError> {
        let have = self.shared.store.audit_head()?.map_or(0, |h| h.size);
        if size == 0 || size > have { Err(AuditError::OutOfRange) } else { Ok(()) }
    }

    /// Opens stored rows.
    pub fn open_rows(&self, rows: Vec<AuditRow>) -> Result<Vec<Opened>, AuditError> {
        rows.into_iter().map(|r| open_row(&self.shared.vault, r)).collect()
    }

    /// Where the held records begin when older ones were archived: the first held position
    /// and its record's time (`None` when nothing was archived).
    pub fn held_from(&self) -> Result<Option<(u64, i64)>, AuditError> {
        let Some(first) = archived_from(&*self.shared.store)? else { return Ok(None) };
        let time = self.shared.store.audit_rows(first, 1)?.first().map_or(i64::MAX, |r| r.time_us);
        Ok(Some((first, time)))
    }

    /// One patient's records, newest first (position < `before`).
    pub fn by_partition(&self, partition: &PartitionId, before: Option<u64>, limit: usize) -> Result<Vec<Opened>, AuditError> {
        self.open_rows(self.shared.store.audit_by_partition(partition, before, limit)?)
    }

    /// One client's records, newest first (position < `before`).
    pub fn by_client(&self, client_id: &str, before: Option<u64>, limit: usize) -> Result<Vec<Opened>, AuditError> {
        let tag = self.shared.vault.audit_tag("client", client_id);
        self.open_rows(self.shared.store.audit_by_actor(&tag, before, limit)?)
    }

    /// The newest records (position < `before`).
    pub fn latest(&self, before: Option<u64>, limit: usize) -> Result<Vec<Opened>, AuditError> {
        self.open_rows(self.shared.store.audit_latest(before, limit)?)
    }
}

/// The tree head of the first `size` records of the log in `store`, from its stored subtrees
/// (a few hundred reads at any size): to compare with a head recorded earlier (the state
/// anchor), as a consistency check between that size and the log as it is now.
pub fn tree_root(store: &dyn Store, size: u64) -> Result<Hash, AuditError> {
    let have = store.audit_head()?.map_or(0, |h| h.size);
    if size > have {
        return Err(AuditError::OutOfRange);
    }
    merkle::root(&mut StoreSource { store }, size)
}

/// The log's size and tree head as its stored head says (no records read).
pub fn head(store: &dyn Store) -> Result<(u64, Hash), AuditError> {
    match store.audit_head()? {
        None => Ok((0, merkle::empty_root())),
        Some(h) => {
            let f = Frontier::decode(&h.frontier).filter(|f| f.size() == h.size).ok_or(AuditError::Integrity)?;
            Ok((h.size, f.root()))
        }
    }
}

pub(crate) fn open_row(vault: &Vault, r: AuditRow) -> Result<Opened, AuditError> {
    let ctx = row_context(r.seq, r.time_us, r.partition.as_ref(), &r.actor);
    let plain = vault.open_audit(&ctx, &r.sealed).map_err(|_| AuditError::Integrity)?;
    let entry: AuditEntry = crate::codec::decode(&plain).map_err(|_| AuditError::Integrity)?;
    Ok(Opened { seq: r.seq, time_us: r.time_us, partition: r.partition, entry })
}

/// The log's first held position, if the records before it were archived.
pub fn archived_from(store: &dyn Store) -> Result<Option<u64>, AuditError> {
    Ok(store.audit_archived()?.map(|(first, _)| first))
}

/// [`AuditError::Archived`] when position `seq` lies before the held records.
fn archived_before(store: &dyn Store, seq: u64) -> Result<Option<AuditError>, AuditError> {
    Ok(archived_from(store)?.filter(|first| seq < *first).map(|first| AuditError::Archived { first }))
}

/// Subtree hashes from the store: stored levels where they exist, records below them.
pub(crate) struct StoreSource<'a> {
    pub(crate) store: &'a dyn Store,
}

impl HashSource for StoreSource<'_> {
    type Error = AuditError;
    fn subtree(&mut self, level: u8, start: u64) -> Result<Hash, AuditError> {
        let count = 1u64 << level;
        let stored = STORED_LEVELS.iter().rev().copied().find(|l| *l <= level);
        let hashes: Vec<Hash> = match stored {
            Some(l) => {
                let from = start >> l;
                let n = (count >> l) as usize;
                let nodes = self.store.audit_nodes(l, from, n)?;
                if nodes.len() != n || nodes.iter().enumerate().any(|(i, (idx, _))| *idx != from + i as u64) {
                    return Err(AuditError::Integrity);
                }
                nodes.into_iter().map(|(_, h)| h).collect()
            }
            None => {
                let rows = self.store.audit_rows(start, count as usize)?;
                if rows.len() as u64 != count || rows.iter().enumerate().any(|(i, r)| r.seq != start + i as u64) {
                    return Err(archived_before(self.store, start)?.unwrap_or(AuditError::Integrity));
                }
                rows.iter().map(leaf_of).collect()
            }
        };
        let slice: &[Hash] = &hashes;
        Ok(merkle::root(&mut &slice[..], hashes.len() as u64).unwrap_or_else(|e| match e {}))
    }
}

/// What the appender knows between appends.
#[derive(Clone)]
struct WriterState {
    frontier: Frontier,
    last_time_us: i64,
    /// Size of the newest checkpoint and when this process signed one.
    checkpointed: u64,
    checkpoint_at: Option<Instant>,
}

impl WriterState {
    fn load(store: &dyn Store) -> Result<Self, AuditError> {
        let frontier = match store.audit_head()? {
            None => Frontier::default(),
            Some(AuditHead { size, frontier }) => {
                let f = Frontier::decode(&frontier).ok_or(AuditError::Integrity)?;
                if f.size() != size {
                    return Err(AuditError::Integrity);
                }
                f
            }
        };
        let last = if frontier.size() > 0 { store.audit_rows(frontier.size() - 1, 1)?.first().map_or(0, |r| r.time_us) } else { 0 };
        let checkpointed = store.audit_latest_checkpoint()?.map_or(0, |c| c.size);
        Ok(Self { frontier, last_time_us: last, checkpointed, checkpoint_at: None })
    }
}

fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// Whole submissions from the queue, at least one, up to about [`MAX_BATCH`] records, and
/// whether the log stops after them. `None` if the queue's lock is poisoned.
fn take_batch(shared: &Shared) -> Option<(Vec<Submission>, bool)> {
    let mut q = shared.queue.lock().ok()?;
    let (mut n, mut records) = (0, 0);
    while n < q.pending.len() && (n == 0 || records + q.pending[n].0.len() <= MAX_BATCH) {
        records += q.pending[n].0.len();
        n += 1;
    }
    Some((q.pending.drain(..n).collect::<Vec<_>>(), q.stop && q.pending.len() == n))
}

/// A group commit led by a submitter holding the writer's lock: appends what is queued (one
/// batch). `false` if the queue's lock is poisoned.
fn lead(shared: &Shared, state: &mut WriterState) -> bool {
    let Some((batch, _)) = take_batch(shared) else { return false };
    if !batch.is_empty() {
        append(shared, state, batch, false);
    }
    true
}

/// The background appender: leads group commits for asynchronous submitters, signs due
/// checkpoints, and on stop appends what is left and signs a last checkpoint.
fn appender(shared: Arc<Shared>) {
    loop {
        {
            let Ok(q) = shared.queue.lock() else { return };
            if q.pending.is_empty() && !q.stop {
                // Woken by an asynchronous submission, or once a second to sign what
                // synchronous leaders appended.
                if shared.wake.wait_timeout(q, CHECKPOINT_EVERY).is_err() {
                    return;
                }
            }
        }
        let Ok(mut state) = shared.state.lock() else { return };
        let Some((batch, stop)) = take_batch(&shared) else { return };
        let unsigned = state.frontier.size() > state.checkpointed;
        let due = unsigned && state.checkpoint_at.is_none_or(|t| t.elapsed() >= CHECKPOINT_EVERY);
        if !batch.is_empty() || due || (stop && unsigned) {
            append(&shared, &mut state, batch, stop);
        }
        if stop {
            return;
        }
    }
}

/// Appends one batch (possibly empty, for a checkpoint alone) and answers its requests.
fn append(shared: &Shared, state: &mut WriterState, batch: Vec<(Vec<NewRecord>, Reply)>, force_checkpoint: bool) {
    let mut records = Vec::new();
    let mut replies = Vec::new();
    for (set, reply) in batch {
        records.extend(set);
        replies.push((records.len(), reply));
    }
    let mut attempt = 0;
    let result = loop {
        let mut next = state.clone();
        let r = build(shared, &mut next, &records, force_checkpoint).and_then(|(append, last)| {
            shared.store.audit_append(&append)?;
            Ok((append, last))
        });
        match r {
            Ok((append, last)) => {
                if let Some(cp) = &append.checkpoint {
                    next.checkpointed = cp.size;
                    next.checkpoint_at = Some(Instant::now());
                }
                *state = next;
                break Ok(last);
            }
            Err(AuditError::Store(StoreError::Conflict { .. })) if attempt < RETRIES => {
                // Another replica appended: continue from its head.
                attempt += 1;
                match WriterState::load(&*shared.store) {
                    Ok(s) => *state = WriterState { checkpoint_at: state.checkpoint_at, ..s },
                    Err(e) => break Err(e),
                }
            }
            Err(e) => break Err(e),
        }
    };
    // A checkpoint alone says nothing about whether records can be appended.
    if !records.is_empty() {
        shared.last.store(if result.is_ok() { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
    }
    match result {
        Ok(last) => {
            // Each set is answered with the position of its own last record.
            for (end, reply) in replies {
                let _ = reply.send(Ok(last + end as u64 - records.len() as u64));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, records = records.len(), "audit append failed; the requests it describes fail");
            for (_, reply) in replies {
                let _ = reply.send(Err(AuditError::Unavailable));
            }
        }
    }
}

/// Seals the records at the next positions; returns the append and the last position.
fn build(shared: &Shared, state: &mut WriterState, records: &[NewRecord], force_checkpoint: bool) -> Result<(AuditAppend, u64), AuditError> {
    let mut append = AuditAppend::default();
    for r in records {
        let seq = state.frontier.size();
        let time_us = now_us().max(state.last_time_us);
        state.last_time_us = time_us;
        let actor = shared.vault.audit_tag("client", &r.client_id);
        let body = crate::codec::encode(&r.entry);
        let sealed = shared.vault.seal_audit(&row_context(seq, time_us, r.partition.as_ref(), &actor), &body).map_err(|_| AuditError::Unavailable)?;
        let row = AuditRow { seq, time_us, partition: r.partition, actor, sealed };
        for (level, idx, hash) in state.frontier.push(leaf_of(&row)) {
            if STORED_LEVELS.contains(&level) {
                append.nodes.push((level, idx, hash));
            }
        }
        append.rows.push(row);
    }
    let size = state.frontier.size();
    if !records.is_empty() {
        append.head = Some(AuditHead { size, frontier: state.frontier.encode() });
    }
    let unsigned = size > state.checkpointed;
    if unsigned && (force_checkpoint || state.checkpoint_at.is_none_or(|t| t.elapsed() >= CHECKPOINT_EVERY)) {
        let cp = Checkpoint { origin: shared.origin.clone(), size, root: state.frontier.root() };
        let note = cp.sign(&shared.public_key, |m| shared.vault.audit_sign(m));
        append.checkpoint = Some(AuditCheckpointRow { size, time_us: now_us(), note });
    }
    Ok((append, size.saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;
    use brankas_store::SqliteStore;
    use brankas_vault::KeyFile;

    fn entry(i: u64) -> AuditEntry {
        AuditEntry {
            interaction: "search-type".into(),
            action: "E".into(),
            outcome: Some(Outcome::Success),
            status: 200,
            client_id: "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b".into(),
            role: "clinician".into(),
            request_id: format!("{i:032x}"),
            purpose: Some("TREAT".into()),
            patient: Some(format!("{i:08x}-6d7b-4c8e-9f01-23456789abcd")),
            resources: (0..5).map(|j| format!("Observation/{j:08x}-1a2b-4c3d-8e4f-5a6b7c8d9e0f")).collect(),
            categories: vec!["lab and antigen results".into()],
            disclosed: true,
            target: Some("Observation".into()),
            query: vec!["patient".into(), "code".into()],
            ..Default::default()
        }
    }

    /// A log whose first records were written in the first format (JSON bodies) and whose
    /// later ones are compact: every record opens, verifies and is found by its readers.
    #[test]
    fn records_of_both_formats_open_and_verify_in_one_log() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, _) = Vault::create(Arc::new(KeyFile::create(&dir.path().join("k.json")).unwrap())).unwrap();
        let vault = Arc::new(vault);
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("brankas.db")).unwrap());
        // The first format, as the appender wrote it before: the entry as JSON.
        let mut frontier = Frontier::default();
        let mut append = AuditAppend::default();
        let partition = vault.patient_partition("p1");
        for seq in 0..300u64 {
            let actor = vault.audit_tag("client", "c1");
            let body = serde_json::to_vec(&entry(seq)).unwrap();
            let sealed = vault.seal_audit(&row_context(seq, 1_000 + seq as i64, Some(&partition), &actor), &body).unwrap();
            let row = AuditRow { seq, time_us: 1_000 + seq as i64, partition: Some(partition), actor, sealed };
            for (level, idx, hash) in frontier.push(leaf_of(&row)) {
                if STORED_LEVELS.contains(&level) {
                    append.nodes.push((level, idx, hash));
                }
            }
            append.rows.push(row);
        }
        append.head = Some(AuditHead { size: 300, frontier: frontier.encode() });
        store.audit_append(&append).unwrap();
        let log = AuditLog::open(store.clone(), vault.clone()).unwrap();
        let recs: Vec<NewRecord> = (300..400).map(|i| NewRecord { partition: Some(partition), client_id: "c1".into(), entry: entry(i) }).collect();
        log.record_blocking(recs).unwrap();
        drop(log);
        let report = crate::verify(&*store, &vault, None).unwrap();
        assert_eq!((report.records, report.signed_size), (400, 400));
        let log = AuditLog::open(store.clone(), vault.clone()).unwrap();
        let mine = log.by_partition(&partition, None, 1000).unwrap();
        assert_eq!(mine.len(), 400);
        for o in &mine {
            assert_eq!(o.entry, entry(o.seq), "record {}", o.seq);
        }
        let sealed = |seq| store.audit_rows(seq, 1).unwrap()[0].sealed.len();
        // The regression guard of the compact format, on a record of a search touching five
        // resources: measured 666 bytes sealed as JSON and 201 compact (0.30).
        let (old, new) = (sealed(0), sealed(300));
        assert!(new * 2 < old, "compact record {new} bytes, JSON record {old}");
    }
}
