//! What a client registration may say: the fields an administrator sets, checked against the
//! client's role before anything is stored.

use serde::{Deserialize, Serialize};

use crate::jwt::Jwks;
use crate::{AuthError, Role, Scopes};

/// The resource types of the directory: the only ones an `admin` client reaches (separation
/// of duties: administrators manage clients, keys and the directory, never patient data).
pub const DIRECTORY_TYPES: &[&str] = &["Organization", "Practitioner", "PractitionerRole", "Location", "HealthcareService", "Endpoint"];

/// Sensitive categories a client may be granted explicitly (`"sensitive": [...]`): records
/// labelled with one of these in `meta.security` (HL7 v3 ActCode sensitivity codes and the
/// v3 Confidentiality codes R and V) are hidden from clients without the grant, and `PHOTO`
/// lets a client see patients' photos (`Patient.photo`), which are otherwise redacted.
pub const SENSITIVE_CATEGORIES: &[&str] = &["HIV", "PSY", "ETH", "SDV", "STD", "SUD", "SICKLE", "GDIS", "R", "V", "PHOTO"];

/// The fields of a client registration an administrator chooses (`POST /admin/clients`,
/// `brankas clients create`). Unknown fields are refused, so a typo cannot silently drop a
/// restriction.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    pub name: String,
    pub role: Option<Role>,
    /// Space-separated SMART v2 (or v1) scopes the client may be granted.
    #[serde(default)]
    pub scopes: String,
    /// `Organization/<id>`: the facility a `facility-system` or `clinician` client acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// `Practitioner/<id>`: the practitioner a `clinician` client acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practitioner: Option<String>,
    /// The identifier system of a `facility-system` client's own medical record numbers (an
    /// absolute URI, e.g. `http://sys-ids.kemkes.go.id/mrn/<organization>`): a DICOM
    /// instance it sends is linked to the one Patient with its PatientID in this system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_number_system: Option<String>,
    /// `Patient/<id>`: the one patient a `patient` client is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Public keys (a JWK Set) for SMART Backend Services `private_key_jwt` authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// Sensitive categories granted explicitly (see [`SENSITIVE_CATEGORIES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive: Vec<String>,
    /// A trusted external identity provider (a hospital's): its access tokens, signed by a
    /// key of `jwks` with this `iss`, are accepted as they are. The token's `fhirUser` names
    /// the practitioner (clinician) or patient (patient); the registration names the
    /// organization and bounds the scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// How many distinct patients' data the client may receive; absent: its role's default
    /// ([`PatientBudget::default_for`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_budget: Option<PatientBudget>,
    /// Request rate, page size and concurrency; absent fields take the role's default
    /// ([`RateLimits::default_for`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RateLimitSpec>,
    /// Purposes of use (HL7 v3 PurposeOfUse codes, e.g. `ETREAT`, `HPAYMT`) the client may
    /// state besides treatment (`TREAT`, always allowed to facility-system and clinician
    /// clients). Break-glass (`BTG`) is its own mechanism and is not listed here. A request
    /// stating any other purpose is refused; a registered one needs a reason and is handled
    /// like break-glass (time-limited, alerted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purposes: Vec<String>,
}

/// Whether `code` has the shape of a purpose-of-use code (letters, digits, `-`, `_`; 1 to 32).
pub fn is_purpose_code(code: &str) -> bool {
    !code.is_empty() && code.len() <= 32 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A client's request limits as registered: each field optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Sustained requests per second (token bucket refill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// Requests allowed in a burst (token bucket size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Largest search page (`_count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_page: Option<u32>,
    /// Requests in progress at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

/// A client's request limits in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    pub requests_per_second: u32,
    pub burst: u32,
    pub max_page: u32,
    pub max_concurrent: u32,
}

