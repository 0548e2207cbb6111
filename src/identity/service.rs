//! Login, refresh, logout and user creation. HTTP-free: handlers and the CLI both call these.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Email;
use super::authenticate::Authenticator;
use super::error::IdentityError;
use super::jwt::{Claims, Keyring};
use super::passwords::Passwords;
use super::permissions::{Permission, Role};
use super::principal::Principal;
use super::secrets::{CredentialHasher, RESET_TOKEN_PREFIX, new_refresh_token, new_single_use_token};
use super::login_failures::{self, FailedLogin};
use super::throttle::{self, LoginThrottle};
use crate::audit::{AuditActor, AuditEvent, Auditor, Outcome};
use crate::config::AuthSettings;
use crate::error::{Code, ErrorCode, INTERNAL_DETAIL};
use crate::request::RequestInfo;
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
    /// Single-use: exchange it at `/v1/auth/refresh` for a new pair. Absent when the request
    /// asked for it as a cookie (`X-Tessera-Refresh: cookie`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The tenant the tokens act for, if any.
    pub tenant: Option<String>,
    pub role: Option<Role>,
}

/// A password reset token, shown once to the platform administrator who issued it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasswordReset {
    pub user_id: Uuid,
    /// Single use: the user redeems it at `POST /v1/password-resets/redeem`.
    pub token: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
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
    reset_ttl: u64,
}

