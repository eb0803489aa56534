//! `tidemark verify DIR`: checks the manifest chains, checksums and row counts of an output
//! directory; problems make the command fail (exit 1) after they are shown.

use std::path::PathBuf;

use super::output::Output;
use crate::export::manifest;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Output directory to check
    dir: PathBuf,
}

pub fn run(args: &VerifyArgs) -> anyhow::Result<Output> {
    let report = manifest::verify(&args.dir)?;
    Ok(Output::Verify(args.dir.clone(), report))
}
