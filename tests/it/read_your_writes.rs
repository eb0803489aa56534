//! Read your writes, as users act: a change is committed through the database's own client
//! (`psql`, `mariadb`, `sqlite3`) or a plain connection of the test's, and AT ONCE exported with
//! the CLI, exported through the HTTP service and replicated — the change is there, every time,
//! for each database and strategy. Nothing here waits for tidemark's internals. Also: an
//! export right after a full export writes no file, and a transaction left open is never
//! waited for (the export says what it holds back, and a later one delivers it).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{tidemark_cmd, Raw, TestDb};
use serde_json::Value;
use tidemark::db::DbKind;

/// Rounds of (commit, read) per path, database and strategy.
const ROUNDS: usize = 50;
/// Users seeded before the rounds; rounds update and delete distinct ones among them.
const SEEDED: u64 = 400;

/// A running `tidemark serve`; killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(source: &str, out: &Path) -> Server {
        let mut cmd = tidemark_cmd(&["--source", source, "serve", "--listen", "127.0.0.1:0"]);
        cmd.arg("--out").arg(out).stderr(Stdio::null());
        let (child, base) = common::spawn_serve(&mut cmd, None);
        Server { child, base }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        common::kill_and_wait(&mut self.child);
    }
}

/// What one change did to one user.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Insert,
    Update,
    SoftDelete,
    HardDelete,
}

impl Op {
    fn expected(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::SoftDelete | Op::HardDelete => "DELETE",
        }
    }
}

/// Commits one change, either through the database's own command-line client (as a user at a
/// shell would) or on a connection of the test's own.
struct Writer<'a> {
    t: &'a TestDb,
    raw: Raw,
    uses: usize,
}

impl<'a> Writer<'a> {
    async fn new(t: &'a TestDb) -> Writer<'a> {
        Writer {
            t,
            raw: Raw::open(t).await,
            uses: 0,
        }
    }

    async fn commit(&mut self, sql: &str) {
        self.uses += 1;
        if self.uses % 5 == 1 {
            client(self.t, sql);
        } else {
            self.raw.exec(sql).await;
        }
    }

    /// Applies `op` to user `id`, named `name`.
    async fn apply(&mut self, op: Op, id: i64, name: &str) {
        let now = self.t.db.dialect().now_expr();
        let sql = match op {
            Op::Insert => format!(
                "INSERT INTO users (id, name, email, created_at, updated_at, is_deleted) \
                 VALUES ({id}, '{name}', '{name}@example.com', {now}, {now}, FALSE)"
            ),
            Op::Update => {
                format!("UPDATE users SET name = '{name}', updated_at = {now} WHERE id = {id}")
            }
            Op::SoftDelete => {
                format!("UPDATE users SET is_deleted = TRUE, updated_at = {now} WHERE id = {id}")
            }
            Op::HardDelete => format!("DELETE FROM users WHERE id = {id}"),
        };
        self.commit(&sql).await;
    }
}

/// Runs `sql` with the database's own client, as a user would type it.
fn client(t: &TestDb, sql: &str) {
    let url = t.url.as_str();
    let mut cmd = match t.kind {
        DbKind::Postgres => {
            let mut c = Command::new("psql");
            c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql]);
            c
        }
        DbKind::Mysql => {
            let u = reqwest::Url::parse(url).expect("mysql url");
            let mut c = Command::new("mariadb");
            c.arg("--no-defaults")
                .args(["-h", u.host_str().unwrap_or("127.0.0.1")])
                .args(["-P", &u.port().unwrap_or(3306).to_string()])
                .args(["-u", u.username()])
                .arg(u.path().trim_start_matches('/'))
                .args(["-e", sql]);
            c
        }
        DbKind::Sqlite => {
            let path = url.trim_start_matches("sqlite://");
            let path = path.split('?').next().unwrap_or(path);
            let mut c = Command::new("sqlite3");
            c.args(["-cmd", ".timeout 30000", path, sql]);
            c
        }
    };
    let out = cmd.output().expect("run the database's client");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parses a CSV export into rows of fields (header first).
fn read_csv(text: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .map(|r| r.expect("csv").iter().map(str::to_string).collect())
        .collect()
}

