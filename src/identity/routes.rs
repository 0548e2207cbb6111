//! `/v1/auth/*`, `/v1/me` and `/.well-known/jwks.json`.

use actix_web::{HttpResponse, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;


use super::permissions::{Permission, Role, perm};
use super::principal::Actor;
use super::service::{PasswordReset, TokenPair};
use super::Guarded;
use crate::audit::RequestInfo;
use crate::error::ApiError;
use crate::startup::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(example = "alice@example.com")]
    pub email: String,
    #[schema(example = "correct horse battery staple")]
    pub password: String,
    /// Tenant slug to act for. Optional when the user belongs to exactly one tenant.
    #[schema(example = "acme")]
    pub tenant: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// Also revoke this refresh token's session.
    pub refresh_token: Option<String>,
}


/// Log in with email and password; returns an access token and a refresh token.
#[utoipa::path(
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = TokenPair),
        (status = 401, body = crate::error::Problem, content_type = "application/problem+json",
         description = "Wrong email or password, or no access to the tenant (`invalid_credentials`)"),
        (status = 403, body = crate::error::Problem, content_type = "application/problem+json",
         description = "The tenant is suspended (`tenant_suspended`)"),
        (status = 429, body = crate::error::Problem, content_type = "application/problem+json",
         description = "Too many failed logins for this account or address (`login_throttled`); see `Retry-After`"),
    )
)]
#[post("/v1/auth/login")]
pub async fn login(
    state: web::Data<AppState>,
    info: RequestInfo,
    body: web::Json<LoginRequest>,
) -> Result<web::Json<TokenPair>, ApiError> {
    let body = body.into_inner();
    let pair = state.identity.login(&body.email, body.password, body.tenant.as_deref(), &info).await?;
    Ok(web::Json(pair))
}

/// Exchange a refresh token for a new token pair. Each refresh token works once; presenting a
/// used one revokes its whole session.
#[utoipa::path(
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, body = TokenPair),
        (status = 401, body = crate::error::Problem, content_type = "application/problem+json",
         description = "Invalid, expired or revoked refresh token (`invalid_token`, `token_expired`, `token_revoked`), \
                        or reuse detected (`refresh_token_reused`)"),
    )
)]
#[post("/v1/auth/refresh")]
pub async fn refresh(
    state: web::Data<AppState>,
    info: RequestInfo,
    body: web::Json<RefreshRequest>,
) -> Result<web::Json<TokenPair>, ApiError> {
    Ok(web::Json(state.identity.refresh(&body.refresh_token, &info).await?))
}

/// Revoke the calling access token (and optionally a refresh token's session).
#[utoipa::path(
    tag = "auth",
    request_body = LogoutRequest,
    security(("bearer" = [])),
    responses((status = 204, description = "Revoked"))
)]
#[post("/v1/auth/logout")]
pub async fn logout(
    guard: Guarded<{ perm::SELF_READ }>,
    state: web::Data<AppState>,
    info: RequestInfo,
    body: web::Json<LogoutRequest>,
) -> Result<HttpResponse, ApiError> {
    state.identity.logout(&guard.principal, body.refresh_token.as_deref(), &info).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Serialize, ToSchema)]
