//! Teardown, setup and positions, through the `tidemark` binary as a user runs it, on SQLite,
//! PostgreSQL and MariaDB: a teardown (or a setup that changes the strategy) of a table with
//! consumers and replicas refuses and changes nothing unless `--force`, which removes their
//! positions and says so; a position made by another capture set-up is never read (a delta
//! from it refuses, a full export starts again, a replica resynchronises); `watermark set` to a
//! time the current set-up cannot serve refuses. After every sequence the consumer's replayed
//! exports and the replica equal the table — also with a writer changing balances on a
//! `trigger` table while the teardown and setup happen (the pgbench-style scenario).
//!
//! Exports taken after the writers stopped use `--margin-ms 0`: with no transaction open the
//! capture bound is then the export's start, so they carry every change committed before them
//! whatever the default margin's read-your-writes behaviour.

use crate::common;

use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{csv_files, tidemark_cmd, TestDb};
use sha2::{Digest, Sha256};
use tidemark::db::{Database, DbKind};
use tidemark::export::replay::{self, Image};
use tidemark::ident::{ConsumerId, Ident, TableName};
use tidemark::state::Position;

/// One test at a time: MariaDB's capture bound follows every transaction open on the server,
/// so a writer of one test would hold back the exports of another.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn users() -> TableName {
    TableName::parse("users").unwrap()
}

