//! The aggregation stage: each worker sums its rows per (song, date) in tables of its own.

pub(crate) mod days;
pub(crate) mod hash;
pub(crate) mod hot;
pub(crate) mod shards;
pub(crate) mod table;
