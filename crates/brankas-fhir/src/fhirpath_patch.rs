//! FHIRPath Patch (R4 §2.1.0.3.2, `fhirpath-patch.html`): a `Parameters` resource whose
//! `operation` parameters add, insert, delete, replace or move elements named by FHIRPath.
//!
//! The paths this applies are the ones patches use in practice: the resource type, then
//! element names, each optionally followed by an index (`[0]`), `.first()`, `.last()`, or
//! `.where(name = 'literal')` (one level of child element, `=` against a string, number or
//! boolean literal). Anything else in a path is refused with a message naming the operation,
//! never a value. Values come as `value[x]` (primitives and data types) or as `part`s (an
//! anonymous element). Whether an element repeats is taken from the official definitions.
//! The patch applies whole or not at all (it works on a copy).

use serde_json::{Map, Value};

use crate::definitions::R4;

/// Why a FHIRPath Patch was not applied; never carries a value from the patch or resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FHIRPath Patch operation {operation}: {reason}")]
pub struct PatchError {
    /// Index of the operation in the Parameters (0-based).
    pub operation: usize,
    /// What was wrong.
    pub reason: &'static str,
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    First,
    Last,
    Where(String, Value),
}

/// Where a selected element is: its parent object, the key, and its index if in an array.
#[derive(Debug, Clone, PartialEq)]
struct Loc {
    /// JSON Pointer tokens to the parent object.
    parent: Vec<String>,
    key: String,
    index: Option<usize>,
}

fn parse_path(path: &str) -> Option<(String, Vec<Step>)> {
    let mut steps = Vec::new();
    let mut rest = path.trim();
    let end = rest.find(['.', '[']).unwrap_or(rest.len());
    let root = rest[..end].to_string();
    if root.is_empty() || !root.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    rest = &rest[end..];
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let close = r.find(']')?;
            steps.push(Step::Index(r[..close].trim().parse().ok()?));
            rest = &r[close + 1..];
        } else if let Some(r) = rest.strip_prefix(".first()") {
            steps.push(Step::First);
            rest = r;
        } else if let Some(r) = rest.strip_prefix(".last()") {
            steps.push(Step::Last);
            rest = r;
        } else if let Some(r) = rest.strip_prefix(".where(") {
            let close = r.find(')')?;
            let (name, lit) = r[..close].split_once('=')?;
            let name = name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let lit = lit.trim();
            let value = if let Some(s) = lit.strip_prefix('\'').and_then(|l| l.strip_suffix('\'')) {
                Value::String(s.replace("\\'", "'"))
            } else if lit == "true" || lit == "false" {
                Value::Bool(lit == "true")
            } else {
                serde_json::from_str::<serde_json::Number>(lit).ok().map(Value::Number)?
            };
            steps.push(Step::Where(name.to_string(), value));
            rest = &r[close + 1..];
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let name = &r[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            steps.push(Step::Field(name.to_string()));
            rest = &r[end..];
        } else {
            return None;
        }
    }
    Some((root, steps))
}

fn get<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    tokens.iter().try_fold(doc, |v, t| match v {
        Value::Object(o) => o.get(t),
        Value::Array(a) => a.get(t.parse::<usize>().ok()?),
        _ => None,
    })
}

fn get_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    tokens.iter().try_fold(doc, |v, t| match v {
        Value::Object(o) => o.get_mut(t),
        Value::Array(a) => a.get_mut(t.parse::<usize>().ok()?),
        _ => None,
    })
}

impl Loc {
    fn tokens(&self) -> Vec<String> {
        let mut t = self.parent.clone();
        t.push(self.key.clone());
        if let Some(i) = self.index {
            t.push(i.to_string());
        }
        t
    }
}

