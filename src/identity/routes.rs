//! `/v1/auth/*`, `/v1/me` and `/.well-known/jwks.json`.

use actix_web::{HttpResponse, get, post, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::jwt::Jwks;
use super::perm;
use super::service::{IdentityService, MeView, PasswordReset, TokenPair};
use crate::http::extract::Json;
use crate::http::guard::Guarded;
use crate::request::RequestInfo;
use crate::error::ApiError;

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
        (status = 401, description = "Wrong email or password, or no access to the tenant (`invalid_credentials`)"),
        (status = 403, description = "The tenant is suspended (`tenant_suspended`)"),
        (status = 429, description = "Too many failed logins for this account or address (`login_throttled`); see `Retry-After`"),
    )
)]
#[post("/v1/auth/login")]
pub async fn login(
    identity: web::Data<IdentityService>,
    info: RequestInfo,
    body: Json<LoginRequest>,
) -> Result<web::Json<TokenPair>, ApiError> {
    let body = body.into_inner();
    let pair = identity.login(&body.email, body.password, body.tenant.as_deref(), &info).await?;
    Ok(web::Json(pair))
}

/// Exchange a refresh token for a new token pair. Each refresh token works once; presenting a
/// used one revokes its whole session.
#[utoipa::path(
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, body = TokenPair),
        (status = 401, description = "Invalid, expired or revoked refresh token (`invalid_token`, `token_expired`, `token_revoked`), \
                        or reuse detected (`refresh_token_reused`)"),
    )
)]
#[post("/v1/auth/refresh")]
pub async fn refresh(
    identity: web::Data<IdentityService>,
    info: RequestInfo,
    body: Json<RefreshRequest>,
) -> Result<web::Json<TokenPair>, ApiError> {
    Ok(web::Json(identity.refresh(&body.refresh_token, &info).await?))
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
    guard: Guarded<{ perm::SELF_READ }, IdentityService>,
    info: RequestInfo,
    body: Json<LogoutRequest>,
) -> Result<HttpResponse, ApiError> {
    guard.logout(&guard.principal, body.refresh_token.as_deref(), &info).await?;
    Ok(HttpResponse::NoContent().finish())
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
pub async fn me(guard: Guarded<{ perm::SELF_READ }, IdentityService>) -> Result<web::Json<MeView>, ApiError> {
    Ok(web::Json(guard.me(&guard.principal).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    /// At least 12 characters (and at most 1024 bytes).
    #[schema(min_length = 12, max_length = 256)]
    pub new_password: String,
}

/// Change your own password. Every session of yours ends, this one included: log in again.
#[utoipa::path(
    tag = "auth", request_body = ChangePasswordRequest, security(("bearer" = [])),
    responses((status = 204, description = "Changed; every session ended"),
              (status = 400, description = "Weak new password (`weak_password`)"),
              (status = 401, description = "Wrong current password (`invalid_credentials`)"),
              (status = 429, description = "Too many wrong attempts (`login_throttled`)"))
)]
#[post("/v1/me/password")]
pub async fn change_password(
    guard: Guarded<{ perm::SELF_READ }, IdentityService>,
    info: RequestInfo,
    body: Json<ChangePasswordRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    guard.change_password(&guard.principal, body.current_password, body.new_password, &info).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueResetRequest {
    /// An email address: one `@`, a dot inside the domain, no spaces; at most 320 characters.
    #[schema(example = "alice@example.com", max_length = 320, pattern = "^[\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*[^\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000@]+@[^\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000@.][^\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000@]*\\.[^\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000@]*[^\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000@.][\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*$")]
    pub email: String,
}

/// Issue a one-time password reset token for a user (platform administrators).
#[utoipa::path(
    tag = "auth", request_body = IssueResetRequest, security(("bearer" = [])),
    responses((status = 201, body = PasswordReset),
              (status = 404, description = "No user has this email (`not_found`)"))
)]
#[post("/v1/password-resets")]
pub async fn issue_password_reset(
    guard: Guarded<{ perm::TENANTS_MANAGE }, IdentityService>,
    info: RequestInfo,
    body: Json<IssueResetRequest>,
) -> Result<HttpResponse, ApiError> {
    let reset = guard.issue_password_reset(&guard.principal, &body.email, &info).await?;
    Ok(HttpResponse::Created().json(reset))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemResetRequest {
    /// The reset token (`tsr_…`).
    pub token: String,
    /// At least 12 characters (and at most 1024 bytes).
    #[schema(min_length = 12, max_length = 256)]
    pub new_password: String,
}

/// Set a new password with a reset token; every session of the user ends.
#[utoipa::path(
    tag = "auth", request_body = RedeemResetRequest,
    responses((status = 204, description = "Password set; every session ended"),
              (status = 400, description = "Unknown, expired or used token (`invalid_reset_token`), or a weak password (`weak_password`)"))
)]
#[post("/v1/password-resets/redeem")]
pub async fn redeem_password_reset(
    identity: web::Data<IdentityService>,
    info: RequestInfo,
    body: Json<RedeemResetRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    identity.redeem_password_reset(&body.token, body.new_password, &info).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Public keys that verify Tessera's access tokens (JWK Set; Ed25519 `OKP` keys with `kid`).
#[utoipa::path(tag = "auth", responses((status = 200, description = "JWK Set", body = Object)))]
#[get("/.well-known/jwks.json")]
pub async fn jwks(jwks: web::Data<Jwks>) -> HttpResponse {
    HttpResponse::Ok().insert_header(("cache-control", "public, max-age=300")).json(&jwks.0)
}

