//! `tidemark seed`: creates the demo `users` table of the product and fills it with mock users,
//! deterministically (the same ids get the same names, e-mails and ages) and fast (the adapter's
//! bulk path: COPY on PostgreSQL, multi-row inserts elsewhere, one transaction). `created_at`
//! lies in the past; `updated_at` is left to the database clock, so seeding never puts a row
//! behind a watermark.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::db::{ColumnKind, Database, Stmt};
use crate::error::Result;
use crate::ident::Ident;

const FIRST: &[&str] = &[
    "Ada",
    "Alan",
    "Barbara",
    "Claude",
    "Donald",
    "Edsger",
    "Frances",
    "Grace",
    "Hedy",
    "Ivan",
    "John",
    "Katherine",
    "Linus",
    "Margaret",
    "Niklaus",
    "Olga",
    "Peter",
    "Radia",
    "Sophie",
    "Tim",
    "Ursula",
    "Vint",
    "Whitfield",
    "Xiao",
    "Yukihiro",
    "Zoë",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Turing",
    "Liskov",
    "Shannon",
    "Knuth",
    "Dijkstra",
    "Allen",
    "Hopper",
    "Lamarr",
    "Sutherland",
    "Backus",
    "Johnson",
    "Torvalds",
    "Hamilton",
    "Wirth",
    "Taussky",
    "Naur",
    "Perlman",
    "Wilson",
    "Berners-Lee",
    "Franklin",
    "Cerf",
    "Diffie",
    "Li",
    "Matsumoto",
    "O'Neil",
];

/// The demo table's name.
pub const USERS: &str = "users";

/// What seeding did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SeedReport {
    pub table: String,
    pub rows: u64,
    pub first_id: i64,
    pub last_id: i64,
    pub seconds: f64,
}

/// Creates the users table (and its `updated_at` index) if it is missing.
pub async fn create_users_table(db: &dyn Database) -> Result<crate::ident::TableName> {
    let d = db.dialect();
    let table = crate::ident::TableName::unqualified(Ident::new(USERS)?);
    let ts = d.column_type(ColumnKind::TimestampTz, false);
    let now = d.now_expr();
    db.execute(
        &format!(
            "CREATE TABLE IF NOT EXISTS {} (id {} PRIMARY KEY, name {} NOT NULL, \
             email {} NOT NULL UNIQUE, created_at {ts} NOT NULL DEFAULT ({now}), \
             updated_at {ts} NOT NULL DEFAULT ({now}), is_deleted {} NOT NULL DEFAULT FALSE)",
            d.quote_table(&table),
            d.column_type(ColumnKind::Integer, true),
            d.column_type(ColumnKind::Text, false),
            d.column_type(ColumnKind::Text, true),
            d.column_type(ColumnKind::Bool, false),
        ),
        &[],
    )
    .await?;
    let updated_at = Ident::new("updated_at")?;
    db.execute(
        &d.create_index(&Ident::new("users_updated_at_idx")?, &table, &[&updated_at]),
        &[],
    )
    .await?;
    Ok(table)
}

/// The mock user with id `id`: name, e-mail, age in seconds, soft-deleted.
pub fn mock_user(id: i64) -> (String, String, u64, bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(id as u64);
    let first = FIRST[rng.random_range(0..FIRST.len())];
    let last = LAST[rng.random_range(0..LAST.len())];
    let email = format!(
        "{}.{}.{id}@example.com",
        first.to_lowercase(),
        last.to_lowercase().replace('\'', "")
    );
    let age = rng.random_range(1..=365 * 24 * 3600u64);
    let deleted = rng.random_ratio(1, 100);
    (format!("{first} {last}"), email, age, deleted)
}

