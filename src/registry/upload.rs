//! Streamed uploads. Each piece of the body is, off the async executor, checked (ONNX wire
//! format and signature), hashed (SHA-256 of the plaintext) and encrypted, and only the
//! ciphertext goes on to the object store. Memory stays bounded by one batch plus the parts in
//! flight, whatever the artifact's size. The version row is written only once the object is
//! complete and everything checked out, so a failed upload leaves nothing behind.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::types::Json;
use uuid::Uuid;

use super::BATCH_BYTES;
use super::error::RegistryError;
use super::keys::KeyService;
use super::model::{Framework, ModelName, VersionView};
use super::onnx::{ModelSignature, SignatureScanner};
use super::service::RegistryService;
use super::store::{ArtifactStore, ArtifactWriter};
use crate::audit::{AuditActor, AuditEvent, Outcome};
use crate::request::RequestInfo;
use crate::burnml::Architecture;
use crate::crypto::random_key;
use crate::crypto::stream::{Encryptor, sealed_len};
use crate::error::{Code, ErrorCode};
use crate::identity::Principal;
use crate::data::csv::{CsvScanner, CsvTable};
use crate::tenancy::TenantInfo;
use crate::tenancy::db::TenantTx;

/// What the client says about the artifact besides its bytes.
#[derive(Debug, Default)]
pub struct UploadSpec {
    /// SHA-256 the client computed; the upload fails unless the bytes match.
    pub expected_sha256: Option<[u8; 32]>,
    /// `Content-Length`, when sent: lets an oversized upload fail before a byte is read.
    pub declared_len: Option<u64>,
    /// Burn artifacts: `{"architecture": ..., "config": {...}}`.
    pub burn: Option<serde_json::Value>,
    pub metadata: Option<serde_json::Value>,
}

pub fn parse_sha256(hex_digest: &str) -> Result<[u8; 32], RegistryError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut out).map_err(|_| RegistryError::InvalidSha256)?;
    Ok(out)
}

#[derive(Clone, Copy)]
pub(super) enum Limit {
    /// The platform's cap on one artifact.
    Artifact(u64),
    /// What is left of the tenant's storage quota.
    Quota(u64),
}

impl Limit {
    pub(super) fn bytes(self) -> u64 {
        match self {
            Limit::Artifact(n) | Limit::Quota(n) => n,
        }
    }

    pub(super) fn exceeded(self) -> RegistryError {
        match self {
            Limit::Artifact(n) => RegistryError::TooLarge(n),
            Limit::Quota(n) => RegistryError::StorageQuota(n),
        }
    }
}

/// What an upload's bytes are checked as while they stream.
pub(super) enum Check {
    Onnx(SignatureScanner),
    Csv(CsvScanner),
    /// Burn weights are checked by loading them into their architecture, so they are kept
    /// (bounded by what the largest architecture needs) until the upload ends.
    Burn { architecture: Box<Architecture>, weights: Vec<u8> },
}

/// Room for the burnpack container around the FP32 parameters (header, tensor names, the
/// architecture as metadata).
const BURN_CONTAINER_BYTES: usize = 1024 * 1024;

/// What the check found in a complete upload.
pub(super) enum Checked {
    Nothing,
    Onnx(ModelSignature),
    Csv(CsvTable),
}

