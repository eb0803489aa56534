//! The `version` strategy: `setup` adds a BIGINT version column (default `tidemark_version`,
//! indexed) that a trigger stamps on every insert and update, and exports find changed rows by
//! it. Deletes are soft, as with `timestamp`.
//!
//! - PostgreSQL: the version is the writing transaction's id (`pg_current_xact_id()`, as
//!   "xmin"-style capture does). Ids are handed out at transaction start and become visible in
//!   commit order, so an export takes the rows whose version is visible in its own transaction
//!   snapshot and was not visible in the previous export's (`version >= previous xmin` keeps
//!   the scan on the index).
//! - MariaDB and SQLite: the version is the time of the write in microseconds since the epoch
//!   (`SYSDATE(6)` in a BEFORE trigger on MariaDB; SQLite's millisecond clock, in an AFTER
//!   trigger since SQLite cannot assign to NEW). An export takes versions in `[previous bound,
//!   bound)` with the bound the `timestamp` strategy uses: a write still uncommitted when the
//!   bound is taken belongs to a transaction (or statement) that started at or after it, and
//!   its version, taken later still, is too. No counter row: it would serialise every writer
//!   of the table for the length of its transaction.

use super::timestamp::{creation_column, inserted_since};
use super::{
    column_of, default_created_column, default_deleted_column, derived_name, require_key, run_all,
    soft_delete_column, table_select, unfit, CaptureStrategy, Mode, OldestChange, Select,
    SetupOptions, SetupReport, TimeForm, TxidSnapshot,
};
use crate::db::{Bound, ClockNeed, Column, ColumnKind, Database, DbKind, Dialect, TableInfo};
use crate::error::Result;
use crate::ident::Ident;
use crate::state::{Position, TableConfig};

/// The version column `setup` adds unless told another name.
pub const DEFAULT_COLUMN: &str = "tidemark_version";

/// The `version` strategy for one table.
pub struct VersionCapture {
    info: TableInfo,
    version: Column,
    deleted: Option<Column>,
    created: Option<Column>,
}

/// The objects `setup` creates besides the column.
struct Names {
    index: Ident,
    function: Ident,
    trigger: Ident,
    on_insert: Ident,
    on_update: Ident,
}

impl VersionCapture {
    /// The registration `setup` stores: the version column, and `is_deleted` / `created_at`
    /// when the table has them.
    pub fn default_config(info: &TableInfo, options: &SetupOptions) -> TableConfig {
        TableConfig {
            strategy: "version".into(),
            cursor_column: options
                .cursor_column
                .clone()
                .unwrap_or_else(|| DEFAULT_COLUMN.into()),
            deleted_column: default_deleted_column(info, options),
            created_column: default_created_column(info, options),
            setup_id: None,
            set_up_at: None,
        }
    }

    /// Checks `config` against the table.
    pub fn new(info: &TableInfo, config: &TableConfig) -> Result<Self> {
        require_key(info)?;
        let version = column_of(info, &config.cursor_column, "version")?;
        if version.kind != ColumnKind::Integer {
            return Err(unfit(
                info,
                format!(
                    "version column {:?} is {}, not an integer",
                    version.name.as_str(),
                    version.sql_type
                ),
            ));
        }
        Ok(VersionCapture {
            info: info.clone(),
            version,
            deleted: soft_delete_column(info, config)?,
            created: creation_column(info, config)?,
        })
    }

    fn names(&self) -> Result<Names> {
        let (t, v) = (self.info.name.name(), &self.version.name);
        let n = |suffix: &str| derived_name(&format!("tidemark_version_{t}{suffix}"), suffix);
        Ok(Names {
            index: derived_name(&format!("tidemark_{t}_{v}_idx"), "idx")?,
            function: n("_fn")?,
            trigger: n("_trg")?,
            on_insert: n("_ins")?,
            on_update: n("_upd")?,
        })
    }

