//! `tidemark serve`: the HTTP service. Owns the configuration (flags, environment and an
//! optional `tidemark.toml`), the listener with its connection limits and timeouts, and the
//! shutdown sequence (stop accepting, let running exports finish within the grace period, then
//! abandon them without moving a watermark). Handlers live in [`routes`], background exports in
//! [`jobs`], Prometheus metrics in [`metrics`], who may do what (tokens) in [`access`], HTTPS in
//! [`tls`].

pub mod access;
pub mod jobs;
pub mod metrics;
pub mod page;
pub mod routes;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::{HeaderName, Request, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::db::{connect, ConnectOptions, DbUrl};
use crate::error::{Error, Result};
use crate::export::{prepare_out_dir, Exporter};
use crate::monitor::Thresholds;
use crate::state::StateStore;
use jobs::{Jobs, PoolLimits};
use metrics::Metrics;
use routes::AppState;

/// Settings a `tidemark.toml` may hold; flags and environment variables override them.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct FileConfig {
    pub source: Option<String>,
    pub state: Option<String>,
    pub listen: Option<String>,
    pub out: Option<PathBuf>,
    pub workers: Option<usize>,
    pub max_jobs: Option<usize>,
    pub grace_secs: Option<u64>,
    pub health_timeout_ms: Option<u64>,
    pub request_timeout_secs: Option<u64>,
    pub margin_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub header_timeout_ms: Option<u64>,
    pub max_lag_secs: Option<f64>,
    pub max_pending: Option<u64>,
    /// Serve on addresses beyond loopback although no token is configured.
    pub insecure: Option<bool>,
    /// `/`, `/stats`, `/metrics` and `/openapi.json` without a token.
    pub public_status: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl FileConfig {
    /// Reads `path`; a missing default file is no error, a missing named one is.
    pub fn load(path: &Path, named: bool) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => {
                return Ok(FileConfig::default())
            }
            Err(e) => {
                return Err(Error::input(format!(
                    "cannot read config file {}: {e}",
                    path.display()
                )))
            }
        };
        toml::from_str(&text)
            .map_err(|e| Error::input(format!("config file {}: {e}", path.display())))
    }
}

/// Everything the service runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub source: DbUrl,
    pub state: Option<DbUrl>,
    pub listen: SocketAddr,
    pub out: PathBuf,
    pub workers: usize,
    pub max_jobs: usize,
    /// How long running exports may go on after SIGTERM before they are abandoned.
    pub grace: Duration,
    pub health_timeout: Duration,
    /// Longest time to answer a request (until its response head; downloads stream on).
    pub request_timeout: Duration,
    /// Slow clients get this long to send a request head.
    pub header_timeout: Duration,
    pub margin: Duration,
    /// Connections served at once; more wait in the listen queue.
    pub max_connections: usize,
    pub thresholds: Thresholds,
    /// See [`FileConfig::insecure`].
    pub insecure: bool,
    /// See [`FileConfig::public_status`].
    pub public_status: bool,
    /// Certificate chain and private key (PEM) to serve HTTPS with.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// SHA-256 of `TIDEMARK_ADMIN_TOKEN` (the token itself is kept nowhere).
    pub admin_token_digest: Option<[u8; 32]>,
}

/// Shortest `TIDEMARK_ADMIN_TOKEN` accepted (16 characters of a random token: 96+ bits).
const MIN_ADMIN_TOKEN: usize = 16;

/// Largest request head (request line and headers): room for a 100 kB `Authorization`
/// header, which then gets its JSON 401 from the access layer.
const MAX_HEAD_BYTES: usize = 128 * 1024;
/// Largest request body; no endpoint needs one.
const MAX_BODY_BYTES: usize = 64 * 1024;

