//! Sealed objects: the registry's envelope encryption for tenant data other than uploaded
//! artifacts: datasets, batch inference outputs and trained weights. The same invariants hold:
//! ciphertext only in the store, a data key per object wrapped by the tenant key at commit,
//! every chunk authenticated and the whole object checked against its SHA-256 on the way back.

use bytes::Bytes;
use futures::Stream;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::{ArtifactError, RegistryError};
use super::keys::KeyService;
use super::model::{Framework, ModelName, StoredVersion, VersionView};
use super::service::RegistryService;
use super::store::ArtifactStore;
use super::upload::{Author, Check, Checked, Intake, Limit, NewVersionRow, blocking};
use crate::audit::AuditEvent;
use crate::burnml::Architecture;
use crate::request::RequestInfo;
use crate::crypto::stream::{Encryptor, sealed_len};
use crate::crypto::{Key, random_key};
use crate::data::csv::{CsvScanner, CsvTable};
use crate::tenancy::TenantId;
use crate::tenancy::db::TenantTx;

/// Where a sealed object is and what it must decrypt to.
pub struct SealedRef<'a> {
    pub id: Uuid,
    pub object_key: &'a str,
    pub stored_bytes: u64,
    pub size: u64,
    pub sha256: [u8; 32],
}

impl<'a> SealedRef<'a> {
    pub(super) fn of_version(stored: &'a StoredVersion) -> Result<Self, ArtifactError> {
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(&stored.view.sha256, &mut sha256).map_err(|_| ArtifactError::Checksum)?;
        Ok(Self {
            id: stored.view.id,
            object_key: &stored.object_key,
            stored_bytes: stored.stored_bytes as u64,
            size: stored.view.size_bytes as u64,
            sha256,
        })
    }
}

/// A freshly stored object whose row is not written yet. Its data key is wrapped only when
/// the row is (`wrap`), under the tenant key active then.
pub struct SealedObject {
    pub id: Uuid,
    pub object_key: String,
    pub size: u64,
    pub stored_bytes: u64,
    pub sha256: [u8; 32],
    data_key: Key,
}

impl RegistryService {
    /// Encrypts bytes held in memory into a new object.
    pub async fn seal(&self, tenant: TenantId, plain: Vec<u8>) -> Result<SealedObject, RegistryError> {
        let id = Uuid::now_v7();
        let data_key = random_key();
        let object_key = ArtifactStore::key_for(tenant.0, id);
        let key = data_key.clone();
        let (sealed, sha256, size) = blocking(move || {
            let mut encryptor = Encryptor::new(&key, &id);
            let mut sealed = encryptor.update(&plain);
            sealed.extend(encryptor.finish());
            let sha256: [u8; 32] = Sha256::digest(&plain).into();
            (sealed, sha256, plain.len() as u64)
        })
        .await?;
        let mut writer = self.store.writer(&object_key).await?;
        if let Err(e) = writer.write(sealed).await {
            writer.abort().await;
            return Err(e.into());
        }
        writer.finish().await?;
        Ok(SealedObject { id, object_key, size, stored_bytes: sealed_len(size), sha256, data_key })
    }

