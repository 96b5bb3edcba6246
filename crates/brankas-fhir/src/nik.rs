//! Indonesian national identity numbers (NIK, *Nomor Induk Kependudukan*).
//!
//! A NIK is 16 digits: `PP RR DD ddmmyy ssss` — province, regency (kabupaten/
//! kota), district (kecamatan), the date of birth with 40 added to the day for
//! women, and a serial number. The checks here catch typos and swapped fields
//! before a NIK is used as an identity key; they cannot prove that a NIK was
//! actually issued.

use serde_json::Value;

use crate::normalize::normalize_identifier_value;
use crate::validate::days_in_month;

/// `Identifier.system` for NIK, as used by SATUSEHAT (Kemenkes).
pub const NIK_SYSTEM: &str = "https://fhir.kemkes.go.id/id/nik";

/// `Identifier.system` for the SATUSEHAT patient number (IHS number).
pub const IHS_SYSTEM: &str = "https://fhir.kemkes.go.id/id/ihs-number";

/// `Identifier.system` for the mother's NIK on a newborn without one of its own (SATUSEHAT).
pub const NIK_IBU_SYSTEM: &str = "https://fhir.kemkes.go.id/id/nik-ibu";

/// `Meta.tag` system of the server's data-quality flags: a Patient whose NIK disagrees with
/// its birth date or gender is stored, tagged with the disagreement (see [`NikWarning`]).
pub const DATA_QUALITY_SYSTEM: &str = "https://brankas.id/fhir/CodeSystem/data-quality";

/// Why a NIK cannot be an issued NIK: refused. Messages never include the NIK itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum NikError {
    /// Not exactly 16 characters.
    #[error("NIK must be exactly 16 digits long")]
    Length,
    /// Contains something other than ASCII digits.
    #[error("NIK must contain only digits")]
    NotDigits,
    /// The region part is invalid: the province code is not an Indonesian
    /// province, or the regency or district code is `00`.
    #[error("NIK region code (province, regency or district) is not valid")]
    Province,
    /// The encoded birth date does not exist in either 19YY or 20YY.
    #[error("NIK birth date part is not a valid date")]
    BirthDate,
    /// The serial number is `0000`.
    #[error("NIK serial number is not valid")]
    Serial,
}

/// Where a well-formed NIK disagrees with the Patient that holds it: accepted, flagged.
///
/// Real registrations disagree for ordinary reasons: a NIK keeps the date it was issued with
/// after a birth date is corrected, registries hold placeholder dates, SATUSEHAT's own sandbox
/// identities do not encode their birth dates. Refusing them would keep the patient's record
/// out; the server stores the Patient, answers with a warning and tags it
/// ([`DATA_QUALITY_SYSTEM`], [`NikWarning::code`]) so that the registration can be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum NikWarning {
    /// The encoded birth date disagrees with `Patient.birthDate`.
    #[error("NIK birth date does not match the patient's birth date")]
    BirthDateMismatch,
    /// The +40 female day rule disagrees with `Patient.gender`.
    #[error("NIK gender encoding does not match the patient's gender")]
    GenderMismatch,
}

impl NikWarning {
    /// The code of the flag in [`DATA_QUALITY_SYSTEM`].
    pub fn code(self) -> &'static str {
        match self {
            Self::BirthDateMismatch => "nik-birthdate-mismatch",
            Self::GenderMismatch => "nik-gender-mismatch",
        }
    }

    /// The element the warning is about, as a FHIRPath expression.
    pub fn expression(self) -> &'static str {
        match self {
            Self::BirthDateMismatch => "Patient.birthDate",
            Self::GenderMismatch => "Patient.gender",
        }
    }

    /// The warning whose flag has this code.
    pub fn from_code(code: &str) -> Option<Self> {
        [Self::BirthDateMismatch, Self::GenderMismatch].into_iter().find(|w| w.code() == code)
    }
}

