//! Encoding an inference response.
//!
//! [`encode_infer_response`] writes the JSON directly into one buffer, followed by the bytes
//! of the binary outputs in output order. When any output is binary the server must send
//! `Inference-Header-Content-Length: json_len` and `Content-Type: application/octet-stream`
//! (see [`EncodedResponse::content_type`]); otherwise the body is plain `application/json`.
//!
//! JSON has no NaN or infinities. Non-finite FP values in JSON outputs are written as the
//! strings `"NaN"`, `"Infinity"` and `"-Infinity"`: the document stays valid for strict
//! parsers, tritonclient's `as_numpy` turns them back into `nan` / `inf` / `-inf` (numpy
//! converts such strings under a float dtype), and
//! [`parse_infer_request`](super::parse_infer_request) accepts them. Bare `NaN` / `Infinity`
//! tokens would break strict parsers; `null` would lose infinities. Binary outputs carry every
//! value exactly.

use serde_json::ser::{CompactFormatter, Formatter};
use serde_json::{Map, Value};

use super::tensor::TensorData;

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
    use bytes::Bytes;
    use half::f16;

    use super::*;
    use crate::inference::protocol::test_support::{b, canonical, samples};
    use crate::inference::protocol::{DataType, InferRequest, Limits, parse_infer_request, parse_infer_request_bytes};

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
}
