//! The PostgreSQL backend: the same [`Store`] on a shared database, so that several
//! stateless servers can serve one deployment.
//!
//! The layout keeps every patient-owned row keyed by the patient's partition first where the
//! reads allow it (versions, search entries, audit records), and names the lookups that are
//! not by partition (a record by its key, blind-index terms, work-list tags, the client
//! registry and the guard's per-client state): see ARCHITECTURE.md, "Scale-out".
//!
//! Concurrency comes from the database, not from this process: every write is one
//! transaction; the checks a batch carries (the expected current version, unique terms, data
//! keys) hold against concurrent writers from any server through row locks, unique
//! constraints and transaction-scoped advisory locks, so two servers cannot both take a NIK,
//! both append the audit log's next position, or both count a patient under one budget.
//!
//! *Architecture invariant:* as for every backend, this module never sees plaintext or keys:
//! rows arrive sealed and keys wrapped.

use std::collections::HashMap;
use std::sync::Mutex;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement, Transaction};

use crate::{
    AlertRow, AuditAppend, AuditCheckpointRow, AuditHead, AuditRow, BlindTerm, EntryRow, Expect, GuardAdmission, ListEntry, PartitionId, RecordKey, Result, StateCounters, Store,
    StoreError, StoredDek, VersionPos, VersionRow, WrappedKey, WriteBatch,
};

/// Connections kept open at most (each request takes one for the duration of one call).
const POOL: usize = 16;

/// Advisory lock classes (the first key of `pg_advisory_xact_lock(int, int)`).
const LOCK_AUDIT: i32 = 1;
const LOCK_TERM: i32 = 2;
const LOCK_GUARD: i32 = 3;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS deks (partition BYTEA PRIMARY KEY, wrapped BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    partition BYTEA NOT NULL, rkey BYTEA NOT NULL, version BIGINT NOT NULL, rtype TEXT NOT NULL,
    deleted BOOLEAN NOT NULL, last_updated BIGINT NOT NULL, dek_version INTEGER NOT NULL, sealed BYTEA NOT NULL,
    PRIMARY KEY (rkey, version));
CREATE TABLE IF NOT EXISTS current (
    rkey BYTEA PRIMARY KEY, partition BYTEA NOT NULL, version BIGINT NOT NULL, rtype TEXT NOT NULL, deleted BOOLEAN NOT NULL);
CREATE INDEX IF NOT EXISTS current_partition ON current (partition, rtype);
CREATE TABLE IF NOT EXISTS entries (rkey BYTEA PRIMARY KEY, version BIGINT NOT NULL, entry BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS blind (term BYTEA NOT NULL, rkey BYTEA NOT NULL, PRIMARY KEY (term, rkey));
CREATE TABLE IF NOT EXISTS blind_terms (rkey BYTEA PRIMARY KEY, terms BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS clients (client_id TEXT PRIMARY KEY, doc BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS once (key BYTEA PRIMARY KEY, expires BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS once_expires ON once (expires);
CREATE TABLE IF NOT EXISTS list_entries (list BYTEA NOT NULL, entry BYTEA NOT NULL, sealed BYTEA NOT NULL, PRIMARY KEY (list, entry));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n BIGINT NOT NULL);
INSERT INTO counters (name, n) VALUES ('versions', 0) ON CONFLICT (name) DO NOTHING;
CREATE TABLE IF NOT EXISTS audit_log (seq BIGINT PRIMARY KEY, time BIGINT NOT NULL, partition BYTEA, actor BYTEA NOT NULL, sealed BYTEA NOT NULL);
CREATE INDEX IF NOT EXISTS audit_partition ON audit_log (partition, seq) WHERE partition IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_actor ON audit_log (actor, seq);
CREATE TABLE IF NOT EXISTS audit_nodes (level INTEGER NOT NULL, idx BIGINT NOT NULL, hash BYTEA NOT NULL, PRIMARY KEY (level, idx));
CREATE TABLE IF NOT EXISTS audit_checkpoints (size BIGINT PRIMARY KEY, time BIGINT NOT NULL, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY CHECK (id = 0), size BIGINT NOT NULL, frontier BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS audit_archived (id INTEGER PRIMARY KEY CHECK (id = 0), first BIGINT NOT NULL, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS guard_seen (client TEXT NOT NULL, win BIGINT NOT NULL, partition BYTEA NOT NULL, PRIMARY KEY (client, win, partition));
CREATE TABLE IF NOT EXISTS guard_count (client TEXT NOT NULL, win BIGINT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (client, win));
CREATE TABLE IF NOT EXISTS canaries (partition BYTEA PRIMARY KEY);
CREATE TABLE IF NOT EXISTS guard_addresses (client TEXT NOT NULL, address TEXT NOT NULL, first_seen BIGINT NOT NULL, PRIMARY KEY (client, address));
CREATE TABLE IF NOT EXISTS guard_counters (client TEXT NOT NULL, counter TEXT NOT NULL, day BIGINT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (client, counter, day));
CREATE TABLE IF NOT EXISTS alerts (id BIGSERIAL PRIMARY KEY, time BIGINT NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL, client TEXT, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS guard_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"#;

fn be(e: postgres::Error) -> StoreError {
    // The database's own message names tables and constraints, never row values (every
    // value is a parameter), so it is safe to carry; so are the connection's causes (I/O,
    // TLS).
    let msg = match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    };
    StoreError::Backend(format!("postgres: {msg}"))
}

fn unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn key32(b: &[u8]) -> Result<[u8; 32]> {
    b.try_into().map_err(|_| StoreError::Corrupt)
}

/// The first four bytes of a keyed hash, as an advisory lock's key (collisions only make two
/// unrelated terms wait for each other).
fn lock_key(b: &[u8]) -> i32 {
    i32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// How to reach the database: a `postgres://` URL (or key-value string) without a password,
/// the password apart (from a file), and TLS.
#[derive(Clone, Default)]
pub struct PgOptions {
    pub url: String,
    /// The schema holding the deployment's tables (created when missing).
    pub schema: String,
    /// The password, when the server asks for one (read from a file by the caller; never
    /// printed).
    pub password: Option<zeroize::Zeroizing<String>>,
    /// A PEM file of the certificate authorities the database's certificate must chain to.
    /// Given (or with `sslmode=require` in the URL), the connection is TLS (rustls), the
    /// server's certificate and name checked; without it, `sslmode=require` checks against
    /// the public web roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions").field("schema", &self.schema).field("tls", &self.ca_file.is_some()).finish_non_exhaustive()
    }
}

/// A connector: plain, or TLS through rustls (aws-lc-rs, as everywhere else).
#[derive(Clone)]
enum Connector {
    Plain,
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// The PostgreSQL store. Connections are opened on demand up to [`POOL`] and kept; each call
/// takes one, so calls from many threads run at once (the database orders them). Every call
/// runs off the async runtime's scheduling ([`off_runtime`]): the synchronous client blocks
/// on a runtime of its own, which a runtime thread may not do, and some reads of a request
/// run on the runtime thread.
pub struct PostgresStore(Inner);

/// Runs a blocking store call from anywhere: inside a multi-threaded runtime through
/// `block_in_place`, inside a single-threaded one on a scoped thread of its own, elsewhere as
/// it is.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
        Err(_) => f(),
    }
}

struct Inner {
    config: postgres::Config,
    connector: Connector,
    schema: String,
    idle: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration may carry a password: never printed.
        f.debug_struct("PostgresStore").field("schema", &self.0.schema).finish_non_exhaustive()
    }
}

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig> {
    let bad = |m: String| StoreError::Backend(m);
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| bad(format!("reading the database CA file {}: {e}", path.display())))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|_| bad(format!("the database CA file {} is not PEM certificates", path.display())))?;
                roots.add(cert).map_err(|e| bad(format!("a certificate of {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(bad(format!("the database CA file {} holds no certificate", path.display())));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS: {e}")))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

impl PostgresStore {
    /// Connects to `url` without TLS or password (a database on this host, as the tests run
    /// it) and creates the tables in `schema` if they are missing.
    pub fn open(url: &str, schema: &str) -> Result<Self> {
        Self::open_with(&PgOptions { url: url.into(), schema: schema.into(), ..Default::default() })
    }

    /// Connects as `opts` say and creates the tables in its schema if they are missing. A
    /// password in the URL is refused: it belongs in a file, not in a command line.
    pub fn open_with(opts: &PgOptions) -> Result<Self> {
        off_runtime(|| Inner::open_with(opts)).map(PostgresStore)
    }

    /// Whether this store's connections are encrypted (as the server reports them).
    pub fn connection_is_tls(&self) -> Result<bool> {
        off_runtime(|| self.0.connection_is_tls())
    }
}

impl Inner {
    fn open_with(opts: &PgOptions) -> Result<Self> {
        let schema = opts.schema.as_str();
        if schema.is_empty() || !schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(StoreError::Backend("the schema name is lowercase letters, digits and _".into()));
        }
        let mut config: postgres::Config = opts.url.parse().map_err(|_| StoreError::Backend("the database URL is not a PostgreSQL connection string".into()))?;
        if config.get_password().is_some() {
            return Err(StoreError::Backend("the database URL carries a password: give it in a password file instead".into()));
        }
        if let Some(p) = &opts.password {
            config.password(p.as_bytes());
        }
        let tls = opts.ca_file.is_some() || config.get_ssl_mode() == postgres::config::SslMode::Require;
        let connector = if tls {
            if config.get_ssl_mode() != postgres::config::SslMode::Require {
                // A CA given means TLS is required, not merely preferred.
                config.ssl_mode(postgres::config::SslMode::Require);
            }
            Connector::Tls(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(opts.ca_file.as_deref())?))
        } else {
            Connector::Plain
        };
        let store = Inner { config, connector, schema: schema.to_string(), idle: Mutex::new(Vec::new()) };
        let mut c = store.connect_raw()?;
        let mut tx = c.transaction().map_err(be)?;
        // One creator at a time, whichever server starts first.
        tx.execute("SELECT pg_advisory_xact_lock(0, 0)", &[]).map_err(be)?;
        // "already exists, skipping" notices are not news on every start.
        tx.batch_execute(&format!("SET LOCAL client_min_messages TO warning; CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema};")).map_err(be)?;
        tx.batch_execute(SCHEMA).map_err(be)?;
        let epoch = brankas_vault::random_id(16).map_err(|_| StoreError::Backend("no randomness".into()))?;
        tx.execute("INSERT INTO guard_meta (name, value) VALUES ('epoch', $1) ON CONFLICT (name) DO NOTHING", &[&epoch]).map_err(be)?;
        tx.commit().map_err(be)?;
        c.batch_execute(&format!("SET search_path TO {schema}")).map_err(be)?;
        store.idle.lock().map_err(|_| poisoned())?.push(Conn { client: c, stmts: HashMap::new() });
        Ok(store)
    }

    fn connect_raw(&self) -> Result<Client> {
        match &self.connector {
            Connector::Plain => self.config.connect(NoTls),
            Connector::Tls(t) => self.config.connect(t.clone()),
        }
        .map_err(be)
    }

    fn connection_is_tls(&self) -> Result<bool> {
        Ok(self.client()?.get().query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).map_err(be)?.get(0))
    }

    fn client(&self) -> Result<Pooled<'_>> {
        let idle = self.idle.lock().map_err(|_| poisoned())?.pop();
        let c = match idle {
            Some(c) if !c.client.is_closed() => c,
            _ => {
                let mut c = self.connect_raw()?;
                c.batch_execute(&format!("SET search_path TO {}", self.schema)).map_err(be)?;
                Conn { client: c, stmts: HashMap::new() }
            }
        };
        Ok(Pooled { store: self, conn: Some(c) })
    }

    /// Runs `f` in a transaction, committed when it returns `Ok`.
    fn tx<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let mut c = self.client()?;
        let mut tx = c.get().transaction().map_err(be)?;
        let out = f(&mut tx)?;
        tx.commit().map_err(be)?;
        Ok(out)
    }
}

