//! The SQLite adapter, the embedded default. SQLite has one writer at a time, so the capture
//! bound is exact: a snapshot briefly takes the write lock (`BEGIN IMMEDIATE`), which waits out
//! any writer in flight, reads the clock, pins a read snapshot on a second connection and lets go.
//! Locks between tidemark processes are OS file locks beside the database file.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{ConnectOptions as _, Sqlite};

use super::{
    common::Driver, field, first_row, reach, Bound, ClockNeed, Column, ColumnKind, ConnectOptions,
    Database, DbKind, DbUrl, Dialect, LockGuard, Param, RowSink, Settled, Snapshot,
    SnapshotOptions, Stmt, TextRow, Timestamp, Transaction,
};
use crate::error::{server_message, ConnectFailure, Error, Result};
use crate::ident::{Ident, TableName};

/// How long a connection of the pool waits for a lock held by another.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// SQLite's clock as a canonical cursor value. SQLite's clock has millisecond precision; the
/// three zeros keep every value the same width so that text order is time order.
pub const NOW_EXPR: &str = "strftime('%Y-%m-%dT%H:%M:%f000Z','now')";

/// GLOB pattern of a canonical timestamp text (`2026-11-21T04:37:00.123456Z`).
pub const CANONICAL_GLOB: &str = "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z";

/// SQL text for SQLite.
pub struct SqliteDialect;

impl Dialect for SqliteDialect {
    fn kind(&self) -> DbKind {
        DbKind::Sqlite
    }

    fn quote(&self, id: &Ident) -> String {
        id.quote_double()
    }

    fn render(&self, column: &Column) -> String {
        let c = self.quote(&column.name);
        match column.kind {
            ColumnKind::Bool => format!(
                "CASE WHEN {c} IS NULL THEN NULL WHEN {} THEN 'true' ELSE 'false' END",
                self.is_true(&c)
            ),
            // Canonical text passes as it is. Its shape is checked by position (length, `T`,
            // `.`, `Z`) rather than by GLOB, which costs about three times as much per value and
            // is most of the rendering work of a large export; other forms are normalized.
            ColumnKind::Timestamp | ColumnKind::TimestampTz => format!(
                "CASE WHEN {c} IS NULL THEN NULL \
                 WHEN length({c}) = 27 AND substr({c}, 11, 1) = 'T' AND substr({c}, 20, 1) = '.' \
                 AND substr({c}, 27, 1) = 'Z' THEN {c} \
                 WHEN typeof({c}) IN ('integer', 'real') THEN strftime('%Y-%m-%dT%H:%M:%f', {c}, 'unixepoch') || '000Z' \
                 ELSE strftime('%Y-%m-%dT%H:%M:%f', {c}) || '000Z' END"
            ),
            // A real as text has 15 digits, which loses precision: quote() prints as many as
            // read back to the same double (infinities, beyond the largest double, by name).
            _ => format!(
                "CASE typeof({c}) WHEN 'blob' THEN '\\x' || lower(hex({c})) \
                 WHEN 'real' THEN CASE WHEN abs({c}) <= 1.7976931348623157e308 THEN quote({c}) \
                 WHEN {c} > 0 THEN 'Infinity' ELSE '-Infinity' END \
                 ELSE CAST({c} AS TEXT) END"
            ),
        }
    }

