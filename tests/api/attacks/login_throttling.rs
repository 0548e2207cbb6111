//! 3. Login throttling that cannot be raced, sprayed around, or turned into a lock-out.

use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, spawn_app_with};

async fn login_from(app: &TestApp, client: &str, email: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/auth/login"))
        .header("x-forwarded-for", client)
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
}

/// Tessera behind a trusted reverse proxy on loopback, so each test client has its own address.
async fn behind_proxy() -> TestApp {
    spawn_app_with(|s| s.server.trusted_proxies = vec!["127.0.0.1".into()]).await
}

#[tokio::test]
async fn attack_03_sixty_parallel_guesses_get_five_checks_and_lock_nobody_else_out() {
    let app = behind_proxy().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let victim = acme.emails["owner"].clone();

    let guesses = (0..60).map(|i| {
        let (app, victim) = (&app, &victim);
        async move { login_from(app, "198.51.100.7", victim, &format!("wrong-password-{i:02}")).await.status().as_u16() }
    });
    let statuses = futures::future::join_all(guesses).await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((checked, throttled), (5, 55), "{statuses:?}");

    // The attacker's client backs off on that account, even with the right password...
    let response = login_from(&app, "198.51.100.7", &victim, PASSWORD).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    // ...but the victim, from their own client, is not locked out,
    assert_eq!(login_from(&app, "203.0.113.20", &victim, PASSWORD).await.status(), 200);
    // and neither is anyone else behind the attacker's address (a shared NAT or proxy).
    assert_eq!(login_from(&app, "198.51.100.7", "root@tessera.test", PASSWORD).await.status(), 200);
    // A forged X-Forwarded-For prefix does not buy a fresh client: the proxy's hop counts,
    // whether the client's part comes first in the line or in a line of its own.
    let forged = login_from(&app, "10.9.9.9, 198.51.100.7", &victim, PASSWORD).await;
    assert_eq!(forged.status(), 429);
    let forged_line = app
        .client
        .post(app.url("/v1/auth/login"))
        .header("x-forwarded-for", "10.9.9.9")
        .header("x-forwarded-for", "198.51.100.7")
        .json(&json!({ "email": victim, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(forged_line.status(), 429);
}

#[tokio::test]
async fn attack_03_a_client_spraying_many_accounts_is_refused_everywhere_and_only_it() {
    let app = behind_proxy().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let max = app.settings.auth.login_max_accounts_per_client as usize;
    for i in 0..max {
        let response = login_from(&app, "198.51.100.66", &format!("user{i}@acme.test"), "Winter2026!!").await;
        assert_eq!(response.status(), 401, "attempt {i}");
    }
    let next = login_from(&app, "198.51.100.66", "another@acme.test", "Winter2026!!").await;
    assert_eq!(next.status(), 429);
    // Even a right password from the sprayer is refused; the account's owner elsewhere is not.
    assert_eq!(login_from(&app, "198.51.100.66", &acme.emails["admin"], PASSWORD).await.status(), 429);
    assert_eq!(login_from(&app, "198.51.100.67", &acme.emails["admin"], PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn attack_03_password_hashing_is_bounded_and_answers_503_beyond() {
    let app = spawn_app_with(|s| {
        s.server.trusted_proxies = vec!["127.0.0.1".into()];
        s.auth.password_hash_concurrency = 1;
        // Hashes slow enough to overlap.
        s.auth.argon2_memory_kib = 32 * 1024;
        s.auth.argon2_iterations = 4;
    })
    .await;
    let attempts = (0..24).map(|i| {
        let app = &app;
        async move {
            let response = login_from(app, &format!("198.51.100.{}", 100 + i), &format!("u{i}@example.com"), "a-wrong-password").await;
            let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (response.status().as_u16(), retry_after)
        }
    });
    let results = futures::future::join_all(attempts).await;
    assert!(results.iter().all(|(s, _)| *s == 401 || *s == 503), "{results:?}");
    let busy: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert!(!busy.is_empty(), "24 concurrent hashes with one slot: some must be refused: {results:?}");
    assert!(busy.iter().all(|(_, retry)| retry.is_some()), "{results:?}");
}
