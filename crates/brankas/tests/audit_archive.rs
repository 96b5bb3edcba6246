//! Audit log retention through the CLI: `brankas audit archive` moves the old, checkpointed
//! records into segment files, the hot database shrinks, the server starts and proves newer
//! records as before, and `brankas audit verify` proves the log whole with the archive (and
//! from the signed mark without it) while tampering with either part is named by position.

mod common;

use std::path::{Path, PathBuf};

use common::{Instance, copy_files, patient};
use serde_json::Value;

fn run(inst: &Instance, args: &[&str], extra: &[&Path]) -> (bool, Value, String) {
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args(args).arg("--key-file").arg(inst.key_file());
    for p in extra {
        cmd.arg(p);
    }
    let o = cmd.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let v = serde_json::from_str(out.lines().next().unwrap_or_default()).unwrap_or(Value::Null);
    (o.status.success(), v, format!("{out}{}", String::from_utf8_lossy(&o.stderr)))
}

fn verify(inst: &Instance, data: &Path, archive: Option<&Path>) -> (bool, Value, String) {
    let d = data.to_str().unwrap();
    match archive {
        Some(a) => run(inst, &["audit", "verify", "--data-dir", d, "--archive", a.to_str().unwrap()], &[]),
        None => run(inst, &["audit", "verify", "--data-dir", d], &[]),
    }
}

