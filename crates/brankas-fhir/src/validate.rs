//! Structural validation of R4 resources against the compiled JSON Schema.
//!
//! Validation is a single bounded walk over the `serde_json::Value`: every
//! container entered counts towards [`Limits::max_depth`], arrays and strings
//! are size-checked before they are looked at, and the walk stops after
//! [`MAX_ISSUES`] issues or at the first "too costly" finding. Paths are kept as
//! a stack of borrowed schema names and indexes and only rendered into a
//! `String` when an issue is reported, so valid resources allocate nothing.
//!
//! **No instance values in output.** Messages and paths are built only from
//! schema element names, FHIR type names, the schema's expectations and array
//! indexes. The one exception is the *name* of an unknown element, which is a
//! JSON key the client chose; it is echoed only when it is short plain ASCII
//! (`[A-Za-z0-9_]`, at most 64 characters) so that free text cannot leak
//! through it.

use std::fmt;

use serde_json::{Map, Number, Value};

use crate::schema::{ComplexType, DateRule, JsonKind, Kind, NumRule, Primitive, SCHEMA, Schema, TypeId};

/// At most this many issues are collected; validation stops after that.
pub const MAX_ISSUES: usize = 20;

/// `max_depth` values above this are clamped, so that a careless caller cannot
/// turn the recursive walk into a stack overflow.
pub const HARD_MAX_DEPTH: usize = 256;

/// Resource limits for one validation run.
///
/// Exceeding any of them yields a single [`IssueCode::TooCostly`] issue and
/// stops validation: the point of the limits is to bound the work done on
/// hostile input, so nothing more is examined after one is hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum JSON nesting (objects and arrays each count one level; the
    /// resource itself is level 1). Default 64; clamped to [`HARD_MAX_DEPTH`].
    pub max_depth: usize,
    /// Maximum number of items in any one array. Default 100 000.
    pub max_array_len: usize,
    /// Maximum length in bytes of any one string. Default 16 MiB, because
    /// `Binary.data` and `Attachment.data` carry whole documents as base64.
    pub max_string_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 64, max_array_len: 100_000, max_string_len: 16 * 1024 * 1024 }
    }
}

/// The category of a validation [`Issue`], mirroring FHIR's `IssueType` codes
/// so that an OperationOutcome can be built directly from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueCode {
    /// Wrong JSON shape: wrong JSON type, unknown element, array vs single
    /// value, `null`, empty object/array, not a resource.
    Structure,
    /// A required element is missing.
    Required,
    /// A primitive value does not meet its type's rules (pattern, range,
    /// code list, empty string).
    Value,
    /// Content is invalid in some other way (e.g. the narrative `div`).
    Invalid,
    /// A configured [`Limits`] bound was exceeded; validation stopped.
    TooCostly,
    /// The resource type is not an R4 resource type this server knows.
    NotSupported,
}

impl IssueCode {
    /// The FHIR `issue-type` code (`http://hl7.org/fhir/issue-type`).
    pub fn as_fhir_code(&self) -> &'static str {
        match self {
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Invalid => "invalid",
            IssueCode::TooCostly => "too-costly",
            IssueCode::NotSupported => "not-supported",
        }
    }
}

impl fmt::Display for IssueCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_fhir_code())
    }
}

/// One validation finding. Neither field ever contains instance values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Element path such as `Patient.name[0].given[1]`, rooted at the
    /// resource type (`Resource` when the type is unknown).
    pub path: String,
    /// The FHIR issue category.
    pub code: IssueCode,
    /// Human-readable expectation, e.g. "expected a string matching the
    /// dateTime format".
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.path, self.code, self.message)
    }
}

/// All issues found (at most [`MAX_ISSUES`]); never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<Issue>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "resource is not valid FHIR R4 ({} issue", self.0.len())?;
        if self.0.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str(")")?;
        if let Some(first) = self.0.first() {
            write!(f, "; first: {first}")?;
        }
        Ok(())
    }
}

