//! Export file formats, separate from where files go ([`crate::sink`]) and from the databases
//! ([`crate::db`] never imports this module). One [`Encoder`] per format:
//! [`csv`] (RFC 4180 text), [`jsonl`] (one JSON object per row), [`parquet`] (typed columns).
//! The database layer streams rows as canonical text fields (or PostgreSQL COPY CSV records)
//! into a [`crate::db::RowSink`]; [`Rows`] is the sink that hands them to an encoder — as text
//! to an encoder that takes text (CSV: COPY records pass through, the fast path), as typed
//! [`Value`]s to the others.

pub mod csv;
pub mod jsonl;
pub mod parquet;

use std::fmt;
use std::io::{self, Write};

use crate::db::portable::{ColumnType, PortableKind};
use crate::db::RowSink;
use crate::error::{Error, Result};
use crate::value::Value;

/// The format of an export file.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    // Plain comments: doc comments would make clap print each value's help on its own lines.
    // RFC 4180 CSV with a header row.
    #[default]
    Csv,
    // JSON Lines: one JSON object per row.
    Jsonl,
    // Apache Parquet with typed columns.
    Parquet,
}

impl FileFormat {
    /// Every format.
    pub const ALL: [FileFormat; 3] = [FileFormat::Csv, FileFormat::Jsonl, FileFormat::Parquet];

    /// The file extension (without the dot), which is also the format's name.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Csv => "csv",
            FileFormat::Jsonl => "jsonl",
            FileFormat::Parquet => "parquet",
        }
    }

    /// The HTTP content type of files of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            FileFormat::Csv => "text/csv; charset=utf-8",
            FileFormat::Jsonl => "application/x-ndjson",
            FileFormat::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// The format of a file named `name`, by its extension.
    pub fn of_file(name: &str) -> Option<FileFormat> {
        let ext = name.rsplit_once('.')?.1;
        FileFormat::ALL.into_iter().find(|f| f.extension() == ext)
    }
}

impl fmt::Display for FileFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// Writes rows of one export into a writer.
///
/// Contract: the header (column names, schema) is written once, when the encoder is made or at
/// the latest by [`Encoder::finish`]; rows are written in the order they are given; `finish`
/// returns the writer only after everything (buffered rows, footers) has been written to it,
/// and the caller then flushes and publishes it. An encoder never opens a connection or a file
/// of its own. A value the format cannot hold is an error of kind
/// [`io::ErrorKind::InvalidData`] naming the column; other errors are the writer's.
pub trait Encoder<W: Write>: Send {
    /// True when the encoder takes each field's canonical text as it is
    /// ([`Encoder::write_text`], [`Encoder::write_copy_record`]) instead of typed values.
    fn takes_text(&self) -> bool {
        false
    }
    /// Writes one row of typed values, in column order.
    fn write_row(&mut self, row: &[Value]) -> io::Result<()>;
    /// Writes one row of canonical text fields (`None`: NULL); only called when
    /// [`Encoder::takes_text`].
    fn write_text(&mut self, _fields: &[Option<&str>]) -> io::Result<()> {
        Err(io::Error::other("this encoder takes typed values"))
    }
    /// Writes one PostgreSQL COPY CSV record; only called when [`Encoder::takes_text`].
    fn write_copy_record(&mut self, _record: &[u8]) -> io::Result<()> {
        Err(io::Error::other("this encoder takes typed values"))
    }
    /// Writes what is left and returns the writer.
    fn finish(self: Box<Self>) -> io::Result<W>;
}

/// Checks that `format` can represent every column before anything is read or written: an
/// error of input kind naming the first column and type it cannot hold.
pub fn check(format: FileFormat, columns: &[ColumnType]) -> Result<()> {
    match format {
        FileFormat::Parquet => parquet::check(columns),
        FileFormat::Csv | FileFormat::Jsonl => Ok(()),
    }
}

/// An encoder of `format` writing into `out` with `columns` (the header of the export).
pub fn encoder<W: Write + Send + 'static>(
    format: FileFormat,
    out: W,
    columns: &[ColumnType],
) -> Result<Box<dyn Encoder<W>>> {
    let header: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let io_err = |e: io::Error| Error::Runtime(format!("cannot start the {format} file: {e}"));
    Ok(match format {
        FileFormat::Csv => Box::new(csv::CsvEncoder::new(out, &header).map_err(io_err)?),
        FileFormat::Jsonl => Box::new(jsonl::JsonlEncoder::new(out, &header)),
        FileFormat::Parquet => Box::new(parquet::ParquetEncoder::new(out, columns)?),
    })
}

