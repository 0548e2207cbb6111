-- Tamper-evident audit log: one hash chain per tenant (platform events use the nil tenant).
--
-- hash = SHA-256 over the event's canonical serialisation and the previous event's hash (see
-- ARCHITECTURE.md, "Audit chain"). Rows are append-only: tessera_app may only append through
-- audit_append(), which keeps each chain gapless and linked; a trigger refuses UPDATE and
-- DELETE from everyone, except a retention purge by the schema owner (tessera audit purge).

CREATE TABLE audit_events (
    tenant_id     uuid NOT NULL,
    seq           bigint NOT NULL CHECK (seq > 0),
    id            uuid NOT NULL UNIQUE,
    occurred_at   timestamptz NOT NULL,
    actor_type    text NOT NULL,
    actor_id      text,
    action        text NOT NULL,
    resource_type text,
    resource_id   text,
    outcome       text NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    client_addr   text,
    user_agent    text,
    request_id    text,
    details       json NOT NULL,
    prev_hash     bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash          bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_events_time ON audit_events (tenant_id, occurred_at);

-- The head of each chain; its row lock serialises writers of one tenant only.
CREATE TABLE audit_heads (
    tenant_id  uuid PRIMARY KEY,
    last_seq   bigint NOT NULL,
    last_hash  bytea NOT NULL
);

-- Signed statements "the chain of tenant T had hash H at sequence S at time X".
CREATE TABLE audit_checkpoints (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    seq        bigint NOT NULL,
    hash       bytea NOT NULL,
    signed_at  timestamptz NOT NULL,
    key_id     text NOT NULL,
    signature  bytea NOT NULL,
    reason     text NOT NULL
);
CREATE INDEX audit_checkpoints_tenant ON audit_checkpoints (tenant_id, seq);

-- Per-tenant audit settings (masking, inference-call sampling).
CREATE TABLE audit_settings (
    tenant_id         uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    mask_emails       boolean NOT NULL DEFAULT false,
    mask_client_addr  boolean NOT NULL DEFAULT false,
    inference_mode    text NOT NULL DEFAULT 'every_call' CHECK (inference_mode IN ('every_call', 'sampled', 'aggregated')),
    inference_sample_rate double precision NOT NULL DEFAULT 1.0 CHECK (inference_sample_rate > 0 AND inference_sample_rate <= 1)
);

CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('tessera.audit_purge', true) = 'on'
       AND current_user <> 'tessera_app' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit records are append-only (% refused on %)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- Reading: a tenant's own events only (auditors and owners read through the API).
ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_events_tenant ON audit_events FOR SELECT USING (tenant_id = app_tenant_id());
CREATE POLICY audit_events_definer ON audit_events TO CURRENT_USER USING (true);

ALTER TABLE audit_checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_checkpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_checkpoints_tenant ON audit_checkpoints FOR SELECT USING (tenant_id = app_tenant_id());
CREATE POLICY audit_checkpoints_definer ON audit_checkpoints TO CURRENT_USER USING (true);

ALTER TABLE audit_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_heads_definer ON audit_heads TO CURRENT_USER USING (true);

ALTER TABLE audit_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_settings FORCE ROW LEVEL SECURITY;
-- Masking settings are read by the audit writer for whichever tenant it writes; they hold no secret.
CREATE POLICY audit_settings_read ON audit_settings FOR SELECT USING (true);
CREATE POLICY audit_settings_write ON audit_settings FOR INSERT WITH CHECK (tenant_id = app_tenant_id());
CREATE POLICY audit_settings_update ON audit_settings FOR UPDATE USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
CREATE POLICY audit_settings_definer ON audit_settings TO CURRENT_USER USING (true);

-- Locks a chain's head for the rest of the transaction and returns it (creating it at
-- sequence 0 with an all-zero hash for a new chain).
CREATE FUNCTION audit_lock_head(p_tenant uuid) RETURNS TABLE (last_seq bigint, last_hash bytea)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    INSERT INTO audit_heads (tenant_id, last_seq, last_hash)
        VALUES (p_tenant, 0, decode(repeat('00', 32), 'hex'))
        ON CONFLICT (tenant_id) DO NOTHING;
    RETURN QUERY SELECT h.last_seq, h.last_hash FROM audit_heads h WHERE h.tenant_id = p_tenant FOR UPDATE;
