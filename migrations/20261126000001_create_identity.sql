-- Tenants, users, memberships, API keys, refresh-token families and revoked access tokens.
--
-- Isolation: every tenant-owned table carries tenant_id and has row-level security ENABLEd and
-- FORCEd, keyed on the transaction-local setting app.tenant_id. The application connects as
-- tessera_app, which owns nothing and cannot bypass RLS; with no tenant set it sees no
-- tenant-owned row at all (fail closed).

-- Operators usually create tessera_app (with LOGIN) beforehand; create it only when missing,
-- so the migrating role needs CREATEROLE only in that case.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tessera_app') THEN
        CREATE ROLE tessera_app NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

GRANT USAGE ON SCHEMA public TO tessera_app;

-- The tenant the current transaction acts for, or NULL when none is set.
CREATE FUNCTION app_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid $$;

-- The user the current transaction acts for (lets a user list its own memberships).
CREATE FUNCTION app_user_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.user_id', true), '')::uuid $$;

CREATE TABLE tenants (
    id                  uuid PRIMARY KEY,
    slug                text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status              text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    max_models          integer NOT NULL DEFAULT 100 CHECK (max_models >= 0),
    max_storage_bytes   bigint NOT NULL DEFAULT 10737418240 CHECK (max_storage_bytes >= 0),
    rate_limit_per_second integer NOT NULL DEFAULT 1000 CHECK (rate_limit_per_second > 0),
    rate_limit_burst    integer NOT NULL DEFAULT 2000 CHECK (rate_limit_burst > 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id                  uuid PRIMARY KEY,
    email               text NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    display_name        text NOT NULL DEFAULT '',
    password_hash       text NOT NULL,
    is_platform_admin   boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_unique ON users (lower(email));

CREATE TABLE memberships (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text NOT NULL CHECK (role IN ('owner', 'admin', 'ml_engineer', 'auditor', 'inference')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    role          text NOT NULL CHECK (role IN ('admin', 'ml_engineer', 'auditor', 'inference')),
    prefix        text NOT NULL UNIQUE,
    secret_digest bytea NOT NULL,
    created_by    uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);

-- Refresh tokens are rotated on every use; a family is one login's chain of rotations.
CREATE TABLE refresh_tokens (
    id            uuid PRIMARY KEY,
    family_id     uuid NOT NULL,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tenant_id     uuid REFERENCES tenants (id) ON DELETE CASCADE,
    token_digest  bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- Access tokens revoked before they expire (logout); rows are useless after expires_at.
CREATE TABLE revoked_tokens (
    jti         uuid PRIMARY KEY,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revoked_tokens_revoked_at ON revoked_tokens (revoked_at);

-- Row-level security on tenant-owned tables.
ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY memberships_tenant ON memberships
    USING (tenant_id = app_tenant_id() OR user_id = app_user_id())
    WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY api_keys_tenant ON api_keys
    USING (tenant_id = app_tenant_id())
    WITH CHECK (tenant_id = app_tenant_id());

-- Authenticating an API key happens before its tenant is known. This narrow definer function
-- is the only path that reads a key across tenants: by its public prefix, one row at most.
CREATE POLICY api_keys_definer ON api_keys TO CURRENT_USER USING (true);
CREATE FUNCTION api_key_for_prefix(p_prefix text)
    RETURNS TABLE (id uuid, tenant_id uuid, role text, secret_digest bytea, expires_at timestamptz, revoked_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$ SELECT id, tenant_id, role, secret_digest, expires_at, revoked_at FROM api_keys WHERE prefix = p_prefix $$;
REVOKE ALL ON FUNCTION api_key_for_prefix(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api_key_for_prefix(text) TO tessera_app;

GRANT SELECT, INSERT, UPDATE ON tenants TO tessera_app;
GRANT SELECT, INSERT, UPDATE ON users TO tessera_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON memberships TO tessera_app;
GRANT SELECT, INSERT, UPDATE ON api_keys TO tessera_app;
GRANT SELECT, INSERT, UPDATE ON refresh_tokens TO tessera_app;
GRANT SELECT, INSERT, DELETE ON revoked_tokens TO tessera_app;
