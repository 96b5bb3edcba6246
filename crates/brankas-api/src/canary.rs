//! Canary patients: synthetic patients planted among the real ones, indistinguishable through
//! the API, whose first touch suspends the credential (see `guard.rs`).
//!
//! Placement: each canary is a `brankas-synth` identity (valid-structured NIK, name by
//! regional tradition, address, `+62` phone, IHS number) with one encounter and one antigen
//! result at the given facility, submitted on the facility's behalf (it is in the facility's
//! care and on its work lists). The visits are dated across the facility's whole history
//! (`placement`: quantiles of its visits over the last two years, from the oldest to the
//! newest), so that a walk in any order and by windows of any size meets one early; with no
//! history yet, within the last week. Plant again as visits accumulate (e.g. weekly): new
//! visits after the newest canary are not covered until then. Ids are random like
//! every server-assigned id; references to practitioners and locations are left out (the canary's
//! synthetic ones do not exist here), and times are whole seconds. A NIK already present is skipped; a real person later
//! registered under a canary's NIK would trip it (the odds are those of two random NIKs of the
//! same district and birth date colliding; the officer sees the alert and the canary id).

use brankas_auth::Principal;
use brankas_engine::{Engine, EngineError, SearchRequest};
use brankas_store::Store;
use brankas_synth::{Mix, Population};
use serde_json::{Value, json};

/// Most canaries planted by one call.
pub const MAX_CANARIES: usize = 1000;

/// How far back the facility's visits are looked at to place canaries (the care window).
const PROFILE_DAYS: i64 = 730;

/// The hours at which `count` canaries' visits go, given the facility's visits per hour
/// (oldest first): at evenly spaced quantiles of the visits themselves, the first at the
/// oldest visit and the last at the newest, so that a walk of the work list in any order
/// — newest first, oldest first, window by window of any size, or from any point on — has
/// at most about `visits / (count - 1)` real visits before it meets one (`count` 1: the
/// newest). Dense periods get canaries in proportion. Without visits, none (the caller
/// falls back to the last week).
fn placement(profile: &[(i64, usize)], count: usize) -> Vec<i64> {
    let total: usize = profile.iter().map(|(_, n)| n).sum();
    if total == 0 || count == 0 {
        return Vec::new();
    }
    (0..count)
        .map(|k| {
            // The visit index of this quantile, 0 ..= total - 1.
            let target = if count == 1 { total - 1 } else { k * (total - 1) / (count - 1) };
            let mut seen = 0;
            for (h, n) in profile {
                if target < seen + n {
                    return *h;
                }
                seen += n;
            }
            profile.last().map_or(0, |(h, _)| *h)
        })
        .collect()
}

/// Plants `count` canaries, at `organization` (`Organization/<id>`) if given; returns their
/// Patient ids and NIKs. `planter` writes them (the facility's writer: the operator's tool on
/// the command line, [`Principal::canary_planter`] of a security officer over HTTP) and
/// `lookup` checks that a NIK is not taken; this crate makes neither.
pub fn plant(engine: &Engine, store: &dyn Store, count: usize, organization: Option<&str>, planter: &Principal, lookup: &Principal) -> Result<Vec<(String, String)>, EngineError> {
    if count == 0 || count > MAX_CANARIES {
        return Err(EngineError::BadRequest(format!("count must be 1 to {MAX_CANARIES}")));
    }
    if let Some(o) = organization
        && !o.strip_prefix("Organization/").is_some_and(brankas_fhir::is_valid_id)
    {
        return Err(EngineError::BadRequest("organization must be Organization/<id>".into()));
    }
    let mut seed = [0u8; 8];
    brankas_vault::random_bytes(&mut seed)?;
    let pop = Population::new(u64::from_le_bytes(seed), Mix::Minimal);
    let now = time::OffsetDateTime::now_utc();
    // Where the facility's visits are, over the care window (two years): each canary's visit
    // is dated at a quantile of them (see `placement`).
    let profile = match organization {
        Some(o) => engine.visit_profile(planter, o, PROFILE_DAYS)?,
        None => Vec::new(),
    };
    let hours = placement(&profile, count);
    let mut out = Vec::new();
    let mut i = 0u64;
    while out.len() < count && i < count as u64 * 4 {
        let n = i;
        i += 1;
        let nik = pop.identity(n).nik;
        let req = SearchRequest {
            resource_type: "Patient".into(),
            pairs: vec![("identifier".into(), format!("https://fhir.kemkes.go.id/id/nik|{nik}"))],
            compartment: None,
            offset: 0,
            strict: true,
        };
        if engine.search(lookup, &req)?.unreleased().total > 0 {
            continue;
        }
        let id = brankas_vault::random_id(16)?;
        let mut rnd = [0u8; 2];
        brankas_vault::random_bytes(&mut rnd)?;
        let start = match hours.get(out.len()) {
            // Within the hour of the visit at this canary's quantile, at a random minute.
            Some(h) => time::OffsetDateTime::from_unix_timestamp(h * 3600 + i64::from(u16::from_le_bytes(rnd) % 3540)).unwrap_or(now),
            // No visits yet: within the last week.
            None => now - time::Duration::hours(1 + i64::from(u16::from_le_bytes(rnd) % 167)),
        };
        let bundle = place(pop.patient_bundle(n), &id, organization, start);
        // Marked first: a canary is never served unmarked, even for a moment.
        store.canary_add(&[engine.patient_partition(&id)])?;
        // A write by the operator's planting: its answer goes nowhere.
        drop(engine.transaction(planter, &bundle)?);
        out.push((id, nik));
    }
    Ok(out)
}

