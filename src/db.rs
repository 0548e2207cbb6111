//! Postgres: the connection pool and the embedded migrations.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::DatabaseSettings;

/// Migrations are compiled into the binary, so a deployed `tessera` carries its own schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool that connects on demand: the process starts (and reports "not ready") while
/// Postgres is down, and recovers by itself once it is back.
pub fn connect_lazy(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options = settings.connect_options()?;
    let port = options.get_port();
    Ok(PgPoolOptions::new()
        .after_connect(move |_, _| {
            Box::pin(async move {
                disable_nagle(port);
                Ok(())
            })
        })
        .max_connections(settings.max_connections)
        .min_connections(settings.min_connections)
        .acquire_timeout(settings.acquire_timeout())
        .idle_timeout(Some(Duration::from_secs(300)))
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// Sets TCP_NODELAY on this process's TCP connections to Postgres (`port`).
///
/// sqlx 0.9.0 connects without it (sqlx issue #4335, fixed upstream after that release). A
/// statement that leaves the client in more than one write, such as an audit batch, then
/// waits for the server's delayed ACK under Nagle's algorithm: a 40 ms stall for a statement
/// Postgres runs in 5. Called for every new pooled connection; sockets that already have it
/// are left alone. Remove once the sqlx release in use sets it itself.
fn disable_nagle(port: u16) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::{BorrowedFd, RawFd};
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        for entry in entries.flatten() {
            let is_socket = std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()).filter(|_| is_socket) else {
                continue;
            };
            // SAFETY: the descriptor is borrowed only for these system calls. Were it closed
            // meanwhile, they fail (EBADF); were its number reused, the peer check below keeps
            // anything but a Postgres connection untouched.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            let to_postgres = socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
                && socket.peer_addr().ok().and_then(|a| a.as_socket()).is_some_and(|a| a.port() == port);
            if to_postgres && socket.tcp_nodelay().is_ok_and(|on| !on) {
                let _ = socket.set_tcp_nodelay(true);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = port;
}

/// Applies migrations over the schema owner's connection (`database.migration_url`).
pub async fn migrate_with(settings: &DatabaseSettings) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new().max_connections(1).connect_with(settings.migration_options()?).await?;
    migrate(&pool).await?;
    pool.close().await;
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.map_err(|e| anyhow::anyhow!("applying migrations failed: {e}"))
}

pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|e| e.is_unique_violation())
}

/// `SELECT 1` within `timeout`: the readiness probe.
pub async fn ping(pool: &PgPool, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(pool)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}
