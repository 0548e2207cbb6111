//! Stable error codes, and the one error type of the HTTP API, rendered as RFC 9457
//! `application/problem+json`.
//!
//! Every failure a client can see carries a stable, machine-readable `code`. The table below is
//! the single place where a code gets its HTTP status and title; the OpenAPI spec lists the same
//! codes, so clients can switch on them.
//!
//! Each domain has its own error enum (`thiserror`) that names the `Code` of every variant
//! through `ErrorCode`; services return it. Only the HTTP edge turns it into an `ApiError`,
//! by `?` through the one `From` impl below. `Fault` is what every domain shares: the
//! database, Redis or an invariant failing under it.

use std::borrow::Cow;
use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";
/// What a client reads of a server failure; the cause goes to the log only.
pub const INTERNAL_DETAIL: &str = "the server failed to handle this request; it has been logged";
const PROBLEM_TYPE_PREFIX: &str = "urn:tessera:problem:";

macro_rules! error_codes {
    ($( $variant:ident => ($code:literal, $status:ident, $title:literal), )*) => {
        /// Stable error codes. Renaming one is a breaking API change.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code { $( $variant, )* }

        impl Code {
            pub const ALL: &'static [Code] = &[ $( Code::$variant, )* ];

            pub const fn as_str(self) -> &'static str {
                match self { $( Code::$variant => $code, )* }
            }

            pub const fn status(self) -> StatusCode {
                match self { $( Code::$variant => StatusCode::$status, )* }
            }

            pub const fn title(self) -> &'static str {
                match self { $( Code::$variant => $title, )* }
            }
        }
    };
}

error_codes! {
    InvalidJson => ("invalid_json", BAD_REQUEST, "Malformed JSON body"),
    InvalidRequest => ("invalid_request", BAD_REQUEST, "Invalid request"),
    InvalidQuery => ("invalid_query", BAD_REQUEST, "Invalid query string"),
    InvalidPath => ("invalid_path", BAD_REQUEST, "Invalid path parameter"),
    InvalidHeader => ("invalid_header", BAD_REQUEST, "Invalid header"),
    UnsupportedMediaType => ("unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, "Unsupported content type"),
    PayloadTooLarge => ("payload_too_large", PAYLOAD_TOO_LARGE, "Request body too large"),
    RouteNotFound => ("route_not_found", NOT_FOUND, "No such route"),
    MethodNotAllowed => ("method_not_allowed", METHOD_NOT_ALLOWED, "Method not allowed"),
    NotFound => ("not_found", NOT_FOUND, "Resource not found"),
    Conflict => ("conflict", CONFLICT, "Conflict"),
    Unauthenticated => ("unauthenticated", UNAUTHORIZED, "Authentication required"),
    InvalidToken => ("invalid_token", UNAUTHORIZED, "Invalid credentials"),
    TokenExpired => ("token_expired", UNAUTHORIZED, "Token expired"),
    TokenRevoked => ("token_revoked", UNAUTHORIZED, "Token revoked"),
    InvalidCredentials => ("invalid_credentials", UNAUTHORIZED, "Wrong email or password"),
    CookieRefused => ("cookie_refused", FORBIDDEN, "Cookie credential refused: X-Tessera-Refresh header or same origin missing"),
    RefreshTokenReused => ("refresh_token_reused", UNAUTHORIZED, "Refresh token reused; its session was revoked"),
    TenantSuspended => ("tenant_suspended", FORBIDDEN, "Tenant suspended"),
    TenantRequired => ("tenant_required", FORBIDDEN, "A tenant-scoped credential is required"),
    LoginThrottled => ("login_throttled", TOO_MANY_REQUESTS, "Too many failed logins"),
    AlreadyExists => ("already_exists", CONFLICT, "Already exists"),
    WeakPassword => ("weak_password", UNPROCESSABLE_ENTITY, "Password does not meet the policy"),
    InvalidInvitation => ("invalid_invitation", UNPROCESSABLE_ENTITY, "Invitation invalid, expired or already used"),
    InvalidResetToken => ("invalid_reset_token", UNPROCESSABLE_ENTITY, "Password reset token invalid, expired or already used"),
    Forbidden => ("forbidden", FORBIDDEN, "Permission denied"),
    RateLimited => ("rate_limited", TOO_MANY_REQUESTS, "Too many requests"),
    ClientError => ("client_error", BAD_REQUEST, "Bad request"),
    Unprocessable => ("unprocessable", UNPROCESSABLE_ENTITY, "Well formed, but not applicable here"),
    QuotaExceeded => ("quota_exceeded", FORBIDDEN, "Tenant quota exceeded"),
    InvalidModel => ("invalid_model", UNPROCESSABLE_ENTITY, "Not a valid model artifact"),
    ChecksumMismatch => ("checksum_mismatch", UNPROCESSABLE_ENTITY, "Checksum does not match the uploaded bytes"),
    VersionHasAlias => ("version_has_alias", CONFLICT, "Version is behind an alias"),
    InvalidDataset => ("invalid_dataset", UNPROCESSABLE_ENTITY, "Not a valid dataset"),
    IdempotencyKeyReused => ("idempotency_key_reused", UNPROCESSABLE_ENTITY, "Idempotency key reused for a different request"),
    JobFinished => ("job_finished", CONFLICT, "The job has already finished"),
    InvalidInput => ("invalid_input", UNPROCESSABLE_ENTITY, "Inputs do not match the model"),
    Overloaded => ("overloaded", SERVICE_UNAVAILABLE, "The model's queue is full"),
    DeadlineExceeded => ("deadline_exceeded", GATEWAY_TIMEOUT, "Deadline exceeded"),
    InferenceFailed => ("inference_failed", INTERNAL_SERVER_ERROR, "Inference failed"),
    ArtifactIntegrity => ("artifact_integrity", INTERNAL_SERVER_ERROR, "Stored artifact failed verification"),
    ServiceUnavailable => ("service_unavailable", SERVICE_UNAVAILABLE, "Service unavailable"),
    InternalError => ("internal_error", INTERNAL_SERVER_ERROR, "Internal server error"),
}

/// A domain error: each variant maps to a stable `Code`. Its `Display` is what the client
/// reads, so it must say what went wrong in the client's terms; for `internal_error` it is
/// logged instead, never shown.
pub trait ErrorCode: std::error::Error + Send + Sync + 'static {
    fn code(&self) -> Code;

    /// Seconds before a retry may succeed, for the failures that pass (`Retry-After`).
    fn retry_after(&self) -> Option<u64> {
        None
    }
}