/// Validates a resource with the default [`Limits`].
///
/// ```
/// let ok = serde_json::json!({"resourceType": "Patient", "birthDate": "1990-02-28"});
/// assert!(brankas_fhir::validate_resource(&ok).is_ok());
/// let bad = serde_json::json!({"resourceType": "Patient", "birthDate": "1990-02-30"});
/// let errs = brankas_fhir::validate_resource(&bad).unwrap_err();
/// assert_eq!(errs.0[0].path, "Patient.birthDate");
/// ```
pub fn validate_resource(v: &Value) -> Result<(), ValidationErrors> {
    validate_resource_with(v, &Limits::default())
}

/// Validates a resource (including contained resources, `Bundle.entry.resource`
/// and `Parameters.parameter.resource`) against the R4 schema within `limits`.
pub fn validate_resource_with(v: &Value, limits: &Limits) -> Result<(), ValidationErrors> {
    let schema: &'static Schema = &SCHEMA;
    let mut limits = *limits;
    limits.max_depth = limits.max_depth.min(HARD_MAX_DEPTH);
    let mut w = Walker { schema, limits, issues: Vec::new(), path: Vec::with_capacity(16), stop: false };
    // Root the path at the resource type when it is known, for FHIR-style paths.
    let root = v.get("resourceType").and_then(Value::as_str).and_then(|t| schema.resource(t)).map_or("Resource", |id| &*schema.ty(id).name);
    w.path.push(Seg::Name(root));
    w.resource(v, 1);
    if w.issues.is_empty() {
        // Sound structure: then the rules of the StructureDefinitions the schema cannot say.
        w.issues = crate::definitions::check(v, MAX_ISSUES);
    }
    if w.issues.is_empty() { Ok(()) } else { Err(ValidationErrors(w.issues)) }
}

/// One step of an element path. Names always come from the static schema.
#[derive(Debug, Clone, Copy)]
enum Seg {
    Name(&'static str),
    Index(usize),
}

/// State of one validation run.
struct Walker {
    schema: &'static Schema,
    limits: Limits,
    issues: Vec<Issue>,
    path: Vec<Seg>,
    stop: bool,
}

impl Walker {
    /// Renders the current path, e.g. `Patient.name[0].given[1]`.
    fn render_path(&self) -> String {
        let mut s = String::with_capacity(64);
        for (i, seg) in self.path.iter().enumerate() {
            match seg {
                Seg::Name(n) => {
                    if i > 0 {
                        s.push('.');
                    }
                    s.push_str(n);
                }
                Seg::Index(ix) => {
                    s.push('[');
                    s.push_str(&ix.to_string());
                    s.push(']');
                }
            }
        }
        s
    }

    /// Records an issue at an explicit path; stops the walk at [`MAX_ISSUES`].
    fn report_path(&mut self, path: String, code: IssueCode, message: String) {
        if self.stop {
            return;
        }
        self.issues.push(Issue { path, code, message });
        if self.issues.len() >= MAX_ISSUES {
            self.stop = true;
        }
    }

    /// Records an issue at the current path.
    fn report(&mut self, code: IssueCode, message: impl Into<String>) {
        let path = self.render_path();
        self.report_path(path, code, message.into());
    }

    /// Reports an exceeded limit and stops the walk.
    fn too_costly(&mut self, message: String) {
        self.report(IssueCode::TooCostly, message);
        self.stop = true;
    }

    /// Enters one more container level; false (after reporting) if too deep.
    fn deeper(&mut self, depth: usize) -> bool {
        if depth > self.limits.max_depth {
            self.too_costly(format!("content is nested more than {} levels deep", self.limits.max_depth));
            false
        } else {
            true
        }
    }

