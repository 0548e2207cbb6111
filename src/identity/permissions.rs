//! Roles and permissions: the one table that says who may do what.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

// A stored role that is none of these fails to decode: a server error, never a grant.
crate::text_enum! {
    /// A role inside one tenant. Platform administration is a separate flag on the user.
    #[derive(Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Role {
        Owner => "owner",
        Admin => "admin",
        MlEngineer => "ml_engineer",
        Auditor => "auditor",
        Inference => "inference",
    }
}

impl Role {
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Owner => &[
                MembersRead, MembersManage, ApiKeysRead, ApiKeysManage, ModelsRead, ModelsWrite, ModelsDownload, InferenceRun,
                JobsRun, AuditRead, AuditExport, AuditConfigure, KeysRotate, UsageRead,
            ],
            Role::Admin => &[
                MembersRead, MembersManage, ApiKeysRead, ApiKeysManage, ModelsRead, ModelsWrite, ModelsDownload, InferenceRun,
                JobsRun, UsageRead,
            ],
            Role::MlEngineer => &[ModelsRead, ModelsWrite, ModelsDownload, InferenceRun, JobsRun],
            Role::Auditor => &[AuditRead, AuditExport, UsageRead],
            Role::Inference => &[ModelsRead, InferenceRun],
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }

    /// A role may be handed out only by someone who holds every permission it confers: derived
    /// from the table above, so a new permission can never open a path to escalation.
    pub fn may_grant(self, other: Role) -> bool {
        other.permissions().iter().all(|p| self.allows(*p))
    }
}

/// Everything a caller can be allowed to do. `#[repr(u8)]` so a permission can be a const
/// generic parameter of the guard (`Guarded<{ perm::MODELS_READ }>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Permission {
    /// Create, list, suspend and resume tenants (platform administrators only).
    TenantsManage,
    /// Any authenticated caller: `GET /v1/me`.
    SelfRead,
    MembersRead,
    MembersManage,
    ApiKeysRead,
    ApiKeysManage,
    ModelsRead,
    ModelsWrite,
    InferenceRun,
    JobsRun,
    AuditRead,
    AuditExport,
    /// Change the tenant's audit settings (masking, inference sampling).
    AuditConfigure,
    /// Fetch a model's decrypted artifact (reading metadata is `ModelsRead`).
    ModelsDownload,
    /// Rotate the tenant's encryption key.
    KeysRotate,
    /// Read the tenant's usage (calls, rows, errors, latency, bytes) and export it.
    UsageRead,
}

impl Permission {
    pub const ALL: [Permission; 16] = [
        Permission::TenantsManage,
        Permission::SelfRead,
        Permission::MembersRead,
        Permission::MembersManage,
        Permission::ApiKeysRead,
        Permission::ApiKeysManage,
        Permission::ModelsRead,
        Permission::ModelsWrite,
        Permission::InferenceRun,
        Permission::JobsRun,
        Permission::AuditRead,
        Permission::AuditExport,
        Permission::AuditConfigure,
        Permission::ModelsDownload,
        Permission::KeysRotate,
        Permission::UsageRead,
    ];

