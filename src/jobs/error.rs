//! The failures of datasets and jobs. The texts are what clients read, and what a job that
//! stops on one records as its error.

use uuid::Uuid;

use crate::audit::AuditError;
use crate::error::{Code, ErrorCode, Fault};
use crate::inference::error::InferenceError;
use crate::registry::error::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job {0} not found")]
    JobNotFound(Uuid),
    #[error("dataset {0} not found")]
    DatasetNotFound(Uuid),
    #[error("job {0} has no output (yet)")]
    NoOutput(Uuid),
    #[error("job {id} has already finished ({status})")]
    Finished { id: Uuid, status: &'static str },
    #[error("this Idempotency-Key was used for a different request; use a new key for a new job")]
    IdempotencyKeyReused,

    #[error("a dataset name has 1-128 of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit")]
    InvalidDatasetName,
    #[error("architecture `{architecture}` with this config: {reason}")]
    InvalidArchitecture { architecture: String, reason: String },
    #[error("config: {0}")]
    InvalidConfig(String),
    /// Training parameters out of range: the text names the parameter.
    #[error("{0}")]
    InvalidParams(String),
    #[error("the target `{0}` cannot also be a feature")]
    TargetIsFeature(String),
    #[error("features, when given, must name at least one column")]
    NoFeatures,
    #[error("feature `{0}` is listed twice")]
    DuplicateFeature(String),
    #[error("features name at most {0} columns, as many as a dataset holds")]
    TooManyFeatures(usize),
    #[error("the dataset has no column `{0}`")]
    NoSuchColumn(String),
    #[error("the architecture takes {expected} input features; the dataset provides {provided} ({columns})")]
    FeaturesMismatch { expected: usize, provided: usize, columns: String },
    #[error("model `{0}` is an ONNX model; training registers Burn versions")]
    TrainOnnx(String),

    /// Redis is away: due jobs wait in Postgres until it is back.
    #[error("Redis: {0}")]
    Queue(redis::RedisError),

    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    /// The change's audit event could not be written, so the change is not made.
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Fault(#[from] Fault),
}

crate::faults_into!(JobError);

impl ErrorCode for JobError {
    fn code(&self) -> Code {
        use JobError as E;
        match self {
            E::JobNotFound(_) | E::DatasetNotFound(_) | E::NoOutput(_) => Code::NotFound,
            E::Finished { .. } => Code::JobFinished,
            E::IdempotencyKeyReused => Code::IdempotencyKeyReused,
            E::InvalidDatasetName | E::InvalidParams(_) | E::NoFeatures | E::DuplicateFeature(_) => Code::InvalidRequest,
            // Well formed, but at odds with the dataset (any dataset, for more features than
            // one has columns), the model or the architecture.
            E::TooManyFeatures(_)
            | E::InvalidArchitecture { .. }
            | E::InvalidConfig(_)
            | E::TargetIsFeature(_)
            | E::NoSuchColumn(_)
            | E::FeaturesMismatch { .. }
            | E::TrainOnnx(_) => Code::Unprocessable,
            E::Queue(_) => Code::ServiceUnavailable,
            E::Registry(e) => e.code(),
            E::Inference(e) => e.code(),
            E::Audit(e) => e.code(),
            E::Fault(fault) => fault.code(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            JobError::Queue(_) => Some(1),
            JobError::Registry(e) => e.retry_after(),
            JobError::Inference(e) => e.retry_after(),
            JobError::Audit(e) => e.retry_after(),
            JobError::Fault(fault) => fault.retry_after(),
            _ => None,
        }
    }
}
