//! Catalog types, parsed exactly: the type name as each database's catalog spells it
//! (PostgreSQL's `format_type`, MariaDB's `COLUMN_TYPE`, SQLite's declared type) becomes a
//! [`SqlType`] — the [`ColumnKind`] tidemark formats values by, with the precision, scale and
//! length the name carries. No substring guessing: `interval`, `point` and `int4range` are not
//! integers. SQLite alone is classified by its affinity rules once the declared names tidemark
//! knows (BOOLEAN, DATE, TIMESTAMP…) are ruled out, because that is what SQLite stores.
//!
//! [`created_type`] is the other half: the column type a replica target is created with, which
//! never narrows range or precision; a type a target cannot hold exactly becomes text, or is
//! refused with a message naming the column and type.

use super::{Column, ColumnKind, DbKind};
use crate::error::{Error, Result};

/// A parsed catalog type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlType {
    /// How values are formatted.
    pub kind: ColumnKind,
    /// The base name, lower case, without arguments or `unsigned` (`numeric`, `character
    /// varying`, `int4range`, `bigint`).
    pub base: String,
    /// Decimals: total digits (`None`: unconstrained). Time types: fractional-second digits.
    pub precision: Option<u32>,
    /// Decimals: digits after the point.
    pub scale: Option<u32>,
    /// Text and binary: the most characters (bytes) a value may have; `None`: no limit.
    pub length: Option<u32>,
    /// `char(n)`, `binary(n)`: padded to the length.
    pub fixed: bool,
    /// An integer whose values may exceed 2^63 − 1 (MariaDB `BIGINT UNSIGNED`, `BIT(64)`).
    pub unsigned_64: bool,
    /// A PostgreSQL array (`integer[]`).
    pub array: bool,
}

impl SqlType {
    fn of(kind: ColumnKind, base: &str) -> Self {
        SqlType {
            kind,
            base: base.to_string(),
            precision: None,
            scale: None,
            length: None,
            fixed: false,
            unsigned_64: false,
            array: false,
        }
    }

    /// Parses `sql_type` as `engine`'s catalog spells it.
    pub fn parse(engine: DbKind, sql_type: &str) -> SqlType {
        let lower = sql_type.trim().to_ascii_lowercase();
        match engine {
            DbKind::Postgres => parse_postgres(&lower),
            DbKind::Mysql => parse_mysql(&lower),
            DbKind::Sqlite => parse_sqlite(&lower),
        }
    }
}

/// Splits `name(a,b) rest` into (`name rest` with single spaces, [a, b]); arguments that are
/// not numbers (enum labels) are dropped.
fn split_args(t: &str) -> (String, Vec<u32>) {
    let Some(open) = t.find('(') else {
        return (
            t.split_whitespace().collect::<Vec<_>>().join(" "),
            Vec::new(),
        );
    };
    let close = t.rfind(')').filter(|&c| c > open).unwrap_or(t.len());
    let inner = t.get(open + 1..close).unwrap_or_default();
    let args = inner
        .split(',')
        .filter_map(|a| a.trim().parse::<u32>().ok())
        .collect();
    let rest = format!(
        "{} {}",
        t.get(..open).unwrap_or_default(),
        t.get(close + 1..).unwrap_or_default()
    );
    (rest.split_whitespace().collect::<Vec<_>>().join(" "), args)
}

fn decimal(base: &str, args: &[u32]) -> SqlType {
    let mut t = SqlType::of(ColumnKind::Decimal, base);
    t.precision = args.first().copied();
    t.scale = t.precision.map(|_| args.get(1).copied().unwrap_or(0));
    t
}

fn text(base: &str, length: Option<u32>, fixed: bool) -> SqlType {
    let mut t = SqlType::of(ColumnKind::Text, base);
    t.length = length;
    t.fixed = fixed;
    t
}

fn with_precision(kind: ColumnKind, base: &str, args: &[u32]) -> SqlType {
    let mut t = SqlType::of(kind, base);
    t.precision = args.first().copied();
    t
}

