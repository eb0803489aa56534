//! Shared test harness: one throwaway PostgreSQL server for the run and one MariaDB server per
//! test file (started on first use, stopped by their watchdogs when the binary exits; see
//! [`maria`]), a fresh database per test, and helpers to run the real `tidemark` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tidemark::capture::{self, Mode, SetupOptions};
use tidemark::db::{connect, ConnectOptions, Database, DbKind, DbUrl};
use tidemark::export::{manifest, replay, ExportOutcome, ExportRequest, Exporter};
use tidemark::ident::{ConsumerId, Ident, TableName};
use tidemark::seed::{self, apply_burst, Burst};
use tidemark::state::StateStore;
use tidemark::testkit::{MariaDbServer, PgServer, SqliteFile};

static PG: OnceLock<PgServer> = OnceLock::new();

/// The capture margin tests use on servers; waits before a final export exceed it.
pub const MARGIN: Duration = Duration::from_millis(30);

pub fn pg() -> &'static PgServer {
    PG.get_or_init(|| PgServer::start().expect("start PostgreSQL"))
}

/// One MariaDB server per test file (module), shared by that file's tests; PostgreSQL is one
/// server for the whole run.
///
/// Why MariaDB differs: its capture bound is server-wide. A statement still running, or a
/// transaction that has written and not committed, on ANY database of the server holds back
/// the bound of every export on it (as it would for every table of a user's server: tidemark
/// cannot tell which tables an open transaction wrote). With all files on one server, one
/// file's long seeding statement under load held back another file's exports — a true
/// behaviour of the product, and a flaky test. Inside a file, tests that hold a write
/// transaction open on purpose run alone on their file's server ([`TestDb::alone`]).
pub struct Maria {
    pub server: MariaDbServer,
    turn: tokio::sync::RwLock<()>,
}

/// The MariaDB server of the calling test's file: the test thread is named after the test's
/// path (`replicate::mariadb_to_postgres`), whose first part is its file.
pub fn maria() -> &'static Maria {
    static SERVERS: std::sync::Mutex<Vec<(String, &'static Maria)>> =
        std::sync::Mutex::new(Vec::new());
    let file = std::thread::current()
        .name()
        .and_then(|n| n.split("::").next())
        .unwrap_or("shared")
        .to_string();
    let mut servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, m)) = servers.iter().find(|(f, _)| *f == file) {
        return m;
    }
    let m: &'static Maria = Box::leak(Box::new(Maria {
        server: MariaDbServer::start().expect("start MariaDB"),
        turn: tokio::sync::RwLock::const_new(()),
    }));
    servers.push((file, m));
    m
}

pub fn mariadb() -> &'static MariaDbServer {
    &maria().server
}

enum Turn {
    Shared(
        &'static Maria,
        #[allow(dead_code)] tokio::sync::RwLockReadGuard<'static, ()>,
    ),
    Alone(
        &'static Maria,
        #[allow(dead_code)] tokio::sync::RwLockWriteGuard<'static, ()>,
    ),
}

/// The server a MariaDB test's turn was taken on.
fn maria_of(turn: &Option<Turn>) -> &'static MariaDbServer {
    match turn {
        Some(Turn::Shared(m, _)) | Some(Turn::Alone(m, _)) => &m.server,
        None => mariadb(),
    }
}

/// A fresh database of one kind, with an output directory.
pub struct TestDb {
    pub kind: DbKind,
    pub url: DbUrl,
    pub db: Arc<dyn Database>,
    pub out: tempfile::TempDir,
    _sqlite: Option<SqliteFile>,
    _turn: Option<Turn>,
}

impl TestDb {
    /// A fresh database for a test that leaves no write transaction open for long.
    pub async fn new(kind: DbKind) -> TestDb {
        let turn = match kind {
            DbKind::Mysql => {
                let m = maria();
                Some(Turn::Shared(m, m.turn.read().await))
            }
            _ => None,
        };
        Self::with_turn(kind, turn).await
    }

    /// A fresh database for a test that holds a write transaction open on purpose.
    pub async fn alone(kind: DbKind) -> TestDb {
        let turn = match kind {
            DbKind::Mysql => {
                let m = maria();
                Some(Turn::Alone(m, m.turn.write().await))
            }
            _ => None,
        };
        Self::with_turn(kind, turn).await
    }

