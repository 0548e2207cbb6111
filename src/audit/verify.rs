//! Verification of audit chains: of an export file, offline, and of the live database.
//! Both report the first sequence number where the record stops being trustworthy, and why.

use std::io::BufRead;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::VerifyingKey;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::chain::{ChainedEvent, GENESIS};
use super::export::{CSV_HEADER, EventRow, Manifest, csv_parse_optional};
use super::notary::{DigestFile, PREFIX};
use super::signing::{checkpoint_message, verify};

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Ok { count: u64, signature_checked: bool },
    Broken { seq: Option<i64>, reason: String },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Ok { count, signature_checked: true } => write!(f, "OK: {count} events, chain and signatures valid"),
            Verdict::Ok { count, signature_checked: false } => {
                write!(f, "OK: {count} events, chain valid (signatures NOT checked: no public key given)")
            }
            Verdict::Broken { seq: Some(seq), reason } => write!(f, "BROKEN at seq {seq}: {reason}"),
            Verdict::Broken { seq: None, reason } => write!(f, "BROKEN: {reason}"),
        }
    }
}

fn broken(seq: impl Into<Option<i64>>, reason: impl Into<String>) -> Verdict {
    Verdict::Broken { seq: seq.into(), reason: reason.into() }
}

/// Walks events in order; keeps the state needed to spot the first break.
struct Walker {
    contiguous: bool,
    previous: Option<(i64, [u8; 32])>,
    count: u64,
}

impl Walker {
    fn new(contiguous: bool) -> Self {
        Self { contiguous, previous: None, count: 0 }
    }

    fn step(&mut self, event: &ChainedEvent) -> Result<(), Verdict> {
        let seq = event.seq;
        let prev = event.prev_hash_bytes().ok_or_else(|| broken(seq, "prev_hash is not a 32-byte hex hash"))?;
        let stored = event.hash_bytes().ok_or_else(|| broken(seq, "hash is not a 32-byte hex hash"))?;
        if self.contiguous {
            if let Some((previous_seq, previous_hash)) = self.previous {
                if seq <= previous_seq {
                    return Err(broken(seq, format!("reordered: seq {seq} follows seq {previous_seq}")));
                }
                if seq != previous_seq + 1 {
                    return Err(broken(previous_seq + 1, format!("missing: seq {} is absent (next present is {seq})", previous_seq + 1)));
                }
                if prev != previous_hash {
                    return Err(broken(seq, "reordered or replaced: prev_hash does not match the hash of the event before"));
                }
            }
        }
        if event.compute_hash(&prev) != stored {
            return Err(broken(seq, "changed: the event's content does not match its hash"));
        }
        self.count += 1;
        self.previous = Some((seq, stored));
        Ok(())
    }
}

/// Public keys by id: from `--public-key` (base64, applies to any key id) or the key set JSON.
pub enum PublicKeys {
    None,
    Any(VerifyingKey),
    Set(Vec<(String, VerifyingKey)>),
}

impl PublicKeys {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with('{') {
            let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("key set: {e}"))?;
            let mut keys = Vec::new();
            for key in value["keys"].as_array().ok_or("key set has no `keys` array")? {
                let kid = key["kid"].as_str().ok_or("key without kid")?.to_owned();
                let public = key["public_key"].as_str().ok_or("key without public_key")?;
                keys.push((kid, super::signing::parse_public_key(public)?));
            }
            Ok(PublicKeys::Set(keys))
        } else {
            Ok(PublicKeys::Any(super::signing::parse_public_key(text)?))
        }
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        match self {
            PublicKeys::None => None,
            PublicKeys::Any(key) => Some(key),
            PublicKeys::Set(keys) => keys.iter().find(|(k, _)| k == kid).map(|(_, key)| key),
        }
    }
}

enum Record {
    Event(Box<ChainedEvent>),
    Manifest(Box<Manifest>),
}

