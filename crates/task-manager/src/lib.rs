//! The task manager: an HTTP API (axum on hyper) that takes CSV uploads, records tasks in a
//! database (SQLite, MariaDB/MySQL or PostgreSQL through sqlx) and hands them to the
//! processor workers over RabbitMQ, or, when no `AMQP_URL` is set, runs the engine
//! in-process (embedded mode).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let server = task_manager::start(task_manager::Settings::from_env()?).await?;
//! println!("listening on {}", server.base_url());
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod filenames;
mod http;
mod ingest;
mod metrics;
mod queue;
mod retention;
mod server;
mod settings;
mod store;
mod tokens;

pub use server::{Server, start};
pub use settings::{
    DEFAULT_MAX_CONCURRENT_UPLOADS, DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_PORT, DEFAULT_STORAGE_DIR,
    Settings, default_database_url,
};
pub use tokens::Tokens;
