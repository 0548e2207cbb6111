//! Tenant A's callers addressing tenant B get 404 on every tenant-scoped route and change
//! nothing; and row-level security alone hides B's rows from a transaction acting for A.

use sqlx::{Connection, Executor, PgConnection, Row};

use crate::authz_matrix::{fill, spec_routes};
use crate::helpers::{As, assert_problem, spawn_app};

async fn snapshot(app: &crate::helpers::TestApp) -> String {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT row_to_json(x)::text FROM ( \
           SELECT 'tenant' AS kind, slug AS a, status AS b FROM tenants \
           UNION ALL SELECT 'member', tenant_id::text, role FROM memberships \
           UNION ALL SELECT 'key', tenant_id::text, coalesce(revoked_at::text, name) FROM api_keys) x ORDER BY 1",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    rows.join("\n")
}

#[tokio::test]
async fn callers_of_one_tenant_get_404_for_every_route_of_another() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    app.tenant_with_members(&admin, "globex").await;
    let before = snapshot(&app).await;

    let mut failures = Vec::new();
    for (method, path, _) in spec_routes().into_iter().filter(|(_, p, _)| p.contains("{tenant}")) {
        for who in [As::Owner, As::Admin, As::MlEngineer, As::Auditor, As::Inference, As::AdminKey, As::InferenceKey] {
            let token = app.credential(who, &acme, &admin).await;
            let body = matches!(method.as_str(), "POST" | "PATCH").then(|| serde_json::json!({}));
            let response = app.call(&method, &fill(&path, "globex"), token.as_deref(), body).await;
            if response.status() != 404 {
                failures.push(format!("{method} {path} as acme {who:?}: {}", response.status()));
            }
        }
    }
    assert!(failures.is_empty(), "cross-tenant access not hidden:\n{}", failures.join("\n"));
    assert_eq!(before, snapshot(&app).await, "a cross-tenant request changed something");
    // A tenant that does not exist looks exactly like one that is not yours.
    let token = app.credential(As::Owner, &acme, &admin).await.unwrap();
    let missing = assert_problem(app.get_as("/v1/tenants/nope/members", &token).await, 404, "not_found").await;
    let hidden = assert_problem(app.get_as("/v1/tenants/globex/members", &token).await, 404, "not_found").await;
    assert_eq!(missing["title"], hidden["title"]);
}

#[tokio::test]
async fn another_tenants_key_id_in_your_own_path_is_404_and_untouched() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let globex = app.tenant_with_members(&admin, "globex").await;
    let key = app.create_api_key(&admin, "globex", "inference").await;
    let owner = app.credential(As::Owner, &acme, &admin).await.unwrap();
    let path = format!("/v1/tenants/acme/api-keys/{}", key["id"].as_str().unwrap());
    assert_problem(app.call("DELETE", &path, Some(&owner), None).await, 404, "not_found").await;
    assert_eq!(app.get_as("/v1/me", key["secret"].as_str().unwrap()).await.status(), 200);

    let members = app.items("/v1/tenants/globex/members", &admin).await;
    let globex_user = members[0]["user_id"].as_str().unwrap();
    let path = format!("/v1/tenants/acme/members/{globex_user}");
    assert_problem(app.call("DELETE", &path, Some(&owner), None).await, 404, "not_found").await;
    let body = serde_json::json!({ "role": "admin" });
    assert_problem(app.call("PATCH", &path, Some(&owner), Some(body)).await, 404, "not_found").await;
    let _ = globex;
}

/// The application role under tenant A's setting, with raw SQL: RLS alone must hide B.
#[tokio::test]
async fn row_level_security_alone_hides_other_tenants_rows() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let globex = app.tenant_with_members(&admin, "globex").await;

    let mut conn = PgConnection::connect(&app.settings.database.url).await.unwrap();
    let role: String = sqlx::query_scalar("SELECT current_user").fetch_one(&mut conn).await.unwrap();
    assert_eq!(role, "tessera_app");
    let bypass: bool = sqlx::query_scalar("SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!bypass, "the application role must not bypass row-level security");

    // No tenant set: nothing tenant-owned is visible.
    for table in ["memberships", "api_keys"] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table} visible without a tenant");
    }

    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)").bind(&acme.id).execute(&mut *tx).await.unwrap();
    for table in ["memberships", "api_keys"] {
        let tenants: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT DISTINCT tenant_id::text FROM {table}")))
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert_eq!(tenants, vec![acme.id.clone()], "{table} leaks other tenants");
    }
    let updated = sqlx::query("UPDATE api_keys SET name = 'hijacked' WHERE tenant_id = $1::uuid")
        .bind(&globex.id)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 0);
    let insert = tx
        .execute(
            sqlx::query("INSERT INTO memberships (tenant_id, user_id, role) SELECT $1::uuid, id, 'owner' FROM users LIMIT 1")
                .bind(&globex.id),
        )
        .await;
    assert!(insert.is_err(), "RLS must refuse writing another tenant's rows");
    tx.rollback().await.unwrap();

    let row = sqlx::query("SELECT count(*) AS n FROM api_keys WHERE name = 'hijacked'").fetch_one(&app.db).await.unwrap();
    assert_eq!(row.get::<i64, _>("n"), 0);
}

/// The guard decides before any body is read: a refused request's malformed body is never judged.
#[tokio::test]
async fn refusals_come_before_the_body_is_read() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    app.tenant_with_members(&admin, "globex").await;
    let inference = app.credential(As::Inference, &acme, &admin).await.unwrap();
    for (path, status) in [("/v1/tenants/acme/api-keys", 403), ("/v1/tenants/globex/api-keys", 404), ("/v1/tenants/nope/api-keys", 404)] {
        let response = app
            .client
            .post(app.url(path))
            .bearer_auth(&inference)
            .header("content-type", "application/json")
            .body("{bad")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    let response = app.client.post(app.url("/v1/tenants/acme/api-keys")).body("{bad").send().await.unwrap();
    assert_problem(response, 401, "unauthenticated").await;
}