    fn column_type(&self, kind: ColumnKind, _key: bool) -> &'static str {
        match kind {
            ColumnKind::Bool => "BOOLEAN",
            ColumnKind::Integer => "INTEGER",
            ColumnKind::Float => "REAL",
            ColumnKind::Decimal => "NUMERIC",
            ColumnKind::Timestamp | ColumnKind::TimestampTz => "TIMESTAMPTZ",
            ColumnKind::Date => "DATE",
            ColumnKind::Time => "TIME",
            ColumnKind::Bytes => "BLOB",
            ColumnKind::Text | ColumnKind::Other => "TEXT",
        }
    }

    fn now_expr(&self) -> &'static str {
        NOW_EXPR
    }

    fn timestamp_literal(&self, ts: &Timestamp, _column: &Column) -> String {
        // The Display form has no quote characters: it is safe as a literal.
        format!("'{ts}'")
    }

    fn is_true(&self, expr: &str) -> String {
        format!("(COALESCE({expr}, 0) NOT IN (0, '0', 'false', 'f', 'FALSE'))")
    }

    fn drop_index(&self, name: &Ident, _table: &TableName) -> String {
        format!("DROP INDEX IF EXISTS {}", self.quote(name))
    }

    fn cursor_format_check(&self, table: &TableName, cursor: &Column) -> Option<String> {
        // Cursor values are compared as text, so they must all have the canonical form.
        let c = self.quote(&cursor.name);
        Some(format!(
            "SELECT CAST({c} AS TEXT) FROM {} WHERE {c} IS NOT NULL AND NOT ({c} GLOB '{CANONICAL_GLOB}') LIMIT 1",
            self.quote_table(table)
        ))
    }

    fn json_image(&self, row: &str, columns: &[Column]) -> String {
        // SQLite is typed per value, so the conversion looks at the value: json_object prints
        // reals with 15 digits (lossy), so they go through quote(), which adds digits until the
        // text reads back as the same double; blobs, which JSON cannot hold, become `\x` hex
        // text; infinities stay text.
        let fields: Vec<String> = columns
            .iter()
            .map(|c| {
                let v = format!("{row}.{}", self.quote(&c.name));
                format!(
                    "'{}', CASE typeof({v}) \
                     WHEN 'real' THEN CASE WHEN abs({v}) <= 1.7976931348623157e308 \
                       THEN json(quote({v})) ELSE quote({v}) END \
                     WHEN 'blob' THEN '\\x' || lower(hex({v})) ELSE {v} END",
                    c.name.as_str().replace('\'', "''")
                )
            })
            .collect();
        format!("json_object({})", fields.join(", "))
    }

    fn default_schema_query(&self) -> &'static str {
        "SELECT 'main'"
    }

    fn schema_exists_query(&self) -> &'static str {
        "SELECT name FROM pragma_database_list WHERE name = ?"
    }

    fn list_tables_query(&self, _schema: Option<&Ident>) -> (&'static str, Vec<Param>) {
        (
            "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY 1",
            vec![],
        )
    }

    fn catalog_query(&self, table: &TableName) -> (&'static str, Vec<Param>) {
        (
            "SELECT name, type, CASE WHEN \"notnull\" = 1 OR pk > 0 THEN '1' ELSE '0' END, pk \
             FROM pragma_table_info(?) ORDER BY cid",
            vec![table.name().as_str().into()],
        )
    }

    fn leading_index_query(&self, table: &TableName, column: &Ident) -> (&'static str, Vec<Param>) {
        (
            "SELECT l.name FROM pragma_index_list(?) l JOIN pragma_index_info(l.name) i \
             WHERE i.seqno = 0 AND i.name = ?",
            vec![table.name().as_str().into(), column.as_str().into()],
        )
    }

    fn key_type(&self) -> &'static str {
        "TEXT"
    }

    fn text_type(&self) -> &'static str {
        "TEXT"
    }
}

/// A SQLite database file.
pub struct SqliteDb {
    pool: SqlitePool,
    path: PathBuf,
    url: DbUrl,
    /// The connection of write transactions ([`Database::begin`]), kept between them.
    writer: Writer,
}

impl SqliteDb {
    /// SQLite's clock, as `now()`-like defaults of the demo schema stamp rows.
    async fn clock(conn: &mut sqlx::SqliteConnection) -> Result<Timestamp> {
        let now = Sqlite::query(conn, &format!("SELECT {NOW_EXPR}"), &[]).await?;
        Timestamp::parse(field(first_row(&now, "SQLite clock")?, 0).unwrap_or_default())
    }

