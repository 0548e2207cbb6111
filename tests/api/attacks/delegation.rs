//! 2. Escalation by delegation: nobody grants rights they do not hold.

use serde_json::json;

use crate::helpers::{As, assert_problem, spawn_app};

const ROLES: [&str; 5] = ["owner", "admin", "ml_engineer", "auditor", "inference"];

fn permissions(role: &str) -> Vec<tessera::identity::Permission> {
    tessera::identity::Role::parse(role).unwrap().permissions().to_vec()
}

fn covers(granter: &str, granted: &str) -> bool {
    let held = permissions(granter);
    permissions(granted).iter().all(|p| held.contains(p))
}

#[tokio::test]
async fn attack_02_an_admin_cannot_mint_an_auditor_key_and_export_the_audit_log() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let admin = app.credential(As::Admin, &acme, &root).await.unwrap();

    assert_problem(app.get_as("/v1/tenants/acme/audit/export", &admin).await, 403, "forbidden").await;
    let minted = app.post_json("/v1/tenants/acme/api-keys", Some(&admin), &json!({"name": "x", "role": "auditor"})).await;
    assert_problem(minted, 403, "forbidden").await;
    // Nor through a member or a role change.
    let invited = app.post_json("/v1/tenants/acme/invitations", Some(&admin), &json!({"email": "mole@acme.test", "role": "auditor"})).await;
    assert_problem(invited, 403, "forbidden").await;
    let members = app.items("/v1/tenants/acme/members", &admin).await;
    let engineer = members.iter().find(|m| m["role"] == "ml_engineer").unwrap()["user_id"].as_str().unwrap().to_owned();
    let promoted = app
        .call("PATCH", &format!("/v1/tenants/acme/members/{engineer}"), Some(&admin), Some(json!({"role": "auditor"})))
        .await;
    assert_problem(promoted, 403, "forbidden").await;
    // An admin cannot touch a member whose rights exceed its own either.
    let auditor = members.iter().find(|m| m["role"] == "auditor").unwrap()["user_id"].as_str().unwrap().to_owned();
    let demoted = app
        .call("PATCH", &format!("/v1/tenants/acme/members/{auditor}"), Some(&admin), Some(json!({"role": "inference"})))
        .await;
    assert_problem(demoted, 403, "forbidden").await;
    // An admin API key is held to the same rule.
    let minted = app.post_json("/v1/tenants/acme/api-keys", Some(&acme.admin_key), &json!({"name": "x", "role": "auditor"})).await;
    assert_problem(minted, 403, "forbidden").await;

    // Nothing was written: no auditor key, no new member, roles unchanged.
    let (keys, moles): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM api_keys WHERE role = 'auditor'), (SELECT count(*) FROM invitations WHERE email = 'mole@acme.test')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((keys, moles), (0, 0));
    let roles: Vec<String> = sqlx::query_scalar("SELECT role FROM memberships ORDER BY role").fetch_all(&app.db).await.unwrap();
    assert_eq!(roles, ["admin", "auditor", "inference", "ml_engineer", "owner"]);
}

#[tokio::test]
async fn attack_02_every_granter_role_against_every_granted_role() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    for granter in ROLES {
        let token = app.session(&acme.emails[granter], Some("acme")).await.0;
        let may_manage = permissions(granter).contains(&tessera::identity::Permission::ApiKeysManage);
        for granted in ROLES {
            let body = json!({"name": format!("{granter}->{granted}"), "role": granted});
            let response = app.post_json("/v1/tenants/acme/api-keys", Some(&token), &body).await;
            let status = response.status().as_u16();
            let expected = if !may_manage || !covers(granter, granted) {
                403
            } else if granted == "owner" {
                400 // API keys never carry the owner role
            } else {
                201
            };
            assert_eq!(status, expected, "{granter} creating a {granted} key: {}", response.text().await.unwrap());
        }
    }
}
