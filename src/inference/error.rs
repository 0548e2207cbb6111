//! Inference's failures: what a call, a model's metadata or its loading can answer. The
//! texts are what clients read.

use super::protocol::{DataType, ProtocolError, Refusal};
use crate::error::{Code, ErrorCode, Fault};
use crate::registry::error::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The body is not an inference request the protocol accepts.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("unknown input '{name}'; the model takes {known}")]
    UnknownInput { name: String, known: String },
    #[error("input '{name}': datatype {} does not match the model's {}", .got.as_str(), .want.as_str())]
    InputDatatype { name: String, got: DataType, want: DataType },
    #[error("input '{name}': shape {got} does not match the model's {want}")]
    InputShape { name: String, got: String, want: String },
    #[error("input '{name}': element {at} is {value}; this model takes finite numbers")]
    NotFinite { name: String, at: usize, value: f32 },
    #[error("input '{name}': element {at} is not UTF-8, which a string tensor holds")]
    NotUtf8 { name: String, at: usize },
    #[error("input '{0}' is missing")]
    MissingInput(String),
    #[error("unknown output '{name}'; the model gives {known}")]
    UnknownOutput { name: String, known: String },
    #[error("output '{0}': the classification extension is not supported")]
    ClassificationUnsupported(String),
    #[error(
        "the answer is {bytes} bytes, more than the {limit} a message may carry (inference.max_request_bytes); \
         ask for fewer rows or outputs per call"
    )]
    AnswerTooLarge { bytes: usize, limit: usize },

    /// The model's queue is full: the call is turned away at once.
    #[error("model `{0}` is at capacity; retry shortly")]
    Overloaded(String),
    #[error("the deadline passed while the model was loading")]
    DeadlineWhileLoading,
    #[error("the deadline passed before the model ran")]
    DeadlineBeforeRun,
    #[error("the deadline passed before the model answered")]
    DeadlineBeforeAnswer,
    /// While waiting for the same inputs' result from another call.
    #[error("the deadline passed")]
    DeadlineWhileWaiting,
    #[error("the model failed: {0}")]
    ModelFailed(String),
    #[error("the model's worker crashed; the model is reloaded for the next call, so retry")]
    WorkerCrashed,
    #[error("the model's worker stopped")]
    WorkerStopped,
    #[error("the model returned fewer outputs than its signature")]
    MissingOutputs,

    #[error("ONNX Runtime is not available: {0}")]
    RuntimeUnavailable(String),
    #[error("tensor `{tensor}`: datatype {datatype} is not served")]
    UnservedDatatype { tensor: String, datatype: String },
    #[error("version {version} of model `{model}` does not load: {reason}")]
    DoesNotLoad { model: String, version: i32, reason: String },
    /// Deleted and created again under its name since it was resolved.
    #[error("version {version} of model `{model}` is gone")]
    VersionGone { model: String, version: i32 },
    /// A load that failed moments ago, answered as it was then instead of being tried again.
    #[error("{detail}")]
    RecentlyFailed { code: Code, detail: String, retry_after: u64 },

    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Fault(#[from] Fault),
}

crate::faults_into!(InferenceError);

impl ErrorCode for InferenceError {
    fn code(&self) -> Code {
        use InferenceError as E;
        match self {
            E::Protocol(ProtocolError { kind: Refusal::Syntax, .. }) => Code::InvalidJson,
            E::Protocol(ProtocolError { kind: Refusal::TooLarge, .. }) => Code::PayloadTooLarge,
            E::Protocol(_)
            | E::UnknownInput { .. }
            | E::InputDatatype { .. }
            | E::InputShape { .. }
            | E::NotFinite { .. }
            | E::NotUtf8 { .. }
            | E::MissingInput(_)
            | E::UnknownOutput { .. }
            | E::ClassificationUnsupported(_) => Code::InvalidInput,
            E::AnswerTooLarge { .. } => Code::PayloadTooLarge,
            E::Overloaded(_) => Code::Overloaded,
            E::DeadlineWhileLoading | E::DeadlineBeforeRun | E::DeadlineBeforeAnswer | E::DeadlineWhileWaiting => {
                Code::DeadlineExceeded
            }
            E::ModelFailed(_) | E::WorkerCrashed | E::WorkerStopped | E::MissingOutputs => Code::InferenceFailed,
            E::RuntimeUnavailable(_) => Code::ServiceUnavailable,
            E::UnservedDatatype { .. } | E::DoesNotLoad { .. } => Code::InvalidModel,
            E::VersionGone { .. } => Code::NotFound,
            E::RecentlyFailed { code, .. } => *code,
            E::Registry(e) => e.code(),
            E::Fault(fault) => fault.code(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            InferenceError::Overloaded(_) => Some(1),
            InferenceError::RuntimeUnavailable(_) => Some(30),
            InferenceError::RecentlyFailed { retry_after, .. } => Some(*retry_after),
            InferenceError::Registry(e) => e.retry_after(),
            InferenceError::Fault(fault) => fault.retry_after(),
            _ => None,
        }
    }
}
