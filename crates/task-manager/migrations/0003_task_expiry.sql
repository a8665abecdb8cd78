-- RETENTION: when a finished task's upload and result were deleted (unix milliseconds).
ALTER TABLE tasks ADD COLUMN expired_at BIGINT;
