//! Login, refresh, logout and user creation. HTTP-free: handlers and the CLI both call these.

use std::sync::Arc;

use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Email;
use super::authenticate::Authenticator;
use super::jwt::{Claims, Keyring};
use super::passwords::Passwords;
use super::permissions::Role;
use super::principal::Principal;
use super::secrets::{CredentialHasher, new_refresh_token};
use super::throttle::LoginThrottle;
use crate::audit::{AuditActor, AuditEvent, Auditor, Outcome, RequestInfo};
use crate::config::AuthSettings;
use crate::error::{ApiError, Code};
use crate::tenancy::TenantInfo;
use crate::tenancy::directory::TenantDirectory;

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// EdDSA-signed JWT; send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until `access_token` expires.
    pub expires_in: u64,
    /// Single-use: exchange it at `/v1/auth/refresh` for a new pair.
    pub refresh_token: String,
    /// The tenant the tokens act for, if any.
    pub tenant: Option<String>,
    pub role: Option<Role>,
}

#[derive(Clone)]
pub struct IdentityService {
    pool: PgPool,
    keyring: Arc<Keyring>,
    passwords: Passwords,
    hasher: CredentialHasher,
    throttle: LoginThrottle,
    tenants: TenantDirectory,
    authenticator: Arc<Authenticator>,
    auditor: Auditor,
    access_ttl: u64,
    refresh_ttl: u64,
}

struct Grant {
    user: Uuid,
    platform_admin: bool,
    tenant: Option<Arc<TenantInfo>>,
    role: Option<Role>,
}