    /// Under the write lock: the clock counts milliseconds, so wait for the next one and
    /// return its start. Every time stamped before the lock is below it, every later one at
    /// or above it.
    async fn next_tick(conn: &mut sqlx::SqliteConnection) -> Result<Timestamp> {
        let t0 = Self::clock(conn).await?;
        loop {
            let t = Self::clock(conn).await?;
            if t > t0 {
                return Ok(t0.plus(Duration::from_millis(1)).min(t));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    /// Gives a connection its usual lock wait back and returns it to the pool.
    async fn restore_busy_timeout(mut conn: sqlx::pool::PoolConnection<Sqlite>) -> Result<()> {
        let ms = BUSY_TIMEOUT.as_millis();
        if let Err(e) =
            Sqlite::execute(&mut conn, &format!("PRAGMA busy_timeout = {ms}"), &[]).await
        {
            conn.close_on_drop();
            return Err(e);
        }
        Ok(())
    }

    /// Opens the file named by `url`.
    pub async fn connect(url: &DbUrl, options: ConnectOptions) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url.as_str()).map_err(|e| Error::InvalidUrl {
            url: url.redacted(),
            reason: reach::url_reason(&e),
        })?;
        let path = opts.get_filename().to_path_buf();
        if !options.create_if_missing && !path.exists() {
            return Err(Error::InvalidUrl {
                url: url.redacted(),
                reason: format!("database file {} does not exist", path.display()),
            });
        }
        let opts = opts
            .create_if_missing(options.create_if_missing)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(false)
            // The bundled SQLite keeps temporary files (sorts, GROUP BY, statement journals of
            // savepoints) in memory by default: a large interval would grow the process with it.
            .pragma("temp_store", "FILE")
            // Rows cross from sqlx's worker thread in a channel; a deeper one wakes the
            // reader less often (replication reads 10^5 rows per run).
            .row_buffer_size(1024)
            .disable_statement_logging();
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(4).max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await
            .map_err(|e| Error::Connect {
                target: url.redacted(),
                failure: ConnectFailure::Other,
                detail: server_message(&e),
            })?;
        Ok(SqliteDb {
            pool,
            path,
            url: url.clone(),
            writer: Writer::default(),
        })
    }
}

/// A read of the database file pinned at the capture bound, on a connection of its own that
/// rusqlite drives from a blocking thread: rows reach the async side in batches, not one by
/// one through sqlx's worker thread (which cost ~95% of a large read in allocations and
/// hand-offs).
struct SqliteSnapshot {
    bound: Bound,
    conn: Option<rusqlite::Connection>,
}

fn sqlite_error(e: rusqlite::Error) -> Error {
    Error::Sqlite(e)
}

/// Rows read on the blocking thread: every field's bytes in one buffer.
struct RowBatch {
    bytes: Vec<u8>,
    /// `(start, end)` in `bytes` per field, `None` for NULL; `width` per row.
    fields: Vec<Option<(usize, usize)>>,
}

const BATCH_BYTES: usize = 256 * 1024;

/// Runs `sql` on `conn` and sends its rows in batches; stops early if the receiver is gone.
fn read_rows(
    conn: &rusqlite::Connection,
    sql: &str,
    width_out: &std::sync::atomic::AtomicUsize,
    tx: &tokio::sync::mpsc::Sender<RowBatch>,
) -> Result<()> {
    use rusqlite::types::ValueRef;
    let mut stmt = conn.prepare(sql).map_err(sqlite_error)?;
    let width = stmt.column_count();
    width_out.store(width, std::sync::atomic::Ordering::SeqCst);
    let mut rows = stmt.query([]).map_err(sqlite_error)?;
    let fresh = || RowBatch {
        bytes: Vec::with_capacity(BATCH_BYTES + 4096),
        fields: Vec::with_capacity(4096),
    };
    let mut batch = fresh();
    while let Some(row) = rows.next().map_err(sqlite_error)? {
        for i in 0..width {
            let start = batch.bytes.len();
            match row.get_ref(i).map_err(sqlite_error)? {
                ValueRef::Null => {
                    batch.fields.push(None);
                    continue;
                }
                ValueRef::Text(t) | ValueRef::Blob(t) => batch.bytes.extend_from_slice(t),
                ValueRef::Integer(n) => batch.bytes.extend_from_slice(n.to_string().as_bytes()),
                ValueRef::Real(f) => batch.bytes.extend_from_slice(f.to_string().as_bytes()),
            }
            batch.fields.push(Some((start, batch.bytes.len())));
        }
        if batch.bytes.len() >= BATCH_BYTES {
            let full = std::mem::replace(&mut batch, fresh());
            if tx.blocking_send(full).is_err() {
                return Ok(());
            }
        }
    }
    if !batch.fields.is_empty() {
        let _ = tx.blocking_send(batch);
    }
    Ok(())
}

impl SqliteSnapshot {
    /// Runs `work` on the snapshot's connection on a blocking thread.
    async fn with_conn<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self
            .conn
            .take()
            .ok_or_else(|| Error::Runtime("SQLite snapshot already ended".into()))?;
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let out = work(&conn);
            (conn, out)
        })
        .await
        .map_err(|e| Error::Runtime(format!("SQLite reader thread failed: {e}")))?;
        self.conn = Some(conn);
        out
    }
}

