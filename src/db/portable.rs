//! The type of an exported column as a reader needs it: the catalog type as the source database
//! spells it (`numeric(12,3)`, `timestamp with time zone`, `bigint unsigned`) and a portable
//! [`PortableKind`] with the precision, scale and length that a reader maps without knowing the
//! source database. Manifests carry one per column; every export format takes its types from
//! here ([`ColumnType::of`]), so that they all agree.

use super::types::SqlType;
use super::{Column, ColumnKind, DbKind};

/// What a value of a column is, whatever database it came from. In the CSV: integers and
/// decimals as their exact digits, floats as text that reads back as the same double
/// (`Infinity`, `-Infinity`, `NaN` by name), booleans `true`/`false`, timestamps RFC 3339 in UTC
/// with microseconds, dates `YYYY-MM-DD`, bytes as `\x` and lower-case hex, text as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortableKind {
    /// A signed 64-bit integer (or narrower).
    Integer,
    /// A double (a single-precision column's values are exported as the doubles they are).
    Float,
    /// An exact decimal; `precision`/`scale` when the column has them (none: any number of
    /// digits, read it as text or an arbitrary-precision decimal). Unsigned 64-bit integers,
    /// which exceed a signed 64-bit integer, are `decimal(20,0)`.
    Decimal,
    Boolean,
    /// A point in time, UTC, microseconds (a timestamp without zone is taken to be UTC).
    Timestamp,
    Date,
    /// A time of day (PostgreSQL `time`), or a duration (MariaDB `TIME`, up to ±838:59:59).
    Time,
    /// Bytes, written as `\x` followed by lower-case hex.
    Bytes,
    /// Text; also every type without a portable counterpart (JSON, UUID, intervals, arrays,
    /// enums…), in the source database's text form.
    Text,
}

/// The type of one exported column.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnType {
    pub name: String,
    /// The type as the source database's catalog spells it; `None` for columns tidemark adds
    /// (the `operation` of delta exports).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub sql_type: Option<String>,
    pub kind: PortableKind,
    /// Decimals: total digits. Timestamps and times: fractional-second digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<u32>,
    /// Decimals: digits after the point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    /// Text and bytes: the most characters (bytes) a value may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u32>,
    /// `char(n)`, `binary(n)`: values are padded to `length` (and exported padded).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed: bool,
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

impl ColumnType {
    /// The type of `column` of an `engine` table.
    pub fn of(engine: DbKind, column: &Column) -> ColumnType {
        let t = SqlType::parse(engine, &column.sql_type);
        let mut out = ColumnType {
            name: column.name.to_string(),
            sql_type: Some(column.sql_type.clone()),
            kind: PortableKind::Text,
            precision: None,
            scale: None,
            length: None,
            fixed: false,
            nullable: column.nullable,
        };
        // The kind tidemark formats by decides; the parsed name adds the details.
        out.kind = match column.kind {
            ColumnKind::Integer if t.unsigned_64 => {
                out.precision = Some(20);
                out.scale = Some(0);
                PortableKind::Decimal
            }
            ColumnKind::Integer => PortableKind::Integer,
            ColumnKind::Float => PortableKind::Float,
            ColumnKind::Decimal => {
                out.precision = t.precision;
                out.scale = t.scale;
                PortableKind::Decimal
            }
            ColumnKind::Bool => PortableKind::Boolean,
            ColumnKind::Timestamp | ColumnKind::TimestampTz => {
                out.precision = t.precision;
                PortableKind::Timestamp
            }
            ColumnKind::Date => PortableKind::Date,
            ColumnKind::Time => {
                out.precision = t.precision;
                PortableKind::Time
            }
            ColumnKind::Bytes => {
                out.length = t.length;
                out.fixed = t.fixed;
                PortableKind::Bytes
            }
            ColumnKind::Text => {
                out.length = t.length;
                out.fixed = t.fixed;
                PortableKind::Text
            }
            ColumnKind::Other => PortableKind::Text,
        };
        out
    }

    /// The leading `operation` column of delta exports (`INSERT`, `UPDATE`, `DELETE`).
    pub fn operation() -> ColumnType {
        ColumnType {
            name: "operation".into(),
            sql_type: None,
            kind: PortableKind::Text,
            precision: None,
            scale: None,
            length: None,
            fixed: false,
            nullable: false,
        }
    }

    /// A column known only by its name (manifests written before columns had types).
    pub fn untyped(name: &str) -> ColumnType {
        ColumnType {
            sql_type: None,
            name: name.to_string(),
            ..ColumnType::operation()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::Ident;

    fn of(engine: DbKind, sql_type: &str) -> ColumnType {
        let column = Column {
            name: Ident::new("c").unwrap(),
            sql_type: sql_type.into(),
            kind: super::super::classify_type(engine, sql_type),
            nullable: true,
        };
        ColumnType::of(engine, &column)
    }

    #[test]
    fn portable_kinds_with_their_details() {
        let pg = |t| of(DbKind::Postgres, t);
        let my = |t| of(DbKind::Mysql, t);
        let d = pg("numeric(12,3)");
        assert_eq!(
            (d.kind, d.precision, d.scale),
            (PortableKind::Decimal, Some(12), Some(3))
        );
        assert_eq!(d.sql_type.as_deref(), Some("numeric(12,3)"));
        assert_eq!(pg("numeric").precision, None);
        let ts = pg("timestamp(3) with time zone");
        assert_eq!((ts.kind, ts.precision), (PortableKind::Timestamp, Some(3)));
        let c = pg("character(84)");
        assert_eq!(
            (c.kind, c.length, c.fixed),
            (PortableKind::Text, Some(84), true)
        );
        assert_eq!(pg("bytea").kind, PortableKind::Bytes);
        assert_eq!(pg("jsonb").kind, PortableKind::Text);
        assert_eq!(pg("integer[]").kind, PortableKind::Text);
        assert_eq!(my("tinyint(1)").kind, PortableKind::Boolean);
        let u = my("bigint(20) unsigned");
        assert_eq!(
            (u.kind, u.precision, u.scale),
            (PortableKind::Decimal, Some(20), Some(0))
        );
        assert_eq!(my("int(10) unsigned").kind, PortableKind::Integer);
        assert_eq!(my("float").kind, PortableKind::Float);
        assert_eq!(my("datetime(6)").kind, PortableKind::Timestamp);
        assert_eq!(of(DbKind::Sqlite, "BLOB").kind, PortableKind::Bytes);
    }

    #[test]
    fn serializes_compactly_and_reads_back() {
        let c = of(DbKind::Postgres, "numeric(12,3)");
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"name":"c","type":"numeric(12,3)","kind":"decimal","precision":12,"scale":3,"nullable":true}"#
        );
        assert_eq!(serde_json::from_str::<ColumnType>(&json).unwrap(), c);
        let op = serde_json::to_string(&ColumnType::operation()).unwrap();
        assert_eq!(op, r#"{"name":"operation","kind":"text","nullable":false}"#);
    }
}
