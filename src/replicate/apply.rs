//! The target side of replication: creating or checking the target table, and turning batches
//! of delta rows (operation + column texts) into multi-row statements of the target's dialect —
//! `DELETE … WHERE key IN (…)` and upserts (`ON CONFLICT … DO UPDATE` on PostgreSQL and SQLite,
//! `ON DUPLICATE KEY UPDATE` on MariaDB) — with each text converted to the column's type. Also
//! the reader of PostgreSQL's COPY CSV records, which tells NULL (empty) from "" (quoted).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::db::{
    types, Column, ColumnKind, Database, DbKind, Dialect, Param, TableInfo, Transaction,
};
use crate::error::{Error, Result};
use crate::ident::{Ident, TableName};

/// What a delta row asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Upsert,
    Delete,
}

/// One delta row: the operation as the source named it and the column texts in source order,
/// shared so that binding them to a statement copies nothing.
#[derive(Debug, Clone)]
pub struct Change {
    pub op: Op,
    pub op_name: &'static str,
    pub values: Vec<Option<Arc<str>>>,
}

impl Change {
    /// Builds a change from a delta row's fields (operation first).
    pub fn from_fields<T: AsRef<str> + Into<Arc<str>>>(
        fields: impl IntoIterator<Item = Option<T>>,
    ) -> std::io::Result<Change> {
        let mut it = fields.into_iter();
        let first = it.next().flatten();
        let (op, op_name) = match first.as_ref().map(AsRef::as_ref) {
            Some("DELETE") => (Op::Delete, "DELETE"),
            Some("INSERT") => (Op::Upsert, "INSERT"),
            Some("UPDATE") => (Op::Upsert, "UPDATE"),
            other => {
                return Err(std::io::Error::other(format!(
                    "unknown operation {other:?} in delta row"
                )))
            }
        };
        Ok(Change {
            op,
            op_name,
            values: it.map(|v| v.map(Into::into)).collect(),
        })
    }
}

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The largest number of parameters one statement binds (SQLite allows 32,766).
const MAX_PARAMS: usize = 30_000;

/// The most rows one statement carries.
const MAX_ROWS: usize = 1024;

