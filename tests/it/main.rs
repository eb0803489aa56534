//! tidemark's integration tests: one test binary, so that every test file shares one
//! throwaway PostgreSQL server per run (started on first use by [`common`]; MariaDB, whose
//! capture bound is server-wide, gets one server per file: see `common::maria`),
//! and the binary is linked once. Each file is a module; a new test file is one `mod` line
//! here.
//!
//! What the files share lives in `common` (servers, a fresh database per test, the real
//! `tidemark` binary). Tests never change the process's environment or current directory (the
//! binary runs with its own), and databases, roles and users get names unique in the run.

#[macro_use]
mod common;

mod access;
mod binary_copy;
mod cli;
mod formats;
mod guarantee;
mod interfaces;
mod nats;
mod page;
mod privileges;
mod reach;
mod read_your_writes;
mod readers;
mod replicate;
mod schemas;
mod secrets;
mod serve;
mod strategies;
mod teardown;
mod write_failures;