fn parse_postgres(t: &str) -> SqlType {
    if let Some(element) = t.strip_suffix("[]") {
        let mut a = SqlType::of(
            ColumnKind::Other,
            &parse_postgres(element.trim_end_matches("[]")).base,
        );
        a.array = true;
        return a;
    }
    let (base, args) = split_args(t);
    let b = base.as_str();
    match b {
        "smallint" | "integer" | "bigint" | "int2" | "int4" | "int8" | "smallserial" | "serial"
        | "bigserial" => SqlType::of(ColumnKind::Integer, b),
        "numeric" | "decimal" => decimal(b, &args),
        "real" | "double precision" | "float4" | "float8" => SqlType::of(ColumnKind::Float, b),
        "boolean" | "bool" => SqlType::of(ColumnKind::Bool, b),
        "text" => text(b, None, false),
        "character varying" | "varchar" => text(b, args.first().copied(), false),
        "character" | "char" | "bpchar" => text(b, args.first().copied().or(Some(1)), true),
        "bytea" => SqlType::of(ColumnKind::Bytes, b),
        "date" => SqlType::of(ColumnKind::Date, b),
        "time without time zone" | "time" => with_precision(ColumnKind::Time, b, &args),
        "timestamp without time zone" | "timestamp" => {
            with_precision(ColumnKind::Timestamp, b, &args)
        }
        "timestamp with time zone" | "timestamptz" => {
            with_precision(ColumnKind::TimestampTz, b, &args)
        }
        // interval, uuid, json, jsonb, inet, point, ranges, enums, time with time zone, money…
        _ => SqlType::of(ColumnKind::Other, b),
    }
}

fn parse_mysql(t: &str) -> SqlType {
    let (base, args) = split_args(t);
    let words: Vec<&str> = base.split(' ').collect();
    let unsigned = words.contains(&"unsigned");
    let b = words.first().copied().unwrap_or_default();
    match b {
        "tinyint" if args.first() == Some(&1) && !unsigned => SqlType::of(ColumnKind::Bool, b),
        "bool" | "boolean" => SqlType::of(ColumnKind::Bool, b),
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" => {
            let mut i = SqlType::of(ColumnKind::Integer, b);
            i.unsigned_64 = unsigned && b == "bigint";
            i
        }
        "bit" => {
            let mut i = SqlType::of(ColumnKind::Integer, b);
            i.unsigned_64 = args.first().copied().unwrap_or(1) > 63;
            i
        }
        "decimal" | "numeric" | "dec" | "fixed" => {
            // MariaDB's DECIMAL without arguments is DECIMAL(10,0).
            decimal(b, if args.is_empty() { &[10, 0] } else { &args })
        }
        "float" | "double" | "real" => SqlType::of(ColumnKind::Float, b),
        "char" => text(b, args.first().copied().or(Some(1)), true),
        "varchar" => text(b, args.first().copied(), false),
        // Lengths in bytes; none is a limit a target must keep.
        "tinytext" | "text" | "mediumtext" | "longtext" | "json" | "enum" | "set" => {
            text(b, None, false)
        }
        "binary" => {
            let mut x = SqlType::of(ColumnKind::Bytes, b);
            x.length = args.first().copied().or(Some(1));
            x.fixed = true;
            x
        }
        "varbinary" => {
            let mut x = SqlType::of(ColumnKind::Bytes, b);
            x.length = args.first().copied();
            x
        }
        "tinyblob" | "blob" | "mediumblob" | "longblob" => SqlType::of(ColumnKind::Bytes, b),
        "date" => SqlType::of(ColumnKind::Date, b),
        "time" => with_precision(ColumnKind::Time, b, &args),
        "datetime" => with_precision(ColumnKind::Timestamp, b, &args),
        // A point in time: stored as UTC, shown in the session's zone (UTC for tidemark).
        "timestamp" => with_precision(ColumnKind::TimestampTz, b, &args),
        // uuid, inet4, inet6, geometry types…
        _ => SqlType::of(ColumnKind::Other, b),
    }
}

