//! What every command shares: the global flags (`--source`, `--state`, `--json`) and the
//! source and state databases, each opened at most once per process and only when a command
//! first asks for it. Commands open the source, check their input against it, and only then
//! open the state store (which creates tidemark's tables): bad input writes nothing.

use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::db::{connect, ConnectOptions, Database, DbUrl};
use crate::error::{Error, Result};
use crate::ident::{TableName, TableSelector};
use crate::state::StateStore;

/// The global flags and the databases opened from them.
pub struct Context {
    source: Option<String>,
    state: Option<String>,
    /// `--json`: print JSON for scripts instead of text for people.
    pub json: bool,
    db: OnceCell<Arc<dyn Database>>,
    store: OnceCell<StateStore>,
}

impl Context {
    /// `source` and `state` as given; an empty value (`TIDEMARK_STATE=` in a compose file) is
    /// no setting at all.
    pub fn new(source: Option<String>, state: Option<String>, json: bool) -> Context {
        Context {
            source: source.filter(|s| !s.is_empty()),
            state: state.filter(|s| !s.is_empty()),
            json,
            db: OnceCell::new(),
            store: OnceCell::new(),
        }
    }

    /// The source URL as configured: `--source`, `TIDEMARK_SOURCE` or `DATABASE_URL`.
    pub fn source_setting(&self) -> Option<String> {
        self.source.clone().or_else(database_url_env)
    }

    /// The state URL as configured (`--state`, `TIDEMARK_STATE`); `None`: the source.
    pub fn state_setting(&self) -> Option<String> {
        self.state.clone()
    }

    /// The source URL, parsed; no source at all is bad input.
    pub fn source_url(&self) -> Result<DbUrl> {
        let url = self.source_setting().ok_or_else(|| {
            Error::input(
                "no source database: pass --source URL, or set TIDEMARK_SOURCE or DATABASE_URL",
            )
        })?;
        DbUrl::parse(&url)
    }

    /// The source database, connected on first use.
    pub async fn source(&self) -> Result<Arc<dyn Database>> {
        self.source_with(false).await
    }

    /// The source database, connected on first use; `create`: a missing SQLite file is
    /// created (`seed`).
    pub async fn source_with(&self, create: bool) -> Result<Arc<dyn Database>> {
        let db = self
            .db
            .get_or_try_init(|| async {
                let url = self.source_url()?;
                connect(
                    &url,
                    ConnectOptions {
                        create_if_missing: create,
                        max_connections: None,
                    },
                )
                .await
            })
            .await?;
        Ok(Arc::clone(db))
    }

    /// The state store (on `--state`, or in the source), opened on first use. Opening it
    /// creates tidemark's tables: commands check their input first.
    pub async fn state(&self) -> Result<StateStore> {
        let store = self
            .store
            .get_or_try_init(|| async {
                let db = match &self.state {
                    Some(url) => {
                        connect(
                            &DbUrl::parse(url)?,
                            ConnectOptions {
                                create_if_missing: true,
                                max_connections: None,
                            },
                        )
                        .await?
                    }
                    None => self.source().await?,
                };
                StateStore::open(db).await
            })
            .await?;
        Ok(store.clone())
    }

    /// The source tables that `--table` values (names or patterns) select, each once, in the
    /// order given; a schema that does not exist or a pattern that matches nothing is bad
    /// input.
    pub async fn select_tables(&self, specs: &[String]) -> Result<Vec<TableName>> {
        let db = self.source().await?;
        let mut out: Vec<TableName> = Vec::new();
        for spec in specs {
            for t in db.select_tables(&TableSelector::parse(spec)?).await? {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }

    /// The source table one `--table` value names, as the source spells it.
    pub async fn resolve_table(&self, table: &str) -> Result<TableName> {
        let db = self.source().await?;
        db.resolve_table(&TableName::parse(table)?).await
    }
}

/// `DATABASE_URL`, unless unset or empty.
fn database_url_env() -> Option<String> {
    std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty())
}
