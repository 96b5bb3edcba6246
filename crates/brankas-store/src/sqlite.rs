//! The embedded backend: one SQLite database file in the data directory.
//!
//! WAL mode with `synchronous=FULL`: a commit is on disk before it returns, so acknowledged
//! writes survive `kill -9` and power loss. One writer connection (SQLite allows one writer at
//! a time anyway) and a small pool of reader connections that read concurrently with it.

use std::ffi::c_int;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, MAIN_DB, OpenFlags, OptionalExtension, TransactionBehavior, params};

mod maintenance;
pub use maintenance::{CheckDepth, FileCheck};

use crate::{
    AlertRow, AuditAppend, AuditCheckpointRow, AuditHead, AuditRow, BlindTerm, EntryRow, Expect, GuardAdmission, ListEntry, PartitionId, RecordKey, Result, StateCounters, Store,
    StoreError, StoredDek, VersionRow, WrappedKey, WriteBatch,
};

/// The layout version this code writes, kept in `PRAGMA user_version`. Version 1 (no
/// `user_version`) indexed the blind table by record as well; [`migrate_v1`] converts it.
/// Version 2 had no `list_entries`; [`migrate_list_entries`] adds it. Version 3 had no search
/// entries; [`migrate_entries`] adds their (empty) table.
const LAYOUT: i64 = 4;

/// Every table is keyed for the one access path it serves, and each secondary index costs an
/// entry at a random position per insert (the keys are keyed hashes), so there are as few as
/// the reads need: `versions_key` (vread, history, the newest-version check) and
/// `current_partition` (compartment reads; type and system history go through it to each
/// record's versions, rather than an index of versions by partition that every write would
/// pay for). A record's own blind terms are kept in one row of
/// `blind_terms`, so replacing them needs no index over `blind` by record.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS deks (partition BLOB PRIMARY KEY, wrapped BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    rkey BLOB NOT NULL, version INTEGER NOT NULL, partition BLOB NOT NULL, rtype TEXT NOT NULL,
    deleted INTEGER NOT NULL, last_updated INTEGER NOT NULL, dek_version INTEGER NOT NULL,
    sealed BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS versions_key ON versions (rkey, version);
