//! The guarantee of PRODUCT.md on each database: replaying a consumer's exports reproduces the
//! table under random workloads, boundary ties, transactions that commit out of order,
//! concurrent exports and processes killed mid-export.

use crate::common;

use std::time::Duration;

use common::{Raw, TestDb};
use tidemark::capture::Mode;
use tidemark::db::DbKind;
use tidemark::ident::ConsumerId;
use tidemark::seed::{apply_burst, Burst};
use tidemark::Error;

fn burst(seed: u64, scale: u64) -> Burst {
    Burst {
        inserts: 3 * scale,
        updates: 5 * scale,
        soft_deletes: scale,
        seed,
    }
}

async fn replay_random_workload(kind: DbKind) {
    let t = TestDb::new(kind).await;
    t.users(300).await;
    let mut rng_state = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    t.export("replayer", Mode::Full).await;
    for round in 0..8u64 {
        apply_burst(t.db.as_ref(), &burst(round + 1, 1 + next() % 20))
            .await
            .unwrap();
        let mode = match next() % 4 {
            0 => Mode::Full,
            _ => Mode::Delta,
        };
        t.export("replayer", mode).await;
    }
    t.export("replayer", Mode::Delta).await;
    t.assert_replay_equals_table("replayer").await;
}
on_each_db!(replay_random_workload);

/// A row stamped with exactly the watermark's value and committed after the export that set it
/// is in the next export (`updated_at > last` jobs lose it).
async fn equal_cursor_value_after_export(kind: DbKind) {
    let t = TestDb::new(kind).await;
    let table = t.users(50).await;
    let full = t.export("tie", Mode::Full).await;
    let wm = full.watermark_after.clone().unwrap().time();
    let info = t.db.describe(&table).await.unwrap();
    let d = t.db.dialect();
    let lit = d.timestamp_literal(&wm, info.column("updated_at").unwrap());
    t.db.execute(
        &format!("UPDATE users SET name = 'tied row', updated_at = {lit} WHERE id = 7"),
        &[],
    )
    .await
    .unwrap();
    let delta = t.export("tie", Mode::Delta).await;
    let text = std::fs::read_to_string(delta.file.expect("a delta file")).unwrap();
    assert!(text.contains("UPDATE,7,tied row,"), "{text}");
    t.assert_replay_equals_table("tie").await;
}
on_each_db!(equal_cursor_value_after_export);

/// A transaction that stamps a row, stays open across an export and commits after it: the row
/// is in a later export, never lost. (SQLite has one writer: the export waits for it.)
async fn transaction_open_across_exports(kind: DbKind) {
    let t = TestDb::alone(kind).await;
    t.users(100).await;
    t.export("long", Mode::Full).await;
    let mut raw = Raw::late_writer(&t).await;
    if kind == DbKind::Sqlite {
        raw.commit_while_sqlite_export_waits(&t, "long").await;
    } else {
        // Other transactions commit meanwhile, with later cursor values.
        apply_burst(t.db.as_ref(), &burst(7, 5)).await.unwrap();
        let first = t.export("long", Mode::Delta).await;
        if let Some(f) = &first.file {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(!text.contains("late writer"), "uncommitted row exported");
        }
        raw.exec("COMMIT").await;
        let second = t.export("long", Mode::Delta).await;
        let text = std::fs::read_to_string(second.file.expect("late row exported")).unwrap();
        assert!(text.contains("late writer"), "{text}");
    }
    t.assert_replay_equals_table("long").await;
}
on_each_db!(transaction_open_across_exports);

