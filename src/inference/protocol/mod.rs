//! The Open Inference Protocol v2 (KServe v2 REST, Triton HTTP) request and response codec,
//! with Triton's binary tensor data extension.
//!
//! - `tensor`: [`DataType`] and [`TensorData`], the tensor types every engine uses; they know
//!   nothing of JSON or HTTP.
//! - `request`: [`InferRequest`] as parsed, the parsing [`Limits`] and [`ProtocolError`].
//! - `parse`: [`parse_infer_request`], which splits the body at the JSON's length and reads
//!   the JSON envelope and the shapes;
//!   - `bare_non_finite`: the bare `NaN` / `Infinity` tokens tritonclient writes, quoted;
//!   - `json_data`: an input's JSON `data` scanned into a typed tensor;
//!   - `binary`: the binary extension's tensors decoded.
//! - `response`: [`encode_infer_response`] and [`error_body`].

mod bare_non_finite;
mod binary;
mod json_data;
mod parse;
mod request;
mod response;
mod tensor;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod test_support;

pub use binary::decode_raw;
pub use parse::{parse_infer_request, parse_infer_request_bytes};
pub use request::{
    DecodedBudget, InferInput, InferRequest, Limits, MAX_DIMS, MAX_NAME_BYTES, MAX_PARAMETERS, MAX_TENSORS, ProtocolError, Refusal,
    RequestedOutput,
};
pub use response::{EncodedResponse, InferOutput, encode_infer_response, error_body};
pub use tensor::{DataType, TensorData};
