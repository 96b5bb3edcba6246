//! The bytes of an [`AuditEntry`] inside its sealed record.
//!
//! Two formats, told apart by the first byte of the plaintext (which the AEAD authenticates
//! with the rest of the record, so a record's format cannot be changed without failing where
//! it is):
//!
//! - `{`: the first format, the entry as JSON (records written before the compact format).
//! - `0x01`: the compact format, version 1. No field names; fields in a fixed order; counts and
//!   numbers as LEB128 varints; optional fields announced by one bit each. Strings are written
//!   as a varint header `(payload << 2) | kind` followed by bytes:
//!   kind 0 a literal (payload = length), kind 1 an entry of [`DICTIONARY`] (payload = index),
//!   kind 2 lowercase hexadecimal of even length (payload = bytes, written as bytes), kind 3 a
//!   lowercase hyphenated UUID (payload 0, 16 bytes). `Type/id` references are two strings (the
//!   type usually from the dictionary, the id usually a UUID). Every string decodes to exactly
//!   the string that was encoded.
//!
//! The dictionary of version 1 is frozen: words are never removed, moved or changed (that would
//! change what old records say); a new word needs a new version byte.
//!
//! No compression: a record is sealed alone and what it would find to compress (field names,
//! type prefixes, hexadecimal, UUIDs as text) is gone already; what is left (ids) is random.
//! Compression would also make a sealed record's length depend on its content rather than on
//! the counts it holds (what the threat model accepts leaking).

use crate::{AuditEntry, Outcome};

/// The first byte of a compact record, version 1.
pub(crate) const COMPACT_V1: u8 = 1;

/// Words written as one or two bytes in version 1: interactions, actions, roles, purposes,
/// data categories, resource types, common search parameter names, failure codes. Frozen.
pub(crate) const DICTIONARY: &[&str] = &[
    // interactions
    "read",
    "vread",
    "history",
    "history-instance",
    "history-type",
    "search",
    "search-type",
    "lookup",
    "create",
    "update",
    "patch",
    "delete",
    "transaction",
    "batch",
    "everything",
    "operation",
    "capabilities",
    "token",
    "client-admin",
    "audit-read",
    "audit-proof",
    "audit-checkpoint",
    "audit-archive",
    "alerts-read",
    "export",
    "import",
    "breach-report",
    "key-rotation",
    "canary-create",
    "purpose-refused",
    "approval-requested",
    "state-anchor-created",
    "state-rollback-accepted",
    "dicom-store",
    "dicom-search",
    "dicom-retrieve",
    "dicom-metadata",
    "erase",
    // actions
    "C",
    "R",
    "U",
    "D",
    "E",
    // roles and the operator
    "admin",
    "facility-system",
    "clinician",
    "patient",
    "security-officer",
    "researcher",
    "operator",
    "local-operator",
    // purposes of use
    "TREAT",
    "ETREAT",
    "BTG",
    "HPAYMT",
    "HOPERAT",
    "HRESCH",
    "PATRQT",
    "PUBHLTH",
    "HSYSADMIN",
    // data categories
    "identity",
    "anamnesis and conditions",
    "lab and antigen results",
    "imaging",
    "EKG",
    "photos",
    "documents",
    "referrals",
    "medicines and immunisations",
    "other records",
    // resource types
    "Patient",
    "Observation",
    "Condition",
    "Encounter",
    "Procedure",
    "MedicationRequest",
    "MedicationStatement",
    "MedicationAdministration",
    "MedicationDispense",
    "Medication",
    "Immunization",
    "AllergyIntolerance",
    "DiagnosticReport",
    "DocumentReference",
    "Binary",
    "ImagingStudy",
    "Media",
    "Consent",
    "Composition",
    "ServiceRequest",
    "Specimen",
    "CarePlan",
    "CareTeam",
    "Claim",
    "ExplanationOfBenefit",
    "Coverage",
    "Goal",
    "Device",
    "SupplyDelivery",
    "Provenance",
    "RelatedPerson",
    "EpisodeOfCare",
    "ClinicalImpression",
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Location",
    "Bundle",
    "AuditEvent",
    // search parameter names ("patient" is among the roles)
    "subject",
    "_id",
    "identifier",
    "code",
    "date",
    "category",
    "status",
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_elements",
    "_summary",
    "_lastUpdated",
    "name",
    "birthdate",
    "gender",
    "telecom",
    "phone",
    "encounter",
    "type",
    "_since",
    "_at",
    "_type",
    "family",
    "given",
    "address",
    "organization",
    "clinical-status",
    "value-quantity",
    // failure codes and phrases
    "not-found",
    "forbidden",
    "invalid",
    "conflict",
    "processing",
    "security",
    "exception",
    "transient",
    "throttled",
    "too-costly",
    "not-supported",
    "business-rule",
    "required",
    "value",
    "structure",
    "duplicate",
    "login",
    "suppressed",
    "timeout",
    "incomplete",
    // addresses
    "127.0.0.1",
    "::1",
];

