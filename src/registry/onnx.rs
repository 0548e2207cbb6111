//! Streaming ONNX signature scanner.
//!
//! Model uploads arrive as chunks with arbitrary boundaries. [`SignatureScanner`] is a push
//! parser for the protobuf wire format: it checks that the bytes form a well-formed ONNX
//! `ModelProto` and extracts the graph's signature (inputs and outputs with name, element type
//! and shape) without ever holding the model in memory. It descends only into the messages the
//! signature needs; everything else — nodes, docs, metadata, functions and, above all,
//! initializer data that can run to gigabytes — is skipped by counting its length down across
//! chunks. Memory use is bounded by the limits below, independent of the model size.
//!
//! Messages read (field numbers from `onnx.proto`):
//! - `ModelProto`: 1 `ir_version`, 2 `producer_name`, 7 `graph`, 8 `opset_import`
//! - `OperatorSetIdProto`: 1 `domain`, 2 `version`
//! - `GraphProto`: 5 `initializer`, 11 `input`, 12 `output`
//! - `TensorProto` (initializer): 8 `name`, 13 `external_data`, 14 `data_location`
//!
//! External data is refused wherever a tensor can hold it, not only in the main graph's
//! initializers: a tensor that points at a file (`/etc/passwd`, `../../secret`) would have
//! ONNX Runtime read the server's files. So the scanner also descends into every place a
//! tensor can hide, reading only fields 13 and 14 of each tensor:
//! - `GraphProto`: 1 `node`, 15 `sparse_initializer`; nested graphs (in attributes and
//!   training info) also 5 `initializer`, their inputs and outputs being no part of the signature
//! - `NodeProto`: 5 `attribute`
//! - `AttributeProto`: 5 `t`, 6 `g`, 10 `tensors`, 11 `graphs`, 22 `sparse_tensor`, 23 `sparse_tensors`
//! - `SparseTensorProto`: 1 `values`, 2 `indices`
//! - `ModelProto`: 20 `training_info` (`TrainingInfoProto`: 1 `initialization`, 2 `algorithm`),
//!   25 `functions` (`FunctionProto`: 7 `node`, 11 `attribute_proto`)
//! - `ValueInfoProto`: 1 `name`, 2 `type`
//! - `TypeProto`: 1 `tensor_type` (other members of the `value` oneof are rejected at the end)
//! - `TypeProto.Tensor`: 1 `elem_type`, 2 `shape`
//! - `TensorShapeProto`: 1 `dim`
//! - `TensorShapeProto.Dimension`: 1 `dim_value`, 2 `dim_param`

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// Longest string (tensor name, producer, opset domain) the scanner buffers.
pub const MAX_NAME_LEN: usize = 4096;
/// Most graph inputs, and most graph outputs, a model may declare.
pub const MAX_VALUES: usize = 4096;
/// Highest tensor rank accepted for a graph input or output.
pub const MAX_RANK: usize = 64;
/// Budget for remembering initializer names (each costs its length plus
/// [`INITIALIZER_OVERHEAD`]): initializers can be listed before or after the inputs, so their
/// names are kept until the end of the model.
pub const MAX_INITIALIZER_NAME_BYTES: usize = 32 << 20;
const INITIALIZER_OVERHEAD: usize = 64;
/// Deepest nesting of messages accepted (subgraphs inside attributes inside nodes...).
pub const MAX_DEPTH: usize = 64;
/// Protobuf varints are at most 10 bytes long.
const MAX_VARINT_LEN: u8 = 10;

/// The signature of an ONNX model's main graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSignature {
    pub ir_version: i64,
    /// Version of the default (`ai.onnx`) operator set, if the model imports it.
    pub opset: Option<i64>,
    pub producer: Option<String>,
    /// Graph inputs, excluding inputs that are also initializers (weights).
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// One graph input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    /// Open Inference Protocol (v2) datatype name, e.g. `FP32`, `INT64`, `BYTES`.
    pub datatype: String,
    /// Dimensions; `-1` for a dynamic dimension (symbolic `dim_param` or unknown).
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnnxError {
    /// The bytes are not a well-formed ONNX model.
    #[error("not an ONNX model: {0}")]
    Malformed(String),
    /// The stream ended in the middle of the model.
    #[error("truncated ONNX model")]
    Truncated,
    /// Well-formed, but unusable as a served model (no outputs, duplicate names, ...).
    #[error("invalid ONNX model: {0}")]
    Invalid(String),
    /// A graph input or output Tessera cannot serve, e.g.
    /// `input 'x': unsupported element type 14 (COMPLEX64)`.
    #[error("{tensor}: {reason}")]
    Unsupported { tensor: String, reason: String },
    /// The model exceeds one of the scanner's size limits.
    #[error("ONNX model exceeds a limit: {0}")]
    Limit(String),
}

fn malformed(msg: impl Into<String>) -> OnnxError {
    OnnxError::Malformed(msg.into())
}

/// The messages the scanner descends into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    Model,
    OpsetId,
    Graph,
    Initializer,
    /// A graph nested in an attribute or training info: searched for external data only.
    SubGraph,
    Node,
    Attribute,
    /// A tensor other than a main-graph initializer: searched for external data only.
    Tensor,
    Sparse,
    Function,
    TrainingInfo,
    ValueInfo(Role),
    Type,
    TensorType,
    Shape,
    Dim,
}

impl Msg {
    fn proto_name(self) -> &'static str {
        match self {
            Msg::Model => "ModelProto",
            Msg::OpsetId => "OperatorSetIdProto",
            Msg::Graph => "GraphProto",
            Msg::Initializer | Msg::Tensor => "TensorProto",
            Msg::SubGraph => "GraphProto",
            Msg::Node => "NodeProto",
            Msg::Attribute => "AttributeProto",
            Msg::Sparse => "SparseTensorProto",
            Msg::Function => "FunctionProto",
            Msg::TrainingInfo => "TrainingInfoProto",
            Msg::ValueInfo(_) => "ValueInfoProto",
            Msg::Type => "TypeProto",
            Msg::TensorType => "TypeProto.Tensor",
            Msg::Shape => "TensorShapeProto",
            Msg::Dim => "TensorShapeProto.Dimension",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Input,
    Output,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Input => "input",
            Role::Output => "output",
        }
    }
}

/// Varint fields the scanner keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VarintField {
    IrVersion,
    OpsetVersion,
    ElemType,
    DimValue,
    DataLocation,
}

/// String fields the scanner keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StringField {
    Producer,
    OpsetDomain,
    InitializerName,
    ValueName,
}

