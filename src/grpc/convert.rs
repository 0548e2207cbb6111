//! gRPC messages to the protocol's own types and back: `ModelInferRequest` becomes the same
//! `InferRequest` an HTTP body parses into, and an answer becomes a `ModelInferResponse`.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::proto::infer_parameter::ParameterChoice;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::{InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse};
use crate::inference::protocol::{
    DataType, DecodedBudget, InferInput, InferOutput, InferRequest, Limits, MAX_DIMS, MAX_NAME_BYTES, ProtocolError, Refusal,
    RequestedOutput, TensorData, decode_raw,
};
use crate::error::shortened;
use crate::inference::service::Answer;

fn refuse(message: String) -> ProtocolError {
    ProtocolError { message, kind: Refusal::Invalid }
}

/// The parameter that places a tensor in a shared memory region, which Tessera does not
/// serve: a tensor that names one is refused, as over HTTP, not read from empty contents.
const SHARED_MEMORY: &str = "shared_memory_region";

fn bounded_name(name: &str, what: &str) -> Result<(), ProtocolError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(refuse(format!("an {what}'s name is {} bytes; at most {MAX_NAME_BYTES}", name.len())));
    }
    Ok(())
}

/// The request as the inference path takes it, its tensors moved out of the message, not
/// copied. Outputs come back raw when the inputs came raw (or there were none), typed
/// otherwise: the protocol does not mix the two in one response. `wire_len` is the message's
/// size, which bounds what its tensors may take decoded.
pub fn infer_request(message: ModelInferRequest, wire_len: usize, limits: &Limits) -> Result<InferRequest, ProtocolError> {
    let ModelInferRequest { id, parameters: given, inputs: wire_inputs, outputs: wire_outputs, raw_input_contents, .. } = message;
    if wire_inputs.len() > limits.max_inputs {
        return Err(refuse(format!("{} inputs; at most {} are accepted", wire_inputs.len(), limits.max_inputs)));
    }
    let raw = !raw_input_contents.is_empty();
    if raw && raw_input_contents.len() != wire_inputs.len() {
        return Err(refuse(format!(
            "raw_input_contents has {} entries for {} inputs; give one per input, in order",
            raw_input_contents.len(),
            wire_inputs.len()
        )));
    }
    let mut budget = DecodedBudget::for_request(wire_len);
    let mut inputs: Vec<InferInput> = Vec::with_capacity(wire_inputs.len());
    for (i, input) in wire_inputs.into_iter().enumerate() {
        bounded_name(&input.name, "input")?;
        if inputs.iter().any(|other| other.name == input.name) {
            return Err(refuse(format!("input '{}' appears more than once", input.name)));
        }
        let datatype = DataType::parse(&input.datatype)
            .ok_or_else(|| refuse(format!("input '{}': unknown datatype '{}'", input.name, shortened(&input.datatype, 64))))?;
        let (shape, count) = shape(&input.name, &input.shape, limits)?;
        if input.parameters.contains_key(SHARED_MEMORY) {
            return Err(refuse(format!("input '{}': shared memory is not supported", input.name)));
        }
        budget.spend(&input.name, datatype, count)?;
        let data = if raw {
            if input.contents.is_some() {
                return Err(refuse(format!("input '{}' has contents beside raw_input_contents; use one or the other", input.name)));
            }
            decode_raw(&input.name, datatype, &raw_input_contents[i], count)?
        } else {
            typed(&input.name, input.contents.unwrap_or_default(), datatype, count)?
        };
        inputs.push(InferInput { name: input.name, datatype, shape, data });
    }
    let binary = raw || inputs.is_empty();
    if wire_outputs.len() > limits.max_inputs {
        return Err(refuse(format!("{} outputs requested; at most {} are accepted", wire_outputs.len(), limits.max_inputs)));
    }
    let mut outputs: Vec<RequestedOutput> = Vec::with_capacity(wire_outputs.len());
    for output in wire_outputs {
        bounded_name(&output.name, "output")?;
        if outputs.iter().any(|other| other.name == output.name) {
            return Err(refuse(format!("output '{}' is requested more than once", output.name)));
        }
        if output.parameters.contains_key(SHARED_MEMORY) {
            return Err(refuse(format!("output '{}': shared memory is not supported", output.name)));
        }
        let class_count = match output.parameters.get("classification").and_then(|p| p.parameter_choice.as_ref()) {
            None => 0,
            Some(ParameterChoice::Int64Param(n)) if *n >= 0 => usize::try_from(*n).unwrap_or(usize::MAX),
            Some(_) => return Err(refuse(format!("output '{}': classification must be a non-negative int64", output.name))),
        };
        outputs.push(RequestedOutput { name: output.name, binary_data: binary, class_count });
    }
    Ok(InferRequest {
        id: (!id.is_empty()).then_some(id),
        parameters: parameters(given),
        inputs,
        outputs,
        binary_data_output: binary,
    })
}

