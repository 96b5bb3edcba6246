//! Where attachments' sealed bytes live: the [`BlobStore`] trait (streamed writes that become
//! visible only when committed, ranged reads) and its default backend, [`FileBlobStore`]:
//! files under the data directory. S3-compatible object storage implements the same trait
//! later; [`conformance`] is the suite every backend runs.
//!
//! *Architecture invariant:* a blob store sees only sealed bytes (segmented ciphertext from
//! the vault) under opaque ids; it never sees plaintext, content types or patients.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Result, StoreError};

/// A blob's opaque name (a keyed hash chosen by the engine).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A blob being written. Nothing is visible until [`BlobWriter::commit`]; dropping it
/// uncommitted discards what was written.
pub trait BlobWriter: Send {
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// Makes the blob durable and visible; returns its length.
    fn commit(self: Box<Self>) -> Result<u64>;
}

/// The storage of attachments.
pub trait BlobStore: Send + Sync + 'static {
    /// Starts writing a new blob; [`StoreError::Conflict`] at commit if `id` exists by then.
    fn create(&self, id: &BlobId) -> Result<Box<dyn BlobWriter>>;
    /// The length of a blob, if it exists.
    fn len(&self, id: &BlobId) -> Result<Option<u64>>;
    /// Up to `len` bytes from `offset` (fewer at the end of the blob); `None` if it does not exist.
    fn read_at(&self, id: &BlobId, offset: u64, len: usize) -> Result<Option<Vec<u8>>>;
    /// Removes a blob; returns whether it existed.
    fn delete(&self, id: &BlobId) -> Result<bool>;
}

/// Creates a directory and its missing parents readable by the owner only (0700).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("blob store: {e}"))
}

/// Blobs as files: `<root>/<2 hex>/<2 hex>/<64 hex>`, written to a temporary file first,
/// fsynced, then linked into place (and the directory fsynced), so a crash leaves a blob whole
/// or absent.
///
/// Temporary files belong to their process: each process that writes gets its own directory
/// `<root>/tmp/<pid>-<random>/` holding a `lock` file it keeps exclusively locked for as long
/// as the store (or one of its writers) lives. Opening a store removes only the directories
/// whose lock can be taken (their owner is gone) and files of the older flat layout, so a
/// command or a second server opening the data directory never breaks an upload in flight.
pub struct FileBlobStore {
    root: PathBuf,
    /// This process's temporary directory, made at the first write.
    own: std::sync::Mutex<Option<Arc<OwnTmp>>>,
}

/// A temporary directory held by this process: its lock file stays open (and locked) until
/// the last user drops it, then the directory goes.
struct OwnTmp {
    dir: PathBuf,
    _lock: std::fs::File,
}

impl Drop for OwnTmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const LOCK_FILE: &str = "lock";

fn hex8() -> Result<String> {
    let mut nonce = [0u8; 8];
    brankas_vault::random_bytes(&mut nonce).map_err(|_| StoreError::Backend("no randomness".into()))?;
    Ok(nonce.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `path` still names the file open as `f` (a sweeper may have removed it between
/// its creation and its locking).
fn same_file(f: &std::fs::File, path: &Path) -> bool {
    let (Ok(a), Ok(b)) = (f.metadata(), std::fs::metadata(path)) else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        a.dev() == b.dev() && a.ino() == b.ino()
    }
    #[cfg(not(unix))]
    {
        a.len() == b.len()
    }
}

impl FileBlobStore {
    /// Opens (creating) the store at `root` (e.g. `<data-dir>/blobs`); clears the temporary
    /// files of processes that are gone, never those of a live one.
    pub fn open(root: &Path) -> Result<Self> {
        let tmp = root.join("tmp");
        private_dir(&tmp).map_err(io)?;
        for e in std::fs::read_dir(&tmp).map_err(io)?.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => sweep_dir(&path),
                // The flat layout of earlier versions: no owner can be told.
                Ok(_) => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(_) => {}
            }
        }
        Ok(Self { root: root.to_path_buf(), own: std::sync::Mutex::new(None) })
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        let h = id.hex();
        self.root.join(&h[..2]).join(&h[2..4]).join(h)
    }

    /// This process's temporary directory, made (and locked) on first use.
    fn own_tmp(&self) -> Result<Arc<OwnTmp>> {
        let mut own = self.own.lock().map_err(|_| StoreError::Backend("blob store lock poisoned".into()))?;
        if let Some(t) = own.as_ref() {
            return Ok(t.clone());
        }
        // A sweeper in another process may remove a directory between its creation and the
        // locking of its lock file; then the check below fails and another name is tried.
        for _ in 0..16 {
            let dir = self.root.join("tmp").join(format!("{}-{}", std::process::id(), hex8()?));
            private_dir(&self.root.join("tmp")).map_err(io)?;
            let mut b = std::fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            match b.create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(e)),
            }
            let lock_path = dir.join(LOCK_FILE);
            let mut lock_opts = std::fs::OpenOptions::new();
            lock_opts.read(true).write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut lock_opts, 0o600);
            let f = match lock_opts.open(&lock_path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            f.lock().map_err(io)?;
            if !same_file(&f, &lock_path) {
                continue;
            }
            let t = Arc::new(OwnTmp { dir, _lock: f });
            *own = Some(t.clone());
            return Ok(t);
        }
        Err(StoreError::Backend("blob store: no temporary directory could be claimed".into()))
    }
}

