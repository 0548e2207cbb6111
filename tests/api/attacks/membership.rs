//! 8. Membership changes take effect at once, not when access tokens expire.

use serde_json::json;

use crate::helpers::{As, assert_problem, spawn_app};

#[tokio::test]
async fn attack_08_a_removed_member_loses_the_tenant_within_seconds() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let owner = app.credential(As::Owner, &acme, &root).await.unwrap();
    let admin = app.credential(As::Admin, &acme, &root).await.unwrap();
    // The admin leaves a key behind, then is removed.
    let key = app.create_api_key(&admin, "acme", "inference").await;
    let me: serde_json::Value = app.get_as("/v1/me", &admin).await.json().await.unwrap();
    let admin_id = me["actor"]["id"].as_str().unwrap().to_owned();
    let removed = app.call("DELETE", &format!("/v1/tenants/acme/members/{admin_id}"), Some(&owner), None).await;
    assert_eq!(removed.status(), 204);

    // Their still-unexpired access token no longer reaches acme, and writes nothing.
    assert_problem(app.get_as("/v1/tenants/acme/members", &admin).await, 401, "token_revoked").await;
    let minted = app.post_json("/v1/tenants/acme/api-keys", Some(&admin), &json!({"name": "backdoor", "role": "admin"})).await;
    assert_eq!(minted.status(), 401);
    let backdoors: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE name = 'backdoor'").fetch_one(&app.db).await.unwrap();
    assert_eq!(backdoors, 0);

    // The key belongs to the tenant: it keeps working, and the list says who made it.
    let secret = key["secret"].as_str().unwrap();
    assert_eq!(app.get_as("/v2/models/none/ready", secret).await.status(), 404);
    let keys = app.items("/v1/tenants/acme/api-keys", &owner).await;
    let listed = keys.iter().find(|k| k["id"] == key["id"]).unwrap();
    assert_eq!(listed["created_by"], admin_id);
    assert_eq!(listed["created_by_email"], acme.emails["admin"]);
}

#[tokio::test]
async fn attack_08_a_demoted_member_loses_the_role_within_seconds() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let owner = app.credential(As::Owner, &acme, &root).await.unwrap();
    let admin = app.credential(As::Admin, &acme, &root).await.unwrap();
    assert_eq!(app.get_as("/v1/tenants/acme/members", &admin).await.status(), 200);
    let me: serde_json::Value = app.get_as("/v1/me", &admin).await.json().await.unwrap();
    let admin_id = me["actor"]["id"].as_str().unwrap().to_owned();
    let demoted = app.call("PATCH", &format!("/v1/tenants/acme/members/{admin_id}"), Some(&owner), Some(json!({"role": "inference"}))).await;
    assert_eq!(demoted.status(), 200);
    assert_problem(app.get_as("/v1/tenants/acme/members", &admin).await, 403, "forbidden").await;
    let minted = app.post_json("/v1/tenants/acme/api-keys", Some(&admin), &json!({"name": "backdoor", "role": "inference"})).await;
    assert_problem(minted, 403, "forbidden").await;

    // Another API process learns of it within its re-check interval: simulate by changing the
    // row directly, as another process would, and waiting.
    let engineer = app.credential(As::MlEngineer, &acme, &root).await.unwrap();
    assert_eq!(app.get_as("/v1/tenants/acme/models", &engineer).await.status(), 200);
    sqlx::query("DELETE FROM memberships WHERE user_id = (SELECT id FROM users WHERE email = $1)")
        .bind(&acme.emails["ml_engineer"])
        .execute(&app.db)
        .await
        .unwrap();
    let lost = crate::helpers::eventually(5, || async { app.get_as("/v1/tenants/acme/models", &engineer).await.status() == 401 }).await;
    assert!(lost, "a member removed elsewhere kept access");
}

#[tokio::test]
async fn attack_08_invitations_die_with_their_inviters_rights() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let owner = app.credential(As::Owner, &acme, &root).await.unwrap();
    let admin = app.credential(As::Admin, &acme, &root).await.unwrap();
    let invite = |token: String, email: &'static str, role: &'static str| {
        let app = &app;
        async move { app.post_json("/v1/tenants/acme/invitations", Some(&token), &json!({ "email": email, "role": role })).await }
    };
    // Not for someone already in: an admin cannot stash an invitation for itself.
    assert_problem(invite(admin.clone(), "admin@acme.test", "admin").await, 409, "already_exists").await;
    let backdoor = invite(admin.clone(), "backdoor@elsewhere.example", "admin").await;
    assert_eq!(backdoor.status(), 201);
    let backdoor = backdoor.json::<serde_json::Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
    let keyed = invite(acme.admin_key.clone(), "keyed@elsewhere.example", "inference").await;
    assert_eq!(keyed.status(), 201);
    let keyed = keyed.json::<serde_json::Value>().await.unwrap()["token"].as_str().unwrap().to_owned();

    // The admin is removed and the key revoked: what they issued is dead.
    let me: serde_json::Value = app.get_as("/v1/me", &admin).await.json().await.unwrap();
    let admin_id = me["actor"]["id"].as_str().unwrap();
    assert_eq!(app.call("DELETE", &format!("/v1/tenants/acme/members/{admin_id}"), Some(&owner), None).await.status(), 204);
    let keys = app.items("/v1/tenants/acme/api-keys", &owner).await;
    let admin_key = keys.iter().find(|k| k["role"] == "admin").unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.call("DELETE", &format!("/v1/tenants/acme/api-keys/{admin_key}"), Some(&owner), None).await.status(), 204);
    for token in [backdoor, keyed] {
        let accepted = app.post_json("/v1/invitations/accept", None, &json!({ "token": token, "password": "a-backdoor-password" })).await;
        assert_problem(accepted, 422, "invalid_invitation").await;
    }
    let joined: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email LIKE '%@elsewhere.example'").fetch_one(&app.db).await.unwrap();
    assert_eq!(joined, 0);
    let listed = app.items("/v1/tenants/acme/invitations", &owner).await;
    assert!(listed.iter().filter(|i| i["email"].as_str().unwrap().ends_with("@elsewhere.example")).all(|i| !i["revoked_at"].is_null()));
}
