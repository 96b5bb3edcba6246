//! Crypto-shredding: the shred keys and the erasure ledger, kept with the key material.
//!
//! A patient's data key is stored in the data directory wrapped under one of 65,536 *shred
//! keys* (its bucket: the first two bytes of its partition pseudonym), not under the KEK. The
//! shred keys live beside the key file (`<key-file>.shred`), each wrapped by a KEK, where no
//! copy of the data directory reaches. Erasing a patient makes a new *generation* of its
//! bucket's key, rewraps the other patients of the bucket (its *peers*) under it, and destroys
//! every older generation: from then on the erased patient's wrapped data key opens under
//! nothing, in the live directory and in every backup, replica or dump of it, key file or not.
//!
//! An older copy of the directory still holds its peers' keys wrapped under the destroyed
//! generation, so each erasure is also written to the *erasure ledger* (`<key-file>.erasures`,
//! one JSON line per erasure, append-only): the erased partition, the bucket's new generation,
//! the reason code, and the peers' data keys wrapped under the new generation. Each line is
//! MACed under a key derived from the vault's root (label `erasure-ledger`), chained to the
//! line before, and the shred file names how many lines there are and the last one's MAC, so
//! a ledger edited, reordered, truncated or removed is refused, never silently ignored.
//! Opening a data directory re-applies the ledger (`brankas_engine::erasure::apply_ledger`):
//! an older backup gets its erasures and its peers' new wraps again.
//!
//! Files are written as the key file is: under an exclusive lock (`<key-file>.shred.lock`),
//! through a temporary file of the writer's own that is read back whole before the rename.
//!
//! The buckets are created all at once, when the first patient needs one (65,536 keys, a file
//! of about 7.5 MB written once): creating them as patients arrive would rewrite the growing
//! file hundreds of times during a deployment's first thousands of patients.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use crate::aead::DataKey;
use crate::provider::{KekId, KeyProvider, file_stamp, lock_exclusive, replace_file};
use crate::vault::{PartitionId, WrappedKey, dek_context};
use crate::{VaultError, random_bytes};

/// Number of shred-key buckets.
pub const SHRED_BUCKETS: u32 = 65_536;
/// The `kek` of a data key wrapped under its bucket's shred key (KEK ids start at 1).
pub(crate) const SHRED_KEK: KekId = KekId(0);
/// The `kek` of an erased partition's tombstone: no key at all.
pub(crate) const ERASED_KEK: KekId = KekId(u32::MAX);
const FORMAT: &str = "brankas-shred-v1";

/// The shred-key bucket of a partition.
pub fn bucket_of(p: &PartitionId) -> u16 {
    u16::from_be_bytes([p.0[0], p.0[1]])
}

