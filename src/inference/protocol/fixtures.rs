//! The codec against tritonclient: request bodies it wrote, and the response bodies
//! `check_responses.py` reads with it (`tests/fixtures/oip`).

use bytes::Bytes;
use half::f16;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::test_support::{b, canonical, samples};
use super::{
    EncodedResponse, InferOutput, InferRequest, Limits, TensorData, encode_infer_response, parse_infer_request,
    parse_infer_request_bytes,
};

fn fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oip")
}

#[derive(Deserialize)]
struct Manifest<'a> {
    #[serde(borrow)]
    cases: Vec<Case<'a>>,
}

#[derive(Deserialize)]
struct Case<'a> {
    case: String,
    body: String,
    header_length: Option<usize>,
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    inputs: Vec<CaseInput<'a>>,
    outputs: Vec<CaseOutput>,
    binary_data_output: bool,
}

#[derive(Deserialize)]
struct CaseInput<'a> {
    name: String,
    datatype: String,
    shape: Vec<usize>,
    #[serde(borrow)]
    values: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct CaseOutput {
    name: String,
    binary_data: bool,
    class_count: usize,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// The element at `i` as the manifest's JSON token would write it, compared by value (the
/// tokens are parsed with the standard library, not with the code under test).
fn assert_element(data: &TensorData, i: usize, token: &str, what: &str) {
    let int = || token.parse::<i128>().unwrap();
    // Non-finite values are the strings "NaN", "Infinity", "-Infinity"; any NaN matches.
    let same = |got: f64| {
        let want = token.trim_matches('"').parse::<f64>().unwrap();
        if want.is_nan() { got.is_nan() } else { got.to_bits() == want.to_bits() }
    };
    let ok = match data {
        TensorData::Bool(v) => v[i] == (token == "true"),
        TensorData::Uint8(v) => v[i] as i128 == int(),
        TensorData::Uint16(v) => v[i] as i128 == int(),
        TensorData::Uint32(v) => v[i] as i128 == int(),
        TensorData::Uint64(v) => v[i] as i128 == int(),
        TensorData::Int8(v) => v[i] as i128 == int(),
        TensorData::Int16(v) => v[i] as i128 == int(),
        TensorData::Int32(v) => v[i] as i128 == int(),
        TensorData::Int64(v) => v[i] as i128 == int(),
        TensorData::Fp16(v) => same(v[i].to_f64()),
        TensorData::Fp32(v) => same(v[i] as f64),
        TensorData::Fp64(v) => same(v[i]),
        TensorData::Bytes(v) => v[i] == unhex(token.trim_matches('"')),
    };
    assert!(ok, "{what}: element {i} is {data:?}, expected {token}");
}

#[test]
fn tritonclient_request_fixtures() {
    let dir = fixture_dir();
    let manifest_text = std::fs::read_to_string(dir.join("requests.json")).unwrap();
    let manifest: Manifest<'_> = serde_json::from_str(&manifest_text).unwrap();
    assert!(manifest.cases.len() >= 17);
    for case in &manifest.cases {
        let body = std::fs::read(dir.join(&case.body)).unwrap();
        let r = parse_infer_request(&body, case.header_length, &Limits::default())
            .unwrap_or_else(|e| panic!("{}: {e}", case.case));
        let shared =
            parse_infer_request_bytes(&Bytes::from(body.clone()), case.header_length, &Limits::default()).unwrap();
        // Field by field: NaN elements make `==` on the whole request false.
        assert_eq!((&r.id, &r.parameters, &r.outputs), (&shared.id, &shared.parameters, &shared.outputs));
        let canon = |req: &InferRequest| -> Vec<(String, Vec<usize>, Vec<u8>)> {
            req.inputs.iter().map(|i| (i.name.clone(), i.shape.clone(), canonical(&i.data))).collect()
        };
        assert_eq!(canon(&r), canon(&shared), "{}", case.case);
        assert_eq!(r.id, case.id, "{}", case.case);
        assert_eq!(r.parameters, case.parameters.clone().unwrap_or_default(), "{}", case.case);
        assert_eq!(r.binary_data_output, case.binary_data_output, "{}", case.case);
        let outputs: Vec<(&str, bool, usize)> =
            r.outputs.iter().map(|o| (o.name.as_str(), o.binary_data, o.class_count)).collect();
        let want: Vec<(&str, bool, usize)> =
            case.outputs.iter().map(|o| (o.name.as_str(), o.binary_data, o.class_count)).collect();
        assert_eq!(outputs, want, "{}", case.case);
        assert_eq!(r.inputs.len(), case.inputs.len(), "{}", case.case);
        for (got, want) in r.inputs.iter().zip(&case.inputs) {
            let what = format!("{} / {}", case.case, want.name);
            assert_eq!(got.name, want.name, "{what}");
            assert_eq!(got.datatype.as_str(), want.datatype, "{what}");
            assert_eq!(got.data.datatype(), got.datatype, "{what}");
            assert_eq!(got.shape, want.shape, "{what}");
            assert_eq!(got.data.len(), want.values.len(), "{what}");
            for (i, token) in want.values.iter().enumerate() {
                assert_element(&got.data, i, token.get(), &what);
            }
        }
    }
}

/// The responses `check_responses.py` reads with tritonclient. The encoder must keep
/// producing these bytes; `OIP_BLESS_FIXTURES=1` rewrites them after an intended change
/// (then run check_responses.py again).
fn response_cases() -> Vec<(&'static str, EncodedResponse, Vec<InferOutput>)> {
    let mut specials = vec![
        InferOutput {
            name: "f32_special".into(),
            shape: vec![2, 2],
            data: TensorData::Fp32(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0]),
        },
        InferOutput {
            name: "f64_special".into(),
            shape: vec![3],
            data: TensorData::Fp64(vec![f64::NAN, f64::INFINITY, 1e-310]),
        },
        InferOutput {
            name: "f16_special".into(),
            shape: vec![2],
            data: TensorData::Fp16(vec![f16::NEG_INFINITY, f16::NAN]),
        },
        InferOutput {
            name: "bytes_raw".into(),
            shape: vec![2],
            data: TensorData::Bytes(vec![b(b"\xff\x00z"), b(b"ok")]),
        },
    ];
    let mut everything = samples();
    everything.append(&mut specials);
    let mut params = Map::new();
    params.insert("sequence_id".into(), Value::from(7));
    vec![
        (
            "response_binary",
            encode_infer_response("model-a", Some("3"), Some("req-1"), None, &everything, |_| true),
            everything.clone(),
        ),
        (
            "response_json",
            encode_infer_response("model-a", None, None, None, &everything, |_| false),
            everything.clone(),
        ),
        (
            "response_mixed",
            encode_infer_response("model-a", Some("1"), Some("req-42"), Some(&params), &everything, |n| {
                n.len() % 2 == 1
            }),
            everything,
        ),
    ]
}