    async fn with_turn(kind: DbKind, turn: Option<Turn>) -> TestDb {
        let (url, sqlite) = match kind {
            DbKind::Sqlite => {
                let f = SqliteFile::new().expect("temp dir");
                (f.url.clone(), Some(f))
            }
            DbKind::Postgres => (pg().fresh_database().await.expect("database"), None),
            DbKind::Mysql => (
                maria_of(&turn).fresh_database().await.expect("database"),
                None,
            ),
        };
        let db = connect(
            &url,
            ConnectOptions {
                create_if_missing: true,
                max_connections: None,
            },
        )
        .await
        .expect("connect");
        if kind == DbKind::Sqlite {
            db.execute("PRAGMA journal_mode=WAL", &[])
                .await
                .expect("wal");
        }
        TestDb {
            kind,
            url,
            db,
            out: tempfile::tempdir().expect("out dir"),
            _sqlite: sqlite,
            _turn: turn,
        }
    }

    pub async fn state(&self) -> StateStore {
        StateStore::open(Arc::clone(&self.db)).await.expect("state")
    }

    pub async fn exporter(&self) -> Exporter {
        Exporter::new(Arc::clone(&self.db), self.state().await).with_margin(MARGIN)
    }

    /// Seeds `rows` users and registers the table for timestamp capture.
    pub async fn users(&self, rows: u64) -> TableName {
        self.users_with(rows, "timestamp").await
    }

    /// Seeds `rows` users and registers the table for capture by `strategy`.
    pub async fn users_with(&self, rows: u64, strategy: &str) -> TableName {
        seed::seed_users(self.db.as_ref(), rows, None)
            .await
            .expect("seed");
        let table = TableName::parse("users").unwrap();
        self.setup(&table, strategy).await;
        table
    }

    /// Runs `setup` for `strategy` on `table` and registers it, as the CLI does.
    pub async fn setup(&self, table: &TableName, strategy: &str) -> capture::SetupReport {
        let info = self.db.describe(table).await.expect("describe");
        let report = capture::setup(self.db.as_ref(), &info, strategy, &SetupOptions::default())
            .await
            .unwrap_or_else(|e| panic!("setup {strategy} on {}: {e}", self.kind));
        self.state()
            .await
            .save_table_config(table, &report.config)
            .await
            .expect("register");
        report
    }

    pub fn request(&self, consumer: &str, mode: Mode) -> ExportRequest {
        ExportRequest::new(
            ConsumerId::new(consumer).unwrap(),
            TableName::parse("users").unwrap(),
            mode,
            self.out.path().to_path_buf(),
        )
    }

    pub async fn export(&self, consumer: &str, mode: Mode) -> ExportOutcome {
        self.exporter()
            .await
            .export(&self.request(consumer, mode), None)
            .await
            .unwrap_or_else(|e| panic!("{mode} export on {}: {e}", self.kind))
    }

    /// Asserts that the manifest chains verify and that replaying `consumer`'s files gives
    /// exactly the live table.
    pub async fn assert_replay_equals_table(&self, consumer: &str) {
        self.assert_replay_equals(consumer, "users", &["id"]).await
    }

    /// [`TestDb::assert_replay_equals_table`] for any table and primary key.
    pub async fn assert_replay_equals(&self, consumer: &str, table: &str, key: &[&str]) {
        let report = manifest::verify(self.out.path()).expect("verify");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let table = TableName::parse(table).unwrap();
        let key: Vec<Ident> = key.iter().map(|k| Ident::new(k).unwrap()).collect();
        let replayed = replay::replay(
            self.out.path(),
            &ConsumerId::new(consumer).unwrap(),
            &table,
            &key,
        )
        .expect("replay");
        let live = replay::table_image(self.db.as_ref(), &self.state().await, &table)
            .await
            .expect("table image");
        let diff = replay::differences(&live, &replayed, 10);
        assert!(
            diff.is_empty(),
            "{} replay differs from table: {diff:#?}",
            self.kind
        );
        assert!(!live.rows.is_empty());
    }

    /// Runs the real binary against this database.
    pub fn cli(&self, args: &[&str]) -> Output {
        tidemark_cmd(args)
            .arg("--source")
            .arg(self.url.as_str())
            .output()
            .expect("run tidemark")
    }

    /// Runs the real binary against this database with extra environment variables.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = tidemark_cmd(args);
        c.arg("--source").arg(self.url.as_str());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run tidemark")
    }

    /// A count (or other single integer) from the database.
    pub async fn count(&self, sql: &str) -> i64 {
        let rows = self
            .db
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows[0][0].as_deref().unwrap_or("0").parse().unwrap()
    }

    pub fn count_files(&self) -> usize {
        csv_files(self.out.path()).len()
    }
}

