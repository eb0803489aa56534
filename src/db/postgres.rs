//! The PostgreSQL adapter. Rows are streamed with `COPY (SELECT …) TO STDOUT`: in binary,
//! decoded to canonical text in Rust ([`super::postgres_copy`]), when every output column has
//! a type it decodes (the select takes raw columns, [`Dialect::render_streamed`]); else in
//! CSV, the select rendering every column as the text the product wants. The capture bound is held back by the oldest open transaction
//! (`pg_stat_activity.xact_start`: `now()` stamps rows with its transaction's start).
//! Locks are session advisory locks on a dedicated connection, freed if the process dies.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{
    Column as _, ConnectOptions as _, Connection, Postgres, SqlSafeStr as _, Statement as _,
};

use super::postgres_copy::{decodable, BinaryRows, Field};
use super::{
    common::{settle, Driver, Probe},
    field, first_row, reach, Bound, ClockNeed, Column, ColumnKind, ConnectOptions, Database,
    DbKind, DbUrl, Dialect, LockGuard, Param, Privilege, RowSink, Settled, Snapshot,
    SnapshotOptions, Stmt, TextRow, Timestamp, Transaction, Wakeups,
};
use crate::error::{Error, Result};
use crate::ident::{Ident, TableName};

/// Appends one row to COPY FROM (FORMAT csv) data: NULL as an empty unquoted field, every
/// other value quoted (so that an empty string stays apart from NULL), `\n` after the row.
fn copy_csv_record(buf: &mut Vec<u8>, row: &[Option<String>]) {
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        if let Some(v) = v {
            buf.push(b'"');
            for b in v.bytes() {
                if b == b'"' {
                    buf.push(b'"');
                }
                buf.push(b);
            }
            buf.push(b'"');
        }
    }
    buf.push(b'\n');
}

const TS_FORMAT: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";

/// The application name of snapshot connections (see [`PostgresDb`]).
const SNAPSHOT_APP: &str = "tidemark snapshot";

/// SQL text for PostgreSQL.
pub struct PostgresDialect;

impl Dialect for PostgresDialect {
    fn kind(&self) -> DbKind {
        DbKind::Postgres
    }

    fn quote(&self, id: &Ident) -> String {
        id.quote_double()
    }

    fn render(&self, column: &Column) -> String {
        let c = self.quote(&column.name);
        match column.kind {
            ColumnKind::Bool => {
                format!("CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END")
            }
            ColumnKind::TimestampTz => format!("to_char({c} AT TIME ZONE 'UTC', {TS_FORMAT})"),
            ColumnKind::Timestamp => format!("to_char({c}, {TS_FORMAT})"),
            // A cast of character(n) to text drops its padding; its output function keeps it.
            ColumnKind::Text if is_fixed(column) => format!("textin(bpcharout({c}))"),
            _ => format!("{c}::text"),
        }
    }

    fn render_streamed(&self, column: &Column) -> String {
        match column.kind {
            // Binary COPY sends these in forms `postgres_copy` decodes into the text `render`
            // gives, without the server's text output functions (to_char above all).
            ColumnKind::Bool
            | ColumnKind::Integer
            | ColumnKind::Float
            | ColumnKind::Decimal
            | ColumnKind::Text
            | ColumnKind::Timestamp
            | ColumnKind::TimestampTz
            | ColumnKind::Date
            | ColumnKind::Bytes => self.quote(&column.name),
            ColumnKind::Time | ColumnKind::Other => self.render(column),
        }
    }

