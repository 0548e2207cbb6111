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

/// An admin who is leaving makes admin keys first, one with another so that it does not name
/// her as its creator, and an invitation with that one: once she is removed, or demoted below
/// admin, none of them works, so she has no way back into the tenant. Keys that cannot manage
/// members or keys stay: they serve the tenant's machines.
#[tokio::test]
async fn attack_08_a_removed_or_demoted_admin_keeps_no_admin_key_and_no_way_back() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    for (slug, change) in [("acme", "removed"), ("globex", "demoted")] {
        let tenant = app.tenant_with_members(&root, slug).await;
        let owner = app.credential(As::Owner, &tenant, &root).await.unwrap();
        let admin = app.credential(As::Admin, &tenant, &root).await.unwrap();
        let secret = |created: serde_json::Value| created["secret"].as_str().unwrap().to_owned();
        let first = secret(app.create_api_key(&admin, slug, "admin").await);
        let second = secret(app.create_api_key(&first, slug, "admin").await);
        let machine = secret(app.create_api_key(&second, slug, "inference").await);
        let own = secret(app.create_api_key(&admin, slug, "ml_engineer").await);
        let invitation = app
            .post_json(&format!("/v1/tenants/{slug}/invitations"), Some(&second), &json!({ "email": "accomplice@elsewhere.example", "role": "admin" }))
            .await;
        assert_eq!(invitation.status(), 201);
        let invitation = invitation.json::<serde_json::Value>().await.unwrap()["token"].as_str().unwrap().to_owned();

        let me: serde_json::Value = app.get_as("/v1/me", &admin).await.json().await.unwrap();
        let admin_id = me["actor"]["id"].as_str().unwrap().to_owned();
        let path = format!("/v1/tenants/{slug}/members/{admin_id}");
        let changed = match change {
            "removed" => app.call("DELETE", &path, Some(&owner), None).await,
            _ => app.call("PATCH", &path, Some(&owner), Some(json!({ "role": "ml_engineer" }))).await,
        };
        assert!(changed.status().is_success(), "{change}: {}", changed.status());

        for key in [&first, &second] {
            assert_eq!(app.get_as(&format!("/v1/tenants/{slug}/members"), key).await.status(), 401, "{change}: an admin key still works");
            let back = app
                .post_json(&format!("/v1/tenants/{slug}/invitations"), Some(key), &json!({ "email": tenant.emails["admin"], "role": "admin" }))
                .await;
            assert_eq!(back.status(), 401, "{change}: an admin key still invites");
        }
        let accepted = app.post_json("/v1/invitations/accept", None, &json!({ "token": invitation, "password": "a-backdoor-password" })).await;
        assert_problem(accepted, 422, "invalid_invitation").await;
        // The machines' keys go on.
        assert_eq!(app.get_as("/v2/models/none/ready", &machine).await.status(), 404, "{change}");
        assert_eq!(app.get_as(&format!("/v1/tenants/{slug}/models"), &own).await.status(), 200, "{change}");
        let revoked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_events WHERE tenant_id = $1::uuid AND action = 'api_key.revoked' AND details->>'creator' = $2",
        )
        .bind(&tenant.id)
        .bind(&admin_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert_eq!(revoked, 2, "{change}: each revocation is audited");

        // Revoking an admin key revokes the admin keys made with it.
        let parent = app.create_api_key(&owner, slug, "admin").await;
        let child = secret(app.create_api_key(parent["secret"].as_str().unwrap(), slug, "admin").await);
        let parent_id = parent["id"].as_str().unwrap();
        assert_eq!(app.call("DELETE", &format!("/v1/tenants/{slug}/api-keys/{parent_id}"), Some(&owner), None).await.status(), 204);
        assert_eq!(app.get_as(&format!("/v1/tenants/{slug}/members"), &child).await.status(), 401, "a key made by a revoked one");
    }
}

/// A credential revoked by another process is still trusted here for a moment (the
/// authenticator's cache): it makes no key in that moment, since making one asks the database
/// whether its creator still holds the role.
#[tokio::test]
async fn attack_08_a_credential_revoked_elsewhere_makes_no_key_while_it_is_cached() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let admin = app.credential(As::Admin, &acme, &root).await.unwrap();
    let key = app.create_api_key(&admin, "acme", "admin").await;
    let secret = key["secret"].as_str().unwrap().to_owned();
    // Both credentials are in the cache now.
    assert_eq!(app.get_as("/v1/tenants/acme/members", &secret).await.status(), 200);
    assert_eq!(app.get_as("/v1/tenants/acme/members", &admin).await.status(), 200);
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1::uuid").bind(key["id"].as_str().unwrap()).execute(&app.db).await.unwrap();
    sqlx::query("DELETE FROM memberships WHERE user_id = (SELECT id FROM users WHERE email = $1)")
        .bind(&acme.emails["admin"])
        .execute(&app.db)
        .await
        .unwrap();
    for credential in [&secret, &admin] {
        let minted = app.post_json("/v1/tenants/acme/api-keys", Some(credential), &json!({ "name": "late", "role": "admin" })).await;
        assert_problem(minted, 401, "token_revoked").await;
    }
    let late: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE name = 'late'").fetch_one(&app.db).await.unwrap();
    assert_eq!(late, 0);
}
