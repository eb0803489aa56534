//! Everything the command line shows, in one place: each command's output value rendered as
//! text for people or as JSON for scripts (`--json`, pretty-printed on stdout), the lines shown
//! while a command runs, errors (`error: …` on stderr, or one line `{"error": "…"}` with
//! `--json`, database passwords redacted) and exit codes: 0 ok, 1 runtime failure (or a
//! verdict: lagging consumers, a chain that does not verify), 2 bad usage or bad input.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::capture::lifecycle::{SetupOutcome, TeardownOutcome};
use crate::capture::prune::PruneReport;
use crate::db::Timestamp;
use crate::demo::{DemoReport, Step};
use crate::error::Error;
use crate::export::manifest::VerifyReport;
use crate::export::ExportOutcome;
use crate::ident::{ConsumerId, TableName};
use crate::monitor::{self, StatusReport};
use crate::replicate::Summary;
use crate::seed::SeedReport;
use crate::state::tokens::{TokenRecord, TokenScope};
use crate::state::{TableConfig, TableUser, Watermark};
use crate::words::count;

/// What a command produced, to be shown once it is done.
pub enum Output {
    /// Nothing more to show (`serve` ran until stopped; `demo --serve` showed its report
    /// before serving).
    Nothing,
    Demo(DemoReport),
    Seed(SeedOutput),
    /// One outcome per selected table.
    Setup(Vec<(TableName, SetupOutcome)>),
    Teardown(TableName, TeardownOutcome),
    Export(ExportOutcome),
    Watermark(WatermarkOutput),
    Verify(PathBuf, VerifyReport),
    Replicate(Vec<Summary>),
    /// `replicate --target nats://…`: one summary per table published.
    Publish(Vec<Summary>),
    Status(StatusReport),
    Prune {
        reports: Vec<PruneReport>,
        dry_run: bool,
    },
    Token(TokenOutput),
    #[cfg(feature = "bench")]
    Bench(Box<crate::bench::BenchReport>),
}

/// What `seed` did.
pub enum SeedOutput {
    Seeded(SeedReport),
    /// `--if-empty` and the table has this many rows already.
    NotEmpty {
        table: &'static str,
        rows: u64,
    },
}

/// What a `watermark` action did.
pub enum WatermarkOutput {
    Get {
        consumer: ConsumerId,
        table: TableName,
        watermark: Option<Watermark>,
    },
    Set {
        at: Timestamp,
        consumer: ConsumerId,
        table: TableName,
        watermark: Option<Watermark>,
    },
    Reset {
        consumer: ConsumerId,
        table: TableName,
        removed: bool,
    },
}

/// What a `token` action did.
pub enum TokenOutput {
    Created { record: TokenRecord, token: String },
    List(Vec<TokenRecord>),
    Revoked(String),
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// One value as JSON when there is one, else the list.
fn print_json_one_or_many<T: serde::Serialize>(values: &[T]) -> anyhow::Result<()> {
    match values {
        [one] => print_json(one),
        many => print_json(&many),
    }
}

impl Output {
    /// Shows the output: JSON on stdout with `json`, else text (notes on stderr).
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        match self {
            Output::Nothing => {}
            Output::Demo(report) if json => print_json(report)?,
            Output::Demo(report) => println!(
                "done in {:.2} s: replaying {} gives exactly the table ({}); {} holds the same accounts as the source",
                report.seconds,
                report.out_dir.display(),
                count(report.live_rows as u64, "live row"),
                report.replica
            ),
            Output::Seed(SeedOutput::NotEmpty { table, rows }) => {
                println!("{table} already has {}; not seeding", count(*rows, "row"))
            }
            Output::Seed(SeedOutput::Seeded(report)) if json => print_json(report)?,
            Output::Seed(SeedOutput::Seeded(report)) => println!(
                "seeded {} (ids {}..{}) into {} in {:.2} s",
                count(report.rows, "user"),
                report.first_id,
                report.last_id,
                report.table,
                report.seconds
            ),
            Output::Setup(outcomes) if json => {
                let outcomes: Vec<&SetupOutcome> = outcomes.iter().map(|(_, o)| o).collect();
                print_json_one_or_many(&outcomes)?
            }
            Output::Setup(outcomes) => {
                for (table, outcome) in outcomes {
                    setup_text(table, outcome);
                }
            }
            Output::Teardown(_, outcome) if json => print_json(outcome)?,
            Output::Teardown(table, outcome) => {
                if outcome.removed.is_empty() {
                    println!("{table}: nothing to remove (not set up)");
                } else {
                    println!("{table}: removed {}", outcome.removed.join(", "));
                    positions_removed(table, &outcome.positions_removed);
                }
            }
            Output::Export(outcome) if json => print_json(outcome)?,
            Output::Export(outcome) => export_text(outcome),
            Output::Watermark(w) => watermark(w, json)?,
            Output::Verify(_, report) if json => print_json(report)?,
            Output::Verify(dir, report) => {
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
                if report.problems.is_empty() {
                    println!(
                        "ok: {} verified in {}",
                        count(report.chains.len() as u64, "chain"),
                        dir.display()
                    );
                }
            }
            Output::Replicate(summaries) if json => print_json_one_or_many(summaries)?,
            Output::Replicate(summaries) => {
                for summary in summaries {
                    replicate_text(summary);
                }
            }
            Output::Publish(summaries) if json => print_json_one_or_many(summaries)?,
            Output::Publish(summaries) => {
                for summary in summaries {
                    publish_text(summary);
                }
            }
            Output::Status(report) if json => print_json(report)?,
            Output::Status(report) => print!("{}", monitor::render(report)),
            Output::Prune { reports, .. } if json => print_json(reports)?,
            Output::Prune { reports, dry_run } => prune_text(reports, *dry_run),
            Output::Token(t) => token(t, json)?,
            #[cfg(feature = "bench")]
            Output::Bench(report) if json => print_json(report)?,
            #[cfg(feature = "bench")]
            Output::Bench(report) => println!("{}", report.render()),
        }
        Ok(())
    }