fn poisoned() -> StoreError {
    StoreError::Backend("connection pool poisoned".into())
}

/// A pooled connection, returned to the pool when dropped (unless broken).
struct Pooled<'a> {
    store: &'a Inner,
    conn: Option<Conn>,
}

impl Pooled<'_> {
    fn get(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("a pooled connection is present until dropped")
    }
}

/// A connection and the statements prepared on it: each query is parsed and planned once per
/// connection, not on every call (the statements are the module's own, a bounded set).
struct Conn {
    client: Client,
    stmts: HashMap<String, Statement>,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

/// The prepared statement for `sql`, prepared on first use through `prepare`.
fn cached(stmts: &mut HashMap<String, Statement>, sql: &str, prepare: impl FnOnce(&str) -> Result<Statement, postgres::Error>) -> Result<Statement, postgres::Error> {
    if let Some(st) = stmts.get(sql) {
        return Ok(st.clone());
    }
    let st = prepare(sql)?;
    stmts.insert(sql.to_string(), st.clone());
    Ok(st)
}

impl Conn {
    fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let st = cached(&mut self.stmts, sql, |q| self.client.prepare(q))?;
        self.client.query(&st, params)
    }
    fn query_opt(&mut self, sql: &str, params: Params<'_>) -> Result<Option<Row>, postgres::Error> {
        let st = cached(&mut self.stmts, sql, |q| self.client.prepare(q))?;
        self.client.query_opt(&st, params)
    }
    fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row, postgres::Error> {
        let st = cached(&mut self.stmts, sql, |q| self.client.prepare(q))?;
        self.client.query_one(&st, params)
    }
    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, postgres::Error> {
        let st = cached(&mut self.stmts, sql, |q| self.client.prepare(q))?;
        self.client.execute(&st, params)
    }
    fn transaction(&mut self) -> Result<Tx<'_>, postgres::Error> {
        let Conn { client, stmts } = self;
        Ok(Tx { tx: client.transaction()?, stmts })
    }
}

/// A transaction (or savepoint) on a [`Conn`], with its statement cache.
struct Tx<'a> {
    tx: Transaction<'a>,
    stmts: &'a mut HashMap<String, Statement>,
}

impl Tx<'_> {
    fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let st = cached(self.stmts, sql, |q| self.tx.prepare(q))?;
        self.tx.query(&st, params)
    }
    fn query_opt(&mut self, sql: &str, params: Params<'_>) -> Result<Option<Row>, postgres::Error> {
        let st = cached(self.stmts, sql, |q| self.tx.prepare(q))?;
        self.tx.query_opt(&st, params)
    }
    fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row, postgres::Error> {
        let st = cached(self.stmts, sql, |q| self.tx.prepare(q))?;
        self.tx.query_one(&st, params)
    }
    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, postgres::Error> {
        let st = cached(self.stmts, sql, |q| self.tx.prepare(q))?;
        self.tx.execute(&st, params)
    }
    fn savepoint(&mut self, name: &str) -> Result<Tx<'_>, postgres::Error> {
        Ok(Tx { tx: self.tx.savepoint(name)?, stmts: &mut *self.stmts })
    }
    fn commit(self) -> Result<(), postgres::Error> {
        self.tx.commit()
    }
    fn rollback(self) -> Result<(), postgres::Error> {
        self.tx.rollback()
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take()
            && !c.client.is_closed()
            && let Ok(mut idle) = self.store.idle.lock()
            && idle.len() < POOL
        {
            idle.push(c);
        }
    }
}

