//! Several tables replicated by one process: one [`Replicator`] per table, each with its own
//! position, lock and replica id, run side by side over one shared target connection pool.

use std::future::Future;
use std::sync::Arc;

use super::{ReplicateOptions, Replicator, Summary};
use crate::db::{connect, ConnectOptions, Database, DbKind, DbUrl};
use crate::error::{Error, Result};
use crate::ident::{Ident, TableName};
use crate::state::StateStore;

/// The target table a source table replicates into by default: the same name, schema
/// included; SQLite has no schemas, so there a qualified name becomes one table name
/// (`sales.orders` → the table `"sales.orders"`), which never meets `orders`.
pub fn default_target(target: DbKind, table: &TableName) -> Result<TableName> {
    match (target, table.schema()) {
        (DbKind::Sqlite, Some(_)) => Ok(TableName::unqualified(Ident::new(table.as_str())?)),
        _ => Ok(table.clone()),
    }
}

/// Replicates `tables` (already resolved on the source) into `target_url`, each into
/// `target_table` (only with one table) or [`default_target`]; `opts` gives everything else.
/// Runs until every replicator is done (or, following, until `stop` resolves); the first
/// failure stops the others and is returned.
pub async fn replicate_all(
    source: Arc<dyn Database>,
    state: StateStore,
    target_url: DbUrl,
    tables: &[TableName],
    target_table: Option<TableName>,
    opts: ReplicateOptions,
    stop: impl Future<Output = ()>,
) -> Result<Vec<Summary>> {
    if target_table.is_some() && tables.len() != 1 {
        return Err(Error::input(format!(
            "--target-table names the target of one table, but {} tables were selected",
            tables.len()
        )));
    }
    // Stopping (SIGTERM, Ctrl-C) is listened for from the start: stopped while the tables are
    // being prepared, each replicator ends at once with what it did (nothing).
    tokio::pin!(stop);
    let preparing = prepare_all(&source, &state, &target_url, tables, target_table, &opts);
    let mut replicators = tokio::select! {
        r = preparing => r?,
        _ = &mut stop => {
            let mut summaries = Vec::with_capacity(tables.len());
            for table in tables {
                let mut o = opts.clone();
                o.table = table.clone();
                o.target_table = default_target(target_url.kind(), table)?;
                let mut r = Replicator::new(Arc::clone(&source), state.clone(), target_url.clone(), o)?;
                summaries.push(r.run(std::future::ready(())).await?);
            }
            return Ok(summaries);
        }
    };
    let (stop_all, stopped) = tokio::sync::watch::channel(false);
    let runs = replicators.iter_mut().map(|r| {
        let mut stopped = stopped.clone();
        let stop_all = stop_all.clone();
        async move {
            let result = r
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
            if result.is_err() {
                let _ = stop_all.send(true);
            }
            result
        }
    });
    let all = futures_util::future::join_all(runs);
    tokio::pin!(all);
    let results = tokio::select! {
        r = &mut all => r,
        _ = &mut stop => {
            let _ = stop_all.send(true);
            all.await
        }
    };
    results.into_iter().collect()
}

/// One replicator per table, sharing one target pool, each with its plan made.
async fn prepare_all(
    source: &Arc<dyn Database>,
    state: &StateStore,
    target_url: &DbUrl,
    tables: &[TableName],
    target_table: Option<TableName>,
    opts: &ReplicateOptions,
) -> Result<Vec<Replicator>> {
    let target = connect(
        target_url,
        ConnectOptions {
            create_if_missing: true,
            max_connections: Some((tables.len() as u32).clamp(2, 8)),
        },
    )
    .await?;
    let mut replicators = Vec::with_capacity(tables.len());
    for table in tables {
        let wanted = match &target_table {
            Some(t) => t.clone(),
            None => default_target(target_url.kind(), table)?,
        };
        let mut o = opts.clone();
        o.table = table.clone();
        o.target_table = target.resolve_table(&wanted).await?;
        let mut r = Replicator::new(Arc::clone(source), state.clone(), target_url.clone(), o)?;
        r.target = Some(Arc::clone(&target));
        replicators.push(r);
    }
    // Plans are made one after the other: creating the target tables and the positions table
    // side by side could race in the target's catalog.
    for r in &mut replicators {
        r.prepare().await?;
    }
    Ok(replicators)
}
