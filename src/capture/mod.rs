//! Capture strategies: how the changes of a table between two positions are found. A strategy
//! turns (mode, before, after) into one SELECT whose columns are rendered as CSV text, and knows
//! what `setup` must install: `timestamp` (a cursor column), `version` (a version column
//! tidemark maintains) and `trigger` (a change log written by triggers), all behind
//! [`CaptureStrategy`]. The helpers here are the parts they share.

pub mod lifecycle;
pub mod prune;
pub mod timestamp;
pub mod trigger;
pub mod version;

use sha2::{Digest, Sha256};

use crate::db::{
    Bound, ClockNeed, Column, ColumnKind, Database, DbKind, Dialect, Snapshot, Stmt, TableInfo,
    Timestamp,
};
use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::state::{Position, TableConfig};

pub use crate::mode::Mode;

/// The query of one export: the CSV header and the SELECT producing its rows.
#[derive(Debug, Clone)]
pub struct Select {
    pub header: Vec<String>,
    pub sql: String,
}

/// The position a read through `snapshot` reaches from `before`: the snapshot's capture bound,
/// with the change log's extent where `strategy` counts by it. Exports and replication both
/// start their reads here, so they cut intervals the same way.
pub async fn reach(
    strategy: &dyn CaptureStrategy,
    dialect: &dyn Dialect,
    snapshot: &mut dyn Snapshot,
    before: Option<&Position>,
) -> Result<Position> {
    let mut bound = snapshot.bound();
    if let Some(q) = strategy.extent_query(dialect) {
        let rows = snapshot.query(&q).await?;
        let value = rows.first().and_then(|r| r.first().cloned().flatten());
        bound.extent = Some(
            value
                .as_deref()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    Error::Runtime(format!(
                        "the change log's extent is not a number: {value:?}"
                    ))
                })?,
        );
    }
    Ok(strategy.position_after(&bound, before))
}

/// What a read starting from `before` holds back, as its user is told: a snapshot's
/// [`Settled::held_back_since`](crate::db::Settled) is a time on the clock; nothing before
/// `before` is ever held back again (a SQLite bound that covers nothing new is the epoch).
pub fn held_back_since(
    settled: &crate::db::Settled,
    before: Option<&Position>,
) -> Option<Timestamp> {
    settled
        .held_back_since
        .map(|h| before.map_or(h, |b| b.time().max(h)))
}

