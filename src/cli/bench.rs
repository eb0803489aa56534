//! `tidemark bench`: measures exports and replication against what users would run instead
//! (starts its own PostgreSQL unless given one). Built with the `bench` feature (on by
//! default: the benchmark is a command of the shipped binary).

use std::path::PathBuf;

use anyhow::Context as _;

use super::output;
use super::Context;
use crate::bench::{BenchOptions, BenchReport};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Rows in the full-export comparisons
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Use this PostgreSQL server instead of starting one (its database is modified)
    #[arg(long)]
    pg_url: Option<String>,
    /// Working directory for databases and files [default: a temporary directory]
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Changes in the replication benchmark
    #[arg(long, default_value_t = 160_000)]
    changes: u64,
    /// Run only the replication benchmark
    #[arg(long)]
    replication_only: bool,
    /// Run only the write overhead of capture (SQLite and PostgreSQL, pgbench included)
    #[arg(long, conflicts_with = "replication_only")]
    capture_only: bool,
}

pub async fn run(args: &BenchArgs, ctx: &Context) -> anyhow::Result<BenchReport> {
    let opts = BenchOptions {
        rows: args.rows,
        pg_url: args.pg_url.clone(),
        dir: args.dir.clone(),
        changes: args.changes,
        replication_only: args.replication_only,
        capture_only: args.capture_only,
    };
    let json = ctx.json;
    crate::bench::run(&opts, &|line| output::log_line(json, line))
        .await
        .context("benchmark failed")
}