/// Appends `rows` mock users after the highest existing id; `progress` gets the rows produced.
pub async fn seed_users(
    db: &dyn Database,
    rows: u64,
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<SeedReport> {
    let t0 = Instant::now();
    let table = create_users_table(db).await?;
    let max = db
        .query(
            &format!(
                "SELECT COALESCE(MAX(id), 0) FROM {}",
                db.dialect().quote_table(&table)
            ),
            &[],
        )
        .await?;
    let start: i64 = crate::db::field(crate::db::first_row(&max, "MAX(id)")?, 0)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
        + 1;
    let now = db.now().await?;
    let columns: Vec<Ident> = ["id", "name", "email", "created_at", "is_deleted"]
        .iter()
        .map(|c| Ident::new(c))
        .collect::<Result<_>>()?;
    let d = db.dialect();
    let count = i64::try_from(rows).unwrap_or(i64::MAX);
    let mut produced = 0u64;
    let mut iter = (start..start.saturating_add(count)).map(|id| {
        let (name, email, age, deleted) = mock_user(id);
        let created = now.minus(Duration::from_secs(age));
        produced += 1;
        if produced.is_multiple_of(50_000) {
            if let Some(p) = progress {
                p(produced);
            }
        }
        vec![
            Some(id.to_string()),
            Some(name),
            Some(email),
            Some(d.timestamp_value(&created)),
            Some(if deleted { "1" } else { "0" }.to_string()),
        ]
    });
    let inserted = db.bulk_insert(&table, &columns, &mut iter).await?;
    if let Some(p) = progress {
        p(inserted);
    }
    Ok(SeedReport {
        table: table.to_string(),
        rows: inserted,
        first_id: start,
        last_id: start + i64::try_from(inserted).unwrap_or(0) - 1,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A burst of changes to the users table, as an application would make them.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Burst {
    pub inserts: u64,
    pub updates: u64,
    pub soft_deletes: u64,
    /// Seeds the choice of rows, so that a burst is repeatable.
    pub seed: u64,
}

/// Applies a burst: new users (stamped by the database clock), updates of random users'
/// names and soft deletes of random users, each stamping `updated_at` with the database clock,
/// in one transaction per kind of change.
pub async fn apply_burst(db: &dyn Database, burst: &Burst) -> Result<()> {
    let d = db.dialect();
    let table = crate::ident::TableName::unqualified(Ident::new(USERS)?);
    let t = d.quote_table(&table);
    let max = db
        .query(&format!("SELECT COALESCE(MAX(id), 0) FROM {t}"), &[])
        .await?;
    let max: i64 = crate::db::field(crate::db::first_row(&max, "MAX(id)")?, 0)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut rng = ChaCha8Rng::seed_from_u64(burst.seed);
    let now = d.now_expr();
    if max > 0 {
        let rename = format!("UPDATE {t} SET name = ?, updated_at = {now} WHERE id = ?");
        let soft_delete =
            format!("UPDATE {t} SET is_deleted = TRUE, updated_at = {now} WHERE id = ?");
        let mut stmts = Vec::new();
        for i in 0..burst.updates {
            let id = rng.random_range(1..=max);
            stmts.push(Stmt::new(
                rename.as_str(),
                vec![
                    format!("{} v{}", mock_user(id).0, burst.seed * 1_000_000 + i).into(),
                    id.into(),
                ],
            ));
        }
        for _ in 0..burst.soft_deletes {
            let id = rng.random_range(1..=max);
            stmts.push(Stmt::new(soft_delete.as_str(), vec![id.into()]));
        }
        db.transaction(&stmts).await?;
    }
    let columns: Vec<Ident> = ["id", "name", "email", "is_deleted"]
        .iter()
        .map(|c| Ident::new(c))
        .collect::<Result<_>>()?;
    let count = i64::try_from(burst.inserts).unwrap_or(i64::MAX);
    let mut rows = (max + 1..max + 1 + count).map(|id| {
        let (name, email, _, _) = mock_user(id);
        vec![
            Some(id.to_string()),
            Some(name),
            Some(email),
            Some("0".to_string()),
        ]
    });
    db.bulk_insert(&table, &columns, &mut rows).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_users_are_deterministic_and_unique_by_email() {
        assert_eq!(mock_user(7), mock_user(7));
        let emails: std::collections::HashSet<String> = (1..2000).map(|i| mock_user(i).1).collect();
        assert_eq!(emails.len(), 1999);
        let deleted = (1..10_000).filter(|&i| mock_user(i).3).count();
        assert!((50..200).contains(&deleted), "{deleted}");
    }
}
