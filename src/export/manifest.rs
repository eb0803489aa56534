//! Manifests (`….csv.manifest.json` beside every export file) and `tidemark verify`: the
//! manifests of one consumer and table form a chain — each one's `watermark_before` is the
//! previous one's `watermark_after` — and each names the SHA-256, size and row count of its CSV.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::capture::Mode;
use crate::db::Timestamp;
use crate::error::{Error, Result};
use crate::sink::csv::reader;
use crate::state::Position;

/// Suffix of manifest files.
pub const SUFFIX: &str = ".manifest.json";

/// The manifest of one export file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub export_id: String,
    pub consumer: String,
    pub table: String,
    pub mode: Mode,
    /// The CSV's file name, in the manifest's directory.
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    pub columns: Vec<String>,
    pub watermark_before: Option<Position>,
    pub watermark_after: Position,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub source: String,
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

fn check_file(dir: &Path, m: &Manifest) -> std::result::Result<(), String> {
    if m.file.contains('/') || m.file.contains('\\') || m.file.starts_with('.') {
        return Err(format!("file name {:?} is not a plain name", m.file));
    }
    let path = dir.join(&m.file);
    let file = File::open(&path).map_err(|e| format!("{}: {e}", m.file))?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf).map_err(|e| format!("{}: {e}", m.file))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let sha = hex::encode(hasher.finalize());
    if sha != m.sha256 {
        return Err(format!(
            "{}: sha256 is {sha}, the manifest says {}",
            m.file, m.sha256
        ));
    }
    if bytes != m.bytes {
        return Err(format!(
            "{}: {bytes} bytes, the manifest says {}",
            m.file, m.bytes
        ));
    }
    let file = File::open(&path).map_err(|e| format!("{}: {e}", m.file))?;
    let mut rdr = reader(BufReader::new(file));
    let header: Vec<String> = rdr
        .headers()
        .map_err(|e| format!("{}: {e}", m.file))?
        .iter()
        .map(str::to_string)
        .collect();
    if header != m.columns {
        return Err(format!(
            "{}: header {header:?} differs from the manifest's columns {:?}",
            m.file, m.columns
        ));
    }
    let mut record = csv::ByteRecord::new();
    let mut rows = 0u64;
    while rdr
        .read_byte_record(&mut record)
        .map_err(|e| format!("{}: {e}", m.file))?
    {
        rows += 1;
    }
    if rows != m.rows {
        return Err(format!(
            "{}: {rows} rows, the manifest says {}",
            m.file, m.rows
        ));
    }
    Ok(())
}
