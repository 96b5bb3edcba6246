//! Query semantics tests (unit level: they may look at compiled expressions).

use std::cmp::Ordering;

use serde_json::{Value, json};

use crate::fhirpath::{self, Node};
use crate::{IdentityQuery, Include, ParamKind, Query, QueryError, Registry, Summary, TotalMode};

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

fn q(ty: &str, p: &[(&str, &str)]) -> Query {
    Query::parse(Registry::r4(), ty, &pairs(p)).unwrap_or_else(|e| panic!("{p:?}: {e}"))
}

fn err(ty: &str, p: &[(&str, &str)]) -> QueryError {
    Query::parse(Registry::r4(), ty, &pairs(p)).expect_err("should fail")
}

fn m(ty: &str, p: &[(&str, &str)], r: &Value) -> bool {
    q(ty, p).matches(r)
}

fn obs_at(effective: Value) -> Value {
    let mut o = json!({"resourceType": "Observation", "id": "o", "status": "final"});
    if let Some(p) = effective.get("start").or(effective.get("end")).map(|_| effective.clone()) {
        o["effectivePeriod"] = p;
    } else {
        o["effectiveDateTime"] = effective;
    }
    o
}

// ------------------------------------------------------------ compilation

#[test]
fn every_official_expression_compiles_where_it_matters() {
    let r = Registry::r4();
    let stats = r.stats();
    println!("compiled {} of {} official search-parameter expressions; not compiled: {:?}", stats.compiled, stats.definitions, stats.not_compiled);
    assert_eq!(stats.definitions, 1375);
    // Only the three definitions without any expression (_text, _content, _query).
    assert!(stats.compiled >= 1372, "{stats:?}");

    let required = [
        "Patient",
        "Observation",
        "Encounter",
        "Condition",
        "DiagnosticReport",
        "ImagingStudy",
        "Media",
        "DocumentReference",
        "Consent",
        "ServiceRequest",
        "Immunization",
        "Procedure",
        "MedicationRequest",
        "Claim",
        "ExplanationOfBenefit",
        "CarePlan",
    ];
    let mut checked = 0;
    for ty in required {
        for p in r.params_for(ty) {
            if matches!(p.kind, ParamKind::Token | ParamKind::Date | ParamKind::Reference | ParamKind::String) && !["_text", "_content", "_query"].contains(&p.code.as_str()) {
                assert!(p.is_supported(), "{ty}.{} does not compile", p.code);
                checked += 1;
            }
        }
    }
    assert!(checked > 300, "{checked}");

    // Every parameter of every type: either supported or deliberately not.
    let mut supported = 0;
    let mut total = 0;
    for ty in r.resource_types() {
        for p in r.params_for(ty) {
            total += 1;
            if p.is_supported() {
                supported += 1;
            } else {
                assert!(
                    matches!(p.kind, ParamKind::Composite | ParamKind::Special) || ["_text", "_content", "_query"].contains(&p.code.as_str()),
                    "{ty}.{} unexpectedly unsupported",
                    p.code
                );
            }
        }
    }
    println!("{supported} of {total} (type, parameter) pairs are searchable");
}

/// Strips `where(resolve() is T)` so paths can be compared.
fn strip_refis(n: &Node) -> Node {
    match n {
        Node::RefIs(b, _) => strip_refis(b),
        Node::Member(b, s) => Node::Member(Box::new(strip_refis(b)), s.clone()),
        other => other.clone(),
    }
}

fn branches(n: &Node) -> Vec<Node> {
    match n {
        Node::Union(v) => v.iter().map(strip_refis).collect(),
        other => vec![strip_refis(other)],
    }
}

/// `pinned_patient` treats `patient` like a compartment parameter: check
/// against the definitions that its paths are all compartment paths.
#[test]
fn patient_param_is_within_compartment() {
    let r = Registry::r4();
    for ty in r.resource_types() {
        if !r.in_patient_compartment(ty) || ty == "Patient" {
            continue;
        }
        let Some(patient) = r.param(ty, "patient") else {
            continue;
        };
        let Some(pe) = &patient.expr else { continue };
        let allowed: Vec<Node> = r.compartment_params(ty).iter().filter_map(|c| r.param(ty, c)?.expr.clone()).flat_map(|e| branches(&e)).collect();
        for b in branches(pe) {
            assert!(allowed.contains(&b), "{ty}.patient branch {b:?} not in compartment");
        }
    }
}

#[test]
fn shared_expressions_are_specialised() {
    let r = Registry::r4();
    let p = r.param("Observation", "patient").unwrap();
    let expected = fhirpath::compile("Observation.subject.where(resolve() is Patient)").unwrap().specialize("Observation", true);
    assert_eq!(**p.expr.as_ref().unwrap(), expected);
}

// ------------------------------------------------------------ dates

#[test]
fn date_eq_is_containment() {
    let o = obs_at(json!("2021-03-04T10:00:00Z"));
    assert!(m("Observation", &[("date", "2021")], &o));
    assert!(m("Observation", &[("date", "2021-03")], &o));
    assert!(m("Observation", &[("date", "2021-03-04")], &o));
    assert!(m("Observation", &[("date", "eq2021-03-04")], &o));
    assert!(m("Observation", &[("date", "2021-03-04T10:00")], &o));
    assert!(!m("Observation", &[("date", "2021-03-05")], &o));
    assert!(!m("Observation", &[("date", "2021-04")], &o));
    // A target coarser than the search value is not contained in it.
    let day = obs_at(json!("2021-03-04"));
    assert!(!m("Observation", &[("date", "2021-03-04T10:00")], &day));
    assert!(m("Observation", &[("date", "ne2021-03-04T10:00")], &day));
    assert!(!m("Observation", &[("date", "ne2021-03")], &o));
}