fn expected_values_json(data: &TensorData) -> String {
    // Written with Rust's own float formatting (not the encoder's), so that
    // check_responses.py compares the encoder against an independent rendering.
    fn float(x: f64) -> String {
        if x.is_nan() {
            "\"NaN\"".into()
        } else if x.is_infinite() {
            if x > 0.0 { "\"Infinity\"".into() } else { "\"-Infinity\"".into() }
        } else {
            format!("{x:?}")
        }
    }
    let items: Vec<String> = match data {
        TensorData::Bool(v) => v.iter().map(|x| x.to_string()).collect(),
        TensorData::Uint8(v) => v.iter().map(|x| x.to_string()).collect(),
        TensorData::Uint16(v) => v.iter().map(|x| x.to_string()).collect(),
        TensorData::Uint32(v) => v.iter().map(|x| x.to_string()).collect(),
        TensorData::Uint64(v) => v.iter().map(|x| x.to_string()).collect(),
        TensorData::Int8(v) => v.iter().map(|x| x.to_string()).collect(),
        TensorData::Int16(v) => v.iter().map(|x| x.to_string()).collect(),
        TensorData::Int32(v) => v.iter().map(|x| x.to_string()).collect(),
        TensorData::Int64(v) => v.iter().map(|x| x.to_string()).collect(),
        TensorData::Fp16(v) => v.iter().map(|x| float(x.to_f64())).collect(),
        TensorData::Fp32(v) => v.iter().map(|&x| float(x as f64)).collect(),
        TensorData::Fp64(v) => v.iter().map(|&x| float(x)).collect(),
        TensorData::Bytes(v) => {
            v.iter().map(|x| format!("\"{}\"", x.iter().map(|c| format!("{c:02x}")).collect::<String>())).collect()
        }
    };
    format!("[{}]", items.join(","))
}

#[test]
fn tritonclient_response_fixtures() {
    let dir = fixture_dir();
    let bless = std::env::var_os("OIP_BLESS_FIXTURES").is_some();
    let mut manifest = String::from("{\"cases\":[\n");
    for (k, (name, resp, outputs)) in response_cases().into_iter().enumerate() {
        let file = format!("{name}.body");
        if bless {
            std::fs::write(dir.join(&file), &resp.body).unwrap();
        } else {
            let want = std::fs::read(dir.join(&file)).unwrap();
            assert!(want == resp.body, "{file} differs from the encoder's output (OIP_BLESS_FIXTURES=1 rewrites it)");
        }
        let outs: Vec<String> = outputs
            .iter()
            .map(|o| {
                format!(
                    "  {{\"name\":\"{}\",\"datatype\":\"{}\",\"shape\":{:?},\"values\":{}}}",
                    o.name,
                    o.data.datatype(),
                    o.shape,
                    expected_values_json(&o.data)
                )
            })
            .collect();
        let header = resp.json_len.map_or("null".to_owned(), |n| n.to_string());
        manifest.push_str(&format!(
            "{}{{\"case\":\"{name}\",\"body\":\"{file}\",\"header_length\":{header},\"outputs\":[\n{}]}}",
            if k > 0 { ",\n" } else { "" },
            outs.join(",\n")
        ));
    }
    manifest.push_str("\n]}\n");
    if bless {
        std::fs::write(dir.join("responses.json"), &manifest).unwrap();
    } else {
        assert_eq!(std::fs::read_to_string(dir.join("responses.json")).unwrap(), manifest);
    }
}
