//! The identity domain's failures: authentication, credentials, passwords, members and keys.
//!
//! Each variant's text is what the client reads as `detail`.

use std::borrow::Cow;

use super::jwt::TokenError;
use super::permissions::Role;
use super::throttle::Refusal;
use crate::audit::AuditError;
use crate::error::{Code, ErrorCode, Fault};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A wrong email or password.
    #[error("{0}")]
    InvalidCredentials(&'static str),
    /// A login for a tenant the user does not belong to (or that does not exist).
    #[error("no access to tenant `{0}`")]
    NoTenantAccess(String),
    #[error("{0}")]
    InvalidToken(&'static str),
    /// An access token that fails verification for a reason other than its age.
    #[error("{0}")]
    InvalidAccessToken(TokenError),
    #[error("{0}")]
    TokenExpired(&'static str),
    #[error("{0}")]
    TokenRevoked(&'static str),
    #[error("this refresh token was already used; every token of its session is now revoked")]
    RefreshTokenReused,
    #[error("too many failed logins; try again later")]
    LoginThrottled { retry_after: u64 },
    /// Every password hashing slot is taken and enough callers already wait for one.
    #[error("too many password checks at once; retry shortly")]
    HashingBusy,
    #[error("the password must have at least {min} characters")]
    PasswordTooShort { min: usize },
    #[error("the password must have at most {max} bytes")]
    PasswordTooLong { max: usize },
    #[error("email: not a valid email address")]
    InvalidEmail,
    #[error("this invitation is not valid: unknown, expired, revoked or already used")]
    InvalidInvitation,
    #[error("this reset token is not valid: unknown, expired or already used")]
    InvalidResetToken,
    /// The tenant (by slug) is suspended.
    #[error("tenant {0} is suspended")]
    TenantSuspended(String),
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    /// A grant of a role that confers permissions the granter does not hold.
    #[error("`{0}` confers permissions you do not hold; only a holder of all of them may grant it")]
    GrantExceedsRole(Role),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    AlreadyExists(Cow<'static, str>),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// Well formed, but not applicable to the account or object it names.
    #[error("{0}")]
    Unprocessable(&'static str),
    /// A numeric field (named) outside its range.
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Fault(#[from] Fault),
}

crate::faults_into!(IdentityError);

impl ErrorCode for IdentityError {
    fn code(&self) -> Code {
        use IdentityError::*;
        match self {
            InvalidCredentials(_) | NoTenantAccess(_) => Code::InvalidCredentials,
            InvalidToken(_) | InvalidAccessToken(_) => Code::InvalidToken,
            TokenExpired(_) => Code::TokenExpired,
            TokenRevoked(_) => Code::TokenRevoked,
            RefreshTokenReused => Code::RefreshTokenReused,
            LoginThrottled { .. } => Code::LoginThrottled,
            HashingBusy => Code::ServiceUnavailable,
            PasswordTooShort { .. } | PasswordTooLong { .. } => Code::WeakPassword,
            InvalidEmail | InvalidRequest(_) | OutOfRange(_) => Code::InvalidRequest,
            Unprocessable(_) => Code::Unprocessable,
            InvalidInvitation => Code::InvalidInvitation,
            InvalidResetToken => Code::InvalidResetToken,
            TenantSuspended(_) => Code::TenantSuspended,
            Unauthenticated(_) => Code::Unauthenticated,
            Forbidden(_) | GrantExceedsRole(_) => Code::Forbidden,
            NotFound(_) => Code::NotFound,
            AlreadyExists(_) => Code::AlreadyExists,
            Conflict(_) => Code::Conflict,
            Audit(error) => error.code(),
            Fault(fault) => fault.code(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            IdentityError::LoginThrottled { retry_after } => Some(*retry_after),
            // Slots free within tens of milliseconds; a second is the shortest Retry-After.
            IdentityError::HashingBusy => Some(1),
            IdentityError::Audit(error) => error.retry_after(),
            IdentityError::Fault(fault) => fault.retry_after(),
            _ => None,
        }
    }
}

impl From<TokenError> for IdentityError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::Expired => IdentityError::TokenExpired("the access token has expired; refresh it"),
            other => IdentityError::InvalidAccessToken(other),
        }
    }
}

impl From<Refusal> for IdentityError {
    fn from(refusal: Refusal) -> Self {
        let (Refusal::BackOff { retry_after_secs } | Refusal::Spraying { retry_after_secs }) = refusal;
        IdentityError::LoginThrottled { retry_after: retry_after_secs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_carry_their_retry_after_through_every_wrapper() {
        assert_eq!(IdentityError::LoginThrottled { retry_after: 7 }.retry_after(), Some(7));
        assert_eq!((IdentityError::HashingBusy.code(), IdentityError::HashingBusy.retry_after()), (Code::ServiceUnavailable, Some(1)));
        let timed_out = IdentityError::from(sqlx::Error::PoolTimedOut);
        assert_eq!((timed_out.code(), timed_out.retry_after()), (Code::ServiceUnavailable, Some(2)));
        let audit = IdentityError::from(AuditError::from(sqlx::Error::PoolTimedOut));
        assert_eq!((audit.code(), audit.retry_after()), (Code::ServiceUnavailable, Some(2)));
        assert_eq!(IdentityError::from(sqlx::Error::RowNotFound).code(), Code::InternalError);
    }

    #[test]
    fn an_expired_access_token_is_told_apart_from_an_invalid_one() {
        let expired = IdentityError::from(TokenError::Expired);
        assert_eq!((expired.code(), expired.to_string()), (Code::TokenExpired, "the access token has expired; refresh it".to_owned()));
        let malformed = IdentityError::from(TokenError::Malformed);
        assert_eq!((malformed.code(), malformed.to_string()), (Code::InvalidToken, "the token is malformed".to_owned()));
    }

    #[test]
    fn a_refused_grant_names_the_role() {
        assert_eq!(
            IdentityError::GrantExceedsRole(Role::MlEngineer).to_string(),
            "`ml_engineer` confers permissions you do not hold; only a holder of all of them may grant it"
        );
    }
}
