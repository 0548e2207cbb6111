//! Usage's failures: what a reader can ask wrongly, and what fails under it.

use crate::error::{Code, ErrorCode, Fault};
use crate::registry::error::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// `from` or `to` that is not RFC 3339.
    #[error("`{0}` must be an RFC 3339 timestamp, such as 2026-12-01T00:00:00Z")]
    InvalidTime(&'static str),
    #[error("`from` must be before `to`")]
    EmptyWindow,
    #[error("a `{granularity}` window spans at most {max_days} days; narrow `from` and `to`")]
    WindowTooLong { granularity: &'static str, max_days: i64 },
    #[error("`model` must be a model name: 1-128 of A-Za-z0-9._-, starting with a letter or digit")]
    InvalidModel,
    #[error("`version` must be at least 1")]
    InvalidVersion,
    #[error("`version` needs `model`")]
    VersionWithoutModel,
    #[error("`cursor` is not one this API returned")]
    InvalidCursor,
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Fault(#[from] Fault),
}

crate::faults_into!(UsageError);

impl ErrorCode for UsageError {
    fn code(&self) -> Code {
        use UsageError as E;
        match self {
            E::InvalidTime(_) | E::InvalidModel | E::InvalidVersion | E::InvalidCursor => Code::InvalidQuery,
            // Each parameter valid alone, but not together: what a schema cannot say.
            E::EmptyWindow | E::WindowTooLong { .. } | E::VersionWithoutModel => Code::Unprocessable,
            E::Registry(e) => e.code(),
            E::Fault(fault) => fault.code(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            UsageError::Registry(e) => e.retry_after(),
            UsageError::Fault(fault) => fault.retry_after(),
            _ => None,
        }
    }
}
