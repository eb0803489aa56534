//! Apache Parquet with typed columns, written with the `parquet` crate's column writers (no
//! Arrow: rows are buffered per column and written as a row group every [`ROW_GROUP_ROWS`]
//! rows or [`ROW_GROUP_BYTES`] of buffered values, so memory stays bounded whatever the table's
//! size). Snappy-compressed pages.
//!
//! Types, by the column's portable kind: integers `INT64`; floats `DOUBLE`; decimals with a
//! precision of at most 38 digits `DECIMAL(p,s)` stored as a 16-byte `FIXED_LEN_BYTE_ARRAY`
//! (Decimal128); booleans `BOOLEAN`; timestamps `INT64 TIMESTAMP(MICROS, UTC)`; dates
//! `INT32 DATE`; text, times (a MariaDB `TIME` is a duration, so no time type fits both
//! databases) and every type without a portable counterpart `BYTE_ARRAY STRING`; bytes
//! `BYTE_ARRAY`. A column is `OPTIONAL` when the catalog lets it hold NULL, `REQUIRED`
//! otherwise.
//!
//! What Parquet cannot hold is refused before anything is read ([`check`]): a decimal column
//! without an enforced precision (PostgreSQL `numeric` without `(p,s)`; every SQLite
//! `NUMERIC`/`DECIMAL`, since SQLite enforces no declared precision: its values may have any
//! number of digits) or with more than 38 digits. A value that does not fit its column (a
//! decimal NaN, more fractional digits than the scale, text in a SQLite integer column) stops
//! the export with an error naming the column, and nothing is published.

use std::io::{self, Write};
use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Repetition, TimeUnit, Type as Physical};
use parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, DoubleType, FixedLenByteArray, FixedLenByteArrayType,
    Int32Type, Int64Type,
};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

use super::{invalid, Encoder};
use crate::db::portable::{ColumnType, PortableKind};
use crate::error::{Error, Result};
use crate::value::Value;

/// Rows buffered before a row group is written.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Bytes of buffered values (about) before a row group is written.
pub const ROW_GROUP_BYTES: usize = 64 << 20;
/// The widest decimal a 16-byte Parquet decimal holds.
pub const MAX_PRECISION: u32 = 38;

