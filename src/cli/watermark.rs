//! `tidemark watermark get|set|reset`: reads or moves a consumer's watermark (under the
//! consumer's lock, as an export would).

use clap::Subcommand;

use super::output::WatermarkOutput;
use super::Context;
use crate::db::Timestamp;
use crate::error::Error;
use crate::ident::ConsumerId;
use crate::state::Position;

#[derive(clap::Args, Debug)]
pub struct WatermarkArgs {
    #[command(subcommand)]
    action: WatermarkAction,
}

#[derive(Subcommand, Debug)]
enum WatermarkAction {
    /// Print the watermark
    #[command(
        after_help = "Example:\n  tidemark watermark get --consumer warehouse --table users"
    )]
    Get {
        /// Consumer id
        #[arg(long)]
        consumer: String,
        /// Table
        #[arg(long, default_value = "users")]
        table: String,
    },
    /// Set the watermark to a time (RFC 3339): changes from then on are exported next
    #[command(
        after_help = "Example:\n  tidemark watermark set --consumer warehouse --to 2026-11-21T04:37:00Z"
    )]
    Set {
        /// Consumer id
        #[arg(long)]
        consumer: String,
        /// Table
        #[arg(long, default_value = "users")]
        table: String,
        /// The time to set, RFC 3339 (e.g. 2026-11-21T04:37:00Z)
        #[arg(long)]
        to: String,
    },
    /// Forget the watermark: the consumer starts again with a full export
    #[command(after_help = "Example:\n  tidemark watermark reset --consumer warehouse")]
    Reset {
        /// Consumer id
        #[arg(long)]
        consumer: String,
        /// Table
        #[arg(long, default_value = "users")]
        table: String,
    },
}

pub async fn run(args: &WatermarkArgs, ctx: &Context) -> anyhow::Result<WatermarkOutput> {
    let action = &args.action;
    let (consumer, table) = match action {
        WatermarkAction::Get { consumer, table }
        | WatermarkAction::Set {
            consumer, table, ..
        }
        | WatermarkAction::Reset { consumer, table } => (consumer, table),
    };
    let consumer = ConsumerId::new(consumer)?;
    let db = ctx.source().await?;
    let table = ctx.resolve_table(table).await?;
    let state = ctx.state().await?;
    Ok(match action {
        WatermarkAction::Get { .. } => {
            let watermark = state.watermark(&consumer, &table).await?;
            WatermarkOutput::Get {
                consumer,
                table,
                watermark,
            }
        }
        WatermarkAction::Set { to, .. } => {
            let at = Timestamp::parse(to)?;
            db.describe(&table).await?;
            // The position belongs to the current set-up, which can only serve times it
            // covers: a change log (or version stamps) starts when its set-up was complete.
            let config = state.table_config(&table).await?;
            if let Some(c) = &config {
                if let Some(since) = c.set_up_at.filter(|s| c.strategy != "timestamp" && at < *s) {
                    return Err(Error::input(format!(
                        "{consumer} / {table}: {at} is before the current {} capture of {table} \
                         was set up ({since}); it has no record of the changes made before \
                         then, so a watermark there would miss them; nothing was changed. \
                         Take a full export instead (--mode full)",
                        c.strategy
                    ))
                    .into());
                }
            }
            let position = Position::Timestamp {
                cursor: at,
                setup: None,
            }
            .with_setup(config.as_ref().and_then(|c| c.setup_id.as_deref()));
            let lock = state.lock(&consumer, &table).await?;
            let result = state.set_watermark(&consumer, &table, &position).await;
            lock.release().await?;
            result?;
            let watermark = if ctx.json {
                state.watermark(&consumer, &table).await?
            } else {
                None
            };
            WatermarkOutput::Set {
                at,
                consumer,
                table,
                watermark,
            }
        }
        WatermarkAction::Reset { .. } => {
            let lock = state.lock(&consumer, &table).await?;
            let result = state.reset_watermark(&consumer, &table).await;
            lock.release().await?;
            let removed = result?;
            WatermarkOutput::Reset {
                consumer,
                table,
                removed,
            }
        }
    })
}
