//! The attributes the server indexes, read from a parsed data set.

use std::borrow::Cow;
use std::fmt;

use dicom_core::{DicomValue, PrimitiveValue, Tag};
use dicom_object::InMemDicomObject;
use serde::{Deserialize, Serialize};

use crate::DicomError;
use crate::uid::{is_valid_uid, trim_uid};
use crate::un::decode_un;

pub(crate) mod tags {
    use dicom_core::Tag;

    pub const SOP_CLASS_UID: Tag = Tag(0x0008, 0x0016);
    pub const SOP_INSTANCE_UID: Tag = Tag(0x0008, 0x0018);
    pub const STUDY_DATE: Tag = Tag(0x0008, 0x0020);
    pub const SERIES_DATE: Tag = Tag(0x0008, 0x0021);
    pub const STUDY_TIME: Tag = Tag(0x0008, 0x0030);
    pub const SERIES_TIME: Tag = Tag(0x0008, 0x0031);
    pub const ACCESSION_NUMBER: Tag = Tag(0x0008, 0x0050);
    pub const MODALITY: Tag = Tag(0x0008, 0x0060);
    pub const REFERRING_PHYSICIAN_NAME: Tag = Tag(0x0008, 0x0090);
    pub const STUDY_DESCRIPTION: Tag = Tag(0x0008, 0x1030);
    pub const SERIES_DESCRIPTION: Tag = Tag(0x0008, 0x103E);
    pub const PATIENT_NAME: Tag = Tag(0x0010, 0x0010);
    pub const PATIENT_ID: Tag = Tag(0x0010, 0x0020);
    pub const ISSUER_OF_PATIENT_ID: Tag = Tag(0x0010, 0x0021);
    pub const PATIENT_BIRTH_DATE: Tag = Tag(0x0010, 0x0030);
    pub const PATIENT_SEX: Tag = Tag(0x0010, 0x0040);
    pub const BODY_PART_EXAMINED: Tag = Tag(0x0018, 0x0015);
    pub const STUDY_INSTANCE_UID: Tag = Tag(0x0020, 0x000D);
    pub const SERIES_INSTANCE_UID: Tag = Tag(0x0020, 0x000E);
    pub const STUDY_ID: Tag = Tag(0x0020, 0x0010);
    pub const SERIES_NUMBER: Tag = Tag(0x0020, 0x0011);
    pub const INSTANCE_NUMBER: Tag = Tag(0x0020, 0x0013);
    pub const NUMBER_OF_FRAMES: Tag = Tag(0x0028, 0x0008);
    pub const ROWS: Tag = Tag(0x0028, 0x0010);
    pub const COLUMNS: Tag = Tag(0x0028, 0x0011);
    pub const WAVEFORM_SEQUENCE: Tag = Tag(0x5400, 0x0100);
    pub const FLOAT_PIXEL_DATA: Tag = Tag(0x7FE0, 0x0008);
    pub const DOUBLE_FLOAT_PIXEL_DATA: Tag = Tag(0x7FE0, 0x0009);
    pub const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
}

