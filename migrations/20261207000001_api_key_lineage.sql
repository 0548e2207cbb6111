-- Which API key created a key, when a key did. An admin key draws its power over members and
-- keys from whoever made it: when that member is removed or loses the admin role, the admin
-- keys they made, and the admin keys those made in turn, are revoked with it.
ALTER TABLE api_keys ADD COLUMN created_by_key uuid REFERENCES api_keys (id) ON DELETE SET NULL;
CREATE INDEX api_keys_created_by ON api_keys (tenant_id, created_by);
CREATE INDEX api_keys_created_by_key ON api_keys (created_by_key) WHERE created_by_key IS NOT NULL;
