//! Extractor configuration: every way a request can fail to parse becomes an `ApiError`.

use actix_web::error::{JsonPayloadError, PathError, PayloadError, QueryPayloadError};
use actix_web::web;

use crate::error::{ApiError, Code};

// For the OpenAPI document only: a `Vec<u8>` would be documented as a JSON array of integers.
/// Raw bytes, sent and returned as they are (`application/octet-stream`).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(pub Vec<u8>);

pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default().limit(limit).error_handler(|error, _| json_error(error).into())
}

pub fn payload_config(limit: usize) -> web::PayloadConfig {
    web::PayloadConfig::new(limit)
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|error: QueryPayloadError, _| ApiError::new(Code::InvalidQuery, error.to_string()).into())
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|error: PathError, _| ApiError::new(Code::InvalidPath, error.to_string()).into())
}

pub fn json_error(error: JsonPayloadError) -> ApiError {
    match error {
        JsonPayloadError::OverflowKnownLength { length, limit } => ApiError::new(
            Code::PayloadTooLarge,
            format!("the body has {length} bytes; the limit is {limit}"),
        ),
        JsonPayloadError::Overflow { limit } => {
            ApiError::new(Code::PayloadTooLarge, format!("the body exceeds the limit of {limit} bytes"))
        }
        JsonPayloadError::ContentType => {
            ApiError::new(Code::UnsupportedMediaType, "this endpoint takes Content-Type: application/json")
        }
        JsonPayloadError::Deserialize(e) if e.is_data() => ApiError::new(Code::InvalidRequest, e.to_string()),
        JsonPayloadError::Deserialize(e) => ApiError::new(Code::InvalidJson, e.to_string()),
        JsonPayloadError::Payload(e) => payload_error(e),
        other => ApiError::new(Code::InvalidRequest, other.to_string()),
    }
}

/// A JSON body, read as `web::Json` reads it (same limit and errors) and then taken as `T`,
/// with one difference: a number with no fractional part is an integer, as JSON Schema says
/// (`1.0` is a valid `integer`), so a generated client that writes integers as floats is
/// understood.
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: serde::de::DeserializeOwned + 'static> actix_web::FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = futures::future::LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &actix_web::HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let value = web::Json::<serde_json::Value>::from_request(req, payload);
        Box::pin(async move {
            let mut value = value.await?.into_inner();
            if holds_nul(&value) {
                return Err(ApiError::new(Code::InvalidRequest, "text may not hold NUL characters (\\u0000)").into());
            }
            integral_numbers_as_integers(&mut value);
            serde_json::from_value(value)
                .map(Json)
                .map_err(|e| ApiError::new(Code::InvalidRequest, e.to_string()).into())
        })
    }
}

/// Postgres text cannot hold NUL: no field Tessera stores may contain one.
fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(fields) => fields.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn integral_numbers_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) => {
            // Only where the float is exact: beyond 2^53 it may not be the integer meant.
            if let Some(f) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0) {
                *n = if f < 0.0 { (f as i64).into() } else { (f as u64).into() };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_numbers_as_integers),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

pub fn payload_error(error: PayloadError) -> ApiError {
    match error {
        PayloadError::Overflow => ApiError::new(Code::PayloadTooLarge, "the body exceeds the configured limit"),
        other => ApiError::new(Code::InvalidRequest, format!("the request body could not be read: {other}")),
    }
}

/// A raw body of at most `limit` bytes, read as it streams in. A declared length beyond the
/// limit is refused before a byte is read; a body that grows beyond it is refused as soon as
/// it does, so no request holds more than `limit` bytes of it. The buffer grows by doubling
/// up to the declared length, from at most `FIRST_RESERVE`: memory follows the bytes that
/// arrived, not the length a client claims, at the cost of a few copies of a large body.
pub async fn body_within(request: &actix_web::HttpRequest, mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    use futures::StreamExt;
    let declared = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(length) = declared.filter(|&length| length > limit as u64) {
        return Err(ApiError::new(Code::PayloadTooLarge, format!("the body has {length} bytes; the limit is {limit}")));
    }
    const FIRST_RESERVE: usize = 1 << 20;
    let declared = declared.map(|length| length as usize);
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0).min(FIRST_RESERVE));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(payload_error)?;
        let needed = body.len() + chunk.len();
        if needed > limit {
            return Err(ApiError::new(Code::PayloadTooLarge, format!("the body exceeds the limit of {limit} bytes")));
        }
        if needed > body.capacity() {
            let grown = needed.max(body.capacity() * 2).min(declared.unwrap_or(limit).max(needed));
            body.reserve(grown - body.len());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {

    use actix_web::{App, HttpResponse, test, web};

    use super::*;

    #[derive(serde::Deserialize)]
    struct Body {
        #[allow(dead_code)]
        name: String,
    }

    async fn app() -> impl actix_web::dev::Service<actix_http::Request, Response = actix_web::dev::ServiceResponse, Error = actix_web::Error> {
        test::init_service(
            App::new()
                .app_data(json_config(1024))
                .route("/echo", web::post().to(|_: web::Json<Body>| async { HttpResponse::Ok().finish() })),
        )
        .await
    }

    async fn problem(request: test::TestRequest) -> (u16, serde_json::Value) {
        let response = test::call_service(&app().await, request.to_request()).await;
        let status = response.status().as_u16();
        assert_eq!(response.headers().get("content-type").unwrap(), crate::error::PROBLEM_JSON);
        (status, test::read_body_json(response).await)
    }

    #[actix_web::test]
    async fn malformed_json_is_a_400_invalid_json() {
        let request = test::TestRequest::post().uri("/echo").insert_header(("content-type", "application/json")).set_payload("{bad");
        let (status, body) = problem(request).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_json")));
    }

    #[actix_web::test]
    async fn well_formed_json_of_the_wrong_shape_is_a_400_invalid_request() {
        let request = test::TestRequest::post().uri("/echo").insert_header(("content-type", "application/json")).set_payload("{}");
        let (status, body) = problem(request).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_request")));
        assert!(body["detail"].as_str().unwrap().contains("name"));
    }

    #[actix_web::test]
    async fn a_wrong_content_type_is_a_415() {
        let request = test::TestRequest::post().uri("/echo").insert_header(("content-type", "text/plain")).set_payload("{}");
        let (status, body) = problem(request).await;
        assert_eq!((status, body["code"].as_str()), (415, Some("unsupported_media_type")));
    }

    #[actix_web::test]
    async fn an_oversized_body_is_a_413() {
        let big = format!("{{\"name\":\"{}\"}}", "x".repeat(4096));
        let request = test::TestRequest::post().uri("/echo").insert_header(("content-type", "application/json")).set_payload(big);
        let (status, body) = problem(request).await;
        assert_eq!((status, body["code"].as_str()), (413, Some("payload_too_large")));
    }
}

#[cfg(test)]
mod numbers {
    #[test]
    fn integral_floats_become_integers_and_others_stay() {
        let mut value = serde_json::json!({ "a": 5.0, "b": [-2.0, 1.5], "c": 1e300, "d": 7, "e": "8.0" });
        super::integral_numbers_as_integers(&mut value);
        assert_eq!(value, serde_json::json!({ "a": 5, "b": [-2, 1.5], "c": 1e300, "d": 7, "e": "8.0" }));
        assert!(value["a"].is_u64() && value["b"][0].is_i64() && value["c"].is_f64());
    }
}