/// Runs the binary against `t` without blocking the runtime's writers.
async fn cli(t: &TestDb, args: &[&str]) -> Output {
    let url = t.url.as_str().to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tidemark_cmd(&args)
            .arg("--source")
            .arg(url)
            .output()
            .expect("run tidemark")
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts success; returns stdout.
fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts exit 2 (bad input, nothing done); returns stderr.
fn refused(out: &Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: expected exit 2\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

async fn export(t: &TestDb, consumer: &str, mode: &str, margin_ms: Option<u64>) -> Output {
    let out = t.out.path().to_string_lossy().into_owned();
    let margin = margin_ms.map(|m| m.to_string());
    let mut args = vec![
        "export",
        "--consumer",
        consumer,
        "--mode",
        mode,
        "--out",
        out.as_str(),
    ];
    if let Some(m) = &margin {
        args.extend(["--margin-ms", m.as_str()]);
    }
    cli(t, &args).await
}

async fn replicate(t: &TestDb, target: &TestDb, margin_ms: Option<u64>) -> Output {
    let margin = margin_ms.map(|m| m.to_string());
    let mut args = vec!["replicate", "--target", target.url.as_str()];
    if let Some(m) = &margin {
        args.extend(["--margin-ms", m.as_str()]);
    }
    cli(t, &args).await
}

async fn strategy_of(t: &TestDb) -> Option<String> {
    t.db.query(
        "SELECT strategy FROM tidemark_tables WHERE table_name = 'users'",
        &[],
    )
    .await
    .unwrap()
    .first()
    .and_then(|r| r[0].clone())
}

async fn watermark(t: &TestDb, consumer: &str) -> Option<Position> {
    t.state()
        .await
        .watermark(&ConsumerId::new(consumer).unwrap(), &users())
        .await
        .unwrap()
        .map(|w| w.position)
}

async fn image(db: &dyn Database, t: &TestDb) -> Image {
    let state = tidemark::state::StateStore::open(Arc::clone(&t.db))
        .await
        .unwrap();
    replay::table_image(db, &state, &users()).await.unwrap()
}

/// Row count and SHA-256 of every row's text, in key order.
fn checksum(img: &Image) -> (usize, String) {
    let mut h = Sha256::new();
    for row in img.rows.values() {
        h.update(row.join("\u{1f}").as_bytes());
        h.update(b"\n");
    }
    (img.rows.len(), hex::encode(h.finalize()))
}

/// Asserts that the replica in `target` holds exactly the source table.
async fn assert_replica_equals(src: &TestDb, target: &TestDb, what: &str) {
    let a = image(src.db.as_ref(), src).await;
    let b = image(target.db.as_ref(), target).await;
    let diff = replay::differences(&a, &b, 10);
    assert!(
        diff.is_empty(),
        "{} {what}: replica differs: {diff:#?}",
        src.kind
    );
    assert_eq!(checksum(&a), checksum(&b), "{} {what}", src.kind);
}

/// Soft and hard changes a user's application makes between exports.
async fn change(t: &TestDb, round: i64) {
    let d = t.db.dialect();
    let now = d.now_expr();
    let base = 10 * round;
    for id in [base + 1, base + 2, base + 3] {
        t.db.execute(
            &format!("UPDATE users SET name = 'round {round}', updated_at = {now} WHERE id = ?"),
            &[id.into()],
        )
        .await
        .unwrap();
    }
    t.db.execute(
        &format!("UPDATE users SET is_deleted = TRUE, updated_at = {now} WHERE id = ?"),
        &[(base + 4).into()],
    )
    .await
    .unwrap();
    t.db.execute(
        &format!(
            "INSERT INTO users (id, name, email, created_at, updated_at, is_deleted) \
             VALUES (?, 'new in round {round}', 'r{round}@example.com', {now}, {now}, FALSE)"
        ),
        &[(100_000 + round).into()],
    )
    .await
    .unwrap();
}

/// Where replicas go: PostgreSQL into PostgreSQL, the others into SQLite. (A MariaDB target on
/// the source's own server would hold the source's capture bound back with its transaction.)
fn target_kind(source: DbKind) -> DbKind {
    match source {
        DbKind::Postgres => DbKind::Postgres,
        _ => DbKind::Sqlite,
    }
}

async fn seeded(kind: DbKind, rows: u64) -> TestDb {
    let t = TestDb::new(kind).await;
    ok(
        &cli(&t, &["seed", "--rows", &rows.to_string()]).await,
        "seed",
    );
    t
}

/// Strategy changes, teardown and setup, a position from an earlier set-up and a `watermark
/// set` to a time the set-up cannot serve, one after the other with a consumer and a replica;
/// the consumer's replay and the replica equal the table after every step.
async fn sequences(kind: DbKind) {
    let _serial = SERIAL.lock().await;
    let t = seeded(kind, 200).await;
    let target = TestDb::new(target_kind(kind)).await;
    let zero = Some(0);
    ok(
        &cli(&t, &["setup", "--strategy", "timestamp"]).await,
        "setup timestamp",
    );
    ok(&export(&t, "c1", "full", zero).await, "first full export");
    let before_trigger = tidemark::db::Timestamp::now();
    ok(&replicate(&t, &target, zero).await, "first replicate");
    change(&t, 1).await;

    // A strategy change with a consumer and a replica: refused, nothing changed.
    let held = watermark(&t, "c1").await.expect("c1 has a watermark");
    let err = refused(
        &cli(&t, &["setup", "--strategy", "trigger"]).await,
        "strategy change",
    );
    assert!(
        err.contains("export consumer c1") && err.contains("replica replica-"),
        "{err}"
    );
    assert!(
        err.contains("--force") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(strategy_of(&t).await.as_deref(), Some("timestamp"));
    assert_eq!(watermark(&t, "c1").await, Some(held));

    // Forced: the positions go and the output says so.
    let said = ok(
        &cli(&t, &["setup", "--strategy", "trigger", "--force"]).await,
        "forced strategy change",
    );
    assert!(
        said.contains("removed the positions of export consumer c1")
            && said.contains("replica replica-"),
        "{said}"
    );
    assert_eq!(strategy_of(&t).await.as_deref(), Some("trigger"));
    assert_eq!(watermark(&t, "c1").await, None);
    change(&t, 2).await;
    // Its usual delta cannot start from nothing: the rows deleted meanwhile would be missing.
    let files = csv_files(t.out.path()).len();
    let err = refused(
        &export(&t, "c1", "delta", zero).await,
        "delta without its position",
    );
    assert!(
        err.contains("no position") && err.contains("take a full export"),
        "{err}"
    );
    assert_eq!(
        csv_files(t.out.path()).len(),
        files,
        "no file from a refused export"
    );
    ok(&export(&t, "c1", "full", zero).await, "full after switch");
    change(&t, 3).await;
    ok(
        &export(&t, "c1", "delta", zero).await,
        "delta under trigger",
    );
    t.assert_replay_equals_table("c1").await;
    // The replica's position (in the target) came from the timestamp set-up.
    let out = replicate(&t, &target, zero).await;
    ok(&out, "replicate after the switch");
    assert!(
        text(&out.stderr).contains("emptied"),
        "{}",
        text(&out.stderr)
    );
    assert_replica_equals(&t, &target, "after trigger switch").await;

    // A position that outlived its set-up (say, committed by an export that ran during the
    // teardown, or restored from a backup of the state) is never read.
    let old = watermark(&t, "c1")
        .await
        .expect("c1 position under trigger");
    ok(
        &cli(&t, &["setup", "--strategy", "version", "--force"]).await,
        "switch to version",
    );
    t.state()
        .await
        .set_watermark(&ConsumerId::new("c1").unwrap(), &users(), &old)
        .await
        .unwrap();
    change(&t, 4).await;
    let files = csv_files(t.out.path()).len();
    let err = refused(
        &export(&t, "c1", "delta", zero).await,
        "delta from a stale position",
    );
    assert!(
        err.contains("position of consumer c1")
            && err.contains("earlier capture set-up")
            && err.contains("take a full export"),
        "{err}"
    );
    assert_eq!(
        csv_files(t.out.path()).len(),
        files,
        "no file from a refused export"
    );
    assert_eq!(watermark(&t, "c1").await, Some(old.clone()));
    ok(&export(&t, "c1", "full", zero).await, "full resets it");
    let fresh = watermark(&t, "c1").await.unwrap();
    assert!(
        fresh.setup().is_some() && fresh.setup() != old.setup(),
        "{fresh:?}"
    );
    change(&t, 5).await;
    ok(
        &export(&t, "c1", "delta", zero).await,
        "first delta under version",
    );
    change(&t, 6).await;
    ok(
        &export(&t, "c1", "delta", zero).await,
        "delta under version",
    );
    t.assert_replay_equals_table("c1").await;
    // The version column is a schema change the replica's table follows, as a user does it.
    target
        .db
        .execute("ALTER TABLE users ADD COLUMN tidemark_version BIGINT", &[])
        .await
        .unwrap();
    ok(
        &replicate(&t, &target, zero).await,
        "replicate under version",
    );
    assert_replica_equals(&t, &target, "after version switch").await;

    // `watermark set` to a time from before this set-up: its version stamps cannot serve it.
    let held = watermark(&t, "c1").await;
    let err = refused(
        &cli(
            &t,
            &[
                "watermark",
                "set",
                "--consumer",
                "c1",
                "--to",
                &before_trigger.to_string(),
            ],
        )
        .await,
        "watermark set before the set-up",
    );
    assert!(err.contains("before the current version capture"), "{err}");
    assert_eq!(watermark(&t, "c1").await, held);
    // A time it covers is accepted and belongs to this set-up.
    let after = tidemark::db::Timestamp::now().to_string();
    ok(
        &cli(
            &t,
            &["watermark", "set", "--consumer", "c2", "--to", &after],
        )
        .await,
        "watermark set after the set-up",
    );
    let c2 = watermark(&t, "c2").await.unwrap();
    assert_eq!(c2.setup(), watermark(&t, "c1").await.unwrap().setup());

    // Teardown with consumers: refused, nothing removed; forced: positions go, said in JSON.
    let err = refused(&cli(&t, &["teardown"]).await, "teardown with consumers");
    for name in [
        "export consumer c1",
        "export consumer c2",
        "replica replica-",
    ] {
        assert!(err.contains(name), "{name}: {err}");
    }
    assert_eq!(strategy_of(&t).await.as_deref(), Some("version"));
    assert!(watermark(&t, "c1").await.is_some());
    let out = ok(
        &cli(&t, &["--json", "teardown", "--force"]).await,
        "forced teardown",
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let removed: Vec<String> = v["positions_removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            format!(
                "{} {}",
                u["kind"].as_str().unwrap(),
                u["id"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        removed.contains(&"export c1".to_string())
            && removed.contains(&"export c2".to_string())
            && removed.iter().any(|r| r.starts_with("replica replica-")),
        "{out}"
    );
    assert!(v["removed"].to_string().contains("registration"), "{out}");
    assert_eq!(strategy_of(&t).await, None);
    assert_eq!(watermark(&t, "c1").await, None);
    // The teardown removed the version column; the replica's table follows.
    target
        .db
        .execute("ALTER TABLE users DROP COLUMN tidemark_version", &[])
        .await
        .unwrap();

    // Back on the implicit timestamp capture: full, changes, delta; the replica resyncs.
    ok(&export(&t, "c1", "full", zero).await, "full after teardown");
    change(&t, 7).await;
    ok(
        &export(&t, "c1", "delta", zero).await,
        "delta after teardown",
    );
    t.assert_replay_equals_table("c1").await;
    let out = replicate(&t, &target, zero).await;
    ok(&out, "replicate after teardown");
    assert!(
        text(&out.stderr).contains("emptied"),
        "{}",
        text(&out.stderr)
    );
    assert_replica_equals(&t, &target, "after teardown").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_sqlite() {
    sequences(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_postgres() {
    sequences(DbKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_mariadb() {
    sequences(DbKind::Mysql).await;
}

/// A writer moving money between accounts of a `trigger` table (pgbench-style: each
/// transaction updates two balances, a few insert or hard-delete accounts) until `stop`.
async fn writer(db: Arc<dyn Database>, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let d = db.dialect();
    let now = d.now_expr();
    let move_money =
        format!("UPDATE users SET abalance = abalance + ?, updated_at = {now} WHERE id = ?");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut n: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let (a, b) = (1 + (next() % 300) as i64, 1 + (next() % 300) as i64);
        let amount = (next() % 5000) as i64 - 2500;
        let mut stmts = vec![
            tidemark::db::Stmt::new(move_money.clone(), vec![amount.into(), a.into()]),
            tidemark::db::Stmt::new(move_money.clone(), vec![(-amount).into(), b.into()]),
        ];
        if n % 10 == 0 {
            stmts.push(tidemark::db::Stmt::new(
                format!(
                    "INSERT INTO users (id, name, email, created_at, updated_at, is_deleted, \
                     abalance) VALUES (?, 'new', 'new@example.com', {now}, {now}, FALSE, ?)"
                ),
                vec![(1_000_000 + n).into(), amount.into()],
            ));
        }
        if n % 25 == 0 {
            stmts.push(tidemark::db::Stmt::new(
                "DELETE FROM users WHERE id = ?".to_string(),
                vec![(1_000_000 + n - 10).into()],
            ));
        }
        // Deadlocks and busy files are the writer's problem, as in pgbench: try again.
        if db.transaction(&stmts).await.is_ok() {
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Lets the writer commit at least `more` transactions.
async fn let_it_write(done: &AtomicU64, more: u64) {
    let goal = done.load(Ordering::Relaxed) + more;
    for _ in 0..600 {
        if done.load(Ordering::Relaxed) >= goal {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the writer stalled");
}

fn sum_of(img: &Image, column: &str) -> i64 {
    let i = img.columns.iter().position(|c| c == column).unwrap();
    img.rows
        .values()
        .map(|r| r[i].parse::<i64>().unwrap())
        .sum()
}

/// The scenario of issue 9: balances change on a `trigger` table while a consumer and a
/// replica follow it and the table is torn down (refused, then forced) and set up again.
async fn pgbench_style(kind: DbKind) {
    let _serial = SERIAL.lock().await;
    let t = seeded(kind, 300).await;
    let target = TestDb::new(target_kind(kind)).await;
    t.db.execute(
        "ALTER TABLE users ADD COLUMN abalance BIGINT NOT NULL DEFAULT 0",
        &[],
    )
    .await
    .unwrap();
    ok(
        &cli(&t, &["setup", "--strategy", "trigger"]).await,
        "setup trigger",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let w = tokio::spawn(writer(
        Arc::clone(&t.db),
        Arc::clone(&stop),
        Arc::clone(&done),
    ));
    let_it_write(&done, 20).await;
    ok(&export(&t, "c1", "full", None).await, "full under load");
    ok(&replicate(&t, &target, None).await, "replicate under load");
    let_it_write(&done, 50).await;
    ok(&export(&t, "c1", "delta", None).await, "delta under load");

    let err = refused(&cli(&t, &["teardown"]).await, "teardown under load");
    assert!(
        err.contains("export consumer c1") && err.contains("replica replica-"),
        "{err}"
    );
    assert_eq!(strategy_of(&t).await.as_deref(), Some("trigger"));
    let_it_write(&done, 30).await;
    let said = ok(&cli(&t, &["teardown", "--force"]).await, "forced teardown");
    assert!(
        said.contains("removed the positions of export consumer c1"),
        "{said}"
    );
    let_it_write(&done, 30).await;
    ok(
        &cli(&t, &["setup", "--strategy", "trigger"]).await,
        "setup again",
    );
    let_it_write(&done, 30).await;
    // As the teardown said: the consumer starts again from a full read; a delta cannot.
    refused(&export(&t, "c1", "delta", None).await, "delta after setup");
    ok(&export(&t, "c1", "full", None).await, "full after setup");
    let out = replicate(&t, &target, None).await;
    ok(&out, "replicate after setup");
    assert!(
        text(&out.stderr).contains("emptied"),
        "{}",
        text(&out.stderr)
    );
    let_it_write(&done, 50).await;
    ok(&export(&t, "c1", "delta", None).await, "delta after setup");
    ok(&replicate(&t, &target, None).await, "replicate after setup");
    let_it_write(&done, 30).await;
    stop.store(true, Ordering::Relaxed);
    w.await.unwrap();

    // The consumer and the replica run on as a schedule would run them: twice more.
    for round in 0..2 {
        ok(
            &export(&t, "c1", "delta", Some(0)).await,
            &format!("final delta {round}"),
        );
        ok(
            &replicate(&t, &target, Some(0)).await,
            &format!("final replicate {round}"),
        );
    }
    t.assert_replay_equals_table("c1").await;
    let table = image(t.db.as_ref(), &t).await;
    let replayed = replay::replay(
        t.out.path(),
        &ConsumerId::new("c1").unwrap(),
        &users(),
        &[Ident::new("id").unwrap()],
    )
    .unwrap();
    assert_eq!(sum_of(&replayed, "abalance"), sum_of(&table, "abalance"));
    assert_replica_equals(&t, &target, "pgbench-style").await;
    assert!(done.load(Ordering::Relaxed) >= 240);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_style_sqlite() {
    pgbench_style(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_style_postgres() {
    pgbench_style(DbKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_style_mariadb() {
    pgbench_style(DbKind::Mysql).await;
}

/// State written before set-up ids existed: a registration and positions without one keep
/// working, the same setup run again keeps them, and a capture change makes them refused.
async fn old_state(kind: DbKind) {
    let _serial = SERIAL.lock().await;
    let t = TestDb::new(kind).await;
    // Registered as older versions did: the registration has no set-up id.
    t.users_with(100, "trigger").await;
    let registration =
        t.db.query("SELECT config FROM tidemark_tables", &[])
            .await
            .unwrap();
    assert!(
        !format!("{registration:?}").contains("setup"),
        "{registration:?}"
    );
    let zero = Some(0);
    ok(&export(&t, "c1", "full", zero).await, "full on old state");
    let old = watermark(&t, "c1").await.unwrap();
    assert_eq!(old.setup(), None);
    assert!(!old.to_json().contains("setup"), "{}", old.to_json());
    change(&t, 1).await;
    ok(&export(&t, "c1", "delta", zero).await, "delta on old state");
    // The same setup again keeps the set-up (no id) and so the position.
    let said = ok(
        &cli(&t, &["--json", "setup", "--strategy", "trigger"]).await,
        "same setup again",
    );
    let v: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(v["new_setup"], false, "{said}");
    assert!(v["config"].get("setup_id").is_none(), "{said}");
    change(&t, 2).await;
    ok(
        &export(&t, "c1", "delta", zero).await,
        "delta after the same setup",
    );
    t.assert_replay_equals_table("c1").await;
    // A capture change: refused, then forced; the old position is never read again.
    let kept = watermark(&t, "c1").await.unwrap();
    refused(
        &cli(&t, &["setup", "--strategy", "version"]).await,
        "capture change on old state",
    );
    ok(
        &cli(&t, &["setup", "--strategy", "version", "--force"]).await,
        "forced capture change on old state",
    );
    t.state()
        .await
        .set_watermark(&ConsumerId::new("c1").unwrap(), &users(), &kept)
        .await
        .unwrap();
    let err = refused(
        &export(&t, "c1", "delta", zero).await,
        "old position, new set-up",
    );
    assert!(err.contains("earlier capture set-up"), "{err}");
    ok(
        &export(&t, "c1", "full", zero).await,
        "full after the change",
    );
    change(&t, 3).await;
    ok(
        &export(&t, "c1", "delta", zero).await,
        "delta after the change",
    );
    t.assert_replay_equals_table("c1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_state_sqlite() {
    old_state(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_state_postgres() {
    old_state(DbKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_state_mariadb() {
    old_state(DbKind::Mysql).await;
}

/// A replicator that keeps running (as `--follow` does) across a teardown and setup notices
/// the new set-up at its next run and resynchronises, instead of reading the new change log
/// from its old position (which would miss what changed while no trigger was installed).
async fn running_replicator(kind: DbKind) {
    let _serial = SERIAL.lock().await;
    let t = seeded(kind, 100).await;
    let target = TestDb::new(target_kind(kind)).await;
    ok(
        &cli(&t, &["setup", "--strategy", "trigger"]).await,
        "setup trigger",
    );
    let mut opts = tidemark::replicate::ReplicateOptions::new(users());
    opts.margin = Duration::ZERO;
    let mut replicator = tidemark::replicate::Replicator::new(
        Arc::clone(&t.db),
        t.state().await,
        target.url.clone(),
        opts,
    )
    .unwrap();
    let first = replicator.run_once().await.unwrap();
    assert!(first.committed && first.resync.is_none(), "{first:?}");
    ok(
        &cli(&t, &["teardown", "--force"]).await,
        "teardown under a running replicator",
    );
    // Changed while nothing captures the table: only a full read can see these.
    change(&t, 1).await;
    t.db.execute("DELETE FROM users WHERE id = 7", &[])
        .await
        .unwrap();
    ok(
        &cli(&t, &["setup", "--strategy", "trigger"]).await,
        "setup again",
    );
    change(&t, 2).await;
    let next = replicator.run_once().await.unwrap();
    assert!(
        next.resync
            .as_deref()
            .is_some_and(|r| r.contains("another capture set-up")),
        "{next:?}"
    );
    assert_replica_equals(&t, &target, "after a new set-up under a running replicator").await;
    change(&t, 3).await;
    let again = replicator.run_once().await.unwrap();
    assert!(again.committed && again.resync.is_none(), "{again:?}");
    assert_replica_equals(&t, &target, "next run").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_replicator_sqlite() {
    running_replicator(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_replicator_postgres() {
    running_replicator(DbKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_replicator_mariadb() {
    running_replicator(DbKind::Mysql).await;
}

/// The HTTP service: after a forced teardown and setup, the consumer's synchronous export
/// answers 409 saying to take a full export, a delta job fails saying the same, and a full
/// export job starts it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_consumer_after_forced_teardown() {
    use std::io::{BufRead, BufReader};
    let _serial = SERIAL.lock().await;
    let t = seeded(DbKind::Sqlite, 50).await;
    ok(
        &cli(&t, &["setup", "--strategy", "trigger"]).await,
        "setup trigger",
    );
    let mut child = tidemark_cmd(&[
        "--source",
        t.url.as_str(),
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--out",
        &t.out.path().to_string_lossy(),
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Stop(child);
    let base = format!(
        "http://{}",
        line.trim().rsplit("http://").next().unwrap_or_default()
    );
    let c = reqwest::Client::new();
    let post = |path: &str| {
        c.post(format!("{base}{path}"))
            .header("X-Consumer-ID", "app")
            .send()
    };
    let job = |body: serde_json::Value| body["jobId"].as_str().unwrap().to_string();
    let finished = |id: String| {
        let base = base.clone();
        async move { common::finished_job(&base, &id).await }
    };
    let full = post("/exports/full").await.unwrap();
    assert_eq!(full.status(), 202);
    let done = finished(job(full.json().await.unwrap())).await;
    assert_eq!(done["status"], "completed", "{done}");

    let err = refused(
        &cli(&t, &["teardown"]).await,
        "teardown with an HTTP consumer",
    );
    assert!(err.contains("export consumer app"), "{err}");
    ok(&cli(&t, &["teardown", "--force"]).await, "forced teardown");
    ok(
        &cli(&t, &["setup", "--strategy", "trigger"]).await,
        "setup again",
    );
    change(&t, 1).await;

    let sync = post("/export/app").await.unwrap();
    assert_eq!(sync.status(), 409);
    let body = sync.text().await.unwrap();
    assert!(body.contains("take a full export"), "{body}");
    let delta = post("/exports/delta").await.unwrap();
    let failed = finished(job(delta.json().await.unwrap())).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed.to_string().contains("take a full export"),
        "{failed}"
    );

    let full = post("/exports/full").await.unwrap();
    let done = finished(job(full.json().await.unwrap())).await;
    assert_eq!(done["status"], "completed", "{done}");
    change(&t, 2).await;
    let sync = post("/export/app").await.unwrap();
    assert_eq!(sync.status(), 200, "{}", sync.text().await.unwrap());
}
