//! QIDO-RS: query parsing, matching and result rows.

mod common;

use std::time::{Duration, Instant};

use brankas_dicom::qido::{InstanceRow, Level, MAX_QUERY_BYTES, QidoError, Query, SeriesRow, StudyRow, glob_match, series_rows, study_rows};
use brankas_dicom::{Instance, Limits, parse};
use serde_json::json;

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn query(level: Level, list: &[(&str, &str)]) -> Query {
    Query::parse(level, &pairs(list)).unwrap_or_else(|e| panic!("{list:?}: {e}"))
}

fn refused(level: Level, list: &[(&str, &str)]) -> QidoError {
    Query::parse(level, &pairs(list)).expect_err("refused")
}

fn instance(study: &str, series: &str, sop: &str) -> Instance {
    Instance {
        study_uid: study.into(),
        series_uid: series.into(),
        sop_instance_uid: sop.into(),
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        patient_id: Some("P-001".into()),
        issuer_of_patient_id: None,
        patient_name: Some("Doe^John^^^".into()),
        patient_birth_date: Some("19700101".into()),
        patient_sex: Some("M".into()),
        study_date: Some("20240315".into()),
        study_time: Some("101500".into()),
        accession_number: Some("ACC42".into()),
        study_id: Some("S1".into()),
        study_description: Some("CT Chest".into()),
        referring_physician_name: Some("Smith^Anna=スミス^アンナ".into()),
        modality: Some("CT".into()),
        series_number: Some(3),
        series_description: Some("Axial 5mm".into()),
        body_part_examined: Some("CHEST".into()),
        series_date: Some("20240315".into()),
        series_time: None,
        instance_number: Some(7),
        number_of_frames: None,
        rows: Some(512),
        columns: Some(512),
        has_pixel_data: true,
        is_waveform: false,
    }
}

fn study() -> StudyRow {
    StudyRow::from(&instance("1.2.3", "1.2.3.1", "1.2.3.1.1"))
}

#[test]
fn attribute_names_by_keyword_or_tag() {
    let by_keyword = query(Level::Study, &[("PatientID", "P-001")]);
    let by_tag = query(Level::Study, &[("00100020", "P-001")]);
    let other = query(Level::Study, &[("00100020", "P-002")]);
    assert!(by_keyword.matches_study(&study()));
    assert!(by_tag.matches_study(&study()));
    assert!(!other.matches_study(&study()));
    assert!(query(Level::Study, &[("0020000d", "1.2.3")]).matches_study(&study()));
    assert_eq!(by_tag.attributes().collect::<Vec<_>>(), [("PatientID", 0x0010_0020)]);
}

#[test]
fn unknown_and_unsupported_parameters_are_refused_by_name() {
    let err = refused(Level::Study, &[("PatientWeight", "Secret^Value")]);
    assert_eq!(err, QidoError::UnsupportedParameter("PatientWeight".into()));
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("PatientWeight") && !shown.contains("Secret"));
    // Attributes of a lower level than the search's.
    for (level, name) in [
        (Level::Study, "SeriesDescription"),
        (Level::Study, "SeriesInstanceUID"),
        (Level::Study, "SOPInstanceUID"),
        (Level::Series, "InstanceNumber"),
        (Level::Series, "SOPClassUID"),
    ] {
        assert_eq!(refused(level, &[(name, "1")]), QidoError::UnsupportedParameter(name.into()), "{level:?} {name}");
    }
    // SeriesDate: series rows have no date.
    assert_eq!(refused(Level::Series, &[("SeriesDate", "20240101")]), QidoError::UnsupportedParameter("SeriesDate".into()));
    // Sequence paths, misspelt keywords, unknown tags.
    for name in ["00081115.0020000E", "patientid", "00191010", "orderby"] {
        assert_eq!(refused(Level::Series, &[(name, "1")]), QidoError::UnsupportedParameter(name.into()));
    }
    // Long or odd names are cut and cleaned in errors.
    let long = format!("X{}\n", "y".repeat(200));
    match refused(Level::Study, &[(&long, "v")]) {
        QidoError::UnsupportedParameter(name) => {
            assert_eq!(name.chars().count(), 64);
            assert!(!name.contains('\n'));
        }
        other => panic!("{other:?}"),
    }
    // The server's own `patient` parameter is ignored.
    assert!(query(Level::Study, &[("patient", "Patient/123")]).matches_study(&study()));
}

