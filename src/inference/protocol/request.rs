//! An inference request as parsed, the bounds applied while parsing it, and the error a client
//! is sent when the protocol rejects it.

use serde_json::{Map, Value};

use super::tensor::{DataType, TensorData};

#[derive(Debug, Clone, PartialEq)]
pub struct InferInput {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    /// Resolved: the output's own `parameters.binary_data` when given, else the request's
    /// `binary_data_output`.
    pub binary_data: bool,
    /// `parameters.classification` (top-k classification output); 0 when not requested. The
    /// codec only carries it: a server that does not implement classification must reject a
    /// request where it is non-zero.
    pub class_count: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    /// Request-level parameters (`sequence_id`, `priority`, `timeout`, custom ones, ...),
    /// without `binary_data_output`.
    pub parameters: Map<String, Value>,
    pub inputs: Vec<InferInput>,
    /// Requested outputs; empty means all of the model's outputs.
    pub outputs: Vec<RequestedOutput>,
    /// The request parameter `binary_data_output`: outputs that do not say otherwise are
    /// returned binary. tritonclient sets it when it requests no outputs explicitly.
    pub binary_data_output: bool,
}

impl InferRequest {
    pub fn input(&self, name: &str) -> Option<&InferInput> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// Whether the output `name` is to be returned (every output when none were named).
    pub fn output_requested(&self, name: &str) -> bool {
        self.outputs.is_empty() || self.outputs.iter().any(|o| o.name == name)
    }

    /// Whether the output `name` is to be returned in binary form; pass
    /// `|n| request.output_binary(n)` to
    /// [`encode_infer_response`](super::encode_infer_response).
    pub fn output_binary(&self, name: &str) -> bool {
        match self.outputs.iter().find(|o| o.name == name) {
            Some(o) => o.binary_data,
            None => self.binary_data_output,
        }
    }
}

/// The most inputs, or outputs, a request names: more than any model has.
pub const MAX_TENSORS: usize = 256;

/// The most dimensions a tensor's shape has: more is no tensor a model takes, and shapes are
/// echoed in error messages.
pub const MAX_DIMS: usize = 32;

/// Bounds applied while parsing, before anything proportional to a declared shape is
/// allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_elements_per_tensor: usize,
    pub max_inputs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_elements_per_tensor: 64 * 1024 * 1024, max_inputs: MAX_TENSORS }
    }
}

/// A request the protocol rejects; the message is meant for the client, and names the tensor
/// at fault. `syntax` when the body is not JSON at all (400); otherwise it is JSON the model
/// or the protocol cannot take (422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    pub message: String,
    pub syntax: bool,
}

pub(super) fn perr(msg: impl Into<String>) -> ProtocolError {
    ProtocolError { message: msg.into(), syntax: false }
}
