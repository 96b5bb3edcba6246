//! What one audit record says (sealed in the log; rendered as a BALP AuditEvent above).

use serde::{Deserialize, Serialize};

/// The outcome of the audited action, with the codes of FHIR `AuditEvent.outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// 0: success.
    Success,
    /// 4: minor failure (refused: bad request, not found, denied).
    MinorFailure,
    /// 8: serious failure (the server failed).
    SeriousFailure,
}

impl Outcome {
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::MinorFailure => "4",
            Outcome::SeriousFailure => "8",
        }
    }

    /// From an HTTP status.
    pub fn of_status(status: u16) -> Self {
        match status {
            0..400 => Outcome::Success,
            400..500 => Outcome::MinorFailure,
            _ => Outcome::SeriousFailure,
        }
    }
}

/// One audit record: who did what to which patient's data, from where, why, and how it went.
///
/// Patients appear as resource ids (`patient`) only; resources as `Type/id`; searches as the
/// names of their parameters. Free text is limited to the break-glass reason the caller stated
/// and the reason of a denial (which never contains instance data).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// `read`, `vread`, `history`, `search`, `lookup` (identity), `create`, `update`, `delete`,
    /// `transaction`, `batch`, `everything`, `token`, `client-admin`, `audit-read`, `export`…
    pub interaction: String,
    /// FHIR `AuditEvent.action`: C, R, U, D or E.
    pub action: String,
    pub outcome: Option<Outcome>,
    /// Why it failed (a fixed phrase or the error kind; never instance data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_text: Option<String>,
    pub status: u16,
    /// The client (credential) that made the request.
    pub client_id: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practitioner: Option<String>,
    /// For a patient's own client: the patient it acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acting_patient: Option<String>,
    /// Network address of the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub request_id: String,
    /// Purpose of use (v3 ActReason code, e.g. TREAT, BTG).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The reason stated for breaking the glass, when the request did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<String>,
    /// The patient concerned (resource id), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// `Type/id` of this patient's resources returned, written or refused (at most
    /// [`AuditEntry::MAX_RESOURCES`]; `more` counts the rest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more: u64,
    /// Categories of the data touched, judged from the resources themselves when they were
    /// served (see [`crate::breach::category_of`]): what a breach notification names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// The answer disclosed this patient's data (the access checks admitted it and the guard
    /// passed it), even where it served none of the patient's records whole: a trimmed page,
    /// a count, a search naming the patient that found nothing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disclosed: bool,
    /// The request's resource type and id (`Observation`, `Patient/123`), without query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Names of the search parameters, never their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl AuditEntry {
    pub const MAX_RESOURCES: usize = 200;

    /// Adds a `Type/id` to `resources`, counting past the cap in `more`.
    pub fn add_resource(&mut self, reference: String) {
        if self.resources.len() < Self::MAX_RESOURCES {
            if !self.resources.contains(&reference) {
                self.resources.push(reference);
            }
        } else {
            self.more += 1;
        }
    }

    /// Adds a data category (once).
    pub fn add_category(&mut self, c: &str) {
        if !self.categories.iter().any(|x| x == c) {
            self.categories.push(c.to_string());
        }
    }

    /// The resource types among `resources` (the categories of data touched).
    pub fn resource_types(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.resources.iter().filter_map(|r| r.split('/').next()).collect();
        t.sort_unstable();
        t.dedup();
        t
    }
}

/// Shows the kind of record only: its content names patients and people.
impl std::fmt::Debug for AuditEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditEntry").field("interaction", &self.interaction).field("outcome", &self.outcome).finish_non_exhaustive()
    }
}
