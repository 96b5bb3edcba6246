//! The official R4 search parameters and Patient compartment, compiled once.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, LazyLock};

use serde_json::Value;

use crate::fhirpath::{self, Item, Node};

/// The official R4 `Bundle` of 1,375 `SearchParameter` resources.
const SEARCH_PARAMETERS_JSON: &str = include_str!("../data/search-parameters.json");
/// The official R4 Patient `CompartmentDefinition`.
const COMPARTMENT_JSON: &str = include_str!("../data/compartmentdefinition-patient.json");

/// Resource types that derive from `Resource` directly rather than from
/// `DomainResource` (FHIR R4 §2.36): they get no `DomainResource` parameters.
const NOT_DOMAIN_RESOURCES: &[&str] = &["Binary", "Bundle", "Parameters"];

/// `Parameters` has no search parameters and no compartment entry, so the
/// embedded definitions never name it; it is still a resource type.
const TYPES_WITHOUT_DEFINITIONS: &[&str] = &["Parameters"];

static R4: LazyLock<Registry> = LazyLock::new(|| {
    // The data is embedded at compile time and covered by tests, so failing
    // here means a broken build, not bad input.
    Registry::load(SEARCH_PARAMETERS_JSON, COMPARTMENT_JSON).unwrap_or_else(|e| panic!("embedded R4 search definitions are invalid: {}", e.0))
});

/// The kind of a search parameter (`SearchParameter.type`), which decides
/// how its values are parsed and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// A decimal or integer, compared with implicit precision.
    Number,
    /// A date/dateTime/instant/Period/Timing, compared as ranges.
    Date,
    /// Text, matched case- and accent-insensitively from the start.
    String,
    /// A code, Coding, CodeableConcept, Identifier, ContactPoint or primitive.
    Token,
    /// A reference to another resource (or a canonical URL).
    Reference,
    /// A combination of other parameters; not supported for searching.
    Composite,
    /// A Quantity (value, system, code), Money or Range.
    Quantity,
    /// A URI, matched exactly (or with `:below` / `:above`).
    Uri,
    /// Custom semantics (`Location.near`); not supported for searching.
    Special,
}

impl ParamKind {
    fn parse(s: &str) -> Option<ParamKind> {
        Some(match s {
            "number" => ParamKind::Number,
            "date" => ParamKind::Date,
            "string" => ParamKind::String,
            "token" => ParamKind::Token,
            "reference" => ParamKind::Reference,
            "composite" => ParamKind::Composite,
            "quantity" => ParamKind::Quantity,
            "uri" => ParamKind::Uri,
            "special" => ParamKind::Special,
            _ => return None,
        })
    }
}

/// One search parameter as it applies to one resource type.
#[derive(Debug, Clone)]
pub struct SearchParam {
    /// The name used in queries (`code`, `patient`, `_lastUpdated`).
    pub code: String,
    /// How values are parsed and compared.
    pub kind: ParamKind,
    /// For reference parameters: the resource types it may point at.
    pub targets: Vec<String>,
    /// The FHIRPath expression compiled and specialised to this resource
    /// type; `None` when it has none or uses FHIRPath we do not support.
    pub(crate) expr: Option<Arc<Node>>,
}

impl SearchParam {
    /// Whether this parameter can be used in a query: it has a compiled
    /// expression and is not composite or special.
    pub fn is_supported(&self) -> bool {
        self.expr.is_some() && !matches!(self.kind, ParamKind::Composite | ParamKind::Special)
    }

    /// Streams the values of this parameter in `resource` to `f` (internal).
    pub(crate) fn for_each<'a>(&'a self, resource: &'a Value, f: &mut dyn FnMut(Item<'a>) -> ControlFlow<()>) -> ControlFlow<()> {
        match &self.expr {
            Some(e) => e.eval(Item::root(resource), f),
            None => ControlFlow::Continue(()),
        }
    }
}

