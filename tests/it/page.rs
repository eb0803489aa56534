//! The status page (`GET /` of `tidemark serve`) in a real browser: headless Chromium driven
//! over WebDriver (chromedriver, spoken to with reqwest: no browser download, no extra crate).
//! The page finds the consumer, follows an export made over HTTP without a reload, shows a
//! table whose name is markup as text, says in red when the database (a PostgreSQL of the
//! test's own) stops, and fits a phone-sized screen. Screenshots are kept under
//! `target/tmp/page/` and their paths printed.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{tidemark_cmd, MARGIN};
use serde_json::{json, Value};
use tidemark::db::{connect, ConnectOptions};
use tidemark::testkit::PgServer;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to show something (it polls every 2 s).
const PAGE_WAIT: Duration = Duration::from_secs(20);

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tidemark serve` on a free port; returns it and its base URL.
fn serve(source: &str, out: &Path) -> (Proc, String) {
    let log = out.with_extension("serve.log");
    let mut child = tidemark_cmd(&["--source", source, "serve", "--listen", "127.0.0.1:0"])
        .arg("--out")
        .arg(out)
        .args(["--margin-ms", &MARGIN.as_millis().to_string()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn tidemark serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap_or("")
        .to_string();
    assert!(
        !addr.is_empty(),
        "server did not start: {line:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (Proc(child), format!("http://{addr}"))
}

fn cli(source: &str, args: &[&str]) -> String {
    let mut all = vec!["--source", source];
    all.extend_from_slice(args);
    let out = tidemark_cmd(&all).output().expect("run tidemark");
    assert!(
        out.status.success(),
        "tidemark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A WebDriver session in headless Chromium.
struct Browser {
    http: reqwest::Client,
    session: String,
    _driver: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        for need in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(need).exists(),
                "{need} is missing: run .ci/run (installs the Debian packages chromium and chromium-driver)"
            );
        }
        let port = free_port();
        let driver = Proc(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r.json::<Value>().await.ok(),
                Err(_) => None,
            };
            if ready.is_some_and(|v| v["value"]["ready"] == json!(true)) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session answer");
        let id = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {resp}"))
            .to_string();
        Browser {
            http,
            session: format!("{base}/session/{id}"),
            _driver: driver,
            _profile: profile,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if !body.is_null() {
            req = req.json(&body);
        }
        let resp: Value = req
            .send()
            .await
            .expect("WebDriver request")
            .json()
            .await
            .expect("WebDriver answer");
        assert!(
            resp["value"].get("error").is_none(),
            "WebDriver {path}: {resp}"
        );
        resp["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// Runs `body` (a function body that returns a value) in the page.
    async fn js(&self, body: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": body, "args": [] }),
        )
        .await
    }

    /// Waits until `body` returns something other than null/false, as a user watching would.
    async fn until(&self, what: &str, body: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.js(body).await;
            if !(v.is_null() || v == json!(false)) {
                return v;
            }
            if t0.elapsed() > PAGE_WAIT {
                let text = self.js("return document.body.innerText").await;
                panic!("the page did not show {what} within {PAGE_WAIT:?}; it shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn resize(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            json!({ "width": width, "height": height }),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self
            .cmd(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let png = base64_decode(b64.as_str().expect("screenshot is base64"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("page");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(name);
        std::fs::write(&path, png).expect("write screenshot");
        println!("screenshot: {}", path.display());
        path
    }

    async fn close(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("valid base64")
}

/// A table whose name is markup and script; the page must show it as text.
const ODD: &str = "<b>bold</b><script>window.pwned=1</script>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_a_real_browser() {
    let pg = PgServer::start().expect("own PostgreSQL");
    let url = pg
        .fresh_database()
        .await
        .expect("database")
        .as_str()
        .to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("out");
    cli(&url, &["seed", "--rows", "300"]);
    cli(
        &url,
        &["setup", "--table", "users", "--strategy", "timestamp"],
    );
    let o = out.to_string_lossy().into_owned();
    cli(
        &url,
        &["export", "--consumer", "c1", "--mode", "full", "--out", &o],
    );
    cli(&url, &["seed", "--rows", "7"]);
    {
        let db = connect(
            &tidemark::db::DbUrl::parse(&url).expect("url"),
            ConnectOptions::default(),
        )
        .await
        .expect("connect");
        let ddl = format!(
            "CREATE TABLE \"{ODD}\" (id BIGINT PRIMARY KEY, name TEXT NOT NULL, \
             updated_at TIMESTAMPTZ, is_deleted BOOLEAN NOT NULL DEFAULT FALSE)"
        );
        db.execute(&ddl, &[]).await.expect("create the odd table");
    }
    // The name has a dot in it: written in double quotes, as any such table name is.
    let quoted = format!("\"{ODD}\"");
    cli(
        &url,
        &["setup", "--table", &quoted, "--strategy", "timestamp"],
    );

    let (_server, base) = serve(&url, &out);
    let http = reqwest::Client::new();
    // The page itself: HTML, self-contained, with a policy that allows only its own code.
    let page = http.get(format!("{base}/")).send().await.expect("GET /");
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = page.text().await.expect("body");
    assert!(html.len() < 100 * 1024 && html.starts_with("<!doctype html>"));
    // Unknown paths keep the JSON 404.
    let nope = http
        .get(format!("{base}/nope.html"))
        .send()
        .await
        .expect("GET");
    assert_eq!(nope.status(), 404);
    let body: Value = nope.json().await.expect("JSON 404");
    assert!(body["error"].is_string(), "{body}");

    let browser = Browser::start().await;
    browser.goto(&format!("{base}/")).await;
    let c1 =
        r#"return document.querySelector('#consumers tr[data-consumer="c1"][data-table="users"]')"#;
    let pending = browser
        .until(
            "consumer c1 with 7 pending changes",
            &format!("const r = (function(){{{c1}}})(); const p = r && r.querySelector('.pending'); return p && p.textContent === '7' && p.textContent"),
        )
        .await;
    assert_eq!(pending, json!("7"));
    assert_eq!(
        browser
            .js("return document.getElementById('db').textContent")
            .await,
        json!("database: ok")
    );

    // Names are text: the odd table is listed, and neither its <b> nor its <script> ran.
    let odd = browser
        .until(
            "the odd table",
            "const rows = [...document.querySelectorAll('#tables tbody tr')]; \
             const r = rows.find(r => r.cells[0] && r.cells[0].textContent.includes('<b>')); \
             return r ? { text: r.cells[0].textContent, bold: document.querySelectorAll('main b:not([id])').length, \
               scripts: document.scripts.length, pwned: window.pwned === undefined ? null : window.pwned } : null",
        )
        .await;
    assert_eq!(odd["text"], json!(format!("\"{ODD}\"")), "{odd}");
    assert_eq!(odd["bold"], json!(0), "{odd}");
    assert_eq!(odd["scripts"], json!(1), "{odd}");
    assert_eq!(odd["pwned"], Value::Null, "{odd}");
    browser.screenshot("status-page.png").await;

    // An export over HTTP: the page follows it without reloading.
    browser.js("window.sameDocument = 42; return true").await;
    let resp: Value = http
        .post(format!("{base}/export/c1"))
        .send()
        .await
        .expect("POST /export/c1")
        .json()
        .await
        .expect("JSON");
    assert_eq!(resp["rows"], json!(7), "{resp}");
    let job = resp["jobId"].as_str().expect("jobId").to_string();
    let seen = browser
        .until(
            "the export's job and c1 with nothing pending",
            &format!(
                "const j = document.querySelector('#jobs tr[data-job=\"{job}\"]'); \
                 const r = (function(){{{c1}}})(); \
                 if (!j || !r || r.querySelector('.pending').textContent !== '0') return null; \
                 const a = j.querySelector('a'); \
                 return {{ outcome: j.cells[4].textContent, rows: j.cells[5].textContent, \
                   href: a && a.getAttribute('href'), same: window.sameDocument }}"
            ),
        )
        .await;
    assert_eq!(seen["outcome"], json!("completed"), "{seen}");
    assert_eq!(seen["rows"], json!("7"), "{seen}");
    assert_eq!(
        seen["href"],
        json!(format!("/exports/{job}/file")),
        "{seen}"
    );
    assert_eq!(seen["same"], json!(42), "the page reloaded: {seen}");
    let file = http
        .get(format!("{base}/exports/{job}/file"))
        .send()
        .await
        .expect("the linked file");
    assert_eq!(file.status(), 200);

    // The database stops: the page says so, in red, and keeps the last known state.
    pg.stop().expect("stop PostgreSQL");
    let down = browser
        .until(
            "the database down",
            "const d = document.getElementById('db'); const b = document.getElementById('banner'); \
             if (!d.textContent.includes('down') || b.hidden) return null; \
             return { pill: getComputedStyle(d).backgroundColor, banner: getComputedStyle(b).backgroundColor, \
               text: b.textContent, same: window.sameDocument, \
               c1: !!document.querySelector('#consumers tr[data-consumer=\"c1\"]') }",
        )
        .await;
    for key in ["pill", "banner"] {
        assert_eq!(down[key], json!("rgb(198, 40, 40)"), "not red: {down}");
    }
    assert!(
        down["text"]
            .as_str()
            .is_some_and(|t| t.contains("database is down")),
        "{down}"
    );
    assert_eq!(down["c1"], json!(true), "{down}");
    assert_eq!(down["same"], json!(42), "{down}");
    browser.screenshot("status-page-database-down.png").await;

    // A phone-sized screen: nothing sticks out sideways (wide tables scroll in their box).
    browser.resize(390, 844).await;
    let overflow = browser
        .js("return document.documentElement.scrollWidth - window.innerWidth")
        .await;
    assert!(
        overflow.as_i64().is_some_and(|o| o <= 0),
        "the page is wider than a phone: {overflow}"
    );
    browser.screenshot("status-page-phone.png").await;
    browser.close().await;
}
