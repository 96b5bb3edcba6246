//! Hostile and broken input: decompression bombs, oversized, truncated and random bytes, and
//! a property test that no input makes `clean` panic.

mod common;

use brankas_media::{ImageKind, Limits, MediaError, clean};
use common::*;
use image::ImageFormat;
use proptest::prelude::*;

fn plain_jpeg() -> Vec<u8> {
    encode(&pattern(), ImageFormat::Jpeg)
}

fn plain_png() -> Vec<u8> {
    encode(&pattern(), ImageFormat::Png)
}

/// A PNG whose header claims `width` × `height` pixels, with a few bytes of image data.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    // zlib of 1 KiB of zeros: a real bomb would inflate to the claimed size.
    let idat = [0x78, 0x9C, 0x63, 0x60, 0x18, 0x05, 0xA3, 0x60, 0x14, 0x0C, 0x77, 0x00, 0x00, 0x04, 0x00, 0x00, 0x01];
    [&b"\x89PNG\r\n\x1a\n"[..], &png_chunk(b"IHDR", &ihdr), &png_chunk(b"IDAT", &idat), &png_chunk(b"IEND", &[])].concat()
}

/// `jpeg` with its SOF0 frame header claiming `width` × `height`.
fn jpeg_claiming(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut v = jpeg.to_vec();
    let sof = v.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline frame header");
    v[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    v[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    v
}

#[test]
fn png_bomb_fails_before_decoding() {
    let bomb = png_claiming(100_000, 100_000);
    assert!(bomb.len() < 100);
    // 10^10 pixels: decoding would need 30 GB. The header check refuses it first.
    assert!(matches!(clean(ImageKind::Png, &bomb, &Limits::default()), Err(MediaError::TooManyPixels)));
    // Even without a pixel limit, the decoder's allocation cap holds.
    let no_pixel_limit = Limits { max_pixels: u64::MAX, ..Limits::default() };
    assert!(matches!(clean(ImageKind::Png, &bomb, &no_pixel_limit), Err(MediaError::TooMuchMemory | MediaError::TooManyPixels)));
}

#[test]
fn jpeg_bomb_fails_before_decoding() {
    let bomb = jpeg_claiming(&plain_jpeg(), 65_000, 65_000);
    assert!(matches!(clean(ImageKind::Jpeg, &bomb, &Limits::default()), Err(MediaError::TooManyPixels)));
    let no_pixel_limit = Limits { max_pixels: u64::MAX, ..Limits::default() };
    assert!(matches!(clean(ImageKind::Jpeg, &bomb, &no_pixel_limit), Err(MediaError::TooMuchMemory | MediaError::TooManyPixels)));
}

#[test]
fn pixel_limit_is_the_callers() {
    let exact = Limits { max_pixels: u64::from(W * H), ..Limits::default() };
    let below = Limits { max_pixels: u64::from(W * H) - 1, ..Limits::default() };
    for (kind, bytes) in [(ImageKind::Jpeg, plain_jpeg()), (ImageKind::Png, plain_png())] {
        assert!(clean(kind, &bytes, &exact).is_ok());
        assert!(matches!(clean(kind, &bytes, &below), Err(MediaError::TooManyPixels)));
    }
}

#[test]
fn allocation_limit_is_enforced() {
    // The decoded pattern needs W * H * 3 bytes.
    let tight = Limits { max_alloc: u64::from(W * H * 3) - 1, ..Limits::default() };
    for (kind, bytes) in [(ImageKind::Jpeg, plain_jpeg()), (ImageKind::Png, plain_png())] {
        assert!(matches!(clean(kind, &bytes, &tight), Err(MediaError::TooMuchMemory)), "{kind:?}");
    }
}

#[test]
fn oversized_input_is_too_large() {
    for (kind, bytes) in [(ImageKind::Jpeg, plain_jpeg()), (ImageKind::Png, plain_png())] {
        let exact = Limits { max_bytes: bytes.len(), ..Limits::default() };
        let below = Limits { max_bytes: bytes.len() - 1, ..Limits::default() };
        assert!(clean(kind, &bytes, &exact).is_ok());
        assert!(matches!(clean(kind, &bytes, &below), Err(MediaError::TooLarge)));
        // Checked first: even bytes that are no image at all.
        assert!(matches!(clean(kind, &vec![0u8; 1000], &Limits { max_bytes: 999, ..Limits::default() }), Err(MediaError::TooLarge)));
    }
}

#[test]
fn truncated_jpeg_is_an_error() {
    let jpeg = plain_jpeg();
    let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).expect("scan");
    let middle = sos + (jpeg.len() - sos) / 2;
    for cut in [middle, sos + 20, jpeg.len() - 2, jpeg.len() - 1, 100, 3] {
        assert!(clean(ImageKind::Jpeg, &jpeg[..cut], &Limits::default()).is_err(), "cut at {cut}");
    }
}

#[test]
fn truncated_png_is_an_error() {
    let png = plain_png();
    let (chunks, _) = png_chunks(&png);
    let idat = png.windows(4).position(|w| w == b"IDAT").expect("image data") - 4;
    let middle = idat + 8 + (png.len() - 12 - idat - 8) / 2;
    for cut in [middle, idat + 4, png.len() - 1, 20] {
        assert!(clean(ImageKind::Png, &png[..cut], &Limits::default()).is_err(), "cut at {cut}");
    }
    // Image data cut short inside an intact structure (chunk lengths and CRCs right): the
    // decoder notices.
    let data: Vec<u8> = chunks.iter().filter(|(k, _)| k == b"IDAT").flat_map(|(_, d)| d.clone()).collect();
    let short = [&png[..idat], &png_chunk(b"IDAT", &data[..data.len() / 2]), &png_chunk(b"IEND", &[])].concat();
    assert!(clean(ImageKind::Png, &short, &Limits::default()).is_err());
}

/// Deterministic pseudo-random bytes (xorshift), not starting like any image.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[0]
        })
        .collect();
    v[0] = 0x42;
    v
}

