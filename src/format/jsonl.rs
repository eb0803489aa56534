//! JSON Lines: one JSON object per row, each ending in `\n`, its keys the column names in
//! order (`operation` first in delta exports). Integers are JSON numbers, those beyond ±2^53
//! (which a double-based reader would round) strings; floats are the shortest number that reads
//! back as the same double, `NaN`, `Infinity` and `-Infinity` strings; decimals are strings of
//! their exact digits; booleans and `null` are JSON's; timestamps, dates and times are strings
//! as in CSV; text is a string; bytes are a standard base64 string. A value that does not parse
//! as its column's kind (possible in SQLite) is written as the string the database gave.
//! There is no header line: the keys of every object are the header.

use std::io::{self, Write};

use base64::Engine as _;

use super::Encoder;
use crate::value::{self, Value};

/// The largest integer a JSON reader using doubles keeps exactly.
pub const MAX_EXACT: i64 = 1 << 53;

/// The [`Encoder`] of JSON Lines files.
pub struct JsonlEncoder<W: Write> {
    out: W,
    /// Each column's key, already JSON-encoded with its colon: `"name":`.
    keys: Vec<Vec<u8>>,
}

impl<W: Write> JsonlEncoder<W> {
    /// An encoder of rows with these column names.
    pub fn new(out: W, header: &[&str]) -> Self {
        let keys = header
            .iter()
            .map(|h| {
                let mut k = serde_json::to_vec(h).unwrap_or_else(|_| b"\"\"".to_vec());
                k.push(b':');
                k
            })
            .collect();
        JsonlEncoder { out, keys }
    }
}

/// Writes `s` as a JSON string.
fn string(out: &mut impl Write, s: &str) -> io::Result<()> {
    serde_json::to_writer(out, s).map_err(io::Error::other)
}

/// Writes one value as JSON.
pub fn write_value(out: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::Null => out.write_all(b"null"),
        Value::Int(i) if (-MAX_EXACT..=MAX_EXACT).contains(i) => write!(out, "{i}"),
        Value::Int(i) => write!(out, "\"{i}\""),
        Value::Float(f) if f.is_finite() => write!(out, "{f:?}"),
        Value::Float(f) => write!(out, "\"{}\"", value::float_text(*f)),
        Value::Bool(b) => write!(out, "{b}"),
        Value::Decimal(s) | Value::Time(s) | Value::Text(s) => string(out, s),
        Value::Timestamp(_) | Value::Date(_) => string(out, &v.to_text().unwrap_or_default()),
        Value::Bytes(b) => write!(
            out,
            "\"{}\"",
            base64::engine::general_purpose::STANDARD.encode(b)
        ),
    }
}

impl<W: Write + Send> Encoder<W> for JsonlEncoder<W> {
    fn write_row(&mut self, row: &[Value]) -> io::Result<()> {
        self.out.write_all(b"{")?;
        for (i, (key, v)) in self.keys.iter().zip(row).enumerate() {
            if i > 0 {
                self.out.write_all(b",")?;
            }
            self.out.write_all(key)?;
            write_value(&mut self.out, v)?;
        }
        self.out.write_all(b"}\n")
    }

    fn finish(self: Box<Self>) -> io::Result<W> {
        Ok(self.out)
    }
}

/// Reads a JSON value of a `kind` column back into a [`Value`] (the inverse of
/// [`write_value`]); `None` when it is not what that kind is written as.
pub fn read_value(kind: crate::db::portable::PortableKind, v: &serde_json::Value) -> Option<Value> {
    use crate::db::portable::PortableKind as K;
    use serde_json::Value as J;
    Some(match (kind, v) {
        (_, J::Null) => Value::Null,
        (K::Integer, J::Number(n)) => Value::Int(n.as_i64()?),
        (K::Integer, J::String(s)) => Value::Int(s.parse().ok()?),
        (K::Float, J::Number(n)) => Value::Float(n.as_f64()?),
        (K::Boolean, J::Bool(b)) => Value::Bool(*b),
        (K::Bytes, J::String(s)) => {
            Value::Bytes(base64::engine::general_purpose::STANDARD.decode(s).ok()?)
        }
        (K::Float | K::Decimal | K::Timestamp | K::Date | K::Time | K::Text, J::String(s)) => {
            Value::parse(kind, Some(s)).unwrap_or_else(|_| Value::Text(s.clone()))
        }
        (_, J::String(s)) => Value::Text(s.clone()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::portable::PortableKind as K;

    fn line(row: &[Value]) -> String {
        let mut e = Box::new(JsonlEncoder::new(Vec::new(), &["a", "b", "c"]));
        e.write_row(row).unwrap();
        String::from_utf8(e.finish().unwrap()).unwrap()
    }

    #[test]
    fn typing() {
        assert_eq!(
            line(&[Value::Int(i64::MAX), Value::Int(MAX_EXACT), Value::Null]),
            "{\"a\":\"9223372036854775807\",\"b\":9007199254740992,\"c\":null}\n"
        );
        assert_eq!(
            line(&[
                Value::Float(1e-300),
                Value::Float(f64::NAN),
                Value::Float(f64::NEG_INFINITY)
            ]),
            "{\"a\":1e-300,\"b\":\"NaN\",\"c\":\"-Infinity\"}\n"
        );
        assert_eq!(
            line(&[
                Value::Decimal("1.50".into()),
                Value::Bytes(vec![0, 255]),
                Value::Timestamp(1)
            ]),
            "{\"a\":\"1.50\",\"b\":\"AP8=\",\"c\":\"1970-01-01T00:00:00.000001Z\"}\n"
        );
        assert_eq!(
            line(&[
                Value::Text("ü\"\n".into()),
                Value::Text(String::new()),
                Value::Bool(true)
            ]),
            "{\"a\":\"ü\\\"\\n\",\"b\":\"\",\"c\":true}\n"
        );
    }

    #[test]
    fn reads_back() {
        for (kind, v) in [
            (K::Integer, Value::Int(i64::MIN)),
            (K::Integer, Value::Int(3)),
            (K::Float, Value::Float(1e-300)),
            (K::Float, Value::Float(f64::INFINITY)),
            (K::Float, Value::Float(f64::NAN)),
            (K::Decimal, Value::Decimal("-0.001".into())),
            (K::Bytes, Value::Bytes(vec![1, 2, 3])),
            (K::Timestamp, Value::Timestamp(-5)),
            (K::Date, Value::Date(20000)),
            (K::Text, Value::Null),
        ] {
            let mut out = Vec::new();
            write_value(&mut out, &v).unwrap();
            let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(read_value(kind, &json), Some(v));
        }
    }
}