/// The fields decoded from a valid NIK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NikInfo {
    /// Province code (e.g. 31 = DKI Jakarta).
    pub province: u8,
    /// Regency/city code within the province, 1..=99.
    pub regency: u8,
    /// District code within the regency, 1..=99.
    pub district: u8,
    /// Real day of birth, 1..=31 (the +40 for women already removed).
    pub day: u8,
    /// Month of birth, 1..=12.
    pub month: u8,
    /// Last two digits of the birth year (the century is not encoded).
    pub year2: u8,
    /// Whether the day was encoded with the +40 female offset.
    pub female: bool,
    /// Serial number, 1..=9999.
    pub serial: u16,
}

/// Indonesian province codes (Kemendagri). 91-97 is the Papua region,
/// including the codes of the provinces split off in 2022, so NIKs issued
/// there are not rejected.
fn is_province(code: u8) -> bool {
    matches!(code, 11..=19 | 21 | 31..=36 | 51..=53 | 61..=65 | 71..=76 | 81 | 82 | 91..=97)
}

/// Parses and checks a NIK. The input is taken exactly (no trimming).
///
/// ```
/// use brankas_fhir::{parse_nik, NikError};
/// let info = parse_nik("3174054508900003").unwrap();
/// assert_eq!((info.province, info.day, info.month, info.year2, info.female), (31, 5, 8, 90, true));
/// assert_eq!(parse_nik("3174050508900003").unwrap().female, false);
/// assert_eq!(parse_nik("0074050508900003"), Err(NikError::Province));
/// assert_eq!(parse_nik("317405300290000"), Err(NikError::Length));
/// ```
pub fn parse_nik(nik: &str) -> Result<NikInfo, NikError> {
    if nik.chars().count() != 16 {
        return Err(NikError::Length);
    }
    if !nik.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NikError::NotDigits);
    }
    // All 16 bytes are ASCII digits from here on.
    let d = nik.as_bytes();
    let two = |i: usize| (d[i] - b'0') * 10 + (d[i + 1] - b'0');
    let (province, regency, district) = (two(0), two(2), two(4));
    if !is_province(province) || regency == 0 || district == 0 {
        return Err(NikError::Province);
    }
    let (raw_day, month, year2) = (two(6), two(8), two(10));
    let (day, female) = match raw_day {
        1..=31 => (raw_day, false),
        41..=71 => (raw_day - 40, true),
        _ => return Err(NikError::BirthDate),
    };
    let exists = |century: u32| {
        let y = century + u32::from(year2);
        u32::from(day) <= days_in_month(y, u32::from(month))
    };
    if !(1..=12).contains(&month) || !(exists(1900) || exists(2000)) {
        return Err(NikError::BirthDate);
    }
    let serial = d[12..].iter().fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    if serial == 0 {
        return Err(NikError::Serial);
    }
    Ok(NikInfo { province, regency, district, day, month, year2, female, serial })
}

