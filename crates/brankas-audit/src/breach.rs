//! "Who was hit?" (invariant 8): from the audit log alone, every patient whose data a
//! credential (or a network address) received in a time window, with the categories of data
//! and the first and last access, and for each patient the notification Indonesia's personal
//! data protection law asks for (UU 27/2022, Art. 46: which data, when and how it was
//! disclosed, what is being done, and whom to contact), in Bahasa Indonesia and in English.
//!
//! Only accesses that returned or changed a patient's data count (successful records naming
//! the patient); refused attempts are counted separately. The caller supplies the patients'
//! identities (the engine decrypts their Patient resources); the log itself holds none.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{AuditError, AuditLog, Opened, Outcome};

/// Whose accesses to report.
#[derive(Clone, Debug)]
pub enum Suspect {
    /// A client id.
    Client(String),
    /// A network address (as recorded).
    Address(String),
    /// Several clients reported as one: e.g. the clients an administrator registered or a
    /// security officer approved (`label` names them in the report).
    Clients { label: String, ids: Vec<String> },
}

/// The question of a breach report.
#[derive(Clone, Debug)]
pub struct BreachQuery {
    pub suspect: Suspect,
    /// Microseconds since the epoch, inclusive.
    pub since_us: i64,
    /// Microseconds since the epoch, exclusive; `None`: until now.
    pub until_us: Option<i64>,
    /// Who the patients should contact, for the notification text.
    pub contact: String,
}

/// What a report says about one patient's identity (from their Patient resource). Its
/// `Debug` prints nothing of it.
#[derive(Clone, Default, Serialize)]
pub struct Identity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nik: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "birthDate")]
    pub birth_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// One patient of a report.
#[derive(Clone, Debug, Serialize)]
pub struct HitPatient {
    /// The Patient resource id.
    pub id: String,
    pub identity: Identity,
    /// Categories of data received (see [`category`]).
    pub categories: Vec<String>,
    pub first_access: String,
    pub last_access: String,
    /// Accesses that returned or changed this patient's data.
    pub accesses: u64,
    /// `Type/id` of the records received (at most 200 listed per access).
    pub records: Vec<String>,
    pub notification: Notification,
}

/// The notification to one patient, in both languages (it names the patient: its `Debug`
/// prints nothing of it).
#[derive(Clone, Serialize)]
pub struct Notification {
    pub id: String,
    pub en: String,
}

/// A breach report.
#[derive(Clone, Debug, Serialize)]
pub struct BreachReport {
    pub suspect: String,
    pub since: String,
    pub until: String,
    pub generated: String,
    /// Audit records examined in the window.
    pub records_examined: u64,
    /// Refused attempts by the suspect in the window (they disclosed nothing).
    pub refused_attempts: u64,
    pub patients: Vec<HitPatient>,
    /// Canary patients the suspect touched: trip-wires, not people (no notification).
    pub canaries: Vec<CanaryHit>,
    /// Set when the window begins before the oldest record the hot log still holds: the
    /// records before it were archived (`brankas audit archive`) and were not examined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived: Option<String>,
}

/// A canary touched: which, and when first.
#[derive(Clone, Debug, Serialize)]
pub struct CanaryHit {
    pub id: String,
    pub first_access: String,
}

/// A stored category name as one of the report's own (unknown names become "other records").
fn known_category(c: &str) -> &'static str {
    ["identity", "anamnesis and conditions", "lab and antigen results", "EKG", "imaging", "photos", "documents", "referrals", "medicines and immunisations"]
        .into_iter()
        .find(|k| *k == c)
        .unwrap_or("other records")
}

/// The category of data a resource type holds, in the report's words.
pub fn category(resource_type: &str) -> &'static str {
    match resource_type {
        "Patient" | "RelatedPerson" => "identity",
        "Condition" | "AllergyIntolerance" | "ClinicalImpression" | "Encounter" | "EpisodeOfCare" => "anamnesis and conditions",
        "Observation" | "DiagnosticReport" | "Specimen" => "lab and antigen results",
        "ImagingStudy" => "imaging",
        "Media" => "photos",
        "DocumentReference" | "Binary" | "Composition" | "Consent" => "documents",
        "ServiceRequest" => "referrals",
        "MedicationRequest" | "MedicationStatement" | "MedicationAdministration" | "MedicationDispense" | "Immunization" => "medicines and immunisations",
        _ => "other records",
    }
}

