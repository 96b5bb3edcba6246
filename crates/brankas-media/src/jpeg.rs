//! JPEG structure: the lossless rewrite that keeps only what decoding needs.
//!
//! A JPEG is a sequence of marker segments (`FF xx`, a 2-byte length, a payload); after a
//! start-of-scan (SOS) segment comes entropy-coded data, in which `FF` is always followed by
//! `00` (a stuffed byte) or a restart marker `D0`–`D7`, so the next other marker ends the scan.
//! The rewrite copies the segments a decoder needs unchanged and drops everything else, so
//! the pixels decode exactly as before. It is a whitelist: a segment is kept because it is
//! known to be needed, never because it is not known to be metadata.

use crate::{MediaError, exif};

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const DQT: u8 = 0xDB;
const DNL: u8 = 0xDC;
const DRI: u8 = 0xDD;
const DHT: u8 = 0xC4;
const DAC: u8 = 0xCC;
const APP0: u8 = 0xE0;
const APP1: u8 = 0xE1;
const APP2: u8 = 0xE2;
const APP14: u8 = 0xEE;
const COM: u8 = 0xFE;

const TRUNCATED: MediaError = MediaError::Malformed("the JPEG is truncated");

/// The result of [`rewrite`].
#[derive(Debug)]
pub(crate) struct Rewritten {
    /// The image without metadata: the same pixels, losslessly.
    pub bytes: Vec<u8>,
    /// The orientation value of the first EXIF segment, if it has one.
    pub orientation: Option<u16>,
    /// Frame dimensions from the SOF header.
    pub width: u32,
    pub height: u32,
}

/// Whether `marker` starts a frame (SOF0–SOF15 but DHT, JPG and DAC, which share the range).
fn is_sof(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, DHT | 0xC8 | DAC)
}

/// Reads the marker at `pos` (after any `FF` fill bytes) and returns it with the position just
/// past it. Stray bytes between segments, which some writers leave and decoders skip, are
/// skipped (and so dropped) too.
fn marker_at(input: &[u8], pos: usize) -> Result<(u8, usize), MediaError> {
    let rest = input.get(pos..).ok_or(TRUNCATED)?;
    let ff = rest.iter().position(|&b| b == 0xFF).ok_or(TRUNCATED)?;
    let code = rest[ff..].iter().position(|&b| b != 0xFF).ok_or(TRUNCATED)?;
    let at = ff + code;
    match rest[at] {
        0x00 => Err(MediaError::Malformed("the JPEG has a stuffed byte outside image data")),
        marker => Ok((marker, pos + at + 1)),
    }
}

/// The payload of the segment whose length field is at `pos`, and the position after it.
fn segment_at(input: &[u8], pos: usize) -> Result<(&[u8], usize), MediaError> {
    let len = input.get(pos..pos + 2).ok_or(TRUNCATED)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if len < 2 {
        return Err(MediaError::Malformed("a JPEG segment has an invalid length"));
    }
    let end = pos + len;
    Ok((input.get(pos + 2..end).ok_or(TRUNCATED)?, end))
}

/// The end of the entropy-coded data starting at `pos`: the position of the `FF` (or first
/// of a run of `FF` fill bytes) that starts the next marker other than a restart marker.
fn scan_end(input: &[u8], mut pos: usize) -> Result<usize, MediaError> {
    loop {
        let ff = pos + input.get(pos..).ok_or(TRUNCATED)?.iter().position(|&b| b == 0xFF).ok_or(TRUNCATED)?;
        let code = ff + input[ff..].iter().position(|&b| b != 0xFF).ok_or(TRUNCATED)?;
        match input[code] {
            0x00 | 0xD0..=0xD7 => pos = code + 1,
            _ => return Ok(ff),
        }
    }
}

