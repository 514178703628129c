-- Every background invocation. Outlives the Redis result so status stays answerable.
CREATE TABLE tasks (
    id            TEXT PRIMARY KEY,
    owner_id      TEXT,
    agent_id      TEXT,
    kind          TEXT NOT NULL,
    state         TEXT NOT NULL,
    tries         INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    request_id    TEXT,
    session_id    TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    started_at    TEXT,
    completed_at  TEXT,
    next_retry_at TEXT
);
CREATE INDEX ix_tasks_owner_created ON tasks (owner_id, created_at);
CREATE INDEX ix_tasks_state ON tasks (state);
CREATE INDEX ix_tasks_created ON tasks (created_at)
