//! A small HTTP client for a running Tessera server, behind the CLI's remote commands
//! (`tessera model upload`). Artifacts are hashed and sent as streams, never held in memory.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use futures::{Stream, TryStreamExt};
use reqwest::header;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// Upload and hashing chunk size.
pub const CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused with an RFC 9457 problem.
    #[error("{detail} ({code})")]
    Problem { status: u16, code: String, detail: String },
    /// An answer that is neither what was asked for nor a problem document.
    #[error("unexpected answer from the server ({status}): {body}")]
    Unexpected { status: u16, body: String },
    #[error("request to the server failed")]
    Request(#[from] reqwest::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The problem's code, when the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Problem { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct ProblemBody {
    code: String,
    detail: String,
}

/// The parts of a version the CLI reports.
#[derive(Debug, Deserialize)]
pub struct UploadedVersion {
    pub model: String,
    pub version: i32,
    pub size_bytes: u64,
    pub sha256: String,
    pub signature: Option<serde_json::Value>,
    pub burn: Option<serde_json::Value>,
}

/// A new model, as `POST /v1/tenants/{tenant}/models` takes it.
#[derive(Debug, serde::Serialize)]
pub struct NewModel<'a> {
    pub name: &'a str,
    pub framework: &'a str,
    pub description: &'a str,
    pub tags: &'a [String],
    pub deterministic: bool,
}

/// What to upload and how the server should check it.
pub struct Artifact<'a> {
    pub path: &'a Path,
    /// Sent as Content-Length; exactly this many bytes of the file are sent.
    pub len: u64,
    /// Hex SHA-256; the server refuses the upload unless the bytes match.
    pub sha256: &'a str,
    /// Burn models: the architecture and its configuration (JSON text).
    pub architecture: Option<&'a str>,
    pub config: Option<&'a str>,
}

/// A server and the credential (access token or API key) to call it with.
pub struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    token: String,
}

impl Client {
    /// `server` is the base URL, e.g. `https://tessera.example.com` (a path prefix is kept).
    pub fn new(server: &str, token: String) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(server).map_err(|e| anyhow::anyhow!("--server `{server}`: {e}"))?;
        anyhow::ensure!(
            matches!(base.scheme(), "http" | "https") && base.has_host(),
            "--server `{server}`: give an http:// or https:// URL"
        );
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder().user_agent(concat!("tessera-cli/", env!("CARGO_PKG_VERSION"))).build()?;
        Ok(Self { http, base, token })
    }

    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        url.set_query(None);
        // `has_host` was checked, so the URL can have path segments.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Creates a model; returns false when one of that name already exists.
    pub async fn create_model(&self, tenant: &str, model: &NewModel<'_>) -> Result<bool, ClientError> {
        let body = serde_json::to_vec(model).expect("a model serializes");
        let response = self
            .http
            .post(self.url(&["v1", "tenants", tenant, "models"]))
            .bearer_auth(&self.token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        match answer::<serde_json::Value>(response).await {
            Ok(_) => Ok(true),
            Err(error) if error.code() == Some("already_exists") => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Uploads a new version of `model`, streaming the file in [`CHUNK`]-sized pieces;
    /// `on_sent` is called with the size of each piece as it is handed to the connection.
    pub async fn upload_version(
        &self,
        tenant: &str,
        model: &str,
        artifact: &Artifact<'_>,
        on_sent: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<UploadedVersion, ClientError> {
        let mut url = self.url(&["v1", "tenants", tenant, "models", model, "versions"]);
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("sha256", artifact.sha256);
            if let Some(architecture) = artifact.architecture {
                query.append_pair("architecture", architecture);
            }
            if let Some(config) = artifact.config {
                query.append_pair("config", config);
            }
        }
        let file = tokio::fs::File::open(artifact.path).await?;
        let body = file_stream(file, artifact.len).inspect_ok(move |chunk| on_sent(chunk.len() as u64));
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, artifact.len)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await?;
        answer(response).await
    }

    /// Uploads a CSV dataset, streamed; returns the dataset (its `id` goes into a job spec).
    pub async fn upload_dataset(&self, tenant: &str, path: &Path, name: &str) -> Result<serde_json::Value, ClientError> {
        let len = tokio::fs::metadata(path).await?.len();
        let mut url = self.url(&["v1", "tenants", tenant, "datasets"]);
        url.query_pairs_mut().append_pair("name", name);
        let file = tokio::fs::File::open(path).await?;
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .header(header::CONTENT_TYPE, "text/csv")
            .header(header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(file_stream(file, len)))
            .send()
            .await?;
        answer(response).await
    }

    /// Submits a job (`POST /v1/tenants/{tenant}/jobs`), with an idempotency key when given.
    pub async fn submit_job(
        &self,
        tenant: &str,
        spec: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<serde_json::Value, ClientError> {
        let mut request = self
            .http
            .post(self.url(&["v1", "tenants", tenant, "jobs"]))
            .bearer_auth(&self.token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(spec).expect("JSON serialises"));
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        answer(request.send().await?).await
    }

    pub async fn job(&self, tenant: &str, id: &str) -> Result<serde_json::Value, ClientError> {
        answer(self.http.get(self.url(&["v1", "tenants", tenant, "jobs", id])).bearer_auth(&self.token).send().await?).await
    }

    /// The job's Server-Sent Events as (event, data) pairs, until the job's final status.
    pub async fn job_events(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<impl Stream<Item = Result<(String, serde_json::Value), ClientError>> + use<>, ClientError> {
        let response = self.http.get(self.url(&["v1", "tenants", tenant, "jobs", id, "events"])).bearer_auth(&self.token).send().await?;
        if !response.status().is_success() {
            return Err(answer::<serde_json::Value>(response).await.err().unwrap_or(ClientError::Unexpected {
                status: 0,
                body: "an event stream that is not one".into(),
            }));
        }
        let bytes = response.bytes_stream();
        Ok(futures::stream::try_unfold((bytes, String::new()), |(mut bytes, mut buffer)| async move {
            loop {
                if let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let mut event = "message".to_owned();
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event: ") {
                            event = v.to_owned();
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            data.push_str(v);
                        }
                    }
                    if data.is_empty() {
                        continue; // a keep-alive comment
                    }
                    let value = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
                    return Ok(Some(((event, value), (bytes, buffer))));
                }
                match futures::StreamExt::next(&mut bytes).await {
                    Some(chunk) => buffer.push_str(&String::from_utf8_lossy(&chunk?)),
                    None => return Ok(None),
                }
            }
        }))
    }
}

