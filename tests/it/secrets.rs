//! No secret in any output: with a distinctive database password (checked by the server:
//! scram-sha-256 for the test's role) and an admin token in `TIDEMARK_ADMIN_TOKEN`, every
//! command and every endpoint — failures included (a wrong password, an unknown database, the
//! database stopped under a running server) — with text and JSON debug logs, never shows
//! either: not on stdout or stderr, in files or manifests, in the state tables (`tidemark_jobs`,
//! `tidemark_exports`, `tidemark_replicas`), nor in any HTTP answer.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{pg, tidemark_cmd, TestDb};
use tidemark::db::DbKind;

const PASSWORD: &str = "S3cr3t-pw-7f3a9c";
const WRONG: &str = "S3cr3t-wrong-41d2e";
const TOKEN: &str = "tdm-admin-T0ken-5b1e08";

/// Fails naming where a secret showed up.
fn clean(what: &str, text: &str) {
    for secret in [PASSWORD, WRONG, TOKEN] {
        assert!(
            !text.contains(secret),
            "{secret} appears in {what}:\n{text}"
        );
    }
}

fn all_output(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `args` once with text and once with JSON debug logs; checks both outputs and returns
/// the exit codes.
fn run<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> Vec<Option<i32>> {
    let mut codes = Vec::new();
    for format in ["text", "json"] {
        let o = tidemark_cmd(&[])
            .args(args)
            .env("RUST_LOG", "debug")
            .env("TIDEMARK_LOG_FORMAT", format)
            .env("TIDEMARK_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap();
        clean(
            &format!("the output of {args:?} ({format} logs)"),
            &all_output(&o),
        );
        codes.push(o.status.code());
    }
    codes
}

/// Every file below `dir`.
fn check_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            check_files(&p);
        } else if let Ok(bytes) = std::fs::read(&p) {
            clean(&p.display().to_string(), &String::from_utf8_lossy(&bytes));
        }
    }
}

/// Every row of the state tables, as text.
async fn check_state(t: &TestDb) {
    for table in [
        "tidemark_jobs",
        "tidemark_exports",
        "tidemark_replicas",
        "tidemark_watermarks",
        "tidemark_tables",
    ] {
        let rows =
            t.db.query(&format!("SELECT CAST(t AS text) FROM {table} t"), &[])
                .await
                .unwrap_or_else(|e| panic!("{table}: {e}"));
        assert!(
            !rows.is_empty() || table != "tidemark_jobs",
            "no jobs recorded"
        );
        clean(table, &format!("{rows:?}"));
    }
}

