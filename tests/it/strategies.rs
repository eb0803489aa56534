//! The `trigger` and `version` strategies on each database: the guarantee under random
//! workloads (hard deletes and key changes for `trigger`, soft deletes for `version`), a
//! transaction open across exports, concurrent writers, processes killed mid-export; and what
//! `setup` installs: idempotent, following added columns, removed by `teardown`, JSON images
//! that keep types, identifiers that need quoting.

use crate::common;

use std::time::Duration;

use common::{churn, odd_insert, odd_table, Raw, TestDb};
use tidemark::capture::{self, Mode};
use tidemark::db::{DbKind, Timestamp};
use tidemark::export::ExportRequest;
use tidemark::ident::{ConsumerId, Ident};
use tidemark::seed::{apply_burst, Burst};

/// Generates, for a test `$name(kind, strategy)`, one test per strategy and database.
macro_rules! for_strategies {
    ($name:ident) => {
        mod $name {
            use tidemark::db::DbKind;
            pub async fn trigger(kind: DbKind) {
                super::$name(kind, "trigger").await
            }
            pub async fn version(kind: DbKind) {
                super::$name(kind, "version").await
            }
            crate::on_each_db!(trigger);
            crate::on_each_db!(version);
        }
    };
}

fn text_of(out: &tidemark::export::ExportOutcome) -> String {
    out.file
        .as_ref()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .unwrap_or_default()
}

async fn replay_random_workload(kind: DbKind, strategy: &str) {
    let t = TestDb::new(kind).await;
    t.users_with(300, strategy).await;
    t.export("replayer", Mode::Full).await;
    let mut deletes = 0;
    for round in 0..6u64 {
        churn(t.db.as_ref(), strategy, round + 1, 1 + (round * 7) % 15).await;
        let mode = if round == 3 { Mode::Full } else { Mode::Delta };
        let out = t.export("replayer", mode).await;
        assert!(out.rows > 0, "round {round}: no changes exported");
        deletes += text_of(&out)
            .lines()
            .filter(|l| l.starts_with("DELETE,"))
            .count();
    }
    t.export("replayer", Mode::Delta).await;
    t.assert_replay_equals_table("replayer").await;
    assert!(deletes > 0, "no DELETE in any delta");
}
for_strategies!(replay_random_workload);

/// A transaction that writes, stays open across exports while others commit, and commits
/// after them: its row is in a later export, never lost, never early.
async fn transaction_open_across_exports(kind: DbKind, strategy: &str) {
    let t = TestDb::alone(kind).await;
    t.users_with(100, strategy).await;
    t.export("long", Mode::Full).await;
    // Someone polling INNODB_TRX faster than every 100 ms pins InnoDB's cache of it: the
    // transaction below never shows there, and a bound read from it would pass it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = (kind == DbKind::Mysql).then(|| {
        let (db, stop) = (std::sync::Arc::clone(&t.db), std::sync::Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                db.query("SELECT count(*) FROM information_schema.INNODB_TRX", &[])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let mut raw = Raw::late_writer(&t).await;
    if kind == DbKind::Sqlite {
        raw.commit_while_sqlite_export_waits(&t, "long").await;
    } else {
        // Later transactions (with later ids) commit first, across two exports.
        for round in 0..2u64 {
            churn(t.db.as_ref(), strategy, 40 + round, 4).await;
            let early = t.export("long", Mode::Delta).await;
            if kind == DbKind::Postgres {
                // Transaction snapshots deliver what committed; the clock bound of MariaDB
                // waits for the open transaction instead.
                assert!(early.rows > 0, "the committed changes are exported");
            }
            assert!(
                !text_of(&early).contains("late writer"),
                "uncommitted row exported"
            );
        }
        raw.exec("COMMIT").await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(p) = poller {
            p.await.unwrap();
        }
        let late = t.export("long", Mode::Delta).await;
        let text = text_of(&late);
        assert!(text.contains("INSERT,1000000,late writer"), "{text}");
    }
    t.assert_replay_equals_table("long").await;
}
for_strategies!(transaction_open_across_exports);

/// Writers commit small transactions while exports run back to back.
async fn concurrent_writers_during_exports(kind: DbKind, strategy: &str) {
    let t = TestDb::new(kind).await;
    t.users_with(500, strategy).await;
    t.export("busy", Mode::Full).await;
    // One writer churns in bursts (its inserts take MAX(id) + 1, so it must be alone); the
    // other commits single-row updates in between.
    let db = std::sync::Arc::clone(&t.db);
    let s = strategy.to_string();
    let churner = tokio::spawn(async move {
        for i in 0..12u64 {
            churn(db.as_ref(), &s, 500 + i, 2).await;
        }
    });
    // The updater keeps going until several exports have run while it writes, so the test
    // always exercises exports racing writers, however fast the machine is.
    let exported = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&exported);
    let db = std::sync::Arc::clone(&t.db);
    let updater = tokio::spawn(async move {
        let mut i = 0i64;
        while i < 60 || (seen.load(std::sync::atomic::Ordering::SeqCst) < 3 && i < 100_000) {
            db.execute(
                "UPDATE users SET name = ? WHERE id = ?",
                &[format!("solo {i}").into(), (1 + (i * 37) % 500).into()],
            )
            .await
            .unwrap();
            i += 1;
        }
    });
    let writers = [churner, updater];
    let mut exports = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        t.export("busy", Mode::Delta).await;
        exports += 1;
        exported.store(exports, std::sync::atomic::Ordering::SeqCst);
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(exports >= 2, "exports ran while writing: {exports}");
    t.export("busy", Mode::Delta).await;
    t.assert_replay_equals_table("busy").await;
}
for_strategies!(concurrent_writers_during_exports);

