//! 6. Audit verification fails closed: what it cannot check is a failure, never a pass.

use sqlx::Row;
use tessera::audit::chain::ChainedEvent;
use tessera::audit::verify::{Verdict, verify_database};

use crate::helpers::{As, TestApp, spawn_app};


async fn chain(app: &TestApp, tenant: uuid::Uuid) -> Vec<ChainedEvent> {
    let rows = sqlx::query(
        "SELECT tenant_id, seq, id, occurred_at, actor_type, actor_id, action, resource_type, resource_id, outcome, \
         client_addr, user_agent, request_id, details::text AS details, prev_hash, hash FROM audit_events \
         WHERE tenant_id = $1 ORDER BY seq",
    )
    .bind(tenant)
    .fetch_all(&app.db)
    .await
    .unwrap();
    rows.into_iter()
        .map(|r| ChainedEvent {
            tenant_id: r.get("tenant_id"),
            seq: r.get("seq"),
            id: r.get("id"),
            occurred_at: tessera::audit::chain::format_time(r.get("occurred_at")),
            actor_type: r.get("actor_type"),
            actor_id: r.get("actor_id"),
            action: r.get("action"),
            resource_type: r.get("resource_type"),
            resource_id: r.get("resource_id"),
            outcome: r.get("outcome"),
            client_addr: r.get("client_addr"),
            user_agent: r.get("user_agent"),
            request_id: r.get("request_id"),
            details: serde_json::from_str(r.get::<&str, _>("details")).unwrap(),
            prev_hash: hex::encode(r.get::<Vec<u8>, _>("prev_hash")),
            hash: hex::encode(r.get::<Vec<u8>, _>("hash")),
        })
        .collect()
}

async fn verdict(app: &TestApp, tenant: uuid::Uuid) -> Verdict {
    verify_database(&app.db, Some(tenant), &app.audit_keys().await).await.unwrap().remove(0).1
}

#[tokio::test]
async fn attack_06_a_forged_purge_checkpoint_with_an_unknown_key_is_a_failure() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let tenant: uuid::Uuid = acme.id.parse().unwrap();
    assert!(matches!(verdict(&app, tenant).await, Verdict::Ok { .. }));

    // Delete the first three events and anchor the rest with a checkpoint nobody can verify.
    let events = chain(&app, tenant).await;
    let anchor = &events[2];
    app.tamper(&format!("DELETE FROM audit_events WHERE tenant_id = '{tenant}' AND seq <= 3")).await;
    sqlx::query(
        "INSERT INTO audit_checkpoints (id, tenant_id, seq, hash, signed_at, key_id, signature, reason) \
         VALUES ($1, $2, 3, $3, now(), 'forged-key', $4, 'purge')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(tenant)
    .bind(hex::decode(&anchor.hash).unwrap())
    .bind(vec![0u8; 64])
    .execute(&app.db)
    .await
    .unwrap();
    match verdict(&app, tenant).await {
        Verdict::Broken { seq: Some(3), reason } => assert!(reason.contains("forged-key"), "{reason}"),
        other => panic!("a purge anchored by an unknown key passed verification: {other}"),
    }
}

#[tokio::test]
async fn attack_06_a_rewritten_chain_with_recomputed_hashes_disagrees_with_its_signed_checkpoints() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let tenant: uuid::Uuid = acme.id.parse().unwrap();
    tessera::audit::sign_checkpoints(&app.state.db, &app.state.audit_signer).await.unwrap();
    let signed: i64 = sqlx::query_scalar("SELECT max(seq) FROM audit_checkpoints WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let owner = app.credential(As::Owner, &acme, &root).await.unwrap();
    app.get_as("/v1/tenants/acme/members", &owner).await; // more events after the checkpoint
    app.call("POST", "/v1/tenants/acme/api-keys", Some(&owner), Some(serde_json::json!({"name": "late", "role": "inference"}))).await;

    // Rewrite event 2 and recompute every hash after it, head included: each row is consistent.
    let mut events = chain(&app, tenant).await;
    events[1].action = "member.nothing_to_see".into();
    let mut prev = tessera::audit::chain::decode_hash(&events[1].prev_hash).unwrap();
    for event in events.iter_mut().skip(1) {
        event.prev_hash = hex::encode(prev);
        prev = event.compute_hash(&tessera::audit::chain::decode_hash(&event.prev_hash).unwrap());
        event.hash = hex::encode(prev);
        app.tamper(&format!(
            "UPDATE audit_events SET action = '{}', prev_hash = '\\x{}', hash = '\\x{}' WHERE tenant_id = '{tenant}' AND seq = {}",
            event.action, event.prev_hash, event.hash, event.seq
        ))
        .await;
    }
    app.tamper(&format!("UPDATE audit_heads SET last_hash = '\\x{}' WHERE tenant_id = '{tenant}'", hex::encode(prev))).await;

    match verdict(&app, tenant).await {
        Verdict::Broken { seq: Some(seq), reason } => {
            assert_eq!(seq, signed, "{reason}");
            assert!(reason.contains("checkpoint"), "{reason}");
        }
        other => panic!("a rewritten chain passed verification: {other}"),
    }
}

#[tokio::test]
async fn attack_06_verifying_a_file_without_a_key_is_not_a_success() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let owner = app.credential(As::Owner, &acme, &root).await.unwrap();
    let export = app.get_as("/v1/audit/export?format=jsonl", &owner).await.text().await.unwrap();
    let file = std::env::temp_dir().join(format!("tessera-export-{}.jsonl", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, export).unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["audit", "verify"])
            .arg(&file)
            .args(extra)
            .output()
            .unwrap()
    };
    let unkeyed = run(&[]);
    assert!(!unkeyed.status.success(), "{}", String::from_utf8_lossy(&unkeyed.stdout));
    let explicit = run(&["--no-signatures"]);
    assert!(explicit.status.success(), "{}{}", String::from_utf8_lossy(&explicit.stdout), String::from_utf8_lossy(&explicit.stderr));
    assert!(String::from_utf8_lossy(&explicit.stdout).contains("NOT checked"));
    std::fs::remove_file(file).unwrap();
}
