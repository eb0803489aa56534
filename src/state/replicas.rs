//! Replicas as the source's state store knows them: for each (replica, table) the target, the
//! position the target last committed and when. The authoritative position lives in the target
//! (`tidemark replicate` commits it with the rows); this copy is written after each target
//! commit, so it may lag but is never ahead — safe for `status` and `prune` to rely on.

use crate::db::{field, Param, Stmt, Timestamp};
use crate::error::Result;
use crate::ident::{ConsumerId, TableName};

use super::{Position, StateStore};

/// One replica of one table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReplicaRecord {
    /// The replica's consumer id (`replica-…`), also the name its lock is taken under.
    pub replica: ConsumerId,
    pub table: TableName,
    /// The target URL, without password.
    pub target: String,
    pub target_table: TableName,
    /// The position the target has committed (none before the first commit).
    pub position: Option<Position>,
    /// Rows applied by this replica so far (as last recorded).
    pub rows_applied: u64,
    pub updated_at: Timestamp,
}

impl StateStore {
    /// Stores the replica's record (insert or replace).
    pub async fn save_replica(&self, r: &ReplicaRecord) -> Result<()> {
        self.db
            .transaction(&[
                Stmt::new(
                    "DELETE FROM tidemark_replicas WHERE replica_id = ? AND table_name = ?",
                    vec![r.replica.as_str().into(), r.table.as_str().into()],
                ),
                Stmt::new(
                    "INSERT INTO tidemark_replicas (replica_id, table_name, target, target_table, \
                     position, rows_applied, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    vec![
                        r.replica.as_str().into(),
                        r.table.as_str().into(),
                        r.target.as_str().into(),
                        r.target_table.as_str().into(),
                        r.position.as_ref().map(Position::to_json).into(),
                        // As text: see `save_job`.
                        Param::from(r.rows_applied.to_string()),
                        r.updated_at.to_string().into(),
                    ],
                ),
            ])
            .await?;
        Ok(())
    }

    /// Every replica, by table and replica id.
    pub async fn replicas(&self) -> Result<Vec<ReplicaRecord>> {
        let rows = self
            .db
            .query(
                "SELECT replica_id, table_name, target, target_table, position, rows_applied, \
                 updated_at FROM tidemark_replicas ORDER BY table_name, replica_id",
                &[],
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                let text = |i: usize| field(&r, i).unwrap_or_default().to_string();
                Ok(ReplicaRecord {
                    replica: ConsumerId::new(&text(0))?,
                    table: TableName::parse(&text(1))?,
                    target: text(2),
                    target_table: TableName::parse(&text(3))?,
                    position: field(&r, 4).map(Position::from_json).transpose()?,
                    rows_applied: text(5).parse().unwrap_or(0),
                    updated_at: Timestamp::parse(&text(6))?,
                })
            })
            .collect()
    }
}