fn shape(name: &str, dims: &[i64], limits: &Limits) -> Result<(Vec<usize>, usize), ProtocolError> {
    if dims.len() > MAX_DIMS {
        return Err(refuse(format!("input '{name}': {} dimensions; at most {MAX_DIMS}", dims.len())));
    }
    let mut count = 1usize;
    let mut shape = Vec::with_capacity(dims.len());
    for &dim in dims {
        let dim = usize::try_from(dim).map_err(|_| refuse(format!("input '{name}': shape {dims:?} has a negative dimension")))?;
        // Each dimension on its own too, as over HTTP: [0, huge] has no elements but would
        // overflow the row arithmetic of batching and the signature checks.
        if dim > limits.max_elements_per_tensor {
            return Err(refuse(format!("input '{name}': dimension {dim} is larger than the limit of {}", limits.max_elements_per_tensor)));
        }
        count = count
            .checked_mul(dim)
            .filter(|n| *n <= limits.max_elements_per_tensor)
            .ok_or_else(|| refuse(format!("input '{name}': shape {dims:?} exceeds {} elements", limits.max_elements_per_tensor)))?;
        shape.push(dim);
    }
    Ok((shape, count))
}

/// An input's typed contents, in the field its datatype uses.
fn typed(name: &str, contents: InferTensorContents, datatype: DataType, count: usize) -> Result<TensorData, ProtocolError> {
    let sized = |len: usize, field: &str| {
        if len == count {
            Ok(())
        } else {
            Err(refuse(format!("input '{name}': {field} holds {len} elements, its shape {count}")))
        }
    };
    fn narrow<T: TryFrom<W>, W: Copy + std::fmt::Display>(name: &str, values: &[W], datatype: DataType) -> Result<Vec<T>, ProtocolError> {
        values
            .iter()
            .map(|&v| T::try_from(v).map_err(|_| refuse(format!("input '{name}': {v} is out of range for {datatype}"))))
            .collect()
    }
    Ok(match datatype {
        DataType::Bool => {
            sized(contents.bool_contents.len(), "bool_contents")?;
            TensorData::Bool(contents.bool_contents)
        }
        DataType::Int8 | DataType::Int16 | DataType::Int32 => {
            sized(contents.int_contents.len(), "int_contents")?;
            let values = &contents.int_contents;
            match datatype {
                DataType::Int8 => TensorData::Int8(narrow(name, values, datatype)?),
                DataType::Int16 => TensorData::Int16(narrow(name, values, datatype)?),
                _ => TensorData::Int32(contents.int_contents),
            }
        }
        DataType::Int64 => {
            sized(contents.int64_contents.len(), "int64_contents")?;
            TensorData::Int64(contents.int64_contents)
        }
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => {
            sized(contents.uint_contents.len(), "uint_contents")?;
            let values = &contents.uint_contents;
            match datatype {
                DataType::Uint8 => TensorData::Uint8(narrow(name, values, datatype)?),
                DataType::Uint16 => TensorData::Uint16(narrow(name, values, datatype)?),
                _ => TensorData::Uint32(contents.uint_contents),
            }
        }
        DataType::Uint64 => {
            sized(contents.uint64_contents.len(), "uint64_contents")?;
            TensorData::Uint64(contents.uint64_contents)
        }
        DataType::Fp32 => {
            sized(contents.fp32_contents.len(), "fp32_contents")?;
            TensorData::Fp32(contents.fp32_contents)
        }
        DataType::Fp64 => {
            sized(contents.fp64_contents.len(), "fp64_contents")?;
            TensorData::Fp64(contents.fp64_contents)
        }
        DataType::Bytes => {
            sized(contents.bytes_contents.len(), "bytes_contents")?;
            TensorData::Bytes(contents.bytes_contents)
        }
        DataType::Fp16 => return Err(refuse(format!("input '{name}': FP16 has no typed contents; send it in raw_input_contents"))),
    })
}

