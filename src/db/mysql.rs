//! The MySQL/MariaDB adapter. Sessions run in UTC; rows are streamed with the text of every
//! column rendered by the select. `NOW()` stamps rows with the statement's start, so the capture
//! bound is held back both by open InnoDB transactions and by statements still running
//! (`processlist.TIME_MS`). Open transactions are read from `SHOW ENGINE INNODB STATUS`, which
//! is made afresh for each call: `information_schema.INNODB_TRX` is a cache that InnoDB
//! refreshes only after 100 ms without a reader, so exports polling it more often than that
//! (several consumers, monitoring) would see a stale list forever and pass an open
//! transaction. Locks are `GET_LOCK` on a dedicated connection, freed if the process dies.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::mysql::{
    MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions, MySqlSslMode,
};
use sqlx::{ConnectOptions as _, Connection, MySql};

use super::{
    common::{settle, Driver, Probe},
    field, first_row, reach, Bound, Column, ColumnKind, ConnectOptions, Database, DbKind, DbUrl,
    Dialect, LockGuard, Param, Privilege, RowSink, Snapshot, SnapshotOptions, Stmt, TextRow,
    Timestamp, Transaction,
};
use crate::error::{ConnectFailure, Error, Result};
use crate::ident::{Ident, TableName};

const TS_FORMAT: &str = "'%Y-%m-%dT%H:%i:%s.%fZ'";

/// SQL text for MySQL and MariaDB.
pub struct MysqlDialect;

impl Dialect for MysqlDialect {
    fn kind(&self) -> DbKind {
        DbKind::Mysql
    }

    fn quote(&self, id: &Ident) -> String {
        id.quote_backtick()
    }

    fn render(&self, column: &Column) -> String {
        let c = self.quote(&column.name);
        match column.kind {
            ColumnKind::Bool => format!(
                "CASE WHEN {c} IS NULL THEN NULL WHEN {c} <> 0 THEN 'true' ELSE 'false' END"
            ),
            ColumnKind::Timestamp | ColumnKind::TimestampTz => {
                format!("DATE_FORMAT({c}, {TS_FORMAT})")
            }
            ColumnKind::Bytes => {
                format!("CONCAT(CHAR(92 USING utf8mb4), 'x', LOWER(HEX({c})))")
            }
            // BIT values are bytes: as a number.
            ColumnKind::Integer if is_bit(column) => format!("CAST({c} + 0 AS CHAR)"),
            // A FLOAT prints with 6 digits (16777215 as 1.67772e7): as the double it is exactly.
            ColumnKind::Float if is_single(column) => {
                format!("CAST(CAST({c} AS DOUBLE) AS CHAR)")
            }
            // CHAR(n) is stored without its trailing spaces and read back so (unless
            // PAD_CHAR_TO_FULL_LENGTH): pad it again, as PostgreSQL keeps it.
            ColumnKind::Text => match fixed_length(column) {
                Some(n) => format!("RPAD(CAST({c} AS CHAR), {n}, ' ')"),
                None => format!("CAST({c} AS CHAR)"),
            },
            _ => format!("CAST({c} AS CHAR)"),
        }
    }

