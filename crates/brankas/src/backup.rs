//! `brankas backup` and `brankas restore`: a consistent online copy of a data directory, and
//! the one path by which an older copy may become the directory again.
//!
//! A backup holds everything in the data directory, as ciphertext (never the key file, which
//! lives outside it): the three databases, each one snapshot taken while writers carry on (the
//! data first, then the audit log, so every write acknowledged before the backup has its audit
//! record; see [`SqliteStore::snapshot_into`] for the writes in flight); then the attachments (blobs are written before the
//! Binary that names them commits and never change, so every blob the data snapshot names is
//! already there when they are copied); then every other file (the sealed TLS material). A
//! `manifest.json` lists each file with its size and SHA-256, and the audit log's size, tree
//! head and newest signed checkpoint at backup time. `backup` checks what it wrote before it
//! says so: SQLite's integrity check on each copy, the copied audit log verified, and every
//! file read back against the manifest.
//!
//! `restore` copies a backup into an empty (or new) directory, checking every file against the
//! manifest as it goes, verifies the restored audit log against the manifest, re-applies the
//! erasures kept beside the key file (`erase::apply_erasure_ledger`), and re-anchors the state anchor to
//! the restored state with an audit record of its reason: the anchor refuses an older copy of
//! the directory made any other way (a plain `cp`), and accepts this one.
//!
//! Continuity of the audit log across a restore: the anchor keeps the head of the log it last
//! saw (size and tree root), not the log. A restored log at least as long must contain that
//! head exactly (its first records hash to the anchored root), or the restore is refused (the
//! backup is of another history). A shorter one cannot be proved a prefix from the anchor
//! alone: the restore record names the anchored head it replaces, so the two can be checked
//! against any kept copy of the newer log or signed checkpoint (a consistency proof).

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use brankas_engine::ROOT_META;
use brankas_store::{CheckDepth, SqliteStore, Store};
use brankas_vault::{KeyFile, KeyProvider, Vault, WrappedKey};
use serde_json::{Value, json};

use crate::anchor::{self, AnchorFile};
use crate::{BLOB_DIR, DB_FILE, key_path};

/// The manifest's file name inside a backup.
pub(crate) const MANIFEST: &str = "manifest.json";
/// The manifest's format; a restore refuses another.
const FORMAT: &str = "brankas-backup 1";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros() as i64
}

/// Creates a directory (and missing parents) readable by the owner only.
fn private_dir(dir: &Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// Whether a directory is absent or holds nothing.
fn empty_or_absent(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// SHA-256 and length of a file, streamed.
fn hash_file(p: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        ctx.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex(ctx.finish().as_ref())))
}

/// Copies `from` to a new file `to` (mode 0600, parents 0700), fsynced; returns its length and
/// SHA-256 as read.
fn copy_file(from: &Path, to: &Path) -> Result<(u64, String)> {
    if let Some(d) = to.parent() {
        private_dir(d)?;
    }
    let mut src = std::fs::File::open(from).with_context(|| format!("reading {}", from.display()))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut dst = opts.open(to).with_context(|| format!("creating {}", to.display()))?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = src.read(&mut buf)?;
        if k == 0 {
            break;
        }
        ctx.update(&buf[..k]);
        dst.write_all(&buf[..k])?;
        n += k as u64;
    }
    dst.sync_all()?;
    Ok((n, hex(ctx.finish().as_ref())))
}

/// Whether a file of the data directory is copied as a file: not the live databases (they are
/// snapshotted), their journals, lock files, or blobs still being written.
fn copied_as_file(rel: &Path) -> bool {
    let s = rel.to_string_lossy();
    let db = |name: &str| s == name || s.starts_with(&format!("{name}-"));
    let dbs = SqliteStore::files(Path::new(DB_FILE));
    !(dbs.iter().any(|d| db(&d.to_string_lossy())) || rel.starts_with(Path::new(BLOB_DIR).join("tmp")) || s.ends_with(".lock"))
}