/// Checks that a delta export's CSV carries `op` on user `id` (named `name` unless deleted).
fn assert_delivered(csv: &str, op: Op, id: i64, name: &str, what: &str) {
    let rows = read_csv(csv);
    let header = rows.first().expect("header");
    let col = |n: &str| header.iter().position(|h| h == n).expect(n);
    let (op_col, id_col, name_col) = (col("operation"), col("id"), col("name"));
    let id = id.to_string();
    let row = rows
        .iter()
        .skip(1)
        .find(|r| r[id_col] == id)
        .unwrap_or_else(|| panic!("{what}: user {id} ({op:?}) is not in the export:\n{csv}"));
    assert_eq!(row[op_col], op.expected(), "{what}: {row:?}");
    if !matches!(op, Op::SoftDelete | Op::HardDelete) {
        assert_eq!(row[name_col], name, "{what}: {row:?}");
    }
}

/// The median and the largest of `v`.
fn median_max(v: &mut [u64]) -> (u64, u64) {
    v.sort_unstable();
    (
        v.get(v.len() / 2).copied().unwrap_or(0),
        v.last().copied().unwrap_or(0),
    )
}

fn run_json(t: &TestDb, args: &[&str]) -> Value {
    let out = t.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

async fn http_delta(c: &reqwest::Client, s: &Server, consumer: &str) -> (Value, Option<String>) {
    let r = c
        .post(format!("{}/exports/delta", s.base))
        .header("X-Consumer-ID", consumer)
        .send()
        .await
        .expect("POST /exports/delta");
    assert_eq!(r.status().as_u16(), 202);
    let started: Value = r.json().await.expect("json");
    let id = started["jobId"].as_str().expect("jobId").to_string();
    let job = common::finished_job(&s.base, &id).await;
    if job["status"] == "failed" {
        panic!("job failed: {job}");
    }
    if job["outputFilename"].is_null() {
        return (job, None);
    }
    let body = c
        .get(format!("{}/exports/{id}/file", s.base))
        .send()
        .await
        .expect("GET file")
        .text()
        .await
        .expect("file");
    (job, Some(body))
}

/// The name of user `id` in the replica, or `None` when it has no such row.
async fn replica_name(replica: &tidemark::db::DbUrl, id: i64) -> Option<String> {
    let db = tidemark::db::connect(replica, Default::default())
        .await
        .expect("replica");
    let rows = db
        .query(&format!("SELECT name FROM users WHERE id = {id}"), &[])
        .await
        .expect("replica query");
    rows.first().map(|r| r[0].clone().unwrap_or_default())
}

async fn read_your_writes(kind: DbKind, strategy: &str) {
    let t = TestDb::new(kind).await;
    t.users_with(SEEDED, strategy).await;
    let src = t.url.as_str().to_string();
    let out = t.out.path().to_string_lossy().into_owned();
    let base = ["export", "--table", "users", "--out", &out, "--json"];

    // Nothing twice without need: a delta right after a full export writes no file.
    let full = run_json(
        &t,
        &[&base[..], &["--consumer", "cli", "--mode", "full"]].concat(),
    );
    let live = t
        .count("SELECT count(*) FROM users WHERE NOT is_deleted")
        .await;
    assert_eq!(full["rows"].as_i64(), Some(live), "{full}");
    let again = run_json(
        &t,
        &[&base[..], &["--consumer", "cli", "--mode", "delta"]].concat(),
    );
    assert!(
        again["file"].is_null(),
        "{kind} {strategy}: a delta right after a full export wrote {again}"
    );

    let server_out = tempfile::tempdir().unwrap();
    let server = Server::start(&src, server_out.path());
    let http = reqwest::Client::new();
    let (first, _) = http_delta(&http, &server, "http").await;
    assert_eq!(first["status"], "completed");

    let replica_dir = tempfile::tempdir().unwrap();
    let replica_path: PathBuf = replica_dir.path().join("replica.db");
    let replica = format!("sqlite://{}", replica_path.display());
    let replica_url = tidemark::db::DbUrl::parse(&replica).unwrap();
    let replicate = [
        "replicate",
        "--table",
        "users",
        "--target",
        &replica,
        "--json",
    ];
    run_json(&t, &replicate);

    let ops: &[Op] = if strategy == "trigger" {
        &[Op::Insert, Op::Update, Op::SoftDelete, Op::HardDelete]
    } else {
        &[Op::Insert, Op::Update, Op::SoftDelete]
    };
    let mut writer = Writer::new(&t).await;
    let mut next_existing = 1i64;
    let mut next_new = 100_000i64;
    let mut pick = |op: Op| -> i64 {
        if op == Op::Insert {
            next_new += 1;
            next_new
        } else {
            next_existing += 1;
            next_existing
        }
    };
    let (mut cli_waits, mut http_waits, mut lag) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let what = |path: &str| format!("{kind} {strategy} round {round} via {path}");

        // The CLI.
        let op = ops[round % ops.len()];
        let id = pick(op);
        let name = format!("cli {round}");
        writer.apply(op, id, &name).await;
        let t0 = Instant::now();
        let o = run_json(
            &t,
            &[&base[..], &["--consumer", "cli", "--mode", "delta"]].concat(),
        );
        lag.push(t0.elapsed().as_millis() as u64);
        cli_waits.push(o["waited_ms"].as_u64().expect("waited_ms"));
        assert!(o["held_back_since"].is_null(), "{}: {o}", what("cli"));
        let file = o["file"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no file: {o}", what("cli")));
        let csv = std::fs::read_to_string(file).unwrap();
        assert_delivered(&csv, op, id, &name, &what("cli"));

        // The HTTP service.
        let op = ops[(round + 1) % ops.len()];
        let id = pick(op);
        let name = format!("http {round}");
        writer.apply(op, id, &name).await;
        let (job, csv) = http_delta(&http, &server, "http").await;
        http_waits.push(job["waitedMs"].as_u64().expect("waitedMs"));
        let csv = csv.unwrap_or_else(|| panic!("{}: no file: {job}", what("http")));
        assert_delivered(&csv, op, id, &name, &what("http"));

        // Replication.
        let op = ops[(round + 2) % ops.len()];
        let id = pick(op);
        let name = format!("replica {round}");
        writer.apply(op, id, &name).await;
        let summary = run_json(&t, &replicate);
        assert!(summary["held_back_since"].is_null(), "{summary}");
        let got = replica_name(&replica_url, id).await;
        match op {
            Op::Insert | Op::Update => assert_eq!(
                got.as_deref(),
                Some(name.as_str()),
                "{}: {summary}",
                what("replicate")
            ),
            Op::SoftDelete | Op::HardDelete => {
                assert_eq!(got, None, "{}: {summary}", what("replicate"))
            }
        }
    }
    // The CLI consumer has yet to see the last HTTP and replica rounds' changes.
    run_json(
        &t,
        &[&base[..], &["--consumer", "cli", "--mode", "delta"]].concat(),
    );
    t.assert_replay_equals_table("cli").await;
    let (cm, cx) = median_max(&mut cli_waits);
    let (hm, hx) = median_max(&mut http_waits);
    let (lm, lx) = median_max(&mut lag);
    println!(
        "read-your-writes {kind} {strategy}: waited_ms cli median {cm} max {cx}, http median {hm} \
         max {hx}; CLI export wall ms median {lm} max {lx} ({ROUNDS} rounds)"
    );
}

/// A transaction left open is never waited for: the export returns at once, says what it
/// holds back (where the strategy must), and a later export delivers everything.
async fn open_transaction_is_not_waited_for(kind: DbKind, strategy: &str) {
    let t = TestDb::alone(kind).await;
    t.users_with(50, strategy).await;
    let out = t.out.path().to_string_lossy().into_owned();
    // SQLite has one writer: an export whose state is in the same file could not record its
    // position while another writer holds the file, so the state lives elsewhere there.
    let state_dir = tempfile::tempdir().unwrap();
    let state = format!("sqlite://{}", state_dir.path().join("state.db").display());
    let mut base = vec![
        "export",
        "--consumer",
        "c",
        "--table",
        "users",
        "--out",
        &out,
    ];
    base.push("--json");
    if kind == DbKind::Sqlite {
        base.extend(["--state", state.as_str()]);
        let setup = t.cli(&[
            "setup",
            "--table",
            "users",
            "--strategy",
            strategy,
            "--state",
            &state,
        ]);
        assert!(setup.status.success(), "{setup:?}");
    }
    run_json(&t, &[&base[..], &["--mode", "full"]].concat());
    let mut writer = Writer::new(&t).await;
    let now = t.db.dialect().now_expr();
    let committed = format!("UPDATE users SET name = 'committed', updated_at = {now} WHERE id = 7");
    let open = if kind == DbKind::Sqlite {
        // One writer at a time: the committed change comes first.
        writer.commit(&committed).await;
        Raw::late_writer(&t).await
    } else {
        let open = Raw::late_writer(&t).await;
        writer.commit(&committed).await;
        open
    };
    let t0 = Instant::now();
    let o = run_json(&t, &[&base[..], &["--mode", "delta"]].concat());
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "{kind} {strategy}: the export waited {took:?} for an open transaction"
    );
    let csv = o["file"]
        .as_str()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .unwrap_or_default();
    assert!(!csv.contains("late writer"), "{csv}");
    let exact = matches!(
        (kind, strategy),
        (DbKind::Postgres, "trigger" | "version") | (DbKind::Sqlite, "trigger")
    );
    if exact {
        // Transaction snapshots and commit-ordered ids need not hold anything back.
        assert!(o["held_back_since"].is_null(), "{o}");
        assert_delivered(
            &csv,
            Op::Update,
            7,
            "committed",
            "beside an open transaction",
        );
    } else {
        assert!(
            !o["held_back_since"].is_null(),
            "{kind} {strategy}: the committed change was {} and nothing said changes are held \
             back: {o}",
            if csv.contains("committed") {
                "delivered"
            } else {
                "missing"
            }
        );
        let text: Vec<&str> = base.iter().copied().filter(|a| *a != "--json").collect();
        let out = t.cli(&[&text[..], &["--mode", "delta"]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("held back"), "{stderr}");
    }
    let mut open = open;
    open.exec("COMMIT").await;
    let o = run_json(&t, &[&base[..], &["--mode", "delta"]].concat());
    assert!(o["held_back_since"].is_null(), "{o}");
    let csv = std::fs::read_to_string(o["file"].as_str().expect("a file")).unwrap();
    assert!(csv.contains("late writer"), "{csv}");
    t.assert_replay_equals_table("c").await;
}

macro_rules! per_strategy {
    ($test:ident) => {
        mod $test {
            use tidemark::db::DbKind;
            macro_rules! one {
                ($name:ident, $kind:expr, $strategy:expr) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::$test($kind, $strategy).await
                    }
                };
            }
            one!(sqlite_timestamp, DbKind::Sqlite, "timestamp");
            one!(sqlite_version, DbKind::Sqlite, "version");
            one!(sqlite_trigger, DbKind::Sqlite, "trigger");
            one!(postgres_timestamp, DbKind::Postgres, "timestamp");
            one!(postgres_version, DbKind::Postgres, "version");
            one!(postgres_trigger, DbKind::Postgres, "trigger");
            one!(mariadb_timestamp, DbKind::Mysql, "timestamp");
            one!(mariadb_version, DbKind::Mysql, "version");
            one!(mariadb_trigger, DbKind::Mysql, "trigger");
        }
    };
}

