//! Key operations that cannot race (issue 14, finding 1): rotations started at the same moment
//! used to pick the same key number, and the last rename dropped a key the other had already
//! wrapped the root and the patients' keys with, leaving a directory nothing could open.

mod common;

use common::Instance;
use serde_json::{Value, json};

#[test]
fn concurrent_rotations_never_leave_an_unopenable_directory() {
    let inst = Instance::init();
    // Some patients, so that data keys are rewrapped too.
    {
        let s = inst.serve();
        for i in 0..5 {
            s.create(&common::patient(&format!("317105470890{:04}", i + 1), &format!("Pasien{i}")));
        }
        s.create(&json!({"resourceType": "Organization", "name": "RS Uji"}));
        s.stop();
    }
    const AT_ONCE: usize = 6;
    let mut kek_ids = std::collections::BTreeSet::new();
    for trial in 0..4 {
        let handles: Vec<_> = (0..AT_ONCE)
            .map(|_| {
                let (bin, data, key) = (common::BIN, inst.data_dir(), inst.key_file());
                std::thread::spawn(move || {
                    std::process::Command::new(bin).args(["keys", "rotate", "--data-dir"]).arg(data).arg("--key-file").arg(key).output().expect("run brankas")
                })
            })
            .collect();
        for h in handles {
            let out = h.join().unwrap();
            assert!(out.status.success(), "trial {trial}: a rotation failed: {}", String::from_utf8_lossy(&out.stderr));
            let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
            assert!(kek_ids.insert(v["kek"].to_string()), "trial {trial}: two rotations made the same key {}", v["kek"]);
        }
        // The directory opens with the key file as it is on disk, and every record opens.
        let out = inst.cli(&["audit", "verify"]);
        assert!(out.status.success(), "trial {trial}: {}", String::from_utf8_lossy(&out.stderr));
        let s = inst.serve();
        let (st, b) = s.get_as(&s.token, &format!("Patient?identifier={}|3171054708900003", common::NIK_SYSTEM));
        assert_eq!(st, 200, "trial {trial}: {b}");
        assert_eq!(b["entry"].as_array().map_or(0, Vec::len), 1, "trial {trial}: the patient's key opens");
        s.stop();
    }
    let keyfile: Value = serde_json::from_str(&std::fs::read_to_string(inst.key_file()).unwrap()).unwrap();
    assert_eq!(keyfile["keks"].as_array().unwrap().len(), 1 + 4 * AT_ONCE, "no key lost");
    let leftovers: Vec<_> =
        std::fs::read_dir(inst.key_file().parent().unwrap()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.contains(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary key files left behind: {leftovers:?}");
}
