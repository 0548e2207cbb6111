//! Authentication: a bearer credential (access token or API key) → `Principal`. The HTTP
//! middleware that calls it before any handler runs is `http::authenticate`.
//!
//! Hot path: verified JWTs and API key records are cached in process, so a repeat caller costs
//! a hash-map lookup plus (for API keys) one HMAC. Cached facts (revocation, and the user's
//! membership in the token's tenant) are re-checked against Postgres every `RECHECK`;
//! revocations, membership changes and suspensions made in this process apply at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use sqlx::PgPool;
use uuid::Uuid;

use super::error::IdentityError;
use super::jwt::Keyring;
use super::permissions::Role;
use super::principal::Principal;
use super::secrets::{CredentialHasher, api_key_prefix};
use crate::request::Actor;
use crate::tenancy::directory::TenantDirectory;
use crate::tenancy::{TenantId, TenantInfo};

const RECHECK: Duration = Duration::from_secs(2);
const CACHE_LIMIT: usize = 100_000;
const LAST_USED_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct CachedToken {
    user: Uuid,
    tenant: Option<Uuid>,
    /// The role the token acts with now (see `current_role`).
    role: Option<Role>,
    /// The role the token was issued with.
    token_role: Option<Role>,
    /// The user's session epoch when the token was issued.
    epoch: i32,
    platform_admin: bool,
    jti: Uuid,
    exp: u64,
    checked_at: Instant,
}

#[derive(Clone)]
struct CachedKey {
    id: Uuid,
    tenant: Uuid,
    role: Role,
    digest: Vec<u8>,
    expires_at: Option<time::OffsetDateTime>,
    revoked: bool,
    fetched_at: Instant,
    touched_at: Option<Instant>,
}

pub struct Authenticator {
    keyring: Arc<Keyring>,
    hasher: CredentialHasher,
    pool: PgPool,
    pub(crate) tenants: TenantDirectory,
    tokens: RwLock<HashMap<Box<str>, CachedToken>>,
    keys: RwLock<HashMap<Box<str>, CachedKey>>,
    revoked_here: RwLock<HashSet<Uuid>>,
}

impl Authenticator {
    pub fn new(keyring: Arc<Keyring>, hasher: CredentialHasher, pool: PgPool, tenants: TenantDirectory) -> Self {
        Self {
            keyring,
            hasher,
            pool,
            tenants,
            tokens: Default::default(),
            keys: Default::default(),
            revoked_here: Default::default(),
        }
    }

    /// Called after a logout or revocation in this process: effective immediately here.
    pub fn token_revoked(&self, jti: Uuid) {
        self.revoked_here.write().insert(jti);
    }

    pub fn api_key_revoked(&self, prefix: &str) {
        self.keys.write().remove(prefix);
    }

    pub async fn authenticate(&self, credential: &str) -> Result<Principal, IdentityError> {
        if credential.starts_with(super::secrets::API_KEY_PREFIX) {
            self.authenticate_api_key(credential).await
        } else {
            self.authenticate_token(credential).await
        }
    }

    async fn tenant(&self, id: Option<Uuid>) -> Result<Option<Arc<TenantInfo>>, IdentityError> {
        let Some(id) = id else { return Ok(None) };
        let tenant = self
            .tenants
            .by_id(TenantId(id))
            .await?
            .ok_or_else(|| IdentityError::InvalidToken("the credential's tenant no longer exists"))?;
        if !tenant.is_active() {
            return Err(IdentityError::TenantSuspended(tenant.slug.clone()));
        }
        Ok(Some(tenant))
    }

    async fn authenticate_token(&self, token: &str) -> Result<Principal, IdentityError> {
        let now = jsonwebtoken::get_current_timestamp();
        let cached = self.tokens.read().get(token).cloned();
        let entry = match cached {
            Some(entry) if entry.checked_at.elapsed() < RECHECK => entry,
            // The signature was verified when the entry was made; only revocation can change.
            Some(mut entry) => {
                entry.role = self.current_role(&entry).await?;
                entry.checked_at = Instant::now();
                self.remember_token(token, &entry, now);
                entry
            }
            None => {
                let claims = self.keyring.verify(token)?;
                let mut entry = CachedToken {
                    user: claims.sub,
                    tenant: claims.tid,
                    role: claims.role,
                    token_role: claims.role,
                    epoch: claims.sep,
                    platform_admin: claims.adm,
                    jti: claims.jti,
                    exp: claims.exp,
                    checked_at: Instant::now(),
                };
                entry.role = self.current_role(&entry).await?;
                self.remember_token(token, &entry, now);
                entry
            }
        };
        if entry.exp <= now {
            return Err(IdentityError::TokenExpired("the access token has expired; refresh it"));
        }
        if self.revoked_here.read().contains(&entry.jti) {
            return Err(IdentityError::TokenRevoked("the access token has been revoked"));
        }
        let tenant = self.tenant(entry.tenant).await?;
        Ok(Principal {
            actor: Actor::User { id: entry.user },
            tenant,
            role: entry.role,
            platform_admin: entry.platform_admin,
            token: Some((entry.jti, entry.exp)),
        })
    }

