//! `tidemark replicate`: applies a source table's changes to a target table in any of the three
//! databases. A replica is a consumer: each run reads the source in one snapshot (as exports
//! do), takes the delta from the target's stored position to the snapshot's, streams its rows
//! and applies them in multi-row batches inside ONE target transaction, which also moves the
//! position stored in the target (`tidemark_replica_positions`) — so a crash before the commit
//! repeats the interval (upserts and deletes by key are idempotent) and one after it never does.
//! Nothing is held in memory beyond a few batches. `--follow` repeats runs with low latency;
//! transient failures are retried with backoff; a change the target refuses stops replication
//! with an error naming it. The source's state store keeps an informational copy of each
//! replica's position ([`crate::state::replicas`]).

pub mod apply;
pub mod many;
pub mod nats;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::capture::{self, strategy_for, CaptureStrategy, Mode};
use crate::db::{
    connect, field, ConnectOptions, Database, DbUrl, Param, Privilege, RowSink, Settled,
    SnapshotOptions, TableInfo, Timestamp, Transaction, Wakeups,
};
use crate::error::{Error, Result};
// Crash tests set `TIDEMARK_FAULT` to `before-commit` or `after-commit`.
use crate::failpoint::fault;
use crate::ident::{ConsumerId, Ident, TableName};
use crate::state::replicas::ReplicaRecord;
use crate::state::{position_is_current, Position, StateStore, TableConfig};
use apply::{Change, TargetTable};

/// Rows per batch by default.
pub const DEFAULT_BATCH_SIZE: usize = 5000;

/// The table in the target that holds each replica's position.
pub const POSITIONS_TABLE: &str = "tidemark_replica_positions";

/// What to replicate and how.
#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    pub table: TableName,
    pub target_table: TableName,
    /// Rows per batch (one savepoint and a few multi-row statements each).
    pub batch_size: usize,
    /// The capture margin of source snapshots (as for exports).
    pub margin: Duration,
    /// Keep going until stopped.
    pub follow: bool,
    /// Shortest and longest wait between polls when nothing changed (follow).
    pub idle_min: Duration,
    pub idle_max: Duration,
    /// Attempts of a run that fails transiently when not following (following: forever).
    pub attempts: u32,
}

impl ReplicateOptions {
    /// Defaults for `table` into a target table of the same name.
    pub fn new(table: TableName) -> Self {
        ReplicateOptions {
            target_table: table.clone(),
            table,
            batch_size: DEFAULT_BATCH_SIZE,
            margin: crate::export::DEFAULT_MARGIN,
            follow: false,
            idle_min: Duration::from_millis(20),
            idle_max: Duration::from_millis(500),
            attempts: 5,
        }
    }
}

/// What one run (one interval) did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunOutcome {
    /// Delta rows applied (one per changed key; a key change is a delete and an insert).
    pub rows: u64,
    pub upserts: u64,
    pub deletes: u64,
    pub position_before: Option<Position>,
    pub position_after: Option<Position>,
    /// False when there was nothing to apply and the position stayed.
    pub committed: bool,
    /// How the source snapshot's bound was settled (waited, held back).
    pub settled: Settled,
    /// Why the target was resynchronised (emptied and copied again in the run's one target
    /// transaction): its position was made by another capture set-up of the source table, or
    /// it had rows but no position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resync: Option<String>,
}

/// What `replicate` did over all its runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub replica: ConsumerId,
    pub table: TableName,
    pub target: String,
    pub target_table: TableName,
    pub runs: u64,
    pub commits: u64,
    pub rows: u64,
    pub upserts: u64,
    pub deletes: u64,
    /// Transient failures retried.
    pub retries: u64,
    /// Why the target was resynchronised, once per resynchronisation (see [`RunOutcome`]).
    pub resyncs: Vec<String>,
    pub position: Option<Position>,
    pub seconds: f64,
    /// Milliseconds the runs waited for their source snapshots to cover every change
    /// committed before they started.
    pub waited_ms: u64,
    /// Set when the last run could not deliver changes from this time on: a write transaction
    /// open on the source since before it started still is (a later run delivers them).
    pub held_back_since: Option<Timestamp>,
}

struct Plan {
    target: Arc<dyn Database>,
    /// The source table's registration the plan was made for (its capture set-up).
    config: Option<TableConfig>,
    strategy: Box<dyn CaptureStrategy>,
    apply: Arc<TargetTable>,
    /// Empties the target table (a resynchronisation).
    delete_all: String,
}

