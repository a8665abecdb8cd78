//! Task leases: which worker process runs a task, and until when. A worker that names itself
//! in its reports takes a task's lease when it starts it and renews it with every progress
//! report; while the lease is live, another worker handed the same task (RabbitMQ gave its
//! message back, e.g. after a consumer timeout) is told to leave it (`elsewhere`), so that a
//! task never runs twice at once. A lease that expired is the lease keeper's (see
//! `queue::lease_keeper`): it republishes the task, or abandons it after too many expiries.
//!
//! Every rule is one guarded `UPDATE`, so concurrent reports and the keeper cannot both win;
//! what happened is read back from the row.

use std::time::Duration;

use sqlx::Row;
use task_protocol::{EventAck, TaskStatus, WorkerEvent};
use uuid::Uuid;

use super::{
    MAX_ERROR_CHARS, NOT_TERMINAL, Store, StoreError, now_millis, parse_status, permille, to_i64,
    truncate,
};

/// `WHERE` clause of the updates a worker may make: the lease is free, its own, or expired.
/// Binds the worker's id, then now.
const LEASE_ALLOWS: &str = "(lease_owner IS NULL OR lease_owner = ? \
     OR lease_expires_at IS NULL OR lease_expires_at < ?)";

/// Longest worker id kept (the column is `VARCHAR(255)`).
const MAX_WORKER_CHARS: usize = 255;

/// A `PROCESSING` task whose lease expired: its worker stopped reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiredLease {
    pub id: Uuid,
    /// How many of its leases had expired before this one.
    pub earlier_expiries: u32,
}

impl Store {
    /// Applies the report of `worker` (`None`: an older worker, no lease) under the lease
    /// rules, a lease lasting `lease`; the task's status afterwards and whether another
    /// worker holds its live lease (`None`: unknown task).
    ///
    /// - STARTED and PROGRESS take or renew the lease, unless another worker's lease is live:
    ///   then nothing changes and the answer says `elsewhere`.
    /// - FAILED is refused the same way (the task goes on elsewhere).
    /// - DONE is accepted from anyone: results are deterministic and stored before DONE.
    /// - RELEASED ends the worker's own lease; the keeper republishes the task one lease
    ///   later unless a worker starts it before.
    pub async fn apply_report(
        &self,
        id: Uuid,
        event: &WorkerEvent,
        worker: Option<&str>,
        lease: Duration,
    ) -> Result<Option<EventAck>, StoreError> {
        let Some(worker) = worker else {
            let status = self.apply_event(id, event).await?;
            return Ok(status.map(EventAck::of));
        };
        let worker = truncate(worker, MAX_WORKER_CHARS);
        let now = now_millis();
        let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let query = match event {
            WorkerEvent::Done { .. } => {
                let status = self.apply_event(id, event).await?;
                return Ok(status.map(EventAck::of));
            }
            WorkerEvent::Started => self
                .query_owned(format!(
                    "UPDATE tasks SET status = 'PROCESSING', updated_at = ?, lease_owner = ?, \
                     lease_expires_at = ? WHERE id = ? AND {NOT_TERMINAL} AND {LEASE_ALLOWS}"
                ))
                .bind(now)
                .bind(worker.clone())
                .bind(until),
            WorkerEvent::Progress { progress, rows } => self
                .query_owned(format!(
                    "UPDATE tasks SET status = 'PROCESSING', updated_at = ?, \
                     progress_permille = ?, rows_read = ?, lease_owner = ?, lease_expires_at = ? \
                     WHERE id = ? AND {NOT_TERMINAL} AND {LEASE_ALLOWS}"
                ))
                .bind(now)
                .bind(i64::from(permille(*progress)))
                .bind(to_i64(*rows))
                .bind(worker.clone())
                .bind(until),
            WorkerEvent::Failed { error } => self
                .query_owned(format!(
                    "UPDATE tasks SET status = 'FAILED', updated_at = ?, error_message = ?, \
                     lease_owner = NULL, lease_expires_at = NULL \
                     WHERE id = ? AND {NOT_TERMINAL} AND {LEASE_ALLOWS}"
                ))
                .bind(now)
                .bind(truncate(error, MAX_ERROR_CHARS)),
            WorkerEvent::Released => {
                self.query_owned(format!(
                    "UPDATE tasks SET lease_owner = NULL, lease_expires_at = ? \
                     WHERE id = ? AND lease_owner = ? AND {NOT_TERMINAL}"
                ))
                .bind(until)
                .bind(id.to_string())
                .bind(worker)
                .execute(&self.pool)
                .await?;
                return Ok(self.status(id).await?.map(EventAck::of));
            }
        };
        // The guard's values: the task, then [`LEASE_ALLOWS`]'s.
        let changed = query
            .bind(id.to_string())
            .bind(worker.clone())
            .bind(now)
            .execute(&self.pool)
            .await?;
        self.changes.notify_waiters();
        // FAILED always changes the row, so MySQL counts it too.
        if matches!(event, WorkerEvent::Failed { .. }) && changed.rows_affected() == 1 {
            self.note_end(id, now).await;
        }
        // Read back rather than counting rows: MySQL counts the rows changed, not matched.
        let Some((status, owner)) = self.lease_of(id).await? else {
            return Ok(None);
        };
        let elsewhere = !status.is_terminal() && owner.is_some_and(|owner| owner != worker);
        if matches!(event, WorkerEvent::Started) && status == TaskStatus::Processing && !elsewhere {
            self.note_start(id, now).await;
        }
        if elsewhere {
            tracing::info!(
                task_id = %id,
                %worker,
                ?event,
                "another worker holds the task's lease: event not applied"
            );
        }
        Ok(Some(EventAck { status, elsewhere }))
    }