    /// A value that must be a resource; dispatches on its `resourceType`.
    fn resource(&mut self, v: &Value, depth: usize) {
        if !self.deeper(depth) {
            return;
        }
        let Some(obj) = v.as_object() else {
            self.report(IssueCode::Structure, format!("expected a resource (a JSON object), found {}", json_name(v)));
            return;
        };
        match obj.get("resourceType") {
            None => {
                self.path.push(Seg::Name("resourceType"));
                self.report(IssueCode::Required, "missing required element 'resourceType'");
                self.path.pop();
            }
            Some(Value::String(t)) => match self.schema.resource(t) {
                Some(id) => self.object(obj, id, depth),
                None => {
                    self.path.push(Seg::Name("resourceType"));
                    self.report(IssueCode::NotSupported, "resource type is not a supported FHIR R4 resource type");
                    self.path.pop();
                }
            },
            Some(other) => {
                self.path.push(Seg::Name("resourceType"));
                self.report(IssueCode::Structure, format!("expected a string (resourceType), found {}", json_name(other)));
                self.path.pop();
            }
        }
    }

    /// The members of an object of complex type `id` (depth already checked).
    fn object(&mut self, obj: &Map<String, Value>, id: TypeId, depth: usize) {
        let ty: &'static ComplexType = self.schema.ty(id);
        if obj.is_empty() {
            self.report(IssueCode::Structure, format!("empty object is not allowed ({})", ty.name));
            return;
        }
        for (key, val) in obj {
            if self.stop {
                return;
            }
            match ty.prop(key) {
                Some(p) => {
                    self.path.push(Seg::Name(&p.name));
                    self.element(val, p.array, p.nulls_ok, p.kind, &p.name, depth);
                    self.path.pop();
                }
                None => self.unknown(key, ty),
            }
        }
        for req in &ty.required {
            if self.stop {
                return;
            }
            if !obj.contains_key(&**req) {
                self.report(IssueCode::Required, format!("missing required element '{req}'"));
            }
        }
    }

    /// Reports a member that `ty` does not define, echoing its name only if safe.
    fn unknown(&mut self, key: &str, ty: &ComplexType) {
        let mut path = self.render_path();
        let message = match safe_key(key) {
            Some(k) => {
                path.push('.');
                path.push_str(&k);
                format!("unknown element '{k}' for type {}", ty.name)
            }
            None => format!("unknown element for type {}", ty.name),
        };
        self.report_path(path, IssueCode::Structure, message);
    }

    /// One property value: array or single, then each item.
    fn element(&mut self, val: &Value, array: bool, nulls_ok: bool, kind: Kind, name: &str, depth: usize) {
        if array {
            let Value::Array(items) = val else {
                self.report(IssueCode::Structure, format!("expected an array for '{name}', found {}", json_name(val)));
                return;
            };
            if items.is_empty() {
                self.report(IssueCode::Structure, "empty array is not allowed");
                return;
            }
            if items.len() > self.limits.max_array_len {
                self.too_costly(format!("array has more than {} items", self.limits.max_array_len));
                return;
            }
            if !self.deeper(depth + 1) {
                return;
            }
            // Nulls only pad a primitive array against its `_x` sibling; an
            // array of nothing but nulls carries no data and is invalid.
            if nulls_ok && items.iter().all(Value::is_null) {
                self.report(IssueCode::Structure, "array contains only nulls");
                return;
            }
            for (i, item) in items.iter().enumerate() {
                if self.stop {
                    return;
                }
                self.path.push(Seg::Index(i));
                if item.is_null() {
                    if !nulls_ok {
                        self.report(IssueCode::Structure, "null is not allowed here");
                    }
                } else {
                    self.item(item, kind, depth + 1);
                }
                self.path.pop();
            }
        } else {
            match val {
                Value::Array(_) => self.report(IssueCode::Structure, format!("expected a single value for '{name}', not an array")),
                Value::Null => self.report(IssueCode::Structure, "null is not allowed here"),
                _ => self.item(val, kind, depth),
            }
        }
    }

