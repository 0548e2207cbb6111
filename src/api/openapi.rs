//! The OpenAPI 3.1 document. Handlers carry their own `#[utoipa::path]`; the route table in
//! `api::routes` registers them, so the served routes and the spec cannot drift apart.

use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, OpenApi as OpenApiDoc, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::AppExt;

use crate::error::{Code, PROBLEM_JSON, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera",
        description = "Multi-tenant AI inference platform. Every error is an RFC 9457 problem document \
                       (`application/problem+json`) with a stable `code`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(Problem)),
    tags(
        (name = "operations", description = "Liveness, readiness and metrics"),
        (name = "auth", description = "Login, token refresh and logout; the caller; token verification keys"),
        (name = "tenants", description = "Tenants (platform administrators)"),
        (name = "members", description = "A tenant's members and their roles"),
        (name = "api-keys", description = "API keys for machines"),
        (name = "models", description = "The encrypted model registry: models, versions, aliases, artifacts, tenant keys"),
        (name = "inference", description = "The Open Inference Protocol v2 (KServe / Triton HTTP), in the caller's tenant. \
         The same protocol is served over gRPC on `server.grpc_port` (8081): `inference.GRPCInferenceService`, \
         contract in `openapi/grpc_predict_v2.proto`, with the same credentials in the `authorization` metadata"),
        (name = "jobs", description = "Datasets, training and batch inference jobs, their event streams and outputs"),
        (name = "audit", description = "The tamper-evident audit log: events, signed exports, signing keys, settings"),
        (name = "usage", description = "Inference usage per model version and hour or day; the tenant's quotas"),
    ),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// The complete document, built from the same route table the server runs.
pub fn spec() -> OpenApiDoc {
    let (_, mut doc) = actix_web::App::new().into_utoipa_app().configure(super::routes).split_for_parts();
    let mut base = ApiDoc::openapi();
    base.merge(std::mem::take(&mut doc));
    StandardErrors.modify(&mut base);
    base
}

/// Pretty JSON with a trailing newline, exactly as committed in `openapi/openapi.json`.
pub fn spec_json() -> String {
    let mut text = spec().to_pretty_json().expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

/// `Authorization: Bearer <access token or API key>`.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "An access token from `POST /v1/auth/login` (EdDSA JWT), or an API key (`tsk_…`).".to_owned(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Adds the error responses every operation can produce, so each operation documents them
/// without repeating them by hand.
struct StandardErrors;

impl Modify for StandardErrors {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let described: String = Code::ALL
            .iter()
            .map(|c| format!("`{}` ({})", c.as_str(), c.status().as_u16()))
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(components) = openapi.components.as_mut() {
            if let Some(RefOr::T(schema)) = components.schemas.get_mut("Problem") {
                if let utoipa::openapi::schema::Schema::Object(object) = schema {
                    object.description = Some(format!("An RFC 9457 problem document. Codes: {described}."));
                }
            }
        }
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                add_standard_errors(operation);
            }
        }
    }
}

fn problem_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(PROBLEM_JSON, ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build())
            .build(),
    )
}

fn add_standard_errors(operation: &mut Operation) {
    let responses = &mut operation.responses.responses;
    // Handlers list the failures particular to them by status and description only; every
    // failure has the same body, declared here once.
    for (status, response) in responses.iter_mut() {
        if let RefOr::T(response) = response {
            if !status.starts_with(['1', '2', '3']) && response.content.is_empty() {
                *response = match problem_response(&response.description) {
                    RefOr::T(problem) => problem,
                    RefOr::Ref(_) => unreachable!("problem_response builds a response"),
                };
            }
        }
    }
    let mut add = |status: &str, description: &str| {
        responses.entry(status.to_owned()).or_insert_with(|| problem_response(description));
    };
    if operation.request_body.is_some() {
        add("400", "Malformed or invalid request (`invalid_json`, `invalid_request`)");
        add("422", "Well formed, but not applicable: an unknown token, content the model or dataset cannot take (`unprocessable` and others)");
        add("413", "Body larger than the configured limit (`payload_too_large`)");
        add("415", "Wrong Content-Type (`unsupported_media_type`)");
    } else if operation.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
        add("400", "Invalid path or query parameter (`invalid_path`, `invalid_query`)");
    }
    let in_path = |p: &RefOr<utoipa::openapi::path::Parameter>| {
        matches!(p, RefOr::T(p) if p.parameter_in == utoipa::openapi::path::ParameterIn::Path)
    };
    if operation.parameters.as_ref().is_some_and(|p| p.iter().any(in_path)) {
        // Another tenant's resources answer exactly as missing ones do.
        add("404", "No such tenant or resource, or not visible to the caller (`not_found`)");
    }
    if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
        add("401", "Missing, invalid, expired or revoked credentials (`unauthenticated`)");
    } else {
        // Public routes need none, but a credential that is presented is still checked.
        add("401", "A presented credential is invalid, expired or revoked (`invalid_token`, `token_revoked`)");
    }
    if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
        add("403", "The caller lacks the permission this operation needs (`forbidden`)");
        add("429", "Tenant rate limit exceeded; see `Retry-After` (`rate_limited`)");
    }
    add("500", "Unexpected server failure (`internal_error`)");
    // Every 401 names the scheme that would be accepted.
    if let Some(RefOr::T(unauthorized)) = responses.get_mut("401") {
        let mut header = utoipa::openapi::header::Header::new(utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::String));
        header.description = Some("`Bearer realm=\"tessera\"`".to_owned());
        unauthorized.headers.insert("WWW-Authenticate".to_owned(), RefOr::T(header));
    }
}
