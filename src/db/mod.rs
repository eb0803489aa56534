//! Database adapters: parsing source URLs, connecting, and the two seams every other module
//! talks through — [`Dialect`] (pure SQL text for one database) and [`Database`] (a live
//! connection pool that runs statements, describes tables, streams rows and takes locks).
//! One submodule per database implements both.

mod common;
pub mod mysql;
pub mod portable;
pub mod postgres;
mod postgres_copy;
pub mod reach;
pub mod sqlite;
pub mod types;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};

use crate::error::{Error, Result};
use crate::ident::{Ident, TableName};

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DbKind {
    Sqlite,
    Postgres,
    Mysql,
}

impl fmt::Display for DbKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DbKind::Sqlite => "sqlite",
            DbKind::Postgres => "postgres",
            DbKind::Mysql => "mysql",
        })
    }
}

/// A checked database URL: `sqlite://PATH`, `postgres://…` (or `postgresql://…`), `mysql://…`
/// (or `mariadb://…`).
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    kind: DbKind,
    url: String,
}

impl DbUrl {
    /// Parses and checks a URL without connecting.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidUrl {
            url: redact(url),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url
            .split_once(':')
            .ok_or_else(|| bad("expected sqlite://PATH, postgres://… or mysql://…"))?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => DbKind::Sqlite,
            "postgres" | "postgresql" => DbKind::Postgres,
            "mysql" | "mariadb" => DbKind::Mysql,
            other => return Err(bad(&format!("unknown scheme {other:?}"))),
        };
        let url = match kind {
            DbKind::Sqlite => {
                let path = rest.trim_start_matches("//");
                let path = path.split('?').next().unwrap_or_default();
                if path.is_empty() {
                    return Err(bad("no file path after sqlite://"));
                }
                if path == ":memory:" || rest.contains("mode=memory") {
                    return Err(bad(
                        "an in-memory database cannot be captured: give a file path",
                    ));
                }
                url.to_string()
            }
            DbKind::Postgres | DbKind::Mysql => {
                let after = rest
                    .strip_prefix("//")
                    .ok_or_else(|| bad("expected //host after the scheme"))?;
                let authority = after.split(['/', '?']).next().unwrap_or_default();
                let host = authority.rsplit('@').next().unwrap_or_default();
                if host.is_empty() && !after.contains("host=") {
                    return Err(bad("no host"));
                }
                reach::check_parameters(kind, url).map_err(|reason| bad(&reason))?;
                if kind == DbKind::Mysql {
                    // sqlx only knows the mysql scheme; MariaDB users often write mariadb://.
                    format!("mysql:{rest}")
                } else {
                    url.to_string()
                }
            }
        };
        Ok(DbUrl { kind, url })
    }

    /// The database kind.
    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// The URL with any password replaced by `***`, for messages and logs.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }

    /// The URL as given, credentials included: for connecting, never for messages.
    pub fn as_str(&self) -> &str {
        &self.url
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL tidemark understands, so its parts are unknown: hide whatever comes
        // before an `@` (user and password) and any password parameter.
        return match url.rsplit_once('@') {
            Some((before, host)) => {
                let scheme = before.split_once(':').map_or("", |(s, _)| s);
                redact_params(&format!("{scheme}:***@{host}"))
            }
            None => redact_params(url),
        };
    };
    // A password given as a query parameter (`?password=…`).
    if let Some((before, query)) = rest.split_once('?') {
        let hidden = |p: &str| p.starts_with("password=") && p != "password=***";
        if query.split('&').any(hidden) {
            let query: Vec<&str> = query
                .split('&')
                .map(|p| if hidden(p) { "password=***" } else { p })
                .collect();
            return redact(&format!("{scheme}://{before}?{}", query.join("&")));
        }
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let tail = redact_params(tail);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => format!("{scheme}://{authority}{tail}"),
        },
        None => format!("{scheme}://{authority}{tail}"),
    }
}

