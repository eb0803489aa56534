//! The binary as users run it: the exact CSV format on every database (awkward names and
//! values included), seeding, watermark commands, verify, and bad input that must fail with
//! one clear line, the right exit code, and no file or watermark change.

mod common;

use common::{tidemark_cmd, TestDb};
use tidemark::capture::Mode;
use tidemark::db::{ColumnKind, DbKind, Timestamp};
use tidemark::ident::Ident;

/// `tidemark export --consumer c1 --mode full` with extra arguments, run to completion.
fn export_c1(extra: &[&str]) -> std::process::Output {
    let mut args = vec!["export", "--consumer", "c1", "--mode", "full"];
    args.extend_from_slice(extra);
    tidemark_cmd(&args).output().unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: &std::process::Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(err.trim().lines().count() <= 2, "not one clear line: {err}");
}

/// The same awkward table on each database gives byte-identical CSV.
async fn csv_format_is_exact(kind: DbKind) {
    let t = TestDb::new(kind).await;
    let d = t.db.dialect();
    let table = tidemark::ident::TableName::parse("\"it's odd\"").unwrap();
    let col = |n: &str| d.quote(&Ident::new(n).unwrap());
    let ts = d.column_type(ColumnKind::TimestampTz, false);
    t.db.execute(
        &format!(
            "CREATE TABLE {} ({} {} PRIMARY KEY, {} {}, {} {}, {} {}, updated_at {ts} NOT NULL)",
            d.quote_table(&table),
            col("id"),
            d.column_type(ColumnKind::Integer, true),
            col("first name"),
            d.column_type(ColumnKind::Text, false),
            col("order"),
            d.column_type(ColumnKind::Bool, false),
            col("at"),
            ts,
        ),
        &[],
    )
    .await
    .unwrap();
    let at = Timestamp::parse("2026-11-21T04:37:00.123456Z").unwrap();
    let info = t.db.describe(&table).await.unwrap();
    let lit = d.timestamp_literal(&at, info.column("at").unwrap());
    let values = [
        format!("1, 'plain', TRUE, {lit}"),
        "2, 'comma, \"quote\"', FALSE, NULL".to_string(),
        format!("3, '', NULL, {lit}"),
        format!("4, NULL, TRUE, {lit}"),
        format!("5, 'line\nbreak ünïcödé ✓', FALSE, {lit}"),
    ];
    for v in values {
        t.db.execute(
            &format!("INSERT INTO {} VALUES ({v}, {lit})", d.quote_table(&table)),
            &[],
        )
        .await
        .unwrap();
    }
    let out = t.out.path().to_string_lossy().into_owned();
    ok(&t.cli(&["setup", "--table", "it's odd", "--strategy", "timestamp"]));
    let json = ok(&t.cli(&[
        "export",
        "--consumer",
        "fmt",
        "--mode",
        "full",
        "--table",
        "it's odd",
        "--out",
        &out,
        "--json",
    ]));
    let outcome: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(outcome["rows"], 5);
    let file = outcome["file"].as_str().unwrap();
    let name = std::path::Path::new(file)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("full_fmt_") && name.ends_with("Z.csv"),
        "{name}"
    );
    let mut text = std::fs::read_to_string(file).unwrap();
    // Full exports have no defined order; compare rows sorted.
    let header_end = text.find("\r\n").unwrap() + 2;
    let header = text[..header_end].to_string();
    let body = text.split_off(header_end);
    let mut rows: Vec<&str> = body.split("\r\n").filter(|r| !r.is_empty()).collect();
    rows.sort();
    let ts = "2026-11-21T04:37:00.123456Z";
    assert_eq!(header, "id,first name,order,at,updated_at\r\n");
    assert_eq!(
        rows,
        vec![
            format!("1,plain,true,{ts},{ts}"),
            format!("2,\"comma, \"\"quote\"\"\",false,,{ts}"),
            format!("3,\"\",,{ts},{ts}"),
            format!("4,,true,{ts},{ts}"),
            format!("5,\"line\nbreak ünïcödé ✓\",false,{ts},{ts}"),
        ]
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{file}.manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["table"], "it's odd");
    assert_eq!(manifest["rows"], 5);
    assert_eq!(manifest["watermark_before"], serde_json::Value::Null);
    ok(&tidemark_cmd(&["verify", &out]).output().unwrap());
    // Nothing changed since: no file, said so.
    let again = ok(&t.cli(&[
        "export",
        "--consumer",
        "fmt",
        "--mode",
        "delta",
        "--table",
        "it's odd",
        "--out",
        &out,
    ]));
    assert!(again.contains("no changes"), "{again}");
    assert_eq!(t.count_files(), 1);
}
on_each_db!(csv_format_is_exact);

