//! The DICOM JSON model (PS3.18 F.2) of a data set, for WADO-RS metadata.
//!
//! Written here rather than with dicom-json 0.10, which (checked against its
//! source) writes IS and DS values read from a file as JSON strings (PS3.18
//! F.2.3 wants numbers), writes encapsulated pixel data as a bare
//! `{"vr":"OB"}`, inlines every binary value (no bulk data), and panics on
//! some value/VR combinations (`AsNumbers` on dates, times or tags).

use dicom_core::header::Header;
use dicom_core::{DicomValue, PrimitiveValue, Tag, VR};
use dicom_object::InMemDicomObject;
use dicom_object::mem::InMemElement;
use serde_json::{Map, Number, Value};

use crate::un::{decode_un, empty_un_vr};

/// Binary values longer than this are replaced by a BulkDataURI.
pub(crate) const INLINE_BINARY_MAX: usize = 1024;

/// Attributes always sent as bulk data, whatever their size.
fn is_bulk_data_tag(tag: Tag) -> bool {
    let Tag(group, element) = tag;
    matches!(
        (group, element),
        // PixelData, FloatPixelData, DoubleFloatPixelData
        (0x7FE0, 0x0010 | 0x0008 | 0x0009)
            // WaveformData
            | (0x5400, 0x1010)
            // EncapsulatedDocument
            | (0x0042, 0x0011)
            // SpectroscopyData
            | (0x5600, 0x0020)
    )
        // OverlayData in the repeating groups 6000-601E (even)
        || (group & 0xFF01 == 0x6000 && element == 0x3000)
}

/// Binary numbers: inline as JSON numbers, but as bulk data beyond
/// [`INLINE_BINARY_MAX`] bytes, where their JSON would be ten times larger
/// than the value (PS3.18 allows a BulkDataURI for these VRs).
fn is_binary_number_vr(vr: VR) -> bool {
    matches!(vr, VR::US | VR::SS | VR::UL | VR::SL | VR::FL | VR::FD | VR::UV | VR::SV)
}

fn is_binary_vr(vr: VR) -> bool {
    matches!(vr, VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN)
}

/// Elements left out of the metadata: the file meta group (0002,xxxx),
/// group lengths (gggg,0000, retired outside group 0002) and Data Set
/// Trailing Padding (FFFC,FFFC).
fn is_excluded(tag: Tag) -> bool {
    tag.0 == 0x0002 || tag.1 == 0x0000 || tag == Tag(0xFFFC, 0xFFFC)
}

pub(crate) fn dataset_json(obj: &InMemDicomObject, bulk_data_uri: &str) -> Value {
    let mut map = Map::new();
    for elem in obj {
        let tag = elem.tag();
        if is_excluded(tag) {
            continue;
        }
        map.insert(tag_key(tag), element_json(elem, bulk_data_uri));
    }
    Value::Object(map)
}

/// `GGGGEEEE` in upper-case hex.
pub(crate) fn tag_key(Tag(group, element): Tag) -> String {
    format!("{group:04X}{element:04X}")
}

fn element_json(elem: &InMemElement, bulk_data_uri: &str) -> Value {
    let mut vr = elem.vr();
    let mut value = elem.value();
    // A standard attribute stored as UN is written with its real VR.
    let decoded;
    match (vr, value) {
        (VR::UN, DicomValue::Primitive(PrimitiveValue::U8(bytes))) => {
            if let Some((real_vr, real_value)) = decode_un(elem.tag(), bytes) {
                decoded = DicomValue::Primitive(real_value);
                vr = real_vr;
                value = &decoded;
            }
        }
        (VR::UN, DicomValue::Primitive(PrimitiveValue::Empty)) => {
            vr = empty_un_vr(elem.tag()).unwrap_or(vr);
        }
        _ => {}
    }
    let mut map = Map::new();
    map.insert("vr".into(), Value::String(vr.to_string().to_owned()));
    match value {
        DicomValue::Sequence(seq) => {
            let items = seq.items();
            if !items.is_empty() {
                let items = items.iter().map(|item| dataset_json(item, bulk_data_uri)).collect();
                map.insert("Value".into(), Value::Array(items));
            }
        }
        DicomValue::PixelSequence(_) => {
            map.insert("BulkDataURI".into(), Value::String(bulk_data_uri.into()));
        }
        DicomValue::Primitive(PrimitiveValue::Empty) => {}
        DicomValue::Primitive(value) => {
            if is_bulk_data_tag(elem.tag()) || ((is_binary_vr(vr) || is_binary_number_vr(vr)) && byte_len(value) > INLINE_BINARY_MAX) {
                map.insert("BulkDataURI".into(), Value::String(bulk_data_uri.into()));
            } else if is_binary_vr(vr) {
                map.insert("InlineBinary".into(), Value::String(base64(&le_bytes(value))));
            } else if let Some(values) = primitive_values(vr, value) {
                map.insert("Value".into(), Value::Array(values));
            }
        }
    }
    Value::Object(map)
}

