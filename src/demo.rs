//! `tidemark demo`: the whole story on embedded SQLite in a few seconds. First exports: seed
//! users, register the table (`timestamp`), full export, a burst of application changes, delta
//! export, verify the manifest chain, and check that replaying the files gives exactly the
//! table. Then capture and replication: `trigger` capture on a second table, a first
//! replication into a second SQLite database, a burst with hard deletes and a primary-key
//! change, two before/after images from the changes view, replication of the burst, a
//! checksum compare of source and replica, and the `status` report.

use crate::words::count;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::capture::{self, Mode, SetupOptions};
use crate::db::{connect, field, ConnectOptions, Database, DbUrl};
use crate::error::{Error, Result};
use crate::export::{manifest, replay, ExportOutcome, ExportRequest, Exporter};
use crate::ident::{ConsumerId, Ident};
use crate::monitor;
use crate::replicate::{ReplicateOptions, Replicator};
use crate::seed::{self, Burst};
use crate::state::StateStore;

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The demo's directory (database and, by default, output).
    pub dir: PathBuf,
    /// Where export files go (default: `DIR/output`).
    pub out: Option<PathBuf>,
    /// Users to seed.
    pub rows: u64,
}

/// One finished step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub name: &'static str,
    pub detail: String,
    pub seconds: f64,
    /// What the step shows beyond its one line (change images, the status report).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
}

/// The demo's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    pub database: String,
    /// The second SQLite database the `trigger` table was replicated into.
    pub replica: String,
    pub out_dir: PathBuf,
    pub steps: Vec<Step>,
    pub live_rows: usize,
    pub seconds: f64,
}

/// Receives progress while the demo runs.
pub trait Observer: Send + Sync {
    /// Rows done so far in the current step.
    fn progress(&self, step: &'static str, rows: u64);
    /// A step finished.
    fn step_done(&self, step: &Step);
}

/// The finished steps, each told to the observer as it ends.
struct Log<'a> {
    observer: &'a dyn Observer,
    steps: Vec<Step>,
}

impl Log<'_> {
    fn done(&mut self, name: &'static str, detail: String, t: Instant) {
        self.with_lines(name, detail, Vec::new(), t);
    }

    fn with_lines(&mut self, name: &'static str, detail: String, lines: Vec<String>, t: Instant) {
        let step = Step {
            name,
            detail,
            seconds: t.elapsed().as_secs_f64(),
            lines,
        };
        self.observer.step_done(&step);
        self.steps.push(step);
    }
}

const MARKER: &str = ".tidemark-demo";

