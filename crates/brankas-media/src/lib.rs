//! Photos without their metadata.
//!
//! A patient photo taken with a phone carries EXIF: the GPS position where it was taken
//! (often the patient's home), the time, the camera, sometimes a thumbnail of the uncropped
//! picture; XMP, IPTC and comments can carry names and notes. None of it is needed to show
//! the picture, so every JPEG and PNG the server stores goes through [`clean`] first, which
//! keeps only what is needed to render it:
//!
//! - **JPEG**: a lossless rewrite of the marker segments (tables, frame, scans, JFIF without
//!   thumbnail, ICC profile, Adobe colour transform); EXIF, XMP, MPF (further embedded JPEGs
//!   with their own EXIF), IPTC, comments and bytes after the end are dropped.
//! - **PNG**: a lossless rewrite of the chunks (pixels, palette, transparency, colour space,
//!   pixel size, background, APNG frames); eXIf, text chunks, tIME and every other ancillary
//!   chunk are dropped.
//! - **Orientation**: dropping EXIF would drop the orientation too, turning a portrait photo
//!   on its side; so when EXIF says the picture must be rotated or flipped (orientation 2–8),
//!   a JPEG keeps its pixels as they are (lossless) and gets a new EXIF segment holding the
//!   orientation and nothing else, and a PNG (whose viewers seldom read eXIf) is turned and
//!   re-encoded.
//! - **Bounded**: the input size is checked first, the pixel count from the header before
//!   any decoding (a 100000 × 100000 PNG of a few hundred bytes never allocates), and every
//!   image is fully decoded within [`Limits`] so that truncated, corrupt or hostile images are
//!   refused instead of stored. Turning a PNG costs a second copy of the pixels and an encode,
//!   so it has a lower pixel bound ([`Limits::max_pixels_turned`]). Across the process at most
//!   one image per core is decoded at once ([`max_concurrent`]); further calls wait their
//!   turn, so a burst of large photos costs time, not memory beyond that many images.
//!
//! [`classify`] decides from the declared content type and the magic number whether bytes
//! are to be cleaned, stored as they are, or refused (image formats that carry EXIF or XMP
//! but cannot be cleaned here, such as HEIC and WebP).
//!
//! Errors ([`MediaError`]) never carry image bytes or metadata values: their messages are
//! fixed texts. The crate does no I/O.
//!
//! ```
//! use brankas_media::{Handling, Limits, classify, clean};
//!
//! # fn photo() -> Vec<u8> {
//! #     let mut png = Vec::new();
//! #     let img = image::DynamicImage::new_rgb8(4, 3);
//! #     img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
//! #     png
//! # }
//! let upload: Vec<u8> = photo();
//! let stored = match classify("application/octet-stream", &upload) {
//!     Handling::Clean(kind) => clean(kind, &upload, &Limits::default())?,
//!     Handling::PassThrough => upload,
//!     Handling::Refuse => panic!("send JPEG or PNG"),
//! };
//! assert!(stored.starts_with(b"\x89PNG"));
//! # Ok::<(), brankas_media::MediaError>(())
//! ```

mod codec;
mod exif;
mod jpeg;
mod png;

use image::ImageFormat;
use image::metadata::Orientation;

/// Bounds on the work [`clean`] does for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest input accepted, in bytes (default 32 MiB).
    pub max_bytes: usize,
    /// Largest image accepted, in pixels (width × height; default 64 million, a 64-megapixel
    /// camera's photo). Checked against the header before decoding.
    pub max_pixels: u64,
    /// The decoder's allocation cap in bytes (default 512 MiB). Peak memory of [`clean`] is
    /// about the input, its rewrite, the decoded image and, when the orientation is applied,
    /// a turned copy of it.
    pub max_alloc: u64,
    /// Largest image whose EXIF orientation is applied (decoded, turned and re-encoded), in
    /// pixels (default 24 million); a larger image with an orientation to apply is refused
    /// with [`MediaError::TooManyPixels`] before decoding.
    pub max_pixels_turned: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_bytes: 32 << 20, max_pixels: 64_000_000, max_alloc: 512 << 20, max_pixels_turned: 24_000_000 }
    }
}

