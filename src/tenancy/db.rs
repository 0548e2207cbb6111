//! Tenant-scoped transactions: the only way tenant-owned tables are read or written.
//!
//! `begin` sets `app.tenant_id` transaction-locally, so a pooled connection can never carry
//! one tenant's context into another request; row-level security does the rest.

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::TenantId;

pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    tenant: TenantId,
    /// Open for as long as the transaction: the request's trace shows its time in Postgres.
    _span: tracing::Span,
}

fn transaction_span() -> tracing::Span {
    tracing::debug_span!(target: crate::telemetry::CLIENT_SPANS, "postgres.transaction", otel.kind = "client", db.system = "postgresql")
}

impl TenantTx {
    pub async fn begin(pool: &PgPool, tenant: TenantId) -> Result<Self, sqlx::Error> {
        let span = transaction_span();
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(tenant.0.to_string())
            .execute(&mut *tx)
            .await?;
        Ok(Self { tx, tenant, _span: span })
    }

    /// A read-only transaction over one consistent snapshot (long reads such as exports).
    pub async fn begin_snapshot(pool: &PgPool, tenant: TenantId) -> Result<Self, sqlx::Error> {
        let span = transaction_span();
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(tenant.0.to_string())
            .execute(&mut *tx)
            .await?;
        Ok(Self { tx, tenant, _span: span })
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// A transaction acting for one user across its own memberships (login, `GET /v1/me`).
pub async fn begin_as_user(pool: &PgPool, user: uuid::Uuid) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.user_id', $1, true)").bind(user.to_string()).execute(&mut *tx).await?;
    Ok(tx)
}
