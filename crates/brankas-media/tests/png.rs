//! PNG cleaning: text and EXIF chunks dropped, orientation applied, pixels kept.

mod common;

use brankas_media::{ImageKind, Limits, clean, orientation};
use common::*;
use image::ImageFormat;

const KEPT: [&[u8; 4]; 16] = [b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"bKGD", b"acTL", b"fcTL", b"fdAT", b"cICP"];

/// The test pattern as a PNG with colour chunks to keep, and text, EXIF (with GPS and
/// `orientation`) and time to drop, before and after the image data, and bytes after IEND.
fn loaded_png(orientation: Option<u16>) -> Vec<u8> {
    let plain = encode(&pattern(), ImageFormat::Png);
    let mut v = png_with_after_ihdr(
        &plain,
        &[
            png_chunk(b"gAMA", &45455u32.to_be_bytes()),
            png_chunk(b"sRGB", &[0]),
            png_chunk(b"pHYs", &[0, 0, 0x0B, 0x13, 0, 0, 0x0B, 0x13, 1]),
            png_chunk(b"tEXt", b"Comment\0SECRET-TEXT patient name"),
            png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0<x:xmpmeta>SECRET-XMP</x:xmpmeta>"),
            png_chunk(b"zTXt", b"Author\0\0\x78\x9c\x0b\x76\x75\x0e\x72\x0d\xd1\x75\x0c\x0d\xf1\xf0\x0f\x02\x00\x1a\x24\x03\xc7"),
            png_chunk(b"eXIf", &exif_tiff(orientation, false)),
            png_chunk(b"tIME", &[7, 0xE9, 3, 14, 9, 26, 53]),
            png_chunk(b"prVt", b"SECRET-PRIVATE"),
        ],
    );
    let iend = v.len() - 12;
    v.splice(iend..iend, png_chunk(b"tEXt", b"Location\0SECRET-AFTER-IDAT"));
    v.extend_from_slice(b"SECRET-TRAILER");
    v
}

fn assert_clean(out: &[u8]) {
    let (chunks, end) = png_chunks(out);
    assert_eq!(end, out.len(), "nothing after IEND");
    for (kind, _) in &chunks {
        assert!(KEPT.contains(&kind), "chunk {} kept", String::from_utf8_lossy(kind));
    }
    assert!(!contains(out, SECRET), "a planted metadata value survived");
    assert!(!contains(out, &latitude_bytes(false)), "the GPS latitude survived");
}

#[test]
fn synthetic_png_input_really_carries_the_metadata() {
    let input = loaded_png(Some(8));
    let (chunks, end) = png_chunks(&input);
    let kinds: Vec<&[u8; 4]> = chunks.iter().map(|(k, _)| k).collect();
    for k in [b"tEXt", b"iTXt", b"zTXt", b"eXIf", b"tIME"] {
        assert!(kinds.contains(&k));
    }
    assert!(end < input.len());
    assert!(contains(&input, &latitude_bytes(false)));
    assert_eq!(orientation(ImageKind::Png, &input), Some(8));
    assert_eq!(decode(&input).width(), W);
}

#[test]
fn orientation_1_strips_and_keeps_pixels() {
    for o in [None, Some(1)] {
        let input = loaded_png(o);
        let out = clean(ImageKind::Png, &input, &Limits::default()).expect("cleans");
        assert_clean(&out);
        assert_eq!(decode(&out).as_bytes(), decode(&input).as_bytes(), "the very same pixels");
        let (chunks, _) = png_chunks(&out);
        let kinds: Vec<&[u8; 4]> = chunks.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [b"IHDR", b"gAMA", b"sRGB", b"pHYs", b"IDAT", b"IEND"]);
        let (original, _) = png_chunks(&input);
        for chunk in &chunks {
            assert!(original.contains(chunk), "kept chunks are copied unchanged");
        }
        assert_eq!(clean(ImageKind::Png, &out, &Limits::default()).expect("cleans again"), out, "idempotent");
    }
}