/// Replicates one source table into one target table.
pub struct Replicator {
    source: Arc<dyn Database>,
    state: StateStore,
    target_url: DbUrl,
    opts: ReplicateOptions,
    replica: ConsumerId,
    source_id: String,
    plan: Option<Plan>,
    target: Option<Arc<dyn Database>>,
    /// Following a source whose triggers notify (PostgreSQL): the LISTEN connection.
    wakeups: Option<Box<dyn Wakeups>>,
}

impl Replicator {
    /// A replicator of `opts.table` of `source` (state in `state`) into `target_url`.
    pub fn new(
        source: Arc<dyn Database>,
        state: StateStore,
        target_url: DbUrl,
        opts: ReplicateOptions,
    ) -> Result<Self> {
        if opts.batch_size == 0 {
            return Err(Error::input("--batch-size must be at least 1"));
        }
        let hash = |s: &str| hex::encode(Sha256::digest(s.as_bytes()))[..16].to_string();
        let replica = ConsumerId::new(&format!(
            "replica-{}",
            hash(&format!(
                "{}\u{1f}{}",
                target_url.redacted(),
                opts.target_table
            ))
        ))?;
        let source_id = hash(&source.target());
        Ok(Replicator {
            source,
            state,
            target_url,
            opts,
            replica,
            source_id,
            plan: None,
            target: None,
            wakeups: None,
        })
    }

    /// The replica's consumer id (its lock and its record in the source's state store).
    pub fn replica(&self) -> &ConsumerId {
        &self.replica
    }

    /// Runs once (or, following, until `stop` resolves), holding the replica's lock.
    pub async fn run(&mut self, stop: impl Future<Output = ()>) -> Result<Summary> {
        let lock = self.state.lock(&self.replica, &self.opts.table).await?;
        let result = self.run_locked(stop).await;
        let released = lock.release().await;
        let summary = result?;
        released?;
        Ok(summary)
    }