/// The elements `steps` select in `doc` (each a location).
fn select(doc: &Value, steps: &[Step]) -> Option<Vec<Loc>> {
    // The current selection: pointers to objects (or to elements, after a field step).
    let mut cur: Vec<Loc> = Vec::new();
    let mut at_root = true;
    for step in steps {
        match step {
            Step::Field(name) => {
                let parents: Vec<Vec<String>> = if at_root { vec![Vec::new()] } else { cur.iter().map(Loc::tokens).collect() };
                at_root = false;
                cur = Vec::new();
                for p in parents {
                    match get(doc, &p)?.get(name) {
                        Some(Value::Array(a)) => cur.extend((0..a.len()).map(|i| Loc { parent: p.clone(), key: name.clone(), index: Some(i) })),
                        Some(_) => cur.push(Loc { parent: p.clone(), key: name.clone(), index: None }),
                        None => {}
                    }
                }
            }
            Step::Index(i) => cur = cur.get(*i).cloned().into_iter().collect(),
            Step::First => cur.truncate(1),
            Step::Last => cur = cur.last().cloned().into_iter().collect(),
            Step::Where(name, lit) => cur.retain(|l| get(doc, &l.tokens()).and_then(|v| v.get(name)) == Some(lit)),
        }
    }
    if at_root { None } else { Some(cur) }
}

fn value_of(op: &Value, index: usize) -> Result<Value, PatchError> {
    let err = |reason| PatchError { operation: index, reason };
    let parts = op.get("part").and_then(Value::as_array).ok_or(err("it has no parts"))?;
    let value = parts.iter().find(|p| p.get("name").and_then(Value::as_str) == Some("value")).ok_or(err("it needs a value"))?;
    part_value(value, 0).ok_or(err("its value is neither a value[x] nor parts"))
}

/// A part's value: its `value[x]`, or an object built from its own parts.
fn part_value(p: &Value, depth: usize) -> Option<Value> {
    if depth > 16 {
        return None;
    }
    let obj = p.as_object()?;
    if let Some((_, v)) = obj.iter().find(|(k, _)| k.starts_with("value")) {
        return Some(v.clone());
    }
    let parts = obj.get("part")?.as_array()?;
    let mut out = Map::new();
    for child in parts {
        let name = child.get("name")?.as_str()?.to_string();
        let v = part_value(child, depth + 1)?;
        match out.get_mut(&name) {
            Some(Value::Array(a)) => a.push(v),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, v]);
            }
            None => {
                out.insert(name, v);
            }
        }
    }
    Some(Value::Object(out))
}

/// Whether element `name` under the element at `path_names` (type-relative) repeats.
fn repeats(rtype: &str, path_names: &[String], name: &str) -> bool {
    let Some(td) = R4.type_def(rtype) else { return true };
    let mut list = &td.elements;
    for n in path_names {
        match crate::definitions::element_for(list, n).map(|(e, _)| e) {
            Some(e) if !e.children.is_empty() => list = &e.children,
            Some(e) => {
                // A data type: its own definitions.
                let Some(t) = e.types.first().and_then(|t| R4.type_def(t)) else { return true };
                list = &t.elements;
            }
            None => return true,
        }
    }
    crate::definitions::element_for(list, name).is_none_or(|(e, _)| e.max != Some(1))
}