/// `text` with the value of every `password=` or `sslpassword=` parameter replaced by `***`.
fn redact_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.to_ascii_lowercase().find("password=") {
        let (head, tail) = rest.split_at(i + "password=".len());
        out.push_str(head);
        out.push_str("***");
        rest = &tail[tail.find(['&', ' ', '"', '\'']).unwrap_or(tail.len())..];
    }
    out.push_str(rest);
    out
}

/// `text` (a message, a log line) with the credentials of every database URL in it hidden
/// (`postgres://user:***@host/db`): the last guard before anything is shown.
pub fn redact_text(text: &str) -> String {
    if !text.contains("://") && !text.to_ascii_lowercase().contains("password=") {
        return text.to_string();
    }
    text.split_inclusive(char::is_whitespace)
        .map(|word| {
            let trimmed = word.trim_end();
            let end = &word[trimmed.len()..];
            let inner = trimmed.trim_matches(|c| matches!(c, '"' | '\'' | '(' | ')' | ',' | '`'));
            if inner.contains("://") || inner.to_ascii_lowercase().contains("password=") {
                format!("{}{end}", trimmed.replacen(inner, &redact(inner), 1))
            } else {
                word.to_string()
            }
        })
        .collect()
}

/// A privilege tidemark may need on a server database (see the README, "Least privilege").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Privilege {
    /// Reading the table.
    Select,
    /// Writing the table (a replica target).
    Insert,
    Update,
    Delete,
    /// Creating tables next to the table (state tables, change logs, replica tables).
    Create,
    /// Creating views next to the table (the `trigger` strategy's change view).
    CreateView,
    /// Creating an index on the table (PostgreSQL: owning it).
    Index,
    /// Creating triggers on the table (PostgreSQL: owning it).
    Trigger,
    /// Adding a column to the table (PostgreSQL: owning it).
    Alter,
    /// Seeing other sessions' open transactions (PostgreSQL `pg_read_all_stats`, MariaDB
    /// `PROCESS`), which a clock-based capture bound needs to be exact.
    SeeTransactions,
}

/// How to open a database.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectOptions {
    /// Create a missing SQLite file (seed, demo); otherwise a missing file is an error.
    pub create_if_missing: bool,
    /// Most connections in the pool.
    pub max_connections: Option<u32>,
}

/// Connects to `url` and returns its adapter.
pub async fn connect(url: &DbUrl, options: ConnectOptions) -> Result<Arc<dyn Database>> {
    let db: Result<Arc<dyn Database>> = match url.kind() {
        DbKind::Sqlite => sqlite::SqliteDb::connect(url, options)
            .await
            .map(|d| Arc::new(d) as _),
        DbKind::Postgres => postgres::PostgresDb::connect(url, options)
            .await
            .map(|d| Arc::new(d) as _),
        DbKind::Mysql => mysql::MysqlDb::connect(url, options)
            .await
            .map(|d| Arc::new(d) as _),
    };
    db.map_err(|e| e.denied_database(url))
}

/// The kinds of column value tidemark formats differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    Bool,
    Integer,
    Float,
    Decimal,
    Text,
    /// A timestamp without a zone; its values are taken to be UTC.
    Timestamp,
    /// A point in time (TIMESTAMPTZ, MySQL TIMESTAMP).
    TimestampTz,
    Date,
    /// A time of day (PostgreSQL `time`) or a duration (MariaDB `TIME`).
    Time,
    Bytes,
    Other,
}

impl ColumnKind {
    /// True for the two timestamp kinds.
    pub fn is_timestamp(self) -> bool {
        matches!(self, ColumnKind::Timestamp | ColumnKind::TimestampTz)
    }
}

/// One column of a table, from the catalog.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Column {
    pub name: Ident,
    /// The type as the catalog spells it.
    pub sql_type: String,
    pub kind: ColumnKind,
    pub nullable: bool,
}

/// A table's columns (in catalog order) and primary key (in key order).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableInfo {
    pub name: TableName,
    pub columns: Vec<Column>,
    pub primary_key: Vec<Ident>,
}

