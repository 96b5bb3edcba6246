//! The FHIR R4 JSON Schema, compiled once into a compact in-memory form.
//!
//! The schema file is regular enough that a general JSON Schema engine is not
//! needed: every definition is either a *complex type* (`properties`,
//! `additionalProperties: false`, optional `required`), a *primitive type*
//! (`type` plus an optional `pattern`), `xhtml` (an empty schema) or the
//! `ResourceList` `oneOf`. Every property is one of:
//!
//! * `{"$ref": X}` or `{"type": "array", "items": {"$ref": X}}`
//! * an inline primitive `{"type": T, "pattern": P}` (choice types such as `valueDateTime`)
//! * `{"enum": [...]}` or `{"type": "array", "items": {"enum": [...]}}`
//! * `{"const": C}` (only `resourceType`)
//!
//! Interpreting exactly that shape keeps validation fast (one hash-free binary
//! search per property, one precompiled regex per distinct pattern) and lets
//! us produce FHIR-style paths and messages that never echo instance values.
//!
//! The embedded file is the Medplum distribution of the R4 schema. It appends
//! Medplum's own resource types to `ResourceList` and adds a handful of
//! non-R4 properties to standard types; both are dropped here (see
//! [`LAST_R4_RESOURCE`] and [`NON_R4_PROPERTIES`]) so that the server accepts
//! plain R4 and nothing else.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

/// The embedded schema text (FHIR 4.0.1, Medplum distribution).
const SCHEMA_JSON: &str = include_str!("../data/fhir.schema.json");

/// The last HL7 R4 entry of the schema's alphabetical `ResourceList`; the
/// entries after it are Medplum's own resource types (`Project`, `User`, ...),
/// which are not part of FHIR R4.
const LAST_R4_RESOURCE: &str = "VisionPrescription";

/// Properties that the Medplum schema adds to standard R4 types. They are not
/// part of R4 (checked against the R4 StructureDefinitions), so accepting them
/// would let clients store data no other R4 system understands. Their `_x`
/// primitive-extension siblings are dropped too.
const NON_R4_PROPERTIES: &[(&str, &[&str])] = &[
    ("Meta", &["project", "author", "account", "compartment"]),
    ("Reference", &["resource"]),
    ("OperationOutcome", &["status", "resource"]),
    ("DeviceDefinition", &["classification"]),
    ("HealthcareService", &["offeredIn"]),
    ("ObservationDefinition", &["publisher"]),
];

/// The process-wide compiled schema, built on first use.
pub(crate) static SCHEMA: LazyLock<Schema> = LazyLock::new(|| match Schema::compile(SCHEMA_JSON) {
    Ok(s) => s,
    // The input is a constant embedded at build time and covered by tests, so
    // a failure here is a build defect, not a runtime condition.
    Err(e) => panic!("embedded FHIR schema failed to compile: {e}"),
});

/// Index of a complex type in [`Schema::types`].
pub(crate) type TypeId = u32;

/// JSON type that a primitive must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonKind {
    String,
    Number,
    Boolean,
}

impl JsonKind {
    /// Article + noun for messages ("a string").
    pub(crate) fn describe(self) -> &'static str {
        match self {
            JsonKind::String => "a string",
            JsonKind::Number => "a number",
            JsonKind::Boolean => "a boolean",
        }
    }
}

/// Extra checks for numeric primitives, done on the exact textual number form
/// (the workspace enables serde_json's `arbitrary_precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumRule {
    /// `decimal`: the schema's pattern (any JSON number matches it).
    Decimal,
    /// `integer`: no fraction/exponent, fits `i32`.
    Integer,
    /// `positiveInt`: digits only, 1..=i32::MAX.
    PositiveInt,
    /// `unsignedInt`: digits only, 0..=i32::MAX. The schema's own pattern for it
    /// (`^[0]|([1-9][0-9]*)$`) is mis-anchored, so it is not used.
    UnsignedInt,
    /// Any other numeric primitive: only the schema's pattern, if any.
    Other,
}

/// Calendar checks on top of the date/time regexes, which accept e.g. Feb 31.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DateRule {
    None,
    /// `date`, `dateTime`, `instant`: a full `YYYY-MM-DD` prefix must exist.
    Calendar,
}

/// A compiled primitive type.
#[derive(Debug)]
pub(crate) struct Primitive {
    /// FHIR type name (`dateTime`, `decimal`, ...), used in messages.
    pub name: Box<str>,
    pub json: JsonKind,
    /// Index into [`Schema::regexes`]; only used for string primitives and
    /// [`NumRule::Decimal`]/[`NumRule::Other`] numbers.
    pub pattern: Option<usize>,
    pub num: NumRule,
    pub date: DateRule,
}