#[test]
fn date_timezones_are_normalised() {
    // 2021-03-04T01:00+07:00 is 2021-03-03T18:00Z.
    let o = obs_at(json!("2021-03-04T01:00:00+07:00"));
    assert!(m("Observation", &[("date", "2021-03-03")], &o));
    assert!(!m("Observation", &[("date", "2021-03-04")], &o));
    assert!(m("Observation", &[("date", "2021-03-04T01:00+07:00")], &o));
    // No timezone: UTC.
    let naive = obs_at(json!("2021-03-04T01:00:00"));
    assert!(m("Observation", &[("date", "2021-03-04")], &naive));
}

#[test]
fn date_prefixes() {
    let o = obs_at(json!("2021-03-15"));
    let t = |p: &str| m("Observation", &[("date", p)], &o);
    assert!(t("gt2021-03-14"));
    assert!(!t("gt2021-03-15"));
    assert!(!t("gt2021-03"));
    assert!(t("ge2021-03-15"));
    assert!(t("ge2021-03"));
    assert!(t("ge2021-02"));
    assert!(!t("ge2021-04"));
    assert!(t("lt2021-03-16"));
    assert!(!t("lt2021-03-15"));
    assert!(t("le2021-03-15"));
    assert!(t("le2021-03"));
    assert!(!t("le2021-03-14"));
    assert!(t("sa2021-03-14"));
    assert!(!t("sa2021-03-15"));
    assert!(t("eb2021-03-16"));
    assert!(!t("eb2021-03-15"));
    assert!(t("ap2021-03-15"));
    assert!(!t("ap1990-01-01"));
}

#[test]
fn date_periods() {
    let p = obs_at(json!({"start": "2021-01-10", "end": "2021-01-20"}));
    let t = |v: &str| m("Observation", &[("date", v)], &p);
    assert!(t("2021-01"));
    assert!(!t("2021-01-15"));
    assert!(t("gt2021-01-15"));
    assert!(t("lt2021-01-15"));
    assert!(!t("sa2021-01-15"));
    assert!(t("sa2021-01-09"));
    assert!(t("eb2021-01-21"));
    assert!(!t("eb2021-01-20"));
    // AND of two occurrences: a range query.
    assert!(m("Observation", &[("date", "ge2021-01-01"), ("date", "le2021-01-31")], &p));
    // ge/le are "overlaps the range above/below": a period straddling the
    // boundary matches both.
    assert!(m("Observation", &[("date", "ge2021-01-15"), ("date", "le2021-01-15")], &p));
    assert!(!m("Observation", &[("date", "ge2021-01-25"), ("date", "le2021-01-31")], &p));
    // Open-ended period: ongoing.
    let open = obs_at(json!({"start": "2021-01-10"}));
    assert!(m("Observation", &[("date", "gt2030")], &open));
    assert!(!m("Observation", &[("date", "lt2021-01-10")], &open));
}

#[test]
fn date_choice_and_last_updated() {
    let c = json!({"resourceType": "Condition", "onsetPeriod": {"start": "2020-05-01", "end": "2020-05-02"}});
    assert!(m("Condition", &[("onset-date", "2020-05")], &c));
    let c2 = json!({"resourceType": "Condition", "onsetString": "as a child"});
    assert!(!m("Condition", &[("onset-date", "2020-05")], &c2));
    assert!(m("Condition", &[("onset-info", "as a")], &c2));
    let r = json!({"resourceType": "Patient", "meta": {"lastUpdated": "2024-01-02T03:04:05.678+00:00"}});
    assert!(m("Patient", &[("_lastUpdated", "gt2024-01-01")], &r));
    assert!(m("Patient", &[("_lastUpdated", "2024-01-02")], &r));
    assert!(!m("Patient", &[("_lastUpdated", "lt2024")], &r));
    let p = json!({"resourceType": "Patient", "birthDate": "1990-06"});
    assert!(m("Patient", &[("birthdate", "1990")], &p));
    assert!(!m("Patient", &[("birthdate", "1990-06-01")], &p));
    let ci = json!({"resourceType": "Immunization", "occurrenceDateTime": "2019-10-01"});
    assert!(m("Immunization", &[("date", "2019-10")], &ci));
}

#[test]
fn bad_dates_are_bad_values() {
    for v in ["2021-13", "yesterday", "xx2021", "2021-02-30", "ge", "2021-03-04T10"] {
        assert_eq!(err("Observation", &[("date", v)]), QueryError::BadValue { param: "date".into() }, "{v}");
    }
}

// ------------------------------------------------------------ numbers, quantities

