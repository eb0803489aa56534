//! The interfaces other programs read, checked by those programs' own tools against a live
//! `tidemark serve` on a seeded SQLite source: `/openapi.json` by `openapi-spec-validator` and a
//! bounded `schemathesis` run (every check), `/metrics` by `promtool check metrics` in the
//! Prometheus text format, and OpenMetrics when the scraper asks for it. `.ci/run` installs the
//! tools; a failure shows the tool's own output.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::{tidemark_cmd, TestDb};
use serde_json::Value;
use tidemark::db::DbKind;

/// A running `tidemark serve`; killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(source: &str, out: &Path) -> Server {
        let log = out.with_extension("serve.log");
        let mut cmd = tidemark_cmd(&["--source", source, "serve", "--listen", "127.0.0.1:0"]);
        cmd.arg("--out")
            .arg(out)
            .stderr(std::fs::File::create(&log).expect("log file"));
        let (child, base) = common::spawn_serve(&mut cmd, Some(&log));
        Server { base, child }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        common::kill_and_wait(&mut self.child);
    }
}

/// A seeded, set-up SQLite source with a server on it.
async fn served() -> (TestDb, Server) {
    let t = TestDb::new(DbKind::Sqlite).await;
    for args in [
        &["seed", "--rows", "40"][..],
        &["setup", "--table", "users", "--strategy", "timestamp"],
    ] {
        let out = t.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let s = Server::start(t.url.as_str(), &t.out.path().join("out"));
    (t, s)
}

/// Runs a validator; panics with its own output unless it succeeds.
fn tool(program: &str, args: &[&str], stdin: Option<&str>, dir: &Path) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}): .ci/run installs it (pip install openapi-spec-validator schemathesis; apt-get install prometheus)")
    });
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("write to the tool");
    }
    let out = child.wait_with_output().expect("tool ran");
    assert!(
        out.status.success(),
        "{program} {args:?} exited {:?}:\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client")
}

/// The schema of one parameter of one operation.
fn param<'a>(doc: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
    doc["paths"][path][method]["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .map(|p| &p["schema"])
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
}

/// Follows a `$ref` to its component.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling {r}")),
        None => schema,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_validates_and_states_every_constraint() {
    let (t, s) = served().await;
    let doc: Value = client()
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file = t.out.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = tool(
        "openapi-spec-validator",
        &[file.to_str().unwrap()],
        None,
        t.out.path(),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK"),
        "{out:?}"
    );

    let consumer_pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$";
    for (path, method, name) in [
        ("/export/{consumer_id}", "post", "consumer_id"),
        ("/exports/{id}", "post", "X-Consumer-ID"),
        ("/exports/watermark", "get", "X-Consumer-ID"),
    ] {
        let p = param(&doc, path, method, name);
        assert_eq!(
            p["pattern"], consumer_pattern,
            "{method} {path} {name}: {p}"
        );
        assert_eq!(p["minLength"], 1, "{method} {path} {name}: {p}");
        assert_eq!(p["maxLength"], 128, "{method} {path} {name}: {p}");
    }
    for (path, method) in [
        ("/export/{consumer_id}", "post"),
        ("/exports/{id}", "post"),
        ("/exports/watermark", "get"),
    ] {
        let table = param(&doc, path, method, "table");
        assert_eq!(table["minLength"], 1, "{path}: {table}");
        assert_eq!(table["maxLength"], 129, "{path}: {table}");
        assert!(table["pattern"].is_string(), "{path}: {table}");
        let format = resolve(&doc, param(&doc, path, method, "format"));
        assert_eq!(
            format["enum"],
            serde_json::json!(["csv", "jsonl", "parquet"]),
            "{path}: {format}"
        );
    }
    let mode = resolve(&doc, param(&doc, "/exports/{id}", "post", "id"));
    assert_eq!(
        mode["enum"],
        serde_json::json!(["full", "incremental", "delta"]),
        "{mode}"
    );
    for path in ["/exports/{id}", "/exports/{id}/file"] {
        let job = param(&doc, path, "get", "id");
        assert_eq!(job["pattern"], "^[0-9a-f]{32}$", "{path}: {job}");
    }
    // Every success answer has a schema; the synchronous export states both of its shapes.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for (status, resp) in op["responses"].as_object().unwrap() {
                assert!(resp["description"].is_string(), "{method} {path} {status}");
                if status.starts_with('2') {
                    let content = resp["content"].as_object();
                    assert!(
                        content.is_some_and(|c| c.values().all(|m| m["schema"].is_object())),
                        "{method} {path} {status} has no schema: {resp}"
                    );
                }
            }
        }
    }
    let sync = resolve(
        &doc,
        &doc["paths"]["/export/{consumer_id}"]["post"]["responses"]["200"]["content"]
            ["application/json"]["schema"],
    );
    assert_eq!(sync["oneOf"].as_array().map(Vec::len), Some(2), "{sync}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let (t, s) = served().await;
    // Bounded: a few hundred requests in well under a minute.
    tool(
        "st",
        &[
            "run",
            &s.url("/openapi.json"),
            "--checks",
            "all",
            "--max-examples",
            "30",
            // Idle keep-alive connections close after the header timeout; a request that
            // races such a close is sent again (a server that really drops requests fails
            // every attempt).
            "--request-retries",
            "2",
            "--no-color",
        ],
        None,
        t.out.path(),
    );
    // Requests the run found before: an empty consumer or table, and OPTIONS on a job path.
    let c = client();
    let empty_consumer = c
        .get(s.url("/exports/watermark"))
        .header("X-Consumer-ID", "")
        .send()
        .await
        .unwrap();
    assert_eq!(empty_consumer.status(), 400);
    let empty_table = c.post(s.url("/export/c1?table=")).send().await.unwrap();
    assert_eq!(empty_table.status(), 400);
    let bad_format = c.post(s.url("/export/c1?format=xml")).send().await.unwrap();
    assert_eq!(bad_format.status(), 400);
    let options = c
        .request(reqwest::Method::OPTIONS, s.url("/exports/0"))
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 405);
    let allow = options.headers()["allow"].to_str().unwrap().to_string();
    for m in ["GET", "POST"] {
        assert!(allow.contains(m), "Allow: {allow}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_negotiate_openmetrics() {
    let (t, s) = served().await;
    let c = client();
    // Something to count.
    let exported = c.post(s.url("/export/c1")).send().await.unwrap();
    assert_eq!(exported.status(), 200);
    for accept in [None, Some("text/plain; version=0.0.4"), Some("*/*")] {
        let mut req = c.get(s.url("/metrics"));
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            kind.starts_with("text/plain") && kind.contains("version=0.0.4"),
            "Accept {accept:?}: {kind}"
        );
        let text = resp.text().await.unwrap();
        tool("promtool", &["check", "metrics"], Some(&text), t.out.path());
        assert!(
            text.contains("# TYPE tidemark_exports_total counter"),
            "{text}"
        );
        assert!(
            text.contains("tidemark_rows_exported_total{mode=\"incremental\"} 40"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }
    let resp = c
        .get(s.url("/metrics"))
        .header(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .send()
        .await
        .unwrap();
    let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = resp.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert!(text.contains("# TYPE tidemark_exports counter"), "{text}");
    assert!(
        text.contains("tidemark_exports_total{mode=\"incremental\",outcome=\"completed\"} 1"),
        "{text}"
    );
}
