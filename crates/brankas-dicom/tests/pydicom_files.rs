//! Real files from pydicom 3.0.1's test data (see `common::test_files_dir`).
//!
//! The expected UIDs, frame counts and flags are pydicom's own readings of
//! the same files (`pydicom.dcmread`), hard-coded as the oracle.

mod common;

use brankas_dicom::{DicomError, Limits, parse};
use common::read;

struct Expected {
    file: &'static str,
    transfer_syntax: &'static str,
    sop_class: &'static str,
    sop_instance: &'static str,
    study: &'static str,
    series: &'static str,
    frames: Option<u32>,
    pixels: bool,
    waveform: bool,
}

#[rustfmt::skip]
const ACCEPTED: &[Expected] = &[
    Expected { file: "CT_small.dcm", transfer_syntax: "1.2.840.10008.1.2.1", sop_class: "1.2.840.10008.5.1.4.1.1.2", sop_instance: "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322", study: "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322", series: "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322", frames: None, pixels: true, waveform: false },
    Expected { file: "MR_small.dcm", transfer_syntax: "1.2.840.10008.1.2.1", sop_class: "1.2.840.10008.5.1.4.1.1.4", sop_instance: "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457", study: "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457", series: "1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457", frames: None, pixels: true, waveform: false },
    Expected { file: "MR_small_implicit.dcm", transfer_syntax: "1.2.840.10008.1.2", sop_class: "1.2.840.10008.5.1.4.1.1.4", sop_instance: "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457", study: "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457", series: "1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457", frames: None, pixels: true, waveform: false },
    Expected { file: "MR_small_bigendian.dcm", transfer_syntax: "1.2.840.10008.1.2.2", sop_class: "1.2.840.10008.5.1.4.1.1.4", sop_instance: "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457", study: "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457", series: "1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457", frames: None, pixels: true, waveform: false },
    Expected { file: "MR_small_expb.dcm", transfer_syntax: "1.2.840.10008.1.2.2", sop_class: "1.2.840.10008.5.1.4.1.1.4", sop_instance: "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457", study: "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457", series: "1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457", frames: None, pixels: true, waveform: false },
    Expected { file: "MR_small_padded.dcm", transfer_syntax: "1.2.840.10008.1.2.1", sop_class: "1.2.840.10008.5.1.4.1.1.4", sop_instance: "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457", study: "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457", series: "1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457", frames: None, pixels: true, waveform: false },
    Expected { file: "ExplVR_BigEnd.dcm", transfer_syntax: "1.2.840.10008.1.2.2", sop_class: "1.2.840.10008.5.1.4.1.1.6.1", sop_instance: "1.2.840.1136190195280574824680000700.3.0.1.19970424140438", study: "1.2.840.113619.2.21.848.246800003.0.1952805748.3", series: "1.2.840.113619.2.21.24680000.700.0.1952805748.3.0", frames: None, pixels: true, waveform: false },
    Expected { file: "MR_small_RLE.dcm", transfer_syntax: "1.2.840.10008.1.2.5", sop_class: "1.2.840.10008.5.1.4.1.1.4", sop_instance: "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457", study: "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457", series: "1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457", frames: None, pixels: true, waveform: false },
    Expected { file: "MR_small_jpeg_ls_lossless.dcm", transfer_syntax: "1.2.840.10008.1.2.4.80", sop_class: "1.2.840.10008.5.1.4.1.1.4", sop_instance: "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457", study: "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457", series: "1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457", frames: None, pixels: true, waveform: false },
    Expected { file: "MR_small_jp2klossless.dcm", transfer_syntax: "1.2.840.10008.1.2.4.90", sop_class: "1.2.840.10008.5.1.4.1.1.4", sop_instance: "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457", study: "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457", series: "1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457", frames: None, pixels: true, waveform: false },
    Expected { file: "JPEG2000.dcm", transfer_syntax: "1.2.840.10008.1.2.4.91", sop_class: "1.2.840.10008.5.1.4.1.1.7", sop_instance: "1.3.6.1.4.1.5962.1.1.8.1.3.20040826185059.5457", study: "1.3.6.1.4.1.5962.1.2.8.20040826185059.5457", series: "1.3.6.1.4.1.5962.1.3.8.1.20040826185059.5457", frames: Some(1), pixels: true, waveform: false },
    Expected { file: "JPEG2000-embedded-sequence-delimiter.dcm", transfer_syntax: "1.2.840.10008.1.2.4.91", sop_class: "1.2.840.10008.5.1.4.1.1.7", sop_instance: "1.3.6.1.4.1.5962.1.1.8.1.3.20040826185059.5457", study: "1.3.6.1.4.1.5962.1.2.8.20040826185059.5457", series: "1.3.6.1.4.1.5962.1.3.8.1.20040826185059.5457", frames: Some(1), pixels: true, waveform: false },
    Expected { file: "JPEG-lossy.dcm", transfer_syntax: "1.2.840.10008.1.2.4.51", sop_class: "1.2.840.10008.5.1.4.1.1.7", sop_instance: "1.3.6.1.4.1.5962.1.1.8.1.5.20040826185059.5457", study: "1.3.6.1.4.1.5962.1.2.8.20040826185059.5457", series: "1.3.6.1.4.1.5962.1.3.8.1.20040826185059.5457", frames: Some(1), pixels: true, waveform: false },
    Expected { file: "JPGExtended.dcm", transfer_syntax: "1.2.840.10008.1.2.4.51", sop_class: "1.2.840.10008.5.1.4.1.1.7", sop_instance: "1.3.6.1.4.1.5962.1.1.8.1.5.20040826185059.5457", study: "1.3.6.1.4.1.5962.1.2.8.20040826185059.5457", series: "1.3.6.1.4.1.5962.1.3.8.1.20040826185059.5457", frames: Some(1), pixels: true, waveform: false },
    Expected { file: "SC_rgb_jpeg_gdcm.dcm", transfer_syntax: "1.2.840.10008.1.2.4.70", sop_class: "1.2.840.10008.5.1.4.1.1.7", sop_instance: "1.2.826.0.1.3680043.8.498.49043964482360854182530167603505525116", study: "1.2.826.0.1.3680043.8.498.12406831542731051035295345080039845114", series: "1.2.826.0.1.3680043.8.498.16157229083793556332623330502397121062", frames: None, pixels: true, waveform: false },
    Expected { file: "SC_rgb_rle_2frame.dcm", transfer_syntax: "1.2.840.10008.1.2.5", sop_class: "1.2.840.10008.5.1.4.1.1.7", sop_instance: "1.2.826.0.1.3680043.8.498.49043964482360854182530167603505525116", study: "1.2.826.0.1.3680043.8.498.12406831542731051035295345080039845114", series: "1.2.826.0.1.3680043.8.498.16157229083793556332623330502397121062", frames: Some(2), pixels: true, waveform: false },
    Expected { file: "SC_rgb_rle_32bit_2frame.dcm", transfer_syntax: "1.2.840.10008.1.2.5", sop_class: "1.2.840.10008.5.1.4.1.1.7", sop_instance: "1.2.826.0.1.3680043.8.498.49043964482360854182530167603505525116", study: "1.2.826.0.1.3680043.8.498.12406831542731051035295345080039845114", series: "1.2.826.0.1.3680043.8.498.16157229083793556332623330502397121062", frames: Some(2), pixels: true, waveform: false },
    Expected { file: "SC_rgb_small_odd_big_endian.dcm", transfer_syntax: "1.2.840.10008.1.2.2", sop_class: "1.2.840.10008.5.1.4.1.1.7", sop_instance: "1.2.276.0.7230010.3.1.4.8323329.1099.1521494048.423534", study: "1.2.826.0.1.3680043.8.498.12406831542731051035295345080039845114", series: "1.2.826.0.1.3680043.8.498.16157229083793556332623330502397121062", frames: Some(1), pixels: true, waveform: false },
    Expected { file: "SC_ybr_full_422_uncompressed.dcm", transfer_syntax: "1.2.840.10008.1.2.1", sop_class: "1.2.840.10008.5.1.4.1.1.7", sop_instance: "1.2.276.0.7230010.3.1.4.8323329.5846.1512159596.457896", study: "1.2.826.0.1.3680043.8.498.12406831542731051035295345080039845114", series: "1.2.826.0.1.3680043.8.498.16157229083793556332623330502397121062", frames: None, pixels: true, waveform: false },
    Expected { file: "GDCMJ2K_TextGBR.dcm", transfer_syntax: "1.2.840.10008.1.2.4.90", sop_class: "1.2.840.10008.5.1.4.1.1.7", sop_instance: "1.3.6.1.4.35045.258255395321547846922642016970312704221", study: "1.3.6.1.4.35045.178713654550621507378357964392981662901", series: "1.3.6.1.4.35045.144617642844613360096093938825160119849", frames: None, pixels: true, waveform: false },
    Expected { file: "693_J2KI.dcm", transfer_syntax: "1.2.840.10008.1.2.4.91", sop_class: "1.2.840.10008.5.1.4.1.1.2", sop_instance: "1.2.826.0.1.3680043.2.1143.6234428899086018376578420169896863246", study: "1.2.276.0.7230010.3.1.2.296485376.1.1521713414.1800996", series: "1.2.276.0.7230010.3.1.3.296485376.1.1521713419.1802493", frames: None, pixels: true, waveform: false },
    Expected { file: "J2K_pixelrep_mismatch.dcm", transfer_syntax: "1.2.840.10008.1.2.4.90", sop_class: "1.2.840.10008.5.1.4.1.1.2", sop_instance: "1.2.392.200036.9123.100.11.15002200303521616157144551003340153", study: "1.2.392.200036.9123.100.11.15002200303521616157144527203339851", series: "1.2.392.200036.9123.100.11.15002200303521616157144550003340146", frames: None, pixels: true, waveform: false },
    Expected { file: "SC_rgb_jpeg_dcmd.dcm", transfer_syntax: "1.2.840.10008.1.2", sop_class: "1.2.840.10008.5.1.4.1.1.7", sop_instance: "1.2.826.0.1.3680043.8.498.13002811185086637637347356263722492924", study: "1.2.826.0.1.3680043.8.498.13331179108403236084039838123417806584", series: "1.2.826.0.1.3680043.8.498.12890021624762486737912713647647328339", frames: None, pixels: true, waveform: false },
    Expected { file: "examples_ybr_color.dcm", transfer_syntax: "1.2.840.10008.1.2.4.50", sop_class: "1.2.840.10008.5.1.4.1.1.3.1", sop_instance: "1.2.840.114340.3.8251017118051.3.20160503.121539.16117.4", study: "1.2.840.114340.3.8251017118051.1.20160503.120850.2171", series: "1.2.840.114340.3.8251017118051.2.20160503.120850.2171", frames: Some(30), pixels: true, waveform: false },
    Expected { file: "examples_overlay.dcm", transfer_syntax: "1.2.840.10008.1.2.1", sop_class: "1.2.840.10008.5.1.4.1.1.4", sop_instance: "1.2.826.0.1.3680043.8.498.56065470899706926608807826667383533307", study: "1.2.124.113532.10.122.1.203.20051130.122937.2950157", series: "1.3.12.2.1107.5.2.30.25641.30010005113009191059300000190", frames: None, pixels: true, waveform: false },
    Expected { file: "examples_palette.dcm", transfer_syntax: "1.2.840.10008.1.2.1", sop_class: "1.2.840.10008.5.1.4.1.1.6.1", sop_instance: "1.3.46.670589.14.1000.210.2.199999.20110525185628.1.0", study: "1.3.46.670589.14.1000.210.4.199999.20110525182825.1.0", series: "1.3.46.670589.14.1000.210.3.199999.20110525182826.1.0", frames: None, pixels: true, waveform: false },
    Expected { file: "liver_1frame.dcm", transfer_syntax: "1.2.840.10008.1.2.1", sop_class: "1.2.840.10008.5.1.4.1.1.66.4", sop_instance: "1.2.276.0.7230010.3.1.4.0.42154.1458337731.665796", study: "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1", series: "1.2.276.0.7230010.3.1.3.0.42154.1458337731.665795", frames: None, pixels: true, waveform: false },
    Expected { file: "liver_expb_1frame.dcm", transfer_syntax: "1.2.840.10008.1.2.2", sop_class: "1.2.840.10008.5.1.4.1.1.66.4", sop_instance: "1.2.276.0.7230010.3.1.4.0.42154.1458337731.665796", study: "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1", series: "1.2.276.0.7230010.3.1.3.0.42154.1458337731.665795", frames: None, pixels: true, waveform: false },
    Expected { file: "rtdose_rle.dcm", transfer_syntax: "1.2.840.10008.1.2.5", sop_class: "1.2.840.10008.5.1.4.1.1.481.2", sop_instance: "1.9.999.999.99.9.9999.9999.20030818153516", study: "1.2.999.999.99.9.9999.8888", series: "1.2.777.777.77.7.7777.7777", frames: Some(15), pixels: true, waveform: false },
    Expected { file: "test-SR.dcm", transfer_syntax: "1.2.840.10008.1.2.1", sop_class: "1.2.840.10008.5.1.4.1.1.88.33", sop_instance: "1.2.276.0.7230010.3.1.4.2139363186.7819.982086466.4", study: "1.2.276.0.7230010.3.1.4.2139363186.7819.982086466.2", series: "1.2.276.0.7230010.3.1.4.2139363186.7819.982086466.3", frames: None, pixels: false, waveform: false },
    Expected { file: "reportsi.dcm", transfer_syntax: "1.2.840.10008.1.2.1", sop_class: "1.2.840.10008.5.1.4.1.1.88.11", sop_instance: "1.2.276.0.7230010.3.1.4.1787205428.166.1117461927.10", study: "1.2.276.0.7230010.3.1.2.1787205428.166.1117461927.5", series: "1.2.276.0.7230010.3.1.3.1787205428.166.1117461927.11", frames: None, pixels: false, waveform: false },
    Expected { file: "reportsi_with_empty_number_tags.dcm", transfer_syntax: "1.2.840.10008.1.2.1", sop_class: "1.2.840.10008.5.1.4.1.1.88.11", sop_instance: "1.2.276.0.7230010.3.1.4.1787205428.166.1117461927.10", study: "1.2.276.0.7230010.3.1.2.1787205428.166.1117461927.5", series: "1.2.276.0.7230010.3.1.3.1787205428.166.1117461927.11", frames: None, pixels: false, waveform: false },
    Expected { file: "waveform_ecg.dcm", transfer_syntax: "1.2.840.10008.1.2.1", sop_class: "1.2.840.10008.5.1.4.1.1.9.1.1", sop_instance: "1.3.6.1.4.1.20029.40.20130125105919.5407.1.1", study: "1.3.76.13.65829.2.20130125082826.1072139.2", series: "1.3.6.1.4.1.20029.40.20130125105919.5407.1", frames: None, pixels: false, waveform: true },
];