#[test]
fn limit_offset_fuzzymatching() {
    let q = query(Level::Study, &[("limit", "25"), ("offset", "50"), ("fuzzymatching", "true")]);
    assert_eq!((q.limit(), q.offset(), q.fuzzy_matching()), (Some(25), 50, true));
    let q = query(Level::Study, &[]);
    assert_eq!((q.limit(), q.offset(), q.fuzzy_matching()), (None, 0, false));
    assert!(!query(Level::Study, &[("fuzzymatching", "false")]).fuzzy_matching());
    for (name, value) in [("limit", "-1"), ("limit", "+5"), ("limit", ""), ("limit", "ten"), ("offset", "99999999999"), ("fuzzymatching", "yes")] {
        assert_eq!(refused(Level::Study, &[(name, value)]), QidoError::InvalidValue(name.into()), "{name}={value}");
    }
    assert_eq!(refused(Level::Study, &[("limit", "1"), ("limit", "2")]), QidoError::DuplicateParameter("limit".into()));
    // Fuzzy matching is not performed: PN matching stays literal.
    let q = query(Level::Study, &[("fuzzymatching", "true"), ("PatientName", "Jon")]);
    assert!(!q.matches_study(&study()));
}

#[test]
fn includefield() {
    let q = query(Level::Study, &[("includefield", "PatientAge,00081030"), ("includefield", "00101010")]);
    let include = q.include_fields();
    assert!(!include.is_all());
    assert_eq!(include.tags().collect::<Vec<_>>(), [0x0008_1030, 0x0010_1010]);
    assert!(include.contains(0x0010_1010));
    assert!(!include.contains(0x0010_0010));
    let q = query(Level::Series, &[("includefield", "all")]);
    assert!(q.include_fields().is_all() && q.include_fields().contains(0x0008_0060));
    assert_eq!(refused(Level::Study, &[("includefield", "PatientAge,NoSuchKeyword")]), QidoError::InvalidValue("includefield".into()));
}