/// The partition just before bucket `b`'s first one (a scan "after" it starts at `b`), or
/// `None` for bucket 0.
pub fn bucket_scan_start(b: u16) -> Option<PartitionId> {
    let prev = b.checked_sub(1)?;
    let mut p = [0xffu8; 32];
    p[..2].copy_from_slice(&prev.to_be_bytes());
    Some(PartitionId(p))
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    unhex(s)?.try_into().ok()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ShredFile {
    format: String,
    /// Tag of the data directory's vault these keys belong to.
    owner: String,
    /// Erasures completed (lines of the ledger) and the MAC of the last one.
    erasures: u64,
    head: String,
    keys: Vec<ShredEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ShredEntry {
    /// Bucket, generation, KEK, wrapped key (base64).
    b: u16,
    g: u32,
    k: u32,
    w: String,
}

#[derive(Clone, Default)]
struct ShredState {
    erasures: u64,
    head: String,
    /// bucket → generation → (KEK, wrapped shred key). Several generations of one bucket are
    /// present only while an erasure is under way (or after one was interrupted).
    keys: BTreeMap<u16, BTreeMap<u32, (KekId, Vec<u8>)>>,
}

impl ShredState {
    fn entries(&self) -> usize {
        self.keys.values().map(BTreeMap::len).sum()
    }
}

/// One completed erasure, as the ledger holds it.
pub struct ErasureRecord {
    /// Position in the ledger, from 1.
    pub n: u64,
    pub time_us: i64,
    pub partition: PartitionId,
    /// The bucket's generation after the erasure (older ones are destroyed).
    pub generation: u32,
    /// The reason code.
    pub reason: String,
    /// The bucket's other partitions, their data keys wrapped under `generation`.
    pub peers: Vec<(PartitionId, WrappedKey)>,
    /// The line's MAC (chained), hex.
    pub mac: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LedgerLine {
    n: u64,
    time_us: i64,
    partition: String,
    bucket: u16,
    generation: u32,
    reason: String,
    /// (partition hex, wrapped key hex).
    peers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    mac: String,
}

/// The shred keys and the ledger of one data directory.
pub(crate) struct Shredder {
    path: PathBuf,
    ledger: PathBuf,
    owner: String,
    mac: hmac::Key,
    provider: Arc<dyn KeyProvider>,
    state: RwLock<ShredState>,
    stamp: Mutex<Option<(std::time::SystemTime, u64)>>,
    cache: Mutex<HashMap<(u16, u32), Arc<DataKey>>>,
}

fn poisoned() -> VaultError {
    VaultError::KeyFile("lock poisoned".into())
}

fn with_ext(base: &Path, ext: &str) -> PathBuf {
    let mut p = base.as_os_str().to_owned();
    p.push(ext);
    PathBuf::from(p)
}

impl Shredder {
    /// The shred keys at `<base>.shred` and the ledger at `<base>.erasures` of the vault whose
    /// tag is `owner`, MACed under `mac`. A shred file of another vault is refused.
    pub(crate) fn open(base: &Path, provider: Arc<dyn KeyProvider>, mac: hmac::Key, owner: [u8; 32]) -> Result<Self, VaultError> {
        let s = Self {
            path: with_ext(base, ".shred"),
            ledger: with_ext(base, ".erasures"),
            owner: hex(&owner),
            mac,
            provider,
            state: RwLock::new(ShredState::default()),
            stamp: Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
        };
        s.reload()?;
        Ok(s)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn read_state(&self) -> Result<ShredState, VaultError> {
        let text = match fs::read(&self.path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ShredState::default()),
            Err(e) => return Err(VaultError::KeyFile(format!("{}: {e}", self.path.display()))),
        };
        let f: ShredFile = serde_json::from_slice(&text).map_err(|_| VaultError::KeyFile(format!("{} is not a Brankas shred-key file", self.path.display())))?;
        if f.format != FORMAT {
            return Err(VaultError::KeyFile(format!("{}: unsupported format", self.path.display())));
        }
        if f.owner != self.owner {
            return Err(VaultError::KeyFile(format!("{} holds the shred keys of another data directory", self.path.display())));
        }
        let mut st = ShredState { erasures: f.erasures, head: f.head, keys: BTreeMap::new() };
        for e in f.keys {
            let w = B64.decode(e.w.as_bytes()).map_err(|_| VaultError::KeyFile(format!("{}: bad key encoding", self.path.display())))?;
            st.keys.entry(e.b).or_default().insert(e.g, (KekId(e.k), w));
        }
        Ok(st)
    }

    /// Re-reads the file (changed by another process: a new group, an erasure, a rotation).
    fn reload(&self) -> Result<(), VaultError> {
        let stamp = file_stamp(&self.path);
        let st = self.read_state()?;
        self.install(st, stamp)
    }

    fn install(&self, st: ShredState, stamp: Option<(std::time::SystemTime, u64)>) -> Result<(), VaultError> {
        {
            // Unwrapped keys of destroyed generations are forgotten.
            let mut cache = self.cache.lock().map_err(|_| poisoned())?;
            cache.retain(|(b, g), _| st.keys.get(b).is_some_and(|gens| gens.contains_key(g)));
        }
        *self.state.write().map_err(|_| poisoned())? = st;
        *self.stamp.lock().map_err(|_| poisoned())? = stamp;
        Ok(())
    }

    fn refresh(&self) -> Result<(), VaultError> {
        let now = file_stamp(&self.path);
        let seen = *self.stamp.lock().map_err(|_| poisoned())?;
        if now != seen { self.reload() } else { Ok(()) }
    }

    /// Writes `st` (the caller holds the lock) and makes it this process's state.
    fn write_state(&self, st: ShredState) -> Result<(), VaultError> {
        let f = ShredFile {
            format: FORMAT.into(),
            owner: self.owner.clone(),
            erasures: st.erasures,
            head: st.head.clone(),
            keys: st.keys.iter().flat_map(|(b, gens)| gens.iter().map(move |(g, (k, w))| ShredEntry { b: *b, g: *g, k: k.0, w: B64.encode(w) })).collect(),
        };
        let bytes = serde_json::to_vec(&f).map_err(|_| VaultError::KeyFile("encode".into()))?;
        let (n, erasures) = (st.entries(), st.erasures);
        replace_file(&self.path, &bytes, false, |back| serde_json::from_slice::<ShredFile>(back).is_ok_and(|b| b.keys.len() == n && b.erasures == erasures && b.owner == f.owner))
            .map_err(|e| if matches!(e, VaultError::Integrity) { VaultError::KeyFile(format!("{} did not read back whole; not changed", self.path.display())) } else { e })?;
        self.install(st, file_stamp(&self.path))
    }

    fn lock(&self) -> Result<fs::File, VaultError> {
        lock_exclusive(&self.path)
    }

    fn context(&self, b: u16, g: u32) -> Vec<u8> {
        let mut c = b"shred-key".to_vec();
        c.extend_from_slice(self.owner.as_bytes());
        c.extend_from_slice(&b.to_be_bytes());
        c.extend_from_slice(&g.to_be_bytes());
        c
    }

    /// A fresh shred key for bucket `b`, generation `g`, wrapped under the current KEK.
    fn fresh(&self, b: u16, g: u32) -> Result<(KekId, Vec<u8>), VaultError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        random_bytes(&mut raw[..])?;
        let kek = self.provider.current()?;
        Ok((kek, self.provider.wrap(kek, &raw[..], &self.context(b, g))?))
    }

    /// Adds every missing bucket to `st` if `b` is missing; true if it was.
    fn add_group(&self, st: &mut ShredState, b: u16) -> Result<bool, VaultError> {
        if st.keys.contains_key(&b) {
            return Ok(false);
        }
        for x in 0..SHRED_BUCKETS {
            let x = x as u16;
            if !st.keys.contains_key(&x) {
                let k = self.fresh(x, 1)?;
                st.keys.entry(x).or_default().insert(1, k);
            }
        }
        Ok(true)
    }

    /// The newest generation of bucket `b`, creating the bucket's group if needed.
    fn current_gen(&self, b: u16) -> Result<u32, VaultError> {
        self.refresh()?;
        if let Some(g) = self.state.read().map_err(|_| poisoned())?.keys.get(&b).and_then(|g| g.keys().next_back().copied()) {
            return Ok(g);
        }
        let _lock = self.lock()?;
        let mut st = self.read_state()?;
        if self.add_group(&mut st, b)? {
            self.write_state(st)?;
        } else {
            self.install(st, file_stamp(&self.path))?;
        }
        self.state.read().map_err(|_| poisoned())?.keys.get(&b).and_then(|g| g.keys().next_back().copied()).ok_or(VaultError::Integrity)
    }

    /// The unwrapped shred key of bucket `b`, generation `g`; `None` if that generation does
    /// not exist (destroyed by an erasure, or never made).
    fn key(&self, b: u16, g: u32) -> Result<Option<Arc<DataKey>>, VaultError> {
        // A generation destroyed by another process is forgotten here too (the re-read
        // prunes the cache): one stat per unwrap, and data keys are cached above this.
        self.refresh()?;
        if let Some(k) = self.cache.lock().map_err(|_| poisoned())?.get(&(b, g)) {
            return Ok(Some(k.clone()));
        }
        let found = self.state.read().map_err(|_| poisoned())?.keys.get(&b).and_then(|gens| gens.get(&g).cloned());
        let Some((kek, wrapped)) = found else { return Ok(None) };
        let raw = self.provider.unwrap(kek, &wrapped, &self.context(b, g))?;
        let key = Arc::new(DataKey::from_bytes(&raw)?);
        self.cache.lock().map_err(|_| poisoned())?.insert((b, g), key.clone());
        Ok(Some(key))
    }

    fn dek_aad(p: &PartitionId, version: u32, g: u32) -> Vec<u8> {
        let mut a = b"shred-wrap".to_vec();
        a.extend_from_slice(&dek_context(p, version));
        a.extend_from_slice(&g.to_be_bytes());
        a
    }

    /// Wraps a data key of `p` under its bucket's newest shred key.
    pub(crate) fn wrap_dek(&self, p: &PartitionId, version: u32, raw: &[u8]) -> Result<WrappedKey, VaultError> {
        let b = bucket_of(p);
        let g = self.current_gen(b)?;
        self.wrap_dek_at(p, version, raw, g)
    }

    fn wrap_dek_at(&self, p: &PartitionId, version: u32, raw: &[u8], g: u32) -> Result<WrappedKey, VaultError> {
        let key = self.key(bucket_of(p), g)?.ok_or(VaultError::Integrity)?;
        let mut bytes = g.to_be_bytes().to_vec();
        bytes.extend_from_slice(&key.seal_raw(&Self::dek_aad(p, version, g), raw)?);
        Ok(WrappedKey { kek: SHRED_KEK, key_version: version, bytes })
    }

    /// Unwraps a data key wrapped by [`Shredder::wrap_dek`]. A destroyed generation is
    /// [`VaultError::Integrity`]: the key is gone.
    pub(crate) fn unwrap_dek(&self, p: &PartitionId, w: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let (g, sealed) = split_gen(w)?;
        let key = self.key(bucket_of(p), g)?.ok_or(VaultError::Integrity)?;
        key.open_raw(&Self::dek_aad(p, w.key_version, g), sealed)
    }

    /// Rewraps every shred key under KEK `to` (key rotation); returns how many.
    pub(crate) fn rewrap_all(&self, to: KekId) -> Result<usize, VaultError> {
        let _lock = self.lock()?;
        let mut st = self.read_state()?;
        let mut n = 0;
        for (b, gens) in st.keys.iter_mut() {
            for (g, (kek, w)) in gens.iter_mut() {
                if *kek == to {
                    continue;
                }
                let ctx = self.context(*b, *g);
                let raw = self.provider.unwrap(*kek, w, &ctx)?;
                *w = self.provider.wrap(to, &raw, &ctx)?;
                *kek = to;
                n += 1;
            }
        }
        if n > 0 {
            self.write_state(st)?;
        }
        Ok(n)
    }

    /// Starts erasing partition `p`: under the lock (held until the erasure is finished or
    /// dropped), a new generation of its bucket's key is made and written beside the older
    /// ones, so new data keys of the bucket already use it.
    pub(crate) fn begin(&self, p: &PartitionId) -> Result<Erasure<'_>, VaultError> {
        let lock = self.lock()?;
        let mut st = self.read_state()?;
        let b = bucket_of(p);
        self.add_group(&mut st, b)?;
        let g = st.keys.get(&b).and_then(|gens| gens.keys().next_back().copied()).unwrap_or(0) + 1;
        let k = self.fresh(b, g)?;
        st.keys.entry(b).or_default().insert(g, k);
        self.write_state(st)?;
        Ok(Erasure { shred: self, _lock: lock, partition: *p, bucket: b, generation: g })
    }

    fn line_mac(&self, prev: &str, line: &LedgerLine) -> Result<String, VaultError> {
        let body = serde_json::to_vec(line).map_err(|_| VaultError::Crypto)?;
        let mut ctx = hmac::Context::with_key(&self.mac);
        for f in [b"erasure-ledger-v1".as_slice(), prev.as_bytes(), &body] {
            ctx.update(&(f.len() as u64).to_be_bytes());
            ctx.update(f);
        }
        Ok(hex(ctx.sign().as_ref()))
    }

    /// The ledger's verified lines, and the length of the file they fill (a torn last line,
    /// from a crash while it was appended, is not part of the ledger).
    fn read_ledger(&self) -> Result<(Vec<ErasureRecord>, u64), VaultError> {
        let bad = |what: &str| VaultError::Ledger(format!("{}: {what}", self.ledger.display()));
        let text = match fs::read(&self.ledger) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(VaultError::Ledger(format!("{}: {e}", self.ledger.display()))),
        };
        let mut out = Vec::new();
        let mut prev = String::new();
        let mut used = 0u64;
        let mut rest = &text[..];
        while let Some(end) = rest.iter().position(|&c| c == b'\n') {
            let raw = &rest[..end];
            rest = &rest[end + 1..];
            let mut line: LedgerLine = serde_json::from_slice(raw).map_err(|_| bad(&format!("line {} is not a ledger entry", out.len() + 1)))?;
            let mac = std::mem::take(&mut line.mac);
            if line.n != out.len() as u64 + 1 || !crate::ct_eq(self.line_mac(&prev, &line)?.as_bytes(), mac.as_bytes()) {
                return Err(bad(&format!("entry {} fails its MAC (edited, reordered, or from another data directory)", out.len() + 1)));
            }
            let part = unhex32(&line.partition).ok_or_else(|| bad("bad partition"))?;
            let mut peers = Vec::with_capacity(line.peers.len());
            for (p, w) in &line.peers {
                let p = unhex32(p).ok_or_else(|| bad("bad peer"))?;
                let w = WrappedKey::from_bytes(&unhex(w).ok_or_else(|| bad("bad peer key"))?)?;
                peers.push((PartitionId(p), w));
            }
            used += raw.len() as u64 + 1;
            out.push(ErasureRecord { n: line.n, time_us: line.time_us, partition: PartitionId(part), generation: line.generation, reason: line.reason, peers, mac: mac.clone() });
            prev = mac;
        }
        Ok((out, used))
    }

    /// The verified ledger, checked against the shred file: fewer entries than the shred
    /// file names, or a different last one, is an error (truncated, removed or replaced). An
    /// erasure written to the ledger whose older generations were not yet destroyed (a crash
    /// in between) is completed here.
    pub(crate) fn ledger(&self) -> Result<Vec<ErasureRecord>, VaultError> {
        let _lock = self.lock()?;
        let (records, _) = self.read_ledger()?;
        let mut st = self.read_state()?;
        if (records.len() as u64) < st.erasures {
            return Err(VaultError::Ledger(format!(
                "{} holds {} erasures, the shred keys name {}: the ledger was truncated or removed (restore it from the copy kept with the key file)",
                self.ledger.display(),
                records.len(),
                st.erasures
            )));
        }
        if st.erasures > 0 && records[st.erasures as usize - 1].mac != st.head {
            return Err(VaultError::Ledger(format!("{}: entry {} is not the one the shred keys name (replaced)", self.ledger.display(), st.erasures)));
        }
        if records.len() as u64 > st.erasures {
            for r in &records[st.erasures as usize..] {
                if let Some(gens) = st.keys.get_mut(&bucket_of(&r.partition)) {
                    gens.retain(|g, _| *g >= r.generation);
                }
            }
            let last = records.last().map(|r| r.mac.clone()).unwrap_or_default();
            (st.erasures, st.head) = (records.len() as u64, last);
            self.write_state(st)?;
        } else {
            self.install(st, file_stamp(&self.path))?;
        }
        Ok(records)
    }
}

