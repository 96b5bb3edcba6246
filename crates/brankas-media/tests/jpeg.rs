//! JPEG cleaning: the corpus photo with GPS EXIF, and synthetic JPEGs carrying every kind
//! of metadata, in every orientation.

mod common;

use brankas_media::{ImageKind, Limits, clean, orientation};
use common::*;
use image::ImageFormat;

const APP0: u8 = 0xE0;
const APP1: u8 = 0xE1;
const APP2: u8 = 0xE2;
const APP13: u8 = 0xED;
const APP14: u8 = 0xEE;
const APP15: u8 = 0xEF;
const COM: u8 = 0xFE;

/// The Exif APP1 payload of a JPEG, if any.
fn exif_of(jpeg: &[u8]) -> Option<Vec<u8>> {
    jpeg_segments(jpeg).0.into_iter().find(|(m, p)| *m == APP1 && p.starts_with(b"Exif\0\0")).map(|(_, p)| p[6..].to_vec())
}

/// The EXIF a cleaned JPEG may carry: IFD0 with the orientation and nothing else.
fn orientation_only(o: u16) -> Vec<u8> {
    let mut t = b"MM\0*".to_vec();
    t.extend(8u32.to_be_bytes());
    t.extend(1u16.to_be_bytes());
    t.extend(0x0112u16.to_be_bytes());
    t.extend(3u16.to_be_bytes());
    t.extend(1u32.to_be_bytes());
    t.extend(o.to_be_bytes());
    t.extend([0, 0]);
    t.extend(0u32.to_be_bytes());
    t
}

/// Checks what every cleaned JPEG must be: only whitelisted segments, nothing after EOI, and
/// no EXIF but, for a photo to be turned, one segment holding its orientation alone.
fn assert_clean_structure(out: &[u8]) {
    let (segments, end) = jpeg_segments(out);
    assert_eq!(end, out.len(), "nothing after EOI");
    let mut exifs = 0;
    for (marker, payload) in &segments {
        match *marker {
            APP0 => assert!(payload.starts_with(b"JFIF\0") && payload.len() == 14 && payload[12..] == [0, 0], "JFIF without thumbnail only"),
            APP1 => {
                let o = orientation(ImageKind::Jpeg, out).expect("an EXIF kept holds an orientation");
                assert!((2..=8).contains(&o), "EXIF kept only for an orientation to apply");
                assert_eq!(payload, &[&b"Exif\0\0"[..], &orientation_only(o)].concat(), "the orientation alone");
                exifs += 1;
            }
            APP2 => assert!(payload.starts_with(b"ICC_PROFILE\0"), "APP2 kept only for ICC"),
            APP14 => assert!(payload.starts_with(b"Adobe") && payload.len() == 12, "APP14 kept only for Adobe"),
            0xE3..=0xEF | COM => panic!("metadata segment {marker:#04X} kept"),
            _ => {}
        }
    }
    assert!(exifs <= 1);
    assert_eq!(out.windows(6).filter(|w| w == b"Exif\0\0").count(), exifs, "no Exif header elsewhere");
}

/// What a viewer shows: the decoded pixels turned as the file's EXIF orientation says.
fn as_shown(out: &[u8]) -> image::DynamicImage {
    let mut img = decode(out);
    if let Some(o) = orientation(ImageKind::Jpeg, out).and_then(|o| u8::try_from(o).ok()).and_then(image::metadata::Orientation::from_exif) {
        img.apply_orientation(o);
    }
    img
}

#[test]
fn corpus_photo_loses_its_gps_exif() {
    let path = corpus().join("attachments/Binary-f006.jpg");
    let input = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));

    // The photo really carries a location: an Exif APP1 whose IFD0 points to a GPS IFD.
    let exif = exif_of(&input).expect("the corpus photo has an Exif APP1");
    let (ifd0, gps) = exif_tags(&exif);
    assert!(ifd0.contains(&0x8825), "IFD0 has a GPS IFD pointer");
    assert!(!gps.is_empty(), "the GPS IFD has entries");

    let out = clean(ImageKind::Jpeg, &input, &Limits::default()).expect("the corpus photo cleans");
    assert_clean_structure(&out);
    assert!(exif_of(&out).is_none() || orientation(ImageKind::Jpeg, &input).is_some_and(|o| o > 1), "no EXIF, but an orientation to apply");
    assert!(!contains(&out, &exif), "none of the EXIF block survives");
    assert!(out.len() < input.len());

    let before = decode(&input);
    let after = decode(&out);
    let o = orientation(ImageKind::Jpeg, &input).unwrap_or(1);
    eprintln!("Binary-f006.jpg: EXIF orientation {:?}, {} x {}", orientation(ImageKind::Jpeg, &input), before.width(), before.height());
    let _ = o;
    assert_eq!(after.as_bytes(), before.as_bytes(), "lossless: the very same pixels");
    assert_eq!(clean(ImageKind::Jpeg, &out, &Limits::default()).expect("cleans again"), out, "idempotent");
}