/// A raw connection of the test's own, to hold a transaction open across exports.
pub enum Raw {
    Pg(sqlx::PgConnection),
    My(sqlx::MySqlConnection),
    Lite(sqlx::SqliteConnection),
}

impl Raw {
    pub async fn open(t: &TestDb) -> Raw {
        use sqlx::Connection;
        let url = t.url.as_str();
        match t.kind {
            DbKind::Postgres => Raw::Pg(sqlx::PgConnection::connect(url).await.unwrap()),
            DbKind::Mysql => Raw::My(sqlx::MySqlConnection::connect(url).await.unwrap()),
            DbKind::Sqlite => Raw::Lite(sqlx::SqliteConnection::connect(url).await.unwrap()),
        }
    }

    pub async fn exec(&mut self, sql: &str) {
        let q = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()));
        match self {
            Raw::Pg(c) => q.execute(c).await.map(|_| ()),
            Raw::My(c) => q.execute(c).await.map(|_| ()),
            Raw::Lite(c) => q.execute(c).await.map(|_| ()),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The first column of `sql`'s rows, as text (NULL as "").
    pub async fn texts(&mut self, sql: &str) -> Vec<String> {
        use sqlx::Row;
        let q = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()));
        let first = |v: Result<Option<String>, sqlx::Error>| v.unwrap().unwrap_or_default();
        match self {
            Raw::Pg(c) => q.fetch_all(c).await.map(|r| {
                r.iter()
                    .map(|r| first(r.try_get::<Option<String>, _>(0)))
                    .collect()
            }),
            Raw::My(c) => q.fetch_all(c).await.map(|r| {
                r.iter()
                    .map(|r| first(r.try_get::<Option<String>, _>(0)))
                    .collect()
            }),
            Raw::Lite(c) => q.fetch_all(c).await.map(|r| {
                r.iter()
                    .map(|r| first(r.try_get::<Option<String>, _>(0)))
                    .collect()
            }),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// A transaction that inserts user 1000000, `late writer`, and stays open (on SQLite
    /// holding the write lock). A new row, so that other writers never wait for its locks.
    pub async fn late_writer(t: &TestDb) -> Raw {
        let now = t.db.dialect().now_expr();
        let mut raw = Raw::open(t).await;
        raw.exec(if t.kind == DbKind::Sqlite {
            "BEGIN IMMEDIATE"
        } else {
            "BEGIN"
        })
        .await;
        raw.exec(&format!(
            "INSERT INTO users (id, name, email, created_at, updated_at, is_deleted) \
             VALUES (1000000, 'late writer', 'late@example.com', {now}, {now}, FALSE)"
        ))
        .await;
        raw
    }

    /// SQLite has one writer: a delta export of `consumer` started while this transaction holds
    /// the write lock either waits for it (clock positions take the lock; recording a new
    /// position needs it too, the state being in the same file) or finds nothing new. Once it
    /// commits, the row is in that export or the next one, never lost.
    pub async fn commit_while_sqlite_export_waits(mut self, t: &TestDb, consumer: &str) {
        let exporter = t.exporter().await;
        let req = t.request(consumer, Mode::Delta);
        let pending = tokio::spawn(async move { exporter.export(&req, None).await });
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.exec("COMMIT").await;
        let out = pending.await.unwrap().unwrap();
        let text = out
            .file
            .map(|f| std::fs::read_to_string(f).unwrap())
            .unwrap_or_default();
        if !text.contains("late writer") {
            let next = t.export(consumer, Mode::Delta).await;
            let text = std::fs::read_to_string(next.file.expect("the late row")).unwrap();
            assert!(text.contains("late writer"), "{text}");
        }
    }
}

pub fn tidemark_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    c.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("TIDEMARK_SOURCE");
    c
}

