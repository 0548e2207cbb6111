use serde_json::json;
use tessera::error::ErrorCode;

use crate::helpers::{PASSWORD, assert_problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn login_returns_tokens_scoped_to_the_users_tenant() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;

    let response = app.login(&acme.emails["ml_engineer"], PASSWORD, None).await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["role"], "ml_engineer");
    assert_eq!(body["expires_in"], 900);

    let me: serde_json::Value = app.get_as("/v1/me", body["access_token"].as_str().unwrap()).await.json().await.unwrap();
    assert_eq!(me["tenant"], "acme");
    assert_eq!(me["role"], "ml_engineer");
    assert_eq!(me["email"], acme.emails["ml_engineer"].as_str());
    let permissions: Vec<&str> = me["permissions"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(permissions.contains(&"models_write") && !permissions.contains(&"audit_read"), "{permissions:?}");
}

#[tokio::test]
async fn wrong_passwords_and_unknown_emails_get_the_same_401() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let wrong = app.login(&acme.emails["owner"], "not-the-password", None).await;
    let wrong = assert_problem(wrong, 401, "invalid_credentials").await;
    let unknown = app.login("nobody@nowhere.test", "not-the-password", None).await;
    let unknown = assert_problem(unknown, 401, "invalid_credentials").await;
    assert_eq!(wrong["detail"], unknown["detail"]);
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled_with_retry_after() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    for _ in 0..5 {
        assert_eq!(app.login(&acme.emails["owner"], "wrong-password!", None).await.status(), 401);
    }
    let throttled = app.login(&acme.emails["owner"], PASSWORD, None).await;
    let retry_after: u64 = throttled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after > 0);
    assert_problem(throttled, 429, "login_throttled").await;
    // Other accounts are not locked out by it.
    assert_eq!(app.login(&acme.emails["admin"], PASSWORD, None).await.status(), 200);
}

#[tokio::test]
async fn malformed_oversized_and_mistyped_login_bodies_are_4xx_problems() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/v1/auth/login"))
        .header("content-type", "application/json")
        .body("{bad")
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "invalid_json").await;

    let response = app.post_json("/v1/auth/login", None, &json!({ "email": "a@b.test" })).await;
    assert_problem(response, 400, "invalid_request").await;

    let response = app.client.post(app.url("/v1/auth/login")).header("content-type", "text/plain").body("{}").send().await.unwrap();
    assert_problem(response, 415, "unsupported_media_type").await;

    let big = json!({ "email": "a@b.test", "password": "x".repeat(2 * 1024 * 1024) });
    let response = app.post_json("/v1/auth/login", None, &big).await;
    assert_problem(response, 413, "payload_too_large").await;
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let (_, first) = app.session(&acme.emails["owner"], None).await;

    let response = app.post_json("/v1/auth/refresh", None, &json!({ "refresh_token": first })).await;
    assert_eq!(response.status(), 200);
    let rotated: serde_json::Value = response.json().await.unwrap();
    let second = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    assert_eq!(app.get_as("/v1/me", rotated["access_token"].as_str().unwrap()).await.status(), 200);

    // The first token is presented again: someone copied it. The family dies.
    let reuse = app.post_json("/v1/auth/refresh", None, &json!({ "refresh_token": first })).await;
    assert_problem(reuse, 401, "refresh_token_reused").await;
    let after = app.post_json("/v1/auth/refresh", None, &json!({ "refresh_token": second })).await;
    assert_problem(after, 401, "token_revoked").await;

    let garbage = app.post_json("/v1/auth/refresh", None, &json!({ "refresh_token": "trt_nope" })).await;
    assert_problem(garbage, 401, "invalid_token").await;
}

#[tokio::test]
async fn role_changes_apply_at_the_next_refresh() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let (access, refresh) = app.session(&acme.emails["inference"], None).await;
    let me: serde_json::Value = app.get_as("/v1/me", &access).await.json().await.unwrap();
    let user_id = me["actor"]["id"].as_str().unwrap().to_owned();
    let response = app.call("PATCH", &format!("/v1/tenants/acme/members/{user_id}"), Some(&admin), Some(json!({"role": "auditor"}))).await;
    assert_eq!(response.status(), 200);
    let pair: serde_json::Value =
        app.post_json("/v1/auth/refresh", None, &json!({ "refresh_token": refresh })).await.json().await.unwrap();
    assert_eq!(pair["role"], "auditor");
}

