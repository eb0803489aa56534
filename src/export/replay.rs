//! Replaying a consumer's export files as the guarantee describes (the full export, then each
//! delta or incremental export in chain order, INSERT and UPDATE applied as upserts by primary
//! key, DELETE as removal) and reading the live table the same way, to compare the two. Used by
//! the demo and the tests; it holds both images in memory, so it is for checking, not exporting.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use crate::capture::Mode;
use crate::db::{ClockNeed, Database, RowSink, SnapshotOptions};
use crate::error::{Error, Result};
use crate::ident::{ConsumerId, Ident, TableName};
use crate::sink::csv::reader;
use crate::state::StateStore;

/// Rows keyed by their primary key, each as its column texts (NULL and "" both read as "").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    pub columns: Vec<String>,
    pub rows: BTreeMap<Vec<String>, Vec<String>>,
}

fn key_of(columns: &[String], key: &[Ident], row: &[String]) -> Result<Vec<String>> {
    key.iter()
        .map(|k| {
            columns
                .iter()
                .position(|c| c == k.as_str())
                .and_then(|i| row.get(i).cloned())
                .ok_or_else(|| Error::Verify(format!("primary key column {k} is not exported")))
        })
        .collect()
}

/// Replays the exports of (consumer, table) found in `dir`; `key` is the table's primary key.
pub fn replay(
    dir: &Path,
    consumer: &ConsumerId,
    table: &TableName,
    key: &[Ident],
) -> Result<Image> {
    let chains = super::manifest::chains(dir)?;
    let chain = chains
        .get(&(consumer.to_string(), table.to_string()))
        .ok_or_else(|| {
            Error::Verify(format!(
                "no exports of {consumer} for {table} in {}",
                dir.display()
            ))
        })?;
    let mut image = Image::default();
    for (_, m) in chain {
        let path = dir.join(&m.file);
        let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        let mut rdr = reader(BufReader::new(file));
        let names = m.column_names();
        let data_columns: Vec<String> = if m.mode == Mode::Delta {
            names.get(1..).unwrap_or_default().to_vec()
        } else {
            names
        };
        if m.mode == Mode::Full {
            image.rows.clear();
        }
        image.columns = data_columns.clone();
        for rec in rdr.records() {
            let rec = rec.map_err(|e| Error::Verify(format!("{}: {e}", path.display())))?;
            let mut fields: Vec<String> = rec.iter().map(str::to_string).collect();
            let op = if m.mode == Mode::Delta {
                fields.remove(0)
            } else {
                "UPSERT".to_string()
            };
            let k = key_of(&data_columns, key, &fields)?;
            if op == "DELETE" {
                image.rows.remove(&k);
            } else {
                image.rows.insert(k, fields);
            }
        }
    }
    Ok(image)
}

struct Collect {
    columns: Vec<String>,
    key: Vec<Ident>,
    image: Image,
    error: Option<Error>,
}

impl Collect {
    fn add(&mut self, row: Vec<String>) {
        match key_of(&self.columns, &self.key, &row) {
            Ok(k) => {
                self.image.rows.insert(k, row);
            }
            Err(e) => self.error = Some(e),
        }
    }
}

impl RowSink for Collect {
    fn write_fields(&mut self, fields: &[Option<&str>]) -> std::io::Result<()> {
        self.add(fields.iter().map(|f| f.unwrap_or("").to_string()).collect());
        Ok(())
    }

    fn write_csv_record(&mut self, record: &[u8]) -> std::io::Result<()> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(record);
        for rec in rdr.records() {
            let rec = rec.map_err(std::io::Error::other)?;
            self.add(rec.iter().map(str::to_string).collect());
        }
        Ok(())
    }
}

/// Reads the live rows of `table` now, rendered exactly as a full export renders them.
pub async fn table_image(
    db: &dyn Database,
    state: &StateStore,
    table: &TableName,
) -> Result<Image> {
    let (info, select) = super::full_select(db, state, table).await?;
    let mut snapshot = db
        .snapshot(&SnapshotOptions::new(
            std::time::Duration::ZERO,
            ClockNeed::UnlessTxidsOrLogIds,
        ))
        .await?;
    let mut sink = Collect {
        columns: select.header.clone(),
        key: info.primary_key.clone(),
        image: Image {
            columns: select.header.clone(),
            rows: BTreeMap::new(),
        },
        error: None,
    };
    snapshot.stream(&select.sql, &mut sink).await?;
    snapshot.finish().await?;
    match sink.error {
        Some(e) => Err(e),
        None => Ok(sink.image),
    }
}

/// Describes how two images differ (empty when equal), at most `limit` lines.
pub fn differences(expected: &Image, got: &Image, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    if expected.columns != got.columns {
        out.push(format!(
            "columns {:?} vs {:?}",
            expected.columns, got.columns
        ));
    }
    for (k, row) in &expected.rows {
        match got.rows.get(k) {
            None => out.push(format!("missing row {k:?}")),
            Some(r) if r != row => out.push(format!("row {k:?}: {row:?} vs {r:?}")),
            _ => {}
        }
    }
    for k in got.rows.keys() {
        if !expected.rows.contains_key(k) {
            out.push(format!("extra row {k:?}"));
        }
    }
    out.truncate(limit);
    out
}
