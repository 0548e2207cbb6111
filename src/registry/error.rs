//! The registry's failures.

use crate::error::ApiError;

/// Why stored bytes did not come back as the artifact that was uploaded.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("ciphertext failed authentication (tampered, truncated, reordered or wrong key)")]
    Tampered,
    #[error("plaintext does not match the recorded SHA-256 or size")]
    Checksum,
    #[error("the data key does not unwrap")]
    Key,
    #[error("storage: {0}")]
    Storage(String),
}

pub fn model_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("model `{name}` not found"))
}
