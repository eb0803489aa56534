//! `tidemark serve` over a real socket against real PostgreSQL: every endpoint and its errors,
//! concurrent requests for one consumer, the database going away mid-export, server restarts
//! with finished and interrupted jobs, SIGTERM, and hostile input.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{csv_files, pg, tidemark_cmd, TestDb, MARGIN};
use serde_json::Value;
use tidemark::capture::{self, SetupOptions};
use tidemark::db::{connect, ConnectOptions, Database, DbKind, DbUrl};
use tidemark::export::{manifest, replay};
use tidemark::ident::{ConsumerId, Ident};
use tidemark::seed;
use tidemark::state::StateStore;
use tidemark::testkit::PgServer;

/// A running `tidemark serve`; killed when dropped.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Server {
    fn start(source: &str, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let log = out.with_extension("serve.log");
        let mut cmd = tidemark_cmd(&["--source", source, "serve", "--listen", "127.0.0.1:0"]);
        cmd.arg("--out")
            .arg(out)
            .args(["--margin-ms", &MARGIN.as_millis().to_string()])
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).expect("log file"));
        let (child, base) = common::spawn_serve(&mut cmd, Some(&log));
        Server { child, base, log }
    }

    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().expect("wait for server")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

async fn call(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    consumer: Option<&str>,
) -> (u16, Value) {
    let mut r = c.request(method, url);
    if let Some(id) = consumer {
        r = r.header("X-Consumer-ID", id);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{url} answered {status} with non-JSON {text:?}"));
    (status, json)
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, Value) {
    call(c, reqwest::Method::GET, url, None).await
}

async fn start_job(c: &reqwest::Client, s: &Server, mode: &str, consumer: &str) -> String {
    let (status, body) = call(
        c,
        reqwest::Method::POST,
        &s.url(&format!("/exports/{mode}")),
        Some(consumer),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["jobId"].as_str().expect("jobId").to_string()
}

/// Polls the job until it is completed or failed.
async fn finished_job(c: &reqwest::Client, s: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = get(c, &s.url(&format!("/exports/{id}"))).await;
        assert_eq!(status, 200, "{body}");
        match body["status"].as_str() {
            Some("completed") | Some("failed") => return body,
            Some("pending") | Some("running") => {}
            other => panic!("unexpected job status {other:?}: {body}"),
        }
        assert!(Instant::now() < deadline, "job {id} did not finish: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_status(c: &reqwest::Client, s: &Server, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = get(c, &s.url(&format!("/exports/{id}"))).await;
        if body["status"] == want {
            return;
        }
        assert!(Instant::now() < deadline, "job never {want}: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until a temporary export file in `out` holds at least 1 MB.
async fn streaming_into(out: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let growing = std::fs::read_dir(out).ok().is_some_and(|d| {
            d.flatten().any(|e| {
                tidemark::sink::file::is_temporary(&e.file_name().to_string_lossy())
                    && e.metadata().is_ok_and(|m| m.len() >= 1 << 20)
            })
        });
        if growing {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no export streaming into {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn state_of(url: &DbUrl) -> StateStore {
    let db = connect(url, ConnectOptions::default())
        .await
        .expect("connect");
    StateStore::open(db).await.expect("state")
}

fn user_table() -> tidemark::ident::TableName {
    tidemark::ident::TableName::parse("users").unwrap()
}

/// Seeds `rows` users into a database of `server` and sets up timestamp capture.
async fn seeded(url: &DbUrl, rows: u64) -> Arc<dyn Database> {
    let db = connect(url, ConnectOptions::default())
        .await
        .expect("connect");
    seed::seed_users(db.as_ref(), rows, None)
        .await
        .expect("seed");
    let info = db.describe(&user_table()).await.expect("describe");
    let report = capture::setup(db.as_ref(), &info, "timestamp", &SetupOptions::default())
        .await
        .expect("setup");
    StateStore::open(Arc::clone(&db))
        .await
        .expect("state")
        .save_table_config(&user_table(), &report.config)
        .await
        .expect("register");
    db
}

async fn live_rows(db: &dyn Database) -> u64 {
    let rows = db
        .query(
            "SELECT count(*) FROM users WHERE NOT COALESCE(is_deleted, false)",
            &[],
        )
        .await
        .expect("count");
    rows[0][0].as_deref().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_and_its_errors() {
    let t = TestDb::new(DbKind::Postgres).await;
    t.users(500).await;
    let out = t.out.path().join("exports");
    let s = Server::start(t.url.as_str(), &out, &[], &[]);
    let c = client();

    let (status, health) = get(&c, &s.url("/health")).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["database"], "ok");
    assert!(health["timestamp"].as_str().unwrap().ends_with('Z'));

    // A background full export, followed to its end, and its file.
    let (status, started) = call(
        &c,
        reqwest::Method::POST,
        &s.url("/exports/full"),
        Some("app"),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["status"], "started");
    assert_eq!(started["exportType"], "full");
    let expected_name = started["outputFilename"].as_str().unwrap().to_string();
    assert!(expected_name.starts_with("full_app_") && expected_name.ends_with(".csv"));
    let id = started["jobId"].as_str().unwrap().to_string();
    let job = finished_job(&c, &s, &id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["consumerId"], "app");
    assert_eq!(job["exportType"], "full");
    assert_eq!(job["outputFilename"], expected_name.as_str());
    assert!(job["error"].is_null());
    assert!(job["durationMs"].as_u64().is_some());
    let live = live_rows(t.db.as_ref()).await;
    assert_eq!(job["rowsExported"].as_u64(), Some(live));
    let resp = c
        .get(s.url(&format!("/exports/{id}/file")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        body.as_ref(),
        std::fs::read(out.join(&expected_name)).unwrap()
    );
    assert_eq!(
        body.iter().filter(|&&b| b == b'\n').count() as u64,
        live + 1
    );

    // Watermark: there for app, 404 for someone else, 400 without a consumer.
    let wm_url = s.url("/exports/watermark");
    let (status, wm) = call(&c, reqwest::Method::GET, &wm_url, Some("app")).await;
    assert_eq!(status, 200, "{wm}");
    assert_eq!(wm["consumerId"], "app");
    assert!(wm["lastExportedAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        call(&c, reqwest::Method::GET, &wm_url, Some("nobody"))
            .await
            .0,
        404
    );
    let (status, err) = get(&c, &wm_url).await;
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("X-Consumer-ID"));

    // Changes, then a delta job, the pending count on /stats before it, and an empty job.
    t.db.execute(
        "UPDATE users SET name = 'changed', updated_at = now() WHERE id <= 20",
        &[],
    )
    .await
    .unwrap();
    tokio::time::sleep(MARGIN * 4).await;
    let (status, stats) = get(&c, &s.url("/stats")).await;
    assert_eq!(status, 200, "{stats}");
    let table = &stats["tables"][0];
    assert_eq!(table["table"], "users");
    assert_eq!(table["strategy"], "timestamp");
    assert_eq!(table["changes"]["total"].as_u64(), Some(500));
    let app = &table["consumers"][0];
    assert_eq!(app["consumer_id"], "app");
    assert_eq!(app["pending"]["total"].as_u64(), Some(20), "{stats}");
    assert_eq!(app["pending"]["update"].as_u64(), Some(20), "{stats}");
    assert!(app["lag_seconds"].as_f64().unwrap() > 0.0);
    let delta = finished_job(&c, &s, &start_job(&c, &s, "delta", "app").await).await;
    assert_eq!(delta["status"], "completed");
    assert_eq!(delta["rowsExported"].as_u64(), Some(20));
    tokio::time::sleep(MARGIN * 4).await;
    let empty_id = start_job(&c, &s, "incremental", "app").await;
    let empty = finished_job(&c, &s, &empty_id).await;
    assert_eq!(empty["status"], "completed");
    assert_eq!(empty["rowsExported"].as_u64(), Some(0));
    assert!(empty["outputFilename"].is_null(), "{empty}");
    assert_eq!(
        get(&c, &s.url(&format!("/exports/{empty_id}/file")))
            .await
            .0,
        404
    );
    let (_, stats) = get(&c, &s.url("/stats")).await;
    assert_eq!(
        stats["tables"][0]["consumers"][0]["pending"]["total"].as_u64(),
        Some(0)
    );

    // The synchronous endpoint of the seed project.
    let (status, sync) = call(&c, reqwest::Method::POST, &s.url("/export/partner-1"), None).await;
    assert_eq!(status, 200, "{sync}");
    assert_eq!(sync["status"], "success");
    assert_eq!(sync["consumer_id"], "partner-1");
    assert_eq!(sync["rows"].as_u64(), Some(live));
    assert!(Path::new(sync["path"].as_str().unwrap()).exists());
    tokio::time::sleep(MARGIN * 4).await;
    let (status, none) = call(&c, reqwest::Method::POST, &s.url("/export/partner-1"), None).await;
    assert_eq!(status, 200);
    assert_eq!(none["message"], "No new data to export");
    assert_eq!(none["consumer_id"], "partner-1");

    // Unknown jobs, modes, tables, routes and methods.
    let unknown = format!("/exports/{}", "0".repeat(32));
    assert_eq!(get(&c, &s.url(&unknown)).await.0, 404);
    assert_eq!(get(&c, &s.url(&format!("{unknown}/file"))).await.0, 404);
    assert_eq!(get(&c, &s.url("/exports/not-a-job")).await.0, 404);
    let (status, err) = call(
        &c,
        reqwest::Method::POST,
        &s.url("/exports/everything"),
        Some("app"),
    )
    .await;
    assert_eq!(status, 404);
    assert!(err["error"]
        .as_str()
        .unwrap()
        .contains("full, incremental or delta"));
    let (status, err) = call(
        &c,
        reqwest::Method::POST,
        &s.url("/exports/full?table=nosuch"),
        Some("app"),
    )
    .await;
    assert_eq!(status, 404, "{err}");
    assert_eq!(
        call(&c, reqwest::Method::POST, &s.url("/exports/full"), None)
            .await
            .0,
        400
    );
    assert_eq!(get(&c, &s.url("/nothing/here")).await.0, 404);
    assert_eq!(
        call(&c, reqwest::Method::DELETE, &s.url("/health"), None)
            .await
            .0,
        405
    );

    // Metrics: valid exposition text with the counters of what happened above.
    let text = c
        .get(s.url("/metrics"))
        .header("Accept", "application/openmetrics-text")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
    for needle in [
        "tidemark_exports_total{mode=\"full\",outcome=\"completed\"} 1",
        "tidemark_exports_total{mode=\"incremental\",outcome=\"completed\"} 1",
        "tidemark_exports_total{mode=\"incremental\",outcome=\"empty\"} 2",
        "tidemark_exports_total{mode=\"delta\",outcome=\"completed\"} 1",
        "tidemark_rows_exported_total{mode=\"delta\"} 20",
        "tidemark_export_duration_seconds_count{mode=\"full\"} 1",
        "tidemark_http_requests_total{route=\"/health\",method=\"GET\",status=\"200\"} 1",
        "tidemark_http_requests_total{route=\"/exports/{id}\",method=\"POST\",status=\"202\"}",
        "tidemark_pending_changes{table=\"users\",consumer=\"app\"} 0",
        "tidemark_lag_seconds{table=\"users\",consumer=\"app\"} 0",
        "tidemark_database_up 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }

    // The OpenAPI document names every endpoint.
    let (status, doc) = get(&c, &s.url("/openapi.json")).await;
    assert_eq!(status, 200);
    for path in [
        "/health",
        "/export/{consumer_id}",
        "/exports/{id}",
        "/exports/{id}/file",
        "/exports/watermark",
        "/stats",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }

    // What the service delivered verifies and replays to the table.
    let report = manifest::verify(&out).expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let replayed = replay::replay(
        &out,
        &ConsumerId::new("app").unwrap(),
        &user_table(),
        &[Ident::new("id").unwrap()],
    )
    .unwrap();
    let image = replay::table_image(t.db.as_ref(), &t.state().await, &user_table())
        .await
        .unwrap();
    assert!(replay::differences(&image, &replayed, 5).is_empty());
    assert!(s.log().contains("request_id="), "logs carry request ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_requests_for_one_consumer_start_one_job() {
    let t = TestDb::new(DbKind::Postgres).await;
    t.users(200_000).await;
    let out = t.out.path().join("exports");
    let s = Server::start(t.url.as_str(), &out, &[], &[]);
    let c = client();
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, url, barrier) = (c.clone(), s.url("/exports/full"), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            call(&c, reqwest::Method::POST, &url, Some("same")).await
        }));
    }
    let mut started = Vec::new();
    let mut busy = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            202 => started.push(body["jobId"].as_str().unwrap().to_string()),
            409 => busy.push(body),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(started.len(), 1, "exactly one job starts: {busy:?}");
    assert_eq!(busy.len(), 7);
    for b in &busy {
        assert_eq!(b["jobId"].as_str(), Some(started[0].as_str()), "{b}");
        assert!(b["error"].as_str().unwrap().contains("already running"));
    }
    // Another consumer is not held up by it.
    let other = start_job(&c, &s, "full", "other").await;
    let job = finished_job(&c, &s, &started[0]).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(finished_job(&c, &s, &other).await["status"], "completed");
    // Once it finished, the consumer can export again.
    tokio::time::sleep(MARGIN * 4).await;
    let again = start_job(&c, &s, "delta", "same").await;
    assert_eq!(finished_job(&c, &s, &again).await["status"], "completed");
    assert_eq!(
        csv_files(&out).len(),
        2,
        "one full file per consumer, no file for the empty delta"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_stopped_mid_export_and_started_again() {
    let server = PgServer::start().expect("own PostgreSQL");
    let url = server.fresh_database().await.expect("database");
    let db = seeded(&url, 1_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let s = Server::start(url.as_str(), &out, &["--health-timeout-ms", "500"], &[]);
    let c = client();
    // A consumer with a watermark that must not move.
    let live = live_rows(db.as_ref()).await;
    let state = StateStore::open(Arc::clone(&db)).await.unwrap();
    let warm = ConsumerId::new("warm").unwrap();
    let position = tidemark::state::Position::Timestamp {
        cursor: db.now().await.unwrap(),
        setup: None,
    };
    state
        .set_watermark(&warm, &user_table(), &position)
        .await
        .unwrap();
    let before = state
        .watermark(&warm, &user_table())
        .await
        .unwrap()
        .unwrap();
    drop(state);
    drop(db);

    let id = start_job(&c, &s, "full", "big").await;
    wait_status(&c, &s, &id, "running").await;
    // Stop the server once rows are streaming into the export's temporary file: a fixed
    // pause could outlast the export on a busy machine.
    streaming_into(&out).await;
    server.stop().expect("stop PostgreSQL");

    let t0 = Instant::now();
    let (status, health) = get(&c, &s.url("/health")).await;
    let took = t0.elapsed();
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "error");
    assert!(took < Duration::from_secs(1), "/health took {took:?}");

    let job = finished_job(&c, &s, &id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().is_some_and(|e| !e.is_empty()));
    // Started while the database is down: accepted, then failed cleanly.
    let down = start_job(&c, &s, "delta", "warm").await;
    let down = finished_job(&c, &s, &down).await;
    assert_eq!(down["status"], "failed", "{down}");
    let files: Vec<String> = common::all_files(&out);
    assert!(!files.iter().any(|f| f.ends_with(".csv")), "{files:?}");
    assert!(
        !files.iter().any(|f| tidemark::sink::file::is_temporary(f)),
        "no temporary file left: {files:?}"
    );

    server.start_again().expect("start PostgreSQL again");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if get(&c, &s.url("/health")).await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "health never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = state_of(&url).await;
    let after = state
        .watermark(&ConsumerId::new("warm").unwrap(), &user_table())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.position, before.position, "watermark unchanged");
    assert!(state
        .watermark(&ConsumerId::new("big").unwrap(), &user_table())
        .await
        .unwrap()
        .is_none());
    // The same export works now, without restarting the server.
    let retry = start_job(&c, &s, "full", "big").await;
    let retry = finished_job(&c, &s, &retry).await;
    assert_eq!(retry["status"], "completed", "{retry}");
    assert_eq!(retry["rowsExported"].as_u64(), Some(live));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_answers_for_earlier_jobs() {
    let url = pg().fresh_database().await.unwrap();
    let db = seeded(&url, 2_000).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let c = client();

    let mut a = Server::start(url.as_str(), &out, &[], &[]);
    let done = start_job(&c, &a, "full", "done").await;
    let done_before = finished_job(&c, &a, &done).await;
    assert_eq!(done_before["status"], "completed");
    assert!(a.terminate().success());

    // This server dies between recording its export as prepared and publishing the file, and
    // this one between publishing and moving the watermark (both started before either job so
    // that neither settles the other's job at startup).
    tokio::time::sleep(MARGIN * 4).await;
    let mut b = Server::start(
        url.as_str(),
        &out,
        &[],
        &[("TIDEMARK_FAULT", "after-prepare")],
    );
    let mut b2 = Server::start(
        url.as_str(),
        &out,
        &[],
        &[("TIDEMARK_FAULT", "after-publish")],
    );
    let crashed = start_job(&c, &b, "full", "crashed").await;
    let published = start_job(&c, &b2, "full", "published").await;
    let _ = b.child.wait();
    let _ = b2.child.wait();

    let state = StateStore::open(Arc::clone(&db)).await.unwrap();
    assert_eq!(
        state.job(&crashed).await.unwrap().unwrap().status,
        "running",
        "the dead server left its job running"
    );
    let c2 = Server::start(url.as_str(), &out, &[], &[]);
    let (status, again) = get(&c, &c2.url(&format!("/exports/{done}"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        again, done_before,
        "a completed job reads the same after a restart"
    );
    let (_, crashed_job) = get(&c, &c2.url(&format!("/exports/{crashed}"))).await;
    assert_eq!(crashed_job["status"], "failed", "{crashed_job}");
    assert!(crashed_job["error"]
        .as_str()
        .unwrap()
        .contains("interrupted"));
    assert!(state
        .watermark(&ConsumerId::new("crashed").unwrap(), &user_table())
        .await
        .unwrap()
        .is_none());
    // The export whose file was published is completed by the restart, as the next export
    // would have, and its watermark moved.
    let (_, published_job) = get(&c, &c2.url(&format!("/exports/{published}"))).await;
    assert_eq!(published_job["status"], "completed", "{published_job}");
    assert!(state
        .watermark(&ConsumerId::new("published").unwrap(), &user_table())
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        csv_files(&out).len(),
        2,
        "the files of the two completed jobs only"
    );
    let (status, _) = get(&c, &c2.url(&format!("/exports/{crashed}/file"))).await;
    assert_eq!(status, 404);
    // The crashed consumer exports normally now.
    let retry = start_job(&c, &c2, "full", "crashed").await;
    assert_eq!(finished_job(&c, &c2, &retry).await["status"], "completed");
    drop(c2);

    // A server killed with -9 while a job runs: after a restart the job is failed and nothing
    // moved, or — if the kill landed after the watermark moved — completed; never in between.
    let mut k = Server::start(url.as_str(), &out, &[], &[]);
    t_sleep().await;
    let running = start_job(&c, &k, "full", "killed").await;
    wait_status(&c, &k, &running, "running").await;
    k.kill9();
    let r = Server::start(url.as_str(), &out, &[], &[]);
    let (_, job) = get(&c, &r.url(&format!("/exports/{running}"))).await;
    let wm = state
        .watermark(&ConsumerId::new("killed").unwrap(), &user_table())
        .await
        .unwrap();
    match job["status"].as_str() {
        Some("failed") => assert!(wm.is_none(), "{job}"),
        Some("completed") => assert!(wm.is_some(), "{job}"),
        other => panic!("job left {other:?} after restart: {job}"),
    }
}

async fn t_sleep() {
    tokio::time::sleep(MARGIN * 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_exports_finish_or_abandons_them() {
    let t = TestDb::new(DbKind::Postgres).await;
    t.users(100_000).await;
    let out = t.out.path().join("exports");
    let c = client();

    // Enough grace: the running export finishes, then the process exits 0.
    let mut s = Server::start(t.url.as_str(), &out, &["--grace-secs", "60"], &[]);
    let id = start_job(&c, &s, "full", "graceful").await;
    wait_status(&c, &s, &id, "running").await;
    let status = s.terminate();
    assert!(status.success(), "exit {status:?}\n{}", s.log());
    let state = t.state().await;
    let job = state.job(&id).await.unwrap().unwrap();
    assert_eq!(job.status, "completed", "{job:?}");
    assert_eq!(csv_files(&out).len(), 1);
    assert!(state
        .watermark(&ConsumerId::new("graceful").unwrap(), &user_table())
        .await
        .unwrap()
        .is_some());

    // No grace: the export is abandoned, nothing is published, no watermark moves, exit 0.
    let mut s = Server::start(t.url.as_str(), &out, &["--grace-secs", "0"], &[]);
    let id = start_job(&c, &s, "full", "abandoned").await;
    wait_status(&c, &s, &id, "running").await;
    let status = s.terminate();
    assert!(status.success(), "exit {status:?}\n{}", s.log());
    let job = state.job(&id).await.unwrap().unwrap();
    if job.status == "failed" {
        assert!(job.error.unwrap().contains("abandoned"));
        assert!(state
            .watermark(&ConsumerId::new("abandoned").unwrap(), &user_table())
            .await
            .unwrap()
            .is_none());
        assert_eq!(csv_files(&out).len(), 1);
    } else {
        // The export won the race with the signal; then it is complete and delivered.
        assert_eq!(job.status, "completed");
    }
    assert!(
        !common::all_files(&out)
            .iter()
            .any(|f| tidemark::sink::file::is_temporary(f)),
        "temporary files removed"
    );
}

/// Sends raw bytes and returns the status code (0 when the server closed without answering)
/// and the body.
fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

fn request(method: &str, path: &str, headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut r =
        format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n").into_bytes();
    for (k, v) in headers {
        r.extend_from_slice(k.as_bytes());
        r.extend_from_slice(b": ");
        r.extend_from_slice(v);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_changes_nothing() {
    let t = TestDb::new(DbKind::Postgres).await;
    t.users(100).await;
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let s = Server::start(t.url.as_str(), &out, &["--header-timeout-ms", "1000"], &[]);
    let addr = s.addr().to_string();
    let rows_before = live_rows(t.db.as_ref()).await;
    let long = "a".repeat(10_000);
    let json_4xx = |(status, body): (u16, String), what: &str| {
        assert!((400..500).contains(&status), "{what}: {status} {body}");
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: not JSON: {body:?}"));
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {v}"
        );
    };
    for (what, path) in [
        ("slash", "/export/a%2Fb"),
        ("dot-dot", "/export/.."),
        ("dot-dot encoded", "/export/%2E%2E%2F%2E%2E%2Fetc"),
        ("NUL", "/export/a%00b"),
        ("space", "/export/a%20b"),
        ("non-ASCII", "/export/%C3%A9t%C3%A9"),
        ("invalid UTF-8", "/export/%FF%FE"),
        ("10 kB id", &format!("/export/{long}")),
        ("unknown mode", "/exports/everything"),
        ("bad query", "/exports/full?table=%ZZ"),
        ("unknown query field", "/exports/full?tabel=users"),
        (
            "repeated query field",
            "/exports/full?table=users&table=users",
        ),
        (
            "table with quote",
            "/exports/full?table=users%22%3B%20DROP%20TABLE%20users%3B--",
        ),
        ("empty table", "/exports/full?table="),
        (
            "traversal in job id",
            "/exports/..%2F..%2Fetc%2Fpasswd/file",
        ),
        ("long job id", &format!("/exports/{long}")),
    ] {
        let consumer: &[u8] = b"ok-consumer";
        json_4xx(
            raw(
                &addr,
                &request("POST", path, &[("X-Consumer-ID", consumer)]),
            ),
            what,
        );
        if path.starts_with("/exports/") && !path.contains('?') {
            json_4xx(raw(&addr, &request("GET", path, &[])), what);
        }
    }
    for (what, id) in [
        ("slash", b"a/b".as_slice()),
        ("dot-dot", b"..".as_slice()),
        ("leading dot", b".hidden".as_slice()),
        ("space", b"a b".as_slice()),
        ("non-ASCII", "été".as_bytes()),
        ("10 kB", long.as_bytes()),
        ("empty", b"".as_slice()),
    ] {
        json_4xx(
            raw(
                &addr,
                &request("POST", "/exports/full", &[("X-Consumer-ID", id)]),
            ),
            what,
        );
        json_4xx(
            raw(
                &addr,
                &request("GET", "/exports/watermark", &[("X-Consumer-ID", id)]),
            ),
            what,
        );
    }
    // A body where none is expected, too large: refused before it is read.
    let mut big = request(
        "POST",
        "/exports/full",
        &[("X-Consumer-ID", b"x"), ("Content-Length", b"10000000")],
    );
    big.extend(std::iter::repeat_n(b'x', 100_000));
    json_4xx(raw(&addr, &big), "oversized body");
    // A header block beyond the limit: 431 from the HTTP layer, and the server lives on.
    let huge = "h".repeat(200_000);
    let (status, _) = raw(
        &addr,
        &request("GET", "/health", &[("X-Filler", huge.as_bytes())]),
    );
    assert!(status == 431 || status == 0, "{status}");
    // A client that never finishes its request head is cut off.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "slow client held the connection for {:?}",
        t0.elapsed()
    );
    // Still healthy, the table intact, and nothing written anywhere.
    let c = client();
    assert_eq!(get(&c, &s.url("/health")).await.0, 200);
    assert_eq!(live_rows(t.db.as_ref()).await, rows_before);
    let written: Vec<String> = common::all_files(root.path());
    assert!(
        written.iter().all(|f| f == "out" || f == "out.serve.log"),
        "{written:?}"
    );
    assert!(csv_files(&out).is_empty());
}

/// The commands of docker-compose.yml, run as written but outside a container: the seed
/// service's shell line (twice: it must not seed again) and the serve service configured by
/// environment variables only, logging JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_commands_run_outside_a_container() {
    let compose =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
            .expect("docker-compose.yml");
    let seed_line = compose
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("- tidemark seed"))
        .expect("the seed command")
        .trim_start_matches("- ")
        .to_string();
    let url = pg().fresh_database().await.unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_tidemark")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for _ in 0..2 {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&seed_line)
            .env("PATH", &path)
            .env("DATABASE_URL", url.as_str())
            .env("SEED_ROWS", "300")
            .output()
            .unwrap();
        assert!(out.status.success(), "{seed_line}: {out:?}");
    }
    let db = connect(&url, ConnectOptions::default()).await.unwrap();
    let n = db.query("SELECT count(*) FROM users", &[]).await.unwrap();
    assert_eq!(n[0][0].as_deref(), Some("300"), "seeded once");
    assert!(StateStore::open(Arc::clone(&db))
        .await
        .unwrap()
        .table_config(&user_table())
        .await
        .unwrap()
        .is_some());

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let mut child = tidemark_cmd(&["serve"])
        .current_dir(dir.path())
        .env("DATABASE_URL", url.as_str())
        .env("TIDEMARK_LISTEN", "127.0.0.1:0")
        .env("TIDEMARK_OUTPUT_DIR", dir.path().join("exports"))
        .env("TIDEMARK_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_string();
    let c = client();
    assert_eq!(get(&c, &format!("{base}/health")).await.0, 200, "{line}");
    // Rows stamped within the capture margin (100 ms by default) wait for the next export; a
    // fast machine gets here sooner than that after seeding.
    tokio::time::sleep(tidemark::export::DEFAULT_MARGIN * 3).await;
    let (status, body) = call(
        &c,
        reqwest::Method::POST,
        &format!("{base}/export/compose"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(dir
        .path()
        .join("exports")
        .join(body["file"].as_str().unwrap())
        .exists());
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() >= 3, "{text}");
    for l in text.lines() {
        let v: Value =
            serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON log line: {l}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{l}"
        );
    }
    assert!(text.contains("request_id"), "{text}");
}

/// Every object key in `v`, at any depth.
fn keys_of(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.push(k.clone());
                keys_of(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| keys_of(x, out)),
        _ => {}
    }
}

/// The value of the sample `name{labels}` in metrics text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series}:\n{text}"))
}

/// `/stats` and `/metrics` report lag as `tidemark status` does: the age of the oldest change
/// not yet delivered (a change-log entry dated an hour back: 3600 s, lagging over
/// `--max-lag-secs 60`), 0 once delivered; keys are snake_case and the metric's HELP says
/// what lag is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_metrics_report_lag_as_the_age_of_the_oldest_pending_change() {
    let t = TestDb::new(DbKind::Postgres).await;
    t.users_with(20, "trigger").await;
    let hour_ago = t.db.now().await.unwrap().minus(Duration::from_secs(3600));
    let two_hours_ago = hour_ago.minus(Duration::from_secs(3600));
    let out = t.cli(&[
        "watermark",
        "set",
        "--consumer",
        "aged",
        "--to",
        &two_hours_ago.to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    t.db.execute("UPDATE users SET name = 'aged' WHERE id = 1", &[])
        .await
        .unwrap();
    t.db.execute(
        &format!("UPDATE tidemark_log_users SET changed_at = '{hour_ago}'::timestamptz"),
        &[],
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(t.url.as_str(), dir.path(), &["--max-lag-secs", "60"], &[]);
    let c = client();
    let series = "tidemark_lag_seconds{table=\"users\",consumer=\"aged\"}";

    let (status, stats) = get(&c, &s.url("/stats")).await;
    assert_eq!(status, 200, "{stats}");
    let aged = &stats["tables"][0]["consumers"][0];
    assert_eq!(aged["consumer_id"], "aged", "{stats}");
    assert_eq!(aged["pending"]["total"], 1, "{stats}");
    let lag = aged["lag_seconds"].as_f64().unwrap();
    assert!((lag - 3600.0).abs() < 15.0, "lag {lag}: {stats}");
    assert_eq!(aged["health"], "lagging", "{stats}");
    assert_eq!(stats["health"], "lagging", "{stats}");
    let mut keys = Vec::new();
    keys_of(&stats, &mut keys);
    for k in &keys {
        assert!(
            k.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'),
            "key {k:?} is not snake_case: {stats}"
        );
    }
    let text = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lag = sample(&text, series);
    assert!((lag - 3600.0).abs() < 15.0, "metric lag {lag}:\n{text}");
    assert_eq!(
        sample(
            &text,
            "tidemark_pending_changes{table=\"users\",consumer=\"aged\"}"
        ),
        1.0
    );
    let help = text
        .lines()
        .find(|l| l.starts_with("# HELP tidemark_lag_seconds "))
        .unwrap_or_else(|| panic!("no HELP for lag:\n{text}"));
    assert!(help.contains("oldest change not yet delivered"), "{help}");

    // Delivered through the API: lag 0 on both, however old the watermark was.
    let (status, body) = call(&c, reqwest::Method::POST, &s.url("/export/aged"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], 1, "{body}");
    let (_, stats) = get(&c, &s.url("/stats")).await;
    let aged = &stats["tables"][0]["consumers"][0];
    assert_eq!(aged["pending"]["total"], 0, "{stats}");
    assert_eq!(aged["lag_seconds"].as_f64(), Some(0.0), "{stats}");
    assert_eq!(stats["health"], "ok", "{stats}");
    let text = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sample(&text, series), 0.0, "{text}");
}
