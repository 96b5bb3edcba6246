//! `classify`: the declared content type and the magic number decide together.

use brankas_media::Handling::{Clean, PassThrough, Refuse};
use brankas_media::ImageKind::{Jpeg, Png};
use brankas_media::classify;

const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00\x01\x01\x00\x00\x01";
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0DIHDR";
const TEXT: &[u8] = b"just some text..";
const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xFF\xFF\xFF";

#[test]
fn declared_types_decide_for_other_bytes() {
    let cases = [
        ("image/jpeg", Clean(Jpeg)),
        ("image/jpg", Clean(Jpeg)),
        ("image/pjpeg", Clean(Jpeg)),
        ("IMAGE/JPEG; charset=x", Clean(Jpeg)),
        (" Image/Jpeg ;q=1", Clean(Jpeg)),
        ("image/png", Clean(Png)),
        ("image/PNG;x=y", Clean(Png)),
        ("image/apng", Clean(Png)),
        ("image/gif", PassThrough),
        ("image/bmp", PassThrough),
        ("application/pdf", PassThrough),
        ("application/octet-stream", PassThrough),
        ("text/plain; charset=utf-8", PassThrough),
        ("audio/mpeg", PassThrough),
        ("application/dicom", PassThrough),
        ("", PassThrough),
        ("image/heic", Refuse),
        ("image/heif", Refuse),
        ("image/avif", Refuse),
        ("image/webp", Refuse),
        ("image/tiff", Refuse),
        ("image/jxl", Refuse),
        ("image/svg+xml", Refuse),
        ("image/x-canon-cr2", Refuse),
        ("IMAGE/HEIC; q=1", Refuse),
    ];
    for (content_type, expected) in cases {
        assert_eq!(classify(content_type, TEXT), expected, "{content_type:?}");
    }
    // A declared JPEG or PNG is cleaned even when the bytes are something else, so that
    // `clean` rejects them.
    assert_eq!(classify("image/jpeg", GIF), Clean(Jpeg));
    assert_eq!(classify("image/png", JPEG), Clean(Jpeg), "the magic number wins");
}

#[test]
fn jpeg_and_png_magic_is_cleaned_whatever_the_declared_type() {
    for content_type in ["application/octet-stream", "image/gif", "text/plain", "image/heic", "", "image/png"] {
        assert_eq!(classify(content_type, JPEG), Clean(Jpeg), "{content_type:?}");
        assert_eq!(classify(content_type, &JPEG[..3]), Clean(Jpeg), "three bytes are enough: {content_type:?}");
    }
    for content_type in ["application/octet-stream", "image/gif", "text/plain", "image/jpeg", ""] {
        assert_eq!(classify(content_type, PNG), Clean(Png), "{content_type:?}");
    }
    // FF D8 alone is not a JPEG start (a JPEG's first marker follows at once).
    assert_eq!(classify("application/octet-stream", b"\xFF\xD8\x00\x00"), PassThrough);
    assert_eq!(classify("application/octet-stream", &PNG[..7]), PassThrough, "a partial PNG signature is not one");
}

#[test]
fn other_metadata_carrying_images_are_refused_whatever_the_declared_type() {
    let heic: &[u8] = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00";
    let avif: &[u8] = b"\x00\x00\x00\x1Cftypavif\x00\x00\x00\x00";
    let mp4: &[u8] = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00";
    let webp: &[u8] = b"RIFF\x24\x00\x00\x00WEBPVP8 ";
    let wav: &[u8] = b"RIFF\x24\x00\x00\x00WAVEfmt ";
    for magic in [b"II*\x00\x08\x00\x00\x00".as_slice(), b"MM\x00*\x00\x00\x00\x08", heic, avif, webp, b"\0\0\0\x0CJXL \r\n\x87\n\0\0\0\x14", b"\0\0\0\x0CjP  \r\n\x87\n\0\0\0\x14"]
    {
        assert_eq!(classify("application/octet-stream", magic), Refuse, "{magic:?}");
        assert_eq!(classify("image/gif", magic), Refuse, "{magic:?}");
    }
    assert_eq!(classify("video/mp4", mp4), PassThrough, "video is not an image type");
    assert_eq!(classify("audio/wav", wav), PassThrough);
    assert_eq!(classify("image/gif", GIF), PassThrough);
    assert_eq!(classify("application/octet-stream", b"\xFF\x0A\xFA\x7F"), PassThrough, "a bare JPEG XL codestream holds no metadata");
}