CREATE TABLE IF NOT EXISTS current (
    rkey BLOB PRIMARY KEY, version INTEGER NOT NULL, partition BLOB NOT NULL, rtype TEXT NOT NULL,
    deleted INTEGER NOT NULL, vrow INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS current_partition ON current (partition, rtype);
CREATE TABLE IF NOT EXISTS entries (rkey BLOB PRIMARY KEY, version INTEGER NOT NULL, entry BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blind (term BLOB NOT NULL, rkey BLOB NOT NULL, PRIMARY KEY (term, rkey)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blind_terms (rkey BLOB PRIMARY KEY, terms BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS clients (client_id TEXT PRIMARY KEY, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS once (key BLOB PRIMARY KEY, expires INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS list_entries (list BLOB NOT NULL, entry BLOB NOT NULL, sealed BLOB NOT NULL, PRIMARY KEY (list, entry)) WITHOUT ROWID;
"#;

/// The audit log lives in a file of its own beside the database (`<name>.audit.db`), with
/// its own writer: its appends (a group commit per batch of requests) never queue behind data
/// commits, nor they behind it. Positions are the rowid; records are only ever appended.
const AUDIT_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit_log (seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, partition BLOB, actor BLOB NOT NULL, sealed BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS audit_actor ON audit_log (actor, seq);
CREATE TABLE IF NOT EXISTS audit_by_partition (run INTEGER NOT NULL, partition BLOB NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (run, partition, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_folded (id INTEGER PRIMARY KEY CHECK (id = 0), upto INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit_nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_checkpoints (size INTEGER PRIMARY KEY, time INTEGER NOT NULL, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY CHECK (id = 0), size INTEGER NOT NULL, frontier BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit_archived (id INTEGER PRIMARY KEY CHECK (id = 0), first INTEGER NOT NULL, note TEXT NOT NULL);
"#;

/// Records per run of the audit log's partition index (`audit_by_partition`). A patient's
/// partition is a keyed hash, so an index on `(partition, seq)` takes each new record at a
/// random leaf: a 4 KiB page written per record at every group commit, and, once the log
/// outgrows the page cache, a page read too (the append rate fell from 12,000 to 7,500
/// records/s as one log grew to two million records). Instead the hot append writes the
/// records alone, in position order; each time the log completes a run of this many
/// records, the same transaction folds the run's `(partition, seq)` pairs in sorted order
/// under the run's number, which writes them at the index's right edge. A query by
/// partition reads the unfolded tail from the records themselves (at most one run) and
/// seeks once per folded run.
const AUDIT_RUN_BITS: u32 = 14;

/// Rows deleted per transaction when archived records leave the hot file, and free pages
/// returned per transaction: each holds the audit writer briefly, so a running server's
/// appends wait milliseconds, not the whole archive.
const ARCHIVE_CHUNK: i64 = 4_096;
const VACUUM_PAGES: i64 = 4_096;

/// Security state (patient budgets, canaries, alerts) in a third file, `<name>.guard.db`,
/// with `synchronous=NORMAL`: its writes happen on the request path (a client reaching a
/// patient for the first time in a window) and must not each wait for an fsync. WAL keeps
/// them across a process crash; a power failure can lose the last moments of counts and
/// alerts (suspensions are in the registry, which is fully durable).
const GUARD_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS guard_seen (client TEXT NOT NULL, window INTEGER NOT NULL, partition BLOB NOT NULL, PRIMARY KEY (client, window, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS guard_count (client TEXT NOT NULL, window INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (client, window)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS canaries (partition BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS guard_addresses (client TEXT NOT NULL, address TEXT NOT NULL, first_seen INTEGER NOT NULL, PRIMARY KEY (client, address)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS guard_counters (client TEXT NOT NULL, counter TEXT NOT NULL, day INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (client, counter, day)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (id INTEGER PRIMARY KEY, time INTEGER NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL, client TEXT, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS guard_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"#;

/// Counters the state anchor follows, in the main database (created on open, whatever the
/// layout: older releases ignore the table). `versions` is the number of version rows,
/// raised in the transaction of every commit; a database from before it is counted once.
const COUNTERS_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;";

/// Reader connections at most. Each holds its own page cache and prepared statements, so
/// they are opened once and kept: a request that finds them all busy waits for one rather
/// than opening (and re-parsing the schema on) a throwaway connection.
const READERS: usize = 8;

/// The reader connections: idle ones, and how many exist in all (idle or lent out).
struct Readers {
    idle: Vec<Connection>,
    open: usize,
    /// Threads waiting for a connection (woken only when there are some).
    waiting: usize,
}

/// A write batch waiting for a group commit, and where its outcome goes.
struct Queued {
    batch: WriteBatch,
    outcome: Arc<Mutex<Option<Result<()>>>>,
}

/// Pages in the WAL after which a commit wakes the background checkpointer (SQLite's own
/// automatic checkpoint threshold) ...
const CHECKPOINT_SOON: c_int = 1000;
/// ... and after which the committing writer checkpoints itself, waiting for it: the
/// checkpointer has fallen behind, and the WAL (which every read searches) must not grow
/// without bound. 65,536 pages of 4 KiB is 256 MiB.
const CHECKPOINT_NOW: c_int = 65_536;

/// Wakes the checkpointer thread: (a checkpoint is due, stop).
struct CheckpointSignal {
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl CheckpointSignal {
    fn set(&self, due: bool, stop: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.0 |= due;
            s.1 |= stop;
        }
        self.cv.notify_one();
    }
}

/// The SQLite backend.
pub struct SqliteStore {
    path: std::path::PathBuf,
    writer: Mutex<Connection>,
    /// Batches handed to [`Store::commit`] and not yet committed: whoever next holds the
    /// writer commits all of them in one transaction (one sync for the group).
    queued: Mutex<Vec<Queued>>,
    audit_writer: Mutex<Connection>,
    audit_reader: Mutex<Connection>,
    guard: Mutex<Connection>,
    readers: Mutex<Readers>,
    reader_freed: Condvar,
    checkpoint_signal: Arc<CheckpointSignal>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.checkpoint_signal.set(false, true);
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
    }
}

/// Copies committed WAL pages into the database file on its own connection and thread, so
/// that a commit pays for its WAL append and fsync only, not for the checkpoint (copy and
/// fsync of the database file) that SQLite would otherwise run inside it. A PASSIVE
/// checkpoint never blocks readers or the writer.
fn checkpointer(conn: Connection, signal: Arc<CheckpointSignal>) {
    loop {
        {
            let Ok(mut s) = signal.state.lock() else { return };
            while !s.0 && !s.1 {
                s = match signal.cv.wait(s) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
            if s.1 {
                return;
            }
            s.0 = false;
        }
        // A failure (busy with another checkpoint, I/O) leaves the pages in the WAL, where
        // they are durable and readable; the next commit wakes us again, and the writer's
        // own checkpoint bounds the WAL.
        let _ = conn.wal_checkpoint_v2(Some(MAIN_DB), CheckpointMode::PASSIVE);
    }
}

/// A SQLite error as the store's. Damage (a malformed page, a file that is not a database, a
/// stored value of the wrong shape) is [`StoreError::Corrupt`], never a transient backend
/// failure: retrying cannot help, and it must be reported as damaged data.
fn be(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, C::DatabaseCorrupt | C::NotADatabase) => StoreError::Corrupt,
        rusqlite::Error::InvalidColumnType(..) | rusqlite::Error::FromSqlConversionFailure(..) => StoreError::Corrupt,
        _ => StoreError::Backend(e.to_string()),
    }
}

/// Creates a database file readable by its owner only (0600) before SQLite opens it (SQLite
/// gives its `-wal` and `-shm` files the mode of the database file), and narrows the mode of
/// an existing one (files made by earlier releases were 0644).
fn owner_only(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |e: std::io::Error| StoreError::Backend(format!("{}: {e}", path.display()));
        std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path).map_err(io)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_os_string();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            match std::fs::metadata(&p) {
                Ok(m) if m.permissions().mode() & 0o077 != 0 => std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(io)?,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
    }
    Ok(())
}

fn open_conn(path: &Path, write: bool) -> Result<Connection> {
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let c = Connection::open_with_flags(path, flags).map_err(be)?;
    c.busy_timeout(std::time::Duration::from_secs(10)).map_err(be)?;
    // temp_store=MEMORY: SQLite's temporary files never reach the disk.
    c.execute_batch("PRAGMA synchronous=FULL; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-65536;").map_err(be)?;
    Ok(c)
}

/// Brings the database to [`LAYOUT`]: creates a new one, converts an older one in one
/// transaction, refuses a newer one (written by a later release).
fn prepare_layout(c: &mut Connection) -> Result<()> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Exclusive).map_err(be)?;
    let layout: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(be)?;
    let has_tables: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 'versions')", [], |r| r.get(0)).map_err(be)?;
    match layout {
        LAYOUT => {}
        0 if !has_tables => tx.execute_batch(SCHEMA).map_err(be)?,
        0 => {
            migrate_v1(&tx)?;
            migrate_list_entries(&tx)?;
            migrate_entries(&tx)?;
        }
        2 => {
            migrate_list_entries(&tx)?;
            migrate_entries(&tx)?;
        }
        3 => migrate_entries(&tx)?,
        n if n > LAYOUT => return Err(StoreError::Backend(format!("database layout {n} is newer than this release reads ({LAYOUT})"))),
        n => return Err(StoreError::Backend(format!("unknown database layout {n}"))),
    }
    tx.execute_batch(&format!("PRAGMA user_version = {LAYOUT};")).map_err(be)?;
    tx.commit().map_err(be)
}

/// Layout 1 to 2: each record's blind terms move into one `blind_terms` row, the
/// `blind_rkey` index goes, and `deks` loses its rowid.
fn migrate_v1(tx: &Connection) -> Result<()> {
    tx.execute_batch(SCHEMA).map_err(be)?; // only creates what is missing (blind_terms)
    {
        let mut rows = tx.prepare("SELECT rkey, term FROM blind ORDER BY rkey, term").map_err(be)?;
        let mut ins = tx.prepare("INSERT INTO blind_terms (rkey, terms) VALUES (?1, ?2)").map_err(be)?;
        let mut it = rows.query([]).map_err(be)?;
        let mut cur: Option<(Vec<u8>, Vec<u8>)> = None;
        while let Some(r) = it.next().map_err(be)? {
            let (k, t): (Vec<u8>, Vec<u8>) = (r.get(0).map_err(be)?, r.get(1).map_err(be)?);
            match &mut cur {
                Some((ck, terms)) if *ck == k => terms.extend_from_slice(&t),
                _ => {
                    if let Some((ck, terms)) = cur.take() {
                        ins.execute(params![ck, terms]).map_err(be)?;
                    }
                    cur = Some((k, t));
                }
            }
        }
        if let Some((ck, terms)) = cur {
            ins.execute(params![ck, terms]).map_err(be)?;
        }
    }
    tx.execute_batch(
        "DROP INDEX IF EXISTS blind_rkey;
         CREATE TABLE deks_v2 (partition BLOB PRIMARY KEY, wrapped BLOB NOT NULL) WITHOUT ROWID;
         INSERT INTO deks_v2 (partition, wrapped) SELECT partition, wrapped FROM deks;
         DROP TABLE deks;
         ALTER TABLE deks_v2 RENAME TO deks;",
    )
    .map_err(be)
}

/// Layout 2 to 3: the table of list entries (facility work lists, which earlier releases kept
/// as whole documents among the versions), and the mark that such documents may be stored
/// ([`crate::META_LEGACY_LISTS`]): the engine reads them beside the entries.
fn migrate_list_entries(tx: &Connection) -> Result<()> {
    tx.execute_batch("CREATE TABLE IF NOT EXISTS list_entries (list BLOB NOT NULL, entry BLOB NOT NULL, sealed BLOB NOT NULL, PRIMARY KEY (list, entry)) WITHOUT ROWID;")
        .map_err(be)?;
    tx.execute("INSERT INTO meta (name, value) VALUES (?1, x'01') ON CONFLICT(name) DO NOTHING", [crate::META_LEGACY_LISTS]).map_err(be)?;
    Ok(())
}

/// Layout 2 to 3: the `entries` table of sealed search entries, empty. Records written
/// before have none until their next version; searches open those records whole.
fn migrate_entries(tx: &Connection) -> Result<()> {
    tx.execute_batch("CREATE TABLE IF NOT EXISTS entries (rkey BLOB PRIMARY KEY, version INTEGER NOT NULL, entry BLOB NOT NULL) WITHOUT ROWID;").map_err(be)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        for p in [path.to_path_buf(), Self::audit_path(path), path.with_extension("guard.db")] {
            owner_only(&p)?;
        }
        let mut w = open_conn(path, true)?;
        w.execute_batch("PRAGMA journal_mode=WAL;").map_err(be)?;
        prepare_layout(&mut w)?;
        w.execute_batch(COUNTERS_SCHEMA).map_err(be)?;
        let counted: bool = w.query_row("SELECT EXISTS (SELECT 1 FROM counters WHERE name = 'versions')", [], |r| r.get(0)).map_err(be)?;
        if !counted {
            w.execute("INSERT OR IGNORE INTO counters (name, n) SELECT 'versions', COUNT(*) FROM versions", []).map_err(be)?;
        }
        let signal = Arc::new(CheckpointSignal { state: Mutex::new((false, false)), cv: Condvar::new() });
        let hook_signal = signal.clone();
        // Replaces SQLite's automatic checkpoint. The hook must not fail: its error would be
        // reported as the commit's, after the commit has happened.
        w.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: c_int| {
            if pages >= CHECKPOINT_NOW {
                let _ = wal.checkpoint_v2(CheckpointMode::RESTART);
            } else if pages >= CHECKPOINT_SOON {
                hook_signal.set(true, false);
            }
            Ok(())
        }))
        .map_err(be)?;
        let audit_path = Self::audit_path(path);
        let mut aw = open_conn(&audit_path, true)?;
        // Incremental auto-vacuum (effective on a new file, before its first table): archiving
        // can hand freed pages back in short steps instead of rewriting the file.
        aw.execute_batch("PRAGMA auto_vacuum=INCREMENTAL; PRAGMA journal_mode=WAL;").map_err(be)?;
        aw.execute_batch(AUDIT_SCHEMA).map_err(be)?;
        prepare_audit_index(&mut aw)?;
        let ar = open_conn(&audit_path, false)?;
        let guard = open_conn(&path.with_extension("guard.db"), true)?;
        guard.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;").map_err(be)?;
        guard.execute_batch(GUARD_SCHEMA).map_err(be)?;
        let epoch = brankas_vault::random_id(16).map_err(|e| StoreError::Backend(e.to_string()))?;
        guard.execute("INSERT OR IGNORE INTO guard_meta (name, value) VALUES ('epoch', ?1)", [epoch]).map_err(be)?;
        let ck = open_conn(path, true)?;
        let thread_signal = signal.clone();
        let checkpointer = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpointer(ck, thread_signal))
            .map_err(|e| StoreError::Backend(format!("checkpointer thread: {e}")))?;
        Ok(Self {
            path: path.to_owned(),
            writer: Mutex::new(w),
            queued: Mutex::new(Vec::new()),
            audit_writer: Mutex::new(aw),
            audit_reader: Mutex::new(ar),
            guard: Mutex::new(guard),
            readers: Mutex::new(Readers { idle: Vec::new(), open: 0, waiting: 0 }),
            reader_freed: Condvar::new(),
            checkpoint_signal: signal,
            checkpointer: Some(checkpointer),
        })
    }

    /// The audit log's file for the database at `path`.
    pub fn audit_path(path: &Path) -> std::path::PathBuf {
        path.with_extension("audit.db")
    }

    fn audit_read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let c = self.audit_reader.lock().map_err(|_| StoreError::Backend("audit reader poisoned".into()))?;
        f(&c).map_err(be)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let poisoned = || StoreError::Backend("reader pool poisoned".into());
        let conn = {
            let mut pool = self.readers.lock().map_err(|_| poisoned())?;
            loop {
                if let Some(c) = pool.idle.pop() {
                    break Some(c);
                }
                if pool.open < READERS {
                    pool.open += 1;
                    break None;
                }
                pool.waiting += 1;
                let woken = self.reader_freed.wait(pool);
                pool = woken.map_err(|_| poisoned())?;
                pool.waiting -= 1;
            }
        };
        let conn = match conn {
            Some(c) => c,
            None => match open_conn(&self.path, false) {
                Ok(c) => c,
                Err(e) => {
                    self.release(None);
                    return Err(e);
                }
            },
        };
        // The connection goes back to the pool even if `f` panics.
        struct Lent<'a> {
            store: &'a SqliteStore,
            conn: Option<Connection>,
        }
        impl Drop for Lent<'_> {
            fn drop(&mut self) {
                self.store.release(self.conn.take());
            }
        }
        let lent = Lent { store: self, conn: Some(conn) };
        f(lent.conn.as_ref().expect("lent connection")).map_err(be)
    }

    /// Returns a reader connection to the pool (or, with `None`, gives up its slot).
    fn release(&self, conn: Option<Connection>) {
        let waiting = match self.readers.lock() {
            Ok(mut pool) => {
                match conn {
                    Some(c) => pool.idle.push(c),
                    None => pool.open -= 1,
                }
                pool.waiting
            }
            Err(_) => 1,
        };
        // A futex wake per read costs a system call: only when someone waits.
        if waiting > 0 {
            self.reader_freed.notify_one();
        }
    }

    fn write<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.writer.lock().map_err(|_| StoreError::Backend("writer poisoned".into()))?;
        f(&mut conn)
    }

    /// Runs `PRAGMA wal_checkpoint(TRUNCATE)`: folds the WAL into the main file (used before
    /// a backup copy and by tests that inspect the file).
    pub fn checkpoint(&self) -> Result<()> {
        self.write(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").map_err(be))
    }
}

const ROW_COLS: &str = "v.rkey, v.version, v.partition, v.rtype, v.deleted, v.last_updated, v.dek_version, v.sealed";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
    Ok(VersionRow {
        key: RecordKey(blob32(r.get_ref(0)?.as_blob()?)?),
        version: r.get::<_, i64>(1)? as u64,
        partition: PartitionId(blob32(r.get_ref(2)?.as_blob()?)?),
        resource_type: r.get(3)?,
        deleted: r.get::<_, i64>(4)? != 0,
        last_updated_us: r.get(5)?,
        dek_version: r.get::<_, i64>(6)? as u32,
        sealed: r.get(7)?,
    })
}

/// The current pointer's own columns and the record's newest version, read beside the version
/// row it names (`c` joined to `v`, after [`ROW_COLS`]).
const CUR_COLS: &str = "c.rkey, c.version, c.partition, c.rtype, c.deleted, (SELECT MAX(x.version) FROM versions x WHERE x.rkey = c.rkey)";

/// A current row, checked: the pointer must agree with the version row it names, and that row
/// must be the record's newest version. A pointer edited behind the store's back (rolled back
/// to an older, authentic version, or aimed at another record's row) is reported as
/// [`StoreError::Corrupt`] instead of being served. (A rollback that also deletes the newer
/// version rows is not detectable here: the version count is anchored outside the database.)
fn current_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<VersionRow>> {
    let v = row(r)?;
    let ok = r.get_ref(8)?.as_blob()? == &v.key.0[..]
        && r.get::<_, i64>(9)? as u64 == v.version
        && r.get_ref(10)?.as_blob()? == &v.partition.0[..]
        && r.get_ref(11)?.as_str()? == v.resource_type
        && (r.get::<_, i64>(12)? != 0) == v.deleted
        && r.get::<_, Option<i64>>(13)?.map(|m| m as u64) == Some(v.version);
    Ok(if ok { Ok(v) } else { Err(StoreError::Corrupt) })
}

/// The columns of a version row before its sealed resource (SQLite reads a row's columns
/// in order: stopping before `sealed` leaves its overflow pages unread).
const FACT_COLS: &str = "v.rkey, v.version, v.partition, v.rtype, v.deleted, v.last_updated, v.dek_version";

/// Current rows' facts and their search entries (of the same version), filtered by `filter`.
fn entries_sql(filter: &str) -> String {
    format!("SELECT {FACT_COLS}, {CUR_COLS}, e.version, e.entry FROM current c JOIN versions v ON v.rowid = c.vrow LEFT JOIN entries e ON e.rkey = c.rkey WHERE {filter}")
}

/// A current row's facts and entry, checked as [`current_row`] checks the pointer.
fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<EntryRow>> {
    let key = RecordKey(blob32(r.get_ref(0)?.as_blob()?)?);
    let version = r.get::<_, i64>(1)? as u64;
    let partition = PartitionId(blob32(r.get_ref(2)?.as_blob()?)?);
    let resource_type: String = r.get(3)?;
    let deleted = r.get::<_, i64>(4)? != 0;
    let ok = r.get_ref(7)?.as_blob()? == &key.0[..]
        && r.get::<_, i64>(8)? as u64 == version
        && r.get_ref(9)?.as_blob()? == &partition.0[..]
        && r.get_ref(10)?.as_str()? == resource_type
        && (r.get::<_, i64>(11)? != 0) == deleted
        && r.get::<_, Option<i64>>(12)?.map(|m| m as u64) == Some(version);
    if !ok {
        return Ok(Err(StoreError::Corrupt));
    }
    // An entry of another version is stale (its record was rewritten without one): none.
    let entry = match r.get::<_, Option<i64>>(13)? {
        Some(v) if v as u64 == version => r.get::<_, Option<Vec<u8>>>(14)?,
        _ => None,
    };
    Ok(Ok(EntryRow { key, version, partition, resource_type, last_updated_us: r.get(5)?, dek_version: r.get::<_, i64>(6)? as u32, entry }))
}

/// Current rows with their version rows, filtered by `filter`.
///
/// The filters compare against `CAST(?n AS ...)`, not a bare `?n`: with a bare parameter,
/// SQLite's constant propagation across the join marks the statement as depending on the
/// bound value, and every execution re-prepares it (measured: a full re-parse on every read).
/// The cast keeps the same index plan and makes the prepared statement reusable.
fn current_sql(filter: &str) -> String {
    format!("SELECT {ROW_COLS}, {CUR_COLS} FROM current c JOIN versions v ON v.rowid = c.vrow WHERE {filter}")
}
const KEY_FILTER: &str = "c.rkey = CAST(?1 AS BLOB)";
const PARTITION_TYPE_FILTER: &str = "c.partition = CAST(?1 AS BLOB) AND c.rtype = CAST(?2 AS TEXT) AND c.deleted = 0";
const PARTITION_FILTER: &str = "c.partition = CAST(?1 AS BLOB) AND c.deleted = 0";

/// The statements of the hot read paths, formatted once (a statement cache lookup hashes the
/// text; formatting it on every call cost an allocation per read).
struct Statements {
    current_by_key: String,
    current_by_type: String,
    current_by_partition: String,
    entries_by_type: String,
    entries_by_partition: String,
    version: String,
    history: String,
    versions_by_type: String,
    versions_by_partition: String,
}

static SQL: std::sync::LazyLock<Statements> = std::sync::LazyLock::new(|| Statements {
    current_by_key: current_sql(KEY_FILTER),
    current_by_type: current_sql(PARTITION_TYPE_FILTER),
    current_by_partition: current_sql(PARTITION_FILTER),
    entries_by_type: entries_sql(PARTITION_TYPE_FILTER),
    entries_by_partition: entries_sql(PARTITION_FILTER),
    version: format!("SELECT {ROW_COLS} FROM versions v WHERE v.rkey = ?1 AND v.version = ?2"),
    history: format!("SELECT {ROW_COLS} FROM versions v WHERE v.rkey = ?1 AND v.version < ?2 ORDER BY v.version DESC LIMIT ?3"),
    versions_by_type: versions_sql("AND c.rtype = CAST(?7 AS TEXT)"),
    versions_by_partition: versions_sql(""),
});

/// The places ([`crate::VersionPos`]) of a partition's versions, newest first: of the records
/// the partition holds (through `current_partition`), the versions sealed in it. `?1`
/// partition, `?2` since, `?3`/`?4`/`?5` the place to continue after (time, record key,
/// version), `?6` limit. Only the places are sorted; the rows are read by record and version.
fn versions_sql(filter: &str) -> String {
    format!(
        "SELECT v.last_updated, v.rkey, v.version FROM current c JOIN versions v ON v.rkey = c.rkey \
         WHERE c.partition = CAST(?1 AS BLOB) {filter} AND v.partition = CAST(?1 AS BLOB) AND v.last_updated >= ?2 \
         AND (v.last_updated, v.rkey, v.version) < (?3, CAST(?4 AS BLOB), ?5) ORDER BY v.last_updated DESC, v.rkey DESC, v.version DESC LIMIT ?6"
    )
}

fn blob32(b: &[u8]) -> rusqlite::Result<[u8; 32]> {
    b.try_into().map_err(|_| rusqlite::Error::InvalidColumnType(0, "blob32".into(), rusqlite::types::Type::Blob))
}

fn dek_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Vec<u8>, Vec<u8>)> {
    Ok((r.get(0)?, r.get(1)?))
}

fn to_dek((p, w): (Vec<u8>, Vec<u8>)) -> Result<StoredDek> {
    Ok(StoredDek { partition: PartitionId(p.as_slice().try_into().map_err(|_| StoreError::Corrupt)?), wrapped: WrappedKey::from_bytes(&w).map_err(|_| StoreError::Corrupt)? })
}

/// Commits `batches` in one transaction, each under its own savepoint, with one outcome
/// each, as if committed one by one in order. A batch whose own expectation fails (conflict,
/// data-key race, missing key) is rolled back alone; any other failure while applying
/// abandons the group, and each batch is then committed alone, so that one batch's failure
/// is never another's.
fn commit_group(c: &mut Connection, batches: &[&WriteBatch]) -> Vec<Result<()>> {
    let alone = |c: &mut Connection, b: &WriteBatch| -> Result<()> {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(be)?;
        apply(&tx, b)?; // dropping tx on error rolls back
        tx.commit().map_err(be)
    };
    if let [one] = batches {
        return vec![alone(c, one)];
    }
    // The transaction could not begin or commit: nothing of the group is written.
    let all_fail = |e: StoreError| batches.iter().map(|_| Err(e.clone())).collect();
    let mut tx = match c.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return all_fail(be(e)),
    };
    match apply_each(&mut tx, batches) {
        Ok(out) => match tx.commit() {
            Ok(()) => out,
            Err(e) => all_fail(be(e)),
        },
        // Applying failed for another reason than a batch's own expectation: dropping `tx`
        // rolls the whole group back; each batch goes alone, to find out whose it was.
        Err(_) => {
            drop(tx);
            batches.iter().map(|b| alone(c, b)).collect()
        }
    }
}

/// Applies each batch inside `tx` under a savepoint of its own: a batch whose own expectation
/// fails (conflict, data-key race, missing key, a unique term held) is rolled back alone, its outcome that error.
/// Any other failure is returned; the caller then drops `tx`, which rolls every batch back.
fn apply_each(tx: &mut rusqlite::Transaction<'_>, batches: &[&WriteBatch]) -> Result<Vec<Result<()>>> {
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let sp = tx.savepoint().map_err(be)?;
        match apply(&sp, b) {
            Ok(()) => {
                sp.commit().map_err(be)?;
                out.push(Ok(()));
            }
            Err(e @ (StoreError::Conflict { .. } | StoreError::DataKeyRace | StoreError::MissingDataKey | StoreError::TermHeld { .. })) => {
                drop(sp); // rolls back this batch only
                out.push(Err(e));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Applies one batch inside an open transaction. On a failed expectation returns Conflict and
/// leaves the rollback to the caller.
fn apply(tx: &Connection, batch: &WriteBatch) -> Result<()> {
    for d in &batch.deks {
        let bytes = d.wrapped.to_bytes();
        let inserted = tx
            .prepare_cached("INSERT INTO deks (partition, wrapped) VALUES (?1, ?2) ON CONFLICT(partition) DO NOTHING")
            .map_err(be)?
            .execute(params![&d.partition.0[..], &bytes])
            .map_err(be)?;
        if inserted == 0 {
            let stored: Vec<u8> = tx.prepare_cached("SELECT wrapped FROM deks WHERE partition = ?1").map_err(be)?.query_row([&d.partition.0[..]], |r| r.get(0)).map_err(be)?;
            if stored != bytes {
                return Err(StoreError::DataKeyRace);
            }
        }
    }
    // No version may be stored under a partition without a data key: it could never be read.
    let mut checked: Vec<&PartitionId> = Vec::new();
    for nv in &batch.versions {
        let p = &nv.row.partition;
        if checked.contains(&p) {
            continue;
        }
        let has: bool = tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM deks WHERE partition = ?1)").map_err(be)?.query_row([&p.0[..]], |r| r.get(0)).map_err(be)?;
        if !has {
            return Err(StoreError::MissingDataKey);
        }
        checked.push(p);
    }
    for (i, nv) in batch.versions.iter().enumerate() {
        let r = &nv.row;
        let cur: Option<i64> =
            tx.prepare_cached("SELECT version FROM current WHERE rkey = ?1").map_err(be)?.query_row(params![&r.key.0[..]], |x| x.get(0)).optional().map_err(be)?;
        let ok = match nv.expect {
            Expect::Any => true,
            Expect::Absent => cur.is_none(),
            Expect::Version(v) => cur == Some(v as i64),
        };
        // A version number must always grow, whatever the caller expected.
        if !ok || cur.is_some_and(|c| c as u64 >= r.version) {
            return Err(StoreError::Conflict { index: i });
        }
        tx.prepare_cached("INSERT INTO versions (rkey, version, partition, rtype, deleted, last_updated, dek_version, sealed) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)")
            .map_err(be)?
            .execute(params![&r.key.0[..], r.version as i64, &r.partition.0[..], r.resource_type, r.deleted as i64, r.last_updated_us, r.dek_version as i64, r.sealed])
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => StoreError::Conflict { index: i },
                e => be(e),
            })?;
        let vrow = tx.last_insert_rowid();
        tx.prepare_cached(
            "INSERT INTO current (rkey, version, partition, rtype, deleted, vrow) VALUES (?1,?2,?3,?4,?5,?6) \
             ON CONFLICT(rkey) DO UPDATE SET version=excluded.version, partition=excluded.partition, rtype=excluded.rtype, deleted=excluded.deleted, vrow=excluded.vrow",
        )
        .map_err(be)?
        .execute(params![&r.key.0[..], r.version as i64, &r.partition.0[..], r.resource_type, r.deleted as i64, vrow])
        .map_err(be)?;
        match &nv.entry {
            Some(e) => tx
                .prepare_cached("INSERT INTO entries (rkey, version, entry) VALUES (?1,?2,?3) ON CONFLICT(rkey) DO UPDATE SET version=excluded.version, entry=excluded.entry")
                .map_err(be)?
                .execute(params![&r.key.0[..], r.version as i64, e])
                .map_err(be)?,
            None => tx.prepare_cached("DELETE FROM entries WHERE rkey = ?1").map_err(be)?.execute(params![&r.key.0[..]]).map_err(be)?,
        };
    }
    if !batch.versions.is_empty() {
        tx.prepare_cached("UPDATE counters SET n = n + ?1 WHERE name = 'versions'").map_err(be)?.execute([batch.versions.len() as i64]).map_err(be)?;
    }
    for (key, terms) in &batch.index {
        let old: Option<Vec<u8>> =
            tx.prepare_cached("SELECT terms FROM blind_terms WHERE rkey = ?1").map_err(be)?.query_row(params![&key.0[..]], |r| r.get(0)).optional().map_err(be)?;
        if let Some(old) = &old {
            if old.len() % 32 != 0 {
                return Err(StoreError::Corrupt);
            }
            let mut del = tx.prepare_cached("DELETE FROM blind WHERE term = ?1 AND rkey = ?2").map_err(be)?;
            for t in old.chunks_exact(32) {
                del.execute(params![t, &key.0[..]]).map_err(be)?;
            }
        }
        let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO blind (term, rkey) VALUES (?1, ?2)").map_err(be)?;
        let mut all = Vec::with_capacity(terms.len() * 32);
        for t in terms {
            ins.execute(params![&t.0[..], &key.0[..]]).map_err(be)?;
            all.extend_from_slice(&t.0);
        }
        if terms.is_empty() {
            if old.is_some() {
                tx.prepare_cached("DELETE FROM blind_terms WHERE rkey = ?1").map_err(be)?.execute(params![&key.0[..]]).map_err(be)?;
            }
        } else {
            tx.prepare_cached("INSERT INTO blind_terms (rkey, terms) VALUES (?1, ?2) ON CONFLICT(rkey) DO UPDATE SET terms = excluded.terms")
                .map_err(be)?
                .execute(params![&key.0[..], all])
                .map_err(be)?;
        }
    }
    // After every index change of the batch, so that two records of one batch cannot both
    // take a term either.
    let mut other = tx.prepare_cached("SELECT rkey FROM blind WHERE term = ?1 AND rkey != ?2 LIMIT 1").map_err(be)?;
    for (key, term) in &batch.unique {
        let holder: Option<Vec<u8>> = other.query_row(params![&term.0[..], &key.0[..]], |r| r.get(0)).optional().map_err(be)?;
        if let Some(h) = holder {
            return Err(StoreError::TermHeld { holder: RecordKey(h.as_slice().try_into().map_err(|_| StoreError::Corrupt)?) });
        }
    }
    // Appended, never replaced: an entry already stored (the same record joining the same
    // list again) stays as it is, and nothing conflicts.
    let mut ins = tx.prepare_cached("INSERT INTO list_entries (list, entry, sealed) VALUES (?1, ?2, ?3) ON CONFLICT(list, entry) DO NOTHING").map_err(be)?;
    for e in &batch.list_entries {
        ins.execute(params![&e.list[..], &e.entry[..], e.sealed]).map_err(be)?;
    }
    Ok(())
}

fn list_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<ListEntry> {
    Ok(ListEntry { list: blob32(r.get_ref(0)?.as_blob()?)?, entry: blob32(r.get_ref(1)?.as_blob()?)?, sealed: r.get(2)? })
}

impl Store for SqliteStore {
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.read(|c| c.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get(0)).optional())
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        self.write(|c| {
            c.execute("INSERT INTO meta (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = excluded.value", params![name, value]).map_err(be)?;
            Ok(())
        })
    }

    fn get_dek(&self, partition: &PartitionId) -> Result<Option<StoredDek>> {
        self.read(|c| c.prepare_cached("SELECT partition, wrapped FROM deks WHERE partition = ?1")?.query_row([&partition.0[..]], dek_row).optional())?.map(to_dek).transpose()
    }

    fn insert_dek(&self, dek: &StoredDek) -> Result<StoredDek> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(be)?;
            tx.execute("INSERT OR IGNORE INTO deks (partition, wrapped) VALUES (?1, ?2)", params![&dek.partition.0[..], dek.wrapped.to_bytes()]).map_err(be)?;
            let stored = tx.query_row("SELECT partition, wrapped FROM deks WHERE partition = ?1", [&dek.partition.0[..]], dek_row).map_err(be)?;
            tx.commit().map_err(be)?;
            to_dek(stored)
        })
    }

    fn scan_deks(&self, after: Option<&PartitionId>, limit: usize) -> Result<Vec<StoredDek>> {
        let after = after.map(|p| p.0.to_vec()).unwrap_or_default();
        self.read(|c| {
            c.prepare_cached("SELECT partition, wrapped FROM deks WHERE partition > ?1 ORDER BY partition LIMIT ?2")?
                .query_map(params![after, limit as i64], dek_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?
        .into_iter()
        .map(to_dek)
        .collect()
    }

    fn replace_dek(&self, old: &StoredDek, new: &StoredDek) -> Result<bool> {
        self.write(|c| {
            let n = c
                .execute("UPDATE deks SET wrapped = ?1 WHERE partition = ?2 AND wrapped = ?3", params![new.wrapped.to_bytes(), &old.partition.0[..], old.wrapped.to_bytes()])
                .map_err(be)?;
            Ok(n == 1)
        })
    }

    fn erase_partition(&self, partition: &PartitionId) -> Result<u64> {
        self.write(|c| {
            // Freed pages are zeroed, so the ciphertext does not linger in the file (hygiene:
            // the destroyed key is what makes it unreadable).
            c.execute_batch("PRAGMA secure_delete = ON;").map_err(be)?;
            let r = (|| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(be)?;
                tx.execute(
                    "INSERT INTO deks (partition, wrapped) VALUES (?1, ?2) ON CONFLICT(partition) DO UPDATE SET wrapped = excluded.wrapped",
                    params![&partition.0[..], WrappedKey::erased().to_bytes()],
                )
                .map_err(be)?;
                let keys: Vec<Vec<u8>> = {
                    let mut q = tx.prepare("SELECT rkey FROM current WHERE partition = ?1").map_err(be)?;
                    q.query_map(params![&partition.0[..]], |r| r.get(0)).map_err(be)?.collect::<rusqlite::Result<_>>().map_err(be)?
                };
                for k in &keys {
                    let old: Option<Vec<u8>> = tx.query_row("SELECT terms FROM blind_terms WHERE rkey = ?1", params![k], |r| r.get(0)).optional().map_err(be)?;
                    if let Some(old) = old {
                        let mut del = tx.prepare_cached("DELETE FROM blind WHERE term = ?1 AND rkey = ?2").map_err(be)?;
                        for t in old.chunks_exact(32) {
                            del.execute(params![t, k]).map_err(be)?;
                        }
                        tx.execute("DELETE FROM blind_terms WHERE rkey = ?1", params![k]).map_err(be)?;
                    }
                    tx.execute("UPDATE versions SET sealed = x'' WHERE rkey = ?1 AND partition = ?2", params![k, &partition.0[..]]).map_err(be)?;
                    tx.execute("DELETE FROM entries WHERE rkey = ?1", params![k]).map_err(be)?;
                }
                tx.commit().map_err(be)?;
                Ok(keys.len() as u64)
            })();
            let _ = c.execute_batch("PRAGMA secure_delete = OFF;");
            r
        })
    }

    fn current(&self, key: &RecordKey) -> Result<Option<VersionRow>> {
        self.read(|c| c.prepare_cached(&SQL.current_by_key)?.query_row([&key.0[..]], current_row).optional())?.transpose()
    }

    fn version(&self, key: &RecordKey, version: u64) -> Result<Option<VersionRow>> {
        self.read(|c| c.prepare_cached(&SQL.version)?.query_row(params![&key.0[..], version as i64], row).optional())
    }

    fn history(&self, key: &RecordKey, before: Option<u64>, limit: usize) -> Result<Vec<VersionRow>> {
        let before = before.map(|b| b as i64).unwrap_or(i64::MAX);
        self.read(|c| c.prepare_cached(&SQL.history)?.query_map(params![&key.0[..], before, limit as i64], row)?.collect())
    }

    fn partition_versions(
        &self,
        partition: &PartitionId,
        resource_type: Option<&str>,
        since_us: Option<i64>,
        after: Option<&crate::VersionPos>,
        limit: usize,
    ) -> Result<Vec<VersionRow>> {
        let since = since_us.unwrap_or(i64::MIN);
        let (t, k, v) = match after {
            Some(a) => (a.last_updated_us, a.key.0.to_vec(), a.version as i64),
            // After no place: before everything (a key above every key, a version above all).
            None => (i64::MAX, vec![0xFF; 33], i64::MAX),
        };
        let limit = limit.min(i64::MAX as usize) as i64;
        self.read(|c| {
            let place = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(Vec<u8>, i64)> { Ok((r.get(1)?, r.get(2)?)) };
            let places: Vec<(Vec<u8>, i64)> = match resource_type {
                Some(rt) => c.prepare_cached(&SQL.versions_by_type)?.query_map(params![&partition.0[..], since, t, k, v, limit, rt], place)?.collect::<rusqlite::Result<_>>()?,
                None => c.prepare_cached(&SQL.versions_by_partition)?.query_map(params![&partition.0[..], since, t, k, v, limit], place)?.collect::<rusqlite::Result<_>>()?,
            };
            let mut one = c.prepare_cached(&SQL.version)?;
            places.into_iter().map(|(key, version)| one.query_row(params![key, version], row)).collect()
        })
    }

    fn partition_current(&self, partition: &PartitionId, resource_type: Option<&str>) -> Result<Vec<VersionRow>> {
        let rows: Vec<Result<VersionRow>> = self.read(|c| match resource_type {
            Some(t) => c.prepare_cached(&SQL.current_by_type)?.query_map(params![&partition.0[..], t], current_row)?.collect(),
            None => c.prepare_cached(&SQL.current_by_partition)?.query_map(params![&partition.0[..]], current_row)?.collect(),
        })?;
        rows.into_iter().collect()
    }

    fn partition_entries(&self, partition: &PartitionId, resource_type: Option<&str>) -> Result<Vec<EntryRow>> {
        let rows: Vec<Result<EntryRow>> = self.read(|c| match resource_type {
            Some(t) => c.prepare_cached(&SQL.entries_by_type)?.query_map(params![&partition.0[..], t], entry_row)?.collect(),
            None => c.prepare_cached(&SQL.entries_by_partition)?.query_map(params![&partition.0[..]], entry_row)?.collect(),
        })?;
        rows.into_iter().collect()
    }

    fn lookup(&self, term: &BlindTerm) -> Result<Vec<RecordKey>> {
        let keys: Vec<Vec<u8>> = self.read(|c| c.prepare_cached("SELECT rkey FROM blind WHERE term = ?1")?.query_map([&term.0[..]], |r| r.get(0))?.collect())?;
        keys.into_iter().map(|k| Ok(RecordKey(k.as_slice().try_into().map_err(|_| StoreError::Corrupt)?))).collect()
    }

    fn list_entries(&self, lists: &[[u8; 32]]) -> Result<Vec<ListEntry>> {
        let mut tags = lists.to_vec();
        tags.sort_unstable();
        tags.dedup();
        self.read(|c| {
            let mut q = c.prepare_cached("SELECT list, entry, sealed FROM list_entries WHERE list = ?1 ORDER BY entry")?;
            let mut out = Vec::new();
            for t in &tags {
                for e in q.query_map([&t[..]], list_entry)? {
                    out.push(e?);
                }
            }
            Ok(out)
        })
    }

    /// Group commit: the batch joins the queue, and whoever holds the writer next commits
    /// every queued batch in one transaction, each under a savepoint of its own (one sync for
    /// all; each batch all-or-nothing, with its own outcome, as if committed one by one in
    /// queue order). A caller whose batch a leader already committed returns its outcome.
    fn commit(&self, batch: &WriteBatch) -> Result<()> {
        let poisoned = || StoreError::Backend("writer poisoned".into());
        let outcome = Arc::new(Mutex::new(None));
        self.queued.lock().map_err(|_| poisoned())?.push(Queued { batch: batch.clone(), outcome: outcome.clone() });
        let mut conn = self.writer.lock().map_err(|_| poisoned())?;
        if let Some(done) = outcome.lock().map_err(|_| poisoned())?.take() {
            return done;
        }
        // Ours is still queued (only a writer's holder takes batches, and fills every outcome
        // it takes before letting go): lead the group.
        let group = std::mem::take(&mut *self.queued.lock().map_err(|_| poisoned())?);
        let batches: Vec<&WriteBatch> = group.iter().map(|q| &q.batch).collect();
        let results = commit_group(&mut conn, &batches);
        // Every outcome is filled before the writer is let go: a follower that takes it next
        // must find its own.
        let mut mine = None;
        for (q, r) in group.into_iter().zip(results) {
            if Arc::ptr_eq(&q.outcome, &outcome) {
                mine = Some(r);
            } else if let Ok(mut slot) = q.outcome.lock() {
                *slot = Some(r);
            }
        }
        drop(conn);
        mine.unwrap_or_else(|| Err(StoreError::Backend("group commit lost a batch".into())))
    }

    fn commit_many(&self, batches: &[WriteBatch]) -> Result<Vec<Result<()>>> {
        self.write(|c| {
            let mut tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(be)?;
            let out = apply_each(&mut tx, &batches.iter().collect::<Vec<_>>())?;
            tx.commit().map_err(be)?;
            Ok(out)
        })
    }

    fn use_once(&self, key: &[u8; 32], expires_at_us: i64) -> Result<bool> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(be)?;
            // Forget a few expired entries on each use, so the table stays as small as the
            // number of live entries.
            tx.prepare_cached("DELETE FROM once WHERE key IN (SELECT key FROM once WHERE expires < ?1 LIMIT 16)").map_err(be)?.execute([now]).map_err(be)?;
            let fresh = tx
                .prepare_cached("INSERT INTO once (key, expires) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET expires = excluded.expires WHERE once.expires < ?3")
                .map_err(be)?
                .execute(params![&key[..], expires_at_us, now])
                .map_err(be)?
                == 1;
            tx.commit().map_err(be)?;
            Ok(fresh)
        })
    }

    fn get_client(&self, client_id: &str) -> Result<Option<Vec<u8>>> {
        self.read(|c| c.prepare_cached("SELECT doc FROM clients WHERE client_id = ?1")?.query_row([client_id], |r| r.get(0)).optional())
    }

    fn put_client(&self, client_id: &str, doc: &[u8]) -> Result<()> {
        self.write(|c| {
            c.execute("INSERT INTO clients (client_id, doc) VALUES (?1, ?2) ON CONFLICT(client_id) DO UPDATE SET doc = excluded.doc", params![client_id, doc]).map_err(be)?;
            Ok(())
        })
    }

    fn list_clients(&self) -> Result<Vec<String>> {
        self.read(|c| c.prepare_cached("SELECT client_id FROM clients ORDER BY client_id")?.query_map([], |r| r.get(0))?.collect())
    }

    fn audit_head(&self) -> Result<Option<AuditHead>> {
        self.audit_read(|c| {
            c.prepare_cached("SELECT size, frontier FROM audit_head WHERE id = 0")?
                .query_row([], |r| Ok(AuditHead { size: r.get::<_, i64>(0)? as u64, frontier: r.get(1)? }))
                .optional()
        })
    }

    fn audit_append(&self, a: &AuditAppend) -> Result<()> {
        let mut c = self.audit_writer.lock().map_err(|_| StoreError::Backend("audit writer poisoned".into()))?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(be)?;
        let size: u64 =
            tx.prepare_cached("SELECT size FROM audit_head WHERE id = 0").and_then(|mut q| q.query_row([], |r| r.get::<_, i64>(0)).optional()).map_err(be)?.unwrap_or(0) as u64;
        if !a.rows.is_empty() {
            let contiguous = a.rows.iter().enumerate().all(|(i, r)| r.seq == size + i as u64);
            let head_ok = a.head.as_ref().is_some_and(|h| h.size == size + a.rows.len() as u64);
            if !contiguous || !head_ok {
                return Err(StoreError::Conflict { index: 0 });
            }
        }
        {
            let mut ins = tx.prepare_cached("INSERT INTO audit_log (seq, time, partition, actor, sealed) VALUES (?1, ?2, ?3, ?4, ?5)").map_err(be)?;
            for r in &a.rows {
                ins.execute(params![r.seq as i64, r.time_us, r.partition.as_ref().map(|p| &p.0[..]), &r.actor[..], r.sealed]).map_err(be)?;
            }
            let mut node = tx.prepare_cached("INSERT OR REPLACE INTO audit_nodes (level, idx, hash) VALUES (?1, ?2, ?3)").map_err(be)?;
            for (level, idx, hash) in &a.nodes {
                node.execute(params![*level as i64, *idx as i64, &hash[..]]).map_err(be)?;
            }
        }
        if let Some(h) = &a.head {
            tx.prepare_cached("INSERT OR REPLACE INTO audit_head (id, size, frontier) VALUES (0, ?1, ?2)")
                .and_then(|mut q| q.execute(params![h.size as i64, h.frontier]))
                .map_err(be)?;
            fold_audit_runs(&tx, h.size).map_err(be)?;
        }
        if let Some(cp) = &a.checkpoint {
            tx.prepare_cached("INSERT OR REPLACE INTO audit_checkpoints (size, time, note) VALUES (?1, ?2, ?3)")
                .and_then(|mut q| q.execute(params![cp.size as i64, cp.time_us, cp.note]))
                .map_err(be)?;
        }
        tx.commit().map_err(be)
    }

    fn audit_archived(&self) -> Result<Option<(u64, String)>> {
        self.audit_read(|c| c.prepare_cached("SELECT first, note FROM audit_archived WHERE id = 0")?.query_row([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))).optional())
    }

    fn audit_archive(&self, to: u64, note: &str) -> Result<()> {
        let mut c = self.audit_writer.lock().map_err(|_| StoreError::Backend("audit writer poisoned".into()))?;
        {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(be)?;
            let size = tx.query_row("SELECT size FROM audit_head WHERE id = 0", [], |r| r.get::<_, i64>(0)).optional().map_err(be)?.unwrap_or(0) as u64;
            let first = tx.query_row("SELECT first FROM audit_archived WHERE id = 0", [], |r| r.get::<_, i64>(0)).optional().map_err(be)?.unwrap_or(0) as u64;
            if to < first || to > size {
                return Err(StoreError::Conflict { index: 0 });
            }
            tx.execute("INSERT OR REPLACE INTO audit_archived (id, first, note) VALUES (0, ?1, ?2)", params![to as i64, note]).map_err(be)?;
            tx.commit().map_err(be)?;
        }
        loop {
            let n = c.execute("DELETE FROM audit_log WHERE seq < ?1 AND seq < (SELECT MIN(seq) FROM audit_log) + ?2", params![to as i64, ARCHIVE_CHUNK]).map_err(be)?;
            if n == 0 {
                break;
            }
        }
        // The partition index's runs wholly before the mark, then what the run the mark
        // falls in holds before it.
        let to_run = (to as i64) >> AUDIT_RUN_BITS;
        let mut run = c.query_row("SELECT MIN(run) FROM audit_by_partition", [], |r| r.get::<_, Option<i64>>(0)).map_err(be)?.unwrap_or(to_run);
        while run < to_run {
            c.execute("DELETE FROM audit_by_partition WHERE run = ?1", [run]).map_err(be)?;
            run += 1;
        }
        if !to.is_multiple_of(1u64 << AUDIT_RUN_BITS) {
            c.execute("DELETE FROM audit_by_partition WHERE run = ?1 AND seq < ?2", params![to_run, to as i64]).map_err(be)?;
        }
        // A file made before incremental auto-vacuum is rewritten once (a full VACUUM, which
        // holds the writer for its whole run); afterwards free pages go back in short steps.
        let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).map_err(be)?;
        if mode != 2 {
            c.execute_batch("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;").map_err(be)?;
        } else {
            loop {
                let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0)).map_err(be)?;
                if free == 0 {
                    break;
                }
                // Stepped to its end: each step may free only part of the pages asked for.
                let mut st = c.prepare(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})")).map_err(be)?;
                let mut rows = st.query([]).map_err(be)?;
                while rows.next().map_err(be)?.is_some() {}
            }
        }
        // Hands the shrunk file back: the WAL's pages are copied in and the WAL emptied (a
        // reader still in an old snapshot may keep part of it until the next checkpoint).
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(be)?;
        Ok(())
    }

    fn audit_rows(&self, from: u64, limit: usize) -> Result<Vec<AuditRow>> {
        self.audit_read(|c| {
            c.prepare_cached("SELECT seq, time, partition, actor, sealed FROM audit_log WHERE seq >= ?1 ORDER BY seq LIMIT ?2")?
                .query_map(params![from.min(i64::MAX as u64) as i64, limit as i64], audit_row)?
                .collect()
        })
    }

    fn audit_nodes(&self, level: u8, from: u64, limit: usize) -> Result<Vec<(u64, [u8; 32])>> {
        self.audit_read(|c| {
            c.prepare_cached("SELECT idx, hash FROM audit_nodes WHERE level = ?1 AND idx >= ?2 ORDER BY idx LIMIT ?3")?
                .query_map(params![level as i64, from.min(i64::MAX as u64) as i64, limit as i64], |r| Ok((r.get::<_, i64>(0)? as u64, blob32(r.get_ref(1)?.as_blob()?)?)))?
                .collect()
        })
    }

    fn audit_checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<AuditCheckpointRow>> {
        self.audit_read(|c| {
            c.prepare_cached("SELECT size, time, note FROM audit_checkpoints WHERE size >= ?1 ORDER BY size LIMIT ?2")?
                .query_map(params![from_size.min(i64::MAX as u64) as i64, limit as i64], checkpoint_row)?
                .collect()
        })
    }

    fn audit_latest_checkpoint(&self) -> Result<Option<AuditCheckpointRow>> {
        self.audit_read(|c| c.prepare_cached("SELECT size, time, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1")?.query_row([], checkpoint_row).optional())
    }

    fn audit_by_partition(&self, partition: &PartitionId, before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>> {
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        self.audit_read(|c| {
            // One read transaction: a fold between the tail's query and the runs' would
            // move records from one to the other.
            let tx = c.unchecked_transaction()?;
            let folded = audit_folded(&tx)?;
            let mut out: Vec<AuditRow> = tx
                .prepare_cached("SELECT seq, time, partition, actor, sealed FROM audit_log WHERE seq >= ?1 AND seq < ?2 AND partition = ?3 ORDER BY seq DESC LIMIT ?4")?
                .query_map(params![folded, before, &partition.0[..], limit as i64], audit_row)?
                .collect::<rusqlite::Result<_>>()?;
            let top = before.min(folded);
            if top > 0 && out.len() < limit {
                let first = tx.prepare_cached("SELECT first FROM audit_archived WHERE id = 0")?.query_row([], |r| r.get::<_, i64>(0)).optional()?.unwrap_or(0);
                let mut q = tx.prepare_cached(
                    "SELECT l.seq, l.time, l.partition, l.actor, l.sealed FROM audit_by_partition i JOIN audit_log l ON l.seq = i.seq \
                     WHERE i.run = ?1 AND i.partition = ?2 AND i.seq < ?3 ORDER BY i.seq DESC LIMIT ?4",
                )?;
                let mut run = (top - 1) >> AUDIT_RUN_BITS;
                while run >= first >> AUDIT_RUN_BITS && out.len() < limit {
                    let rows = q.query_map(params![run, &partition.0[..], top, (limit - out.len()) as i64], audit_row)?;
                    for r in rows {
                        out.push(r?);
                    }
                    run -= 1;
                }
            }
            Ok(out)
        })
    }

    fn audit_by_actor(&self, actor: &[u8; 32], before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>> {
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        self.audit_read(|c| {
            c.prepare_cached("SELECT seq, time, partition, actor, sealed FROM audit_log WHERE actor = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3")?
                .query_map(params![&actor[..], before, limit as i64], audit_row)?
                .collect()
        })
    }

    fn guard_admit(&self, client: &str, hour: i64, day: i64, partitions: &[PartitionId], per_hour: u32, per_day: u32) -> Result<GuardAdmission> {
        let mut c = self.guard_conn()?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(be)?;
        let mut counts = [0u32; 2];
        let mut fresh: [Vec<&PartitionId>; 2] = [Vec::new(), Vec::new()];
        {
            let mut seen = tx.prepare_cached("SELECT 1 FROM guard_seen WHERE client = ?1 AND window = ?2 AND partition = ?3").map_err(be)?;
            let mut count = tx.prepare_cached("SELECT n FROM guard_count WHERE client = ?1 AND window = ?2").map_err(be)?;
            for (i, w) in guard_windows(hour, day).into_iter().enumerate() {
                let n: i64 = count.query_row(params![client, w], |r| r.get(0)).optional().map_err(be)?.unwrap_or(0);
                let mut uniq: Vec<&PartitionId> = Vec::new();
                for p in partitions {
                    if uniq.contains(&p) {
                        continue;
                    }
                    uniq.push(p);
                    if !seen.exists(params![client, w, &p.0[..]]).map_err(be)? {
                        fresh[i].push(p);
                    }
                }
                counts[i] = (n as u64 + fresh[i].len() as u64).min(u32::MAX as u64) as u32;
            }
        }
        if counts[0] > per_hour || counts[1] > per_day {
            return Ok(GuardAdmission { admitted: false, hour: counts[0], day: counts[1] });
        }
        if fresh.iter().any(|f| !f.is_empty()) {
            {
                let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO guard_seen (client, window, partition) VALUES (?1, ?2, ?3)").map_err(be)?;
                let mut up = tx.prepare_cached("INSERT OR REPLACE INTO guard_count (client, window, n) VALUES (?1, ?2, ?3)").map_err(be)?;
                for (i, w) in guard_windows(hour, day).into_iter().enumerate() {
                    for p in &fresh[i] {
                        ins.execute(params![client, w, &p.0[..]]).map_err(be)?;
                    }
                    up.execute(params![client, w, counts[i] as i64]).map_err(be)?;
                }
            }
            // Windows older than two days are forgotten (now and then, not on every write).
            if brankas_vault::random_id(1).map(|b| b == "00").unwrap_or(false) {
                tx.execute("DELETE FROM guard_seen WHERE (window >= 0 AND window < ?1) OR (window < 0 AND window > ?2)", params![hour - 48, -(day - 2) - 1]).map_err(be)?;
                tx.execute("DELETE FROM guard_count WHERE (window >= 0 AND window < ?1) OR (window < 0 AND window > ?2)", params![hour - 48, -(day - 2) - 1]).map_err(be)?;
            }
            tx.commit().map_err(be)?;
        }
        Ok(GuardAdmission { admitted: true, hour: counts[0], day: counts[1] })
    }

    fn guard_usage(&self, client: &str, hour: i64, day: i64) -> Result<(u32, u32)> {
        let c = self.guard_conn()?;
        let mut q = c.prepare_cached("SELECT n FROM guard_count WHERE client = ?1 AND window = ?2").map_err(be)?;
        let [h, d] = guard_windows(hour, day).map(|w| q.query_row(params![client, w], |r| r.get::<_, i64>(0)).optional().map(|n| n.unwrap_or(0) as u32));
        Ok((h.map_err(be)?, d.map_err(be)?))
    }

    fn canary_add(&self, partitions: &[PartitionId]) -> Result<()> {
        let mut c = self.guard_conn()?;
        let tx = c.transaction().map_err(be)?;
        {
            let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO canaries (partition) VALUES (?1)").map_err(be)?;
            for p in partitions {
                ins.execute([&p.0[..]]).map_err(be)?;
            }
        }
        tx.commit().map_err(be)
    }

    fn canaries_among(&self, partitions: &[PartitionId]) -> Result<Vec<PartitionId>> {
        let c = self.guard_conn()?;
        let mut q = c.prepare_cached("SELECT 1 FROM canaries WHERE partition = ?1").map_err(be)?;
        let mut out = Vec::new();
        for p in partitions {
            if q.exists([&p.0[..]]).map_err(be)? && !out.contains(p) {
                out.push(*p);
            }
        }
        Ok(out)
    }

    fn guard_address(&self, client: &str, address: &str, now_us: i64) -> Result<(bool, u32)> {
        let mut c = self.guard_conn()?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(be)?;
        let known: bool = tx.prepare_cached("SELECT 1 FROM guard_addresses WHERE client = ?1 AND address = ?2").and_then(|mut q| q.exists(params![client, address])).map_err(be)?;
        if known {
            return Ok((false, 0));
        }
        let others: i64 = tx.prepare_cached("SELECT COUNT(*) FROM guard_addresses WHERE client = ?1").and_then(|mut q| q.query_row([client], |r| r.get(0))).map_err(be)?;
        tx.prepare_cached("INSERT INTO guard_addresses (client, address, first_seen) VALUES (?1, ?2, ?3)")
            .and_then(|mut q| q.execute(params![client, address, now_us]))
            .map_err(be)?;
        tx.commit().map_err(be)?;
        Ok((true, others as u32))
    }

    fn guard_bump(&self, client: &str, counter: &str, day: i64) -> Result<u32> {
        let c = self.guard_conn()?;
        c.prepare_cached("INSERT INTO guard_counters (client, counter, day, n) VALUES (?1, ?2, ?3, 1) ON CONFLICT (client, counter, day) DO UPDATE SET n = n + 1 RETURNING n")
            .and_then(|mut q| q.query_row(params![client, counter, day], |r| r.get::<_, i64>(0)))
            .map(|n| n as u32)
            .map_err(be)
    }

    fn alert_add(&self, a: &AlertRow) -> Result<u64> {
        let c = self.guard_conn()?;
        c.prepare_cached("INSERT INTO alerts (time, kind, severity, client, detail) VALUES (?1, ?2, ?3, ?4, ?5)")
            .and_then(|mut q| q.execute(params![a.time_us, a.kind, a.severity, a.client_id, a.detail]))
            .map_err(be)?;
        Ok(c.last_insert_rowid() as u64)
    }

    fn alerts(&self, before: Option<u64>, limit: usize) -> Result<Vec<AlertRow>> {
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let c = self.guard_conn()?;
        let mut q = c.prepare_cached("SELECT id, time, kind, severity, client, detail FROM alerts WHERE id < ?1 ORDER BY id DESC LIMIT ?2").map_err(be)?;
        q.query_map(params![before, limit as i64], |r| {
            Ok(AlertRow { id: r.get::<_, i64>(0)? as u64, time_us: r.get(1)?, kind: r.get(2)?, severity: r.get(3)?, client_id: r.get(4)?, detail: r.get(5)? })
        })
        .map_err(be)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(be)
    }

    fn state_counters(&self) -> Result<StateCounters> {
        let versions = self.read(|c| c.prepare_cached("SELECT n FROM counters WHERE name = 'versions'")?.query_row([], |r| r.get::<_, i64>(0)).optional())?;
        let guard_epoch = self
            .guard_conn()?
            .prepare_cached("SELECT value FROM guard_meta WHERE name = 'epoch'")
            .and_then(|mut q| q.query_row([], |r| r.get::<_, String>(0)).optional())
            .map_err(be)?;
        Ok(StateCounters { versions: versions.unwrap_or(0).max(0) as u64, guard_epoch: guard_epoch.unwrap_or_default() })
    }

    fn versions_present(&self) -> Result<u64> {
        self.read(|c| c.query_row("SELECT COUNT(*) FROM versions", [], |r| r.get::<_, i64>(0))).map(|n| n.max(0) as u64)
    }

    fn canaries(&self) -> Result<Vec<PartitionId>> {
        let c = self.guard_conn()?;
        let mut q = c.prepare_cached("SELECT partition FROM canaries ORDER BY partition").map_err(be)?;
        let rows: Vec<Vec<u8>> = q.query_map([], |r| r.get(0)).map_err(be)?.collect::<rusqlite::Result<_>>().map_err(be)?;
        rows.into_iter().map(|p| Ok(PartitionId(p.as_slice().try_into().map_err(|_| StoreError::Corrupt)?))).collect()
    }

    fn audit_latest(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>> {
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        self.audit_read(|c| {
            c.prepare_cached("SELECT seq, time, partition, actor, sealed FROM audit_log WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2")?
                .query_map(params![before, limit as i64], audit_row)?
                .collect()
        })
    }
}

/// Windows are stored in one column: clock hours as themselves, days negated.
fn guard_windows(hour: i64, day: i64) -> [i64; 2] {
    [hour, -day - 1]
}

impl SqliteStore {
    fn guard_conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        self.guard.lock().map_err(|_| StoreError::Backend("guard connection poisoned".into()))
    }
}

/// The first position not folded into `audit_by_partition` (a multiple of the run size).
fn audit_folded(c: &Connection) -> rusqlite::Result<i64> {
    Ok(c.prepare_cached("SELECT upto FROM audit_folded WHERE id = 0")?.query_row([], |r| r.get(0)).optional()?.unwrap_or(0))
}

/// Folds every run the log of `size` records has completed into `audit_by_partition`, in the
/// caller's transaction: each run's pairs sorted by the index's key, so they go in at its
/// right edge. Archived positions have no records and fold to nothing.
fn fold_audit_runs(c: &Connection, size: u64) -> rusqlite::Result<()> {
    let mut folded = audit_folded(c)?;
    let run_len = 1i64 << AUDIT_RUN_BITS;
    let size = size.min(i64::MAX as u64) as i64;
    if folded + run_len > size {
        return Ok(());
    }
    let mut fold = c.prepare_cached(
        "INSERT OR IGNORE INTO audit_by_partition (run, partition, seq) \
         SELECT ?1, partition, seq FROM audit_log WHERE seq >= ?2 AND seq < ?3 AND partition IS NOT NULL ORDER BY partition, seq",
    )?;
    while folded + run_len <= size {
        fold.execute(params![folded >> AUDIT_RUN_BITS, folded, folded + run_len])?;
        folded += run_len;
    }
    c.prepare_cached("INSERT OR REPLACE INTO audit_folded (id, upto) VALUES (0, ?1)")?.execute([folded])?;
    Ok(())
}

/// Brings an audit file to the folded partition index: one written before it had an index
/// on `(partition, seq)`, which is dropped once its completed runs are folded.
fn prepare_audit_index(c: &mut Connection) -> Result<()> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(be)?;
    let known: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM audit_folded)", [], |r| r.get(0)).map_err(be)?;
    if !known {
        let size = tx.query_row("SELECT size FROM audit_head WHERE id = 0", [], |r| r.get::<_, i64>(0)).optional().map_err(be)?.unwrap_or(0);
        tx.execute("INSERT INTO audit_folded (id, upto) VALUES (0, 0)", []).map_err(be)?;
        fold_audit_runs(&tx, size as u64).map_err(be)?;
    }
    tx.execute_batch("DROP INDEX IF EXISTS audit_partition;").map_err(be)?;
    tx.commit().map_err(be)
}

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        seq: r.get::<_, i64>(0)? as u64,
        time_us: r.get(1)?,
        partition: match r.get_ref(2)? {
            rusqlite::types::ValueRef::Null => None,
            v => Some(PartitionId(blob32(v.as_blob()?)?)),
        },
        actor: blob32(r.get_ref(3)?.as_blob()?)?,
        sealed: r.get(4)?,
    })
}

