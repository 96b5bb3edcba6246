//! FHIR R4 knowledge for the Brankas server, without any I/O.
//!
//! This crate answers "is this a well-formed R4 resource?" and the small
//! identity questions the server needs, so that storage, search and the HTTP
//! layer never have to interpret FHIR JSON themselves.
//!
//! # Contents
//!
//! * **Resource types** — [`resource_types()`] and [`is_resource_type`]: the 146
//!   R4 resource types.
//! * **Validation** — [`validate_resource`] / [`validate_resource_with`] check a
//!   `serde_json::Value` against the official R4 JSON Schema (embedded and
//!   compiled once, lazily, into a compact table: no generic JSON Schema
//!   engine). They check element names, JSON types, cardinality (array or
//!   single), required elements, code lists, primitive formats (on the exact
//!   textual form of numbers), empty values, and recurse into contained
//!   resources, `Bundle.entry.resource` and `Parameters.parameter.resource`.
//!   Work is bounded by [`Limits`]. Findings are [`Issue`]s with an element
//!   path, an [`IssueCode`] that maps onto FHIR's issue types, and a message.
//!   **Paths and messages never contain instance values**, so they can be
//!   logged and returned to clients without leaking patient data.
//! * **References** — [`parse_reference`] classifies `Reference.reference`
//!   strings into [`RefKind`]; [`for_each_reference`] and
//!   [`for_each_reference_mut`] visit (and can rewrite) every reference in a
//!   resource, e.g. to resolve `urn:uuid:` references in a transaction.
//! * **NIK** — [`parse_nik`] and [`check_patient_nik`] check Indonesian
//!   national ID numbers ([`NIK_SYSTEM`], and the mother's, [`NIK_IBU_SYSTEM`]):
//!   one that cannot have been issued is an error, one that disagrees with the
//!   Patient's birth date or gender a [`NikWarning`], which [`flag_patient_nik`]
//!   records as a `meta.tag`.
//! * **Normalisation** — [`normalize_phone`], [`normalize_name`],
//!   [`normalize_identifier_value`] and [`patient_identity_terms`] produce the
//!   deterministic [`IdentityTerm`] keys used for exact patient matching.
//!
//! # Example
//!
//! ```
//! use brankas_fhir::{validate_resource, IssueCode, parse_reference, RefKind, patient_identity_terms};
//! use serde_json::json;
//!
//! let patient = json!({
//!     "resourceType": "Patient",
//!     "identifier": [{"system": brankas_fhir::NIK_SYSTEM, "value": "3174054508900003"}],
//!     "name": [{"given": ["Siti"], "family": "Aminah"}],
//!     "gender": "female",
//!     "birthDate": "1990-08-05",
//!     "managingOrganization": {"reference": "Organization/rs-1"}
//! });
//! assert!(validate_resource(&patient).is_ok());
//! assert_eq!(brankas_fhir::check_patient_nik(&patient), Ok(vec![]));
//! // The NIK identifier, "siti aminah" and "aminah", each with the birth date.
//! assert_eq!(patient_identity_terms(&patient).len(), 3);
//!
//! let bad = json!({"resourceType": "Patient", "birthDate": "5 August 1990", "nickname": "Siti"});
//! let errors = validate_resource(&bad).unwrap_err();
//! assert_eq!(errors.0[0].path, "Patient.birthDate");
//! assert_eq!(errors.0[0].code, IssueCode::Value);
//! assert!(!errors.0[0].message.contains("August")); // no instance values
//! assert_eq!(errors.0[1].code.as_fhir_code(), "structure"); // unknown element
//!
//! let mut refs = Vec::new();
//! brankas_fhir::for_each_reference(&patient, &mut |r| refs.push(parse_reference(r)));
//! assert_eq!(refs, [Some(RefKind::Local { rtype: "Organization", id: "rs-1", version: None })]);
//! ```
//!
//! # About the embedded schema
//!
//! `data/fhir.schema.json` is the R4 (4.0.1) JSON Schema as distributed by
//! Medplum. Medplum's own resource types and the few properties it adds to
//! standard types (`Meta.project`, `Reference.resource`, ...) are not R4 and
//! are ignored, so they are rejected like any other unknown type or element.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The modules are public so that items can be named by area
// (`brankas_fhir::validate::Limits`); everything is also re-exported at the root.
pub mod definitions;
pub mod fhirpath_patch;
pub mod nik;
pub mod normalize;
pub mod references;
pub mod resource_types;
mod schema;
pub mod validate;

pub use nik::{DATA_QUALITY_SYSTEM, IHS_SYSTEM, NIK_IBU_SYSTEM, NIK_SYSTEM, NikError, NikInfo, NikWarning, check_patient_nik, flag_patient_nik, parse_nik};
pub use normalize::{IdentityTerm, normalize_identifier_value, normalize_name, normalize_phone, patient_identity_terms};
pub use references::{RefKind, for_each_reference, for_each_reference_mut, is_valid_id, parse_reference};
pub use resource_types::{is_resource_type, resource_types};
pub use validate::{HARD_MAX_DEPTH, Issue, IssueCode, Limits, MAX_ISSUES, ValidationErrors, validate_resource, validate_resource_with};
