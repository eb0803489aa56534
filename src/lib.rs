//! tidemark: change data capture for SQLite, PostgreSQL and MySQL/MariaDB.
//!
//! The layout follows the concerns: [`db`] adapts each database behind the `Dialect` and
//! `Database` traits; [`capture`] holds the strategies that find changes; [`state`] keeps
//! watermarks, registrations and export records; [`export`] runs exports end to end; [`value`]
//! holds typed values, which the [`format`]s (CSV, JSON Lines, Parquet) encode; [`sink`] owns
//! atomic files; [`seed`], [`demo`] and `bench` are the tools around them; `testkit` starts
//! throwaway database servers; [`cli`] is the command line.
//!
//! Cargo features: `bench` (default) builds the `tidemark bench` command and the `testkit` it
//! starts its PostgreSQL with; `testkit` alone is for the tests; `failpoints` (tests only)
//! lets `TIDEMARK_FAULT` abort the process at a named point ([`failpoint`]).

#[cfg(feature = "bench")]
pub mod bench;
pub mod capture;
pub mod cli;
pub mod db;
pub mod demo;
pub mod error;
pub mod export;
pub mod failpoint;
pub mod format;
pub mod ident;
pub mod mode;
pub mod monitor;
pub mod privilege;
pub mod replicate;
pub mod seed;
pub mod serve;
pub mod sink;
pub mod state;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod value;
pub mod words;

pub use error::{Error, Result};