fn split_gen(w: &WrappedKey) -> Result<(u32, &[u8]), VaultError> {
    if w.kek != SHRED_KEK || w.bytes.len() < 4 {
        return Err(VaultError::Integrity);
    }
    Ok((u32::from_be_bytes(w.bytes[..4].try_into().map_err(|_| VaultError::Integrity)?), &w.bytes[4..]))
}

/// An erasure under way (see [`crate::Vault::begin_erasure`]): holds the shred lock. The
/// caller rewraps the bucket's other data keys with [`Erasure::rewrap_peer`], removes the
/// erased partition's key and rows, then calls [`Erasure::finish`], which appends the ledger
/// entry and destroys the older generations. Dropped unfinished, nothing is destroyed: the
/// new generation stays beside the old one and everything still opens.
pub struct Erasure<'a> {
    shred: &'a Shredder,
    _lock: fs::File,
    partition: PartitionId,
    bucket: u16,
    generation: u32,
}

impl Erasure<'_> {
    /// The bucket being re-keyed.
    pub fn bucket(&self) -> u16 {
        self.bucket
    }

    /// The partition being erased.
    pub fn partition(&self) -> &PartitionId {
        &self.partition
    }

    /// `p`'s data key under the new generation, if `w` is a shred-wrapped key of this bucket
    /// under an older one (`None` for the erased partition itself, keys already under the new
    /// generation, and keys still wrapped by a KEK directly).
    pub fn rewrap_peer(&self, p: &PartitionId, w: &WrappedKey) -> Result<Option<WrappedKey>, VaultError> {
        if *p == self.partition || bucket_of(p) != self.bucket || w.kek != SHRED_KEK {
            return Ok(None);
        }
        let (g, _) = split_gen(w)?;
        if g >= self.generation {
            return Ok(None);
        }
        let raw = self.shred.unwrap_dek(p, w)?;
        Ok(Some(self.shred.wrap_dek_at(p, w.key_version, &raw, self.generation)?))
    }

    /// Appends the ledger entry (reason code, time, the peers' new wraps) and destroys every
    /// older generation of the bucket's key.
    pub fn finish(self, reason: &str, time_us: i64, peers: &[(PartitionId, WrappedKey)]) -> Result<ErasureRecord, VaultError> {
        let s = self.shred;
        let (records, used) = s.read_ledger()?;
        let st = s.read_state()?;
        if records.len() as u64 != st.erasures {
            // An unfinished earlier erasure or a damaged ledger: `ledger()` settles it first.
            return Err(VaultError::Ledger(format!("{} does not match the shred keys; open the data directory to check it", s.ledger.display())));
        }
        let prev = records.last().map(|r| r.mac.clone()).unwrap_or_default();
        let mut line = LedgerLine {
            n: records.len() as u64 + 1,
            time_us,
            partition: hex(&self.partition.0),
            bucket: self.bucket,
            generation: self.generation,
            reason: reason.to_string(),
            peers: peers.iter().map(|(p, w)| (hex(&p.0), hex(&w.to_bytes()))).collect(),
            mac: String::new(),
        };
        line.mac = s.line_mac(&prev, &line)?;
        let mut bytes = serde_json::to_vec(&line).map_err(|_| VaultError::Crypto)?;
        bytes.push(b'\n');
        let err = |e: std::io::Error| VaultError::Ledger(format!("{}: {e}", s.ledger.display()));
        let mut opts = fs::OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&s.ledger).map_err(err)?;
        // A torn line left by a crash is cut off before the new one.
        f.set_len(used).map_err(err)?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(used)).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        if used == 0
            && let Some(d) = s.ledger.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = fs::File::open(d)
        {
            let _ = d.sync_all();
        }
        let mut st = st;
        if let Some(gens) = st.keys.get_mut(&self.bucket) {
            gens.retain(|g, _| *g >= self.generation);
        }
        (st.erasures, st.head) = (line.n, line.mac.clone());
        s.write_state(st)?;
        Ok(ErasureRecord { n: line.n, time_us, partition: self.partition, generation: self.generation, reason: line.reason, peers: peers.to_vec(), mac: line.mac })
    }
}