/// Removes what an earlier demo left in `dir` (only files the demo makes).
fn reset_dir(dir: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let marker = dir.join(MARKER);
    let ours = marker.exists()
        || std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    if !ours {
        return Err(Error::input(format!(
            "{} is not empty and was not made by tidemark demo; pass --dir with a new directory",
            dir.display()
        )));
    }
    for db in ["demo.db", "replica.db"] {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(dir.join(format!("{db}{suffix}")));
        }
        let _ = std::fs::remove_dir_all(dir.join(format!("{db}.tidemark-locks")));
    }
    if out.exists() {
        for entry in std::fs::read_dir(out)
            .map_err(|e| Error::io("read", out, e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let exported = ["full_", "incremental_", "delta_"]
                .iter()
                .any(|p| name.starts_with(p));
            if exported || crate::sink::file::is_temporary(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    std::fs::write(&marker, b"made by tidemark demo\n").map_err(|e| Error::io("write", &marker, e))
}

/// Runs the demo.
pub async fn run(opts: &DemoOptions, observer: &dyn Observer) -> Result<DemoReport> {
    let t0 = Instant::now();
    let out = opts.out.clone().unwrap_or_else(|| opts.dir.join("output"));
    reset_dir(&opts.dir, &out)?;
    let path = opts.dir.join("demo.db");
    let url = DbUrl::parse(&format!("sqlite://{}", path.display()))?;
    let db = connect(
        &url,
        ConnectOptions {
            create_if_missing: true,
            max_connections: None,
        },
    )
    .await?;
    // WAL lets exports read while the application writes.
    db.execute("PRAGMA journal_mode=WAL", &[]).await?;
    let mut log = Log {
        observer,
        steps: Vec::new(),
    };

    let t = Instant::now();
    let seeded = seed::seed_users(
        db.as_ref(),
        opts.rows,
        Some(&|n| observer.progress("seed", n)),
    )
    .await?;
    log.done("seed", count(seeded.rows, "user"), t);

    let t = Instant::now();
    let state = StateStore::open(Arc::clone(&db)).await?;
    let table = crate::ident::TableName::unqualified(Ident::new(seed::USERS)?);
    let info = db.describe(&table).await?;
    let report = capture::setup(db.as_ref(), &info, "timestamp", &SetupOptions::default()).await?;
    state.save_table_config(&table, &report.config).await?;
    log.done(
        "setup",
        format!(
            "timestamp capture on {table} ({})",
            report
                .installed
                .iter()
                .map(|i| format!("installed {i}"))
                .chain(report.reused.iter().map(|i| format!("uses existing {i}")))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        t,
    );

    let exporter = Exporter::new(Arc::clone(&db), state.clone());
    let consumer = ConsumerId::new("demo")?;
    let export = |mode: Mode| {
        let req = ExportRequest::new(consumer.clone(), table.clone(), mode, out.clone());
        let exporter = exporter.clone();
        async move {
            let step = if mode == Mode::Full {
                "full export"
            } else {
                "delta export"
            };
            exporter
                .export(&req, Some(&|n| observer.progress(step, n)))
                .await
        }
    };
    let describe = |o: &ExportOutcome| match &o.file {
        Some(f) => format!("{} → {}", count(o.rows, "row"), f.display()),
        None => "no changes".to_string(),
    };

    let t = Instant::now();
    let full = export(Mode::Full).await?;
    log.done("full export", describe(&full), t);

    let burst = Burst {
        inserts: (opts.rows / 50).max(1),
        updates: (opts.rows / 20).max(1),
        soft_deletes: (opts.rows / 100).max(1),
        seed: 2026,
    };
    let t = Instant::now();
    seed::apply_burst(db.as_ref(), &burst).await?;
    log.done(
        "burst",
        format!(
            "{}, {}, {} by the application",
            count(burst.inserts, "insert"),
            count(burst.updates, "update"),
            count(burst.soft_deletes, "soft delete")
        ),
        t,
    );

    let t = Instant::now();
    let delta = export(Mode::Delta).await?;
    log.done("delta export", describe(&delta), t);

    let t = Instant::now();
    let verified = manifest::verify(&out)?;
    if !verified.problems.is_empty() {
        return Err(Error::Verify(verified.problems.join("; ")));
    }
    let files: usize = verified.chains.iter().map(|c| c.files).sum();
    log.done(
        "verify",
        format!(
            "{}: chain, checksums, row counts ok",
            count(files as u64, "file")
        ),
        t,
    );

    let t = Instant::now();
    let replayed = replay::replay(&out, &consumer, &table, &info.primary_key)?;
    let live = replay::table_image(db.as_ref(), &state, &table).await?;
    let diff = replay::differences(&live, &replayed, 5);
    if !diff.is_empty() {
        return Err(Error::Verify(format!(
            "replaying the exports does not give the table: {}",
            diff.join("; ")
        )));
    }
    log.done(
        "replay",
        format!(
            "full + delta = table: {}, identical",
            count(live.rows.len() as u64, "live row")
        ),
        t,
    );

    let replica = capture_story(&db, &state, opts, &mut log).await?;

    Ok(DemoReport {
        database: path.display().to_string(),
        replica: replica.display().to_string(),
        out_dir: out,
        steps: log.steps,
        live_rows: live.rows.len(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Serves the demo database (`tidemark demo --serve`) until Ctrl-C or SIGTERM, after printing
/// the status page's address.
pub async fn serve(report: &DemoReport, listen: &str, json: bool) -> Result<()> {
    use crate::serve::{FileConfig, ServeConfig};
    let flags = FileConfig {
        source: Some(format!("sqlite://{}", report.database)),
        listen: Some(listen.to_string()),
        out: Some(report.out_dir.clone()),
        ..FileConfig::default()
    };
    let config = ServeConfig::resolve(FileConfig::default(), flags)?;
    crate::serve::serve(config, &move |addr: std::net::SocketAddr| {
        if json {
            println!(
                "{}",
                serde_json::json!({ "status_page": format!("http://{addr}/") })
            );
        } else {
            println!("status page: http://{addr}/ (Ctrl-C stops)");
        }
    })
    .await
}

/// The second story's table: accounts taken from the users, captured by triggers.
const ACCOUNTS: &str = "accounts";

/// `trigger` capture, replication into a second SQLite database, before/after images, a
/// checksum compare and the status report. Returns the replica's path.
async fn capture_story(
    db: &Arc<dyn Database>,
    state: &StateStore,
    opts: &DemoOptions,
    log: &mut Log<'_>,
) -> Result<PathBuf> {
    let table = crate::ident::TableName::unqualified(Ident::new(ACCOUNTS)?);
    let n = (opts.rows / 5).max(100);

    let t = Instant::now();
    db.execute(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, \
         email TEXT NOT NULL, balance INTEGER NOT NULL, updated_at TEXT)",
        &[],
    )
    .await?;
    let filled = db
        .execute(
            "INSERT INTO accounts (id, owner, email, balance, updated_at) \
             SELECT id, name, email, (id * 37) % 10000, updated_at FROM users WHERE id <= ?",
            &[(n as i64).into()],
        )
        .await?;
    let info = db.describe(&table).await?;
    let report = capture::setup(db.as_ref(), &info, "trigger", &SetupOptions::default()).await?;
    state.save_table_config(&table, &report.config).await?;
    log.done(
        "trigger setup",
        format!(
            "{filled} accounts; trigger capture installed {}",
            report.installed.join(", ")
        ),
        t,
    );

    let replica = opts.dir.join("replica.db");
    let target = DbUrl::parse(&format!("sqlite://{}", replica.display()))?;
    let replicate = || async {
        let mut r = Replicator::new(
            Arc::clone(db),
            state.clone(),
            target.clone(),
            ReplicateOptions::new(table.clone()),
        )?;
        r.run(std::future::pending()).await
    };
    let t = Instant::now();
    let first = replicate().await?;
    log.done(
        "replicate",
        format!(
            "{} rows copied into {} (the table did not exist there)",
            first.upserts,
            replica.display()
        ),
        t,
    );

    // The application: updates, hard deletes, one primary-key change and new accounts.
    let t = Instant::now();
    let now = "strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')";
    let updated = db
        .execute(
            &format!(
                "UPDATE accounts SET balance = balance + 100, updated_at = {now} WHERE id % 7 = 0"
            ),
            &[],
        )
        .await?;
    let deleted = db
        .execute("DELETE FROM accounts WHERE id % 50 = 3", &[])
        .await?;
    let (old_key, new_key) = (12i64, n as i64 + 1_000_000);
    db.execute(
        &format!("UPDATE accounts SET id = ?, updated_at = {now} WHERE id = ?"),
        &[new_key.into(), old_key.into()],
    )
    .await?;
    let inserted = db
        .execute(
            &format!(
                "INSERT INTO accounts (id, owner, email, balance, updated_at) \
                 SELECT id, name, email, 0, {now} FROM users WHERE id > ? AND id <= ?"
            ),
            &[
                (n as i64).into(),
                (n as i64 + (n / 50).max(1) as i64).into(),
            ],
        )
        .await?;
    log.done(
        "burst",
        format!(
            "{updated} updates, {deleted} hard deletes, key {old_key} → {new_key}, {inserted} inserts"
        ),
        t,
    );

    let t = Instant::now();
    let view = format!("tidemark_changes_{ACCOUNTS}");
    let mut lines = Vec::new();
    for (what, filter) in [
        (
            "key change",
            "operation = 'UPDATE' AND old_key_1 <> new_key_1",
        ),
        ("hard delete", "operation = 'DELETE'"),
    ] {
        let rows = db
            .query(
                &format!(
                    "SELECT change_id, operation, old_key_1, new_key_1, before_image, after_image \
                     FROM {view} WHERE {filter} ORDER BY change_id LIMIT 1"
                ),
                &[],
            )
            .await?;
        let Some(r) = rows.first() else {
            return Err(Error::Verify(format!("{view} shows no {what}")));
        };
        let f = |i| field(r, i).unwrap_or("NULL");
        lines.push(format!(
            "change {} {} ({what}) key {} → {}",
            f(0),
            f(1),
            f(2),
            f(3)
        ));
        lines.push(format!("  before {}", f(4)));
        lines.push(format!("  after  {}", f(5)));
    }
    log.with_lines(
        "images",
        format!("two changes with before and after images from the view {view}:"),
        lines,
        t,
    );

    let t = Instant::now();
    let second = replicate().await?;
    log.done(
        "replicate",
        format!(
            "{} changes applied: {} upserts, {} deletes",
            second.rows, second.upserts, second.deletes
        ),
        t,
    );

    let t = Instant::now();
    let source_image = replay::table_image(db.as_ref(), state, &table).await?;
    let target_db = connect(&target, ConnectOptions::default()).await?;
    let target_state = StateStore::open(Arc::clone(&target_db)).await?;
    // The replica is read as the source's registration says (same key, same columns).
    target_state
        .save_table_config(&table, &report.config)
        .await?;
    let target_image = replay::table_image(target_db.as_ref(), &target_state, &table).await?;
    let (a, b) = (checksum(&source_image), checksum(&target_image));
    if a != b {
        let diff = replay::differences(&source_image, &target_image, 5);
        return Err(Error::Verify(format!(
            "the replica differs from the source: {}",
            diff.join("; ")
        )));
    }
    log.done(
        "compare",
        format!(
            "source and replica: {} rows each, sha256 {} on both sides",
            source_image.rows.len(),
            a.get(..16).unwrap_or(&a)
        ),
        t,
    );

    let t = Instant::now();
    let status = monitor::collect(
        db.as_ref(),
        state,
        monitor::Scope {
            thresholds: monitor::Thresholds::default(),
            table_totals: true,
        },
    )
    .await?;
    log.with_lines(
        "status",
        format!("health {}", status.health),
        monitor::render(&status)
            .lines()
            .map(str::to_string)
            .collect(),
        t,
    );
    Ok(replica)
}

/// A checksum of a table image: every row, in key order, column by column.
fn checksum(image: &replay::Image) -> String {
    let mut h = Sha256::new();
    for c in &image.columns {
        h.update(c.as_bytes());
        h.update([0x1f]);
    }
    for values in image.rows.values() {
        h.update([0x1e]);
        for v in values {
            h.update(v.as_bytes());
            h.update([0x1f]);
        }
    }
    hex::encode(h.finalize())
}
