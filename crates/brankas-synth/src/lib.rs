//! A deterministic synthetic Indonesian population, as FHIR R4 transaction Bundles.
//!
//! Everything is a pure function of `(seed, mix, i)`: [`Population::patient_bundle`]`(i)`
//! generates patient `i` and their records without any per-patient state, so memory stays
//! constant whatever the population size, and the same seed gives byte-identical JSON
//! (objects are built in a fixed key order; `serde_json` keeps insertion order here).
//!
//! # Identities
//!
//! * **NIK**: province + regency + district + `DDMMYY` (day + 40 for women) + serial, with
//!   real Kemendagri province and regency codes, regencies weighted by population (Java
//!   heavy). NIKs are unique by construction: `i` selects one of about 2,700 population
//!   "units" (each unit belongs to one regency) and a quotient; within a regency, the
//!   resulting local index is spread bijectively over (birth year, day of year, sex,
//!   district, serial). Unique for populations far beyond 10 million (the serial stays below
//!   10,000 up to about 10^10 patients). Birth years 1935–2024, weighted by an age pyramid
//!   (about 70% under 45, 10% over 65). `Patient.birthDate` and `gender` agree with the NIK.
//! * **IHS number**: `P` + 11 digits, an affine bijection of `i` (unique for i < 10^11).
//! * **Names** by regional tradition (Javanese/general, Sundanese, Batak and Minang clans,
//!   Balinese birth-order names, Minahasa, Bugis, Maluku and Papuan family names): 20% one
//!   name (stored as `family`), 55% two parts, 25% three.
//! * **Address**: street, number, RT/RW, kelurahan; kecamatan as `district`; regency as
//!   `city`; province as `state`; postal code; country `ID`. Phone: `+62 8xx` mobile.
//!
//! # Directory
//!
//! [`Population::directory_bundle`]: one facility per regency plus one per 15 population
//! units (RSUD, Puskesmas, Klinik Pratama, RS Swasta), each an `Organization/fac-NNNN` with a
//! `Location/loc-NNNN`, and [`PRACTITIONERS_PER_FACILITY`] practitioners
//! (`Practitioner/prac-NNNNN`) each. Patients are seen at facilities of their own regency.
//!
//! # Records per patient
//!
//! [`Mix::Minimal`]: Patient, one Encounter, one COVID-19 antigen Observation (LOINC
//! 97097-0, 10% positive): 3 resources, about 3.1 kB of JSON per patient.
//!
//! [`Mix::Full`], the data kinds of a national COVID-era breach, in these proportions:
//!
//! | what | share | resources |
//! | --- | --- | --- |
//! | Encounter | 1–6 per patient (45/25/13/8/5/4%, mean 2.15) | 1 each |
//! | chief complaint / anamnesis (ICD-10, Indonesian text) | every encounter | 1 Condition |
//! | COVID-19 antigen (LOINC 97097-0, 10% positive) | 60% of patients | 1 Observation |
//! | complete blood count (Hb 718-7, WBC 6690-2, platelets 777-3) | 40% of encounters | DiagnosticReport + 3 Observations |
//! | 12-lead EKG (LOINC 11524-6, 2.5 s at 250 Hz per lead, SampledData) | 10% of patients | 1 Observation |
//! | referral (ServiceRequest with a referral-id identifier) | 15% of patients | 1 ServiceRequest |
//! | isolation consent with a generated PDF letter | 10% of patients | 1 Consent |
//! | chest imaging, CR (75%) or CT, 1 series of 1–2 instances | 8% of patients | ImagingStudy + 1 Media (DICOM file) per instance |
//! | patient photo (PNG 48x48) | 20% of patients | inside Patient |
//!
//! On average about 10.1 resources and 16 kB of compact JSON per patient (the EKGs, about
//! 32 kB each, and the DICOM files, about 11 kB of base64 each, dominate the bytes).
//! The `proportions` test checks the shares over 2,000 patients.
//!
//! Speed (release build, one core, `brankas synth` to a file): about 14,000 patients/s for
//! the minimal mix and 3,000 patients/s (about 50 MB/s) for the full mix; resident memory
//! stays near 50 MB whatever the number of patients.

#![forbid(unsafe_code)]

mod data;
pub mod files;
mod rng;

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use serde_json::{Map, Number, Value, json};

use data::{Culture, PROVINCES, Province, Regency};
pub use rng::Rng;
use rng::h;

/// `Identifier.system` of NIK (same as `brankas_fhir::NIK_SYSTEM`).
pub const NIK_SYSTEM: &str = "https://fhir.kemkes.go.id/id/nik";
/// `Identifier.system` of the IHS number (same as `brankas_fhir::IHS_SYSTEM`).
pub const IHS_SYSTEM: &str = "https://fhir.kemkes.go.id/id/ihs-number";
/// `Identifier.system` of referral numbers (synthetic).
pub const REFERRAL_SYSTEM: &str = "https://fhir.kemkes.go.id/id/referral-id";
/// Practitioners per facility in the directory.
pub const PRACTITIONERS_PER_FACILITY: usize = 8;

const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const UCUM: &str = "http://unitsofmeasure.org";
const ICD10: &str = "http://hl7.org/fhir/sid/icd-10";

/// Which records each patient gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mix {
    /// Patient, one Encounter, one COVID-19 antigen Observation.
    Minimal,
    /// The full COVID-era record set (see the crate documentation).
    Full,
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "minimal" => Ok(Mix::Minimal),
            "full" => Ok(Mix::Full),
            _ => Err(format!("unknown mix {s:?} (expected minimal or full)")),
        }
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mix::Minimal => "minimal",
            Mix::Full => "full",
        })
    }
}

