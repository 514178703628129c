-- ix_tasks_state (state) is the first column of ix_tasks_state_updated (state, updated_at): every
-- query by state uses the wider one, and a task's every state change updated both (issue 16)
DROP INDEX IF EXISTS ix_tasks_state