#[async_trait]
impl Snapshot for SqliteSnapshot {
    fn bound(&self) -> Bound {
        self.bound.clone()
    }

    async fn stream(&mut self, select: &str, sink: &mut dyn RowSink) -> Result<u64> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RowBatch>(4);
        let width = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sql = select.to_string();
        let w = std::sync::Arc::clone(&width);
        let reading = self.with_conn(move |conn| read_rows(conn, &sql, &w, &tx));
        // The writing side owns the receiver, so that it is dropped the moment writing stops
        // (a full disk, an abandoned export): the reader's next `blocking_send` then fails and
        // its thread ends instead of waiting forever for room in the channel.
        let writing = async move {
            let mut n = 0u64;
            while let Some(batch) = rx.recv().await {
                let width = width.load(std::sync::atomic::Ordering::SeqCst).max(1);
                // Text columns hold UTF-8 unless an application stored otherwise; such bytes
                // are replaced field by field, as sqlx did.
                let owned: Vec<Option<String>>;
                let text: Vec<Option<&str>> = match std::str::from_utf8(&batch.bytes) {
                    Ok(all) => batch
                        .fields
                        .iter()
                        .map(|f| f.map(|(a, b)| &all[a..b]))
                        .collect(),
                    Err(_) => {
                        owned = batch
                            .fields
                            .iter()
                            .map(|f| {
                                f.map(|(a, b)| {
                                    String::from_utf8_lossy(&batch.bytes[a..b]).into_owned()
                                })
                            })
                            .collect();
                        owned.iter().map(|f| f.as_deref()).collect()
                    }
                };
                for row in text.chunks(width) {
                    if let Err(e) = sink.write_fields(row) {
                        rx.close();
                        drop(rx);
                        return Err(Error::io("write export row", "<sink>", e));
                    }
                    n += 1;
                }
            }
            Ok::<u64, Error>(n)
        };
        let (read, written) = tokio::join!(reading, writing);
        // A write failure stops the reader (its channel closes); report the write's error.
        let n = written?;
        read?;
        Ok(n)
    }

    async fn query(&mut self, sql: &str) -> Result<Vec<TextRow>> {
        let sql = sql.to_string();
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare(&sql).map_err(sqlite_error)?;
            let width = stmt.column_count();
            let rows = text_rows(stmt.query([]).map_err(sqlite_error)?, width);
            rows
        })
        .await
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        self.with_conn(|conn| conn.execute_batch("COMMIT").map_err(sqlite_error))
            .await
    }
}

struct FileLock(File);

#[async_trait]
impl LockGuard for FileLock {
    async fn release(self: Box<Self>) -> Result<()> {
        // Closing the file releases the lock; unlock first so it is gone even if a clone of
        // the descriptor lives on somewhere.
        let _ = self.0.unlock();
        Ok(())
    }
}

