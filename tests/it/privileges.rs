//! Least privilege, proven: each path runs as a role or user holding exactly the grants the
//! README lists, on real PostgreSQL and MariaDB servers; a missing grant gives one line naming
//! it (not a driver error), exit code 2, and changes nothing — no state table, index, trigger,
//! file, or watermark move.

use crate::common;

use std::process::Output;

use common::{csv_files, tidemark_cmd, TestDb};
use tidemark::db::DbKind;
use tidemark::seed;

/// A login role (PostgreSQL) or user (MariaDB) of the test's own, holding no grant yet.
struct Role {
    name: String,
    url: String,
}

async fn role(t: &TestDb, base: &str) -> Role {
    let db_name = t.url.as_str().rsplit('/').next().unwrap().to_string();
    let name = format!("{base}_{}", &db_name[db_name.len().saturating_sub(8)..]);
    let password = format!("pw-{name}");
    match t.kind {
        DbKind::Postgres => {
            t.db.execute(
                &format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'"),
                &[],
            )
            .await
            .unwrap();
        }
        _ => {
            t.db.execute(
                &format!("CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'"),
                &[],
            )
            .await
            .unwrap();
        }
    }
    let admin = if t.kind == DbKind::Postgres {
        "postgres@"
    } else {
        "root@"
    };
    let url = t
        .url
        .as_str()
        .replacen(admin, &format!("{name}:{password}@"), 1);
    Role { name, url }
}