impl Check {
    fn update(&mut self, piece: &[u8]) -> Result<(), RegistryError> {
        match self {
            Check::Onnx(scanner) => scanner.update(piece).map_err(RegistryError::InvalidOnnx),
            Check::Csv(scanner) => scanner.update(piece).map_err(RegistryError::InvalidCsv),
            Check::Burn { architecture, weights } => {
                // Only what the declared architecture's weights can take is ever buffered.
                let limit = architecture.parameter_count() * 4 + BURN_CONTAINER_BYTES;
                if weights.len() + piece.len() > limit {
                    return Err(RegistryError::BurnTooLarge { architecture: architecture.name(), limit });
                }
                weights.extend_from_slice(piece);
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<Checked, RegistryError> {
        Ok(match self {
            Check::Onnx(scanner) => Checked::Onnx(scanner.finish().map_err(RegistryError::InvalidOnnx)?),
            Check::Csv(scanner) => Checked::Csv(scanner.finish().map_err(RegistryError::InvalidCsv)?),
            Check::Burn { architecture, weights } => {
                crate::burnml::from_bytes(&architecture, &weights)
                    .map_err(|reason| RegistryError::NotBurnWeights { architecture: architecture.name(), reason })?;
                Checked::Nothing
            }
        })
    }
}

/// The per-byte work of an upload, moved to the blocking pool batch by batch.
pub(super) struct Intake {
    pub(super) encryptor: Encryptor,
    pub(super) digest: Sha256,
    pub(super) check: Check,
    pub(super) received: u64,
    pub(super) limit: Limit,
}

impl Intake {
    /// Checks and hashes on a second core while this one encrypts: both only read `pieces`.
    fn feed(&mut self, pieces: &[Bytes]) -> Result<Vec<Bytes>, RegistryError> {
        self.received += pieces.iter().map(|p| p.len() as u64).sum::<u64>();
        if self.received > self.limit.bytes() {
            return Err(self.limit.exceeded());
        }
        let (check, digest, encryptor) = (&mut self.check, &mut self.digest, &mut self.encryptor);
        std::thread::scope(|scope| {
            let checking = scope.spawn(move || {
                for piece in pieces {
                    check.update(piece)?;
                    digest.update(piece);
                }
                Ok::<(), RegistryError>(())
            });
            let sealed: Vec<Bytes> = pieces.iter().flat_map(|piece| encryptor.update(piece)).collect();
            checking.join().expect("checking does not panic")?;
            Ok(sealed)
        })
    }

    fn finish(self) -> Result<(Vec<Bytes>, [u8; 32], Checked, u64), RegistryError> {
        let checked = self.check.finish()?;
        let digest: [u8; 32] = self.digest.finalize().into();
        Ok((self.encryptor.finish(), digest, checked, self.received))
    }
}

pub(super) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, RegistryError> {
    Ok(tokio::task::spawn_blocking(work).await.map_err(anyhow::Error::new)?)
}

/// Burn records hold weights, not the graph: they are accepted only for an architecture
/// Tessera knows, with a configuration it can build.
fn check_burn_spec(burn: Option<&serde_json::Value>) -> Result<Architecture, RegistryError> {
    let spec = burn.ok_or(RegistryError::BurnSpecMissing)?;
    let architecture: Architecture = serde_json::from_value(spec.clone()).map_err(|e| {
        let name = spec.get("architecture").and_then(|a| a.as_str()).unwrap_or("");
        RegistryError::UnknownArchitecture { name: name.to_owned(), reason: e.to_string() }
    })?;
    architecture.validate().map_err(RegistryError::InvalidBurnConfig)?;
    Ok(architecture)
}

impl RegistryService {
    /// Uploads a new version of `name` from a stream of body pieces.
    pub async fn upload<S, E>(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        name: &ModelName,
        spec: UploadSpec,
        body: S,
        info: &RequestInfo,
    ) -> Result<VersionView, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let result = self.upload_inner(actor, tenant, name, spec, body, info).await;
        if let Err(error) = &result
            && error.code().status().is_client_error()
            && error.code() != Code::NotFound
        {
            let event = AuditEvent::new(Some(tenant.id), AuditActor::from(actor), "model.version_upload_rejected")
                .outcome(Outcome::Failure)
                .details(json!({ "model": name.as_str(), "code": error.code().as_str(), "reason": error.to_string() }));
            if let Err(e) = self.auditor.record_alone(&self.pool, info, vec![event]).await {
                tracing::warn!(error = ?e, "recording a rejected upload failed");
            }
        }
        result
    }

    async fn upload_inner<S, E>(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        name: &ModelName,
        spec: UploadSpec,
        mut body: S,
        info: &RequestInfo,
    ) -> Result<VersionView, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let (_, framework) = Self::model_id(&mut tx, name, false).await?;
        let burn_architecture = match framework {
            Framework::Onnx if spec.burn.is_some() => return Err(RegistryError::BurnSpecOnOnnx),
            Framework::Onnx => None,
            Framework::Burn => Some(check_burn_spec(spec.burn.as_ref())?),
        };
        let artifact = Uuid::now_v7();
        let limit = Self::reserve_room(&mut tx, artifact, self.max_artifact_bytes, spec.declared_len).await?;
        tx.commit().await?;
        let uploaded = self.upload_reserved(actor, tenant, name, spec, &mut body, info, artifact, limit, burn_architecture).await;
        if uploaded.is_err() {
            self.release_room(tenant.id, artifact).await;
        }
        uploaded
    }

    /// Holds room in the tenant's storage quota for an upload about to stream, under the
    /// tenant row's lock: `declared` bytes, or (length unknown) all that one upload may take.
    /// Returns the limit the stream is held to.
    pub(super) async fn reserve_room(tx: &mut TenantTx, id: Uuid, cap: u64, declared: Option<u64>) -> Result<Limit, RegistryError> {
        sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE").bind(tx.tenant().0).execute(tx.conn()).await?;
        sqlx::query("DELETE FROM storage_reservations WHERE tenant_id = $1 AND expires_at <= now()")
            .bind(tx.tenant().0)
            .execute(tx.conn())
            .await?;
        let remaining = Self::remaining_quota(tx).await?;
        let limit = if remaining < cap { Limit::Quota(remaining) } else { Limit::Artifact(cap) };
        if declared.is_some_and(|n| n > limit.bytes()) || limit.bytes() == 0 {
            return Err(limit.exceeded());
        }
        let bytes = declared.unwrap_or(limit.bytes()).min(limit.bytes());
        sqlx::query(
            "INSERT INTO storage_reservations (id, tenant_id, bytes, expires_at) VALUES ($1, $2, $3, now() + interval '6 hours')",
        )
        .bind(id)
        .bind(tx.tenant().0)
        .bind(bytes as i64)
        .execute(tx.conn())
        .await?;
        Ok(limit)
    }

    /// Gives back what `reserve_room` held, when the upload failed (best effort: a reservation
    /// left behind expires).
    pub async fn release_room(&self, tenant: crate::tenancy::TenantId, id: Uuid) {
        let released = async {
            let mut tx = TenantTx::begin(&self.pool, tenant).await?;
            sqlx::query("DELETE FROM storage_reservations WHERE id = $1").bind(id).execute(tx.conn()).await?;
            tx.commit().await
        };
        if let Err(error) = released.await {
            tracing::warn!(%error, reservation = %id, "could not release a storage reservation; it will expire");
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_reserved<S, E>(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        name: &ModelName,
        spec: UploadSpec,
        body: &mut S,
        info: &RequestInfo,
        artifact: Uuid,
        limit: Limit,
        burn: Option<Architecture>,
    ) -> Result<VersionView, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let data_key = random_key();
        let object_key = ArtifactStore::key_for(tenant.id.0, artifact);
        let intake = Intake {
            encryptor: Encryptor::new(&data_key, &artifact),
            digest: Sha256::new(),
            check: match &burn {
                None => Check::Onnx(SignatureScanner::new()),
                Some(architecture) => Check::Burn { architecture: Box::new(architecture.clone()), weights: Vec::new() },
            },
            received: 0,
            limit,
        };
        let mut writer = self.store.writer(&object_key).await?;
        let streamed = Self::stream_into(intake, body, &mut writer).await;
        let (size, digest, checked) = match streamed {
            Ok(done) => done,
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        };
        if let Some(expected) = spec.expected_sha256
            && expected != digest
        {
            writer.abort().await;
            return Err(RegistryError::ChecksumMismatch { actual: digest, expected });
        }
        writer.finish().await?;

        let row = NewVersionRow {
            artifact,
            size,
            digest,
            object_key: &object_key,
            data_key,
            signature: match checked {
                Checked::Onnx(s) => Some(s),
                Checked::Nothing | Checked::Csv(_) => None,
            },
            burn,
            metadata: spec.metadata.unwrap_or_else(|| json!({})),
        };
        match self.commit_version(actor, tenant, name, row, info).await {
            Ok(view) => Ok(view),
            Err(e) => {
                if let Err(cleanup) = self.store.delete(&object_key).await {
                    tracing::warn!(error = %cleanup, object_key, "removing the object of a failed upload failed");
                }
                Err(e)
            }
        }
    }

    /// Streams the body through the intake into the writer; returns (size, SHA-256, signature).
    pub(super) async fn stream_into<S, E>(
        mut intake: Intake,
        body: &mut S,
        writer: &mut ArtifactWriter,
    ) -> Result<(u64, [u8; 32], Checked), RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batched = 0usize;
        loop {
            let next = body.next().await;
            let done = next.is_none();
            if let Some(piece) = next {
                let piece = piece.map_err(|e| RegistryError::Interrupted(e.to_string()))?;
                batched += piece.len();
                batch.push(piece);
            }
            if batched >= BATCH_BYTES || (done && !batch.is_empty()) {
                let pieces = std::mem::take(&mut batch);
                batched = 0;
                let (back, sealed) = blocking(move || {
                    let sealed = intake.feed(&pieces);
                    (intake, sealed)
                })
                .await?;
                intake = back;
                writer.write(sealed?).await?;
            }
            if done {
                break;
            }
        }
        let (sealed, digest, checked, size) = blocking(move || intake.finish()).await??;
        writer.write(sealed).await?;
        Ok((size, digest, checked))
    }

    /// Bytes of the tenant's storage quota not yet used by live versions and datasets, nor
    /// reserved by uploads in flight.
    pub(super) async fn remaining_quota(tx: &mut TenantTx) -> Result<u64, RegistryError> {
        let (max, used): (i64, i64) = sqlx::query_as(
            "SELECT t.max_storage_bytes, (COALESCE((SELECT sum(v.size_bytes) FROM model_versions v \
             WHERE v.tenant_id = t.id AND v.deleted_at IS NULL), 0) \
             + COALESCE((SELECT sum(d.size_bytes) FROM data_objects d WHERE d.tenant_id = t.id), 0) \
             + COALESCE((SELECT sum(r.bytes) FROM storage_reservations r \
                         WHERE r.tenant_id = t.id AND r.expires_at > now()), 0))::bigint \
             FROM tenants t WHERE t.id = $1",
        )
        .bind(tx.tenant().0)
        .fetch_one(tx.conn())
        .await?;
        Ok(max.saturating_sub(used).max(0) as u64)
    }

    async fn commit_version(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        name: &ModelName,
        row: NewVersionRow<'_>,
        info: &RequestInfo,
    ) -> Result<VersionView, RegistryError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let author = Author { actor: AuditActor::from(actor), user: actor.user_id(), job: None };
        let view = self.insert_version(&mut tx, &author, name, row, info).await?;
        tx.commit().await?;
        Ok(view)
    }