/// A way of finding a table's changes.
pub trait CaptureStrategy: Send + Sync {
    /// The strategy's name (`timestamp`, …).
    fn name(&self) -> &'static str;
    /// What its positions rest on, and so where a snapshot must wait for the clock bound.
    fn clock_need(&self) -> ClockNeed;
    /// The position an export reaches when it reads a snapshot with capture bound `bound`,
    /// starting from `before`. Never earlier than `before`.
    fn position_after(&self, bound: &Bound, before: Option<&Position>) -> Position;
    /// The query of an export from `before` (none: from the beginning) to `after`.
    fn select(
        &self,
        dialect: &dyn Dialect,
        mode: Mode,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<Select>;
    /// The notification channel the strategy's triggers signal after changes (PostgreSQL
    /// `pg_notify`), so that followers wake at once instead of polling. `None`: no signal.
    fn notify_channel(&self, _dialect: &dyn Dialect) -> Option<String> {
        None
    }
    /// A query run inside the export's snapshot whose one value becomes
    /// [`Bound::extent`](crate::db::Bound) — for a change log whose ids are handed out in
    /// commit order, its largest id. `None`: the strategy needs none.
    fn extent_query(&self, _dialect: &dyn Dialect) -> Option<String> {
        None
    }
    /// For a strategy with a change log: a statement deleting the log entries that every one of
    /// `positions` (the consumers' positions) has passed, and a query counting what is left.
    /// `None`: the strategy keeps no log.
    fn prune_sql(
        &self,
        _dialect: &dyn Dialect,
        _positions: &[Position],
    ) -> Result<Option<(String, String)>> {
        Ok(None)
    }
    /// A query counting the changes from `before` (none: from the beginning) to `after` by
    /// operation: rows of (`INSERT`|`UPDATE`|`DELETE`, count), as a delta export of that
    /// interval would deliver them. Every delta SELECT names its operation `tidemark_op`.
    fn count_changes(
        &self,
        dialect: &dyn Dialect,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<String> {
        let delta = self.select(dialect, Mode::Delta, before, after)?;
        Ok(format!(
            "SELECT tidemark_op, count(*) FROM ({}) tidemark_delta GROUP BY tidemark_op",
            delta.sql
        ))
    }
    /// A query counting every change the strategy has recorded and still keeps, by operation:
    /// rows of (`INSERT`|`UPDATE`|`DELETE`, count) — what `status` shows as a table's changes.
    /// `None`: the strategy records none itself (its changes are the table's rows), and the
    /// count is that of a delta from the beginning.
    fn count_recorded(&self, _dialect: &dyn Dialect) -> Option<String> {
        None
    }
    /// A query for the change time of the oldest change from `before` (none: from the
    /// beginning) to `after` — of what [`CaptureStrategy::count_changes`] counts — which is
    /// what a consumer's lag is measured from. `None` (or a NULL answer while changes are
    /// pending): the strategy cannot date its changes, and lag is bounded by the position's
    /// time instead.
    fn oldest_change(
        &self,
        _dialect: &dyn Dialect,
        _before: Option<&Position>,
        _after: &Position,
    ) -> Result<Option<OldestChange>> {
        Ok(None)
    }
    /// For a strategy with a change log: a query giving every change from `before` to `after`
    /// one row each, in change-id order — change id, change time (RFC 3339), operation, before
    /// image and after image (JSON objects of every column, NULL where there is none). Reading
    /// the same interval again later gives the same rows (the interval is bounded on both
    /// sides), as long as no prune passed `before`. `None`: the strategy keeps no log.
    fn change_rows(
        &self,
        _dialect: &dyn Dialect,
        _before: &Position,
        _after: &Position,
    ) -> Result<Option<String>> {
        Ok(None)
    }
}

/// How the one value of an [`CaptureStrategy::oldest_change`] query gives a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeForm {
    /// RFC 3339 text, as [`Dialect::render`] prints timestamps.
    Rfc3339,
    /// Microseconds since the Unix epoch (the clock versions of `version` on MariaDB and
    /// SQLite).
    EpochMicros,
}

/// A query for the change time of the oldest change in an interval: one row, one value, NULL
/// when the interval holds no change or the strategy cannot date it.
#[derive(Debug, Clone)]
pub struct OldestChange {
    pub sql: String,
    pub form: TimeForm,
}

impl OldestChange {
    /// The time in the query's answer (`None`: no value).
    pub fn parse(&self, value: Option<&str>) -> Result<Option<Timestamp>> {
        let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        match self.form {
            TimeForm::Rfc3339 => Timestamp::parse(v).map(Some),
            TimeForm::EpochMicros => {
                let bad = || Error::Runtime(format!("a change time of {v:?} µs is not a time"));
                // MariaDB may print an integral DECIMAL with a fraction.
                let micros: i64 = match v.split_once('.') {
                    Some((whole, _)) => whole.parse().map_err(|_| bad())?,
                    None => v.parse().map_err(|_| bad())?,
                };
                let t = chrono::DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
                Ok(Some(Timestamp::from_datetime(t)))
            }
        }
    }
}

/// Strategy names `setup` accepts.
pub const STRATEGIES: &[&str] = &["timestamp", "trigger", "version"];

/// Options of `tidemark setup`.
#[derive(Debug, Clone, Default)]
pub struct SetupOptions {
    pub cursor_column: Option<String>,
    pub deleted_column: Option<String>,
    pub created_column: Option<String>,
}

/// What `setup` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetupReport {
    pub table: String,
    pub config: TableConfig,
    /// What setup added.
    pub installed: Vec<String>,
    /// What the table already had that setup uses (an index leading with the cursor).
    pub reused: Vec<String>,
}

