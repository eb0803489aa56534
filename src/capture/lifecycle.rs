//! `setup` and `teardown` of a table as the commands run them, with the positions of its
//! consumers in mind. A position is only ever read by the capture set-up that produced it
//! ([`crate::state::position_is_current`]): a teardown, or a setup that changes how the table
//! is captured (a teardown plus a setup), refuses while consumers or replicas hold positions in
//! the table unless forced, and then removes those positions too, so their next runs start from
//! a full read. A setup that changes the capture gets a new set-up id, so a position the
//! removal missed (a target's replica position, a run that committed meanwhile) is never read
//! as if it were valid.

use crate::capture::{self, planned_config, timestamp, SetupOptions, SetupReport};
use crate::db::{Database, TableInfo, Timestamp};
use crate::error::{Error, Result};
use crate::state::{StateStore, TableConfig, TableUser};

/// What [`setup_table`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetupOutcome {
    #[serde(flatten)]
    pub report: SetupReport,
    /// True when this setup started a new capture set-up (new set-up id).
    pub new_setup: bool,
    /// The registration this setup replaced, when it changed the capture.
    pub replaced: Option<TableConfig>,
    /// What the replaced set-up had installed and was removed.
    pub removed: Vec<String>,
    /// Consumers and replicas whose positions were removed (forced).
    pub positions_removed: Vec<TableUser>,
}

/// What [`teardown_table`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TeardownOutcome {
    pub table: String,
    /// Objects removed, then `registration`; empty when the table was not set up.
    pub removed: Vec<String>,
    /// Consumers and replicas whose positions were removed (forced).
    pub positions_removed: Vec<TableUser>,
}

/// A fresh set-up id.
fn new_setup_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// True when `planned` captures the table as `current` does (the registration, or the
/// implicit `timestamp` defaults of an unregistered table): same strategy, same cursor.
fn same_capture(info: &TableInfo, current: Option<&TableConfig>, planned: &TableConfig) -> bool {
    match current {
        Some(c) => c.strategy == planned.strategy && c.cursor_column == planned.cursor_column,
        None => timestamp::TimestampCapture::default_config(info, &SetupOptions::default())
            .is_ok_and(|d| {
                d.strategy == planned.strategy && d.cursor_column == planned.cursor_column
            }),
    }
}

/// Refuses (nothing changed) when `users` is not empty and the action is not forced.
fn check_users(
    info: &TableInfo,
    action: &'static str,
    users: &[TableUser],
    force: bool,
) -> Result<()> {
    if users.is_empty() || force {
        return Ok(());
    }
    Err(Error::InUse {
        table: info.name.to_string(),
        action,
        users: users.iter().map(ToString::to_string).collect(),
    })
}

/// Installs `strategy` on the table and registers it. Re-running the setup the table has
/// keeps its set-up id (and its consumers' positions); a setup that changes the strategy or
/// the cursor is a teardown of the current set-up plus a new one: refused while the table has
/// consumers or replicas unless `force`, which removes their positions.
pub async fn setup_table(
    db: &dyn Database,
    state: &StateStore,
    info: &TableInfo,
    strategy: &str,
    options: &SetupOptions,
    force: bool,
) -> Result<SetupOutcome> {
    let table = &info.name;
    let current = state.table_config(table).await?;
    let planned = planned_config(info, strategy, options)?;
    let same = same_capture(info, current.as_ref(), &planned);
    let mut removed = Vec::new();
    let mut positions_removed = Vec::new();
    let fresh;
    let info = if same {
        info
    } else {
        let users = state.table_users(table).await?;
        check_users(info, "changing its capture", &users, force)?;
        // Positions first: if anything below fails, the consumers start again from a full
        // read, which is always exact.
        state.remove_table_positions(table).await?;
        positions_removed = users;
        if let Some(old) = &current {
            removed = capture::teardown(db, info, old).await?;
            state.remove_table_config(table).await?;
        }
        fresh = db.describe(table).await?;
        &fresh
    };
    let mut report = capture::setup(db, info, strategy, options).await?;
    let kept = current.clone().filter(|_| same);
    report.config.setup_id = match &kept {
        Some(c) => c.setup_id.clone(),
        // The implicit timestamp capture registered as it is: nothing changes.
        None if same => None,
        None => Some(new_setup_id()),
    };
    report.config.set_up_at = match &kept {
        Some(c) => c.set_up_at,
        None if same => None,
        None => Some(Timestamp::now()),
    };
    state.save_table_config(table, &report.config).await?;
    Ok(SetupOutcome {
        report,
        new_setup: !same,
        replaced: current.filter(|_| !same),
        removed,
        positions_removed,
    })
}

/// Removes what setup installed and the registration. Refused while the table has consumers
/// or replicas unless `force`, which removes their positions too. A table that is not set up
/// has nothing to remove, and its positions stay valid (its capture does not change).
pub async fn teardown_table(
    db: &dyn Database,
    state: &StateStore,
    info: &TableInfo,
    force: bool,
) -> Result<TeardownOutcome> {
    let table = &info.name;
    let mut outcome = TeardownOutcome {
        table: table.to_string(),
        removed: Vec::new(),
        positions_removed: Vec::new(),
    };
    let Some(config) = state.table_config(table).await? else {
        return Ok(outcome);
    };
    let users = state.table_users(table).await?;
    check_users(info, "teardown", &users, force)?;
    state.remove_table_positions(table).await?;
    outcome.positions_removed = users;
    outcome.removed = capture::teardown(db, info, &config).await?;
    state.remove_table_config(table).await?;
    outcome.removed.push("registration".into());
    Ok(outcome)
}
