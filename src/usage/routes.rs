//! `/v1/tenants/{tenant}/usage`: a tenant's inference usage by model version and hour or day,
//! as JSON pages (with its quotas) or as one CSV export.

use actix_web::{HttpResponse, get, web};
use futures::StreamExt;
use serde::Deserialize;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::model::{CSV_HEADER, Cursor, UsageFilters, UsageReport};
use super::{UsageError, UsageService};
use crate::audit::export::csv_line;
use crate::error::ApiError;
use crate::http::guard::{Guarded, TenantPath};
use crate::identity::perm;
use crate::page::PageQuery;

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsageExportFormat {
    #[default]
    Csv,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `csv` (the default and only format).
    #[param(inline)]
    pub format: Option<UsageExportFormat>,
}

/// Usage of the tenant's models: calls, rows, errors by code, cache hits, latency percentiles
/// and bytes per model version and hour or UTC day, ordered by start, model and version, a
/// page at a time (the list convention's `cursor` and `limit`); with the tenant's quotas. Counts reach this within
/// `usage.flush_interval_seconds` of the call.
#[utoipa::path(
    tag = "usage", params(TenantPath, UsageFilters, PageQuery<Cursor>), security(("bearer" = [])),
    responses(
        (status = 200, body = UsageReport),
        (status = 400, description = "A bad timestamp, model, version, cursor or limit (`invalid_query`)"),
        (status = 422, description = "An empty or too long window, or `version` without `model` (`unprocessable`)"),
    )
)]
#[get("/v1/tenants/{tenant}/usage")]
pub async fn usage(
    guard: Guarded<{ perm::USAGE_READ }, UsageService>,
    filters: web::Query<UsageFilters>,
    page: web::Query<PageQuery<Cursor>>,
) -> Result<web::Json<UsageReport>, ApiError> {
    let tenant = guard.tenant()?;
    let query = filters.parse(OffsetDateTime::now_utc())?;
    let page = page.parse()?;
    let buckets = guard.page(tenant.id, &query, page.after.as_ref(), page.fetch()).await?;
    let page = page.finish(buckets, Cursor::after);
    let quota = guard.quota(tenant).await?;
    Ok(web::Json(UsageReport {
        granularity: query.granularity,
        from: query.from,
        to: query.to,
        buckets: page.items,
        next_cursor: page.next_cursor,
        quota,
    }))
}

/// The same buckets as CSV, the whole window in one streamed response: a header row, then one
/// row per bucket (`errors` is the total, `errors_by_code` lists `code=n` pairs joined by `;`).
#[utoipa::path(
    tag = "usage", params(TenantPath, UsageFilters, ExportQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "The buckets as CSV, streamed", content_type = "text/csv", body = String),
        (status = 400, description = "A bad timestamp, model, version or format (`invalid_query`)"),
        (status = 422, description = "An empty or too long window, or `version` without `model` (`unprocessable`)"),
    )
)]
#[get("/v1/tenants/{tenant}/usage/export")]
pub async fn export(
    guard: Guarded<{ perm::USAGE_READ }, UsageService>,
    filters: web::Query<UsageFilters>,
    _format: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = guard.tenant()?;
    let query = filters.parse(OffsetDateTime::now_utc())?;
    let filename = format!("usage-{}-{}.csv", tenant.slug, query.granularity.as_str());
    let header = futures::stream::once(async { Ok::<_, UsageError>(csv_line(&CSV_HEADER)) });
    let rows = guard.stream(tenant.id, query).map(|page| {
        page.map(|buckets| buckets.iter().flat_map(|b| csv_line(&b.csv_fields())).collect::<Vec<u8>>())
    });
    let body = header.chain(rows).map(|chunk| match chunk {
        Ok(bytes) => Ok(web::Bytes::from(bytes)),
        // Headers are gone by now: the client sees a cut-off body, the log sees why.
        Err(e) => {
            tracing::error!(error = ?e, "usage export failed");
            Err(ApiError::from(e))
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header(("content-disposition", format!("attachment; filename=\"{filename}\"")))
        .streaming(body))
}
