//! `tidemark demo`: the whole story on embedded SQLite, then optionally serves it.

use std::path::PathBuf;

use super::output::{self, Output};
use super::progress::DemoUi;
use super::Context;
use crate::demo::{self, DemoOptions};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Directory for the demo database (and output unless --out)
    #[arg(long, default_value = "tidemark-demo")]
    dir: PathBuf,
    /// Output directory [default: DIR/output]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Users to seed
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Then serve the demo database and print the status page's address
    #[arg(long)]
    serve: bool,
    /// Address for --serve
    #[arg(long, default_value = "127.0.0.1:8080", requires = "serve")]
    listen: String,
}

pub async fn run(args: &DemoArgs, ctx: &Context) -> anyhow::Result<Output> {
    let opts = DemoOptions {
        dir: args.dir.clone(),
        out: args.out.clone(),
        rows: args.rows,
    };
    if !ctx.json {
        output::demo_header(args.rows, &args.dir);
    }
    let ui = DemoUi::new(ctx.json);
    let report = demo::run(&opts, &ui).await;
    ui.clear();
    let report = Output::Demo(report?);
    if !args.serve {
        return Ok(report);
    }
    // The report first: serving lasts until the process is stopped.
    report.print(ctx.json)?;
    if let Output::Demo(report) = &report {
        demo::serve(report, &args.listen, ctx.json).await?;
    }
    Ok(Output::Nothing)
}
