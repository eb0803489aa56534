//! Reaching a server database (PostgreSQL, MySQL/MariaDB): the URL's parameters checked before
//! anything is done, one connection attempt bounded by [`CONNECT_TIMEOUT`], and its failure
//! named in words a person can act on (connection refused, unknown host, wrong password, unknown
//! database, TLS required or failed, missing privilege) instead of the pool's "timed out".

use std::time::Duration;

use sqlx::Connection as _;

use super::DbKind;
use crate::error::{server_message, ConnectFailure, Error, Result};

/// How long one connection attempt may take (TCP, TLS and authentication) before tidemark says
/// the server does not answer. sqlx's pool would instead retry a refused connection until its
/// acquire timeout and then report only that it timed out.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// The query parameters sqlx's PostgreSQL driver understands (it ignores any other silently).
const PG_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The query parameters sqlx's MySQL driver understands (it ignores any other silently).
const MYSQL_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslca",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "charset",
    "collation",
    "statement-cache-capacity",
    "socket",
    "timezone",
    "time-zone",
];

const PG_SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];
const MYSQL_SSL_MODES: &[&str] = &[
    "DISABLED",
    "PREFERRED",
    "REQUIRED",
    "VERIFY_CA",
    "VERIFY_IDENTITY",
];

/// Checks the query parameters of a PostgreSQL or MySQL URL: each one the driver knows, a TLS
/// mode it knows, and every file a parameter names (CA, client certificate and key) present.
/// Returns the reason a URL is refused.
pub(super) fn check_parameters(kind: DbKind, url: &str) -> std::result::Result<(), String> {
    let (known, modes, engine) = match kind {
        DbKind::Postgres => (PG_PARAMETERS, PG_SSL_MODES, "PostgreSQL"),
        DbKind::Mysql => (MYSQL_PARAMETERS, MYSQL_SSL_MODES, "MySQL/MariaDB"),
        DbKind::Sqlite => return Ok(()),
    };
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    for (key, value) in parsed.query_pairs() {
        let key = key.as_ref();
        let pg_option = kind == DbKind::Postgres && key.starts_with("options[");
        if !known.contains(&key) && !pg_option {
            return Err(format!(
                "unknown parameter {key:?} (the {engine} driver knows {})",
                known.join(", ")
            ));
        }
        match key {
            "sslmode" | "ssl-mode" if !modes.iter().any(|m| m.eq_ignore_ascii_case(&value)) => {
                return Err(format!(
                    "unknown {key} {value:?} (one of {})",
                    modes.join(", ")
                ));
            }
            "sslrootcert" | "ssl-root-cert" | "ssl-ca" | "sslca" | "sslcert" | "ssl-cert"
            | "sslkey" | "ssl-key" => {
                // The drivers also take the PEM text itself.
                if value.starts_with("-----BEGIN") {
                    continue;
                }
                let what = if key.contains("key") {
                    "key file"
                } else if key.contains("cert") && !key.contains("root") {
                    "certificate file"
                } else {
                    "CA file"
                };
                match std::fs::metadata(value.as_ref()) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => return Err(format!("{what} {value:?} ({key}) is not a file")),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(format!("{what} {value:?} ({key}) does not exist"))
                    }
                    Err(e) => return Err(format!("{what} {value:?} ({key}): {e}")),
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why the driver refused a URL, without its "error with configuration:" prefix.
pub(super) fn url_reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// What the classification of a failed connection needs to know about its target.
pub(super) struct Target<'a> {
    /// The URL without its password.
    pub redacted: String,
    pub host: &'a str,
    pub database: Option<&'a str>,
    /// The URL's parameter that turned TLS off (`sslmode=disable`), if any.
    pub tls_off: Option<&'static str>,
}

/// Opens one connection with `options` within [`CONNECT_TIMEOUT`] and closes it again; a
/// failure comes back as [`Error::Connect`] saying why.
pub(super) async fn probe<O>(options: &O, target: &Target<'_>) -> Result<()>
where
    O: sqlx::ConnectOptions,
    O::Connection: Sized,
{
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(classify(&e, target)),
        Err(_) => Err(Error::Connect {
            target: target.redacted.clone(),
            failure: ConnectFailure::TimedOut,
            detail: format!("nothing answered within {} s", CONNECT_TIMEOUT.as_secs()),
        }),
    }
}

/// Names the failure of a connection attempt to `target`.
pub(super) fn classify(e: &sqlx::Error, target: &Target<'_>) -> Error {
    let (failure, detail) = failure_of(e, target);
    Error::Connect {
        target: target.redacted.clone(),
        failure,
        detail,
    }
}

fn failure_of(e: &sqlx::Error, target: &Target<'_>) -> (ConnectFailure, String) {
    use std::io::ErrorKind;
    let database = || match target.database {
        Some(d) => format!("{d:?}"),
        None => server_message(e),
    };
    match e {
        sqlx::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => (ConnectFailure::Refused, String::new()),
            ErrorKind::TimedOut => (ConnectFailure::TimedOut, String::new()),
            _ if io.to_string().contains("lookup address") => {
                (ConnectFailure::UnknownHost, format!("{:?}", target.host))
            }
            // rustls's handshake errors come back as I/O errors.
            ErrorKind::InvalidData => (ConnectFailure::Tls, tls_detail(&io.to_string(), target)),
            _ => (ConnectFailure::Network, io.to_string()),
        },
        sqlx::Error::Tls(t) => (ConnectFailure::Tls, tls_detail(&t.to_string(), target)),
        sqlx::Error::Database(d) => {
            if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                match pg.code() {
                    "28P01" => (ConnectFailure::BadCredentials, pg.message().to_string()),
                    "28000" if pg.message().contains("no encryption") => match target.tls_off {
                        Some(p) => (ConnectFailure::TlsRequired, p.to_string()),
                        None => (ConnectFailure::Other, pg.message().to_string()),
                    },
                    "3D000" => (ConnectFailure::UnknownDatabase, database()),
                    "42501" => (ConnectFailure::Privilege, pg.message().to_string()),
                    _ => (ConnectFailure::Other, pg.message().to_string()),
                }
            } else if let Some(my) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                let message = my.message().to_string();
                match my.number() {
                    1045 => (ConnectFailure::BadCredentials, message),
                    1049 => (ConnectFailure::UnknownDatabase, database()),
                    1044 => (ConnectFailure::Privilege, message),
                    // ER_SECURE_TRANSPORT_REQUIRED (MySQL 3159, MariaDB 4036).
                    3159 | 4036 => match target.tls_off {
                        Some(p) => (ConnectFailure::TlsRequired, p.to_string()),
                        None => (ConnectFailure::Other, message),
                    },
                    _ => (ConnectFailure::Other, message),
                }
            } else {
                (ConnectFailure::Other, d.message().to_string())
            }
        }
        sqlx::Error::PoolTimedOut => (
            ConnectFailure::TimedOut,
            format!("nothing answered within {} s", CONNECT_TIMEOUT.as_secs()),
        ),
        other => (ConnectFailure::Other, other.to_string()),
    }
}

