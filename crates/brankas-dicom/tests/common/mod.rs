//! Shared helpers: where the pydicom test files are, and synthetic files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The pydicom 3.0.1 `data/test_files` directory: `BRANKAS_DICOM_FILES`,
/// else the CI virtualenv's pydicom (`target/ci-venv/lib/python3*/...`),
/// else `/tmp/pyd/pydicom/data/test_files`. Panics if none exists: these
/// tests must not pass silently without their data.
pub fn test_files_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BRANKAS_DICOM_FILES") {
        let dir = PathBuf::from(dir);
        assert!(dir.join("CT_small.dcm").is_file(), "BRANKAS_DICOM_FILES={} does not hold pydicom's test files (CT_small.dcm missing)", dir.display());
        return dir;
    }
    let venv_lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ci-venv/lib");
    if let Ok(entries) = std::fs::read_dir(&venv_lib) {
        let mut candidates: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path().join("site-packages/pydicom/data/test_files"))
            .filter(|p| p.join("CT_small.dcm").is_file())
            .collect();
        candidates.sort();
        if let Some(dir) = candidates.pop() {
            return dir;
        }
    }
    let tmp = PathBuf::from("/tmp/pyd/pydicom/data/test_files");
    if tmp.join("CT_small.dcm").is_file() {
        return tmp;
    }
    panic!(
        "pydicom test files not found: set BRANKAS_DICOM_FILES to the data/test_files \
         directory of the pydicom 3.0.1 wheel (looked in target/ci-venv and /tmp/pyd)"
    );
}

/// The bytes of one pydicom test file.
pub fn read(name: &str) -> Vec<u8> {
    let path = test_files_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// An explicit VR little endian element with a 2-byte length.
pub fn elem(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut value = value.to_vec();
    if value.len() % 2 == 1 {
        value.push(if vr == b"UI" { 0 } else { b' ' });
    }
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(&value);
    out
}

/// An explicit VR little endian element header with a 4-byte length.
pub fn long_header(group: u16, element: u16, vr: &[u8; 2], len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out
}

/// An item, item delimiter or sequence delimiter header.
pub fn item(element: u16, len: u32) -> Vec<u8> {
    let mut out = vec![0xFE, 0xFF];
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out
}

pub const UNDEFINED: u32 = 0xFFFF_FFFF;
pub const SOP_CLASS: &str = "1.2.840.10008.5.1.4.1.1.7";
pub const SOP_INSTANCE: &str = "1.2.3.4.5.6.7.8.9";
pub const STUDY: &str = "1.2.3.4.5.1";
pub const SERIES: &str = "1.2.3.4.5.2";

/// A Part 10 file: preamble, `DICM`, a meta group (explicit VR little
/// endian, with group length) with the given transfer syntax and media
/// storage SOP instance UID, then `dataset` as is.
pub fn part10(transfer_syntax: &str, media_sop_instance: &str, dataset: &[u8]) -> Vec<u8> {
    let mut meta = Vec::new();
    meta.extend(elem(0x0002, 0x0002, b"UI", SOP_CLASS.as_bytes()));
    meta.extend(elem(0x0002, 0x0003, b"UI", media_sop_instance.as_bytes()));
    meta.extend(elem(0x0002, 0x0010, b"UI", transfer_syntax.as_bytes()));
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    out.extend(elem(0x0002, 0x0000, b"UL", &(meta.len() as u32).to_le_bytes()));
    out.extend(meta);
    out.extend_from_slice(dataset);
    out
}

/// The four required UIDs, then `extra` (which must sort after (0008,0018)
/// only if the caller cares about order: dicom-rs does not).
pub fn minimal_dataset(extra: &[u8]) -> Vec<u8> {
    let mut ds = Vec::new();
    ds.extend(elem(0x0008, 0x0016, b"UI", SOP_CLASS.as_bytes()));
    ds.extend(elem(0x0008, 0x0018, b"UI", SOP_INSTANCE.as_bytes()));
    ds.extend(elem(0x0020, 0x000D, b"UI", STUDY.as_bytes()));
    ds.extend(elem(0x0020, 0x000E, b"UI", SERIES.as_bytes()));
    ds.extend_from_slice(extra);
    ds
}

pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// A minimal valid explicit VR little endian file with `extra` elements.
pub fn minimal_file(extra: &[u8]) -> Vec<u8> {
    part10(EXPLICIT_LE, SOP_INSTANCE, &minimal_dataset(extra))
}
