//! The lease keeper, in RabbitMQ mode only (embedded tasks have no workers): a task whose
//! worker stopped reporting for longer than its lease (see `store::lease`) is published
//! again, or abandoned as FAILED once `TASK_MAX_LEASES` of its leases expired.
//!
//! RabbitMQ's own redelivery cannot do this: the message of a task that runs longer than the
//! broker's consumer timeout comes back while its worker still runs it, and is acknowledged
//! by whoever gets it while the lease is live; once the lease is gone, only this keeper
//! knows that the task must run again.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::QueueError;
use crate::store::{ExpiredLease, Store};

/// Bounds of the pause between two rounds (a quarter of the lease timeout).
const MIN_ROUND: Duration = Duration::from_millis(100);
const MAX_ROUND: Duration = Duration::from_secs(10);

/// How leases are kept.
#[derive(Debug, Clone, Copy)]
pub struct LeasePolicy {
    /// How long a lease lasts without a report (`TASK_LEASE_TIMEOUT`).
    pub timeout: Duration,
    /// Expired leases after which a task is abandoned (`TASK_MAX_LEASES`).
    pub max_leases: u32,
}

impl LeasePolicy {
    /// The pause between two rounds: a fraction of the lease timeout.
    pub fn round(&self) -> Duration {
        (self.timeout / 4).clamp(MIN_ROUND, MAX_ROUND)
    }
}

/// The background task that republishes the tasks whose lease expired.
pub struct LeaseKeeper {
    stop: CancellationToken,
    running: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts keeping the leases of `store`'s tasks, handing the tasks to publish again to
    /// `republish`. The first round comes one lease timeout after the start: workers could
    /// not renew their leases while the task manager was down.
    pub fn start<P, F>(store: Store, policy: LeasePolicy, republish: P) -> LeaseKeeper
    where
        P: Fn(Uuid) -> F + Send + Sync + 'static,
        F: Future<Output = Result<(), QueueError>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let running = tokio::spawn(keep(store, policy, republish, stop.clone()));
        LeaseKeeper { stop, running }
    }

    /// Stops the keeper, waiting for a round in progress.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.running.await {
            tracing::error!("the lease keeper failed: {e}");
        }
    }
}

async fn keep<P, F>(store: Store, policy: LeasePolicy, republish: P, stop: CancellationToken)
where
    P: Fn(Uuid) -> F,
    F: Future<Output = Result<(), QueueError>>,
{
    let mut pause = policy.timeout;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = policy.round();
        let expired = match store.expired_leases().await {
            Ok(expired) => expired,
            Err(e) => {
                tracing::warn!("lease keeper: cannot read the expired leases: {e}");
                continue;
            }
        };
        for lease in expired {
            if stop.is_cancelled() {
                return;
            }
            renew_or_abandon(&store, policy, &republish, lease).await;
        }
    }
}

/// Publishes the task of an expired lease again, or abandons it after too many expiries.
async fn renew_or_abandon<P, F>(
    store: &Store,
    policy: LeasePolicy,
    republish: &P,
    lease: ExpiredLease,
) where
    P: Fn(Uuid) -> F,
    F: Future<Output = Result<(), QueueError>>,
{
    let id = lease.id;
    let expiries = lease.earlier_expiries.saturating_add(1);
    if expiries >= policy.max_leases {
        let error = format!(
            "abandoned: its worker stopped reporting {expiries} times; the task was interrupted \
             each time (worker killed, stuck, or cut off from the task manager for longer than \
             TASK_LEASE_TIMEOUT); TASK_MAX_LEASES sets the limit"
        );
        match store.abandon(id, &error).await {
            Ok(true) => tracing::error!(task_id = %id, %error, "task abandoned"),
            Ok(false) => {}
            Err(e) => tracing::warn!(task_id = %id, "lease keeper: cannot abandon the task: {e}"),
        }
        return;
    }
    match store.reclaim_lease(id).await {
        Ok(true) => {}
        // Renewed or finished meanwhile.
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(task_id = %id, "lease keeper: cannot reclaim the lease: {e}");
            return;
        }
    }
    match republish(id).await {
        Ok(()) => tracing::warn!(
            task_id = %id,
            expiries,
            "the task's worker stopped reporting past its lease: task published again"
        ),
        Err(e) => {
            tracing::warn!(task_id = %id, "lease keeper: cannot publish the task again: {e}");
            if let Err(e) = store.unreclaim_lease(id).await {
                tracing::warn!(task_id = %id, "lease keeper: cannot restore the lease: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use parking_lot::Mutex;
    use task_protocol::{TaskStatus, WorkerEvent};

    #[test]
    fn rounds_are_a_fraction_of_the_lease() {
        let policy = |secs| LeasePolicy {
            timeout: Duration::from_secs(secs),
            max_leases: 5,
        };
        assert_eq!(policy(120).round(), Duration::from_secs(10));
        assert_eq!(policy(8).round(), Duration::from_secs(2));
        assert_eq!(policy(0).round(), MIN_ROUND);
    }

    #[tokio::test]
    async fn expired_leases_are_republished_then_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let url = crate::settings::default_database_url(dir.path());
        let store = Store::connect(&url, Duration::from_secs(5)).await.unwrap();
        let lease = Duration::from_millis(200);
        let id = Uuid::new_v4();
        store.insert(id, None, 10).await.unwrap();
        let published = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(Mutex::new(true));
        let keeper = {
            let (published, failing) = (published.clone(), failing.clone());
            let policy = LeasePolicy {
                timeout: lease,
                max_leases: 3,
            };
            LeaseKeeper::start(store.clone(), policy, move |id| {
                let result = if *failing.lock() {
                    Err(QueueError::Unavailable("broker down".into()))
                } else {
                    published.lock().push(id);
                    Ok(())
                };
                async move { result }
            })
        };
        let started = WorkerEvent::Started;
        let take = |worker: &'static str| {
            let store = store.clone();
            let started = started.clone();
            async move { store.apply_report(id, &started, Some(worker), lease).await }
        };
        take("a").await.unwrap();
        // The broker is down: the lease stays expired, its expiry uncounted.
        tokio::time::sleep(lease * 3).await;
        assert!(published.lock().is_empty());
        *failing.lock() = false;
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut taken = 0;
        while taken < 2 {
            // Each republished task is started by another worker that goes silent.
            if published.lock().len() > taken {
                taken += 1;
                take("b").await.unwrap();
            }
            assert!(tokio::time::Instant::now() < until, "not republished twice");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while store.get(id).await.unwrap().unwrap().status != TaskStatus::Failed {
            assert!(tokio::time::Instant::now() < until, "not abandoned");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let task = store.get(id).await.unwrap().unwrap();
        let error = task.error.unwrap_or_default();
        assert!(error.contains("stopped reporting 3 times"), "{error}");
        assert_eq!(*published.lock(), [id, id]);
        keeper.shutdown().await;
        store.close().await;
    }
}