/// What a property's value (or each array item) must be.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Primitive(u32),
    Enum(u32),
    Const(u32),
    Complex(TypeId),
    /// Any R4 resource, dispatched on its own `resourceType`.
    Resource,
    /// Narrative `div`.
    Xhtml,
}

/// A compiled property of a complex type.
#[derive(Debug)]
pub(crate) struct Prop {
    pub name: Box<str>,
    pub array: bool,
    pub kind: Kind,
    /// FHIR JSON allows `null` items in arrays of primitives and in their `_x`
    /// sibling arrays (to keep the two aligned), nowhere else.
    pub nulls_ok: bool,
}

/// A compiled complex type (datatype, backbone element or resource).
#[derive(Debug)]
pub(crate) struct ComplexType {
    pub name: Box<str>,
    /// Sorted by name for binary search.
    pub props: Vec<Prop>,
    pub required: Vec<Box<str>>,
}

impl ComplexType {
    /// Looks a property up by its JSON member name.
    pub(crate) fn prop(&self, name: &str) -> Option<&Prop> {
        self.props.binary_search_by(|p| p.name.as_ref().cmp(name)).ok().map(|i| &self.props[i])
    }
}

/// The whole compiled schema.
#[derive(Debug)]
pub(crate) struct Schema {
    pub types: Vec<ComplexType>,
    pub prims: Vec<Primitive>,
    pub regexes: Vec<Regex>,
    pub enums: Vec<Box<[Box<str>]>>,
    pub consts: Vec<Box<str>>,
    /// R4 resource type names, sorted, with their complex type.
    pub resources: Vec<(Box<str>, TypeId)>,
}

/// Why the embedded schema could not be compiled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CompileError {
    #[error("schema is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("schema has an unexpected shape: {0}")]
    Shape(String),
    #[error("schema pattern does not compile: {0}")]
    Regex(#[from] regex::Error),
}

/// Shorthand for a [`CompileError::Shape`].
fn shape(msg: impl Into<String>) -> CompileError {
    CompileError::Shape(msg.into())
}

impl Schema {
    /// Looks up an R4 resource type.
    pub(crate) fn resource(&self, name: &str) -> Option<TypeId> {
        self.resources.binary_search_by(|(n, _)| n.as_ref().cmp(name)).ok().map(|i| self.resources[i].1)
    }

    /// The complex type with this id.
    pub(crate) fn ty(&self, id: TypeId) -> &ComplexType {
        &self.types[id as usize]
    }

    /// Compiles the schema text. Only types reachable from R4 resources are kept.
    fn compile(text: &str) -> Result<Schema, CompileError> {
        let root: Value = serde_json::from_str(text)?;
        let defs = root.get("definitions").and_then(Value::as_object).ok_or_else(|| shape("no definitions"))?;
        let mut c = Compiler {
            defs,
            schema: Schema { types: Vec::new(), prims: Vec::new(), regexes: Vec::new(), enums: Vec::new(), consts: Vec::new(), resources: Vec::new() },
            type_ids: HashMap::new(),
            prim_ids: HashMap::new(),
            regex_ids: HashMap::new(),
            enum_ids: HashMap::new(),
            inline_prims: HashMap::new(),
            queue: Vec::new(),
        };

        // Resource types: the R4 prefix of ResourceList.
        let list = defs.get("ResourceList").and_then(|d| d.get("oneOf")).and_then(Value::as_array).ok_or_else(|| shape("no ResourceList.oneOf"))?;
        let mut names = Vec::new();
        for entry in list {
            let name = entry.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/definitions/")).ok_or_else(|| shape("ResourceList entry without $ref"))?;
            names.push(name);
            if name == LAST_R4_RESOURCE {
                break;
            }
        }
        if names.last() != Some(&LAST_R4_RESOURCE) {
            return Err(shape("ResourceList does not contain the last R4 resource"));
        }
        for name in names {
            let id = c.complex(name)?;
            c.schema.resources.push((name.into(), id));
        }
        c.schema.resources.sort_by(|a, b| a.0.cmp(&b.0));

        // Compile every reachable complex type (iteratively; types are recursive).
        while let Some((name, id)) = c.queue.pop() {
            let ty = c.compile_type(name)?;
            c.schema.types[id as usize] = ty;
        }
        Ok(c.schema)
    }
}

