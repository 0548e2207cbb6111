//! Reading, exporting and configuring a tenant's audit log (`/v1/tenants/{tenant}/audit/*`),
//! the platform's log (`/v1/platform/audit/*`), and the signing keys.

use actix_web::{HttpResponse, get, post, put, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::chain::ChainedEvent;
use super::export::{AuditFilters, ExportFormat};
use super::service::{AuditService, AuditSettings};
use super::signing::PublicKeySet;
use super::{AuditActor, PLATFORM};
use crate::error::{ApiError, Code};
use crate::http::extract::{Binary, Json};
use crate::http::guard::{Guarded, TenantPath};
use crate::identity::{Principal, perm};
use crate::page::{Page, PageQuery};
use crate::request::RequestInfo;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FormatQuery {
    /// `jsonl` (default) or `csv`.
    // Inline: the document would otherwise refer to a schema it never defines.
    #[param(inline)]
    pub format: Option<ExportFormat>,
}

/// A page of events, oldest first, filtered.
async fn page(
    audit: &AuditService,
    tenant: Uuid,
    filters: web::Query<AuditFilters>,
    page: &PageQuery<i64>,
) -> Result<web::Json<Page<ChainedEvent>>, ApiError> {
    let page = page.parse()?;
    let filters = filters.into_inner().parse()?;
    let events = audit.page(tenant, &filters, page.after, page.fetch()).await?;
    Ok(web::Json(page.finish(events, |e: &ChainedEvent| e.seq)))
}

/// Streams an export of one chain, audited as an export by the caller.
async fn export(
    audit: &AuditService,
    principal: &Principal,
    info: &RequestInfo,
    (tenant, label): (Uuid, &str),
    filters: web::Query<AuditFilters>,
    format: web::Query<FormatQuery>,
) -> Result<HttpResponse, ApiError> {
    let format = format.format.unwrap_or_default();
    let raw = filters.into_inner();
    let details = serde_json::json!({ "format": format, "filters": &raw, "scope": label });
    let filters = raw.parse()?;
    let job = audit.export(tenant, label.to_owned(), filters, format, AuditActor::from(principal), details, info).await?;
    let (content_type, extension) = match format {
        ExportFormat::Jsonl => ("application/x-ndjson", "jsonl"),
        ExportFormat::Csv => ("text/csv; charset=utf-8", "csv"),
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("content-disposition", format!("attachment; filename=\"audit-{label}.{extension}\"")))
        .streaming(job.stream()))
}

/// A tenant's audit events, oldest first, filtered, one page at a time.
#[utoipa::path(
    tag = "audit", params(TenantPath, AuditFilters, PageQuery<i64>), security(("bearer" = [])),
    responses((status = 200, body = Page<ChainedEvent>))
)]
#[get("/v1/tenants/{tenant}/audit/events")]
pub async fn list_events(
    guard: Guarded<{ perm::AUDIT_READ }, AuditService>,
    filters: web::Query<AuditFilters>,
    query: web::Query<PageQuery<i64>>,
) -> Result<web::Json<Page<ChainedEvent>>, ApiError> {
    page(&guard, guard.tenant()?.id.0, filters, &query).await
}

/// Streams an export (JSON Lines or CSV) of a tenant's audit events matching the filters. The
/// last record is a signed manifest; `tessera audit verify <file>` checks it offline.
#[utoipa::path(
    tag = "audit", params(TenantPath, AuditFilters, FormatQuery), security(("bearer" = [])),
    responses((status = 200, description = "The export, streamed", content((String = "application/x-ndjson"), (String = "text/csv"))))
)]
#[get("/v1/tenants/{tenant}/audit/export")]
pub async fn export_events(
    guard: Guarded<{ perm::AUDIT_EXPORT }, AuditService>,
    info: RequestInfo,
    filters: web::Query<AuditFilters>,
    format: web::Query<FormatQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = guard.tenant()?;
    export(&guard, &guard.principal, &info, (tenant.id.0, tenant.slug.as_str()), filters, format).await
}

/// The platform's own audit events (tenants created, suspended, resumed; platform
/// administrators' sign-ins), oldest first (platform administrators).
#[utoipa::path(
    tag = "audit", params(AuditFilters, PageQuery<i64>), security(("bearer" = [])),
    responses((status = 200, body = Page<ChainedEvent>))
)]
#[get("/v1/platform/audit/events")]
pub async fn list_platform_events(
    guard: Guarded<{ perm::TENANTS_MANAGE }, AuditService>,
    filters: web::Query<AuditFilters>,
    query: web::Query<PageQuery<i64>>,
) -> Result<web::Json<Page<ChainedEvent>>, ApiError> {
    page(&guard, PLATFORM, filters, &query).await
}

/// Streams an export of the platform's audit events, as for a tenant's (platform administrators).
#[utoipa::path(
    tag = "audit", params(AuditFilters, FormatQuery), security(("bearer" = [])),
    responses((status = 200, description = "The export, streamed", content((String = "application/x-ndjson"), (String = "text/csv"))))
)]
#[get("/v1/platform/audit/export")]
pub async fn export_platform_events(
    guard: Guarded<{ perm::TENANTS_MANAGE }, AuditService>,
    info: RequestInfo,
    filters: web::Query<AuditFilters>,
    format: web::Query<FormatQuery>,
) -> Result<HttpResponse, ApiError> {
    export(&guard, &guard.principal, &info, (PLATFORM, "platform"), filters, format).await
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
    body: Json<AuditSettings>,
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
    request_body(content = Binary, content_type = "application/octet-stream", description = "The export file, JSON Lines or CSV"),
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
    if export.is_empty() {
        return Err(ApiError::new(Code::Unprocessable, "an empty file is no export: send the export file as the body"));
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
