//! Runs one task on the engine and reports on it. The embedded queue of the task manager and
//! the `processor worker` both run their tasks here; they differ only in where the reports go
//! (the database, or HTTP callbacks to the task manager), which is the [`Report`] they pass.
//!
//! - [`job`]: what the engine reads and writes for a task, and the blocking thread it runs on;
//! - [`supervise`]: progress reports while the engine runs, cancellation, and how the run ended;
//! - [`backoff`]: the delays between retries, for every retry loop of the service;
//! - [`settings`]: how the settings the task manager and the worker share are written.

pub mod backoff;
pub mod job;
pub mod settings;
pub mod supervise;

pub use job::{Engine, GrowingFile, Job, Source};
pub use supervise::{End, Report, done_event, supervise};