per_strategy!(read_your_writes);
per_strategy!(open_transaction_is_not_waited_for);

/// Read your writes on a busy database: while another application commits short write
/// transactions without pause (on a table of its own, as a busy server always has), a change
/// committed through a client is in the export taken at once, every round, and nothing is
/// said to be held back — short transactions that began after the export was asked for are
/// not waited for. MariaDB takes the shared test server alone: its transactions are
/// server-wide, and the writer here is the load being tested.
async fn busy_database(kind: DbKind, strategy: &str) {
    let t = if kind == DbKind::Mysql {
        TestDb::alone(kind).await
    } else {
        TestDb::new(kind).await
    };
    t.users_with(50, strategy).await;
    let mut setup = Raw::open(&t).await;
    setup
        .exec("CREATE TABLE busy (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut busy = Raw::open(&t).await;
    let (s, w) = (stop.clone(), writes.clone());
    let writer = tokio::spawn(async move {
        let mut i = 0u64;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            busy.exec(&format!("INSERT INTO busy (id, n) VALUES ({i}, {i})"))
                .await;
            w.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let out = t.out.path().to_string_lossy().into_owned();
    let base = [
        "export",
        "--table",
        "users",
        "--out",
        &out,
        "--json",
        "--consumer",
        "busy",
    ];
    run_json(&t, &[&base[..], &["--mode", "full"]].concat());
    let mut writer_conn = Writer::new(&t).await;
    let mut waits = Vec::new();
    for round in 0..15i64 {
        let id = 200_000 + round;
        let name = format!("busy{round}");
        writer_conn.apply(Op::Insert, id, &name).await;
        let o = run_json(&t, &[&base[..], &["--mode", "delta"]].concat());
        let what = format!("{kind} {strategy} busy round {round}");
        assert!(o["held_back_since"].is_null(), "{what}: {o}");
        let file = o["file"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no file: {o}"));
        assert_delivered(
            &std::fs::read_to_string(file).unwrap(),
            Op::Insert,
            id,
            &name,
            &what,
        );
        waits.push(o["waited_ms"].as_u64().unwrap_or(0));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let (median, max) = median_max(&mut waits);
    eprintln!(
        "{kind} {strategy} busy: waited_ms median {median} max {max} while {} other writes committed",
        writes.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        writes.load(std::sync::atomic::Ordering::Relaxed) > 15,
        "the writer wrote"
    );
}

per_strategy!(busy_database);