    fn column_type(&self, kind: ColumnKind, key: bool) -> &'static str {
        match kind {
            ColumnKind::Bool => "BOOLEAN",
            ColumnKind::Integer => "BIGINT",
            ColumnKind::Float => "DOUBLE",
            ColumnKind::Decimal => "DECIMAL(65,10)",
            ColumnKind::Timestamp => "DATETIME(6)",
            ColumnKind::TimestampTz => "TIMESTAMP(6)",
            ColumnKind::Date => "DATE",
            ColumnKind::Time => "TIME(6)",
            ColumnKind::Bytes => "LONGBLOB",
            ColumnKind::Text | ColumnKind::Other if key => "VARCHAR(255)",
            ColumnKind::Text | ColumnKind::Other => "LONGTEXT",
        }
    }

    fn now_expr(&self) -> &'static str {
        "NOW(6)"
    }

    fn timestamp_literal(&self, ts: &Timestamp, _column: &Column) -> String {
        // Sessions run in UTC, so TIMESTAMP and DATETIME columns compare with UTC wall time.
        format!("'{}'", ts.to_sql_naive())
    }

    fn timestamp_value(&self, ts: &Timestamp) -> String {
        ts.to_sql_naive()
    }

    fn is_true(&self, expr: &str) -> String {
        format!("(COALESCE({expr}, 0) <> 0)")
    }

    fn drop_index(&self, name: &Ident, table: &TableName) -> String {
        format!(
            "DROP INDEX IF EXISTS {} ON {}",
            self.quote(name),
            self.quote_table(table)
        )
    }

    fn json_image(&self, row: &str, columns: &[Column]) -> String {
        // JSON_OBJECT prints integers, decimals and doubles as exact JSON numbers. TIMESTAMP
        // values are shown in the reader's session zone, so they are rebuilt in UTC from the
        // stored instant (UNIX_TIMESTAMP of a TIMESTAMP column reads it as is, microseconds
        // too) — without naming the session zone, which a view may not; binary becomes `\x`
        // hex text (the backslash as CHAR(92): no escaping mode matters).
        let fields: Vec<String> = columns
            .iter()
            .map(|c| {
                let v = format!("{row}.{}", self.quote(&c.name));
                let value = match c.kind {
                    ColumnKind::TimestampTz => format!(
                        "DATE_FORMAT(TIMESTAMPADD(MICROSECOND, UNIX_TIMESTAMP({v}) * 1000000, \
                         TIMESTAMP'1970-01-01 00:00:00.000000'), {TS_FORMAT})"
                    ),
                    ColumnKind::Timestamp => format!("DATE_FORMAT({v}, {TS_FORMAT})"),
                    ColumnKind::Bytes => {
                        format!("CONCAT(CHAR(92 USING utf8mb4), 'x', LOWER(HEX({v})))")
                    }
                    ColumnKind::Integer if is_bit(c) => format!("{v} + 0"),
                    ColumnKind::Float if is_single(c) => format!("CAST({v} AS DOUBLE)"),
                    ColumnKind::Text => match fixed_length(c) {
                        Some(n) => format!("RPAD({v}, {n}, ' ')"),
                        None => v,
                    },
                    _ => v,
                };
                format!("{}, {value}", string_literal(c.name.as_str()))
            })
            .collect();
        format!("JSON_OBJECT({})", fields.join(", "))
    }

    fn default_schema_query(&self) -> &'static str {
        "SELECT DATABASE()"
    }

    fn schema_exists_query(&self) -> &'static str {
        "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?"
    }

    fn list_tables_query(&self, schema: Option<&Ident>) -> (&'static str, Vec<Param>) {
        (
            "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1",
            vec![schema.map(|s| s.as_str()).into()],
        )
    }

    fn catalog_query(&self, table: &TableName) -> (&'static str, Vec<Param>) {
        (
            "SELECT CAST(c.COLUMN_NAME AS CHAR), CAST(c.COLUMN_TYPE AS CHAR), \
                    CASE WHEN c.IS_NULLABLE = 'YES' THEN '0' ELSE '1' END, \
                    CAST(COALESCE(k.ORDINAL_POSITION, 0) AS SIGNED) \
             FROM information_schema.COLUMNS c \
             LEFT JOIN information_schema.KEY_COLUMN_USAGE k \
               ON k.TABLE_SCHEMA = c.TABLE_SCHEMA AND k.TABLE_NAME = c.TABLE_NAME \
              AND k.COLUMN_NAME = c.COLUMN_NAME AND k.CONSTRAINT_NAME = 'PRIMARY' \
             WHERE c.TABLE_SCHEMA = COALESCE(?, DATABASE()) AND c.TABLE_NAME = ? \
             ORDER BY c.ORDINAL_POSITION",
            vec![
                table.schema().map(|s| s.as_str()).into(),
                table.name().as_str().into(),
            ],
        )
    }

    fn leading_index_query(&self, table: &TableName, column: &Ident) -> (&'static str, Vec<Param>) {
        (
            "SELECT CAST(INDEX_NAME AS CHAR) FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND COLUMN_NAME = ? \
             AND SEQ_IN_INDEX = 1",
            vec![
                table.schema().map(|s| s.as_str()).into(),
                table.name().as_str().into(),
                column.as_str().into(),
            ],
        )
    }

    fn key_type(&self) -> &'static str {
        "VARCHAR(191)"
    }

    fn text_type(&self) -> &'static str {
        "LONGTEXT"
    }

    fn privilege_query(
        &self,
        privilege: Privilege,
        table: &TableName,
    ) -> Option<(&'static str, Vec<Param>)> {
        let name = match privilege {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::Create => "CREATE",
            Privilege::CreateView => "CREATE VIEW",
            Privilege::Index => "INDEX",
            Privilege::Trigger => "TRIGGER",
            Privilege::Alter => "ALTER",
            Privilege::SeeTransactions => "PROCESS",
        };
        let on_table = i64::from(!matches!(
            privilege,
            Privilege::Create | Privilege::CreateView | Privilege::SeeTransactions
        ));
        // Checked in the connection's database (a table of another database is checked by the
        // server when it is read).
        let t = table.name().as_str();
        Some((
            MY_HAS_PRIVILEGE,
            vec![
                name.into(),
                name.into(),
                t.into(),
                name.into(),
                Param::Int(on_table),
                t.into(),
                Param::Int(on_table),
                t.into(),
            ],
        ))
    }
}

