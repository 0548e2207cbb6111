//! The reference floor for `deploy/local/bench-inference.sh`: a bare actix-web OIP handler
//! that parses the request JSON and calls ONNX Runtime inline on the HTTP worker, with no
//! authentication, tenancy, validation, batching, metrics or audit. Whatever Tessera adds is
//! the gap between this and Tessera in the same run.
//!
//!     BARE_MODEL=tiny.onnx BARE_PORT=18991 ORT_DYLIB_PATH=… target/release/deps/bare_oip-…

use std::cell::RefCell;

use actix_web::{App, HttpResponse, HttpServer, web};
use ort::session::Session;
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Request {
    inputs: Vec<Input>,
}

#[derive(Deserialize)]
struct Input {
    shape: Vec<usize>,
    data: Vec<f32>,
}

#[derive(Serialize)]
struct Response<'a> {
    model_name: &'a str,
    outputs: Vec<Output<'a>>,
}

#[derive(Serialize)]
struct Output<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: Vec<i64>,
    data: &'a [f32],
}

static ENV: std::sync::OnceLock<ort::environment::Environment> = std::sync::OnceLock::new();

thread_local! {
    static SESSION: RefCell<Option<(Session, String, String)>> = const { RefCell::new(None) };
}

fn session_for_thread() -> (Session, String, String) {
    let model = std::fs::read(std::env::var("BARE_MODEL").expect("BARE_MODEL")).expect("model file");
    let build = || -> ort::Result<Session> {
        Session::builder(ENV.get().expect("environment"))?.with_intra_threads(1)?.with_inter_threads(1)?.commit_from_memory(&model)
    };
    let session = build().expect("session");
    let input = session.inputs()[0].name().to_owned();
    let output = session.outputs()[0].name().to_owned();
    (session, input, output)
}

async fn infer(body: web::Bytes) -> HttpResponse {
    let Ok(request) = serde_json::from_slice::<Request>(&body) else {
        return HttpResponse::BadRequest().json(serde_json::json!({ "error": "bad request" }));
    };
    let Some(input) = request.inputs.first() else {
        return HttpResponse::BadRequest().json(serde_json::json!({ "error": "no input" }));
    };
    SESSION.with(|cell| {
        let mut slot = cell.borrow_mut();
        let (session, input_name, output_name) = slot.get_or_insert_with(session_for_thread);
        let tensor = TensorRef::from_array_view((input.shape.clone(), &input.data[..])).expect("tensor");
        let outputs = session.run(ort::inputs![input_name.as_str() => tensor]).expect("run");
        let (shape, data) = outputs[output_name.as_str()].try_extract_tensor::<f32>().expect("f32 output");
        let response = Response {
            model_name: "bare",
            outputs: vec![Output { name: output_name, datatype: "FP32", shape: shape.to_vec(), data }],
        };
        HttpResponse::Ok().json(response)
    })
}

fn main() -> std::io::Result<()> {
    let path = std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH");
    let env = ort::init_from(&path).expect("ONNX Runtime loads").with_name("bare").with_telemetry(false).build().expect("environment");
    let _ = ENV.set(env);
    let port: u16 = std::env::var("BARE_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(18991);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(|| {
            App::new()
                .route("/v2/health/ready", web::get().to(HttpResponse::Ok))
                .route("/v2/models/{name}/infer", web::post().to(infer))
        })
        .workers(2)
        .bind(("127.0.0.1", port))?
        .run()
        .await
    })
}
