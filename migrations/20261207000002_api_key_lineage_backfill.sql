-- The keys that keys made before `created_by_key` existed, as their creation was audited, so
-- that revoking an admin line reaches them too (events purged by retention are gone: those
-- keys stay unlinked).
UPDATE api_keys k SET created_by_key = a.actor_id::uuid
  FROM audit_events a
 WHERE a.tenant_id = k.tenant_id AND a.action = 'api_key.created' AND a.outcome = 'success'
   AND a.actor_type = 'api_key' AND a.resource_type = 'api_key' AND a.resource_id = k.id::text;
