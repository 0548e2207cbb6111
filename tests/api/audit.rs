use std::collections::HashMap;

use serde_json::json;
use tessera::audit::sink::CallEvent;
use tessera::audit::verify::{PublicKeys, Verdict, verify_database, verify_export};
use tessera::audit::{AuditActor, AuditEvent, Outcome, PLATFORM};
use tessera::tenancy::TenantId;

use crate::helpers::{As, PASSWORD, TestApp, assert_problem, spawn_app};

async fn public_keys(app: &TestApp) -> PublicKeys {
    app.audit_keys().await
}

async fn events(app: &TestApp) -> Vec<(String, String, String, Option<String>, String)> {
    sqlx::query_as(
        "SELECT tenant_id::text, action, actor_type, actor_id, outcome FROM audit_events ORDER BY tenant_id, seq",
    )
    .fetch_all(&app.db)
    .await
    .unwrap()
}

async fn verify_all(app: &TestApp) -> Vec<(uuid::Uuid, Verdict)> {
    verify_database(&app.db, None, &public_keys(app).await).await.unwrap()
}

async fn tamper(app: &TestApp, sql: &str) {
    app.tamper(sql).await
}

#[tokio::test]
async fn each_action_produces_exactly_one_event_with_its_actor_and_tenant() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let (owner, refresh) = app.session(&acme.emails["owner"], None).await;
    let owner_id = app.get_as("/v1/me", &owner).await.json::<serde_json::Value>().await.unwrap()["actor"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.login(&acme.emails["owner"], "wrong-password!", None).await;
    let pair: serde_json::Value = app.post_json("/v1/auth/refresh", None, &json!({ "refresh_token": refresh })).await.json().await.unwrap();
    let owner = pair["access_token"].as_str().unwrap().to_owned();
    let key = app.create_api_key(&owner, "acme", "inference").await;
    app.call("DELETE", &format!("/v1/tenants/acme/api-keys/{}", key["id"].as_str().unwrap()), Some(&owner), None).await;
    let inference_user = app.items("/v1/tenants/acme/members", &owner).await;
    let inference_user = inference_user.iter().find(|m| m["role"] == "inference").unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.call("PATCH", &format!("/v1/tenants/acme/members/{inference_user}"), Some(&owner), Some(json!({"role": "auditor"}))).await;
    app.call("DELETE", &format!("/v1/tenants/acme/members/{inference_user}"), Some(&owner), None).await;
    app.call("POST", "/v1/tenants/acme/suspend", Some(&admin), None).await;
    app.call("POST", "/v1/tenants/acme/resume", Some(&admin), None).await;
    app.post_json("/v1/auth/logout", Some(&owner), &json!({})).await;
    // Failed logins reach the platform chain collapsed, when their minute is flushed.
    app.state.identity.flush_login_failures(time::OffsetDateTime::now_utc() + time::Duration::minutes(1)).await.unwrap();

    let all = events(&app).await;
    let acme_id = acme.id.clone();
    let count = |tenant: &str, action: &str, outcome: &str| {
        all.iter().filter(|e| e.0 == tenant && e.1 == action && e.4 == outcome).count()
    };
    let platform = PLATFORM.to_string();
    assert_eq!(count(&platform, "platform.admin_bootstrapped", "success"), 1);
    assert_eq!(count(&acme_id, "tenant.created", "success"), 1);
    assert_eq!(count(&acme_id, "member.invited", "success"), 5);
    assert_eq!(count(&acme_id, "member.joined", "success"), 5);
    assert_eq!(count(&acme_id, "api_key.created", "success"), 3);
    assert_eq!(count(&acme_id, "api_key.revoked", "success"), 1);
    assert_eq!(count(&acme_id, "member.role_changed", "success"), 1);
    assert_eq!(count(&acme_id, "member.removed", "success"), 1);
    assert_eq!(count(&acme_id, "tenant.suspended", "success"), 1);
    assert_eq!(count(&acme_id, "tenant.resumed", "success"), 1);
    assert_eq!(count(&acme_id, "auth.refresh", "success"), 1);
    assert_eq!(count(&acme_id, "auth.logout", "success"), 1);
    assert_eq!(count(&platform, "auth.login", "failure"), 1);
    let owner_actions: Vec<&str> = all
        .iter()
        .filter(|e| e.0 == acme_id && e.3.as_deref() == Some(owner_id.as_str()))
        .map(|e| e.1.as_str())
        .collect();
    for action in ["auth.login", "auth.refresh", "api_key.created", "api_key.revoked", "member.role_changed", "member.removed", "auth.logout"] {
        assert!(owner_actions.contains(&action), "{action} not attributed to the owner: {owner_actions:?}");
    }
    let text = format!("{:?}", sqlx::query_scalar::<_, String>("SELECT string_agg(details::text, ' ') FROM audit_events").fetch_one(&app.db).await.unwrap());
    assert!(!text.contains(PASSWORD) && !text.contains("wrong-password!"), "passwords reached the audit log");
    assert!(!text.contains(key["secret"].as_str().unwrap()), "an API key secret reached the audit log");
    for (tenant, verdict) in verify_all(&app).await {
        assert!(matches!(verdict, Verdict::Ok { .. }), "{tenant}: {verdict}");
    }
}