impl TableInfo {
    /// The column called `name`, if any.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name.as_str() == name)
    }
}

/// A point in time with microsecond precision, printed as RFC 3339 UTC
/// (`2026-11-21T04:37:00.123456Z`): the form of cursor values and watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// Wraps a time, truncated to microseconds.
    pub fn from_datetime(t: DateTime<Utc>) -> Self {
        Timestamp(t.trunc_subsecs(6))
    }

    /// Parses RFC 3339 (any offset) or `YYYY-MM-DD HH:MM:SS[.ffffff]` taken as UTC.
    pub fn parse(s: &str) -> Result<Self> {
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(Self::from_datetime(t.with_timezone(&Utc)));
        }
        for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
            if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
                return Ok(Self::from_datetime(t.and_utc()));
            }
        }
        Err(Error::input(format!(
            "invalid timestamp {s:?}: expected RFC 3339 like 2026-11-21T04:37:00.123456Z"
        )))
    }

    /// The current time of this machine's clock.
    pub fn now() -> Self {
        Self::from_datetime(Utc::now())
    }

    /// The wrapped time.
    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// This time plus `d` (unchanged if that is out of range).
    pub fn plus(&self, d: std::time::Duration) -> Self {
        let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Timestamp(self.0.checked_add_signed(d).unwrap_or(self.0))
    }

    /// This time less `d` (unchanged if that is out of range).
    pub fn minus(&self, d: std::time::Duration) -> Self {
        let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Timestamp(self.0.checked_sub_signed(d).unwrap_or(self.0))
    }

    /// `YYYY-MM-DD HH:MM:SS.ffffff` (no zone), for databases that want that form.
    pub fn to_sql_naive(&self) -> String {
        self.0.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%dT%H:%M:%S%.6fZ"))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A statement parameter. State and seed statements bind only these. Text is shared: a
/// replicated value is bound without a copy (SQLite takes an `Arc<str>` as it is).
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(Arc<str>),
    Int(i64),
    Null,
}

impl From<&str> for Param {
    fn from(s: &str) -> Self {
        Param::Text(s.into())
    }
}
impl From<String> for Param {
    fn from(s: String) -> Self {
        Param::Text(s.into())
    }
}
impl From<Arc<str>> for Param {
    fn from(s: Arc<str>) -> Self {
        Param::Text(s)
    }
}
impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::Int(v)
    }
}
impl<T: Into<Param>> From<Option<T>> for Param {
    fn from(v: Option<T>) -> Self {
        v.map_or(Param::Null, Into::into)
    }
}

/// One statement of a transaction, written with `?` placeholders (the adapter renumbers them
/// where the database wants `$n`). With `expect_rows`, a different affected-row count rolls
/// the whole transaction back with [`Error::Conflict`]-like failure reported by the caller.
#[derive(Debug, Clone)]
pub struct Stmt {
    pub sql: String,
    pub params: Vec<Param>,
    pub expect_rows: Option<u64>,
}

impl Stmt {
    /// A statement whose row count does not matter.
    pub fn new(sql: impl Into<String>, params: Vec<Param>) -> Self {
        Stmt {
            sql: sql.into(),
            params,
            expect_rows: None,
        }
    }

    /// Requires the statement to affect exactly `n` rows.
    pub fn expect(mut self, n: u64) -> Self {
        self.expect_rows = Some(n);
        self
    }
}

/// A result row of a small query: each column as text, `None` for NULL.
pub type TextRow = Vec<Option<String>>;

/// Field `i` of a result row as text: `None` for NULL or for a column the row does not have
/// (query results are never indexed, so no answer of a database can make tidemark panic).
pub fn field(row: &[Option<String>], i: usize) -> Option<&str> {
    row.get(i).and_then(|v| v.as_deref())
}

/// The first row of a query that always returns one (the clock, a lock attempt); a runtime
/// error naming `what` when the database returned none.
pub fn first_row<'r>(rows: &'r [TextRow], what: &str) -> Result<&'r TextRow> {
    rows.first()
        .ok_or_else(|| Error::Runtime(format!("{what}: the database returned no row")))
}

