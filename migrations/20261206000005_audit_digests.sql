-- Digests: every signed checkpoint is also written, first, as a signed digest object to the
-- object store (outside the reach of whoever controls the database), each naming the hash of
-- the tenant's previous digest object. This table only remembers that previous hash; the
-- objects themselves are what `tessera audit verify --database --digests` trusts.
CREATE TABLE audit_digests (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    seq         bigint NOT NULL,
    object_key  text NOT NULL,
    sha256      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_digests_tenant ON audit_digests (tenant_id, id);
GRANT SELECT, INSERT ON audit_digests TO tessera_app;
GRANT USAGE ON SEQUENCE audit_digests_id_seq TO tessera_app;
