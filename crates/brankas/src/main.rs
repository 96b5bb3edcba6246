//! `brankas`: the one binary. Subcommands: init, serve, import, synth, clients, keys rotate,
//! verify, backup, restore, demo.
//!
//! The binary is thin: it parses arguments, opens the data directory (store + key provider +
//! vault) and hands over to the library crates.

mod anchor;
mod audit_cmd;
mod backup;
mod clients_cmd;
mod demo;
mod erase;
mod logsink;
mod synth_cmd;
mod verify;

/// mimalloc: thread-local free lists instead of glibc's locked arenas (see BENCHMARKS.md,
/// "Reads at the hardware's pace"). Secrets are zeroized by their own types before they are freed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use brankas_audit::AuditLog;
use brankas_auth::{Authority, ClientSpec, Role};
use brankas_engine::{Engine, ImportStats, Importer, ROOT_META};
use brankas_store::{SqliteStore, Store};
use brankas_vault::{KeyFile, KeyProvider, Vault, WrappedKey};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "brankas", version, about = "Brankas: a FHIR R4 medical-records server whose storage never sees plaintext")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Where the deployment's store is: `<data-dir>/brankas.db` (the embedded default), or a
/// PostgreSQL database shared by several servers (scale-out). Accepted by every command that
/// opens a deployment.
#[derive(Args, Clone, Debug)]
struct DatabaseArgs {
    /// The store in PostgreSQL instead of the data directory's SQLite file:
    /// `postgres://USER@HOST:PORT/DB` (add `?sslmode=require` for TLS). No password here: see
    /// --database-password-file. The data directory still holds this server's own files
    /// (TLS material, attachments).
    #[arg(long, global = true, env = "BRANKAS_DATABASE_URL")]
    database: Option<String>,
    /// A file whose first line is the database password.
    #[arg(long, global = true, env = "BRANKAS_DATABASE_PASSWORD_FILE", requires = "database")]
    database_password_file: Option<PathBuf>,
    /// PEM certificates of the authority the database's TLS certificate must chain to (TLS is
    /// then required).
    #[arg(long, global = true, env = "BRANKAS_DATABASE_CA_FILE", requires = "database")]
    database_ca_file: Option<PathBuf>,
    /// The schema holding the deployment's tables.
    #[arg(long, global = true, env = "BRANKAS_DATABASE_SCHEMA", default_value = "brankas", requires = "database")]
    database_schema: String,
}

/// The deployment's PostgreSQL store, when the command line names one: set once, before any
/// command runs, and read by every opening of the store ([`open_store`]).
static DATABASE: std::sync::OnceLock<brankas_store::PgOptions> = std::sync::OnceLock::new();

impl DatabaseArgs {
    fn install(&self) -> Result<()> {
        let Some(url) = &self.database else { return Ok(()) };
        let password = self
            .database_password_file
            .as_deref()
            .map(|p| -> Result<zeroize::Zeroizing<String>> {
                let raw = zeroize::Zeroizing::new(std::fs::read_to_string(p).with_context(|| format!("reading the database password file {}", p.display()))?);
                Ok(zeroize::Zeroizing::new(raw.lines().next().unwrap_or_default().to_string()))
            })
            .transpose()?;
        let opts = brankas_store::PgOptions { url: url.clone(), schema: self.database_schema.clone(), password, ca_file: self.database_ca_file.clone() };
        DATABASE.set(opts).map_err(|_| anyhow::anyhow!("the database is chosen once"))?;
        Ok(())
    }
}

/// Opens the deployment's store: the PostgreSQL database the command line names, or the data
/// directory's SQLite file. `created`: whether it must be new (`init`) or already initialised.
pub(crate) fn open_store(data_dir: &Path, created: bool) -> Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match DATABASE.get() {
        Some(opts) => Arc::new(brankas_store::PostgresStore::open_with(opts).context("opening the PostgreSQL store")?),
        None => {
            let db = data_dir.join(DB_FILE);
            if db.exists() == created {
                if created {
                    bail!("{} is already initialised", data_dir.display());
                }
                bail!("{} is not initialised: run `brankas init --data-dir {}` first", data_dir.display(), data_dir.display());
            }
            return Ok(Arc::new(SqliteStore::open(&db)?));
        }
    };
    let has_root = store.get_meta(ROOT_META)?.is_some();
    if created && has_root {
        bail!("the database is already initialised");
    }
    if !created && !has_root {
        bail!("the database is not initialised: run `brankas init --database ...` first");
    }
    Ok(store)
}

/// Refuses a command that works on the data directory's SQLite files when the store is in
/// PostgreSQL (its own tools back up and check it).
pub(crate) fn sqlite_only(what: &str) -> Result<()> {
    if DATABASE.get().is_some() {
        bail!("{what} works on the embedded store's files; a PostgreSQL store is backed up with pg_dump or its own backup tools, and checked by `brankas audit verify`");
    }
    Ok(())
}

