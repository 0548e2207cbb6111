//! `/v1/tenants/{tenant}/datasets` and `/v1/tenants/{tenant}/jobs`: thin handlers over `JobService`.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use bytes::Bytes;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::model::{DatasetName, DatasetView, JobKind, JobRequest, JobStatus, JobView};
use super::service::{JobFilter, JobService};
use crate::request::RequestInfo;
use crate::error::{ApiError, Code};
use crate::http::extract::Json;
use crate::http::guard::{Guarded, TenantPath};
use crate::identity::perm;
use crate::page::{Page, PageQuery};
use crate::tenancy::TenantId;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DatasetQuery {
    /// A name for the dataset: 1-128 of letters, digits, `.`, `_`, `-`, starting with a letter or digit.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub name: String,
}

/// For the document only: the handlers read these headers themselves.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct LastEventId {
    /// Resume after this event.
    #[param(rename = "Last-Event-ID", nullable = false, minimum = 0)]
    last_event_id: Option<i64>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyKey {
    /// Makes resubmission safe: the same key and body give the same job. 1-255 visible ASCII
    /// characters (inner spaces allowed).
    #[param(rename = "Idempotency-Key", nullable = false, pattern = "^[!-~]([ -~]{0,253}[!-~])?$")]
    idempotency_key: Option<String>,
}

#[derive(Deserialize, IntoParams)]
pub struct IdPath {
    /// The id.
    id: Uuid,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobListQuery {
    pub status: Option<JobStatus>,
    pub kind: Option<JobKind>,
}

/// Upload a dataset: a CSV file with a header of column names and numeric rows, streamed and
/// encrypted as it arrives. The first malformed line is reported by number.
#[utoipa::path(
    tag = "jobs", params(TenantPath, DatasetQuery), security(("bearer" = [])),
    request_body(content = String, content_type = "text/csv", description = "The CSV file"),
    responses(
        (status = 201, body = DatasetView),
        (status = 422, description = "Not a valid numeric CSV (`invalid_dataset`), with the line"),
        (status = 413, description = "Larger than the dataset limit"),
        (status = 403, description = "Storage quota exceeded (`quota_exceeded`)"),
    )
)]
#[post("/v1/tenants/{tenant}/datasets")]
pub async fn upload_dataset(
    guard: Guarded<{ perm::JOBS_RUN }, JobService>,
    info: RequestInfo,
    req: HttpRequest,
    query: web::Query<DatasetQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
        let ok = content_type.to_str().is_ok_and(|t| t.starts_with("text/csv") || t.starts_with("application/octet-stream"));
        if !ok {
            return Err(ApiError::new(Code::UnsupportedMediaType, "upload the dataset as text/csv"));
        }
    }
    let name = DatasetName::parse(&query.name).map_err(|e| ApiError::new(Code::InvalidQuery, e.to_string()))?;
    let declared_len = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let tenant = guard.tenant()?.id;
    let view = guard.upload_dataset(&guard.principal, tenant, &name, body, declared_len, &info).await?;
    Ok(HttpResponse::Created().json(view))
}

/// The tenant's datasets, newest first.
#[utoipa::path(tag = "jobs", params(TenantPath, PageQuery<Uuid>), security(("bearer" = [])), responses((status = 200, body = Page<DatasetView>)))]
#[get("/v1/tenants/{tenant}/datasets")]
pub async fn list_datasets(
    guard: Guarded<{ perm::JOBS_RUN }, JobService>,
    page: web::Query<PageQuery<Uuid>>,
) -> Result<web::Json<Page<DatasetView>>, ApiError> {
    Ok(web::Json(guard.list_datasets(guard.tenant()?.id, &page.parse()?).await?))
}