const ROW_COLS: &str = "rkey, version, partition, rtype, deleted, last_updated, dek_version, sealed";

fn version_row(r: &postgres::Row) -> Result<VersionRow> {
    Ok(VersionRow {
        key: RecordKey(key32(r.get::<_, &[u8]>(0))?),
        version: r.get::<_, i64>(1) as u64,
        partition: PartitionId(key32(r.get::<_, &[u8]>(2))?),
        resource_type: r.get(3),
        deleted: r.get(4),
        last_updated_us: r.get(5),
        dek_version: r.get::<_, i32>(6) as u32,
        sealed: r.get(7),
    })
}

fn audit_row(r: &postgres::Row) -> Result<AuditRow> {
    Ok(AuditRow {
        seq: r.get::<_, i64>(0) as u64,
        time_us: r.get(1),
        partition: r.get::<_, Option<&[u8]>>(2).map(|p| key32(p).map(PartitionId)).transpose()?,
        actor: key32(r.get::<_, &[u8]>(3))?,
        sealed: r.get(4),
    })
}

fn dek_row(r: &postgres::Row) -> Result<StoredDek> {
    Ok(StoredDek { partition: PartitionId(key32(r.get::<_, &[u8]>(0))?), wrapped: WrappedKey::from_bytes(r.get::<_, &[u8]>(1)).map_err(|_| StoreError::Corrupt)? })
}

fn checkpoint_row(r: &postgres::Row) -> AuditCheckpointRow {
    AuditCheckpointRow { size: r.get::<_, i64>(0) as u64, time_us: r.get(1), note: r.get(2) }
}

fn clamp(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

/// A current row, checked against the version it names (as the SQLite store checks it).
fn checked_current(r: &postgres::Row) -> Result<VersionRow> {
    let row = version_row(r)?;
    let (cur_version, cur_partition, cur_deleted): (i64, &[u8], bool) = (r.get(8), r.get(9), r.get(10));
    if cur_version as u64 != row.version || cur_partition != row.partition.0 || cur_deleted != row.deleted {
        return Err(StoreError::Corrupt);
    }
    Ok(row)
}

const CURRENT_SQL: &str = "SELECT v.rkey, v.version, v.partition, v.rtype, v.deleted, v.last_updated, v.dek_version, v.sealed, c.version, c.partition, c.deleted \
                           FROM current c JOIN versions v ON v.rkey = c.rkey AND v.version = c.version";

/// Applies one batch inside `tx`; a failed expectation is returned for the caller to roll
/// back.
fn apply(tx: &mut Tx<'_>, batch: &WriteBatch) -> Result<()> {
    for d in &batch.deks {
        let bytes = d.wrapped.to_bytes();
        let n = tx.execute("INSERT INTO deks (partition, wrapped) VALUES ($1, $2) ON CONFLICT (partition) DO NOTHING", &[&&d.partition.0[..], &bytes]).map_err(be)?;
        if n == 0 {
            let stored: Vec<u8> = tx.query_one("SELECT wrapped FROM deks WHERE partition = $1", &[&&d.partition.0[..]]).map_err(be)?.get(0);
            if stored != bytes {
                return Err(StoreError::DataKeyRace);
            }
        }
    }
    let mut checked: Vec<&PartitionId> = Vec::new();
    for nv in &batch.versions {
        let p = &nv.row.partition;
        if checked.contains(&p) {
            continue;
        }
        if tx.query_opt("SELECT 1 FROM deks WHERE partition = $1", &[&&p.0[..]]).map_err(be)?.is_none() {
            return Err(StoreError::MissingDataKey);
        }
        checked.push(p);
    }
    for (i, nv) in batch.versions.iter().enumerate() {
        let r = &nv.row;
        // The current row is locked until the transaction ends: a concurrent writer of the
        // same record waits, then sees this version.
        let cur: Option<i64> = tx.query_opt("SELECT version FROM current WHERE rkey = $1 FOR UPDATE", &[&&r.key.0[..]]).map_err(be)?.map(|row| row.get(0));
        let ok = match nv.expect {
            Expect::Any => true,
            Expect::Absent => cur.is_none(),
            Expect::Version(v) => cur == Some(v as i64),
        };
        if !ok || cur.is_some_and(|c| c as u64 >= r.version) {
            return Err(StoreError::Conflict { index: i });
        }
        let (version, dek_version) = (r.version as i64, r.dek_version as i32);
        tx.execute(
            "INSERT INTO versions (rkey, version, partition, rtype, deleted, last_updated, dek_version, sealed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&&r.key.0[..], &version, &&r.partition.0[..], &r.resource_type, &r.deleted, &r.last_updated_us, &dek_version, &r.sealed],
        )
        // Two writers creating one record: the second meets the first's version.
        .map_err(|e| if unique_violation(&e) { StoreError::Conflict { index: i } } else { be(e) })?;
        tx.execute(
            "INSERT INTO current (rkey, partition, version, rtype, deleted) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (rkey) DO UPDATE SET partition = excluded.partition, version = excluded.version, rtype = excluded.rtype, deleted = excluded.deleted",
            &[&&r.key.0[..], &&r.partition.0[..], &version, &r.resource_type, &r.deleted],
        )
        .map_err(be)?;
        match &nv.entry {
            Some(e) => tx
                .execute(
                    "INSERT INTO entries (rkey, version, entry) VALUES ($1, $2, $3) ON CONFLICT (rkey) DO UPDATE SET version = excluded.version, entry = excluded.entry",
                    &[&&r.key.0[..], &version, e],
                )
                .map_err(be)?,
            None => tx.execute("DELETE FROM entries WHERE rkey = $1", &[&&r.key.0[..]]).map_err(be)?,
        };
    }
    if !batch.versions.is_empty() {
        tx.execute("UPDATE counters SET n = n + $1 WHERE name = 'versions'", &[&(batch.versions.len() as i64)]).map_err(be)?;
    }
    // Unique terms are locked before the index changes: a concurrent batch taking the same
    // term waits here, and then sees this one's rows.
    let mut locks: Vec<i32> = batch.unique.iter().map(|(_, t)| lock_key(&t.0)).collect();
    locks.sort_unstable();
    locks.dedup();
    for l in locks {
        tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_TERM, &l]).map_err(be)?;
    }
    for (key, terms) in &batch.index {
        let old: Option<Vec<u8>> = tx.query_opt("SELECT terms FROM blind_terms WHERE rkey = $1", &[&&key.0[..]]).map_err(be)?.map(|r| r.get(0));
        if let Some(old) = &old {
            if old.len() % 32 != 0 {
                return Err(StoreError::Corrupt);
            }
            for t in old.chunks_exact(32) {
                tx.execute("DELETE FROM blind WHERE term = $1 AND rkey = $2", &[&t, &&key.0[..]]).map_err(be)?;
            }
        }
        let mut all = Vec::with_capacity(terms.len() * 32);
        for t in terms {
            tx.execute("INSERT INTO blind (term, rkey) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&&t.0[..], &&key.0[..]]).map_err(be)?;
            all.extend_from_slice(&t.0);
        }
        if terms.is_empty() {
            tx.execute("DELETE FROM blind_terms WHERE rkey = $1", &[&&key.0[..]]).map_err(be)?;
        } else {
            tx.execute("INSERT INTO blind_terms (rkey, terms) VALUES ($1, $2) ON CONFLICT (rkey) DO UPDATE SET terms = excluded.terms", &[&&key.0[..], &all]).map_err(be)?;
        }
    }
    for (key, term) in &batch.unique {
        if let Some(h) = tx.query_opt("SELECT rkey FROM blind WHERE term = $1 AND rkey <> $2 LIMIT 1", &[&&term.0[..], &&key.0[..]]).map_err(be)? {
            return Err(StoreError::TermHeld { holder: RecordKey(key32(h.get::<_, &[u8]>(0))?) });
        }
    }
    for e in &batch.list_entries {
        tx.execute("INSERT INTO list_entries (list, entry, sealed) VALUES ($1, $2, $3) ON CONFLICT (list, entry) DO NOTHING", &[&&e.list[..], &&e.entry[..], &e.sealed])
            .map_err(be)?;
    }
    Ok(())
}

