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
    /// The schema (PostgreSQL), database (MySQL) or attached database (SQLite: only `main`)
    /// a table name names does not exist: like an unknown table, "not found".
    #[error("{0}")]
    UnknownSchema(String),
    /// A table cannot be captured as asked (no primary key, missing or unfit column, …).
    #[error("table {table:?}: {reason}")]
    UnfitTable { table: String, reason: String },
    /// The database could not be reached or refused the connection: `failure` names why in
    /// words a person acts on, `detail` is the server's or the system's message without the
    /// driver's decoration (empty when the failure says it all).
    #[error("cannot connect to {target}: {}", connect_failure(*failure, detail))]
    Connect {
        target: String,
        failure: ConnectFailure,
        detail: String,
    },
    /// A statement failed on the database. Printed without the driver's decoration (no "error
    /// returned from database:", no PostgreSQL source line), a missing privilege named as such.
    #[error("database error: {}", database_message(.0))]
    Database(sqlx::Error),
    /// A statement failed on a SQLite connection tidemark drives itself (rusqlite: the
    /// snapshot reader), classified as sqlx's are.
    #[error("database error: SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
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
    /// `tidemark status` found a consumer or replica lagging, or a table it cannot read.
    #[error("status {verdict}: {detail}")]
    Unhealthy { verdict: String, detail: String },
    /// The database user lacks a privilege tidemark needs for what was asked; `needs` names
    /// it (`SELECT on table users`). Checked or caught before anything is changed: the user
    /// (or their DBA) can fix it, so it is bad input (exit 2), never retried.
    #[error("permission denied: tidemark needs {needs}")]
    Permission { needs: String },
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
                | Error::UnknownSchema(_)
                | Error::UnfitTable { .. }
                | Error::InUse { .. }
                | Error::StalePosition { .. }
                | Error::PositionGone { .. }
                | Error::Permission { .. }
        )
    }

    /// True when the database refused a statement for lack of a privilege (PostgreSQL
    /// SQLSTATE 42501; MariaDB/MySQL 1142 table, 1143 column, 1044 database, 1227 global
    /// privilege, 1370 routine, 1419 SUPER for triggers with binary logging).
    pub fn is_permission_denied(&self) -> bool {
        match self {
            Error::Permission { .. } => true,
            Error::Database(sqlx::Error::Database(d)) => {
                if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    pg.code() == "42501"
                } else if let Some(my) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                    matches!(my.number(), 1044 | 1142 | 1143 | 1227 | 1370 | 1419)
                } else {
                    false
                }
            }
            _ => false,
        }
    }

    /// A connection refused because the user may not use the database at all (PostgreSQL
    /// CONNECT, SQLSTATE 42501; MariaDB 1044, a user without any privilege on it) as
    /// [`Error::Permission`]; a wrong password and everything else stay as they are.
    pub fn denied_database(self, url: &crate::db::DbUrl) -> Self {
        let Error::Connect {
            failure: ConnectFailure::Privilege,
            ..
        } = &self
        else {
            return self;
        };
        let name = url
            .as_str()
            .split('?')
            .next()
            .and_then(|u| u.rsplit('/').next())
            .unwrap_or_default()
            .to_string();
        let needs = match url.kind() {
            crate::db::DbKind::Mysql => format!(
                "a privilege on database {name} to connect to it (MariaDB lets a user in only \
                 with some grant there, such as SELECT on the table)"
            ),
            _ => format!("CONNECT on database {name}"),
        };
        Error::Permission { needs }
    }

    /// This error, or [`Error::Permission`] naming `needs()` when the database refused it for
    /// lack of a privilege: one clear line instead of the driver's.
    pub fn needing(self, needs: impl FnOnce() -> String) -> Self {
        match self {
            Error::Permission { .. } => self,
            e if e.is_permission_denied() => {
                tracing::debug!(error = %e, "refused for lack of a privilege");
                Error::Permission { needs: needs() }
            }
            e => e,
        }
    }

    /// True when the database could not be reached (down, refused, timed out): a retry later
    /// may succeed. HTTP answers 503 for these.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Connect { failure, .. } => failure.may_pass(),
            Error::Database(e) => matches!(
                e,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            ),
            _ => false,
        }
    }

    /// True when another connection holds a SQLite file's lock (SQLITE_BUSY or SQLITE_LOCKED,
    /// with their extended codes), whether sqlx or rusqlite met it.
    pub fn is_sqlite_busy(&self) -> bool {
        match self {
            Error::Database(sqlx::Error::Database(d))
                if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() =>
            {
                d.code()
                    .and_then(|c| c.parse::<i64>().ok())
                    .is_some_and(|c| matches!(c & 0xff, 5 | 6))
            }
            Error::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }

    /// True for failures a retry can cure: the database unreachable or restarting, the
    /// connection lost, a deadlock, a serialization failure, a busy or locked SQLite file
    /// (whether sqlx or rusqlite met it).
    pub fn is_transient(&self) -> bool {
        if self.is_unavailable() {
            return true;
        }
        match self {
            Error::Database(e) => match e {
                sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(d) => {
                    if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                        let code = pg.code();
                        code.starts_with("08")
                            || code.starts_with("57P")
                            || matches!(code, "40001" | "40P01" | "53300" | "55P03")
                    } else if let Some(my) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    {
                        matches!(my.number(), 1205 | 1213 | 1927 | 2006 | 2013 | 1053)
                    } else if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
                        self.is_sqlite_busy()
                    } else {
                        false
                    }
                }
                _ => false,
            },
            Error::Sqlite(_) => self.is_sqlite_busy(),
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

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Database(e)
    }
}

