//! The command line: parses arguments (clap), wires the library together, prints text for people
//! (progress bars on a terminal, plain lines when piped) or JSON for scripts, and maps errors to
//! exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad input.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{HumanCount, ProgressBar, ProgressState, ProgressStyle};

use crate::capture::{self, lifecycle, Mode, SetupOptions};
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
use crate::words::count;

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
    /// The whole story on embedded SQLite: exports (seed, full, burst, delta, verify, replay), then trigger capture, replication and status
    #[command(after_help = "Example:\n  tidemark demo --dir /tmp/demo --rows 10000")]
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
        /// Then serve the demo database and print the status page's address
        #[arg(long)]
        serve: bool,
        /// Address for --serve
        #[arg(long, default_value = "127.0.0.1:8080", requires = "serve")]
        listen: String,
    },
    /// Create the users table if missing and append N deterministic mock users
    #[command(after_help = "Example:\n  tidemark --source sqlite://app.db seed --rows 100000")]
    Seed {
        /// Users to append
        #[arg(long)]
        rows: u64,
        /// Do nothing when the users table already has rows (for container start-up)
        #[arg(long)]
        if_empty: bool,
    },
    /// Install what a capture strategy needs on a table and register it (idempotent)
    #[command(
        after_help = "Examples:\n  tidemark setup --table users --strategy trigger\n  tidemark setup --table orders --strategy timestamp --cursor-column modified_at"
    )]
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
        /// Change the strategy or cursor of a table that has consumers or replicas anyway,
        /// removing their positions (their next runs start from a full read)
        #[arg(long)]
        force: bool,
    },
    /// Remove what setup installed and the table's registration (refused while the table has
    /// consumers or replicas, unless --force)
    #[command(after_help = "Example:\n  tidemark teardown --table users")]
    Teardown {
        /// Table to stop capturing
        #[arg(long, default_value = "users")]
        table: String,
        /// Tear down even though consumers or replicas hold positions in the table, removing
        /// their positions (their next runs start from a full read)
        #[arg(long)]
        force: bool,
    },
    /// Export a table's changes for a consumer as CSV, JSON Lines or Parquet plus manifest
    #[command(
        after_help = "Examples:\n  tidemark export --consumer warehouse --mode full\n  tidemark export --consumer warehouse --mode delta --table users --out ./exports"
    )]
    Export {
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
    },
    /// Read, set or reset a consumer's watermark
    #[command(
        after_help = "Example:\n  tidemark watermark get --consumer warehouse --table users"
    )]
    Watermark {
        #[command(subcommand)]
        action: WatermarkAction,
    },
    /// Check the manifest chains, checksums and row counts of an output directory
    #[command(after_help = "Example:\n  tidemark verify ./output")]
    Verify {
        /// Output directory to check
        dir: PathBuf,
    },
    /// Apply a table's changes to a target table in any database (created if missing); the
    /// target's position is committed with the rows, so a crash neither loses nor repeats one
    #[command(
        after_help = "Examples:\n  tidemark --source sqlite://app.db replicate --target postgres://app@db/warehouse\n  tidemark replicate --table users --target mysql://app@db/copy --follow"
    )]
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
    #[command(
        after_help = "Examples:\n  tidemark status\n  tidemark status --json --max-lag-secs 300"
    )]
    Status {
        #[command(flatten)]
        thresholds: ThresholdArgs,
        /// Only these tables: name, schema.name or a pattern (*, sales.*); repeatable
        #[arg(long)]
        table: Vec<String>,
    },
    /// Delete change-log entries every consumer of the table has passed
    #[command(after_help = "Example:\n  tidemark prune --table users --dry-run")]
    Prune {
        /// Only this table [default: every registered table]
        #[arg(long)]
        table: Option<String>,
        /// Count what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the HTTP service (export API, background jobs, health, stats, metrics)
    #[command(
        after_help = "Example:\n  tidemark --source postgres://app@db/shop serve --listen 127.0.0.1:8080 --out ./exports"
    )]
    Serve(Box<ServeArgs>),
    /// Create, list and revoke the API tokens of `serve` (kept as hashes in the state database)
    #[command(
        after_help = "Example:\n  tidemark token create --consumer partner-1\n  tidemark token list\n  tidemark token revoke 3f2a…"
    )]
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Measure exports against psql \copy and sqlite3 (starts its own PostgreSQL server)
    #[command(after_help = "Example:\n  tidemark bench --rows 100000 --changes 16000")]
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
    #[arg(long, env = "TIDEMARK_MAX_LAG_SECS", hide_env_values = true)]
    max_lag_secs: Option<f64>,
    /// A consumer with more pending changes than this is lagging [default: 1000000]
    #[arg(long, env = "TIDEMARK_MAX_PENDING", hide_env_values = true)]
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
    #[arg(long, env = "TIDEMARK_LISTEN", hide_env_values = true)]
    listen: Option<String>,
    /// Output directory [default: output]
    #[arg(long, env = "TIDEMARK_OUTPUT_DIR", hide_env_values = true)]
    out: Option<PathBuf>,
    /// Configuration file (TOML); flags and environment override it [default: ./tidemark.toml if present]
    #[arg(long, env = "TIDEMARK_CONFIG", hide_env_values = true)]
    config: Option<PathBuf>,
    /// Exports running at once [default: 4]
    #[arg(long, env = "TIDEMARK_WORKERS", hide_env_values = true)]
    workers: Option<usize>,
    /// Jobs pending or running at once before requests get 503 [default: 64]
    #[arg(long, env = "TIDEMARK_MAX_JOBS", hide_env_values = true)]
    max_jobs: Option<usize>,
    /// Seconds running exports may take to finish after SIGTERM before they are abandoned [default: 30]
    #[arg(long, env = "TIDEMARK_GRACE_SECS", hide_env_values = true)]
    grace_secs: Option<u64>,
    /// How long /health waits for the database, in milliseconds [default: 800]
    #[arg(long, env = "TIDEMARK_HEALTH_TIMEOUT_MS", hide_env_values = true)]
    health_timeout_ms: Option<u64>,
    /// Longest time to answer a request, in seconds [default: 300]
    #[arg(long, env = "TIDEMARK_REQUEST_TIMEOUT_SECS", hide_env_values = true)]
    request_timeout_secs: Option<u64>,
    /// How far behind the server clock capture stays, in milliseconds [default: 100]
    #[arg(long, env = "TIDEMARK_MARGIN_MS", hide_env_values = true)]
    margin_ms: Option<u64>,
    /// Connections served at once [default: 1024]
    #[arg(long, env = "TIDEMARK_MAX_CONNECTIONS", hide_env_values = true)]
    max_connections: Option<usize>,
    /// How long a client may take to send a request head, in milliseconds [default: 10000]
    #[arg(long, env = "TIDEMARK_HEADER_TIMEOUT_MS", hide_env_values = true)]
    header_timeout_ms: Option<u64>,
    #[command(flatten)]
    thresholds: ThresholdArgs,
    /// Serve on addresses beyond loopback although no token exists (anyone reaching the port may export and move watermarks)
    #[arg(long)]
    insecure: bool,
    /// Let /, /stats, /metrics and /openapi.json answer without a token
    #[arg(long)]
    public_status: bool,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key
    #[arg(
        long,
        env = "TIDEMARK_TLS_CERT",
        hide_env_values = true,
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert
    #[arg(
        long,
        env = "TIDEMARK_TLS_KEY",
        hide_env_values = true,
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Create a token and print it (once: only its hash is stored)
    #[command(group(clap::ArgGroup::new("scope").required(true).args(["consumer", "admin"])))]
    #[command(after_help = "Example:\n  tidemark token create --consumer partner-1")]
    Create {
        /// The consumer the token acts as (and only as)
        #[arg(long)]
        consumer: Option<String>,
        /// A token that may do everything
        #[arg(long)]
        admin: bool,
    },
    /// List tokens: id, kind, consumer, creation time (never the tokens themselves)
    #[command(after_help = "Example:\n  tidemark token list --json")]
    List,
    /// Revoke a token by id; a running server refuses it from the next request on
    #[command(after_help = "Example:\n  tidemark token revoke 3f2a9c…")]
    Revoke {
        /// The token's id, as `token list` shows it
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum WatermarkAction {
    /// Print the watermark
    #[command(
        after_help = "Example:\n  tidemark watermark get --consumer warehouse --table users"
    )]
    Get {
        /// Consumer id
        #[arg(long)]
        consumer: String,
        /// Table
        #[arg(long, default_value = "users")]
        table: String,
    },
    /// Set the watermark to a time (RFC 3339): changes from then on are exported next
    #[command(
        after_help = "Example:\n  tidemark watermark set --consumer warehouse --to 2026-11-21T04:37:00Z"
    )]
    Set {
        /// Consumer id
        #[arg(long)]
        consumer: String,
        /// Table
        #[arg(long, default_value = "users")]
        table: String,
        /// The time to set, RFC 3339 (e.g. 2026-11-21T04:37:00Z)
        #[arg(long)]
        to: String,
    },
    /// Forget the watermark: the consumer starts again with a full export
    #[command(after_help = "Example:\n  tidemark watermark reset --consumer warehouse")]
    Reset {
        /// Consumer id
        #[arg(long)]
        consumer: String,
        /// Table
        #[arg(long, default_value = "users")]
        table: String,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let mut cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if e.use_stderr() && std::env::args().any(|a| a == "--json") {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or_default();
                print_error_json(first.strip_prefix("error: ").unwrap_or(first));
                return ExitCode::from(2);
            }
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // An empty variable (`TIDEMARK_STATE=` in a compose file) is no setting at all.
    cli.source = cli.source.filter(|s| !s.is_empty());
    cli.state = cli.state.filter(|s| !s.is_empty());
    let json = cli.json;
    let serving = matches!(cli.command, Command::Serve(_));
    init_logging(if serving { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let line = format!("cannot start the runtime: {e}");
            if json {
                print_error_json(&line);
            } else {
                eprintln!("error: {line}");
            }
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
            if json {
                print_error_json(&tidemark_redact(&line));
            } else {
                eprintln!("error: {}", tidemark_redact(&line));
            }
            let input = e
                .chain()
                .any(|c| c.downcast_ref::<Error>().is_some_and(Error::is_input_error));
            ExitCode::from(if input { 2 } else { 1 })
        }
    }
}