/// Why a stored body did not decode (it authenticated, so a bug or a newer format).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Undecodable;

/// Encodes an entry in the compact format.
pub(crate) fn encode(e: &AuditEntry) -> Vec<u8> {
    // Every field named, none skipped: a field added to `AuditEntry` does not compile here
    // until it is given a place in the encoding (as a new version: see the module docs).
    let AuditEntry {
        interaction,
        action,
        outcome,
        outcome_text,
        status,
        client_id,
        role,
        organization,
        practitioner,
        acting_patient,
        address,
        request_id,
        purpose,
        break_glass,
        patient,
        resources,
        more,
        categories,
        disclosed,
        target,
        query,
    } = e;
    let mut w = Vec::with_capacity(96 + resources.len() * 20);
    w.push(COMPACT_V1);
    w.push(match outcome {
        None => 0,
        Some(Outcome::Success) => 1,
        Some(Outcome::MinorFailure) => 2,
        Some(Outcome::SeriousFailure) => 3,
    });
    let optional = [outcome_text, organization, practitioner, acting_patient, address, purpose, break_glass, patient, target];
    let mut flags = 0u64;
    for (i, o) in optional.iter().enumerate() {
        if o.is_some() {
            flags |= 1 << i;
        }
    }
    if *disclosed {
        flags |= 1 << optional.len();
    }
    varint(&mut w, flags);
    text(&mut w, interaction);
    text(&mut w, action);
    varint(&mut w, u64::from(*status));
    text(&mut w, client_id);
    text(&mut w, role);
    text(&mut w, request_id);
    // The optional strings in the order of their bits; the target is a reference.
    for o in optional[..optional.len() - 1].iter().copied().flatten() {
        text(&mut w, o);
    }
    if let Some(t) = target {
        reference(&mut w, t);
    }
    varint(&mut w, resources.len() as u64);
    for r in resources {
        reference(&mut w, r);
    }
    varint(&mut w, *more);
    varint(&mut w, categories.len() as u64);
    for c in categories {
        text(&mut w, c);
    }
    varint(&mut w, query.len() as u64);
    for q in query {
        text(&mut w, q);
    }
    w
}

/// Decodes a stored body in either format.
pub(crate) fn decode(b: &[u8]) -> Result<AuditEntry, Undecodable> {
    match b.first() {
        Some(b'{') => serde_json::from_slice(b).map_err(|_| Undecodable),
        Some(&COMPACT_V1) => decode_v1(&b[1..]),
        _ => Err(Undecodable),
    }
}

fn decode_v1(b: &[u8]) -> Result<AuditEntry, Undecodable> {
    let mut r = Reader { b };
    let outcome = match r.byte()? {
        0 => None,
        1 => Some(Outcome::Success),
        2 => Some(Outcome::MinorFailure),
        3 => Some(Outcome::SeriousFailure),
        _ => return Err(Undecodable),
    };
    let flags = r.varint()?;
    if flags >> 10 != 0 {
        return Err(Undecodable);
    }
    let mut e = AuditEntry { outcome, ..Default::default() };
    e.interaction = r.text()?;
    e.action = r.text()?;
    e.status = u16::try_from(r.varint()?).map_err(|_| Undecodable)?;
    e.client_id = r.text()?;
    e.role = r.text()?;
    e.request_id = r.text()?;
    let opt = |bit: u32, r: &mut Reader<'_>, is_ref: bool| -> Result<Option<String>, Undecodable> {
        if flags >> bit & 1 == 1 { Ok(Some(if is_ref { r.reference()? } else { r.text()? })) } else { Ok(None) }
    };
    e.outcome_text = opt(0, &mut r, false)?;
    e.organization = opt(1, &mut r, false)?;
    e.practitioner = opt(2, &mut r, false)?;
    e.acting_patient = opt(3, &mut r, false)?;
    e.address = opt(4, &mut r, false)?;
    e.purpose = opt(5, &mut r, false)?;
    e.break_glass = opt(6, &mut r, false)?;
    e.patient = opt(7, &mut r, false)?;
    e.target = opt(8, &mut r, true)?;
    e.disclosed = flags >> 9 & 1 == 1;
    let n = r.count()?;
    e.resources = (0..n).map(|_| r.reference()).collect::<Result<_, _>>()?;
    e.more = r.varint()?;
    let n = r.count()?;
    e.categories = (0..n).map(|_| r.text()).collect::<Result<_, _>>()?;
    let n = r.count()?;
    e.query = (0..n).map(|_| r.text()).collect::<Result<_, _>>()?;
    if !r.b.is_empty() {
        return Err(Undecodable);
    }
    Ok(e)
}

