//! `tidemark replicate --target nats://…` against a real `nats-server -js` started by the
//! harness: message content on all three databases (read back with async-nats as a consumer
//! would), every change exactly once and in order after kill -9 of a following publisher under
//! a concurrent writer, retries while NATS is down, and bad input (a URL that does not answer, a
//! malformed URL, a stream whose subjects collide with another's).

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{churn, tidemark_cmd, TestDb};
use serde_json::Value;
use tidemark::db::DbKind;
use tidemark::testkit::NatsServer;

static NATS: OnceLock<NatsServer> = OnceLock::new();

fn nats() -> &'static NatsServer {
    NATS.get_or_init(|| NatsServer::start().expect("start nats-server"))
}

/// A stream name of the test's own (the tests share one server).
fn stream_name(prefix: &str) -> String {
    format!("{prefix}_{}", rand::random::<u32>())
}

/// One message as a consumer reads it.
#[derive(Debug, Clone)]
struct Msg {
    subject: String,
    body: Value,
    headers: String,
}

async fn jetstream() -> async_nats::jetstream::Context {
    jetstream_at(nats().port()).await
}

async fn jetstream_at(port: u16) -> async_nats::jetstream::Context {
    let client = async_nats::connect(format!("127.0.0.1:{port}"))
        .await
        .expect("connect to NATS");
    async_nats::jetstream::new(client)
}

/// Every message of `stream`, in stream order.
async fn read_stream(stream: &str) -> Vec<Msg> {
    read_stream_at(nats().port(), stream).await
}

async fn read_stream_at(port: u16, stream: &str) -> Vec<Msg> {
    let js = jetstream_at(port).await;
    let mut s = js.get_stream(stream).await.expect("the stream exists");
    let last = s.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = s.get_raw_message(seq).await.expect("message");
        out.push(Msg {
            subject: m.subject.to_string(),
            body: serde_json::from_slice(&m.payload).expect("JSON message"),
            headers: [
                "Tidemark-From",
                "Tidemark-To",
                "Tidemark-Ordinal",
                "Tidemark-Last",
            ]
            .iter()
            .map(|h| m.headers.get(*h).map_or("", |v| v.as_str()).to_string())
            .collect::<Vec<_>>()
            .join(" | "),
        });
    }
    out
}

/// The stream's message count (0 when it does not exist).
async fn stream_count(stream: &str) -> u64 {
    let js = jetstream().await;
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.unwrap().state.messages,
        Err(_) => 0,
    }
}

fn publish(t: &TestDb, stream: &str, extra: &[&str]) -> std::process::Output {
    let target = nats().url(Some(stream));
    let mut args = vec![
        "replicate",
        "--target",
        target.as_str(),
        "--margin-ms",
        "30",
    ];
    args.extend_from_slice(extra);
    t.cli(&args)
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "tidemark failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A table with one column of each kind the messages type.
async fn typed_table(t: &TestDb) {
    let ddl = match t.kind {
        DbKind::Sqlite => {
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, big BIGINT, \
             price NUMERIC(12,2), ratio DOUBLE PRECISION, flag BOOLEAN, at TIMESTAMP)"
        }
        DbKind::Postgres => {
            "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT, big BIGINT, \
             price NUMERIC(12,2), ratio DOUBLE PRECISION, flag BOOLEAN, at TIMESTAMPTZ)"
        }
        DbKind::Mysql => {
            "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT, big BIGINT, \
             price DECIMAL(12,2), ratio DOUBLE, flag BOOLEAN, at DATETIME(6))"
        }
    };
    t.db.execute(ddl, &[]).await.unwrap();
    let (yes, at) = match t.kind {
        DbKind::Sqlite => ("1", "'2026-01-02T03:04:05.123456Z'"),
        DbKind::Postgres => ("TRUE", "'2026-01-02 03:04:05.123456+00'"),
        DbKind::Mysql => ("TRUE", "'2026-01-02 03:04:05.123456'"),
    };
    t.db.execute(
        &format!(
            "INSERT INTO items VALUES (1, 'ann', 9007199254740993, 12.50, 0.1, {yes}, {at}), \
             (2, 'bo', -7, 3, -2.5, NOT {yes}, NULL)"
        ),
        &[],
    )
    .await
    .unwrap();
}

fn assert_price(v: &Value, want: f64) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("decimal as a string: {v}"));
    assert_eq!(s.parse::<f64>().unwrap(), want, "{v}");
}

