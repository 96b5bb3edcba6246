//! Small generated binary documents: PNG photos, PDF consent letters, DICOM Part 10 images,
//! and the checksums they need (CRC-32, Adler-32). Checksums, not cryptography.

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[n] = c;
        n += 1;
    }
    t
};

/// CRC-32 (ISO-HDLC, as used by PNG and zlib's gzip).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

/// Adler-32 (zlib).
pub fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// zlib stream of `raw` in uncompressed ("stored") deflate blocks.
pub fn zlib_stored(raw: &[u8]) -> Vec<u8> {
    let mut z = Vec::with_capacity(raw.len() + raw.len() / 65535 * 5 + 16);
    z.extend_from_slice(&[0x78, 0x01]);
    let mut blocks = raw.chunks(65535).peekable();
    if raw.is_empty() {
        z.extend_from_slice(&[1, 0, 0, 0xFF, 0xFF]);
    }
    while let Some(b) = blocks.next() {
        z.push(u8::from(blocks.peek().is_none()));
        let len = b.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(b);
    }
    z.extend_from_slice(&adler32(raw).to_be_bytes());
    z
}

/// A grayscale 8-bit PNG of `w` x `h` pixels given row-major.
pub fn png_gray(w: u32, h: u32, pixels: &[u8]) -> Vec<u8> {
    assert_eq!(pixels.len(), (w * h) as usize);
    let mut raw = Vec::with_capacity(((w + 1) * h) as usize);
    for row in pixels.chunks(w as usize) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut out = Vec::with_capacity(raw.len() + 64);
    out.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A synthetic 48x48 head-and-shoulders silhouette; `tone` varies skin and background.
pub fn portrait_png(tone: u64) -> Vec<u8> {
    const N: i32 = 48;
    let bg = 200 + (tone % 40) as i32;
    let skin = 120 + ((tone >> 8) % 60) as i32;
    let hair = 20 + ((tone >> 16) % 40) as i32;
    let shirt = 60 + ((tone >> 24) % 120) as i32;
    let mut px = Vec::with_capacity((N * N) as usize);
    for y in 0..N {
        for x in 0..N {
            let (dx, dy) = (x - 24, y - 20);
            let head = dx * dx * 100 / (11 * 11) + dy * dy * 100 / (14 * 14) <= 100;
            let hair_px = head && y < 12 + (dx.abs() / 4);
            let body = y > 34 && (x - 24).abs() < 8 + (y - 34) * 2;
            let v = if hair_px {
                hair
            } else if head {
                skin
            } else if body {
                shirt
            } else {
                bg - y / 2
            };
            px.push(v.clamp(0, 255) as u8);
        }
    }
    png_gray(N as u32, N as u32, &px)
}

fn pdf_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '(' | ')' | '\\' => {
                o.push('\\');
                o.push(c);
            }
            ' '..='~' => o.push(c),
            _ => o.push('?'),
        }
    }
    o
}

/// A one-page PDF 1.4 (Helvetica, uncompressed): title and the given lines, then a signature
/// line with `signer` under it. The cross-reference table has exact byte offsets.
pub fn pdf_letter(title: &str, lines: &[String], place_date: &str, signer: &str) -> Vec<u8> {
    let mut content = String::new();
    content.push_str(&format!("BT /F1 14 Tf 72 770 Td ({}) Tj ET\n", pdf_escape(title)));
    content.push_str("72 760 m 523 760 l S\n");
    let mut y = 730;
    for l in lines {
        content.push_str(&format!("BT /F1 11 Tf 72 {y} Td ({}) Tj ET\n", pdf_escape(l)));
        y -= 18;
    }
    y -= 20;
    content.push_str(&format!("BT /F1 11 Tf 340 {y} Td ({}) Tj ET\n", pdf_escape(place_date)));
    y -= 16;
    content.push_str(&format!("BT /F1 11 Tf 340 {y} Td (Yang menyatakan,) Tj ET\n"));
    y -= 70;
    content.push_str(&format!("340 {y} m 520 {y} l S\n"));
    y -= 14;
    content.push_str(&format!("BT /F1 11 Tf 340 {y} Td ({}) Tj ET\n", pdf_escape(signer)));

    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>".to_string(),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_string(),
        format!("<< /Length {} >>\nstream\n{}endstream", content.len(), content),
    ];
    let mut out = Vec::with_capacity(content.len() + 1024);
    out.extend_from_slice(b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n");
    let mut offsets = Vec::with_capacity(objects.len());
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{}\nendobj\n", i + 1, o).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).as_bytes());
    out
}

/// DICOM SOP classes used.
pub const SOP_CR: &str = "1.2.840.10008.5.1.4.1.1.1";
pub const SOP_CT: &str = "1.2.840.10008.5.1.4.1.1.2";
/// Explicit VR Little Endian.
pub const TS_EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// Implementation Class UID of this generator (a fixed UUID-derived 2.25 UID).
pub const IMPLEMENTATION_UID: &str = "2.25.223456789012345678901234567890123456";