fn varint(w: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        w.push((v as u8) | 0x80);
        v >>= 7;
    }
    w.push(v as u8);
}

const LITERAL: u64 = 0;
const WORD: u64 = 1;
const HEX: u64 = 2;
const UUID: u64 = 3;

fn text(w: &mut Vec<u8>, s: &str) {
    if let Some(i) = DICTIONARY.iter().position(|d| *d == s) {
        varint(w, (i as u64) << 2 | WORD);
    } else if let Some(u) = uuid_bytes(s) {
        varint(w, UUID);
        w.extend_from_slice(&u);
    } else if s.len() >= 8 && s.len().is_multiple_of(2) && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        varint(w, ((s.len() / 2) as u64) << 2 | HEX);
        w.extend(s.as_bytes().chunks(2).map(|p| nibble(p[0]) << 4 | nibble(p[1])));
    } else {
        varint(w, (s.len() as u64) << 2 | LITERAL);
        w.extend_from_slice(s.as_bytes());
    }
}

/// `Type/id` as two strings; a string whose part before the first `/` is empty, or that has
/// no `/`, as an empty type and the whole string.
fn reference(w: &mut Vec<u8>, s: &str) {
    match s.split_once('/') {
        Some((t, id)) if !t.is_empty() => {
            text(w, t);
            text(w, id);
        }
        _ => {
            text(w, "");
            text(w, s);
        }
    }
}

fn nibble(c: u8) -> u8 {
    if c <= b'9' { c - b'0' } else { c - b'a' + 10 }
}