    fn column_type(&self, kind: ColumnKind, _key: bool) -> &'static str {
        match kind {
            ColumnKind::Bool => "BOOLEAN",
            ColumnKind::Integer => "BIGINT",
            ColumnKind::Float => "DOUBLE PRECISION",
            ColumnKind::Decimal => "NUMERIC",
            ColumnKind::Timestamp => "TIMESTAMP",
            ColumnKind::TimestampTz => "TIMESTAMPTZ",
            ColumnKind::Date => "DATE",
            ColumnKind::Time => "TIME",
            ColumnKind::Bytes => "BYTEA",
            ColumnKind::Text | ColumnKind::Other => "TEXT",
        }
    }

    fn now_expr(&self) -> &'static str {
        "now()"
    }

    fn timestamp_literal(&self, ts: &Timestamp, column: &Column) -> String {
        match column.kind {
            ColumnKind::Timestamp => format!("'{}'::timestamp", ts.to_sql_naive()),
            _ => format!("'{ts}'::timestamptz"),
        }
    }

    fn is_true(&self, expr: &str) -> String {
        format!("COALESCE({expr}, false)")
    }

    fn drop_index(&self, name: &Ident, table: &TableName) -> String {
        format!(
            "DROP INDEX IF EXISTS {}",
            self.quote_table(&table.sibling(name.clone()))
        )
    }

    fn json_image(&self, row: &str, _columns: &[Column]) -> String {
        // Numbers stay numbers (float8 printed shortest-exact), timestamps keep microseconds,
        // bytea is `\x` hex text; and a column added later is in it without a new trigger.
        format!("to_jsonb({row})")
    }

    fn default_schema_query(&self) -> &'static str {
        "SELECT current_schema()::text"
    }

    fn schema_exists_query(&self) -> &'static str {
        "SELECT nspname::text FROM pg_namespace WHERE nspname = ?"
    }

    fn list_tables_query(&self, schema: Option<&Ident>) -> (&'static str, Vec<Param>) {
        match schema {
            Some(s) => (
                "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = ? ORDER BY 1",
                vec![s.as_str().into()],
            ),
            None => (
                "SELECT c.relname::text FROM pg_class c \
                 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                 AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) ORDER BY 1",
                vec![],
            ),
        }
    }

    fn catalog_query(&self, table: &TableName) -> (&'static str, Vec<Param>) {
        (
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    CASE WHEN a.attnotnull THEN '1' ELSE '0' END, \
                    COALESCE((SELECT k.ord FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                              WHERE i.indrelid = a.attrelid AND i.indisprimary AND k.attnum = a.attnum), 0)::bigint \
             FROM pg_attribute a \
             WHERE a.attrelid = to_regclass(?) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            vec![self.quote_table(table).into()],
        )
    }

    fn leading_index_query(&self, table: &TableName, column: &Ident) -> (&'static str, Vec<Param>) {
        // indkey is an int2vector, subscripted from 0.
        (
            "SELECT c.relname::text FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = to_regclass(?) AND a.attname = ?",
            vec![self.quote_table(table).into(), column.as_str().into()],
        )
    }

    fn key_type(&self) -> &'static str {
        "TEXT"
    }

    fn text_type(&self) -> &'static str {
        "TEXT"
    }

    fn privilege_query(
        &self,
        privilege: Privilege,
        table: &TableName,
    ) -> Option<(&'static str, Vec<Param>)> {
        let sql = match privilege {
            Privilege::Select => PG_HAS_TABLE_PRIVILEGE[0],
            Privilege::Insert => PG_HAS_TABLE_PRIVILEGE[1],
            Privilege::Update => PG_HAS_TABLE_PRIVILEGE[2],
            Privilege::Delete => PG_HAS_TABLE_PRIVILEGE[3],
            // Only a table's owner (or a member of its owning role) may index it, add a
            // column to it or create a trigger on it.
            Privilege::Index | Privilege::Trigger | Privilege::Alter => {
                "SELECT CASE WHEN COALESCE((SELECT pg_has_role(relowner, 'USAGE') FROM pg_class \
                 WHERE oid = to_regclass(?)), true) THEN 1::bigint ELSE 0::bigint END, ?::text"
            }
            Privilege::Create | Privilege::CreateView => {
                let schema = table.schema().map(|s| s.as_str().to_string());
                return Some((
                    "SELECT CASE WHEN COALESCE(has_schema_privilege(\
                     COALESCE(?::text, current_schema()), 'CREATE'), false) \
                     THEN 1::bigint ELSE 0::bigint END, \
                     COALESCE(?::text, current_schema()::text, '(none)')",
                    vec![schema.clone().into(), schema.into()],
                ));
            }
            // pg_stat_activity shows other roles' sessions without their xact_start unless
            // the session has pg_read_all_stats (a superuser has every role's privileges).
            Privilege::SeeTransactions => {
                return Some((
                    "SELECT CASE WHEN pg_has_role('pg_read_all_stats', 'USAGE') \
                     THEN 1::bigint ELSE 0::bigint END, current_user::text",
                    Vec::new(),
                ))
            }
        };
        Some((
            sql,
            vec![self.quote_table(table).into(), table.as_str().into()],
        ))
    }
}