/// The export process dies at each instant (and at random ones under kill -9); the next export
/// repairs it and nothing is lost.
async fn killed_mid_export_is_repaired(kind: DbKind, strategy: &str) {
    let t = TestDb::new(kind).await;
    t.users_with(200, strategy).await;
    let out = t.out.path().to_string_lossy().into_owned();
    let delta_cmd = || {
        common::tidemark_cmd(&[
            "export",
            "--consumer",
            "crashy",
            "--mode",
            "delta",
            "--out",
            &out,
            "--margin-ms",
            "30",
            "--source",
            t.url.as_str(),
        ])
    };
    t.export("crashy", Mode::Full).await;
    let state = t.state().await;
    let consumer = ConsumerId::new("crashy").unwrap();
    let table = tidemark::ident::TableName::parse("users").unwrap();
    for (i, fault) in ["after-write", "after-prepare", "after-publish"]
        .iter()
        .enumerate()
    {
        churn(t.db.as_ref(), strategy, 100 + i as u64, 4).await;
        let wm_before = state.watermark(&consumer, &table).await.unwrap().unwrap();
        let crashed = delta_cmd().env("TIDEMARK_FAULT", fault).output().unwrap();
        assert!(!crashed.status.success(), "{fault}: should have died");
        let wm_after = state.watermark(&consumer, &table).await.unwrap().unwrap();
        assert_eq!(wm_before.position, wm_after.position, "{fault}: moved");
        churn(t.db.as_ref(), strategy, 200 + i as u64, 3).await;
        let next = delta_cmd().output().unwrap();
        assert!(
            next.status.success(),
            "{}",
            String::from_utf8_lossy(&next.stderr)
        );
        t.assert_replay_equals_table("crashy").await;
    }
    for i in 0..3u64 {
        churn(t.db.as_ref(), strategy, 300 + i, 10).await;
        let mut child = delta_cmd()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5 + (i * 37) % 60)).await;
        let _ = child.kill();
        let _ = child.wait();
    }
    let last = delta_cmd().output().unwrap();
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    t.assert_replay_equals_table("crashy").await;
}
for_strategies!(killed_mid_export_is_repaired);

/// How many triggers the database has on `table`.
async fn triggers_on(t: &TestDb, table: &str) -> i64 {
    t.count(&match t.kind {
        DbKind::Postgres => format!(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('\"{table}\"') \
             AND NOT tgisinternal"
        ),
        DbKind::Mysql => format!(
            "SELECT count(*) FROM information_schema.TRIGGERS \
             WHERE EVENT_OBJECT_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = '{table}'"
        ),
        DbKind::Sqlite => {
            format!("SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = '{table}'")
        }
    })
    .await
}

/// Whether a table called `name` exists.
async fn table_exists(t: &TestDb, name: &str) -> bool {
    t.db.describe(&tidemark::ident::TableName::parse(name).unwrap())
        .await
        .is_ok()
}

/// The images of the log's entries as its view shows them, in change order:
/// (operation, before, after).
async fn images(t: &TestDb, view: &str) -> Vec<(String, serde_json::Value, serde_json::Value)> {
    let cast = |c: &str| match t.kind {
        DbKind::Postgres => format!("{c}::text"),
        _ => c.to_string(),
    };
    let view = Ident::new(view).unwrap();
    let rows =
        t.db.query(
            &format!(
                "SELECT operation, {}, {} FROM {} ORDER BY change_id",
                cast("before_image"),
                cast("after_image"),
                t.db.dialect().quote(&view)
            ),
            &[],
        )
        .await
        .unwrap();
    let json = |v: &Option<String>| {
        v.as_deref().map_or(serde_json::Value::Null, |s| {
            serde_json::from_str(s).unwrap()
        })
    };
    rows.iter()
        .map(|r| (r[0].clone().unwrap(), json(&r[1]), json(&r[2])))
        .collect()
}