/// Whether the account the session authenticated as holds a privilege (parameters: its name
/// three times around the table's name, then "is it about the table" and the table twice),
/// granted globally, on the database or on the table; a table that does not exist counts as
/// granted. `CURRENT_USER()` is `user@host`, grantees are `'user'@'host'`. The privileges of
/// an enabled role are not listed there: with a role the check passes, and a refusal by the
/// database itself is still named (see `Error::needing`).
const MY_HAS_PRIVILEGE: &str = "SELECT CAST((\
      EXISTS (SELECT 1 FROM information_schema.USER_PRIVILEGES u \
        WHERE u.GRANTEE = g.g AND u.PRIVILEGE_TYPE = ?) \
      OR EXISTS (SELECT 1 FROM information_schema.SCHEMA_PRIVILEGES s \
        WHERE s.GRANTEE = g.g AND s.TABLE_SCHEMA = DATABASE() AND s.PRIVILEGE_TYPE = ?) \
      OR EXISTS (SELECT 1 FROM information_schema.TABLE_PRIVILEGES t \
        WHERE t.GRANTEE = g.g AND t.TABLE_SCHEMA = DATABASE() AND t.TABLE_NAME = ? \
          AND t.PRIVILEGE_TYPE = ?) \
      OR (? AND NOT EXISTS (SELECT 1 FROM information_schema.TABLES x \
        WHERE x.TABLE_SCHEMA = DATABASE() AND x.TABLE_NAME = ?)) \
      OR CURRENT_ROLE() IS NOT NULL) AS SIGNED), \
    CASE WHEN ? THEN ? ELSE COALESCE(DATABASE(), '') END \
    FROM (SELECT CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', \
      SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''') AS g) g";

/// The comment that starts every statement of a snapshot (see `Database::snapshot`).
const SNAPSHOT_TAG: &str = "/* tidemark snapshot */";

/// The age in whole seconds of the oldest transaction that has written (it has a transaction
/// id: `---TRANSACTION 25, ACTIVE 2 sec`, `ACTIVE (PREPARED) 2 sec`) listed as `ACTIVE` in the
/// text of `SHOW ENGINE INNODB STATUS`. Transactions that have not written are listed by
/// address (`---TRANSACTION (0x7f…), ACTIVE 3 sec`) and left out.
fn oldest_writer_seconds(status: &str) -> Option<u64> {
    status
        .lines()
        .filter_map(|l| l.strip_prefix("---TRANSACTION "))
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|l| {
            let rest = l.split_once("ACTIVE ")?.1;
            let rest = rest.strip_prefix("(PREPARED) ").unwrap_or(rest);
            rest.split_once(" sec")?.0.parse::<u64>().ok()
        })
        .max()
}

