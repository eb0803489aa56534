//! Tables named by schema (`sales.orders`, `sales."odd.name"`) and many tables in one command:
//! a dozen tables of mixed shapes (composite keys, text keys, reserved words, no `updated_at`,
//! the same name in two schemas) replicated by one `tidemark replicate --follow` process under
//! a concurrent writer, PostgreSQL → MariaDB → SQLite → PostgreSQL, then compared row for row;
//! and the bad input (unknown schema, pattern matching nothing, schemas on SQLite) refused with
//! exit 2 and nothing created.

use crate::common;

use std::process::{Output, Stdio};
use std::sync::Arc;

use common::{tidemark_cmd, TestDb};
use tidemark::db::{Database, DbKind};
use tidemark::ident::TableName;

/// A column type of the test tables.
#[derive(Clone, Copy)]
enum Ty {
    Int,
    /// Text that can be part of a key.
    Key,
    Text,
}

type Columns = Vec<(&'static str, Ty)>;

struct Shape {
    /// Name in the source, `{s}` standing for the second schema.
    name: String,
    columns: Vec<(&'static str, Ty)>,
    key: Vec<&'static str>,
    /// Has `updated_at` (registered for `timestamp` capture); the others use `trigger`.
    stamped: bool,
}

fn shapes(second: Option<&str>) -> Vec<Shape> {
    let s = |name: &str, columns: Vec<(&'static str, Ty)>, key: Vec<&'static str>| Shape {
        name: name.to_string(),
        columns,
        key,
        stamped: false,
    };
    let mut v = vec![
        Shape {
            stamped: true,
            ..s(
                "orders",
                vec![("id", Ty::Int), ("note", Ty::Text)],
                vec!["id"],
            )
        },
        s("order", vec![("id", Ty::Int), ("v", Ty::Int)], vec!["id"]),
        s(
            "select",
            vec![("a", Ty::Int), ("b", Ty::Key), ("v", Ty::Text)],
            vec!["a", "b"],
        ),
        s(
            "lines",
            vec![
                ("order_id", Ty::Int),
                ("line_no", Ty::Int),
                ("qty", Ty::Int),
            ],
            vec!["order_id", "line_no"],
        ),
        s("tags", vec![("tag", Ty::Key), ("n", Ty::Int)], vec!["tag"]),
    ];
    for i in 6..=9 {
        v.push(s(
            &format!("t{i}"),
            vec![("id", Ty::Int), ("v", Ty::Text)],
            vec!["id"],
        ));
    }
    let more: [(&str, Columns, Vec<&'static str>); 3] = [
        (
            "orders",
            vec![("id", Ty::Int), ("amount", Ty::Int), ("who", Ty::Text)],
            vec!["id"],
        ),
        (
            "\"odd.name\"",
            vec![("id", Ty::Int), ("v", Ty::Text)],
            vec!["id"],
        ),
        (
            "lines",
            vec![("a", Ty::Key), ("b", Ty::Int), ("c", Ty::Int)],
            vec!["a", "b"],
        ),
    ];
    for (i, (name, cols, key)) in more.into_iter().enumerate() {
        match second {
            Some(schema) => v.push(s(&format!("{schema}.{name}"), cols, key)),
            None => v.push(s(&format!("t{}", 10 + i), cols, key)),
        }
    }
    v
}

fn sql_type(kind: DbKind, ty: Ty) -> &'static str {
    match (kind, ty) {
        (DbKind::Sqlite, Ty::Int) => "INTEGER",
        (_, Ty::Int) => "BIGINT",
        // MariaDB cannot index unbounded text: keys have a length where a length exists.
        (DbKind::Postgres | DbKind::Mysql, Ty::Key) => "VARCHAR(64)",
        (_, Ty::Key | Ty::Text) => "TEXT",
    }
}

fn table_of(shape: &Shape) -> TableName {
    TableName::parse(&shape.name).unwrap()
}

async fn create(db: &dyn Database, shape: &Shape) {
    let d = db.dialect();
    let mut cols: Vec<String> = shape
        .columns
        .iter()
        .map(|(c, ty)| format!("{} {}", quote(db, c), sql_type(d.kind(), *ty)))
        .collect();
    if shape.stamped {
        cols.push(format!(
            "updated_at {} NOT NULL",
            d.column_type(tidemark::db::ColumnKind::TimestampTz, true)
        ));
    }
    let key: Vec<String> = shape.key.iter().map(|k| quote(db, k)).collect();
    cols.push(format!("PRIMARY KEY ({})", key.join(", ")));
    let sql = format!(
        "CREATE TABLE {} ({})",
        d.quote_table(&table_of(shape)),
        cols.join(", ")
    );
    db.execute(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn quote(db: &dyn Database, c: &str) -> String {
    db.dialect().quote(&tidemark::ident::Ident::new(c).unwrap())
}

/// The literal of column `ty` for row number `n` (keys are unique per `n`).
fn value(ty: Ty, n: u64, salt: u64) -> String {
    match ty {
        Ty::Int => format!("{}", n * 3 + salt),
        Ty::Key => format!("'k{n:05}'"),
        Ty::Text => format!("'it''s {n}/{salt}'"),
    }
}

/// Inserts row `n` of `shape`.
async fn insert(db: &dyn Database, shape: &Shape, n: u64, salt: u64) {
    let d = db.dialect();
    let mut cols: Vec<String> = Vec::new();
    let mut vals: Vec<String> = Vec::new();
    for (c, ty) in &shape.columns {
        cols.push(quote(db, c));
        let is_key = shape.key.contains(c);
        vals.push(value(*ty, n, if is_key { 0 } else { salt }));
    }
    if shape.stamped {
        cols.push("updated_at".into());
        vals.push(d.now_expr().into());
    }
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        d.quote_table(&table_of(shape)),
        cols.join(", "),
        vals.join(", ")
    );
    db.execute(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn key_condition(db: &dyn Database, shape: &Shape, n: u64) -> String {
    shape
        .columns
        .iter()
        .filter(|(c, _)| shape.key.contains(c))
        .map(|(c, ty)| format!("{} = {}", quote(db, c), value(*ty, n, 0)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Updates every non-key column of row `n` (a no-op when the row is gone).
async fn update(db: &dyn Database, shape: &Shape, n: u64, salt: u64) {
    let d = db.dialect();
    let mut sets: Vec<String> = shape
        .columns
        .iter()
        .filter(|(c, _)| !shape.key.contains(c))
        .map(|(c, ty)| format!("{} = {}", quote(db, c), value(*ty, n, salt)))
        .collect();
    if shape.stamped {
        sets.push(format!("updated_at = {}", d.now_expr()));
    }
    let sql = format!(
        "UPDATE {} SET {} WHERE {}",
        d.quote_table(&table_of(shape)),
        sets.join(", "),
        key_condition(db, shape, n)
    );
    db.execute(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn delete(db: &dyn Database, shape: &Shape, n: u64) {
    let sql = format!(
        "DELETE FROM {} WHERE {}",
        db.dialect().quote_table(&table_of(shape)),
        key_condition(db, shape, n)
    );
    db.execute(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Every row of `table` (the columns of `shape`, rendered as exports render them), sorted.
async fn rows(db: &dyn Database, table: &TableName, shape: &Shape) -> Vec<Vec<Option<String>>> {
    let d = db.dialect();
    let info = db
        .describe(table)
        .await
        .unwrap_or_else(|e| panic!("{table}: {e}"));
    let exprs: Vec<String> = shape
        .columns
        .iter()
        .map(|(c, _)| d.render(info.column(c).unwrap_or_else(|| panic!("{table}.{c}"))))
        .collect();
    let sql = format!("SELECT {} FROM {}", exprs.join(", "), d.quote_table(table));
    let mut r = db
        .query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    r.sort();
    r
}

fn run_cli(src: &TestDb, args: &[&str]) -> Output {
    src.cli(args)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

/// The target table a source table replicates into (SQLite has no schemas: the qualified name
/// becomes the table's name there).
fn target_of(to: DbKind, table: &TableName) -> TableName {
    tidemark::replicate::many::default_target(to, table).unwrap()
}

/// A dozen tables from `from` into `to` by one following replicator under a writer, then a
/// catch-up run, then every table compared.
async fn many_tables(from: DbKind, to: DbKind, second: Option<&str>) {
    let src = TestDb::new(from).await;
    let dst = TestDb::new(to).await;
    if let Some(schema) = second {
        let create = match from {
            DbKind::Postgres => format!("CREATE SCHEMA {schema}"),
            _ => format!("CREATE DATABASE {schema}"),
        };
        src.db.execute(&create, &[]).await.unwrap();
        if to != DbKind::Sqlite {
            let create = match to {
                DbKind::Postgres => format!("CREATE SCHEMA {schema}"),
                _ => format!("CREATE DATABASE IF NOT EXISTS {schema}"),
            };
            dst.db.execute(&create, &[]).await.unwrap();
        }
    }
    let shapes = shapes(second);
    assert_eq!(shapes.len(), 12);
    for shape in &shapes {
        create(src.db.as_ref(), shape).await;
        for n in 0..20 {
            insert(src.db.as_ref(), shape, n, 1).await;
        }
    }
    // Patterns for setup: every table of the default schema by trigger, then `orders` by its
    // cursor instead; the second schema's by trigger.
    let out = ok(run_cli(
        &src,
        &["setup", "--table", "*", "--strategy", "trigger"],
    ));
    let in_default = if second.is_some() { 9 } else { 12 };
    assert_eq!(out.lines().count(), in_default, "{out}");
    ok(run_cli(&src, &["teardown", "--table", "orders"]));
    ok(run_cli(
        &src,
        &["setup", "--table", "orders", "--strategy", "timestamp"],
    ));
    let mut selectors = vec!["--table", "*"];
    let pattern = second.map(|s| format!("{s}.*"));
    if let Some(p) = &pattern {
        ok(run_cli(
            &src,
            &["setup", "--table", p, "--strategy", "trigger"],
        ));
        selectors.extend(["--table", p.as_str()]);
    }
    // The follower runs while a writer inserts, updates and deletes in every table.
    let mut args = vec!["replicate", "--follow", "--target", dst.url.as_str()];
    args.extend(&selectors);
    let follower = tidemark_cmd(&args)
        .arg("--source")
        .arg(src.url.as_str())
        .arg("--margin-ms")
        .arg("30")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let writer = {
        let db: Arc<dyn Database> = Arc::clone(&src.db);
        let shapes = shapes_owned(second);
        tokio::spawn(async move {
            let mut next = 20u64;
            for round in 0..12u64 {
                for (i, shape) in shapes.iter().enumerate() {
                    let i = i as u64;
                    insert(db.as_ref(), shape, next + i, round).await;
                    update(db.as_ref(), shape, (round * 7 + i) % 20, round + 2).await;
                    // `timestamp` capture sees soft deletes only: its table is never hard-deleted.
                    if round % 3 == i % 3 && !shape.stamped {
                        delete(db.as_ref(), shape, (round * 5 + i * 3) % 20).await;
                    }
                }
                next += 12;
                tokio::time::sleep(std::time::Duration::from_millis(40)).await;
            }
        })
    };
    writer.await.unwrap();
    // SIGTERM: the follower finishes its run and exits 0, one line per table.
    let pid = follower.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let followed = follower.wait_with_output().unwrap();
    let followed_text = text(&followed);
    assert!(followed.status.success(), "{followed_text}");
    assert_eq!(
        followed_text.matches("replicated ").count(),
        12,
        "{followed_text}"
    );
    // A catch-up run sees every change committed before it started.
    let mut args = vec![
        "replicate",
        "--target",
        dst.url.as_str(),
        "--margin-ms",
        "30",
    ];
    args.extend(&selectors);
    let caught_up = ok(run_cli(&src, &args));
    assert_eq!(caught_up.matches("replicated ").count(), 12, "{caught_up}");
    for shape in &shapes {
        let table = src.db.resolve_table(&table_of(shape)).await.unwrap();
        let want = rows(src.db.as_ref(), &table, shape).await;
        let got = rows(dst.db.as_ref(), &target_of(to, &table), shape).await;
        assert!(want.len() >= 20, "{table}: {} rows", want.len());
        assert_eq!(want, got, "{from} {table} → {to}");
    }
    // Each table has its own replica and position.
    let replicas = src.state().await.replicas().await.unwrap();
    assert_eq!(replicas.len(), 12, "{replicas:?}");
}

fn shapes_owned(second: Option<&str>) -> Vec<Shape> {
    shapes(second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tables_postgres_to_mariadb() {
    many_tables(DbKind::Postgres, DbKind::Mysql, Some("sales_pm")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tables_mariadb_to_sqlite() {
    many_tables(DbKind::Mysql, DbKind::Sqlite, Some("sales_ms")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tables_sqlite_to_postgres() {
    many_tables(DbKind::Sqlite, DbKind::Postgres, None).await;
}

/// Counts tidemark's own tables in the source (state, logs): none after a refused command.
async fn own_tables(t: &TestDb) -> i64 {
    let sql = match t.kind {
        DbKind::Postgres => {
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'tidemark%' AND relkind = 'r'"
        }
        // This database's own: the MariaDB server is shared by every test of the run.
        DbKind::Mysql => {
            "SELECT count(*) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'tidemark%'"
        }
        DbKind::Sqlite => "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'tidemark%'",
    };
    t.count(sql).await
}

fn refused(o: Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(err.contains(needle), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

async fn bad_names(kind: DbKind) {
    let t = TestDb::new(kind).await;
    t.db.execute("CREATE TABLE things (id BIGINT PRIMARY KEY)", &[])
        .await
        .unwrap();
    let dst = TestDb::new(DbKind::Sqlite).await;
    if kind != DbKind::Sqlite {
        refused(
            t.cli(&["setup", "--table", "nosuch.things", "--strategy", "trigger"]),
            "schema \"nosuch\" does not exist",
        );
        refused(
            t.cli(&[
                "replicate",
                "--table",
                "nosuch.*",
                "--target",
                dst.url.as_str(),
            ]),
            "does not exist",
        );
    } else {
        refused(
            t.cli(&["setup", "--table", "other.things", "--strategy", "trigger"]),
            "SQLite has no schemas",
        );
    }
    refused(
        t.cli(&["setup", "--table", "zz*", "--strategy", "trigger"]),
        "no table matches",
    );
    refused(
        t.cli(&["replicate", "--table", "zz*", "--target", dst.url.as_str()]),
        "no table matches",
    );
    refused(t.cli(&["status", "--table", "zz*"]), "no table matches");
    refused(
        t.cli(&["setup", "--table", "a.b.c", "--strategy", "trigger"]),
        "invalid table name",
    );
    assert_eq!(own_tables(&t).await, 0, "a refused command created tables");
    assert_eq!(
        own_tables(&dst).await,
        0,
        "a refused command created tables"
    );
    // `main.things` is `things` on SQLite, `public.things` on PostgreSQL: one key.
    let default = match kind {
        DbKind::Sqlite => Some("main.things"),
        DbKind::Postgres => Some("public.things"),
        DbKind::Mysql => None,
    };
    if let Some(name) = default {
        let out = ok(t.cli(&["setup", "--table", name, "--strategy", "trigger"]));
        assert!(out.starts_with("things: trigger capture"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_postgres() {
    bad_names(DbKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_mariadb() {
    bad_names(DbKind::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_sqlite() {
    bad_names(DbKind::Sqlite).await;
}

/// The same table name in two schemas: exports, watermarks, status and files never mix them.
async fn same_name_two_schemas(kind: DbKind, schema: &str) {
    let t = TestDb::new(kind).await;
    let create = match kind {
        DbKind::Postgres => format!("CREATE SCHEMA {schema}"),
        _ => format!("CREATE DATABASE {schema}"),
    };
    t.db.execute(&create, &[]).await.unwrap();
    let plain = shapes(None).into_iter().nth(1).unwrap(); // "order", trigger
    let mut other = shapes(None).into_iter().nth(1).unwrap();
    other.name = format!("{schema}.\"order\"");
    create_and_fill(&t, &plain, 3).await;
    create_and_fill(&t, &other, 5).await;
    ok(t.cli(&["setup", "--table", "order", "--strategy", "trigger"]));
    let qualified = format!("{schema}.order");
    ok(t.cli(&["setup", "--table", &qualified, "--strategy", "trigger"]));
    let out = t.out.path().to_str().unwrap();
    for table in ["order", qualified.as_str()] {
        ok(t.cli(&[
            "export",
            "--consumer",
            "c",
            "--mode",
            "full",
            "--table",
            table,
            "--out",
            out,
        ]));
    }
    let files = common::csv_files(t.out.path());
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let lines = |needle: &str| {
        let f = files
            .iter()
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.starts_with(needle)
            })
            .unwrap_or_else(|| panic!("no file {needle}* in {names:?}"));
        std::fs::read_to_string(f).unwrap().lines().count() - 1
    };
    assert_eq!(lines(&format!("full_c_{schema}.order_")), 5, "{names:?}");
    assert_eq!(lines("full_c_order_"), 3, "{names:?}");
    // Incremental exports: a change in one schema's table is not the other's.
    t.db.execute(
        &format!(
            "UPDATE {schema}.{} SET v = 99 WHERE id = 0",
            quote(t.db.as_ref(), "order")
        ),
        &[],
    )
    .await
    .unwrap();
    let inc = ok(t.cli(&[
        "export",
        "--consumer",
        "c",
        "--mode",
        "incremental",
        "--table",
        "order",
        "--out",
        out,
    ]));
    assert!(inc.contains("no changes"), "{inc}");
    let inc = ok(t.cli(&[
        "export",
        "--consumer",
        "c",
        "--mode",
        "incremental",
        "--table",
        &qualified,
        "--out",
        out,
    ]));
    assert!(inc.contains(": 1 row"), "{inc}");
    // Status of one schema's tables only.
    let status = t.cli(&["--json", "status", "--table", &format!("{schema}.*")]);
    let report: serde_json::Value =
        serde_json::from_slice(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&status)));
    let tables: Vec<&str> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(tables, vec![qualified.as_str()], "{report}");
    // The log of each table lives in its own schema.
    let logs = t
        .count(&match kind {
            DbKind::Postgres => format!(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'tidemark_log_order' \
                 AND schemaname IN ('public', '{schema}')"
            ),
            _ => format!(
                "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_NAME = \
                 'tidemark_log_order' AND TABLE_SCHEMA IN (DATABASE(), '{schema}')"
            ),
        })
        .await;
    assert_eq!(logs, 2);
    // The other strategies on a table outside the default schema: set up, export a change,
    // torn down (their triggers, functions and indexes are found in that schema).
    for (strategy, stamped) in [("timestamp", true), ("version", false)] {
        let shape = Shape {
            name: format!("{schema}.{strategy}_t"),
            columns: vec![("id", Ty::Int), ("v", Ty::Text)],
            key: vec!["id"],
            stamped,
        };
        create_and_fill(&t, &shape, 3).await;
        let name = shape.name.clone();
        ok(t.cli(&["setup", "--table", &name, "--strategy", strategy]));
        let export = |mode: &'static str| {
            t.cli(&[
                "export",
                "--consumer",
                "s",
                "--mode",
                mode,
                "--table",
                &name,
                "--out",
                out,
            ])
        };
        assert!(ok(export("full")).contains(": 3 rows"));
        update(t.db.as_ref(), &shape, 1, 7).await;
        let inc = ok(export("incremental"));
        assert!(inc.contains(": 1 row"), "{strategy}: {inc}");
        let gone = ok(t.cli(&["teardown", "--table", &name, "--force"]));
        assert!(gone.contains("removed"), "{gone}");
    }
}

async fn create_and_fill(t: &TestDb, shape: &Shape, rows: u64) {
    create(t.db.as_ref(), shape).await;
    for n in 0..rows {
        insert(t.db.as_ref(), shape, n, 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_name_two_schemas_postgres() {
    same_name_two_schemas(DbKind::Postgres, "east").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_name_two_schemas_mariadb() {
    same_name_two_schemas(DbKind::Mysql, "east_my").await;
}

/// The service's `?table=` takes `schema.name` too, and refuses a schema that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_names_tables_by_schema() {
    use std::io::{BufRead, BufReader};
    let t = TestDb::new(DbKind::Postgres).await;
    t.db.execute("CREATE SCHEMA west", &[]).await.unwrap();
    let mut shape = shapes(None).into_iter().nth(1).unwrap();
    shape.name = "west.\"order\"".into();
    create_and_fill(&t, &shape, 4).await;
    ok(t.cli(&["setup", "--table", "west.order", "--strategy", "trigger"]));
    let out = t.out.path().to_str().unwrap().to_string();
    let mut child = tidemark_cmd(&[
        "--source",
        t.url.as_str(),
        "serve",
        "--listen",
        "127.0.0.1:0",
    ])
    .args(["--out", &out])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = format!("http://{}", line.trim().rsplit("http://").next().unwrap());
    let c = reqwest::Client::new();
    let post = |table: &str| c.post(format!("{base}/export/web?table={table}")).send();
    let r = post("west.order").await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["rows"], 4, "{body}");
    assert!(
        body["file"].as_str().unwrap().contains("_west.order_"),
        "{body}"
    );
    let r = post("nowhere.order").await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("does not exist"), "{text}");
    let r = c
        .get(format!("{base}/exports/watermark?table=west.order"))
        .header("X-Consumer-ID", "web")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["table"], "west.order", "{body}");
    let _ = child.kill();
    let _ = child.wait();
}
