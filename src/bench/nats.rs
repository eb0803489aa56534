//! The NATS line of the replication benchmark: `tidemark replicate --target nats://…` (the real
//! binary, under GNU time) publishing one burst of changes of a SQLite `trigger` table — the
//! same burst as the SQLite→SQLite line (bulk statements) — to a JetStream stream of a
//! nats-server it starts (file storage, loopback). Messages/s are the stream's new messages
//! (checked equal to the change-log rows of the burst: one message per change) over the run's
//! wall time, acks included. Skipped when nats-server is not installed.

use std::path::Path;

use crate::capture::{self, SetupOptions};
use crate::db::DbUrl;
use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::seed;
use crate::state::StateStore;
use crate::testkit::NatsServer;

use super::replicate::{burst, count, open, Workload};
use super::{measure_once, tidemark, Measured};

/// Rows in the table before the burst (the first run publishes them and sets the position the
/// burst is published from).
const SEEDED: u64 = 1000;

/// One measured publication.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct NatsRun {
    /// Messages the measured run published (one per change-log row).
    pub messages: u64,
    pub run: Measured,
    pub messages_per_second: f64,
}

impl NatsRun {
    /// The report's line.
    pub fn render(&self) -> String {
        format!(
            "{:<48} {:>8.3} s {:>8.1} MB  {:>9.0} messages/s (CPU {:.2} s)\n",
            format!("SQLite→NATS JetStream, {} changes, bulk", self.messages),
            self.run.seconds,
            self.run.peak_rss_mb,
            self.messages_per_second,
            self.run.cpu_seconds
        )
    }
}

/// True when a nats-server binary is installed where the testkit looks.
fn nats_installed() -> bool {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .iter()
        .any(|p| Path::new(p).exists())
}

/// Publishes a burst of `changes` changes of a fresh SQLite table in `dir` to a fresh stream;
/// `None` when nats-server is not installed.
pub async fn run(dir: &Path, changes: u64) -> Result<Option<NatsRun>> {
    if !nats_installed() {
        return Ok(None);
    }
    let server = NatsServer::start()?;
    let path = dir.join("repl-src-nats.db");
    let _ = std::fs::remove_file(&path);
    let source = DbUrl::parse(&format!("sqlite://{}", path.display()))?;
    let db = open(&source).await?;
    let table = seed::create_users_table(db.as_ref()).await?;
    seed::seed_users(db.as_ref(), SEEDED, None).await?;
    let state = StateStore::open(std::sync::Arc::clone(&db)).await?;
    let info = db.describe(&table).await?;
    let report = capture::setup(db.as_ref(), &info, "trigger", &SetupOptions::default()).await?;
    state.save_table_config(&table, &report.config).await?;
    let target = server.url(Some("BENCH"));
    let replicate = || tidemark(&source, &["replicate", "--target", &target]);
    // The first run publishes the seeded rows and sets the position the burst starts from.
    measure_once(&mut replicate()?)?;
    let first = stream_messages(&server).await?;

    let log = Ident::new(&report.config.cursor_column)?;
    let log_rows = format!("SELECT count(*) FROM {}", db.dialect().quote(&log));
    let before = count(db.as_ref(), &log_rows).await?;
    let t = db.dialect().quote_table(&table);
    burst(db.as_ref(), &t, changes * 100 / 160, Workload::Bulk).await?;
    let logged = count(db.as_ref(), &log_rows).await? - before;
    let run = measure_once(&mut replicate()?)?;
    let messages = stream_messages(&server).await? - first;
    if first != SEEDED || messages != logged {
        return Err(Error::Runtime(format!(
            "bench: the stream holds {first} + {messages} messages, expected {SEEDED} + \
             {logged} (the seeded rows, then one per change)"
        )));
    }
    Ok(Some(NatsRun {
        messages,
        run,
        messages_per_second: messages as f64 / run.seconds.max(1e-9),
    }))
}

/// The number of messages in the stream `BENCH`.
async fn stream_messages(server: &NatsServer) -> Result<u64> {
    let failed = |e: &dyn std::fmt::Display| Error::Runtime(format!("bench: NATS: {e}"));
    let client = async_nats::connect(format!("127.0.0.1:{}", server.port()))
        .await
        .map_err(|e| failed(&e))?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("BENCH").await.map_err(|e| failed(&e))?;
    let info = stream.info().await.map_err(|e| failed(&e))?;
    Ok(info.state.messages)
}
