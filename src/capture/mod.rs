//! Capture strategies: how the changes of a table between two positions are found. A strategy
//! turns (mode, before, after) into one SELECT whose columns are rendered as CSV text, and knows
//! what `setup` must install. `timestamp` lives here now; `version` and `trigger` plug in
//! through the same [`CaptureStrategy`] trait.

pub mod timestamp;

use std::fmt;

use crate::db::{Database, Dialect, TableInfo, Timestamp};
use crate::error::{Error, Result};
use crate::state::{Position, TableConfig};

/// What an export delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every live row, from one consistent snapshot.
    Full,
    /// Live rows inserted or updated since the watermark, latest values, each once.
    Incremental,
    /// Every row changed since the watermark, with a leading `operation` column.
    Delta,
}

impl Mode {
    /// The lower-case name used in file names, manifests and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
            Mode::Delta => "delta",
        }
    }

    /// Every mode.
    pub const ALL: [Mode; 3] = [Mode::Full, Mode::Incremental, Mode::Delta];

    /// Parses a mode name (`full`, `incremental`, `delta`).
    pub fn parse(s: &str) -> Result<Mode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                Error::input(format!(
                    "unknown export mode {s:?}: expected full, incremental or delta"
                ))
            })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The query of one export: the CSV header and the SELECT producing its rows.
#[derive(Debug, Clone)]
pub struct Select {
    pub header: Vec<String>,
    pub sql: String,
}

/// A way of finding a table's changes.
pub trait CaptureStrategy: Send + Sync {
    /// The strategy's name (`timestamp`, …).
    fn name(&self) -> &'static str;
    /// The position an export reaches when it reads a snapshot with capture bound `bound`,
    /// starting from `before`. Never earlier than `before`.
    fn position_after(&self, bound: Timestamp, before: Option<&Position>) -> Position;
    /// The query of an export from `before` (none: from the beginning) to `after`.
    fn select(
        &self,
        dialect: &dyn Dialect,
        mode: Mode,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<Select>;
    /// A query counting the changes from `before` (none: from the beginning) to `after` by
    /// operation: rows of (`INSERT`|`UPDATE`|`DELETE`, count), as a delta export of that
    /// interval would deliver them.
    fn count_changes(
        &self,
        dialect: &dyn Dialect,
        before: Option<&Position>,
        after: &Position,
    ) -> Result<String>;
}

/// Strategy names `setup` accepts.
pub const STRATEGIES: &[&str] = &["timestamp"];

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
            &default
        }
    };
    match config.strategy.as_str() {
        "timestamp" => Ok(Box::new(timestamp::TimestampCapture::new(info, config)?)),
        other => Err(Error::input(format!(
            "table {}: strategy {other:?} is not available in this version (available: {})",
            info.name,
            STRATEGIES.join(", ")
        ))),
    }
}

/// Installs what `strategy` needs on the table and returns the registration to store.
pub async fn setup(
    db: &dyn Database,
    info: &TableInfo,
    strategy: &str,
    options: &SetupOptions,
) -> Result<SetupReport> {
    match strategy {
        "timestamp" => timestamp::setup(db, info, options).await,
        other => Err(Error::input(format!(
            "unknown strategy {other:?}: expected one of {}",
            STRATEGIES.join(", ")
        ))),
    }
}

/// Removes what `setup` installed for `config`.
pub async fn teardown(
    db: &dyn Database,
    info: &TableInfo,
    config: &TableConfig,
) -> Result<Vec<String>> {
    match config.strategy.as_str() {
        "timestamp" => timestamp::teardown(db, info, config).await,
        _ => Ok(Vec::new()),
    }
}