async fn content_on(kind: DbKind) {
    let t = TestDb::new(kind).await;
    typed_table(&t).await;
    ok(&t.cli(&["setup", "--table", "items", "--strategy", "trigger"]));
    let stream = stream_name("CONTENT");
    // The tests share one server: each its own subjects.
    let prefix = stream.to_lowercase();
    let template = format!("{prefix}.{{table}}.{{operation}}");
    let args = ["--table", "items", "--subject-template", template.as_str()];
    let out = ok(&publish(&t, &stream, &args));
    assert!(out.contains("2 messages"), "{out}");

    // The first run publishes every live row as INSERT, typed.
    let first = read_stream(&stream).await;
    assert_eq!(first.len(), 2, "{first:?}");
    let ann = &first[0].body;
    assert_eq!(first[0].subject, format!("{prefix}.items.insert"));
    assert_eq!(ann["operation"], "INSERT");
    assert_eq!(ann["table"], "items");
    assert_eq!(ann["key"], serde_json::json!({"id": 1}));
    assert_eq!(ann["before"], Value::Null);
    let after = &ann["after"];
    assert_eq!(after["name"], "ann");
    assert_eq!(
        after["big"], "9007199254740993",
        "integers beyond 2^53 as strings"
    );
    assert_price(&after["price"], 12.5);
    assert_eq!(after["ratio"], serde_json::json!(0.1));
    assert_eq!(after["flag"], true);
    assert_eq!(after["at"], "2026-01-02T03:04:05.123456Z");
    assert_eq!(first[1].body["after"]["flag"], false);
    assert_eq!(first[1].body["after"]["at"], Value::Null);
    assert_eq!(first[1].body["after"]["big"], -7);
    assert!(ann["position"].is_object(), "{ann}");
    assert!(ann["commit_time"].as_str().unwrap().ends_with('Z'), "{ann}");

    // Each change after it: one message, in commit order, with both images.
    t.db.execute(
        "UPDATE items SET name = 'bob', ratio = 1e-300 WHERE id = 2",
        &[],
    )
    .await
    .unwrap();
    t.db.execute("DELETE FROM items WHERE id = 1", &[])
        .await
        .unwrap();
    t.db.execute(
        "INSERT INTO items (id, name, big, price, ratio, flag, at) \
         VALUES (3, 'cy', 9223372036854775807, 0.01, 0, NULL, NULL)",
        &[],
    )
    .await
    .unwrap();
    t.db.execute("UPDATE items SET id = 4 WHERE id = 3", &[])
        .await
        .unwrap();
    let out = ok(&publish(&t, &stream, &args));
    assert!(out.contains("4 messages"), "{out}");
    let all = read_stream(&stream).await;
    let changes: Vec<&Msg> = all.iter().skip(2).collect();
    let ops: Vec<(String, &str)> = changes
        .iter()
        .map(|m| {
            let op = m.body["operation"].as_str().unwrap();
            assert_eq!(m.subject, format!("{prefix}.items.{}", op.to_lowercase()));
            (m.subject.clone(), op)
        })
        .collect();
    let ops: Vec<&str> = ops.iter().map(|(_, op)| *op).collect();
    assert_eq!(ops, ["UPDATE", "DELETE", "INSERT", "UPDATE"]);
    let ids: Vec<i64> = changes
        .iter()
        .map(|m| m.body["change_id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let update = &changes[0].body;
    assert_eq!(update["key"], serde_json::json!({"id": 2}));
    assert_eq!(update["before"]["name"], "bo");
    assert_eq!(update["before"]["ratio"], serde_json::json!(-2.5));
    assert_eq!(update["after"]["name"], "bob");
    assert_eq!(update["after"]["ratio"], serde_json::json!(1e-300));
    assert_eq!(update["after"]["flag"], false);
    let delete = &changes[1].body;
    assert_eq!(delete["key"], serde_json::json!({"id": 1}));
    assert_eq!(delete["after"], Value::Null);
    assert_eq!(delete["before"]["big"], "9007199254740993");
    assert_price(&delete["before"]["price"], 12.5);
    assert_eq!(delete["before"]["flag"], true);
    assert_eq!(delete["before"]["at"], "2026-01-02T03:04:05.123456Z");
    let insert = &changes[2].body;
    assert_eq!(insert["key"], serde_json::json!({"id": 3}));
    assert_eq!(insert["before"], Value::Null);
    // The row moved to key 4 afterwards: the insert's after image is the state it made.
    assert_eq!(insert["after"]["id"], 3);
    assert_eq!(insert["after"]["big"], "9223372036854775807");
    assert_price(&insert["after"]["price"], 0.01);
    assert_eq!(insert["after"]["flag"], Value::Null);
    let moved = &changes[3].body;
    assert_eq!(moved["key"], serde_json::json!({"id": 4}));
    assert_eq!(moved["before"]["id"], 3);
    assert_eq!(moved["after"]["id"], 4);
    for m in &changes {
        let time = m.body["commit_time"].as_str().unwrap();
        assert_eq!(time.len(), 27, "RFC 3339 with microseconds: {time}");
    }

    // Nothing new: nothing published, and status shows the stream caught up.
    let out = ok(&publish(&t, &stream, &args));
    assert!(out.contains("0 messages"), "{out}");
    assert_eq!(stream_count(&stream).await, 6);
    let status: Value =
        serde_json::from_slice(&t.cli(&["--json", "status", "--table", "items"]).stdout).unwrap();
    let consumers = status["tables"][0]["consumers"].as_array().unwrap();
    let s = consumers
        .iter()
        .find(|c| c["kind"] == "stream")
        .unwrap_or_else(|| panic!("no stream in {status}"));
    assert!(s["target"].as_str().unwrap().ends_with(&stream), "{s}");
    assert_eq!(s["lag_seconds"], 0.0, "{s}");
    // A change not yet published is pending for the stream.
    t.db.execute("UPDATE items SET name = 'dee' WHERE id = 2", &[])
        .await
        .unwrap();
    let status: Value =
        serde_json::from_slice(&t.cli(&["--json", "status", "--table", "items"]).stdout).unwrap();
    let s = status["tables"][0]["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "stream")
        .cloned()
        .unwrap();
    assert_eq!(s["pending"]["update"], 1, "{s}");
    // The same through `serve`: /stats and /metrics.
    let id = s["consumer_id"].as_str().unwrap().to_string();
    let mut cmd = tidemark_cmd(&[
        "--source",
        t.url.as_str(),
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]);
    cmd.arg("--out").arg(t.out.path()).stderr(Stdio::null());
    let (mut server, base) = common::spawn_serve(&mut cmd, None);
    let c = reqwest::Client::new();
    let stats: Value = c
        .get(format!("{base}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(stats.to_string().contains("\"kind\":\"stream\""), "{stats}");
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    common::kill_and_wait(&mut server);
    let line = format!("tidemark_pending_changes{{table=\"items\",consumer=\"{id}\"}} 1");
    assert!(
        metrics.lines().any(|l| l == line),
        "no {line:?} in\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_content_sqlite() {
    content_on(DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_content_postgres() {
    content_on(DbKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_content_mariadb() {
    content_on(DbKind::Mysql).await;
}

/// Replays the stream into rows by key (after images; deletes remove), checking each change
/// id comes once and each key's changes in change-id order.
fn replay(messages: &[Msg]) -> BTreeMap<i64, Value> {
    let mut rows = BTreeMap::new();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut last_of_key: HashMap<i64, i64> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let b = &m.body;
        if let Some(id) = b["change_id"].as_i64() {
            if let Some(j) = seen.insert(id, i) {
                panic!("change {id} is in the stream twice (messages {j} and {i})");
            }
            for side in ["before", "after"] {
                if let Some(k) = b[side]["id"].as_i64() {
                    if let Some(prev) = last_of_key.insert(k, id) {
                        assert!(prev <= id, "key {k}: change {id} after change {prev}");
                    }
                }
            }
        }
        if let Some(old) = b["before"]["id"].as_i64() {
            rows.remove(&old);
        }
        let key = b["key"]["id"].as_i64().unwrap();
        match b["operation"].as_str().unwrap() {
            "DELETE" => {
                rows.remove(&key);
            }
            _ => {
                rows.insert(key, b["after"].clone());
            }
        }
    }
    rows
}

/// kill -9 of `replicate --target nats://… --follow` at random instants under a concurrent
/// writer, 20 rounds (two of them dying once part of an interval is acked, one once a whole
/// interval is),
/// on a stream whose duplicate window (100 ms) is too short to help: afterwards the stream holds every
/// change of the change log exactly once, each key's in order, and replaying it gives the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_every_change_once_in_order_postgres() {
    kill_9_on(DbKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_every_change_once_in_order_mariadb() {
    kill_9_on(DbKind::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_every_change_once_in_order_sqlite() {
    kill_9_on(DbKind::Sqlite).await;
}

async fn kill_9_on(kind: DbKind) {
    let t = TestDb::new(kind).await;
    t.users_with(100, "trigger").await;
    let stream = stream_name("KILLS");
    // The shortest duplicate window JetStream allows (100 ms), shorter than a restart: exactly
    // once must come from recovery, not de-duplication.
    jetstream()
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{}.>", stream.to_lowercase())],
            duplicate_window: Duration::from_millis(100),
            ..Default::default()
        })
        .await
        .expect("create the stream");
    let template = format!("{}.{{table}}.{{operation}}", stream.to_lowercase());
    let args = ["--subject-template", template.as_str()];
    ok(&publish(&t, &stream, &args));
    let writer = {
        let db = Arc::clone(&t.db);
        tokio::spawn(async move {
            for round in 0..30u64 {
                churn(db.as_ref(), "trigger", 100 + round, 2).await;
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };
    let mut rng = 0x2545f4914f6cdd1du64;
    let mut faults = 0;
    for round in 0..20 {
        let target = nats().url(Some(&stream));
        let env: &[(&str, &str)] = match round {
            5 | 15 => &[("TIDEMARK_FAULT", "mid-interval")],
            10 => &[("TIDEMARK_FAULT", "after-interval")],
            _ => &[],
        };
        if !env.is_empty() {
            // Changes for it to die in the middle of, whether or not the writer still runs.
            for id in 1..=3 {
                let sql = if kind == DbKind::Mysql {
                    "UPDATE users SET name = CONCAT(name, '+') WHERE id = ?"
                } else {
                    "UPDATE users SET name = name || '+' WHERE id = ?"
                };
                t.db.execute(sql, &[(id as i64).into()]).await.unwrap();
            }
        }
        let mut c = tidemark_cmd(&[
            "replicate",
            "--follow",
            "--target",
            target.as_str(),
            "--subject-template",
            template.as_str(),
            "--batch-size",
            "7",
            "--margin-ms",
            "30",
        ]);
        c.arg("--source").arg(t.url.as_str());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if env.is_empty() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            tokio::time::sleep(Duration::from_millis(50 + rng % 400)).await;
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        } else {
            // It dies by itself right after its first publish of an interval.
            let exited = tokio::task::spawn_blocking(move || child.wait());
            let status = tokio::time::timeout(Duration::from_secs(20), exited)
                .await
                .expect("the fault did not fire")
                .unwrap()
                .unwrap();
            assert!(!status.success(), "{status}");
            faults += 1;
        }
    }
    assert_eq!(faults, 3);
    writer.await.unwrap();
    let out = ok(&publish(&t, &stream, &args));
    assert!(out.contains("published users"), "{out}");
    let messages = read_stream(&stream).await;
    let rows = replay(&messages);
    // Every change of the log is in the stream (once: `replay` checked that).
    let log: Vec<i64> =
        t.db.query("SELECT change_id FROM tidemark_log_users", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r[0].as_deref().unwrap().parse().unwrap())
            .collect();
    let published: std::collections::BTreeSet<i64> = messages
        .iter()
        .filter_map(|m| m.body["change_id"].as_i64())
        .collect();
    assert!(
        log.len() > 100,
        "the writer made only {} changes",
        log.len()
    );
    for id in &log {
        if !published.contains(id) {
            let txid =
                t.db.query(
                    &format!("SELECT txid FROM tidemark_log_users WHERE change_id = {id}"),
                    &[],
                )
                .await
                .unwrap();
            let trail: Vec<String> = messages
                .iter()
                .map(|m| format!("{} {}", m.body["change_id"], m.headers))
                .collect();
            panic!(
                "change {id} (txid {:?}) is not in the stream:\n{}",
                txid[0][0],
                trail.join("\n")
            );
        }
    }
    assert_eq!(published.len(), log.len());
    // Replaying the stream gives the table.
    let table =
        t.db.query(
            "SELECT id, name, CASE WHEN is_deleted THEN 'true' ELSE 'false' END FROM users",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), table.len(), "row count after replay");
    for r in &table {
        let id: i64 = r[0].as_deref().unwrap().parse().unwrap();
        let row = rows.get(&id).unwrap_or_else(|| panic!("row {id} missing"));
        assert_eq!(row["name"].as_str(), r[1].as_deref(), "row {id}");
        let deleted = matches!(r[2].as_deref(), Some("true" | "t" | "1"));
        assert_eq!(row["is_deleted"].as_bool(), Some(deleted), "row {id}");
    }
}

/// A URL nothing answers at: exit 1 quickly, nothing written, no position anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_url_fails_fast() {
    let t = TestDb::new(DbKind::Sqlite).await;
    t.users_with(5, "trigger").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t0 = Instant::now();
    let out = t.cli(&[
        "replicate",
        "--target",
        &format!("nats://127.0.0.1:{port}/S"),
    ]);
    eprintln!("a URL nothing answers at: exit after {:?}", t0.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(t.state().await.replicas().await.unwrap().is_empty());
}

/// Malformed URLs and templates: exit 2 before anything is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_exits_2() {
    let t = TestDb::new(DbKind::Sqlite).await;
    t.users_with(5, "trigger").await;
    let good = nats().url(None);
    for args in [
        vec!["--target", "nats://127.0.0.1:notaport/S"],
        vec!["--target", "nats://127.0.0.1:4222/a/b"],
        vec!["--target", "nats://127.0.0.1:4222/bad stream"],
        vec![
            "--target",
            good.as_str(),
            "--subject-template",
            "cdc.{operation}",
        ],
        vec!["--target", good.as_str(), "--subject-template", "{table}.x"],
        vec!["--target", good.as_str(), "--target-table", "x"],
    ] {
        let mut a = vec!["replicate"];
        a.extend(args.iter());
        let out = t.cli(&a);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.is_empty(), "{args:?}");
    }
    assert!(t.state().await.replicas().await.unwrap().is_empty());
}

/// A stream whose subjects overlap another stream's: exit 2 naming both, nothing published,
/// no position; an existing stream that does not take the subjects: exit 2 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_streams_are_refused() {
    let t = TestDb::new(DbKind::Sqlite).await;
    t.users_with(5, "trigger").await;
    let other = stream_name("OTHER");
    let prefix = other.to_lowercase();
    jetstream()
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: other.clone(),
            subjects: vec![format!("{prefix}.users.*")],
            ..Default::default()
        })
        .await
        .unwrap();
    let template = format!("{prefix}.{{table}}.{{operation}}");
    let mine = stream_name("MINE");
    let out = publish(&t, &mine, &["--subject-template", &template]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&mine) && stderr.contains(&other),
        "{stderr}"
    );
    assert_eq!(stream_count(&other).await, 0);
    assert!(t.state().await.replicas().await.unwrap().is_empty());
    // The other stream by name, with subjects it does not take.
    let out = publish(&t, &other, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&other) && stderr.contains("tidemark.users.*"),
        "{stderr}"
    );
    assert_eq!(stream_count(&other).await, 0);
    // And with subjects it takes, it publishes there.
    ok(&publish(&t, &other, &["--subject-template", &template]));
    assert_eq!(stream_count(&other).await, 5);
}

/// Recovery rests on JetStream answering "the last message of `prefix.users.*`" across the
/// operation subjects: checked against the server the tests run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_message_of_a_wildcard_subject() {
    let js = jetstream().await;
    let name = stream_name("LAST");
    let prefix = name.to_lowercase();
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    for (i, op) in ["insert", "update", "insert", "delete", "update", "update"]
        .iter()
        .enumerate()
    {
        js.publish(format!("{prefix}.users.{op}"), i.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
        js.publish(format!("{prefix}.other.{op}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let last = stream
            .get_last_raw_message_by_subject(&format!("{prefix}.users.*"))
            .await
            .unwrap();
        assert_eq!(last.payload.as_ref(), i.to_string().as_bytes(), "after {i}");
    }
}

/// The stream's message count on the server at `port`, or None while it cannot be asked.
async fn count_at(port: u16, stream: &str) -> Option<u64> {
    let client = async_nats::connect(format!("127.0.0.1:{port}"))
        .await
        .ok()?;
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.ok()?;
    Some(s.info().await.ok()?.state.messages)
}

/// Polls until the stream holds `n` messages; the time it took.
async fn until_count(port: u16, stream: &str, n: u64, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if count_at(port, stream).await == Some(n) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "the stream did not reach {n} messages"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn terminate(mut child: Child) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "replicate --follow exited with {status}");
}

/// `--follow` publishes each commit with low latency, keeps retrying while NATS is down (the
/// process stays up) and catches up once it is back, every change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_is_fast_and_rides_out_nats_restarts() {
    let mut server = NatsServer::start().expect("start nats-server");
    let port = server.port();
    let t = TestDb::new(DbKind::Sqlite).await;
    t.users_with(10, "trigger").await;
    let stream = "FOLLOW";
    let mut child = tidemark_cmd(&[
        "replicate",
        "--follow",
        "--target",
        &server.url(Some(stream)),
        "--margin-ms",
        "30",
    ])
    .arg("--source")
    .arg(t.url.as_str())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    until_count(port, stream, 10, Duration::from_secs(30)).await;
    let mut latencies = Vec::new();
    for i in 0..20u64 {
        t.db.execute(
            "UPDATE users SET name = ? WHERE id = 1",
            &[format!("v{i}").into()],
        )
        .await
        .unwrap();
        latencies.push(until_count(port, stream, 11 + i, Duration::from_secs(10)).await);
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "commit to message in the stream (SQLite, polling): median {:.0} ms, max {:.0} ms",
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() - 1])
    );
    assert!(latencies[latencies.len() - 1] < Duration::from_secs(2));

    // NATS goes down: changes wait, the publisher keeps retrying.
    server.stop().unwrap();
    for i in 0..3i64 {
        t.db.execute("DELETE FROM users WHERE id = ?", &[(2 + i).into()])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "it gave up while NATS was down"
    );
    server.start_again().unwrap();
    until_count(port, stream, 33, Duration::from_secs(30)).await;
    terminate(child);
    let messages = read_stream_at(port, stream).await;
    let rows = replay(&messages);
    assert_eq!(rows.len(), 7);
    assert_eq!(rows[&1]["name"], "v19");
}

