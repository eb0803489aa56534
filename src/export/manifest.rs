//! Manifests (`….csv.manifest.json` beside every export file) and `tidemark verify`: the
//! manifests of one consumer and table form a chain — each one's `watermark_before` is the
//! previous one's `watermark_after` — and each names the format, SHA-256, size, row count and
//! columns of its file. `verify` checks every format: CSV (header row, records), JSON Lines (one
//! object per line, its keys the columns in order) and Parquet (the footer's row count and
//! schema field names).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::capture::Mode;
use crate::db::portable::ColumnType;
use crate::db::Timestamp;
use crate::error::{Error, Result};
use crate::format::csv::reader;
use crate::format::FileFormat;
use crate::state::Position;

/// Suffix of manifest files.
pub const SUFFIX: &str = ".manifest.json";

/// The `format` of manifests whose columns carry their types (format 1: a list of names).
pub const FORMAT: u32 = 2;

/// The manifest of one export file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub export_id: String,
    pub consumer: String,
    pub table: String,
    pub mode: Mode,
    /// The file's name, in the manifest's directory.
    pub file: String,
    /// The file's format (manifests written before there were formats: CSV).
    #[serde(default)]
    pub file_format: FileFormat,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    /// The file's columns in order, each with its database type and portable kind; manifests
    /// of format 1 list names only, which read as columns of unknown (text) type.
    #[serde(deserialize_with = "names_or_types")]
    pub columns: Vec<ColumnType>,
    /// The table's primary key, by which delta rows replace earlier ones (empty in manifests
    /// of format 1).
    #[serde(default)]
    pub primary_key: Vec<String>,
    pub watermark_before: Option<Position>,
    pub watermark_after: Position,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub source: String,
}

impl Manifest {
    /// The column names, as in the file's header.
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }
}

/// Reads `columns` as written by any tidemark: names (format 1) or typed columns.
fn names_or_types<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<ColumnType>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Name(String),
        Typed(ColumnType),
    }
    let entries: Vec<Entry> = serde::Deserialize::deserialize(d)?;
    Ok(entries
        .into_iter()
        .map(|e| match e {
            Entry::Name(n) => ColumnType::untyped(&n),
            Entry::Typed(t) => t,
        })
        .collect())
}

/// The manifests of one (consumer, table), oldest first.
pub type Chain = Vec<(PathBuf, Manifest)>;

/// Reads every manifest in `dir`, grouped by (consumer, table) and ordered by start time.
pub fn chains(dir: &Path) -> Result<BTreeMap<(String, String), Chain>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    let mut out: BTreeMap<(String, String), Chain> = BTreeMap::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Error::io("read directory", dir, e))?
            .path();
        let is_manifest = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(SUFFIX) && !n.starts_with('.'));
        if !is_manifest {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| {
            Error::Verify(format!("{}: not a tidemark manifest: {e}", path.display()))
        })?;
        out.entry((m.consumer.clone(), m.table.clone()))
            .or_default()
            .push((path, m));
    }
    for chain in out.values_mut() {
        chain.sort_by(|a, b| {
            (a.1.started_at, &a.1.finished_at, &a.1.export_id).cmp(&(
                b.1.started_at,
                &b.1.finished_at,
                &b.1.export_id,
            ))
        });
    }
    Ok(out)
}

/// What `verify` found for one chain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChainReport {
    pub consumer: String,
    pub table: String,
    pub files: usize,
    pub rows: u64,
    pub watermark: Position,
}

/// The result of `verify`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub chains: Vec<ChainReport>,
    pub problems: Vec<String>,
}

/// Checks every chain in `dir`: links, checksums, sizes, row counts and headers.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let mut problems = Vec::new();
    let mut reports = Vec::new();
    for ((consumer, table), chain) in chains(dir)? {
        let mut previous: Option<&Position> = None;
        let mut rows = 0;
        for (path, m) in &chain {
            let shown = path.display();
            match (previous, &m.watermark_before) {
                (Some(p), Some(b)) if p != b => problems.push(format!(
                    "{shown}: chain broken: watermark_before {} is not the previous export's watermark_after {}",
                    b.to_json(),
                    p.to_json()
                )),
                (Some(_), None) if m.mode != Mode::Full => problems.push(format!(
                    "{shown}: chain broken: a {} export starts from no watermark after earlier exports",
                    m.mode
                )),
                _ => {}
            }
            previous = Some(&m.watermark_after);
            rows += m.rows;
            if let Err(p) = check_file(dir, m) {
                problems.push(format!("{shown}: {p}"));
            }
        }
        if let Some((_, last)) = chain.last() {
            reports.push(ChainReport {
                consumer,
                table,
                files: chain.len(),
                rows,
                watermark: last.watermark_after.clone(),
            });
        }
    }
    Ok(VerifyReport {
        chains: reports,
        problems,
    })
}

