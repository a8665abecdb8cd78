//! The spill stage: the memory budget, and the sorted runs the tables are written to when
//! they outgrow it.

pub(crate) mod budget;
pub(crate) mod index;
pub(crate) mod rounds;
pub(crate) mod run;
