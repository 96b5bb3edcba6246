//! Helpers of the integration tests: test images, EXIF built by hand, and walkers of JPEG
//! and PNG structure written independently of the crate's own (so a bug there cannot hide
//! itself here).
#![allow(dead_code)] // Each test file uses its own part of this module.

use std::io::Cursor;
use std::path::PathBuf;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

/// Width and height of the test pattern: not square, so a rotation shows in the dimensions,
/// and made of 16 × 16 blocks so JPEG's chroma subsampling keeps each quadrant's colour.
pub const W: u32 = 64;
pub const H: u32 = 32;

/// Quadrant colours of the pattern: top left, top right, bottom left, bottom right. Each of
/// the eight EXIF orientations puts them in a different arrangement.
pub const QUADRANTS: [[u8; 3]; 4] = [[230, 20, 20], [20, 200, 20], [20, 20, 230], [240, 240, 240]];

/// The pattern's colour at (x, y) of a `W` × `H` image.
pub fn pattern_at(x: u32, y: u32) -> [u8; 3] {
    let right = usize::from(x >= W / 2);
    let bottom = usize::from(y >= H / 2);
    QUADRANTS[bottom * 2 + right]
}

pub fn pattern() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(W, H, |x, y| Rgb(pattern_at(x, y))))
}

/// The stored pixel shown at (x, y) of the displayed image, for a stored image of `w` × `h`,
/// straight from the EXIF definitions of where the stored 0th row and 0th column go.
pub fn source_of(orientation: u16, x: u32, y: u32, w: u32, h: u32) -> (u32, u32) {
    match orientation {
        1 => (x, y),
        2 => (w - 1 - x, y),         // top, right: mirrored
        3 => (w - 1 - x, h - 1 - y), // bottom, right: turned half round
        4 => (x, h - 1 - y),         // bottom, left: upside down mirrored
        5 => (y, x),                 // left, top: transposed
        6 => (y, h - 1 - x),         // right, top: turned a quarter clockwise
        7 => (w - 1 - y, h - 1 - x), // right, bottom: transverse
        8 => (w - 1 - y, x),         // left, bottom: turned a quarter anticlockwise
        _ => panic!("no such orientation {orientation}"),
    }
}

/// Checks that `shown` is the pattern as EXIF `orientation` displays it, sampling the centre
/// of each quadrant, within `tolerance` per channel (JPEG is lossy).
pub fn assert_pattern_oriented(shown: &DynamicImage, orientation: u16, tolerance: u8) {
    let turned = orientation >= 5;
    let expected_size = if turned { (H, W) } else { (W, H) };
    assert_eq!((shown.width(), shown.height()), expected_size, "dimensions for orientation {orientation}");
    let rgb = shown.to_rgb8();
    let (sw, sh) = expected_size;
    for (qx, qy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        let (x, y) = (sw / 4 + qx * sw / 2, sh / 4 + qy * sh / 2);
        let (sx, sy) = source_of(orientation, x, y, W, H);
        let want = pattern_at(sx, sy);
        let got = rgb.get_pixel(x, y).0;
        let close = want.iter().zip(got).all(|(&a, b)| a.abs_diff(b) <= tolerance);
        assert!(close, "orientation {orientation}: pixel ({x}, {y}) is {got:?}, expected {want:?}");
    }
}

pub fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), format).expect("encode test image");
    out
}

