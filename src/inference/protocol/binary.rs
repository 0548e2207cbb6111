//! The binary tensor data extension: tensors sent as raw bytes after the JSON.
//!
//! Fixed-size types are little-endian; BOOL is one byte per element, 0 or 1; BYTES elements
//! are each a 4-byte little-endian length followed by that many bytes.

use bytes::Bytes;
use half::f16;

use super::request::{ProtocolError, perr};
use super::tensor::{DataType, TensorData, get_le};

impl TensorData {
    /// The inverse of `write_canonical` for `count` elements; `None` if the bytes do not fit.
    pub fn from_canonical(datatype: DataType, bytes: &[u8], count: usize) -> Option<TensorData> {
        decode_binary(datatype, bytes, count, None).ok()
    }
}

/// Decodes one tensor of `count` elements sent as raw bytes (the binary extension's encoding,
/// which gRPC's `raw_input_contents` share); BYTES elements are slices of `bytes`, not copies.
pub fn decode_raw(name: &str, datatype: DataType, bytes: &Bytes, count: usize) -> Result<TensorData, ProtocolError> {
    decode_binary(datatype, bytes, count, Some((bytes, 0))).map_err(|e| perr(format!("input '{name}', raw contents: {e}")))
}

/// Decodes one binary tensor. `shared` is the whole body and the offset of `bytes` in it, when
/// BYTES elements may share it.
pub(super) fn decode_binary(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::protocol::test_support::{b, one};
    use crate::inference::protocol::{InferRequest, Limits, ProtocolError, parse_infer_request};

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
            parse_bin(&fp32, &[0; 8]).unwrap_err().message,
            "input 'x': binary_data_size is 8 bytes but 3 FP32 elements take 12"
        );
        let fp32 = one_binary("FP32", "[3]", 12);
        assert_eq!(
            parse_bin(&fp32, &[0; 8]).unwrap_err().message,
            "input 'x': binary_data_size is 12 but only 8 bytes of binary data remain"
        );
        assert_eq!(
            parse_bin(&fp32, &[0; 13]).unwrap_err().message,
            "the request has 13 bytes of binary data after the JSON, but its inputs declare 12"
        );
        assert_eq!(
            parse_infer_request(fp32.as_bytes(), None, &Limits::default()).unwrap_err().message,
            "input 'x': binary_data_size is 12 but the request has no binary data (no Inference-Header-Content-Length header)"
        );
        assert_eq!(
            parse_infer_request(b"{}", Some(3), &Limits::default()).unwrap_err().message,
            "Inference-Header-Content-Length is 3 but the request body has only 2 bytes"
        );
        let plain = one("UINT8", "[1]", "[1]");
        assert_eq!(
            parse_bin(&plain, b"xy").unwrap_err().message,
            "the request has 2 bytes of binary data after the JSON, but its inputs declare 0"
        );
        assert_eq!(
            parse_bin(&one_binary("BOOL", "[3]", 3), &[0, 1, 2]).unwrap_err().message,
            "input 'x': BOOL element 2 is the byte 2, expected 0 or 1"
        );
        let bytes_case =
            |shape: &str, bin: &[u8]| parse_bin(&one_binary("BYTES", shape, bin.len()), bin).unwrap_err().message;
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
}
