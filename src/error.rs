//! The library's error type: one enum for every failure a caller can see, split into
//! bad input (the user can fix the command: exit 2) and runtime failures (exit 1).

use std::path::PathBuf;

/// Everything that can go wrong inside tidemark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line value, URL, identifier or request body is malformed.
    #[error("{0}")]
    InvalidInput(String),
    /// The source or state URL cannot be understood.
    #[error("invalid database URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The named table does not exist in the source.
    #[error("table {0:?} not found")]
    UnknownTable(String),
    /// A table cannot be captured as asked (no primary key, missing or unfit column, …).
    #[error("table {table:?}: {reason}")]
    UnfitTable { table: String, reason: String },
    /// The database could not be reached or refused the connection.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    /// A statement failed on the database.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An output file could not be written (full disk, file size limit, read-only or
    /// unwritable directory). Its temporary file is removed and nothing is published.
    #[error("{}", write_failure(path, cause))]
    Write {
        path: PathBuf,
        /// The error of the file system (not a `source`: the message already says it).
        cause: std::io::Error,
    },
    /// Another export for the same consumer and table holds the lock.
    #[error("an export for consumer {consumer:?} and table {table:?} is already running")]
    Busy { consumer: String, table: String },
    /// The watermark changed under us (a concurrent writer of state): nothing was committed.
    #[error("watermark of consumer {consumer:?} on table {table:?} changed concurrently; nothing was committed")]
    Conflict { consumer: String, table: String },
    /// Replication met a change the target refuses (constraint, type): it stopped there and
    /// the target's position did not move.
    #[error("cannot apply {change} to {target}: {reason}; replication stopped, the target's position did not move")]
    Apply {
        change: String,
        target: String,
        reason: String,
    },
    /// `tidemark verify` found a broken chain or checksum.
    #[error("verification failed: {0}")]
    Verify(String),
    /// `tidemark status` found a consumer or replica lagging, or a table it cannot read.
    #[error("status {verdict}: {detail}")]
    Unhealthy { verdict: String, detail: String },
    /// Anything else that is the tool's or the environment's fault.
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    /// True for errors the user caused with the command's input; they map to exit code 2.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidInput(_)
                | Error::InvalidUrl { .. }
                | Error::UnknownTable(_)
                | Error::UnfitTable { .. }
        )
    }

    /// True when the database could not be reached (down, refused, timed out): a retry later
    /// may succeed. HTTP answers 503 for these.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Database(e) => matches!(
                e,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            ),
            _ => false,
        }
    }

    /// Shorthand for [`Error::InvalidInput`].
    pub fn input(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Write`]: writing `path` (the file as it would be published)
    /// failed with `cause`.
    pub fn write(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Write {
            path: path.into(),
            cause,
        }
    }
}

/// The message of [`Error::Write`]: what the file system said, in words, and the file.
fn write_failure(path: &std::path::Path, cause: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let what = match cause.kind() {
        ErrorKind::StorageFull => "no space left on device",
        ErrorKind::QuotaExceeded => "disk quota exceeded",
        ErrorKind::FileTooLarge => "file size limit exceeded",
        ErrorKind::ReadOnlyFilesystem => "read-only file system",
        ErrorKind::PermissionDenied => "permission denied",
        _ => return format!("cannot write {}: {cause}", path.display()),
    };
    format!("{what} writing {}", path.display())
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_failures_name_the_file_and_are_runtime_failures() {
        let enospc = Error::write("out/full_c1_x.csv", std::io::Error::from_raw_os_error(28));
        assert_eq!(
            enospc.to_string(),
            "no space left on device writing out/full_c1_x.csv"
        );
        assert!(!enospc.is_input_error());
        let efbig = Error::write("out/a.csv", std::io::Error::from_raw_os_error(27));
        assert_eq!(
            efbig.to_string(),
            "file size limit exceeded writing out/a.csv"
        );
        let erofs = Error::write("out", std::io::Error::from_raw_os_error(30));
        assert_eq!(erofs.to_string(), "read-only file system writing out");
        let other = Error::write("out/a.csv", std::io::Error::other("boom"));
        assert_eq!(other.to_string(), "cannot write out/a.csv: boom");
    }
}
