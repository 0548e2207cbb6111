-- Invitations: adding someone to a tenant never sets or reveals anything about a global user.
-- The inviter gets a single-use token (stored as a keyed digest); the invitee accepts it by
-- choosing a password (new user) or while logged in (existing user).
CREATE TABLE invitations (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email         text NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    role          text NOT NULL CHECK (role IN ('owner', 'admin', 'ml_engineer', 'auditor', 'inference')),
    token_digest  bytea NOT NULL UNIQUE,
    invited_by    uuid REFERENCES users (id) ON DELETE SET NULL,
    -- Or the API key that invited; an invitation is honoured only while its inviter may
    -- still grant its role.
    invited_by_key uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    accepted_at   timestamptz,
    accepted_by   uuid REFERENCES users (id) ON DELETE SET NULL,
    revoked_at    timestamptz
);
CREATE INDEX invitations_tenant ON invitations (tenant_id, created_at);

ALTER TABLE invitations ENABLE ROW LEVEL SECURITY;
ALTER TABLE invitations FORCE ROW LEVEL SECURITY;
CREATE POLICY invitations_tenant ON invitations
    USING (tenant_id = app_tenant_id())
    WITH CHECK (tenant_id = app_tenant_id());
CREATE POLICY invitations_definer ON invitations FOR SELECT TO CURRENT_USER USING (true);
GRANT SELECT, INSERT, UPDATE ON invitations TO tessera_app;

-- The one cross-tenant read: which tenant an invitation token belongs to.
CREATE FUNCTION invitation_for_token(p_digest bytea)
    RETURNS TABLE (id uuid, tenant_id uuid, email text, role text, invited_by uuid, invited_by_key uuid)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$ SELECT id, tenant_id, email, role, invited_by, invited_by_key FROM invitations
          WHERE token_digest = p_digest AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > now() $$;
REVOKE ALL ON FUNCTION invitation_for_token(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION invitation_for_token(bytea) TO tessera_app;

-- Password resets a platform administrator issued: single use, short-lived.
CREATE TABLE password_resets (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_digest  bytea NOT NULL UNIQUE,
    created_by    uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz
);
GRANT SELECT, INSERT, UPDATE ON password_resets TO tessera_app;
