//! Tenant administration: tenants (platform), members and API keys (per tenant).
//! Tenant-owned rows are only touched inside a `TenantTx`.

use std::sync::Arc;

use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::db::TenantTx;
use super::directory::TenantDirectory;
use super::{TenantId, TenantInfo, TenantSlug, TenantStatus};
use crate::audit::{AuditActor, AuditEvent, Auditor, RequestInfo};
use crate::error::{ApiError, Code};
use crate::identity::authenticate::Authenticator;
use crate::identity::secrets::{CredentialHasher, new_api_key};
use crate::identity::service::IdentityService;
use crate::identity::{Email, Principal, Role};

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct TenantView {
    pub id: Uuid,
    #[schema(example = "acme")]
    pub slug: String,
    pub name: String,
    pub status: String,
    pub max_models: i32,
    pub max_storage_bytes: i64,
    pub rate_limit_per_second: i32,
    pub rate_limit_burst: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct MemberView {
    pub user_id: Uuid,
    pub email: String,
    pub role: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ApiKeyView {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    /// The key's public prefix (`tsk_…`), enough to recognise it, useless to authenticate.
    pub prefix: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKeyView,
    /// The secret, shown this once only. Send it as `Authorization: Bearer <secret>`.
    pub secret: String,
}

pub struct NewTenant {
    pub slug: TenantSlug,
    pub name: String,
    pub max_models: Option<i32>,
    pub max_storage_bytes: Option<i64>,
    pub rate_limit_per_second: Option<i32>,
    pub rate_limit_burst: Option<i32>,
}

#[derive(Clone)]
pub struct TenantService {
    pool: PgPool,
    directory: TenantDirectory,
    identity: IdentityService,
    hasher: CredentialHasher,
    authenticator: Arc<Authenticator>,
    auditor: Auditor,
}

const TENANT_COLUMNS: &str =
    "id, slug, name, status, max_models, max_storage_bytes, rate_limit_per_second, rate_limit_burst, created_at";

impl TenantService {
    pub fn new(
        pool: PgPool,
        directory: TenantDirectory,
        identity: IdentityService,
        hasher: CredentialHasher,
        authenticator: Arc<Authenticator>,
        auditor: Auditor,
    ) -> Self {
        Self { pool, directory, identity, hasher, authenticator, auditor }
    }

    pub async fn create_tenant(&self, actor: &Principal, new: NewTenant, info: &RequestInfo) -> Result<TenantView, ApiError> {
        let name = new.name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(ApiError::new(Code::InvalidRequest, "name must have 1-200 characters"));
        }
        for (field, value) in [
            ("max_models", new.max_models.map(i64::from)),
            ("max_storage_bytes", new.max_storage_bytes),
            ("rate_limit_per_second", new.rate_limit_per_second.map(i64::from)),
            ("rate_limit_burst", new.rate_limit_burst.map(i64::from)),
        ] {
            if value.is_some_and(|v| v < 0 || (field.starts_with("rate") && v == 0)) {
                return Err(ApiError::new(Code::InvalidRequest, format!("{field} is out of range")));
            }
        }
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query_as::<_, TenantView>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO tenants (id, slug, name, max_models, max_storage_bytes, rate_limit_per_second, rate_limit_burst) \
             VALUES ($1, $2, $3, COALESCE($4, 100), COALESCE($5, 10737418240), COALESCE($6, 1000), COALESCE($7, 2000)) \
             RETURNING {TENANT_COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(new.slug.as_str())
        .bind(name)
        .bind(new.max_models)
        .bind(new.max_storage_bytes)
        .bind(new.rate_limit_per_second)
        .bind(new.rate_limit_burst)
        .fetch_one(&mut *tx)
        .await;
        match result {
            Ok(view) => {
                let event = AuditEvent::new(Some(TenantId(view.id)), AuditActor::of(actor), "tenant.created")
                    .resource("tenant", view.id)
                    .details(serde_json::json!({ "slug": view.slug, "name": view.name }));
                self.auditor.record(&mut tx, info, vec![event]).await?;
                tx.commit().await?;
                Ok(view)
            }
            Err(e) if crate::db::is_unique_violation(&e) => {
                Err(ApiError::new(Code::AlreadyExists, format!("tenant `{}` already exists", new.slug.as_str())))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list_tenants(&self) -> Result<Vec<TenantView>, ApiError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY slug")))
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn get_tenant(&self, tenant: TenantId) -> Result<TenantView, ApiError> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1")))
            .bind(tenant.0)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("tenant not found"))
    }

    pub async fn set_status(
        &self,
        actor: &Principal,
        tenant: TenantId,
        status: TenantStatus,
        info: &RequestInfo,
    ) -> Result<TenantView, ApiError> {
        let mut tx = self.pool.begin().await?;
        let view: TenantView = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE tenants SET status = $2, updated_at = now() WHERE id = $1 RETURNING {TENANT_COLUMNS}"
        )))
        .bind(tenant.0)
        .bind(status.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant not found"))?;
        let action = match status {
            TenantStatus::Active => "tenant.resumed",
            TenantStatus::Suspended => "tenant.suspended",
        };
        let event = AuditEvent::new(Some(tenant), AuditActor::of(actor), action).resource("tenant", tenant);
        self.auditor.record(&mut tx, info, vec![event]).await?;
        tx.commit().await?;
        self.directory.invalidate(tenant);
        Ok(view)
    }

    pub async fn list_members(&self, tenant: &TenantInfo) -> Result<Vec<MemberView>, ApiError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let members = sqlx::query_as(
            "SELECT m.user_id, u.email, m.role, m.created_at FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.tenant_id = $1 ORDER BY u.email",
        )
        .bind(tenant.id.0)
        .fetch_all(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(members)
    }

    fn check_grant(actor: &Principal, role: Role) -> Result<(), ApiError> {
        if actor.platform_admin || actor.role.is_some_and(|r| r.may_grant(role)) {
            Ok(())
        } else {
            Err(ApiError::new(Code::Forbidden, format!("your role may not grant `{}`", role.as_str())))
        }
    }

    /// Adds a member: an existing user by email, or a new user when a password is given.
    pub async fn add_member(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        email: &str,
        role: Role,
        password: Option<String>,
        info: &RequestInfo,
    ) -> Result<MemberView, ApiError> {
        Self::check_grant(actor, role)?;
        let email = Email::parse(email).map_err(|e| ApiError::new(Code::InvalidRequest, format!("email: {e}")))?;
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let existing: Option<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = $1")
            .bind(email.as_str())
            .fetch_optional(tx.conn())
            .await?;
        let created = existing.is_none();
        let user = match (existing, password) {
            (Some(id), _) => id,
            (None, Some(password)) => self.identity.create_user(tx.conn(), &email, password, false).await?,
            (None, None) => {
                return Err(ApiError::new(
                    Code::InvalidRequest,
                    "no user has this email; give a `password` to create one",
                ));
            }
        };
        let result = sqlx::query_as::<_, MemberView>(
            "WITH m AS (INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, $3) RETURNING *) \
             SELECT m.user_id, u.email, m.role, m.created_at FROM m JOIN users u ON u.id = m.user_id",
        )
        .bind(tenant.id.0)
        .bind(user)
        .bind(role.as_str())
        .fetch_one(tx.conn())
        .await;
        let member = match result {
            Ok(m) => m,
            Err(e) if crate::db::is_unique_violation(&e) => {
                return Err(ApiError::new(Code::AlreadyExists, "this user is already a member"));
            }
            Err(e) => return Err(e.into()),
        };
        let event = AuditEvent::new(Some(tenant.id), AuditActor::of(actor), "member.added")
            .resource("user", user)
            .details(serde_json::json!({ "email": email.as_str(), "role": role, "user_created": created }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        Ok(member)
    }

    /// The member's role, with the membership row locked for the rest of the transaction.
    async fn locked_role(tx: &mut TenantTx, user: Uuid) -> Result<String, ApiError> {
        let tenant = tx.tenant();
        sqlx::query_scalar("SELECT role FROM memberships WHERE user_id = $1 AND tenant_id = $2 FOR UPDATE")
            .bind(user)
            .bind(tenant.0)
            .fetch_optional(tx.conn())
            .await?
            .ok_or_else(|| ApiError::not_found("member not found"))
    }

    async fn owners_left_without(&self, tx: &mut TenantTx, user: Uuid) -> Result<i64, ApiError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM memberships WHERE tenant_id = $2 AND role = 'owner' AND user_id <> $1")
            .bind(user)
            .bind(tx.tenant().0)
            .fetch_one(tx.conn())
            .await?)
    }

    pub async fn change_role(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        user: Uuid,
        role: Role,
        info: &RequestInfo,
    ) -> Result<MemberView, ApiError> {
        Self::check_grant(actor, role)?;
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let current = Self::locked_role(&mut tx, user).await?;
        if current == "owner" {
            Self::check_grant(actor, Role::Owner)?;
            if role != Role::Owner && self.owners_left_without(&mut tx, user).await? == 0 {
                return Err(ApiError::new(Code::Conflict, "a tenant keeps at least one owner"));
            }
        }
        let member = sqlx::query_as::<_, MemberView>(
            "WITH m AS (UPDATE memberships SET role = $2 WHERE user_id = $1 AND tenant_id = $3 RETURNING *) \
             SELECT m.user_id, u.email, m.role, m.created_at FROM m JOIN users u ON u.id = m.user_id",
        )
        .bind(user)
        .bind(role.as_str())
        .bind(tenant.id.0)
        .fetch_one(tx.conn())
        .await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::of(actor), "member.role_changed")
            .resource("user", user)
            .details(serde_json::json!({ "from": current, "to": role }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        Ok(member)
    }

    pub async fn remove_member(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        user: Uuid,
        info: &RequestInfo,
    ) -> Result<(), ApiError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let current = Self::locked_role(&mut tx, user).await?;
        let role = Role::parse(&current).unwrap_or(Role::Inference);
        Self::check_grant(actor, role)?;
        if role == Role::Owner && self.owners_left_without(&mut tx, user).await? == 0 {
            return Err(ApiError::new(Code::Conflict, "a tenant keeps at least one owner"));
        }
        sqlx::query("DELETE FROM memberships WHERE user_id = $1 AND tenant_id = $2")
            .bind(user)
            .bind(tenant.id.0)
            .execute(tx.conn())
            .await?;
        // Their refresh tokens for this tenant stop working too.
        sqlx::query("UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND tenant_id = $2 AND revoked_at IS NULL")
            .bind(user)
            .bind(tenant.id.0)
            .execute(tx.conn())
            .await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::of(actor), "member.removed")
            .resource("user", user)
            .details(serde_json::json!({ "role": current }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn create_api_key(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        name: &str,
        role: Role,
        expires_in_days: Option<u32>,
        info: &RequestInfo,
    ) -> Result<CreatedApiKey, ApiError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 100 {
            return Err(ApiError::new(Code::InvalidRequest, "name must have 1-100 characters"));
        }
        if role == Role::Owner {
            return Err(ApiError::new(Code::InvalidRequest, "API keys cannot have the owner role"));
        }
        Self::check_grant(actor, role)?;
        let expires_at = match expires_in_days {
            Some(0) | Some(3651..) => {
                return Err(ApiError::new(Code::InvalidRequest, "expires_in_days must be between 1 and 3650"));
            }
            Some(days) => Some(OffsetDateTime::now_utc() + time::Duration::days(days as i64)),
            None => None,
        };
        let (prefix, secret) = new_api_key();
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let key: ApiKeyView = sqlx::query_as(
            "INSERT INTO api_keys (id, tenant_id, name, role, prefix, secret_digest, created_by, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING id, name, role, prefix, created_at, expires_at, last_used_at, revoked_at",
        )
        .bind(Uuid::now_v7())
        .bind(tenant.id.0)
        .bind(name)
        .bind(role.as_str())
        .bind(&prefix)
        .bind(&self.hasher.digest(&secret)[..])
        .bind(actor.user_id())
        .bind(expires_at)
        .fetch_one(tx.conn())
        .await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::of(actor), "api_key.created")
            .resource("api_key", key.id)
            .details(serde_json::json!({ "name": key.name, "role": key.role, "prefix": key.prefix }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        Ok(CreatedApiKey { key, secret })
    }

    pub async fn list_api_keys(&self, tenant: &TenantInfo) -> Result<Vec<ApiKeyView>, ApiError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let keys = sqlx::query_as(
            "SELECT id, name, role, prefix, created_at, expires_at, last_used_at, revoked_at FROM api_keys \
             WHERE tenant_id = $1 ORDER BY created_at",
        )
        .bind(tenant.id.0)
        .fetch_all(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(keys)
    }

    pub async fn revoke_api_key(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        key: Uuid,
        info: &RequestInfo,
    ) -> Result<(), ApiError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let prefix: String = sqlx::query_scalar(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 AND tenant_id = $2 RETURNING prefix",
        )
        .bind(key)
        .bind(tenant.id.0)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| ApiError::not_found("API key not found"))?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::of(actor), "api_key.revoked")
            .resource("api_key", key)
            .details(serde_json::json!({ "prefix": prefix }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        self.authenticator.api_key_revoked(&prefix);
        Ok(())
    }
}
