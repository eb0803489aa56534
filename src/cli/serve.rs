//! `tidemark serve`: the HTTP service. Settings come from flags, then the environment, then
//! the configuration file; it runs until SIGTERM or Ctrl-C.

use std::path::PathBuf;

use super::output;
use super::status::ThresholdArgs;
use super::Context;
use crate::serve::{self, FileConfig, ServeConfig};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "TIDEMARK_LISTEN", hide_env_values = true)]
    listen: Option<String>,
    /// Output directory [default: output]
    #[arg(long, env = "TIDEMARK_OUTPUT_DIR", hide_env_values = true)]
    out: Option<PathBuf>,
    /// Configuration file (TOML); flags and environment override it [default: ./tidemark.toml if present]
    #[arg(long, env = "TIDEMARK_CONFIG", hide_env_values = true)]
    config: Option<PathBuf>,
    /// Exports running at once [default: 4]
    #[arg(long, env = "TIDEMARK_WORKERS", hide_env_values = true)]
    workers: Option<usize>,
    /// Jobs pending or running at once before requests get 503 [default: 64]
    #[arg(long, env = "TIDEMARK_MAX_JOBS", hide_env_values = true)]
    max_jobs: Option<usize>,
    /// Seconds running exports may take to finish after SIGTERM before they are abandoned [default: 30]
    #[arg(long, env = "TIDEMARK_GRACE_SECS", hide_env_values = true)]
    grace_secs: Option<u64>,
    /// How long /health waits for the database, in milliseconds [default: 800]
    #[arg(long, env = "TIDEMARK_HEALTH_TIMEOUT_MS", hide_env_values = true)]
    health_timeout_ms: Option<u64>,
    /// Longest time to answer a request, in seconds [default: 300]
    #[arg(long, env = "TIDEMARK_REQUEST_TIMEOUT_SECS", hide_env_values = true)]
    request_timeout_secs: Option<u64>,
    /// How far behind the server clock capture stays, in milliseconds [default: 100]
    #[arg(long, env = "TIDEMARK_MARGIN_MS", hide_env_values = true)]
    margin_ms: Option<u64>,
    /// Connections served at once [default: 1024]
    #[arg(long, env = "TIDEMARK_MAX_CONNECTIONS", hide_env_values = true)]
    max_connections: Option<usize>,
    /// How long a client may take to send a request head, in milliseconds [default: 10000]
    #[arg(long, env = "TIDEMARK_HEADER_TIMEOUT_MS", hide_env_values = true)]
    header_timeout_ms: Option<u64>,
    #[command(flatten)]
    thresholds: ThresholdArgs,
    /// Serve on addresses beyond loopback although no token exists (anyone reaching the port may export and move watermarks)
    #[arg(long)]
    insecure: bool,
    /// Let /, /stats, /metrics and /openapi.json answer without a token
    #[arg(long)]
    public_status: bool,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key
    #[arg(
        long,
        env = "TIDEMARK_TLS_CERT",
        hide_env_values = true,
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert
    #[arg(
        long,
        env = "TIDEMARK_TLS_KEY",
        hide_env_values = true,
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
}

/// Serves until stopped; the listening line is the output.
pub async fn run(args: &ServeArgs, ctx: &Context) -> anyhow::Result<()> {
    let named = args.config.is_some();
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("tidemark.toml"));
    let file = FileConfig::load(&path, named)?;
    let flags = FileConfig {
        source: ctx.source_setting(),
        state: ctx.state_setting(),
        listen: args.listen.clone(),
        out: args.out.clone(),
        workers: args.workers,
        max_jobs: args.max_jobs,
        grace_secs: args.grace_secs,
        health_timeout_ms: args.health_timeout_ms,
        request_timeout_secs: args.request_timeout_secs,
        margin_ms: args.margin_ms,
        max_connections: args.max_connections,
        header_timeout_ms: args.header_timeout_ms,
        max_lag_secs: args.thresholds.max_lag_secs,
        max_pending: args.thresholds.max_pending,
        insecure: args.insecure.then_some(true),
        public_status: args.public_status.then_some(true),
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
    };
    let config = ServeConfig::resolve(file, flags)?
        .with_admin_token(std::env::var("TIDEMARK_ADMIN_TOKEN").ok().as_deref())?;
    let json = ctx.json;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    serve::serve(config, &move |addr: std::net::SocketAddr| {
        output::listening(json, scheme, addr)
    })
    .await?;
    Ok(())
}
