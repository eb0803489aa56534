//! The binary as users run it: the exact CSV format on every database (awkward names and
//! values included), seeding, watermark commands, verify, and bad input that must fail with
//! one clear line, the right exit code, and no file or watermark change.

use crate::common;

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
    let mut rdr = tidemark::format::csv::reader(text.as_bytes());
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

/// The rows of the demo's accounts table in a SQLite file, in key order.
fn accounts_in(path: &std::path::Path) -> Vec<String> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut s = c
        .prepare("SELECT id, owner, email, balance FROM accounts ORDER BY id")
        .unwrap();
    s.query_map([], |r| {
        Ok(format!(
            "{}|{}|{}|{}",
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// `tidemark demo`, piped: both stories in plain lines (exports, then trigger capture with
/// before/after images, replication checked by checksum, status), a replica that holds exactly
/// the source's accounts, and `--serve` serving the status page of the demo database.
#[tokio::test]
async fn demo_tells_both_stories_and_serves_the_page() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let dir_arg = dir.to_str().unwrap();
    let t0 = std::time::Instant::now();
    let text = ok(&tidemark_cmd(&["demo", "--dir", dir_arg, "--rows", "3000"])
        .output()
        .unwrap());
    let took = t0.elapsed();
    assert!(
        !text.contains('\r') && !text.contains('\x1b'),
        "terminal codes when piped:\n{text}"
    );
    for step in [
        "seed",
        "setup",
        "full export",
        "burst",
        "delta export",
        "verify",
        "replay",
        "trigger setup",
        "replicate",
        "images",
        "compare",
        "status",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{step} "))),
            "no {step} step in:\n{text}"
        );
    }
    let after = |needle: &str| -> Vec<&str> {
        let lines: Vec<&str> = text.lines().collect();
        let i = lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{text}"));
        lines[i..(i + 3).min(lines.len())].to_vec()
    };
    // The key change: the before image has the old key, the after image the new one.
    let moved = after("UPDATE (key change) key 12 → ");
    assert!(
        moved[1].trim_start().starts_with("before {\"id\":12,"),
        "{moved:?}"
    );
    assert!(
        moved[2].trim_start().starts_with("after  {\"id\":"),
        "{moved:?}"
    );
    assert!(!moved[2].contains("\"id\":12,"), "{moved:?}");
    // The hard delete: a before image and no after image.
    let gone = after("DELETE (hard delete)");
    assert!(gone[1].contains("before {\"id\":"), "{gone:?}");
    assert!(gone[2].trim_end().ends_with("after  NULL"), "{gone:?}");
    assert!(text.contains("on both sides"), "{text}");
    for needle in [
        "accounts — trigger capture",
        "users — timestamp capture",
        "replica of accounts → ",
    ] {
        assert!(
            text.contains(needle),
            "status report lacks {needle:?}:\n{text}"
        );
    }
    // The replica holds exactly the source's accounts, burst included.
    let source = accounts_in(&dir.join("demo.db"));
    let replica = accounts_in(&dir.join("replica.db"));
    assert!(source.len() > 500, "{}", source.len());
    assert_eq!(source, replica);
    assert!(
        !source.iter().any(|r| r.starts_with("12|")),
        "the key change is not applied"
    );
    println!("demo with 3000 users: {took:?}");

    // --serve: the status page of the demo database.
    let mut child = tidemark_cmd(&[
        "demo",
        "--dir",
        dir_arg,
        "--rows",
        "500",
        "--serve",
        "--listen",
        "127.0.0.1:0",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the demo ended without serving")
            .unwrap();
        if let Some(rest) = line.strip_prefix("status page: ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let http = reqwest::Client::new();
    let page = http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("<title>tidemark status</title>"));
    let stats: serde_json::Value = http
        .get(format!("{url}stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tables: Vec<&str> = stats["tables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["table"].as_str())
        .collect();
    assert_eq!(tables, ["accounts", "users"], "{stats}");
    let _ = child.kill();
    let _ = child.wait();
}

/// The subcommands `tidemark --help` lists (without `help`), and `watermark`'s own.
fn subcommands() -> Vec<Vec<String>> {
    let top = ok(&tidemark_cmd(&["--help"]).output().unwrap());
    let mut names: Vec<Vec<String>> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(|n| vec![n.to_string()])
        .collect();
    assert!(names.len() >= 10, "{top}");
    for action in ["get", "set", "reset"] {
        names.push(vec!["watermark".into(), action.into()]);
    }
    names
}

/// Every option and argument of every command has a one-line description, every command's
/// help shows an example, and environment variables are named without an empty (or secret)
/// value.
#[test]
fn every_option_is_described_and_every_command_shows_an_example() {
    let secret = "postgres://app:hunter2@db.internal/shop";
    for command in std::iter::once(Vec::new()).chain(subcommands()) {
        let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
        args.push("--help");
        let help = ok(&tidemark_cmd(&args)
            .env("TIDEMARK_STATE", secret)
            .env("TIDEMARK_OUTPUT_DIR", "")
            .output()
            .unwrap());
        let lines: Vec<&str> = help.lines().collect();
        let mut in_list = false;
        let mut described = 0;
        for (i, line) in lines.iter().enumerate() {
            if line.starts_with("Options:") || line.starts_with("Arguments:") {
                in_list = true;
                continue;
            }
            if !line.starts_with(' ') {
                in_list = false;
            }
            let item = line.trim_start();
            let starts_item = in_list
                && line.len() - item.len() <= 6
                && (item.starts_with('-') || item.starts_with('<') || item.starts_with('['));
            if !starts_item {
                continue;
            }
            // `--flag <VALUE>  Description` on one line, or the description on the next,
            // indented further (clap's layout for long descriptions).
            let same_line = item
                .split_once("  ")
                .is_some_and(|(_, rest)| !rest.trim().is_empty());
            let next_line = lines.get(i + 1).is_some_and(|n| {
                let t = n.trim_start();
                n.len() - t.len() > line.len() - item.len() + 2 && !t.is_empty()
            });
            assert!(
                same_line || next_line,
                "tidemark {command:?}: {item:?} has no description:\n{help}"
            );
            described += 1;
        }
        assert!(
            described >= 2,
            "tidemark {command:?}: no options found:\n{help}"
        );
        assert!(
            help.contains("Example") && help.contains("\n  tidemark "),
            "tidemark {command:?} shows no example:\n{help}"
        );
        assert!(!help.contains("=]"), "an empty env value shown:\n{help}");
        assert!(!help.contains("hunter2"), "a secret shown:\n{help}");
    }
    let export = ok(&tidemark_cmd(&["export", "--help"]).output().unwrap());
    for option in ["--consumer", "--mode", "--table", "--out"] {
        assert!(export.contains(option), "{export}");
    }
}

/// Counts read as words (`1 row`), and the missing-source message names every way to give one.
#[tokio::test]
async fn messages_are_plain_words() {
    let t = TestDb::new(DbKind::Sqlite).await;
    let out = t.out.path().to_string_lossy().into_owned();
    let seeded = ok(&t.cli(&["seed", "--rows", "1"]));
    assert!(seeded.contains("seeded 1 user "), "{seeded}");
    let setup = ok(&t.cli(&["setup", "--table", "users", "--strategy", "trigger"]));
    assert!(
        setup.contains("trigger capture through change log ") && !setup.contains("on cursor"),
        "{setup}"
    );
    let exported = ok(&t.cli(&[
        "export",
        "--consumer",
        "c1",
        "--mode",
        "full",
        "--out",
        &out,
    ]));
    assert!(exported.contains(": 1 row to "), "{exported}");
    let verified = ok(&tidemark_cmd(&["verify", &out]).output().unwrap());
    assert!(verified.contains("1 file, 1 row,"), "{verified}");
    assert!(verified.contains("ok: 1 chain verified"), "{verified}");
    for words in [&seeded, &exported, &verified, &setup] {
        assert!(
            !words.contains(" 1 rows") && !words.contains("(s)"),
            "{words}"
        );
    }
    let missing = export_c1(&[]);
    fails(&missing, 2, "no source database");
    let said = String::from_utf8_lossy(&missing.stderr);
    for name in ["--source", "TIDEMARK_SOURCE", "DATABASE_URL"] {
        assert!(said.contains(name), "{said}");
    }
    // Empty variables (`TIDEMARK_STATE=` in a compose file) are no setting at all.
    let empty = tidemark_cmd(&["export", "--consumer", "c1", "--mode", "full"])
        .env("TIDEMARK_SOURCE", "")
        .env("DATABASE_URL", "")
        .output()
        .unwrap();
    fails(&empty, 2, "no source database");
    let status = t.cli_env(&["status"], &[("TIDEMARK_STATE", "")]);
    assert!(status.status.success(), "{status:?}");
}

/// The tables tidemark made in a SQLite database.
async fn tidemark_tables(t: &TestDb) -> i64 {
    t.count("SELECT count(*) FROM sqlite_master WHERE name LIKE 'tidemark%'")
        .await
}

/// A refused setup leaves the database as it was: not even tidemark's state tables appear.
#[tokio::test]
async fn refused_setup_creates_nothing() {
    let t = TestDb::new(DbKind::Sqlite).await;
    t.db.execute("CREATE TABLE nokey (a INTEGER, updated_at TEXT)", &[])
        .await
        .unwrap();
    t.db.execute("CREATE TABLE plain (id INTEGER PRIMARY KEY, x TEXT)", &[])
        .await
        .unwrap();
    fails(
        &t.cli(&["setup", "--table", "nokey", "--strategy", "trigger"]),
        2,
        "no primary key",
    );
    fails(
        &t.cli(&["setup", "--table", "plain", "--strategy", "timestamp"]),
        2,
        "\"updated_at\" does not exist",
    );
    fails(
        &t.cli(&["setup", "--table", "plain", "--strategy", "magic"]),
        2,
        "unknown strategy",
    );
    fails(
        &t.cli(&["setup", "--table", "absent", "--strategy", "trigger"]),
        2,
        "not found",
    );
    assert_eq!(
        tidemark_tables(&t).await,
        0,
        "a refused setup created tables"
    );
    ok(&t.cli(&["setup", "--table", "plain", "--strategy", "trigger"]));
    assert!(tidemark_tables(&t).await > 0);
}

/// A table that was never set up, or was torn down, and has no `updated_at` for the implicit
/// timestamp capture: export says it is not set up and how to set it up (exit 2, no file).
#[tokio::test]
async fn export_of_a_table_not_set_up_says_so() {
    let t = TestDb::new(DbKind::Sqlite).await;
    let out = t.out.path().to_string_lossy().into_owned();
    t.db.execute(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)",
        &[],
    )
    .await
    .unwrap();
    t.db.execute("INSERT INTO items VALUES (1, 'a')", &[])
        .await
        .unwrap();
    let export = || {
        t.cli(&[
            "export",
            "--consumer",
            "c1",
            "--mode",
            "full",
            "--table",
            "items",
            "--out",
            &out,
        ])
    };
    fails(&export(), 2, "items is not set up for capture");
    ok(&t.cli(&["setup", "--table", "items", "--strategy", "trigger"]));
    ok(&t.cli(&["teardown", "--table", "items"]));
    let after = export();
    fails(&after, 2, "items is not set up for capture");
    let said = String::from_utf8_lossy(&after.stderr);
    assert!(
        said.contains("\"updated_at\"") && said.contains("tidemark setup --table items"),
        "{said}"
    );
    assert_eq!(t.count_files(), 0);
}

/// `status` counts a trigger table's changes by operation from its change log, and names a
/// replica by its table and target.
#[tokio::test]
async fn status_counts_trigger_changes_by_operation_and_names_replicas() {
    let t = TestDb::new(DbKind::Sqlite).await;
    ok(&t.cli(&["seed", "--rows", "10"]));
    ok(&t.cli(&["setup", "--table", "users", "--strategy", "trigger"]));
    for sql in [
        "UPDATE users SET name = 'x' WHERE id IN (1, 2, 3)",
        "DELETE FROM users WHERE id = 4",
        "INSERT INTO users (id, name, email) VALUES (11, 'n', 'n11@example.com')",
        "INSERT INTO users (id, name, email) VALUES (12, 'n', 'n12@example.com')",
    ] {
        t.db.execute(sql, &[]).await.unwrap();
    }
    let target = t.out.path().join("copy.db");
    let target = format!("sqlite://{}", target.display());
    ok(&t.cli(&["replicate", "--target", &target]));
    let status = t.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("changes visible: 6 (2 INSERT, 3 UPDATE, 1 DELETE)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("replica of users → {target}.users")),
        "{text}"
    );
    assert!(!text.contains("replica-"), "{text}");
    let json = t.cli(&["status", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        report["tables"][0]["changes"],
        serde_json::json!({"total": 6, "insert": 2, "update": 3, "delete": 1}),
        "{report}"
    );
}

/// What a person sees on a terminal: after the demo, no spinner line is left on screen and
/// rates are whole numbers (the demo runs under `script`, which gives it a terminal).
#[test]
fn demo_on_a_terminal_leaves_no_spinner_behind() {
    let dir = tempfile::tempdir().unwrap();
    let command = format!(
        "{} demo --rows 3000 --dir {}",
        env!("CARGO_BIN_EXE_tidemark"),
        dir.path().join("demo").display()
    );
    let out = std::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("COLUMNS", "120")
        .output()
        .expect("run script (util-linux)");
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{raw}");
    // The screen as a terminal leaves it: `\r` returns to the line's start, ESC[2K clears it.
    let screen: Vec<String> = raw
        .split('\n')
        .map(|physical| {
            let mut line = String::new();
            for part in physical.split('\r') {
                let part = match part.rsplit_once("\x1b[2K") {
                    Some((_, after)) => {
                        line.clear();
                        after
                    }
                    None => part,
                };
                if part.is_empty() {
                    continue;
                }
                let kept: String = line.chars().skip(part.chars().count()).collect();
                line = format!("{part}{kept}");
            }
            line.trim_end().to_string()
        })
        .filter(|l| !l.is_empty())
        .collect();
    assert!(
        screen.iter().all(|l| !l.contains("rows/s")),
        "a spinner line stayed on screen:\n{}",
        screen.join("\n")
    );
    assert!(
        screen.last().is_some_and(|l| l.starts_with("done in ")),
        "{}",
        screen.join("\n")
    );
    let pieces: Vec<&str> = raw.split(" rows/s").collect();
    for piece in &pieces[..pieces.len() - 1] {
        let rate = piece.rsplit('(').next().unwrap_or_default();
        assert!(
            !rate.is_empty() && rate.chars().all(|c| c.is_ascii_digit() || c == ','),
            "rate {rate:?} is not a whole number"
        );
    }
}