/// Whether a batch's failure is its own expectation (rolled back alone) rather than the
/// database's.
fn own_failure(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict { .. } | StoreError::DataKeyRace | StoreError::MissingDataKey | StoreError::TermHeld { .. })
}

/// Windows are stored in one column: clock hours as themselves, days negated.
fn guard_windows(hour: i64, day: i64) -> [i64; 2] {
    [hour, -day - 1]
}

impl Store for PostgresStore {
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        off_runtime(|| self.0.get_meta(name))
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        off_runtime(|| self.0.put_meta(name, value))
    }

    fn get_dek(&self, partition: &PartitionId) -> Result<Option<StoredDek>> {
        off_runtime(|| self.0.get_dek(partition))
    }

    fn insert_dek(&self, dek: &StoredDek) -> Result<StoredDek> {
        off_runtime(|| self.0.insert_dek(dek))
    }

    fn scan_deks(&self, after: Option<&PartitionId>, limit: usize) -> Result<Vec<StoredDek>> {
        off_runtime(|| self.0.scan_deks(after, limit))
    }

    fn replace_dek(&self, old: &StoredDek, new: &StoredDek) -> Result<bool> {
        off_runtime(|| self.0.replace_dek(old, new))
    }

    fn erase_partition(&self, partition: &PartitionId) -> Result<u64> {
        off_runtime(|| self.0.erase_partition(partition))
    }

    fn current(&self, key: &RecordKey) -> Result<Option<VersionRow>> {
        off_runtime(|| self.0.current(key))
    }

    fn version(&self, key: &RecordKey, version: u64) -> Result<Option<VersionRow>> {
        off_runtime(|| self.0.version(key, version))
    }

    fn history(&self, key: &RecordKey, before: Option<u64>, limit: usize) -> Result<Vec<VersionRow>> {
        off_runtime(|| self.0.history(key, before, limit))
    }

    fn partition_versions(&self, partition: &PartitionId, resource_type: Option<&str>, since_us: Option<i64>, after: Option<&VersionPos>, limit: usize) -> Result<Vec<VersionRow>> {
        off_runtime(|| self.0.partition_versions(partition, resource_type, since_us, after, limit))
    }

    fn partition_current(&self, partition: &PartitionId, resource_type: Option<&str>) -> Result<Vec<VersionRow>> {
        off_runtime(|| self.0.partition_current(partition, resource_type))
    }

    fn partition_entries(&self, partition: &PartitionId, resource_type: Option<&str>) -> Result<Vec<EntryRow>> {
        off_runtime(|| self.0.partition_entries(partition, resource_type))
    }

    fn lookup(&self, term: &BlindTerm) -> Result<Vec<RecordKey>> {
        off_runtime(|| self.0.lookup(term))
    }

    fn list_entries(&self, lists: &[[u8; 32]]) -> Result<Vec<ListEntry>> {
        off_runtime(|| self.0.list_entries(lists))
    }

    fn commit(&self, batch: &WriteBatch) -> Result<()> {
        off_runtime(|| self.0.commit(batch))
    }

    fn commit_many(&self, batches: &[WriteBatch]) -> Result<Vec<Result<()>>> {
        off_runtime(|| self.0.commit_many(batches))
    }

    fn use_once(&self, key: &[u8; 32], expires_at_us: i64) -> Result<bool> {
        off_runtime(|| self.0.use_once(key, expires_at_us))
    }

    fn get_client(&self, client_id: &str) -> Result<Option<Vec<u8>>> {
        off_runtime(|| self.0.get_client(client_id))
    }

    fn put_client(&self, client_id: &str, doc: &[u8]) -> Result<()> {
        off_runtime(|| self.0.put_client(client_id, doc))
    }

    fn list_clients(&self) -> Result<Vec<String>> {
        off_runtime(|| self.0.list_clients())
    }

    fn audit_head(&self) -> Result<Option<AuditHead>> {
        off_runtime(|| self.0.audit_head())
    }

    fn audit_append(&self, append: &AuditAppend) -> Result<()> {
        off_runtime(|| self.0.audit_append(append))
    }

    fn audit_rows(&self, from: u64, limit: usize) -> Result<Vec<AuditRow>> {
        off_runtime(|| self.0.audit_rows(from, limit))
    }

    fn audit_nodes(&self, level: u8, from: u64, limit: usize) -> Result<Vec<(u64, [u8; 32])>> {
        off_runtime(|| self.0.audit_nodes(level, from, limit))
    }

    fn audit_checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<AuditCheckpointRow>> {
        off_runtime(|| self.0.audit_checkpoints(from_size, limit))
    }

    fn audit_latest_checkpoint(&self) -> Result<Option<AuditCheckpointRow>> {
        off_runtime(|| self.0.audit_latest_checkpoint())
    }

    fn audit_by_partition(&self, partition: &PartitionId, before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>> {
        off_runtime(|| self.0.audit_by_partition(partition, before, limit))
    }

    fn audit_by_actor(&self, actor: &[u8; 32], before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>> {
        off_runtime(|| self.0.audit_by_actor(actor, before, limit))
    }

    fn audit_latest(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>> {
        off_runtime(|| self.0.audit_latest(before, limit))
    }

    fn audit_archived(&self) -> Result<Option<(u64, String)>> {
        off_runtime(|| self.0.audit_archived())
    }

    fn audit_archive(&self, to: u64, note: &str) -> Result<()> {
        off_runtime(|| self.0.audit_archive(to, note))
    }

    fn guard_admit(&self, client: &str, hour: i64, day: i64, partitions: &[PartitionId], per_hour: u32, per_day: u32) -> Result<GuardAdmission> {
        off_runtime(|| self.0.guard_admit(client, hour, day, partitions, per_hour, per_day))
    }

    fn guard_usage(&self, client: &str, hour: i64, day: i64) -> Result<(u32, u32)> {
        off_runtime(|| self.0.guard_usage(client, hour, day))
    }

    fn canary_add(&self, partitions: &[PartitionId]) -> Result<()> {
        off_runtime(|| self.0.canary_add(partitions))
    }

    fn canaries_among(&self, partitions: &[PartitionId]) -> Result<Vec<PartitionId>> {
        off_runtime(|| self.0.canaries_among(partitions))
    }

    fn guard_address(&self, client: &str, address: &str, now_us: i64) -> Result<(bool, u32)> {
        off_runtime(|| self.0.guard_address(client, address, now_us))
    }

    fn guard_bump(&self, client: &str, counter: &str, day: i64) -> Result<u32> {
        off_runtime(|| self.0.guard_bump(client, counter, day))
    }

    fn alert_add(&self, alert: &AlertRow) -> Result<u64> {
        off_runtime(|| self.0.alert_add(alert))
    }

    fn alerts(&self, before: Option<u64>, limit: usize) -> Result<Vec<AlertRow>> {
        off_runtime(|| self.0.alerts(before, limit))
    }

    fn state_counters(&self) -> Result<StateCounters> {
        off_runtime(|| self.0.state_counters())
    }

    fn versions_present(&self) -> Result<u64> {
        off_runtime(|| self.0.versions_present())
    }

    fn canaries(&self) -> Result<Vec<PartitionId>> {
        off_runtime(|| self.0.canaries())
    }
}

impl Store for Inner {
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.client()?.get().query_opt("SELECT value FROM meta WHERE name = $1", &[&name]).map_err(be)?.map(|r| r.get(0)))
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        self.client()?.get().execute("INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value", &[&name, &value]).map_err(be)?;
        Ok(())
    }

    fn get_dek(&self, partition: &PartitionId) -> Result<Option<StoredDek>> {
        self.client()?.get().query_opt("SELECT partition, wrapped FROM deks WHERE partition = $1", &[&&partition.0[..]]).map_err(be)?.as_ref().map(dek_row).transpose()
    }

    fn insert_dek(&self, dek: &StoredDek) -> Result<StoredDek> {
        self.tx(|tx| {
            tx.execute("INSERT INTO deks (partition, wrapped) VALUES ($1, $2) ON CONFLICT (partition) DO NOTHING", &[&&dek.partition.0[..], &dek.wrapped.to_bytes()])
                .map_err(be)?;
            dek_row(&tx.query_one("SELECT partition, wrapped FROM deks WHERE partition = $1", &[&&dek.partition.0[..]]).map_err(be)?)
        })
    }

    fn scan_deks(&self, after: Option<&PartitionId>, limit: usize) -> Result<Vec<StoredDek>> {
        let after = after.map(|p| p.0.to_vec()).unwrap_or_default();
        let rows = self.client()?.get().query("SELECT partition, wrapped FROM deks WHERE partition > $1 ORDER BY partition LIMIT $2", &[&after, &(limit as i64)]).map_err(be)?;
        rows.iter().map(dek_row).collect()
    }

    fn replace_dek(&self, old: &StoredDek, new: &StoredDek) -> Result<bool> {
        let n = self
            .client()?
            .get()
            .execute("UPDATE deks SET wrapped = $1 WHERE partition = $2 AND wrapped = $3", &[&new.wrapped.to_bytes(), &&old.partition.0[..], &old.wrapped.to_bytes()])
            .map_err(be)?;
        Ok(n == 1)
    }

    fn erase_partition(&self, partition: &PartitionId) -> Result<u64> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO deks (partition, wrapped) VALUES ($1, $2) ON CONFLICT (partition) DO UPDATE SET wrapped = excluded.wrapped",
                &[&&partition.0[..], &WrappedKey::erased().to_bytes()],
            )
            .map_err(be)?;
            let keys: Vec<Vec<u8>> = tx.query("SELECT rkey FROM current WHERE partition = $1", &[&&partition.0[..]]).map_err(be)?.iter().map(|r| r.get(0)).collect();
            for k in &keys {
                if let Some(old) = tx.query_opt("SELECT terms FROM blind_terms WHERE rkey = $1", &[k]).map_err(be)? {
                    let old: Vec<u8> = old.get(0);
                    for t in old.chunks_exact(32) {
                        tx.execute("DELETE FROM blind WHERE term = $1 AND rkey = $2", &[&t, k]).map_err(be)?;
                    }
                    tx.execute("DELETE FROM blind_terms WHERE rkey = $1", &[k]).map_err(be)?;
                }
                tx.execute("UPDATE versions SET sealed = '\\x' WHERE rkey = $1 AND partition = $2", &[k, &&partition.0[..]]).map_err(be)?;
                tx.execute("DELETE FROM entries WHERE rkey = $1", &[k]).map_err(be)?;
            }
            Ok(keys.len() as u64)
        })
    }

    fn current(&self, key: &RecordKey) -> Result<Option<VersionRow>> {
        let mut c = self.client()?;
        let row = c.get().query_opt(&format!("{CURRENT_SQL} WHERE c.rkey = $1"), &[&&key.0[..]]).map_err(be)?;
        match row {
            Some(r) => {
                let checked = checked_current(&r)?;
                // A newer version than the pointer names means the pointer is stale.
                let newest: i64 = c.get().query_one("SELECT max(version) FROM versions WHERE rkey = $1", &[&&key.0[..]]).map_err(be)?.get(0);
                if newest as u64 != checked.version {
                    return Err(StoreError::Corrupt);
                }
                Ok(Some(checked))
            }
            None => {
                // A version without a current pointer is a pointer lost.
                let any = c.get().query_opt("SELECT 1 FROM versions WHERE rkey = $1 LIMIT 1", &[&&key.0[..]]).map_err(be)?;
                if any.is_some() { Err(StoreError::Corrupt) } else { Ok(None) }
            }
        }
    }

    fn version(&self, key: &RecordKey, version: u64) -> Result<Option<VersionRow>> {
        self.client()?
            .get()
            .query_opt(&format!("SELECT {ROW_COLS} FROM versions WHERE rkey = $1 AND version = $2"), &[&&key.0[..], &clamp(version)])
            .map_err(be)?
            .as_ref()
            .map(version_row)
            .transpose()
    }

    fn history(&self, key: &RecordKey, before: Option<u64>, limit: usize) -> Result<Vec<VersionRow>> {
        let before = before.map_or(i64::MAX, clamp);
        let rows = self
            .client()?
            .get()
            .query(&format!("SELECT {ROW_COLS} FROM versions WHERE rkey = $1 AND version < $2 ORDER BY version DESC LIMIT $3"), &[&&key.0[..], &before, &(limit as i64)])
            .map_err(be)?;
        rows.iter().map(version_row).collect()
    }

    fn partition_versions(&self, partition: &PartitionId, resource_type: Option<&str>, since_us: Option<i64>, after: Option<&VersionPos>, limit: usize) -> Result<Vec<VersionRow>> {
        let since = since_us.unwrap_or(i64::MIN);
        let (t, k, v) = match after {
            Some(a) => (a.last_updated_us, a.key.0.to_vec(), clamp(a.version)),
            None => (i64::MAX, vec![0xFF; 33], i64::MAX),
        };
        let sql = "SELECT v.rkey, v.version, v.partition, v.rtype, v.deleted, v.last_updated, v.dek_version, v.sealed FROM current c JOIN versions v ON v.rkey = c.rkey \
             WHERE c.partition = $1 AND ($6::text IS NULL OR c.rtype = $6) AND v.partition = $1 AND v.last_updated >= $2 \
             AND (v.last_updated, v.rkey, v.version) < ($3, $4, $5) ORDER BY v.last_updated DESC, v.rkey DESC, v.version DESC LIMIT $7";
        let rows = self.client()?.get().query(sql, &[&&partition.0[..], &since, &t, &k, &v, &resource_type, &(limit as i64)]).map_err(be)?;
        rows.iter().map(version_row).collect()
    }

    fn partition_current(&self, partition: &PartitionId, resource_type: Option<&str>) -> Result<Vec<VersionRow>> {
        let rows = self
            .client()?
            .get()
            .query(&format!("{CURRENT_SQL} WHERE c.partition = $1 AND ($2::text IS NULL OR c.rtype = $2) AND NOT c.deleted"), &[&&partition.0[..], &resource_type])
            .map_err(be)?;
        rows.iter().map(checked_current).collect()
    }

    fn partition_entries(&self, partition: &PartitionId, resource_type: Option<&str>) -> Result<Vec<EntryRow>> {
        let rows = self
            .client()?
            .get()
            .query(
                "SELECT c.rkey, c.version, c.partition, c.rtype, v.last_updated, v.dek_version, e.entry, v.version, v.partition, v.deleted \
                 FROM current c JOIN versions v ON v.rkey = c.rkey AND v.version = c.version LEFT JOIN entries e ON e.rkey = c.rkey AND e.version = c.version \
                 WHERE c.partition = $1 AND ($2::text IS NULL OR c.rtype = $2) AND NOT c.deleted",
                &[&&partition.0[..], &resource_type],
            )
            .map_err(be)?;
        rows.iter()
            .map(|r| {
                let (v, vp, vd): (i64, &[u8], bool) = (r.get(7), r.get(8), r.get(9));
                if v != r.get::<_, i64>(1) || vp != r.get::<_, &[u8]>(2) || vd {
                    return Err(StoreError::Corrupt);
                }
                Ok(EntryRow {
                    key: RecordKey(key32(r.get::<_, &[u8]>(0))?),
                    version: r.get::<_, i64>(1) as u64,
                    partition: PartitionId(key32(r.get::<_, &[u8]>(2))?),
                    resource_type: r.get(3),
                    last_updated_us: r.get(4),
                    dek_version: r.get::<_, i32>(5) as u32,
                    entry: r.get(6),
                })
            })
            .collect()
    }

    fn lookup(&self, term: &BlindTerm) -> Result<Vec<RecordKey>> {
        let rows = self.client()?.get().query("SELECT rkey FROM blind WHERE term = $1", &[&&term.0[..]]).map_err(be)?;
        rows.iter().map(|r| Ok(RecordKey(key32(r.get::<_, &[u8]>(0))?))).collect()
    }

    fn list_entries(&self, lists: &[[u8; 32]]) -> Result<Vec<ListEntry>> {
        let mut tags = lists.to_vec();
        tags.sort_unstable();
        tags.dedup();
        let mut c = self.client()?;
        let mut out = Vec::new();
        for t in &tags {
            for r in c.get().query("SELECT list, entry, sealed FROM list_entries WHERE list = $1 ORDER BY entry", &[&&t[..]]).map_err(be)? {
                out.push(ListEntry { list: key32(r.get::<_, &[u8]>(0))?, entry: key32(r.get::<_, &[u8]>(1))?, sealed: r.get(2) });
            }
        }
        Ok(out)
    }

    fn commit(&self, batch: &WriteBatch) -> Result<()> {
        self.tx(|tx| apply(tx, batch))
    }

    fn commit_many(&self, batches: &[WriteBatch]) -> Result<Vec<Result<()>>> {
        self.tx(|tx| {
            let mut out = Vec::with_capacity(batches.len());
            for b in batches {
                let mut sp = tx.savepoint("batch").map_err(be)?;
                match apply(&mut sp, b) {
                    Ok(()) => {
                        sp.commit().map_err(be)?;
                        out.push(Ok(()));
                    }
                    Err(e) if own_failure(&e) => {
                        sp.rollback().map_err(be)?;
                        out.push(Err(e));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
    }

    fn use_once(&self, key: &[u8; 32], expires_at_us: i64) -> Result<bool> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
        self.tx(|tx| {
            tx.execute("DELETE FROM once WHERE key IN (SELECT key FROM once WHERE expires < $1 LIMIT 16)", &[&now]).map_err(be)?;
            let n = tx
                .execute(
                    "INSERT INTO once (key, expires) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET expires = excluded.expires WHERE once.expires < $3",
                    &[&&key[..], &expires_at_us, &now],
                )
                .map_err(be)?;
            Ok(n == 1)
        })
    }

    fn get_client(&self, client_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.client()?.get().query_opt("SELECT doc FROM clients WHERE client_id = $1", &[&client_id]).map_err(be)?.map(|r| r.get(0)))
    }

    fn put_client(&self, client_id: &str, doc: &[u8]) -> Result<()> {
        self.client()?
            .get()
            .execute("INSERT INTO clients (client_id, doc) VALUES ($1, $2) ON CONFLICT (client_id) DO UPDATE SET doc = excluded.doc", &[&client_id, &doc])
            .map_err(be)?;
        Ok(())
    }

    fn list_clients(&self) -> Result<Vec<String>> {
        Ok(self.client()?.get().query("SELECT client_id FROM clients ORDER BY client_id", &[]).map_err(be)?.iter().map(|r| r.get(0)).collect())
    }

    fn audit_head(&self) -> Result<Option<AuditHead>> {
        Ok(self
            .client()?
            .get()
            .query_opt("SELECT size, frontier FROM audit_head WHERE id = 0", &[])
            .map_err(be)?
            .map(|r| AuditHead { size: r.get::<_, i64>(0) as u64, frontier: r.get(1) }))
    }

    /// One appender at a time across every server (a transaction-scoped advisory lock): the
    /// rows must continue the head as it is once the lock is held, or nothing is written.
    fn audit_append(&self, a: &AuditAppend) -> Result<()> {
        self.tx(|tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_AUDIT]).map_err(be)?;
            let size = tx.query_opt("SELECT size FROM audit_head WHERE id = 0", &[]).map_err(be)?.map_or(0, |r| r.get::<_, i64>(0)) as u64;
            if !a.rows.is_empty() {
                let contiguous = a.rows.iter().enumerate().all(|(i, r)| r.seq == size + i as u64);
                let head_ok = a.head.as_ref().is_some_and(|h| h.size == size + a.rows.len() as u64);
                if !contiguous || !head_ok {
                    return Err(StoreError::Conflict { index: 0 });
                }
            }
            for r in &a.rows {
                tx.execute(
                    "INSERT INTO audit_log (seq, time, partition, actor, sealed) VALUES ($1, $2, $3, $4, $5)",
                    &[&clamp(r.seq), &r.time_us, &r.partition.as_ref().map(|p| &p.0[..]), &&r.actor[..], &r.sealed],
                )
                .map_err(be)?;
            }
            for (level, idx, hash) in &a.nodes {
                tx.execute(
                    "INSERT INTO audit_nodes (level, idx, hash) VALUES ($1, $2, $3) ON CONFLICT (level, idx) DO UPDATE SET hash = excluded.hash",
                    &[&(*level as i32), &clamp(*idx), &&hash[..]],
                )
                .map_err(be)?;
            }
            if let Some(h) = &a.head {
                tx.execute(
                    "INSERT INTO audit_head (id, size, frontier) VALUES (0, $1, $2) ON CONFLICT (id) DO UPDATE SET size = excluded.size, frontier = excluded.frontier",
                    &[&clamp(h.size), &h.frontier],
                )
                .map_err(be)?;
            }
            if let Some(cp) = &a.checkpoint {
                tx.execute(
                    "INSERT INTO audit_checkpoints (size, time, note) VALUES ($1, $2, $3) ON CONFLICT (size) DO UPDATE SET time = excluded.time, note = excluded.note",
                    &[&clamp(cp.size), &cp.time_us, &cp.note],
                )
                .map_err(be)?;
            }
            Ok(())
        })
    }

    fn audit_rows(&self, from: u64, limit: usize) -> Result<Vec<AuditRow>> {
        let rows = self
            .client()?
            .get()
            .query("SELECT seq, time, partition, actor, sealed FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2", &[&clamp(from), &(limit as i64)])
            .map_err(be)?;
        rows.iter().map(audit_row).collect()
    }

    fn audit_nodes(&self, level: u8, from: u64, limit: usize) -> Result<Vec<(u64, [u8; 32])>> {
        let rows = self
            .client()?
            .get()
            .query("SELECT idx, hash FROM audit_nodes WHERE level = $1 AND idx >= $2 ORDER BY idx LIMIT $3", &[&(level as i32), &clamp(from), &(limit as i64)])
            .map_err(be)?;
        rows.iter().map(|r| Ok((r.get::<_, i64>(0) as u64, key32(r.get::<_, &[u8]>(1))?))).collect()
    }

    fn audit_checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<AuditCheckpointRow>> {
        let rows = self
            .client()?
            .get()
            .query("SELECT size, time, note FROM audit_checkpoints WHERE size >= $1 ORDER BY size LIMIT $2", &[&clamp(from_size), &(limit as i64)])
            .map_err(be)?;
        Ok(rows.iter().map(checkpoint_row).collect())
    }

    fn audit_latest_checkpoint(&self) -> Result<Option<AuditCheckpointRow>> {
        Ok(self.client()?.get().query_opt("SELECT size, time, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1", &[]).map_err(be)?.as_ref().map(checkpoint_row))
    }

    fn audit_by_partition(&self, partition: &PartitionId, before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>> {
        let before = before.map_or(i64::MAX, clamp);
        let rows = self
            .client()?
            .get()
            .query(
                "SELECT seq, time, partition, actor, sealed FROM audit_log WHERE partition = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                &[&&partition.0[..], &before, &(limit as i64)],
            )
            .map_err(be)?;
        rows.iter().map(audit_row).collect()
    }

    fn audit_by_actor(&self, actor: &[u8; 32], before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>> {
        let before = before.map_or(i64::MAX, clamp);
        let rows = self
            .client()?
            .get()
            .query("SELECT seq, time, partition, actor, sealed FROM audit_log WHERE actor = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3", &[&&actor[..], &before, &(limit as i64)])
            .map_err(be)?;
        rows.iter().map(audit_row).collect()
    }

    fn audit_latest(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>> {
        let before = before.map_or(i64::MAX, clamp);
        let rows = self
            .client()?
            .get()
            .query("SELECT seq, time, partition, actor, sealed FROM audit_log WHERE seq < $1 ORDER BY seq DESC LIMIT $2", &[&before, &(limit as i64)])
            .map_err(be)?;
        rows.iter().map(audit_row).collect()
    }

    fn audit_archived(&self) -> Result<Option<(u64, String)>> {
        Ok(self.client()?.get().query_opt("SELECT first, note FROM audit_archived WHERE id = 0", &[]).map_err(be)?.map(|r| (r.get::<_, i64>(0) as u64, r.get(1))))
    }

    fn audit_archive(&self, to: u64, note: &str) -> Result<()> {
        self.tx(|tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_AUDIT]).map_err(be)?;
            let size = tx.query_opt("SELECT size FROM audit_head WHERE id = 0", &[]).map_err(be)?.map_or(0, |r| r.get::<_, i64>(0)) as u64;
            let first = tx.query_opt("SELECT first FROM audit_archived WHERE id = 0", &[]).map_err(be)?.map_or(0, |r| r.get::<_, i64>(0)) as u64;
            if to < first || to > size {
                return Err(StoreError::Conflict { index: 0 });
            }
            tx.execute(
                "INSERT INTO audit_archived (id, first, note) VALUES (0, $1, $2) ON CONFLICT (id) DO UPDATE SET first = excluded.first, note = excluded.note",
                &[&clamp(to), &note],
            )
            .map_err(be)?;
            Ok(())
        })?;
        // Deleted in short transactions, as the SQLite store does; a crash part-way leaves
        // rows below the mark, which the next call removes.
        let mut c = self.client()?;
        loop {
            let n = c.get().execute("DELETE FROM audit_log WHERE seq IN (SELECT seq FROM audit_log WHERE seq < $1 ORDER BY seq LIMIT 10000)", &[&clamp(to)]).map_err(be)?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    /// One admission at a time per client across every server (an advisory lock on the
    /// client), so a budget is never multiplied by the number of servers.
    fn guard_admit(&self, client: &str, hour: i64, day: i64, partitions: &[PartitionId], per_hour: u32, per_day: u32) -> Result<GuardAdmission> {
        self.tx(|tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&LOCK_GUARD, &client]).map_err(be)?;
            let mut counts = [0u32; 2];
            let mut fresh: [Vec<&PartitionId>; 2] = [Vec::new(), Vec::new()];
            for (i, w) in guard_windows(hour, day).into_iter().enumerate() {
                let n: i64 = tx.query_opt("SELECT n FROM guard_count WHERE client = $1 AND win = $2", &[&client, &w]).map_err(be)?.map_or(0, |r| r.get(0));
                let mut uniq: Vec<&PartitionId> = Vec::new();
                for p in partitions {
                    if uniq.contains(&p) {
                        continue;
                    }
                    uniq.push(p);
                    if tx.query_opt("SELECT 1 FROM guard_seen WHERE client = $1 AND win = $2 AND partition = $3", &[&client, &w, &&p.0[..]]).map_err(be)?.is_none() {
                        fresh[i].push(p);
                    }
                }
                counts[i] = (n as u64 + fresh[i].len() as u64).min(u32::MAX as u64) as u32;
            }
            if counts[0] > per_hour || counts[1] > per_day {
                return Ok(GuardAdmission { admitted: false, hour: counts[0], day: counts[1] });
            }
            for (i, w) in guard_windows(hour, day).into_iter().enumerate() {
                if fresh[i].is_empty() {
                    continue;
                }
                for p in &fresh[i] {
                    tx.execute("INSERT INTO guard_seen (client, win, partition) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", &[&client, &w, &&p.0[..]]).map_err(be)?;
                }
                tx.execute(
                    "INSERT INTO guard_count (client, win, n) VALUES ($1, $2, $3) ON CONFLICT (client, win) DO UPDATE SET n = excluded.n",
                    &[&client, &w, &(counts[i] as i64)],
                )
                .map_err(be)?;
            }
            // Windows older than two days are forgotten (now and then, not on every write).
            if brankas_vault::random_id(1).map(|b| b == "00").unwrap_or(false) {
                let (h, d) = (hour - 48, -(day - 2) - 1);
                tx.execute("DELETE FROM guard_seen WHERE (win >= 0 AND win < $1) OR (win < 0 AND win > $2)", &[&h, &d]).map_err(be)?;
                tx.execute("DELETE FROM guard_count WHERE (win >= 0 AND win < $1) OR (win < 0 AND win > $2)", &[&h, &d]).map_err(be)?;
            }
            Ok(GuardAdmission { admitted: true, hour: counts[0], day: counts[1] })
        })
    }

    fn guard_usage(&self, client: &str, hour: i64, day: i64) -> Result<(u32, u32)> {
        let mut c = self.client()?;
        let mut n = [0u32; 2];
        for (i, w) in guard_windows(hour, day).into_iter().enumerate() {
            n[i] = c.get().query_opt("SELECT n FROM guard_count WHERE client = $1 AND win = $2", &[&client, &w]).map_err(be)?.map_or(0, |r| r.get::<_, i64>(0) as u32);
        }
        Ok((n[0], n[1]))
    }

    fn canary_add(&self, partitions: &[PartitionId]) -> Result<()> {
        self.tx(|tx| {
            for p in partitions {
                tx.execute("INSERT INTO canaries (partition) VALUES ($1) ON CONFLICT DO NOTHING", &[&&p.0[..]]).map_err(be)?;
            }
            Ok(())
        })
    }

    fn canaries_among(&self, partitions: &[PartitionId]) -> Result<Vec<PartitionId>> {
        let mut c = self.client()?;
        let mut out = Vec::new();
        for p in partitions {
            if !out.contains(p) && c.get().query_opt("SELECT 1 FROM canaries WHERE partition = $1", &[&&p.0[..]]).map_err(be)?.is_some() {
                out.push(*p);
            }
        }
        Ok(out)
    }

    fn guard_address(&self, client: &str, address: &str, now_us: i64) -> Result<(bool, u32)> {
        self.tx(|tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&LOCK_GUARD, &client]).map_err(be)?;
            if tx.query_opt("SELECT 1 FROM guard_addresses WHERE client = $1 AND address = $2", &[&client, &address]).map_err(be)?.is_some() {
                return Ok((false, 0));
            }
            let others: i64 = tx.query_one("SELECT count(*) FROM guard_addresses WHERE client = $1", &[&client]).map_err(be)?.get(0);
            tx.execute("INSERT INTO guard_addresses (client, address, first_seen) VALUES ($1, $2, $3)", &[&client, &address, &now_us]).map_err(be)?;
            Ok((true, others as u32))
        })
    }

    fn guard_bump(&self, client: &str, counter: &str, day: i64) -> Result<u32> {
        let r = self
            .client()?
            .get()
            .query_one(
                "INSERT INTO guard_counters (client, counter, day, n) VALUES ($1, $2, $3, 1) ON CONFLICT (client, counter, day) DO UPDATE SET n = guard_counters.n + 1 RETURNING n",
                &[&client, &counter, &day],
            )
            .map_err(be)?;
        Ok(r.get::<_, i64>(0) as u32)
    }

    fn alert_add(&self, a: &AlertRow) -> Result<u64> {
        let r = self
            .client()?
            .get()
            .query_one(
                "INSERT INTO alerts (time, kind, severity, client, detail) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[&a.time_us, &a.kind, &a.severity, &a.client_id, &a.detail],
            )
            .map_err(be)?;
        Ok(r.get::<_, i64>(0) as u64)
    }

    fn alerts(&self, before: Option<u64>, limit: usize) -> Result<Vec<AlertRow>> {
        let before = before.map_or(i64::MAX, clamp);
        let rows = self
            .client()?
            .get()
            .query("SELECT id, time, kind, severity, client, detail FROM alerts WHERE id < $1 ORDER BY id DESC LIMIT $2", &[&before, &(limit as i64)])
            .map_err(be)?;
        Ok(rows.iter().map(|r| AlertRow { id: r.get::<_, i64>(0) as u64, time_us: r.get(1), kind: r.get(2), severity: r.get(3), client_id: r.get(4), detail: r.get(5) }).collect())
    }

    fn state_counters(&self) -> Result<StateCounters> {
        let mut c = self.client()?;
        let versions: i64 = c.get().query_opt("SELECT n FROM counters WHERE name = 'versions'", &[]).map_err(be)?.map_or(0, |r| r.get(0));
        let guard_epoch: String = c.get().query_opt("SELECT value FROM guard_meta WHERE name = 'epoch'", &[]).map_err(be)?.map(|r| r.get(0)).unwrap_or_default();
        Ok(StateCounters { versions: versions.max(0) as u64, guard_epoch })
    }

    fn versions_present(&self) -> Result<u64> {
        let n: i64 = self.client()?.get().query_one("SELECT count(*) FROM versions", &[]).map_err(be)?.get(0);
        Ok(n.max(0) as u64)
    }

    fn canaries(&self) -> Result<Vec<PartitionId>> {
        let rows = self.client()?.get().query("SELECT partition FROM canaries ORDER BY partition", &[]).map_err(be)?;
        rows.iter().map(|r| Ok(PartitionId(key32(r.get::<_, &[u8]>(0))?))).collect()
    }
}

