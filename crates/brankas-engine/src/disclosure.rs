//! Disclosure as a value (invariant 12 of the threat model): what an answer discloses is
//! decided where the access checks admit records, not read back from the answer.
//!
//! Every public operation that returns patient data returns an [`Admitted`]: the result
//! together with the [`Disclosure`] the gates admitted — which patients, which of their
//! records, which categories of data — computed from the records as admitted (after consent,
//! labels and redaction) and *before* the answer is trimmed (`_elements`, `_summary`), paged or
//! reduced to a count. The result can be taken out in one way only: [`Admitted::release`],
//! which requires a [`brankas_audit::Receipt`] covering every disclosed patient. A receipt is
//! made only by the audit log once that patient's successful records are durable, and the HTTP
//! layer writes such records only for what the guard (budget, canaries) admitted. So an answer
//! that skips the guard or the audit does not compile, and one whose audit does not cover what
//! it discloses is refused at run time ([`Unaudited`]).
//!
//! Operations that compose several engine calls (DICOMweb) gather their disclosures into one
//! with [`Admitted::take`] or [`Admitted::and_then`]; nothing drops a disclosure on the way.

use std::collections::BTreeMap;

use brankas_store::PartitionId;
use serde_json::Value;

/// What an answer discloses, by patient.
#[derive(Default)]
pub struct Disclosure {
    patients: BTreeMap<PartitionId, Disclosed>,
}

/// One patient's part of a disclosure.
#[derive(Default)]
pub struct Disclosed {
    /// The patient's resource id, when the admitted records name it.
    pub patient_id: Option<String>,
    /// `Type/id` of the records admitted (a search page, a read, every version of a history).
    pub records: Vec<String>,
    /// Categories of data (see [`brankas_audit::breach::category_of`]).
    pub categories: Vec<&'static str>,
}

/// Names nothing: counts only.
impl std::fmt::Debug for Disclosure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disclosure").field("patients", &self.patients.len()).finish()
    }
}

impl Disclosure {
    /// Nothing disclosed.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds one admitted record of the patient in `partition`.
    pub(crate) fn record(&mut self, partition: PartitionId, patient_id: Option<String>, resource: &Value) {
        let d = self.patients.entry(partition).or_default();
        if d.patient_id.is_none() {
            d.patient_id = patient_id;
        }
        let t = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        let id = resource.get("id").and_then(Value::as_str).unwrap_or_default();
        let r = format!("{t}/{id}");
        if !d.records.contains(&r) {
            d.records.push(r);
        }
        for c in brankas_audit::breach::category_of(resource) {
            if !d.categories.contains(&c) {
                d.categories.push(c);
            }
        }
    }

    /// A patient whose record an answer reveals facts about without serving any of its
    /// records (a search naming the patient that found nothing, a count).
    pub(crate) fn patient(&mut self, partition: PartitionId, patient_id: Option<String>) {
        let d = self.patients.entry(partition).or_default();
        if d.patient_id.is_none() {
            d.patient_id = patient_id;
        }
    }

