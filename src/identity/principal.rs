//! Who is calling: the result of authentication, carried in request extensions.

use std::sync::Arc;

use uuid::Uuid;

use super::permissions::{Permission, Role};
use crate::request::Actor;
use crate::tenancy::TenantInfo;

#[derive(Debug, Clone)]
pub struct Principal {
    pub actor: Actor,
    /// The tenant the credential acts for, if it is tenant-scoped.
    pub tenant: Option<Arc<TenantInfo>>,
    pub role: Option<Role>,
    pub platform_admin: bool,
    /// For access tokens: the token id and expiry (seconds since the epoch), so that it can
    /// be revoked.
    pub token: Option<(Uuid, u64)>,
}

impl Principal {
    /// Platform administrators may do everything; others what their role in their tenant allows.
    pub fn may(&self, permission: Permission) -> bool {
        if permission == Permission::SelfRead || self.platform_admin {
            return true;
        }
        permission != Permission::TenantsManage && self.role.is_some_and(|r| r.allows(permission))
    }

    /// Whether this caller holds every permission `role` confers: the condition for granting
    /// it (as a membership, a role change or an API key), so a grant never exceeds the granter.
    pub fn may_grant(&self, role: Role) -> bool {
        self.platform_admin || self.role.is_some_and(|r| r.may_grant(role))
    }

    pub fn user_id(&self) -> Option<Uuid> {
        match self.actor {
            Actor::User { id } => Some(id),
            Actor::ApiKey { .. } | Actor::System => None,
        }
    }

    pub fn key_id(&self) -> Option<Uuid> {
        match self.actor {
            Actor::ApiKey { id } => Some(id),
            Actor::User { .. } | Actor::System => None,
        }
    }

    /// The operator acting through the `tessera` command line.
    pub fn operator() -> Self {
        Self { actor: Actor::System, tenant: None, role: None, platform_admin: true, token: None }
    }

    pub fn permissions(&self) -> Vec<Permission> {
        Permission::ALL.into_iter().filter(|p| self.may(*p)).collect()
    }
}

/// Events name the principal's actor: audit records who acted without knowing principals.
impl From<&Principal> for crate::audit::AuditActor {
    fn from(principal: &Principal) -> Self {
        Self::from(principal.actor)
    }
}