pub struct MeView {
    pub actor: Actor,
    pub email: Option<String>,
    pub platform_admin: bool,
    /// The tenant this credential acts for.
    pub tenant: Option<String>,
    pub role: Option<Role>,
    pub permissions: Vec<Permission>,
    /// For users: every tenant they belong to, with their role there.
    pub memberships: Vec<MembershipView>,
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct MembershipView {
    pub tenant: String,
    pub role: String,
}

/// Credential check for gateways and sidecars: 204 when the bearer credential is valid (and its
/// tenant active and within its rate limit), 401/403 otherwise. Touches no database on the
/// hot path.
#[utoipa::path(tag = "auth", security(("bearer" = [])), responses((status = 204, description = "The credential is valid")))]
#[get("/v1/auth/verify")]
pub async fn verify(_guard: Guarded<{ perm::SELF_READ }>) -> HttpResponse {
    HttpResponse::NoContent().finish()
}

/// The caller: identity, tenant, role and effective permissions.
#[utoipa::path(tag = "auth", security(("bearer" = [])), responses((status = 200, body = MeView)))]
#[get("/v1/me")]
pub async fn me(guard: Guarded<{ perm::SELF_READ }>, state: web::Data<AppState>) -> Result<web::Json<MeView>, ApiError> {
    let principal = &guard.principal;
    let (email, memberships) = match principal.user_id() {
        Some(user) => {
            let mut tx = crate::tenancy::db::begin_as_user(&state.db, user).await?;
            let email: Option<String> =
                sqlx::query_scalar("SELECT email FROM users WHERE id = $1").bind(user).fetch_optional(&mut *tx).await?;
            let memberships: Vec<MembershipView> = sqlx::query_as(
                "SELECT t.slug AS tenant, m.role FROM memberships m JOIN tenants t ON t.id = m.tenant_id \
                 WHERE m.user_id = $1 ORDER BY t.slug",
            )
            .bind(user)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            (email, memberships)
        }
        None => (None, Vec::new()),
    };
    Ok(web::Json(MeView {
        actor: principal.actor,
        email,
        platform_admin: principal.platform_admin,
        tenant: principal.tenant.as_ref().map(|t| t.slug.clone()),
        role: principal.role,
        permissions: principal.permissions(),
        memberships,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    /// At least 12 characters.
    pub new_password: String,
}

/// Change your own password. Every session of yours ends, this one included: log in again.
#[utoipa::path(
    tag = "auth", request_body = ChangePasswordRequest, security(("bearer" = [])),
    responses((status = 204, description = "Changed; every session ended"),
              (status = 400, body = crate::error::Problem, content_type = "application/problem+json", description = "Weak new password (`weak_password`)"),
              (status = 401, body = crate::error::Problem, content_type = "application/problem+json", description = "Wrong current password (`invalid_credentials`)"),
              (status = 429, body = crate::error::Problem, content_type = "application/problem+json", description = "Too many wrong attempts (`login_throttled`)"))
)]
#[post("/v1/me/password")]
pub async fn change_password(
    guard: Guarded<{ perm::SELF_READ }>,
    state: web::Data<AppState>,
    info: RequestInfo,
    body: web::Json<ChangePasswordRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    state.identity.change_password(&guard.principal, body.current_password, body.new_password, &info).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueResetRequest {
    #[schema(example = "alice@example.com")]
    pub email: String,
}

/// Issue a one-time password reset token for a user (platform administrators).
#[utoipa::path(
    tag = "auth", request_body = IssueResetRequest, security(("bearer" = [])),
    responses((status = 201, body = PasswordReset),
              (status = 404, body = crate::error::Problem, content_type = "application/problem+json", description = "No user has this email (`not_found`)"))
)]
#[post("/v1/password-resets")]
pub async fn issue_password_reset(
    guard: Guarded<{ perm::TENANTS_MANAGE }>,
    state: web::Data<AppState>,
    info: RequestInfo,
    body: web::Json<IssueResetRequest>,
) -> Result<HttpResponse, ApiError> {
    let reset = state.identity.issue_password_reset(&guard.principal, &body.email, &info).await?;
    Ok(HttpResponse::Created().json(reset))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemResetRequest {
    /// The reset token (`tsr_…`).
    pub token: String,
    /// At least 12 characters.
    pub new_password: String,
}

/// Set a new password with a reset token; every session of the user ends.
#[utoipa::path(
    tag = "auth", request_body = RedeemResetRequest,
    responses((status = 204, description = "Password set; every session ended"),
              (status = 400, body = crate::error::Problem, content_type = "application/problem+json",
               description = "Unknown, expired or used token (`invalid_reset_token`), or a weak password (`weak_password`)"))
)]
#[post("/v1/password-resets/redeem")]
pub async fn redeem_password_reset(
    state: web::Data<AppState>,
    info: RequestInfo,
    body: web::Json<RedeemResetRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    state.identity.redeem_password_reset(&body.token, body.new_password, &info).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Public keys that verify Tessera's access tokens (JWK Set; Ed25519 `OKP` keys with `kid`).
#[utoipa::path(tag = "auth", responses((status = 200, description = "JWK Set", body = Object)))]
#[get("/.well-known/jwks.json")]
pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().insert_header(("cache-control", "public, max-age=300")).json(state.keyring.jwks())
}