#[test]
fn number_precision_and_prefixes() {
    let ra = |p: Value| json!({"resourceType": "RiskAssessment", "prediction": [{"probabilityDecimal": p}]});
    let t = |v: &str, x: &str| {
        let n: Value = serde_json::from_str(x).unwrap();
        m("RiskAssessment", &[("probability", v)], &ra(n))
    };
    assert!(t("100", "100"));
    assert!(t("100", "99.5"));
    assert!(t("100", "100.4999"));
    assert!(!t("100", "100.5"));
    assert!(!t("100", "99.49"));
    assert!(t("100.0", "100.04"));
    assert!(!t("100.0", "100.05"));
    assert!(t("0.15", "0.145"));
    assert!(!t("0.15", "0.155"));
    assert!(t("gt100", "100.1"));
    assert!(!t("gt100", "100"));
    assert!(t("ge100", "100"));
    assert!(t("lt100", "99.9"));
    assert!(t("le100", "100"));
    assert!(!t("le100", "100.01"));
    assert!(t("ne100", "101"));
    assert!(!t("ne100", "100.2"));
    assert!(t("ap100", "109"));
    assert!(!t("ap100", "111"));
    assert!(t("sa100", "101"));
    assert!(t("eb100", "99"));
    assert!(t("1e2", "100"));
    // Range target.
    let range = json!({"resourceType": "RiskAssessment", "prediction": [{"probabilityRange": {"low": {"value": 10}, "high": {"value": 20}}}]});
    assert!(m("RiskAssessment", &[("probability", "gt15")], &range));
    assert!(m("RiskAssessment", &[("probability", "lt15")], &range));
    assert!(!m("RiskAssessment", &[("probability", "gt20")], &range));
    assert!(!m("RiskAssessment", &[("probability", "15")], &range));
    assert_eq!(err("RiskAssessment", &[("probability", "abc")]), QueryError::BadValue { param: "probability".into() });
}

#[test]
fn quantities() {
    let o = json!({
        "resourceType": "Observation",
        "valueQuantity": {"value": 176.35499866729558, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"}
    });
    let t = |v: &str| m("Observation", &[("value-quantity", v)], &o);
    assert!(t("176.35499866729558"));
    assert!(t("gt170"));
    assert!(t("gt170|http://unitsofmeasure.org|cm"));
    assert!(t("gt170||cm"));
    assert!(!t("gt170|http://unitsofmeasure.org|mm"));
    assert!(!t("gt170|http://other|cm"));
    assert!(t("lt200|http://unitsofmeasure.org|"));
    assert!(!t("lt170"));
    assert!(t("ap176"));
    assert!(t("176"));
    assert!(!t("177"));
    assert!(t("176.4"));
    // Components too, via combo.
    let bp = json!({
        "resourceType": "Observation",
        "component": [
            {"code": {"text": "dia"}, "valueQuantity": {"value": 75, "code": "mm[Hg]", "system": "http://unitsofmeasure.org"}},
            {"code": {"text": "sys"}, "valueQuantity": {"value": 129, "code": "mm[Hg]", "system": "http://unitsofmeasure.org"}}
        ]
    });
    assert!(m("Observation", &[("component-value-quantity", "gt120||mm[Hg]")], &bp));
    assert!(m("Observation", &[("combo-value-quantity", "lt80")], &bp));
    assert!(!m("Observation", &[("value-quantity", "lt80")], &bp));
    assert_eq!(err("Observation", &[("value-quantity", "5|a")]), QueryError::BadValue { param: "value-quantity".into() });
    // Money.
    let claim = json!({"resourceType": "Invoice", "totalGross": {"value": 100.5, "currency": "IDR"}});
    assert!(m("Invoice", &[("totalgross", "gt100|urn:iso:std:iso:4217|IDR")], &claim));
    assert!(m("Invoice", &[("totalgross", "gt100||IDR")], &claim));
    assert!(!m("Invoice", &[("totalgross", "gt100||USD")], &claim));
}

// ------------------------------------------------------------ tokens

fn cond() -> Value {
    json!({
        "resourceType": "Condition",
        "id": "c1",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {
            "coding": [
                {"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes mellitus type 2"},
                {"code": "E11"}
            ],
            "text": "Type 2 diabetes"
        },
        "subject": {"reference": "Patient/p1"},
        "identifier": [{"system": "urn:sys", "value": "A|1", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}], "text": "Medical record"}}]
    })
}

#[test]
fn token_forms() {
    let c = cond();
    let t = |v: &str| m("Condition", &[("code", v)], &c);
    assert!(t("44054006"));
    assert!(t("http://snomed.info/sct|44054006"));
    assert!(!t("http://loinc.org|44054006"));
    assert!(t("http://snomed.info/sct|"));
    assert!(!t("http://loinc.org|"));
    assert!(t("|E11"));
    assert!(!t("|44054006"));
    assert!(!t("4405400"));
    assert!(!t("Type 2 diabetes"));
    assert_eq!(err("Condition", &[("code", "|")]), QueryError::BadValue { param: "code".into() });
    assert_eq!(err("Condition", &[("code", "a|b|c")]), QueryError::BadValue { param: "code".into() });
    // Escaped `|` is part of the value.
    assert!(m("Condition", &[("identifier", "urn:sys|A\\|1")], &c));
    assert!(m("Condition", &[("identifier", "A\\|1")], &c));
    assert!(!m("Condition", &[("identifier", "urn:other|A\\|1")], &c));
}

#[test]
fn token_modifiers() {
    let c = cond();
    assert!(m("Condition", &[("code:text", "type 2")], &c));
    assert!(m("Condition", &[("code:text", "diabetes MELL")], &c));
    assert!(!m("Condition", &[("code:text", "asthma")], &c));
    assert!(m("Condition", &[("code:not", "12345")], &c));
    assert!(!m("Condition", &[("code:not", "44054006")], &c));
    assert!(!m("Condition", &[("code:not", "12345,E11")], &c));
    // :not also matches resources without the element.
    assert!(m("Condition", &[("severity:not", "x")], &c));
    assert!(m("Condition", &[("identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|MR|A\\|1")], &c));
    assert!(!m("Condition", &[("identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|MR|B")], &c));
    assert_eq!(err("Condition", &[("identifier:of-type", "MR|A")]), QueryError::BadValue { param: "identifier:of-type".into() });
    assert_eq!(err("Condition", &[("code:in", "http://vs")]), QueryError::UnsupportedModifier { param: "code:in".into() });
    assert_eq!(err("Condition", &[("code:exact", "x")]), QueryError::UnsupportedModifier { param: "code:exact".into() });
}

