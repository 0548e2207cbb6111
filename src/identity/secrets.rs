//! Opaque credentials: API keys and refresh tokens.
//!
//! Both are high-entropy random strings, so a fast keyed hash (HMAC-SHA-256 under the server's
//! `auth.api_key_secret`) is enough to store them: nothing can be brute-forced from a digest,
//! and checking one costs about a microsecond instead of argon2's tens of milliseconds.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;

pub const API_KEY_PREFIX: &str = "tsk_";
pub const REFRESH_TOKEN_PREFIX: &str = "trt_";
pub const INVITATION_TOKEN_PREFIX: &str = "tsi_";
pub const RESET_TOKEN_PREFIX: &str = "tsr_";
const LOOKUP_LEN: usize = 12;

#[derive(Clone)]
pub struct CredentialHasher {
    mac: Hmac<Sha256>,
}

impl CredentialHasher {
    pub fn new(secret: &secrecy::SecretString) -> Self {
        let mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).expect("HMAC takes any key length");
        Self { mac }
    }

    pub fn digest(&self, credential: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(credential.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Constant-time comparison of a credential with a stored digest.
    pub fn matches(&self, credential: &str, stored: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(credential.as_bytes());
        mac.verify_slice(stored).is_ok()
    }
}

fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    URL_SAFE_NO_PAD.encode(buf)
}

/// A new API key: `tsk_<12-char lookup id>_<43-char secret>`. The part before the second `_`
/// is its public prefix, shown in listings and used to find it.
pub fn new_api_key() -> (String, String) {
    let lookup: String = random_token(LOOKUP_LEN).chars().map(|c| if c == '-' || c == '_' { 'x' } else { c }).collect();
    let prefix = format!("{API_KEY_PREFIX}{}", &lookup[..LOOKUP_LEN]);
    let key = format!("{prefix}_{}", random_token(32));
    (prefix, key)
}

/// The public prefix of a presented API key, if it has the right shape.
pub fn api_key_prefix(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(API_KEY_PREFIX)?;
    if rest.len() != LOOKUP_LEN + 1 + 43 || rest.as_bytes()[LOOKUP_LEN] != b'_' {
        return None;
    }
    Some(&key[..API_KEY_PREFIX.len() + LOOKUP_LEN])
}

pub fn new_refresh_token() -> String {
    format!("{REFRESH_TOKEN_PREFIX}{}", random_token(32))
}

/// A single-use token (invitation, password reset): `prefix` and 256 random bits.
pub fn new_single_use_token(prefix: &str) -> String {
    format!("{prefix}{}", random_token(32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_have_a_findable_prefix() {
        let (prefix, key) = new_api_key();
        assert_eq!(api_key_prefix(&key), Some(prefix.as_str()));
        assert_eq!(api_key_prefix("tsk_short"), None);
        assert_eq!(api_key_prefix("Bearer"), None);
    }

    #[test]
    fn digests_match_only_their_credential() {
        let hasher = CredentialHasher::new(&secrecy::SecretString::from("k".repeat(32)));
        let (_, key) = new_api_key();
        let digest = hasher.digest(&key);
        assert!(hasher.matches(&key, &digest));
        assert!(!hasher.matches(&format!("{key}x"), &digest));
    }
}