/// Hashes and counts the bytes read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Checks one file against its manifest in a single read: checksum, size, columns, row count.
fn check_file(dir: &Path, m: &Manifest) -> std::result::Result<(), String> {
    if m.file.contains('/') || m.file.contains('\\') || m.file.starts_with('.') {
        return Err(format!("file name {:?} is not a plain name", m.file));
    }
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", m.file);
    let path = dir.join(&m.file);
    let file = File::open(&path).map_err(|e| fail(&e))?;
    let mut hashing = Hashing {
        inner: BufReader::with_capacity(256 * 1024, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    // Parse first, but report a checksum mismatch before any parse problem it explains.
    let parsed = match m.file_format {
        FileFormat::Csv => {
            let mut rdr = reader(&mut hashing);
            (|| -> Result<(Vec<String>, u64), csv::Error> {
                let header = rdr.headers()?.iter().map(str::to_string).collect();
                let mut record = csv::ByteRecord::new();
                let mut rows = 0u64;
                while rdr.read_byte_record(&mut record)? {
                    rows += 1;
                }
                Ok((header, rows))
            })()
            .map_err(|e| e.to_string())
        }
        FileFormat::Jsonl => jsonl_shape(&mut hashing, &m.column_names()),
        // The footer is read from the file once its bytes are known to be the manifest's.
        FileFormat::Parquet => Ok((m.column_names(), 0)),
    };
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|e| fail(&e))?;
    let sha = hex::encode(hashing.hasher.finalize());
    if sha != m.sha256 {
        return Err(fail(&format!(
            "sha256 is {sha}, the manifest says {}",
            m.sha256
        )));
    }
    if hashing.bytes != m.bytes {
        return Err(fail(&format!(
            "{} bytes, the manifest says {}",
            hashing.bytes, m.bytes
        )));
    }
    let (header, rows) = match m.file_format {
        FileFormat::Parquet => parquet_shape(&path),
        _ => parsed,
    }
    .map_err(|e| fail(&e))?;
    let names = m.column_names();
    if header != names {
        return Err(fail(&format!(
            "header {header:?} differs from the manifest's columns {names:?}"
        )));
    }
    if rows != m.rows {
        return Err(fail(&format!(
            "{}, the manifest says {}",
            crate::words::count(rows, "row"),
            m.rows
        )));
    }
    Ok(())
}

/// The keys and line count of a JSON Lines file: every line must be an object whose keys are
/// `names` in order (the first line that differs gives its keys as the header).
fn jsonl_shape(
    r: &mut impl Read,
    names: &[String],
) -> std::result::Result<(Vec<String>, u64), String> {
    use std::io::BufRead;
    let mut rows = 0u64;
    let mut line = Vec::new();
    let mut r = std::io::BufReader::new(r);
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok((names.to_vec(), rows));
        }
        rows += 1;
        if line.last() != Some(&b'\n') {
            return Err(format!("line {rows} has no line end (a cut file?)"));
        }
        // A map keeps the keys in the order of the line only with serde_json's
        // preserve_order; read them as a sequence of pairs instead.
        let keys = object_keys(&line).map_err(|e| format!("line {rows}: {e}"))?;
        if keys != names {
            return Ok((keys, rows));
        }
    }
}

/// The keys of the JSON object in `line`, in order.
fn object_keys(line: &[u8]) -> std::result::Result<Vec<String>, String> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> std::result::Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Keys>(line)
        .map(|k| k.0)
        .map_err(|e| e.to_string())
}

