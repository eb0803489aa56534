//! The HTTP part of the benchmark: `tidemark serve` as a child process driven by an in-process
//! load generator over loopback — `/health` throughput and latency under concurrent clients,
//! small synchronous incremental exports under concurrent clients while rows keep changing, and
//! `/health` latency while a full export of the large table runs (the export must not starve
//! the server).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::{Database, DbUrl};
use crate::error::{Error, Result};
use crate::ident::{ConsumerId, Ident};
use crate::state::{Position, StateStore};

/// Latencies of a run of requests.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    pub requests: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(mut ms: Vec<f64>, seconds: f64) -> Self {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if ms.is_empty() {
                0.0
            } else {
                ms[((ms.len() - 1) as f64 * q).round() as usize]
            }
        };
        Latency {
            requests: ms.len() as u64,
            per_second: ms.len() as f64 / seconds.max(1e-9),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// What the HTTP benchmark measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HttpBench {
    pub clients: usize,
    pub health: Latency,
    pub incremental_clients: usize,
    pub incremental_exports: Latency,
    /// Rows the small incremental exports delivered in all.
    pub incremental_rows: u64,
    pub health_during_full_export: Latency,
    pub full_export_rows: u64,
    pub full_export_seconds: f64,
}

impl HttpBench {
    /// Lines for the report.
    pub fn render(&self) -> String {
        let l = |name: &str, x: &Latency| {
            format!(
                "{name:<48} {:>9.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms\n",
                x.per_second, x.p50_ms, x.p99_ms, x.max_ms
            )
        };
        let mut s = String::from(
            "\ntidemark serve (release binary, loopback, in-process load generator)\n",
        );
        s += &l(
            &format!("GET /health, {} concurrent clients", self.clients),
            &self.health,
        );
        s += &l(
            &format!(
                "POST /export/{{id}} incremental, {} clients",
                self.incremental_clients
            ),
            &self.incremental_exports,
        );
        s += &format!(
            "{:<48} {} rows in {} exports\n",
            "", self.incremental_rows, self.incremental_exports.requests
        );
        s += &l(
            "GET /health while a full export runs",
            &self.health_during_full_export,
        );
        s += &format!(
            "{:<48} full export of {} rows took {:.2} s; /health p99 {:.1}× its idle p99\n",
            "",
            self.full_export_rows,
            self.full_export_seconds,
            self.health_during_full_export.p99_ms / self.health.p99_ms.max(1e-9)
        );
        s
    }
}

struct Served {
    child: Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(source: &DbUrl, out: &std::path::Path) -> Result<Served> {
    let exe = std::env::current_exe().map_err(|e| Error::Runtime(format!("bench: {e}")))?;
    let mut child = Command::new(exe)
        .arg("--source")
        .arg(source.as_str())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "4",
            "--max-jobs",
            "1024",
        ])
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::Runtime(format!("bench: cannot start tidemark serve: {e}")))?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .filter(|a| !a.is_empty() && line.contains("http://"))
        .ok_or_else(|| Error::Runtime(format!("bench: tidemark serve did not start: {line:?}")))?
        .to_string();
    Ok(Served {
        child,
        base: format!("http://{addr}"),
    })
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("bench: HTTP request failed: {e}"))
}

/// Sends `request` and reads its JSON answer.
async fn json_of(request: reqwest::RequestBuilder) -> Result<serde_json::Value> {
    request
        .send()
        .await
        .map_err(failed)?
        .json()
        .await
        .map_err(failed)
}

/// `clients` tasks sending requests made by `make` for `seconds`; returns the latencies.
async fn load<F, Fut>(clients: usize, seconds: f64, make: F) -> Result<Latency>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let make = Arc::new(make);
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let make = Arc::clone(&make);
        tasks.push(tokio::spawn(async move {
            let mut ms = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                make(i).await?;
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, Error>(ms)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(failed)??);
    }
    Ok(Latency::of(all, t0.elapsed().as_secs_f64()))
}

