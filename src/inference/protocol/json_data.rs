//! An input's JSON `data`, scanned straight into a typed `Vec` once the datatype and shape are
//! known, flattening nested arrays in row-major order. Numbers are converted with the standard
//! library's correctly rounded parsers (`"0.1"` as FP32 is `0.1f32`, FP64 round-trips
//! exactly), which serde_json's default float parser does not guarantee.
//!
//! Element conversion rules for JSON `data`:
//! - integer types take JSON integers only; `1.5`, `2.0`, `1e3` and out-of-range values are
//!   rejected with the tensor named;
//! - FP types take any JSON number, plus the strings `"NaN"`, `"Infinity"` and `"-Infinity"`
//!   (any case; `"inf"`, `"-inf"`, `"nan"` too) and `null` (NaN, as JavaScript's
//!   `JSON.stringify` writes it). FP16 converts through `f16::from_f64`; values beyond a
//!   type's range become infinities, as a cast does;
//! - BOOL takes `true` / `false`; BYTES takes strings (their UTF-8 bytes).

use std::borrow::Cow;

use bytes::Bytes;
use half::f16;

use super::request::{ProtocolError, perr};
use super::tensor::{DataType, TensorData};

pub(super) enum DataError {
    /// The data holds this many elements, not the shape's count.
    Count(usize),
    /// Element `index` is not valid: `what` is its JSON text.
    Type {
        index: usize,
        what: String,
        expected: &'static str,
    },
    Range {
        index: usize,
        what: String,
    },
    Json(String),
}

impl DataError {
    pub(super) fn into_error(self, name: &str, shape: &[usize], datatype: DataType) -> ProtocolError {
        let expected_count: usize = shape.iter().product();
        perr(match self {
            DataError::Count(got) => {
                format!("input '{name}': expected {expected_count} elements for shape {shape:?}, got {got}")
            }
            DataError::Type { index, what, expected } => {
                format!("input '{name}': element {index}: expected {expected} for {datatype}, got {what}")
            }
            DataError::Range { index, what } => {
                format!("input '{name}': element {index}: {what} is out of range for {datatype}")
            }
            DataError::Json(msg) => format!("input '{name}': {msg}"),
        })
    }
}

enum Reject {
    Type,
    Range,
}

/// One JSON element converted to a tensor element type.
trait Elem: Sized {
    /// What the type accepts, for messages ("an integer").
    const EXPECTED: &'static str;
    fn wrap(v: Vec<Self>) -> TensorData;
    /// `tok` is a JSON number token.
    fn from_number(_tok: &str) -> Result<Self, Reject> {
        Err(Reject::Type)
    }
    fn from_bool(_v: bool) -> Result<Self, Reject> {
        Err(Reject::Type)
    }
    fn from_null() -> Result<Self, Reject> {
        Err(Reject::Type)
    }
    fn from_string(_s: Cow<'_, str>) -> Result<Self, Reject> {
        Err(Reject::Type)
    }
}

#[inline]
fn is_integer_token(tok: &str) -> bool {
    !tok.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'))
}

macro_rules! int_elem {
    ($t:ty, $variant:ident) => {
        impl Elem for $t {
            const EXPECTED: &'static str = "an integer";
            fn wrap(v: Vec<Self>) -> TensorData {
                TensorData::$variant(v)
            }
            #[inline]
            fn from_number(tok: &str) -> Result<Self, Reject> {
                if !is_integer_token(tok) {
                    return Err(Reject::Type);
                }
                if tok.starts_with('-') {
                    let v: i64 = tok.parse().map_err(|_| Reject::Range)?;
                    <$t>::try_from(v).map_err(|_| Reject::Range)
                } else {
                    let v: u64 = tok.parse().map_err(|_| Reject::Range)?;
                    <$t>::try_from(v).map_err(|_| Reject::Range)
                }
            }
        }
    };
}
int_elem!(u8, Uint8);
int_elem!(u16, Uint16);
int_elem!(u32, Uint32);
int_elem!(u64, Uint64);
int_elem!(i8, Int8);
int_elem!(i16, Int16);
int_elem!(i32, Int32);
int_elem!(i64, Int64);

