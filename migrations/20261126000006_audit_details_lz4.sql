-- Shared per-call audit records are large JSON documents: lz4 compresses them for TOAST at a
-- fraction of pglz's CPU cost, which inference throughput pays for on every call.
ALTER TABLE audit_events ALTER COLUMN details SET COMPRESSION lz4;