fn parse_jsonl(line: &str) -> Result<Record, String> {
    let mut value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let kind = value.as_object_mut().and_then(|o| o.remove("record")).and_then(|v| v.as_str().map(str::to_owned));
    match kind.as_deref() {
        Some("event") => serde_json::from_value(value).map(|e| Record::Event(Box::new(e))).map_err(|e| e.to_string()),
        Some("manifest") => serde_json::from_value(value).map(|m| Record::Manifest(Box::new(m))).map_err(|e| e.to_string()),
        _ => Err("neither an event nor a manifest".to_owned()),
    }
}

fn parse_csv(record: &csv::StringRecord) -> Result<Record, String> {
    if record.len() != CSV_HEADER.len() {
        return Err(format!("expected {} fields, found {}", CSV_HEADER.len(), record.len()));
    }
    match &record[0] {
        "manifest" => serde_json::from_str(&record[14]).map(|m| Record::Manifest(Box::new(m))).map_err(|e| e.to_string()),
        "event" => Ok(Record::Event(Box::new(ChainedEvent {
            tenant_id: record[1].parse().map_err(|_| "bad tenant_id")?,
            seq: record[2].parse().map_err(|_| "bad seq")?,
            id: record[3].parse().map_err(|_| "bad id")?,
            occurred_at: record[4].to_owned(),
            actor_type: record[5].to_owned(),
            actor_id: csv_parse_optional(&record[6]),
            action: record[7].to_owned(),
            resource_type: csv_parse_optional(&record[8]),
            resource_id: csv_parse_optional(&record[9]),
            outcome: record[10].to_owned(),
            client_addr: csv_parse_optional(&record[11]),
            user_agent: csv_parse_optional(&record[12]),
            request_id: csv_parse_optional(&record[13]),
            details: serde_json::from_str(&record[14]).map_err(|e| format!("details: {e}"))?,
            prev_hash: record[15].to_owned(),
            hash: record[16].to_owned(),
        }))),
        other => Err(format!("unknown record type `{other}`")),
    }
}

