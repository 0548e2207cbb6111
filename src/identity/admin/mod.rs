//! Administration by principals: the tenants' lifecycle (platform administrators), members
//! and their invitations (`members`), API keys (`api_keys`). Every change is recorded in the
//! audit chain in its own transaction, and a grant never exceeds the granter's role.
//! Tenant-owned rows are only touched inside a `TenantTx`.

mod api_keys;
mod members;
pub mod routes;

use std::sync::Arc;

use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{AuditActor, AuditEvent, Auditor};
use crate::identity::IdentityError;
use crate::identity::authenticate::Authenticator;
use crate::identity::secrets::{CredentialHasher, INVITATION_TOKEN_PREFIX, new_api_key, new_single_use_token};
use crate::identity::service::IdentityService;
use crate::identity::{Email, Principal, Role};
use crate::page::{Page, PageRequest};
use crate::request::RequestInfo;
use crate::tenancy::db::TenantTx;
use crate::tenancy::directory::TenantDirectory;
use crate::tenancy::{TenantId, TenantInfo, TenantSlug, TenantStatus};

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct TenantView {
    pub id: Uuid,
    #[schema(example = "acme")]
    pub slug: String,
    pub name: String,
    pub status: TenantStatus,
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
    pub role: Role,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ApiKeyView {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
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
    /// Who created the key. Keys belong to the tenant: they keep working when their creator
    /// leaves it (revoke them then if they should not), except admin keys, which are revoked
    /// when their creator, or the creator of the admin key that made them, is removed or
    /// loses the admin role, and with the key that made them.
    pub created_by: Option<Uuid>,
    pub created_by_email: Option<String>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct InvitationView {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    pub invited_by: Option<Uuid>,
    pub invited_by_email: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub accepted_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedInvitation {
    #[serde(flatten)]
    pub invitation: InvitationView,
    /// Single use, shown this once only: hand it to the invitee, who accepts it at
    /// `POST /v1/invitations/accept`.
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AcceptedInvitation {
    /// The tenant joined.
    pub tenant: String,
    #[serde(flatten)]
    pub member: MemberView,
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
    /// Unset limits take their defaults.
    pub limits: Limits,
}

/// A tenant's quotas and rate limit; `None` leaves one as it is (or its default, for a new
/// tenant).
#[derive(Debug, Default, Serialize)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_models: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_storage_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_burst: Option<i32>,
}

impl Limits {
    /// Quotas are never negative, rate limits never zero.
    fn check(&self) -> Result<(), IdentityError> {
        for (field, value) in [
            ("max_models", self.max_models.map(i64::from)),
            ("max_storage_bytes", self.max_storage_bytes),
            ("rate_limit_per_second", self.rate_limit_per_second.map(i64::from)),
            ("rate_limit_burst", self.rate_limit_burst.map(i64::from)),
        ] {
            if value.is_some_and(|v| v < 0 || (field.starts_with("rate") && v == 0)) {
                return Err(IdentityError::OutOfRange(field));
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct TenantService {
    pool: PgPool,
    directory: TenantDirectory,
    identity: IdentityService,
    hasher: CredentialHasher,
    authenticator: Arc<Authenticator>,
    auditor: Auditor,
    invitation_ttl_seconds: u64,
}

const INVITATION_COLUMNS: &str = "i.id, i.email, i.role, i.invited_by, u.email AS invited_by_email, i.created_at, \
     i.expires_at, i.accepted_at, i.revoked_at";

const API_KEY_COLUMNS: &str = "k.id, k.name, k.role, k.prefix, k.created_at, k.expires_at, k.last_used_at, k.revoked_at, \
     k.created_by, u.email AS created_by_email";

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
        invitation_ttl_seconds: u64,
    ) -> Self {
        Self { pool, directory, identity, hasher, authenticator, auditor, invitation_ttl_seconds }
    }

    pub async fn create_tenant(&self, actor: &Principal, new: NewTenant, info: &RequestInfo) -> Result<TenantView, IdentityError> {
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(IdentityError::InvalidRequest("name must have 1-200 characters"));
        }
        new.limits.check()?;
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query_as::<_, TenantView>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO tenants (id, slug, name, max_models, max_storage_bytes, rate_limit_per_second, rate_limit_burst) \
             VALUES ($1, $2, $3, COALESCE($4, 100), COALESCE($5, 10737418240), COALESCE($6, 1000), COALESCE($7, 2000)) \
             RETURNING {TENANT_COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(new.slug.as_str())
        .bind(name)
        .bind(new.limits.max_models)
        .bind(new.limits.max_storage_bytes)
        .bind(new.limits.rate_limit_per_second)
        .bind(new.limits.rate_limit_burst)
        .fetch_one(&mut *tx)
        .await;
        match result {
            Ok(view) => {
                let event = AuditEvent::new(Some(TenantId(view.id)), AuditActor::from(actor), "tenant.created")
                    .resource("tenant", view.id)
                    .details(serde_json::json!({ "slug": view.slug, "name": view.name }));
                self.auditor.record(&mut tx, info, vec![event]).await?;
                tx.commit().await?;
                Ok(view)
            }
            Err(e) if crate::db::is_unique_violation(&e) => {
                Err(IdentityError::AlreadyExists(format!("tenant `{}` already exists", new.slug.as_str()).into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One page of a tenant's rows, read in the tenant's transaction; `sql` takes the tenant
    /// id as `$1`, the key to start after (or NULL) as `$2` and the row count as `$3`.
    pub(super) async fn tenant_page<T, K, D>(
        &self,
        tenant: &TenantInfo,
        sql: String,
        page: &PageRequest<K>,
        key: impl Fn(&T) -> D,
    ) -> Result<Page<T>, IdentityError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
        K: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Clone + Send,
        D: std::fmt::Display,
    {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant.id.0)
            .bind(page.after.clone())
            .bind(page.fetch())
            .fetch_all(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(page.finish(rows, key))
    }

    /// Every tenant, by slug.
    pub async fn list_tenants(&self, page: &PageRequest<String>) -> Result<Page<TenantView>, IdentityError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE ($1::text IS NULL OR slug > $1) ORDER BY slug LIMIT $2");
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(page.after.clone()).bind(page.fetch()).fetch_all(&self.pool).await?;
        Ok(page.finish(rows, |t: &TenantView| t.slug.clone()))
    }

    pub async fn get_tenant(&self, tenant: TenantId) -> Result<TenantView, IdentityError> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1")))
            .bind(tenant.0)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(IdentityError::NotFound("tenant not found"))
    }

    pub async fn set_status(
        &self,
        actor: &Principal,
        tenant: TenantId,
        status: TenantStatus,
        info: &RequestInfo,
    ) -> Result<TenantView, IdentityError> {
        let mut tx = self.pool.begin().await?;
        let view: TenantView = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE tenants SET status = $2, updated_at = now() WHERE id = $1 RETURNING {TENANT_COLUMNS}"
        )))
        .bind(tenant.0)
        .bind(status)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(IdentityError::NotFound("tenant not found"))?;
        let action = match status {
            TenantStatus::Active => "tenant.resumed",
            TenantStatus::Suspended => "tenant.suspended",
        };
        let event = AuditEvent::new(Some(tenant), AuditActor::from(actor), action).resource("tenant", tenant);
        self.auditor.record(&mut tx, info, vec![event]).await?;
        tx.commit().await?;
        self.directory.invalidate(tenant);
        Ok(view)
    }

    /// Changes a tenant's quotas or rate limit (the ones given); audited with the new values.
    pub async fn set_limits(&self, actor: &Principal, tenant: TenantId, limits: Limits, info: &RequestInfo) -> Result<TenantView, IdentityError> {
        limits.check()?;
        let mut tx = self.pool.begin().await?;
        let view: TenantView = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE tenants SET max_models = COALESCE($2, max_models), max_storage_bytes = COALESCE($3, max_storage_bytes), \
             rate_limit_per_second = COALESCE($4, rate_limit_per_second), rate_limit_burst = COALESCE($5, rate_limit_burst), \
             updated_at = now() WHERE id = $1 RETURNING {TENANT_COLUMNS}"
        )))
        .bind(tenant.0)
        .bind(limits.max_models)
        .bind(limits.max_storage_bytes)
        .bind(limits.rate_limit_per_second)
        .bind(limits.rate_limit_burst)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(IdentityError::NotFound("tenant not found"))?;
        let event = AuditEvent::new(Some(tenant), AuditActor::from(actor), "tenant.limits_changed")
            .resource("tenant", tenant)
            .details(serde_json::to_value(&limits).map_err(|e| crate::error::Fault::Internal(e.into()))?);
        self.auditor.record(&mut tx, info, vec![event]).await?;
        tx.commit().await?;
        // The rate limiter reads limits through the directory.
        self.directory.invalidate(tenant);
        Ok(view)
    }

    pub(super) fn check_grant(actor: &Principal, role: Role) -> Result<(), IdentityError> {
        if actor.may_grant(role) { Ok(()) } else { Err(IdentityError::GrantExceedsRole(role)) }
    }
}