/// Every regular file under `root`, relative to it, sorted.
fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let t = e.file_type()?;
            let r = rel.join(e.file_name());
            if t.is_dir() {
                stack.push(r);
            } else if t.is_file() {
                out.push(r);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `brankas backup`: prints one JSON object.
pub(crate) fn backup(data_dir: &Path, key_file: Option<&Path>, out: &Path) -> Result<()> {
    crate::sqlite_only("brankas backup")?;
    let start = Instant::now();
    if !empty_or_absent(out)? {
        bail!("{} is not empty: a backup goes into a new or empty directory", out.display());
    }
    if crate::resolve(out).starts_with(crate::resolve(data_dir)) {
        bail!("the backup must not be inside the data directory");
    }
    // The directory is opened as every command opens it (checked against its anchor), so a
    // directory behind its anchor is not backed up as if it were current; the backup is audited.
    let o = crate::open(data_dir, key_file)?;
    private_dir(out)?;
    let db = data_dir.join(DB_FILE);
    let mut files: Vec<(PathBuf, PathBuf)> = Vec::new(); // (relative path, path in the backup)
    for copy in SqliteStore::snapshot_into(&db, out).context("copying the databases")? {
        let rel = PathBuf::from(copy.file_name().context("database name")?);
        files.push((rel, copy));
    }
    // After the data snapshot: every blob it names is already in place.
    let mut blobs = 0u64;
    for rel in walk(data_dir)? {
        if !copied_as_file(&rel) {
            continue;
        }
        let to = out.join(&rel);
        match copy_file(&data_dir.join(&rel), &to) {
            Ok(_) => {}
            // A blob deleted meanwhile (a failed write's) is not named by the snapshot.
            Err(e) if !data_dir.join(&rel).exists() => {
                tracing::debug!(error = %format!("{e:#}"), "a file vanished during the backup");
                continue;
            }
            Err(e) => return Err(e),
        }
        if rel.starts_with(BLOB_DIR) {
            blobs += 1;
        }
        files.push((rel, to));
    }
    // The copy's own checks, before anything says it is a backup.
    let copy_db = out.join(DB_FILE);
    let bad: Vec<String> =
        SqliteStore::check_files(&copy_db, CheckDepth::Full)?.into_iter().filter(|c| !c.problems.is_empty()).map(|c| format!("{}: {}", c.file, c.problems.join("; "))).collect();
    if !bad.is_empty() {
        bail!("the copied databases are damaged (is the data directory? run `brankas verify`): {}", bad.join(" | "));
    }
    let (audit, versions, anchor_id) = {
        let copy = SqliteStore::open(&copy_db).context("opening the copy")?;
        let r = brankas_audit::verify(&copy, &o.vault, None).map_err(|f| anyhow!("the copied audit log does not verify: {f}"))?;
        let checkpoint = copy.audit_latest_checkpoint()?.map(|c| c.note);
        let versions = copy.versions_present()?;
        let anchor_id = copy.get_meta(anchor::ANCHOR_META)?.map(|m| String::from_utf8_lossy(&m).into_owned());
        (json!({"size": r.records, "root": hex(&r.root), "signed_size": r.signed_size, "checkpoint": checkpoint}), versions, anchor_id)
    };
    SqliteStore::settle_copy(&copy_db)?;
    let mut listed = Vec::new();
    let mut bytes = 0u64;
    for (rel, path) in &files {
        let (n, sha) = hash_file(path)?;
        bytes += n;
        listed.push(json!({"path": rel.to_string_lossy(), "bytes": n, "sha256": sha}));
    }
    let created = now_us();
    let manifest = json!({
        "format": FORMAT,
        "created": brankas_engine::instant(created),
        "created_us": created,
        "anchor_id": anchor_id,
        "audit": audit,
        "versions": versions,
        "files": listed,
    });
    let mpath = out.join(MANIFEST);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&mpath).with_context(|| format!("writing {}", mpath.display()))?;
    f.write_all(serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    f.sync_all()?;
    drop(f);
    sync_dir(out)?;
    // Read back against the manifest: what is on disk is what it lists.
    check_manifest(out, &manifest)?;
    o.audit_local("backup", "E", None, true, Some(format!("backup of {} files ({bytes} bytes) to {}; audit log at {}", listed.len(), out.display(), manifest["audit"]["size"])))?;
    println!(
        "{}",
        json!({"out": out.display().to_string(), "files": listed.len(), "bytes": bytes, "blobs": blobs, "versions": versions,
            "audit_size": manifest["audit"]["size"], "audit_root": manifest["audit"]["root"], "verified": true,
            "seconds": (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0})
    );
    Ok(())
}

/// A manifest's file list: (relative path, bytes, SHA-256), each path plain and relative.
fn manifest_files(m: &Value) -> Result<Vec<(PathBuf, u64, String)>> {
    if m["format"] != FORMAT {
        bail!("not a backup this release reads (format {}, expected {FORMAT})", m["format"]);
    }
    let list = m["files"].as_array().context("the manifest lists no files")?;
    let mut out = Vec::new();
    for f in list {
        let p = PathBuf::from(f["path"].as_str().context("a manifest entry without a path")?);
        if p.as_os_str().is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
            bail!("the manifest names a path outside the backup: {}", p.display());
        }
        out.push((p, f["bytes"].as_u64().context("a manifest entry without a size")?, f["sha256"].as_str().context("a manifest entry without a hash")?.to_string()));
    }
    if !out.iter().any(|(p, _, _)| p == Path::new(DB_FILE)) {
        bail!("the manifest does not list {DB_FILE}");
    }
    Ok(out)
}

/// Every file the manifest lists is in `dir` with its size and hash.
fn check_manifest(dir: &Path, m: &Value) -> Result<()> {
    for (rel, n, sha) in manifest_files(m)? {
        let (got_n, got_sha) = hash_file(&dir.join(&rel)).with_context(|| format!("the backup lacks {}", rel.display()))?;
        if got_n != n || got_sha != sha {
            bail!("{} in the backup does not match its manifest (altered or damaged)", rel.display());
        }
    }
    Ok(())
}

/// `brankas restore`: prints one JSON object.
pub(crate) fn restore(from: &Path, data_dir: &Path, key_file: Option<&Path>, reason: Option<String>, force: bool) -> Result<()> {
    crate::sqlite_only("brankas restore")?;
    let start = Instant::now();
    let mtext = std::fs::read_to_string(from.join(MANIFEST)).with_context(|| format!("{} is not a backup (no {MANIFEST})", from.display()))?;
    let manifest: Value = serde_json::from_str(&mtext).context("the backup's manifest is not readable")?;
    let files = manifest_files(&manifest)?;
    let kp = key_path(data_dir, key_file)?;
    let provider: Arc<dyn KeyProvider> = Arc::new(KeyFile::open(&kp).with_context(|| format!("opening key file {}", kp.display()))?);
    // Every file is checked before the directory is touched.
    check_manifest(from, &manifest)?;
    let mut replaced = None;
    if !empty_or_absent(data_dir)? {
        if !force {
            bail!("{} is not empty: restore into a new or empty directory, or pass --force to move its contents aside first", data_dir.display());
        }
        let mut aside = data_dir.as_os_str().to_os_string();
        aside.push(format!(".replaced-{}", now_us() / 1_000_000));
        let aside = PathBuf::from(aside);
        std::fs::rename(data_dir, &aside).with_context(|| format!("moving {} aside to {}", data_dir.display(), aside.display()))?;
        replaced = Some(aside);
    }
    private_dir(data_dir)?;
    let mut bytes = 0u64;
    for (rel, n, sha) in &files {
        let (got_n, got_sha) = copy_file(&from.join(rel), &data_dir.join(rel))?;
        if got_n != *n || got_sha != *sha {
            bail!("{} changed while it was restored", rel.display());
        }
        bytes += n;
    }
    for d in [data_dir.to_path_buf(), data_dir.join(BLOB_DIR)] {
        if d.exists() {
            sync_dir(&d)?;
        }
    }
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&data_dir.join(DB_FILE))?);
    let root = sqlite.get_meta(ROOT_META)?.context("the backup has no system root key")?;
    let vault = Arc::new(crate::erase::attach(Vault::open(provider, &WrappedKey::from_bytes(&root)?).context("the key file does not open this backup")?, &kp)?);
    let r = brankas_audit::verify(&*sqlite, &vault, None).map_err(|f| anyhow!("the restored audit log does not verify: {f}"))?;
    if json!(r.records) != manifest["audit"]["size"] || json!(hex(&r.root)) != manifest["audit"]["root"] {
        bail!("the restored audit log is not the one the manifest names");
    }
    // Erasures recorded beside the key file after this backup was taken are applied again: an
    // erased patient does not come back with an older backup.
    crate::erase::apply_erasure_ledger(&*sqlite, &vault)?;
    let (size, root_now) = (r.records, r.root);
    let continuity = match AnchorFile::beside(&kp, vault.clone()).read() {
        Ok(None) => "no state anchor beside the key file: the restored state is anchored as the first".to_string(),
        Err(e) => format!("the anchor beside the key file is unreadable ({e:#}): replaced by the restored state"),
        Ok(Some(a)) if size >= a.audit_size => {
            if a.audit_size > 0 && brankas_audit::tree_root(&*sqlite, a.audit_size).ok() != Some(a.audit_root) {
                if !force {
                    bail!(
                        "the backup's audit log does not contain the anchored one (its first {} records differ): it is a backup of another history; pass --force to restore it anyway",
                        a.audit_size
                    );
                }
                format!("the restored log ({size} records) does NOT contain the anchored one ({} records): another history, restored with --force", a.audit_size)
            } else {
                format!("the restored log ({size} records) contains the anchored one ({} records) as its prefix", a.audit_size)
            }
        }
        Ok(Some(a)) => format!(
            "the restored log ({size} records, root {}) is older than the anchored one ({} records, root {}); the anchor keeps only its head, so the prefix is checked against a kept copy of the newer log",
            hex(&root_now),
            a.audit_size,
            hex(&a.audit_root)
        ),
    };
    let reason = reason.unwrap_or_else(|| format!("restore of the backup made {}", manifest["created"].as_str().unwrap_or("?")));
    let text = format!("restored from {} (backup made {}): {reason}; {continuity}", from.display(), manifest["created"].as_str().unwrap_or("?"));
    let (anchored, _) = anchor::open(sqlite.clone(), vault.clone(), &kp, Some(&reason), |_| record_restore(&sqlite, &vault, &text, &continuity))?;
    drop(anchored);
    println!(
        "{}",
        json!({"restored": data_dir.display().to_string(), "from": from.display().to_string(), "files": files.len(), "bytes": bytes,
            "backup_created": manifest["created"], "audit_size": size, "continuity": continuity,
            "replaced": replaced.map(|p| p.display().to_string()), "seconds": (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0})
    );
    Ok(())
}

/// The restore's audit record (as the local operator, with the reason) and alert, written into
/// the restored log before the anchor moves to it.
fn record_restore(store: &Arc<dyn Store>, vault: &Arc<Vault>, text: &str, continuity: &str) -> Result<()> {
    crate::operator_act(store, vault, "restore", text.to_string(), "state-restored", "warning", &json!({"restore": text, "continuity": continuity}), "nothing restored")
}
