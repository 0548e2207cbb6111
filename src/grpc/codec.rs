//! The messages' codec: prost's, after a look at the wire. prost allocates each entry of a
//! repeated field as it decodes it, and an empty `inputs` entry takes 2 bytes on the wire but
//! some 300 in memory; so before a request is decoded, its repeated fields are counted on the
//! wire and a message with more entries than any request needs is refused. What is left to
//! decode is within a small multiple of the message's size, which `max_decoding_message_size`
//! bounds. A message that is not valid protobuf for the call's message is the caller's error,
//! refused as `invalid_request` (prost's own codec answers `INTERNAL`, as if the server had
//! failed).

use std::marker::PhantomData;

use bytes::Buf;
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

use super::service::status;
use crate::error::{ApiError, Code};

/// At most this many entries in any repeated field that holds messages, strings or maps
/// (inputs, outputs, raw contents, parameters): the most an inference request may name.
pub const MAX_ENTRIES: usize = crate::inference::protocol::MAX_TENSORS;

pub struct CheckedCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for CheckedCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for CheckedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(PhantomData)
    }
}

pub struct CheckedDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let refused = |detail: String| status(ApiError::new(Code::InvalidRequest, detail));
        // The whole message is buffered, in one piece, before it is decoded: `chunk` is all of it.
        check(buf.chunk()).map_err(refused)?;
        U::decode(buf).map(Some).map_err(|e| refused(format!("the message is not valid protobuf for this call: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Length-delimited fields of a request that are messages, strings or bytes, at any depth of
/// `ModelInferRequest`: (field number, and the fields of the message it holds, if any).
/// Request messages other than `ModelInferRequest` have only fields 1 and 2, so this counts
/// nothing in them.
fn check(message: &[u8]) -> Result<(), String> {
    // ModelInferRequest: 4 parameters, 5 inputs, 6 outputs, 7 raw_input_contents.
    // InferInputTensor: 4 parameters; InferRequestedOutputTensor: 2 parameters.
    let mut counts = [0usize; 8];
    walk(message, |field, value| {
        counts[field as usize] += 1;
        match field {
            5 => count_nested(value, 4),
            6 => count_nested(value, 2),
            _ => Ok(()),
        }
    })?;
    for (field, name) in [(4, "parameters"), (5, "inputs"), (6, "outputs"), (7, "raw_input_contents")] {
        if counts[field] > MAX_ENTRIES {
            return Err(format!("{name} has {} entries; at most {MAX_ENTRIES}", counts[field]));
        }
    }
    Ok(())
}

/// Counts the entries of field `parameters` in one nested tensor message.
fn count_nested(message: &[u8], parameters: u32) -> Result<(), String> {
    let mut count = 0usize;
    walk(message, |field, _| {
        if field == parameters {
            count += 1;
        }
        Ok(())
    })?;
    if count > MAX_ENTRIES {
        return Err(format!("a tensor has {count} parameters; at most {MAX_ENTRIES}"));
    }
    Ok(())
}

/// Calls `each(field, bytes)` for every length-delimited field of fields 1-7 of one message;
/// other wire types are skipped. A malformed message is left for prost to refuse.
fn walk(mut message: &[u8], mut each: impl FnMut(u32, &[u8]) -> Result<(), String>) -> Result<(), String> {
    while !message.is_empty() {
        let Ok(key) = prost::encoding::decode_varint(&mut message) else { return Ok(()) };
        let (field, wire_type) = ((key >> 3) as u32, key & 7);
        match wire_type {
            0 => {
                if prost::encoding::decode_varint(&mut message).is_err() {
                    return Ok(());
                }
            }
            1 | 5 => {
                let width = if wire_type == 1 { 8 } else { 4 };
                if message.len() < width {
                    return Ok(());
                }
                message = &message[width..];
            }
            2 => {
                let Ok(len) = prost::encoding::decode_varint(&mut message) else { return Ok(()) };
                let Some(len) = usize::try_from(len).ok().filter(|l| *l <= message.len()) else { return Ok(()) };
                let (value, rest) = message.split_at(len);
                if (1..8).contains(&field) {
                    each(field, value)?;
                }
                message = rest;
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    use super::super::proto::{InferParameter, ModelInferRequest, ModelMetadataRequest};
    use super::*;

    #[test]
    fn requests_within_the_limits_pass_and_others_are_counted_on_the_wire() {
        let fine = ModelInferRequest {
            inputs: vec![InferInputTensor { name: "x".into(), ..Default::default() }; MAX_ENTRIES],
            outputs: vec![InferRequestedOutputTensor::default(); MAX_ENTRIES],
            raw_input_contents: vec![bytes::Bytes::from_static(b"\0\0\0\0"); MAX_ENTRIES],
            ..Default::default()
        };
        assert_eq!(check(&fine.encode_to_vec()), Ok(()));
        assert_eq!(check(&ModelMetadataRequest { name: "m".into(), version: "1".into() }.encode_to_vec()), Ok(()));

        let mut many_inputs = fine.clone();
        many_inputs.inputs.push(InferInputTensor::default());
        assert!(check(&many_inputs.encode_to_vec()).unwrap_err().contains("inputs has 257 entries"));
        let mut many_outputs = fine.clone();
        many_outputs.outputs.push(InferRequestedOutputTensor::default());
        assert!(check(&many_outputs.encode_to_vec()).unwrap_err().contains("outputs has 257"));
        let mut many_raw = fine.clone();
        many_raw.raw_input_contents.push(bytes::Bytes::new());
        assert!(check(&many_raw.encode_to_vec()).unwrap_err().contains("raw_input_contents has 257"));
        let parameters = (0..=MAX_ENTRIES).map(|i| (format!("p{i}"), InferParameter::default())).collect();
        let mut nested = fine.clone();
        nested.inputs[3].parameters = parameters;
        assert!(check(&nested.encode_to_vec()).unwrap_err().contains("257 parameters"));

        // Garbage is prost's to refuse, not a panic here.
        for garbage in [&b"\xff\xff\xff"[..], b"\x2a\xff\xff\xff\xff\x0f", b"\x2a\x05ab", b"\x0f"] {
            let _ = check(garbage);
            assert!(ModelInferRequest::decode(garbage).is_err());
        }
    }
}
