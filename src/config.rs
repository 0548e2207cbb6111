//! Typed, layered configuration.
//!
//! Layers, later wins: the defaults compiled into the binary (`config/default.toml`), then
//! `<config dir>/<environment>.toml`, then `TESSERA__SECTION__KEY` environment variables.
//! The environment is chosen by `TESSERA_ENV` (`development` when unset). Loading validates
//! everything and fails with one line naming the offending key: a process never starts on a
//! half-understood configuration.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../config/default.toml");
/// The ceiling of `inference.max_cache_ttl_seconds`.
pub const MAX_CACHE_TTL_SECONDS: u64 = 30 * 24 * 3600;
const ENV_PREFIX: &str = "TESSERA";

/// Secret settings: never accepted from a configuration file, only from `TESSERA__…`
/// environment variables or from a file named by the matching `…_file` key.
const SECRET_KEYS: &[&str] = &[
    "database.password",
    "database.migration_password",
    "auth.api_key_secret",
    "auth.jwt_signing_keys",
    "audit.signing_keys",
    "registry.master_keys",
    "telemetry.metrics_token",
];

/// Stand-ins that make development and tests work out of the box. Production refuses them.
const DEV_API_KEY_SECRET: &str = "dev-insecure-api-key-secret-change-me-0123456789";
/// `kid:base64url(32-byte Ed25519 seed)`; the seed is public knowledge, so production refuses it.
const DEV_JWT_SIGNING_KEYS: &str = "dev-insecure-1:ZGV2LWluc2VjdXJlLWVkMjU1MTktc2VlZC0wMDAwMDA";
const DEV_MASTER_KEYS: &str = "dev-insecure-master-1:ZGV2LWluc2VjdXJlLW1hc3Rlci1rZXktMDAwMDAwMDA";
const DEV_AUDIT_SIGNING_KEYS: &str = "dev-insecure-audit-1:ZGV2LWluc2VjdXJlLWF1ZGl0LXNlZWQtMDAwMDAwMDA";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Test,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Test => "test",
            Environment::Production => "production",
        }
    }
}

impl FromStr for Environment {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.to_ascii_lowercase().as_str() {
            "development" | "dev" | "local" => Ok(Environment::Development),
            "test" => Ok(Environment::Test),
            "production" | "prod" => Ok(Environment::Production),
            other => Err(ConfigError::new(
                "TESSERA_ENV",
                format!("unknown environment `{other}` (expected development, test or production)"),
            )),
        }
    }
}

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub environment: Environment,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub telemetry: TelemetrySettings,
    pub inference: InferenceSettings,
    pub auth: AuthSettings,
    pub audit: AuditConfig,
    pub registry: RegistrySettings,
    pub jobs: JobsSettings,
    pub usage: UsageSettings,
}

/// Usage counted in memory by each process and added to Postgres in the background.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageSettings {
    /// How often counts are added to Postgres (and so how stale a usage read may be).
    pub flush_interval_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistrySettings {
    #[serde(default)]
    master_keys: Option<SecretString>,
    #[serde(default)]
    master_keys_file: Option<PathBuf>,
    max_artifact_bytes: u64,
    storage: StorageSettings,
}

#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// `kid:base64url(32-byte AES key)[,…]`: the first wraps new tenant keys, all unwrap.
    pub master_keys: SecretString,
    /// Largest single artifact accepted, whatever the tenant's quota.
    pub max_artifact_bytes: u64,
    pub storage: StorageSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageBackend {
    Local,
    S3,
}

impl StorageBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageBackend::Local => "local",
            StorageBackend::S3 => "s3",
        }
    }
}