#[derive(Args, Clone)]
struct DataArgs {
    /// The data directory (database, TLS material). Holds only ciphertext and wrapped keys.
    #[arg(long, env = "BRANKAS_DATA_DIR")]
    data_dir: PathBuf,
    /// The master key file. Default: `<data-dir>.key`, beside (never inside) the data directory.
    #[arg(long, env = "BRANKAS_KEY_FILE")]
    key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a data directory, a master key file and the bootstrap admin client.
    Init(DataArgs),
    /// Serve the FHIR API (HTTPS by default).
    Serve {
        #[command(flatten)]
        data: DataArgs,
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// PEM certificate chain (with --tls-key). Default: a self-signed certificate in the data directory.
        #[arg(long, requires = "tls_key", conflicts_with = "insecure_http")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert", conflicts_with = "insecure_http")]
        tls_key: Option<PathBuf>,
        /// Serve plain HTTP (local tests, or behind a TLS-terminating proxy).
        #[arg(long)]
        insecure_http: bool,
        /// Public base URL of the FHIR endpoint, if not `scheme://listen-address/fhir`.
        #[arg(long)]
        base_url: Option<String>,
        /// Access-token lifetime in seconds, 1 to 300 (default 300). Hidden: for tests (expiry
        /// without waiting five minutes) and deployments that want shorter-lived tokens.
        #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..=brankas_auth::MAX_TOKEN_SECONDS))]
        token_seconds: Option<u64>,
        /// Largest attachment accepted (Binary content, DICOM instance), in bytes; 413 beyond.
        #[arg(long, env = "BRANKAS_MAX_ATTACHMENT_BYTES", default_value_t = brankas_engine::AttachmentLimits::default().max_bytes)]
        max_attachment_bytes: u64,
        #[command(flatten)]
        webhook: WebhookArgs,
        /// Start although the data directory is behind its state anchor (a deliberate restore
        /// of older state): re-anchors to the state as it is, audited with this reason and
        /// raising an alert.
        #[arg(long, value_name = "REASON")]
        accept_state_rollback: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Load FHIR transaction/batch Bundles (JSON) and NDJSON files offline.
    Import {
        #[command(flatten)]
        data: DataArgs,
        /// Files or directories (directories: every *.json and *.ndjson inside, sorted); `-`
        /// reads NDJSON from standard input (e.g. `brankas synth ... | brankas import ... -`).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Import on behalf of this facility (`Organization/<id>`): its clients get a care
        /// relationship with the imported patients, as for data they submit themselves.
        #[arg(long)]
        organization: Option<String>,
    },
    /// Write a deterministic synthetic Indonesian population as NDJSON transaction Bundles.
    Synth(synth_cmd::SynthArgs),
    /// The client registry: create, list, show, update, suspend, reinstate, revoke.
    Clients {
        #[command(subcommand)]
        cmd: clients_cmd::ClientsCmd,
    },
    /// Key management.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// "Who was hit?": every patient whose data a client (or an address) received in a time
    /// window, from the audit log, with the categories of data, first and last access, and a
    /// notification text per patient (UU 27/2022 Art. 46) in Indonesian and English.
    BreachReport {
        #[command(flatten)]
        data: DataArgs,
        /// The client id of the suspected credential.
        #[arg(long, required_unless_present_any = ["address", "admin"], conflicts_with_all = ["address", "admin"])]
        client: Option<String>,
        /// The network address (as the audit log records it).
        #[arg(long, conflicts_with = "admin")]
        address: Option<String>,
        /// An administrator's client id: the patients read by the clients it registered or
        /// approved (and by those they registered in turn).
        #[arg(long)]
        admin: Option<String>,
        /// Start of the window: RFC 3339 or YYYY-MM-DD.
        #[arg(long)]
        since: String,
        /// End of the window (exclusive); default now.
        #[arg(long)]
        until: Option<String>,
        /// `json` (both languages) or `csv` (one row per patient).
        #[arg(long, default_value = "json", value_parser = ["json", "csv"])]
        format: String,
        /// Language of the notification column in CSV.
        #[arg(long, default_value = "id", value_parser = ["id", "en"])]
        lang: String,
        /// Whom the patients should contact (goes into every notification).
        #[arg(long, default_value = "the data protection officer of the health facility")]
        contact: String,
    },
    /// Canary patients: trip-wires whose first touch suspends the credential.
    Canary {
        #[command(subcommand)]
        cmd: CanaryCmd,
    },
    /// The audit log: verify it, print its newest signed checkpoint.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// The state anchor beside the key file: check the data directory against it, or accept
    /// older state after a deliberate restore.
    Anchor {
        #[command(subcommand)]
        cmd: AnchorCmd,
    },
    /// Check that every record, version, data key, blind-index row and attachment of the data
    /// directory opens and matches its row, the databases' structure, and the audit log: exit 0
    /// only when everything does; problems are named by record, never by content.
    Verify(DataArgs),
    /// A consistent online backup of the data directory (ciphertext only, never the key file)
    /// into a new directory, with a manifest, checked before it is reported.
    Backup {
        #[command(flatten)]
        data: DataArgs,
        /// The new (or empty) directory the backup is written to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Bring a backup back into a new (or empty) data directory: checked against its manifest,
    /// the audit log verified, erasures re-applied, and the state anchor moved to the restored
    /// state with an audit record of the reason.
    Restore {
        /// The backup directory (`brankas backup --out`).
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// Why (goes into the audit record and the alert).
        #[arg(long)]
        reason: Option<String>,
        /// Restore into a non-empty directory (its contents are moved aside to
        /// `<data-dir>.replaced-<time>`, not deleted), or a backup whose audit log is of another
        /// history than the anchored one.
        #[arg(long)]
        force: bool,
    },
    /// Erase a patient's record for a lawful reason (crypto-shredding): the data key is
    /// destroyed, so no copy of the ciphertext (backups, replicas, dumps) opens again.
    Erase {
        #[command(flatten)]
        data: DataArgs,
        /// The patient, `Patient/<id>`.
        #[arg(long)]
        patient: String,
        /// The reason code: created-in-error, duplicate-registration, court-order,
        /// unlawful-processing (these override the 25-year retention), patient-request,
        /// retention-expired (only after it).
        #[arg(long)]
        reason: String,
        /// A line for the audit record (e.g. the court order's number); no patient data.
        #[arg(long)]
        note: Option<String>,
    },
    /// Zero-setup demonstration: init a data directory if needed, seed synthetic patients,
    /// print a token and ready-to-paste requests, and serve.
    Demo {
        #[arg(long, default_value = "brankas-demo-data")]
        data_dir: PathBuf,
        #[arg(long)]
        key_file: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Serve plain HTTP instead of HTTPS with a self-signed certificate.
        #[arg(long)]
        insecure_http: bool,
    },
}

/// Connection limits and clocks (the rules are in `brankas-api`'s `server` module), and who
/// may read the server's metrics.
#[derive(Args, Clone)]
pub(crate) struct ConnArgs {
    /// Most connections open at once; past it a new connection displaces a stalled or idle
    /// unauthenticated one (kept within the process's file-descriptor limit).
    #[arg(long, default_value_t = brankas_api::ServeConfig::default().max_connections)]
    max_connections: usize,
    /// Most connections open at once from one IPv4 address or IPv6 /64.
    #[arg(long, default_value_t = brankas_api::ServeConfig::default().max_connections_per_address)]
    max_connections_per_address: usize,
    /// Seconds a connection may hold no request in flight (before its first request's headers
    /// are complete, and between requests).
    #[arg(long, default_value_t = brankas_api::ServeConfig::default().header_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_timeout: u64,
    /// Seconds a request body may take, plus one per 4 KiB received (streaming uploads: 60 s
    /// without a byte instead).
    #[arg(long, default_value_t = brankas_api::ServeConfig::default().body_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    body_timeout: u64,
    /// A file holding the bearer token of the metrics scraper: `/metrics` (Prometheus text)
    /// answers only that token (compared in constant time). Without it there is no `/metrics`.
    #[arg(long, env = "BRANKAS_METRICS_TOKEN_FILE")]
    metrics_token_file: Option<PathBuf>,
    /// A browser origin (`https://app.example`) whose pages may call this server (CORS);
    /// repeat for more, or list them comma-separated in the variable. Exact origins only,
    /// never `*`; without any, no CORS headers are sent.
    #[arg(long = "cors-origin", env = "BRANKAS_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
}

impl Default for ConnArgs {
    fn default() -> Self {
        let d = brankas_api::ServeConfig::default();
        Self {
            max_connections: d.max_connections,
            max_connections_per_address: d.max_connections_per_address,
            header_timeout: d.header_timeout.as_secs(),
            body_timeout: d.body_timeout.as_secs(),
            metrics_token_file: None,
            cors_origins: Vec::new(),
        }
    }
}

impl ConnArgs {
    /// The metrics of a server on `data_dir`, open to the token of `--metrics-token-file`.
    fn metrics(&self, data_dir: &Path) -> Result<brankas_api::metrics::Metrics> {
        let token = match &self.metrics_token_file {
            Some(f) => {
                let t = std::fs::read_to_string(f).with_context(|| format!("reading the metrics token file {}", f.display()))?;
                if t.trim().len() < 16 {
                    bail!("the metrics token in {} is shorter than 16 characters", f.display());
                }
                Some(t)
            }
            None => None,
        };
        Ok(brankas_api::metrics::Metrics::new(token.as_deref(), Some(data_dir.to_path_buf())))
    }

    /// The listener's configuration, with the connection cap kept within the file
    /// descriptors this process may open (raised to its hard limit first).
    fn config(&self) -> brankas_api::ServeConfig {
        let fds = raise_fd_limit();
        // Files, the databases, blobs being streamed and the webhook need some too.
        let room = fds.map_or(usize::MAX, |n| n.saturating_sub(256).max(64) as usize);
        if self.max_connections > room {
            tracing::warn!(requested = self.max_connections, allowed = room, "connection cap lowered to fit the file-descriptor limit");
        }
        brankas_api::ServeConfig {
            max_connections: self.max_connections.min(room).max(1),
            max_connections_per_address: self.max_connections_per_address.max(1),
            header_timeout: std::time::Duration::from_secs(self.header_timeout),
            body_timeout: std::time::Duration::from_secs(self.body_timeout),
            ..Default::default()
        }
    }
}

/// Raises the soft limit on open files to the hard limit; returns the soft limit in force.
fn raise_fd_limit() -> Option<libc::rlim_t> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return None;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    Some(r.rlim_cur)
}

/// Where alerts are pushed (besides `GET /admin/alerts` and the log).
#[derive(Args, Clone, Default)]
pub(crate) struct WebhookArgs {
    /// POST every alert as JSON to this URL (http:// or https://), signed with HMAC-SHA256
    /// in `X-Brankas-Signature: sha256=<hex>`, retried with back-off.
    #[arg(long, requires = "alert_webhook_secret_file")]
    alert_webhook: Option<String>,
    /// File holding the webhook's HMAC secret (at least 16 bytes; surrounding whitespace is
    /// ignored).
    #[arg(long)]
    alert_webhook_secret_file: Option<PathBuf>,
    /// PEM file of extra CA certificates trusted for an HTTPS webhook receiver.
    #[arg(long)]
    alert_webhook_ca: Option<PathBuf>,
}

impl WebhookArgs {
    fn config(&self) -> Result<Option<brankas_api::webhook::WebhookConfig>> {
        let Some(url) = &self.alert_webhook else { return Ok(None) };
        let path = self.alert_webhook_secret_file.as_ref().context("--alert-webhook needs --alert-webhook-secret-file")?;
        let secret = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let ca = self.alert_webhook_ca.as_ref().map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display()))).transpose()?;
        Ok(Some(brankas_api::webhook::WebhookConfig::new(url, secret.trim().as_bytes(), ca.as_deref()).map_err(|e| anyhow::anyhow!(e))?))
    }
}

