//! Durable state: per (consumer, table) watermarks, table registrations made by `setup`, and the
//! export records that make exports crash-safe (prepared → committed or aborted). Kept in
//! `tidemark_*` tables of the source database by default, or of any database given as
//! `--state URL`. Also hands out the per (consumer, table) export lock, and keeps the HTTP
//! service's export jobs ([`jobs`]).

pub mod jobs;
pub mod replicas;

use std::sync::Arc;

use crate::db::{field, Database, LockGuard, Param, Stmt, Timestamp};
use crate::error::{Error, Result};
use crate::ident::{ConsumerId, TableName};

/// Where a consumer stands in a table's change stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "strategy", rename_all = "lowercase")]
pub enum Position {
    /// Every change with a cursor value below `cursor` has been delivered.
    Timestamp { cursor: Timestamp },
    /// Every change-log entry of a transaction visible in `txids` (PostgreSQL) or stamped
    /// before `time` (elsewhere) has been delivered.
    Trigger {
        time: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        txids: Option<String>,
        /// Every change-log entry up to this id has been delivered (SQLite, where ids are
        /// handed out in commit order).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        change_id: Option<i64>,
    },
    /// Every row version written by a transaction visible in `txids` (PostgreSQL) or stamped
    /// before `time` (elsewhere) has been delivered.
    Version {
        time: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        txids: Option<String>,
    },
}

impl Position {
    /// The stored JSON form (stable: used for compare-and-set).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the stored JSON form.
    pub fn from_json(s: &str) -> Result<Self> {
        serde_json::from_str(s)
            .map_err(|e| Error::Runtime(format!("corrupt watermark {s:?} in state: {e}")))
    }

    /// The time this position stands for.
    pub fn time(&self) -> Timestamp {
        match self {
            Position::Timestamp { cursor } => *cursor,
            Position::Trigger { time, .. } | Position::Version { time, .. } => *time,
        }
    }

    /// The last change-log id delivered, where positions count by id (SQLite triggers).
    pub fn change_id(&self) -> Option<i64> {
        match self {
            Position::Trigger { change_id, .. } => *change_id,
            _ => None,
        }
    }

    /// The PostgreSQL transaction-id snapshot (`xmin:xmax:xip,…`) this position stands for,
    /// if it has one.
    pub fn txids(&self) -> Option<&str> {
        match self {
            Position::Timestamp { .. } => None,
            Position::Trigger { txids, .. } | Position::Version { txids, .. } => txids.as_deref(),
        }
    }
}

/// A stored watermark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Watermark {
    pub consumer: ConsumerId,
    pub table: TableName,
    pub position: Position,
    /// When it was last moved.
    pub updated_at: Timestamp,
}

/// How a table is captured, as `setup` registered it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TableConfig {
    pub strategy: String,
    pub cursor_column: String,
    pub deleted_column: Option<String>,
    pub created_column: Option<String>,
}

/// One export as the state store tracks it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportRecord {
    pub export_id: String,
    pub consumer: ConsumerId,
    pub table: TableName,
    pub mode: String,
    pub status: String,
    pub before: Option<Position>,
    pub after: Option<Position>,
    pub file: Option<String>,
    pub tmp_file: Option<String>,
    pub manifest_file: Option<String>,
    /// The manifest's JSON, kept so that recovery can write it if the crash lost it.
    pub manifest_json: Option<String>,
    pub rows: Option<i64>,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub error: Option<String>,
}

/// Export record states.
pub mod status {
    pub const PREPARED: &str = "prepared";
    pub const COMMITTED: &str = "committed";
    pub const ABORTED: &str = "aborted";
}

/// The state store.
#[derive(Clone)]
pub struct StateStore {
    db: Arc<dyn Database>,
}

const EXPORT_COLUMNS: &str = "export_id, consumer_id, table_name, mode, status, position_before, \
    position_after, file, tmp_file, manifest_file, manifest_json, row_count, started_at, finished_at, error";

