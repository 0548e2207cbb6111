// What each role may do, as src/identity/permissions.rs says. Only used to offer the roles
// the caller may grant (a role whose every permission the caller's role has); the server
// decides.
import type { Permission, Role } from "./api/client";
import { session } from "./session";

export const ROLES: Role[] = ["owner", "admin", "ml_engineer", "auditor", "inference"];

// Strings rather than the generated Permission type: a server that predates a permission
// still serves this table.
const PERMISSIONS: Record<Role, readonly (Permission | "usage_read")[]> = {
  owner: [
    "members_read", "members_manage", "api_keys_read", "api_keys_manage", "models_read", "models_write", "models_download",
    "inference_run", "jobs_run", "audit_read", "audit_export", "audit_configure", "keys_rotate", "usage_read",
  ],
  admin: [
    "members_read", "members_manage", "api_keys_read", "api_keys_manage", "models_read", "models_write", "models_download",
    "inference_run", "jobs_run", "usage_read",
  ],
  ml_engineer: ["models_read", "models_write", "models_download", "inference_run", "jobs_run"],
  auditor: ["audit_read", "audit_export", "usage_read"],
  inference: ["models_read", "inference_run"],
};

/** Roles the signed-in caller may hand out (a platform administrator may hand out any): those
 * whose every permission the caller's role has, both read from this one table, so that a
 * permission the server does not have yet cannot make the two disagree. */
export function grantableRoles(): Role[] {
  if (session.me?.platform_admin) return ROLES;
  const mine = session.me?.role ? PERMISSIONS[session.me.role] : [];
  return ROLES.filter((role) => PERMISSIONS[role].every((p) => mine.includes(p)));
}

/** API keys never carry `owner`. */
export function keyRoles(): Role[] {
  return grantableRoles().filter((r) => r !== "owner");
}