pub fn decode(bytes: &[u8]) -> DynamicImage {
    image::load_from_memory(bytes).expect("decode")
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Marker strings planted in test metadata: none may survive cleaning.
pub const SECRET: &[u8] = b"SECRET";

/// GPS latitude of the test EXIF, as three RATIONALs (degrees, minutes, seconds): distinctive
/// numerators so their bytes can be looked for in the output.
pub const LATITUDE: [(u32, u32); 3] = [(0x0BAD_5EC7, 1), (0x00C0_FFEE, 1), (0x0DEC_1DE0, 100)];
pub const LONGITUDE: [(u32, u32); 3] = [(0x0106_1E55, 1), (0x0C0D_E123, 1), (0x0BEE_F000, 100)];

/// A TIFF structure as EXIF holds it: IFD0 with an ImageDescription, the orientation (if
/// any) and a GPS IFD pointer; the GPS IFD with latitude and longitude.
pub fn exif_tiff(orientation: Option<u16>, big_endian: bool) -> Vec<u8> {
    let u16b = |v: u16| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
    let u32b = |v: u32| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
    let entry = |t: &mut Vec<u8>, tag: u16, kind: u16, count: u32, value: [u8; 4]| {
        t.extend_from_slice(&u16b(tag));
        t.extend_from_slice(&u16b(kind));
        t.extend_from_slice(&u32b(count));
        t.extend_from_slice(&value);
    };
    let description = b"SECRET-EXIF-DESCRIPTION\0";
    let ifd0_entries: u16 = if orientation.is_some() { 3 } else { 2 };
    let ifd0_len = 2 + 12 * u32::from(ifd0_entries) + 4;
    let description_at = 8 + ifd0_len;
    let gps_at = description_at + description.len() as u32;
    let gps_len = 2 + 12 * 4 + 4;
    let latitude_at = gps_at + gps_len;
    let longitude_at = latitude_at + 24;

    let mut t = if big_endian { b"MM\0*".to_vec() } else { b"II*\0".to_vec() };
    t.extend_from_slice(&u32b(8));
    t.extend_from_slice(&u16b(ifd0_entries));
    entry(&mut t, 0x010E, 2, description.len() as u32, u32b(description_at));
    if let Some(o) = orientation {
        let v = u16b(o);
        entry(&mut t, 0x0112, 3, 1, [v[0], v[1], 0, 0]);
    }
    entry(&mut t, 0x8825, 4, 1, u32b(gps_at));
    t.extend_from_slice(&u32b(0));
    t.extend_from_slice(description);
    assert_eq!(t.len() as u32, gps_at);
    t.extend_from_slice(&u16b(4));
    entry(&mut t, 0x0001, 2, 2, *b"N\0\0\0");
    entry(&mut t, 0x0002, 5, 3, u32b(latitude_at));
    entry(&mut t, 0x0003, 2, 2, *b"E\0\0\0");
    entry(&mut t, 0x0004, 5, 3, u32b(longitude_at));
    t.extend_from_slice(&u32b(0));
    for (n, d) in LATITUDE.iter().chain(&LONGITUDE) {
        t.extend_from_slice(&u32b(*n));
        t.extend_from_slice(&u32b(*d));
    }
    t
}

/// The bytes of the test latitude as stored in a TIFF of that byte order.
pub fn latitude_bytes(big_endian: bool) -> Vec<u8> {
    let u32b = |v: u32| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
    LATITUDE.iter().flat_map(|(n, d)| [u32b(*n), u32b(*d)]).flatten().collect()
}

/// Tags of IFD0 of a TIFF structure, and the tags of the GPS IFD if IFD0 points to one.
pub fn exif_tags(tiff: &[u8]) -> (Vec<u16>, Vec<u16>) {
    let be = match &tiff[..4] {
        b"MM\0*" => true,
        b"II*\0" => false,
        other => panic!("not a TIFF header: {other:?}"),
    };
    let rd16 = |at: usize| {
        let b = [tiff[at], tiff[at + 1]];
        if be { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) }
    };
    let rd32 = |at: usize| {
        let b = [tiff[at], tiff[at + 1], tiff[at + 2], tiff[at + 3]];
        if be { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
    };
    let ifd = |at: usize| -> Vec<(u16, u32)> { (0..usize::from(rd16(at))).map(|i| (rd16(at + 2 + 12 * i), rd32(at + 2 + 12 * i + 8))).collect() };
    let ifd0 = ifd(rd32(4) as usize);
    let gps = ifd0.iter().find(|(tag, _)| *tag == 0x8825).map(|&(_, at)| ifd(at as usize).iter().map(|e| e.0).collect()).unwrap_or_default();
    (ifd0.iter().map(|e| e.0).collect(), gps)
}

/// A JPEG segment: marker and payload (without the length).
pub fn jpeg_segment(marker: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0xFF, marker];
    v.extend_from_slice(&u16::try_from(payload.len() + 2).expect("segment fits").to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// The marker segments of a JPEG in order, with their payloads (the entropy-coded data of
/// scans skipped), and the position just after EOI.
pub fn jpeg_segments(jpeg: &[u8]) -> (Vec<(u8, Vec<u8>)>, usize) {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "starts with SOI");
    let mut segments = Vec::new();
    let mut pos = 2;
    loop {
        assert_eq!(jpeg[pos], 0xFF, "marker expected at {pos}");
        while jpeg[pos + 1] == 0xFF {
            pos += 1;
        }
        let marker = jpeg[pos + 1];
        if marker == 0xD9 {
            segments.push((marker, Vec::new()));
            return (segments, pos + 2);
        }
        let len = usize::from(u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]));
        segments.push((marker, jpeg[pos + 4..pos + 2 + len].to_vec()));
        pos += 2 + len;
        if marker == 0xDA {
            // Entropy-coded data: FF is followed by 00 (stuffing) or a restart marker.
            while !(jpeg[pos] == 0xFF && jpeg[pos + 1] != 0 && !(0xD0..=0xD7).contains(&jpeg[pos + 1])) {
                pos += 1;
            }
        }
    }
}

/// PNG's CRC-32.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut v = u32::try_from(data.len()).expect("chunk fits").to_be_bytes().to_vec();
    v.extend_from_slice(kind);
    v.extend_from_slice(data);
    v.extend_from_slice(&crc32(&v[4..]).to_be_bytes());
    v
}

/// A PNG chunk: type and data.
pub type PngChunk = ([u8; 4], Vec<u8>);

/// The chunks of a PNG in order, and the position just after IEND.
pub fn png_chunks(png: &[u8]) -> (Vec<PngChunk>, usize) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let mut chunks = Vec::new();
    let mut pos = 8;
    loop {
        let len = u32::from_be_bytes(png[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let kind: [u8; 4] = png[pos + 4..pos + 8].try_into().expect("4 bytes");
        let data = png[pos + 8..pos + 8 + len].to_vec();
        let crc = u32::from_be_bytes(png[pos + 8 + len..pos + 12 + len].try_into().expect("4 bytes"));
        assert_eq!(crc, crc32(&png[pos + 4..pos + 8 + len]), "CRC of {}", String::from_utf8_lossy(&kind));
        pos += 12 + len;
        chunks.push((kind, data));
        if &kind == b"IEND" {
            return (chunks, pos);
        }
    }
}

/// `png` with `extra` chunks inserted right after IHDR.
pub fn png_with_after_ihdr(png: &[u8], extra: &[Vec<u8>]) -> Vec<u8> {
    let ihdr_end = 8 + 25;
    assert_eq!(&png[12..16], b"IHDR");
    [&png[..ihdr_end], &extra.concat(), &png[ihdr_end..]].concat()
}

/// The shared corpus: `BRANKAS_CORPUS`, or `shared/corpus` beside the repository.
pub fn corpus() -> PathBuf {
    let dir = std::env::var_os("BRANKAS_CORPUS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"));
    assert!(dir.is_dir(), "the shared corpus is not at {}: set BRANKAS_CORPUS to its directory", dir.display());
    dir
}