impl IdentityService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: PgPool,
        keyring: Arc<Keyring>,
        passwords: Passwords,
        hasher: CredentialHasher,
        throttle: LoginThrottle,
        tenants: TenantDirectory,
        authenticator: Arc<Authenticator>,
        auditor: Auditor,
        settings: &AuthSettings,
    ) -> Self {
        Self {
            pool,
            keyring,
            passwords,
            hasher,
            throttle,
            tenants,
            authenticator,
            auditor,
            access_ttl: settings.access_token_ttl_seconds,
            refresh_ttl: settings.refresh_token_ttl_seconds,
        }
    }

    pub fn passwords(&self) -> &Passwords {
        &self.passwords
    }

    pub async fn login(
        &self,
        email: &str,
        password: String,
        tenant_slug: Option<&str>,
        info: &RequestInfo,
    ) -> Result<TokenPair, ApiError> {
        let wrong = || ApiError::new(Code::InvalidCredentials, "wrong email or password");
        let client_address = info.client_addr.map(|a| a.to_string());
        let client_address = client_address.as_deref().unwrap_or("unknown");
        // Failures are recorded in the chain of the tenant asked for, when it exists.
        let requested = match tenant_slug {
            Some(slug) => self.tenants.by_slug(slug).await?.map(|t| t.id),
            None => None,
        };
        let Ok(email) = Email::parse(email) else {
            let event = AuditEvent::new(requested, AuditActor::anonymous(), "auth.login")
                .outcome(Outcome::Failure)
                .details(serde_json::json!({ "reason": "malformed email" }));
            self.auditor.record_alone(&self.pool, info, vec![event]).await?;
            return Err(wrong());
        };
        if let Err(throttled) = self.throttle.check(email.as_str(), client_address).await {
            let event = AuditEvent::new(requested, AuditActor::anonymous(), "auth.login")
                .outcome(Outcome::Denied)
                .details(serde_json::json!({ "email": email.as_str(), "reason": "throttled" }));
            self.auditor.record_alone(&self.pool, info, vec![event]).await?;
            return Err(throttled);
        }

        let user: Option<(Uuid, String, bool)> =
            sqlx::query_as("SELECT id, password_hash, is_platform_admin FROM users WHERE lower(email) = $1")
                .bind(email.as_str())
                .fetch_optional(&self.pool)
                .await?;
        let stored = user.as_ref().map(|(_, hash, _)| hash.clone());
        let matched = self.passwords.verify(password, stored).await?;
        let Some((user_id, _, platform_admin)) = user.as_ref().filter(|_| matched).cloned() else {
            self.throttle.failed(email.as_str(), client_address).await;
            let actor = user.map(|(id, _, _)| AuditActor::user(id)).unwrap_or_else(AuditActor::anonymous);
            let event = AuditEvent::new(requested, actor, "auth.login")
                .outcome(Outcome::Failure)
                .details(serde_json::json!({ "email": email.as_str(), "reason": "wrong email or password" }));
            self.auditor.record_alone(&self.pool, info, vec![event]).await?;
            return Err(wrong());
        };
        self.throttle.succeeded(email.as_str(), client_address).await;

        let grant = match self.grant_for(user_id, platform_admin, tenant_slug).await {
            Ok(grant) => grant,
            Err(error) => {
                let event = AuditEvent::new(requested, AuditActor::user(user_id), "auth.login")
                    .outcome(Outcome::Denied)
                    .details(serde_json::json!({ "email": email.as_str(), "reason": error.detail() }));
                self.auditor.record_alone(&self.pool, info, vec![event]).await?;
                return Err(error);
            }
        };
        let family = Uuid::new_v4();
        let mut tx = self.pool.begin().await?;
        let refresh_token = self.insert_refresh(&mut tx, family, &grant).await?;
        let event = AuditEvent::new(grant.tenant.as_ref().map(|t| t.id), AuditActor::user(user_id), "auth.login")
            .resource("session", family)
            .details(serde_json::json!({ "email": email.as_str(), "role": grant.role, "platform_admin": platform_admin }));
        self.auditor.record(&mut tx, info, vec![event]).await?;
        tx.commit().await?;
        Ok(self.pair(&grant, refresh_token))
    }

    /// Which tenant and role a login (or refresh) acts with.
    async fn grant_for(&self, user: Uuid, platform_admin: bool, tenant_slug: Option<&str>) -> Result<Grant, ApiError> {
        let mut tx = crate::tenancy::db::begin_as_user(&self.pool, user).await?;
        let memberships: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT tenant_id, role FROM memberships WHERE user_id = $1 ORDER BY created_at")
                .bind(user)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;

        let tenant = match tenant_slug {
            Some(slug) => {
                let tenant = self.tenants.by_slug(slug).await?;
                match tenant {
                    Some(t) if platform_admin || memberships.iter().any(|(id, _)| *id == t.id.0) => Some(t),
                    _ => return Err(ApiError::new(Code::InvalidCredentials, format!("no access to tenant `{slug}`"))),
                }
            }
            None if memberships.len() == 1 => self.tenants.by_id(crate::tenancy::TenantId(memberships[0].0)).await?,
            None => None,
        };
        if let Some(t) = &tenant {
            if !t.is_active() {
                return Err(ApiError::new(Code::TenantSuspended, format!("tenant {} is suspended", t.slug)));
            }
        }
        let role = tenant
            .as_ref()
            .and_then(|t| memberships.iter().find(|(id, _)| *id == t.id.0))
            .and_then(|(_, role)| Role::parse(role));
        Ok(Grant { user, platform_admin, tenant, role })
    }

    async fn insert_refresh(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        family: Uuid,
        grant: &Grant,
    ) -> Result<String, ApiError> {
        let token = new_refresh_token();
        let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(self.refresh_ttl as i64);
        sqlx::query(
            "INSERT INTO refresh_tokens (id, family_id, user_id, tenant_id, token_digest, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(Uuid::now_v7())
        .bind(family)
        .bind(grant.user)
        .bind(grant.tenant.as_ref().map(|t| t.id.0))
        .bind(&self.hasher.digest(&token)[..])
        .bind(expires_at)
        .execute(&mut **tx)
        .await?;
        Ok(token)
    }

    fn pair(&self, grant: &Grant, refresh_token: String) -> TokenPair {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            iss: self.keyring.issuer().to_owned(),
            aud: self.keyring.audience().to_owned(),
            sub: grant.user,
            tid: grant.tenant.as_ref().map(|t| t.id.0),
            role: grant.role,
            adm: grant.platform_admin,
            jti: Uuid::new_v4(),
            iat: now,
            nbf: now,
            exp: now + self.access_ttl,
        };
        TokenPair {
            access_token: self.keyring.sign(&claims),
            token_type: "Bearer",
            expires_in: self.access_ttl,
            refresh_token,
            tenant: grant.tenant.as_ref().map(|t| t.slug.clone()),
            role: grant.role,
        }
    }

    /// Rotates a refresh token. Presenting one that was already rotated means it was copied:
    /// the whole family is revoked and the caller must log in again.
    pub async fn refresh(&self, refresh_token: &str, info: &RequestInfo) -> Result<TokenPair, ApiError> {
        let invalid = || ApiError::new(Code::InvalidToken, "the refresh token is not valid");
        if !refresh_token.starts_with(super::secrets::REFRESH_TOKEN_PREFIX) {
            return Err(invalid());
        }
        let digest = self.hasher.digest(refresh_token);
        let mut tx = self.pool.begin().await?;
        #[derive(sqlx::FromRow)]
        struct Row {
            family_id: Uuid,
            user_id: Uuid,
            tenant_id: Option<Uuid>,
            expires_at: OffsetDateTime,
            used_at: Option<OffsetDateTime>,
            revoked_at: Option<OffsetDateTime>,
            id: Uuid,
        }
        let row: Row = sqlx::query_as(
            "SELECT id, family_id, user_id, tenant_id, expires_at, used_at, revoked_at \
             FROM refresh_tokens WHERE token_digest = $1 FOR UPDATE",
        )
        .bind(&digest[..])
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(invalid)?;
        if row.revoked_at.is_some() {
            return Err(ApiError::new(Code::TokenRevoked, "the refresh token has been revoked"));
        }
        if row.used_at.is_some() {
            sqlx::query("UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL")
                .bind(row.family_id)
                .execute(&mut *tx)
                .await?;
            let event = AuditEvent::new(row.tenant_id.map(crate::tenancy::TenantId), AuditActor::user(row.user_id), "auth.refresh")
                .resource("session", row.family_id)
                .outcome(Outcome::Denied)
                .details(serde_json::json!({ "reason": "reuse of a rotated refresh token; session revoked" }));
            self.auditor.record(&mut tx, info, vec![event]).await?;
            tx.commit().await?;
            return Err(ApiError::new(
                Code::RefreshTokenReused,
                "this refresh token was already used; every token of its session is now revoked",
            ));
        }
        if row.expires_at <= OffsetDateTime::now_utc() {
            return Err(ApiError::new(Code::TokenExpired, "the refresh token has expired; log in again"));
        }
        sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE id = $1").bind(row.id).execute(&mut *tx).await?;

        let platform_admin: bool = sqlx::query_scalar("SELECT is_platform_admin FROM users WHERE id = $1")
            .bind(row.user_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(invalid)?;
        // Roles are read afresh: a changed role applies from the next refresh on.
        let slug = match row.tenant_id {
            Some(id) => self.tenants.by_id(crate::tenancy::TenantId(id)).await?.map(|t| t.slug.clone()),
            None => None,
        };
        let grant = self.grant_for(row.user_id, platform_admin, slug.as_deref()).await?;
        let token = self.insert_refresh(&mut tx, row.family_id, &grant).await?;
        let event = AuditEvent::new(grant.tenant.as_ref().map(|t| t.id), AuditActor::user(row.user_id), "auth.refresh")
            .resource("session", row.family_id)
            .details(serde_json::json!({ "role": grant.role }));
        self.auditor.record(&mut tx, info, vec![event]).await?;
        tx.commit().await?;
        Ok(self.pair(&grant, token))
    }

    /// Revokes the caller's access token and, when given, the refresh token's whole family.
    pub async fn logout(&self, principal: &Principal, refresh_token: Option<&str>, info: &RequestInfo) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        if let Some((jti, exp)) = principal.token {
            let expires_at = OffsetDateTime::from_unix_timestamp(exp as i64).unwrap_or_else(|_| OffsetDateTime::now_utc());
            sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING")
                .bind(jti)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
        }
        if let (Some(token), Some(user)) = (refresh_token, principal.user_id()) {
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = now() WHERE revoked_at IS NULL AND family_id = \
                 (SELECT family_id FROM refresh_tokens WHERE token_digest = $1 AND user_id = $2)",
            )
            .bind(&self.hasher.digest(token)[..])
            .bind(user)
            .execute(&mut *tx)
            .await?;
        }
        let mut event = AuditEvent::new(principal.tenant.as_ref().map(|t| t.id), AuditActor::of(principal), "auth.logout")
            .details(serde_json::json!({ "refresh_session_revoked": refresh_token.is_some() }));
        if let Some((jti, _)) = principal.token {
            event = event.resource("access_token", jti);
        }
        self.auditor.record(&mut tx, info, vec![event]).await?;
        tx.commit().await?;
        if let Some((jti, _)) = principal.token {
            self.authenticator.token_revoked(jti);
        }
        Ok(())
    }

    /// Creates a user (global identity). Fails with 409 when the email is taken.
    pub async fn create_user(
        &self,
        conn: &mut sqlx::PgConnection,
        email: &Email,
        password: String,
        platform_admin: bool,
    ) -> Result<Uuid, ApiError> {
        if let Some(problem) = Passwords::policy_violation(&password) {
            return Err(ApiError::new(Code::WeakPassword, problem));
        }
        let hash = self.passwords.hash(password).await?;
        let id = Uuid::now_v7();
        let inserted = sqlx::query(
            "INSERT INTO users (id, email, password_hash, is_platform_admin) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(email.as_str())
        .bind(hash)
        .bind(platform_admin)
        .execute(conn)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(ApiError::new(Code::AlreadyExists, format!("a user with email {} already exists", email.as_str())));
        }
        Ok(id)
    }

    /// `tessera admin bootstrap`: the first platform administrator, refused once one exists.
    pub async fn bootstrap_admin(&self, email: &str, password: String, info: &RequestInfo) -> Result<Uuid, ApiError> {
        let email = Email::parse(email).map_err(|e| ApiError::new(Code::InvalidRequest, e))?;
        let mut tx = self.pool.begin().await?;
        // Serialise concurrent bootstraps.
        sqlx::query("SELECT pg_advisory_xact_lock(7201)").execute(&mut *tx).await?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE is_platform_admin)")
            .fetch_one(&mut *tx)
            .await?;
        if exists {
            return Err(ApiError::new(Code::Conflict, "a platform administrator already exists; bootstrap is refused"));
        }
        let id = self.create_user(&mut tx, &email, password, true).await?;
        let event = AuditEvent::new(None, AuditActor { kind: "system", id: None }, "platform.admin_bootstrapped")
            .resource("user", id)
            .details(serde_json::json!({ "email": email.as_str() }));
        self.auditor.record(&mut tx, info, vec![event]).await?;
        tx.commit().await?;
        Ok(id)
    }
}