/// What to do with a field, decided from its tag.
enum Action {
    Varint(Option<VarintField>),
    Skip(u64),
    Length(LenAction),
}

/// What to do with a length-delimited field once its length is known.
#[derive(Debug, Clone, Copy)]
enum LenAction {
    Descend(Msg),
    String(StringField),
    /// `TensorShapeProto.Dimension.dim_param`: marks the dimension dynamic; the text is skipped.
    DimParam,
    /// A non-tensor member of the `TypeProto.value` oneof: noted, then skipped.
    OtherType(&'static str),
    /// `TensorProto.external_data`: the tensor's data lives in a file.
    ExternalData,
    Skip,
}

#[derive(Debug)]
enum State {
    /// Between fields: reading the next tag.
    Tag,
    /// Reading a varint value.
    Varint(Option<VarintField>),
    /// Reading the length prefix of a length-delimited field.
    Length(LenAction),
    /// Discarding bytes.
    Skip(u64),
    /// Buffering a string into `Scanner::text`.
    Text(StringField, usize),
}

/// A length-delimited message being read; `end` is an absolute stream offset.
#[derive(Debug)]
struct Frame {
    msg: Msg,
    end: u64,
}

/// `TypeProto.value` oneof: which member was set last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TypeKind {
    Tensor,
    Other(&'static str),
}

/// A graph input or output as read, validated in [`SignatureScanner::finish`].
#[derive(Debug, Default)]
struct RawValue {
    name: String,
    kind: Option<TypeKind>,
    elem_type: Option<i64>,
    shape: Option<Vec<i64>>,
}

/// Streaming ONNX signature scanner; see the module docs. Feed every chunk of the upload to
/// [`update`](Self::update), then call [`finish`](Self::finish) for the signature. After an
/// error the scanner stays failed: later calls return the same error.
#[derive(Debug)]
pub struct SignatureScanner {
    /// Bytes consumed so far.
    pos: u64,
    state: State,
    /// Partial varint carried across chunks.
    varint: u64,
    varint_len: u8,
    /// Open messages below `ModelProto` (which has no end: it runs to the end of the stream).
    stack: Vec<Frame>,
    /// Buffer for the string being read.
    text: Vec<u8>,
    /// First error; every later call returns it again.
    failed: Option<OnnxError>,

    ir_version: Option<i64>,
    producer: Option<String>,
    opset: Option<i64>,
    any_opset: bool,
    graph_seen: bool,

    opset_domain: String,
    opset_version: Option<i64>,
    initializer_name: Option<String>,
    initializer_external: bool,
    value: RawValue,
    dim: i64,

    inputs: Vec<RawValue>,
    outputs: Vec<RawValue>,
    initializers: HashSet<String>,
    initializer_budget: usize,
}

impl Default for SignatureScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl SignatureScanner {
    pub fn new() -> Self {
        Self {
            pos: 0,
            state: State::Tag,
            varint: 0,
            varint_len: 0,
            stack: Vec::new(),
            text: Vec::new(),
            failed: None,
            ir_version: None,
            producer: None,
            opset: None,
            any_opset: false,
            graph_seen: false,
            opset_domain: String::new(),
            opset_version: None,
            initializer_name: None,
            initializer_external: false,
            value: RawValue::default(),
            dim: -1,
            inputs: Vec::new(),
            outputs: Vec::new(),
            initializers: HashSet::new(),
            initializer_budget: MAX_INITIALIZER_NAME_BYTES,
        }
    }