/// The `Value` array of a non-binary primitive value; `None` when every
/// value is empty (the attribute is then written without `Value`).
fn primitive_values(vr: VR, value: &PrimitiveValue) -> Option<Vec<Value>> {
    let values: Vec<Value> = match vr {
        VR::PN => strings(value).iter().map(|s| person_name(s)).collect(),
        VR::IS => strings(value).iter().map(|s| number_or_string(s, integer_string)).collect(),
        VR::DS => strings(value).iter().map(|s| number_or_string(s, decimal_string)).collect(),
        VR::AT => match value {
            PrimitiveValue::Tags(tags) => tags.iter().map(|t| Value::String(tag_key(*t))).collect(),
            other => strings(other).iter().map(|s| text_value(s)).collect(),
        },
        VR::US | VR::SS | VR::UL | VR::SL | VR::UV | VR::SV | VR::FL | VR::FD => numbers(value),
        // The string VRs (and SQ holding a primitive value, which dicom-rs
        // does not produce).
        _ => strings(value).iter().map(|s| text_value(trim_for(vr, s))).collect(),
    };
    values.iter().any(|v| !v.is_null()).then_some(values)
}

/// The values of a primitive value as strings (untrimmed).
fn strings(value: &PrimitiveValue) -> Vec<String> {
    match value {
        PrimitiveValue::Empty => Vec::new(),
        PrimitiveValue::Str(s) => vec![s.clone()],
        PrimitiveValue::Strs(values) => values.to_vec(),
        // Text read as bytes (e.g. a VR the decoder did not interpret).
        PrimitiveValue::U8(bytes) => String::from_utf8_lossy(bytes).split('\\').map(str::to_owned).collect(),
        other => other.to_multi_str().into_owned(),
    }
}

/// Removes value padding (PS3.5 6.2): trailing spaces and NULs always,
/// leading spaces where they are insignificant.
fn trim_for(vr: VR, s: &str) -> &str {
    let s = s.trim_end_matches([' ', '\0']);
    match vr {
        VR::AE | VR::AS | VR::CS | VR::DA | VR::DT | VR::TM | VR::UI | VR::LO | VR::SH => s.trim_start_matches(' '),
        _ => s,
    }
}

fn text_value(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { Value::String(s.to_owned()) }
}

/// A PN value as `{"Alphabetic": .., "Ideographic": .., "Phonetic": ..}`,
/// empty component groups left out; `null` if all are empty.
pub(crate) fn person_name(s: &str) -> Value {
    let s = s.trim_end_matches([' ', '\0']);
    let mut map = Map::new();
    for (name, group) in ["Alphabetic", "Ideographic", "Phonetic"].into_iter().zip(s.split('=')) {
        let group = group.trim_end_matches(' ');
        if !group.is_empty() {
            map.insert(name.into(), Value::String(group.to_owned()));
        }
    }
    if map.is_empty() { Value::Null } else { Value::Object(map) }
}

/// A number for a well-formed IS / DS value, the trimmed text for a
/// malformed one (so that nothing is lost), `null` for an empty one.
fn number_or_string(s: &str, parse: fn(&str) -> Option<Number>) -> Value {
    let s = s.trim_matches([' ', '\0']);
    if s.is_empty() {
        return Value::Null;
    }
    match parse(s) {
        Some(n) => Value::Number(n),
        None => Value::String(s.to_owned()),
    }
}

fn integer_string(s: &str) -> Option<Number> {
    s.parse::<i64>().ok().map(Number::from)
}

/// A DS as a JSON number: from its own decimal text when that is valid JSON
/// (serde_json's `arbitrary_precision` keeps the digits, so no binary
/// rounding), otherwise (`+1`, `.5`, `1.`, `007`) the nearest `f64`.
fn decimal_string(s: &str) -> Option<Number> {
    if let Ok(n) = s.parse::<Number>() {
        return Some(n);
    }
    s.parse::<f64>().ok().and_then(Number::from_f64)
}

