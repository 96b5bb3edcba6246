//! PNG structure: the lossless chunk rewrite that keeps only what rendering needs.
//!
//! A PNG is an 8-byte signature and chunks (4-byte length, 4-byte type, data, CRC-32 of type
//! and data) from IHDR to IEND. Kept chunks are copied unchanged (their CRC checked, so the
//! output is well-formed); the rest is dropped. A whitelist, as for JPEG.

use crate::{MediaError, exif};

pub(crate) const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

const TRUNCATED: MediaError = MediaError::Malformed("the PNG is truncated");

/// Chunks describing how to show the colours, copied into a re-encoded image too: they do not
/// depend on the pixel layout the encoder picks. (`cICP` is not in the brief's list but only
/// says how to interpret colours, as `sRGB` does; dropping it would change HDR images.)
pub(crate) const COLOUR: [&[u8; 4]; 5] = [b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"cICP"];
/// Everything else kept in a lossless rewrite: pixels, palette, transparency, significant
/// bits, physical pixel size, background, and the APNG animation chunks.
const LAYOUT: [&[u8; 4]; 11] = [b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"sBIT", b"pHYs", b"bKGD", b"acTL", b"fcTL", b"fdAT"];

/// One chunk of a PNG.
struct Chunk<'a> {
    pub kind: [u8; 4],
    pub data: &'a [u8],
    /// The whole chunk: length, type, data and CRC.
    pub raw: &'a [u8],
}

impl Chunk<'_> {
    fn crc_ok(&self) -> bool {
        // The CRC covers type and data: `raw` without the length in front and the CRC behind.
        let Some((rest, stored)) = self.raw.split_last_chunk::<4>() else { return false };
        rest.get(4..).is_some_and(|covered| crc32(covered) == u32::from_be_bytes(*stored))
    }
}

/// The chunk starting at `pos` and the position after it.
fn chunk_at(input: &[u8], pos: usize) -> Result<(Chunk<'_>, usize), MediaError> {
    let head = input.get(pos..pos + 8).ok_or(TRUNCATED)?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let kind = [head[4], head[5], head[6], head[7]];
    if len > i32::MAX as u32 {
        return Err(MediaError::Malformed("a PNG chunk has an invalid length"));
    }
    if !kind.iter().all(u8::is_ascii_alphabetic) {
        return Err(MediaError::Malformed("a PNG chunk has an invalid type"));
    }
    let len = usize::try_from(len).map_err(|_| TRUNCATED)?;
    let end = pos.checked_add(12).and_then(|e| e.checked_add(len)).ok_or(TRUNCATED)?;
    let raw = input.get(pos..end).ok_or(TRUNCATED)?;
    let data = raw.get(8..8 + len).ok_or(TRUNCATED)?;
    Ok((Chunk { kind, data, raw }, end))
}

/// The result of [`rewrite`].
#[derive(Debug)]
pub(crate) struct Rewritten {
    pub bytes: Vec<u8>,
    /// The orientation value of the first eXIf chunk before the image data, if it has one.
    pub orientation: Option<u16>,
    pub width: u32,
    pub height: u32,
    /// Whether it is an APNG (has acTL).
    pub animated: bool,
}

/// Rewrites `input` keeping only the chunks of [`COLOUR`] and [`LAYOUT`]: eXIf, tEXt, zTXt,
/// iTXt, tIME and every other ancillary chunk are dropped, and anything after IEND. IHDR's
/// size is checked against `max_pixels` as soon as it is read. An unknown critical chunk is
/// an error: it could be needed, and no decoder here understands it.
pub(crate) fn rewrite(input: &[u8], max_pixels: u64) -> Result<Rewritten, MediaError> {
    if !input.starts_with(&SIGNATURE) {
        return Err(MediaError::Malformed("not a PNG: no signature"));
    }
    let mut out = Vec::with_capacity(input.len());
    out.extend_from_slice(&SIGNATURE);
    let mut pos = SIGNATURE.len();
    let mut size = None;
    let mut orientation = None;
    let mut exif_seen = false;
    let mut image_data = false;
    let mut animated = false;
    loop {
        let (chunk, next) = chunk_at(input, pos)?;
        pos = next;
        let kind = &chunk.kind;
        if (kind == b"IHDR") != size.is_none() {
            return Err(MediaError::Malformed("the PNG header chunk is missing or misplaced"));
        }
        if kind == b"eXIf" && !exif_seen && !image_data {
            exif_seen = true;
            orientation = exif::orientation(exif::tiff_of(chunk.data));
        }
        if !COLOUR.contains(&kind) && !LAYOUT.contains(&kind) {
            // Bit 5 of the first letter (lower case) marks an ancillary chunk, safe to drop.
            if kind[0].is_ascii_uppercase() {
                return Err(MediaError::Unsupported("a PNG with an unknown critical chunk"));
            }
            continue;
        }
        if !chunk.crc_ok() {
            return Err(MediaError::Malformed("a PNG chunk fails its checksum"));
        }
        match kind {
            b"IHDR" => {
                let d = chunk.data;
                if d.len() != 13 {
                    return Err(MediaError::Malformed("the PNG header chunk has the wrong length"));
                }
                let width = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
                let height = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
                if width == 0 || height == 0 {
                    return Err(MediaError::Malformed("the PNG has no pixels"));
                }
                if u64::from(width) * u64::from(height) > max_pixels {
                    return Err(MediaError::TooManyPixels);
                }
                size = Some((width, height));
            }
            b"IDAT" => image_data = true,
            b"acTL" => animated = true,
            _ => {}
        }
        out.extend_from_slice(chunk.raw);
        if kind == b"IEND" {
            let (width, height) = size.ok_or(MediaError::Malformed("the PNG header chunk is missing or misplaced"))?;
            return Ok(Rewritten { bytes: out, orientation, width, height, animated });
        }
    }
}

