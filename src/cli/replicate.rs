//! `tidemark replicate`: applies the selected tables' changes to target tables, once or
//! following (`--follow`) until SIGTERM or Ctrl-C.

use super::output::Output;
use super::Context;
use crate::db::DbUrl;
use crate::error::Error;
use crate::export::DEFAULT_MARGIN;
use crate::ident::TableName;
use crate::replicate::ReplicateOptions;
use crate::serve;

#[derive(clap::Args, Debug)]
pub struct ReplicateArgs {
    /// Target database: sqlite://PATH, postgres://…, mysql://…; or a NATS JetStream stream: nats://HOST:PORT[/STREAM]
    #[arg(long)]
    target: String,
    /// NATS targets: the subject of each change, from {table} and {operation} (insert, update, delete)
    #[arg(long, default_value = crate::replicate::nats::DEFAULT_SUBJECT_TEMPLATE)]
    subject_template: String,
    /// Source table: name, schema.name, or a pattern (*, sales.*); repeat for several
    #[arg(long, default_value = "users")]
    table: Vec<String>,
    /// Target table, with one source table only [default: the source table's name]
    #[arg(long)]
    target_table: Option<String>,
    /// Keep running with low latency until SIGTERM or Ctrl-C
    #[arg(long)]
    follow: bool,
    /// Rows per batch
    #[arg(long, default_value_t = crate::replicate::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Longest time a write may take from stamping its time to being listed as running by the server, in ms (PostgreSQL, MySQL); reads wait this long so that they see every change committed before they started
    #[arg(long, default_value_t = DEFAULT_MARGIN.as_millis() as u64)]
    margin_ms: u64,
}

pub async fn run(args: &ReplicateArgs, ctx: &Context) -> anyhow::Result<Output> {
    // SIGTERM and Ctrl-C are caught from here on (a first poll installs the handlers):
    // stopped while starting, the replicators end at once instead of the process dying.
    let stop = serve::shutdown_signal();
    tokio::pin!(stop);
    let stopped_at_once = tokio::select! {
        biased;
        _ = &mut stop => true,
        _ = std::future::ready(()) => false,
    };
    if stopped_at_once {
        return Ok(Output::Nothing);
    }
    if crate::replicate::nats::is_nats_url(&args.target) {
        return publish_to_nats(args, ctx, stop).await;
    }
    let target_table = args
        .target_table
        .as_deref()
        .map(TableName::parse)
        .transpose()?;
    let target = DbUrl::parse(&args.target)?;
    let db = ctx.source().await?;
    let tables = ctx.select_tables(&args.table).await?;
    if target_table.is_some() && tables.len() != 1 {
        return Err(Error::input(format!(
            "--target-table names the target of one table, but {} tables were selected",
            tables.len()
        ))
        .into());
    }
    let state = ctx.state().await?;
    let opts = options(args, &tables)?;
    let summaries =
        crate::replicate::many::replicate_all(db, state, target, &tables, target_table, opts, stop)
            .await?;
    Ok(Output::Replicate(summaries))
}

/// `replicate --target nats://…`: the URL and template are checked before the source is
/// opened (exit 2, nothing written), then each table is published by its own publisher.
async fn publish_to_nats(
    args: &ReplicateArgs,
    ctx: &Context,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Output> {
    use crate::replicate::nats;
    let url = nats::NatsUrl::parse(&args.target)?;
    let subjects = nats::SubjectTemplate::parse(&args.subject_template)?;
    if args.target_table.is_some() {
        return Err(Error::input(
            "--target-table does not apply to a NATS target: use --subject-template",
        )
        .into());
    }
    let db = ctx.source().await?;
    let tables = ctx.select_tables(&args.table).await?;
    let state = ctx.state().await?;
    let opts = options(args, &tables)?;
    let summaries = nats::publish_all(db, state, url, &tables, subjects, opts, stop).await?;
    Ok(Output::Publish(summaries))
}

/// The options of a run over `tables` (the first one names the run until each table's own
/// replicator takes its copy).
fn options(args: &ReplicateArgs, tables: &[TableName]) -> Result<ReplicateOptions, Error> {
    let first = tables
        .first()
        .cloned()
        .ok_or_else(|| Error::input("no table selected"))?;
    let mut opts = ReplicateOptions::new(first);
    opts.follow = args.follow;
    opts.batch_size = args.batch_size;
    opts.margin = std::time::Duration::from_millis(args.margin_ms);
    Ok(opts)
}