impl StateStore {
    /// Opens the store on `db`, creating its tables if they are missing.
    pub async fn open(db: Arc<dyn Database>) -> Result<Self> {
        // Reading first keeps opening write-free (and so never waiting for SQLite's writer)
        // once the tables exist; the last table created is the one probed.
        if db
            .query("SELECT count(*) FROM tidemark_replicas WHERE 1 = 0", &[])
            .await
            .is_ok()
        {
            Self::migrate(db.as_ref()).await?;
            return Ok(StateStore { db });
        }
        let d = db.dialect();
        let (k, t) = (d.key_type(), d.text_type());
        for sql in [
            format!(
                "CREATE TABLE IF NOT EXISTS tidemark_tables (table_name {k} PRIMARY KEY, \
                 strategy {k} NOT NULL, config {t} NOT NULL, updated_at {k} NOT NULL)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS tidemark_watermarks (consumer_id {k} NOT NULL, \
                 table_name {k} NOT NULL, position {t} NOT NULL, updated_at {k} NOT NULL, \
                 PRIMARY KEY (consumer_id, table_name))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS tidemark_exports (export_id {k} PRIMARY KEY, \
                 consumer_id {k} NOT NULL, table_name {k} NOT NULL, mode {k} NOT NULL, \
                 status {k} NOT NULL, position_before {t}, position_after {t}, file {t}, \
                 tmp_file {t}, manifest_file {t}, manifest_json {t}, row_count BIGINT, \
                 started_at {k} NOT NULL, finished_at {k}, error {t})"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS tidemark_jobs (job_id {k} PRIMARY KEY, \
                 consumer_id {k} NOT NULL, table_name {k} NOT NULL, mode {k} NOT NULL, \
                 status {k} NOT NULL, output_filename {t}, row_count {k}, duration_ms {k}, \
                 error {t}, owner {k} NOT NULL, created_at {k} NOT NULL, finished_at {k}, \
                 waited_ms {k}, held_back_since {k})"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS tidemark_replicas (replica_id {k} NOT NULL, \
                 table_name {k} NOT NULL, target {t} NOT NULL, target_table {k} NOT NULL, \
                 position {t}, rows_applied {k}, updated_at {k} NOT NULL, \
                 PRIMARY KEY (replica_id, table_name))"
            ),
        ] {
            db.execute(&sql, &[]).await?;
        }
        Ok(StateStore { db })
    }

    /// Adds what later versions keep to a state database an earlier version made.
    async fn migrate(db: &dyn Database) -> Result<()> {
        if db
            .query("SELECT waited_ms FROM tidemark_jobs WHERE 1 = 0", &[])
            .await
            .is_err()
        {
            let k = db.dialect().key_type();
            for column in ["waited_ms", "held_back_since"] {
                db.execute(
                    &format!("ALTER TABLE tidemark_jobs ADD COLUMN {column} {k}"),
                    &[],
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Takes the export lock of (consumer, table), or fails with [`Error::Busy`].
    pub async fn lock(
        &self,
        consumer: &ConsumerId,
        table: &TableName,
    ) -> Result<Box<dyn LockGuard>> {
        let name = format!("tidemark-export\u{1f}{consumer}\u{1f}{table}");
        self.db.try_lock(&name).await?.ok_or_else(|| Error::Busy {
            consumer: consumer.to_string(),
            table: table.to_string(),
        })
    }

    /// The registration of `table`, if `setup` made one.
    pub async fn table_config(&self, table: &TableName) -> Result<Option<TableConfig>> {
        let rows = self
            .db
            .query(
                "SELECT config FROM tidemark_tables WHERE table_name = ?",
                &[table.as_str().into()],
            )
            .await?;
        match rows.first().and_then(|r| field(r, 0)) {
            None => Ok(None),
            Some(json) => serde_json::from_str(json)
                .map(Some)
                .map_err(|e| Error::Runtime(format!("corrupt registration of table {table}: {e}"))),
        }
    }

    /// Every registration, by table name.
    pub async fn table_configs(&self) -> Result<Vec<(TableName, TableConfig)>> {
        let rows = self
            .db
            .query(
                "SELECT table_name, config FROM tidemark_tables ORDER BY table_name",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let table = TableName::parse(field(r, 0).unwrap_or_default())?;
                let config =
                    serde_json::from_str(field(r, 1).unwrap_or_default()).map_err(|e| {
                        Error::Runtime(format!("corrupt registration of table {table}: {e}"))
                    })?;
                Ok((table, config))
            })
            .collect()
    }

    /// Registers (or re-registers) `table`.
    pub async fn save_table_config(&self, table: &TableName, config: &TableConfig) -> Result<()> {
        let json = serde_json::to_string(config).unwrap_or_default();
        self.db
            .transaction(&[
                Stmt::new(
                    "DELETE FROM tidemark_tables WHERE table_name = ?",
                    vec![table.as_str().into()],
                ),
                Stmt::new(
                    "INSERT INTO tidemark_tables (table_name, strategy, config, updated_at) \
                     VALUES (?, ?, ?, ?)",
                    vec![
                        table.as_str().into(),
                        config.strategy.as_str().into(),
                        json.into(),
                        Timestamp::now().to_string().into(),
                    ],
                ),
            ])
            .await?;
        Ok(())
    }

    /// Removes the registration of `table` (teardown).
    pub async fn remove_table_config(&self, table: &TableName) -> Result<bool> {
        Ok(self
            .db
            .execute(
                "DELETE FROM tidemark_tables WHERE table_name = ?",
                &[table.as_str().into()],
            )
            .await?
            > 0)
    }

    /// The watermark of (consumer, table), if any.
    pub async fn watermark(
        &self,
        consumer: &ConsumerId,
        table: &TableName,
    ) -> Result<Option<Watermark>> {
        let rows = self
            .db
            .query(
                "SELECT position, updated_at FROM tidemark_watermarks \
                 WHERE consumer_id = ? AND table_name = ?",
                &[consumer.as_str().into(), table.as_str().into()],
            )
            .await?;
        rows.first()
            .map(|r| {
                Ok(Watermark {
                    consumer: consumer.clone(),
                    table: table.clone(),
                    position: Position::from_json(field(r, 0).unwrap_or_default())?,
                    updated_at: Timestamp::parse(field(r, 1).unwrap_or_default())?,
                })
            })
            .transpose()
    }

    /// Every watermark, ordered by table and consumer.
    pub async fn watermarks(&self) -> Result<Vec<Watermark>> {
        let rows = self
            .db
            .query(
                "SELECT consumer_id, table_name, position, updated_at FROM tidemark_watermarks \
                 ORDER BY table_name, consumer_id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Watermark {
                    consumer: ConsumerId::new(field(r, 0).unwrap_or_default())?,
                    table: TableName::parse(field(r, 1).unwrap_or_default())?,
                    position: Position::from_json(field(r, 2).unwrap_or_default())?,
                    updated_at: Timestamp::parse(field(r, 3).unwrap_or_default())?,
                })
            })
            .collect()
    }

