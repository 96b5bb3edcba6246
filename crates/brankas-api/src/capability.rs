//! The CapabilityStatement and SMART configuration: what the server really does.

use serde_json::{Value, json};

pub fn capability_statement(base: &str, cors: bool) -> Value {
    let registry = brankas_search::Registry::r4();
    let token_url = token_url(base);
    // `_revinclude` values by the type they can point at.
    let mut rev: std::collections::HashMap<&str, Vec<String>> = std::collections::HashMap::new();
    for t in registry.resource_types().iter().filter(|t| brankas_fhir::is_resource_type(t) && *t != "AuditEvent") {
        for p in registry.params_for(t).filter(|p| p.kind == brankas_search::ParamKind::Reference && p.is_supported()) {
            for target in &p.targets {
                rev.entry(target.as_str()).or_default().push(format!("{t}:{}", p.code));
            }
        }
    }
    let resources: Vec<Value> = registry
        .resource_types()
        .iter()
        .filter(|t| brankas_fhir::is_resource_type(t))
        .map(|t| {
            let in_compartment = registry.in_patient_compartment(t);
            // The audit log has its own search (see `audit::search`): these parameters, no includes.
            let audit = t == "AuditEvent";
            let mut params: Vec<Value> = registry
                .params_for(t)
                .filter(|p| p.is_supported())
                .filter(|p| !audit || crate::audit::SEARCH_PARAMS.contains(&p.code.as_str()))
                .map(|p| json!({"name": p.code, "type": kind_code(&p.kind)}))
                .collect();
            let mut include: Vec<String> =
                registry.params_for(t).filter(|p| !audit && p.kind == brankas_search::ParamKind::Reference && p.is_supported()).map(|p| format!("{t}:{}", p.code)).collect();
            if !include.is_empty() {
                include.push(format!("{t}:*"));
            }
            let mut revinclude = if audit { Vec::new() } else { rev.get(t.as_str()).cloned().unwrap_or_default() };
            revinclude.sort();
            params.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            let doc = if t == "AuditEvent" {
                "Written by the server's own audit log, never by clients; searched per patient (patient=), by agent or by date window."
            } else if t == "Subscription" {
                "Stored as a directory resource; no notifications are sent."
            } else if t == "Patient" {
                "Search only by exact identity: identifier=system|value, telecom/phone, or name+birthdate(+gender). No listing. Type history takes patient=<id> (one record)."
            } else if in_compartment {
                "Search requires one patient (patient= or subject=), or use Patient/[id]/[type]; type history requires patient=<id> (one record)."
            } else {
                "Directory resource: encrypted under the system key."
            };
            let codes: &[&str] =
                if t == "AuditEvent" { &["search-type"] } else { &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"] };
            let interactions: Vec<Value> = codes.iter().map(|c| json!({"code": c})).collect();
            let mut r = json!({
                "type": t,
                "documentation": doc,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "interaction": interactions,
                "searchParam": params,
            });
            // R4 allows no empty arrays.
            if !include.is_empty() {
                r["searchInclude"] = json!(include);
            }
            if !revinclude.is_empty() {
                r["searchRevInclude"] = json!(revinclude);
            }
            r
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-28",
        "kind": "instance",
        "software": {"name": "Brankas", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Brankas FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": cors,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": token_url}]
                }],
                "description": "OAuth2 client_credentials; bearer tokens of at most 300 seconds; SMART v2 system scopes."
            },
            "resource": resources,
            "interaction": [
                {"code": "transaction"},
                {"code": "batch"},
                {"code": "history-system", "documentation": "One patient's record at a time: patient=<id>, or the patient a patient's own client is bound to."}
            ],
            "operation": [
                {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
                {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"},
                {"name": "meta", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-meta"},
                {"name": "meta-add", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-meta-add"},
                {"name": "meta-delete", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-meta-delete"}
            ],
            "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"]
        }]
    })
}

fn kind_code(k: &brankas_search::ParamKind) -> &'static str {
    use brankas_search::ParamKind as K;
    match k {
        K::Number => "number",
        K::Date => "date",
        K::String => "string",
        K::Token => "token",
        K::Reference => "reference",
        K::Composite => "composite",
        K::Quantity => "quantity",
        K::Uri => "uri",
        K::Special => "special",
    }
}

pub fn token_url(base: &str) -> String {
    format!("{}/auth/token", base.trim_end_matches("/fhir"))
}

pub fn smart_configuration(base: &str) -> Value {
    json!({
        "issuer": base.trim_end_matches("/fhir"),
        "token_endpoint": token_url(base),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES384", "RS384", "ES256", "RS256"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write", "user/*.cruds", "user/*.rs", "patient/*.rs"],
        "capabilities": ["client-confidential-symmetric", "client-confidential-asymmetric", "permission-v2", "permission-v1"],
        "code_challenge_methods_supported": []
    })
}
