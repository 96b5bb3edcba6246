//! `parse` never panics and stays within its limits, whatever the input.
//!
//! Property tests feed truncated and mutated versions of real files (from
//! pydicom's test data: explicit and implicit VR little endian, explicit big
//! endian, sequences, encapsulated pixel data, waveforms) and random bytes.
//! Whatever `parse` returns, it must return: no panic (no `catch_unwind`
//! here), and an accepted result must still satisfy the crate's promises
//! (valid UIDs, serialisable metadata).

mod common;

use brankas_dicom::{DicomError, Limits, Parsed, is_valid_uid, parse};
use common::*;
use proptest::prelude::*;

const BASES: [&str; 8] =
    ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "test-SR.dcm", "JPEG2000.dcm", "waveform_ecg.dcm", "SC_rgb_rle_2frame.dcm", "liver_1frame.dcm"];

fn bases() -> &'static Vec<Vec<u8>> {
    static BASES_BYTES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    BASES_BYTES.get_or_init(|| BASES.iter().map(|n| read(n)).collect())
}

/// What an accepted file must satisfy.
fn check_accepted(parsed: &Parsed) {
    let i = &parsed.instance;
    for uid in [&i.study_uid, &i.series_uid, &i.sop_instance_uid, &i.sop_class_uid, &i.transfer_syntax] {
        assert!(is_valid_uid(uid));
    }
    let json = parsed.metadata_json("http://x/bulk");
    assert!(json.is_object());
    serde_json::to_string(&json).expect("metadata serialises");
    let sealed = serde_json::to_vec(i).expect("instance serialises");
    let back: brankas_dicom::Instance = serde_json::from_slice(&sealed).expect("round trip");
    assert!(back == *i);
}

fn run(bytes: &[u8]) -> Result<(), DicomError> {
    let parsed = parse(bytes, &Limits::default())?;
    check_accepted(&parsed);
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite one byte.
    Set(usize, u8),
    /// Overwrite four bytes (a length or a tag).
    Set32(usize, u32),
    /// Cut the input.
    Truncate(usize),
    /// Remove a range.
    Delete(usize, usize),
    /// Insert bytes.
    Insert(usize, Vec<u8>),
    /// Copy a range elsewhere.
    Duplicate(usize, usize, usize),
}