#[test]
fn tokens_on_primitives_identifiers_and_contact_points() {
    let p = json!({
        "resourceType": "Patient",
        "id": "p1",
        "active": true,
        "gender": "female",
        "identifier": [{"system": "https://fhir.kemkes.go.id/id/nik", "value": "3201234567890123"}],
        "telecom": [{"system": "phone", "value": "+62 812 0000"}, {"system": "email", "value": "a@example.org"}],
        "deceasedBoolean": false
    });
    let t = |k: &str, v: &str| m("Patient", &[(k, v)], &p);
    assert!(t("gender", "female"));
    assert!(t("gender", "http://hl7.org/fhir/administrative-gender|female"));
    assert!(!t("gender", "male"));
    assert!(t("active", "true"));
    assert!(!t("active", "false"));
    assert!(t("identifier", "https://fhir.kemkes.go.id/id/nik|3201234567890123"));
    assert!(t("identifier", "3201234567890123"));
    assert!(!t("identifier", "https://fhir.kemkes.go.id/id/nik|3201234567890124"));
    assert!(t("phone", "+62 812 0000"));
    assert!(!t("phone", "a@example.org"));
    assert!(t("email", "a@example.org"));
    assert!(t("telecom", "phone|+62 812 0000"));
    assert!(t("telecom", "a@example.org"));
    assert!(t("deceased", "false"));
    assert!(!t("deceased", "true"));
    assert!(t("_id", "p1"));
    assert!(!t("_id", "p2"));
    assert!(t("_id", "p2,p1"));
    let dead = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"});
    assert!(m("Patient", &[("deceased", "true")], &dead));
    let tagged = json!({"resourceType": "Observation", "meta": {"tag": [{"system": "https://smarthealthit.org/tags", "code": "synthea-5-2019"}]}});
    assert!(m("Observation", &[("_tag", "https://smarthealthit.org/tags|synthea-5-2019")], &tagged));
}

// ------------------------------------------------------------ strings

#[test]
fn string_prefix_case_and_accents() {
    let p = json!({
        "resourceType": "Patient",
        "name": [{"use": "official", "family": "Hernández", "given": ["José", "María"], "prefix": ["Dr."]}],
        "address": [{"line": ["Jl. Sudirman No. 1"], "city": "Jakarta Selatan", "postalCode": "12190", "country": "ID"}]
    });
    let t = |k: &str, v: &str| m("Patient", &[(k, v)], &p);
    assert!(t("name", "hernandez"));
    assert!(t("name", "HERN"));
    assert!(t("name", "jose"));
    assert!(t("name", "Maria"));
    assert!(t("name", "dr"));
    assert!(t("family", "Hernández"));
    assert!(!t("family", "José"));
    assert!(t("given", "mar"));
    assert!(!t("name", "ernandez"));
    assert!(!t("name", "official"));
    assert!(t("name:contains", "NAND"));
    assert!(t("name:exact", "Hernández"));
    assert!(!t("name:exact", "hernández"));
    assert!(!t("name:exact", "Hernandez"));
    assert!(t("address", "jakarta"));
    assert!(t("address-city", "Jakarta Sel"));
    assert!(t("address", "jl. sud"));
    assert!(t("address-postalcode", "121"));
    assert!(!t("address-city", "Bandung"));
    assert!(t("address:contains", "selatan"));
    assert_eq!(err("Patient", &[("name:text", "x")]), QueryError::UnsupportedModifier { param: "name:text".into() });
}

#[test]
fn or_and_escapes() {
    let p = json!({"resourceType": "Patient", "name": [{"family": "Smith, Jr", "given": ["Ann"]}]});
    assert!(m("Patient", &[("name", "jones,smith")], &p));
    assert!(!m("Patient", &[("name", "jones,brown")], &p));
    assert!(m("Patient", &[("name", "smith\\, jr")], &p));
    assert!(!m("Patient", &[("name", "smith\\, sr")], &p));
    assert!(m("Patient", &[("name", "smith"), ("name", "ann")], &p));
    assert!(!m("Patient", &[("name", "smith"), ("name", "bob")], &p));
    assert!(m("Patient", &[("name", "smith"), ("given", "bob,ann")], &p));
    // Empty values are ignored.
    assert!(m("Patient", &[("name", "")], &p));
    assert_eq!(err("Patient", &[("name", "a,,b")]), QueryError::BadValue { param: "name".into() });
}

#[test]
fn missing_modifier() {
    let c = cond();
    assert!(m("Condition", &[("onset-date:missing", "true")], &c));
    assert!(!m("Condition", &[("onset-date:missing", "false")], &c));
    assert!(m("Condition", &[("code:missing", "false")], &c));
    assert!(!m("Condition", &[("code:missing", "true")], &c));
    assert!(m("Condition", &[("subject:missing", "false")], &c));
    assert!(m("Condition", &[("abatement-age:missing", "true")], &c));
    assert!(m("Condition", &[("abatement-string:missing", "true")], &c));
    assert_eq!(err("Condition", &[("code:missing", "yes")]), QueryError::BadValue { param: "code:missing".into() });
}

