-- Usage (agent_service/usage): one row per agent run that reported what it used, written once
-- (`id` is the task's id for a background run, a fresh id for a sync call). `month` (YYYY-MM,
-- UTC) is what a budget is counted over; `cost` is USD from MODEL_PRICES at the time (NULL: no
-- price for the model).
CREATE TABLE usage (
    id            TEXT PRIMARY KEY,
    owner_id      TEXT NOT NULL,
    api_key_id    TEXT,
    task_id       TEXT,
    agent_id      TEXT NOT NULL,
    model         TEXT,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost          REAL,
    month         TEXT NOT NULL,
    at            TEXT NOT NULL
);
CREATE INDEX ix_usage_owner_at ON usage (owner_id, at);
CREATE INDEX ix_usage_owner_month ON usage (owner_id, month);
CREATE INDEX ix_usage_at ON usage (at);
-- a user's own monthly token budget (an admin sets it); NULL: the tier's (BUDGET_TOKENS_<TIER>), 0: none
ALTER TABLE users ADD COLUMN monthly_token_budget INTEGER