fn parse_sqlite(t: &str) -> SqlType {
    let (base, _) = split_args(t);
    let b = base.as_str();
    // Declared names that say more than their affinity (lengths and precisions are not
    // enforced by SQLite, so none is kept).
    match b {
        "boolean" | "bool" => return SqlType::of(ColumnKind::Bool, b),
        "date" => return SqlType::of(ColumnKind::Date, b),
        "datetime" | "timestamp without time zone" => return SqlType::of(ColumnKind::Timestamp, b),
        "timestamp" | "timestamptz" | "timestamp with time zone" => {
            return SqlType::of(ColumnKind::TimestampTz, b)
        }
        "time" => return SqlType::of(ColumnKind::Time, b),
        "decimal" | "numeric" => return SqlType::of(ColumnKind::Decimal, b),
        _ => {}
    }
    // The affinity rules of https://www.sqlite.org/datatype3.html §3.1, in their order.
    if b.contains("int") {
        SqlType::of(ColumnKind::Integer, b)
    } else if b.contains("char") || b.contains("clob") || b.contains("text") {
        text(b, None, false)
    } else if b.is_empty() {
        // No type (affinity BLOB, "none"): values keep whatever type each was given; they
        // travel as text (a blob as its `\x` hex).
        text(b, None, false)
    } else if b.contains("blob") {
        SqlType::of(ColumnKind::Bytes, b)
    } else if b.contains("real") || b.contains("floa") || b.contains("doub") {
        SqlType::of(ColumnKind::Float, b)
    } else {
        // NUMERIC affinity under a name that is not a number's (JSON, UUID, STRING…): numbers
        // and text alike travel as their text.
        SqlType::of(ColumnKind::Other, b)
    }
}

/// The widest exact decimal MariaDB has: 65 digits, 30 of them after the point.
pub const MYSQL_WIDEST_DECIMAL: (u32, u32) = (65, 30);

/// The longest VARCHAR/VARBINARY tidemark creates on MariaDB (4,096 bytes in utf8mb4, so that
/// a few such columns stay within the 65,535-byte row limit); longer ones become LONGTEXT /
/// LONGBLOB. Also the longest key, within InnoDB's 3,072-byte index limit.
pub const MYSQL_LONGEST_VARCHAR: u32 = 768;

/// The PostgreSQL types a PostgreSQL target is created with as they are (everything else not
/// mapped by kind becomes TEXT: enums and other user-defined types may not exist there).
const PG_BUILTIN_OTHER: &[&str] = &[
    "uuid",
    "json",
    "jsonb",
    "inet",
    "cidr",
    "macaddr",
    "interval",
    "point",
    "int4range",
    "int8range",
    "numrange",
    "daterange",
    "tsrange",
    "tstzrange",
    "xml",
    "smallint",
    "integer",
    "bigint",
    "numeric",
    "real",
    "double precision",
    "boolean",
    "text",
    "character varying",
    "character",
    "bytea",
    "date",
    "time without time zone",
    "timestamp without time zone",
    "timestamp with time zone",
];