// ------------------------------------------------------------ references, uris

#[test]
fn references() {
    let o = json!({
        "resourceType": "Observation",
        "subject": {"reference": "Patient/p1"},
        "performer": [{"reference": "http://example.org/fhir/Practitioner/d1/_history/2"}],
        "encounter": {"reference": "Encounter/e1", "identifier": {"system": "urn:enc", "value": "E-1"}},
        "basedOn": [{"identifier": {"system": "urn:sr", "value": "SR-9"}, "type": "ServiceRequest"}]
    });
    let t = |k: &str, v: &str| m("Observation", &[(k, v)], &o);
    assert!(t("subject", "Patient/p1"));
    assert!(t("subject", "p1"));
    assert!(!t("subject", "Group/p1"));
    assert!(t("subject:Patient", "p1"));
    assert!(!t("subject:Group", "p1"));
    assert!(t("patient", "p1"));
    assert!(t("patient", "Patient/p1"));
    assert!(t("patient", "http://other.example/fhir/Patient/p1"));
    assert!(!t("patient", "p2"));
    assert!(t("performer", "Practitioner/d1"));
    assert!(t("performer", "Practitioner/d1/_history/2"));
    assert!(!t("performer", "Practitioner/d1/_history/3"));
    assert!(t("performer", "http://example.org/fhir/Practitioner/d1"));
    assert!(t("encounter", "e1"));
    assert!(t("encounter:identifier", "urn:enc|E-1"));
    assert!(!t("encounter:identifier", "urn:enc|E-2"));
    assert!(t("based-on:identifier", "SR-9"));
    assert_eq!(err("Observation", &[("subject:Medication", "x")]), QueryError::UnsupportedModifier { param: "subject:Medication".into() });
    assert_eq!(err("Observation", &[("subject:below", "x")]), QueryError::UnsupportedModifier { param: "subject:below".into() });
    // Patient resources referenced by urn:uuid (unresolved bundles) are not
    // "resolve() is Patient" and so not in `patient`, but still in `subject`.
    let u = json!({"resourceType": "Observation", "subject": {"reference": "urn:uuid:0b8f"}});
    assert!(m("Observation", &[("subject", "urn:uuid:0b8f")], &u));
    assert!(!m("Observation", &[("patient", "urn:uuid:0b8f")], &u));
}

#[test]
fn canonical_and_uri() {
    let q1 = json!({"resourceType": "Questionnaire", "url": "http://example.org/Questionnaire/phq9"});
    assert!(m("Questionnaire", &[("url", "http://example.org/Questionnaire/phq9")], &q1));
    assert!(!m("Questionnaire", &[("url", "http://example.org/Questionnaire")], &q1));
    assert!(m("Questionnaire", &[("url:below", "http://example.org/Questionnaire")], &q1));
    assert!(m("Questionnaire", &[("url:above", "http://example.org/Questionnaire/phq9/v2")], &q1));
    let prof = json!({"resourceType": "Patient", "meta": {"profile": ["http://fhir.example/StructureDefinition/Pasien"]}});
    assert!(m("Patient", &[("_profile", "http://fhir.example/StructureDefinition/Pasien")], &prof));
    let qr = json!({"resourceType": "QuestionnaireResponse", "questionnaire": "http://example.org/Questionnaire/phq9|1.0"});
    assert!(m("QuestionnaireResponse", &[("questionnaire", "http://example.org/Questionnaire/phq9")], &qr));
    assert!(m("QuestionnaireResponse", &[("questionnaire", "http://example.org/Questionnaire/phq9|1.0")], &qr));
}

// ------------------------------------------------------------ unsupported / unknown / limits

#[test]
fn unsupported_features_are_errors() {
    let u = |k: &str| QueryError::UnsupportedParam { param: k.into() };
    assert_eq!(err("Observation", &[("subject.name", "x")]), u("subject.name"));
    assert_eq!(err("Observation", &[("subject:Patient.name", "x")]), u("subject:Patient.name"));
    assert_eq!(err("Patient", &[("_has:Observation:patient:code", "x")]), u("_has:Observation:patient:code"));
    assert_eq!(err("Observation", &[("code-value-quantity", "x$1")]), u("code-value-quantity"));
    assert_eq!(err("Location", &[("near", "1|2")]), u("near"));
    assert_eq!(err("Patient", &[("_text", "x")]), u("_text"));
    assert_eq!(err("Patient", &[("_content", "x")]), u("_content"));
    assert_eq!(err("Nope", &[]), QueryError::UnknownResourceType);
    assert_eq!(err("Observation", &[("_count", "x")]), QueryError::BadValue { param: "_count".into() });
    assert_eq!(err("Observation", &[("_count", "-1")]), QueryError::BadValue { param: "_count".into() });
    assert_eq!(err("Observation", &[("_count", "1"), ("_count", "2")]), QueryError::BadValue { param: "_count".into() });
    assert_eq!(err("Observation", &[("_summary", "maybe")]), QueryError::BadValue { param: "_summary".into() });
    assert_eq!(err("Observation", &[("_count:x", "1")]), QueryError::UnsupportedModifier { param: "_count:x".into() });
    assert_eq!(err("Observation", &[("_sort", "code")]), QueryError::UnsupportedSort { param: "code".into() });
    assert_eq!(err("Observation", &[("_sort", "-nope")]), QueryError::UnsupportedSort { param: "_sort".into() });
    assert_eq!(err("Observation", &[("_sort", "date,")]), QueryError::BadValue { param: "_sort".into() });
}

