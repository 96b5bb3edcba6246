//! Reading standard attributes that a file encodes with VR UN.
//!
//! Some converters write every element of an explicit VR file as UN
//! (pydicom's `rtdose_rle.dcm`, written by gdcmconv, is one). PS3.5 6.2.2:
//! the bytes of a UN value are those of the implicit VR little endian
//! encoding, so for a standard attribute the real VR comes from the data
//! dictionary and the value can be decoded.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{PrimitiveValue, Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

/// The dictionary VR and decoded value of a standard attribute stored as
/// UN, or `None` when that is not possible or not wanted: private or
/// unknown tags, VRs that are not exact in the dictionary (`US or SS`),
/// binary VRs (OB, OW, …, left as they are), sequences, and lengths that do
/// not fit the VR.
pub(crate) fn decode_un(tag: Tag, bytes: &[u8]) -> Option<(VR, PrimitiveValue)> {
    if tag.0 % 2 == 1 {
        return None;
    }
    let VirtualVr::Exact(vr) = StandardDataDictionary.by_tag(tag)?.vr() else {
        return None;
    };
    let value = match vr {
        VR::AE | VR::AS | VR::CS | VR::DA | VR::DS | VR::DT | VR::IS | VR::LO | VR::PN | VR::SH | VR::TM | VR::UC | VR::UI => {
            PrimitiveValue::Strs(text(bytes).split('\\').map(str::to_owned).collect())
        }
        VR::LT | VR::ST | VR::UT | VR::UR => PrimitiveValue::Str(text(bytes)),
        VR::US => PrimitiveValue::U16(words::<2>(bytes)?.map(u16::from_le_bytes).collect()),
        VR::SS => PrimitiveValue::I16(words::<2>(bytes)?.map(i16::from_le_bytes).collect()),
        VR::UL => PrimitiveValue::U32(words::<4>(bytes)?.map(u32::from_le_bytes).collect()),
        VR::SL => PrimitiveValue::I32(words::<4>(bytes)?.map(i32::from_le_bytes).collect()),
        VR::FL => PrimitiveValue::F32(words::<4>(bytes)?.map(f32::from_le_bytes).collect()),
        VR::FD => PrimitiveValue::F64(words::<8>(bytes)?.map(f64::from_le_bytes).collect()),
        VR::UV => PrimitiveValue::U64(words::<8>(bytes)?.map(u64::from_le_bytes).collect()),
        VR::SV => PrimitiveValue::I64(words::<8>(bytes)?.map(i64::from_le_bytes).collect()),
        VR::AT => PrimitiveValue::Tags(words::<4>(bytes)?.map(|[a, b, c, d]| Tag(u16::from_le_bytes([a, b]), u16::from_le_bytes([c, d]))).collect()),
        _ => return None,
    };
    Some((vr, value))
}

/// The dictionary VR of an empty standard attribute stored as UN.
pub(crate) fn empty_un_vr(tag: Tag) -> Option<VR> {
    if tag.0 % 2 == 1 {
        return None;
    }
    match StandardDataDictionary.by_tag(tag)?.vr() {
        VirtualVr::Exact(vr) => Some(vr),
        _ => None,
    }
}

/// UTF-8 if valid, otherwise ISO 8859-1 (the character set is not known
/// here).
fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

fn words<const N: usize>(bytes: &[u8]) -> Option<impl Iterator<Item = [u8; N]> + '_> {
    if !bytes.len().is_multiple_of(N) {
        return None;
    }
    Some(bytes.chunks_exact(N).map(|c| <[u8; N]>::try_from(c).unwrap_or([0; N])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_standard_attributes() {
        let (vr, v) = decode_un(Tag(0x0008, 0x0060), b"RTDOSE").unwrap();
        assert_eq!(vr, VR::CS);
        assert_eq!(v, PrimitiveValue::Strs(["RTDOSE".to_owned()].into_iter().collect()));
        let (vr, v) = decode_un(Tag(0x0028, 0x0011), &[10, 0]).unwrap();
        assert_eq!(vr, VR::US);
        assert_eq!(v, PrimitiveValue::U16([10].into_iter().collect()));
        assert!(decode_un(Tag(0x0028, 0x0011), &[10, 0, 0]).is_none());
        assert!(decode_un(Tag(0x0009, 0x0010), b"X").is_none());
        assert!(decode_un(Tag(0x7FE0, 0x0010), &[0, 0]).is_none());
    }
}