    /// Streams a CSV body through validation and encryption into a new object. Nothing is
    /// left in the store unless the whole file is valid and fits `max_bytes` and the quota.
    pub async fn seal_csv<S, E>(&self, tenant: TenantId, mut body: S, max_bytes: u64, declared_len: Option<u64>) -> Result<(SealedObject, CsvTable), RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let id = Uuid::now_v7();
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let limit = Self::reserve_room(&mut tx, id, max_bytes, declared_len).await?;
        tx.commit().await?;
        let sealed = self.seal_reserved(tenant, id, &mut body, limit).await;
        if sealed.is_err() {
            self.release_room(tenant, id).await;
        }
        sealed
    }

    async fn seal_reserved<S, E>(&self, tenant: TenantId, id: Uuid, body: &mut S, limit: Limit) -> Result<(SealedObject, CsvTable), RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let data_key = random_key();
        let object_key = ArtifactStore::key_for(tenant.0, id);
        let intake = Intake {
            encryptor: Encryptor::new(&data_key, &id),
            digest: Sha256::new(),
            check: Check::Csv(CsvScanner::validating()),
            received: 0,
            limit,
        };
        let mut writer = self.store.writer(&object_key).await?;
        let (size, sha256, checked) = match Self::stream_into(intake, body, &mut writer).await {
            Ok(done) => done,
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        };
        let Checked::Csv(table) = checked else { unreachable!("a CSV check yields a table") };
        writer.finish().await?;
        Ok((SealedObject { id, object_key, size, stored_bytes: sealed_len(size), sha256, data_key }, table))
    }

    /// Before a sealed object's row is written: locks the tenant row (serialising with uploads
    /// and key rotation, so the data key is wrapped under the key active at commit) and checks
    /// that `size` more bytes fit the tenant's storage quota.
    pub async fn reserve(&self, tx: &mut TenantTx, sealed: &SealedObject) -> Result<(), RegistryError> {
        let size = sealed.size;
        sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE").bind(tx.tenant().0).execute(tx.conn()).await?;
        // An upload's own reservation (if it had one) becomes its row.
        sqlx::query("DELETE FROM storage_reservations WHERE id = $1").bind(sealed.id).execute(tx.conn()).await?;
        let remaining = Self::remaining_quota(tx).await?;
        if size > remaining {
            return Err(Limit::Quota(remaining).exceeded());
        }
        Ok(())
    }

    /// Wraps the object's data key under the tenant's active key, for its row.
    pub async fn wrap(&self, tx: &mut TenantTx, sealed: &SealedObject) -> Result<(Uuid, Vec<u8>), RegistryError> {
        let (tenant_key_id, tenant_key) = self.keys.active_tenant_key(tx).await?;
        Ok((tenant_key_id, KeyService::wrap_data_key(&tenant_key, sealed.id, &sealed.data_key)))
    }

    /// Reads a sealed object back into memory, verified.
    pub async fn open_sealed(
        &self,
        tenant: TenantId,
        sealed: &SealedRef<'_>,
        tenant_key_id: Uuid,
        wrapped_data_key: &[u8],
    ) -> Result<Vec<u8>, RegistryError> {
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let tenant_key = self.keys.tenant_key(&mut tx, tenant_key_id).await?;
        tx.commit().await?;
        let refused = |e: ArtifactError| {
            tracing::error!(object = %sealed.id, error = %e, "sealed object refused to open");
            RegistryError::SealedUnreadable { object: sealed.id, reason: e }
        };
        let data_key = KeyService::unwrap_data_key(&tenant_key, sealed.id, wrapped_data_key).map_err(|_| refused(ArtifactError::Key))?;
        self.read_verified(sealed, &data_key).await.map_err(refused)
    }

    /// Removes an object whose row was never written (or lost a race to be written).
    pub async fn discard(&self, object_key: &str) {
        if let Err(e) = self.store.delete(object_key).await {
            tracing::warn!(error = %e, object_key, "removing an unused object failed");
        }
    }

    /// The framework of a live model, or `None` when there is no such model.
    pub async fn framework_of(&self, tenant: TenantId, name: &ModelName) -> Result<Option<Framework>, RegistryError> {
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let found = self.framework_in(&mut tx, name).await?;
        tx.commit().await?;
        Ok(found)
    }

    async fn framework_in(&self, tx: &mut TenantTx, name: &ModelName) -> Result<Option<Framework>, RegistryError> {
        match Self::model_id(tx, name, false).await {
            Ok((_, framework)) => Ok(Some(framework)),
            Err(RegistryError::ModelNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Registers trained Burn weights as a new version of `name` (created if it does not
    /// exist) in the caller's transaction. The unique job id on versions makes a retried job
    /// register at most once: a second attempt fails here with `AlreadyExists`.
    pub async fn register_trained(
        &self,
        tx: &mut TenantTx,
        author: &Author,
        name: &ModelName,
        sealed: &SealedObject,
        burn: Architecture,
        metadata: serde_json::Value,
        info: &RequestInfo,
    ) -> Result<VersionView, RegistryError> {
        // The tenant row is locked before any model row is written, in the order every other
        // writer of models and versions takes them; a new model must fit the quota.
        let exists = self.framework_in(tx, name).await?.is_some();
        if exists {
            sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE").bind(tx.tenant().0).execute(tx.conn()).await?;
        } else {
            Self::room_for_a_model(tx).await?;
        }
        let created = !exists && sqlx::query(
            // Burn inference has no randomness (no dropout when serving): results may be cached.
            "INSERT INTO models (id, tenant_id, name, framework, deterministic, created_by) VALUES ($1, $2, $3, 'burn', true, $4) \
             ON CONFLICT (tenant_id, name) WHERE deleted_at IS NULL DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(tx.tenant().0)
        .bind(name.as_str())
        .bind(author.user)
        .execute(tx.conn())
        .await?
        .rows_affected()
            == 1;
        let (_, framework) = Self::model_id(tx, name, false).await?;
        if framework != Framework::Burn {
            return Err(RegistryError::NotBurn(name.to_string()));
        }
        if created {
            let event = AuditEvent::new(Some(tx.tenant()), author.actor.clone(), "model.created")
                .details(json!({ "model": name.as_str(), "framework": "burn", "job": author.job }));
            self.auditor.record(tx.conn(), info, vec![event]).await?;
        }
        let already: Option<i32> = sqlx::query_scalar("SELECT version FROM model_versions WHERE job_id = $1")
            .bind(author.job)
            .fetch_optional(tx.conn())
            .await?;
        if let Some(version) = already {
            return Err(RegistryError::JobAlreadyRegistered(version));
        }
        let row = NewVersionRow {
            artifact: sealed.id,
            size: sealed.size,
            digest: sealed.sha256,
            object_key: &sealed.object_key,
            data_key: sealed.data_key.clone(),
            signature: None,
            burn: Some(burn),
            metadata,
        };
        self.insert_version(tx, author, name, row, info).await
    }
}