/// Splits `items` into statements of `max` rows, the rest into powers of two: the statements
/// of a run come in a few sizes only, so the connection's cache of prepared statements stays
/// small (every distinct row count would be a new large statement) and memory stays flat.
fn chunks<T>(items: &[T], max: usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let n = if rest.len() >= max {
            max
        } else {
            1 << rest.len().ilog2()
        };
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

/// The statements that apply changes to one target table.
pub struct TargetTable {
    kind: DbKind,
    table: TableName,
    /// Source column names, in source (delta) order.
    columns: Vec<Ident>,
    /// Positions of the primary key columns in `columns`.
    key: Vec<usize>,
    /// Per column: the value expression with one `?`.
    exprs: Vec<String>,
    insert_head: String,
    upsert_tail: String,
    /// Rows per statement.
    per_statement: usize,
}

impl TargetTable {
    /// Creates the target table if it is missing (types mapped from the source's, same primary
    /// key), or checks that it has the source's columns and key; then plans the statements.
    pub async fn prepare(
        target: &dyn Database,
        source_kind: DbKind,
        source: &TableInfo,
        name: &TableName,
    ) -> Result<TargetTable> {
        let d = target.dialect();
        let existing = match target.describe(name).await {
            Ok(info) => Some(info),
            Err(Error::UnknownTable(_)) => None,
            Err(e) => return Err(e),
        };
        let info = match existing {
            Some(info) => {
                check_columns(source, &info)?;
                info
            }
            None => {
                let ddl = create_table(d, source_kind, source, name)?;
                target.execute(&ddl, &[]).await?;
                target.describe(name).await?
            }
        };
        Self::plan(d, source, &info)
    }

    fn plan(d: &dyn Dialect, source: &TableInfo, target: &TableInfo) -> Result<TargetTable> {
        let kind = d.kind();
        let columns: Vec<Ident> = source.columns.iter().map(|c| c.name.clone()).collect();
        let key: Vec<usize> = source
            .primary_key
            .iter()
            .filter_map(|k| columns.iter().position(|c| c == k))
            .collect();
        if key.is_empty() || key.len() != source.primary_key.len() {
            return Err(Error::UnfitTable {
                table: source.name.to_string(),
                reason: "it has no primary key".into(),
            });
        }
        let mut exprs = Vec::with_capacity(columns.len());
        for c in &columns {
            let col = target.column(c.as_str()).ok_or_else(|| Error::UnfitTable {
                table: target.name.to_string(),
                reason: format!("column {c:?} is missing"),
            })?;
            exprs.push(value_expr(kind, col));
        }
        let quoted: Vec<String> = columns.iter().map(|c| d.quote(c)).collect();
        let insert_head = format!(
            "INSERT INTO {} ({}) VALUES ",
            d.quote_table(&target.name),
            quoted.join(", ")
        );
        let non_key: Vec<&String> = quoted
            .iter()
            .enumerate()
            .filter(|(i, _)| !key.contains(i))
            .map(|(_, q)| q)
            .collect();
        let key_list: Vec<&str> = key.iter().map(|&i| quoted[i].as_str()).collect();
        let upsert_tail = match kind {
            DbKind::Mysql => {
                let sets: Vec<String> = if non_key.is_empty() {
                    vec![format!("{0} = {0}", key_list[0])]
                } else {
                    non_key
                        .iter()
                        .map(|q| format!("{q} = VALUES({q})"))
                        .collect()
                };
                format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
            }
            DbKind::Postgres | DbKind::Sqlite => {
                if non_key.is_empty() {
                    format!(" ON CONFLICT ({}) DO NOTHING", key_list.join(", "))
                } else {
                    let sets: Vec<String> = non_key
                        .iter()
                        .map(|q| format!("{q} = excluded.{q}"))
                        .collect();
                    format!(
                        " ON CONFLICT ({}) DO UPDATE SET {}",
                        key_list.join(", "),
                        sets.join(", ")
                    )
                }
            }
        };
        let per_statement = (MAX_PARAMS / columns.len().max(1)).clamp(1, MAX_ROWS);
        Ok(TargetTable {
            kind,
            table: target.name.clone(),
            columns,
            key,
            exprs,
            insert_head,
            upsert_tail,
            per_statement,
        })
    }

    /// "UPDATE of users (id=42)": names a change in messages.
    pub fn describe_change(&self, source_table: &TableName, c: &Change) -> String {
        let keys: Vec<String> = self
            .key
            .iter()
            .map(|&i| {
                format!(
                    "{}={}",
                    self.columns[i],
                    c.values.get(i).and_then(|v| v.as_deref()).unwrap_or("NULL")
                )
            })
            .collect();
        format!("{} of {source_table} ({})", c.op_name, keys.join(", "))
    }

    /// The columns a delta row must have.
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// The change's key as one hash (FNV-1a over the key texts, NULL and lengths marked), so
    /// that the set of keys seen in a group is a set of integers: the common case of distinct
    /// keys costs no allocation per change. Equal hashes are compared in full by the caller.
    fn key_hash(&self, c: &Change) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: u8| {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        };
        for &i in &self.key {
            match c.values.get(i).and_then(|v| v.as_deref()) {
                None => eat(0xff),
                Some(v) => {
                    for b in v.bytes() {
                        eat(b);
                    }
                    for b in (v.len() as u64).to_le_bytes() {
                        eat(b);
                    }
                }
            }
        }
        h
    }

    fn same_key(&self, a: &Change, b: &Change) -> bool {
        self.key.iter().all(|&i| {
            a.values.get(i).map(|v| v.as_deref()) == b.values.get(i).map(|v| v.as_deref())
        })
    }

    /// Applies `changes` (each key at most once per group; a repeated key starts a new group so
    /// that order is kept): in each group the deletes, then the upserts, as multi-row statements.
    /// Returns (upserts, deletes).
    pub async fn apply(&self, tx: &mut dyn Transaction, changes: &[Change]) -> Result<(u64, u64)> {
        let mut done = (0u64, 0u64);
        let mut start = 0;
        // Key hash → the first change of the group with that hash.
        let mut seen: HashMap<u64, usize, BuildHasherDefault<Identity>> =
            HashMap::with_capacity_and_hasher(changes.len(), BuildHasherDefault::default());
        for (i, c) in changes.iter().enumerate() {
            if c.values.len() != self.columns.len() {
                return Err(Error::Runtime(format!(
                    "delta row has {} columns, expected {}",
                    c.values.len(),
                    self.columns.len()
                )));
            }
            let h = self.key_hash(c);
            let repeated = match seen.get(&h) {
                None => false,
                // Every change of the group with this hash comes at or after the first one:
                // compare the keys in full (two different keys may share a hash).
                Some(&j) => changes[start..i]
                    .iter()
                    .skip(j - start)
                    .any(|o| self.key_hash(o) == h && self.same_key(o, c)),
            };
            if repeated {
                let (u, d) = self.apply_group(tx, &changes[start..i]).await?;
                done = (done.0 + u, done.1 + d);
                start = i;
                seen.clear();
            }
            seen.entry(h).or_insert(i);
        }
        let (u, d) = self.apply_group(tx, &changes[start..]).await?;
        Ok((done.0 + u, done.1 + d))
    }

    async fn apply_group(&self, tx: &mut dyn Transaction, group: &[Change]) -> Result<(u64, u64)> {
        let deletes: Vec<&Change> = group.iter().filter(|c| c.op == Op::Delete).collect();
        let upserts: Vec<&Change> = group.iter().filter(|c| c.op == Op::Upsert).collect();
        let per_delete = (MAX_PARAMS / self.key.len()).clamp(1, MAX_ROWS);
        for chunk in chunks(&deletes, per_delete) {
            let (sql, params) = self.delete_statement(chunk);
            tx.execute(&sql, params).await?;
        }
        for chunk in chunks(&upserts, self.per_statement) {
            let (sql, params) = self.upsert_statement(chunk);
            tx.execute(&sql, params).await?;
        }
        Ok((upserts.len() as u64, deletes.len() as u64))
    }

    fn upsert_statement(&self, rows: &[&Change]) -> (String, Vec<Param>) {
        let one = format!("({})", self.exprs.join(", "));
        let mut sql = String::with_capacity(self.insert_head.len() + rows.len() * (one.len() + 2));
        sql.push_str(&self.insert_head);
        let mut params = Vec::with_capacity(rows.len() * self.columns.len());
        for (i, r) in rows.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&one);
            params.extend(r.values.iter().map(|v| Param::from(v.clone())));
        }
        sql.push_str(&self.upsert_tail);
        (sql, params)
    }

    fn delete_statement(&self, rows: &[&Change]) -> (String, Vec<Param>) {
        let d: &dyn Dialect = dialect_of(self.kind);
        let mut params = Vec::with_capacity(rows.len() * self.key.len());
        let sql = if self.key.len() == 1 {
            let k = self.key[0];
            let list: Vec<&str> = rows.iter().map(|_| self.exprs[k].as_str()).collect();
            params.extend(rows.iter().map(|r| Param::from(r.values[k].clone())));
            format!(
                "DELETE FROM {} WHERE {} IN ({})",
                d.quote_table(&self.table),
                d.quote(&self.columns[k]),
                list.join(", ")
            )
        } else {
            // Row values in IN lists are not portable (SQLite wants a subquery): OR of ANDs.
            let one: Vec<String> = self
                .key
                .iter()
                .map(|&k| format!("{} = {}", d.quote(&self.columns[k]), self.exprs[k]))
                .collect();
            let one = format!("({})", one.join(" AND "));
            for r in rows {
                params.extend(self.key.iter().map(|&k| Param::from(r.values[k].clone())));
            }
            format!(
                "DELETE FROM {} WHERE {}",
                d.quote_table(&self.table),
                vec![one.as_str(); rows.len()].join(" OR ")
            )
        };
        (sql, params)
    }
}

