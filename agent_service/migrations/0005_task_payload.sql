-- What is needed to run a task again (admin retry), and when it is scheduled for.
ALTER TABLE tasks ADD COLUMN payload TEXT;
ALTER TABLE tasks ADD COLUMN scheduled_for TEXT;
ALTER TABLE tasks ADD COLUMN priority TEXT;
CREATE INDEX ix_tasks_completed ON tasks (completed_at)
