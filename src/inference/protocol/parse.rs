//! Parsing an inference request body.
//!
//! [`parse_infer_request`] takes the raw body and the value of the
//! `Inference-Header-Content-Length` header. Without the header the whole body is the JSON
//! request; with it, `body[..n]` is the JSON and the rest is the concatenation of the binary
//! tensors, in the order of the inputs that carry `parameters.binary_data_size`.
//!
//! The envelope is deserialized with serde, each input's `data` kept as a borrowed
//! [`RawValue`] (so serde validates the whole document once, without building a value tree);
//! once the datatype and shape are known, `data` is scanned into a typed tensor (`json_data`)
//! and binary tensors are decoded (`binary`).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::bare_non_finite::quote_non_finite;
use super::binary::decode_binary;
use super::json_data::{describe, parse_json_data};
use crate::error::shortened;
use super::request::{
    DecodedBudget, InferInput, InferRequest, Limits, MAX_DIMS, MAX_NAME_BYTES, MAX_PARAMETERS, MAX_TENSORS, ProtocolError,
    Refusal, RequestedOutput, perr,
};
use super::tensor::DataType;

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow)]
    inputs: Bounded<WireInput<'a>, MAX_TENSORS>,
    #[serde(default)]
    outputs: Option<Bounded<WireOutput, MAX_TENSORS>>,
}

#[derive(Deserialize)]
struct WireInput<'a> {
    name: Name,
    #[serde(borrow)]
    datatype: Cow<'a, str>,
    shape: Bounded<Num, MAX_DIMS>,
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
    name: Name,
    #[serde(default)]
    parameters: Option<WireOutputParams>,
}

#[derive(Deserialize)]
struct WireOutputParams {
    #[serde(default)]
    binary_data: Option<Scalar>,
    #[serde(default)]
    classification: Option<Num>,
    #[serde(default)]
    shared_memory_region: Option<IgnoredAny>,
}

/// A JSON array of at most `N` items, refused at the first one past them: a body of millions
/// of tiny entries is never built up first, nor compared pairwise after.
struct Bounded<T, const N: usize>(Vec<T>);

/// What a `Bounded` array holds, for its error.
trait Counted {
    const WHAT: &'static str;
}

impl Counted for WireInput<'_> {
    const WHAT: &'static str = "inputs";
}

impl Counted for WireOutput {
    const WHAT: &'static str = "outputs";
}

impl Counted for Num {
    const WHAT: &'static str = "dimensions in a shape";
}

impl<'de, T: Deserialize<'de> + Counted, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Counted, const N: usize> Visitor<'de> for V<T, N> {
            type Value = Bounded<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an array of at most {N} {}", T::WHAT)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N));
                while let Some(item) = seq.next_element()? {
                    if items.len() == N {
                        return Err(de::Error::custom(format_args!("more than {N} {}", T::WHAT)));
                    }
                    items.push(item);
                }
                Ok(Bounded(items))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
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
                Ok(Num::Bad(format!("{:?}", describe(v))))
            }
            fn visit_unit<E>(self) -> Result<Num, E> {
                Ok(Num::Bad("null".to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A scalar a caller sent, as an error message shows it: strings shortened before they are
/// escaped, since escaping can make each byte six.
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => format!("{:?}", describe(text)),
        other => describe(&other.to_string()),
    }
}

/// A tensor's name, refused past `MAX_NAME_BYTES` without being echoed.
struct Name(String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if name.len() > MAX_NAME_BYTES {
            return Err(de::Error::custom(format_args!("a tensor name of {} bytes, more than {MAX_NAME_BYTES}", name.len())));
        }
        Ok(Name(name))
    }
}

/// A parameter's value: a boolean, a number or a string, as the protocol defines them. An
/// array or object is refused where it starts, before any of it is built.
struct Scalar(Value);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a parameter value: a boolean, a number or a string")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(Value::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(Value::from(v)))
            }
            fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar(Value::String(v)))
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar(Value::Null))
            }
        }
        d.deserialize_any(V)
    }
}

/// The request's `parameters`: at most `MAX_PARAMETERS` of them, each a `Scalar`.
struct Parameters(Map<String, Value>);