#[tokio::test]
async fn logout_revokes_the_access_token_and_the_refresh_session() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let (access, refresh) = app.session(&acme.emails["owner"], None).await;
    let response = app.post_json("/v1/auth/logout", Some(&access), &json!({ "refresh_token": refresh })).await;
    assert_eq!(response.status(), 204);
    assert_problem(app.get_as("/v1/me", &access).await, 401, "token_revoked").await;
    let refreshed = app.post_json("/v1/auth/refresh", None, &json!({ "refresh_token": refresh })).await;
    assert_problem(refreshed, 401, "token_revoked").await;
}

fn claims_now(app: &crate::helpers::TestApp, user: uuid::Uuid) -> tessera::identity::jwt::Claims {
    let now = jsonwebtoken::get_current_timestamp();
    tessera::identity::jwt::Claims {
        iss: app.settings.auth.issuer.clone(),
        aud: app.settings.auth.audience.clone(),
        sub: user,
        tid: None,
        role: None,
        adm: true,
        sep: 0,
        jti: uuid::Uuid::new_v4(),
        iat: now,
        nbf: now,
        exp: now + 60,
    }
}

#[tokio::test]
async fn forged_none_expired_and_foreign_tokens_are_401() {
    use base64::Engine;
    let app = spawn_app().await;
    app.platform_admin().await;
    let user: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users").fetch_one(&app.db).await.unwrap();
    let ring = &app.state.keyring;
    assert_eq!(app.get_as("/v1/me", &ring.sign(&claims_now(&app, user))).await.status(), 200, "control: a good token works");
    // A well-signed token for a user that does not exist is refused.
    assert_problem(app.get_as("/v1/me", &ring.sign(&claims_now(&app, uuid::Uuid::new_v4()))).await, 401, "token_revoked").await;

    let mut expired = claims_now(&app, user);
    expired.exp -= 3600;
    expired.nbf -= 3600;
    expired.iat -= 3600;
    assert_problem(app.get_as("/v1/me", &ring.sign(&expired)).await, 401, "token_expired").await;

    let mut audience = claims_now(&app, user);
    audience.aud = "another-service".into();
    assert_problem(app.get_as("/v1/me", &ring.sign(&audience)).await, 401, "invalid_token").await;

    let mut issuer = claims_now(&app, user);
    issuer.iss = "evil".into();
    assert_problem(app.get_as("/v1/me", &ring.sign(&issuer)).await, 401, "invalid_token").await;

    // Signed by a key Tessera does not know, under a kid it does not know.
    let stranger = tessera::identity::jwt::Keyring::new(
        &tessera::crypto::generate_key_entry("stranger"),
        &app.settings.auth.issuer,
        &app.settings.auth.audience,
    )
    .unwrap();
    assert_problem(app.get_as("/v1/me", &stranger.sign(&claims_now(&app, user))).await, 401, "invalid_token").await;

    // Signed by a different key that claims Tessera's kid.
    let kid = ring.signing_kid().to_owned();
    let impostor = tessera::identity::jwt::Keyring::new(
        &tessera::crypto::generate_key_entry(&kid),
        &app.settings.auth.issuer,
        &app.settings.auth.audience,
    )
    .unwrap();
    assert_problem(app.get_as("/v1/me", &impostor.sign(&claims_now(&app, user))).await, 401, "invalid_token").await;

    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let payload = b64(&serde_json::to_string(&claims_now(&app, user)).unwrap());
    let none = format!("{}.{payload}.", b64(&format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#)));
    assert_problem(app.get_as("/v1/me", &none).await, 401, "invalid_token").await;
    let hs256 = format!("{}.{payload}.c2lnbmF0dXJl", b64(&format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#)));
    assert_problem(app.get_as("/v1/me", &hs256).await, 401, "invalid_token").await;

    let response = app.client.get(app.url("/v1/me")).header("authorization", "Basic abc").send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"tessera\"");
    assert_problem(response, 401, "invalid_token").await;
    assert_problem(app.get("/v1/me").await, 401, "unauthenticated").await;
}

#[tokio::test]
async fn tokens_signed_by_a_rotated_out_key_verify_while_it_is_listed() {
    let old_key = tessera::crypto::generate_key_entry("old");
    let new_key = tessera::crypto::generate_key_entry("new");
    let old = old_key.clone();
    let app = spawn_app_with(|s| s.auth.jwt_signing_keys = old.into()).await;
    let admin = app.platform_admin().await;

    // The same platform administrator in each instance's database.
    let (id, email, hash): (uuid::Uuid, String, String) =
        sqlx::query_as("SELECT id, email, password_hash FROM users").fetch_one(&app.db).await.unwrap();
    let same_user = |db: &sqlx::PgPool| {
        let (id, email, hash, db) = (id, email.clone(), hash.clone(), db.clone());
        async move {
            sqlx::query("INSERT INTO users (id, email, password_hash, is_platform_admin) VALUES ($1, $2, $3, true)")
                .bind(id)
                .bind(email)
                .bind(hash)
                .execute(&db)
                .await
                .unwrap();
        }
    };
    let both = format!("{new_key},{old_key}");
    let rotated = spawn_app_with(|s| s.auth.jwt_signing_keys = both.into()).await;
    same_user(&rotated.db).await;
    assert_eq!(rotated.get_as("/v1/me", &admin).await.status(), 200);
    let jwks: serde_json::Value = rotated.get("/.well-known/jwks.json").await.json().await.unwrap();
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, ["new", "old"]);
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");

    let retired = spawn_app_with(|s| s.auth.jwt_signing_keys = new_key.into()).await;
    same_user(&retired.db).await;
    assert_problem(retired.get_as("/v1/me", &admin).await, 401, "invalid_token").await;
}

#[tokio::test]
async fn api_keys_work_at_once_show_their_secret_once_and_stop_when_revoked() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    app.tenant_with_members(&admin, "acme").await;
    let created = app.create_api_key(&admin, "acme", "ml_engineer").await;
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()));

    let me: serde_json::Value = app.get_as("/v1/me", secret).await.json().await.unwrap();
    assert_eq!(me["actor"]["type"], "api_key");
    assert_eq!(me["tenant"], "acme");
    assert_eq!(me["role"], "ml_engineer");

    let listed: serde_json::Value = app.get_as("/v1/tenants/acme/api-keys", &admin).await.json().await.unwrap();
    let text = listed.to_string();
    assert!(!text.contains(secret), "listings never show secrets");
    assert!(text.contains(created["prefix"].as_str().unwrap()));

    let last = if secret.ends_with('A') { 'B' } else { 'A' };
    let tampered = format!("{}{last}", &secret[..secret.len() - 1]);
    assert_problem(app.get_as("/v1/me", &tampered).await, 401, "invalid_token").await;

    let id = created["id"].as_str().unwrap();
    assert_eq!(app.call("DELETE", &format!("/v1/tenants/acme/api-keys/{id}"), Some(&admin), None).await.status(), 204);
    assert_problem(app.get_as("/v1/me", secret).await, 401, "token_revoked").await;
    let stored: Option<time::OffsetDateTime> = sqlx::query_scalar("SELECT revoked_at FROM api_keys WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(stored.is_some());
}

