//! The task database: one `tasks` table on SQLite, MariaDB/MySQL or PostgreSQL, through
//! sqlx's `Any` driver and the migrations embedded in the binary.
//!
//! Queries are written with `?` placeholders (SQLite, MySQL) and rewritten to `$1, $2, ...`
//! for PostgreSQL. Every status change is guarded in SQL (`WHERE status IN (...)`), so a
//! terminal status (DONE, FAILED, CANCELLED) is never left, whatever the order of concurrent
//! events.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::migrate::MigrateDatabase;
use sqlx::query::Query;
use sqlx::{Any, AnyPool, AssertSqlSafe, Row};
use task_protocol::{TaskStatus, WorkerEvent};
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use uuid::Uuid;

mod lease;
mod stats;

pub use lease::ExpiredLease;

/// Longest error message kept (the column is `VARCHAR(4000)`).
const MAX_ERROR_CHARS: usize = 4000;
/// Longest original file name kept (the column is `VARCHAR(255)`).
pub const MAX_FILENAME_CHARS: usize = 255;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "unsupported DATABASE_URL {0:?}: expected sqlite://, mysql://, mariadb:// or postgres://"
    )]
    UnsupportedUrl(String),
    #[error("task {id} in the database has an invalid {column}: {value:?}")]
    Corrupt {
        id: String,
        column: &'static str,
        value: String,
    },
}

/// Which database the URL points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MySql,
    Postgres,
}

impl Backend {
    /// The backend of a `DATABASE_URL`, from its scheme.
    pub fn of_url(url: &str) -> Option<Backend> {
        let scheme = url.split(':').next()?.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Backend::Sqlite),
            "mysql" | "mariadb" => Some(Backend::MySql),
            "postgres" | "postgresql" => Some(Backend::Postgres),
            _ => None,
        }
    }
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: Uuid,
    pub status: TaskStatus,
    /// The uploaded file's name, already sanitized (see [`crate::filenames::sanitize_filename`]).
    pub original_filename: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
    pub input_bytes: u64,
    /// 0 to 1000.
    pub progress_permille: u32,
    pub rows: u64,
    pub groups: u64,
    pub output_bytes: u64,
    pub error: Option<String>,
    /// Unix milliseconds: when its upload and result were deleted (`RETENTION`).
    pub expired_at: Option<i64>,
    /// Unix milliseconds: when it first started.
    pub started_at: Option<i64>,
}

/// One page of tasks, newest first, and the total count.
#[derive(Debug, Clone)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    pub count: u64,
}

/// Handle to the task database (cheap to clone).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Woken whenever a task's status may have changed (see [`Store::changed`]).
    changes: Arc<Notify>,
}

const COLUMNS: &str = "id, status, original_filename, created_at, updated_at, input_bytes, \
     progress_permille, rows_read, groups_written, output_bytes, error_message, expired_at, started_at";

/// `status IN (...)` of the states a task may still leave.
const NOT_TERMINAL: &str = "status IN ('RECEIVED', 'PROCESSING')";

