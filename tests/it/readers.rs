//! Exports that downstream tools read without guessing: the manifests carry every column's
//! database type and portable kind, and the README's "Reading exports" snippets — extracted from
//! the README, run as they are with `python3` — rebuild a table of every kind of value (NULL and
//! "", padded `char(n)`, exact decimals, `-0.0`, bytes, timestamps) from a full export and deltas
//! of each database, with the right values and types in DuckDB and in pandas.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::TestDb;
use tidemark::capture::Mode;
use tidemark::db::DbKind;
use tidemark::export::{manifest, ExportRequest};
use tidemark::ident::{ConsumerId, TableName};

const CONSUMER: &str = "reader";
/// A consumer that only ever asks for deltas.
const FRESH: &str = "fresh";

/// The table, with one column of each kind of value.
fn ddl(kind: DbKind) -> &'static str {
    match kind {
        DbKind::Postgres => {
            "CREATE TABLE readings (id BIGINT PRIMARY KEY, label TEXT, code CHAR(6), \
             price NUMERIC(12,3), big NUMERIC(30,10), ratio DOUBLE PRECISION, ok BOOLEAN, \
             at TIMESTAMPTZ, day DATE, payload BYTEA)"
        }
        DbKind::Mysql => {
            "CREATE TABLE readings (id BIGINT PRIMARY KEY, label TEXT, code CHAR(6), \
             price DECIMAL(12,3), big DECIMAL(30,10), ratio DOUBLE, ok BOOLEAN, \
             at TIMESTAMP(6) NULL, day DATE, payload LONGBLOB)"
        }
        DbKind::Sqlite => {
            "CREATE TABLE readings (id INTEGER PRIMARY KEY, label TEXT, code CHAR(6), \
             price NUMERIC(12,3), big NUMERIC(30,10), ratio DOUBLE, ok BOOLEAN, \
             at TIMESTAMP, day DATE, payload BLOB)"
        }
    }
}

/// Values as SQL literals: (time, bytes as hex, a negative zero).
fn ts(kind: DbKind, t: &str) -> String {
    match kind {
        DbKind::Postgres => format!("'{t}+00'"),
        DbKind::Mysql => format!("'{t}'"),
        DbKind::Sqlite => format!("'{}Z'", t.replace(' ', "T")),
    }
}

fn bytes(kind: DbKind, hex: &str) -> String {
    match kind {
        DbKind::Postgres => format!("'\\x{hex}'::bytea"),
        _ => format!("X'{hex}'"),
    }
}

fn neg_zero(kind: DbKind) -> &'static str {
    match kind {
        DbKind::Postgres => "'-0'::float8",
        _ => "-0e0",
    }
}

/// The big decimal: 30 digits, beyond a double; SQLite has no exact decimals (its NUMERIC
/// stores a real), so it gets one a double holds.
fn big(kind: DbKind) -> &'static str {
    match kind {
        DbKind::Sqlite => "2.5",
        _ => "12345678901234567890.1234567891",
    }
}

