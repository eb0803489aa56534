//! The `trigger` strategy: AFTER INSERT/UPDATE/DELETE triggers append every change of the table
//! to a change log `tidemark_log_{table}`: change id (increasing), the writing transaction's id
//! (PostgreSQL), the change time, the operation, the before image as JSON of all columns, and
//! the old and new primary key as typed columns. The view `tidemark_changes_{table}` shows each
//! change with both images: a change's after image is the before image of the next change of
//! its new key, or the row as it is now when there is none. The triggers write only what
//! nothing else can tell (the state a change destroyed), which halves what each write costs.
//!
//! Change ids and transaction ids are handed out before commit, so they become visible out of
//! order and `id > last` would lose changes. Exports instead take the changes that became
//! visible between two snapshots: on PostgreSQL those of transactions visible in the export's
//! own transaction snapshot and not in the previous one (as PgQ does), with `txid >= previous
//! xmin` so that an index limits the scan to recent changes; on MariaDB and SQLite those whose
//! change time lies in `[previous bound, bound)`, where the bound is the one the `timestamp`
//! strategy relies on (no transaction still open can stamp a time below it). The log's rows, in
//! change-id order, also carry what a replicator needs.
//!
//! An export turns the changed keys into rows of the table as the snapshot sees it, so its CSV
//! is the same as the other strategies': `delta` has one row per changed key — `DELETE` (key
//! columns only) when the row is gone or soft-deleted, `INSERT` when the key did not exist
//! before the interval, else `UPDATE`; an update that changes the key deletes the old one.

use super::{
    default_deleted_column, derived_name, rendered_columns, require_key, run_all,
    soft_delete_column, table_select, CaptureStrategy, Inserted, Mode, OldestChange, Select,
    SetupOptions, SetupReport, TimeForm, TxidSnapshot,
};
use crate::db::{
    Bound, ClockNeed, Column, ColumnKind, Database, DbKind, Dialect, TableInfo, Timestamp,
};
use crate::error::Result;
use crate::ident::{Ident, TableName};
use crate::state::{Position, TableConfig};

/// The objects `setup` creates for one table.
/// All of them live in the table's schema.
struct Names {
    log: TableName,
    /// The view of the log with both images.
    changes: TableName,
    /// PostgreSQL: the notification channel (the view's name, schema included when the
    /// table has one).
    channel: Ident,
    /// PostgreSQL: the trigger function, and the one row-level trigger of earlier versions
    /// (dropped when setup runs again).
    function: TableName,
    trigger: Ident,
    /// One trigger per operation (row-level on MariaDB and SQLite, statement-level on
    /// PostgreSQL, where a trigger's name is not schema-qualified: its name part is used).
    on_insert: TableName,
    on_update: TableName,
    on_delete: TableName,
    time_index: Ident,
    txid_index: Ident,
}

impl Names {
    fn of(table: &TableName) -> Result<Names> {
        let t = table.name();
        let n = |suffix: &str| derived_name(&format!("tidemark_log_{t}{suffix}"), suffix);
        let s = |suffix: &str| Ok::<_, crate::error::Error>(table.sibling(n(suffix)?));
        let changes = table.sibling(derived_name(&format!("tidemark_changes_{t}"), "changes")?);
        Ok(Names {
            log: table.sibling(derived_name(&format!("tidemark_log_{t}"), "log")?),
            channel: derived_name(changes.as_str(), "changes")?,
            changes,
            function: s("_fn")?,
            trigger: n("_trg")?,
            on_insert: s("_ins")?,
            on_update: s("_upd")?,
            on_delete: s("_del")?,
            time_index: n("_time_idx")?,
            txid_index: n("_txid_idx")?,
        })
    }
}

/// The `trigger` strategy for one table.
pub struct TriggerCapture {
    info: TableInfo,
    deleted: Option<Column>,
    names: Names,
}

const INSERT: &str = "INSERT";
const UPDATE: &str = "UPDATE";
const DELETE: &str = "DELETE";

impl TriggerCapture {
    /// The registration `setup` stores: the log table's name as the "cursor", and the
    /// soft-delete column if there is one (`trigger` sees hard and soft deletes).
    pub fn default_config(info: &TableInfo, options: &SetupOptions) -> Result<TableConfig> {
        Ok(TableConfig {
            strategy: "trigger".into(),
            cursor_column: Names::of(&info.name)?.log.name().to_string(),
            deleted_column: default_deleted_column(info, options),
            created_column: None,
            setup_id: None,
            set_up_at: None,
        })
    }