fn archive(inst: &Instance, cut: &[&str], out: &Path) -> Value {
    let d = inst.data_dir();
    let mut args = vec!["audit", "archive", "--data-dir", d.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(cut);
    let (ok, v, all) = run(inst, &args, &[]);
    assert!(ok, "archive failed: {all}");
    v
}

/// The byte offset of record `seq`'s sealed bytes in a segment file of records from `from`.
fn sealed_offset(seg: &[u8], from: u64, seq: u64) -> usize {
    let mut at = b"brankas-audit-segment 1\n".len();
    for s in from.. {
        let flag = seg[at + 16];
        let len_at = at + 17 + if flag == 1 { 32 } else { 0 } + 32;
        let len = u32::from_be_bytes(seg[len_at..len_at + 4].try_into().unwrap()) as usize;
        if s == seq {
            return len_at + 4;
        }
        at = len_at + 4 + len;
    }
    unreachable!()
}

fn reads(inst: &Instance, n: usize, nik: &str) {
    let s = inst.serve();
    let p = s.create(&patient(nik, "Lestari"))["id"].as_str().unwrap().to_string();
    for _ in 0..n {
        assert_eq!(s.get(&format!("Patient/{p}")).status(), 200);
    }
    s.stop(); // graceful: the last records are signed
}

#[test]
fn archived_records_leave_the_hot_database_and_the_log_still_verifies_whole() {
    let inst = Instance::init();
    reads(&inst, 700, "3171054708900003");
    let (ok, before, all) = verify(&inst, &inst.data_dir(), None);
    assert!(ok, "{all}");
    let n = before["records"].as_u64().unwrap();
    assert!(n > 700, "{before}");

    // The cut is lowered to a multiple of 256.
    let out = inst.root.path().join("archive");
    let a = archive(&inst, &["--up-to", "600"], &out);
    assert_eq!((a["archived"].as_u64(), a["from"].as_u64(), a["to"].as_u64()), (Some(512), Some(0), Some(512)), "{a}");
    assert!(a["audit_db_bytes_after"].as_u64() < a["audit_db_bytes_before"].as_u64(), "the hot database shrinks: {a}");
    let seg = PathBuf::from(a["segment"].as_str().unwrap());
    assert!(seg.exists() && seg.with_extension("json").exists());

    // With the archive: one log from position 0 (the archive's own record included).
    let (ok, full, all) = verify(&inst, &inst.data_dir(), Some(&out));
    assert!(ok, "{all}");
    assert_eq!((full["first_checked"].as_u64(), full["archived"].as_u64(), full["records"].as_u64()), (Some(0), Some(512), Some(n + 1)), "{full}");
    // Without it: from the signed mark, saying where it began.
    let (ok, hot, all) = verify(&inst, &inst.data_dir(), None);
    assert!(ok, "{all}");
    assert_eq!(hot["first_checked"].as_u64(), Some(512), "{hot}");
    assert!(all.contains("records 0 to 511 are archived"), "{all}");
    assert_eq!(hot["root"], full["root"]);

    // The server starts on the archived log (its state anchor is recomputed without the
    // archived records), keeps appending, proves newer records and says older ones are archived.
    let s = inst.serve();
    let officer = inst.caller(&s, &["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    let get = |path: &str| s.http.get(format!("{}{path}", s.root)).bearer_auth(&officer.token).send().unwrap();
    let size = (0..50)
        .find_map(|_| {
            let v: Value = get("/admin/audit/checkpoint").json().unwrap();
            let size = v["size"].as_u64().filter(|z| *z > n + 1);
            if size.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            size
        })
        .expect("a checkpoint after the restart");
    assert_eq!(get(&format!("/admin/audit/proof?seq=600&size={size}")).status(), 200);
    let r = get(&format!("/admin/audit/proof?seq=100&size={size}"));
    assert_eq!(r.status(), 410);
    assert!(r.text().unwrap().contains("before position 512 are archived"));
    // A search of the log that reaches its oldest held record says the rest is archived.
    let (st, b) = s.get_as(&officer.token, "AuditEvent?subtype=audit-archive");
    assert_eq!(st, 200, "{b}");
    let kinds: Vec<&str> = b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["resourceType"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["AuditEvent", "OperationOutcome"], "{b}");
    assert!(b.to_string().contains("before position 512"), "{b}");
    s.stop();
    reads(&inst, 100, "3171054708900011");

    // A second archive continues the first: two segments verify as one log.
    let b = archive(&inst, &["--before", "2100-01-01"], &out);
    assert_eq!(b["from"].as_u64(), Some(512), "{b}");
    let to = b["to"].as_u64().unwrap();
    assert!(to > 512 && to.is_multiple_of(256), "{b}");
    let (ok, v, all) = verify(&inst, &inst.data_dir(), Some(&out));
    assert!(ok && v["first_checked"] == 0 && v["archived"].as_u64() == Some(to), "{all}");

    let expect_fail = |name: &str, data: &Path, arch: Option<&Path>, needle: &str| {
        let (ok, _, all) = verify(&inst, data, arch);
        assert!(!ok, "{name}: verify passed: {all}");
        assert!(all.contains(needle), "{name}: expected '{needle}' in: {all}");
    };
    // One bit of an archived record.
    let bad = inst.root.path().join("archive-edited");
    copy_files(&out, &bad);
    let first_seg = bad.join(seg.file_name().unwrap());
    let mut bytes = std::fs::read(&first_seg).unwrap();
    let off = sealed_offset(&bytes, 0, 100);
    bytes[off + 20] ^= 1;
    std::fs::write(&first_seg, &bytes).unwrap();
    expect_fail("edited segment", &inst.data_dir(), Some(&bad), "record 100 was altered");
    // A segment cut short.
    let short = inst.root.path().join("archive-short");
    copy_files(&out, &short);
    let s0 = short.join(seg.file_name().unwrap());
    let len = std::fs::metadata(&s0).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&s0).unwrap().set_len(len - 10).unwrap();
    expect_fail("short segment", &inst.data_dir(), Some(&short), "is damaged at position 511");
    // A missing segment.
    let gap = inst.root.path().join("archive-gap");
    copy_files(&out, &gap);
    std::fs::remove_file(gap.join(seg.file_name().unwrap())).unwrap();
    std::fs::remove_file(gap.join(seg.with_extension("json").file_name().unwrap())).unwrap();
    let (ok, _, all) = verify(&inst, &inst.data_dir(), Some(&gap));
    assert!(!ok && all.contains("positions 0 to 511 are in no segment"), "{all}");

    let case = |name: &str, sql: &str| -> PathBuf {
        let d = inst.root.path().join(format!("case-{name}"));
        copy_files(&inst.data_dir(), &d);
        let c = rusqlite::Connection::open(d.join("brankas.audit.db")).unwrap();
        c.execute_batch(sql).unwrap();
        d
    };
    // A held record deleted after archiving.
    let d = case("delete", &format!("DELETE FROM audit_log WHERE seq = {};", to + 5));
    expect_fail("hot delete, with archive", &d, Some(&out), &format!("record {} is missing", to + 5));
    expect_fail("hot delete, without archive", &d, None, &format!("record {} is missing", to + 5));
    // The oldest held records deleted and the mark moved past them: the mark is signed.
    let d = case("mark", &format!("DELETE FROM audit_log WHERE seq < {m}; UPDATE audit_archived SET first = {m};", m = to + 256));
    expect_fail("moved mark", &d, None, "not signed by this log's key");
    // ... and with the archive, the records between it and the held ones are missing.
    let d = case("front", &format!("DELETE FROM audit_log WHERE seq < {};", to + 3));
    expect_fail("front delete", &d, Some(&out), &format!("record {to} is missing"));
}