/// Removes another process's temporary directory if its owner is gone (its lock can be
/// taken); a directory without a lock file is removed only when empty (its owner may be
/// about to create the lock file, and then retries under another name).
fn sweep_dir(dir: &Path) {
    match std::fs::OpenOptions::new().read(true).write(true).open(dir.join(LOCK_FILE)) {
        Ok(f) => {
            if f.try_lock().is_ok() {
                // Held while removing: an owner that had not locked yet finds its lock file
                // gone afterwards and starts over.
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = std::fs::remove_dir(dir);
        }
        Err(_) => {}
    }
}

struct FileWriter {
    /// Keeps this process's temporary directory (and its lock) alive while writing.
    _own: Arc<OwnTmp>,
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<std::fs::File>,
    written: u64,
}

impl BlobWriter for FileWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.as_mut().ok_or_else(|| StoreError::Backend("blob writer closed".into()))?.write_all(bytes).map_err(io)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<u64> {
        let f = self.file.take().ok_or_else(|| StoreError::Backend("blob writer closed".into()))?;
        f.sync_all().map_err(io)?;
        drop(f);
        let dir = self.dest.parent().ok_or_else(|| StoreError::Backend("blob path".into()))?.to_path_buf();
        private_dir(&dir).map_err(io)?;
        // A hard link is created atomically and never replaces an existing name: of two
        // writers of one id, exactly one wins.
        match std::fs::hard_link(&self.tmp, &self.dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(StoreError::Conflict { index: 0 }),
            Err(e) => return Err(io(e)),
        }
        std::fs::remove_file(&self.tmp).map_err(io)?;
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(self.written)
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() || self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl BlobStore for FileBlobStore {
    fn create(&self, id: &BlobId) -> Result<Box<dyn BlobWriter>> {
        let own = self.own_tmp()?;
        let tmp = own.dir.join(format!("{}-{}", id.hex(), hex8()?));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let file = opts.open(&tmp).map_err(io)?;
        Ok(Box::new(FileWriter { _own: own, tmp, dest: self.path(id), file: Some(file), written: 0 }))
    }

    fn len(&self, id: &BlobId) -> Result<Option<u64>> {
        match std::fs::metadata(self.path(id)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    fn read_at(&self, id: &BlobId, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
        let mut f = match std::fs::File::open(self.path(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut out = Vec::with_capacity(len.min(16 * 1024 * 1024));
        f.take(len as u64).read_to_end(&mut out).map_err(io)?;
        Ok(Some(out))
    }

    fn delete(&self, id: &BlobId) -> Result<bool> {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(e)),
        }
    }
}

/// The suite every blob store backend passes unchanged.
pub mod conformance {
    use super::*;

    fn id(n: u8) -> BlobId {
        BlobId([n; 32])
    }

    /// Runs every check against fresh stores from `fresh`.
    pub fn run_all(fresh: &mut dyn FnMut() -> Box<dyn BlobStore>) {
        write_read_delete(fresh().as_ref());
        uncommitted_is_invisible(fresh().as_ref());
        existing_ids_are_not_overwritten(fresh().as_ref());
    }

    fn write_read_delete(s: &dyn BlobStore) {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = s.create(&id(1)).unwrap();
        for c in data.chunks(65_551) {
            w.write(c).unwrap();
        }
        assert_eq!(w.commit().unwrap(), data.len() as u64);
        assert_eq!(s.len(&id(1)).unwrap(), Some(data.len() as u64));
        assert_eq!(s.read_at(&id(1), 0, data.len()).unwrap().unwrap(), data);
        assert_eq!(s.read_at(&id(1), 70_000, 10).unwrap().unwrap(), &data[70_000..70_010]);
        assert_eq!(s.read_at(&id(1), data.len() as u64 - 3, 100).unwrap().unwrap(), &data[data.len() - 3..], "short at the end");
        assert!(s.read_at(&id(1), data.len() as u64 + 5, 10).unwrap().unwrap().is_empty());
        assert_eq!(s.len(&id(2)).unwrap(), None);
        assert_eq!(s.read_at(&id(2), 0, 1).unwrap(), None);
        assert!(s.delete(&id(1)).unwrap());
        assert!(!s.delete(&id(1)).unwrap());
        assert_eq!(s.len(&id(1)).unwrap(), None);
        let empty = s.create(&id(3)).unwrap();
        assert_eq!(empty.commit().unwrap(), 0);
        assert_eq!(s.read_at(&id(3), 0, 10).unwrap().unwrap(), Vec::<u8>::new());
    }

    fn uncommitted_is_invisible(s: &dyn BlobStore) {
        let mut w = s.create(&id(4)).unwrap();
        w.write(b"half").unwrap();
        assert_eq!(s.len(&id(4)).unwrap(), None, "invisible before commit");
        drop(w);
        assert_eq!(s.len(&id(4)).unwrap(), None, "discarded when dropped");
        let mut w = s.create(&id(4)).unwrap();
        w.write(b"whole").unwrap();
        w.commit().unwrap();
        assert_eq!(s.read_at(&id(4), 0, 10).unwrap().unwrap(), b"whole");
    }

    fn existing_ids_are_not_overwritten(s: &dyn BlobStore) {
        let mut a = s.create(&id(5)).unwrap();
        let mut b = s.create(&id(5)).unwrap();
        a.write(b"first").unwrap();
        b.write(b"second").unwrap();
        a.commit().unwrap();
        assert!(matches!(b.commit(), Err(StoreError::Conflict { .. })));
        assert_eq!(s.read_at(&id(5), 0, 10).unwrap().unwrap(), b"first");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_blob_store_conformance() {
        let dirs = std::cell::RefCell::new(Vec::new());
        conformance::run_all(&mut || {
            let d = tempfile::tempdir().unwrap();
            let s = FileBlobStore::open(&d.path().join("blobs")).unwrap();
            dirs.borrow_mut().push(d);
            Box::new(s)
        });
    }

    #[test]
    fn abandoned_temporary_files_are_cleared_on_open() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("blobs");
        let tmp = root.join("tmp");
        let s = FileBlobStore::open(&root).unwrap();
        let mut w = s.create(&BlobId([9; 32])).unwrap();
        w.write(b"x").unwrap();
        // As if the process died mid-upload: its directory stays, its lock goes with it.
        let dead = s.own.lock().unwrap().as_ref().unwrap().dir.clone();
        std::mem::forget(w);
        let own = s.own.lock().unwrap().take().unwrap();
        own._lock.unlock().unwrap();
        std::mem::forget(own); // keeps the directory on disk
        assert!(dead.join(LOCK_FILE).exists());
        // Files of the earlier flat layout, and an empty directory whose owner never locked.
        std::fs::write(tmp.join("aa-flat"), b"old").unwrap();
        std::fs::create_dir(tmp.join("1-empty")).unwrap();
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 3);
        let _ = FileBlobStore::open(&root).unwrap();
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "the dead owner's files, the flat files and the empty directory went");
    }

    #[test]
    fn another_open_keeps_uploads_in_flight() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("blobs");
        let a = FileBlobStore::open(&root).unwrap();
        let mut w = a.create(&BlobId([7; 32])).unwrap();
        w.write(b"first half, ").unwrap();
        // A command or a second server opens the same directory while the upload goes on.
        let b = FileBlobStore::open(&root).unwrap();
        let mut other = b.create(&BlobId([8; 32])).unwrap();
        other.write(b"theirs").unwrap();
        let _ = FileBlobStore::open(&root).unwrap();
        w.write(b"second half").unwrap();
        assert_eq!(w.commit().unwrap(), 23);
        assert_eq!(other.commit().unwrap(), 6);
        assert_eq!(b.read_at(&BlobId([7; 32]), 0, 100).unwrap().unwrap(), b"first half, second half");
        // Each store's directory goes with it.
        drop(a);
        drop(b);
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    }
}
