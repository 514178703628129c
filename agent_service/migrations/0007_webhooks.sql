-- Webhooks. A task may carry its own webhook (`tasks.webhook`: JSON {url, events, secret});
-- users hold subscriptions. Timestamps are fixed-width ISO UTC text, as everywhere.
ALTER TABLE tasks ADD COLUMN webhook TEXT;
-- Written by tasks/lifecycle in the same transaction as a task's RETRY or terminal state, consumed
-- (deleted) by the webhooks domain, which turns each row into deliveries: no event is lost between
-- the state change and its webhooks, whatever process dies when. `id` only grows: oldest first.
CREATE TABLE task_events_outbox (
    id          {{auto_id}},
    task_id     TEXT NOT NULL,
    owner_id    TEXT,
    event       TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
-- `task_id` set: a subscription for one task's events only (A2A push notifications).
-- The secret signs deliveries, so it is kept (an HMAC key must be); it is shown once, at creation
-- or rotation, and never read back by the API. The previous secret also signs until it expires.
CREATE TABLE webhook_subscriptions (
    id                  TEXT PRIMARY KEY,
    owner_id            TEXT NOT NULL,
    url                 TEXT NOT NULL,
    events              TEXT NOT NULL,
    description         TEXT NOT NULL DEFAULT '',
    task_id             TEXT,
    secret              TEXT NOT NULL,
    previous_secret     TEXT,
    previous_expires_at TEXT,
    enabled             INTEGER NOT NULL DEFAULT 1,
    disabled_reason     TEXT,
    disabled_at         TEXT,
    failing_since       TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
CREATE INDEX ix_webhook_subscriptions_owner ON webhook_subscriptions (owner_id, created_at, id);
-- One row per message: its id is the `webhook-id` of every attempt (receivers dedupe on it).
-- state: pending (due at next_attempt_at; claimed by a worker until claimed_until), succeeded, failed.
-- `step` indexes WEBHOOK_RETRY_SCHEDULE (a redelivery starts it again); `attempts` counts them all.
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    owner_id        TEXT NOT NULL,
    subscription_id TEXT,
    task_id         TEXT,
    event           TEXT NOT NULL,
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    step            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    claimed_until   TEXT,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    completed_at    TEXT
);
CREATE INDEX ix_webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX ix_webhook_deliveries_subscription ON webhook_deliveries (subscription_id, created_at, id);
CREATE INDEX ix_webhook_deliveries_task ON webhook_deliveries (task_id, created_at, id);
-- Every attempt of a delivery, as its owner sees it: status code, latency, error.
CREATE TABLE webhook_attempts (
    id           {{auto_id}},
    delivery_id  TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    started_at   TEXT NOT NULL,
    status_code  INTEGER,
    latency_ms   INTEGER,
    error        TEXT,
    response     TEXT
);
CREATE INDEX ix_webhook_attempts_delivery ON webhook_attempts (delivery_id, attempt)