    pub const fn from_u8(value: u8) -> Permission {
        match value {
            0 => Permission::TenantsManage,
            1 => Permission::SelfRead,
            2 => Permission::MembersRead,
            3 => Permission::MembersManage,
            4 => Permission::ApiKeysRead,
            5 => Permission::ApiKeysManage,
            6 => Permission::ModelsRead,
            7 => Permission::ModelsWrite,
            8 => Permission::InferenceRun,
            9 => Permission::JobsRun,
            10 => Permission::AuditRead,
            11 => Permission::AuditExport,
            12 => Permission::AuditConfigure,
            13 => Permission::ModelsDownload,
            14 => Permission::KeysRotate,
            15 => Permission::UsageRead,
            _ => panic!("not a permission"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::TenantsManage => "tenants.manage",
            Permission::SelfRead => "self.read",
            Permission::MembersRead => "members.read",
            Permission::MembersManage => "members.manage",
            Permission::ApiKeysRead => "api_keys.read",
            Permission::ApiKeysManage => "api_keys.manage",
            Permission::ModelsRead => "models.read",
            Permission::ModelsWrite => "models.write",
            Permission::InferenceRun => "inference.run",
            Permission::JobsRun => "jobs.run",
            Permission::AuditRead => "audit.read",
            Permission::AuditExport => "audit.export",
            Permission::AuditConfigure => "audit.configure",
            Permission::ModelsDownload => "models.download",
            Permission::KeysRotate => "keys.rotate",
            Permission::UsageRead => "usage.read",
        }
    }
}

/// Const names for the guard's generic parameter.
pub mod perm {
    use super::Permission;
    pub const TENANTS_MANAGE: u8 = Permission::TenantsManage as u8;
    pub const SELF_READ: u8 = Permission::SelfRead as u8;
    pub const MEMBERS_READ: u8 = Permission::MembersRead as u8;
    pub const MEMBERS_MANAGE: u8 = Permission::MembersManage as u8;
    pub const API_KEYS_READ: u8 = Permission::ApiKeysRead as u8;
    pub const API_KEYS_MANAGE: u8 = Permission::ApiKeysManage as u8;
    pub const MODELS_READ: u8 = Permission::ModelsRead as u8;
    pub const MODELS_WRITE: u8 = Permission::ModelsWrite as u8;
    pub const INFERENCE_RUN: u8 = Permission::InferenceRun as u8;
    pub const JOBS_RUN: u8 = Permission::JobsRun as u8;
    pub const AUDIT_READ: u8 = Permission::AuditRead as u8;
    pub const AUDIT_EXPORT: u8 = Permission::AuditExport as u8;
    pub const AUDIT_CONFIGURE: u8 = Permission::AuditConfigure as u8;
    pub const MODELS_DOWNLOAD: u8 = Permission::ModelsDownload as u8;
    pub const KEYS_ROTATE: u8 = Permission::KeysRotate as u8;
    pub const USAGE_READ: u8 = Permission::UsageRead as u8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_round_trip_through_u8() {
        for p in Permission::ALL {
            assert_eq!(Permission::from_u8(p as u8), p);
        }
    }

    #[test]
    fn roles_round_trip_through_strings() {
        for &r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn roles_are_spelled_alike_in_json_and_in_the_database() {
        for &r in Role::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert_eq!(serde_json::from_value::<Role>(r.as_str().into()).unwrap(), r);
        }
    }

    #[test]
    fn a_role_is_granted_only_by_holders_of_all_its_permissions() {
        for &granter in Role::ALL {
            for &granted in Role::ALL {
                let expected = granted.permissions().iter().all(|p| granter.permissions().contains(p));
                assert_eq!(granter.may_grant(granted), expected, "{granter:?} granting {granted:?}");
            }
        }
        // The consequences, spelled out.
        assert!(Role::Owner.may_grant(Role::Auditor));
        assert!(!Role::Admin.may_grant(Role::Auditor));
        assert!(!Role::Admin.may_grant(Role::Owner));
        assert!(Role::Admin.may_grant(Role::MlEngineer));
        assert!(!Role::Auditor.may_grant(Role::Inference));
        assert!(Role::MlEngineer.may_grant(Role::Inference));
    }

    #[test]
    fn inference_role_can_only_call_models() {
        assert!(Role::Inference.allows(Permission::InferenceRun));
        assert!(!Role::Inference.allows(Permission::ModelsWrite));
        assert!(!Role::Inference.allows(Permission::AuditRead));
        assert!(!Role::Inference.allows(Permission::UsageRead));
    }

    #[test]
    fn usage_is_read_by_owners_admins_and_auditors_only() {
        let readers: Vec<Role> = Role::ALL.iter().copied().filter(|r| r.allows(Permission::UsageRead)).collect();
        assert_eq!(readers, [Role::Owner, Role::Admin, Role::Auditor]);
    }
}
