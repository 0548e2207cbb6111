//! `/v1/tenants/*`: tenants (platform administrators), members and API keys (per tenant).

use actix_web::{HttpResponse, delete, get, patch, post, web};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use actix_web::HttpMessage;

use super::{TenantService, AcceptedInvitation, ApiKeyView, CreatedApiKey, CreatedInvitation, InvitationView, Limits, MemberView, NewTenant, TenantView};
use crate::tenancy::{TenantSlug, TenantStatus};
use crate::request::RequestInfo;
use crate::error::ApiError;
use crate::http::extract::Json;
use crate::http::guard::{Guarded, TenantPath};
use crate::identity::{Role, perm};
use crate::page::{Page, PageQuery};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// 2-63 of `a-z`, `0-9` and `-`, not starting with `-`.
    #[schema(example = "acme", pattern = "^[a-z0-9][a-z0-9-]{1,62}$")]
    pub slug: String,
    /// Shown to people; leading and trailing spaces are dropped.
    #[schema(example = "Acme Corp", min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// Default 100.
    #[schema(minimum = 0)]
    pub max_models: Option<i32>,
    /// Default 10 GiB.
    #[schema(minimum = 0)]
    pub max_storage_bytes: Option<i64>,
    /// Default 1000.
    #[schema(minimum = 1)]
    pub rate_limit_per_second: Option<i32>,
    /// Default 2000.
    #[schema(minimum = 1)]
    pub rate_limit_burst: Option<i32>,
}

#[derive(Deserialize, IntoParams)]
pub struct MemberPath {
    /// The member's user id.
    user_id: Uuid,
}

#[derive(Deserialize, IntoParams)]
pub struct ApiKeyPath {
    /// The API key's id.
    key_id: Uuid,
}

/// Create a tenant (platform administrators).
#[utoipa::path(
    tag = "tenants",
    request_body = CreateTenantRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = TenantView),
        (status = 409, description = "Slug taken (`already_exists`)"),
    )
)]
#[post("/v1/tenants")]
pub async fn create_tenant(
    guard: Guarded<{ perm::TENANTS_MANAGE }, TenantService>,
    info: RequestInfo,
    body: Json<CreateTenantRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let slug = TenantSlug::parse(&body.slug)?;
    let tenant = guard
        .create_tenant(&guard.principal, NewTenant {
            slug,
            name: body.name,
            limits: Limits {
                max_models: body.max_models,
                max_storage_bytes: body.max_storage_bytes,
                rate_limit_per_second: body.rate_limit_per_second,
                rate_limit_burst: body.rate_limit_burst,
            },
        }, &info)
        .await?;
    Ok(HttpResponse::Created().json(tenant))
}

/// List every tenant (platform administrators).
#[utoipa::path(tag = "tenants", params(PageQuery<String>), security(("bearer" = [])), responses((status = 200, body = Page<TenantView>)))]
#[get("/v1/tenants")]
pub async fn list_tenants(
    guard: Guarded<{ perm::TENANTS_MANAGE }, TenantService>,
    page: web::Query<PageQuery<String>>,
) -> Result<web::Json<Page<TenantView>>, ApiError> {
    Ok(web::Json(guard.list_tenants(&page.parse()?).await?))
}

/// A tenant, as seen by its members and platform administrators.
#[utoipa::path(
    tag = "tenants", params(TenantPath), security(("bearer" = [])),
    responses((status = 200, body = TenantView))
)]
#[get("/v1/tenants/{tenant}")]
pub async fn get_tenant(guard: Guarded<{ perm::SELF_READ }, TenantService>) -> Result<web::Json<TenantView>, ApiError> {
    Ok(web::Json(guard.get_tenant(guard.tenant()?.id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLimitsRequest {
    #[schema(minimum = 0)]
    pub max_models: Option<i32>,
    #[schema(minimum = 0)]
    pub max_storage_bytes: Option<i64>,
    #[schema(minimum = 1)]
    pub rate_limit_per_second: Option<i32>,
    #[schema(minimum = 1)]
    pub rate_limit_burst: Option<i32>,
}

/// Change a tenant's quotas or rate limit; the fields left out keep their values (platform
/// administrators). A quota below what the tenant uses refuses only what would grow past it.
#[utoipa::path(
    tag = "tenants", params(TenantPath), request_body = SetLimitsRequest, security(("bearer" = [])),
    responses((status = 200, body = TenantView),
              (status = 400, description = "A negative quota or a zero rate limit (`invalid_request`)"))
)]
#[patch("/v1/tenants/{tenant}")]
pub async fn set_tenant_limits(
    guard: Guarded<{ perm::TENANTS_MANAGE }, TenantService>,
    info: RequestInfo,
    body: Json<SetLimitsRequest>,
) -> Result<web::Json<TenantView>, ApiError> {
    let body = body.into_inner();
    let limits = Limits {
        max_models: body.max_models,
        max_storage_bytes: body.max_storage_bytes,
        rate_limit_per_second: body.rate_limit_per_second,
        rate_limit_burst: body.rate_limit_burst,
    };
    Ok(web::Json(guard.set_limits(&guard.principal, guard.tenant()?.id, limits, &info).await?))
}

/// Suspend a tenant: its tokens and API keys stop working at once (platform administrators).
#[utoipa::path(
    tag = "tenants", params(TenantPath), security(("bearer" = [])),
    responses((status = 200, body = TenantView))
)]
#[post("/v1/tenants/{tenant}/suspend")]
pub async fn suspend_tenant(
    guard: Guarded<{ perm::TENANTS_MANAGE }, TenantService>,
    info: RequestInfo,
) -> Result<web::Json<TenantView>, ApiError> {
    Ok(web::Json(guard.set_status(&guard.principal, guard.tenant()?.id, TenantStatus::Suspended, &info).await?))
}

