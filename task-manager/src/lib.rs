//! Task manager (placeholder).