/// The type of `column` (read from a `source` database's catalog) in a table created on
/// `target`; `key`: the column is part of the primary key. Never narrower than the source's:
/// a type the target cannot hold exactly is text there, or refused naming column and type.
pub fn created_type(
    source: DbKind,
    target: DbKind,
    table: &str,
    column: &Column,
    key: bool,
) -> Result<String> {
    let t = SqlType::parse(source, &column.sql_type);
    // SQLite enforces no declared length or precision: its values may be any size.
    let bounded = source != DbKind::Sqlite;
    let length = t.length.filter(|_| bounded);
    let refuse = |why: &str| Error::UnfitTable {
        table: table.to_string(),
        reason: format!("column {} of type {} {why}", column.name, column.sql_type),
    };
    Ok(match target {
        DbKind::Postgres => match t.kind {
            ColumnKind::Bool => "BOOLEAN".into(),
            ColumnKind::Integer if t.unsigned_64 => "NUMERIC(20,0)".into(),
            ColumnKind::Integer => "BIGINT".into(),
            ColumnKind::Float => "DOUBLE PRECISION".into(),
            ColumnKind::Decimal => match (t.precision.filter(|_| bounded), t.scale) {
                // PostgreSQL's NUMERIC(p,s) allows p up to 1000.
                (Some(p), Some(s)) if p <= 1000 => format!("NUMERIC({p},{s})"),
                _ => "NUMERIC".into(),
            },
            ColumnKind::Text => match length {
                Some(n) if t.fixed => format!("CHAR({n})"),
                Some(n) => format!("VARCHAR({n})"),
                None => "TEXT".into(),
            },
            ColumnKind::Bytes => "BYTEA".into(),
            ColumnKind::Date => "DATE".into(),
            // MariaDB's TIME is a duration (−838:59:59 to 838:59:59), which INTERVAL holds.
            ColumnKind::Time if source == DbKind::Mysql => "INTERVAL".into(),
            ColumnKind::Time => "TIME".into(),
            ColumnKind::Timestamp => "TIMESTAMP".into(),
            ColumnKind::TimestampTz => "TIMESTAMPTZ".into(),
            ColumnKind::Other
                if source == DbKind::Postgres && PG_BUILTIN_OTHER.contains(&t.base.as_str()) =>
            {
                // Built-in types (and arrays of them) cast from their own text form.
                column.sql_type.clone()
            }
            ColumnKind::Other => "TEXT".into(),
        },
        DbKind::Mysql => match t.kind {
            ColumnKind::Bool => "BOOLEAN".into(),
            ColumnKind::Integer if t.unsigned_64 => "BIGINT UNSIGNED".into(),
            ColumnKind::Integer => "BIGINT".into(),
            ColumnKind::Float => "DOUBLE".into(),
            ColumnKind::Decimal => {
                let (wp, ws) = MYSQL_WIDEST_DECIMAL;
                match (t.precision.filter(|_| bounded), t.scale) {
                    (Some(p), Some(s)) if p <= wp && s <= 38 => {
                        format!("DECIMAL({p},{s})")
                    }
                    (Some(_), Some(_)) => {
                        return Err(refuse(&format!(
                            "does not fit MariaDB's widest DECIMAL({wp},{ws}); create the \
                             target table yourself (for example with the column as LONGTEXT)"
                        )))
                    }
                    _ => format!("DECIMAL({wp},{ws})"),
                }
            }
            ColumnKind::Text | ColumnKind::Other => match length {
                Some(n) if t.fixed && n <= 255 => format!("CHAR({n})"),
                Some(n) if n <= MYSQL_LONGEST_VARCHAR => format!("VARCHAR({n})"),
                _ if key => {
                    return Err(refuse(&format!(
                        "is part of the primary key, which MariaDB can only index with a \
                         length (at most VARCHAR({MYSQL_LONGEST_VARCHAR})), and the source's \
                         values may be longer; create the target table yourself with a key \
                         length that holds your data"
                    )))
                }
                _ => "LONGTEXT".into(),
            },
            ColumnKind::Bytes => match length {
                Some(n) if t.fixed && n <= 255 => format!("BINARY({n})"),
                Some(n) if n <= MYSQL_LONGEST_VARCHAR => format!("VARBINARY({n})"),
                _ if key => {
                    return Err(refuse(&format!(
                        "is part of the primary key, which MariaDB can only index with a \
                         length (at most VARBINARY({MYSQL_LONGEST_VARCHAR})), and the source's \
                         values may be longer; create the target table yourself"
                    )))
                }
                _ => "LONGBLOB".into(),
            },
            ColumnKind::Date => "DATE".into(),
            ColumnKind::Time => "TIME(6)".into(),
            // DATETIME holds years 1000 (in practice 0001) to 9999 where TIMESTAMP stops in
            // 2038; tidemark writes and reads it as UTC (its sessions run in UTC).
            ColumnKind::Timestamp | ColumnKind::TimestampTz => "DATETIME(6)".into(),
        },
        DbKind::Sqlite => match t.kind {
            ColumnKind::Bool => "BOOLEAN".into(),
            // Beyond 2^63 − 1 SQLite's INTEGER would turn the value into an inexact REAL.
            ColumnKind::Integer if t.unsigned_64 => "TEXT".into(),
            ColumnKind::Integer => "INTEGER".into(),
            ColumnKind::Float => "REAL".into(),
            // NUMERIC affinity stores a decimal as a double: exact up to 15 digits only.
            ColumnKind::Decimal => match (t.precision.filter(|_| bounded), t.scale) {
                (Some(p), Some(s)) if p <= 15 => format!("NUMERIC({p},{s})"),
                _ if source == DbKind::Sqlite => "NUMERIC".into(),
                _ => "TEXT".into(),
            },
            ColumnKind::Text => match length {
                Some(n) if t.fixed => format!("CHAR({n})"),
                Some(n) => format!("VARCHAR({n})"),
                None => "TEXT".into(),
            },
            ColumnKind::Bytes => "BLOB".into(),
            ColumnKind::Date => "DATE".into(),
            ColumnKind::Time => "TIME".into(),
            ColumnKind::Timestamp | ColumnKind::TimestampTz => "TIMESTAMPTZ".into(),
            ColumnKind::Other => "TEXT".into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::Ident;
    use ColumnKind::*;

    /// Every common catalog type: (engine, catalog spelling, kind, created type on
    /// PostgreSQL, MariaDB, SQLite).
    const TABLE: &[(DbKind, &str, ColumnKind, &str, &str, &str)] = &[
        (
            DbKind::Postgres,
            "smallint",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Postgres,
            "integer",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Postgres,
            "bigint",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Postgres,
            "numeric(12,3)",
            Decimal,
            "NUMERIC(12,3)",
            "DECIMAL(12,3)",
            "NUMERIC(12,3)",
        ),
        (
            DbKind::Postgres,
            "numeric(38,0)",
            Decimal,
            "NUMERIC(38,0)",
            "DECIMAL(38,0)",
            "TEXT",
        ),
        (
            DbKind::Postgres,
            "numeric",
            Decimal,
            "NUMERIC",
            "DECIMAL(65,30)",
            "TEXT",
        ),
        (
            DbKind::Postgres,
            "real",
            Float,
            "DOUBLE PRECISION",
            "DOUBLE",
            "REAL",
        ),
        (
            DbKind::Postgres,
            "double precision",
            Float,
            "DOUBLE PRECISION",
            "DOUBLE",
            "REAL",
        ),
        (
            DbKind::Postgres,
            "boolean",
            Bool,
            "BOOLEAN",
            "BOOLEAN",
            "BOOLEAN",
        ),
        (DbKind::Postgres, "text", Text, "TEXT", "LONGTEXT", "TEXT"),
        (
            DbKind::Postgres,
            "character varying(20)",
            Text,
            "VARCHAR(20)",
            "VARCHAR(20)",
            "VARCHAR(20)",
        ),
        (
            DbKind::Postgres,
            "character varying(5000)",
            Text,
            "VARCHAR(5000)",
            "LONGTEXT",
            "VARCHAR(5000)",
        ),
        (
            DbKind::Postgres,
            "character varying",
            Text,
            "TEXT",
            "LONGTEXT",
            "TEXT",
        ),
        (
            DbKind::Postgres,
            "character(5)",
            Text,
            "CHAR(5)",
            "CHAR(5)",
            "CHAR(5)",
        ),
        (
            DbKind::Postgres,
            "bytea",
            Bytes,
            "BYTEA",
            "LONGBLOB",
            "BLOB",
        ),
        (DbKind::Postgres, "date", Date, "DATE", "DATE", "DATE"),
        (
            DbKind::Postgres,
            "time without time zone",
            Time,
            "TIME",
            "TIME(6)",
            "TIME",
        ),
        (
            DbKind::Postgres,
            "time(3) without time zone",
            Time,
            "TIME",
            "TIME(6)",
            "TIME",
        ),
        (
            DbKind::Postgres,
            "time with time zone",
            Other,
            "TEXT",
            "LONGTEXT",
            "TEXT",
        ),
        (
            DbKind::Postgres,
            "timestamp without time zone",
            Timestamp,
            "TIMESTAMP",
            "DATETIME(6)",
            "TIMESTAMPTZ",
        ),
        (
            DbKind::Postgres,
            "timestamp(3) with time zone",
            TimestampTz,
            "TIMESTAMPTZ",
            "DATETIME(6)",
            "TIMESTAMPTZ",
        ),
        (
            DbKind::Postgres,
            "timestamp with time zone",
            TimestampTz,
            "TIMESTAMPTZ",
            "DATETIME(6)",
            "TIMESTAMPTZ",
        ),
        (
            DbKind::Postgres,
            "interval",
            Other,
            "interval",
            "LONGTEXT",
            "TEXT",
        ),
        (DbKind::Postgres, "uuid", Other, "uuid", "LONGTEXT", "TEXT"),
        (DbKind::Postgres, "json", Other, "json", "LONGTEXT", "TEXT"),
        (
            DbKind::Postgres,
            "jsonb",
            Other,
            "jsonb",
            "LONGTEXT",
            "TEXT",
        ),
        (DbKind::Postgres, "inet", Other, "inet", "LONGTEXT", "TEXT"),
        (
            DbKind::Postgres,
            "point",
            Other,
            "point",
            "LONGTEXT",
            "TEXT",
        ),
        (
            DbKind::Postgres,
            "int4range",
            Other,
            "int4range",
            "LONGTEXT",
            "TEXT",
        ),
        (
            DbKind::Postgres,
            "integer[]",
            Other,
            "integer[]",
            "LONGTEXT",
            "TEXT",
        ),
        (
            DbKind::Postgres,
            "character varying(3)[]",
            Other,
            "character varying(3)[]",
            "LONGTEXT",
            "TEXT",
        ),
        (DbKind::Postgres, "mood", Other, "TEXT", "LONGTEXT", "TEXT"),
        (
            DbKind::Postgres,
            "mood[]",
            Other,
            "TEXT",
            "LONGTEXT",
            "TEXT",
        ),
        (
            DbKind::Mysql,
            "tinyint(1)",
            Bool,
            "BOOLEAN",
            "BOOLEAN",
            "BOOLEAN",
        ),
        (
            DbKind::Mysql,
            "tinyint(4)",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Mysql,
            "tinyint(3) unsigned",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Mysql,
            "smallint(6)",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Mysql,
            "mediumint(8) unsigned",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Mysql,
            "int(11)",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Mysql,
            "int(10) unsigned zerofill",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Mysql,
            "bigint(20)",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Mysql,
            "bigint(20) unsigned",
            Integer,
            "NUMERIC(20,0)",
            "BIGINT UNSIGNED",
            "TEXT",
        ),
        (
            DbKind::Mysql,
            "decimal(12,3)",
            Decimal,
            "NUMERIC(12,3)",
            "DECIMAL(12,3)",
            "NUMERIC(12,3)",
        ),
        (
            DbKind::Mysql,
            "decimal(65,30) unsigned",
            Decimal,
            "NUMERIC(65,30)",
            "DECIMAL(65,30)",
            "TEXT",
        ),
        (
            DbKind::Mysql,
            "float",
            Float,
            "DOUBLE PRECISION",
            "DOUBLE",
            "REAL",
        ),
        (
            DbKind::Mysql,
            "double",
            Float,
            "DOUBLE PRECISION",
            "DOUBLE",
            "REAL",
        ),
        (
            DbKind::Mysql,
            "bit(1)",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Mysql,
            "bit(64)",
            Integer,
            "NUMERIC(20,0)",
            "BIGINT UNSIGNED",
            "TEXT",
        ),
        (
            DbKind::Mysql,
            "char(5)",
            Text,
            "CHAR(5)",
            "CHAR(5)",
            "CHAR(5)",
        ),
        (
            DbKind::Mysql,
            "varchar(20)",
            Text,
            "VARCHAR(20)",
            "VARCHAR(20)",
            "VARCHAR(20)",
        ),
        (DbKind::Mysql, "tinytext", Text, "TEXT", "LONGTEXT", "TEXT"),
        (DbKind::Mysql, "text", Text, "TEXT", "LONGTEXT", "TEXT"),
        (
            DbKind::Mysql,
            "mediumtext",
            Text,
            "TEXT",
            "LONGTEXT",
            "TEXT",
        ),
        (DbKind::Mysql, "longtext", Text, "TEXT", "LONGTEXT", "TEXT"),
        (
            DbKind::Mysql,
            "tinyblob",
            Bytes,
            "BYTEA",
            "LONGBLOB",
            "BLOB",
        ),
        (DbKind::Mysql, "blob", Bytes, "BYTEA", "LONGBLOB", "BLOB"),
        (
            DbKind::Mysql,
            "mediumblob",
            Bytes,
            "BYTEA",
            "LONGBLOB",
            "BLOB",
        ),
        (
            DbKind::Mysql,
            "longblob",
            Bytes,
            "BYTEA",
            "LONGBLOB",
            "BLOB",
        ),
        (
            DbKind::Mysql,
            "binary(4)",
            Bytes,
            "BYTEA",
            "BINARY(4)",
            "BLOB",
        ),
        (
            DbKind::Mysql,
            "varbinary(16)",
            Bytes,
            "BYTEA",
            "VARBINARY(16)",
            "BLOB",
        ),
        (DbKind::Mysql, "date", Date, "DATE", "DATE", "DATE"),
        (DbKind::Mysql, "time", Time, "INTERVAL", "TIME(6)", "TIME"),
        (
            DbKind::Mysql,
            "time(6)",
            Time,
            "INTERVAL",
            "TIME(6)",
            "TIME",
        ),
        (
            DbKind::Mysql,
            "datetime(6)",
            Timestamp,
            "TIMESTAMP",
            "DATETIME(6)",
            "TIMESTAMPTZ",
        ),
        (
            DbKind::Mysql,
            "timestamp(6)",
            TimestampTz,
            "TIMESTAMPTZ",
            "DATETIME(6)",
            "TIMESTAMPTZ",
        ),
        (
            DbKind::Mysql,
            "timestamp",
            TimestampTz,
            "TIMESTAMPTZ",
            "DATETIME(6)",
            "TIMESTAMPTZ",
        ),
        (
            DbKind::Mysql,
            "year(4)",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Mysql,
            "enum('a','b')",
            Text,
            "TEXT",
            "LONGTEXT",
            "TEXT",
        ),
        (
            DbKind::Mysql,
            "set('x','y')",
            Text,
            "TEXT",
            "LONGTEXT",
            "TEXT",
        ),
        (DbKind::Mysql, "uuid", Other, "TEXT", "LONGTEXT", "TEXT"),
        (
            DbKind::Sqlite,
            "INTEGER",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Sqlite,
            "BIGINT",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Sqlite,
            "REAL",
            Float,
            "DOUBLE PRECISION",
            "DOUBLE",
            "REAL",
        ),
        (
            DbKind::Sqlite,
            "DOUBLE PRECISION",
            Float,
            "DOUBLE PRECISION",
            "DOUBLE",
            "REAL",
        ),
        (
            DbKind::Sqlite,
            "FLOAT",
            Float,
            "DOUBLE PRECISION",
            "DOUBLE",
            "REAL",
        ),
        (DbKind::Sqlite, "TEXT", Text, "TEXT", "LONGTEXT", "TEXT"),
        // SQLite does not enforce the length: a target must not either.
        (
            DbKind::Sqlite,
            "VARCHAR(20)",
            Text,
            "TEXT",
            "LONGTEXT",
            "TEXT",
        ),
        (DbKind::Sqlite, "CLOB", Text, "TEXT", "LONGTEXT", "TEXT"),
        (DbKind::Sqlite, "BLOB", Bytes, "BYTEA", "LONGBLOB", "BLOB"),
        (DbKind::Sqlite, "", Text, "TEXT", "LONGTEXT", "TEXT"),
        (
            DbKind::Sqlite,
            "NUMERIC",
            Decimal,
            "NUMERIC",
            "DECIMAL(65,30)",
            "NUMERIC",
        ),
        (
            DbKind::Sqlite,
            "DECIMAL(12,3)",
            Decimal,
            "NUMERIC",
            "DECIMAL(65,30)",
            "NUMERIC",
        ),
        (
            DbKind::Sqlite,
            "BOOLEAN",
            Bool,
            "BOOLEAN",
            "BOOLEAN",
            "BOOLEAN",
        ),
        (DbKind::Sqlite, "DATE", Date, "DATE", "DATE", "DATE"),
        (
            DbKind::Sqlite,
            "DATETIME",
            Timestamp,
            "TIMESTAMP",
            "DATETIME(6)",
            "TIMESTAMPTZ",
        ),
        (
            DbKind::Sqlite,
            "TIMESTAMP",
            TimestampTz,
            "TIMESTAMPTZ",
            "DATETIME(6)",
            "TIMESTAMPTZ",
        ),
        (
            DbKind::Sqlite,
            "TIMESTAMPTZ",
            TimestampTz,
            "TIMESTAMPTZ",
            "DATETIME(6)",
            "TIMESTAMPTZ",
        ),
        // Affinity rules, in SQLite's order: "INT" wins (even in POINT), then text, blob, real.
        (
            DbKind::Sqlite,
            "POINT",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (
            DbKind::Sqlite,
            "CHARINT",
            Integer,
            "BIGINT",
            "BIGINT",
            "INTEGER",
        ),
        (DbKind::Sqlite, "JSON", Other, "TEXT", "LONGTEXT", "TEXT"),
    ];

    fn column(sql_type: &str, kind: ColumnKind) -> Column {
        Column {
            name: Ident::new("c").unwrap(),
            sql_type: sql_type.into(),
            kind,
            nullable: true,
        }
    }

    #[test]
    fn every_common_type_is_classified_and_mapped_exactly() {
        for &(engine, spelling, kind, pg, my, sq) in TABLE {
            assert_eq!(
                SqlType::parse(engine, spelling).kind,
                kind,
                "{engine} {spelling:?}"
            );
            assert_eq!(super::super::classify_type(engine, spelling), kind);
            let c = column(spelling, kind);
            for (target, want) in [
                (DbKind::Postgres, pg),
                (DbKind::Mysql, my),
                (DbKind::Sqlite, sq),
            ] {
                let got = created_type(engine, target, "t", &c, false)
                    .unwrap_or_else(|e| panic!("{engine} {spelling:?} on {target}: {e}"));
                assert_eq!(got, want, "{engine} {spelling:?} on {target}");
            }
        }
    }

    #[test]
    fn precision_scale_and_length_are_read() {
        let t = SqlType::parse(DbKind::Postgres, "numeric(12,3)");
        assert_eq!((t.precision, t.scale), (Some(12), Some(3)));
        let t = SqlType::parse(DbKind::Postgres, "numeric(12)");
        assert_eq!((t.precision, t.scale), (Some(12), Some(0)));
        let t = SqlType::parse(DbKind::Mysql, "decimal");
        assert_eq!((t.precision, t.scale), (Some(10), Some(0)));
        let t = SqlType::parse(DbKind::Mysql, "varchar(191)");
        assert_eq!((t.length, t.fixed), (Some(191), false));
        let t = SqlType::parse(DbKind::Postgres, "integer[]");
        assert!(t.array && t.base == "integer");
        assert!(SqlType::parse(DbKind::Mysql, "bigint(20) unsigned").unsigned_64);
        assert!(!SqlType::parse(DbKind::Mysql, "int(10) unsigned").unsigned_64);
    }

    #[test]
    fn keys_a_target_cannot_index_whole_are_refused_by_name() {
        let c = column("text", Text);
        let err = created_type(DbKind::Postgres, DbKind::Mysql, "t", &c, true).unwrap_err();
        let msg = err.to_string();
        assert!(err.is_input_error(), "{msg}");
        assert!(
            msg.contains("column c of type text") && msg.contains("primary key"),
            "{msg}"
        );
        let c = column("character varying(200)", Text);
        assert_eq!(
            created_type(DbKind::Postgres, DbKind::Mysql, "t", &c, true).unwrap(),
            "VARCHAR(200)"
        );
        let c = column("numeric(80,2)", Decimal);
        let err = created_type(DbKind::Postgres, DbKind::Mysql, "t", &c, false).unwrap_err();
        assert!(err.to_string().contains("DECIMAL(65,30)"), "{err}");
    }
}