/// Checks that every column has a Parquet type (see the module docs).
pub fn check(columns: &[ColumnType]) -> Result<()> {
    for c in columns {
        if c.kind != PortableKind::Decimal {
            continue;
        }
        let shown = c.sql_type.as_deref().unwrap_or("decimal");
        match (c.precision, c.scale) {
            (None, _) => {
                return Err(Error::input(format!(
                    "column {:?} of type {shown} cannot be written as Parquet: a decimal \
                     without a precision the database enforces (PostgreSQL numeric without \
                     (p,s), any SQLite NUMERIC) may hold any number of digits, and a Parquet \
                     DECIMAL needs a fixed precision; export it as csv or jsonl (exact digits), \
                     or declare a precision of at most {MAX_PRECISION} digits on a server database",
                    c.name
                )))
            }
            (Some(p), s) if p > MAX_PRECISION || s.unwrap_or(0) > p => {
                return Err(Error::input(format!(
                    "column {:?} of type {shown} cannot be written as Parquet: its {p} digits \
                     exceed the {MAX_PRECISION} of a Parquet DECIMAL; export it as csv or jsonl",
                    c.name
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The Parquet schema of `columns` (checked by [`check`]).
pub fn schema(columns: &[ColumnType]) -> Result<Type> {
    let mut fields = Vec::with_capacity(columns.len());
    for c in columns {
        let (physical, logical) = match c.kind {
            PortableKind::Integer => (Physical::INT64, None),
            PortableKind::Float => (Physical::DOUBLE, None),
            PortableKind::Decimal => (
                Physical::FIXED_LEN_BYTE_ARRAY,
                Some(LogicalType::decimal(
                    c.scale.unwrap_or(0) as i32,
                    c.precision.unwrap_or(MAX_PRECISION) as i32,
                )),
            ),
            PortableKind::Boolean => (Physical::BOOLEAN, None),
            PortableKind::Timestamp => (
                Physical::INT64,
                Some(LogicalType::timestamp(true, TimeUnit::MICROS)),
            ),
            PortableKind::Date => (Physical::INT32, Some(LogicalType::Date)),
            PortableKind::Time | PortableKind::Text => {
                (Physical::BYTE_ARRAY, Some(LogicalType::String))
            }
            PortableKind::Bytes => (Physical::BYTE_ARRAY, None),
        };
        let mut b = Type::primitive_type_builder(&c.name, physical)
            .with_repetition(if c.nullable {
                Repetition::OPTIONAL
            } else {
                Repetition::REQUIRED
            })
            .with_logical_type(logical);
        if c.kind == PortableKind::Decimal {
            b = b
                .with_length(16)
                .with_precision(c.precision.unwrap_or(MAX_PRECISION) as i32)
                .with_scale(c.scale.unwrap_or(0) as i32);
        }
        let field = b
            .build()
            .map_err(|e| Error::input(format!("column {:?}: no Parquet type: {e}", c.name)))?;
        fields.push(Arc::new(field));
    }
    Type::group_type_builder("schema")
        .with_fields(fields)
        .build()
        .map_err(|e| Error::Runtime(format!("cannot build the Parquet schema: {e}")))
}

/// The buffered values of one column.
enum Values {
    I64(Vec<i64>),
    I32(Vec<i32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    Bytes(Vec<ByteArray>),
    Fixed(Vec<FixedLenByteArray>),
}

struct Column {
    name: String,
    kind: PortableKind,
    scale: u32,
    nullable: bool,
    values: Values,
    /// Definition levels (1: a value, 0: NULL) of an OPTIONAL column.
    levels: Vec<i16>,
}

/// The [`Encoder`] of Parquet files.
pub struct ParquetEncoder<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    columns: Vec<Column>,
    rows: usize,
    bytes: usize,
}

impl<W: Write + Send> ParquetEncoder<W> {
    /// Starts a Parquet file of `columns` (checked by [`check`]) in `out`.
    pub fn new(out: W, columns: &[ColumnType]) -> Result<Self> {
        check(columns)?;
        let schema = Arc::new(schema(columns)?);
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("tidemark {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = SerializedFileWriter::new(out, schema, Arc::new(props))
            .map_err(|e| Error::Runtime(format!("cannot start the Parquet file: {e}")))?;
        let columns = columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                kind: c.kind,
                scale: c.scale.unwrap_or(0),
                nullable: c.nullable,
                values: match c.kind {
                    PortableKind::Integer | PortableKind::Timestamp => Values::I64(Vec::new()),
                    PortableKind::Date => Values::I32(Vec::new()),
                    PortableKind::Float => Values::F64(Vec::new()),
                    PortableKind::Boolean => Values::Bool(Vec::new()),
                    PortableKind::Decimal => Values::Fixed(Vec::new()),
                    PortableKind::Time | PortableKind::Text | PortableKind::Bytes => {
                        Values::Bytes(Vec::new())
                    }
                },
                levels: Vec::new(),
            })
            .collect();
        Ok(ParquetEncoder {
            writer,
            columns,
            rows: 0,
            bytes: 0,
        })
    }

    /// Writes the buffered rows as one row group.
    fn flush_group(&mut self) -> io::Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let pq = |e: parquet::errors::ParquetError| io::Error::other(e.to_string());
        let mut group = self.writer.next_row_group().map_err(pq)?;
        for c in &mut self.columns {
            let mut w = group
                .next_column()
                .map_err(pq)?
                .ok_or_else(|| io::Error::other("the Parquet schema has fewer columns"))?;
            let levels = c.nullable.then_some(c.levels.as_slice());
            match &c.values {
                Values::I64(v) => w.typed::<Int64Type>().write_batch(v, levels, None),
                Values::I32(v) => w.typed::<Int32Type>().write_batch(v, levels, None),
                Values::F64(v) => w.typed::<DoubleType>().write_batch(v, levels, None),
                Values::Bool(v) => w.typed::<BoolType>().write_batch(v, levels, None),
                Values::Bytes(v) => w.typed::<ByteArrayType>().write_batch(v, levels, None),
                Values::Fixed(v) => w
                    .typed::<FixedLenByteArrayType>()
                    .write_batch(v, levels, None),
            }
            .map_err(pq)?;
            w.close().map_err(pq)?;
            c.levels.clear();
            match &mut c.values {
                Values::I64(v) => v.clear(),
                Values::I32(v) => v.clear(),
                Values::F64(v) => v.clear(),
                Values::Bool(v) => v.clear(),
                Values::Bytes(v) => v.clear(),
                Values::Fixed(v) => v.clear(),
            }
        }
        group.close().map_err(pq)?;
        self.rows = 0;
        self.bytes = 0;
        Ok(())
    }
}

/// One value converted for its column, before it is buffered.
enum Cell {
    Null,
    I64(i64),
    I32(i32),
    F64(f64),
    Bool(bool),
    Bytes(ByteArray),
    Fixed(FixedLenByteArray),
}

impl Column {
    /// Converts one value for this column; an error names the column and the value.
    fn convert(&self, v: &Value) -> io::Result<Cell> {
        let misfit = || {
            invalid(
                &self.name,
                format!(
                    "value {:?} does not fit a Parquet column of kind {:?}",
                    v.to_text().unwrap_or_default(),
                    self.kind
                ),
            )
        };
        Ok(match (&self.values, v) {
            (_, Value::Null) if self.nullable => Cell::Null,
            (_, Value::Null) => {
                return Err(invalid(
                    &self.name,
                    "NULL in a column the catalog declares NOT NULL",
                ))
            }
            (Values::I64(_), Value::Int(i)) if self.kind == PortableKind::Integer => Cell::I64(*i),
            (Values::I64(_), Value::Timestamp(t)) if self.kind == PortableKind::Timestamp => {
                Cell::I64(*t)
            }
            (Values::I32(_), Value::Date(d)) => Cell::I32(*d),
            (Values::F64(_), Value::Float(f)) => Cell::F64(*f),
            (Values::Bool(_), Value::Bool(b)) => Cell::Bool(*b),
            (Values::Fixed(_), Value::Decimal(d)) => {
                let n = unscaled(d, self.scale).ok_or_else(misfit)?;
                Cell::Fixed(FixedLenByteArray::from(n.to_be_bytes().to_vec()))
            }
            (Values::Bytes(_), Value::Text(s) | Value::Time(s))
                if self.kind != PortableKind::Bytes =>
            {
                Cell::Bytes(ByteArray::from(s.as_bytes().to_vec()))
            }
            (Values::Bytes(_), Value::Bytes(b)) if self.kind == PortableKind::Bytes => {
                Cell::Bytes(ByteArray::from(b.clone()))
            }
            _ => return Err(misfit()),
        })
    }

    /// Buffers one converted value; returns about the bytes it takes.
    fn push(&mut self, cell: Cell) -> usize {
        if self.nullable {
            self.levels
                .push(if matches!(cell, Cell::Null) { 0 } else { 1 });
        }
        match (&mut self.values, cell) {
            (_, Cell::Null) => 2,
            (Values::I64(out), Cell::I64(v)) => {
                out.push(v);
                8
            }
            (Values::I32(out), Cell::I32(v)) => {
                out.push(v);
                4
            }
            (Values::F64(out), Cell::F64(v)) => {
                out.push(v);
                8
            }
            (Values::Bool(out), Cell::Bool(v)) => {
                out.push(v);
                1
            }
            (Values::Bytes(out), Cell::Bytes(v)) => {
                let n = v.len() + 4;
                out.push(v);
                n
            }
            (Values::Fixed(out), Cell::Fixed(v)) => {
                out.push(v);
                16
            }
            // `convert` made the cell for this column's buffer.
            _ => 0,
        }
    }
}

impl<W: Write + Send> Encoder<W> for ParquetEncoder<W> {
    fn write_row(&mut self, row: &[Value]) -> io::Result<()> {
        if row.len() != self.columns.len() {
            return Err(io::Error::other(format!(
                "a row of {} values for {} columns",
                row.len(),
                self.columns.len()
            )));
        }
        // Convert the whole row before buffering any of it, so that a refused value leaves
        // the columns aligned.
        let cells = self
            .columns
            .iter()
            .zip(row)
            .map(|(c, v)| c.convert(v))
            .collect::<io::Result<Vec<Cell>>>()?;
        for (c, cell) in self.columns.iter_mut().zip(cells) {
            self.bytes += c.push(cell);
        }
        self.rows += 1;
        if self.rows >= ROW_GROUP_ROWS || self.bytes >= ROW_GROUP_BYTES {
            self.flush_group()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> io::Result<W> {
        self.flush_group()?;
        self.writer
            .into_inner()
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

/// The decimal `text` as an integer of `scale` fractional digits (`1.5` at scale 2: 150);
/// `None` when it has more (non-zero) fractional digits, is not finite, or exceeds 38 digits.
pub fn unscaled(text: &str, scale: u32) -> Option<i128> {
    let (negative, s) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if !(int.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit())
        || (int.len() + frac.len()) == 0
    {
        return None;
    }
    // digits × 10^shift, where shift = exponent − fraction digits + scale.
    let shift = i64::from(exponent) - frac.len() as i64 + i64::from(scale);
    let mut digits: String = int.chars().chain(frac.chars()).collect();
    if shift < 0 {
        let drop = usize::try_from(-shift).ok()?;
        let keep = digits.len().saturating_sub(drop);
        if digits.get(keep..)?.bytes().any(|b| b != b'0') {
            return None;
        }
        digits.truncate(keep);
    }
    let mut v: i128 = 0;
    for b in digits.bytes() {
        v = v.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    if shift > 0 {
        v = v.checked_mul(10i128.checked_pow(u32::try_from(shift).ok()?)?)?;
    }
    if v >= 10i128.pow(MAX_PRECISION) {
        return None;
    }
    Some(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, kind: PortableKind, p: Option<u32>, s: Option<u32>) -> ColumnType {
        ColumnType {
            name: name.into(),
            sql_type: Some("numeric".into()),
            kind,
            precision: p,
            scale: s,
            length: None,
            fixed: false,
            nullable: true,
        }
    }

    #[test]
    fn decimals_scale_exactly() {
        assert_eq!(unscaled("1.5", 2), Some(150));
        assert_eq!(unscaled("-0.010", 2), Some(-1));
        assert_eq!(unscaled("12", 0), Some(12));
        assert_eq!(unscaled("1.5e2", 0), Some(150));
        assert_eq!(unscaled("1.25", 1), None);
        assert_eq!(unscaled("NaN", 1), None);
        assert_eq!(unscaled(&"9".repeat(38), 0), Some(10i128.pow(38) - 1));
        assert_eq!(unscaled(&"9".repeat(39), 0), None);
        assert_eq!(
            unscaled("18446744073709551615", 0),
            Some(18446744073709551615)
        );
    }

    #[test]
    fn refuses_what_it_cannot_hold() {
        let e = check(&[col("price", PortableKind::Decimal, None, None)]).unwrap_err();
        assert!(
            e.is_input_error() && e.to_string().contains("\"price\""),
            "{e}"
        );
        assert!(e.to_string().contains("numeric"), "{e}");
        assert!(check(&[col("w", PortableKind::Decimal, Some(39), Some(0))]).is_err());
        assert!(check(&[col("ok", PortableKind::Decimal, Some(38), Some(10))]).is_ok());
    }

    #[test]
    fn writes_a_readable_file_in_bounded_groups() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let columns = vec![
            col("n", PortableKind::Integer, None, None),
            col("d", PortableKind::Decimal, Some(10), Some(2)),
            col("t", PortableKind::Text, None, None),
        ];
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let mut enc = Box::new(ParquetEncoder::new(tmp.reopen().unwrap(), &columns).unwrap());
        for i in 0..(ROW_GROUP_ROWS as i64 + 5) {
            let t = if i % 2 == 0 {
                Value::Null
            } else {
                Value::Text(format!("r{i}"))
            };
            enc.write_row(&[Value::Int(i), Value::Decimal("1.50".into()), t])
                .unwrap();
        }
        let err = enc
            .write_row(&[Value::Int(1), Value::Decimal("1.555".into()), Value::Null])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        enc.finish().unwrap().flush().unwrap();
        let reader = SerializedFileReader::new(tmp.reopen().unwrap()).unwrap();
        let meta = reader.metadata();
        assert_eq!(meta.file_metadata().num_rows(), ROW_GROUP_ROWS as i64 + 5);
        assert_eq!(meta.num_row_groups(), 2);
    }
}
