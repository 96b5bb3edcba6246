//! Decoding and encoding through the `image` crate, bounded by [`Limits`], with its errors
//! turned into [`MediaError`]s that say nothing about the image.

use std::io::Cursor;

use image::error::LimitErrorKind;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

use crate::{Limits, MediaError};

fn image_limits(limits: &Limits) -> image::Limits {
    // No side may exceed the pixel budget; the product was checked before decoding.
    let side = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    let mut l = image::Limits::default();
    l.max_image_width = Some(side);
    l.max_image_height = Some(side);
    l.max_alloc = Some(limits.max_alloc);
    l
}

/// The decoder's error, without its text (which may quote values read from the image).
fn decode_error(e: ImageError) -> MediaError {
    match e {
        ImageError::Limits(l) if l.kind() == LimitErrorKind::DimensionError => MediaError::TooManyPixels,
        ImageError::Limits(_) => MediaError::TooMuchMemory,
        ImageError::Unsupported(_) => MediaError::Unsupported("an encoding feature the decoder does not support"),
        _ => MediaError::Malformed("the image data cannot be decoded"),
    }
}

/// A decoded image.
pub(crate) struct Decoded {
    pub image: DynamicImage,
}

/// Decodes `bytes` completely, within `limits`: the output buffer is reserved against
/// `max_alloc` before decoding starts (as `ImageReader::decode` does), and the PNG decoder
/// also counts its own buffers against it.
pub(crate) fn decode(format: ImageFormat, bytes: &[u8], limits: &Limits) -> Result<Decoded, MediaError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(image_limits(limits));
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let mut budget = image_limits(limits);
    budget.reserve(decoder.total_bytes()).map_err(decode_error)?;
    decoder.set_limits(budget).map_err(decode_error)?;
    let image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    Ok(Decoded { image })
}

/// PNG with the encoder's defaults (no metadata is given to it).
pub(crate) fn encode_png(image: &DynamicImage) -> Result<Vec<u8>, MediaError> {
    let mut out = Vec::new();
    image.write_with_encoder(image::codecs::png::PngEncoder::new(&mut out)).map_err(|_| MediaError::Encode)?;
    Ok(out)
}