impl<E: ErrorCode> From<E> for ApiError {
    fn from(error: E) -> Self {
        let code = error.code();
        let retry_after_secs = error.retry_after();
        if code == Code::InternalError {
            return ApiError { retry_after_secs, ..ApiError::internal(error) };
        }
        let detail = shortened(&error, MAX_DETAIL_BYTES);
        let source = code.status().is_server_error().then(|| anyhow::Error::new(error));
        ApiError { code, detail: Cow::Owned(detail), retry_after_secs, source }
    }
}

/// The longest detail a client is sent, in bytes.
pub const MAX_DETAIL_BYTES: usize = 4096;

/// `value` as text of at most `max` bytes, cut at a character boundary with "..." added, and
/// never formatted past that: what a caller sent can be megabytes, and escaping grows it.
pub fn shortened(value: &(impl fmt::Display + ?Sized), max: usize) -> String {
    struct Upto {
        text: String,
        max: usize,
        cut: bool,
    }
    impl fmt::Write for Upto {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let room = self.max.saturating_sub(self.text.len());
            if s.len() <= room {
                self.text.push_str(s);
                return Ok(());
            }
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.text.push_str(&s[..end]);
            self.cut = true;
            // Stops the formatting: nothing past the bound is made.
            Err(fmt::Error)
        }
    }
    let budget = max.saturating_sub(3);
    let mut out = Upto { text: String::new(), max: budget, cut: false };
    let _ = fmt::write(&mut out, format_args!("{value}"));
    if out.cut {
        out.text.push_str("...");
    }
    out.text
}

/// A detail cut to `MAX_DETAIL_BYTES`: details can echo what the caller sent (names, values),
/// and a refusal is never larger than that.
fn bounded(detail: Cow<'static, str>) -> Cow<'static, str> {
    if detail.len() <= MAX_DETAIL_BYTES {
        return detail;
    }
    Cow::Owned(shortened(&*detail, MAX_DETAIL_BYTES))
}

/// What fails under every domain alike: the database, Redis, or an invariant of the server.
/// Clients learn only that the server failed (or, for a pool that cannot connect, that it
/// is unavailable for now); the log gets the cause.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error("{}", database_detail(.0))]
    Database(#[from] sqlx::Error),
    #[error("redis failed")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn database_detail(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::PoolTimedOut => "the database is not reachable right now".to_owned(),
        // The driver's own text goes to the log, as this error's source, never to a client.
        _ => "the database failed".to_owned(),
    }
}