    /// Feeds the next chunk of the model. Chunk boundaries may fall anywhere.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), OnnxError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        self.feed(chunk).map_err(|err| {
            let err = match err {
                OnnxError::Malformed(msg) => OnnxError::Malformed(format!("{msg} at byte {}", self.pos)),
                other => other,
            };
            self.failed = Some(err.clone());
            err
        })
    }

    /// Ends the stream and returns the signature, or why the model is rejected.
    pub fn finish(mut self) -> Result<ModelSignature, OnnxError> {
        if let Some(err) = self.failed.take() {
            return Err(err);
        }
        self.close_frames()?;
        if self.pos == 0 {
            return Err(malformed("empty file"));
        }
        let between_fields = matches!(self.state, State::Tag) && self.varint_len == 0;
        if !between_fields || !self.stack.is_empty() {
            return Err(if self.ir_version.is_none() && !self.graph_seen {
                malformed("unexpected end of data")
            } else {
                OnnxError::Truncated
            });
        }
        let ir_version = match self.ir_version {
            Some(v) if v > 0 => v,
            Some(v) => return Err(malformed(format!("invalid ir_version {v}"))),
            None => return Err(malformed("missing ir_version")),
        };
        if !self.graph_seen {
            return Err(malformed("no graph"));
        }
        // IR version 3 introduced operator set imports; later models must declare them.
        if ir_version >= 3 && !self.any_opset {
            return Err(OnnxError::Invalid("no opset_import".into()));
        }
        if self.outputs.is_empty() {
            return Err(OnnxError::Invalid("the graph has no outputs".into()));
        }
        let initializers = std::mem::take(&mut self.initializers);
        let inputs = self
            .inputs
            .into_iter()
            .filter(|v| !initializers.contains(&v.name))
            .map(|v| tensor_spec(Role::Input, v))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs =
            self.outputs.into_iter().map(|v| tensor_spec(Role::Output, v)).collect::<Result<Vec<_>, _>>()?;
        check_unique(Role::Input, &inputs)?;
        check_unique(Role::Output, &outputs)?;
        Ok(ModelSignature { ir_version, opset: self.opset, producer: self.producer, inputs, outputs })
    }

    /// The message currently being read.
    fn current(&self) -> Msg {
        self.stack.last().map_or(Msg::Model, |f| f.msg)
    }

    /// Bytes left in the innermost open message (unbounded at the top level).
    fn room(&self) -> u64 {
        self.stack.last().map_or(u64::MAX, |f| f.end - self.pos)
    }

    fn feed(&mut self, mut data: &[u8]) -> Result<(), OnnxError> {
        while !data.is_empty() {
            let room = self.room();
            let avail = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            let used = match self.state {
                State::Tag | State::Varint(_) | State::Length(_) => {
                    let (used, value) = self.read_varint(&data[..avail])?;
                    self.pos += used as u64;
                    match value {
                        Some(value) => self.on_varint(value)?,
                        None if used as u64 == room => {
                            return Err(malformed(format!(
                                "field runs past the end of {}",
                                self.current().proto_name()
                            )));
                        }
                        None => {}
                    }
                    used
                }
                State::Skip(left) => {
                    let n = avail.min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.pos += n as u64;
                    self.state = if left == n as u64 { State::Tag } else { State::Skip(left - n as u64) };
                    n
                }
                State::Text(field, left) => {
                    let n = avail.min(left);
                    self.text.extend_from_slice(&data[..n]);
                    self.pos += n as u64;
                    if n == left {
                        self.state = State::Tag;
                        self.on_string(field)?;
                    } else {
                        self.state = State::Text(field, left - n);
                    }
                    n
                }
            };
            data = &data[used..];
            self.close_frames()?;
        }
        Ok(())
    }

    /// Accumulates varint bytes; returns how many bytes were used and the value once complete.
    fn read_varint(&mut self, data: &[u8]) -> Result<(usize, Option<u64>), OnnxError> {
        for (i, &byte) in data.iter().enumerate() {
            if self.varint_len == MAX_VARINT_LEN - 1 && byte > 1 {
                return Err(malformed("varint longer than 10 bytes"));
            }
            self.varint |= u64::from(byte & 0x7f) << (7 * u32::from(self.varint_len));
            self.varint_len += 1;
            if byte & 0x80 == 0 {
                let value = self.varint;
                self.varint = 0;
                self.varint_len = 0;
                return Ok((i + 1, Some(value)));
            }
        }
        Ok((data.len(), None))
    }

    /// A varint completed (and is counted in `pos`): a tag, a value or a length prefix.
    fn on_varint(&mut self, value: u64) -> Result<(), OnnxError> {
        match std::mem::replace(&mut self.state, State::Tag) {
            State::Tag => self.on_tag(value),
            State::Varint(field) => self.on_value(field, value),
            State::Length(action) => self.on_length(action, value),
            State::Skip(_) | State::Text(..) => unreachable!("not a varint state"),
        }
    }

    fn on_tag(&mut self, tag: u64) -> Result<(), OnnxError> {
        let msg = self.current();
        let tag = u32::try_from(tag).map_err(|_| malformed("invalid field tag"))?;
        let (field, wire) = (tag >> 3, (tag & 7) as u8);
        if field == 0 {
            return Err(malformed("field number 0"));
        }
        match wire {
            3 | 4 => return Err(malformed(format!("protobuf group (wire type {wire})"))),
            6 | 7 => return Err(malformed(format!("invalid wire type {wire}"))),
            _ => {}
        }
        if expected_wire_type(msg, field).is_some_and(|expected| expected != wire) {
            return Err(malformed(format!("field {field} of {} has wire type {wire}", msg.proto_name())));
        }
        let action = match wire {
            0 => Action::Varint(varint_field(msg, field)),
            1 => Action::Skip(8),
            2 => Action::Length(len_action(msg, field)),
            5 => Action::Skip(4),
            _ => unreachable!("wire type checked above"),
        };
        self.state = match action {
            Action::Varint(field) => State::Varint(field),
            Action::Length(action) => State::Length(action),
            Action::Skip(n) => {
                self.check_fits(n)?;
                State::Skip(n)
            }
        };
        Ok(())
    }

    fn on_value(&mut self, field: Option<VarintField>, value: u64) -> Result<(), OnnxError> {
        let value = value as i64;
        match field {
            None => {}
            Some(VarintField::IrVersion) => self.ir_version = Some(value),
            Some(VarintField::OpsetVersion) => self.opset_version = Some(value),
            Some(VarintField::ElemType) => self.value.elem_type = Some(value),
            Some(VarintField::DimValue) => self.dim = if value < 0 { -1 } else { value },
            // TensorProto.DataLocation: 0 DEFAULT, 1 EXTERNAL. Anything but DEFAULT is refused
            // (ONNX Runtime reads the enum as 32 bits, so 2^32 + 1 means EXTERNAL to it), and
            // nothing clears what an earlier field of the tensor marked.
            Some(VarintField::DataLocation) => self.initializer_external |= value != 0,
        }
        Ok(())
    }

    fn on_length(&mut self, action: LenAction, len: u64) -> Result<(), OnnxError> {
        self.check_fits(len)?;
        match action {
            LenAction::Descend(msg) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(OnnxError::Limit(format!("messages nested more than {MAX_DEPTH} deep")));
                }
                let end = self.pos.checked_add(len).ok_or_else(|| malformed("field length overflows"))?;
                self.open(msg)?;
                self.stack.push(Frame { msg, end });
            }
            LenAction::String(field) => {
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= MAX_NAME_LEN)
                    .ok_or_else(|| OnnxError::Limit(format!("string longer than {MAX_NAME_LEN} bytes")))?;
                self.text.clear();
                if len == 0 {
                    self.on_string(field)?;
                } else {
                    self.state = State::Text(field, len);
                }
            }
            LenAction::DimParam => {
                self.dim = -1;
                if len > 0 {
                    self.state = State::Skip(len);
                }
            }
            LenAction::OtherType(kind) => {
                self.value.kind = Some(TypeKind::Other(kind));
                if len > 0 {
                    self.state = State::Skip(len);
                }
            }
            LenAction::ExternalData => {
                self.initializer_external = true;
                if len > 0 {
                    self.state = State::Skip(len);
                }
            }
            LenAction::Skip => {
                if len > 0 {
                    self.state = State::Skip(len);
                }
            }
        }
        Ok(())
    }

    fn on_string(&mut self, field: StringField) -> Result<(), OnnxError> {
        let text = String::from_utf8(std::mem::take(&mut self.text))
            .map_err(|_| malformed("string field is not valid UTF-8"))?;
        match field {
            StringField::Producer => self.producer = Some(text),
            StringField::OpsetDomain => self.opset_domain = text,
            StringField::InitializerName => self.initializer_name = Some(text),
            StringField::ValueName => self.value.name = text,
        }
        Ok(())
    }

    /// Starts reading a nested message.
    fn open(&mut self, msg: Msg) -> Result<(), OnnxError> {
        match msg {
            Msg::Graph => self.graph_seen = true,
            Msg::OpsetId => {
                self.opset_domain.clear();
                self.opset_version = None;
            }
            Msg::Initializer => {
                self.initializer_name = None;
                self.initializer_external = false;
            }
            Msg::Tensor => self.initializer_external = false,
            Msg::SubGraph | Msg::Node | Msg::Attribute | Msg::Sparse | Msg::Function | Msg::TrainingInfo => {}
            Msg::ValueInfo(_) => self.value = RawValue::default(),
            Msg::Type => {}
            Msg::TensorType => self.value.kind = Some(TypeKind::Tensor),
            Msg::Shape => {
                self.value.shape.get_or_insert_with(Vec::new);
            }
            Msg::Dim => self.dim = -1,
            Msg::Model => unreachable!("ModelProto is the top level"),
        }
        Ok(())
    }

    /// Closes every message whose last byte has been consumed.
    fn close_frames(&mut self) -> Result<(), OnnxError> {
        while let Some(frame) = self.stack.last() {
            if frame.end != self.pos || !matches!(self.state, State::Tag) || self.varint_len != 0 {
                break;
            }
            let msg = frame.msg;
            self.stack.pop();
            self.close(msg)?;
        }
        Ok(())
    }

    /// Finishes reading a nested message.
    fn close(&mut self, msg: Msg) -> Result<(), OnnxError> {
        match msg {
            Msg::OpsetId => {
                self.any_opset = true;
                if matches!(self.opset_domain.as_str(), "" | "ai.onnx") && self.opset_version.is_some() {
                    self.opset = self.opset_version;
                }
            }
            Msg::Initializer => {
                if self.initializer_external {
                    let name = self.initializer_name.take().unwrap_or_default();
                    return Err(OnnxError::Unsupported {
                        tensor: format!("initializer '{name}'"),
                        reason: "data in an external file is not supported; upload a single-file model"
                            .into(),
                    });
                }
                let name = self.initializer_name.take();
                if let Some(name) = name.filter(|n| !self.initializers.contains(n)) {
                    let cost = name.len() + INITIALIZER_OVERHEAD;
                    self.initializer_budget = self
                        .initializer_budget
                        .checked_sub(cost)
                        .ok_or_else(|| OnnxError::Limit("too many initializers".into()))?;
                    self.initializers.insert(name);
                }
            }
            Msg::ValueInfo(role) => {
                let list = match role {
                    Role::Input => &mut self.inputs,
                    Role::Output => &mut self.outputs,
                };
                if list.len() >= MAX_VALUES {
                    return Err(OnnxError::Limit(format!("more than {MAX_VALUES} graph {}s", role.as_str())));
                }
                list.push(std::mem::take(&mut self.value));
            }
            Msg::Dim => {
                let shape = self.value.shape.get_or_insert_with(Vec::new);
                if shape.len() >= MAX_RANK {
                    return Err(OnnxError::Limit(format!("tensor rank above {MAX_RANK}")));
                }
                shape.push(self.dim);
            }
            Msg::Tensor => {
                if self.initializer_external {
                    return Err(OnnxError::Unsupported {
                        tensor: "a tensor in a node attribute, nested graph or function".into(),
                        reason: "data in an external file is not supported; upload a single-file model".into(),
                    });
                }
            }
            Msg::Graph
            | Msg::Type
            | Msg::TensorType
            | Msg::Shape
            | Msg::SubGraph
            | Msg::Node
            | Msg::Attribute
            | Msg::Sparse
            | Msg::Function
            | Msg::TrainingInfo => {}
            Msg::Model => unreachable!("ModelProto is the top level"),
        }
        Ok(())
    }

    /// Checks that `len` more bytes fit in the innermost open message.
    fn check_fits(&self, len: u64) -> Result<(), OnnxError> {
        let Some(frame) = self.stack.last() else {
            return Ok(());
        };
        if len > frame.end - self.pos {
            return Err(malformed(format!("field length exceeds its enclosing {}", frame.msg.proto_name())));
        }
        Ok(())
    }
}