impl<'de> Deserialize<'de> for Parameters {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Parameters;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an object of at most {MAX_PARAMETERS} parameters")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Parameters, A::Error> {
                let mut parameters = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if parameters.len() == MAX_PARAMETERS && !parameters.contains_key(&key) {
                        return Err(de::Error::custom(format_args!("more than {MAX_PARAMETERS} parameters")));
                    }
                    let Scalar(value) = map.next_value()?;
                    parameters.insert(key, value);
                }
                Ok(Parameters(parameters))
            }
        }
        d.deserialize_map(V)
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
        return Err(ProtocolError {
            message: format!("Inference-Header-Content-Length is {json_len} but the request body has only {} bytes", body.len()),
            kind: Refusal::Syntax,
        });
    }
    let (json, binary) = body.split_at(json_len);
    let quoted;
    let wire: WireRequest<'_> = match serde_json::from_slice(json) {
        Ok(wire) => wire,
        Err(e) => {
            let kind = if e.is_syntax() || e.is_eof() { Refusal::Syntax } else { Refusal::Invalid };
            // serde's message quotes what it found, a string of any length among them.
            let malformed = || ProtocolError { message: format!("malformed inference request: {}", shortened(&e, 256)), kind };
            // tritonclient (rapidjson) and Python's json write non-finite floats as bare
            // `NaN` / `Infinity` / `-Infinity`, which Triton accepts. Retry with them quoted,
            // a form the FP element parsers take; only failing requests pay for this.
            quoted = quote_non_finite(json).ok_or_else(malformed)?;
            serde_json::from_slice(&quoted).map_err(|_| malformed())?
        }
    };

    let (wire_inputs, wire_outputs) = (wire.inputs.0, wire.outputs.map(|o| o.0).unwrap_or_default());
    if wire_inputs.len() > limits.max_inputs {
        return Err(perr(format!("the request has {} inputs, more than the limit of {}", wire_inputs.len(), limits.max_inputs)));
    }
    if wire_outputs.len() > limits.max_inputs {
        return Err(perr(format!("the request asks for {} outputs, more than the limit of {}", wire_outputs.len(), limits.max_inputs)));
    }

    let mut parameters = wire.parameters.map(|p| p.0).unwrap_or_default();
    let binary_data_output = match parameters.remove("binary_data_output") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(perr(format!("request parameter 'binary_data_output' must be a boolean, got {}", shown(&other))));
        }
    };

    let mut inputs = Vec::with_capacity(wire_inputs.len());
    let mut offset = 0usize; // into `binary`
    let mut budget = DecodedBudget::for_request(body.len());
    for (index, input) in wire_inputs.into_iter().enumerate() {
        let name = input.name.0;
        if inputs[..index].iter().any(|i: &InferInput| i.name == name) {
            return Err(perr(format!("input '{name}' appears more than once")));
        }
        let datatype = DataType::parse(&input.datatype)
            .ok_or_else(|| perr(format!("input '{name}': unsupported datatype '{}'", describe(&input.datatype))))?;
        let (shape, count) = check_shape(&name, &input.shape.0, limits)?;
        budget.spend(&name, datatype, count)?;

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

    let mut outputs: Vec<RequestedOutput> = Vec::with_capacity(wire_outputs.len());
    for output in wire_outputs {
        let name = output.name.0;
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
                Some(Scalar(Value::Bool(b))) => binary_data = b,
                Some(Scalar(other)) => {
                    return Err(perr(format!("output '{name}': binary_data must be a boolean, got {}", shown(&other))));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::protocol::test_support::{err, one, parse};

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
        assert_eq!(e.message, "input 'x': dimension 11 is larger than the limit of 10");
        let e = parse_infer_request(one("FP32", "[4, 4]", "[]").as_bytes(), None, &limits).unwrap_err();
        assert_eq!(e.message, "input 'x': shape [4, 4] has 16 elements, more than the limit of 10");
        let two = r#"{"inputs":[{"name":"a","datatype":"BOOL","shape":[1],"data":[true]},{"name":"b","datatype":"BOOL","shape":[1],"data":[true]}]}"#;
        let e = parse_infer_request(two.as_bytes(), None, &limits).unwrap_err();
        assert_eq!(e.message, "the request has 2 inputs, more than the limit of 1");
        // A declared shape far larger than the data fails without allocating for the shape.
        assert_eq!(
            err(&one("FP32", "[16000000]", "[1]")),
            "input 'x': expected 16000000 elements for shape [16000000], got 1"
        );
        // One past what the request's tensors may take decoded is refused before its data is read.
        assert_eq!(parse(&one("FP64", "[60000000]", "[1]")).unwrap_err().kind, Refusal::TooLarge);
    }

    #[test]
    fn arrays_past_their_bounds_are_refused_as_they_are_read() {
        // Millions of tiny entries fit a large body: refused at the first past the bound, not
        // built up and compared pairwise (which took hours for the outputs of a 64 MiB body).
        let started = std::time::Instant::now();
        let outputs = (0..1_000_000).map(|i| format!(r#"{{"name":"o{i}"}}"#)).collect::<Vec<_>>().join(",");
        let e = parse(&format!(r#"{{"inputs":[],"outputs":[{outputs}]}}"#)).unwrap_err();
        assert!(e.message.contains("more than 256 outputs") && e.kind == Refusal::Invalid, "{}", e.message);
        let shape = vec!["1"; 10_000_000].join(",");
        let e = parse(&one("FP32", &format!("[{shape}]"), "[0]")).unwrap_err();
        assert!(e.message.contains("more than 32 dimensions in a shape") && e.kind == Refusal::Invalid, "{}", e.message);
        let input = r#"{"name":"x","datatype":"BOOL","shape":[1],"data":[true]}"#;
        let e = parse(&format!(r#"{{"inputs":[{}]}}"#, vec![input; 257].join(","))).unwrap_err();
        assert!(e.message.contains("more than 256 inputs"), "{}", e.message);
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());

        // Up to the bounds, as gRPC takes them.
        let outputs = (0..MAX_TENSORS).map(|i| format!(r#"{{"name":"o{i}"}}"#)).collect::<Vec<_>>().join(",");
        assert_eq!(parse(&format!(r#"{{"inputs":[],"outputs":[{outputs}]}}"#)).unwrap().outputs.len(), MAX_TENSORS);
        let shape = vec!["1"; MAX_DIMS].join(",");
        assert_eq!(parse(&one("FP32", &format!("[{shape}]"), "[0]")).unwrap().inputs[0].shape.len(), MAX_DIMS);
        let limits = Limits { max_elements_per_tensor: 10, max_inputs: 1 };
        let e = parse_infer_request(br#"{"inputs":[],"outputs":[{"name":"a"},{"name":"b"}]}"#, None, &limits).unwrap_err();
        assert_eq!(e.message, "the request asks for 2 outputs, more than the limit of 1");
    }

    #[test]
    fn parameters_are_scalars_and_bounded_and_never_built_as_trees() {
        // A 48 MiB body of nested empty arrays would be a tree of some 16 million values (half
        // a gigabyte): refused where the first array starts.
        let started = std::time::Instant::now();
        let nested = format!(r#"{{"parameters":{{"p":[{}]}},"inputs":[]}}"#, vec!["[]"; 16_000_000].join(","));
        let e = parse(&nested).unwrap_err();
        assert_eq!(e.kind, Refusal::Invalid);
        assert!(e.message.contains("expected a parameter value: a boolean, a number or a string"), "{}", e.message);
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
        for value in [r#"{"k":[1,2]}"#, "[1]"] {
            let e = parse(&format!(r#"{{"parameters":{{"p":{value}}},"inputs":[]}}"#)).unwrap_err();
            assert_eq!(e.kind, Refusal::Invalid, "{value}");
        }
        let e = parse(r#"{"inputs":[],"outputs":[{"name":"a","parameters":{"binary_data":[[[]]]}}]}"#).unwrap_err();
        assert!(e.message.contains("a boolean, a number or a string"), "{}", e.message);

        let many = (0..=MAX_PARAMETERS).map(|i| format!(r#""p{i}":1"#)).collect::<Vec<_>>().join(",");
        let e = parse(&format!(r#"{{"parameters":{{{many}}},"inputs":[]}}"#)).unwrap_err();
        assert!(e.message.contains("more than 256 parameters"), "{}", e.message);
        // Up to the bound, and every scalar the protocol has.
        let fine = (0..MAX_PARAMETERS - 4).map(|i| format!(r#""p{i}":1"#)).collect::<Vec<_>>().join(",");
        let r = parse(&format!(r#"{{"parameters":{{{fine},"b":true,"f":0.5,"s":"x","n":-3}},"inputs":[]}}"#)).unwrap();
        assert_eq!(r.parameters.len(), MAX_PARAMETERS);
        assert_eq!((&r.parameters["b"], &r.parameters["f"], &r.parameters["s"], &r.parameters["n"]), (&Value::Bool(true), &Value::from(0.5), &Value::from("x"), &Value::from(-3)));
    }

    #[test]
    fn what_a_caller_sent_is_echoed_in_errors_shortened() {
        let long = r"\u0001".repeat(1_000_000);
        let bodies = [
            format!(r#"{{"inputs":[{{"name":"x","datatype":"{long}","shape":[1],"data":[1]}}]}}"#),
            format!(r#"{{"inputs":[{{"name":"x","datatype":"FP32","shape":["{long}"],"data":[1]}}]}}"#),
            format!(r#"{{"parameters":{{"binary_data_output":"{long}"}},"inputs":[]}}"#),
            format!(r#"{{"inputs":[],"outputs":[{{"name":"o","parameters":{{"binary_data":"{long}"}}}}]}}"#),
            // serde's own message quotes the string it found where it wanted an array.
            format!(r#"{{"inputs":"{long}"}}"#),
        ];
        for body in bodies {
            let e = parse(&body).unwrap_err();
            assert!(e.message.len() < 300, "{} bytes: {}", e.message.len(), &e.message[..300.min(e.message.len())]);
        }
    }

    #[test]
    fn tensor_names_past_their_bound_are_refused_without_being_echoed() {
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        for body in [
            format!(r#"{{"inputs":[{{"name":"{long}","datatype":"BOOL","shape":[1],"data":[true]}}]}}"#),
            format!(r#"{{"inputs":[],"outputs":[{{"name":"{long}"}}]}}"#),
        ] {
            let e = parse(&body).unwrap_err();
            assert!(e.message.contains("a tensor name of 1025 bytes, more than 1024"), "{}", e.message);
            assert!(!e.message.contains(&long));
        }
        let longest = "n".repeat(MAX_NAME_BYTES);
        assert!(parse(&format!(r#"{{"inputs":[],"outputs":[{{"name":"{longest}"}}]}}"#)).is_ok());
    }

    #[test]
    fn tensors_that_would_decode_to_many_times_the_body_are_refused_before_decoding() {
        // Five million empty strings: 3 bytes each in JSON, a 32-byte handle each decoded
        // (160 MB from 15).
        let strings = vec![r#""""#; 5_000_000].join(",");
        let e = parse(&one("BYTES", "[5000000]", &format!("[{strings}]"))).unwrap_err();
        assert_eq!(e.kind, Refusal::TooLarge);
        assert!(e.message.contains("input 'x': 5000000 BYTES elements would take more memory decoded"), "{}", e.message);
        // Binary: 4-byte lengths, the same handles.
        let header = r#"{"inputs":[{"name":"x","datatype":"BYTES","shape":[5000000],"parameters":{"binary_data_size":20000000}}]}"#;
        let mut body = header.as_bytes().to_vec();
        body.resize(header.len() + 20_000_000, 0);
        let e = parse_infer_request(&body, Some(header.len()), &Limits::default()).unwrap_err();
        assert_eq!(e.kind, Refusal::TooLarge, "{}", e.message);
        // The budget is the request's, over all its inputs.
        let mut budget = DecodedBudget::for_request(0);
        assert!(budget.spend("a", DataType::Fp32, 8 << 20).is_ok());
        assert!(budget.spend("b", DataType::Fp64, 4 << 20).is_ok());
        assert!(budget.spend("c", DataType::Bool, 1).is_err());

        // A million short strings in a 7 MB body, and numbers at 4x their text, pass.
        let words = vec![r#""token""#; 1_000_000].join(",");
        assert!(parse(&one("BYTES", "[1000000]", &format!("[{words}]"))).is_ok());
        let zeros = vec!["0"; 8_000_000].join(",");
        assert!(parse(&one("INT64", "[8000000]", &format!("[{zeros}]"))).is_ok());
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
        assert!(err(r#"{"inputs":{}}"#).contains("invalid type: map, expected an array of at most 256 inputs"));
        assert!(err(r#"{"id":5,"inputs":[]}"#).contains("invalid type: integer `5`, expected a string"));
        let bad_utf8 = b"{\"inputs\":[{\"name\":\"\xff\",\"datatype\":\"FP32\",\"shape\":[1],\"data\":[1]}]}";
        let e = parse_infer_request(bad_utf8, None, &Limits::default()).unwrap_err();
        assert!(e.message.starts_with("malformed inference request: invalid unicode code point"), "{e}");
        let bad_utf8_data =
            b"{\"inputs\":[{\"name\":\"x\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"\xc3\x28\"]}]}";
        let e = parse_infer_request(bad_utf8_data, None, &Limits::default()).unwrap_err();
        assert!(e.message.starts_with("malformed inference request: "), "{e}");
    }
}
