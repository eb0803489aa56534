//! `tidemark setup`: installs what a capture strategy needs on the selected tables and
//! registers them (idempotent). Every table is checked before anything is written.

use super::Context;
use crate::capture::{self, lifecycle, lifecycle::SetupOutcome, SetupOptions};
use crate::ident::TableName;

#[derive(clap::Args, Debug)]
pub struct SetupArgs {
    /// Table: name, schema.name, "odd.name", or a pattern (*, sales.*, order_*) of tables
    #[arg(long, default_value = "users")]
    table: String,
    /// Capture strategy: timestamp (a cursor column), version (a version column tidemark adds
    /// and stamps by trigger; --cursor-column names it, default tidemark_version) or trigger
    /// (a change log written by triggers: hard deletes, before/after images)
    #[arg(long)]
    strategy: String,
    /// Cursor column [default: updated_at]
    #[arg(long)]
    cursor_column: Option<String>,
    /// Soft-delete column [default: is_deleted if the table has it]
    #[arg(long)]
    deleted_column: Option<String>,
    /// Creation time column, to tell INSERT from UPDATE in deltas [default: created_at if present]
    #[arg(long)]
    created_column: Option<String>,
    /// Change the strategy or cursor of a table that has consumers or replicas anyway,
    /// removing their positions (their next runs start from a full read)
    #[arg(long)]
    force: bool,
}

pub async fn run(
    args: &SetupArgs,
    ctx: &Context,
) -> anyhow::Result<Vec<(TableName, SetupOutcome)>> {
    let db = ctx.source().await?;
    let tables = ctx.select_tables(std::slice::from_ref(&args.table)).await?;
    let mut infos = Vec::with_capacity(tables.len());
    for table in &tables {
        infos.push(db.describe(table).await?);
    }
    let options = SetupOptions {
        cursor_column: args.cursor_column.clone(),
        deleted_column: args.deleted_column.clone(),
        created_column: args.created_column.clone(),
    };
    // Every table is checked before anything is written, tidemark's state tables included.
    for info in &infos {
        capture::check_setup(info, &args.strategy, &options)?;
        capture::check_setup_privileges(db.as_ref(), info, &args.strategy, &options).await?;
    }
    let state = ctx.state().await?;
    let mut outcomes = Vec::with_capacity(infos.len());
    for (info, table) in infos.iter().zip(tables) {
        let outcome = lifecycle::setup_table(
            db.as_ref(),
            &state,
            info,
            &args.strategy,
            &options,
            args.force,
        )
        .await?;
        outcomes.push((table, outcome));
    }
    Ok(outcomes)
}
