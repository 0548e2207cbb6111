//! Per-tenant request rate limits: GCRA in Redis, one round trip per lease.
//!
//! To keep Redis off the hot path, a process takes tokens from the tenant's shared bucket in
//! small leases (a fiftieth of a second's worth, at least one) and spends them locally; a
//! lease not spent within a second is dropped. With a lease of one token the limit is exact.
//! Redis being down never fails a request: the limiter lets it through and says so in the log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::TenantInfo;
use crate::redis_store::RedisStore;

/// GCRA taking `cost` tokens at once. Returns {1, 0} when allowed, or {0, retry_after_ms}.
const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, math.ceil((allow_at - now) / 1000)}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, 0}
"#;

const LEASE_LIFETIME: Duration = Duration::from_secs(1);

pub enum Decision {
    Allowed,
    Limited { retry_after_secs: u64 },
}

struct Lease {
    tokens: u32,
    taken_at: Instant,
}

#[derive(Clone)]
pub struct RateLimiter {
    redis: RedisStore,
    script: Arc<redis::Script>,
    leases: Arc<Mutex<HashMap<uuid::Uuid, Lease>>>,
}

impl RateLimiter {
    pub fn new(redis: RedisStore) -> Self {
        Self { redis, script: Arc::new(redis::Script::new(GCRA)), leases: Default::default() }
    }

    fn lease_size(tenant: &TenantInfo) -> u32 {
        (tenant.rate_limit_per_second / 50).clamp(1, 100).min(tenant.rate_limit_burst)
    }

    pub async fn check(&self, tenant: &TenantInfo) -> Decision {
        {
            let mut leases = self.leases.lock();
            if let Some(lease) = leases.get_mut(&tenant.id.0) {
                if lease.tokens > 0 && lease.taken_at.elapsed() < LEASE_LIFETIME {
                    lease.tokens -= 1;
                    return Decision::Allowed;
                }
            }
        }
        let lease = Self::lease_size(tenant);
        let interval_us = (1_000_000 / tenant.rate_limit_per_second.max(1) as u64).max(1);
        let tolerance_us = interval_us * tenant.rate_limit_burst as u64;
        let key = self.redis.key(&["ratelimit", &tenant.id.0.simple().to_string()]);
        let mut connection = self.redis.connection();
        let mut invocation = self.script.key(&key);
        invocation.arg(interval_us).arg(tolerance_us).arg(lease);
        match invocation.invoke_async::<(i64, i64)>(&mut connection).await {
            Ok((1, _)) => {
                self.leases.lock().insert(tenant.id.0, Lease { tokens: lease - 1, taken_at: Instant::now() });
                Decision::Allowed
            }
            Ok((_, retry_ms)) if lease > 1 => {
                // The bucket may still hold fewer tokens than a lease: fall back to one.
                let mut invocation = self.script.key(&key);
                invocation.arg(interval_us).arg(tolerance_us).arg(1);
                match invocation.invoke_async::<(i64, i64)>(&mut connection).await {
                    Ok((1, _)) => Decision::Allowed,
                    Ok((_, retry_ms_single)) => Decision::Limited { retry_after_secs: ms_to_secs(retry_ms_single.min(retry_ms)) },
                    Err(_) => Decision::Allowed,
                }
            }
            Ok((_, retry_ms)) => Decision::Limited { retry_after_secs: ms_to_secs(retry_ms) },
            Err(error) => {
                tracing::warn!(%error, "rate limiter unavailable; request allowed");
                Decision::Allowed
            }
        }
    }
}

fn ms_to_secs(ms: i64) -> u64 {
    ((ms.max(1) as u64) + 999) / 1000
}
