//! Durable state: per (consumer, table) watermarks, table registrations made by `setup`, and the
//! export records that make exports crash-safe (prepared → committed or aborted). Kept in
//! `tidemark_*` tables of the source database by default, or of any database given as
//! `--state URL`. Also hands out the per (consumer, table) export lock, and keeps the HTTP
//! service's export jobs ([`jobs`]).

pub mod jobs;
pub mod replicas;
pub mod tokens;

use std::sync::Arc;

use crate::db::{field, Database, LockGuard, Param, Privilege, Stmt, Timestamp};
use crate::error::{Error, Result};
use crate::ident::{ConsumerId, Ident, TableName};

/// Where a consumer stands in a table's change stream.
///
/// Every variant records the capture set-up that produced it (`setup`, the id `setup` stored
/// in the table's registration): a position is only ever read by that set-up. Positions written
/// before set-up ids existed have none, and so do those of a table whose registration has none
/// (see [`position_is_current`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "strategy", rename_all = "lowercase")]
pub enum Position {
    /// Every change with a cursor value below `cursor` has been delivered.
    Timestamp {
        cursor: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        setup: Option<String>,
    },
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
        #[serde(default, skip_serializing_if = "Option::is_none")]
        setup: Option<String>,
    },
    /// Every row version written by a transaction visible in `txids` (PostgreSQL) or stamped
    /// before `time` (elsewhere) has been delivered.
    Version {
        time: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        txids: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        setup: Option<String>,
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
            Position::Timestamp { cursor, .. } => *cursor,
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

    /// The id of the capture set-up that produced this position (none: written before set-up
    /// ids existed, or by a registration that has none).
    pub fn setup(&self) -> Option<&str> {
        match self {
            Position::Timestamp { setup, .. }
            | Position::Trigger { setup, .. }
            | Position::Version { setup, .. } => setup.as_deref(),
        }
    }

    /// This position as made by the capture set-up `id`.
    pub fn with_setup(mut self, id: Option<&str>) -> Self {
        match &mut self {
            Position::Timestamp { setup, .. }
            | Position::Trigger { setup, .. }
            | Position::Version { setup, .. } => *setup = id.map(str::to_string),
        }
        self
    }

    /// The strategy name of this position's kind (`timestamp`, `trigger`, `version`).
    pub fn kind(&self) -> &'static str {
        match self {
            Position::Timestamp { .. } => "timestamp",
            Position::Trigger { .. } => "trigger",
            Position::Version { .. } => "version",
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
    /// The id of this capture set-up, stamped into every position it produces. A new one is
    /// made whenever `setup` changes how the table is captured (a first registration of a
    /// strategy other than the implicit `timestamp` one, a strategy or cursor change, a setup
    /// after a teardown); re-running the same setup keeps it. Registrations written before
    /// set-up ids existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_id: Option<String>,
    /// When this set-up was complete: its change log (or version stamps) covers every change
    /// committed after it. Absent on registrations written before set-up ids existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_up_at: Option<Timestamp>,
}

/// Whether `position` may be read by the table's current capture set-up (`config`, none for a
/// table captured with the implicit `timestamp` defaults): it must carry the same set-up id (a
/// position written before set-up ids existed, like a registration written then, has none, so
/// old state keeps working until the capture is set up anew), and be of a kind the strategy
/// reads (every strategy reads a plain time, as `watermark set` writes it).
pub fn position_is_current(position: &Position, config: Option<&TableConfig>) -> bool {
    let (strategy, id) = match config {
        Some(c) => (c.strategy.as_str(), c.setup_id.as_deref()),
        None => ("timestamp", None),
    };
    position.setup() == id && (position.kind() == "timestamp" || position.kind() == strategy)
}

/// A consumer, replica or stream whose position in a table a teardown would invalidate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableUser {
    /// `export` or `replica`.
    pub kind: &'static str,
    /// The consumer id (an export consumer, or a replica's `replica-…` id).
    pub id: String,
    /// A replica's target (URL without password and target table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl std::fmt::Display for TableUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Some(t) => write!(f, "{} {} (→ {t})", self.kind, self.id),
            None => write!(f, "{} consumer {}", self.kind, self.id),
        }
    }
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

/// `CREATE TABLE` of the API tokens (see [`tokens`]): only digests, never tokens.
fn tokens_table(d: &dyn crate::db::Dialect) -> String {
    let k = d.key_type();
    format!(
        "CREATE TABLE IF NOT EXISTS tidemark_tokens (token_id {k} PRIMARY KEY, kind {k} NOT NULL, \
         consumer_id {k}, token_hash {k} NOT NULL, created_at {k} NOT NULL)"
    )
}