/// The identity of one synthetic patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub nik: String,
    pub ihs: String,
    /// Family (last) name; for people with a single name, that name.
    pub family: String,
    /// Given names (empty for people with a single name).
    pub given: Vec<String>,
    /// `"male"` or `"female"`.
    pub gender: &'static str,
    /// `YYYY-MM-DD`.
    pub birth_date: String,
    /// `+628…`.
    pub phone: String,
    pub province: &'static str,
    pub regency: &'static str,
}

struct Reg {
    prov: &'static Province,
    reg: &'static Regency,
    units: u32,
    fac_start: u32,
    fac_count: u32,
}

struct Facility {
    reg: usize,
    name: String,
    district: &'static str,
}

/// A seeded population. Holds only small tables (about 3,000 entries), never patients.
pub struct Population {
    seed: u64,
    mix: Mix,
    regs: Vec<Reg>,
    /// Population units, shuffled by the seed: (regency index, rank of the unit in its regency).
    units: Vec<(u32, u32)>,
    /// Birth-year units: (year, rank of the unit within its year).
    years: Vec<(u16, u64)>,
    year_count: Vec<u64>,
    year_mul: u64,
    facilities: Vec<Facility>,
}

struct Person {
    id: Identity,
    female: bool,
    reg: usize,
    district: &'static str,
    birth_day: i64,
    line: Vec<String>,
    postal: String,
    home_fac: usize,
    rng_seed: u64,
}

const NON_LEAP: [u8; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn date(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// FHIR dateTime/instant with seconds and the province's time zone.
fn datetime(day: i64, secs: u32, tz: u8) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+{tz:02}:00", secs / 3600, secs / 60 % 60, secs % 60)
}

fn dec(s: String) -> Value {
    Value::Number(s.parse::<Number>().expect("decimal"))
}

fn uuid(a: u64, b: u64) -> String {
    let b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    let a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x4000;
    format!("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", a >> 32, (a >> 16) & 0xFFFF, a & 0xFFFF, b >> 48, b & 0xFFFF_FFFF_FFFF)
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

fn concept(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [coding(system, code, display)]})
}