    /// The task's status and lease owner.
    async fn lease_of(&self, id: Uuid) -> Result<Option<(TaskStatus, Option<String>)>, StoreError> {
        let row = self
            .query("SELECT status, lease_owner FROM tasks WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let status = parse_status(&id.to_string(), &row.try_get::<String, _>(0)?)?;
        Ok(Some((status, row.try_get(1)?)))
    }

    /// The `PROCESSING` tasks whose lease has expired, the longest expired first.
    pub async fn expired_leases(&self) -> Result<Vec<ExpiredLease>, StoreError> {
        let rows = self
            .query(
                "SELECT id, lease_expiries FROM tasks \
                 WHERE status = 'PROCESSING' AND lease_expires_at < ? ORDER BY lease_expires_at",
            )
            .bind(now_millis())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0)?;
                let expiries: i64 = row.try_get(1)?;
                Ok(ExpiredLease {
                    id: Uuid::parse_str(&id).map_err(|_| StoreError::Corrupt {
                        id: id.clone(),
                        column: "id",
                        value: id.clone(),
                    })?,
                    earlier_expiries: u32::try_from(expiries).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    /// Takes an expired lease back to republish the task: the lease is cleared and its
    /// expiry counted. False when the task moved on meanwhile (renewed, ended).
    pub async fn reclaim_lease(&self, id: Uuid) -> Result<bool, StoreError> {
        let now = now_millis();
        let done = self
            .query(
                "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, \
                 lease_expiries = lease_expiries + 1, updated_at = ? \
                 WHERE id = ? AND status = 'PROCESSING' AND lease_expires_at < ?",
            )
            .bind(now)
            .bind(id.to_string())
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Undoes [`Store::reclaim_lease`] when the task could not be republished: the lease is
    /// expired again (the keeper tries at its next round) and the expiry no longer counted,
    /// unless a worker took the task meanwhile.
    pub async fn unreclaim_lease(&self, id: Uuid) -> Result<(), StoreError> {
        self.query(
            "UPDATE tasks SET lease_expires_at = ?, lease_expiries = lease_expiries - 1 \
             WHERE id = ? AND status = 'PROCESSING' AND lease_owner IS NULL \
             AND lease_expires_at IS NULL AND lease_expiries > 0",
        )
        .bind(now_millis())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a task whose lease expired `FAILED` with `error`, unless it moved on meanwhile;
    /// whether it did.
    pub async fn abandon(&self, id: Uuid, error: &str) -> Result<bool, StoreError> {
        let now = now_millis();
        let done = self
            .query(
                "UPDATE tasks SET status = 'FAILED', error_message = ?, updated_at = ?, \
                 lease_owner = NULL, lease_expires_at = NULL, lease_expiries = lease_expiries + 1 \
                 WHERE id = ? AND status = 'PROCESSING' AND lease_expires_at < ?",
            )
            .bind(truncate(error, MAX_ERROR_CHARS))
            .bind(now)
            .bind(id.to_string())
            .bind(now)
            .execute(&self.pool)
            .await?;
        self.changes.notify_waiters();
        let abandoned = done.rows_affected() == 1;
        if abandoned {
            self.note_end(id, now).await;
        }
        Ok(abandoned)
    }
}

#[cfg(test)]
mod tests;