/// True for a blank-padded `character(n)` column.
fn is_fixed(column: &Column) -> bool {
    super::types::SqlType::parse(DbKind::Postgres, &column.sql_type).fixed
}

/// Whether the session may SELECT, INSERT, UPDATE, DELETE a table (true if it does not exist).
const PG_HAS_TABLE_PRIVILEGE: [&str; 4] = [
    "SELECT CASE WHEN COALESCE(has_table_privilege(to_regclass(?), 'SELECT'), true) \
     THEN 1::bigint ELSE 0::bigint END, ?::text",
    "SELECT CASE WHEN COALESCE(has_table_privilege(to_regclass(?), 'INSERT'), true) \
     THEN 1::bigint ELSE 0::bigint END, ?::text",
    "SELECT CASE WHEN COALESCE(has_table_privilege(to_regclass(?), 'UPDATE'), true) \
     THEN 1::bigint ELSE 0::bigint END, ?::text",
    "SELECT CASE WHEN COALESCE(has_table_privilege(to_regclass(?), 'DELETE'), true) \
     THEN 1::bigint ELSE 0::bigint END, ?::text",
];

/// Rewrites `?` placeholders as `$1`, `$2`, … (outside quoted strings and identifiers).
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    let mut quote: Option<char> = None;
    for ch in sql.chars() {
        match (quote, ch) {
            (None, '\'' | '"') => {
                quote = Some(ch);
                out.push(ch);
            }
            (Some(q), c) if c == q => {
                quote = None;
                out.push(ch);
            }
            (None, '?') => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(ch),
        }
    }
    out
}

/// A PostgreSQL database.
pub struct PostgresDb {
    pool: PgPool,
    /// Connections for snapshots only: their transactions are READ ONLY and they carry
    /// [`SNAPSHOT_APP`] as their application name, so that other exports' bounds are not held
    /// back by them (a read-only transaction never stamps a row).
    snapshots: PgPool,
    options: PgConnectOptions,
    url: DbUrl,
}

impl PostgresDb {
    /// Connects to `url`.
    pub async fn connect(url: &DbUrl, options: ConnectOptions) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url.as_str())
            .map_err(|e| Error::InvalidUrl {
                url: url.redacted(),
                reason: reach::url_reason(&e),
            })?
            .options([("TimeZone", "UTC"), ("DateStyle", "ISO")])
            .disable_statement_logging();
        let target = reach::Target {
            redacted: url.redacted(),
            host: opts.get_host(),
            database: opts.get_database(),
            tls_off: matches!(opts.get_ssl_mode(), PgSslMode::Disable).then_some("sslmode=disable"),
        };
        // One attempt first, bounded and named: the pool would retry a refused connection
        // until its acquire timeout and then say only that it timed out.
        reach::probe(&opts, &target).await?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(8))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await
            .map_err(|e| reach::classify(&e, &target))?;
        let snapshots = PgPoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(8))
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(opts.clone().application_name(SNAPSHOT_APP));
        Ok(PostgresDb {
            pool,
            snapshots,
            options: opts,
            url: url.clone(),
        })
    }
}

struct PgSnapshot {
    bound: Bound,
    tx: sqlx::Transaction<'static, Postgres>,
}

#[async_trait]
impl Snapshot for PgSnapshot {
    fn bound(&self) -> Bound {
        self.bound.clone()
    }

    async fn stream(&mut self, select: &str, sink: &mut dyn RowSink) -> Result<u64> {
        // The select's output types decide: all decodable → binary COPY decoded here (no text
        // output functions on the server); otherwise the server's CSV, as rendered.
        let statement = sqlx::Executor::prepare(
            &mut *self.tx,
            sqlx::AssertSqlSafe(select.to_string()).into_sql_str(),
        )
        .await?;
        let fields: Option<Vec<Field>> = statement
            .columns()
            .iter()
            .map(|c| c.type_info().oid().and_then(|o| decodable(o.0)))
            .collect();
        let Some(fields) = fields else {
            return copy_csv(&mut self.tx, select, sink).await;
        };
        let copy = format!("COPY ({select}) TO STDOUT (FORMAT binary)");
        let mut stream = (*self.tx).copy_out_raw(&copy).await?;
        let mut rows = BinaryRows::new(fields);
        let mut n = 0u64;
        let mut write = |fields: &[Option<&str>]| -> Result<()> {
            sink.write_fields(fields)
                .map_err(|e| Error::io("write export row", "<sink>", e))
        };
        while let Some(chunk) = stream.try_next().await? {
            n += rows.feed(&chunk, &mut write)?;
        }
        rows.finish()?;
        Ok(n)
    }

