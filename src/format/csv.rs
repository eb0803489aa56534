//! The CSV format. The csv crate cannot tell NULL from an empty string when writing, and the
//! product needs that difference (NULL: empty unquoted; empty string: `""`), so fields are
//! encoded here; reading uses the csv crate. Records end with CRLF as RFC 4180 says.
//!
//! Fields are the canonical text of their kind (`PortableKind`), which is what the databases
//! render, so the CSV encoder takes text as it comes ([`Encoder::takes_text`]): PostgreSQL's
//! COPY records pass through with only their terminator changed (the fast path), and no value
//! is ever parsed.

use std::io::{self, Write};

use super::Encoder;
use crate::value::Value;

/// Line terminator of every record.
pub const TERMINATOR: &[u8] = b"\r\n";

/// True when a (non-NULL) field must be quoted: it is empty or holds a comma, quote, CR or LF.
pub fn needs_quotes(field: &str) -> bool {
    field.is_empty()
        || field
            .bytes()
            .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
}

/// Writes one field (no separator).
pub fn encode_field(out: &mut impl Write, field: Option<&str>) -> io::Result<()> {
    match field {
        None => Ok(()),
        Some(f) if !needs_quotes(f) => out.write_all(f.as_bytes()),
        Some(f) => {
            out.write_all(b"\"")?;
            let mut rest = f;
            while let Some(i) = rest.find('"') {
                out.write_all(&rest.as_bytes()[..=i])?;
                out.write_all(b"\"")?;
                rest = &rest[i + 1..];
            }
            out.write_all(rest.as_bytes())?;
            out.write_all(b"\"")
        }
    }
}

/// Writes one record with its terminator.
pub fn encode_record<'a>(
    out: &mut impl Write,
    fields: impl IntoIterator<Item = Option<&'a str>>,
) -> io::Result<()> {
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        encode_field(out, f)?;
    }
    out.write_all(TERMINATOR)
}

/// Writes a record that PostgreSQL's COPY (FORMAT csv) produced, whose quoting rules are the
/// same as [`encode_record`]'s, replacing its LF terminator with CRLF.
pub fn write_copy_record(out: &mut impl Write, record: &[u8]) -> io::Result<()> {
    let body = record.strip_suffix(b"\n").unwrap_or(record);
    out.write_all(body)?;
    out.write_all(TERMINATOR)
}

/// Encodes rows into any writer: the [`Encoder`] of CSV exports.
pub struct CsvEncoder<W: Write> {
    out: W,
}

impl<W: Write> CsvEncoder<W> {
    /// Starts a CSV stream with its header row.
    pub fn new(mut out: W, header: &[&str]) -> io::Result<Self> {
        encode_record(&mut out, header.iter().map(|h| Some(*h)))?;
        Ok(CsvEncoder { out })
    }
}

impl<W: Write + Send> Encoder<W> for CsvEncoder<W> {
    fn takes_text(&self) -> bool {
        true
    }

    fn write_row(&mut self, row: &[Value]) -> io::Result<()> {
        let texts: Vec<Option<String>> = row.iter().map(Value::to_text).collect();
        encode_record(&mut self.out, texts.iter().map(Option::as_deref))
    }

    fn write_text(&mut self, fields: &[Option<&str>]) -> io::Result<()> {
        encode_record(&mut self.out, fields.iter().copied())
    }

    fn write_copy_record(&mut self, record: &[u8]) -> io::Result<()> {
        write_copy_record(&mut self.out, record)
    }

    fn finish(self: Box<Self>) -> io::Result<W> {
        Ok(self.out)
    }
}

