//! Whole-directory operations of the embedded backend, for the operator's tools rather than
//! for requests: scans of every row (`brankas verify`), SQLite's own structural checks (at
//! start and on demand), and a consistent online snapshot of the three database files
//! (`brankas backup`). None of them is part of the [`Store`](crate::Store) trait: another
//! backend has its own tools for these.

use std::path::{Path, PathBuf};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, be, blob32, current_sql, open_conn, owner_only, row};
use crate::{BlindTerm, RecordKey, Result, StoreError, VersionRow};

/// What SQLite's check found in one database file (`problems` empty: the file is sound).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCheck {
    /// The file's name within the data directory.
    pub file: String,
    /// The file does not exist (then `problems` is empty: nothing was checked).
    pub missing: bool,
    /// SQLite's messages (page numbers, tables and indexes; never row content), at most 20.
    pub problems: Vec<String>,
}

/// How thorough a structural check is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckDepth {
    /// `PRAGMA quick_check`: every page of every B-tree is read and its structure checked
    /// (linear in the file's size), without matching indexes against their tables.
    Quick,
    /// `PRAGMA integrity_check`: also matches every index entry against its row.
    Full,
}

impl SqliteStore {
    /// The three database files of the main database at `path`, in the order a snapshot takes
    /// them: the data, then the audit log, then the guard's state.
    pub fn files(path: &Path) -> [PathBuf; 3] {
        [path.to_path_buf(), Self::audit_path(path), path.with_extension("guard.db")]
    }

    /// Runs SQLite's structural check on each of the three files of the database at `path`,
    /// on connections of its own (read-only; writers carry on meanwhile).
    pub fn check_files(path: &Path, depth: CheckDepth) -> Result<Vec<FileCheck>> {
        let pragma = match depth {
            CheckDepth::Quick => "PRAGMA quick_check(20)",
            CheckDepth::Full => "PRAGMA integrity_check(20)",
        };
        let mut out = Vec::new();
        for f in Self::files(path) {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !f.exists() {
                out.push(FileCheck { file: name, missing: true, problems: Vec::new() });
                continue;
            }
            let problems = match open_conn(&f, false).and_then(|c| {
                let mut q = c.prepare(pragma).map_err(be)?;
                let rows: Vec<String> = q.query_map([], |r| r.get::<_, String>(0)).map_err(be)?.collect::<rusqlite::Result<_>>().map_err(be)?;
                Ok(rows)
            }) {
                Ok(rows) => rows.into_iter().filter(|r| r != "ok").collect(),
                Err(StoreError::Corrupt) => vec!["SQLite reports the file as malformed and could not finish checking it".to_string()],
                Err(e) => return Err(e),
            };
            out.push(FileCheck { file: name, missing: false, problems });
        }
        Ok(out)
    }

    /// Version rows in (record, version) order after `after`, at most `limit`.
    pub fn scan_versions(&self, after: Option<(&RecordKey, u64)>, limit: usize) -> Result<Vec<VersionRow>> {
        let (k, v) = after.map_or((Vec::new(), -1), |(k, v)| (k.0.to_vec(), v as i64));
        self.read(|c| {
            c.prepare_cached(&format!("SELECT {} FROM versions v WHERE (v.rkey, v.version) > (CAST(?1 AS BLOB), ?2) ORDER BY v.rkey, v.version LIMIT ?3", super::ROW_COLS))?
                .query_map(params![k, v, limit as i64], row)?
                .collect()
        })
    }

