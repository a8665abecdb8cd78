//! The tasks a worker is handling. After a lost connection RabbitMQ redelivers the messages
//! of the tasks still running here; such a redelivery waits for the run to end (and then
//! finds the task finished) instead of running the task a second time beside it.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use uuid::Uuid;

/// One lock per task being handled.
#[derive(Debug, Default)]
pub struct RunningTasks(Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>);

impl RunningTasks {
    /// Runs `work` for task `id` once no other handling of the same task runs.
    pub async fn exclusive<T>(&self, id: Uuid, work: impl Future<Output = T>) -> T {
        let lock = self.entries().entry(id).or_default().clone();
        let result = {
            let _guard = lock.lock().await;
            work.await
        };
        let mut entries = self.entries();
        // References: the map's and `lock`; more means another handling waits.
        if Arc::strong_count(&lock) == 2 {
            entries.remove(&id);
        }
        result
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>> {
        self.0.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handlings_of_one_task_do_not_overlap() {
        let running = Arc::new(RunningTasks::default());
        let inside = Arc::new(AtomicU32::new(0));
        let id = Uuid::new_v4();
        let handlings: Vec<_> = (0..4)
            .map(|_| {
                let (running, inside) = (running.clone(), inside.clone());
                tokio::spawn(async move {
                    running
                        .exclusive(id, async {
                            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "overlap");
                            tokio::task::yield_now().await;
                            inside.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                })
            })
            .collect();
        for handling in handlings {
            handling.await.unwrap();
        }
        // Another task does not wait for this one's lock, and nothing is left behind.
        let _other = running.entries().entry(Uuid::new_v4()).or_default().clone();
        running.exclusive(id, async {}).await;
        assert_eq!(running.entries().len(), 1);
    }
}
