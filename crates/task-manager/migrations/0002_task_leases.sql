-- Leases of the tasks run by workers (RabbitMQ mode): the worker process that owns the task
-- and until when (unix milliseconds), and how many of its leases expired (the lease keeper
-- republished the task, or abandoned it). One column per statement: SQLite adds no more.
ALTER TABLE tasks ADD COLUMN lease_owner VARCHAR(255);

ALTER TABLE tasks ADD COLUMN lease_expires_at BIGINT;

ALTER TABLE tasks ADD COLUMN lease_expiries BIGINT NOT NULL DEFAULT 0;
