//! The `timestamp` strategy: changes are rows whose cursor column (default `updated_at`) lies in
//! the half-open interval `[before, after)` of capture bounds, ordered by cursor then primary key.
//! Because an export's bound never passes the start of a write transaction still open, a row
//! committed late (out of order) or sharing the previous bound's value still lands in the next
//! interval. Deletes are soft: a true `is_deleted` (configurable) column.

use sha2::{Digest, Sha256};

use super::{CaptureStrategy, Mode, Select, SetupOptions, SetupReport};
use crate::db::{Column, ColumnKind, Database, Dialect, TableInfo, Timestamp};
use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::state::{Position, TableConfig};

/// The `timestamp` strategy for one table.
pub struct TimestampCapture {
    info: TableInfo,
    cursor: Column,
    deleted: Option<Column>,
    created: Option<Column>,
}

fn unfit(info: &TableInfo, reason: String) -> Error {
    Error::UnfitTable {
        table: info.name.to_string(),
        reason,
    }
}

impl TimestampCapture {
    /// The registration `setup` stores: the given columns, or `updated_at`, and `is_deleted` /
    /// `created_at` when the table has them.
    pub fn default_config(info: &TableInfo, options: &SetupOptions) -> Result<TableConfig> {
        let present = |name: &str| info.column(name).map(|c| c.name.to_string());
        Ok(TableConfig {
            strategy: "timestamp".into(),
            cursor_column: options
                .cursor_column
                .clone()
                .unwrap_or_else(|| "updated_at".into()),
            deleted_column: options
                .deleted_column
                .clone()
                .or_else(|| present("is_deleted")),
            created_column: options.created_column.clone().or_else(|| {
                info.column("created_at")
                    .filter(|c| c.kind.is_timestamp())
                    .map(|c| c.name.to_string())
            }),
        })
    }

    /// Checks `config` against the table.
    pub fn new(info: &TableInfo, config: &TableConfig) -> Result<Self> {
        if info.primary_key.is_empty() {
            return Err(unfit(info, "it has no primary key".into()));
        }
        let column = |name: &str, what: &str| {
            info.column(name)
                .cloned()
                .ok_or_else(|| unfit(info, format!("{what} column {name:?} does not exist")))
        };
        let cursor = column(&config.cursor_column, "cursor")?;
        if !cursor.kind.is_timestamp() {
            return Err(unfit(
                info,
                format!(
                    "cursor column {:?} is {}, not a timestamp",
                    cursor.name.as_str(),
                    cursor.sql_type
                ),
            ));
        }
        let deleted = config
            .deleted_column
            .as_deref()
            .map(|n| column(n, "soft-delete"))
            .transpose()?;
        if let Some(d) = &deleted {
            if !matches!(d.kind, ColumnKind::Bool | ColumnKind::Integer) {
                return Err(unfit(
                    info,
                    format!("soft-delete column {:?} is not boolean", d.name.as_str()),
                ));
            }
        }
        let created = config
            .created_column
            .as_deref()
            .map(|n| column(n, "creation time"))
            .transpose()?;
        if let Some(c) = &created {
            if !c.kind.is_timestamp() {
                return Err(unfit(
                    info,
                    format!(
                        "creation time column {:?} is not a timestamp",
                        c.name.as_str()
                    ),
                ));
            }
        }
        Ok(TimestampCapture {
            info: info.clone(),
            cursor,
            deleted,
            created,
        })
    }

    fn index_name(&self) -> Result<Ident> {
        let plain = format!("tidemark_{}_{}_idx", self.info.name, self.cursor.name);
        if plain.len() <= Ident::MAX_BYTES {
            Ident::new(&plain)
        } else {
            let h = hex::encode(Sha256::digest(plain.as_bytes()));
            Ident::new(&format!("tidemark_{}_idx", &h[..24]))
        }
    }
}

