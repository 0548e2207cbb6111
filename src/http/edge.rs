//! The outermost middleware: request ids, HTTP metrics and panic isolation.
//!
//! It sits outside everything else so that every response, including one produced by a
//! panicking handler, carries `X-Request-Id` and is counted.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{Ready, ready};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::{ConnectionType, Method};
use actix_web::http::header::HeaderName;
use actix_web::{Error, HttpMessage, ResponseError};
use futures::FutureExt;
use futures::future::LocalBoxFuture;

use super::health::Draining;
use crate::error::{ApiError, Code, INTERNAL_DETAIL};
use crate::metrics::{HttpLabels, HttpSeries, Metrics};
use crate::request::RequestId;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub struct Edge {
    metrics: Arc<Metrics>,
    draining: Draining,
}

impl Edge {
    pub fn new(metrics: Arc<Metrics>, draining: Draining) -> Self {
        Self { metrics, draining }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Edge
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = EdgeMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(EdgeMiddleware {
            service: Rc::new(service),
            shared: Rc::new(Shared {
                metrics: self.metrics.clone(),
                draining: self.draining.clone(),
                series: RefCell::default(),
            }),
        }))
    }
}

pub struct EdgeMiddleware<S> {
    service: Rc<S>,
    shared: Rc<Shared>,
}

/// What every request on this worker uses, behind one count that only this worker touches.
struct Shared {
    metrics: Arc<Metrics>,
    draining: Draining,
    /// The series this worker has recorded into, by method, route template and status: the
    /// registry's families are behind a lock both workers take, and hash their labels.
    series: RefCell<HashMap<(&'static str, String, u16), HttpSeries>>,
}

/// The methods a label names; any other a caller makes up is `other`, so that callers cannot
/// mint series.
static METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

fn method_label(method: &Method) -> &'static str {
    METHODS.iter().find(|known| *known == method).map_or("other", Method::as_str)
}

impl Shared {
    fn observe(&self, method: &Method, route: String, status: u16, seconds: f64) {
        let key = (method_label(method), route, status);
        if let Some(series) = self.series.borrow().get(&key) {
            series.observe(seconds);
            return;
        }
        let (method, route, status) = key;
        let labels = HttpLabels { method, route, status };
        let series = self.metrics.http_series(&labels);
        series.observe(seconds);
        // Bounded like the labels themselves: route templates, the methods above.
        self.series.borrow_mut().insert((method, labels.route, status), series);
    }
}

impl<S, B> Service<ServiceRequest> for EdgeMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let request_id = RequestId::from_request_header(req.headers().get(X_REQUEST_ID));
        req.extensions_mut().insert(request_id.clone());
        // Cloning the HttpRequest here would break routing (it must stay uniquely owned until
        // matched), so failures that lose the request keep only what the metrics need.
        let method = req.method().clone();
        let shared = self.shared.clone();
        let fut = self.service.call(req);

        async move {
            let mut response = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => {
                    let status = error.as_response_error().status_code().as_u16();
                    shared.observe(&method, "unmatched".to_owned(), status, started.elapsed().as_secs_f64());
                    return Err(error);
                }
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic payload".to_owned());
                    tracing::error!(request_id = request_id.as_str(), panic = %message, "request handler panicked");
                    shared.observe(&method, "unmatched".to_owned(), 500, started.elapsed().as_secs_f64());
                    return Err(HandlerPanicked { request_id }.into());
                }
            };
            if shared.draining.is_on() {
                // No idle connection is left for a load balancer to reuse once this stops.
                response.response_mut().head_mut().set_connection_type(ConnectionType::Close);
            }
            response.headers_mut().insert(X_REQUEST_ID, request_id.header_value());

            let route = response.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
            if let Some(span) = response.request().extensions().get::<tracing_actix_web::RootSpan>() {
                span.record("http.route", route.as_str());
            }
            shared.observe(&method, route, response.status().as_u16(), started.elapsed().as_secs_f64());
            Ok(response)
        }
        .boxed_local()
    }
}

/// A handler panicked: the client gets a 500 problem (with its request id), the worker lives on.
#[derive(Debug)]
struct HandlerPanicked {
    request_id: RequestId,
}

impl std::fmt::Display for HandlerPanicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request handler panicked")
    }
}

impl ResponseError for HandlerPanicked {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::INTERNAL_SERVER_ERROR
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        let mut response =
            ApiError::new(Code::InternalError, INTERNAL_DETAIL)
                .error_response();
        response.headers_mut().insert(X_REQUEST_ID, self.request_id.header_value());
        response
    }
}

#[cfg(test)]
mod tests {
    use actix_web::{App, HttpResponse, test, web};

    use super::*;

    #[actix_web::test]
    async fn a_panicking_handler_becomes_a_500_problem_and_the_server_keeps_serving() {
        let app = test::init_service(
            App::new()
                .route("/boom", web::get().to(|| async { panic!("boom"); #[allow(unreachable_code)] HttpResponse::Ok() }))
                .route("/fine", web::get().to(|| async { HttpResponse::Ok().finish() }))
                .wrap(Edge::new(Metrics::new(), Draining::default())),
        )
        .await;
        let response = test::try_call_service(&app, test::TestRequest::get().uri("/boom").to_request()).await;
        let error = response.err().expect("a panic surfaces as an error");
        let rendered = error.error_response();
        assert_eq!(rendered.status(), 500);
        assert_eq!(rendered.headers().get("content-type").unwrap(), crate::error::PROBLEM_JSON);
        assert!(rendered.headers().contains_key(X_REQUEST_ID));

        let response = test::call_service(&app, test::TestRequest::get().uri("/fine").to_request()).await;
        assert_eq!(response.status(), 200);
    }

    #[actix_web::test]
    async fn each_workers_series_count_every_request_and_callers_mint_none() {
        let metrics = Metrics::new();
        let app = test::init_service(
            App::new()
                .route("/fine", web::get().to(|| async { HttpResponse::Ok().finish() }))
                .wrap(Edge::new(metrics.clone(), Draining::default())),
        )
        .await;
        for _ in 0..3 {
            test::call_service(&app, test::TestRequest::get().uri("/fine").to_request()).await;
        }
        for n in 0..50 {
            let method = Method::from_bytes(format!("PROBE{n}").as_bytes()).unwrap();
            test::call_service(&app, test::TestRequest::default().method(method).uri("/fine").to_request()).await;
        }
        test::call_service(&app, test::TestRequest::delete().uri("/fine").to_request()).await;
        let rendered = metrics.render();
        assert!(!rendered.contains("PROBE"), "{rendered}");
        for series in [
            r#"{method="GET",route="/fine",status="200"} 3"#,
            r#"{method="other",route="/fine",status="404"} 50"#,
            r#"{method="DELETE",route="/fine",status="404"} 1"#,
        ] {
            assert!(rendered.contains(&format!("tessera_http_requests_total{series}")), "{series} in {rendered}");
        }
    }
}
