//! QIDO-RS result rows and their DICOM JSON (PS3.18 6.7.1.2.2).

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Instance;
use crate::json::person_name;

/// One study in a study-level search result.
///
/// Holds patient data: `Debug` shows only the counts and modalities.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StudyRow {
    /// StudyInstanceUID (0020,000D).
    pub study_uid: String,
    /// StudyDate (0008,0020).
    pub study_date: Option<String>,
    /// StudyTime (0008,0030).
    pub study_time: Option<String>,
    /// AccessionNumber (0008,0050).
    pub accession_number: Option<String>,
    /// StudyID (0020,0010).
    pub study_id: Option<String>,
    /// StudyDescription (0008,1030).
    pub study_description: Option<String>,
    /// ReferringPhysicianName (0008,0090), raw PN string.
    pub referring_physician_name: Option<String>,
    /// PatientID (0010,0020).
    pub patient_id: Option<String>,
    /// PatientName (0010,0010), raw PN string.
    pub patient_name: Option<String>,
    /// PatientBirthDate (0010,0030).
    pub patient_birth_date: Option<String>,
    /// PatientSex (0010,0040).
    pub patient_sex: Option<String>,
    /// ModalitiesInStudy (0008,0061): the distinct series modalities, sorted.
    pub modalities_in_study: Vec<String>,
    /// NumberOfStudyRelatedSeries (0020,1206).
    pub number_of_series: u32,
    /// NumberOfStudyRelatedInstances (0020,1208).
    pub number_of_instances: u32,
}

/// One series in a series-level search result.
///
/// `Debug` leaves out the UIDs and the description.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SeriesRow {
    /// StudyInstanceUID (0020,000D).
    pub study_uid: String,
    /// SeriesInstanceUID (0020,000E).
    pub series_uid: String,
    /// Modality (0008,0060).
    pub modality: Option<String>,
    /// SeriesNumber (0020,0011).
    pub series_number: Option<i32>,
    /// SeriesDescription (0008,103E).
    pub series_description: Option<String>,
    /// BodyPartExamined (0018,0015).
    pub body_part_examined: Option<String>,
    /// NumberOfSeriesRelatedInstances (0020,1209).
    pub number_of_instances: u32,
}

/// One instance in an instance-level search result.
///
/// `Debug` leaves out the study, series and SOP instance UIDs.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InstanceRow {
    /// StudyInstanceUID (0020,000D).
    pub study_uid: String,
    /// SeriesInstanceUID (0020,000E).
    pub series_uid: String,
    /// SOPClassUID (0008,0016).
    pub sop_class_uid: String,
    /// SOPInstanceUID (0008,0018).
    pub sop_instance_uid: String,
    /// InstanceNumber (0020,0013).
    pub instance_number: Option<i32>,
    /// NumberOfFrames (0028,0008).
    pub number_of_frames: Option<u32>,
    /// Rows (0028,0010).
    pub rows: Option<u16>,
    /// Columns (0028,0011).
    pub columns: Option<u16>,
}

impl fmt::Debug for StudyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StudyRow")
            .field("modalities_in_study", &self.modalities_in_study)
            .field("number_of_series", &self.number_of_series)
            .field("number_of_instances", &self.number_of_instances)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SeriesRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeriesRow")
            .field("modality", &self.modality)
            .field("series_number", &self.series_number)
            .field("number_of_instances", &self.number_of_instances)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for InstanceRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceRow")
            .field("sop_class_uid", &self.sop_class_uid)
            .field("instance_number", &self.instance_number)
            .field("number_of_frames", &self.number_of_frames)
            .field("rows", &self.rows)
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

/// The values of a multi-valued string (`\`-separated) as the modality list
/// of one instance.
fn modalities(instance: &Instance) -> impl Iterator<Item = &str> {
    instance.modality.as_deref().into_iter().flat_map(|m| m.split('\\')).map(str::trim).filter(|m| !m.is_empty())
}

impl From<&Instance> for StudyRow {
    /// The study of a single instance: one series, one instance.
    fn from(instance: &Instance) -> Self {
        let mut rows = study_rows([instance]);
        rows.pop().unwrap_or_default()
    }
}

impl From<&Instance> for SeriesRow {
    /// The series of a single instance (`number_of_instances` 1); see
    /// [`series_rows`] to aggregate.
    fn from(instance: &Instance) -> Self {
        SeriesRow {
            study_uid: instance.study_uid.clone(),
            series_uid: instance.series_uid.clone(),
            modality: instance.modality.clone(),
            series_number: instance.series_number,
            series_description: instance.series_description.clone(),
            body_part_examined: instance.body_part_examined.clone(),
            number_of_instances: 1,
        }
    }
}

