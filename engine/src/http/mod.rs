//! Placeholder module: filled by the http work.
