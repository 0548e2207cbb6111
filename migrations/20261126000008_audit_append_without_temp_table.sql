-- audit_append checks the chain and inserts straight from its JSON argument. The temporary
-- table it used cost three truncations per batch (each a new file on disk) plus a compressed
-- copy of every batch's details: fixed costs that dominate once batches are written every few
-- milliseconds. Same signature, same checks, same privileges.
CREATE OR REPLACE FUNCTION audit_append(p_tenant uuid, p_events json) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    head audit_heads%ROWTYPE;
    broken boolean;
    added bigint;
    new_hash bytea;
BEGIN
    SELECT * INTO head FROM audit_heads WHERE tenant_id = p_tenant FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit chain head of % is not locked', p_tenant;
    END IF;

    -- Every event must take the next sequence number and link to the hash before it.
    SELECT count(*),
           bool_or(b.seq IS DISTINCT FROM head.last_seq + b.ord
                   OR decode(b.prev_hash, 'hex') IS DISTINCT FROM coalesce(decode(b.expected, 'hex'), head.last_hash)),
           decode((array_agg(b.hash ORDER BY b.ord DESC))[1], 'hex')
      INTO added, broken, new_hash
      FROM (SELECT r.seq, r.ord, r.prev_hash, r.hash, lag(r.hash) OVER (ORDER BY r.ord) AS expected
              FROM ROWS FROM (json_to_recordset(p_events) AS (seq bigint, prev_hash text, hash text))
                   WITH ORDINALITY AS r(seq, prev_hash, hash, ord)) b;
    IF added = 0 THEN
        RETURN head.last_seq;
    END IF;
    IF broken THEN
        RAISE EXCEPTION 'audit events do not continue the chain of % after %', p_tenant, head.last_seq;
    END IF;

    INSERT INTO audit_events
        SELECT p_tenant, r.seq, r.id, r.occurred_at, r.actor_type, r.actor_id, r.action, r.resource_type,
               r.resource_id, r.outcome, r.client_addr, r.user_agent, r.request_id, r.details,
               decode(r.prev_hash, 'hex'), decode(r.hash, 'hex')
        FROM json_to_recordset(p_events) AS r(
                 id uuid, seq bigint, occurred_at timestamptz, actor_type text, actor_id text, action text,
                 resource_type text, resource_id text, outcome text, client_addr text, user_agent text,
                 request_id text, details json, prev_hash text, hash text);
    UPDATE audit_heads SET last_seq = head.last_seq + added, last_hash = new_hash WHERE tenant_id = p_tenant;
    RETURN head.last_seq + added;
END $$;