/// The wire type of every field the scanner interprets; `None` for fields it skips.
fn expected_wire_type(msg: Msg, field: u32) -> Option<u8> {
    const VARINT: u8 = 0;
    const LEN: u8 = 2;
    match (msg, field) {
        (Msg::Model, 1)
        | (Msg::OpsetId, 2)
        | (Msg::Initializer | Msg::Tensor, 14)
        | (Msg::TensorType, 1)
        | (Msg::Dim, 1) => Some(VARINT),
        (Msg::Model, 2 | 7 | 8 | 20 | 25)
        | (Msg::OpsetId, 1)
        | (Msg::Graph, 1 | 5 | 11 | 12 | 15)
        | (Msg::SubGraph, 1 | 5 | 15)
        | (Msg::Node, 5)
        | (Msg::Attribute, 5 | 6 | 10 | 11 | 22 | 23)
        | (Msg::Sparse, 1 | 2)
        | (Msg::Function, 7 | 11)
        | (Msg::TrainingInfo, 1 | 2)
        | (Msg::Initializer | Msg::Tensor, 13)
        | (Msg::Initializer, 8)
        | (Msg::ValueInfo(_), 1 | 2)
        | (Msg::Type, 1 | 4 | 5 | 7 | 8 | 9)
        | (Msg::TensorType, 2)
        | (Msg::Shape, 1)
        | (Msg::Dim, 2) => Some(LEN),
        _ => None,
    }
}

fn varint_field(msg: Msg, field: u32) -> Option<VarintField> {
    match (msg, field) {
        (Msg::Model, 1) => Some(VarintField::IrVersion),
        (Msg::OpsetId, 2) => Some(VarintField::OpsetVersion),
        (Msg::TensorType, 1) => Some(VarintField::ElemType),
        (Msg::Dim, 1) => Some(VarintField::DimValue),
        (Msg::Initializer | Msg::Tensor, 14) => Some(VarintField::DataLocation),
        _ => None,
    }
}

fn len_action(msg: Msg, field: u32) -> LenAction {
    match (msg, field) {
        (Msg::Model, 2) => LenAction::String(StringField::Producer),
        (Msg::Model, 7) => LenAction::Descend(Msg::Graph),
        (Msg::Model, 8) => LenAction::Descend(Msg::OpsetId),
        (Msg::Model, 20) => LenAction::Descend(Msg::TrainingInfo),
        (Msg::Model, 25) => LenAction::Descend(Msg::Function),
        (Msg::Graph | Msg::SubGraph, 1) | (Msg::Function, 7) => LenAction::Descend(Msg::Node),
        (Msg::Graph | Msg::SubGraph, 15) | (Msg::Attribute, 22 | 23) => LenAction::Descend(Msg::Sparse),
        (Msg::SubGraph, 5) | (Msg::Attribute, 5 | 10) | (Msg::Sparse, 1 | 2) => LenAction::Descend(Msg::Tensor),
        (Msg::Node, 5) | (Msg::Function, 11) => LenAction::Descend(Msg::Attribute),
        (Msg::Attribute, 6 | 11) | (Msg::TrainingInfo, 1 | 2) => LenAction::Descend(Msg::SubGraph),
        (Msg::Initializer | Msg::Tensor, 13) => LenAction::ExternalData,
        (Msg::OpsetId, 1) => LenAction::String(StringField::OpsetDomain),
        (Msg::Graph, 5) => LenAction::Descend(Msg::Initializer),
        (Msg::Graph, 11) => LenAction::Descend(Msg::ValueInfo(Role::Input)),
        (Msg::Graph, 12) => LenAction::Descend(Msg::ValueInfo(Role::Output)),
        (Msg::Initializer, 8) => LenAction::String(StringField::InitializerName),
        (Msg::ValueInfo(_), 1) => LenAction::String(StringField::ValueName),
        (Msg::ValueInfo(_), 2) => LenAction::Descend(Msg::Type),
        (Msg::Type, 1) => LenAction::Descend(Msg::TensorType),
        (Msg::Type, 4) => LenAction::OtherType("sequence"),
        (Msg::Type, 5) => LenAction::OtherType("map"),
        (Msg::Type, 7) => LenAction::OtherType("opaque"),
        (Msg::Type, 8) => LenAction::OtherType("sparse tensor"),
        (Msg::Type, 9) => LenAction::OtherType("optional"),
        (Msg::TensorType, 2) => LenAction::Descend(Msg::Shape),
        (Msg::Shape, 1) => LenAction::Descend(Msg::Dim),
        (Msg::Dim, 2) => LenAction::DimParam,
        _ => LenAction::Skip,
    }
}