/// Every file pydicom reads with consistent UIDs is accepted, with the same
/// UIDs, transfer syntax, frame count and flags as pydicom reports.
#[test]
fn accepted_files_match_pydicom() {
    for e in ACCEPTED {
        let parsed = parse(&read(e.file), &Limits::default()).unwrap_or_else(|err| panic!("{} refused: {err}", e.file));
        let i = &parsed.instance;
        assert_eq!(i.transfer_syntax, e.transfer_syntax, "{}", e.file);
        assert_eq!(i.sop_class_uid, e.sop_class, "{}", e.file);
        assert_eq!(i.sop_instance_uid, e.sop_instance, "{}", e.file);
        assert_eq!(i.study_uid, e.study, "{}", e.file);
        assert_eq!(i.series_uid, e.series, "{}", e.file);
        assert_eq!(i.number_of_frames, e.frames, "{}", e.file);
        assert_eq!(i.has_pixel_data, e.pixels, "{}", e.file);
        assert_eq!(i.is_waveform, e.waveform, "{}", e.file);
    }
}

/// The other indexed attributes of a few files, as pydicom reads them.
#[test]
fn attributes_match_pydicom() {
    let i = parse(&read("CT_small.dcm"), &Limits::default()).unwrap().instance;
    assert_eq!(i.patient_id.as_deref(), Some("1CT1"));
    assert_eq!(i.issuer_of_patient_id, None);
    assert_eq!(i.patient_name.as_deref(), Some("CompressedSamples^CT1"));
    assert_eq!(i.patient_birth_date, None);
    assert_eq!(i.patient_sex.as_deref(), Some("O"));
    assert_eq!(i.study_date.as_deref(), Some("20040119"));
    assert_eq!(i.study_time.as_deref(), Some("072730"));
    assert_eq!(i.accession_number, None);
    assert_eq!(i.study_id.as_deref(), Some("1CT1"));
    assert_eq!(i.study_description.as_deref(), Some("e+1"));
    assert_eq!(i.referring_physician_name, None);
    assert_eq!(i.modality.as_deref(), Some("CT"));
    assert_eq!(i.series_number, Some(1));
    assert_eq!(i.series_description, None);
    assert_eq!(i.body_part_examined, None);
    assert_eq!(i.series_date.as_deref(), Some("19970430"));
    assert_eq!(i.series_time.as_deref(), Some("112749"));
    assert_eq!(i.instance_number, Some(1));
    assert_eq!(i.number_of_frames, None);
    assert_eq!((i.rows, i.columns), (Some(128), Some(128)));

    let i = parse(&read("waveform_ecg.dcm"), &Limits::default()).unwrap().instance;
    assert_eq!(i.patient_id.as_deref(), Some("642341"));
    assert_eq!(i.patient_name.as_deref(), Some("Anonymous"));
    assert_eq!(i.patient_birth_date.as_deref(), Some("19710123"));
    assert_eq!(i.patient_sex.as_deref(), Some("F"));
    assert_eq!(i.accession_number.as_deref(), Some("03028041970546"));
    assert_eq!(i.study_description.as_deref(), Some("ECG"));
    assert_eq!(i.referring_physician_name.as_deref(), Some("2721"));
    assert_eq!(i.modality.as_deref(), Some("ECG"));
    assert_eq!(i.series_number, None);
    assert_eq!((i.rows, i.columns), (None, None));
    assert!(i.is_waveform && !i.has_pixel_data);

    let i = parse(&read("JPEG2000.dcm"), &Limits::default()).unwrap().instance;
    assert_eq!(i.body_part_examined.as_deref(), Some("WHOLE BODY"));
    assert_eq!(i.study_description.as_deref(), Some("Whole Body Bone"));
    assert_eq!(i.instance_number, Some(3));
    assert_eq!((i.rows, i.columns), (Some(1024), Some(256)));

    let i = parse(&read("SC_rgb_rle_2frame.dcm"), &Limits::default()).unwrap().instance;
    assert_eq!(i.number_of_frames, Some(2));
    assert_eq!(i.referring_physician_name.as_deref(), Some("Moriarty^James"));

    let i = parse(&read("test-SR.dcm"), &Limits::default()).unwrap().instance;
    assert_eq!(i.patient_name.as_deref(), Some("Test^S R"));
    assert_eq!(i.series_description.as_deref(), Some("Demonstration of SR Features"));
    assert_eq!(i.modality.as_deref(), Some("SR"));

    // The same instance in four encodings gives the same attributes.
    let reference = parse(&read("MR_small.dcm"), &Limits::default()).unwrap().instance;
    for file in ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm"] {
        let mut i = parse(&read(file), &Limits::default()).unwrap().instance;
        i.transfer_syntax.clone_from(&reference.transfer_syntax);
        assert!(i == reference, "{file} differs from MR_small.dcm");
    }
}

