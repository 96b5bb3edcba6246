//! Frames and rendered images for viewers (WADO-RS `frames`, `rendered`, `thumbnail`;
//! PS3.18 §9.5, §9.7).
//!
//! A frame is served as stored ([`stored_frame`]: the native samples, or the compressed
//! bitstream of its fragments) or decoded to native little-endian samples ([`frame`]).
//! Decoded here: uncompressed pixel data, RLE Lossless (PS3.5 Annex G) and 8-bit JPEG
//! (baseline and extended, through the `image` crate's decoder, bounded to the declared
//! size). JPEG 2000, JPEG-LS, lossless and 12-bit JPEG are served as stored only: rendering
//! them is [`RenderError::Unsupported`], and the caller answers 406.
//!
//! Rendered layouts: 8- or 16-bit monochrome (MONOCHROME1 inverted, Modality LUT from
//! RescaleSlope/Intercept, the first VOI window of the instance or else the frame's range)
//! and 8-bit colour (RGB interleaved or planar; YBR as a JPEG decoder returns it, RGB).

use dicom_core::Tag;
use dicom_core::value::{PrimitiveValue, Value as DicomValue};
use dicom_dictionary_std::tags;

use crate::Parsed;

/// Why a frame cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A pixel coding or layout this renderer does not decode.
    #[error("{0}")]
    Unsupported(&'static str),
    /// No such frame (frames are numbered from 1).
    #[error("no such frame")]
    NoFrame,
    /// The instance has no (or inconsistent) pixel data.
    #[error("the instance has no usable pixel data")]
    NoPixels,
}

/// One frame as 8-bit samples ready for an image encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image8 {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// `true`: RGB, 3 bytes per pixel; `false`: one grey byte per pixel.
    pub rgb: bool,
    /// Row by row, top to bottom.
    pub pixels: Vec<u8>,
}

const NATIVE: &[&str] = &["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"];
/// Explicit VR Little Endian: what a decoded frame is.
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const RLE: &str = "1.2.840.10008.1.2.5";
/// JPEG baseline (process 1) and extended (processes 2 and 4): decoded when 8-bit.
const JPEG_LOSSY: &[&str] = &["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"];

/// How the pixel data is coded, as far as this module decodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    Native,
    Rle,
    Jpeg,
}

/// The media type of a frame stored in transfer syntax `ts` (PS3.18 Table 8.7.3-2): what a
/// part of a `frames` answer that serves it as stored is labelled with.
pub fn frame_media_type(ts: &str) -> &'static str {
    match ts {
        "1.2.840.10008.1.2.4.50" | "1.2.840.10008.1.2.4.51" | "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70" => "image/jpeg",
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => "image/jls",
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => "image/jp2",
        "1.2.840.10008.1.2.4.92" | "1.2.840.10008.1.2.4.93" => "image/jpx",
        RLE => "image/dicom-rle",
        _ => "application/octet-stream",
    }
}

/// Whether the instance's pixel data is stored uncompressed.
pub fn is_native(p: &Parsed) -> bool {
    NATIVE.contains(&p.instance.transfer_syntax.as_str())
}

struct Layout {
    rows: usize,
    columns: usize,
    samples: usize,
    bits: usize,
    signed: bool,
    planar: bool,
    photometric: String,
    frames: usize,
    coding: Coding,
}

fn ushort(p: &Parsed, tag: Tag) -> Option<u16> {
    let DicomValue::Primitive(v) = p.dataset().get(tag)?.value() else { return None };
    v.to_int::<u16>().ok()
}

fn float(p: &Parsed, tag: Tag) -> Option<f64> {
    let DicomValue::Primitive(v) = p.dataset().get(tag)?.value() else { return None };
    match v {
        PrimitiveValue::Str(_) | PrimitiveValue::Strs(_) => v.to_str().split('\\').next()?.trim().parse().ok(),
        _ => v.to_float64().ok(),
    }
}

/// The frame count and size every path checks (a frame of at most 64 Mi pixels).
fn frames_and_size(p: &Parsed) -> Result<(usize, usize, usize), RenderError> {
    let rows = ushort(p, tags::ROWS).ok_or(RenderError::NoPixels)? as usize;
    let columns = ushort(p, tags::COLUMNS).ok_or(RenderError::NoPixels)? as usize;
    let frames = crate::instance::text(p.dataset(), tags::NUMBER_OF_FRAMES).and_then(|n| n.trim().parse().ok()).unwrap_or(1usize);
    if rows == 0 || columns == 0 || frames == 0 || rows * columns > 64 << 20 {
        return Err(RenderError::NoPixels);
    }
    Ok((rows, columns, frames))
}