/// Where encrypted artifacts live. S3 credentials come from the standard `AWS_*` environment
/// variables, never from configuration files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub backend: StorageBackend,
    /// Local backend: the directory (created if missing).
    pub path: PathBuf,
    #[serde(default)]
    pub s3_bucket: Option<String>,
    /// S3-compatible endpoint (MinIO, Ceph, ...); empty for AWS itself.
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    #[serde(default)]
    pub s3_region: Option<String>,
    #[serde(default)]
    pub s3_allow_http: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuditSettings {
    #[serde(default)]
    signing_keys: Option<SecretString>,
    #[serde(default)]
    signing_keys_file: Option<PathBuf>,
    checkpoint_interval_seconds: u64,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// `kid:base64url(seed)[,…]`: Ed25519 keys for checkpoints and export manifests.
    pub signing_keys: SecretString,
    /// How often every chain's head is signed as a checkpoint (0 = only on export).
    pub checkpoint_interval_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// The Open Inference Protocol over gRPC, on a port of its own (same host and TLS).
    pub grpc_enabled: bool,
    pub grpc_port: u16,
    /// A gRPC connection on which no call starts for this long (up to twice) is told to go away.
    pub grpc_idle_seconds: u64,
    /// gRPC connections open at once, in all and per client (an IPv4 address or an IPv6 /64;
    /// trusted proxies count only in all); past either, a new one is closed as it is accepted.
    pub grpc_max_connections: usize,
    pub grpc_max_connections_per_client: usize,
    pub workers: usize,
    pub max_body_bytes: usize,
    /// On SIGTERM: serve on, failing readiness and closing connections, this long first.
    pub drain_seconds: u64,
    pub shutdown_grace_seconds: u64,
    pub keep_alive_seconds: u64,
    pub tls: TlsSettings,
    /// Reverse proxies (addresses or CIDR networks) whose `X-Forwarded-For` names the client.
    /// A list in files; comma-separated in `TESSERA__SERVER__TRUSTED_PROXIES`.
    #[serde(default, deserialize_with = "list_or_commas")]
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub enabled: bool,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The application's connection: a role without ownership and without BYPASSRLS.
    pub url: String,
    /// The schema owner's connection, used only to apply migrations (defaults to `url`).
    #[serde(default)]
    pub migration_url: Option<String>,
    #[serde(default)]
    pub password: Option<SecretString>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The schema owner's password, for `migration_url`.
    #[serde(default)]
    pub migration_password: Option<SecretString>,
    #[serde(default)]
    pub migration_password_file: Option<PathBuf>,
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout_ms: u64,
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: String,
    pub key_prefix: String,
    pub connect_timeout_ms: u64,
    pub response_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Training and batch inference jobs, dispatched to workers through a Redis stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsSettings {
    /// Job workers inside `tessera serve` (0 = this process only serves the API; run
    /// `tessera worker` processes). `tessera worker` runs `max(workers, 1)`.
    pub workers: usize,
    /// A job whose worker has not renewed its claim for this long is taken over by another.
    pub visibility_timeout_ms: u64,
    /// Attempts before a failing job is dead-lettered.
    pub max_attempts: u32,
    /// Back-off before retry n: base × 2^(n-1), capped at `retry_max_backoff_ms`.
    pub retry_base_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    /// Largest dataset one upload may carry (the CSV text).
    pub max_dataset_bytes: u64,
    /// How often a dispatcher looks for due jobs that are not in the stream.
    pub dispatch_interval_ms: u64,
    /// How often an event stream (`/v1/tenants/{tenant}/jobs/{id}/events`) looks for news.
    pub events_poll_ms: u64,
}

/// Serving defaults; a model's own `serving` settings override the per-model ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceSettings {
    /// `libonnxruntime.so`; empty = the `ORT_DYLIB_PATH` environment variable.
    pub onnxruntime_path: PathBuf,
    /// Sessions (each on its own thread) per loaded model version.
    pub instances: usize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_op_threads: usize,
    /// Jobs waiting per model version before requests are turned away (503 + Retry-After).
    pub queue_capacity: usize,
    /// Dynamic batching: most rows run together (1 = off) and the longest wait for company.
    pub max_batch_size: usize,
    pub max_queue_delay_us: u64,
    /// Largest inference request body (the admin API keeps `server.max_body_bytes`).
    pub max_request_bytes: usize,
    /// Loaded models are evicted, least recently used first, above this many artifact bytes.
    pub memory_budget_bytes: u64,
    /// Deadline of a request that sets none, and the cap on one it sets.
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    /// Result cache TTL for deterministic models (0 = no caching unless the model sets one).
    pub cache_ttl_seconds: u64,
    /// The longest TTL any model may ask for: one tenant's results cannot fill the shared
    /// Redis for weeks.
    pub max_cache_ttl_seconds: u64,
    /// The most worker threads (sessions × intra-op threads, over its loaded versions) one
    /// tenant holds at once; beyond, its least recently used versions are unloaded.
    pub tenant_max_threads: usize,
    /// A cache lookup slower than this is abandoned and the request served without it.
    pub cache_timeout_ms: u64,
    /// Results larger than this are served but not cached: one tenant's large outputs cannot
    /// fill the Redis that every tenant's cache, rate limits and jobs share.
    pub cache_max_entry_bytes: usize,
    /// How long a resolved (model, version or alias) is reused before asking Postgres again.
    pub resolve_ttl_ms: u64,
    /// Versions behind these aliases are loaded at start and whenever the alias moves, so
    /// their first request does not pay for decryption and session creation.
    pub eager_aliases: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_filter: String,
    pub service_name: String,
    pub otlp: OtlpSettings,
    /// Where `/metrics` is served, apart from the API: metrics name tenants and models, so
    /// they are for operators only. Empty: not served at all.
    pub metrics_address: String,
    /// When set, the metrics listener also requires `Authorization: Bearer <token>` (for a
    /// listener that is not on loopback).
    #[serde(default)]
    pub metrics_token: Option<SecretString>,
    #[serde(default)]
    pub metrics_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSettings {
    pub endpoint: String,
    pub timeout_ms: u64,
    pub sample_ratio: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthSettings {
    #[serde(default)]
    api_key_secret: Option<SecretString>,
    #[serde(default)]
    api_key_secret_file: Option<PathBuf>,
    #[serde(default)]
    jwt_signing_keys: Option<SecretString>,
    #[serde(default)]
    jwt_signing_keys_file: Option<PathBuf>,
    issuer: String,
    audience: String,
    access_token_ttl_seconds: u64,
    refresh_token_ttl_seconds: u64,
    argon2_memory_kib: u32,
    argon2_iterations: u32,
    argon2_parallelism: u32,
    login_max_failures_per_account: u32,
    login_max_accounts_per_client: u32,
    login_backoff_seconds: u64,
    login_lockout_seconds: u64,
    password_hash_concurrency: usize,
    invitation_ttl_seconds: u64,
    password_reset_ttl_seconds: u64,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Key of the HMAC that turns API key secrets into stored digests.
    pub api_key_secret: SecretString,
    /// `kid:base64url(seed)[,kid:seed…]`: the first key signs, all of them verify.
    pub jwt_signing_keys: SecretString,
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl_seconds: u64,
    pub refresh_token_ttl_seconds: u64,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Failed logins on one account from one client before back-off starts.
    pub login_max_failures_per_account: u32,
    /// Distinct accounts one client may fail on within the window (password spraying).
    pub login_max_accounts_per_client: u32,
    /// The first back-off; it doubles with each further failure, up to the window.
    pub login_backoff_seconds: u64,
    /// How long failures are remembered, and the longest back-off.
    pub login_lockout_seconds: u64,
    /// Password hashes computed at once (0 = one per core); beyond, 503 with `Retry-After`.
    pub password_hash_concurrency: usize,
    /// How long an invitation to a tenant can be accepted.
    pub invitation_ttl_seconds: u64,
    /// How long a password reset token issued by a platform administrator can be redeemed.
    pub password_reset_ttl_seconds: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    server: ServerSettings,
    database: DatabaseSettings,
    redis: RedisSettings,
    telemetry: TelemetrySettings,
    inference: InferenceSettings,
    auth: RawAuthSettings,
    audit: RawAuditSettings,
    registry: RawRegistrySettings,
    jobs: JobsSettings,
    usage: UsageSettings,
}

impl DatabaseSettings {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }

    /// Connection options with the password (if any) applied from its secret source.
    pub fn connect_options(&self) -> Result<sqlx::postgres::PgConnectOptions, ConfigError> {
        let mut options = sqlx::postgres::PgConnectOptions::from_str(&self.url)
            .map_err(|e| ConfigError::new("database.url", format!("not a valid Postgres URL: {e}")))?;
        if let Some(password) = &self.password {
            options = options.password(password.expose_secret());
        }
        Ok(options.application_name("tessera"))
    }

    /// The migrating connection: `migration_url`, or the application's when unset.
    pub fn migration_options(&self) -> Result<sqlx::postgres::PgConnectOptions, ConfigError> {
        match &self.migration_url {
            Some(url) if !url.is_empty() => {
                let mut options = sqlx::postgres::PgConnectOptions::from_str(url)
                    .map_err(|e| ConfigError::new("database.migration_url", format!("not a valid Postgres URL: {e}")))?;
                if let Some(password) = &self.migration_password {
                    options = options.password(password.expose_secret());
                }
                Ok(options.application_name("tessera-migrate"))
            }
            _ => self.connect_options(),
        }
    }
}

impl RedisSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }
}