/// The 16 bytes of a lowercase hyphenated UUID (`8-4-4-4-12`), exactly that form only.
fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: Vec<u8> = b.iter().copied().filter(|&c| c != b'-').collect();
    if hex.len() != 32 || !hex.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 16];
    for (o, p) in out.iter_mut().zip(hex.chunks(2)) {
        *o = nibble(p[0]) << 4 | nibble(p[1]);
    }
    Some(out)
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, Undecodable> {
        let (&x, rest) = self.b.split_first().ok_or(Undecodable)?;
        self.b = rest;
        Ok(x)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], Undecodable> {
        if n > self.b.len() {
            return Err(Undecodable);
        }
        let (x, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(x)
    }

    fn varint(&mut self) -> Result<u64, Undecodable> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let x = self.byte()?;
            v |= u64::from(x & 0x7f).checked_shl(shift).ok_or(Undecodable)?;
            if x & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Undecodable)
    }

    /// A count of items that each take at least one byte: never more than the bytes left.
    fn count(&mut self) -> Result<usize, Undecodable> {
        let n = self.varint()?;
        if n > self.b.len() as u64 { Err(Undecodable) } else { Ok(n as usize) }
    }

    fn text(&mut self) -> Result<String, Undecodable> {
        let h = self.varint()?;
        let payload = usize::try_from(h >> 2).map_err(|_| Undecodable)?;
        match h & 3 {
            LITERAL => String::from_utf8(self.take(payload)?.to_vec()).map_err(|_| Undecodable),
            WORD => DICTIONARY.get(payload).map(|s| s.to_string()).ok_or(Undecodable),
            HEX => Ok(hex_of(self.take(payload)?)),
            _ => {
                if payload != 0 {
                    return Err(Undecodable);
                }
                let u = hex_of(self.take(16)?);
                Ok(format!("{}-{}-{}-{}-{}", &u[..8], &u[8..12], &u[12..16], &u[16..20], &u[20..]))
            }
        }
    }

    fn reference(&mut self) -> Result<String, Undecodable> {
        let t = self.text()?;
        let id = self.text()?;
        Ok(if t.is_empty() { id } else { format!("{t}/{id}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> AuditEntry {
        AuditEntry {
            interaction: "search-type".into(),
            action: "E".into(),
            outcome: Some(Outcome::Success),
            outcome_text: Some("a phrase that is not a word".into()),
            status: 200,
            client_id: "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b".into(),
            role: "clinician".into(),
            organization: Some("Organization/rs-harapan".into()),
            practitioner: Some("Practitioner/0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d".into()),
            acting_patient: None,
            address: Some("10.1.2.3".into()),
            request_id: "9f86d081884c7d659a2feaa0c55ad015".into(),
            purpose: Some("TREAT".into()),
            break_glass: Some("unconscious patient in the emergency room, tidak sadar".into()),
            patient: Some("e4c5f0a2-6d7b-4c8e-9f01-23456789abcd".into()),
            resources: vec![
                "Observation/8c0f4f3e-1a2b-4c3d-8e4f-5a6b7c8d9e0f".into(),
                "Observation/example-1".into(),
                "Unknown/x".into(),
                "no-slash".into(),
                "/leading".into(),
                "Type/".into(),
                "Patient/A0C5F0A2-6D7B-4C8E-9F01-23456789ABCD".into(),
            ],
            more: 7,
            categories: vec!["lab and antigen results".into(), "EKG".into()],
            disclosed: true,
            target: Some("Observation".into()),
            query: vec!["patient".into(), "code:text".into(), "".into(), "_count".into()],
        }
    }

    #[test]
    fn round_trips_every_field_and_odd_strings() {
        for e in [full(), AuditEntry::default(), AuditEntry { outcome: Some(Outcome::SeriousFailure), target: Some("Patient/p-1".into()), ..Default::default() }] {
            let b = encode(&e);
            assert_eq!(b[0], COMPACT_V1);
            assert_eq!(decode(&b), Ok(e));
        }
        for s in ["", "0123456789abcdef", "0123456789ABCDEF", "abc", "deadbeef", "deadbee", "ééé", "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6", "3f2a9c1e+5b7d-4e8f-9a0b-1c2d3e4f5a6b"]
        {
            let e = AuditEntry { client_id: s.into(), request_id: s.into(), resources: vec![format!("Patient/{s}"), s.into()], ..Default::default() };
            assert_eq!(decode(&encode(&e)), Ok(e), "{s:?}");
        }
    }

    #[test]
    fn first_format_records_still_decode() {
        let e = full();
        let json = serde_json::to_vec(&e).unwrap();
        assert_eq!(json[0], b'{');
        assert_eq!(decode(&json), Ok(e));
    }

    #[test]
    fn damaged_or_unknown_bodies_are_refused_without_panicking() {
        let b = encode(&full());
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err() || cut == b.len(), "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(Undecodable));
        assert_eq!(decode(&[2, 0, 0]), Err(Undecodable));
        assert_eq!(decode(&[COMPACT_V1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), Err(Undecodable));
        for i in 1..b.len() {
            let mut x = b.clone();
            x[i] ^= 0x55;
            let _ = decode(&x);
        }
    }

    #[test]
    fn the_dictionary_has_no_duplicates() {
        let mut d = DICTIONARY.to_vec();
        d.sort_unstable();
        d.dedup();
        assert_eq!(d.len(), DICTIONARY.len());
    }

    /// A record as the HTTP layer writes it for one patient of a search, in both formats: the
    /// compact one must stay well under the JSON one (measured 510 bytes against 1,497: 0.34).
    #[test]
    fn compact_records_are_much_smaller_than_json() {
        let resources: Vec<String> = (0..20).map(|i| format!("Observation/{:08x}-1a2b-4c3d-8e4f-5a6b7c8d9e{i:02x}", 0x8c0f4f3eu32 + i)).collect();
        let e = AuditEntry {
            interaction: "search-type".into(),
            action: "E".into(),
            outcome: Some(Outcome::Success),
            status: 200,
            client_id: "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b".into(),
            role: "facility-system".into(),
            organization: Some("Organization/0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d".into()),
            address: Some("127.0.0.1".into()),
            request_id: "9f86d081884c7d659a2feaa0c55ad015".into(),
            purpose: Some("TREAT".into()),
            patient: Some("e4c5f0a2-6d7b-4c8e-9f01-23456789abcd".into()),
            resources,
            categories: vec!["lab and antigen results".into()],
            disclosed: true,
            target: Some("Observation".into()),
            query: vec!["patient".into(), "code".into()],
            ..Default::default()
        };
        let (json, compact) = (serde_json::to_vec(&e).unwrap().len(), encode(&e).len());
        assert!(compact * 2 < json, "compact {compact} bytes against JSON {json}");
    }
}