/// Says what a refused state database needs: CREATE for its tables, or the tables made
/// beforehand with rights to use them, or state kept elsewhere.
fn state_grant(e: Error) -> Error {
    match e {
        Error::Permission { needs } => Error::Permission {
            needs: format!(
                "{needs} to create its tidemark_* state tables (or SELECT, INSERT, UPDATE, \
                 DELETE on them created beforehand, or --state naming another database)"
            ),
        },
        e => e,
    }
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
        // Nothing is created unless every table can be.
        let probe = TableName::unqualified(Ident::new("tidemark_tables")?);
        crate::privilege::require(db.as_ref(), &probe, &[Privilege::Create])
            .await
            .map_err(state_grant)?;
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
            tokens_table(d),
        ] {
            db.execute(&sql, &[])
                .await
                .map_err(|e| state_grant(e.needing(|| "CREATE".into())))?;
        }
        Ok(StateStore { db })
    }

    /// Adds what later versions keep to a state database an earlier version made.
    async fn migrate(db: &dyn Database) -> Result<()> {
        if db
            .query("SELECT token_id FROM tidemark_tokens WHERE 1 = 0", &[])
            .await
            .is_err()
        {
            db.execute(&tokens_table(db.dialect()), &[]).await?;
        }
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

    /// Every consumer and replica holding a position in `table` (export watermarks, then the
    /// replicas the source's state knows of).
    pub async fn table_users(&self, table: &TableName) -> Result<Vec<TableUser>> {
        let mut users: Vec<TableUser> = self
            .db
            .query(
                "SELECT consumer_id FROM tidemark_watermarks WHERE table_name = ? \
                 ORDER BY consumer_id",
                &[table.as_str().into()],
            )
            .await?
            .into_iter()
            .map(|r| TableUser {
                kind: "export",
                id: r.into_iter().next().flatten().unwrap_or_default(),
                target: None,
            })
            .collect();
        users.extend(
            self.replicas()
                .await?
                .into_iter()
                .filter(|r| r.table == *table)
                .map(|r| TableUser {
                    kind: "replica",
                    id: r.replica.to_string(),
                    target: Some(format!("{} table {}", r.target, r.target_table)),
                }),
        );
        Ok(users)
    }

    /// Removes every position held in `table` (export watermarks and the replicas' records) in
    /// one transaction: their next runs start from a full read. A replica's authoritative
    /// position lives in its target; it was made by the set-up being replaced, so the replica
    /// resynchronises when it next runs.
    pub async fn remove_table_positions(&self, table: &TableName) -> Result<()> {
        self.db
            .transaction(&[
                Stmt::new(
                    "DELETE FROM tidemark_watermarks WHERE table_name = ?",
                    vec![table.as_str().into()],
                ),
                Stmt::new(
                    "DELETE FROM tidemark_replicas WHERE table_name = ?",
                    vec![table.as_str().into()],
                ),
            ])
            .await?;
        Ok(())
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

    /// Whether (consumer, table) has a committed export on record.
    pub async fn has_committed_exports(
        &self,
        consumer: &ConsumerId,
        table: &TableName,
    ) -> Result<bool> {
        let rows = self
            .db
            .query(
                "SELECT export_id FROM tidemark_exports WHERE consumer_id = ? AND table_name = ? \
                 AND status = ? LIMIT 1",
                &[
                    consumer.as_str().into(),
                    table.as_str().into(),
                    status::COMMITTED.into(),
                ],
            )
            .await?;
        Ok(!rows.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(strategy: &str, setup_id: Option<&str>) -> TableConfig {
        TableConfig {
            strategy: strategy.into(),
            cursor_column: "updated_at".into(),
            deleted_column: None,
            created_column: None,
            setup_id: setup_id.map(str::to_string),
            set_up_at: None,
        }
    }

    #[test]
    fn positions_are_read_only_by_the_set_up_that_made_them() {
        let old = r#"{"strategy":"trigger","time":"2026-01-01T00:00:00.000000Z","change_id":7}"#;
        let legacy = Position::from_json(old).unwrap();
        assert_eq!(legacy.setup(), None);
        // Old state: a registration without an id reads positions without one.
        assert!(position_is_current(&legacy, Some(&config("trigger", None))));
        // Not once a new set-up replaced it, nor by another strategy, nor unregistered.
        assert!(!position_is_current(
            &legacy,
            Some(&config("trigger", Some("a1")))
        ));
        assert!(!position_is_current(
            &legacy,
            Some(&config("version", None))
        ));
        assert!(!position_is_current(&legacy, None));

        let made = legacy.clone().with_setup(Some("a1"));
        assert_eq!(made.setup(), Some("a1"));
        assert!(Position::from_json(&made.to_json()).unwrap() == made);
        assert!(made.to_json().contains(r#""setup":"a1""#));
        assert!(position_is_current(
            &made,
            Some(&config("trigger", Some("a1")))
        ));
        assert!(!position_is_current(
            &made,
            Some(&config("trigger", Some("b2")))
        ));
        assert!(!position_is_current(&made, Some(&config("trigger", None))));
        assert!(!position_is_current(&made, None));
        // Without an id the JSON is what older versions wrote, byte for byte.
        assert_eq!(legacy.to_json(), old);

        // A plain time (`watermark set`) is read by every strategy of its set-up.
        let time = Position::Timestamp {
            cursor: Timestamp::parse("2026-01-01T00:00:00Z").unwrap(),
            setup: Some("a1".into()),
        };
        assert!(position_is_current(
            &time,
            Some(&config("version", Some("a1")))
        ));
        assert!(!position_is_current(
            &time,
            Some(&config("version", Some("b2")))
        ));
    }
}
