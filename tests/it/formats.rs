//! `--format csv|jsonl|parquet` and `?format=`, on each database, read back by readers that
//! are not tidemark's: pyarrow and DuckDB (Parquet), DuckDB (CSV, `""` kept apart from NULL),
//! Python's json module (JSON Lines, typing checked line by line). Values are compared one by
//! one with those the test's client committed: 2^63−1 and −2^63, 1e-300, NaN and ±Infinity
//! where the database has them, microsecond timestamps, decimals, bytes, unicode with quotes and
//! a newline, NULL apart from the empty string. Every mode, through the CLI and over HTTP. A
//! replay per format (random workload, full then deltas) equals the table. Bad input (an
//! unknown format, a column Parquet cannot hold) exits 2, writes nothing and moves no position.

use crate::common;

use std::path::{Path, PathBuf};

use common::{churn, finished_job, kill_and_wait, spawn_serve, tidemark_cmd, Raw, TestDb, MARGIN};
use serde_json::{json, Value};
use tidemark::capture::Mode;
use tidemark::db::DbKind;
use tidemark::format::FileFormat;
use tidemark::ident::{ConsumerId, TableName};

/// Reads an export file with an independent reader and prints its rows as JSON, each value
/// normalized by the column's kind (from the manifest) so that every format reads the same:
/// integers and decimals as digit strings, floats as Python's repr (`1e-300`, `nan`, `inf`),
/// timestamps as `YYYY-MM-DDTHH:MM:SS.ffffffZ`, bytes as hex, NULL as null. Rows sorted by id.
const READ: &str = r#"
import sys, json, base64, decimal, datetime
fmt, path, reader = sys.argv[1], sys.argv[2], sys.argv[3]
m = json.load(open(path + '.manifest.json'))
assert m['file_format'] == fmt, m['file_format']
cols = [c['name'] for c in m['columns']]
kinds = [c['kind'] for c in m['columns']]
def norm(k, v):
    if v is None: return None
    if k == 'integer':
        assert not isinstance(v, bool) and not isinstance(v, float), (k, v)
        if fmt == 'jsonl' and isinstance(v, str): assert abs(int(v)) > 2**53, v
        return str(int(v))
    if k == 'float':
        if isinstance(v, str):
            if fmt == 'jsonl': assert v in ('NaN', 'Infinity', '-Infinity'), v
            v = {'NaN': 'nan', 'Infinity': 'inf', '-Infinity': '-inf'}.get(v, v)
        return repr(float(v))
    if k == 'decimal':
        if fmt == 'jsonl': assert isinstance(v, str), v
        return format(decimal.Decimal(str(v)), 'f')
    if k == 'boolean':
        if isinstance(v, bool): return v
        return {'true': True, 'false': False}[v]
    if k == 'timestamp':
        if isinstance(v, str): return v
        return v.astimezone(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')
    if k == 'date': return v if isinstance(v, str) else v.isoformat()
    if k == 'bytes':
        if isinstance(v, (bytes, bytearray)): return bytes(v).hex()
        if fmt == 'jsonl': return base64.b64decode(v, validate=True).hex()
        assert v.startswith('\\x'), v
        return v[2:]
    assert isinstance(v, str), (k, v)
    return v
if reader == 'pyarrow':
    import pyarrow.parquet as pq
    t = pq.read_table(path)
    assert t.column_names == cols, t.column_names
    rows = [[r[c] for c in cols] for r in t.to_pylist()]
elif reader == 'duckdb':
    import duckdb
    p = path.replace("'", "''")
    if fmt == 'parquet':
        cur = duckdb.execute(f"SELECT * FROM read_parquet('{p}')")
    else:
        cur = duckdb.execute(f"SELECT * FROM read_csv('{p}', header=true, all_varchar=true, allow_quoted_nulls=false)")
    assert [d[0] for d in cur.description] == cols, cur.description
    rows = [list(r) for r in cur.fetchall()]
else:
    rows = []
    with open(path, encoding='utf-8', newline='') as f:
        for line in f:
            assert line.endswith('\n'), line
            o = json.loads(line)
            assert list(o.keys()) == cols, list(o.keys())
            rows.append([o[c] for c in cols])
out = [[norm(k, v) for k, v in zip(kinds, r)] for r in rows]
i = cols.index('id')
out.sort(key=lambda r: int(r[i]))
print(json.dumps(out))
"#;

/// The rows of `path` as `reader` (`pyarrow`, `duckdb` or `json`) reads them.
fn read_with(format: FileFormat, path: &Path, reader: &str) -> Vec<Vec<Value>> {
    let out = std::process::Command::new("python3")
        .args(["-c", READ, format.extension()])
        .arg(path)
        .arg(reader)
        .output()
        .expect("run python3 (scripts/test-deps installs pyarrow and duckdb)");
    assert!(
        out.status.success(),
        "{reader} could not read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON rows")
}

/// Every reader of a format, which must all agree; returns their rows.
fn read_all(format: FileFormat, path: &Path) -> Vec<Vec<Value>> {
    let readers: &[&str] = match format {
        FileFormat::Csv => &["duckdb"],
        FileFormat::Jsonl => &["json"],
        FileFormat::Parquet => &["pyarrow", "duckdb"],
    };
    let first = read_with(format, path, readers[0]);
    for r in &readers[1..] {
        assert_eq!(read_with(format, path, r), first, "{r} vs {}", readers[0]);
    }
    first
}

/// The DDL of the table `typed` and the statements that fill it.
fn typed_table(kind: DbKind) -> (&'static str, Vec<&'static str>) {
    match kind {
        DbKind::Postgres => (
            "CREATE TABLE typed (id BIGINT PRIMARY KEY, big BIGINT, f DOUBLE PRECISION, \
             d NUMERIC(20,6), ok BOOLEAN, ts TIMESTAMPTZ, dt DATE, b BYTEA, t TEXT)",
            vec![
                "INSERT INTO typed VALUES (1, 9223372036854775807, 1e-300, \
                 12345678901234.123456, true, '2026-11-21 04:37:00.123456+00', '2026-11-21', \
                 '\\x00ff27'::bytea, E'ünïcødé \"q\", ✓\\nline2')",
                "INSERT INTO typed VALUES (2, -9223372036854775807 - 1, 'Infinity', -0.000001, \
                 false, '1970-01-01 00:00:00.000001+00', '1969-12-31', '\\x'::bytea, '')",
                "INSERT INTO typed (id) VALUES (3)",
                "INSERT INTO typed (id, f) VALUES (4, 'NaN')",
                "INSERT INTO typed (id, f) VALUES (5, '-Infinity')",
            ],
        ),
        DbKind::Mysql => (
            "CREATE TABLE typed (id BIGINT PRIMARY KEY, big BIGINT, f DOUBLE, \
             d DECIMAL(20,6), ok BOOLEAN, ts DATETIME(6), dt DATE, b LONGBLOB, t TEXT)",
            vec![
                "INSERT INTO typed VALUES (1, 9223372036854775807, 1e-300, \
                 12345678901234.123456, TRUE, '2026-11-21 04:37:00.123456', '2026-11-21', \
                 X'00ff27', 'ünïcødé \"q\", ✓\\nline2')",
                "INSERT INTO typed VALUES (2, -9223372036854775807 - 1, -0.5, -0.000001, \
                 FALSE, '1970-01-01 00:00:00.000001', '1969-12-31', X'', '')",
                "INSERT INTO typed (id) VALUES (3)",
                "INSERT INTO typed (id, f) VALUES (4, 0.1)",
                "INSERT INTO typed (id, f) VALUES (5, 1e300)",
            ],
        ),
        // SQLite enforces no decimal precision, so no decimal column here (Parquet refuses
        // one; see `parquet_refuses_what_it_cannot_hold`).
        DbKind::Sqlite => (
            "CREATE TABLE typed (id INTEGER PRIMARY KEY, big INTEGER, f REAL, ok BOOLEAN, \
             ts TIMESTAMPTZ, dt DATE, b BLOB, t TEXT)",
            vec![
                "INSERT INTO typed VALUES (1, 9223372036854775807, 1e-300, 1, \
                 '2026-11-21T04:37:00.123456Z', '2026-11-21', X'00ff27', \
                 'ünïcødé \"q\", ✓' || char(10) || 'line2')",
                "INSERT INTO typed VALUES (2, -9223372036854775807 - 1, 9e999, 0, \
                 '1970-01-01T00:00:00.000001Z', '1969-12-31', X'', '')",
                "INSERT INTO typed (id) VALUES (3)",
                "INSERT INTO typed (id, f) VALUES (4, 0.1)",
                "INSERT INTO typed (id, f) VALUES (5, -9e999)",
            ],
        ),
    }
}

/// The rows of `typed` as the readers must see them (id, big, f, [d,] ok, ts, dt, b, t).
fn expected(kind: DbKind) -> Vec<Vec<Value>> {
    let (f2, f4, f5) = match kind {
        DbKind::Postgres => ("inf", "nan", "-inf"),
        DbKind::Mysql => ("-0.5", "0.1", "1e+300"),
        DbKind::Sqlite => ("inf", "0.1", "-inf"),
    };
    let has_d = kind != DbKind::Sqlite;
    let row = |id: &str, vals: Vec<Value>, d: Value| {
        let mut r = vec![json!(id)];
        for (i, v) in vals.into_iter().enumerate() {
            if i == 2 && has_d {
                r.push(d.clone());
            }
            r.push(v);
        }
        r
    };
    let null_row = |id: &str, f: Value| {
        let mut r = vec![json!(id), Value::Null, f];
        r.extend(std::iter::repeat_n(Value::Null, if has_d { 6 } else { 5 }));
        r
    };
    vec![
        row(
            "1",
            vec![
                json!("9223372036854775807"),
                json!("1e-300"),
                json!(true),
                json!("2026-11-21T04:37:00.123456Z"),
                json!("2026-11-21"),
                json!("00ff27"),
                json!("ünïcødé \"q\", ✓\nline2"),
            ],
            json!("12345678901234.123456"),
        ),
        row(
            "2",
            vec![
                json!("-9223372036854775808"),
                json!(f2),
                json!(false),
                json!("1970-01-01T00:00:00.000001Z"),
                json!("1969-12-31"),
                json!(""),
                json!(""),
            ],
            json!("-0.000001"),
        ),
        null_row("3", Value::Null),
        null_row("4", json!(f4)),
        null_row("5", json!(f5)),
    ]
}

async fn typed(t: &TestDb) -> TableName {
    let (ddl, inserts) = typed_table(t.kind);
    let mut raw = Raw::open(t).await;
    raw.exec(ddl).await;
    for i in inserts {
        raw.exec(i).await;
    }
    let table = TableName::parse("typed").unwrap();
    t.setup(&table, "trigger").await;
    table
}

/// The file a CLI export printed with `--json`.
fn exported_file(out: &std::process::Output) -> Option<PathBuf> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json output");
    v["file"].as_str().map(PathBuf::from)
}

