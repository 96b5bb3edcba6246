//! Deterministic normalisation for exact identity lookups.
//!
//! Both the writer (indexing a Patient) and the query side (matching a new
//! Patient or a search) call these functions, so they must give the same
//! output for the same input forever: no locale, no configuration, no data
//! tables beyond the small ones in this file. Changing any rule here changes
//! stored keys and needs a reindex.

use std::collections::HashSet;

use serde_json::Value;

use crate::validate::days_in_month;

/// A key under which a Patient can be found by exact match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityTerm {
    /// An `Identifier` with both `system` and `value` (each trimmed).
    Identifier {
        /// `Identifier.system`.
        system: String,
        /// `Identifier.value`, see [`normalize_identifier_value`].
        value: String,
    },
    /// A phone/SMS `ContactPoint.value`, see [`normalize_phone`].
    Phone(String),
    /// A name form (see [`normalize_name`]) together with a full birth date.
    NameBirthDate {
        /// Normalised name.
        name: String,
        /// `YYYY-MM-DD`.
        birth_date: String,
    },
}

/// Normalises a phone number to digits with the country code, no `+`.
///
/// Spaces, dashes, dots, slashes and parentheses are removed, as is a leading
/// `tel:`. Indonesian forms all map to `62...`: `+62 812-3456-7890`,
/// `0812 3456 7890`, `62812...` and the common `+62 (0)812...`. Other countries
/// keep their digits with the country code when written with `+` (or the
/// `00` international prefix); numbers without either and without a leading
/// `0` are kept as written. Returns `None` for letters or other symbols, a `+`
/// after digits, a country code starting with `0`, or fewer than 6 digits.
///
/// ```
/// use brankas_fhir::normalize_phone;
/// assert_eq!(normalize_phone("+62 812-3456-7890").as_deref(), Some("6281234567890"));
/// assert_eq!(normalize_phone("0812 3456 7890").as_deref(), Some("6281234567890"));
/// assert_eq!(normalize_phone("+1 (555) 123.4567").as_deref(), Some("15551234567"));
/// assert_eq!(normalize_phone("12345"), None);
/// ```
pub fn normalize_phone(s: &str) -> Option<String> {
    let s = s.trim();
    let s = match s.get(..4) {
        Some(p) if p.eq_ignore_ascii_case("tel:") => &s[4..],
        _ => s,
    };
    let mut plus = false;
    let mut digits = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if digits.is_empty() && !plus => plus = true,
            '-' | '.' | '(' | ')' | '/' => {}
            c if c.is_whitespace() => {}
            _ => return None,
        }
    }
    let mut out = if plus {
        if digits.starts_with('0') {
            return None;
        }
        digits
    } else if let Some(intl) = digits.strip_prefix("00") {
        if intl.starts_with('0') {
            return None;
        }
        intl.to_string()
    } else if let Some(national) = digits.strip_prefix('0') {
        // Indonesian trunk prefix: 0812... is +62 812...
        format!("62{national}")
    } else {
        digits
    };
    // "+62 (0)812..." keeps the trunk zero by mistake; Indonesian numbers
    // never start with 0 after the country code.
    if let Some(rest) = out.strip_prefix("62") {
        let trimmed = rest.trim_start_matches('0');
        if trimmed.len() != rest.len() {
            out = format!("62{trimmed}");
        }
    }
    (out.len() >= 6).then_some(out)
}

/// Normalises a personal name for matching.
///
/// Lowercases (Unicode), folds accented Latin letters to ASCII using a table
/// for Latin-1 Supplement and Latin Extended-A (`é`→`e`, `ß`→`ss`, `ø`→`o`,
/// `ł`→`l`, ...), drops combining marks, removes punctuation and symbols
/// (apostrophes and hyphens join: `O'Brien`→`obrien`), turns any whitespace
/// into single spaces and trims. Letters of other scripts are kept as
/// lowercased.
///
/// ```
/// assert_eq!(brankas_fhir::normalize_name("  Dr. José  O'Brien-Núñez "), "dr jose obriennunez");
/// ```
pub fn normalize_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if c.is_ascii_alphanumeric() {
            push_piece(&mut out, &mut pending_space, c.encode_utf8(&mut [0u8; 4]));
        } else if let Some(piece) = fold_latin(c) {
            push_piece(&mut out, &mut pending_space, piece);
        } else if c.is_alphanumeric() && !is_combining_mark(c) {
            push_piece(&mut out, &mut pending_space, c.encode_utf8(&mut [0u8; 4]));
        }
        // Everything else (punctuation, symbols, combining marks) is dropped.
    }
    out
}

