//! `/v1/audit/*`: reading, exporting and configuring the audit log; the signing keys.

use actix_web::{HttpResponse, get, post, put, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::chain::ChainedEvent;
use super::export::{AuditFilters, ExportFormat};
use super::service::{AuditService, AuditSettings};
use super::signing::PublicKeySet;
use super::{AuditActor, PLATFORM};
use crate::error::{ApiError, Code};
use crate::http::guard::{Guarded, TenantPath, tenant_not_found};
use crate::identity::{Principal, perm};
use crate::request::RequestInfo;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScopeQuery {
    /// Platform administrators: the tenant (slug) whose log to read; `platform` for the
    /// platform log. Others read their own tenant's log and may only name it.
    pub tenant: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// From `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1-1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FormatQuery {
    /// `jsonl` (default) or `csv`.
    // Inline: the document would otherwise refer to a schema it never defines.
    #[param(inline)]
    pub format: Option<ExportFormat>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<ChainedEvent>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Which chain a request reads: (tenant id, label).
async fn scope(audit: &AuditService, principal: &Principal, requested: Option<&str>) -> Result<(Uuid, String), ApiError> {
    match requested {
        Some("platform") if principal.platform_admin => Ok((PLATFORM, "platform".to_owned())),
        Some(slug) => {
            let tenant = audit.tenant(slug).await?.ok_or_else(|| tenant_not_found(slug))?;
            let own = principal.tenant.as_ref().is_some_and(|t| t.id == tenant.id);
            if own || principal.platform_admin { Ok((tenant.id.0, tenant.slug.clone())) } else { Err(tenant_not_found(slug)) }
        }
        None => match &principal.tenant {
            Some(t) => Ok((t.id.0, t.slug.clone())),
            None if principal.platform_admin => Ok((PLATFORM, "platform".to_owned())),
            None => Err(ApiError::new(Code::TenantRequired, "name a tenant with `?tenant=`")),
        },
    }
}

fn decode_cursor(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    cursor
        .map(|c| {
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.strip_prefix("seq:").and_then(|n| n.parse().ok()))
                .ok_or_else(|| ApiError::new(Code::InvalidQuery, "`cursor` is not one this API returned"))
        })
        .transpose()
}

/// Audit events of the caller's tenant, oldest first, filtered, one page at a time.
#[utoipa::path(
    tag = "audit", params(AuditFilters, ScopeQuery, PageQuery), security(("bearer" = [])),
    responses((status = 200, body = AuditPage),
              (status = 404, description = "No such tenant, or not visible to the caller"))
)]
#[get("/v1/audit/events")]
pub async fn list_events(
    guard: Guarded<{ perm::AUDIT_READ }, AuditService>,
    filters: web::Query<AuditFilters>,
    scope_query: web::Query<ScopeQuery>,
    page: web::Query<PageQuery>,
) -> Result<web::Json<AuditPage>, ApiError> {
    let (tenant, _) = scope(&guard, &guard.principal, scope_query.tenant.as_deref()).await?;
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(Code::InvalidQuery, "`limit` must be between 1 and 1000"));
    }
    let after = decode_cursor(page.cursor.as_deref())?;
    let filters = filters.into_inner().parse()?;
    let events = guard.page(tenant, &filters, after, limit + 1).await?;
    let more = events.len() as i64 > limit;
    let events: Vec<ChainedEvent> = events.into_iter().take(limit as usize).collect();
    let next_cursor = more.then(|| URL_SAFE_NO_PAD.encode(format!("seq:{}", events.last().map(|e| e.seq).unwrap_or(0))));
    Ok(web::Json(AuditPage { events, next_cursor }))
}

/// Streams an export (JSON Lines or CSV) of the audit events matching the filters. The last
/// record is a signed manifest; `tessera audit verify <file>` checks it offline.
#[utoipa::path(
    tag = "audit", params(AuditFilters, ScopeQuery, FormatQuery), security(("bearer" = [])),
    responses((status = 200, description = "The export, streamed", content_type = "application/x-ndjson", body = String),
              (status = 404, description = "No such tenant, or not visible to the caller"))
)]
#[get("/v1/audit/export")]
pub async fn export_events(
    guard: Guarded<{ perm::AUDIT_EXPORT }, AuditService>,
    info: RequestInfo,
    filters: web::Query<AuditFilters>,
    scope_query: web::Query<ScopeQuery>,
    format: web::Query<FormatQuery>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, label) = scope(&guard, &guard.principal, scope_query.tenant.as_deref()).await?;
    let format = format.format.unwrap_or_default();
    let raw = filters.into_inner();
    let details = serde_json::json!({ "format": format, "filters": &raw, "scope": &label });
    let filters = raw.parse()?;
    let job = guard.export(tenant, label.clone(), filters, format, AuditActor::from(&guard.principal), details, &info).await?;
    let (content_type, extension) = match format {
        ExportFormat::Jsonl => ("application/x-ndjson", "jsonl"),
        ExportFormat::Csv => ("text/csv; charset=utf-8", "csv"),
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("content-disposition", format!("attachment; filename=\"audit-{label}.{extension}\"")))
        .streaming(job.stream()))
}