/// Where streamed rows go (a CSV file, a hash, a counter).
pub trait RowSink: Send {
    /// One row as text fields, `None` for NULL.
    fn write_fields(&mut self, fields: &[Option<&str>]) -> std::io::Result<()>;
    /// One row already encoded as a CSV record, with or without its `\n` terminator
    /// (PostgreSQL's COPY). Its fields follow the same rules as [`RowSink::write_fields`].
    fn write_csv_record(&mut self, record: &[u8]) -> std::io::Result<()>;
}

/// SQL text for one database. Pure: no I/O.
pub trait Dialect: Send + Sync {
    /// Which database this text is for (capture strategies install different triggers on each).
    fn kind(&self) -> DbKind;
    /// Quotes an identifier.
    fn quote(&self, id: &Ident) -> String;
    /// Quotes a table name, qualified by its schema when it has one.
    fn quote_table(&self, table: &TableName) -> String {
        match table.schema() {
            Some(schema) => format!("{}.{}", self.quote(schema), self.quote(table.name())),
            None => self.quote(table.name()),
        }
    }
    /// A query giving the connection's default schema (one row, one column): PostgreSQL's
    /// `current_schema()`, MySQL's `DATABASE()`, SQLite's `main`.
    fn default_schema_query(&self) -> &'static str;
    /// A query with one parameter (a schema name) that returns a row when the schema exists.
    fn schema_exists_query(&self) -> &'static str;
    /// A query listing the names of the base tables of `schema` (the default schema when
    /// `None`), one per row, with its parameters.
    fn list_tables_query(&self, schema: Option<&Ident>) -> (&'static str, Vec<Param>);
    /// An expression giving the column's value as the text that goes into a CSV field
    /// (booleans `true`/`false`, timestamps RFC 3339 UTC with microseconds, NULL stays NULL).
    fn render(&self, column: &Column) -> String;
    /// An expression for `column` in a select that [`Snapshot::stream`] reads (exports,
    /// replication): [`Dialect::render`] unless the adapter's stream decodes the column's
    /// typed value itself — then the raw column — into exactly the text `render` would give.
    fn render_streamed(&self, column: &Column) -> String {
        self.render(column)
    }
    /// A literal of `ts` comparable with values of `column` (a timestamp column).
    fn timestamp_literal(&self, ts: &Timestamp, column: &Column) -> String;
    /// The column type to create for values of `kind` (`key`: the column is indexed or unique)
    /// in tables tidemark makes itself (seed, demo, tests). Replica targets are created from
    /// the source's parsed catalog type instead ([`types::created_type`]), which keeps
    /// precision, scale and length.
    fn column_type(&self, kind: ColumnKind, key: bool) -> &'static str;
    /// An expression giving the database clock in the form its timestamp columns store, as
    /// applications stamp `updated_at` (`now()`, `NOW(6)`, …).
    fn now_expr(&self) -> &'static str;
    /// The text to insert into a timestamp column for `ts` (seeding, tests).
    fn timestamp_value(&self, ts: &Timestamp) -> String {
        ts.to_string()
    }
    /// A condition true when the (boolean) column expression is true; NULL counts as false.
    fn is_true(&self, expr: &str) -> String;
    /// A query listing `table`'s columns in order, one row each: name, type, `'1'` when the
    /// column is NOT NULL (or part of the primary key), and its position in the primary key
    /// (0 when not in it); with its one parameter. No rows: the table does not exist.
    fn catalog_query(&self, table: &TableName) -> (&'static str, Vec<Param>);
    /// A query naming the indexes of `table` whose first column is `column` (one per row), with
    /// its parameters.
    fn leading_index_query(&self, table: &TableName, column: &Ident) -> (&'static str, Vec<Param>);
    /// The type for short text keys in tidemark's own tables.
    fn key_type(&self) -> &'static str;
    /// The type for long text in tidemark's own tables.
    fn text_type(&self) -> &'static str;
    /// `CREATE INDEX IF NOT EXISTS name ON table (columns)`.
    fn create_index(&self, name: &Ident, table: &TableName, columns: &[&Ident]) -> String {
        let cols: Vec<String> = columns.iter().map(|c| self.quote(c)).collect();
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
            self.quote(name),
            self.quote_table(table),
            cols.join(", ")
        )
    }
    /// A query returning a value of `cursor` that the dialect cannot order correctly (one row),
    /// or nothing; `None` when every value of a timestamp column orders correctly.
    fn cursor_format_check(&self, _table: &TableName, _cursor: &Column) -> Option<String> {
        None
    }
    /// `DROP INDEX IF EXISTS name` (on `table` where the dialect needs it).
    fn drop_index(&self, name: &Ident, table: &TableName) -> String;
    /// A query telling whether the session holds `privilege` for `table`: one row of two
    /// columns, `1` or `0`, and the name of what the privilege is on (the table, or the schema
    /// or database for [`Privilege::Create`]); a table that does not exist counts as granted
    /// (its absence is said elsewhere). `None` where the database has no privileges (SQLite).
    fn privilege_query(
        &self,
        _privilege: Privilege,
        _table: &TableName,
    ) -> Option<(&'static str, Vec<Param>)> {
        None
    }
    /// An expression giving the JSON object of all `columns` of the trigger row `row` (`NEW` or
    /// `OLD`), types kept: numbers as JSON numbers (floats exact), text as strings, timestamps
    /// with microseconds, binary as `\x` hex text.
    fn json_image(&self, row: &str, columns: &[Column]) -> String;
}

/// What a snapshot covers exactly: the capture bound on the clock and, on PostgreSQL, the
/// transaction-id snapshot (`xmin:xmax:xip,…`) of the read itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// Every change stamped (by the database clock) before this is visible in the snapshot.
    pub time: Timestamp,
    /// `pg_current_snapshot()` of the snapshot's transaction (PostgreSQL only).
    pub txids: Option<String>,
    /// The largest change id the snapshot sees, for strategies whose ids are handed out in
    /// commit order (a SQLite change log: one writer at a time); see
    /// `CaptureStrategy::extent_query`.
    pub extent: Option<i64>,
    /// How the bound was settled: how long it waited, and whether a transaction open when the
    /// snapshot was asked for holds changes back.
    pub settled: Settled,
}

impl Bound {
    /// A bound on the clock only, settled at once.
    pub fn at(time: Timestamp) -> Self {
        Bound {
            time,
            txids: None,
            extent: None,
            settled: Settled::default(),
        }
    }
}

/// How long a snapshot waited for its capture bound to pass the instant it was asked for, and
/// what it could not wait for.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Settled {
    /// Milliseconds spent waiting (at most [`SnapshotOptions::max_wait`] plus the margin).
    pub waited_ms: u64,
    /// Set when a write transaction that was already open when the snapshot was asked for is
    /// still open: changes stamped from this time on wait for a later read (they are never
    /// lost; a later export delivers them once that transaction ends).
    pub held_back_since: Option<Timestamp>,
}