/// Why a connection to a database could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Nothing listens at the address ("connection refused").
    Refused,
    /// The host name does not resolve.
    UnknownHost,
    /// No answer within the connect timeout.
    TimedOut,
    /// The server refused the user name or password.
    BadCredentials,
    /// The database named in the URL does not exist.
    UnknownDatabase,
    /// The server accepts only TLS connections and the URL turned TLS off.
    TlsRequired,
    /// TLS was asked for and failed: the server does not offer it, or its certificate is not
    /// trusted (wrong or missing CA, name mismatch).
    Tls,
    /// The user may not connect to that database.
    Privilege,
    /// The network failed otherwise (reset, unreachable network, …).
    Network,
    /// Anything else the server said while connecting.
    Other,
}

impl ConnectFailure {
    /// False when waiting cannot cure it (wrong password, unknown database, TLS refused or
    /// untrusted, missing privilege): the person must change the URL or the server, so
    /// retrying (replication, `--follow`) would only hide it.
    pub fn may_pass(self) -> bool {
        !matches!(
            self,
            ConnectFailure::BadCredentials
                | ConnectFailure::UnknownDatabase
                | ConnectFailure::TlsRequired
                | ConnectFailure::Tls
                | ConnectFailure::Privilege
        )
    }
}

/// The message of [`Error::Connect`].
fn connect_failure(failure: ConnectFailure, detail: &str) -> String {
    let what = match failure {
        ConnectFailure::Refused => {
            "connection refused (is the server running and listening there?)"
        }
        ConnectFailure::UnknownHost => "unknown host",
        ConnectFailure::TimedOut => "no answer (connect timeout)",
        ConnectFailure::BadCredentials => "wrong user or password",
        ConnectFailure::UnknownDatabase => "unknown database",
        ConnectFailure::TlsRequired => "the server requires TLS but the URL disables it",
        ConnectFailure::Tls => "TLS failed",
        ConnectFailure::Privilege => "missing privilege",
        ConnectFailure::Network | ConnectFailure::Other => "",
    };
    if failure == ConnectFailure::UnknownDatabase && !detail.is_empty() {
        return format!("{what} {detail}");
    }
    match (what.is_empty(), detail.is_empty()) {
        (_, true) => what.to_string(),
        (true, false) => detail.to_string(),
        (false, false) => format!("{what}: {detail}"),
    }
}

/// The server's own message of a database error, without the driver's decoration: sqlx's
/// "error returned from database:" prefix and PostgreSQL's "at line N" (a line of the server's
/// C source). Other sqlx errors keep their text.
pub fn server_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        other => other.to_string(),
    }
}

/// True when the server refused a statement or a connection for want of a privilege
/// (PostgreSQL 42501; MySQL/MariaDB access denied to a database, table, column or command).
pub fn is_privilege_error(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(d) = e else {
        return false;
    };
    if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        pg.code() == "42501"
    } else if let Some(my) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        matches!(my.number(), 1044 | 1142 | 1143 | 1227 | 1370)
    } else {
        false
    }
}

/// The message of [`Error::Database`].
fn database_message(e: &sqlx::Error) -> String {
    let message = server_message(e);
    if is_privilege_error(e) {
        format!("missing privilege: {message}")
    } else {
        message
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

    fn sqlite_failure(code: std::os::raw::c_int) -> Error {
        Error::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            Some("x".into()),
        ))
    }

    #[test]
    fn rusqlite_busy_and_locked_are_transient_like_sqlx() {
        // SQLITE_BUSY, SQLITE_LOCKED and an extended code of each (BUSY_SNAPSHOT, LOCKED_SHAREDCACHE).
        for code in [5, 6, 517, 262] {
            let e = sqlite_failure(code);
            assert!(e.is_transient(), "{code}: {e}");
            assert!(!e.is_input_error());
        }
        // SQLITE_CONSTRAINT, SQLITE_CORRUPT, a bad statement: not cured by a retry.
        for code in [19, 11] {
            assert!(!sqlite_failure(code).is_transient(), "{code}");
        }
        assert!(!Error::from(rusqlite::Error::InvalidQuery).is_transient());
        assert!(sqlite_failure(5)
            .to_string()
            .starts_with("database error: SQLite:"));
    }

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
