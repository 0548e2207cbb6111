//! Authentication cost: the full middleware stack in process (no sockets, no client), per
//! request, for an unauthenticated request, a JWT-authenticated one and an API-key one.
//!
//!     deploy/local/bench.sh auth
//!
//! Prints ns/request (best of several rounds, interleaved) and the ratios.

#[path = "../api/helpers.rs"]
#[allow(dead_code, unused_imports)]
mod helpers;

use std::time::Instant;

use actix_web::test;
use serde_json::json;

const ROUNDS: usize = 5;
const PER_ROUND: usize = 20_000;

fn main() {
    actix_web::rt::System::new().block_on(run());
}

async fn run() {
    let app = helpers::spawn_app().await;
    let admin = app.platform_admin().await;
    app.create_tenant(&admin, "bench", json!({ "rate_limit_per_second": 10_000_000, "rate_limit_burst": 10_000_000 }))
        .await;
    let body = json!({ "email": "engineer@bench.test", "role": "ml_engineer", "password": helpers::PASSWORD });
    assert_eq!(app.post_json("/v1/tenants/bench/members", Some(&admin), &body).await.status(), 201);
    let (jwt, _) = app.session("engineer@bench.test", Some("bench")).await;
    let key = app.create_api_key(&admin, "bench", "inference").await["secret"].as_str().unwrap().to_owned();

    let service = test::init_service(tessera::startup::create_app(app.state.clone(), Default::default())).await;
    let variants: [(&str, &str, Option<&str>, u16); 3] = [
        ("unauthenticated GET /healthz", "/healthz", None, 200),
        ("JWT GET /v1/auth/verify", "/v1/auth/verify", Some(&jwt), 204),
        ("API key GET /v1/auth/verify", "/v1/auth/verify", Some(&key), 204),
    ];
    let mut best = [f64::MAX; 3];
    for round in 0..=ROUNDS {
        for (i, (_, path, credential, status)) in variants.iter().enumerate() {
            let started = Instant::now();
            for _ in 0..PER_ROUND {
                let mut request = test::TestRequest::get().uri(path);
                if let Some(credential) = credential {
                    request = request.insert_header(("authorization", format!("Bearer {credential}")));
                }
                let response = test::call_service(&service, request.to_request()).await;
                debug_assert_eq!(response.status().as_u16(), *status);
                let _ = status;
            }
            let ns = started.elapsed().as_nanos() as f64 / PER_ROUND as f64;
            if round > 0 {
                best[i] = best[i].min(ns);
            }
        }
    }
    let ring = &app.state.keyring;
    let started = Instant::now();
    for _ in 0..2_000 {
        ring.verify(&jwt).unwrap();
    }
    let verify_ns = started.elapsed().as_nanos() as f64 / 2_000.0;

    println!("authentication cost, in process, best of {ROUNDS} rounds x {PER_ROUND} requests");
    for (i, (name, ..)) in variants.iter().enumerate() {
        println!("  {name:<32} {:>8.0} ns/request  ({:.2}x unauthenticated)", best[i], best[i] / best[0]);
    }
    println!("  API key / JWT cost ratio           {:.2}x", best[2] / best[1]);
    println!("  Ed25519 JWT signature check alone  {verify_ns:>8.0} ns (paid once per token, then cached)");
}