#[cfg(test)]
mod tests {
    use crate::{KeyFile, KeyProvider, PartitionId, RecordAad, RecordKey, Vault, VaultError, WrappedKey};
    use std::sync::Arc;

    fn vault(dir: &std::path::Path, root: Option<&WrappedKey>) -> (Vault, WrappedKey) {
        let kp = dir.join("k.json");
        let kf: Arc<dyn KeyProvider> = Arc::new(if kp.exists() { KeyFile::open(&kp).unwrap() } else { KeyFile::create(&kp).unwrap() });
        let (v, w) = match root {
            Some(r) => (Vault::open(kf, r).unwrap(), r.clone()),
            None => Vault::create(kf).unwrap(),
        };
        (v.with_erasure(&kp).unwrap(), w)
    }

    fn part(b: u16, n: u8) -> PartitionId {
        let mut p = [n; 32];
        p[..2].copy_from_slice(&b.to_be_bytes());
        PartitionId(p)
    }

    fn seal_check(v: &Vault, p: &PartitionId, w: &WrappedKey) -> Result<(), VaultError> {
        let k = v.open_data_key(p, w)?;
        let aad = RecordAad { resource_type: "Patient", record: &RecordKey([3; 32]), version: 1, partition: p, dek_version: 1 };
        k.open(&aad, &k.seal(&aad, b"x")?).map(|_| ())
    }

