//! Key providers: where key-encryption keys live.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use crate::aead::DataKey;
use crate::{VaultError, random_bytes};

/// Identifies one key-encryption key of a provider. Stored next to every wrapped key so
/// that unwrapping finds the right KEK after rotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KekId(pub u32);

impl std::fmt::Display for KekId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kek-{}", self.0)
    }
}

/// Holds key-encryption keys outside the data store and wraps/unwraps smaller keys with them.
///
/// *Architecture invariant:* a KEK never leaves its provider; callers only see wrapped bytes.
pub trait KeyProvider: Send + Sync {
    /// The KEK new wraps should use.
    fn current(&self) -> Result<KekId, VaultError>;
    /// Encrypts `key` (a data key or the system root) under KEK `kek`, bound to `context`.
    fn wrap(&self, kek: KekId, key: &[u8], context: &[u8]) -> Result<Vec<u8>, VaultError>;
    /// Reverses [`KeyProvider::wrap`]; fails on any tampering or context mismatch.
    fn unwrap(&self, kek: KekId, wrapped: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError>;
    /// Creates a new KEK and makes it current. Older KEKs stay available for unwrapping.
    fn rotate(&self) -> Result<KekId, VaultError>;
    /// Re-reads provider state changed by another process (e.g. `brankas keys rotate`).
    fn reload(&self) -> Result<(), VaultError>;
    /// Every KEK id the provider can unwrap with.
    fn kek_ids(&self) -> Result<Vec<KekId>, VaultError>;
}

/// KEKs kept in a JSON file (mode 0600) outside the data directory.
///
/// A thief of the data directory alone gets only wrapped keys. The file is rewritten
/// atomically (temporary file, fsync, rename) so a crash never leaves it half-written.
pub struct KeyFile {
    path: PathBuf,
    state: RwLock<KeyFileState>,
    /// Modification stamp of the file as last read: `current()` re-reads the file when it
    /// changes, so a server picks up a KEK rotated by `brankas keys rotate` for new keys.
    stamp: RwLock<Option<(std::time::SystemTime, u64)>>,
}

pub(crate) fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let m = fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

struct KeyFileState {
    current: KekId,
    keks: BTreeMap<KekId, DataKey>,
    /// Raw bytes kept only to rewrite the file on rotation.
    raw: BTreeMap<KekId, Zeroizing<Vec<u8>>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FileFormat {
    format: String,
    current: u32,
    keks: Vec<FileKek>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FileKek {
    id: u32,
    key: String,
}

const FORMAT: &str = "brankas-keyfile-v1";

impl KeyFile {
    /// Creates a new key file with one fresh KEK. Fails if `path` exists.
    pub fn create(path: &Path) -> Result<Self, VaultError> {
        if path.exists() {
            return Err(VaultError::KeyFile("already exists".into()));
        }
        let mut raw = Zeroizing::new(vec![0u8; 32]);
        random_bytes(&mut raw)?;
        let mut state = KeyFileState { current: KekId(1), keks: BTreeMap::new(), raw: BTreeMap::new() };
        state.keks.insert(KekId(1), DataKey::from_bytes(&raw)?);
        state.raw.insert(KekId(1), raw);
        write_atomically(path, &state, true)?;
        Ok(Self { path: path.to_owned(), state: RwLock::new(state), stamp: RwLock::new(file_stamp(path)) })
    }

    /// Opens an existing key file. Refuses one readable by group or others, as ssh does
    /// with private keys: a world-readable KEK is a leaked KEK.
    pub fn open(path: &Path) -> Result<Self, VaultError> {
        let stamp = file_stamp(path);
        let state = read_state(path)?;
        Ok(Self { path: path.to_owned(), state: RwLock::new(state), stamp: RwLock::new(stamp) })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_kek<T>(&self, kek: KekId, f: impl FnOnce(&DataKey) -> Result<T, VaultError>) -> Result<T, VaultError> {
        {
            let st = self.state.read().map_err(|_| VaultError::KeyFile("lock poisoned".into()))?;
            if let Some(k) = st.keks.get(&kek) {
                return f(k);
            }
        }
        // Another process may have rotated: re-read once before giving up.
        self.reload()?;
        let st = self.state.read().map_err(|_| VaultError::KeyFile("lock poisoned".into()))?;
        match st.keks.get(&kek) {
            Some(k) => f(k),
            None => Err(VaultError::UnknownKek(kek)),
        }
    }
}

fn wrap_aad(kek: KekId, context: &[u8]) -> Vec<u8> {
    let mut a = b"brankas-wrap-v1".to_vec();
    a.extend_from_slice(&kek.0.to_be_bytes());
    a.extend_from_slice(context);
    a
}

impl KeyProvider for KeyFile {
    fn current(&self) -> Result<KekId, VaultError> {
        let now = file_stamp(&self.path);
        let seen = *self.stamp.read().map_err(|_| VaultError::KeyFile("lock poisoned".into()))?;
        if now.is_some() && now != seen {
            self.reload()?;
        }
        Ok(self.state.read().map_err(|_| VaultError::KeyFile("lock poisoned".into()))?.current)
    }

    fn wrap(&self, kek: KekId, key: &[u8], context: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.with_kek(kek, |k| k.seal_raw(&wrap_aad(kek, context), key))
    }

    fn unwrap(&self, kek: KekId, wrapped: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.with_kek(kek, |k| k.open_raw(&wrap_aad(kek, context), wrapped))
    }

    fn rotate(&self) -> Result<KekId, VaultError> {
        let mut st = self.state.write().map_err(|_| VaultError::KeyFile("lock poisoned".into()))?;
        // One rotation at a time across processes: the file is read, extended and replaced
        // under an exclusive lock, so two rotations can never both pick the same number and
        // the later rename never drops the other's key (with which it may already have
        // wrapped the root and the patients' keys).
        let _lock = lock_exclusive(&self.path)?;
        let fresh = read_state(&self.path)?;
        *st = fresh;
        let next = KekId(st.keks.keys().next_back().map(|k| k.0 + 1).unwrap_or(1));
        let mut raw = Zeroizing::new(vec![0u8; 32]);
        random_bytes(&mut raw)?;
        st.keks.insert(next, DataKey::from_bytes(&raw)?);
        st.raw.insert(next, raw);
        st.current = next;
        write_atomically(&self.path, &st, false)?;
        *self.stamp.write().map_err(|_| VaultError::KeyFile("lock poisoned".into()))? = file_stamp(&self.path);
        Ok(next)
    }

    fn reload(&self) -> Result<(), VaultError> {
        let stamp = file_stamp(&self.path);
        let fresh = read_state(&self.path)?;
        *self.stamp.write().map_err(|_| VaultError::KeyFile("lock poisoned".into()))? = stamp;
        *self.state.write().map_err(|_| VaultError::KeyFile("lock poisoned".into()))? = fresh;
        Ok(())
    }

    fn kek_ids(&self) -> Result<Vec<KekId>, VaultError> {
        Ok(self.state.read().map_err(|_| VaultError::KeyFile("lock poisoned".into()))?.keks.keys().copied().collect())
    }
}

fn read_state(path: &Path) -> Result<KeyFileState, VaultError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(|e| VaultError::KeyFile(format!("{}: {e}", path.display())))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(VaultError::KeyFile(format!("{} is accessible by group or others; run chmod 600 on it", path.display())));
        }
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| VaultError::KeyFile(format!("{}: {e}", path.display())))?);
    let parsed: FileFormat = serde_json::from_str(&text).map_err(|_| VaultError::KeyFile("not a Brankas key file".into()))?;
    if parsed.format != FORMAT {
        return Err(VaultError::KeyFile("unsupported key file format".into()));
    }
    let mut st = KeyFileState { current: KekId(parsed.current), keks: BTreeMap::new(), raw: BTreeMap::new() };
    for k in parsed.keks {
        let raw = Zeroizing::new(B64.decode(k.key.as_bytes()).map_err(|_| VaultError::KeyFile("bad key encoding".into()))?);
        if raw.len() != 32 {
            return Err(VaultError::KeyFile("key of wrong length".into()));
        }
        st.keks.insert(KekId(k.id), DataKey::from_bytes(&raw)?);
        st.raw.insert(KekId(k.id), raw);
    }
    if !st.keks.contains_key(&st.current) {
        return Err(VaultError::KeyFile("current key missing".into()));
    }
    Ok(st)
}

