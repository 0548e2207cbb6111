//! Models, versions and aliases: metadata in Postgres (through `TenantTx`, under row-level
//! security), every change audited in its own transaction. Uploads, downloads and loading
//! live in `upload.rs` and `loader.rs`.

use std::collections::BTreeMap;

use serde_json::json;
use sqlx::PgPool;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::error::RegistryError;
use super::keys::KeyService;
use super::model::{AliasName, Framework, ModelName, ModelView, ServingConfig, ServingLimits, StoredVersion, VersionRef, VersionView};
use super::onnx::ModelSignature;
use super::store::ArtifactStore;
use crate::audit::{AuditActor, AuditEvent, Auditor};
use crate::burnml::Architecture;
use crate::page::{Page, PageRequest};
use crate::request::RequestInfo;
use crate::identity::Principal;
use crate::tenancy::TenantInfo;
use crate::tenancy::db::TenantTx;

#[derive(Clone)]
pub struct RegistryService {
    pub(super) pool: PgPool,
    pub(super) store: ArtifactStore,
    pub(super) keys: KeyService,
    pub(super) auditor: Auditor,
    pub(super) max_artifact_bytes: u64,
    pub(super) serving_limits: ServingLimits,
}

pub struct NewModel {
    pub name: ModelName,
    pub framework: Framework,
    pub description: String,
    pub tags: Vec<String>,
    pub deterministic: bool,
    pub serving: ServingConfig,
}

pub struct ServingInfo {
    pub stored: StoredVersion,
    pub deterministic: bool,
    pub serving: ServingConfig,
}

#[derive(sqlx::FromRow)]
struct ModelRow {
    id: Uuid,
    name: String,
    framework: Framework,
    description: String,
    tags: Vec<String>,
    deterministic: bool,
    serving: sqlx::types::Json<ServingConfig>,
    created_at: OffsetDateTime,
    aliases: sqlx::types::Json<BTreeMap<String, i32>>,
    latest_version: Option<i32>,
}

impl From<ModelRow> for ModelView {
    fn from(r: ModelRow) -> Self {
        ModelView {
            id: r.id,
            name: r.name,
            framework: r.framework,
            description: r.description,
            tags: r.tags,
            deterministic: r.deterministic,
            serving: r.serving.0,
            aliases: r.aliases.0,
            latest_version: r.latest_version,
            created_at: r.created_at,
        }
    }
}

const MODEL_SELECT: &str = "SELECT m.id, m.name, m.framework, m.description, m.tags, m.deterministic, m.serving, m.created_at, \
     COALESCE((SELECT jsonb_object_agg(a.alias, a.version) FROM model_aliases a WHERE a.model_id = m.id), '{}'::jsonb) AS aliases, \
     (SELECT max(v.version) FROM model_versions v WHERE v.model_id = m.id AND v.deleted_at IS NULL) AS latest_version \
     FROM models m WHERE m.tenant_id = $1 AND m.deleted_at IS NULL";

#[derive(sqlx::FromRow)]
struct VersionRow {
    id: Uuid,
    model_id: Uuid,
    name: String,
    framework: Framework,
    version: i32,
    size_bytes: i64,
    stored_bytes: i64,
    sha256: Vec<u8>,
    object_key: String,
    tenant_key_id: Uuid,
    wrapped_data_key: Vec<u8>,
    signature: Option<Json<ModelSignature>>,
    burn: Option<Json<Architecture>>,
    metadata: serde_json::Value,
    created_at: OffsetDateTime,
    aliases: Vec<String>,
}

impl From<VersionRow> for StoredVersion {
    fn from(r: VersionRow) -> Self {
        StoredVersion {
            view: VersionView {
                id: r.id,
                model: r.name,
                framework: r.framework,
                version: r.version,
                size_bytes: r.size_bytes,
                sha256: hex::encode(&r.sha256),
                signature: r.signature.map(|s| s.0),
                burn: r.burn.map(|b| b.0),
                metadata: r.metadata,
                aliases: r.aliases,
                created_at: r.created_at,
            },
            model_id: r.model_id,
            object_key: r.object_key,
            stored_bytes: r.stored_bytes,
            tenant_key_id: r.tenant_key_id,
            wrapped_data_key: r.wrapped_data_key,
        }
    }
}