#[test]
fn unknown_params_are_reported_not_fatal() {
    let query = q("Observation", &[("foo", "1"), ("bar:baz", "2"), ("x.y", "3"), ("code", "1")]);
    assert_eq!(query.unknown_params(), ["foo", "bar:baz", "x.y"]);
    assert!(query.has_criteria());
}

#[test]
fn complexity_limits() {
    let many: Vec<(String, String)> = (0..51).map(|i| ("code".to_string(), i.to_string())).collect();
    assert_eq!(Query::parse(Registry::r4(), "Observation", &many).unwrap_err(), QueryError::TooComplex);
    let fifty: Vec<(String, String)> = (0..50).map(|i| ("code".to_string(), i.to_string())).collect();
    assert!(Query::parse(Registry::r4(), "Observation", &fifty).is_ok());
    let ors = (0..101).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    assert_eq!(err("Observation", &[("code", &ors)]), QueryError::TooComplex);
    let ors = (0..100).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    assert!(Query::parse(Registry::r4(), "Observation", &pairs(&[("code", &ors)])).is_ok());
    let half = (0..60).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    assert_eq!(err("Observation", &[("code", &half), ("category", &half)]), QueryError::TooComplex);
}

// ------------------------------------------------------------ result params, sort, canonical

#[test]
fn result_params() {
    let query = q(
        "Observation",
        &[("_count", "20"), ("_sort", "-date,_id"), ("_summary", "count"), ("_total", "accurate"), ("_elements", "id, code,,status"), ("_format", "json"), ("_pretty", "true")],
    );
    assert_eq!(query.count(), Some(20));
    let r = query.result_params();
    assert_eq!(r.summary, Some(Summary::Count));
    assert_eq!(r.total, Some(TotalMode::Accurate));
    assert_eq!(r.elements, ["id", "code", "status"]);
    assert_eq!(r.format.as_deref(), Some("json"));
    assert_eq!(r.pretty, Some(true));
    assert_eq!(query.sort().len(), 2);
    assert!(query.sort()[0].descending && query.sort()[0].param == "date");
    assert!(!query.sort()[1].descending && query.sort()[1].param == "_id");
    assert!(!query.has_criteria());
    assert!(query.matches(&json!({"resourceType": "Observation"})));
    assert!(!query.matches(&json!({"resourceType": "Patient"})));
}

