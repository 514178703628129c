-- Batches (POST /agents/{agent_id}/invoke-batch): one row per batch; its tasks carry `batch_id`.
-- A batch's counts are read from its tasks (one indexed GROUP BY), never kept apart from them, so
-- they cannot drift. `webhook`: JSON {url, events, secret} of the batch's own receiver.
-- `cancelled_at`: a cancel was asked for; `completed_at`: when its last task was seen finished.
CREATE TABLE batches (
    id           TEXT PRIMARY KEY,
    owner_id     TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    size         INTEGER NOT NULL,
    webhook      TEXT,
    request_id   TEXT,
    created_at   TEXT NOT NULL,
    cancelled_at TEXT,
    completed_at TEXT
);
CREATE INDEX ix_batches_owner ON batches (owner_id, created_at, id);
ALTER TABLE tasks ADD COLUMN batch_id TEXT;
CREATE INDEX ix_tasks_batch ON tasks (batch_id, state);
-- a `batch.completed` delivery to a batch's own webhook is signed with the batch's secret
ALTER TABLE webhook_deliveries ADD COLUMN batch_id TEXT