/// Runs the HTTP benchmark against `small` (about a tenth of the rows) for the concurrent
/// parts and `big` for the full export.
pub async fn run(
    small_url: &DbUrl,
    small: Arc<dyn Database>,
    big_url: &DbUrl,
    dir: &std::path::Path,
    log: &(dyn Fn(&str) + Sync),
) -> Result<HttpBench> {
    const CLIENTS: usize = 32;
    const EXPORT_CLIENTS: usize = 8;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .map_err(failed)?;
    let out = dir.join("http-out");
    let server = serve(small_url, &out)?;

    log("HTTP: /health under concurrent clients");
    let url = format!("{}/health", server.base);
    let c = client.clone();
    let health = load(CLIENTS, 3.0, move |_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let r = c.get(&url).send().await.map_err(failed)?;
            if !r.status().is_success() {
                return Err(failed(r.status()));
            }
            r.bytes().await.map_err(failed)?;
            Ok(())
        }
    })
    .await?;

    log("HTTP: small incremental exports under concurrent clients");
    let state = StateStore::open(Arc::clone(&small)).await?;
    let table = crate::ident::TableName::unqualified(Ident::new(crate::seed::USERS)?);
    let now = small.now().await?;
    for i in 0..EXPORT_CLIENTS {
        state
            .set_watermark(
                &ConsumerId::new(&format!("http-{i}"))?,
                &table,
                &Position::Timestamp {
                    cursor: now,
                    setup: None,
                },
            )
            .await?;
    }
    // A writer keeps changing a few rows while the consumers export.
    let writer_db = Arc::clone(&small);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer_stop = Arc::clone(&stop);
    let writer = tokio::spawn(async move {
        let mut k: i64 = 0;
        while !writer_stop.load(std::sync::atomic::Ordering::Relaxed) {
            k += 1;
            let sql = format!(
                "UPDATE users SET name = name || '+', updated_at = {} WHERE id % 1000 = {}",
                writer_db.dialect().now_expr(),
                k % 1000
            );
            let _ = writer_db.execute(&sql, &[]).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let rows = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (c, base, counted) = (client.clone(), server.base.clone(), Arc::clone(&rows));
    let exports = load(EXPORT_CLIENTS, 5.0, move |i| {
        let (c, counted) = (c.clone(), Arc::clone(&counted));
        let url = format!("{base}/export/http-{i}");
        async move {
            let r = c.post(&url).send().await.map_err(failed)?;
            if !r.status().is_success() {
                return Err(failed(format!(
                    "{} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )));
            }
            let v: serde_json::Value = r.json().await.map_err(failed)?;
            counted.fetch_add(
                v["rows"].as_u64().unwrap_or(0),
                std::sync::atomic::Ordering::Relaxed,
            );
            Ok(())
        }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.await;
    let incremental_exports = exports?;
    drop(server);

    log("HTTP: /health while a full export of the large table runs");
    let server = serve(big_url, &out)?;
    let started = json_of(
        client
            .post(format!("{}/exports/full", server.base))
            .header("X-Consumer-ID", "http-full"),
    )
    .await?;
    let job = started["jobId"]
        .as_str()
        .ok_or_else(|| failed(format!("no job: {started}")))?
        .to_string();
    let mut ms = Vec::new();
    let t0 = Instant::now();
    let finished = loop {
        for _ in 0..10 {
            let t = Instant::now();
            let r = client
                .get(format!("{}/health", server.base))
                .send()
                .await
                .map_err(failed)?;
            r.bytes().await.map_err(failed)?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let v = json_of(client.get(format!("{}/exports/{job}", server.base))).await?;
        match v["status"].as_str() {
            Some("completed") => break v,
            Some("failed") => return Err(failed(format!("full export failed: {v}"))),
            _ if t0.elapsed() > Duration::from_secs(600) => {
                return Err(failed("full export did not finish in 10 minutes"))
            }
            _ => {}
        }
    };
    let health_during_full_export = Latency::of(ms, t0.elapsed().as_secs_f64());
    Ok(HttpBench {
        clients: CLIENTS,
        health,
        incremental_clients: EXPORT_CLIENTS,
        incremental_exports,
        incremental_rows: rows.load(std::sync::atomic::Ordering::Relaxed),
        health_during_full_export,
        full_export_rows: finished["rowsExported"].as_u64().unwrap_or(0),
        full_export_seconds: finished["durationMs"].as_f64().unwrap_or(0.0) / 1000.0,
    })
}
