//! Tenant keys: created on first use, wrapped by the active master key, unwrapped only in
//! memory. `rotate_master` re-wraps every tenant key under the active master key without
//! touching a single artifact.

use std::sync::Arc;

use sqlx::PgPool;
use uuid::Uuid;

use super::error::RegistryError;
use crate::audit::{AuditActor, AuditEvent, Auditor};
use crate::crypto::{CryptoError, Key, MasterKeys, random_key, unwrap, wrap};
use crate::request::RequestInfo;
use crate::tenancy::db::TenantTx;

fn tenant_key_context(tenant: Uuid, key: Uuid) -> Vec<u8> {
    format!("tessera-tenant-key:{tenant}:{key}").into_bytes()
}

fn data_key_context(artifact: Uuid) -> Vec<u8> {
    format!("tessera-data-key:{artifact}").into_bytes()
}

#[derive(Clone)]
pub struct KeyService {
    masters: Arc<MasterKeys>,
}

impl KeyService {
    pub fn new(masters: Arc<MasterKeys>) -> Self {
        Self { masters }
    }

    /// The tenant's active key, created (and wrapped by the active master key) on first use.
    pub async fn active_tenant_key(&self, tx: &mut TenantTx) -> Result<(Uuid, Key), RegistryError> {
        let tenant = tx.tenant().0;
        loop {
            let row: Option<(Uuid, String, Vec<u8>)> = sqlx::query_as(
                "SELECT id, master_key_id, wrapped_key FROM tenant_keys WHERE tenant_id = $1 AND retired_at IS NULL",
            )
            .bind(tenant)
            .fetch_optional(tx.conn())
            .await?;
            if let Some((id, master_id, wrapped)) = row {
                return Ok((id, self.unwrap_tenant_key(tenant, id, &master_id, &wrapped)?));
            }
            let id = Uuid::now_v7();
            let key = random_key();
            let (master_id, master) = self.masters.active();
            let inserted = sqlx::query(
                "INSERT INTO tenant_keys (id, tenant_id, master_key_id, wrapped_key) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant_id) WHERE retired_at IS NULL DO NOTHING",
            )
            .bind(id)
            .bind(tenant)
            .bind(master_id)
            .bind(wrap(master, &key, &tenant_key_context(tenant, id)))
            .execute(tx.conn())
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok((id, key));
            }
            // Another transaction created it first: read theirs.
        }
    }

    /// Retires the tenant's active key (if any) and creates a new active one. Returns the new
    /// key and the retired key's id; the caller re-wraps data keys in the same transaction.
    pub async fn rotate_tenant_key(&self, tx: &mut TenantTx) -> Result<(Uuid, Key, Option<Uuid>), RegistryError> {
        let tenant = tx.tenant().0;
        let retired: Option<Uuid> = sqlx::query_scalar(
            "UPDATE tenant_keys SET retired_at = now() WHERE tenant_id = $1 AND retired_at IS NULL RETURNING id",
        )
        .bind(tenant)
        .fetch_optional(tx.conn())
        .await?;
        let (id, key) = self.active_tenant_key(tx).await?;
        Ok((id, key, retired))
    }

    /// A tenant key by id (active or retired), for unwrapping an existing artifact's data key.
    pub async fn tenant_key(&self, tx: &mut TenantTx, id: Uuid) -> Result<Key, RegistryError> {
        let tenant = tx.tenant().0;
        let (master_id, wrapped): (String, Vec<u8>) =
            sqlx::query_as("SELECT master_key_id, wrapped_key FROM tenant_keys WHERE id = $1 AND tenant_id = $2")
                .bind(id)
                .bind(tenant)
                .fetch_optional(tx.conn())
                .await?
                .ok_or_else(|| anyhow::anyhow!("tenant key {id} of {tenant} is missing"))?;
        self.unwrap_tenant_key(tenant, id, &master_id, &wrapped)
    }

    fn unwrap_tenant_key(&self, tenant: Uuid, id: Uuid, master_id: &str, wrapped: &[u8]) -> Result<Key, RegistryError> {
        let master = self.masters.get(master_id).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(unwrap(master, wrapped, &tenant_key_context(tenant, id)).map_err(|e| anyhow::anyhow!("tenant key {id}: {e}"))?)
    }

    pub fn wrap_data_key(tenant_key: &[u8; 32], artifact: Uuid, data_key: &[u8; 32]) -> Vec<u8> {
        wrap(tenant_key, data_key, &data_key_context(artifact))
    }

    pub fn unwrap_data_key(tenant_key: &[u8; 32], artifact: Uuid, wrapped: &[u8]) -> Result<Key, CryptoError> {
        unwrap(tenant_key, wrapped, &data_key_context(artifact))
    }

    /// Re-wraps every tenant key that is not under the active master key. Needs a connection
    /// that sees every tenant's keys (the schema owner's). Returns how many were re-wrapped.
    pub async fn rotate_master(&self, owner: &PgPool, auditor: &Auditor) -> Result<u64, RegistryError> {
        let (active_id, active) = self.masters.active();
        let mut tx = owner.begin().await?;
        let rows: Vec<(Uuid, Uuid, String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, tenant_id, master_key_id, wrapped_key FROM tenant_keys WHERE master_key_id <> $1 FOR UPDATE",
        )
        .bind(active_id)
        .fetch_all(&mut *tx)
        .await?;
        for (id, tenant, master_id, wrapped) in &rows {
            let key = self.unwrap_tenant_key(*tenant, *id, master_id, wrapped)?;
            sqlx::query("UPDATE tenant_keys SET master_key_id = $2, wrapped_key = $3, rewrapped_at = now() WHERE id = $1")
                .bind(id)
                .bind(active_id)
                .bind(wrap(active, &key, &tenant_key_context(*tenant, *id)))
                .execute(&mut *tx)
                .await?;
        }
        let still_used: Vec<String> = sqlx::query_scalar("SELECT DISTINCT master_key_id FROM tenant_keys").fetch_all(&mut *tx).await?;
        let retirable: Vec<&str> = self.masters.ids().into_iter().filter(|k| !still_used.iter().any(|u| u == k)).collect();
        let event = AuditEvent::new(None, AuditActor { kind: "system", id: None }, "keys.master_rotated")
            .resource("master_key", active_id)
            .details(serde_json::json!({ "rewrapped_tenant_keys": rows.len(), "master_keys_no_longer_referenced": retirable }));
        auditor.record(&mut tx, &RequestInfo::command_line(), vec![event]).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// Master key ids still referenced by a tenant key (those cannot be retired).
    pub async fn referenced_master_keys(owner: &PgPool) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT DISTINCT master_key_id FROM tenant_keys ORDER BY 1").fetch_all(owner).await
    }
}