/// Reads one CSV record as PostgreSQL's COPY and [`encode_record`] write it: an unquoted empty
/// field is NULL, a quoted one (`""`) the empty string.
pub fn parse_csv_record(rec: &[u8]) -> io::Result<Vec<Option<String>>> {
    let bad = |why: &str| io::Error::other(format!("malformed CSV record: {why}"));
    let text = |b: Vec<u8>| String::from_utf8(b).map_err(|_| bad("not UTF-8"));
    let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
    let rec = rec.strip_suffix(b"\r").unwrap_or(rec);
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        if rec.get(i) == Some(&b'"') {
            let mut buf = Vec::new();
            i += 1;
            loop {
                match rec.get(i) {
                    None => return Err(bad("unterminated quote")),
                    Some(b'"') if rec.get(i + 1) == Some(&b'"') => {
                        buf.push(b'"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        buf.push(c);
                        i += 1;
                    }
                }
            }
            out.push(Some(text(buf)?));
            match rec.get(i) {
                None => break,
                Some(b',') => i += 1,
                Some(_) => return Err(bad("text after a closing quote")),
            }
        } else {
            let rest = rec.get(i..).unwrap_or_default();
            let end = rest.iter().position(|&c| c == b',').unwrap_or(rest.len());
            let field = rest.get(..end).unwrap_or_default();
            out.push(
                (!field.is_empty())
                    .then(|| text(field.to_vec()))
                    .transpose()?,
            );
            if end == rest.len() {
                break;
            }
            i += end + 1;
        }
    }
    Ok(out)
}

/// A reader of tidemark's CSV files (header row included).
pub fn reader<R: io::Read>(r: R) -> ::csv::Reader<R> {
    ::csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(fields: &[Option<&str>]) -> String {
        let mut v = Vec::new();
        encode_record(&mut v, fields.iter().copied()).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn quoting_rules() {
        assert_eq!(
            record(&[Some("a"), None, Some(""), Some("x,y"), Some("say \"hi\"")]),
            "a,,\"\",\"x,y\",\"say \"\"hi\"\"\"\r\n"
        );
        assert_eq!(record(&[Some("line\nbreak")]), "\"line\nbreak\"\r\n");
        assert_eq!(record(&[Some(" padded ")]), " padded \r\n");
    }

    #[test]
    fn parses_copy_records() {
        assert_eq!(
            parse_csv_record(b"UPDATE,1,,\"\",\"a,\"\"b\"\"\nc\"\n").unwrap(),
            vec![
                Some("UPDATE".to_string()),
                Some("1".into()),
                None,
                Some(String::new()),
                Some("a,\"b\"\nc".into())
            ]
        );
        assert_eq!(
            parse_csv_record(b"x,").unwrap(),
            vec![Some("x".into()), None]
        );
        assert!(parse_csv_record(b"\"open").is_err());
        assert!(parse_csv_record(b"\"a\"b").is_err());
    }

    #[test]
    fn copy_records_get_crlf() {
        let mut v = Vec::new();
        write_copy_record(&mut v, b"1,\"a\nb\",\n").unwrap();
        assert_eq!(v, b"1,\"a\nb\",\r\n");
    }

    proptest! {
        /// Whatever the field text, a standard CSV reader gets the same fields back.
        #[test]
        fn round_trips_through_a_csv_reader(
            fields in proptest::collection::vec(proptest::option::of("\\PC*|[,\"\r\n a]{0,6}"), 1..6)
        ) {
            // A one-column record holding only NULL would be an empty line, which readers skip.
            prop_assume!(!(fields.len() == 1 && fields[0].is_none()));
            let refs: Vec<Option<&str>> = fields.iter().map(|f| f.as_deref()).collect();
            let header: Vec<String> = (0..fields.len()).map(|i| format!("c{i}")).collect();
            let mut text = Vec::new();
            encode_record(&mut text, header.iter().map(|h| Some(h.as_str()))).unwrap();
            encode_record(&mut text, refs.iter().copied()).unwrap();
            let mut rdr = reader(text.as_slice());
            let got: Vec<::csv::StringRecord> = rdr.records().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(got.len(), 1);
            let want: Vec<&str> = refs.iter().map(|f| f.unwrap_or("")).collect();
            prop_assert_eq!(got[0].iter().collect::<Vec<_>>(), want);
        }
    }
}
