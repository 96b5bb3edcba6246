//! The R4 resource type names, taken from the schema's `ResourceList`.

use std::sync::LazyLock;

use crate::schema::SCHEMA;

/// Borrowed views of the compiled schema's names; the schema lives for the
/// whole process, so the names are `'static`.
static NAMES: LazyLock<Vec<&'static str>> = LazyLock::new(|| SCHEMA.resources.iter().map(|(n, _)| &**n).collect());

/// All FHIR R4 resource type names (146), sorted.
///
/// The list comes from the embedded schema's `ResourceList`, minus the
/// Medplum-specific types that its distribution appends (`Project`, `User`, ...).
///
/// ```
/// let types = brankas_fhir::resource_types();
/// assert!(types.contains(&"Patient"));
/// assert!(types.windows(2).all(|w| w[0] < w[1]));
/// ```
pub fn resource_types() -> &'static [&'static str] {
    &NAMES
}

/// Whether `name` is an R4 resource type (exact, case-sensitive).
///
/// ```
/// assert!(brankas_fhir::is_resource_type("Observation"));
/// assert!(!brankas_fhir::is_resource_type("observation"));
/// assert!(!brankas_fhir::is_resource_type("Project")); // Medplum, not R4
/// ```
pub fn is_resource_type(name: &str) -> bool {
    resource_types().binary_search(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_r4() {
        let t = resource_types();
        assert_eq!(t.len(), 146);
        assert_eq!(t.first(), Some(&"Account"));
        assert_eq!(t.last(), Some(&"VisionPrescription"));
        for n in ["Patient", "Bundle", "Binary", "Parameters", "MedicinalProductUndesirableEffect"] {
            assert!(is_resource_type(n), "{n}");
        }
        for n in ["", "Resource", "DomainResource", "User", "Project", "HumanName", "patient"] {
            assert!(!is_resource_type(n), "{n}");
        }
    }
}
