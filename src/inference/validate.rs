//! Inputs checked against the model's signature before any work is queued: names, datatypes,
//! ranks and fixed dimensions. (Element counts against shapes are the protocol parser's.)
//! Every mismatch is a 400 naming the tensor; nothing malformed reaches ONNX Runtime.

use super::error::InferenceError;
use super::models::LoadedModel;
use super::protocol::{InferRequest, TensorData};

pub struct Prepared {
    /// In the signature's input order.
    pub inputs: Vec<(Vec<usize>, TensorData)>,
    /// Signature output indices to return, each with whether it goes out as binary data.
    pub outputs: Vec<(usize, bool)>,
    /// All inputs agree on their first dimension, so the request may share a batch.
    pub batchable: bool,
}

fn shape_text<T: std::fmt::Display>(shape: &[T]) -> String {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    format!("[{}]", dims.join(", "))
}

pub fn prepare(model: &LoadedModel, request: InferRequest) -> Result<Prepared, InferenceError> {
    let mut slots: Vec<Option<(Vec<usize>, TensorData)>> = model.inputs.iter().map(|_| None).collect();
    for input in request.inputs {
        let Some(index) = model.inputs.iter().position(|spec| spec.name == input.name) else {
            let known: Vec<&str> = model.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(InferenceError::UnknownInput { name: input.name, known: known.join(", ") });
        };
        let spec = &model.inputs[index];
        if input.datatype != spec.datatype {
            return Err(InferenceError::InputDatatype { name: input.name, got: input.datatype, want: spec.datatype });
        }
        let fits = input.shape.len() == spec.shape.len()
            && input.shape.iter().zip(&spec.shape).all(|(got, want)| *want < 0 || *got as i64 == *want);
        if !fits {
            return Err(InferenceError::InputShape { got: shape_text(&input.shape), want: shape_text(&spec.shape), name: input.name });
        }
        if model.finite_inputs
            && let TensorData::Fp32(values) = &input.data
            && let Some(at) = values.iter().position(|v| !v.is_finite())
        {
            return Err(InferenceError::NotFinite { at, value: values[at], name: input.name });
        }
        // ONNX Runtime takes strings: one element that is not would fail the whole run, and
        // with it every other caller's rows batched into it.
        if let TensorData::Bytes(elements) = &input.data
            && let Some(at) = elements.iter().position(|element| std::str::from_utf8(element).is_err())
        {
            return Err(InferenceError::NotUtf8 { at, name: input.name });
        }
        slots[index] = Some((input.shape, input.data));
    }
    let mut inputs = Vec::with_capacity(slots.len());
    for (slot, spec) in slots.into_iter().zip(&model.inputs) {
        inputs.push(slot.ok_or_else(|| InferenceError::MissingInput(spec.name.clone()))?);
    }
    let outputs = if request.outputs.is_empty() {
        (0..model.outputs.len()).map(|i| (i, request.binary_data_output)).collect()
    } else {
        let mut chosen = Vec::with_capacity(request.outputs.len());
        for wanted in &request.outputs {
            let index = model.outputs.iter().position(|o| o.name == wanted.name).ok_or_else(|| {
                let known: Vec<&str> = model.outputs.iter().map(|s| s.name.as_str()).collect();
                InferenceError::UnknownOutput { name: wanted.name.clone(), known: known.join(", ") }
            })?;
            if wanted.class_count > 0 {
                return Err(InferenceError::ClassificationUnsupported(wanted.name.clone()));
            }
            chosen.push((index, wanted.binary_data));
        }
        chosen
    };
    let first = inputs.first().and_then(|(s, _)| s.first().copied());
    let batchable = model.batchable && inputs.iter().all(|(s, _)| s.first().copied() == first);
    Ok(Prepared { inputs, outputs, batchable })
}