/// True for a BIT(n) column, whose values are bytes that must be read as a number.
fn is_bit(column: &Column) -> bool {
    super::types::SqlType::parse(DbKind::Mysql, &column.sql_type).base == "bit"
}

/// The length of a CHAR(n) column (padded to it), `None` for other columns.
fn fixed_length(column: &Column) -> Option<u32> {
    let t = super::types::SqlType::parse(DbKind::Mysql, &column.sql_type);
    t.length.filter(|_| t.kind == ColumnKind::Text && t.fixed)
}

/// True for a single-precision FLOAT column.
fn is_single(column: &Column) -> bool {
    super::types::SqlType::parse(DbKind::Mysql, &column.sql_type).base == "float"
}

/// A string literal that means the same under every `sql_mode`: names with a quote or a
/// backslash are written as hex.
fn string_literal(s: &str) -> String {
    if s.contains(['\'', '\\']) {
        format!("CONVERT(X'{}' USING utf8mb4)", hex::encode(s))
    } else {
        format!("'{s}'")
    }
}

/// A MySQL or MariaDB database.
pub struct MysqlDb {
    pool: MySqlPool,
    options: MySqlConnectOptions,
    url: DbUrl,
}

impl MysqlDb {
    /// Connects to `url`.
    pub async fn connect(url: &DbUrl, options: ConnectOptions) -> Result<Self> {
        let opts = MySqlConnectOptions::from_str(url.as_str())
            .map_err(|e| Error::InvalidUrl {
                url: url.redacted(),
                reason: reach::url_reason(&e),
            })?
            .timezone(Some("+00:00".to_string()))
            .disable_statement_logging();
        let target = reach::Target {
            redacted: url.redacted(),
            host: opts.get_host(),
            database: opts.get_database(),
            tls_off: matches!(opts.get_ssl_mode(), MySqlSslMode::Disabled)
                .then_some("ssl-mode=DISABLED"),
        };
        // One attempt first, bounded and named: the pool would retry a refused connection
        // until its acquire timeout and then say only that it timed out.
        match reach::probe(&opts, &target).await {
            Err(Error::Connect {
                failure: ConnectFailure::BadCredentials,
                ..
            }) if target.tls_off.is_some()
                && reach::probe(&opts.clone().ssl_mode(MySqlSslMode::Preferred), &target)
                    .await
                    .is_ok() =>
            {
                // MariaDB answers "Access denied" to a connection without TLS when it requires
                // TLS (--require-secure-transport): the same credentials over TLS tell the two
                // apart.
                return Err(Error::Connect {
                    target: target.redacted,
                    failure: ConnectFailure::TlsRequired,
                    detail: "ssl-mode=DISABLED".to_string(),
                });
            }
            other => other?,
        }
        let pool = MySqlPoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(8))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await
            .map_err(|e| reach::classify(&e, &target))?;
        Ok(MysqlDb {
            pool,
            options: opts,
            url: url.clone(),
        })
    }
}

struct MysqlSnapshot {
    bound: Bound,
    tx: sqlx::Transaction<'static, MySql>,
}

#[async_trait]
impl Snapshot for MysqlSnapshot {
    fn bound(&self) -> Bound {
        self.bound.clone()
    }

    async fn stream(&mut self, select: &str, sink: &mut dyn RowSink) -> Result<u64> {
        let tagged = format!("{SNAPSHOT_TAG} {select}");
        MySql::stream_text_rows(&mut self.tx, &tagged, sink).await
    }

