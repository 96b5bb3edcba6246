//! The one EXIF value read before all of EXIF is dropped: the orientation (tag 0x0112 of
//! IFD0). Nothing else of the metadata is looked at, so nothing else can leak from here.

/// The TIFF tag of the orientation.
const ORIENTATION: u16 = 0x0112;
/// TIFF field types the orientation may be written with: SHORT (the standard) and LONG
/// (written by a few tools, and read by common viewers alike).
const SHORT: u16 = 3;
const LONG: u16 = 4;

/// A TIFF structure (big-endian) whose IFD0 holds the orientation and nothing else: what a
/// cleaned JPEG carries so that viewers still turn it, instead of the original EXIF.
pub(crate) fn orientation_only(value: u16) -> Vec<u8> {
    let mut t = Vec::with_capacity(26);
    t.extend_from_slice(b"MM\0*");
    t.extend_from_slice(&8u32.to_be_bytes()); // IFD0 right after the header
    t.extend_from_slice(&1u16.to_be_bytes()); // one entry
    t.extend_from_slice(&ORIENTATION.to_be_bytes());
    t.extend_from_slice(&SHORT.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&value.to_be_bytes());
    t.extend_from_slice(&[0, 0]);
    t.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    t
}

/// The EXIF body of a JPEG APP1 segment or a PNG eXIf chunk: the TIFF structure, without the
/// `Exif\0\0` prefix that APP1 always has and some PNG writers copy into eXIf.
pub(crate) fn tiff_of(payload: &[u8]) -> &[u8] {
    payload.strip_prefix(b"Exif\0\0").unwrap_or(payload)
}

/// The orientation value in a TIFF structure (`II*\0` or `MM\0*` header), if IFD0 has one
/// that is a single SHORT or LONG fitting 16 bits. Every offset is bounds-checked: the input
/// is untrusted.
pub(crate) fn orientation(tiff: &[u8]) -> Option<u16> {
    let big_endian = match tiff.get(..4)? {
        b"II*\0" => false,
        b"MM\0*" => true,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if big_endian { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    };
    let ifd0 = usize::try_from(u32_at(4)?).ok()?;
    let entries = u16_at(ifd0)?;
    for i in 0..usize::from(entries) {
        let entry = ifd0.checked_add(2)?.checked_add(i.checked_mul(12)?)?;
        if u16_at(entry)? != ORIENTATION {
            continue;
        }
        if u32_at(entry.checked_add(4)?)? != 1 {
            return None;
        }
        // A single value fits the entry's 4-byte value field, left-justified.
        let value = entry.checked_add(8)?;
        return match u16_at(entry.checked_add(2)?)? {
            SHORT => u16_at(value),
            LONG => u32_at(value).and_then(|v| u16::try_from(v).ok()),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TIFF structure with IFD0 holding `entries` (tag, type, count, value field).
    fn tiff(big_endian: bool, entries: &[(u16, u16, u32, [u8; 4])]) -> Vec<u8> {
        let u16b = |v: u16| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        let u32b = |v: u32| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut t = if big_endian { b"MM\0*".to_vec() } else { b"II*\0".to_vec() };
        t.extend_from_slice(&u32b(8));
        t.extend_from_slice(&u16b(u16::try_from(entries.len()).expect("few entries")));
        for &(tag, kind, count, value) in entries {
            t.extend_from_slice(&u16b(tag));
            t.extend_from_slice(&u16b(kind));
            t.extend_from_slice(&u32b(count));
            t.extend_from_slice(&value);
        }
        t.extend_from_slice(&u32b(0));
        t
    }

    fn short(big_endian: bool, v: u16) -> [u8; 4] {
        let b = if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        [b[0], b[1], 0, 0]
    }

    #[test]
    fn reads_short_orientation_in_both_byte_orders() {
        for be in [false, true] {
            for v in 1..=8 {
                let t = tiff(be, &[(0x010F, 2, 4, *b"Cam\0"), (ORIENTATION, SHORT, 1, short(be, v))]);
                assert_eq!(orientation(&t), Some(v), "big endian: {be}");
            }
        }
    }

    #[test]
    fn reads_long_orientation() {
        let t = tiff(true, &[(ORIENTATION, LONG, 1, 6u32.to_be_bytes())]);
        assert_eq!(orientation(&t), Some(6));
    }

    #[test]
    fn absent_or_odd_orientation_is_none() {
        assert_eq!(orientation(&tiff(false, &[(0x010F, 2, 4, *b"Cam\0")])), None);
        assert_eq!(orientation(&tiff(false, &[(ORIENTATION, SHORT, 2, short(false, 6))])), None);
        assert_eq!(orientation(&tiff(false, &[(ORIENTATION, 2, 1, short(false, 6))])), None);
        assert_eq!(orientation(b"XX*\0\x08\0\0\0"), None);
    }

    #[test]
    fn truncated_or_hostile_offsets_are_none() {
        let t = tiff(false, &[(ORIENTATION, SHORT, 1, short(false, 6))]);
        for cut in 0..t.len() - 4 {
            // Cut before the end of the entry: no value, no panic.
            let _ = orientation(&t[..cut]);
        }
        assert_eq!(orientation(&t[..t.len() - 8]), None);
        let mut far = t.clone();
        far[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(orientation(&far), None);
        let mut many = t;
        many[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(orientation(&many), Some(6), "the real entry comes first");
    }

    #[test]
    fn strips_the_app1_prefix() {
        assert_eq!(tiff_of(b"Exif\0\0MM\0*"), b"MM\0*");
        assert_eq!(tiff_of(b"MM\0*"), b"MM\0*");
    }
}
