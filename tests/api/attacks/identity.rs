//! 1. Identities belong to their owners: adding someone to a tenant never sets or reveals
//! anything about a global user, and passwords are changed only by their owner (or reset
//! through a platform administrator).

use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, assert_problem, spawn_app};

async fn invite(app: &TestApp, token: &str, tenant: &str, email: &str, role: &str) -> serde_json::Value {
    let response = app.post_json(&format!("/v1/tenants/{tenant}/invitations"), Some(token), &json!({ "email": email, "role": role })).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

async fn accept(app: &TestApp, bearer: Option<&str>, body: serde_json::Value) -> reqwest::Response {
    app.post_json("/v1/invitations/accept", bearer, &body).await
}

/// The keys of a JSON object, minus the values that differ by nature between two invitations.
fn shape(value: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn attack_01_another_tenant_cannot_take_over_an_account_or_learn_which_exist() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let alpha = app.tenant_with_members(&root, "alpha").await;
    let beta = app.tenant_with_members(&root, "beta").await;
    let alpha_owner = app.session(&alpha.emails["owner"], Some("alpha")).await.0;
    let beta_owner = app.session(&beta.emails["owner"], Some("beta")).await.0;

    // Beta's owner invites alpha's admin (an existing account) and a stranger: the answers have
    // the same shape and say nothing about either account.
    let known = invite(&app, &beta_owner, "beta", &alpha.emails["admin"], "inference").await;
    let unknown = invite(&app, &beta_owner, "beta", "cfo@alpha.example", "owner").await;
    assert_eq!(shape(&known), shape(&unknown));
    for field in ["user_id", "user_created", "exists"] {
        assert!(known.get(field).is_none() && unknown.get(field).is_none(), "{field} leaks");
    }

    // The inviter holds the token, but cannot use it to set the existing account's password
    // or to join it to beta: the account's owner must be logged in to accept.
    let hijack = accept(&app, None, json!({ "token": known["token"], "password": "attacker-chosen-pass" })).await;
    assert_problem(hijack, 401, "unauthenticated").await;
    let as_beta = accept(&app, Some(&beta_owner), json!({ "token": known["token"] })).await;
    assert_problem(as_beta, 401, "unauthenticated").await;
    assert_problem(app.login(&alpha.emails["admin"], "attacker-chosen-pass", None).await, 401, "invalid_credentials").await;
    assert_eq!(app.login(&alpha.emails["admin"], PASSWORD, Some("alpha")).await.status(), 200);
    let in_beta: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM memberships m JOIN users u ON u.id = m.user_id JOIN tenants t ON t.id = m.tenant_id \
         WHERE u.email = $1 AND t.slug = 'beta'",
    )
    .bind(&alpha.emails["admin"])
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(in_beta, 0);

    // The old attack: beta squats cfo@alpha.example with a password of its choosing...
    let squatted = accept(&app, None, json!({ "token": unknown["token"], "password": "attacker-chosen-pass" })).await;
    assert_eq!(squatted.status(), 201);
    // ...then alpha invites that email as admin. Nothing alpha does sets the password, and the
    // squatter, lacking alpha's token, does not get in.
    let alpha_invite = invite(&app, &alpha_owner, "alpha", "cfo@alpha.example", "admin").await;
    assert_problem(app.login("cfo@alpha.example", "attacker-chosen-pass", Some("alpha")).await, 401, "invalid_credentials").await;
    // The token is single use and bound to its account: presented by the squatter's session it
    // joins only that account (which is what alpha invited), and only once.
    let reused = accept(&app, None, json!({ "token": unknown["token"], "password": "another-password-1" })).await;
    assert_problem(reused, 422, "invalid_invitation").await;
    let _ = alpha_invite;

    // Every step is in the audit trail of the tenant it concerns.
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT e.action FROM audit_events e JOIN tenants t ON t.id = e.tenant_id WHERE t.slug = 'beta' \
         AND e.action LIKE 'member.%' ORDER BY e.seq",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(actions.iter().filter(|a| *a == "member.invited").count() >= 2, "{actions:?}");
    assert!(actions.contains(&"member.joined".to_owned()), "{actions:?}");
}

#[tokio::test]
async fn attack_01_passwords_change_only_with_the_current_one_and_end_every_session() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let email = acme.emails["admin"].clone();
    let (access, refresh) = app.session(&email, Some("acme")).await;
    let (other_access, _) = app.session(&email, Some("acme")).await;

    // A stolen access token alone cannot change the password.
    let wrong = app.post_json("/v1/me/password", Some(&access), &json!({ "current_password": "not-the-password", "new_password": "a-brand-new-password" })).await;
    assert_problem(wrong, 401, "invalid_credentials").await;
    assert_eq!(app.login(&email, PASSWORD, Some("acme")).await.status(), 200);

    let changed = app.post_json("/v1/me/password", Some(&access), &json!({ "current_password": PASSWORD, "new_password": "a-brand-new-password" })).await;
    assert_eq!(changed.status(), 204);
    // Every session ended: both access tokens and the refresh token.
    assert_problem(app.get_as("/v1/me", &access).await, 401, "token_revoked").await;
    assert_problem(app.get_as("/v1/me", &other_access).await, 401, "token_revoked").await;
    let refreshed = app.post_json("/v1/auth/refresh", None, &json!({ "refresh_token": refresh })).await;
    assert_problem(refreshed, 401, "token_revoked").await;
    // A refresh token that escaped the revocation (issued by a login or refresh racing the
    // change) still belongs to the old session epoch, and is refused.
    sqlx::query("UPDATE refresh_tokens SET revoked_at = NULL, used_at = NULL").execute(&app.db).await.unwrap();
    let raced = app.post_json("/v1/auth/refresh", None, &json!({ "refresh_token": refresh })).await;
    assert_problem(raced, 401, "token_revoked").await;
    assert_eq!(app.login(&email, PASSWORD, Some("acme")).await.status(), 401);
    assert_eq!(app.login(&email, "a-brand-new-password", Some("acme")).await.status(), 200);
}

#[tokio::test]
async fn attack_01_only_a_platform_administrator_issues_a_reset_and_it_works_once() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let owner = app.session(&acme.emails["owner"], Some("acme")).await.0;
    let email = acme.emails["admin"].clone();

    let by_owner = app.post_json("/v1/password-resets", Some(&owner), &json!({ "email": email })).await;
    assert_problem(by_owner, 403, "forbidden").await;
    let issued = app.post_json("/v1/password-resets", Some(&root), &json!({ "email": email })).await;
    assert_eq!(issued.status(), 201);
    let token = issued.json::<serde_json::Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
    let (access, _) = app.session(&email, Some("acme")).await;

    let redeemed = app.post_json("/v1/password-resets/redeem", None, &json!({ "token": token, "new_password": "reset-to-this-one" })).await;
    assert_eq!(redeemed.status(), 204);
    assert_problem(app.get_as("/v1/me", &access).await, 401, "token_revoked").await;
    let again = app.post_json("/v1/password-resets/redeem", None, &json!({ "token": token, "new_password": "and-then-this-one" })).await;
    assert_problem(again, 422, "invalid_reset_token").await;
    assert_eq!(app.login(&email, "reset-to-this-one", Some("acme")).await.status(), 200);
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_events WHERE action LIKE 'user.password%' ORDER BY occurred_at")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(actions, ["user.password_reset_issued", "user.password_reset"]);
}