/// `"NaN"`, `"Infinity"`, `"-Infinity"` and the other spellings Rust's float parser accepts for
/// non-finite values; finite numbers written as strings are not accepted.
fn non_finite_from_str(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|v| !v.is_finite())
}

macro_rules! float_elem {
    ($t:ty, $variant:ident, |$v:ident: f64| $from_f64:expr, |$tok:ident| $parse:expr) => {
        impl Elem for $t {
            const EXPECTED: &'static str = "a number";
            fn wrap(v: Vec<Self>) -> TensorData {
                TensorData::$variant(v)
            }
            #[inline]
            fn from_number($tok: &str) -> Result<Self, Reject> {
                // A JSON number token always parses (out-of-range values become infinities).
                $parse.map_err(|_| Reject::Type)
            }
            fn from_null() -> Result<Self, Reject> {
                let $v = f64::NAN;
                Ok($from_f64)
            }
            fn from_string(s: Cow<'_, str>) -> Result<Self, Reject> {
                let $v = non_finite_from_str(&s).ok_or(Reject::Type)?;
                Ok($from_f64)
            }
        }
    };
}
float_elem!(f32, Fp32, |v: f64| v as f32, |tok| tok.parse::<f32>());
float_elem!(f64, Fp64, |v: f64| v, |tok| tok.parse::<f64>());
float_elem!(f16, Fp16, |v: f64| f16::from_f64(v), |tok| tok.parse::<f64>().map(f16::from_f64));

impl Elem for bool {
    const EXPECTED: &'static str = "true or false";
    fn wrap(v: Vec<Self>) -> TensorData {
        TensorData::Bool(v)
    }
    fn from_bool(v: bool) -> Result<Self, Reject> {
        Ok(v)
    }
}

impl Elem for Bytes {
    const EXPECTED: &'static str = "a string";
    fn wrap(v: Vec<Self>) -> TensorData {
        TensorData::Bytes(v)
    }
    fn from_string(s: Cow<'_, str>) -> Result<Self, Reject> {
        Ok(match s {
            Cow::Borrowed(s) => Bytes::copy_from_slice(s.as_bytes()),
            Cow::Owned(s) => Bytes::from(s),
        })
    }
}

pub(super) fn parse_json_data(datatype: DataType, raw: &str, count: usize) -> Result<TensorData, DataError> {
    match datatype {
        DataType::Bool => scan::<bool>(raw, count),
        DataType::Uint8 => scan::<u8>(raw, count),
        DataType::Uint16 => scan::<u16>(raw, count),
        DataType::Uint32 => scan::<u32>(raw, count),
        DataType::Uint64 => scan::<u64>(raw, count),
        DataType::Int8 => scan::<i8>(raw, count),
        DataType::Int16 => scan::<i16>(raw, count),
        DataType::Int32 => scan::<i32>(raw, count),
        DataType::Int64 => scan::<i64>(raw, count),
        DataType::Fp16 => scan::<f16>(raw, count),
        DataType::Fp32 => scan::<f32>(raw, count),
        DataType::Fp64 => scan::<f64>(raw, count),
        DataType::Bytes => scan::<Bytes>(raw, count),
    }
}

/// Shortens a JSON token, or any text a caller sent, for an error message: 40 bytes and "...".
pub(super) fn describe(tok: &str) -> String {
    crate::error::shortened(tok, 43)
}

