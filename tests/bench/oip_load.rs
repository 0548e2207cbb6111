//! A closed-loop load generator for the Open Inference Protocol over both of Tessera's
//! protocols, so that HTTP and gRPC are measured by the same client with the same request:
//! `CONNECTIONS` connections, each with one call in flight at a time, for `DURATION` seconds.
//!
//!     oip_load http|grpc|grpc-typed HOST:PORT MODEL BODY_FILE CONNECTIONS DURATION [TOKEN]
//!
//! BODY_FILE is an OIP JSON request (FP32 inputs with `data`); gRPC sends the same tensors in
//! `raw_input_contents` (`grpc`) or typed `fp32_contents` (`grpc-typed`). HTTP/1.1 keeps its
//! connections alive; gRPC runs over HTTP/2, one connection per stream as a client pool would.
//!
//! Every answer is checked: a success must carry the same outputs as the first one (`bad`
//! counts those that differ), anything else is counted by its status. Prints one line:
//! `rps=… p50_ms=… p99_ms=… ok=N bad=N limited=N other=N errors=N cpu_s=…`, the last being
//! the load generator's own CPU time (user and system), so that a run can tell the client's
//! cost per call from the server's.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tessera::grpc::proto::model_infer_request::InferInputTensor;
use tessera::grpc::proto::{InferTensorContents, ModelInferRequest, ModelInferResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Http,
    Grpc,
    GrpcTyped,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    ok: u64,
    bad: u64,
    limited: u64,
    other: u64,
    errors: u64,
}

/// What one call answered: its outputs (to compare), or a refusal's status.
enum Outcome {
    Ok(Bytes),
    Limited,
    Other,
}

struct Target {
    protocol: Protocol,
    address: String,
    /// HTTP: the whole request, headers and body. gRPC: the framed message.
    request: Bytes,
    path: String,
    token: Option<String>,
}

fn grpc_request(model: &str, body: &serde_json::Value, typed: bool) -> ModelInferRequest {
    let mut message = ModelInferRequest { model_name: model.to_owned(), ..Default::default() };
    for input in body["inputs"].as_array().expect("inputs") {
        let data: Vec<f32> = input["data"].as_array().expect("data").iter().map(|v| v.as_f64().expect("a number") as f32).collect();
        let mut tensor = InferInputTensor {
            name: input["name"].as_str().expect("name").to_owned(),
            datatype: input["datatype"].as_str().expect("datatype").to_owned(),
            shape: input["shape"].as_array().expect("shape").iter().map(|d| d.as_i64().expect("a dimension")).collect(),
            ..Default::default()
        };
        assert_eq!(tensor.datatype, "FP32", "the load generator sends FP32 inputs");
        if typed {
            tensor.contents = Some(InferTensorContents { fp32_contents: data, ..Default::default() });
        } else {
            message.raw_input_contents.push(data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into());
        }
        message.inputs.push(tensor);
    }
    message
}

impl Target {
    async fn connection(self: Arc<Self>, stop: Arc<AtomicBool>) -> io::Result<Tally> {
        let mut tally = Tally::default();
        let mut first: Option<Bytes> = None;
        let stream = TcpStream::connect(&self.address).await?;
        stream.set_nodelay(true)?;
        match self.protocol {
            Protocol::Http => {
                let mut http = Http1 { stream, buffer: BytesMut::with_capacity(64 * 1024) };
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let outcome = http.call(&self.request).await;
                    tally.record(started, outcome, &mut first);
                }
            }
            Protocol::Grpc | Protocol::GrpcTyped => {
                let (client, connection) = h2::client::handshake(stream).await.map_err(io::Error::other)?;
                tokio::spawn(connection);
                let mut client = client;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let outcome = self.grpc_call(&mut client).await;
                    tally.record(started, outcome, &mut first);
                }
            }
        }
        Ok(tally)
    }

    async fn grpc_call(&self, client: &mut h2::client::SendRequest<Bytes>) -> io::Result<Outcome> {
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{}", self.address, self.path))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(()).expect("a valid request");
        let mut ready = client.clone().ready().await.map_err(io::Error::other)?;
        let (response, mut send) = ready.send_request(request, false).map_err(io::Error::other)?;
        send.send_data(self.request.clone(), true).map_err(io::Error::other)?;
        let response = response.await.map_err(io::Error::other)?;
        let status_of = |headers: &http::HeaderMap| headers.get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_owned);
        // A trailers-only answer (a refusal) carries its status in the headers.
        let early = status_of(response.headers());
        let mut body = response.into_body();
        let mut payload = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(io::Error::other)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            payload.extend_from_slice(&chunk);
        }
        let status = match early {
            Some(status) => status,
            None => body.trailers().await.map_err(io::Error::other)?.as_ref().and_then(status_of).unwrap_or_default(),
        };
        Ok(match status.as_str() {
            "0" if payload.len() >= 5 => {
                let mut frame = payload.freeze();
                frame.advance(5);
                // The outputs, not the id or parameters, are what must not change.
                let answer = ModelInferResponse::decode(frame).map_err(io::Error::other)?;
                let mut outputs = Vec::new();
                for (tensor, raw) in answer.outputs.iter().zip(answer.raw_output_contents.iter().map(Some).chain(std::iter::repeat(None))) {
                    outputs.extend_from_slice(tensor.name.as_bytes());
                    tensor.shape.iter().for_each(|d| outputs.extend_from_slice(&d.to_le_bytes()));
                    match raw {
                        Some(raw) => outputs.extend_from_slice(raw),
                        None => outputs.extend_from_slice(&tensor.contents.as_ref().map(Message::encode_to_vec).unwrap_or_default()),
                    }
                }
                Outcome::Ok(outputs.into())
            }
            "8" => Outcome::Limited,
            _ => Outcome::Other,
        })
    }
}

