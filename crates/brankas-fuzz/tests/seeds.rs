//! Every seed (and every regression input) of every fuzz target, through the same function
//! the fuzzer calls: a crash once found stays fixed under plain `cargo test`.

use std::path::PathBuf;

#[test]
fn every_seed_of_every_target_runs_clean() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let mut ran = 0;
    for (name, target) in brankas_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten().map(|e| e.path()).collect();
        files.sort();
        assert!(!files.is_empty(), "{name} has seeds");
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            target(&bytes);
            ran += 1;
        }
    }
    assert!(ran >= brankas_fuzz::TARGETS.len());
}
