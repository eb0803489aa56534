//! PostgreSQL binary COPY (`COPY (…) TO STDOUT (FORMAT binary)`) decoded in Rust.
//!
//! Contract: [`BinaryRows`] takes the COPY data in chunks of any size (messages are not row
//! aligned: it buffers and splits tuples itself), checks the 19-byte header, its extension and
//! the trailer, and hands each row to a callback as canonical text fields (`None`: NULL) —
//! exactly the text the PostgreSQL dialect's `render` expressions give for the same column,
//! so that CSV exports read through binary COPY are byte for byte those read through text
//! COPY: booleans `true`/`false`, integers and `numeric` as `numeric_out` prints them, floats
//! shortest-exact as `float8out`/`float4out` print them, timestamps RFC 3339 UTC with
//! microseconds (infinite ones NULL, as `to_char` gives), dates as ISO `date_out`, `bytea` as
//! `\x` hex, text as it is (`character(n)` keeps its padding). Malformed data is a runtime
//! error, never a panic. [`decodable`] tells which type OIDs it decodes; a select with any
//! other output type must be read through text COPY.

use std::fmt::Write as _;

use crate::error::{Error, Result};

/// How one output column is decoded (by its type OID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    /// text, varchar, bpchar, name, json: UTF-8 text as it is.
    Text,
    Bytea,
    Date,
    /// timestamp and timestamptz (both microseconds since 2000-01-01 UTC).
    Timestamp,
}

/// The decoder of a column of type `oid`, if there is one.
pub(crate) fn decodable(oid: u32) -> Option<Field> {
    Some(match oid {
        16 => Field::Bool,
        17 => Field::Bytea,
        20 => Field::Int8,
        21 => Field::Int2,
        23 => Field::Int4,
        19 | 25 | 114 | 705 | 1042 | 1043 => Field::Text,
        700 => Field::Float4,
        701 => Field::Float8,
        1082 => Field::Date,
        1114 | 1184 => Field::Timestamp,
        1700 => Field::Numeric,
        _ => return None,
    })
}

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

fn corrupt(why: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("malformed binary COPY data from PostgreSQL: {why}"))
}

/// A streaming decoder of one binary COPY.
pub(crate) struct BinaryRows {
    fields: Vec<Field>,
    buf: Vec<u8>,
    header_done: bool,
    finished: bool,
    /// The text of the current row's fields, one after another, and where each lies.
    text: String,
    spans: Vec<Option<(usize, usize)>>,
}

impl BinaryRows {
    /// A decoder for rows of `fields`.
    pub(crate) fn new(fields: Vec<Field>) -> Self {
        BinaryRows {
            spans: Vec::with_capacity(fields.len()),
            fields,
            buf: Vec::with_capacity(64 * 1024),
            header_done: false,
            finished: false,
            text: String::with_capacity(1024),
        }
    }

