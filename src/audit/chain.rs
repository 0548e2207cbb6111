//! The canonical form of an audit event and its chained hash.
//!
//! `hash = SHA-256("tessera-audit-v1" || prev_hash || field_1 || … || field_14)` where every
//! field is encoded as one byte `0` when absent, or `1`, its length as a 4-byte big-endian
//! integer, and its UTF-8 bytes. Fields, in order: tenant_id, seq, id, occurred_at, actor_type,
//! actor_id, action, resource_type, resource_id, outcome, client_addr, user_agent, request_id,
//! details. UUIDs are lower-case hyphenated; seq is decimal; occurred_at is RFC 3339 in UTC
//! with exactly six fractional digits (`2026-01-02T03:04:05.000006Z`); details is canonical
//! JSON (object keys sorted by byte order, no insignificant whitespace). The length prefixes
//! make the encoding unambiguous, so no two different events share an input.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::macros::format_description;
use uuid::Uuid;

pub const GENESIS: [u8; 32] = [0; 32];
const DOMAIN: &[u8] = b"tessera-audit-v1";

/// An event exactly as chained, stored, listed and exported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ChainedEvent {
    pub tenant_id: Uuid,
    pub seq: i64,
    pub id: Uuid,
    pub occurred_at: String,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub outcome: String,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = Object)]
    pub details: Value,
    /// Hex.
    pub prev_hash: String,
    /// Hex.
    pub hash: String,
}

pub fn format_time(at: OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    utc.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    ))
    .expect("formatting a UTC timestamp cannot fail")
}

/// Truncates to the microsecond, the precision Postgres stores.
pub fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000).expect("a truncated nanosecond is valid")
}

pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// Keys and scalars are written straight into `out` (no string per value): this runs for
/// every field of every audited call.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            if !keys.is_sorted() {
                keys.sort();
            }
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).expect("strings serialize");
                out.push(b':');
                write_canonical(&map[key], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("scalars serialize"),
    }
}

struct Encoder(Sha256);

impl Encoder {
    fn field(&mut self, value: Option<&str>) {
        match value {
            None => self.0.update([0u8]),
            Some(text) => {
                self.0.update([1u8]);
                self.0.update((text.len() as u32).to_be_bytes());
                self.0.update(text.as_bytes());
            }
        }
    }
}

impl ChainedEvent {
    /// The hash this event must have, given its fields and `prev_hash`.
    pub fn compute_hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        self.compute_hash_with(prev, &canonical_json(&self.details))
    }

    /// `compute_hash` for a caller that already holds the canonical JSON of `details`.
    pub fn compute_hash_with(&self, prev: &[u8; 32], canonical_details: &str) -> [u8; 32] {
        let mut e = Encoder(Sha256::new());
        e.0.update(DOMAIN);
        e.0.update(prev);
        e.field(Some(&self.tenant_id.hyphenated().to_string()));
        e.field(Some(&self.seq.to_string()));
        e.field(Some(&self.id.hyphenated().to_string()));
        e.field(Some(&self.occurred_at));
        e.field(Some(&self.actor_type));
        e.field(self.actor_id.as_deref());
        e.field(Some(&self.action));
        e.field(self.resource_type.as_deref());
        e.field(self.resource_id.as_deref());
        e.field(Some(&self.outcome));
        e.field(self.client_addr.as_deref());
        e.field(self.user_agent.as_deref());
        e.field(self.request_id.as_deref());
        e.field(Some(canonical_details));
        e.0.finalize().into()
    }

    pub fn prev_hash_bytes(&self) -> Option<[u8; 32]> {
        decode_hash(&self.prev_hash)
    }

    pub fn hash_bytes(&self) -> Option<[u8; 32]> {
        decode_hash(&self.hash)
    }
}

pub fn decode_hash(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> ChainedEvent {
        ChainedEvent {
            tenant_id: Uuid::nil(),
            seq: 1,
            id: Uuid::nil(),
            occurred_at: "2026-01-02T03:04:05.000006Z".into(),
            actor_type: "user".into(),
            actor_id: Some("u".into()),
            action: "auth.login".into(),
            resource_type: None,
            resource_id: None,
            outcome: "success".into(),
            client_addr: None,
            user_agent: None,
            request_id: None,
            details: serde_json::json!({"b": 1, "a": [true, null]}),
            prev_hash: hex::encode(GENESIS),
            hash: String::new(),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let v: Value = serde_json::from_str(r#"{ "z": {"y": 1, "x": [1, 2]}, "a": "s" }"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":"s","z":{"x":[1,2],"y":1}}"#);
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = event().compute_hash(&GENESIS);
        let mut e = event();
        e.actor_id = None;
        assert_ne!(e.compute_hash(&GENESIS), base, "absent differs from present");
        let mut e = event();
        e.details = serde_json::json!({"b": 2, "a": [true, null]});
        assert_ne!(e.compute_hash(&GENESIS), base);
        let mut e = event();
        e.seq = 2;
        assert_ne!(e.compute_hash(&GENESIS), base);
        assert_ne!(event().compute_hash(&[1; 32]), base, "the previous hash is chained");
        // Moving a byte between adjacent fields is not a collision.
        let mut a = event();
        a.actor_type = "userx".into();
        a.actor_id = Some(String::new());
        let mut b = event();
        b.actor_type = "user".into();
        b.actor_id = Some("x".into());
        assert_ne!(a.compute_hash(&GENESIS), b.compute_hash(&GENESIS));
    }

    #[test]
    fn times_have_six_fractional_digits_in_utc() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_767_323_045_000_006_789).unwrap();
        assert_eq!(format_time(t), "2026-01-02T03:04:05.000006Z");
    }
}
