//! Parsing and visiting FHIR `Reference.reference` strings.

use serde_json::Value;

use crate::resource_types::is_resource_type;

/// The shape of a `Reference.reference` string. Borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefKind<'a> {
    /// `Type/id` or `Type/id/_history/version`, relative to this server.
    Local {
        /// An R4 resource type name.
        rtype: &'a str,
        /// A valid FHIR id.
        id: &'a str,
        /// The version id after `/_history/`, if present.
        version: Option<&'a str>,
    },
    /// `#id`: a resource contained in the referring resource. The id is empty
    /// for a bare `#`, which refers to the containing resource itself.
    Contained(&'a str),
    /// `urn:uuid:<uuid>` (a Bundle-local identity); holds the bare UUID,
    /// without the `urn:uuid:` prefix.
    UrnUuid(&'a str),
    /// `Type?query`: a conditional reference, resolved by search in transactions.
    Conditional {
        /// An R4 resource type name.
        rtype: &'a str,
        /// The search query after `?` (non-empty, not decoded).
        query: &'a str,
    },
    /// An `http://` or `https://` URL, including full URLs of resources on
    /// this or another server (`https://host/fhir/Patient/123`). Holds the
    /// whole string.
    Absolute(&'a str),
}

/// Parses a reference string; `None` if it has none of the [`RefKind`] shapes.
///
/// The string is taken exactly: leading or trailing whitespace makes it invalid,
/// as do unknown resource types and malformed ids.
///
/// ```
/// use brankas_fhir::{parse_reference, RefKind};
/// assert_eq!(
///     parse_reference("Patient/123/_history/2"),
///     Some(RefKind::Local { rtype: "Patient", id: "123", version: Some("2") })
/// );
/// assert_eq!(parse_reference("#p1"), Some(RefKind::Contained("p1")));
/// assert_eq!(
///     parse_reference("Patient?identifier=a|b"),
///     Some(RefKind::Conditional { rtype: "Patient", query: "identifier=a|b" })
/// );
/// assert_eq!(parse_reference("Unicorn/1"), None);
/// ```
pub fn parse_reference(s: &str) -> Option<RefKind<'_>> {
    if s.is_empty() || s.trim() != s {
        return None;
    }
    if let Some(id) = s.strip_prefix('#') {
        return (id.is_empty() || is_valid_id(id)).then_some(RefKind::Contained(id));
    }
    if let Some(uuid) = s.strip_prefix("urn:uuid:") {
        return is_uuid(uuid).then_some(RefKind::UrnUuid(uuid));
    }
    if let Some(rest) = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")) {
        let host_ok = rest.split(['/', '?', '#']).next().is_some_and(|h| !h.is_empty());
        let clean = !s.chars().any(|c| c.is_whitespace() || c.is_control());
        return (host_ok && clean).then_some(RefKind::Absolute(s));
    }
    if let Some((rtype, query)) = s.split_once('?') {
        return (is_resource_type(rtype) && !query.is_empty()).then_some(RefKind::Conditional { rtype, query });
    }
    let mut parts = s.split('/');
    let (rtype, id) = (parts.next()?, parts.next()?);
    let version = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => None,
        (Some("_history"), Some(v), None) if is_valid_id(v) => Some(v),
        _ => return None,
    };
    (is_resource_type(rtype) && is_valid_id(id)).then_some(RefKind::Local { rtype, id, version })
}

/// Whether `s` is a valid FHIR resource id: 1 to 64 of `[A-Za-z0-9\-\.]`.
///
/// ```
/// assert!(brankas_fhir::is_valid_id("a-B.9"));
/// assert!(!brankas_fhir::is_valid_id("a/b"));
/// ```
pub fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// 8-4-4-4-12 hexadecimal digits (either case).
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Calls `f` on every string member named `reference`, in any object at any
/// depth (including contained resources and Bundle entries), allowing it to
/// be rewritten in place (e.g. `urn:uuid:` to `Type/id` in transactions).
///
/// The walk uses an explicit stack, so arbitrarily deep input cannot overflow
/// the call stack. Callers that only care about literal references should
/// ignore `#...` contained references themselves.
pub fn for_each_reference_mut(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    let mut stack: Vec<&mut Value> = vec![v];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    match child {
                        Value::String(s) if k == "reference" => f(s),
                        Value::Object(_) | Value::Array(_) => stack.push(child),
                        _ => {}
                    }
                }
            }
            Value::Array(items) => {
                stack.extend(items.iter_mut().filter(|c| c.is_object() || c.is_array()));
            }
            _ => {}
        }
    }
}