    async fn run_locked(&mut self, stop: impl Future<Output = ()>) -> Result<Summary> {
        let t0 = Instant::now();
        let mut summary = Summary {
            replica: self.replica.clone(),
            table: self.opts.table.clone(),
            target: self.target_url.redacted(),
            target_table: self.opts.target_table.clone(),
            runs: 0,
            commits: 0,
            rows: 0,
            upserts: 0,
            deletes: 0,
            retries: 0,
            resyncs: Vec::new(),
            position: None,
            seconds: 0.0,
            waited_ms: 0,
            held_back_since: None,
        };
        tokio::pin!(stop);
        let mut idle = self.opts.idle_min;
        let mut failures = 0u32;
        loop {
            let attempt = tokio::select! {
                r = self.run_once() => r,
                _ = &mut stop => break,
            };
            let wait = match attempt {
                Ok(o) => {
                    failures = 0;
                    summary.runs += 1;
                    summary.rows += o.rows;
                    summary.upserts += o.upserts;
                    summary.deletes += o.deletes;
                    summary.waited_ms += o.settled.waited_ms;
                    summary.held_back_since = o.settled.held_back_since;
                    summary.resyncs.extend(o.resync.clone());
                    if o.committed {
                        summary.commits += 1;
                        summary.position = o.position_after.clone();
                    } else if summary.position.is_none() {
                        summary.position = o.position_before.clone();
                    }
                    if !self.opts.follow {
                        break;
                    }
                    self.listen().await;
                    if o.rows > 0 {
                        idle = self.opts.idle_min;
                        continue;
                    }
                    let w = idle;
                    idle = (idle * 2).min(self.opts.idle_max);
                    w
                }
                Err(e)
                    if is_transient(&e)
                        && (self.opts.follow || failures + 1 < self.opts.attempts) =>
                {
                    failures += 1;
                    summary.retries += 1;
                    // The pools reconnect by themselves; the plan is made again in case the
                    // target was recreated meanwhile.
                    self.plan = None;
                    let backoff = backoff(failures);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "replication failed transiently; retrying");
                    backoff
                }
                Err(e) => return Err(e),
            };
            let woken = async {
                match self.wakeups.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {},
                r = woken => {
                    if let Err(e) = r {
                        // Polling goes on; the next successful run listens again.
                        tracing::warn!(error = %e, "lost the notification connection");
                        self.wakeups = None;
                    }
                    idle = self.opts.idle_min;
                }
                _ = &mut stop => break,
            }
        }
        summary.seconds = t0.elapsed().as_secs_f64();
        Ok(summary)
    }

    /// Following: listens on the strategy's notification channel if the source has one, so
    /// that a commit wakes the next run at once (polling stays as the fallback).
    async fn listen(&mut self) {
        if self.wakeups.is_some() {
            return;
        }
        let Some(channel) = self
            .plan
            .as_ref()
            .and_then(|p| p.strategy.notify_channel(self.source.dialect()))
        else {
            return;
        };
        match self.source.listen(&channel).await {
            Ok(w) => {
                if w.is_some() {
                    tracing::info!(%channel, "woken by notifications");
                }
                self.wakeups = w;
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for notifications; polling"),
        }
    }

    async fn target(&mut self) -> Result<Arc<dyn Database>> {
        if let Some(t) = &self.target {
            return Ok(Arc::clone(t));
        }
        let t = connect(
            &self.target_url,
            ConnectOptions {
                create_if_missing: true,
                max_connections: Some(2),
            },
        )
        .await?;
        self.target = Some(Arc::clone(&t));
        Ok(t)
    }

    async fn prepare(&mut self) -> Result<()> {
        // Every run reads the registration: a teardown and setup while following makes a
        // new set-up, whose positions the old plan would not recognise.
        let config = self.state.table_config(&self.opts.table).await?;
        if self.plan.as_ref().is_some_and(|p| p.config == config) {
            return Ok(());
        }
        self.plan = None;
        let target = self.target().await?;
        let info: TableInfo = self.source.describe(&self.opts.table).await?;
        let strategy = strategy_for(&info, config.as_ref())?;
        // Checked before the target is touched: writing its table and positions table, or
        // creating the one that does not exist yet.
        let positions = TableName::unqualified(Ident::new(POSITIONS_TABLE)?);
        let mut names: Vec<String> = Vec::new();
        let mut positions_exist = false;
        for table in [&self.opts.target_table, &positions] {
            let exists = target.describe(table).await.is_ok();
            positions_exist = exists;
            let wanted: &[Privilege] = if exists {
                &[
                    Privilege::Select,
                    Privilege::Insert,
                    Privilege::Update,
                    Privilege::Delete,
                ]
            } else {
                &[Privilege::Create]
            };
            for name in crate::privilege::missing(target.as_ref(), table, wanted).await? {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        if !names.is_empty() {
            return Err(Error::Permission {
                needs: format!(
                    "{} on the replication target {}",
                    names.join(" and "),
                    self.target_url.redacted()
                ),
            });
        }
        let apply = TargetTable::prepare(
            target.as_ref(),
            self.source.kind(),
            &info,
            &self.opts.target_table,
        )
        .await?;
        let d = target.dialect();
        let (k, t) = (d.key_type(), d.text_type());
        // Even IF NOT EXISTS needs CREATE on PostgreSQL: run it only when needed.
        if !positions_exist {
            target
                .execute(
                    &format!(
                        "CREATE TABLE IF NOT EXISTS {POSITIONS_TABLE} (source_id {k} NOT NULL, \
                         source_table {k} NOT NULL, target_table {k} NOT NULL, \
                         position {t} NOT NULL, updated_at {k} NOT NULL, \
                         PRIMARY KEY (source_id, source_table, target_table))"
                    ),
                    &[],
                )
                .await?;
        }
        let delete_all = format!("DELETE FROM {}", d.quote_table(&self.opts.target_table));
        self.plan = Some(Plan {
            target,
            config,
            strategy,
            apply: Arc::new(apply),
            delete_all,
        });
        Ok(())
    }

    fn position_keys(&self) -> Vec<Param> {
        vec![
            self.source_id.as_str().into(),
            self.opts.table.as_str().into(),
            self.opts.target_table.as_str().into(),
        ]
    }

    /// One interval: from the target's position to a fresh source snapshot, applied and
    /// committed with the new position in one target transaction.
    pub async fn run_once(&mut self) -> Result<RunOutcome> {
        self.prepare().await?;
        let Some(plan) = &self.plan else {
            return Err(Error::Runtime("replication plan missing".into()));
        };
        let mut tx = plan.target.begin().await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT position FROM {POSITIONS_TABLE} \
                     WHERE source_id = ? AND source_table = ? AND target_table = ?"
                ),
                self.position_keys(),
            )
            .await?;
        let stored = rows
            .first()
            .and_then(|r| field(r, 0))
            .map(Position::from_json)
            .transpose()?;
        // `stored` is what the target's position moves from (compare-and-set); `before` what
        // this run reads from. A position of another capture set-up is never read: the target
        // is emptied and every live row copied again, in this same transaction.
        let mut resync = None;
        let before = match &stored {
            Some(p) if !position_is_current(p, plan.config.as_ref()) => {
                resync = Some(format!(
                    "the target's position ({} position of {}) was made by another capture \
                     set-up of {} than the current one ({}); the target was emptied and every \
                     live row copied again",
                    p.kind(),
                    p.setup()
                        .map_or("a set-up without an id".into(), |s| format!("set-up {s}")),
                    self.opts.table,
                    plan.config
                        .as_ref()
                        .map_or("timestamp defaults".into(), |c| format!(
                            "{} set-up {}",
                            c.strategy,
                            c.setup_id.as_deref().unwrap_or("without an id")
                        )),
                ));
                None
            }
            other => other.clone(),
        };
        let mut snapshot = self
            .source
            .snapshot(&SnapshotOptions::new(
                self.opts.margin,
                plan.strategy.clock_need(),
            ))
            .await?;
        let settled = snapshot.bound().settled;
        let after = capture::reach(
            plan.strategy.as_ref(),
            self.source.dialect(),
            snapshot.as_mut(),
            before.as_ref(),
        )
        .await?;
        let select =
            plan.strategy
                .select(self.source.dialect(), Mode::Delta, before.as_ref(), &after)?;
        // After the source snapshot: a write in the target transaction on the same MariaDB
        // server would otherwise hold the snapshot's capture bound back.
        if before.is_none() {
            let deleted = match tx.execute(&plan.delete_all, Vec::new()).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = snapshot.finish().await;
                    let _ = tx.rollback().await;
                    return Err(e);
                }
            };
            if deleted > 0 && resync.is_none() {
                resync = Some(format!(
                    "the target table had {} but no position; it was emptied and every live \
                     row copied",
                    crate::words::count(deleted, "row")
                ));
            }
        }

        // The source is read by its own task; full batches come over a channel of two, so at
        // most four batches exist at once whatever the interval's size.
        let (sender, mut batches) = mpsc::channel::<Vec<Change>>(2);
        let batch_size = self.opts.batch_size;
        let sql = select.sql;
        tracing::debug!(%sql, "reading the interval's changes");
        let reader = tokio::spawn(async move {
            let mut sink = Batches::new(sender, batch_size, "replication");
            let streamed = snapshot.stream(&sql, &mut sink).await;
            let flushed = sink
                .flush()
                .map_err(|e| Error::io("read delta", "<channel>", e));
            drop(sink);
            let finished = snapshot.finish().await;
            let n = streamed?;
            flushed?;
            finished?;
            Ok::<u64, Error>(n)
        });
        let mut outcome = RunOutcome {
            position_before: stored.clone(),
            resync,
            settled: Settled {
                held_back_since: capture::held_back_since(&settled, before.as_ref()),
                ..settled
            },
            ..RunOutcome::default()
        };
        while let Some(batch) = batches.recv().await {
            match self.apply_batch(tx.as_mut(), plan, &batch).await {
                Ok((u, d)) => {
                    outcome.upserts += u;
                    outcome.deletes += d;
                    outcome.rows += u + d;
                }
                Err(e) => {
                    reader.abort();
                    let _ = tx.rollback().await;
                    return Err(e);
                }
            }
        }
        let read = reader
            .await
            .map_err(|e| Error::Runtime(format!("source reader failed: {e}")))?;
        if let Err(e) = read {
            let _ = tx.rollback().await;
            return Err(e);
        }
        if outcome.rows == 0 && before.is_some() {
            // Nothing changed: the position stays, no write on the target.
            tx.rollback().await?;
            outcome.position_after = before;
            return Ok(outcome);
        }
        let now = Timestamp::now().to_string();
        let moved = match &stored {
            Some(b) => {
                let mut params = vec![after.to_json().into(), now.as_str().into()];
                params.extend(self.position_keys());
                params.push(b.to_json().into());
                tx.execute(
                    &format!(
                        "UPDATE {POSITIONS_TABLE} SET position = ?, updated_at = ? \
                         WHERE source_id = ? AND source_table = ? AND target_table = ? \
                         AND position = ?"
                    ),
                    params,
                )
                .await?
            }
            None => {
                let mut params = self.position_keys();
                params.extend([after.to_json().into(), now.as_str().into()]);
                tx.execute(
                    &format!(
                        "INSERT INTO {POSITIONS_TABLE} (source_id, source_table, target_table, \
                         position, updated_at) VALUES (?, ?, ?, ?, ?)"
                    ),
                    params,
                )
                .await?
            }
        };
        if moved != 1 {
            let _ = tx.rollback().await;
            return Err(Error::Conflict {
                consumer: self.replica.to_string(),
                table: self.opts.table.to_string(),
            });
        }
        fault("before-commit");
        tx.commit().await?;
        fault("after-commit");
        outcome.committed = true;
        outcome.position_after = Some(after.clone());
        let record = ReplicaRecord {
            replica: self.replica.clone(),
            table: self.opts.table.clone(),
            target: self.target_url.redacted(),
            target_table: self.opts.target_table.clone(),
            position: Some(after),
            rows_applied: outcome.rows,
            updated_at: Timestamp::now(),
        };
        // The target holds the truth; this copy may lag (it is only ever behind). A transient
        // failure (a deadlock with another replicator's record, a restart) is tried again.
        for attempt in 1..=3 {
            match self.state.save_replica(&record).await {
                Ok(()) => break,
                Err(e) if e.is_transient() && attempt < 3 => {
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not record the replica's position in the source's state");
                    break;
                }
            }
        }
        Ok(outcome)
    }

    /// Applies one batch inside a savepoint. When the target refuses it for a reason other
    /// than a transient one, the batch is undone and its rows are applied one by one to find
    /// and name the change that fails.
    async fn apply_batch(
        &self,
        tx: &mut dyn Transaction,
        plan: &Plan,
        batch: &[Change],
    ) -> Result<(u64, u64)> {
        tx.execute("SAVEPOINT tidemark_batch", Vec::new()).await?;
        match plan.apply.apply(tx, batch).await {
            Ok(n) => {
                tx.execute("RELEASE SAVEPOINT tidemark_batch", Vec::new())
                    .await?;
                Ok(n)
            }
            Err(e) if is_transient(&e) => Err(e),
            Err(e) => {
                tx.execute("ROLLBACK TO SAVEPOINT tidemark_batch", Vec::new())
                    .await?;
                for c in batch {
                    if let Err(one) = plan.apply.apply(tx, std::slice::from_ref(c)).await {
                        if is_transient(&one) {
                            return Err(one);
                        }
                        return Err(Error::Apply {
                            change: plan.apply.describe_change(&self.opts.table, c),
                            target: format!(
                                "{} table {}",
                                self.target_url.redacted(),
                                self.opts.target_table
                            ),
                            reason: one.to_string(),
                        });
                    }
                }
                Err(e)
            }
        }
    }
}

