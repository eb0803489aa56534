//! The command line: parses arguments (clap), wires the library together, prints text for people
//! (progress bars on a terminal, plain lines when piped) or JSON for scripts, and maps errors to
//! exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad input.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::capture::{self, Mode, SetupOptions};
use crate::db::{connect, field, ConnectOptions, Database, DbUrl, Timestamp};
use crate::demo::{self, DemoOptions, Observer, Step};
use crate::error::Error;
use crate::export::{manifest, ExportRequest, Exporter, DEFAULT_MARGIN};
use crate::ident::{ConsumerId, TableName, TableSelector};
use crate::monitor::{self, Thresholds};
use crate::replicate::ReplicateOptions;
use crate::seed;
use crate::serve::{self, FileConfig, ServeConfig};
use crate::state::{Position, StateStore};

#[derive(Parser, Debug)]
#[command(
    name = "tidemark",
    version,
    about = "Change data capture for SQLite, PostgreSQL and MySQL/MariaDB: exact incremental CSV exports with a watermark per consumer"
)]
struct Cli {
    /// Source database: sqlite://PATH, postgres://…, mysql://… [env: TIDEMARK_SOURCE, DATABASE_URL]
    #[arg(long, global = true, env = "TIDEMARK_SOURCE", hide_env = true)]
    source: Option<String>,
    /// Database holding watermarks and export records (default: the source)
    #[arg(long, global = true, env = "TIDEMARK_STATE")]
    state: Option<String>,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
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

#[derive(Subcommand, Debug)]
enum Command {
    /// The whole story on embedded SQLite: seed, full export, changes, delta export, verify, replay
    Demo {
        /// Directory for the demo database (and output unless --out)
        #[arg(long, default_value = "tidemark-demo")]
        dir: PathBuf,
        /// Output directory [default: DIR/output]
        #[arg(long)]
        out: Option<PathBuf>,
        /// Users to seed
        #[arg(long, default_value_t = 100_000)]
        rows: u64,
    },
    /// Create the users table if missing and append N deterministic mock users
    Seed {
        #[arg(long)]
        rows: u64,
        /// Do nothing when the users table already has rows (for container start-up)
        #[arg(long)]
        if_empty: bool,
    },
    /// Install what a capture strategy needs on a table and register it (idempotent)
    Setup {
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
    },
    /// Remove what setup installed and the table's registration
    Teardown {
        #[arg(long, default_value = "users")]
        table: String,
    },
    /// Export a table's changes for a consumer as CSV plus manifest
    Export {
        #[arg(long)]
        consumer: String,
        #[arg(long, value_enum)]
        mode: ModeArg,
        #[arg(long, default_value = "users")]
        table: String,
        /// Output directory
        #[arg(long, env = "TIDEMARK_OUTPUT_DIR", default_value = "output")]
        out: PathBuf,
        /// Longest time a write may take from stamping its time to being listed as running by the server, in ms (PostgreSQL, MySQL); reads wait this long so that they see every change committed before they started
        #[arg(long, default_value_t = DEFAULT_MARGIN.as_millis() as u64)]
        margin_ms: u64,
    },
    /// Read, set or reset a consumer's watermark
    Watermark {
        #[command(subcommand)]
        action: WatermarkAction,
    },
    /// Check the manifest chains, checksums and row counts of an output directory
    Verify { dir: PathBuf },
    /// Apply a table's changes to a target table in any database (created if missing); the
    /// target's position is committed with the rows, so a crash neither loses nor repeats one
    Replicate {
        /// Target database: sqlite://PATH, postgres://…, mysql://…
        #[arg(long)]
        target: String,
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
    },
    /// Per table, consumer and replica: changes by operation, position, pending changes, lag
    /// (the age of the oldest undelivered change) and health; exits 1 when anything lags
    Status {
        #[command(flatten)]
        thresholds: ThresholdArgs,
        /// Only these tables: name, schema.name or a pattern (*, sales.*); repeatable
        #[arg(long)]
        table: Vec<String>,
    },
    /// Delete change-log entries every consumer of the table has passed
    Prune {
        /// Only this table [default: every registered table]
        #[arg(long)]
        table: Option<String>,
        /// Count what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the HTTP service (export API, background jobs, health, stats, metrics)
    Serve(Box<ServeArgs>),
    /// Measure exports against psql \copy and sqlite3 (starts its own PostgreSQL server)
    Bench {
        /// Rows in the full-export comparisons
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Use this PostgreSQL server instead of starting one (its database is modified)
        #[arg(long)]
        pg_url: Option<String>,
        /// Working directory for databases and files [default: a temporary directory]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Changes in the replication benchmark
        #[arg(long, default_value_t = 160_000)]
        changes: u64,
        /// Run only the replication benchmark
        #[arg(long)]
        replication_only: bool,
    },
}

#[derive(clap::Args, Debug, Clone, Default)]
struct ThresholdArgs {
    /// A consumer whose oldest undelivered change is older than this is lagging [default: 3600]
    #[arg(long, env = "TIDEMARK_MAX_LAG_SECS")]
    max_lag_secs: Option<f64>,
    /// A consumer with more pending changes than this is lagging [default: 1000000]
    #[arg(long, env = "TIDEMARK_MAX_PENDING")]
    max_pending: Option<u64>,
}

impl ThresholdArgs {
    fn resolve(&self) -> Thresholds {
        let d = Thresholds::default();
        Thresholds {
            max_lag_secs: self.max_lag_secs.unwrap_or(d.max_lag_secs),
            max_pending: self.max_pending.unwrap_or(d.max_pending),
        }
    }
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "TIDEMARK_LISTEN")]
    listen: Option<String>,
    /// Output directory [default: output]
    #[arg(long, env = "TIDEMARK_OUTPUT_DIR")]
    out: Option<PathBuf>,
    /// Configuration file (TOML); flags and environment override it [default: ./tidemark.toml if present]
    #[arg(long, env = "TIDEMARK_CONFIG")]
    config: Option<PathBuf>,
    /// Exports running at once [default: 4]
    #[arg(long, env = "TIDEMARK_WORKERS")]
    workers: Option<usize>,
    /// Jobs pending or running at once before requests get 503 [default: 64]
    #[arg(long, env = "TIDEMARK_MAX_JOBS")]
    max_jobs: Option<usize>,
    /// Seconds running exports may take to finish after SIGTERM before they are abandoned [default: 30]
    #[arg(long, env = "TIDEMARK_GRACE_SECS")]
    grace_secs: Option<u64>,
    /// How long /health waits for the database, in milliseconds [default: 800]
    #[arg(long, env = "TIDEMARK_HEALTH_TIMEOUT_MS")]
    health_timeout_ms: Option<u64>,
    /// Longest time to answer a request, in seconds [default: 300]
    #[arg(long, env = "TIDEMARK_REQUEST_TIMEOUT_SECS")]
    request_timeout_secs: Option<u64>,
    /// How far behind the server clock capture stays, in milliseconds [default: 100]
    #[arg(long, env = "TIDEMARK_MARGIN_MS")]
    margin_ms: Option<u64>,
    /// Connections served at once [default: 1024]
    #[arg(long, env = "TIDEMARK_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// How long a client may take to send a request head, in milliseconds [default: 10000]
    #[arg(long, env = "TIDEMARK_HEADER_TIMEOUT_MS")]
    header_timeout_ms: Option<u64>,
    #[command(flatten)]
    thresholds: ThresholdArgs,
}

