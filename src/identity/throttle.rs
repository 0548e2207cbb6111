//! Login throttling, in Redis so that every API process shares it.
//!
//! Each attempt is counted, atomically, before its password is checked, so parallel attempts
//! cannot slip past the limit. Limits are per (account, client): after
//! `login_max_failures_per_account` failures a client backs off (`login_backoff_seconds`,
//! doubling with each further failure, at most `login_lockout_seconds`) on that account only;
//! other clients, and its other accounts, are unaffected, so nobody can lock a victim out. A
//! client failing on more than `login_max_accounts_per_client` distinct accounts (password
//! spraying) is refused everywhere. IPv6 clients are counted by /64, the block one host
//! usually holds. If Redis is unreachable, logins proceed (bounded by the password hashing
//! slots) and the condition is logged.

use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::config::AuthSettings;
use crate::redis_store::RedisStore;

/// KEYS[1]: the (account, client) pair, a hash {count, blocked_until}.
/// KEYS[2]: the set of accounts the client has attempted without success.
/// ARGV: account, max failures, max accounts, window ms, first back-off ms.
/// Returns {allowed, wait ms, spraying}.
const ATTEMPT: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local max_failures, max_accounts = tonumber(ARGV[2]), tonumber(ARGV[3])
local window, backoff = tonumber(ARGV[4]), tonumber(ARGV[5])
local blocked_until = tonumber(redis.call('HGET', KEYS[1], 'blocked_until') or '0')
if blocked_until > now then
  return {0, blocked_until - now, 0}
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 and redis.call('SCARD', KEYS[2]) >= max_accounts then
  return {0, math.max(redis.call('PTTL', KEYS[2]), 1000), 1}
end
local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
redis.call('PEXPIRE', KEYS[1], window)
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], window)
if count > max_failures then
  local wait = math.floor(math.min(window, backoff * 2 ^ (count - max_failures - 1)))
  redis.call('HSET', KEYS[1], 'blocked_until', now + wait)
  if count == max_failures + 1 then
    return {0, wait, 0}
  end
end
return {1, 0, 0}
"#;

/// Why an attempt was refused before its password was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This client failed too often on this account: it waits.
    BackOff { retry_after_secs: u64 },
    /// This client failed on too many accounts: it waits, whatever the account.
    Spraying { retry_after_secs: u64 },
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::BackOff { .. } => "throttled",
            Refusal::Spraying { .. } => "throttled: too many accounts from this client",
        }
    }
}

#[derive(Clone)]
pub struct LoginThrottle {
    redis: RedisStore,
    script: redis::Script,
    max_failures: u32,
    max_accounts: u32,
    window_ms: u64,
    backoff_ms: u64,
}

/// The throttled identity of a client: its address, or its /64 for IPv6.
pub fn client_key(address: Option<IpAddr>) -> String {
    match address {
        None => "unknown".to_owned(),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl LoginThrottle {
    pub fn new(redis: RedisStore, settings: &AuthSettings) -> Self {
        Self {
            redis,
            script: redis::Script::new(ATTEMPT),
            max_failures: settings.login_max_failures_per_account,
            max_accounts: settings.login_max_accounts_per_client,
            window_ms: settings.login_lockout_seconds * 1000,
            backoff_ms: settings.login_backoff_seconds * 1000,
        }
    }

    fn keys(&self, account: &str, client: &str) -> (String, String, String) {
        // Hashed so that Redis never holds email addresses.
        let account = hex::encode(&Sha256::digest(account.as_bytes())[..16]);
        (
            self.redis.key(&["login", "pair", &account, client]),
            self.redis.key(&["login", "client-accounts", client]),
            account,
        )
    }

    /// Counts an attempt at `account` from `client`, before its password is checked.
    pub async fn attempt(&self, account: &str, client: &str) -> Result<(), Refusal> {
        let (pair, accounts, account) = self.keys(account, client);
        let mut connection = self.redis.connection();
        let result: redis::RedisResult<(i64, i64, i64)> = self
            .script
            .key(&pair)
            .key(&accounts)
            .arg(&account)
            .arg(self.max_failures)
            .arg(self.max_accounts)
            .arg(self.window_ms)
            .arg(self.backoff_ms)
            .invoke_async(&mut connection)
            .await;
        match result {
            Ok((1, _, _)) => Ok(()),
            Ok((_, wait_ms, spraying)) => {
                let retry_after_secs = (wait_ms.max(1) as u64).div_ceil(1000);
                Err(if spraying == 1 { Refusal::Spraying { retry_after_secs } } else { Refusal::BackOff { retry_after_secs } })
            }
            Err(error) => {
                tracing::warn!(%error, "login throttle unavailable; login allowed");
                Ok(())
            }
        }
    }

    /// A successful login clears the pair's failures and the account from the client's set.
    pub async fn succeeded(&self, account: &str, client: &str) {
        let (pair, accounts, account) = self.keys(account, client);
        let mut connection = self.redis.connection();
        let result: redis::RedisResult<()> =
            redis::pipe().del(&pair).ignore().srem(&accounts, &account).ignore().query_async(&mut connection).await;
        if let Err(error) = result {
            tracing::warn!(%error, "could not clear a client's failed logins");
        }
    }
}