/// The [`RowSink`] of exports: hands the rows the database streams to an encoder, parsing
/// text into [`Value`]s by each column's kind unless the encoder takes text. A field that does
/// not parse as its kind (SQLite keeps any value in any column) goes on as [`Value::Text`]:
/// JSON Lines writes it as a string, Parquet refuses it. The first value an encoder refused is
/// kept ([`Rows::invalid`]) so that the export can report it as bad data rather than as a
/// failed write.
pub struct Rows<W: Write> {
    encoder: Box<dyn Encoder<W>>,
    kinds: Vec<PortableKind>,
    text: bool,
    row: Vec<Value>,
    invalid: Option<String>,
}

impl<W: Write> Rows<W> {
    /// A sink into `encoder` for rows of `columns`.
    pub fn new(encoder: Box<dyn Encoder<W>>, columns: &[ColumnType]) -> Self {
        Rows {
            text: encoder.takes_text(),
            encoder,
            kinds: columns.iter().map(|c| c.kind).collect(),
            row: Vec::with_capacity(columns.len()),
            invalid: None,
        }
    }

    /// Why the encoder refused a value, if it did.
    pub fn invalid(&self) -> Option<&str> {
        self.invalid.as_deref()
    }

    /// Finishes the encoder and returns the writer.
    pub fn finish(self) -> io::Result<W> {
        self.encoder.finish()
    }

    fn typed<'a>(&mut self, fields: impl Iterator<Item = Option<&'a str>>) -> io::Result<()> {
        self.row.clear();
        for (i, f) in fields.enumerate() {
            let kind = self.kinds.get(i).copied().unwrap_or(PortableKind::Text);
            let v = Value::parse(kind, f)
                .unwrap_or_else(|_| Value::Text(f.unwrap_or_default().to_string()));
            self.row.push(v);
        }
        let written = self.encoder.write_row(&self.row);
        if let Err(e) = &written {
            if e.kind() == io::ErrorKind::InvalidData {
                self.invalid = Some(e.to_string());
            }
        }
        written
    }
}

impl<W: Write + Send> RowSink for Rows<W> {
    fn write_fields(&mut self, fields: &[Option<&str>]) -> io::Result<()> {
        if self.text {
            return self.encoder.write_text(fields);
        }
        self.typed(fields.iter().copied())
    }

    fn write_csv_record(&mut self, record: &[u8]) -> io::Result<()> {
        if self.text {
            return self.encoder.write_copy_record(record);
        }
        let fields = csv::parse_csv_record(record)?;
        self.typed(fields.iter().map(Option::as_deref))
    }
}

/// An error of kind [`io::ErrorKind::InvalidData`]: a value of `column` the format cannot hold.
pub(crate) fn invalid(column: &str, why: impl fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("column {column:?}: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_extensions_and_types() {
        for f in FileFormat::ALL {
            assert_eq!(
                FileFormat::of_file(&format!("a.b.{}", f.extension())),
                Some(f)
            );
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(json, format!("\"{f}\""));
        }
        assert_eq!(FileFormat::of_file("x.csv.manifest.json"), None);
        assert_eq!(FileFormat::default(), FileFormat::Csv);
    }

    fn col(name: &str, kind: PortableKind) -> ColumnType {
        ColumnType {
            kind,
            nullable: true,
            ..ColumnType::untyped(name)
        }
    }

    #[test]
    fn rows_parse_text_for_typed_encoders_and_pass_it_to_csv() {
        let columns = [
            col("n", PortableKind::Integer),
            col("b", PortableKind::Bytes),
        ];
        // JSON Lines: typed; a value that is not of its kind goes on as a string.
        let mut rows = Rows::new(
            encoder(FileFormat::Jsonl, Vec::new(), &columns).unwrap(),
            &columns,
        );
        rows.write_fields(&[Some("9007199254740993"), Some("\\x00ff")])
            .unwrap();
        rows.write_csv_record(b"x,\n").unwrap();
        let text = String::from_utf8(rows.finish().unwrap()).unwrap();
        assert_eq!(
            text,
            "{\"n\":\"9007199254740993\",\"b\":\"AP8=\"}\n{\"n\":\"x\",\"b\":null}\n"
        );
        // CSV: COPY records pass through, CRLF-terminated.
        let mut rows = Rows::new(
            encoder(FileFormat::Csv, Vec::new(), &columns).unwrap(),
            &columns,
        );
        rows.write_csv_record(b"1,\"\"\n").unwrap();
        let text = String::from_utf8(rows.finish().unwrap()).unwrap();
        assert_eq!(text, "n,b\r\n1,\"\"\r\n");
        // Parquet refuses text in an integer column, and says which column.
        let mut rows = Rows::new(
            encoder(FileFormat::Parquet, Vec::new(), &columns).unwrap(),
            &columns,
        );
        let e = rows.write_fields(&[Some("x"), None]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(rows.invalid().is_some_and(|m| m.contains("\"n\"")), "{e}");
    }
}
