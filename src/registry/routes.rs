//! `/v1/tenants/{tenant}/models/*` and the tenant key: thin handlers over `RegistryService`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, delete, get, post, put, web};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::model::{AliasName, Framework, ModelName, ModelView, ServingConfig, VersionRef, VersionView};
use super::service::NewModel;
use super::upload::{UploadSpec, parse_sha256};
use crate::audit::AuditActor;
use crate::request::RequestInfo;
use crate::error::{ApiError, Code};
use crate::http::extract::{Binary, Json};
use crate::http::guard::{Guarded, TenantPath};
use crate::identity::perm;
use crate::page::{Page, PageQuery};
use super::RegistryService;
use crate::inference::models::ModelManager;

#[derive(Deserialize, IntoParams)]
pub struct ModelPath {
    /// Model name.
    model: String,
}

#[derive(Deserialize, IntoParams)]
pub struct VersionPath {
    /// Model name.
    model: String,
    /// A version number or an alias.
    #[param(pattern = "^(0*[1-9][0-9]{0,8}|[a-z][a-z0-9_-]{0,62})$")]
    version: String,
}

#[derive(Deserialize, IntoParams)]
pub struct AliasPath {
    /// Model name.
    model: String,
    /// Alias name, e.g. `production`: 1-63 of `a-z0-9_-`, starting with a letter.
    #[param(pattern = "^[a-z][a-z0-9_-]{0,62}$")]
    alias: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModelRequest {
    /// 1-128 of `A-Za-z0-9._-`, starting with a letter or digit.
    #[schema(example = "fraud-detector", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub name: String,
    pub framework: Framework,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: String,
    /// At most 32, of 1-64 characters each.
    #[serde(default)]
    #[schema(schema_with = tags_schema)]
    pub tags: Vec<String>,
    /// Same inputs always give the same outputs, so results may be cached (default false).
    #[serde(default)]
    pub deterministic: bool,
    #[serde(default)]
    pub serving: ServingConfig,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// SHA-256 of the artifact (hex); the upload fails unless the bytes match.
    #[param(pattern = "^[0-9a-fA-F]{64}$")]
    pub sha256: Option<String>,
    /// Burn models: the architecture the weights belong to.
    #[param(pattern = "^(mlp|conv1d)$")]
    pub architecture: Option<String>,
    /// Burn models: the architecture's configuration, as JSON.
    #[param(min_length = 1)]
    pub config: Option<String>,
}

fn tags_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::{ArrayBuilder, ObjectBuilder, schema::Type};
    ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(64)))
        .max_items(Some(32))
        .build()
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAliasRequest {
    /// The version the alias points at from now on.
    pub version: i32,
}

#[derive(serde::Serialize, ToSchema)]
pub struct RotationResult {
    /// Data keys re-wrapped under the new tenant key (artifacts are not re-encrypted).
    pub rewrapped_data_keys: u64,
}

/// Create a model (no versions yet).
#[utoipa::path(
    tag = "models", params(TenantPath), request_body = CreateModelRequest, security(("bearer" = [])),
    responses(
        (status = 201, body = ModelView),
        (status = 409, description = "Name taken (`already_exists`)"),
        (status = 403, description = "Model quota used up (`quota_exceeded`)"),
    )
)]
#[post("/v1/tenants/{tenant}/models")]
pub async fn create_model(
    guard: Guarded<{ perm::MODELS_WRITE }, RegistryService>,
    info: RequestInfo,
    body: Json<CreateModelRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let new = NewModel {
        name: ModelName::parse(&body.name)?,
        framework: body.framework,
        description: body.description,
        tags: body.tags,
        deterministic: body.deterministic,
        serving: body.serving,
    };
    let model = guard.create_model(&guard.principal, guard.tenant()?, new, &info).await?;
    Ok(HttpResponse::Created().json(model))
}

/// List the tenant's models, by name.
#[utoipa::path(tag = "models", params(TenantPath, PageQuery<String>), security(("bearer" = [])), responses((status = 200, body = Page<ModelView>)))]
#[get("/v1/tenants/{tenant}/models")]
pub async fn list_models(
    guard: Guarded<{ perm::MODELS_READ }, RegistryService>,
    page: web::Query<PageQuery<String>>,
) -> Result<web::Json<Page<ModelView>>, ApiError> {
    Ok(web::Json(guard.list_models(guard.tenant()?, &page.parse()?).await?))
}

/// A model with its aliases and latest version.
#[utoipa::path(tag = "models", params(TenantPath, ModelPath), security(("bearer" = [])), responses((status = 200, body = ModelView)))]
#[get("/v1/tenants/{tenant}/models/{model}")]
pub async fn get_model(
    guard: Guarded<{ perm::MODELS_READ }, RegistryService>,
    path: web::Path<ModelPath>,
) -> Result<web::Json<ModelView>, ApiError> {
    Ok(web::Json(guard.get_model(guard.tenant()?, &ModelName::lookup(&path.model)?).await?))
}