fn float_number(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Binary numbers as JSON numbers; NaN and infinities (not representable in
/// JSON) as `null`.
fn numbers(value: &PrimitiveValue) -> Vec<Value> {
    match value {
        PrimitiveValue::U8(v) => v.iter().map(|&x| Value::from(x)).collect(),
        PrimitiveValue::I16(v) => v.iter().map(|&x| Value::from(x)).collect(),
        PrimitiveValue::U16(v) => v.iter().map(|&x| Value::from(x)).collect(),
        PrimitiveValue::I32(v) => v.iter().map(|&x| Value::from(x)).collect(),
        PrimitiveValue::U32(v) => v.iter().map(|&x| Value::from(x)).collect(),
        PrimitiveValue::I64(v) => v.iter().map(|&x| Value::from(x)).collect(),
        PrimitiveValue::U64(v) => v.iter().map(|&x| Value::from(x)).collect(),
        // The shortest text that reads back as the same f32 ("0.1", not
        // 0.10000000149011612).
        PrimitiveValue::F32(v) => {
            v.iter().map(|&x| if x.is_finite() { x.to_string().parse::<Number>().map_or_else(|_| float_number(f64::from(x)), Value::Number) } else { Value::Null }).collect()
        }
        PrimitiveValue::F64(v) => v.iter().map(|&x| float_number(x)).collect(),
        other => strings(other).iter().map(|s| number_or_string(s, decimal_string)).collect(),
    }
}

/// The number of bytes of a value, without encoding it.
fn byte_len(value: &PrimitiveValue) -> usize {
    match value {
        PrimitiveValue::Empty => 0,
        PrimitiveValue::U8(v) => v.len(),
        PrimitiveValue::I16(v) => v.len() * 2,
        PrimitiveValue::U16(v) => v.len() * 2,
        PrimitiveValue::I32(v) => v.len() * 4,
        PrimitiveValue::U32(v) => v.len() * 4,
        PrimitiveValue::F32(v) => v.len() * 4,
        PrimitiveValue::Tags(v) => v.len() * 4,
        PrimitiveValue::I64(v) => v.len() * 8,
        PrimitiveValue::U64(v) => v.len() * 8,
        PrimitiveValue::F64(v) => v.len() * 8,
        PrimitiveValue::Str(s) => s.len(),
        PrimitiveValue::Strs(v) => v.iter().map(String::len).sum::<usize>() + v.len().saturating_sub(1),
        other => other.to_str().len(),
    }
}

/// A value's bytes in little endian, the byte order of InlineBinary
/// (PS3.18 F.2.7), whatever the file's transfer syntax.
fn le_bytes(value: &PrimitiveValue) -> Vec<u8> {
    match value {
        PrimitiveValue::Empty => Vec::new(),
        PrimitiveValue::U8(v) => v.to_vec(),
        PrimitiveValue::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::U64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::Tags(v) => v
            .iter()
            .flat_map(|t| {
                let [a, b] = t.0.to_le_bytes();
                let [c, d] = t.1.to_le_bytes();
                [a, b, c, d]
            })
            .collect(),
        other => other.to_str().as_bytes().to_vec(),
    }
}

/// Standard base64 with padding (RFC 4648 section 4).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let symbols = [n >> 18, n >> 12, n >> 6, n];
        for (i, s) in symbols.into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(s & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        // RFC 4648 section 10.
        for (input, expected) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn bulk_data_tags() {
        assert!(is_bulk_data_tag(Tag(0x7FE0, 0x0010)));
        assert!(is_bulk_data_tag(Tag(0x6000, 0x3000)));
        assert!(is_bulk_data_tag(Tag(0x601E, 0x3000)));
        assert!(!is_bulk_data_tag(Tag(0x6001, 0x3000)));
        assert!(!is_bulk_data_tag(Tag(0x6100, 0x3000)));
        assert!(is_bulk_data_tag(Tag(0x5400, 0x1010)));
    }

    #[test]
    fn values() {
        let v = PrimitiveValue::Strs(["12 ".to_owned(), "+3".to_owned(), "1A".to_owned()].into_iter().collect());
        assert_eq!(primitive_values(VR::IS, &v), Some(vec![Value::from(12), Value::from(3), Value::from("1A")]));
        let v = PrimitiveValue::Strs(["0.5 ".to_owned(), ".5".to_owned(), "1e3".to_owned()].into_iter().collect());
        let out: Vec<f64> = primitive_values(VR::DS, &v).unwrap().iter().map(|n| n.as_f64().unwrap()).collect();
        assert_eq!(out, [0.5, 0.5, 1000.0]);
        let v = PrimitiveValue::Strs(["Doe^John=ド^ジ=".to_owned(), String::new()].into_iter().collect());
        assert_eq!(primitive_values(VR::PN, &v), Some(vec![serde_json::json!({"Alphabetic": "Doe^John", "Ideographic": "ド^ジ"}), Value::Null]));
        let v = PrimitiveValue::Strs(["  ".to_owned()].into_iter().collect());
        assert_eq!(primitive_values(VR::LO, &v), None);
        let v = PrimitiveValue::F32([0.1, f32::NAN].into_iter().collect());
        assert_eq!(serde_json::to_string(&primitive_values(VR::FL, &v)).unwrap(), "[0.1,null]");
        let v = PrimitiveValue::Tags([Tag(0x0008, 0x009C)].into_iter().collect());
        assert_eq!(primitive_values(VR::AT, &v), Some(vec![Value::from("0008009C")]));
    }
}