impl CaptureStrategy for TimestampCapture {
    fn name(&self) -> &'static str {
        "timestamp"
    }

    fn position_after(&self, bound: Timestamp, before: Option<&Position>) -> Position {
        let floor = before.map(Position::time);
        Position::Timestamp {
            cursor: floor.map_or(bound, |f| f.max(bound)),
        }
    }

    fn select(
        &self,
        d: &dyn Dialect,
        mode: Mode,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<Select> {
        let mut header: Vec<String> = Vec::new();
        let mut exprs: Vec<String> = Vec::new();
        if mode == Mode::Delta {
            header.push("operation".into());
            exprs.push(self.operation(d, before));
        }
        for c in &self.info.columns {
            header.push(c.name.to_string());
            exprs.push(d.render(c));
        }
        let mut sql = format!(
            "SELECT {} FROM {}{}",
            exprs.join(", "),
            d.quote(&self.info.name),
            self.filter(d, mode, before, after)
        );
        if mode != Mode::Full {
            let mut order = vec![d.quote(&self.cursor.name)];
            order.extend(self.info.primary_key.iter().map(|k| d.quote(k)));
            sql.push_str(" ORDER BY ");
            sql.push_str(&order.join(", "));
        }
        Ok(Select { header, sql })
    }

    fn count_changes(
        &self,
        d: &dyn Dialect,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<String> {
        let op = self.operation(d, before);
        Ok(format!(
            "SELECT {op}, count(*) FROM {}{} GROUP BY 1",
            d.quote(&self.info.name),
            self.filter(d, Mode::Delta, before, after)
        ))
    }
}

impl TimestampCapture {
    /// The delta's `operation` expression: DELETE for a soft-deleted row, INSERT for a row
    /// created since `before` (or any row when there is no `before`), UPDATE otherwise.
    fn operation(&self, d: &dyn Dialect, before: Option<&Position>) -> String {
        let mut whens: Vec<String> = Vec::new();
        if let Some(c) = &self.deleted {
            whens.push(format!(
                "WHEN {} THEN 'DELETE'",
                d.is_true(&d.quote(&c.name))
            ));
        }
        let otherwise = match (before, &self.created) {
            (None, _) => "'INSERT'",
            (Some(p), Some(created)) => {
                whens.push(format!(
                    "WHEN {} >= {} THEN 'INSERT'",
                    d.quote(&created.name),
                    d.timestamp_literal(&p.time(), created)
                ));
                "'UPDATE'"
            }
            (Some(_), None) => "'UPDATE'",
        };
        if whens.is_empty() {
            otherwise.to_string()
        } else {
            format!("CASE {} ELSE {otherwise} END", whens.join(" "))
        }
    }

    /// The WHERE clause (with its leading space, or empty) of an export in `mode` of the
    /// half-open interval `[before, after)`.
    fn filter(
        &self,
        d: &dyn Dialect,
        mode: Mode,
        before: Option<&Position>,
        after: &Position,
    ) -> String {
        let cursor = d.quote(&self.cursor.name);
        let mut conditions: Vec<String> = Vec::new();
        if mode != Mode::Full {
            if let Some(p) = before {
                conditions.push(format!(
                    "{cursor} >= {}",
                    d.timestamp_literal(&p.time(), &self.cursor)
                ));
            }
            conditions.push(format!(
                "{cursor} < {}",
                d.timestamp_literal(&after.time(), &self.cursor)
            ));
        }
        if mode != Mode::Delta {
            if let Some(c) = &self.deleted {
                conditions.push(format!("NOT {}", d.is_true(&d.quote(&c.name))));
            }
        }
        if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        }
    }
}

/// Checks the table, makes sure the cursor index exists and returns the registration.
pub async fn setup(
    db: &dyn Database,
    info: &TableInfo,
    options: &SetupOptions,
) -> Result<SetupReport> {
    let config = TimestampCapture::default_config(info, options)?;
    let capture = TimestampCapture::new(info, &config)?;
    let d = db.dialect();
    if let Some(check) = d.cursor_format_check(&info.name, &capture.cursor) {
        let rows = db.query(&check, &[]).await?;
        if let Some(example) = rows.first().and_then(|r| r[0].clone()) {
            return Err(unfit(
                info,
                format!(
                    "cursor column {:?} holds {example:?}; the timestamp strategy needs values \
                     like 2026-11-21T04:37:00.123456Z so that text order is time order",
                    capture.cursor.name.as_str()
                ),
            ));
        }
    }
    // An index that already leads with the cursor serves the range scans; a second one would
    // only make every write to the table slower.
    let existing = db
        .indexes_leading_with(&info.name, &capture.cursor.name)
        .await?;
    let mut report = SetupReport {
        table: info.name.to_string(),
        config,
        installed: Vec::new(),
        reused: Vec::new(),
    };
    if existing.is_empty() {
        let index = capture.index_name()?;
        let mut columns = vec![&capture.cursor.name];
        columns.extend(info.primary_key.iter());
        db.execute(&d.create_index(&index, &info.name, &columns), &[])
            .await?;
        report.installed.push(format!("index {index}"));
    } else {
        report.reused = existing.iter().map(|i| format!("index {i}")).collect();
    }
    Ok(report)
}