#[derive(Debug, Default)]
struct TypeParams {
    /// Sorted by code.
    list: Vec<SearchParam>,
    by_code: HashMap<String, usize>,
    /// The top-level elements any of the parameters can read, or `None` when some
    /// parameter may read more than named elements (see [`Registry::search_reads`]).
    reads: Option<Vec<String>>,
}

/// How many of the official definitions compiled; see [`Registry::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryStats {
    /// `SearchParameter` resources in the bundle.
    pub definitions: usize,
    /// Of those, how many have an expression that compiled.
    pub compiled: usize,
    /// Codes (`Base.code`) of definitions that did not compile, for diagnostics.
    pub not_compiled: Vec<String>,
}

/// All search parameters and the Patient compartment for FHIR R4.
///
/// Built once from the embedded official definitions ([`Registry::r4`]);
/// every expression is compiled at that point, never per query.
#[derive(Debug)]
pub struct Registry {
    types: Vec<String>,
    params: HashMap<String, TypeParams>,
    compartment: HashMap<String, Vec<String>>,
    stats: RegistryStats,
}

#[derive(Debug)]
struct LoadError(&'static str);

/// The target types a reference parameter can actually yield on one type.
///
/// Shared definitions list the union of targets over all their bases
/// (`clinical-patient` says Patient or Group because of `CarePlan.subject`),
/// but the specialised expression often narrows it: every branch of
/// `Observation.subject.where(resolve() is Patient)` yields only Patient.
/// Narrowing matters because a bare id (`patient=123`) is only unambiguous
/// when one target remains. A parameter named `patient` is by definition
/// about the patient (its descriptions all read "who … is for", restricted
/// to Patient), so it is narrowed to Patient even where the element itself
/// is not filtered (`AllergyIntolerance.patient`).
fn effective_targets(code: &str, declared: &[String], expr: Option<&Node>) -> Vec<String> {
    fn ref_types(n: &Node, out: &mut Vec<String>) -> bool {
        match n {
            Node::RefIs(_, t) => {
                out.push(t.clone());
                true
            }
            Node::Union(v) => v.iter().all(|b| ref_types(b, out)),
            _ => false,
        }
    }
    let mut types = Vec::new();
    if let Some(e) = expr
        && ref_types(e, &mut types)
    {
        types.sort();
        types.dedup();
        return types;
    }
    if code == "patient" && declared.iter().any(|t| t == "Patient") {
        return vec!["Patient".to_owned()];
    }
    declared.to_vec()
}

impl Registry {
    /// The registry for FHIR R4 (4.0.1), built on first use.
    pub fn r4() -> &'static Registry {
        &R4
    }

    fn load(bundle_json: &str, compartment_json: &str) -> Result<Registry, LoadError> {
        let bundle: Value = serde_json::from_str(bundle_json).map_err(|_| LoadError("bundle json"))?;
        let compartment: Value = serde_json::from_str(compartment_json).map_err(|_| LoadError("compartment json"))?;
        let entries = bundle.get("entry").and_then(Value::as_array).ok_or(LoadError("bundle entries"))?;

        struct Def {
            code: String,
            kind: ParamKind,
            bases: Vec<String>,
            targets: Vec<String>,
            expr: Option<Node>,
        }
        let strings =
            |v: Option<&Value>| -> Vec<String> { v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect()).unwrap_or_default() };

        let mut defs = Vec::with_capacity(entries.len());
        let mut stats = RegistryStats { definitions: 0, compiled: 0, not_compiled: Vec::new() };
        for e in entries {
            let r = e.get("resource").ok_or(LoadError("entry resource"))?;
            let code = r.get("code").and_then(Value::as_str).ok_or(LoadError("code"))?;
            let kind = r.get("type").and_then(Value::as_str).and_then(ParamKind::parse).ok_or(LoadError("type"))?;
            let bases = strings(r.get("base"));
            stats.definitions += 1;
            let expr = r.get("expression").and_then(Value::as_str).and_then(|x| fhirpath::compile(x).ok());
            if expr.is_some() {
                stats.compiled += 1;
            } else {
                stats.not_compiled.push(format!("{}.{}", bases.first().map_or("?", String::as_str), code));
            }
            defs.push(Def { code: code.to_owned(), kind, bases, targets: strings(r.get("target")), expr });
        }

        let mut compartment_map = HashMap::new();
        let mut types: Vec<String> = TYPES_WITHOUT_DEFINITIONS.iter().map(|s| s.to_string()).collect();
        for c in compartment.get("resource").and_then(Value::as_array).ok_or(LoadError("compartment resources"))? {
            let code = c.get("code").and_then(Value::as_str).ok_or(LoadError("compartment code"))?;
            types.push(code.to_owned());
            let params = strings(c.get("param"));
            if !params.is_empty() {
                compartment_map.insert(code.to_owned(), params);
            }
        }
        for d in &defs {
            types.extend(d.bases.iter().cloned());
        }
        types.retain(|t| t != "Resource" && t != "DomainResource");
        types.sort();
        types.dedup();

        let make = |d: &Def, ty: &str| {
            let expr = d.expr.as_ref().and_then(|n| {
                let s = n.specialize(ty, !NOT_DOMAIN_RESOURCES.contains(&ty));
                (s != Node::Empty).then(|| Arc::new(s))
            });
            SearchParam { code: d.code.clone(), kind: d.kind, targets: effective_targets(&d.code, &d.targets, expr.as_deref()), expr }
        };
        let mut params: HashMap<String, TypeParams> = HashMap::new();
        for ty in &types {
            let domain = !NOT_DOMAIN_RESOURCES.contains(&ty.as_str());
            let mut list: Vec<SearchParam> =
                defs.iter().filter(|d| d.bases.iter().any(|b| b == ty || b == "Resource" || (b == "DomainResource" && domain))).map(|d| make(d, ty)).collect();
            list.sort_by(|a, b| a.code.cmp(&b.code));
            list.dedup_by(|a, b| a.code == b.code);
            let by_code = list.iter().enumerate().map(|(i, p)| (p.code.clone(), i)).collect();
            let mut names = std::collections::BTreeSet::new();
            // Composite and special parameters are never evaluated (a query naming one is
            // refused), so what their expressions read does not count.
            let all_named = list.iter().filter(|p| p.is_supported()).filter_map(|p| p.expr.as_deref()).all(|e| e.context_members(&mut names));
            let reads = all_named.then(|| names.into_iter().collect());
            params.insert(ty.clone(), TypeParams { list, by_code, reads });
        }

        Ok(Registry { types, params, compartment: compartment_map, stats })
    }

    /// The parameter `code` on `resource_type`, including the common
    /// `Resource` parameters (`_id`, `_lastUpdated`, `_tag`, `_profile`,
    /// `_security`, `_source`) and `DomainResource` ones (`_text`).
    pub fn param(&self, resource_type: &str, code: &str) -> Option<&SearchParam> {
        let tp = self.params.get(resource_type)?;
        tp.by_code.get(code).map(|&i| &tp.list[i])
    }

    /// Whether a search parameter of `resource_type` (as a criterion, a `_sort` key or a
    /// scope restriction) can read the top-level element `key` of a resource: the elements
    /// its FHIRPath expressions name, with their choice variants (`value` keeps
    /// `valueQuantity`). `resourceType` is always read; so is everything of a type where
    /// some expression reads more than named elements. A resource pruned to these elements
    /// matches, sorts and counts exactly as the whole one (so a search can decide on a
    /// small copy and open the whole resource only for what it returns).
    pub fn search_reads(&self, resource_type: &str, key: &str) -> bool {
        if key == "resourceType" {
            return true;
        }
        match self.params.get(resource_type).map(|tp| &tp.reads) {
            Some(Some(names)) => names.iter().any(|n| fhirpath::member_matches(key, n)),
            _ => true,
        }
    }

    /// The element names behind [`Registry::search_reads`] (choice names unexpanded), or
    /// `None` when the type's parameters may read every element.
    pub fn search_read_names(&self, resource_type: &str) -> Option<&[String]> {
        self.params.get(resource_type).and_then(|tp| tp.reads.as_deref())
    }

    /// The top-level elements parameter `code` of `resource_type` reads, or `None` when it is
    /// unknown, unsupported, or may read more than named elements.
    pub fn param_reads(&self, resource_type: &str, code: &str) -> Option<std::collections::BTreeSet<String>> {
        let p = self.param(resource_type, code)?;
        let mut names = std::collections::BTreeSet::new();
        (p.is_supported() && p.expr.as_deref()?.context_members(&mut names)).then_some(names)
    }

    /// Every parameter of `resource_type`, sorted by code; empty for an
    /// unknown type.
    pub fn params_for(&self, resource_type: &str) -> impl Iterator<Item = &SearchParam> {
        self.params.get(resource_type).map(|tp| tp.list.as_slice()).unwrap_or_default().iter()
    }

    /// Every concrete resource type of R4, sorted.
    pub fn resource_types(&self) -> &[String] {
        &self.types
    }

    /// Whether `resource_type` is a concrete R4 resource type.
    pub fn is_resource_type(&self, resource_type: &str) -> bool {
        self.types.binary_search_by(|t| t.as_str().cmp(resource_type)).is_ok()
    }

    /// Patient compartment membership per the CompartmentDefinition: whether
    /// a resource of this type can belong to a patient. `Patient` itself: true.
    pub fn in_patient_compartment(&self, resource_type: &str) -> bool {
        self.compartment.contains_key(resource_type)
    }

    /// The parameters that put a resource of this type in a patient's
    /// compartment, in the CompartmentDefinition's order (e.g. Observation:
    /// `["subject", "performer"]`); empty when not in the compartment.
    pub fn compartment_params(&self, resource_type: &str) -> &[String] {
        self.compartment.get(resource_type).map(Vec::as_slice).unwrap_or_default()
    }

    /// The ids of the patients whose compartment this resource is in, in the
    /// order of [`Registry::compartment_params`] (the first is the primary
    /// owner), deduplicated. Only literal references to `Patient` count
    /// (`Patient/<id>`, absolute `…/Patient/<id>`, `Patient/<id>/_history/n`);
    /// other targets and unresolvable forms (`urn:uuid:`, `#contained`) are
    /// ignored. For a `Patient` resource: its own `id`, if present.
    pub fn patient_refs(&self, resource_type: &str, resource: &Value) -> Vec<String> {
        if resource_type == "Patient" {
            return resource.get("id").and_then(Value::as_str).filter(|id| crate::reference::is_id(id)).map(|id| vec![id.to_owned()]).unwrap_or_default();
        }
        let mut out: Vec<String> = Vec::new();
        for code in self.compartment_params(resource_type) {
            let Some(p) = self.param(resource_type, code) else {
                continue;
            };
            let _ = p.for_each(resource, &mut |it| {
                // Only local references place a resource: `http://other/fhir/Patient/b` names a
                // patient of another server, and filing it with our Patient/b would mix two
                // people's records.
                if let Some(parts) = fhirpath::reference_text(it.value).filter(|t| !t.contains("://")).and_then(crate::reference::parse)
                    && parts.ty == "Patient"
                    && !out.iter().any(|x| x == parts.id)
                {
                    out.push(parts.id.to_owned());
                }
                ControlFlow::Continue(())
            });
        }
        out
    }

    /// The local literal references (`Type/id`, relative: another server's resources are not
    /// ours to follow) that reference parameter `code` of `resource_type` (every reference
    /// parameter, for `None`) finds in `resource`, as (type, id), deduplicated, in document
    /// order. A version in the reference is dropped: the current resource is meant.
    pub fn references(&self, resource_type: &str, code: Option<&str>, resource: &Value) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let params: Vec<&SearchParam> = match code {
            Some(c) => self.param(resource_type, c).into_iter().collect(),
            None => self.params_for(resource_type).collect(),
        };
        for p in params.into_iter().filter(|p| p.kind == ParamKind::Reference && p.is_supported()) {
            let _ = p.for_each(resource, &mut |it| {
                if let Some(parts) = fhirpath::reference_text(it.value).filter(|t| !t.contains("://")).and_then(crate::reference::parse)
                    && !out.iter().any(|(t, i)| t == parts.ty && i == parts.id)
                {
                    out.push((parts.ty.to_owned(), parts.id.to_owned()));
                }
                ControlFlow::Continue(())
            });
        }
        out
    }

    /// How many of the official definitions compiled.
    pub fn stats(&self) -> &RegistryStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn basics() {
        let r = Registry::r4();
        assert!(r.resource_types().len() >= 146, "{}", r.resource_types().len());
        assert!(r.is_resource_type("Observation"));
        assert!(r.is_resource_type("Parameters"));
        assert!(r.is_resource_type("Binary"));
        assert!(!r.is_resource_type("Resource"));
        assert!(!r.is_resource_type("observation"));
        for code in ["_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text"] {
            assert!(r.param("Observation", code).is_some(), "{code}");
        }
        assert!(r.param("Bundle", "_id").is_some());
        assert!(r.param("Bundle", "_text").is_none());
        assert_eq!(r.param("Observation", "code").map(|p| p.kind), Some(ParamKind::Token));
        assert_eq!(r.param("Observation", "date").map(|p| p.kind), Some(ParamKind::Date));
        assert!(r.param("Observation", "nope").is_none());
        assert!(r.param("Nope", "_id").is_none());
        assert_eq!(r.params_for("Nope").count(), 0);
        assert!(r.params_for("Patient").any(|p| p.code == "birthdate"));
        assert_eq!(r.compartment_params("Observation"), ["subject", "performer"]);
        assert!(r.in_patient_compartment("Patient"));
        assert!(r.in_patient_compartment("Observation"));
        assert!(!r.in_patient_compartment("Organization"));
        assert!(r.compartment_params("Organization").is_empty());
        let subject = r.param("Observation", "subject").unwrap();
        assert!(subject.targets.iter().any(|t| t == "Patient"));
        assert!(!r.param("Observation", "code-value-quantity").unwrap().is_supported());
        assert!(!r.param("Location", "near").unwrap().is_supported());
        assert!(!r.param("Patient", "_text").unwrap().is_supported());
    }

    #[test]
    fn patient_refs_forms() {
        let r = Registry::r4();
        let obs = json!({
            "resourceType": "Observation",
            "subject": {"reference": "Patient/a"},
            "performer": [
                {"reference": "Practitioner/x"},
                {"reference": "http://other/fhir/Patient/b/_history/3"},
                {"reference": "Patient/a"},
                {"reference": "urn:uuid:1234"}
            ]
        });
        assert_eq!(r.patient_refs("Observation", &obs), ["a"], "absolute URLs name other servers' patients");
        let grp = json!({"resourceType": "Observation", "subject": {"reference": "Group/g"}});
        assert!(r.patient_refs("Observation", &grp).is_empty());
        let p = json!({"resourceType": "Patient", "id": "p1", "link": [{"other": {"reference": "Patient/p2"}}]});
        assert_eq!(r.patient_refs("Patient", &p), ["p1"]);
        assert!(r.patient_refs("Patient", &json!({"resourceType": "Patient"})).is_empty());
        assert!(r.patient_refs("Organization", &json!({"resourceType": "Organization"})).is_empty());
    }
}
