//! Per-tenant request rate limits: GCRA in Redis, one round trip per lease.
//!
//! To keep Redis off the hot path, a process takes tokens from the tenant's shared bucket in
//! small leases (a fiftieth of a second's worth, at least one) and spends them locally; a
//! lease not spent within a second is dropped. With a lease of one token the limit is exact.
//!
//! One refill per tenant is in flight at a time, and it runs as a task of its own: requests
//! that find no tokens wait for it rather than each asking Redis for a lease of their own (a
//! burst of concurrent requests would otherwise take a lease each and waste most of them), and
//! a request that goes away does not strand it. A lease is refilled ahead of time when a
//! quarter of it is left, so under steady load no request waits for Redis at all. When Redis
//! refuses, requests are refused here until the moment it named, without asking it again.
//! Redis being down never fails a request: the refill then grants a lease on its own, so that
//! an outage costs one failed round trip per lease rather than one per request, and says so in
//! the log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

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
/// How long a request waits for a refill before it is let through: Redis's own response
/// timeout and retries end a refill well before this.
const REFILL_WAIT: Duration = Duration::from_secs(2);

pub enum Admission {
    Allowed,
    Limited { retry_after_secs: u64 },
}

/// What this process holds of one tenant's bucket.
struct Lease {
    tokens: u32,
    taken_at: Instant,
    refilling: bool,
    /// Redis refused even one token: requests before then are refused here.
    denied_until: Option<Instant>,
}

impl Lease {
    fn empty() -> Self {
        Self { tokens: 0, taken_at: Instant::now(), refilling: false, denied_until: None }
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.tokens > 0 && now.duration_since(self.taken_at) < LEASE_LIFETIME {
            self.tokens -= 1;
            return true;
        }
        false
    }

    fn add(&mut self, tokens: u32, now: Instant) {
        let left = if now.duration_since(self.taken_at) < LEASE_LIFETIME { self.tokens } else { 0 };
        self.tokens = left + tokens;
        self.taken_at = now;
    }
}

/// What a refill asks Redis for: the tenant's bucket and its parameters.
struct Refill {
    tenant: uuid::Uuid,
    key: String,
    interval_us: u64,
    tolerance_us: u64,
    lease: u32,
}

#[derive(Clone)]
pub struct RateLimiter {
    redis: RedisStore,
    script: Arc<redis::Script>,
    leases: Arc<Mutex<HashMap<uuid::Uuid, Lease>>>,
    /// Woken whenever a refill settles.
    settled: Arc<Notify>,
}

impl RateLimiter {
    pub fn new(redis: RedisStore) -> Self {
        Self {
            redis,
            script: Arc::new(redis::Script::new(GCRA)),
            leases: Default::default(),
            settled: Arc::new(Notify::new()),
        }
    }

    fn lease_size(tenant: &TenantInfo) -> u32 {
        (tenant.rate_limit_per_second / 50).clamp(1, 100).min(tenant.rate_limit_burst)
    }

    pub async fn check(&self, tenant: &TenantInfo) -> Admission {
        let lease = Self::lease_size(tenant).max(1);
        // Nearly every call finds a token in hand: that path registers for no wake-up (a
        // shared lock and list in `Notify`) and reads the clock once.
        if let Some(admission) = self.decide(tenant, lease, false) {
            return admission;
        }
        let waited_since = Instant::now();
        loop {
            // Registered before the state is read, so a refill settling in between still wakes it.
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if let Some(admission) = self.decide(tenant, lease, true) {
                return admission;
            }
            let left = REFILL_WAIT.saturating_sub(waited_since.elapsed());
            if tokio::time::timeout(left, settled).await.is_err() {
                tracing::warn!(tenant = %tenant.id, "rate limiter did not settle in time; request allowed");
                return Admission::Allowed;
            }
        }
    }

    /// Admits or limits from the lease in hand; `None` means waiting for a refill, which
    /// `claim` starts unless one is under way already.
    fn decide(&self, tenant: &TenantInfo, lease: u32, claim: bool) -> Option<Admission> {
        let start_refill = {
            let mut leases = self.leases.lock();
            let held = leases.entry(tenant.id.0).or_insert_with(Lease::empty);
            let now = Instant::now();
            if held.take(now) {
                if lease >= 4 && held.tokens <= lease / 4 && !held.refilling {
                    held.refilling = true;
                    drop(leases);
                    self.spawn_refill(tenant, lease);
                }
                return Some(Admission::Allowed);
            }
            if let Some(until) = held.denied_until.filter(|until| *until > now) {
                return Some(Admission::Limited { retry_after_secs: ceil_secs(until - now) });
            }
            claim && !std::mem::replace(&mut held.refilling, true)
        };
        if start_refill {
            self.spawn_refill(tenant, lease);
        }
        None
    }

    fn spawn_refill(&self, tenant: &TenantInfo, lease: u32) {
        let interval_us = (1_000_000 / tenant.rate_limit_per_second.max(1) as u64).max(1);
        let refill = Refill {
            tenant: tenant.id.0,
            key: self.redis.key(&["ratelimit", &tenant.id.0.simple().to_string()]),
            interval_us,
            tolerance_us: interval_us * tenant.rate_limit_burst as u64,
            lease,
        };
        let limiter = self.clone();
        tokio::spawn(async move { limiter.refill(refill).await });
    }

    /// Takes a lease from Redis (or, when the bucket holds less, one token) and settles it.
    async fn refill(&self, refill: Refill) {
        let outcome = match self.take(&refill, refill.lease).await {
            Ok(Ok(())) => Ok(refill.lease),
            // The bucket may still hold fewer tokens than a lease: fall back to one.
            Ok(Err(retry_ms)) if refill.lease > 1 => match self.take(&refill, 1).await {
                Ok(Ok(())) => Ok(1),
                Ok(Err(single_ms)) => Err(retry_ms.min(single_ms)),
                Err(error) => unavailable(&error, refill.lease),
            },
            Ok(Err(retry_ms)) => Err(retry_ms),
            Err(error) => unavailable(&error, refill.lease),
        };
        {
            let mut leases = self.leases.lock();
            let held = leases.entry(refill.tenant).or_insert_with(Lease::empty);
            let now = Instant::now();
            held.refilling = false;
            match outcome {
                Ok(granted) => {
                    held.denied_until = None;
                    held.add(granted, now);
                }
                Err(retry_ms) => held.denied_until = Some(now + Duration::from_millis(retry_ms.max(1) as u64)),
            }
        }
        self.settled.notify_waiters();
    }

    /// One GCRA call: `Ok(Ok(()))` when `cost` tokens were taken, `Ok(Err(retry_ms))` when refused.
    async fn take(&self, refill: &Refill, cost: u32) -> Result<Result<(), i64>, redis::RedisError> {
        let mut connection = self.redis.connection();
        let mut invocation = self.script.key(&refill.key);
        invocation.arg(refill.interval_us).arg(refill.tolerance_us).arg(cost);
        match invocation.invoke_async::<(i64, i64)>(&mut connection).await? {
            (1, _) => Ok(Ok(())),
            (_, retry_ms) => Ok(Err(retry_ms)),
        }
    }
}

/// Redis is down or slow: the lease is granted here, so requests go on and Redis is asked again
/// once it is spent.
fn unavailable(error: &redis::RedisError, lease: u32) -> Result<u32, i64> {
    tracing::warn!(%error, "rate limiter unavailable; requests allowed");
    Ok(lease)
}

fn ceil_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}