fn parameters(given: HashMap<String, InferParameter>) -> Map<String, Value> {
    given
        .into_iter()
        .filter_map(|(key, p)| {
            let value = match p.parameter_choice? {
                ParameterChoice::BoolParam(b) => Value::Bool(b),
                ParameterChoice::Int64Param(n) => Value::from(n),
                ParameterChoice::StringParam(s) => Value::String(s),
            };
            Some((key, value))
        })
        .collect()
}

pub fn string_parameter(value: &str) -> InferParameter {
    InferParameter { parameter_choice: Some(ParameterChoice::StringParam(value.to_owned())) }
}

/// The answer as a `ModelInferResponse`: raw when the caller asked for binary outputs, and
/// whenever an output is FP16, which has no typed field.
pub fn infer_response(answer: Answer<'_>) -> ModelInferResponse {
    let raw = answer.binary.iter().any(|b| *b) || answer.outputs.iter().any(|o| matches!(o.data, TensorData::Fp16(_)));
    let mut raw_output_contents = Vec::with_capacity(if raw { answer.outputs.len() } else { 0 });
    let outputs = answer
        .outputs
        .into_iter()
        .map(|InferOutput { name, shape, data }| {
            let datatype = data.datatype().as_str().to_owned();
            let contents = if raw {
                let mut bytes = Vec::with_capacity(data.binary_size());
                data.write_canonical(&mut bytes);
                raw_output_contents.push(Bytes::from(bytes));
                None
            } else {
                Some(contents(data))
            };
            InferOutputTensor {
                name,
                datatype,
                shape: shape.iter().map(|d| i64::try_from(*d).unwrap_or(i64::MAX)).collect(),
                parameters: HashMap::new(),
                contents,
            }
        })
        .collect();
    ModelInferResponse {
        model_name: answer.model.to_owned(),
        model_version: answer.version.to_owned(),
        id: answer.id.unwrap_or_default().to_owned(),
        parameters: HashMap::from([("cache".to_owned(), string_parameter(answer.cache.as_str()))]),
        outputs,
        raw_output_contents,
    }
}