    /// Writes a version row and its audit event in the caller's transaction. The caller has
    /// stored the sealed object already; the data key is wrapped here, under the tenant key
    /// active now.
    pub(super) async fn insert_version(
        &self,
        tx: &mut TenantTx,
        author: &Author,
        name: &ModelName,
        row: NewVersionRow<'_>,
        info: &RequestInfo,
    ) -> Result<VersionView, RegistryError> {
        let tenant = tx.tenant();
        // Locking the tenant row serialises commits of one tenant, so concurrent uploads
        // cannot together overshoot the quota that each of them fitted alone.
        sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE").bind(tenant.0).execute(tx.conn()).await?;
        let (model_id, _) = Self::model_id(tx, name, true).await?;
        let (tenant_key_id, tenant_key) = self.keys.active_tenant_key(tx).await?;
        let wrapped_data_key = KeyService::wrap_data_key(&tenant_key, row.artifact, &row.data_key);
        // The upload's own reservation becomes its row.
        sqlx::query("DELETE FROM storage_reservations WHERE id = $1").bind(row.artifact).execute(tx.conn()).await?;
        let remaining = Self::remaining_quota(tx).await?;
        if row.size > remaining {
            return Err(Limit::Quota(remaining).exceeded());
        }
        let version: i32 =
            sqlx::query_scalar("UPDATE models SET next_version = next_version + 1 WHERE id = $1 RETURNING next_version - 1")
                .bind(model_id)
                .fetch_one(tx.conn())
                .await?;
        sqlx::query(
            "INSERT INTO model_versions (id, tenant_id, model_id, version, size_bytes, stored_bytes, sha256, object_key, \
             tenant_key_id, wrapped_data_key, signature, burn, metadata, created_by, job_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(row.artifact)
        .bind(tenant.0)
        .bind(model_id)
        .bind(version)
        .bind(row.size as i64)
        .bind(sealed_len(row.size) as i64)
        .bind(&row.digest[..])
        .bind(row.object_key)
        .bind(tenant_key_id)
        .bind(&wrapped_data_key)
        .bind(row.signature.as_ref().map(Json))
        .bind(row.burn.as_ref().map(Json))
        .bind(&row.metadata)
        .bind(author.user)
        .bind(author.job)
        .execute(tx.conn())
        .await?;
        let mut details = json!({
            "model": name.as_str(),
            "version": version,
            "size_bytes": row.size,
            "sha256": hex::encode(row.digest),
            "tenant_key": tenant_key_id,
        });
        if let Some(job) = author.job {
            details["job"] = json!(job);
        }
        let event = AuditEvent::new(Some(tenant), author.actor.clone(), "model.version_uploaded")
            .resource("model_version", row.artifact)
            .details(details);
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        let stored = Self::stored_version(tx, name, Some(&super::model::VersionRef::Number(version))).await?;
        Ok(stored.view)
    }
}

/// Who a new version is recorded as coming from.
pub struct Author {
    pub actor: AuditActor,
    /// `created_by`: the user, when a user is behind it.
    pub user: Option<Uuid>,
    /// The training job that produced it: a job registers at most one version.
    pub job: Option<Uuid>,
}

pub(super) struct NewVersionRow<'a> {
    pub(super) artifact: Uuid,
    pub(super) size: u64,
    pub(super) digest: [u8; 32],
    pub(super) object_key: &'a str,
    /// Wrapped at commit, under the tenant key active then: a rotation that commits while the
    /// bytes stream cannot leave this version under a retired key.
    pub(super) data_key: crate::crypto::Key,
    pub(super) signature: Option<ModelSignature>,
    pub(super) burn: Option<Architecture>,
    pub(super) metadata: serde_json::Value,
}