/// Files refused, and why.
#[test]
fn refused_files() {
    use DicomError::*;
    let cases: &[(&str, DicomError)] = &[
        // Cut inside the pixel data.
        ("MR_truncated.dcm", Truncated),
        // Cut inside a sequence.
        ("rtplan_truncated.dcm", Truncated),
        // No preamble, no DICM, no file meta: not Part 10.
        ("no_meta.dcm", NotPart10),
        ("ExplVR_BigEndNoMeta.dcm", NotPart10),
        ("ExplVR_LitEndNoMeta.dcm", NotPart10),
        ("rtstruct.dcm", NotPart10),
        ("meta_missing_tsyntax.dcm", MissingAttribute("TransferSyntaxUID")),
        // File meta without MediaStorageSOPInstanceUID.
        ("empty_charset_LEI.dcm", MissingAttribute("MediaStorageSOPInstanceUID")),
        ("nested_priv_SQ.dcm", MissingAttribute("MediaStorageSOPInstanceUID")),
        // Meta group without group length (tolerated), but the data set
        // has no SOP UIDs.
        ("no_meta_group_length.dcm", MissingAttribute("SOPClassUID")),
        ("priv_SQ.dcm", MissingAttribute("SOPClassUID")),
        // No study or series UIDs.
        ("JPEGLSNearLossless_08.dcm", MissingAttribute("StudyInstanceUID")),
        ("JPEGLSNearLossless_16.dcm", MissingAttribute("StudyInstanceUID")),
        ("SC_rgb_jls_lossy_line.dcm", MissingAttribute("StudyInstanceUID")),
        ("SC_rgb_jls_lossy_sample.dcm", MissingAttribute("StudyInstanceUID")),
        // MediaStorageSOPInstanceUID 1.2.999... but SOPInstanceUID 1.9.999...
        // (or 1.2.777... for rtplan).
        ("badVR.dcm", SopInstanceMismatch),
        ("rtdose.dcm", SopInstanceMismatch),
        ("rtdose_1frame.dcm", SopInstanceMismatch),
        ("rtdose_expb.dcm", SopInstanceMismatch),
        ("rtdose_expb_1frame.dcm", SopInstanceMismatch),
        ("rtplan.dcm", SopInstanceMismatch),
        // Deflated explicit VR little endian: dicom-object's `deflate`
        // feature is not enabled.
        ("image_dfl.dcm", UnsupportedTransferSyntax),
        // Declares JPEG baseline (explicit VR) but its data set is in
        // implicit VR: read as explicit VR, the lengths run off the end.
        ("SC_rgb_jpeg.dcm", Truncated),
        // An explicit VR UN element of undefined length holding implicit VR
        // items (PS3.5 6.2.2): dicom-rs reads those items as explicit VR, so
        // does our check, and the lengths run off the end. (The file has no
        // SOP UIDs either.)
        ("UN_sequence.dcm", Truncated),
    ];
    for (file, expected) in cases {
        let err = parse(&read(file), &Limits::default()).err().unwrap_or_else(|| panic!("{file} was accepted"));
        assert_eq!(&err, expected, "{file}");
    }
}

