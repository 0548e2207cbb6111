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
use crate::identity::secrets::{CredentialHasher, INVITATION_TOKEN_PREFIX, new_api_key, new_single_use_token};
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
    /// Who created the key. Keys belong to the tenant: they keep working when their creator
    /// leaves it (revoke them then if they should not).
    pub created_by: Option<Uuid>,
    pub created_by_email: Option<String>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct InvitationView {
    pub id: Uuid,
    pub email: String,
    pub role: String,
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
        if actor.may_grant(role) {
            Ok(())
        } else {
            Err(ApiError::new(
                Code::Forbidden,
                format!("`{}` confers permissions you do not hold; only a holder of all of them may grant it", role.as_str()),
            ))
        }
    }

    /// `tessera user add`: an operator at the command line seeds a member (a tenant's first
    /// owner), creating the user when new. Not reachable over HTTP, where adding someone is an
    /// invitation.
    pub async fn seed_member(
        &self,
        operator: &Principal,
        tenant: &TenantInfo,
        email: &str,
        role: Role,
        password: Option<String>,
        info: &RequestInfo,
    ) -> Result<MemberView, ApiError> {
        if operator.actor != crate::identity::Actor::System {
            return Err(ApiError::new(Code::Forbidden, "only an operator at the command line seeds members"));
        }
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
                return Err(ApiError::new(Code::InvalidRequest, "no user has this email; give a password to create one"));
            }
        };
        let member = Self::insert_member(&mut tx, user, role).await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::of(operator), "member.added")
            .resource("user", user)
            .details(serde_json::json!({ "email": email.as_str(), "role": role, "user_created": created }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        Ok(member)
    }

    async fn insert_member(tx: &mut TenantTx, user: Uuid, role: Role) -> Result<MemberView, ApiError> {
        let result = sqlx::query_as::<_, MemberView>(
            "WITH m AS (INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, $3) RETURNING *) \
             SELECT m.user_id, u.email, m.role, m.created_at FROM m JOIN users u ON u.id = m.user_id",
        )
        .bind(tx.tenant().0)
        .bind(user)
        .bind(role.as_str())
        .fetch_one(tx.conn())
        .await;
        match result {
            Ok(member) => Ok(member),
            Err(e) if crate::db::is_unique_violation(&e) => Err(ApiError::new(Code::AlreadyExists, "this user is already a member")),
            Err(e) => Err(e.into()),
        }
    }

    /// Invites an email address to the tenant with a role. Nothing about any global user is
    /// looked at, set or revealed: the answer is the same whether the address is known or not.
    /// The token is in this answer only; the invitee accepts it at `/v1/invitations/accept`.
    pub async fn invite(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        email: &str,
        role: Role,
        info: &RequestInfo,
    ) -> Result<CreatedInvitation, ApiError> {
        Self::check_grant(actor, role)?;
        let email = Email::parse(email).map_err(|e| ApiError::new(Code::InvalidRequest, format!("email: {e}")))?;
        let token = new_single_use_token(INVITATION_TOKEN_PREFIX);
        let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(self.invitation_ttl_seconds as i64);
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        // The tenant's own members are the tenant's to know; anyone else's account is not.
        let member: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.tenant_id = $1 AND lower(u.email) = $2)",
        )
        .bind(tenant.id.0)
        .bind(email.as_str())
        .fetch_one(tx.conn())
        .await?;
        if member {
            return Err(ApiError::new(Code::AlreadyExists, "this email already belongs to a member of the tenant"));
        }
        let key = match actor.actor {
            crate::identity::Actor::ApiKey { id } => Some(id),
            _ => None,
        };
        let invitation: InvitationView = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH i AS (INSERT INTO invitations (id, tenant_id, email, role, token_digest, invited_by, invited_by_key, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *) \
             SELECT {INVITATION_COLUMNS} FROM i LEFT JOIN users u ON u.id = i.invited_by"
        )))
        .bind(Uuid::now_v7())
        .bind(tenant.id.0)
        .bind(email.as_str())
        .bind(role.as_str())
        .bind(&self.hasher.digest(&token)[..])
        .bind(actor.user_id())
        .bind(key)
        .bind(expires_at)
        .fetch_one(tx.conn())
        .await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::of(actor), "member.invited")
            .resource("invitation", invitation.id)
            .details(serde_json::json!({ "email": email.as_str(), "role": role }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        Ok(CreatedInvitation { invitation, token })
    }

    /// Whether the user or API key that issued an invitation still holds every permission of
    /// `role` in the transaction's tenant (or is a platform administrator).
    async fn inviter_may_grant(tx: &mut TenantTx, user: Option<Uuid>, key: Option<Uuid>, role: Role) -> Result<bool, ApiError> {
        let held: Option<String> = match (user, key) {
            (Some(user), _) => {
                let (admin, member): (bool, Option<String>) = sqlx::query_as(
                    "SELECT u.is_platform_admin, (SELECT m.role FROM memberships m WHERE m.user_id = u.id AND m.tenant_id = $2) \
                     FROM users u WHERE u.id = $1",
                )
                .bind(user)
                .bind(tx.tenant().0)
                .fetch_optional(tx.conn())
                .await?
                .unwrap_or((false, None));
                if admin {
                    return Ok(true);
                }
                member
            }
            (None, Some(key)) => {
                sqlx::query_scalar(
                    "SELECT role FROM api_keys WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL \
                     AND (expires_at IS NULL OR expires_at > now())",
                )
                .bind(key)
                .bind(tx.tenant().0)
                .fetch_optional(tx.conn())
                .await?
            }
            (None, None) => None,
        };
        Ok(held.as_deref().and_then(Role::parse).is_some_and(|held| held.may_grant(role)))
    }

    /// Pending invitations a member or key issued stop with their rights.
    async fn revoke_invitations_of(tx: &mut TenantTx, column: &str, id: Uuid) -> Result<(), ApiError> {
        let sql = format!(
            "UPDATE invitations SET revoked_at = now() WHERE tenant_id = $1 AND {column} = $2 \
             AND accepted_at IS NULL AND revoked_at IS NULL"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tx.tenant().0).bind(id).execute(tx.conn()).await?;
        Ok(())
    }

    pub async fn list_invitations(&self, tenant: &TenantInfo) -> Result<Vec<InvitationView>, ApiError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let invitations = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {INVITATION_COLUMNS} FROM invitations i LEFT JOIN users u ON u.id = i.invited_by \
             WHERE i.tenant_id = $1 ORDER BY i.created_at"
        )))
        .bind(tenant.id.0)
        .fetch_all(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(invitations)
    }

    pub async fn revoke_invitation(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        invitation: Uuid,
        info: &RequestInfo,
    ) -> Result<(), ApiError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let (email, role): (String, String) = sqlx::query_as(
            "UPDATE invitations SET revoked_at = COALESCE(revoked_at, now()) \
             WHERE id = $1 AND tenant_id = $2 AND accepted_at IS NULL RETURNING email, role",
        )
        .bind(invitation)
        .bind(tenant.id.0)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| ApiError::not_found("no pending invitation with this id"))?;
        Self::check_grant(actor, Role::stored(&role))?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::of(actor), "member.invitation_revoked")
            .resource("invitation", invitation)
            .details(serde_json::json!({ "email": email, "role": role }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Accepts an invitation. A new user chooses their password here; an existing user must
    /// be the caller (logged in), so nobody joins, or sets anything, for an account that is not
    /// theirs.
    pub async fn accept_invitation(
        &self,
        token: &str,
        password: Option<String>,
        caller: Option<&Principal>,
        info: &RequestInfo,
    ) -> Result<AcceptedInvitation, ApiError> {
        let invalid = || ApiError::new(Code::InvalidInvitation, "this invitation is not valid: unknown, expired, revoked or already used");
        if !token.starts_with(INVITATION_TOKEN_PREFIX) {
            return Err(invalid());
        }
        let digest = self.hasher.digest(token);
        let found: Option<(Uuid, Uuid, String, String, Option<Uuid>, Option<Uuid>)> =
            sqlx::query_as("SELECT * FROM invitation_for_token($1)").bind(&digest[..]).fetch_optional(&self.pool).await?;
        let (invitation, tenant, email, role, invited_by, invited_by_key) = found.ok_or_else(invalid)?;
        let role = Role::parse(&role).ok_or_else(invalid)?;
        let tenant = self.directory.by_id(TenantId(tenant)).await?.filter(|t| t.is_active()).ok_or_else(invalid)?;
        let email = Email::parse(&email).map_err(|_| invalid())?;

        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        // Claimed first, under its row lock: an invitation is used once, however many race.
        let claimed = sqlx::query(
            "UPDATE invitations SET accepted_at = now() WHERE id = $1 AND tenant_id = $2 \
             AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > now()",
        )
        .bind(invitation)
        .bind(tenant.id.0)
        .execute(tx.conn())
        .await?;
        if claimed.rows_affected() != 1 {
            return Err(invalid());
        }
        // Honoured only while whoever invited may still grant the role: an admin removed or
        // demoted since cannot come back through an invitation they issued before.
        if !Self::inviter_may_grant(&mut tx, invited_by, invited_by_key, role).await? {
            return Err(invalid());
        }
        let existing: Option<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = $1")
            .bind(email.as_str())
            .fetch_optional(tx.conn())
            .await?;
        let (user, created) = match existing {
            Some(user) => {
                if caller.and_then(Principal::user_id) != Some(user) {
                    return Err(ApiError::new(
                        Code::Unauthenticated,
                        "this invitation is for an existing account: accept it while logged in as that account",
                    ));
                }
                if password.is_some() {
                    return Err(ApiError::new(Code::InvalidRequest, "an existing account keeps its password; leave `password` out"));
                }
                (user, false)
            }
            None => {
                let password = password
                    .ok_or_else(|| ApiError::new(Code::InvalidRequest, "choose a `password` for the new account"))?;
                (self.identity.create_user(tx.conn(), &email, password, false).await?, true)
            }
        };
        sqlx::query("UPDATE invitations SET accepted_by = $2 WHERE id = $1").bind(invitation).bind(user).execute(tx.conn()).await?;
        let member = Self::insert_member(&mut tx, user, role).await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::user(user), "member.joined")
            .resource("invitation", invitation)
            .details(serde_json::json!({ "email": email.as_str(), "role": role, "user_created": created }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        self.authenticator.membership_changed(user);
        Ok(AcceptedInvitation { tenant: tenant.slug.clone(), member })
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
        // Changing a member's role also takes their current one away: the actor must hold it.
        Self::check_grant(actor, Role::stored(&current))?;
        if current == "owner" {
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
        Self::revoke_invitations_of(&mut tx, "invited_by", user).await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::of(actor), "member.role_changed")
            .resource("user", user)
            .details(serde_json::json!({ "from": current, "to": role }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        self.authenticator.membership_changed(user);
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
        let role = Role::stored(&current);
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
        Self::revoke_invitations_of(&mut tx, "invited_by", user).await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::of(actor), "member.removed")
            .resource("user", user)
            .details(serde_json::json!({ "role": current }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        self.authenticator.membership_changed(user);
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
        Self::check_grant(actor, role)?;
        if role == Role::Owner {
            return Err(ApiError::new(Code::InvalidRequest, "API keys cannot have the owner role"));
        }
        let expires_at = match expires_in_days {
            Some(0) | Some(3651..) => {
                return Err(ApiError::new(Code::InvalidRequest, "expires_in_days must be between 1 and 3650"));
            }
            Some(days) => Some(OffsetDateTime::now_utc() + time::Duration::days(days as i64)),
            None => None,
        };
        let (prefix, secret) = new_api_key();
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let key: ApiKeyView = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH k AS (INSERT INTO api_keys (id, tenant_id, name, role, prefix, secret_digest, created_by, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *) \
             SELECT {API_KEY_COLUMNS} FROM k LEFT JOIN users u ON u.id = k.created_by"
        )))
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
        let keys = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys k LEFT JOIN users u ON u.id = k.created_by \
             WHERE k.tenant_id = $1 ORDER BY k.created_at"
        )))
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
        let role: String = sqlx::query_scalar("SELECT role FROM api_keys WHERE id = $1 AND tenant_id = $2 FOR UPDATE")
            .bind(key)
            .bind(tenant.id.0)
            .fetch_optional(tx.conn())
            .await?
            .ok_or_else(|| ApiError::not_found("API key not found"))?;
        Self::check_grant(actor, Role::stored(&role))?;
        let prefix: String = sqlx::query_scalar(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 AND tenant_id = $2 RETURNING prefix",
        )
        .bind(key)
        .bind(tenant.id.0)
        .fetch_one(tx.conn())
        .await?;
        Self::revoke_invitations_of(&mut tx, "invited_by_key", key).await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::of(actor), "api_key.revoked")
            .resource("api_key", key)
            .details(serde_json::json!({ "prefix": prefix }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        self.authenticator.api_key_revoked(&prefix);
        Ok(())
    }
}