    /// One non-null value of the given kind, at container depth `depth`.
    fn item(&mut self, val: &Value, kind: Kind, depth: usize) {
        let schema = self.schema;
        match kind {
            Kind::Primitive(p) => self.primitive(val, &schema.prims[p as usize]),
            Kind::Enum(e) => {
                let Some(s) = self.string(val, "code") else {
                    return;
                };
                let codes = &schema.enums[e as usize];
                if !codes.iter().any(|c| **c == *s) {
                    let message = if codes.len() <= 12 {
                        let list: Vec<&str> = codes.iter().map(|c| &**c).collect();
                        format!("expected one of the codes: {}", list.join(", "))
                    } else {
                        format!("expected one of the {} allowed codes", codes.len())
                    };
                    self.report(IssueCode::Value, message);
                }
            }
            Kind::Const(c) => {
                let expected = &schema.consts[c as usize];
                if let Some(s) = self.string(val, "code")
                    && *s != **expected
                {
                    self.report(IssueCode::Value, format!("expected '{expected}'"));
                }
            }
            Kind::Xhtml => {
                if let Some(s) = self.string(val, "xhtml")
                    && !s.trim_start().starts_with("<div")
                {
                    self.report(IssueCode::Invalid, "expected XHTML whose root is a <div> element");
                }
            }
            Kind::Complex(id) => {
                if !self.deeper(depth + 1) {
                    return;
                }
                match val.as_object() {
                    Some(obj) => self.object(obj, id, depth + 1),
                    None => {
                        let name = &schema.ty(id).name;
                        self.report(IssueCode::Structure, format!("expected an object ({name}), found {}", json_name(val)));
                    }
                }
            }
            Kind::Resource => self.resource(val, depth + 1),
        }
    }

    /// Checks that `val` is a non-empty string within the length limit.
    fn string<'v>(&mut self, val: &'v Value, type_name: &str) -> Option<&'v str> {
        let Value::String(s) = val else {
            self.report(IssueCode::Structure, format!("expected a string ({type_name}), found {}", json_name(val)));
            return None;
        };
        if s.is_empty() {
            self.report(IssueCode::Value, "empty string is not allowed");
            return None;
        }
        if s.len() > self.limits.max_string_len {
            self.too_costly(format!("string is longer than {} bytes", self.limits.max_string_len));
            return None;
        }
        Some(s)
    }

    /// Checks a primitive value: JSON type, then format/range rules.
    fn primitive(&mut self, val: &Value, p: &'static Primitive) {
        match p.json {
            JsonKind::Boolean => {
                if !val.is_boolean() {
                    self.wrong_type(val, p);
                }
            }
            JsonKind::Number => match val {
                Value::Number(n) => {
                    if let Some(msg) = self.number_problem(n, p) {
                        self.report(IssueCode::Value, msg);
                    }
                }
                _ => self.wrong_type(val, p),
            },
            JsonKind::String => {
                if !val.is_string() {
                    self.wrong_type(val, p);
                    return;
                }
                let Some(s) = self.string(val, &p.name) else {
                    return;
                };
                let matches = p.pattern.is_none_or(|i| self.schema.regexes[i].is_match(s));
                if !matches {
                    self.report(IssueCode::Value, format!("expected a string matching the {} format", p.name));
                } else if p.date == DateRule::Calendar && !calendar_ok(s) {
                    self.report(IssueCode::Value, format!("expected a string matching the {} format with a date that exists", p.name));
                }
            }
        }
    }

    /// Reports a primitive of the wrong JSON type.
    fn wrong_type(&mut self, val: &Value, p: &Primitive) {
        self.report(IssueCode::Structure, format!("expected {} ({}), found {}", p.json.describe(), p.name, json_name(val)));
    }

    /// Checks a number on its exact textual form; `Some(message)` if invalid.
    fn number_problem(&self, n: &Number, p: &Primitive) -> Option<String> {
        let text = n.as_str();
        let ok = match p.num {
            NumRule::Integer => {
                let digits = text.strip_prefix('-').unwrap_or(text);
                plain_digits(digits) && text.parse::<i32>().is_ok()
            }
            NumRule::PositiveInt => plain_digits(text) && text.parse::<i32>().is_ok_and(|v| v >= 1),
            NumRule::UnsignedInt => plain_digits(text) && text.parse::<i32>().is_ok(),
            NumRule::Decimal | NumRule::Other => p.pattern.is_none_or(|i| self.schema.regexes[i].is_match(text)),
        };
        if ok {
            return None;
        }
        Some(match p.num {
            NumRule::Integer => "expected an integer (no fraction or exponent) between -2147483648 and 2147483647".to_string(),
            NumRule::PositiveInt => "expected a positiveInt (whole number from 1 to 2147483647)".to_string(),
            NumRule::UnsignedInt => "expected an unsignedInt (whole number from 0 to 2147483647)".to_string(),
            NumRule::Decimal | NumRule::Other => {
                format!("expected a number matching the {} format", p.name)
            }
        })
    }
}