#[test]
fn random_bytes_declared_as_images_are_errors() {
    for seed in 1..20 {
        let bytes = noise(4096, seed);
        assert_eq!(brankas_media::classify("image/jpeg", &bytes), brankas_media::Handling::Clean(ImageKind::Jpeg));
        assert!(matches!(clean(ImageKind::Jpeg, &bytes, &Limits::default()), Err(MediaError::Malformed(_))));
        assert!(matches!(clean(ImageKind::Png, &bytes, &Limits::default()), Err(MediaError::Malformed(_))));
        // Past a valid start too.
        let jpeg = [&[0xFF, 0xD8, 0xFF, 0xE0][..], &bytes].concat();
        assert!(clean(ImageKind::Jpeg, &jpeg, &Limits::default()).is_err());
        let png = [&b"\x89PNG\r\n\x1a\n"[..], &bytes].concat();
        assert!(clean(ImageKind::Png, &png, &Limits::default()).is_err());
    }
    // A GIF declared as JPEG is cleaned as a JPEG, and so fails.
    assert!(clean(ImageKind::Jpeg, b"GIF89a\x01\0\x01\0\0\0\0;", &Limits::default()).is_err());
}

#[test]
fn errors_say_nothing_about_the_image() {
    let input = jpeg_claiming(&plain_jpeg(), 65_000, 65_000);
    let messages: Vec<String> = [
        clean(ImageKind::Jpeg, &input, &Limits::default()),
        clean(ImageKind::Jpeg, &noise(100, 7), &Limits::default()),
        clean(ImageKind::Png, &png_claiming(100_000, 100_000), &Limits::default()),
    ]
    .into_iter()
    .map(|r| r.expect_err("fails").to_string())
    .collect();
    for m in messages {
        assert!(!m.contains("65000") && !m.contains("100000") && !m.chars().any(|c| c.is_ascii_digit()), "{m}");
    }
}

/// Valid images to mutate: JPEG and PNG of the pattern with EXIF asking for a turn, so the
/// mutations reach the segment walk, the EXIF parse, the decoder and the re-encode.
fn seeds() -> [(ImageKind, Vec<u8>); 2] {
    let jpeg = plain_jpeg();
    let app1 = jpeg_segment(0xE1, &[&b"Exif\0\0"[..], &exif_tiff(Some(6), true)].concat());
    let jpeg = [&jpeg[..2], &app1, &jpeg[2..]].concat();
    let png = png_with_after_ihdr(&plain_png(), &[png_chunk(b"eXIf", &exif_tiff(Some(5), false))]);
    [(ImageKind::Jpeg, jpeg), (ImageKind::Png, png)]
}