/// Resume a suspended tenant (platform administrators).
#[utoipa::path(
    tag = "tenants", params(TenantPath), security(("bearer" = [])),
    responses((status = 200, body = TenantView))
)]
#[post("/v1/tenants/{tenant}/resume")]
pub async fn resume_tenant(
    guard: Guarded<{ perm::TENANTS_MANAGE }, TenantService>,
    info: RequestInfo,
) -> Result<web::Json<TenantView>, ApiError> {
    Ok(web::Json(guard.set_status(&guard.principal, guard.tenant()?.id, TenantStatus::Active, &info).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// An email address: one `@`, a dot inside the domain, no spaces; at most 320 characters.
    #[schema(example = "bob@example.com", max_length = 320, pattern = "^[\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*[^\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000@]+@[^\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000@.][^\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000@]*\\.[^\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000@]*[^\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000@.][\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*$")]
    pub email: String,
    pub role: Role,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitationRequest {
    /// The invitation's token (`tsi_…`).
    pub token: String,
    /// For a new account: the password it will have (at least 12 characters). An existing
    /// account accepts while logged in (`Authorization: Bearer <access token>`) and leaves it out.
    #[schema(min_length = 12, max_length = 256)]
    pub password: Option<String>,
}

#[derive(Deserialize, IntoParams)]
pub struct InvitationPath {
    /// The invitation's id.
    invitation_id: Uuid,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRoleRequest {
    pub role: Role,
}

/// List a tenant's members.
#[utoipa::path(
    tag = "members", params(TenantPath, PageQuery<String>), security(("bearer" = [])),
    responses((status = 200, description = "Members by email", body = Page<MemberView>))
)]
#[get("/v1/tenants/{tenant}/members")]
pub async fn list_members(
    guard: Guarded<{ perm::MEMBERS_READ }, TenantService>,
    page: web::Query<PageQuery<String>>,
) -> Result<web::Json<Page<MemberView>>, ApiError> {
    Ok(web::Json(guard.list_members(guard.tenant()?, &page.parse()?).await?))
}

/// Invite someone to the tenant with a role. The answer is the same whether or not the email
/// belongs to an account; its `token` is shown this once, for the invitee to accept.
#[utoipa::path(
    tag = "members", params(TenantPath), request_body = InviteRequest, security(("bearer" = [])),
    responses((status = 201, body = CreatedInvitation),
              (status = 409, description = "Already a member, or already invited (`already_exists`)"),
              (status = 403, description = "The role confers permissions the caller does not hold (`forbidden`)"))
)]
#[post("/v1/tenants/{tenant}/invitations")]
pub async fn invite(
    guard: Guarded<{ perm::MEMBERS_MANAGE }, TenantService>,
    info: RequestInfo,
    body: Json<InviteRequest>,
) -> Result<HttpResponse, ApiError> {
    let invitation = guard.invite(&guard.principal, guard.tenant()?, &body.email, body.role, &info).await?;
    Ok(HttpResponse::Created().json(invitation))
}

/// A tenant's invitations, pending and past (never their tokens).
#[utoipa::path(
    tag = "members", params(TenantPath, PageQuery<Uuid>), security(("bearer" = [])),
    responses((status = 200, description = "Invitations, oldest first", body = Page<InvitationView>))
)]
#[get("/v1/tenants/{tenant}/invitations")]
pub async fn list_invitations(
    guard: Guarded<{ perm::MEMBERS_READ }, TenantService>,
    page: web::Query<PageQuery<Uuid>>,
) -> Result<web::Json<Page<InvitationView>>, ApiError> {
    Ok(web::Json(guard.list_invitations(guard.tenant()?, &page.parse()?).await?))
}