impl Store {
    /// Connects, creates a missing SQLite file, and applies the embedded migrations. A query
    /// that cannot get a connection within `timeout` (the database is unreachable) fails
    /// then rather than waiting.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url).ok_or_else(|| StoreError::UnsupportedUrl(url.into()))?;
        if backend == Backend::Sqlite && !Any::database_exists(url).await? {
            Any::create_database(url).await?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 10 })
            .acquire_timeout(timeout)
            .connect(url)
            .await?;
        if backend == Backend::Sqlite {
            // Readers do not block the writer; the busy timeout (5 s by default) covers writers.
            sqlx::raw_sql("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        MIGRATOR.run(&pool).await?;
        Ok(Store {
            pool,
            backend,
            changes: Arc::default(),
        })
    }

    /// Closes the pool, waiting for the connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Records a new task in `RECEIVED`.
    pub async fn insert(
        &self,
        id: Uuid,
        original_filename: Option<&str>,
        input_bytes: u64,
    ) -> Result<Task, StoreError> {
        let now = now_millis();
        let filename: Option<String> =
            original_filename.map(|name| truncate(name, MAX_FILENAME_CHARS));
        self.query(
            "INSERT INTO tasks (id, status, original_filename, created_at, updated_at, \
             input_bytes, progress_permille, rows_read, groups_written, output_bytes, error_message) \
             VALUES (?, 'RECEIVED', ?, ?, ?, ?, 0, 0, 0, 0, NULL)",
        )
        .bind(id.to_string())
        .bind(filename.clone())
        .bind(now)
        .bind(now)
        .bind(to_i64(input_bytes))
        .execute(&self.pool)
        .await?;
        Ok(Task {
            id,
            status: TaskStatus::Received,
            original_filename: filename,
            created_at: now,
            updated_at: now,
            input_bytes,
            progress_permille: 0,
            rows: 0,
            groups: 0,
            output_bytes: 0,
            error: None,
            expired_at: None,
            started_at: None,
        })
    }

    /// The task, or `None` when unknown.
    pub async fn get(&self, id: Uuid) -> Result<Option<Task>, StoreError> {
        let row = self
            .query_owned(format!("SELECT {COLUMNS} FROM tasks WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    /// The status of a task, or `None` when unknown.
    pub async fn status(&self, id: Uuid) -> Result<Option<TaskStatus>, StoreError> {
        let row = self
            .query("SELECT status FROM tasks WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| parse_status(&id.to_string(), &row.try_get::<String, _>(0)?))
            .transpose()
    }

    /// Page `page` (1-based) of `page_size` tasks, newest first.
    pub async fn list(&self, page: u64, page_size: u64) -> Result<TaskPage, StoreError> {
        let count: i64 = self
            .query("SELECT COUNT(*) FROM tasks")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let offset = page.saturating_sub(1).saturating_mul(page_size);
        let rows = self
            .query_owned(format!(
                "SELECT {COLUMNS} FROM tasks ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
            ))
            .bind(to_i64(page_size))
            .bind(to_i64(offset))
            .fetch_all(&self.pool)
            .await?;
        Ok(TaskPage {
            tasks: rows.iter().map(task_from_row).collect::<Result<_, _>>()?,
            count: u64::try_from(count).unwrap_or(0),
        })
    }

    /// Ids of the tasks still `RECEIVED` or `PROCESSING`, oldest first.
    pub async fn unfinished(&self) -> Result<Vec<Uuid>, StoreError> {
        let rows = self
            .query_owned(format!(
                "SELECT id FROM tasks WHERE {NOT_TERMINAL} ORDER BY created_at, id"
            ))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(id_from_row).collect()
    }

    /// Ids of up to `limit` finished tasks last changed before `before` (unix milliseconds)
    /// whose files are not deleted yet, oldest first.
    pub async fn expirable(&self, before: i64, limit: u64) -> Result<Vec<Uuid>, StoreError> {
        let rows = self
            .query_owned(format!(
                "SELECT id FROM tasks WHERE NOT ({NOT_TERMINAL}) AND expired_at IS NULL \
                 AND updated_at < ? ORDER BY updated_at, id LIMIT ?"
            ))
            .bind(before)
            .bind(to_i64(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(id_from_row).collect()
    }

    /// Records that a finished task's files were deleted.
    pub async fn mark_expired(&self, id: Uuid) -> Result<(), StoreError> {
        self.query("UPDATE tasks SET expired_at = ? WHERE id = ? AND expired_at IS NULL")
            .bind(now_millis())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        self.changes.notify_waiters();
        Ok(())
    }

    /// Applies a worker's event and returns the task's status afterwards (`None`: unknown task).
    /// Events never move a task out of a terminal status; applying one twice is harmless.
    pub async fn apply_event(
        &self,
        id: Uuid,
        event: &WorkerEvent,
    ) -> Result<Option<TaskStatus>, StoreError> {
        let now = now_millis();
        let query = match event {
            WorkerEvent::Started => self
                .query_owned(format!(
                    "UPDATE tasks SET status = 'PROCESSING', updated_at = ? \
                     WHERE id = ? AND {NOT_TERMINAL}"
                ))
                .bind(now),
            WorkerEvent::Progress { progress, rows } => self
                .query_owned(format!(
                    "UPDATE tasks SET status = 'PROCESSING', updated_at = ?, \
                     progress_permille = ?, rows_read = ? WHERE id = ? AND {NOT_TERMINAL}"
                ))
                .bind(now)
                .bind(i64::from(permille(*progress)))
                .bind(to_i64(*rows)),
            WorkerEvent::Done {
                rows,
                groups,
                output_bytes,
            } => self
                .query_owned(format!(
                    "UPDATE tasks SET status = 'DONE', updated_at = ?, progress_permille = 1000, \
                     rows_read = ?, groups_written = ?, output_bytes = ?, error_message = NULL \
                     WHERE id = ? AND {NOT_TERMINAL}"
                ))
                .bind(now)
                .bind(to_i64(*rows))
                .bind(to_i64(*groups))
                .bind(to_i64(*output_bytes)),
            WorkerEvent::Failed { error } => self
                .query_owned(format!(
                    "UPDATE tasks SET status = 'FAILED', updated_at = ?, error_message = ? \
                     WHERE id = ? AND {NOT_TERMINAL}"
                ))
                .bind(now)
                .bind(truncate(error, MAX_ERROR_CHARS)),
            // Only a lease changes, and events without a worker have none.
            WorkerEvent::Released => return self.status(id).await,
        };
        let changed = query.bind(id.to_string()).execute(&self.pool).await?;
        self.changes.notify_waiters();
        let status = self.status(id).await?;
        match event {
            WorkerEvent::Started if status == Some(TaskStatus::Processing) => {
                self.note_start(id, now).await;
            }
            // A terminal status always changes the row, so MySQL counts it too.
            WorkerEvent::Done { .. } | WorkerEvent::Failed { .. }
                if changed.rows_affected() == 1 =>
            {
                self.note_end(id, now).await;
            }
            _ => {}
        }
        Ok(status)
    }

    /// Marks a task `FAILED` with `error` unless it is already terminal.
    pub async fn fail(&self, id: Uuid, error: &str) -> Result<Option<TaskStatus>, StoreError> {
        self.apply_event(
            id,
            &WorkerEvent::Failed {
                error: error.to_string(),
            },
        )
        .await
    }

    /// Cancels a task unless it is already terminal; returns the task afterwards.
    pub async fn cancel(&self, id: Uuid) -> Result<Option<Task>, StoreError> {
        let now = now_millis();
        let changed = self
            .query_owned(format!(
                "UPDATE tasks SET status = 'CANCELLED', updated_at = ? WHERE id = ? AND {NOT_TERMINAL}"
            ))
            .bind(now)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        self.changes.notify_waiters();
        if changed.rows_affected() == 1 {
            self.note_end(id, now).await;
        }
        self.get(id).await
    }

    /// Resolves at the next status change of any task made through this store (in this
    /// process): a waiter creates it, reads the status, then awaits it, and misses nothing.
    pub fn changed(&self) -> Pin<Box<OwnedNotified>> {
        let mut notified = Box::pin(self.changes.clone().notified_owned());
        // Registered now, not at the first poll: a change between here and the await counts.
        notified.as_mut().enable();
        notified
    }

    fn query(&self, sql: &'static str) -> Query<'static, Any, AnyArguments> {
        match self.backend {
            Backend::Postgres => sqlx::query(AssertSqlSafe(numbered_placeholders(sql))),
            Backend::Sqlite | Backend::MySql => sqlx::query(sql),
        }
    }

    /// Like [`Store::query`] for SQL assembled from this module's constants only (never
    /// from input: every value is bound).
    fn query_owned(&self, sql: String) -> Query<'static, Any, AnyArguments> {
        let sql = match self.backend {
            Backend::Postgres => numbered_placeholders(&sql),
            Backend::Sqlite | Backend::MySql => sql,
        };
        sqlx::query(AssertSqlSafe(sql))
    }
}

/// Rewrites `?` placeholders as PostgreSQL's `$1, $2, ...` (the queries here have no `?`
/// inside literals).
fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// The id in a row's first column.
fn id_from_row(row: &AnyRow) -> Result<Uuid, StoreError> {
    let id: String = row.try_get(0)?;
    Uuid::parse_str(&id).map_err(|_| StoreError::Corrupt {
        id: id.clone(),
        column: "id",
        value: id.clone(),
    })
}

fn task_from_row(row: &AnyRow) -> Result<Task, StoreError> {
    let id_text: String = row.try_get("id")?;
    let corrupt = |column: &'static str, value: String| StoreError::Corrupt {
        id: id_text.clone(),
        column,
        value,
    };
    let id = Uuid::parse_str(&id_text).map_err(|_| corrupt("id", id_text.clone()))?;
    let status = parse_status(&id_text, &row.try_get::<String, _>("status")?)?;
    let unsigned = |column: &'static str| -> Result<u64, StoreError> {
        let value: i64 = row.try_get(column)?;
        u64::try_from(value).map_err(|_| corrupt(column, value.to_string()))
    };
    Ok(Task {
        id,
        status,
        original_filename: row.try_get("original_filename")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        input_bytes: unsigned("input_bytes")?,
        progress_permille: unsigned("progress_permille")?.min(1000) as u32,
        rows: unsigned("rows_read")?,
        groups: unsigned("groups_written")?,
        output_bytes: unsigned("output_bytes")?,
        error: row.try_get("error_message")?,
        expired_at: row.try_get("expired_at")?,
        started_at: row.try_get("started_at")?,
    })
}

fn parse_status(id: &str, text: &str) -> Result<TaskStatus, StoreError> {
    TaskStatus::parse(text).ok_or_else(|| StoreError::Corrupt {
        id: id.to_string(),
        column: "status",
        value: text.to_string(),
    })
}

/// A share 0.0 to 1.0 as per mille; out-of-range and NaN values are clamped.
fn permille(fraction: f64) -> u32 {
    if fraction.is_nan() {
        return 0;
    }
    (fraction.clamp(0.0, 1.0) * 1000.0).round() as u32
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// At most `max_chars` characters, without NUL (which PostgreSQL refuses in text).
fn truncate(text: &str, max_chars: usize) -> String {
    text.chars()
        .filter(|&c| c != '\0')
        .take(max_chars)
        .collect()
}

/// Now, in unix milliseconds.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            numbered_placeholders("UPDATE t SET a = ?, b = ? WHERE id = ?"),
            "UPDATE t SET a = $1, b = $2 WHERE id = $3"
        );
    }

    #[test]
    fn backend_from_url() {
        assert_eq!(Backend::of_url("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of_url("mysql://root@h/db"), Some(Backend::MySql));
        assert_eq!(Backend::of_url("mariadb://root@h/db"), Some(Backend::MySql));
        assert_eq!(Backend::of_url("postgres://h/db"), Some(Backend::Postgres));
        assert_eq!(
            Backend::of_url("postgresql://h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of_url("redis://h"), None);
    }

    #[test]
    fn progress_is_clamped() {
        assert_eq!(permille(0.5), 500);
        assert_eq!(permille(1.7), 1000);
        assert_eq!(permille(-1.0), 0);
        assert_eq!(permille(f64::NAN), 0);
    }

    #[tokio::test]
    async fn events_never_leave_a_terminal_status() {
        let dir = tempfile::tempdir().unwrap();
        let url = crate::settings::default_database_url(dir.path());
        let store = Store::connect(&url, Duration::from_secs(5)).await.unwrap();
        let id = Uuid::new_v4();
        store.insert(id, Some("plays.csv"), 10).await.unwrap();
        let started = store.apply_event(id, &WorkerEvent::Started).await.unwrap();
        assert_eq!(started, Some(TaskStatus::Processing));
        let done = WorkerEvent::Done {
            rows: 7,
            groups: 4,
            output_bytes: 99,
        };
        assert_eq!(
            store.apply_event(id, &done).await.unwrap(),
            Some(TaskStatus::Done)
        );
        let failed = WorkerEvent::Failed {
            error: "late".into(),
        };
        assert_eq!(
            store.apply_event(id, &failed).await.unwrap(),
            Some(TaskStatus::Done)
        );
        let task = store.cancel(id).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Done);
        assert_eq!((task.rows, task.groups, task.output_bytes), (7, 4, 99));
        assert_eq!(task.error, None);
        assert_eq!(task.original_filename.as_deref(), Some("plays.csv"));
        assert_eq!(
            store
                .apply_event(Uuid::new_v4(), &WorkerEvent::Started)
                .await
                .unwrap(),
            None
        );

        let failing = Uuid::new_v4();
        store.insert(failing, None, 10).await.unwrap();
        let long = WorkerEvent::Failed {
            error: "bad\0".repeat(2000),
        };
        assert_eq!(
            store.apply_event(failing, &long).await.unwrap(),
            Some(TaskStatus::Failed)
        );
        let error = store.get(failing).await.unwrap().unwrap().error.unwrap();
        assert_eq!(error.chars().count(), MAX_ERROR_CHARS);
        assert!(!error.contains('\0'));
        store.close().await;
    }
}