/// The strategy for a table, from its registration (or the `timestamp` defaults if it has
/// none), checked against the table as it is now.
pub fn strategy_for(
    info: &TableInfo,
    config: Option<&TableConfig>,
) -> Result<Box<dyn CaptureStrategy>> {
    let default;
    let config = match config {
        Some(c) => c,
        None => {
            default = timestamp::TimestampCapture::default_config(info, &SetupOptions::default())?;
            if !info.primary_key.is_empty() && info.column(&default.cursor_column).is_none() {
                return Err(not_set_up(info, &default.cursor_column));
            }
            &default
        }
    };
    let inner: Box<dyn CaptureStrategy> = match config.strategy.as_str() {
        "timestamp" => Box::new(timestamp::TimestampCapture::new(info, config)?),
        "trigger" => Box::new(trigger::TriggerCapture::new(info, config)?),
        "version" => Box::new(version::VersionCapture::new(info, config)?),
        other => {
            return Err(Error::input(format!(
                "table {}: strategy {other:?} is not available in this version (available: {})",
                info.name,
                STRATEGIES.join(", ")
            )))
        }
    };
    Ok(match &config.setup_id {
        Some(id) => Box::new(Stamped {
            inner,
            setup: id.clone(),
        }),
        None => inner,
    })
}

/// The registration `setup` would store for `strategy` with `options`, computed without
/// touching the database.
pub fn planned_config(
    info: &TableInfo,
    strategy: &str,
    options: &SetupOptions,
) -> Result<TableConfig> {
    match strategy {
        "timestamp" => timestamp::TimestampCapture::default_config(info, options),
        "trigger" => trigger::TriggerCapture::default_config(info, options),
        "version" => Ok(version::VersionCapture::default_config(info, options)),
        other => Err(Error::input(format!(
            "unknown strategy {other:?}: expected one of {}",
            STRATEGIES.join(", ")
        ))),
    }
}

/// Checks, writing nothing, that `setup` of `strategy` can work on the table as it is: the
/// strategy exists and the table has what it needs (a primary key, the columns named). A
/// refused set-up then leaves no trace, not even tidemark's state tables.
pub fn check_setup(info: &TableInfo, strategy: &str, options: &SetupOptions) -> Result<()> {
    let config = planned_config(info, strategy, options)?;
    match strategy {
        "timestamp" => timestamp::TimestampCapture::new(info, &config).map(drop),
        "trigger" => trigger::TriggerCapture::new(info, &config).map(drop),
        _ => {
            require_key(info)?;
            // The version column is added by setup when missing; one that exists must fit.
            if info.column(&config.cursor_column).is_some() {
                version::VersionCapture::new(info, &config).map(drop)
            } else {
                Ok(())
            }
        }
    }
}

/// A strategy of a set-up with an id: every position it makes carries that id.
struct Stamped {
    inner: Box<dyn CaptureStrategy>,
    setup: String,
}

/// Every method is the inner strategy's (a default left in place here would silently replace
/// the inner one's own).
impl CaptureStrategy for Stamped {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn clock_need(&self) -> ClockNeed {
        self.inner.clock_need()
    }

    fn position_after(&self, bound: &Bound, before: Option<&Position>) -> Position {
        self.inner
            .position_after(bound, before)
            .with_setup(Some(&self.setup))
    }