    /// Checks `config` against the table.
    pub fn new(info: &TableInfo, config: &TableConfig) -> Result<Self> {
        require_key(info)?;
        Ok(TriggerCapture {
            info: info.clone(),
            deleted: soft_delete_column(info, config)?,
            names: Names::of(&info.name)?,
        })
    }

    /// `time` as a value of the log's `changed_at` column.
    fn changed_at(d: &dyn Dialect, time: &Timestamp) -> Result<String> {
        let column = Column {
            name: Ident::new("changed_at")?,
            sql_type: "timestamp".into(),
            kind: ColumnKind::TimestampTz,
            nullable: false,
        };
        let literal = d.timestamp_literal(time, &column);
        Ok(match d.kind() {
            // SQLite's log keeps the time as a Julian day number (see `install`).
            DbKind::Sqlite => format!("julianday({literal})"),
            _ => literal,
        })
    }

    /// The log's typed key columns, `{prefix}_key_{n}`, one per primary key column.
    fn key_columns(&self, prefix: &str) -> Vec<String> {
        (1..=self.info.primary_key.len())
            .map(|i| format!("{prefix}_key_{i}"))
            .collect()
    }

    /// The statement a trigger runs for `op` (without a terminating semicolon): the before
    /// image for updates and deletes; the after image is the next change's before image or the
    /// live row (see the `changes` view).
    fn log_insert(&self, d: &dyn Dialect, op: &str) -> String {
        let mut cols: Vec<String> = vec!["operation".into(), "changed_at".into()];
        let mut vals: Vec<String> = vec![format!("'{op}'")];
        vals.push(match d.kind() {
            // The time of the write itself, not of the statement (NOW(6)): it is never before
            // the transaction's start, which is what holds the capture bound back.
            DbKind::Mysql => "SYSDATE(6)".into(),
            DbKind::Postgres => "clock_timestamp()".into(),
            // A Julian day number: SQLite's clock has milliseconds, which it keeps exactly, and
            // it costs a quarter of what formatting the time as text does on every write.
            DbKind::Sqlite => "julianday('now')".into(),
        });
        if d.kind() == DbKind::Postgres {
            cols.push("txid".into());
            vals.push("pg_current_xact_id()::text::bigint".into());
        }
        let keys = &self.info.primary_key;
        if op != INSERT {
            cols.push("before_image".into());
            vals.push(d.json_image("OLD", &self.info.columns));
            cols.extend(self.key_columns("old"));
            vals.extend(keys.iter().map(|k| format!("OLD.{}", d.quote(k))));
        }
        if op != DELETE {
            cols.extend(self.key_columns("new"));
            vals.extend(keys.iter().map(|k| format!("NEW.{}", d.quote(k))));
        }
        format!(
            "INSERT INTO {} ({}) VALUES ({})",
            d.quote_table(&self.names.log),
            cols.join(", "),
            vals.join(", ")
        )
    }

    /// The statements that create the log (if missing), (re)create the triggers and the view.
    fn install(&self, d: &dyn Dialect) -> Result<Vec<String>> {
        let mut statements = self.install_log(d)?;
        statements.extend(self.view(d));
        Ok(statements)
    }

