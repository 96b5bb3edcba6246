//! What cleaning a phone-sized photo costs, with and without an EXIF orientation to apply:
//! `cargo run --release -p brankas-media --example clean_cost [MEGAPIXELS]` (default 12).
//! The photo is synthetic (smooth gradients with noise, JPEG quality 90) with an EXIF block
//! carrying the orientation; the figures go to BENCHMARKS.md.

use std::time::Instant;

use brankas_media::{ImageKind, Limits, clean};

fn main() {
    let mp: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(12.0);
    let w = ((mp * 1e6 * 4.0 / 3.0).sqrt()) as u32;
    let h = w * 3 / 4;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = (seed & 15) as u8;
        image::Rgb([(x * 255 / w) as u8 ^ n, (y * 255 / h) as u8 ^ n, ((x + y) % 256) as u8])
    });
    let mut plain = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut plain, 90).encode_image(&img).expect("encode");
    for o in [1u16, 6] {
        // An Exif APP1 (big-endian TIFF, IFD0 with the orientation) right after SOI.
        let mut tiff = b"MM\0*".to_vec();
        tiff.extend(8u32.to_be_bytes());
        tiff.extend(1u16.to_be_bytes());
        tiff.extend(0x0112u16.to_be_bytes());
        tiff.extend(3u16.to_be_bytes());
        tiff.extend(1u32.to_be_bytes());
        tiff.extend(o.to_be_bytes());
        tiff.extend([0, 0, 0, 0, 0, 0]);
        let payload = [&b"Exif\0\0"[..], &tiff].concat();
        let len = u16::try_from(payload.len() + 2).expect("small").to_be_bytes();
        let input = [&plain[..2], &[0xFF, 0xE1], &len, &payload, &plain[2..]].concat();
        let runs = 3;
        let start = Instant::now();
        let mut out_len = 0;
        for _ in 0..runs {
            out_len = clean(ImageKind::Jpeg, &input, &Limits::default()).expect("cleans").len();
        }
        let per = start.elapsed().as_secs_f64() / f64::from(runs);
        println!(
            "{w} x {h} ({:.1} MP), {:.2} MB in, orientation {o}: {:.3} s per photo, {:.2} MB out",
            f64::from(w * h) / 1e6,
            input.len() as f64 / 1e6,
            per,
            out_len as f64 / 1e6
        );
    }
}
