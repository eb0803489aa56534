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
    /// A teardown, or a setup that changes how a table is captured, would invalidate the
    /// positions of the table's consumers and replicas; refused without `--force`.
    #[error("table {table:?} has {}: {action} would drop the changes not yet delivered to them and leave them positions that no capture set-up can read; nothing was changed. Pass --force to go ahead and remove their positions too (their next runs then start from a full read)", users.join(", "))]
    InUse {
        table: String,
        action: &'static str,
        users: Vec<String>,
    },
    /// A stored position was made by another capture set-up of the table than the current one;
    /// reading it would skip or repeat changes, so it is not used.
    #[error("the position of {who} for table {table:?} was made by an earlier capture set-up ({reason}); {remedy}")]
    StalePosition {
        who: String,
        table: String,
        reason: String,
        remedy: &'static str,
    },
    /// A delta or incremental export of a consumer that has exported the table before but has
    /// no position now: from nothing it could not carry the rows deleted since.
    #[error("consumer {consumer:?} has exported table {table:?} before but has no position in it now (removed by teardown --force, a change of its capture or watermark reset); a {mode} export from nothing cannot carry the rows deleted since its last export, so nothing was exported; take a full export to start again")]
    PositionGone {
        consumer: String,
        table: String,
        mode: String,
    },
    /// `tidemark verify` found a broken chain or checksum.
    #[error("verification failed: {0}")]
    Verify(String),
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
                | Error::InUse { .. }
                | Error::StalePosition { .. }
                | Error::PositionGone { .. }
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
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
