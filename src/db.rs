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
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(settings.min_connections)
        .acquire_timeout(settings.acquire_timeout())
        .idle_timeout(Some(Duration::from_secs(300)))
        .test_before_acquire(false)
        .connect_lazy_with(options))
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