/// Digits only, no leading zero unless the number is exactly "0".
fn plain_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s.len() == 1 || !s.starts_with('0'))
}

/// For strings already matching a date/dateTime/instant pattern: if a full
/// `YYYY-MM-DD` is present, the day must exist in that month.
fn calendar_ok(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return true;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> { s.get(r)?.parse().ok() };
    match (num(0..4), num(5..7), num(8..10)) {
        (Some(y), Some(m), Some(d)) => (1..=days_in_month(y, m)).contains(&d),
        _ => false,
    }
}

/// Days in month `m` (1-12) of Gregorian year `y`; 0 for an invalid month.
pub(crate) fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        _ => 0,
    }
}

/// The JSON type of a value, for messages (never the value itself).
fn json_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An unknown element name that is safe to echo: non-empty, only
/// `[A-Za-z0-9_]`, truncated to 64 characters.
fn safe_key(key: &str) -> Option<String> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    Some(key.chars().take(64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues(v: &Value) -> Vec<Issue> {
        match validate_resource(v) {
            Ok(()) => Vec::new(),
            Err(e) => e.0,
        }
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).expect("test JSON")
    }

    fn one(v: &Value) -> Issue {
        let mut i = issues(v);
        assert_eq!(i.len(), 1, "{i:#?}");
        i.remove(0)
    }

    #[test]
    fn minimal_patient_is_valid() {
        assert!(validate_resource(&json!({"resourceType": "Patient"})).is_ok());
        let p = json!({
            "resourceType": "Patient",
            "id": "p1",
            "name": [{"family": "Santoso", "given": ["Budi", "Adi"]}],
            "gender": "male",
            "birthDate": "1990-01-31",
            "active": true,
            "multipleBirthInteger": 2,
            "_birthDate": {"extension": [{"url": "http://x", "valueDateTime": "1990-01-31T10:00:00+07:00"}]}
        });
        assert_eq!(issues(&p), vec![]);
    }

    #[test]
    fn top_level_shape() {
        let i = one(&json!([1]));
        assert_eq!((i.code, i.path.as_str()), (IssueCode::Structure, "Resource"));
        let i = one(&json!({"id": "x"}));
        assert_eq!((i.code, i.path.as_str()), (IssueCode::Required, "Resource.resourceType"));
        let i = one(&json!({"resourceType": "Unicorn"}));
        assert_eq!(i.code, IssueCode::NotSupported);
        assert!(!i.message.contains("Unicorn"));
        // Medplum-only types from the schema file are not R4.
        assert_eq!(one(&json!({"resourceType": "Project"})).code, IssueCode::NotSupported);
        let i = one(&json!({"resourceType": 5}));
        assert_eq!(i.code, IssueCode::Structure);
    }

    #[test]
    fn wrong_json_types() {
        let i = one(&json!({"resourceType": "Patient", "active": "true"}));
        assert_eq!((i.code, i.path.as_str()), (IssueCode::Structure, "Patient.active"));
        assert!(i.message.contains("boolean"), "{}", i.message);
        let i = one(&json!({"resourceType": "Patient", "name": {"family": "X"}}));
        assert_eq!((i.code, i.path.as_str()), (IssueCode::Structure, "Patient.name"));
        let i = one(&json!({"resourceType": "Patient", "gender": ["male"]}));
        assert_eq!((i.code, i.path.as_str()), (IssueCode::Structure, "Patient.gender"));
        let i = one(&json!({"resourceType": "Patient", "name": [{"given": ["A", 5]}]}));
        assert_eq!(i.path, "Patient.name[0].given[1]");
        let i = one(&json!({"resourceType": "Patient", "managingOrganization": "Organization/1"}));
        assert!(i.message.contains("Reference"), "{}", i.message);
    }

    #[test]
    fn unknown_elements() {
        let i = one(&json!({"resourceType": "Patient", "foo": 1}));
        assert_eq!((i.code, i.path.as_str()), (IssueCode::Structure, "Patient.foo"));
        assert!(i.message.contains("'foo'"));
        let i = one(&json!({"resourceType": "Patient", "name": [{"nick name!": "x"}]}));
        assert_eq!(i.path, "Patient.name[0]");
        assert_eq!(i.message, "unknown element for type HumanName");
        let long = "a".repeat(100);
        let i = one(&json!({"resourceType": "Patient", long.clone(): 1}));
        assert!(!i.message.contains(&long));
        assert!(i.message.contains(&"a".repeat(64)));
        // Non-R4 (Medplum) additions are unknown.
        let i = one(&json!({"resourceType": "Patient", "meta": {"project": "x"}}));
        assert_eq!(i.path, "Patient.meta.project");
    }

    #[test]
    fn required_const_enum() {
        let i = one(&json!({"resourceType": "Patient", "text": {"status": "generated"}}));
        assert_eq!((i.code, i.path.as_str()), (IssueCode::Required, "Patient.text"));
        assert!(i.message.contains("'div'"));
        let i = one(&json!({"resourceType": "Patient", "gender": "lelaki"}));
        assert_eq!((i.code, i.path.as_str()), (IssueCode::Value, "Patient.gender"));
        assert!(i.message.contains("male, female, other, unknown"));
        assert!(!i.message.contains("lelaki"));
        // The schema marks only complex elements required (a required primitive
        // may be given by its `_x` extension alone), so `status` is not listed.
        let i = one(&json!({"resourceType": "Observation", "status": "final"}));
        assert_eq!((i.code, i.path.as_str()), (IssueCode::Required, "Observation"));
        assert!(i.message.contains("'code'"));
    }

    #[test]
    fn dates() {
        for good in ["2020", "2020-02", "2020-02-29", "2000-02-29"] {
            assert_eq!(issues(&json!({"resourceType": "Patient", "birthDate": good})), vec![], "{good}");
        }
        for bad in ["2019-02-29", "1900-02-29", "2020-13-01", "2020-1-1", "20-01-01", "2020-04-31", "yesterday"] {
            let i = one(&json!({"resourceType": "Patient", "birthDate": bad}));
            assert_eq!((i.code, i.path.as_str()), (IssueCode::Value, "Patient.birthDate"), "{bad}");
            assert!(i.message.contains("date format"), "{}", i.message);
        }
        let i = one(&json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01T25:00:00Z"}));
        assert!(i.message.contains("dateTime"), "{}", i.message);
        assert_eq!(issues(&json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01T23:59:60.123+14:00"})), vec![]);
    }

    #[test]
    fn decimals_keep_textual_form() {
        let obs = |value: &str| parse(&format!(r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueQuantity":{{"value":{value}}}}}"#));
        assert_eq!(issues(&obs("1.50")), vec![]);
        assert_eq!(issues(&obs("-0.000")), vec![]);
        assert_eq!(issues(&obs("1e3")), vec![]);
        let i = one(&obs("\"1.50\""));
        assert_eq!((i.code, i.path.as_str()), (IssueCode::Structure, "Observation.valueQuantity.value"));
        assert!(i.message.contains("decimal"));
    }

    #[test]
    fn integers() {
        let p = |n: &str| parse(&format!(r#"{{"resourceType":"Patient","multipleBirthInteger":{n}}}"#));
        for good in ["0", "1", "-5", "2147483647", "-2147483648"] {
            assert_eq!(issues(&p(good)), vec![], "{good}");
        }
        for bad in ["1.0", "1e2", "2147483648", "-2147483649", "1.5"] {
            let i = one(&p(bad));
            assert_eq!((i.code, i.path.as_str()), (IssueCode::Value, "Patient.multipleBirthInteger"), "{bad}");
        }
        let pos = |n: &str| parse(&format!(r#"{{"resourceType":"Patient","extension":[{{"url":"http://x","valuePositiveInt":{n}}}]}}"#));
        assert_eq!(issues(&pos("1")), vec![]);
        assert_eq!(one(&pos("0")).code, IssueCode::Value);
        assert_eq!(one(&pos("-1")).code, IssueCode::Value);
        let uns = |n: &str| parse(&format!(r#"{{"resourceType":"Patient","extension":[{{"url":"http://x","valueUnsignedInt":{n}}}]}}"#));
        assert_eq!(issues(&uns("0")), vec![]);
        assert_eq!(one(&uns("-1")).code, IssueCode::Value);
        assert_eq!(one(&uns("0.5")).code, IssueCode::Value);
    }

    #[test]
    fn empties_and_nulls() {
        let i = one(&json!({"resourceType": "Patient", "id": ""}));
        assert_eq!((i.code, i.path.as_str()), (IssueCode::Value, "Patient.id"));
        let i = one(&json!({"resourceType": "Patient", "implicitRules": ""}));
        assert_eq!(i.message, "empty string is not allowed");
        assert_eq!(one(&json!({"resourceType": "Patient", "name": []})).code, IssueCode::Structure);
        assert_eq!(one(&json!({"resourceType": "Patient", "name": [{}]})).code, IssueCode::Structure);
        assert_eq!(one(&json!({"resourceType": "Patient", "gender": null})).code, IssueCode::Structure);
        assert_eq!(one(&json!({"resourceType": "Patient", "name": [null]})).code, IssueCode::Structure);
        let i = one(&json!({"resourceType": "Patient", "name": [{"given": [null, null]}]}));
        assert_eq!((i.code, i.path.as_str()), (IssueCode::Structure, "Patient.name[0].given"));
        // Nulls keep primitive arrays aligned with their `_x` siblings.
        let v = json!({"resourceType": "Patient", "name": [{
            "given": ["A", null], "_given": [null, {"extension": [{"url": "http://x", "valueString": "b"}]}]
        }]});
        assert_eq!(issues(&v), vec![]);
    }

    #[test]
    fn narrative_div() {
        let ok = json!({"resourceType": "Patient", "text": {"status": "generated", "div": "\n  <div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}});
        assert_eq!(issues(&ok), vec![]);
        let i = one(&json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<p>x</p>"}}));
        assert_eq!((i.code, i.path.as_str()), (IssueCode::Invalid, "Patient.text.div"));
    }

    #[test]
    fn contained_and_bundle_entries_are_validated_by_type() {
        let v = json!({"resourceType": "Patient", "contained": [
            {"resourceType": "Organization", "id": "o1", "name": "RS"},
            {"resourceType": "Organization", "id": "o2", "active": "yes"},
            {"resourceType": "Nope"}
        ]});
        let i = issues(&v);
        assert_eq!(i.len(), 2, "{i:#?}");
        assert_eq!(i[0].path, "Patient.contained[1].active");
        assert_eq!((i[1].code, i[1].path.as_str()), (IssueCode::NotSupported, "Patient.contained[2].resourceType"));

        let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:0b1c8f6e-1b8e-4a4e-9d5e-2f1e9f0c2a11",
             "resource": {"resourceType": "Patient", "birthDate": "1990-02-30"},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Parameters", "parameter": [{"name": "p", "resource": {"resourceType": "Patient", "active": 1}}]}}
        ]});
        let i = issues(&b);
        assert_eq!(i.len(), 2, "{i:#?}");
        assert_eq!(i[0].path, "Bundle.entry[0].resource.birthDate");
        assert_eq!(i[1].path, "Bundle.entry[1].resource.parameter[0].resource.active");
    }

    #[test]
    fn deep_extension_nesting_is_too_costly_not_a_crash() {
        let mut ext = json!({"url": "http://x", "valueString": "leaf"});
        for _ in 0..200 {
            ext = json!({"url": "http://x", "extension": [ext]});
        }
        let v = json!({"resourceType": "Patient", "extension": [ext]});
        let i = issues(&v);
        assert_eq!(i.len(), 1, "{i:#?}");
        assert_eq!(i[0].code, IssueCode::TooCostly);
        // Even a silly limit is clamped rather than overflowing the stack.
        let lim = Limits { max_depth: usize::MAX, ..Limits::default() };
        let mut deep = json!({"url": "http://x", "valueString": "leaf"});
        for _ in 0..400 {
            deep = json!({"url": "http://x", "extension": [deep]});
        }
        let v = json!({"resourceType": "Patient", "extension": [deep]});
        let r = validate_resource_with(&v, &lim);
        assert_eq!(r.unwrap_err().0[0].code, IssueCode::TooCostly);
        // Drop iteratively-ish: serde_json drops recursively, 4000 levels is fine.
    }

    #[test]
    fn size_limits() {
        let lim = Limits { max_array_len: 3, max_string_len: 10, ..Limits::default() };
        let v = json!({"resourceType": "Patient", "name": [{"given": ["a", "b", "c", "d"]}]});
        let e = validate_resource_with(&v, &lim).unwrap_err();
        assert_eq!(e.0[0].code, IssueCode::TooCostly);
        assert_eq!(e.0[0].path, "Patient.name[0].given");
        let v = json!({"resourceType": "Patient", "name": [{"family": "abcdefghijk"}]});
        let e = validate_resource_with(&v, &lim).unwrap_err();
        assert_eq!(e.0[0].code, IssueCode::TooCostly);
    }

    #[test]
    fn at_most_twenty_issues() {
        let mut m = serde_json::Map::new();
        m.insert("resourceType".into(), json!("Patient"));
        for i in 0..100 {
            m.insert(format!("bad{i}"), json!(1));
        }
        let e = validate_resource(&Value::Object(m)).unwrap_err();
        assert_eq!(e.0.len(), MAX_ISSUES);
    }

    #[test]
    fn messages_never_contain_instance_values() {
        const SECRET: &str = "SECRETx9Q";
        let s = |x: &str| format!("{SECRET}{x}");
        let v = json!({
            "resourceType": "Patient",
            "id": s(" bad id"),
            "gender": s(""),
            "birthDate": s(""),
            "active": s(""),
            "multipleBirthInteger": s(""),
            "name": [{"family": 5, "given": [s(""), {"x": s("")}], "use": s("")}],
            "telecom": [{"system": s(""), "value": 7, "rank": s("")}],
            "text": {"status": "generated", "div": s("")},
            "contained": [{"resourceType": s("")}, s("")],
            "managingOrganization": s(""),
            "deceasedDateTime": s(""),
            "photo": [{"data": 3, "size": s(""), "url": s(" sp")}],
            "communication": [{"language": {"coding": [{"system": s(" "), "code": s(" ")}]}}]
        });
        let mut all = issues(&v);
        let mut secret_key = serde_json::Map::new();
        secret_key.insert("resourceType".into(), json!("Patient"));
        secret_key.insert(s(" with spaces"), json!(1));
        all.extend(issues(&Value::Object(secret_key)));
        assert!(all.len() > 10, "{all:#?}");
        for i in &all {
            assert!(!i.message.contains(SECRET), "{i:?}");
            assert!(!i.path.contains(SECRET), "{i:?}");
        }
        let e = ValidationErrors(all);
        assert!(!e.to_string().contains(SECRET));
    }

    #[test]
    fn fhir_codes() {
        assert_eq!(IssueCode::TooCostly.as_fhir_code(), "too-costly");
        assert_eq!(IssueCode::NotSupported.as_fhir_code(), "not-supported");
        assert_eq!(IssueCode::Required.to_string(), "required");
    }
}
