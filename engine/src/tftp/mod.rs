//! Placeholder module: filled by the tftp work.
