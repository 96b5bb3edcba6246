//! Signed JSON Web Tokens from others: SMART Backend Services client assertions
//! (`private_key_jwt`) checked against the public keys a client registered.
//!
//! Only asymmetric algorithms, named by the key: ES384 and RS384 (the two SMART Backend
//! Services requires servers to support), plus ES256 and RS256 which identity providers
//! commonly use. The algorithm must match the key's type and curve, so a token cannot choose
//! a weaker check (`none`, HMAC with a public key as secret). Signatures are verified by
//! aws-lc-rs; nothing here is cryptography of our own.

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::Value;

use crate::AuthError;

/// Most keys one client may register (rotation needs two; a few more for overlap).
const MAX_KEYS: usize = 10;
/// Longest compact JWS accepted before parsing.
pub(crate) const MAX_JWT_LEN: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    Es256,
    Es384,
    Rs256,
    Rs384,
}

impl Alg {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
enum KeyMaterial {
    /// Uncompressed SEC1 point, and which curve.
    Ec {
        point: Vec<u8>,
        p384: bool,
    },
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

/// One verified-usable public key.
#[derive(Clone, Debug)]
pub struct Jwk {
    kid: Option<String>,
    key: KeyMaterial,
}

/// A parsed JWK Set.
#[derive(Clone, Debug, Default)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

fn b64_field(k: &Value, name: &str) -> Result<Vec<u8>, AuthError> {
    let s = k.get(name).and_then(Value::as_str).ok_or(AuthError::BadRegistration("a JWK lacks a required member"))?;
    B64.decode(s).map_err(|_| AuthError::BadRegistration("a JWK member is not base64url"))
}

impl Jwks {
    /// Parses `{"keys": [...]}`. Keys with `"use": "enc"` or private members are refused:
    /// a client registers public signing keys only.
    pub fn parse(v: &Value) -> Result<Self, AuthError> {
        let keys = v.get("keys").and_then(Value::as_array).ok_or(AuthError::BadRegistration("jwks must be a JWK Set: {\"keys\": [...]}"))?;
        if keys.is_empty() || keys.len() > MAX_KEYS {
            return Err(AuthError::BadRegistration("jwks must hold 1 to 10 keys"));
        }
        let mut out = Vec::new();
        for k in keys {
            if k.get("d").is_some() || k.get("p").is_some() {
                return Err(AuthError::BadRegistration("jwks must hold public keys only (a private key was sent)"));
            }
            if k.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
                return Err(AuthError::BadRegistration("jwks keys must be signing keys"));
            }
            let kid = match k.get("kid") {
                None => None,
                Some(Value::String(s)) if !s.is_empty() && s.len() <= 200 => Some(s.clone()),
                Some(_) => return Err(AuthError::BadRegistration("a JWK kid must be a short string")),
            };
            let key = match k.get("kty").and_then(Value::as_str) {
                Some("EC") => {
                    let (p384, len) = match k.get("crv").and_then(Value::as_str) {
                        Some("P-384") => (true, 48),
                        Some("P-256") => (false, 32),
                        _ => return Err(AuthError::BadRegistration("EC keys must be on P-384 or P-256")),
                    };
                    let (x, y) = (b64_field(k, "x")?, b64_field(k, "y")?);
                    if x.len() != len || y.len() != len {
                        return Err(AuthError::BadRegistration("EC key coordinates have the wrong length"));
                    }
                    let mut point = vec![4u8];
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    KeyMaterial::Ec { point, p384 }
                }
                Some("RSA") => {
                    let (n, e) = (b64_field(k, "n")?, b64_field(k, "e")?);
                    let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                    if !(2048..=8192).contains(&bits) {
                        return Err(AuthError::BadRegistration("RSA keys must be 2048 to 8192 bits"));
                    }
                    KeyMaterial::Rsa { n, e }
                }
                _ => return Err(AuthError::BadRegistration("JWK kty must be EC or RSA")),
            };
            out.push(Jwk { kid, key });
        }
        Ok(Self { keys: out })
    }