fn checkpoint_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditCheckpointRow> {
    Ok(AuditCheckpointRow { size: r.get::<_, i64>(0)? as u64, time_us: r.get(1)?, note: r.get(2)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_statements_are_prepared_once_not_on_every_execution() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let _store = SqliteStore::open(&path).unwrap();
        let c = open_conn(&path, false).unwrap();
        // As the store uses them: from the statement cache, one execution per lease.
        for (sql, two) in [(current_sql(KEY_FILTER), false), (current_sql(PARTITION_FILTER), false), (current_sql(PARTITION_TYPE_FILTER), true)] {
            for i in 0..3u8 {
                let mut st = c.prepare_cached(&sql).unwrap();
                let key = [i; 32];
                let mut rows = if two { st.query(params![&key[..], "Patient"]) } else { st.query(params![&key[..]]) }.unwrap();
                while rows.next().unwrap().is_some() {}
            }
            let st = c.prepare_cached(&sql).unwrap();
            assert_eq!(st.get_status(rusqlite::StatementStatus::Run), 3, "{sql}");
            assert_eq!(st.get_status(rusqlite::StatementStatus::RePrepare), 0, "re-prepared on every run: {sql}");
        }
    }

    #[test]
    fn a_rolled_back_or_redirected_current_pointer_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let s = SqliteStore::open(&path).unwrap();
        let (a, b, p) = (RecordKey([1; 32]), RecordKey([2; 32]), PartitionId([9; 32]));
        let v = |key: RecordKey, version: u64, expect: Expect| crate::NewVersion {
            row: VersionRow { key, version, partition: p, resource_type: "Patient".into(), deleted: false, last_updated_us: 0, dek_version: 1, sealed: vec![version as u8] },
            expect,
            entry: None,
        };
        for nv in [v(a, 1, Expect::Absent), v(a, 2, Expect::Version(1)), v(b, 1, Expect::Absent)] {
            s.commit(&WriteBatch { versions: vec![nv], deks: vec![crate::conformance::sample_dek(9)], ..Default::default() }).unwrap();
        }
        assert_eq!(s.current(&a).unwrap().unwrap().version, 2);
        let raw = Connection::open(&path).unwrap();
        let rowid =
            |k: &RecordKey, ver: i64| -> i64 { raw.query_row("SELECT rowid FROM versions WHERE rkey = ?1 AND version = ?2", params![&k.0[..], ver], |r| r.get(0)).unwrap() };
        // Rolled back to version 1 (pointer and its version column both edited).
        raw.execute("UPDATE current SET vrow = ?1, version = 1 WHERE rkey = ?2", params![rowid(&a, 1), &a.0[..]]).unwrap();
        assert!(matches!(s.current(&a), Err(StoreError::Corrupt)));
        assert!(matches!(s.partition_current(&p, Some("Patient")), Err(StoreError::Corrupt)));
        // Aimed at another record's row.
        raw.execute("UPDATE current SET vrow = ?1, version = 1 WHERE rkey = ?2", params![rowid(&b, 1), &a.0[..]]).unwrap();
        assert!(matches!(s.current(&a), Err(StoreError::Corrupt)));
        // Restored: served again.
        raw.execute("UPDATE current SET vrow = ?1, version = 2 WHERE rkey = ?2", params![rowid(&a, 2), &a.0[..]]).unwrap();
        assert_eq!(s.current(&a).unwrap().unwrap().version, 2);
        assert_eq!(s.partition_current(&p, None).unwrap().len(), 2);
    }

    /// The layout before `blind_terms`, as release data directories hold it.
    const LAYOUT_V1: &str = r#"
CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE deks (partition BLOB PRIMARY KEY, wrapped BLOB NOT NULL);
CREATE TABLE versions (rkey BLOB NOT NULL, version INTEGER NOT NULL, partition BLOB NOT NULL, rtype TEXT NOT NULL,
    deleted INTEGER NOT NULL, last_updated INTEGER NOT NULL, dek_version INTEGER NOT NULL, sealed BLOB NOT NULL);
CREATE UNIQUE INDEX versions_key ON versions (rkey, version);
CREATE TABLE current (rkey BLOB PRIMARY KEY, version INTEGER NOT NULL, partition BLOB NOT NULL, rtype TEXT NOT NULL,
    deleted INTEGER NOT NULL, vrow INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX current_partition ON current (partition, rtype);
CREATE TABLE blind (term BLOB NOT NULL, rkey BLOB NOT NULL, PRIMARY KEY (term, rkey)) WITHOUT ROWID;
CREATE INDEX blind_rkey ON blind (rkey);
CREATE TABLE clients (client_id TEXT PRIMARY KEY, doc BLOB NOT NULL);
"#;

    #[test]
    fn a_layout_1_database_is_converted_and_keeps_its_index_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let dek = crate::conformance::sample_dek(9);
        {
            let raw = Connection::open(&path).unwrap();
            raw.execute_batch(LAYOUT_V1).unwrap();
            raw.execute("INSERT INTO deks (partition, wrapped) VALUES (?1, ?2)", params![&dek.partition.0[..], dek.wrapped.to_bytes()]).unwrap();
            for (t, k) in [(1u8, 1u8), (2, 1), (1, 2), (3, 2)] {
                raw.execute("INSERT INTO blind (term, rkey) VALUES (?1, ?2)", params![&[t; 32][..], &[k; 32][..]]).unwrap();
            }
        }
        let s = SqliteStore::open(&path).unwrap();
        let mut hits = s.lookup(&BlindTerm([1; 32])).unwrap();
        hits.sort();
        assert_eq!(hits, vec![RecordKey([1; 32]), RecordKey([2; 32])]);
        assert_eq!(s.get_dek(&dek.partition).unwrap(), Some(dek.clone()));
        // Record 1's converted terms are replaced as a whole: 1 and 2 go, 3 stays for record 2.
        s.commit(&WriteBatch { index: vec![(RecordKey([1; 32]), vec![BlindTerm([4; 32])])], ..Default::default() }).unwrap();
        assert_eq!(s.lookup(&BlindTerm([1; 32])).unwrap(), vec![RecordKey([2; 32])]);
        assert!(s.lookup(&BlindTerm([2; 32])).unwrap().is_empty());
        assert_eq!(s.lookup(&BlindTerm([4; 32])).unwrap(), vec![RecordKey([1; 32])]);
        assert_eq!(s.lookup(&BlindTerm([3; 32])).unwrap(), vec![RecordKey([2; 32])]);
        drop(s);
        let raw = Connection::open(&path).unwrap();
        let v: i64 = raw.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, LAYOUT);
        let gone: bool = raw.query_row("SELECT NOT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 'blind_rkey')", [], |r| r.get(0)).unwrap();
        assert!(gone);
        let sql: String = raw.query_row("SELECT sql FROM sqlite_schema WHERE name = 'deks'", [], |r| r.get(0)).unwrap();
        assert!(sql.contains("WITHOUT ROWID"), "{sql}");
        drop(raw);
        // Opening again changes nothing.
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.lookup(&BlindTerm([4; 32])).unwrap(), vec![RecordKey([1; 32])]);
    }

    #[test]
    fn a_layout_2_database_gains_list_entries_and_is_marked_as_holding_list_documents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let s = SqliteStore::open(&path).unwrap();
            assert_eq!(s.get_meta(crate::META_LEGACY_LISTS).unwrap(), None, "a new database holds no list documents");
            s.commit(&WriteBatch {
                versions: vec![crate::NewVersion { row: crate::conformance::sample_row(1, 1, 9, "Patient"), expect: Expect::Absent, entry: None }],
                deks: vec![crate::conformance::sample_dek(9)],
                ..Default::default()
            })
            .unwrap();
        }
        // As layout 2 left it: no list_entries, user_version 2.
        Connection::open(&path).unwrap().execute_batch("DROP TABLE list_entries; DROP TABLE entries; PRAGMA user_version = 2;").unwrap();
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get_meta(crate::META_LEGACY_LISTS).unwrap().as_deref(), Some(&[1u8][..]));
        assert_eq!(s.current(&RecordKey([1; 32])).unwrap().unwrap().version, 1);
        let e = crate::ListEntry { list: [3; 32], entry: [4; 32], sealed: vec![5] };
        s.commit(&WriteBatch { list_entries: vec![e.clone()], ..Default::default() }).unwrap();
        assert_eq!(s.list_entries(&[[3; 32]]).unwrap(), vec![e]);
        drop(s);
        let v: i64 = Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, LAYOUT);
    }

    #[test]
    fn a_layout_2_database_gets_the_entries_table_and_its_rows_have_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let row = crate::conformance::sample_row(1, 1, 9, "Observation");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.commit(&WriteBatch {
                versions: vec![crate::NewVersion { row: row.clone(), expect: Expect::Absent, entry: None }],
                deks: vec![crate::conformance::sample_dek(9)],
                ..Default::default()
            })
            .unwrap();
        }
        // As layout 3 left it: no entries table.
        Connection::open(&path).unwrap().execute_batch("DROP TABLE entries; PRAGMA user_version = 3;").unwrap();
        let s = SqliteStore::open(&path).unwrap();
        let v: i64 = Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, LAYOUT);
        let found = s.partition_entries(&row.partition, Some("Observation")).unwrap();
        assert_eq!((found.len(), found[0].key, found[0].entry.clone()), (1, row.key, None));
        let mut next = crate::conformance::sample_row(1, 2, 9, "Observation");
        next.sealed = vec![2];
        s.commit(&WriteBatch { versions: vec![crate::NewVersion { row: next, expect: Expect::Version(1), entry: Some(vec![7, 7]) }], ..Default::default() }).unwrap();
        assert_eq!(s.partition_entries(&row.partition, None).unwrap()[0].entry, Some(vec![7, 7]));
    }

    #[test]
    fn a_database_from_a_later_release_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path).unwrap().execute_batch(&format!("PRAGMA user_version = {};", LAYOUT + 1)).unwrap();
        match SqliteStore::open(&path) {
            Err(StoreError::Backend(m)) => assert!(m.contains("newer"), "{m}"),
            other => panic!("opened a newer layout: {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn committed_pages_reach_the_database_file_without_an_explicit_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let s = SqliteStore::open(&path).unwrap();
        let p = PartitionId([9; 32]);
        let before = std::fs::metadata(&path).unwrap().len();
        // About 2,000 pages of sealed rows: past the background checkpoint's threshold.
        for i in 0..200u32 {
            let versions = (0..10u32)
                .map(|j| {
                    let mut k = [0u8; 32];
                    k[..4].copy_from_slice(&i.to_be_bytes());
                    k[4..8].copy_from_slice(&j.to_be_bytes());
                    crate::NewVersion {
                        row: VersionRow {
                            key: RecordKey(k),
                            version: 1,
                            partition: p,
                            resource_type: "Observation".into(),
                            deleted: false,
                            last_updated_us: 0,
                            dek_version: 1,
                            sealed: vec![7; 3000],
                        },
                        expect: Expect::Absent,
                        entry: None,
                    }
                })
                .collect();
            s.commit(&WriteBatch { versions, deks: vec![crate::conformance::sample_dek(9)], ..Default::default() }).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::fs::metadata(&path).unwrap().len() < before + 4_000_000 {
            assert!(std::time::Instant::now() < deadline, "the WAL was never checkpointed into the database file");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(s.partition_current(&p, None).unwrap().len(), 2000);
    }

    /// An audit file written before the folded partition index (an index on `(partition,
    /// seq)`, no runs) is brought to it when opened: its completed runs are folded, the old
    /// index dropped, and every record is still found by its partition.
    #[test]
    fn audit_file_with_the_old_partition_index_is_folded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let p = |i: u64| PartitionId([(i % 5) as u8; 32]);
        {
            let s = SqliteStore::open(&path).unwrap();
            let rows: Vec<AuditRow> = (0..40_000).map(|i| AuditRow { seq: i, time_us: i as i64, partition: Some(p(i)), actor: [1; 32], sealed: vec![1] }).collect();
            s.audit_append(&AuditAppend { rows, head: Some(AuditHead { size: 40_000, frontier: vec![] }), ..Default::default() }).unwrap();
        }
        let raw = Connection::open(SqliteStore::audit_path(&path)).unwrap();
        raw.execute_batch(
            "DROP TABLE audit_by_partition; DROP TABLE audit_folded; \
             CREATE INDEX audit_partition ON audit_log (partition, seq) WHERE partition IS NOT NULL;",
        )
        .unwrap();
        drop(raw);
        let s = SqliteStore::open(&path).unwrap();
        let seqs = |before: Option<u64>, n: usize| s.audit_by_partition(&p(3), before, n).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(None, 10_000), (0..40_000).rev().filter(|i| i % 5 == 3).collect::<Vec<_>>());
        assert_eq!(seqs(Some(32_770), 2), vec![32_768, 32_763]);
        let raw = Connection::open(SqliteStore::audit_path(&path)).unwrap();
        let (upto, old): (i64, bool) = raw
            .query_row("SELECT (SELECT upto FROM audit_folded), EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'audit_partition')", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!((upto, old), (32_768, false));
    }

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        crate::conformance::run_all(&mut || {
            n += 1;
            Box::new(super::SqliteStore::open(&dir.path().join(format!("db{n}.sqlite"))).unwrap())
        });
    }
}