/// Open Inference Protocol datatype for an ONNX `TensorProto.DataType`.
fn oip_datatype(elem_type: i64) -> Option<&'static str> {
    Some(match elem_type {
        1 => "FP32",
        2 => "UINT8",
        3 => "INT8",
        4 => "UINT16",
        5 => "INT16",
        6 => "INT32",
        7 => "INT64",
        8 => "BYTES",
        9 => "BOOL",
        10 => "FP16",
        11 => "FP64",
        12 => "UINT32",
        13 => "UINT64",
        16 => "BF16",
        _ => return None,
    })
}

/// ONNX name of a `TensorProto.DataType`, for error messages.
fn onnx_type_name(elem_type: i64) -> &'static str {
    match elem_type {
        0 => "UNDEFINED",
        14 => "COMPLEX64",
        15 => "COMPLEX128",
        17 => "FLOAT8E4M3FN",
        18 => "FLOAT8E4M3FNUZ",
        19 => "FLOAT8E5M2",
        20 => "FLOAT8E5M2FNUZ",
        21 => "UINT4",
        22 => "INT4",
        23 => "FLOAT4E2M1",
        24 => "FLOAT8E8M0",
        25 => "UINT2",
        26 => "INT2",
        27 => "FLOAT6E2M3",
        28 => "FLOAT6E3M2",
        _ => "unknown",
    }
}

fn tensor_spec(role: Role, value: RawValue) -> Result<TensorSpec, OnnxError> {
    if value.name.is_empty() {
        return Err(OnnxError::Invalid(format!("a graph {} has no name", role.as_str())));
    }
    let unsupported = |reason: String| OnnxError::Unsupported {
        tensor: format!("{} '{}'", role.as_str(), value.name),
        reason,
    };
    match value.kind {
        Some(TypeKind::Tensor) => {}
        Some(TypeKind::Other(kind)) => {
            return Err(unsupported(format!("{kind} type is not supported, only tensors")));
        }
        None => return Err(unsupported("no tensor type".into())),
    }
    let datatype = match value.elem_type {
        None | Some(0) => return Err(unsupported("no element type".into())),
        Some(t) => oip_datatype(t)
            .ok_or_else(|| unsupported(format!("unsupported element type {t} ({})", onnx_type_name(t))))?,
    };
    let shape = value.shape.ok_or_else(|| unsupported("unknown rank (no shape)".into()))?;
    Ok(TensorSpec { name: value.name, datatype: datatype.to_owned(), shape })
}