/// Exports of one consumer and table requested at the same instant: one runs, the others are
/// refused with Busy; never two files for one range, never a watermark moved twice.
async fn concurrent_exports_serialize(kind: DbKind) {
    let t = TestDb::new(kind).await;
    t.users(2000).await;
    t.export("racer", Mode::Full).await;
    for round in 0..3u64 {
        apply_burst(t.db.as_ref(), &burst(round + 11, 40))
            .await
            .unwrap();
        let exporter = t.exporter().await;
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let e = exporter.clone();
            let req = t.request("racer", Mode::Delta);
            tasks.push(tokio::spawn(async move { e.export(&req, None).await }));
        }
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(o) => {
                    ok += 1;
                    assert!(o.file.is_some() || o.rows == 0);
                }
                Err(Error::Busy { .. }) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert!(ok >= 1);
    }
    t.export("racer", Mode::Delta).await;
    let chains = tidemark::export::manifest::chains(t.out.path()).unwrap();
    let chain = &chains[&("racer".to_string(), "users".to_string())];
    let mut befores: Vec<String> = chain
        .iter()
        .map(|(_, m)| serde_json::to_string(&m.watermark_before).unwrap())
        .collect();
    let n = befores.len();
    befores.sort();
    befores.dedup();
    assert_eq!(befores.len(), n, "two files cover the same range");
    t.assert_replay_equals_table("racer").await;
}
on_each_db!(concurrent_exports_serialize);

/// The process dies at each instant of an export (file written aside, export prepared, files
/// published but watermark not moved): the next export repairs it, nothing is lost, no two
/// complete files cover the same range, and no temporary file is left.
async fn killed_mid_export_is_repaired(kind: DbKind) {
    let t = TestDb::new(kind).await;
    t.users(200).await;
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
    let export_cli = |fault: Option<&str>| {
        let mut c = delta_cmd();
        if let Some(f) = fault {
            c.env("TIDEMARK_FAULT", f);
        }
        c.output().unwrap()
    };
    t.export("crashy", Mode::Full).await;
    let state = t.state().await;
    let consumer = ConsumerId::new("crashy").unwrap();
    let table = tidemark::ident::TableName::parse("users").unwrap();
    for (i, fault) in ["after-write", "after-prepare", "after-publish"]
        .iter()
        .enumerate()
    {
        apply_burst(t.db.as_ref(), &burst(100 + i as u64, 4))
            .await
            .unwrap();
        let files_before = t.count_files();
        let wm_before = state.watermark(&consumer, &table).await.unwrap().unwrap();
        let crashed = export_cli(Some(fault));
        assert!(
            !crashed.status.success(),
            "{fault}: the process should have died"
        );
        let wm_after_crash = state.watermark(&consumer, &table).await.unwrap().unwrap();
        assert_eq!(
            wm_before.position, wm_after_crash.position,
            "{fault}: watermark moved"
        );
        let published = *fault == "after-publish";
        assert_eq!(
            t.count_files(),
            files_before + usize::from(published),
            "{fault}"
        );

        apply_burst(t.db.as_ref(), &burst(200 + i as u64, 3))
            .await
            .unwrap();
        let next = export_cli(None);
        assert!(
            next.status.success(),
            "{}",
            String::from_utf8_lossy(&next.stderr)
        );
        let stderr = String::from_utf8_lossy(&next.stderr);
        if *fault != "after-write" {
            assert!(stderr.contains("interrupted export"), "{fault}: {stderr}");
        }
        let leftovers: Vec<String> = common::all_files(t.out.path())
            .into_iter()
            .filter(|n| tidemark::sink::file::is_temporary(n))
            .collect();
        assert!(leftovers.is_empty(), "{fault}: {leftovers:?}");
        t.assert_replay_equals_table("crashy").await;
    }
    // And kill -9 at random instants.
    for i in 0..4u64 {
        apply_burst(t.db.as_ref(), &burst(300 + i, 10))
            .await
            .unwrap();
        let mut child = delta_cmd()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5 + (i * 37) % 60)).await;
        let _ = child.kill();
        let _ = child.wait();
    }
    let last = export_cli(None);
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    t.assert_replay_equals_table("crashy").await;
}
on_each_db!(killed_mid_export_is_repaired);
