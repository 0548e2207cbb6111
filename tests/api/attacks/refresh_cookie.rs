//! The portal's refresh cookie. A cookie travels with every request the browser makes to
//! its path, whoever's page started it, so a refresh from the cookie alone must never work:
//! it needs the `X-Tessera-Refresh: cookie` header (which another origin cannot send without
//! a CORS preflight Tessera never grants) and, when the browser says where the request comes
//! from, the same origin.

use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, assert_problem, spawn_app};

const MODE: (&str, &str) = ("x-tessera-refresh", "cookie");

/// The `tessera_refresh` cookie a response sets, with its attributes.
fn set_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("tessera_refresh="))
}

fn value(cookie: &str) -> String {
    cookie["tessera_refresh=".len()..cookie.find(';').unwrap()].to_owned()
}

async fn login_with(app: &TestApp, email: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.client.post(app.url("/v1/auth/login"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.json(&json!({ "email": email, "password": PASSWORD })).send().await.unwrap()
}

/// Logs out with `token`, presenting `cookie` as the refresh cookie.
async fn logout_with(app: &TestApp, token: &str, cookie: &str) -> reqwest::Response {
    let request = app.client.post(app.url("/v1/auth/logout")).bearer_auth(token);
    request.header("cookie", format!("tessera_refresh={cookie}")).json(&json!({})).send().await.unwrap()
}

async fn cookie_login(app: &TestApp, email: &str) -> String {
    let response = login_with(app, email, &[MODE]).await;
    assert_eq!(response.status(), 200);
    let cookie = set_cookie(&response).expect("cookie mode sets the refresh cookie");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/v1/auth", "Max-Age=2592000"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "the token leaves only as the cookie: {body}");
    assert!(body["access_token"].is_string());
    value(&cookie)
}

async fn refresh(app: &TestApp, cookie: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.client.post(app.url("/v1/auth/refresh")).header("cookie", format!("tessera_refresh={cookie}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.json(&json!({})).send().await.unwrap()
}

#[tokio::test]
async fn api_clients_keep_the_token_in_the_body_and_get_no_cookie() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let response = app.login(&acme.emails["owner"], PASSWORD, None).await;
    assert!(set_cookie(&response).is_none());
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["refresh_token"].as_str().unwrap().starts_with("trt_"));
}

#[tokio::test]
async fn a_cookie_refresh_with_the_header_rotates_the_cookie_and_reuse_is_caught() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let first = cookie_login(&app, &acme.emails["owner"]).await;

    let response = refresh(&app, &first, &[MODE, ("origin", &app.address), ("sec-fetch-site", "same-origin")]).await;
    assert_eq!(response.status(), 200);
    let second = value(&set_cookie(&response).expect("the rotated cookie"));
    assert_ne!(first, second);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body.get("refresh_token").is_none());
    assert_eq!(app.get_as("/v1/me", body["access_token"].as_str().unwrap()).await.status(), 200);

    assert_problem(refresh(&app, &first, &[MODE]).await, 401, "refresh_token_reused").await;
    assert_problem(refresh(&app, &second, &[MODE]).await, 401, "token_revoked").await;
}

#[tokio::test]
async fn a_cookie_alone_or_from_another_origin_refreshes_nothing_and_spends_nothing() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let cookie = cookie_login(&app, &acme.emails["owner"]).await;

    // A form post or a simple fetch from an attacker's page: the cookie, no header.
    assert_problem(refresh(&app, &cookie, &[]).await, 403, "cookie_refused").await;
    // A proxy that answered preflights would let the header through: the browser still says
    // where the request comes from.
    assert_problem(refresh(&app, &cookie, &[MODE, ("origin", "https://evil.example")]).await, 403, "cookie_refused").await;
    assert_problem(refresh(&app, &cookie, &[MODE, ("origin", "null")]).await, 403, "cookie_refused").await;
    assert_problem(refresh(&app, &cookie, &[MODE, ("sec-fetch-site", "cross-site")]).await, 403, "cookie_refused").await;
    assert_problem(refresh(&app, &cookie, &[MODE, ("sec-fetch-site", "same-site")]).await, 403, "cookie_refused").await;
    assert_problem(refresh(&app, &cookie, &[("x-tessera-refresh", "yes")]).await, 400, "invalid_header").await;
    // A login in cookie mode from another origin (login CSRF) is refused too.
    let response = login_with(&app, &acme.emails["owner"], &[MODE, ("origin", "https://evil.example")]).await;
    assert_problem(response, 403, "cookie_refused").await;

    // None of it used the token up: the portal's own refresh still works.
    assert_eq!(refresh(&app, &cookie, &[MODE, ("origin", &app.address)]).await.status(), 200);
}

#[tokio::test]
async fn cookie_mode_without_a_cookie_or_a_token_is_refused() {
    let app = spawn_app().await;
    let no_cookie = app.client.post(app.url("/v1/auth/refresh")).header(MODE.0, MODE.1).json(&json!({})).send().await.unwrap();
    assert_problem(no_cookie, 401, "invalid_token").await;
    let nothing = app.post_json("/v1/auth/refresh", None, &json!({})).await;
    assert_problem(nothing, 401, "unauthenticated").await;
    let forged = refresh(&app, "trt_forged", &[MODE]).await;
    assert_problem(forged, 401, "invalid_token").await;
}

#[tokio::test]
async fn logout_clears_the_cookie_and_ends_its_session() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let cookie = cookie_login(&app, &acme.emails["owner"]).await;
    let access = refresh(&app, &cookie, &[MODE]).await;
    let rotated = value(&set_cookie(&access).unwrap());
    let access: serde_json::Value = access.json().await.unwrap();
    let response = logout_with(&app, access["access_token"].as_str().unwrap(), &rotated).await;
    assert_eq!(response.status(), 204);
    let cleared = set_cookie(&response).expect("logout clears the cookie");
    assert!(cleared.starts_with("tessera_refresh=;") && cleared.contains("Max-Age=0"), "{cleared}");
    assert_problem(refresh(&app, &rotated, &[MODE]).await, 401, "token_revoked").await;
}

#[tokio::test]
async fn a_cookie_names_only_its_owners_session_at_logout() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let victim = cookie_login(&app, &acme.emails["owner"]).await;
    // Another user presents the victim's cookie (say, planted) with their own token.
    let (attacker, _) = app.session(&acme.emails["inference"], None).await;
    let response = logout_with(&app, &attacker, &victim).await;
    assert_eq!(response.status(), 204);
    assert_eq!(refresh(&app, &victim, &[MODE]).await.status(), 200, "the victim's session lives on");
}
