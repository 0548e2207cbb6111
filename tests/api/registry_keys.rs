use std::sync::Arc;

use serde_json::json;
use tessera::crypto::{MasterKeys, generate_key_entry, random_key};
use tessera::registry::keys::KeyService;
use tessera::tenancy::TenantId;
use tessera::tenancy::db::TenantTx;

use crate::helpers::spawn_app;

async fn tenant(app: &crate::helpers::TestApp, slug: &str) -> TenantId {
    let admin = app.platform_admin().await;
    let t = app.create_tenant(&admin, slug, json!({})).await;
    TenantId(t["id"].as_str().unwrap().parse().unwrap())
}

#[tokio::test]
async fn a_tenant_key_is_created_once_and_stored_only_wrapped() {
    let app = spawn_app().await;
    let acme = tenant(&app, "acme").await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let state = app.state.clone();
        tasks.spawn(async move {
            let mut tx = TenantTx::begin(&state.db, acme).await.unwrap();
            let (id, key) = state.keys.active_tenant_key(&mut tx).await.unwrap();
            tx.commit().await.unwrap();
            (id, *key)
        });
    }
    let results: Vec<_> = tasks.join_all().await;
    assert!(results.windows(2).all(|w| w[0] == w[1]), "concurrent first uses made different keys");
    let (count, wrapped): (i64, Vec<u8>) =
        sqlx::query_as("SELECT count(*) OVER (), wrapped_key FROM tenant_keys").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 1);
    assert!(!wrapped.windows(32).any(|w| w == results[0].1), "the tenant key is stored in the clear");

    let artifact = uuid::Uuid::new_v4();
    let data_key = random_key();
    let wrapped = KeyService::wrap_data_key(&results[0].1, artifact, &data_key);
    assert_eq!(*KeyService::unwrap_data_key(&results[0].1, artifact, &wrapped).unwrap(), *data_key);
    assert!(KeyService::unwrap_data_key(&results[0].1, uuid::Uuid::new_v4(), &wrapped).is_err());

    // Another tenant's transaction sees none of it.
    let globex = tenant(&app, "globex").await;
    let mut tx = TenantTx::begin(&app.state.db, globex).await.unwrap();
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_keys").fetch_one(tx.conn()).await.unwrap();
    assert_eq!(visible, 0);
}

#[tokio::test]
async fn rotating_the_master_key_rewraps_tenant_keys_and_the_old_one_can_go() {
    let old = generate_key_entry("m1");
    let new = generate_key_entry("m2");
    let first = old.clone();
    let app = crate::helpers::spawn_app_with(|s| s.registry.master_keys = first.into()).await;
    let acme = tenant(&app, "acme").await;
    let mut tx = TenantTx::begin(&app.state.db, acme).await.unwrap();
    let (key_id, tenant_key) = app.state.keys.active_tenant_key(&mut tx).await.unwrap();
    tx.commit().await.unwrap();

    let both = KeyService::new(Arc::new(MasterKeys::parse(&format!("{new},{old}")).unwrap()));
    assert_eq!(both.rotate_master(&app.db, &app.state.auditor).await.unwrap(), 1);
    assert_eq!(KeyService::referenced_master_keys(&app.db).await.unwrap(), vec!["m2".to_owned()]);
    assert_eq!(both.rotate_master(&app.db, &app.state.auditor).await.unwrap(), 0, "rotation is idempotent");

    let only_new = KeyService::new(Arc::new(MasterKeys::parse(&new).unwrap()));
    let mut tx = TenantTx::begin(&app.state.db, acme).await.unwrap();
    assert_eq!(*only_new.tenant_key(&mut tx, key_id).await.unwrap(), *tenant_key);
    let only_old = KeyService::new(Arc::new(MasterKeys::parse(&old).unwrap()));
    assert!(only_old.tenant_key(&mut tx, key_id).await.is_err(), "the retired master key still opens it");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = 'keys.master_rotated'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(events, 2);
}
