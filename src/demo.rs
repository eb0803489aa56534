//! `tidemark demo`: the whole story on embedded SQLite in a few seconds — seed users, register
//! the table, full export, a burst of application changes, delta export, verify the manifest
//! chain, and check that replaying the files gives exactly the table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::capture::{self, Mode, SetupOptions};
use crate::db::{connect, ConnectOptions, DbUrl};
use crate::error::{Error, Result};
use crate::export::{manifest, replay, ExportOutcome, ExportRequest, Exporter};
use crate::ident::{ConsumerId, Ident};
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
}

/// The demo's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    pub database: String,
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
    for name in ["demo.db", "demo.db-wal", "demo.db-shm", "demo.db-journal"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir_all(dir.join("demo.db.tidemark-locks"));
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
    let mut steps = Vec::new();
    let mut done = |name: &'static str, detail: String, t: Instant| {
        let step = Step {
            name,
            detail,
            seconds: t.elapsed().as_secs_f64(),
        };
        observer.step_done(&step);
        steps.push(step);
    };

    let t = Instant::now();
    let seeded = seed::seed_users(
        db.as_ref(),
        opts.rows,
        Some(&|n| observer.progress("seed", n)),
    )
    .await?;
    done("seed", format!("{} users", seeded.rows), t);

    let t = Instant::now();
    let state = StateStore::open(Arc::clone(&db)).await?;
    let table = crate::ident::TableName::unqualified(Ident::new(seed::USERS)?);
    let info = db.describe(&table).await?;
    let report = capture::setup(db.as_ref(), &info, "timestamp", &SetupOptions::default()).await?;
    state.save_table_config(&table, &report.config).await?;
    done(
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
        Some(f) => format!("{} rows → {}", o.rows, f.display()),
        None => "no changes".to_string(),
    };

    let t = Instant::now();
    let full = export(Mode::Full).await?;
    done("full export", describe(&full), t);

    let burst = Burst {
        inserts: (opts.rows / 50).max(1),
        updates: (opts.rows / 20).max(1),
        soft_deletes: (opts.rows / 100).max(1),
        seed: 2026,
    };
    let t = Instant::now();
    seed::apply_burst(db.as_ref(), &burst).await?;
    done(
        "burst",
        format!(
            "{} inserts, {} updates, {} soft deletes by the application",
            burst.inserts, burst.updates, burst.soft_deletes
        ),
        t,
    );

    let t = Instant::now();
    let delta = export(Mode::Delta).await?;
    done("delta export", describe(&delta), t);

    let t = Instant::now();
    let verified = manifest::verify(&out)?;
    if !verified.problems.is_empty() {
        return Err(Error::Verify(verified.problems.join("; ")));
    }
    let files: usize = verified.chains.iter().map(|c| c.files).sum();
    done(
        "verify",
        format!("{files} files: chain, checksums, row counts ok"),
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
    done(
        "replay",
        format!(
            "full + delta = table: {} live rows, identical",
            live.rows.len()
        ),
        t,
    );

    Ok(DemoReport {
        database: path.display().to_string(),
        out_dir: out,
        steps,
        live_rows: live.rows.len(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}