/// Seeding is deterministic, in the past, and appends.
async fn seed_is_deterministic(kind: DbKind) {
    let t = TestDb::new(kind).await;
    let first = ok(&t.cli(&["seed", "--rows", "1500", "--json"]));
    let report: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(report["rows"], 1500);
    ok(&t.cli(&["seed", "--rows", "500"]));
    let rows =
        t.db.query("SELECT COUNT(*), MIN(id), MAX(id) FROM users", &[])
            .await
            .unwrap();
    assert_eq!(
        rows[0],
        vec![Some("2000".into()), Some("1".into()), Some("2000".into())]
    );
    let email =
        t.db.query("SELECT email FROM users WHERE id = 1234", &[])
            .await
            .unwrap();
    assert_eq!(
        email[0][0].as_deref(),
        Some(tidemark::seed::mock_user(1234).1.as_str())
    );
    // No timestamp in the future of the database's clock. (Not of the export's bound: on
    // MariaDB a transaction open elsewhere on the server holds the bound back.)
    t.users(0).await;
    let full = t.export("seedcheck", Mode::Full).await;
    let now = t.db.now().await.unwrap();
    let text = std::fs::read_to_string(full.file.unwrap()).unwrap();
    let mut rdr = tidemark::sink::csv::reader(text.as_bytes());
    let mut checked = 0;
    for rec in rdr.records() {
        let rec = rec.unwrap();
        for i in [3, 4] {
            let ts = Timestamp::parse(&rec[i]).unwrap();
            assert!(ts <= now, "{} in the future of {now}", &rec[i]);
            checked += 1;
        }
    }
    assert!(checked >= 2 * 1900, "{checked} timestamps");
}
on_each_db!(seed_is_deterministic);

