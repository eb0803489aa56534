//! Least privilege: which grants each path needs on PostgreSQL and MariaDB, checked before
//! anything is changed, and database refusals turned into one line naming the missing grant
//! ([`Error::Permission`]: exit code 2). The README's "Least privilege" section lists them.

use crate::db::{field, first_row, Database, DbKind, Privilege};
use crate::error::{Error, Result};
use crate::ident::TableName;

/// The privileges of `wanted` that the session lacks for `table`, each named as a grant
/// (`SELECT on table users`, `CREATE on schema public`), without repeats.
pub async fn missing(
    db: &dyn Database,
    table: &TableName,
    wanted: &[Privilege],
) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for &p in wanted {
        let Some((sql, params)) = db.dialect().privilege_query(p, table) else {
            continue;
        };
        let rows = db.query(sql, &params).await?;
        let row = first_row(&rows, "privilege check")?;
        if field(row, 0) == Some("1") {
            continue;
        }
        let name = grant_name(db.kind(), p, field(row, 1).unwrap_or_default());
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Fails with [`Error::Permission`] naming every privilege of `wanted` the session lacks.
pub async fn require(db: &dyn Database, table: &TableName, wanted: &[Privilege]) -> Result<()> {
    let names = missing(db, table, wanted).await?;
    if names.is_empty() {
        Ok(())
    } else {
        Err(Error::Permission {
            needs: names.join(" and "),
        })
    }
}

/// How a grant is named in messages; `on` is the table, schema, database or role the check
/// names.
pub fn grant_name(kind: DbKind, privilege: Privilege, on: &str) -> String {
    let pg = kind == DbKind::Postgres;
    match privilege {
        Privilege::Select => format!("SELECT on table {on}"),
        Privilege::Insert => format!("INSERT on table {on}"),
        Privilege::Update => format!("UPDATE on table {on}"),
        Privilege::Delete => format!("DELETE on table {on}"),
        Privilege::Create if pg => format!("CREATE on schema {on}"),
        Privilege::Create => format!("CREATE on database {on}"),
        Privilege::CreateView if pg => format!("CREATE on schema {on}"),
        Privilege::CreateView => format!("CREATE VIEW on database {on}"),
        Privilege::Index | Privilege::Trigger | Privilege::Alter if pg => {
            format!("ownership of table {on} (PostgreSQL lets only the owner index it, alter it or create triggers on it)")
        }
        Privilege::Index => format!("INDEX on table {on}"),
        Privilege::Trigger => format!("TRIGGER on table {on}"),
        Privilege::Alter => format!("ALTER on table {on}"),
        Privilege::SeeTransactions => see_transactions(kind),
    }
}

/// The grant a clock-based capture bound needs, and why.
pub fn see_transactions(kind: DbKind) -> String {
    let grant = match kind {
        DbKind::Postgres => "the pg_read_all_stats role (GRANT pg_read_all_stats TO …)",
        _ => "the PROCESS privilege (GRANT PROCESS ON *.* TO …)",
    };
    format!(
        "{grant} to see other sessions' open transactions: without it a clock-based capture \
         bound cannot see them and would skip their changes, so it refuses to export"
    )
}

/// The privileges `setup` of `strategy` needs on `kind` (the timestamp strategy's index is
/// checked only when it has to be created).
pub fn for_setup(kind: DbKind, strategy: &str) -> Vec<Privilege> {
    use Privilege::*;
    match (strategy, kind) {
        (_, DbKind::Sqlite) => Vec::new(),
        ("version", DbKind::Postgres) => vec![Alter, Create],
        ("version", _) => vec![Alter, Index, Trigger],
        ("trigger", DbKind::Postgres) => vec![Trigger, Create],
        ("trigger", _) => vec![Create, CreateView, Trigger],
        _ => vec![Select],
    }
}
