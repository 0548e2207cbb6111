//! Envelope encryption for model artifacts.
//!
//! Three levels of keys: a master key (configuration secret, with a key id) wraps one key per
//! tenant; a tenant key wraps one fresh data key per artifact; the data key encrypts the
//! artifact with AES-256-GCM in the STREAM construction (`stream.rs`). Rotating the master or a
//! tenant key re-wraps keys only; artifacts are never re-encrypted for it.

pub mod stream;

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

/// AES-256-GCM under one key. ring's implementation: it picks the widest AES and carry-less
/// multiply instructions the CPU has at run time (VAES/VPCLMULQDQ where present), several
/// times the throughput of a portable implementation, with the same standard output.
pub struct Aes256Gcm(ring::aead::LessSafeKey);

impl Aes256Gcm {
    pub fn new(key: &[u8; 32]) -> Self {
        let key =
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key).expect("a 32-byte key is valid for AES-256");
        Self(ring::aead::LessSafeKey::new(key))
    }

    /// Encrypts `in_out` in place and returns its tag. The caller guarantees the nonce is
    /// never reused under this key.
    pub fn seal(&self, nonce: [u8; 12], aad: &[u8], in_out: &mut [u8]) -> [u8; 16] {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(aad),
                in_out,
            )
            .expect("AES-GCM seals any input shorter than 64 GiB");
        tag.as_ref().try_into().expect("16-byte tag")
    }

    /// Authenticates and decrypts `in_out` in place; nothing is usable unless this succeeds.
    pub fn open(&self, nonce: [u8; 12], aad: &[u8], in_out: &mut [u8], tag: [u8; 16]) -> Result<(), CryptoError> {
        self.0
            .open_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(tag),
                in_out,
                0..,
            )
            .map(|_| ())
            .map_err(|_| CryptoError::Authentication)
    }
}

pub fn random_key() -> Key {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::fill(&mut key[..]);
    key
}

/// Wraps `key` under `kek`: `nonce (12) || ciphertext (32) || tag (16)`. `context` is bound in as
/// associated data, so a wrapped key only unwraps where it belongs.
pub fn wrap(kek: &[u8; 32], key: &[u8; 32], context: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    rand::fill(&mut nonce);
    let mut out = Vec::with_capacity(12 + 32 + 16);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(key);
    let tag = Aes256Gcm::new(kek).seal(nonce, context, &mut out[12..]);
    out.extend_from_slice(&tag);
    out
}

pub fn unwrap(kek: &[u8; 32], wrapped: &[u8], context: &[u8]) -> Result<Key, CryptoError> {
    if wrapped.len() != 12 + 32 + 16 {
        return Err(CryptoError::Authentication);
    }
    let nonce: [u8; 12] = wrapped[..12].try_into().expect("12 bytes");
    let tag: [u8; 16] = wrapped[44..].try_into().expect("16 bytes");
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&wrapped[12..44]);
    Aes256Gcm::new(kek).open(nonce, context, &mut key[..], tag)?;
    Ok(key)
}

/// Parses `kid:base64url(seed)[,kid:seed…]` into (kid, seed) pairs.
pub fn parse_key_entries(text: &str) -> Result<Vec<(String, [u8; 32])>, String> {
    let mut keys = Vec::new();
    for (index, entry) in text.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
        let (kid, seed) = entry.split_once(':').ok_or_else(|| format!("entry {} is not `kid:seed`", index + 1))?;
        if kid.is_empty() || kid.len() > 64 || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(format!("entry {}: kid must be 1-64 of A-Za-z0-9-_.", index + 1));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(seed.trim_end_matches('='))
            .map_err(|_| format!("entry {} ({kid}): seed is not base64url", index + 1))?;
        let seed: [u8; 32] =
            bytes.try_into().map_err(|_| format!("entry {} ({kid}): seed must be 32 bytes", index + 1))?;
        if keys.iter().any(|(k, _)| k == kid) {
            return Err(format!("kid {kid} appears twice"));
        }
        keys.push((kid.to_owned(), seed));
    }
    if keys.is_empty() {
        return Err("no key configured".to_owned());
    }
    Ok(keys)
}

/// A new `kid:seed` entry: a JWT or audit signing key, or a master key (`tessera keys generate-*`).
pub fn generate_key_entry(kid: &str) -> String {
    format!("{kid}:{}", URL_SAFE_NO_PAD.encode(*random_key()))
}

/// Master keys by id; the first one wraps new tenant keys, all of them unwrap.
pub struct MasterKeys {
    keys: Vec<(String, Key)>,
}

impl MasterKeys {
    /// `kid:base64url(32 bytes)[,kid:key…]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let entries = parse_key_entries(text)?;
        Ok(Self { keys: entries.into_iter().map(|(kid, key)| (kid, Zeroizing::new(key))).collect() })
    }

    pub fn active(&self) -> (&str, &[u8; 32]) {
        let (kid, key) = &self.keys[0];
        (kid, key)
    }

    pub fn get(&self, kid: &str) -> Result<&[u8; 32], CryptoError> {
        self.keys
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, key)| &**key)
            .ok_or_else(|| CryptoError::UnknownKey(kid.to_owned()))
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(k, _)| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test cases 13 and 14 of the GCM specification (McGrew and Viega): stored artifacts and
    /// wrapped keys are standard AES-256-GCM, whichever implementation runs.
    #[test]
    fn matches_the_gcm_specification_vectors() {
        let cipher = Aes256Gcm::new(&[0u8; 32]);
        assert_eq!(hex::encode(cipher.seal([0u8; 12], b"", &mut [])), "530f8afbc74536b9a963b4f1c4cb738b");
        let mut block = [0u8; 16];
        let tag = cipher.seal([0u8; 12], b"", &mut block);
        assert_eq!(hex::encode(block), "cea7403d4d606b6e074ec5d3baf39d18");
        assert_eq!(hex::encode(tag), "d0d1c8a799996bf0265b98b5d48ab919");
        cipher.open([0u8; 12], b"", &mut block, tag).unwrap();
        assert_eq!(block, [0u8; 16]);
    }

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
