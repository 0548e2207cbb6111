//! The authentication middleware: a bearer credential becomes a `Principal` in the request's
//! extensions before routing, the tenant's rate limit is applied, and the path's `{tenant}` is
//! resolved, so that the guard never waits. A bad credential is refused here, its body unread.

use std::future::{Ready, ready};
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::AUTHORIZATION;
use actix_web::{Error, HttpMessage, ResponseError};
use futures::FutureExt;
use futures::future::LocalBoxFuture;

use crate::error::{ApiError, Code};
use crate::identity::Principal;
use crate::identity::authenticate::Authenticator;
use crate::tenancy::rate_limit::{Admission, RateLimiter};


/// Extracts the credential of `Authorization: Bearer <credential>`.
fn bearer(value: &[u8]) -> Result<&str, ApiError> {
    let text = std::str::from_utf8(value)
        .ok()
        .filter(|t| t.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
        .ok_or_else(|| ApiError::new(Code::InvalidToken, "the Authorization header is not ASCII"))?;
    let (scheme, credential) = text
        .split_once(' ')
        .ok_or_else(|| ApiError::new(Code::InvalidToken, "expected `Authorization: Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || credential.trim().is_empty() {
        return Err(ApiError::new(Code::InvalidToken, "expected `Authorization: Bearer <token>`"));
    }
    Ok(credential.trim())
}

/// Admission, the same for every protocol (HTTP here, gRPC's `authorization` metadata): the
/// credential becomes a principal, and a tenant's caller spends one unit of its rate limit.
pub async fn admit(authenticator: &Authenticator, limiter: &RateLimiter, authorization: &[u8]) -> Result<Principal, ApiError> {
    let principal = authenticator.authenticate(bearer(authorization)?).await?;
    if let Some(tenant) = &principal.tenant {
        if let Admission::Limited { retry_after_secs } = limiter.check(tenant).await {
            return Err(ApiError::new(Code::RateLimited, format!("tenant {} is over its request rate", tenant.slug))
                .with_retry_after(retry_after_secs));
        }
        tracing::Span::current().record("tenant_id", tracing::field::display(tenant.id));
    }
    Ok(principal)
}

pub struct Authenticate {
    authenticator: Arc<Authenticator>,
    limiter: RateLimiter,
}

impl Authenticate {
    pub fn new(authenticator: Arc<Authenticator>, limiter: RateLimiter) -> Self {
        Self { authenticator, limiter }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Authenticate
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = AuthenticateMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(AuthenticateMiddleware {
            service: Rc::new(service),
            admission: Rc::new((self.authenticator.clone(), self.limiter.clone())),
        }))
    }
}

pub struct AuthenticateMiddleware<S> {
    service: Rc<S>,
    /// One count to bump per request, on this worker only, instead of the shared ones (and
    /// the Redis address the limiter's client holds) of each part.
    admission: Rc<(Arc<Authenticator>, RateLimiter)>,
}

/// `decoded` is the path as routing sees it, percent-decoded once (but for `%`, `/` and `+`):
/// path parameters are decoded once more, so `%%300` there is a NUL too.
fn nul_in_uri(uri: &actix_web::http::Uri, decoded: &str) -> Option<ApiError> {
    let has_nul = |text: &str| text.contains('\0') || text.as_bytes().windows(3).any(|w| w == b"%00");
    if has_nul(uri.path()) || has_nul(decoded) {
        return Some(ApiError::new(Code::InvalidPath, "the path holds a NUL character (%00)"));
    }
    uri.query().filter(|q| has_nul(q)).map(|_| ApiError::new(Code::InvalidQuery, "the query holds a NUL character (%00)"))
}

fn refuse<B>(req: ServiceRequest, error: ApiError) -> ServiceResponse<EitherBody<B>> {
    req.into_response(error.error_response()).map_into_right_body()
}

impl<S, B> Service<ServiceRequest> for AuthenticateMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        // Postgres text cannot hold NUL, so no name, id or filter can contain one: refused
        // here, once, rather than failing in whichever query it would reach.
        if let Some(error) = nul_in_uri(req.uri(), req.match_info().as_str()) {
            return std::future::ready(Ok(refuse(req, error))).boxed_local();
        }
        let Some(header) = req.headers().get(AUTHORIZATION).cloned() else {
            let fut = self.service.call(req);
            return async move { fut.await.map(ServiceResponse::map_into_left_body) }.boxed_local();
        };
        let service = self.service.clone();
        let admission = self.admission.clone();
        async move {
            let (authenticator, limiter) = &*admission;
            let principal = match admit(authenticator, limiter, header.as_bytes()).await {
                Ok(principal) => principal,
                Err(error) => return Ok(refuse(req, error)),
            };
            if let Some(slug) = super::guard::path_tenant_slug(req.path()) {
                let resolved = match authenticator.tenants.by_slug(slug).await {
                    Ok(tenant) => tenant,
                    Err(error) => return Ok(refuse(req, ApiError::from(error))),
                };
                req.extensions_mut().insert(super::guard::PathTenant(resolved));
            }
            req.extensions_mut().insert(principal);
            service.call(req).await.map(ServiceResponse::map_into_left_body)
        }
        .boxed_local()
    }
}
