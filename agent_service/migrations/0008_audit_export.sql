-- EXPORT joins the audit actions (GET /agents/tasks/export). SQLite cannot change a CHECK
-- constraint in place, so the table is rebuilt (under the migration lock, in its transaction) with
-- every row, index and its id sequence: an id is still never reused. PostgreSQL: postgresql/0008.
ALTER TABLE audit_logs RENAME TO audit_logs_0007;
CREATE TABLE audit_logs (
    id               {{auto_id}},
    timestamp        TEXT NOT NULL,
    actor            TEXT NOT NULL,
    actor_user_id    TEXT,
    actor_api_key_id TEXT,
    action           TEXT NOT NULL CHECK (action IN ('CREATE', 'READ', 'UPDATE', 'DELETE', 'EXECUTE',
                                                     'LOGIN', 'LOGOUT', 'FAILED_AUTH', 'CANCEL', 'EXPORT')),
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
INSERT INTO audit_logs (id, timestamp, actor, actor_user_id, actor_api_key_id, action, resource_type, resource_id,
                        request_id, method, path, status, client_ip, user_agent, metadata)
    SELECT id, timestamp, actor, actor_user_id, actor_api_key_id, action, resource_type, resource_id,
           request_id, method, path, status, client_ip, user_agent, metadata FROM audit_logs_0007;
-- the rename took the old sequence along; the copy set the new one to the highest id left, which
-- is lower when the archive job deleted the newest rows
DELETE FROM sqlite_sequence WHERE name = 'audit_logs';
INSERT INTO sqlite_sequence (name, seq) SELECT 'audit_logs', seq FROM sqlite_sequence WHERE name = 'audit_logs_0007';
DROP TABLE audit_logs_0007;
CREATE INDEX ix_audit_time ON audit_logs (timestamp, id);
CREATE INDEX ix_audit_actor ON audit_logs (actor, timestamp, id);
CREATE INDEX ix_audit_action ON audit_logs (action, timestamp, id);
CREATE INDEX ix_audit_resource ON audit_logs (resource_type, resource_id, timestamp, id);
CREATE INDEX ix_audit_request ON audit_logs (request_id);
CREATE INDEX ix_audit_status ON audit_logs (status, timestamp, id)