fn dialect_of(kind: DbKind) -> &'static dyn Dialect {
    match kind {
        DbKind::Postgres => &crate::db::postgres::PostgresDialect,
        DbKind::Mysql => &crate::db::mysql::MysqlDialect,
        DbKind::Sqlite => &crate::db::sqlite::SqliteDialect,
    }
}

/// The expression that turns one bound text (as a CSV export renders it: booleans
/// `true`/`false`, timestamps RFC 3339 UTC with microseconds, bytes `\x` hex) into a value of
/// the target column. A NULL stays NULL (PostgreSQL needs the cast even then: a NULL bound as
/// text does not go into a BIGINT column).
fn value_expr(kind: DbKind, col: &Column) -> String {
    match kind {
        // The catalog's own spelling of the type (format_type), so every type casts from text.
        DbKind::Postgres => match col.kind {
            // `\x` hex back to bytes; other text (from a SQLite source's BLOB column) as its
            // UTF-8 bytes, where a cast would read backslashes as escapes.
            ColumnKind::Bytes => "(SELECT CASE WHEN v ~ '^\\\\x([0-9a-fA-F]{2})*$' \
                                  THEN decode(substr(v, 3), 'hex') ELSE convert_to(v, 'UTF8') END \
                                  FROM (SELECT CAST(? AS text) AS v) AS tidemark_value)"
                .into(),
            _ => format!("CAST(? AS {})", col.sql_type),
        },
        DbKind::Mysql => match col.kind {
            ColumnKind::Bool => "(? = 'true')".into(),
            // The text is UTC; tidemark's sessions run in UTC, so a DATETIME holds UTC wall
            // time and a TIMESTAMP the same instant.
            ColumnKind::Timestamp | ColumnKind::TimestampTz => {
                "STR_TO_DATE(?, '%Y-%m-%dT%H:%i:%s.%fZ')".into()
            }
            // MariaDB rounds digits beyond a DECIMAL's scale without an error, even in strict
            // mode: such a value (or one in exponent form) is turned into text that no DECIMAL
            // takes, so the change is refused (error 1366 naming column and value) rather than
            // silently narrowed. Integer digits beyond the precision are refused by the server.
            ColumnKind::Decimal => {
                let t = types::SqlType::parse(DbKind::Mysql, &col.sql_type);
                let (p, sc) = (t.precision.unwrap_or(10), t.scale.unwrap_or(0));
                format!(
                    "(SELECT CASE WHEN v IS NULL OR (v REGEXP '^[-+]?[0-9]*[.]?[0-9]*$' \
                     AND NOT v REGEXP '[.][0-9]{{{sc}}}[0-9]*[1-9]') THEN v \
                     ELSE CONCAT('not exact in DECIMAL({p},{sc}): ', v) END \
                     FROM (SELECT ? AS v) AS tidemark_value)"
                )
            }
            // `\x` hex back to bytes; text from a SQLite source's BLOB column (SQLite types
            // each value) stays as it is.
            ColumnKind::Bytes => {
                "(SELECT CASE WHEN LEFT(v, 2) = CONCAT(CHAR(92 USING utf8mb4), 'x') \
                                  THEN COALESCE(UNHEX(SUBSTRING(v, 3)), v) ELSE v END \
                                  FROM (SELECT ? AS v) AS tidemark_value)"
                    .into()
            }
            _ => "?".into(),
        },
        DbKind::Sqlite => match col.kind {
            ColumnKind::Bool => "(? = 'true')".into(),
            // `\x` hex back to a blob; text from a SQLite source's BLOB column stays as it is.
            ColumnKind::Bytes => "(SELECT CASE WHEN substr(v, 1, 2) = '\\x' \
                                  THEN COALESCE(unhex(substr(v, 3)), v) ELSE v END \
                                  FROM (SELECT ? AS v))"
                .into(),
            // Column affinity turns numeric text into numbers; timestamps stay canonical text.
            _ => "?".into(),
        },
    }
}

