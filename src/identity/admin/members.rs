//! Members of a tenant and the invitations that make them.

use time::OffsetDateTime;
use uuid::Uuid;

use super::*;

impl TenantService {
    /// Members by email.
    pub async fn list_members(&self, tenant: &TenantInfo, page: &PageRequest<String>) -> Result<Page<MemberView>, IdentityError> {
        let sql = "SELECT m.user_id, u.email, m.role, m.created_at FROM memberships m JOIN users u ON u.id = m.user_id \
                   WHERE m.tenant_id = $1 AND ($2::text IS NULL OR u.email > $2) ORDER BY u.email LIMIT $3";
        self.tenant_page(tenant, sql.to_owned(), page, |m: &MemberView| m.email.clone()).await
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
    ) -> Result<MemberView, IdentityError> {
        if operator.actor != crate::request::Actor::System {
            return Err(IdentityError::Forbidden("only an operator at the command line seeds members"));
        }
        let email = Email::parse(email)?;
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
                return Err(IdentityError::InvalidRequest("no user has this email; give a password to create one"));
            }
        };
        let member = Self::insert_member(&mut tx, user, role).await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::from(operator), "member.added")
            .resource("user", user)
            .details(serde_json::json!({ "email": email.as_str(), "role": role, "user_created": created }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        Ok(member)
    }

    pub(super) async fn insert_member(tx: &mut TenantTx, user: Uuid, role: Role) -> Result<MemberView, IdentityError> {
        let result = sqlx::query_as::<_, MemberView>(
            "WITH m AS (INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, $3) RETURNING *) \
             SELECT m.user_id, u.email, m.role, m.created_at FROM m JOIN users u ON u.id = m.user_id",
        )
        .bind(tx.tenant().0)
        .bind(user)
        .bind(role)
        .fetch_one(tx.conn())
        .await;
        match result {
            Ok(member) => Ok(member),
            Err(e) if crate::db::is_unique_violation(&e) => Err(IdentityError::AlreadyExists("this user is already a member".into())),
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
    ) -> Result<CreatedInvitation, IdentityError> {
        Self::check_grant(actor, role)?;
        let email = Email::parse(email)?;
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
            return Err(IdentityError::AlreadyExists("this email already belongs to a member of the tenant".into()));
        }
        let key = actor.key_id();
        let invitation: InvitationView = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH i AS (INSERT INTO invitations (id, tenant_id, email, role, token_digest, invited_by, invited_by_key, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *) \
             SELECT {INVITATION_COLUMNS} FROM i LEFT JOIN users u ON u.id = i.invited_by"
        )))
        .bind(Uuid::now_v7())
        .bind(tenant.id.0)
        .bind(email.as_str())
        .bind(role)
        .bind(&self.hasher.digest(&token)[..])
        .bind(actor.user_id())
        .bind(key)
        .bind(expires_at)
        .fetch_one(tx.conn())
        .await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::from(actor), "member.invited")
            .resource("invitation", invitation.id)
            .details(serde_json::json!({ "email": email.as_str(), "role": role }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        Ok(CreatedInvitation { invitation, token })
    }

    /// Whether the user or API key that issued an invitation, or is creating a key, still holds
    /// every permission of `role` in the transaction's tenant (or is a platform administrator),
    /// as the database says now rather than as its credential said when it was checked.
    pub(super) async fn still_may_grant(tx: &mut TenantTx, user: Option<Uuid>, key: Option<Uuid>, role: Role) -> Result<bool, IdentityError> {
        let held: Option<Role> = match (user, key) {
            (Some(user), _) => {
                let (admin, member): (bool, Option<Role>) = sqlx::query_as(
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
        Ok(held.is_some_and(|held| held.may_grant(role)))
    }

    /// Pending invitations a member or key issued stop with their rights.
    pub(super) async fn revoke_invitations_of(tx: &mut TenantTx, column: &str, id: Uuid) -> Result<(), IdentityError> {
        let sql = format!(
            "UPDATE invitations SET revoked_at = now() WHERE tenant_id = $1 AND {column} = $2 \
             AND accepted_at IS NULL AND revoked_at IS NULL"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tx.tenant().0).bind(id).execute(tx.conn()).await?;
        Ok(())
    }

    /// Invitations, oldest first (ids are time-ordered).
    pub async fn list_invitations(&self, tenant: &TenantInfo, page: &PageRequest<Uuid>) -> Result<Page<InvitationView>, IdentityError> {
        let from = "invitations i LEFT JOIN users u ON u.id = i.invited_by \
                    WHERE i.tenant_id = $1 AND ($2::uuid IS NULL OR i.id > $2) ORDER BY i.id LIMIT $3";
        self.tenant_page(tenant, format!("SELECT {INVITATION_COLUMNS} FROM {from}"), page, |i: &InvitationView| i.id).await
    }

    pub async fn revoke_invitation(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        invitation: Uuid,
        info: &RequestInfo,
    ) -> Result<(), IdentityError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        let (email, role): (String, Role) = sqlx::query_as(
            "UPDATE invitations SET revoked_at = COALESCE(revoked_at, now()) \
             WHERE id = $1 AND tenant_id = $2 AND accepted_at IS NULL RETURNING email, role",
        )
        .bind(invitation)
        .bind(tenant.id.0)
        .fetch_optional(tx.conn())
        .await?
        .ok_or(IdentityError::NotFound("no pending invitation with this id"))?;
        Self::check_grant(actor, role)?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::from(actor), "member.invitation_revoked")
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
    ) -> Result<AcceptedInvitation, IdentityError> {
        let invalid = || IdentityError::InvalidInvitation;
        if !token.starts_with(INVITATION_TOKEN_PREFIX) {
            return Err(invalid());
        }
        let digest = self.hasher.digest(token);
        let found: Option<(Uuid, Uuid, String, Role, Option<Uuid>, Option<Uuid>)> =
            sqlx::query_as("SELECT * FROM invitation_for_token($1)").bind(&digest[..]).fetch_optional(&self.pool).await?;
        let (invitation, tenant, email, role, invited_by, invited_by_key) = found.ok_or_else(invalid)?;
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
        if !Self::still_may_grant(&mut tx, invited_by, invited_by_key, role).await? {
            return Err(invalid());
        }
        let existing: Option<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = $1")
            .bind(email.as_str())
            .fetch_optional(tx.conn())
            .await?;
        let (user, created) = match existing {
            Some(user) => {
                if caller.and_then(Principal::user_id) != Some(user) {
                    return Err(IdentityError::Unauthenticated(
                        "this invitation is for an existing account: accept it while logged in as that account",
                    ));
                }
                if password.is_some() {
                    return Err(IdentityError::InvalidRequest("an existing account keeps its password; leave `password` out"));
                }
                (user, false)
            }
            None => {
                let password = password.ok_or(IdentityError::Unprocessable("choose a `password` for the new account"))?;
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
    pub(super) async fn locked_role(tx: &mut TenantTx, user: Uuid) -> Result<Role, IdentityError> {
        let tenant = tx.tenant();
        sqlx::query_scalar("SELECT role FROM memberships WHERE user_id = $1 AND tenant_id = $2 FOR UPDATE")
            .bind(user)
            .bind(tenant.0)
            .fetch_optional(tx.conn())
            .await?
            .ok_or(IdentityError::NotFound("member not found"))
    }

    pub(super) async fn owners_left_without(&self, tx: &mut TenantTx, user: Uuid) -> Result<i64, IdentityError> {
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
    ) -> Result<MemberView, IdentityError> {
        Self::check_grant(actor, role)?;
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        Self::lock_grants(&mut tx).await?;
        let current = Self::locked_role(&mut tx, user).await?;
        // Changing a member's role also takes their current one away: the actor must hold it.
        Self::check_grant(actor, current)?;
        if current == Role::Owner && role != Role::Owner && self.owners_left_without(&mut tx, user).await? == 0 {
            return Err(IdentityError::Conflict("a tenant keeps at least one owner"));
        }
        let member = sqlx::query_as::<_, MemberView>(
            "WITH m AS (UPDATE memberships SET role = $2 WHERE user_id = $1 AND tenant_id = $3 RETURNING *) \
             SELECT m.user_id, u.email, m.role, m.created_at FROM m JOIN users u ON u.id = m.user_id",
        )
        .bind(user)
        .bind(role)
        .bind(tenant.id.0)
        .fetch_one(tx.conn())
        .await?;
        Self::revoke_invitations_of(&mut tx, "invited_by", user).await?;
        let event = AuditEvent::new(Some(tenant.id), AuditActor::from(actor), "member.role_changed")
            .resource("user", user)
            .details(serde_json::json!({ "from": current, "to": role }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        let revoked = if role.may_grant(Role::Admin) {
            Vec::new()
        } else {
            self.revoke_admin_keys_of(&mut tx, actor, super::api_keys::Creator::Member(user), "member.role_changed", info).await?
        };
        tx.commit().await?;
        self.authenticator.membership_changed(user);
        for prefix in &revoked {
            self.authenticator.api_key_revoked(prefix);
        }
        Ok(member)
    }

    pub async fn remove_member(
        &self,
        actor: &Principal,
        tenant: &TenantInfo,
        user: Uuid,
        info: &RequestInfo,
    ) -> Result<(), IdentityError> {
        let mut tx = TenantTx::begin(&self.pool, tenant.id).await?;
        Self::lock_grants(&mut tx).await?;
        let current = Self::locked_role(&mut tx, user).await?;
        Self::check_grant(actor, current)?;
        if current == Role::Owner && self.owners_left_without(&mut tx, user).await? == 0 {
            return Err(IdentityError::Conflict("a tenant keeps at least one owner"));
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
        let event = AuditEvent::new(Some(tenant.id), AuditActor::from(actor), "member.removed")
            .resource("user", user)
            .details(serde_json::json!({ "role": current }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        let revoked = self.revoke_admin_keys_of(&mut tx, actor, super::api_keys::Creator::Member(user), "member.removed", info).await?;
        tx.commit().await?;
        self.authenticator.membership_changed(user);
        for prefix in &revoked {
            self.authenticator.api_key_revoked(prefix);
        }
        Ok(())
    }

}
