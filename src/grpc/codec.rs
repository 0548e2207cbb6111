//! The messages' codec: prost's, after a look at the wire. prost allocates each entry of a
//! repeated field as it decodes it, and an empty `inputs` entry takes 2 bytes on the wire but
//! some 300 in memory; so before a request is decoded, its repeated fields are counted on the
//! wire and a message with more entries than any request needs is refused, and so is one
//! whose typed contents would decode to more than the inference path lets any request's
//! tensors take (`DecodedBudget`). What is left to decode is within a small multiple of the
//! message's size, which `max_decoding_message_size` bounds. A message that is not valid
//! protobuf for the call's message is the caller's error, refused as `invalid_request`
//! (prost's own codec answers `INTERNAL`, as if the server had failed).

use std::any::TypeId;
use std::marker::PhantomData;

use bytes::Buf;
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

use super::proto::ModelInferRequest;
use super::service::status;
use crate::error::{ApiError, Code};
use crate::inference::protocol::{DecodedBudget, MAX_DIMS};

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

impl<U: Message + Default + 'static> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // The whole message is buffered, in one piece, before it is decoded: `chunk` is all of
        // it. Only an inference request is counted; any message is walked for what proto3
        // cannot hold.
        let checked = if TypeId::of::<U>() == TypeId::of::<ModelInferRequest>() {
            check(buf.chunk())
        } else {
            walk(buf.chunk(), |_, _| Ok(()))
        };
        checked.map_err(|refusal| match refusal {
            Refusal::Invalid(detail) => status(ApiError::new(Code::InvalidRequest, detail)),
            Refusal::TooLarge(detail) => status(ApiError::new(Code::PayloadTooLarge, detail)),
        })?;
        U::decode(buf)
            .map(Some)
            .map_err(|e| status(ApiError::new(Code::InvalidRequest, format!("the message is not valid protobuf for this call: {e}"))))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Counts, on the wire, what decoding a `ModelInferRequest` would allocate: the entries of