/// What must hold of any result: an error, or an image that cleaning leaves unchanged.
fn check(kind: ImageKind, bytes: &[u8]) {
    if let Ok(out) = clean(kind, bytes, &Limits::default()) {
        let again = clean(kind, &out, &Limits::default());
        assert!(again.as_ref().is_ok_and(|a| *a == out), "a cleaned image cleans to itself");
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), png in any::<bool>()) {
        let kind = if png { ImageKind::Png } else { ImageKind::Jpeg };
        check(kind, &bytes);
        // Behind a valid signature, so the walk goes further.
        let prefix: &[u8] = if png { b"\x89PNG\r\n\x1a\n" } else { &[0xFF, 0xD8] };
        check(kind, &[prefix, &bytes].concat());
    }

    #[test]
    fn mutated_images_never_panic(
        which in 0usize..2,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let [jpeg, png] = seeds();
        let (kind, mut bytes) = if which == 0 { jpeg } else { png };
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        check(kind, &bytes);
    }

    /// PNG mutations with the chunk CRCs fixed up, so they reach the decoder rather than stop
    /// at the checksum.
    #[test]
    fn mutated_png_data_never_panics(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let [_, (_, png)] = seeds();
        let (mut chunks, _) = png_chunks(&png);
        let sizes: Vec<usize> = chunks.iter().map(|(_, d)| d.len()).collect();
        let total: usize = sizes.iter().sum();
        for (at, value) in edits {
            // The at-th data byte over all chunks.
            let mut i = at.index(total);
            for (chunk, size) in chunks.iter_mut().zip(&sizes) {
                if i < *size {
                    chunk.1[i] = value;
                    break;
                }
                i -= size;
            }
        }
        let rebuilt: Vec<u8> = chunks.iter().flat_map(|(kind, data)| png_chunk(kind, data)).collect();
        check(ImageKind::Png, &[&b"\x89PNG\r\n\x1a\n"[..], &rebuilt].concat());
    }
}

/// `jpeg` with an Exif APP1 asking for `orientation`, right after SOI.
fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    [&jpeg[..2], &jpeg_segment(0xE1, &[&b"Exif\0\0"[..], &exif_tiff(Some(orientation), false)].concat()), &jpeg[2..]].concat()
}

#[test]
fn a_jpeg_keeps_its_pixels_and_only_a_png_is_turned_under_a_lower_bound() {
    let (w, h) = (pattern().width() as u64, pattern().height() as u64);
    let tight = Limits { max_pixels_turned: w * h - 1, ..Limits::default() };
    // A JPEG to be turned keeps its pixels (and an EXIF holding the orientation alone): no
    // second copy, no encode, so only the general bound applies.
    let kept = clean(ImageKind::Jpeg, &with_orientation(&plain_jpeg(), 6), &tight).expect("kept losslessly");
    assert_eq!(brankas_media::orientation(ImageKind::Jpeg, &kept), Some(6));
    assert_eq!((decode(&kept).width() as u64, decode(&kept).height() as u64), (w, h));
    // A PNG to be turned is decoded, turned and encoded: refused past the lower bound, from
    // its header; within it (the control), turned.
    let png6 = png_with_after_ihdr(&plain_png(), &[png_chunk(b"eXIf", &exif_tiff(Some(6), false))]);
    assert_eq!(brankas_media::orientation(ImageKind::Png, &png6), Some(6), "control: the PNG asks to be turned");
    assert!(matches!(clean(ImageKind::Png, &png6, &tight), Err(MediaError::TooManyPixels)));
    let turned = clean(ImageKind::Png, &png6, &Limits { max_pixels_turned: w * h, ..Limits::default() }).expect("turned");
    assert_eq!((decode(&turned).width() as u64, decode(&turned).height() as u64), (h, w));
}

#[test]
fn many_callers_at_once_all_finish() {
    // More callers than places: they queue, none fails or deadlocks.
    let jpeg = with_orientation(&plain_jpeg(), 6);
    let n = brankas_media::max_concurrent() * 4;
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let j = jpeg.clone();
            std::thread::spawn(move || clean(ImageKind::Jpeg, &j, &Limits::default()).is_ok())
        })
        .collect();
    assert!(handles.into_iter().all(|h| h.join().unwrap()));
}