/// Verifies an export (JSON Lines or CSV, told apart by the first byte) read from `input`.
pub fn verify_export(input: impl BufRead, keys: &PublicKeys) -> Verdict {
    let mut input = input;
    let csv_format = match input.fill_buf() {
        Ok(buf) => !buf.first().is_some_and(|b| *b == b'{'),
        Err(e) => return broken(None, format!("unreadable: {e}")),
    };
    let mut records: Box<dyn Iterator<Item = (usize, Result<Record, String>)>> = if csv_format {
        let reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(input);
        Box::new(reader.into_records().enumerate().map(|(i, r)| (i + 2, r.map_err(|e| e.to_string()).and_then(|r| parse_csv(&r)))))
    } else {
        Box::new(
            input
                .lines()
                .enumerate()
                .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
                .map(|(i, l)| (i + 1, l.map_err(|e| e.to_string()).and_then(|l| parse_jsonl(&l)))),
        )
    };

    // One pass, constant memory: every event's own hash is checked as it arrives; linkage is
    // checked too, but only counts when the manifest says the export is contiguous.
    let mut manifest = None;
    let mut linked = Walker::new(true);
    let mut first_change: Option<(u64, Verdict)> = None;
    let mut first_link_break: Option<(u64, Verdict)> = None;
    let mut seen = 0u64;
    let mut digest = Sha256::new();
    let (mut first, mut last) = (None::<(i64, String)>, None::<(i64, String)>);
    for (line, record) in records.by_ref() {
        match record {
            Err(reason) => return broken(None, format!("line {line} is unreadable ({reason}); the file was altered or truncated")),
            Ok(Record::Manifest(m)) => {
                manifest = Some(*m);
                break;
            }
            Ok(Record::Event(event)) => {
                seen += 1;
                let prev = event.prev_hash_bytes();
                let stored = event.hash_bytes();
                if first_change.is_none() && (prev.is_none() || prev.map(|p| event.compute_hash(&p)) != stored) {
                    first_change = Some((seen, broken(event.seq, "changed: the event's content does not match its hash")));
                }
                if first_link_break.is_none() {
                    if let Err(verdict) = linked.step(&event) {
                        first_link_break = Some((seen, verdict));
                    }
                }
                digest.update(stored.unwrap_or_default());
                if first.is_none() {
                    first = Some((event.seq, event.hash.clone()));
                }
                last = Some((event.seq, event.hash.clone()));
            }
        }
    }
    if records.next().is_some() {
        return broken(None, "records follow the manifest; the file was altered");
    }
    let Some(manifest) = manifest else {
        return broken(last.map(|l| l.0), "no manifest: the export is incomplete or was truncated");
    };
    let link_break = first_link_break.filter(|_| manifest.contiguous);
    let earliest = match (first_change, link_break) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b.1 } else { a.1 }),
        (Some(a), None) => Some(a.1),
        (None, Some(b)) => Some(b.1),
        (None, None) => None,
    };
    if let Some(verdict) = earliest {
        return verdict;
    }
    if seen != manifest.count
        || first.as_ref().map(|f| (f.0, f.1.as_str())) != manifest.first_seq.zip(manifest.first_hash.as_deref())
        || last.as_ref().map(|l| (l.0, l.1.as_str())) != manifest.last_seq.zip(manifest.last_hash.as_deref())
        || hex::encode(digest.finalize()) != manifest.events_digest
    {
        return broken(manifest.last_seq, "events were added or removed: they do not match the manifest");
    }
    if matches!(keys, PublicKeys::None) {
        return Verdict::Ok { count: seen, signature_checked: false };
    }
    let Some(key) = keys.get(&manifest.key_id) else {
        return broken(manifest.last_seq, format!("bad signature: no public key for key id `{}`", manifest.key_id));
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let signature = b64.decode(&manifest.signature).unwrap_or_default();
    if !verify(key, &manifest.signed_bytes(), &signature) {
        return broken(manifest.last_seq, "bad signature: the manifest is not signed by this key");
    }
    if let (Some(seq), Some(hash), Some(sig)) = (manifest.last_seq, &manifest.last_hash, &manifest.checkpoint_signature) {
        let message = checkpoint_message(&manifest.tenant_id, seq, hash, &manifest.signed_at);
        if !verify(key, &message, &b64.decode(sig).unwrap_or_default()) {
            return broken(seq, "bad signature: the checkpoint is not signed by this key");
        }
    }
    Verdict::Ok { count: seen, signature_checked: true }
}

/// Verifies every chain in the database (or one tenant's), streaming in sequence order, and
/// every signed checkpoint against it. Needs a connection that sees all rows (the schema
/// owner's). Without public keys every chain fails: a check that cannot be made is not passed.
pub async fn verify_database(
    pool: &sqlx::PgPool,
    only: Option<Uuid>,
    keys: &PublicKeys,
) -> Result<Vec<(Uuid, Verdict)>, sqlx::Error> {
    let tenants: Vec<(Uuid, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT tenant_id, last_seq, last_hash FROM audit_heads WHERE $1::uuid IS NULL OR tenant_id = $1 ORDER BY tenant_id",
    )
    .bind(only)
    .fetch_all(pool)
    .await?;
    let mut verdicts = Vec::new();
    for (tenant, head_seq, head_hash) in tenants {
        verdicts.push((tenant, verify_chain(pool, tenant, head_seq, &head_hash, keys).await?));
    }
    Ok(verdicts)
}

/// A signed checkpoint as stored: what the chain must contain at `seq`.
struct Checkpoint {
    seq: i64,
    hash: Vec<u8>,
    reason: String,
}