const VERSION_SELECT: &str = "SELECT v.id, v.model_id, m.name, m.framework, v.version, v.size_bytes, v.stored_bytes, v.sha256, \
     v.object_key, v.tenant_key_id, v.wrapped_data_key, v.signature, v.burn, v.metadata, v.created_at, \
     ARRAY(SELECT a.alias FROM model_aliases a WHERE a.model_id = v.model_id AND a.version = v.version ORDER BY a.alias) AS aliases \
     FROM model_versions v JOIN models m ON m.id = v.model_id \
     WHERE v.tenant_id = $1 AND v.model_id = $2 AND v.deleted_at IS NULL";

fn version_not_found(name: &ModelName, version: &VersionRef) -> RegistryError {
    RegistryError::VersionNotFound { model: name.to_string(), version: version.to_string() }
}

fn model_not_found(name: &ModelName) -> RegistryError {
    RegistryError::ModelNotFound(name.to_string())
}

fn validate_tags(tags: &[String]) -> Result<(), RegistryError> {
    if tags.len() > 32 || tags.iter().any(|t| t.is_empty() || t.chars().count() > 64) {
        return Err(RegistryError::InvalidTags);
    }
    Ok(())
}

impl RegistryService {
    pub fn new(
        pool: PgPool,
        store: ArtifactStore,
        keys: KeyService,
        auditor: Auditor,
        max_artifact_bytes: u64,
        serving_limits: ServingLimits,
    ) -> Self {
        Self { pool, store, keys, auditor, max_artifact_bytes, serving_limits }
    }