/// The chunks of a PNG made by [`rewrite`] or by the encoder, IHDR to IEND.
fn chunks(input: &[u8]) -> Result<Vec<Chunk<'_>>, MediaError> {
    if !input.starts_with(&SIGNATURE) {
        return Err(MediaError::Malformed("not a PNG: no signature"));
    }
    let mut pos = SIGNATURE.len();
    let mut all = Vec::new();
    loop {
        let (chunk, next) = chunk_at(input, pos)?;
        pos = next;
        let end = &chunk.kind == b"IEND";
        all.push(chunk);
        if end {
            return Ok(all);
        }
    }
}

/// `encoded` (a fresh encoder output) with the [`COLOUR`] chunks of `source` (a rewritten
/// PNG) right after its IHDR, where the specification wants them (before PLTE and IDAT),
/// in place of any the encoder wrote.
pub(crate) fn with_colour_of(encoded: &[u8], source: &[u8]) -> Result<Vec<u8>, MediaError> {
    let source = chunks(source)?;
    let colour: Vec<&Chunk<'_>> = source.iter().filter(|c| COLOUR.contains(&&c.kind)).collect();
    let mut out = SIGNATURE.to_vec();
    for chunk in chunks(encoded)? {
        if COLOUR.contains(&&chunk.kind) {
            continue;
        }
        out.extend_from_slice(chunk.raw);
        if &chunk.kind == b"IHDR" {
            for c in &colour {
                out.extend_from_slice(c.raw);
            }
        }
    }
    Ok(out)
}

/// CRC-32 (ISO-HDLC, as in PNG) by the usual byte-wise table.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut n = 0;
        while n < 256 {
            let mut c = n as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[n] = c;
            n += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |c, &b| TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut v = u32::try_from(data.len()).expect("small").to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(data);
        v.extend_from_slice(&crc32(&v[4..]).to_be_bytes());
        v
    }

    fn ihdr(width: u32, height: u32) -> Vec<u8> {
        let mut d = width.to_be_bytes().to_vec();
        d.extend_from_slice(&height.to_be_bytes());
        d.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(b"IHDR", &d)
    }

    fn png(chunks: &[Vec<u8>]) -> Vec<u8> {
        [&SIGNATURE[..], &chunks.concat()].concat()
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }

    #[test]
    fn keeps_layout_and_colour_drops_the_rest() {
        let input = png(&[
            ihdr(3, 2),
            chunk(b"gAMA", &[0, 0, 0xB1, 0x8F]),
            chunk(b"tEXt", b"Comment\0hello"),
            chunk(b"eXIf", b"MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x08\0\0\0\0\0\0"),
            chunk(b"pHYs", &[0, 0, 0x0B, 0x13, 0, 0, 0x0B, 0x13, 1]),
            chunk(b"IDAT", &[1, 2, 3]),
            chunk(b"tIME", &[7, 0xE8, 1, 1, 0, 0, 0]),
            chunk(b"IEND", &[]),
        ]);
        let trailing = [&input[..], b"after the end"].concat();
        let r = rewrite(&trailing, u64::MAX).expect("valid structure");
        let expected =
            png(&[ihdr(3, 2), chunk(b"gAMA", &[0, 0, 0xB1, 0x8F]), chunk(b"pHYs", &[0, 0, 0x0B, 0x13, 0, 0, 0x0B, 0x13, 1]), chunk(b"IDAT", &[1, 2, 3]), chunk(b"IEND", &[])]);
        assert_eq!(r.bytes, expected);
        assert_eq!((r.width, r.height, r.orientation, r.animated), (3, 2, Some(8), false));
    }

    #[test]
    fn exif_after_the_image_data_is_not_read() {
        let input = png(&[ihdr(3, 2), chunk(b"IDAT", &[1]), chunk(b"eXIf", b"MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x08\0\0\0\0\0\0"), chunk(b"IEND", &[])]);
        assert_eq!(rewrite(&input, u64::MAX).expect("valid structure").orientation, None);
    }

    #[test]
    fn errors() {
        let ok = png(&[ihdr(3, 2), chunk(b"IDAT", &[1]), chunk(b"IEND", &[])]);
        assert!(rewrite(&ok, 6).is_ok());
        assert!(matches!(rewrite(&ok, 5), Err(MediaError::TooManyPixels)));
        for cut in 0..ok.len() {
            assert!(rewrite(&ok[..cut], u64::MAX).is_err(), "cut at {cut}");
        }
        let mut bad_crc = ok.clone();
        let idat_crc = 8 + 25 + 8 + 1;
        bad_crc[idat_crc] ^= 1;
        assert!(rewrite(&bad_crc, u64::MAX).is_err());
        let no_header = png(&[chunk(b"IDAT", &[1]), chunk(b"IEND", &[])]);
        assert!(rewrite(&no_header, u64::MAX).is_err());
        let two_headers = png(&[ihdr(3, 2), ihdr(3, 2), chunk(b"IDAT", &[1]), chunk(b"IEND", &[])]);
        assert!(rewrite(&two_headers, u64::MAX).is_err());
        let unknown_critical = png(&[ihdr(3, 2), chunk(b"CgBI", &[1]), chunk(b"IDAT", &[1]), chunk(b"IEND", &[])]);
        assert!(matches!(rewrite(&unknown_critical, u64::MAX), Err(MediaError::Unsupported(_))));
        assert!(rewrite(&png(&[ihdr(0, 2), chunk(b"IEND", &[])]), u64::MAX).is_err());
    }
}