/// Compilation state: the parsed definitions plus interning tables, so each
/// type, primitive, pattern and code list is compiled once and shared.
struct Compiler<'j> {
    defs: &'j Map<String, Value>,
    schema: Schema,
    type_ids: HashMap<&'j str, TypeId>,
    prim_ids: HashMap<&'j str, u32>,
    regex_ids: HashMap<&'j str, usize>,
    enum_ids: HashMap<Vec<&'j str>, u32>,
    inline_prims: HashMap<(&'j str, &'j str), u32>,
    queue: Vec<(&'j str, TypeId)>,
}

impl<'j> Compiler<'j> {
    /// The raw definition called `name`.
    fn def(&self, name: &str) -> Result<&'j Value, CompileError> {
        self.defs.get(name).ok_or_else(|| shape(format!("missing definition {name}")))
    }

    /// Reserves an id for a complex type and queues it for compilation.
    fn complex(&mut self, name: &'j str) -> Result<TypeId, CompileError> {
        if let Some(&id) = self.type_ids.get(name) {
            return Ok(id);
        }
        // Validate the name now so errors point at the reference.
        self.def(name)?;
        let id = u32::try_from(self.schema.types.len()).map_err(|_| shape("too many types"))?;
        self.schema.types.push(ComplexType { name: name.into(), props: Vec::new(), required: Vec::new() });
        self.type_ids.insert(name, id);
        self.queue.push((name, id));
        Ok(id)
    }

    /// Compiles a pattern once; later uses share the same [`Regex`].
    fn regex(&mut self, pattern: &'j str) -> Result<usize, CompileError> {
        if let Some(&i) = self.regex_ids.get(pattern) {
            return Ok(i);
        }
        let re = Regex::new(&xsd_whitespace(pattern))?;
        self.schema.regexes.push(re);
        let i = self.schema.regexes.len() - 1;
        self.regex_ids.insert(pattern, i);
        Ok(i)
    }

    /// Adds a primitive, deriving its extra rules from its FHIR type name.
    fn push_prim(&mut self, name: &str, json: JsonKind, pattern: Option<&'j str>) -> Result<u32, CompileError> {
        let num = match (json, name) {
            (JsonKind::Number, "decimal") => NumRule::Decimal,
            (JsonKind::Number, "integer") => NumRule::Integer,
            (JsonKind::Number, "positiveInt") => NumRule::PositiveInt,
            (JsonKind::Number, "unsignedInt") => NumRule::UnsignedInt,
            _ => NumRule::Other,
        };
        let date = match name {
            "date" | "dateTime" | "instant" => DateRule::Calendar,
            _ => DateRule::None,
        };
        // Patterns on booleans are meaningless in JSON Schema (and the schema's
        // `^true|false$` is mis-anchored); integer-like numbers have hand checks.
        let use_pattern = match json {
            JsonKind::String => true,
            JsonKind::Number => matches!(num, NumRule::Decimal | NumRule::Other),
            JsonKind::Boolean => false,
        };
        let pattern = match pattern {
            Some(p) if use_pattern => Some(self.regex(p)?),
            _ => None,
        };
        self.schema.prims.push(Primitive { name: name.into(), json, pattern, num, date });
        u32::try_from(self.schema.prims.len() - 1).map_err(|_| shape("too many primitives"))
    }

    /// A named primitive definition (`#/definitions/dateTime`).
    fn named_prim(&mut self, name: &'j str, def: &'j Value) -> Result<u32, CompileError> {
        if let Some(&id) = self.prim_ids.get(name) {
            return Ok(id);
        }
        let json = json_kind(def).ok_or_else(|| shape(format!("primitive {name} has no type")))?;
        let pattern = def.get("pattern").and_then(Value::as_str);
        let id = self.push_prim(name, json, pattern)?;
        self.prim_ids.insert(name, id);
        Ok(id)
    }

    /// An inline primitive (`"valueDateTime": {"type": "string", "pattern": ...}`).
    /// Its FHIR type is the primitive definition of the same JSON type whose
    /// capitalised name ends the property name (choice-type naming). If the
    /// inline pattern differs from that definition's (the schema gives inline
    /// `base64Binary` a pattern but the definition none), the inline one wins.
    fn inline_prim(&mut self, prop: &'j str, def: &'j Value) -> Result<u32, CompileError> {
        let json = json_kind(def).ok_or_else(|| shape(format!("property {prop} has no type")))?;
        let ty = def.get("type").and_then(Value::as_str).unwrap_or("");
        let pattern = def.get("pattern").and_then(Value::as_str);
        let mut best: Option<&'j str> = None;
        for (name, d) in self.defs {
            if d.get("properties").is_some() || json_kind(d) != Some(json) {
                continue;
            }
            if ends_with_capitalised(prop, name) && best.is_none_or(|b| name.len() > b.len()) {
                best = Some(name.as_str());
            }
        }
        if let Some(name) = best {
            let named = self.def(name)?;
            if named.get("pattern").and_then(Value::as_str) == pattern {
                return self.named_prim(name, named);
            }
        }
        // Named after the matching definition if any, else after its JSON type.
        let name = best.unwrap_or(ty);
        let key = (name, pattern.unwrap_or(""));
        if let Some(&id) = self.inline_prims.get(&key) {
            return Ok(id);
        }
        let id = self.push_prim(name, json, pattern)?;
        self.inline_prims.insert(key, id);
        Ok(id)
    }

    /// Interns a code list (many properties share e.g. the same status codes).
    fn enumeration(&mut self, values: &'j Value) -> Result<u32, CompileError> {
        let list: Vec<&'j str> = values
            .as_array()
            .ok_or_else(|| shape("enum is not an array"))?
            .iter()
            .map(|v| v.as_str().ok_or_else(|| shape("enum value is not a string")))
            .collect::<Result<_, _>>()?;
        if let Some(&id) = self.enum_ids.get(&list) {
            return Ok(id);
        }
        let boxed: Box<[Box<str>]> = list.iter().map(|s| Box::<str>::from(*s)).collect();
        self.schema.enums.push(boxed);
        let id = u32::try_from(self.schema.enums.len() - 1).map_err(|_| shape("too many enums"))?;
        self.enum_ids.insert(list, id);
        Ok(id)
    }

    /// Resolves a `$ref` target to a value kind.
    fn reference(&mut self, r: &'j str) -> Result<Kind, CompileError> {
        let name = r.strip_prefix("#/definitions/").ok_or_else(|| shape(format!("unsupported $ref {r}")))?;
        if name == "ResourceList" {
            return Ok(Kind::Resource);
        }
        if name == "xhtml" {
            return Ok(Kind::Xhtml);
        }
        let def = self.def(name)?;
        if def.get("properties").is_some() { Ok(Kind::Complex(self.complex(name)?)) } else { Ok(Kind::Primitive(self.named_prim(name, def)?)) }
    }

    /// Compiles one property schema (not an array).
    fn single(&mut self, prop: &'j str, p: &'j Value) -> Result<Kind, CompileError> {
        if let Some(r) = p.get("$ref").and_then(Value::as_str) {
            return self.reference(r);
        }
        if let Some(e) = p.get("enum") {
            return Ok(Kind::Enum(self.enumeration(e)?));
        }
        if let Some(c) = p.get("const") {
            let c = c.as_str().ok_or_else(|| shape("const is not a string"))?;
            self.schema.consts.push(c.into());
            let id = u32::try_from(self.schema.consts.len() - 1).map_err(|_| shape("too many consts"))?;
            return Ok(Kind::Const(id));
        }
        if p.get("type").is_some() {
            return Ok(Kind::Primitive(self.inline_prim(prop, p)?));
        }
        Err(shape(format!("property {prop} has an unsupported shape")))
    }

    /// Compiles the properties and required list of one complex type.
    fn compile_type(&mut self, name: &'j str) -> Result<ComplexType, CompileError> {
        let def = self.def(name)?;
        let props = def.get("properties").and_then(Value::as_object).ok_or_else(|| shape(format!("{name} has no properties")))?;
        let denied: &[&str] = NON_R4_PROPERTIES.iter().find(|(t, _)| *t == name).map_or(&[], |(_, p)| p);
        let is_denied = |p: &str| {
            let base = p.strip_prefix('_').unwrap_or(p);
            denied.contains(&base)
        };
        let mut out = Vec::with_capacity(props.len());
        for (pname, p) in props {
            if is_denied(pname) {
                continue;
            }
            let array = p.get("type").and_then(Value::as_str) == Some("array");
            let kind = if array {
                let items = p.get("items").ok_or_else(|| shape(format!("{name}.{pname} array without items")))?;
                self.single(pname, items)?
            } else {
                self.single(pname, p)?
            };
            let nulls_ok = array && (pname.starts_with('_') || matches!(kind, Kind::Primitive(_) | Kind::Enum(_)));
            out.push(Prop { name: pname.as_str().into(), array, kind, nulls_ok });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        let required =
            def.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).filter(|r| !is_denied(r)).map(Box::<str>::from).collect()).unwrap_or_default();
        Ok(ComplexType { name: name.into(), props: out, required })
    }
}