/// Checks the NIK identifiers of a Patient: its own ([`NIK_SYSTEM`]) against the NIK rules
/// and against the patient's `birthDate` and `gender`, the mother's on a newborn
/// ([`NIK_IBU_SYSTEM`]) against the NIK rules only.
///
/// A NIK that cannot have been issued (length, digits, region, date part, serial) is an
/// error. A well-formed NIK that disagrees with the patient is a [`NikWarning`]: if
/// `birthDate` is present, its parts that are given (year, month, day) must match the NIK's;
/// if `gender` is `female` or `male`, it must match the +40 day rule. Values are trimmed with
/// [`normalize_identifier_value`]. The warnings come sorted, each once.
///
/// ```
/// use brankas_fhir::{NikWarning, check_patient_nik};
/// let p = serde_json::json!({"resourceType": "Patient", "gender": "male", "birthDate": "1990-08-05",
///   "identifier": [{"system": brankas_fhir::NIK_SYSTEM, "value": "3174050508900003"}]});
/// assert_eq!(check_patient_nik(&p), Ok(vec![]));
/// let p = serde_json::json!({"resourceType": "Patient", "gender": "male", "birthDate": "1992-01-09",
///   "identifier": [{"system": brankas_fhir::NIK_SYSTEM, "value": "9271060312000001"}]});
/// assert_eq!(check_patient_nik(&p), Ok(vec![NikWarning::BirthDateMismatch]));
/// ```
pub fn check_patient_nik(patient: &Value) -> Result<Vec<NikWarning>, NikError> {
    let mut warnings = Vec::new();
    let Some(ids) = patient.get("identifier").and_then(Value::as_array) else {
        return Ok(warnings);
    };
    let birth = patient.get("birthDate").and_then(Value::as_str).map(birth_parts);
    let female = match patient.get("gender").and_then(Value::as_str) {
        Some("female") => Some(true),
        Some("male") => Some(false),
        _ => None,
    };
    for id in ids {
        let own = match id.get("system").and_then(Value::as_str) {
            Some(NIK_SYSTEM) => true,
            Some(NIK_IBU_SYSTEM) => false,
            _ => continue,
        };
        let Some(value) = id.get("value").and_then(Value::as_str) else {
            continue;
        };
        let info = parse_nik(&normalize_identifier_value(value))?;
        if !own {
            continue;
        }
        if let Some((year, month, day)) = birth {
            let year_ok = year.is_none_or(|y| y % 100 == u32::from(info.year2));
            let month_ok = month.is_none_or(|m| m == info.month);
            let day_ok = day.is_none_or(|d| d == info.day);
            if !(year_ok && month_ok && day_ok) {
                warnings.push(NikWarning::BirthDateMismatch);
            }
        }
        if female.is_some_and(|f| f != info.female) {
            warnings.push(NikWarning::GenderMismatch);
        }
    }
    warnings.sort_unstable();
    warnings.dedup();
    Ok(warnings)
}

/// Sets a Patient's data-quality flags from its NIK: removes every `meta.tag` of
/// [`DATA_QUALITY_SYSTEM`] (the server's to set, never the client's) and adds one per
/// [`NikWarning`] of [`check_patient_nik`]. Returns the warnings; a NIK that is an error
/// leaves no flag (the write is refused by the caller's check). A `meta` or `meta.tag` that
/// is not of the right shape is left alone for validation to refuse.
pub fn flag_patient_nik(patient: &mut Value) -> Vec<NikWarning> {
    let warnings = check_patient_nik(patient).unwrap_or_default();
    let Some(obj) = patient.as_object_mut() else { return warnings };
    if warnings.is_empty() && !obj.contains_key("meta") {
        return warnings;
    }
    let Some(meta) = obj.entry("meta").or_insert_with(|| Value::Object(Default::default())).as_object_mut() else {
        return warnings;
    };
    let had_tags = meta.contains_key("tag");
    let Some(tags) = meta.entry("tag").or_insert_with(|| Value::Array(Vec::new())).as_array_mut() else {
        return warnings;
    };
    tags.retain(|t| t.get("system").and_then(Value::as_str) != Some(DATA_QUALITY_SYSTEM));
    for w in &warnings {
        tags.push(serde_json::json!({"system": DATA_QUALITY_SYSTEM, "code": w.code(), "display": w.to_string()}));
    }
    if tags.is_empty() && !had_tags {
        meta.remove("tag");
    }
    warnings
}

