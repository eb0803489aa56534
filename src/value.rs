//! Typed values: the currency every export format speaks. A database renders each column as
//! the canonical text of its [`PortableKind`] (see that type's docs); [`Value::parse`] reads
//! that text into a [`Value`], and [`Value::to_text`] writes a value back as canonical text that
//! parses to the same value (`parse(kind, v.to_text()) == v`, NaN aside, which equals itself
//! here by bits). Parsing never panics: text that is not of its kind (SQLite stores anything in
//! any column) is an error naming what was expected, and the caller decides what to do.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::db::portable::PortableKind;

/// One value of one column.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    /// An exact decimal as its digits (`-12.340`, `NaN`, `Infinity` where the database has
    /// them), never rounded.
    Decimal(String),
    Bool(bool),
    /// Microseconds since 1970-01-01T00:00:00Z.
    Timestamp(i64),
    /// Days since 1970-01-01.
    Date(i32),
    /// A time of day or a duration, as the database wrote it (`13:45:00.5`, `-838:59:59`).
    Time(String),
    Text(String),
    Bytes(Vec<u8>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Int(a), Int(b)) => a == b,
            // Equal by bits, except that every NaN equals every NaN (text has one NaN, so a
            // NaN's payload bits do not survive a round trip); 0.0 and -0.0 differ (both do).
            (Float(a), Float(b)) => (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits(),
            (Decimal(a), Decimal(b)) | (Time(a), Time(b)) | (Text(a), Text(b)) => a == b,
            (Bool(a), Bool(b)) => a == b,
            (Timestamp(a), Timestamp(b)) => a == b,
            (Date(a), Date(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            _ => false,
        }
    }
}

/// The Unix epoch as a date.
fn epoch_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
}

impl Value {
    /// Reads the canonical text of a `kind` column (`None`: NULL). The error says what the text
    /// should have been.
    pub fn parse(kind: PortableKind, text: Option<&str>) -> Result<Value, String> {
        let Some(t) = text else {
            return Ok(Value::Null);
        };
        let bad = |what: &str| format!("{t:?} is not {what}");
        Ok(match kind {
            PortableKind::Integer => Value::Int(t.parse().map_err(|_| bad("a 64-bit integer"))?),
            PortableKind::Float => Value::Float(parse_float(t).ok_or_else(|| bad("a float"))?),
            PortableKind::Decimal => {
                if !is_decimal(t) {
                    return Err(bad("a decimal number"));
                }
                Value::Decimal(t.to_string())
            }
            PortableKind::Boolean => match t {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(bad("true or false")),
            },
            PortableKind::Timestamp => Value::Timestamp(
                parse_timestamp(t).ok_or_else(|| bad("an RFC 3339 UTC timestamp"))?,
            ),
            PortableKind::Date => {
                let d = NaiveDate::parse_from_str(t, "%Y-%m-%d").map_err(|_| bad("a date"))?;
                let days = d.signed_duration_since(epoch_date()).num_days();
                Value::Date(i32::try_from(days).map_err(|_| bad("a date"))?)
            }
            PortableKind::Time => Value::Time(t.to_string()),
            PortableKind::Bytes => Value::Bytes(parse_hex(t).ok_or_else(|| bad("\\x and hex"))?),
            PortableKind::Text => Value::Text(t.to_string()),
        })
    }

    /// The canonical text of this value (`None` for NULL): what [`Value::parse`] reads back.
    /// Floats in Rust's shortest exact form (`1e-300`, `0.1`, `NaN`, `Infinity`).
    pub fn to_text(&self) -> Option<String> {
        Some(match self {
            Value::Null => return None,
            Value::Int(i) => i.to_string(),
            Value::Float(f) => float_text(*f),
            Value::Decimal(s) | Value::Time(s) | Value::Text(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Timestamp(us) => timestamp_text(*us)?,
            Value::Date(d) => date_text(*d)?,
            Value::Bytes(b) => format!("\\x{}", hex::encode(b)),
        })
    }
}

/// A float as text that reads back as the same double: `NaN`, `Infinity`, `-Infinity` by name,
/// others in the shortest exact form.
pub fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{f:?}")
    }
}

fn parse_float(t: &str) -> Option<f64> {
    match t {
        "NaN" => Some(f64::NAN),
        "Infinity" | "inf" => Some(f64::INFINITY),
        "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
        _ if t
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            None
        }
        _ => t.parse().ok(),
    }
}

/// True for `[+-]digits[.digits][e[+-]digits]` (at least one digit) and for `NaN`,
/// `Infinity`, `-Infinity`.
fn is_decimal(t: &str) -> bool {
    if matches!(t, "NaN" | "Infinity" | "-Infinity") {
        return true;
    }
    let s = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (mantissa, exponent) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let exp_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    !(int.is_empty() && frac.is_empty()) && digits(int) && digits(frac) && exp_ok
}

fn parse_timestamp(t: &str) -> Option<i64> {
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Some(d.with_timezone(&Utc).timestamp_micros());
    }
    NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc().timestamp_micros())
}