/// Collects rows into batches and hands full ones to the task that applies or publishes them.
/// The source stream calls it synchronously, so a full channel blocks this (reader) task's
/// thread, which [`tokio::task::block_in_place`] allows on the multi-threaded runtime.
pub(crate) struct Batches<T> {
    sender: mpsc::Sender<Vec<T>>,
    batch: Vec<T>,
    batch_size: usize,
    /// What the receiving side does (`replication`, `publishing`), for messages.
    work: &'static str,
}

impl<T> Batches<T> {
    pub(crate) fn new(sender: mpsc::Sender<Vec<T>>, batch_size: usize, work: &'static str) -> Self {
        Batches {
            sender,
            batch: Vec::with_capacity(batch_size),
            batch_size,
            work,
        }
    }

    fn push(&mut self, item: T) -> std::io::Result<()> {
        self.batch.push(item);
        if self.batch.len() >= self.batch_size {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands over what is collected (the stream's end calls it for the last batch).
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.batch, Vec::with_capacity(self.batch_size));
        let sender = &self.sender;
        let sent = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => {
                return Err(std::io::Error::other(format!(
                    "{} needs the multi-threaded runtime",
                    self.work
                )))
            }
            Ok(_) => tokio::task::block_in_place(|| sender.blocking_send(full)),
            Err(_) => sender.blocking_send(full),
        };
        sent.map_err(|_| std::io::Error::other(format!("{} stopped", self.work)))
    }
}

/// Delta rows as changes to apply.
impl RowSink for Batches<Change> {
    fn write_fields(&mut self, fields: &[Option<&str>]) -> std::io::Result<()> {
        self.push(Change::from_fields(fields.iter().copied())?)
    }

    fn write_csv_record(&mut self, record: &[u8]) -> std::io::Result<()> {
        self.push(Change::from_fields(apply::parse_csv_record(record)?)?)
    }
}

/// Rows as their text fields.
impl RowSink for Batches<Vec<Option<String>>> {
    fn write_fields(&mut self, fields: &[Option<&str>]) -> std::io::Result<()> {
        self.push(fields.iter().map(|f| f.map(str::to_string)).collect())
    }

    fn write_csv_record(&mut self, record: &[u8]) -> std::io::Result<()> {
        self.push(apply::parse_csv_record(record)?)
    }
}

/// The wait before retry number `failures` (from 1) of a run that failed transiently: doubling
/// from 200 ms, at most 10 s. Replication and publishing back off alike.
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1 << failures.min(7))
        .min(Duration::from_secs(10))
}

/// True for failures a retry can cure (see [`Error::is_transient`]).
pub fn is_transient(e: &Error) -> bool {
    e.is_transient()
}
