//! FHIR R4 search for Brankas, evaluated in memory.
//!
//! Brankas encrypts every patient's data under that patient's own key, so
//! there are no search indexes at rest. A search within one patient decrypts
//! that patient's resources of one type and filters them here. This crate
//! therefore does three things, all without I/O:
//!
//! 1. **Extract** search-parameter values from resource JSON, using the
//!    official R4 search-parameter definitions (embedded) whose FHIRPath
//!    expressions are compiled once into a small AST ([`Registry`]).
//! 2. **Match** a parsed query against a resource ([`Query::parse`],
//!    [`Query::matches`]) with the R4 semantics (§3.1.1): AND across
//!    repeated parameters, OR across comma-separated values, prefixes and
//!    ranges for number/date/quantity, case- and accent-insensitive string
//!    prefix matching, the token/reference/uri forms, and the modifiers
//!    `:missing`, `:exact`, `:contains`, `:not`, `:text`, `:of-type`,
//!    `:identifier`, `:[type]`, `:below`, `:above`.
//! 3. **Sort** results ([`Query::compare`], [`Query::sort_resources`]).
//!
//! It also knows the Patient compartment ([`Registry::patient_refs`]: which
//! patients a resource belongs to, and so whose key encrypts it) and which
//! patient a query is pinned to ([`Query::pinned_patient`]), so the caller
//! can decide which patient's data to decrypt at all.
//!
//! # Main types
//!
//! - [`Registry`]: all R4 search parameters ([`SearchParam`], [`ParamKind`])
//!   and the Patient compartment; [`Registry::r4`] is built once, lazily.
//! - [`Query`]: a parsed search; [`QueryError`] when it cannot be run. Error
//!   messages never contain query values (they may be patient data).
//! - [`IdentityQuery`]: the exact-identity part of a Patient search, for
//!   finding the patient before any of their data is decrypted.
//!
//! Not supported (an error, never a silent wrong answer): chaining, `_has`,
//! `_include`/`_revinclude`, composite and special parameters, terminology
//! modifiers (`:in`, `:below` on tokens), and the few parameters whose
//! FHIRPath uses features outside the supported subset.
//!
//! # Example
//!
//! ```
//! use brankas_search::{Query, Registry};
//! use serde_json::json;
//!
//! let registry = Registry::r4();
//! let pairs = [
//!     ("patient".to_string(), "Patient/p1".to_string()),
//!     ("code".to_string(), "http://loinc.org|8302-2".to_string()),
//!     ("date".to_string(), "ge2021-03".to_string()),
//!     ("_sort".to_string(), "-date".to_string()),
//! ];
//! let query = Query::parse(registry, "Observation", &pairs).unwrap();
//! assert_eq!(query.pinned_patient(), Some("p1"));
//!
//! let obs = json!({
//!     "resourceType": "Observation",
//!     "id": "o1",
//!     "subject": {"reference": "Patient/p1"},
//!     "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
//!     "effectiveDateTime": "2021-03-04T10:00:00+07:00"
//! });
//! assert!(query.matches(&obs));
//! assert_eq!(registry.patient_refs("Observation", &obs), ["p1"]);
//! ```

#![warn(missing_docs)]

mod date;
mod decimal;
mod error;
mod fhirpath;
mod query;
mod reference;
mod registry;
mod text;

pub use error::QueryError;

/// The instants a FHIR `date`, `dateTime` or `instant` stands for, by its precision: half-open
/// `[lo, hi)` in microseconds since the Unix epoch (UTC; no zone means UTC). `None` if it is
/// not one.
pub fn date_range(s: &str) -> Option<(i64, i64)> {
    date::parse_range(s).map(|r| (r.lo, r.hi))
}
pub use query::{IdentityQuery, Include, MAX_OR_VALUES, MAX_PARAMS, Query, ResultParams, SortKey, Summary, TotalMode};
pub use registry::{ParamKind, Registry, RegistryStats, SearchParam};

/// The instant range `[lo, hi)` (microseconds since the Unix epoch, UTC) a FHIR `date`,
/// `dateTime` or `instant` denotes (`2021`, `2021-07`, `2021-07-14`, `2021-07-14T09:00:00+07:00`).
pub fn instant_range(s: &str) -> Option<(i64, i64)> {
    date::parse_range(s).map(|r| (r.lo, r.hi))
}

/// Compiles a FHIRPath expression as the registry does, and evaluates it (specialised to the
/// resource's type, and unspecialised) over `resource`, collecting at most 10,000 items.
/// For the fuzzer (`brankas-fuzz`): returns whether the expression compiled.
#[doc(hidden)]
pub fn fuzz_fhirpath(expr: &str, resource: &serde_json::Value) -> bool {
    let Ok(node) = fhirpath::compile(expr) else { return false };
    let ty = resource.get("resourceType").and_then(serde_json::Value::as_str).unwrap_or("Patient");
    for n in [node.specialize(ty, true), node] {
        let mut seen = 0usize;
        let _ = n.eval(fhirpath::Item::root(resource), &mut |_| {
            seen += 1;
            if seen >= 10_000 { std::ops::ControlFlow::Break(()) } else { std::ops::ControlFlow::Continue(()) }
        });
        let _ = n.eval_bool(fhirpath::Item::root(resource));
    }
    true
}

#[cfg(test)]
mod tests;
