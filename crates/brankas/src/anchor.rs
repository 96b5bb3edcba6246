//! The state anchor (threat model invariant 14: state cannot be rolled back in silence).
//!
//! A copy of the data directory carries everything inside it, so nothing inside it can say
//! that it is older than the state the server last had. The anchor is kept *beside the key
//! file* (`<key-file>.anchor`), where a copy or restore of the data directory does not reach:
//! a C2SP checkpoint of the audit log (size and tree head), signed by the vault's audit key,
//! whose extension lines name the rest of the state:
//!
//! ```text
//! brankas-audit/1a2b3c4d            the audit log's origin
//! 1234                              its size
//! <tree head, base64>               its tree head at that size
//! brankas-anchor 1 <id>             this anchor's id (also in the database's meta table)
//! versions 5678                     version rows committed to the main database
//! registry 12 <hex> [12 <hex>]      client registrations: count and digest [a change in flight]
//! guard <hex>                       the identity of the guard's database
//! canaries 40 <hex> [41 <hex>]      canaries: count and digest [a change in flight]
//! ```
//!
//! The anchor only moves forward. The audit head and the version count are monotonic, so the
//! anchor may lag behind them (it is written when a checkpoint is signed, every few seconds
//! and on shutdown): a state *ahead* of the anchor is fine, one behind it is refused. The
//! registry and the canaries are sets, whose digests cannot say "ahead": their changes are
//! written ahead (the next digest is anchored as pending, then the change is made, then it
//! becomes the anchored one), under a file lock shared by every process on the directory.
//! [`AnchoredStore`] is the store every command uses; it does this on every registration and
//! canary change, and moves the anchor on after audit checkpoints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use brankas_audit::note::Checkpoint;
use brankas_store::{
    AlertRow, AuditAppend, AuditCheckpointRow, AuditHead, AuditRow, BlindTerm, GuardAdmission, PartitionId, RecordKey, StateCounters, Store, StoreError, StoredDek, VersionRow,
    WriteBatch,
};
use brankas_vault::Vault;

/// Name of the marker in the main database's meta table: the id of the anchor that follows
/// this directory. A database with the marker and no anchor file beside the key was anchored
/// and lost its anchor; one without it was never anchored (first start after an upgrade).
pub(crate) const ANCHOR_META: &str = "anchor.id";
const FORMAT: &str = "brankas-anchor 1";
/// The anchor is moved on at least this often while the audit log or the data grow.
const ADVANCE_EVERY: Duration = Duration::from_secs(5);

/// A set's size and digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Digest {
    pub count: u64,
    pub hash: [u8; 32],
}

/// What the anchor says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct State {
    pub id: String,
    pub audit_size: u64,
    pub audit_root: [u8; 32],
    pub versions: u64,
    pub registry: Digest,
    pub registry_pending: Option<Digest>,
    pub guard_epoch: String,
    pub canaries: Digest,
    pub canaries_pending: Option<Digest>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl State {
    fn extensions(&self) -> Vec<String> {
        let set = |d: &Digest, p: &Option<Digest>| {
            let mut l = format!("{} {}", d.count, hex(&d.hash));
            if let Some(p) = p {
                l.push_str(&format!(" {} {}", p.count, hex(&p.hash)));
            }
            l
        };
        vec![
            format!("{FORMAT} {}", self.id),
            format!("versions {}", self.versions),
            format!("registry {}", set(&self.registry, &self.registry_pending)),
            format!("guard {}", self.guard_epoch),
            format!("canaries {}", set(&self.canaries, &self.canaries_pending)),
        ]
    }

    fn parse(cp: Checkpoint, ext: &[String]) -> Option<State> {
        let set = |rest: &str| -> Option<(Digest, Option<Digest>)> {
            let parts: Vec<&str> = rest.split(' ').collect();
            let d = |i: usize| -> Option<Digest> { Some(Digest { count: parts.get(i)?.parse().ok()?, hash: unhex32(parts.get(i + 1)?)? }) };
            match parts.len() {
                2 => Some((d(0)?, None)),
                4 => Some((d(0)?, Some(d(2)?))),
                _ => None,
            }
        };
        let [format, versions, registry, guard, canaries] = ext else {
            return None;
        };
        let (registry, registry_pending) = set(registry.strip_prefix("registry ")?)?;
        let (canaries, canaries_pending) = set(canaries.strip_prefix("canaries ")?)?;
        Some(State {
            id: format.strip_prefix(FORMAT)?.strip_prefix(' ')?.to_string(),
            audit_size: cp.size,
            audit_root: cp.root,
            versions: versions.strip_prefix("versions ")?.parse().ok()?,
            registry,
            registry_pending,
            guard_epoch: guard.strip_prefix("guard ")?.to_string(),
            canaries,
            canaries_pending,
        })
    }
}