/// A fake ICC profile: a header saying RGB, which is all the crate looks at.
fn fake_icc() -> Vec<u8> {
    let mut icc = vec![0u8; 132];
    icc[..4].copy_from_slice(&132u32.to_be_bytes());
    icc[16..20].copy_from_slice(b"RGB ");
    icc[20..24].copy_from_slice(b"XYZ ");
    icc[36..40].copy_from_slice(b"acsp");
    icc
}

/// The test pattern as a JPEG carrying everything a camera, an editor and a phone's gallery
/// may add: JFIF with a thumbnail, EXIF with GPS (and `orientation`), XMP, MPF, IPTC, a
/// comment, a JFXX thumbnail, APP15, an ICC profile and an Adobe segment (both to keep), and
/// after EOI a trailer and a second JPEG with its own EXIF (as MPF stores them).
fn loaded_jpeg(orientation: Option<u16>) -> Vec<u8> {
    let plain = encode(&pattern(), ImageFormat::Jpeg);
    // The encoder's output starts with SOI and its own 18-byte JFIF APP0, replaced here.
    assert_eq!(&plain[..6], &[0xFF, 0xD8, 0xFF, APP0, 0, 16]);
    let mut v = vec![0xFF, 0xD8];
    v.extend(jpeg_segment(APP0, b"JFIF\0\x01\x02\x01\x00\x48\x00\x48\x02\x02SECRET-THUMB"));
    v.extend(jpeg_segment(APP1, &[&b"Exif\0\0"[..], &exif_tiff(orientation, true)].concat()));
    v.extend(jpeg_segment(APP1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>SECRET-XMP</x:xmpmeta>"));
    v.extend(jpeg_segment(APP2, &[&b"ICC_PROFILE\0\x01\x01"[..], &fake_icc()].concat()));
    v.extend(jpeg_segment(APP2, b"MPF\0MM\0*SECRET-MPF"));
    v.extend(jpeg_segment(APP13, b"Photoshop 3.0\08BIM\x04\x04SECRET-IPTC"));
    v.extend(jpeg_segment(APP14, b"Adobe\0\x64\0\0\0\0\x01"));
    v.extend(jpeg_segment(COM, b"SECRET-COMMENT patient name"));
    v.extend(jpeg_segment(APP0, b"JFXX\0\x10SECRET-JFXX"));
    v.extend(jpeg_segment(APP15, b"SECRET-APP15"));
    v.extend_from_slice(&plain[20..]);
    v.extend_from_slice(b"SECRET-TRAILER");
    let mut second = vec![0xFF, 0xD8];
    second.extend(jpeg_segment(APP1, &[&b"Exif\0\0"[..], &exif_tiff(Some(1), false)].concat()));
    second.extend_from_slice(&plain[2..]);
    v.extend(second);
    v
}

fn assert_nothing_secret(out: &[u8]) {
    assert_clean_structure(out);
    assert!(!contains(out, SECRET), "a planted metadata value survived");
    assert!(!contains(out, &latitude_bytes(true)) && !contains(out, &latitude_bytes(false)), "the GPS latitude survived");
    assert!(!contains(out, b"http://ns.adobe.com/xap"), "XMP survived");
    assert!(!contains(out, b"Photoshop 3.0"), "IPTC survived");
}

#[test]
fn synthetic_jpeg_input_really_carries_the_metadata() {
    // Guards the other tests: they would pass vacuously if the planted metadata were missing.
    let input = loaded_jpeg(Some(6));
    let exif = exif_of(&input).expect("Exif APP1");
    let (ifd0, gps) = exif_tags(&exif);
    assert_eq!(ifd0, [0x010E, 0x0112, 0x8825]);
    assert_eq!(gps, [1, 2, 3, 4]);
    assert!(contains(&input, &latitude_bytes(true)));
    assert_eq!(orientation(ImageKind::Jpeg, &input), Some(6));
    assert_eq!(orientation(ImageKind::Jpeg, &loaded_jpeg(None)), None);
    let (segments, end) = jpeg_segments(&input);
    assert!(end < input.len(), "trailer after EOI");
    for marker in [APP1, APP13, COM, APP15] {
        assert!(segments.iter().any(|(m, _)| *m == marker), "{marker:#04X} planted");
    }
    assert_eq!(decode(&input).width(), W, "the loaded JPEG still decodes");
}

#[test]
fn orientation_6_is_kept_alone_losslessly_and_all_other_metadata_dropped() {
    let input = loaded_jpeg(Some(6));
    let out = clean(ImageKind::Jpeg, &input, &Limits::default()).expect("cleans");
    assert_nothing_secret(&out);
    // Lossless: the very same pixels, and an EXIF with the orientation alone.
    assert_eq!(decode(&out).as_bytes(), decode(&input).as_bytes(), "the very same pixels");
    let (ifd0, gps) = exif_tags(&exif_of(&out).expect("an EXIF for the orientation"));
    assert_eq!((ifd0, gps), (vec![0x0112], vec![]), "IFD0 holds the orientation and nothing else");
    let shown = as_shown(&out);
    assert_eq!((shown.width(), shown.height()), (H, W), "turned a quarter: dimensions swapped");
    // Turned clockwise: the top-left (red) quadrant is now at the top right, the bottom-left
    // (blue) one at the top left.
    let rgb = shown.to_rgb8();
    let near = |got: [u8; 3], want: [u8; 3]| got.iter().zip(want).all(|(&g, w)| g.abs_diff(w) <= 40);
    assert!(near(rgb.get_pixel(H - 4, 4).0, QUADRANTS[0]), "top right is red: {:?}", rgb.get_pixel(H - 4, 4));
    assert!(near(rgb.get_pixel(4, 4).0, QUADRANTS[2]), "top left is blue: {:?}", rgb.get_pixel(4, 4));
    assert_pattern_oriented(&shown, 6, 40);
    // The ICC profile travels with the re-encoded image.
    let (segments, _) = jpeg_segments(&out);
    let icc: Vec<u8> = segments.iter().filter(|(m, _)| *m == APP2).flat_map(|(_, p)| p[14..].to_vec()).collect();
    assert_eq!(icc, fake_icc());
    assert_eq!(orientation(ImageKind::Jpeg, &out), Some(6));
    assert_eq!(clean(ImageKind::Jpeg, &out, &Limits::default()).expect("cleans again"), out, "cleaning again changes nothing");
}

#[test]
fn every_orientation_is_kept_and_shown_turned() {
    for o in 1..=8 {
        let input = loaded_jpeg(Some(o));
        let out = clean(ImageKind::Jpeg, &input, &Limits::default()).expect("cleans");
        assert_nothing_secret(&out);
        assert_eq!(orientation(ImageKind::Jpeg, &out), (o > 1).then_some(o));
        assert_eq!(decode(&out).as_bytes(), decode(&input).as_bytes(), "lossless");
        assert_pattern_oriented(&as_shown(&out), o, 40);
    }
}

#[test]
fn orientation_1_or_none_is_lossless() {
    for o in [None, Some(1)] {
        let input = loaded_jpeg(o);
        let out = clean(ImageKind::Jpeg, &input, &Limits::default()).expect("cleans");
        assert_nothing_secret(&out);
        assert_eq!(decode(&out).as_bytes(), decode(&input).as_bytes(), "the very same pixels");
        // The scan data is copied byte for byte.
        let plain = encode(&pattern(), ImageFormat::Jpeg);
        let scan_start = |j: &[u8]| j.windows(2).position(|w| w == [0xFF, 0xDA]).expect("SOS");
        let tail = &plain[scan_start(&plain)..];
        assert!(out.ends_with(tail), "from SOS to EOI as encoded");
        // Kept: the ICC profile and the Adobe segment, unchanged.
        let (segments, _) = jpeg_segments(&out);
        assert!(segments.contains(&(APP2, [&b"ICC_PROFILE\0\x01\x01"[..], &fake_icc()].concat())));
        assert!(segments.contains(&(APP14, b"Adobe\0\x64\0\0\0\0\x01".to_vec())));
        assert!(segments.contains(&(APP0, b"JFIF\0\x01\x02\x01\x00\x48\x00\x48\0\0".to_vec())), "JFIF kept, thumbnail gone");
        assert_eq!(clean(ImageKind::Jpeg, &out, &Limits::default()).expect("cleans again"), out, "idempotent");
    }
}

#[test]
fn out_of_range_orientation_is_ignored() {
    for o in [0, 9, 0xFFFF] {
        let input = loaded_jpeg(Some(o));
        assert_eq!(orientation(ImageKind::Jpeg, &input), Some(o));
        let out = clean(ImageKind::Jpeg, &input, &Limits::default()).expect("cleans");
        assert_nothing_secret(&out);
        assert_eq!(decode(&out).as_bytes(), decode(&input).as_bytes());
    }
}

#[test]
fn greyscale_jpeg_is_shown_turned_too() {
    let grey = image::DynamicImage::ImageLuma8(pattern().to_luma8());
    let plain = encode(&grey, ImageFormat::Jpeg);
    let mut input = plain[..2].to_vec();
    input.extend(jpeg_segment(APP1, &[&b"Exif\0\0"[..], &exif_tiff(Some(8), false)].concat()));
    input.extend_from_slice(&plain[2..]);
    let out = clean(ImageKind::Jpeg, &input, &Limits::default()).expect("cleans");
    assert_nothing_secret(&out);
    let shown = as_shown(&out);
    assert_eq!(shown.color(), image::ColorType::L8);
    assert_eq!((shown.width(), shown.height()), (H, W));
    // Turned anticlockwise: the top-right quadrant is now at the top left.
    let expected = grey.to_luma8().get_pixel(W - 4, 4).0[0];
    assert!(shown.to_luma8().get_pixel(4, 4).0[0].abs_diff(expected) <= 40);
}

/// A progressive JPEG of the pattern with a restart marker after every MCU (made with
/// libjpeg-turbo: `cjpeg -quality 90 -progressive -restart 1B -optimize`): several scans,
/// Huffman tables between them, RSTn inside the data.
fn progressive() -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/progressive-restart.jpg");
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn progressive_jpeg_with_restarts_and_metadata_between_scans() {
    let original = progressive();
    let (segments, _) = jpeg_segments(&original);
    assert!(segments.iter().filter(|(m, _)| *m == 0xDA).count() > 2, "several scans");
    assert!(segments.iter().any(|(m, _)| *m == 0xC2), "progressive frame");
    assert!(segments.iter().any(|(m, _)| *m == 0xDD), "restart interval");
    // Plant EXIF after SOI and a comment and an APP1 between the first and second scan.
    let second_scan = {
        let first = original.windows(2).position(|w| w == [0xFF, 0xDA]).expect("first scan");
        first + 2 + original[first + 2..].windows(2).position(|w| w == [0xFF, 0xC4] || w == [0xFF, 0xDA]).expect("more after the first scan")
    };
    for o in [1, 6] {
        let exif = jpeg_segment(APP1, &[&b"Exif\0\0"[..], &exif_tiff(Some(o), false)].concat());
        let between = [jpeg_segment(COM, b"SECRET-BETWEEN-SCANS"), jpeg_segment(APP1, b"http://ns.adobe.com/xap/1.0/\0SECRET")].concat();
        let input = [&original[..2], &exif, &original[2..second_scan], &between, &original[second_scan..]].concat();
        assert_eq!(decode(&input).as_bytes(), decode(&original).as_bytes(), "the planted input still decodes");
        let out = clean(ImageKind::Jpeg, &input, &Limits::default()).expect("cleans");
        assert_nothing_secret(&out);
        if o == 1 {
            assert_eq!(out, original, "exactly the file before metadata was planted");
        } else {
            assert_pattern_oriented(&as_shown(&out), o, 40);
        }
    }
}
