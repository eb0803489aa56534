//! Reaching real deployments: TLS on PostgreSQL and MariaDB servers that refuse plain TCP
//! (`require`, `verify-full` with the right and a wrong CA, TLS turned off), for sources,
//! replication targets and `--state`; and every way a connection fails — refused, unknown host,
//! no answer, wrong password, unknown database, TLS required, missing privilege — named in one
//! line within 5 s with the right exit code, as text and as `--json`; bad URLs refused as bad
//! input (exit 2) before anything is created.

use crate::common;

use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{tidemark_cmd, TestDb};
use tidemark::db::{connect, ConnectOptions, DbKind, DbUrl};
use tidemark::testkit::{MariaDbServer, PgServer, TestCa};

/// The most any failure may take to be reported.
const PROMPT: Duration = Duration::from_secs(5);

static CA: OnceLock<TestCa> = OnceLock::new();
static WRONG_CA: OnceLock<TestCa> = OnceLock::new();
static PG_TLS: OnceLock<PgServer> = OnceLock::new();
static MY_TLS: OnceLock<MariaDbServer> = OnceLock::new();

fn ca() -> &'static TestCa {
    CA.get_or_init(|| TestCa::new().expect("make CA"))
}

fn wrong_ca() -> &'static TestCa {
    WRONG_CA.get_or_init(|| TestCa::new().expect("make second CA"))
}

fn pg_tls() -> &'static PgServer {
    PG_TLS.get_or_init(|| PgServer::start_tls(ca()).expect("start PostgreSQL with TLS"))
}

fn my_tls() -> &'static MariaDbServer {
    MY_TLS.get_or_init(|| MariaDbServer::start_tls(ca()).expect("start MariaDB with TLS"))
}

/// Runs the binary; returns its output and how long it took.
fn run(args: &[&str]) -> (Output, Duration) {
    let t0 = Instant::now();
    let out = tidemark_cmd(args).output().expect("run tidemark");
    (out, t0.elapsed())
}