/// A dataset's header, size and checksum.
#[utoipa::path(tag = "jobs", params(TenantPath, IdPath), security(("bearer" = [])), responses((status = 200, body = DatasetView)))]
#[get("/v1/tenants/{tenant}/datasets/{id}")]
pub async fn get_dataset(
    guard: Guarded<{ perm::JOBS_RUN }, JobService>,
    path: web::Path<IdPath>,
) -> Result<web::Json<DatasetView>, ApiError> {
    Ok(web::Json(guard.get_dataset(guard.tenant()?.id, path.id).await?))
}

/// Submit a training or batch inference job. With an `Idempotency-Key` header, resubmitting
/// the same request returns the job the first submission created (200) instead of a new one.
#[utoipa::path(
    tag = "jobs", security(("bearer" = [])),
    params(TenantPath, IdempotencyKey),
    request_body = JobRequest,
    responses(
        (status = 201, body = JobView, description = "Queued"),
        (status = 200, body = JobView, description = "The job an earlier submission with this Idempotency-Key created"),
        (status = 422, description = "The key was used for a different request (`idempotency_key_reused`)"),
    )
)]
#[post("/v1/tenants/{tenant}/jobs")]
pub async fn submit_job(
    guard: Guarded<{ perm::JOBS_RUN }, JobService>,
    info: RequestInfo,
    req: HttpRequest,
    body: Json<JobRequest>,
) -> Result<HttpResponse, ApiError> {
    let key = match req.headers().get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value.to_str().ok().map(str::trim).filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (b' '..=b'~').contains(&b))).ok_or_else(|| {
                ApiError::new(Code::InvalidHeader, "Idempotency-Key must be 1 to 255 visible ASCII characters")
            })?;
            Some(key.to_owned())
        }
    };
    let tenant = guard.tenant()?;
    let (job, created) = guard.submit(&guard.principal, tenant.id, body.into_inner(), key, &info).await?;
    let mut response = if created { HttpResponse::Created() } else { HttpResponse::Ok() };
    Ok(response.insert_header((header::LOCATION, format!("/v1/tenants/{}/jobs/{}", tenant.slug, job.id))).json(job))
}

/// The tenant's jobs, newest first, filtered by status and kind.
#[utoipa::path(tag = "jobs", params(TenantPath, JobListQuery, PageQuery<Uuid>), security(("bearer" = [])), responses((status = 200, body = Page<JobView>)))]
#[get("/v1/tenants/{tenant}/jobs")]
pub async fn list_jobs(
    guard: Guarded<{ perm::JOBS_RUN }, JobService>,
    query: web::Query<JobListQuery>,
    page: web::Query<PageQuery<Uuid>>,
) -> Result<web::Json<Page<JobView>>, ApiError> {
    let filter = JobFilter { status: query.status, kind: query.kind };
    Ok(web::Json(guard.list(guard.tenant()?.id, &filter, &page.parse()?).await?))
}

/// A job: status, attempts, latest progress, result or error.
#[utoipa::path(tag = "jobs", params(TenantPath, IdPath), security(("bearer" = [])), responses((status = 200, body = JobView)))]
#[get("/v1/tenants/{tenant}/jobs/{id}")]
pub async fn get_job(guard: Guarded<{ perm::JOBS_RUN }, JobService>, path: web::Path<IdPath>) -> Result<web::Json<JobView>, ApiError> {
    Ok(web::Json(guard.get(guard.tenant()?.id, path.id).await?))
}

/// Cancel a job: at once if it is queued, at its next epoch (or batch of rows) if running.
#[utoipa::path(
    tag = "jobs", params(TenantPath, IdPath), security(("bearer" = [])),
    responses(
        (status = 200, body = JobView),
        (status = 409, description = "Already finished (`job_finished`)"),
    )
)]
#[post("/v1/tenants/{tenant}/jobs/{id}/cancel")]
pub async fn cancel_job(
    guard: Guarded<{ perm::JOBS_RUN }, JobService>,
    info: RequestInfo,
    path: web::Path<IdPath>,
) -> Result<web::Json<JobView>, ApiError> {
    Ok(web::Json(guard.cancel(&guard.principal, guard.tenant()?.id, path.id, &info).await?))
}

