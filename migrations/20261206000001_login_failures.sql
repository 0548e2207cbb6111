-- Failed logins, collapsed per (account, client, minute) before they reach the platform's
-- audit chain: an unauthenticated caller never writes into a tenant's chain, and a flood of
-- failures becomes one event per minute with a count. A flush moves closed minutes into the
-- chain (DELETE ... RETURNING in the chain's transaction, so each row is chained once).
CREATE TABLE login_failures (
    minute      timestamptz NOT NULL,
    account     text NOT NULL,
    client      text NOT NULL,
    reason      text NOT NULL,
    user_id     uuid,
    tenant      text,
    user_agent  text,
    outcome     text NOT NULL,
    attempts    integer NOT NULL DEFAULT 1,
    first_at    timestamptz NOT NULL DEFAULT now(),
    last_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (minute, account, client, reason)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON login_failures TO tessera_app;
