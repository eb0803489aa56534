//! Where exported files go: files that appear only complete (written aside, flushed, renamed).
//! The encodings of their contents live in [`crate::format`].

pub mod file;