/// A digest over a sequence of items, each length-prefixed, chained so no buffer holds them all.
struct Chain {
    hash: [u8; 32],
    count: u64,
}

impl Chain {
    fn new(domain: &str) -> Self {
        Chain { hash: brankas_vault::sha256(domain.as_bytes()), count: 0 }
    }
    fn push(&mut self, parts: &[&[u8]]) {
        let mut b = self.hash.to_vec();
        for p in parts {
            b.extend_from_slice(&(p.len() as u64).to_be_bytes());
            b.extend_from_slice(p);
        }
        self.hash = brankas_vault::sha256(&b);
        self.count += 1;
    }
    fn digest(&self) -> Digest {
        Digest { count: self.count, hash: self.hash }
    }
}

/// The digest of every stored client registration (id and document as stored, whatever
/// fields the document has), with `replace` standing in for one of them.
fn registry_digest(store: &dyn Store, replace: Option<(&str, &[u8])>) -> Result<Digest, StoreError> {
    let mut ids = store.list_clients()?;
    if let Some((id, _)) = replace
        && !ids.iter().any(|i| i == id)
    {
        ids.push(id.to_string());
    }
    ids.sort();
    let mut c = Chain::new("brankas-registry 1");
    for id in &ids {
        let doc = match replace {
            Some((r, d)) if r == id => Some(d.to_vec()),
            _ => store.get_client(id)?,
        };
        if let Some(doc) = doc {
            c.push(&[id.as_bytes(), &doc]);
        }
    }
    Ok(c.digest())
}

/// The digest of the canary set, with `add` added.
fn canary_digest(store: &dyn Store, add: &[PartitionId]) -> Result<Digest, StoreError> {
    let mut all = store.canaries()?;
    all.extend_from_slice(add);
    all.sort();
    all.dedup();
    let mut c = Chain::new("brankas-canaries 1");
    for p in &all {
        c.push(&[&p.0]);
    }
    Ok(c.digest())
}

/// The directory's state as it is now, as an anchor would name it.
pub(crate) fn current(store: &dyn Store, id: &str) -> Result<State> {
    let (audit_size, audit_root) = brankas_audit::head(store).context("reading the audit log's head")?;
    let c = store.state_counters()?;
    Ok(State {
        id: id.to_string(),
        audit_size,
        audit_root,
        versions: c.versions,
        registry: registry_digest(store, None)?,
        registry_pending: None,
        guard_epoch: c.guard_epoch,
        canaries: canary_digest(store, &[])?,
        canaries_pending: None,
    })
}

