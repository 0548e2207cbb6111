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
    tessera::audit::sign_checkpoints(&app.state.db, &app.state.notary).await.unwrap();
    let signed: i64 = sqlx::query_scalar("SELECT max(seq) FROM audit_checkpoints WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let owner = app.credential(As::Owner, &acme, &root).await.unwrap();
    app.get_as("/v1/tenants/acme/members", &owner).await; // more events after the checkpoint
    app.call("POST", "/v1/tenants/acme/api-keys", Some(&owner), Some(serde_json::json!({"name": "late", "role": "inference"}))).await;

    rewrite_from_event_two(&app, tenant).await;

    match verdict(&app, tenant).await {
        Verdict::Broken { seq: Some(seq), reason } => {
            assert_eq!(seq, signed, "{reason}");
            assert!(reason.contains("checkpoint"), "{reason}");
        }
        other => panic!("a rewritten chain passed verification: {other}"),
    }
}

/// Tessera with tenant `acme` (its id and owner's token), whose chain head is signed.
async fn signed_acme() -> (TestApp, uuid::Uuid, String) {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let owner = app.credential(As::Owner, &acme, &root).await.unwrap();
    tessera::audit::sign_checkpoints(&app.state.db, &app.state.notary).await.unwrap();
    (app, acme.id.parse().unwrap(), owner)
}

/// The tenant's chain held to the digests in the object store.
async fn digests(app: &TestApp, tenant: uuid::Uuid) -> Verdict {
    let store = tessera::registry::store::ArtifactStore::from_settings(&app.settings.registry.storage).unwrap().object_store();
    let keys = app.audit_keys().await;
    tessera::audit::verify::verify_digests(&app.db, store.as_ref(), Some(tenant), &keys).await.unwrap().remove(0).1
}

/// Rewrites event 2 and every hash after it, the head included: each row is consistent.
async fn rewrite_from_event_two(app: &TestApp, tenant: uuid::Uuid) {
    let mut events = chain(app, tenant).await;
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
}

#[tokio::test]
async fn attack_06_a_rewrite_that_also_removes_the_checkpoints_is_caught_by_the_digests() {
    let (app, tenant, owner) = signed_acme().await;
    app.create_api_key(&owner, "acme", "inference").await;
    tessera::audit::sign_checkpoints(&app.state.db, &app.state.notary).await.unwrap();
    let first_signed: i64 = sqlx::query_scalar("SELECT min(seq) FROM audit_checkpoints WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(matches!(digests(&app, tenant).await, Verdict::Ok { count: 2, .. }), "{}", digests(&app, tenant).await);

    // A digest removed from the store breaks the digests' own chain.
    let dir = app.database.artifact_dir.join("audit-digests").join(tenant.to_string());
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let kept = std::fs::read(&files[0]).unwrap();
    std::fs::remove_file(&files[0]).unwrap();
    match digests(&app, tenant).await {
        Verdict::Broken { reason, .. } => assert!(reason.contains("chain"), "{reason}"),
        other => panic!("a removed digest went unnoticed: {other}"),
    }
    std::fs::write(&files[0], kept).unwrap();

    // Whoever owns the database rewrites the chain and removes every trace in it.
    rewrite_from_event_two(&app, tenant).await;
    app.tamper(&format!("DELETE FROM audit_checkpoints WHERE tenant_id = '{tenant}'")).await;
    app.tamper(&format!("DELETE FROM audit_digests WHERE tenant_id = '{tenant}'")).await;
    assert!(matches!(verdict(&app, tenant).await, Verdict::Ok { .. }), "the database alone cannot tell");
    match digests(&app, tenant).await {
        Verdict::Broken { seq: Some(seq), reason } => {
            assert_eq!(seq, first_signed, "{reason}");
            assert!(reason.contains("digest"), "{reason}");
        }
        other => panic!("a rewritten database passed the digests: {other}"),
    }
}

#[tokio::test]
async fn attack_06_a_checkpoint_relabelled_as_a_purge_does_not_hide_deleted_events() {
    let (app, tenant, owner) = signed_acme().await;
    // A filtered export signs an older event than the head: digests stay consistent.
    let export = app.get_as("/v1/tenants/acme/audit/export?format=jsonl&action=member.invited", &owner).await;
    assert_eq!(export.status(), 200);
    export.text().await.unwrap();
    assert!(matches!(digests(&app, tenant).await, Verdict::Ok { count: 2, .. }), "{}", digests(&app, tenant).await);

    // The database operator relabels the export's checkpoint as a purge and deletes what
    // came before it: the database alone is satisfied, the digests are not.
    let anchor: i64 = sqlx::query_scalar("SELECT seq FROM audit_checkpoints WHERE tenant_id = $1 AND reason = 'export'")
        .bind(tenant)
        .fetch_one(&app.db)
        .await
        .unwrap();
    app.tamper(&format!("UPDATE audit_checkpoints SET reason = 'purge' WHERE tenant_id = '{tenant}' AND seq = {anchor}")).await;
    app.tamper(&format!("DELETE FROM audit_events WHERE tenant_id = '{tenant}' AND seq <= {anchor}")).await;
    assert!(matches!(verdict(&app, tenant).await, Verdict::Ok { .. }), "the database alone cannot tell");
    match digests(&app, tenant).await {
        Verdict::Broken { seq: Some(seq), reason } => {
            assert_eq!(seq, anchor, "{reason}");
            assert!(reason.contains("purge"), "{reason}");
        }
        other => panic!("a forged purge passed the digests: {other}"),
    }
}

#[tokio::test]
async fn attack_06_verifying_a_file_without_a_key_is_not_a_success() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let owner = app.credential(As::Owner, &acme, &root).await.unwrap();
    let export = app.get_as("/v1/tenants/acme/audit/export?format=jsonl", &owner).await.text().await.unwrap();
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