    /// The statements that (re)create the version triggers.
    fn install(&self, d: &dyn Dialect) -> Result<Vec<String>> {
        let n = self.names()?;
        let (table, v) = (d.quote_table(&self.info.name), d.quote(&self.version.name));
        let q = |id: &Ident| d.quote_table(&self.info.name.sibling(id.clone()));
        Ok(match d.kind() {
            DbKind::Postgres => vec![
                format!(
                    "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS \
                     'BEGIN NEW.{} := pg_current_xact_id()::text::bigint; RETURN NEW; END'",
                    q(&n.function),
                    v.replace('\'', "''")
                ),
                format!("DROP TRIGGER IF EXISTS {} ON {table}", d.quote(&n.trigger)),
                format!(
                    "CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {table} \
                     FOR EACH ROW EXECUTE FUNCTION {}()",
                    d.quote(&n.trigger),
                    q(&n.function)
                ),
            ],
            DbKind::Mysql => {
                // SYSDATE(6) is the time of the write, not of the statement's start.
                let stamp =
                    format!("SET NEW.{v} = CAST(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000 AS SIGNED)");
                vec![
                    format!(
                        "CREATE OR REPLACE TRIGGER {} BEFORE INSERT ON {table} FOR EACH ROW {stamp}",
                        q(&n.on_insert)
                    ),
                    format!(
                        "CREATE OR REPLACE TRIGGER {} BEFORE UPDATE ON {table} FOR EACH ROW {stamp}",
                        q(&n.on_update)
                    ),
                ]
            }
            DbKind::Sqlite => {
                // 'now' is one instant for the whole statement, triggers included.
                let micros = "(CAST(strftime('%s', 'now') AS INTEGER) * 1000 \
                     + CAST(substr(strftime('%f', 'now'), 4, 3) AS INTEGER)) * 1000";
                let same_row: Vec<String> = self
                    .info
                    .primary_key
                    .iter()
                    .map(|k| format!("{0} = NEW.{0}", d.quote(k)))
                    .collect();
                let stamp = format!(
                    "BEGIN UPDATE {table} SET {v} = {micros} WHERE {}; END",
                    same_row.join(" AND ")
                );
                vec![
                    format!("DROP TRIGGER IF EXISTS {}", q(&n.on_insert)),
                    format!(
                        "CREATE TRIGGER {} AFTER INSERT ON {table} FOR EACH ROW {stamp}",
                        q(&n.on_insert)
                    ),
                    format!("DROP TRIGGER IF EXISTS {}", q(&n.on_update)),
                    // The stamp's own update changes the version and so does not fire it again
                    // (even with recursive triggers on).
                    format!(
                        "CREATE TRIGGER {} AFTER UPDATE ON {table} FOR EACH ROW \
                         WHEN NEW.{v} IS OLD.{v} {stamp}",
                        q(&n.on_update)
                    ),
                ]
            }
        })
    }

    /// The statements that remove the triggers, the index and the column.
    fn uninstall(&self, d: &dyn Dialect) -> Result<Vec<String>> {
        let n = self.names()?;
        let table = d.quote_table(&self.info.name);
        let q = |id: &Ident| d.quote_table(&self.info.name.sibling(id.clone()));
        let mut v = Vec::new();
        if d.kind() == DbKind::Postgres {
            v.push(format!(
                "DROP TRIGGER IF EXISTS {} ON {table}",
                d.quote(&n.trigger)
            ));
            v.push(format!("DROP FUNCTION IF EXISTS {}()", q(&n.function)));
        } else {
            for t in [&n.on_insert, &n.on_update] {
                v.push(format!("DROP TRIGGER IF EXISTS {}", q(t)));
            }
        }
        v.push(d.drop_index(&n.index, &self.info.name));
        v.push(format!(
            "ALTER TABLE {table} DROP COLUMN {}",
            d.quote(&self.version.name)
        ));
        Ok(v)
    }
}

fn micros(p: &Position) -> i64 {
    p.time().as_datetime().timestamp_micros()
}