#[test]
fn uid_lists() {
    let row = study();
    assert!(query(Level::Study, &[("StudyInstanceUID", "1.2.3")]).matches_study(&row));
    assert!(query(Level::Study, &[("StudyInstanceUID", "9.9,1.2.3")]).matches_study(&row));
    assert!(query(Level::Study, &[("StudyInstanceUID", "9.9\\1.2.3")]).matches_study(&row));
    assert!(!query(Level::Study, &[("StudyInstanceUID", "9.9,1.2.33")]).matches_study(&row));
    // UIDs never match as wildcards or prefixes.
    assert!(matches!(refused(Level::Study, &[("StudyInstanceUID", "1.2.*")]), QidoError::InvalidValue(_)));
    assert!(matches!(refused(Level::Study, &[("StudyInstanceUID", "1.2.3,,1.2.4")]), QidoError::InvalidValue(_)));
    // At most 1000 UIDs.
    let thousand: Vec<String> = (0..1000).map(|i| format!("1.2.{i}.9")).collect();
    let q = query(Level::Study, &[("StudyInstanceUID", &thousand.join(","))]);
    assert!(!q.matches_study(&row));
    let q = query(Level::Study, &[("StudyInstanceUID", &format!("{},1.2.3", thousand[..999].join(",")))]);
    assert!(q.matches_study(&row));
    let too_many: Vec<String> = (0..1001).map(|i| format!("1.2.{i}")).collect();
    assert_eq!(refused(Level::Study, &[("StudyInstanceUID", &too_many.join(","))]), QidoError::TooManyValues("StudyInstanceUID".into()));
    // Series and instance levels.
    let i = instance("1.2.3", "1.2.3.1", "1.2.3.1.1");
    let series = SeriesRow::from(&i);
    let inst = InstanceRow::from(&i);
    let q = query(Level::Series, &[("StudyInstanceUID", "1.2.3"), ("SeriesInstanceUID", "1.2.3.1,1.2.3.2")]);
    assert!(q.matches_series(&series));
    let q = query(Level::Instance, &[("SOPInstanceUID", "1.2.3.1.1"), ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2")]);
    assert!(q.matches_instance(&inst));
    assert!(!query(Level::Instance, &[("SOPInstanceUID", "1.2.3.1.2")]).matches_instance(&inst));
}

#[test]
fn date_matching() {
    let row = study(); // StudyDate 20240315, PatientBirthDate 19700101
    for (value, expected) in [
        ("20240315", true),
        ("20240316", false),
        ("20240301-20240331", true),
        ("20240315-20240315", true),
        ("20240316-20240331", false),
        ("-20240315", true),
        ("-20240314", false),
        ("20240315-", true),
        ("20240316-", false),
    ] {
        assert_eq!(query(Level::Study, &[("StudyDate", value)]).matches_study(&row), expected, "StudyDate={value}");
    }
    assert!(query(Level::Study, &[("PatientBirthDate", "-19701231")]).matches_study(&row));
    for value in ["2024", "2024-03-15", "20241315", "-", "20240331-20240301", "2024031*"] {
        assert_eq!(refused(Level::Study, &[("StudyDate", value)]), QidoError::InvalidValue("StudyDate".into()), "{value}");
    }
    // A study without a date matches only universal matching.
    let undated = StudyRow { study_date: None, ..study() };
    assert!(!query(Level::Study, &[("StudyDate", "19000101-")]).matches_study(&undated));
    assert!(query(Level::Study, &[("StudyDate", "")]).matches_study(&undated));
}

/// A search matches attributes of its level and of the levels above; each
/// row checks the attributes it has.
#[test]
fn relational_queries() {
    let i = instance("1.2.3", "1.2.3.1", "1.2.3.1.1");
    let (study, series, inst) = (StudyRow::from(&i), SeriesRow::from(&i), InstanceRow::from(&i));
    // A series search on a patient's name and a modality.
    let q = query(Level::Series, &[("PatientName", "doe*"), ("Modality", "CT")]);
    assert!(q.matches_study(&study) && q.matches_series(&series));
    let q = query(Level::Series, &[("PatientName", "roe*"), ("Modality", "CT")]);
    assert!(!q.matches_study(&study) && q.matches_series(&series));
    let q = query(Level::Series, &[("PatientName", "doe*"), ("Modality", "MR")]);
    assert!(q.matches_study(&study) && !q.matches_series(&series));
    // In a series search, Modality is the series' own, not checked on the
    // study (whose ModalitiesInStudy could hold it through another series).
    let mut mixed = study.clone();
    mixed.modalities_in_study = vec!["MR".into()];
    assert!(query(Level::Series, &[("Modality", "CT")]).matches_study(&mixed));
    // An instance search with study, series and instance attributes.
    let q = query(Level::Instance, &[("StudyDate", "20240101-"), ("SeriesNumber", "3"), ("InstanceNumber", "7")]);
    assert!(q.matches_study(&study) && q.matches_series(&series) && q.matches_instance(&inst));
    let q = query(Level::Instance, &[("SeriesNumber", "4"), ("InstanceNumber", "7")]);
    assert!(!q.matches_series(&series) && q.matches_instance(&inst));
    // UIDs are checked on every row that has them.
    let q = query(Level::Instance, &[("StudyInstanceUID", "9.9")]);
    assert!(!q.matches_study(&study) && !q.matches_series(&series) && !q.matches_instance(&inst));
}

#[test]
fn wildcard_and_name_matching() {
    let row = study(); // PatientName "Doe^John^^^"
    for (value, expected) in [
        ("Doe^John", true), // trailing empty components ignored
        ("doe^JOHN", true), // PN: case-insensitive
        ("Doe", false),     // single value matching is whole-value
        ("Doe*", true),
        ("D?e^J*", true),
        ("*john", true),
        ("*", true),
        ("Smith*", false),
    ] {
        assert_eq!(query(Level::Study, &[("PatientName", value)]).matches_study(&row), expected, "PatientName={value}");
    }
    // Each component group of a name is matched too.
    assert!(query(Level::Study, &[("ReferringPhysicianName", "スミス*")]).matches_study(&row));
    assert!(query(Level::Study, &[("ReferringPhysicianName", "smith^anna")]).matches_study(&row));
    // Other text is case-sensitive.
    assert!(query(Level::Study, &[("StudyDescription", "CT*")]).matches_study(&row));
    assert!(!query(Level::Study, &[("StudyDescription", "ct*")]).matches_study(&row));
    assert!(query(Level::Study, &[("AccessionNumber", "ACC??")]).matches_study(&row));
    assert!(query(Level::Study, &[("StudyID", "S1")]).matches_study(&row));
    // Absent values: only universal matching matches.
    let anonymous = StudyRow { patient_name: None, ..study() };
    assert!(query(Level::Study, &[("PatientName", "*")]).matches_study(&anonymous));
    assert!(query(Level::Study, &[("PatientName", "")]).matches_study(&anonymous));
    assert!(!query(Level::Study, &[("PatientName", "?*")]).matches_study(&anonymous));
    // Modalities: a list, against every modality of the study.
    let mut mixed = study();
    mixed.modalities_in_study = vec!["CT".into(), "SR".into()];
    for (name, value, expected) in
        [("ModalitiesInStudy", "SR", true), ("ModalitiesInStudy", "MR,SR", true), ("ModalitiesInStudy", "MR", false), ("ModalitiesInStudy", "S?", true), ("Modality", "CT", true)]
    {
        assert_eq!(query(Level::Study, &[(name, value)]).matches_study(&mixed), expected, "{name}={value}");
    }
    let series = SeriesRow::from(&instance("1.2.3", "1.2.3.1", "1.2.3.1.1"));
    assert!(query(Level::Series, &[("Modality", "MR,CT")]).matches_series(&series));
    assert!(!query(Level::Series, &[("Modality", "ct")]).matches_series(&series));
    assert!(query(Level::Series, &[("SeriesDescription", "Axial*")]).matches_series(&series));
    assert!(query(Level::Series, &[("SeriesNumber", "3")]).matches_series(&series));
    assert!(!query(Level::Series, &[("SeriesNumber", "4")]).matches_series(&series));
    assert!(query(Level::Series, &[("BodyPartExamined", "CHEST")]).matches_series(&series));
    assert!(matches!(refused(Level::Series, &[("SeriesNumber", "three")]), QidoError::InvalidValue(_)));
    let inst = InstanceRow::from(&instance("1.2.3", "1.2.3.1", "1.2.3.1.1"));
    assert!(query(Level::Instance, &[("InstanceNumber", "7")]).matches_instance(&inst));
    // All attributes must match.
    let q = query(Level::Study, &[("PatientID", "P-001"), ("PatientName", "Roe*")]);
    assert!(!q.matches_study(&row));
    assert_eq!(refused(Level::Study, &[("PatientID", "a"), ("00100020", "b")]), QidoError::DuplicateParameter("00100020".into()));
}

#[test]
fn hostile_wildcards_run_in_linear_time() {
    let text = "a".repeat(1_000_000);
    let start = Instant::now();
    assert!(!glob_match("*a*a*a*a*a*a*a*a*b", &text));
    assert!(glob_match("*a*a*a*a*a*a*a*a*", &text));
    assert!(!glob_match("*?*?*?*?*?*?*?*b", &text));
    assert!(!glob_match(&format!("{}b", "*a".repeat(200)), &text[..20_000]));
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    // Through a query on a long stored value.
    let long_name = StudyRow { patient_name: Some("a".repeat(60_000)), ..study() };
    let start = Instant::now();
    let q = query(Level::Study, &[("PatientName", "*a*a*a*a*a*a*a*a*b")]);
    assert!(!q.matches_study(&long_name));
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn query_size_is_bounded() {
    let big = "a".repeat(MAX_QUERY_BYTES);
    assert_eq!(refused(Level::Study, &[("PatientID", &big)]), QidoError::TooLarge);
    assert!(Query::parse(Level::Study, &pairs(&[("PatientID", &big[..60_000])])).is_ok());
}

#[test]
fn query_debug_shows_no_values() {
    let q = query(Level::Study, &[("PatientName", "Secret^Name"), ("PatientID", "ID-777"), ("limit", "5")]);
    let debug = format!("{q:?}");
    assert!(debug.contains("PatientName") && debug.contains("PatientID"), "{debug}");
    assert!(!debug.contains("Secret") && !debug.contains("777"), "{debug}");
    let row = format!("{:?}", study());
    assert!(!row.contains("Doe") && !row.contains("P-001") && !row.contains("1.2.3"), "{row}");
}

#[test]
fn rows_from_instances() {
    let a1 = instance("1.2.3", "1.2.3.1", "1.2.3.1.1");
    let a2 = instance("1.2.3", "1.2.3.1", "1.2.3.1.2");
    let mut a3 = instance("1.2.3", "1.2.3.2", "1.2.3.2.1");
    a3.modality = Some("SR".into());
    a3.accession_number = None;
    let mut b1 = instance("1.2.4", "1.2.4.1", "1.2.4.1.1");
    b1.modality = None;
    b1.study_description = None;
    // The same instance stored twice counts once.
    let all = [&a1, &a2, &a3, &a2, &b1];
    let studies = study_rows(all);
    assert_eq!(studies.len(), 2);
    assert_eq!(studies[0].study_uid, "1.2.3");
    assert_eq!(studies[0].modalities_in_study, ["CT", "SR"]);
    assert_eq!((studies[0].number_of_series, studies[0].number_of_instances), (2, 3));
    assert_eq!(studies[0].accession_number.as_deref(), Some("ACC42"));
    assert_eq!(studies[1].modalities_in_study, Vec::<String>::new());
    assert_eq!((studies[1].number_of_series, studies[1].number_of_instances), (1, 1));
    let series = series_rows(all);
    assert_eq!(series.len(), 3);
    assert_eq!(series[0].number_of_instances, 2);
    assert_eq!(series[1].modality.as_deref(), Some("SR"));
    assert_eq!(SeriesRow::from(&a1).number_of_instances, 1);
}

#[test]
fn study_json() {
    let row = study();
    let json = row.to_json(Some("https://example.org/dicomweb/studies/1.2.3"));
    assert_eq!(
        json,
        json!({
            "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
            "00080020": {"vr": "DA", "Value": ["20240315"]},
            "00080030": {"vr": "TM", "Value": ["101500"]},
            "00080050": {"vr": "SH", "Value": ["ACC42"]},
            "00080061": {"vr": "CS", "Value": ["CT"]},
            "00080090": {"vr": "PN", "Value": [{"Alphabetic": "Smith^Anna", "Ideographic": "スミス^アンナ"}]},
            "00081190": {"vr": "UR", "Value": ["https://example.org/dicomweb/studies/1.2.3"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John^^^"}]},
            "00100020": {"vr": "LO", "Value": ["P-001"]},
            "00100030": {"vr": "DA", "Value": ["19700101"]},
            "00100040": {"vr": "CS", "Value": ["M"]},
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
            "00200010": {"vr": "SH", "Value": ["S1"]},
            "00201206": {"vr": "IS", "Value": [1]},
            "00201208": {"vr": "IS", "Value": [1]}
        })
    );
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "attributes in tag order");
    // Absent values are empty attributes; no RetrieveURL without a URL.
    let bare = StudyRow { study_uid: "1.2.5".into(), ..StudyRow::default() };
    let json = bare.to_json(None);
    assert_eq!(json["00100010"], json!({"vr": "PN"}));
    assert_eq!(json["00080061"], json!({"vr": "CS"}));
    assert_eq!(json["00201206"], json!({"vr": "IS", "Value": [0]}));
    assert!(json.get("00081190").is_none());
}

#[test]
fn series_and_instance_json() {
    let i = instance("1.2.3", "1.2.3.1", "1.2.3.1.1");
    assert_eq!(
        SeriesRow::from(&i).to_json(Some("https://x/studies/1.2.3/series/1.2.3.1")),
        json!({
            "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "0008103E": {"vr": "LO", "Value": ["Axial 5mm"]},
            "00081190": {"vr": "UR", "Value": ["https://x/studies/1.2.3/series/1.2.3.1"]},
            "00180015": {"vr": "CS", "Value": ["CHEST"]},
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
            "0020000E": {"vr": "UI", "Value": ["1.2.3.1"]},
            "00200011": {"vr": "IS", "Value": [3]},
            "00201209": {"vr": "IS", "Value": [1]}
        })
    );
    assert_eq!(
        InstanceRow::from(&i).to_json(None),
        json!({
            "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
            "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
            "00080018": {"vr": "UI", "Value": ["1.2.3.1.1"]},
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
            "0020000E": {"vr": "UI", "Value": ["1.2.3.1"]},
            "00200013": {"vr": "IS", "Value": [7]},
            "00280008": {"vr": "IS"},
            "00280010": {"vr": "US", "Value": [512]},
            "00280011": {"vr": "US", "Value": [512]}
        })
    );
}

#[test]
fn rows_from_real_files() {
    let parsed: Vec<Instance> = ["MR_small.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_dcmtk_+eb+cr.dcm"]
        .iter()
        .map(|f| parse(&common::read(f), &Limits::default()).unwrap().instance)
        .collect();
    let studies = study_rows(&parsed);
    // The three SC files share one study and one series (and two share a
    // SOP instance UID).
    assert_eq!(studies.len(), 2);
    assert_eq!(studies[1].patient_name.as_deref(), Some("Lestrade^G"));
    assert_eq!((studies[1].number_of_series, studies[1].number_of_instances), (1, 2));
    assert_eq!(studies[1].modalities_in_study, ["OT"]);
    let q = query(Level::Study, &[("PatientName", "lestrade*"), ("StudyDate", "20170101-")]);
    assert!(q.matches_study(&studies[1]) && !q.matches_study(&studies[0]));
    let row = InstanceRow::from(&parsed[1]);
    assert_eq!(row.to_json(None)["00280008"], json!({"vr": "IS", "Value": [2]}));
}