/// The replication target's write transaction, on a connection of its own that rusqlite drives
/// from a blocking thread (as the snapshot reader does): each statement is prepared once per
/// connection and kept (the apply's multi-row statements come in a few sizes), and its
/// parameters are bound straight from the delta's texts, with no hand-off to sqlx's worker
/// thread per statement. The connection goes back to its [`Writer`] after COMMIT or ROLLBACK;
/// one dropped in the middle of a transaction is closed, which rolls it back.
struct SqliteTx {
    conn: Option<rusqlite::Connection>,
    home: Writer,
}

/// The idle write connection of a [`SqliteDb`] (opened on first use).
type Writer = std::sync::Arc<std::sync::Mutex<Option<rusqlite::Connection>>>;

/// Prepared statements a write connection keeps.
const WRITER_STATEMENTS: usize = 64;

fn bind_params(stmt: &mut rusqlite::CachedStatement<'_>, params: &[Param]) -> Result<()> {
    for (i, p) in params.iter().enumerate() {
        let at = i + 1;
        match p {
            Param::Text(t) => stmt.raw_bind_parameter(at, &**t),
            Param::Int(v) => stmt.raw_bind_parameter(at, v),
            Param::Null => stmt.raw_bind_parameter(at, rusqlite::types::Null),
        }
        .map_err(sqlite_error)?;
    }
    Ok(())
}

impl SqliteTx {
    /// Opens a write connection to `path` with the pool's settings.
    fn open(path: &std::path::Path) -> Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open(path).map_err(sqlite_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite_error)?;
        conn.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
        // As the pool's connections (see `connect`).
        conn.execute_batch("PRAGMA foreign_keys = OFF; PRAGMA temp_store = FILE")
            .map_err(sqlite_error)?;
        Ok(conn)
    }

    /// Runs `work` on the connection on a blocking thread.
    async fn with_conn<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self
            .conn
            .take()
            .ok_or_else(|| Error::Runtime("SQLite transaction already ended".into()))?;
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let out = work(&conn);
            (conn, out)
        })
        .await
        .map_err(|e| Error::Runtime(format!("SQLite writer thread failed: {e}")))?;
        self.conn = Some(conn);
        out
    }

    /// Ends the transaction with `sql` (COMMIT or ROLLBACK) and gives the connection back.
    async fn end(mut self: Box<Self>, sql: &'static str) -> Result<()> {
        self.with_conn(move |c| c.execute_batch(sql).map_err(sqlite_error))
            .await?;
        if let (Some(conn), Ok(mut home)) = (self.conn.take(), self.home.lock()) {
            *home = Some(conn);
        }
        Ok(())
    }
}

#[async_trait]
impl Transaction for SqliteTx {
    async fn execute(&mut self, sql: &str, params: Vec<Param>) -> Result<u64> {
        let sql = sql.to_string();
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(sqlite_error)?;
            bind_params(&mut stmt, &params)?;
            let n = stmt.raw_execute().map_err(sqlite_error)?;
            Ok(n as u64)
        })
        .await
    }

    async fn query(&mut self, sql: &str, params: Vec<Param>) -> Result<Vec<TextRow>> {
        let sql = sql.to_string();
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(sqlite_error)?;
            bind_params(&mut stmt, &params)?;
            let width = stmt.column_count();
            let rows = text_rows(stmt.raw_query(), width);
            rows
        })
        .await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.end("COMMIT").await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.end("ROLLBACK").await
    }
}

#[async_trait]
impl Database for SqliteDb {
    fn kind(&self) -> DbKind {
        DbKind::Sqlite
    }

    fn dialect(&self) -> &dyn Dialect {
        &SqliteDialect
    }

    fn target(&self) -> String {
        self.url.redacted()
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        Sqlite::query(&mut conn, "SELECT count(*) FROM sqlite_schema", &[]).await?;
        Ok(())
    }