/// An exclusive advisory lock on `<key file>.lock` (beside the key file, created 0600), held
/// while the returned file is open: every change of the key file happens under it.
pub(crate) fn lock_exclusive(path: &Path) -> Result<fs::File, VaultError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let err = |e: std::io::Error| VaultError::KeyFile(format!("{}: {e}", lock_path.display()));
    let mut opts = fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let f = opts.open(&lock_path).map_err(err)?;
    f.lock().map_err(err)?;
    Ok(f)
}

/// Whether `text`, as it is about to replace the key file, holds every KEK of `st` with the
/// same bytes and the same current one: checked on the written file before the rename.
fn holds_all(text: &str, st: &KeyFileState) -> bool {
    let Ok(parsed) = serde_json::from_str::<FileFormat>(text) else { return false };
    parsed.current == st.current.0
        && parsed.keks.len() == st.raw.len()
        && st.raw.iter().all(|(id, raw)| parsed.keks.iter().any(|k| k.id == id.0 && B64.decode(k.key.as_bytes()).is_ok_and(|b| b[..] == raw[..])))
}

fn write_atomically(path: &Path, st: &KeyFileState, create_new: bool) -> Result<(), VaultError> {
    let ff = FileFormat { format: FORMAT.into(), current: st.current.0, keks: st.raw.iter().map(|(id, raw)| FileKek { id: id.0, key: B64.encode(&raw[..]) }).collect() };
    let text = Zeroizing::new(serde_json::to_string_pretty(&ff).map_err(|_| VaultError::KeyFile("encode".into()))?);
    replace_file(path, text.as_bytes(), create_new, |back| std::str::from_utf8(back).is_ok_and(|t| holds_all(t, st))).map_err(|e| {
        if matches!(e, VaultError::Integrity) { VaultError::KeyFile("the rewritten key file did not read back whole; the key file was not changed".into()) } else { e }
    })
}

