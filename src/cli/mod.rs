//! The command line: parses arguments (clap) and hands each command to its module, which
//! returns one output value; [`output`] renders it as text for people or JSON for scripts and
//! maps errors to exit codes (0 ok, 1 runtime failure, 2 bad usage or bad input).
//!
//! One file per command (its arguments and its `run`); [`context::Context`] opens the source
//! and state databases once, when a command first needs them; [`progress`] shows spinners
//! while a command runs.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod context;
mod output;
mod progress;

#[cfg(feature = "bench")]
mod bench;
mod demo;
mod export;
mod prune;
mod replicate;
mod seed;
mod serve;
mod setup;
mod status;
mod teardown;
mod token;
mod verify;
mod watermark;

pub use context::Context;
use output::Output;

#[derive(Parser, Debug)]
#[command(
    name = "tidemark",
    version,
    about = "Change data capture for SQLite, PostgreSQL and MySQL/MariaDB: exact incremental CSV exports with a watermark per consumer",
    after_help = "Examples:\n  tidemark demo\n  tidemark --source postgres://app@db/shop setup --table users --strategy trigger\n  tidemark --source postgres://app@db/shop export --consumer warehouse --mode delta"
)]
struct Cli {
    /// Source database: sqlite://PATH, postgres://…, mysql://… [env: TIDEMARK_SOURCE, DATABASE_URL]
    #[arg(long, global = true, env = "TIDEMARK_SOURCE", hide_env = true)]
    source: Option<String>,
    /// Database holding watermarks and export records [default: the source]
    #[arg(long, global = true, env = "TIDEMARK_STATE", hide_env_values = true)]
    state: Option<String>,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The whole story on embedded SQLite: exports (seed, full, burst, delta, verify, replay), then trigger capture, replication and status
    #[command(after_help = "Example:\n  tidemark demo --dir /tmp/demo --rows 10000")]
    Demo(demo::DemoArgs),
    /// Create the users table if missing and append N deterministic mock users
    #[command(after_help = "Example:\n  tidemark --source sqlite://app.db seed --rows 100000")]
    Seed(seed::SeedArgs),
    /// Install what a capture strategy needs on a table and register it (idempotent)
    #[command(
        after_help = "Examples:\n  tidemark setup --table users --strategy trigger\n  tidemark setup --table orders --strategy timestamp --cursor-column modified_at"
    )]
    Setup(setup::SetupArgs),
    /// Remove what setup installed and the table's registration (refused while the table has
    /// consumers or replicas, unless --force)
    #[command(after_help = "Example:\n  tidemark teardown --table users")]
    Teardown(teardown::TeardownArgs),
    /// Export a table's changes for a consumer as CSV, JSON Lines or Parquet plus manifest
    #[command(
        after_help = "Examples:\n  tidemark export --consumer warehouse --mode full\n  tidemark export --consumer warehouse --mode delta --table users --out ./exports"
    )]
    Export(export::ExportArgs),
    /// Read, set or reset a consumer's watermark
    #[command(
        after_help = "Example:\n  tidemark watermark get --consumer warehouse --table users"
    )]
    Watermark(watermark::WatermarkArgs),
    /// Check the manifest chains, checksums and row counts of an output directory
    #[command(after_help = "Example:\n  tidemark verify ./output")]
    Verify(verify::VerifyArgs),
    /// Apply a table's changes to a target table in any database (created if missing); the
    /// target's position is committed with the rows, so a crash neither loses nor repeats one
    #[command(
        after_help = "Examples:\n  tidemark --source sqlite://app.db replicate --target postgres://app@db/warehouse\n  tidemark replicate --table users --target mysql://app@db/copy --follow\n  tidemark replicate --table users --target nats://127.0.0.1:4222/TIDEMARK --follow"
    )]
    Replicate(replicate::ReplicateArgs),
    /// Per table, consumer and replica: changes by operation, position, pending changes, lag
    /// (the age of the oldest undelivered change) and health; exits 1 when anything lags
    #[command(
        after_help = "Examples:\n  tidemark status\n  tidemark status --json --max-lag-secs 300"
    )]
    Status(status::StatusArgs),
    /// Delete change-log entries every consumer of the table has passed
    #[command(after_help = "Example:\n  tidemark prune --table users --dry-run")]
    Prune(prune::PruneArgs),
    /// Run the HTTP service (export API, background jobs, health, stats, metrics)
    #[command(
        after_help = "Example:\n  tidemark --source postgres://app@db/shop serve --listen 127.0.0.1:8080 --out ./exports"
    )]
    Serve(Box<serve::ServeArgs>),
    /// Create, list and revoke the API tokens of `serve` (kept as hashes in the state database)
    #[command(
        after_help = "Example:\n  tidemark token create --consumer partner-1\n  tidemark token list\n  tidemark token revoke 3f2a…"
    )]
    Token(token::TokenArgs),
    /// Measure exports against psql \copy and sqlite3 (starts its own PostgreSQL server)
    #[cfg(feature = "bench")]
    #[command(after_help = "Example:\n  tidemark bench --rows 100000 --changes 16000")]
    Bench(bench::BenchArgs),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return output::usage(e),
    };
    let ctx = Context::new(cli.source, cli.state, cli.json);
    let serving = matches!(cli.command, Command::Serve(_));
    init_logging(if serving { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return output::startup_failure(ctx.json, &format!("cannot start the runtime: {e}"))
        }
    };
    match runtime.block_on(run(&cli.command, &ctx)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => output::failure(&e, ctx.json),
    }
}

/// Runs one command, shows its output, then its verdict.
async fn run(command: &Command, ctx: &Context) -> anyhow::Result<()> {
    let output = dispatch(command, ctx).await?;
    output.print(ctx.json)?;
    output.verdict()?;
    Ok(())
}

async fn dispatch(command: &Command, ctx: &Context) -> anyhow::Result<Output> {
    Ok(match command {
        Command::Demo(args) => demo::run(args, ctx).await?,
        Command::Seed(args) => seed::run(args, ctx).await?.into(),
        Command::Setup(args) => Output::Setup(setup::run(args, ctx).await?),
        Command::Teardown(args) => teardown::run(args, ctx).await?,
        Command::Export(args) => Output::Export(export::run(args, ctx).await?),
        Command::Watermark(args) => Output::Watermark(watermark::run(args, ctx).await?),
        Command::Verify(args) => verify::run(args)?,
        Command::Replicate(args) => replicate::run(args, ctx).await?,
        Command::Status(args) => Output::Status(status::run(args, ctx).await?),
        Command::Prune(args) => prune::run(args, ctx).await?,
        Command::Serve(args) => {
            serve::run(args, ctx).await?;
            Output::Nothing
        }
        Command::Token(args) => Output::Token(token::run(args, ctx).await?),
        #[cfg(feature = "bench")]
        Command::Bench(args) => Output::Bench(Box::new(bench::run(args, ctx).await?)),
    })
}

/// Logs to stderr, filtered by `RUST_LOG` (default `level`); JSON lines when
/// `TIDEMARK_LOG_FORMAT=json`.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if std::env::var("TIDEMARK_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