impl RateLimits {
    /// The defaults of a role: a facility's system 200 requests/s (bursts of 400), pages of
    /// 200, 64 at once; a clinician's or officer's app 20/s (60), pages of 100, 8 at once; a
    /// patient's app 10/s (30), pages of 50, 4 at once; admin and researcher 20/s, 100, 4.
    pub fn default_for(role: Role) -> RateLimits {
        let (requests_per_second, burst, max_page, max_concurrent) = match role {
            Role::FacilitySystem => (200, 400, 200, 64),
            Role::Clinician | Role::SecurityOfficer => (20, 60, 100, 8),
            Role::Patient => (10, 30, 50, 4),
            Role::Admin | Role::Researcher => (20, 60, 100, 4),
        };
        RateLimits { requests_per_second, burst, max_page, max_concurrent }
    }

    /// The registered limits over the role's defaults.
    pub fn resolve(role: Role, spec: Option<&RateLimitSpec>) -> RateLimits {
        let d = Self::default_for(role);
        let Some(s) = spec else { return d };
        RateLimits {
            requests_per_second: s.requests_per_second.unwrap_or(d.requests_per_second),
            burst: s.burst.unwrap_or(d.burst),
            max_page: s.max_page.unwrap_or(d.max_page),
            max_concurrent: s.max_concurrent.unwrap_or(d.max_concurrent),
        }
    }
}

impl RateLimitSpec {
    fn validate(&self) -> Result<(), AuthError> {
        let ok = |v: Option<u32>, max: u32| v.is_none_or(|v| v >= 1 && v <= max);
        if !ok(self.requests_per_second, 1_000_000) || !ok(self.burst, 10_000_000) || !ok(self.max_page, 1000) || !ok(self.max_concurrent, 100_000) {
            return Err(AuthError::BadRegistration("limits: requests_per_second 1..1000000, burst 1..10000000, max_page 1..1000, max_concurrent 1..100000"));
        }
        Ok(())
    }
}

/// What a client exceeding its patient budget meets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnExceed {
    /// The request is refused and the client suspended (the default).
    #[default]
    Suspend,
    /// The request is refused; the client may go on within its budget.
    Throttle,
}

/// Distinct patients whose data a client may receive (identity lookups included) per clock
/// hour and per UTC day (`"patient_budget": {"per_hour": N, "per_day": M, "on_exceed": "suspend"}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientBudget {
    pub per_hour: u32,
    pub per_day: u32,
    #[serde(default)]
    pub on_exceed: OnExceed,
}

impl PatientBudget {
    /// The default of a role: a facility's information system sees its facility's day
    /// (1,000 patients an hour, 10,000 a day); a clinician's app one practitioner's (60 an
    /// hour, 300 a day); a patient's app its own record; a security officer's breach reports
    /// name at most 500 patients an hour and 2,000 a day; admins and researchers receive no
    /// patient data.
    pub fn default_for(role: Role) -> PatientBudget {
        let (per_hour, per_day) = match role {
            Role::FacilitySystem => (1_000, 10_000),
            Role::Clinician => (60, 300),
            Role::Patient => (5, 20),
            // What an officer's breach reports reveal (the identities of the patients named)
            // is counted like any disclosure: a stolen officer credential is bounded too.
            Role::SecurityOfficer => (500, 2_000),
            Role::Researcher | Role::Admin => (0, 0),
        };
        PatientBudget { per_hour, per_day, on_exceed: OnExceed::Suspend }
    }

    fn validate(&self) -> Result<(), AuthError> {
        if self.per_hour == 0 || self.per_day == 0 || self.per_hour > self.per_day || self.per_day > 100_000_000 {
            return Err(AuthError::BadRegistration("patient_budget needs 0 < per_hour <= per_day <= 100000000"));
        }
        Ok(())
    }
}