/// Delete a model and its versions (soft, audited). Refused while it has aliases.
#[utoipa::path(
    tag = "models", params(TenantPath, ModelPath), security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "Aliases remain (`version_has_alias`)"),
    )
)]
#[delete("/v1/tenants/{tenant}/models/{model}")]
pub async fn delete_model(
    guard: Guarded<{ perm::MODELS_WRITE }, RegistryService>,
    models: web::Data<ModelManager>,
    info: RequestInfo,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, ApiError> {
    let tenant = guard.tenant()?;
    guard.delete_model(&guard.principal, tenant, &ModelName::lookup(&path.model)?, &info).await?;
    models.forget(tenant.id, &path.model);
    Ok(HttpResponse::NoContent().finish())
}

/// Upload a new version: the raw artifact as the body (`application/octet-stream`), streamed,
/// encrypted as it arrives. ONNX models are validated and their signature extracted.
#[utoipa::path(
    tag = "models", params(TenantPath, ModelPath, UploadQuery), security(("bearer" = [])),
    request_body(content = Binary, content_type = "application/octet-stream", description = "The artifact"),
    responses(
        (status = 201, body = VersionView),
        (status = 422, description = "Not a valid model (`invalid_model`)"),
        (status = 400, description = "Checksum mismatch (`checksum_mismatch`)"),
        (status = 403, description = "Storage quota exceeded (`quota_exceeded`)"),
        (status = 413, description = "Larger than the platform's artifact limit"),
    )
)]
#[post("/v1/tenants/{tenant}/models/{model}/versions")]
pub async fn upload_version(
    guard: Guarded<{ perm::MODELS_WRITE }, RegistryService>,
    models: web::Data<ModelManager>,
    info: RequestInfo,
    req: HttpRequest,
    path: web::Path<ModelPath>,
    query: web::Query<UploadQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
        let ok = content_type.to_str().is_ok_and(|t| t.starts_with("application/octet-stream"));
        if !ok {
            return Err(ApiError::new(Code::UnsupportedMediaType, "upload the artifact as application/octet-stream"));
        }
    }
    let query = query.into_inner();
    let burn = match (query.architecture, query.config) {
        (None, None) => None,
        (Some(architecture), config) => {
            let config: serde_json::Value = match config {
                Some(text) => serde_json::from_str(&text)
                    .map_err(|e| ApiError::new(Code::Unprocessable, format!("config is not JSON: {e}")))?,
                None => serde_json::json!({}),
            };
            Some(serde_json::json!({ "architecture": architecture, "config": config }))
        }
        (None, Some(_)) => return Err(ApiError::new(Code::Unprocessable, "config needs an architecture")),
    };
    let spec = UploadSpec {
        expected_sha256: query.sha256.as_deref().map(parse_sha256).transpose()?,
        declared_len: req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
        burn,
        metadata: None,
    };
    let tenant = guard.tenant()?;
    let version = guard.upload(&guard.principal, tenant, &ModelName::lookup(&path.model)?, spec, body, &info).await?;
    // "Latest" now means the new version.
    models.forget(tenant.id, &path.model);
    Ok(HttpResponse::Created().json(version))
}

/// List a model's live versions, by number.
#[utoipa::path(
    tag = "models", params(TenantPath, ModelPath, PageQuery<i32>), security(("bearer" = [])),
    responses((status = 200, body = Page<VersionView>))
)]
#[get("/v1/tenants/{tenant}/models/{model}/versions")]
pub async fn list_versions(
    guard: Guarded<{ perm::MODELS_READ }, RegistryService>,
    path: web::Path<ModelPath>,
    page: web::Query<PageQuery<i32>>,
) -> Result<web::Json<Page<VersionView>>, ApiError> {
    Ok(web::Json(guard.list_versions(guard.tenant()?, &ModelName::lookup(&path.model)?, &page.parse()?).await?))
}

/// A version, by number or alias.
#[utoipa::path(tag = "models", params(TenantPath, VersionPath), security(("bearer" = [])), responses((status = 200, body = VersionView)))]
#[get("/v1/tenants/{tenant}/models/{model}/versions/{version}")]
pub async fn get_version(
    guard: Guarded<{ perm::MODELS_READ }, RegistryService>,
    path: web::Path<VersionPath>,
) -> Result<web::Json<VersionView>, ApiError> {
    let version = VersionRef::parse(&path.version)?;
    let stored = guard.get_version(guard.tenant()?, &ModelName::lookup(&path.model)?, Some(&version)).await?;
    Ok(web::Json(stored.view))
}

