//! The registry's failures.

use uuid::Uuid;

use super::onnx::OnnxError;
use crate::data::csv::CsvError;
use crate::audit::AuditError;
use crate::error::{Code, ErrorCode, Fault};

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

/// What the registry refuses or fails at. The texts are what clients read.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model `{0}` not found")]
    ModelNotFound(String),
    #[error("model `{model}` has no version `{version}`")]
    VersionNotFound { model: String, version: String },
    #[error("model `{0}` has no versions yet")]
    NoVersions(String),
    #[error("model `{model}` has no alias `{alias}`")]
    AliasNotFound { model: String, alias: String },

    #[error("a model name has 1-128 of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit")]
    InvalidModelName,
    #[error("an alias has 1-63 of a-z, 0-9, '_' and '-', starting with a letter")]
    InvalidAlias,
    #[error("a version number is a positive integer")]
    InvalidVersionNumber,
    #[error("`{0}` is neither a version number nor an alias")]
    InvalidVersionRef(String),
    #[error("sha256 must be 64 hexadecimal characters")]
    InvalidSha256,
    #[error("description has at most 2000 characters")]
    DescriptionTooLong,
    #[error("at most 32 tags of 1-64 characters each")]
    InvalidTags,
    /// A serving setting outside its range: `instances must be between 1 and 64`.
    #[error("serving.{0}")]
    ServingOutOfRange(&'static str),
    #[error("serving: instances × intra_op_threads must be at most {0} (the platform's cap per tenant)")]
    ServingThreads(usize),
    #[error("serving.cache_ttl_seconds must be at most {0} (the platform's cap)")]
    ServingCacheTtl(u64),
    #[error("a Burn artifact needs its `architecture` and `config`")]
    BurnSpecMissing,
    #[error("`architecture` and `config` apply to Burn models only")]
    BurnSpecOnOnnx,
    #[error("Burn architecture `{name}` (this build knows mlp and conv1d): {reason}")]
    UnknownArchitecture { name: String, reason: String },
    #[error("Burn config: {0}")]
    InvalidBurnConfig(String),
    #[error("model `{0}` is not a Burn model")]
    NotBurn(String),

    #[error("a model named `{0}` already exists")]
    ModelExists(String),
    /// A retried training job found the version an earlier attempt registered.
    #[error("the job already registered version {0}")]
    JobAlreadyRegistered(i32),
    #[error("the tenant's quota of {0} models is used up")]
    ModelQuota(i32),
    #[error("the artifact does not fit in the tenant's remaining storage quota of {0} bytes")]
    StorageQuota(u64),
    #[error("an artifact may have at most {0} bytes")]
    TooLarge(u64),
    #[error("version {version} is behind alias(es) {}; move or remove them first", .aliases.join(", "))]
    VersionBehindAlias { version: i32, aliases: Vec<String> },
    #[error("model `{model}` still has alias(es) {}; remove them first", .aliases.join(", "))]
    ModelHasAliases { model: String, aliases: Vec<String> },

    #[error(transparent)]
    InvalidOnnx(OnnxError),
    #[error("larger than the weights of this {architecture} architecture ({limit} bytes at most)")]
    BurnTooLarge { architecture: &'static str, limit: usize },
    #[error("not weights of this {architecture} architecture: {reason}")]
    NotBurnWeights { architecture: &'static str, reason: String },
    #[error(transparent)]
    InvalidCsv(CsvError),
    #[error("the uploaded bytes have SHA-256 {}, not {}", hex::encode(.actual), hex::encode(.expected))]
    ChecksumMismatch { actual: [u8; 32], expected: [u8; 32] },
    #[error("the upload was interrupted: {0}")]
    Interrupted(String),

    #[error("version {version} of model `{model}` cannot be loaded: {reason}")]
    Unloadable { model: String, version: i32, reason: ArtifactError },
    #[error("version {version} of model `{model}` cannot be read: {reason}")]
    Unreadable { model: String, version: i32, reason: ArtifactError },
    #[error("stored object {object} cannot be read: {reason}")]
    SealedUnreadable { object: Uuid, reason: ArtifactError },
    #[error("object store: {0}")]
    Storage(object_store::Error),
    /// The change's audit event could not be written, so the change is not made.
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Fault(#[from] Fault),
}

crate::faults_into!(RegistryError);

impl From<object_store::Error> for RegistryError {
    fn from(e: object_store::Error) -> Self {
        RegistryError::Storage(e)
    }
}

impl ErrorCode for RegistryError {
    fn code(&self) -> Code {
        use RegistryError as E;
        match self {
            E::ModelNotFound(_) | E::VersionNotFound { .. } | E::NoVersions(_) | E::AliasNotFound { .. } => Code::NotFound,
            E::InvalidModelName
            | E::InvalidAlias
            | E::InvalidVersionNumber
            | E::InvalidVersionRef(_)
            | E::InvalidSha256
            | E::DescriptionTooLong
            | E::InvalidTags
            | E::ServingOutOfRange(_) => Code::InvalidRequest,
            // Well formed, but at odds with the platform's limits or the model's framework.
            E::ServingThreads(_)
            | E::ServingCacheTtl(_)
            | E::BurnSpecMissing
            | E::BurnSpecOnOnnx
            | E::UnknownArchitecture { .. }
            | E::InvalidBurnConfig(_)
            | E::NotBurn(_) => Code::Unprocessable,
            E::ModelExists(_) | E::JobAlreadyRegistered(_) => Code::AlreadyExists,
            E::ModelQuota(_) | E::StorageQuota(_) => Code::QuotaExceeded,
            E::TooLarge(_) => Code::PayloadTooLarge,
            E::VersionBehindAlias { .. } | E::ModelHasAliases { .. } => Code::VersionHasAlias,
            E::InvalidOnnx(_) | E::BurnTooLarge { .. } | E::NotBurnWeights { .. } => Code::InvalidModel,
            E::InvalidCsv(_) => Code::InvalidDataset,
            E::ChecksumMismatch { .. } => Code::ChecksumMismatch,
            E::Interrupted(_) => Code::ClientError,
            E::Unloadable { .. } | E::Unreadable { .. } | E::SealedUnreadable { .. } => Code::ArtifactIntegrity,
            E::Storage(_) => Code::InternalError,
            E::Audit(e) => e.code(),
            E::Fault(fault) => fault.code(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            RegistryError::Audit(e) => e.retry_after(),
            RegistryError::Fault(fault) => fault.retry_after(),
            _ => None,
        }
    }
}
