//! `/portal`: the tenant administration web app, built from `portal/` and embedded in the
//! binary (`build.rs`). A single-page app: any path under `/portal` that is not a file is
//! answered with `index.html`, whose script routes it. Everything it does goes through the
//! public API with the signed-in user's access token; this module only hands out files.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError};

use crate::error::{ApiError, Code};

include!(concat!(env!("OUT_DIR"), "/portal_assets.rs"));

/// Scripts, styles and connections only from this origin, no inline code, no `eval`, never in
/// a frame: an injected string can neither run nor phone home.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// File names under `assets/` carry a hash of their content, so they can be kept for good.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn find(path: &str) -> Option<&'static (&'static str, &'static str, &'static str, &'static [u8])> {
    ASSETS.iter().find(|(name, ..)| *name == path)
}

/// `GET /portal` and `GET /portal/{path}`.
pub async fn serve(request: HttpRequest) -> HttpResponse {
    let path = request.match_info().get("path").unwrap_or("");
    let asset = match find(path) {
        Some(asset) => asset,
        // A missing script or style is a 404, never the page: a browser would run or apply
        // HTML in its place.
        None if path.starts_with("assets/") || path.contains('.') => {
            return ApiError::new(Code::RouteNotFound, format!("no portal file {path}")).error_response();
        }
        None => find("index.html").expect("build.rs embeds index.html"),
    };
    let (name, content_type, etag, bytes) = *asset;
    let cache = if name.starts_with("assets/") { IMMUTABLE } else { "no-cache" };
    let fresh = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    response
        .insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::ETAG, etag))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header(("cross-origin-opener-policy", "same-origin"));
    if fresh {
        return response.finish();
    }
    response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type))).body(bytes)
}