#[tokio::test]
async fn api_keys_are_stored_only_as_keyed_digests() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    app.tenant_with_members(&admin, "acme").await;
    let created = app.create_api_key(&admin, "acme", "inference").await;
    let secret = created["secret"].as_str().unwrap();
    let digest: Vec<u8> = sqlx::query_scalar("SELECT secret_digest FROM api_keys WHERE id = $1::uuid")
        .bind(created["id"].as_str().unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(digest.len(), 32);
    let dump: String = sqlx::query_scalar("SELECT string_agg(row_to_json(k)::text, '') FROM api_keys k")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(!dump.contains(&secret[secret.len() - 20..]));
}

#[tokio::test]
async fn suspending_a_tenant_stops_its_tokens_and_keys_at_once() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let (owner, _) = app.session(&acme.emails["owner"], None).await;
    assert_eq!(app.get_as("/v1/me", &owner).await.status(), 200);
    assert_eq!(app.get_as("/v1/me", &acme.inference_key).await.status(), 200);

    assert_eq!(app.call("POST", "/v1/tenants/acme/suspend", Some(&admin), None).await.status(), 200);
    assert_problem(app.get_as("/v1/me", &owner).await, 403, "tenant_suspended").await;
    assert_problem(app.get_as("/v1/me", &acme.inference_key).await, 403, "tenant_suspended").await;
    assert_problem(app.login(&acme.emails["owner"], PASSWORD, Some("acme")).await, 403, "tenant_suspended").await;

    assert_eq!(app.call("POST", "/v1/tenants/acme/resume", Some(&admin), None).await.status(), 200);
    assert_eq!(app.get_as("/v1/me", &owner).await.status(), 200);
    assert_eq!(app.get_as("/v1/me", &acme.inference_key).await.status(), 200);
}

