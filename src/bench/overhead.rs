//! The write overhead of capture: the same application writes — 100,000 inserts, 50,000
//! updates and 10,000 hard deletes in transactions of 1,000 rows, run by the database's own
//! shell (`sqlite3`, `psql`) so that only the database's own work is timed — on a users table
//! without capture, with the `trigger` strategy's triggers and with the `version` strategy's;
//! medians of rounds that take the three in turn. On PostgreSQL also pgbench's single-row
//! TPC-B transactions, without and with capture on `pgbench_accounts`.

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

/// What capture costs writers on PostgreSQL: bulk statements (the same 160 transactions of
/// 1,000-row INSERT … SELECT, UPDATE and DELETE as on SQLite, run by `psql`) and pgbench's
/// single-row TPC-B transactions, without capture and with each strategy's triggers.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PgCaptureOverhead {
    pub plain: Measured,
    pub trigger: Measured,
    pub version: Measured,
    /// pgbench TPC-B transactions per second, `-c 4 -j 2`, without capture and with the
    /// trigger and version strategies on `pgbench_accounts`.
    pub pgbench_seconds: u64,
    pub pgbench_plain_tps: f64,
    pub pgbench_trigger_tps: f64,
    pub pgbench_version_tps: f64,
}

impl PgCaptureOverhead {
    /// Lines for the report.
    pub fn render(&self) -> String {
        let r = |m: &Measured| m.seconds / self.plain.seconds.max(1e-9);
        let tps = |v: f64| v / self.pgbench_plain_tps.max(1e-9);
        format!(
            "\nwrite overhead of capture on PostgreSQL (100,000 inserts, 50,000 updates, 10,000 \
             deletes as 1,000-row statements, one per transaction, by psql; median of 3 \
             interleaved rounds)\n\
             {:<48} {:>8.3} s\n\
             {:<48} {:>8.3} s  {:.2}× (target ≤ 1.6×)\n\
             {:<48} {:>8.3} s  {:.2}×\n\
             psql's own CPU: {:.2} s / {:.2} s / {:.2} s (no capture / trigger / version): the \
             rest of each wall time is the server's work and the round trips\n\
             pgbench TPC-B, -c 4 -j 2, {} s each, median of 3 interleaved rounds: no capture {:.0} tps; trigger {:.0} tps ({:.2}× \
             the TPS, target ≥ 0.91× i.e. ≤ 1.1× the time); version {:.0} tps ({:.2}×)\n",
            "no capture",
            self.plain.seconds,
            "trigger strategy (statement-level, transition tables)",
            self.trigger.seconds,
            r(&self.trigger),
            "version strategy (version column)",
            self.version.seconds,
            r(&self.version),
            self.plain.cpu_seconds,
            self.trigger.cpu_seconds,
            self.version.cpu_seconds,
            self.pgbench_seconds,
            self.pgbench_plain_tps,
            self.pgbench_trigger_tps,
            tps(self.pgbench_trigger_tps),
            self.pgbench_version_tps,
            tps(self.pgbench_version_tps),
        )
    }
}

/// The bulk workload for PostgreSQL on `table`.
fn pg_workload(table: &str, inserts: u64, updates: u64, deletes: u64) -> String {
    const CHUNK: u64 = 1000;
    let mut s = String::new();
    let mut lo = 1;
    while lo <= inserts {
        let hi = (lo + CHUNK - 1).min(inserts);
        s += &format!(
            "BEGIN;\nINSERT INTO {table} (id, name, email) SELECT x, 'user ' || x, \
             'user' || x || '@example.com' FROM generate_series({lo}, {hi}) x;\nCOMMIT;\n"
        );
        lo = hi + 1;
    }
    let mut lo = 1;
    while lo <= updates {
        let hi = (lo + CHUNK - 1).min(updates);
        s += &format!(
            "BEGIN;\nUPDATE {table} SET name = name || '.', updated_at = now() \
             WHERE id BETWEEN {lo} AND {hi};\nCOMMIT;\n"
        );
        lo = hi + 1;
    }
    let mut lo = inserts - deletes.min(inserts) + 1;
    while lo <= inserts {
        let hi = (lo + CHUNK - 1).min(inserts);
        s += &format!("BEGIN;\nDELETE FROM {table} WHERE id BETWEEN {lo} AND {hi};\nCOMMIT;\n");
        lo = hi + 1;
    }
    s
}