/// A batch inference job's predictions, as CSV (decrypted as it is served; audited).
#[utoipa::path(
    tag = "jobs", params(TenantPath, IdPath), security(("bearer" = [])),
    responses((status = 200, description = "The predictions", content_type = "text/csv", body = String))
)]
#[get("/v1/tenants/{tenant}/jobs/{id}/output")]
pub async fn job_output(
    guard: Guarded<{ perm::JOBS_RUN }, JobService>,
    info: RequestInfo,
    path: web::Path<IdPath>,
) -> Result<HttpResponse, ApiError> {
    let bytes = guard.output(&guard.principal, guard.tenant()?.id, path.id, &info).await?;
    Ok(HttpResponse::Ok().content_type("text/csv; charset=utf-8").body(bytes))
}

/// The job's events as Server-Sent Events: `status` changes and `progress` (epoch, loss,
/// metric, rows done), from the start or after `Last-Event-ID`. The stream ends after the
/// job's final status.
#[utoipa::path(
    tag = "jobs", params(TenantPath, IdPath, LastEventId),
    security(("bearer" = [])),
    responses((status = 200, description = "`text/event-stream`: `id`, `event` (status, progress, log) and JSON `data`", content_type = "text/event-stream", body = JobStreamEvent))
)]
#[get("/v1/tenants/{tenant}/jobs/{id}/events")]
pub async fn job_events(
    guard: Guarded<{ perm::JOBS_RUN }, JobService>,
    req: HttpRequest,
    path: web::Path<IdPath>,
) -> Result<HttpResponse, ApiError> {
    let tenant = guard.tenant()?.id;
    let after = match req.headers().get("last-event-id") {
        None => 0,
        Some(v) => v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).and_then(|n| i64::try_from(n).ok()).ok_or_else(|| {
            ApiError::new(Code::InvalidHeader, "Last-Event-ID must be the id of an event of this stream")
        })?,
    };
    // The job must be visible before the stream starts: a 404 is a problem document, not an
    // empty stream.
    guard.get(tenant, path.id).await?;
    let stream = event_stream(JobService::clone(&guard), tenant, path.id, after);
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

/// One Server-Sent Event of a job's stream.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation only: the stream is written as text
struct JobStreamEvent {
    /// The event's number: send it back as `Last-Event-ID` to resume after it.
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    /// `status` (with `status`), `progress` (epoch, loss, metric or rows done) or `log`.
    #[schema(pattern = "^(status|progress|log)$")]
    event: String,
    /// The event's fields, as a JSON object.
    #[schema(content_media_type = "application/json")]
    data: String,
}

const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn event_stream(jobs: JobService, tenant: TenantId, job: Uuid, after: i64) -> impl futures::Stream<Item = Result<Bytes, ApiError>> {
    let poll = Duration::from_millis(jobs.settings().events_poll_ms);
    futures::stream::unfold((jobs, after, false, Duration::ZERO), move |(jobs, mut last, finished, mut quiet)| async move {
        if finished {
            return None;
        }
        loop {
            let (events, status) = match jobs.events_since(tenant, job, last).await {
                Ok(found) => found,
                Err(e) => return Some((Err(e.into()), (jobs, last, true, quiet))),
            };
            if !events.is_empty() {
                let mut text = String::new();
                for event in &events {
                    text.push_str(&format!("id: {}\nevent: {}\ndata: {}\n\n", event.id, event.kind, event.data));
                    last = event.id;
                }
                // Final once the status is and every event up to it has been sent.
                let done = status.is_final() && events.len() < 500;
                return Some((Ok(Bytes::from(text)), (jobs, last, done, Duration::ZERO)));
            }
            if status.is_final() {
                return None;
            }
            if quiet >= KEEP_ALIVE {
                return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), (jobs, last, false, Duration::ZERO)));
            }
            tokio::time::sleep(poll).await;
            quiet += poll;
        }
    })
}