fn interesting_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0xFFFF_FFFF),
        Just(0),
        Just(1),
        Just(0xFFFF_FFFE),
        Just(0x7FFF_FFFF),
        Just(0xE000_FFFE), // item tag, little endian
        Just(0xE00D_FFFE), // item delimiter
        Just(0xE0DD_FFFE), // sequence delimiter
        Just(u32::from_le_bytes(*b"SQ\0\0")),
        Just(u32::from_le_bytes(*b"UN\0\0")),
        Just(u32::from_le_bytes(*b"OB\0\0")),
        any::<u32>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Positions are fractions of the input length, resolved when applied.
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Set(p, b)),
        4 => (any::<usize>(), interesting_u32()).prop_map(|(p, v)| Mutation::Set32(p, v)),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), 0usize..64).prop_map(|(p, n)| Mutation::Delete(p, n)),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, v)| Mutation::Insert(p, v)),
        1 => (any::<usize>(), any::<usize>(), 1usize..256)
            .prop_map(|(a, b, n)| Mutation::Duplicate(a, b, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let at = |p: usize, len: usize| p % len.max(1);
    match m {
        Mutation::Set(p, b) => {
            let i = at(*p, bytes.len());
            bytes[i] = *b;
        }
        Mutation::Set32(p, v) => {
            let i = at(*p, bytes.len());
            for (k, b) in v.to_le_bytes().into_iter().enumerate() {
                if let Some(x) = bytes.get_mut(i + k) {
                    *x = b;
                }
            }
        }
        Mutation::Truncate(p) => {
            let i = at(*p, bytes.len());
            bytes.truncate(i);
        }
        Mutation::Delete(p, n) => {
            let i = at(*p, bytes.len());
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::Insert(p, v) => {
            let i = at(*p, bytes.len());
            bytes.splice(i..i, v.iter().copied());
        }
        Mutation::Duplicate(a, b, n) => {
            let src = at(*a, bytes.len());
            let end = (src + n).min(bytes.len());
            let chunk = bytes[src..end].to_vec();
            let dst = at(*b, bytes.len());
            bytes.splice(dst..dst, chunk);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    })]

    /// Mutated real files: never a panic.
    #[test]
    fn mutated_files_never_panic(
        base in 0..BASES.len(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut bytes = bases()[base].clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let _ = run(&bytes);
    }

    /// Mutations confined to the data set (after the meta group), where most
    /// of the parsing happens.
    #[test]
    fn mutated_data_sets_never_panic(
        base in 0..BASES.len(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let original = &bases()[base];
        // The meta group ends within the first 400 bytes in all bases.
        let split = 400.min(original.len());
        let mut tail = original[split..].to_vec();
        for m in &mutations {
            apply(&mut tail, m);
        }
        let mut bytes = original[..split].to_vec();
        bytes.extend(tail);
        let _ = run(&bytes);
    }

    /// Random bytes, with and without a plausible Part 10 header.
    #[test]
    fn random_bytes_never_panic(
        data in prop::collection::vec(any::<u8>(), 0..2048),
        with_header in any::<bool>(),
        implicit in any::<bool>(),
    ) {
        let bytes = if with_header {
            let ts = if implicit { "1.2.840.10008.1.2" } else { EXPLICIT_LE };
            part10(ts, SOP_INSTANCE, &minimal_dataset(&data))
        } else {
            data
        };
        let _ = run(&bytes);
    }

    /// Random sequences of well-formed-looking headers (tags, VRs, lengths
    /// and delimiters) after the required UIDs.
    #[test]
    fn random_structures_never_panic(
        pieces in prop::collection::vec(
            prop_oneof![
                (any::<u16>(), any::<u16>(), any::<[u8; 2]>(), any::<u16>())
                    .prop_map(|(g, e, vr, len)| {
                        let mut v = g.to_le_bytes().to_vec();
                        v.extend(e.to_le_bytes());
                        v.extend(vr);
                        v.extend(len.to_le_bytes());
                        v
                    }),
                (any::<u16>(), any::<u16>(), prop_oneof![Just(*b"SQ"), Just(*b"UN"), Just(*b"OB")], interesting_u32())
                    .prop_map(|(g, e, vr, len)| long_header(g, e, &vr, len)),
                Just(long_header(0x7FE0, 0x0010, b"OB", UNDEFINED)),
                Just(item(0xE000, UNDEFINED)),
                (0u32..16).prop_map(|n| item(0xE000, n * 4)),
                Just(item(0xE00D, 0)),
                Just(item(0xE0DD, 0)),
                prop::collection::vec(any::<u8>(), 0..8),
            ],
            0..40,
        ),
        implicit in any::<bool>(),
    ) {
        let data: Vec<u8> = pieces.concat();
        let ts = if implicit { "1.2.840.10008.1.2" } else { EXPLICIT_LE };
        let _ = run(&part10(ts, SOP_INSTANCE, &minimal_dataset(&data)));
    }
}

/// Every truncation of a real file inside its last element (the pixel
/// data) is refused; no truncation anywhere panics.
#[test]
fn every_truncation_is_handled() {
    for name in ["CT_small.dcm", "JPEG2000.dcm", "test-SR.dcm", "MR_small_implicit.dcm"] {
        let bytes = read(name);
        let step = (bytes.len() / 1500).max(1);
        for cut in (0..bytes.len()).step_by(step) {
            let _ = run(&bytes[..cut]);
        }
    }
    // Inside pixel data (native and encapsulated): always refused.
    for (name, pixel_data_len) in [("CT_small.dcm", 32768), ("JPEG2000.dcm", 2000)] {
        let bytes = read(name);
        for back in (1..pixel_data_len).step_by(97) {
            let cut = bytes.len() - back;
            assert!(parse(&bytes[..cut], &Limits::default()).is_err(), "{name} cut {back} bytes before its end was accepted");
        }
    }
}

/// A deep nesting of sequences is refused by the depth limit, before
/// dicom-rs (which recurses) sees it; a huge declared length is refused
/// before anything is allocated.
#[test]
fn hostile_structures_are_refused_quickly() {
    let mut deep = Vec::new();
    for _ in 0..100_000 {
        deep.extend(long_header(0x0040, 0xA730, b"SQ", UNDEFINED));
        deep.extend(item(0xE000, UNDEFINED));
    }
    for _ in 0..100_000 {
        deep.extend(item(0xE00D, 0));
        deep.extend(item(0xE0DD, 0));
    }
    let start = std::time::Instant::now();
    assert_eq!(parse(&minimal_file(&deep), &Limits::default()).unwrap_err(), DicomError::TooDeep);
    // Within the limit, nesting is fine.
    let mut ok = Vec::new();
    for _ in 0..32 {
        ok.extend(long_header(0x0040, 0xA730, b"SQ", UNDEFINED));
        ok.extend(item(0xE000, UNDEFINED));
    }
    for _ in 0..32 {
        ok.extend(item(0xE00D, 0));
        ok.extend(item(0xE0DD, 0));
    }
    let parsed = parse(&minimal_file(&ok), &Limits::default()).expect("32 levels are accepted");
    let json = parsed.metadata_json("x");
    assert!(json["0040A730"]["Value"][0]["0040A730"].is_object());
    let mut too_deep = Vec::new();
    for _ in 0..33 {
        too_deep.extend(long_header(0x0040, 0xA730, b"SQ", UNDEFINED));
        too_deep.extend(item(0xE000, UNDEFINED));
    }
    for _ in 0..33 {
        too_deep.extend(item(0xE00D, 0));
        too_deep.extend(item(0xE0DD, 0));
    }
    assert_eq!(parse(&minimal_file(&too_deep), &Limits::default()).unwrap_err(), DicomError::TooDeep);

    // 4 GiB declared in a tiny file.
    let huge = long_header(0x0009, 0x1010, b"OB", 0xFFFF_FFF0);
    assert_eq!(parse(&minimal_file(&huge), &Limits::default()).unwrap_err(), DicomError::Truncated);
    // Same in implicit VR, and for a string VR.
    let mut implicit = Vec::new();
    implicit.extend_from_slice(&[0x10, 0x00, 0x10, 0x00]); // PatientName
    implicit.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let mut ds = Vec::new();
    for (tag, uid) in [([0x08, 0x00, 0x16, 0x00], SOP_CLASS), ([0x08, 0x00, 0x18, 0x00], SOP_INSTANCE)] {
        let mut v = uid.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(0);
        }
        ds.extend_from_slice(&tag);
        ds.extend_from_slice(&(v.len() as u32).to_le_bytes());
        ds.extend(v);
    }
    ds.extend(implicit);
    assert_eq!(parse(&part10("1.2.840.10008.1.2", SOP_INSTANCE, &ds), &Limits::default()).unwrap_err(), DicomError::Truncated);
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn element_and_value_budgets() {
    // 10 000 empty private elements in nested items.
    let mut many = long_header(0x0009, 0x1010, b"SQ", UNDEFINED);
    for _ in 0..10_000 {
        many.extend(item(0xE000, 0));
    }
    many.extend(item(0xE0DD, 0));
    let limits = Limits { max_elements: 5_000, ..Limits::default() };
    assert_eq!(parse(&minimal_file(&many), &limits).unwrap_err(), DicomError::TooManyElements);
    assert!(parse(&minimal_file(&many), &Limits::default()).is_ok());

    // A long text of backslashes: one String per value in dicom-rs.
    let mut values = long_header(0x0008, 0x0119, b"UC", 20_000);
    values.extend(std::iter::repeat_n(b'\\', 20_000));
    let limits = Limits { max_string_values: 10_000, ..Limits::default() };
    assert_eq!(parse(&minimal_file(&values), &limits).unwrap_err(), DicomError::TooManyElements);
    assert!(parse(&minimal_file(&values), &Limits::default()).is_ok());

    // The size limit.
    let limits = Limits { max_bytes: 1000, ..Limits::default() };
    assert_eq!(parse(&read("CT_small.dcm"), &limits).unwrap_err(), DicomError::TooLarge);
}