pub fn csv_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "csv"))
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn all_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Generates one `#[tokio::test]` per database kind calling `$body(kind)`.
#[macro_export]
macro_rules! on_each_db {
    ($name:ident) => {
        mod $name {
            use tidemark::db::DbKind;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(DbKind::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(DbKind::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() {
                super::$name(DbKind::Mysql).await
            }
        }
    };
}

/// Inserts, updates and soft deletes; for `trigger` also hard deletes and a primary key
/// change, whose (old, new) ids it returns.
pub async fn churn(db: &dyn Database, strategy: &str, seed: u64, scale: u64) -> Option<(i64, i64)> {
    apply_burst(
        db,
        &Burst {
            inserts: 3 * scale,
            updates: 5 * scale,
            soft_deletes: scale,
            seed,
        },
    )
    .await
    .unwrap();
    if strategy != "trigger" {
        return None;
    }
    let max: i64 = db.query("SELECT MAX(id) FROM users", &[]).await.unwrap()[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        1 + (x % max as u64) as i64
    };
    for _ in 0..scale {
        db.execute("DELETE FROM users WHERE id = ?", &[next().into()])
            .await
            .unwrap();
    }
    // A live row whose key changes.
    let moved: i64 = db
        .query(
            "SELECT MIN(id) FROM users WHERE id >= ? AND NOT is_deleted",
            &[next().into()],
        )
        .await
        .unwrap()[0][0]
        .as_deref()
        .map_or(max, |s| s.parse().unwrap());
    let new = max + 1000;
    db.execute(
        "UPDATE users SET id = ? WHERE id = ?",
        &[new.into(), moved.into()],
    )
    .await
    .unwrap();
    Some((moved, new))
}

/// A table and columns whose names need quoting, with values whose types must survive.
pub async fn odd_table(t: &TestDb) -> TableName {
    let ddl = match t.kind {
        DbKind::Postgres => {
            "CREATE TABLE \"order\" (\"it's\" BIGINT PRIMARY KEY, \
             \"first name\" TEXT, f DOUBLE PRECISION, ts TIMESTAMPTZ, b BYTEA, n INTEGER)"
        }
        DbKind::Mysql => {
            "CREATE TABLE `order` (`it's` BIGINT PRIMARY KEY, \
             `first name` TEXT, f DOUBLE, ts TIMESTAMP(6) NULL, b LONGBLOB, n INT)"
        }
        DbKind::Sqlite => {
            "CREATE TABLE \"order\" (\"it's\" INTEGER PRIMARY KEY, \
             \"first name\" TEXT, f REAL, ts TEXT, b BLOB, n INTEGER)"
        }
    };
    t.db.execute(ddl, &[]).await.unwrap();
    TableName::parse("order").unwrap()
}

pub fn odd_insert(kind: DbKind, id: i64, name: &str) -> String {
    let (table, k, first) = match kind {
        DbKind::Mysql => ("`order`", "`it's`", "`first name`"),
        _ => ("\"order\"", "\"it's\"", "\"first name\""),
    };
    let (ts, b) = match kind {
        DbKind::Postgres => ("'2026-11-21 04:37:00.123456+00'", "'\\x00ff10'::bytea"),
        DbKind::Mysql => ("'2026-11-21 04:37:00.123456'", "X'00ff10'"),
        DbKind::Sqlite => ("'2026-11-21T04:37:00.123456Z'", "X'00ff10'"),
    };
    format!(
        "INSERT INTO {table} ({k}, {first}, f, ts, b, n) VALUES ({id}, '{name}', 0.1, {ts}, {b}, NULL)"
    )
}

/// Spawns `tidemark serve` as `cmd` (its stdout is piped here) and returns the child and the
/// base URL (`http://127.0.0.1:PORT`, or `https://…`) from the line it prints once it listens.
/// `log`, where its stderr went, is shown if it never gets there.
pub fn spawn_serve(cmd: &mut Command, log: Option<&Path>) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tidemark serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the listening line");
    let base = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|a| a.contains("://"))
        .map(|a| a.replace("0.0.0.0", "127.0.0.1"))
        .unwrap_or_else(|| {
            let log = log
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .unwrap_or_default();
            panic!("server did not start: {line:?}\n{log}")
        });
    (child, base)
}

/// Kills a child process (a server left running by a test) and reaps it.
pub fn kill_and_wait(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `GET {base}/exports/{id}` as an API client would, until the job is completed or
/// failed (at most a minute), and returns its record.
pub async fn finished_job(base: &str, id: &str) -> serde_json::Value {
    let c = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let job: serde_json::Value = c
            .get(format!("{base}/exports/{id}"))
            .send()
            .await
            .expect("GET the job")
            .json()
            .await
            .expect("a JSON job record");
        if matches!(job["status"].as_str(), Some("completed" | "failed")) {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} did not finish: {job}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