/// What is older than the anchor, or missing: one line per part of the state, naming the
/// part and the numbers (never patient data). Empty when the directory is at or ahead of it.
pub(crate) fn behind(store: &dyn Store, a: &State) -> Result<Vec<String>> {
    let mut out = Vec::new();
    match store.get_meta(ANCHOR_META)? {
        Some(m) if m == a.id.as_bytes() => {}
        Some(_) => out.push("main database: it belongs to another anchor (a copy of another data directory?)".to_string()),
        None => out.push("main database: it carries no anchor mark (a copy from before this directory was anchored, or another directory's)".to_string()),
    }
    let (size, _) = brankas_audit::head(store).context("reading the audit log's head")?;
    if size < a.audit_size {
        out.push(format!("audit log: {size} records, the anchor names {} (an older copy, truncated, or deleted)", a.audit_size));
    } else if a.audit_size > 0 && brankas_audit::tree_root(store, a.audit_size).ok() != Some(a.audit_root) {
        out.push(format!("audit log: its first {} records do not match the anchored tree head (replaced)", a.audit_size));
    }
    let c = store.state_counters()?;
    let present = store.versions_present()?;
    if c.versions < a.versions || present < a.versions {
        out.push(format!("main database: {present} version rows, the anchor names {} (an older copy, or history deleted)", a.versions));
    } else if present < c.versions {
        out.push(format!("main database: {} version rows were committed, {present} are present (history deleted)", c.versions));
    }
    let reg = registry_digest(store, None)?;
    if reg != a.registry && Some(reg) != a.registry_pending {
        out.push(format!(
            "client registry: {} registrations that differ from the anchored {} (a registration restored from a backup, edited, added or removed outside Brankas)",
            reg.count, a.registry.count
        ));
    }
    if c.guard_epoch != a.guard_epoch {
        out.push("guard database: deleted or replaced (not the anchored one): canaries, patient budgets and alerts would start over".to_string());
    } else {
        let can = canary_digest(store, &[])?;
        if can != a.canaries && Some(can) != a.canaries_pending {
            out.push(format!("canaries: {} now, the anchor names {} (removed, or the guard database replaced)", can.count, a.canaries.count));
        }
    }
    Ok(out)
}

/// The anchor file beside the key file, its lock, and the key that signs it.
pub(crate) struct AnchorFile {
    path: PathBuf,
    lock: PathBuf,
    vault: Arc<Vault>,
}

impl AnchorFile {
    /// `<key-file>.anchor`.
    pub(crate) fn beside(key_file: &Path, vault: Arc<Vault>) -> Self {
        let with = |ext: &str| {
            let mut p = key_file.as_os_str().to_os_string();
            p.push(ext);
            PathBuf::from(p)
        };
        AnchorFile { path: with(".anchor"), lock: with(".anchor.lock"), vault }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The anchor, `None` if there is no file. A file that is not an anchor signed by this
    /// directory's key is an error.
    pub(crate) fn read(&self) -> Result<Option<State>> {
        let note = match std::fs::read_to_string(&self.path) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let pk = self.vault.audit_public_key();
        let (cp, ext) = Checkpoint::verify_extended(&note, Some(&brankas_audit::origin(&pk)), &pk)
            .map_err(|e| anyhow!("{} is not an anchor signed by this data directory's key ({e})", self.path.display()))?;
        State::parse(cp, &ext).map(Some).ok_or_else(|| anyhow!("{} is not a readable anchor", self.path.display()))
    }

    /// Writes the anchor atomically and durably: a temporary file, fsynced, renamed over the
    /// old one, and the directory fsynced.
    pub(crate) fn write(&self, s: &State) -> Result<()> {
        let pk = self.vault.audit_public_key();
        let cp = Checkpoint { origin: brankas_audit::origin(&pk), size: s.audit_size, root: s.audit_root };
        let note = cp.sign_extended(&s.extensions(), &pk, |m| self.vault.audit_sign(m));
        let mut tmp = self.path.as_os_str().to_os_string();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(note.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path).with_context(|| format!("writing {}", self.path.display()))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Runs `f` holding the anchor's lock (an exclusive lock on `<key-file>.anchor.lock`,
    /// shared by every process and thread that changes the anchor).
    pub(crate) fn locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let lock = opts.open(&self.lock).with_context(|| format!("opening {}", self.lock.display()))?;
        lock.lock().with_context(|| format!("locking {}", self.lock.display()))?;
        let r = f();
        let _ = lock.unlock();
        r
    }
}

/// The anchor of one opened data directory.
pub(crate) struct Anchor {
    file: AnchorFile,
    id: String,
    inner: Arc<dyn Store>,
}

fn be(e: anyhow::Error) -> StoreError {
    StoreError::Backend(format!("state anchor: {e:#}"))
}

impl Anchor {
    /// Reads the anchor under its lock and writes back what `f` makes of it (if anything).
    fn update(&self, f: impl FnOnce(&mut State) -> Result<bool>) -> Result<()> {
        self.file.locked(|| {
            let mut s = self.file.read()?.ok_or_else(|| anyhow!("the anchor file {} is missing", self.file.path().display()))?;
            if s.id != self.id {
                bail!("the anchor file {} belongs to another data directory", self.file.path().display());
            }
            if f(&mut s)? {
                self.file.write(&s)?;
            }
            Ok(())
        })
    }

