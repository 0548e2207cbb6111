//! `/v1/auth/*`, `/v1/me` and `/.well-known/jwks.json`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::jwt::Jwks;
use super::perm;
use super::service::{IdentityService, MeView, PasswordReset, TokenPair};
use crate::http::extract::Json;
use crate::http::guard::Guarded;
use crate::request::RequestInfo;
use crate::error::{ApiError, Code};

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
    /// The refresh token. Leave it out to use the `tessera_refresh` cookie instead, which
    /// needs `X-Tessera-Refresh: cookie`.
    pub refresh_token: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// Also revoke this refresh token's session.
    pub refresh_token: Option<String>,
}


/// The cookie that carries a browser's refresh token. `HttpOnly` keeps it from scripts,
/// `SameSite=Strict` from other sites' requests, and its path from every route but these.
const REFRESH_COOKIE: &str = "tessera_refresh";
const REFRESH_COOKIE_PATH: &str = "/v1/auth";
const REFRESH_MODE: &str = "x-tessera-refresh";

/// For the document only: the handlers read the header themselves.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct RefreshMode {
    /// `cookie`: the refresh token travels in the `tessera_refresh` cookie (HttpOnly, Secure,
    /// SameSite=Strict, scoped to `/v1/auth`), never in the body.
    #[param(rename = "X-Tessera-Refresh", nullable = false, pattern = "^cookie$")]
    mode: Option<String>,
}

/// Whether the request asks for its refresh token as a cookie (`X-Tessera-Refresh: cookie`).
///
/// A cookie travels by itself, so a request that uses one must also prove it comes from a
/// page of this origin: the custom header cannot be sent across origins without a CORS
/// preflight that Tessera never grants, and a browser's `Origin` and `Sec-Fetch-Site` must
/// agree when present (in case a proxy in front answers preflights).
fn cookie_mode(req: &HttpRequest) -> Result<bool, ApiError> {
    let Some(mode) = req.headers().get(REFRESH_MODE) else { return Ok(false) };
    if mode.as_bytes() != b"cookie" {
        return Err(ApiError::new(Code::InvalidHeader, "X-Tessera-Refresh accepts only `cookie`"));
    }
    let site = req.headers().get("sec-fetch-site").map(HeaderValue::as_bytes);
    if site.is_some_and(|site| site != b"same-origin" && site != b"none") {
        return Err(ApiError::new(Code::CookieRefused, "the refresh cookie is only for the portal's own origin"));
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let host = req.connection_info().host().to_owned();
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(&host));
        if !same {
            return Err(ApiError::new(Code::CookieRefused, "the refresh cookie is only for the portal's own origin"));
        }
    }
    Ok(true)
}

fn refresh_cookie(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == REFRESH_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

fn set_refresh_cookie(token: &str, max_age: u64) -> (header::HeaderName, String) {
    let cookie = format!("{REFRESH_COOKIE}={token}; Path={REFRESH_COOKIE_PATH}; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict");
    (header::SET_COOKIE, cookie)
}

/// The answer to a login or refresh: in cookie mode the refresh token leaves only as the cookie.
fn token_response(mut pair: TokenPair, cookie: bool, max_age: u64) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    response.insert_header((header::CACHE_CONTROL, "no-store"));
    if cookie {
        if let Some(token) = pair.refresh_token.take() {
            response.insert_header(set_refresh_cookie(&token, max_age));
        }
    }
    response.json(pair)
}