/// What a failed TLS handshake means for the person who wrote the URL.
fn tls_detail(text: &str, target: &Target<'_>) -> String {
    if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        format!(
            "the server's certificate is not signed by a trusted CA \
             (is sslrootcert/ssl-ca the server's CA?): {text}"
        )
    } else if text.contains("NotValidForName") {
        format!(
            "the server's certificate is not made out to {:?}: {text}",
            target.host
        )
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_parameters_and_missing_files_are_refused() {
        let pg = |q: &str| check_parameters(DbKind::Postgres, &format!("postgres://u@h/d?{q}"));
        let my = |q: &str| check_parameters(DbKind::Mysql, &format!("mysql://u@h/d?{q}"));
        assert!(pg("sslmode=require&application_name=x&options[search_path]=a").is_ok());
        assert!(my("ssl-mode=required&charset=utf8mb4").is_ok());
        let e = pg("sslmod=require").unwrap_err();
        assert!(e.starts_with("unknown parameter \"sslmod\""), "{e}");
        let e = my("sslmode=sometimes").unwrap_err();
        assert!(e.contains("VERIFY_IDENTITY"), "{e}");
        // A PostgreSQL mode is not a MySQL one.
        assert!(my("ssl-mode=require").is_err());
        let e = pg("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert_eq!(
            e,
            "CA file \"/nonexistent/ca.pem\" (sslrootcert) does not exist"
        );
        let e = my("ssl-key=/nonexistent/k.pem").unwrap_err();
        assert!(e.starts_with("key file"), "{e}");
        assert!(pg("sslrootcert=/").unwrap_err().contains("is not a file"));
    }

    #[test]
    fn a_password_in_the_query_is_never_shown() {
        let url =
            super::super::DbUrl::parse("postgres://u@h/d?sslmode=require&password=secret").unwrap();
        assert_eq!(
            url.redacted(),
            "postgres://u@h/d?sslmode=require&password=***"
        );
        let bad = super::super::DbUrl::parse("postgres://u:pw@h/d?password=secret&frob=1")
            .unwrap_err()
            .to_string();
        assert!(!bad.contains("secret") && !bad.contains(":pw@"), "{bad}");
    }

    #[test]
    fn connect_failures_read_as_one_plain_line() {
        let e = |failure, detail: &str| {
            Error::Connect {
                target: "postgres://u@h/d".into(),
                failure,
                detail: detail.into(),
            }
            .to_string()
        };
        assert_eq!(
            e(ConnectFailure::UnknownDatabase, "\"d\""),
            "cannot connect to postgres://u@h/d: unknown database \"d\""
        );
        assert_eq!(
            e(ConnectFailure::Refused, ""),
            "cannot connect to postgres://u@h/d: connection refused (is the server running and listening there?)"
        );
        assert_eq!(
            e(ConnectFailure::Other, "boom"),
            "cannot connect to postgres://u@h/d: boom"
        );
        assert!(!ConnectFailure::BadCredentials.may_pass());
        assert!(ConnectFailure::Refused.may_pass());
    }
}
