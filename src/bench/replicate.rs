//! The replication benchmark: `tidemark replicate` (the real binary, under GNU time) moving
//! bursts of changes on a `trigger` table — 62.5% inserts, 31.25% updates, 6.25% deletes, so
//! 100,000 / 50,000 / 10,000 at 160,000 — SQLite→SQLite and PostgreSQL→PostgreSQL: three bursts
//! at the benchmark's size (median time), and one of ten times the size, whose peak memory must
//! not follow (a tenth of the size would not fill the replicator's batch pipeline, so it is the
//! larger run that shows growth). "Changes" are the source's change-log rows a run applied; the
//! delta it applies nets them per key (one row per changed key). Two workloads: `bulk` (one
//! insert statement of all new rows, one UPDATE, one DELETE) and `transactions` (the same
//! changes in transactions of 1,000 rows). SQLite→SQLite is also put beside SQLite's own
//! fastest apply of the same net changes (`ATTACH` + `INSERT … SELECT … ON CONFLICT` and
//! `DELETE … WHERE key IN`, by the `sqlite3` shell, on a copy of the target as it was before the
//! run), as a ratio.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::capture::{self, SetupOptions};
use crate::db::{connect, field, ConnectOptions, Database, DbKind, DbUrl};
use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::seed;
use crate::state::StateStore;

use super::{measure_once, summarize, tidemark, Measured};

/// How a burst's changes are committed on the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// One INSERT of all new rows, one UPDATE, one DELETE.
    Bulk,
    /// The same changes in transactions of 1,000 rows.
    Transactions,
}

impl Workload {
    fn label(self) -> &'static str {
        match self {
            Workload::Bulk => "bulk statements",
            Workload::Transactions => "1,000-row transactions",
        }
    }
}

/// Rows per transaction of [`Workload::Transactions`].
const TRANSACTION_ROWS: u64 = 1000;

/// One measured replication.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ReplicationRun {
    pub workload: Workload,
    /// Change-log rows replicated.
    pub changes: u64,
    /// Rows in the target afterwards (checked equal to the source's live rows).
    pub target_rows: u64,
    pub run: Measured,
    pub changes_per_second: f64,
    /// SQLite→SQLite: the `sqlite3` shell applying the same net changes (median).
    pub native: Option<Measured>,
}

/// What the replication benchmark measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicationBench {
    pub sqlite: ReplicationRun,
    pub sqlite_transactions: ReplicationRun,
    /// Ten times the changes: peak memory must not follow.
    pub sqlite_tenfold: ReplicationRun,
    pub postgres: ReplicationRun,
    pub postgres_tenfold: ReplicationRun,
    /// SQLite→NATS JetStream (`None` without nats-server).
    pub nats: Option<super::nats::NatsRun>,
}