/// Flattens a JSON value (a scalar, or arrays nested to any depth) into elements of `T`.
///
/// `raw` has already been validated as JSON by serde_json (it is a `RawValue`), so this only
/// needs to find the scalars: brackets, commas and whitespace all separate them. Objects are
/// the one valid JSON construct that is not tensor data.
fn scan<T: Elem>(raw: &str, count: usize) -> Result<TensorData, DataError> {
    let b = raw.as_bytes();
    // Every element takes at least two bytes ("1,"), which bounds the allocation by the body
    // whatever shape is declared.
    let mut out: Vec<T> = Vec::with_capacity(count.min(b.len() / 2 + 1));
    let mut seen = 0usize;
    let mut i = 0usize;
    while i < b.len() {
        let start = i;
        let result = match b[i] {
            b'[' | b']' | b',' | b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'{' => {
                return Err(DataError::Type { index: seen, what: "an object".to_owned(), expected: T::EXPECTED });
            }
            b'"' => {
                i += 1;
                let mut escaped = false;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        escaped = true;
                        i += 1;
                    }
                    i += 1;
                }
                // Past the closing quote (valid JSON always has one; the bound keeps slicing
                // in range regardless).
                i = (i + 1).min(b.len());
                let tok = &raw[start..i];
                let s = if escaped {
                    Cow::Owned(serde_json::from_str::<String>(tok).map_err(|e| DataError::Json(e.to_string()))?)
                } else {
                    Cow::Borrowed(raw.get(start + 1..i - 1).unwrap_or(""))
                };
                T::from_string(s)
            }
            b't' => {
                i = (i + 4).min(b.len());
                T::from_bool(true)
            }
            b'f' => {
                i = (i + 5).min(b.len());
                T::from_bool(false)
            }
            b'n' => {
                i = (i + 4).min(b.len());
                T::from_null()
            }
            _ => {
                while i < b.len() && !matches!(b[i], b',' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    i += 1;
                }
                T::from_number(&raw[start..i])
            }
        };
        match result {
            Ok(v) => {
                if seen < count {
                    out.push(v);
                }
            }
            Err(Reject::Type) => {
                return Err(DataError::Type { index: seen, what: describe(&raw[start..i]), expected: T::EXPECTED });
            }
            Err(Reject::Range) => return Err(DataError::Range { index: seen, what: describe(&raw[start..i]) }),
        }
        seen += 1;
    }
    if seen != count {
        return Err(DataError::Count(seen));
    }
    Ok(T::wrap(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::protocol::test_support::{b, err, one, parse};

    #[test]
    fn float_inputs_accept_integers_specials_and_null() {
        let r = parse(&one("FP32", "[7]", r#"[1, -2, 0.5, "nan", "-inf", "Infinity", null]"#)).unwrap();
        let TensorData::Fp32(v) = &r.inputs[0].data else { panic!() };
        assert_eq!(&v[..3], &[1.0, -2.0, 0.5]);
        assert!(v[3].is_nan() && v[4] == f32::NEG_INFINITY && v[5] == f32::INFINITY && v[6].is_nan());
        // Correct rounding straight to f32, and to f16 through f64.
        let r = parse(&one("FP32", "[2]", "[0.1, 1e39]")).unwrap();
        assert_eq!(r.inputs[0].data, TensorData::Fp32(vec![0.1f32, f32::INFINITY]));
        let r = parse(&one("FP16", "[3]", "[0.1, 65504, 1]")).unwrap();
        assert_eq!(r.inputs[0].data, TensorData::Fp16(vec![f16::from_f64(0.1), f16::MAX, f16::ONE]));
        let r = parse(&one("FP64", "[2]", "[5e-324, -0.0]")).unwrap();
        let TensorData::Fp64(v) = &r.inputs[0].data else { panic!() };
        assert_eq!(v[0].to_bits(), 1);
        assert!(v[1] == 0.0 && v[1].is_sign_negative());
    }

    #[test]
    fn nested_and_flat_data_are_the_same() {
        let flat = parse(&one("INT32", "[2, 2]", "[1, 2, 3, 4]")).unwrap();
        let nested = parse(&one("INT32", "[2, 2]", "[[1, 2], [3, 4]]")).unwrap();
        let deep = parse(&one("INT32", "[2, 2]", " [ [[1],[2]] ,\n[[3], [4]] ] ")).unwrap();
        assert_eq!(flat.inputs[0].data, TensorData::Int32(vec![1, 2, 3, 4]));
        assert_eq!(flat, nested);
        assert_eq!(flat, deep);
        // A scalar tensor: shape [] has one element, given bare or in an array.
        let bare = parse(&one("INT64", "[]", "5")).unwrap();
        let boxed = parse(&one("INT64", "[]", "[5]")).unwrap();
        assert_eq!(bare.inputs[0].data, TensorData::Int64(vec![5]));
        assert_eq!(bare, boxed);
        let empty = parse(&one("FP32", "[0, 3]", "[]")).unwrap();
        assert_eq!(empty.inputs[0].data, TensorData::Fp32(vec![]));
        let strings = parse(&one("BYTES", "[2]", r#"[["a\"\u00e9\n"], ["]"]]"#)).unwrap();
        assert_eq!(strings.inputs[0].data, TensorData::Bytes(vec![b("a\"\u{e9}\n".as_bytes()), b(b"]")]));
        let bools = parse(&one("BOOL", "[1, 2]", "[[true, false]]")).unwrap();
        assert_eq!(bools.inputs[0].data, TensorData::Bool(vec![true, false]));
    }

    #[test]
    fn element_errors_name_the_tensor() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("UINT8", "[2]", "[1, 300]", "input 'x': element 1: 300 is out of range for UINT8"),
            ("UINT32", "[1]", "[-1]", "input 'x': element 0: -1 is out of range for UINT32"),
            ("INT8", "[1]", "[-129]", "input 'x': element 0: -129 is out of range for INT8"),
            (
                "INT64",
                "[1]",
                "[9223372036854775808]",
                "input 'x': element 0: 9223372036854775808 is out of range for INT64",
            ),
            (
                "UINT64",
                "[1]",
                "[18446744073709551616]",
                "input 'x': element 0: 18446744073709551616 is out of range for UINT64",
            ),
            ("INT32", "[1, 2]", "[[1, 1.5]]", "input 'x': element 1: expected an integer for INT32, got 1.5"),
            ("INT32", "[1]", "[2.0]", "input 'x': element 0: expected an integer for INT32, got 2.0"),
            ("INT16", "[1]", "[1e3]", "input 'x': element 0: expected an integer for INT16, got 1e3"),
            ("INT32", "[1]", r#"["1"]"#, r#"input 'x': element 0: expected an integer for INT32, got "1""#),
            ("BOOL", "[2]", "[true, 1]", "input 'x': element 1: expected true or false for BOOL, got 1"),
            ("BYTES", "[1]", "[5]", "input 'x': element 0: expected a string for BYTES, got 5"),
            ("BYTES", "[1]", "[null]", "input 'x': element 0: expected a string for BYTES, got null"),
            ("FP32", "[1]", r#"["abc"]"#, r#"input 'x': element 0: expected a number for FP32, got "abc""#),
            ("FP32", "[1]", r#"["1.5"]"#, r#"input 'x': element 0: expected a number for FP32, got "1.5""#),
            ("FP64", "[1]", "[false]", "input 'x': element 0: expected a number for FP64, got false"),
            ("FP16", "[1]", r#"[{"a":1}]"#, "input 'x': element 0: expected a number for FP16, got an object"),
            ("FP32", "[2, 4]", "[1,2,3,4,5,6]", "input 'x': expected 8 elements for shape [2, 4], got 6"),
            ("FP32", "[2, 4]", "[[1,2,3,4],[5,6,7,8],[9]]", "input 'x': expected 8 elements for shape [2, 4], got 9"),
            ("INT32", "[]", "[]", "input 'x': expected 1 elements for shape [], got 0"),
            ("FP32", "[-1]", "[]", "input 'x': shape dimensions must be non-negative integers, got -1"),
            ("FP32", "[1.5]", "[]", "input 'x': shape dimensions must be non-negative integers, got 1.5"),
            ("FP32", r#"["2"]"#, "[]", r#"input 'x': shape dimensions must be non-negative integers, got "2""#),
            ("BF16", "[1]", "[1]", "input 'x': unsupported datatype 'BF16'"),
            ("fp32", "[1]", "[1]", "input 'x': unsupported datatype 'fp32'"),
        ];
        for (dt, shape, data, want) in cases {
            assert_eq!(err(&one(dt, shape, data)), *want, "{dt} {shape} {data}");
        }
        let long = format!("[\"{}\"]", "y".repeat(100));
        assert_eq!(
            err(&one("INT8", "[1]", &long)),
            format!("input 'x': element 0: expected an integer for INT8, got \"{}...", "y".repeat(39))
        );
    }
}
