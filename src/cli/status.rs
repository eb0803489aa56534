//! `tidemark status`: per table, consumer and replica, changes, positions, pending changes,
//! lag and health; the output's verdict fails the command (exit 1) when anything lags.

use super::Context;
use crate::monitor::{self, StatusReport, Thresholds};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    thresholds: ThresholdArgs,
    /// Only these tables: name, schema.name or a pattern (*, sales.*); repeatable
    #[arg(long)]
    table: Vec<String>,
}

/// When a consumer lags (shared with `serve`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ThresholdArgs {
    /// A consumer whose oldest undelivered change is older than this is lagging [default: 3600]
    #[arg(long, env = "TIDEMARK_MAX_LAG_SECS", hide_env_values = true)]
    pub max_lag_secs: Option<f64>,
    /// A consumer with more pending changes than this is lagging [default: 1000000]
    #[arg(long, env = "TIDEMARK_MAX_PENDING", hide_env_values = true)]
    pub max_pending: Option<u64>,
}

impl ThresholdArgs {
    fn resolve(&self) -> Thresholds {
        let d = Thresholds::default();
        Thresholds {
            max_lag_secs: self.max_lag_secs.unwrap_or(d.max_lag_secs),
            max_pending: self.max_pending.unwrap_or(d.max_pending),
        }
    }
}

pub async fn run(args: &StatusArgs, ctx: &Context) -> anyhow::Result<StatusReport> {
    let db = ctx.source().await?;
    let only = if args.table.is_empty() {
        None
    } else {
        Some(ctx.select_tables(&args.table).await?)
    };
    let state = ctx.state().await?;
    Ok(monitor::collect_tables(
        db.as_ref(),
        &state,
        monitor::Scope {
            thresholds: args.thresholds.resolve(),
            table_totals: true,
        },
        only.as_deref(),
    )
    .await?)
}