/// Every signed checkpoint of `tenant`, each signature verified first: a checkpoint that
/// cannot be verified (unknown key id, bad signature) is a failure, never skipped.
async fn signed_checkpoints(
    pool: &sqlx::PgPool,
    tenant: Uuid,
    keys: &PublicKeys,
) -> Result<Result<Vec<Checkpoint>, Verdict>, sqlx::Error> {
    let rows: Vec<(i64, Vec<u8>, String, Vec<u8>, time::OffsetDateTime, String)> = sqlx::query_as(
        "SELECT seq, hash, key_id, signature, signed_at, reason FROM audit_checkpoints WHERE tenant_id = $1 ORDER BY seq, signed_at",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    let mut checkpoints = Vec::with_capacity(rows.len());
    for (seq, hash, key_id, signature, signed_at, reason) in rows {
        let Some(key) = keys.get(&key_id) else {
            return Ok(Err(broken(seq, format!("bad signature: no public key for key id `{key_id}` of the {reason} checkpoint"))));
        };
        let message = checkpoint_message(&tenant, seq, &hex::encode(&hash), &super::chain::format_time(signed_at));
        if !verify(key, &message, &signature) {
            return Ok(Err(broken(seq, format!("bad signature on the {reason} checkpoint (key id `{key_id}`)"))));
        }
        checkpoints.push(Checkpoint { seq, hash, reason });
    }
    Ok(Ok(checkpoints))
}

async fn verify_chain(
    pool: &sqlx::PgPool,
    tenant: Uuid,
    head_seq: i64,
    head_hash: &[u8],
    keys: &PublicKeys,
) -> Result<Verdict, sqlx::Error> {
    if matches!(keys, PublicKeys::None) {
        return Ok(broken(None, "no public keys: the chain's signed checkpoints cannot be checked"));
    }
    let checkpoints = match signed_checkpoints(pool, tenant, keys).await? {
        Ok(checkpoints) => checkpoints,
        Err(verdict) => return Ok(verdict),
    };
    let mut pending = checkpoints.iter().peekable();
    let columns = "tenant_id, seq, id, occurred_at, actor_type, actor_id, action, resource_type, resource_id, outcome, \
                   client_addr, user_agent, request_id, details::text AS details, prev_hash, hash";
    let sql = format!("SELECT {columns} FROM audit_events WHERE tenant_id = $1 ORDER BY seq");
    let mut rows = sqlx::query_as::<_, EventRow>(sqlx::AssertSqlSafe(sql)).bind(tenant).fetch(pool);
    let mut walker = Walker::new(true);
    while let Some(row) = rows.next().await {
        let event = row?.into_event();
        if walker.previous.is_none() {
            // The chain starts at genesis, or (after a retention purge) at a signed checkpoint.
            let prev = event.prev_hash_bytes().unwrap_or_default();
            if event.seq == 1 {
                if prev != GENESIS {
                    return Ok(broken(1, "changed: the first event does not start from the genesis hash"));
                }
            } else {
                let anchored = checkpoints.iter().any(|c| c.reason == "purge" && c.seq == event.seq - 1 && c.hash[..] == prev[..]);
                if !anchored {
                    return Ok(broken(1, format!("missing: seq 1..{} absent with no retention checkpoint", event.seq - 1)));
                }
            }
            // Checkpoints of purged events are anchored by the purge checkpoint itself.
            while pending.next_if(|c| c.seq < event.seq).is_some() {}
        }
        if let Err(verdict) = walker.step(&event) {
            return Ok(verdict);
        }
        while let Some(checkpoint) = pending.next_if(|c| c.seq == event.seq) {
            if event.hash_bytes().map(|h| h[..] != checkpoint.hash[..]).unwrap_or(true) {
                return Ok(broken(
                    event.seq,
                    format!("changed: the chain disagrees with the {} checkpoint signed at this seq", checkpoint.reason),
                ));
            }
        }
    }
    if let Some(checkpoint) = pending.next() {
        return Ok(broken(
            checkpoint.seq,
            format!("missing: a {} checkpoint was signed at this seq, beyond the chain's end", checkpoint.reason),
        ));
    }
    let last = walker.previous;
    match last {
        Some((seq, hash)) if seq == head_seq && hash[..] == head_hash[..] => {}
        Some((seq, _)) if seq < head_seq => return Ok(broken(seq + 1, format!("missing: events {}..{head_seq} were deleted", seq + 1))),
        None if head_seq > 0 => return Ok(broken(1, "missing: every event was deleted")),
        None => {}
        Some((seq, _)) => return Ok(broken(seq, "changed: the chain does not end at its recorded head")),
    }
    Ok(Verdict::Ok { count: walker.count, signature_checked: true })
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