/// Changes to a registration (`PATCH /admin/clients/{id}`): absent fields stay as they are;
/// `null` clears an optional one.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientUpdate {
    pub name: Option<String>,
    pub scopes: Option<String>,
    #[serde(default, with = "double_option")]
    pub organization: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    pub practitioner: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    pub record_number_system: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    pub patient: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    pub jwks: Option<Option<serde_json::Value>>,
    pub sensitive: Option<Vec<String>>,
    /// A new patient budget; `null` returns to the role's default.
    #[serde(default, with = "double_option")]
    pub patient_budget: Option<Option<PatientBudget>>,
    /// New request limits; `null` returns to the role's defaults.
    #[serde(default, with = "double_option")]
    pub limits: Option<Option<RateLimitSpec>>,
    /// The purposes of use it may state besides treatment (replaces the list).
    pub purposes: Option<Vec<String>>,
}

impl ClientUpdate {
    /// The registration `spec` with these changes made (not yet checked).
    pub fn applied_to(&self, mut spec: ClientSpec) -> ClientSpec {
        if let Some(n) = &self.name {
            spec.name = n.clone();
        }
        if let Some(sc) = &self.scopes {
            spec.scopes = sc.clone();
        }
        if let Some(o) = &self.organization {
            spec.organization = o.clone();
        }
        if let Some(p) = &self.practitioner {
            spec.practitioner = p.clone();
        }
        if let Some(r) = &self.record_number_system {
            spec.record_number_system = r.clone();
        }
        if let Some(p) = &self.patient {
            spec.patient = p.clone();
        }
        if let Some(j) = &self.jwks {
            spec.jwks = j.clone();
        }
        if let Some(x) = &self.sensitive {
            spec.sensitive = x.clone();
        }
        if let Some(b) = &self.patient_budget {
            spec.patient_budget = *b;
        }
        if let Some(l) = &self.limits {
            spec.limits = *l;
        }
        if let Some(p) = &self.purposes {
            spec.purposes = p.clone();
        }
        spec
    }
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// A FHIR id: 1 to 64 of `A-Z a-z 0-9 - .`.
fn is_fhir_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `Type/<id>` with the expected type, or the reason it is not.
fn check_ref(value: &Option<String>, ty: &str, what: &'static str) -> Result<(), AuthError> {
    match value {
        None => Ok(()),
        Some(v) => match v.split_once('/') {
            Some((t, id)) if t == ty && is_fhir_id(id) => Ok(()),
            _ => Err(AuthError::BadRegistration(what)),
        },
    }
}

impl ClientSpec {
    /// Whether this registration (a changed `old`) reaches nothing `old` did not: only the
    /// name changed, scopes within the old ones, sensitive grants a subset, the patient
    /// budget and request limits in force no higher (and `suspend` not turned into
    /// `throttle`), keys removed. Any other difference (organization, practitioner, patient,
    /// keys, issuer, and any field this function does not know) counts as widening: the
    /// two-person rule fails closed.
    pub fn only_narrows(&self, old: &ClientSpec) -> bool {
        let Some(role) = old.role else { return false };
        if self.role != old.role {
            return false;
        }
        let mut probe = self.clone();
        probe.name = old.name.clone();
        if let (Ok(new), Ok(was)) = (Scopes::parse(&self.scopes), Scopes::parse(&old.scopes))
            && was.covers(&new)
        {
            probe.scopes = old.scopes.clone();
        }
        if self.sensitive.iter().all(|c| old.sensitive.contains(c)) {
            probe.sensitive = old.sensitive.clone();
        }
        if self.jwks.is_none() {
            probe.jwks = old.jwks.clone();
        }
        // Fewer purposes of use reach less.
        if self.purposes.iter().all(|p| old.purposes.contains(p)) {
            probe.purposes = old.purposes.clone();
        }
        let (nb, ob) = (self.patient_budget.unwrap_or(PatientBudget::default_for(role)), old.patient_budget.unwrap_or(PatientBudget::default_for(role)));
        if nb.per_hour <= ob.per_hour && nb.per_day <= ob.per_day && (nb.on_exceed == ob.on_exceed || nb.on_exceed == OnExceed::Suspend) {
            probe.patient_budget = old.patient_budget;
        }
        let (nl, ol) = (RateLimits::resolve(role, self.limits.as_ref()), RateLimits::resolve(role, old.limits.as_ref()));
        if nl.requests_per_second <= ol.requests_per_second && nl.burst <= ol.burst && nl.max_page <= ol.max_page && nl.max_concurrent <= ol.max_concurrent {
            probe.limits = old.limits;
        }
        match (serde_json::to_value(&probe), serde_json::to_value(old)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }

    /// Checks the registration as a whole: references well formed, the fields each role needs
    /// present (and the ones it must not have absent), scopes valid and within what the role
    /// can use, keys usable. Returns the parsed JWK Set, if any.
    pub fn validate(&self) -> Result<Option<Jwks>, AuthError> {
        let role = self.role.ok_or(AuthError::BadRegistration("role is required: facility-system, clinician, patient, security-officer, researcher or admin"))?;
        if self.name.trim().is_empty() || self.name.chars().count() > 200 || self.name.chars().any(char::is_control) {
            return Err(AuthError::BadRegistration("name must be 1 to 200 printable characters"));
        }
        check_ref(&self.organization, "Organization", "organization must be Organization/<id>")?;
        check_ref(&self.practitioner, "Practitioner", "practitioner must be Practitioner/<id>")?;
        check_ref(&self.patient, "Patient", "patient must be Patient/<id>")?;
        if let Some(sys) = &self.record_number_system {
            let uri = (sys.starts_with("http://") || sys.starts_with("https://") || sys.starts_with("urn:"))
                && sys.len() <= 255
                && !sys.chars().any(|c| c.is_whitespace() || c.is_control() || c == '|');
            if !uri {
                return Err(AuthError::BadRegistration("record_number_system must be an absolute URI (http, https or urn) without spaces or '|'"));
            }
            if role != Role::FacilitySystem {
                return Err(AuthError::BadRegistration("only a facility-system client has a record_number_system"));
            }
        }
        if let Some(b) = &self.patient_budget {
            b.validate()?;
        }
        if let Some(l) = &self.limits {
            l.validate()?;
        }
        let scopes = Scopes::parse(&self.scopes).map_err(|_| AuthError::BadRegistration("scopes are not valid SMART scopes"))?;
        let contexts = |allowed: &[&str]| scopes.resource_scopes().iter().all(|s| allowed.contains(&s.context.as_str()));
        match role {
            Role::FacilitySystem => {
                if self.organization.is_none() {
                    return Err(AuthError::BadRegistration("a facility-system client needs its organization"));
                }
                if self.patient.is_some() || self.practitioner.is_some() {
                    return Err(AuthError::BadRegistration("a facility-system client acts for its facility, not for a patient or practitioner"));
                }
                if !contexts(&["system"]) {
                    return Err(AuthError::BadRegistration("a facility-system client takes system/ scopes"));
                }
            }
            Role::Clinician => {
                if self.organization.is_none() {
                    return Err(AuthError::BadRegistration("a clinician client needs its organization"));
                }
                match (&self.issuer, &self.practitioner) {
                    (None, None) => return Err(AuthError::BadRegistration("a clinician client needs its practitioner")),
                    (Some(_), Some(_)) => {
                        return Err(AuthError::BadRegistration("a trusted issuer's tokens name their practitioner (fhirUser); the registration does not"));
                    }
                    _ => {}
                }
                if self.patient.is_some() {
                    return Err(AuthError::BadRegistration("a clinician client is not bound to a patient"));
                }
                if !contexts(&["user"]) {
                    return Err(AuthError::BadRegistration("a clinician client takes user/ scopes"));
                }
            }
            Role::Patient => {
                match (&self.issuer, &self.patient) {
                    (None, None) => return Err(AuthError::BadRegistration("a patient client needs its patient")),
                    (Some(_), Some(_)) => return Err(AuthError::BadRegistration("a trusted issuer's tokens name their patient (fhirUser); the registration does not")),
                    _ => {}
                }
                if self.organization.is_some() || self.practitioner.is_some() {
                    return Err(AuthError::BadRegistration("a patient client has no organization or practitioner"));
                }
                if !contexts(&["patient"]) {
                    return Err(AuthError::BadRegistration("a patient client takes patient/ scopes"));
                }
            }
            Role::Admin => {
                if self.patient.is_some() || self.practitioner.is_some() {
                    return Err(AuthError::BadRegistration("an admin client is not bound to a patient or practitioner"));
                }
                let directory_only = scopes.resource_scopes().iter().all(|s| s.context == "system" && DIRECTORY_TYPES.contains(&s.resource_type.as_str()));
                if !directory_only {
                    return Err(AuthError::BadRegistration(
                        "an admin client takes system/ scopes on directory types only (Organization, Practitioner, PractitionerRole, Location, HealthcareService, Endpoint)",
                    ));
                }
            }
            Role::SecurityOfficer => {
                if self.patient.is_some() || self.practitioner.is_some() {
                    return Err(AuthError::BadRegistration("a security-officer client is not bound to a patient or practitioner"));
                }
                if !scopes.resource_scopes().iter().all(|s| s.context == "system" && s.resource_type == "AuditEvent" && !s.perms.contains(['c', 'u', 'd'])) {
                    return Err(AuthError::BadRegistration("a security-officer client reads audit data only (system/AuditEvent.rs)"));
                }
            }
            Role::Researcher => {
                if self.patient.is_some() || self.practitioner.is_some() || !scopes.resource_scopes().is_empty() {
                    return Err(AuthError::BadRegistration("a researcher client has no access to the clinical API"));
                }
            }
        }
        if self.sensitive.iter().any(|c| !SENSITIVE_CATEGORIES.contains(&c.as_str())) {
            return Err(AuthError::BadRegistration("sensitive grants must be among HIV, PSY, ETH, SDV, STD, SUD, SICKLE, GDIS, R, V, PHOTO"));
        }
        if !self.sensitive.is_empty() && !matches!(role, Role::FacilitySystem | Role::Clinician) {
            return Err(AuthError::BadRegistration("only facility-system and clinician clients take sensitive grants"));
        }
        if self.purposes.iter().any(|p| !is_purpose_code(p) || p == "BTG") {
            return Err(AuthError::BadRegistration("purposes are HL7 PurposeOfUse codes (e.g. ETREAT, HPAYMT); BTG is break-glass, not a registered purpose"));
        }
        if !self.purposes.is_empty() && !matches!(role, Role::FacilitySystem | Role::Clinician) {
            return Err(AuthError::BadRegistration("only facility-system and clinician clients take purposes of use"));
        }
        if let Some(iss) = &self.issuer {
            if !matches!(role, Role::Clinician | Role::Patient) {
                return Err(AuthError::BadRegistration("a trusted issuer is registered as a clinician or patient client"));
            }
            if iss.is_empty() || iss.len() > 200 || !iss.starts_with("https://") || iss.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(AuthError::BadRegistration("issuer must be an https URL of at most 200 characters"));
            }
            if self.jwks.is_none() {
                return Err(AuthError::BadRegistration("a trusted issuer needs its public keys (jwks)"));
            }
        }
        self.jwks.as_ref().map(Jwks::parse).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(role: Role, scopes: &str) -> ClientSpec {
        ClientSpec { name: "x".into(), role: Some(role), scopes: scopes.into(), ..Default::default() }
    }

    #[test]
    fn each_role_needs_its_binding_and_its_kind_of_scope() {
        let mut s = spec(Role::FacilitySystem, "system/Patient.cruds");
        assert!(s.validate().is_err(), "facility without organization");
        s.organization = Some("Organization/rs-1".into());
        assert!(s.validate().is_ok());
        s.scopes = "patient/Patient.r".into();
        assert!(s.validate().is_err(), "facility with patient/ scopes");

        let mut c = spec(Role::Clinician, "user/Observation.rs");
        c.organization = Some("Organization/rs-1".into());
        assert!(c.validate().is_err(), "clinician without practitioner");
        c.practitioner = Some("Practitioner/dr-1".into());
        assert!(c.validate().is_ok());

        let mut p = spec(Role::Patient, "patient/*.rs");
        assert!(p.validate().is_err());
        p.patient = Some("Patient/p-1".into());
        assert!(p.validate().is_ok());
        p.patient = Some("Observation/p-1".into());
        assert!(p.validate().is_err());
        p.patient = Some("Patient/bad id".into());
        assert!(p.validate().is_err());

        assert!(spec(Role::Admin, "system/Organization.cruds system/Location.rs").validate().is_ok());
        assert!(spec(Role::Admin, "system/*.cruds").validate().is_err(), "admin reaches no patient data");
        assert!(spec(Role::Admin, "system/Patient.r").validate().is_err());
        assert!(spec(Role::SecurityOfficer, "system/AuditEvent.rs").validate().is_ok());
        assert!(spec(Role::SecurityOfficer, "system/Patient.rs").validate().is_err());
        assert!(spec(Role::Researcher, "").validate().is_ok());
        assert!(spec(Role::Researcher, "system/Observation.rs").validate().is_err());
        let mut no_role = spec(Role::Admin, "");
        no_role.role = None;
        assert!(no_role.validate().is_err());
        let mut bad_name = spec(Role::Researcher, "");
        bad_name.name = "a\nb".into();
        assert!(bad_name.validate().is_err());
    }

    #[test]
    fn only_narrowing_changes_escape_the_two_person_rule() {
        let mut old = spec(Role::FacilitySystem, "system/Patient.rs system/Observation.rs");
        old.organization = Some("Organization/rs-1".into());
        old.sensitive = vec!["HIV".into()];
        let narrows = |f: &dyn Fn(&mut ClientSpec)| {
            let mut n = old.clone();
            f(&mut n);
            n.only_narrows(&old)
        };
        assert!(narrows(&|_| {}));
        assert!(narrows(&|n| n.name = "renamed".into()));
        assert!(narrows(&|n| n.scopes = "system/Patient.r".into()));
        assert!(narrows(&|n| n.sensitive.clear()));
        assert!(narrows(&|n| n.patient_budget = Some(PatientBudget { per_hour: 10, per_day: 20, on_exceed: OnExceed::Suspend })));
        assert!(narrows(&|n| n.limits = Some(RateLimitSpec { burst: Some(5), ..Default::default() })));
        assert!(!narrows(&|n| n.scopes = "system/*.cruds".into()), "wider scopes");
        assert!(!narrows(&|n| n.organization = Some("Organization/rs-2".into())), "another facility");
        assert!(!narrows(&|n| n.sensitive.push("PSY".into())), "a new sensitive grant");
        assert!(!narrows(&|n| n.patient_budget = Some(PatientBudget { per_hour: 1_000_000, per_day: 10_000_000, on_exceed: OnExceed::Suspend })), "a raised budget");
        assert!(!narrows(&|n| n.patient_budget = Some(PatientBudget { per_hour: 10, per_day: 20, on_exceed: OnExceed::Throttle })), "no more suspension");
        assert!(!narrows(&|n| n.limits = Some(RateLimitSpec { max_page: Some(1000), ..Default::default() })), "raised limits");
        assert!(!narrows(&|n| n.jwks = Some(serde_json::json!({"keys": []}))), "new keys");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<ClientSpec, _> = serde_json::from_str(r#"{"name":"x","role":"admin","scope":"system/Organization.r"}"#);
        assert!(r.is_err());
        let u: ClientUpdate = serde_json::from_str(r#"{"organization":null}"#).unwrap();
        assert_eq!(u.organization, Some(None));
        let u: ClientUpdate = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(u.organization, None);
    }
}