/// Where a strategy's positions need the clock bound to be exact (and so where taking a
/// snapshot must wait for the bound to pass the instant it was asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockNeed {
    /// Positions are cursor times on every database.
    Always,
    /// Positions are transaction snapshots where the database has them (PostgreSQL), times
    /// elsewhere.
    UnlessTxids,
    /// As [`ClockNeed::UnlessTxids`], and change-log ids where a database hands them out in
    /// commit order (SQLite, one writer at a time).
    UnlessTxidsOrLogIds,
}

/// How to take a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotOptions {
    /// How long a write may take, at most, from stamping its time to being listed as running
    /// by the database (the race a bound must allow for).
    pub margin: std::time::Duration,
    /// What the positions rest on.
    pub clock: ClockNeed,
    /// The longest wait for writes that were running when the snapshot was asked for to end;
    /// past it their changes are held back for a later read and the bound says so.
    pub max_wait: std::time::Duration,
}

impl SnapshotOptions {
    /// The longest wait for open transactions by default: short enough that an export never
    /// waits a second in all, long enough for ordinary write transactions to commit.
    pub const DEFAULT_MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

    /// Options with the default wait.
    pub fn new(margin: std::time::Duration, clock: ClockNeed) -> Self {
        SnapshotOptions {
            margin,
            clock,
            max_wait: Self::DEFAULT_MAX_WAIT,
        }
    }
}

