//! The service's Prometheus metrics: exports by mode and outcome, rows exported, export
//! durations, HTTP requests by route and status, and — refreshed on each scrape from the
//! monitor — pending changes and lag per table and consumer.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::capture::Mode;
use crate::monitor::StatusReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExportLabels {
    mode: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    table: String,
    consumer: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The registry and its metrics.
pub struct Metrics {
    registry: Registry,
    exports: Family<ExportLabels, Counter>,
    rows: Family<ModeLabels, Counter>,
    duration: HistogramFamily<ModeLabels>,
    http: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<RouteLabels>,
    pending: Family<ConsumerLabels, Gauge>,
    lag: Family<ConsumerLabels, Gauge<f64, AtomicU64>>,
    database_up: Gauge,
}

fn export_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

fn http_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tidemark");
        let exports = Family::<ExportLabels, Counter>::default();
        let rows = Family::<ModeLabels, Counter>::default();
        let duration: HistogramFamily<ModeLabels> = Family::new_with_constructor(export_buckets);
        let http = Family::<HttpLabels, Counter>::default();
        let http_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(http_buckets);
        let pending = Family::<ConsumerLabels, Gauge>::default();
        let lag = Family::<ConsumerLabels, Gauge<f64, AtomicU64>>::default();
        let database_up = Gauge::default();
        registry.register(
            "exports",
            "Exports finished, by mode and outcome (completed, empty, failed)",
            exports.clone(),
        );
        registry.register(
            "rows_exported",
            "Rows written to export files, by mode",
            rows.clone(),
        );
        registry.register(
            "export_duration_seconds",
            "Duration of finished exports",
            duration.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            http.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests (until the response head), by route",
            http_duration.clone(),
        );
        registry.register(
            "pending_changes",
            "Changes not yet delivered, per table and consumer",
            pending.clone(),
        );
        registry.register(
            "lag_seconds",
            "Age in seconds of the oldest change not yet delivered to the consumer or replica (0 when none is pending), per table and consumer",
            lag.clone(),
        );
        registry.register(
            "database_up",
            "1 when the source answered the last scrape's queries",
            database_up.clone(),
        );
        Metrics {
            registry,
            exports,
            rows,
            duration,
            http,
            http_duration,
            pending,
            lag,
            database_up,
        }
    }

    /// Counts a finished export.
    pub fn export_finished(&self, mode: Mode, outcome: &str, rows: u64, seconds: f64) {
        let m = mode.as_str().to_string();
        self.exports
            .get_or_create(&ExportLabels {
                mode: m.clone(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.rows
            .get_or_create(&ModeLabels { mode: m.clone() })
            .inc_by(rows);
        self.duration
            .get_or_create(&ModeLabels { mode: m })
            .observe(seconds);
    }

    /// Rows exported since the server started, every mode together (the status page's
    /// throughput chart).
    pub fn rows_exported(&self) -> u64 {
        [Mode::Full, Mode::Incremental, Mode::Delta]
            .iter()
            .filter_map(|m| {
                self.rows
                    .get(&ModeLabels {
                        mode: m.as_str().to_string(),
                    })
                    .map(|c| c.get())
            })
            .sum()
    }

    /// Counts an answered request.
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.http
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                method: method.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Replaces the per-consumer gauges with a fresh report (or marks the database down).
    pub fn refresh(&self, report: Option<&StatusReport>) {
        self.pending.clear();
        self.lag.clear();
        let Some(report) = report else {
            self.database_up.set(0);
            return;
        };
        self.database_up.set(1);
        for t in &report.tables {
            for c in &t.consumers {
                let labels = ConsumerLabels {
                    table: t.table.to_string(),
                    consumer: c.consumer_id.to_string(),
                };
                self.pending
                    .get_or_create(&labels)
                    .set(i64::try_from(c.pending.total).unwrap_or(i64::MAX));
                self.lag.get_or_create(&labels).set(c.lag_seconds);
            }
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The Prometheus text format (0.0.4) of every metric.
    pub fn render_text(&self) -> String {
        openmetrics_to_text(&self.render())
    }
}

/// Whether an `Accept` header prefers OpenMetrics over the Prometheus text format: it names
/// `application/openmetrics-text` with a quality above that of `text/plain` (absent counts 0).
pub fn wants_openmetrics(accept: &str) -> bool {
    let quality = |wanted: &str| {
        accept
            .split(',')
            .filter_map(|item| {
                let mut parts = item.split(';').map(str::trim);
                let media = parts.next()?;
                if !media.eq_ignore_ascii_case(wanted) {
                    return None;
                }
                let q = parts
                    .filter_map(|p| p.strip_prefix("q="))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                Some(q)
            })
            .fold(0.0f32, f32::max)
    };
    let open = quality("application/openmetrics-text");
    open > 0.0 && open >= quality("text/plain")
}

/// Rewrites OpenMetrics text as the Prometheus text format: a counter family `x` is named
/// `x_total` in its `HELP` and `TYPE` lines (as its samples are), `UNIT` lines and the closing
/// `# EOF` go, and the types the text format lacks become `untyped`.
pub fn openmetrics_to_text(open: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, "counter")) = rest.split_once(' ') {
                counters.insert(name.to_string());
            }
        }
    }
    let rename = |name: &str| {
        if counters.contains(name) {
            format!("{name}_total")
        } else {
            name.to_string()
        }
    };
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", rename(name)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = match kind {
                "counter" | "gauge" | "histogram" | "summary" => kind,
                _ => "untyped",
            };
            out.push_str(&format!("# TYPE {} {kind}\n", rename(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_chooses_the_format() {
        for (accept, open) in [
            ("", false),
            ("*/*", false),
            ("text/plain; version=0.0.4", false),
            ("application/openmetrics-text", true),
            (
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                true,
            ),
            (
                "text/plain;version=0.0.4,application/openmetrics-text;q=0.5",
                false,
            ),
            ("application/openmetrics-text;q=0", false),
        ] {
            assert_eq!(wants_openmetrics(accept), open, "{accept:?}");
        }
    }

    #[test]
    fn counters_are_named_with_total_in_the_text_format() {
        let m = Metrics::new();
        m.export_finished(Mode::Full, "completed", 3, 0.5);
        let text = m.render_text();
        assert!(text.contains("# HELP tidemark_exports_total Exports finished"));
        assert!(text.contains("# TYPE tidemark_exports_total counter"));
        assert!(text.contains("tidemark_exports_total{mode=\"full\",outcome=\"completed\"} 1"));
        assert!(text.contains("# TYPE tidemark_export_duration_seconds histogram"));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }
}
