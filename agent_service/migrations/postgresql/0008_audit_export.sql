-- EXPORT joins the audit actions (GET /agents/tasks/export): the column's CHECK is replaced by one
-- with the longer list (which every existing row satisfies).
ALTER TABLE audit_logs DROP CONSTRAINT audit_logs_action_check;
ALTER TABLE audit_logs ADD CONSTRAINT audit_logs_action_check
    CHECK (action IN ('CREATE', 'READ', 'UPDATE', 'DELETE', 'EXECUTE', 'LOGIN', 'LOGOUT', 'FAILED_AUTH', 'CANCEL',
                      'EXPORT'))