impl CaptureStrategy for VersionCapture {
    fn name(&self) -> &'static str {
        "version"
    }

    fn clock_need(&self) -> ClockNeed {
        ClockNeed::UnlessTxids
    }

    fn position_after(&self, bound: &Bound, before: Option<&Position>) -> Position {
        Position::Version {
            time: before.map_or(bound.time, |b| b.time().max(bound.time)),
            txids: bound.txids.clone(),
            setup: None,
        }
    }

    fn select(
        &self,
        d: &dyn Dialect,
        mode: Mode,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<Select> {
        let v = d.quote(&self.version.name);
        let interval = self.interval(d, before, after)?;
        let mut order = vec![v];
        order.extend(self.info.primary_key.iter().map(|k| d.quote(k)));
        Ok(table_select(
            d,
            &self.info,
            mode,
            self.deleted.as_ref(),
            inserted_since(d, before, self.created.as_ref()),
            &interval,
            &order,
        ))
    }

    /// MariaDB and SQLite: the smallest version, the clock time of the oldest write.
    /// PostgreSQL: a version is a transaction id, which says nothing about time by itself;
    /// the commit time PostgreSQL records for it when `track_commit_timestamp` is on dates it
    /// exactly. With that setting off the query answers NULL, and lag is bounded by the
    /// position's time: every pending version was committed after the position's snapshot.
    fn oldest_change(
        &self,
        d: &dyn Dialect,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<Option<OldestChange>> {
        let v = d.quote(&self.version.name);
        let mut interval = self.interval(d, before, after)?;
        let table = d.quote_table(&self.info.name);
        if d.kind() != DbKind::Postgres {
            let filter = if interval.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", interval.join(" AND "))
            };
            return Ok(Some(OldestChange {
                sql: format!("SELECT min({v}) FROM {table}{filter}"),
                form: TimeForm::EpochMicros,
            }));
        }
        // A one-time filter: the commit times are not read at all when they are not kept.
        interval.push("current_setting('track_commit_timestamp') = 'on'".into());
        let committed = Column {
            name: Ident::new("tidemark_committed")?,
            sql_type: "timestamp with time zone".into(),
            kind: ColumnKind::TimestampTz,
            nullable: true,
        };
        // A transaction that committed before the setting was turned on has no commit time:
        // then the oldest pending change cannot be dated (NULL), rather than dated too young.
        Ok(Some(OldestChange {
            sql: format!(
                "SELECT {} FROM (SELECT CASE WHEN count(*) = count(c) THEN min(c) END \
                 AS tidemark_committed FROM (SELECT \
                 pg_xact_commit_timestamp(({v} % 4294967296)::text::xid) AS c \
                 FROM {table} WHERE {}) tidemark_pending) tidemark_oldest",
                d.render(&committed),
                interval.join(" AND ")
            ),
            form: TimeForm::Rfc3339,
        }))
    }
}

impl VersionCapture {
    /// The conditions of rows whose version lies between `before` and `after`.
    fn interval(
        &self,
        d: &dyn Dialect,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<Vec<String>> {
        let v = d.quote(&self.version.name);
        let mut interval: Vec<String> = Vec::new();
        match (before, before.and_then(Position::txids)) {
            (Some(_), Some(t)) => interval.push(TxidSnapshot::parse(t)?.not_visible(&v)),
            // A transaction id cannot be compared with a time (a watermark set by hand): on
            // PostgreSQL such an export starts from the beginning, which loses nothing.
            (Some(_), None) if d.kind() == DbKind::Postgres => {}
            (Some(p), None) => interval.push(format!("{v} >= {}", micros(p))),
            (None, _) => {}
        }
        // With a transaction snapshot the read itself is the upper bound.
        if after.txids().is_none() {
            interval.push(if before.is_none() {
                // Rows not written since setup have no version yet.
                format!("({v} IS NULL OR {v} < {})", micros(after))
            } else {
                format!("{v} < {}", micros(after))
            });
        }
        Ok(interval)
    }
}

/// Adds the version column if missing, indexes it and (re)creates the triggers.
pub async fn setup(
    db: &dyn Database,
    info: &TableInfo,
    options: &SetupOptions,
) -> Result<SetupReport> {
    let config = VersionCapture::default_config(info, options);
    let d = db.dialect();
    let mut installed = Vec::new();
    let fresh;
    let info = if info.column(&config.cursor_column).is_none() {
        let column = Ident::new(&config.cursor_column)?;
        db.execute(
            &format!(
                "ALTER TABLE {} ADD COLUMN {} BIGINT",
                d.quote_table(&info.name),
                d.quote(&column)
            ),
            &[],
        )
        .await?;
        installed.push(format!("column {column}"));
        fresh = db.describe(&info.name).await?;
        &fresh
    } else {
        info
    };
    let capture = VersionCapture::new(info, &config)?;
    let n = capture.names()?;
    db.execute(
        &d.create_index(&n.index, &info.name, &[&capture.version.name]),
        &[],
    )
    .await?;
    installed.push(format!("index {}", n.index));
    run_all(db, capture.install(d)?).await?;
    if d.kind() == DbKind::Postgres {
        installed.push(format!("function {}", n.function));
        installed.push(format!("trigger {}", n.trigger));
    } else {
        installed.push(format!("trigger {}", n.on_insert));
        installed.push(format!("trigger {}", n.on_update));
    }
    Ok(SetupReport {
        table: info.name.to_string(),
        config,
        installed,
        reused: Vec::new(),
    })
}

/// Drops the triggers, the index and the version column.
pub async fn teardown(
    db: &dyn Database,
    info: &TableInfo,
    config: &TableConfig,
) -> Result<Vec<String>> {
    let capture = VersionCapture::new(info, config)?;
    run_all(db, capture.uninstall(db.dialect())?).await?;
    Ok(vec![
        "triggers".into(),
        format!("index {}", capture.names()?.index),
        format!("column {}", capture.version.name),
    ])
}