    /// Sets the watermark by hand (`tidemark watermark set`).
    pub async fn set_watermark(
        &self,
        consumer: &ConsumerId,
        table: &TableName,
        position: &Position,
    ) -> Result<()> {
        self.db
            .transaction(&[
                Stmt::new(
                    "DELETE FROM tidemark_watermarks WHERE consumer_id = ? AND table_name = ?",
                    vec![consumer.as_str().into(), table.as_str().into()],
                ),
                Stmt::new(
                    "INSERT INTO tidemark_watermarks (consumer_id, table_name, position, updated_at) \
                     VALUES (?, ?, ?, ?)",
                    vec![
                        consumer.as_str().into(),
                        table.as_str().into(),
                        position.to_json().into(),
                        Timestamp::now().to_string().into(),
                    ],
                ),
            ])
            .await?;
        Ok(())
    }

    /// Deletes the watermark; the next export starts from the beginning.
    pub async fn reset_watermark(&self, consumer: &ConsumerId, table: &TableName) -> Result<bool> {
        Ok(self
            .db
            .execute(
                "DELETE FROM tidemark_watermarks WHERE consumer_id = ? AND table_name = ?",
                &[consumer.as_str().into(), table.as_str().into()],
            )
            .await?
            > 0)
    }

    /// Records an export whose files are written aside but not yet published.
    pub async fn prepare_export(&self, rec: &ExportRecord) -> Result<()> {
        self.db
            .execute(
                &format!(
                    "INSERT INTO tidemark_exports ({EXPORT_COLUMNS}) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                &record_params(rec),
            )
            .await?;
        Ok(())
    }

    /// Moves the watermark from the export's `before` to its `after` and marks it committed,
    /// in one transaction. Fails with [`Error::Conflict`] (committing nothing) if the
    /// watermark is no longer `before`.
    pub async fn commit_export(&self, rec: &ExportRecord) -> Result<()> {
        let after = rec
            .after
            .as_ref()
            .ok_or_else(|| Error::Runtime("export without an end position".into()))?;
        let now = Timestamp::now().to_string();
        let (c, t) = (rec.consumer.as_str(), rec.table.as_str());
        let move_watermark = match &rec.before {
            Some(before) => Stmt::new(
                "UPDATE tidemark_watermarks SET position = ?, updated_at = ? \
                 WHERE consumer_id = ? AND table_name = ? AND position = ?",
                vec![
                    after.to_json().into(),
                    now.as_str().into(),
                    c.into(),
                    t.into(),
                    before.to_json().into(),
                ],
            ),
            // A row that appeared meanwhile makes this fail on the primary key: a conflict.
            None => Stmt::new(
                "INSERT INTO tidemark_watermarks (consumer_id, table_name, position, updated_at) \
                 VALUES (?, ?, ?, ?)",
                vec![
                    c.into(),
                    t.into(),
                    after.to_json().into(),
                    now.as_str().into(),
                ],
            ),
        };
        let result = self
            .db
            .transaction(&[
                move_watermark.expect(1),
                Stmt::new(
                    "UPDATE tidemark_exports SET status = ?, finished_at = ? \
                     WHERE export_id = ? AND status = ?",
                    vec![
                        status::COMMITTED.into(),
                        now.as_str().into(),
                        rec.export_id.as_str().into(),
                        status::PREPARED.into(),
                    ],
                )
                .expect(1),
            ])
            .await;
        let conflict = || Error::Conflict {
            consumer: c.to_string(),
            table: t.to_string(),
        };
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(conflict()),
            Err(Error::Database(e))
                if e.as_database_error()
                    .is_some_and(|d| d.is_unique_violation()) =>
            {
                Err(conflict())
            }
            Err(e) => Err(e),
        }
    }

