//! Checkpoints, signed twice over: a row in Postgres, and first a digest object in the object
//! store, the way CloudTrail delivers digest files to S3.
//!
//! Whoever controls the database can rewrite every event, recompute every hash and delete the
//! checkpoint rows; the digests are out of their reach. Each digest is a small signed JSON
//! object (tenant, sequence number, hash, time, the SHA-256 of the tenant's previous digest
//! object), so the digests form a chain of their own, and `verify::verify_digests` holds the
//! database to them.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use super::chain::{format_time, now_micros};
use super::signing::{AuditSigner, checkpoint_message};

/// Where digests live in the object store: `<PREFIX>/<tenant>/<seq>-<signed at>.json`.
pub const PREFIX: &str = "audit-digests";

/// A digest as stored: canonical JSON, signed over everything but `signature`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DigestFile {
    pub format: String,
    pub tenant_id: Uuid,
    pub seq: i64,
    /// Hex SHA-256 of the event at `seq`.
    pub hash: String,
    pub signed_at: String,
    pub reason: String,
    pub key_id: String,
    /// Hex SHA-256 of the tenant's previous digest object; none for the first.
    pub previous_digest: Option<String>,
    /// Base64 Ed25519 signature.
    #[serde(default)]
    pub signature: String,
}

impl DigestFile {
    pub fn signed_bytes(&self) -> Vec<u8> {
        super::signing::signed_bytes(self)
    }
}

/// Signs checkpoints: the digest object, then the checkpoint row.
#[derive(Clone)]
pub struct Notary {
    signer: Arc<AuditSigner>,
    store: Arc<dyn ObjectStore>,
}

impl Notary {
    pub fn new(signer: Arc<AuditSigner>, store: Arc<dyn ObjectStore>) -> Self {
        Self { signer, store }
    }

    pub fn signer(&self) -> &AuditSigner {
        &self.signer
    }

    /// Signs a checkpoint of `tenant` at (`seq`, `hash`) inside the caller's transaction and
    /// returns when it was signed and the checkpoint's signature. The tenant's digests are
    /// serialised by a transaction-level advisory lock, so each names its true predecessor.
    /// If the digest cannot be stored, no checkpoint is recorded.
    pub async fn checkpoint(
        &self,
        conn: &mut PgConnection,
        tenant: Uuid,
        seq: i64,
        hash: &[u8],
        reason: &str,
    ) -> anyhow::Result<(String, Vec<u8>)> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('tessera-audit-digest:' || $1::text, 0))")
            .bind(tenant)
            .execute(&mut *conn)
            .await?;
        let previous: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT sha256 FROM audit_digests WHERE tenant_id = $1 ORDER BY id DESC LIMIT 1")
                .bind(tenant)
                .fetch_optional(&mut *conn)
                .await?;
        let signed_at = format_time(now_micros());
        let hash_hex = hex::encode(hash);
        let signature = self.signer.sign(&checkpoint_message(&tenant, seq, &hash_hex, &signed_at));
        let mut digest = DigestFile {
            format: "tessera-audit-digest-v1".to_owned(),
            tenant_id: tenant,
            seq,
            hash: hash_hex,
            signed_at: signed_at.clone(),
            reason: reason.to_owned(),
            key_id: self.signer.key_id().to_owned(),
            previous_digest: previous.map(hex::encode),
            signature: String::new(),
        };
        digest.signature = STANDARD.encode(self.signer.sign(&digest.signed_bytes()));
        let bytes = serde_json::to_vec(&digest)?;
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let key = format!("{PREFIX}/{tenant}/{seq:020}-{signed_at}.json");
        self.store.put(&Path::from(key.as_str()), PutPayload::from(bytes)).await?;
        sqlx::query("INSERT INTO audit_digests (tenant_id, seq, object_key, sha256) VALUES ($1, $2, $3, $4)")
            .bind(tenant)
            .bind(seq)
            .bind(&key)
            .bind(&sha256[..])
            .execute(&mut *conn)
            .await?;
        sqlx::query("SELECT audit_add_checkpoint($1, $2, $3, $4, $5::timestamptz, $6, $7, $8)")
            .bind(Uuid::now_v7())
            .bind(tenant)
            .bind(seq)
            .bind(hash)
            .bind(&signed_at)
            .bind(self.signer.key_id())
            .bind(&signature)
            .bind(reason)
            .execute(&mut *conn)
            .await?;
        Ok((signed_at, signature))
    }
}