    /// Adds everything `other` disclosed.
    pub fn merge(&mut self, other: Disclosure) {
        for (p, o) in other.patients {
            let d = self.patients.entry(p).or_default();
            if d.patient_id.is_none() {
                d.patient_id = o.patient_id;
            }
            for r in o.records {
                if !d.records.contains(&r) {
                    d.records.push(r);
                }
            }
            for c in o.categories {
                if !d.categories.contains(&c) {
                    d.categories.push(c);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.patients.is_empty()
    }

    /// The patients disclosed, by partition.
    pub fn patients(&self) -> impl Iterator<Item = (&PartitionId, &Disclosed)> {
        self.patients.iter()
    }

    /// The partitions disclosed.
    pub fn partitions(&self) -> Vec<PartitionId> {
        self.patients.keys().copied().collect()
    }
}

/// A result and what it discloses; see the module docs.
#[must_use = "an admitted answer is released only through the guard and the audit"]
pub struct Admitted<T> {
    value: T,
    disclosure: Disclosure,
}

/// An answer was to be released with a receipt that does not cover every patient it discloses.
#[derive(Debug, thiserror::Error)]
#[error("the audit receipt does not cover every patient this answer discloses")]
pub struct Unaudited;

impl<T> Admitted<T> {
    pub(crate) fn new(value: T, disclosure: Disclosure) -> Self {
        Self { value, disclosure }
    }

    /// A value that discloses no patient (a directory entry, a write's empty answer).
    pub fn nothing(value: T) -> Self {
        Self { value, disclosure: Disclosure::default() }
    }

    /// What the answer discloses, for the guard and the audit.
    pub fn disclosure(&self) -> &Disclosure {
        &self.disclosure
    }

    /// The result, once the audit log holds the records of every patient it discloses.
    pub fn release(self, receipt: &brankas_audit::Receipt) -> Result<T, Unaudited> {
        if self.disclosure.patients.keys().all(|p| receipt.covers(p)) { Ok(self.value) } else { Err(Unaudited) }
    }

    /// Transforms the result; the disclosure stays.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Admitted<U> {
        Admitted { value: f(self.value), disclosure: self.disclosure }
    }

    /// Chains an operation on the result; both disclosures are kept.
    pub fn and_then<U, E>(self, f: impl FnOnce(T) -> Result<Admitted<U>, E>) -> Result<Admitted<U>, E> {
        let mut next = f(self.value)?;
        next.disclosure.merge(self.disclosure);
        Ok(next)
    }

    /// Takes the result of another admitted answer into this one: its disclosure joins this
    /// one's, its value is returned for composing this answer.
    pub fn take<U>(&mut self, other: Admitted<U>) -> U {
        self.disclosure.merge(other.disclosure);
        other.value
    }

    /// Looks at the result without releasing it: to decide what else to fetch while an answer
    /// is composed, and for the operator's own tools on the machine. Nothing read here may be
    /// sent to a client: answers leave through [`Admitted::release`] only (a grep for this
    /// name lists every such place for review).
    pub fn unreleased(&self) -> &T {
        &self.value
    }
}

/// Gathers admitted answers into one.
impl<T> FromIterator<Admitted<T>> for Admitted<Vec<T>> {
    fn from_iter<I: IntoIterator<Item = Admitted<T>>>(iter: I) -> Self {
        let mut out = Admitted::nothing(Vec::new());
        for a in iter {
            let v = out.take(a);
            out.value.push(v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn disclosure_merges_patients_records_and_categories_once() {
        let (a, b) = (PartitionId([1; 32]), PartitionId([2; 32]));
        let mut d = Disclosure::none();
        d.record(a, Some("p1".into()), &json!({"resourceType": "Condition", "id": "c1"}));
        d.record(a, None, &json!({"resourceType": "Condition", "id": "c1"}));
        let mut e = Disclosure::none();
        e.record(a, None, &json!({"resourceType": "Observation", "id": "o1"}));
        e.patient(b, Some("p2".into()));
        d.merge(e);
        let all: Vec<_> = d.patients().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].1.patient_id.as_deref(), Some("p1"));
        assert_eq!(all[0].1.records, vec!["Condition/c1", "Observation/o1"]);
        assert_eq!(all[0].1.categories.len(), 2);
        assert!(all[1].1.records.is_empty(), "a patient revealed without records is still disclosed");
    }

    #[test]
    fn gathering_keeps_every_disclosure() {
        let parts: Vec<Admitted<u8>> = (0..3u8)
            .map(|i| {
                let mut d = Disclosure::none();
                d.patient(PartitionId([i; 32]), None);
                Admitted::new(i, d)
            })
            .collect();
        let all: Admitted<Vec<u8>> = parts.into_iter().collect();
        assert_eq!(all.unreleased(), &vec![0, 1, 2]);
        assert_eq!(all.disclosure().partitions().len(), 3);
        let chained = all.and_then(|v| {
            Ok::<_, ()>(Admitted::new(v.len(), {
                let mut d = Disclosure::none();
                d.patient(PartitionId([9; 32]), None);
                d
            }))
        });
        assert_eq!(chained.unwrap().disclosure().partitions().len(), 4);
    }
}
