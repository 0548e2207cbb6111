//! A tenant's API keys: created by members for machines, never exceeding their creator's role.
//! Keys belong to the tenant and outlive their creator's membership, except admin keys, whose
//! power over members and keys ends when their creator's does (`revoke_admin_keys_of`).

use time::OffsetDateTime;
use uuid::Uuid;

use super::*;

impl TenantService {
    pub async fn create_api_key(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        name: &str,
        role: Role,
        expires_in_days: Option<u32>,
        info: &RequestInfo,
    ) -> Result<CreatedApiKey, IdentityError> {
        // As the schema counts: 1-100 characters, not all blank.
        if name.trim().is_empty() || name.chars().count() > 100 {
            return Err(IdentityError::InvalidRequest("name must have 1-100 characters"));
        }
        let name = name.trim();
        Self::check_grant(actor, role)?;
        if role == Role::Owner {
            return Err(IdentityError::InvalidRequest("API keys cannot have the owner role"));
        }
        let expires_at = match expires_in_days {
            Some(0) | Some(3651..) => {
                return Err(IdentityError::InvalidRequest("expires_in_days must be between 1 and 3650"));
            }
            Some(days) => Some(OffsetDateTime::now_utc() + time::Duration::days(days as i64)),
            None => None,
        };
        let (prefix, secret) = new_api_key();
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        Self::lock_grants(&mut tx).await?;
        // The credential was checked when the request came, possibly from a cache; a member
        // removed or a key revoked since (this or another process) makes no more keys.
        let (user, by_key) = (actor.user_id(), actor.key_id());
        if !actor.platform_admin && !Self::still_may_grant(&mut tx, user, by_key, role).await? {
            return Err(IdentityError::TokenRevoked("this credential no longer holds the role it would grant"));
        }
        let key: ApiKeyView = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH k AS (INSERT INTO api_keys (id, tenant_id, name, role, prefix, secret_digest, created_by, created_by_key, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *) \
             SELECT {API_KEY_COLUMNS} FROM k LEFT JOIN users u ON u.id = k.created_by"
        )))
        .bind(Uuid::now_v7())
        .bind(tenant.id.0)
        .bind(name)
        .bind(role)
        .bind(&prefix)
        .bind(&self.hasher.digest(&secret)[..])
        .bind(user)
        .bind(by_key)
        .bind(expires_at)
        .fetch_one(tx.conn())
        .await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::from(actor), "api_key.created")
            .resource("api_key", key.id)
            .details(serde_json::json!({ "name": key.name, "role": key.role, "prefix": key.prefix }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        Ok(CreatedApiKey { key, secret })
    }

    pub async fn revoke_api_key(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        key: Uuid,
        info: &RequestInfo,
    ) -> Result<(), IdentityError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        Self::lock_grants(&mut tx).await?;
        let role: Role = sqlx::query_scalar("SELECT role FROM api_keys WHERE id = $1 AND tenant_id = $2 FOR UPDATE")
            .bind(key)
            .bind(tenant.id.0)
            .fetch_optional(tx.conn())
            .await?
            .ok_or(IdentityError::NotFound("API key not found"))?;
        Self::check_grant(actor, role)?;
        let prefix: String = sqlx::query_scalar(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 AND tenant_id = $2 RETURNING prefix",
        )
        .bind(key)
        .bind(tenant.id.0)
        .fetch_one(tx.conn())
        .await?;
        Self::revoke_invitations_of(&mut tx, "invited_by_key", key).await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::from(actor), "api_key.revoked")
            .resource("api_key", key)
            .details(serde_json::json!({ "prefix": prefix }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        let line = self.revoke_admin_keys_of(&mut tx, actor, Creator::Key(key), "api_key.revoked", info).await?;
        tx.commit().await?;
        self.authenticator.api_key_revoked(&prefix);
        for prefix in &line {
            self.authenticator.api_key_revoked(prefix);
        }
        Ok(())
    }

    /// Serialises, per tenant, what makes keys and what takes grants away (removing a member,
    /// changing a role, revoking a key), so that a key is never made from a grant being taken
    /// away at the same moment, out of sight of the revocation's sweep.
    pub(super) async fn lock_grants(tx: &mut TenantTx) -> Result<(), IdentityError> {
        sqlx::query("SELECT pg_advisory_xact_lock(7301, hashtext($1::text))").bind(tx.tenant().0).execute(tx.conn()).await?;
        Ok(())
    }

    /// Revokes the admin keys `creator` (a member, or a key being revoked) created, and the
    /// admin keys those created, down the line: a removed or demoted admin, or a revoked admin
    /// key, leaves no admin key behind. Other keys stay: they serve machines and cannot manage
    /// members or keys. Returns the revoked keys' prefixes, for the caller to forget once its
    /// transaction commits; their invitations are revoked and each revocation is audited as
    /// `because`.
    pub(super) async fn revoke_admin_keys_of(
        &self,
        tx: &mut TenantTx,
        actor: &Principal,
        creator: Creator,
        because: &'static str,
        info: &RequestInfo,
    ) -> Result<Vec<String>, IdentityError> {
        let (user, key) = match creator {
            Creator::Member(user) => (Some(user), None),
            Creator::Key(key) => (None, Some(key)),
        };
        let creator = user.or(key);
        let revoked: Vec<(Uuid, String)> = sqlx::query_as(
            "WITH RECURSIVE line AS ( \
                 SELECT id FROM api_keys WHERE tenant_id = $1 AND role = 'admin' AND (created_by = $2 OR created_by_key = $3) \
                 UNION \
                 SELECT k.id FROM api_keys k JOIN line ON k.created_by_key = line.id WHERE k.tenant_id = $1 AND k.role = 'admin') \
             UPDATE api_keys SET revoked_at = now() \
             WHERE tenant_id = $1 AND id IN (SELECT id FROM line) AND revoked_at IS NULL RETURNING id, prefix",
        )
        .bind(tx.tenant().0)
        .bind(user)
        .bind(key)
        .fetch_all(tx.conn())
        .await?;
        let mut events = Vec::with_capacity(revoked.len());
        for (key, prefix) in &revoked {
            Self::revoke_invitations_of(tx, "invited_by_key", *key).await?;
            events.push(
                AuditEvent::new(Some(tx.tenant()), AuditActor::from(actor), "api_key.revoked")
                    .resource("api_key", key)
                    .details(serde_json::json!({ "prefix": prefix, "because": because, "creator": creator })),
            );
        }
        if !events.is_empty() {
            self.auditor.record(tx.conn(), info, events).await?;
        }
        Ok(revoked.into_iter().map(|(_, prefix)| prefix).collect())
    }
}

/// Whose admin keys `revoke_admin_keys_of` revokes.
pub(super) enum Creator {
    Member(Uuid),
    Key(Uuid),
}

impl TenantService {
    /// API keys, oldest first (ids are time-ordered).
    pub async fn list_api_keys(&self, tenant: &TenantInfo, page: &PageRequest<Uuid>) -> Result<Page<ApiKeyView>, IdentityError> {
        let from = "api_keys k LEFT JOIN users u ON u.id = k.created_by \
                    WHERE k.tenant_id = $1 AND ($2::uuid IS NULL OR k.id > $2) ORDER BY k.id LIMIT $3";
        self.tenant_page(tenant, format!("SELECT {API_KEY_COLUMNS} FROM {from}"), page, |k: &ApiKeyView| k.id).await
    }
}
