//! `tidemark prune`: deletes the change-log entries of a table that every registered consumer
//! has passed — every export watermark on the table, and every replica's position (the copy the
//! source keeps, which never leads the target's) — and never one that a consumer still needs. A
//! table without consumers keeps its log.

use crate::capture::strategy_for;
use crate::db::Database;
use crate::error::Result;
use crate::ident::TableName;
use crate::state::{position_is_current, Position, StateStore};

/// What pruning one table did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PruneReport {
    pub table: TableName,
    pub strategy: String,
    /// Consumers whose positions bound the pruning.
    pub consumers: Vec<String>,
    /// Entries deleted (or that would be, with `dry_run`).
    pub deleted: u64,
    /// Entries left.
    pub remaining: u64,
    /// Why nothing was pruned, when nothing could be.
    pub note: Option<String>,
}

/// Prunes the log of `table` (every registered table when `None`).
pub async fn prune(
    db: &dyn Database,
    state: &StateStore,
    table: Option<&TableName>,
    dry_run: bool,
) -> Result<Vec<PruneReport>> {
    let mut reports = Vec::new();
    let watermarks = state.watermarks().await?;
    let replicas = state.replicas().await?;
    for (name, config) in state.table_configs().await? {
        if table.is_some_and(|t| *t != name) {
            continue;
        }
        let info = db.describe(&name).await?;
        let strategy = strategy_for(&info, Some(&config))?;
        // A position of another capture set-up is never read (its consumer starts again from a
        // full read), so it does not hold the log back either.
        let current = |p: &Position| position_is_current(p, Some(&config));
        let mut consumers: Vec<(String, Position)> = watermarks
            .iter()
            .filter(|w| w.table == name && current(&w.position))
            .map(|w| (format!("export {}", w.consumer), w.position.clone()))
            .collect();
        // A replica without a position yet starts from a full read of the table.
        consumers.extend(replicas.iter().filter(|r| r.table == name).filter_map(|r| {
            r.position
                .clone()
                .filter(current)
                .map(|p| (format!("replica {} → {}", r.replica, r.target), p))
        }));
        let positions: Vec<Position> = consumers.iter().map(|(_, p)| p.clone()).collect();
        let mut report = PruneReport {
            table: name.clone(),
            strategy: config.strategy.clone(),
            consumers: consumers.into_iter().map(|(n, _)| n).collect(),
            deleted: 0,
            remaining: 0,
            note: None,
        };
        let Some((delete, count)) = strategy.prune_sql(db.dialect(), &positions)? else {
            report.note = Some(if positions.is_empty() {
                "no consumers yet: the log is kept".into()
            } else {
                format!("the {} strategy keeps no change log", config.strategy)
            });
            reports.push(report);
            continue;
        };
        let count_of = |rows: Vec<Vec<Option<String>>>| {
            rows.first()
                .and_then(|r| r.first().cloned().flatten())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let before = count_of(db.query(&count, &[]).await?);
        if dry_run {
            let would = count_of(
                db.query(
                    &format!(
                        "SELECT count(*) FROM ({}) tidemark_prunable",
                        delete.replacen("DELETE FROM", "SELECT 1 FROM", 1)
                    ),
                    &[],
                )
                .await?,
            );
            report.deleted = would;
            report.remaining = before - would.min(before);
        } else {
            report.deleted = db.execute(&delete, &[]).await?;
            report.remaining = count_of(db.query(&count, &[]).await?);
        }
        reports.push(report);
    }
    Ok(reports)
}
