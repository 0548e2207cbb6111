//! Retention: deleting old events without breaking verifiability. A signed checkpoint of the
//! last deleted event is recorded first, so the remaining chain is anchored to a signature;
//! the purge itself is then appended to the chain. Runs as the schema owner only.

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::chain::format_time;
use super::notary::Notary;
use crate::request::RequestInfo;
use super::{AuditActor, AuditEvent, Auditor, PLATFORM};

pub async fn purge(owner: &PgPool, tenant_slug: &str, before: OffsetDateTime, notary: &Notary) -> anyhow::Result<String> {
    let tenant: Uuid = if tenant_slug == "platform" {
        PLATFORM
    } else {
        sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1")
            .bind(tenant_slug)
            .fetch_optional(owner)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no tenant `{tenant_slug}`"))?
    };
    let mut tx = owner.begin().await?;
    // Hold the chain's head so no writer interleaves.
    sqlx::query("SELECT * FROM audit_lock_head($1)").bind(tenant).execute(&mut *tx).await?;
    let last: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT seq, hash FROM audit_events WHERE tenant_id = $1 AND occurred_at < $2 ORDER BY seq DESC LIMIT 1",
    )
    .bind(tenant)
    .bind(before)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((seq, hash)) = last else {
        return Ok(format!("nothing to purge for {tenant_slug} before {}", format_time(before)));
    };
    let (_, _) = notary.checkpoint(&mut tx, tenant, seq, &hash, "purge").await?;
    sqlx::query("SELECT set_config('tessera.audit_purge', 'on', true)").execute(&mut *tx).await?;
    let deleted = sqlx::query("DELETE FROM audit_events WHERE tenant_id = $1 AND seq <= $2")
        .bind(tenant)
        .bind(seq)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("SELECT set_config('tessera.audit_purge', 'off', true)").execute(&mut *tx).await?;
    let event = AuditEvent::new(
        (tenant != PLATFORM).then_some(crate::tenancy::TenantId(tenant)),
        AuditActor { kind: "system", id: None },
        "audit.purged",
    )
    .resource("audit_log", tenant_slug)
    .details(serde_json::json!({ "before": format_time(before), "through_seq": seq, "deleted": deleted }));
    Auditor::new()
        .record(&mut tx, &RequestInfo::command_line(), vec![event])
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    tx.commit().await?;
    Ok(format!("purged {deleted} events of {tenant_slug} through seq {seq}; checkpoint signed with key {}", notary.signer().key_id()))
}