    /// Current pointers in record order after `after`, at most `limit`, each with the version
    /// row it names, checked as [`Store::current`](crate::Store::current) checks it: a pointer
    /// that names no row, disagrees with it, or names an older version than the record's
    /// newest is [`StoreError::Corrupt`].
    pub fn scan_current(&self, after: Option<&RecordKey>, limit: usize) -> Result<Vec<(RecordKey, Result<VersionRow>)>> {
        let k = after.map(|k| k.0.to_vec()).unwrap_or_default();
        self.read(|c| {
            let keys: Vec<Vec<u8>> = c
                .prepare_cached("SELECT rkey FROM current WHERE rkey > CAST(?1 AS BLOB) ORDER BY rkey LIMIT ?2")?
                .query_map(params![k, limit as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut q = c.prepare_cached(&current_sql(super::KEY_FILTER))?;
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                let rk = RecordKey(blob32(&key)?);
                let found = q.query_map([&key], super::current_row)?.next().transpose()?;
                out.push((rk, found.unwrap_or(Err(StoreError::Corrupt))));
            }
            Ok(out)
        })
    }

    /// List entries in (list, entry) order after `after`, at most `limit`.
    pub fn scan_list_entries(&self, after: Option<(&[u8; 32], &[u8; 32])>, limit: usize) -> Result<Vec<crate::ListEntry>> {
        let (l, e) = after.map_or((Vec::new(), Vec::new()), |(l, e)| (l.to_vec(), e.to_vec()));
        self.read(|c| {
            c.prepare_cached("SELECT list, entry, sealed FROM list_entries WHERE (list, entry) > (CAST(?1 AS BLOB), CAST(?2 AS BLOB)) ORDER BY list, entry LIMIT ?3")?
                .query_map(params![l, e, limit as i64], super::list_entry)?
                .collect()
        })
    }

    /// Search entries `(record, version, sealed entry)` in record order after `after`, at most
    /// `limit`.
    pub fn scan_entries(&self, after: Option<&RecordKey>, limit: usize) -> Result<Vec<(RecordKey, u64, Vec<u8>)>> {
        let k = after.map(|k| k.0.to_vec()).unwrap_or_default();
        self.read(|c| {
            c.prepare_cached("SELECT rkey, version, entry FROM entries WHERE rkey > CAST(?1 AS BLOB) ORDER BY rkey LIMIT ?2")?
                .query_map(params![k, limit as i64], |r| Ok((RecordKey(blob32(r.get_ref(0)?.as_blob()?)?), r.get::<_, i64>(1)? as u64, r.get(2)?)))?
                .collect()
        })
    }

    /// Blind-index rows (term, record) in order after `after`, at most `limit`.
    pub fn scan_blind(&self, after: Option<(&BlindTerm, &RecordKey)>, limit: usize) -> Result<Vec<(BlindTerm, RecordKey)>> {
        let (t, k) = after.map_or((Vec::new(), Vec::new()), |(t, k)| (t.0.to_vec(), k.0.to_vec()));
        self.read(|c| {
            c.prepare_cached("SELECT term, rkey FROM blind WHERE (term, rkey) > (CAST(?1 AS BLOB), CAST(?2 AS BLOB)) ORDER BY term, rkey LIMIT ?3")?
                .query_map(params![t, k, limit as i64], |r| Ok((BlindTerm(blob32(r.get_ref(0)?.as_blob()?)?), RecordKey(blob32(r.get_ref(1)?.as_blob()?)?))))?
                .collect()
        })
    }

    /// Each record's list of blind-index terms, in record order after `after`, at most `limit`
    /// (a list whose length is not a whole number of terms is [`StoreError::Corrupt`]).
    pub fn scan_blind_terms(&self, after: Option<&RecordKey>, limit: usize) -> Result<Vec<(RecordKey, Result<Vec<BlindTerm>>)>> {
        let k = after.map(|k| k.0.to_vec()).unwrap_or_default();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self.read(|c| {
            c.prepare_cached("SELECT rkey, terms FROM blind_terms WHERE rkey > CAST(?1 AS BLOB) ORDER BY rkey LIMIT ?2")?
                .query_map(params![k, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })?;
        rows.into_iter()
            .map(|(k, t)| {
                let key = RecordKey(k.as_slice().try_into().map_err(|_| StoreError::Corrupt)?);
                let terms = if t.len().is_multiple_of(32) { Ok(t.chunks(32).map(|c| BlindTerm(c.try_into().expect("32 bytes"))).collect()) } else { Err(StoreError::Corrupt) };
                Ok((key, terms))
            })
            .collect()
    }

    /// One record's list of blind-index terms (empty when it has none).
    pub fn blind_terms_of(&self, key: &RecordKey) -> Result<Vec<BlindTerm>> {
        let t: Option<Vec<u8>> = self.read(|c| c.prepare_cached("SELECT terms FROM blind_terms WHERE rkey = ?1")?.query_row([&key.0[..]], |r| r.get(0)).optional())?;
        let t = t.unwrap_or_default();
        if !t.len().is_multiple_of(32) {
            return Err(StoreError::Corrupt);
        }
        Ok(t.chunks(32).map(|c| BlindTerm(c.try_into().expect("32 bytes"))).collect())
    }

    /// Copies the three database files of the main database at `path` into `dir` (as `brankas.db`, `brankas.audit.db`,
    /// `brankas.guard.db`, each created 0600) while writers carry on, and returns their paths.
    ///
    /// Each copy is one snapshot of its file (SQLite's online backup inside a read
    /// transaction: pages committed later are not seen). The three read transactions begin
    /// one after the other *before* any copying, in the order of [`SqliteStore::files`]: the
    /// data first, then the audit log. A write's audit record is durable before its answer
    /// leaves, so every write acknowledged before the snapshot has its record in the audit
    /// snapshot, which began later; the audit snapshot may also hold records of writes that
    /// came after the data snapshot (harmless: a record of an access, not data). A write in
    /// flight whose data commits just before the data snapshot and whose audit record is
    /// appended after the audit snapshot began (microseconds later) is in the data copy
    /// without its record; once data and audit commit together, or audit first, this order
    /// makes the pair exact. The copies are left in rollback-journal mode, one self-contained
    /// file each, whose bytes do not change until they are opened for writing.
    pub fn snapshot_into(path: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
        let srcs = Self::files(path);
        let mut conns = Vec::new();
        for s in &srcs {
            let c = open_conn(s, false)?;
            c.execute_batch("BEGIN").map_err(be)?;
            // The snapshot is fixed by the first read of the transaction.
            c.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get::<_, i64>(0)).map_err(be)?;
            conns.push(c);
        }
        let mut out = Vec::new();
        for (c, s) in conns.iter().zip(&srcs) {
            let dest = dir.join(s.file_name().ok_or_else(|| StoreError::Backend("database path".into()))?);
            owner_only(&dest)?;
            let mut to = Connection::open(&dest).map_err(be)?;
            {
                let b = Backup::new(c, &mut to).map_err(be)?;
                loop {
                    match b.step(-1).map_err(be)? {
                        StepResult::Done => break,
                        StepResult::More => {}
                        _ => std::thread::sleep(std::time::Duration::from_millis(20)),
                    }
                }
            }
            to.execute_batch("PRAGMA journal_mode=DELETE;").map_err(be)?;
            drop(to);
            std::fs::File::open(&dest).and_then(|f| f.sync_all()).map_err(|e| StoreError::Backend(format!("{}: {e}", dest.display())))?;
            out.push(dest);
        }
        for c in &conns {
            let _ = c.execute_batch("COMMIT");
        }
        Ok(out)
    }

    /// Puts a database file copied by [`SqliteStore::snapshot_into`] and opened since (for its
    /// checks) back into rollback-journal mode: its WAL folded in and removed, so the file
    /// alone is the database again.
    pub fn settle_copy(path: &Path) -> Result<()> {
        for f in Self::files(path) {
            let c = Connection::open(&f).map_err(be)?;
            c.execute_batch("PRAGMA journal_mode=DELETE;").map_err(be)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{sample_dek, sample_row};
    use crate::{Expect, NewVersion, Store, WriteBatch};

    fn store_with_rows(path: &Path, n: u8) -> SqliteStore {
        let s = SqliteStore::open(path).unwrap();
        for k in 1..=n {
            let mut row = sample_row(k, 1, 1, "Patient");
            row.sealed = vec![0xA5; 600];
            s.commit(&WriteBatch { versions: vec![NewVersion { row, expect: Expect::Absent, entry: None }], deks: vec![sample_dek(1)], ..Default::default() }).unwrap();
        }
        s
    }

    #[test]
    fn a_damaged_page_is_corruption_not_a_transient_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("brankas.db");
        drop(store_with_rows(&path, 20));
        // The leaf page holding the rows loses its page type.
        let mut file = std::fs::read(&path).unwrap();
        let at = file.windows(64).position(|w| w.iter().all(|b| *b == 0xA5)).unwrap();
        file[at / 4096 * 4096] = 0;
        std::fs::write(&path, file).unwrap();
        let checks = SqliteStore::check_files(&path, CheckDepth::Quick).unwrap();
        assert!(!checks[0].problems.is_empty(), "{checks:?}");
        assert!(checks[1].problems.is_empty() && checks[2].problems.is_empty());
        let s = SqliteStore::open(&path).unwrap();
        let r = s.current(&sample_row(1, 1, 1, "Patient").key);
        assert!(matches!(r, Err(StoreError::Corrupt)), "{r:?}");
    }

    #[cfg(unix)]
    #[test]
    fn database_files_are_created_for_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("brankas.db");
        // A file left by an earlier release, readable by all, is narrowed too.
        std::fs::write(path.with_extension("guard.db"), b"").unwrap();
        std::fs::set_permissions(path.with_extension("guard.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = store_with_rows(&path, 1);
        let out = tempfile::tempdir().unwrap();
        let copies = SqliteStore::snapshot_into(&path, out.path()).unwrap();
        drop(s);
        for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
            assert_eq!(e.metadata().unwrap().permissions().mode() & 0o777, 0o600, "{}", e.path().display());
        }
        for c in copies {
            assert_eq!(std::fs::metadata(&c).unwrap().permissions().mode() & 0o777, 0o600, "{}", c.display());
        }
    }

    #[test]
    fn a_snapshot_is_a_whole_database_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("brankas.db");
        let s = store_with_rows(&path, 5);
        let out = tempfile::tempdir().unwrap();
        SqliteStore::snapshot_into(&path, out.path()).unwrap();
        // Written after the snapshot: not in it.
        let mut row = sample_row(9, 1, 1, "Patient");
        row.sealed = vec![1; 10];
        s.commit(&WriteBatch { versions: vec![NewVersion { row, expect: Expect::Absent, entry: None }], ..Default::default() }).unwrap();
        let names: Vec<_> = std::fs::read_dir(out.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 3, "one file per database, no journal: {names:?}");
        let copy = SqliteStore::open(&out.path().join("brankas.db")).unwrap();
        assert_eq!(copy.versions_present().unwrap(), 5);
        assert_eq!(copy.scan_versions(None, 100).unwrap().len(), 5);
    }
}