/// Microseconds since the epoch as `2026-11-21T04:37:00.123456Z`.
pub fn timestamp_text(micros: i64) -> Option<String> {
    use chrono::{Datelike, Timelike};
    let d = DateTime::<Utc>::from_timestamp_micros(micros)?;
    if !(0..=9999).contains(&d.year()) {
        return Some(d.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
    }
    // Written field by field: chrono's format strings cost several times more, and JSON Lines
    // writes one of these per timestamp value.
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        d.year(),
        d.month(),
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.timestamp_subsec_micros()
    ))
}

/// Days since the epoch as `YYYY-MM-DD`.
pub fn date_text(days: i32) -> Option<String> {
    epoch_date()
        .checked_add_signed(chrono::Duration::days(i64::from(days)))
        .map(|d| d.format("%Y-%m-%d").to_string())
}

fn parse_hex(t: &str) -> Option<Vec<u8>> {
    hex::decode(t.strip_prefix("\\x")?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(kind: PortableKind, v: Value) {
        let text = v.to_text();
        assert_eq!(Value::parse(kind, text.as_deref()).unwrap(), v, "{text:?}");
    }

    #[test]
    fn edges_round_trip() {
        use PortableKind as K;
        round_trip(K::Integer, Value::Int(i64::MAX));
        round_trip(K::Integer, Value::Int(i64::MIN));
        for f in [
            1e-300,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            0.1,
            1e300,
        ] {
            round_trip(K::Float, Value::Float(f));
        }
        round_trip(
            K::Decimal,
            Value::Decimal("-12345678901234567890.000001".into()),
        );
        round_trip(K::Text, Value::Text("ünïcödé ✓ \"x\",\n".into()));
        round_trip(K::Text, Value::Text(String::new()));
        round_trip(K::Bytes, Value::Bytes(vec![0, 0xff, b'\\', b'x']));
        round_trip(K::Timestamp, Value::Timestamp(1_795_000_000_123_456));
        round_trip(K::Timestamp, Value::Timestamp(-1));
        round_trip(K::Date, Value::Date(-719_162));
        round_trip(K::Boolean, Value::Bool(false));
        round_trip(K::Integer, Value::Null);
    }

    #[test]
    fn database_texts_parse() {
        use PortableKind as K;
        let p = |k, t| Value::parse(k, Some(t));
        assert_eq!(p(K::Float, "1e-300").unwrap(), Value::Float(1e-300));
        assert_eq!(p(K::Float, "1.0e+20").unwrap(), Value::Float(1e20));
        assert_eq!(
            p(K::Float, "-Infinity").unwrap(),
            Value::Float(f64::NEG_INFINITY)
        );
        assert_eq!(
            p(K::Timestamp, "2026-11-21T04:37:00.123456Z").unwrap(),
            Value::Timestamp(1_795_235_820_123_456)
        );
        assert_eq!(p(K::Date, "1970-01-02").unwrap(), Value::Date(1));
        assert_eq!(p(K::Bytes, "\\x00ff").unwrap(), Value::Bytes(vec![0, 255]));
        assert!(p(K::Integer, "9223372036854775808").is_err());
        assert!(p(K::Integer, "1.5").is_err());
        assert!(p(K::Float, "infinityx").is_err());
        assert!(p(K::Decimal, "1.2.3").is_err());
        assert!(p(K::Decimal, "").is_err());
        assert!(p(K::Decimal, "1e").is_err());
        assert!(p(K::Decimal, "NaN").is_ok());
        assert!(p(K::Boolean, "t").is_err());
        assert!(p(K::Bytes, "00ff").is_err());
        assert!(p(K::Timestamp, "yesterday").is_err());
    }

    proptest! {
        #[test]
        fn ints_round_trip(i in any::<i64>()) {
            round_trip(PortableKind::Integer, Value::Int(i));
        }

        #[test]
        fn floats_round_trip(bits in any::<u64>()) {
            round_trip(PortableKind::Float, Value::Float(f64::from_bits(bits)));
        }

        #[test]
        fn texts_round_trip(s in "\\PC*") {
            round_trip(PortableKind::Text, Value::Text(s));
        }

        #[test]
        fn bytes_round_trip(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            round_trip(PortableKind::Bytes, Value::Bytes(b));
        }

        #[test]
        fn timestamps_round_trip(us in -62_135_596_800_000_000i64..253_402_300_799_999_999) {
            round_trip(PortableKind::Timestamp, Value::Timestamp(us));
        }

        #[test]
        fn decimals_round_trip(int in "-?[0-9]{1,30}", frac in proptest::option::of("[0-9]{1,20}")) {
            let text = match frac { Some(f) => format!("{int}.{f}"), None => int };
            round_trip(PortableKind::Decimal, Value::Decimal(text));
        }

        #[test]
        fn never_panics(kind in 0usize..9, t in "\\PC{0,40}") {
            let kinds = [PortableKind::Integer, PortableKind::Float, PortableKind::Decimal,
                PortableKind::Boolean, PortableKind::Timestamp, PortableKind::Date,
                PortableKind::Time, PortableKind::Bytes, PortableKind::Text];
            let _ = Value::parse(kinds[kind], Some(&t));
        }
    }
}