/// Typed contents of an output (never FP16: those go raw).
fn contents(data: TensorData) -> InferTensorContents {
    let mut c = InferTensorContents::default();
    match data {
        TensorData::Bool(v) => c.bool_contents = v,
        TensorData::Int8(v) => c.int_contents = v.into_iter().map(i32::from).collect(),
        TensorData::Int16(v) => c.int_contents = v.into_iter().map(i32::from).collect(),
        TensorData::Int32(v) => c.int_contents = v,
        TensorData::Int64(v) => c.int64_contents = v,
        TensorData::Uint8(v) => c.uint_contents = v.into_iter().map(u32::from).collect(),
        TensorData::Uint16(v) => c.uint_contents = v.into_iter().map(u32::from).collect(),
        TensorData::Uint32(v) => c.uint_contents = v,
        TensorData::Uint64(v) => c.uint64_contents = v,
        TensorData::Fp32(v) => c.fp32_contents = v,
        TensorData::Fp64(v) => c.fp64_contents = v,
        TensorData::Bytes(v) => c.bytes_contents = v,
        TensorData::Fp16(v) => c.fp32_contents = v.into_iter().map(f32::from).collect(),
    }
    c
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::super::proto::model_infer_request::InferInputTensor;
    use super::*;
    use crate::inference::cache::CacheStatus;

    fn input(name: &str, datatype: &str, shape: &[i64], contents: Option<InferTensorContents>) -> InferInputTensor {
        InferInputTensor { name: name.to_owned(), datatype: datatype.to_owned(), shape: shape.to_vec(), parameters: HashMap::new(), contents }
    }

    fn message(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".to_owned(),
            inputs,
            raw_input_contents: raw.into_iter().map(Bytes::from).collect(),
            ..Default::default()
        }
    }

    fn fp32_le(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn raw_and_typed_contents_give_the_same_request() {
        let raw = message(vec![input("x", "FP32", &[1, 2], None)], vec![fp32_le(&[1.5, -2.0])]);
        let typed = message(
            vec![input("x", "FP32", &[1, 2], Some(InferTensorContents { fp32_contents: vec![1.5, -2.0], ..Default::default() }))],
            vec![],
        );
        let (raw, typed) = (infer_request(raw, 0, &Limits::default()).unwrap(), infer_request(typed, 0, &Limits::default()).unwrap());
        assert_eq!(raw.inputs, typed.inputs);
        assert_eq!(raw.inputs[0].data, TensorData::Fp32(vec![1.5, -2.0]));
        assert_eq!(raw.inputs[0].shape, vec![1, 2]);
        assert!(raw.binary_data_output && !typed.binary_data_output);
    }

    #[test]
    fn bytes_elements_share_the_raw_buffer() {
        let mut raw = Vec::new();
        for word in [&b"ab"[..], b"", b"xyz"] {
            raw.extend_from_slice(&(word.len() as u32).to_le_bytes());
            raw.extend_from_slice(word);
        }
        let request = infer_request(message(vec![input("s", "BYTES", &[3], None)], vec![raw]), 0, &Limits::default()).unwrap();
        assert_eq!(request.inputs[0].data, TensorData::Bytes(vec![Bytes::from_static(b"ab"), Bytes::new(), Bytes::from_static(b"xyz")]));
    }

    #[test]
    fn malformed_requests_are_refused_with_the_tensor_named() {
        let limits = Limits { max_elements_per_tensor: 1000, max_inputs: 2 };
        let typed = |datatype: &str, shape: &[i64], contents: InferTensorContents| message(vec![input("t", datatype, shape, Some(contents))], vec![]);
        let cases: Vec<(ModelInferRequest, &str)> = vec![
            (message(vec![input("t", "FP32", &[2], None)], vec![fp32_le(&[1.0])]), "input 't', raw contents"),
            (message(vec![input("t", "FP32", &[1], None), input("u", "FP32", &[1], None)], vec![fp32_le(&[1.0])]), "2 inputs"),
            (message(vec![input("t", "FP8", &[1], None)], vec![vec![0]]), "unknown datatype 'FP8'"),
            (message(vec![input("t", "FP32", &[-1], None)], vec![vec![]]), "negative dimension"),
            (message(vec![input("t", "UINT8", &[100, 100], None)], vec![vec![]]), "exceeds 1000 elements"),
            (message(vec![input("t", "FP32", &[1], None); 3], vec![]), "at most 2"),
            (typed("FP32", &[2], InferTensorContents { fp32_contents: vec![1.0], ..Default::default() }), "fp32_contents holds 1"),
            (typed("INT8", &[1], InferTensorContents { int_contents: vec![128], ..Default::default() }), "128 is out of range for INT8"),
            (typed("UINT16", &[1], InferTensorContents { uint_contents: vec![70_000], ..Default::default() }), "out of range for UINT16"),
            (typed("FP16", &[1], InferTensorContents { fp32_contents: vec![1.0], ..Default::default() }), "FP16 has no typed contents"),
            (
                message(vec![input("t", "FP32", &[1], Some(InferTensorContents { fp32_contents: vec![1.0], ..Default::default() }))], vec![
                    fp32_le(&[1.0]),
                ]),
                "beside raw_input_contents",
            ),
            (message(vec![input("t", "BOOL", &[1], None)], vec![vec![2]]), "expected 0 or 1"),
            (message(vec![input("t", "UINT8", &[0, 1 << 40], None)], vec![vec![]]), "dimension 1099511627776 is larger"),
            (message(vec![input("t", "UINT8", &[1; 33], None)], vec![vec![0]]), "33 dimensions"),
            (message(vec![input(&"t".repeat(1025), "UINT8", &[1], None)], vec![vec![0]]), "an input's name is 1025 bytes; at most 1024"),
            (
                message(
                    vec![InferInputTensor {
                        parameters: HashMap::from([(SHARED_MEMORY.to_owned(), string_parameter("region"))]),
                        ..input("t", "UINT8", &[1], None)
                    }],
                    vec![vec![0]],
                ),
                "input 't': shared memory is not supported",
            ),
            (
                ModelInferRequest {
                    outputs: vec![super::super::proto::model_infer_request::InferRequestedOutputTensor {
                        name: "z".to_owned(),
                        parameters: HashMap::from([(SHARED_MEMORY.to_owned(), string_parameter("region"))]),
                    }],
                    ..message(vec![], vec![])
                },
                "output 'z': shared memory is not supported",
            ),

            (message(vec![input("t", "UINT8", &[1], None), input("t", "UINT8", &[1], None)], vec![vec![0], vec![0]]), "appears more than once"),
            (
                ModelInferRequest {
                    outputs: vec![
                        super::super::proto::model_infer_request::InferRequestedOutputTensor { name: "z".to_owned(), parameters: HashMap::new() };
                        2
                    ],
                    ..message(vec![], vec![])
                },
                "requested more than once",
            ),
        ];
        for (request, expected) in cases {
            let len = request.encoded_len();
            let error = infer_request(request, len, &limits).expect_err(expected);
            assert!(error.message.contains(expected), "{:?} does not contain {expected:?}", error.message);
            assert_eq!(error.kind, Refusal::Invalid, "{expected}");
        }
        // Raw strings: 4-byte lengths, each a 32-byte handle decoded (160 MB from 20).
        let strings = message(vec![input("t", "BYTES", &[5_000_000], None)], vec![vec![0; 20_000_000]]);
        let len = strings.encoded_len();
        let error = infer_request(strings, len, &Limits::default()).unwrap_err();
        assert_eq!(error.kind, Refusal::TooLarge);
        assert!(error.message.contains("input 't': 5000000 BYTES elements would take more memory decoded"), "{}", error.message);
    }

    #[test]
    fn parameters_and_outputs_carry_over() {
        let mut request = message(vec![], vec![]);
        request.id = "r-1".to_owned();
        request.parameters.insert("timeout".to_owned(), InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(5000)) });
        request.parameters.insert("no_cache".to_owned(), InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(true)) });
        request.outputs.push(super::super::proto::model_infer_request::InferRequestedOutputTensor {
            name: "z".to_owned(),
            parameters: HashMap::from([("classification".to_owned(), InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(3)) })]),
        });
        let parsed = infer_request(request, 0, &Limits::default()).unwrap();
        assert_eq!(parsed.id.as_deref(), Some("r-1"));
        assert_eq!(parsed.parameters["timeout"], serde_json::json!(5000));
        assert_eq!(parsed.parameters["no_cache"], serde_json::json!(true));
        assert_eq!(parsed.outputs, vec![RequestedOutput { name: "z".to_owned(), binary_data: true, class_count: 3 }]);
    }

    fn answer(outputs: Vec<InferOutput>, binary: &[bool]) -> ModelInferResponse {
        infer_response(Answer { model: "m", version: "2", id: Some("r"), outputs, binary, cache: CacheStatus::Miss })
    }

    #[test]
    fn answers_are_raw_or_typed_as_asked_and_fp16_always_raw() {
        let z = || InferOutput { name: "z".to_owned(), shape: vec![1, 2], data: TensorData::Fp32(vec![0.5, -1.0]) };
        let raw = answer(vec![z()], &[true]);
        assert_eq!(raw.raw_output_contents, vec![Bytes::from(fp32_le(&[0.5, -1.0]))]);
        assert!(raw.outputs[0].contents.is_none());
        assert_eq!((raw.outputs[0].datatype.as_str(), raw.outputs[0].shape.as_slice()), ("FP32", &[1i64, 2][..]));
        assert_eq!((raw.model_name.as_str(), raw.model_version.as_str(), raw.id.as_str()), ("m", "2", "r"));
        assert_eq!(raw.parameters["cache"], string_parameter("miss"));

        let typed = answer(vec![z(), InferOutput { name: "i".to_owned(), shape: vec![2], data: TensorData::Int8(vec![-1, 2]) }], &[false, false]);
        assert!(typed.raw_output_contents.is_empty());
        assert_eq!(typed.outputs[0].contents.as_ref().unwrap().fp32_contents, vec![0.5, -1.0]);
        assert_eq!(typed.outputs[1].contents.as_ref().unwrap().int_contents, vec![-1, 2]);

        let half = InferOutput { name: "h".to_owned(), shape: vec![1], data: TensorData::Fp16(vec![half::f16::from_f32(1.5)]) };
        let forced = answer(vec![z(), half], &[false, false]);
        assert_eq!(forced.raw_output_contents.len(), 2, "one raw entry per output once any is raw");
        assert_eq!(forced.raw_output_contents[1], Bytes::from(half::f16::from_f32(1.5).to_bits().to_le_bytes().to_vec()));
    }
}
