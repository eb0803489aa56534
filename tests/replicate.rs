//! `tidemark replicate` against real servers: random workloads (hard deletes and primary key
//! changes on `trigger` tables) replicated in rounds between SQLite, PostgreSQL and MariaDB and
//! compared row for row (count and checksum); a change the target refuses; kill -9 of a
//! following replicator while a writer runs; a target that goes away and comes back; latency.

mod common;

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{churn, odd_insert, odd_table, tidemark_cmd, TestDb, MARGIN};
use sha2::{Digest, Sha256};
use tidemark::db::{connect, ConnectOptions, Database, DbKind, DbUrl};
use tidemark::export::replay::{self, Image};
use tidemark::ident::Ident;
use tidemark::replicate::{ReplicateOptions, Replicator, Summary, POSITIONS_TABLE};
use tidemark::state::StateStore;
use tidemark::Error;

fn users() -> Ident {
    Ident::new("users").unwrap()
}

/// Replication of `table` with the tests' capture margin.
fn options_for(table: &Ident) -> ReplicateOptions {
    let mut o = ReplicateOptions::new(table.clone());
    o.margin = MARGIN;
    o
}

fn options(batch_size: usize) -> ReplicateOptions {
    let mut o = options_for(&users());
    o.batch_size = batch_size;
    o
}

/// Column `b` of the odd table in `db`, in key order, as upper-case hex of its bytes; on
/// SQLite, with `blobs_only`, NULL for a value that is not a blob.
async fn hex_of_b(db: &dyn Database, table: &Ident, blobs_only: bool) -> Vec<Option<String>> {
    let bytes = match db.kind() {
        DbKind::Sqlite if blobs_only => "CASE WHEN typeof(b) = 'blob' THEN hex(b) END",
        DbKind::Sqlite => "hex(b)",
        DbKind::Postgres => "upper(encode(b, 'hex'))",
        DbKind::Mysql => "HEX(b)",
    };
    let d = db.dialect();
    let (q, k) = (d.quote(table), d.quote(&Ident::new("it's").unwrap()));
    let rows = db
        .query(&format!("SELECT {bytes} FROM {q} ORDER BY {k}"), &[])
        .await
        .unwrap();
    rows.into_iter().map(|r| r[0].clone()).collect()
}

async fn replicate_once(src: &TestDb, target: &DbUrl, batch_size: usize) -> Result<Summary, Error> {
    replicate_with(src, target, options(batch_size)).await
}

async fn replicate_with(
    src: &TestDb,
    target: &DbUrl,
    opts: ReplicateOptions,
) -> Result<Summary, Error> {
    Replicator::new(Arc::clone(&src.db), src.state().await, target.clone(), opts)?
        .run(std::future::pending())
        .await
}

async fn image(db: &dyn Database, state: &StateStore) -> Image {
    replay::table_image(db, state, &users()).await.unwrap()
}

/// Row count and SHA-256 of all rows rendered as canonical text, in key order.
fn checksum(img: &Image) -> (usize, String) {
    let mut h = Sha256::new();
    for row in img.rows.values() {
        h.update(row.join("\u{1f}").as_bytes());
        h.update(b"\n");
    }
    (img.rows.len(), hex::encode(h.finalize()))
}

async fn assert_same(src: &TestDb, dst: &dyn Database, dst_state: &StateStore, what: &str) {
    let a = image(src.db.as_ref(), &src.state().await).await;
    let b = image(dst, dst_state).await;
    let diff = replay::differences(&a, &b, 10);
    assert!(diff.is_empty(), "{what}: target differs: {diff:#?}");
    assert_eq!(checksum(&a), checksum(&b), "{what}");
    assert!(!a.rows.is_empty(), "{what}: empty table");
}

async fn position_in_target(dst: &dyn Database) -> Option<String> {
    dst.query(&format!("SELECT position FROM {POSITIONS_TABLE}"), &[])
        .await
        .ok()
        .and_then(|r| r.first().and_then(|r| r[0].clone()))
}