/// The categories of data one resource discloses, judged from its content: a Patient with a
/// photo is also a photo; an Observation carrying waveform samples (`valueSampledData`, in a
/// component too) or coded as an ECG is an EKG; a Media is a photo unless it is an image study.
pub fn category_of(resource: &serde_json::Value) -> Vec<&'static str> {
    use serde_json::Value;
    let ty = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
    let mut out = vec![category(ty)];
    match ty {
        "Patient" if resource.get("photo").and_then(Value::as_array).is_some_and(|p| !p.is_empty()) => out.push("photos"),
        "Observation" => {
            let sampled = resource.get("valueSampledData").is_some()
                || resource.get("component").and_then(Value::as_array).is_some_and(|c| c.iter().any(|x| x.get("valueSampledData").is_some()));
            let text = resource.get("code").map(|c| c.to_string().to_ascii_lowercase()).unwrap_or_default();
            if sampled || text.contains("ecg") || text.contains("ekg") || text.contains("electrocardiogram") {
                out = vec!["EKG"];
            }
        }
        "Media" => {
            let modality = resource.get("modality").map(|m| m.to_string().to_ascii_lowercase()).unwrap_or_default();
            if modality.contains("\"cr\"") || modality.contains("\"ct\"") || modality.contains("\"dx\"") || modality.contains("\"mr\"") {
                out = vec!["imaging"];
            }
        }
        _ => {}
    }
    out
}

fn category_id(c: &str) -> &'static str {
    match c {
        "identity" => "identitas (nama, NIK, tanggal lahir, alamat, nomor telepon)",
        "anamnesis and conditions" => "anamnesis, keluhan, diagnosis dan kunjungan",
        "lab and antigen results" => "hasil laboratorium, antigen dan pemeriksaan lain (termasuk EKG)",
        "imaging" => "gambar radiologi (rontgen, CT)",
        "EKG" => "rekaman EKG (elektrokardiogram)",
        "photos" => "foto",
        "documents" => "dokumen (surat persetujuan, rujukan)",
        "referrals" => "rujukan",
        "medicines and immunisations" => "obat dan imunisasi",
        _ => "catatan medis lainnya",
    }
}

fn category_en(c: &str) -> &'static str {
    match c {
        "identity" => "identity (name, national ID number, birth date, address, phone number)",
        "anamnesis and conditions" => "medical history, complaints, diagnoses and visits",
        "lab and antigen results" => "laboratory, antigen and other test results (including EKGs)",
        "imaging" => "medical images (X-ray, CT)",
        "EKG" => "EKG (electrocardiogram) recordings",
        "photos" => "photos",
        "documents" => "documents (consent letters, referrals)",
        "referrals" => "referrals",
        "medicines and immunisations" => "medicines and immunisations",
        _ => "other medical records",
    }
}

fn rfc3339(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok().and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()).unwrap_or_default()
}

/// Records examined at most by one report (the window walks the log from its end).
pub const MAX_RECORDS: u64 = 50_000_000;