#[derive(Subcommand)]
enum CanaryCmd {
    /// Plant synthetic patients that cannot be told apart through the API, with a recent
    /// encounter at the facility (so a walk through its patients meets them early).
    Create {
        #[command(flatten)]
        data: DataArgs,
        /// How many (1 to 1000).
        #[arg(long)]
        count: usize,
        /// The facility (`Organization/<id>`) whose patients they hide among.
        #[arg(long)]
        organization: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify the whole audit log: exits 0 when it is intact, 1 naming the first bad position
    /// when a record was edited, removed, inserted or reordered, or the log was truncated
    /// behind a stored checkpoint or the one given with --checkpoint.
    Verify {
        #[command(flatten)]
        data: DataArgs,
        /// A signed checkpoint kept outside the data directory (e.g. from
        /// `GET /admin/audit/checkpoint`, its `note`): the log must still contain it.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Directories of archive segments (`brankas audit archive --out`): the archived and
        /// the held records are verified as one log. Without it, a log whose older records
        /// were archived is verified from where its held records begin.
        #[arg(long)]
        archive: Vec<PathBuf>,
    },
    /// Move the records before a cut (rounded down to a multiple of 256 and to the newest
    /// signed checkpoint) into a segment file in --out, proven against a signed checkpoint and
    /// synced before they are deleted from the hot database, whose space is then reclaimed.
    Archive {
        #[command(flatten)]
        data: DataArgs,
        /// Archive the records written before this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        before: Option<String>,
        /// Archive the records before this position.
        #[arg(long)]
        up_to: Option<u64>,
        /// The archive directory (created if needed).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the newest signed checkpoint (a C2SP signed note) and the verifier key.
    Checkpoint(DataArgs),
}

#[derive(Subcommand)]
enum AnchorCmd {
    /// Compares the data directory with its anchor: exit 0 when nothing is behind, 1 naming
    /// what is (changes nothing).
    Check(DataArgs),
    /// Re-anchors to the data directory as it is, after a deliberate restore of older state:
    /// audited as the local operator with the reason, and raising an alert.
    Accept {
        #[command(flatten)]
        data: DataArgs,
        /// Why older state is accepted (goes into the audit record and the alert).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a new key-encryption key and rewrap every data key under it (data is not
    /// re-encrypted). Safe while the server runs.
    Rotate(DataArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(logsink::Sink)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BRANKAS_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    cli.database.install()?;
    match cli.cmd {
        Cmd::Init(d) => {
            let creds = init(&d.data_dir, d.key_file.as_deref())?;
            println!("{}", serde_json::json!({"client_id": creds.client_id, "client_secret": creds.client_secret}));
            Ok(())
        }
        Cmd::Serve { data, listen, tls_cert, tls_key, insecure_http, base_url, token_seconds, max_attachment_bytes, webhook, accept_state_rollback, conn } => {
            let tls = match (tls_cert, tls_key, insecure_http) {
                (_, _, true) => Tls::None,
                (Some(c), Some(k), _) => Tls::Files(c, k),
                _ => Tls::SelfSigned,
            };
            let attachments = brankas_engine::AttachmentLimits { max_bytes: max_attachment_bytes, ..Default::default() };
            let accept = accept_state_rollback.map(|r| accept_reason(&r)).transpose()?;
            let _log = logsink::start();
            serve(&data.data_dir, data.key_file.as_deref(), listen, tls, base_url, token_seconds, webhook.config()?, None, attachments, accept, conn)
        }
        Cmd::Import { data, paths, quiet, organization } => import(&data.data_dir, data.key_file.as_deref(), &paths, quiet, organization),
        Cmd::Synth(a) => synth_cmd::run(a),
        Cmd::Clients { cmd } => clients_cmd::run(cmd),
        Cmd::Keys { cmd: KeysCmd::Rotate(d) } => rotate(&d.data_dir, d.key_file.as_deref()),
        Cmd::Audit { cmd: AuditCmd::Verify { data, checkpoint, archive } } => audit_verify(&data.data_dir, data.key_file.as_deref(), checkpoint.as_deref(), &archive),
        Cmd::Audit { cmd: AuditCmd::Archive { data, before, up_to, out } } => audit_cmd::archive(&data.data_dir, data.key_file.as_deref(), before.as_deref(), up_to, &out),
        Cmd::Audit { cmd: AuditCmd::Checkpoint(d) } => audit_checkpoint(&d.data_dir, d.key_file.as_deref()),
        Cmd::Canary { cmd: CanaryCmd::Create { data, count, organization } } => {
            let o = open(&data.data_dir, data.key_file.as_deref())?;
            let (planter, lookup) = (brankas_auth::Principal::local_operator_for(organization.clone()), brankas_auth::Principal::local_operator());
            let ids = brankas_api::canary::plant(&o.engine, &*o.store, count, organization.as_deref(), &planter, &lookup).map_err(|e| anyhow::anyhow!("{e}"))?;
            o.audit_local_for(organization.clone(), "canary-create", "C", Some(format!("{} canaries", ids.len())), true, None)?;
            let list: Vec<serde_json::Value> = ids.iter().map(|(id, nik)| serde_json::json!({"id": id, "nik": nik})).collect();
            println!("{}", serde_json::json!({"planted": ids.len(), "organization": organization, "canaries": list}));
            Ok(())
        }
        Cmd::BreachReport { data, client, address, admin, since, until, format, lang, contact } => {
            breach_report(&data.data_dir, data.key_file.as_deref(), client, address, admin, &since, until.as_deref(), &format, &lang, contact)
        }
        Cmd::Anchor { cmd: AnchorCmd::Check(d) } => {
            let (store, vault) = open_vault(&d.data_dir, d.key_file.as_deref())?;
            let behind = anchor::inspect(&*store, vault, &key_path(&d.data_dir, d.key_file.as_deref())?)?;
            println!("{}", serde_json::json!({"behind": behind}));
            if !behind.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Anchor { cmd: AnchorCmd::Accept { data, reason } } => {
            let o = open_with(&data.data_dir, data.key_file.as_deref(), Default::default(), Some(accept_reason(&reason)?))?;
            let accepted = o.opening_behind.clone();
            drop(o);
            println!("{}", serde_json::json!({"accepted": accepted}));
            Ok(())
        }
        Cmd::Verify(d) => verify::run(&d.data_dir, d.key_file.as_deref()),
        Cmd::Backup { data, out } => backup::backup(&data.data_dir, data.key_file.as_deref(), &out),
        Cmd::Restore { from, data, reason, force } => {
            let reason = reason.map(|r| accept_reason(&r)).transpose()?;
            backup::restore(&from, &data.data_dir, data.key_file.as_deref(), reason, force)
        }
        Cmd::Erase { data, patient, reason, note } => erase::run(&data.data_dir, data.key_file.as_deref(), &patient, &reason, note),
        Cmd::Demo { data_dir, key_file, listen, insecure_http } => demo::run(&data_dir, key_file.as_deref(), listen, insecure_http),
    }
}

pub(crate) const DB_FILE: &str = "brankas.db";
/// Attachments (sealed blobs) under the data directory.
pub(crate) const BLOB_DIR: &str = "blobs";

/// `<data-dir>.key` beside the data directory.
pub(crate) fn default_key_file(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "brankas".into());
    name.push(".key");
    data_dir.with_file_name(name)
}

fn key_path(data_dir: &Path, key_file: Option<&Path>) -> Result<PathBuf> {
    let kp = key_file.map(Path::to_path_buf).unwrap_or_else(|| default_key_file(data_dir));
    // A key stored with the data it protects protects nothing: refuse it. Both paths are
    // resolved the way the OS will resolve them (symlinks of existing parts, then `..`), so
    // `--key-file other/../data/k` cannot slip past the check while `other` does not exist yet.
    if resolve(&kp).starts_with(resolve(data_dir)) {
        bail!("the key file must not be inside the data directory (a stolen copy of the directory would carry its own key)");
    }
    Ok(kp)
}

/// An absolute form of `p`: each `..` applies to the canonical (symlink-free) path before it
/// when that exists, lexically otherwise; the longest existing prefix is canonicalised.
fn resolve(p: &Path) -> PathBuf {
    use std::path::Component;
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    let mut cur = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                cur = cur.canonicalize().unwrap_or(cur);
                cur.pop();
            }
            other => cur.push(other),
        }
    }
    let mut base = cur.clone();
    let mut rest = Vec::new();
    while !base.exists() {
        match base.file_name() {
            Some(f) => {
                rest.push(f.to_os_string());
                base.pop();
            }
            None => break,
        }
    }
    let mut out = base.canonicalize().unwrap_or(base);
    out.extend(rest.iter().rev());
    out
}

/// An operator's reason for accepting older state: one line of text.
fn accept_reason(r: &str) -> Result<String> {
    let r = r.trim();
    if r.is_empty() || r.len() > 500 || r.chars().any(char::is_control) {
        bail!("the reason for accepting older state must be one line of 1 to 500 characters");
    }
    Ok(r.to_string())
}

/// Everything a command needs, opened from a data directory.
pub(crate) struct Opened {
    /// The directory's store behind its state anchor (see `anchor.rs`).
    pub store: Arc<dyn Store>,
    pub vault: Arc<Vault>,
    pub engine: Arc<Engine>,
    pub auth: Arc<Authority>,
    pub audit: Arc<AuditLog>,
    /// What was behind the anchor and accepted on opening (`--accept-state-rollback`).
    pub opening_behind: Vec<String>,
}

impl Opened {
    /// Audits an action of the operator's own tools on the data directory.
    pub(crate) fn audit_local(&self, interaction: &str, action: &str, target: Option<String>, ok: bool, text: Option<String>) -> Result<()> {
        self.audit_local_for(None, interaction, action, target, ok, text)
    }

