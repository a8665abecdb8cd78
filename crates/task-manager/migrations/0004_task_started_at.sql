-- When a task first started (unix milliseconds), for the metrics of queue wait and processing time.
ALTER TABLE tasks ADD COLUMN started_at BIGINT;
