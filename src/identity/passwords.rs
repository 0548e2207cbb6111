//! argon2id password hashing, always off the async executor.

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::OnceCell;

use crate::config::AuthSettings;

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A hash of a random password with the same parameters: an unknown email is checked
    /// against it, so it costs as much as a wrong password and timing reveals nothing.
    decoy: Arc<OnceCell<String>>,
}

pub const MIN_PASSWORD_LEN: usize = 12;
pub const MAX_PASSWORD_LEN: usize = 1024;

impl Passwords {
    pub fn new(settings: &AuthSettings) -> anyhow::Result<Self> {
        let params = Params::new(settings.argon2_memory_kib, settings.argon2_iterations, settings.argon2_parallelism, None)
            .map_err(|e| anyhow::anyhow!("auth.argon2_*: {e}"))?;
        Ok(Self { params, decoy: Arc::new(OnceCell::new()) })
    }

    fn hasher(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    /// A password policy error, or `None` when acceptable.
    pub fn policy_violation(password: &str) -> Option<String> {
        let chars = password.chars().count();
        if chars < MIN_PASSWORD_LEN {
            return Some(format!("the password must have at least {MIN_PASSWORD_LEN} characters"));
        }
        if password.len() > MAX_PASSWORD_LEN {
            return Some(format!("the password must have at most {MAX_PASSWORD_LEN} bytes"));
        }
        None
    }

    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            Self::hasher(params)
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("argon2: {e}"))
        })
        .await?
    }

    /// Verifies against `stored`, or against the decoy when there is no such user.
    pub async fn verify(&self, password: String, stored: Option<String>) -> anyhow::Result<bool> {
        let (stored, real) = match stored {
            Some(hash) => (hash, true),
            None => (self.decoy().await?, false),
        };
        let params = self.params.clone();
        let matched = tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&stored).map_err(|e| anyhow::anyhow!("stored hash unreadable: {e}"))?;
            anyhow::Ok(Self::hasher(params).verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await??;
        Ok(matched && real)
    }

    async fn decoy(&self) -> anyhow::Result<String> {
        self.decoy
            .get_or_try_init(|| async {
                let random = uuid::Uuid::new_v4().to_string();
                self.hash(random).await
            })
            .await
            .cloned()
    }
}
