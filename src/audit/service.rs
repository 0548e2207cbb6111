//! The audit log as tenants and compliance officers see it: reading a chain page by page,
//! starting an export (itself recorded), and the per-tenant settings.


use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::chain::ChainedEvent;
use super::export::{ExportFormat, ExportJob, ParsedFilters};
use super::notary::Notary;
use super::{AuditActor, AuditError, AuditEvent, Auditor, PLATFORM};
use crate::request::RequestInfo;
use crate::tenancy::db::TenantTx;
use crate::tenancy::TenantId;

crate::text_enum! {
    /// How a tenant's inference calls are recorded.
    #[derive(Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum InferenceAuditMode {
        /// One event per call (the default).
        EveryCall => "every_call",
        /// A random sample of calls, at `inference_sample_rate`.
        Sampled => "sampled",
        /// Counts per model and outcome over short windows.
        Aggregated => "aggregated",
    }
}

#[derive(Serialize, Deserialize, ToSchema, sqlx::FromRow)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Mask email addresses in event details (`a***@example.com`).
    pub mask_emails: bool,
    /// Keep only the /24 (IPv4) or /48 (IPv6) of client addresses.
    pub mask_client_addr: bool,
    /// How inference calls are recorded (`every_call` by default).
    pub inference_mode: InferenceAuditMode,
    /// For `sampled`: the fraction of calls recorded, in (0, 1].
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub inference_sample_rate: f64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self { mask_emails: false, mask_client_addr: false, inference_mode: InferenceAuditMode::EveryCall, inference_sample_rate: 1.0 }
    }
}

#[derive(Clone)]
pub struct AuditService {
    pool: PgPool,
    auditor: Auditor,
    notary: Notary,
}

impl AuditService {
    pub fn new(pool: PgPool, auditor: Auditor, notary: Notary) -> Self {
        Self { pool, auditor, notary }
    }

    /// Events of one chain (`PLATFORM` for the platform's) after sequence number `after`.
    pub async fn page(&self, chain: Uuid, filters: &ParsedFilters, after: Option<i64>, limit: i64) -> Result<Vec<ChainedEvent>, sqlx::Error> {
        let mut tx = TenantTx::begin(&self.pool, TenantId(chain)).await?;
        let events = super::export::page(tx.conn(), chain, filters, after, limit).await?;
        tx.commit().await?;
        Ok(events)
    }

    /// Records the export in the chain it reads, before it starts, then hands back the stream.
    pub async fn export(
        &self,
        chain: Uuid,
        scope: String,
        filters: ParsedFilters,
        format: ExportFormat,
        actor: AuditActor,
        details: serde_json::Value,
        info: &RequestInfo,
    ) -> Result<ExportJob, AuditError> {
        let event = AuditEvent::new(Some(TenantId(chain)).filter(|t| t.0 != PLATFORM), actor, "audit.exported")
            .resource("audit_log", &scope)
            .details(details);
        self.auditor.record_alone(&self.pool, info, vec![event]).await?;
        Ok(ExportJob { pool: self.pool.clone(), tenant: chain, scope, filters, format, notary: self.notary.clone() })
    }

    pub async fn settings(&self, tenant: TenantId) -> Result<AuditSettings, sqlx::Error> {
        let settings: Option<AuditSettings> = sqlx::query_as(
            "SELECT mask_emails, mask_client_addr, inference_mode, inference_sample_rate FROM audit_settings WHERE tenant_id = $1",
        )
        .bind(tenant.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(settings.unwrap_or_default())
    }

    /// Stores the settings and records the change in the same transaction.
    pub async fn set_settings(&self, tenant: TenantId, actor: AuditActor, settings: &AuditSettings, info: &RequestInfo) -> Result<(), AuditError> {
        if !(settings.inference_sample_rate > 0.0 && settings.inference_sample_rate <= 1.0) {
            return Err(AuditError::InvalidSampleRate);
        }
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        sqlx::query(
            "INSERT INTO audit_settings (tenant_id, mask_emails, mask_client_addr, inference_mode, inference_sample_rate) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id) DO UPDATE SET mask_emails = $2, mask_client_addr = $3, \
             inference_mode = $4, inference_sample_rate = $5",
        )
        .bind(tenant.0)
        .bind(settings.mask_emails)
        .bind(settings.mask_client_addr)
        .bind(settings.inference_mode)
        .bind(settings.inference_sample_rate)
        .execute(tx.conn())
        .await?;
        let event = AuditEvent::new(Some(tenant), actor, "audit.settings_changed")
            .resource("tenant", tenant)
            .details(serde_json::to_value(settings).unwrap_or_default());
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        self.auditor.settings_changed(tenant);
        Ok(())
    }
}