/// Download a version's artifact, decrypted and verified as it streams (audited).
#[utoipa::path(
    tag = "models", params(TenantPath, VersionPath), security(("bearer" = [])),
    responses((status = 200, description = "The artifact", content_type = "application/octet-stream", body = Binary))
)]
#[get("/v1/tenants/{tenant}/models/{model}/versions/{version}/artifact")]
pub async fn download_version(
    guard: Guarded<{ perm::MODELS_DOWNLOAD }, RegistryService>,
    info: RequestInfo,
    path: web::Path<VersionPath>,
) -> Result<HttpResponse, ApiError> {
    let version = VersionRef::parse(&path.version)?;
    let tenant = guard.tenant()?;
    let (stored, stream) = guard
        .download(AuditActor::from(&guard.principal), tenant.id, &ModelName::lookup(&path.model)?, Some(&version), &info)
        .await?;
    let filename = format!(
        "{}-v{}.{}",
        stored.view.model,
        stored.view.version,
        if stored.view.framework == Framework::Onnx { "onnx" } else { "mpk" }
    );
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .no_chunking(stored.view.size_bytes as u64)
        .insert_header((header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")))
        .insert_header(("x-checksum-sha256", stored.view.sha256.clone()))
        .insert_header((header::ETAG, format!("\"{}\"", stored.view.sha256)))
        .streaming(stream))
}

/// Delete a version (soft, audited). Refused while an alias points at it.
#[utoipa::path(
    tag = "models", params(TenantPath, VersionPath), security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "Behind an alias (`version_has_alias`)"),
    )
)]
#[delete("/v1/tenants/{tenant}/models/{model}/versions/{version}")]
pub async fn delete_version(
    guard: Guarded<{ perm::MODELS_WRITE }, RegistryService>,
    models: web::Data<ModelManager>,
    info: RequestInfo,
    path: web::Path<VersionPath>,
) -> Result<HttpResponse, ApiError> {
    let version = VersionRef::parse(&path.version)?;
    let tenant = guard.tenant()?;
    guard.delete_version(&guard.principal, tenant, &ModelName::lookup(&path.model)?, &version, &info).await?;
    models.forget(tenant.id, &path.model);
    Ok(HttpResponse::NoContent().finish())
}

/// Point an alias at a version, creating or moving it atomically.
#[utoipa::path(
    tag = "models", params(TenantPath, AliasPath), request_body = SetAliasRequest, security(("bearer" = [])),
    responses((status = 200, body = ModelView))
)]
#[put("/v1/tenants/{tenant}/models/{model}/aliases/{alias}")]
pub async fn set_alias(
    guard: Guarded<{ perm::MODELS_WRITE }, RegistryService>,
    models: web::Data<ModelManager>,
    info: RequestInfo,
    path: web::Path<AliasPath>,
    body: Json<SetAliasRequest>,
) -> Result<web::Json<ModelView>, ApiError> {
    let alias = AliasName::parse(&path.alias)?;
    let tenant = guard.tenant()?;
    let model = guard.set_alias(&guard.principal, tenant, &ModelName::lookup(&path.model)?, &alias, body.version, &info).await?;
    // This instance serves the new target at once; others within `inference.resolve_ttl_ms`.
    models.forget(tenant.id, &path.model);
    models.preload(tenant.id, &path.model, alias.as_str());
    Ok(web::Json(model))
}

/// Remove an alias.
#[utoipa::path(tag = "models", params(TenantPath, AliasPath), security(("bearer" = [])), responses((status = 204, description = "Removed")))]
#[delete("/v1/tenants/{tenant}/models/{model}/aliases/{alias}")]
pub async fn remove_alias(
    guard: Guarded<{ perm::MODELS_WRITE }, RegistryService>,
    models: web::Data<ModelManager>,
    info: RequestInfo,
    path: web::Path<AliasPath>,
) -> Result<HttpResponse, ApiError> {
    let alias = AliasName::parse(&path.alias)?;
    let tenant = guard.tenant()?;
    guard.remove_alias(&guard.principal, tenant, &ModelName::lookup(&path.model)?, &alias, &info).await?;
    models.forget(tenant.id, &path.model);
    Ok(HttpResponse::NoContent().finish())
}

/// Rotate the tenant's encryption key: a new key wraps every data key; artifacts are not
/// re-encrypted. Audited.
#[utoipa::path(tag = "models", params(TenantPath), security(("bearer" = [])), responses((status = 200, body = RotationResult)))]
#[post("/v1/tenants/{tenant}/keys/rotate")]
pub async fn rotate_tenant_key(
    guard: Guarded<{ perm::KEYS_ROTATE }, RegistryService>,
    info: RequestInfo,
) -> Result<web::Json<RotationResult>, ApiError> {
    let rewrapped_data_keys = guard.rotate_tenant_key(&guard.principal, guard.tenant()?, &info).await?;
    Ok(web::Json(RotationResult { rewrapped_data_keys }))
}