/// A `timestamp` table publishes net changes per key: the row's latest values (no before
/// image), soft deletes as DELETE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_tables_publish_net_changes() {
    let t = TestDb::new(DbKind::Sqlite).await;
    t.users_with(3, "timestamp").await;
    let stream = stream_name("NET");
    let template = format!("{}.{{table}}.{{operation}}", stream.to_lowercase());
    let args = ["--subject-template", template.as_str()];
    let out = ok(&publish(&t, &stream, &args));
    assert!(out.contains("3 messages"), "{out}");
    let now = t.db.dialect().now_expr();
    t.db.execute(
        &format!("UPDATE users SET name = 'first', updated_at = {now} WHERE id = 1"),
        &[],
    )
    .await
    .unwrap();
    t.db.execute(
        &format!("UPDATE users SET name = 'second', updated_at = {now} WHERE id = 1"),
        &[],
    )
    .await
    .unwrap();
    t.db.execute(
        &format!("UPDATE users SET is_deleted = TRUE, updated_at = {now} WHERE id = 2"),
        &[],
    )
    .await
    .unwrap();
    let out = ok(&publish(&t, &stream, &args));
    assert!(out.contains("2 messages"), "{out}");
    let all = read_stream(&stream).await;
    let tail: Vec<&Value> = all.iter().skip(3).map(|m| &m.body).collect();
    let by_key = |k: i64| {
        tail.iter()
            .find(|b| b["key"]["id"] == k)
            .unwrap_or_else(|| panic!("no message for {k}: {tail:?}"))
    };
    assert_eq!(by_key(1)["operation"], "UPDATE");
    assert_eq!(by_key(1)["after"]["name"], "second");
    assert!(by_key(1).get("before").is_none(), "{:?}", by_key(1));
    assert_eq!(by_key(2)["operation"], "DELETE");
    assert_eq!(by_key(2)["after"], Value::Null);
    let out = ok(&publish(&t, &stream, &args));
    assert!(out.contains("0 messages"), "{out}");
}

/// Two source databases publishing the same table to the same subjects: the second is refused
/// (exit 2) instead of reading the first one's position as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sources_subjects_are_refused() {
    let a = TestDb::new(DbKind::Sqlite).await;
    let b = TestDb::new(DbKind::Sqlite).await;
    a.users_with(3, "trigger").await;
    b.users_with(4, "trigger").await;
    let stream = stream_name("SHARED");
    let template = format!("{}.{{table}}.{{operation}}", stream.to_lowercase());
    let args = ["--subject-template", template.as_str()];
    ok(&publish(&a, &stream, &args));
    let out = publish(&b, &stream, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("another source database"), "{stderr}");
    assert_eq!(stream_count(&stream).await, 3);
    assert!(b.state().await.replicas().await.unwrap().is_empty());
}