#[cfg(test)]
mod tests {
    /// The conformance suite against a real PostgreSQL: `BRANKAS_TEST_DATABASE_URL` names
    /// it (`.ci/run` starts one). Each check gets a schema of its own, dropped afterwards.
    /// Without the variable the test says so and passes, unless `BRANKAS_REQUIRE_POSTGRES`
    /// is set (as CI sets it), when it fails.
    #[test]
    fn conformance() {
        let Ok(url) = std::env::var("BRANKAS_TEST_DATABASE_URL") else {
            assert!(std::env::var_os("BRANKAS_REQUIRE_POSTGRES").is_none(), "BRANKAS_REQUIRE_POSTGRES is set but BRANKAS_TEST_DATABASE_URL is not");
            eprintln!("postgres conformance: BRANKAS_TEST_DATABASE_URL not set; skipped");
            return;
        };
        let run = brankas_vault::random_id(4).unwrap();
        let mut n = 0;
        let mut schemas = Vec::new();
        crate::conformance::run_all(&mut || {
            n += 1;
            let schema = format!("conformance_{run}_{n}");
            schemas.push(schema.clone());
            Box::new(super::PostgresStore::open(&url, &schema).unwrap())
        });
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        for s in schemas {
            c.batch_execute(&format!("DROP SCHEMA {s} CASCADE")).unwrap();
        }
    }

