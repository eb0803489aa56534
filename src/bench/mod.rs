//! `tidemark bench`: the project's benchmark. Runs the real binary as a child process and the
//! tools users would otherwise run (`psql \copy`, `sqlite3 -csv`) on the same data and the same
//! SELECT, and reports wall time and peak memory (from GNU `time`) as ratios: full export from
//! PostgreSQL, memory at two table sizes, incremental export cost against the number of changes
//! and against the table size, full export from SQLite; and the HTTP service ([`http`]).

pub mod http;
pub mod nats;
pub mod overhead;
pub mod replicate;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capture::{self, SetupOptions};
use crate::db::{connect, ConnectOptions, Database, DbUrl};
use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::seed;
use crate::state::StateStore;
use crate::testkit::PgServer;

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub rows: u64,
    pub pg_url: Option<String>,
    pub dir: Option<PathBuf>,
    /// Changes in the replication benchmark.
    pub changes: u64,
    /// Run only the replication benchmark.
    pub replication_only: bool,
    /// Run only the write overhead of capture.
    pub capture_only: bool,
}

/// One measured command: median wall time and the largest peak RSS of its runs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Measured {
    pub seconds: f64,
    pub peak_rss_mb: f64,
    /// CPU time (user + system) of the measured process itself (for a client such as `psql`,
    /// what the client spent; the rest of the wall time is the server's and the wait).
    pub cpu_seconds: f64,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub rows: u64,
    pub pg_seed_seconds: f64,
    pub pg_psql_copy: Measured,
    pub pg_full_export: Measured,
    pub pg_full_export_tenth: Measured,
    pub pg_incremental_1pct: Measured,
    pub pg_incremental_01pct: Measured,
    pub pg_incremental_same_changes_tenth_table: Measured,
    pub sqlite_cli: Measured,
    pub sqlite_full_export: Measured,
    pub capture: overhead::CaptureOverhead,
    pub pg_capture: overhead::PgCaptureOverhead,
    pub http: http::HttpBench,
    pub replication: Option<replicate::ReplicationBench>,
}

impl BenchReport {
    /// A readable table with ratios and the targets.
    pub fn render(&self) -> String {
        if self.rows == 0 {
            // A partial run (--replication-only, --capture-only): what it measured.
            let mut s = String::new();
            if self.capture.inserts > 0 {
                s += &self.capture.render();
                s += &self.pg_capture.render();
            }
            if let Some(r) = &self.replication {
                s += &r.render();
            }
            return s;
        }
        let r = |a: &Measured, b: &Measured| a.seconds / b.seconds.max(1e-9);
        let n = self.rows;
        let line = |name: &str, m: &Measured, note: String| {
            format!(
                "{name:<48} {:>8.3} s {:>8.1} MB  {note}\n",
                m.seconds, m.peak_rss_mb
            )
        };
        let mut s =
            format!("tidemark bench, {n} users (median of 3 runs; peak RSS of the process)\n");
        s += &format!("{:<48} {:>10} {:>11}\n", "", "wall", "peak RSS");
        s += &line(
            "psql \\copy (SELECT …) TO file CSV HEADER",
            &self.pg_psql_copy,
            String::new(),
        );
        s += &line(
            "tidemark export --mode full (PostgreSQL)",
            &self.pg_full_export,
            format!(
                "{:.2}× psql (target ≤ 1.10×)",
                r(&self.pg_full_export, &self.pg_psql_copy)
            ),
        );
        s += &line(
            &format!("tidemark export --mode full, {} rows", n / 10),
            &self.pg_full_export_tenth,
            format!(
                "memory {:.2}× the {n}-row run (flat = 1.0; target ≤ 32 MB)",
                self.pg_full_export.peak_rss_mb / self.pg_full_export_tenth.peak_rss_mb.max(1e-9)
            ),
        );
        s += &line(
            &format!("incremental, {} changes (1%)", n / 100),
            &self.pg_incremental_1pct,
            format!(
                "{:.3}× the full export",
                r(&self.pg_incremental_1pct, &self.pg_full_export)
            ),
        );
        s += &line(
            &format!("incremental, {} changes (0.1%)", n / 1000),
            &self.pg_incremental_01pct,
            format!(
                "{:.2}× the 1% run",
                r(&self.pg_incremental_01pct, &self.pg_incremental_1pct)
            ),
        );
        s += &line(
            &format!("incremental, {} changes in a {}-row table", n / 100, n / 10),
            &self.pg_incremental_same_changes_tenth_table,
            format!(
                "{:.2}× the same changes in the {n}-row table (flat in table size = 1.0)",
                r(
                    &self.pg_incremental_same_changes_tenth_table,
                    &self.pg_incremental_1pct
                )
            ),
        );
        s += &line(
            "sqlite3 -csv -header (same SELECT)",
            &self.sqlite_cli,
            String::new(),
        );
        s += &line(
            "tidemark export --mode full (SQLite)",
            &self.sqlite_full_export,
            format!(
                "{:.2}× sqlite3",
                r(&self.sqlite_full_export, &self.sqlite_cli)
            ),
        );
        s += &format!(
            "seeding {n} users into PostgreSQL: {:.2} s\n",
            self.pg_seed_seconds
        );
        s += &self.capture.render();
        s += &self.pg_capture.render();
        s += &self.http.render();
        if let Some(r) = &self.replication {
            s += &r.render();
        }
        s
    }
}

