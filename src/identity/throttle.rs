//! Login throttling: failed logins are counted per account and per client address in Redis;
//! past the configured count within the lockout window, further attempts get 429 with
//! `Retry-After` until the window ends. If Redis is unreachable, logins proceed (argon2's cost
//! still bounds guessing) and the condition is logged.

use sha2::{Digest, Sha256};

use crate::config::AuthSettings;
use crate::error::{ApiError, Code};
use crate::redis_store::RedisStore;

#[derive(Clone)]
pub struct LoginThrottle {
    redis: RedisStore,
    max_per_account: u32,
    max_per_address: u32,
    window_secs: u64,
}

impl LoginThrottle {
    pub fn new(redis: RedisStore, settings: &AuthSettings) -> Self {
        Self {
            redis,
            max_per_account: settings.login_max_failures_per_account,
            max_per_address: settings.login_max_failures_per_address,
            window_secs: settings.login_lockout_seconds,
        }
    }

    fn keys(&self, email: &str, address: &str) -> (String, String) {
        // Hashed so that Redis never holds email addresses.
        let account = hex::encode(&Sha256::digest(email.as_bytes())[..16]);
        (self.redis.key(&["login-failures", "account", &account]), self.redis.key(&["login-failures", "address", address]))
    }

    pub async fn check(&self, email: &str, address: &str) -> Result<(), ApiError> {
        let (account, addr) = self.keys(email, address);
        let mut connection = self.redis.connection();
        let result: redis::RedisResult<(Option<u32>, i64, Option<u32>, i64)> = redis::pipe()
            .get(&account)
            .pttl(&account)
            .get(&addr)
            .pttl(&addr)
            .query_async(&mut connection)
            .await;
        match result {
            Ok((account_failures, account_ttl, address_failures, address_ttl)) => {
                let mut wait_ms = 0i64;
                if account_failures.unwrap_or(0) >= self.max_per_account {
                    wait_ms = wait_ms.max(account_ttl);
                }
                if address_failures.unwrap_or(0) >= self.max_per_address {
                    wait_ms = wait_ms.max(address_ttl);
                }
                if wait_ms > 0 {
                    return Err(ApiError::new(Code::LoginThrottled, "too many failed logins; try again later")
                        .with_retry_after(((wait_ms + 999) / 1000) as u64));
                }
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, "login throttle unavailable; login allowed");
                Ok(())
            }
        }
    }

    pub async fn failed(&self, email: &str, address: &str) {
        let (account, addr) = self.keys(email, address);
        let mut connection = self.redis.connection();
        let result: redis::RedisResult<()> = redis::pipe()
            .incr(&account, 1)
            .ignore()
            .expire(&account, self.window_secs as i64)
            .ignore()
            .incr(&addr, 1)
            .ignore()
            .expire(&addr, self.window_secs as i64)
            .ignore()
            .query_async(&mut connection)
            .await;
        if let Err(error) = result {
            tracing::warn!(%error, "could not record a failed login");
        }
    }

    pub async fn succeeded(&self, email: &str, address: &str) {
        let (account, _) = self.keys(email, address);
        let mut connection = self.redis.connection();
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&account).query_async(&mut connection).await;
    }
}