#[test]
fn orientation_8_is_applied() {
    let input = loaded_png(Some(8));
    let out = clean(ImageKind::Png, &input, &Limits::default()).expect("cleans");
    assert_clean(&out);
    let shown = decode(&out);
    assert_eq!((shown.width(), shown.height()), (H, W), "dimensions swapped");
    // Turned anticlockwise: the top-right (green) quadrant is now at the top left. Exactly:
    // PNG is lossless.
    assert_eq!(shown.to_rgb8().get_pixel(0, 0).0, QUADRANTS[1]);
    assert_eq!(shown.to_rgb8().get_pixel(H - 1, W - 1).0, QUADRANTS[2]);
    assert_pattern_oriented(&shown, 8, 0);
    // Every pixel, not just the corners.
    let original = pattern().to_rgb8();
    let shown = shown.to_rgb8();
    for (x, y, p) in shown.enumerate_pixels() {
        let (sx, sy) = source_of(8, x, y, W, H);
        assert_eq!(p, original.get_pixel(sx, sy));
    }
    // The colour space travels with the re-encoded image; the pixel size does not (it would
    // have to be swapped).
    let (chunks, _) = png_chunks(&out);
    assert!(chunks.contains(&(*b"gAMA", 45455u32.to_be_bytes().to_vec())));
    assert!(chunks.contains(&(*b"sRGB", vec![0])));
    assert_eq!(orientation(ImageKind::Png, &out), None);
    assert_eq!(clean(ImageKind::Png, &out, &Limits::default()).expect("cleans again"), out, "cleaning again changes nothing");
}

#[test]
fn every_orientation_is_applied_exactly() {
    for o in 1..=8 {
        let out = clean(ImageKind::Png, &loaded_png(Some(o)), &Limits::default()).expect("cleans");
        assert_clean(&out);
        assert_pattern_oriented(&decode(&out), o, 0);
    }
}

#[test]
fn other_pixel_formats_keep_their_format() {
    let images =
        [image::DynamicImage::ImageLuma8(pattern().to_luma8()), image::DynamicImage::ImageRgba8(pattern().to_rgba8()), image::DynamicImage::ImageRgb16(pattern().to_rgb16())];
    for img in images {
        let plain = encode(&img, ImageFormat::Png);
        let input = png_with_after_ihdr(&plain, &[png_chunk(b"eXIf", &exif_tiff(Some(3), true))]);
        let out = clean(ImageKind::Png, &input, &Limits::default()).expect("cleans");
        assert_clean(&out);
        let shown = decode(&out);
        assert_eq!(shown.color(), img.color());
        let mut expected = img.clone();
        expected.apply_orientation(image::metadata::Orientation::Rotate180);
        assert_eq!(shown.as_bytes(), expected.as_bytes());
    }
}

#[test]
fn animated_png_with_orientation_is_refused() {
    let plain = encode(&pattern(), ImageFormat::Png);
    let actl = png_chunk(b"acTL", &[0, 0, 0, 1, 0, 0, 0, 0]);
    let mut fctl = vec![0, 0, 0, 0];
    fctl.extend_from_slice(&W.to_be_bytes());
    fctl.extend_from_slice(&H.to_be_bytes());
    fctl.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 10, 0, 0]);
    let fctl = png_chunk(b"fcTL", &fctl);
    let still = png_with_after_ihdr(&plain, &[actl.clone(), fctl.clone()]);
    let out = clean(ImageKind::Png, &still, &Limits::default()).expect("an APNG without orientation cleans");
    assert_eq!(out, still, "nothing to drop");
    let turned = png_with_after_ihdr(&plain, &[actl, fctl, png_chunk(b"eXIf", &exif_tiff(Some(6), false))]);
    assert!(matches!(clean(ImageKind::Png, &turned, &Limits::default()), Err(brankas_media::MediaError::Unsupported(_))));
}