    /// Decodes what `chunk` completes; calls `row` once per complete row. Returns the rows
    /// decoded.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        row: &mut dyn FnMut(&[Option<&str>]) -> Result<()>,
    ) -> Result<u64> {
        self.buf.extend_from_slice(chunk);
        let mut pos = 0usize;
        let mut n = 0u64;
        let result = self.drain(&mut pos, &mut n, row);
        self.buf.drain(..pos);
        result.map(|()| n)
    }

    /// Checks that the data ended with the trailer and nothing after it.
    pub(crate) fn finish(&self) -> Result<()> {
        if !self.finished || !self.buf.is_empty() {
            return Err(corrupt("the data ended before its trailer"));
        }
        Ok(())
    }

    fn drain(
        &mut self,
        pos: &mut usize,
        n: &mut u64,
        row: &mut dyn FnMut(&[Option<&str>]) -> Result<()>,
    ) -> Result<()> {
        if !self.header_done {
            let Some(ext) = self.buf.get(15..19) else {
                return Ok(());
            };
            let ext = be_i32(ext);
            if self.buf.get(..11) != Some(&SIGNATURE[..]) || ext < 0 {
                return Err(corrupt("bad header"));
            }
            let end = 19 + ext as usize;
            if self.buf.len() < end {
                return Ok(());
            }
            *pos = end;
            self.header_done = true;
        }
        loop {
            if self.finished {
                if *pos < self.buf.len() {
                    return Err(corrupt("data after the trailer"));
                }
                return Ok(());
            }
            let start = *pos;
            let Some(count) = self.buf.get(start..start + 2) else {
                return Ok(());
            };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                self.finished = true;
                *pos = start + 2;
                continue;
            }
            if count as usize != self.fields.len() || count < 0 {
                return Err(corrupt(format!(
                    "a row of {count} fields where {} were expected",
                    self.fields.len()
                )));
            }
            // Is the whole tuple here?
            let mut at = start + 2;
            let mut complete = true;
            for _ in 0..count {
                let Some(len) = self.buf.get(at..at + 4) else {
                    complete = false;
                    break;
                };
                let len = be_i32(len);
                at += 4;
                if len > 0 {
                    at += len as usize;
                } else if len < -1 {
                    return Err(corrupt("negative field length"));
                }
            }
            if !complete || at > self.buf.len() {
                return Ok(());
            }
            // Decode it.
            self.text.clear();
            self.spans.clear();
            let mut at = start + 2;
            for field in &self.fields {
                let len = self.buf.get(at..at + 4).map(be_i32).unwrap_or(-1);
                at += 4;
                if len < 0 {
                    self.spans.push(None);
                    continue;
                }
                let value = self
                    .buf
                    .get(at..at + len as usize)
                    .ok_or_else(|| corrupt("short field"))?;
                at += len as usize;
                let from = self.text.len();
                let present = render(*field, value, &mut self.text)?;
                self.spans.push(present.then_some((from, self.text.len())));
            }
            *pos = at;
            let text = self.text.as_str();
            let fields: Vec<Option<&str>> = self
                .spans
                .iter()
                .map(|s| s.and_then(|(a, b)| text.get(a..b)))
                .collect();
            row(&fields)?;
            *n += 1;
        }
    }
}

fn be_i32(b: &[u8]) -> i32 {
    let mut a = [0u8; 4];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    i32::from_be_bytes(a)
}

fn fixed<const N: usize>(value: &[u8], what: &str) -> Result<[u8; N]> {
    value
        .try_into()
        .map_err(|_| corrupt(format!("{what} of {} bytes", value.len())))
}

