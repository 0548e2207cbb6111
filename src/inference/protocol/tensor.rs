//! The tensor types every engine uses: element types and flattened element data. Nothing here
//! knows JSON or HTTP.

use std::fmt;

use bytes::Bytes;
use half::f16;

/// A tensor element type, as named by the protocol (`"FP32"`, `"BYTES"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The protocol name, case-sensitive as Triton treats it. `BF16` is not supported.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => DataType::Bool,
            "UINT8" => DataType::Uint8,
            "UINT16" => DataType::Uint16,
            "UINT32" => DataType::Uint32,
            "UINT64" => DataType::Uint64,
            "INT8" => DataType::Int8,
            "INT16" => DataType::Int16,
            "INT32" => DataType::Int32,
            "INT64" => DataType::Int64,
            "FP16" => DataType::Fp16,
            "FP32" => DataType::Fp32,
            "FP64" => DataType::Fp64,
            "BYTES" => DataType::Bytes,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Bytes per element in the binary encoding; `None` for BYTES (variable length).
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The elements of a tensor, flattened in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<Bytes>),
}

/// Runs `$body` with `$v` bound to the inner `Vec` of whichever variant `$data` is.
macro_rules! with_vec {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => $body,
            TensorData::Uint8($v) => $body,
            TensorData::Uint16($v) => $body,
            TensorData::Uint32($v) => $body,
            TensorData::Uint64($v) => $body,
            TensorData::Int8($v) => $body,
            TensorData::Int16($v) => $body,
            TensorData::Int32($v) => $body,
            TensorData::Int64($v) => $body,
            TensorData::Fp16($v) => $body,
            TensorData::Fp32($v) => $body,
            TensorData::Fp64($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}

/// Like `with_vec!`, wrapping the result back into the same variant.
macro_rules! map_vec {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => TensorData::Bool($body),
            TensorData::Uint8($v) => TensorData::Uint8($body),
            TensorData::Uint16($v) => TensorData::Uint16($body),
            TensorData::Uint32($v) => TensorData::Uint32($body),
            TensorData::Uint64($v) => TensorData::Uint64($body),
            TensorData::Int8($v) => TensorData::Int8($body),
            TensorData::Int16($v) => TensorData::Int16($body),
            TensorData::Int32($v) => TensorData::Int32($body),
            TensorData::Int64($v) => TensorData::Int64($body),
            TensorData::Fp16($v) => TensorData::Fp16($body),
            TensorData::Fp32($v) => TensorData::Fp32($body),
            TensorData::Fp64($v) => TensorData::Fp64($body),
            TensorData::Bytes($v) => TensorData::Bytes($body),
        }
    };
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_vec!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty tensor of `datatype` with room for `capacity` elements.
    pub fn with_capacity(datatype: DataType, capacity: usize) -> TensorData {
        match datatype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(capacity)),
            DataType::Uint8 => TensorData::Uint8(Vec::with_capacity(capacity)),
            DataType::Uint16 => TensorData::Uint16(Vec::with_capacity(capacity)),
            DataType::Uint32 => TensorData::Uint32(Vec::with_capacity(capacity)),
            DataType::Uint64 => TensorData::Uint64(Vec::with_capacity(capacity)),
            DataType::Int8 => TensorData::Int8(Vec::with_capacity(capacity)),
            DataType::Int16 => TensorData::Int16(Vec::with_capacity(capacity)),
            DataType::Int32 => TensorData::Int32(Vec::with_capacity(capacity)),
            DataType::Int64 => TensorData::Int64(Vec::with_capacity(capacity)),
            DataType::Fp16 => TensorData::Fp16(Vec::with_capacity(capacity)),
            DataType::Fp32 => TensorData::Fp32(Vec::with_capacity(capacity)),
            DataType::Fp64 => TensorData::Fp64(Vec::with_capacity(capacity)),
            DataType::Bytes => TensorData::Bytes(Vec::with_capacity(capacity)),
        }
    }

    /// The elements of all `parts`, in order. `None` when `parts` is empty or the parts differ
    /// in datatype.
    pub fn concat(parts: &[&TensorData]) -> Option<TensorData> {
        let first = parts.first()?;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = TensorData::with_capacity(first.datatype(), total);
        for part in parts {
            out.extend_from(part)?;
        }
        Some(out)
    }

    /// Appends the elements of `other`; `None` (and nothing appended) when the datatypes differ.
    pub fn extend_from(&mut self, other: &TensorData) -> Option<()> {
        macro_rules! ext {
            ($($variant:ident),*) => {
                match (self, other) {
                    $((TensorData::$variant(a), TensorData::$variant(b)) => a.extend_from_slice(b),)*
                    _ => return None,
                }
            };
        }
        ext!(Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64, Bytes);
        Some(())
    }

    /// A copy of the elements `start..end` (BYTES elements share their buffers).
    ///
    /// # Panics
    /// When `start > end` or `end > self.len()`, as slice indexing does.
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        map_vec!(self, v => v[start..end].to_vec())
    }

    /// Size in bytes of [`write_canonical`](Self::write_canonical)'s output, which is also the
    /// tensor's `binary_data_size` in the binary extension.
    pub fn binary_size(&self) -> usize {
        match self {
            TensorData::Bytes(v) => v.iter().map(|b| 4 + b.len()).sum(),
            other => other.len() * other.datatype().element_size().unwrap_or(0),
        }
    }

    /// Appends the elements as deterministic bytes: fixed-size types little-endian (floats by
    /// their bit patterns, so `0.0` and `-0.0` differ), BOOL one byte 0/1, BYTES each element a
    /// u32 little-endian length then its bytes. This is exactly the binary data extension's
    /// wire encoding. Datatype and shape are not included: a cache key must add them.
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        match self {
            TensorData::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
            TensorData::Uint8(v) => out.extend_from_slice(v),
            TensorData::Int8(v) => out.extend(v.iter().map(|&x| x as u8)),
            TensorData::Uint16(v) => put_le(out, v, |x| x.to_le_bytes()),
            TensorData::Int16(v) => put_le(out, v, |x| x.to_le_bytes()),
            TensorData::Fp16(v) => put_le(out, v, |x| x.to_bits().to_le_bytes()),
            TensorData::Uint32(v) => put_le(out, v, |x| x.to_le_bytes()),
            TensorData::Int32(v) => put_le(out, v, |x| x.to_le_bytes()),
            TensorData::Fp32(v) => put_le(out, v, |x| x.to_bits().to_le_bytes()),
            TensorData::Uint64(v) => put_le(out, v, |x| x.to_le_bytes()),
            TensorData::Int64(v) => put_le(out, v, |x| x.to_le_bytes()),
            TensorData::Fp64(v) => put_le(out, v, |x| x.to_bits().to_le_bytes()),
            TensorData::Bytes(v) => {
                out.reserve(v.iter().map(|b| 4 + b.len()).sum());
                for b in v {
                    // Elements come from a protocol whose lengths are u32; a larger one cannot
                    // be sent and is clamped rather than wrapped.
                    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }
}

#[inline]
fn put_le<T: Copy, const N: usize>(out: &mut Vec<u8>, vals: &[T], to: impl Fn(T) -> [u8; N]) {
    let start = out.len();
    out.resize(start + vals.len() * N, 0);
    for (dst, &v) in out[start..].chunks_exact_mut(N).zip(vals) {
        dst.copy_from_slice(&to(v));
    }
}

#[inline]
pub(super) fn get_le<T, const N: usize>(bytes: &[u8], from: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|c| from(c.try_into().expect("chunks_exact yields N bytes"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::protocol::test_support::{b, canonical, samples};

    #[test]
    fn datatype_names() {
        for dt in DataType::ALL {
            assert_eq!(DataType::parse(dt.as_str()), Some(dt));
            assert_eq!(dt.to_string(), dt.as_str());
        }
        assert_eq!(DataType::Fp16.element_size(), Some(2));
        assert_eq!(DataType::Bool.element_size(), Some(1));
        assert_eq!(DataType::Uint64.element_size(), Some(8));
        assert_eq!(DataType::Bytes.element_size(), None);
        for s in samples() {
            assert_eq!(s.data.binary_size(), canonical(&s.data).len());
            if let Some(size) = s.data.datatype().element_size() {
                assert_eq!(s.data.binary_size(), size * s.data.len());
            }
        }
    }

    #[test]
    fn concat_and_slice() {
        let a = TensorData::Fp32(vec![1.0, 2.0]);
        let b2 = TensorData::Fp32(vec![3.0]);
        let c = TensorData::Int32(vec![3]);
        assert_eq!(TensorData::concat(&[&a, &b2]), Some(TensorData::Fp32(vec![1.0, 2.0, 3.0])));
        assert_eq!(TensorData::concat(&[&a, &c]), None);
        assert_eq!(TensorData::concat(&[]), None);
        let s = TensorData::Bytes(vec![b(b"a"), b(b"b"), b(b"c")]);
        assert_eq!(s.slice(1, 3), TensorData::Bytes(vec![b(b"b"), b(b"c")]));
        assert_eq!(TensorData::concat(&[&s.slice(0, 1), &s.slice(1, 3)]).unwrap(), s);
        assert!(a.slice(1, 1).is_empty());
        for sample in samples() {
            let n = sample.data.len();
            let joined = TensorData::concat(&[&sample.data.slice(0, n / 2), &sample.data.slice(n / 2, n)]).unwrap();
            assert_eq!(canonical(&joined), canonical(&sample.data));
        }
    }

    #[test]
    fn canonical_bytes() {
        assert_eq!(canonical(&TensorData::Bool(vec![true, false])), [1, 0]);
        assert_eq!(canonical(&TensorData::Int16(vec![-2])), [0xfe, 0xff]);
        assert_eq!(canonical(&TensorData::Uint32(vec![0x0102_0304])), [4, 3, 2, 1]);
        assert_eq!(canonical(&TensorData::Fp32(vec![1.0])), [0, 0, 0x80, 0x3f]);
        assert_eq!(canonical(&TensorData::Fp16(vec![f16::ONE])), [0, 0x3c]);
        assert_eq!(canonical(&TensorData::Fp64(vec![-0.0])), [0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(canonical(&TensorData::Bytes(vec![b(b"ab"), b(b"")])), [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        assert_ne!(canonical(&TensorData::Fp32(vec![0.0])), canonical(&TensorData::Fp32(vec![-0.0])));
        for sample in samples() {
            let (dt, n) = (sample.data.datatype(), sample.data.len());
            let back = TensorData::from_canonical(dt, &canonical(&sample.data), n).unwrap();
            assert_eq!(canonical(&back), canonical(&sample.data));
            assert_eq!(TensorData::from_canonical(dt, &canonical(&sample.data), n + 1), None);
        }
    }
}