fn ok(args: &[&str]) -> String {
    let (out, _) = run(args);
    assert!(
        out.status.success(),
        "{args:?}: exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the binary, expects exit `code` within [`PROMPT`] with one line on stderr that
/// contains every needle, and no driver noise; returns that line.
fn fails(args: &[&str], code: i32, needles: &[&str]) -> String {
    let (out, took) = run(args);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(took < PROMPT, "{args:?} took {took:?}: {err}");
    eprintln!("{:>5} ms, exit {code}: {err}", took.as_millis());
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in: {err}");
    }
    for noise in [
        "error returned from database",
        "pool timed out",
        " at line ",
        "error communicating",
    ] {
        assert!(!err.contains(noise), "driver noise {noise:?} in: {err}");
    }
    err
}

/// The same with `--json`: stderr is one JSON object `{"error": "…"}` carrying the same text.
fn fails_json(args: &[&str], code: i32, needle: &str) {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let (out, took) = run(&with_json);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(took < PROMPT, "took {took:?}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    let v: serde_json::Value = serde_json::from_str(&err).expect("stderr is JSON");
    let obj = v.as_object().expect("a JSON object");
    assert_eq!(obj.len(), 1, "{err}");
    let text = obj["error"].as_str().expect("error is a string");
    assert!(text.contains(needle), "expected {needle:?} in {text}");
    assert!(!text.starts_with("error:"), "{text}");
}

fn fresh_tls_database(kind: DbKind) -> String {
    let rt = tokio::runtime::Handle::current();
    let url = tokio::task::block_in_place(|| {
        rt.block_on(async {
            match kind {
                DbKind::Postgres => pg_tls().fresh_database().await,
                _ => my_tls().fresh_database().await,
            }
        })
    })
    .expect("database on the TLS server");
    url.as_str().to_string()
}

fn with(url: &str, params: &str) -> String {
    format!("{url}?{params}")
}

/// The CA's file as a URL parameter value.
fn ca_path(ca: &TestCa) -> String {
    ca.ca_cert.display().to_string()
}

/// On a server that refuses plain TCP: `require` works for source, `--state` and replication
/// target; `verify-full` works with the CA and fails with a wrong one; TLS turned off is
/// refused, each named.
async fn tls_matrix(kind: DbKind) {
    let (require, verify, disable) = match kind {
        DbKind::Postgres => ("sslmode=require", "sslmode=verify-full", "sslmode=disable"),
        _ => (
            "ssl-mode=REQUIRED",
            "ssl-mode=VERIFY_IDENTITY",
            "ssl-mode=DISABLED",
        ),
    };
    let root = if kind == DbKind::Postgres {
        "sslrootcert"
    } else {
        "ssl-ca"
    };
    let base = fresh_tls_database(kind);
    let source = with(&base, require);
    let verified = with(&base, &format!("{verify}&{root}={}", ca_path(ca())));
    let wrong = with(&base, &format!("{verify}&{root}={}", ca_path(wrong_ca())));

    // require: seed and set up through TLS.
    ok(&["seed", "--rows", "20", "--source", &source]);
    ok(&["setup", "--strategy", "timestamp", "--source", &source]);
    // verify-full with the CA: a full export, its watermark kept in a --state database on the
    // same TLS server, also verified.
    let state_base = fresh_tls_database(kind);
    let state = with(&state_base, &format!("{verify}&{root}={}", ca_path(ca())));
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_string_lossy().to_string();
    let report = ok(&[
        "export",
        "--consumer",
        "c1",
        "--mode",
        "full",
        "--out",
        &out_dir,
        "--source",
        &verified,
        "--state",
        &state,
        "--json",
    ]);
    assert!(report.contains("\"rows\": 20"), "{report}");
    let mark = ok(&[
        "watermark",
        "get",
        "--consumer",
        "c1",
        "--source",
        &verified,
        "--state",
        &state,
    ]);
    assert!(
        !mark.contains("no watermark"),
        "no watermark in the TLS state database: {mark}"
    );
    let state_db = connect(&DbUrl::parse(&state).unwrap(), ConnectOptions::default())
        .await
        .expect("state database over verified TLS");
    let marks = state_db
        .query("SELECT count(*) FROM tidemark_watermarks", &[])
        .await;
    assert!(
        marks.is_ok_and(|r| r.first().and_then(|r| r[0].as_deref()) == Some("1")),
        "the watermark is in the --state database"
    );

    // A wrong CA: refused, naming the certificate, as a runtime failure.
    fails(
        &["status", "--source", &wrong],
        1,
        &["TLS failed", "not signed by a trusted CA"],
    );
    // TLS turned off against a server that requires it.
    let plain = with(&base, disable);
    fails(
        &["status", "--source", &plain],
        1,
        &["the server requires TLS but the URL disables it", disable],
    );
    fails_json(
        &["status", "--source", &plain],
        1,
        "the server requires TLS",
    );
    // TLS turned off on --state only.
    fails(
        &[
            "status",
            "--source",
            &source,
            "--state",
            &with(&state_base, disable),
        ],
        1,
        &["requires TLS"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_postgres() {
    tls_matrix(DbKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mariadb() {
    tls_matrix(DbKind::Mysql).await;
}

/// A replication target reached over verified TLS receives every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_target_over_tls() {
    let src = TestDb::new(DbKind::Sqlite).await;
    src.users(30).await;
    for kind in [DbKind::Postgres, DbKind::Mysql] {
        let root = match kind {
            DbKind::Postgres => "sslmode=verify-full&sslrootcert",
            _ => "ssl-mode=VERIFY_IDENTITY&ssl-ca",
        };
        let target = with(
            &fresh_tls_database(kind),
            &format!("{root}={}", ca_path(ca())),
        );
        let out = src.cli(&["replicate", "--target", &target]);
        assert!(
            out.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let db = connect(&DbUrl::parse(&target).unwrap(), ConnectOptions::default())
            .await
            .unwrap();
        let rows = db.query("SELECT count(*) FROM users", &[]).await.unwrap();
        assert_eq!(rows[0][0].as_deref(), Some("30"), "{kind}");
    }
}

/// Nothing listens, the host does not exist, the server does not answer: named at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_are_named_within_seconds() {
    for scheme in ["postgres://postgres", "mysql://root"] {
        let refused = format!("{scheme}@127.0.0.1:1/app");
        fails(
            &["status", "--source", &refused],
            1,
            &["cannot connect to", "connection refused"],
        );
        fails_json(&["status", "--source", &refused], 1, "connection refused");
        fails(
            &[
                "export",
                "--consumer",
                "c1",
                "--mode",
                "full",
                "--source",
                &format!("{scheme}@nohost.invalid/app"),
            ],
            1,
            &["unknown host", "\"nohost.invalid\""],
        );
    }
    // SQLite has no server: a missing file is bad input, an unknown parameter too.
    fails(
        &["status", "--source", "sqlite:///nonexistent/dir/app.db"],
        2,
        &["database file /nonexistent/dir/app.db does not exist"],
    );
    fails_json(
        &["status", "--source", "sqlite:///nonexistent/dir/app.db"],
        2,
        "does not exist",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.db");
    fails(
        &[
            "status",
            "--source",
            &format!("sqlite://{}?frob=1", file.display()),
        ],
        2,
        &["unknown query parameter `frob`"],
    );
    assert!(!file.exists(), "the database file was created");
    // A port that accepts TCP but never answers (a hung server): the connect timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    fails(
        &[
            "status",
            "--source",
            &format!("postgres://postgres@127.0.0.1:{port}/app"),
        ],
        1,
        &["no answer (connect timeout)"],
    );
    drop(silent);
}

/// A wrong password and a database that does not exist, on each server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_databases_are_named() {
    // PostgreSQL: the TLS server asks PASSWORD_USER for a password (the plain one trusts all).
    let admin = DbUrl::parse(&pg_tls().url("postgres")).unwrap();
    let pg = connect(&admin, ConnectOptions::default()).await.unwrap();
    let user = PgServer::PASSWORD_USER;
    let _ = pg
        .execute(&format!("CREATE ROLE {user} LOGIN PASSWORD 'right'"), &[])
        .await;
    pg.execute(&format!("GRANT CREATE ON SCHEMA public TO {user}"), &[])
        .await
        .unwrap();
    let port = pg_tls().port();
    ok(&[
        "status",
        "--source",
        &format!("postgres://{user}:right@127.0.0.1:{port}/postgres?sslmode=require"),
    ]);
    let err = fails(
        &[
            "status",
            "--source",
            &format!("postgres://{user}:wrong@127.0.0.1:{port}/postgres?sslmode=require"),
        ],
        1,
        &["wrong user or password", "password authentication failed"],
    );
    assert!(!err.contains("wrong@"), "the password is shown: {err}");
    // Replication does not retry what waiting cannot cure.
    let src = TestDb::new(DbKind::Sqlite).await;
    src.users(3).await;
    let (out, took) = run(&[
        "replicate",
        "--source",
        src.url.as_str(),
        "--target",
        &format!("postgres://{user}:wrong@127.0.0.1:{port}/postgres?sslmode=require"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("wrong user or password"), "{stderr}");
    assert!(
        took < Duration::from_secs(2),
        "retried for {took:?}: {stderr}"
    );

    // MariaDB: a user with a password on the shared server.
    let t = TestDb::new(DbKind::Mysql).await;
    let my_user = format!("pw{}", std::process::id());
    t.db.execute(
        &format!("CREATE USER IF NOT EXISTS '{my_user}'@'%' IDENTIFIED BY 'right'"),
        &[],
    )
    .await
    .unwrap();
    let my_port = common::mariadb().port();
    fails(
        &[
            "status",
            "--source",
            &format!("mysql://{my_user}:wrong@127.0.0.1:{my_port}/mysql"),
        ],
        1,
        &["wrong user or password", "Access denied"],
    );

    // Unknown databases.
    fails(
        &["status", "--source", &common::pg().url("no_such_db")],
        1,
        &["unknown database \"no_such_db\""],
    );
    fails(
        &["status", "--source", &common::mariadb().url("no_such_db")],
        1,
        &["unknown database \"no_such_db\""],
    );
    fails_json(
        &["status", "--source", &common::pg().url("no_such_db")],
        1,
        "unknown database",
    );
}

/// A user without the privilege to connect or to read is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_privileges_are_named() {
    // PostgreSQL: may connect but not read the table; then may not even connect.
    let t = TestDb::new(DbKind::Postgres).await;
    t.users(5).await;
    let role = format!("nopriv{}", std::process::id());
    t.db.execute(&format!("CREATE ROLE {role} LOGIN"), &[])
        .await
        .unwrap();
    let db_name = t.url.as_str().rsplit('/').next().unwrap().to_string();
    let as_role = format!(
        "postgres://{role}@127.0.0.1:{}/{db_name}",
        common::pg().port()
    );
    let out = tempfile::tempdir().unwrap();
    fails(
        &[
            "export",
            "--consumer",
            "c1",
            "--mode",
            "full",
            "--out",
            &out.path().to_string_lossy(),
            "--source",
            &as_role,
        ],
        2,
        &["permission denied: tidemark needs"],
    );
    assert!(common::all_files(out.path()).is_empty());
    t.db.execute(
        &format!("REVOKE CONNECT ON DATABASE {db_name} FROM PUBLIC"),
        &[],
    )
    .await
    .unwrap();
    fails(
        &["status", "--source", &as_role],
        2,
        &["permission denied: tidemark needs CONNECT on database"],
    );

    // MariaDB: a user with no grant on the database.
    let m = TestDb::new(DbKind::Mysql).await;
    let user = format!("np{}", std::process::id());
    m.db.execute(&format!("CREATE USER IF NOT EXISTS '{user}'@'%'"), &[])
        .await
        .unwrap();
    let my_db = m.url.as_str().rsplit('/').next().unwrap().to_string();
    fails(
        &[
            "status",
            "--source",
            &format!(
                "mysql://{user}@127.0.0.1:{}/{my_db}",
                common::mariadb().port()
            ),
        ],
        2,
        &["permission denied: tidemark needs a privilege on database"],
    );
}

/// A parameter the driver does not know, a CA file that does not exist: bad input, exit 2,
/// nothing created — for the source, the state and the target alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_are_bad_input_and_create_nothing() {
    let t = TestDb::new(DbKind::Sqlite).await;
    t.users(3).await;
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");
    let out_s = out.to_string_lossy().to_string();
    let export = |source: &str, state: Option<&str>| {
        let mut args = vec![
            "export",
            "--consumer",
            "c1",
            "--mode",
            "full",
            "--out",
            &out_s,
            "--source",
            source,
        ];
        if let Some(s) = state {
            args.extend(["--state", s]);
        }
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let cases = [
        (
            export("postgres://postgres@127.0.0.1:1/app?sslmod=require", None),
            "unknown parameter \"sslmod\"",
        ),
        (
            export("mysql://root@127.0.0.1:1/app?ssl_mode=REQUIRED", None),
            "unknown parameter \"ssl_mode\"",
        ),
        (
            export(
                "postgres://postgres@127.0.0.1:1/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                None,
            ),
            "CA file \"/nonexistent/ca.pem\" (sslrootcert) does not exist",
        ),
        (
            export("mysql://root@127.0.0.1:1/app?ssl-mode=sometimes", None),
            "unknown ssl-mode \"sometimes\"",
        ),
        (
            export(
                t.url.as_str(),
                Some("postgres://postgres@127.0.0.1:1/s?ssl-ca=/nonexistent/ca.pem"),
            ),
            "does not exist",
        ),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args, 2, &[needle]);
        fails_json(&args, 2, needle);
    }
    let target = "mysql://root@127.0.0.1:1/app?ssl-ca=/nonexistent/ca.pem";
    fails(
        &["replicate", "--target", target, "--source", t.url.as_str()],
        2,
        &["CA file"],
    );
    assert!(!out.exists(), "the output directory was created");
    // Usage errors are JSON too under --json.
    fails_json(
        &["export", "--mode", "sideways"],
        2,
        "invalid value 'sideways'",
    );
    let marks = t.state().await.watermarks().await.unwrap();
    assert!(marks.is_empty(), "{marks:?}");
}
