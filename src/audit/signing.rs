//! Ed25519 signatures over audit checkpoints and export manifests, with key ids so signing
//! keys can rotate: the first configured key signs, all configured keys are published.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

pub struct AuditSigner {
    active: (String, SigningKey),
    public: Vec<(String, VerifyingKey)>,
}

impl AuditSigner {
    pub fn new(keys_text: &str) -> Result<Self, String> {
        let keys = crate::crypto::parse_key_entries(keys_text)?;
        let public = keys.iter().map(|(kid, seed)| (kid.clone(), SigningKey::from_bytes(seed).verifying_key())).collect();
        let (kid, seed) = &keys[0];
        Ok(Self { active: (kid.clone(), SigningKey::from_bytes(seed)), public })
    }

    pub fn key_id(&self) -> &str {
        &self.active.0
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.active.1.sign(message).to_bytes().to_vec()
    }

    /// `{ "keys": [{ "kid", "alg": "Ed25519", "public_key": base64 }] }`.
    pub fn public_keys(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .public
            .iter()
            .map(|(kid, key)| {
                serde_json::json!({ "kid": kid, "alg": "Ed25519", "public_key": STANDARD.encode(key.to_bytes()),
                                    "x": URL_SAFE_NO_PAD.encode(key.to_bytes()) })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// What a signed document (an export manifest, a digest) signs: its canonical JSON without
/// its `signature` field.
pub fn signed_bytes(document: &impl serde::Serialize) -> Vec<u8> {
    let mut value = serde_json::to_value(document).expect("signed documents serialize");
    value.as_object_mut().expect("a signed document is an object").remove("signature");
    super::chain::canonical_json(&value).into_bytes()
}

/// The statement a checkpoint signs.
pub fn checkpoint_message(tenant: &uuid::Uuid, seq: i64, hash_hex: &str, signed_at: &str) -> Vec<u8> {
    format!("tessera-audit-checkpoint-v1\n{tenant}\n{seq}\n{hash_hex}\n{signed_at}").into_bytes()
}

/// Parses a public key given as base64 (standard or URL-safe) of the 32 raw bytes.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let text = text.trim();
    let bytes = STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
        .map_err(|_| "the public key is not base64".to_owned())?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| "an Ed25519 public key has 32 bytes".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

pub fn verify(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    Signature::from_slice(signature).is_ok_and(|sig| key.verify(message, &sig).is_ok())
}

/// The audit signing keys' public halves, as `GET /v1/audit/keys` serves them to anyone: the
/// handler holds this document, not the signer.
pub struct PublicKeySet(pub serde_json::Value);
