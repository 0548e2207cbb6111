//! The tenancy floor's failures.

use crate::error::{Code, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    #[error("`{0}` is not a tenant slug: use 2-63 of a-z, 0-9 and '-', not starting with '-'")]
    InvalidSlug(String),
}

impl ErrorCode for TenancyError {
    fn code(&self) -> Code {
        match self {
            TenancyError::InvalidSlug(_) => Code::InvalidRequest,
        }
    }
}