fn cli_export(t: &TestDb, consumer: &str, mode: &str, format: FileFormat) -> Option<PathBuf> {
    let out = t.cli(&[
        "--json",
        "export",
        "--consumer",
        consumer,
        "--mode",
        mode,
        "--table",
        "typed",
        "--format",
        format.extension(),
        "--margin-ms",
        &MARGIN.as_millis().to_string(),
        "--out",
        t.out.path().to_str().unwrap(),
    ]);
    exported_file(&out)
}

/// The ids (and operations) of a delta or incremental file's rows.
fn ids_and_ops(rows: &[Vec<Value>], delta: bool) -> Vec<(String, String)> {
    rows.iter()
        .map(|r| {
            if delta {
                (r[1].as_str().unwrap().into(), r[0].as_str().unwrap().into())
            } else {
                (r[0].as_str().unwrap().into(), String::new())
            }
        })
        .collect()
}

/// Every mode, every format, through the CLI: the files read back value by value.
async fn every_mode_every_format_through_the_cli(kind: DbKind) {
    let t = TestDb::new(kind).await;
    typed(&t).await;
    let want = expected(kind);
    for format in FileFormat::ALL {
        let file = cli_export(&t, &format!("full_{format}"), "full", format).expect("a file");
        assert_eq!(file.extension().unwrap().to_str(), Some(format.extension()));
        assert_eq!(read_all(format, &file), want, "{kind} {format}");
        // A consumer for the changes, positioned now.
        assert!(cli_export(&t, &format!("delta_{format}"), "full", format).is_some());
    }
    // Changes: a new row with row 1's values, an update, a hard delete.
    let mut raw = Raw::open(&t).await;
    let d = if kind == DbKind::Sqlite { "" } else { "d, " };
    raw.exec(&format!(
        "INSERT INTO typed (id, big, f, {d}ok, ts, dt, b, t) \
         SELECT 6, big, f, {d}ok, ts, dt, b, t FROM typed WHERE id = 1"
    ))
    .await;
    raw.exec("UPDATE typed SET t = 'changed' WHERE id = 2")
        .await;
    raw.exec("DELETE FROM typed WHERE id = 3").await;
    let mut row6 = want[0].clone();
    row6[0] = json!("6");
    for format in FileFormat::ALL {
        let delta = cli_export(&t, &format!("delta_{format}"), "delta", format).expect("a delta");
        let rows = read_all(format, &delta);
        assert_eq!(
            ids_and_ops(&rows, true),
            [
                ("2".to_string(), "UPDATE".to_string()),
                ("3".into(), "DELETE".into()),
                ("6".into(), "INSERT".into())
            ],
            "{kind} {format}"
        );
        assert_eq!(rows[2][1..], row6[..], "{kind} {format}");
        let last = rows[0].last().unwrap();
        assert_eq!(last, &json!("changed"), "{kind} {format}");
        // Nothing changed since: no file.
        assert_eq!(
            cli_export(&t, &format!("delta_{format}"), "delta", format),
            None
        );
        // Incremental from the beginning: every live row, latest values.
        let inc = cli_export(&t, &format!("inc_{format}"), "incremental", format).expect("a file");
        let rows = read_all(format, &inc);
        assert_eq!(
            ids_and_ops(&rows, false)
                .into_iter()
                .map(|(i, _)| i)
                .collect::<Vec<_>>(),
            ["1", "2", "4", "5", "6"],
            "{kind} {format}"
        );
        assert_eq!(rows[4], row6, "{kind} {format}");
    }
    let verify = t.cli(&["verify", t.out.path().to_str().unwrap()]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    for format in FileFormat::ALL {
        t.assert_replay_equals(&format!("delta_{format}"), "typed", &["id"])
            .await;
    }
}
on_each_db!(every_mode_every_format_through_the_cli);

/// `POST /exports/{mode}?format=` and `GET /exports/{id}/file`: the file, its name and content
/// type follow the format; an unknown format is a 400 that starts nothing.
async fn every_format_over_http(kind: DbKind) {
    let t = TestDb::new(kind).await;
    typed(&t).await;
    let want = expected(kind);
    let out = tempfile::tempdir().unwrap();
    let log = out.path().join("serve.log");
    let mut cmd = tidemark_cmd(&[
        "--source",
        t.url.as_str(),
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]);
    cmd.arg("--out")
        .arg(out.path())
        .args(["--margin-ms", &MARGIN.as_millis().to_string()])
        .stderr(std::fs::File::create(&log).unwrap());
    let (mut child, base) = spawn_serve(&mut cmd, Some(&log));
    let c = reqwest::Client::new();
    for format in FileFormat::ALL {
        for mode in ["full", "delta", "incremental"] {
            let consumer = format!("http_{mode}_{format}");
            let r = c
                .post(format!("{base}/exports/{mode}?table=typed&format={format}"))
                .header("X-Consumer-ID", &consumer)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
            let started: Value = r.json().await.unwrap();
            let name = started["outputFilename"]
                .as_str()
                .unwrap_or_else(|| panic!("{started}"))
                .to_string();
            assert!(name.ends_with(&format!(".{format}")), "{name}");
            let id = started["jobId"].as_str().unwrap();
            let job = finished_job(&base, id).await;
            assert_eq!(job["status"], "completed", "{job}");
            let r = c
                .get(format!("{base}/exports/{id}/file"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
            assert!(
                ctype.starts_with(match format {
                    FileFormat::Csv => "text/csv",
                    FileFormat::Jsonl => "application/x-ndjson",
                    FileFormat::Parquet => "application/vnd.apache.parquet",
                }),
                "{ctype}"
            );
            let body = r.bytes().await.unwrap();
            let on_disk = out.path().join(&name);
            assert_eq!(body.as_ref(), std::fs::read(&on_disk).unwrap().as_slice());
            let rows = read_all(format, &on_disk);
            if mode == "delta" {
                let plain: Vec<Vec<Value>> = rows.iter().map(|r| r[1..].to_vec()).collect();
                assert!(rows.iter().all(|r| r[0] == "INSERT"), "{rows:?}");
                assert_eq!(plain, want, "{kind} {format} {mode}");
            } else {
                assert_eq!(rows, want, "{kind} {format} {mode}");
            }
        }
    }
    // The synchronous endpoint takes the format too.
    let r = c
        .post(format!(
            "{base}/export/sync_parquet?table=typed&format=parquet"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    let file = done["file"].as_str().unwrap_or_else(|| panic!("{done}"));
    assert!(file.ends_with(".parquet"), "{done}");
    assert_eq!(read_all(FileFormat::Parquet, &out.path().join(file)), want);
    if kind == DbKind::Postgres {
        // A column Parquet cannot hold: 400 before any job starts, on both endpoints.
        Raw::open(&t)
            .await
            .exec("CREATE TABLE prices (id BIGINT PRIMARY KEY, amount NUMERIC)")
            .await;
        for url in [
            format!("{base}/exports/full?table=prices&format=parquet"),
            format!("{base}/export/bad_format?table=prices&format=parquet"),
        ] {
            let r = c
                .post(&url)
                .header("X-Consumer-ID", "bad_format")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{url}");
            let body = r.text().await.unwrap();
            assert!(
                body.contains("amount") && body.contains("Parquet"),
                "{body}"
            );
        }
    }
    let files_before = common::all_files(out.path());
    let r = c
        .post(format!("{base}/exports/full?table=typed&format=xml"))
        .header("X-Consumer-ID", "bad_format")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body.to_string().contains("format"), "{body}");
    assert_eq!(common::all_files(out.path()), files_before);
    let state = t.state().await;
    let wm = state
        .watermark(
            &ConsumerId::new("bad_format").unwrap(),
            &TableName::parse("typed").unwrap(),
        )
        .await
        .unwrap();
    assert!(wm.is_none());
    kill_and_wait(&mut child);
    let report = tidemark::export::manifest::verify(out.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
on_each_db!(every_format_over_http);

/// A random workload (inserts, updates, soft and hard deletes, a key change) exported as a
/// full export then deltas in each format: replaying each consumer's files gives the table.
async fn replay_each_format(kind: DbKind) {
    let t = TestDb::new(kind).await;
    t.users_with(200, "trigger").await;
    let exporter = t.exporter().await;
    let request = |format: FileFormat, mode: Mode| {
        t.request(&format!("replay_{format}"), mode)
            .with_format(format)
    };
    for format in FileFormat::ALL {
        exporter
            .export(&request(format, Mode::Full), None)
            .await
            .unwrap();
    }
    for round in 0..4u64 {
        churn(t.db.as_ref(), "trigger", round + 11, 3 + round * 5).await;
        for format in FileFormat::ALL {
            let out = exporter
                .export(&request(format, Mode::Delta), None)
                .await
                .unwrap();
            assert!(out.rows > 0, "round {round} {format}: nothing exported");
            assert_eq!(out.format, format);
        }
    }
    for format in FileFormat::ALL {
        t.assert_replay_equals_table(&format!("replay_{format}"))
            .await;
    }
}
on_each_db!(replay_each_format);

/// Bad input: an unknown format (clap, exit 2) and a column Parquet cannot hold (exit 2, the
/// column and its type named): no file, no manifest, no watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_formats_write_nothing() {
    let t = TestDb::new(DbKind::Postgres).await;
    let mut raw = Raw::open(&t).await;
    raw.exec("CREATE TABLE prices (id BIGINT PRIMARY KEY, amount NUMERIC, wide NUMERIC(50,2))")
        .await;
    raw.exec("INSERT INTO prices VALUES (1, 1.5, 2.25)").await;
    t.setup(&TableName::parse("prices").unwrap(), "trigger")
        .await;
    let dir = t.out.path().to_str().unwrap();
    let run = |format: &str, consumer: &str| {
        t.cli(&[
            "export",
            "--consumer",
            consumer,
            "--mode",
            "full",
            "--table",
            "prices",
            "--format",
            format,
            "--out",
            dir,
        ])
    };
    let unknown = run("xml", "c");
    assert_eq!(unknown.status.code(), Some(2));
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("xml") && err.contains("parquet"), "{err}");

    let refused = run("parquet", "c");
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("\"amount\"") && err.contains("numeric") && err.contains("Parquet"),
        "{err}"
    );
    assert!(common::all_files(t.out.path()).is_empty());
    let state = t.state().await;
    let consumer = ConsumerId::new("c").unwrap();
    let table = TableName::parse("prices").unwrap();
    assert!(state.watermark(&consumer, &table).await.unwrap().is_none());

    // With a position already there, a refused Parquet export leaves it where it was.
    let ok = run("jsonl", "c");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let position = |w: Option<tidemark::state::Watermark>| w.map(|w| w.position);
    let before = position(state.watermark(&consumer, &table).await.unwrap());
    assert!(before.is_some());
    let files = common::all_files(t.out.path());
    raw.exec("ALTER TABLE prices DROP COLUMN amount").await;
    let wide = run("parquet", "c");
    assert_eq!(wide.status.code(), Some(2));
    let err = String::from_utf8_lossy(&wide.stderr);
    assert!(err.contains("\"wide\"") && err.contains("50"), "{err}");
    assert_eq!(common::all_files(t.out.path()), files);
    assert_eq!(
        position(state.watermark(&consumer, &table).await.unwrap()),
        before
    );
}