struct Grant {
    user: Uuid,
    platform_admin: bool,
    /// The user's session epoch (see `Claims::sep`).
    epoch: i32,
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
            reset_ttl: settings.password_reset_ttl_seconds,
        }
    }

    /// How long a refresh token lives, for a cookie that carries one.
    pub fn refresh_ttl_seconds(&self) -> u64 {
        self.refresh_ttl
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
    ) -> Result<TokenPair, IdentityError> {
        let wrong = || IdentityError::InvalidCredentials("wrong email or password");
        let client = throttle::client_key(info.client_addr);
        // Every refusal below is counted for the platform's chain, never the tenant's: the
        // caller has not shown they are someone of the tenant they name.
        let refuse = |account, reason, outcome, user| {
            let failure = FailedLogin { account, reason, outcome, user, tenant: tenant_slug };
            login_failures::record(&self.pool, failure, info)
        };
        let parsed = Email::parse(email);
        let account = match &parsed {
            Ok(email) => email.as_str().to_owned(),
            Err(_) => email.trim().to_lowercase(),
        };
        // Counted before anything is checked, so parallel attempts cannot pass the limit.
        if let Err(refusal) = self.throttle.attempt(&account, &client).await {
            // A sprayer is counted once per minute, whatever the account it tries next.
            let counted_as = if matches!(refusal, throttle::Refusal::Spraying { .. }) { "*" } else { account.as_str() };
            refuse(counted_as, refusal.reason(), Outcome::Denied, None).await?;
            return Err(refusal.into());
        }
        let Ok(email) = parsed else {
            refuse(&account, "malformed email", Outcome::Failure, None).await?;
            return Err(wrong());
        };

        // The session epoch is read with the hash it goes with: a password change that commits
        // while this login is verified leaves it with the old epoch, and so with dead tokens.
        let user: Option<(Uuid, String, bool, i32)> =
            sqlx::query_as("SELECT id, password_hash, is_platform_admin, session_epoch FROM users WHERE lower(email) = $1")
                .bind(email.as_str())
                .fetch_optional(&self.pool)
                .await?;
        let stored = user.as_ref().map(|(_, hash, _, _)| hash.clone());
        let matched = self.passwords.verify(password, stored).await?;
        let Some((user_id, _, platform_admin, epoch)) = user.as_ref().filter(|_| matched).cloned() else {
            refuse(&account, "wrong email or password", Outcome::Failure, user.map(|(id, _, _, _)| id)).await?;
            return Err(wrong());
        };
        self.throttle.succeeded(&account, &client).await;

        let grant = match self.grant_for(user_id, platform_admin, epoch, tenant_slug).await {
            Ok(grant) => grant,
            Err(error) => {
                // A server failure is counted by what its client reads, never by its cause.
                let reason = match error.code() {
                    Code::InternalError => Cow::Borrowed(INTERNAL_DETAIL),
                    _ => Cow::Owned(error.to_string()),
                };
                refuse(&account, &reason, Outcome::Denied, Some(user_id)).await?;
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

    /// Chains the login failures counted in minutes that began before `before`'s minute.
    pub async fn flush_login_failures(&self, before: OffsetDateTime) -> Result<usize, IdentityError> {
        login_failures::flush(&self.pool, &self.auditor, before).await
    }

    /// Chains counted login failures every few seconds until `stopping` turns true.
    pub fn spawn_login_failure_flusher(&self, stopping: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        login_failures::spawn_flusher(self.pool.clone(), self.auditor.clone(), stopping)
    }

    /// Which tenant and role a login (or refresh) acts with.
    async fn grant_for(&self, user: Uuid, platform_admin: bool, epoch: i32, tenant_slug: Option<&str>) -> Result<Grant, IdentityError> {
        let mut tx = crate::tenancy::db::begin_as_user(&self.pool, user).await?;
        let memberships: Vec<(Uuid, Role)> =
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
                    _ => return Err(IdentityError::NoTenantAccess(slug.to_owned())),
                }
            }
            None if memberships.len() == 1 => self.tenants.by_id(crate::tenancy::TenantId(memberships[0].0)).await?,
            None => None,
        };
        if let Some(t) = &tenant {
            if !t.is_active() {
                return Err(IdentityError::TenantSuspended(t.slug.clone()));
            }
        }
        let role = tenant
            .as_ref()
            .and_then(|t| memberships.iter().find(|(id, _)| *id == t.id.0))
            .map(|(_, role)| *role);
        Ok(Grant { user, platform_admin, epoch, tenant, role })
    }

    async fn insert_refresh(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        family: Uuid,
        grant: &Grant,
    ) -> Result<String, IdentityError> {
        let token = new_refresh_token();
        let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(self.refresh_ttl as i64);
        sqlx::query(
            "INSERT INTO refresh_tokens (id, family_id, user_id, tenant_id, token_digest, expires_at, session_epoch) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(Uuid::now_v7())
        .bind(family)
        .bind(grant.user)
        .bind(grant.tenant.as_ref().map(|t| t.id.0))
        .bind(&self.hasher.digest(&token)[..])
        .bind(expires_at)
        .bind(grant.epoch)
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
            sep: grant.epoch,
            jti: Uuid::new_v4(),
            iat: now,
            nbf: now,
            exp: now + self.access_ttl,
        };
        TokenPair {
            access_token: self.keyring.sign(&claims),
            token_type: "Bearer",
            expires_in: self.access_ttl,
            refresh_token: Some(refresh_token),
            tenant: grant.tenant.as_ref().map(|t| t.slug.clone()),
            role: grant.role,
        }
    }

    /// Rotates a refresh token. Presenting one that was already rotated means it was copied:
    /// the whole family is revoked and the caller must log in again.
    pub async fn refresh(&self, refresh_token: &str, info: &RequestInfo) -> Result<TokenPair, IdentityError> {
        let invalid = || IdentityError::InvalidToken("the refresh token is not valid");
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
            session_epoch: i32,
        }
        let row: Row = sqlx::query_as(
            "SELECT id, family_id, user_id, tenant_id, expires_at, used_at, revoked_at, session_epoch \
             FROM refresh_tokens WHERE token_digest = $1 FOR UPDATE",
        )
        .bind(&digest[..])
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(invalid)?;
        if row.revoked_at.is_some() {
            return Err(IdentityError::TokenRevoked("the refresh token has been revoked"));
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
            return Err(IdentityError::RefreshTokenReused);
        }
        if row.expires_at <= OffsetDateTime::now_utc() {
            return Err(IdentityError::TokenExpired("the refresh token has expired; log in again"));
        }
        sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE id = $1").bind(row.id).execute(&mut *tx).await?;

        let (platform_admin, epoch): (bool, i32) =
            sqlx::query_as("SELECT is_platform_admin, session_epoch FROM users WHERE id = $1 FOR SHARE")
                .bind(row.user_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(invalid)?;
        if epoch != row.session_epoch {
            return Err(IdentityError::TokenRevoked("the refresh token's session has ended; log in again"));
        }
        // Roles are read afresh: a changed role applies from the next refresh on.
        let slug = match row.tenant_id {
            Some(id) => self.tenants.by_id(crate::tenancy::TenantId(id)).await?.map(|t| t.slug.clone()),
            None => None,
        };
        let grant = self.grant_for(row.user_id, platform_admin, epoch, slug.as_deref()).await?;
        let token = self.insert_refresh(&mut tx, row.family_id, &grant).await?;
        let event = AuditEvent::new(grant.tenant.as_ref().map(|t| t.id), AuditActor::user(row.user_id), "auth.refresh")
            .resource("session", row.family_id)
            .details(serde_json::json!({ "role": grant.role }));
        self.auditor.record(&mut tx, info, vec![event]).await?;
        tx.commit().await?;
        Ok(self.pair(&grant, token))
    }

    /// Revokes the caller's access token and, when given, the refresh token's whole family.
    pub async fn logout(&self, principal: &Principal, refresh_token: Option<&str>, info: &RequestInfo) -> Result<(), IdentityError> {
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
        let mut event = AuditEvent::new(principal.tenant.as_ref().map(|t| t.id), AuditActor::from(principal), "auth.logout")
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

    /// A user changes their own password: the current one is required (and its attempts are
    /// throttled like logins), and every session of the user ends, this one included.
    pub async fn change_password(
        &self,
        principal: &Principal,
        current: String,
        new: String,
        info: &RequestInfo,
    ) -> Result<(), IdentityError> {
        let Some(user) = principal.user_id() else {
            return Err(IdentityError::Forbidden("only a user has a password to change"));
        };
        Passwords::check_policy(&new)?;
        let (email, stored): (String, String) = sqlx::query_as("SELECT lower(email), password_hash FROM users WHERE id = $1")
            .bind(user)
            .fetch_one(&self.pool)
            .await?;
        let client = throttle::client_key(info.client_addr);
        self.throttle.attempt(&email, &client).await?;
        if !self.passwords.verify(current, Some(stored)).await? {
            let event = AuditEvent::new(None, AuditActor::user(user), "user.password_changed")
                .outcome(Outcome::Failure)
                .details(serde_json::json!({ "reason": "wrong current password" }));
            self.auditor.record_alone(&self.pool, info, vec![event]).await?;
            return Err(IdentityError::InvalidCredentials("the current password is wrong"));
        }
        self.throttle.succeeded(&email, &client).await;
        let mut tx = self.pool.begin().await?;
        self.set_password(&mut tx, user, new).await?;
        let event = AuditEvent::new(None, AuditActor::user(user), "user.password_changed")
            .resource("user", user)
            .details(serde_json::json!({ "sessions_ended": true }));
        self.auditor.record(&mut tx, info, vec![event]).await?;
        tx.commit().await?;
        self.authenticator.membership_changed(user);
        Ok(())
    }

    /// A platform administrator issues a one-time password reset token for a user.
    pub async fn issue_password_reset(&self, actor: &Principal, email: &str, info: &RequestInfo) -> Result<PasswordReset, IdentityError> {
        if !actor.platform_admin {
            return Err(IdentityError::Forbidden("only platform administrators issue password resets"));
        }
        let email = Email::parse(email)?;
        let mut tx = self.pool.begin().await?;
        let user: Uuid = sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = $1")
            .bind(email.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(IdentityError::NotFound("no user has this email"))?;
        let token = new_single_use_token(RESET_TOKEN_PREFIX);
        let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(self.reset_ttl as i64);
        // Issuing a new reset voids any earlier one.
        sqlx::query("UPDATE password_resets SET used_at = now() WHERE user_id = $1 AND used_at IS NULL").bind(user).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO password_resets (id, user_id, token_digest, created_by, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(Uuid::now_v7())
            .bind(user)
            .bind(&self.hasher.digest(&token)[..])
            .bind(actor.user_id())
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        let event = AuditEvent::new(None, AuditActor::from(actor), "user.password_reset_issued")
            .resource("user", user)
            .details(serde_json::json!({ "email": email.as_str() }));
        self.auditor.record(&mut tx, info, vec![event]).await?;
        tx.commit().await?;
        Ok(PasswordReset { user_id: user, token, expires_at })
    }

    /// Redeems a reset token: sets the new password once and ends every session of the user.
    pub async fn redeem_password_reset(&self, token: &str, new: String, info: &RequestInfo) -> Result<(), IdentityError> {
        if !token.starts_with(RESET_TOKEN_PREFIX) {
            return Err(IdentityError::InvalidResetToken);
        }
        Passwords::check_policy(&new)?;
        let mut tx = self.pool.begin().await?;
        let user: Uuid = sqlx::query_scalar(
            "UPDATE password_resets SET used_at = now() WHERE token_digest = $1 AND used_at IS NULL AND expires_at > now() \
             RETURNING user_id",
        )
        .bind(&self.hasher.digest(token)[..])
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(IdentityError::InvalidResetToken)?;
        self.set_password(&mut tx, user, new).await?;
        let event = AuditEvent::new(None, AuditActor::user(user), "user.password_reset").resource("user", user);
        self.auditor.record(&mut tx, info, vec![event]).await?;
        tx.commit().await?;
        self.authenticator.membership_changed(user);
        Ok(())
    }

    /// Sets a user's password and ends every session: refresh tokens are revoked and the
    /// session epoch moves on, so every access token issued before stops working.
    async fn set_password(&self, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>, user: Uuid, new: String) -> Result<(), IdentityError> {
        let hash = self.passwords.hash(new).await?;
        sqlx::query("UPDATE users SET password_hash = $2, session_epoch = session_epoch + 1 WHERE id = $1")
            .bind(user)
            .bind(hash)
            .execute(&mut **tx)
            .await?;
        sqlx::query("UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL")
            .bind(user)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Creates a user (global identity). Fails with 409 when the email is taken.
    pub async fn create_user(
        &self,
        conn: &mut sqlx::PgConnection,
        email: &Email,
        password: String,
        platform_admin: bool,
    ) -> Result<Uuid, IdentityError> {
        Passwords::check_policy(&password)?;
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
            return Err(IdentityError::AlreadyExists(format!("a user with email {} already exists", email.as_str()).into()));
        }
        Ok(id)
    }

    /// `tessera admin bootstrap`: the first platform administrator, refused once one exists.
    pub async fn bootstrap_admin(&self, email: &str, password: String, info: &RequestInfo) -> Result<Uuid, IdentityError> {
        let email = Email::parse(email)?;
        let mut tx = self.pool.begin().await?;
        // Serialise concurrent bootstraps.
        sqlx::query("SELECT pg_advisory_xact_lock(7201)").execute(&mut *tx).await?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE is_platform_admin)")
            .fetch_one(&mut *tx)
            .await?;
        if exists {
            return Err(IdentityError::Conflict("a platform administrator already exists; bootstrap is refused"));
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

#[derive(Serialize, ToSchema)]
pub struct MeView {
    pub actor: crate::request::Actor,
    pub email: Option<String>,
    pub platform_admin: bool,
    /// The tenant this credential acts for.
    pub tenant: Option<String>,
    pub role: Option<Role>,
    pub permissions: Vec<Permission>,
    /// For users: every tenant they belong to, with their role there.
    pub memberships: Vec<MembershipView>,
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct MembershipView {
    pub tenant: String,
    pub role: Role,
}

impl IdentityService {
    /// The caller: identity, tenant, role, effective permissions and, for users, every tenant
    /// they belong to.
    pub async fn me(&self, principal: &Principal) -> Result<MeView, IdentityError> {
        let (email, memberships) = match principal.user_id() {
            Some(user) => {
                let mut tx = crate::tenancy::db::begin_as_user(&self.pool, user).await?;
                let email: Option<String> =
                    sqlx::query_scalar("SELECT email FROM users WHERE id = $1").bind(user).fetch_optional(&mut *tx).await?;
                let memberships: Vec<MembershipView> = sqlx::query_as(
                    "SELECT t.slug AS tenant, m.role FROM memberships m JOIN tenants t ON t.id = m.tenant_id \
                     WHERE m.user_id = $1 ORDER BY t.slug",
                )
                .bind(user)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                (email, memberships)
            }
            None => (None, Vec::new()),
        };
        Ok(MeView {
            actor: principal.actor,
            email,
            platform_admin: principal.platform_admin,
            tenant: principal.tenant.as_ref().map(|t| t.slug.clone()),
            role: principal.role,
            permissions: principal.permissions(),
            memberships,
        })
    }
}
