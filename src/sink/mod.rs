//! Where exported files go: files that appear only complete (written aside, flushed, renamed).
//! The encodings of their contents live in [`crate::format`].

pub mod file;

/// The CSV format moved to [`crate::format::csv`]; this path stays for existing callers.
pub use crate::format::csv;
