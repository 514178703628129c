-- Conversation sessions. The id is chosen by the client, so it is unique per owner only:
-- two users may use the same string, and a lookup always names the owner (someone else's
-- session is simply not found). Messages are a JSON list of {role, content, created_at},
-- capped by the service. Timestamps are fixed-width ISO UTC text.
CREATE TABLE sessions (
    owner_id      TEXT NOT NULL,
    id            TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    title         TEXT NOT NULL DEFAULT '',
    messages      TEXT NOT NULL DEFAULT '[]',
    message_count INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    last_activity TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    PRIMARY KEY (owner_id, id)
);
-- the hourly cleanup's range scan
CREATE INDEX ix_sessions_expires ON sessions (expires_at);
-- "my sessions, most recently active first", paged on (last_activity, id)
CREATE INDEX ix_sessions_owner_activity ON sessions (owner_id, last_activity, id)
