-- Tenant keys for envelope encryption: a random AES-256 key per tenant, stored only wrapped by
-- a master key (named by master_key_id). Data keys of artifacts are wrapped by a tenant key.
CREATE TABLE tenant_keys (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    master_key_id  text NOT NULL,
    wrapped_key    bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    rewrapped_at   timestamptz,
    retired_at     timestamptz
);
-- At most one active key per tenant.
CREATE UNIQUE INDEX tenant_keys_active ON tenant_keys (tenant_id) WHERE retired_at IS NULL;
CREATE INDEX tenant_keys_master ON tenant_keys (master_key_id);

ALTER TABLE tenant_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_keys_tenant ON tenant_keys USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
-- Master key rotation re-wraps every tenant's keys: an operator command, as the schema owner.
CREATE POLICY tenant_keys_owner ON tenant_keys TO CURRENT_USER USING (true);

GRANT SELECT, INSERT ON tenant_keys TO tessera_app;
