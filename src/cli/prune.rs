//! `tidemark prune`: deletes change-log entries every consumer of the table has passed.

use super::output::Output;
use super::Context;
use crate::capture;
use crate::ident::TableName;

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// Only this table [default: every registered table]
    #[arg(long)]
    table: Option<String>,
    /// Count what would be deleted, delete nothing
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(args: &PruneArgs, ctx: &Context) -> anyhow::Result<Output> {
    let db = ctx.source().await?;
    let table = match args.table.as_deref().map(TableName::parse).transpose()? {
        Some(t) => Some(db.resolve_table(&t).await?),
        None => None,
    };
    let state = ctx.state().await?;
    if let Some(t) = &table {
        db.describe(t).await?;
    }
    let reports = capture::prune::prune(db.as_ref(), &state, table.as_ref(), args.dry_run).await?;
    Ok(Output::Prune {
        reports,
        dry_run: args.dry_run,
    })
}
