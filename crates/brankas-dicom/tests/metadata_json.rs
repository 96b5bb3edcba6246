//! The DICOM JSON model (PS3.18 F.2) produced for WADO-RS metadata.

mod common;

use brankas_dicom::{Limits, parse};
use common::*;
use serde_json::{Value, json};

const URI: &str = "https://example.org/dicomweb/studies/1/series/2/instances/3";

fn metadata(file: &str) -> Value {
    parse(&read(file), &Limits::default()).unwrap_or_else(|e| panic!("{file}: {e}")).metadata_json(URI)
}

/// Every key is 8 upper-case hex digits, every attribute has a VR and at
/// most one of Value / InlineBinary / BulkDataURI, recursively.
fn check_shape(obj: &Value) {
    let map = obj.as_object().expect("a data set is an object");
    let mut previous = String::new();
    for (key, attr) in map {
        assert_eq!(key.len(), 8, "{key}");
        assert!(key.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()), "{key}");
        assert!(key.as_str() > previous.as_str(), "keys sorted: {key}");
        previous.clone_from(key);
        assert!(!key.starts_with("0002"), "file meta group left out: {key}");
        assert!(!key.ends_with("0000"), "group lengths left out: {key}");
        let attr = attr.as_object().expect("an attribute is an object");
        let vr = attr["vr"].as_str().expect("vr");
        assert_eq!(vr.len(), 2);
        let payloads = ["Value", "InlineBinary", "BulkDataURI"].iter().filter(|k| attr.contains_key(**k)).count();
        assert!(payloads <= 1, "{key}: {attr:?}");
        assert!(attr.len() == 1 + payloads, "{key}: {attr:?}");
        if let Some(Value::Array(values)) = attr.get("Value") {
            assert!(!values.is_empty(), "{key}: empty Value array");
            for v in values {
                match vr {
                    "SQ" => check_shape(v),
                    "PN" => assert!(v.is_object() || v.is_null(), "{key}"),
                    "US" | "SS" | "UL" | "SL" | "FL" | "FD" | "SV" | "UV" => {
                        assert!(v.is_number() || v.is_null(), "{key}: {v}")
                    }
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn ct_small_has_the_expected_shape() {
    let json = metadata("CT_small.dcm");
    check_shape(&json);
    assert_eq!(json["00100010"], json!({"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}));
    assert_eq!(json["00100020"], json!({"vr": "LO", "Value": ["1CT1"]}));
    assert_eq!(json["00080018"], json!({"vr": "UI", "Value": ["1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"]}));
    assert_eq!(json["00080008"], json!({"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", "AXIAL"]}));
    assert_eq!(json["00080020"], json!({"vr": "DA", "Value": ["20040119"]}));
    // IS and DS are numbers.
    assert_eq!(json["00200013"], json!({"vr": "IS", "Value": [1]}));
    assert_eq!(json["00200011"], json!({"vr": "IS", "Value": [1]}));
    let ds = |key: &str| -> Vec<f64> { json[key]["Value"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
    assert_eq!(json["00280030"]["vr"], "DS");
    assert_eq!(ds("00280030"), [0.661468, 0.661468]);
    assert_eq!(ds("00180050"), [5.0]);
    // DS keeps its decimal text exactly.
    assert_eq!(serde_json::to_string(&json["00180050"]).unwrap(), r#"{"vr":"DS","Value":[5.000000]}"#);
    assert_eq!(serde_json::to_string(&json["00200032"]).unwrap(), r#"{"vr":"DS","Value":[-158.135803,-179.035797,-75.699997]}"#);
    // Binary numbers.
    assert_eq!(json["00280010"], json!({"vr": "US", "Value": [128]}));
    assert_eq!(json["00280100"], json!({"vr": "US", "Value": [16]}));
    // Private FL from the file, as the shortest text of the f32.
    assert_eq!(serde_json::to_string(&json["00431041"]).unwrap(), r#"{"vr":"FL","Value":[3816.2195]}"#);
    // Empty attributes have no Value.
    assert_eq!(json["00080090"], json!({"vr": "PN"}));
    // Pixel data: a bulk data reference, no Value or InlineBinary.
    assert_eq!(json["7FE00010"], json!({"vr": "OW", "BulkDataURI": URI}));
    // Trailing padding is left out.
    assert!(json.get("FFFCFFFC").is_none());
    // Sequences are arrays of data sets.
    assert_eq!(
        json["00101002"],
        json!({"vr": "SQ", "Value": [
            {"00100020": {"vr": "LO", "Value": ["ABCD1234"]}, "00100022": {"vr": "CS", "Value": ["TEXT"]}},
            {"00100020": {"vr": "LO", "Value": ["1234ABCD"]}, "00100022": {"vr": "CS", "Value": ["TEXT"]}}
        ]})
    );
    // Private OB values: inline up to 1024 bytes, bulk data beyond.
    assert!(json["00431028"]["InlineBinary"].as_str().is_some_and(|b| b.starts_with("Q1QwMQ")));
    assert_eq!(json["00431029"], json!({"vr": "OB", "BulkDataURI": URI}));
}

#[test]
fn transfer_syntaxes_give_the_same_metadata() {
    // Same instance in explicit little endian, implicit little endian and
    // explicit big endian: identical metadata (binary values are decoded
    // to numbers; InlineBinary is little endian).
    let reference = metadata("MR_small.dcm");
    check_shape(&reference);
    for file in ["MR_small_implicit.dcm", "MR_small_bigendian.dcm"] {
        assert_eq!(metadata(file), reference, "{file}");
    }
    // Compressed: same but the pixel data is OB.
    let rle = metadata("MR_small_RLE.dcm");
    assert_eq!(rle["7FE00010"], json!({"vr": "OB", "BulkDataURI": URI}));
}

#[test]
fn encapsulated_pixel_data_is_bulk_data() {
    for file in ["JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_gdcm.dcm", "JPEG-lossy.dcm", "SC_rgb_rle_2frame.dcm"] {
        let json = metadata(file);
        check_shape(&json);
        assert_eq!(json["7FE00010"], json!({"vr": "OB", "BulkDataURI": URI}), "{file}");
    }
}

#[test]
fn waveform_data_is_bulk_data_inside_the_sequence() {
    let json = metadata("waveform_ecg.dcm");
    check_shape(&json);
    let items = json["54000100"]["Value"].as_array().expect("WaveformSequence");
    assert!(!items.is_empty());
    for item in items {
        assert_eq!(item["54001010"]["BulkDataURI"], URI);
        assert!(item["54001010"].get("Value").is_none());
        assert!(item["54001010"].get("InlineBinary").is_none());
        // Small attributes of the item stay inline.
        assert!(item["003A0005"]["Value"][0].is_number(), "NumberOfWaveformChannels");
    }
}

#[test]
fn overlay_data_and_small_binary_values() {
    let json = metadata("examples_overlay.dcm");
    check_shape(&json);
    assert_eq!(json["60003000"], json!({"vr": "OW", "BulkDataURI": URI}));
    // Pixel data inside IconImageSequence is bulk data too.
    assert_eq!(json["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"], URI);
    assert_eq!(json["00880200"]["Value"][0]["00280010"], json!({"vr": "US", "Value": [64]}));
    // Empty values within a multi-valued attribute are null.
    assert_eq!(json["00080008"]["Value"][4], Value::Null);
}

#[test]
fn structured_report_sequences() {
    let json = metadata("test-SR.dcm");
    check_shape(&json);
    // ContentSequence, nested.
    let content = json["0040A730"]["Value"].as_array().expect("ContentSequence");
    assert!(content.len() > 1);
    assert!(content.iter().any(|item| item.get("0040A730").is_some_and(|s| s["vr"] == "SQ")));
    // Empty sequences have no Value.
    assert_eq!(json["00081111"], json!({"vr": "SQ"}));
}

#[test]
fn attributes_stored_as_un_get_their_dictionary_vr() {
    // gdcmconv wrote this file with every standard attribute as UN.
    let json = metadata("rtdose_rle.dcm");
    check_shape(&json);
    assert_eq!(json["00080060"], json!({"vr": "CS", "Value": ["RTDOSE"]}));
    assert_eq!(json["00080020"], json!({"vr": "DA", "Value": ["20030805"]}));
    assert_eq!(json["00080090"], json!({"vr": "PN"}));
}

#[test]
fn synthetic_values() {
    let mut extra = Vec::new();
    extra.extend(elem(0x0008, 0x0005, b"CS", b"ISO_IR 192"));
    // AT, multi-valued.
    extra.extend(elem(0x0020, 0x5000, b"AT", &[0x08, 0x00, 0x9C, 0x00, 0xE0, 0x7F, 0x10, 0x00]));
    // PN with an ideographic group (UTF-8).
    extra.extend(elem(0x0010, 0x0010, b"PN", "Yamada^Tarou=山田^太郎".as_bytes()));
    // IS with a sign, DS in forms that are not JSON numbers.
    extra.extend(elem(0x0020, 0x0013, b"IS", b"+7"));
    extra.extend(elem(0x0018, 0x0050, b"DS", b".5\\1.\\007\\-2E2"));
    // A small private OB: InlineBinary.
    extra.extend(elem(0x0009, 0x0010, b"LO", b"ACME"));
    extra.extend(long_header(0x0009, 0x1001, b"OB", 4));
    extra.extend([1, 2, 3, 4]);
    // A large one: bulk data.
    extra.extend(long_header(0x0009, 0x1002, b"OB", 2000));
    extra.extend(vec![0u8; 2000]);
    // Binary numbers: inline when small, bulk data beyond 1024 bytes.
    extra.extend(elem(0x0009, 0x1003, b"US", &[1, 0, 2, 0]));
    extra.extend(elem(0x0009, 0x1004, b"US", &[0; 1026]));
    // EncapsulatedDocument, however small.
    extra.extend(long_header(0x0042, 0x0011, b"OB", 4));
    extra.extend(*b"%PDF");
    let parsed = parse(&minimal_file(&extra), &Limits::default()).unwrap();
    let json = parsed.metadata_json(URI);
    check_shape(&json);
    assert_eq!(json["00205000"]["Value"], json!(["0008009C", "7FE00010"]));
    assert_eq!(json["00100010"]["Value"], json!([{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}]));
    assert_eq!(json["00200013"]["Value"], json!([7]));
    let ds: Vec<f64> = json["00180050"]["Value"].as_array().unwrap().iter().map(|v| v.as_f64().expect("a JSON number")).collect();
    assert_eq!(ds, [0.5, 1.0, 7.0, -200.0]);
    assert_eq!(json["00091001"], json!({"vr": "OB", "InlineBinary": "AQIDBA=="}));
    assert_eq!(json["00091002"], json!({"vr": "OB", "BulkDataURI": URI}));
    assert_eq!(json["00420011"], json!({"vr": "OB", "BulkDataURI": URI}));
    assert_eq!(json["00091003"], json!({"vr": "US", "Value": [1, 2]}));
    assert_eq!(json["00091004"], json!({"vr": "US", "BulkDataURI": URI}));
    assert_eq!(parsed.instance.patient_name.as_deref(), Some("Yamada^Tarou=山田^太郎"));
}
