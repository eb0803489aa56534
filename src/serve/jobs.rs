//! Export jobs: a bounded pool of workers running [`Exporter::export`] in the background, at
//! most one job per (consumer, table) at a time, each job recorded in the state store (and in
//! memory, so that a job still reports its end when the state database is the one that is
//! down). At startup, jobs a dead server left pending or running are settled from what their
//! export left behind; at shutdown, running jobs get a grace period, then are abandoned without
//! moving a watermark.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::metrics::Metrics;
use crate::capture::Mode;
use crate::db::Timestamp;
use crate::error::{Error, Result};
use crate::export::{file_stem, ExportRequest, Exporter};
use crate::format::FileFormat;
use crate::ident::{ConsumerId, TableName};
use crate::state::jobs::{job_status, JobRecord};
use crate::state::status;

/// Why a job was not started.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// A job for the same consumer and table is pending or running.
    #[error(
        "an export for consumer {consumer:?} and table {table:?} is already running (job {job_id})"
    )]
    Busy {
        job_id: String,
        consumer: String,
        table: String,
    },
    /// The queue is full or the server is stopping.
    #[error("{0}")]
    Unavailable(String),
}

/// How the pool is sized.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Exports running at once.
    pub workers: usize,
    /// Jobs pending or running at once; more are refused with 503.
    pub max_jobs: usize,
}

struct Live {
    record: Mutex<JobRecord>,
    done: watch::Sender<bool>,
    /// The job failed because a database could not be reached (HTTP 503 rather than 500).
    unavailable: AtomicBool,
    /// The job failed because the consumer's position cannot be read (HTTP 409 rather than 500).
    position: AtomicBool,
    /// The format of the job's file.
    format: FileFormat,
}

/// A finished job, as the synchronous endpoint reports it.
pub struct Finished {
    pub record: JobRecord,
    /// It failed because a database could not be reached.
    pub unavailable: bool,
    /// It failed because the consumer's position cannot be read (it needs a full export).
    pub position: bool,
}

