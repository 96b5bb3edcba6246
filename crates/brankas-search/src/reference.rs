//! Literal reference text: `Type/id`, `Type/id/_history/v`, and absolute
//! URLs ending in one of those. Kept local (rather than taken from
//! brankas-fhir) so this crate stays self-contained; it only needs the parts,
//! not validation of the whole reference.

/// The parts of a literal reference, borrowed from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parts<'a> {
    pub ty: &'a str,
    pub id: &'a str,
    pub version: Option<&'a str>,
}

fn is_type_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// FHIR `id`: 1–64 of `[A-Za-z0-9.-]`.
pub(crate) fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Parses `[base/]Type/id[/_history/version]`. `None` for anything else
/// (`urn:uuid:…`, `#contained`, a bare id, a canonical with `|version`).
pub(crate) fn parse(s: &str) -> Option<Parts<'_>> {
    let (path, version) = match s.rfind("/_history/") {
        Some(i) => {
            let v = &s[i + "/_history/".len()..];
            if !is_id(v) {
                return None;
            }
            (&s[..i], Some(v))
        }
        None => (s, None),
    };
    let (rest, id) = path.rsplit_once('/')?;
    let ty = match rest.rsplit_once('/') {
        Some((base, ty)) => {
            // Anything before the type must be a server base URL.
            if !base.contains("://") {
                return None;
            }
            ty
        }
        None => rest,
    };
    (is_type_name(ty) && is_id(id)).then_some(Parts { ty, id, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse("Patient/1"), Some(Parts { ty: "Patient", id: "1", version: None }));
        assert_eq!(parse("Patient/1/_history/2"), Some(Parts { ty: "Patient", id: "1", version: Some("2") }));
        assert_eq!(parse("https://x.example/fhir/Patient/a-b.c"), Some(Parts { ty: "Patient", id: "a-b.c", version: None }));
        assert_eq!(parse("http://x/fhir/Observation/9/_history/1"), Some(Parts { ty: "Observation", id: "9", version: Some("1") }));
        for bad in
            ["urn:uuid:0f3c", "#p1", "123", "patient/1", "Patient/", "/Patient/1", "a/Patient/1", "Patient/1/_history/", "Patient/1 2", "http://hl7.org/fhir/ValueSet/x|4.0.1"]
        {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
