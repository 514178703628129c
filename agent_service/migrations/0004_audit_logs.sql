-- Append-only audit trail. `id` only ever grows (an auto id never reuses an id, even
-- after the archive job deletes the newest rows), so (timestamp, id) is a stable total order.
-- Timestamps are fixed-width ISO UTC text: ordering by string is ordering by time.
-- Maintenance runs use action EXECUTE with resource_type 'maintenance' (no extra action).
CREATE TABLE audit_logs (
    id               {{auto_id}},
    timestamp        TEXT NOT NULL,
    actor            TEXT NOT NULL,
    actor_user_id    TEXT,
    actor_api_key_id TEXT,
    action           TEXT NOT NULL CHECK (action IN ('CREATE', 'READ', 'UPDATE', 'DELETE', 'EXECUTE',
                                                     'LOGIN', 'LOGOUT', 'FAILED_AUTH', 'CANCEL')),
    resource_type    TEXT NOT NULL,
    resource_id      TEXT,
    request_id       TEXT,
    method           TEXT,
    path             TEXT,
    status           INTEGER,
    client_ip        TEXT,
    user_agent       TEXT,
    metadata         TEXT NOT NULL DEFAULT '{}'
);
-- newest-first listing, range filters, stats and the archive job's "older than" scan
CREATE INDEX ix_audit_time ON audit_logs (timestamp, id);
-- each filter leads its own index and ends in (timestamp, id) so a filtered page needs no sort
CREATE INDEX ix_audit_actor ON audit_logs (actor, timestamp, id);
CREATE INDEX ix_audit_action ON audit_logs (action, timestamp, id);
CREATE INDEX ix_audit_resource ON audit_logs (resource_type, resource_id, timestamp, id);
CREATE INDEX ix_audit_request ON audit_logs (request_id);
CREATE INDEX ix_audit_status ON audit_logs (status, timestamp, id)