/// Random workload rounds from `from` to `to` with `strategy`, compared after every round.
async fn rounds(from: DbKind, to: DbKind, strategy: &str) {
    let src = TestDb::new(from).await;
    let dst = TestDb::new(to).await;
    src.users_with(300, strategy).await;
    let dst_state = dst.state().await;
    let first = replicate_once(&src, &dst.url, 64).await.unwrap();
    assert!(first.rows >= 290, "initial copy: {first:?}");
    assert_same(&src, dst.db.as_ref(), &dst_state, "initial copy").await;
    let mut deletes = 0;
    for round in 0..4u64 {
        let moved = churn(src.db.as_ref(), strategy, round + 1, 2 + (round * 7) % 11).await;
        let s = replicate_once(&src, &dst.url, 16).await.unwrap();
        assert!(s.rows > 0 && s.commits == 1, "round {round}: {s:?}");
        deletes += s.deletes;
        assert_same(&src, dst.db.as_ref(), &dst_state, &format!("round {round}")).await;
        if let Some((old, new)) = moved {
            let ids = |id: i64| format!("SELECT count(*) FROM users WHERE id = {id}");
            assert_eq!(dst.count(&ids(old)).await, 0, "old key of a key change");
            assert_eq!(dst.count(&ids(new)).await, 1, "new key of a key change");
        }
    }
    assert!(deletes > 0, "no delete replicated");
    // Nothing new: no commit, position unchanged; the source's state records the replica.
    let before = position_in_target(dst.db.as_ref()).await.unwrap();
    let idle = replicate_once(&src, &dst.url, 16).await.unwrap();
    assert_eq!((idle.rows, idle.commits), (0, 0));
    assert_eq!(position_in_target(dst.db.as_ref()).await.unwrap(), before);
    let replicas = src.state().await.replicas().await.unwrap();
    assert_eq!(replicas.len(), 1);
    assert_eq!(
        replicas[0].position.as_ref().map(|p| p.to_json()),
        Some(before)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_sqlite() {
    rounds(DbKind::Sqlite, DbKind::Sqlite, "trigger").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_mariadb() {
    rounds(DbKind::Postgres, DbKind::Mysql, "trigger").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_postgres() {
    rounds(DbKind::Mysql, DbKind::Postgres, "trigger").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_postgres() {
    rounds(DbKind::Postgres, DbKind::Postgres, "trigger").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_postgres_timestamp() {
    rounds(DbKind::Sqlite, DbKind::Postgres, "timestamp").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_sqlite_version() {
    rounds(DbKind::Mysql, DbKind::Sqlite, "version").await
}

/// `img` with the texts of column `column` replaced by the doubles they read as.
fn floats_as_values(mut img: Image, column: &str) -> Image {
    let i = img.columns.iter().position(|c| c == column).unwrap();
    for row in img.rows.values_mut() {
        if !row[i].is_empty() {
            let v: f64 = row[i]
                .parse()
                .unwrap_or_else(|e| panic!("{:?}: {e}", row[i]));
            row[i] = format!("{v:e}");
        }
    }
    img
}

/// Values whose types must survive — a key column called `it's`, 2^53 + 1, floats at the edge
/// of their range, a timestamp with microseconds, binary data, NULL — replicated into another
/// database: the target's rows read back the same, and it holds them in its own types (bytes
/// as bytes, not as their hex text; integers exact).
async fn typed_values(from: DbKind, to: DbKind) {
    let src = TestDb::new(from).await;
    let dst = TestDb::new(to).await;
    let table = odd_table(&src).await;
    src.db
        .execute(&odd_insert(from, 1, "first"), &[])
        .await
        .unwrap();
    let report = src.setup(&table, "trigger").await;
    let opts = options_for(&table);
    let first = replicate_with(&src, &dst.url, opts.clone()).await.unwrap();
    assert_eq!(first.rows, 1, "initial copy");

    let big: i64 = 9_007_199_254_740_993;
    let d = src.db.dialect();
    let (q, k) = (d.quote(&table), d.quote(&Ident::new("it's").unwrap()));
    for sql in [
        odd_insert(from, big, "O''Brien \"q\""),
        format!("UPDATE {q} SET f = 1e300, n = 7 WHERE {k} = 1"),
        format!("UPDATE {q} SET f = -2.2250738585072014e-308 WHERE {k} = {big}"),
    ] {
        src.db.execute(&sql, &[]).await.unwrap();
    }
    let s = replicate_with(&src, &dst.url, opts).await.unwrap();
    assert_eq!((s.upserts, s.deletes), (2, 0), "{s:?}");

    let a = replay::table_image(src.db.as_ref(), &src.state().await, &table)
        .await
        .unwrap();
    // The target table has no `updated_at`: read it as the source's registration says.
    let dst_state = dst.state().await;
    dst_state
        .save_table_config(&table, &report.config)
        .await
        .unwrap();
    let b = replay::table_image(dst.db.as_ref(), &dst_state, &table)
        .await
        .unwrap();
    // Each database prints a double its own way (1e+300, 1e300, 1.0e+300): compare values.
    let (a, b) = (floats_as_values(a, "f"), floats_as_values(b, "f"));
    let diff = replay::differences(&a, &b, 10);
    assert!(diff.is_empty(), "{from:?}→{to:?}: {diff:#?}");
    assert_eq!(checksum(&a), checksum(&b));

    let hex = hex_of_b(dst.db.as_ref(), &table, true).await;
    let d = dst.db.dialect();
    let (q, k) = (d.quote(&table), d.quote(&Ident::new("it's").unwrap()));
    assert_eq!(
        hex,
        [Some("00FF10".to_string()), Some("00FF10".to_string())]
    );
    for (what, filter) in [
        ("2^53 + 1 exact", format!("{k} = {big}")),
        ("1e300", format!("{k} = 1 AND f = 1e300 AND n = 7")),
        (
            "the smallest normal double",
            "f = -2.2250738585072014e-308".to_string(),
        ),
    ] {
        assert_eq!(
            dst.count(&format!("SELECT count(*) FROM {q} WHERE {filter}"))
                .await,
            1,
            "{from:?}→{to:?}: {what}"
        );
    }
}

/// SQLite types each value: a BLOB column may hold text, which reaches a target as that text's
/// bytes (not as NULL from a failed hex decoding), next to a real blob decoded from `\x` hex.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_in_a_sqlite_blob_column_keeps_its_bytes() {
    let src = TestDb::new(DbKind::Sqlite).await;
    let table = odd_table(&src).await;
    src.db
        .execute(&odd_insert(DbKind::Sqlite, 1, "blob"), &[])
        .await
        .unwrap();
    src.db
        .execute(
            "INSERT INTO \"order\" (\"it's\", b) VALUES (2, 'plain'), (3, '\\xzz')",
            &[],
        )
        .await
        .unwrap();
    src.setup(&table, "trigger").await;
    for to in [DbKind::Mysql, DbKind::Postgres, DbKind::Sqlite] {
        let dst = TestDb::new(to).await;
        replicate_with(&src, &dst.url, options_for(&table))
            .await
            .unwrap();
        let hex = hex_of_b(dst.db.as_ref(), &table, false).await;
        let text = |s: &str| Some(hex::encode_upper(s));
        assert_eq!(
            hex,
            [Some("00FF10".into()), text("plain"), text("\\xzz")],
            "{to:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_postgres_to_sqlite() {
    typed_values(DbKind::Postgres, DbKind::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_sqlite_to_mariadb() {
    typed_values(DbKind::Sqlite, DbKind::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_mariadb_to_postgres() {
    typed_values(DbKind::Mysql, DbKind::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_sqlite_to_sqlite() {
    typed_values(DbKind::Sqlite, DbKind::Sqlite).await
}

/// A target-side constraint refuses one change: replication stops with an error naming it,
/// nothing of that interval is applied and the position stays; once the source is fixed, it
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unappliable_change_stops_and_names_it() {
    let src = TestDb::new(DbKind::Sqlite).await;
    let dst = TestDb::new(DbKind::Postgres).await;
    src.users_with(50, "trigger").await;
    dst.db
        .execute(
            "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NOT NULL \
             CHECK (name NOT LIKE '%forbidden%'), email TEXT NOT NULL, \
             created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL, \
             is_deleted BOOLEAN NOT NULL)",
            &[],
        )
        .await
        .unwrap();
    replicate_once(&src, &dst.url, 10).await.unwrap();
    let before = position_in_target(dst.db.as_ref()).await.unwrap();
    let live: i64 = src
        .count("SELECT MIN(id) FROM users WHERE NOT is_deleted AND id > 20")
        .await;
    src.db
        .execute(
            "INSERT INTO users (id, name, email) VALUES (9001, 'fine', 'fine@example.com')",
            &[],
        )
        .await
        .unwrap();
    src.db
        .execute(
            "UPDATE users SET name = 'forbidden name' WHERE id = ?",
            &[live.into()],
        )
        .await
        .unwrap();
    let err = replicate_once(&src, &dst.url, 10).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Apply { .. }), "{text}");
    assert!(
        text.contains(&format!("UPDATE of users (id={live})")) && text.contains("check"),
        "{text}"
    );
    assert_eq!(position_in_target(dst.db.as_ref()).await.unwrap(), before);
    assert_eq!(
        dst.count("SELECT count(*) FROM users WHERE id = 9001")
            .await,
        0
    );
    // The CLI says the same and exits 1.
    let out = src.cli(&["replicate", "--target", dst.url.as_str()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("UPDATE of users (id={live})")),
        "{stderr}"
    );
    // Fixed at the source, replication goes on and catches up.
    src.db
        .execute(
            "UPDATE users SET name = 'allowed' WHERE id = ?",
            &[live.into()],
        )
        .await
        .unwrap();
    replicate_once(&src, &dst.url, 10).await.unwrap();
    assert_same(&src, dst.db.as_ref(), &dst.state().await, "after the fix").await;
}

/// A target table whose columns do not match is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_target_table_is_refused() {
    let src = TestDb::new(DbKind::Sqlite).await;
    let dst = TestDb::new(DbKind::Sqlite).await;
    src.users_with(10, "trigger").await;
    dst.db
        .execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
            &[],
        )
        .await
        .unwrap();
    let err = replicate_once(&src, &dst.url, 10).await.unwrap_err();
    assert!(err.is_input_error(), "{err}");
    assert!(err.to_string().contains("columns"), "{err}");
    assert!(position_in_target(dst.db.as_ref()).await.is_none());
}

fn follow(src: &TestDb, target: &str) -> Child {
    tidemark_cmd(&[
        "replicate",
        "--follow",
        "--target",
        target,
        "--batch-size",
        "7",
        "--margin-ms",
        "30",
    ])
    .arg("--source")
    .arg(src.url.as_str())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn tidemark replicate --follow")
}

fn terminate(mut child: Child) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "replicate --follow exited with {status} on SIGTERM"
    );
}

/// Waits until the target equals the source, or panics after `limit`.
async fn until_same(src: &TestDb, dst: &dyn Database, dst_state: &StateStore, limit: Duration) {
    let t0 = Instant::now();
    loop {
        let a = image(src.db.as_ref(), &src.state().await).await;
        let b = replay::table_image(dst, dst_state, &users()).await;
        if b.as_ref()
            .is_ok_and(|b| replay::differences(&a, b, 1).is_empty())
        {
            return;
        }
        if t0.elapsed() > limit {
            assert_same(src, dst, dst_state, "waited in vain").await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// kill -9 of `replicate --follow` at random moments while a writer runs, and crashes at
/// the instants just before and after the target's commit: after a restart the target is
/// exactly the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_following() {
    let src = TestDb::new(DbKind::Postgres).await;
    let dst = TestDb::new(DbKind::Sqlite).await;
    src.users_with(200, "trigger").await;
    let dst_state = dst.state().await;
    let writer = {
        let db = Arc::clone(&src.db);
        tokio::spawn(async move {
            for round in 0..24u64 {
                churn(db.as_ref(), "trigger", 100 + round, 3).await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let mut kills = 0;
    let mut rng = 0x2545f4914f6cdd1du64;
    while !writer.is_finished() {
        let mut child = follow(&src, dst.url.as_str());
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(150 + rng % 500)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    writer.await.unwrap();
    assert!(kills >= 2, "only {kills} kills");
    // Crashes at the two instants around the commit.
    for (fault, seed) in [("before-commit", 500), ("after-commit", 501)] {
        churn(src.db.as_ref(), "trigger", seed, 4).await;
        let out = src.cli_env(
            &[
                "replicate",
                "--target",
                dst.url.as_str(),
                "--margin-ms",
                "30",
            ],
            &[("TIDEMARK_FAULT", fault)],
        );
        assert!(!out.status.success(), "{fault}: the fault did not fire");
    }
    let child = follow(&src, dst.url.as_str());
    until_same(&src, dst.db.as_ref(), &dst_state, Duration::from_secs(30)).await;
    terminate(child);
    assert_same(&src, dst.db.as_ref(), &dst_state, "after kills").await;
}

/// The target goes away while following and comes back: the replicator retries with backoff
/// and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_outage_while_following() {
    let src = TestDb::new(DbKind::Sqlite).await;
    src.users_with(100, "trigger").await;
    let server = tidemark::testkit::PgServer::start().unwrap();
    let url = server.fresh_database().await.unwrap();
    let child = follow(&src, url.as_str());
    let dst = connect(&url, ConnectOptions::default()).await.unwrap();
    let dst_state = StateStore::open(Arc::clone(&dst)).await.unwrap();
    until_same(&src, dst.as_ref(), &dst_state, Duration::from_secs(20)).await;
    server.stop().unwrap();
    for seed in 0..3 {
        churn(src.db.as_ref(), "trigger", 700 + seed, 5).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.start_again().unwrap();
    until_same(&src, dst.as_ref(), &dst_state, Duration::from_secs(40)).await;
    churn(src.db.as_ref(), "trigger", 710, 5).await;
    until_same(&src, dst.as_ref(), &dst_state, Duration::from_secs(20)).await;
    terminate(child);
}

/// With `--follow`, a change appears in the target within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_latency() {
    for kind in [DbKind::Sqlite, DbKind::Postgres] {
        let src = TestDb::new(kind).await;
        let dst = TestDb::new(DbKind::Sqlite).await;
        src.users_with(20, "trigger").await;
        let child = follow(&src, dst.url.as_str());
        let dst_state = dst.state().await;
        until_same(&src, dst.db.as_ref(), &dst_state, Duration::from_secs(20)).await;
        let mut worst = Duration::ZERO;
        for i in 0..3i64 {
            // Idle long enough for the poll interval to reach its longest.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let id = 100_000 + i;
            src.db
                .execute(
                    "INSERT INTO users (id, name, email) VALUES (?, 'fast', ?)",
                    &[id.into(), format!("fast{i}@example.com").into()],
                )
                .await
                .unwrap();
            let t0 = Instant::now();
            let q = format!("SELECT count(*) FROM users WHERE id = {id}");
            while dst.db.query(&q, &[]).await.ok().map(|r| r[0][0].clone())
                != Some(Some("1".into()))
            {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "{kind}: not replicated"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            worst = worst.max(t0.elapsed());
        }
        terminate(child);
        assert!(
            worst < Duration::from_secs(1),
            "{kind}: worst latency {worst:?}"
        );
    }
}

/// A replica is a consumer like an export: `status` lists it with its pending changes, and
/// `prune` keeps the log entries it has not applied yet, on every source database.
async fn replicas_count_for_status_and_prune(kind: DbKind) {
    use tidemark::capture::prune::prune;
    use tidemark::monitor::{collect, Scope};
    let src = TestDb::new(kind).await;
    let dst = TestDb::new(DbKind::Sqlite).await;
    src.users_with(100, "trigger").await;
    src.export("csv", tidemark::capture::Mode::Full).await;
    replicate_once(&src, &dst.url, 64).await.unwrap();
    churn(src.db.as_ref(), "trigger", 7, 3).await;
    src.export("csv", tidemark::capture::Mode::Delta).await;
    let log = "SELECT count(*) FROM tidemark_log_users";
    let entries = src.count(log).await;
    assert!(entries > 0);
    let state = src.state().await;

    let report = collect(src.db.as_ref(), &state, Scope::default())
        .await
        .unwrap();
    let consumers = &report.tables[0].consumers;
    let replica = consumers
        .iter()
        .find(|c| c.kind == "replica")
        .expect("replica listed");
    let export = consumers
        .iter()
        .find(|c| c.kind == "export")
        .expect("export listed");
    assert!(replica.pending.total > 0, "{replica:?}");
    assert!(replica.target.as_deref().unwrap().contains("sqlite"));
    assert_eq!(export.pending.total, 0, "{export:?}");
    let r = prune(src.db.as_ref(), &state, None, false).await.unwrap();
    assert_eq!(r[0].deleted, 0, "the replica still needs them: {r:?}");
    assert_eq!(src.count(log).await, entries);

    replicate_once(&src, &dst.url, 64).await.unwrap();
    let report = collect(src.db.as_ref(), &state, Scope::default())
        .await
        .unwrap();
    assert!(report.tables[0]
        .consumers
        .iter()
        .all(|c| c.pending.total == 0));
    let r = prune(src.db.as_ref(), &state, None, false).await.unwrap();
    assert_eq!(r[0].consumers.len(), 2, "{r:?}");
    let kept = if kind == DbKind::Sqlite { 1 } else { 0 };
    assert_eq!(src.count(log).await, kept, "{r:?}");
    // What was pruned was delivered: both consumers still match the table afterwards.
    churn(src.db.as_ref(), "trigger", 8, 3).await;
    replicate_once(&src, &dst.url, 64).await.unwrap();
    src.export("csv", tidemark::capture::Mode::Delta).await;
    assert_same(&src, dst.db.as_ref(), &dst.state().await, "after prune").await;
    src.assert_replay_equals_table("csv").await;
}
on_each_db!(replicas_count_for_status_and_prune);

/// Following a PostgreSQL trigger table wakes on NOTIFY: with polling set to 30 s, a change
/// still arrives within a few seconds — and from a SQLite source (no notifications) it does
/// not, which shows the wake-up is what delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_postgres_wakes_on_notify() {
    for (kind, wakes) in [(DbKind::Postgres, true), (DbKind::Sqlite, false)] {
        let src = TestDb::new(kind).await;
        let dst = TestDb::new(DbKind::Sqlite).await;
        src.users_with(20, "trigger").await;
        let mut opts = options(64);
        opts.follow = true;
        opts.idle_min = Duration::from_secs(30);
        opts.idle_max = Duration::from_secs(30);
        let mut replicator = Replicator::new(
            Arc::clone(&src.db),
            src.state().await,
            dst.url.clone(),
            opts,
        )
        .unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            replicator
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
        });
        let dst_state = dst.state().await;
        until_same(&src, dst.db.as_ref(), &dst_state, Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        src.db
            .execute(
                "INSERT INTO users (id, name, email) VALUES (777777, 'woken', 'woken@example.com')",
                &[],
            )
            .await
            .unwrap();
        let t0 = Instant::now();
        let mut arrived = false;
        while t0.elapsed() < Duration::from_secs(4) {
            if dst
                .count("SELECT count(*) FROM users WHERE id = 777777")
                .await
                == 1
            {
                arrived = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(arrived, wakes, "{kind}: arrived after {:?}", t0.elapsed());
        let _ = stop_tx.send(());
        task.await.unwrap().unwrap();
    }
}