    pub async fn create_model(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        new: NewModel,
        info: &RequestInfo,
    ) -> Result<ModelView, RegistryError> {
        if new.description.chars().count() > 2000 {
            return Err(RegistryError::DescriptionTooLong);
        }
        validate_tags(&new.tags)?;
        new.serving.check(self.serving_limits)?;
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        Self::room_for_a_model(&mut tx).await?;
        let id = Uuid::now_v7();
        let inserted = sqlx::query(
            "INSERT INTO models (id, tenant_id, name, framework, description, tags, deterministic, serving, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(tenant.id.0)
        .bind(new.name.as_str())
        .bind(new.framework)
        .bind(&new.description)
        .bind(&new.tags)
        .bind(new.deterministic)
        .bind(sqlx::types::Json(&new.serving))
        .bind(actor.user_id())
        .execute(tx.conn())
        .await;
        if let Err(e) = inserted {
            return Err(if crate::db::is_unique_violation(&e) { RegistryError::ModelExists(new.name.to_string()) } else { e.into() });
        }
        let event = AuditEvent::new(Some(tenant.id), AuditActor::from(actor), "model.created")
            .resource("model", id)
            .details(json!({ "name": new.name.as_str(), "framework": new.framework.as_str() }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        let view = Self::model_view(&mut tx, &new.name).await?;
        tx.commit().await?;
        Ok(view)
    }

    async fn model_view(tx: &mut TenantTx, name: &ModelName) -> Result<ModelView, RegistryError> {
        let sql = format!("{MODEL_SELECT} AND m.name = $2");
        let row: Option<ModelRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(tx.tenant().0).bind(name.as_str()).fetch_optional(tx.conn()).await?;
        row.map(Into::into).ok_or_else(|| model_not_found(name))
    }

    /// Live models by name.
    pub async fn list_models(&self, tenant: &TenantInfo, page: &PageRequest<String>) -> Result<Page<ModelView>, RegistryError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let sql = format!("{MODEL_SELECT} AND ($2::text IS NULL OR m.name > $2) ORDER BY m.name LIMIT $3");
        let rows: Vec<ModelRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant.id.0)
            .bind(page.after.clone())
            .bind(page.fetch())
            .fetch_all(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(page.finish(rows.into_iter().map(ModelView::from).collect(), |m: &ModelView| m.name.clone()))
    }

    pub async fn get_model(&self, tenant: &TenantInfo, name: &ModelName) -> Result<ModelView, RegistryError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let view = Self::model_view(&mut tx, name).await?;
        tx.commit().await?;
        Ok(view)
    }

    /// The live model's id and framework, locked against concurrent changes when `lock`.
    /// Locks the tenant row, which serialises model creation per tenant so the count cannot
    /// overshoot the quota, and checks there is room for one more model.
    pub(super) async fn room_for_a_model(tx: &mut TenantTx) -> Result<(), RegistryError> {
        let tenant = tx.tenant().0;
        let (max_models,): (i32,) =
            sqlx::query_as("SELECT max_models FROM tenants WHERE id = $1 FOR UPDATE").bind(tenant).fetch_one(tx.conn()).await?;
        let live: i64 = sqlx::query_scalar("SELECT count(*) FROM models WHERE tenant_id = $1 AND deleted_at IS NULL")
            .bind(tenant)
            .fetch_one(tx.conn())
            .await?;
        if live >= max_models as i64 {
            return Err(RegistryError::ModelQuota(max_models));
        }
        Ok(())
    }

    pub(super) async fn model_id(tx: &mut TenantTx, name: &ModelName, lock: bool) -> Result<(Uuid, Framework), RegistryError> {
        let sql = if lock {
            "SELECT id, framework FROM models WHERE tenant_id = $1 AND name = $2 AND deleted_at IS NULL FOR UPDATE"
        } else {
            "SELECT id, framework FROM models WHERE tenant_id = $1 AND name = $2 AND deleted_at IS NULL"
        };
        let row: Option<(Uuid, Framework)> = sqlx::query_as(sql).bind(tx.tenant().0).bind(name.as_str()).fetch_optional(tx.conn()).await?;
        row.ok_or_else(|| model_not_found(name))
    }

    /// Resolves a version (number, alias, or the latest when `None`) of a live model.
    pub(super) async fn stored_version(
        tx: &mut TenantTx,
        name: &ModelName,
        version: Option<&VersionRef>,
    ) -> Result<StoredVersion, RegistryError> {
        let (model_id, _) = Self::model_id(tx, name, false).await?;
        let tenant = tx.tenant().0;
        let row: Option<VersionRow> = match version {
            Some(VersionRef::Number(n)) => {
                let sql = format!("{VERSION_SELECT} AND v.version = $3");
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(model_id).bind(n).fetch_optional(tx.conn()).await?
            }
            Some(VersionRef::Alias(alias)) => {
                let sql = format!(
                    "{VERSION_SELECT} AND v.version = (SELECT version FROM model_aliases WHERE model_id = $2 AND alias = $3)"
                );
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(model_id).bind(alias.as_str()).fetch_optional(tx.conn()).await?
            }
            None => {
                let sql = format!("{VERSION_SELECT} ORDER BY v.version DESC LIMIT 1");
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(model_id).fetch_optional(tx.conn()).await?
            }
        };
        row.map(Into::into).ok_or_else(|| match version {
            Some(v) => version_not_found(name, v),
            None => RegistryError::NoVersions(name.to_string()),
        })
    }

    pub async fn get_version(
        &self,
        tenant: &TenantInfo,
        name: &ModelName,
        version: Option<&VersionRef>,
    ) -> Result<StoredVersion, RegistryError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let stored = Self::stored_version(&mut tx, name, version).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// A version plus what serving needs from its model (caching, serving settings).
    pub async fn serving_info(
        &self,
        tenant: crate::tenancy::TenantId,
        name: &ModelName,
        version: Option<&VersionRef>,
    ) -> Result<ServingInfo, RegistryError> {
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let stored = Self::stored_version(&mut tx, name, version).await?;
        let (deterministic, serving): (bool, sqlx::types::Json<ServingConfig>) =
            sqlx::query_as("SELECT deterministic, serving FROM models WHERE id = $1")
                .bind(stored.model_id)
                .fetch_one(tx.conn())
                .await?;
        tx.commit().await?;
        Ok(ServingInfo { stored, deterministic, serving: serving.0 })
    }

    /// A model's live versions, by number.
    pub async fn list_versions(
        &self,
        tenant: &TenantInfo,
        name: &ModelName,
        page: &PageRequest<i32>,
    ) -> Result<Page<VersionView>, RegistryError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let (model_id, _) = Self::model_id(&mut tx, name, false).await?;
        let sql = format!("{VERSION_SELECT} AND ($3::int4 IS NULL OR v.version > $3) ORDER BY v.version LIMIT $4");
        let rows: Vec<VersionRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant.id.0)
            .bind(model_id)
            .bind(page.after)
            .bind(page.fetch())
            .fetch_all(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(page.finish(rows.into_iter().map(|r| StoredVersion::from(r).view).collect(), |v: &VersionView| v.version))
    }