    /// An administrative act done at the CLI with a client's own credentials (a security
    /// officer approving a request), audited under that client.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn audit_as(&self, client_id: &str, role: &str, interaction: &str, action: &str, target: Option<String>, ok: bool, text: Option<String>) -> Result<()> {
        let entry = brankas_audit::AuditEntry {
            interaction: interaction.into(),
            action: action.into(),
            outcome: Some(if ok { brankas_audit::Outcome::Success } else { brankas_audit::Outcome::MinorFailure }),
            outcome_text: text,
            client_id: client_id.into(),
            role: role.into(),
            target,
            ..Default::default()
        };
        self.audit.record_blocking(vec![brankas_audit::NewRecord { partition: None, client_id: client_id.into(), entry }]).context("the audit log cannot be written")?;
        Ok(())
    }

    /// [`Opened::audit_local`] on behalf of a facility (`brankas import --organization`).
    pub(crate) fn audit_local_for(&self, organization: Option<String>, interaction: &str, action: &str, target: Option<String>, ok: bool, text: Option<String>) -> Result<()> {
        let entry = brankas_audit::AuditEntry {
            organization,
            interaction: interaction.into(),
            action: action.into(),
            outcome: Some(if ok { brankas_audit::Outcome::Success } else { brankas_audit::Outcome::MinorFailure }),
            outcome_text: text,
            client_id: "local-operator".into(),
            role: "operator".into(),
            target,
            ..Default::default()
        };
        self.audit.record_blocking(vec![brankas_audit::NewRecord { partition: None, client_id: "local-operator".into(), entry }]).context("the audit log cannot be written")?;
        Ok(())
    }
}

