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

/// The longest name an input or output may have, in bytes: names are echoed in errors.
pub const MAX_NAME_BYTES: usize = 1024;

/// The most parameters a request, or one of its tensors, carries.
pub const MAX_PARAMETERS: usize = 256;

/// Decoded, a request's input tensors take at most this many times the bytes of the request
/// that carried them (or `MIN_DECODED_BYTES`, for small requests). Numbers written as text
/// reach 4x ("0," as INT64); BYTES elements, each a handle of its own, and protobuf's
/// one-byte varints reach 8 to 16x, which would let one request of the largest size hold
/// a gigabyte.
pub const DECODED_PER_REQUEST_BYTE: usize = 4;

/// What a request's tensors may take decoded, however small the request.
pub const MIN_DECODED_BYTES: usize = 64 * 1024 * 1024;

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

/// The memory a request's input tensors may take once decoded, spent input by input before
/// each is decoded.
#[derive(Debug)]
pub struct DecodedBudget {
    left: usize,
    bound: usize,
}

impl DecodedBudget {
    /// The budget of a request of `wire_len` bytes.
    pub fn for_request(wire_len: usize) -> Self {
        let bound = wire_len.saturating_mul(DECODED_PER_REQUEST_BYTE).max(MIN_DECODED_BYTES);
        DecodedBudget { left: bound, bound }
    }

    /// Spends what `count` elements of `datatype` take decoded (a BYTES element's handle; its
    /// contents are the request's own bytes).
    pub fn spend(&mut self, name: &str, datatype: DataType, count: usize) -> Result<(), ProtocolError> {
        let width = datatype.element_size().unwrap_or(std::mem::size_of::<bytes::Bytes>());
        match count.checked_mul(width).is_some_and(|bytes| self.take(bytes)) {
            true => Ok(()),
            false => Err(ProtocolError {
                message: format!(
                    "input '{name}': {count} {} elements would take more memory decoded than the {} bytes this request's \
                     tensors may ({DECODED_PER_REQUEST_BYTE}x its size, at least {MIN_DECODED_BYTES}); send fewer rows per request",
                    datatype.as_str(),
                    self.bound
                ),
                kind: Refusal::TooLarge,
            }),
        }
    }

    /// Spends `bytes` if that many are left.
    pub fn take(&mut self, bytes: usize) -> bool {
        let fits = bytes <= self.left;
        if fits {
            self.left -= bytes;
        }
        fits
    }
}

/// A request the protocol rejects; the message is meant for the client, and names the tensor
/// at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    pub message: String,
    pub kind: Refusal,
}

/// Why the protocol rejects a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The body is not JSON at all (400).
    Syntax,
    /// JSON, or a message, the model or the protocol cannot take (422).
    Invalid,
    /// Its tensors would take more memory than a request may (413).
    TooLarge,
}

pub(super) fn perr(msg: impl Into<String>) -> ProtocolError {
    ProtocolError { message: msg.into(), kind: Refusal::Invalid }
}
