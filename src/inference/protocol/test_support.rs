//! Helpers shared by the codec's unit tests.

use bytes::Bytes;
use half::f16;

use super::{InferOutput, InferRequest, Limits, ProtocolError, TensorData, parse_infer_request};

pub(super) fn parse(json: &str) -> Result<InferRequest, ProtocolError> {
    parse_infer_request(json.as_bytes(), None, &Limits::default())
}

pub(super) fn err(json: &str) -> String {
    match parse(json) {
        Ok(r) => panic!("expected an error for {json}, parsed {r:?}"),
        Err(e) => e.message,
    }
}

pub(super) fn one(datatype: &str, shape: &str, data: &str) -> String {
    format!(r#"{{"inputs":[{{"name":"x","datatype":"{datatype}","shape":{shape},"data":{data}}}]}}"#)
}

pub(super) fn canonical(data: &TensorData) -> Vec<u8> {
    let mut out = Vec::new();
    data.write_canonical(&mut out);
    out
}

pub(super) fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

/// One tensor of every datatype, with the awkward values of each.
pub(super) fn samples() -> Vec<InferOutput> {
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
            TensorData::Fp16(vec![h(0.5), h(-1.25), f16::MAX, f16::from_bits(1), h(-0.0), f16::MIN_POSITIVE, h(0.1)]),
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
