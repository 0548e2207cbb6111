//! The Open Inference Protocol v2 over HTTP (KServe v2 / Triton), scoped to the caller's
//! tenant: model names resolve inside the tenant of the token or API key. Health and server
//! metadata are public, as probes and clients expect; everything about models needs
//! `inference.run`. Errors are problem documents that also carry the protocol's `error` field.

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::{HttpResponse, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::cache::CacheStatus;
use super::metadata::ModelMetadata;
use super::service::{HttpBody, InferCall, InferReply, InferenceService};
use crate::audit::AuditActor;
use crate::request::RequestInfo;
use crate::error::{ApiError, Code};
use crate::http::extract::Binary;
use crate::http::guard::Guarded;
use crate::identity::perm;
use crate::http::health::Probes;

// Names made once: looking a header up by `&str` copies a name that is not a standard one.
pub const HEADER_CONTENT_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("tessera-cache");
/// A deadline for one request, in milliseconds (capped by `inference.max_timeout_ms`).
pub const TIMEOUT_HEADER: HeaderName = HeaderName::from_static("tessera-timeout-ms");

#[derive(Serialize, ToSchema)]
pub struct ServerMetadata {
    #[schema(example = "tessera")]
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: Vec<&'static str>,
}

#[derive(Deserialize, IntoParams)]
pub struct ModelPath {
    /// Model name in the caller's tenant.
    name: String,
}

#[derive(Deserialize, IntoParams)]
pub struct VersionPath {
    /// Model name in the caller's tenant.
    name: String,
    /// Version number or alias.
    #[param(pattern = "^(0*[1-9][0-9]{0,8}|[a-z][a-z0-9_-]{0,62})$")]
    version: String,
}

/// Server metadata.
#[utoipa::path(tag = "inference", responses((status = 200, body = ServerMetadata)))]
#[get("/v2")]
pub async fn server_metadata() -> web::Json<ServerMetadata> {
    web::Json(ServerMetadata { name: "tessera", version: crate::VERSION, extensions: vec!["binary_tensor_data"] })
}

/// Liveness.
#[utoipa::path(tag = "inference", responses((status = 200, description = "Live")))]
#[get("/v2/health/live")]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "live": true }))
}

/// Readiness: ONNX Runtime is loaded and Postgres answers.
#[utoipa::path(
    tag = "inference",
    responses(
        (status = 200, description = "Ready"),
        (status = 503, description = "Not ready"),
    )
)]
#[get("/v2/health/ready")]
pub async fn ready(inference: web::Data<InferenceService>, probes: web::Data<Probes>) -> Result<HttpResponse, ApiError> {
    if !inference.models.runtime_ready() {
        return Err(ApiError::unavailable("ONNX Runtime is not loaded", 5));
    }
    probes.postgres(std::time::Duration::from_secs(1)).await.map_err(|e| ApiError::unavailable(format!("postgres: {e}"), 2))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "ready": true })))
}

/// Model metadata (latest version).
#[utoipa::path(tag = "inference", params(ModelPath), security(("bearer" = [])), responses((status = 200, body = ModelMetadata)))]
#[get("/v2/models/{name}")]
pub async fn model_metadata(
    guard: Guarded<{ perm::INFERENCE_RUN }, InferenceService>,
    path: web::Path<ModelPath>,
) -> Result<web::Json<ModelMetadata>, ApiError> {
    Ok(web::Json(guard.metadata(guard.tenant()?, &path.name, None).await?))
}

/// Model metadata of a version or alias.
#[utoipa::path(tag = "inference", params(VersionPath), security(("bearer" = [])), responses((status = 200, body = ModelMetadata)))]
#[get("/v2/models/{name}/versions/{version}")]
pub async fn version_metadata(
    guard: Guarded<{ perm::INFERENCE_RUN }, InferenceService>,
    path: web::Path<VersionPath>,
) -> Result<web::Json<ModelMetadata>, ApiError> {
    Ok(web::Json(guard.metadata(guard.tenant()?, &path.name, Some(&path.version)).await?))
}

/// Model readiness (loads the model if it is not loaded yet).
#[utoipa::path(
    tag = "inference", params(ModelPath), security(("bearer" = [])),
    responses(
        (status = 200, description = "Ready"),
        (status = 422, description = "The version's artifact does not load (`invalid_model`)"),
        (status = 503, description = "ONNX Runtime is unavailable (`service_unavailable`), with Retry-After"),
    )
)]
#[get("/v2/models/{name}/ready")]
pub async fn model_ready(
    guard: Guarded<{ perm::INFERENCE_RUN }, InferenceService>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, ApiError> {
    guard.readiness(guard.tenant()?, &path.name, None, &AuditActor::from(&guard.principal)).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "name": path.name, "ready": true })))
}

/// Version readiness (loads the version if it is not loaded yet).
#[utoipa::path(
    tag = "inference", params(VersionPath), security(("bearer" = [])),
    responses(
        (status = 200, description = "Ready"),
        (status = 422, description = "The version's artifact does not load (`invalid_model`)"),
        (status = 503, description = "ONNX Runtime is unavailable (`service_unavailable`), with Retry-After"),
    )
)]
#[get("/v2/models/{name}/versions/{version}/ready")]
pub async fn version_ready(
    guard: Guarded<{ perm::INFERENCE_RUN }, InferenceService>,
    path: web::Path<VersionPath>,
) -> Result<HttpResponse, ApiError> {
    guard.readiness(guard.tenant()?, &path.name, Some(&path.version), &AuditActor::from(&guard.principal)).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "name": path.name, "ready": true })))
}

