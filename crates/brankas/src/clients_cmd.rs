//! `brankas clients ...`: the client registry from the command line, on the data directory
//! itself (the same operations as `/admin/clients`; safe while the server runs, and a
//! suspension or revocation applies to the client's very next request there too).
//!
//! The operator's shell is adversary A7 as much as the admin API: it acts as `local-operator`
//! and gets no more. Registering, widening or reinstating a client of a role that needs
//! approval is pending until a security officer approves it (`brankas clients approve ID
//! --approver-id SO --approver-secret-file F`, or `POST /admin/clients/{id}/approve`). The
//! one exception is the first security officer, active at once while no active one exists.

use std::path::PathBuf;

use anyhow::{Context, Result};
use brankas_auth::{ClientRecord, ClientSpec, ClientStatus, ClientUpdate, Principal, Role};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::{DataArgs, open};

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    FacilitySystem,
    Clinician,
    Patient,
    SecurityOfficer,
    Researcher,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::FacilitySystem => Role::FacilitySystem,
            RoleArg::Clinician => Role::Clinician,
            RoleArg::Patient => Role::Patient,
            RoleArg::SecurityOfficer => Role::SecurityOfficer,
            RoleArg::Researcher => Role::Researcher,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[derive(Subcommand)]
pub enum ClientsCmd {
    /// Register a client; prints its id and its secret (shown once, stored only hashed).
    Create {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Space-separated SMART scopes, e.g. "system/Patient.rs system/Observation.cruds".
        #[arg(long, default_value = "")]
        scopes: String,
        /// The client stands for a trusted identity provider (a hospital's): its access
        /// tokens with this `iss`, signed by a key of --jwks, are accepted as they are
        /// (clinician or patient role; the token's fhirUser names the person).
        #[arg(long)]
        issuer: Option<String>,
        #[command(flatten)]
        bind: Binding,
    },
    /// List every client (without secrets).
    List(DataArgs),
    /// Show one client.
    Show {
        #[command(flatten)]
        data: DataArgs,
        client_id: String,
    },
    /// Change a client's registration (only the options given).
    Update {
        #[command(flatten)]
        data: DataArgs,
        client_id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        scopes: Option<String>,
        #[command(flatten)]
        bind: Binding,
    },
    /// Suspend a client: refused from its next request on, until reinstated.
    Suspend {
        #[command(flatten)]
        data: DataArgs,
        client_id: String,
    },
    /// Reinstate a suspended client.
    Reinstate {
        #[command(flatten)]
        data: DataArgs,
        client_id: String,
    },
    /// Revoke a client for good.
    Revoke {
        #[command(flatten)]
        data: DataArgs,
        client_id: String,
    },
    /// Approve the request pending on a client, as a security officer (not its requester).
    Approve {
        #[command(flatten)]
        data: DataArgs,
        client_id: String,
        /// The approving security officer's client id.
        #[arg(long)]
        approver_id: String,
        /// A file holding the approving security officer's client secret.
        #[arg(long)]
        approver_secret_file: PathBuf,
    },
    /// Reject the request pending on a client (a pending new client is revoked).
    Reject {
        #[command(flatten)]
        data: DataArgs,
        client_id: String,
    },
}

#[derive(Args)]
pub struct Binding {
    /// Organization/<id> the client acts for (facility-system, clinician).
    #[arg(long)]
    organization: Option<String>,
    /// Practitioner/<id> the client acts for (clinician).
    #[arg(long)]
    practitioner: Option<String>,
    /// The identifier system of the facility's own medical record numbers (facility-system;
    /// an absolute URI): DICOM instances it sends are linked by PatientID in this system.
    #[arg(long)]
    record_number_system: Option<String>,
    /// Patient/<id> the client is bound to (patient).
    #[arg(long)]
    patient: Option<String>,
    /// A JWK Set file with the client's public keys, for private_key_jwt.
    #[arg(long)]
    jwks: Option<PathBuf>,
    /// Sensitive categories granted explicitly, comma-separated: HIV, PSY, ETH, SDV, STD,
    /// SUD, SICKLE, GDIS, R, V (records so labelled), PHOTO (patients' photos).
    #[arg(long, value_delimiter = ',')]
    sensitive: Option<Vec<String>>,
    /// Purposes of use the client may state besides TREAT, comma-separated HL7 PurposeOfUse
    /// codes (e.g. ETREAT,HPAYMT): each needs a reason per request and is alerted like
    /// break-glass.
    #[arg(long, value_delimiter = ',')]
    purposes: Option<Vec<String>>,
    /// Distinct patients the client may receive per clock hour (with --budget-per-day;
    /// default: the role's, see README).
    #[arg(long, requires = "budget_per_day")]
    budget_per_hour: Option<u32>,
    /// Distinct patients the client may receive per UTC day.
    #[arg(long, requires = "budget_per_hour")]
    budget_per_day: Option<u32>,
    /// What exceeding the budget does: `suspend` (default) or `throttle`.
    #[arg(long, value_parser = ["suspend", "throttle"], requires = "budget_per_hour")]
    on_exceed: Option<String>,
    /// Sustained requests per second (default: the role's, see README).
    #[arg(long)]
    rate_per_second: Option<u32>,
    /// Requests allowed in a burst.
    #[arg(long)]
    burst: Option<u32>,
    /// Largest search page.
    #[arg(long)]
    max_page: Option<u32>,
    /// Requests in progress at once.
    #[arg(long)]
    max_concurrent: Option<u32>,
}

