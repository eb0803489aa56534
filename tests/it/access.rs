//! Who may do what on `tidemark serve`, over a real socket against real PostgreSQL: every
//! endpoint with no token, malformed, wrong and huge tokens, another consumer's token, its own
//! and an admin token; revocation acting at once on a running server; refusing non-loopback
//! addresses without a token; `TIDEMARK_ADMIN_TOKEN`; `--public-status`; HTTPS with a
//! certificate made by `openssl`, and plain HTTP sent to it.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{csv_files, tidemark_cmd, TestDb, MARGIN};
use serde_json::Value;
use tidemark::db::DbKind;
use tidemark::ident::{ConsumerId, TableName};

/// A running `tidemark serve`; killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(source: &str, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let log = out.with_extension("serve.log");
        let mut cmd = tidemark_cmd(&["--source", source, "serve"]);
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.arg("--out")
            .arg(out)
            .args(["--margin-ms", &MARGIN.as_millis().to_string()])
            .args(extra)
            .env_remove("TIDEMARK_ADMIN_TOKEN")
            .envs(env.iter().copied())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let (child, base) = common::spawn_serve(&mut cmd, Some(&log));
        Server { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn addr(&self) -> String {
        self.base
            .split("://")
            .nth(1)
            .expect("host:port")
            .to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        common::kill_and_wait(&mut self.child);
    }
}