/// Watermark get / set / reset through the CLI, with the state in another database.
#[tokio::test]
async fn watermark_commands_and_separate_state() {
    let t = TestDb::new(DbKind::Sqlite).await;
    t.users(100).await;
    let state_dir = tempfile::tempdir().unwrap();
    let state = format!("sqlite://{}", state_dir.path().join("state.db").display());
    let out = t.out.path().to_string_lossy().into_owned();
    let with_state = |args: &[&str]| {
        let mut v = args.to_vec();
        v.extend(["--state", state.as_str()]);
        t.cli(&v)
    };
    let none = ok(&with_state(&["watermark", "get", "--consumer", "w1"]));
    assert!(none.contains("no watermark"), "{none}");
    ok(&with_state(&[
        "export",
        "--consumer",
        "w1",
        "--mode",
        "full",
        "--out",
        &out,
    ]));
    let got = ok(&with_state(&[
        "watermark",
        "get",
        "--consumer",
        "w1",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["position"]["strategy"], "timestamp");
    // The source's own state tables hold nothing for w1.
    let own = ok(&t.cli(&["watermark", "get", "--consumer", "w1"]));
    assert!(own.contains("no watermark"), "{own}");
    ok(&with_state(&[
        "watermark",
        "set",
        "--consumer",
        "w1",
        "--to",
        "2020-01-01T00:00:00Z",
    ]));
    let got = ok(&with_state(&["watermark", "get", "--consumer", "w1"]));
    assert!(got.contains("2020-01-01T00:00:00.000000Z"), "{got}");
    let reset = ok(&with_state(&["watermark", "reset", "--consumer", "w1"]));
    assert!(reset.contains("reset"), "{reset}");
    fails(
        &with_state(&["watermark", "set", "--consumer", "w1", "--to", "yesterday"]),
        2,
        "invalid timestamp",
    );
}

/// Bad input: one clear line, exit 2 (input) or 1 (runtime), nothing written.
#[tokio::test]
async fn bad_input_changes_nothing() {
    let t = TestDb::new(DbKind::Sqlite).await;
    t.users(20).await;
    t.db.execute(
        "CREATE TABLE nokey (a INTEGER, updated_at TIMESTAMPTZ)",
        &[],
    )
    .await
    .unwrap();
    let out = t.out.path().to_string_lossy().into_owned();
    let export = |consumer: &str, table: &str| {
        t.cli(&[
            "export",
            "--consumer",
            consumer,
            "--mode",
            "delta",
            "--table",
            table,
            "--out",
            &out,
        ])
    };
    for bad in [
        "../etc",
        "a/b",
        ".hidden",
        "with space",
        "",
        &"x".repeat(200),
        "é",
    ] {
        fails(&export(bad, "users"), 2, "invalid consumer id");
    }
    fails(&export("c1", "nope"), 2, "not found");
    fails(&export("c1", "nokey"), 2, "no primary key");
    fails(
        &t.cli(&[
            "setup",
            "--table",
            "users",
            "--strategy",
            "timestamp",
            "--cursor-column",
            "nope",
        ]),
        2,
        "does not exist",
    );
    fails(
        &t.cli(&[
            "setup",
            "--table",
            "users",
            "--strategy",
            "timestamp",
            "--cursor-column",
            "name",
        ]),
        2,
        "not a timestamp",
    );
    fails(
        &t.cli(&["setup", "--table", "users", "--strategy", "magic"]),
        2,
        "unknown strategy",
    );
    let usage = t.cli(&[
        "export",
        "--consumer",
        "c1",
        "--mode",
        "sideways",
        "--out",
        &out,
    ]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).starts_with("error: invalid value 'sideways'"));
    fails(&export_c1(&["--source", "oracle://x"]), 2, "unknown scheme");
    fails(
        &export_c1(&["--source", "sqlite:///nonexistent/x.db"]),
        2,
        "does not exist",
    );
    fails(&export_c1(&[]), 2, "no source database");
    fails(
        &export_c1(&["--source", "postgres://nobody@127.0.0.1:1/none"]),
        1,
        "cannot connect",
    );
    let file = t.out.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    fails(
        &t.cli(&[
            "export",
            "--consumer",
            "c1",
            "--mode",
            "full",
            "--out",
            &file.join("sub").to_string_lossy(),
        ]),
        2,
        "not usable",
    );
    assert_eq!(
        common::all_files(t.out.path()),
        vec!["plain-file".to_string()]
    );
    let marks = t.state().await.watermarks().await.unwrap();
    assert!(marks.is_empty(), "{marks:?}");
    // A broken chain or checksum is caught by verify (exit 1).
    ok(&t.cli(&[
        "export",
        "--consumer",
        "c1",
        "--mode",
        "full",
        "--out",
        &out,
    ]));
    let csv = common::csv_files(t.out.path()).pop().unwrap();
    let mut bytes = std::fs::read(&csv).unwrap();
    bytes.push(b'\n');
    std::fs::write(&csv, bytes).unwrap();
    fails(
        &tidemark_cmd(&["verify", &out]).output().unwrap(),
        1,
        "sha256",
    );
}

/// Exports of one consumer from several processes at once: each exits 0 or says another is
/// running; never two files for one range.
#[tokio::test]
async fn concurrent_processes() {
    let t = TestDb::new(DbKind::Sqlite).await;
    t.users(20_000).await;
    let out = t.out.path().to_string_lossy().into_owned();
    let children: Vec<_> = (0..4)
        .map(|_| {
            tidemark_cmd(&[
                "export",
                "--consumer",
                "p",
                "--mode",
                "full",
                "--out",
                &out,
                "--source",
                t.url.as_str(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut succeeded = 0;
    for c in children {
        let o = c.wait_with_output().unwrap();
        if o.status.success() {
            succeeded += 1;
        } else {
            fails(&o, 1, "already running");
        }
    }
    assert!(succeeded >= 1);
    assert_eq!(t.count_files(), succeeded);
    ok(&tidemark_cmd(&["verify", &out]).output().unwrap());
}

/// `setup` uses an index that already leads with the cursor instead of adding a second one,
/// is idempotent, and `teardown` removes only what `setup` added.
async fn setup_reuses_index_and_teardown_removes_only_its_own(kind: DbKind) {
    let t = TestDb::new(kind).await;
    ok(&t.cli(&["seed", "--rows", "10"]));
    let updated_at = Ident::new("updated_at").unwrap();
    let indexes = |table: &'static str| {
        let db = std::sync::Arc::clone(&t.db);
        let column = updated_at.clone();
        async move {
            let mut v = db
                .indexes_leading_with(&tidemark::ident::TableName::parse(table).unwrap(), &column)
                .await
                .unwrap();
            v.sort();
            v
        }
    };
    let seeded = indexes("users").await;
    assert_eq!(seeded, vec!["users_updated_at_idx".to_string()]);
    for _ in 0..2 {
        let said = ok(&t.cli(&["setup", "--strategy", "timestamp"]));
        assert!(
            said.contains("uses existing index users_updated_at_idx"),
            "{said}"
        );
    }
    assert_eq!(indexes("users").await, seeded);

    let d = t.db.dialect();
    t.db.execute(
        &format!(
            "CREATE TABLE plain (id {} PRIMARY KEY, updated_at {} NOT NULL)",
            d.column_type(ColumnKind::Integer, true),
            d.column_type(ColumnKind::TimestampTz, false)
        ),
        &[],
    )
    .await
    .unwrap();
    let first = ok(&t.cli(&["setup", "--table", "plain", "--strategy", "timestamp"]));
    assert!(
        first.contains("installed index tidemark_plain_updated_at_idx"),
        "{first}"
    );
    let again = ok(&t.cli(&["setup", "--table", "plain", "--strategy", "timestamp"]));
    assert!(
        again.contains("uses existing index tidemark_plain_updated_at_idx"),
        "{again}"
    );
    assert_eq!(
        indexes("plain").await,
        vec!["tidemark_plain_updated_at_idx".to_string()]
    );
    ok(&t.cli(&["teardown", "--table", "plain"]));
    assert!(indexes("plain").await.is_empty());
    let gone = ok(&t.cli(&["teardown", "--table", "plain"]));
    assert!(gone.contains("nothing to remove"), "{gone}");
    ok(&t.cli(&["teardown", "--table", "users"]));
    assert_eq!(
        indexes("users").await,
        seeded,
        "teardown dropped an index it did not make"
    );
}
on_each_db!(setup_reuses_index_and_teardown_removes_only_its_own);