    /// Fails for a revoked token or a member no longer in the token's tenant; otherwise the
    /// role the token may act with now: the token's own, or the member's current role when it
    /// confers less (a demotion applies at once; a promotion at the next refresh). A role that
    /// is neither (a lateral change) leaves the token no role until it is refreshed.
    async fn current_role(&self, entry: &CachedToken) -> Result<Option<Role>, IdentityError> {
        let (revoked, role, admin): (bool, Option<Role>, bool) = sqlx::query_as("SELECT * FROM access_token_status($1, $2, $3, $4)")
            .bind(entry.jti)
            .bind(entry.user)
            .bind(entry.tenant)
            .bind(entry.epoch)
            .fetch_one(&self.pool)
            .await?;
        if revoked || (entry.platform_admin && !admin) {
            return Err(IdentityError::TokenRevoked("the access token has been revoked"));
        }
        let (Some(_), Some(granted)) = (entry.tenant, entry.token_role) else {
            // No tenant, or a platform administrator's token without a role in it.
            return Ok(entry.token_role);
        };
        match role {
            None if entry.platform_admin => Ok(None),
            None => Err(IdentityError::TokenRevoked("the access token's user is no longer a member of its tenant")),
            Some(current) if current == granted || current.may_grant(granted) => Ok(Some(granted)),
            Some(current) if granted.may_grant(current) => Ok(Some(current)),
            Some(_) => Ok(None),
        }
    }

    /// Called after a user's memberships or sessions changed in this process: the user's
    /// cached tokens are checked again at their next use (other processes within `RECHECK`).
    pub fn membership_changed(&self, user: Uuid) {
        self.tokens.write().retain(|_, t| t.user != user);
    }

    fn remember_token(&self, token: &str, entry: &CachedToken, now: u64) {
        let mut tokens = self.tokens.write();
        if tokens.len() >= CACHE_LIMIT {
            tokens.retain(|_, t| t.exp > now);
            if tokens.len() >= CACHE_LIMIT {
                tokens.clear();
            }
        }
        tokens.insert(token.into(), entry.clone());
    }

    async fn authenticate_api_key(&self, key: &str) -> Result<Principal, IdentityError> {
        let invalid = || IdentityError::InvalidToken("the API key is not valid");
        let prefix = api_key_prefix(key).ok_or_else(invalid)?;
        let cached = self.keys.read().get(prefix).cloned();
        let entry = match cached {
            Some(entry) if entry.fetched_at.elapsed() < RECHECK => entry,
            previous => {
                #[derive(sqlx::FromRow)]
                struct Row {
                    id: Uuid,
                    tenant_id: Uuid,
                    role: Role,
                    secret_digest: Vec<u8>,
                    expires_at: Option<time::OffsetDateTime>,
                    revoked_at: Option<time::OffsetDateTime>,
                }
                let row: Row = sqlx::query_as("SELECT * FROM api_key_for_prefix($1)")
                    .bind(prefix)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(invalid)?;
                let entry = CachedKey {
                    id: row.id,
                    tenant: row.tenant_id,
                    role: row.role,
                    digest: row.secret_digest,
                    expires_at: row.expires_at,
                    revoked: row.revoked_at.is_some(),
                    fetched_at: Instant::now(),
                    touched_at: previous.and_then(|p| p.touched_at),
                };
                let mut keys = self.keys.write();
                if keys.len() >= CACHE_LIMIT {
                    keys.clear();
                }
                keys.insert(prefix.into(), entry.clone());
                entry
            }
        };
        if !self.hasher.matches(key, &entry.digest) {
            return Err(invalid());
        }
        if entry.revoked {
            return Err(IdentityError::TokenRevoked("the API key has been revoked"));
        }
        if entry.expires_at.is_some_and(|at| at <= time::OffsetDateTime::now_utc()) {
            return Err(IdentityError::TokenExpired("the API key has expired"));
        }
        let tenant = self.tenant(Some(entry.tenant)).await?;
        if entry.touched_at.is_none_or(|at| at.elapsed() >= LAST_USED_EVERY) {
            self.touch(prefix, entry.id, entry.tenant);
        }
        Ok(Principal {
            actor: Actor::ApiKey { id: entry.id },
            tenant,
            role: Some(entry.role),
            platform_admin: false,
            token: None,
        })
    }

    /// Records `last_used_at` at most once a minute per key, in the background.
    fn touch(&self, prefix: &str, id: Uuid, tenant: Uuid) {
        if let Some(entry) = self.keys.write().get_mut(prefix) {
            entry.touched_at = Some(Instant::now());
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let result = async {
                let mut tx = crate::tenancy::db::TenantTx::begin(&pool, TenantId(tenant)).await?;
                sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = $1").bind(id).execute(tx.conn()).await?;
                tx.commit().await
            }
            .await;
            if let Err(error) = result {
                tracing::warn!(%error, "could not record API key use");
            }
        });
    }
}