async fn trigger_setup_is_idempotent_follows_columns_and_tears_down(kind: DbKind) {
    let t = TestDb::new(kind).await;
    let table = t.users_with(10, "trigger").await;
    let report = t.setup(&table, "trigger").await;
    assert_eq!(report.config.cursor_column, "tidemark_log_users");
    // One per operation (statement-level on PostgreSQL, row-level elsewhere).
    assert_eq!(triggers_on(&t, "users").await, 3);
    t.db.execute("UPDATE users SET name = 'once' WHERE id = 3", &[])
        .await
        .unwrap();
    assert_eq!(
        t.count("SELECT count(*) FROM tidemark_log_users").await,
        1,
        "one log entry per change"
    );

    t.db.execute("ALTER TABLE users ADD COLUMN nickname TEXT", &[])
        .await
        .unwrap();
    t.setup(&table, "trigger").await;
    t.db.execute("UPDATE users SET nickname = 'nick' WHERE id = 3", &[])
        .await
        .unwrap();
    let log = images(&t, "tidemark_changes_users").await;
    let (op, before, after) = log.last().unwrap();
    assert_eq!(op, "UPDATE");
    assert_eq!(before["nickname"], serde_json::Value::Null);
    assert_eq!(after["nickname"], "nick");
    assert_eq!(after["name"], "once");
    // The first update's after image is the second's before image.
    assert_eq!(log[0].2["name"], "once");
    assert_eq!(log[0].2["nickname"], serde_json::Value::Null);

    // A key change: the after image carries the new key, and the next change of the new key
    // continues from it.
    t.db.execute("UPDATE users SET id = 1000 WHERE id = 3", &[])
        .await
        .unwrap();
    t.db.execute("UPDATE users SET name = 'moved' WHERE id = 1000", &[])
        .await
        .unwrap();
    t.db.execute("DELETE FROM users WHERE id = 1000", &[])
        .await
        .unwrap();
    let log = images(&t, "tidemark_changes_users").await;
    let [moved, renamed, deleted] = &log[log.len() - 3..] else {
        panic!("three more entries: {log:?}");
    };
    assert_eq!(
        (moved.1["id"].as_i64(), moved.2["id"].as_i64()),
        (Some(3), Some(1000))
    );
    assert_eq!(moved.2["name"], "once");
    assert_eq!(renamed.1, moved.2);
    assert_eq!(renamed.2["name"], "moved");
    assert_eq!(deleted.1, renamed.2);
    assert!(deleted.2.is_null());

    assert!(table_exists(&t, "tidemark_changes_users").await);
    let info = t.db.describe(&table).await.unwrap();
    let config = t.state().await.table_config(&table).await.unwrap().unwrap();
    capture::teardown(t.db.as_ref(), &info, &config)
        .await
        .unwrap();
    assert_eq!(triggers_on(&t, "users").await, 0);
    assert!(!table_exists(&t, "tidemark_log_users").await);
    assert!(!table_exists(&t, "tidemark_changes_users").await);
    if kind == DbKind::Postgres {
        assert_eq!(
            t.count("SELECT count(*) FROM pg_proc WHERE proname LIKE 'tidemark%'")
                .await,
            0
        );
    }
    // The table still takes writes.
    t.db.execute("UPDATE users SET name = 'after' WHERE id = 3", &[])
        .await
        .unwrap();
}
crate::on_each_db!(trigger_setup_is_idempotent_follows_columns_and_tears_down);

async fn version_setup_is_idempotent_stamps_and_tears_down(kind: DbKind) {
    let t = TestDb::new(kind).await;
    let table = t.users_with(10, "version").await;
    t.setup(&table, "version").await;
    let expected = if kind == DbKind::Postgres { 1 } else { 2 };
    assert_eq!(triggers_on(&t, "users").await, expected);
    assert_eq!(
        t.count("SELECT count(*) FROM users WHERE tidemark_version IS NULL")
            .await,
        10,
        "rows from before setup have no version"
    );
    t.db.execute("UPDATE users SET name = 'a' WHERE id = 1", &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    t.db.execute("UPDATE users SET name = 'b' WHERE id = 2", &[])
        .await
        .unwrap();
    let v1 = t
        .count("SELECT tidemark_version FROM users WHERE id = 1")
        .await;
    let v2 = t
        .count("SELECT tidemark_version FROM users WHERE id = 2")
        .await;
    assert!(v1 > 0 && v2 > v1, "versions increase: {v1} then {v2}");

    let info = t.db.describe(&table).await.unwrap();
    let config = t.state().await.table_config(&table).await.unwrap().unwrap();
    capture::teardown(t.db.as_ref(), &info, &config)
        .await
        .unwrap();
    assert_eq!(triggers_on(&t, "users").await, 0);
    let info = t.db.describe(&table).await.unwrap();
    assert!(info.column("tidemark_version").is_none());
    t.db.execute("UPDATE users SET name = 'c' WHERE id = 1", &[])
        .await
        .unwrap();
}
crate::on_each_db!(version_setup_is_idempotent_stamps_and_tears_down);

fn odd_request(t: &TestDb, consumer: &str, mode: Mode) -> ExportRequest {
    ExportRequest::new(
        ConsumerId::new(consumer).unwrap(),
        tidemark::ident::TableName::parse("order").unwrap(),
        mode,
        t.out.path().to_path_buf(),
    )
}

async fn trigger_images_keep_types_and_odd_names(kind: DbKind) {
    let t = TestDb::new(kind).await;
    let table = odd_table(&t).await;
    let d = t.db.dialect();
    t.db.execute(&odd_insert(kind, 1, "first"), &[])
        .await
        .unwrap();
    t.setup(&table, "trigger").await;
    let exporter = t.exporter().await;
    exporter
        .export(&odd_request(&t, "odd", Mode::Full), None)
        .await
        .unwrap();
    let big: i64 = 9_007_199_254_740_993; // 2^53 + 1: not a double
    t.db.execute(&odd_insert(kind, big, "O''Brien \"q\""), &[])
        .await
        .unwrap();
    let (q, k) = (d.quote_table(&table), d.quote(&Ident::new("it's").unwrap()));
    t.db.execute(&format!("UPDATE {q} SET f = 1e300 WHERE {k} = {big}"), &[])
        .await
        .unwrap();
    t.db.execute(&format!("DELETE FROM {q} WHERE {k} = 1"), &[])
        .await
        .unwrap();

    let log = images(&t, "tidemark_changes_order").await;
    let ops: Vec<&str> = log.iter().map(|(o, _, _)| o.as_str()).collect();
    assert_eq!(ops, ["INSERT", "UPDATE", "DELETE"]);
    let (_, none, ins) = &log[0];
    assert!(none.is_null());
    assert_eq!(ins["it's"].as_i64(), Some(big), "{ins}");
    assert_eq!(ins["first name"], "O'Brien \"q\"");
    assert_eq!(ins["f"].as_f64(), Some(0.1), "{ins}");
    assert!(ins["n"].is_null());
    assert!(
        ins["ts"]
            .as_str()
            .is_some_and(|s| s.contains("2026-11-21") && s.contains("04:37:00.123456")),
        "{ins}"
    );
    assert_eq!(ins["b"], "\\x00ff10", "{ins}");
    let (_, before, after) = &log[1];
    assert_eq!(before["f"].as_f64(), Some(0.1));
    assert_eq!(after["f"].as_f64(), Some(1e300), "{after}");
    assert_eq!(after["it's"].as_i64(), Some(big));
    let (_, gone, nothing) = &log[2];
    assert_eq!(gone["it's"].as_i64(), Some(1));
    assert!(nothing.is_null());

    let delta = exporter
        .export(&odd_request(&t, "odd", Mode::Delta), None)
        .await
        .unwrap();
    let text = text_of(&delta);
    assert!(
        text.starts_with("operation,it's,first name,f,ts,b,n"),
        "{text}"
    );
    assert!(text.contains("DELETE,1,,,,,"), "{text}");
    assert!(
        text.contains(&format!("INSERT,{big},\"O'Brien \"\"q\"\"\",1")),
        "{text}"
    );
    t.assert_replay_equals("odd", "order", &["it's"]).await;
}
crate::on_each_db!(trigger_images_keep_types_and_odd_names);

/// MariaDB shows TIMESTAMP values in each session's zone: images are UTC whatever the zone of
/// the session that wrote the change (the trigger) or reads the view (the after image).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_images_are_utc_in_any_mariadb_session_zone() {
    let t = TestDb::new(DbKind::Mysql).await;
    let table = odd_table(&t).await;
    t.db.execute(&odd_insert(DbKind::Mysql, 1, "first"), &[])
        .await
        .unwrap();
    t.setup(&table, "trigger").await;
    let mut writer = Raw::open(&t).await;
    writer.exec("SET time_zone = '+05:00'").await;
    writer
        .exec("UPDATE `order` SET ts = '2026-11-21 10:00:00.654321' WHERE `it's` = 1")
        .await;
    let mut reader = Raw::open(&t).await;
    reader.exec("SET time_zone = '-03:00'").await;
    let image = |side: &str| {
        format!(
            "SELECT CAST(JSON_UNQUOTE(JSON_EXTRACT({side}, '$.ts')) AS CHAR) \
             FROM tidemark_changes_order ORDER BY change_id"
        )
    };
    assert_eq!(
        reader.texts(&image("before_image")).await,
        ["2026-11-21T04:37:00.123456Z"]
    );
    assert_eq!(
        reader.texts(&image("after_image")).await,
        ["2026-11-21T05:00:00.654321Z"]
    );
}