#[derive(Subcommand, Debug)]
enum WatermarkAction {
    /// Print the watermark
    Get {
        #[arg(long)]
        consumer: String,
        #[arg(long, default_value = "users")]
        table: String,
    },
    /// Set the watermark to a time (RFC 3339): changes from then on are exported next
    Set {
        #[arg(long)]
        consumer: String,
        #[arg(long, default_value = "users")]
        table: String,
        #[arg(long)]
        to: String,
    },
    /// Forget the watermark: the next export starts from the beginning
    Reset {
        #[arg(long)]
        consumer: String,
        #[arg(long, default_value = "users")]
        table: String,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let serving = matches!(cli.command, Command::Serve(_));
    init_logging(if serving { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our errors already name their causes; print each further cause only once.
            let mut line = String::new();
            for cause in e.chain() {
                let text = cause.to_string();
                if !line.contains(&text) {
                    if !line.is_empty() {
                        line.push_str(": ");
                    }
                    line.push_str(&text);
                }
            }
            eprintln!("error: {line}");
            let input = e
                .chain()
                .any(|c| c.downcast_ref::<Error>().is_some_and(Error::is_input_error));
            ExitCode::from(if input { 2 } else { 1 })
        }
    }
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

fn source_url(cli: &Cli) -> anyhow::Result<DbUrl> {
    let url = cli
        .source
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .ok_or_else(|| Error::input("no source database: pass --source URL or set DATABASE_URL"))?;
    Ok(DbUrl::parse(&url)?)
}

async fn open_source(cli: &Cli, create: bool) -> anyhow::Result<Arc<dyn Database>> {
    let url = source_url(cli)?;
    Ok(connect(
        &url,
        ConnectOptions {
            create_if_missing: create,
            max_connections: None,
        },
    )
    .await?)
}

async fn open_state(cli: &Cli, source: &Arc<dyn Database>) -> anyhow::Result<StateStore> {
    let db = match &cli.state {
        Some(url) => {
            connect(
                &DbUrl::parse(url)?,
                ConnectOptions {
                    create_if_missing: true,
                    max_connections: None,
                },
            )
            .await?
        }
        None => Arc::clone(source),
    };
    Ok(StateStore::open(db).await?)
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A progress bar on a terminal, nothing otherwise.
fn bar(json: bool, label: &str) -> Option<ProgressBar> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new_spinner();
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg} {human_pos} rows ({per_sec}) {elapsed}")
    {
        pb.set_style(style);
    }
    pb.set_message(label.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(pb)
}

struct DemoUi {
    bar: Option<ProgressBar>,
    json: bool,
}

impl Observer for DemoUi {
    fn progress(&self, step: &'static str, rows: u64) {
        if let Some(b) = &self.bar {
            b.set_message(step);
            b.set_position(rows);
        }
    }

    fn step_done(&self, step: &Step) {
        if self.json {
            return;
        }
        let line = format!(
            "  {:<13} {:>7.2} s  {}",
            step.name, step.seconds, step.detail
        );
        match &self.bar {
            Some(b) => b.println(line),
            None => println!("{line}"),
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Demo { dir, out, rows } => {
            let opts = DemoOptions {
                dir: dir.clone(),
                out: out.clone(),
                rows: *rows,
            };
            if !cli.json {
                println!(
                    "tidemark demo: {rows} users on embedded SQLite in {}",
                    dir.display()
                );
            }
            let ui = DemoUi {
                bar: bar(cli.json, "working"),
                json: cli.json,
            };
            let report = demo::run(&opts, &ui).await;
            if let Some(b) = &ui.bar {
                b.finish_and_clear();
            }
            let report = report?;
            if cli.json {
                print_json(&report)?;
            } else {
                println!(
                    "done in {:.2} s: replaying {} gives exactly the table ({} live rows)",
                    report.seconds,
                    report.out_dir.display(),
                    report.live_rows
                );
            }
        }
        Command::Seed { rows, if_empty } => {
            let db = open_source(&cli, true).await?;
            if *if_empty {
                let present = db
                    .query(&format!("SELECT count(*) FROM {}", seed::USERS), &[])
                    .await
                    .ok()
                    .and_then(|r| r.first().and_then(|r| field(r, 0).map(str::to_string)))
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                if present > 0 {
                    println!("{} already has {present} rows; not seeding", seed::USERS);
                    return Ok(());
                }
            }
            let pb = bar(cli.json, "seeding");
            let progress = |n: u64| {
                if let Some(b) = &pb {
                    b.set_position(n);
                }
            };
            let report = seed::seed_users(db.as_ref(), *rows, Some(&progress)).await;
            if let Some(b) = &pb {
                b.finish_and_clear();
            }
            let report = report?;
            if cli.json {
                print_json(&report)?;
            } else {
                println!(
                    "seeded {} users (ids {}..{}) into {} in {:.2} s",
                    report.rows, report.first_id, report.last_id, report.table, report.seconds
                );
            }
        }
        Command::Setup {
            table,
            strategy,
            cursor_column,
            deleted_column,
            created_column,
        } => {
            let db = open_source(&cli, false).await?;
            let tables = select_tables(db.as_ref(), std::slice::from_ref(table)).await?;
            // Every table is checked before anything is created.
            let mut infos = Vec::with_capacity(tables.len());
            for table in &tables {
                infos.push(db.describe(table).await?);
            }
            let state = open_state(&cli, &db).await?;
            let options = SetupOptions {
                cursor_column: cursor_column.clone(),
                deleted_column: deleted_column.clone(),
                created_column: created_column.clone(),
            };
            let mut reports = Vec::with_capacity(infos.len());
            for info in &infos {
                let report = capture::setup(db.as_ref(), info, strategy, &options).await?;
                state.save_table_config(&info.name, &report.config).await?;
                reports.push(report);
            }
            if cli.json && reports.len() == 1 {
                print_json(&reports.first())?;
            } else if cli.json {
                print_json(&reports)?;
            }
            for (report, table) in reports.iter().zip(&tables) {
                if cli.json {
                    continue;
                }
                let mut did: Vec<String> = report
                    .installed
                    .iter()
                    .map(|i| format!("installed {i}"))
                    .collect();
                did.extend(report.reused.iter().map(|i| format!("uses existing {i}")));
                println!(
                    "{table}: {} capture on cursor {} (soft deletes: {}, creation time: {}); {}",
                    report.config.strategy,
                    report.config.cursor_column,
                    report.config.deleted_column.as_deref().unwrap_or("none"),
                    report.config.created_column.as_deref().unwrap_or("none"),
                    did.join(", ")
                );
            }
        }
        Command::Teardown { table } => {
            let db = open_source(&cli, false).await?;
            let table = db.resolve_table(&TableName::parse(table)?).await?;
            let state = open_state(&cli, &db).await?;
            let info = db.describe(&table).await?;
            let removed = match state.table_config(&table).await? {
                Some(config) => {
                    let mut r = capture::teardown(db.as_ref(), &info, &config).await?;
                    state.remove_table_config(&table).await?;
                    r.push("registration".into());
                    r
                }
                None => Vec::new(),
            };
            if cli.json {
                print_json(&serde_json::json!({ "table": table, "removed": removed }))?;
            } else if removed.is_empty() {
                println!("{table}: nothing to remove (not set up)");
            } else {
                println!("{table}: removed {}", removed.join(", "));
            }
        }
        Command::Export {
            consumer,
            mode,
            table,
            out,
            margin_ms,
        } => {
            let consumer = ConsumerId::new(consumer)?;
            let db = open_source(&cli, false).await?;
            let table = db.resolve_table(&TableName::parse(table)?).await?;
            let state = open_state(&cli, &db).await?;
            let exporter =
                Exporter::new(db, state).with_margin(std::time::Duration::from_millis(*margin_ms));
            let req = ExportRequest::new(consumer, table, (*mode).into(), out.clone());
            let pb = bar(cli.json, &format!("{} export", req.mode));
            let progress = |n: u64| {
                if let Some(b) = &pb {
                    b.set_position(n);
                }
            };
            let outcome = exporter.export(&req, Some(&progress)).await;
            if let Some(b) = &pb {
                b.finish_and_clear();
            }
            let outcome = outcome?;
            if cli.json {
                print_json(&outcome)?;
            } else {
                for r in &outcome.repaired {
                    eprintln!("note: {r}");
                }
                match &outcome.file {
                    Some(f) => println!(
                        "{} export of {} for {}: {} rows to {} ({} ms)",
                        outcome.mode,
                        outcome.table,
                        outcome.consumer,
                        outcome.rows,
                        f.display(),
                        outcome.duration_ms
                    ),
                    None => println!(
                        "{} export of {} for {}: no changes since the watermark, no file written",
                        outcome.mode, outcome.table, outcome.consumer
                    ),
                }
                if let Some(since) = &outcome.held_back_since {
                    eprintln!("note: {}", held_back_note(since));
                }
            }
        }
        Command::Watermark { action } => watermark(&cli, action).await?,
        Command::Verify { dir } => {
            let report = manifest::verify(dir)?;
            if cli.json {
                print_json(&report)?;
            } else {
                for c in &report.chains {
                    println!(
                        "{} / {}: {} files, {} rows, watermark {}",
                        c.consumer,
                        c.table,
                        c.files,
                        c.rows,
                        c.watermark.time()
                    );
                }
                for p in &report.problems {
                    eprintln!("problem: {p}");
                }
            }
            if !report.problems.is_empty() {
                return Err(Error::Verify(format!(
                    "{} problem(s) in {}",
                    report.problems.len(),
                    dir.display()
                ))
                .into());
            }
            if !cli.json {
                println!(
                    "ok: {} chain(s) verified in {}",
                    report.chains.len(),
                    dir.display()
                );
            }
        }
        Command::Replicate {
            target,
            table,
            target_table,
            follow,
            batch_size,
            margin_ms,
        } => {
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
                return Ok(());
            }
            let target_table = target_table.as_deref().map(TableName::parse).transpose()?;
            let target = DbUrl::parse(target)?;
            let db = open_source(&cli, false).await?;
            let tables = select_tables(db.as_ref(), table).await?;
            if target_table.is_some() && tables.len() != 1 {
                return Err(Error::input(format!(
                    "--target-table names the target of one table, but {} tables were selected",
                    tables.len()
                ))
                .into());
            }
            let state = open_state(&cli, &db).await?;
            let first = tables
                .first()
                .cloned()
                .ok_or_else(|| Error::input("no table selected"))?;
            let mut opts = ReplicateOptions::new(first);
            opts.follow = *follow;
            opts.batch_size = *batch_size;
            opts.margin = std::time::Duration::from_millis(*margin_ms);
            let summaries = crate::replicate::many::replicate_all(
                db,
                state,
                target,
                &tables,
                target_table,
                opts,
                stop,
            )
            .await?;
            if cli.json && summaries.len() == 1 {
                print_json(&summaries.first())?;
            } else if cli.json {
                print_json(&summaries)?;
            }
            for summary in &summaries {
                if cli.json {
                    continue;
                }
                println!(
                    "replicated {} into {} table {}: {} rows ({} upserts, {} deletes) in {} commit(s), {:.2} s{}",
                    summary.table,
                    summary.target,
                    summary.target_table,
                    summary.rows,
                    summary.upserts,
                    summary.deletes,
                    summary.commits,
                    summary.seconds,
                    if summary.retries > 0 {
                        format!(", {} transient failure(s) retried", summary.retries)
                    } else {
                        String::new()
                    }
                );
                if let Some(since) = &summary.held_back_since {
                    eprintln!("note: {}", held_back_note(since));
                }
            }
        }
        Command::Status { thresholds, table } => {
            let db = open_source(&cli, false).await?;
            let only = if table.is_empty() {
                None
            } else {
                Some(select_tables(db.as_ref(), table).await?)
            };
            let state = open_state(&cli, &db).await?;
            let report = monitor::collect_tables(
                db.as_ref(),
                &state,
                monitor::Scope {
                    thresholds: thresholds.resolve(),
                    table_totals: true,
                },
                only.as_deref(),
            )
            .await?;
            if cli.json {
                print_json(&report)?;
            } else {
                print!("{}", monitor::render(&report));
            }
            // The exit code carries the verdict: 1 when anything lags or cannot be read.
            if report.health != "ok" {
                return Err(Error::Unhealthy {
                    verdict: report.health.to_string(),
                    detail: report.problems().join("; "),
                }
                .into());
            }
        }
        Command::Prune { table, dry_run } => {
            let db = open_source(&cli, false).await?;
            let table = match table.as_deref().map(TableName::parse).transpose()? {
                Some(t) => Some(db.resolve_table(&t).await?),
                None => None,
            };
            let state = open_state(&cli, &db).await?;
            if let Some(t) = &table {
                db.describe(t).await?;
            }
            let reports =
                capture::prune::prune(db.as_ref(), &state, table.as_ref(), *dry_run).await?;
            if cli.json {
                print_json(&reports)?;
            } else if reports.is_empty() {
                println!("no registered tables to prune");
            } else {
                for r in &reports {
                    match &r.note {
                        Some(note) => println!("{}: {note}", r.table),
                        None => println!(
                            "{}: {} {} change-log entries every consumer has passed ({}); {} left",
                            r.table,
                            if *dry_run { "would delete" } else { "deleted" },
                            r.deleted,
                            r.consumers.join(", "),
                            r.remaining
                        ),
                    }
                }
            }
        }
        Command::Serve(args) => {
            let named = args.config.is_some();
            let path = args
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from("tidemark.toml"));
            let file = FileConfig::load(&path, named)?;
            let flags = FileConfig {
                source: cli
                    .source
                    .clone()
                    .or_else(|| std::env::var("DATABASE_URL").ok()),
                state: cli.state.clone(),
                listen: args.listen.clone(),
                out: args.out.clone(),
                workers: args.workers,
                max_jobs: args.max_jobs,
                grace_secs: args.grace_secs,
                health_timeout_ms: args.health_timeout_ms,
                request_timeout_secs: args.request_timeout_secs,
                margin_ms: args.margin_ms,
                max_connections: args.max_connections,
                header_timeout_ms: args.header_timeout_ms,
                max_lag_secs: args.thresholds.max_lag_secs,
                max_pending: args.thresholds.max_pending,
            };
            let config = ServeConfig::resolve(file, flags)?;
            let json = cli.json;
            serve::serve(config, &move |addr: std::net::SocketAddr| {
                if json {
                    println!("{}", serde_json::json!({ "listening": addr.to_string() }));
                } else {
                    println!("tidemark serve: listening on http://{addr}");
                }
            })
            .await?;
        }
        Command::Bench {
            rows,
            pg_url,
            dir,
            changes,
            replication_only,
        } => {
            let opts = crate::bench::BenchOptions {
                rows: *rows,
                pg_url: pg_url.clone(),
                dir: dir.clone(),
                changes: *changes,
                replication_only: *replication_only,
            };
            let report = crate::bench::run(&opts, &|line| {
                if !cli.json {
                    eprintln!("{line}");
                }
            })
            .await
            .context("benchmark failed")?;
            if cli.json {
                print_json(&report)?;
            } else {
                println!("{}", report.render());
            }
        }
    }
    Ok(())
}

/// The tables that `--table` values (names or patterns) select on `db`, each once, in the
/// order given; a schema that does not exist or a pattern that matches nothing is bad input.
async fn select_tables(
    db: &dyn Database,
    specs: &[String],
) -> crate::error::Result<Vec<TableName>> {
    let mut out: Vec<TableName> = Vec::new();
    for spec in specs {
        for t in db.select_tables(&TableSelector::parse(spec)?).await? {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

async fn watermark(cli: &Cli, action: &WatermarkAction) -> anyhow::Result<()> {
    let (consumer, table) = match action {
        WatermarkAction::Get { consumer, table }
        | WatermarkAction::Set {
            consumer, table, ..
        }
        | WatermarkAction::Reset { consumer, table } => (consumer, table),
    };
    let consumer = ConsumerId::new(consumer)?;
    let db = open_source(cli, false).await?;
    let table = db.resolve_table(&TableName::parse(table)?).await?;
    let state = open_state(cli, &db).await?;
    match action {
        WatermarkAction::Get { .. } => {
            let w = state.watermark(&consumer, &table).await?;
            if cli.json {
                print_json(&w)?;
            } else {
                match w {
                    Some(w) => println!(
                        "{consumer} / {table}: {} (moved {})",
                        w.position.time(),
                        w.updated_at
                    ),
                    None => println!("{consumer} / {table}: no watermark (the next export starts from the beginning)"),
                }
            }
        }
        WatermarkAction::Set { to, .. } => {
            let at = Timestamp::parse(to)?;
            db.describe(&table).await?;
            let lock = state.lock(&consumer, &table).await?;
            let result = state
                .set_watermark(&consumer, &table, &Position::Timestamp { cursor: at })
                .await;
            lock.release().await?;
            result?;
            if cli.json {
                print_json(&state.watermark(&consumer, &table).await?)?;
            } else {
                println!("{consumer} / {table}: watermark set to {at}");
            }
        }
        WatermarkAction::Reset { .. } => {
            let lock = state.lock(&consumer, &table).await?;
            let result = state.reset_watermark(&consumer, &table).await;
            lock.release().await?;
            let removed = result?;
            if cli.json {
                print_json(
                    &serde_json::json!({ "consumer": consumer, "table": table, "reset": removed }),
                )?;
            } else if removed {
                println!("{consumer} / {table}: watermark reset; the next export starts from the beginning");
            } else {
                println!("{consumer} / {table}: had no watermark");
            }
        }
    }
    Ok(())
}

/// What a user is told when a transaction open at the start of a read holds changes back.
fn held_back_note(since: &crate::db::Timestamp) -> String {
    format!(
        "changes since {since} are held back: a write transaction that was open when this run \
         started has not committed yet; a later run delivers them once it ends"
    )
}