    /// TLS to the database: with the server's CA the connection is encrypted (the server says
    /// so), with another CA it is refused; a password in the URL is refused.
    /// `BRANKAS_TEST_DATABASE_CA` names the test server's certificate (`.ci/run` sets it).
    #[test]
    fn tls_and_no_password_in_the_url() {
        let (Ok(url), Ok(ca)) = (std::env::var("BRANKAS_TEST_DATABASE_URL"), std::env::var("BRANKAS_TEST_DATABASE_CA")) else {
            assert!(std::env::var_os("BRANKAS_REQUIRE_POSTGRES").is_none(), "BRANKAS_REQUIRE_POSTGRES is set but the test database or its CA is not");
            eprintln!("postgres TLS: BRANKAS_TEST_DATABASE_URL or BRANKAS_TEST_DATABASE_CA not set; skipped");
            return;
        };
        let schema = format!("tls_{}", brankas_vault::random_id(4).unwrap());
        let opts = super::PgOptions { url: url.clone(), schema: schema.clone(), ca_file: Some(ca.into()), ..Default::default() };
        let s = super::PostgresStore::open_with(&opts).unwrap();
        assert!(s.connection_is_tls().unwrap(), "the connection is encrypted");
        use crate::Store as _;
        s.put_meta("x", b"y").unwrap();
        assert_eq!(s.get_meta("x").unwrap(), Some(b"y".to_vec()));
        // Another CA: the server's certificate does not chain to it.
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        std::fs::write(&other, cert.cert.pem()).unwrap();
        let wrong = super::PgOptions { ca_file: Some(other), ..opts.clone() };
        assert!(super::PostgresStore::open_with(&wrong).is_err());
        let with_password = super::PgOptions { url: url.replacen("brankas@", "brankas:secret@", 1), ..opts };
        let e = super::PostgresStore::open_with(&with_password).unwrap_err().to_string();
        assert!(e.contains("password file") && !e.contains("secret"), "{e}");
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).unwrap();
    }
}