/// Appends a kept piece, preceded by the single space owed to earlier whitespace.
fn push_piece(out: &mut String, pending_space: &mut bool, piece: &str) {
    if *pending_space {
        out.push(' ');
        *pending_space = false;
    }
    out.push_str(piece);
}

/// Normalises an identifier value: trim only, because identifiers are exact
/// (case and inner spacing can be significant).
///
/// ```
/// assert_eq!(brankas_fhir::normalize_identifier_value("  MRN-001 "), "MRN-001");
/// ```
pub fn normalize_identifier_value(s: &str) -> String {
    s.trim().to_string()
}

/// The identity terms of a Patient, deduplicated, in document order.
///
/// * every `identifier` with a non-empty `system` and `value`;
/// * every `telecom` with `system` `phone` or `sms` whose value normalises;
/// * for each `name`, when `birthDate` is a full valid `YYYY-MM-DD`: the
///   normalised `text`, the normalised given names followed by the family
///   name, and the normalised family name alone, each paired with the date.
///
/// ```
/// use brankas_fhir::{patient_identity_terms, IdentityTerm};
/// let p = serde_json::json!({"resourceType": "Patient", "birthDate": "1990-08-05",
///     "name": [{"given": ["Siti"], "family": "Aminah"}]});
/// let terms = patient_identity_terms(&p);
/// assert!(terms.contains(&IdentityTerm::NameBirthDate {
///     name: "siti aminah".into(), birth_date: "1990-08-05".into() }));
/// ```
pub fn patient_identity_terms(patient: &Value) -> Vec<IdentityTerm> {
    let mut terms = Vec::new();
    let arr = |name: &str| patient.get(name).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);

    for id in arr("identifier") {
        if let (Some(system), Some(value)) = (text(id, "system"), text(id, "value")) {
            let (system, value) = (system.trim(), normalize_identifier_value(value));
            if !system.is_empty() && !value.is_empty() {
                terms.push(IdentityTerm::Identifier { system: system.to_string(), value });
            }
        }
    }

    for cp in arr("telecom") {
        if matches!(text(cp, "system"), Some("phone" | "sms"))
            && let Some(phone) = text(cp, "value").and_then(normalize_phone)
        {
            terms.push(IdentityTerm::Phone(phone));
        }
    }

    if let Some(birth) = text(patient, "birthDate").filter(|b| is_full_date(b)) {
        for name in arr("name") {
            let mut forms = Vec::with_capacity(3);
            if let Some(t) = text(name, "text") {
                forms.push(normalize_name(t));
            }
            let family = text(name, "family");
            let mut full: Vec<&str> = name.get("given").and_then(Value::as_array).map(|g| g.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            full.extend(family);
            forms.push(normalize_name(&full.join(" ")));
            if let Some(f) = family {
                forms.push(normalize_name(f));
            }
            for form in forms.into_iter().filter(|f| !f.is_empty()) {
                terms.push(IdentityTerm::NameBirthDate { name: form, birth_date: birth.to_string() });
            }
        }
    }

    let mut seen = HashSet::with_capacity(terms.len());
    terms.retain(|t| seen.insert(t.clone()));
    terms
}

/// The string member `name` of `v`, if any.
fn text<'v>(v: &'v Value, name: &str) -> Option<&'v str> {
    v.get(name).and_then(Value::as_str)
}

/// `YYYY-MM-DD` naming a day that exists.
fn is_full_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let digits_ok = b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !digits_ok {
        return false;
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(0);
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    y > 0 && (1..=days_in_month(y, m)).contains(&d)
}

/// Combining diacritical marks (for input in decomposed form).
fn is_combining_mark(c: char) -> bool {
    matches!(c, '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}' | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}')
}