/// The store and the vault of a data directory, without starting anything.
fn open_vault(data_dir: &Path, key_file: Option<&Path>) -> Result<(Arc<dyn Store>, Arc<Vault>)> {
    let kp = key_path(data_dir, key_file)?;
    let store = open_store(data_dir, false)?;
    let provider: Arc<dyn KeyProvider> = Arc::new(KeyFile::open(&kp).with_context(|| format!("opening key file {}", kp.display()))?);
    let root = store.get_meta(ROOT_META)?.context("the data directory has no system root key")?;
    let vault = Arc::new(erase::attach(Vault::open(provider, &WrappedKey::from_bytes(&root)?).context("the key file does not open this data directory")?, &kp)?);
    Ok((store, vault))
}

fn audit_verify(data_dir: &Path, key_file: Option<&Path>, checkpoint: Option<&Path>, archive: &[PathBuf]) -> Result<()> {
    let (store, vault) = open_vault(data_dir, key_file)?;
    let external = checkpoint.map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))).transpose()?;
    let archive = match archive {
        [] => None,
        dirs => match brankas_audit::archive::Archive::open(dirs) {
            Ok(a) => Some(a),
            Err(e) => {
                println!("{}", serde_json::json!({"intact": false, "failure": e.to_string()}));
                eprintln!("audit log NOT verified: {e}");
                std::process::exit(1);
            }
        },
    };
    let start = std::time::Instant::now();
    match brankas_audit::verify_with(&*store, &vault, external.as_deref(), archive.as_ref()) {
        Ok(r) => {
            println!(
                "{}",
                serde_json::json!({"intact": true, "records": r.records, "checkpoints": r.checkpoints, "signed_size": r.signed_size,
                    "first_checked": r.first_checked, "archived": r.archived,
                    "root": r.root.iter().map(|b| format!("{b:02x}")).collect::<String>(), "seconds": (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0})
            );
            if r.first_checked > 0 {
                eprintln!("records 0 to {} are archived and were not checked: give --archive DIR to verify them", r.first_checked - 1);
            }
            Ok(())
        }
        Err(f) => {
            println!("{}", serde_json::json!({"intact": false, "failure": f.to_string()}));
            eprintln!("audit log NOT intact: {f}");
            std::process::exit(1);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn breach_report(
    data_dir: &Path,
    key_file: Option<&Path>,
    client: Option<String>,
    address: Option<String>,
    admin: Option<String>,
    since: &str,
    until: Option<&str>,
    format: &str,
    lang: &str,
    contact: String,
) -> Result<()> {
    use brankas_audit::breach::{self, BreachQuery, Identity, Suspect};
    let since_us = breach::parse_time(since).context("--since must be RFC 3339 or YYYY-MM-DD")?;
    let until_us = until.map(|u| breach::parse_time(u).context("--until must be RFC 3339 or YYYY-MM-DD")).transpose()?;
    let o = open(data_dir, key_file)?;
    let suspect = match (client, address, admin) {
        (Some(c), _, _) => Suspect::Client(c),
        (None, Some(a), _) => Suspect::Address(a),
        (None, None, Some(a)) => Suspect::Clients { ids: o.auth.descendants(&a)?, label: format!("administrator {a} and the clients it registered or approved") },
        (None, None, None) => bail!("give --client, --admin or --address"),
    };
    let q = BreachQuery { suspect, since_us, until_us, contact };
    let who = brankas_auth::Principal::local_operator();
    let report = breach::breach_report(
        &o.audit,
        &q,
        // Each patient in the report is recorded below as the operator's disclosure.
        |id| o.engine.read(&who, "Patient", id).ok().map(|s| Identity::from_patient(&s.unreleased().resource)),
        |id| o.store.canaries_among(&[o.engine.patient_partition(id)]).is_ok_and(|c| !c.is_empty()),
    )?;
    // The report reveals identities: each patient in it is an audited disclosure.
    let records: Vec<brankas_audit::NewRecord> = report
        .patients
        .iter()
        .map(|p| brankas_audit::NewRecord {
            partition: Some(o.engine.patient_partition(&p.id)),
            client_id: "local-operator".into(),
            entry: brankas_audit::AuditEntry {
                interaction: "breach-report".into(),
                action: "E".into(),
                outcome: Some(brankas_audit::Outcome::Success),
                client_id: "local-operator".into(),
                role: "operator".into(),
                patient: Some(p.id.clone()),
                purpose: Some("HOPERAT".into()),
                ..Default::default()
            },
        })
        .collect();
    o.audit.record_blocking(records).context("the audit log cannot be written; no report")?;
    if format == "csv" {
        print!("{}", report.to_csv(lang));
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

fn audit_checkpoint(data_dir: &Path, key_file: Option<&Path>) -> Result<()> {
    let (store, vault) = open_vault(data_dir, key_file)?;
    let pk = vault.audit_public_key();
    let origin = brankas_audit::origin(&pk);
    let cp = store.audit_latest_checkpoint()?.context("no checkpoint has been signed yet")?;
    print!("{}", cp.note);
    eprintln!("verifier key: {}", brankas_audit::note::verifier_key(&origin, &pk));
    Ok(())
}

pub(crate) fn open(data_dir: &Path, key_file: Option<&Path>) -> Result<Opened> {
    open_with(data_dir, key_file, brankas_engine::AttachmentLimits::default(), None)
}

/// Audits (as the local operator) and alerts what opening found: a first anchor, or older
/// state accepted by the operator. Runs before the anchor is written: if the record cannot
/// be made, nothing is anchored and nothing starts.
fn record_opening(store: &Arc<dyn Store>, vault: &Arc<Vault>, kp: &Path, o: &anchor::Opening) -> Result<()> {
    let (interaction, text, kind, severity, detail) = match o {
        anchor::Opening::Current => return Ok(()),
        anchor::Opening::FirstAnchor => (
            "state-anchor-created",
            "no state anchor and no anchor mark: first anchored start".to_string(),
            "state-anchor-created",
            "warning",
            serde_json::json!({"anchor": format!("{}.anchor", kp.display())}),
        ),
        anchor::Opening::Accepted { reason, behind } => (
            "state-rollback-accepted",
            format!("older state accepted by the operator: {reason} (behind: {})", behind.join("; ")),
            "state-rollback-accepted",
            "critical",
            serde_json::json!({"reason": reason, "behind": behind}),
        ),
    };
    operator_act(store, vault, interaction, text, kind, severity, &detail, "nothing accepted")
}

/// An administrative act of the local operator on the data directory (an anchored opening, a
/// restore): its audit record (interaction `E`, the operator's words in `text`) is durable
/// before its alert is stored; `refused` says what did not happen if the record cannot be
/// written.
#[allow(clippy::too_many_arguments)]
pub(crate) fn operator_act(
    store: &Arc<dyn Store>,
    vault: &Arc<Vault>,
    interaction: &str,
    text: String,
    kind: &str,
    severity: &str,
    detail: &serde_json::Value,
    refused: &str,
) -> Result<()> {
    let audit = AuditLog::open(store.clone(), vault.clone()).context("opening the audit log")?;
    let entry = brankas_audit::AuditEntry {
        interaction: interaction.into(),
        action: "E".into(),
        outcome: Some(brankas_audit::Outcome::Success),
        outcome_text: Some(text),
        client_id: "local-operator".into(),
        role: "operator".into(),
        ..Default::default()
    };
    audit
        .record_blocking(vec![brankas_audit::NewRecord { partition: None, client_id: "local-operator".into(), entry }])
        .with_context(|| format!("the audit log cannot be written; {refused}"))?;
    drop(audit);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros() as i64;
    store.alert_add(&brankas_store::AlertRow { id: 0, time_us: now, kind: kind.into(), severity: severity.into(), client_id: None, detail: detail.to_string() })?;
    tracing::warn!(alert = kind, severity, "{interaction}");
    Ok(())
}

/// Opens a data directory: the database, its key provider, the vault, the attachment store
/// (`<data-dir>/blobs`) and the audit log, after checking the directory against its state
/// anchor (refused if behind, unless `accept` gives the operator's reason).
pub(crate) fn open_with(data_dir: &Path, key_file: Option<&Path>, attachments: brankas_engine::AttachmentLimits, accept: Option<String>) -> Result<Opened> {
    let kp = key_path(data_dir, key_file)?;
    let sqlite = open_store(data_dir, false)?;
    let provider: Arc<dyn KeyProvider> = Arc::new(KeyFile::open(&kp).with_context(|| format!("opening key file {}", kp.display()))?);
    let root = sqlite.get_meta(ROOT_META)?.context("the data directory has no system root key")?;
    let vault = Arc::new(erase::attach(Vault::open(provider, &WrappedKey::from_bytes(&root)?).context("the key file does not open this data directory")?, &kp)?);
    erase::apply_erasure_ledger(&*sqlite, &vault)?;
    let (anchored, opening) = anchor::open(sqlite.clone(), vault.clone(), &kp, accept.as_deref(), |o| record_opening(&sqlite, &vault, &kp, o))?;
    let opening_behind = match opening {
        anchor::Opening::Accepted { behind, .. } => behind,
        _ => Vec::new(),
    };
    drop(sqlite);
    let store: Arc<dyn Store> = Arc::new(anchored);
    let blobs = Arc::new(brankas_store::FileBlobStore::open(&data_dir.join(BLOB_DIR)).context("opening the attachment store")?);
    let engine = Arc::new(Engine::new(store.clone(), vault.clone()).with_blobs(blobs, attachments));
    let auth = Arc::new(Authority::new(store.clone(), vault.clone()));
    let audit = Arc::new(AuditLog::open(store.clone(), vault.clone()).context("opening the audit log")?);
    // Every write's audit record is durable before its data commits (write-ahead).
    engine.set_audit(audit.clone());
    Ok(Opened { store, vault, engine, auth, audit, opening_behind })
}

pub(crate) fn init(data_dir: &Path, key_file: Option<&Path>) -> Result<brankas_auth::NewClient> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let kp = key_path(data_dir, key_file)?;
    let store = open_store(data_dir, true)?;
    let provider: Arc<dyn KeyProvider> = if kp.exists() {
        Arc::new(KeyFile::open(&kp)?)
    } else {
        eprintln!("created master key file {} (keep it outside backups of the data directory)", kp.display());
        Arc::new(KeyFile::create(&kp)?)
    };
    let (vault, root) = Vault::create(provider)?;
    let vault = erase::attach(vault, &kp)?;
    store.put_meta(ROOT_META, &root.to_bytes())?;
    let vault = Arc::new(vault);
    let auth = Authority::new(store.clone(), vault.clone());
    let admin = auth.register(&bootstrap_admin(), &brankas_auth::Principal::local_operator())?.0;
    anchor::create(&*store, vault, &kp).context("writing the state anchor beside the key file")?;
    Ok(admin)
}

/// The first administrator: clients, keys and the directory, and no patient data.
fn bootstrap_admin() -> ClientSpec {
    let scopes: Vec<String> = brankas_auth::DIRECTORY_TYPES.iter().map(|t| format!("system/{t}.cruds")).collect();
    ClientSpec { name: "bootstrap admin".into(), role: Some(Role::Admin), scopes: scopes.join(" "), ..Default::default() }
}

pub(crate) enum Tls {
    None,
    SelfSigned,
    Files(PathBuf, PathBuf),
}

/// Printed once the server listens (the demo's instructions), given the base URL.
pub(crate) type Banner = Box<dyn FnOnce(&str) + Send>;

#[allow(clippy::too_many_arguments)]
pub(crate) fn serve(
    data_dir: &Path,
    key_file: Option<&Path>,
    listen: SocketAddr,
    tls: Tls,
    base_url: Option<String>,
    token_seconds: Option<u64>,
    webhook: Option<brankas_api::webhook::WebhookConfig>,
    banner: Option<Banner>,
    attachments: brankas_engine::AttachmentLimits,
    accept_state_rollback: Option<String>,
    conn: ConnArgs,
) -> Result<()> {
    verify::start_check(data_dir)?;
    let metrics = conn.metrics(data_dir)?;
    let cors = brankas_api::cors::layer(&conn.cors_origins)?;
    let o = open_with(data_dir, key_file, attachments, accept_state_rollback)?;
    let auth = match token_seconds {
        Some(s) => Arc::new(Authority::new(o.store.clone(), o.vault.clone()).with_token_seconds(s)),
        None => o.auth.clone(),
    };
    let (tls_cfg, fingerprint) = match &tls {
        Tls::None => (None, None),
        Tls::SelfSigned => {
            let (c, fp) = brankas_api::tls::load_or_create_self_signed(data_dir, vec!["localhost".into(), listen.ip().to_string()], &o.vault)?;
            (Some(c), Some(fp))
        }
        Tls::Files(c, k) => {
            let (c, fp) = brankas_api::tls::load(c, k)?;
            (Some(c), Some(fp))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = bind(listen).with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let scheme = if tls_cfg.is_some() { "https" } else { "http" };
        let host = if addr.ip().is_unspecified() { "localhost".to_string() } else { addr.to_string() };
        let host = if addr.ip().is_unspecified() { format!("{host}:{}", addr.port()) } else { host };
        let base = base_url.unwrap_or_else(|| format!("{scheme}://{host}/fhir"));
        o.engine.set_base_url(&base);
        let webhook = webhook.map(brankas_api::webhook::Webhook::start).transpose().map_err(|e| anyhow::anyhow!(e))?;
        let state = Arc::new(brankas_api::AppState {
            engine: o.engine.clone(),
            auth,
            base_url: base.clone(),
            limits: Default::default(),
            audit: o.audit.clone(),
            store: o.store.clone(),
            guard: Default::default(),
            webhook,
            metrics,
            cors: cors.is_some(),
        });
        let app = brankas_api::router(state);
        // Outermost: a preflight is answered before authentication, and every answer to an
        // allowed origin carries the headers.
        let app = match cors {
            Some(layer) => app.layer(layer),
            None => app,
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            let _ = tx.send(true);
        });
        if let Some(fp) = &fingerprint {
            eprintln!("TLS certificate SHA-256 fingerprint: {fp}");
        }
        println!("{}", serde_json::json!({"event": "listening", "address": addr.to_string(), "url": base, "tls_fingerprint": fingerprint}));
        if let Some(b) = banner {
            b(&base);
        }
        tracing::info!(%addr, "ready");
        brankas_api::serve(listener, app, brankas_api::ServeConfig { tls: tls_cfg, ..conn.config() }, rx).await?;
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    })
}

/// Listens with a deep accept queue (4,096, as the kernel allows), so a burst of connections
/// waits there for the accept loop, which sheds the stalled ones, instead of having its SYNs
/// dropped.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}

fn collect_inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(p)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|f| f.extension().is_some_and(|x| x == "json" || x == "ndjson" || x == "jsonl")).collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn import(data_dir: &Path, key_file: Option<&Path>, paths: &[PathBuf], quiet: bool, organization: Option<String>) -> Result<()> {
    if let Some(o) = &organization
        && !o.strip_prefix("Organization/").is_some_and(brankas_fhir::is_valid_id)
    {
        bail!("--organization must be Organization/<id>");
    }
    let o = open(data_dir, key_file)?;
    let files = collect_inputs(paths)?;
    let total: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let start = std::time::Instant::now();
    let importer = Importer::new(&o.engine, brankas_auth::Principal::local_operator_for(organization.clone()));
    let mut stats = ImportStats::default();
    let mut progress = |s: &ImportStats| {
        bar.set_position(s.bytes);
        bar.set_message(format!("{} resources, {} failed", s.resources, s.failed));
    };
    // Files are one stream of units (many small Bundle files share each group commit);
    // standard input, where named, is read as NDJSON at its place in the order.
    for run in files.split_inclusive(|f| f.as_os_str() == "-") {
        let (paths, stdin) = match run.split_last() {
            Some((last, rest)) if last.as_os_str() == "-" => (rest, true),
            _ => (run, false),
        };
        let mut r = importer.import_paths(paths, &mut stats, &mut progress);
        if stdin && r.is_ok() {
            r = importer.import_reader("stdin", true, std::io::stdin().lock(), &mut stats, &mut progress);
        }
        if let Err(e) = r {
            stats.failed += 1;
            stats.errors.push(e.to_string());
        }
    }
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    for e in &stats.errors {
        eprintln!("refused: {e}");
    }
    o.audit_local_for(
        organization.clone(),
        "import",
        "C",
        None,
        stats.failed == 0,
        Some(format!(
            "{} units, {} resources imported from {} files; {} skipped as already imported; {} refused",
            stats.units,
            stats.resources,
            files.len(),
            stats.skipped,
            stats.failed
        )),
    )?;
    println!(
        "{}",
        serde_json::json!({"files": files.len(), "units": stats.units, "resources": stats.resources, "skipped": stats.skipped, "failed": stats.failed,
            "seconds": (secs * 1000.0).round() / 1000.0, "resources_per_second": (stats.resources as f64 / secs.max(1e-9)).round()})
    );
    if stats.failed > 0 {
        std::process::exit(2);
    }
    Ok(())
}

fn rotate(data_dir: &Path, key_file: Option<&Path>) -> Result<()> {
    let o = open(data_dir, key_file)?;
    let new = o.vault.provider().rotate()?;
    // The shred keys are what the KEK wraps; the data keys under them stay as they are.
    let shred = o.vault.rewrap_shred_keys(new)?;
    let root = WrappedKey::from_bytes(&o.store.get_meta(ROOT_META)?.context("no root key")?)?;
    o.store.put_meta(ROOT_META, &o.vault.rewrap_root(&root, new)?.to_bytes())?;
    // Data keys still wrapped by a KEK directly (stored by an earlier release) move into their
    // shred-key bucket, from where an erasure reaches every later copy. Passes until one finds
    // none left: a server that created a data key just before it saw the shred keys is caught
    // by the next pass.
    let mut n = 0u64;
    for _pass in 0..10 {
        let mut after = None;
        let mut this_pass = 0u64;
        loop {
            let page = o.store.scan_deks(after.as_ref(), 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.partition);
            for d in page.iter() {
                let Some(w) = o.vault.migrate_data_key(&d.partition, &d.wrapped)? else { continue };
                if o.store.replace_dek(d, &brankas_store::StoredDek { partition: d.partition, wrapped: w })? {
                    this_pass += 1;
                }
            }
        }
        n += this_pass;
        if this_pass == 0 {
            break;
        }
    }
    o.audit_local("key-rotation", "U", None, true, Some(format!("{shred} shred keys rewrapped, {n} data keys moved into shred-key buckets")))?;
    println!("{}", serde_json::json!({"kek": new.to_string(), "rewrapped_shred_keys": shred, "migrated_data_keys": n}));
    Ok(())
}