    /// Moves the anchor forward to the audit log's head and the version count (never back).
    pub(crate) fn advance(&self) -> Result<()> {
        let (size, root) = brankas_audit::head(&*self.inner)?;
        let versions = self.inner.state_counters()?.versions;
        self.update(|s| {
            let mut changed = false;
            if size > s.audit_size {
                (s.audit_size, s.audit_root, changed) = (size, root, true);
            }
            if versions > s.versions {
                (s.versions, changed) = (versions, true);
            }
            Ok(changed)
        })
    }

    /// A change to a set (registry or canaries), written ahead: the state must be the anchored
    /// one (or the one a change in flight was going to make), the next digest is anchored as
    /// pending, the change made, and the next digest anchored.
    fn set_change(
        &self,
        what: &str,
        field: fn(&mut State) -> (&mut Digest, &mut Option<Digest>),
        now: impl Fn() -> Result<Digest, StoreError>,
        next: impl Fn() -> Result<Digest, StoreError>,
        apply: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut applied: Option<Result<(), StoreError>> = None;
        let r = self.file.locked(|| {
            let mut s = self.file.read()?.ok_or_else(|| anyhow!("the anchor file {} is missing", self.file.path().display()))?;
            let (cur, next_d) = (now()?, next()?);
            {
                let (anchored, pending) = field(&mut s);
                if cur != *anchored && Some(cur) != *pending {
                    tracing::error!(what, "the state differs from its anchor: changed outside Brankas while it runs; nothing changed");
                    bail!("the {what} differs from its anchored state (changed outside Brankas); nothing was changed");
                }
                (*anchored, *pending) = (cur, Some(next_d));
            }
            self.file.write(&s)?;
            let res = apply();
            let ok = res.is_ok();
            applied = Some(res);
            if ok {
                let (anchored, pending) = field(&mut s);
                (*anchored, *pending) = (next_d, None);
                self.file.write(&s)?;
            }
            Ok(())
        });
        match (applied, r) {
            (Some(Err(e)), _) => Err(e),
            (_, Err(e)) => Err(be(e)),
            _ => Ok(()),
        }
    }
}

/// Wakes the keeper: (work due, stop).
struct Signal {
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl Signal {
    fn set(&self, due: bool, stop: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.0 |= due;
            s.1 |= stop;
        }
        self.cv.notify_one();
    }
}

/// The store of an anchored data directory: every call goes to the directory's store;
/// registration and canary changes are written ahead to the anchor, and the anchor is moved
/// forward after each audit checkpoint (by a thread of its own, so the audit appender never
/// waits for it), every few seconds, and when the store is dropped (clean shutdown).
pub(crate) struct AnchoredStore {
    inner: Arc<dyn Store>,
    anchor: Arc<Anchor>,
    signal: Arc<Signal>,
    keeper: Option<std::thread::JoinHandle<()>>,
}

impl AnchoredStore {
    /// Wraps `inner`, whose state has been checked against (or made) the anchor `id` in `file`.
    fn new(inner: Arc<dyn Store>, file: AnchorFile, id: String) -> Result<Self> {
        let anchor = Arc::new(Anchor { file, id, inner: inner.clone() });
        let signal = Arc::new(Signal { state: Mutex::new((false, false)), cv: Condvar::new() });
        let (a, sig) = (anchor.clone(), signal.clone());
        let keeper = std::thread::Builder::new().name("state-anchor".into()).spawn(move || keeper(a, sig))?;
        Ok(Self { inner, anchor, signal, keeper: Some(keeper) })
    }
}

fn keeper(anchor: Arc<Anchor>, signal: Arc<Signal>) {
    loop {
        {
            let Ok(mut s) = signal.state.lock() else {
                return;
            };
            if !s.0 && !s.1 {
                s = match signal.cv.wait_timeout(s, ADVANCE_EVERY) {
                    Ok((s, _)) => s,
                    Err(_) => return,
                };
            }
            if s.1 {
                return;
            }
            s.0 = false;
        }
        if let Err(e) = anchor.advance() {
            tracing::error!(error = %format!("{e:#}"), "the state anchor could not be moved forward");
        }
    }
}

impl Drop for AnchoredStore {
    fn drop(&mut self) {
        self.signal.set(false, true);
        if let Some(t) = self.keeper.take() {
            let _ = t.join();
        }
        if let Err(e) = self.anchor.advance() {
            tracing::error!(error = %format!("{e:#}"), "the state anchor could not be moved forward at shutdown");
        }
    }
}

/// How a data directory met its anchor.
pub(crate) enum Opening {
    /// At or ahead of the anchor.
    Current,
    /// No anchor and no mark: the first start after an upgrade; an anchor was made.
    FirstAnchor,
    /// Behind, accepted by the operator with a reason: re-anchored to the state as it is.
    Accepted { reason: String, behind: Vec<String> },
}

/// Checks `inner` against the anchor beside `key_file` and returns the anchored store.
/// Behind (or anchor missing for an anchored directory) without `accept`: an error naming
/// what is behind. `record` is called before a first anchor or an accepted rollback is made
/// (it must audit and alert; if it fails, nothing is anchored).
pub(crate) fn open(
    inner: Arc<dyn Store>,
    vault: Arc<Vault>,
    key_file: &Path,
    accept: Option<&str>,
    record: impl FnOnce(&Opening) -> Result<()>,
) -> Result<(AnchoredStore, Opening)> {
    let file = AnchorFile::beside(key_file, vault);
    let mark = inner.get_meta(ANCHOR_META)?.map(|m| String::from_utf8_lossy(&m).into_owned());
    let (id, opening) = file.locked(|| {
        let accepted = |behind: Vec<String>| Opening::Accepted { reason: String::new(), behind };
        let (id, opening) = match (file.read(), &mark) {
            (Ok(Some(a)), _) => {
                let behind = behind(&*inner, &a)?;
                if behind.is_empty() {
                    return Ok((a.id, Opening::Current));
                }
                (a.id, accepted(behind))
            }
            (Ok(None), Some(m)) => (
                m.clone(),
                accepted(vec![format!("state anchor: {} is missing, but this data directory was anchored (deleted, or the key file restored without it)", file.path().display())]),
            ),
            (Ok(None), None) => (brankas_vault::random_id(16)?, Opening::FirstAnchor),
            (Err(e), m) => (m.clone().map_or_else(|| brankas_vault::random_id(16), Ok)?, accepted(vec![format!("state anchor: {e:#}")])),
        };
        let opening = match (opening, accept) {
            (Opening::Accepted { behind, .. }, None) => {
                bail!(
                    "refusing to start: the data directory is behind its state anchor {}:\n  - {}\nIf this is a deliberate restore, start once with `--accept-state-rollback \"<reason>\"` (or run `brankas anchor accept --reason \"<reason>\"`): the acceptance is audited and raises an alert.",
                    file.path().display(),
                    behind.join("\n  - ")
                )
            }
            (Opening::Accepted { behind, .. }, Some(r)) => Opening::Accepted { reason: r.to_string(), behind },
            (o, _) => o,
        };
        record(&opening)?;
        inner.put_meta(ANCHOR_META, id.as_bytes())?;
        file.write(&current(&*inner, &id)?)?;
        Ok((id, opening))
    })?;
    Ok((AnchoredStore::new(inner, file, id)?, opening))
}

/// What is behind the anchor, without changing anything (`brankas anchor check`).
pub(crate) fn inspect(inner: &dyn Store, vault: Arc<Vault>, key_file: &Path) -> Result<Vec<String>> {
    let file = AnchorFile::beside(key_file, vault);
    match (file.read()?, inner.get_meta(ANCHOR_META)?) {
        (Some(a), _) => behind(inner, &a),
        (None, Some(_)) => Ok(vec![format!("state anchor: {} is missing, but this data directory was anchored", file.path().display())]),
        (None, None) => Ok(vec![format!("state anchor: {} does not exist yet (made on the next start)", file.path().display())]),
    }
}

/// Anchors a freshly initialised directory (`brankas init`).
pub(crate) fn create(inner: &dyn Store, vault: Arc<Vault>, key_file: &Path) -> Result<()> {
    let file = AnchorFile::beside(key_file, vault);
    file.locked(|| {
        let id = brankas_vault::random_id(16)?;
        inner.put_meta(ANCHOR_META, id.as_bytes())?;
        file.write(&current(inner, &id)?)
    })
}

impl Store for AnchoredStore {
    fn put_client(&self, client_id: &str, doc: &[u8]) -> brankas_store::Result<()> {
        let inner = &*self.inner;
        self.anchor.set_change(
            "client registry",
            |s| (&mut s.registry, &mut s.registry_pending),
            || registry_digest(inner, None),
            || registry_digest(inner, Some((client_id, doc))),
            || inner.put_client(client_id, doc),
        )
    }