    /// Verifies a compact JWS signed by one of these keys and returns its claims. The header
    /// must name an accepted algorithm matching the key; with a `kid`, only that key is tried.
    pub fn verify(&self, jwt: &str) -> Result<Value, AuthError> {
        if jwt.len() > MAX_JWT_LEN {
            return Err(AuthError::InvalidClient);
        }
        let mut parts = jwt.split('.');
        let (Some(h), Some(b), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::InvalidClient);
        };
        let header: Value = serde_json::from_slice(&B64.decode(h).map_err(|_| AuthError::InvalidClient)?).map_err(|_| AuthError::InvalidClient)?;
        let alg = header.get("alg").and_then(Value::as_str).and_then(Alg::parse).ok_or(AuthError::InvalidClient)?;
        if header.get("crit").is_some() {
            return Err(AuthError::InvalidClient);
        }
        let kid = header.get("kid").and_then(Value::as_str);
        let sig = B64.decode(s).map_err(|_| AuthError::InvalidClient)?;
        let msg = &jwt.as_bytes()[..h.len() + 1 + b.len()];
        let ok = self.keys.iter().filter(|k| kid.is_none() || k.kid.as_deref() == kid).any(|k| match (&k.key, alg) {
            (KeyMaterial::Ec { point, p384: true }, Alg::Es384) => UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point).verify(msg, &sig).is_ok(),
            (KeyMaterial::Ec { point, p384: false }, Alg::Es256) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(msg, &sig).is_ok(),
            (KeyMaterial::Rsa { n, e }, Alg::Rs384) => RsaPublicKeyComponents { n, e }.verify(&signature::RSA_PKCS1_2048_8192_SHA384, msg, &sig).is_ok(),
            (KeyMaterial::Rsa { n, e }, Alg::Rs256) => RsaPublicKeyComponents { n, e }.verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, &sig).is_ok(),
            _ => false,
        });
        if !ok {
            return Err(AuthError::InvalidClient);
        }
        serde_json::from_slice(&B64.decode(b).map_err(|_| AuthError::InvalidClient)?).map_err(|_| AuthError::InvalidClient)
    }
}

#[cfg(test)]
pub(crate) mod testkeys {
    //! Key pairs for tests, generated by aws-lc-rs.
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use serde_json::{Value, json};

    pub struct Es384 {
        pair: EcdsaKeyPair,
        pub kid: String,
    }

    impl Es384 {
        pub fn generate(kid: &str) -> Self {
            let pair = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
            Self { pair, kid: kid.into() }
        }
        pub fn jwk(&self) -> Value {
            let p = self.pair.public_key().as_ref();
            json!({"kty": "EC", "crv": "P-384", "kid": self.kid, "use": "sig", "alg": "ES384",
                   "x": B64.encode(&p[1..49]), "y": B64.encode(&p[49..97])})
        }
        pub fn sign(&self, claims: &Value) -> String {
            let header = json!({"alg": "ES384", "typ": "JWT", "kid": self.kid});
            let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
            let sig = self.pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
            format!("{input}.{}", B64.encode(sig.as_ref()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkeys::Es384;
    use super::*;
    use serde_json::json;

    #[test]
    fn es384_signatures_verify_only_with_the_registered_key() {
        let k = Es384::generate("k1");
        let other = Es384::generate("k1");
        let jwks = Jwks::parse(&json!({"keys": [k.jwk()]})).unwrap();
        let claims = json!({"iss": "c-1", "sub": "c-1"});
        assert_eq!(jwks.verify(&k.sign(&claims)).unwrap(), claims);
        assert!(jwks.verify(&other.sign(&claims)).is_err(), "same kid, another key");
        // Tampered claims.
        let t = k.sign(&claims);
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = B64.encode(json!({"iss": "c-2", "sub": "c-2"}).to_string());
        parts[1] = &forged;
        assert!(jwks.verify(&parts.join(".")).is_err());
        // alg none, HS256, and an RS algorithm against an EC key are refused.
        for alg in ["none", "HS256", "RS384", "ES256"] {
            let h = B64.encode(json!({"alg": alg, "kid": "k1"}).to_string());
            let b = B64.encode(claims.to_string());
            let s = t.rsplit('.').next().unwrap();
            assert!(jwks.verify(&format!("{h}.{b}.{s}")).is_err(), "{alg}");
            assert!(jwks.verify(&format!("{h}.{b}.")).is_err(), "{alg} unsigned");
        }
        assert!(jwks.verify("a.b").is_err());
        assert!(jwks.verify(&"a".repeat(MAX_JWT_LEN + 1)).is_err());
    }

    #[test]
    fn registrations_with_private_or_odd_keys_are_refused() {
        let k = Es384::generate("k1");
        let mut private = k.jwk();
        private["d"] = json!("AAAA");
        assert!(Jwks::parse(&json!({"keys": [private]})).is_err());
        let mut enc = k.jwk();
        enc["use"] = json!("enc");
        assert!(Jwks::parse(&json!({"keys": [enc]})).is_err());
        let mut short = k.jwk();
        short["x"] = json!("AAAA");
        assert!(Jwks::parse(&json!({"keys": [short]})).is_err());
        assert!(Jwks::parse(&json!({"keys": []})).is_err());
        assert!(Jwks::parse(&json!([k.jwk()])).is_err());
        assert!(Jwks::parse(&json!({"keys": [{"kty": "oct", "k": "AAAA"}]})).is_err());
        let small_rsa = json!({"kty": "RSA", "n": B64.encode([0xffu8; 128]), "e": "AQAB"});
        assert!(Jwks::parse(&json!({"keys": [small_rsa]})).is_err(), "1024-bit RSA");
    }
}