/// its repeated fields that hold messages, strings or maps, and the elements of its inputs'
/// typed contents (a one-byte varint decodes to as many as 8 bytes, an empty
/// `bytes_contents` entry to a handle of 32), which `DecodedBudget` bounds as it bounds the
/// tensors any request decodes to.
fn check(message: &[u8]) -> Result<(), Refusal> {
    // ModelInferRequest: 4 parameters, 5 inputs, 6 outputs, 7 raw_input_contents.
    // InferInputTensor: 3 shape, 4 parameters, 5 contents; InferRequestedOutputTensor: 2
    // parameters.
    let mut counts = [0usize; 8];
    let mut decoded = 0usize;
    walk(message, |field, value| {
        let Field::Delimited(value) = value else { return Ok(()) };
        if let Some(count) = counts.get_mut(field as usize) {
            *count += 1;
        }
        match field {
            5 => {
                let (mut dimensions, mut parameters) = (0usize, 0usize);
                walk(value, |field, value| {
                    match (field, value) {
                        // The shape, packed or not.
                        (3, Field::Delimited(packed)) => dimensions += varints(packed),
                        (3, Field::Scalar) => dimensions += 1,
                        (4, _) => parameters += 1,
                        (5, Field::Delimited(contents)) => decoded = decoded.saturating_add(typed_contents(contents)?),
                        _ => {}
                    }
                    Ok(())
                })?;
                if dimensions > MAX_DIMS {
                    return Err(Refusal::Invalid(format!("a tensor's shape has {dimensions} dimensions; at most {MAX_DIMS}")));
                }
                if parameters > MAX_ENTRIES {
                    return Err(Refusal::Invalid(format!("a tensor has {parameters} parameters; at most {MAX_ENTRIES}")));
                }
                Ok(())
            }
            6 => {
                let mut parameters = 0usize;
                walk(value, |field, _| {
                    parameters += usize::from(field == 2);
                    Ok(())
                })?;
                if parameters > MAX_ENTRIES {
                    return Err(Refusal::Invalid(format!("a tensor has {parameters} parameters; at most {MAX_ENTRIES}")));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    })?;
    for (field, name) in [(4, "parameters"), (5, "inputs"), (6, "outputs"), (7, "raw_input_contents")] {
        if counts[field] > MAX_ENTRIES {
            return Err(Refusal::Invalid(format!("{name} has {} entries; at most {MAX_ENTRIES}", counts[field])));
        }
    }
    if !DecodedBudget::for_request(message.len()).take(decoded) {
        return Err(Refusal::TooLarge(format!(
            "the inputs' typed contents would take {decoded} bytes decoded, more than a message of {} bytes may; \
             send fewer rows per call, or raw_input_contents",
            message.len()
        )));
    }
    Ok(())
}

/// Why `check` refuses a message.
#[derive(Debug, PartialEq)]
enum Refusal {
    Invalid(String),
    TooLarge(String),
}

/// What an `InferTensorContents` decodes to, in bytes: per element, bool 1, int 4, int64 8,
/// uint 4, uint64 8, fp32 4, fp64 8, and a handle per `bytes_contents` entry.
fn typed_contents(contents: &[u8]) -> Result<usize, Refusal> {
    const WIDTH: [usize; 9] = [0, 1, 4, 8, 4, 8, 4, 8, std::mem::size_of::<bytes::Bytes>()];
    let mut total = 0usize;
    walk(contents, |field, value| {
        let Some(&width) = WIDTH.get(field as usize).filter(|w| **w > 0) else { return Ok(()) };
        let elements = match (field, value) {
            (1..=5, Field::Delimited(packed)) => varints(packed),
            (6, Field::Delimited(packed)) => packed.len() / 4,
            (7, Field::Delimited(packed)) => packed.len() / 8,
            _ => 1,
        };
        total = total.saturating_add(elements.saturating_mul(width));
        Ok(())
    })?;
    Ok(total)
}

/// How many values a packed run of varints holds: each ends at its one byte below 0x80.
fn varints(packed: &[u8]) -> usize {
    packed.iter().filter(|b| **b < 0x80).count()
}

/// One field's value as `walk` finds it.
enum Field<'a> {
    Scalar,
    Delimited(&'a [u8]),
}

/// Calls `each(field, value)` for every field of one message, in order. What proto3 cannot
/// hold is refused here rather than left for prost: prost skips an unknown group whole, so a
/// group would hide from these counts whatever it is followed by.
fn walk<'a>(mut message: &'a [u8], mut each: impl FnMut(u32, Field<'a>) -> Result<(), Refusal>) -> Result<(), Refusal> {
    let malformed = || Refusal::Invalid("the message is not valid protobuf for this call".to_owned());
    while !message.is_empty() {
        let key = prost::encoding::decode_varint(&mut message).map_err(|_| malformed())?;
        let field = u32::try_from(key >> 3).ok().filter(|f| *f > 0).ok_or_else(malformed)?;
        match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut message).map_err(|_| malformed())?;
                each(field, Field::Scalar)?;
            }
            wire_type @ (1 | 5) => {
                let width = if wire_type == 1 { 8 } else { 4 };
                message = message.get(width..).ok_or_else(malformed)?;
                each(field, Field::Scalar)?;
            }
            2 => {
                let len = prost::encoding::decode_varint(&mut message).map_err(|_| malformed())?;
                let len = usize::try_from(len).ok().filter(|l| *l <= message.len()).ok_or_else(malformed)?;
                let (value, rest) = message.split_at(len);
                each(field, Field::Delimited(value))?;
                message = rest;
            }
            // Groups (3, 4) and wire types that do not exist.
            _ => return Err(malformed()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    use super::super::proto::{InferParameter, InferTensorContents, ModelInferRequest, ModelMetadataRequest};
    use super::*;

    fn refusal(checked: Result<(), Refusal>) -> String {
        match checked {
            Err(Refusal::Invalid(detail)) => detail,
            other => panic!("expected an invalid request, got {other:?}"),
        }
    }

    fn typed(contents: InferTensorContents) -> ModelInferRequest {
        ModelInferRequest { inputs: vec![InferInputTensor { name: "x".into(), contents: Some(contents), ..Default::default() }], ..Default::default() }
    }

    #[test]
    fn typed_contents_that_would_decode_to_many_times_their_size_are_refused_before_decoding() {
        // Ten million INT64 zeros: one byte each on the wire, eight decoded (80 MB from 10).
        let zeros = typed(InferTensorContents { int64_contents: vec![0; 10_000_000], ..Default::default() }).encode_to_vec();
        assert!(zeros.len() < 10_100_000);
        assert!(matches!(check(&zeros), Err(Refusal::TooLarge(detail)) if detail.contains("80000000 bytes decoded")));
        // Four million empty strings: two bytes each on the wire, a 32-byte handle decoded.
        let strings = typed(InferTensorContents { bytes_contents: vec![bytes::Bytes::new(); 4_000_000], ..Default::default() });
        assert!(matches!(check(&strings.encode_to_vec()), Err(Refusal::TooLarge(_))));
        // Values sent one per field, unpacked, are counted alike.
        assert_eq!(typed_contents(&[3 << 3, 0, 3 << 3, 0, 3 << 3, 0x80, 0x01]), Ok(24));

        // What real requests send passes: a language model's three INT64 tensors of 64 x 512
        // tokens whose masks are all ones, and 64 MiB of FP32, which decodes to its own size.
        let tokens = (0..3).map(|_| InferInputTensor {
            contents: Some(InferTensorContents { int64_contents: vec![1; 64 * 512], ..Default::default() }),
            ..Default::default()
        });
        assert_eq!(check(&ModelInferRequest { inputs: tokens.collect(), ..Default::default() }.encode_to_vec()), Ok(()));
        let floats = typed(InferTensorContents { fp32_contents: vec![0.5; 16 << 20], ..Default::default() });
        assert_eq!(check(&floats.encode_to_vec()), Ok(()));
        assert_eq!(
            typed_contents(&InferTensorContents { fp32_contents: vec![0.5; 3], bytes_contents: vec![bytes::Bytes::new()], ..Default::default() }.encode_to_vec()),
            Ok(12 + 32)
        );
    }

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
        assert!(refusal(check(&many_inputs.encode_to_vec())).contains("inputs has 257 entries"));
        let mut many_outputs = fine.clone();
        many_outputs.outputs.push(InferRequestedOutputTensor::default());
        assert!(refusal(check(&many_outputs.encode_to_vec())).contains("outputs has 257"));
        let mut many_raw = fine.clone();
        many_raw.raw_input_contents.push(bytes::Bytes::new());
        assert!(refusal(check(&many_raw.encode_to_vec())).contains("raw_input_contents has 257"));
        let parameters = (0..=MAX_ENTRIES).map(|i| (format!("p{i}"), InferParameter::default())).collect();
        let mut nested = fine.clone();
        nested.inputs[3].parameters = parameters;
        assert!(refusal(check(&nested.encode_to_vec())).contains("257 parameters"));

        // Garbage is refused, not a panic.
        for garbage in [&b"\xff\xff\xff"[..], b"\x2a\xff\xff\xff\xff\x0f", b"\x2a\x05ab", b"\x0f", b"\x00\x00"] {
            assert!(check(garbage).is_err(), "{garbage:?}");
            assert!(ModelInferRequest::decode(garbage).is_err());
        }
    }

    #[test]
    fn groups_which_prost_skips_whole_cannot_hide_what_follows_them() {
        // An unknown group (field 15) ahead of millions of empty inputs: prost skips the group
        // and decodes the inputs; it is refused before prost sees it.
        let mut message = vec![0x7b, 0x7c];
        for _ in 0..1_000_000 {
            message.extend_from_slice(&[0x2a, 0x00]);
        }
        assert_eq!(ModelInferRequest::decode(&message[..]).unwrap().inputs.len(), 1_000_000);
        assert!(matches!(check(&message), Err(Refusal::Invalid(_))));
        // Inside an input, ahead of its contents, and inside the contents.
        let contents = InferTensorContents { bytes_contents: vec![bytes::Bytes::new(); 4_000_000], ..Default::default() }.encode_to_vec();
        let mut hidden = vec![0x7b, 0x7c];
        hidden.extend_from_slice(&contents);
        let mut input = Vec::new();
        prost::encoding::bytes::encode(5, &hidden, &mut input);
        let mut request = Vec::new();
        prost::encoding::bytes::encode(5, &input, &mut request);
        assert!(ModelInferRequest::decode(&request[..]).is_ok());
        assert!(matches!(check(&request), Err(Refusal::Invalid(_))));
    }

    #[test]
    fn a_shape_of_more_dimensions_than_any_tensor_has_is_refused_before_decoding() {
        // A packed shape of one-byte varints decodes to 8 bytes each.
        let shape = |dims: usize| {
            ModelInferRequest { inputs: vec![InferInputTensor { shape: vec![1; dims], ..Default::default() }], ..Default::default() }.encode_to_vec()
        };
        assert_eq!(check(&shape(MAX_DIMS)), Ok(()));
        assert!(refusal(check(&shape(MAX_DIMS + 1))).contains("33 dimensions"));
        assert!(refusal(check(&shape(10_000_000))).contains("10000000 dimensions"));
        // Unpacked, one field per dimension, alike.
        let mut unpacked = Vec::new();
        for _ in 0..=MAX_DIMS {
            unpacked.extend_from_slice(&[3 << 3, 1]);
        }
        let mut request = Vec::new();
        prost::encoding::bytes::encode(5, &unpacked, &mut request);
        assert!(refusal(check(&request)).contains("33 dimensions"));
    }
}