/// Replaces `path` with `bytes` (mode 0600): a temporary file of this writer's own, fsynced,
/// read back and checked by `whole` (otherwise nothing is replaced: [`VaultError::Integrity`]),
/// renamed into place, and the directory fsynced. With `create_new`, fails if `path` exists.
pub(crate) fn replace_file(path: &Path, bytes: &[u8], create_new: bool, whole: impl Fn(&[u8]) -> bool) -> Result<(), VaultError> {
    let err = |e: std::io::Error| VaultError::KeyFile(format!("{}: {e}", path.display()));
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    // A name of this writer's own: two writers never share (or truncate) a temporary file.
    let mut tag = [0u8; 8];
    random_bytes(&mut tag)?;
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp.{}.{}", std::process::id(), tag.iter().map(|b| format!("{b:02x}")).collect::<String>()));
    let tmp = PathBuf::from(name);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    // Read back what is about to replace the file: it must be whole, or nothing is replaced.
    let back = Zeroizing::new(fs::read(&tmp).unwrap_or_default());
    if !whole(&back) {
        let _ = fs::remove_file(&tmp);
        return Err(VaultError::Integrity);
    }
    if create_new && path.exists() {
        let _ = fs::remove_file(&tmp);
        return Err(VaultError::KeyFile("already exists".into()));
    }
    fs::rename(&tmp, path).map_err(err)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_wrap_rotate_reload() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.json");
        let kf = KeyFile::create(&p).unwrap();
        assert!(KeyFile::create(&p).is_err());
        let w = kf.wrap(KekId(1), b"0123456789abcdef0123456789abcdef", b"ctx").unwrap();
        assert!(kf.unwrap(KekId(1), &w, b"other").is_err());
        let other = KeyFile::open(&p).unwrap();
        assert_eq!(other.rotate().unwrap(), KekId(2));
        // The first handle learns of KEK 2 on demand.
        let w2 = other.wrap(KekId(2), b"k", b"ctx").unwrap();
        assert_eq!(&*kf.unwrap(KekId(2), &w2, b"ctx").unwrap(), b"k");
        assert_eq!(&*other.unwrap(KekId(1), &w, b"ctx").unwrap(), b"0123456789abcdef0123456789abcdef");
        assert!(matches!(kf.unwrap(KekId(9), &w, b"ctx"), Err(VaultError::UnknownKek(_))));
        // A long-running holder learns the new current KEK when the file changes.
        assert_eq!(kf.current().unwrap(), KekId(2));
    }

    #[cfg(unix)]
    #[test]
    fn refuses_world_readable_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.json");
        KeyFile::create(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(KeyFile::open(&p).is_err());
    }
}