fn check_unique(role: Role, specs: &[TensorSpec]) -> Result<(), OnnxError> {
    let mut seen = HashSet::with_capacity(specs.len());
    for spec in specs {
        if !seen.insert(spec.name.as_str()) {
            return Err(OnnxError::Invalid(format!("duplicate graph {} '{}'", role.as_str(), spec.name)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADD_FP32: &[u8] = include_bytes!("../../tests/fixtures/models/add_fp32.onnx");
    const MLP_FP32: &[u8] = include_bytes!("../../tests/fixtures/models/mlp_fp32.onnx");
    const DTYPES: &[u8] = include_bytes!("../../tests/fixtures/models/dtypes.onnx");
    const MARKER: &[u8] = include_bytes!("../../tests/fixtures/models/marker.onnx");
    const LEGACY_INPUTS: &[u8] = include_bytes!("../../tests/fixtures/models/legacy_inputs.onnx");

    fn scan_chunked(data: &[u8], chunk: usize) -> Result<ModelSignature, OnnxError> {
        let mut scanner = SignatureScanner::new();
        for piece in data.chunks(chunk.max(1)) {
            scanner.update(piece)?;
        }
        scanner.finish()
    }

    fn scan(data: &[u8]) -> Result<ModelSignature, OnnxError> {
        scan_chunked(data, data.len())
    }

    fn spec(name: &str, datatype: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), datatype: datatype.into(), shape: shape.to_vec() }
    }

    // A minimal protobuf writer for hand-made models.

    fn varint(mut value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
        out
    }

    fn fv(field: u32, value: u64) -> Vec<u8> {
        [varint(u64::from(field << 3)), varint(value)].concat()
    }

    fn fb(field: u32, bytes: &[u8]) -> Vec<u8> {
        [varint(u64::from(field << 3 | 2)), varint(bytes.len() as u64), bytes.to_vec()].concat()
    }

    enum D {
        Value(u64),
        Param(&'static str),
        Unknown,
    }

    fn value_info(name: &str, elem_type: u64, dims: &[D]) -> Vec<u8> {
        let dims: Vec<u8> = dims
            .iter()
            .flat_map(|d| {
                let dim = match d {
                    D::Value(v) => fv(1, *v),
                    D::Param(p) => fb(2, p.as_bytes()),
                    D::Unknown => Vec::new(),
                };
                fb(1, &dim)
            })
            .collect();
        let tensor = [fv(1, elem_type), fb(2, &dims)].concat();
        [fb(1, name.as_bytes()), fb(2, &fb(1, &tensor))].concat()
    }

    fn initializer(name: &str, raw: &[u8]) -> Vec<u8> {
        [fv(1, raw.len() as u64), fv(2, 2), fb(8, name.as_bytes()), fb(9, raw)].concat()
    }

    fn model(graph: &[Vec<u8>]) -> Vec<u8> {
        let opset = [fb(1, b""), fv(2, 17)].concat();
        [fv(1, 8), fb(2, b"hand"), fb(7, &graph.concat()), fb(8, &opset)].concat()
    }

    fn identity(input: Vec<u8>, output: Vec<u8>) -> Vec<u8> {
        model(&[fb(11, &input), fb(12, &output)])
    }

    fn x_to_y() -> Vec<u8> {
        identity(value_info("x", 1, &[D::Value(2)]), value_info("y", 1, &[D::Value(2)]))
    }

    /// Deterministic pseudo-random bytes (xorshift64*).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn add_fp32_signature() {
        let sig = scan(ADD_FP32).unwrap();
        assert_eq!(
            sig,
            ModelSignature {
                ir_version: 8,
                opset: Some(17),
                producer: Some("tessera-fixtures".into()),
                inputs: vec![spec("x", "FP32", &[-1, 4]), spec("y", "FP32", &[-1, 4])],
                outputs: vec![spec("z", "FP32", &[-1, 4])],
            }
        );
    }

    #[test]
    fn mlp_signature_excludes_weights() {
        let sig = scan(MLP_FP32).unwrap();
        assert_eq!(sig.inputs, vec![spec("input", "FP32", &[-1, 8])]);
        assert_eq!(sig.outputs, vec![spec("logits", "FP32", &[-1, 3])]);
    }

    #[test]
    fn dtypes_map_to_oip_names_and_unknown_dims_are_dynamic() {
        let sig = scan(DTYPES).unwrap();
        let expected = [
            ("int64", "INT64", vec![-1, 2]),
            ("int32", "INT32", vec![-1]),
            ("bool", "BOOL", vec![-1, 3]),
            ("fp64", "FP64", vec![-1]),
            ("uint8", "UINT8", vec![-1, 5]),
            ("fp16", "FP16", vec![-1, 2]),
            ("int8", "INT8", vec![-1]),
            ("string", "BYTES", vec![-1]),
        ];
        let inputs: Vec<_> =
            expected.iter().map(|(s, t, shape)| spec(&format!("in_{s}"), t, shape)).collect();
        let outputs: Vec<_> =
            expected.iter().map(|(s, t, shape)| spec(&format!("out_{s}"), t, shape)).collect();
        assert_eq!(sig.inputs, inputs);
        assert_eq!(sig.outputs, outputs);
    }

    #[test]
    fn marker_payload_is_skipped() {
        let expected = scan(ADD_FP32).unwrap();
        for chunk in [1, 3, 64, 4096, MARKER.len()] {
            assert_eq!(scan_chunked(MARKER, chunk).unwrap(), expected, "chunk {chunk}");
        }
    }

    #[test]
    fn legacy_initializer_inputs_are_filtered() {
        let sig = scan(LEGACY_INPUTS).unwrap();
        assert_eq!(sig.ir_version, 3);
        assert_eq!(sig.opset, Some(8));
        assert_eq!(sig.inputs, vec![spec("x", "FP32", &[-1, 4])]);
        assert_eq!(sig.outputs, vec![spec("y", "FP32", &[-1, 2])]);
    }

    #[test]
    fn initializer_after_inputs_is_filtered_too() {
        let data = model(&[
            fb(11, &value_info("x", 1, &[D::Param("n"), D::Value(4)])),
            fb(11, &value_info("w", 1, &[D::Value(4)])),
            fb(12, &value_info("y", 1, &[D::Param("n")])),
            fb(5, &initializer("w", &[0; 16])),
        ]);
        let sig = scan(&data).unwrap();
        assert_eq!(sig.inputs, vec![spec("x", "FP32", &[-1, 4])]);
    }

    #[test]
    fn every_chunking_gives_the_same_signature() {
        for data in [ADD_FP32, LEGACY_INPUTS, DTYPES] {
            let expected = scan(data).unwrap();
            for chunk in 1..=data.len() {
                assert_eq!(scan_chunked(data, chunk).unwrap(), expected, "chunk size {chunk}");
            }
        }
    }

    #[test]
    fn uneven_chunks_give_the_same_signature() {
        let expected = scan(MLP_FP32).unwrap();
        for seed in 0..50 {
            let sizes = noise(seed, 64);
            let mut scanner = SignatureScanner::new();
            let (mut rest, mut i) = (MLP_FP32, 0);
            while !rest.is_empty() {
                let n = (usize::from(sizes[i % sizes.len()]) % 40).min(rest.len());
                scanner.update(&rest[..n]).unwrap(); // includes empty chunks
                rest = &rest[n..];
                i += 1;
            }
            assert_eq!(scanner.finish().unwrap(), expected);
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        for data in [ADD_FP32, LEGACY_INPUTS] {
            for len in 0..data.len() {
                for chunk in [1, len.max(1)] {
                    assert!(scan_chunked(&data[..len], chunk).is_err(), "prefix {len}, chunk {chunk}");
                }
            }
        }
        assert_eq!(scan(&ADD_FP32[..ADD_FP32.len() - 1]).unwrap_err(), OnnxError::Truncated);
        assert_eq!(scan(&MARKER[..2000]).unwrap_err(), OnnxError::Truncated);
    }

    #[test]
    fn garbage_is_rejected() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x06\0\0\0\x1f\xf3\xffa";
        let samples: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"hello world\nthis is a text file, not a model\n".to_vec(),
            b"{\"inputs\": [], \"outputs\": []}".to_vec(),
            png.to_vec(),
            vec![0; 1000],
            vec![0xff; 1000],
            b"PK\x03\x04\x14\0\0\0\x08\0".to_vec(),
        ];
        for sample in &samples {
            assert!(scan(sample).is_err(), "{sample:?}");
        }
        assert_eq!(scan(b"").unwrap_err().to_string(), "not an ONNX model: empty file");
        for seed in 0..500 {
            let data = noise(seed, 1 + (seed as usize * 37) % 3000);
            assert!(scan(&data).is_err(), "seed {seed}");
        }
    }

    #[test]
    fn well_formed_protobuf_without_graph_or_outputs_is_rejected() {
        let no_graph = [fv(1, 8), fb(2, b"p")].concat();
        assert_eq!(scan(&no_graph).unwrap_err().to_string(), "not an ONNX model: no graph");
        let no_outputs = model(&[fb(11, &value_info("x", 1, &[D::Value(1)]))]);
        assert_eq!(
            scan(&no_outputs).unwrap_err().to_string(),
            "invalid ONNX model: the graph has no outputs"
        );
        let mut no_ir = x_to_y();
        no_ir.drain(..2); // drop the ir_version field
        assert_eq!(scan(&no_ir).unwrap_err().to_string(), "not an ONNX model: missing ir_version");
        let zero_ir = [fv(1, 0), x_to_y()[2..].to_vec()].concat();
        assert!(matches!(scan(&zero_ir), Err(OnnxError::Malformed(_))));
        let graph = fb(7, &[fb(11, &value_info("x", 1, &[])), fb(12, &value_info("y", 1, &[]))].concat());
        let no_opset = [fv(1, 8), graph].concat();
        assert_eq!(scan(&no_opset).unwrap_err().to_string(), "invalid ONNX model: no opset_import");
        // A bare TensorProto: well-formed protobuf, not a model.
        assert!(scan(&initializer("w", &[1, 2, 3])).is_err());
    }

    #[test]
    fn unsupported_types_name_the_tensor() {
        let complex = identity(value_info("x", 14, &[D::Value(2)]), value_info("y", 1, &[]));
        assert_eq!(
            scan(&complex).unwrap_err().to_string(),
            "input 'x': unsupported element type 14 (COMPLEX64)"
        );
        let float8 = identity(value_info("x", 1, &[]), value_info("y", 17, &[]));
        assert_eq!(
            scan(&float8).unwrap_err().to_string(),
            "output 'y': unsupported element type 17 (FLOAT8E4M3FN)"
        );
        let sequence_type = fb(4, &fb(1, &fb(1, &fv(1, 1))));
        let seq = identity([fb(1, b"s"), fb(2, &sequence_type)].concat(), value_info("y", 1, &[]));
        assert_eq!(
            scan(&seq).unwrap_err().to_string(),
            "input 's': sequence type is not supported, only tensors"
        );
        let untyped = identity(fb(1, b"u"), value_info("y", 1, &[]));
        assert_eq!(scan(&untyped).unwrap_err().to_string(), "input 'u': no tensor type");
        let no_shape = [fb(1, b"r"), fb(2, &fb(1, &fv(1, 1)))].concat();
        let unranked = identity(value_info("x", 1, &[]), no_shape);
        assert_eq!(scan(&unranked).unwrap_err().to_string(), "output 'r': unknown rank (no shape)");
    }

    #[test]
    fn shapes_cover_scalars_and_all_dim_kinds() {
        let data = identity(
            value_info("x", 7, &[D::Value(0), D::Param("b"), D::Unknown, D::Value(1 << 40)]),
            value_info("y", 16, &[]),
        );
        let sig = scan(&data).unwrap();
        assert_eq!(sig.inputs, vec![spec("x", "INT64", &[0, -1, -1, 1 << 40])]);
        assert_eq!(sig.outputs, vec![spec("y", "BF16", &[])]);
        // A negative dim_value (seen in some old exporters) is read as dynamic.
        let negative = identity(value_info("x", 1, &[D::Value(u64::MAX)]), value_info("y", 1, &[]));
        assert_eq!(scan(&negative).unwrap().inputs[0].shape, vec![-1]);
    }

    #[test]
    fn skipped_fields_of_every_wire_type_are_ignored() {
        let mut data = x_to_y();
        // fixed64, fixed32, varint and length-delimited fields nobody reads, at the top level
        // and inside the graph.
        let extras = [
            [varint(9 << 3 | 1), vec![0; 8]].concat(),
            [varint(10 << 3 | 5), vec![0; 4]].concat(),
            fv(5, 42),
            fb(6, b"doc"),
            fb(14, &[fb(1, b"k"), fb(2, b"v")].concat()),
        ];
        data.extend(extras.concat());
        let node = [fb(1, b"x"), fb(2, b"y"), fb(4, b"Identity"), fb(6, b"doc"), fv(99, 1)].concat();
        let graph = [fb(1, &node), fb(10, b"doc"), fb(11, &value_info("x2", 1, &[]))].concat();
        data.extend(fb(7, &graph)); // a second graph field merges into the first
        let sig = scan(&data).unwrap();
        assert_eq!(sig.inputs, vec![spec("x", "FP32", &[2]), spec("x2", "FP32", &[])]);
    }

    #[test]
    fn external_data_is_rejected() {
        let external =
            [fv(2, 1), fb(8, b"w"), fb(13, &[fb(1, b"location"), fb(2, b"w.bin")].concat()), fv(14, 1)];
        let data = model(&[
            fb(5, &external.concat()),
            fb(11, &value_info("x", 1, &[])),
            fb(12, &value_info("y", 1, &[])),
        ]);
        assert_eq!(
            scan(&data).unwrap_err().to_string(),
            "initializer 'w': data in an external file is not supported; upload a single-file model"
        );
    }

    #[test]
    fn external_data_is_rejected_wherever_a_tensor_can_hold_it() {
        let pointer = |location: &str| fb(13, &[fb(1, b"location"), fb(2, location.as_bytes())].concat());
        let tensor = |location: &str| [fv(2, 1), fb(8, b"c"), pointer(location), fv(14, 1)].concat();
        let node = |location: &str| [fb(4, b"Constant"), fb(5, &[fb(1, b"value"), fb(5, &tensor(location))].concat())].concat();
        let constant = |location: &str| fb(1, &node(location));
        let io = [fb(11, &value_info("x", 1, &[])), fb(12, &value_info("y", 1, &[]))].concat();
        let subgraph = |body: &[u8]| fb(1, &[fb(4, b"If"), fb(5, &[fb(1, b"then_branch"), fb(6, body)].concat())].concat());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("Constant node", model(&[constant("/etc/passwd"), io.clone()])),
            ("relative path", model(&[constant("../../../../etc/passwd"), io.clone()])),
            // `external_data` alone, without `data_location`, is refused too.
            ("location only", model(&[fb(1, &fb(5, &fb(5, &[fb(8, b"c"), pointer("/etc/shadow")].concat()))), io.clone()])),
            ("tensors attribute", model(&[fb(1, &fb(5, &fb(10, &tensor("/etc/passwd")))), io.clone()])),
            ("subgraph", model(&[subgraph(&constant("/etc/passwd")), io.clone()])),
            ("subgraph initializer", model(&[subgraph(&fb(5, &tensor("/etc/passwd"))), io.clone()])),
            ("sparse initializer", model(&[fb(15, &fb(1, &tensor("/etc/passwd"))), io.clone()])),
            ("sparse attribute", model(&[fb(1, &fb(5, &fb(22, &fb(2, &tensor("/etc/passwd"))))), io.clone()])),
        ];
        for (case, data) in cases {
            let error = scan(&data).unwrap_err().to_string();
            assert!(error.contains("external file"), "{case}: {error}");
        }
        // A later `data_location` cannot clear what `external_data` marked, and any value but
        // DEFAULT counts (2^32 + 1 is EXTERNAL to a reader of 32-bit enums).
        let sneaky = |location: &str| [fv(2, 1), fb(8, b"c"), pointer(location), fv(14, (1 << 32) + 1)].concat();
        let cleared = |location: &str| [fv(2, 1), fb(8, b"c"), pointer(location), fv(14, 0)].concat();
        for tensor in [sneaky("/etc/passwd"), cleared("/etc/passwd")] {
            let as_initializer = model(&[fb(5, &tensor), io.clone()]);
            assert!(scan(&as_initializer).unwrap_err().to_string().contains("external file"));
            let as_constant = model(&[fb(1, &[fb(4, b"Constant"), fb(5, &[fb(1, b"value"), fb(5, &tensor)].concat())].concat()), io.clone()]);
            assert!(scan(&as_constant).unwrap_err().to_string().contains("external file"));
        }
        let big_location = model(&[fb(5, &[fv(2, 1), fb(8, b"c"), fv(14, 1 << 32)].concat()), io.clone()]);
        assert!(scan(&big_location).unwrap_err().to_string().contains("external file"));
        // A function's nodes, and training graphs, too.
        let function = fb(25, &fb(7, &node("/etc/passwd")));
        let with_function = [model(&[io.clone()]), function].concat();
        assert!(scan(&with_function).unwrap_err().to_string().contains("external file"));
        let training = fb(20, &fb(2, &constant("/etc/passwd")));
        let with_training = [model(&[io.clone()]), training].concat();
        assert!(scan(&with_training).unwrap_err().to_string().contains("external file"));
        // A subgraph's own inputs and outputs stay out of the signature.
        let inner = subgraph(&[fb(11, &value_info("inner", 1, &[])), fb(12, &value_info("inner_out", 1, &[]))].concat());
        let sig = scan(&model(&[inner, io])).unwrap();
        assert_eq!(sig.inputs, vec![spec("x", "FP32", &[])]);
        assert_eq!(sig.outputs, vec![spec("y", "FP32", &[])]);
    }

    #[test]
    fn nesting_is_bounded() {
        let mut graph = fb(12, &value_info("y", 1, &[]));
        for _ in 0..40 {
            graph = fb(1, &fb(5, &fb(6, &graph)));
        }
        let error = scan(&model(&[graph])).unwrap_err();
        assert!(matches!(error, OnnxError::Limit(_)), "{error}");
    }

    #[test]
    fn duplicate_and_empty_names_are_rejected() {
        let data = model(&[
            fb(11, &value_info("x", 1, &[])),
            fb(11, &value_info("x", 1, &[])),
            fb(12, &value_info("y", 1, &[])),
        ]);
        assert_eq!(scan(&data).unwrap_err().to_string(), "invalid ONNX model: duplicate graph input 'x'");
        let data = identity(value_info("", 1, &[]), value_info("y", 1, &[]));
        assert_eq!(scan(&data).unwrap_err().to_string(), "invalid ONNX model: a graph input has no name");
    }

    #[test]
    fn malformed_wire_data_is_rejected() {
        let good = x_to_y();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("group", [good.clone(), varint(3 << 3 | 3)].concat()),
            ("end group", [good.clone(), varint(3 << 3 | 4)].concat()),
            ("wire type 6", [good.clone(), varint(3 << 3 | 6)].concat()),
            ("wire type 7", [good.clone(), varint(3 << 3 | 7)].concat()),
            ("field 0", [good.clone(), fv(0, 1)].concat()),
            ("varint too long", [varint(1 << 3), vec![0x80; 10], vec![0]].concat()),
            ("ir_version as bytes", [fb(1, b"8"), good[2..].to_vec()].concat()),
            ("graph as varint", [good.clone(), fv(7, 1)].concat()),
            ("tag too large", [good.clone(), varint(1 << 40)].concat()),
            // graph of 6 bytes whose input claims 10
            (
                "nested length",
                [fv(1, 8), fb(7, &[varint(11 << 3 | 2), varint(10), vec![0; 4]].concat())].concat(),
            ),
            // fixed64 field that does not fit its parent
            ("fixed in parent", [fv(1, 8), fb(7, &[varint(20 << 3 | 1), vec![0; 4]].concat())].concat()),
            // a varint cut off by the end of its message
            ("varint at end", [fv(1, 8), fb(7, &[varint(20 << 3), vec![0x80]].concat())].concat()),
            ("bad utf-8", [fv(1, 8), fb(2, b"\xff\xfe")].concat()),
        ];
        for (what, data) in cases {
            for chunk in [1, data.len()] {
                let err = scan_chunked(&data, chunk).unwrap_err();
                assert!(matches!(err, OnnxError::Malformed(_)), "{what}: {err:?}");
            }
        }
    }

    #[test]
    fn limits_are_enforced() {
        let long = "n".repeat(MAX_NAME_LEN + 1);
        let data = identity(value_info(&long, 1, &[]), value_info("y", 1, &[]));
        assert!(matches!(scan(&data), Err(OnnxError::Limit(_))));
        let ok = "n".repeat(MAX_NAME_LEN);
        let data = identity(value_info(&ok, 1, &[]), value_info("y", 1, &[]));
        assert_eq!(scan(&data).unwrap().inputs[0].name, ok);

        let dims: Vec<D> = (0..=MAX_RANK).map(|_| D::Value(1)).collect();
        let data = identity(value_info("x", 1, &dims), value_info("y", 1, &[]));
        assert!(matches!(scan(&data), Err(OnnxError::Limit(_))));

        let input = fb(11, &value_info("x", 1, &[]));
        let mut graph: Vec<Vec<u8>> = vec![input; MAX_VALUES + 1];
        graph.push(fb(12, &value_info("y", 1, &[])));
        assert!(matches!(scan(&model(&graph)), Err(OnnxError::Limit(_))));
    }

    #[test]
    fn errors_are_sticky() {
        let mut scanner = SignatureScanner::new();
        assert!(scanner.update(&varint(3 << 3 | 3)).is_err());
        assert!(scanner.update(&x_to_y()).is_err());
        assert!(matches!(scanner.finish(), Err(OnnxError::Malformed(_))));
    }

    #[test]
    fn signature_serializes() {
        let sig = scan(ADD_FP32).unwrap();
        let json = serde_json::to_value(&sig).unwrap();
        assert_eq!(json["inputs"][0], serde_json::json!({"name": "x", "datatype": "FP32", "shape": [-1, 4]}));
        assert_eq!(serde_json::from_value::<ModelSignature>(json).unwrap(), sig);
    }
}
