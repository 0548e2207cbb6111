//! Response compression (gzip or zstd, as the client accepts) for every request but those a
//! predicate on the path passes by. Inference answers go out as they are: the inference path
//! pays neither for negotiating an encoding nor for wrapping its answer's body.

use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::rc::Rc;

use actix_http::encoding::Encoder;
use actix_web::Error;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::middleware::Compress;
use futures::FutureExt;
use futures::future::LocalBoxFuture;

pub struct CompressUnless {
    pass: fn(&str) -> bool,
}

impl CompressUnless {
    /// Compresses the answers to requests whose path `pass` does not accept.
    pub fn new(pass: fn(&str) -> bool) -> Self {
        Self { pass }
    }
}

type Compressed<S> = <Compress as Transform<Rc<S>, ServiceRequest>>::Transform;

impl<S, B> Transform<S, ServiceRequest> for CompressUnless
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<EitherBody<Encoder<B>>, B>>;
    type Error = Error;
    type Transform = CompressUnlessMiddleware<S, B>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        let service = Rc::new(service);
        let compressed = Compress::default().new_transform(service.clone()).into_inner().expect("Compress always starts");
        ready(Ok(CompressUnlessMiddleware { compressed, service, pass: self.pass, body: PhantomData }))
    }
}

pub struct CompressUnlessMiddleware<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    compressed: Compressed<S>,
    service: Rc<S>,
    pass: fn(&str) -> bool,
    body: PhantomData<B>,
}

impl<S, B> Service<ServiceRequest> for CompressUnlessMiddleware<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<EitherBody<Encoder<B>>, B>>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        // The path as the router matches it (percent-decoded but for `%`, `/` and `+`), so
        // that no spelling of a passed route is compressed.
        if (self.pass)(req.match_info().as_str()) {
            let fut = self.service.call(req);
            return async move { fut.await.map(ServiceResponse::map_into_right_body) }.boxed_local();
        }
        let fut = self.compressed.call(req);
        async move { fut.await.map(ServiceResponse::map_into_left_body) }.boxed_local()
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING};
    use actix_web::{App, HttpResponse, test, web};

    use super::*;

    #[actix_web::test]
    async fn answers_are_compressed_unless_their_path_is_passed_by() {
        let body = "a".repeat(4096);
        let app = test::init_service(
            App::new()
                .default_service(web::to(move || {
                    let body = body.clone();
                    async move { HttpResponse::Ok().content_type("application/json").body(body) }
                }))
                .wrap(CompressUnless::new(|path| path.ends_with("/infer"))),
        )
        .await;
        for (path, encoding) in [("/v1/tenants", Some("gzip")), ("/v2/models/m/infer", None), ("/v2/models/m/%69nfer", None)] {
            let request = test::TestRequest::get().uri(path).insert_header((ACCEPT_ENCODING, "gzip")).to_request();
            let response = test::call_service(&app, request).await;
            assert_eq!(response.status(), 200);
            let got = response.headers().get(CONTENT_ENCODING).map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(got.as_deref(), encoding, "{path}");
            let bytes = test::read_body(response).await;
            assert_eq!(bytes.len() == 4096, encoding.is_none(), "{path}");
        }
    }
}