/// The public keys that verify audit checkpoints and export manifests, by key id.
#[utoipa::path(tag = "audit", responses((status = 200, description = "Key set", body = Object)))]
#[get("/v1/audit/keys")]
pub async fn signing_keys(keys: web::Data<PublicKeySet>) -> HttpResponse {
    HttpResponse::Ok().json(&keys.0)
}

/// A tenant's audit settings.
#[utoipa::path(tag = "audit", params(TenantPath), security(("bearer" = [])), responses((status = 200, body = AuditSettings)))]
#[get("/v1/tenants/{tenant}/audit/settings")]
pub async fn get_settings(guard: Guarded<{ perm::AUDIT_READ }, AuditService>) -> Result<web::Json<AuditSettings>, ApiError> {
    Ok(web::Json(guard.settings(guard.tenant()?.id).await?))
}

/// Change a tenant's audit settings (owners). The change is itself audited.
#[utoipa::path(tag = "audit", params(TenantPath), request_body = AuditSettings, security(("bearer" = [])), responses((status = 200, body = AuditSettings)))]
#[put("/v1/tenants/{tenant}/audit/settings")]
pub async fn put_settings(
    guard: Guarded<{ perm::AUDIT_CONFIGURE }, AuditService>,
    info: RequestInfo,
    body: web::Json<AuditSettings>,
) -> Result<web::Json<AuditSettings>, ApiError> {
    let tenant = guard.tenant()?.id;
    let body = body.into_inner();
    guard.set_settings(tenant, AuditActor::from(&guard.principal), &body, &info).await?;
    Ok(web::Json(body))
}

/// What `POST /v1/audit/verify` found.
#[derive(Serialize, ToSchema)]
pub struct VerifyReport {
    /// The chain and the manifest's signature hold.
    pub valid: bool,
    /// Events verified (when valid).
    pub events: Option<u64>,
    /// The first broken sequence number, when the break has one.
    pub broken_at: Option<i64>,
    /// The verdict as `tessera audit verify` prints it.
    #[schema(example = "OK: 42 events, chain and signatures valid")]
    pub detail: String,
}

/// The largest export the server verifies; the command line verifies any size offline.
const MAX_VERIFY_BYTES: usize = 64 * 1024 * 1024;

/// Verify an audit export (JSON Lines or CSV, as the export streamed it) with this server's
/// audit signing keys: every hash of the chain and the manifest's signature, as
/// `tessera audit verify` does offline. A broken export is a 200 whose `valid` is false.
#[utoipa::path(
    tag = "audit", security(("bearer" = [])),
    request_body(content = String, content_type = "application/x-ndjson", description = "The export, JSON Lines or CSV"),
    responses((status = 200, body = VerifyReport),
              (status = 413, description = "Larger than 64 MiB: verify it with `tessera audit verify` (`payload_too_large`)"))
)]
#[post("/v1/audit/verify")]
pub async fn verify_export(
    _guard: Guarded<{ perm::AUDIT_READ }>,
    keys: web::Data<PublicKeySet>,
    mut body: web::Payload,
) -> Result<web::Json<VerifyReport>, ApiError> {
    use futures::StreamExt;
    let mut export = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(Code::ClientError, format!("reading the body: {e}")))?;
        if export.len() + chunk.len() > MAX_VERIFY_BYTES {
            return Err(ApiError::new(Code::PayloadTooLarge, "exports over 64 MiB are verified offline with `tessera audit verify`"));
        }
        export.extend_from_slice(&chunk);
    }
    let keys = super::verify::PublicKeys::parse(&keys.0.to_string())
        .map_err(|e| ApiError::internal(anyhow::anyhow!("the server's own audit keys do not parse: {e}")))?;
    // Hashing a large export is CPU work: off the executor.
    let verdict = tokio::task::spawn_blocking(move || super::verify::verify_export(&export[..], &keys))
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("verification panicked: {e}")))?;
    let detail = verdict.to_string();
    Ok(web::Json(match verdict {
        super::verify::Verdict::Ok { count, .. } => VerifyReport { valid: true, events: Some(count), broken_at: None, detail },
        super::verify::Verdict::Broken { seq, .. } => VerifyReport { valid: false, events: None, broken_at: seq, detail },
    }))
}