/// Builds the report. `identity` returns a patient's identity by Patient id (or `None` if the
/// patient no longer exists).
pub fn breach_report(
    log: &AuditLog,
    q: &BreachQuery,
    mut identity: impl FnMut(&str) -> Option<Identity>,
    mut is_canary: impl FnMut(&str) -> bool,
) -> Result<BreachReport, AuditError> {
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
    let until = q.until_us.unwrap_or(i64::MAX);
    struct Acc {
        first: i64,
        last: i64,
        accesses: u64,
        categories: BTreeMap<&'static str, ()>,
        records: Vec<String>,
    }
    let mut hit: BTreeMap<String, Acc> = BTreeMap::new();
    let (mut examined, mut refused) = (0u64, 0u64);
    // One walk per client (by the log's client index), or one over the whole log.
    let walks: Vec<Option<&str>> = match &q.suspect {
        Suspect::Client(c) => vec![Some(c.as_str())],
        Suspect::Clients { ids, .. } => ids.iter().map(|c| Some(c.as_str())).collect(),
        Suspect::Address(_) => vec![None],
    };
    for walk in walks {
        let mut before = None;
        'walk: loop {
            let page = match walk {
                Some(c) => log.by_client(c, before, 2000)?,
                None => log.latest(before, 2000)?,
            };
            let done = page.len() < 2000;
            for o in page {
                before = Some(o.seq);
                if o.time_us < q.since_us {
                    break 'walk;
                }
                examined += 1;
                if examined > MAX_RECORDS {
                    break 'walk;
                }
                if o.time_us >= until || !matches(&q.suspect, &o) {
                    continue;
                }
                if o.entry.outcome.is_none() {
                    // Written ahead of a write; the request's own record tells how it went.
                    continue;
                }
                if o.entry.outcome != Some(Outcome::Success) {
                    if o.partition.is_some() {
                        refused += 1;
                    }
                    continue;
                }
                let Some(pid) = o.entry.patient.clone() else { continue };
                if o.entry.resources.is_empty() && !o.entry.disclosed {
                    // The request reached the patient but received none of its data.
                    continue;
                }
                // What left (or was changed): reads, searches and exports, and writes.
                let a = hit.entry(pid).or_insert(Acc { first: o.time_us, last: o.time_us, accesses: 0, categories: BTreeMap::new(), records: Vec::new() });
                a.first = a.first.min(o.time_us);
                a.last = a.last.max(o.time_us);
                a.accesses += 1;
                for c in &o.entry.categories {
                    a.categories.insert(known_category(c), ());
                }
                if o.entry.resources.is_empty() && o.entry.categories.is_empty() {
                    // A count or an empty page about the patient: what was asked about.
                    let t = o.entry.target.as_deref().and_then(|t| t.split('/').next()).unwrap_or_default();
                    a.categories.insert(category(t), ());
                }
                for r in &o.entry.resources {
                    if o.entry.categories.is_empty() {
                        a.categories.insert(category(r.split('/').next().unwrap_or_default()), ());
                    }
                    if a.records.len() < 1000 && !a.records.contains(r) {
                        a.records.push(r.clone());
                    }
                }
            }
            if done {
                break;
            }
        }
    }
    let suspect = match &q.suspect {
        Suspect::Client(c) => format!("client {c}"),
        Suspect::Address(a) => format!("address {a}"),
        Suspect::Clients { label, ids } => format!("{label}: clients {}", ids.join(", ")),
    };
    let (canary, real): (Vec<_>, Vec<_>) = hit.into_iter().partition(|(id, _)| is_canary(id));
    let canaries = canary.into_iter().map(|(id, a)| CanaryHit { id, first_access: rfc3339(a.first) }).collect();
    let mut patients: Vec<HitPatient> = real
        .into_iter()
        .map(|(id, a)| {
            let categories: Vec<String> = a.categories.keys().map(|c| c.to_string()).collect();
            let ident = identity(&id).unwrap_or_default();
            let notification = notify(&ident, &categories, a.first, a.last, &q.contact);
            HitPatient { id, identity: ident, categories, first_access: rfc3339(a.first), last_access: rfc3339(a.last), accesses: a.accesses, records: a.records, notification }
        })
        .collect();
    patients.sort_by(|x, y| x.first_access.cmp(&y.first_access).then(x.id.cmp(&y.id)));
    let archived = log.held_from()?.filter(|(_, t)| q.since_us < *t).map(|(first, t)| {
        format!("audit records before position {first} (written before {}) are archived and were not examined: this report is incomplete for that part of the window", rfc3339(t))
    });
    Ok(BreachReport {
        archived,
        suspect,
        since: rfc3339(q.since_us),
        until: rfc3339(q.until_us.unwrap_or(now)),
        generated: rfc3339(now),
        records_examined: examined.min(MAX_RECORDS),
        refused_attempts: refused,
        patients,
        canaries,
    })
}

fn matches(s: &Suspect, o: &Opened) -> bool {
    match s {
        Suspect::Client(c) => o.entry.client_id == *c,
        Suspect::Address(a) => o.entry.address.as_deref() == Some(a.as_str()),
        Suspect::Clients { ids, .. } => ids.contains(&o.entry.client_id),
    }
}