    /// Marks a prepared export aborted.
    pub async fn abort_export(&self, export_id: &str, error: &str) -> Result<()> {
        self.db
            .execute(
                "UPDATE tidemark_exports SET status = ?, finished_at = ?, error = ? \
                 WHERE export_id = ? AND status = ?",
                &[
                    status::ABORTED.into(),
                    Timestamp::now().to_string().into(),
                    error.into(),
                    export_id.into(),
                    status::PREPARED.into(),
                ],
            )
            .await?;
        Ok(())
    }

    /// Exports of (consumer, table) left prepared by a process that died.
    pub async fn prepared_exports(
        &self,
        consumer: &ConsumerId,
        table: &TableName,
    ) -> Result<Vec<ExportRecord>> {
        self.exports_where(
            "consumer_id = ? AND table_name = ? AND status = ? ORDER BY started_at",
            &[
                consumer.as_str().into(),
                table.as_str().into(),
                status::PREPARED.into(),
            ],
        )
        .await
    }

    /// The export record with this id, if it exists.
    pub async fn export_record(&self, export_id: &str) -> Result<Option<ExportRecord>> {
        Ok(self
            .exports_where("export_id = ?", &[export_id.into()])
            .await?
            .into_iter()
            .next())
    }

    async fn exports_where(&self, condition: &str, params: &[Param]) -> Result<Vec<ExportRecord>> {
        let rows = self
            .db
            .query(
                &format!("SELECT {EXPORT_COLUMNS} FROM tidemark_exports WHERE {condition}"),
                params,
            )
            .await?;
        rows.into_iter().map(record_from_row).collect()
    }
}

fn record_params(rec: &ExportRecord) -> Vec<Param> {
    vec![
        rec.export_id.as_str().into(),
        rec.consumer.as_str().into(),
        rec.table.as_str().into(),
        rec.mode.as_str().into(),
        rec.status.as_str().into(),
        rec.before.as_ref().map(Position::to_json).into(),
        rec.after.as_ref().map(Position::to_json).into(),
        rec.file.clone().into(),
        rec.tmp_file.clone().into(),
        rec.manifest_file.clone().into(),
        rec.manifest_json.clone().into(),
        rec.rows.into(),
        rec.started_at.to_string().into(),
        rec.finished_at.map(|t| t.to_string()).into(),
        rec.error.clone().into(),
    ]
}

fn record_from_row(r: Vec<Option<String>>) -> Result<ExportRecord> {
    let text = |i: usize| field(&r, i).map(str::to_string);
    let position = |i: usize| field(&r, i).map(Position::from_json).transpose();
    Ok(ExportRecord {
        export_id: text(0).unwrap_or_default(),
        consumer: ConsumerId::new(field(&r, 1).unwrap_or_default())?,
        table: TableName::parse(field(&r, 2).unwrap_or_default())?,
        mode: text(3).unwrap_or_default(),
        status: text(4).unwrap_or_default(),
        before: position(5)?,
        after: position(6)?,
        file: text(7),
        tmp_file: text(8),
        manifest_file: text(9),
        manifest_json: text(10),
        rows: field(&r, 11).and_then(|s| s.parse().ok()),
        started_at: Timestamp::parse(field(&r, 12).unwrap_or_default())?,
        finished_at: field(&r, 13).map(Timestamp::parse).transpose()?,
        error: text(14),
    })
}