/// Runs `tidemark --source URL ARGS…` and returns its exit code, stdout and stderr.
fn tidemark(source: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--source", source];
    all.extend_from_slice(args);
    let out = tidemark_cmd(&all)
        .env_remove("TIDEMARK_ADMIN_TOKEN")
        .output()
        .expect("run tidemark");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tidemark token create …`: the token (printed once, alone on stdout) and its id.
fn create_token(source: &str, scope: &[&str]) -> (String, String) {
    let mut args = vec!["--json", "token", "create"];
    args.extend_from_slice(scope);
    let (code, out, err) = tidemark(source, &args);
    assert_eq!(code, 0, "token create: {err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let token = v["token"].as_str().expect("token").to_string();
    assert!(
        token.starts_with("tdm_") && token.len() >= 4 + 32,
        "{token}"
    );
    (token, v["id"].as_str().expect("id").to_string())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// What a request carries in `Authorization`.
#[derive(Clone, Copy, Debug)]
enum Cred<'a> {
    None,
    /// A header value sent as is.
    Raw(&'a str),
    Bearer(&'a str),
}

async fn send(
    c: &reqwest::Client,
    method: &str,
    url: &str,
    consumer: Option<&str>,
    cred: Cred<'_>,
) -> (u16, String) {
    let mut r = c.request(method.parse().expect("method"), url);
    if let Some(id) = consumer {
        r = r.header("X-Consumer-ID", id);
    }
    match cred {
        Cred::None => {}
        Cred::Raw(v) => r = r.header("Authorization", v),
        Cred::Bearer(t) => r = r.header("Authorization", format!("Bearer {t}")),
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// Asserts a JSON error answer with `status`.
fn json_error(status: u16, (got, body): &(u16, String), what: &str) {
    assert_eq!(*got, status, "{what}: {body}");
    let v: Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: not JSON: {body:?}"));
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {v}"
    );
}

async fn finished(c: &reqwest::Client, s: &Server, admin: &str, job: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = send(
            c,
            "GET",
            &s.url(&format!("/exports/{job}")),
            None,
            Cred::Bearer(admin),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        if v["status"] == "completed" || v["status"] == "failed" {
            return v;
        }
        assert!(Instant::now() < deadline, "job {job} did not finish: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn watermark_of(t: &TestDb, consumer: &str) -> Option<String> {
    t.state()
        .await
        .watermark(
            &ConsumerId::new(consumer).unwrap(),
            &TableName::parse("users").unwrap(),
        )
        .await
        .expect("watermark")
        .map(|w| w.position.to_json())
}

async fn job_count(t: &TestDb) -> String {
    let rows =
        t.db.query("SELECT count(*) FROM tidemark_jobs", &[])
            .await
            .expect("count jobs");
    rows[0][0].clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_with_every_kind_of_token() {
    let t = TestDb::new(DbKind::Postgres).await;
    t.users(50).await;
    let src = t.url.as_str();
    let (admin, _) = create_token(src, &["--admin"]);
    let (own, _) = create_token(src, &["--consumer", "warehouse"]);
    let (other, _) = create_token(src, &["--consumer", "partner"]);
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let s = Server::start(src, &out, &[], &[]);
    let c = client();

    // The warehouse's first export, made with its own token: a job, a file and a watermark.
    let (status, body) = send(
        &c,
        "POST",
        &s.url("/exports/full"),
        Some("warehouse"),
        Cred::Bearer(&own),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let job = serde_json::from_str::<Value>(&body).unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_string();
    let done = finished(&c, &s, &admin, &job).await;
    assert_eq!(done["status"], "completed", "{done}");
    let csv = std::fs::read_to_string(out.join(done["outputFilename"].as_str().expect("file")))
        .expect("csv");
    let (status, body) = send(
        &c,
        "POST",
        &s.url("/export/warehouse"),
        None,
        Cred::Bearer(&own),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let files_before = csv_files(&out);
    let mark_before = watermark_of(&t, "warehouse").await;
    assert!(mark_before.is_some());
    let jobs_before = job_count(&t).await;

    let endpoints: [(&str, String, Option<&str>); 8] = [
        ("POST", "/export/warehouse".into(), None),
        ("POST", "/exports/delta".into(), Some("warehouse")),
        ("GET", format!("/exports/{job}"), None),
        ("GET", format!("/exports/{job}/file"), None),
        ("GET", "/exports/watermark".into(), Some("warehouse")),
        ("GET", "/stats".into(), None),
        ("GET", "/metrics".into(), None),
        ("GET", "/openapi.json".into(), None),
    ];
    let wrong = format!("tdm_{}", "0".repeat(64));
    let huge = format!("Bearer tdm_{}", "a".repeat(100_000));
    let refused: [(&str, Cred, u16); 7] = [
        ("no token", Cred::None, 401),
        ("unknown token", Cred::Bearer(&wrong), 401),
        ("not a token", Cred::Bearer("hunter2"), 401),
        ("basic auth", Cred::Raw("Basic d2FyZWhvdXNlOng="), 401),
        ("empty bearer", Cred::Raw("Bearer "), 401),
        ("100 kB token", Cred::Raw(&huge), 401),
        ("another consumer's token", Cred::Bearer(&other), 403),
    ];
    for (method, path, consumer) in &endpoints {
        for (what, cred, status) in refused {
            let status = if path == "/openapi.json" && status == 403 {
                200 // any valid token may read the API description
            } else {
                status
            };
            let answer = send(&c, method, &s.url(path), *consumer, cred).await;
            let what = format!("{method} {path} with {what}");
            if status == 200 {
                assert_eq!(answer.0, 200, "{what}: {}", answer.1);
            } else {
                json_error(status, &answer, &what);
                assert!(!answer.1.contains("tdm_"), "{what}: {}", answer.1);
            }
        }
    }
    // A consumer token cannot speak for another consumer through X-Consumer-ID either.
    for (method, path) in [("POST", "/exports/full"), ("GET", "/exports/watermark")] {
        let answer = send(
            &c,
            method,
            &s.url(path),
            Some("partner"),
            Cred::Bearer(&own),
        )
        .await;
        json_error(403, &answer, &format!("{method} {path} as partner"));
    }
    let answer = send(
        &c,
        "POST",
        &s.url("/export/partner"),
        None,
        Cred::Bearer(&own),
    )
    .await;
    json_error(403, &answer, "POST /export/partner with warehouse's token");
    // Nothing exported, no watermark moved, no job made, no file served.
    assert_eq!(csv_files(&out), files_before);
    assert_eq!(watermark_of(&t, "warehouse").await, mark_before);
    assert_eq!(watermark_of(&t, "partner").await, None);
    assert_eq!(job_count(&t).await, jobs_before, "no job started");

    // Allowed: the consumer's own token on its own endpoints, the admin on everything.
    for (who, token) in [("own", &own), ("admin", &admin)] {
        for (method, path, consumer) in &endpoints {
            let is_status = matches!(path.as_str(), "/stats" | "/metrics");
            let (status, body) =
                send(&c, method, &s.url(path), *consumer, Cred::Bearer(token)).await;
            let what = format!("{method} {path} with the {who} token");
            if is_status && who == "own" {
                json_error(403, &(status, body), &what);
                continue;
            }
            assert!(matches!(status, 200 | 202), "{what}: {status} {body}");
            if path.ends_with("/file") {
                assert_eq!(body, csv, "{what}");
            }
            if path == "/exports/delta" {
                let id = serde_json::from_str::<Value>(&body).unwrap()["jobId"]
                    .as_str()
                    .unwrap()
                    .to_string();
                assert_eq!(finished(&c, &s, &admin, &id).await["status"], "completed");
            }
        }
    }
    // /health needs nothing, and ignores a bad token.
    for cred in [Cred::None, Cred::Bearer(&wrong)] {
        let (status, body) = send(&c, "GET", &s.url("/health"), None, cred).await;
        assert_eq!(status, 200, "{body}");
    }
    // The API description states the scheme.
    let (_, doc) = send(&c, "GET", &s.url("/openapi.json"), None, Cred::Bearer(&own)).await;
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));
    assert_eq!(
        doc["paths"]["/health"]["get"]["security"],
        serde_json::json!([{}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_take_effect_and_revocation_acts_at_once() {
    let t = TestDb::new(DbKind::Postgres).await;
    t.users(10).await;
    let src = t.url.as_str();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let s = Server::start(src, &out, &[], &[]);
    let c = client();
    let watermark = |cred| {
        let c = c.clone();
        let url = s.url("/exports/watermark");
        async move { send(&c, "GET", &url, Some("warehouse"), cred).await.0 }
    };
    // No token exists: open on loopback, as before.
    assert_eq!(
        watermark(Cred::None).await,
        404,
        "no watermark yet, but served"
    );
    let (token, id) = create_token(src, &["--consumer", "warehouse"]);
    // The first token closes the server at once, for the very next request.
    assert_eq!(watermark(Cred::None).await, 401);
    assert_eq!(watermark(Cred::Bearer(&token)).await, 404);
    let (code, list, _) = tidemark(src, &["token", "list"]);
    assert_eq!(code, 0);
    assert!(list.contains(&id) && list.contains("warehouse"), "{list}");
    assert!(!list.contains(&token), "token list shows a token: {list}");
    let stored =
        t.db.query("SELECT token_hash FROM tidemark_tokens", &[])
            .await
            .unwrap();
    assert!(stored
        .iter()
        .all(|r| r[0].as_deref() != Some(token.as_str())));
    let (code, _, err) = tidemark(src, &["token", "revoke", &id]);
    assert_eq!(code, 0, "{err}");
    // Revoked: refused on the next request, with nothing exported.
    let (status, body) = send(
        &c,
        "POST",
        &s.url("/export/warehouse"),
        None,
        Cred::Bearer(&token),
    )
    .await;
    json_error(401, &(status, body), "revoked token");
    assert!(csv_files(&out).is_empty());
    assert_eq!(watermark_of(&t, "warehouse").await, None);
    let (code, _, err) = tidemark(src, &["token", "revoke", &id]);
    assert_eq!(code, 2, "revoking twice: {err}");
    let (code, _, err) = tidemark(src, &["token", "create"]);
    assert_eq!(code, 2, "create needs --consumer or --admin: {err}");
    let (code, _, err) = tidemark(src, &["token", "create", "--consumer", "../x"]);
    assert_eq!(code, 2, "bad consumer id: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_by_default_beyond_loopback() {
    let t = TestDb::new(DbKind::Postgres).await;
    t.users(10).await;
    let src = t.url.as_str();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    // No token: a non-loopback address is refused, with one line saying what to do.
    let (code, stdout, stderr) = tidemark(
        src,
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("tidemark token create"), "{stderr}");
    // A short TIDEMARK_ADMIN_TOKEN is no secret.
    let out_short = tidemark_cmd(&["--source", src, "serve", "--listen", "127.0.0.1:0"])
        .env("TIDEMARK_ADMIN_TOKEN", "secret")
        .output()
        .unwrap();
    assert_eq!(out_short.status.code(), Some(2));
    let c = client();
    {
        // --insecure: served without tokens, as asked.
        let s = Server::start(src, &out, &["--listen", "0.0.0.0:0", "--insecure"], &[]);
        let (status, _) = send(&c, "GET", &s.url("/stats"), None, Cred::None).await;
        assert_eq!(status, 200);
    }
    // TIDEMARK_ADMIN_TOKEN: everything needs it (or another token), /health aside.
    let admin = "env-admin-token-0123456789abcdef";
    let s = Server::start(
        src,
        &out,
        &["--listen", "0.0.0.0:0", "--public-status"],
        &[("TIDEMARK_ADMIN_TOKEN", admin)],
    );
    let wm = s.url("/exports/watermark");
    assert_eq!(send(&c, "GET", &wm, Some("w"), Cred::None).await.0, 401);
    assert_eq!(
        send(&c, "GET", &wm, Some("w"), Cred::Bearer(admin)).await.0,
        404
    );
    // --public-status: the status endpoints answer without a token.
    for path in ["/stats", "/metrics", "/openapi.json", "/health"] {
        let (status, body) = send(&c, "GET", &s.url(path), None, Cred::None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    drop(s);
    // All tokens revoked on a server beyond loopback: still closed (it never falls open).
    let (_, id) = create_token(src, &["--admin"]);
    let s = Server::start(src, &out, &["--listen", "0.0.0.0:0"], &[]);
    let (code, _, _) = tidemark(src, &["token", "revoke", &id]);
    assert_eq!(code, 0);
    assert_eq!(
        send(&c, "GET", &s.url("/stats"), None, Cred::None).await.0,
        401
    );
    assert!(csv_files(&out).is_empty());
}

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server.key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=tidemark test CA",
    ];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&[
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend_from_slice(&ec);
    csr.extend_from_slice(&["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// One HTTP/1.1 request over TLS to `addr`, trusting only `ca`: the whole answer.
async fn https(addr: &str, ca: &Path, request: &str) -> std::io::Result<String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap().to_owned();
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_certificate_the_test_makes() {
    let t = TestDb::new(DbKind::Postgres).await;
    t.users(10).await;
    let src = t.url.as_str();
    let (admin, _) = create_token(src, &["--admin"]);
    let root = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(root.path());
    let out = root.path().join("out");
    let s = Server::start(
        src,
        &out,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let addr = s.addr();
    let health = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let answer = https(&addr, &ca, health).await.expect("HTTPS request");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"database\":\"ok\""), "{answer}");
    // Plain HTTP to the HTTPS port gets no HTTP answer; the connection just ends.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    plain.write_all(health.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(
        !buf.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // A client that does not trust the certificate is refused by its own TLS layer.
    let other_dir = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = certificates(other_dir.path());
    assert!(https(&addr, &other_ca, health).await.is_err());
    // The server serves on, tokens included: an export over HTTPS.
    let export = format!(
        "POST /export/warehouse HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {admin}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let answer = https(&addr, &ca, &export).await.expect("HTTPS export");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(csv_files(&out).len(), 1);
    let unauthorized = export.replace(&admin, "nope");
    let answer = https(&addr, &ca, &unauthorized)
        .await
        .expect("HTTPS export");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // Half a certificate configuration is bad usage.
    let (code, _, err) = tidemark(src, &["serve", "--tls-cert", cert.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = tidemark(
        src,
        &[
            "serve",
            "--tls-cert",
            key.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "a key given as certificate: {err}");
}

/// The container set-up listens beyond loopback, so it must hand serve an admin token from
/// `.env` (compose refuses to start without one).
#[test]
fn the_container_set_up_passes_an_admin_token() {
    let root = env!("CARGO_MANIFEST_DIR");
    let compose = std::fs::read_to_string(format!("{root}/docker-compose.yml")).unwrap();
    assert!(
        compose.lines().any(|l| l
            .trim()
            .starts_with("TIDEMARK_ADMIN_TOKEN: ${TIDEMARK_ADMIN_TOKEN:?")),
        "docker-compose.yml does not require TIDEMARK_ADMIN_TOKEN"
    );
    let example = std::fs::read_to_string(format!("{root}/.env.example")).unwrap();
    assert!(example
        .lines()
        .any(|l| l.starts_with("TIDEMARK_ADMIN_TOKEN=")));
}

/// While the state database is down, a server that has tokens cannot check them: it answers
/// 503, never lets a request through unchecked; once the database is back, tokens work again
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_checks_fail_closed_while_the_state_database_is_down() {
    let server = tidemark::testkit::PgServer::start().expect("own PostgreSQL");
    let url = server.fresh_database().await.expect("database");
    let src = url.as_str();
    for args in [
        &["seed", "--rows", "10"][..],
        &["setup", "--strategy", "timestamp"][..],
    ] {
        let (code, _, err) = tidemark(src, args);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    let (token, _) = create_token(src, &["--consumer", "warehouse"]);
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let s = Server::start(src, &out, &["--health-timeout-ms", "500"], &[]);
    let c = client();
    let export = |cred| {
        let (c, url) = (c.clone(), s.url("/export/warehouse"));
        async move { send(&c, "POST", &url, None, cred).await }
    };
    server.stop().expect("stop PostgreSQL");
    for (what, cred) in [("no token", Cred::None), ("a token", Cred::Bearer(&token))] {
        json_error(503, &export(cred).await, &format!("{what} while down"));
    }
    server.start_again().expect("start PostgreSQL again");
    let deadline = Instant::now() + Duration::from_secs(30);
    while send(&c, "GET", &s.url("/health"), None, Cred::None).await.0 != 200 {
        assert!(Instant::now() < deadline, "health never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    json_error(401, &export(Cred::None).await, "no token once back");
    let (status, body) = export(Cred::Bearer(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(csv_files(&out).len(), 1, "exported once, after the outage");
}

/// `token create`, `list` and `revoke` on each kind of state database, including one an
/// earlier version made (no `tidemark_tokens` table yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_commands_on_every_state_database() {
    for kind in [DbKind::Sqlite, DbKind::Mysql, DbKind::Postgres] {
        let t = TestDb::new(kind).await;
        t.users(3).await;
        // As an earlier version left it: every state table but the tokens.
        t.db.execute("DROP TABLE tidemark_tokens", &[])
            .await
            .expect("drop");
        let src = t.url.as_str();
        let (admin, admin_id) = create_token(src, &["--admin"]);
        let (partner, partner_id) = create_token(src, &["--consumer", "partner"]);
        assert_ne!(admin, partner);
        let (code, out, err) = tidemark(src, &["--json", "token", "list"]);
        assert_eq!(code, 0, "{kind}: {err}");
        let list: Value = serde_json::from_str(&out).expect("JSON");
        let kinds: Vec<(&str, &str, Option<&str>)> = list
            .as_array()
            .expect("array")
            .iter()
            .map(|t| {
                (
                    t["id"].as_str().unwrap(),
                    t["kind"].as_str().unwrap(),
                    t["consumer"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                (admin_id.as_str(), "admin", None),
                (partner_id.as_str(), "consumer", Some("partner"))
            ],
            "{kind}"
        );
        assert!(!out.contains("tdm_"), "{kind}: list shows a token: {out}");
        let (code, _, err) = tidemark(src, &["token", "revoke", &partner_id]);
        assert_eq!(code, 0, "{kind}: {err}");
        let (_, out, _) = tidemark(src, &["token", "list"]);
        assert!(
            out.contains(&admin_id) && !out.contains(&partner_id),
            "{kind}: {out}"
        );
    }
}