fn reference(r: &str, display: Option<&str>) -> Value {
    match display {
        Some(d) => json!({"reference": r, "display": d}),
        None => json!({"reference": r}),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `2.25.<decimal>` UID from a 128-bit hash (at most 44 characters).
fn uid(a: u64, b: u64) -> String {
    let v = (u128::from(a) << 64 | u128::from(b)) >> 1 | 1 << 120;
    format!("2.25.{v}")
}

/// Name of a person: (family, given).
fn person_name(rng: &mut Rng, cult: Culture, female: bool) -> (String, Vec<String>) {
    use data::{
        BALI_NAME_FEMALE, BALI_NAME_MALE, BALI_ORDER, BATAK, BUGIS, GIVEN_FEMALE, GIVEN_MALE, MALUKU, MALUKU_PAPUA_GIVEN_FEMALE, MALUKU_PAPUA_GIVEN_MALE, MINAHASA, MINANG, PAPUA,
        SECOND_FEMALE, SECOND_MALE, SUNDA_FEMALE, SUNDA_MALE,
    };
    let culture = cult;
    let general = |rng: &mut Rng| if female { rng.pick(GIVEN_FEMALE) } else { rng.pick(GIVEN_MALE) };
    let second = |rng: &mut Rng| if female { rng.pick(SECOND_FEMALE) } else { rng.pick(SECOND_MALE) };
    let christian = |rng: &mut Rng| if female { rng.pick(MALUKU_PAPUA_GIVEN_FEMALE) } else { rng.pick(MALUKU_PAPUA_GIVEN_MALE) };
    let clan: Option<&[&str]> = match culture {
        Culture::Batak => Some(BATAK),
        Culture::Minang => Some(MINANG),
        Culture::Minahasa => Some(MINAHASA),
        Culture::Maluku => Some(MALUKU),
        Culture::Papua => Some(PAPUA),
        _ => None,
    };
    if culture == Culture::Bali && rng.chance(0.8) {
        let order = rng.pick(BALI_ORDER);
        let prefix = if female { "Ni" } else { "I" };
        let name = if female { rng.pick(BALI_NAME_FEMALE) } else { rng.pick(BALI_NAME_MALE) };
        return (name.to_string(), vec![format!("{prefix} {}", rng.pick(order))]);
    }
    if let Some(clan) = clan
        && rng.chance(0.75)
    {
        let g = if matches!(culture, Culture::Minahasa | Culture::Maluku | Culture::Papua) && rng.chance(0.6) { christian(rng) } else { general(rng) };
        return (rng.pick(clan).to_string(), vec![g.to_string()]);
    }
    let first = if culture == Culture::Sundanese && rng.chance(0.4) {
        if female { rng.pick(SUNDA_FEMALE) } else { rng.pick(SUNDA_MALE) }
    } else if culture == Culture::Bugis && !female && rng.chance(0.3) {
        "Andi"
    } else {
        general(rng)
    };
    let parts = rng.weighted(&[20, 55, 25]) + 1;
    match parts {
        1 => (first.to_string(), Vec::new()),
        2 => {
            let fam = if culture == Culture::Bugis && rng.chance(0.3) { rng.pick(BUGIS) } else { second(rng) };
            (fam.to_string(), vec![first.to_string()])
        }
        _ => {
            let mut mid = general(rng);
            if mid == first {
                mid = if female { "Nur" } else { "Muhammad" };
            }
            (second(rng).to_string(), vec![first.to_string(), mid.to_string()])
        }
    }
}

fn full_name(family: &str, given: &[String]) -> String {
    let mut s = given.join(" ");
    if !s.is_empty() {
        s.push(' ');
    }
    s.push_str(family);
    s
}

fn human_name(family: &str, given: &[String], prefix: Option<&str>) -> Value {
    let mut m = Map::new();
    m.insert("use".into(), "official".into());
    let text = full_name(family, given);
    m.insert(
        "text".into(),
        match prefix {
            Some(p) => format!("{p} {text}"),
            None => text,
        }
        .into(),
    );
    m.insert("family".into(), family.into());
    if !given.is_empty() {
        m.insert("given".into(), given.iter().map(|g| Value::from(g.as_str())).collect());
    }
    if let Some(p) = prefix {
        m.insert("prefix".into(), json!([p]));
    }
    Value::Object(m)
}

impl Population {
    /// Builds the tables of a population (a few thousand small entries).
    pub fn new(seed: u64, mix: Mix) -> Self {
        let mut regs = Vec::new();
        for prov in PROVINCES {
            let total: u32 = prov.regencies.iter().map(|r| u32::from(r.weight)).sum();
            for reg in prov.regencies {
                let units = (u32::from(prov.pop) * u32::from(reg.weight) * 2 / total).max(1);
                regs.push(Reg { prov, reg, units, fac_start: 0, fac_count: 0 });
            }
        }
        let mut units = Vec::new();
        for (ri, r) in regs.iter().enumerate() {
            for k in 0..r.units {
                units.push((ri as u32, k));
            }
        }
        // Fisher-Yates with the seed: consecutive patients land in different regencies.
        let mut rng = Rng::new(h(&[seed, 0xD1]));
        for k in (1..units.len()).rev() {
            let j = rng.below(k as u64 + 1) as usize;
            units.swap(k, j);
        }
        let mut years = Vec::new();
        let mut year_count = Vec::new();
        for y in 1935u16..=2024 {
            let n: u64 = match 2024 - y {
                0..=44 => 4,
                45..=54 => 3,
                55..=64 => 2,
                _ => 1,
            };
            for k in 0..n {
                years.push((y, k));
            }
            year_count.push(n);
        }
        let yn = years.len() as u64;
        let mut year_mul = yn * 618 / 1000;
        while gcd(year_mul, yn) != 1 {
            year_mul += 1;
        }
        let mut facilities = Vec::new();
        for (ri, r) in regs.iter_mut().enumerate() {
            r.fac_start = facilities.len() as u32;
            r.fac_count = 1 + r.units / 15;
            let short = r.reg.name.trim_start_matches("Kabupaten ").trim_start_matches("Kota ");
            for k in 0..r.fac_count {
                let district = data::KECAMATAN[(h(&[seed, 0xFA, ri as u64, u64::from(k)]) % data::KECAMATAN.len() as u64) as usize];
                let (kind, _) = data::FACILITY_KINDS[(k as usize) % data::FACILITY_KINDS.len()];
                let name = match k % 4 {
                    0 => format!("{kind} {}", r.reg.name),
                    1 => format!("{kind} {district}"),
                    2 => format!("{kind} Sehat {district}"),
                    _ => format!("{kind} Mitra Keluarga {short}"),
                };
                facilities.push(Facility { reg: ri, name, district });
            }
        }
        Population { seed, mix, regs, units, years, year_count, year_mul, facilities }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The record mix.
    pub fn mix(&self) -> Mix {
        self.mix
    }

    /// Number of facilities (Organizations and Locations) in the directory.
    pub fn facility_count(&self) -> usize {
        self.facilities.len()
    }

    fn person(&self, i: u64) -> Person {
        let seed = self.seed;
        let w = self.units.len() as u64;
        let (ri, rank) = self.units[(i % w) as usize];
        let q = i / w;
        let r = &self.regs[ri as usize];
        let ri64 = u64::from(ri);
        let l = q * u64::from(r.units) + u64::from(rank);
        let yn = self.years.len() as u64;
        let d0 = l % yn;
        let mut rest = l / yn;
        let yu = ((d0 * self.year_mul + h(&[seed, 1, ri64])) % yn) as usize;
        let d1 = rest % 365;
        rest /= 365;
        let doy = (d1 + h(&[seed, 2, ri64, yu as u64])) % 365;
        let d2 = rest % 2;
        rest /= 2;
        let female = (d2 + h(&[seed, 3, ri64, yu as u64, doy])) % 2 == 1;
        let nd = u64::from(r.reg.districts);
        let d3 = rest % nd;
        rest /= nd;
        let district = (d3 + h(&[seed, 4, ri64, yu as u64, doy, u64::from(female)])) % nd + 1;
        let (year, yrank) = self.years[yu];
        let s = rest * self.year_count[usize::from(year - 1935)] + yrank;
        assert!(s < 9999, "population index {i} is beyond the NIK capacity of this generator");
        let serial = (s + h(&[seed, 5, ri64, u64::from(year), doy, u64::from(female), district])) % 9999 + 1;
        let (mut month, mut day) = (1u32, doy as u32 + 1);
        while day > u32::from(NON_LEAP[month as usize - 1]) {
            day -= u32::from(NON_LEAP[month as usize - 1]);
            month += 1;
        }
        let nik = format!("{:02}{:02}{:02}{:02}{:02}{:02}{:04}", r.prov.code, r.reg.code, district, day + if female { 40 } else { 0 }, month, year % 100, serial);
        const TEN11: u128 = 100_000_000_000;
        let ihs_n = (u128::from(i) * 7_919_003_139 + u128::from(h(&[seed, 6])) % TEN11) % TEN11;
        let mut rng = Rng::new(h(&[seed, 7, i]));
        let culture = data::culture(r.prov.code);
        let (family, given) = person_name(&mut rng, culture, female);
        let phone_n = (u128::from(i) * 48_271_009 + u128::from(h(&[seed, 9]))) % 100_000_000;
        let phone = format!("+62{}{:08}", rng.pick(data::MOBILE_PREFIXES), phone_n);
        let district_name = data::KECAMATAN[(h(&[seed, 0xD5, ri64, district]) % data::KECAMATAN.len() as u64) as usize];
        let line = vec![
            format!("{} No. {}", rng.pick(data::STREETS), rng.range(1, 250)),
            format!("RT {:03}/RW {:03}", rng.range(1, 15), rng.range(1, 12)),
            format!("Kel. {}", rng.pick(data::KELURAHAN)),
        ];
        let postal = format!("{:02}{:03}", r.reg.postal, (h(&[seed, 0xB0, ri64, district]) % 1000));
        let home_fac = (r.fac_start + rng.below(u64::from(r.fac_count)) as u32) as usize;
        Person {
            id: Identity {
                nik,
                ihs: format!("P{ihs_n:011}"),
                family,
                given,
                gender: if female { "female" } else { "male" },
                birth_date: format!("{year:04}-{month:02}-{day:02}"),
                phone,
                province: r.prov.name,
                regency: r.reg.name,
            },
            female,
            reg: ri as usize,
            district: district_name,
            birth_day: days_from_civil(i64::from(year), month, day),
            line,
            postal,
            home_fac,
            rng_seed: h(&[seed, 8, i]),
        }
    }

    /// The identity of patient `i` (0-based), without generating records.
    pub fn identity(&self, i: u64) -> Identity {
        self.person(i).id
    }

    fn practitioner_name(&self, p: usize) -> (String, Vec<String>, bool) {
        let f = &self.facilities[p / PRACTITIONERS_PER_FACILITY];
        let mut rng = Rng::new(h(&[self.seed, 0x9A, p as u64]));
        let female = rng.chance(0.55);
        let (fam, given) = person_name(&mut rng, data::culture(self.regs[f.reg].prov.code), female);
        (fam, given, female)
    }

    fn practitioner_display(&self, p: usize) -> String {
        let (fam, given, _) = self.practitioner_name(p);
        format!("dr. {}", full_name(&fam, &given))
    }

    /// Facilities, their locations and practitioners: one transaction Bundle of PUTs.
    pub fn directory_bundle(&self) -> Value {
        let mut entries = Vec::with_capacity(self.facilities.len() * (2 + PRACTITIONERS_PER_FACILITY));
        for (k, f) in self.facilities.iter().enumerate() {
            let r = &self.regs[f.reg];
            let id = format!("fac-{:04}", k + 1);
            let org = json!({
                "resourceType": "Organization",
                "id": id,
                "identifier": [{"use": "official", "system": "http://sys-ids.kemkes.go.id/organization", "value": format!("{}{:02}{:04}", r.prov.code, r.reg.code, k + 1)}],
                "active": true,
                "type": [concept("http://terminology.hl7.org/CodeSystem/organization-type", "prov", "Healthcare Provider")],
                "name": f.name,
                "telecom": [{"system": "phone", "value": format!("+62{}{:07}", 21 + (k % 70), h(&[self.seed, 0xF0, k as u64]) % 10_000_000), "use": "work"}],
                "address": [{"use": "work", "line": [format!("Jl. Kesehatan No. {}", k % 120 + 1)], "city": r.reg.name, "district": f.district, "state": r.prov.name, "postalCode": format!("{:02}{:03}", r.reg.postal, k % 1000), "country": "ID"}]
            });
            entries.push(json!({"fullUrl": format!("Organization/{id}"), "resource": org, "request": {"method": "PUT", "url": format!("Organization/{id}")}}));
        }
        for (k, f) in self.facilities.iter().enumerate() {
            let r = &self.regs[f.reg];
            let id = format!("loc-{:04}", k + 1);
            let loc = json!({
                "resourceType": "Location",
                "id": id,
                "status": "active",
                "name": format!("Poli Umum {}", f.name),
                "mode": "instance",
                "physicalType": concept("http://terminology.hl7.org/CodeSystem/location-physical-type", "ro", "Room"),
                "address": {"use": "work", "city": r.reg.name, "district": f.district, "state": r.prov.name, "country": "ID"},
                "managingOrganization": reference(&format!("Organization/fac-{:04}", k + 1), Some(&f.name))
            });
            entries.push(json!({"fullUrl": format!("Location/{id}"), "resource": loc, "request": {"method": "PUT", "url": format!("Location/{id}")}}));
        }
        for p in 0..self.facilities.len() * PRACTITIONERS_PER_FACILITY {
            let id = format!("prac-{:05}", p + 1);
            let (fam, given, female) = self.practitioner_name(p);
            let pr = json!({
                "resourceType": "Practitioner",
                "id": id,
                "identifier": [{"use": "official", "system": "https://fhir.kemkes.go.id/id/nakes-his-number", "value": format!("10{:09}", (p as u64 * 7_654_321 + 1_000_003) % 1_000_000_000)}],
                "active": true,
                "name": [human_name(&fam, &given, Some("dr."))],
                "gender": if female { "female" } else { "male" },
                "qualification": [{"code": {"coding": [coding("http://terminology.hl7.org/CodeSystem/v2-0360", "MD", "Doctor of Medicine")], "text": "Dokter Umum"}}]
            });
            entries.push(json!({"fullUrl": format!("Practitioner/{id}"), "resource": pr, "request": {"method": "PUT", "url": format!("Practitioner/{id}")}}));
        }
        json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    }

    /// Patient `i` and their records as one transaction Bundle.
    pub fn patient_bundle(&self, i: u64) -> Value {
        let person = self.person(i);
        let mut g = Gen { pop: self, p: &person, i, n: 0, entries: Vec::new(), rng: Rng::new(person.rng_seed) };
        g.build();
        json!({"resourceType": "Bundle", "type": "transaction", "entry": g.entries})
    }
}

/// One encounter's context.
struct Enc {
    urn: String,
    day: i64,
    start: u32,
    fac: usize,
    prac: usize,
}

struct Gen<'a> {
    pop: &'a Population,
    p: &'a Person,
    i: u64,
    n: u64,
    entries: Vec<Value>,
    rng: Rng,
}

impl Gen<'_> {
    fn urn(&mut self) -> String {
        self.n += 1;
        let s = self.pop.seed;
        format!("urn:uuid:{}", uuid(h(&[s, 0xAA, self.i, self.n]), h(&[s, 0xBB, self.i, self.n])))
    }

    fn push(&mut self, urn: String, resource: Value) {
        let ty = resource["resourceType"].as_str().unwrap_or_default().to_string();
        self.entries.push(json!({"fullUrl": urn, "resource": resource, "request": {"method": "POST", "url": ty}}));
    }

    fn tz(&self) -> u8 {
        self.pop.regs[self.p.reg].prov.tz
    }

    fn dt(&self, day: i64, secs: u32) -> String {
        datetime(day, secs.min(86_399), self.tz())
    }

    fn fac_ref(&self, f: usize) -> Value {
        reference(&format!("Organization/fac-{:04}", f + 1), Some(&self.pop.facilities[f].name))
    }

    fn prac_ref(&self, p: usize) -> Value {
        reference(&format!("Practitioner/prac-{:05}", p + 1), Some(&self.pop.practitioner_display(p)))
    }

    fn build(&mut self) {
        let pat = self.urn();
        let full = self.pop.mix == Mix::Full;
        let photo = full && self.rng.chance(0.20);
        let patient = self.patient(photo);
        self.push(pat.clone(), patient);
        let n_enc = if full { self.rng.weighted(&[45, 25, 13, 8, 5, 4]) + 1 } else { 1 };
        let first = days_from_civil(2020, 3, 2).max(self.p.birth_day + 1);
        let mut day = first + self.rng.range(0, (days_from_civil(2022, 12, 31) - first).max(30));
        let mut encs = Vec::with_capacity(n_enc);
        for k in 0..n_enc {
            if k > 0 {
                day += self.rng.range(3, 120);
            }
            let e = self.encounter(&pat, day, full);
            encs.push(e);
        }
        let e0 = 0;
        if !full {
            self.antigen(&pat, &encs[e0]);
            return;
        }
        for enc in &encs {
            if self.rng.chance(0.40) {
                self.cbc(&pat, enc);
            }
        }
        let pick = self.rng.below(encs.len() as u64) as usize;
        if self.rng.chance(0.60) {
            self.antigen(&pat, &encs[e0]);
        }
        if self.rng.chance(0.10) {
            self.ekg(&pat, &encs[pick]);
        }
        if self.rng.chance(0.15) {
            self.referral(&pat, &encs[pick]);
        }
        if self.rng.chance(0.10) {
            self.consent(&pat, &encs[e0]);
        }
        if self.rng.chance(0.08) {
            self.imaging(&pat, &encs[pick]);
        }
    }

    fn patient(&mut self, photo: bool) -> Value {
        let id = &self.p.id;
        let r = &self.pop.regs[self.p.reg];
        let mut m = Map::new();
        m.insert("resourceType".into(), "Patient".into());
        m.insert("identifier".into(), json!([{"use": "official", "system": NIK_SYSTEM, "value": id.nik}, {"use": "usual", "system": IHS_SYSTEM, "value": id.ihs}]));
        m.insert("active".into(), true.into());
        m.insert("name".into(), json!([human_name(&id.family, &id.given, None)]));
        m.insert("telecom".into(), json!([{"system": "phone", "value": id.phone, "use": "mobile"}]));
        m.insert("gender".into(), id.gender.into());
        m.insert("birthDate".into(), id.birth_date.clone().into());
        m.insert(
            "address".into(),
            json!([{"use": "home", "type": "both", "line": self.p.line, "city": r.reg.name, "district": self.p.district,
                "state": r.prov.name, "postalCode": self.p.postal, "country": "ID"}]),
        );
        let age_years = (days_from_civil(2021, 1, 1) - self.p.birth_day) / 365;
        let marital = if age_years < 19 {
            ("U", "unmarried")
        } else {
            [("M", "Married"), ("M", "Married"), ("M", "Married"), ("S", "Never Married"), ("W", "Widowed"), ("D", "Divorced")][self.rng.below(6) as usize]
        };
        m.insert("maritalStatus".into(), concept("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", marital.0, marital.1));
        if photo {
            let png = files::portrait_png(self.rng.next_u64());
            m.insert("photo".into(), json!([{"contentType": "image/png", "data": b64(&png), "size": png.len(), "title": "Foto pasien"}]));
        }
        m.insert("communication".into(), json!([{"language": concept("urn:ietf:bcp:47", "id-ID", "Indonesian (Indonesia)"), "preferred": true}]));
        m.insert("managingOrganization".into(), self.fac_ref(self.p.home_fac));
        Value::Object(m)
    }

    fn encounter(&mut self, pat: &str, day: i64, full: bool) -> Enc {
        let r = &self.pop.regs[self.p.reg];
        let fac = if self.rng.chance(0.7) { self.p.home_fac } else { (r.fac_start + self.rng.below(u64::from(r.fac_count)) as u32) as usize };
        let prac = fac * PRACTITIONERS_PER_FACILITY + self.rng.below(PRACTITIONERS_PER_FACILITY as u64) as usize;
        let start = self.rng.range(7 * 3600, 20 * 3600) as u32;
        let class = [("AMB", "ambulatory"), ("EMER", "emergency"), ("IMP", "inpatient encounter")][self.rng.weighted(&[85, 10, 5])];
        let (end_day, end) =
            if class.0 == "IMP" { (day + self.rng.range(2, 10), self.rng.range(8 * 3600, 12 * 3600) as u32) } else { (day, start + self.rng.range(600, 3 * 3600) as u32) };
        let urn = self.urn();
        let cond = if full { Some(self.urn()) } else { None };
        let fac_id = format!("fac-{:04}", fac + 1);
        let mut m = Map::new();
        m.insert("resourceType".into(), "Encounter".into());
        m.insert("identifier".into(), json!([{"system": format!("http://sys-ids.kemkes.go.id/encounter/{fac_id}"), "value": format!("ENC-{}-{}", self.p.id.ihs, self.n)}]));
        m.insert("status".into(), "finished".into());
        m.insert("class".into(), coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", class.0, class.1));
        m.insert("subject".into(), reference(pat, Some(&full_name(&self.p.id.family, &self.p.id.given))));
        m.insert(
            "participant".into(),
            json!([{"type": [concept("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "ATND", "attender")], "individual": self.prac_ref(prac)}]),
        );
        m.insert("period".into(), json!({"start": self.dt(day, start), "end": self.dt(end_day, end)}));
        if let Some(c) = &cond {
            m.insert(
                "diagnosis".into(),
                json!([{"condition": reference(c, None), "use": concept("http://terminology.hl7.org/CodeSystem/diagnosis-role", "CC", "Chief complaint"), "rank": 1}]),
            );
        }
        m.insert("location".into(), json!([{"location": reference(&format!("Location/loc-{:04}", fac + 1), Some(&format!("Poli Umum {}", self.pop.facilities[fac].name)))}]));
        m.insert("serviceProvider".into(), self.fac_ref(fac));
        self.push(urn.clone(), Value::Object(m));
        let e = Enc { urn, day, start, fac, prac };
        if let Some(c) = cond {
            let weights: Vec<u32> = data::COMPLAINTS.iter().map(|c| c.3).collect();
            let (code, display, text, _) = data::COMPLAINTS[self.rng.weighted(&weights)];
            let onset = day - self.rng.range(1, 7);
            let status = if class.0 == "IMP" || self.rng.chance(0.7) { "resolved" } else { "active" };
            let cond_res = json!({
                "resourceType": "Condition",
                "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/condition-clinical", status, if status == "active" { "Active" } else { "Resolved" }),
                "verificationStatus": concept("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
                "category": [concept("http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis", "Encounter Diagnosis")],
                "code": {"coding": [coding(ICD10, code, display)], "text": text},
                "subject": reference(pat, None),
                "encounter": reference(&e.urn, None),
                "onsetDateTime": self.dt(onset, 8 * 3600),
                "recordedDate": self.dt(day, start + 300),
                "recorder": self.prac_ref(prac),
                "note": [{"text": format!("Anamnesis: {text}.")}]
            });
            self.push(c, cond_res);
        }
        e
    }

    fn lab_category() -> Value {
        json!([concept("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory")])
    }

    fn antigen(&mut self, pat: &str, e: &Enc) {
        let positive = self.rng.chance(0.10);
        let value = if positive { ("10828004", "Positive") } else { ("260385009", "Negative") };
        let urn = self.urn();
        let obs = json!({
            "resourceType": "Observation",
            "status": "final",
            "category": Self::lab_category(),
            "code": {"coding": [coding(LOINC, "97097-0", "SARS-CoV-2 (COVID-19) Ag [Presence] in Upper respiratory specimen by Rapid immunoassay")], "text": "Swab antigen SARS-CoV-2"},
            "subject": reference(pat, None),
            "encounter": reference(&e.urn, None),
            "effectiveDateTime": self.dt(e.day, e.start + 600),
            "issued": self.dt(e.day, e.start + 1800),
            "performer": [self.prac_ref(e.prac)],
            "valueCodeableConcept": concept(SNOMED, value.0, value.1)
        });
        self.push(urn, obs);
    }

    fn cbc(&mut self, pat: &str, e: &Enc) {
        let female = self.p.female;
        let hb = (if female { 12.8 } else { 14.5 } + 1.4 * self.rng.normal()).clamp(6.0, 19.5);
        let wbc = (7.0 * (0.3 * self.rng.normal()).exp()).clamp(1.5, 30.0);
        let plt = (260.0 + 70.0 * self.rng.normal() - if self.rng.chance(0.05) { 150.0 } else { 0.0 }).clamp(20.0, 700.0);
        let tests = [
            ("718-7", "Hemoglobin [Mass/volume] in Blood", format!("{hb:.1}"), "g/dL", if female { ("12.0", "16.0") } else { ("13.5", "17.5") }),
            ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", format!("{wbc:.1}"), "10*3/uL", ("4.0", "11.0")),
            ("777-3", "Platelets [#/volume] in Blood by Automated count", format!("{plt:.0}"), "10*3/uL", ("150", "400")),
        ];
        let report = self.urn();
        let urns: Vec<String> = (0..3).map(|_| self.urn()).collect();
        let eff = self.dt(e.day, e.start + 900);
        let issued = self.dt(e.day, e.start + 5400);
        let q = |v: &str, unit: &str| json!({"value": dec(v.to_string()), "unit": unit, "system": UCUM, "code": unit});
        let dr = json!({
            "resourceType": "DiagnosticReport",
            "status": "final",
            "category": [concept("http://terminology.hl7.org/CodeSystem/v2-0074", "HM", "Hematology")],
            "code": {"coding": [coding(LOINC, "58410-2", "CBC panel - Blood by Automated count")], "text": "Darah lengkap"},
            "subject": reference(pat, None),
            "encounter": reference(&e.urn, None),
            "effectiveDateTime": eff,
            "issued": issued,
            "performer": [self.fac_ref(e.fac)],
            "result": urns.iter().map(|u| reference(u, None)).collect::<Vec<_>>()
        });
        self.push(report, dr);
        for (u, (code, display, v, unit, (lo, hi))) in urns.into_iter().zip(tests) {
            let obs = json!({
                "resourceType": "Observation",
                "status": "final",
                "category": Self::lab_category(),
                "code": concept(LOINC, code, display),
                "subject": reference(pat, None),
                "encounter": reference(&e.urn, None),
                "effectiveDateTime": eff,
                "issued": issued,
                "valueQuantity": q(&v, unit),
                "referenceRange": [{"low": q(lo, unit), "high": q(hi, unit)}]
            });
            self.push(u, obs);
        }
    }

    fn ekg(&mut self, pat: &str, e: &Enc) {
        const LEADS: [(&str, &str, &str); 12] = [
            ("131329", "MDC_ECG_ELEC_POTL_I", "Lead I"),
            ("131330", "MDC_ECG_ELEC_POTL_II", "Lead II"),
            ("131389", "MDC_ECG_ELEC_POTL_III", "Lead III"),
            ("131390", "MDC_ECG_ELEC_POTL_AVR", "Lead aVR"),
            ("131391", "MDC_ECG_ELEC_POTL_AVL", "Lead aVL"),
            ("131392", "MDC_ECG_ELEC_POTL_AVF", "Lead aVF"),
            ("131331", "MDC_ECG_ELEC_POTL_V1", "Lead V1"),
            ("131332", "MDC_ECG_ELEC_POTL_V2", "Lead V2"),
            ("131333", "MDC_ECG_ELEC_POTL_V3", "Lead V3"),
            ("131334", "MDC_ECG_ELEC_POTL_V4", "Lead V4"),
            ("131335", "MDC_ECG_ELEC_POTL_V5", "Lead V5"),
            ("131336", "MDC_ECG_ELEC_POTL_V6", "Lead V6"),
        ];
        let hr = self.rng.range(55, 110) as u32;
        let phase = self.rng.f64();
        let components: Vec<Value> = LEADS
            .iter()
            .enumerate()
            .map(|(k, (code, display, text))| {
                json!({
                    "code": {"coding": [coding("urn:oid:2.16.840.1.113883.6.24", code, display)], "text": text},
                    "valueSampledData": {
                        "origin": {"value": 0, "unit": "uV", "system": UCUM, "code": "uV"},
                        "period": 4,
                        "dimensions": 1,
                        "data": files::ekg_lead(k, hr, phase, 625)
                    }
                })
            })
            .collect();
        let urn = self.urn();
        let obs = json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [concept("http://terminology.hl7.org/CodeSystem/observation-category", "procedure", "Procedure")],
            "code": {"coding": [coding(LOINC, "11524-6", "EKG study")], "text": "EKG 12 sadapan"},
            "subject": reference(pat, None),
            "encounter": reference(&e.urn, None),
            "effectiveDateTime": self.dt(e.day, e.start + 1200),
            "performer": [self.prac_ref(e.prac)],
            "note": [{"text": format!("Irama sinus, laju jantung {hr} kali/menit")}],
            "component": components
        });
        self.push(urn, obs);
    }

    fn referral(&mut self, pat: &str, e: &Enc) {
        let r = &self.pop.regs[self.p.reg];
        // To the regency's first facility (RSUD) or, from there, to another facility.
        let to = if e.fac != r.fac_start as usize || r.fac_count == 1 { r.fac_start as usize } else { r.fac_start as usize + 1 };
        let urn = self.urn();
        let (y, m, d) = civil_from_days(e.day);
        let sr = json!({
            "resourceType": "ServiceRequest",
            "identifier": [{"use": "official", "system": REFERRAL_SYSTEM, "value": format!("RJK{:04}{y:04}{m:02}{d:02}{:05}", e.fac + 1, self.i % 100_000)}],
            "status": if self.rng.chance(0.7) { "completed" } else { "active" },
            "intent": "order",
            "category": [concept(SNOMED, "3457005", "Patient referral")],
            "code": {"coding": [coding(SNOMED, "306206005", "Referral to service")], "text": format!("Rujukan ke {}", self.pop.facilities[to].name)},
            "subject": reference(pat, None),
            "encounter": reference(&e.urn, None),
            "authoredOn": self.dt(e.day, e.start + 2400),
            "requester": self.prac_ref(e.prac),
            "performer": [self.fac_ref(to)],
            "note": [{"text": "Mohon pemeriksaan dan penanganan lebih lanjut."}]
        });
        self.push(urn, sr);
    }

    fn consent(&mut self, pat: &str, e: &Enc) {
        let id = &self.p.id;
        let name = full_name(&id.family, &id.given);
        let r = &self.pop.regs[self.p.reg];
        let until = date(e.day + 14);
        let lines = vec![
            "Yang bertanda tangan di bawah ini:".to_string(),
            format!("Nama          : {name}"),
            format!("NIK           : {}", id.nik),
            format!("Tanggal lahir : {}", id.birth_date),
            format!("Alamat        : {}, {}", self.p.line[0], r.reg.name),
            String::new(),
            "Dengan ini menyatakan bersedia menjalani isolasi mandiri di rumah".to_string(),
            format!("sejak {} sampai dengan {until}, dan mematuhi protokol kesehatan.", date(e.day)),
        ];
        let pdf = files::pdf_letter("Surat Pernyataan Isolasi Mandiri", &lines, &format!("{}, {}", r.reg.name, date(e.day)), &name);
        let scope = if self.rng.chance(0.5) { ("patient-privacy", "Privacy Consent") } else { ("treatment", "Treatment") };
        let urn = self.urn();
        let c = json!({
            "resourceType": "Consent",
            "status": "active",
            "scope": concept("http://terminology.hl7.org/CodeSystem/consentscope", scope.0, scope.1),
            "category": [{"coding": [coding(LOINC, "59284-0", "Patient Consent")], "text": "Isolasi mandiri"}],
            "patient": reference(pat, None),
            "dateTime": self.dt(e.day, e.start + 3000),
            "organization": [self.fac_ref(e.fac)],
            "sourceAttachment": {"contentType": "application/pdf", "language": "id", "data": b64(&pdf), "size": pdf.len(),
                "title": "Surat Pernyataan Isolasi Mandiri", "creation": self.dt(e.day, e.start + 3000)},
            "provision": {"type": "permit", "period": {"start": date(e.day), "end": until}}
        });
        self.push(urn, c);
    }

    fn imaging(&mut self, pat: &str, e: &Enc) {
        let s = self.pop.seed;
        let ct = self.rng.chance(0.25);
        let n_inst = self.rng.range(1, 2) as u32;
        let study_uid = uid(h(&[s, 0x51, self.i, self.n]), h(&[s, 0x52, self.i, self.n]));
        let series_uid = uid(h(&[s, 0x53, self.i, self.n]), h(&[s, 0x54, self.i, self.n]));
        let sop_uids: Vec<String> = (0..n_inst).map(|k| uid(h(&[s, 0x55, self.i, self.n, u64::from(k)]), h(&[s, 0x56, self.i, self.n, u64::from(k)]))).collect();
        let (modality, mod_display, sop_class) = if ct { ("CT", "Computed Tomography", files::SOP_CT) } else { ("CR", "Computed Radiography", files::SOP_CR) };
        let dcm = "http://dicom.nema.org/resources/ontology/DCM";
        let started = self.dt(e.day, e.start + 1500);
        let accession = format!("ACC{:04}{:08}", e.fac + 1, self.i % 100_000_000);
        let study_urn = self.urn();
        let study = json!({
            "resourceType": "ImagingStudy",
            "identifier": [{"use": "official", "system": "urn:dicom:uid", "value": format!("urn:oid:{study_uid}")},
                {"type": concept("http://terminology.hl7.org/CodeSystem/v2-0203", "ACSN", "Accession ID"), "system": format!("http://sys-ids.kemkes.go.id/acsn/fac-{:04}", e.fac + 1), "value": accession}],
            "status": "available",
            "modality": [coding(dcm, modality, mod_display)],
            "subject": reference(pat, None),
            "encounter": reference(&e.urn, None),
            "started": started,
            "referrer": self.prac_ref(e.prac),
            "numberOfSeries": 1,
            "numberOfInstances": n_inst,
            "description": if ct { "CT Thorax" } else { "Foto Thorax PA" },
            "series": [{
                "uid": series_uid,
                "number": 1,
                "modality": coding(dcm, modality, mod_display),
                "description": if ct { "CT Thorax" } else { "Thorax PA" },
                "numberOfInstances": n_inst,
                "bodySite": coding(SNOMED, "51185008", "Thoracic structure"),
                "started": started,
                "instance": sop_uids.iter().enumerate().map(|(k, u)| json!({
                    "uid": u,
                    "sopClass": {"system": "urn:ietf:rfc:3986", "code": format!("urn:oid:{sop_class}")},
                    "number": k + 1,
                    "title": format!("{modality} thorax {}", k + 1)
                })).collect::<Vec<_>>()
            }]
        });
        self.push(study_urn.clone(), study);
        let (y, m, d) = civil_from_days(e.day);
        let study_date = format!("{y:04}{m:02}{d:02}");
        let study_time = {
            let t = (e.start + 1500).min(86_399);
            format!("{:02}{:02}{:02}", t / 3600, t / 60 % 60, t % 60)
        };
        let id = &self.p.id;
        let pn = if id.given.is_empty() { id.family.clone() } else { format!("{}^{}", id.family, id.given.join(" ")) };
        let birth = id.birth_date.replace('-', "");
        for (k, sop) in sop_uids.iter().enumerate() {
            let file = files::dicom_file(&files::DicomInstance {
                ct,
                study_uid: &study_uid,
                series_uid: &series_uid,
                sop_uid: sop,
                patient_id: &id.nik,
                patient_name: &pn,
                birth_date: &birth,
                sex: if self.p.female { "F" } else { "M" },
                study_date: &study_date,
                study_time: &study_time,
                accession: &accession,
                institution: &self.pop.facilities[e.fac].name,
                instance_number: k as u32 + 1,
                noise: self.rng.next_u64(),
            });
            let urn = self.urn();
            let media = json!({
                "resourceType": "Media",
                "identifier": [{"system": "urn:dicom:uid", "value": format!("urn:oid:{sop}")}],
                "partOf": [reference(&study_urn, None)],
                "status": "completed",
                "type": concept("http://terminology.hl7.org/CodeSystem/media-type", "image", "Image"),
                "modality": concept(dcm, modality, mod_display),
                "subject": reference(pat, None),
                "encounter": reference(&e.urn, None),
                "createdDateTime": started,
                "operator": self.prac_ref(e.prac),
                "bodySite": concept(SNOMED, "51185008", "Thoracic structure"),
                "height": files::DICOM_SIZE,
                "width": files::DICOM_SIZE,
                "content": {"contentType": "application/dicom", "data": b64(&file), "size": file.len(),
                    "title": format!("{sop}.dcm")}
            });
            self.push(urn, media);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_round_trip() {
        for d in [-20_000i64, 0, 1, 18_000, 19_000, 20_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(date(days_from_civil(2024, 2, 29)), "2024-02-29");
    }

    #[test]
    fn uids_are_short_enough() {
        let u = uid(u64::MAX, u64::MAX);
        assert!(u.len() <= 64, "{u}");
        assert!(uid(0, 0).starts_with("2.25.1"));
    }

    #[test]
    fn mix_parses() {
        assert_eq!("full".parse::<Mix>().unwrap(), Mix::Full);
        assert_eq!(Mix::Minimal.to_string(), "minimal");
        assert!("x".parse::<Mix>().is_err());
    }

    #[test]
    fn regency_codes_unique() {
        let mut seen = std::collections::HashSet::new();
        for p in PROVINCES {
            for r in p.regencies {
                assert!(seen.insert((p.code, r.code)), "{} {}", p.name, r.name);
                assert!(r.code > 0 && r.districts > 0);
            }
        }
    }
}
