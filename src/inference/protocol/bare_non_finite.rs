//! tritonclient (rapidjson) writes NaN and infinities in JSON data as the bare tokens `NaN`,
//! `Infinity` and `-Infinity`, which are not JSON.
//! [`parse_infer_request`](super::parse_infer_request) accepts them: a body serde_json rejects
//! is retried once with such tokens quoted (the common path never pays for this).

/// `json` with every bare `NaN`, `Infinity` and `-Infinity` token outside strings quoted;
/// `None` when there is none.
pub(super) fn quote_non_finite(json: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut copied = 0; // json[..copied] is in `out`
    let mut in_string = false;
    let mut i = 0;
    while i < json.len() {
        let c = json[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let token: &[u8] = match c {
            b'N' => b"NaN",
            b'I' => b"Infinity",
            b'-' => b"-Infinity",
            _ => {
                i += 1;
                continue;
            }
        };
        let follows_separator =
            json[..i].iter().rev().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| b"[,:".contains(b));
        if follows_separator && json[i..].starts_with(token) {
            if out.is_empty() {
                out.reserve(json.len() + 16);
            }
            out.extend_from_slice(&json[copied..i]);
            out.push(b'"');
            out.extend_from_slice(token);
            out.push(b'"');
            i += token.len();
            copied = i;
        } else {
            i += 1;
        }
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&json[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::inference::protocol::TensorData;
    use crate::inference::protocol::test_support::{err, one, parse};

    #[test]
    fn bare_non_finite_tokens_are_accepted() {
        // What tritonclient sends for NaN / inf in JSON data (rapidjson's default output).
        let json = r#"{"id":"NaN,Infinity","inputs":[{"name":"x","datatype":"FP32","shape":[2,2],"data":[[NaN, Infinity],[-Infinity,1.0]]},
            {"name":"y","datatype":"FP64","shape":[1],"data":[ NaN ]}],"parameters":{"p":"-Infinity"}}"#;
        let r = parse(json).unwrap();
        assert_eq!(r.id.as_deref(), Some("NaN,Infinity"));
        assert_eq!(r.parameters.get("p"), Some(&Value::from("-Infinity")));
        let TensorData::Fp32(v) = &r.inputs[0].data else { panic!() };
        assert!(v[0].is_nan() && v[1] == f32::INFINITY && v[2] == f32::NEG_INFINITY && v[3] == 1.0);
        let TensorData::Fp64(v) = &r.inputs[1].data else { panic!() };
        assert!(v[0].is_nan());
        assert_eq!(
            err(&one("INT32", "[1]", "[NaN]")),
            r#"input 'x': element 0: expected an integer for INT32, got "NaN""#
        );
        // Still an error, reported at the client's own positions, when quoting does not help.
        assert_eq!(
            err(r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[NaN,]}]}"#),
            "malformed inference request: expected value at line 1 column 62"
        );
        assert_eq!(err(r#"{"inputs":[NaNa]}"#), "malformed inference request: expected value at line 1 column 12");
    }
}
