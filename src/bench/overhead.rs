//! The write overhead of capture: the same application writes — 100,000 inserts, 50,000
//! updates and 10,000 hard deletes in transactions of 1,000 rows, run by the `sqlite3` shell
//! so that only the database's own work is timed — on a SQLite users table without capture,
//! with the `trigger` strategy's triggers and with the `version` strategy's; medians of five
//! rounds that take the three in turn.

use std::path::Path;
use std::process::Command;

use super::{measure_once, summarize, Measured};
use crate::capture::{self, SetupOptions};
use crate::db::{connect, ConnectOptions, DbUrl};
use crate::error::{Error, Result};
use crate::seed;
use crate::state::StateStore;

/// What capture costs the writer.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CaptureOverhead {
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    pub plain: Measured,
    pub trigger: Measured,
    pub version: Measured,
}

impl CaptureOverhead {
    /// Lines for the report.
    pub fn render(&self) -> String {
        let r = |m: &Measured| m.seconds / self.plain.seconds.max(1e-9);
        format!(
            "\nwrite overhead of capture on SQLite ({} inserts, {} updates, {} deletes; 1,000 rows \
             per transaction; sqlite3 shell, WAL, synchronous=NORMAL; median of 5 interleaved rounds)\n\
             {:<48} {:>8.3} s\n\
             {:<48} {:>8.3} s  {:.2}× (target ≤ 1.6×)\n\
             {:<48} {:>8.3} s  {:.2}×\n",
            self.inserts,
            self.updates,
            self.deletes,
            "no capture",
            self.plain.seconds,
            "trigger strategy (change log with before images)",
            self.trigger.seconds,
            r(&self.trigger),
            "version strategy (version column)",
            self.version.seconds,
            r(&self.version),
        )
    }
}

/// The workload as a `sqlite3` script.
fn workload(inserts: u64, updates: u64, deletes: u64) -> String {
    const CHUNK: u64 = 1000;
    let now = "strftime('%Y-%m-%dT%H:%M:%f000Z','now')";
    let mut s = String::from("PRAGMA journal_mode=WAL;\nPRAGMA synchronous=NORMAL;\n");
    let mut lo = 1;
    while lo <= inserts {
        let hi = (lo + CHUNK - 1).min(inserts);
        s += &format!(
            "BEGIN;\nINSERT INTO users (id, name, email) WITH RECURSIVE c(x) AS \
             (SELECT {lo} UNION ALL SELECT x + 1 FROM c WHERE x < {hi}) \
             SELECT x, 'user ' || x, 'user' || x || '@example.com' FROM c;\nCOMMIT;\n"
        );
        lo = hi + 1;
    }
    let mut lo = 1;
    while lo <= updates {
        let hi = (lo + CHUNK - 1).min(updates);
        s += &format!(
            "BEGIN;\nUPDATE users SET name = name || '.', updated_at = {now} \
             WHERE id BETWEEN {lo} AND {hi};\nCOMMIT;\n"
        );
        lo = hi + 1;
    }
    let mut lo = inserts - deletes.min(inserts) + 1;
    while lo <= inserts {
        let hi = (lo + CHUNK - 1).min(inserts);
        s += &format!("BEGIN;\nDELETE FROM users WHERE id BETWEEN {lo} AND {hi};\nCOMMIT;\n");
        lo = hi + 1;
    }
    s
}

/// An empty users table set up with `strategy` (none: no capture), as a template file.
async fn template(path: &Path, strategy: Option<&str>) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let url = DbUrl::parse(&format!("sqlite://{}", path.display()))?;
    let db = connect(
        &url,
        ConnectOptions {
            create_if_missing: true,
            max_connections: Some(1),
        },
    )
    .await?;
    let table = seed::create_users_table(db.as_ref()).await?;
    if let Some(strategy) = strategy {
        let state = StateStore::open(std::sync::Arc::clone(&db)).await?;
        let info = db.describe(&table).await?;
        let report = capture::setup(db.as_ref(), &info, strategy, &SetupOptions::default()).await?;
        state.save_table_config(&table, &report.config).await?;
    }
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)", &[])
        .await
        .ok();
    Ok(())
}

/// Runs the workload on fresh copies of each template, five rounds taking each variant in
/// turn, so that whatever else the machine does weighs on all of them alike; the median of each.
pub async fn run(dir: &Path, log: &(dyn Fn(&str) + Sync)) -> Result<CaptureOverhead> {
    const ROUNDS: usize = 5;
    let (inserts, updates, deletes) = (100_000, 50_000, 10_000);
    let script = dir.join("capture-workload.sql");
    std::fs::write(&script, workload(inserts, updates, deletes))
        .map_err(|e| Error::io("write", &script, e))?;
    let variants = [None, Some("trigger"), Some("version")];
    let mut templates = Vec::new();
    for strategy in variants {
        let name = strategy.unwrap_or("plain");
        let tpl = dir.join(format!("capture-{name}.template.db"));
        template(&tpl, strategy).await?;
        templates.push((tpl, dir.join(format!("capture-{name}.db"))));
    }
    let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); variants.len()];
    for round in 1..=ROUNDS {
        log(&format!(
            "capture write overhead: round {round} of {ROUNDS} (no capture, trigger, version)"
        ));
        for ((tpl, work), measured) in templates.iter().zip(&mut runs) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", work.display()));
            }
            std::fs::copy(tpl, work).map_err(|e| Error::io("copy", tpl, e))?;
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg("sqlite3 \"$0\" < \"$1\" > /dev/null")
                .arg(work)
                .arg(&script);
            measured.push(measure_once(&mut c)?);
        }
    }
    let median = |i: usize| summarize(&runs[i]);
    Ok(CaptureOverhead {
        inserts,
        updates,
        deletes,
        plain: median(0),
        trigger: median(1),
        version: median(2),
    })
}