#[test]
fn sorting() {
    let mk = |id: &str, d: Option<&str>| {
        let mut o = json!({"resourceType": "Observation", "id": id});
        if let Some(d) = d {
            o["effectiveDateTime"] = json!(d);
        }
        o
    };
    let items = vec![mk("b", Some("2021-01-02")), mk("a", None), mk("c", Some("2021-01-01")), mk("d", Some("2021-01-02")), mk("e", Some("2020"))];
    let ids = |v: &[Value]| v.iter().map(|x| x["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>();

    let asc = q("Observation", &[("_sort", "date")]);
    let mut v = items.clone();
    v.sort_by(|a, b| asc.compare(a, b));
    assert_eq!(ids(&v), ["e", "c", "b", "d", "a"]);
    let mut v2 = items.clone();
    asc.sort_resources(&mut v2, |x| x);
    assert_eq!(ids(&v2), ids(&v));

    let desc = q("Observation", &[("_sort", "-date")]);
    let mut v = items.clone();
    v.sort_by(|a, b| desc.compare(a, b));
    assert_eq!(ids(&v), ["b", "d", "c", "e", "a"]);
    let mut v2 = items.clone();
    desc.sort_resources(&mut v2, |x| x);
    assert_eq!(ids(&v2), ids(&v));

    let by_id = q("Observation", &[("_sort", "-_id")]);
    let mut v = items.clone();
    v.sort_by(|a, b| by_id.compare(a, b));
    assert_eq!(ids(&v), ["e", "d", "c", "b", "a"]);

    let none = q("Observation", &[]);
    assert_eq!(none.compare(&items[0], &items[1]), Ordering::Greater);

    let lu = q("Patient", &[("_sort", "-_lastUpdated")]);
    let p1 = json!({"resourceType": "Patient", "id": "1", "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}});
    let p2 = json!({"resourceType": "Patient", "id": "2", "meta": {"lastUpdated": "2024-01-02T00:00:00Z"}});
    assert_eq!(lu.compare(&p2, &p1), Ordering::Less);
}

#[test]
fn canonical_is_order_independent() {
    let a = q("Observation", &[("code", "1,2"), ("date", "ge2021"), ("_count", "5"), ("x", "y")]);
    let b = q("Observation", &[("_count", "5"), ("x", "y"), ("date", "ge2021"), ("code", "1,2")]);
    assert_eq!(a.canonical(), b.canonical());
    let c = q("Observation", &[("code", "1"), ("code", "2"), ("date", "ge2021"), ("_count", "5")]);
    assert_ne!(a.canonical(), c.canonical());
    let d = q("Patient", &[("code", "1,2"), ("date", "ge2021"), ("_count", "5")]);
    assert_ne!(a.canonical(), d.canonical());
    // Separators inside values cannot forge other pairs.
    let e = q("Observation", &[("code", "1&date=2021")]);
    let f = q("Observation", &[("code", "1"), ("date", "2021")]);
    assert_ne!(e.canonical(), f.canonical());
    assert!(a.canonical().starts_with("Observation?"));
}

// ------------------------------------------------------------ pinning, identity

#[test]
fn pinned_patient() {
    let pin = |ty: &str, p: &[(&str, &str)]| q(ty, p).pinned_patient().map(str::to_owned);
    assert_eq!(pin("Observation", &[("patient", "123")]), Some("123".into()));
    assert_eq!(pin("Observation", &[("patient", "Patient/123")]), Some("123".into()));
    assert_eq!(pin("Observation", &[("subject", "Patient/123")]), Some("123".into()));
    assert_eq!(pin("Observation", &[("subject:Patient", "123")]), Some("123".into()));
    assert_eq!(pin("Observation", &[("subject", "https://x/fhir/Patient/123")]), Some("123".into()));
    assert_eq!(pin("Observation", &[("subject", "Patient/123/_history/4")]), Some("123".into()));
    assert_eq!(pin("Observation", &[("performer", "Patient/9"), ("code", "x")]), Some("9".into()));
    // Ambiguous or not a patient.
    assert_eq!(pin("Observation", &[("subject", "123")]), None);
    assert_eq!(pin("Observation", &[("subject", "Group/1")]), None);
    assert_eq!(pin("Observation", &[("patient", "1,2")]), None);
    assert_eq!(pin("Observation", &[("patient", "1"), ("patient", "1")]), None);
    assert_eq!(pin("Observation", &[("patient:missing", "false")]), None);
    assert_eq!(pin("Observation", &[("patient:identifier", "urn:x|1")]), None);
    assert_eq!(pin("Observation", &[("encounter", "Patient/1")]), None);
    assert_eq!(pin("Observation", &[("code", "1")]), None);
    assert_eq!(pin("Organization", &[("_id", "1")]), None);
    // Other types.
    assert_eq!(pin("Coverage", &[("beneficiary", "p")]), Some("p".into()));
    assert_eq!(pin("Encounter", &[("patient", "e1")]), Some("e1".into()));
    assert_eq!(pin("Claim", &[("patient", "c1")]), Some("c1".into()));
    // Patient by _id.
    assert_eq!(pin("Patient", &[("_id", "p1")]), Some("p1".into()));
    assert_eq!(pin("Patient", &[("_id", "p1,p2")]), None);
    assert_eq!(pin("Patient", &[("_id:not", "p1")]), None);
    assert_eq!(pin("Patient", &[("link", "Patient/p2")]), None);
}

#[test]
fn identity() {
    let id = |p: &[(&str, &str)]| q("Patient", p).identity();
    assert_eq!(
        id(&[("identifier", "https://fhir.kemkes.go.id/id/nik|3201234567890123")]),
        Some(IdentityQuery::Identifier { system: "https://fhir.kemkes.go.id/id/nik".into(), value: "3201234567890123".into() })
    );
    assert_eq!(id(&[("identifier", "3201234567890123")]), None);
    assert_eq!(id(&[("identifier", "urn:x|")]), None);
    assert_eq!(id(&[("identifier", "|v")]), None);
    assert_eq!(id(&[("identifier", "urn:x|1,urn:x|2")]), None);
    assert_eq!(id(&[("phone", "+62 812")]), Some(IdentityQuery::Phone("+62 812".into())));
    assert_eq!(id(&[("telecom", "0812")]), Some(IdentityQuery::Phone("0812".into())));
    assert_eq!(id(&[("telecom", "phone|0812")]), Some(IdentityQuery::Phone("0812".into())));
    assert_eq!(id(&[("telecom", "email|a@b")]), None);
    assert_eq!(
        id(&[("name", "Siti Aminah"), ("birthdate", "1990-01-02")]),
        Some(IdentityQuery::NameBirthDate { name: "Siti Aminah".into(), birth_date: "1990-01-02".into(), gender: None })
    );
    assert_eq!(
        id(&[("gender", "female"), ("birthdate", "eq1990-01-02"), ("name", "Siti")]),
        Some(IdentityQuery::NameBirthDate { name: "Siti".into(), birth_date: "1990-01-02".into(), gender: Some("female".into()) })
    );
    assert_eq!(id(&[("name", "Siti"), ("birthdate", "1990-01")]), None);
    assert_eq!(id(&[("name", "Siti"), ("birthdate", "ge1990-01-02")]), None);
    assert_eq!(id(&[("name:contains", "Siti"), ("birthdate", "1990-01-02")]), None);
    assert_eq!(id(&[("name", "Siti")]), None);
    assert_eq!(id(&[("birthdate", "1990-01-02")]), None);
    assert!(q("Observation", &[("identifier", "a|b")]).identity().is_none());
    // Debug never shows the values.
    let dbg = format!("{:?}", id(&[("identifier", "urn:x|SECRET123")]).unwrap());
    assert!(!dbg.contains("SECRET123"), "{dbg}");
    let dbg = format!("{:?}", q("Patient", &[("name", "SECRETNAME")]));
    assert!(!dbg.contains("SECRETNAME"), "{dbg}");
}

#[test]
fn search_reads_names_the_elements_parameters_can_read() {
    let r = Registry::r4();
    for k in ["resourceType", "id", "meta", "code", "subject", "status", "valueQuantity", "valueCodeableConcept", "effectivePeriod", "component", "category"] {
        assert!(r.search_reads("Observation", k), "Observation.{k}");
    }
    for k in ["note", "text", "referenceRange", "valueQuantityX", "statusReason"] {
        assert!(!r.search_reads("Observation", k), "Observation.{k} is read by no parameter");
    }
    assert!(r.search_reads("Patient", "birthDate") && r.search_reads("Patient", "deceasedBoolean") && !r.search_reads("Patient", "photo"));
    // What an expression reads of its context: members, choice variants, and the whole item
    // when the expression yields it or looks at its type.
    let reads = |src: &str| {
        let n = fhirpath::compile(src).unwrap().specialize("Observation", true);
        let mut s = std::collections::BTreeSet::new();
        n.context_members(&mut s).then_some(s.into_iter().collect::<Vec<_>>())
    };
    assert_eq!(reads("Observation.value.as(Quantity)"), Some(vec!["value".to_string()]));
    assert_eq!(reads("Observation.component.where(code.exists()).value"), Some(vec!["component".to_string()]));
    assert_eq!(reads("Observation.subject.where(resolve() is Patient) | Observation.focus"), Some(vec!["focus".to_string(), "subject".to_string()]));
    assert_eq!(reads("Observation.where(status = 'final').code"), Some(vec!["code".to_string(), "status".to_string()]));
    assert_eq!(reads("Observation"), None);
    assert_eq!(reads("Observation.is(Observation)"), None);
}

// ------------------------------------------------------------ _include / _revinclude

#[test]
fn includes_are_parsed_and_checked_against_the_definitions() {
    let inc = |source: &str, param: Option<&str>, target: Option<&str>, iterate: bool| Include {
        source: source.into(),
        param: param.map(String::from),
        target: target.map(String::from),
        iterate,
    };
    let query = q(
        "Observation",
        &[
            ("_include", "Observation:subject:Patient"),
            ("_include", "Observation:performer"),
            ("_include:iterate", "Patient:general-practitioner"),
            ("_revinclude", "Provenance:target"),
            ("_include", "Observation:subject:Patient"),
        ],
    );
    let (i, r) = query.includes();
    assert_eq!(
        i,
        [inc("Observation", Some("subject"), Some("Patient"), false), inc("Observation", Some("performer"), None, false), inc("Patient", Some("general-practitioner"), None, true)]
    );
    assert_eq!(r, [inc("Provenance", Some("target"), None, false)]);
    assert!(!query.has_criteria(), "includes select nothing");
    assert_eq!(q("Encounter", &[("_include", "Encounter:*")]).includes().0, [inc("Encounter", None, None, false)]);
    assert_eq!(q("Patient", &[("_revinclude:recurse", "Observation:subject")]).includes().1, [inc("Observation", Some("subject"), None, true)]);

    let bad = |k: &str| QueryError::BadValue { param: k.into() };
    // Not the searched type, not a reference parameter, a target it cannot point at, a
    // revinclude that cannot point at the searched type, garbage.
    assert_eq!(err("Observation", &[("_include", "Patient:general-practitioner")]), bad("_include"));
    assert_eq!(err("Observation", &[("_include", "Observation:code")]), bad("_include"));
    assert_eq!(err("Observation", &[("_include", "Observation:subject:Medication")]), bad("_include"));
    assert_eq!(err("Observation", &[("_include", "Observation:*:Patient")]), bad("_include"));
    assert_eq!(err("Practitioner", &[("_revinclude", "Observation:subject")]), bad("_revinclude"));
    assert_eq!(err("Observation", &[("_include", "Observation")]), bad("_include"));
    assert_eq!(err("Observation", &[("_include", "Nope:subject")]), bad("_include"));
    assert_eq!(err("Observation", &[("_include", "Observation:subject:Patient:x")]), bad("_include"));
    assert_eq!(err("Observation", &[("_include:deep", "Observation:subject")]), QueryError::UnsupportedModifier { param: "_include:deep".into() });
    let many: Vec<(String, String)> = ["subject", "performer", "encounter", "based-on", "derived-from", "has-member", "part-of", "specimen", "device", "focus"]
        .iter()
        .flat_map(|p| {
            [("_include".to_string(), format!("Observation:{p}")), ("_revinclude".to_string(), "Provenance:target:Observation".to_string())]
                .into_iter()
                .chain([("_include:iterate".to_string(), format!("Observation:{p}"))])
        })
        .collect();
    assert_eq!(Query::parse(Registry::r4(), "Observation", &many).expect_err("too many"), QueryError::TooComplex);
}

#[test]
fn references_are_the_local_literal_ones() {
    let o = json!({
        "resourceType": "Observation", "id": "o", "status": "final",
        "subject": {"reference": "Patient/p1"},
        "performer": [{"reference": "Practitioner/d1/_history/3"}, {"reference": "https://other.example/fhir/Practitioner/d2"}, {"reference": "#c1"}, {"reference": "urn:uuid:9b5c"}, {"display": "Dr. X"}],
        "encounter": {"reference": "Encounter/e1"},
        "hasMember": [{"reference": "Observation/o2"}, {"reference": "Observation/o2"}]
    });
    let r = Registry::r4();
    let refs = |code: Option<&str>| r.references("Observation", code, &o);
    let pair = |t: &str, i: &str| (t.to_string(), i.to_string());
    assert_eq!(refs(Some("subject")), [pair("Patient", "p1")]);
    assert_eq!(refs(Some("performer")), [pair("Practitioner", "d1")]);
    assert_eq!(refs(Some("code")), Vec::<(String, String)>::new());
    let all = refs(None);
    for want in [pair("Patient", "p1"), pair("Practitioner", "d1"), pair("Encounter", "e1"), pair("Observation", "o2")] {
        assert!(all.contains(&want), "{want:?} in {all:?}");
    }
    assert_eq!(all.iter().filter(|p| **p == pair("Observation", "o2")).count(), 1);
}