async fn version_odd_names(kind: DbKind) {
    let t = TestDb::new(kind).await;
    let table = odd_table(&t).await;
    let d = t.db.dialect();
    t.db.execute(&odd_insert(kind, 1, "first"), &[])
        .await
        .unwrap();
    t.setup(&table, "version").await;
    let exporter = t.exporter().await;
    exporter
        .export(&odd_request(&t, "odd", Mode::Full), None)
        .await
        .unwrap();
    t.db.execute(&odd_insert(kind, 2, "it''s new"), &[])
        .await
        .unwrap();
    let (q, k) = (d.quote_table(&table), d.quote(&Ident::new("it's").unwrap()));
    let first = d.quote(&Ident::new("first name").unwrap());
    t.db.execute(
        &format!("UPDATE {q} SET {first} = 'changed' WHERE {k} = 1"),
        &[],
    )
    .await
    .unwrap();
    let delta = exporter
        .export(&odd_request(&t, "odd", Mode::Delta), None)
        .await
        .unwrap();
    let text = text_of(&delta);
    assert_eq!(delta.rows, 2, "{text}");
    assert!(text.contains(",1,changed,"), "{text}");
    assert!(text.contains(",2,it's new,"), "{text}");
    t.assert_replay_equals("odd", "order", &["it's"]).await;
}
crate::on_each_db!(version_odd_names);

/// Each kind of change becomes the operation PRODUCT.md names, once per key.
async fn trigger_delta_operations(kind: DbKind) {
    let t = TestDb::new(kind).await;
    t.users_with(20, "trigger").await;
    t.export("ops", Mode::Full).await;
    t.export("inc", Mode::Full).await;
    let now = t.db.dialect().now_expr();
    for sql in [
        format!(
            "INSERT INTO users (id, name, email, created_at, updated_at, is_deleted) \
             VALUES (100, 'new', 'new@example.com', {now}, {now}, FALSE)"
        ),
        "UPDATE users SET name = 'renamed' WHERE id = 100".to_string(),
        format!(
            "INSERT INTO users (id, name, email, created_at, updated_at, is_deleted) \
             VALUES (101, 'brief', 'brief@example.com', {now}, {now}, FALSE)"
        ),
        "DELETE FROM users WHERE id = 101".to_string(),
        "UPDATE users SET name = 'changed' WHERE id = 2".to_string(),
        "UPDATE users SET name = 'twice' WHERE id = 2".to_string(),
        "DELETE FROM users WHERE id = 3".to_string(),
        "UPDATE users SET id = 500 WHERE id = 4".to_string(),
        "UPDATE users SET is_deleted = TRUE WHERE id = 5".to_string(),
    ] {
        t.db.execute(&sql, &[]).await.unwrap();
    }
    let delta = t.export("ops", Mode::Delta).await;
    let text = text_of(&delta);
    let ops: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            (f.next().unwrap().to_string(), f.next().unwrap().to_string())
        })
        .collect();
    let op_of = |id: &str| -> Vec<&str> {
        ops.iter()
            .filter(|(_, k)| k == id)
            .map(|(o, _)| o.as_str())
            .collect()
    };
    assert_eq!(op_of("100"), ["INSERT"], "{text}");
    assert_eq!(op_of("101"), ["DELETE"], "{text}");
    assert_eq!(op_of("2"), ["UPDATE"], "{text}");
    assert_eq!(op_of("3"), ["DELETE"], "{text}");
    assert_eq!(op_of("4"), ["DELETE"], "{text}");
    assert_eq!(op_of("500"), ["INSERT"], "{text}");
    assert_eq!(op_of("5"), ["DELETE"], "{text}");
    assert_eq!(ops.len(), 7, "{text}");
    assert!(text.contains("INSERT,100,renamed,"), "{text}");
    assert!(text.contains("UPDATE,2,twice,"), "{text}");
    // Incremental: the live rows changed, latest values, each once.
    let incremental = t.export("inc", Mode::Incremental).await;
    let text = text_of(&incremental);
    let mut ids: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["100", "2", "500"], "{text}");
    assert!(text.contains("100,renamed,"), "{text}");
    t.assert_replay_equals_table("ops").await;
}
crate::on_each_db!(trigger_delta_operations);

