//! Frames and rendered images of uncompressed instances (WADO-RS `frames`, `rendered`,
//! `thumbnail`; PS3.18 §9.5, §9.7).
//!
//! Native (uncompressed, little endian) pixel data only: 8- or 16-bit monochrome (MONOCHROME1
//! inverted, Modality LUT from RescaleSlope/Intercept, the first VOI window of the instance or
//! else the frame's range) and 8-bit RGB (interleaved or planar). Compressed (encapsulated)
//! pixel data is not decoded: [`RenderError::Unsupported`], and the caller answers 406.

use dicom_core::Tag;
use dicom_core::value::{PrimitiveValue, Value as DicomValue};
use dicom_dictionary_std::tags;

use crate::Parsed;

/// Why a frame cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// Compressed pixel data, or a pixel layout this renderer does not decode.
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

struct Layout {
    rows: usize,
    columns: usize,
    samples: usize,
    bits: usize,
    signed: bool,
    planar: bool,
    photometric: String,
    frames: usize,
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

fn layout(p: &Parsed) -> Result<Layout, RenderError> {
    if !NATIVE.contains(&p.instance.transfer_syntax.as_str()) {
        return Err(RenderError::Unsupported("compressed pixel data is served as stored (retrieve the instance); frames and rendered images are for uncompressed instances"));
    }
    let rows = ushort(p, tags::ROWS).ok_or(RenderError::NoPixels)? as usize;
    let columns = ushort(p, tags::COLUMNS).ok_or(RenderError::NoPixels)? as usize;
    let samples = ushort(p, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as usize;
    let bits = ushort(p, tags::BITS_ALLOCATED).ok_or(RenderError::NoPixels)? as usize;
    let frames = crate::instance::text(p.dataset(), tags::NUMBER_OF_FRAMES).and_then(|n| n.trim().parse().ok()).unwrap_or(1usize);
    let photometric = crate::instance::text(p.dataset(), tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    if rows == 0 || columns == 0 || frames == 0 || rows * columns > 64 << 20 {
        return Err(RenderError::NoPixels);
    }
    let ok = matches!((samples, bits, photometric.as_str()), (1, 8 | 16, "MONOCHROME1" | "MONOCHROME2") | (3, 8, "RGB"));
    if !ok {
        return Err(RenderError::Unsupported("this pixel layout is not rendered (monochrome 8/16-bit and RGB 8-bit are)"));
    }
    Ok(Layout {
        rows,
        columns,
        samples,
        bits,
        signed: ushort(p, tags::PIXEL_REPRESENTATION) == Some(1),
        planar: ushort(p, tags::PLANAR_CONFIGURATION) == Some(1),
        photometric,
        frames,
    })
}

fn pixel_bytes(p: &Parsed) -> Result<Vec<u8>, RenderError> {
    let e = p.dataset().get(tags::PIXEL_DATA).ok_or(RenderError::NoPixels)?;
    match e.value() {
        // Native samples, little endian on every machine this runs on.
        DicomValue::Primitive(v) => Ok(v.to_bytes().into_owned()),
        _ => Err(RenderError::Unsupported("encapsulated pixel data is not decoded")),
    }
}

/// How many frames the instance has (1 for a single-frame image); `None` without usable
/// uncompressed pixel data.
pub fn frame_count(p: &Parsed) -> Option<usize> {
    layout(p).ok().map(|l| l.frames)
}

/// Frame `n` (from 1) as stored: its native pixel bytes.
pub fn frame(p: &Parsed, n: usize) -> Result<Vec<u8>, RenderError> {
    let l = layout(p)?;
    if n == 0 || n > l.frames {
        return Err(RenderError::NoFrame);
    }
    let size = l.rows * l.columns * l.samples * (l.bits / 8);
    let all = pixel_bytes(p)?;
    all.get((n - 1) * size..n * size).map(<[u8]>::to_vec).ok_or(RenderError::NoPixels)
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
