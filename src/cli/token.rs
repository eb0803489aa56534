//! `tidemark token create|list|revoke`: the API tokens of `serve`, kept as hashes in the state
//! database.

use clap::Subcommand;

use super::output::TokenOutput;
use super::Context;
use crate::error::Error;
use crate::ident::ConsumerId;
use crate::state::tokens::TokenScope;

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    action: TokenAction,
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Create a token and print it (once: only its hash is stored)
    #[command(group(clap::ArgGroup::new("scope").required(true).args(["consumer", "admin"])))]
    #[command(after_help = "Example:\n  tidemark token create --consumer partner-1")]
    Create {
        /// The consumer the token acts as (and only as)
        #[arg(long)]
        consumer: Option<String>,
        /// A token that may do everything
        #[arg(long)]
        admin: bool,
    },
    /// List tokens: id, kind, consumer, creation time (never the tokens themselves)
    #[command(after_help = "Example:\n  tidemark token list --json")]
    List,
    /// Revoke a token by id; a running server refuses it from the next request on
    #[command(after_help = "Example:\n  tidemark token revoke 3f2a9c…")]
    Revoke {
        /// The token's id, as `token list` shows it
        id: String,
    },
}

pub async fn run(args: &TokenArgs, ctx: &Context) -> anyhow::Result<TokenOutput> {
    let action = &args.action;
    let scope = match action {
        TokenAction::Create {
            consumer: Some(c), ..
        } => Some(TokenScope::Consumer(ConsumerId::new(c)?)),
        TokenAction::Create { .. } => Some(TokenScope::Admin),
        _ => None,
    };
    ctx.source().await?;
    let state = ctx.state().await?;
    Ok(match action {
        TokenAction::Create { .. } => {
            let scope = scope.unwrap_or(TokenScope::Admin);
            let (record, token) = state.create_token(scope).await?;
            TokenOutput::Created { record, token }
        }
        TokenAction::List => TokenOutput::List(state.tokens().await?),
        TokenAction::Revoke { id } => {
            if !state.revoke_token(id).await? {
                return Err(Error::input(format!(
                    "no token {id:?}; `tidemark token list` shows the ids"
                ))
                .into());
            }
            TokenOutput::Revoked(id.clone())
        }
    })
}