/// Sets `table` up for capture by `strategy` and registers it, as `tidemark setup` does.
async fn capture_table(
    db: &std::sync::Arc<dyn crate::db::Database>,
    state: &StateStore,
    table: &crate::ident::TableName,
    strategy: &str,
) -> Result<()> {
    let info = db.describe(table).await?;
    let report = capture::setup(db.as_ref(), &info, strategy, &SetupOptions::default()).await?;
    state.save_table_config(table, &report.config).await
}

/// Runs the PostgreSQL workloads on `url` (a database of the bench's server).
pub async fn run_postgres(
    url: &DbUrl,
    dir: &Path,
    pgbench_seconds: u64,
    log: &(dyn Fn(&str) + Sync),
) -> Result<PgCaptureOverhead> {
    const ROUNDS: usize = 3;
    let (inserts, updates, deletes) = (100_000, 50_000, 10_000);
    let db = connect(url, ConnectOptions::default()).await?;
    let state = StateStore::open(std::sync::Arc::clone(&db)).await?;
    let variants = [None, Some("trigger"), Some("version")];
    let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); variants.len()];
    for round in 1..=ROUNDS {
        log(&format!(
            "PostgreSQL capture write overhead: round {round} of {ROUNDS} (no capture, trigger, \
             version)"
        ));
        for (strategy, measured) in variants.iter().zip(&mut runs) {
            let name = format!("capture_{}_{round}", strategy.unwrap_or("plain"));
            let table = crate::ident::TableName::unqualified(crate::ident::Ident::new(&name)?);
            db.execute(
                &format!(
                    "CREATE TABLE {name} (id BIGINT PRIMARY KEY, name TEXT NOT NULL, \
                     email TEXT NOT NULL UNIQUE, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
                     updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
                     is_deleted BOOLEAN NOT NULL DEFAULT FALSE)"
                ),
                &[],
            )
            .await?;
            db.execute(&format!("CREATE INDEX ON {name} (updated_at)"), &[])
                .await?;
            if let Some(strategy) = strategy {
                capture_table(&db, &state, &table, strategy).await?;
            }
            let script = dir.join(format!("{name}.sql"));
            std::fs::write(&script, pg_workload(&name, inserts, updates, deletes))
                .map_err(|e| Error::io("write", &script, e))?;
            let mut c = Command::new("psql");
            c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
                .arg(url.as_str())
                .arg("-f")
                .arg(&script);
            measured.push(measure_once(&mut c)?);
        }
    }
    let median = |i: usize| summarize(&runs[i]);
    let mut report = PgCaptureOverhead {
        plain: median(0),
        trigger: median(1),
        version: median(2),
        pgbench_seconds,
        ..PgCaptureOverhead::default()
    };
    let pgbench = |args: &[&str]| -> Result<String> {
        let out = Command::new("pgbench")
            .args(args)
            .arg(url.as_str())
            .output()
            .map_err(|e| Error::Runtime(format!("bench: cannot run pgbench: {e}")))?;
        if !out.status.success() {
            return Err(Error::Runtime(format!(
                "bench: pgbench failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let tps = |text: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let seconds = pgbench_seconds.to_string();
    let run = ["-c", "4", "-j", "2", "-T", seconds.as_str(), "-n"];
    let accounts =
        crate::ident::TableName::unqualified(crate::ident::Ident::new("pgbench_accounts")?);
    // Rounds that take the three variants in turn (as the bulk workload does): whatever else
    // the machine does weighs on all of them alike; the median TPS of each.
    let mut tps_runs: [Vec<f64>; 3] = Default::default();
    for round in 1..=ROUNDS {
        for (i, strategy) in [None, Some("trigger"), Some("version")]
            .into_iter()
            .enumerate()
        {
            log(&format!(
                "pgbench with {} capture, round {round} of {ROUNDS}",
                strategy.unwrap_or("no")
            ));
            pgbench(&["-i", "-s", "1", "-q"])?;
            if let Some(strategy) = strategy {
                capture_table(&db, &state, &accounts, strategy).await?;
            }
            if let Some(runs) = tps_runs.get_mut(i) {
                runs.push(tps(&pgbench(&run)?));
            }
            // pgbench -i drops its tables; the log and registration of the set-up go too (the
            // next round's variant may have none).
            if let Some(config) = state.table_config(&accounts).await? {
                let info = db.describe(&accounts).await?;
                capture::teardown(db.as_ref(), &info, &config).await?;
                state.remove_table_config(&accounts).await?;
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let [plain, trigger, version] = &mut tps_runs;
    report.pgbench_plain_tps = median(plain);
    report.pgbench_trigger_tps = median(trigger);
    report.pgbench_version_tps = median(version);
    Ok(report)
}