impl Live {
    fn snapshot(&self) -> JobRecord {
        lock(&self.record).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Jobs of this process by id, and their ids oldest first.
type Known = (
    HashMap<String, Arc<Live>>,
    std::collections::VecDeque<String>,
);

/// How many jobs this process remembers; older finished ones are answered from state only.
const KEEP_IN_MEMORY: usize = 10_000;

/// How long an abandoned export may take to stop by itself (at its next row, or finishing its
/// commit) before it is dropped where it stands.
const ABANDON_WAIT: Duration = Duration::from_secs(5);

struct Inner {
    exporter: Exporter,
    out_dir: std::path::PathBuf,
    limits: PoolLimits,
    workers: Arc<Semaphore>,
    /// Pending or running jobs by (consumer, table). Held across the job's first write to
    /// state so that two requests at the same instant cannot both start one.
    active: tokio::sync::Mutex<HashMap<(ConsumerId, TableName), Arc<Live>>>,
    /// Jobs of this process by id.
    known: Mutex<Known>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    accepting: AtomicBool,
    owner: String,
    metrics: Arc<Metrics>,
}

/// The job manager; cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl Jobs {
    /// A manager running exports with `exporter` into `out_dir`.
    pub fn new(
        exporter: Exporter,
        out_dir: std::path::PathBuf,
        limits: PoolLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Jobs {
            inner: Arc::new(Inner {
                exporter,
                out_dir,
                workers: Arc::new(Semaphore::new(limits.workers.max(1))),
                limits,
                active: tokio::sync::Mutex::new(HashMap::new()),
                known: Mutex::new(Default::default()),
                tracker: TaskTracker::new(),
                cancel: CancellationToken::new(),
                accepting: AtomicBool::new(true),
                owner: owner(),
                metrics,
            }),
        }
    }

    /// Settles jobs that a server on this host left pending or running when it died: a job
    /// whose export committed is completed; one whose export was prepared is repaired as the
    /// next export would (committed if its file was published, rolled back otherwise); every
    /// other one failed. Returns how many it settled.
    pub async fn recover(&self) -> Result<usize> {
        let state = self.inner.exporter.state();
        let host = self
            .inner
            .owner
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut settled = 0;
        for mut job in state.unfinished_jobs().await? {
            let (job_host, pid) = job.owner.rsplit_once(':').unwrap_or((&job.owner, ""));
            let alive = pid
                .parse::<u32>()
                .is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if job_host != host || (alive && job.owner != self.inner.owner) {
                continue;
            }
            let mut record = state.export_record(&job.job_id).await?;
            if record
                .as_ref()
                .is_some_and(|r| r.status == status::PREPARED)
            {
                self.inner
                    .exporter
                    .recover(&job.consumer, &job.table)
                    .await?;
                record = state.export_record(&job.job_id).await?;
            }
            match record {
                Some(r) if r.status == status::COMMITTED => {
                    job.status = job_status::COMPLETED.into();
                    job.rows = r.rows.and_then(|n| u64::try_from(n).ok());
                    job.output_filename = r.file.as_deref().and_then(file_name_of);
                    job.finished_at = r.finished_at.or_else(|| Some(Timestamp::now()));
                }
                _ => {
                    job.error = Some(format!(
                        "interrupted: the server stopped while this job was {}; nothing was \
                         delivered and the watermark did not move",
                        job.status
                    ));
                    job.status = job_status::FAILED.into();
                    job.output_filename = None;
                    job.finished_at = Some(Timestamp::now());
                }
            }
            state.save_job(&job).await?;
            settled += 1;
        }
        Ok(settled)
    }

    /// Starts an export job, or says why not.
    pub async fn submit(
        &self,
        consumer: ConsumerId,
        table: TableName,
        mode: Mode,
        format: FileFormat,
    ) -> std::result::Result<JobRecord, SubmitError> {
        if !self.inner.accepting.load(Ordering::SeqCst) {
            return Err(SubmitError::Unavailable(
                "the server is shutting down".into(),
            ));
        }
        let mut active = self.inner.active.lock().await;
        if let Some(running) = active.get(&(consumer.clone(), table.clone())) {
            return Err(SubmitError::Busy {
                job_id: running.snapshot().job_id,
                consumer: consumer.to_string(),
                table: table.to_string(),
            });
        }
        if active.len() >= self.inner.limits.max_jobs {
            return Err(SubmitError::Unavailable(format!(
                "{} export jobs are already pending or running; try again later",
                active.len()
            )));
        }
        let created_at = Timestamp::now();
        let record = JobRecord {
            job_id: hex::encode(rand::random::<[u8; 16]>()),
            output_filename: Some(format!(
                "{}.{}",
                file_stem(mode, &consumer, &table, &created_at),
                format.extension()
            )),
            consumer: consumer.clone(),
            table: table.clone(),
            mode,
            status: job_status::PENDING.into(),
            rows: None,
            duration_ms: None,
            error: None,
            owner: self.inner.owner.clone(),
            created_at,
            finished_at: None,
            waited_ms: None,
            held_back_since: None,
        };
        let (done, _) = watch::channel(false);
        let live = Arc::new(Live {
            record: Mutex::new(record.clone()),
            done,
            unavailable: AtomicBool::new(false),
            position: AtomicBool::new(false),
            format,
        });
        if let Err(e) = self.inner.exporter.state().save_job(&record).await {
            // The job still runs (and fails if the database is down): its end is reported from
            // memory.
            tracing::warn!(job = %record.job_id, error = %e, "cannot record the job in state");
        }
        active.insert((consumer, table), Arc::clone(&live));
        drop(active);
        self.remember(&record.job_id, &live);
        let this = self.clone();
        // The job logs under the span of the request that started it (its request id).
        self.inner
            .tracker
            .spawn(async move { this.run(live).await }.instrument(tracing::Span::current()));
        Ok(record)
    }

    fn remember(&self, id: &str, live: &Arc<Live>) {
        let mut known = lock(&self.inner.known);
        let (map, order) = &mut *known;
        map.insert(id.to_string(), Arc::clone(live));
        order.push_back(id.to_string());
        while order.len() > KEEP_IN_MEMORY {
            let Some(old) = order.front().cloned() else {
                break;
            };
            if map.get(&old).is_some_and(|l| !l.snapshot().is_finished()) {
                break;
            }
            order.pop_front();
            map.remove(&old);
        }
    }

    async fn run(&self, live: Arc<Live>) {
        let job = live.snapshot();
        let inner = &self.inner;
        let t0 = Instant::now();
        let permit = tokio::select! {
            p = Arc::clone(&inner.workers).acquire_owned() => p.ok(),
            _ = inner.cancel.cancelled() => None,
        };
        let outcome = match permit {
            None => Err("abandoned: the server stopped before the job started".to_string()),
            Some(_permit) => {
                self.update(&live, |r| r.status = job_status::RUNNING.into())
                    .await;
                let req = ExportRequest {
                    id: Some(job.job_id.clone()),
                    named_at: Some(job.created_at),
                    cancel: Some(inner.cancel.clone()),
                    format: live.format,
                    ..ExportRequest::new(
                        job.consumer.clone(),
                        job.table.clone(),
                        job.mode,
                        inner.out_dir.clone(),
                    )
                };
                let export = inner.exporter.export(&req, None);
                tokio::pin!(export);
                let abandoned = "abandoned: the server stopped before the export finished; the \
                                 watermark did not move";
                let result = tokio::select! {
                    r = &mut export => Some(r),
                    // The export sees the signal at its next row and cleans up after itself;
                    // one past its last row finishes. Only one stuck on the database is dropped
                    // (it has written nothing yet, or its prepared state is repaired later).
                    _ = inner.cancel.cancelled() => {
                        tokio::time::timeout(ABANDON_WAIT, &mut export).await.ok()
                    }
                };
                match result {
                    Some(Ok(outcome)) => Ok(outcome),
                    Some(Err(e)) if inner.cancel.is_cancelled() => {
                        Err(format!("{abandoned} ({e})"))
                    }
                    Some(Err(e)) => {
                        live.unavailable.store(e.is_unavailable(), Ordering::SeqCst);
                        live.position.store(
                            matches!(e, Error::StalePosition { .. } | Error::PositionGone { .. }),
                            Ordering::SeqCst,
                        );
                        Err(crate::db::redact_text(&e.to_string()))
                    }
                    None => Err(abandoned.to_string()),
                }
            }
        };
        let seconds = t0.elapsed().as_secs_f64();
        let duration_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (label, rows) = match &outcome {
            Ok(o) if o.file.is_none() => ("empty", 0),
            Ok(o) => ("completed", o.rows),
            Err(_) => ("failed", 0),
        };
        inner
            .metrics
            .export_finished(job.mode, label, rows, seconds);
        match &outcome {
            Ok(o) => {
                tracing::info!(job = %job.job_id, consumer = %job.consumer, table = %job.table,
                mode = %job.mode, rows = o.rows, duration_ms, "export job completed")
            }
            Err(e) => {
                tracing::warn!(job = %job.job_id, consumer = %job.consumer, table = %job.table,
                mode = %job.mode, error = %e, "export job failed")
            }
        }
        let record = {
            let mut r = lock(&live.record);
            r.duration_ms = Some(duration_ms);
            r.finished_at = Some(Timestamp::now());
            match outcome {
                Ok(o) => {
                    r.status = job_status::COMPLETED.into();
                    r.rows = Some(o.rows);
                    r.waited_ms = Some(o.waited_ms);
                    r.held_back_since = o.held_back_since;
                    r.output_filename = o.file.as_deref().and_then(file_name_of_path);
                }
                Err(e) => {
                    r.status = job_status::FAILED.into();
                    r.rows = Some(0);
                    r.output_filename = None;
                    r.error = Some(e);
                }
            }
            r.clone()
        };
        // The job is over: the next one for this consumer and table may start while its
        // record is written (with retries when the state database is the one that is down).
        inner
            .active
            .lock()
            .await
            .remove(&(job.consumer.clone(), job.table.clone()));
        live.done.send_replace(true);
        self.save(&record).await;
    }

    /// Applies `change` to the job and records it.
    async fn update(&self, live: &Live, change: impl FnOnce(&mut JobRecord)) {
        let record = {
            let mut r = lock(&live.record);
            change(&mut r);
            r.clone()
        };
        self.save(&record).await;
    }

    /// Records the job in state; a final record is retried a few times when the state database
    /// is down, then the job is reported from memory (and settled by the next start).
    async fn save(&self, record: &JobRecord) {
        let attempts = if record.is_finished() { 4 } else { 1 };
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=attempts {
            match self.inner.exporter.state().save_job(record).await {
                Ok(()) => return,
                Err(e) if attempt == attempts => {
                    tracing::warn!(job = %record.job_id, error = %e, "cannot record the job in state");
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 3;
                }
            }
        }
    }

    /// The job with this id: from memory when this process runs or ran it, else from state.
    pub async fn get(&self, id: &str) -> Result<Option<JobRecord>> {
        let live = lock(&self.inner.known).0.get(id).cloned();
        match live {
            Some(l) => Ok(Some(l.snapshot())),
            None => self.inner.exporter.state().job(id).await,
        }
    }

    /// The newest `n` jobs this process knows, newest first (the status page).
    pub fn recent(&self, n: usize) -> Vec<JobRecord> {
        let known = lock(&self.inner.known);
        let (map, order) = &*known;
        order
            .iter()
            .rev()
            .filter_map(|id| map.get(id))
            .take(n)
            .map(|l| l.snapshot())
            .collect()
    }

    /// Waits until the job ends and returns its record.
    pub async fn wait(&self, id: &str) -> Option<Finished> {
        let live = lock(&self.inner.known).0.get(id).cloned()?;
        let mut rx = live.done.subscribe();
        // An error means the sender is gone, which only happens after the final send.
        let _ = rx.wait_for(|done| *done).await;
        Some(Finished {
            record: live.snapshot(),
            unavailable: live.unavailable.load(Ordering::SeqCst),
            position: live.position.load(Ordering::SeqCst),
        })
    }

    /// Jobs pending or running now.
    pub async fn active(&self) -> usize {
        self.inner.active.lock().await.len()
    }

    /// Stops taking jobs, lets running ones finish within `grace`, then abandons the rest (their
    /// exports stop before moving a watermark). Returns how many were abandoned.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.inner.accepting.store(false, Ordering::SeqCst);
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let abandoned = self.active().await;
        self.inner.cancel.cancel();
        self.inner.tracker.wait().await;
        abandoned
    }
}

fn file_name_of(path: &str) -> Option<String> {
    file_name_of_path(std::path::Path::new(path))
}

fn file_name_of_path(path: &std::path::Path) -> Option<String> {
    path.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// `host:pid` of this process.
fn owner() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    };
    format!("{host}:{}", std::process::id())
}