    async fn query(&mut self, sql: &str) -> Result<Vec<TextRow>> {
        Postgres::query(&mut self.tx, sql, &[]).await
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// Streams `select` through the server's CSV COPY: each CopyData message is one row.
async fn copy_csv(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    select: &str,
    sink: &mut dyn RowSink,
) -> Result<u64> {
    let copy = format!("COPY ({select}) TO STDOUT WITH (FORMAT csv)");
    let mut stream = (**tx).copy_out_raw(&copy).await?;
    let mut n = 0u64;
    while let Some(record) = stream.try_next().await? {
        sink.write_csv_record(&record)
            .map_err(|e| Error::io("write export row", "<sink>", e))?;
        n += 1;
    }
    Ok(n)
}

struct AdvisoryLock {
    conn: PgConnection,
    key: i64,
}

#[async_trait]
impl LockGuard for AdvisoryLock {
    async fn release(mut self: Box<Self>) -> Result<()> {
        Postgres::execute(
            &mut self.conn,
            "SELECT pg_advisory_unlock($1)",
            &[Param::Int(self.key)],
        )
        .await?;
        self.conn.close().await?;
        Ok(())
    }
}

struct PgTx(sqlx::Transaction<'static, Postgres>);

#[async_trait]
impl Transaction for PgTx {
    async fn execute(&mut self, sql: &str, params: Vec<Param>) -> Result<u64> {
        Postgres::execute_owned(&mut self.0, &numbered(sql), params).await
    }

    async fn query(&mut self, sql: &str, params: Vec<Param>) -> Result<Vec<TextRow>> {
        Postgres::query(&mut self.0, &numbered(sql), &params).await
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
impl Database for PostgresDb {
    fn kind(&self) -> DbKind {
        DbKind::Postgres
    }

    fn dialect(&self) -> &dyn Dialect {
        &PostgresDialect
    }

    fn target(&self) -> String {
        self.url.redacted()
    }

    async fn ping(&self) -> Result<()> {
        self.query("SELECT 1::bigint", &[]).await.map(|_| ())
    }

    async fn execute(&self, sql: &str, params: &[Param]) -> Result<u64> {
        let mut conn = self.pool.acquire().await?;
        Postgres::execute(&mut conn, &numbered(sql), params).await
    }

    async fn transaction(&self, stmts: &[Stmt]) -> Result<bool> {
        let stmts: Vec<Stmt> = stmts
            .iter()
            .map(|s| Stmt {
                sql: numbered(&s.sql),
                ..s.clone()
            })
            .collect();
        Postgres::transaction(&self.pool, &stmts).await
    }

    async fn query(&self, sql: &str, params: &[Param]) -> Result<Vec<TextRow>> {
        let mut conn = self.pool.acquire().await?;
        Postgres::query(&mut conn, &numbered(sql), params).await
    }

    async fn snapshot(&self, options: &SnapshotOptions) -> Result<Box<dyn Snapshot>> {
        // Each look is its own transaction: pg_stat_activity is read once per transaction.
        // `now()` stamps rows with their transaction's start, so every open transaction of
        // this database counts (it may still write), but not snapshots of tidemark's own.
        let sql = format!(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', {TS_FORMAT}), \
               (SELECT to_char(min(xact_start) AT TIME ZONE 'UTC', {TS_FORMAT}) \
                FROM pg_stat_activity \
                WHERE datname = current_database() AND pid <> pg_backend_pid() \
                  AND backend_type = 'client backend' \
                  AND application_name IS DISTINCT FROM '{SNAPSHOT_APP}')"
        );
        let probe = || async {
            let rows = self.query(&sql, &[]).await?;
            let row = first_row(&rows, "PostgreSQL capture bound")?;
            Ok(Probe {
                now: Timestamp::parse(field(row, 0).unwrap_or_default())?,
                earliest_open: field(row, 1).map(Timestamp::parse).transpose()?,
            })
        };
        let (time, settled) = if options.clock == ClockNeed::Always {
            // Without pg_read_all_stats other roles' transactions show no xact_start: the
            // bound would pass them unseen and their changes be skipped. Refuse instead.
            let (check, params) = PostgresDialect
                .privilege_query(
                    Privilege::SeeTransactions,
                    &TableName::unqualified(Ident::new("pg_stat_activity")?),
                )
                .unwrap_or_default();
            let rows = self.query(check, &params).await?;
            if field(first_row(&rows, "pg_read_all_stats check")?, 0) != Some("1") {
                return Err(Error::Permission {
                    needs: crate::privilege::see_transactions(DbKind::Postgres),
                });
            }
            settle(options, probe).await?
        } else {
            // Positions are the snapshot's transaction ids: exact without waiting. The time
            // only labels (INSERT or UPDATE by creation time) and measures lag.
            let p = probe().await?;
            let time = p.earliest_open.map_or(p.now, |o| o.min(p.now));
            (time, Settled::default())
        };
        let mut tx = self
            .snapshots
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        // The first statement fixes the transaction's snapshot; in REPEATABLE READ
        // pg_current_snapshot() is that very snapshot, so the txids it names as finished are
        // exactly the transactions whose rows this read sees.
        let snap = Postgres::query(&mut tx, "SELECT pg_current_snapshot()::text", &[]).await?;
        let txids = snap.first().and_then(|r| field(r, 0)).map(str::to_string);
        Ok(Box::new(PgSnapshot {
            bound: Bound {
                time,
                txids,
                extent: None,
                settled,
            },
            tx,
        }))
    }

    async fn listen(&self, channel: &str) -> Result<Option<Box<dyn Wakeups>>> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(channel).await?;
        Ok(Some(Box::new(PgWakeups(listener))))
    }

    async fn try_lock(&self, name: &str) -> Result<Option<Box<dyn LockGuard>>> {
        let digest = Sha256::digest(name.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        let key = i64::from_be_bytes(first);
        let mut conn = PgConnection::connect_with(&self.options).await?;
        let got = Postgres::query(
            &mut conn,
            "SELECT CASE WHEN pg_try_advisory_lock($1) THEN 1::bigint ELSE 0::bigint END",
            &[Param::Int(key)],
        )
        .await?;
        if field(first_row(&got, "pg_try_advisory_lock")?, 0) == Some("1") {
            Ok(Some(Box::new(AdvisoryLock { conn, key })))
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
        const CHUNK_BYTES: usize = 1 << 20;
        let d = PostgresDialect;
        let cols: Vec<String> = columns.iter().map(|c| d.quote(c)).collect();
        let statement = format!(
            "COPY {} ({}) FROM STDIN WITH (FORMAT csv)",
            d.quote_table(table),
            cols.join(", ")
        );
        let mut tx = self.pool.begin().await?;
        let mut copy = (*tx).copy_in_raw(&statement).await?;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES + 4096);
        for row in rows {
            copy_csv_record(&mut buf, &row);
            if buf.len() >= CHUNK_BYTES {
                copy.send(buf.as_slice()).await?;
                buf.clear();
            }
        }
        if !buf.is_empty() {
            copy.send(buf.as_slice()).await?;
        }
        let n = copy.finish().await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn now(&self) -> Result<Timestamp> {
        let rows = self
            .query(
                &format!("SELECT to_char(now() AT TIME ZONE 'UTC', {TS_FORMAT})"),
                &[],
            )
            .await?;
        Timestamp::parse(field(first_row(&rows, "PostgreSQL clock")?, 0).unwrap_or_default())
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(PgTx(self.pool.begin().await?)))
    }
}

/// A LISTEN connection.
struct PgWakeups(sqlx::postgres::PgListener);

#[async_trait]
impl Wakeups for PgWakeups {
    async fn next(&mut self) -> Result<()> {
        self.0.recv().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        assert_eq!(
            numbered("SELECT ? , '?', \"a?\", ?"),
            "SELECT $1 , '?', \"a?\", $2"
        );
    }
}