impl Binding {
    fn limits(&self) -> Option<brankas_auth::RateLimitSpec> {
        let l = brankas_auth::RateLimitSpec { requests_per_second: self.rate_per_second, burst: self.burst, max_page: self.max_page, max_concurrent: self.max_concurrent };
        (l != brankas_auth::RateLimitSpec::default()).then_some(l)
    }

    fn budget(&self) -> Option<brankas_auth::PatientBudget> {
        Some(brankas_auth::PatientBudget {
            per_hour: self.budget_per_hour?,
            per_day: self.budget_per_day?,
            on_exceed: if self.on_exceed.as_deref() == Some("throttle") { brankas_auth::OnExceed::Throttle } else { brankas_auth::OnExceed::Suspend },
        })
    }
}

fn read_jwks(path: &Option<PathBuf>) -> Result<Option<Value>> {
    path.as_ref()
        .map(|p| -> Result<Value> {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", p.display()))
        })
        .transpose()
}

pub fn run(cmd: ClientsCmd) -> Result<()> {
    let out: Value = match cmd {
        ClientsCmd::Create { data, name, role, scopes, issuer, bind } => {
            let budget = bind.budget();
            let limits = bind.limits();
            let spec = ClientSpec {
                name,
                role: Some(role.into()),
                scopes,
                organization: bind.organization,
                practitioner: bind.practitioner,
                record_number_system: bind.record_number_system,
                patient: bind.patient,
                jwks: read_jwks(&bind.jwks)?,
                patient_budget: budget,
                limits,
                sensitive: bind.sensitive.unwrap_or_default(),
                issuer,
                purposes: bind.purposes.unwrap_or_default(),
            };
            let o = open(&data.data_dir, data.key_file.as_deref())?;
            let r = o.auth.register(&spec, &Principal::local_operator());
            let note = |rec: &ClientRecord| if rec.status == ClientStatus::PendingApproval { "; pending approval (registration)" } else { "" };
            o.audit_local("client-admin", "C", r.as_ref().ok().map(|(n, rec)| format!("/admin/clients/{}{}", n.client_id, note(rec))), r.is_ok(), None)?;
            let (new, rec) = r?;
            if rec.status == ClientStatus::PendingApproval {
                requested(&o, &rec)?;
            } else if rec.role == Role::SecurityOfficer {
                let detail = json!({"role": rec.role.as_str(), "requested_by": "local-operator", "reason": "the first security officer"});
                alert(&o, "registered-without-approval", "high", &rec.client_id, detail)?;
            }
            json!({"client_id": new.client_id, "client_secret": new.client_secret, "status": status_word(&rec)})
        }
        ClientsCmd::List(data) => {
            let o = open(&data.data_dir, data.key_file.as_deref())?;
            o.audit_local("client-admin", "R", Some("/admin/clients".into()), true, None)?;
            json!({"clients": o.auth.list_clients()?.iter().map(|c| c.public_view()).collect::<Vec<_>>()})
        }
        ClientsCmd::Show { data, client_id } => {
            let o = open(&data.data_dir, data.key_file.as_deref())?;
            o.audit_local("client-admin", "R", Some(target(&client_id)), true, None)?;
            o.auth.client(&client_id)?.context("no such client")?.public_view()
        }
        ClientsCmd::Update { data, client_id, name, scopes, bind } => {
            let budget = bind.budget();
            let limits = bind.limits();
            let u = ClientUpdate {
                name,
                scopes,
                organization: bind.organization.map(Some),
                practitioner: bind.practitioner.map(Some),
                record_number_system: bind.record_number_system.map(Some),
                patient: bind.patient.map(Some),
                jwks: read_jwks(&bind.jwks)?.map(Some),
                patient_budget: budget.map(Some),
                limits: limits.map(Some),
                sensitive: bind.sensitive,
                purposes: bind.purposes,
            };
            let o = open(&data.data_dir, data.key_file.as_deref())?;
            let r = o.auth.request_update(&client_id, &u, &Principal::local_operator());
            pending_or_done(&o, &client_id, r)?
        }
        ClientsCmd::Suspend { data, client_id } => {
            let o = open(&data.data_dir, data.key_file.as_deref())?;
            let r = o.auth.suspend(&client_id);
            o.audit_local("client-admin", "U", Some(format!("{}/suspend", target(&client_id))), r.is_ok(), None)?;
            r?.public_view()
        }
        ClientsCmd::Reinstate { data, client_id } => {
            let o = open(&data.data_dir, data.key_file.as_deref())?;
            let r = o.auth.request_reinstate(&client_id, &Principal::local_operator());
            pending_or_done(&o, &client_id, r)?
        }
        ClientsCmd::Revoke { data, client_id } => {
            let o = open(&data.data_dir, data.key_file.as_deref())?;
            let r = o.auth.revoke(&client_id);
            o.audit_local("client-admin", "U", Some(format!("{}/revoke", target(&client_id))), r.is_ok(), None)?;
            r?.public_view()
        }
        ClientsCmd::Approve { data, client_id, approver_id, approver_secret_file } => {
            let secret = std::fs::read_to_string(&approver_secret_file).with_context(|| format!("reading {}", approver_secret_file.display()))?;
            let o = open(&data.data_dir, data.key_file.as_deref())?;
            let officer = o.auth.authenticate(&approver_id, secret.trim()).context("the approver's client id and secret do not authenticate an active client")?;
            let r = o.auth.approve(&client_id, &officer);
            let note = r.as_ref().map_or(String::new(), |(_, req)| format!("; approved {} requested by {}", req.kind.as_str(), req.requested_by));
            let why = r.as_ref().err().map(|e| e.to_string());
            o.audit_as(officer.client_id(), officer.role().as_str(), "client-admin", "U", Some(format!("{}/approve{note}", target(&client_id))), r.is_ok(), why)?;
            let (rec, req) = r?;
            let severity = if req.kind == brankas_auth::RequestKind::Reinstatement { "high" } else { "medium" };
            let detail = json!({"request": req.kind.as_str(), "role": rec.role.as_str(), "requested_by": req.requested_by, "approved_by": officer.client_id()});
            alert(&o, "approved", severity, &rec.client_id, detail)?;
            rec.public_view()
        }
        ClientsCmd::Reject { data, client_id } => {
            let o = open(&data.data_dir, data.key_file.as_deref())?;
            let r = o.auth.reject(&client_id, &Principal::local_operator());
            let note = r.as_ref().map_or(String::new(), |(_, req)| format!("; rejected {} requested by {}", req.kind.as_str(), req.requested_by));
            o.audit_local("client-admin", "U", Some(format!("{}/reject{note}", target(&client_id))), r.is_ok(), None)?;
            let (rec, req) = r?;
            let detail = json!({"request": req.kind.as_str(), "role": rec.role.as_str(), "requested_by": req.requested_by, "rejected_by": "local-operator"});
            alert(&o, "rejected", "low", &rec.client_id, detail)?;
            rec.public_view()
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// A registration's state as the CLI reports it.
fn status_word(rec: &ClientRecord) -> &'static str {
    match rec.status {
        ClientStatus::Active => "active",
        ClientStatus::Suspended => "suspended",
        ClientStatus::Revoked => "revoked",
        ClientStatus::PendingApproval => "pending_approval",
    }
}

/// Audits (and, if pending, alerts) a change or reinstatement the operator asked for.
fn pending_or_done(o: &crate::Opened, client_id: &str, r: Result<(ClientRecord, bool), brankas_auth::AuthError>) -> Result<Value> {
    let note = match &r {
        Ok((rec, true)) => format!("; pending approval ({})", rec.pending.as_ref().map_or("change", |p| p.kind.as_str())),
        _ => String::new(),
    };
    o.audit_local("client-admin", "U", Some(format!("{}{note}", target(client_id))), r.is_ok(), None)?;
    let (rec, pending) = r?;
    if pending {
        requested(o, &rec)?;
        let kind = rec.pending.as_ref().map_or("change", |p| p.kind.as_str());
        return Ok(json!({"status": "pending_approval", "client_id": rec.client_id, "request": kind, "requested_by": "local-operator", "client": rec.public_view()}));
    }
    Ok(rec.public_view())
}

/// Alerts the officers to a request waiting for one of them.
fn requested(o: &crate::Opened, rec: &ClientRecord) -> Result<()> {
    let kind = rec.pending.as_ref().map_or("registration", |p| p.kind.as_str());
    let detail = json!({"request": kind, "role": rec.role.as_str(), "requested_by": "local-operator", "approve": format!("brankas clients approve {}", rec.client_id)});
    alert(o, "approval-requested", "medium", &rec.client_id, detail)
}

/// Stores an alert (listed by `GET /admin/alerts`; the webhook is the server's, so an alert
/// raised offline is not pushed) and shows it on stderr.
fn alert(o: &crate::Opened, kind: &str, severity: &str, client_id: &str, detail: Value) -> Result<()> {
    let time_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    let row = brankas_store::AlertRow { id: 0, time_us, kind: kind.into(), severity: severity.into(), client_id: Some(client_id.into()), detail: detail.to_string() };
    o.store.alert_add(&row).context("the alert could not be stored")?;
    eprintln!("alert {kind}: {detail}");
    Ok(())
}

fn target(client_id: &str) -> String {
    format!("/admin/clients/{}", client_id.chars().take(64).collect::<String>())
}