fn list_or_commas<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCommas {
        List(Vec<String>),
        Commas(String),
    }
    Ok(match ListOrCommas::deserialize(deserializer)? {
        ListOrCommas::List(list) => list,
        ListOrCommas::Commas(text) => text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
    })
}

impl ServerSettings {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }
}

/// Where the environment's TOML file is looked up: `TESSERA_CONFIG_DIR`, else `./config`.
pub fn config_dir() -> PathBuf {
    std::env::var_os("TESSERA_CONFIG_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("config"))
}

impl Settings {
    /// Loads the configuration of the process: `TESSERA_ENV`, the config directory and the
    /// real environment variables.
    pub fn load() -> Result<Settings, ConfigError> {
        let environment = match std::env::var("TESSERA_ENV") {
            Ok(value) => value.parse()?,
            Err(_) => Environment::Development,
        };
        Self::load_from(environment, &config_dir(), None)
    }

    /// Loads with an explicit environment and config directory. `env_override` replaces the
    /// process environment (tests use it to stay independent of the shell they run in).
    pub fn load_from(
        environment: Environment,
        dir: &Path,
        env_override: Option<config::Map<String, String>>,
    ) -> Result<Settings, ConfigError> {
        let env_file = dir.join(format!("{}.toml", environment.as_str()));
        let file_layer = config::File::from(env_file.clone()).required(false);

        // Secrets must not be written into files, whichever file it is.
        let files_only = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(file_layer.clone())
            .build()
            .map_err(|e| ConfigError::new(env_file.display().to_string(), e.to_string()))?;
        for key in SECRET_KEYS {
            if files_only.get::<config::Value>(key).is_ok() {
                return Err(ConfigError::new(
                    *key,
                    format!(
                        "is a secret and may not appear in a configuration file; set TESSERA__{} or {key}_file",
                        key.replace('.', "__").to_ascii_uppercase()
                    ),
                ));
            }
        }

        let env_source = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .ignore_empty(true)
            .source(env_override);
        let merged = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(file_layer)
            .add_source(env_source)
            .build()
            .map_err(|e| ConfigError::new("configuration", e.to_string()))?;
        let raw: RawSettings = merged.try_deserialize().map_err(config_error_to_key)?;
        Self::finish(environment, raw)
    }

    fn finish(environment: Environment, raw: RawSettings) -> Result<Settings, ConfigError> {
        let RawSettings { server, mut database, redis, mut telemetry, inference, auth, audit, registry, jobs, usage } = raw;

        if let Some(path) = database.password_file.take() {
            database.password = Some(read_secret_file("database.password_file", &path)?);
        }
        if let Some(path) = database.migration_password_file.take() {
            database.migration_password = Some(read_secret_file("database.migration_password_file", &path)?);
        }
        if let Some(path) = telemetry.metrics_token_file.take() {
            telemetry.metrics_token = Some(read_secret_file("telemetry.metrics_token_file", &path)?);
        }
        let api_key_secret =
            required_secret(environment, "auth.api_key_secret", auth.api_key_secret, auth.api_key_secret_file, DEV_API_KEY_SECRET)?;
        let jwt_signing_keys = required_secret(
            environment,
            "auth.jwt_signing_keys",
            auth.jwt_signing_keys,
            auth.jwt_signing_keys_file,
            DEV_JWT_SIGNING_KEYS,
        )?;

        let audit_signing_keys = required_secret(
            environment,
            "audit.signing_keys",
            audit.signing_keys,
            audit.signing_keys_file,
            DEV_AUDIT_SIGNING_KEYS,
        )?;

        let master_keys = required_secret(
            environment,
            "registry.master_keys",
            registry.master_keys,
            registry.master_keys_file,
            DEV_MASTER_KEYS,
        )?;

        let settings = Settings {
            environment,
            registry: RegistrySettings {
                master_keys,
                max_artifact_bytes: registry.max_artifact_bytes,
                storage: registry.storage,
            },
            audit: AuditConfig {
                signing_keys: audit_signing_keys,
                checkpoint_interval_seconds: audit.checkpoint_interval_seconds,
            },
            server,
            database,
            redis,
            telemetry,
            inference,
            jobs,
            usage,
            auth: AuthSettings {
                api_key_secret,
                jwt_signing_keys,
                issuer: auth.issuer,
                audience: auth.audience,
                access_token_ttl_seconds: auth.access_token_ttl_seconds,
                refresh_token_ttl_seconds: auth.refresh_token_ttl_seconds,
                argon2_memory_kib: auth.argon2_memory_kib,
                argon2_iterations: auth.argon2_iterations,
                argon2_parallelism: auth.argon2_parallelism,
                login_max_failures_per_account: auth.login_max_failures_per_account,
                login_max_accounts_per_client: auth.login_max_accounts_per_client,
                login_backoff_seconds: auth.login_backoff_seconds,
                login_lockout_seconds: auth.login_lockout_seconds,
                password_hash_concurrency: auth.password_hash_concurrency,
                invitation_ttl_seconds: auth.invitation_ttl_seconds,
                password_reset_ttl_seconds: auth.password_reset_ttl_seconds,
            },
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.host.trim().is_empty() {
            return Err(ConfigError::new("server.host", "must not be empty"));
        }
        crate::net::TrustedProxies::parse(&s.trusted_proxies).map_err(|e| ConfigError::new("server.trusted_proxies", e))?;
        if s.grpc_enabled && s.grpc_port != 0 && s.grpc_port == s.port {
            return Err(ConfigError::new("server.grpc_port", "must differ from server.port"));
        }
        if s.grpc_idle_seconds == 0 || s.grpc_idle_seconds > 86_400 {
            return Err(ConfigError::new("server.grpc_idle_seconds", "must be between 1 and 86400"));
        }
        if s.grpc_max_connections == 0 || s.grpc_max_connections > 1_000_000 {
            return Err(ConfigError::new("server.grpc_max_connections", "must be between 1 and 1000000"));
        }
        if s.grpc_max_connections_per_client == 0 || s.grpc_max_connections_per_client > s.grpc_max_connections {
            return Err(ConfigError::new("server.grpc_max_connections_per_client", "must be between 1 and server.grpc_max_connections"));
        }
        if s.max_body_bytes < 1024 {
            return Err(ConfigError::new("server.max_body_bytes", "must be at least 1024"));
        }
        if s.tls.enabled {
            for (key, path) in [("server.tls.cert_path", &s.tls.cert_path), ("server.tls.key_path", &s.tls.key_path)] {
                if path.as_os_str().is_empty() {
                    return Err(ConfigError::new(key, "must be set when server.tls.enabled is true"));
                }
                if !path.is_file() {
                    return Err(ConfigError::new(key, format!("no readable file at {}", path.display())));
                }
            }
        }
        let db = &self.database;
        db.connect_options()?;
        db.migration_options()?;
        if db.max_connections == 0 {
            return Err(ConfigError::new("database.max_connections", "must be at least 1"));
        }
        if db.min_connections > db.max_connections {
            return Err(ConfigError::new("database.min_connections", "must not exceed database.max_connections"));
        }
        redis::Client::open(self.redis.url.as_str())
            .map_err(|e| ConfigError::new("redis.url", format!("not a valid Redis URL: {e}")))?;
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(char::is_whitespace) {
            return Err(ConfigError::new("redis.key_prefix", "must be non-empty and contain no whitespace"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_filter)
            .map_err(|e| ConfigError::new("telemetry.log_filter", e.to_string()))?;
        let otlp = &self.telemetry.otlp;
        if !otlp.endpoint.is_empty() && !(otlp.endpoint.starts_with("http://") || otlp.endpoint.starts_with("https://")) {
            return Err(ConfigError::new("telemetry.otlp.endpoint", "must be an http:// or https:// URL, or empty"));
        }
        if !(0.0..=1.0).contains(&otlp.sample_ratio) {
            return Err(ConfigError::new("telemetry.otlp.sample_ratio", "must be between 0.0 and 1.0"));
        }
        let metrics = &self.telemetry.metrics_address;
        if !metrics.is_empty() {
            let address = metrics.parse::<std::net::SocketAddr>().map_err(|_| {
                ConfigError::new("telemetry.metrics_address", "must be an IP address and port (e.g. 127.0.0.1:9464), or empty")
            })?;
            if !address.ip().is_loopback() && self.telemetry.metrics_token.is_none() {
                return Err(ConfigError::new(
                    "telemetry.metrics_token",
                    "is required when telemetry.metrics_address is not on loopback (metrics name tenants and models)",
                ));
            }
        }
        if self.telemetry.metrics_token.as_ref().is_some_and(|t| t.expose_secret().len() < 16) {
            return Err(ConfigError::new("telemetry.metrics_token", "must be at least 16 bytes"));
        }

        let api_key_secret = self.auth.api_key_secret.expose_secret();
        if self.environment == Environment::Production && api_key_secret == DEV_API_KEY_SECRET {
            return Err(ConfigError::new(
                "auth.api_key_secret",
                "is the development secret; production refuses to start with it",
            ));
        }
        if api_key_secret.len() < 32 {
            return Err(ConfigError::new("auth.api_key_secret", "must be at least 32 bytes"));
        }
        let jwt_keys = self.auth.jwt_signing_keys.expose_secret();
        if self.environment == Environment::Production && jwt_keys.contains(DEV_JWT_SIGNING_KEYS) {
            return Err(ConfigError::new(
                "auth.jwt_signing_keys",
                "contains the development key; production refuses to start with it",
            ));
        }
        crate::crypto::parse_key_entries(jwt_keys).map_err(|e| ConfigError::new("auth.jwt_signing_keys", e))?;
        let audit_keys = self.audit.signing_keys.expose_secret();
        if self.environment == Environment::Production && audit_keys.contains(DEV_AUDIT_SIGNING_KEYS) {
            return Err(ConfigError::new(
                "audit.signing_keys",
                "contains the development key; production refuses to start with it",
            ));
        }
        crate::crypto::parse_key_entries(audit_keys).map_err(|e| ConfigError::new("audit.signing_keys", e))?;
        let master_keys = self.registry.master_keys.expose_secret();
        if self.environment == Environment::Production && master_keys.contains(DEV_MASTER_KEYS) {
            return Err(ConfigError::new(
                "registry.master_keys",
                "contains the development key; production refuses to start with it",
            ));
        }
        crate::crypto::MasterKeys::parse(master_keys).map_err(|e| ConfigError::new("registry.master_keys", e))?;
        let i = &self.inference;
        if i.instances == 0 || i.instances > 64 {
            return Err(ConfigError::new("inference.instances", "must be between 1 and 64"));
        }
        if i.queue_capacity == 0 {
            return Err(ConfigError::new("inference.queue_capacity", "must be at least 1"));
        }
        if i.max_batch_size == 0 {
            return Err(ConfigError::new("inference.max_batch_size", "must be at least 1"));
        }
        if i.intra_op_threads == 0 || i.intra_op_threads > 64 {
            return Err(ConfigError::new("inference.intra_op_threads", "must be between 1 and 64"));
        }
        if i.max_cache_ttl_seconds > MAX_CACHE_TTL_SECONDS {
            return Err(ConfigError::new("inference.max_cache_ttl_seconds", "must be at most 2592000 (30 days)"));
        }
        if i.cache_ttl_seconds > i.max_cache_ttl_seconds {
            return Err(ConfigError::new("inference.cache_ttl_seconds", "must be at most inference.max_cache_ttl_seconds"));
        }
        if i.tenant_max_threads == 0 || i.tenant_max_threads > 1024 {
            return Err(ConfigError::new("inference.tenant_max_threads", "must be between 1 and 1024"));
        }
        if i.cache_timeout_ms == 0 {
            return Err(ConfigError::new("inference.cache_timeout_ms", "must be at least 1"));
        }
        if i.cache_max_entry_bytes == 0 || i.cache_max_entry_bytes > 512 << 20 {
            return Err(ConfigError::new("inference.cache_max_entry_bytes", "must be between 1 and 536870912 (512 MiB)"));
        }
        if i.max_request_bytes == 0 || i.max_request_bytes > 1 << 30 {
            return Err(ConfigError::new("inference.max_request_bytes", "must be between 1 and 1073741824"));
        }
        if i.default_timeout_ms == 0 || i.default_timeout_ms > i.max_timeout_ms {
            return Err(ConfigError::new("inference.default_timeout_ms", "must be between 1 and inference.max_timeout_ms"));
        }
        let j = &self.jobs;
        if j.workers > 64 {
            return Err(ConfigError::new("jobs.workers", "must be at most 64"));
        }
        if j.visibility_timeout_ms < 1000 {
            return Err(ConfigError::new("jobs.visibility_timeout_ms", "must be at least 1000"));
        }
        if j.max_attempts == 0 || j.max_attempts > 100 {
            return Err(ConfigError::new("jobs.max_attempts", "must be between 1 and 100"));
        }
        if j.retry_base_backoff_ms > j.retry_max_backoff_ms {
            return Err(ConfigError::new("jobs.retry_base_backoff_ms", "must not exceed jobs.retry_max_backoff_ms"));
        }
        if j.max_dataset_bytes == 0 {
            return Err(ConfigError::new("jobs.max_dataset_bytes", "must be greater than 0"));
        }
        if j.dispatch_interval_ms == 0 || j.events_poll_ms == 0 {
            return Err(ConfigError::new("jobs.dispatch_interval_ms", "intervals must be at least 1 ms"));
        }
        if !(1..=3600).contains(&self.usage.flush_interval_seconds) {
            return Err(ConfigError::new("usage.flush_interval_seconds", "must be between 1 and 3600"));
        }
        if self.registry.max_artifact_bytes == 0 {
            return Err(ConfigError::new("registry.max_artifact_bytes", "must be greater than 0"));
        }
        let storage = &self.registry.storage;
        match storage.backend {
            StorageBackend::Local if storage.path.as_os_str().is_empty() => {
                return Err(ConfigError::new("registry.storage.path", "must name a directory for the local backend"));
            }
            StorageBackend::S3 if storage.s3_bucket.as_deref().unwrap_or("").is_empty() => {
                return Err(ConfigError::new("registry.storage.s3_bucket", "is required for the s3 backend"));
            }
            _ => {}
        }
        let a = &self.auth;
        if a.access_token_ttl_seconds < 30 || a.access_token_ttl_seconds > 86_400 {
            return Err(ConfigError::new("auth.access_token_ttl_seconds", "must be between 30 and 86400"));
        }
        if a.refresh_token_ttl_seconds < a.access_token_ttl_seconds {
            return Err(ConfigError::new("auth.refresh_token_ttl_seconds", "must be at least auth.access_token_ttl_seconds"));
        }
        if !(60..=30 * 86_400).contains(&a.invitation_ttl_seconds) {
            return Err(ConfigError::new("auth.invitation_ttl_seconds", "must be between 60 and 2592000"));
        }
        if !(60..=86_400).contains(&a.password_reset_ttl_seconds) {
            return Err(ConfigError::new("auth.password_reset_ttl_seconds", "must be between 60 and 86400"));
        }
        if a.login_max_failures_per_account == 0 || a.login_max_accounts_per_client == 0 {
            return Err(ConfigError::new("auth.login_max_failures_per_account", "login limits must be at least 1"));
        }
        if a.login_backoff_seconds == 0 || a.login_backoff_seconds > a.login_lockout_seconds {
            return Err(ConfigError::new("auth.login_backoff_seconds", "must be between 1 and auth.login_lockout_seconds"));
        }
        if a.argon2_memory_kib < 8 * a.argon2_parallelism || a.argon2_iterations == 0 || a.argon2_parallelism == 0 {
            return Err(ConfigError::new("auth.argon2_memory_kib", "argon2 parameters are out of range"));
        }
        Ok(())
    }

    /// The effective configuration as TOML-like text with every secret replaced by `[redacted]`.
    pub fn redacted(&self) -> String {
        RedactedSettings(self).to_string()
    }
}

/// A secret from its value or its file; in development and test a missing one falls back to
/// the development stand-in, in production it is an error.
fn required_secret(
    environment: Environment,
    key: &str,
    value: Option<SecretString>,
    file: Option<PathBuf>,
    development: &str,
) -> Result<SecretString, ConfigError> {
    match (value, file) {
        (_, Some(path)) => read_secret_file(&format!("{key}_file"), &path),
        (Some(secret), None) => Ok(secret),
        (None, None) if environment == Environment::Production => Err(ConfigError::new(
            key,
            format!(
                "is required in production (set TESSERA__{} or {key}_file)",
                key.replace('.', "__").to_ascii_uppercase()
            ),
        )),
        (None, None) => Ok(SecretString::from(development.to_owned())),
    }
}

fn read_secret_file(key: &str, path: &Path) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(ConfigError::new(key, format!("{} is empty", path.display())));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

/// The config crate phrases errors as "... for key `a.b` in ..."; keep them on one line and
/// lead with the key when it can be found.
fn config_error_to_key(error: config::ConfigError) -> ConfigError {
    let message = error.to_string().replace('\n', " ");
    let key = message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("for key"))
        .map(str::to_owned)
        .unwrap_or_else(|| "configuration".to_owned());
    ConfigError::new(key, message)
}

struct RedactedSettings<'a>(&'a Settings);

fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:[redacted]@{host}"),
                None => url.to_owned(),
            },
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl fmt::Display for RedactedSettings<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let secret = |present: bool| if present { "\"[redacted]\"" } else { "\"\" # not set" };
        writeln!(f, "environment = \"{}\"", s.environment.as_str())?;
        writeln!(f, "\n[server]")?;
        writeln!(f, "host = {:?}\nport = {}\nworkers = {}", s.server.host, s.server.port, s.server.workers)?;
        writeln!(f, "grpc_enabled = {}\ngrpc_port = {}", s.server.grpc_enabled, s.server.grpc_port)?;
        writeln!(f, "grpc_idle_seconds = {}", s.server.grpc_idle_seconds)?;
        writeln!(f, "grpc_max_connections = {}", s.server.grpc_max_connections)?;
        writeln!(f, "grpc_max_connections_per_client = {}", s.server.grpc_max_connections_per_client)?;
        writeln!(f, "max_body_bytes = {}", s.server.max_body_bytes)?;
        writeln!(f, "drain_seconds = {}", s.server.drain_seconds)?;
        writeln!(f, "shutdown_grace_seconds = {}", s.server.shutdown_grace_seconds)?;
        writeln!(f, "keep_alive_seconds = {}", s.server.keep_alive_seconds)?;
        writeln!(f, "trusted_proxies = {:?}", s.server.trusted_proxies)?;
        writeln!(f, "\n[server.tls]\nenabled = {}", s.server.tls.enabled)?;
        writeln!(f, "cert_path = {:?}\nkey_path = {:?}", s.server.tls.cert_path, s.server.tls.key_path)?;
        writeln!(f, "\n[database]\nurl = {:?}", redact_url(&s.database.url))?;
        writeln!(f, "password = {}", secret(s.database.password.is_some()))?;
        writeln!(f, "migration_url = {:?}", s.database.migration_url.as_deref().map(redact_url).unwrap_or_default())?;
        writeln!(f, "migration_password = {}", secret(s.database.migration_password.is_some()))?;
        writeln!(f, "max_connections = {}\nmin_connections = {}", s.database.max_connections, s.database.min_connections)?;
        writeln!(f, "acquire_timeout_ms = {}", s.database.acquire_timeout_ms)?;
        writeln!(f, "migrate_on_start = {}", s.database.migrate_on_start)?;
        writeln!(f, "\n[redis]\nurl = {:?}", redact_url(&s.redis.url))?;
        writeln!(f, "key_prefix = {:?}", s.redis.key_prefix)?;
        writeln!(f, "connect_timeout_ms = {}\nresponse_timeout_ms = {}", s.redis.connect_timeout_ms, s.redis.response_timeout_ms)?;
        writeln!(f, "\n[telemetry]\nlog_format = {:?}", format!("{:?}", s.telemetry.log_format).to_lowercase())?;
        writeln!(f, "log_filter = {:?}\nservice_name = {:?}", s.telemetry.log_filter, s.telemetry.service_name)?;
        writeln!(f, "metrics_address = {:?}", s.telemetry.metrics_address)?;
        writeln!(f, "metrics_token = {}", secret(s.telemetry.metrics_token.is_some()))?;
        writeln!(f, "\n[telemetry.otlp]\nendpoint = {:?}", s.telemetry.otlp.endpoint)?;
        writeln!(f, "timeout_ms = {}\nsample_ratio = {}", s.telemetry.otlp.timeout_ms, s.telemetry.otlp.sample_ratio)?;
        let a = &s.auth;
        writeln!(f, "\n[auth]\napi_key_secret = {}\njwt_signing_keys = {}", secret(true), secret(true))?;
        writeln!(f, "issuer = {:?}\naudience = {:?}", a.issuer, a.audience)?;
        writeln!(f, "access_token_ttl_seconds = {}\nrefresh_token_ttl_seconds = {}", a.access_token_ttl_seconds, a.refresh_token_ttl_seconds)?;
        writeln!(f, "argon2_memory_kib = {}\nargon2_iterations = {}\nargon2_parallelism = {}", a.argon2_memory_kib, a.argon2_iterations, a.argon2_parallelism)?;
        writeln!(f, "login_max_failures_per_account = {}\nlogin_max_accounts_per_client = {}", a.login_max_failures_per_account, a.login_max_accounts_per_client)?;
        writeln!(f, "login_backoff_seconds = {}\nlogin_lockout_seconds = {}", a.login_backoff_seconds, a.login_lockout_seconds)?;
        writeln!(f, "password_hash_concurrency = {}", a.password_hash_concurrency)?;
        writeln!(f, "invitation_ttl_seconds = {}\npassword_reset_ttl_seconds = {}", a.invitation_ttl_seconds, a.password_reset_ttl_seconds)?;
        writeln!(f, "\n[audit]\nsigning_keys = {}", secret(true))?;
        writeln!(f, "checkpoint_interval_seconds = {}", s.audit.checkpoint_interval_seconds)?;
        let i = &s.inference;
        writeln!(f, "\n[inference]\nonnxruntime_path = {:?}\ninstances = {}\nintra_op_threads = {}", i.onnxruntime_path, i.instances, i.intra_op_threads)?;
        writeln!(f, "queue_capacity = {}\nmax_batch_size = {}\nmax_queue_delay_us = {}", i.queue_capacity, i.max_batch_size, i.max_queue_delay_us)?;
        writeln!(f, "max_request_bytes = {}", i.max_request_bytes)?;
        writeln!(f, "memory_budget_bytes = {}\ndefault_timeout_ms = {}\nmax_timeout_ms = {}", i.memory_budget_bytes, i.default_timeout_ms, i.max_timeout_ms)?;
        writeln!(f, "cache_ttl_seconds = {}\ncache_timeout_ms = {}\nresolve_ttl_ms = {}", i.cache_ttl_seconds, i.cache_timeout_ms, i.resolve_ttl_ms)?;
        writeln!(f, "cache_max_entry_bytes = {}", i.cache_max_entry_bytes)?;
        writeln!(f, "eager_aliases = {:?}", i.eager_aliases)?;
        let r = &s.registry;
        writeln!(f, "\n[registry]\nmaster_keys = {}\nmax_artifact_bytes = {}", secret(true), r.max_artifact_bytes)?;
        writeln!(f, "\n[registry.storage]\nbackend = {:?}\npath = {:?}", r.storage.backend.as_str(), r.storage.path)?;
        writeln!(f, "s3_bucket = {:?}\ns3_endpoint = {:?}", r.storage.s3_bucket, r.storage.s3_endpoint)?;
        writeln!(f, "s3_region = {:?}\ns3_allow_http = {}", r.storage.s3_region, r.storage.s3_allow_http)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<config::Map<String, String>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    #[test]
    fn defaults_load_in_development() {
        let s = Settings::load_from(Environment::Development, &dir(), env(&[])).unwrap();
        assert_eq!(s.server.port, 8080);
    }

    #[test]
    fn environment_variables_override_files() {
        let s = Settings::load_from(Environment::Development, &dir(), env(&[("TESSERA__SERVER__PORT", "9999")])).unwrap();
        assert_eq!(s.server.port, 9999);
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let e = Settings::load_from(Environment::Development, &dir(), env(&[("TESSERA__SERVER__PORT", "nope")])).unwrap_err();
        assert_eq!(e.key, "server.port", "{e}");
    }

    #[test]
    fn production_requires_a_real_secret() {
        let e = Settings::load_from(Environment::Production, &dir(), env(&[])).unwrap_err();
        assert_eq!(e.key, "auth.api_key_secret");
        let e = Settings::load_from(
            Environment::Production,
            &dir(),
            env(&[
                ("TESSERA__AUTH__API_KEY_SECRET", DEV_API_KEY_SECRET),
                ("TESSERA__AUTH__JWT_SIGNING_KEYS", "prod-1:cHJvZHVjdGlvbi1rZXktc2VlZC0wMDAwMDAwMDAwMDA"),
                ("TESSERA__AUDIT__SIGNING_KEYS", "audit-1:cHJvZHVjdGlvbi1rZXktc2VlZC0wMDAwMDAwMDAwMDA"),
                ("TESSERA__REGISTRY__MASTER_KEYS", "master-1:cHJvZHVjdGlvbi1rZXktc2VlZC0wMDAwMDAwMDAwMDA"),
            ]),
        )
        .unwrap_err();
        assert!(e.message.contains("development secret"), "{e}");
        let e = Settings::load_from(
            Environment::Production,
            &dir(),
            env(&[
                ("TESSERA__AUTH__API_KEY_SECRET", "a-production-secret-of-enough-length-42"),
                ("TESSERA__AUTH__JWT_SIGNING_KEYS", DEV_JWT_SIGNING_KEYS),
                ("TESSERA__AUDIT__SIGNING_KEYS", "audit-1:cHJvZHVjdGlvbi1rZXktc2VlZC0wMDAwMDAwMDAwMDA"),
                ("TESSERA__REGISTRY__MASTER_KEYS", "master-1:cHJvZHVjdGlvbi1rZXktc2VlZC0wMDAwMDAwMDAwMDA"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.key, "auth.jwt_signing_keys", "{e}");
        let ok = Settings::load_from(
            Environment::Production,
            &dir(),
            env(&[
                ("TESSERA__AUTH__API_KEY_SECRET", "a-production-secret-of-enough-length-42"),
                ("TESSERA__AUTH__JWT_SIGNING_KEYS", "prod-1:cHJvZHVjdGlvbi1rZXktc2VlZC0wMDAwMDAwMDAwMDA"),
                ("TESSERA__AUDIT__SIGNING_KEYS", "audit-1:cHJvZHVjdGlvbi1rZXktc2VlZC0wMDAwMDAwMDAwMDA"),
                ("TESSERA__REGISTRY__MASTER_KEYS", "master-1:cHJvZHVjdGlvbi1rZXktc2VlZC0wMDAwMDAwMDAwMDA"),
            ]),
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
    }

    #[test]
    fn secrets_in_files_are_refused() {
        let tmp = std::env::temp_dir().join(format!("tessera-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("development.toml"), "[database]\npassword = \"hunter2\"\n").unwrap();
        let e = Settings::load_from(Environment::Development, &tmp, env(&[])).unwrap_err();
        assert_eq!(e.key, "database.password");
        std::fs::remove_dir_all(tmp).unwrap();
    }

    #[test]
    fn redaction_hides_secrets_and_url_passwords() {
        let s = Settings::load_from(
            Environment::Development,
            &dir(),
            env(&[("TESSERA__DATABASE__URL", "postgres://app:topsecret@db/tessera")]),
        )
        .unwrap();
        let text = s.redacted();
        assert!(!text.contains("topsecret"));
        assert!(!text.contains(DEV_API_KEY_SECRET));
        assert!(text.contains("[redacted]"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Settings::load_from(Environment::Development, &dir(), env(&[("TESSERA__SERVER__PROT", "1")])).unwrap_err();
        assert!(e.to_string().contains("prot"), "{e}");
    }
}