    #[test]
    fn erasure_destroys_the_key_and_keeps_the_peers() {
        let dir = tempfile::tempdir().unwrap();
        let (v, root) = vault(dir.path(), None);
        let (victim, peer, other) = (part(7, 1), part(7, 2), part(8, 1));
        let (kv, wv) = v.new_data_key(&victim).unwrap();
        let (_, wp) = v.new_data_key(&peer).unwrap();
        let (_, wo) = v.new_data_key(&other).unwrap();
        assert_eq!((wv.shred_generation(), wp.shred_generation()), (Some(1), Some(1)));
        let aad = RecordAad { resource_type: "Patient", record: &RecordKey([3; 32]), version: 1, partition: &victim, dek_version: 1 };
        let sealed = kv.seal(&aad, b"secret").unwrap();

        let e = v.begin_erasure(&victim).unwrap();
        assert!(e.rewrap_peer(&victim, &wv).unwrap().is_none(), "the erased key is not rewrapped");
        assert!(e.rewrap_peer(&other, &wo).unwrap().is_none(), "another bucket is untouched");
        let wp2 = e.rewrap_peer(&peer, &wp).unwrap().expect("the peer moves to the new generation");
        assert_eq!(wp2.shred_generation(), Some(2));
        let rec = e.finish("court-order", 1, &[(peer, wp2.clone())]).unwrap();
        assert_eq!((rec.n, rec.generation), (1, 2));

        // A fresh process with the same key file: the victim's key opens under nothing, the
        // peer's new wrap and the other bucket open; the peer's old wrap is gone too.
        let (v2, _) = vault(dir.path(), Some(&root));
        assert!(v2.open_data_key(&victim, &wv).is_err());
        assert!(seal_check(&v2, &peer, &wp2).is_ok());
        assert!(v2.open_data_key(&peer, &wp).is_err());
        assert!(seal_check(&v2, &other, &wo).is_ok());
        assert!(v.open_data_key(&victim, &wv).is_err(), "also in the process that erased");
        assert!(kv.open(&aad, &sealed).is_ok(), "(only a key already unwrapped in memory still opens)");
        let ledger = v2.erasure_ledger().unwrap();
        assert_eq!(ledger.len(), 1);
        assert_eq!(ledger[0].peers, vec![(peer, wp2)]);
        assert!(matches!(v2.open_data_key(&victim, &WrappedKey::erased()), Err(VaultError::Erased)));
    }

