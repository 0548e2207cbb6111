//! Envelope encryption for model artifacts.
//!
//! Three levels of keys: a master key (configuration secret, with a key id) wraps one key per
//! tenant; a tenant key wraps one fresh data key per artifact; the data key encrypts the
//! artifact with AES-256-GCM in the STREAM construction (`stream.rs`). Rotating the master or a
//! tenant key re-wraps keys only; artifacts are never re-encrypted for it.

pub mod stream;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

pub type Key = Zeroizing<[u8; 32]>;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("authentication failed: the data was altered, truncated or reordered, or the key is wrong")]
    Authentication,
    #[error("not an artifact written by Tessera (bad header)")]
    Header,
    #[error("unknown key id `{0}`")]
    UnknownKey(String),
}

pub fn random_key() -> Key {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::fill(&mut key[..]);
    key
}

/// Wraps `key` under `kek`: `nonce (12) || ciphertext (32) || tag (16)`. `context` is bound in as
/// associated data, so a wrapped key only unwraps where it belongs.
pub fn wrap(kek: &[u8; 32], key: &[u8; 32], context: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new_from_slice(kek).expect("32-byte key");
    let mut nonce = [0u8; 12];
    rand::fill(&mut nonce);
    let sealed = cipher.encrypt(&Nonce::from(nonce), Payload { msg: key, aad: context }).expect("AES-GCM sealing cannot fail");
    let mut out = Vec::with_capacity(12 + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

pub fn unwrap(kek: &[u8; 32], wrapped: &[u8], context: &[u8]) -> Result<Key, CryptoError> {
    if wrapped.len() != 12 + 32 + 16 {
        return Err(CryptoError::Authentication);
    }
    let cipher = Aes256Gcm::new_from_slice(kek).expect("32-byte key");
    let plain = Zeroizing::new(
        cipher
            .decrypt(&Nonce::from(<[u8; 12]>::try_from(&wrapped[..12]).expect("12 bytes")), Payload { msg: &wrapped[12..], aad: context })
            .map_err(|_| CryptoError::Authentication)?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&plain);
    Ok(key)
}

/// Master keys by id; the first one wraps new tenant keys, all of them unwrap.
pub struct MasterKeys {
    keys: Vec<(String, Key)>,
}

impl MasterKeys {
    /// `kid:base64url(32 bytes)[,kid:key…]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let entries = crate::identity::jwt::parse_signing_keys(text)?;
        Ok(Self { keys: entries.into_iter().map(|(kid, key)| (kid, Zeroizing::new(key))).collect() })
    }

    pub fn active(&self) -> (&str, &[u8; 32]) {
        let (kid, key) = &self.keys[0];
        (kid, key)
    }

    pub fn get(&self, kid: &str) -> Result<&[u8; 32], CryptoError> {
        self.keys.iter().find(|(k, _)| k == kid).map(|(_, key)| &**key).ok_or_else(|| CryptoError::UnknownKey(kid.to_owned()))
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// A new `kid:key` entry for the master key list.
pub fn generate_master_key_entry(kid: &str) -> String {
    format!("{kid}:{}", URL_SAFE_NO_PAD.encode(*random_key()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_keys_unwrap_only_with_their_kek_and_context() {
        let kek = random_key();
        let key = random_key();
        let wrapped = wrap(&kek, &key, b"tenant-a");
        assert_eq!(*unwrap(&kek, &wrapped, b"tenant-a").unwrap(), *key);
        assert!(unwrap(&kek, &wrapped, b"tenant-b").is_err());
        assert!(unwrap(&random_key(), &wrapped, b"tenant-a").is_err());
        let mut flipped = wrapped.clone();
        flipped[20] ^= 1;
        assert!(unwrap(&kek, &flipped, b"tenant-a").is_err());
    }
}