/// An error for scripts (`--json`): one line `{"error": "…"}` on stderr.
fn print_error_json(line: &str) {
    eprintln!("{}", serde_json::json!({ "error": line }));
}

/// The last guard before a message is shown: database URLs in it lose their passwords.
fn tidemark_redact(line: &str) -> String {
    crate::db::redact_text(line)
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
        .or_else(database_url_env)
        .ok_or_else(|| {
            Error::input(
                "no source database: pass --source URL, or set TIDEMARK_SOURCE or DATABASE_URL",
            )
        })?;
    Ok(DbUrl::parse(&url)?)
}

/// `DATABASE_URL`, unless unset or empty.
fn database_url_env() -> Option<String> {
    std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty())
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

/// Whether progress is shown: on a terminal, not with `--json`.
fn shows_progress(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

/// A spinner counting rows, with a whole-number rate: `⠁ seeding 12,000 rows (48,211 rows/s) 0s`.
fn spinner(label: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    let rows = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let n = state.pos();
        let _ = write!(
            w,
            "{} {}",
            HumanCount(n),
            if n == 1 { "row" } else { "rows" }
        );
    };
    let rate = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{} rows/s", HumanCount(state.per_sec().round() as u64));
    };
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {rows} ({rate}) {elapsed}") {
        pb.set_style(style.with_key("rows", rows).with_key("rate", rate));
    }
    pb.set_message(label.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// A progress spinner on a terminal, nothing otherwise.
fn bar(json: bool, label: &str) -> Option<ProgressBar> {
    shows_progress(json).then(|| spinner(label))
}

/// The demo's output: one spinner per step while it runs, replaced by the step's line once it
/// is done (the spinner is cleared first, so no stale spinner line stays on screen).
struct DemoUi {
    progress: bool,
    json: bool,
    current: std::sync::Mutex<Option<(&'static str, ProgressBar)>>,
}

impl DemoUi {
    fn new(json: bool) -> Self {
        DemoUi {
            progress: shows_progress(json),
            json,
            current: std::sync::Mutex::new(None),
        }
    }

    /// Clears the running step's spinner, if any.
    fn clear(&self) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, b)) = current.take() {
            b.finish_and_clear();
        }
    }
}