impl Tally {
    fn record(&mut self, started: Instant, outcome: io::Result<Outcome>, first: &mut Option<Bytes>) {
        let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        match outcome {
            Ok(Outcome::Ok(outputs)) => {
                self.latencies_us.push(micros);
                match first {
                    None => *first = Some(outputs),
                    Some(expected) if *expected == outputs => {}
                    Some(_) => self.bad += 1,
                }
                self.ok += 1;
            }
            Ok(Outcome::Limited) => self.limited += 1,
            Ok(Outcome::Other) => self.other += 1,
            Err(_) => self.errors += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.ok += other.ok;
        self.bad += other.bad;
        self.limited += other.limited;
        self.other += other.other;
        self.errors += other.errors;
    }
}

/// A keep-alive HTTP/1.1 connection reading `Content-Length` answers.
struct Http1 {
    stream: TcpStream,
    buffer: BytesMut,
}

impl Http1 {
    async fn call(&mut self, request: &[u8]) -> io::Result<Outcome> {
        self.stream.write_all(request).await?;
        let (status, length, head) = loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buffer[..end]).map_err(io::Error::other)?;
                let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| io::Error::other("no status line"))?;
                let length: usize = head
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().parse()))
                    .ok_or_else(|| io::Error::other("no content-length"))?
                    .map_err(io::Error::other)?;
                break (status, length, end + 4);
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
        };
        while self.buffer.len() < head + length {
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
        }
        let mut answer = self.buffer.split_to(head + length);
        answer.advance(head);
        Ok(match status {
            200..=299 => Outcome::Ok(outputs_of_json(&answer)),
            429 => Outcome::Limited,
            _ => Outcome::Other,
        })
    }
}

/// The outputs of a JSON answer (the id and parameters may differ between calls).
fn outputs_of_json(body: &[u8]) -> Bytes {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    Bytes::from(value["outputs"].to_string())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let [protocol, address, model, body_file, connections, duration, rest @ ..] = args.as_slice() else {
        eprintln!("usage: oip_load http|grpc|grpc-typed HOST:PORT MODEL BODY_FILE CONNECTIONS DURATION [TOKEN]");
        std::process::exit(2);
    };
    let protocol = match protocol.as_str() {
        "http" => Protocol::Http,
        "grpc" => Protocol::Grpc,
        "grpc-typed" => Protocol::GrpcTyped,
        other => panic!("unknown protocol {other}"),
    };
    let connections: usize = connections.parse().expect("CONNECTIONS is a number");
    let duration = Duration::from_secs_f64(duration.parse().expect("DURATION is seconds"));
    let token = rest.first().cloned();
    let body = std::fs::read(body_file)?;
    let (request, path) = match protocol {
        Protocol::Http => {
            let path = format!("/v2/models/{model}/infer");
            let mut head = format!("POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
            if let Some(token) = &token {
                head.push_str(&format!("Authorization: Bearer {token}\r\n"));
            }
            head.push_str("\r\n");
            let mut request = BytesMut::from(head.as_bytes());
            request.extend_from_slice(&body);
            (request.freeze(), path)
        }
        Protocol::Grpc | Protocol::GrpcTyped => {
            let json: serde_json::Value = serde_json::from_slice(&body).expect("BODY_FILE is JSON");
            let message = grpc_request(model, &json, protocol == Protocol::GrpcTyped).encode_to_vec();
            let mut framed = BytesMut::with_capacity(5 + message.len());
            framed.put_u8(0);
            framed.put_u32(u32::try_from(message.len()).expect("a message under 4 GiB"));
            framed.extend_from_slice(&message);
            (framed.freeze(), "/inference.GRPCInferenceService/ModelInfer".to_owned())
        }
    };
    let target = Arc::new(Target { protocol, address: address.clone(), request, path, token });
    // As wrk -t1: one thread drives every connection, leaving the rest of the machine to the server.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (tally, elapsed) = runtime.block_on(async move {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks: Vec<_> = (0..connections).map(|_| tokio::spawn(target.clone().connection(stop.clone()))).collect();
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for task in tasks {
            match task.await {
                Ok(Ok(one)) => tally.merge(one),
                _ => tally.errors += 1,
            }
        }
        (tally, started.elapsed())
    });
    let mut latencies = tally.latencies_us;
    latencies.sort_unstable();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).map_or(0.0, |us| *us as f64 / 1000.0);
    println!(
        "rps={:.0} p50_ms={:.3} p99_ms={:.3} ok={} bad={} limited={} other={} errors={} cpu_s={:.2}",
        tally.ok as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        tally.ok,
        tally.bad,
        tally.limited,
        tally.other,
        tally.errors,
        own_cpu_seconds()
    );
    Ok(())
}

/// This process's user and system CPU time so far (`/proc/self/stat`, in USER_HZ ticks).
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are the 14th and 15th fields: the 12th and 13th after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}