/// The identifying UIDs and the study / series / instance attributes of one
/// DICOM instance, as the server indexes and searches them.
///
/// Strings are trimmed of DICOM padding (leading and trailing spaces and
/// NULs, per value); an attribute that is absent or empty is `None`.
/// Multi-valued strings keep their backslash separators. Numbers that do not
/// parse (a malformed IS such as `1A`) are `None` here; the raw value stays
/// in [`Parsed::metadata_json`](crate::Parsed::metadata_json).
///
/// Holds patient data: `Debug` is implemented by hand and shows only the
/// non-identifying fields (SOP class, transfer syntax, modality, image
/// geometry, flags).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// StudyInstanceUID (0020,000D), validated.
    pub study_uid: String,
    /// SeriesInstanceUID (0020,000E), validated.
    pub series_uid: String,
    /// SOPInstanceUID (0008,0018), validated, equal to the file meta
    /// group's MediaStorageSOPInstanceUID.
    pub sop_instance_uid: String,
    /// SOPClassUID (0008,0016), validated.
    pub sop_class_uid: String,
    /// TransferSyntaxUID (0002,0010) of the file, validated.
    pub transfer_syntax: String,
    /// PatientID (0010,0020).
    pub patient_id: Option<String>,
    /// IssuerOfPatientID (0010,0021).
    pub issuer_of_patient_id: Option<String>,
    /// PatientName (0010,0010), the raw PN string (`Family^Given^...`, with
    /// `=`-separated ideographic / phonetic groups if any).
    pub patient_name: Option<String>,
    /// PatientBirthDate (0010,0030), DA.
    pub patient_birth_date: Option<String>,
    /// PatientSex (0010,0040).
    pub patient_sex: Option<String>,
    /// StudyDate (0008,0020), DA.
    pub study_date: Option<String>,
    /// StudyTime (0008,0030), TM.
    pub study_time: Option<String>,
    /// AccessionNumber (0008,0050).
    pub accession_number: Option<String>,
    /// StudyID (0020,0010).
    pub study_id: Option<String>,
    /// StudyDescription (0008,1030).
    pub study_description: Option<String>,
    /// ReferringPhysicianName (0008,0090), raw PN string.
    pub referring_physician_name: Option<String>,
    /// Modality (0008,0060).
    pub modality: Option<String>,
    /// SeriesNumber (0020,0011).
    pub series_number: Option<i32>,
    /// SeriesDescription (0008,103E).
    pub series_description: Option<String>,
    /// BodyPartExamined (0018,0015).
    pub body_part_examined: Option<String>,
    /// SeriesDate (0008,0021), DA.
    pub series_date: Option<String>,
    /// SeriesTime (0008,0031), TM.
    pub series_time: Option<String>,
    /// InstanceNumber (0020,0013).
    pub instance_number: Option<i32>,
    /// NumberOfFrames (0028,0008).
    pub number_of_frames: Option<u32>,
    /// Rows (0028,0010).
    pub rows: Option<u16>,
    /// Columns (0028,0011).
    pub columns: Option<u16>,
    /// Whether the top-level data set has a non-empty PixelData
    /// (7FE0,0010), FloatPixelData (7FE0,0008) or DoubleFloatPixelData
    /// (7FE0,0009).
    pub has_pixel_data: bool,
    /// Whether WaveformSequence (5400,0100) is present.
    pub is_waveform: bool,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("sop_class_uid", &self.sop_class_uid)
            .field("transfer_syntax", &self.transfer_syntax)
            .field("modality", &self.modality)
            .field("number_of_frames", &self.number_of_frames)
            .field("rows", &self.rows)
            .field("columns", &self.columns)
            .field("has_pixel_data", &self.has_pixel_data)
            .field("is_waveform", &self.is_waveform)
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// Reads the attributes from a data set whose structure has been
    /// checked. `transfer_syntax` and `media_storage_sop_instance_uid` come
    /// from the (validated) file meta group.
    pub(crate) fn from_dataset(obj: &InMemDicomObject, transfer_syntax: &str, media_storage_sop_instance_uid: &str) -> Result<Self, DicomError> {
        use tags::*;
        let sop_class_uid = required_uid(obj, SOP_CLASS_UID, "SOPClassUID")?;
        let sop_instance_uid = required_uid(obj, SOP_INSTANCE_UID, "SOPInstanceUID")?;
        let study_uid = required_uid(obj, STUDY_INSTANCE_UID, "StudyInstanceUID")?;
        let series_uid = required_uid(obj, SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
        if sop_instance_uid != media_storage_sop_instance_uid {
            return Err(DicomError::SopInstanceMismatch);
        }
        let has_pixel_data = [PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA].into_iter().any(|tag| {
            obj.get(tag).is_some_and(|e| match e.value() {
                DicomValue::Primitive(v) => !matches!(v, PrimitiveValue::Empty),
                DicomValue::PixelSequence(_) => true,
                DicomValue::Sequence(_) => false,
            })
        });
        Ok(Instance {
            study_uid,
            series_uid,
            sop_instance_uid,
            sop_class_uid,
            transfer_syntax: transfer_syntax.to_owned(),
            patient_id: text(obj, PATIENT_ID),
            issuer_of_patient_id: text(obj, ISSUER_OF_PATIENT_ID),
            patient_name: text(obj, PATIENT_NAME),
            patient_birth_date: text(obj, PATIENT_BIRTH_DATE),
            patient_sex: text(obj, PATIENT_SEX),
            study_date: text(obj, STUDY_DATE),
            study_time: text(obj, STUDY_TIME),
            accession_number: text(obj, ACCESSION_NUMBER),
            study_id: text(obj, STUDY_ID),
            study_description: text(obj, STUDY_DESCRIPTION),
            referring_physician_name: text(obj, REFERRING_PHYSICIAN_NAME),
            modality: text(obj, MODALITY),
            series_number: text(obj, SERIES_NUMBER).and_then(|s| s.parse().ok()),
            series_description: text(obj, SERIES_DESCRIPTION),
            body_part_examined: text(obj, BODY_PART_EXAMINED),
            series_date: text(obj, SERIES_DATE),
            series_time: text(obj, SERIES_TIME),
            instance_number: text(obj, INSTANCE_NUMBER).and_then(|s| s.parse().ok()),
            number_of_frames: text(obj, NUMBER_OF_FRAMES).and_then(|s| s.parse().ok()),
            rows: unsigned_short(obj, ROWS),
            columns: unsigned_short(obj, COLUMNS),
            has_pixel_data,
            is_waveform: obj.get(WAVEFORM_SEQUENCE).is_some(),
        })
    }
}