/// Runs `cmd` to completion under GNU time and measures it. (Measuring with `wait4` from this
/// process would not do: a child spawned here carries this process's RSS high-water mark into
/// its own `ru_maxrss` through `exec`; `time` is small, so its child's figure is the target's.)
fn measure_once(cmd: &mut Command) -> Result<Measured> {
    const TIME: &str = "/usr/bin/time";
    if !Path::new(TIME).exists() {
        return Err(Error::Runtime(
            "bench needs GNU time at /usr/bin/time (Debian package `time`)".into(),
        ));
    }
    let mut timed = Command::new(TIME);
    timed
        .arg("-f")
        .arg("tidemark-bench-rss %M %U %S")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let t0 = Instant::now();
    let out = timed
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::Runtime(format!("bench: cannot run {cmd:?}: {e}")))?;
    let seconds = t0.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(Error::Runtime(format!("bench: {cmd:?} failed: {err}")));
    }
    let figures: Vec<f64> = err
        .lines()
        .filter_map(|l| l.strip_prefix("tidemark-bench-rss "))
        .next_back()
        .map(|v| {
            v.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let [kb, user, system] = figures[..] else {
        return Err(Error::Runtime(format!(
            "bench: no peak RSS and CPU time from time: {err}"
        )));
    };
    Ok(Measured {
        seconds,
        peak_rss_mb: kb / 1024.0,
        cpu_seconds: user + system,
    })
}

/// Median time and largest peak RSS of several runs.
fn summarize(all: &[Measured]) -> Measured {
    let mut times: Vec<f64> = all.iter().map(|m| m.seconds).collect();
    times.sort_by(f64::total_cmp);
    let mut cpu: Vec<f64> = all.iter().map(|m| m.cpu_seconds).collect();
    cpu.sort_by(f64::total_cmp);
    Measured {
        seconds: times.get(times.len() / 2).copied().unwrap_or(0.0),
        peak_rss_mb: all.iter().map(|m| m.peak_rss_mb).fold(0.0, f64::max),
        cpu_seconds: cpu.get(cpu.len() / 2).copied().unwrap_or(0.0),
    }
}

/// `runs` runs of the command `make` builds.
fn measure(runs: usize, mut make: impl FnMut(usize) -> Result<Command>) -> Result<Measured> {
    let all = (0..runs)
        .map(|i| measure_once(&mut make(i)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(summarize(&all))
}

/// `tidemark export` of consumer `consumer` in `mode` into `out`.
fn export_cmd(source: &DbUrl, consumer: &str, mode: &str, out: &Path) -> Result<Command> {
    let out = out.to_string_lossy();
    tidemark(
        source,
        &[
            "export",
            "--consumer",
            consumer,
            "--mode",
            mode,
            "--out",
            &out,
        ],
    )
}

fn tidemark(source: &DbUrl, args: &[&str]) -> Result<Command> {
    let exe = std::env::current_exe().map_err(|e| Error::Runtime(format!("bench: {e}")))?;
    let mut c = Command::new(exe);
    c.arg("--source").arg(source.as_str()).args(args);
    c.env("RUST_LOG", "error");
    Ok(c)
}

/// Three full exports of `source` by the binary, each for a new consumer.
fn full_exports(source: &DbUrl, out: &Path) -> Result<Measured> {
    measure(3, |i| export_cmd(source, &format!("full-{i}"), "full", out))
}

async fn prepare(url: &DbUrl, rows: u64) -> Result<(Arc<dyn Database>, StateStore, f64)> {
    let db = connect(
        url,
        ConnectOptions {
            create_if_missing: true,
            max_connections: None,
        },
    )
    .await?;
    let t = Instant::now();
    seed::seed_users(db.as_ref(), rows, None).await?;
    let seconds = t.elapsed().as_secs_f64();
    let state = StateStore::open(Arc::clone(&db)).await?;
    let table = crate::ident::TableName::unqualified(Ident::new(seed::USERS)?);
    let info = db.describe(&table).await?;
    let report = capture::setup(db.as_ref(), &info, "timestamp", &SetupOptions::default()).await?;
    state.save_table_config(&table, &report.config).await?;
    db.execute("ANALYZE", &[]).await.ok();
    Ok((db, state, seconds))
}

/// Changes every `every`-th user (a name change stamped by the database clock).
async fn change_every(db: &dyn Database, every: i64) -> Result<()> {
    let d = db.dialect();
    db.execute(
        &format!(
            "UPDATE users SET name = name || '.', updated_at = {} WHERE id % {every} = 0",
            d.now_expr()
        ),
        &[],
    )
    .await?;
    Ok(())
}

/// An incremental export of consumer `c` after `change`, measured once per run: each run
/// starts from a full export, applies the change and waits past the capture margin.
async fn incremental(
    url: &DbUrl,
    db: &dyn Database,
    out: &Path,
    every: i64,
    tag: &str,
) -> Result<Measured> {
    let mut all = Vec::new();
    for run in 0..3 {
        let consumer = format!("{tag}-{run}");
        measure_once(&mut export_cmd(url, &consumer, "full", out)?)?;
        change_every(db, every).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        all.push(measure_once(&mut export_cmd(
            url,
            &consumer,
            "incremental",
            out,
        )?)?);
    }
    Ok(summarize(&all))
}

/// Runs the benchmark; `log` receives progress lines.
pub async fn run(opts: &BenchOptions, log: &(dyn Fn(&str) + Sync)) -> Result<BenchReport> {
    let tmp = tempfile::Builder::new()
        .prefix("tidemark-bench.")
        .tempdir()
        .map_err(|e| Error::Runtime(format!("bench: {e}")))?;
    let dir = opts.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let out = dir.join("out");
    let users = crate::ident::TableName::unqualified(Ident::new(seed::USERS)?);
    let rows = opts.rows.max(1000);

    let server;
    let mut repl_dbs: Vec<DbUrl> = Vec::new();
    let (big_url, small_url) = match &opts.pg_url {
        Some(u) => {
            let base = DbUrl::parse(u)?;
            let admin = connect(&base, ConnectOptions::default()).await?;
            for name in ["tidemark_bench_big", "tidemark_bench_small"]
                .into_iter()
                .chain(REPLICATION_DBS)
            {
                admin
                    .execute(&format!("DROP DATABASE IF EXISTS {name}"), &[])
                    .await?;
                admin
                    .execute(&format!("CREATE DATABASE {name}"), &[])
                    .await?;
            }
            let with_db = |name: &str| {
                let s = base.as_str();
                let cut = s
                    .rfind('/')
                    .filter(|&i| i > s.find("//").unwrap_or(0) + 1)
                    .unwrap_or(s.len());
                DbUrl::parse(&format!("{}/{name}", &s[..cut]))
            };
            repl_dbs = REPLICATION_DBS
                .iter()
                .map(|n| with_db(n))
                .collect::<Result<Vec<_>>>()?;
            (
                with_db("tidemark_bench_big")?,
                with_db("tidemark_bench_small")?,
            )
        }
        None => {
            log("starting a throwaway PostgreSQL server");
            server = PgServer::start()?;
            for _ in REPLICATION_DBS {
                repl_dbs.push(server.fresh_database().await?);
            }
            (
                server.fresh_database().await?,
                server.fresh_database().await?,
            )
        }
    };

    let repl_dbs: [DbUrl; 4] = repl_dbs
        .try_into()
        .map_err(|_| Error::Runtime("bench: replication databases missing".into()))?;
    if opts.replication_only {
        let replication = replicate::run(&dir, repl_dbs, opts.changes, log).await?;
        return Ok(BenchReport::partial(None, Some(replication)));
    }
    if opts.capture_only {
        let capture = overhead::run(&dir, log).await?;
        let pg_capture = overhead::run_postgres(&small_url, &dir, 5, log).await?;
        return Ok(BenchReport::partial(Some((capture, pg_capture)), None));
    }

    log(&format!("seeding {rows} users into PostgreSQL"));
    let (big, big_state, pg_seed_seconds) = prepare(&big_url, rows).await?;
    log(&format!(
        "seeding {} users into a second database",
        rows / 10
    ));
    let (small, _small_state, _) = prepare(&small_url, rows / 10).await?;
    let select = crate::export::full_select(big.as_ref(), &big_state, &users)
        .await?
        .1
        .sql;
    std::fs::create_dir_all(&out).map_err(|e| Error::io("create", &out, e))?;

    log("psql \\copy, 3 runs");
    let psql_file = dir.join("psql.csv");
    let pg_psql_copy = measure(3, |_| {
        let mut c = Command::new("psql");
        c.arg(big_url.as_str()).arg("-q").arg("-c").arg(format!(
            "\\copy ({select}) TO '{}' WITH CSV HEADER",
            psql_file.display()
        ));
        Ok(c)
    })?;
    log("tidemark full export from PostgreSQL, 3 runs");
    let pg_full_export = full_exports(&big_url, &out)?;
    let pg_full_export_tenth = full_exports(&small_url, &out)?;

    log("incremental exports");
    let pg_incremental_1pct = incremental(&big_url, big.as_ref(), &out, 100, "inc1").await?;
    let pg_incremental_01pct = incremental(&big_url, big.as_ref(), &out, 1000, "inc01").await?;
    let pg_incremental_same_changes_tenth_table =
        incremental(&small_url, small.as_ref(), &out, 10, "inc-small").await?;

    log(&format!("seeding {rows} users into SQLite"));
    let sqlite_path = dir.join("bench.db");
    let _ = std::fs::remove_file(&sqlite_path);
    let sqlite_url = DbUrl::parse(&format!("sqlite://{}", sqlite_path.display()))?;
    let (sqlite, sqlite_state, _) = prepare(&sqlite_url, rows).await?;
    let sqlite_select = crate::export::full_select(sqlite.as_ref(), &sqlite_state, &users)
        .await?
        .1
        .sql;
    sqlite
        .execute("PRAGMA wal_checkpoint(TRUNCATE)", &[])
        .await
        .ok();
    log("sqlite3 -csv and tidemark full export from SQLite, 3 runs each");
    let sqlite_file = dir.join("sqlite3.csv");
    let sqlite_cli = measure(3, |_| {
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "sqlite3 -csv -header '{}' \"$0\" > '{}'",
            sqlite_path.display(),
            sqlite_file.display()
        ));
        c.arg(&sqlite_select);
        Ok(c)
    })?;
    let sqlite_full_export = full_exports(&sqlite_url, &out)?;
    let capture = overhead::run(&dir, log).await?;
    // pgbench runs for 10 s per variant in a full run, 2 s in the suite's small one.
    let pgbench_seconds = if rows >= 500_000 { 10 } else { 2 };
    let pg_capture = overhead::run_postgres(&small_url, &dir, pgbench_seconds, log).await?;
    let http = http::run(&small_url, Arc::clone(&small), &big_url, &dir, log).await?;
    let replication = Some(replicate::run(&dir, repl_dbs, opts.changes, log).await?);

    Ok(BenchReport {
        rows,
        pg_seed_seconds,
        pg_psql_copy,
        pg_full_export,
        pg_full_export_tenth,
        pg_incremental_1pct,
        pg_incremental_01pct,
        pg_incremental_same_changes_tenth_table,
        sqlite_cli,
        sqlite_full_export,
        capture,
        pg_capture,
        http,
        replication,
    })
}

/// PostgreSQL databases of the replication benchmark (source and target at two sizes).
const REPLICATION_DBS: [&str; 4] = [
    "tidemark_bench_repl_src",
    "tidemark_bench_repl_dst",
    "tidemark_bench_repl_src_tenfold",
    "tidemark_bench_repl_dst_tenfold",
];

impl BenchReport {
    fn partial(
        capture: Option<(overhead::CaptureOverhead, overhead::PgCaptureOverhead)>,
        replication: Option<replicate::ReplicationBench>,
    ) -> Self {
        let (capture, pg_capture) = capture.unwrap_or_default();
        let zero = Measured::default();
        BenchReport {
            rows: 0,
            pg_seed_seconds: 0.0,
            pg_psql_copy: zero,
            pg_full_export: zero,
            pg_full_export_tenth: zero,
            pg_incremental_1pct: zero,
            pg_incremental_01pct: zero,
            pg_incremental_same_changes_tenth_table: zero,
            sqlite_cli: zero,
            sqlite_full_export: zero,
            capture,
            pg_capture,
            http: http::HttpBench::default(),
            replication,
        }
    }
}
