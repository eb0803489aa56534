//! `tidemark export`: one export of a table's changes for a consumer (file plus manifest),
//! moving the consumer's watermark once the file is durable.

use std::path::PathBuf;

use super::progress::Rows;
use super::Context;
use crate::capture::Mode;
use crate::export::{ExportOutcome, ExportRequest, Exporter, DEFAULT_MARGIN};
use crate::ident::ConsumerId;

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Consumer id (1-128 of letters, digits, '_', '.', '-'); each has its own watermark
    #[arg(long)]
    consumer: String,
    /// full: every live row; incremental: rows changed since the watermark; delta: every
    /// change since the watermark with an operation column
    #[arg(long, value_enum)]
    mode: ModeArg,
    /// Table to export
    #[arg(long, default_value = "users")]
    table: String,
    /// Output directory
    #[arg(
        long,
        env = "TIDEMARK_OUTPUT_DIR",
        hide_env_values = true,
        default_value = "output"
    )]
    out: PathBuf,
    /// Longest time a write may take from stamping its time to being listed as running by the server, in ms (PostgreSQL, MySQL); reads wait this long so that they see every change committed before they started
    #[arg(long, default_value_t = DEFAULT_MARGIN.as_millis() as u64)]
    margin_ms: u64,
    /// File format: csv (RFC 4180), jsonl (one JSON object per row) or parquet (typed columns)
    #[arg(long, value_enum, default_value_t = crate::format::FileFormat::Csv)]
    format: crate::format::FileFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ModeArg {
    Full,
    Incremental,
    Delta,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Full => Mode::Full,
            ModeArg::Incremental => Mode::Incremental,
            ModeArg::Delta => Mode::Delta,
        }
    }
}

pub async fn run(args: &ExportArgs, ctx: &Context) -> anyhow::Result<ExportOutcome> {
    let consumer = ConsumerId::new(&args.consumer)?;
    let db = ctx.source().await?;
    let table = ctx.resolve_table(&args.table).await?;
    let state = ctx.state().await?;
    let exporter =
        Exporter::new(db, state).with_margin(std::time::Duration::from_millis(args.margin_ms));
    let req = ExportRequest::new(consumer, table, args.mode.into(), args.out.clone())
        .with_format(args.format);
    let rows = Rows::new(ctx.json, &format!("{} export", req.mode));
    let progress = |n: u64| rows.set(n);
    let outcome = exporter.export(&req, Some(&progress)).await;
    rows.finish();
    Ok(outcome?)
}