impl ReplicationBench {
    /// Lines for the report.
    pub fn render(&self) -> String {
        let line = |name: String, r: &ReplicationRun, note: String| {
            format!(
                "{name:<48} {:>8.3} s {:>8.1} MB  {:>9.0} changes/s (CPU {:.2} s) {note}\n",
                r.run.seconds, r.run.peak_rss_mb, r.changes_per_second, r.run.cpu_seconds
            )
        };
        let mut s = String::from(
            "\ntidemark replicate (trigger table; changes = change-log rows applied)\n",
        );
        for r in [&self.sqlite, &self.sqlite_transactions] {
            s += &line(
                format!(
                    "SQLite→SQLite, {} changes, {}",
                    r.changes,
                    r.workload.label()
                ),
                r,
                "(target ≥ 400,000/s; a Python replicator: 37,000/s)".into(),
            );
            if let Some(native) = &r.native {
                s += &format!(
                    "{:<48} {:>8.3} s {:>8.1} MB  tidemark {:.2}× SQLite's own apply\n",
                    "  sqlite3: ATTACH + INSERT…SELECT / DELETE…IN",
                    native.seconds,
                    native.peak_rss_mb,
                    r.run.seconds / native.seconds.max(1e-9)
                );
            }
        }
        if let Some(n) = &self.nats {
            s += &n.render();
        }
        s += &line(
            format!("SQLite→SQLite, {} changes", self.sqlite_tenfold.changes),
            &self.sqlite_tenfold,
            format!(
                "memory {:.2}× at 10× the changes (flat = 1.0)",
                self.sqlite_tenfold.run.peak_rss_mb / self.sqlite.run.peak_rss_mb.max(1e-9)
            ),
        );
        s += &line(
            format!(
                "PostgreSQL→PostgreSQL, {} changes, {}",
                self.postgres.changes,
                self.postgres.workload.label()
            ),
            &self.postgres,
            String::new(),
        );
        if let Some(native) = &self.postgres.native {
            s += &format!(
                "{:<48} {:>8.3} s {:>10}  tidemark {:.2}× PostgreSQL's own (target ≤ 0.7×)\n",
                "  logical replication, enabled after, to catch-up",
                native.seconds,
                "",
                self.postgres.run.seconds / native.seconds.max(1e-9)
            );
        }
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

pub(super) async fn open(url: &DbUrl) -> Result<std::sync::Arc<dyn Database>> {
    connect(
        url,
        ConnectOptions {
            create_if_missing: true,
            max_connections: None,
        },
    )
    .await
}

pub(super) async fn count(db: &dyn Database, sql: &str) -> Result<u64> {
    let rows = db.query(sql, &[]).await?;
    Ok(rows
        .first()
        .and_then(|r| field(r, 0))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// A burst of `inserts` new users, every second one renamed, every tenth deleted
/// (100k/50k/10k at 160k changes), committed as `workload` says.
pub(super) async fn burst(
    db: &dyn Database,
    table: &str,
    inserts: u64,
    workload: Workload,
) -> Result<()> {
    let now = db.dialect().now_expr();
    let rename = |range: &str| {
        format!("UPDATE {table} SET name = name || '.', updated_at = {now} WHERE {range} AND id % 2 = 0")
    };
    let delete = |range: &str| format!("DELETE FROM {table} WHERE {range} AND id % 10 = 1");
    match workload {
        Workload::Bulk => {
            let seeded = seed::seed_users(db, inserts, None).await?;
            let range = format!("id >= {}", seeded.first_id);
            db.execute(&rename(&range), &[]).await?;
            db.execute(&delete(&range), &[]).await?;
        }
        Workload::Transactions => {
            let mut first = None;
            let mut left = inserts;
            while left > 0 {
                let n = left.min(TRANSACTION_ROWS);
                let seeded = seed::seed_users(db, n, None).await?;
                first.get_or_insert(seeded.first_id);
                left -= n;
            }
            let first = first.unwrap_or(1);
            let end = first + i64::try_from(inserts).unwrap_or(i64::MAX);
            // 1,000 renames per transaction (every second id), then 1,000 deletes (every tenth).
            for (step, statement) in [(2, &rename as &dyn Fn(&str) -> String), (10, &delete)] {
                let width = step * i64::try_from(TRANSACTION_ROWS).unwrap_or(1000);
                let mut lo = first;
                while lo < end {
                    let range = format!("id >= {lo} AND id < {}", (lo + width).min(end));
                    db.execute(&statement(&range), &[]).await?;
                    lo += width;
                }
            }
        }
    }
    Ok(())
}

/// SQLite's own apply of a burst's net changes, beside tidemark's: the touched keys' live rows
/// and the keys that are gone, read from the source (untimed) into a file of their own; then
/// the `sqlite3` shell applies them to a copy of the target in one transaction (timed).
struct NativeSqlite {
    source: PathBuf,
    target: PathBuf,
    dir: PathBuf,
}

impl NativeSqlite {
    fn of(dir: &Path, source: &DbUrl, target: &DbUrl) -> Option<NativeSqlite> {
        let path = |u: &DbUrl| {
            (u.kind() == DbKind::Sqlite)
                .then(|| PathBuf::from(u.as_str().trim_start_matches("sqlite://")))
        };
        Some(NativeSqlite {
            source: path(source)?,
            target: path(target)?,
            dir: dir.to_path_buf(),
        })
    }

    fn sqlite3(db: &Path, script: &str) -> Command {
        let mut c = Command::new("sqlite3");
        c.arg(db).arg(script);
        c
    }

    /// Copies the target as it is now and collects the net changes after change `since`.
    fn prepare(&self, log: &str, since: u64) -> Result<(PathBuf, PathBuf)> {
        let copy = self.dir.join("native-target.db");
        let delta = self.dir.join("native-delta.db");
        for p in [&copy, &delta] {
            let _ = std::fs::remove_file(p);
        }
        std::fs::copy(&self.target, &copy).map_err(|e| Error::io("copy", &self.target, e))?;
        let script = format!(
            "ATTACH '{src}' AS s; \
             CREATE TABLE k AS SELECT old_key_1 AS id FROM s.{log} WHERE change_id > {since} \
               AND old_key_1 IS NOT NULL UNION SELECT new_key_1 FROM s.{log} \
               WHERE change_id > {since} AND new_key_1 IS NOT NULL; \
             CREATE TABLE up AS SELECT u.id, u.name, u.email, u.created_at, u.updated_at, \
               u.is_deleted FROM s.users u JOIN k ON u.id = k.id WHERE NOT u.is_deleted; \
             CREATE TABLE del AS SELECT id FROM k EXCEPT SELECT id FROM up;",
            src = self.source.display()
        );
        measure_once(&mut Self::sqlite3(&delta, &script))?;
        Ok((copy, delta))
    }

    fn apply(copy: &Path, delta: &Path) -> Result<Measured> {
        let script = format!(
            "ATTACH '{}' AS d; BEGIN; \
             DELETE FROM users WHERE id IN (SELECT id FROM d.del); \
             INSERT INTO users (id, name, email, created_at, updated_at, is_deleted) \
               SELECT * FROM d.up WHERE true ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
               email = excluded.email, created_at = excluded.created_at, \
               updated_at = excluded.updated_at, is_deleted = excluded.is_deleted; \
             COMMIT;",
            delta.display()
        );
        measure_once(&mut Self::sqlite3(copy, &script))
    }
}

/// PostgreSQL's own logical replication of the same bursts, beside tidemark's: a publication of
/// the source table, and a subscription (`copy_data = false`) in a database of its own on the
/// same server, whose slot is created before each burst and which is enabled after tidemark's
/// run, timed until the subscriber's table matches the source's (row count, sum of ids, sum of
/// name lengths — soft-deleted rows included: they are rows to PostgreSQL).
struct NativePg {
    source: std::sync::Arc<dyn Database>,
    source_url: DbUrl,
    target: std::sync::Arc<dyn Database>,
    name: String,
}

const FINGERPRINT: &str = "SELECT count(*)::text, COALESCE(sum(id), 0)::text, \
                           COALESCE(sum(length(name)), 0)::text FROM users";

impl NativePg {
    async fn start(
        source: &std::sync::Arc<dyn Database>,
        source_url: &DbUrl,
        target_url: &DbUrl,
    ) -> Result<Option<NativePg>> {
        if source_url.kind() != DbKind::Postgres || target_url.kind() != DbKind::Postgres {
            return Ok(None);
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let name = format!("tidemark_bench_native_{stamp}");
        source
            .execute(&format!("CREATE DATABASE {name}"), &[])
            .await?;
        let s = target_url.as_str();
        let cut = s
            .rfind('/')
            .filter(|&i| i > s.find("//").map_or(0, |j| j + 1))
            .unwrap_or(s.len());
        let target = open(&DbUrl::parse(&format!("{}/{name}", &s[..cut]))?).await?;
        seed::create_users_table(target.as_ref()).await?;
        source
            .execute(&format!("CREATE PUBLICATION {name} FOR TABLE users"), &[])
            .await?;
        Ok(Some(NativePg {
            source: std::sync::Arc::clone(source),
            source_url: source_url.clone(),
            target,
            name,
        }))
    }

    /// Before a burst: the slot that keeps its changes, and the (disabled) subscription.
    async fn before_burst(&self) -> Result<()> {
        let n = &self.name;
        self.source
            .query(
                &format!("SELECT pg_create_logical_replication_slot('{n}', 'pgoutput')::text"),
                &[],
            )
            .await?;
        self.target
            .execute(
                &format!(
                    "CREATE SUBSCRIPTION {n} CONNECTION '{}' PUBLICATION {n} WITH \
                     (copy_data = false, create_slot = false, enabled = false, slot_name = '{n}')",
                    self.source_url.as_str().replace('\'', "''")
                ),
                &[],
            )
            .await?;
        Ok(())
    }

    /// Enables the subscription and waits for the subscriber to catch up; then removes it.
    async fn catch_up(&self) -> Result<Measured> {
        let n = &self.name;
        let want = self.source.query(FINGERPRINT, &[]).await?;
        let t0 = std::time::Instant::now();
        self.target
            .execute(&format!("ALTER SUBSCRIPTION {n} ENABLE"), &[])
            .await?;
        while self.target.query(FINGERPRINT, &[]).await? != want {
            if t0.elapsed() > std::time::Duration::from_secs(600) {
                return Err(Error::Runtime(
                    "bench: PostgreSQL's logical replication did not catch up in 10 minutes".into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let seconds = t0.elapsed().as_secs_f64();
        for sql in [
            format!("ALTER SUBSCRIPTION {n} DISABLE"),
            format!("ALTER SUBSCRIPTION {n} SET (slot_name = NONE)"),
            format!("DROP SUBSCRIPTION {n}"),
        ] {
            self.target.execute(&sql, &[]).await?;
        }
        // The walsender lets go of the slot shortly after the subscription is disabled.
        let drop = format!("SELECT pg_drop_replication_slot('{n}')::text");
        let mut tries = 0;
        while let Err(e) = self.source.query(&drop, &[]).await {
            tries += 1;
            if tries > 200 {
                return Err(e);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(Measured {
            seconds,
            ..Measured::default()
        })
    }
}

/// `bursts` bursts of `changes` changes, each replicated from `source` to `target` (both empty
/// databases at first) by its own `tidemark replicate` run: the median time, the largest peak.
pub async fn replication(
    dir: &Path,
    source: &DbUrl,
    target: &DbUrl,
    changes: u64,
    bursts: usize,
    workload: Workload,
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
    let log = Ident::new(&report.config.cursor_column)?;
    let log = db.dialect().quote(&log);
    let log_rows = format!("SELECT count(*) FROM {log}");
    let last_change = format!("SELECT COALESCE(max(change_id), 0) FROM {log}");
    let native = NativeSqlite::of(dir, source, target);
    let native_pg = NativePg::start(&db, source, target).await?;
    let mut runs = Vec::with_capacity(bursts);
    let mut natives = Vec::new();
    let mut logged = 0;
    for _ in 0..bursts {
        let before = count(db.as_ref(), &log_rows).await?;
        let since = count(db.as_ref(), &last_change).await?;
        if let Some(n) = &native_pg {
            n.before_burst().await?;
        }
        burst(db.as_ref(), &t, inserts, workload).await?;
        logged = count(db.as_ref(), &log_rows).await? - before;
        let prepared = match &native {
            Some(n) => Some(n.prepare(&log, since)?),
            None => None,
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        runs.push(measure_once(&mut replicate(true)?)?);
        if let Some((copy, delta)) = prepared {
            natives.push(NativeSqlite::apply(&copy, &delta)?);
        }
        if let Some(n) = &native_pg {
            natives.push(n.catch_up().await?);
        }
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
        workload,
        changes: logged,
        target_rows,
        run,
        changes_per_second: logged as f64 / run.seconds.max(1e-9),
        native: (!natives.is_empty()).then(|| summarize(&natives)),
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
    let mut sqlite_runs = Vec::new();
    for (workload, tag) in [(Workload::Bulk, "bulk"), (Workload::Transactions, "tx")] {
        log(&format!(
            "replication SQLite→SQLite, {changes} changes, {}",
            workload.label()
        ));
        sqlite_runs.push(
            replication(
                dir,
                &sqlite(&format!("repl-src-{tag}.db"))?,
                &sqlite(&format!("repl-dst-{tag}.db"))?,
                changes,
                BURSTS,
                workload,
            )
            .await?,
        );
    }
    let [sqlite_base, sqlite_transactions]: [ReplicationRun; 2] = sqlite_runs
        .try_into()
        .map_err(|_| Error::Runtime("bench: SQLite runs missing".into()))?;
    log(&format!(
        "replication SQLite→NATS JetStream, {changes} changes"
    ));
    let nats = super::nats::run(dir, changes).await?;
    log(&format!(
        "replication SQLite→SQLite, {} changes",
        changes * 10
    ));
    let sqlite_tenfold = replication(
        dir,
        &sqlite("repl-src-tenfold.db")?,
        &sqlite("repl-dst-tenfold.db")?,
        changes * 10,
        1,
        Workload::Bulk,
    )
    .await?;
    let [a, b, c, d] = pg;
    log(&format!(
        "replication PostgreSQL→PostgreSQL, {changes} changes"
    ));
    // The workload: the changes in 1,000-row transactions, as applications write them.
    let postgres = replication(dir, &a, &b, changes, BURSTS, Workload::Transactions).await?;
    log(&format!(
        "replication PostgreSQL→PostgreSQL, {} changes",
        changes * 10
    ));
    let postgres_tenfold = replication(dir, &c, &d, changes * 10, 1, Workload::Bulk).await?;
    Ok(ReplicationBench {
        sqlite: sqlite_base,
        sqlite_transactions,
        sqlite_tenfold,
        postgres,
        postgres_tenfold,
        nats,
    })
}
