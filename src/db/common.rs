//! The sqlx plumbing the three adapters share: binding [`Param`]s, running statements and
//! transactions, decoding small result sets as text, and streaming text rows into a sink.
//! Written once, generic over the sqlx driver.

use futures_util::TryStreamExt;
use sqlx::{AssertSqlSafe, ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::{Dialect, Param, RowSink, Stmt, TextRow};
use crate::error::{Error, Result};
use crate::ident::{Ident, TableName};

/// A sqlx driver with the shared helpers. The bounds are stated once, here: inside the trait
/// they hold for `Self`, so the helpers need no `where` clauses of their own.
pub(crate) trait Driver: sqlx::Database
where
    Self::Arguments: IntoArguments<Self>,
    for<'c> &'c mut Self::Connection: Executor<'c, Database = Self>,
    for<'a> String: Encode<'a, Self> + Decode<'a, Self> + Type<Self>,
    for<'a> std::sync::Arc<str>: Encode<'a, Self> + Type<Self>,
    for<'a> Option<String>: Encode<'a, Self> + Type<Self>,
    for<'a> &'a str: Decode<'a, Self> + Type<Self>,
    for<'a> i64: Encode<'a, Self> + Decode<'a, Self> + Type<Self>,
    usize: ColumnIndex<Self::Row>,
{
    fn build(sql: &str, params: &[Param]) -> sqlx::query::Query<'static, Self, Self::Arguments> {
        let mut q = sqlx::query::<Self>(AssertSqlSafe(sql.to_string()));
        for p in params {
            q = match p {
                Param::Text(s) => q.bind(s.clone()),
                Param::Int(v) => q.bind(*v),
                Param::Null => q.bind(None::<String>),
            };
        }
        q
    }

    /// [`Driver::build`] taking its parameters by value (no copy of large batches).
    fn build_owned(
        sql: &str,
        params: Vec<Param>,
    ) -> sqlx::query::Query<'static, Self, Self::Arguments> {
        let mut q = sqlx::query::<Self>(AssertSqlSafe(sql.to_string()));
        for p in params {
            q = match p {
                Param::Text(s) => q.bind(s),
                Param::Int(v) => q.bind(v),
                Param::Null => q.bind(None::<String>),
            };
        }
        q
    }

    /// Runs one statement with owned parameters on `conn`; returns the affected rows.
    async fn execute_owned(
        conn: &mut Self::Connection,
        sql: &str,
        params: Vec<Param>,
    ) -> Result<u64> {
        let done = Self::build_owned(sql, params).execute(&mut *conn).await?;
        Ok(affected::<Self>(&done))
    }

    /// Runs one statement on `conn`; returns the affected rows.
    async fn execute(conn: &mut Self::Connection, sql: &str, params: &[Param]) -> Result<u64> {
        let done = Self::build(sql, params).execute(&mut *conn).await?;
        Ok(affected::<Self>(&done))
    }

    /// Runs statements in one transaction on a pool connection.
    async fn transaction(pool: &sqlx::Pool<Self>, stmts: &[Stmt]) -> Result<bool> {
        let mut tx = pool.begin().await?;
        for stmt in stmts {
            let n = Self::execute(&mut tx, &stmt.sql, &stmt.params).await?;
            if stmt.expect_rows.is_some_and(|want| want != n) {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Inserts text rows with multi-row `INSERT … VALUES (…), (…)` statements of `per_statement`
    /// rows each, in one transaction opened with `begin`.
    #[allow(clippy::too_many_arguments)]
    async fn multi_row_insert(
        pool: &sqlx::Pool<Self>,
        begin: &'static str,
        dialect: &dyn Dialect,
        table: &TableName,
        columns: &[Ident],
        per_statement: usize,
        rows: &mut (dyn Iterator<Item = Vec<Option<String>>> + Send),
    ) -> Result<u64> {
        let cols: Vec<String> = columns.iter().map(|c| dialect.quote(c)).collect();
        let one = format!("({})", vec!["?"; columns.len()].join(", "));
        let head = format!(
            "INSERT INTO {} ({}) VALUES ",
            dialect.quote_table(table),
            cols.join(", ")
        );
        let mut tx = pool.begin_with(begin).await?;
        let mut total = 0u64;
        loop {
            let chunk: Vec<Vec<Option<String>>> = (&mut *rows).take(per_statement).collect();
            if chunk.is_empty() {
                break;
            }
            let sql = format!("{head}{}", vec![one.as_str(); chunk.len()].join(", "));
            let mut q = sqlx::query::<Self>(AssertSqlSafe(sql));
            for row in chunk {
                for v in row {
                    q = q.bind(v);
                }
            }
            total += affected::<Self>(&q.execute(&mut *tx).await?);
        }
        tx.commit().await?;
        Ok(total)
    }

    /// Runs a small query and decodes every column as text (integers are printed).
    async fn query(
        conn: &mut Self::Connection,
        sql: &str,
        params: &[Param],
    ) -> Result<Vec<TextRow>> {
        let rows = Self::build(sql, params).fetch_all(&mut *conn).await?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| match row.try_get::<Option<String>, usize>(i) {
                        Ok(v) => Ok(v),
                        Err(_) => row
                            .try_get::<Option<i64>, usize>(i)
                            .map(|v| v.map(|n| n.to_string()))
                            .map_err(Error::from),
                    })
                    .collect()
            })
            .collect()
    }

    /// Streams a select whose columns are all text (or NULL) into `sink`; returns the row count.
    async fn stream_text_rows(
        conn: &mut Self::Connection,
        select: &str,
        sink: &mut dyn RowSink,
    ) -> Result<u64> {
        let mut rows = sqlx::query::<Self>(AssertSqlSafe(select.to_string())).fetch(&mut *conn);
        let mut n = 0u64;
        while let Some(row) = rows.try_next().await? {
            let mut fields: Vec<Option<&str>> = Vec::with_capacity(row.len());
            for i in 0..row.len() {
                fields.push(row.try_get_unchecked::<Option<&str>, usize>(i)?);
            }
            sink.write_fields(&fields)
                .map_err(|e| Error::io("write export row", "<sink>", e))?;
            n += 1;
        }
        Ok(n)
    }
}

