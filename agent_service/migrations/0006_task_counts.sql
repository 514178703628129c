-- Tries mean what they say: `retries` counts transient failures (JOB_MAX_RETRIES), `worker_losses`
-- the runs whose worker died (JOB_MAX_WORKER_LOSSES); a graceful re-queue or a deferral counts
-- neither. `error_code` is the stable reason of a FAILURE (worker_lost, job_lost, …).
ALTER TABLE tasks ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN worker_losses INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN error_code TEXT;
CREATE INDEX ix_tasks_state_updated ON tasks (state, updated_at)