/// Revoke a pending invitation.
#[utoipa::path(
    tag = "members", params(TenantPath, InvitationPath), security(("bearer" = [])),
    responses((status = 204, description = "Revoked"))
)]
#[delete("/v1/tenants/{tenant}/invitations/{invitation_id}")]
pub async fn revoke_invitation(
    guard: Guarded<{ perm::MEMBERS_MANAGE }, TenantService>,
    info: RequestInfo,
    path: web::Path<InvitationPath>,
) -> Result<HttpResponse, ApiError> {
    guard.revoke_invitation(&guard.principal, guard.tenant()?, path.invitation_id, &info).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Accept an invitation: a new account chooses its password here; an existing account accepts
/// while logged in as itself.
#[utoipa::path(
    tag = "members", request_body = AcceptInvitationRequest,
    responses((status = 201, body = AcceptedInvitation),
              (status = 400, description = "Unknown, expired, revoked or used token (`invalid_invitation`), or a weak password (`weak_password`)"),
              (status = 401, description = "The invitation is for an existing account: log in as it first (`unauthenticated`)"),
              (status = 409, description = "Already a member (`already_exists`)"))
)]
#[post("/v1/invitations/accept")]
pub async fn accept_invitation(
    req: actix_web::HttpRequest,
    tenant_admin: web::Data<TenantService>,
    info: RequestInfo,
    body: Json<AcceptInvitationRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let caller = req.extensions().get::<crate::identity::Principal>().cloned();
    let accepted = tenant_admin.accept_invitation(&body.token, body.password, caller.as_ref(), &info).await?;
    Ok(HttpResponse::Created().json(accepted))
}

/// Change a member's role. A demotion applies to the member's access tokens within seconds; a
/// promotion at their next refresh.
#[utoipa::path(
    tag = "members", params(TenantPath, MemberPath), request_body = ChangeRoleRequest, security(("bearer" = [])),
    responses((status = 200, body = MemberView),
              (status = 409, description = "Would leave the tenant without an owner (`conflict`)"))
)]
#[patch("/v1/tenants/{tenant}/members/{user_id}")]
pub async fn change_member_role(
    guard: Guarded<{ perm::MEMBERS_MANAGE }, TenantService>,
    info: RequestInfo,
    path: web::Path<MemberPath>,
    body: Json<ChangeRoleRequest>,
) -> Result<web::Json<MemberView>, ApiError> {
    Ok(web::Json(guard.change_role(&guard.principal, guard.tenant()?, path.user_id, body.role, &info).await?))
}

/// Remove a member from the tenant.
#[utoipa::path(
    tag = "members", params(TenantPath, MemberPath), security(("bearer" = [])),
    responses((status = 204, description = "Removed"),
              (status = 409, description = "Would leave the tenant without an owner (`conflict`)"))
)]
#[delete("/v1/tenants/{tenant}/members/{user_id}")]
pub async fn remove_member(
    guard: Guarded<{ perm::MEMBERS_MANAGE }, TenantService>,
    info: RequestInfo,
    path: web::Path<MemberPath>,
) -> Result<HttpResponse, ApiError> {
    guard.remove_member(&guard.principal, guard.tenant()?, path.user_id, &info).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// 1-100 characters, not all blank; leading and trailing spaces are dropped.
    #[schema(example = "fraud-scoring-service", min_length = 1, max_length = 100, pattern = "\\S")]
    pub name: String,
    /// Any role but `owner`.
    #[schema(value_type = ApiKeyRole)]
    pub role: Role,
    /// Days until the key expires (1-3650); never when absent.
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
}

/// The roles an API key may have: every role but `owner`.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // documentation only: requests deserialize into `Role`
enum ApiKeyRole {
    Admin,
    MlEngineer,
    Auditor,
    Inference,
}

/// Create an API key for machines. The secret is in this response only.
#[utoipa::path(
    tag = "api-keys", params(TenantPath), request_body = CreateApiKeyRequest, security(("bearer" = [])),
    responses((status = 201, body = CreatedApiKey))
)]
#[post("/v1/tenants/{tenant}/api-keys")]
pub async fn create_api_key(
    guard: Guarded<{ perm::API_KEYS_MANAGE }, TenantService>,
    info: RequestInfo,
    body: Json<CreateApiKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let key = guard
        .create_api_key(&guard.principal, guard.tenant()?, &body.name, body.role, body.expires_in_days, &info)
        .await?;
    Ok(HttpResponse::Created().json(key))
}

/// List a tenant's API keys (never their secrets).
#[utoipa::path(
    tag = "api-keys", params(TenantPath, PageQuery<Uuid>), security(("bearer" = [])),
    responses((status = 200, description = "API keys, oldest first", body = Page<ApiKeyView>))
)]
#[get("/v1/tenants/{tenant}/api-keys")]
pub async fn list_api_keys(
    guard: Guarded<{ perm::API_KEYS_READ }, TenantService>,
    page: web::Query<PageQuery<Uuid>>,
) -> Result<web::Json<Page<ApiKeyView>>, ApiError> {
    Ok(web::Json(guard.list_api_keys(guard.tenant()?, &page.parse()?).await?))
}

/// Revoke an API key; it stops working at once.
#[utoipa::path(
    tag = "api-keys", params(TenantPath, ApiKeyPath), security(("bearer" = [])),
    responses((status = 204, description = "Revoked"))
)]
#[delete("/v1/tenants/{tenant}/api-keys/{key_id}")]
pub async fn revoke_api_key(
    guard: Guarded<{ perm::API_KEYS_MANAGE }, TenantService>,
    info: RequestInfo,
    path: web::Path<ApiKeyPath>,
) -> Result<HttpResponse, ApiError> {
    guard.revoke_api_key(&guard.principal, guard.tenant()?, path.key_id, &info).await?;
    Ok(HttpResponse::NoContent().finish())
}