/// Exactly `len` bytes of `file`, in chunks of [`CHUNK`] bytes; an error if the file is shorter.
fn file_stream(file: tokio::fs::File, len: u64) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold((file.take(len), 0u64), move |(mut file, mut read)| async move {
        let mut chunk = BytesMut::with_capacity(CHUNK);
        while chunk.len() < CHUNK {
            if file.read_buf(&mut chunk).await? == 0 {
                break;
            }
        }
        if chunk.is_empty() {
            if read < len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the file shrank to {read} bytes during the upload"),
                ));
            }
            return Ok(None);
        }
        read += chunk.len() as u64;
        Ok(Some((chunk.freeze(), (file, read))))
    })
}

/// SHA-256 (hex) and length of a file, read in [`CHUNK`]-sized pieces; `on_read` is called with
/// the size of each piece.
pub async fn sha256_file(path: &Path, on_read: impl Fn(u64)) -> std::io::Result<(String, u64)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
        on_read(n as u64);
    }
    Ok((hex::encode(hasher.finalize()), len))
}

/// The body of a successful answer, or the problem the server reported.
async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
    let status = response.status();
    let body = response.bytes().await?;
    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|e| ClientError::Unexpected {
            status: status.as_u16(),
            body: format!("{e}: {}", excerpt(&body)),
        });
    }
    match serde_json::from_slice::<ProblemBody>(&body) {
        Ok(problem) => Err(ClientError::Problem { status: status.as_u16(), code: problem.code, detail: problem.detail }),
        Err(_) => Err(ClientError::Unexpected { status: status.as_u16(), body: excerpt(&body) }),
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "(empty body)".to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_stream_sends_exactly_the_declared_length_in_chunks() {
        let path = std::env::temp_dir().join(format!("tessera-client-{}", uuid::Uuid::new_v4()));
        let data: Vec<u8> = (0..CHUNK * 2 + 10).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();

        let chunks: Vec<Bytes> = file_stream(tokio::fs::File::open(&path).await.unwrap(), data.len() as u64)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(chunks.iter().map(Bytes::len).collect::<Vec<_>>(), [CHUNK, CHUNK, 10]);
        assert_eq!(chunks.concat(), data);

        let fewer: Vec<Bytes> = file_stream(tokio::fs::File::open(&path).await.unwrap(), 5).try_collect().await.unwrap();
        assert_eq!(fewer.concat(), &data[..5]);
        let more: Result<Vec<Bytes>, _> =
            file_stream(tokio::fs::File::open(&path).await.unwrap(), data.len() as u64 + 1).try_collect().await;
        assert!(more.is_err());

        let read = std::sync::atomic::AtomicU64::new(0);
        let (sha, len) =
            sha256_file(&path, |n| {
            read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .unwrap();
        assert_eq!((sha, len), (hex::encode(Sha256::digest(&data)), data.len() as u64));
        assert_eq!(read.into_inner(), data.len() as u64);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn paths_are_appended_to_the_base_and_encoded() {
        let client = Client::new("https://example.com/tessera/", "t".into()).unwrap();
        assert_eq!(client.url(&["v1", "tenants", "acme", "models", "a b"]).as_str(), "https://example.com/tessera/v1/tenants/acme/models/a%20b");
        assert!(Client::new("example.com", "t".into()).is_err());
    }
}
