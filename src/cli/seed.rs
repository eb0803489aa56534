//! `tidemark seed`: creates the users table if missing and appends deterministic mock users.

use super::output::{Output, SeedOutput};
use super::progress::Rows;
use super::Context;
use crate::db::field;
use crate::seed;

#[derive(clap::Args, Debug)]
pub struct SeedArgs {
    /// Users to append
    #[arg(long)]
    rows: u64,
    /// Do nothing when the users table already has rows (for container start-up)
    #[arg(long)]
    if_empty: bool,
}

pub async fn run(args: &SeedArgs, ctx: &Context) -> anyhow::Result<SeedOutput> {
    let db = ctx.source_with(true).await?;
    if args.if_empty {
        let present = db
            .query(&format!("SELECT count(*) FROM {}", seed::USERS), &[])
            .await
            .ok()
            .and_then(|r| r.first().and_then(|r| field(r, 0).map(str::to_string)))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if present > 0 {
            return Ok(SeedOutput::NotEmpty {
                table: seed::USERS,
                rows: present,
            });
        }
    }
    let rows = Rows::new(ctx.json, "seeding");
    let progress = |n: u64| rows.set(n);
    let report = seed::seed_users(db.as_ref(), args.rows, Some(&progress)).await;
    rows.finish();
    Ok(SeedOutput::Seeded(report?))
}

impl From<SeedOutput> for Output {
    fn from(o: SeedOutput) -> Output {
        Output::Seed(o)
    }
}