fn header_number(headers: &HeaderMap, name: HeaderName) -> Result<Option<u64>, ApiError> {
    match headers.get(&name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::new(Code::InvalidHeader, format!("{name} must be a non-negative integer"))),
    }
}

/// Whether a path is an inference route's. Their answers go out as they are, whatever the
/// client accepts: the inference path does not pay for compression.
pub fn is_infer_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v2/models/") else { return false };
    let mut segments = rest.split('/');
    match (segments.next(), segments.next(), segments.next(), segments.next(), segments.next()) {
        (Some(name), Some("infer"), None, _, _) => !name.is_empty(),
        (Some(name), Some("versions"), Some(version), Some("infer"), None) => !name.is_empty() && !version.is_empty(),
        _ => false,
    }
}

async fn infer(
    guard: Guarded<{ perm::INFERENCE_RUN }, InferenceService>,
    req: &actix_web::HttpRequest,
    name: String,
    version: Option<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = guard.tenant()?;
    // Inference has a limit of its own: batch scoring sends far more than the admin API.
    let body = crate::http::extract::body_within(req, body, guard.models.settings().max_request_bytes).await?;
    let headers = req.headers();
    let json_len = header_number(headers, HEADER_CONTENT_LENGTH)?.map(|n| n as usize);
    let timeout = header_number(headers, TIMEOUT_HEADER)?.map(std::time::Duration::from_millis);
    let no_cache = headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|d| matches!(d.trim(), "no-cache" | "no-store")));
    let call = InferCall {
        tenant: tenant.id,
        actor: AuditActor::from(&guard.principal),
        name,
        version,
        request: HttpBody { body: body.into(), json_len },
        timeout,
        no_cache,
        info: RequestInfo::from_request(req),
    };
    let reply: InferReply = guard.infer(call).await?;
    let mut response = HttpResponse::Ok();
    response.insert_header((CACHE_HEADER, HeaderValue::from_static(reply.cache.as_str())));
    if reply.cache == CacheStatus::Hit {
        response.insert_header((header::AGE, "0"));
    }
    match reply.encoded.json_len {
        Some(n) => {
            response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")));
            response.insert_header((HEADER_CONTENT_LENGTH, n));
        }
        None => {
            response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/json")));
        }
    }
    Ok(response.body(reply.encoded.body))
}

/// Inference on the latest version. JSON tensors, or the binary tensor data extension
/// (`Inference-Header-Content-Length`). `Cache-Control: no-cache` bypasses the result cache;
/// `Tessera-Timeout-Ms` (or the `timeout` parameter, in µs) sets a deadline.
#[utoipa::path(
    tag = "inference", params(ModelPath), security(("bearer" = [])),
    request_body(content = Object, description = "An OIP v2 inference request"),
    responses(
        (status = 200, description = "An OIP v2 inference response: JSON, or binary tensor data after a JSON header when asked for",
         content((Object = "application/json"), (Binary = "application/octet-stream"))),
        (status = 422, description = "Inputs do not match the model (`invalid_input`)"),
        (status = 503, description = "Queue full (`overloaded`), with Retry-After"),
        (status = 504, description = "Deadline passed (`deadline_exceeded`)"),
    )
)]
#[post("/v2/models/{name}/infer")]
pub async fn infer_latest(
    guard: Guarded<{ perm::INFERENCE_RUN }, InferenceService>,
    req: actix_web::HttpRequest,
    path: web::Path<ModelPath>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    infer(guard, &req, path.into_inner().name, None, body).await
}

/// Inference on a version or alias (`production`).
#[utoipa::path(
    tag = "inference", params(VersionPath), security(("bearer" = [])),
    request_body(content = Object, description = "An OIP v2 inference request"),
    responses(
        (status = 200, description = "An OIP v2 inference response: JSON, or binary tensor data after a JSON header when asked for",
         content((Object = "application/json"), (Binary = "application/octet-stream"))),
        (status = 422, description = "Inputs do not match the model (`invalid_input`)"),
    )
)]
#[post("/v2/models/{name}/versions/{version}/infer")]
pub async fn infer_version(
    guard: Guarded<{ perm::INFERENCE_RUN }, InferenceService>,
    req: actix_web::HttpRequest,
    path: web::Path<VersionPath>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let VersionPath { name, version } = path.into_inner();
    infer(guard, &req, name, Some(version), body).await
}

#[cfg(test)]
mod tests {
    use super::is_infer_path;

    #[test]
    fn inference_paths_are_the_infer_routes_only() {
        for path in ["/v2/models/m/infer", "/v2/models/m/versions/3/infer", "/v2/models/infer/versions/production/infer"] {
            assert!(is_infer_path(path), "{path}");
        }
        for path in ["/v2/models/infer", "/v2/models//infer", "/v2/models/m/infer/", "/v2/models/m/versions/3", "/v1/models/m/infer", "/v2/models/m/ready"] {
            assert!(!is_infer_path(path), "{path}");
        }
    }
}
