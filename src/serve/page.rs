//! `GET /`: the status page for people. One self-contained HTML document (its stylesheet and
//! script are embedded in the binary and inlined, allowed by a Content-Security-Policy that
//! names their hashes, so nothing else can run in it and nothing loads from elsewhere). The
//! script polls `/stats` (tables, consumers and replicas with their verdicts) and
//! `/page/live` (database health, the recent jobs of this server, and a ring buffer of lag
//! and throughput samples over the last hour that a background task keeps), and builds every
//! cell with `textContent`, so names are always shown as text.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::routes::AppState;
use crate::db::Timestamp;
use crate::monitor;

const STYLE: &str = include_str!("page/page.css");
const SCRIPT: &str = include_str!("page/page.js");
const BODY: &str = include_str!("page/body.html");

/// How often the server samples lag and throughput for the charts.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept: one hour.
const SAMPLES: usize = 360;
/// Recent jobs the page shows.
const RECENT_JOBS: usize = 20;

/// The page's routes (`/` and `/page/live`), sampling for the charts as long as they exist.
pub fn routes(state: &AppState) -> axum::Router<AppState> {
    let history = Arc::new(History::default());
    tokio::spawn(sample(Arc::downgrade(&history), state.clone()));
    Router::new().route("/", get(page)).route(
        "/page/live",
        get(move |s: State<AppState>| live(s, Arc::clone(&history))),
    )
}

/// The document and its Content-Security-Policy, built once.
fn document() -> &'static (String, String) {
    static DOC: OnceLock<(String, String)> = OnceLock::new();
    DOC.get_or_init(|| {
        let hash = |text: &str| {
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
            )
        };
        let html = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
             <title>tidemark status</title><style>{STYLE}</style></head>\n\
             {BODY}<script>{SCRIPT}</script></body></html>\n"
        );
        let csp = format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(SCRIPT),
            hash(STYLE)
        );
        (html, csp)
    })
}

async fn page() -> Response {
    let (html, csp) = document();
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, csp.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html.as_str(),
    )
        .into_response()
}

/// One point of the charts.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Sample {
    /// Milliseconds since the Unix epoch.
    t: i64,
    /// The largest lag of any consumer or replica (none when the database did not answer).
    lag_seconds: Option<f64>,
    /// Changes pending over every consumer and replica.
    pending: Option<u64>,
    /// Rows this server exported per second since the previous sample.
    rows_per_second: f64,
    database: bool,
}

#[derive(Default)]
struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    fn push(&self, s: Sample) {
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back(s);
        while q.len() > SAMPLES {
            q.pop_front();
        }
    }

    fn all(&self) -> Vec<Sample> {
        let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().copied().collect()
    }
}

/// Samples every [`SAMPLE_EVERY`] until the routes are gone.
async fn sample(history: Weak<History>, s: AppState) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (Instant::now(), s.metrics.rows_exported());
    loop {
        tick.tick().await;
        let scope = monitor::Scope {
            thresholds: s.thresholds,
            table_totals: false,
        };
        let collect = monitor::collect(s.exporter.source().as_ref(), s.exporter.state(), scope);
        let report = tokio::time::timeout(s.health_timeout * 5, collect)
            .await
            .ok()
            .and_then(|r| r.ok());
        let consumers = report
            .iter()
            .flat_map(|r| r.tables.iter())
            .flat_map(|t| t.consumers.iter());
        let (lag, pending) = consumers.fold((0.0f64, 0u64), |(l, p), c| {
            (l.max(c.lag_seconds), p.saturating_add(c.pending.total))
        });
        let now = (Instant::now(), s.metrics.rows_exported());
        let secs = now.0.duration_since(last.0).as_secs_f64();
        let rate = if secs > 0.0 {
            now.1.saturating_sub(last.1) as f64 / secs
        } else {
            0.0
        };
        last = now;
        let Some(h) = history.upgrade() else { return };
        h.push(Sample {
            t: Timestamp::now().as_datetime().timestamp_millis(),
            lag_seconds: report.as_ref().map(|_| lag),
            pending: report.as_ref().map(|_| pending),
            rows_per_second: rate,
            database: report.is_some(),
        });
    }
}

/// What the page polls besides `/stats`: database health (quick, also when `/stats` cannot
/// answer), this server's recent jobs and the chart samples.
async fn live(State(s): State<AppState>, history: Arc<History>) -> Json<serde_json::Value> {
    let ping = tokio::time::timeout(s.health_timeout, s.exporter.source().ping()).await;
    let error = match ping {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "the database did not answer within {} ms",
            s.health_timeout.as_millis()
        )),
    };
    Json(json!({
        "timestamp": Timestamp::now(),
        "database": if error.is_none() { "ok" } else { "error" },
        "database_error": error,
        "active_jobs": s.jobs.active().await,
        "jobs": s.jobs.recent(RECENT_JOBS),
        "sample_every_secs": SAMPLE_EVERY.as_secs(),
        "history": history.all(),
        "thresholds": s.thresholds,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_small_self_contained_and_its_policy_names_its_code() {
        let (html, csp) = document();
        assert!(html.len() < 100 * 1024, "{} bytes", html.len());
        for outside in ["src=", "href=\"http", "@import", "url(http"] {
            assert!(!html.contains(outside), "the page refers to {outside}");
        }
        assert!(csp.contains("script-src 'sha256-") && csp.contains("default-src 'none'"));
        assert!(!csp.contains("unsafe-inline"));
        // The script writes names with textContent only.
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("insertAdjacentHTML"));
    }

    #[test]
    fn the_ring_buffer_keeps_one_hour() {
        let h = History::default();
        for i in 0..(SAMPLES as i64 + 10) {
            h.push(Sample {
                t: i,
                lag_seconds: Some(0.0),
                pending: Some(0),
                rows_per_second: 0.0,
                database: true,
            });
        }
        let all = h.all();
        assert_eq!(all.len(), SAMPLES);
        assert_eq!(all.first().map(|s| s.t), Some(10));
    }
}