impl Role {
    /// The grantee as the database spells it.
    fn grantee(&self, kind: DbKind) -> String {
        match kind {
            DbKind::Postgres => self.name.clone(),
            _ => format!("'{}'@'%'", self.name),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        tidemark_cmd(args)
            .arg("--source")
            .arg(&self.url)
            .output()
            .unwrap()
    }
}

async fn sql(t: &TestDb, statement: &str) {
    t.db.execute(statement, &[])
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit 2 with exactly one line on stderr, naming `needle`, and no driver error text.
fn denied(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(
        err.starts_with("error: permission denied: tidemark needs "),
        "{err}"
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    for raw in ["database error", "42501", "1142", "1227", "Access denied"] {
        assert!(!err.contains(raw), "driver error {raw:?} leaks: {err}");
    }
}

/// Drops the cursor index the seed made, so that setup has to create one.
async fn drop_cursor_index(t: &TestDb) {
    let names =
        t.db.indexes_leading_with(
            &tidemark::ident::TableName::parse("users").unwrap(),
            &tidemark::ident::Ident::new("updated_at").unwrap(),
        )
        .await
        .unwrap();
    for name in names {
        sql(
            t,
            &match t.kind {
                DbKind::Postgres => format!("DROP INDEX \"{name}\""),
                _ => format!("DROP INDEX `{name}` ON users"),
            },
        )
        .await;
    }
}

/// tidemark_* tables of the source database.
async fn tidemark_tables(t: &TestDb) -> i64 {
    t.count(match t.kind {
        DbKind::Postgres => {
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'tidemark%'"
        }
        _ => {
            "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME LIKE 'tidemark%'"
        }
    })
    .await
}

async fn indexes_of_users(t: &TestDb) -> i64 {
    t.count(match t.kind {
        DbKind::Postgres => "SELECT count(*) FROM pg_indexes WHERE tablename = 'users'",
        _ => {
            "SELECT count(DISTINCT INDEX_NAME) FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'users'"
        }
    })
    .await
}

async fn triggers_of_users(t: &TestDb) -> i64 {
    t.count(match t.kind {
        DbKind::Postgres => {
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'users'::regclass AND NOT tgisinternal"
        }
        _ => {
            "SELECT count(*) FROM information_schema.TRIGGERS \
             WHERE EVENT_OBJECT_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = 'users'"
        }
    })
    .await
}

/// Export with the state elsewhere: SELECT on the table, plus the right to see other
/// sessions' transactions (the timestamp bound); without either, exit 2 and nothing moves.
async fn export_needs_select_and_seeing_transactions(kind: DbKind) {
    let t = TestDb::new(kind).await;
    seed::seed_users(t.db.as_ref(), 20, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = format!("sqlite://{}/state.db", dir.path().display());
    ok(&t.cli(&[
        "setup",
        "--strategy",
        "timestamp",
        "--table",
        "users",
        "--state",
        &state,
    ]));
    let r = role(&t, "reader").await;
    let g = r.grantee(kind);
    let db_name = t.url.as_str().rsplit('/').next().unwrap().to_string();
    let on_users = match kind {
        DbKind::Postgres => "users".to_string(),
        _ => format!("{db_name}.users"),
    };
    sql(&t, &format!("GRANT SELECT ON {on_users} TO {g}")).await;
    let out = t.out.path().to_str().unwrap().to_string();
    let export = |mode: &str| {
        r.run(&[
            "export",
            "--consumer",
            "c1",
            "--mode",
            mode,
            "--state",
            &state,
            "--out",
            &out,
        ])
    };
    let watermark = || {
        ok(&t.cli(&[
            "watermark",
            "get",
            "--consumer",
            "c1",
            "--state",
            &state,
            "--json",
        ]))
    };

    // SELECT alone: the bound could not see other sessions' open transactions.
    let (needle, grant) = match kind {
        DbKind::Postgres => (
            "pg_read_all_stats",
            format!("GRANT pg_read_all_stats TO {g}"),
        ),
        _ => ("PROCESS", format!("GRANT PROCESS ON *.* TO {g}")),
    };
    denied(&export("full"), needle);
    assert_eq!(csv_files(t.out.path()).len(), 0, "a file was written");
    let before = watermark();

    // Exactly the documented grants: it works.
    sql(&t, &grant).await;
    let done = ok(&export("full"));
    assert!(done.contains("20 rows"), "{done}");
    assert_eq!(csv_files(t.out.path()).len(), 1);
    let after = watermark();
    assert_ne!(before, after, "the watermark did not move");

    // Without SELECT: one line naming it; no file, watermark where it was.
    sql(&t, &format!("REVOKE SELECT ON {on_users} FROM {g}")).await;
    // (A MariaDB user with no privilege left on the database cannot even connect to it.)
    let needle = match kind {
        DbKind::Postgres => "SELECT on table users".to_string(),
        _ => format!("a privilege on database {db_name}"),
    };
    denied(&export("delta"), &needle);
    assert_eq!(csv_files(t.out.path()).len(), 1, "a file was written");
    assert_eq!(watermark(), after, "the watermark moved");
    assert_eq!(tidemark_tables(&t).await, 0, "state tables in the source");
}

#[tokio::test]
async fn pg_export_needs_select_and_pg_read_all_stats() {
    export_needs_select_and_seeing_transactions(DbKind::Postgres).await;
}

#[tokio::test]
async fn mariadb_export_needs_select_and_process() {
    export_needs_select_and_seeing_transactions(DbKind::Mysql).await;
}

/// State in the source needs CREATE on the schema; the timestamp setup needs an index on the
/// cursor or the right to create one; trigger setup needs the table's owner. Each refusal
/// leaves no state table, index or trigger.
#[tokio::test]
async fn pg_setup_and_state_in_source() {
    let t = TestDb::new(DbKind::Postgres).await;
    seed::seed_users(t.db.as_ref(), 10, None).await.unwrap();
    drop_cursor_index(&t).await;
    let r = role(&t, "setup").await;
    let g = r.grantee(t.kind);
    sql(&t, &format!("GRANT SELECT ON users TO {g}")).await;
    sql(&t, &format!("GRANT pg_read_all_stats TO {g}")).await;
    let indexes = indexes_of_users(&t).await;

    denied(
        &r.run(&["setup", "--strategy", "timestamp", "--table", "users"]),
        "ownership of table users",
    );
    assert_eq!(indexes_of_users(&t).await, indexes, "an index was created");
    assert_eq!(tidemark_tables(&t).await, 0);

    // An index the DBA made serves instead; now the state tables are what is missing.
    sql(&t, "CREATE INDEX users_by_update ON users (updated_at)").await;
    denied(
        &r.run(&["setup", "--strategy", "timestamp", "--table", "users"]),
        "CREATE on schema public",
    );
    assert_eq!(tidemark_tables(&t).await, 0, "state tables were created");

    sql(&t, &format!("GRANT CREATE ON SCHEMA public TO {g}")).await;
    let done = ok(&r.run(&["setup", "--strategy", "timestamp", "--table", "users"]));
    assert!(
        done.contains("uses existing index users_by_update"),
        "{done}"
    );
    let out = t.out.path().to_str().unwrap().to_string();
    let export = ok(&r.run(&[
        "export",
        "--consumer",
        "c1",
        "--mode",
        "full",
        "--out",
        &out,
    ]));
    assert!(export.contains("10 rows"), "{export}");

    // Triggers and versions: only the owner may create them.
    let triggers = triggers_of_users(&t).await;
    for strategy in ["trigger", "version"] {
        denied(
            &r.run(&["setup", "--table", "users", "--strategy", strategy]),
            "ownership of table users",
        );
    }
    assert_eq!(triggers_of_users(&t).await, triggers);
    assert_eq!(
        t.count("SELECT count(*) FROM pg_tables WHERE tablename = 'tidemark_log_users'")
            .await,
        0
    );
    assert_eq!(
        t.count(
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_name = 'users' AND column_name = 'tidemark_version'"
        )
        .await,
        0
    );
    // As the owner, the trigger strategy needs nothing more.
    sql(&t, &format!("ALTER TABLE users OWNER TO {g}")).await;
    // Consumer c1 holds a timestamp position: the switch needs --force, and c1 then starts
    // again from a full export.
    ok(&r.run(&[
        "setup",
        "--table",
        "users",
        "--strategy",
        "trigger",
        "--force",
    ]));
    ok(&r.run(&[
        "export",
        "--consumer",
        "c1",
        "--mode",
        "full",
        "--out",
        &out,
    ]));
    // The application writes as a role with no grant on the change log; its change is
    // captured all the same (the trigger function runs as its owner).
    let app = role(&t, "app").await;
    sql(
        &t,
        &format!("GRANT SELECT, INSERT, UPDATE ON users TO {}", app.name),
    )
    .await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&app.url)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET name = 'by the app' WHERE id = 3")
        .execute(&mut conn)
        .await
        .expect("the application's write");
    let delta = ok(&r.run(&[
        "export",
        "--consumer",
        "c1",
        "--mode",
        "delta",
        "--out",
        &out,
    ]));
    assert!(delta.contains(": 1 row to"), "{delta}");
}

#[tokio::test]
async fn mariadb_setup_needs_index_trigger_and_create() {
    let t = TestDb::new(DbKind::Mysql).await;
    seed::seed_users(t.db.as_ref(), 10, None).await.unwrap();
    drop_cursor_index(&t).await;
    let r = role(&t, "setup").await;
    let g = r.grantee(t.kind);
    let db_name = t.url.as_str().rsplit('/').next().unwrap().to_string();
    sql(&t, &format!("GRANT SELECT ON {db_name}.users TO {g}")).await;
    sql(&t, &format!("GRANT PROCESS ON *.* TO {g}")).await;
    let indexes = indexes_of_users(&t).await;
    let dir = tempfile::tempdir().unwrap();
    let state = format!("sqlite://{}/state.db", dir.path().display());

    denied(
        &r.run(&[
            "setup",
            "--strategy",
            "timestamp",
            "--table",
            "users",
            "--state",
            &state,
        ]),
        "INDEX on table users",
    );
    assert_eq!(indexes_of_users(&t).await, indexes);
    assert!(!dir.path().join("state.db").exists(), "state file created");
    denied(
        &r.run(&["setup", "--strategy", "timestamp", "--table", "users"]),
        "INDEX on table users",
    );
    denied(
        &r.run(&[
            "setup",
            "--table",
            "users",
            "--strategy",
            "trigger",
            "--state",
            &state,
        ]),
        "TRIGGER on table users",
    );
    assert_eq!(triggers_of_users(&t).await, 0);
    assert_eq!(tidemark_tables(&t).await, 0);

    sql(&t, &format!("GRANT INDEX ON {db_name}.users TO {g}")).await;
    ok(&r.run(&[
        "setup",
        "--strategy",
        "timestamp",
        "--table",
        "users",
        "--state",
        &state,
    ]));
    assert_eq!(indexes_of_users(&t).await, indexes + 1);
    // State in the source: CREATE on the database.
    denied(
        &r.run(&["export", "--consumer", "c1", "--mode", "full"]),
        &format!("CREATE on database {db_name}"),
    );
    assert_eq!(tidemark_tables(&t).await, 0);
}

/// A replica target needs SELECT, INSERT, UPDATE, DELETE on its table and positions table,
/// or CREATE where they do not exist yet.
#[tokio::test]
async fn pg_replicate_target_needs_write_or_create() {
    let source = TestDb::new(DbKind::Postgres).await;
    source.users(10).await;
    let target = TestDb::new(DbKind::Postgres).await;
    let w = role(&target, "writer").await;
    let g = w.grantee(target.kind);
    let replicate = |url: &str| {
        tidemark_cmd(&["replicate", "--target", url])
            .arg("--source")
            .arg(source.url.as_str())
            .output()
            .unwrap()
    };
    denied(&replicate(&w.url), "CREATE on schema public");
    assert_eq!(tidemark_tables(&target).await, 0);
    assert_eq!(
        target
            .count("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .await,
        0
    );

    sql(&target, &format!("GRANT CREATE ON SCHEMA public TO {g}")).await;
    ok(&replicate(&w.url));
    assert_eq!(target.count("SELECT count(*) FROM users").await, 10);

    // Tables that exist: writing them is enough, and reading alone is not.
    let v = role(&target, "viewer").await;
    let gv = v.grantee(target.kind);
    sql(
        &target,
        &format!("GRANT SELECT ON users, tidemark_replica_positions TO {gv}"),
    )
    .await;
    source
        .db
        .execute(
            "UPDATE users SET name = 'moved', updated_at = now() WHERE id = 2",
            &[],
        )
        .await
        .unwrap();
    denied(&replicate(&v.url), "INSERT on table users");
    assert_eq!(
        target
            .count("SELECT count(*) FROM users WHERE name = 'moved'")
            .await,
        0
    );
    sql(
        &target,
        &format!("GRANT INSERT, UPDATE, DELETE ON users, tidemark_replica_positions TO {gv}"),
    )
    .await;
    ok(&replicate(&v.url));
    assert_eq!(
        target
            .count("SELECT count(*) FROM users WHERE name = 'moved'")
            .await,
        1
    );
}

/// State tables made beforehand (by a first run as their owner): using them needs no CREATE.
#[tokio::test]
async fn pg_state_tables_created_beforehand() {
    let t = TestDb::new(DbKind::Postgres).await;
    seed::seed_users(t.db.as_ref(), 5, None).await.unwrap();
    ok(&t.cli(&["status"]));
    let r = role(&t, "user").await;
    let g = r.grantee(t.kind);
    sql(&t, &format!("GRANT SELECT ON users TO {g}")).await;
    sql(&t, &format!("GRANT pg_read_all_stats TO {g}")).await;
    sql(
        &t,
        &format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON tidemark_tables, tidemark_watermarks, \
             tidemark_exports, tidemark_jobs, tidemark_replicas, tidemark_tokens TO {g}"
        ),
    )
    .await;
    ok(&r.run(&["setup", "--table", "users", "--strategy", "timestamp"]));
    let out = t.out.path().to_str().unwrap().to_string();
    let export = ok(&r.run(&[
        "export",
        "--consumer",
        "c1",
        "--mode",
        "full",
        "--out",
        &out,
    ]));
    assert!(export.contains("5 rows"), "{export}");
    ok(&r.run(&["status"]));
}

/// Over HTTP a missing grant is the server's problem (500), named the same way, and nothing is
/// exported.
#[tokio::test]
async fn pg_serve_names_the_missing_grant() {
    use std::io::BufRead;
    let t = TestDb::new(DbKind::Postgres).await;
    seed::seed_users(t.db.as_ref(), 5, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = format!("sqlite://{}/state.db", dir.path().display());
    ok(&t.cli(&[
        "setup",
        "--strategy",
        "timestamp",
        "--table",
        "users",
        "--state",
        &state,
    ]));
    let r = role(&t, "server").await;
    sql(&t, &format!("GRANT SELECT ON users TO {}", r.name)).await;
    let mut child = tidemark_cmd(&[
        "--source",
        &r.url,
        "--state",
        &state,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--grace-secs",
        "1",
    ])
    .arg("--out")
    .arg(t.out.path())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = format!("http://{}", line.trim().rsplit("http://").next().unwrap());
    let resp = reqwest::Client::new()
        .post(format!("{base}/export/c1"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("permission denied: tidemark needs the pg_read_all_stats role"),
        "{body}"
    );
    assert_eq!(csv_files(t.out.path()).len(), 0);
}