async fn exec(t: &TestDb, sql: &str) {
    t.db.execute(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn export(t: &TestDb, consumer: &str, mode: Mode) {
    let req = ExportRequest::new(
        ConsumerId::new(consumer).unwrap(),
        TableName::parse("readings").unwrap(),
        mode,
        t.out.path().to_path_buf(),
    );
    let out = t
        .exporter()
        .await
        .export(&req, None)
        .await
        .unwrap_or_else(|e| panic!("{mode} export on {}: {e}", t.kind));
    assert!(
        out.file.is_some(),
        "{mode} export on {} wrote no file",
        t.kind
    );
}

/// The README's python blocks of its "Reading exports" section, in order.
fn readme_snippets() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find("\n## Reading exports\n")
        .expect("README has a \"Reading exports\" section");
    let section = &readme[start + 1..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .split("```python\n")
        .skip(1)
        .map(|block| block[..block.find("\n```").expect("closed block")].to_string() + "\n")
        .collect()
}

/// Runs the README's snippets on `dir` and prints the rebuilt rows, each value tagged with the
/// Python type it was read as.
const HARNESS: &str = r#"
import datetime, decimal, importlib.util, json, sys

def load(path):
    spec = importlib.util.spec_from_file_location(path.rsplit("/", 1)[-1][:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

def tag(v):
    if v is None or v is getattr(__import__("pandas"), "NA"):
        return None
    if isinstance(v, bool):
        return f"bool:{str(v).lower()}"
    if isinstance(v, int):
        return f"int:{v}"
    if isinstance(v, decimal.Decimal):
        return f"decimal:{v}"
    if isinstance(v, float):
        return f"float:{v!r}"
    if hasattr(v, "to_pydatetime"):
        v = v.to_pydatetime()
    if isinstance(v, datetime.datetime):
        assert v.utcoffset() == datetime.timedelta(0), v
        return "ts:" + v.replace(tzinfo=None).isoformat(timespec="microseconds")
    if isinstance(v, datetime.date):
        return f"date:{v.isoformat()}"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "bytes:" + bytes(v).hex()
    if isinstance(v, str):
        return f"str:{v}"
    return f"{type(v).__name__}:{v}"

out_dir, duck_path, pandas_path = sys.argv[1:4]
duck, pandas = load(duck_path), load(pandas_path)
got = {}
for consumer in sys.argv[4:]:
    con = duck.replay_duckdb(out_dir, consumer, "readings")
    rel = con.sql("SELECT * FROM replica ORDER BY id")
    names = [d[0] for d in rel.description]
    got[f"duckdb {consumer}"] = [{n: tag(v) for n, v in zip(names, row)} for row in rel.fetchall()]
    df = pandas.replay_pandas(out_dir, consumer, "readings").sort_values("id")
    got[f"pandas {consumer}"] = [{n: tag(v) for n, v in r.items()} for r in df.to_dict("records")]
print(json.dumps(got))
"#;

/// What both readers must give: rows by id, each value tagged with its Python type.
fn expected(kind: DbKind) -> serde_json::Value {
    let lite = kind == DbKind::Sqlite;
    // SQLite's NUMERIC columns have no precision: their values are text to a reader.
    let dec = |exact: &str, lite_text: &str| {
        if lite {
            format!("str:{lite_text}")
        } else {
            format!("decimal:{exact}")
        }
    };
    // Fixed-length text keeps its padding where the database has it.
    let code = |v: &str| {
        if lite {
            format!("str:{v}")
        } else {
            format!("str:{v:<6}")
        }
    };
    serde_json::json!([
        {
            "id": "int:1", "label": "str:NULL", "code": code("ab"),
            "price": dec("1234.500", "1234.5"),
            "big": dec("12345678901234567890.1234567891", "2.5"),
            // Only PostgreSQL stores -0.0: MariaDB stores 0 for it, and SQLite an integral REAL
            // as an integer.
            "ratio": if kind == DbKind::Postgres { "float:-0.0" } else { "float:0.0" },
            "ok": "bool:true", "at": "ts:2026-11-21T04:37:00.123456",
            "day": "date:2026-11-21", "payload": "bytes:00ff0a5c22"
        },
        {
            "id": "int:3", "label": "str:say \"hi\",\r\nbye", "code": code("abcdef"),
            "price": dec("-0.001", "-0.001"), "big": dec("0E-10", "0"),
            "ratio": "float:0.1", "ok": "bool:false", "at": "ts:1999-12-31T23:59:59.999999",
            "day": "date:1999-12-31", "payload": "bytes:"
        },
        {
            "id": "int:4", "label": "str:", "code": code("x"),
            "price": null, "big": null, "ratio": "float:1e+300", "ok": null,
            "at": "ts:2026-01-02T03:04:05.000006", "day": null, "payload": "bytes:ff"
        }
    ])
}

async fn readme_snippets_read_exports_exactly(kind: DbKind) {
    let t = TestDb::new(kind).await;
    exec(&t, ddl(kind)).await;
    let table = TableName::parse("readings").unwrap();
    t.setup(&table, "trigger").await;
    let rows = [
        format!(
            "(1, '', 'ab', 1234.5, {}, {}, TRUE, {}, '2026-11-21', {})",
            big(kind),
            neg_zero(kind),
            ts(kind, "2026-11-21 04:37:00.123456"),
            bytes(kind, "00ff0a5c22")
        ),
        "(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)".to_string(),
        format!(
            "(3, 'say \"hi\",' || {} || 'bye', 'abcdef', -0.001, 0, 0.1, FALSE, {}, \
             '1999-12-31', {})",
            match kind {
                DbKind::Mysql => "CHAR(13, 10)",
                _ => "char(13) || char(10)",
            },
            ts(kind, "1999-12-31 23:59:59.999999"),
            bytes(kind, "")
        ),
    ];
    let insert = |values: &str| {
        let sql = format!(
            "INSERT INTO readings (id, label, code, price, big, ratio, ok, at, day, payload) \
             VALUES {values}"
        );
        // MariaDB's || is OR unless PIPES_AS_CONCAT: spell concatenation its way.
        if kind == DbKind::Mysql {
            sql.replace(
                "'say \"hi\",' || CHAR(13, 10) || 'bye'",
                "CONCAT('say \"hi\",', CHAR(13, 10), 'bye')",
            )
        } else if kind == DbKind::Postgres {
            sql.replace("char(13) || char(10)", "chr(13) || chr(10)")
        } else {
            sql
        }
    };
    exec(&t, &insert(&rows.join(", "))).await;
    export(&t, CONSUMER, Mode::Full).await;

    // A delta: an update to a text that pyarrow would take for NULL by default, a delete, an
    // insert with an empty string; then a second delta.
    exec(&t, "UPDATE readings SET label = 'NULL' WHERE id = 1").await;
    exec(&t, "DELETE FROM readings WHERE id = 2").await;
    exec(
        &t,
        &insert(&format!(
            "(4, '', 'x', NULL, NULL, 1e300, NULL, {}, NULL, {})",
            ts(kind, "2026-01-02 03:04:05.000006"),
            bytes(kind, "00")
        )),
    )
    .await;
    export(&t, CONSUMER, Mode::Delta).await;
    exec(
        &t,
        &format!(
            "UPDATE readings SET payload = {} WHERE id = 4",
            bytes(kind, "ff")
        ),
    )
    .await;
    export(&t, CONSUMER, Mode::Delta).await;

    // Another consumer whose first export is a delta (every live row as an INSERT).
    export(&t, FRESH, Mode::Delta).await;

    // The manifests carry the types, and verify accepts them.
    let report = manifest::verify(t.out.path()).expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let chains = manifest::chains(t.out.path()).unwrap();
    let chain = &chains[&(CONSUMER.to_string(), "readings".to_string())];
    assert_eq!(chain.len(), 3);
    let full = &chain[0].1;
    assert_eq!(full.primary_key, ["id"]);
    let col = |name: &str| {
        let c = full
            .columns
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no column {name}"));
        serde_json::to_value(c).unwrap()
    };
    let price = col("price");
    assert_eq!(price["kind"], "decimal", "{price}");
    if kind != DbKind::Sqlite {
        assert_eq!(
            (&price["precision"], &price["scale"]),
            (&12.into(), &3.into())
        );
        let code = col("code");
        assert_eq!((&code["length"], &code["fixed"]), (&6.into(), &true.into()));
    }
    let expected_types = match kind {
        DbKind::Postgres => [
            "numeric(12,3)",
            "timestamp with time zone",
            "bigint",
            "bytea",
        ],
        DbKind::Mysql => ["decimal(12,3)", "timestamp(6)", "bigint(20)", "longblob"],
        DbKind::Sqlite => ["NUMERIC(12,3)", "TIMESTAMP", "INTEGER", "BLOB"],
    };
    for (name, ty) in ["price", "at", "id", "payload"].iter().zip(expected_types) {
        assert_eq!(col(name)["type"], ty, "{kind} {name}");
    }
    for (name, k) in [
        ("id", "integer"),
        ("label", "text"),
        ("ratio", "float"),
        ("ok", "boolean"),
        ("at", "timestamp"),
        ("day", "date"),
        ("payload", "bytes"),
    ] {
        assert_eq!(col(name)["kind"], k, "{kind} {name}");
    }
    let delta = &chain[1].1;
    assert_eq!(delta.columns[0].name, "operation");
    assert_eq!(delta.columns[0].sql_type, None);

    // `tidemark verify` accepts them, and the same exports with manifests as tidemark wrote
    // them before columns had types (format 1: names only, no primary key).
    let verify = |dir: &Path| common::tidemark_cmd(&["verify", dir.to_str().unwrap()]).output();
    let run = verify(t.out.path()).unwrap();
    assert!(run.status.success(), "{run:?}");
    let old = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(t.out.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let mut text = std::fs::read_to_string(&path).unwrap();
        if name.ends_with(".manifest.json") {
            let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
            let names: Vec<serde_json::Value> = m["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].clone())
                .collect();
            m["columns"] = names.into();
            m["format"] = 1.into();
            m.as_object_mut().unwrap().remove("primary_key");
            text = serde_json::to_string(&m).unwrap();
        }
        std::fs::write(old.path().join(name), text).unwrap();
    }
    let run = verify(old.path()).unwrap();
    assert!(run.status.success(), "format 1 manifests: {run:?}");

    // The README's snippets, exactly as written there.
    let snippets = readme_snippets();
    assert_eq!(snippets.len(), 2, "a DuckDB and a pandas snippet");
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = ["readme_duckdb.py", "readme_pandas.py", "harness.py"]
        .iter()
        .zip([&snippets[0], &snippets[1], &HARNESS.to_string()])
        .map(|(name, text)| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    let run = Command::new("python3")
        .arg(&paths[2])
        .arg(t.out.path())
        .arg(&paths[0])
        .arg(&paths[1])
        .args([CONSUMER, FRESH])
        .output()
        .expect("python3 (with duckdb, pandas, pyarrow: .ci/run installs them)");
    assert!(
        run.status.success(),
        "the README's snippets failed on {kind}:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&run.stdout));
    });
    let want = expected(kind);
    for reader in [
        "duckdb reader",
        "pandas reader",
        "duckdb fresh",
        "pandas fresh",
    ] {
        assert_eq!(
            got[reader], want,
            "{reader} read the exports of {kind} as\n{:#}",
            got[reader]
        );
    }
}
on_each_db!(readme_snippets_read_exports_exactly);