/// A consistent read of the source at one instant, together with the capture bound taken
/// just before it: every transaction that could still commit a cursor value below
/// [`Snapshot::bound`] had committed when the snapshot began, so it is visible here.
#[async_trait]
pub trait Snapshot: Send {
    /// The exclusive upper bound of cursor values this snapshot covers exactly, and on
    /// PostgreSQL the snapshot's transaction ids.
    fn bound(&self) -> Bound;
    /// Runs `select` (whose columns are rendered as text, or by [`Dialect::render_streamed`])
    /// and streams its rows as canonical text.
    async fn stream(&mut self, select: &str, sink: &mut dyn RowSink) -> Result<u64>;
    /// Runs a small query inside the snapshot.
    async fn query(&mut self, sql: &str) -> Result<Vec<TextRow>>;
    /// Ends the read.
    async fn finish(self: Box<Self>) -> Result<()>;
}

/// Notifications of a channel the database sends (PostgreSQL LISTEN/NOTIFY).
#[async_trait]
pub trait Wakeups: Send + Sync {
    /// Waits for the next notification.
    async fn next(&mut self) -> Result<()>;
}

/// A held lock; released by [`LockGuard::release`] or, if the process dies, by the database
/// or the operating system.
#[async_trait]
pub trait LockGuard: Send {
    /// Releases the lock.
    async fn release(self: Box<Self>) -> Result<()>;
}

/// An open write transaction whose caller decides when it ends (replication applies a whole
/// interval of changes and its position in one). Dropped without [`Transaction::commit`], it
/// rolls back.
#[async_trait]
pub trait Transaction: Send {
    /// Runs one statement with `?` placeholders; returns the affected rows.
    async fn execute(&mut self, sql: &str, params: Vec<Param>) -> Result<u64>;
    /// Runs a small query; every column must decode as text or an integer.
    async fn query(&mut self, sql: &str, params: Vec<Param>) -> Result<Vec<TextRow>>;
    /// Commits.
    async fn commit(self: Box<Self>) -> Result<()>;
    /// Rolls back.
    async fn rollback(self: Box<Self>) -> Result<()>;
}

