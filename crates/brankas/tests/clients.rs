//! The client registry through its public interfaces: the `/admin/clients` API, the
//! `brankas clients` CLI, and the token endpoint's two ways of authenticating a client
//! (secret, and SMART Backend Services `private_key_jwt`).

mod common;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::{Instance, Server};
use serde_json::{Value, json};

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn admin_call(s: &Server, token: &str, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut r = s.http.request(method, format!("{}{path}", s.root)).bearer_auth(token);
    if let Some(b) = body {
        r = r.header("content-type", "application/json").body(serde_json::to_vec(b).unwrap());
    }
    let r = r.send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text})))
}

fn get(s: &Server, token: &str, path: &str) -> u16 {
    s.http.get(s.url(path)).bearer_auth(token).send().unwrap().status().as_u16()
}

fn token_status(s: &Server, id: &str, secret: &str) -> u16 {
    s.http.post(format!("{}/auth/token", s.root)).basic_auth(id, Some(secret)).form(&[("grant_type", "client_credentials")]).send().unwrap().status().as_u16()
}

fn is_outcome(v: &Value) -> bool {
    v["resourceType"] == "OperationOutcome"
}

#[test]
fn admin_api_registers_clients_and_status_changes_apply_to_the_next_request() {
    use reqwest::Method as M;
    let inst = Instance::init();
    let s = inst.serve();
    let admin = s.token_for(&inst.admin_id, &inst.admin_secret);

    // Only admins (and, read-only plus suspend/reinstate, security officers) reach /admin.
    let (st, v) = admin_call(&s, &s.token, M::GET, "/admin/clients", None);
    assert_eq!(st, 403, "a facility system is not an administrator: {v}");
    assert!(is_outcome(&v) && v.to_string().contains("admin"), "{v}");
    let r = s.http.get(format!("{}/admin/clients", s.root)).send().unwrap();
    assert_eq!(r.status(), 401, "no token");

    // Create a clinician: 202 pending approval, the secret once, a Location.
    let spec = json!({"name": "Klinik Sehat EMR (dr. Ani)", "role": "clinician", "organization": "Organization/klinik-sehat",
                      "practitioner": "Practitioner/dr-ani", "scopes": "user/Patient.rs user/Observation.rs"});
    let r = s.http.post(format!("{}/admin/clients", s.root)).bearer_auth(&admin).json(&spec).send().unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers().get("location").unwrap().to_str().unwrap().to_string();
    let created: Value = r.json().unwrap();
    let (cid, secret) = (created["client_id"].as_str().unwrap().to_string(), created["client_secret"].as_str().unwrap().to_string());
    assert_eq!(loc, format!("/admin/clients/{cid}"));
    assert_eq!((created["client"]["role"].as_str(), created["status"].as_str()), (Some("clinician"), Some("pending_approval")));
    assert!(!created.to_string().contains("secret_sha256"), "{created}");
    let so = s.token_for(&inst.officer_id, &inst.officer_secret);
    assert_eq!(admin_call(&s, &so, M::POST, &format!("{loc}/approve"), None).0, 200);

    // Shown and listed without any secret material.
    let (st, shown) = admin_call(&s, &admin, M::GET, &loc, None);
    assert_eq!(st, 200);
    assert_eq!(shown["practitioner"], "Practitioner/dr-ani");
    assert!(shown.get("client_secret").is_none() && shown.get("secret_sha256").is_none(), "{shown}");
    let (st, list) = admin_call(&s, &admin, M::GET, "/admin/clients", None);
    assert_eq!(st, 200);
    let ids: Vec<&str> = list["clients"].as_array().unwrap().iter().map(|c| c["client_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&cid.as_str()) && ids.contains(&inst.admin_id.as_str()) && ids.contains(&inst.client_id.as_str()), "{ids:?}");
    assert!(!list.to_string().contains("secret"), "no secret or its hash in the list");
    let (st, _) = admin_call(&s, &admin, M::GET, "/admin/clients/c-doesnotexist", None);
    assert_eq!(st, 404);

    // Registrations that make no sense are refused with the reason, nothing stored.
    let before = list["clients"].as_array().unwrap().len();
    for (bad, want) in [
        (json!({"name": "x", "role": "admin", "scopes": "system/*.cruds"}), 422),
        (json!({"name": "x", "role": "admin", "scopes": "system/Patient.r"}), 422),
        (json!({"name": "x", "role": "patient", "scopes": "patient/*.rs"}), 422),
        (json!({"name": "x", "role": "facility-system", "scopes": "system/*.rs"}), 422),
        (json!({"name": "x", "role": "researcher", "scopes": "system/Observation.rs"}), 422),
        (json!({"name": "x", "role": "facility-system", "organization": "Organization/a b", "scopes": "system/*.rs"}), 422),
        (json!({"name": "x", "role": "facility-system", "organization": "Organization/a", "scopes": "system/Observation.xyz"}), 422),
        (json!({"name": "x", "role": "superuser"}), 400),
        (json!({"name": "x", "role": "admin", "scope": "typo"}), 400),
        (json!(["not", "an", "object"]), 400),
    ] {
        let (st, v) = admin_call(&s, &admin, M::POST, "/admin/clients", Some(&bad));
        assert_eq!(st, want, "{bad}: {v}");
        assert!(is_outcome(&v), "{v}");
    }
    let r = s.http.post(format!("{}/admin/clients", s.root)).bearer_auth(&admin).header("content-type", "application/json").body("{\"name\": ").send().unwrap();
    assert_eq!(r.status(), 400, "malformed JSON");
    let r = s.http.post(format!("{}/admin/clients", s.root)).bearer_auth(&admin).body(vec![b' '; 100_000]).send().unwrap();
    assert_eq!(r.status(), 413, "oversized body");
    let (_, list) = admin_call(&s, &admin, M::GET, "/admin/clients", None);
    assert_eq!(list["clients"].as_array().unwrap().len(), before, "refused registrations stored nothing");

    // The new client works; suspension stops its unexpired token on the very next request.
    let t = s.token_for(&cid, &secret);
    assert_eq!(get(&s, &t, "Patient?identifier=urn:x|1"), 200);
    let (st, v) = admin_call(&s, &admin, M::POST, &format!("{loc}/suspend"), None);
    assert_eq!((st, v["status"].as_str()), (200, Some("suspended")), "{v}");
    assert_eq!(get(&s, &t, "Patient?identifier=urn:x|1"), 401, "suspended: the old token is refused");
    assert_eq!(token_status(&s, &cid, &secret), 401, "suspended: no new token");
    let (st, _) = admin_call(&s, &admin, M::POST, &format!("{loc}/reinstate"), None);
    assert_eq!(st, 202, "reinstatement awaits a security officer");
    assert_eq!(get(&s, &t, "Patient?identifier=urn:x|1"), 401, "still suspended");
    assert_eq!(admin_call(&s, &so, M::POST, &format!("{loc}/approve"), None).0, 200);
    assert_eq!(get(&s, &t, "Patient?identifier=urn:x|1"), 200, "reinstated");

    // Narrowing the scopes narrows the token already issued.
    let (st, v) = admin_call(&s, &admin, M::PATCH, &loc, Some(&json!({"scopes": "user/Patient.r"})));
    assert_eq!((st, v["scopes"].as_str()), (200, Some("user/Patient.r")), "{v}");
    assert_eq!(get(&s, &t, "Patient?identifier=urn:x|1"), 401, "the token asked for more than is now granted");
    let (st, _) = admin_call(&s, &admin, M::PATCH, &loc, Some(&json!({"practitioner": null})));
    assert_eq!(st, 422, "a clinician cannot lose its practitioner");

    // A security officer reads the registry and may suspend and reinstate, nothing more.
    let officer = inst.register(&["--name", "CSIRT", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    let ot = s.token_for(officer["client_id"].as_str().unwrap(), officer["client_secret"].as_str().unwrap());
    assert_eq!(admin_call(&s, &ot, M::GET, "/admin/clients", None).0, 200);
    assert_eq!(admin_call(&s, &ot, M::POST, &format!("{loc}/suspend"), None).0, 200);
    assert_eq!(admin_call(&s, &ot, M::POST, &format!("{loc}/reinstate"), None).0, 202);
    assert_eq!(admin_call(&s, &ot, M::POST, &format!("{loc}/approve"), None).0, 403, "not its own request");
    assert_eq!(admin_call(&s, &so, M::POST, &format!("{loc}/approve"), None).0, 200);
    assert_eq!(admin_call(&s, &ot, M::POST, &format!("{loc}/revoke"), None).0, 403);
    assert_eq!(admin_call(&s, &ot, M::POST, "/admin/clients", Some(&spec)).0, 403);
    assert_eq!(admin_call(&s, &ot, M::PATCH, &loc, Some(&json!({"name": "y"}))).0, 403);
    assert_eq!(get(&s, &ot, "Patient?identifier=urn:x|1"), 403, "an officer reads no clinical data");

    // The administrator reaches no patient data, and cannot lock itself out.
    assert_eq!(get(&s, &admin, "Patient?identifier=urn:x|1"), 403);
    assert_eq!(get(&s, &admin, "Observation/x"), 403);
    assert_eq!(admin_call(&s, &admin, M::POST, &format!("/admin/clients/{}/suspend", inst.admin_id), None).0, 409);

    // Revocation is final.
    let (st, v) = admin_call(&s, &admin, M::POST, &format!("{loc}/revoke"), None);
    assert_eq!((st, v["status"].as_str()), (200, Some("revoked")));
    assert_eq!(get(&s, &t, "Patient?identifier=urn:x|1"), 401);
    assert_eq!(admin_call(&s, &admin, M::POST, &format!("{loc}/reinstate"), None).0, 409);
    assert_eq!(admin_call(&s, &admin, M::PATCH, &loc, Some(&json!({"name": "back"}))).0, 409);
}

#[test]
fn cli_manages_the_same_registry() {
    let inst = Instance::init();
    let out = inst.cli(&["clients", "create", "--name", "RSUD Bekasi SIMRS", "--role", "facility-system", "--organization", "Organization/rsud-bekasi", "--scopes", "system/*.rs"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = c["client_id"].as_str().unwrap();
    assert!(c["client_secret"].as_str().unwrap().len() >= 40);
    assert_eq!(c["status"], "pending_approval", "the operator's shell alone registers no facility");
    inst.approve(id);
    let out = inst.cli(&["clients", "suspend", id]);
    assert!(out.status.success());
    let shown: Value = serde_json::from_slice(&inst.cli(&["clients", "show", id]).stdout).unwrap();
    assert_eq!(shown["status"], "suspended");
    assert_eq!(shown["organization"], "Organization/rsud-bekasi");
    let listed = String::from_utf8(inst.cli(&["clients", "list"]).stdout).unwrap();
    assert!(listed.contains(id) && !listed.contains("secret"), "{listed}");
    let out = inst.cli(&["clients", "create", "--name", "x", "--role", "admin", "--scopes", "system/*.cruds"]);
    assert!(!out.status.success(), "an admin with patient scopes is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("directory types only"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = inst.cli(&["clients", "revoke", id]);
    assert!(out.status.success());
    assert!(!inst.cli(&["clients", "reinstate", id]).status.success(), "revocation is final");
}

struct Signer {
    pair: EcdsaKeyPair,
}

impl Signer {
    fn new() -> Self {
        Self { pair: EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap() }
    }
    fn jwks(&self) -> Value {
        let p = self.pair.public_key().as_ref();
        json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": "his-2026", "use": "sig", "alg": "ES384", "x": B64URL.encode(&p[1..49]), "y": B64URL.encode(&p[49..97])}]})
    }
    fn assertion(&self, claims: &Value) -> String {
        let input = format!("{}.{}", B64URL.encode(json!({"alg": "ES384", "typ": "JWT", "kid": "his-2026"}).to_string()), B64URL.encode(claims.to_string()));
        let sig = self.pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", B64URL.encode(sig.as_ref()))
    }
}

#[test]
fn smart_backend_services_private_key_jwt() {
    let inst = Instance::init();
    let s = inst.serve();
    let admin = s.token_for(&inst.admin_id, &inst.admin_secret);
    let key = Signer::new();
    let spec = json!({"name": "RS Harapan SIMRS", "role": "facility-system", "organization": "Organization/rs-harapan", "scopes": "system/Patient.rs", "jwks": key.jwks()});
    let (st, c) = admin_call(&s, &admin, reqwest::Method::POST, "/admin/clients", Some(&spec));
    assert_eq!(st, 202, "{c}");
    let cid = c["client_id"].as_str().unwrap().to_string();
    inst.approve(&cid);

    let discovery: Value = s.http.get(format!("{}/.well-known/smart-configuration", s.base)).send().unwrap().json().unwrap();
    assert!(discovery["token_endpoint_auth_methods_supported"].as_array().unwrap().contains(&json!("private_key_jwt")));
    let endpoint = discovery["token_endpoint"].as_str().unwrap().to_string();
    assert_eq!(endpoint, format!("{}/auth/token", s.root));

    let request = |assertion: &str| {
        let r = s
            .http
            .post(&endpoint)
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "system/Patient.rs"),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", assertion),
            ])
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let claims = |jti: &str, exp: u64, aud: &str| json!({"iss": cid, "sub": cid, "aud": aud, "exp": exp, "jti": jti});
    let (st, v) = request(&key.assertion(&claims("a-1", now() + 240, &endpoint)));
    assert_eq!(st, 200, "{v}");
    let token = v["access_token"].as_str().unwrap();
    assert!(v["expires_in"].as_u64().unwrap() <= 300);
    assert_eq!(get(&s, token, "Patient?identifier=urn:x|1"), 200);

    // Replay of the same assertion, even before it expires: refused.
    let (st, v) = request(&key.assertion(&claims("a-1", now() + 240, &endpoint)));
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_client")), "{v}");
    assert!(v["error_description"].as_str().unwrap().contains("replay"), "{v}");
    // Expired, too long-lived, meant for another server, signed by another key: refused.
    for (what, assertion) in [
        ("expired", key.assertion(&claims("a-2", now() - 5, &endpoint))),
        ("more than five minutes", key.assertion(&claims("a-3", now() + 900, &endpoint))),
        ("another audience", key.assertion(&claims("a-4", now() + 60, "https://other.example/auth/token"))),
        ("another key", Signer::new().assertion(&claims("a-5", now() + 60, &endpoint))),
        ("garbage", "a.b.c".to_string()),
    ] {
        let (st, v) = request(&assertion);
        assert_eq!(st, 401, "{what}: {v}");
    }
    let r = s.http.post(&endpoint).form(&[("grant_type", "client_credentials"), ("client_assertion_type", "urn:other"), ("client_assertion", "x")]).send().unwrap();
    assert_eq!(r.status(), 400, "wrong assertion type");
    // Suspension applies to assertion-based clients as well.
    assert_eq!(admin_call(&s, &admin, reqwest::Method::POST, &format!("/admin/clients/{cid}/suspend"), None).0, 200);
    assert_eq!(get(&s, token, "Patient?identifier=urn:x|1"), 401);
    let (st, _) = request(&key.assertion(&claims("a-6", now() + 60, &endpoint)));
    assert_eq!(st, 401);
}

#[test]
fn tokens_of_a_trusted_hospital_identity_provider() {
    let inst = Instance::init();
    let s = inst.serve();
    let idp = Signer::new();
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("idp-jwks.json");
    std::fs::write(&jwks_file, idp.jwks().to_string()).unwrap();
    let iss = "https://sso.rs-harapan.example/realms/staff";
    let c = inst.register(&[
        "--name",
        "RS Harapan SSO",
        "--role",
        "clinician",
        "--organization",
        "Organization/rs-harapan",
        "--scopes",
        "user/Patient.rs user/Observation.rs",
        "--issuer",
        iss,
        "--jwks",
        jwks_file.to_str().unwrap(),
    ]);
    let cid = c["client_id"].as_str().unwrap().to_string();
    // The clinic's own patient, so that the clinician has something to read.
    let (st, p) = {
        let r = s
            .http
            .post(s.url("Patient"))
            .bearer_auth(&s.token)
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organization/rs-harapan"}, "gender": "female"}).to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    assert_eq!(st, 201);
    let pid = p["id"].as_str().unwrap();

    let claims = |over: Value| {
        let mut c = json!({"iss": iss, "sub": "ani@rs-harapan", "aud": s.base, "iat": now(), "exp": now() + 240,
                           "scope": "user/Patient.rs", "fhirUser": "https://rs-harapan.example/fhir/Practitioner/dr-ani"});
        for (k, v) in over.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let token = idp.assertion(&claims(json!({})));
    assert_eq!(get(&s, &token, &format!("Patient/{pid}")), 200, "a valid token of the hospital's identity provider");
    assert_eq!(get(&s, &token, "Observation?patient=x"), 403, "its scope is user/Patient.rs only");
    for (what, bad) in [
        ("another audience", idp.assertion(&claims(json!({"aud": "https://other.example/fhir"})))),
        ("expired", idp.assertion(&claims(json!({"iat": now() - 400, "exp": now() - 100})))),
        ("lives longer than 300 s", idp.assertion(&claims(json!({"exp": now() + 290, "iat": now() - 100})))),
        ("more scope than registered", idp.assertion(&claims(json!({"scope": "user/Patient.rs user/Encounter.rs"})))),
        ("no fhirUser", idp.assertion(&claims(json!({"fhirUser": null})))),
        ("fhirUser not a practitioner", idp.assertion(&claims(json!({"fhirUser": "Patient/p-1"})))),
        ("an unknown issuer", idp.assertion(&claims(json!({"iss": "https://evil.example"})))),
        ("signed by another key", Signer::new().assertion(&claims(json!({})))),
    ] {
        assert_eq!(get(&s, &bad, &format!("Patient/{pid}")), 401, "{what}");
    }
    // Suspending the issuer's client cuts off every token it issued, on the next request.
    let admin = s.token_for(&inst.admin_id, &inst.admin_secret);
    assert_eq!(admin_call(&s, &admin, reqwest::Method::POST, &format!("/admin/clients/{cid}/suspend"), None).0, 200);
    assert_eq!(get(&s, &token, &format!("Patient/{pid}")), 401);
    // Registration rules: keys are required, and one client per issuer.
    let out = inst.cli(&[
        "clients",
        "create",
        "--name",
        "x",
        "--role",
        "clinician",
        "--organization",
        "Organization/a",
        "--scopes",
        "user/Patient.rs",
        "--issuer",
        "https://sso.example",
    ]);
    assert!(!out.status.success(), "an issuer without keys");
    let out = inst.cli(&[
        "clients",
        "create",
        "--name",
        "x",
        "--role",
        "clinician",
        "--organization",
        "Organization/rs-harapan",
        "--scopes",
        "user/Patient.rs",
        "--issuer",
        iss,
        "--jwks",
        jwks_file.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "a second client for the same issuer");
}