    /// The view of the log with both images (see the module doc). Each change's events — it
    /// left its old key (carrying the before image), it reached its new key — are ordered per
    /// key; the event following "reached" is the next change leaving that key, whose before
    /// image is this change's after image. With no such event, the live row is.
    fn view(&self, d: &dyn Dialect) -> Vec<String> {
        let n = &self.names;
        let (log, view, table) = (
            d.quote_table(&n.log),
            d.quote_table(&n.changes),
            d.quote_table(&self.info.name),
        );
        let count = self.info.primary_key.len();
        let event_keys = |prefix: &str| -> String {
            (1..=count)
                .map(|i| format!("{prefix}_key_{i} AS k{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let partition: Vec<String> = (1..=count).map(|i| format!("e.k{i}")).collect();
        let live_key: Vec<String> = self
            .info
            .primary_key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("t.{} = l.new_key_{}", d.quote(k), i + 1))
            .collect();
        let mut key_columns = self.key_columns("old");
        key_columns.extend(self.key_columns("new"));
        let key_columns: Vec<String> = key_columns.iter().map(|c| format!("l.{c}")).collect();
        let changed_at = match d.kind() {
            DbKind::Sqlite => "strftime('%Y-%m-%dT%H:%M:%f000Z', l.changed_at)".to_string(),
            _ => "l.changed_at".into(),
        };
        let select = format!(
            "SELECT l.change_id, l.txid, {changed_at} AS changed_at, l.operation, l.before_image, \
             CASE WHEN l.operation = '{DELETE}' THEN NULL \
                  WHEN a.next_image IS NOT NULL THEN a.next_image ELSE {} END AS after_image, {} \
             FROM {log} l LEFT JOIN (\
               SELECT e.change_id, e.side, LEAD(e.image) OVER (PARTITION BY {} \
                      ORDER BY e.change_id, e.side) AS next_image \
               FROM (SELECT change_id, 0 AS side, {}, before_image AS image FROM {log} \
                     WHERE operation <> '{INSERT}' \
                     UNION ALL \
                     SELECT change_id, 1 AS side, {}, NULL AS image FROM {log} \
                     WHERE operation <> '{DELETE}') e) a \
               ON a.change_id = l.change_id AND a.side = 1 \
             LEFT JOIN {table} t ON l.operation <> '{DELETE}' AND a.next_image IS NULL AND {}",
            d.json_image("t", &self.info.columns),
            key_columns.join(", "),
            partition.join(", "),
            event_keys("old"),
            event_keys("new"),
            live_key.join(" AND "),
        );
        vec![
            format!("DROP VIEW IF EXISTS {view}"),
            format!("CREATE VIEW {view} AS {select}"),
        ]
    }

    /// The log table and the triggers.
    fn install_log(&self, d: &dyn Dialect) -> Result<Vec<String>> {
        let n = &self.names;
        let (log, table) = (d.quote_table(&n.log), d.quote_table(&self.info.name));
        let key_type = |k: &Ident| match d.kind() {
            // SQLite keeps each value's own type; a declared type would only convert it.
            DbKind::Sqlite => String::new(),
            _ => self
                .info
                .column(k.as_str())
                .map(|c| format!(" {}", c.sql_type))
                .unwrap_or_default(),
        };
        let mut keys: Vec<String> = Vec::new();
        for prefix in ["old", "new"] {
            for (col, k) in self.key_columns(prefix).iter().zip(&self.info.primary_key) {
                keys.push(format!("{col}{}", key_type(k)));
            }
        }
        let keys = keys.join(", ");
        Ok(match d.kind() {
            DbKind::Postgres => {
                let body = self.pg_statement_body(d);
                let function = d.quote_table(&n.function);
                let mut v = vec![
                    // No B-tree on change_id: the identity hands out unique ids, and no read
                    // looks one up (they order a key's changes in the view and in deltas), so
                    // each logged row costs one index insert less. A log created earlier keeps
                    // its primary key.
                    format!(
                        "CREATE TABLE IF NOT EXISTS {log} (\
                         change_id BIGINT GENERATED ALWAYS AS IDENTITY, \
                         txid BIGINT NOT NULL, changed_at TIMESTAMPTZ NOT NULL, \
                         operation TEXT NOT NULL, before_image JSONB, {keys})"
                    ),
                    // Entries are appended in transaction-id order, nearly: a BRIN index costs
                    // the writers next to nothing and still lets an export skip to the recent
                    // entries (`txid >= xmin`). A log created earlier keeps its B-tree.
                    format!(
                        "CREATE INDEX IF NOT EXISTS {} ON {log} USING brin (txid)",
                        d.quote(&n.txid_index)
                    ),
                    // The search path is pinned so the log is found whatever the writer's is
                    // (the trigger runs once per statement, so that costs once per statement);
                    // it runs as its owner, so writers of the table need no grant on the log.
                    format!(
                        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql \
                         SECURITY DEFINER SET search_path FROM CURRENT AS '{}'",
                        body.replace('\'', "''")
                    ),
                    // The row-level trigger of earlier versions.
                    format!("DROP TRIGGER IF EXISTS {} ON {table}", d.quote(&n.trigger)),
                ];
                // One trigger per operation, each run once per statement with the statement's
                // rows as transition tables (one INSERT … SELECT into the log, one
                // notification), so a bulk statement costs one log insert of many rows rather
                // than a function call per row.
                for (name, op) in self.per_operation() {
                    let referencing = match op {
                        INSERT => "NEW TABLE AS tidemark_new",
                        UPDATE => "OLD TABLE AS tidemark_old NEW TABLE AS tidemark_new",
                        _ => "OLD TABLE AS tidemark_old",
                    };
                    v.push(format!(
                        "DROP TRIGGER IF EXISTS {} ON {table}",
                        d.quote(name.name())
                    ));
                    v.push(format!(
                        "CREATE TRIGGER {} AFTER {op} ON {table} REFERENCING {referencing} \
                         FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
                        d.quote(name.name())
                    ));
                }
                v
            }
            DbKind::Mysql => {
                let mut v = vec![format!(
                    "CREATE TABLE IF NOT EXISTS {log} (\
                     change_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, txid BIGINT NULL, \
                     changed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
                     operation VARCHAR(6) NOT NULL, before_image LONGTEXT NULL, \
                     {keys}, INDEX {} (changed_at)) ENGINE=InnoDB",
                    d.quote(&n.time_index)
                )];
                // CREATE OR REPLACE swaps a trigger atomically: no write goes uncaptured while
                // setup runs again.
                for (name, op) in self.per_operation() {
                    v.push(format!(
                        "CREATE OR REPLACE TRIGGER {} AFTER {op} ON {table} FOR EACH ROW {}",
                        d.quote_table(name),
                        self.log_insert(d, op)
                    ));
                }
                v
            }
            DbKind::Sqlite => {
                // Positions count by change id here (see `extent_query`), so the log needs no
                // time index, and ids are rowids (no AUTOINCREMENT bookkeeping): each write
                // then costs one more B-tree insert, not three. Rowids never go back because
                // prune always keeps the newest entry.
                let mut v = vec![
                    format!(
                        "CREATE TABLE IF NOT EXISTS {log} (\
                         change_id INTEGER PRIMARY KEY, txid INTEGER, \
                         changed_at REAL NOT NULL, operation TEXT NOT NULL, \
                         before_image TEXT, {keys})"
                    ),
                    d.drop_index(&n.time_index, &n.log),
                ];
                // In one transaction with the drops: no write goes uncaptured meanwhile.
                for (name, op) in self.per_operation() {
                    v.push(format!("DROP TRIGGER IF EXISTS {}", d.quote_table(name)));
                    v.push(format!(
                        "CREATE TRIGGER {} AFTER {op} ON {table} FOR EACH ROW BEGIN {}; END",
                        d.quote_table(name),
                        self.log_insert(d, op)
                    ));
                }
                v
            }
        })
    }

    /// The PostgreSQL statement-level trigger function: one log entry per row of the
    /// statement's transition tables. An UPDATE's old and new rows are paired by primary key;
    /// a statement that changed one row's key pairs that row's old and new key as one UPDATE,
    /// and one that changed several rows' keys logs each vanished key as a DELETE and each new
    /// one as an INSERT — how a delta export shows a key change anyway. pg_notify folds identical
    /// notifications of one transaction into one, sent at commit: followers (`replicate
    /// --follow`) wake once per transaction.
    fn pg_statement_body(&self, d: &dyn Dialect) -> String {
        let log = d.quote_table(&self.names.log);
        let keys: Vec<String> = self.info.primary_key.iter().map(|k| d.quote(k)).collect();
        let old_keys = self.key_columns("old").join(", ");
        let new_keys = self.key_columns("new").join(", ");
        let of = |alias: &str| -> String {
            keys.iter()
                .map(|k| format!("{alias}.{k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let pairs: Vec<String> = keys.iter().map(|k| format!("o.{k} = n.{k}")).collect();
        let pairs = pairs.join(" AND ");
        let image = d.json_image("o", &self.info.columns);
        // No PL/pgSQL variable appears in a query: a column of the table of the same name
        // would make it ambiguous. The time and transaction id are taken once per statement
        // (a materialized CTE is evaluated once), not once per row: the time is still that of
        // the trigger, after the statement's writes, so never before the transaction began.
        let with = "WITH tidemark_stamp AS MATERIALIZED (SELECT clock_timestamp() AS at, \
                    pg_current_xact_id()::text::bigint AS txid) ";
        let stamp = "tidemark_stamp.at, tidemark_stamp.txid";
        let (new, old) = (of("n"), of("o"));
        let unmatched_old =
            format!("tidemark_old o WHERE NOT EXISTS (SELECT 1 FROM tidemark_new n WHERE {pairs})");
        let unmatched_new =
            format!("tidemark_new n WHERE NOT EXISTS (SELECT 1 FROM tidemark_old o WHERE {pairs})");
        format!(
            "DECLARE tidemark_matched bigint; tidemark_count bigint; \
             BEGIN \
             IF TG_OP = 'INSERT' THEN \
               {with}INSERT INTO {log} (operation, changed_at, txid, {new_keys}) \
               SELECT '{INSERT}', {stamp}, {new} FROM tidemark_stamp, tidemark_new n; \
             ELSIF TG_OP = 'UPDATE' THEN \
               {with}INSERT INTO {log} (operation, changed_at, txid, before_image, {old_keys}, {new_keys}) \
               SELECT '{UPDATE}', {stamp}, {image}, {old}, {new} \
               FROM tidemark_stamp, tidemark_old o JOIN tidemark_new n ON {pairs}; \
               GET DIAGNOSTICS tidemark_matched = ROW_COUNT; \
               SELECT count(*) INTO tidemark_count FROM tidemark_old; \
               IF tidemark_count - tidemark_matched = 1 THEN \
                 {with}INSERT INTO {log} (operation, changed_at, txid, before_image, {old_keys}, {new_keys}) \
                 SELECT '{UPDATE}', {stamp}, {image}, {old}, {new} \
                 FROM tidemark_stamp, (SELECT o.* FROM {unmatched_old}) o, \
                 (SELECT n.* FROM {unmatched_new}) n; \
               ELSIF tidemark_count > tidemark_matched THEN \
                 {with}INSERT INTO {log} (operation, changed_at, txid, before_image, {old_keys}) \
                 SELECT '{DELETE}', {stamp}, {image}, {old} FROM tidemark_stamp, {unmatched_old}; \
                 {with}INSERT INTO {log} (operation, changed_at, txid, {new_keys}) \
                 SELECT '{INSERT}', {stamp}, {new} FROM tidemark_stamp, {unmatched_new}; \
               END IF; \
             ELSE \
               {with}INSERT INTO {log} (operation, changed_at, txid, before_image, {old_keys}) \
               SELECT '{DELETE}', {stamp}, {image}, {old} FROM tidemark_stamp, tidemark_old o; \
             END IF; \
             PERFORM pg_notify('{channel}', ''); \
             RETURN NULL; END",
            channel = self.names.channel.as_str().replace('\'', "''"),
        )
    }

    fn per_operation(&self) -> [(&TableName, &'static str); 3] {
        let n = &self.names;
        [
            (&n.on_insert, INSERT),
            (&n.on_update, UPDATE),
            (&n.on_delete, DELETE),
        ]
    }

    /// The statements that remove what [`TriggerCapture::install`] created.
    fn uninstall(&self, d: &dyn Dialect) -> Vec<String> {
        let n = &self.names;
        let table = d.quote_table(&self.info.name);
        let mut v = vec![format!("DROP VIEW IF EXISTS {}", d.quote_table(&n.changes))];
        if d.kind() == DbKind::Postgres {
            v.push(format!(
                "DROP TRIGGER IF EXISTS {} ON {table}",
                d.quote(&n.trigger)
            ));
            for (name, _) in self.per_operation() {
                v.push(format!(
                    "DROP TRIGGER IF EXISTS {} ON {table}",
                    d.quote(name.name())
                ));
            }
            v.push(format!(
                "DROP FUNCTION IF EXISTS {}()",
                d.quote_table(&n.function)
            ));
        } else {
            for (name, _) in self.per_operation() {
                v.push(format!("DROP TRIGGER IF EXISTS {}", d.quote_table(name)));
            }
        }
        v.push(format!("DROP TABLE IF EXISTS {}", d.quote_table(&n.log)));
        v
    }

    /// The condition on log entries `l` of the changes from `before` to `after`.
    fn interval(&self, d: &dyn Dialect, before: &Position, after: &Position) -> Result<String> {
        let mut interval: Vec<String> = Vec::new();
        match (before.txids(), before.change_id()) {
            (Some(t), _) => interval.push(TxidSnapshot::parse(t)?.not_visible("l.txid")),
            (None, Some(id)) => interval.push(format!("l.change_id > {id}")),
            (None, None) => interval.push(format!(
                "l.changed_at >= {}",
                Self::changed_at(d, &before.time())?
            )),
        }
        // With a transaction snapshot, the read itself sees exactly the changes of the
        // transactions it names as finished: no upper bound is needed. With ids in commit
        // order (SQLite), the snapshot's largest id is the bound.
        match (after.txids(), after.change_id()) {
            (Some(_), _) => {}
            (None, Some(id)) => interval.push(format!("l.change_id <= {id}")),
            // A count up to now (monitoring) from an id needs no upper bound.
            (None, None) if before.change_id().is_some() => {}
            (None, None) => interval.push(format!(
                "l.changed_at < {}",
                Self::changed_at(d, &after.time())?
            )),
        }
        Ok(interval.join(" AND "))
    }

    /// The changes between `before` and `after` as rows of the table (see the module doc).
    fn changes(
        &self,
        d: &dyn Dialect,
        mode: Mode,
        before: &Position,
        after: &Position,
    ) -> Result<Select> {
        let interval = self.interval(d, before, after)?;
        let keys = &self.info.primary_key;
        let key_list: Vec<String> = keys.iter().map(|k| d.quote(k)).collect();
        let key_list = key_list.join(", ");
        let side = |prefix: &str| -> String {
            self.key_columns(prefix)
                .iter()
                .zip(keys)
                .map(|(col, k)| format!("l.{col} AS {}", d.quote(k)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let log = d.quote_table(&self.names.log);
        // Every key a change in the interval touched: the old key of updates and deletes, the
        // new key of inserts and updates; with the first change touching it, and the first
        // that found it existing (an old key).
        let touched = format!(
            "SELECT {key_list}, MIN(tidemark_change) AS tidemark_first, \
             MIN(CASE WHEN tidemark_old = 1 THEN tidemark_change END) AS tidemark_first_old \
             FROM (SELECT {}, l.change_id AS tidemark_change, 1 AS tidemark_old FROM {log} l \
                   WHERE {interval} AND l.operation <> '{INSERT}' \
                   UNION ALL \
                   SELECT {}, l.change_id AS tidemark_change, 0 AS tidemark_old FROM {log} l \
                   WHERE {interval} AND l.operation <> '{DELETE}') c \
             GROUP BY {key_list}",
            side("old"),
            side("new")
        );
        let mut fields: Vec<String> = self
            .info
            .columns
            .iter()
            .map(|c| {
                let q = d.quote(&c.name);
                if keys.contains(&c.name) {
                    format!("k.{q} AS {q}")
                } else {
                    format!("t.{q} AS {q}")
                }
            })
            .collect();
        fields.push("k.tidemark_first AS tidemark_first".into());
        let join_on: Vec<String> = key_list_pairs(d, keys);
        let join_on = join_on.join(" AND ");
        let table = d.quote_table(&self.info.name);
        let soft_deleted = self
            .deleted
            .as_ref()
            .map(|c| d.is_true(&format!("t.{}", d.quote(&c.name))));
        let inner = if mode == Mode::Delta {
            let mut whens = vec![format!(
                "WHEN t.{} IS NULL THEN '{DELETE}'",
                d.quote(&keys[0])
            )];
            if let Some(del) = &soft_deleted {
                whens.push(format!("WHEN {del} THEN '{DELETE}'"));
            }
            whens.push(format!(
                "WHEN k.tidemark_first_old = k.tidemark_first THEN '{UPDATE}'"
            ));
            fields.push(format!(
                "CASE {} ELSE '{INSERT}' END AS tidemark_op",
                whens.join(" ")
            ));
            format!(
                "SELECT {} FROM ({touched}) k LEFT JOIN {table} t ON {join_on}",
                fields.join(", ")
            )
        } else {
            let mut sql = format!(
                "SELECT {} FROM ({touched}) k JOIN {table} t ON {join_on}",
                fields.join(", ")
            );
            if let Some(del) = &soft_deleted {
                sql.push_str(&format!(" WHERE NOT {del}"));
            }
            sql
        };
        let mut header: Vec<String> = Vec::new();
        let mut exprs: Vec<String> = Vec::new();
        if mode == Mode::Delta {
            header.push("operation".into());
            exprs.push("tidemark_op".into());
        }
        header.extend(self.info.columns.iter().map(|c| c.name.to_string()));
        exprs.extend(rendered_columns(d, &self.info));
        Ok(Select {
            header,
            sql: format!(
                "SELECT {} FROM ({inner}) x ORDER BY tidemark_first",
                exprs.join(", ")
            ),
        })
    }
}

fn key_list_pairs(d: &dyn Dialect, keys: &[Ident]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            let q = d.quote(k);
            format!("t.{q} = k.{q}")
        })
        .collect()
}

impl CaptureStrategy for TriggerCapture {
    fn name(&self) -> &'static str {
        "trigger"
    }

    fn clock_need(&self) -> ClockNeed {
        ClockNeed::UnlessTxidsOrLogIds
    }

    fn position_after(&self, bound: &Bound, before: Option<&Position>) -> Position {
        Position::Trigger {
            time: before.map_or(bound.time, |b| b.time().max(bound.time)),
            txids: bound.txids.clone(),
            change_id: bound.extent,
            setup: None,
        }
    }

    fn prune_sql(
        &self,
        d: &dyn Dialect,
        positions: &[Position],
    ) -> Result<Option<(String, String)>> {
        let log = d.quote_table(&self.names.log);
        let mut passed = Vec::new();
        for p in positions {
            passed.push(match (p.txids(), p.change_id()) {
                (Some(t), _) => TxidSnapshot::parse(t)?.visible("txid"),
                (None, Some(id)) => format!("change_id <= {id}"),
                (None, None) => format!("changed_at < {}", Self::changed_at(d, &p.time())?),
            });
        }
        if passed.is_empty() {
            return Ok(None);
        }
        if d.kind() == DbKind::Sqlite {
            // Rowids must never go back (positions count by them): keep the newest entry.
            passed.push(format!("change_id < (SELECT max(change_id) FROM {log})"));
        }
        Ok(Some((
            format!("DELETE FROM {log} WHERE {}", passed.join(" AND ")),
            format!("SELECT count(*) FROM {log}"),
        )))
    }

    /// The change log's entries by operation.
    fn count_recorded(&self, d: &dyn Dialect) -> Option<String> {
        Some(format!(
            "SELECT operation, count(*) FROM {} GROUP BY operation",
            d.quote_table(&self.names.log)
        ))
    }

    /// The oldest `changed_at` among the log entries of the interval: the time the trigger
    /// wrote it, within the writing transaction. From the beginning (no position) the changes
    /// are the table's rows, which carry no change time.
    fn oldest_change(
        &self,
        d: &dyn Dialect,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<Option<OldestChange>> {
        let Some(before) = before else {
            return Ok(None);
        };
        let log = d.quote_table(&self.names.log);
        let interval = self.interval(d, before, after)?;
        let oldest =
            format!("SELECT min(l.changed_at) AS changed_at FROM {log} l WHERE {interval}");
        let sql = match d.kind() {
            // SQLite's log keeps a Julian day number (see `install`).
            DbKind::Sqlite => format!(
                "SELECT strftime('%Y-%m-%dT%H:%M:%f', changed_at) || '000Z' \
                 FROM ({oldest}) tidemark_oldest"
            ),
            _ => {
                let column = Column {
                    name: Ident::new("changed_at")?,
                    sql_type: "timestamp".into(),
                    kind: ColumnKind::TimestampTz,
                    nullable: true,
                };
                format!(
                    "SELECT {} FROM ({oldest}) tidemark_oldest",
                    d.render(&column)
                )
            }
        };
        Ok(Some(OldestChange {
            sql,
            form: TimeForm::Rfc3339,
        }))
    }

    /// The view's rows of the log entries in the interval. The interval gets an upper bound on
    /// PostgreSQL too (visible in `after`'s transaction snapshot), so that a later read of it
    /// gives the same rows: a change's after image is the next change's before image or, when
    /// there is none yet, the live row — which is that same state.
    fn change_rows(
        &self,
        d: &dyn Dialect,
        before: &Position,
        after: &Position,
    ) -> Result<Option<String>> {
        let mut interval = self.interval(d, before, after)?;
        if let Some(t) = after.txids() {
            interval.push_str(&format!(
                " AND {}",
                TxidSnapshot::parse(t)?.visible("l.txid")
            ));
        }
        let column = |name: &str, kind: ColumnKind| -> Result<Column> {
            Ok(Column {
                name: Ident::new(name)?,
                sql_type: String::new(),
                kind,
                nullable: true,
            })
        };
        let changed_at = match d.kind() {
            // The view already prints SQLite's Julian day numbers as RFC 3339.
            DbKind::Sqlite => d.quote(&Ident::new("changed_at")?),
            _ => d.render(&column("changed_at", ColumnKind::TimestampTz)?),
        };
        // Ordered by the number, not by its rendered text (which `change_id` would name).
        Ok(Some(format!(
            "SELECT {}, {changed_at}, operation, {}, {} FROM (\
               SELECT v.change_id, v.changed_at, v.operation, v.before_image, v.after_image \
               FROM {} v JOIN {} l ON l.change_id = v.change_id WHERE {interval}) x \
             ORDER BY x.change_id",
            d.render(&column("change_id", ColumnKind::Integer)?),
            d.render(&column("before_image", ColumnKind::Other)?),
            d.render(&column("after_image", ColumnKind::Other)?),
            d.quote_table(&self.names.changes),
            d.quote_table(&self.names.log),
        )))
    }

    fn notify_channel(&self, d: &dyn Dialect) -> Option<String> {
        (d.kind() == DbKind::Postgres).then(|| self.names.channel.to_string())
    }

    fn extent_query(&self, d: &dyn Dialect) -> Option<String> {
        // One writer at a time, and the export's snapshot is pinned while no writer is active:
        // every id up to the largest one it sees is committed, and later ones are larger.
        (d.kind() == DbKind::Sqlite).then(|| {
            format!(
                "SELECT COALESCE(max(change_id), 0) FROM {}",
                d.quote_table(&self.names.log)
            )
        })
    }

    fn select(
        &self,
        d: &dyn Dialect,
        mode: Mode,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<Select> {
        match (mode, before) {
            (Mode::Incremental | Mode::Delta, Some(before)) => self.changes(d, mode, before, after),
            // Full, or from the beginning: the log only starts at setup, so the table itself
            // is the beginning (every live row; in a delta, INSERT).
            _ => {
                let order: Vec<String> = self.info.primary_key.iter().map(|k| d.quote(k)).collect();
                Ok(table_select(
                    d,
                    &self.info,
                    mode,
                    self.deleted.as_ref(),
                    Inserted::All,
                    &[],
                    &order,
                ))
            }
        }
    }
}

/// Creates the change log if missing and (re)creates the triggers, so that running it again
/// after `ALTER TABLE … ADD COLUMN` captures the new column.
pub async fn setup(
    db: &dyn Database,
    info: &TableInfo,
    options: &SetupOptions,
) -> Result<SetupReport> {
    let config = TriggerCapture::default_config(info, options)?;
    let capture = TriggerCapture::new(info, &config)?;
    let d = db.dialect();
    run_all(db, capture.install(d)?).await?;
    let n = &capture.names;
    let triggers: Vec<String> = if d.kind() == DbKind::Postgres {
        vec![
            format!("function {}", n.function),
            format!("trigger {}", n.trigger),
        ]
    } else {
        capture
            .per_operation()
            .iter()
            .map(|(name, _)| format!("trigger {name}"))
            .collect()
    };
    let mut installed = vec![format!("change log {}", n.log)];
    installed.extend(triggers);
    installed.push(format!("view {}", n.changes));
    Ok(SetupReport {
        table: info.name.to_string(),
        config,
        installed,
        reused: Vec::new(),
    })
}

/// Drops the triggers, the trigger function and the change log.
pub async fn teardown(
    db: &dyn Database,
    info: &TableInfo,
    config: &TableConfig,
) -> Result<Vec<String>> {
    let capture = TriggerCapture::new(info, config)?;
    run_all(db, capture.uninstall(db.dialect())).await?;
    Ok(vec![
        "triggers".into(),
        format!("view {}", capture.names.changes),
        format!("change log {}", capture.names.log),
    ])
}