    /// Points `alias` at `version`, creating or moving it in one statement.
    pub async fn set_alias(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        name: &ModelName,
        alias: &AliasName,
        version: i32,
        info: &RequestInfo,
    ) -> Result<ModelView, RegistryError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let (model_id, _) = Self::model_id(&mut tx, name, true).await?;
        let live: Option<i32> = sqlx::query_scalar(
            "SELECT version FROM model_versions WHERE model_id = $1 AND version = $2 AND deleted_at IS NULL",
        )
        .bind(model_id)
        .bind(version)
        .fetch_optional(tx.conn())
        .await?;
        if live.is_none() {
            return Err(version_not_found(name, &VersionRef::Number(version)));
        }
        let previous: Option<i32> = sqlx::query_scalar("SELECT version FROM model_aliases WHERE model_id = $1 AND alias = $2")
            .bind(model_id)
            .bind(alias.as_str())
            .fetch_optional(tx.conn())
            .await?;
        sqlx::query(
            "INSERT INTO model_aliases (tenant_id, model_id, alias, version, updated_by) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (model_id, alias) DO UPDATE SET version = EXCLUDED.version, updated_by = EXCLUDED.updated_by, updated_at = now()",
        )
        .bind(tenant.id.0)
        .bind(model_id)
        .bind(alias.as_str())
        .bind(version)
        .bind(actor.user_id())
        .execute(tx.conn())
        .await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::from(actor), "model.alias_set")
            .resource("model", model_id)
            .details(json!({ "model": name.as_str(), "alias": alias.as_str(), "version": version, "previous_version": previous }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        let view = Self::model_view(&mut tx, name).await?;
        tx.commit().await?;
        Ok(view)
    }

    pub async fn remove_alias(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        name: &ModelName,
        alias: &AliasName,
        info: &RequestInfo,
    ) -> Result<(), RegistryError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let (model_id, _) = Self::model_id(&mut tx, name, true).await?;
        let removed: Option<i32> =
            sqlx::query_scalar("DELETE FROM model_aliases WHERE model_id = $1 AND alias = $2 RETURNING version")
                .bind(model_id)
                .bind(alias.as_str())
                .fetch_optional(tx.conn())
                .await?;
        let version =
            removed.ok_or_else(|| RegistryError::AliasNotFound { model: name.to_string(), alias: alias.as_str().to_owned() })?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::from(actor), "model.alias_removed")
            .resource("model", model_id)
            .details(json!({ "model": name.as_str(), "alias": alias.as_str(), "version": version }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Soft-deletes a version. One behind an alias stays: move or remove the alias first.
    pub async fn delete_version(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        name: &ModelName,
        version: &VersionRef,
        info: &RequestInfo,
    ) -> Result<(), RegistryError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let (model_id, _) = Self::model_id(&mut tx, name, true).await?;
        let stored = Self::stored_version(&mut tx, name, Some(version)).await?;
        if !stored.view.aliases.is_empty() {
            return Err(RegistryError::VersionBehindAlias { version: stored.view.version, aliases: stored.view.aliases });
        }
        sqlx::query("UPDATE model_versions SET deleted_at = now() WHERE id = $1").bind(stored.view.id).execute(tx.conn()).await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::from(actor), "model.version_deleted")
            .resource("model_version", stored.view.id)
            .details(json!({ "model": name.as_str(), "model_id": model_id, "version": stored.view.version }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        self.remove_objects(&[stored.object_key]).await;
        Ok(())
    }

    /// Soft-deletes a model and its versions; refused while any alias remains.
    pub async fn delete_model(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        name: &ModelName,
        info: &RequestInfo,
    ) -> Result<(), RegistryError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let (model_id, _) = Self::model_id(&mut tx, name, true).await?;
        let aliases: Vec<String> = sqlx::query_scalar("SELECT alias FROM model_aliases WHERE model_id = $1 ORDER BY alias")
            .bind(model_id)
            .fetch_all(tx.conn())
            .await?;
        if !aliases.is_empty() {
            return Err(RegistryError::ModelHasAliases { model: name.to_string(), aliases });
        }
        let objects: Vec<String> = sqlx::query_scalar(
            "UPDATE model_versions SET deleted_at = now() WHERE model_id = $1 AND deleted_at IS NULL RETURNING object_key",
        )
        .bind(model_id)
        .fetch_all(tx.conn())
        .await?;
        let versions = objects.len();
        sqlx::query("UPDATE models SET deleted_at = now() WHERE id = $1").bind(model_id).execute(tx.conn()).await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::from(actor), "model.deleted")
            .resource("model", model_id)
            .details(json!({ "name": name.as_str(), "versions_deleted": versions }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        self.remove_objects(&objects).await;
        Ok(())
    }

    /// Records events that accompany no change (a load, a download) in a transaction of their
    /// own.
    pub(super) async fn record_alone(&self, info: &RequestInfo, events: Vec<AuditEvent>) -> Result<(), RegistryError> {
        let mut tx = self.pool.begin().await?;
        self.auditor.record(&mut tx, info, events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A deleted version keeps its row (the audit trail points at it) but not its ciphertext,
    /// so that deleting frees the tenant's quota for real. Removal follows the commit; a failure
    /// is logged and leaves an orphan object, never a row without its object.
    async fn remove_objects(&self, keys: &[String]) {
        for key in keys {
            if let Err(e) = self.store.delete(key).await {
                tracing::warn!(error = %e, object_key = key.as_str(), "removing a deleted version's object failed");
            }
        }
    }

    /// Gives the tenant a new key and re-wraps every data key under it; the artifacts
    /// themselves are not touched. The old key is retired.
    pub async fn rotate_tenant_key(&self, actor: &Principal, tenant: &TenantInfo, info: &RequestInfo) -> Result<u64, RegistryError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        // Serialises with uploads committing their version (they lock the same row) and with
        // a concurrent rotation.
        sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE").bind(tenant.id.0).execute(tx.conn()).await?;
        let (new_id, new_key, retired) = self.keys.rotate_tenant_key(&mut tx).await?;
        let mut rewrapped = 0usize;
        let mut old_keys = BTreeMap::new();
        // Model artifacts and the other sealed objects (datasets, job outputs) alike.
        for table in ["model_versions", "data_objects"] {
            let select = format!("SELECT id, tenant_key_id, wrapped_data_key FROM {table} WHERE tenant_id = $1 AND tenant_key_id <> $2 FOR UPDATE");
            let rows: Vec<(Uuid, Uuid, Vec<u8>)> =
                sqlx::query_as(sqlx::AssertSqlSafe(select)).bind(tenant.id.0).bind(new_id).fetch_all(tx.conn()).await?;
            let update = format!("UPDATE {table} SET tenant_key_id = $2, wrapped_data_key = $3 WHERE id = $1");
            for (artifact, key_id, wrapped) in &rows {
                if !old_keys.contains_key(key_id) {
                    old_keys.insert(*key_id, self.keys.tenant_key(&mut tx, *key_id).await?);
                }
                let data_key = KeyService::unwrap_data_key(&old_keys[key_id], *artifact, wrapped)
                    .map_err(|e| anyhow::anyhow!("data key of object {artifact}: {e}"))?;
                sqlx::query(sqlx::AssertSqlSafe(update.clone()))
                    .bind(artifact)
                    .bind(new_id)
                    .bind(KeyService::wrap_data_key(&new_key, *artifact, &data_key))
                    .execute(tx.conn())
                    .await?;
            }
            rewrapped += rows.len();
        }
        let event = AuditEvent::new(Some(tenant.id), AuditActor::from(actor), "keys.tenant_rotated")
            .resource("tenant_key", new_id)
            .details(json!({ "retired_key": retired, "rewrapped_data_keys": rewrapped }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        Ok(rewrapped as u64)
    }
}
