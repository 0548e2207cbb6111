-- The model registry: models, their immutable numbered versions and movable aliases.
--
-- A version row exists only once its artifact is fully stored, encrypted, and validated: an
-- upload that fails leaves no row. Deletion is soft (deleted_at) so the audit trail keeps
-- pointing at something, while the ciphertext itself is removed from the object store (so
-- deleting frees the quota); a deleted model's name can be reused.

CREATE TABLE models (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
    framework     text NOT NULL CHECK (framework IN ('onnx', 'burn')),
    description   text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    tags          text[] NOT NULL DEFAULT '{}',
    -- Inference results may be cached: the same inputs always give the same outputs.
    deterministic boolean NOT NULL DEFAULT false,
    -- How the model is served (instances, threads, batching, cache TTL); see inference::config.
    serving       jsonb NOT NULL DEFAULT '{}',
    next_version  integer NOT NULL DEFAULT 1,
    created_by    uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    -- Lets versions and aliases name their tenant in the foreign key too (checks of foreign
    -- keys bypass row-level security, so the key itself keeps rows in their model's tenant).
    UNIQUE (id, tenant_id)
);
CREATE UNIQUE INDEX models_live_name ON models (tenant_id, name) WHERE deleted_at IS NULL;

CREATE TABLE model_versions (
    -- Also the artifact id: bound into the data key wrapping and every chunk's nonce.
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    model_id          uuid NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    version           integer NOT NULL CHECK (version > 0),
    size_bytes        bigint NOT NULL CHECK (size_bytes >= 0),
    stored_bytes      bigint NOT NULL CHECK (stored_bytes >= 0),
    sha256            bytea NOT NULL CHECK (length(sha256) = 32),
    object_key        text NOT NULL,
    tenant_key_id     uuid NOT NULL REFERENCES tenant_keys (id),
    wrapped_data_key  bytea NOT NULL,
    -- ONNX: inputs/outputs with names, datatypes, shapes. Burn: architecture and config.
    signature         jsonb,
    burn              jsonb,
    metadata          jsonb NOT NULL DEFAULT '{}',
    created_by        uuid,
    created_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz,
    UNIQUE (model_id, version),
    FOREIGN KEY (model_id, tenant_id) REFERENCES models (id, tenant_id)
);
CREATE INDEX model_versions_tenant_key ON model_versions (tenant_key_id);

CREATE TABLE model_aliases (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    model_id    uuid NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    alias       text NOT NULL CHECK (alias ~ '^[a-z][a-z0-9_-]{0,62}$'),
    version     integer NOT NULL,
    updated_by  uuid,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, alias),
    FOREIGN KEY (model_id, version) REFERENCES model_versions (model_id, version),
    FOREIGN KEY (model_id, tenant_id) REFERENCES models (id, tenant_id)
);

-- A version behind an alias cannot be soft-deleted, whoever tries.
CREATE FUNCTION model_version_guard_alias() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.deleted_at IS NOT NULL AND OLD.deleted_at IS NULL
       AND EXISTS (SELECT 1 FROM model_aliases a WHERE a.model_id = NEW.model_id AND a.version = NEW.version) THEN
        RAISE EXCEPTION 'version % is behind an alias', NEW.version USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER model_versions_guard_alias BEFORE UPDATE ON model_versions
    FOR EACH ROW EXECUTE FUNCTION model_version_guard_alias();

ALTER TABLE models ENABLE ROW LEVEL SECURITY;
ALTER TABLE models FORCE ROW LEVEL SECURITY;
CREATE POLICY models_tenant ON models USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE model_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE model_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY model_versions_tenant ON model_versions USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE model_aliases ENABLE ROW LEVEL SECURITY;
ALTER TABLE model_aliases FORCE ROW LEVEL SECURITY;
CREATE POLICY model_aliases_tenant ON model_aliases USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

-- Per-tenant key rotation retires the active key and re-wraps data keys under a new one.
GRANT UPDATE (retired_at) ON tenant_keys TO tessera_app;
GRANT SELECT, INSERT ON models TO tessera_app;
GRANT UPDATE (description, tags, deterministic, serving, next_version, deleted_at) ON models TO tessera_app;
-- Versions are immutable: only deletion and re-wrapping of the data key change a row.
GRANT SELECT, INSERT ON model_versions TO tessera_app;
GRANT UPDATE (deleted_at, tenant_key_id, wrapped_data_key) ON model_versions TO tessera_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON model_aliases TO tessera_app;