impl ServeConfig {
    /// Defaults for the values neither flags, environment nor file gave.
    pub fn resolve(file: FileConfig, flags: FileConfig) -> Result<Self> {
        let pick = |a: Option<String>, b: Option<String>| a.or(b);
        let source = pick(flags.source, file.source).ok_or_else(|| {
            Error::input("no source database: pass --source URL, set TIDEMARK_SOURCE or DATABASE_URL, or put source in tidemark.toml")
        })?;
        let listen_text =
            pick(flags.listen, file.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            Error::input(format!(
                "listen address {listen_text:?} is not host:port: {e}"
            ))
        })?;
        let workers = flags.workers.or(file.workers).unwrap_or(4);
        if workers == 0 {
            return Err(Error::input("workers must be at least 1"));
        }
        let max_jobs = flags.max_jobs.or(file.max_jobs).unwrap_or(64).max(1);
        let tls = match (
            flags.tls_cert.or(file.tls_cert),
            flags.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(Error::input(
                    "HTTPS needs both --tls-cert FILE and --tls-key FILE",
                ))
            }
        };
        Ok(ServeConfig {
            source: DbUrl::parse(&source)?,
            state: pick(flags.state, file.state)
                .map(|s| DbUrl::parse(&s))
                .transpose()?,
            listen,
            out: flags
                .out
                .or(file.out)
                .unwrap_or_else(|| PathBuf::from("output")),
            workers,
            max_jobs,
            grace: Duration::from_secs(flags.grace_secs.or(file.grace_secs).unwrap_or(30)),
            health_timeout: Duration::from_millis(
                flags
                    .health_timeout_ms
                    .or(file.health_timeout_ms)
                    .unwrap_or(800),
            ),
            request_timeout: Duration::from_secs(
                flags
                    .request_timeout_secs
                    .or(file.request_timeout_secs)
                    .unwrap_or(300),
            ),
            header_timeout: Duration::from_millis(
                flags
                    .header_timeout_ms
                    .or(file.header_timeout_ms)
                    .unwrap_or(10_000),
            ),
            margin: Duration::from_millis(
                flags
                    .margin_ms
                    .or(file.margin_ms)
                    .unwrap_or(crate::export::DEFAULT_MARGIN.as_millis() as u64),
            ),
            max_connections: flags
                .max_connections
                .or(file.max_connections)
                .unwrap_or(1024)
                .max(1),
            thresholds: Thresholds {
                max_lag_secs: flags
                    .max_lag_secs
                    .or(file.max_lag_secs)
                    .unwrap_or(Thresholds::default().max_lag_secs),
                max_pending: flags
                    .max_pending
                    .or(file.max_pending)
                    .unwrap_or(Thresholds::default().max_pending),
            },
            insecure: flags.insecure.or(file.insecure).unwrap_or(false),
            public_status: flags.public_status.or(file.public_status).unwrap_or(false),
            tls,
            admin_token_digest: None,
        })
    }

    /// Sets the admin token of `TIDEMARK_ADMIN_TOKEN` (empty: none).
    pub fn with_admin_token(mut self, token: Option<&str>) -> Result<Self> {
        self.admin_token_digest = match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => None,
            Some(t) if t.len() < MIN_ADMIN_TOKEN => {
                return Err(Error::input(format!(
                    "TIDEMARK_ADMIN_TOKEN is too short to be secret: use at least \
                     {MIN_ADMIN_TOKEN} random characters (e.g. `openssl rand -hex 32`)"
                )))
            }
            Some(t) => Some(crate::state::tokens::token_digest(t)),
        };
        Ok(self)
    }
}

/// What `serve` tells its caller once it listens.
pub trait Ready: Send {
    fn listening(&self, addr: SocketAddr);
}

impl<F: Fn(SocketAddr) + Send> Ready for F {
    fn listening(&self, addr: SocketAddr) {
        self(addr)
    }
}