    fn select(
        &self,
        dialect: &dyn Dialect,
        mode: Mode,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<Select> {
        self.inner.select(dialect, mode, before, after)
    }

    fn notify_channel(&self, dialect: &dyn Dialect) -> Option<String> {
        self.inner.notify_channel(dialect)
    }

    fn extent_query(&self, dialect: &dyn Dialect) -> Option<String> {
        self.inner.extent_query(dialect)
    }

    fn prune_sql(
        &self,
        dialect: &dyn Dialect,
        positions: &[Position],
    ) -> Result<Option<(String, String)>> {
        self.inner.prune_sql(dialect, positions)
    }

    fn count_changes(
        &self,
        dialect: &dyn Dialect,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<String> {
        self.inner.count_changes(dialect, before, after)
    }

    fn count_recorded(&self, dialect: &dyn Dialect) -> Option<String> {
        self.inner.count_recorded(dialect)
    }

    fn oldest_change(
        &self,
        dialect: &dyn Dialect,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<Option<OldestChange>> {
        self.inner.oldest_change(dialect, before, after)
    }

    fn change_rows(
        &self,
        dialect: &dyn Dialect,
        before: &Position,
        after: &Position,
    ) -> Result<Option<String>> {
        self.inner.change_rows(dialect, before, after)
    }
}

/// Installs what `strategy` needs on the table and returns the registration to store.
pub async fn setup(
    db: &dyn Database,
    info: &TableInfo,
    strategy: &str,
    options: &SetupOptions,
) -> Result<SetupReport> {
    if !STRATEGIES.contains(&strategy) {
        return Err(Error::input(format!(
            "unknown strategy {strategy:?}: expected one of {}",
            STRATEGIES.join(", ")
        )));
    }
    check_setup_privileges(db, info, strategy, options).await?;
    let wanted = crate::privilege::for_setup(db.kind(), strategy);
    let done = match strategy {
        "timestamp" => timestamp::setup(db, info, options).await,
        "trigger" => trigger::setup(db, info, options).await,
        _ => version::setup(db, info, options).await,
    };
    // What the checks cannot see (MariaDB refuses triggers of users without SUPER while
    // binary logging is on, unless log_bin_trust_function_creators is set).
    done.map_err(|e| {
        e.needing(|| {
            let mut names: Vec<String> = wanted
                .iter()
                .map(|p| crate::privilege::grant_name(db.kind(), *p, info.name.as_str()))
                .collect();
            names.dedup();
            if db.kind() == DbKind::Mysql && strategy != "timestamp" {
                names.push(
                    "SUPER, or log_bin_trust_function_creators = 1, to create triggers while \
                     binary logging is on"
                        .into(),
                );
            }
            format!("{} to set up {strategy} capture", names.join(" and "))
        })
    })
}

/// Checks, before anything is installed (or any state is written), that the session holds
/// every privilege `setup` of `strategy` needs on the table (see [`crate::privilege`]): a
/// missing grant is [`Error::Permission`] and leaves nothing half done.
pub async fn check_setup_privileges(
    db: &dyn Database,
    info: &TableInfo,
    strategy: &str,
    options: &SetupOptions,
) -> Result<()> {
    let wanted = crate::privilege::for_setup(db.kind(), strategy);
    crate::privilege::require(db, &info.name, &wanted).await?;
    if strategy == "timestamp" {
        timestamp::check_index(db, info, options).await?;
    }
    Ok(())
}

/// Removes what `setup` installed for `config`.
pub async fn teardown(
    db: &dyn Database,
    info: &TableInfo,
    config: &TableConfig,
) -> Result<Vec<String>> {
    match config.strategy.as_str() {
        "timestamp" => timestamp::teardown(db, info, config).await,
        "trigger" => trigger::teardown(db, info, config).await,
        "version" => version::teardown(db, info, config).await,
        _ => Ok(Vec::new()),
    }
}

/// A table that was never set up (or was torn down) and lacks the cursor column the implicit
/// timestamp capture reads: say so, and how to set it up.
fn not_set_up(info: &TableInfo, cursor: &str) -> Error {
    let table = &info.name;
    Error::input(format!(
        "{table} is not set up for capture: without set-up tidemark reads it by a cursor column \
         {cursor:?}, which it does not have; set it up with `tidemark setup --table {table} \
         --strategy trigger` (or `--strategy timestamp --cursor-column COLUMN`)"
    ))
}

pub(crate) fn unfit(info: &TableInfo, reason: String) -> Error {
    Error::UnfitTable {
        table: info.name.to_string(),
        reason,
    }
}

/// The name of an object tidemark creates: `plain`, or if that is too long for an identifier,
/// `tidemark_{hash of plain}_{suffix}`.
pub(crate) fn derived_name(plain: &str, suffix: &str) -> Result<Ident> {
    if plain.len() <= Ident::MAX_BYTES {
        Ident::new(plain)
    } else {
        let h = hex::encode(Sha256::digest(plain.as_bytes()));
        Ident::new(&format!("tidemark_{}_{suffix}", &h[..24]))
    }
}

/// Checks that the table has a primary key.
pub(crate) fn require_key(info: &TableInfo) -> Result<()> {
    if info.primary_key.is_empty() {
        return Err(unfit(info, "it has no primary key".into()));
    }
    Ok(())
}

/// The column called `name` of the table, or an error naming it as the `what` column.
pub(crate) fn column_of(info: &TableInfo, name: &str, what: &str) -> Result<Column> {
    info.column(name)
        .cloned()
        .ok_or_else(|| unfit(info, format!("{what} column {name:?} does not exist")))
}

/// The registered soft-delete column, checked to be boolean.
pub(crate) fn soft_delete_column(info: &TableInfo, config: &TableConfig) -> Result<Option<Column>> {
    let deleted = config
        .deleted_column
        .as_deref()
        .map(|n| column_of(info, n, "soft-delete"))
        .transpose()?;
    if let Some(d) = &deleted {
        if !matches!(d.kind, ColumnKind::Bool | ColumnKind::Integer) {
            return Err(unfit(
                info,
                format!("soft-delete column {:?} is not boolean", d.name.as_str()),
            ));
        }
    }
    Ok(deleted)
}

/// The soft-delete column `setup` registers: the one given, or `is_deleted` if the table has it.
pub(crate) fn default_deleted_column(info: &TableInfo, options: &SetupOptions) -> Option<String> {
    options
        .deleted_column
        .clone()
        .or_else(|| info.column("is_deleted").map(|c| c.name.to_string()))
}

/// The creation time column `setup` registers: the one given, or `created_at` if the table has
/// it as a timestamp.
pub(crate) fn default_created_column(info: &TableInfo, options: &SetupOptions) -> Option<String> {
    options.created_column.clone().or_else(|| {
        info.column("created_at")
            .filter(|c| c.kind.is_timestamp())
            .map(|c| c.name.to_string())
    })
}

/// Runs statements `setup` or `teardown` made (DDL, no parameters) in one transaction.
pub(crate) async fn run_all(db: &dyn Database, statements: Vec<String>) -> Result<()> {
    let stmts: Vec<Stmt> = statements
        .into_iter()
        .map(|s| Stmt::new(s, Vec::new()))
        .collect();
    db.transaction(&stmts).await?;
    Ok(())
}

/// Which live rows a delta export calls `INSERT` (the others are `UPDATE`).
pub(crate) enum Inserted {
    /// Every row (there is no previous watermark).
    All,
    /// Rows for which this condition holds.
    When(String),
    /// None: the strategy cannot tell.
    Unknown,
}

/// A SELECT over the table itself, the shape `timestamp` and `version` exports and every full
/// export share: `full` gives every live row; `incremental` the live rows meeting `interval`;
/// `delta` every row meeting it with a leading operation (`DELETE` when soft-deleted). Rows are
/// ordered by `order` except in full exports.
pub(crate) fn table_select(
    d: &dyn Dialect,
    info: &TableInfo,
    mode: Mode,
    deleted: Option<&Column>,
    inserted: Inserted,
    interval: &[String],
    order: &[String],
) -> Select {
    let mut header: Vec<String> = Vec::new();
    let mut exprs: Vec<String> = Vec::new();
    let deleted = deleted.map(|c| d.is_true(&d.quote(&c.name)));
    if mode == Mode::Delta {
        header.push("operation".into());
        let mut whens: Vec<String> = Vec::new();
        if let Some(del) = &deleted {
            whens.push(format!("WHEN {del} THEN 'DELETE'"));
        }
        let otherwise = match inserted {
            Inserted::All => "'INSERT'",
            Inserted::When(cond) => {
                whens.push(format!("WHEN {cond} THEN 'INSERT'"));
                "'UPDATE'"
            }
            Inserted::Unknown => "'UPDATE'",
        };
        let op = if whens.is_empty() {
            otherwise.to_string()
        } else {
            format!("CASE {} ELSE {otherwise} END", whens.join(" "))
        };
        exprs.push(format!("{op} AS tidemark_op"));
    }
    header.extend(info.columns.iter().map(|c| c.name.to_string()));
    exprs.extend(rendered_columns(d, info));
    let mut conditions: Vec<String> = Vec::new();
    if mode != Mode::Full {
        conditions.extend(interval.iter().cloned());
    }
    if mode != Mode::Delta {
        if let Some(del) = &deleted {
            conditions.push(format!("NOT {del}"));
        }
    }
    let mut sql = format!(
        "SELECT {} FROM {}",
        exprs.join(", "),
        d.quote_table(&info.name)
    );
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    if mode != Mode::Full && !order.is_empty() {
        sql.push_str(" ORDER BY ");
        sql.push_str(&order.join(", "));
    }
    Select { header, sql }
}

/// The table's columns as streamed selects read them ([`Dialect::render_streamed`]), each
/// under a distinct alias (`tidemark_c0`, …) so that a SELECT of them can be wrapped as a
/// derived table (MySQL refuses duplicate names).
pub(crate) fn rendered_columns(d: &dyn Dialect, info: &TableInfo) -> Vec<String> {
    info.columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} AS tidemark_c{i}", d.render_streamed(c)))
        .collect()
}

/// A PostgreSQL transaction-id snapshot (`xmin:xmax:xip,…`), checked to be only that, so
/// that it can be written into SQL as a literal.
pub(crate) struct TxidSnapshot<'a> {
    pub text: &'a str,
    pub xmin: u64,
}

impl<'a> TxidSnapshot<'a> {
    pub(crate) fn parse(text: &'a str) -> Result<Self> {
        let bad = || {
            Error::Runtime(format!(
                "corrupt transaction snapshot {text:?} in watermark"
            ))
        };
        let mut parts = text.split(':');
        let (Some(xmin), Some(xmax), Some(xip), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let xmin: u64 = xmin.parse().map_err(|_| bad())?;
        let xmax: u64 = xmax.parse().map_err(|_| bad())?;
        if xmax < xmin {
            return Err(bad());
        }
        if !xip.is_empty() {
            for x in xip.split(',') {
                x.parse::<u64>().map_err(|_| bad())?;
            }
        }
        Ok(TxidSnapshot { text, xmin })
    }

    /// A condition on the BIGINT txid expression `txid`: the transaction is not visible in
    /// this snapshot. The range part (`txid >= xmin`: every older transaction had finished)
    /// lets an index on `txid` limit the work to recent changes.
    /// A condition true for a transaction id that had finished when this snapshot was taken
    /// (its changes are in every export that read up to this snapshot).
    pub(crate) fn visible(&self, txid: &str) -> String {
        format!(
            "({txid} < {} OR pg_visible_in_snapshot({txid}::text::xid8, '{}'::pg_snapshot))",
            self.xmin, self.text
        )
    }

    pub(crate) fn not_visible(&self, txid: &str) -> String {
        format!(
            "{txid} >= {} AND NOT pg_visible_in_snapshot({txid}::text::xid8, '{}'::pg_snapshot)",
            self.xmin, self.text
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txid_snapshots_are_checked_before_they_reach_sql() {
        let s = TxidSnapshot::parse("724:730:725,727").unwrap();
        assert_eq!(s.xmin, 724);
        assert_eq!(
            s.not_visible("l.txid"),
            "l.txid >= 724 AND NOT pg_visible_in_snapshot(l.txid::text::xid8, \
             '724:730:725,727'::pg_snapshot)"
        );
        assert!(TxidSnapshot::parse("724:724:").is_ok());
        for bad in [
            "",
            "1:2",
            "9:3:",
            "1:2:3:4",
            "1:2:x",
            "1:2:3'; DROP TABLE t; --",
        ] {
            assert!(TxidSnapshot::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn oldest_change_times_read_back_in_either_form() {
        let q = |form| OldestChange {
            sql: String::new(),
            form,
        };
        let t = Timestamp::parse("2026-11-28T20:00:00.123456Z").unwrap();
        let micros = t.as_datetime().timestamp_micros().to_string();
        assert_eq!(
            q(TimeForm::EpochMicros).parse(Some(&micros)).unwrap(),
            Some(t)
        );
        assert_eq!(
            q(TimeForm::EpochMicros)
                .parse(Some(&format!("{micros}.0000")))
                .unwrap(),
            Some(t)
        );
        assert_eq!(
            q(TimeForm::Rfc3339)
                .parse(Some("2026-11-28T20:00:00.123456Z"))
                .unwrap(),
            Some(t)
        );
        assert_eq!(q(TimeForm::Rfc3339).parse(None).unwrap(), None);
        assert_eq!(q(TimeForm::EpochMicros).parse(Some("")).unwrap(), None);
        assert!(q(TimeForm::EpochMicros).parse(Some("soon")).is_err());
        assert!(q(TimeForm::Rfc3339).parse(Some("yesterday")).is_err());
    }

    #[test]
    fn derived_names_fit_identifiers() {
        assert_eq!(
            derived_name("tidemark_log_users", "log").unwrap().as_str(),
            "tidemark_log_users"
        );
        let long = format!("tidemark_log_{}", "x".repeat(60));
        let name = derived_name(&long, "log").unwrap();
        assert!(name.as_str().len() <= Ident::MAX_BYTES && name.as_str().ends_with("_log"));
        assert_ne!(name, derived_name(&format!("{long}y"), "log").unwrap());
    }
}
