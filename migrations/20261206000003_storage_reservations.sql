-- Storage held for uploads in flight: reserved (under the tenant row's lock) before the first
-- byte is stored, released when the upload's row is written or the upload fails. Concurrent
-- uploads therefore share one quota instead of each streaming up to all of it. A reservation
-- left behind by a crashed process stops counting when it expires.
CREATE TABLE storage_reservations (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    bytes       bigint NOT NULL CHECK (bytes >= 0),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX storage_reservations_tenant ON storage_reservations (tenant_id, expires_at);

ALTER TABLE storage_reservations ENABLE ROW LEVEL SECURITY;
ALTER TABLE storage_reservations FORCE ROW LEVEL SECURITY;
CREATE POLICY storage_reservations_tenant ON storage_reservations
    USING (tenant_id = app_tenant_id())
    WITH CHECK (tenant_id = app_tenant_id());
GRANT SELECT, INSERT, DELETE ON storage_reservations TO tessera_app;