/// `CREATE TABLE` of a replica of `source` (read from a `source_kind` database) on `d`'s
/// database: every column of a type that holds all of the source's values
/// ([`types::created_type`]), the same primary key.
fn create_table(
    d: &dyn Dialect,
    source_kind: DbKind,
    source: &TableInfo,
    name: &TableName,
) -> Result<String> {
    let mut parts: Vec<String> = Vec::with_capacity(source.columns.len() + 1);
    for c in &source.columns {
        let key = source.primary_key.contains(&c.name);
        let ty = types::created_type(source_kind, d.kind(), source.name.as_str(), c, key)?;
        parts.push(format!(
            "{} {ty}{}",
            d.quote(&c.name),
            if c.nullable { "" } else { " NOT NULL" }
        ));
    }
    let key: Vec<String> = source.primary_key.iter().map(|k| d.quote(k)).collect();
    parts.push(format!("PRIMARY KEY ({})", key.join(", ")));
    Ok(format!(
        "CREATE TABLE {} ({})",
        d.quote_table(name),
        parts.join(", ")
    ))
}

fn check_columns(source: &TableInfo, target: &TableInfo) -> Result<()> {
    let unfit = |reason: String| Error::UnfitTable {
        table: target.name.to_string(),
        reason: format!("{reason}; it cannot be a replica of {}", source.name),
    };
    let names = |t: &TableInfo| -> Vec<String> {
        let mut v: Vec<String> = t.columns.iter().map(|c| c.name.to_string()).collect();
        v.sort();
        v
    };
    if names(source) != names(target) {
        return Err(unfit(format!(
            "the target has columns {:?}, the source {:?}",
            names(target),
            names(source)
        )));
    }
    if source.primary_key != target.primary_key {
        return Err(unfit(format!(
            "the target's primary key is {:?}, the source's {:?}",
            target.primary_key, source.primary_key
        )));
    }
    Ok(())
}

/// Reads one CSV record as PostgreSQL's COPY writes it (moved to the CSV format, which the
/// export adapters share).
pub use crate::format::csv::parse_csv_record;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_come_in_few_sizes() {
        let v: Vec<u32> = (0..2500).collect();
        let sizes: Vec<usize> = chunks(&v, 1000).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![1000, 1000, 256, 128, 64, 32, 16, 4]);
        assert_eq!(sizes.iter().sum::<usize>(), 2500);
        assert!(chunks::<u32>(&[], 10).is_empty());
    }
}