/// How many images [`clean`] decodes at once across the process: one per core.
pub fn max_concurrent() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// The process-wide count of images being decoded.
static BUSY: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static FREED: std::sync::Condvar = std::sync::Condvar::new();

/// One of the [`max_concurrent`] places; waits for one to free up.
struct Turn;

impl Turn {
    fn take() -> Self {
        let mut busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        while *busy >= max_concurrent() {
            busy = FREED.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        *busy += 1;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        *busy -= 1;
        FREED.notify_one();
    }
}

/// An image format [`clean`] handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Jpeg,
    Png,
}

/// What to do with an attachment, from [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// An image to pass through [`clean`] before storing it.
    Clean(ImageKind),
    /// Not an image that can carry EXIF or XMP here: store as it is.
    PassThrough,
    /// An image format that can carry EXIF or XMP and that this crate cannot clean: refuse it
    /// rather than store a location.
    Refuse,
}

/// Why an image was not cleaned. The messages are fixed texts: never image bytes, never
/// metadata values (patient data), never the decoder's own words (which may quote either).
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("the image is larger than the size limit")]
    TooLarge,
    #[error("the image has more pixels than the limit")]
    TooManyPixels,
    #[error("decoding the image would exceed the memory limit")]
    TooMuchMemory,
    #[error("malformed image: {0}")]
    Malformed(&'static str),
    #[error("unsupported image: {0}")]
    Unsupported(&'static str),
    #[error("the cleaned image could not be encoded")]
    Encode,
}

const PNG_SIGNATURE: [u8; 8] = png::SIGNATURE;

/// Whether `first_bytes` start like an image format that carries EXIF or XMP and that this
/// crate cannot clean (TIFF and camera raw files built on it, WebP, HEIF/HEIC/AVIF, JPEG XL,
/// JPEG 2000). Such bytes are refused whatever the declared type, as JPEG and PNG are cleaned
/// whatever the declared type: a phone's HEIC photo sent as `application/octet-stream` keeps
/// its GPS position just the same.
fn uncleanable_image_magic(b: &[u8]) -> bool {
    const HEIF_BRANDS: [&[u8; 4]; 12] = [b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1", b"avif", b"avis"];
    let tiff = [&b"II*\0"[..], b"MM\0*", b"II+\0", b"MM\0+"].iter().any(|m| b.starts_with(m));
    let webp = b.starts_with(b"RIFF") && b.get(8..12) == Some(b"WEBP");
    let heif = b.get(4..8) == Some(b"ftyp") && b.get(8..12).is_some_and(|brand| HEIF_BRANDS.iter().any(|h| h[..] == *brand));
    // Only JPEG XL's container can hold EXIF and XMP; a bare codestream (FF 0A) cannot, and
    // two bytes would be too weak a signature to refuse arbitrary binary content on.
    let jxl = b.starts_with(b"\0\0\0\x0CJXL \r\n\x87\n");
    let jp2 = b.starts_with(b"\0\0\0\x0CjP  \r\n\x87\n");
    tiff || webp || heif || jxl || jp2
}

/// Decides how to store an attachment from its declared content type and its first bytes
/// (16 are enough; all of them will do).
///
/// - Bytes that start like a JPEG (`FF D8 FF`) or carry the PNG signature are cleaned,
///   whatever the declared type: the declaration is the client's, the bytes are what a viewer
///   will show.
/// - Bytes that start like another image format carrying EXIF or XMP (TIFF, WebP, HEIF, AVIF,
///   JPEG XL, JPEG 2000) are refused, whatever the declared type, for the same reason.
/// - Otherwise the declared type decides (case-insensitive, parameters after `;` ignored):
///   `image/jpeg`, `image/jpg`, `image/pjpeg`, `image/png` and `image/apng` are cleaned (so
///   bytes that are not really that format fail in [`clean`]); `image/gif`, `image/bmp` and
///   non-image types pass through; every other `image/*` type (TIFF, WebP, HEIC, HEIF, AVIF,
///   JPEG XL, SVG, `image/x-*`…) is refused, since it can carry EXIF or XMP.
pub fn classify(content_type: &str, first_bytes: &[u8]) -> Handling {
    if first_bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Handling::Clean(ImageKind::Jpeg);
    }
    if first_bytes.starts_with(&PNG_SIGNATURE) {
        return Handling::Clean(ImageKind::Png);
    }
    if uncleanable_image_magic(first_bytes) {
        return Handling::Refuse;
    }
    let essence = content_type.split_once(';').map_or(content_type, |(essence, _)| essence).trim();
    let is = |t: &str| essence.eq_ignore_ascii_case(t);
    if is("image/jpeg") || is("image/jpg") || is("image/pjpeg") {
        Handling::Clean(ImageKind::Jpeg)
    } else if is("image/png") || is("image/apng") {
        Handling::Clean(ImageKind::Png)
    } else if is("image/gif") || is("image/bmp") {
        Handling::PassThrough
    } else if essence.get(..6).is_some_and(|t| t.eq_ignore_ascii_case("image/")) {
        Handling::Refuse
    } else {
        Handling::PassThrough
    }
}

/// The orientation an EXIF value asks for; values outside 1–8 are ignored, as viewers do.
fn to_orientation(value: Option<u16>) -> Orientation {
    value.and_then(|v| u8::try_from(v).ok()).and_then(Orientation::from_exif).unwrap_or(Orientation::NoTransforms)
}

/// Returns `bytes` (a JPEG or PNG, as `kind` says) without metadata, with the EXIF orientation
/// applied to the pixels. Without an orientation to apply (none, or 1) the result is a lossless
/// rewrite with exactly the same pixels, and `clean` of a cleaned image returns it unchanged.
///
/// Checked in this order, each before any work the next needs: `bytes.len()` against
/// `max_bytes` ([`MediaError::TooLarge`]); the structure, and the header's width × height
/// against `max_pixels` ([`MediaError::TooManyPixels`]); then a complete decode within
/// `max_alloc`, so that truncated or corrupt images fail here rather than in a viewer.
pub fn clean(kind: ImageKind, bytes: &[u8], limits: &Limits) -> Result<Vec<u8>, MediaError> {
    if bytes.len() > limits.max_bytes {
        return Err(MediaError::TooLarge);
    }
    let _turn = Turn::take();
    match kind {
        ImageKind::Jpeg => clean_jpeg(bytes, limits),
        ImageKind::Png => clean_png(bytes, limits),
    }
}

fn clean_jpeg(bytes: &[u8], limits: &Limits) -> Result<Vec<u8>, MediaError> {
    let rewritten = jpeg::rewrite(bytes, limits.max_pixels)?;
    let orientation = to_orientation(rewritten.orientation);
    // The rewrite is what gets decoded: what is stored is what was validated.
    let decoded = codec::decode(ImageFormat::Jpeg, &rewritten.bytes, limits)?;
    if (decoded.image.width(), decoded.image.height()) != (rewritten.width, rewritten.height) {
        return Err(MediaError::Malformed("the JPEG's frame header and image data disagree"));
    }
    drop(decoded);
    match rewritten.orientation.filter(|_| orientation != Orientation::NoTransforms) {
        None => Ok(rewritten.bytes),
        // Lossless: the pixels stay as they are, and an EXIF holding the orientation alone
        // (no position, time, camera or thumbnail) tells viewers how to turn them.
        Some(o) => Ok(jpeg::with_exif(&rewritten.bytes, &exif::orientation_only(o))),
    }
}

fn clean_png(bytes: &[u8], limits: &Limits) -> Result<Vec<u8>, MediaError> {
    let rewritten = png::rewrite(bytes, limits.max_pixels)?;
    let orientation = to_orientation(rewritten.orientation);
    let turn = orientation != Orientation::NoTransforms;
    if turn && rewritten.animated {
        // Only the first frame would survive a re-encode: refuse rather than lose the rest.
        return Err(MediaError::Unsupported("an animated PNG with an EXIF orientation"));
    }
    if turn && u64::from(rewritten.width) * u64::from(rewritten.height) > limits.max_pixels_turned {
        return Err(MediaError::TooManyPixels);
    }
    let decoded = codec::decode(ImageFormat::Png, &rewritten.bytes, limits)?;
    if (decoded.image.width(), decoded.image.height()) != (rewritten.width, rewritten.height) {
        return Err(MediaError::Malformed("the PNG's header and image data disagree"));
    }
    if !turn {
        return Ok(rewritten.bytes);
    }
    let mut image = decoded.image;
    image.apply_orientation(orientation);
    let encoded = codec::encode_png(&image)?;
    let with_colour = png::with_colour_of(&encoded, &rewritten.bytes)?;
    Ok(png::rewrite(&with_colour, u64::MAX)?.bytes)
}

/// The EXIF orientation value (1–8 when valid) of a JPEG's first EXIF segment or a PNG's
/// first eXIf chunk before the image data; `None` when there is none or the structure of
/// the file is invalid. No limit applies: this walks the structure without decoding.
pub fn orientation(kind: ImageKind, bytes: &[u8]) -> Option<u16> {
    match kind {
        ImageKind::Jpeg => jpeg::rewrite(bytes, u64::MAX).ok()?.orientation,
        ImageKind::Png => png::rewrite(bytes, u64::MAX).ok()?.orientation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png() -> Vec<u8> {
        let mut out = Vec::new();
        image::DynamicImage::new_rgb8(4, 3).write_to(&mut std::io::Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn no_more_images_than_cores_are_decoded_at_once() {
        // Every place taken: a caller waits until one frees up.
        let held: Vec<Turn> = (0..max_concurrent()).map(|_| Turn::take()).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let input = png();
        let t = std::thread::spawn(move || tx.send(clean(ImageKind::Png, &input, &Limits::default()).is_ok()).unwrap());
        assert!(rx.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "a call went past the bound");
        drop(held);
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(30)), Ok(true), "it runs once a place is free");
        t.join().unwrap();
    }
}

/// The format of an image made by [`encode_pixels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Png,
    /// JPEG at quality 90.
    Jpeg,
}

/// Encodes 8-bit samples (grey, or RGB when `rgb`), row by row, as PNG or JPEG, first scaled
/// down to fit `max_side` (a thumbnail) if given. For images this server renders itself
/// (DICOM frames): nothing of a client's file passes through, so there is no metadata to clean.
pub fn encode_pixels(width: u32, height: u32, rgb: bool, pixels: Vec<u8>, encoding: Encoding, max_side: Option<u32>) -> Result<Vec<u8>, MediaError> {
    use image::{DynamicImage, GrayImage, RgbImage};
    let img = if rgb {
        DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, pixels).ok_or(MediaError::Malformed("pixel count does not match the size"))?)
    } else {
        DynamicImage::ImageLuma8(GrayImage::from_raw(width, height, pixels).ok_or(MediaError::Malformed("pixel count does not match the size"))?)
    };
    let img = match max_side {
        Some(m) if width.max(height) > m => img.thumbnail(m, m),
        _ => img,
    };
    let mut out = Vec::new();
    match encoding {
        Encoding::Png => img.write_with_encoder(image::codecs::png::PngEncoder::new(&mut out)),
        Encoding::Jpeg => img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)),
    }
    .map_err(|_| MediaError::Encode)?;
    Ok(out)
}