/// ASCII folding of lowercase Latin-1 Supplement and Latin Extended-A letters.
fn fold_latin(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => "g",
        'ĥ' | 'ħ' => "h",
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'ĳ' => "ij",
        'ĵ' => "j",
        'ķ' | 'ĸ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' | 'ŉ' | 'ŋ' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
        'œ' => "oe",
        'ŕ' | 'ŗ' | 'ř' => "r",
        'ś' | 'ŝ' | 'ş' | 'š' | 'ſ' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ŧ' => "t",
        'þ' => "th",
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'ŵ' => "w",
        'ý' | 'ÿ' | 'ŷ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn phones() {
        let n = |s: &str| normalize_phone(s);
        for s in ["+62 812-3456-7890", "0812 3456 7890", "62812-3456-7890", "+62 (0)812 3456 7890", "tel:+6281234567890", "0062 812 3456 7890", "(0812) 3456.7890"] {
            assert_eq!(n(s).as_deref(), Some("6281234567890"), "{s}");
        }
        assert_eq!(n("+44 20 7946 0958").as_deref(), Some("442079460958"));
        assert_eq!(n("555-123-4567").as_deref(), Some("5551234567"));
        assert_eq!(n("021 555 1234").as_deref(), Some("62215551234"));
        for bad in ["", "12345", "+0812345678", "0812 abc 999", "812+3456789", "++62812345678", "phone", "00 0812345678"] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(normalize_name("Budi  SANTOSO"), "budi santoso");
        assert_eq!(normalize_name("Ægir Þórsson"), "aegir thorsson");
        assert_eq!(normalize_name("Łukasz Straße"), "lukasz strasse");
        assert_eq!(normalize_name("Jose\u{301}"), "jose"); // decomposed accent
        assert_eq!(normalize_name("İbrahim"), "ibrahim");
        assert_eq!(normalize_name("Muh. Rizky, S.Kom."), "muh rizky skom");
        assert_eq!(normalize_name("  \t\n "), "");
        assert_eq!(normalize_name("李 小龍"), "李 小龍");
        assert_eq!(normalize_name("a\u{00A0}b"), "a b");
    }

    #[test]
    fn identifiers() {
        assert_eq!(normalize_identifier_value("\tA 1 "), "A 1");
    }

    #[test]
    fn identity_terms() {
        let p = json!({
            "resourceType": "Patient",
            "identifier": [
                {"system": "https://fhir.kemkes.go.id/id/nik", "value": " 3174054508900003 "},
                {"system": "https://fhir.kemkes.go.id/id/nik", "value": "3174054508900003"},
                {"value": "no-system"},
                {"system": "urn:x", "value": "  "}
            ],
            "telecom": [
                {"system": "phone", "value": "0812-3456-7890"},
                {"system": "sms", "value": "+62 812 3456 7890"},
                {"system": "email", "value": "a@b.c"},
                {"system": "phone", "value": "123"}
            ],
            "birthDate": "1990-08-05",
            "name": [
                {"text": "Siti Aminah", "given": ["Siti"], "family": "Aminah"},
                {"given": ["Siti", null, "Nur"], "_given": [null, {"extension": []}, null]}
            ]
        });
        let t = patient_identity_terms(&p);
        let nb = |n: &str| IdentityTerm::NameBirthDate { name: n.into(), birth_date: "1990-08-05".into() };
        assert_eq!(
            t,
            vec![
                IdentityTerm::Identifier { system: "https://fhir.kemkes.go.id/id/nik".into(), value: "3174054508900003".into() },
                IdentityTerm::Phone("6281234567890".into()),
                nb("siti aminah"),
                nb("aminah"),
                nb("siti nur"),
            ]
        );
        // No full birth date: no name terms.
        for b in [json!("1990-08"), json!("1990-02-30"), json!(19900805)] {
            let mut q = p.clone();
            q["birthDate"] = b;
            assert!(patient_identity_terms(&q).iter().all(|t| !matches!(t, IdentityTerm::NameBirthDate { .. })));
        }
        assert!(patient_identity_terms(&json!("nope")).is_empty());
    }

    proptest! {
        #[test]
        fn normalize_phone_is_idempotent(s in "[+0-9 ()./-]{0,24}") {
            if let Some(p) = normalize_phone(&s) {
                prop_assert!(p.bytes().all(|b| b.is_ascii_digit()));
                prop_assert_eq!(normalize_phone(&p), Some(p.clone()));
            }
        }

        #[test]
        fn normalize_phone_never_panics(s in "\\PC{0,40}") {
            let _ = normalize_phone(&s);
        }

        #[test]
        fn normalize_name_is_idempotent(s in "\\PC{0,40}") {
            let once = normalize_name(&s);
            prop_assert_eq!(normalize_name(&once), once.clone());
            prop_assert!(!once.starts_with(' ') && !once.ends_with(' ') && !once.contains("  "));
        }
    }
}
