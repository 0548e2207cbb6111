//! argon2id password hashing, always off the async executor, and never more at once than
//! the machine can compute: each hash takes ~19 MiB and a core for tens of milliseconds, so
//! unbounded concurrent logins would be a way to exhaust memory and starve inference.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::{OnceCell, Semaphore};

use super::error::IdentityError;
use crate::config::AuthSettings;

/// How long a hash may wait for a free slot, and how many may wait (per slot).
const MAX_WAIT: Duration = Duration::from_secs(1);
const WAITERS_PER_SLOT: usize = 2;

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A hash of a random password with the same parameters: an unknown email is checked
    /// against it, so it costs as much as a wrong password and timing reveals nothing.
    decoy: Arc<OnceCell<String>>,
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
}

pub const MIN_PASSWORD_LEN: usize = 12;
pub const MAX_PASSWORD_LEN: usize = 1024;

impl Passwords {
    pub fn new(settings: &AuthSettings) -> anyhow::Result<Self> {
        let params = Params::new(settings.argon2_memory_kib, settings.argon2_iterations, settings.argon2_parallelism, None)
            .map_err(|e| anyhow::anyhow!("auth.argon2_*: {e}"))?;
        let slots = match settings.password_hash_concurrency {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        };
        Ok(Self {
            params,
            decoy: Arc::new(OnceCell::new()),
            slots: Arc::new(Semaphore::new(slots)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: slots * WAITERS_PER_SLOT,
        })
    }

    /// Runs one hash computation in a slot on the blocking pool, or refuses at once when
    /// every slot is taken and enough callers already wait.
    async fn in_slot<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, IdentityError> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(IdentityError::HashingBusy);
                }
                let acquired = tokio::time::timeout(MAX_WAIT, self.slots.clone().acquire_owned()).await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                match acquired {
                    Ok(Ok(permit)) => permit,
                    _ => return Err(IdentityError::HashingBusy),
                }
            }
        };
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(anyhow::Error::from)?;
        Ok(result?)
    }

    fn hasher(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    /// Whether a new password meets the policy.
    pub fn check_policy(password: &str) -> Result<(), IdentityError> {
        if password.chars().count() < MIN_PASSWORD_LEN {
            return Err(IdentityError::PasswordTooShort { min: MIN_PASSWORD_LEN });
        }
        if password.len() > MAX_PASSWORD_LEN {
            return Err(IdentityError::PasswordTooLong { max: MAX_PASSWORD_LEN });
        }
        Ok(())
    }

    pub async fn hash(&self, password: String) -> Result<String, IdentityError> {
        let params = self.params.clone();
        self.in_slot(move || {
            Self::hasher(params)
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("argon2: {e}"))
        })
        .await
    }

    /// Verifies against `stored`, or against the decoy when there is no such user.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, IdentityError> {
        let (stored, real) = match stored {
            Some(hash) => (hash, true),
            None => (self.decoy().await?, false),
        };
        let params = self.params.clone();
        let matched = self
            .in_slot(move || {
                let parsed = PasswordHash::new(&stored).map_err(|e| anyhow::anyhow!("stored hash unreadable: {e}"))?;
                anyhow::Ok(Self::hasher(params).verify_password(password.as_bytes(), &parsed).is_ok())
            })
            .await?;
        Ok(matched && real)
    }

    async fn decoy(&self) -> Result<String, IdentityError> {
        self.decoy
            .get_or_try_init(|| async {
                let random = uuid::Uuid::new_v4().to_string();
                self.hash(random).await
            })
            .await
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Code, ErrorCode};

    #[test]
    fn the_policy_names_its_limits() {
        let short = Passwords::check_policy("elevenchars").unwrap_err();
        assert_eq!((short.code(), short.to_string()), (Code::WeakPassword, "the password must have at least 12 characters".to_owned()));
        let long = Passwords::check_policy(&"x".repeat(MAX_PASSWORD_LEN + 1)).unwrap_err();
        assert_eq!(long.to_string(), "the password must have at most 1024 bytes");
        assert!(Passwords::check_policy("twelve chars").is_ok());
    }
}