impl Driver for sqlx::Postgres {}
impl Driver for sqlx::MySql {}
impl Driver for sqlx::Sqlite {}

fn affected<DB: sqlx::Database>(done: &DB::QueryResult) -> u64 {
    // Every sqlx QueryResult has rows_affected(), but not through a shared trait.
    let any: &dyn std::any::Any = done;
    if let Some(r) = any.downcast_ref::<sqlx::postgres::PgQueryResult>() {
        r.rows_affected()
    } else if let Some(r) = any.downcast_ref::<sqlx::mysql::MySqlQueryResult>() {
        r.rows_affected()
    } else if let Some(r) = any.downcast_ref::<sqlx::sqlite::SqliteQueryResult>() {
        r.rows_affected()
    } else {
        0
    }
}

/// What one look at the database tells about its writers: its clock, and the earliest time a
/// write still running (or a write transaction still open) may have stamped.
pub(crate) struct Probe {
    pub now: super::Timestamp,
    pub earliest_open: Option<super::Timestamp>,
}

/// Settles a capture bound for a database that stamps changes by its clock: the bound is the
/// clock less the margin, held back to the earliest time an open write may have stamped, and
/// it is waited for until it has passed the instant of the first look (so every change
/// committed before the call is below it) — for at most `margin + max_wait`. A write open
/// since before that instant and still open then is not waited for any longer: the bound stops
/// at its start and [`super::Settled::held_back_since`] says so.
pub(crate) async fn settle<F, Fut>(
    options: &super::SnapshotOptions,
    mut probe: F,
) -> Result<(super::Timestamp, super::Settled)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Probe>>,
{
    let started = std::time::Instant::now();
    let asked = probe().await?.now;
    tokio::time::sleep(options.margin).await;
    loop {
        let p = probe().await?;
        let mut bound = p.now.minus(options.margin);
        if let Some(open) = p.earliest_open {
            bound = bound.min(open);
        }
        let waited = started.elapsed();
        let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
        if bound >= asked {
            return Ok((
                bound,
                super::Settled {
                    waited_ms,
                    held_back_since: None,
                },
            ));
        }
        if waited >= options.margin + options.max_wait {
            return Ok((
                bound,
                super::Settled {
                    waited_ms,
                    held_back_since: Some(bound),
                },
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
}
