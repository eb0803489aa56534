//! The `timestamp` strategy: changes are rows whose cursor column (default `updated_at`) lies in
//! the half-open interval `[before, after)` of capture bounds, ordered by cursor then primary key.
//! Because an export's bound never passes the start of a write transaction still open, a row
//! committed late (out of order) or sharing the previous bound's value still lands in the next
//! interval. Deletes are soft: a true `is_deleted` (configurable) column.

use super::{
    column_of, default_created_column, default_deleted_column, derived_name, require_key,
    soft_delete_column, table_select, unfit, CaptureStrategy, Inserted, Mode, OldestChange, Select,
    SetupOptions, SetupReport, TimeForm,
};
use crate::db::{field, Bound, ClockNeed, Column, Database, Dialect, Privilege, TableInfo};
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

impl TimestampCapture {
    /// The registration `setup` stores: the given columns, or `updated_at`, and `is_deleted` /
    /// `created_at` when the table has them.
    pub fn default_config(info: &TableInfo, options: &SetupOptions) -> Result<TableConfig> {
        Ok(TableConfig {
            strategy: "timestamp".into(),
            cursor_column: options
                .cursor_column
                .clone()
                .unwrap_or_else(|| "updated_at".into()),
            deleted_column: default_deleted_column(info, options),
            created_column: default_created_column(info, options),
            setup_id: None,
            set_up_at: None,
        })
    }

    /// Checks `config` against the table.
    pub fn new(info: &TableInfo, config: &TableConfig) -> Result<Self> {
        require_key(info)?;
        let cursor = column_of(info, &config.cursor_column, "cursor")?;
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
        let deleted = soft_delete_column(info, config)?;
        let created = creation_column(info, config)?;
        Ok(TimestampCapture {
            info: info.clone(),
            cursor,
            deleted,
            created,
        })
    }

    fn index_name(&self) -> Result<Ident> {
        derived_name(
            &format!(
                "tidemark_{}_{}_idx",
                self.info.name.name(),
                self.cursor.name
            ),
            "idx",
        )
    }
}

/// The registered creation time column, checked to be a timestamp.
pub(crate) fn creation_column(info: &TableInfo, config: &TableConfig) -> Result<Option<Column>> {
    let created = config
        .created_column
        .as_deref()
        .map(|n| column_of(info, n, "creation time"))
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
    Ok(created)
}

/// How a delta tells INSERT from UPDATE with a creation time column: a row created at or after
/// the previous watermark's time is new.
pub(crate) fn inserted_since(
    d: &dyn Dialect,
    before: Option<&Position>,
    created: Option<&Column>,
) -> Inserted {
    match (before, created) {
        (None, _) => Inserted::All,
        (Some(p), Some(c)) => Inserted::When(format!(
            "{} >= {}",
            d.quote(&c.name),
            d.timestamp_literal(&p.time(), c)
        )),
        (Some(_), None) => Inserted::Unknown,
    }
}

impl CaptureStrategy for TimestampCapture {
    fn name(&self) -> &'static str {
        "timestamp"
    }

    fn clock_need(&self) -> ClockNeed {
        ClockNeed::Always
    }

    fn position_after(&self, bound: &Bound, before: Option<&Position>) -> Position {
        let floor = before.map(Position::time);
        Position::Timestamp {
            cursor: floor.map_or(bound.time, |f| f.max(bound.time)),
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
        let cursor = d.quote(&self.cursor.name);
        let interval = self.interval(d, before, after);
        let mut order = vec![cursor];
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

    fn oldest_change(
        &self,
        d: &dyn Dialect,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<Option<OldestChange>> {
        // A row's change time is its cursor value; the cursor index finds the smallest.
        let cursor = d.quote(&self.cursor.name);
        Ok(Some(OldestChange {
            sql: format!(
                "SELECT {} FROM {} WHERE {} ORDER BY {cursor} LIMIT 1",
                d.render(&self.cursor),
                d.quote_table(&self.info.name),
                self.interval(d, before, after).join(" AND ")
            ),
            form: TimeForm::Rfc3339,
        }))
    }
}

impl TimestampCapture {
    /// The conditions of rows whose cursor lies in `[before, after)`.
    fn interval(
        &self,
        d: &dyn Dialect,
        before: Option<&Position>,
        after: &Position,
    ) -> Vec<String> {
        let cursor = d.quote(&self.cursor.name);
        let mut interval: Vec<String> = Vec::new();
        if let Some(p) = before {
            interval.push(format!(
                "{cursor} >= {}",
                d.timestamp_literal(&p.time(), &self.cursor)
            ));
        }
        interval.push(format!(
            "{cursor} < {}",
            d.timestamp_literal(&after.time(), &self.cursor)
        ));
        interval
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
        if let Some(example) = rows.first().and_then(|r| field(r, 0).map(str::to_string)) {
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
        check_index(db, info, options).await?;
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

/// Checks that the cursor index can be created when none exists yet (PostgreSQL: owning the
/// table; MariaDB: INDEX on it).
pub(crate) async fn check_index(
    db: &dyn Database,
    info: &TableInfo,
    options: &SetupOptions,
) -> Result<()> {
    let config = TimestampCapture::default_config(info, options)?;
    let capture = TimestampCapture::new(info, &config)?;
    if !db
        .indexes_leading_with(&info.name, &capture.cursor.name)
        .await?
        .is_empty()
    {
        return Ok(());
    }
    crate::privilege::require(db, &info.name, &[Privilege::Index])
        .await
        .map_err(|e| match e {
            Error::Permission { needs } => Error::Permission {
                needs: format!(
                    "{needs} to create an index on the cursor column {}, or such an index \
                     created beforehand",
                    capture.cursor.name
                ),
            },
            e => e,
        })
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
    use crate::db::{classify_type, postgres::PostgresDialect, DbKind, Timestamp};

    fn users() -> TableInfo {
        let col = |n: &str, t: &str| Column {
            name: Ident::new(n).unwrap(),
            sql_type: t.into(),
            kind: classify_type(DbKind::Postgres, t),
            nullable: true,
        };
        TableInfo {
            name: crate::ident::TableName::unqualified(Ident::new("users").unwrap()),
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
            setup: None,
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
        assert_eq!(cap.position_after(&Bound::at(early), Some(&late)), late);
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