/// A live database: one adapter per kind.
#[async_trait]
pub trait Database: Send + Sync {
    /// Which database this is.
    fn kind(&self) -> DbKind;
    /// Its SQL dialect.
    fn dialect(&self) -> &dyn Dialect;
    /// The URL without password, for messages.
    fn target(&self) -> String;
    /// Checks that the database answers.
    async fn ping(&self) -> Result<()>;
    /// Runs one statement with `?` placeholders; returns the affected rows.
    async fn execute(&self, sql: &str, params: &[Param]) -> Result<u64>;
    /// Runs statements in one transaction; all or nothing. Returns false (and commits nothing)
    /// when a statement's `expect_rows` is not met.
    async fn transaction(&self, stmts: &[Stmt]) -> Result<bool>;
    /// Runs a small query; every column must decode as text or an integer.
    async fn query(&self, sql: &str, params: &[Param]) -> Result<Vec<TextRow>>;
    /// Reads a table's columns and primary key from the catalog.
    async fn describe(&self, table: &TableName) -> Result<TableInfo> {
        let (sql, params) = self.dialect().catalog_query(table);
        let rows = self.query(sql, &params).await?;
        if rows.is_empty() {
            return Err(Error::UnknownTable(table.to_string()));
        }
        let mut columns = Vec::new();
        let mut key: Vec<(i64, Ident)> = Vec::new();
        for row in rows {
            let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            let name = Ident::new(&text(0))?;
            let sql_type = text(1);
            let position: i64 = text(3).parse().unwrap_or(0);
            if position > 0 {
                key.push((position, name.clone()));
            }
            columns.push(Column {
                kind: classify_type(self.kind(), &sql_type),
                nullable: text(2) != "1",
                name,
                sql_type,
            });
        }
        key.sort();
        Ok(TableInfo {
            name: table.clone(),
            columns,
            primary_key: key.into_iter().map(|(_, n)| n).collect(),
        })
    }
    /// Checks a table name the user gave and returns it as tidemark keys it: a schema that
    /// does not exist is bad input, and the default schema is dropped (`public.users` on
    /// PostgreSQL is `users`), so that a table has one key however it is written. SQLite has
    /// no schemas: `main.t` is `t`, any other schema is bad input.
    async fn resolve_table(&self, table: &TableName) -> Result<TableName> {
        let Some(schema) = table.schema() else {
            return Ok(table.clone());
        };
        if self.kind() == DbKind::Sqlite {
            if schema.as_str() == "main" {
                return Ok(table.without_schema());
            }
            return Err(Error::UnknownSchema(format!(
                "table {table}: SQLite has no schemas (name the table without \"{schema}.\")"
            )));
        }
        let current = self
            .query(self.dialect().default_schema_query(), &[])
            .await?;
        if current.first().and_then(|r| field(r, 0)) == Some(schema.as_str()) {
            return Ok(table.without_schema());
        }
        let found = self
            .query(
                self.dialect().schema_exists_query(),
                &[schema.as_str().into()],
            )
            .await?;
        if found.is_empty() {
            return Err(Error::UnknownSchema(format!(
                "table {table}: schema {:?} does not exist",
                schema.as_str()
            )));
        }
        Ok(table.clone())
    }
    /// The base tables of `schema` (the default schema when `None`) whose names match
    /// `glob`, tidemark's own tables left out, in name order. A schema that does not exist is
    /// bad input.
    async fn list_tables(&self, schema: Option<&Ident>, glob: &str) -> Result<Vec<TableName>> {
        let schema = match schema {
            Some(s) => self
                .resolve_table(&TableName::new(Some(s.clone()), s.clone()))
                .await?
                .schema()
                .cloned(),
            None => None,
        };
        let (sql, params) = self.dialect().list_tables_query(schema.as_ref());
        let rows = self.query(sql, &params).await?;
        let mut out = Vec::new();
        for row in rows {
            let Some(name) = field(&row, 0) else { continue };
            if name.starts_with("tidemark_") || name.starts_with("sqlite_") {
                continue;
            }
            if crate::ident::TableSelector::matches(glob, name) {
                out.push(TableName::new(schema.clone(), Ident::new(name)?));
            }
        }
        out.sort();
        Ok(out)
    }
    /// The tables `selector` names: one (checked, see [`Database::resolve_table`]) or those
    /// its pattern matches; a pattern that matches none is bad input.
    async fn select_tables(
        &self,
        selector: &crate::ident::TableSelector,
    ) -> Result<Vec<TableName>> {
        match selector {
            crate::ident::TableSelector::One(t) => Ok(vec![self.resolve_table(t).await?]),
            crate::ident::TableSelector::Pattern { schema, glob } => {
                let found = self.list_tables(schema.as_ref(), glob).await?;
                if found.is_empty() {
                    let shown = match schema {
                        Some(s) => format!("{}.{glob}", TableName::unqualified(s.clone())),
                        None => glob.clone(),
                    };
                    return Err(Error::input(format!("no table matches {shown:?}")));
                }
                Ok(found)
            }
        }
    }
    /// The names of the indexes of `table` whose first column is `column`.
    async fn indexes_leading_with(&self, table: &TableName, column: &Ident) -> Result<Vec<String>> {
        let (sql, params) = self.dialect().leading_index_query(table, column);
        let rows = self.query(sql, &params).await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect())
    }
    /// Opens a consistent snapshot whose capture bound covers every change committed before
    /// this call (read your writes): it waits, at most `options.margin + options.max_wait`,
    /// until no write that could still stamp a time below the bound is running; a write
    /// transaction open since before the call is not waited for past that, and the bound then
    /// stops at its start and says so ([`Settled::held_back_since`]). Never does a change that
    /// is not visible in the snapshot have a time below the bound.
    async fn snapshot(&self, options: &SnapshotOptions) -> Result<Box<dyn Snapshot>>;
    /// Listens on a notification channel; `None` when the database has no notifications.
    async fn listen(&self, _channel: &str) -> Result<Option<Box<dyn Wakeups>>> {
        Ok(None)
    }
    /// Takes the named lock if it is free; `None` when someone holds it.
    async fn try_lock(&self, name: &str) -> Result<Option<Box<dyn LockGuard>>>;
    /// Inserts rows of text values (`None` = NULL) into `table` fast (COPY, multi-row inserts),
    /// in the database's one transaction; `rows` yields them in chunks.
    async fn bulk_insert(
        &self,
        table: &TableName,
        columns: &[Ident],
        rows: &mut (dyn Iterator<Item = Vec<Option<String>>> + Send),
    ) -> Result<u64>;
    /// The database clock, as a cursor value would be stamped by `now()`-like defaults.
    async fn now(&self) -> Result<Timestamp>;
    /// Opens a write transaction (SQLite: `BEGIN IMMEDIATE`, so that it never fails to
    /// upgrade a read into a write).
    async fn begin(&self) -> Result<Box<dyn Transaction>>;
}

