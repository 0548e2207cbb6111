-- Usage per tenant, model version and hour (UTC), for the dashboard and billing. Rows are
-- only ever added to: every serving process flushes what it counted since its last flush
-- and adds it (counters, errors by code, latency histogram buckets), so processes sharing
-- the database never overwrite each other. Days are summed from hours when read.
CREATE TABLE usage_hourly (
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    hour            timestamptz NOT NULL CHECK (extract(epoch FROM hour)::bigint % 3600 = 0),
    model           text NOT NULL,
    version         integer NOT NULL CHECK (version >= 1),
    calls           bigint NOT NULL CHECK (calls >= 0),
    input_rows      bigint NOT NULL CHECK (input_rows >= 0),
    cache_hits      bigint NOT NULL CHECK (cache_hits >= 0),
    bytes_in        bigint NOT NULL CHECK (bytes_in >= 0),
    bytes_out       bigint NOT NULL CHECK (bytes_out >= 0),
    -- Failed calls by problem code: {"invalid_input": 3}.
    errors          jsonb NOT NULL DEFAULT '{}',
    -- Successful calls' latency: counts per fixed log bucket (usage/histogram.rs), trailing
    -- empty buckets left out.
    latency_buckets bigint[] NOT NULL DEFAULT '{}',
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, hour, model, version)
);

ALTER TABLE usage_hourly ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_hourly FORCE ROW LEVEL SECURITY;
CREATE POLICY usage_hourly_tenant ON usage_hourly
    USING (tenant_id = app_tenant_id())
    WITH CHECK (tenant_id = app_tenant_id());
GRANT SELECT, INSERT, UPDATE ON usage_hourly TO tessera_app;

-- Element-wise sum of two bucket arrays of any lengths (the shorter is padded with zeros).
CREATE FUNCTION usage_add_buckets(a bigint[], b bigint[]) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
        SELECT coalesce(array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i), '{}')
        FROM unnest(a, b) WITH ORDINALITY AS t (x, y, i)
    $$;

-- Sum of two {code: count} objects.
CREATE FUNCTION usage_add_counts(a jsonb, b jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
        SELECT coalesce(jsonb_object_agg(key, total), '{}')
        FROM (SELECT key, sum(value::bigint) AS total
              FROM (SELECT * FROM jsonb_each_text(a) UNION ALL SELECT * FROM jsonb_each_text(b)) AS e
              GROUP BY key) AS s
    $$;

CREATE AGGREGATE usage_sum_buckets(bigint[]) (SFUNC = usage_add_buckets, STYPE = bigint[], INITCOND = '{}');
CREATE AGGREGATE usage_sum_counts(jsonb) (SFUNC = usage_add_counts, STYPE = jsonb, INITCOND = '{}');