/// `prune` deletes exactly the log entries that every consumer has passed: nothing while one
/// consumer has passed nothing, then the first burst once both have; the consumer that lagged
/// still gets every change, and SQLite keeps its newest entry (positions count by rowid there).
async fn prune_keeps_what_a_consumer_still_needs(kind: DbKind) {
    use tidemark::capture::prune::prune;
    let t = TestDb::new(kind).await;
    t.users_with(200, "trigger").await;
    let entries = "SELECT count(*) FROM tidemark_log_users";
    t.export("ahead", Mode::Full).await;
    t.export("behind", Mode::Full).await;
    churn(t.db.as_ref(), "trigger", 1, 10).await;
    let first = t.count(entries).await;
    assert!(first > 0);
    t.export("ahead", Mode::Delta).await;
    churn(t.db.as_ref(), "trigger", 2, 10).await;
    let total = t.count(entries).await;
    assert!(total > first);
    let state = t.state().await;
    let ahead = state
        .watermark(
            &ConsumerId::new("ahead").unwrap(),
            &tidemark::ident::TableName::parse("users").unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ahead.position.change_id().is_some(),
        kind == DbKind::Sqlite,
        "positions count by change id on SQLite only: {:?}",
        ahead.position
    );

    let r = prune(t.db.as_ref(), &state, None, false).await.unwrap();
    assert_eq!(r[0].deleted, 0, "behind has passed nothing: {r:?}");
    assert_eq!(r[0].consumers.len(), 2);
    assert_eq!(t.count(entries).await, total);

    t.export("behind", Mode::Delta).await;
    let dry = prune(t.db.as_ref(), &state, None, true).await.unwrap();
    assert_eq!(
        dry[0].deleted as i64, first,
        "dry run counts the first burst"
    );
    assert_eq!(t.count(entries).await, total, "a dry run deletes nothing");
    let r = prune(t.db.as_ref(), &state, None, false).await.unwrap();
    assert_eq!(r[0].deleted as i64, first, "{r:?}");
    assert_eq!(t.count(entries).await, total - first);

    t.export("ahead", Mode::Delta).await;
    t.assert_replay_equals_table("ahead").await;
    t.assert_replay_equals_table("behind").await;
    prune(t.db.as_ref(), &state, None, false).await.unwrap();
    let kept = if kind == DbKind::Sqlite { 1 } else { 0 };
    assert_eq!(t.count(entries).await, kept);

    // Changes after a full prune still reach both consumers.
    churn(t.db.as_ref(), "trigger", 3, 5).await;
    t.export("ahead", Mode::Delta).await;
    t.export("behind", Mode::Delta).await;
    t.assert_replay_equals_table("ahead").await;
    t.assert_replay_equals_table("behind").await;
}
crate::on_each_db!(prune_keeps_what_a_consumer_still_needs);

