//! Removes a test's queue and database when the test panics before its own cleanup.

use sqlx::migrate::MigrateDatabase;

/// Deletes `queue` and drops `database` (a server database URL) if dropped during a panic.
pub struct CleanupOnPanic {
    pub queue: String,
    pub database: Option<String>,
}

impl Drop for CleanupOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let queue = self.queue.clone();
        let database = self.database.take();
        // A runtime of its own on a thread of its own: this runs inside the test's runtime.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                crate::delete_queue(&queue).await;
                if let Some(url) = database {
                    let _ = sqlx::Any::force_drop_database(&url).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