/// The layout of the frames as [`frame`] returns them (decoded).
fn layout(p: &Parsed) -> Result<Layout, RenderError> {
    let ts = p.instance.transfer_syntax.as_str();
    let coding = if NATIVE.contains(&ts) {
        Coding::Native
    } else if ts == RLE {
        Coding::Rle
    } else if JPEG_LOSSY.contains(&ts) {
        Coding::Jpeg
    } else {
        return Err(RenderError::Unsupported(
            "pixel data in this transfer syntax (JPEG 2000, JPEG-LS or lossless JPEG) is served as stored only: ask for frames with transfer-syntax=*, or retrieve the instance",
        ));
    };
    let (rows, columns, frames) = frames_and_size(p)?;
    let samples = ushort(p, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as usize;
    let bits = ushort(p, tags::BITS_ALLOCATED).ok_or(RenderError::NoPixels)? as usize;
    let mut photometric = crate::instance::text(p.dataset(), tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let ok = match coding {
        Coding::Native | Coding::Rle => matches!((samples, bits, photometric.as_str()), (1, 8 | 16, "MONOCHROME1" | "MONOCHROME2") | (3, 8, "RGB")),
        Coding::Jpeg => matches!((samples, bits, photometric.as_str()), (1, 8, "MONOCHROME1" | "MONOCHROME2") | (3, 8, "RGB" | "YBR_FULL" | "YBR_FULL_422")),
    };
    if !ok {
        return Err(RenderError::Unsupported("this pixel layout is not rendered (monochrome 8/16-bit and colour 8-bit are)"));
    }
    if coding == Coding::Jpeg && samples == 3 {
        // The JPEG decoder returns RGB whatever the colour space of the bitstream.
        photometric = "RGB".into();
    }
    Ok(Layout {
        rows,
        columns,
        samples,
        bits,
        signed: ushort(p, tags::PIXEL_REPRESENTATION) == Some(1),
        // Decoded RLE and JPEG frames are interleaved.
        planar: coding == Coding::Native && ushort(p, tags::PLANAR_CONFIGURATION) == Some(1),
        photometric,
        frames,
        coding,
    })
}

/// How many frames the instance has (1 for a single-frame image); `None` without usable
/// pixel data.
pub fn frame_count(p: &Parsed) -> Option<usize> {
    frames_and_size(p).ok().map(|(_, _, f)| f)
}

/// Frame `n` (from 1) as stored: the native samples of an uncompressed instance, else the
/// compressed bitstream of the frame (its fragments, concatenated), in the instance's own
/// transfer syntax.
pub fn stored_frame(p: &Parsed, n: usize) -> Result<Vec<u8>, RenderError> {
    if is_native(p) {
        return frame(p, n);
    }
    let (_, _, frames) = frames_and_size(p)?;
    if n == 0 || n > frames {
        return Err(RenderError::NoFrame);
    }
    let e = p.dataset().get(tags::PIXEL_DATA).ok_or(RenderError::NoPixels)?;
    let fragments = e.value().fragments().ok_or(RenderError::NoPixels)?;
    let table = e.value().offset_table().unwrap_or(&[]);
    if fragments.len() == frames {
        return Ok(fragments[n - 1].clone());
    }
    if frames == 1 {
        return Ok(fragments.concat());
    }
    if table.len() == frames {
        // Offsets count bytes from the first fragment's item tag: 8 bytes of item header
        // before each fragment.
        let (from, to) = (table[n - 1] as u64, table.get(n).map_or(u64::MAX, |t| *t as u64));
        let mut at = 0u64;
        let mut out = Vec::new();
        for f in fragments {
            if at >= from && at < to {
                out.extend_from_slice(f);
            }
            at += 8 + f.len() as u64;
        }
        return if out.is_empty() { Err(RenderError::NoPixels) } else { Ok(out) };
    }
    Err(RenderError::Unsupported("the frames of this instance cannot be told apart (several fragments per frame and no offset table): retrieve the instance"))
}

/// Frame `n` (from 1) as native little-endian samples: as stored, or decoded (RLE, 8-bit
/// JPEG; see the module documentation).
pub fn frame(p: &Parsed, n: usize) -> Result<Vec<u8>, RenderError> {
    let l = layout(p)?;
    if n == 0 || n > l.frames {
        return Err(RenderError::NoFrame);
    }
    let size = l.rows * l.columns * l.samples * (l.bits / 8);
    match l.coding {
        Coding::Native => {
            let e = p.dataset().get(tags::PIXEL_DATA).ok_or(RenderError::NoPixels)?;
            // Native samples, little endian on every machine this runs on.
            let DicomValue::Primitive(v) = e.value() else { return Err(RenderError::NoPixels) };
            let all = v.to_bytes();
            all.get((n - 1) * size..n * size).map(<[u8]>::to_vec).ok_or(RenderError::NoPixels)
        }
        Coding::Rle => rle_decode(&stored_frame(p, n)?, l.rows * l.columns, l.samples, l.bits / 8),
        Coding::Jpeg => jpeg_decode(&stored_frame(p, n)?, l.rows, l.columns, l.samples),
    }
}

/// RLE Lossless (PS3.5 Annex G): a 64-byte header of segment offsets, then one PackBits
/// segment per byte plane (sample by sample, most significant byte first). Returns the
/// frame's samples interleaved, little endian. Never writes past the frame's size: a
/// segment that decodes to more is cut, one that decodes to less is corrupt.
fn rle_decode(data: &[u8], pixels: usize, samples: usize, bytes: usize) -> Result<Vec<u8>, RenderError> {
    let word = |i: usize| data.get(4 * i..4 * i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let segments = word(0).ok_or(RenderError::NoPixels)?;
    if segments != samples * bytes || segments == 0 || segments > 15 {
        return Err(RenderError::NoPixels);
    }
    let mut out = vec![0u8; pixels * samples * bytes];
    for seg in 0..segments {
        let start = word(seg + 1).ok_or(RenderError::NoPixels)?;
        let end = if seg + 1 < segments { word(seg + 2).ok_or(RenderError::NoPixels)? } else { data.len() };
        let src = data.get(start..end.min(data.len())).ok_or(RenderError::NoPixels)?;
        let (sample, plane) = (seg / bytes, seg % bytes);
        // Plane 0 is the most significant byte; little endian puts it last.
        let offset = sample * bytes + (bytes - 1 - plane);
        let stride = samples * bytes;
        let mut written = 0usize;
        let mut put = |b: u8, written: &mut usize| {
            if *written < pixels {
                out[*written * stride + offset] = b;
                *written += 1;
            }
        };
        let mut i = 0usize;
        while i < src.len() && written < pixels {
            let h = src[i] as i8;
            i += 1;
            if h >= 0 {
                let n = h as usize + 1;
                let lit = src.get(i..i + n).ok_or(RenderError::NoPixels)?;
                lit.iter().for_each(|b| put(*b, &mut written));
                i += n;
            } else if h != -128 {
                let b = *src.get(i).ok_or(RenderError::NoPixels)?;
                i += 1;
                (0..(1 - h as isize) as usize).for_each(|_| put(b, &mut written));
            }
        }
        if written < pixels {
            return Err(RenderError::NoPixels);
        }
    }
    Ok(out)
}

/// An 8-bit JPEG frame decoded to grey or RGB samples, refused unless it is exactly the
/// declared size (the decoder's limits hold it to that before it allocates).
fn jpeg_decode(data: &[u8], rows: usize, columns: usize, samples: usize) -> Result<Vec<u8>, RenderError> {
    let undecodable = RenderError::Unsupported("this JPEG frame is not decoded here (12-bit or lossless JPEG): ask for frames with transfer-syntax=*, or retrieve the instance");
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(data), image::ImageFormat::Jpeg);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(columns as u32);
    limits.max_image_height = Some(rows as u32);
    limits.max_alloc = Some((rows * columns * 4) as u64 + (1 << 20));
    reader.limits(limits);
    let img = reader.decode().map_err(|_| undecodable.clone())?;
    if img.width() as usize != columns || img.height() as usize != rows {
        return Err(RenderError::NoPixels);
    }
    Ok(if samples == 1 { img.into_luma8().into_raw() } else { img.into_rgb8().into_raw() })
}

/// Frame `n` (from 1) rendered to 8-bit samples (see the module documentation).
pub fn render(p: &Parsed, n: usize) -> Result<Image8, RenderError> {
    let l = layout(p)?;
    let raw = frame(p, n)?;
    let count = l.rows * l.columns;
    let pixels = if l.samples == 3 {
        if l.planar { (0..count).flat_map(|i| [raw[i], raw[count + i], raw[2 * count + i]]).collect() } else { raw }
    } else {
        let slope = float(p, tags::RESCALE_SLOPE).unwrap_or(1.0);
        let intercept = float(p, tags::RESCALE_INTERCEPT).unwrap_or(0.0);
        let values: Vec<f64> = (0..count)
            .map(|i| {
                let v = if l.bits == 8 {
                    if l.signed { raw[i] as i8 as f64 } else { raw[i] as f64 }
                } else {
                    let u = u16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]);
                    if l.signed { u as i16 as f64 } else { u as f64 }
                };
                v * slope + intercept
            })
            .collect();
        let (center, width) = match (float(p, tags::WINDOW_CENTER), float(p, tags::WINDOW_WIDTH)) {
            (Some(c), Some(w)) if w >= 1.0 => (c, w),
            _ => {
                let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
                ((lo + hi) / 2.0, (hi - lo).max(1.0))
            }
        };
        let invert = l.photometric == "MONOCHROME1";
        values
            .into_iter()
            .map(|x| {
                // PS3.3 C.11.2.1.2.1, linear.
                let y = (((x - (center - 0.5)) / (width - 1.0).max(1.0)) + 0.5).clamp(0.0, 1.0) * 255.0;
                let g = y.round() as u8;
                if invert { 255 - g } else { g }
            })
            .collect()
    };
    Ok(Image8 { width: l.columns as u32, height: l.rows as u32, rgb: l.samples == 3, pixels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An RLE frame: the header naming `segments`, then the segments one after another.
    fn rle(segments: &[&[u8]]) -> Vec<u8> {
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(&(segments.len() as u32).to_le_bytes());
        let mut at = 64u32;
        for (i, s) in segments.iter().enumerate() {
            header[4 + 4 * i..8 + 4 * i].copy_from_slice(&at.to_le_bytes());
            at += s.len() as u32;
        }
        header.extend(segments.iter().flat_map(|s| s.iter().copied()));
        header
    }

    #[test]
    fn rle_literal_and_replicate_runs_give_little_endian_samples() {
        // Four 16-bit pixels: high bytes 1,2,3,3 (a literal of two, a run of two); low bytes
        // 9,9,9,8 (a run of three, a literal of one); a no-op (-128) in between.
        let frame = rle(&[&[0x01, 1, 2, 0xFF, 3], &[0xFE, 9, 0x80, 0x00, 8]]);
        assert_eq!(rle_decode(&frame, 4, 1, 2).unwrap(), vec![9, 1, 9, 2, 9, 3, 8, 3]);
        // Three samples, interleaved in the output.
        let frame = rle(&[&[0xFF, 10], &[0xFF, 20], &[0xFF, 30]]);
        assert_eq!(rle_decode(&frame, 2, 3, 1).unwrap(), vec![10, 20, 30, 10, 20, 30]);
    }

    #[test]
    fn rle_that_does_not_fill_the_frame_or_names_other_segments_is_refused() {
        assert_eq!(rle_decode(&rle(&[&[0x00, 1]]), 2, 1, 1), Err(RenderError::NoPixels));
        assert_eq!(rle_decode(&rle(&[&[0x01, 1, 2]]), 2, 1, 2), Err(RenderError::NoPixels), "two segments are needed for 16 bits");
        assert_eq!(rle_decode(&[1, 0, 0], 2, 1, 1), Err(RenderError::NoPixels));
        // A run longer than the frame is cut at the frame's end.
        assert_eq!(rle_decode(&rle(&[&[0x81, 7]]), 3, 1, 1).unwrap(), vec![7, 7, 7]);
    }

    proptest! {
        /// Whatever the bytes, decoding ends without panicking, and what it returns is
        /// exactly one frame.
        #[test]
        fn rle_decoding_of_any_bytes_is_bounded(data in proptest::collection::vec(any::<u8>(), 0..400), pixels in 1usize..64, samples in prop_oneof![Just(1usize), Just(3)], bytes in 1usize..3) {
            if let Ok(out) = rle_decode(&data, pixels, samples, bytes) {
                prop_assert_eq!(out.len(), pixels * samples * bytes);
            }
            let mut framed = rle(&[&data]);
            framed[..4].copy_from_slice(&((samples * bytes) as u32).to_le_bytes());
            if let Ok(out) = rle_decode(&framed, pixels, samples, bytes) {
                prop_assert_eq!(out.len(), pixels * samples * bytes);
            }
        }

        /// Arbitrary bytes given to the JPEG decoder as a frame: refused, never a panic.
        #[test]
        fn jpeg_decoding_of_any_bytes_is_refused_cleanly(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut framed = vec![0xFF, 0xD8, 0xFF, 0xDB];
            framed.extend(data);
            if let Ok(out) = jpeg_decode(&framed, 8, 8, 1) {
                prop_assert_eq!(out.len(), 64);
            }
        }
    }
}
