//! The replication benchmark: `tidemark replicate` (the real binary, under GNU time) moving
//! bursts of changes on a `trigger` table — 62.5% inserts, 31.25% updates, 6.25% deletes, so
//! 100,000 / 50,000 / 10,000 at 160,000 — SQLite→SQLite and PostgreSQL→PostgreSQL: three bursts
//! at the benchmark's size (median time), and one of ten times the size, whose peak memory must
//! not follow (a tenth of the size would not fill the replicator's batch pipeline, so it is the
//! larger run that shows growth). "Changes" are the source's change-log rows a run applied; the
//! delta it applies nets them per key (one row per changed key).

use std::path::Path;

use crate::capture::{self, SetupOptions};
use crate::db::{connect, field, ConnectOptions, Database, DbUrl};
use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::seed;
use crate::state::StateStore;

use super::{measure_once, summarize, tidemark, Measured};

/// One measured replication.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ReplicationRun {
    /// Change-log rows replicated.
    pub changes: u64,
    /// Rows in the target afterwards (checked equal to the source's live rows).
    pub target_rows: u64,
    pub run: Measured,
    pub changes_per_second: f64,
}

/// What the replication benchmark measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicationBench {
    pub sqlite: ReplicationRun,
    /// Ten times the changes: peak memory must not follow.
    pub sqlite_tenfold: ReplicationRun,
    pub postgres: ReplicationRun,
    pub postgres_tenfold: ReplicationRun,
}

impl ReplicationBench {
    /// Lines for the report.
    pub fn render(&self) -> String {
        let line = |name: String, r: &ReplicationRun, note: String| {
            format!(
                "{name:<48} {:>8.3} s {:>8.1} MB  {:>9.0} changes/s {note}\n",
                r.run.seconds, r.run.peak_rss_mb, r.changes_per_second
            )
        };
        let mut s = String::from(
            "\ntidemark replicate (trigger table; changes = change-log rows applied)\n",
        );
        s += &line(
            format!("SQLite→SQLite, {} changes", self.sqlite.changes),
            &self.sqlite,
            "(target ≥ 400,000/s; a Python replicator: 37,000/s)".into(),
        );
        s += &line(
            format!("SQLite→SQLite, {} changes", self.sqlite_tenfold.changes),
            &self.sqlite_tenfold,
            format!(
                "memory {:.2}× at 10× the changes (flat = 1.0)",
                self.sqlite_tenfold.run.peak_rss_mb / self.sqlite.run.peak_rss_mb.max(1e-9)
            ),
        );
        s += &line(
            format!("PostgreSQL→PostgreSQL, {} changes", self.postgres.changes),
            &self.postgres,
            String::new(),
        );
        s += &line(
            format!(
                "PostgreSQL→PostgreSQL, {} changes",
                self.postgres_tenfold.changes
            ),
            &self.postgres_tenfold,
            format!(
                "memory {:.2}× at 10× the changes (flat = 1.0)",
                self.postgres_tenfold.run.peak_rss_mb / self.postgres.run.peak_rss_mb.max(1e-9)
            ),
        );
        s
    }
}

async fn open(url: &DbUrl) -> Result<std::sync::Arc<dyn Database>> {
    connect(
        url,
        ConnectOptions {
            create_if_missing: true,
            max_connections: None,
        },
    )
    .await
}