/// Replaces the file meta group's MediaStorageSOPInstanceUID by a UID of
/// the same length.
fn with_media_uid(mut bytes: Vec<u8>, old: &str, new: &str) -> Vec<u8> {
    assert_eq!(old.len(), new.len());
    let at = bytes[..1024].windows(old.len()).position(|w| w == old.as_bytes()).expect("media storage SOP instance UID in the meta group");
    bytes[at..at + new.len()].copy_from_slice(new.as_bytes());
    bytes
}

/// With their meta group fixed, the files refused above for the UID
/// mismatch parse: implicit VR sequences (rtplan), implicit and big endian
/// multi-frame (rtdose) and a malformed IS (badVR: NumberOfFrames "1A",
/// left out of the instance, kept as a string in the metadata).
#[test]
fn mismatched_files_parse_once_fixed() {
    let rtplan = with_media_uid(read("rtplan.dcm"), "1.2.999.999.99.9.9999.9999.20030903150023", "1.2.777.777.77.7.7777.7777.20030903150023");
    let parsed = parse(&rtplan, &Limits::default()).unwrap();
    assert_eq!(parsed.instance.modality.as_deref(), Some("RTPLAN"));
    assert_eq!(parsed.instance.patient_name.as_deref(), Some("Last^First^mid^pre"));
    assert_eq!(parsed.instance.series_number, Some(2));
    let json = parsed.metadata_json("x");
    // BeamSequence (300A,00B0), read from implicit VR with the dictionary.
    assert_eq!(json["300A00B0"]["vr"], "SQ");
    assert!(json["300A00B0"]["Value"].as_array().is_some_and(|v| !v.is_empty()));

    for (file, frames) in [("rtdose.dcm", Some(15)), ("rtdose_expb.dcm", Some(15)), ("rtdose_1frame.dcm", None)] {
        let fixed = with_media_uid(read(file), "1.2.999.999.99.9.9999.9999.20030818153516", "1.9.999.999.99.9.9999.9999.20030818153516");
        let parsed = parse(&fixed, &Limits::default()).unwrap();
        assert_eq!(parsed.instance.number_of_frames, frames, "{file}");
        assert_eq!(parsed.instance.modality.as_deref(), Some("RTDOSE"));
    }

    let bad_vr = with_media_uid(read("badVR.dcm"), "1.2.999.999.99.9.9999.9999.20030818153516", "1.9.999.999.99.9.9999.9999.20030818153516");
    let parsed = parse(&bad_vr, &Limits::default()).unwrap();
    assert_eq!(parsed.instance.number_of_frames, None);
    assert_eq!(parsed.metadata_json("x")["00280008"], serde_json::json!({"vr": "IS", "Value": ["1A"]}));
}

/// `Debug` of parsed data and errors never shows patient data.
#[test]
fn debug_output_is_redacted() {
    let parsed = parse(&read("CT_small.dcm"), &Limits::default()).unwrap();
    let debug = format!("{parsed:?} {:?}", parsed.instance);
    for secret in ["CompressedSamples", "1CT1", "20040119", &parsed.instance.study_uid] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    assert!(debug.contains("1.2.840.10008.5.1.4.1.1.2"), "{debug}");

    // Errors name attributes, not values.
    let mut bytes = read("CT_small.dcm");
    let uid = parsed.instance.sop_instance_uid.clone();
    let at = bytes.len() - bytes.windows(uid.len()).rev().position(|w| w == uid.as_bytes()).unwrap() - uid.len();
    bytes[at + 2] = b'x';
    let err = parse(&bytes, &Limits::default()).unwrap_err();
    assert_eq!(err, DicomError::InvalidUid("SOPInstanceUID"));
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(&uid[3..]), "{shown}");
}