    async fn query(&mut self, sql: &str) -> Result<Vec<TextRow>> {
        MySql::query(&mut self.tx, &format!("{SNAPSHOT_TAG} {sql}"), &[]).await
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

struct NamedLock {
    conn: MySqlConnection,
    name: String,
}

#[async_trait]
impl LockGuard for NamedLock {
    async fn release(mut self: Box<Self>) -> Result<()> {
        MySql::execute(
            &mut self.conn,
            "SELECT RELEASE_LOCK(?)",
            &[self.name.as_str().into()],
        )
        .await?;
        self.conn.close().await?;
        Ok(())
    }
}

struct MysqlTx(sqlx::Transaction<'static, MySql>);

#[async_trait]
impl Transaction for MysqlTx {
    async fn execute(&mut self, sql: &str, params: Vec<Param>) -> Result<u64> {
        MySql::execute_owned(&mut self.0, sql, params).await
    }

    async fn query(&mut self, sql: &str, params: Vec<Param>) -> Result<Vec<TextRow>> {
        MySql::query(&mut self.0, sql, &params).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.0.commit().await?;
        Ok(())
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.0.rollback().await?;
        Ok(())
    }
}

#[async_trait]
impl Database for MysqlDb {
    fn kind(&self) -> DbKind {
        DbKind::Mysql
    }

    fn dialect(&self) -> &dyn Dialect {
        &MysqlDialect
    }

    fn target(&self) -> String {
        self.url.redacted()
    }

    async fn ping(&self) -> Result<()> {
        self.query("SELECT CAST(1 AS SIGNED)", &[])
            .await
            .map(|_| ())
    }

    async fn execute(&self, sql: &str, params: &[Param]) -> Result<u64> {
        let mut conn = self.pool.acquire().await?;
        MySql::execute(&mut conn, sql, params).await
    }

    async fn transaction(&self, stmts: &[Stmt]) -> Result<bool> {
        MySql::transaction(&self.pool, stmts).await
    }

    async fn query(&self, sql: &str, params: &[Param]) -> Result<Vec<TextRow>> {
        let mut conn = self.pool.acquire().await?;
        MySql::query(&mut conn, sql, params).await
    }

    async fn snapshot(&self, options: &SnapshotOptions) -> Result<Box<dyn Snapshot>> {
        // `NOW()` is the start of the statement and `SYSDATE()` the time of the write, so a
        // time below the bound can still be stamped only by a statement running now (its
        // start: `TIME_MS` ago) or be held by a transaction that has written and not committed
        // (it has an InnoDB transaction id; one that has only read cannot have stamped
        // anything yet). Statements of tidemark's own read-only snapshots are left out.
        let sql = format!(
            "SELECT DATE_FORMAT(NOW(6), {TS_FORMAT}), \
               (SELECT CAST(CEIL(MAX(TIME_MS)) AS SIGNED) FROM information_schema.PROCESSLIST \
                 WHERE ID <> CONNECTION_ID() AND COMMAND IN ('Query', 'Execute') \
                   AND COALESCE(INFO, '') NOT LIKE '{SNAPSHOT_TAG}%')"
        );
        let probe = || async {
            let mut conn = self.pool.acquire().await?;
            let rows = MySql::query(&mut conn, &sql, &[]).await?;
            let row = first_row(&rows, "MariaDB capture bound")?;
            let now = Timestamp::parse(field(row, 0).unwrap_or_default())?;
            let mut earliest: Option<Timestamp> = None;
            let mut hold = |t: Timestamp| earliest = Some(earliest.map_or(t, |e| e.min(t)));
            if let Some(ms) = field(row, 1).and_then(|s| s.parse::<u64>().ok()) {
                // A running statement stamped NOW() when it began, up to TIME_MS (+1 ms) ago.
                hold(now.minus(Duration::from_millis(ms + 1)));
            }
            // Read after the clock: a transaction missing from it started after `now`.
            // Without PROCESS the process list shows only this account's sessions and the
            // InnoDB status is refused: the bound cannot be exact, so no snapshot is taken.
            let status = MySql::query(&mut conn, "SHOW ENGINE INNODB STATUS", &[])
                .await
                .map_err(|e| e.needing(|| crate::privilege::see_transactions(DbKind::Mysql)))?;
            let text = status.first().and_then(|r| r.get(2).cloned().flatten());
            if let Some(secs) = text.as_deref().and_then(oldest_writer_seconds) {
                // "ACTIVE n sec" counts whole seconds of the clock: it started less than
                // n + 1 seconds before the status was made, which was after `now`.
                hold(now.minus(Duration::from_secs(secs + 1)));
            }
            Ok(Probe {
                now,
                earliest_open: earliest,
            })
        };
        let (time, settled) = settle(options, probe).await?;
        let tx = self
            .pool
            .begin_with(sqlx::AssertSqlSafe(format!(
                "{SNAPSHOT_TAG} START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"
            )))
            .await?;
        Ok(Box::new(MysqlSnapshot {
            bound: Bound {
                time,
                txids: None,
                extent: None,
                settled,
            },
            tx,
        }))
    }

    async fn try_lock(&self, name: &str) -> Result<Option<Box<dyn LockGuard>>> {
        // GET_LOCK names are server-wide: the database is part of the name, or exports of the
        // same consumer and table in two databases of one server would exclude each other.
        let scoped = format!(
            "{}\u{1f}{name}",
            self.options.get_database().unwrap_or_default()
        );
        let name = format!(
            "tidemark:{}",
            &hex::encode(Sha256::digest(scoped.as_bytes()))[..32]
        );
        let mut conn = MySqlConnection::connect_with(&self.options).await?;
        let got = MySql::query(
            &mut conn,
            "SELECT CAST(COALESCE(GET_LOCK(?, 0), 0) AS SIGNED)",
            &[name.as_str().into()],
        )
        .await?;
        if field(first_row(&got, "GET_LOCK")?, 0) == Some("1") {
            Ok(Some(Box::new(NamedLock { conn, name })))
        } else {
            conn.close().await?;
            Ok(None)
        }
    }

    async fn bulk_insert(
        &self,
        table: &TableName,
        columns: &[Ident],
        rows: &mut (dyn Iterator<Item = Vec<Option<String>>> + Send),
    ) -> Result<u64> {
        // At most 65,535 parameters per statement.
        let per_statement = (60_000 / columns.len().max(1)).clamp(1, 2000);
        let begin = "START TRANSACTION WITH CONSISTENT SNAPSHOT";
        MySql::multi_row_insert(
            &self.pool,
            begin,
            &MysqlDialect,
            table,
            columns,
            per_statement,
            rows,
        )
        .await
    }

    async fn now(&self) -> Result<Timestamp> {
        let rows = self
            .query(&format!("SELECT DATE_FORMAT(NOW(6), {TS_FORMAT})"), &[])
            .await?;
        Timestamp::parse(field(first_row(&rows, "MariaDB clock")?, 0).unwrap_or_default())
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(MysqlTx(self.pool.begin().await?)))
    }
}

#[cfg(test)]
mod tests {
    use super::oldest_writer_seconds;

    #[test]
    fn oldest_writing_transaction_is_read_from_innodb_status() {
        let status = "LIST OF TRANSACTIONS FOR EACH SESSION:\n\
            ---TRANSACTION 25, ACTIVE 2 sec\n\
            2 lock struct(s), heap size 1128, 0 row lock(s), undo log entries 2\n\
            ---TRANSACTION 26, ACTIVE (PREPARED) 17 sec committing\n\
            ---TRANSACTION (0x7f5856c11180), ACTIVE 40 sec\n\
            ---TRANSACTION (0x7f0c), not started\n\
            ---TRANSACTION 27, ACTIVE 0 sec inserting\n";
        assert_eq!(oldest_writer_seconds(status), Some(17));
        assert_eq!(
            oldest_writer_seconds("---TRANSACTION (0x1), ACTIVE 9 sec"),
            None
        );
    }
}
