//! The `tessera` command line. Every subcommand loads and validates the configuration first;
//! a configuration problem ends the process with one line naming the key.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::request::RequestInfo;
use crate::config::Settings;
use crate::identity::Principal;
use crate::startup::{AppState, Application};

#[derive(Parser)]
#[command(name = "tessera", version, about = "Tessera: multi-tenant AI inference platform")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (applies migrations first when database.migrate_on_start is true).
    Serve,
    /// Apply the embedded database migrations and exit.
    Migrate {
        /// Apply nothing: exit 0 when the database has every migration of this build, 1
        /// otherwise (through the application's role, as an init container would).
        #[arg(long)]
        check: bool,
        /// With --check: keep checking, every two seconds, for up to this many seconds.
        #[arg(long, value_name = "SECONDS", requires = "check")]
        wait: Option<u64>,
    },
    /// Print the OpenAPI 3.1 document.
    Openapi {
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Platform administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage API keys.
    Apikey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// The audit log: verification and retention.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Key material.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Models on a running server (through its HTTP API).
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Run job workers only (no HTTP API): several processes on several machines sharing
    /// Postgres and Redis share the work. SIGTERM hands a running job back.
    Worker {
        /// Worker tasks in this process (default: jobs.workers, at least 1).
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Jobs on a running server (through its HTTP API).
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Base URL of the Tessera server.
    #[arg(long, env = "TESSERA_SERVER")]
    server: String,
    /// Access token or API key.
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
    token: String,
    /// The tenant (slug) the jobs run in.
    #[arg(long, env = "TESSERA_TENANT")]
    tenant: String,
}

#[derive(Subcommand)]
enum JobCommand {
    /// Submit a job from a JSON spec (the body of `POST /v1/tenants/{tenant}/jobs`), optionally uploading its
    /// dataset first, and follow its progress.
    Submit {
        /// The job spec, as JSON.
        spec: std::path::PathBuf,
        /// A CSV file to upload as the job's dataset (its id replaces `dataset` in the spec).
        #[arg(long)]
        dataset: Option<std::path::PathBuf>,
        /// Makes resubmission safe: the same key and spec give the same job.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Print the job id and return instead of following the job.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print a job as JSON.
    Status {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Follow a job's events until it finishes, with a progress bar on a terminal.
    Logs {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Upload a model artifact as a new version: hashed first, then streamed to the server,
    /// which verifies the SHA-256 (and, for ONNX, the model) before storing it.
    Upload(UploadArgs),
}

#[derive(clap::Args)]
struct UploadArgs {
    /// The artifact: an ONNX model, or Burn weights.
    file: std::path::PathBuf,
    /// Base URL of the Tessera server.
    #[arg(long, env = "TESSERA_SERVER")]
    server: String,
    /// Access token or API key.
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
    token: String,
    /// Tenant slug.
    #[arg(long)]
    tenant: String,
    /// Model name.
    #[arg(long)]
    model: String,
    /// Create the model first (an existing model of that name is fine).
    #[arg(long)]
    create: bool,
    /// With --create: the framework (default: onnx for a .onnx file).
    #[arg(long, value_enum, requires = "create")]
    framework: Option<FrameworkArg>,
    /// With --create: the model's description.
    #[arg(long, requires = "create")]
    description: Option<String>,
    /// With --create: a tag (repeatable).
    #[arg(long = "tag", requires = "create")]
    tags: Vec<String>,
    /// With --create: same inputs always give the same outputs, so results may be cached.
    #[arg(long, requires = "create")]
    deterministic: bool,
    /// Burn models: the architecture the weights belong to.
    #[arg(long)]
    architecture: Option<String>,
    /// Burn models: the architecture's configuration, as JSON.
    #[arg(long, requires = "architecture")]
    config: Option<String>,
    /// Show no progress bars (they are also hidden when standard error is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FrameworkArg {
    Onnx,
    Burn,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create the first platform administrator. The password is read from standard input (or
    /// TESSERA_BOOTSTRAP_PASSWORD). Refused once an administrator exists.
    Bootstrap {
        #[arg(long)]
        email: String,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    Create {
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
    },
    List,
    Suspend { slug: String },
    Resume { slug: String },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user to a tenant, creating the user when new (password from standard input or
    /// TESSERA_USER_PASSWORD).
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create an API key and print its secret (shown once).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify an export file offline, or (with --database) the live chains.
    Verify {
        /// An export (JSON Lines or CSV) from GET /v1/tenants/{tenant}/audit/export.
        file: Option<std::path::PathBuf>,
        /// Ed25519 public key (base64), or a file holding the key set from GET /v1/audit/keys.
        #[arg(long)]
        public_key: Option<String>,
        /// Check a file's hash chain only, knowingly leaving its signatures unchecked (without
        /// a key and without this flag, verification fails).
        #[arg(long, conflicts_with_all = ["public_key", "database"])]
        no_signatures: bool,
        /// Verify the chains in the database instead (uses database.migration_url).
        #[arg(long)]
        database: bool,
        /// With --database: only this tenant (slug, or `platform`).
        #[arg(long)]
        tenant: Option<String>,
        /// With --database: also hold the chains to the signed digests in the object store,
        /// which catch a rewrite of the database that recomputed every hash.
        #[arg(long, requires = "database")]
        digests: bool,
    },
    /// Delete a tenant's events older than a date, after signing a checkpoint that anchors the
    /// remaining chain. Recorded in the chain itself.
    Purge {
        #[arg(long)]
        tenant: String,
        /// RFC 3339 instant; events before it are deleted.
        #[arg(long)]
        before: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Re-wrap every tenant key under the first of registry.master_keys (artifacts are not
    /// re-encrypted), then list the master key ids still referenced; the others can be retired.
    RotateMaster,
    /// Print a new `kid:key` entry for registry.master_keys (put it first, then rotate-master).
    GenerateMaster {
        #[arg(long)]
        kid: String,
    },
    /// Print a new `kid:seed` entry for auth.jwt_signing_keys (put it first to rotate).
    GenerateJwt {
        #[arg(long)]
        kid: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the effective configuration and print it with secrets redacted.
    Check,
}

pub fn main() -> ExitCode {
    crate::tls::install_crypto_provider();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tessera: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_settings() -> Result<Settings, ExitCode> {
    Settings::load().map_err(|error| {
        eprintln!("tessera: {error}");
        ExitCode::from(2)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Openapi { output } => {
            let text = crate::api::openapi::spec_json();
            match output {
                Some(path) => std::fs::write(&path, text)?,
                None => std::io::stdout().write_all(text.as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { command: ConfigCommand::Check } => {
            let settings = match load_settings() {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            print!("{}", settings.redacted());
            eprintln!("tessera: configuration OK ({})", settings.environment.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { check: true, wait } => {
            let settings = match load_settings() {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            actix_web::rt::System::new().block_on(migrations_current(settings, wait.unwrap_or(0)))
        }
        Command::Migrate { check: false, .. } => {
            let settings = match load_settings() {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let _telemetry = crate::telemetry::init(&settings.telemetry)?;
            actix_web::rt::System::new().block_on(async {
                crate::db::migrate_with(&settings.database).await?;
                tracing::info!("migrations applied");
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command: KeysCommand::GenerateMaster { kid } } => {
            println!("{}", crate::crypto::generate_key_entry(&kid));
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command: KeysCommand::RotateMaster } => {
            let settings = match load_settings() {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            actix_web::rt::System::new().block_on(async move {
                let owner = sqlx::PgPool::connect_with(settings.database.migration_options()?).await?;
                let state = AppState::new(settings)?;
                let rewrapped = state.keys.rotate_master(&owner, &state.auditor).await?;
                let referenced = crate::registry::keys::KeyService::referenced_master_keys(&owner).await?;
                println!("re-wrapped {rewrapped} tenant keys; master keys still referenced: {}", referenced.join(", "));
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
        Command::Keys { command: KeysCommand::GenerateJwt { kid } } => {
            println!("{}", crate::crypto::generate_key_entry(&kid));
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command: AuditCommand::Verify { file, public_key, no_signatures, database, tenant, digests } } => {
            audit_verify(file, public_key, no_signatures, database, tenant, digests)
        }
        Command::Audit { command: AuditCommand::Purge { tenant, before } } => {
            let settings = match load_settings() {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            actix_web::rt::System::new().block_on(async move {
                let owner = sqlx::PgPool::connect_with(settings.database.migration_options()?).await?;
                let notary = notary(&settings)?;
                let before = time::OffsetDateTime::parse(&before, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| anyhow::anyhow!("--before must be an RFC 3339 instant"))?;
                let summary = crate::audit::retention::purge(&owner, &tenant, before, &notary).await?;
                println!("{summary}");
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
        Command::Model { command: ModelCommand::Upload(args) } => model_upload(args),
        Command::Job { command } => job_command(command),
        Command::Worker { concurrency } => {
            let settings = match load_settings() {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let _telemetry = crate::telemetry::init(&settings.telemetry)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(worker(settings, concurrency))
        }
        Command::Admin { command } => operate(|state| async move { admin(state, command).await }),
        Command::Tenant { command } => operate(|state| async move { tenant(state, command).await }),
        Command::User { command } => operate(|state| async move { user(state, command).await }),
        Command::Apikey { command } => operate(|state| async move { apikey(state, command).await }),
        Command::Serve => {
            let settings = match load_settings() {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let _telemetry = crate::telemetry::init(&settings.telemetry)?;
            actix_web::rt::System::new().block_on(serve(settings))
        }
    }
}

/// `tessera migrate --check`: whether the schema has every migration this build knows, so a
/// new release's pods wait for its migration job instead of serving an older schema.
async fn migrations_current(settings: Settings, wait_seconds: u64) -> anyhow::Result<ExitCode> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_seconds);
    loop {
        let outcome = async {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(std::time::Duration::from_secs(5))
                .connect_with(settings.database.connect_options()?)
                .await?;
            let pending = crate::db::pending_migrations(&pool).await;
            pool.close().await;
            anyhow::Ok(pending?)
        }
        .await;
        let waiting = match outcome {
            Ok(pending) if pending.is_empty() => {
                println!("tessera: every migration of this build is applied");
                return Ok(ExitCode::SUCCESS);
            }
            Ok(pending) => format!("{} migration(s) not applied (or changed since), the first {}", pending.len(), pending[0]),
            Err(e) => format!("cannot read the applied migrations: {e}"),
        };
        if std::time::Instant::now() >= deadline {
            eprintln!("tessera: {waiting}");
            return Ok(ExitCode::FAILURE);
        }
        tracing::debug!(%waiting, "waiting for migrations");
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// Exit code 2, as for a configuration error, when the database role may bypass row-level
/// security (checked after migrating, so that the tables it might own exist).
async fn refuse_privileged_role(settings: &Settings) -> Option<ExitCode> {
    let refusal = crate::db::refuse_privileged_role(&settings.database).await.err()?;
    eprintln!("tessera: {refusal}");
    Some(ExitCode::from(2))
}

async fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    let migrate = settings.database.migrate_on_start;
    let scheme = if settings.server.tls.enabled { "https" } else { "http" };
    let host = settings.server.host.clone();
    // ONNX Runtime first: a missing library is the likelier mistake and the clearer message.
    crate::inference::engine::OnnxRuntime::load(Some(&settings.inference.onnxruntime_path))
        .map_err(|e| anyhow::anyhow!("inference: {e}"))?;
    if migrate {
        crate::db::migrate_with(&settings.database).await?;
    }
    if let Some(code) = refuse_privileged_role(&settings).await {
        return Ok(code);
    }
    let app = Application::build(AppState::new(settings)?)?;
    let shown_host = if host == "0.0.0.0" { "127.0.0.1".to_owned() } else { host };
    tracing::info!(port = app.port(), "serving");
    println!("Tessera is serving at {scheme}://{shown_host}:{}  (API docs: /docs)", app.port());
    app.run_until_stopped().await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `tessera worker`: job workers and a dispatcher, until SIGTERM or SIGINT; then a running job
/// is handed back at its next progress report (or taken over by another worker should this
/// process not get that far).
async fn worker(settings: Settings, concurrency: Option<usize>) -> anyhow::Result<ExitCode> {
    crate::inference::engine::OnnxRuntime::load(Some(&settings.inference.onnxruntime_path))
        .map_err(|e| anyhow::anyhow!("inference: {e}"))?;
    if settings.database.migrate_on_start {
        crate::db::migrate_with(&settings.database).await?;
    }
    if let Some(code) = refuse_privileged_role(&settings).await {
        return Ok(code);
    }
    let count = concurrency.unwrap_or(settings.jobs.workers).max(1);
    let state = AppState::new(settings)?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut workers = state.jobs.start_workers(count, stopping.clone());
    workers.push(state.jobs.spawn_backlog_gauge(state.jobs_backlog.clone(), stopping));
    // The operators' listener, as beside the API: metrics, and liveness for an orchestrator.
    let metrics_server = crate::http::health::bind_metrics_server(&state.settings.telemetry, state.metrics.clone())?.map(|(port, server)| {
        tracing::info!(port, "metrics listener");
        let handle = server.handle();
        tokio::spawn(server);
        handle
    });
    tracing::info!(workers = count, "job workers started");
    println!("Tessera job workers running ({count})");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping: handing back running jobs");
    let _ = stop.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(60), futures::future::join_all(workers)).await;
    // Last, so that liveness holds while jobs are handed back.
    if let Some(handle) = metrics_server {
        handle.stop(false).await;
    }
    Ok(ExitCode::SUCCESS)
}

fn job_command(command: JobCommand) -> anyhow::Result<ExitCode> {
    use crate::client::Client;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result: Result<(), anyhow::Error> = runtime.block_on(async move {
        match command {
            JobCommand::Submit { spec, dataset, idempotency_key, detach, server } => {
                let client = Client::new(&server.server, server.token)?;
                let tenant = server.tenant;
                let text = std::fs::read_to_string(&spec).map_err(|e| anyhow::anyhow!("{}: {e}", spec.display()))?;
                let mut body: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", spec.display()))?;
                if let Some(path) = dataset {
                    let name = path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .map(|s| s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect::<String>())
                        .unwrap_or_else(|| "dataset".into());
                    let uploaded = client.upload_dataset(&tenant, &path, &name).await?;
                    eprintln!("dataset {} uploaded: {} rows", uploaded["id"].as_str().unwrap_or("?"), uploaded["rows"]);
                    body["dataset"] = uploaded["id"].clone();
                }
                let job = client.submit_job(&tenant, &body, idempotency_key.as_deref()).await?;
                let id = job["id"].as_str().unwrap_or_default().to_owned();
                println!("{id}");
                if detach { Ok(()) } else { follow(&client, &tenant, &id).await }
            }
            JobCommand::Status { id, server } => {
                let client = Client::new(&server.server, server.token)?;
                println!("{}", serde_json::to_string_pretty(&client.job(&server.tenant, &id).await?)?);
                Ok(())
            }
            JobCommand::Logs { id, server } => {
                let client = Client::new(&server.server, server.token)?;
                follow(&client, &server.tenant, &id).await
            }
        }
    });
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("tessera: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Prints a job's events as they come, with an epoch (or row) progress bar on a terminal;
/// fails unless the job succeeds.
async fn follow(client: &crate::client::Client, tenant: &str, id: &str) -> anyhow::Result<()> {
    use futures::StreamExt;
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:32}] {pos}/{len} {msg}").expect("the progress template is valid").progress_chars("=> "),
    );
    let mut events = Box::pin(client.job_events(tenant, id).await?);
    let mut last_status = String::new();
    while let Some(event) = events.next().await {
        let (kind, data) = event?;
        match kind.as_str() {
            "progress" => {
                if let (Some(epoch), Some(epochs)) = (data["epoch"].as_u64(), data["epochs"].as_u64()) {
                    bar.set_prefix("epoch");
                    bar.set_length(epochs);
                    bar.set_position(epoch);
                    let metric = ["accuracy", "rmse"].iter().find_map(|m| data[*m].as_f64().map(|v| format!("{m} {v:.4}")));
                    if let Some(loss) = data["train_loss"].as_f64() {
                        bar.set_message(format!("loss {loss:.4} {}", metric.unwrap_or_default()));
                    }
                } else if let (Some(done), Some(rows)) = (data["rows_done"].as_u64(), data["rows"].as_u64()) {
                    bar.set_prefix("rows");
                    bar.set_length(rows);
                    bar.set_position(done);
                }
                if bar.is_hidden() {
                    println!("progress {data}");
                }
            }
            _ => {
                bar.suspend(|| println!("{kind} {data}"));
                if let Some(status) = data["status"].as_str() {
                    last_status = status.to_owned();
                }
            }
        }
    }
    bar.finish_and_clear();
    match last_status.as_str() {
        "succeeded" => {
            let job = client.job(tenant, id).await?;
            println!("{}", serde_json::to_string_pretty(&job["result"])?);
            Ok(())
        }
        other => anyhow::bail!("job {id} ended {}", if other.is_empty() { "without a status" } else { other }),
    }
}

/// Runs an operator command against the configured database, through the same services the
/// HTTP API uses.
fn operate<F, Fut>(command: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(AppState) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    let settings = match load_settings() {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    actix_web::rt::System::new().block_on(async move {
        let state = AppState::new(settings)?;
        match command(state).await {
            Ok(output) => {
                println!("{output}");
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                eprintln!("tessera: {error}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

fn read_secret_input(env_var: &str) -> anyhow::Result<String> {
    if let Ok(value) = std::env::var(env_var) {
        return Ok(value);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| anyhow::anyhow!("reading the password from standard input: {e}"))?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        anyhow::bail!("no password: pipe it on standard input or set {env_var}");
    }
    Ok(password)
}

async fn tenant_by_slug(state: &AppState, slug: &str) -> anyhow::Result<std::sync::Arc<crate::tenancy::TenantInfo>> {
    state.tenants.by_slug(slug).await?.ok_or_else(|| anyhow::anyhow!("tenant `{slug}` not found"))
}

fn parse_role(role: &str) -> anyhow::Result<crate::identity::Role> {
    crate::identity::Role::parse(role)
        .ok_or_else(|| anyhow::anyhow!("unknown role `{role}` (owner, admin, ml_engineer, auditor, inference)"))
}

async fn admin(state: AppState, command: AdminCommand) -> anyhow::Result<String> {
    match command {
        AdminCommand::Bootstrap { email } => {
            let password = read_secret_input("TESSERA_BOOTSTRAP_PASSWORD")?;
            let id = state.identity.bootstrap_admin(&email, password, &RequestInfo::command_line()).await?;
            Ok(format!("platform administrator {email} created ({id})"))
        }
    }
}

async fn tenant(state: AppState, command: TenantCommand) -> anyhow::Result<String> {
    use crate::identity::admin::NewTenant;
    use crate::tenancy::{TenantSlug, TenantStatus};
    match command {
        TenantCommand::Create { slug, name } => {
            let slug = TenantSlug::parse(&slug)?;
            let view = state
                .tenant_admin
                .create_tenant(&Principal::operator(), NewTenant {
                    slug,
                    name,
                    limits: Default::default(),
                }, &RequestInfo::command_line())
                .await?;
            Ok(pretty(&view))
        }
        TenantCommand::List => {
            let mut lines = Vec::new();
            let mut page = crate::page::PageRequest::default();
            loop {
                let tenants = state.tenant_admin.list_tenants(&page).await?;
                lines.extend(tenants.items.iter().map(|t| format!("{}\t{}\t{}\t{}", t.slug, t.status, t.id, t.name)));
                match tenants.items.last() {
                    Some(last) if tenants.next_cursor.is_some() => page.after = Some(last.slug.clone()),
                    _ => break,
                }
            }
            Ok(lines.join("\n"))
        }
        TenantCommand::Suspend { slug } => {
            let t = tenant_by_slug(&state, &slug).await?;
            Ok(pretty(&state.tenant_admin.set_status(&Principal::operator(), t.id, TenantStatus::Suspended, &RequestInfo::command_line()).await?))
        }
        TenantCommand::Resume { slug } => {
            let t = tenant_by_slug(&state, &slug).await?;
            Ok(pretty(&state.tenant_admin.set_status(&Principal::operator(), t.id, TenantStatus::Active, &RequestInfo::command_line()).await?))
        }
    }
}

async fn user(state: AppState, command: UserCommand) -> anyhow::Result<String> {
    match command {
        UserCommand::Add { tenant, email, role } => {
            let role = parse_role(&role)?;
            let t = tenant_by_slug(&state, &tenant).await?;
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($1))")
                .bind(email.trim())
                .fetch_one(&state.db)
                .await?;
            let password = if exists { None } else { Some(read_secret_input("TESSERA_USER_PASSWORD")?) };
            let operator = crate::identity::Principal::operator();
            let member = state.tenant_admin.seed_member(&operator, &t, &email, role, password, &RequestInfo::command_line()).await?;
            Ok(pretty(&member))
        }
    }
}

async fn apikey(state: AppState, command: ApiKeyCommand) -> anyhow::Result<String> {
    match command {
        ApiKeyCommand::Create { tenant, name, role, expires_in_days } => {
            let role = parse_role(&role)?;
            let t = tenant_by_slug(&state, &tenant).await?;
            let operator = crate::identity::Principal::operator();
            let key = state
                .tenant_admin
                .create_api_key(&operator, &t, &name, role, expires_in_days, &RequestInfo::command_line())
                .await?;
            Ok(pretty(&key))
        }
    }
}

fn pretty<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// The checkpoint notary of an operator command: the configured signing keys and object store.
fn notary(settings: &Settings) -> anyhow::Result<crate::audit::notary::Notary> {
    let signer = crate::audit::signing::AuditSigner::new(secrecy::ExposeSecret::expose_secret(&settings.audit.signing_keys))
        .map_err(|e| anyhow::anyhow!("audit.signing_keys: {e}"))?;
    let store = crate::registry::store::ArtifactStore::from_settings(&settings.registry.storage)?.object_store();
    Ok(crate::audit::notary::Notary::new(std::sync::Arc::new(signer), store))
}

fn audit_verify(
    file: Option<std::path::PathBuf>,
    public_key: Option<String>,
    no_signatures: bool,
    database: bool,
    tenant: Option<String>,
    digests: bool,
) -> anyhow::Result<ExitCode> {
    use crate::audit::verify::{PublicKeys, Verdict, verify_database, verify_export};
    let keys = match public_key {
        None => PublicKeys::None,
        Some(text) => {
            let text = if std::path::Path::new(&text).is_file() { std::fs::read_to_string(&text)? } else { text };
            PublicKeys::parse(&text).map_err(|e| anyhow::anyhow!("--public-key: {e}"))?
        }
    };
    if !database {
        let Some(file) = file else {
            anyhow::bail!("give an export file, or --database");
        };
        if matches!(keys, PublicKeys::None) && !no_signatures {
            eprintln!(
                "tessera: no public key: give --public-key (the key set from GET /v1/audit/keys), \
                 or --no-signatures to check the hash chain alone"
            );
            return Ok(ExitCode::from(2));
        }
        let reader = std::io::BufReader::new(std::fs::File::open(&file)?);
        let verdict = verify_export(reader, &keys);
        println!("{}: {verdict}", file.display());
        return Ok(if matches!(verdict, Verdict::Ok { .. }) { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let settings = match load_settings() {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    actix_web::rt::System::new().block_on(async move {
        let owner = sqlx::PgPool::connect_with(settings.database.migration_options()?).await?;
        let only = match tenant.as_deref() {
            None => None,
            Some("platform") => Some(crate::audit::PLATFORM),
            Some(slug) => Some(
                sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM tenants WHERE slug = $1")
                    .bind(slug)
                    .fetch_optional(&owner)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no tenant `{slug}`"))?,
            ),
        };
        let keys = match keys {
            PublicKeys::None => {
                let signer = crate::audit::signing::AuditSigner::new(secrecy::ExposeSecret::expose_secret(&settings.audit.signing_keys))
                    .map_err(|e| anyhow::anyhow!("audit.signing_keys: {e}"))?;
                PublicKeys::parse(&signer.public_keys().to_string()).map_err(|e| anyhow::anyhow!(e))?
            }
            keys => keys,
        };
        let verdicts = verify_database(&owner, only, &keys).await?;
        let mut ok = true;
        for (tenant, verdict) in &verdicts {
            ok &= matches!(verdict, Verdict::Ok { .. });
            println!("{tenant}: {verdict}");
        }
        if verdicts.is_empty() {
            println!("no audit chains");
        }
        if digests {
            let store = crate::registry::store::ArtifactStore::from_settings(&settings.registry.storage)?.object_store();
            for (tenant, verdict) in crate::audit::verify::verify_digests(&owner, store.as_ref(), only, &keys).await? {
                ok &= matches!(verdict, Verdict::Ok { .. });
                match verdict {
                    Verdict::Ok { count, .. } => println!("{tenant}: digests OK: {count} signed digests agree with the chain"),
                    broken => println!("{tenant}: digests {broken}"),
                }
            }
        }
        anyhow::Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}

fn model_upload(args: UploadArgs) -> anyhow::Result<ExitCode> {
    use crate::client::{Artifact, Client, NewModel};
    use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

    if let Some(config) = &args.config {
        serde_json::from_str::<serde_json::Value>(config).map_err(|e| anyhow::anyhow!("--config is not JSON: {e}"))?;
    }
    let framework = match (args.create, args.framework) {
        (false, _) => None,
        (true, Some(FrameworkArg::Onnx)) => Some("onnx"),
        (true, Some(FrameworkArg::Burn)) => Some("burn"),
        (true, None) if args.file.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) => Some("onnx"),
        (true, None) => anyhow::bail!("--create needs --framework (onnx or burn) for {}", args.file.display()),
    };
    let len = std::fs::metadata(&args.file).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?.len();
    let client = Client::new(&args.server, args.token)?;
    let no_progress = args.no_progress;
    let bar = move |prefix: &'static str, len: u64| {
        if no_progress {
            return ProgressBar::hidden();
        }
        let style = ProgressStyle::with_template(
            "{prefix:>9} [{bar:32}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("the progress template is valid")
        .progress_chars("=> ");
        // Draws to standard error, and not at all when that is not a terminal.
        ProgressBar::new(len).with_style(style).with_prefix(prefix)
    };

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let hashing = bar("hashing", len);
        let (sha256, len) = {
            let hashing = hashing.clone();
            crate::client::sha256_file(&args.file, move |n| hashing.inc(n))
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?
        };
        hashing.finish_and_clear();

        let outcome = async {
            if let Some(framework) = framework {
                let new = NewModel {
                    name: &args.model,
                    framework,
                    description: args.description.as_deref().unwrap_or_default(),
                    tags: &args.tags,
                    deterministic: args.deterministic,
                };
                if !client.create_model(&args.tenant, &new).await? {
                    eprintln!("tessera: model {} already exists; adding a version", args.model);
                }
            }
            let uploading = bar("uploading", len);
            let artifact = Artifact {
                path: &args.file,
                len,
                sha256: &sha256,
                architecture: args.architecture.as_deref(),
                config: args.config.as_deref(),
            };
            let progress = uploading.clone();
            let result = client
                .upload_version(&args.tenant, &args.model, &artifact, move |n| {
                    progress.inc(n);
                    if progress.position() >= len {
                        progress.set_message("(server verifying)");
                    }
                })
                .await;
            uploading.finish_and_clear();
            result
        };
        let version = match outcome.await {
            Ok(version) => version,
            Err(problem @ crate::client::ClientError::Problem { .. }) => {
                eprintln!("tessera: {problem}");
                return Ok(ExitCode::FAILURE);
            }
            Err(error) => return Err(error.into()),
        };

        println!("{} version {}", version.model, version.version);
        println!("  size     {} ({} bytes)", HumanBytes(version.size_bytes), version.size_bytes);
        println!("  sha256   {}", version.sha256);
        if let Some(signature) = version.signature {
            match serde_json::from_value::<crate::registry::onnx::ModelSignature>(signature) {
                Ok(signature) => {
                    println!("  inputs   {}", tensors(&signature.inputs));
                    println!("  outputs  {}", tensors(&signature.outputs));
                }
                Err(_) => println!("  signature present"),
            }
        }
        if let Some(burn) = version.burn {
            println!("  burn     {burn}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `name FP32[-1,3], other INT64[?]`: a signature's tensors on one line (`?` = dynamic).
fn tensors(specs: &[crate::registry::onnx::TensorSpec]) -> String {
    if specs.is_empty() {
        return "(none)".to_owned();
    }
    specs
        .iter()
        .map(|t| {
            let dims: Vec<String> =
                t.shape.iter().map(|d| if *d < 0 { "?".to_owned() } else { d.to_string() }).collect();
            format!("{} {}[{}]", t.name, t.datatype, dims.join(","))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