impl Observer for DemoUi {
    fn progress(&self, step: &'static str, rows: u64) {
        if !self.progress {
            return;
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match &*current {
            Some((name, b)) if *name == step => b.set_position(rows),
            _ => {
                if let Some((_, old)) = current.take() {
                    old.finish_and_clear();
                }
                let b = spinner(step);
                b.set_position(rows);
                *current = Some((step, b));
            }
        }
    }

    fn step_done(&self, step: &Step) {
        self.clear();
        if self.json {
            return;
        }
        let mut text = format!(
            "  {:<13} {:>7.2} s  {}",
            step.name, step.seconds, step.detail
        );
        for l in &step.lines {
            text.push_str("\n      ");
            text.push_str(l);
        }
        println!("{text}");
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Demo {
            dir,
            out,
            rows,
            serve,
            listen,
        } => {
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
            let ui = DemoUi::new(cli.json);
            let report = demo::run(&opts, &ui).await;
            ui.clear();
            let report = report?;
            if cli.json {
                print_json(&report)?;
            } else {
                println!(
                    "done in {:.2} s: replaying {} gives exactly the table ({}); {} holds the same accounts as the source",
                    report.seconds,
                    report.out_dir.display(),
                    count(report.live_rows as u64, "live row"),
                    report.replica
                );
            }
            if *serve {
                crate::demo::serve(&report, listen, cli.json).await?;
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
                    println!(
                        "{} already has {}; not seeding",
                        seed::USERS,
                        count(present, "row")
                    );
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
                    "seeded {} (ids {}..{}) into {} in {:.2} s",
                    count(report.rows, "user"),
                    report.first_id,
                    report.last_id,
                    report.table,
                    report.seconds
                );
            }
        }
        Command::Setup {
            table,
            strategy,
            cursor_column,
            deleted_column,
            created_column,
            force,
        } => {
            let db = open_source(&cli, false).await?;
            let tables = select_tables(db.as_ref(), std::slice::from_ref(table)).await?;
            let mut infos = Vec::with_capacity(tables.len());
            for table in &tables {
                infos.push(db.describe(table).await?);
            }
            let options = SetupOptions {
                cursor_column: cursor_column.clone(),
                deleted_column: deleted_column.clone(),
                created_column: created_column.clone(),
            };
            // Every table is checked before anything is written, tidemark's state tables
            // included.
            for info in &infos {
                capture::check_setup(info, strategy, &options)?;
                capture::check_setup_privileges(db.as_ref(), info, strategy, &options).await?;
            }
            let state = open_state(&cli, &db).await?;
            let mut outcomes = Vec::with_capacity(infos.len());
            for info in &infos {
                outcomes.push(
                    lifecycle::setup_table(db.as_ref(), &state, info, strategy, &options, *force)
                        .await?,
                );
            }
            if cli.json && outcomes.len() == 1 {
                print_json(&outcomes.first())?;
            } else if cli.json {
                print_json(&outcomes)?;
            }
            for (outcome, table) in outcomes.iter().zip(&tables) {
                if cli.json {
                    continue;
                }
                if let Some(old) = &outcome.replaced {
                    println!(
                        "{table}: replaced the {} capture through {} (removed {})",
                        old.strategy,
                        capture_through(old),
                        if outcome.removed.is_empty() {
                            "nothing".to_string()
                        } else {
                            outcome.removed.join(", ")
                        }
                    );
                }
                print_positions_removed(table, &outcome.positions_removed);
                let report = &outcome.report;
                let mut did: Vec<String> = report
                    .installed
                    .iter()
                    .map(|i| format!("installed {i}"))
                    .collect();
                did.extend(report.reused.iter().map(|i| format!("uses existing {i}")));
                println!(
                    "{table}: {} capture through {} (soft deletes: {}, creation time: {}); {}",
                    report.config.strategy,
                    capture_through(&report.config),
                    report.config.deleted_column.as_deref().unwrap_or("none"),
                    report.config.created_column.as_deref().unwrap_or("none"),
                    did.join(", ")
                );
            }
        }
        Command::Teardown { table, force } => {
            let db = open_source(&cli, false).await?;
            let table = db.resolve_table(&TableName::parse(table)?).await?;
            let state = open_state(&cli, &db).await?;
            let info = db.describe(&table).await?;
            let outcome = lifecycle::teardown_table(db.as_ref(), &state, &info, *force).await?;
            if cli.json {
                print_json(&outcome)?;
            } else if outcome.removed.is_empty() {
                println!("{table}: nothing to remove (not set up)");
            } else {
                println!("{table}: removed {}", outcome.removed.join(", "));
                print_positions_removed(&table, &outcome.positions_removed);
            }
        }
        Command::Export {
            consumer,
            mode,
            table,
            out,
            margin_ms,
            format,
        } => {
            let consumer = ConsumerId::new(consumer)?;
            let db = open_source(&cli, false).await?;
            let table = db.resolve_table(&TableName::parse(table)?).await?;
            let state = open_state(&cli, &db).await?;
            let exporter =
                Exporter::new(db, state).with_margin(std::time::Duration::from_millis(*margin_ms));
            let req = ExportRequest::new(consumer, table, (*mode).into(), out.clone())
                .with_format(*format);
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
                        "{} export of {} for {}: {} to {} ({} ms)",
                        outcome.mode,
                        outcome.table,
                        outcome.consumer,
                        count(outcome.rows, "row"),
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
                        "{} / {}: {}, {}, watermark {}",
                        c.consumer,
                        c.table,
                        count(c.files as u64, "file"),
                        count(c.rows, "row"),
                        c.watermark.time()
                    );
                }
                for p in &report.problems {
                    eprintln!("problem: {p}");
                }
            }
            if !report.problems.is_empty() {
                return Err(Error::Verify(format!(
                    "{} in {}",
                    count(report.problems.len() as u64, "problem"),
                    dir.display()
                ))
                .into());
            }
            if !cli.json {
                println!(
                    "ok: {} verified in {}",
                    count(report.chains.len() as u64, "chain"),
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
                for r in &summary.resyncs {
                    eprintln!("note: {r}");
                }
                println!(
                    "replicated {} into {} table {}: {} ({}, {}) in {}, {:.2} s{}",
                    summary.table,
                    summary.target,
                    summary.target_table,
                    count(summary.rows, "row"),
                    count(summary.upserts, "upsert"),
                    count(summary.deletes, "delete"),
                    count(summary.commits, "commit"),
                    summary.seconds,
                    if summary.retries > 0 {
                        format!(", {} retried", count(summary.retries, "transient failure"))
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
                            "{}: {} {} every consumer has passed ({}); {} left",
                            r.table,
                            if *dry_run { "would delete" } else { "deleted" },
                            count(r.deleted, "change-log entry"),
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
                source: cli.source.clone().or_else(database_url_env),
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
                insecure: args.insecure.then_some(true),
                public_status: args.public_status.then_some(true),
                tls_cert: args.tls_cert.clone(),
                tls_key: args.tls_key.clone(),
            };
            let config = ServeConfig::resolve(file, flags)?
                .with_admin_token(std::env::var("TIDEMARK_ADMIN_TOKEN").ok().as_deref())?;
            let json = cli.json;
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            serve::serve(config, &move |addr: std::net::SocketAddr| {
                if json {
                    println!("{}", serde_json::json!({ "listening": addr.to_string() }));
                } else {
                    println!("tidemark serve: listening on {scheme}://{addr}");
                }
            })
            .await?;
        }
        Command::Token { action } => token(&cli, action).await?,
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

/// What a capture reads changes through, in words: `change log tidemark_log_users` for
/// triggers, `cursor column updated_at` otherwise.
fn capture_through(config: &crate::state::TableConfig) -> String {
    if config.strategy == "trigger" {
        format!("change log {}", config.cursor_column)
    } else {
        format!("cursor column {}", config.cursor_column)
    }
}

/// Says whose positions a forced teardown or setup removed.
fn print_positions_removed(table: &TableName, users: &[crate::state::TableUser]) {
    if users.is_empty() {
        return;
    }
    let names: Vec<String> = users.iter().map(ToString::to_string).collect();
    println!(
        "{table}: removed the positions of {}; their next runs start from a full read",
        names.join(", ")
    );
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
            // The position belongs to the current set-up, which can only serve times it
            // covers: a change log (or version stamps) starts when its set-up was complete.
            let config = state.table_config(&table).await?;
            if let Some(c) = &config {
                if let Some(since) = c.set_up_at.filter(|s| c.strategy != "timestamp" && at < *s) {
                    return Err(Error::input(format!(
                        "{consumer} / {table}: {at} is before the current {} capture of {table} \
                         was set up ({since}); it has no record of the changes made before \
                         then, so a watermark there would miss them; nothing was changed. \
                         Take a full export instead (--mode full)",
                        c.strategy
                    ))
                    .into());
                }
            }
            let position = Position::Timestamp {
                cursor: at,
                setup: None,
            }
            .with_setup(config.as_ref().and_then(|c| c.setup_id.as_deref()));
            let lock = state.lock(&consumer, &table).await?;
            let result = state.set_watermark(&consumer, &table, &position).await;
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
                println!("{consumer} / {table}: watermark reset; the consumer starts again with a full export");
            } else {
                println!("{consumer} / {table}: had no watermark");
            }
        }
    }
    Ok(())
}

