//! Writes synthetic ONNX models for tests, streaming: a model of any size can be produced
//! without holding it in memory. Protobuf wire format by hand, std only.
#![allow(dead_code)]

use std::io::{self, Write};

const VARINT: u32 = 0;
const LEN: u32 = 2;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from(field << 3 | wire));
}

fn put_uint(out: &mut Vec<u8>, field: u32, value: u64) {
    put_tag(out, field, VARINT);
    put_varint(out, value);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A varint field, for hand-written messages.
pub fn field_varint(field: u32, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_uint(&mut out, field, value);
    out
}

/// A length-delimited field (string, bytes or nested message), for hand-written messages.
pub fn field_bytes(field: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_bytes(&mut out, field, bytes);
    out
}

/// `ValueInfoProto` for a FP32 tensor of shape `[N, 4]` (`N` symbolic).
fn tensor_value_info(name: &str) -> Vec<u8> {
    let mut batch = Vec::new();
    put_bytes(&mut batch, 2, b"N"); // Dimension.dim_param
    let mut four = Vec::new();
    put_uint(&mut four, 1, 4); // Dimension.dim_value
    let mut shape = Vec::new();
    put_bytes(&mut shape, 1, &batch); // TensorShapeProto.dim
    put_bytes(&mut shape, 1, &four);
    let mut tensor = Vec::new();
    put_uint(&mut tensor, 1, 1); // elem_type FLOAT
    put_bytes(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    put_bytes(&mut ty, 1, &tensor); // TypeProto.tensor_type
    let mut info = Vec::new();
    put_bytes(&mut info, 1, name.as_bytes());
    put_bytes(&mut info, 2, &ty);
    info
}

/// Writes a valid ONNX model (IR 8, opset 17) with one `Identity` node, input `x` → output `y`,
/// both FP32 `[N, 4]`, plus an unused UINT8 initializer `payload` of `payload_len` raw bytes.
///
/// The payload is produced piecewise: `chunk_fill(offset, buf)` fills `buf` with the payload
/// bytes starting at `offset`, so memory use stays constant whatever `payload_len` is.
pub fn write_identity_model(
    out: &mut impl Write,
    payload_len: u64,
    mut chunk_fill: impl FnMut(u64, &mut [u8]),
) -> io::Result<()> {
    let mut node = Vec::new();
    put_bytes(&mut node, 1, b"x"); // NodeProto.input
    put_bytes(&mut node, 2, b"y"); // NodeProto.output
    put_bytes(&mut node, 3, b"identity"); // NodeProto.name
    put_bytes(&mut node, 4, b"Identity"); // NodeProto.op_type

    // TensorProto up to (and including) the raw_data length prefix.
    let mut tensor_head = Vec::new();
    put_uint(&mut tensor_head, 1, payload_len); // dims
    put_uint(&mut tensor_head, 2, 2); // data_type UINT8
    put_bytes(&mut tensor_head, 8, b"payload"); // name
    put_tag(&mut tensor_head, 9, LEN); // raw_data
    put_varint(&mut tensor_head, payload_len);
    let tensor_len = tensor_head.len() as u64 + payload_len;

    let mut graph_head = Vec::new();
    put_bytes(&mut graph_head, 1, &node); // GraphProto.node
    put_bytes(&mut graph_head, 2, b"identity"); // GraphProto.name
    put_tag(&mut graph_head, 5, LEN); // GraphProto.initializer
    put_varint(&mut graph_head, tensor_len);
    graph_head.extend_from_slice(&tensor_head);

    let mut graph_tail = Vec::new();
    put_bytes(&mut graph_tail, 11, &tensor_value_info("x")); // GraphProto.input
    put_bytes(&mut graph_tail, 12, &tensor_value_info("y")); // GraphProto.output
    let graph_len = graph_head.len() as u64 + payload_len + graph_tail.len() as u64;

    let mut model_head = Vec::new();
    put_uint(&mut model_head, 1, 8); // ir_version
    put_bytes(&mut model_head, 2, b"tessera-tests"); // producer_name
    put_tag(&mut model_head, 7, LEN); // graph
    put_varint(&mut model_head, graph_len);

    let mut opset = Vec::new();
    put_bytes(&mut opset, 1, b""); // domain: the default one
    put_uint(&mut opset, 2, 17); // version
    let mut model_tail = Vec::new();
    put_bytes(&mut model_tail, 8, &opset); // opset_import

    out.write_all(&model_head)?;
    out.write_all(&graph_head)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    while offset < payload_len {
        let n = (payload_len - offset).min(buf.len() as u64) as usize;
        chunk_fill(offset, &mut buf[..n]);
        out.write_all(&buf[..n])?;
        offset += n as u64;
    }
    out.write_all(&graph_tail)?;
    out.write_all(&model_tail)?;
    Ok(())
}