async fn count(db: &dyn Database, sql: &str) -> Result<u64> {
    let rows = db.query(sql, &[]).await?;
    Ok(rows
        .first()
        .and_then(|r| field(r, 0))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// `bursts` bursts of `changes` changes, each replicated from `source` to `target` (both empty
/// databases at first) by its own `tidemark replicate` run: the median time, the largest peak.
pub async fn replication(
    source: &DbUrl,
    target: &DbUrl,
    changes: u64,
    bursts: usize,
) -> Result<ReplicationRun> {
    let db = open(source).await?;
    let table = seed::create_users_table(db.as_ref()).await?;
    let state = StateStore::open(std::sync::Arc::clone(&db)).await?;
    let info = db.describe(&table).await?;
    let report = capture::setup(db.as_ref(), &info, "trigger", &SetupOptions::default()).await?;
    state.save_table_config(&table, &report.config).await?;
    let replicate = |bench: bool| {
        let mut args = vec!["replicate", "--target", target.as_str()];
        if bench {
            args.extend(["--batch-size", "5000"]);
        }
        tidemark(source, &args)
    };
    // The first run copies the (empty) table and stores the position the bursts start from.
    measure_once(&mut replicate(false)?)?;

    let inserts = changes * 100 / 160;
    let t = db.dialect().quote_table(&table);
    let now = db.dialect().now_expr();
    let log = Ident::new(&report.config.cursor_column)?;
    let log_rows = format!("SELECT count(*) FROM {}", db.dialect().quote(&log));
    let mut runs = Vec::with_capacity(bursts);
    let mut logged = 0;
    for _ in 0..bursts {
        let before = count(db.as_ref(), &log_rows).await?;
        let seeded = seed::seed_users(db.as_ref(), inserts, None).await?;
        let burst = format!("id >= {}", seeded.first_id);
        // Every second new user renamed, then every tenth deleted (100k/50k/10k at 160k).
        db.execute(
            &format!(
                "UPDATE {t} SET name = name || '.', updated_at = {now} WHERE {burst} AND id % 2 = 0"
            ),
            &[],
        )
        .await?;
        db.execute(
            &format!("DELETE FROM {t} WHERE {burst} AND id % 10 = 1"),
            &[],
        )
        .await?;
        logged = count(db.as_ref(), &log_rows).await? - before;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        runs.push(measure_once(&mut replicate(true)?)?);
    }
    let run = summarize(&runs);

    let dst = open(target).await?;
    let target_rows = count(dst.as_ref(), &format!("SELECT count(*) FROM {t}")).await?;
    let live = count(
        db.as_ref(),
        &format!("SELECT count(*) FROM {t} WHERE NOT is_deleted"),
    )
    .await?;
    if target_rows != live {
        return Err(Error::Runtime(format!(
            "bench: the replica has {target_rows} rows, the source {live} live rows"
        )));
    }
    Ok(ReplicationRun {
        changes: logged,
        target_rows,
        run,
        changes_per_second: logged as f64 / run.seconds.max(1e-9),
    })
}

/// Bursts at the benchmark's size (the median is reported); the tenfold size, which shows
/// memory, runs once.
const BURSTS: usize = 3;

/// The whole replication benchmark: SQLite files in `dir`, PostgreSQL databases from `pg`
/// (four fresh ones: source and target at two sizes).
pub async fn run(
    dir: &Path,
    pg: [DbUrl; 4],
    changes: u64,
    log: &(dyn Fn(&str) + Sync),
) -> Result<ReplicationBench> {
    let sqlite = |name: &str| {
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        DbUrl::parse(&format!("sqlite://{}", p.display()))
    };
    log(&format!("replication SQLite→SQLite, {changes} changes"));
    let sqlite_base = replication(
        &sqlite("repl-src.db")?,
        &sqlite("repl-dst.db")?,
        changes,
        BURSTS,
    )
    .await?;
    log(&format!(
        "replication SQLite→SQLite, {} changes",
        changes * 10
    ));
    let sqlite_tenfold = replication(
        &sqlite("repl-src-tenfold.db")?,
        &sqlite("repl-dst-tenfold.db")?,
        changes * 10,
        1,
    )
    .await?;
    let [a, b, c, d] = pg;
    log(&format!(
        "replication PostgreSQL→PostgreSQL, {changes} changes"
    ));
    let postgres = replication(&a, &b, changes, BURSTS).await?;
    log(&format!(
        "replication PostgreSQL→PostgreSQL, {} changes",
        changes * 10
    ));
    let postgres_tenfold = replication(&c, &d, changes * 10, 1).await?;
    Ok(ReplicationBench {
        sqlite: sqlite_base,
        sqlite_tenfold,
        postgres,
        postgres_tenfold,
    })
}
