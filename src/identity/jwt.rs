//! Access tokens: EdDSA (Ed25519) JWTs with a `kid`, verified against a keyring.
//!
//! The first configured key signs; every configured key verifies, so a new key can be put in
//! front while tokens signed by the old one stay valid until it is removed. Verification pins
//! the algorithm to EdDSA and requires `exp`, `nbf`, `iss`, `aud`, `sub` and `jti`.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::permissions::Role;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user.
    pub sub: Uuid,
    /// The tenant the token acts for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Platform administrator.
    #[serde(default)]
    pub adm: bool,
    /// The user's session epoch when issued: ending every session of a user (password change
    /// or reset) moves it on, and older tokens stop working.
    #[serde(default)]
    pub sep: i32,
    pub jti: Uuid,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
}

/// The public half of the keyring as a JWKS document: what unauthenticated clients may read,
/// so that the handler serving it never holds a signing key.
pub struct Jwks(pub serde_json::Value);

pub struct Keyring {
    signer: SigningKey,
    verifiers: HashMap<String, DecodingKey>,
    public_keys: Vec<(String, [u8; 32])>,
    validation: Validation,
    issuer: String,
    audience: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token's signing key is unknown")]
    UnknownKey,
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

impl Keyring {
    pub fn new(keys_text: &str, issuer: &str, audience: &str) -> Result<Self, String> {
        let keys = crate::crypto::parse_key_entries(keys_text)?;
        let mut verifiers = HashMap::new();
        let mut public_keys = Vec::new();
        let mut signer = None;
        for (kid, seed) in keys {
            let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
            let public = signing.verifying_key().to_bytes();
            if signer.is_none() {
                let der = signing.to_pkcs8_der().map_err(|e| format!("{kid}: {e}"))?;
                signer = Some(SigningKey { kid: kid.clone(), encoding: EncodingKey::from_ed_der(der.as_bytes()) });
            }
            verifiers.insert(kid.clone(), DecodingKey::from_ed_der(&public));
            public_keys.push((kid, public));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Ok(Self {
            signer: signer.expect("parse_key_entries returns at least one key"),
            verifiers,
            public_keys,
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn signing_kid(&self) -> &str {
        &self.signer.kid
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.signer.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signer.encoding).expect("Ed25519 signing cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Algorithm);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self.verifiers.get(&kid).ok_or(TokenError::UnknownKey)?;
        jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })
    }

    /// The public half of every verification key, as a JWK Set.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .public_keys
            .iter()
            .map(|(kid, public)| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                    "kid": kid, "x": URL_SAFE_NO_PAD.encode(public),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "a:ZGV2LWluc2VjdXJlLWVkMjU1MTktc2VlZC0wMDAwMDA";
    const KEY_B: &str = "b:cHJvZHVjdGlvbi1rZXktc2VlZC0wMDAwMDAwMDAwMDA";

    fn claims(exp_offset: i64) -> Claims {
        let now = jsonwebtoken::get_current_timestamp();
        Claims {
            iss: "tessera".into(),
            aud: "tessera-api".into(),
            sub: Uuid::new_v4(),
            tid: None,
            role: None,
            adm: false,
            sep: 0,
            jti: Uuid::new_v4(),
            iat: now,
            nbf: now,
            exp: (now as i64 + exp_offset) as u64,
        }
    }

    #[test]
    fn a_token_signed_by_an_old_key_verifies_while_that_key_is_listed() {
        let old = Keyring::new(KEY_A, "tessera", "tessera-api").unwrap();
        let token = old.sign(&claims(60));
        let rotated = Keyring::new(&format!("{KEY_B},{KEY_A}"), "tessera", "tessera-api").unwrap();
        assert_eq!(rotated.signing_kid(), "b");
        assert!(rotated.verify(&token).is_ok());
        let retired = Keyring::new(KEY_B, "tessera", "tessera-api").unwrap();
        assert!(matches!(retired.verify(&token), Err(TokenError::UnknownKey)));
    }

    #[test]
    fn expired_wrong_audience_and_alg_none_tokens_are_rejected() {
        let ring = Keyring::new(KEY_A, "tessera", "tessera-api").unwrap();
        assert!(ring.verify(&ring.sign(&claims(-60))).is_err());
        let mut foreign = claims(60);
        foreign.aud = "someone-else".into();
        assert!(ring.verify(&ring.sign(&foreign)).is_err());
        let mut foreign = claims(60);
        foreign.iss = "someone-else".into();
        assert!(ring.verify(&ring.sign(&foreign)).is_err());
        let mut early = claims(60);
        early.nbf += 600;
        assert!(ring.verify(&ring.sign(&early)).is_err());
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(60)).unwrap());
        let none = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"a"}"#));
        assert!(ring.verify(&none).is_err());
        let hs = jsonwebtoken::encode(
            &Header { kid: Some("a".into()), ..Header::new(Algorithm::HS256) },
            &claims(60),
            &EncodingKey::from_secret(&ring.public_keys[0].1),
        )
        .unwrap();
        assert!(matches!(ring.verify(&hs), Err(TokenError::Algorithm)));
    }
}