END $$;

-- Appends events (a JSON array of rows, in order) to a chain whose head this transaction
-- holds. Refuses anything that does not continue the chain exactly.
CREATE FUNCTION audit_append(p_tenant uuid, p_events json) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    head audit_heads%ROWTYPE;
    e record;
    expected_seq bigint;
    expected_prev bytea;
BEGIN
    SELECT * INTO head FROM audit_heads WHERE tenant_id = p_tenant FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit chain head of % is not locked', p_tenant;
    END IF;
    expected_seq := head.last_seq + 1;
    expected_prev := head.last_hash;
    FOR e IN SELECT * FROM json_to_recordset(p_events) AS x(
        id uuid, seq bigint, occurred_at timestamptz, actor_type text, actor_id text, action text,
        resource_type text, resource_id text, outcome text, client_addr text, user_agent text,
        request_id text, details json, prev_hash text, hash text)
    LOOP
        IF e.seq <> expected_seq OR decode(e.prev_hash, 'hex') <> expected_prev THEN
            RAISE EXCEPTION 'audit event % does not continue the chain of % at %', e.id, p_tenant, expected_seq;
        END IF;
        INSERT INTO audit_events VALUES (p_tenant, e.seq, e.id, e.occurred_at, e.actor_type, e.actor_id, e.action,
            e.resource_type, e.resource_id, e.outcome, e.client_addr, e.user_agent, e.request_id, e.details,
            decode(e.prev_hash, 'hex'), decode(e.hash, 'hex'));
        expected_seq := expected_seq + 1;
        expected_prev := decode(e.hash, 'hex');
    END LOOP;
    UPDATE audit_heads SET last_seq = expected_seq - 1, last_hash = expected_prev WHERE tenant_id = p_tenant;
    RETURN expected_seq - 1;
END $$;

CREATE FUNCTION audit_add_checkpoint(p_id uuid, p_tenant uuid, p_seq bigint, p_hash bytea, p_signed_at timestamptz,
                                     p_key_id text, p_signature bytea, p_reason text) RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = public AS $$
    INSERT INTO audit_checkpoints VALUES (p_id, p_tenant, p_seq, p_hash, p_signed_at, p_key_id, p_signature, p_reason)
$$;

-- Chain heads whose latest state no checkpoint has signed yet (for periodic checkpoints).
CREATE FUNCTION audit_unsigned_heads() RETURNS TABLE (tenant_id uuid, last_seq bigint, last_hash bytea)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT h.tenant_id, h.last_seq, h.last_hash FROM audit_heads h
    WHERE h.last_seq > 0 AND NOT EXISTS (
        SELECT 1 FROM audit_checkpoints c WHERE c.tenant_id = h.tenant_id AND c.seq = h.last_seq)
$$;
REVOKE ALL ON FUNCTION audit_unsigned_heads() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_unsigned_heads() TO tessera_app;

REVOKE ALL ON FUNCTION audit_lock_head(uuid), audit_append(uuid, json),
    audit_add_checkpoint(uuid, uuid, bigint, bytea, timestamptz, text, bytea, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_lock_head(uuid), audit_append(uuid, json),
    audit_add_checkpoint(uuid, uuid, bigint, bytea, timestamptz, text, bytea, text) TO tessera_app;
GRANT SELECT ON audit_events, audit_checkpoints TO tessera_app;
GRANT SELECT, INSERT, UPDATE ON audit_settings TO tessera_app;
-- Deliberately no INSERT, UPDATE or DELETE on audit_events, audit_heads or audit_checkpoints.