/// The Art. 46 notification: which data, when and how, what is being done, whom to contact.
fn notify(who: &Identity, categories: &[String], first: i64, last: i64, contact: &str) -> Notification {
    let name = who.name.clone().unwrap_or_default();
    let (from, to) = (rfc3339(first), rfc3339(last));
    let when_id = if from == to { format!("pada {from}") } else { format!("antara {from} dan {to}") };
    let when_en = if from == to { format!("on {from}") } else { format!("between {from} and {to}") };
    let data_id = categories.iter().map(|c| category_id(c)).collect::<Vec<_>>().join("; ");
    let data_en = categories.iter().map(|c| category_en(c)).collect::<Vec<_>>().join("; ");
    let greet_id = if name.is_empty() { "Yth. Bapak/Ibu,".to_string() } else { format!("Yth. {name},") };
    let greet_en = if name.is_empty() { "Dear patient,".to_string() } else { format!("Dear {name},") };
    Notification {
        id: format!(
            "{greet_id} dengan ini kami memberitahukan sesuai Pasal 46 UU No. 27 Tahun 2022 tentang Pelindungan Data Pribadi bahwa data pribadi Anda berikut ini telah diakses oleh pihak yang tidak berhak: {data_id}. Pengungkapan terjadi {when_id}, melalui kredensial akses sistem informasi kesehatan yang disalahgunakan. Tindakan kami: kredensial tersebut telah dinonaktifkan, akses tersebut sedang diselidiki, dan otoritas pelindungan data pribadi telah atau akan diberi tahu dalam 3 x 24 jam. Untuk pertanyaan atau permintaan terkait data Anda, hubungi: {contact}."
        ),
        en: format!(
            "{greet_en} as required by Article 46 of Indonesia's Personal Data Protection Law (Law No. 27 of 2022), we inform you that the following personal data of yours was accessed without authorisation: {data_en}. The disclosure took place {when_en}, through a misused access credential of a health information system. What we are doing: the credential has been disabled, the access is being investigated, and the data protection authority has been or will be notified within 3 x 24 hours. For questions or requests about your data, contact: {contact}."
        ),
    }
}

impl BreachReport {
    /// The report as CSV (one row per patient), with the notification in `lang` (`id` or `en`).
    pub fn to_csv(&self, lang: &str) -> String {
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let mut out = String::from("patient_id,name,nik,birth_date,phone,address,categories,first_access,last_access,accesses,notification\n");
        for p in &self.patients {
            let i = &p.identity;
            let note = if lang == "en" { &p.notification.en } else { &p.notification.id };
            out.push_str(
                &[
                    q(&p.id),
                    q(i.name.as_deref().unwrap_or("")),
                    q(i.nik.as_deref().unwrap_or("")),
                    q(i.birth_date.as_deref().unwrap_or("")),
                    q(i.phone.as_deref().unwrap_or("")),
                    q(i.address.as_deref().unwrap_or("")),
                    q(&p.categories.join("; ")),
                    q(&p.first_access),
                    q(&p.last_access),
                    p.accesses.to_string(),
                    q(note),
                ]
                .join(","),
            );
            out.push('\n');
        }
        out
    }
}

impl Identity {
    /// The identity fields of a FHIR Patient resource: official (else first) name, NIK, birth
    /// date, first phone, first address.
    pub fn from_patient(p: &serde_json::Value) -> Identity {
        use serde_json::Value;
        let s = |v: &Value| v.as_str().map(String::from);
        let names = p.get("name").and_then(Value::as_array);
        let name = names.and_then(|n| n.iter().find(|x| x.get("use").and_then(Value::as_str) == Some("official")).or_else(|| n.first())).and_then(|n| {
            if let Some(t) = n.get("text").and_then(Value::as_str) {
                return Some(t.to_string());
            }
            let mut parts: Vec<String> = n.get("given").and_then(Value::as_array).into_iter().flatten().filter_map(s).collect();
            parts.extend(n.get("family").and_then(s));
            (!parts.is_empty()).then(|| parts.join(" "))
        });
        let nik = p
            .get("identifier")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|i| i.get("system").and_then(Value::as_str) == Some("https://fhir.kemkes.go.id/id/nik"))
            .and_then(|i| i.get("value").and_then(s));
        let phone = p
            .get("telecom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|t| t.get("system").and_then(Value::as_str) == Some("phone"))
            .and_then(|t| t.get("value").and_then(s));
        let address = p.get("address").and_then(Value::as_array).and_then(|a| a.first()).and_then(|a| {
            if let Some(t) = a.get("text").and_then(Value::as_str) {
                return Some(t.to_string());
            }
            let mut parts: Vec<String> = a.get("line").and_then(Value::as_array).into_iter().flatten().filter_map(s).collect();
            for k in ["city", "district", "state", "postalCode"] {
                parts.extend(a.get(k).and_then(s));
            }
            (!parts.is_empty()).then(|| parts.join(", "))
        });
        Identity { name, nik, birth_date: p.get("birthDate").and_then(s), phone, address }
    }
}

impl std::fmt::Debug for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notification(withheld)")
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(withheld)")
    }
}

/// A report's time bound: RFC 3339 (`2026-11-30T08:00:00Z`, `...+07:00`) or a date
/// (`2026-11-30`, midnight UTC), as microseconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let t = if s.len() == 10 {
        time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()?.midnight().assume_utc()
    } else {
        time::OffsetDateTime::parse(s, &Rfc3339).ok()?
    };
    Some((t.unix_timestamp_nanos() / 1000) as i64)
}