/// Drops the cursor index `setup` created (if it created one).
pub async fn teardown(
    db: &dyn Database,
    info: &TableInfo,
    config: &TableConfig,
) -> Result<Vec<String>> {
    let capture = TimestampCapture::new(info, config)?;
    let index = capture.index_name()?;
    db.execute(&db.dialect().drop_index(&index, &info.name), &[])
        .await?;
    Ok(vec![format!("index {index}")])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{classify_type, postgres::PostgresDialect};

    fn users() -> TableInfo {
        let col = |n: &str, t: &str| Column {
            name: Ident::new(n).unwrap(),
            sql_type: t.into(),
            kind: classify_type(t),
            nullable: true,
        };
        TableInfo {
            name: Ident::new("users").unwrap(),
            columns: vec![
                col("id", "bigint"),
                col("name", "text"),
                col("created_at", "timestamp with time zone"),
                col("updated_at", "timestamp with time zone"),
                col("is_deleted", "boolean"),
            ],
            primary_key: vec![Ident::new("id").unwrap()],
        }
    }

    fn at(s: &str) -> Position {
        Position::Timestamp {
            cursor: Timestamp::parse(s).unwrap(),
        }
    }

    #[test]
    fn intervals_are_half_open_and_ordered() {
        let info = users();
        let cfg = TimestampCapture::default_config(&info, &SetupOptions::default()).unwrap();
        assert_eq!(cfg.deleted_column.as_deref(), Some("is_deleted"));
        let cap = TimestampCapture::new(&info, &cfg).unwrap();
        let before = at("2026-01-01T00:00:00Z");
        let after = at("2026-01-02T00:00:00Z");
        let s = cap
            .select(&PostgresDialect, Mode::Delta, Some(&before), &after)
            .unwrap();
        assert_eq!(s.header[0], "operation");
        assert!(s
            .sql
            .contains("\"updated_at\" >= '2026-01-01T00:00:00.000000Z'::timestamptz"));
        assert!(s
            .sql
            .contains("\"updated_at\" < '2026-01-02T00:00:00.000000Z'::timestamptz"));
        assert!(s.sql.contains("THEN 'DELETE'"));
        assert!(s.sql.ends_with("ORDER BY \"updated_at\", \"id\""));
        let full = cap
            .select(&PostgresDialect, Mode::Full, None, &after)
            .unwrap();
        assert!(!full.sql.contains("updated_at\" <"));
        assert!(full.sql.contains("NOT COALESCE(\"is_deleted\", false)"));
    }

    #[test]
    fn positions_never_go_back() {
        let info = users();
        let cfg = TimestampCapture::default_config(&info, &SetupOptions::default()).unwrap();
        let cap = TimestampCapture::new(&info, &cfg).unwrap();
        let late = at("2026-01-02T00:00:00Z");
        let early = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(cap.position_after(early, Some(&late)), late);
    }

    #[test]
    fn unfit_tables_are_refused() {
        let mut info = users();
        let cfg = TimestampCapture::default_config(&info, &SetupOptions::default()).unwrap();
        let mut bad = cfg.clone();
        bad.cursor_column = "name".into();
        assert!(TimestampCapture::new(&info, &bad).is_err());
        bad.cursor_column = "nope".into();
        assert!(TimestampCapture::new(&info, &bad).is_err());
        info.primary_key.clear();
        assert!(TimestampCapture::new(&info, &cfg).is_err());
    }
}