/// The column names and row count of a Parquet file, from its footer.
fn parquet_shape(path: &Path) -> std::result::Result<(Vec<String>, u64), String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = File::open(path).map_err(|e| e.to_string())?;
    let reader = SerializedFileReader::new(file).map_err(|e| format!("not a Parquet file: {e}"))?;
    let meta = reader.metadata().file_metadata();
    let names = meta
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    Ok((names, u64::try_from(meta.num_rows()).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Position {
        Position::Timestamp {
            cursor: Timestamp::parse(s).unwrap(),
            setup: None,
        }
    }

    /// Writes `csv` and its manifest into `dir`; returns the manifest.
    fn export(
        dir: &Path,
        name: &str,
        mode: Mode,
        csv: &str,
        before: Option<Position>,
        after: Position,
    ) -> Manifest {
        std::fs::write(dir.join(name), csv).unwrap();
        let m = Manifest {
            format: FORMAT,
            export_id: name.into(),
            consumer: "c".into(),
            table: "t".into(),
            mode,
            file: name.into(),
            file_format: FileFormat::Csv,
            rows: csv.matches("\r\n").count() as u64 - 1,
            bytes: csv.len() as u64,
            sha256: hex::encode(Sha256::digest(csv.as_bytes())),
            columns: csv
                .split("\r\n")
                .next()
                .unwrap()
                .split(',')
                .map(ColumnType::untyped)
                .collect(),
            primary_key: vec!["id".into()],
            watermark_before: before,
            watermark_after: after.clone(),
            started_at: after.time(),
            finished_at: after.time(),
            source: "sqlite".into(),
        };
        write_manifest(dir, &m);
        m
    }

    fn write_manifest(dir: &Path, m: &Manifest) {
        let path = dir.join(format!("{}{SUFFIX}", m.file));
        std::fs::write(path, serde_json::to_string(m).unwrap()).unwrap();
    }

    fn problems(dir: &Path) -> Vec<String> {
        verify(dir).unwrap().problems
    }

    #[test]
    fn finds_broken_chains_counts_and_headers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let t1 = at("2026-01-01T00:00:00Z");
        let t2 = at("2026-01-02T00:00:00Z");
        export(
            d,
            "full.csv",
            Mode::Full,
            "id,name\r\n1,a\r\n2,b\r\n",
            None,
            t1.clone(),
        );
        let mut delta = export(
            d,
            "delta.csv",
            Mode::Delta,
            "operation,id,name\r\nUPDATE,1,c\r\n",
            Some(t1.clone()),
            t2.clone(),
        );
        assert!(problems(d).is_empty(), "{:?}", problems(d));
        let report = verify(d).unwrap();
        assert_eq!((report.chains[0].files, report.chains[0].rows), (2, 3));

        delta.watermark_before = Some(at("2026-01-01T12:00:00Z"));
        write_manifest(d, &delta);
        assert!(problems(d)[0].contains("chain broken"), "{:?}", problems(d));

        delta.watermark_before = Some(t1);
        delta.rows = 5;
        write_manifest(d, &delta);
        assert!(
            problems(d)[0].contains("1 row, the manifest says 5"),
            "{:?}",
            problems(d)
        );

        delta.rows = 1;
        delta.columns = ["operation", "id"].map(ColumnType::untyped).to_vec();
        write_manifest(d, &delta);
        assert!(
            problems(d)[0].contains("differs from the manifest's columns"),
            "{:?}",
            problems(d)
        );

        delta.columns = ["operation", "id", "name"]
            .map(ColumnType::untyped)
            .to_vec();
        write_manifest(d, &delta);
        std::fs::write(d.join("delta.csv"), "operation,id,name\r\nUPDATE,1,X\r\n").unwrap();
        assert!(problems(d)[0].contains("sha256 is"), "{:?}", problems(d));
        std::fs::remove_file(d.join("delta.csv")).unwrap();
        assert!(!problems(d).is_empty());
    }

    #[test]
    fn reads_manifests_with_names_only_and_with_types() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let m = export(
            d,
            "full.csv",
            Mode::Full,
            "id,name\r\n1,a\r\n",
            None,
            at("2026-01-01T00:00:00Z"),
        );
        // A format 1 manifest, as tidemark wrote them before columns had types.
        let mut old = serde_json::to_value(&m).unwrap();
        old["format"] = 1.into();
        old["columns"] = serde_json::json!(["id", "name"]);
        old.as_object_mut().unwrap().remove("primary_key");
        std::fs::write(
            d.join(format!("full.csv{SUFFIX}")),
            serde_json::to_string(&old).unwrap(),
        )
        .unwrap();
        assert!(problems(d).is_empty(), "{:?}", problems(d));
        let read = &chains(d).unwrap()[&("c".to_string(), "t".to_string())][0].1;
        assert_eq!(read.column_names(), ["id", "name"]);
        assert_eq!(read.columns[0].sql_type, None);

        // Typed columns read back as written.
        let mut typed = m.clone();
        typed.columns[0] = serde_json::from_str(
            r#"{"name":"id","type":"bigint","kind":"integer","nullable":false}"#,
        )
        .unwrap();
        write_manifest(d, &typed);
        let read = &chains(d).unwrap()[&("c".to_string(), "t".to_string())][0].1;
        assert_eq!(read.columns[0].sql_type.as_deref(), Some("bigint"));
        assert!(problems(d).is_empty(), "{:?}", problems(d));
    }
}