/// Applies a FHIRPath Patch (`Parameters`) to `resource`, whole or not at all.
pub fn apply(resource: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let rtype = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_string();
    let ops: Vec<&Value> = patch.get("parameter").and_then(Value::as_array).into_iter().flatten().filter(|p| p.get("name").and_then(Value::as_str) == Some("operation")).collect();
    if ops.is_empty() {
        return Err(PatchError { operation: 0, reason: "the Parameters hold no operation" });
    }
    let mut doc = resource.clone();
    for (i, op) in ops.into_iter().enumerate() {
        let err = |reason| PatchError { operation: i, reason };
        let part = |name: &str| op.get("part").and_then(Value::as_array).into_iter().flatten().find(|p| p.get("name").and_then(Value::as_str) == Some(name));
        let text = |name: &str| part(name).and_then(|p| p.as_object()).and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")).and_then(|(_, v)| v.as_str()));
        let int = |name: &str| part(name).and_then(|p| p.get("valueInteger")).and_then(Value::as_u64).map(|n| n as usize);
        let kind = text("type").ok_or(err("it has no type"))?;
        let path = text("path").ok_or(err("it has no path"))?;
        let (root, steps) = parse_path(path).ok_or(err("its path is not one this server applies (elements, [n], first(), last(), where(child = literal))"))?;
        if root != rtype {
            return Err(err("its path does not start with the resource's type"));
        }
        let found = if steps.is_empty() { None } else { select(&doc, &steps) };
        let names: Vec<String> = steps.iter().filter_map(|s| if let Step::Field(n) = s { Some(n.clone()) } else { None }).collect();
        match kind {
            "add" => {
                let name = text("name").ok_or(err("add needs a name"))?.to_string();
                let value = value_of(op, i)?;
                let target_tokens = if steps.is_empty() {
                    Vec::new()
                } else {
                    match found.as_deref() {
                        Some([one]) => one.tokens(),
                        _ => return Err(err("its path must select exactly one element")),
                    }
                };
                let many = repeats(&rtype, &names, &name);
                let target = get_mut(&mut doc, &target_tokens).and_then(Value::as_object_mut).ok_or(err("its path does not select an element that can hold children"))?;
                if many {
                    match target.entry(name).or_insert_with(|| Value::Array(Vec::new())) {
                        Value::Array(a) => a.push(value),
                        _ => return Err(err("the element named is not a list")),
                    }
                } else if target.contains_key(&name) {
                    return Err(err("the element named already has a value (use replace)"));
                } else {
                    target.insert(name, value);
                }
            }
            "insert" | "move" => {
                let list = found.ok_or(err("its path selects nothing"))?;
                let first = list.first().ok_or(err("its path selects nothing"))?;
                if list.iter().any(|l| l.index.is_none() || l.parent != first.parent || l.key != first.key) {
                    return Err(err("its path must select one list"));
                }
                let arr_tokens: Vec<String> = first.parent.iter().cloned().chain([first.key.clone()]).collect();
                let arr = get_mut(&mut doc, &arr_tokens).and_then(Value::as_array_mut).ok_or(err("its path must select one list"))?;
                if kind == "insert" {
                    let at = int("index").ok_or(err("insert needs an index"))?;
                    if at > arr.len() {
                        return Err(err("the index is past the end of the list"));
                    }
                    arr.insert(at, value_of(op, i)?);
                } else {
                    let (from, to) = (int("source").ok_or(err("move needs a source"))?, int("destination").ok_or(err("move needs a destination"))?);
                    if from >= arr.len() || to >= arr.len() {
                        return Err(err("source or destination is past the end of the list"));
                    }
                    let v = arr.remove(from);
                    arr.insert(to, v);
                }
            }
            "delete" | "replace" => {
                let list = found.ok_or(err("its path selects nothing"))?;
                let one = match list.as_slice() {
                    [one] => one.clone(),
                    [] if kind == "delete" => continue,
                    _ => return Err(err("its path must select exactly one element")),
                };
                if kind == "replace" {
                    let value = value_of(op, i)?;
                    *get_mut(&mut doc, &one.tokens()).ok_or(err("its path selects nothing"))? = value;
                } else {
                    let parent = get_mut(&mut doc, &one.parent).and_then(Value::as_object_mut).ok_or(err("its path selects nothing"))?;
                    match one.index {
                        None => {
                            parent.remove(&one.key);
                        }
                        Some(ix) => {
                            let now_empty = match parent.get_mut(&one.key) {
                                Some(Value::Array(a)) if ix < a.len() => {
                                    a.remove(ix);
                                    a.is_empty()
                                }
                                _ => return Err(err("its path selects nothing")),
                            };
                            if now_empty {
                                parent.remove(&one.key);
                            }
                        }
                    }
                }
            }
            _ => return Err(err("its type is not add, insert, delete, replace or move")),
        }
    }
    *resource = doc;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(parts: Value) -> Value {
        json!({"name": "operation", "part": parts})
    }

    fn patch(ops: Vec<Value>) -> Value {
        json!({"resourceType": "Parameters", "parameter": ops})
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p", "active": true, "birthDate": "1990-08-07",
               "identifier": [{"system": "urn:a", "value": "1"}, {"system": "urn:b", "value": "2"}],
               "name": [{"family": "Rahayu", "given": ["Siti"]}]})
    }

    #[test]
    fn the_five_operations() {
        let mut p = patient();
        apply(
            &mut p,
            &patch(vec![
                op(json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.birthDate"}, {"name": "value", "valueDate": "1990-08-08"}])),
                op(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "gender"}, {"name": "value", "valueCode": "female"}])),
                op(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient.name[0]"}, {"name": "name", "valueString": "given"}, {"name": "value", "valueString": "Ayu"}])),
                op(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "telecom"},
                    {"name": "value", "valueContactPoint": {"system": "phone", "value": "0812"}}])),
                op(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.identifier.where(system = 'urn:a')"}])),
                op(json!([{"name": "type", "valueCode": "insert"}, {"name": "path", "valueString": "Patient.identifier"}, {"name": "index", "valueInteger": 0},
                    {"name": "value", "part": [{"name": "system", "valueUri": "urn:c"}, {"name": "value", "valueString": "3"}]}])),
                op(json!([{"name": "type", "valueCode": "move"}, {"name": "path", "valueString": "Patient.identifier"}, {"name": "source", "valueInteger": 0}, {"name": "destination", "valueInteger": 1}])),
                op(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.active"}])),
                op(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "deceasedBoolean"}, {"name": "value", "valueBoolean": false}])),
            ]),
        )
        .unwrap();
        assert_eq!(p["deceasedBoolean"], false, "a choice element is single too");
        assert_eq!(p["birthDate"], "1990-08-08");
        assert_eq!(p["gender"], "female", "a single element is set, not listed");
        assert_eq!(p["name"][0]["given"], json!(["Siti", "Ayu"]));
        assert_eq!(p["telecom"], json!([{"system": "phone", "value": "0812"}]), "a repeating element becomes a list");
        assert_eq!(p["identifier"], json!([{"system": "urn:b", "value": "2"}, {"system": "urn:c", "value": "3"}]));
        assert!(p.get("active").is_none());
        assert!(crate::validate_resource(&p).is_ok(), "{p}");
    }

    #[test]
    fn whole_or_nothing_and_no_values_in_errors() {
        let mut p = patient();
        let before = p.clone();
        let e = apply(
            &mut p,
            &patch(vec![
                op(json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.birthDate"}, {"name": "value", "valueDate": "2000-01-01"}])),
                op(json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.identifier"}, {"name": "value", "valueString": "rahasia"}])),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.operation, 1);
        assert_eq!(p, before, "nothing applied");
        assert!(!e.to_string().contains("rahasia"));
        for bad in ["Observation.status", "Patient.name.given.substring(1)", "Patient..name", "Patient.name[x]", "Patient.where(", "patient.name"] {
            let r = apply(&mut p, &patch(vec![op(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": bad}]))]));
            assert!(r.is_err(), "{bad}");
        }
        assert!(apply(&mut p, &patch(vec![])).is_err());
        assert!(apply(&mut p, &patch(vec![op(json!([{"name": "type", "valueCode": "frobnicate"}, {"name": "path", "valueString": "Patient.active"}]))])).is_err());
        // Deleting what is not there is no error (the operation is idempotent).
        apply(&mut p, &patch(vec![op(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.deceasedBoolean"}]))])).unwrap();
    }
}
