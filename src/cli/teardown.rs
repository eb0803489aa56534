//! `tidemark teardown`: removes what setup installed and the table's registration.

use super::output::Output;
use super::Context;
use crate::capture::lifecycle;

#[derive(clap::Args, Debug)]
pub struct TeardownArgs {
    /// Table to stop capturing
    #[arg(long, default_value = "users")]
    table: String,
    /// Tear down even though consumers or replicas hold positions in the table, removing
    /// their positions (their next runs start from a full read)
    #[arg(long)]
    force: bool,
}

pub async fn run(args: &TeardownArgs, ctx: &Context) -> anyhow::Result<Output> {
    let db = ctx.source().await?;
    let table = ctx.resolve_table(&args.table).await?;
    let state = ctx.state().await?;
    let info = db.describe(&table).await?;
    let outcome = lifecycle::teardown_table(db.as_ref(), &state, &info, args.force).await?;
    Ok(Output::Teardown(table, outcome))
}