/// Rewrites `\s` / `\S` to their XML Schema meaning.
///
/// FHIR's regexes come from XML Schema, where `\s` is only space, tab, CR and
/// LF; in Rust (and ECMAScript) it is all Unicode whitespace, which would
/// reject e.g. a no-break space in a `string` (the official example
/// `DiagnosticReport-gingival-mass` has one). Rust's nested classes let the
/// same replacement work inside and outside brackets (`[^\s]` becomes
/// `[^[ \t\n\r]]`).
fn xsd_whitespace(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('s') => out.push_str("[ \\t\\n\\r]"),
            Some('S') => out.push_str("[^ \\t\\n\\r]"),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// The JSON type a primitive schema asks for.
fn json_kind(def: &Value) -> Option<JsonKind> {
    match def.get("type").and_then(Value::as_str)? {
        "string" => Some(JsonKind::String),
        "number" | "integer" => Some(JsonKind::Number),
        "boolean" => Some(JsonKind::Boolean),
        _ => None,
    }
}

/// `ends_with_capitalised("valueDateTime", "dateTime")` is true.
fn ends_with_capitalised(prop: &str, prim: &str) -> bool {
    let mut chars = prim.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let rest = chars.as_str();
    if prop.len() <= prim.len() || !prop.ends_with(rest) {
        return false;
    }
    let head = &prop[..prop.len() - rest.len()];
    head.ends_with(first.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_and_has_r4_resources_only() {
        let s = &*SCHEMA;
        assert_eq!(s.resources.len(), 146);
        assert!(s.resource("Patient").is_some());
        assert!(s.resource("Project").is_none());
        // Distinct patterns are compiled once each.
        assert!(s.regexes.len() < 30, "{} regexes", s.regexes.len());
    }

    #[test]
    fn medplum_additions_are_dropped() {
        let s = &*SCHEMA;
        let meta = s.types.iter().find(|t| &*t.name == "Meta").expect("Meta");
        assert!(meta.prop("versionId").is_some());
        assert!(meta.prop("project").is_none());
        let r = s.types.iter().find(|t| &*t.name == "Reference").expect("Reference");
        assert!(r.prop("resource").is_none());
        assert!(r.prop("reference").is_some());
    }

    #[test]
    fn inline_choice_types_get_their_fhir_name() {
        let s = &*SCHEMA;
        let ext = s.types.iter().find(|t| &*t.name == "Extension").expect("Extension");
        let name_of = |p: &str| match ext.prop(p).map(|p| p.kind) {
            Some(Kind::Primitive(i)) => s.prims[i as usize].name.to_string(),
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(name_of("valueDateTime"), "dateTime");
        assert_eq!(name_of("valueTime"), "time");
        assert_eq!(name_of("valueCanonical"), "canonical");
        assert_eq!(name_of("valueUnsignedInt"), "unsignedInt");
        assert_eq!(name_of("valueBase64Binary"), "base64Binary");
    }

    #[test]
    fn whitespace_classes_follow_xml_schema() {
        assert_eq!(xsd_whitespace(r"^[^\s]+(\s[^\s]+)*$"), r"^[^[ \t\n\r]]+([ \t\n\r][^[ \t\n\r]]+)*$");
        assert_eq!(xsd_whitespace(r"^\S*\.\\$"), r"^[^ \t\n\r]*\.\\$");
        let string = Regex::new(&xsd_whitespace(r"^[ \r\n\t\S]+$")).expect("regex");
        assert!(string.is_match("a\u{a0}b"));
        let code = Regex::new(&xsd_whitespace(r"^[^\s]+(\s[^\s]+)*$")).expect("regex");
        assert!(code.is_match("a b"));
        assert!(!code.is_match("a  b"));
        assert!(!code.is_match(" a"));
        assert!(code.is_match("a\u{a0}"));
        let uri = Regex::new(&xsd_whitespace(r"^\S*$")).expect("regex");
        assert!(!uri.is_match("a b"));
        assert!(!uri.is_match("a\tb"));
    }

    #[test]
    fn capitalised_suffix() {
        assert!(ends_with_capitalised("valueDateTime", "dateTime"));
        // A shorter suffix also matches; the compiler prefers the longest.
        assert!(ends_with_capitalised("valueDateTime", "time"));
        assert!(!ends_with_capitalised("dateTime", "dateTime"));
        assert!(ends_with_capitalised("onsetString", "string"));
    }
}