/// Classifies a column type as `engine`'s catalog spells it (see [`types::SqlType`]).
pub fn classify_type(engine: DbKind, sql_type: &str) -> ColumnKind {
    types::SqlType::parse(engine, sql_type).kind
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            DbUrl::parse("sqlite://a.db").unwrap().kind(),
            DbKind::Sqlite
        );
        assert_eq!(
            DbUrl::parse("postgresql://u:p@h:5/d").unwrap().kind(),
            DbKind::Postgres
        );
        let m = DbUrl::parse("mariadb://root@127.0.0.1:3306/app").unwrap();
        assert_eq!(m.kind(), DbKind::Mysql);
        assert_eq!(m.as_str(), "mysql://root@127.0.0.1:3306/app");
        for bad in [
            "",
            "nope",
            "http://x",
            "sqlite://",
            "sqlite::memory:",
            "postgres:x",
            "postgres:///db",
        ] {
            assert!(DbUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            DbUrl::parse("postgres://u:secret@h/d").unwrap().redacted(),
            "postgres://u:***@h/d"
        );
        assert_eq!(
            DbUrl::parse("postgres://u@h/d?password=secret&sslmode=disable")
                .unwrap()
                .redacted(),
            "postgres://u@h/d?password=***&sslmode=disable"
        );
        let e = DbUrl::parse("postgres:u:secret@h/d")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        assert_eq!(
            redact_text("cannot reach 'mysql://a:secret@h:1/x': refused, see postgres://b:p@q/r"),
            "cannot reach 'mysql://a:***@h:1/x': refused, see postgres://b:***@q/r"
        );
    }

    #[test]
    fn timestamps_round_trip() {
        let t = Timestamp::parse("2026-11-21T04:37:00.123456789+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-21T03:37:00.123456Z");
        assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        assert_eq!(
            Timestamp::parse("2026-11-21 03:37:00.5")
                .unwrap()
                .to_string(),
            "2026-11-21T03:37:00.500000Z"
        );
        assert_eq!(t.to_sql_naive(), "2026-11-21 03:37:00.123456");
        assert!(Timestamp::parse("yesterday").is_err());
        assert!(Timestamp::parse("2026-11-21T03:37:00Z'; DROP TABLE x").is_err());
    }
}