    fn canary_add(&self, partitions: &[PartitionId]) -> brankas_store::Result<()> {
        let inner = &*self.inner;
        self.anchor.set_change(
            "canary set",
            |s| (&mut s.canaries, &mut s.canaries_pending),
            || canary_digest(inner, &[]),
            || canary_digest(inner, partitions),
            || inner.canary_add(partitions),
        )
    }

    fn audit_append(&self, append: &AuditAppend) -> brankas_store::Result<()> {
        self.inner.audit_append(append)?;
        if append.checkpoint.is_some() {
            self.signal.set(true, false);
        }
        Ok(())
    }

    // Everything else is the directory's store unchanged.
    fn get_meta(&self, name: &str) -> brankas_store::Result<Option<Vec<u8>>> {
        self.inner.get_meta(name)
    }
    fn put_meta(&self, name: &str, value: &[u8]) -> brankas_store::Result<()> {
        self.inner.put_meta(name, value)
    }
    fn get_dek(&self, partition: &PartitionId) -> brankas_store::Result<Option<StoredDek>> {
        self.inner.get_dek(partition)
    }
    fn insert_dek(&self, dek: &StoredDek) -> brankas_store::Result<StoredDek> {
        self.inner.insert_dek(dek)
    }
    fn scan_deks(&self, after: Option<&PartitionId>, limit: usize) -> brankas_store::Result<Vec<StoredDek>> {
        self.inner.scan_deks(after, limit)
    }
    fn replace_dek(&self, old: &StoredDek, new: &StoredDek) -> brankas_store::Result<bool> {
        self.inner.replace_dek(old, new)
    }
    fn erase_partition(&self, partition: &PartitionId) -> brankas_store::Result<u64> {
        self.inner.erase_partition(partition)
    }
    fn current(&self, key: &RecordKey) -> brankas_store::Result<Option<VersionRow>> {
        self.inner.current(key)
    }
    fn version(&self, key: &RecordKey, version: u64) -> brankas_store::Result<Option<VersionRow>> {
        self.inner.version(key, version)
    }
    fn partition_versions(
        &self,
        partition: &PartitionId,
        resource_type: Option<&str>,
        since_us: Option<i64>,
        after: Option<&brankas_store::VersionPos>,
        limit: usize,
    ) -> brankas_store::Result<Vec<VersionRow>> {
        self.inner.partition_versions(partition, resource_type, since_us, after, limit)
    }
    fn history(&self, key: &RecordKey, before: Option<u64>, limit: usize) -> brankas_store::Result<Vec<VersionRow>> {
        self.inner.history(key, before, limit)
    }
    fn partition_current(&self, partition: &PartitionId, resource_type: Option<&str>) -> brankas_store::Result<Vec<VersionRow>> {
        self.inner.partition_current(partition, resource_type)
    }
    fn partition_entries(&self, partition: &PartitionId, resource_type: Option<&str>) -> brankas_store::Result<Vec<brankas_store::EntryRow>> {
        self.inner.partition_entries(partition, resource_type)
    }
    fn lookup(&self, term: &BlindTerm) -> brankas_store::Result<Vec<RecordKey>> {
        self.inner.lookup(term)
    }
    fn list_entries(&self, lists: &[[u8; 32]]) -> brankas_store::Result<Vec<brankas_store::ListEntry>> {
        self.inner.list_entries(lists)
    }
    fn commit(&self, batch: &WriteBatch) -> brankas_store::Result<()> {
        self.inner.commit(batch)
    }
    fn commit_many(&self, batches: &[WriteBatch]) -> brankas_store::Result<Vec<brankas_store::Result<()>>> {
        self.inner.commit_many(batches)
    }
    fn use_once(&self, key: &[u8; 32], expires_at_us: i64) -> brankas_store::Result<bool> {
        self.inner.use_once(key, expires_at_us)
    }
    fn get_client(&self, client_id: &str) -> brankas_store::Result<Option<Vec<u8>>> {
        self.inner.get_client(client_id)
    }
    fn list_clients(&self) -> brankas_store::Result<Vec<String>> {
        self.inner.list_clients()
    }
    fn audit_head(&self) -> brankas_store::Result<Option<AuditHead>> {
        self.inner.audit_head()
    }
    fn audit_archived(&self) -> brankas_store::Result<Option<(u64, String)>> {
        self.inner.audit_archived()
    }
    fn audit_archive(&self, to: u64, note: &str) -> brankas_store::Result<()> {
        // The anchor's tree head is recomputed at every start from the stored subtrees and
        // the records after the last complete one: anchored at the head first, it never needs
        // an archived record.
        self.anchor.advance().map_err(be)?;
        self.inner.audit_archive(to, note)
    }
    fn audit_rows(&self, from: u64, limit: usize) -> brankas_store::Result<Vec<AuditRow>> {
        self.inner.audit_rows(from, limit)
    }
    fn audit_nodes(&self, level: u8, from: u64, limit: usize) -> brankas_store::Result<Vec<(u64, [u8; 32])>> {
        self.inner.audit_nodes(level, from, limit)
    }
    fn audit_checkpoints(&self, from_size: u64, limit: usize) -> brankas_store::Result<Vec<AuditCheckpointRow>> {
        self.inner.audit_checkpoints(from_size, limit)
    }
    fn audit_latest_checkpoint(&self) -> brankas_store::Result<Option<AuditCheckpointRow>> {
        self.inner.audit_latest_checkpoint()
    }
    fn audit_by_partition(&self, partition: &PartitionId, before: Option<u64>, limit: usize) -> brankas_store::Result<Vec<AuditRow>> {
        self.inner.audit_by_partition(partition, before, limit)
    }
    fn audit_by_actor(&self, actor: &[u8; 32], before: Option<u64>, limit: usize) -> brankas_store::Result<Vec<AuditRow>> {
        self.inner.audit_by_actor(actor, before, limit)
    }
    fn audit_latest(&self, before: Option<u64>, limit: usize) -> brankas_store::Result<Vec<AuditRow>> {
        self.inner.audit_latest(before, limit)
    }
    fn guard_admit(&self, client: &str, hour: i64, day: i64, partitions: &[PartitionId], per_hour: u32, per_day: u32) -> brankas_store::Result<GuardAdmission> {
        self.inner.guard_admit(client, hour, day, partitions, per_hour, per_day)
    }
    fn guard_usage(&self, client: &str, hour: i64, day: i64) -> brankas_store::Result<(u32, u32)> {
        self.inner.guard_usage(client, hour, day)
    }
    fn canaries_among(&self, partitions: &[PartitionId]) -> brankas_store::Result<Vec<PartitionId>> {
        self.inner.canaries_among(partitions)
    }
    fn guard_address(&self, client: &str, address: &str, now_us: i64) -> brankas_store::Result<(bool, u32)> {
        self.inner.guard_address(client, address, now_us)
    }
    fn guard_bump(&self, client: &str, counter: &str, day: i64) -> brankas_store::Result<u32> {
        self.inner.guard_bump(client, counter, day)
    }
    fn alert_add(&self, alert: &AlertRow) -> brankas_store::Result<u64> {
        self.inner.alert_add(alert)
    }
    fn alerts(&self, before: Option<u64>, limit: usize) -> brankas_store::Result<Vec<AlertRow>> {
        self.inner.alerts(before, limit)
    }
    fn state_counters(&self) -> brankas_store::Result<StateCounters> {
        self.inner.state_counters()
    }
    fn versions_present(&self) -> brankas_store::Result<u64> {
        self.inner.versions_present()
    }
    fn canaries(&self) -> brankas_store::Result<Vec<PartitionId>> {
        self.inner.canaries()
    }
}
