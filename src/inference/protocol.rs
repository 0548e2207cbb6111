//! The Open Inference Protocol v2 (KServe v2 REST, Triton HTTP) request and response codec,
//! with Triton's binary tensor data extension.
//!
//! # Requests
//! [`parse_infer_request`] takes the raw body and the value of the
//! `Inference-Header-Content-Length` header. Without the header the whole body is the JSON
//! request; with it, `body[..n]` is the JSON and the rest is the concatenation of the binary
//! tensors, in the order of the inputs that carry `parameters.binary_data_size`.
//!
//! The envelope is deserialized with serde, each input's `data` kept as a borrowed
//! [`RawValue`] (so serde validates the whole document once, without building a value tree);
//! once the datatype and shape are known, `data` is scanned straight into a typed `Vec`,
//! flattening nested arrays in row-major order. Numbers are converted with the standard
//! library's correctly rounded parsers (`"0.1"` as FP32 is `0.1f32`, FP64 round-trips
//! exactly), which serde_json's default float parser does not guarantee.
//!
//! Element conversion rules for JSON `data`:
//! - integer types take JSON integers only; `1.5`, `2.0`, `1e3` and out-of-range values are
//!   rejected with the tensor named;
//! - FP types take any JSON number, plus the strings `"NaN"`, `"Infinity"` and `"-Infinity"`
//!   (any case; `"inf"`, `"-inf"`, `"nan"` too) and `null` (NaN, as JavaScript's
//!   `JSON.stringify` writes it). FP16 converts through `f16::from_f64`; values beyond a
//!   type's range become infinities, as a cast does;
//! - BOOL takes `true` / `false`; BYTES takes strings (their UTF-8 bytes).
//!
//! tritonclient (rapidjson) writes NaN and infinities in JSON data as the bare tokens `NaN`,
//! `Infinity` and `-Infinity`, which are not JSON. This parser accepts them: a body serde_json
//! rejects is retried once with such tokens quoted (the common path never pays for this).
//!
//! Binary tensors: fixed-size types are little-endian; BOOL is one byte per element, 0 or 1;
//! BYTES elements are each a 4-byte little-endian length followed by that many bytes.
//!
//! # Responses
//! [`encode_infer_response`] writes the JSON directly into one buffer, followed by the bytes
//! of the binary outputs in output order. When any output is binary the server must send
//! `Inference-Header-Content-Length: json_len` and `Content-Type: application/octet-stream`
//! (see [`EncodedResponse::content_type`]); otherwise the body is plain `application/json`.
//!
//! JSON has no NaN or infinities. Non-finite FP values in JSON outputs are written as the
//! strings `"NaN"`, `"Infinity"` and `"-Infinity"`: the document stays valid for strict
//! parsers, tritonclient's `as_numpy` turns them back into `nan` / `inf` / `-inf` (numpy
//! converts such strings under a float dtype), and [`parse_infer_request`] accepts them. Bare
//! `NaN` / `Infinity` tokens would break strict parsers; `null` would lose infinities. Binary
//! outputs carry every value exactly.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use half::f16;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, Visitor};
use serde_json::ser::{CompactFormatter, Formatter};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------------------------
// Tensor types
// ---------------------------------------------------------------------------------------------

/// A tensor element type, as named by the protocol (`"FP32"`, `"BYTES"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The protocol name, case-sensitive as Triton treats it. `BF16` is not supported.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => DataType::Bool,
            "UINT8" => DataType::Uint8,
            "UINT16" => DataType::Uint16,
            "UINT32" => DataType::Uint32,
            "UINT64" => DataType::Uint64,
            "INT8" => DataType::Int8,
            "INT16" => DataType::Int16,
            "INT32" => DataType::Int32,
            "INT64" => DataType::Int64,
            "FP16" => DataType::Fp16,
            "FP32" => DataType::Fp32,
            "FP64" => DataType::Fp64,
            "BYTES" => DataType::Bytes,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Bytes per element in the binary encoding; `None` for BYTES (variable length).
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The elements of a tensor, flattened in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<Bytes>),
}

/// Runs `$body` with `$v` bound to the inner `Vec` of whichever variant `$data` is.
macro_rules! with_vec {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => $body,
            TensorData::Uint8($v) => $body,
            TensorData::Uint16($v) => $body,
            TensorData::Uint32($v) => $body,
            TensorData::Uint64($v) => $body,
            TensorData::Int8($v) => $body,
            TensorData::Int16($v) => $body,
            TensorData::Int32($v) => $body,
            TensorData::Int64($v) => $body,
            TensorData::Fp16($v) => $body,
            TensorData::Fp32($v) => $body,
            TensorData::Fp64($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}

/// Like `with_vec!`, wrapping the result back into the same variant.
macro_rules! map_vec {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => TensorData::Bool($body),
            TensorData::Uint8($v) => TensorData::Uint8($body),
            TensorData::Uint16($v) => TensorData::Uint16($body),
            TensorData::Uint32($v) => TensorData::Uint32($body),
            TensorData::Uint64($v) => TensorData::Uint64($body),
            TensorData::Int8($v) => TensorData::Int8($body),
            TensorData::Int16($v) => TensorData::Int16($body),
            TensorData::Int32($v) => TensorData::Int32($body),
            TensorData::Int64($v) => TensorData::Int64($body),
            TensorData::Fp16($v) => TensorData::Fp16($body),
            TensorData::Fp32($v) => TensorData::Fp32($body),
            TensorData::Fp64($v) => TensorData::Fp64($body),
            TensorData::Bytes($v) => TensorData::Bytes($body),
        }
    };
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_vec!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty tensor of `datatype` with room for `capacity` elements.
    pub fn with_capacity(datatype: DataType, capacity: usize) -> TensorData {
        match datatype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(capacity)),
            DataType::Uint8 => TensorData::Uint8(Vec::with_capacity(capacity)),
            DataType::Uint16 => TensorData::Uint16(Vec::with_capacity(capacity)),
            DataType::Uint32 => TensorData::Uint32(Vec::with_capacity(capacity)),
            DataType::Uint64 => TensorData::Uint64(Vec::with_capacity(capacity)),
            DataType::Int8 => TensorData::Int8(Vec::with_capacity(capacity)),
            DataType::Int16 => TensorData::Int16(Vec::with_capacity(capacity)),
            DataType::Int32 => TensorData::Int32(Vec::with_capacity(capacity)),
            DataType::Int64 => TensorData::Int64(Vec::with_capacity(capacity)),
            DataType::Fp16 => TensorData::Fp16(Vec::with_capacity(capacity)),
            DataType::Fp32 => TensorData::Fp32(Vec::with_capacity(capacity)),
            DataType::Fp64 => TensorData::Fp64(Vec::with_capacity(capacity)),
            DataType::Bytes => TensorData::Bytes(Vec::with_capacity(capacity)),
        }
    }

    /// The elements of all `parts`, in order. `None` when `parts` is empty or the parts differ
    /// in datatype.
    pub fn concat(parts: &[&TensorData]) -> Option<TensorData> {
        let first = parts.first()?;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = TensorData::with_capacity(first.datatype(), total);
        for part in parts {
            out.extend_from(part)?;
        }
        Some(out)
    }

    /// Appends the elements of `other`; `None` (and nothing appended) when the datatypes differ.
    pub fn extend_from(&mut self, other: &TensorData) -> Option<()> {
        macro_rules! ext {
            ($($variant:ident),*) => {
                match (self, other) {
                    $((TensorData::$variant(a), TensorData::$variant(b)) => a.extend_from_slice(b),)*
                    _ => return None,
                }
            };
        }
        ext!(Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64, Bytes);
        Some(())
    }

    /// A copy of the elements `start..end` (BYTES elements share their buffers).
    ///
    /// # Panics
    /// When `start > end` or `end > self.len()`, as slice indexing does.
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        map_vec!(self, v => v[start..end].to_vec())
    }

    /// Size in bytes of [`write_canonical`](Self::write_canonical)'s output, which is also the
    /// tensor's `binary_data_size` in the binary extension.
    pub fn binary_size(&self) -> usize {
        match self {
            TensorData::Bytes(v) => v.iter().map(|b| 4 + b.len()).sum(),
            other => other.len() * other.datatype().element_size().unwrap_or(0),
        }
    }

    /// Appends the elements as deterministic bytes: fixed-size types little-endian (floats by
    /// their bit patterns, so `0.0` and `-0.0` differ), BOOL one byte 0/1, BYTES each element a
    /// u32 little-endian length then its bytes. This is exactly the binary data extension's
    /// wire encoding. Datatype and shape are not included: a cache key must add them.
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        match self {
            TensorData::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
            TensorData::Uint8(v) => out.extend_from_slice(v),
            TensorData::Int8(v) => out.extend(v.iter().map(|&x| x as u8)),
            TensorData::Uint16(v) => put_le(out, v, |x| x.to_le_bytes()),
            TensorData::Int16(v) => put_le(out, v, |x| x.to_le_bytes()),
            TensorData::Fp16(v) => put_le(out, v, |x| x.to_bits().to_le_bytes()),
            TensorData::Uint32(v) => put_le(out, v, |x| x.to_le_bytes()),
            TensorData::Int32(v) => put_le(out, v, |x| x.to_le_bytes()),
            TensorData::Fp32(v) => put_le(out, v, |x| x.to_bits().to_le_bytes()),
            TensorData::Uint64(v) => put_le(out, v, |x| x.to_le_bytes()),
            TensorData::Int64(v) => put_le(out, v, |x| x.to_le_bytes()),
            TensorData::Fp64(v) => put_le(out, v, |x| x.to_bits().to_le_bytes()),
            TensorData::Bytes(v) => {
                out.reserve(v.iter().map(|b| 4 + b.len()).sum());
                for b in v {
                    // Elements come from a protocol whose lengths are u32; a larger one cannot
                    // be sent and is clamped rather than wrapped.
                    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }
}

#[inline]
fn put_le<T: Copy, const N: usize>(out: &mut Vec<u8>, vals: &[T], to: impl Fn(T) -> [u8; N]) {
    let start = out.len();
    out.resize(start + vals.len() * N, 0);
    for (dst, &v) in out[start..].chunks_exact_mut(N).zip(vals) {
        dst.copy_from_slice(&to(v));
    }
}

#[inline]
fn get_le<T, const N: usize>(bytes: &[u8], from: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|c| from(c.try_into().expect("chunks_exact yields N bytes"))).collect()
}