#[tokio::test]
async fn an_action_whose_event_cannot_be_written_is_rolled_back() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    app.create_tenant(&admin, "acme", json!({})).await;
    sqlx::query("REVOKE EXECUTE ON FUNCTION audit_append(uuid, json, text[]) FROM tessera_app").execute(&app.db).await.unwrap();
    let response = app.post_json("/v1/tenants/acme/api-keys", Some(&admin), &json!({ "name": "k", "role": "inference" })).await;
    assert_problem(response, 500, "internal_error").await;
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys").fetch_one(&app.db).await.unwrap();
    assert_eq!(keys, 0, "the key was created without its audit event");
    sqlx::query("GRANT EXECUTE ON FUNCTION audit_append(uuid, json, text[]) TO tessera_app").execute(&app.db).await.unwrap();
    let response = app.post_json("/v1/tenants/acme/api-keys", Some(&admin), &json!({ "name": "k", "role": "inference" })).await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn a_thousand_concurrent_writes_leave_every_chain_linear_and_gapless() {
    // A thousand writers queue for 16 connections: let them wait instead of timing out.
    let app = crate::helpers::spawn_app_with(|s| {
        s.database.max_connections = 16;
        s.database.acquire_timeout_ms = 120_000;
    })
    .await;
    let admin = app.platform_admin().await;
    let mut tenants = vec![None];
    for slug in ["t1", "t2", "t3", "t4"] {
        let t = app.create_tenant(&admin, slug, json!({})).await;
        tenants.push(Some(TenantId(t["id"].as_str().unwrap().parse().unwrap())));
    }
    let before: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>("SELECT tenant_id::text, count(*) FROM audit_events GROUP BY 1")
        .fetch_all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000usize {
        let state = app.state.clone();
        let tenant = tenants[i % tenants.len()];
        tasks.spawn(async move {
            let event = AuditEvent::new(tenant, AuditActor::anonymous(), "test.concurrent").details(json!({ "i": i }));
            state.auditor.record_alone(&state.db, &Default::default(), vec![event]).await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let verdicts = verify_all(&app).await;
    assert_eq!(verdicts.len(), 5);
    for (tenant, verdict) in &verdicts {
        let expected = before.get(&tenant.to_string()).copied().unwrap_or(0) as u64 + 200;
        assert_eq!(*verdict, Verdict::Ok { count: expected, signature_checked: true }, "{tenant}");
    }
    let gaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT seq - lag(seq) OVER (PARTITION BY tenant_id ORDER BY seq) AS step FROM audit_events) s WHERE step <> 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(gaps, 0);
}

#[tokio::test]
async fn auditors_see_and_export_only_their_own_tenant() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let globex = app.tenant_with_members(&admin, "globex").await;
    let auditor = app.credential(As::Auditor, &acme, &admin).await.unwrap();

    assert_problem(app.get_as("/v1/tenants/globex/audit/events", &auditor).await, 404, "not_found").await;
    assert_problem(app.get_as("/v1/tenants/globex/audit/export", &auditor).await, 404, "not_found").await;
    assert_problem(app.get_as("/v1/tenants/platform/audit/events", &auditor).await, 404, "not_found").await;
    assert_problem(app.get_as("/v1/platform/audit/events", &auditor).await, 403, "forbidden").await;
    assert_problem(app.get_as("/v1/platform/audit/export", &auditor).await, 403, "forbidden").await;

    // The platform's own chain is the platform administrators'.
    let platform: serde_json::Value = app.get_as("/v1/platform/audit/events", &admin).await.json().await.unwrap();
    let actions: Vec<&str> = platform["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"platform.admin_bootstrapped"), "{actions:?}");
    assert!(platform["items"].as_array().unwrap().iter().all(|e| e["tenant_id"] != acme.id.as_str()));
    let export = app.get_as("/v1/platform/audit/export?format=jsonl", &admin).await.text().await.unwrap();
    assert!(export.contains("platform.admin_bootstrapped") && export.contains("\"manifest\""), "{export}");

    let page: serde_json::Value = app.get_as("/v1/tenants/acme/audit/events?limit=1000", &auditor).await.json().await.unwrap();
    let tenants: std::collections::HashSet<&str> =
        page["items"].as_array().unwrap().iter().map(|e| e["tenant_id"].as_str().unwrap()).collect();
    assert_eq!(tenants, [acme.id.as_str()].into_iter().collect());
    let export = app.get_as("/v1/tenants/acme/audit/export", &auditor).await.text().await.unwrap();
    assert!(!export.contains(&globex.id), "tenant B's data in tenant A's export");
    assert!(!export.contains("globex"));
}

#[tokio::test]
async fn listing_filters_and_pages_with_a_cursor() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let owner = app.credential(As::Owner, &acme, &admin).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tenants/acme/audit/events?action=member.joined&limit=2&cursor={c}"),
            None => "/v1/tenants/acme/audit/events?action=member.joined&limit=2".to_owned(),
        };
        let page: serde_json::Value = app.get_as(&path, &owner).await.json().await.unwrap();
        for e in page["items"].as_array().unwrap() {
            assert_eq!(e["action"], "member.joined");
            seen.push(e["seq"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let prefix: serde_json::Value = app.get_as("/v1/tenants/acme/audit/events?action=auth.", &owner).await.json().await.unwrap();
    assert!(prefix["items"].as_array().unwrap().iter().all(|e| e["action"].as_str().unwrap().starts_with("auth.")));
    assert_problem(app.get_as("/v1/tenants/acme/audit/events?from=yesterday", &owner).await, 400, "invalid_query").await;
    assert_problem(app.get_as("/v1/tenants/acme/audit/events?cursor=garbage", &owner).await, 400, "invalid_query").await;
    assert_problem(app.get_as("/v1/tenants/acme/audit/events?limit=0", &owner).await, 400, "invalid_query").await;
}

async fn export(app: &TestApp, token: &str, query: &str) -> String {
    let response = app.get_as(&format!("/v1/tenants/acme/audit/export?{query}"), token).await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

fn verdict_of(text: &str, keys: &PublicKeys) -> Verdict {
    verify_export(std::io::Cursor::new(text.as_bytes().to_vec()), keys)
}

#[tokio::test]
async fn exports_verify_offline_and_any_edited_byte_is_detected() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let owner = app.credential(As::Owner, &acme, &admin).await.unwrap();
    let keys = public_keys(&app).await;

    for format in ["jsonl", "csv"] {
        let text = export(&app, &owner, &format!("format={format}")).await;
        let verdict = verdict_of(&text, &keys);
        assert!(matches!(verdict, Verdict::Ok { count, signature_checked: true } if count >= 8), "{format}: {verdict}");

        // Flip one byte inside an event's actor id, its details, and the manifest.
        let line = text.lines().find(|l| l.contains("member.joined")).unwrap();
        let position = text.find(line).unwrap() + line.find("@acme.test").unwrap() + 1;
        let mut edited = text.clone().into_bytes();
        edited[position] = if edited[position] == b'a' { b'b' } else { b'a' };
        let edited = String::from_utf8(edited).unwrap();
        assert!(matches!(verdict_of(&edited, &keys), Verdict::Broken { seq: Some(_), .. }), "{format}: edit not detected");

        let manifest_at = text.rfind("events_digest").unwrap() + 20;
        let mut edited = text.clone().into_bytes();
        edited[manifest_at] = if edited[manifest_at] == b'0' { b'1' } else { b'0' };
        assert!(matches!(verdict_of(&String::from_utf8(edited).unwrap(), &keys), Verdict::Broken { .. }), "{format}: manifest edit");

        let truncated: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
        assert!(matches!(verdict_of(&truncated, &keys), Verdict::Broken { .. }), "{format}: truncation");

        let other = PublicKeys::parse(&tessera::audit::signing::AuditSigner::new(&tessera::crypto::generate_key_entry("x")).unwrap().public_keys().to_string()).unwrap();
        assert!(matches!(verdict_of(&text, &other), Verdict::Broken { .. }), "{format}: wrong key accepted");
    }

    // Deleting an event from a contiguous export breaks it at that sequence number.
    let text = export(&app, &owner, "format=jsonl").await;
    let lines: Vec<&str> = text.lines().collect();
    let removed: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
    let without: String = lines.iter().enumerate().filter(|(i, _)| *i != 3).map(|(_, l)| format!("{l}\n")).collect();
    assert_eq!(
        verdict_of(&without, &keys),
        Verdict::Broken { seq: removed["seq"].as_i64(), reason: format!("missing: seq {} is absent (next present is {})", removed["seq"], removed["seq"].as_i64().unwrap() + 1) }
    );

    // A filtered export is not contiguous but still verifies event by event.
    let filtered = export(&app, &owner, "format=csv&action=member.joined").await;
    assert!(matches!(verdict_of(&filtered, &keys), Verdict::Ok { count: 5, .. }));
    // The exports themselves were audited.
    let exported: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = 'audit.exported'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(exported, 4);
}

#[tokio::test]
async fn database_tampering_is_found_at_the_right_sequence_number() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let tenant: uuid::Uuid = acme.id.parse().unwrap();
    let keys = public_keys(&app).await;
    let check = |expected_seq: i64| {
        let app = &app;
        let keys = &keys;
        async move {
            let verdicts = verify_database(&app.db, Some(tenant), keys).await.unwrap();
            match &verdicts[0].1 {
                Verdict::Broken { seq, .. } => assert_eq!(*seq, Some(expected_seq), "{}", verdicts[0].1),
                ok => panic!("tampering at {expected_seq} not detected: {ok}"),
            }
        }
    };
    let clean = verify_database(&app.db, Some(tenant), &keys).await.unwrap();
    assert!(matches!(clean[0].1, Verdict::Ok { .. }));

    // Each tampering is undone by restoring a copy, so the next one is tested on its own.
    sqlx::query("CREATE TABLE audit_backup AS SELECT * FROM audit_events").execute(&app.db).await.unwrap();
    let restore = || async {
        tamper(&app, &format!("DELETE FROM audit_events WHERE tenant_id = '{tenant}'")).await;
        tamper(&app, &format!("INSERT INTO audit_events SELECT * FROM audit_backup WHERE tenant_id = '{tenant}'")).await;
    };
    for (column, value) in [
        ("actor_id", "'someone-else'"),
        ("action", "'member.removed'"),
        ("details", "'{\"role\":\"owner\"}'::json"),
        ("occurred_at", "occurred_at + interval '1 second'"),
        ("outcome", "'failure'"),
        ("client_addr", "'10.0.0.1'"),
    ] {
        tamper(&app, &format!("UPDATE audit_events SET {column} = {value} WHERE tenant_id = '{tenant}' AND seq = 4")).await;
        check(4).await;
        restore().await;
    }
    tamper(&app, &format!("DELETE FROM audit_events WHERE tenant_id = '{tenant}' AND seq = 5")).await;
    check(5).await;
    restore().await;
    // Reordering: two events swap places.
    tamper(&app, &format!("UPDATE audit_events SET seq = 1000003 WHERE tenant_id = '{tenant}' AND seq = 3")).await;
    tamper(&app, &format!("UPDATE audit_events SET seq = 3 WHERE tenant_id = '{tenant}' AND seq = 6")).await;
    tamper(&app, &format!("UPDATE audit_events SET seq = 6 WHERE tenant_id = '{tenant}' AND seq = 1000003")).await;
    check(3).await;
    restore().await;
    // Deleting the newest events is caught against the chain head.
    tamper(&app, &format!("DELETE FROM audit_events WHERE tenant_id = '{tenant}' AND seq >= 7")).await;
    check(7).await;
    restore().await;
    let clean = verify_database(&app.db, Some(tenant), &keys).await.unwrap();
    assert!(matches!(clean[0].1, Verdict::Ok { .. }), "{}", clean[0].1);
}

#[tokio::test]
async fn audit_rows_cannot_be_changed_even_by_their_owner() {
    let app = spawn_app().await;
    app.platform_admin().await;
    let update = sqlx::query("UPDATE audit_events SET action = 'x'").execute(&app.db).await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = sqlx::query("DELETE FROM audit_events").execute(&app.db).await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
    // The application role has no direct write access at all.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&app.settings.database.url).await.unwrap();
    let insert = sqlx::query("INSERT INTO audit_events (tenant_id, seq, id, occurred_at, actor_type, action, outcome, details, prev_hash, hash) \
                              VALUES (gen_random_uuid(), 1, gen_random_uuid(), now(), 'x', 'x', 'success', '{}', '\\x00', '\\x00')")
        .execute(&mut conn)
        .await;
    assert!(insert.is_err());
    // Nor can it append anything that does not continue the chain exactly.
    let forged = json!([{
        "id": uuid::Uuid::new_v4(), "seq": 1, "occurred_at": "2026-01-01T00:00:00.000000Z", "actor_type": "user",
        "actor_id": null, "action": "auth.login", "resource_type": null, "resource_id": null, "outcome": "success",
        "client_addr": null, "user_agent": null, "request_id": null,
        "prev_hash": "00".repeat(32), "hash": "11".repeat(32)
    }]);
    let rogue_append = sqlx::query("SELECT audit_append('00000000-0000-0000-0000-000000000000', $1::json, $2)")
        .bind(forged.to_string())
        .bind(vec!["{}"])
        .execute(&mut conn)
        .await;
    assert!(rogue_append.unwrap_err().to_string().contains("do not continue the chain"));
}

#[tokio::test]
async fn purging_old_events_keeps_the_rest_verifiable_and_is_itself_audited() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    app.tenant_with_members(&admin, "acme").await;
    let cutoff = time::OffsetDateTime::now_utc();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let owner_token = app.session("owner@acme.test", None).await.0;
    app.create_api_key(&owner_token, "acme", "inference").await;

    let summary = tessera::audit::retention::purge(&app.db, "acme", cutoff, &app.state.notary).await.unwrap();
    assert!(summary.starts_with("purged"), "{summary}");
    let remaining: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_events e JOIN tenants t ON t.id = e.tenant_id WHERE t.slug = 'acme' ORDER BY seq",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(remaining.first().map(String::as_str), Some("auth.login"));
    assert_eq!(remaining.last().map(String::as_str), Some("audit.purged"));
    for (tenant, verdict) in verify_all(&app).await {
        assert!(matches!(verdict, Verdict::Ok { .. }), "{tenant}: {verdict}");
    }
}

#[tokio::test]
async fn emails_and_addresses_are_masked_when_the_tenant_asks() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let owner = app.credential(As::Owner, &acme, &admin).await.unwrap();
    let body = json!({ "mask_emails": true, "mask_client_addr": true, "inference_mode": "every_call", "inference_sample_rate": 1.0 });
    assert_eq!(app.call("PUT", "/v1/tenants/acme/audit/settings", Some(&owner), Some(body)).await.status(), 200);
    app.add_member(&owner, "acme", "newcomer@acme.test", "auditor").await;
    let (details, addr): (String, Option<String>) = sqlx::query_as(
        "SELECT details::text, client_addr FROM audit_events WHERE action = 'member.invited' ORDER BY occurred_at DESC LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(details.contains("n***@acme.test") && !details.contains("newcomer"), "{details}");
    assert_eq!(addr.as_deref(), Some("127.0.0.0"));
}

#[tokio::test]
async fn the_verify_command_checks_files_and_the_database() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let owner = app.credential(As::Owner, &acme, &admin).await.unwrap();
    let dir = std::env::temp_dir().join(format!("tessera-audit-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("export.jsonl");
    std::fs::write(&file, export(&app, &owner, "format=jsonl").await).unwrap();
    let keys = dir.join("keys.json");
    std::fs::write(&keys, app.get("/v1/audit/keys").await.text().await.unwrap()).unwrap();

    let run = |args: Vec<String>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
        command.current_dir(env!("CARGO_MANIFEST_DIR")).env("TESSERA_ENV", "test");
        command.env("TESSERA__DATABASE__URL", &app.settings.database.url);
        command.env("TESSERA__DATABASE__MIGRATION_URL", app.settings.database.migration_url.as_deref().unwrap());
        command.env("TESSERA__REGISTRY__STORAGE__PATH", &app.database.artifact_dir);
        command.args(args).output().unwrap()
    };
    let ok = run(vec!["audit".into(), "verify".into(), file.display().to_string(), "--public-key".into(), keys.display().to_string()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("OK"));

    let text = std::fs::read_to_string(&file).unwrap().replacen("member.joined", "member.joinex", 1);
    std::fs::write(&file, text).unwrap();
    let bad = run(vec!["audit".into(), "verify".into(), file.display().to_string(), "--public-key".into(), keys.display().to_string()]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("BROKEN at seq"), "{}", String::from_utf8_lossy(&bad.stdout));

    let database = run(vec!["audit".into(), "verify".into(), "--database".into()]);
    assert!(database.status.success(), "{}{}", String::from_utf8_lossy(&database.stdout), String::from_utf8_lossy(&database.stderr));
    tessera::audit::sign_checkpoints(&app.state.db, &app.state.notary).await.unwrap();
    let digests = run(vec!["audit".into(), "verify".into(), "--database".into(), "--digests".into()]);
    let printed = String::from_utf8_lossy(&digests.stdout);
    assert!(digests.status.success() && printed.contains("digests OK"), "{printed}{}", String::from_utf8_lossy(&digests.stderr));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn checkpoints_sign_every_moved_chain_head() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    app.create_tenant(&admin, "acme", json!({})).await;
    let signed = tessera::audit::sign_checkpoints(&app.state.db, &app.state.notary).await.unwrap();
    assert_eq!(signed, 2, "platform and acme");
    assert_eq!(tessera::audit::sign_checkpoints(&app.state.db, &app.state.notary).await.unwrap(), 0);
}

#[tokio::test]
async fn per_call_events_are_batched_sampled_or_aggregated_as_the_tenant_chose() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let owner = app.credential(As::Owner, &acme, &admin).await.unwrap();
    let tenant = TenantId(acme.id.parse().unwrap());
    let call = |i: usize| CallEvent {
        tenant,
        actor: AuditActor::anonymous(),
        model: "m".into(),
        version: None,
        outcome: Outcome::Success,
        cache: "bypass",
        rows: i as u64,
        code: None,
        not_recordable: false,
        info: Default::default(),
    };
    let count = |mode: &'static str| {
        let db = app.db.clone();
        async move {
            // Calls share chained records; each record lists its calls.
            sqlx::query_scalar::<_, i64>(
                "SELECT coalesce(sum(json_array_length(details->'calls')), 0)::bigint FROM audit_events \
                 WHERE action = 'inference.call' AND details->>'audit_mode' = $1",
            )
            .bind(mode)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };

    for i in 0..300 {
        app.state.audit_sink.call(call(i)).await;
    }
    app.state.audit_sink.flush().await;
    assert_eq!(count("every_call").await, 300);
    let records: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT details FROM audit_events WHERE action = 'inference.call' ORDER BY seq").fetch_all(&app.db).await.unwrap();
    assert!(records.iter().all(|r| r["common"]["resource_id"] == "m"), "shared fields are stated once");
    let listed: Vec<i64> = records
        .iter()
        .flat_map(tessera::audit::sink::expand_calls)
        .map(|call| call["details"]["rows"].as_i64().unwrap())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, (0..300).collect::<Vec<i64>>(), "every call is listed exactly once");

    let settings = json!({ "mask_emails": false, "mask_client_addr": false, "inference_mode": "sampled", "inference_sample_rate": 0.1 });
    assert_eq!(app.call("PUT", "/v1/tenants/acme/audit/settings", Some(&owner), Some(settings)).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_secs(6)).await; // the sink's settings cache expires
    for i in 0..2000 {
        app.state.audit_sink.call(call(i)).await;
    }
    app.state.audit_sink.flush().await;
    let sampled = count("sampled").await;
    assert!((100..=320).contains(&sampled), "sampled {sampled} of 2000 at 10%");

    let settings = json!({ "mask_emails": false, "mask_client_addr": false, "inference_mode": "aggregated", "inference_sample_rate": 1.0 });
    assert_eq!(app.call("PUT", "/v1/tenants/acme/audit/settings", Some(&owner), Some(settings)).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    for i in 0..500 {
        app.state.audit_sink.call(call(i)).await;
    }
    app.state.audit_sink.flush().await;
    let calls: Vec<i64> = sqlx::query_scalar(
        "SELECT (details->>'calls')::bigint FROM audit_events WHERE action = 'inference.call' AND details->>'audit_mode' = 'aggregated'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(calls.iter().sum::<i64>(), 500, "{calls:?}");
    for (tenant, verdict) in verify_all(&app).await {
        assert!(matches!(verdict, Verdict::Ok { .. }), "{tenant}: {verdict}");
    }
}

#[tokio::test]
async fn the_server_verifies_an_export_and_names_the_first_broken_event() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let auditor = app.credential(As::Auditor, &acme, &admin).await.unwrap();
    let verify = |body: String, token: Option<String>| {
        let mut request = app.client.post(app.url("/v1/audit/verify")).header("content-type", "application/octet-stream").body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    for format in ["jsonl", "csv"] {
        let export = app.get_as(&format!("/v1/tenants/acme/audit/export?format={format}"), &auditor).await.text().await.unwrap();
        let report: serde_json::Value = verify(export.clone(), Some(auditor.clone())).await.unwrap().json().await.unwrap();
        assert_eq!(report["valid"], true, "{format}: {report}");
        assert!(report["events"].as_u64().unwrap() > 5, "{report}");
        assert!(report["detail"].as_str().unwrap().contains("chain and signatures valid"), "{report}");

        // One event rewritten in the file: the chain breaks at it.
        let tampered = export.replacen("member.invited", "member.removed", 1);
        assert_ne!(tampered, export);
        let report: serde_json::Value = verify(tampered, Some(auditor.clone())).await.unwrap().json().await.unwrap();
        assert_eq!(report["valid"], false, "{format}: {report}");
        assert!(report["broken_at"].as_i64().is_some(), "{report}");
    }

    let report: serde_json::Value = verify("not an export".to_owned(), Some(auditor.clone())).await.unwrap().json().await.unwrap();
    assert_eq!(report["valid"], false);
    assert_problem(verify(String::new(), None).await.unwrap(), 401, "unauthenticated").await;
    let engineer = app.credential(As::MlEngineer, &acme, &admin).await.unwrap();
    assert_problem(verify(String::new(), Some(engineer)).await.unwrap(), 403, "forbidden").await;
    let huge = "x".repeat(64 * 1024 * 1024 + 1);
    assert_problem(verify(huge, Some(auditor)).await.unwrap(), 413, "payload_too_large").await;
}

/// No call can hold up the audit writer, which every tenant's calls wait on once its queue is
/// full. A value Postgres text cannot hold (NUL), however it got past the edge, is stored and
/// hashed as U+FFFD; a record the database refuses anyway (here, a constraint put on one model
/// name) is written one event at a time, the refused one without the values its request
/// brought in. Every call is on record and the chains verify.
#[tokio::test]
async fn no_call_event_can_hold_up_the_audit_writer() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let globex = app.tenant_with_members(&admin, "globex").await;
    let call = |tenant: &str, model: &str, agent: &'static str| CallEvent {
        tenant: TenantId(tenant.parse().unwrap()),
        actor: AuditActor::anonymous(),
        model: model.into(),
        version: Some("v\0".to_owned()),
        outcome: Outcome::Denied,
        cache: "bypass",
        rows: 0,
        code: Some("not_found"),
        not_recordable: false,
        info: tessera::request::RequestInfo {
            client_addr: Some("192.0.2.9".parse().unwrap()),
            user_agent: Some(actix_web::http::header::HeaderValue::from_static(agent)),
            request_id: None,
        },
    };
    let flushed = |app: &TestApp| {
        let sink = app.state.audit_sink.clone();
        async move { tokio::time::timeout(std::time::Duration::from_secs(20), sink.flush()).await.is_ok() }
    };
    app.state.audit_sink.call(call(&acme.id, "a\0b", "held")).await;
    app.state.audit_sink.call(call(&globex.id, "fine", "fine")).await;
    assert!(flushed(&app).await, "the audit writer is held up");
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT tenant_id::text, details::text FROM audit_events WHERE action = 'inference.call' ORDER BY tenant_id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let models: Vec<(String, String)> = stored
        .iter()
        .flat_map(|(tenant, details)| {
            let details: serde_json::Value = serde_json::from_str(details).unwrap();
            tessera::audit::sink::expand_calls(&details).into_iter().map(move |c| (tenant.clone(), c["resource_id"].as_str().unwrap().to_owned()))
        })
        .collect();
    assert!(models.contains(&(acme.id.clone(), "a\u{FFFD}b".to_owned())), "{models:?}");
    assert!(models.contains(&(globex.id.clone(), "fine".to_owned())), "{models:?}");

    tamper(&app, "ALTER TABLE audit_events ADD CONSTRAINT refuses_poison CHECK (details::text NOT LIKE '%poison%')").await;
    // One batch: the refused call among acme's others, and globex's.
    for i in 0..9 {
        app.state.audit_sink.call(call(&globex.id, "fine", "fine")).await;
        app.state.audit_sink.call(call(&acme.id, if i == 5 { "poison" } else { "fine" }, "held")).await;
    }
    assert!(flushed(&app).await, "the audit writer is held up by a record the database refuses");
    let records: Vec<String> = sqlx::query_scalar(
        "SELECT details::text FROM audit_events WHERE tenant_id = $1::uuid AND action = 'inference.call' ORDER BY seq",
    )
    .bind(&acme.id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let calls: Vec<_> = records
        .iter()
        .flat_map(|details| tessera::audit::sink::expand_calls(&serde_json::from_str(details).unwrap()))
        .skip(1)
        .collect();
    let models: Vec<&str> = calls.iter().map(|c| c["resource_id"].as_str().unwrap()).collect();
    let stripped = tessera::audit::sink::NOT_RECORDABLE;
    assert_eq!(models, ["fine", "fine", "fine", "fine", "fine", stripped, "fine", "fine", "fine"], "every call on record, in order");
    let refused = &calls[5];
    assert_eq!((refused["outcome"].as_str(), refused["client_addr"].as_str()), (Some("denied"), Some("192.0.2.9")));
    assert_eq!((refused["user_agent"].as_str(), refused["details"]["version"].as_str()), (None, None), "{refused:?}");
    assert_eq!(refused["details"]["not_recordable"], true, "a stripped record says so: {refused:?}");
    assert!(calls.iter().enumerate().all(|(i, c)| i == 5 || c["user_agent"] == "held"), "the others are whole");
    let globex_calls: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(json_array_length(details->'calls')), 0)::bigint FROM audit_events WHERE tenant_id = $1::uuid AND action = 'inference.call'",
    )
    .bind(&globex.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(globex_calls, 10, "the other tenant's calls of the refused batch are on record");
    for (tenant, verdict) in verify_all(&app).await {
        assert!(matches!(verdict, Verdict::Ok { .. }), "{tenant}: {verdict}");
    }
}
