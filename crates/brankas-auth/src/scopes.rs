//! SMART on FHIR scopes (App Launch v2 syntax, v1 mapped onto it).

use std::fmt;

/// One resource scope: `context/Type.perms[?query]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// `patient`, `user` or `system`.
    pub context: String,
    /// A resource type or `*`.
    pub resource_type: String,
    /// Subset of `cruds`, in that order.
    pub perms: String,
    /// Optional v2 query restriction (e.g. `category=laboratory`), enforced by access control.
    pub query: Option<String>,
}

/// A parsed scope string. Non-resource scopes (`openid`, `fhirUser`, `launch/patient`,
/// `offline_access`) are kept but grant no data access.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    resource: Vec<Scope>,
    other: Vec<String>,
}

/// A scope string that is not valid SMART syntax.
#[derive(Debug, thiserror::Error)]
#[error("invalid scope syntax")]
pub struct ScopeError;

const MAX_SCOPES: usize = 100;

impl Scopes {
    /// Parses a space-separated scope string.
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        let mut out = Scopes::default();
        for (i, tok) in s.split_ascii_whitespace().enumerate() {
            if i >= MAX_SCOPES || tok.len() > 200 {
                return Err(ScopeError);
            }
            match tok.split_once('/') {
                Some((ctx @ ("patient" | "user" | "system"), rest)) => out.resource.push(parse_one(ctx, rest)?),
                Some(("launch", _)) | None => {
                    if !tok.chars().all(|c| c.is_ascii_alphanumeric() || "_-:/".contains(c)) {
                        return Err(ScopeError);
                    }
                    out.other.push(tok.to_string())
                }
                Some(_) => return Err(ScopeError),
            }
        }
        Ok(out)
    }

    /// Resource scopes.
    pub fn resource_scopes(&self) -> &[Scope] {
        &self.resource
    }

    /// Whether some scope grants `perm` (one of `c r u d s`) on `resource_type`.
    pub fn permits(&self, resource_type: &str, perm: char) -> bool {
        self.resource.iter().any(|s| (s.resource_type == "*" || s.resource_type == resource_type) && s.perms.contains(perm))
    }

    /// Whether everything `want` grants is granted by `self`.
    pub fn covers(&self, want: &Scopes) -> bool {
        want.resource.iter().all(|w| {
            w.perms.chars().all(|p| {
                self.resource.iter().any(|g| {
                    g.context == w.context && (g.resource_type == "*" || g.resource_type == w.resource_type) && g.perms.contains(p) && (g.query.is_none() || g.query == w.query)
                })
            })
        }) && want.other.iter().all(|o| self.other.contains(o))
    }
}

fn parse_one(ctx: &str, rest: &str) -> Result<Scope, ScopeError> {
    let (body, query) = match rest.split_once('?') {
        Some((b, q)) if !q.is_empty() => (b, Some(q.to_string())),
        Some(_) => return Err(ScopeError),
        None => (rest, None),
    };
    let (rt, perm) = body.split_once('.').ok_or(ScopeError)?;
    if rt != "*" && !(rt.len() <= 64 && rt.starts_with(|c: char| c.is_ascii_uppercase()) && rt.chars().all(|c| c.is_ascii_alphanumeric())) {
        return Err(ScopeError);
    }
    let perms = match perm {
        "read" => "rs".to_string(),
        "write" => "cud".to_string(),
        "*" => "cruds".to_string(),
        p if !p.is_empty() && is_ordered_subset(p) => p.to_string(),
        _ => return Err(ScopeError),
    };
    if query.is_some() && perm.len() > 5 {
        return Err(ScopeError);
    }
    Ok(Scope { context: ctx.into(), resource_type: rt.into(), perms, query })
}

/// v2 permissions must appear in the order c, r, u, d, s, each at most once.
fn is_ordered_subset(p: &str) -> bool {
    let mut last = None;
    for ch in p.chars() {
        let Some(pos) = "cruds".find(ch) else { return false };
        if last.is_some_and(|l| pos <= l) {
            return false;
        }
        last = Some(pos);
    }
    true
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.resource {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{}/{}.{}", s.context, s.resource_type, s.perms)?;
            if let Some(q) = &s.query {
                write!(f, "?{q}")?;
            }
        }
        for o in &self.other {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            f.write_str(o)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2() {
        let s = Scopes::parse("system/Observation.read patient/Patient.cruds openid").unwrap();
        assert!(s.permits("Observation", 'r') && s.permits("Observation", 's') && !s.permits("Observation", 'c'));
        assert!(s.permits("Patient", 'd'));
        assert_eq!(Scopes::parse("system/*.write").unwrap().resource_scopes()[0].perms, "cud");
        for bad in ["system/Observation.rc", "system/Observation.x", "sys/Observation.r", "system/obs.r", "system/Observation", "system/Observation.r?"] {
            assert!(Scopes::parse(bad).is_err(), "{bad}");
        }
        let q = Scopes::parse("system/Observation.rs?category=laboratory").unwrap();
        assert_eq!(q.resource_scopes()[0].query.as_deref(), Some("category=laboratory"));
    }

    #[test]
    fn covers() {
        let g = Scopes::parse("system/*.cruds").unwrap();
        assert!(g.covers(&Scopes::parse("system/Patient.r").unwrap()));
        assert!(!g.covers(&Scopes::parse("patient/Patient.r").unwrap()));
        let n = Scopes::parse("system/Patient.rs").unwrap();
        assert!(!n.covers(&Scopes::parse("system/Patient.c").unwrap()));
        assert!(!n.covers(&Scopes::parse("system/*.r").unwrap()));
    }
}