#[tokio::test]
async fn tenant_rate_limits_answer_429_with_retry_after() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    app.create_tenant(&admin, "tiny", json!({ "rate_limit_per_second": 1, "rate_limit_burst": 2 })).await;
    let key = app.create_api_key(&admin, "tiny", "inference").await["secret"].as_str().unwrap().to_owned();
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let response = app.get_as("/v1/me", &key).await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 && limited.is_none() {
            limited = Some(response);
        }
    }
    assert_eq!(&statuses[..2], &[200, 200], "{statuses:?}");
    let limited = limited.unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    assert!(limited.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_problem(limited, 429, "rate_limited").await;
}

/// Concurrent requests that find the tenant's lease spent share one refill instead of each
/// taking a lease of its own from Redis: the shared bucket loses no more than the tokens spent
/// plus about one lease in flight.
#[tokio::test]
async fn concurrent_requests_share_one_rate_limit_refill() {
    use tessera::tenancy::rate_limit::{Admission as Decision, RateLimiter};
    use tessera::tenancy::{TenantId, TenantInfo, TenantStatus};

    let app = spawn_app().await;
    let limiter = RateLimiter::new(app.state.redis.clone());
    let tenant = TenantInfo {
        id: TenantId(uuid::Uuid::new_v4()),
        slug: "busy".into(),
        status: TenantStatus::Active,
        rate_limit_per_second: 5_000,
        rate_limit_burst: 5_000,
    };
    let mut redis = app.state.redis.connection();
    let redis_now = |time: (u64, u64)| time.0 * 1_000_000 + time.1;
    let started: (u64, u64) = redis::cmd("TIME").query_async(&mut redis).await.unwrap();
    for _ in 0..3 {
        let began = std::time::Instant::now();
        let decisions = futures::future::join_all((0..300).map(|_| limiter.check(&tenant))).await;
        assert!(decisions.iter().all(|d| matches!(d, Decision::Allowed)), "a request within the limit was refused");
        // A waiter whose wake-up was lost is let through only after the limiter's 2 s wait.
        assert!(began.elapsed() < std::time::Duration::from_millis(1_500), "a waiter missed the refill's wake-up");
    }
    let key = app.state.redis.key(&["ratelimit", &tenant.id.0.simple().to_string()]);
    let tat: f64 = redis::cmd("GET").arg(&key).query_async(&mut redis).await.unwrap();
    // Each token moves the bucket's theoretical arrival time by 200 µs (5,000 a second).
    let taken = (tat - redis_now(started) as f64) / 200.0;
    assert!((900.0..=1_300.0).contains(&taken), "900 requests took {taken:.0} tokens from the shared bucket");
}

#[tokio::test]
async fn a_second_platform_admin_cannot_be_bootstrapped() {
    let app = spawn_app().await;
    app.platform_admin().await;
    let again = app.state.identity.bootstrap_admin("second@tessera.test", PASSWORD.to_owned(), &Default::default()).await;
    assert_eq!(again.unwrap_err().code(), tessera::error::Code::Conflict);
}

#[tokio::test]
async fn passwords_are_stored_as_argon2id_hashes() {
    let app = spawn_app().await;
    app.platform_admin().await;
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users").fetch_one(&app.db).await.unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
}

/// RFC 9110: every 401 says which scheme would be accepted, whatever refused the request.
#[tokio::test]
async fn every_401_names_the_bearer_scheme() {
    let app = spawn_app().await;
    let refused = [
        app.get("/v1/me").await,
        app.get_as("/v1/me", "not-a-token").await,
        app.client
            .post(app.url("/v1/auth/login"))
            .json(&serde_json::json!({ "email": "nobody@tessera.test", "password": "wrong password!" }))
            .send()
            .await
            .unwrap(),
    ];
    for response in refused {
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"tessera\"");
    }
}