    /// The verdict an output carries, shown after it: `status` fails (exit 1) when anything
    /// lags or cannot be read, `verify` when a chain has problems.
    pub fn verdict(&self) -> Result<(), Error> {
        match self {
            Output::Status(report) if report.health != "ok" => Err(Error::Unhealthy {
                verdict: report.health.to_string(),
                detail: report.problems().join("; "),
            }),
            Output::Verify(dir, report) if !report.problems.is_empty() => {
                Err(Error::Verify(format!(
                    "{} in {}",
                    count(report.problems.len() as u64, "problem"),
                    dir.display()
                )))
            }
            _ => Ok(()),
        }
    }
}

fn setup_text(table: &TableName, outcome: &SetupOutcome) {
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
    positions_removed(table, &outcome.positions_removed);
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

fn export_text(outcome: &ExportOutcome) {
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

fn replicate_text(summary: &Summary) {
    summary_text(
        summary,
        &format!(
            "replicated {} into {} table {}",
            summary.table, summary.target, summary.target_table
        ),
        "row",
        "commit",
    );
}

fn publish_text(summary: &Summary) {
    summary_text(
        summary,
        &format!("published {} to {}", summary.table, summary.target),
        "message",
        "interval",
    );
}

/// One run's line: what moved where, how much, and what was retried or held back.
fn summary_text(summary: &Summary, what: &str, unit: &str, commit: &str) {
    for r in &summary.resyncs {
        eprintln!("note: {r}");
    }
    println!(
        "{what}: {} ({}, {}) in {}, {:.2} s{}",
        count(summary.rows, unit),
        count(summary.upserts, "upsert"),
        count(summary.deletes, "delete"),
        count(summary.commits, commit),
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

fn prune_text(reports: &[PruneReport], dry_run: bool) {
    if reports.is_empty() {
        println!("no registered tables to prune");
    }
    for r in reports {
        match &r.note {
            Some(note) => println!("{}: {note}", r.table),
            None => println!(
                "{}: {} {} every consumer has passed ({}); {} left",
                r.table,
                if dry_run { "would delete" } else { "deleted" },
                count(r.deleted, "change-log entry"),
                r.consumers.join(", "),
                r.remaining
            ),
        }
    }
}

fn watermark(w: &WatermarkOutput, json: bool) -> anyhow::Result<()> {
    match w {
        WatermarkOutput::Get { watermark, .. } | WatermarkOutput::Set { watermark, .. } if json => {
            print_json(watermark)?
        }
        WatermarkOutput::Get {
            consumer,
            table,
            watermark: Some(w),
        } => println!(
            "{consumer} / {table}: {} (moved {})",
            w.position.time(),
            w.updated_at
        ),
        WatermarkOutput::Get {
            consumer, table, ..
        } => println!(
            "{consumer} / {table}: no watermark (the next export starts from the beginning)"
        ),
        WatermarkOutput::Set {
            at,
            consumer,
            table,
            ..
        } => println!("{consumer} / {table}: watermark set to {at}"),
        WatermarkOutput::Reset {
            consumer,
            table,
            removed,
        } if json => print_json(
            &serde_json::json!({ "consumer": consumer, "table": table, "reset": removed }),
        )?,
        WatermarkOutput::Reset {
            consumer,
            table,
            removed: true,
        } => println!(
            "{consumer} / {table}: watermark reset; the consumer starts again with a full export"
        ),
        WatermarkOutput::Reset {
            consumer, table, ..
        } => println!("{consumer} / {table}: had no watermark"),
    }
    Ok(())
}

fn token(t: &TokenOutput, json: bool) -> anyhow::Result<()> {
    match t {
        TokenOutput::Created { record, token } if json => {
            let mut v = serde_json::to_value(record)?;
            if let Some(map) = v.as_object_mut() {
                map.insert("token".into(), token.clone().into());
            }
            print_json(&v)?
        }
        TokenOutput::Created { record, token } => {
            // The token alone on stdout (for scripts); the rest for people on stderr.
            println!("{token}");
            eprintln!(
                "created token {} ({}); it is shown only this once: only its hash is stored",
                record.id,
                scope_text(&record.scope)
            );
        }
        TokenOutput::List(tokens) if json => print_json(tokens)?,
        TokenOutput::List(tokens) if tokens.is_empty() => {
            println!("no tokens: `serve` accepts requests on loopback addresses only")
        }
        TokenOutput::List(tokens) => {
            for t in tokens {
                println!(
                    "{}  {}  created {}",
                    t.id,
                    scope_text(&t.scope),
                    t.created_at
                );
            }
        }
        TokenOutput::Revoked(id) if json => print_json(&serde_json::json!({ "revoked": id }))?,
        TokenOutput::Revoked(id) => println!("revoked token {id}"),
    }
    Ok(())
}

fn scope_text(scope: &TokenScope) -> String {
    match scope {
        TokenScope::Admin => "admin".into(),
        TokenScope::Consumer(c) => format!("consumer {c}"),
    }
}

/// What a capture reads changes through, in words: `change log tidemark_log_users` for
/// triggers, `cursor column updated_at` otherwise.
fn capture_through(config: &TableConfig) -> String {
    if config.strategy == "trigger" {
        format!("change log {}", config.cursor_column)
    } else {
        format!("cursor column {}", config.cursor_column)
    }
}

/// Says whose positions a forced teardown or setup removed.
fn positions_removed(table: &TableName, users: &[TableUser]) {
    if users.is_empty() {
        return;
    }
    let names: Vec<String> = users.iter().map(ToString::to_string).collect();
    println!(
        "{table}: removed the positions of {}; their next runs start from a full read",
        names.join(", ")
    );
}

/// What a user is told when a transaction open at the start of a read holds changes back.
fn held_back_note(since: &Timestamp) -> String {
    format!(
        "changes since {since} are held back: a write transaction that was open when this run \
         started has not committed yet; a later run delivers them once it ends"
    )
}

// Lines shown while a command runs.

/// The demo's first line (text only).
pub fn demo_header(rows: u64, dir: &std::path::Path) {
    println!(
        "tidemark demo: {rows} users on embedded SQLite in {}",
        dir.display()
    );
}

/// One finished step of the demo (text only).
pub fn demo_step(step: &Step) {
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

/// `serve`'s line once it listens (scripts and tests read the address from it).
pub fn listening(json: bool, scheme: &str, addr: std::net::SocketAddr) {
    if json {
        println!("{}", serde_json::json!({ "listening": addr.to_string() }));
    } else {
        println!("tidemark serve: listening on {scheme}://{addr}");
    }
}

/// A progress line of the benchmark (stderr, text only).
#[cfg(feature = "bench")]
pub fn log_line(json: bool, line: &str) {
    if !json {
        eprintln!("{line}");
    }
}

// Errors and exit codes.

/// An error for scripts (`--json`): one line `{"error": "…"}` on stderr.
fn print_error_json(line: &str) {
    eprintln!("{}", serde_json::json!({ "error": line }));
}

/// Shows a command-line parsing error (or `--help`, `--version`) and gives its exit code: 2
/// for bad usage, 0 for help and version.
pub fn usage(e: clap::Error) -> ExitCode {
    if e.use_stderr() && std::env::args().any(|a| a == "--json") {
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or_default();
        print_error_json(first.strip_prefix("error: ").unwrap_or(first));
        return ExitCode::from(2);
    }
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// Shows a failure before any command ran (exit 1).
pub fn startup_failure(json: bool, line: &str) -> ExitCode {
    if json {
        print_error_json(line);
    } else {
        eprintln!("error: {line}");
    }
    ExitCode::from(1)
}

/// Shows a command's error, each cause once, and gives its exit code: 2 when any cause is bad
/// input, else 1.
pub fn failure(e: &anyhow::Error, json: bool) -> ExitCode {
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
    // The last guard before a message is shown: database URLs in it lose their passwords.
    let line = crate::db::redact_text(&line);
    if json {
        print_error_json(&line);
    } else {
        eprintln!("error: {line}");
    }
    let input = e
        .chain()
        .any(|c| c.downcast_ref::<Error>().is_some_and(Error::is_input_error));
    ExitCode::from(if input { 2 } else { 1 })
}