/// `tidemark status --json` counts a consumer's pending changes by operation for both
/// strategies (hard deletes for `trigger`, soft ones for `version`), and none once delivered.
async fn status_counts_pending_changes(kind: DbKind, strategy: &str) {
    let t = TestDb::new(kind).await;
    t.users_with(50, strategy).await;
    t.export("watcher", Mode::Full).await;
    let d = t.db.dialect();
    let now = d.now_expr();
    t.db.execute(
        &format!("UPDATE users SET name = 'x', updated_at = {now} WHERE id IN (1, 2, 3)"),
        &[],
    )
    .await
    .unwrap();
    let delete = if strategy == "trigger" {
        "DELETE FROM users WHERE id IN (4, 5)".to_string()
    } else {
        let yes = if kind == DbKind::Postgres {
            "true"
        } else {
            "1"
        };
        format!("UPDATE users SET is_deleted = {yes}, updated_at = {now} WHERE id IN (4, 5)")
    };
    t.db.execute(&delete, &[]).await.unwrap();
    apply_burst(
        t.db.as_ref(),
        &Burst {
            inserts: 4,
            updates: 0,
            soft_deletes: 0,
            seed: 9,
        },
    )
    .await
    .unwrap();
    let status = |t: &TestDb| {
        let out = t.cli(&["--json", "status"]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let v = status(&t);
    let table = &v["tables"][0];
    assert_eq!(table["strategy"], strategy);
    let pending = &table["consumers"][0]["pending"];
    assert_eq!(pending["insert"], 4, "{v}");
    assert_eq!(pending["update"], 3, "{v}");
    assert_eq!(pending["delete"], 2, "{v}");
    assert_eq!(pending["total"], 9, "{v}");
    assert!(table["consumers"][0]["lag_seconds"].as_f64().unwrap() > 0.0);
    t.export("watcher", Mode::Delta).await;
    let v = status(&t);
    assert_eq!(v["tables"][0]["consumers"][0]["pending"]["total"], 0, "{v}");
    let text = t.cli(&["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("watcher"));
}
for_strategies!(status_counts_pending_changes);

/// `tidemark --json status` with `extra` flags: its exit code and report.
fn status_json(t: &TestDb, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["--json", "status"];
    args.extend_from_slice(extra);
    let out = t.cli(&args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status printed no report ({e}): {out:?}"));
    // Every key snake_case (PRODUCT.md), at any depth.
    let mut stack = vec![&v];
    while let Some(x) = stack.pop() {
        match x {
            serde_json::Value::Object(m) => {
                for (k, y) in m {
                    assert!(
                        k.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                        "key {k:?} is not snake_case: {v}"
                    );
                    stack.push(y);
                }
            }
            serde_json::Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    (out.status.code().unwrap_or(-1), v)
}

/// The report's entry for consumer `id` of table `users`.
fn consumer_of<'a>(v: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    v["tables"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["table"] == "users"))
        .and_then(|t| t["consumers"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["consumer_id"] == id))
        .unwrap_or_else(|| panic!("no consumer {id} of users in {v}"))
}

/// Makes one change to row 1 whose change time is `at` as the strategy records it, through
/// the database's own SQL (what an application or a DBA could do), and moves every other row's
/// cursor to `others`: `timestamp` — the row's `updated_at`; `trigger` — the log entry's
/// `changed_at`; `version` — the version (MariaDB, SQLite: a clock value; the trigger is
/// bypassed on MariaDB, whose BEFORE trigger stamps every write). On PostgreSQL a version is a
/// transaction id, which cannot be aged: the change is made now.
async fn age_one_change(t: &TestDb, strategy: &str, at: Timestamp, others: Timestamp) {
    let d = t.db.dialect();
    let info =
        t.db.describe(&tidemark::ident::TableName::parse("users").unwrap())
            .await
            .unwrap();
    let updated_at = info.column("updated_at").unwrap();
    let run = |sql: String| async move {
        t.db.execute(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    };
    match strategy {
        "timestamp" => {
            run(format!(
                "UPDATE users SET name = 'aged', updated_at = CASE WHEN id = 1 THEN {} ELSE {} END",
                d.timestamp_literal(&at, updated_at),
                d.timestamp_literal(&others, updated_at)
            ))
            .await
        }
        "trigger" => {
            run("UPDATE users SET name = 'aged' WHERE id = 1".into()).await;
            let at = match t.kind {
                DbKind::Sqlite => format!("julianday('{at}')"),
                DbKind::Postgres => format!("'{at}'::timestamptz"),
                DbKind::Mysql => format!("'{}'", at.to_sql_naive()),
            };
            run(format!("UPDATE tidemark_log_users SET changed_at = {at}")).await;
        }
        "version" => {
            let micros = at.as_datetime().timestamp_micros();
            match t.kind {
                DbKind::Postgres => run("UPDATE users SET name = 'aged' WHERE id = 1".into()).await,
                DbKind::Sqlite => {
                    // The stamping trigger leaves a write that sets the version itself alone.
                    run(format!(
                        "UPDATE users SET name = 'aged', tidemark_version = {micros} WHERE id = 1"
                    ))
                    .await
                }
                DbKind::Mysql => {
                    run("DROP TRIGGER tidemark_version_users_upd".into()).await;
                    run(format!(
                        "UPDATE users SET name = 'aged', tidemark_version = {micros} WHERE id = 1"
                    ))
                    .await;
                    // `setup` again puts the trigger back.
                    t.setup(
                        &tidemark::ident::TableName::parse("users").unwrap(),
                        "version",
                    )
                    .await;
                }
            }
        }
        other => panic!("no strategy {other}"),
    }
}

/// Lag is the age of the oldest change not yet delivered, whatever the strategy: a change
/// dated an hour back reads back as 3600 s and makes `status` exit 1 over `--max-lag-secs 60`;
/// once delivered, lag is 0 and `status` exits 0, however long ago the watermark moved; a
/// change made just now reads as a lag of about 0, lagging only over `--max-pending`.
async fn lag_is_the_age_of_the_oldest_pending_change(kind: DbKind, strategy: &str) {
    let t = TestDb::new(kind).await;
    t.users_with(20, strategy).await;
    let now = t.db.now().await.unwrap();
    let ago = |secs: u64| now.minus(Duration::from_secs(secs));
    let set_watermark = |to: Timestamp| {
        let out = t.cli(&[
            "watermark",
            "set",
            "--consumer",
            "aged",
            "--to",
            &to.to_string(),
        ]);
        assert!(out.status.success(), "{out:?}");
    };
    set_watermark(ago(7200));
    age_one_change(&t, strategy, ago(3600), ago(10800)).await;
    // A PostgreSQL version is a transaction id: its lag is bounded by the position's time.
    let undatable = kind == DbKind::Postgres && strategy == "version";
    let (expected, from) = if undatable {
        (7200.0, "position")
    } else {
        (3600.0, "oldest_pending")
    };

    let (code, v) = status_json(&t, &["--max-lag-secs", "60"]);
    let c = consumer_of(&v, "aged");
    assert_eq!(c["pending"]["total"], 1, "{v}");
    assert_eq!(c["lag_from"], from, "{v}");
    let lag = c["lag_seconds"].as_f64().unwrap();
    assert!(
        (lag - expected).abs() < 15.0,
        "lag {lag}, expected {expected}: {v}"
    );
    assert_eq!(c["health"], "lagging", "{v}");
    assert_eq!(v["health"], "lagging", "{v}");
    assert_eq!(code, 1, "a lagging consumer must fail status: {v}");
    if !undatable {
        let oldest = Timestamp::parse(c["oldest_pending"].as_str().unwrap()).unwrap();
        let off = (oldest.as_datetime() - ago(3600).as_datetime()).num_milliseconds();
        assert!(
            off.abs() <= 1,
            "oldest pending {oldest}, made at {}",
            ago(3600)
        );
    }
    // Under both thresholds it is ok; the text form says the same with its exit code.
    let (code, v) = status_json(&t, &["--max-lag-secs", "86400"]);
    assert_eq!(
        (code, consumer_of(&v, "aged")["health"].as_str()),
        (0, Some("ok")),
        "{v}"
    );
    let text = t.cli(&["status", "--max-lag-secs", "60"]);
    assert_eq!(text.status.code(), Some(1), "{text:?}");
    assert!(
        String::from_utf8_lossy(&text.stderr).contains("aged"),
        "{text:?}"
    );

    // Delivered: nothing pending, lag 0, ok.
    let dir = t.out.path().to_str().unwrap();
    let out = t.cli(&[
        "export",
        "--consumer",
        "aged",
        "--mode",
        "delta",
        "--out",
        dir,
    ]);
    assert!(out.status.success(), "{out:?}");
    let (code, v) = status_json(&t, &["--max-lag-secs", "60"]);
    let c = consumer_of(&v, "aged");
    assert_eq!(c["pending"]["total"], 0, "{v}");
    assert_eq!(c["lag_seconds"].as_f64(), Some(0.0), "{v}");
    assert_eq!(c["lag_from"], "nothing_pending", "{v}");
    assert_eq!((code, v["health"].as_str()), (0, Some("ok")), "{v}");

    // A watermark that moved half an hour ago with nothing after it: still lag 0. (On
    // PostgreSQL a hand-set time is no transaction snapshot for `version`: the next export
    // starts from the beginning, so everything versioned would be pending again.)
    if !undatable {
        set_watermark(ago(1800));
        let (code, v) = status_json(&t, &["--max-lag-secs", "60"]);
        let c = consumer_of(&v, "aged");
        assert_eq!(c["pending"]["total"], 0, "{v}");
        assert_eq!(c["lag_seconds"].as_f64(), Some(0.0), "{v}");
        assert_eq!(code, 0, "{v}");
    }

    // A change made just now is pending at once, with a lag of about 0.
    let d = t.db.dialect();
    t.db.execute(
        &format!(
            "UPDATE users SET name = 'fresh', updated_at = {} WHERE id = 2",
            d.now_expr()
        ),
        &[],
    )
    .await
    .unwrap();
    let (code, v) = status_json(&t, &["--max-lag-secs", "60"]);
    let c = consumer_of(&v, "aged");
    assert_eq!(c["pending"]["total"], 1, "{v}");
    let lag = c["lag_seconds"].as_f64().unwrap();
    assert!(
        (0.0..10.0).contains(&lag),
        "lag {lag} of a change just made: {v}"
    );
    assert_eq!(code, 0, "{v}");
    let (code, v) = status_json(&t, &["--max-pending", "0"]);
    assert_eq!(code, 1, "one pending change over --max-pending 0: {v}");
    assert_eq!(consumer_of(&v, "aged")["health"], "lagging", "{v}");
}

mod lag_is_the_age_of_the_oldest_pending_change {
    use tidemark::db::DbKind;
    pub async fn timestamp(kind: DbKind) {
        super::lag_is_the_age_of_the_oldest_pending_change(kind, "timestamp").await
    }
    pub async fn trigger(kind: DbKind) {
        super::lag_is_the_age_of_the_oldest_pending_change(kind, "trigger").await
    }
    pub async fn version(kind: DbKind) {
        super::lag_is_the_age_of_the_oldest_pending_change(kind, "version").await
    }
    crate::on_each_db!(timestamp);
    crate::on_each_db!(trigger);
    crate::on_each_db!(version);
}

/// On PostgreSQL a `version` is a transaction id; with `track_commit_timestamp = on` its lag
/// is the age of the oldest pending transaction's commit: a change just made reads about 0,
/// although the watermark stands two hours back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_version_lag_is_the_commit_time_of_the_oldest_pending_version() {
    let server = tidemark::testkit::PgServer::start().expect("start PostgreSQL");
    let url = server.url("postgres");
    let db = tidemark::db::connect(
        &tidemark::db::DbUrl::parse(&url).unwrap(),
        tidemark::db::ConnectOptions::default(),
    )
    .await
    .unwrap();
    db.execute("ALTER SYSTEM SET track_commit_timestamp = on", &[])
        .await
        .unwrap();
    drop(db);
    server.stop().unwrap();
    server.start_again().unwrap();
    let cli = |args: &[&str]| {
        let out = common::tidemark_cmd(&["--source", &url])
            .args(args)
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), out)
    };
    for args in [
        &["seed", "--rows", "20"][..],
        &["setup", "--table", "users", "--strategy", "version"],
    ] {
        let (code, out) = cli(args);
        assert_eq!(code, 0, "{out:?}");
    }
    let db = tidemark::db::connect(
        &tidemark::db::DbUrl::parse(&url).unwrap(),
        tidemark::db::ConnectOptions::default(),
    )
    .await
    .unwrap();
    let back = db.now().await.unwrap().minus(Duration::from_secs(7200));
    // A consumer whose position is two hours old: its export, then the position's time set
    // back (its transaction snapshot kept), as if it had not run since.
    let out_dir = tempfile::tempdir().unwrap();
    let out_dir = out_dir.path().to_string_lossy().into_owned();
    let (code, out) = cli(&[
        "export",
        "--consumer",
        "c1",
        "--mode",
        "full",
        "--out",
        &out_dir,
    ]);
    assert_eq!(code, 0, "{out:?}");
    let rows = db
        .query(
            "SELECT position FROM tidemark_watermarks WHERE consumer_id = 'c1'",
            &[],
        )
        .await
        .unwrap();
    let mut position: serde_json::Value =
        serde_json::from_str(rows[0][0].as_deref().unwrap()).unwrap();
    position["time"] = back.to_string().into();
    db.execute(
        "UPDATE tidemark_watermarks SET position = ? WHERE consumer_id = 'c1'",
        &[position.to_string().into()],
    )
    .await
    .unwrap();
    db.execute("UPDATE users SET name = 'fresh' WHERE id = 5", &[])
        .await
        .unwrap();
    let made = db.now().await.unwrap();
    let (code, out) = cli(&["--json", "status", "--max-lag-secs", "60"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = consumer_of(&v, "c1");
    assert_eq!(c["pending"]["total"], 1, "{v}");
    assert_eq!(c["lag_from"], "oldest_pending", "{v}");
    let lag = c["lag_seconds"].as_f64().unwrap();
    assert!((0.0..10.0).contains(&lag), "lag {lag}: {v}");
    let oldest = Timestamp::parse(c["oldest_pending"].as_str().unwrap()).unwrap();
    assert!(
        oldest > back && oldest <= made,
        "{oldest} not in ({back}, {made}]"
    );
    assert_eq!(code, 0, "{v}");
}

/// The replica's entry for table `users` in a status report.
fn replica_of(v: &serde_json::Value) -> &serde_json::Value {
    v["tables"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["table"] == "users"))
        .and_then(|t| t["consumers"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["kind"] == "replica"))
        .unwrap_or_else(|| panic!("no replica of users in {v}"))
}

/// A replica's lag is measured like an export consumer's: 0 once replicated, about 0 for a
/// change made just now, and — where the replica's position counts by transaction or change
/// id (PostgreSQL, SQLite), so that a log entry can be dated back without leaving the
/// interval — 3600 s for a change dated an hour back, which makes `status` exit 1.
async fn replica_lag_is_the_age_of_its_oldest_pending_change(kind: DbKind) {
    let t = TestDb::new(kind).await;
    t.users_with(20, "trigger").await;
    let target = TestDb::new(DbKind::Sqlite).await;
    let replicate = || {
        let out = t.cli(&["replicate", "--target", target.url.as_str()]);
        assert!(out.status.success(), "{out:?}");
    };
    replicate();
    let (code, v) = status_json(&t, &["--max-lag-secs", "60", "--max-pending", "0"]);
    let r = replica_of(&v);
    assert_eq!(
        (r["pending"]["total"].as_u64(), r["lag_seconds"].as_f64()),
        (Some(0), Some(0.0)),
        "{v}"
    );
    assert_eq!(code, 0, "{v}");

    t.db.execute("UPDATE users SET name = 'fresh' WHERE id = 3", &[])
        .await
        .unwrap();
    let (code, v) = status_json(&t, &["--max-lag-secs", "60"]);
    let r = replica_of(&v);
    assert_eq!(r["pending"]["total"], 1, "{v}");
    let lag = r["lag_seconds"].as_f64().unwrap();
    assert!((0.0..10.0).contains(&lag), "lag {lag}: {v}");
    assert_eq!(code, 0, "{v}");
    let (code, _) = status_json(&t, &["--max-pending", "0"]);
    assert_eq!(code, 1, "a pending change over --max-pending 0: {v}");

    if kind != DbKind::Mysql {
        let hour_ago = t.db.now().await.unwrap().minus(Duration::from_secs(3600));
        let at = match kind {
            DbKind::Sqlite => format!("julianday('{hour_ago}')"),
            _ => format!("'{hour_ago}'::timestamptz"),
        };
        t.db.execute(
            &format!("UPDATE tidemark_log_users SET changed_at = {at}"),
            &[],
        )
        .await
        .unwrap();
        let (code, v) = status_json(&t, &["--max-lag-secs", "60"]);
        let r = replica_of(&v);
        let lag = r["lag_seconds"].as_f64().unwrap();
        assert!((lag - 3600.0).abs() < 15.0, "lag {lag}: {v}");
        assert_eq!((code, r["health"].as_str()), (1, Some("lagging")), "{v}");
    }
    replicate();
    let (code, v) = status_json(&t, &["--max-lag-secs", "60", "--max-pending", "0"]);
    let r = replica_of(&v);
    assert_eq!(r["pending"]["total"], 0, "{v}");
    assert_eq!(r["lag_seconds"].as_f64(), Some(0.0), "{v}");
    assert_eq!(code, 0, "{v}");
}
crate::on_each_db!(replica_lag_is_the_age_of_its_oldest_pending_change);
