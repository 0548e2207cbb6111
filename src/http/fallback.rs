//! What answers when no handler does: unknown routes, wrong methods, and any error response
//! produced by the framework itself. All of them leave as problem+json.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use std::collections::HashMap;

use actix_web::http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};

use crate::error::{ApiError, Code, Problem, problem_response};

/// For each route template, the methods it serves (`GET, POST`), taken from the OpenAPI
/// document so that it can never disagree with the route table.
pub struct AllowedMethods(HashMap<String, String>);

impl AllowedMethods {
    pub fn from_spec(spec: &utoipa::openapi::OpenApi) -> Self {
        let map = spec
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let methods: Vec<&str> = [
                    ("GET", item.get.is_some()),
                    ("POST", item.post.is_some()),
                    ("PUT", item.put.is_some()),
                    ("PATCH", item.patch.is_some()),
                    ("DELETE", item.delete.is_some()),
                ]
                .into_iter()
                .filter_map(|(m, present)| present.then_some(m))
                .collect();
                (path.clone(), methods.join(", "))
            })
            .collect();
        Self(map)
    }
}

/// The app's default service: nothing matched path and method. A path served under another
/// method is a 405 with `Allow`; anything else is a 404.
pub async fn route_not_found(request: HttpRequest, allowed: web::Data<AllowedMethods>) -> HttpResponse {
    if let Some(pattern) = request.match_pattern() {
        let detail = format!("{} is not allowed on {}", request.method(), request.path());
        let mut response = ApiError::new(Code::MethodNotAllowed, detail).error_response();
        if let Some(methods) = allowed.0.get(&pattern) {
            if let Ok(value) = HeaderValue::from_str(methods) {
                response.headers_mut().insert(ALLOW, value);
            }
        }
        return response;
    }
    ApiError::new(Code::RouteNotFound, format!("no route for {} {}", request.method(), request.path())).error_response()
}

/// Rewrites error responses that are not already JSON into problem+json, keeping their status.
/// actix answers a wrong method on a known path with an empty 405, for instance.
pub fn problem_rewriter<B: MessageBody + 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().default_handler(rewrite::<B>)
}

fn rewrite<B: MessageBody + 'static>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/problem+json") || ct.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let code = code_for_status(status);
    let detail = match (res.response().error(), status) {
        (_, StatusCode::METHOD_NOT_ALLOWED) => {
            format!("{} is not allowed on {}", res.request().method(), res.request().path())
        }
        (_, StatusCode::NOT_FOUND) => format!("no route for {} {}", res.request().method(), res.request().path()),
        (Some(error), _) if !status.is_server_error() => error.to_string(),
        _ => code.title().to_owned(),
    };
    let mut problem: Problem = ApiError::new(code, detail).problem();
    problem.status = status.as_u16();
    let retry_after = res
        .headers()
        .get(actix_web::http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let (request, original) = res.into_parts();
    let mut replacement: HttpResponse = problem_response(status, &problem, retry_after);
    if status == StatusCode::METHOD_NOT_ALLOWED {
        if let Some(allow) = original.headers().get(actix_web::http::header::ALLOW) {
            replacement.headers_mut().insert(actix_web::http::header::ALLOW, allow.clone());
        }
    }
    let response: ServiceResponse<EitherBody<B>> = ServiceResponse::new(request, replacement).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(response))
}

fn code_for_status(status: StatusCode) -> Code {
    match status {
        StatusCode::BAD_REQUEST => Code::ClientError,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::Forbidden,
        StatusCode::NOT_FOUND => Code::RouteNotFound,
        StatusCode::METHOD_NOT_ALLOWED => Code::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => Code::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::UnsupportedMediaType,
        StatusCode::TOO_MANY_REQUESTS => Code::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => Code::ServiceUnavailable,
        s if s.is_client_error() => Code::ClientError,
        _ => Code::InternalError,
    }
}