// ---------------------------------------------------------------------------------------------
// Request types
// ---------------------------------------------------------------------------------------------

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
    /// `|n| request.output_binary(n)` to [`encode_infer_response`].
    pub fn output_binary(&self, name: &str) -> bool {
        match self.outputs.iter().find(|o| o.name == name) {
            Some(o) => o.binary_data,
            None => self.binary_data_output,
        }
    }
}

/// Bounds applied while parsing, before anything proportional to a declared shape is
/// allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_elements_per_tensor: usize,
    pub max_inputs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_elements_per_tensor: 64 * 1024 * 1024, max_inputs: 256 }
    }
}

/// A request the protocol rejects; the message is meant for the client (HTTP 400), and names
/// the tensor at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

fn perr(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

// ---------------------------------------------------------------------------------------------
// Request parsing
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    inputs: Vec<WireInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<WireOutput>>,
}

#[derive(Deserialize)]
struct WireInput<'a> {
    name: String,
    #[serde(borrow)]
    datatype: Cow<'a, str>,
    shape: Vec<Num>,
    #[serde(default)]
    parameters: Option<WireInputParams>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireInputParams {
    #[serde(default)]
    binary_data_size: Option<Num>,
    #[serde(default)]
    shared_memory_region: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct WireOutput {
    name: String,
    #[serde(default)]
    parameters: Option<WireOutputParams>,
}

#[derive(Deserialize)]
struct WireOutputParams {
    #[serde(default)]
    binary_data: Option<Value>,
    #[serde(default)]
    classification: Option<Num>,
    #[serde(default)]
    shared_memory_region: Option<IgnoredAny>,
}

/// A JSON scalar where a non-negative integer is expected; anything else is kept as its text
/// so that the error can name the tensor it belongs to.
enum Num {
    Ok(u64),
    Bad(String),
}

impl Num {
    fn get(&self) -> Result<u64, &str> {
        match self {
            Num::Ok(v) => Ok(*v),
            Num::Bad(s) => Err(s),
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Num, E> {
                Ok(Num::Ok(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Num, E> {
                Ok(if v >= 0 { Num::Ok(v as u64) } else { Num::Bad(v.to_string()) })
            }
            fn visit_f64<E>(self, v: f64) -> Result<Num, E> {
                Ok(Num::Bad(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Num, E> {
                Ok(Num::Bad(v.to_string()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Num, E> {
                Ok(Num::Bad(format!("{v:?}")))
            }
            fn visit_unit<E>(self) -> Result<Num, E> {
                Ok(Num::Bad("null".to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses an inference request.
///
/// `json_len` is the value of the `Inference-Header-Content-Length` header: `None` means the
/// whole body is JSON. BYTES elements taken from the binary section are copied; use
/// [`parse_infer_request_bytes`] to share the body's buffer instead.
pub fn parse_infer_request(
    body: &[u8],
    json_len: Option<usize>,
    limits: &Limits,
) -> Result<InferRequest, ProtocolError> {
    parse_impl(body, None, json_len, limits)
}

/// Like [`parse_infer_request`], but BYTES elements of binary inputs are zero-copy slices of
/// `body`.
pub fn parse_infer_request_bytes(
    body: &Bytes,
    json_len: Option<usize>,
    limits: &Limits,
) -> Result<InferRequest, ProtocolError> {
    parse_impl(body, Some(body), json_len, limits)
}

fn parse_impl(
    body: &[u8],
    shared: Option<&Bytes>,
    json_len: Option<usize>,
    limits: &Limits,
) -> Result<InferRequest, ProtocolError> {
    let has_binary_section = json_len.is_some();
    let json_len = json_len.unwrap_or(body.len());
    if json_len > body.len() {
        return Err(perr(format!(
            "Inference-Header-Content-Length is {json_len} but the request body has only {} bytes",
            body.len()
        )));
    }
    let (json, binary) = body.split_at(json_len);
    let quoted;
    let wire: WireRequest<'_> = match serde_json::from_slice(json) {
        Ok(wire) => wire,
        Err(e) => {
            let malformed = || perr(format!("malformed inference request: {e}"));
            // tritonclient (rapidjson) and Python's json write non-finite floats as bare
            // `NaN` / `Infinity` / `-Infinity`, which Triton accepts. Retry with them quoted,
            // a form the FP element parsers take; only failing requests pay for this.
            quoted = quote_non_finite(json).ok_or_else(malformed)?;
            serde_json::from_slice(&quoted).map_err(|_| malformed())?
        }
    };

    if wire.inputs.len() > limits.max_inputs {
        return Err(perr(format!(
            "the request has {} inputs, more than the limit of {}",
            wire.inputs.len(),
            limits.max_inputs
        )));
    }

    let mut parameters = wire.parameters.unwrap_or_default();
    let binary_data_output = match parameters.remove("binary_data_output") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(perr(format!("request parameter 'binary_data_output' must be a boolean, got {other}")));
        }
    };

    let mut inputs = Vec::with_capacity(wire.inputs.len());
    let mut offset = 0usize; // into `binary`
    for (index, input) in wire.inputs.into_iter().enumerate() {
        let name = input.name;
        if inputs[..index].iter().any(|i: &InferInput| i.name == name) {
            return Err(perr(format!("input '{name}' appears more than once")));
        }
        let datatype = DataType::parse(&input.datatype)
            .ok_or_else(|| perr(format!("input '{name}': unsupported datatype '{}'", input.datatype)))?;
        let (shape, count) = check_shape(&name, &input.shape, limits)?;

        let mut binary_size = None;
        if let Some(params) = &input.parameters {
            if params.shared_memory_region.is_some() {
                return Err(perr(format!("input '{name}': shared memory is not supported")));
            }
            if let Some(n) = &params.binary_data_size {
                let n = n.get().map_err(|bad| {
                    perr(format!("input '{name}': binary_data_size must be a non-negative integer, got {bad}"))
                })?;
                binary_size = Some(usize::try_from(n).unwrap_or(usize::MAX));
            }
        }

        let data = match (input.data, binary_size) {
            (Some(_), Some(_)) => {
                return Err(perr(format!("input '{name}': has both 'data' and 'parameters.binary_data_size'")));
            }
            (None, None) => {
                return Err(perr(format!("input '{name}': has neither 'data' nor 'parameters.binary_data_size'")));
            }
            (Some(raw), None) => {
                parse_json_data(datatype, raw.get(), count).map_err(|e| e.into_error(&name, &shape, datatype))?
            }
            (None, Some(size)) => {
                let remaining = binary.len() - offset;
                if size > remaining {
                    return Err(perr(if !has_binary_section {
                        format!(
                            "input '{name}': binary_data_size is {size} but the request has no binary data \
                             (no Inference-Header-Content-Length header)"
                        )
                    } else {
                        format!(
                            "input '{name}': binary_data_size is {size} but only {remaining} bytes of binary data remain"
                        )
                    }));
                }
                let bytes = &binary[offset..offset + size];
                let base = json_len + offset;
                offset += size;
                decode_binary(datatype, bytes, count, shared.map(|b| (b, base)))
                    .map_err(|msg| perr(format!("input '{name}': {msg}")))?
            }
        };
        inputs.push(InferInput { name, datatype, shape, data });
    }
    if offset != binary.len() {
        return Err(perr(format!(
            "the request has {} bytes of binary data after the JSON, but its inputs declare {offset}",
            binary.len()
        )));
    }

    let mut outputs: Vec<RequestedOutput> = Vec::new();
    for output in wire.outputs.unwrap_or_default() {
        let name = output.name;
        if outputs.iter().any(|o| o.name == name) {
            return Err(perr(format!("output '{name}' is requested more than once")));
        }
        let mut binary_data = binary_data_output;
        let mut class_count = 0usize;
        if let Some(params) = output.parameters {
            if params.shared_memory_region.is_some() {
                return Err(perr(format!("output '{name}': shared memory is not supported")));
            }
            match params.binary_data {
                None => {}
                Some(Value::Bool(b)) => binary_data = b,
                Some(other) => {
                    return Err(perr(format!("output '{name}': binary_data must be a boolean, got {other}")));
                }
            }
            if let Some(n) = params.classification {
                let n = n.get().map_err(|bad| {
                    perr(format!("output '{name}': classification must be a non-negative integer, got {bad}"))
                })?;
                class_count = usize::try_from(n).unwrap_or(usize::MAX);
            }
        }
        outputs.push(RequestedOutput { name, binary_data, class_count });
    }

    Ok(InferRequest { id: wire.id, parameters, inputs, outputs, binary_data_output })
}

/// `json` with every bare `NaN`, `Infinity` and `-Infinity` token outside strings quoted;
/// `None` when there is none.
fn quote_non_finite(json: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut copied = 0; // json[..copied] is in `out`
    let mut in_string = false;
    let mut i = 0;
    while i < json.len() {
        let c = json[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let token: &[u8] = match c {
            b'N' => b"NaN",
            b'I' => b"Infinity",
            b'-' => b"-Infinity",
            _ => {
                i += 1;
                continue;
            }
        };
        let follows_separator =
            json[..i].iter().rev().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| b"[,:".contains(b));
        if follows_separator && json[i..].starts_with(token) {
            if out.is_empty() {
                out.reserve(json.len() + 16);
            }
            out.extend_from_slice(&json[copied..i]);
            out.push(b'"');
            out.extend_from_slice(token);
            out.push(b'"');
            i += token.len();
            copied = i;
        } else {
            i += 1;
        }
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&json[copied..]);
    Some(out)
}

fn check_shape(name: &str, dims: &[Num], limits: &Limits) -> Result<(Vec<usize>, usize), ProtocolError> {
    let mut shape = Vec::with_capacity(dims.len());
    for d in dims {
        match d.get() {
            Ok(v) => shape.push(usize::try_from(v).unwrap_or(usize::MAX)),
            Err(bad) => {
                return Err(perr(format!("input '{name}': shape dimensions must be non-negative integers, got {bad}")));
            }
        }
    }
    // Each dimension on its own too: [0, huge] has no elements but would overflow the row
    // arithmetic of batching and the signature checks.
    if let Some(d) = shape.iter().find(|d| **d > limits.max_elements_per_tensor) {
        return Err(perr(format!(
            "input '{name}': dimension {d} is larger than the limit of {}",
            limits.max_elements_per_tensor
        )));
    }
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| perr(format!("input '{name}': shape {shape:?} has too many elements (overflow)")))?;
    if count > limits.max_elements_per_tensor {
        return Err(perr(format!(
            "input '{name}': shape {shape:?} has {count} elements, more than the limit of {}",
            limits.max_elements_per_tensor
        )));
    }
    Ok((shape, count))
}

// ----- binary tensors -------------------------------------------------------------------------

impl TensorData {
    /// The inverse of `write_canonical` for `count` elements; `None` if the bytes do not fit.
    pub fn from_canonical(datatype: DataType, bytes: &[u8], count: usize) -> Option<TensorData> {
        decode_binary(datatype, bytes, count, None).ok()
    }
}

/// Decodes one binary tensor. `shared` is the whole body and the offset of `bytes` in it, when
/// BYTES elements may share it.
fn decode_binary(
    datatype: DataType,
    bytes: &[u8],
    count: usize,
    shared: Option<(&Bytes, usize)>,
) -> Result<TensorData, String> {
    if let Some(size) = datatype.element_size() {
        let expected = count.saturating_mul(size);
        if bytes.len() != expected {
            return Err(format!(
                "binary_data_size is {} bytes but {count} {datatype} elements take {expected}",
                bytes.len()
            ));
        }
    }
    Ok(match datatype {
        DataType::Bool => {
            if let Some(pos) = bytes.iter().position(|&b| b > 1) {
                return Err(format!("BOOL element {pos} is the byte {}, expected 0 or 1", bytes[pos]));
            }
            TensorData::Bool(bytes.iter().map(|&b| b == 1).collect())
        }
        DataType::Uint8 => TensorData::Uint8(bytes.to_vec()),
        DataType::Int8 => TensorData::Int8(bytes.iter().map(|&b| b as i8).collect()),
        DataType::Uint16 => TensorData::Uint16(get_le(bytes, u16::from_le_bytes)),
        DataType::Int16 => TensorData::Int16(get_le(bytes, i16::from_le_bytes)),
        DataType::Fp16 => TensorData::Fp16(get_le(bytes, |b| f16::from_bits(u16::from_le_bytes(b)))),
        DataType::Uint32 => TensorData::Uint32(get_le(bytes, u32::from_le_bytes)),
        DataType::Int32 => TensorData::Int32(get_le(bytes, i32::from_le_bytes)),
        DataType::Fp32 => TensorData::Fp32(get_le(bytes, f32::from_le_bytes)),
        DataType::Uint64 => TensorData::Uint64(get_le(bytes, u64::from_le_bytes)),
        DataType::Int64 => TensorData::Int64(get_le(bytes, i64::from_le_bytes)),
        DataType::Fp64 => TensorData::Fp64(get_le(bytes, f64::from_le_bytes)),
        DataType::Bytes => TensorData::Bytes(decode_binary_bytes(bytes, count, shared)?),
    })
}

fn decode_binary_bytes(bytes: &[u8], count: usize, shared: Option<(&Bytes, usize)>) -> Result<Vec<Bytes>, String> {
    // Every element takes at least its 4-byte length, which bounds the allocation by the body.
    let mut out = Vec::with_capacity(count.min(bytes.len() / 4));
    let mut pos = 0usize;
    while pos < bytes.len() {
        let index = out.len();
        if index == count {
            return Err(format!(
                "binary data holds more than the {count} BYTES elements of its shape ({} bytes left over)",
                bytes.len() - pos
            ));
        }
        let Some(len_bytes) = bytes.get(pos..pos + 4) else {
            return Err(format!("BYTES element {index}: truncated length prefix ({} bytes)", bytes.len() - pos));
        };
        let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
        let start = pos + 4;
        let end = match start.checked_add(len) {
            Some(end) if end <= bytes.len() => end,
            _ => {
                return Err(format!(
                    "BYTES element {index}: length {len} runs past the end of the tensor's binary data ({} bytes left)",
                    bytes.len() - start
                ));
            }
        };
        out.push(match shared {
            Some((body, base)) => body.slice(base + start..base + end),
            None => Bytes::copy_from_slice(&bytes[start..end]),
        });
        pos = end;
    }
    if out.len() != count {
        return Err(format!("binary data holds {} BYTES elements but its shape needs {count}", out.len()));
    }
    Ok(out)
}

// ----- JSON tensor data -----------------------------------------------------------------------

enum DataError {
    /// The data holds this many elements, not the shape's count.
    Count(usize),
    /// Element `index` is not valid: `what` is its JSON text.
    Type {
        index: usize,
        what: String,
        expected: &'static str,
    },
    Range {
        index: usize,
        what: String,
    },
    Json(String),
}

impl DataError {
    fn into_error(self, name: &str, shape: &[usize], datatype: DataType) -> ProtocolError {
        let expected_count: usize = shape.iter().product();
        perr(match self {
            DataError::Count(got) => {
                format!("input '{name}': expected {expected_count} elements for shape {shape:?}, got {got}")
            }
            DataError::Type { index, what, expected } => {
                format!("input '{name}': element {index}: expected {expected} for {datatype}, got {what}")
            }
            DataError::Range { index, what } => {
                format!("input '{name}': element {index}: {what} is out of range for {datatype}")
            }
            DataError::Json(msg) => format!("input '{name}': {msg}"),
        })
    }
}

enum Reject {
    Type,
    Range,
}

/// One JSON element converted to a tensor element type.
trait Elem: Sized {
    /// What the type accepts, for messages ("an integer").
    const EXPECTED: &'static str;
    fn wrap(v: Vec<Self>) -> TensorData;
    /// `tok` is a JSON number token.
    fn from_number(_tok: &str) -> Result<Self, Reject> {
        Err(Reject::Type)
    }
    fn from_bool(_v: bool) -> Result<Self, Reject> {
        Err(Reject::Type)
    }
    fn from_null() -> Result<Self, Reject> {
        Err(Reject::Type)
    }
    fn from_string(_s: Cow<'_, str>) -> Result<Self, Reject> {
        Err(Reject::Type)
    }
}

#[inline]
fn is_integer_token(tok: &str) -> bool {
    !tok.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'))
}

macro_rules! int_elem {
    ($t:ty, $variant:ident) => {
        impl Elem for $t {
            const EXPECTED: &'static str = "an integer";
            fn wrap(v: Vec<Self>) -> TensorData {
                TensorData::$variant(v)
            }
            #[inline]
            fn from_number(tok: &str) -> Result<Self, Reject> {
                if !is_integer_token(tok) {
                    return Err(Reject::Type);
                }
                if tok.starts_with('-') {
                    let v: i64 = tok.parse().map_err(|_| Reject::Range)?;
                    <$t>::try_from(v).map_err(|_| Reject::Range)
                } else {
                    let v: u64 = tok.parse().map_err(|_| Reject::Range)?;
                    <$t>::try_from(v).map_err(|_| Reject::Range)
                }
            }
        }
    };
}
int_elem!(u8, Uint8);
int_elem!(u16, Uint16);
int_elem!(u32, Uint32);
int_elem!(u64, Uint64);
int_elem!(i8, Int8);
int_elem!(i16, Int16);
int_elem!(i32, Int32);
int_elem!(i64, Int64);

/// `"NaN"`, `"Infinity"`, `"-Infinity"` and the other spellings Rust's float parser accepts for
/// non-finite values; finite numbers written as strings are not accepted.
fn non_finite_from_str(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|v| !v.is_finite())
}

macro_rules! float_elem {
    ($t:ty, $variant:ident, |$v:ident: f64| $from_f64:expr, |$tok:ident| $parse:expr) => {
        impl Elem for $t {
            const EXPECTED: &'static str = "a number";
            fn wrap(v: Vec<Self>) -> TensorData {
                TensorData::$variant(v)
            }
            #[inline]
            fn from_number($tok: &str) -> Result<Self, Reject> {
                // A JSON number token always parses (out-of-range values become infinities).
                $parse.map_err(|_| Reject::Type)
            }
            fn from_null() -> Result<Self, Reject> {
                let $v = f64::NAN;
                Ok($from_f64)
            }
            fn from_string(s: Cow<'_, str>) -> Result<Self, Reject> {
                let $v = non_finite_from_str(&s).ok_or(Reject::Type)?;
                Ok($from_f64)
            }
        }
    };
}
float_elem!(f32, Fp32, |v: f64| v as f32, |tok| tok.parse::<f32>());
float_elem!(f64, Fp64, |v: f64| v, |tok| tok.parse::<f64>());
float_elem!(f16, Fp16, |v: f64| f16::from_f64(v), |tok| tok.parse::<f64>().map(f16::from_f64));

impl Elem for bool {
    const EXPECTED: &'static str = "true or false";
    fn wrap(v: Vec<Self>) -> TensorData {
        TensorData::Bool(v)
    }
    fn from_bool(v: bool) -> Result<Self, Reject> {
        Ok(v)
    }
}

impl Elem for Bytes {
    const EXPECTED: &'static str = "a string";
    fn wrap(v: Vec<Self>) -> TensorData {
        TensorData::Bytes(v)
    }
    fn from_string(s: Cow<'_, str>) -> Result<Self, Reject> {
        Ok(match s {
            Cow::Borrowed(s) => Bytes::copy_from_slice(s.as_bytes()),
            Cow::Owned(s) => Bytes::from(s),
        })
    }
}

fn parse_json_data(datatype: DataType, raw: &str, count: usize) -> Result<TensorData, DataError> {
    match datatype {
        DataType::Bool => scan::<bool>(raw, count),
        DataType::Uint8 => scan::<u8>(raw, count),
        DataType::Uint16 => scan::<u16>(raw, count),
        DataType::Uint32 => scan::<u32>(raw, count),
        DataType::Uint64 => scan::<u64>(raw, count),
        DataType::Int8 => scan::<i8>(raw, count),
        DataType::Int16 => scan::<i16>(raw, count),
        DataType::Int32 => scan::<i32>(raw, count),
        DataType::Int64 => scan::<i64>(raw, count),
        DataType::Fp16 => scan::<f16>(raw, count),
        DataType::Fp32 => scan::<f32>(raw, count),
        DataType::Fp64 => scan::<f64>(raw, count),
        DataType::Bytes => scan::<Bytes>(raw, count),
    }
}

/// Shortens a JSON token for an error message.
fn describe(tok: &str) -> String {
    const MAX: usize = 40;
    if tok.len() <= MAX {
        return tok.to_owned();
    }
    let mut end = MAX;
    while !tok.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &tok[..end])
}

/// Flattens a JSON value (a scalar, or arrays nested to any depth) into elements of `T`.
///
/// `raw` has already been validated as JSON by serde_json (it is a `RawValue`), so this only
/// needs to find the scalars: brackets, commas and whitespace all separate them. Objects are
/// the one valid JSON construct that is not tensor data.
fn scan<T: Elem>(raw: &str, count: usize) -> Result<TensorData, DataError> {
    let b = raw.as_bytes();
    // Every element takes at least two bytes ("1,"), which bounds the allocation by the body
    // whatever shape is declared.
    let mut out: Vec<T> = Vec::with_capacity(count.min(b.len() / 2 + 1));
    let mut seen = 0usize;
    let mut i = 0usize;
    while i < b.len() {
        let start = i;
        let result = match b[i] {
            b'[' | b']' | b',' | b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'{' => {
                return Err(DataError::Type { index: seen, what: "an object".to_owned(), expected: T::EXPECTED });
            }
            b'"' => {
                i += 1;
                let mut escaped = false;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        escaped = true;
                        i += 1;
                    }
                    i += 1;
                }
                // Past the closing quote (valid JSON always has one; the bound keeps slicing
                // in range regardless).
                i = (i + 1).min(b.len());
                let tok = &raw[start..i];
                let s = if escaped {
                    Cow::Owned(serde_json::from_str::<String>(tok).map_err(|e| DataError::Json(e.to_string()))?)
                } else {
                    Cow::Borrowed(raw.get(start + 1..i - 1).unwrap_or(""))
                };
                T::from_string(s)
            }
            b't' => {
                i = (i + 4).min(b.len());
                T::from_bool(true)
            }
            b'f' => {
                i = (i + 5).min(b.len());
                T::from_bool(false)
            }
            b'n' => {
                i = (i + 4).min(b.len());
                T::from_null()
            }
            _ => {
                while i < b.len() && !matches!(b[i], b',' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    i += 1;
                }
                T::from_number(&raw[start..i])
            }
        };
        match result {
            Ok(v) => {
                if seen < count {
                    out.push(v);
                }
            }
            Err(Reject::Type) => {
                return Err(DataError::Type { index: seen, what: describe(&raw[start..i]), expected: T::EXPECTED });
            }
            Err(Reject::Range) => return Err(DataError::Range { index: seen, what: describe(&raw[start..i]) }),
        }
        seen += 1;
    }
    if seen != count {
        return Err(DataError::Count(seen));
    }
    Ok(T::wrap(out))
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct InferOutput {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedResponse {
    pub body: Vec<u8>,
    /// `Some(n)` when binary outputs follow the JSON: send `Inference-Header-Content-Length: n`
    /// and `Content-Type: application/octet-stream`.
    pub json_len: Option<usize>,
}

impl EncodedResponse {
    pub fn content_type(&self) -> &'static str {
        if self.json_len.is_some() { "application/octet-stream" } else { "application/json" }
    }
}

/// Encodes an inference response. `binary(name)` says whether the output `name` goes in binary
/// form (typically `|n| request.output_binary(n)`); it is called once per output.
pub fn encode_infer_response(
    model_name: &str,
    model_version: Option<&str>,
    id: Option<&str>,
    parameters: Option<&Map<String, Value>>,
    outputs: &[InferOutput],
    binary: impl Fn(&str) -> bool,
) -> EncodedResponse {
    const INLINE: usize = 16;
    let mut inline_flags = [false; INLINE];
    let mut heap_flags = Vec::new();
    let flags: &mut [bool] = if outputs.len() <= INLINE {
        &mut inline_flags[..outputs.len()]
    } else {
        heap_flags.resize(outputs.len(), false);
        &mut heap_flags
    };

    let mut capacity = 64 + model_name.len() + model_version.map_or(0, str::len) + id.map_or(0, str::len);
    if parameters.is_some() {
        capacity += 64;
    }
    for (o, flag) in outputs.iter().zip(flags.iter_mut()) {
        *flag = binary(&o.name);
        capacity += 64 + o.name.len() + 21 * o.shape.len();
        capacity += if *flag { o.data.binary_size() } else { json_size_estimate(&o.data) };
    }

    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(b"{\"model_name\":");
    write_json_str(&mut out, model_name);
    if let Some(v) = model_version {
        out.extend_from_slice(b",\"model_version\":");
        write_json_str(&mut out, v);
    }
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        write_json_str(&mut out, id);
    }
    if let Some(p) = parameters.filter(|p| !p.is_empty()) {
        out.extend_from_slice(b",\"parameters\":");
        serde_json::to_writer(&mut out, p).expect("a JSON map always serializes");
    }
    out.extend_from_slice(b",\"outputs\":[");
    let mut any_binary = false;
    for (k, (o, &is_binary)) in outputs.iter().zip(flags.iter()).enumerate() {
        if k > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        write_json_str(&mut out, &o.name);
        out.extend_from_slice(b",\"datatype\":\"");
        out.extend_from_slice(o.data.datatype().as_str().as_bytes());
        out.extend_from_slice(b"\",\"shape\":[");
        for (j, &d) in o.shape.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            write_u64(&mut out, d as u64);
        }
        out.push(b']');
        if is_binary {
            any_binary = true;
            out.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            write_u64(&mut out, o.data.binary_size() as u64);
            out.extend_from_slice(b"}}");
        } else {
            out.extend_from_slice(b",\"data\":");
            write_json_data(&mut out, &o.data);
            out.push(b'}');
        }
    }
    out.extend_from_slice(b"]}");

    if !any_binary {
        return EncodedResponse { body: out, json_len: None };
    }
    let json_len = out.len();
    for (o, _) in outputs.iter().zip(flags.iter()).filter(|(_, f)| **f) {
        o.data.write_canonical(&mut out);
    }
    EncodedResponse { body: out, json_len: Some(json_len) }
}

/// `{"error":"<message>"}`, the body of every OIP error response (tritonclient reads the
/// `error` field of any non-200 response).
pub fn error_body(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    out.extend_from_slice(b"{\"error\":");
    write_json_str(&mut out, message);
    out.push(b'}');
    out
}

fn json_size_estimate(data: &TensorData) -> usize {
    let per = match data {
        TensorData::Bool(_) => 6,
        TensorData::Uint8(_) | TensorData::Int8(_) => 4,
        TensorData::Uint16(_) | TensorData::Int16(_) => 6,
        TensorData::Uint32(_) | TensorData::Int32(_) => 11,
        TensorData::Uint64(_) | TensorData::Int64(_) => 20,
        TensorData::Fp16(_) => 12,
        TensorData::Fp32(_) => 16,
        TensorData::Fp64(_) => 24,
        TensorData::Bytes(v) => return v.iter().map(|b| b.len() + 3).sum::<usize>() + 2,
    };
    per * data.len() + 2
}

#[inline]
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

#[inline]
fn write_u64(out: &mut Vec<u8>, v: u64) {
    let _ = CompactFormatter.write_u64(out, v);
}

#[inline]
fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = CompactFormatter.write_f64(out, v);
    } else {
        write_non_finite(out, v.is_nan(), v.is_sign_negative());
    }
}

#[inline]
fn write_f32(out: &mut Vec<u8>, v: f32) {
    if v.is_finite() {
        let _ = CompactFormatter.write_f32(out, v);
    } else {
        write_non_finite(out, v.is_nan(), v.is_sign_negative());
    }
}

#[cold]
fn write_non_finite(out: &mut Vec<u8>, nan: bool, negative: bool) {
    out.extend_from_slice(match (nan, negative) {
        (true, _) => b"\"NaN\"".as_slice(),
        (false, false) => b"\"Infinity\"".as_slice(),
        (false, true) => b"\"-Infinity\"".as_slice(),
    });
}

/// Writes a flat JSON array of the elements.
fn write_json_data(out: &mut Vec<u8>, data: &TensorData) {
    fn each<T: Copy>(out: &mut Vec<u8>, vals: &[T], mut write: impl FnMut(&mut Vec<u8>, T)) {
        out.push(b'[');
        for (i, &v) in vals.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write(out, v);
        }
        out.push(b']');
    }
    let mut f = CompactFormatter;
    match data {
        TensorData::Bool(v) => each(out, v, |o, x| o.extend_from_slice(if x { b"true" } else { b"false" })),
        TensorData::Uint8(v) => each(out, v, |o, x| drop(f.write_u8(o, x))),
        TensorData::Uint16(v) => each(out, v, |o, x| drop(f.write_u16(o, x))),
        TensorData::Uint32(v) => each(out, v, |o, x| drop(f.write_u32(o, x))),
        TensorData::Uint64(v) => each(out, v, |o, x| drop(f.write_u64(o, x))),
        TensorData::Int8(v) => each(out, v, |o, x| drop(f.write_i8(o, x))),
        TensorData::Int16(v) => each(out, v, |o, x| drop(f.write_i16(o, x))),
        TensorData::Int32(v) => each(out, v, |o, x| drop(f.write_i32(o, x))),
        TensorData::Int64(v) => each(out, v, |o, x| drop(f.write_i64(o, x))),
        // An f16 is exactly an f32; its shortest f32 text reads back to the same f16.
        TensorData::Fp16(v) => each(out, v, |o, x| write_f32(o, x.to_f32())),
        TensorData::Fp32(v) => each(out, v, write_f32),
        TensorData::Fp64(v) => each(out, v, write_f64),
        TensorData::Bytes(v) => {
            out.push(b'[');
            for (i, b) in v.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_str(out, &String::from_utf8_lossy(b));
            }
            out.push(b']');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<InferRequest, ProtocolError> {
        parse_infer_request(json.as_bytes(), None, &Limits::default())
    }

    fn err(json: &str) -> String {
        match parse(json) {
            Ok(r) => panic!("expected an error for {json}, parsed {r:?}"),
            Err(e) => e.0,
        }
    }

    fn one(datatype: &str, shape: &str, data: &str) -> String {
        format!(r#"{{"inputs":[{{"name":"x","datatype":"{datatype}","shape":{shape},"data":{data}}}]}}"#)
    }

    fn one_binary(datatype: &str, shape: &str, size: usize) -> String {
        format!(
            r#"{{"inputs":[{{"name":"x","datatype":"{datatype}","shape":{shape},"parameters":{{"binary_data_size":{size}}}}}]}}"#
        )
    }

    fn with_binary(json: &str, binary: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(binary);
        (body, Some(json.len()))
    }

    fn parse_bin(json: &str, binary: &[u8]) -> Result<InferRequest, ProtocolError> {
        let (body, len) = with_binary(json, binary);
        parse_infer_request(&body, len, &Limits::default())
    }

    fn canonical(data: &TensorData) -> Vec<u8> {
        let mut out = Vec::new();
        data.write_canonical(&mut out);
        out
    }

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    /// One tensor of every datatype, with the awkward values of each.
    fn samples() -> Vec<InferOutput> {
        let h = |v: f32| f16::from_f32(v);
        let out = |name: &str, shape: Vec<usize>, data: TensorData| InferOutput { name: name.to_owned(), shape, data };
        vec![
            out("bool", vec![2, 2], TensorData::Bool(vec![true, false, false, true])),
            out("u8", vec![3], TensorData::Uint8(vec![0, 1, 255])),
            out("u16", vec![2], TensorData::Uint16(vec![0, u16::MAX])),
            out("u32", vec![2], TensorData::Uint32(vec![0, u32::MAX])),
            out("u64", vec![1, 2], TensorData::Uint64(vec![0, u64::MAX])),
            out("i8", vec![3], TensorData::Int8(vec![i8::MIN, -1, i8::MAX])),
            out("i16", vec![3], TensorData::Int16(vec![i16::MIN, 0, i16::MAX])),
            out("i32", vec![3], TensorData::Int32(vec![i32::MIN, 7, i32::MAX])),
            out("i64", vec![3, 1], TensorData::Int64(vec![i64::MIN, 0, i64::MAX])),
            out(
                "f16",
                vec![7],
                TensorData::Fp16(vec![
                    h(0.5),
                    h(-1.25),
                    f16::MAX,
                    f16::from_bits(1),
                    h(-0.0),
                    f16::MIN_POSITIVE,
                    h(0.1),
                ]),
            ),
            out(
                "f32",
                vec![3, 3],
                TensorData::Fp32(vec![0.1, -1.5, f32::MAX, f32::MIN_POSITIVE, 1e-45, -0.0, 3.0, 1e20, 16777216.0]),
            ),
            out("f64", vec![6], TensorData::Fp64(vec![0.1, f64::MAX, 5e-324, -2.5e-300, 1.0 / 3.0, -0.0])),
            out(
                "bytes",
                vec![2, 2],
                TensorData::Bytes(vec![b(b"hello"), b(b""), b("w\u{f6}rld \u{2603}".as_bytes()), b(b"a\"b\\c\n\0")]),
            ),
        ]
    }

    /// A response body whose outputs become a request's inputs: `"outputs":` and `"inputs": `
    /// have the same length, so the binary section stays where it is.
    fn response_as_request(resp: &EncodedResponse) -> InferRequest {
        let json_len = resp.json_len.unwrap_or(resp.body.len());
        let json = std::str::from_utf8(&resp.body[..json_len]).unwrap().replacen("\"outputs\":", "\"inputs\": ", 1);
        let mut body = json.into_bytes();
        body.extend_from_slice(&resp.body[json_len..]);
        parse_infer_request(&body, resp.json_len, &Limits::default()).unwrap()
    }

    fn assert_round_trip(outputs: &[InferOutput], binary: impl Fn(&str) -> bool) {
        let resp = encode_infer_response("m", Some("1"), Some("r"), None, outputs, binary);
        let req = response_as_request(&resp);
        assert_eq!(req.inputs.len(), outputs.len());
        for (input, output) in req.inputs.iter().zip(outputs) {
            assert_eq!(input.name, output.name);
            assert_eq!(input.shape, output.shape);
            assert_eq!(input.datatype, output.data.datatype());
            assert_eq!(canonical(&input.data), canonical(&output.data), "output {}", output.name);
        }
    }

    // ----- round trips ------------------------------------------------------------------------

    #[test]
    fn json_round_trip_every_datatype() {
        let samples = samples();
        assert_eq!(samples.len(), DataType::ALL.len());
        assert_round_trip(&samples, |_| false);
    }

    #[test]
    fn binary_round_trip_every_datatype() {
        assert_round_trip(&samples(), |_| true);
        assert_round_trip(&samples(), |n| n.len() % 2 == 0);
    }

    #[test]
    fn shared_body_bytes_are_zero_copy() {
        let resp = encode_infer_response("m", None, None, None, &samples(), |_| true);
        let json_len = resp.json_len.unwrap();
        let json = std::str::from_utf8(&resp.body[..json_len]).unwrap().replacen("\"outputs\":", "\"inputs\": ", 1);
        let mut body = json.into_bytes();
        body.extend_from_slice(&resp.body[json_len..]);
        let body = Bytes::from(body);
        let req = parse_infer_request_bytes(&body, Some(json_len), &Limits::default()).unwrap();
        let TensorData::Bytes(elems) = &req.input("bytes").unwrap().data else { panic!() };
        assert_eq!(elems[0], b"hello"[..]);
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(range.contains(&(elems[0].as_ptr() as usize)));
        assert_eq!(req, parse_infer_request(&body, Some(json_len), &Limits::default()).unwrap());
    }

    #[test]
    fn json_floats_round_trip_exactly() {
        // Deterministic xorshift over bit patterns: FP32 and FP64 values written by the encoder
        // must read back bit for bit (serde_json's default float parser would miss ~1/3 of f64s).
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut f32s = Vec::new();
        let mut f64s = Vec::new();
        let mut f16s = Vec::new();
        while f64s.len() < 20_000 {
            let x = next();
            if f64::from_bits(x).is_finite() {
                f64s.push(f64::from_bits(x));
            }
            if f32::from_bits(x as u32).is_finite() {
                f32s.push(f32::from_bits(x as u32));
            }
            if f16::from_bits(x as u16).is_finite() {
                f16s.push(f16::from_bits(x as u16));
            }
        }
        let outputs = vec![
            InferOutput { name: "a".into(), shape: vec![f32s.len()], data: TensorData::Fp32(f32s) },
            InferOutput { name: "b".into(), shape: vec![f64s.len()], data: TensorData::Fp64(f64s) },
            InferOutput { name: "c".into(), shape: vec![f16s.len()], data: TensorData::Fp16(f16s) },
        ];
        assert_round_trip(&outputs, |_| false);
    }

    #[test]
    fn non_finite_floats_are_strings_in_json() {
        let outputs = vec![
            InferOutput {
                name: "a".into(),
                shape: vec![4],
                data: TensorData::Fp32(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0]),
            },
            InferOutput {
                name: "b".into(),
                shape: vec![3],
                data: TensorData::Fp64(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]),
            },
            InferOutput { name: "c".into(), shape: vec![2], data: TensorData::Fp16(vec![f16::NAN, f16::NEG_INFINITY]) },
        ];
        let resp = encode_infer_response("m", None, None, None, &outputs, |_| false);
        let text = std::str::from_utf8(&resp.body).unwrap();
        assert!(text.contains(r#""data":["NaN","Infinity","-Infinity",1.0]"#), "{text}");
        serde_json::from_str::<Value>(text).expect("strict JSON");
        let req = response_as_request(&resp);
        let TensorData::Fp32(a) = &req.inputs[0].data else { panic!() };
        assert!(a[0].is_nan() && a[1] == f32::INFINITY && a[2] == f32::NEG_INFINITY && a[3] == 1.0);
        let TensorData::Fp64(v) = &req.inputs[1].data else { panic!() };
        assert!(v[0].is_nan() && v[1] == f64::INFINITY && v[2] == f64::NEG_INFINITY);
        let TensorData::Fp16(v) = &req.inputs[2].data else { panic!() };
        assert!(v[0].is_nan() && v[1] == f16::NEG_INFINITY);
    }

    #[test]
    fn float_inputs_accept_integers_specials_and_null() {
        let r = parse(&one("FP32", "[7]", r#"[1, -2, 0.5, "nan", "-inf", "Infinity", null]"#)).unwrap();
        let TensorData::Fp32(v) = &r.inputs[0].data else { panic!() };
        assert_eq!(&v[..3], &[1.0, -2.0, 0.5]);
        assert!(v[3].is_nan() && v[4] == f32::NEG_INFINITY && v[5] == f32::INFINITY && v[6].is_nan());
        // Correct rounding straight to f32, and to f16 through f64.
        let r = parse(&one("FP32", "[2]", "[0.1, 1e39]")).unwrap();
        assert_eq!(r.inputs[0].data, TensorData::Fp32(vec![0.1f32, f32::INFINITY]));
        let r = parse(&one("FP16", "[3]", "[0.1, 65504, 1]")).unwrap();
        assert_eq!(r.inputs[0].data, TensorData::Fp16(vec![f16::from_f64(0.1), f16::MAX, f16::ONE]));
        let r = parse(&one("FP64", "[2]", "[5e-324, -0.0]")).unwrap();
        let TensorData::Fp64(v) = &r.inputs[0].data else { panic!() };
        assert_eq!(v[0].to_bits(), 1);
        assert!(v[1] == 0.0 && v[1].is_sign_negative());
    }

    #[test]
    fn bare_non_finite_tokens_are_accepted() {
        // What tritonclient sends for NaN / inf in JSON data (rapidjson's default output).
        let json = r#"{"id":"NaN,Infinity","inputs":[{"name":"x","datatype":"FP32","shape":[2,2],"data":[[NaN, Infinity],[-Infinity,1.0]]},
            {"name":"y","datatype":"FP64","shape":[1],"data":[ NaN ]}],"parameters":{"p":"-Infinity"}}"#;
        let r = parse(json).unwrap();
        assert_eq!(r.id.as_deref(), Some("NaN,Infinity"));
        assert_eq!(r.parameters.get("p"), Some(&Value::from("-Infinity")));
        let TensorData::Fp32(v) = &r.inputs[0].data else { panic!() };
        assert!(v[0].is_nan() && v[1] == f32::INFINITY && v[2] == f32::NEG_INFINITY && v[3] == 1.0);
        let TensorData::Fp64(v) = &r.inputs[1].data else { panic!() };
        assert!(v[0].is_nan());
        assert_eq!(
            err(&one("INT32", "[1]", "[NaN]")),
            r#"input 'x': element 0: expected an integer for INT32, got "NaN""#
        );
        // Still an error, reported at the client's own positions, when quoting does not help.
        assert_eq!(
            err(r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[NaN,]}]}"#),
            "malformed inference request: expected value at line 1 column 62"
        );
        assert_eq!(err(r#"{"inputs":[NaNa]}"#), "malformed inference request: expected value at line 1 column 12");
    }

    #[test]
    fn nested_and_flat_data_are_the_same() {
        let flat = parse(&one("INT32", "[2, 2]", "[1, 2, 3, 4]")).unwrap();
        let nested = parse(&one("INT32", "[2, 2]", "[[1, 2], [3, 4]]")).unwrap();
        let deep = parse(&one("INT32", "[2, 2]", " [ [[1],[2]] ,\n[[3], [4]] ] ")).unwrap();
        assert_eq!(flat.inputs[0].data, TensorData::Int32(vec![1, 2, 3, 4]));
        assert_eq!(flat, nested);
        assert_eq!(flat, deep);
        // A scalar tensor: shape [] has one element, given bare or in an array.
        let bare = parse(&one("INT64", "[]", "5")).unwrap();
        let boxed = parse(&one("INT64", "[]", "[5]")).unwrap();
        assert_eq!(bare.inputs[0].data, TensorData::Int64(vec![5]));
        assert_eq!(bare, boxed);
        let empty = parse(&one("FP32", "[0, 3]", "[]")).unwrap();
        assert_eq!(empty.inputs[0].data, TensorData::Fp32(vec![]));
        let strings = parse(&one("BYTES", "[2]", r#"[["a\"\u00e9\n"], ["]"]]"#)).unwrap();
        assert_eq!(strings.inputs[0].data, TensorData::Bytes(vec![b("a\"\u{e9}\n".as_bytes()), b(b"]")]));
        let bools = parse(&one("BOOL", "[1, 2]", "[[true, false]]")).unwrap();
        assert_eq!(bools.inputs[0].data, TensorData::Bool(vec![true, false]));
    }

    #[test]
    fn envelope_fields_and_unknown_fields() {
        let r = parse(
            r#"{"id":"abc","extra":{"x":[1]},"parameters":{"binary_data_output":true,"priority":2,"custom":"v"},
               "inputs":[{"name":"x","datatype":"UINT8","shape":[2],"parameters":{"foo":1},"data":[1,2],"unknown":null}],
               "outputs":[{"name":"a"},{"name":"b","parameters":{"binary_data":false,"other":"y"}},
                          {"name":"c","parameters":{"binary_data":true,"classification":3}}]}"#,
        )
        .unwrap();
        assert_eq!(r.id.as_deref(), Some("abc"));
        assert!(r.binary_data_output);
        assert_eq!(r.parameters.get("priority"), Some(&Value::from(2)));
        assert_eq!(r.parameters.get("custom"), Some(&Value::from("v")));
        assert!(!r.parameters.contains_key("binary_data_output"));
        let outs: Vec<(&str, bool, usize)> =
            r.outputs.iter().map(|o| (o.name.as_str(), o.binary_data, o.class_count)).collect();
        assert_eq!(outs, [("a", true, 0), ("b", false, 0), ("c", true, 3)]);
        assert!(r.output_binary("a") && !r.output_binary("b"));
        // Outputs the request does not name follow binary_data_output.
        assert!(r.output_binary("zzz"));
        assert!(r.output_requested("c") && !r.output_requested("zzz"));

        let r = parse(&one("UINT8", "[1]", "[1]")).unwrap();
        assert_eq!(r.id, None);
        assert!(r.parameters.is_empty() && r.outputs.is_empty() && !r.binary_data_output);
        assert!(r.output_requested("anything") && !r.output_binary("anything"));
        // `"data": null` is the same as no data.
        assert!(err(&one("UINT8", "[1]", "null")).contains("neither"));
    }

    // ----- errors -----------------------------------------------------------------------------

    #[test]
    fn element_errors_name_the_tensor() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("UINT8", "[2]", "[1, 300]", "input 'x': element 1: 300 is out of range for UINT8"),
            ("UINT32", "[1]", "[-1]", "input 'x': element 0: -1 is out of range for UINT32"),
            ("INT8", "[1]", "[-129]", "input 'x': element 0: -129 is out of range for INT8"),
            (
                "INT64",
                "[1]",
                "[9223372036854775808]",
                "input 'x': element 0: 9223372036854775808 is out of range for INT64",
            ),
            (
                "UINT64",
                "[1]",
                "[18446744073709551616]",
                "input 'x': element 0: 18446744073709551616 is out of range for UINT64",
            ),
            ("INT32", "[1, 2]", "[[1, 1.5]]", "input 'x': element 1: expected an integer for INT32, got 1.5"),
            ("INT32", "[1]", "[2.0]", "input 'x': element 0: expected an integer for INT32, got 2.0"),
            ("INT16", "[1]", "[1e3]", "input 'x': element 0: expected an integer for INT16, got 1e3"),
            ("INT32", "[1]", r#"["1"]"#, r#"input 'x': element 0: expected an integer for INT32, got "1""#),
            ("BOOL", "[2]", "[true, 1]", "input 'x': element 1: expected true or false for BOOL, got 1"),
            ("BYTES", "[1]", "[5]", "input 'x': element 0: expected a string for BYTES, got 5"),
            ("BYTES", "[1]", "[null]", "input 'x': element 0: expected a string for BYTES, got null"),
            ("FP32", "[1]", r#"["abc"]"#, r#"input 'x': element 0: expected a number for FP32, got "abc""#),
            ("FP32", "[1]", r#"["1.5"]"#, r#"input 'x': element 0: expected a number for FP32, got "1.5""#),
            ("FP64", "[1]", "[false]", "input 'x': element 0: expected a number for FP64, got false"),
            ("FP16", "[1]", r#"[{"a":1}]"#, "input 'x': element 0: expected a number for FP16, got an object"),
            ("FP32", "[2, 4]", "[1,2,3,4,5,6]", "input 'x': expected 8 elements for shape [2, 4], got 6"),
            ("FP32", "[2, 4]", "[[1,2,3,4],[5,6,7,8],[9]]", "input 'x': expected 8 elements for shape [2, 4], got 9"),
            ("INT32", "[]", "[]", "input 'x': expected 1 elements for shape [], got 0"),
            ("FP32", "[-1]", "[]", "input 'x': shape dimensions must be non-negative integers, got -1"),
            ("FP32", "[1.5]", "[]", "input 'x': shape dimensions must be non-negative integers, got 1.5"),
            ("FP32", r#"["2"]"#, "[]", r#"input 'x': shape dimensions must be non-negative integers, got "2""#),
            ("BF16", "[1]", "[1]", "input 'x': unsupported datatype 'BF16'"),
            ("fp32", "[1]", "[1]", "input 'x': unsupported datatype 'fp32'"),
        ];
        for (dt, shape, data, want) in cases {
            assert_eq!(err(&one(dt, shape, data)), *want, "{dt} {shape} {data}");
        }
        let long = format!("[\"{}\"]", "y".repeat(100));
        assert_eq!(
            err(&one("INT8", "[1]", &long)),
            format!("input 'x': element 0: expected an integer for INT8, got \"{}...", "y".repeat(39))
        );
    }

    #[test]
    fn shape_and_limit_errors() {
        assert_eq!(
            err(&one("FP32", "[4294967296, 4294967296, 16]", "[]")),
            "input 'x': dimension 4294967296 is larger than the limit of 67108864"
        );
        // No elements at all, but a dimension that would overflow row arithmetic downstream.
        assert_eq!(
            err(&one("FP32", "[0, 18446744073709551615]", "[]")),
            "input 'x': dimension 18446744073709551615 is larger than the limit of 67108864"
        );
        let limits = Limits { max_elements_per_tensor: 10, max_inputs: 1 };
        let e = parse_infer_request(one("FP32", "[11]", "[]").as_bytes(), None, &limits).unwrap_err();
        assert_eq!(e.0, "input 'x': dimension 11 is larger than the limit of 10");
        let e = parse_infer_request(one("FP32", "[4, 4]", "[]").as_bytes(), None, &limits).unwrap_err();
        assert_eq!(e.0, "input 'x': shape [4, 4] has 16 elements, more than the limit of 10");
        let two = r#"{"inputs":[{"name":"a","datatype":"BOOL","shape":[1],"data":[true]},{"name":"b","datatype":"BOOL","shape":[1],"data":[true]}]}"#;
        let e = parse_infer_request(two.as_bytes(), None, &limits).unwrap_err();
        assert_eq!(e.0, "the request has 2 inputs, more than the limit of 1");
        // A declared shape far larger than the data fails without allocating for the shape.
        assert_eq!(
            err(&one("FP64", "[60000000]", "[1]")),
            "input 'x': expected 60000000 elements for shape [60000000], got 1"
        );
    }

    #[test]
    fn request_structure_errors() {
        let dup = r#"{"inputs":[{"name":"a","datatype":"BOOL","shape":[1],"data":[true]},{"name":"a","datatype":"BOOL","shape":[1],"data":[true]}]}"#;
        assert_eq!(err(dup), "input 'a' appears more than once");
        assert_eq!(
            err(
                r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1],"parameters":{"binary_data_size":4}}]}"#
            ),
            "input 'x': has both 'data' and 'parameters.binary_data_size'"
        );
        assert_eq!(
            err(r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1]}]}"#),
            "input 'x': has neither 'data' nor 'parameters.binary_data_size'"
        );
        assert_eq!(
            err(r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"parameters":{"shared_memory_region":"r"}}]}"#),
            "input 'x': shared memory is not supported"
        );
        assert_eq!(
            err(r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":-4}}]}"#),
            "input 'x': binary_data_size must be a non-negative integer, got -4"
        );
        let outputs = |o: &str| format!(r#"{{"inputs":[],"outputs":[{o}]}}"#);
        assert_eq!(err(&outputs(r#"{"name":"y"},{"name":"y"}"#)), "output 'y' is requested more than once");
        assert_eq!(
            err(&outputs(r#"{"name":"y","parameters":{"binary_data":"yes"}}"#)),
            r#"output 'y': binary_data must be a boolean, got "yes""#
        );
        assert_eq!(
            err(&outputs(r#"{"name":"y","parameters":{"classification":-1}}"#)),
            "output 'y': classification must be a non-negative integer, got -1"
        );
        assert_eq!(
            err(&outputs(r#"{"name":"y","parameters":{"shared_memory_region":"r"}}"#)),
            "output 'y': shared memory is not supported"
        );
        assert_eq!(
            err(r#"{"inputs":[],"parameters":{"binary_data_output":1}}"#),
            "request parameter 'binary_data_output' must be a boolean, got 1"
        );
    }

    #[test]
    fn malformed_json_reports_serde_message() {
        assert_eq!(err(""), "malformed inference request: EOF while parsing a value at line 1 column 0");
        assert_eq!(err("{"), "malformed inference request: EOF while parsing an object at line 1 column 1");
        assert!(
            err(r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1,]}]}"#)
                .starts_with("malformed inference request: ")
        );
        assert_eq!(err(r#"{"id":"a"}"#), "malformed inference request: missing field `inputs` at line 1 column 10");
        assert!(err(r#"{"inputs":[{"datatype":"FP32","shape":[1],"data":[1]}]}"#).contains("missing field `name`"));
        assert!(err(r#"{"inputs":{}}"#).contains("invalid type: map, expected a sequence"));
        assert!(err(r#"{"id":5,"inputs":[]}"#).contains("invalid type: integer `5`, expected a string"));
        let bad_utf8 = b"{\"inputs\":[{\"name\":\"\xff\",\"datatype\":\"FP32\",\"shape\":[1],\"data\":[1]}]}";
        let e = parse_infer_request(bad_utf8, None, &Limits::default()).unwrap_err();
        assert!(e.0.starts_with("malformed inference request: invalid unicode code point"), "{e}");
        let bad_utf8_data =
            b"{\"inputs\":[{\"name\":\"x\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"\xc3\x28\"]}]}";
        let e = parse_infer_request(bad_utf8_data, None, &Limits::default()).unwrap_err();
        assert!(e.0.starts_with("malformed inference request: "), "{e}");
    }

    #[test]
    fn binary_inputs_decode() {
        let json = r#"{"inputs":[{"name":"a","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}},
            {"name":"j","datatype":"INT8","shape":[1],"data":[-3]},
            {"name":"s","datatype":"BYTES","shape":[2],"parameters":{"binary_data_size":11}},
            {"name":"t","datatype":"BOOL","shape":[3],"parameters":{"binary_data_size":3}},
            {"name":"h","datatype":"FP16","shape":[1],"parameters":{"binary_data_size":2}},
            {"name":"e","datatype":"BYTES","shape":[0],"parameters":{"binary_data_size":0}}]}"#;
        let mut bin = Vec::new();
        bin.extend_from_slice(&1.5f32.to_le_bytes());
        bin.extend_from_slice(&(-2.0f32).to_le_bytes());
        bin.extend_from_slice(&3u32.to_le_bytes());
        bin.extend_from_slice(b"abc");
        bin.extend_from_slice(&0u32.to_le_bytes());
        bin.extend_from_slice(&[1, 0, 1]);
        bin.extend_from_slice(&f16::from_f32(0.25).to_bits().to_le_bytes());
        let r = parse_bin(json, &bin).unwrap();
        let data: Vec<&TensorData> = r.inputs.iter().map(|i| &i.data).collect();
        assert_eq!(
            data,
            [
                &TensorData::Fp32(vec![1.5, -2.0]),
                &TensorData::Int8(vec![-3]),
                &TensorData::Bytes(vec![b(b"abc"), b(b"")]),
                &TensorData::Bool(vec![true, false, true]),
                &TensorData::Fp16(vec![f16::from_f32(0.25)]),
                &TensorData::Bytes(vec![]),
            ]
        );
        // A header length equal to the body with no binary inputs is fine.
        let plain = one("UINT8", "[1]", "[1]");
        assert!(parse_infer_request(plain.as_bytes(), Some(plain.len()), &Limits::default()).is_ok());
    }

    #[test]
    fn binary_input_errors() {
        let fp32 = one_binary("FP32", "[3]", 8);
        assert_eq!(
            parse_bin(&fp32, &[0; 8]).unwrap_err().0,
            "input 'x': binary_data_size is 8 bytes but 3 FP32 elements take 12"
        );
        let fp32 = one_binary("FP32", "[3]", 12);
        assert_eq!(
            parse_bin(&fp32, &[0; 8]).unwrap_err().0,
            "input 'x': binary_data_size is 12 but only 8 bytes of binary data remain"
        );
        assert_eq!(
            parse_bin(&fp32, &[0; 13]).unwrap_err().0,
            "the request has 13 bytes of binary data after the JSON, but its inputs declare 12"
        );
        assert_eq!(
            parse_infer_request(fp32.as_bytes(), None, &Limits::default()).unwrap_err().0,
            "input 'x': binary_data_size is 12 but the request has no binary data (no Inference-Header-Content-Length header)"
        );
        assert_eq!(
            parse_infer_request(b"{}", Some(3), &Limits::default()).unwrap_err().0,
            "Inference-Header-Content-Length is 3 but the request body has only 2 bytes"
        );
        let plain = one("UINT8", "[1]", "[1]");
        assert_eq!(
            parse_bin(&plain, b"xy").unwrap_err().0,
            "the request has 2 bytes of binary data after the JSON, but its inputs declare 0"
        );
        assert_eq!(
            parse_bin(&one_binary("BOOL", "[3]", 3), &[0, 1, 2]).unwrap_err().0,
            "input 'x': BOOL element 2 is the byte 2, expected 0 or 1"
        );
        let bytes_case =
            |shape: &str, bin: &[u8]| parse_bin(&one_binary("BYTES", shape, bin.len()), bin).unwrap_err().0;
        assert_eq!(bytes_case("[1]", &[1, 0]), "input 'x': BYTES element 0: truncated length prefix (2 bytes)");
        assert_eq!(
            bytes_case("[1]", &[5, 0, 0, 0, b'a']),
            "input 'x': BYTES element 0: length 5 runs past the end of the tensor's binary data (1 bytes left)"
        );
        assert_eq!(
            bytes_case("[1]", &[0, 0, 0, 0, 0, 0, 0, 0]),
            "input 'x': binary data holds more than the 1 BYTES elements of its shape (4 bytes left over)"
        );
        assert_eq!(
            bytes_case("[2]", &[1, 0, 0, 0, b'a']),
            "input 'x': binary data holds 1 BYTES elements but its shape needs 2"
        );
        assert_eq!(
            bytes_case("[1]", &[0xff, 0xff, 0xff, 0xff]),
            "input 'x': BYTES element 0: length 4294967295 runs past the end of the tensor's binary data (0 bytes left)"
        );
    }

    // ----- tensor helpers ---------------------------------------------------------------------

    #[test]
    fn datatype_names() {
        for dt in DataType::ALL {
            assert_eq!(DataType::parse(dt.as_str()), Some(dt));
            assert_eq!(dt.to_string(), dt.as_str());
        }
        assert_eq!(DataType::Fp16.element_size(), Some(2));
        assert_eq!(DataType::Bool.element_size(), Some(1));
        assert_eq!(DataType::Uint64.element_size(), Some(8));
        assert_eq!(DataType::Bytes.element_size(), None);
        for s in samples() {
            assert_eq!(s.data.binary_size(), canonical(&s.data).len());
            if let Some(size) = s.data.datatype().element_size() {
                assert_eq!(s.data.binary_size(), size * s.data.len());
            }
        }
    }

    #[test]
    fn concat_and_slice() {
        let a = TensorData::Fp32(vec![1.0, 2.0]);
        let b2 = TensorData::Fp32(vec![3.0]);
        let c = TensorData::Int32(vec![3]);
        assert_eq!(TensorData::concat(&[&a, &b2]), Some(TensorData::Fp32(vec![1.0, 2.0, 3.0])));
        assert_eq!(TensorData::concat(&[&a, &c]), None);
        assert_eq!(TensorData::concat(&[]), None);
        let s = TensorData::Bytes(vec![b(b"a"), b(b"b"), b(b"c")]);
        assert_eq!(s.slice(1, 3), TensorData::Bytes(vec![b(b"b"), b(b"c")]));
        assert_eq!(TensorData::concat(&[&s.slice(0, 1), &s.slice(1, 3)]).unwrap(), s);
        assert!(a.slice(1, 1).is_empty());
        for sample in samples() {
            let n = sample.data.len();
            let joined = TensorData::concat(&[&sample.data.slice(0, n / 2), &sample.data.slice(n / 2, n)]).unwrap();
            assert_eq!(canonical(&joined), canonical(&sample.data));
        }
    }

    #[test]
    fn canonical_bytes() {
        assert_eq!(canonical(&TensorData::Bool(vec![true, false])), [1, 0]);
        assert_eq!(canonical(&TensorData::Int16(vec![-2])), [0xfe, 0xff]);
        assert_eq!(canonical(&TensorData::Uint32(vec![0x0102_0304])), [4, 3, 2, 1]);
        assert_eq!(canonical(&TensorData::Fp32(vec![1.0])), [0, 0, 0x80, 0x3f]);
        assert_eq!(canonical(&TensorData::Fp16(vec![f16::ONE])), [0, 0x3c]);
        assert_eq!(canonical(&TensorData::Fp64(vec![-0.0])), [0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(canonical(&TensorData::Bytes(vec![b(b"ab"), b(b"")])), [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        assert_ne!(canonical(&TensorData::Fp32(vec![0.0])), canonical(&TensorData::Fp32(vec![-0.0])));
        for sample in samples() {
            let (dt, n) = (sample.data.datatype(), sample.data.len());
            let back = TensorData::from_canonical(dt, &canonical(&sample.data), n).unwrap();
            assert_eq!(canonical(&back), canonical(&sample.data));
            assert_eq!(TensorData::from_canonical(dt, &canonical(&sample.data), n + 1), None);
        }
    }

    // ----- response encoding ------------------------------------------------------------------

    #[test]
    fn response_layout() {
        let outputs = vec![
            InferOutput { name: "probs".into(), shape: vec![1, 3], data: TensorData::Fp32(vec![0.25, 0.5, 0.125]) },
            InferOutput { name: "label".into(), shape: vec![1], data: TensorData::Bytes(vec![b(b"cat \"x\"")]) },
        ];
        let mut params = Map::new();
        params.insert("k".into(), Value::from(1));
        let r = encode_infer_response("m\"1", Some("2"), Some("id-1"), Some(&params), &outputs, |_| false);
        assert_eq!(r.json_len, None);
        assert_eq!(r.content_type(), "application/json");
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            r#"{"model_name":"m\"1","model_version":"2","id":"id-1","parameters":{"k":1},"outputs":[{"name":"probs","datatype":"FP32","shape":[1,3],"data":[0.25,0.5,0.125]},{"name":"label","datatype":"BYTES","shape":[1],"data":["cat \"x\""]}]}"#
        );
        let r = encode_infer_response("m", None, None, Some(&Map::new()), &outputs, |n| n == "probs");
        let json = r#"{"model_name":"m","outputs":[{"name":"probs","datatype":"FP32","shape":[1,3],"parameters":{"binary_data_size":12}},{"name":"label","datatype":"BYTES","shape":[1],"data":["cat \"x\""]}]}"#;
        assert_eq!(r.json_len, Some(json.len()));
        assert_eq!(r.content_type(), "application/octet-stream");
        assert_eq!(&r.body[..json.len()], json.as_bytes());
        assert_eq!(&r.body[json.len()..], canonical(&outputs[0].data));
        // Invalid UTF-8 in a JSON BYTES output is replaced, not an invalid document.
        let raw = vec![InferOutput { name: "r".into(), shape: vec![1], data: TensorData::Bytes(vec![b(b"a\xffb")]) }];
        let r = encode_infer_response("m", None, None, None, &raw, |_| false);
        assert!(std::str::from_utf8(&r.body).unwrap().contains("\"data\":[\"a\u{fffd}b\"]"));
        let r = encode_infer_response("m", None, None, None, &[], |_| true);
        assert_eq!(r.body, br#"{"model_name":"m","outputs":[]}"#);
        // More outputs than fit the inline flag array.
        let many: Vec<InferOutput> = (0..40)
            .map(|i| InferOutput { name: format!("o{i}"), shape: vec![1], data: TensorData::Int32(vec![i]) })
            .collect();
        assert_round_trip(&many, |n| n.ends_with('3'));
    }

    #[test]
    fn error_body_is_oip_json() {
        let body = error_body("input 'x': bad \"value\"\n");
        assert_eq!(body, br#"{"error":"input 'x': bad \"value\"\n"}"#);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "input 'x': bad \"value\"\n");
    }

    // ----- tritonclient fixtures --------------------------------------------------------------

    fn fixture_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oip")
    }

    #[derive(Deserialize)]
    struct Manifest<'a> {
        #[serde(borrow)]
        cases: Vec<Case<'a>>,
    }

    #[derive(Deserialize)]
    struct Case<'a> {
        case: String,
        body: String,
        header_length: Option<usize>,
        id: Option<String>,
        #[serde(default)]
        parameters: Option<Map<String, Value>>,
        #[serde(borrow)]
        inputs: Vec<CaseInput<'a>>,
        outputs: Vec<CaseOutput>,
        binary_data_output: bool,
    }

    #[derive(Deserialize)]
    struct CaseInput<'a> {
        name: String,
        datatype: String,
        shape: Vec<usize>,
        #[serde(borrow)]
        values: Vec<&'a RawValue>,
    }

    #[derive(Deserialize)]
    struct CaseOutput {
        name: String,
        binary_data: bool,
        class_count: usize,
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The element at `i` as the manifest's JSON token would write it, compared by value (the
    /// tokens are parsed with the standard library, not with the code under test).
    fn assert_element(data: &TensorData, i: usize, token: &str, what: &str) {
        let int = || token.parse::<i128>().unwrap();
        // Non-finite values are the strings "NaN", "Infinity", "-Infinity"; any NaN matches.
        let same = |got: f64| {
            let want = token.trim_matches('"').parse::<f64>().unwrap();
            if want.is_nan() { got.is_nan() } else { got.to_bits() == want.to_bits() }
        };
        let ok = match data {
            TensorData::Bool(v) => v[i] == (token == "true"),
            TensorData::Uint8(v) => v[i] as i128 == int(),
            TensorData::Uint16(v) => v[i] as i128 == int(),
            TensorData::Uint32(v) => v[i] as i128 == int(),
            TensorData::Uint64(v) => v[i] as i128 == int(),
            TensorData::Int8(v) => v[i] as i128 == int(),
            TensorData::Int16(v) => v[i] as i128 == int(),
            TensorData::Int32(v) => v[i] as i128 == int(),
            TensorData::Int64(v) => v[i] as i128 == int(),
            TensorData::Fp16(v) => same(v[i].to_f64()),
            TensorData::Fp32(v) => same(v[i] as f64),
            TensorData::Fp64(v) => same(v[i]),
            TensorData::Bytes(v) => v[i] == unhex(token.trim_matches('"')),
        };
        assert!(ok, "{what}: element {i} is {data:?}, expected {token}");
    }

    #[test]
    fn tritonclient_request_fixtures() {
        let dir = fixture_dir();
        let manifest_text = std::fs::read_to_string(dir.join("requests.json")).unwrap();
        let manifest: Manifest<'_> = serde_json::from_str(&manifest_text).unwrap();
        assert!(manifest.cases.len() >= 17);
        for case in &manifest.cases {
            let body = std::fs::read(dir.join(&case.body)).unwrap();
            let r = parse_infer_request(&body, case.header_length, &Limits::default())
                .unwrap_or_else(|e| panic!("{}: {e}", case.case));
            let shared =
                parse_infer_request_bytes(&Bytes::from(body.clone()), case.header_length, &Limits::default()).unwrap();
            // Field by field: NaN elements make `==` on the whole request false.
            assert_eq!((&r.id, &r.parameters, &r.outputs), (&shared.id, &shared.parameters, &shared.outputs));
            let canon = |req: &InferRequest| -> Vec<(String, Vec<usize>, Vec<u8>)> {
                req.inputs.iter().map(|i| (i.name.clone(), i.shape.clone(), canonical(&i.data))).collect()
            };
            assert_eq!(canon(&r), canon(&shared), "{}", case.case);
            assert_eq!(r.id, case.id, "{}", case.case);
            assert_eq!(r.parameters, case.parameters.clone().unwrap_or_default(), "{}", case.case);
            assert_eq!(r.binary_data_output, case.binary_data_output, "{}", case.case);
            let outputs: Vec<(&str, bool, usize)> =
                r.outputs.iter().map(|o| (o.name.as_str(), o.binary_data, o.class_count)).collect();
            let want: Vec<(&str, bool, usize)> =
                case.outputs.iter().map(|o| (o.name.as_str(), o.binary_data, o.class_count)).collect();
            assert_eq!(outputs, want, "{}", case.case);
            assert_eq!(r.inputs.len(), case.inputs.len(), "{}", case.case);
            for (got, want) in r.inputs.iter().zip(&case.inputs) {
                let what = format!("{} / {}", case.case, want.name);
                assert_eq!(got.name, want.name, "{what}");
                assert_eq!(got.datatype.as_str(), want.datatype, "{what}");
                assert_eq!(got.data.datatype(), got.datatype, "{what}");
                assert_eq!(got.shape, want.shape, "{what}");
                assert_eq!(got.data.len(), want.values.len(), "{what}");
                for (i, token) in want.values.iter().enumerate() {
                    assert_element(&got.data, i, token.get(), &what);
                }
            }
        }
    }

    /// The responses `check_responses.py` reads with tritonclient. The encoder must keep
    /// producing these bytes; `OIP_BLESS_FIXTURES=1` rewrites them after an intended change
    /// (then run check_responses.py again).
    fn response_cases() -> Vec<(&'static str, EncodedResponse, Vec<InferOutput>)> {
        let mut specials = vec![
            InferOutput {
                name: "f32_special".into(),
                shape: vec![2, 2],
                data: TensorData::Fp32(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0]),
            },
            InferOutput {
                name: "f64_special".into(),
                shape: vec![3],
                data: TensorData::Fp64(vec![f64::NAN, f64::INFINITY, 1e-310]),
            },
            InferOutput {
                name: "f16_special".into(),
                shape: vec![2],
                data: TensorData::Fp16(vec![f16::NEG_INFINITY, f16::NAN]),
            },
            InferOutput {
                name: "bytes_raw".into(),
                shape: vec![2],
                data: TensorData::Bytes(vec![b(b"\xff\x00z"), b(b"ok")]),
            },
        ];
        let mut everything = samples();
        everything.append(&mut specials);
        let mut params = Map::new();
        params.insert("sequence_id".into(), Value::from(7));
        vec![
            (
                "response_binary",
                encode_infer_response("model-a", Some("3"), Some("req-1"), None, &everything, |_| true),
                everything.clone(),
            ),
            (
                "response_json",
                encode_infer_response("model-a", None, None, None, &everything, |_| false),
                everything.clone(),
            ),
            (
                "response_mixed",
                encode_infer_response("model-a", Some("1"), Some("req-42"), Some(&params), &everything, |n| {
                    n.len() % 2 == 1
                }),
                everything,
            ),
        ]
    }

    fn expected_values_json(data: &TensorData) -> String {
        // Written with Rust's own float formatting (not the encoder's), so that
        // check_responses.py compares the encoder against an independent rendering.
        fn float(x: f64) -> String {
            if x.is_nan() {
                "\"NaN\"".into()
            } else if x.is_infinite() {
                if x > 0.0 { "\"Infinity\"".into() } else { "\"-Infinity\"".into() }
            } else {
                format!("{x:?}")
            }
        }
        let items: Vec<String> = match data {
            TensorData::Bool(v) => v.iter().map(|x| x.to_string()).collect(),
            TensorData::Uint8(v) => v.iter().map(|x| x.to_string()).collect(),
            TensorData::Uint16(v) => v.iter().map(|x| x.to_string()).collect(),
            TensorData::Uint32(v) => v.iter().map(|x| x.to_string()).collect(),
            TensorData::Uint64(v) => v.iter().map(|x| x.to_string()).collect(),
            TensorData::Int8(v) => v.iter().map(|x| x.to_string()).collect(),
            TensorData::Int16(v) => v.iter().map(|x| x.to_string()).collect(),
            TensorData::Int32(v) => v.iter().map(|x| x.to_string()).collect(),
            TensorData::Int64(v) => v.iter().map(|x| x.to_string()).collect(),
            TensorData::Fp16(v) => v.iter().map(|x| float(x.to_f64())).collect(),
            TensorData::Fp32(v) => v.iter().map(|&x| float(x as f64)).collect(),
            TensorData::Fp64(v) => v.iter().map(|&x| float(x)).collect(),
            TensorData::Bytes(v) => {
                v.iter().map(|x| format!("\"{}\"", x.iter().map(|c| format!("{c:02x}")).collect::<String>())).collect()
            }
        };
        format!("[{}]", items.join(","))
    }

    #[test]
    fn tritonclient_response_fixtures() {
        let dir = fixture_dir();
        let bless = std::env::var_os("OIP_BLESS_FIXTURES").is_some();
        let mut manifest = String::from("{\"cases\":[\n");
        for (k, (name, resp, outputs)) in response_cases().into_iter().enumerate() {
            let file = format!("{name}.body");
            if bless {
                std::fs::write(dir.join(&file), &resp.body).unwrap();
            } else {
                let want = std::fs::read(dir.join(&file)).unwrap();
                assert!(
                    want == resp.body,
                    "{file} differs from the encoder's output (OIP_BLESS_FIXTURES=1 rewrites it)"
                );
            }
            let outs: Vec<String> = outputs
                .iter()
                .map(|o| {
                    format!(
                        "  {{\"name\":\"{}\",\"datatype\":\"{}\",\"shape\":{:?},\"values\":{}}}",
                        o.name,
                        o.data.datatype(),
                        o.shape,
                        expected_values_json(&o.data)
                    )
                })
                .collect();
            let header = resp.json_len.map_or("null".to_owned(), |n| n.to_string());
            manifest.push_str(&format!(
                "{}{{\"case\":\"{name}\",\"body\":\"{file}\",\"header_length\":{header},\"outputs\":[\n{}]}}",
                if k > 0 { ",\n" } else { "" },
                outs.join(",\n")
            ));
        }
        manifest.push_str("\n]}\n");
        if bless {
            std::fs::write(dir.join("responses.json"), &manifest).unwrap();
        } else {
            assert_eq!(std::fs::read_to_string(dir.join("responses.json")).unwrap(), manifest);
        }
    }
}