/// Log in with email and password; returns an access token and a refresh token.
///
/// Browsers send `X-Tessera-Refresh: cookie`: the refresh token is then set as an `HttpOnly`,
/// `Secure`, `SameSite=Strict` cookie on `/v1/auth` and left out of the body.
#[utoipa::path(
    tag = "auth",
    request_body = LoginRequest,
    params(RefreshMode),
    responses(
        (status = 200, body = TokenPair, headers(("Set-Cookie" = String, description = "In cookie mode: `tessera_refresh`"))),
        (status = 400, description = "X-Tessera-Refresh is not `cookie` (`invalid_header`)"),
        (status = 401, description = "Wrong email or password, or no access to the tenant (`invalid_credentials`)"),
        (status = 403, description = "The tenant is suspended (`tenant_suspended`), or cookie mode from another origin (`cookie_refused`)"),
        (status = 429, description = "Too many failed logins for this account or address (`login_throttled`); see `Retry-After`"),
    )
)]
#[post("/v1/auth/login")]
pub async fn login(
    identity: web::Data<IdentityService>,
    info: RequestInfo,
    req: HttpRequest,
    body: Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let cookie = cookie_mode(&req)?;
    let body = body.into_inner();
    let pair = identity.login(&body.email, body.password, body.tenant.as_deref(), &info).await?;
    Ok(token_response(pair, cookie, identity.refresh_ttl_seconds()))
}

/// Exchange a refresh token for a new token pair. Each refresh token works once; presenting a
/// used one revokes its whole session.
///
/// The token comes from the body or, when the body has none, from the `tessera_refresh`
/// cookie; the cookie is accepted only with `X-Tessera-Refresh: cookie` from the same origin,
/// and the new refresh token then replaces it.
#[utoipa::path(
    tag = "auth",
    request_body = RefreshRequest,
    params(RefreshMode),
    responses(
        (status = 200, body = TokenPair, headers(("Set-Cookie" = String, description = "In cookie mode: the rotated `tessera_refresh`"))),
        (status = 400, description = "A bad X-Tessera-Refresh (`invalid_header`)"),
        (status = 401, description = "No refresh token in the body and no cookie mode (`unauthenticated`); \
                                      invalid, expired or revoked refresh token (`invalid_token`, `token_expired`, `token_revoked`), \
                        or reuse detected (`refresh_token_reused`)"),
        (status = 403, description = "The cookie without X-Tessera-Refresh, or from another origin (`cookie_refused`)"),
    )
)]
#[post("/v1/auth/refresh")]
pub async fn refresh(
    identity: web::Data<IdentityService>,
    info: RequestInfo,
    req: HttpRequest,
    body: Json<RefreshRequest>,
) -> Result<HttpResponse, ApiError> {
    let cookie = cookie_mode(&req)?;
    let token = match body.into_inner().refresh_token {
        Some(token) => token,
        None if cookie => refresh_cookie(&req)
            .ok_or_else(|| ApiError::new(Code::InvalidToken, "no refresh token: none in the body and no tessera_refresh cookie"))?,
        // A cookie alone proves nothing about who sent the request.
        None if refresh_cookie(&req).is_some() => {
            return Err(ApiError::new(Code::CookieRefused, "refreshing from the cookie needs `X-Tessera-Refresh: cookie`"));
        }
        None => return Err(ApiError::new(Code::Unauthenticated, "no refresh token: send `refresh_token`, or the cookie with `X-Tessera-Refresh: cookie`")),
    };
    let pair = identity.refresh(&token, &info).await?;
    Ok(token_response(pair, cookie, identity.refresh_ttl_seconds()))
}

/// Revoke the calling access token (and optionally a refresh token's session: the one in the
/// body, else the one in the `tessera_refresh` cookie, which is cleared).
#[utoipa::path(
    tag = "auth",
    request_body = LogoutRequest,
    security(("bearer" = [])),
    responses((status = 204, description = "Revoked", headers(("Set-Cookie" = String, description = "Clears `tessera_refresh`"))))
)]
#[post("/v1/auth/logout")]
pub async fn logout(
    guard: Guarded<{ perm::SELF_READ }, IdentityService>,
    info: RequestInfo,
    req: HttpRequest,
    body: Json<LogoutRequest>,
) -> Result<HttpResponse, ApiError> {
    // The bearer token already proves the caller; the cookie only names a session to end, and
    // the service ends it only if it is the caller's own.
    let session = body.into_inner().refresh_token.or_else(|| refresh_cookie(&req));
    guard.logout(&guard.principal, session.as_deref(), &info).await?;
    Ok(HttpResponse::NoContent().insert_header(set_refresh_cookie("", 0)).finish())
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

