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

use super::redact::{MaskPolicy, is_secret_key, looks_like_email, mask_email};

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

/// RFC 3339 with exactly six fractional digits, for times already in UTC.
pub const TIME_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

pub fn format_time(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC).format(TIME_FORMAT).expect("formatting a UTC timestamp cannot fail")
}

/// Truncates to the microsecond, the precision Postgres stores.
pub fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000).expect("a truncated nanosecond is valid")
}

pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out, None);
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// The canonical JSON of `value` as the redaction policy lets it be stored: secret-looking keys
/// dropped at any depth, emails masked if the tenant asks (the rules are in `redact.rs`).
pub fn canonical_json_redacted(value: &Value, policy: MaskPolicy) -> String {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out, Some(policy));
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// Keys and scalars are written straight into `out` (no string per value): this runs for
/// every field of every audited call. With a policy, redaction happens while writing, so the
/// tree is neither copied nor walked twice.
pub(crate) fn write_canonical(value: &Value, out: &mut Vec<u8>, redaction: Option<MaskPolicy>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().filter(|k| redaction.is_none() || !is_secret_key(k)).collect();
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
                write_canonical(&map[key], out, redaction);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out, redaction);
            }
            out.push(b']');
        }
        Value::String(text) => match redaction {
            Some(policy) => write_string(text, policy, out),
            None => serde_json::to_writer(&mut *out, text).expect("strings serialize"),
        },
        scalar => serde_json::to_writer(&mut *out, scalar).expect("scalars serialize"),
    }
}

/// A JSON string as the policy lets it be stored (emails masked if asked). A NUL is written
/// as U+FFFD, as in the record's text columns (`Record::storable`): Postgres keeps `\u0000` in
/// `json` but cannot turn it into text, so `details->>` would fail on the record.
pub(crate) fn write_string(text: &str, policy: MaskPolicy, out: &mut Vec<u8>) {
    if text.contains('\0') {
        return write_string(&text.replace('\0', "\u{FFFD}"), policy, out);
    }
    if policy.emails && looks_like_email(text) {
        serde_json::to_writer(&mut *out, &mask_email(text)).expect("strings serialize");
    } else {
        serde_json::to_writer(&mut *out, text).expect("strings serialize");
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

/// The fields of an event, borrowed, as they are hashed; `details` is its canonical JSON.
pub struct HashInput<'a> {
    pub tenant_id: Uuid,
    pub seq: i64,
    pub id: Uuid,
    pub occurred_at: &'a str,
    pub actor_type: &'a str,
    pub actor_id: Option<&'a str>,
    pub action: &'a str,
    pub resource_type: Option<&'a str>,
    pub resource_id: Option<&'a str>,
    pub outcome: &'a str,
    pub client_addr: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub details: &'a str,
}

impl HashInput<'_> {
    pub fn hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        let mut uuid = Uuid::encode_buffer();
        let mut e = Encoder(Sha256::new());
        e.0.update(DOMAIN);
        e.0.update(prev);
        e.field(Some(self.tenant_id.hyphenated().encode_lower(&mut uuid)));
        e.field(Some(&self.seq.to_string()));
        e.field(Some(self.id.hyphenated().encode_lower(&mut uuid)));
        e.field(Some(self.occurred_at));
        e.field(Some(self.actor_type));
        e.field(self.actor_id);
        e.field(Some(self.action));
        e.field(self.resource_type);
        e.field(self.resource_id);
        e.field(Some(self.outcome));
        e.field(self.client_addr);
        e.field(self.user_agent);
        e.field(self.request_id);
        e.field(Some(self.details));
        e.0.finalize().into()
    }
}

impl ChainedEvent {
    /// The hash this event must have, given its fields and `prev_hash`.
    pub fn compute_hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        self.compute_hash_with(prev, &canonical_json(&self.details))
    }

    /// `compute_hash` for a caller that already holds the canonical JSON of `details`.
    pub fn compute_hash_with(&self, prev: &[u8; 32], canonical_details: &str) -> [u8; 32] {
        HashInput {
            tenant_id: self.tenant_id,
            seq: self.seq,
            id: self.id,
            occurred_at: &self.occurred_at,
            actor_type: &self.actor_type,
            actor_id: self.actor_id.as_deref(),
            action: &self.action,
            resource_type: self.resource_type.as_deref(),
            resource_id: self.resource_id.as_deref(),
            outcome: &self.outcome,
            client_addr: self.client_addr.as_deref(),
            user_agent: self.user_agent.as_deref(),
            request_id: self.request_id.as_deref(),
            details: canonical_details,
        }
        .hash(prev)
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

    #[test]
    fn secrets_never_survive() {
        let v = serde_json::json!({
            "email": "alice@example.com", "password": "hunter2",
            "nested": {"refresh_token": "trt_x", "name": "k", "list": [{"api_key": "tsk"}]},
            "Authorization": "Bearer x"
        });
        let text = canonical_json_redacted(&v, MaskPolicy::default());
        for secret in ["hunter2", "trt_x", "tsk", "Bearer"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("alice@example.com"));
    }

    #[test]
    fn emails_are_masked_per_policy() {
        let v = serde_json::json!({"email": "alice@example.com"});
        let text = canonical_json_redacted(&v, MaskPolicy { emails: true, client_addr: false });
        assert_eq!(text, r#"{"email":"a***@example.com"}"#);
    }

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

    /// Details are hashed as written and verified as read back from Postgres: every float must
    /// survive its text, or an untouched event (a training job's `samples_per_second`, say)
    /// reads as changed.
    #[test]
    fn floats_in_details_read_back_as_hashed() {
        let mut bits: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..200_000 {
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            let unit = (bits >> 11) as f64 / (1u64 << 53) as f64;
            let value = match i % 3 {
                0 => unit * 100_000.0,
                1 => unit,
                _ => f64::from_bits(bits),
            };
            if !value.is_finite() {
                continue;
            }
            let written = canonical_json(&serde_json::json!({ "samples_per_second": value }));
            let read: Value = serde_json::from_str(&written).unwrap();
            assert_eq!(canonical_json(&read), written, "{value:e} does not survive its text");
        }
        let known: Value = serde_json::from_str(r#"{"seconds":0.21291890726713458}"#).unwrap();
        assert_eq!(canonical_json(&known), r#"{"seconds":0.21291890726713458}"#);
    }

    #[test]
    fn times_have_six_fractional_digits_in_utc() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_767_323_045_000_006_789).unwrap();
        assert_eq!(format_time(t), "2026-01-02T03:04:05.000006Z");
    }
}
