-- Portable across SQLite, MariaDB/MySQL and PostgreSQL: VARCHAR and BIGINT only.
-- Times are unix milliseconds, progress is per mille (0 to 1000).
CREATE TABLE tasks (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    status VARCHAR(16) NOT NULL,
    original_filename VARCHAR(255),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    input_bytes BIGINT NOT NULL,
    progress_permille BIGINT NOT NULL,
    rows_read BIGINT NOT NULL,
    groups_written BIGINT NOT NULL,
    output_bytes BIGINT NOT NULL,
    error_message VARCHAR(4000)
);

CREATE INDEX tasks_created_at ON tasks (created_at);

CREATE INDEX tasks_status ON tasks (status);
