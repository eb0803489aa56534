//! Where exported rows go: the CSV format of the product (RFC 4180, NULL as an empty unquoted
//! field) and files that appear only complete (written aside, flushed, renamed).

pub mod csv;
pub mod file;