impl ErrorCode for Fault {
    fn code(&self) -> Code {
        match self {
            Fault::Database(sqlx::Error::PoolTimedOut) => Code::ServiceUnavailable,
            _ => Code::InternalError,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        matches!(self, Fault::Database(sqlx::Error::PoolTimedOut)).then_some(2)
    }
}

/// Gives a domain error enum with a `Fault(Fault)` variant the conversions `?` needs from
/// `sqlx::Error`, `redis::RedisError` and `anyhow::Error`.
#[macro_export]
macro_rules! faults_into {
    ($error:ty) => {
        impl From<sqlx::Error> for $error {
            fn from(e: sqlx::Error) -> Self {
                Self::Fault($crate::error::Fault::Database(e))
            }
        }
        impl From<redis::RedisError> for $error {
            fn from(e: redis::RedisError) -> Self {
                Self::Fault($crate::error::Fault::Redis(e))
            }
        }
        impl From<anyhow::Error> for $error {
            fn from(e: anyhow::Error) -> Self {
                Self::Fault($crate::error::Fault::Internal(e))
            }
        }
    };
}

/// An error on its way to the client. `detail` is shown to the client; `source` is logged only.
pub struct ApiError {
    code: Code,
    detail: Cow<'static, str>,
    retry_after_secs: Option<u64>,
    source: Option<anyhow::Error>,
}

/// The wire shape of every error response (RFC 9457 plus `code`).
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// `urn:tessera:problem:<code>`
    #[schema(example = "urn:tessera:problem:invalid_json")]
    #[serde(rename = "type")]
    pub type_: String,
    #[schema(example = "Malformed JSON body")]
    pub title: &'static str,
    #[schema(example = 400)]
    pub status: u16,
    #[schema(example = "expected value at line 1 column 2")]
    pub detail: String,
    /// Stable, machine-readable error code.
    #[schema(example = "invalid_json")]
    pub code: &'static str,
    /// The detail again, under the name Open Inference Protocol clients read (`error`).
    #[schema(example = "expected value at line 1 column 2")]
    pub error: String,
}

impl ApiError {
    pub fn new(code: Code, detail: impl Into<Cow<'static, str>>) -> Self {
        Self { code, detail: bounded(detail.into()), retry_after_secs: None, source: None }
    }

    /// A server-side failure: the client learns only that it happened, the log gets the cause.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        Self {
            code: Code::InternalError,
            detail: Cow::Borrowed(INTERNAL_DETAIL),
            retry_after_secs: None,
            source: Some(source.into()),
        }
    }

    pub fn unavailable(detail: impl Into<Cow<'static, str>>, retry_after_secs: u64) -> Self {
        Self::new(Code::ServiceUnavailable, detail).with_retry_after(retry_after_secs)
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn code(&self) -> Code {
        self.code
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after_secs
    }

    pub fn problem(&self) -> Problem {
        Problem {
            type_: format!("{PROBLEM_TYPE_PREFIX}{}", self.code.as_str()),
            title: self.code.title(),
            status: self.code.status().as_u16(),
            detail: self.detail.to_string(),
            code: self.code.as_str(),
            error: self.detail.to_string(),
        }
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)?;
        if let Some(source) = &self.source {
            write!(f, " (caused by: {source:#})")?;
        }
        Ok(())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        if self.code.status().is_server_error() {
            tracing::error!(error = ?self, "request failed");
        }
        problem_response(self.code.status(), &self.problem(), self.retry_after_secs)
    }
}

pub(crate) fn problem_response(status: StatusCode, problem: &Problem, retry_after_secs: Option<u64>) -> HttpResponse {
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = HttpResponse::build(status);
    response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
    if let Some(secs) = retry_after_secs {
        response.insert_header((header::RETRY_AFTER, secs));
    }
    // RFC 9110: every 401 names the scheme that would be accepted.
    if status == StatusCode::UNAUTHORIZED {
        response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tessera\"")));
    }
    response.body(body)
}

/// A database or other failure that reaches a handler undressed is read as every domain reads
/// it: through `Fault`, the one place that knows a pool timeout is worth a retry.
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::from(Fault::from(e))
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::from(Fault::from(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "duplicate code {}", code.as_str());
            assert!(code.as_str().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }

    #[test]
    fn details_are_cut_at_their_bound_on_a_character_boundary() {
        let long = ApiError::new(Code::InvalidInput, "é".repeat(10_000));
        assert!(long.detail().len() <= MAX_DETAIL_BYTES && long.detail().ends_with("é..."), "{}", long.detail().len());
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Echo(String);
        impl ErrorCode for Echo {
            fn code(&self) -> Code {
                Code::InvalidInput
            }
        }
        let from = ApiError::from(Echo("x".repeat(100_000)));
        assert!(from.detail().len() <= MAX_DETAIL_BYTES);
        assert_eq!(ApiError::new(Code::InvalidInput, "short").detail(), "short");
        // Formatting stops at the bound: a Debug-escaped megabyte is never made whole.
        let escaped = shortened(&format_args!("{:?}", "\u{ad}".repeat(1 << 20)), 64);
        assert_eq!((escaped.len(), escaped.ends_with("...")), (64, true));
        assert_eq!(shortened("abc", 64), "abc");
    }

    #[test]
    fn database_and_redis_failures_never_show_the_driver_text() {
        let fault = Fault::from(sqlx::Error::Protocol("role tessera_app at db.internal:5432".into()));
        assert_eq!(fault.to_string(), "the database failed");
        let api = ApiError::from(fault);
        assert_eq!(api.code(), Code::InternalError);
        assert!(!api.problem().detail.contains("db.internal"));
        let busy = ApiError::from(Fault::from(sqlx::Error::PoolTimedOut));
        assert_eq!((busy.code(), busy.retry_after_secs), (Code::ServiceUnavailable, Some(2)));
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let e = ApiError::internal(anyhow::anyhow!("password=hunter2"));
        assert!(!e.problem().detail.contains("hunter2"));
        assert_eq!(e.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