impl From<&Instance> for InstanceRow {
    fn from(instance: &Instance) -> Self {
        InstanceRow {
            study_uid: instance.study_uid.clone(),
            series_uid: instance.series_uid.clone(),
            sop_class_uid: instance.sop_class_uid.clone(),
            sop_instance_uid: instance.sop_instance_uid.clone(),
            instance_number: instance.instance_number,
            number_of_frames: instance.number_of_frames,
            rows: instance.rows,
            columns: instance.columns,
        }
    }
}

fn fill(target: &mut Option<String>, source: &Option<String>) {
    if target.is_none() {
        target.clone_from(source);
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Groups instances into study rows, in order of first appearance.
///
/// Study attributes come from the first instance that has them; series and
/// instances are counted by distinct UID; ModalitiesInStudy is the sorted
/// set of the instances' modalities.
pub fn study_rows<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> Vec<StudyRow> {
    struct Acc<'a> {
        row: StudyRow,
        series: BTreeSet<&'a str>,
        instances: BTreeSet<&'a str>,
        modalities: BTreeSet<&'a str>,
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut studies: Vec<Acc<'a>> = Vec::new();
    for i in instances {
        let at = *index.entry(i.study_uid.as_str()).or_insert_with(|| {
            studies.push(Acc {
                row: StudyRow { study_uid: i.study_uid.clone(), ..StudyRow::default() },
                series: BTreeSet::new(),
                instances: BTreeSet::new(),
                modalities: BTreeSet::new(),
            });
            studies.len() - 1
        });
        let acc = &mut studies[at];
        let row = &mut acc.row;
        fill(&mut row.study_date, &i.study_date);
        fill(&mut row.study_time, &i.study_time);
        fill(&mut row.accession_number, &i.accession_number);
        fill(&mut row.study_id, &i.study_id);
        fill(&mut row.study_description, &i.study_description);
        fill(&mut row.referring_physician_name, &i.referring_physician_name);
        fill(&mut row.patient_id, &i.patient_id);
        fill(&mut row.patient_name, &i.patient_name);
        fill(&mut row.patient_birth_date, &i.patient_birth_date);
        fill(&mut row.patient_sex, &i.patient_sex);
        acc.series.insert(&i.series_uid);
        acc.instances.insert(&i.sop_instance_uid);
        acc.modalities.extend(modalities(i));
    }
    studies
        .into_iter()
        .map(|acc| StudyRow {
            modalities_in_study: acc.modalities.into_iter().map(str::to_owned).collect(),
            number_of_series: count(acc.series.len()),
            number_of_instances: count(acc.instances.len()),
            ..acc.row
        })
        .collect()
}

/// Groups instances into series rows (by study and series UID), in order of
/// first appearance. Series attributes come from the first instance that
/// has them; instances are counted by distinct SOP instance UID.
pub fn series_rows<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> Vec<SeriesRow> {
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    let mut series: Vec<(SeriesRow, BTreeSet<&'a str>)> = Vec::new();
    for i in instances {
        let key = (i.study_uid.as_str(), i.series_uid.as_str());
        let at = *index.entry(key).or_insert_with(|| {
            series.push((SeriesRow::from(i), BTreeSet::new()));
            series.len() - 1
        });
        let (row, sops) = &mut series[at];
        fill(&mut row.modality, &i.modality);
        if row.series_number.is_none() {
            row.series_number = i.series_number;
        }
        fill(&mut row.series_description, &i.series_description);
        fill(&mut row.body_part_examined, &i.body_part_examined);
        sops.insert(&i.sop_instance_uid);
    }
    series.into_iter().map(|(row, sops)| SeriesRow { number_of_instances: count(sops.len()), ..row }).collect()
}

/// Collects DICOM JSON attributes, written sorted by tag.
struct Attributes(Vec<(u32, Value)>);

impl Attributes {
    fn new() -> Self {
        let mut attrs = Attributes(Vec::with_capacity(16));
        // Every string in the response is UTF-8.
        attrs.push(0x0008_0005, "CS", vec![Value::from("ISO_IR 192")]);
        attrs
    }

    fn push(&mut self, tag: u32, vr: &str, values: Vec<Value>) {
        let mut attr = Map::new();
        attr.insert("vr".into(), Value::from(vr));
        if values.iter().any(|v| !v.is_null()) {
            attr.insert("Value".into(), Value::Array(values));
        }
        self.0.push((tag, Value::Object(attr)));
    }

    /// A string attribute; multi-valued strings are split on `\`.
    fn text(&mut self, tag: u32, vr: &str, value: Option<&str>) {
        let values = value.map(|v| v.split('\\').map(|s| if s.is_empty() { Value::Null } else { Value::from(s) }).collect()).unwrap_or_default();
        self.push(tag, vr, values);
    }

    fn name(&mut self, tag: u32, value: Option<&str>) {
        let values = value.map(|v| v.split('\\').map(person_name).collect()).unwrap_or_default();
        self.push(tag, "PN", values);
    }

    fn number(&mut self, tag: u32, vr: &str, value: Option<i64>) {
        self.push(tag, vr, value.map(Value::from).into_iter().collect());
    }

    fn retrieve_url(&mut self, url: Option<&str>) {
        if let Some(url) = url {
            self.push(0x0008_1190, "UR", vec![Value::from(url)]);
        }
    }

    fn finish(mut self) -> Value {
        self.0.sort_by_key(|(tag, _)| *tag);
        let map: Map<String, Value> = self.0.into_iter().map(|(tag, v)| (format!("{tag:08X}"), v)).collect();
        Value::Object(map)
    }
}

impl StudyRow {
    /// The study's QIDO-RS attributes (PS3.18 table 6.7.1-2):
    /// SpecificCharacterSet (always `ISO_IR 192`), StudyDate, StudyTime,
    /// AccessionNumber, ModalitiesInStudy, ReferringPhysicianName,
    /// RetrieveURL (when given), PatientName, PatientID, PatientBirthDate,
    /// PatientSex, StudyInstanceUID, StudyID, NumberOfStudyRelatedSeries and
    /// NumberOfStudyRelatedInstances. Absent values are written as empty
    /// attributes (`{"vr": ..}`).
    pub fn to_json(&self, retrieve_url: Option<&str>) -> Value {
        let mut a = Attributes::new();
        a.text(0x0008_0020, "DA", self.study_date.as_deref());
        a.text(0x0008_0030, "TM", self.study_time.as_deref());
        a.text(0x0008_0050, "SH", self.accession_number.as_deref());
        a.push(0x0008_0061, "CS", self.modalities_in_study.iter().map(|m| Value::from(m.as_str())).collect());
        a.name(0x0008_0090, self.referring_physician_name.as_deref());
        a.retrieve_url(retrieve_url);
        a.name(0x0010_0010, self.patient_name.as_deref());
        a.text(0x0010_0020, "LO", self.patient_id.as_deref());
        a.text(0x0010_0030, "DA", self.patient_birth_date.as_deref());
        a.text(0x0010_0040, "CS", self.patient_sex.as_deref());
        a.text(0x0020_000D, "UI", Some(&self.study_uid));
        a.text(0x0020_0010, "SH", self.study_id.as_deref());
        a.number(0x0020_1206, "IS", Some(i64::from(self.number_of_series)));
        a.number(0x0020_1208, "IS", Some(i64::from(self.number_of_instances)));
        a.finish()
    }
}

impl SeriesRow {
    /// The series' QIDO-RS attributes (PS3.18 table 6.7.1-2a):
    /// SpecificCharacterSet, Modality, SeriesDescription, RetrieveURL (when
    /// given), SeriesInstanceUID, SeriesNumber,
    /// NumberOfSeriesRelatedInstances; also StudyInstanceUID (useful in a
    /// search across studies), and BodyPartExamined when known.
    pub fn to_json(&self, retrieve_url: Option<&str>) -> Value {
        let mut a = Attributes::new();
        a.text(0x0008_0060, "CS", self.modality.as_deref());
        a.text(0x0008_103E, "LO", self.series_description.as_deref());
        a.retrieve_url(retrieve_url);
        if self.body_part_examined.is_some() {
            a.text(0x0018_0015, "CS", self.body_part_examined.as_deref());
        }
        a.text(0x0020_000D, "UI", Some(&self.study_uid));
        a.text(0x0020_000E, "UI", Some(&self.series_uid));
        a.number(0x0020_0011, "IS", self.series_number.map(i64::from));
        a.number(0x0020_1209, "IS", Some(i64::from(self.number_of_instances)));
        a.finish()
    }
}

impl InstanceRow {
    /// The instance's QIDO-RS attributes (PS3.18 table 6.7.1-2b):
    /// SpecificCharacterSet, SOPClassUID, SOPInstanceUID, RetrieveURL (when
    /// given), InstanceNumber, NumberOfFrames, Rows, Columns; also
    /// StudyInstanceUID and SeriesInstanceUID.
    pub fn to_json(&self, retrieve_url: Option<&str>) -> Value {
        let mut a = Attributes::new();
        a.text(0x0008_0016, "UI", Some(&self.sop_class_uid));
        a.text(0x0008_0018, "UI", Some(&self.sop_instance_uid));
        a.retrieve_url(retrieve_url);
        a.text(0x0020_000D, "UI", Some(&self.study_uid));
        a.text(0x0020_000E, "UI", Some(&self.series_uid));
        a.number(0x0020_0013, "IS", self.instance_number.map(i64::from));
        a.number(0x0028_0008, "IS", self.number_of_frames.map(i64::from));
        a.number(0x0028_0010, "US", self.rows.map(i64::from));
        a.number(0x0028_0011, "US", self.columns.map(i64::from));
        a.finish()
    }
}