/// Year, month and day of a FHIR `date` (`YYYY`, `YYYY-MM` or `YYYY-MM-DD`);
/// unparsable parts are `None` and so are not compared.
fn birth_parts(s: &str) -> (Option<u32>, Option<u8>, Option<u8>) {
    let mut it = s.get(..10.min(s.len())).unwrap_or("").split('-');
    let year = it.next().filter(|y| y.len() == 4).and_then(|y| y.parse().ok());
    let month = it.next().filter(|m| m.len() == 2).and_then(|m| m.parse().ok());
    let day = it.next().filter(|d| d.len() == 2).and_then(|d| d.parse().ok());
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn parses_fields() {
        let i = parse_nik("9471022911000123").expect("valid");
        assert_eq!(i, NikInfo { province: 94, regency: 71, district: 2, day: 29, month: 11, year2: 0, female: false, serial: 123 });
        let i = parse_nik("9701017101059999").expect("valid");
        assert_eq!((i.day, i.female, i.serial), (31, true, 9999));
    }

    #[test]
    fn errors() {
        assert_eq!(parse_nik(""), Err(NikError::Length));
        assert_eq!(parse_nik("31740505089000031"), Err(NikError::Length));
        assert_eq!(parse_nik("317405050890000a"), Err(NikError::NotDigits));
        assert_eq!(parse_nik(&"３".repeat(16)), Err(NikError::NotDigits));
        assert_eq!(parse_nik("317405050890000é"), Err(NikError::NotDigits));
        for p in ["10", "20", "22", "30", "37", "50", "54", "60", "66", "70", "77", "80", "83", "90", "98", "99"] {
            assert_eq!(parse_nik(&format!("{p}74050508900003")), Err(NikError::Province), "{p}");
        }
        assert_eq!(parse_nik("3100050508900003"), Err(NikError::Province));
        assert_eq!(parse_nik("3174000508900003"), Err(NikError::Province));
        assert_eq!(parse_nik("3174050008900003"), Err(NikError::BirthDate));
        assert_eq!(parse_nik("3174053208900003"), Err(NikError::BirthDate));
        assert_eq!(parse_nik("3174054008900003"), Err(NikError::BirthDate));
        assert_eq!(parse_nik("3174057208900003"), Err(NikError::BirthDate));
        assert_eq!(parse_nik("3174050513900003"), Err(NikError::BirthDate));
        assert_eq!(parse_nik("3174050500900003"), Err(NikError::BirthDate));
        assert_eq!(parse_nik("3174053104900003"), Err(NikError::BirthDate));
        assert_eq!(parse_nik("3174050508900000"), Err(NikError::Serial));
    }

    #[test]
    fn leap_days_in_either_century() {
        assert!(parse_nik("3174052902960001").is_ok()); // 1996 / 2096
        assert!(parse_nik("3174052902000001").is_ok()); // 2000 is leap, 1900 not
        assert!(parse_nik("3174056902000001").is_ok()); // female
        assert_eq!(parse_nik("3174052902970001"), Err(NikError::BirthDate));
        assert_eq!(parse_nik("3174053002960001"), Err(NikError::BirthDate));
    }

    #[test]
    fn error_messages_do_not_echo_the_nik() {
        for nik in ["31740505089000031", "317405050890000a", "0074050508900003", "3174050508900000"] {
            let e = parse_nik(nik).unwrap_err();
            assert!(!e.to_string().contains("3174"), "{e}");
        }
    }

    fn patient(nik: &str, gender: &str, birth: &str) -> Value {
        json!({"resourceType": "Patient", "gender": gender, "birthDate": birth, "identifier": [
            {"system": "http://other", "value": "not a nik"},
            {"system": NIK_SYSTEM, "value": nik}
        ]})
    }

    #[test]
    fn patient_checks() {
        use NikWarning::*;
        assert_eq!(check_patient_nik(&patient("3174054508900003", "female", "1990-08-05")), Ok(vec![]));
        assert_eq!(check_patient_nik(&patient(" 3174054508900003 ", "female", "1990-08")), Ok(vec![]));
        assert_eq!(check_patient_nik(&patient("3174054508900003", "other", "2090")), Ok(vec![]));
        assert_eq!(check_patient_nik(&patient("3174054508900003", "male", "1990-08-05")), Ok(vec![GenderMismatch]));
        assert_eq!(check_patient_nik(&patient("3174054508900003", "female", "1990-08-06")), Ok(vec![BirthDateMismatch]));
        assert_eq!(check_patient_nik(&patient("3174054508900003", "female", "1991")), Ok(vec![BirthDateMismatch]));
        assert_eq!(check_patient_nik(&patient("3174054508900003", "male", "1991")), Ok(vec![BirthDateMismatch, GenderMismatch]));
        assert_eq!(check_patient_nik(&patient("3174054508900000", "female", "1990-08-05")), Err(NikError::Serial));
        assert_eq!(check_patient_nik(&json!({"resourceType": "Patient"})), Ok(vec![]));
        let no_birth = json!({"resourceType": "Patient", "identifier": [{"system": NIK_SYSTEM, "value": "3174054508900003"}]});
        assert_eq!(check_patient_nik(&no_birth), Ok(vec![]));
    }

    /// SATUSEHAT's published sandbox identities (NIK, gender, birth date): none encodes its
    /// birth date, all are well formed, so all go in with a warning.
    #[test]
    fn satusehat_sandbox_identities_are_accepted_with_a_warning() {
        for (nik, gender, birth) in [
            ("9271060312000001", "male", "1992-01-09"),
            ("9204014804000002", "female", "1989-11-03"),
            ("9104224509000003", "female", "1976-07-07"),
            ("9104223107000004", "male", "1977-09-03"),
        ] {
            assert_eq!(check_patient_nik(&patient(nik, gender, birth)), Ok(vec![NikWarning::BirthDateMismatch]), "{nik}");
        }
    }

    /// The mother's NIK on a newborn is held to the NIK rules, never to the child's birth
    /// date or gender.
    #[test]
    fn mothers_nik_gets_the_structural_check_only() {
        let newborn = |nik: &str| {
            json!({"resourceType": "Patient", "gender": "male", "birthDate": "2024-03-01",
                "identifier": [{"system": NIK_IBU_SYSTEM, "value": nik}]})
        };
        assert_eq!(check_patient_nik(&newborn("3174054508900003")), Ok(vec![]));
        assert_eq!(check_patient_nik(&newborn("1234")), Err(NikError::Length));
        assert_eq!(check_patient_nik(&newborn("0074054508900003")), Err(NikError::Province));
    }

    #[test]
    fn flags_are_the_servers_to_set() {
        let mut p = patient("3174054508900003", "male", "1990-08-05");
        p["meta"] = json!({"tag": [
            {"system": DATA_QUALITY_SYSTEM, "code": "nik-birthdate-mismatch"},
            {"system": "http://example.org/tags", "code": "keep"}
        ]});
        assert_eq!(flag_patient_nik(&mut p), vec![NikWarning::GenderMismatch]);
        assert_eq!(
            p["meta"]["tag"],
            json!([{"system": "http://example.org/tags", "code": "keep"},
                {"system": DATA_QUALITY_SYSTEM, "code": "nik-gender-mismatch", "display": "NIK gender encoding does not match the patient's gender"}])
        );
        // Corrected: the flag goes; a Patient that never had tags gets none.
        p["gender"] = json!("female");
        assert_eq!(flag_patient_nik(&mut p), vec![]);
        assert_eq!(p["meta"]["tag"], json!([{"system": "http://example.org/tags", "code": "keep"}]));
        let mut clean = patient("3174054508900003", "female", "1990-08-05");
        flag_patient_nik(&mut clean);
        assert!(clean.get("meta").is_none(), "no empty meta is left behind: {clean}");
        assert_eq!(NikWarning::from_code("nik-gender-mismatch"), Some(NikWarning::GenderMismatch));
    }

    proptest! {
        #[test]
        fn parse_nik_never_panics(s in "\\PC{0,24}") {
            let _ = parse_nik(&s);
        }

        #[test]
        fn parse_nik_digit_strings_roundtrip(s in "[0-9]{16}") {
            if let Ok(i) = parse_nik(&s) {
                let raw_day = if i.female { i.day + 40 } else { i.day };
                let rebuilt = format!(
                    "{:02}{:02}{:02}{:02}{:02}{:02}{:04}",
                    i.province, i.regency, i.district, raw_day, i.month, i.year2, i.serial
                );
                prop_assert_eq!(rebuilt, s);
            }
        }
    }
}
