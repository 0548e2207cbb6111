//! The audit log's failures.

use crate::error::{Code, ErrorCode, Fault};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A time filter (`from`, `to`) that is not RFC 3339.
    #[error("`{0}` must be an RFC 3339 timestamp")]
    InvalidTime(&'static str),
    #[error("`outcome` must be success, failure or denied")]
    InvalidOutcome,
    #[error("inference_sample_rate must be in (0, 1]")]
    InvalidSampleRate,
    #[error(transparent)]
    Fault(#[from] Fault),
}

crate::faults_into!(AuditError);

impl ErrorCode for AuditError {
    fn code(&self) -> Code {
        match self {
            AuditError::InvalidTime(_) | AuditError::InvalidOutcome => Code::InvalidQuery,
            AuditError::InvalidSampleRate => Code::InvalidRequest,
            AuditError::Fault(fault) => fault.code(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            AuditError::Fault(fault) => fault.retry_after(),
            _ => None,
        }
    }
}