/// Appends the canonical text of one binary value to `out`; false when the value is NULL in
/// its text form (an infinite timestamp).
pub(crate) fn render(field: Field, value: &[u8], out: &mut String) -> Result<bool> {
    match field {
        Field::Bool => match value {
            [0] => out.push_str("false"),
            [_] => out.push_str("true"),
            _ => return Err(corrupt("boolean of the wrong size")),
        },
        Field::Int2 => {
            let _ = write!(out, "{}", i16::from_be_bytes(fixed(value, "int2")?));
        }
        Field::Int4 => {
            let _ = write!(out, "{}", i32::from_be_bytes(fixed(value, "int4")?));
        }
        Field::Int8 => {
            let _ = write!(out, "{}", i64::from_be_bytes(fixed(value, "int8")?));
        }
        Field::Float4 => {
            let v = f32::from_be_bytes(fixed(value, "float4")?);
            float_text(
                v.is_nan(),
                v.is_infinite(),
                v.is_sign_negative(),
                &format!("{v:e}"),
                6,
                out,
            );
        }
        Field::Float8 => {
            let v = f64::from_be_bytes(fixed(value, "float8")?);
            float_text(
                v.is_nan(),
                v.is_infinite(),
                v.is_sign_negative(),
                &format!("{v:e}"),
                15,
                out,
            );
        }
        Field::Numeric => numeric_text(value, out)?,
        Field::Text => {
            out.push_str(std::str::from_utf8(value).map_err(|_| corrupt("text that is not UTF-8"))?)
        }
        Field::Bytea => {
            out.reserve(2 + value.len() * 2);
            out.push_str("\\x");
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for b in value {
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
        Field::Date => {
            let days = i32::from_be_bytes(fixed(value, "date")?);
            match days {
                i32::MAX => out.push_str("infinity"),
                i32::MIN => out.push_str("-infinity"),
                _ => {
                    let d = date_of(i64::from(days));
                    push_date(d, out);
                    if d.0 <= 0 {
                        out.push_str(" BC");
                    }
                }
            }
        }
        Field::Timestamp => {
            let us = i64::from_be_bytes(fixed(value, "timestamp")?);
            if us == i64::MAX || us == i64::MIN {
                return Ok(false);
            }
            let days = us.div_euclid(86_400_000_000);
            let rest = us.rem_euclid(86_400_000_000);
            push_date(date_of(days), out);
            let secs = rest / 1_000_000;
            let _ = write!(
                out,
                "T{:02}:{:02}:{:02}.{:06}Z",
                secs / 3600,
                secs / 60 % 60,
                secs % 60,
                rest % 1_000_000
            );
        }
    }
    Ok(true)
}

/// (year, month, day) of `days` since 2000-01-01 in the proleptic Gregorian calendar, the
/// year astronomical (1 BC is 0); for any `days` PostgreSQL stores (H. Hinnant's algorithm).
fn date_of(days: i64) -> (i64, u32, u32) {
    let z = days + 10_957 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DD`, a year before 1 AD written as its BC number (as PostgreSQL's `YYYY` and ISO
/// date output do; the date output adds ` BC`).
fn push_date((y, m, d): (i64, u32, u32), out: &mut String) {
    let year = if y <= 0 { 1 - y } else { y };
    let _ = write!(out, "{year:04}-{m:02}-{d:02}");
}

/// PostgreSQL's shortest-exact float output (`float8out`/`float4out` with
/// `extra_float_digits` > 0): `sci` is Rust's shortest `{:e}` form of the same value (same
/// digits); fixed notation when the decimal exponent is in `-4..limit`, else `d.ddde+XX`.
fn float_text(nan: bool, inf: bool, neg: bool, sci: &str, limit: i32, out: &mut String) {
    if nan {
        out.push_str("NaN");
        return;
    }
    if inf {
        out.push_str(if neg { "-Infinity" } else { "Infinity" });
        return;
    }
    let sci = sci.strip_prefix('-').unwrap_or(sci);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if neg {
        out.push('-');
    }
    if digits == "0" {
        out.push('0');
        return;
    }
    if (-4..limit).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                for _ in digits.len()..int_len {
                    out.push('0');
                }
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    }
}

/// `numeric_out` of a binary numeric: i16 ndigits, i16 weight, u16 sign, u16 dscale, then
/// ndigits base-10000 digits.
fn numeric_text(value: &[u8], out: &mut String) -> Result<()> {
    let word = |i: usize| -> Result<u16> {
        value
            .get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| corrupt("short numeric"))
    };
    let ndigits = word(0)? as i16;
    let weight = word(1)? as i16 as i32;
    let sign = word(2)?;
    let dscale = word(3)? as i32;
    if ndigits < 0 || value.len() != 8 + 2 * ndigits as usize {
        return Err(corrupt("numeric of the wrong size"));
    }
    match sign {
        0xC000 => {
            out.push_str("NaN");
            return Ok(());
        }
        0xD000 => {
            out.push_str("Infinity");
            return Ok(());
        }
        0xF000 => {
            out.push_str("-Infinity");
            return Ok(());
        }
        0x0000 | 0x4000 => {}
        _ => return Err(corrupt("numeric sign")),
    }
    let mut digits = Vec::with_capacity(ndigits as usize);
    for i in 0..ndigits as usize {
        let d = word(4 + i)?;
        if d > 9999 {
            return Err(corrupt("numeric digit"));
        }
        digits.push(d);
    }
    let digit = |d: i32| -> u16 {
        usize::try_from(d)
            .ok()
            .and_then(|d| digits.get(d).copied())
            .unwrap_or(0)
    };
    if sign == 0x4000 {
        out.push('-');
    }
    let mut d: i32;
    if weight < 0 {
        d = weight + 1;
        out.push('0');
    } else {
        d = 0;
        while d <= weight {
            let dig = digit(d);
            let text = format!("{dig:04}");
            if d == 0 {
                out.push_str(text.trim_start_matches('0'));
                if dig == 0 {
                    out.push('0');
                }
            } else {
                out.push_str(&text);
            }
            d += 1;
        }
    }
    if dscale > 0 {
        out.push('.');
        let end = out.len() + dscale as usize;
        let mut i = 0;
        while i < dscale {
            let _ = write!(out, "{:04}", digit(d));
            d += 1;
            i += 4;
        }
        out.truncate(end);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(field: Field, value: &[u8]) -> Option<String> {
        let mut s = String::new();
        render(field, value, &mut s).unwrap().then_some(s)
    }

    fn numeric(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> String {
        let mut v = Vec::new();
        for w in [digits.len() as u16, weight as u16, sign, dscale]
            .into_iter()
            .chain(digits.iter().copied())
        {
            v.extend_from_slice(&w.to_be_bytes());
        }
        text(Field::Numeric, &v).unwrap()
    }

    #[test]
    fn numerics_print_as_numeric_out() {
        assert_eq!(numeric(0, 0, 0, &[]), "0");
        assert_eq!(numeric(0, 0, 2, &[]), "0.00");
        assert_eq!(numeric(0, 0x4000, 0, &[5]), "-5");
        assert_eq!(numeric(0, 0, 3, &[12, 3450]), "12.345");
        assert_eq!(numeric(-1, 0x4000, 5, &[12]), "-0.00120");
        assert_eq!(numeric(-2, 0, 8, &[1]), "0.00000001");
        assert_eq!(numeric(2, 0, 0, &[1]), "100000000");
        assert_eq!(numeric(1, 0, 1, &[1, 2, 5000]), "10002.5");
        assert_eq!(numeric(0, 0xC000, 0, &[]), "NaN");
        assert_eq!(numeric(0, 0xD000, 0, &[]), "Infinity");
        assert_eq!(numeric(0, 0xF000, 0, &[]), "-Infinity");
        // 10^40 - 1, huge.
        let nines = [9999u16; 10];
        assert_eq!(numeric(9, 0, 0, &nines), "9".repeat(40));
        assert!(render(Field::Numeric, &[0, 1], &mut String::new()).is_err());
        assert!(render(
            Field::Numeric,
            &[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10],
            &mut String::new()
        )
        .is_err());
    }

    fn ts(us: i64) -> Option<String> {
        text(Field::Timestamp, &us.to_be_bytes())
    }

    #[test]
    fn timestamps_print_as_the_text_path_does() {
        assert_eq!(ts(0).unwrap(), "2000-01-01T00:00:00.000000Z");
        assert_eq!(ts(-1).unwrap(), "1999-12-31T23:59:59.999999Z");
        // 2026-11-21T04:37:00.123456Z
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-21T04:37:00.123456Z").unwrap();
        let base = chrono::DateTime::parse_from_rfc3339("2000-01-01T00:00:00Z").unwrap();
        let us = (t - base).num_microseconds().unwrap();
        assert_eq!(ts(us).unwrap(), "2026-11-21T04:37:00.123456Z");
        let old = chrono::DateTime::parse_from_rfc3339("1901-02-03T01:02:03.5Z").unwrap();
        assert_eq!(
            ts((old - base).num_microseconds().unwrap()).unwrap(),
            "1901-02-03T01:02:03.500000Z"
        );
        assert_eq!(ts(i64::MAX), None);
        assert_eq!(ts(i64::MIN), None);
        let day = |d: i32| text(Field::Date, &d.to_be_bytes()).unwrap();
        assert_eq!(day(0), "2000-01-01");
        assert_eq!(day(-1), "1999-12-31");
        assert_eq!(day(i32::MAX), "infinity");
        assert_eq!(day(i32::MIN), "-infinity");
        // 0001-01-01 is 730119 days before 2000-01-01; the day before is 1 BC.
        assert_eq!(day(-730119), "0001-01-01");
        assert_eq!(day(-730120), "0001-12-31 BC");
        assert_eq!(day(-730120 - 365), "0001-01-01 BC"); // 1 BC is a leap year
        assert_eq!(day(59), "2000-02-29");
        assert_eq!(day(60), "2000-03-01");
        // Beyond chrono's range: PostgreSQL's last date.
        assert_eq!(day(2_147_483_493 - 2_451_545), "5874897-12-31");
    }

    #[test]
    fn floats_print_as_float8out() {
        let f8 = |v: f64| text(Field::Float8, &v.to_be_bytes()).unwrap();
        assert_eq!(f8(0.0), "0");
        assert_eq!(f8(-0.0), "-0");
        assert_eq!(f8(0.1), "0.1");
        assert_eq!(f8(1.5), "1.5");
        assert_eq!(f8(100.0), "100");
        assert_eq!(f8(1e15), "1e+15");
        assert_eq!(f8(123456789012345.0), "123456789012345");
        assert_eq!(f8(0.0001), "0.0001");
        assert_eq!(f8(0.00001), "1e-05");
        assert_eq!(f8(-1.25e-100), "-1.25e-100");
        assert_eq!(f8(f64::NAN), "NaN");
        assert_eq!(f8(f64::NEG_INFINITY), "-Infinity");
        let f4 = |v: f32| text(Field::Float4, &v.to_be_bytes()).unwrap();
        assert_eq!(f4(0.1), "0.1");
        assert_eq!(f4(123456.0), "123456");
        assert_eq!(f4(1e6), "1e+06");
    }

    #[test]
    fn tuples_split_anywhere() {
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&0i32.to_be_bytes());
        data.extend_from_slice(&0i32.to_be_bytes());
        for (i, name) in [(1i64, Some("a,b")), (2, None)] {
            data.extend_from_slice(&2i16.to_be_bytes());
            data.extend_from_slice(&8i32.to_be_bytes());
            data.extend_from_slice(&i.to_be_bytes());
            match name {
                Some(n) => {
                    data.extend_from_slice(&(n.len() as i32).to_be_bytes());
                    data.extend_from_slice(n.as_bytes());
                }
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        data.extend_from_slice(&(-1i16).to_be_bytes());
        for size in [1, 3, 7, data.len()] {
            let mut rows = BinaryRows::new(vec![Field::Int8, Field::Text]);
            let mut seen = Vec::new();
            let mut n = 0;
            for chunk in data.chunks(size) {
                n += rows
                    .feed(chunk, &mut |f| {
                        seen.push(format!("{f:?}"));
                        Ok(())
                    })
                    .unwrap();
            }
            rows.finish().unwrap();
            assert_eq!(n, 2);
            assert_eq!(
                seen,
                ["[Some(\"1\"), Some(\"a,b\")]", "[Some(\"2\"), None]"]
            );
        }
        // Cut short: an error, not a panic.
        let mut rows = BinaryRows::new(vec![Field::Int8, Field::Text]);
        rows.feed(&data[..data.len() - 5], &mut |_| Ok(())).unwrap();
        assert!(rows.finish().is_err());
        let mut rows = BinaryRows::new(vec![Field::Int8]);
        assert!(rows.feed(&data, &mut |_| Ok(())).is_err());
    }
}