/// Runs the service until SIGTERM or Ctrl-C.
pub async fn serve(config: ServeConfig, ready: &dyn Ready) -> Result<()> {
    let tls = config
        .tls
        .as_ref()
        .map(|(c, k)| tls::acceptor(c, k))
        .transpose()?;
    prepare_out_dir(&config.out)?;
    let pool_size = u32::try_from(config.workers + 4).unwrap_or(u32::MAX);
    let source = connect(
        &config.source,
        ConnectOptions {
            create_if_missing: false,
            max_connections: Some(pool_size),
        },
    )
    .await?;
    let state_db = match &config.state {
        Some(url) => {
            connect(
                url,
                ConnectOptions {
                    create_if_missing: true,
                    max_connections: Some(pool_size),
                },
            )
            .await?
        }
        None => Arc::clone(&source),
    };
    let state = StateStore::open(state_db).await?;
    let loopback = config.listen.ip().is_loopback();
    let tokens_exist = state.any_token().await?;
    if !loopback && !config.insecure && config.admin_token_digest.is_none() && !tokens_exist {
        return Err(Error::input(format!(
            "no API token exists, so tidemark serves only loopback addresses, not {}: create \
             one with `tidemark token create --admin` (or set TIDEMARK_ADMIN_TOKEN), or pass \
             --insecure to serve without tokens",
            config.listen
        )));
    }
    let access = access::Access {
        state: state.clone(),
        env_admin: config.admin_token_digest,
        always: !loopback && !config.insecure,
        public_status: config.public_status,
        tokens_seen: Arc::new(std::sync::atomic::AtomicBool::new(tokens_exist)),
    };
    let exporter = Exporter::new(source, state).with_margin(config.margin);
    let metrics = Arc::new(Metrics::new());
    let jobs = Jobs::new(
        exporter.clone(),
        config.out.clone(),
        PoolLimits {
            workers: config.workers,
            max_jobs: config.max_jobs,
        },
        Arc::clone(&metrics),
    );
    let settled = jobs.recover().await?;
    if settled > 0 {
        tracing::info!(settled, "settled jobs an earlier server left unfinished");
    }
    let app = routes::router(AppState {
        jobs: jobs.clone(),
        exporter,
        out_dir: config.out.clone(),
        metrics,
        health_timeout: config.health_timeout,
        thresholds: config.thresholds,
        access,
    });
    let request_id = HeaderName::from_static("x-request-id");
    let app = app.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|req: &Request<_>| {
                        let id = req
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        let path: String = req.uri().path().chars().take(200).collect();
                        tracing::info_span!("request", request_id = %id, method = %req.method(), path = %path)
                    })
                    .on_response(
                        tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO),
                    ),
            )
            .layer(PropagateRequestIdLayer::new(request_id))
            .layer(axum::middleware::map_response(json_errors))
            .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                (
                    StatusCode::REQUEST_TIMEOUT,
                    Json(serde_json::json!({ "error": "the request took too long" })),
                )
                    .into_response()
            }))
            .layer(tower::timeout::TimeoutLayer::new(config.request_timeout))
            .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY_BYTES)),
    );

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io("listen on", config.listen.to_string(), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("listen on", config.listen.to_string(), e))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, out = %config.out.display(), workers = config.workers, "listening");
    ready.listening(addr);

    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&connections).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut signal => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait and go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task, under the head timeout: a
                // client speaking plain HTTP or nothing at all only loses its own connection.
                let (acceptor, builder) = (acceptor.clone(), builder.clone());
                let (watcher, limit) = (graceful.watcher(), config.header_timeout);
                tokio::spawn(async move {
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            let _ = watcher.watch(conn).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    tracing::info!(
        grace_secs = config.grace.as_secs(),
        "stopping: no new connections; waiting for running exports"
    );
    let abandoned = jobs.shutdown(config.grace).await;
    if abandoned > 0 {
        tracing::warn!(
            abandoned,
            "abandoned running exports at shutdown; their watermarks did not move"
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("closed connections that were still open after 5 s");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Gives error answers made below the handlers (body too large, timeouts) the JSON shape every
/// other error has.
async fn json_errors(resp: axum::response::Response) -> axum::response::Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    (status, Json(serde_json::json!({ "error": reason }))).into_response()
}

/// Resolves on Ctrl-C or SIGTERM (also used by `tidemark replicate --follow`).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_flags_override_it() {
        let file: FileConfig =
            toml::from_str(include_str!("../../tidemark.toml.example")).expect("example parses");
        assert_eq!(file.workers, Some(4));
        let flags = FileConfig {
            listen: Some("127.0.0.1:9999".into()),
            workers: Some(2),
            ..FileConfig::default()
        };
        let c = ServeConfig::resolve(file.clone(), flags).expect("resolves");
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.workers, 2);
        assert_eq!(c.grace, Duration::from_secs(30));
        assert_eq!(c.source.kind(), crate::db::DbKind::Postgres);
        let c = ServeConfig::resolve(file, FileConfig::default()).expect("resolves");
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.workers, 4);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
        assert!(toml::from_str::<FileConfig>("workers = \"many\"").is_err());
        let with = |f: FileConfig| ServeConfig::resolve(FileConfig::default(), f);
        let src = || Some("sqlite://x.db".to_string());
        assert!(with(FileConfig::default()).is_err(), "no source");
        assert!(with(FileConfig {
            source: src(),
            listen: Some("nowhere".into()),
            ..FileConfig::default()
        })
        .is_err());
        assert!(with(FileConfig {
            source: src(),
            workers: Some(0),
            ..FileConfig::default()
        })
        .is_err());
        assert!(with(FileConfig {
            source: Some("http://x".into()),
            ..FileConfig::default()
        })
        .is_err());
        let missing = FileConfig::load(Path::new("/nonexistent/tidemark.toml"), false);
        assert!(missing.is_ok(), "a missing default file is fine");
        assert!(FileConfig::load(Path::new("/nonexistent/tidemark.toml"), true).is_err());
    }
}
