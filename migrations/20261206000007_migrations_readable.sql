-- Serving processes check that the schema is current (`tessera migrate --check`) before they
-- start, through the application role: it may read which migrations are applied, nothing more.
GRANT SELECT ON _sqlx_migrations TO tessera_app;