/// Makes a synthetic patient's Bundle a canary's: its id, its facility, recent dates.
fn place(mut bundle: Value, id: &str, organization: Option<&str>, start: time::OffsetDateTime) -> Value {
    let wib = time::UtcOffset::from_hms(7, 0, 0).unwrap_or(time::UtcOffset::UTC);
    // Whole seconds, as systems write them.
    let fmt = |t: time::OffsetDateTime| t.to_offset(wib).replace_nanosecond(0).ok().and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()).unwrap_or_default();
    let org_id = organization.and_then(|o| o.strip_prefix("Organization/"));
    let mut patient_urn = String::new();
    if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
        for e in entries.iter_mut() {
            let ty = e["resource"]["resourceType"].as_str().unwrap_or_default().to_string();
            match ty.as_str() {
                "Patient" => {
                    patient_urn = e["fullUrl"].as_str().unwrap_or_default().to_string();
                    e["resource"]["id"] = json!(id);
                    e["request"] = json!({"method": "PUT", "url": format!("Patient/{id}")});
                    if organization.is_some() {
                        e["resource"]["managingOrganization"] = json!({"reference": organization});
                    }
                }
                "Encounter" => {
                    let r = &mut e["resource"];
                    // The synthetic practitioners and locations do not exist here.
                    if let Some(o) = r.as_object_mut() {
                        o.remove("participant");
                        o.remove("location");
                    }
                    r["period"] = json!({"start": fmt(start), "end": fmt(start + time::Duration::minutes(25))});
                }
                "Observation" => {
                    let r = &mut e["resource"];
                    if let Some(o) = r.as_object_mut() {
                        o.remove("performer");
                    }
                    r["effectiveDateTime"] = json!(fmt(start + time::Duration::minutes(10)));
                    if r.get("issued").is_some() {
                        r["issued"] = json!(fmt(start + time::Duration::minutes(20)));
                    }
                }
                _ => {}
            }
        }
    }
    rewrite(&mut bundle, &patient_urn, id, org_id);
    bundle
}

/// References to the patient by its `urn:uuid` become `Patient/<id>`; the synthetic facility
/// becomes the given one (or stays, with no facility given).
fn rewrite(v: &mut Value, urn: &str, id: &str, org_id: Option<&str>) {
    match v {
        Value::Object(m) => {
            let is_org_ref = m.get("reference").and_then(Value::as_str).is_some_and(|r| r.starts_with("Organization/fac-"));
            if is_org_ref && let Some(o) = org_id {
                m.insert("reference".into(), json!(format!("Organization/{o}")));
                m.remove("display");
            }
            for (k, x) in m.iter_mut() {
                if k == "fullUrl" {
                    continue;
                }
                rewrite(x, urn, id, org_id);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, urn, id, org_id)),
        Value::String(s) => {
            if !urn.is_empty() && s == urn {
                *s = format!("Patient/{id}");
            } else if let Some(o) = org_id
                && let Some(pos) = s.find("/fac-")
                && s[pos + 5..].len() == 4
                && s[pos + 5..].bytes().all(|b| b.is_ascii_digit())
            {
                *s = format!("{}/{o}", &s[..pos]);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::placement;

    #[test]
    fn canaries_sit_at_quantiles_of_the_visits_from_the_oldest_to_the_newest() {
        // 120 visits, one an hour for 120 hours.
        let profile: Vec<(i64, usize)> = (0..120).map(|h| (1000 + h, 1)).collect();
        assert_eq!(placement(&profile, 5), vec![1000, 1029, 1059, 1089, 1119]);
        assert_eq!(placement(&profile, 1), vec![1119], "one canary: the newest visit");
        // A busy day gets the canaries its visits call for.
        let bursty = vec![(10, 1), (20, 98), (30, 1)];
        assert_eq!(placement(&bursty, 3), vec![10, 20, 30]);
        assert_eq!(placement(&bursty, 5), vec![10, 20, 20, 20, 30]);
        assert!(placement(&[], 3).is_empty());
    }
}