/// What goes into one DICOM instance.
pub struct DicomInstance<'a> {
    pub ct: bool,
    pub study_uid: &'a str,
    pub series_uid: &'a str,
    pub sop_uid: &'a str,
    pub patient_id: &'a str,
    pub patient_name: &'a str,
    pub birth_date: &'a str, // YYYYMMDD
    pub sex: &'a str,        // M or F
    pub study_date: &'a str, // YYYYMMDD
    pub study_time: &'a str, // HHMMSS
    pub accession: &'a str,
    pub institution: &'a str,
    pub instance_number: u32,
    pub noise: u64,
}

fn long_vr(vr: &[u8; 2]) -> bool {
    matches!(vr, b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN")
}

/// Appends one explicit-VR little-endian element; pads the value to even length (UI and OB
/// with NUL, text with a space).
fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
    let pad = value.len() % 2 == 1;
    let len = value.len() + usize::from(pad);
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if long_vr(vr) {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(len as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(len as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
    if pad {
        out.push(if matches!(vr, b"UI" | b"OB") { 0 } else { b' ' });
    }
}

fn us(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}

/// Rows/Columns of the generated images.
pub const DICOM_SIZE: u16 = 64;

/// A DICOM Part 10 file (preamble, "DICM", group 0002 with its group length, then the data
/// set in explicit VR little endian) holding a 64x64 12-bit MONOCHROME2 image.
pub fn dicom_file(d: &DicomInstance<'_>) -> Vec<u8> {
    let sop_class = if d.ct { SOP_CT } else { SOP_CR };
    let mut meta = Vec::with_capacity(256);
    element(&mut meta, 0x0002, 0x0001, b"OB", &[0, 1]);
    element(&mut meta, 0x0002, 0x0002, b"UI", sop_class.as_bytes());
    element(&mut meta, 0x0002, 0x0003, b"UI", d.sop_uid.as_bytes());
    element(&mut meta, 0x0002, 0x0010, b"UI", TS_EXPLICIT_LE.as_bytes());
    element(&mut meta, 0x0002, 0x0012, b"UI", IMPLEMENTATION_UID.as_bytes());
    element(&mut meta, 0x0002, 0x0013, b"SH", b"BRANKAS_SYNTH");
    let n = usize::from(DICOM_SIZE);
    let mut out = Vec::with_capacity(132 + 12 + meta.len() + 700 + n * n * 2);
    out.resize(128, 0);
    out.extend_from_slice(b"DICM");
    element(&mut out, 0x0002, 0x0000, b"UL", &(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    let modality = if d.ct { "CT" } else { "CR" };
    element(&mut out, 0x0008, 0x0008, b"CS", if d.ct { b"ORIGINAL\\PRIMARY\\AXIAL" } else { b"ORIGINAL\\PRIMARY" });
    element(&mut out, 0x0008, 0x0016, b"UI", sop_class.as_bytes());
    element(&mut out, 0x0008, 0x0018, b"UI", d.sop_uid.as_bytes());
    element(&mut out, 0x0008, 0x0020, b"DA", d.study_date.as_bytes());
    element(&mut out, 0x0008, 0x0030, b"TM", d.study_time.as_bytes());
    element(&mut out, 0x0008, 0x0050, b"SH", d.accession.as_bytes());
    element(&mut out, 0x0008, 0x0060, b"CS", modality.as_bytes());
    element(&mut out, 0x0008, 0x0070, b"LO", b"Brankas Synth");
    let inst: String = d.institution.chars().take(64).collect();
    element(&mut out, 0x0008, 0x0080, b"LO", inst.as_bytes());
    element(&mut out, 0x0008, 0x1030, b"LO", if d.ct { b"CT Thorax" } else { b"Thorax PA" });
    let pn: String = d.patient_name.chars().take(64).collect();
    element(&mut out, 0x0010, 0x0010, b"PN", pn.as_bytes());
    element(&mut out, 0x0010, 0x0020, b"LO", d.patient_id.as_bytes());
    element(&mut out, 0x0010, 0x0030, b"DA", d.birth_date.as_bytes());
    element(&mut out, 0x0010, 0x0040, b"CS", d.sex.as_bytes());
    element(&mut out, 0x0018, 0x0015, b"CS", b"CHEST");
    element(&mut out, 0x0020, 0x000D, b"UI", d.study_uid.as_bytes());
    element(&mut out, 0x0020, 0x000E, b"UI", d.series_uid.as_bytes());
    element(&mut out, 0x0020, 0x0010, b"SH", b"1");
    element(&mut out, 0x0020, 0x0011, b"IS", b"1");
    element(&mut out, 0x0020, 0x0013, b"IS", d.instance_number.to_string().as_bytes());
    element(&mut out, 0x0028, 0x0002, b"US", &us(1));
    element(&mut out, 0x0028, 0x0004, b"CS", b"MONOCHROME2");
    element(&mut out, 0x0028, 0x0010, b"US", &us(DICOM_SIZE));
    element(&mut out, 0x0028, 0x0011, b"US", &us(DICOM_SIZE));
    element(&mut out, 0x0028, 0x0100, b"US", &us(16));
    element(&mut out, 0x0028, 0x0101, b"US", &us(12));
    element(&mut out, 0x0028, 0x0102, b"US", &us(11));
    element(&mut out, 0x0028, 0x0103, b"US", &us(0));
    let mut pixels = Vec::with_capacity(n * n * 2);
    let mut noise = d.noise | 1;
    for y in 0..n as i32 {
        for x in 0..n as i32 {
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            let v = chest_pixel(d.ct, x, y, d.instance_number as i32) + (noise % 96) as i32;
            pixels.extend_from_slice(&(v.clamp(0, 4095) as u16).to_le_bytes());
        }
    }
    element(&mut out, 0x7FE0, 0x0010, b"OW", &pixels);
    out
}

/// A crude chest: bright body/mediastinum, dark lungs, a bright spine (CR) or ring (CT).
fn chest_pixel(ct: bool, x: i32, y: i32, slice: i32) -> i32 {
    let (cx, cy) = (x - 32, y - 32);
    if ct {
        let body = cx * cx * 100 / (29 * 29) + cy * cy * 100 / (22 * 22) <= 100;
        if !body {
            return 40;
        }
        let lung_l = (cx + 12) * (cx + 12) * 100 / (10 * 10) + cy * cy * 100 / (14 * 14) <= 100;
        let lung_r = (cx - 12) * (cx - 12) * 100 / (10 * 10) + cy * cy * 100 / (14 * 14) <= 100;
        let spine = cx * cx + (cy - 15) * (cy - 15) <= 16;
        if spine {
            3400
        } else if lung_l || lung_r {
            250 + slice * 20
        } else {
            1900
        }
    } else {
        let lung_l = (cx + 13) * (cx + 13) * 100 / (11 * 11) + (cy + 2) * (cy + 2) * 100 / (22 * 22) <= 100;
        let lung_r = (cx - 13) * (cx - 13) * 100 / (11 * 11) + (cy + 2) * (cy + 2) * 100 / (22 * 22) <= 100;
        let spine = cx.abs() <= 3;
        let ribs = (y % 8 < 2) && (lung_l || lung_r);
        if spine {
            3000
        } else if ribs {
            1800
        } else if lung_l || lung_r {
            500
        } else if cx.abs() < 30 {
            2200 - cx.abs() * 20
        } else {
            100
        }
    }
}

/// One lead of a synthetic 12-lead EKG: `n` samples at 250 Hz in microvolts (P, QRS, T
/// waves as Gaussians), scaled and inverted per lead the way the limb and chest leads look.
pub fn ekg_lead(lead: usize, heart_rate: u32, phase: f64, n: usize) -> String {
    // (P, Q, R, S, T) amplitude multipliers per lead: I II III aVR aVL aVF V1..V6.
    const GAIN: [(f64, f64, f64, f64, f64); 12] = [
        (0.10, -0.05, 0.70, -0.10, 0.20),
        (0.15, -0.08, 1.10, -0.20, 0.30),
        (0.05, -0.03, 0.45, -0.15, 0.10),
        (-0.12, 0.05, -0.80, 0.10, -0.25),
        (0.05, -0.03, 0.35, -0.05, 0.10),
        (0.10, -0.05, 0.80, -0.15, 0.20),
        (0.08, 0.00, 0.25, -1.00, -0.05),
        (0.10, 0.00, 0.50, -1.20, 0.40),
        (0.10, -0.05, 0.90, -0.70, 0.45),
        (0.10, -0.08, 1.40, -0.40, 0.40),
        (0.10, -0.08, 1.20, -0.20, 0.30),
        (0.10, -0.06, 0.90, -0.10, 0.25),
    ];
    let g = GAIN[lead % 12];
    let rr = 60.0 / f64::from(heart_rate.max(30));
    let waves = [(0.16, 0.025, g.0), (0.26, 0.010, g.1), (0.28, 0.010, g.2), (0.30, 0.010, g.3), (0.52, 0.040, g.4)];
    let mut s = String::with_capacity(n * 5);
    for k in 0..n {
        let t = k as f64 / 250.0 + phase;
        let u = t % rr;
        let mut mv = 0.0;
        for &(center, width, amp) in &waves {
            let c = center * (rr / 0.8).min(1.25);
            let d = (u - c) / width;
            mv += amp * (-0.5 * d * d).exp();
        }
        // Baseline wander.
        mv += 0.03 * (2.0 * std::f64::consts::PI * 0.3 * t).sin();
        if k > 0 {
            s.push(' ');
        }
        s.push_str(&((mv * 1000.0).round() as i64).to_string());
    }
    s
}