fn put_segment(out: &mut Vec<u8>, marker: u8, payload: &[u8]) {
    // Payloads come from segments of the input or are built here, so the length fits.
    let len = u16::try_from(payload.len() + 2).unwrap_or(u16::MAX);
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A JFIF APP0 payload with its embedded thumbnail removed (a thumbnail shows the picture
/// as first taken, even after a crop); `None` for any other APP0 (JFXX thumbnails, AVI1…).
fn jfif_without_thumbnail(payload: &[u8]) -> Option<Vec<u8>> {
    // "JFIF\0", version (2), density units (1), X and Y density (2 + 2), thumbnail size (2).
    let head = payload.get(..12).filter(|p| p.starts_with(b"JFIF\0"))?;
    let mut jfif = head.to_vec();
    jfif.extend_from_slice(&[0, 0]);
    Some(jfif)
}

/// Rewrites `input` keeping SOI; JFIF APP0 (without thumbnail); APP2 ICC profiles; the Adobe
/// APP14 (it says how to convert colours); the tables (DQT, DHT, DAC, DRI); the frame header;
/// the scans with their data; EOI. Dropped: APP1 (EXIF, XMP), other APP2 (MPF, which embeds
/// further JPEGs with their own EXIF), APP3–APP13 (APP13 holds IPTC), APP15, COM, and anything
/// after EOI. The frame size is checked against `max_pixels` as soon as it is read.
/// A rewritten JPEG (see [`rewrite`]) with one Exif APP1 segment holding `tiff`, placed after
/// SOI and the JFIF APP0 segment if there is one, as EXIF writers place it. `tiff` is the
/// server's own (the orientation alone), a few dozen bytes.
pub(crate) fn with_exif(rewritten: &[u8], tiff: &[u8]) -> Vec<u8> {
    let mut at = 2;
    if rewritten.get(2..4) == Some(&[0xFF, 0xE0]) {
        let len = rewritten.get(4..6).map_or(0, |l| usize::from(u16::from_be_bytes([l[0], l[1]])));
        at = (4 + len).min(rewritten.len());
    }
    let payload_len = 2 + 6 + tiff.len();
    let mut out = Vec::with_capacity(rewritten.len() + payload_len + 2);
    out.extend_from_slice(&rewritten[..at]);
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&u16::try_from(payload_len).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(b"Exif\0\0");
    out.extend_from_slice(tiff);
    out.extend_from_slice(&rewritten[at..]);
    out
}

pub(crate) fn rewrite(input: &[u8], max_pixels: u64) -> Result<Rewritten, MediaError> {
    if !input.starts_with(&[0xFF, SOI]) {
        return Err(MediaError::Malformed("not a JPEG: no start-of-image marker"));
    }
    let mut out = Vec::with_capacity(input.len());
    out.extend_from_slice(&[0xFF, SOI]);
    let mut pos = 2;
    let mut frame = None;
    let mut scanned = false;
    let mut exif_seen = false;
    let mut orientation = None;
    loop {
        let (marker, at) = marker_at(input, pos)?;
        match marker {
            EOI => {
                let (width, height) = frame.filter(|_| scanned).ok_or(MediaError::Malformed("the JPEG has no image data"))?;
                out.extend_from_slice(&[0xFF, EOI]);
                return Ok(Rewritten { bytes: out, orientation, width, height });
            }
            SOI => return Err(MediaError::Malformed("the JPEG has a second start-of-image marker")),
            0x01 | 0xD0..=0xD7 => return Err(MediaError::Malformed("the JPEG has a stray marker outside image data")),
            _ => {}
        }
        let (payload, next) = segment_at(input, at)?;
        pos = next;
        match marker {
            APP0 => {
                if let Some(jfif) = jfif_without_thumbnail(payload) {
                    put_segment(&mut out, APP0, &jfif);
                }
            }
            APP1 => {
                // Only the first EXIF segment before the image data counts, as for viewers.
                if payload.starts_with(b"Exif\0\0") && !exif_seen && !scanned {
                    exif_seen = true;
                    orientation = exif::orientation(exif::tiff_of(payload));
                }
            }
            APP2 if payload.starts_with(b"ICC_PROFILE\0") => put_segment(&mut out, APP2, payload),
            APP14 if payload.starts_with(b"Adobe") => {
                // "Adobe", version, two flag words and the colour transform: 12 bytes; anything
                // beyond is not needed and not kept.
                if let Some(adobe) = payload.get(..12) {
                    put_segment(&mut out, APP14, adobe);
                }
            }
            0xE0..=0xEF | COM => {}
            DQT | DHT | DAC | DRI => put_segment(&mut out, marker, payload),
            m if is_sof(m) => {
                if frame.is_some() {
                    return Err(MediaError::Unsupported("a JPEG with more than one frame"));
                }
                let header = payload.get(..5).ok_or(MediaError::Malformed("a JPEG frame header is too short"))?;
                let height = u32::from(u16::from_be_bytes([header[1], header[2]]));
                let width = u32::from(u16::from_be_bytes([header[3], header[4]]));
                if width == 0 {
                    return Err(MediaError::Malformed("the JPEG frame has no width"));
                }
                if height == 0 {
                    return Err(MediaError::Unsupported("a JPEG whose height is given after the image data (DNL)"));
                }
                if u64::from(width) * u64::from(height) > max_pixels {
                    return Err(MediaError::TooManyPixels);
                }
                frame = Some((width, height));
                put_segment(&mut out, marker, payload);
            }
            SOS => {
                if frame.is_none() {
                    return Err(MediaError::Malformed("the JPEG has image data before its frame header"));
                }
                put_segment(&mut out, SOS, payload);
                let end = scan_end(input, next)?;
                out.extend_from_slice(&input[next..end]);
                pos = end;
                scanned = true;
            }
            DNL | 0xDE | 0xDF => return Err(MediaError::Unsupported("a hierarchical JPEG or one using DNL")),
            _ => return Err(MediaError::Unsupported("a JPEG with a reserved or unknown marker")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(marker: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_segment(&mut v, marker, payload);
        v
    }

    /// The skeleton of a JPEG: no decoder would accept its tables, but the structure is
    /// what the rewrite walks.
    fn skeleton(extra_before_frame: &[u8], scan: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, SOI];
        v.extend(seg(APP0, b"JFIF\0\x01\x02\x00\x00\x01\x00\x01\x00\x00"));
        v.extend_from_slice(extra_before_frame);
        v.extend(seg(DQT, &[0; 65]));
        v.extend(seg(DRI, &[0, 4]));
        v.extend(seg(0xC0, &[8, 0, 16, 0, 32, 1, 1, 0x11, 0]));
        v.extend(seg(DHT, &[0; 17]));
        v.extend(seg(SOS, &[1, 1, 0, 0, 63, 0]));
        v.extend_from_slice(scan);
        v.extend_from_slice(&[0xFF, EOI]);
        v.extend_from_slice(tail);
        v
    }

    #[test]
    fn scan_data_with_stuffing_restarts_and_fill_is_kept_whole() {
        let scan = [0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xFF, 0x00, 0x78];
        let input = skeleton(&[], &scan, &[]);
        let r = rewrite(&input, u64::MAX).expect("valid structure");
        assert_eq!(r.bytes, input, "nothing to drop");
        assert_eq!((r.width, r.height, r.orientation), (32, 16, None));
    }

    #[test]
    fn fill_bytes_before_a_marker_are_dropped() {
        let input = skeleton(&[], &[0x12, 0xFF, 0xFF, 0xFF], &[]);
        let r = rewrite(&input, u64::MAX).expect("valid structure");
        assert_eq!(r.bytes, skeleton(&[], &[0x12], &[]));
    }

    #[test]
    fn metadata_segments_and_trailer_are_dropped() {
        let mut extra = seg(APP1, b"Exif\0\0MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x03\0\0\0\0\0\0");
        extra.extend(seg(APP1, b"http://ns.adobe.com/xap/1.0/\0<x/>"));
        extra.extend(seg(APP2, b"MPF\0rest"));
        extra.extend(seg(APP2, b"ICC_PROFILE\0\x01\x01profile"));
        extra.extend(seg(0xED, b"Photoshop 3.0\0"));
        extra.extend(seg(APP14, b"Adobe\0\x64\0\0\0\0\x01extra"));
        extra.extend(seg(COM, b"comment"));
        extra.extend(seg(0xEF, b"app15"));
        extra.extend(seg(APP0, b"JFXX\0\x10thumb"));
        let input = skeleton(&extra, &[1, 2, 3], b"trailing\xFF\xD8");
        let r = rewrite(&input, u64::MAX).expect("valid structure");
        let mut kept = seg(APP2, b"ICC_PROFILE\0\x01\x01profile");
        kept.extend(seg(APP14, b"Adobe\0\x64\0\0\0\0\x01"));
        assert_eq!(r.bytes, skeleton(&kept, &[1, 2, 3], &[]));
        assert_eq!(r.orientation, Some(3));
    }

    #[test]
    fn only_the_first_exif_before_the_image_data_counts() {
        let exif = |o: u8| seg(APP1, &[&b"Exif\0\0MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0"[..], &[o, 0, 0, 0, 0, 0, 0]].concat());
        let two = [exif(6), exif(8)].concat();
        assert_eq!(rewrite(&skeleton(&two, &[1], &[]), u64::MAX).expect("valid").orientation, Some(6));
        let no_orientation = seg(APP1, b"Exif\0\0MM\0*\0\0\0\x08\0\0\0\0\0\0");
        let later = [no_orientation, exif(8)].concat();
        assert_eq!(rewrite(&skeleton(&later, &[1], &[]), u64::MAX).expect("valid").orientation, None);
    }

    #[test]
    fn jfif_thumbnail_is_removed() {
        let mut input = vec![0xFF, SOI];
        input.extend(seg(APP0, b"JFIF\0\x01\x02\x00\x00\x01\x00\x01\x01\x01\xAA\xBB\xCC"));
        input.extend_from_slice(&skeleton(&[], &[1], &[])[2 + 18..]);
        let r = rewrite(&input, u64::MAX).expect("valid structure");
        assert_eq!(r.bytes, skeleton(&[], &[1], &[]));
    }

    #[test]
    fn frame_size_is_checked_against_the_limit() {
        let input = skeleton(&[], &[1], &[]);
        assert!(rewrite(&input, 512).is_ok());
        assert!(matches!(rewrite(&input, 511), Err(MediaError::TooManyPixels)));
    }

    #[test]
    fn truncation_anywhere_is_an_error() {
        let input = skeleton(&[], &[1, 2, 3, 0xFF, 0x00, 4], &[]);
        for cut in 0..input.len() {
            assert!(rewrite(&input[..cut], u64::MAX).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn structural_errors() {
        let no_scan = [&[0xFF, SOI][..], &seg(0xC0, &[8, 0, 1, 0, 1, 1, 1, 0x11, 0]), &[0xFF, EOI]].concat();
        assert!(rewrite(&no_scan, u64::MAX).is_err());
        let scan_first = [&[0xFF, SOI][..], &seg(SOS, &[1, 1, 0, 0, 63, 0]), &[0xFF, EOI]].concat();
        assert!(rewrite(&scan_first, u64::MAX).is_err());
        let two_frames = skeleton(&seg(0xC0, &[8, 0, 1, 0, 1, 1, 1, 0x11, 0]), &[1], &[]);
        assert!(matches!(rewrite(&two_frames, u64::MAX), Err(MediaError::Unsupported(_))));
        let bad_len = [&[0xFF, SOI, 0xFF, DQT, 0, 1][..], &[0; 8]].concat();
        assert!(rewrite(&bad_len, u64::MAX).is_err());
        assert!(rewrite(b"\x89PNG", u64::MAX).is_err());
    }
}