    #[test]
    fn a_damaged_ledger_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (v, root) = vault(dir.path(), None);
        for n in 1..=2u8 {
            let p = part(9, n);
            v.new_data_key(&p).unwrap();
            v.begin_erasure(&p).unwrap().finish("created-in-error", 1, &[]).unwrap();
        }
        let path = dir.path().join("k.json.erasures");
        let text = std::fs::read_to_string(&path).unwrap();
        let check = |what: &str| {
            let (v2, _) = vault(dir.path(), Some(&root));
            assert!(matches!(v2.erasure_ledger(), Err(VaultError::Ledger(_))), "{what}");
        };
        std::fs::write(&path, format!("{}\n", text.lines().next().unwrap())).unwrap();
        check("truncated");
        std::fs::remove_file(&path).unwrap();
        check("removed");
        std::fs::write(&path, text.replace("created-in-error", "court-order")).unwrap();
        check("edited");
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n", lines[1], lines[0])).unwrap();
        check("reordered");
        // A torn line after the last entry (a crash while appending) is not an entry.
        std::fs::write(&path, format!("{text}{{\"n\":3,")).unwrap();
        let (v2, _) = vault(dir.path(), Some(&root));
        assert_eq!(v2.erasure_ledger().unwrap().len(), 2);
        let p = part(9, 3);
        v2.new_data_key(&p).unwrap();
        v2.begin_erasure(&p).unwrap().finish("court-order", 1, &[]).unwrap();
        assert_eq!(v2.erasure_ledger().unwrap().len(), 3, "the torn line was cut off before the next entry");
    }

    #[test]
    fn kek_wrapped_keys_migrate_and_shred_keys_follow_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let kp = dir.path().join("k.json");
        let kf: Arc<dyn KeyProvider> = Arc::new(KeyFile::create(&kp).unwrap());
        let (plain, root) = Vault::create(kf).unwrap();
        let p = part(3, 1);
        let (_, legacy) = plain.new_data_key(&p).unwrap();
        assert!(legacy.is_kek_wrapped(), "without shred keys, the KEK wraps data keys (as earlier releases did)");
        let (v, _) = vault(dir.path(), Some(&root));
        assert!(seal_check(&v, &p, &legacy).is_ok(), "a KEK-wrapped key still opens");
        let moved = v.migrate_data_key(&p, &legacy).unwrap().expect("moved into its bucket");
        assert_eq!(moved.shred_generation(), Some(1));
        assert!(v.migrate_data_key(&p, &moved).unwrap().is_none());
        let new = v.provider().rotate().unwrap();
        assert_eq!(v.rewrap_shred_keys(new).unwrap(), super::SHRED_BUCKETS as usize);
        let aad = RecordAad { resource_type: "Patient", record: &RecordKey([3; 32]), version: 1, partition: &p, dek_version: 1 };
        let sealed = plain.open_data_key(&p, &legacy).unwrap().seal(&aad, b"before").unwrap();
        let (v2, _) = vault(dir.path(), Some(&root));
        assert_eq!(&*v2.open_data_key(&p, &moved).unwrap().open(&aad, &sealed).unwrap(), b"before", "the same data key, under the rotated shred keys");
    }
}
