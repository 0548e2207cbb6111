-- Jobs (training and batch inference) and the encrypted data they read and write.
--
-- Job state lives here; Redis Streams only carry "job X of tenant T is due" to workers. A
-- job's row is the truth about its status, attempts and lease, so a lost or duplicated stream
-- entry can delay a job but never run it twice at once or lose it.

-- Tenant data other than models, encrypted exactly like model artifacts: uploaded datasets
-- (CSV) and batch inference outputs (CSV). The id is the artifact id bound into the key wrapping.
CREATE TABLE data_objects (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind              text NOT NULL CHECK (kind IN ('dataset', 'job_output')),
    name              text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
    -- CSV header and number of data rows.
    columns           text[] NOT NULL,
    rows              bigint NOT NULL CHECK (rows >= 0),
    size_bytes        bigint NOT NULL CHECK (size_bytes >= 0),
    stored_bytes      bigint NOT NULL CHECK (stored_bytes >= 0),
    sha256            bytea NOT NULL CHECK (length(sha256) = 32),
    object_key        text NOT NULL,
    tenant_key_id     uuid NOT NULL REFERENCES tenant_keys (id),
    wrapped_data_key  bytea NOT NULL,
    created_by        uuid,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, tenant_id)
);
CREATE INDEX data_objects_tenant ON data_objects (tenant_id, kind, created_at DESC);

CREATE TABLE jobs (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind              text NOT NULL CHECK (kind IN ('train', 'batch_infer')),
    spec              jsonb NOT NULL,
    status            text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'dead')),
    -- Resubmitting with the same key returns this job; the digest tells a retry of the same
    -- request from a different request reusing the key.
    idempotency_key   text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_digest    bytea,
    attempts          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL CHECK (max_attempts > 0),
    -- Not dispatched before this time (retry back-off).
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    -- Set when an entry for the job was added to the stream; cleared when it must be added again.
    dispatched_at     timestamptz,
    cancel_requested  boolean NOT NULL DEFAULT false,
    -- The worker running the job, the stream entry it runs it under, and until when its claim
    -- holds unless renewed.
    worker            text,
    stream_entry      text,
    lease_until       timestamptz,
    progress          jsonb NOT NULL DEFAULT '{}',
    result            jsonb,
    error             text,
    submitted_by_kind text NOT NULL,
    submitted_by_id   text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    UNIQUE (tenant_id, idempotency_key),
    UNIQUE (id, tenant_id)
);
CREATE INDEX jobs_tenant_created ON jobs (tenant_id, created_at DESC);
CREATE INDEX jobs_due ON jobs (next_attempt_at) WHERE status IN ('queued', 'running');

-- Progress and status changes, in order: what `GET /v1/jobs/{id}/events` streams.
CREATE TABLE job_events (
    id         bigserial PRIMARY KEY,
    job_id     uuid NOT NULL,
    tenant_id  uuid NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    kind       text NOT NULL CHECK (kind IN ('status', 'progress', 'log')),
    data       jsonb NOT NULL,
    FOREIGN KEY (job_id, tenant_id) REFERENCES jobs (id, tenant_id) ON DELETE CASCADE
);
CREATE INDEX job_events_job ON job_events (job_id, id);

-- A retried training job registers at most one model version.
ALTER TABLE model_versions ADD COLUMN job_id uuid;
CREATE UNIQUE INDEX model_versions_job ON model_versions (job_id) WHERE job_id IS NOT NULL;

ALTER TABLE data_objects ENABLE ROW LEVEL SECURITY;
ALTER TABLE data_objects FORCE ROW LEVEL SECURITY;
CREATE POLICY data_objects_tenant ON data_objects USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE jobs FORCE ROW LEVEL SECURITY;
CREATE POLICY jobs_tenant ON jobs USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE job_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE job_events FORCE ROW LEVEL SECURITY;
CREATE POLICY job_events_tenant ON job_events USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

-- Dispatching is the one cross-tenant step: jobs that are due and not in the stream are marked
-- dispatched and returned, so the caller can add them to the stream. That is: queued jobs never
-- added or not added for `p_queued_after` (their entry lost with Redis), and running jobs whose
-- worker's lease ran out `p_expired_after` ago without a takeover (the entry itself lost). A
-- duplicate entry costs a look at the row: the worker acknowledges it. SKIP LOCKED lets several
-- dispatchers run at once.
CREATE POLICY jobs_definer ON jobs TO CURRENT_USER USING (true);
CREATE FUNCTION jobs_to_dispatch(p_limit integer, p_queued_after interval, p_expired_after interval)
    RETURNS TABLE (id uuid, tenant_id uuid)
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public
    AS $$
    UPDATE jobs j SET dispatched_at = now()
    FROM (
        SELECT id FROM jobs
        WHERE (status = 'queued' AND next_attempt_at <= now()
               AND (dispatched_at IS NULL OR dispatched_at < now() - p_queued_after))
           OR (status = 'running' AND lease_until < now() - p_expired_after
               AND (dispatched_at IS NULL OR dispatched_at < now() - p_expired_after))
        ORDER BY next_attempt_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ) due
    WHERE j.id = due.id
    RETURNING j.id, j.tenant_id
    $$;
REVOKE ALL ON FUNCTION jobs_to_dispatch(integer, interval, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION jobs_to_dispatch(integer, interval, interval) TO tessera_app;

-- Data objects are immutable but for re-wrapping their data key (tenant key rotation).
GRANT SELECT, INSERT ON data_objects TO tessera_app;
GRANT UPDATE (tenant_key_id, wrapped_data_key) ON data_objects TO tessera_app;
GRANT SELECT, INSERT ON jobs TO tessera_app;
GRANT UPDATE (status, attempts, next_attempt_at, dispatched_at, cancel_requested, worker, stream_entry, lease_until, progress,
              result, error, started_at, finished_at) ON jobs TO tessera_app;
GRANT SELECT, INSERT ON job_events TO tessera_app;
GRANT USAGE ON SEQUENCE job_events_id_seq TO tessera_app;
