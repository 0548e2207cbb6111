-- audit_append takes each event's details as a separate text argument. Embedded in the events'
-- JSON, a shared record's details (most of a batch's bytes) were lexed four times: by the cast
-- of the argument to json, by each of the two passes over it, and by the json column's input.
-- Apart, they are lexed once, by that input. The events' JSON now only carries the small
-- fields. Same checks, same privileges; the previous signature is dropped.
CREATE FUNCTION audit_append(p_tenant uuid, p_events json, p_details text[]) RETURNS bigint
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
    IF coalesce(cardinality(p_details), 0) <> added THEN
        RAISE EXCEPTION 'audit events and details of % do not match: % events, % details',
            p_tenant, added, coalesce(cardinality(p_details), 0);
    END IF;

    INSERT INTO audit_events
        SELECT p_tenant, r.seq, r.id, r.occurred_at, r.actor_type, r.actor_id, r.action, r.resource_type,
               r.resource_id, r.outcome, r.client_addr, r.user_agent, r.request_id, p_details[r.ord]::json,
               decode(r.prev_hash, 'hex'), decode(r.hash, 'hex')
        FROM ROWS FROM (json_to_recordset(p_events) AS (
                 id uuid, seq bigint, occurred_at timestamptz, actor_type text, actor_id text, action text,
                 resource_type text, resource_id text, outcome text, client_addr text, user_agent text,
                 request_id text, prev_hash text, hash text))
             WITH ORDINALITY AS r(id, seq, occurred_at, actor_type, actor_id, action, resource_type, resource_id,
                                  outcome, client_addr, user_agent, request_id, prev_hash, hash, ord);
    UPDATE audit_heads SET last_seq = head.last_seq + added, last_hash = new_hash WHERE tenant_id = p_tenant;
    RETURN head.last_seq + added;
END $$;

DROP FUNCTION audit_append(uuid, json);
REVOKE ALL ON FUNCTION audit_append(uuid, json, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_append(uuid, json, text[]) TO tessera_app;