/// Read-only counterpart of [`for_each_reference_mut`].
///
/// The strings passed to `f` borrow from `v`, so they can be collected
/// (e.g. parsed into [`RefKind`]s) without copying.
///
/// ```
/// let v = serde_json::json!({"resourceType": "Observation",
///     "subject": {"reference": "Patient/1"},
///     "performer": [{"reference": "Practitioner/2"}]});
/// let mut seen = Vec::new();
/// brankas_fhir::for_each_reference(&v, &mut |r| seen.push(r.to_string()));
/// seen.sort();
/// assert_eq!(seen, ["Patient/1", "Practitioner/2"]);
/// ```
pub fn for_each_reference<'v>(v: &'v Value, f: &mut dyn FnMut(&'v str)) {
    let mut stack: Vec<&'v Value> = vec![v];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                for (k, child) in map {
                    match child {
                        Value::String(s) if k == "reference" => f(s),
                        Value::Object(_) | Value::Array(_) => stack.push(child),
                        _ => {}
                    }
                }
            }
            Value::Array(items) => {
                stack.extend(items.iter().filter(|c| c.is_object() || c.is_array()));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_all_shapes() {
        assert_eq!(parse_reference("Patient/123"), Some(RefKind::Local { rtype: "Patient", id: "123", version: None }));
        assert_eq!(parse_reference("#"), Some(RefKind::Contained("")));
        assert_eq!(parse_reference("urn:uuid:0b1c8f6e-1b8e-4a4e-9d5e-2f1e9f0c2a11"), Some(RefKind::UrnUuid("0b1c8f6e-1b8e-4a4e-9d5e-2f1e9f0c2a11")));
        assert_eq!(parse_reference("https://fhir.example.org/r4/Patient/123"), Some(RefKind::Absolute("https://fhir.example.org/r4/Patient/123")));
        assert_eq!(parse_reference("http://hl7.org/fhir/ValueSet/x"), Some(RefKind::Absolute("http://hl7.org/fhir/ValueSet/x")));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            " Patient/1",
            "Patient/1 ",
            "Patient",
            "Patient/",
            "/1",
            "patient/1",
            "Patient/a_b",
            "Patient/1/_history",
            "Patient/1/_history/",
            "Patient/1/history/2",
            "Patient/1/_history/2/x",
            "Patient?",
            "Unknown?x=1",
            "#a b",
            "urn:uuid:nope",
            "urn:oid:1.2.3",
            "https://",
            "https:///x",
            "http://host/a b",
            "ftp://host/x",
        ] {
            assert_eq!(parse_reference(bad), None, "{bad:?}");
        }
        assert!(parse_reference(&format!("Patient/{}", "a".repeat(64))).is_some());
        assert!(parse_reference(&format!("Patient/{}", "a".repeat(65))).is_none());
    }

    #[test]
    fn visits_every_reference_and_rewrites() {
        let mut v = json!({
            "resourceType": "Bundle",
            "entry": [
                {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient",
                    "managingOrganization": {"reference": "urn:uuid:2"},
                    "contained": [{"resourceType": "Organization", "partOf": {"reference": "#x"}}]}},
                {"resource": {"resourceType": "Observation", "subject": {"reference": "urn:uuid:1"},
                    "reference": 5, "note": [{"text": "reference"}]}}
            ]
        });
        let mut seen = Vec::new();
        for_each_reference(&v, &mut |r| seen.push(r.to_string()));
        seen.sort();
        assert_eq!(seen, ["#x", "urn:uuid:1", "urn:uuid:2"]);
        for_each_reference_mut(&mut v, &mut |r| {
            if r == "urn:uuid:1" {
                *r = "Patient/abc".to_string();
            }
        });
        assert_eq!(v["entry"][1]["resource"]["subject"]["reference"], "Patient/abc");
    }

    #[test]
    fn deep_input_does_not_overflow() {
        // serde_json's own Drop is recursive, so build something deep but droppable.
        let mut v = json!({"reference": "Patient/1"});
        for _ in 0..1000 {
            v = json!([v]);
        }
        let mut n = 0;
        for_each_reference(&v, &mut |_| n += 1);
        for_each_reference_mut(&mut v, &mut |_| n += 1);
        assert_eq!(n, 2);
    }
}
