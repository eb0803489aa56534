//! Replaying a consumer's export files as the guarantee describes (the full export, then each
//! delta or incremental export in chain order, INSERT and UPDATE applied as upserts by primary
//! key, DELETE as removal) and reading the live table the same way, to compare the two. Used by
//! the demo and the tests; it holds both images in memory, so it is for checking, not exporting.
//! It reads every format (CSV, JSON Lines, Parquet). Both images hold each value as the
//! canonical text of its typed [`Value`] (floats in one form whatever the database printed),
//! so that a file of any format compares with the table value by value.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use crate::capture::Mode;
use crate::db::portable::{ColumnType, PortableKind};
use crate::db::{ClockNeed, Database, RowSink, SnapshotOptions};
use crate::error::{Error, Result};
use crate::format::csv::reader;
use crate::format::{jsonl, FileFormat};
use crate::ident::{ConsumerId, Ident, TableName};
use crate::state::StateStore;
use crate::value::Value;

use super::manifest::Manifest;

/// The text a value is compared by: the canonical text of the value `text` parses to as a
/// `kind` (the text itself when it does not parse); NULL and "" both as "".
fn normal(kind: PortableKind, text: Option<&str>) -> String {
    match Value::parse(kind, text) {
        Ok(v) => v.to_text().unwrap_or_default(),
        Err(_) => text.unwrap_or_default().to_string(),
    }
}

fn normal_value(v: &Value) -> String {
    v.to_text().unwrap_or_default()
}

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
        for mut fields in read_rows(&path, m)? {
            let op = if m.mode == Mode::Delta && !fields.is_empty() {
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

/// The rows of one export file, each value as [`normal`] text, in file order.
pub fn read_rows(path: &Path, m: &Manifest) -> Result<Vec<Vec<String>>> {
    let bad = |e: &dyn std::fmt::Display| Error::Verify(format!("{}: {e}", path.display()));
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let kinds: Vec<PortableKind> = m.columns.iter().map(|c| c.kind).collect();
    let mut out = Vec::new();
    match m.file_format {
        FileFormat::Csv => {
            let mut rdr = reader(BufReader::new(file));
            for rec in rdr.records() {
                let rec = rec.map_err(|e| bad(&e))?;
                out.push(
                    rec.iter()
                        .enumerate()
                        .map(|(i, f)| normal(kind_at(&kinds, i), Some(f)))
                        .collect(),
                );
            }
        }
        FileFormat::Jsonl => {
            use std::io::BufRead;
            for line in BufReader::new(file).lines() {
                let line = line.map_err(|e| bad(&e))?;
                let obj: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&line).map_err(|e| bad(&e))?;
                let mut row = Vec::with_capacity(m.columns.len());
                for c in &m.columns {
                    let j = obj.get(&c.name).unwrap_or(&serde_json::Value::Null);
                    let v = jsonl::read_value(c.kind, j).ok_or_else(|| {
                        bad(&format!("column {:?}: {j} is not a {:?}", c.name, c.kind))
                    })?;
                    row.push(normal_value(&v));
                }
                out.push(row);
            }
        }
        FileFormat::Parquet => {
            use parquet::file::reader::{FileReader, SerializedFileReader};
            let reader = SerializedFileReader::new(file).map_err(|e| bad(&e))?;
            for row in reader.get_row_iter(None).map_err(|e| bad(&e))? {
                let row = row.map_err(|e| bad(&e))?;
                let mut values = Vec::with_capacity(m.columns.len());
                for ((_, field), c) in row.get_column_iter().zip(&m.columns) {
                    let v = parquet_value(c, field).ok_or_else(|| {
                        bad(&format!("column {:?}: unexpected {field:?}", c.name))
                    })?;
                    values.push(normal_value(&v));
                }
                out.push(values);
            }
        }
    }
    Ok(out)
}

fn kind_at(kinds: &[PortableKind], i: usize) -> PortableKind {
    kinds.get(i).copied().unwrap_or(PortableKind::Text)
}

/// A Parquet field of column `c` as a [`Value`] (the inverse of the Parquet encoder).
pub fn parquet_value(c: &ColumnType, f: &parquet::record::Field) -> Option<Value> {
    use parquet::record::Field as F;
    Some(match f {
        F::Null => Value::Null,
        F::Bool(b) => Value::Bool(*b),
        F::Long(i) => Value::Int(*i),
        F::Double(d) => Value::Float(*d),
        F::Date(d) => Value::Date(*d),
        F::TimestampMicros(t) => Value::Timestamp(*t),
        F::Str(s) if c.kind == PortableKind::Time => Value::Time(s.clone()),
        F::Str(s) => Value::Text(s.clone()),
        F::Bytes(b) => Value::Bytes(b.data().to_vec()),
        F::Decimal(d) => {
            let bytes = d.data();
            let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
            let mut buf = [if negative { 0xff } else { 0 }; 16];
            let start = 16usize.checked_sub(bytes.len())?;
            buf.get_mut(start..)?.copy_from_slice(bytes);
            Value::Decimal(decimal_text(i128::from_be_bytes(buf), d.scale()))
        }
        _ => return None,
    })
}

/// `unscaled` × 10^−`scale` as decimal text with exactly `scale` fractional digits.
pub fn decimal_text(unscaled: i128, scale: i32) -> String {
    let digits = unscaled.unsigned_abs().to_string();
    let scale = usize::try_from(scale).unwrap_or(0);
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

struct Collect {
    columns: Vec<String>,
    kinds: Vec<PortableKind>,
    key: Vec<Ident>,
    image: Image,
    error: Option<Error>,
}

impl Collect {
    fn add(&mut self, row: Vec<Option<String>>) {
        let row: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, f)| normal(kind_at(&self.kinds, i), f.as_deref()))
            .collect();
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
        self.add(fields.iter().map(|f| f.map(str::to_string)).collect());
        Ok(())
    }

    fn write_csv_record(&mut self, record: &[u8]) -> std::io::Result<()> {
        self.add(crate::format::csv::parse_csv_record(record)?);
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
        kinds: super::column_types(db.kind(), &info, &select.header)
            .iter()
            .map(|c| c.kind)
            .collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_texts() {
        assert_eq!(decimal_text(150, 2), "1.50");
        assert_eq!(decimal_text(-1, 3), "-0.001");
        assert_eq!(decimal_text(0, 0), "0");
        assert_eq!(
            decimal_text(i128::from(u64::MAX), 0),
            "18446744073709551615"
        );
    }

    #[test]
    fn normal_forms_agree() {
        assert_eq!(normal(PortableKind::Float, Some("1.0e-300")), "1e-300");
        assert_eq!(normal(PortableKind::Float, Some("1e-300")), "1e-300");
        assert_eq!(normal(PortableKind::Integer, None), "");
        assert_eq!(normal(PortableKind::Integer, Some("x")), "x");
    }
}
