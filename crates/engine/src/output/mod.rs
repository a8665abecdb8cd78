//! The output stage: CSV formatting, the writer thread, and the output file.

pub(crate) mod csv;
pub(crate) mod file;
pub(crate) mod writer;
