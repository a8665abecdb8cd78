//! Upload ingestion.

pub mod arrival;
mod flush_behind;
pub mod spool;
