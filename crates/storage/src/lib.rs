//! Where uploads and results live, the same for the task manager and the workers: a local
//! directory (the default), or an S3-compatible bucket (`STORAGE_URL=s3://bucket/prefix`), for
//! a task manager and workers on machines that share no disk.
//!
//! Both sides name a task's files by storage-relative keys (`raw_data/<id>.csv`,
//! `processed_data/<id>.csv`: `task_protocol`'s layout). A local directory is always there:
//! with a bucket it holds the files being written (an upload's spool, a result before it is
//! stored) and the engine's spills.
//!
//! - [`location`]: `STORAGE_URL` (or `STORAGE_DIR`) read.
//! - [`bucket`]: the bucket, its client configured from the usual `AWS_*` variables.
//! - [`write`]: objects written as multipart uploads, visible only once complete.
//! - [`read`]: an object read as a stream, as the engine's input or a download.
//! - [`layout`]: [`Storage`], the directory and the optional bucket behind one set of keys.

pub mod bucket;
mod error;
pub mod layout;
pub mod location;
pub mod read;
pub mod write;

pub use bucket::{Bucket, BucketOptions, BucketSettings};
pub use error::StorageError;
pub use layout::{Input, Storage};
pub use location::Location;
pub use read::{Download, ObjectReader};
pub use write::{ObjectWriter, PART_BYTES};
