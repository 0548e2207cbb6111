//! The shared test harness: `spawn_app()` and its relatives.
//!
//! Postgres: `TESSERA_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! is a maintenance connection used to create one database per test, dropped when the test's
//! `TestApp` is dropped. Redis: `TESSERA_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`),
//! with a key prefix unique to the test, whose keys are deleted at the end.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use sqlx::{Connection, Executor, PgConnection, PgPool};
use tessera::config::{Environment, Settings};
use tessera::startup::{AppState, Application};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub fn maintenance_url() -> String {
    std::env::var("TESSERA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("TESSERA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var("TEST_LOG").is_ok() {
        let mut settings = test_settings();
        settings.telemetry.log_filter = "info,tessera=debug".to_owned();
        std::mem::forget(tessera::telemetry::init(&settings.telemetry));
    }
});

pub fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// The `test` environment's settings, independent of the shell's `TESSERA__*` variables.
pub fn test_settings() -> Settings {
    Settings::load_from(Environment::Test, &config_dir(), Some(Default::default())).expect("test configuration loads")
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    /// Owner connection to this test's database, for assertions and for tampering.
    pub db: PgPool,
    pub settings: Settings,
    pub state: AppState,
    database: Arc<TestDatabase>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request sent")
    }
}

/// A database created for one test and dropped with it.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    redis_prefix: String,
}

impl TestDatabase {
    pub async fn create() -> Arc<Self> {
        let name = format!("tessera_test_{}", uuid::Uuid::new_v4().simple());
        let mut maintenance = PgConnection::connect(&maintenance_url()).await.expect("Postgres is reachable");
        maintenance.execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#))).await.expect("create test database");
        let mut url = url::Url::parse(&maintenance_url()).expect("maintenance URL parses");
        url.set_path(&name);
        let redis_prefix = format!("tessera-test:{}", uuid::Uuid::new_v4().simple());
        Arc::new(Self { name, url: url.to_string(), redis_prefix })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let prefix = self.redis_prefix.clone();
        // Drop runs outside any runtime we may block on, so clean up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&maintenance_url()).await {
                    let _ = conn.execute(sqlx::AssertSqlSafe(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))).await;
                }
                if let Ok(client) = redis::Client::open(redis_url()) {
                    if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                        let keys: Vec<String> =
                            redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap_or_default();
                        if !keys.is_empty() {
                            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                        }
                    }
                }
            });
        })
        .join();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts Tessera on a random port with a fresh database; `customize` may adjust settings
/// (for example to point Postgres or Redis at an `Outage` proxy) before the app is built.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    LazyLock::force(&TRACING);
    let database = TestDatabase::create().await;
    let mut settings = test_settings();
    settings.database.url = database.url.clone();
    settings.redis.url = redis_url();
    settings.redis.key_prefix = database.redis_prefix.clone();
    settings.server.port = 0;

    let db = PgPool::connect(&database.url).await.expect("connect to test database");
    tessera::db::migrate(&db).await.expect("migrations apply");

    customize(&mut settings);
    let state = AppState::new(settings.clone()).expect("state builds");
    let app = Application::build(state.clone()).expect("application builds");
    let port = app.port();
    tokio::spawn(app.run_until_stopped());

    let scheme = if settings.server.tls.enabled { "https" } else { "http" };
    TestApp {
        address: format!("{scheme}://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        db,
        settings,
        state,
        database,
    }
}

/// A TCP proxy in front of a dependency that a test can take down and bring back, to observe
/// Tessera during an outage without disturbing the other tests sharing the real server.
pub struct Outage {
    pub port: u16,
    target: String,
    accept: Option<JoinHandle<()>>,
    connections: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Outage {
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut outage =
            Self { port, target: target.to_owned(), accept: None, connections: Default::default() };
        outage.accept = Some(outage.serve(listener));
        outage
    }

    fn serve(&self, listener: TcpListener) -> JoinHandle<()> {
        let target = self.target.clone();
        let connections = self.connections.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().unwrap().push(handle);
            }
        })
    }

    /// The dependency goes away: new connections are refused, open ones are cut.
    pub fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// The dependency comes back on the same port.
    pub async fn restore(&mut self) {
        // The aborted accept task releases its listener asynchronously; retry briefly.
        for _ in 0..50 {
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", self.port)).await {
                self.accept = Some(self.serve(listener));
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("could not re-bind the outage proxy on port {}", self.port);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Asserts a response is an RFC 9457 problem with the given status and code; returns the body.
pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let body: serde_json::Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["code"], code, "problem: {body}");
    assert_eq!(body["status"], status, "problem: {body}");
    assert_eq!(body["type"], format!("urn:tessera:problem:{code}"));
    assert!(body["title"].is_string() && body["detail"].is_string(), "problem: {body}");
    body
}

/// Polls `check` until it returns true or `seconds` pass.
pub async fn eventually<F, Fut>(seconds: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

pub fn db_host_port() -> String {
    let url = url::Url::parse(&maintenance_url()).unwrap();
    format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(5432))
}

pub fn redis_host_port() -> String {
    let url = url::Url::parse(&redis_url()).unwrap();
    format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(6379))
}
