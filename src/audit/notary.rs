//! Checkpoints, signed twice over: a row in Postgres, and first a digest object in the object
//! store, the way CloudTrail delivers digest files to S3.
//!
//! Whoever controls the database can rewrite every event, recompute every hash and delete the
//! checkpoint rows; the digests are out of their reach. Each digest is a small signed JSON
//! object (tenant, sequence number, hash, time, the SHA-256 of the tenant's previous digest
//! object), so the digests form a chain of their own, and `verify_digests` holds the database
//! to them.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use super::chain::{canonical_json, format_time, now_micros};
use super::signing::{AuditSigner, checkpoint_message, verify};
use super::verify::{PublicKeys, Verdict};

const PREFIX: &str = "audit-digests";

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
    fn signed_bytes(&self) -> Vec<u8> {
        let mut value = serde_json::to_value(self).expect("digests serialize");
        value.as_object_mut().expect("an object").remove("signature");
        canonical_json(&value).into_bytes()
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

fn broken(seq: impl Into<Option<i64>>, reason: impl Into<String>) -> Verdict {
    Verdict::Broken { seq: seq.into(), reason: reason.into() }
}

/// Reads a tenant's digests from the store, in order, each with the SHA-256 of its bytes.
async fn read_digests(store: &dyn ObjectStore, tenant: Uuid) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let prefix = Path::from(format!("{PREFIX}/{tenant}"));
    let mut keys: Vec<Path> = store.list(Some(&prefix)).map_ok(|meta| meta.location).try_collect().await?;
    keys.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    let mut files = Vec::with_capacity(keys.len());
    for key in keys {
        let bytes = store.get(&key).await?.bytes().await?;
        files.push((key.to_string(), bytes.to_vec()));
    }
    Ok(files)
}

/// The tenants that have digests in the store.
async fn digest_tenants(store: &dyn ObjectStore) -> anyhow::Result<Vec<Uuid>> {
    let listed = store.list_with_delimiter(Some(&Path::from(PREFIX))).await?;
    Ok(listed.common_prefixes.iter().filter_map(|p| p.filename().and_then(|name| name.parse().ok())).collect())
}

/// Holds each chain in the database (or one tenant's) to the digests in the object store: the
/// digests must be signed by a known key and chained to one another, and the database must
/// still hold, at every digest's sequence number, the event hash the digest signed. A rewrite
/// of the database that recomputed every hash and removed every checkpoint row is caught here.
pub async fn verify_digests(
    pool: &sqlx::PgPool,
    store: &dyn ObjectStore,
    only: Option<Uuid>,
    keys: &PublicKeys,
) -> anyhow::Result<Vec<(Uuid, Verdict)>> {
    let mut tenants = match only {
        Some(tenant) => vec![tenant],
        None => {
            let mut tenants = digest_tenants(store).await?;
            let heads: Vec<Uuid> = sqlx::query_scalar("SELECT tenant_id FROM audit_heads").fetch_all(pool).await?;
            tenants.extend(heads);
            tenants
        }
    };
    tenants.sort();
    tenants.dedup();
    let mut verdicts = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        verdicts.push((tenant, verify_tenant(pool, store, tenant, keys).await?));
    }
    Ok(verdicts)
}

async fn verify_tenant(pool: &sqlx::PgPool, store: &dyn ObjectStore, tenant: Uuid, keys: &PublicKeys) -> anyhow::Result<Verdict> {
    let files = read_digests(store, tenant).await?;
    let mut digests = Vec::with_capacity(files.len());
    let mut written = std::collections::HashSet::with_capacity(files.len());
    for (key, bytes) in &files {
        let Ok(digest) = serde_json::from_slice::<DigestFile>(bytes) else {
            return Ok(broken(None, format!("digest {key} is unreadable")));
        };
        if digest.tenant_id != tenant {
            return Ok(broken(digest.seq, format!("digest {key} names another tenant")));
        }
        let Some(key_for_id) = keys.get(&digest.key_id) else {
            return Ok(broken(digest.seq, format!("bad signature: no public key for key id `{}` of a digest", digest.key_id)));
        };
        let signature = STANDARD.decode(&digest.signature).unwrap_or_default();
        if !verify(key_for_id, &digest.signed_bytes(), &signature) {
            return Ok(broken(digest.seq, format!("bad signature on digest {key}")));
        }
        written.insert(hex::encode(Sha256::digest(bytes)));
        digests.push(digest);
    }
    // Every digest names its predecessor, which must still be there. (Links, not names, give
    // the order: an export or purge may sign an older sequence number than the digest before
    // it, and a digest whose checkpoint row was rolled back is a dead end, still true.)
    for digest in &digests {
        if digest.previous_digest.as_ref().is_some_and(|p| !written.contains(p)) {
            return Ok(broken(digest.seq, "the digests' own chain is broken: the digest before this one was removed or replaced"));
        }
    }
    let Some(last) = digests.iter().max_by_key(|d| d.seq) else {
        return Ok(Verdict::Ok { count: 0, signature_checked: true });
    };

    let (first, head): (Option<(i64, Vec<u8>)>, Option<i64>) = (
        sqlx::query_as("SELECT seq, prev_hash FROM audit_events WHERE tenant_id = $1 ORDER BY seq LIMIT 1")
            .bind(tenant)
            .fetch_optional(pool)
            .await?,
        sqlx::query_scalar("SELECT last_seq FROM audit_heads WHERE tenant_id = $1").bind(tenant).fetch_optional(pool).await?,
    );
    let Some((first_seq, first_prev)) = first else {
        return Ok(broken(last.seq, "missing: the database holds no events where a digest signed some"));
    };
    if head.is_none_or(|h| h < last.seq) {
        return Ok(broken(last.seq, "missing: a digest signed events beyond the database's chain head"));
    }
    // Events before the first one left may only have gone through a purge, which signs a digest
    // of its own at the last deleted event: a relabelled checkpoint row cannot fake that.
    if digests.iter().any(|d| d.seq < first_seq) && !digests.iter().any(|d| d.seq == first_seq - 1 && d.reason == "purge") {
        return Ok(broken(first_seq - 1, "missing: events up to this seq were deleted without a signed purge"));
    }
    let seqs: Vec<i64> = digests.iter().map(|d| d.seq).filter(|s| *s >= first_seq).collect();
    let stored: std::collections::HashMap<i64, Vec<u8>> =
        sqlx::query_as::<_, (i64, Vec<u8>)>("SELECT seq, hash FROM audit_events WHERE tenant_id = $1 AND seq = ANY($2)")
            .bind(tenant)
            .bind(&seqs)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    for digest in &digests {
        let expected = hex::decode(&digest.hash).unwrap_or_default();
        let found = match digest.seq {
            // Purged before the retention checkpoint: nothing left to compare.
            seq if seq < first_seq - 1 => continue,
            seq if seq == first_seq - 1 => Some(&first_prev),
            seq => stored.get(&seq),
        };
        match found {
            Some(hash) if *hash == expected => {}
            Some(_) => return Ok(broken(digest.seq, "changed: the database disagrees with the digest signed at this seq")),
            None => return Ok(broken(digest.seq, "missing: the event a digest signed at this seq is gone")),
        }
    }
    Ok(Verdict::Ok { count: digests.len() as u64, signature_checked: true })
}