/// The value of a text attribute: each value trimmed of padding, values
/// joined with `\`; `None` if absent, empty or not a primitive value.
/// Text stored as UN (explicit VR files written by converters) is decoded
/// as UTF-8, lossily.
pub(crate) fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let DicomValue::Primitive(value) = obj.get(tag)?.value() else {
        return None;
    };
    let raw: Cow<'_, str> = match value {
        PrimitiveValue::Empty => return None,
        PrimitiveValue::Str(s) => Cow::Borrowed(s.as_str()),
        PrimitiveValue::Strs(values) => Cow::Owned(values.iter().map(|v| trim_padding(v)).collect::<Vec<_>>().join("\\")),
        PrimitiveValue::U8(bytes) => String::from_utf8_lossy(bytes),
        other => Cow::Owned(other.to_str().into_owned()),
    };
    let trimmed = trim_padding(&raw);
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

pub(crate) fn trim_padding(s: &str) -> &str {
    s.trim_matches([' ', '\0'])
}

fn unsigned_short(obj: &InMemDicomObject, tag: Tag) -> Option<u16> {
    let DicomValue::Primitive(value) = obj.get(tag)?.value() else {
        return None;
    };
    match value {
        PrimitiveValue::U16(v) => v.first().copied(),
        // Stored as UN: little endian (PS3.5 6.2.2).
        PrimitiveValue::U8(bytes) => match decode_un(tag, bytes) {
            Some((_, PrimitiveValue::U16(v))) => v.first().copied(),
            _ => None,
        },
        PrimitiveValue::Empty => None,
        other => other.to_int::<u16>().ok(),
    }
}

fn required_uid(obj: &InMemDicomObject, tag: Tag, keyword: &'static str) -> Result<String, DicomError> {
    let Some(elem) = obj.get(tag) else {
        return Err(DicomError::MissingAttribute(keyword));
    };
    let raw: Cow<'_, str> = match elem.value() {
        DicomValue::Primitive(PrimitiveValue::Empty) => {
            return Err(DicomError::MissingAttribute(keyword));
        }
        DicomValue::Primitive(PrimitiveValue::Str(s)) => Cow::Borrowed(s.as_str()),
        DicomValue::Primitive(PrimitiveValue::Strs(values)) if values.len() == 1 => Cow::Borrowed(values[0].as_str()),
        DicomValue::Primitive(PrimitiveValue::U8(bytes)) => String::from_utf8_lossy(bytes),
        _ => return Err(DicomError::InvalidUid(keyword)),
    };
    let uid = trim_uid(&raw);
    if uid.is_empty() {
        return Err(DicomError::MissingAttribute(keyword));
    }
    if !is_valid_uid(uid) {
        return Err(DicomError::InvalidUid(keyword));
    }
    Ok(uid.to_owned())
}