async fn token(cli: &Cli, action: &TokenAction) -> anyhow::Result<()> {
    use crate::state::tokens::TokenScope;
    let scope = match action {
        TokenAction::Create {
            consumer: Some(c), ..
        } => Some(TokenScope::Consumer(ConsumerId::new(c)?)),
        TokenAction::Create { .. } => Some(TokenScope::Admin),
        _ => None,
    };
    let db = open_source(cli, false).await?;
    let state = open_state(cli, &db).await?;
    match action {
        TokenAction::Create { .. } => {
            let scope = scope.unwrap_or(TokenScope::Admin);
            let (record, token) = state.create_token(scope).await?;
            if cli.json {
                let mut v = serde_json::to_value(&record)?;
                if let Some(map) = v.as_object_mut() {
                    map.insert("token".into(), token.into());
                }
                print_json(&v)?;
            } else {
                // The token alone on stdout (for scripts); the rest for people on stderr.
                println!("{token}");
                eprintln!(
                    "created token {} ({}); it is shown only this once: only its hash is stored",
                    record.id,
                    scope_text(&record.scope)
                );
            }
        }
        TokenAction::List => {
            let tokens = state.tokens().await?;
            if cli.json {
                print_json(&tokens)?;
            } else if tokens.is_empty() {
                println!("no tokens: `serve` accepts requests on loopback addresses only");
            } else {
                for t in &tokens {
                    println!(
                        "{}  {}  created {}",
                        t.id,
                        scope_text(&t.scope),
                        t.created_at
                    );
                }
            }
        }
        TokenAction::Revoke { id } => {
            if !state.revoke_token(id).await? {
                return Err(Error::input(format!(
                    "no token {id:?}; `tidemark token list` shows the ids"
                ))
                .into());
            }
            if cli.json {
                print_json(&serde_json::json!({ "revoked": id }))?;
            } else {
                println!("revoked token {id}");
            }
        }
    }
    Ok(())
}

fn scope_text(scope: &crate::state::tokens::TokenScope) -> String {
    match scope {
        crate::state::tokens::TokenScope::Admin => "admin".into(),
        crate::state::tokens::TokenScope::Consumer(c) => format!("consumer {c}"),
    }
}

/// What a user is told when a transaction open at the start of a read holds changes back.
fn held_back_note(since: &crate::db::Timestamp) -> String {
    format!(
        "changes since {since} are held back: a write transaction that was open when this run \
         started has not committed yet; a later run delivers them once it ends"
    )
}
