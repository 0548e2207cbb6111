-- A suspended tenant's jobs are not handed to workers: they wait, queued (or running with a
-- lapsed lease), for the tenant's resumption, when the dispatcher finds them again.
CREATE OR REPLACE FUNCTION jobs_to_dispatch(p_limit integer, p_queued_after interval, p_expired_after interval)
    RETURNS TABLE (id uuid, tenant_id uuid)
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public
    AS $$
    UPDATE jobs j SET dispatched_at = now()
    FROM (
        SELECT jobs.id FROM jobs JOIN tenants t ON t.id = jobs.tenant_id AND t.status = 'active'
        WHERE (jobs.status = 'queued' AND next_attempt_at <= now()
               AND (dispatched_at IS NULL OR dispatched_at < now() - p_queued_after))
           OR (jobs.status = 'running' AND lease_until < now() - p_expired_after
               AND (dispatched_at IS NULL OR dispatched_at < now() - p_expired_after))
        ORDER BY next_attempt_at
        LIMIT p_limit
        FOR UPDATE OF jobs SKIP LOCKED
    ) due
    WHERE j.id = due.id
    RETURNING j.id, j.tenant_id
    $$;