async fn get(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    consumer: Option<&str>,
) -> (u16, String) {
    let mut r = c.request(method, url).bearer_auth(TOKEN);
    if let Some(id) = consumer {
        r = r.header("X-Consumer-ID", id);
    }
    match r.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let headers = format!("{:?}", resp.headers());
            let body = resp.text().await.unwrap_or_default();
            let all = format!("{headers}\n{body}");
            clean(&format!("the answer to {url}"), &all);
            (status, body)
        }
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test]
async fn no_password_or_token_in_any_output() {
    let t = TestDb::new(DbKind::Postgres).await;
    let target = TestDb::new(DbKind::Postgres).await;
    // A superuser role that must give its password: scram-sha-256 for it, trust for the rest.
    let role = format!("secret_{}", std::process::id());
    t.db.execute(
        &format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{PASSWORD}'"),
        &[],
    )
    .await
    .unwrap();
    let hba = t.db.query("SHOW hba_file", &[]).await.unwrap();
    let hba = hba[0][0].clone().unwrap();
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all {role} 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .unwrap();
    t.db.execute("SELECT pg_reload_conf()", &[]).await.unwrap();

    let with =
        |url: &str, password: &str| url.replacen("postgres@", &format!("{role}:{password}@"), 1);
    let src = with(t.url.as_str(), PASSWORD);
    let tgt = with(target.url.as_str(), PASSWORD);
    let wrong = with(t.url.as_str(), WRONG);
    let unknown = format!("{}_nope", src);
    let out = t.out.path().to_str().unwrap().to_string();

    // Every command, as it succeeds.
    let s = |extra: &[&str]| -> Vec<String> {
        let mut v = vec!["--source".to_string(), src.clone()];
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    assert_eq!(run(&s(&["seed", "--rows", "30"])), [Some(0), Some(0)]);
    assert_eq!(
        run(&s(&[
            "setup",
            "--table",
            "users",
            "--strategy",
            "timestamp"
        ])),
        [Some(0), Some(0)]
    );
    assert_eq!(
        run(&s(&[
            "export",
            "--consumer",
            "c1",
            "--mode",
            "full",
            "--out",
            &out
        ])),
        [Some(0), Some(0)]
    );
    assert_eq!(
        run(&s(&[
            "--json",
            "export",
            "--consumer",
            "c1",
            "--mode",
            "delta",
            "--out",
            &out
        ])),
        [Some(0), Some(0)]
    );
    assert_eq!(run(&s(&["status"])), [Some(0), Some(0)]);
    assert_eq!(run(&s(&["--json", "status"])), [Some(0), Some(0)]);
    assert_eq!(
        run(&s(&["watermark", "get", "--consumer", "c1"])),
        [Some(0), Some(0)]
    );
    assert_eq!(
        run(&s(&[
            "watermark",
            "set",
            "--consumer",
            "c9",
            "--to",
            "2026-01-01T00:00:00Z"
        ])),
        [Some(0), Some(0)]
    );
    assert_eq!(
        run(&s(&["replicate", "--target", &tgt])),
        [Some(0), Some(0)]
    );
    assert_eq!(
        run(&s(&["--json", "replicate", "--target", &tgt])),
        [Some(0), Some(0)]
    );
    assert_eq!(run(&["verify", &out]), [Some(0), Some(0)]);
    // State in another database, reached with the password too.
    run(&s(&[
        "--state",
        &tgt,
        "watermark",
        "get",
        "--consumer",
        "c1",
    ]));
    assert_eq!(
        run(&s(&[
            "--state",
            &tgt,
            "setup",
            "--table",
            "users",
            "--strategy",
            "timestamp"
        ])),
        [Some(0), Some(0)]
    );

    // And as it fails: wrong password, unknown database, a malformed URL, bad input.
    // (Replication retries a target it cannot reach: tried with one of the two URLs only.)
    let mut failing: Vec<Vec<&str>> = vec![vec!["--source", &src, "replicate", "--target", &wrong]];
    for url in [&wrong, &unknown] {
        failing.push(vec![
            "--source",
            url,
            "export",
            "--consumer",
            "c1",
            "--mode",
            "full",
            "--out",
            &out,
        ]);
        failing.push(vec!["--source", url, "status"]);
        failing.push(vec!["--source", url, "--json", "seed", "--rows", "1"]);
    }
    for args in &failing {
        let codes = run(args);
        assert!(codes.iter().all(|c| *c != Some(0)), "{args:?} succeeded");
    }
    let malformed = format!("postgres:{role}:{PASSWORD}@127.0.0.1/db");
    run(&["--source", &malformed, "status"]);
    let spaced = format!("postgres://{role}:{PASSWORD}@/db");
    run(&["--source", &spaced, "status"]);
    run(&s(&[
        "export",
        "--consumer",
        "bad consumer!",
        "--mode",
        "full",
    ]));
    run(&s(&["setup", "--table", "nope", "--strategy", "timestamp"]));

    // The server and every endpoint, with JSON debug logs to a file.
    let log = t.out.path().join("serve.log");
    let mut child = tidemark_cmd(&[
        "--source",
        &src,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--grace-secs",
        "1",
        "--out",
        &out,
    ])
    .env("RUST_LOG", "debug")
    .env("TIDEMARK_LOG_FORMAT", "json")
    .env("TIDEMARK_ADMIN_TOKEN", TOKEN)
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    clean("serve's first line", &line);
    let base = format!("http://{}", line.trim().rsplit("http://").next().unwrap());
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    use reqwest::Method;
    let (st, _) = get(&c, Method::GET, &format!("{base}/health"), None).await;
    assert_eq!(st, 200);
    let (st, _) = get(&c, Method::POST, &format!("{base}/export/c2"), None).await;
    assert_eq!(st, 200);
    let (st, body) = get(
        &c,
        Method::POST,
        &format!("{base}/exports/full"),
        Some("c3"),
    )
    .await;
    assert_eq!(st, 202, "{body}");
    let job: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = job["jobId"].as_str().unwrap().to_string();
    for _ in 0..200 {
        let (_, b) = get(&c, Method::GET, &format!("{base}/exports/{id}"), None).await;
        if b.contains("completed") || b.contains("failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for path in [
        format!("/exports/{id}/file"),
        "/exports/watermark".to_string(),
        "/stats".to_string(),
        "/metrics".to_string(),
        "/openapi.json".to_string(),
        "/".to_string(),
        "/nope".to_string(),
        "/exports/not-a-job".to_string(),
    ] {
        get(&c, Method::GET, &format!("{base}{path}"), Some("c3")).await;
    }
    get(
        &c,
        Method::POST,
        &format!("{base}/exports/sideways"),
        Some("c3"),
    )
    .await;
    get(
        &c,
        Method::POST,
        &format!("{base}/exports/delta"),
        Some("bad consumer!"),
    )
    .await;

    // The database goes away under the running server: health, stats, an export job.
    pg().stop().unwrap();
    let (st, _) = get(&c, Method::GET, &format!("{base}/health"), None).await;
    assert_eq!(st, 503);
    let (_, body) = get(
        &c,
        Method::POST,
        &format!("{base}/exports/delta"),
        Some("c5"),
    )
    .await;
    get(&c, Method::GET, &format!("{base}/stats"), None).await;
    pg().start_again().unwrap();
    let job: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = job["jobId"].as_str().unwrap().to_string();
    let (_, b) = get(&c, Method::GET, &format!("{base}/exports/{id}"), None).await;
    assert!(
        b.contains("failed") || b.contains("completed") || b.contains("running"),
        "{b}"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    child.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("DEBUG") || logged.contains("\"level\""),
        "no debug log"
    );
    clean("the server's log", &logged);

    check_files(t.out.path());
    check_state(&t).await;
}
