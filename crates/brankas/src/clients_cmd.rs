//! `brankas clients ...`: the client registry from the command line, on the data directory
//! itself (the same operations as `/admin/clients`; safe while the server runs, and a
//! suspension or revocation applies to the client's very next request there too).

use std::path::PathBuf;

use anyhow::{Context, Result};
use brankas_auth::{ClientSpec, ClientStatus, ClientUpdate, Role};
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
}

#[derive(Args)]
pub struct Binding {
    /// Organization/<id> the client acts for (facility-system, clinician).
    #[arg(long)]
    organization: Option<String>,
    /// Practitioner/<id> the client acts for (clinician).
    #[arg(long)]
    practitioner: Option<String>,
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
                patient: bind.patient,
                jwks: read_jwks(&bind.jwks)?,
                patient_budget: budget,
                limits,
                sensitive: bind.sensitive.unwrap_or_default(),
                issuer,
                purposes: bind.purposes.unwrap_or_default(),
            };
            let o = open(&data.data_dir, data.key_file.as_deref())?;
            let new = o.auth.create_client(&spec);
            o.audit_local("client-admin", "C", new.as_ref().ok().map(|n| format!("/admin/clients/{}", n.client_id)), new.is_ok(), None)?;
            let new = new?;
            json!({"client_id": new.client_id, "client_secret": new.client_secret})
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
                patient: bind.patient.map(Some),
                jwks: read_jwks(&bind.jwks)?.map(Some),
                patient_budget: budget.map(Some),
                limits: limits.map(Some),
                sensitive: bind.sensitive,
                purposes: bind.purposes,
            };
            let o = open(&data.data_dir, data.key_file.as_deref())?;
            let r = o.auth.update_client(&client_id, &u);
            o.audit_local("client-admin", "U", Some(target(&client_id)), r.is_ok(), None)?;
            r?.public_view()
        }
        ClientsCmd::Suspend { data, client_id } => status(data, &client_id, ClientStatus::Suspended)?,
        ClientsCmd::Reinstate { data, client_id } => status(data, &client_id, ClientStatus::Active)?,
        ClientsCmd::Revoke { data, client_id } => status(data, &client_id, ClientStatus::Revoked)?,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn status(data: DataArgs, client_id: &str, s: ClientStatus) -> Result<Value> {
    let o = open(&data.data_dir, data.key_file.as_deref())?;
    let r = o.auth.set_status(client_id, s);
    o.audit_local("client-admin", "U", Some(format!("{}/{s:?}", target(client_id)).to_lowercase()), r.is_ok(), None)?;
    Ok(r?.public_view())
}

fn target(client_id: &str) -> String {
    format!("/admin/clients/{}", client_id.chars().take(64).collect::<String>())
}
