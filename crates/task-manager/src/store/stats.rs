//! What the metrics take from the task database: the first start and the end of each task,
//! noted by the change that made them (so each counts once, whichever replica or worker
//! reported it), and the counts read at a scrape.

use std::time::Duration;

use sqlx::Row;
use task_protocol::TaskStatus;
use uuid::Uuid;

use super::{NOT_TERMINAL, Store, StoreError, now_millis};
use crate::metrics::{self, Finished};

impl Store {
    /// Notes a task's first start: its time in the queue. A failure costs a sample, never
    /// the event.
    pub(super) async fn note_start(&self, id: Uuid, now: i64) {
        if let Err(e) = self.try_note_start(id, now).await {
            tracing::warn!(task_id = %id, "metrics: cannot note the task's start: {e}");
        }
    }

    async fn try_note_start(&self, id: Uuid, now: i64) -> Result<(), StoreError> {
        let first = self
            .query("UPDATE tasks SET started_at = ? WHERE id = ? AND started_at IS NULL")
            .bind(now)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        if first.rows_affected() == 1
            && let Some(task) = self.get(id).await?
        {
            metrics::task_started(millis_between(task.created_at, now));
        }
        Ok(())
    }

    /// Notes the end of a task that the caller's update just ended.
    pub(super) async fn note_end(&self, id: Uuid, now: i64) {
        let task = match self.get(id).await {
            Ok(task) => task,
            Err(e) => {
                tracing::warn!(task_id = %id, "metrics: cannot note the task's end: {e}");
                return;
            }
        };
        if let Some(task) = task {
            metrics::task_finished(&Finished {
                status: task.status,
                processing: task.started_at.map(|started| millis_between(started, now)),
                rows: task.rows,
                input_bytes: task.input_bytes,
                output_bytes: task.output_bytes,
            });
        }
    }

    /// The number of tasks in each status, zeros included.
    pub async fn count_by_status(&self) -> Result<Vec<(TaskStatus, u64)>, StoreError> {
        let rows = self
            .query("SELECT status, COUNT(*) FROM tasks GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        let mut counts: Vec<(TaskStatus, u64)> = TaskStatus::ALL
            .into_iter()
            .map(|status| (status, 0))
            .collect();
        for row in rows {
            let status: String = row.try_get(0)?;
            let count: i64 = row.try_get(1)?;
            if let Some(entry) = counts.iter_mut().find(|(s, _)| s.as_str() == status) {
                entry.1 = u64::try_from(count).unwrap_or(0);
            }
        }
        Ok(counts)
    }

    /// How long the oldest task not yet started has waited (`None`: none waits).
    pub async fn oldest_waiting(&self) -> Result<Option<Duration>, StoreError> {
        let row = self
            .query_owned(format!(
                "SELECT MIN(created_at) FROM tasks WHERE {NOT_TERMINAL} AND started_at IS NULL"
            ))
            .fetch_one(&self.pool)
            .await?;
        let oldest: Option<i64> = row.try_get(0)?;
        Ok(oldest.map(|created| millis_between(created, now_millis())))
    }
}

/// The time from `from` to `to`, unix milliseconds; zero if `to` is earlier.
fn millis_between(from: i64, to: i64) -> Duration {
    Duration::from_millis(u64::try_from(to.saturating_sub(from)).unwrap_or(0))
}