    async fn execute(&self, sql: &str, params: &[Param]) -> Result<u64> {
        let mut conn = self.pool.acquire().await?;
        Sqlite::execute(&mut conn, sql, params).await
    }

    async fn transaction(&self, stmts: &[Stmt]) -> Result<bool> {
        Sqlite::transaction(&self.pool, stmts).await
    }

    async fn query(&self, sql: &str, params: &[Param]) -> Result<Vec<TextRow>> {
        let mut conn = self.pool.acquire().await?;
        Sqlite::query(&mut conn, sql, params).await
    }

    async fn snapshot(&self, options: &SnapshotOptions) -> Result<Box<dyn Snapshot>> {
        let started = std::time::Instant::now();
        // A change log's ids are handed out in commit order (one writer at a time): its
        // positions need no lock and no clock. Times do: the write lock waits for a writer in
        // flight and keeps new ones out while the clock is read and the read is pinned.
        let mut time = Timestamp::now();
        let mut settled = Settled::default();
        let mut locked = None;
        if options.clock != ClockNeed::UnlessTxidsOrLogIds {
            let mut conn = self.pool.acquire().await?;
            let wait = options.margin + options.max_wait;
            let wait_ms = wait.as_millis();
            Sqlite::execute(&mut conn, &format!("PRAGMA busy_timeout = {wait_ms}"), &[]).await?;
            match Sqlite::execute(&mut conn, "BEGIN IMMEDIATE", &[]).await {
                Ok(_) => match Self::next_tick(&mut conn).await {
                    Ok(t) => {
                        time = t;
                        locked = Some(conn);
                    }
                    Err(e) => {
                        conn.close_on_drop();
                        return Err(e);
                    }
                },
                Err(e) if e.is_sqlite_busy() => {
                    // A write transaction holds the database past the wait: its times are
                    // unknown, so this read covers nothing new by the clock.
                    time = Timestamp::from_datetime(chrono::DateTime::UNIX_EPOCH);
                    settled.held_back_since = Some(time);
                    Self::restore_busy_timeout(conn).await?;
                }
                Err(e) => {
                    conn.close_on_drop();
                    return Err(e);
                }
            }
            settled.waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
        let path = self.path.clone();
        let conn = tokio::task::spawn_blocking(move || -> Result<rusqlite::Connection> {
            use rusqlite::OpenFlags;
            let conn = rusqlite::Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(sqlite_error)?;
            conn.busy_timeout(Duration::from_secs(10))
                .map_err(sqlite_error)?;
            // Sorts and GROUP BY of a large interval spill to disk, not to memory (see connect).
            conn.pragma_update(None, "temp_store", "FILE")
                .map_err(sqlite_error)?;
            // The first read of the transaction pins its snapshot.
            conn.execute_batch("BEGIN").map_err(sqlite_error)?;
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(sqlite_error)?;
            Ok(conn)
        })
        .await
        .map_err(|e| Error::Runtime(format!("SQLite reader thread failed: {e}")));
        if let Some(mut lock) = locked {
            if let Err(e) = Sqlite::execute(&mut lock, "ROLLBACK", &[]).await {
                lock.close_on_drop();
                return Err(e);
            }
            Self::restore_busy_timeout(lock).await?;
        }
        let conn = conn??;
        Ok(Box::new(SqliteSnapshot {
            bound: Bound {
                time,
                txids: None,
                extent: None,
                settled,
            },
            conn: Some(conn),
        }))
    }

    async fn try_lock(&self, name: &str) -> Result<Option<Box<dyn LockGuard>>> {
        let mut dir = self.path.clone().into_os_string();
        dir.push(".tidemark-locks");
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create lock directory", &dir, e))?;
        let file_name = format!(
            "{}.lock",
            &hex::encode(Sha256::digest(name.as_bytes()))[..32]
        );
        let path = dir.join(file_name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open lock file", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(FileLock(file)))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
        }
    }

    async fn bulk_insert(
        &self,
        table: &TableName,
        columns: &[Ident],
        rows: &mut (dyn Iterator<Item = Vec<Option<String>>> + Send),
    ) -> Result<u64> {
        // SQLite allows 32,766 parameters per statement.
        Sqlite::multi_row_insert(
            &self.pool,
            "BEGIN IMMEDIATE",
            &SqliteDialect,
            table,
            columns,
            500,
            rows,
        )
        .await
    }

    async fn now(&self) -> Result<Timestamp> {
        let rows = self.query(&format!("SELECT {NOW_EXPR}"), &[]).await?;
        Timestamp::parse(field(first_row(&rows, "SQLite clock")?, 0).unwrap_or_default())
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let idle = self.writer.lock().ok().and_then(|mut w| w.take());
        let path = self.path.clone();
        let conn = tokio::task::spawn_blocking(move || -> Result<rusqlite::Connection> {
            let conn = match idle {
                Some(c) => c,
                None => SqliteTx::open(&path)?,
            };
            conn.execute_batch("BEGIN IMMEDIATE")
                .map_err(sqlite_error)?;
            Ok(conn)
        })
        .await
        .map_err(|e| Error::Runtime(format!("SQLite writer thread failed: {e}")))??;
        Ok(Box::new(SqliteTx {
            conn: Some(conn),
            home: std::sync::Arc::clone(&self.writer),
        }))
    }
}

/// Every row of `rows` (of `width` columns) as text, NULL as `None`.
fn text_rows(mut rows: rusqlite::Rows<'_>, width: usize) -> Result<Vec<TextRow>> {
    use rusqlite::types::ValueRef;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite_error)? {
        let mut r: TextRow = Vec::with_capacity(width);
        for i in 0..width {
            r.push(match row.get_ref(i).map_err(sqlite_error)? {
                ValueRef::Null => None,
                ValueRef::Integer(n) => Some(n.to_string()),
                ValueRef::Real(f) => Some(f.to_string()),
                ValueRef::Text(t) | ValueRef::Blob(t) => {
                    Some(String::from_utf8_lossy(t).into_owned())
                }
            });
        }
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::connect;

    /// Refuses every row after the first `ok`, as a full disk does.
    struct Failing {
        ok: u64,
    }

    impl RowSink for Failing {
        fn write_fields(&mut self, _fields: &[Option<&str>]) -> std::io::Result<()> {
            if self.ok == 0 {
                return Err(std::io::ErrorKind::StorageFull.into());
            }
            self.ok -= 1;
            Ok(())
        }

        fn write_csv_record(&mut self, _record: &[u8]) -> std::io::Result<()> {
            self.write_fields(&[])
        }
    }

    /// A sink that fails while the reader still has far more rows than the channel holds
    /// must end the stream with an error, not leave the reader waiting for room forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_sink_stops_the_reader() {
        let file = crate::testkit::SqliteFile::new().unwrap();
        let db = connect(
            &file.url,
            ConnectOptions {
                create_if_missing: true,
                max_connections: None,
            },
        )
        .await
        .unwrap();
        // ~6 MB of rows: 24 batches, the channel holds 4.
        db.execute(
            "CREATE TABLE t AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
             WHERE i < 60000) SELECT i, printf('%.80d', i) AS pad FROM n",
            &[],
        )
        .await
        .unwrap();
        for ok in [0, 1, 30_000] {
            let options = SnapshotOptions::new(Duration::ZERO, ClockNeed::Always);
            let mut snapshot = db.snapshot(&options).await.unwrap();
            let streamed = tokio::time::timeout(
                Duration::from_secs(20),
                snapshot.stream("SELECT i, pad FROM t", &mut Failing { ok }),
            )
            .await
            .expect("the stream must end when its sink fails");
            let err = streamed.expect_err("the sink's failure");
            assert!(
                matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull),
                "{err}"
            );
            // The snapshot's connection came back from the reader thread.
            assert_eq!(snapshot.query("SELECT 1").await.unwrap().len(), 1);
        }
    }
}
