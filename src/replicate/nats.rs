//! `tidemark replicate --target nats://HOST:PORT[/STREAM]`: publishes a table's changes to a
//! NATS JetStream stream, one JSON message per change (see [`message`] for its shape), subject
//! `tidemark.{table}.{operation}` by default ([`SubjectTemplate`]).
//!
//! Contract:
//! - **Order.** One publisher per (stream, table) at a time (the state store's lock); it
//!   publishes the changes of a table interval by interval, each interval in commit order
//!   (trigger capture: change-id order; otherwise the strategy's delta order), waiting for the
//!   acks of at most [`WINDOW`] messages ([`WINDOW_BYTES`] bytes) at once, in publication
//!   order. A run is done only when every ack is in.
//! - **Durable when.** A change is delivered once JetStream acked it. The position lives in the
//!   stream itself: every message carries its interval (`Tidemark-From`, `Tidemark-To`
//!   positions), its ordinal, its change id (trigger capture) and whether it is the interval's
//!   last (`Tidemark-Last`). Each run starts from the last message of the table's subjects: after
//!   a last message, from its `Tidemark-To`; after any other, the interval is finished first.
//! - **Exactly once.** Every message has a deterministic `Nats-Msg-Id` (source, capture set-up,
//!   table, change id or interval and ordinal), so JetStream drops a re-publication within its
//!   duplicate window; beyond it, recovery from the stream does the same work: with trigger
//!   capture an interval is read again exactly as before (bounded on both sides) and the
//!   changes up to the last change id in the stream are skipped, so a publisher killed at any
//!   instant neither loses nor repeats a change.
//! - **What may repeat.** Where the interval cannot be read again identically — the first
//!   run's copy of the table (every live row as `INSERT`) and the `timestamp`/`version`
//!   strategies, whose messages are net changes per key — a publisher killed in the middle of an
//!   interval publishes that interval again from its start, with newer row images: its keys may
//!   come twice (never lost, and the later message carries the newer state).
//! - The source's state store keeps a copy of the stream's position (as a replica record,
//!   written after each run's acks), so `status` and `/metrics` show its position and lag.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture};
use base64::Engine;
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{ReplicateOptions, Summary};
use crate::capture::{self, strategy_for, CaptureStrategy, Mode};
use crate::db::{Column, ColumnKind, Database, SnapshotOptions, TableInfo, Timestamp, Wakeups};
use crate::error::{ConnectFailure, Error, Result};
use crate::ident::{ConsumerId, TableName};
use crate::state::replicas::ReplicaRecord;
use crate::state::{position_is_current, Position, StateStore, TableConfig};

/// The stream's name when the URL names none.
pub const DEFAULT_STREAM: &str = "TIDEMARK";

/// The subject template by default.
pub const DEFAULT_SUBJECT_TEMPLATE: &str = "tidemark.{table}.{operation}";

/// Messages whose acks are awaited at once, at most.
pub const WINDOW: usize = 512;

/// Payload bytes whose acks are awaited at once, at most (wide rows make a shorter window;
/// one message is always let through).
pub const WINDOW_BYTES: usize = 8 << 20;

/// The publishes whose acks are still to come, oldest first, bounded by [`WINDOW`] messages
/// and [`WINDOW_BYTES`] bytes. Acks are awaited in publication order.
#[derive(Default)]
struct Window {
    acks: VecDeque<(PublishAckFuture, usize)>,
    bytes: usize,
}

impl Window {
    /// True when a message of `size` bytes must wait for the oldest ack first.
    fn full(&self, size: usize) -> bool {
        !self.acks.is_empty()
            && (self.acks.len() >= WINDOW || self.bytes.saturating_add(size) > WINDOW_BYTES)
    }

    fn push(&mut self, ack: PublishAckFuture, size: usize) {
        self.bytes = self.bytes.saturating_add(size);
        self.acks.push_back((ack, size));
    }

    /// The oldest ack still to come.
    fn pop(&mut self) -> Option<PublishAckFuture> {
        let (ack, size) = self.acks.pop_front()?;
        self.bytes = self.bytes.saturating_sub(size);
        Some(ack)
    }
}

/// True when `target` names a NATS server (`nats://…`).
pub fn is_nats_url(target: &str) -> bool {
    target.starts_with("nats://")
}

/// A parsed `nats://HOST:PORT[/STREAM]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrl {
    /// `HOST:PORT` (port 4222 when the URL names none).
    pub address: String,
    pub stream: String,
}

impl NatsUrl {
    /// Parses the URL; anything else than a host, an optional port and an optional stream name
    /// of letters, digits, `_` and `-` is refused (exit 2).
    pub fn parse(s: &str) -> Result<NatsUrl> {
        let bad = |reason: &str| Error::InvalidUrl {
            url: s.to_string(),
            reason: reason.to_string(),
        };
        let url = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "nats" {
            return Err(bad("expected nats://HOST:PORT[/STREAM]"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("credentials in the URL are not supported"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("expected nats://HOST:PORT[/STREAM], without ? or #"));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?;
        let port = url.port().unwrap_or(4222);
        let path = url.path().trim_start_matches('/');
        let stream = if path.is_empty() {
            DEFAULT_STREAM.to_string()
        } else {
            if !path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad(
                    "the stream name may have letters, digits, _ and - only (nats://HOST:PORT/STREAM)",
                ));
            }
            path.to_string()
        };
        Ok(NatsUrl {
            address: format!("{host}:{port}"),
            stream,
        })
    }

    /// The URL as shown to people: `nats://HOST:PORT/STREAM`.
    pub fn shown(&self) -> String {
        format!("nats://{}/{}", self.address, self.stream)
    }
}

/// Where a table's changes go: a template of `.`-separated tokens, each literal or one of
/// `{table}` (the table's name; `schema.name` makes two tokens) and `{operation}` (`insert`,
/// `update`, `delete`). It must start with a literal token and name `{table}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    tokens: Vec<String>,
}

impl SubjectTemplate {
    /// Parses and checks a template.
    pub fn parse(s: &str) -> Result<SubjectTemplate> {
        let bad =
            |reason: String| Error::input(format!("invalid --subject-template {s:?}: {reason}"));
        let tokens: Vec<String> = s.split('.').map(str::to_string).collect();
        for t in &tokens {
            if t == "{table}" || t == "{operation}" {
                continue;
            }
            if !valid_token(t) {
                return Err(bad(format!(
                    "token {t:?} is neither {{table}}, {{operation}} nor a literal of \
                     letters, digits, _ and -"
                )));
            }
        }
        if !tokens.iter().any(|t| t == "{table}") {
            return Err(bad("it must name {table}".into()));
        }
        if tokens.first().is_some_and(|t| t.starts_with('{')) {
            return Err(bad("it must start with a literal token".into()));
        }
        Ok(SubjectTemplate { tokens })
    }

    fn fill(&self, table: &TableName, operation: &str) -> Result<String> {
        let name = table.as_str();
        if !name.split('.').all(valid_token) {
            return Err(Error::input(format!(
                "table {name:?} cannot be part of a NATS subject (letters, digits, _ and - only)"
            )));
        }
        Ok(self
            .tokens
            .iter()
            .map(|t| match t.as_str() {
                "{table}" => name,
                "{operation}" => operation,
                other => other,
            })
            .collect::<Vec<_>>()
            .join("."))
    }

    /// The subject of `table`'s changes of `operation` (`INSERT`, …; lower-cased).
    pub fn subject(&self, table: &TableName, operation: &str) -> Result<String> {
        self.fill(table, &operation.to_ascii_lowercase())
    }

    /// The subjects of all of `table`'s changes (`{operation}` as `*`).
    pub fn filter(&self, table: &TableName) -> Result<String> {
        self.fill(table, "*")
    }

    /// The subjects a stream created for this template takes: its literal head, then `>`.
    pub fn stream_subjects(&self) -> String {
        let head: Vec<&str> = self
            .tokens
            .iter()
            .take_while(|t| !t.starts_with('{'))
            .map(String::as_str)
            .collect();
        format!("{}.>", head.join("."))
    }
}

fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// True when every subject `filter` matches is one `pattern` matches (NATS wildcards).
fn covers(pattern: &str, filter: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let f: Vec<&str> = filter.split('.').collect();
    for (i, pt) in p.iter().enumerate() {
        if *pt == ">" {
            return f.len() > i;
        }
        let Some(ft) = f.get(i) else {
            return false;
        };
        match (*pt, *ft) {
            ("*", ">") => return false,
            ("*", _) => {}
            (a, b) if a == b => {}
            _ => return false,
        }
    }
    p.len() == f.len()
}

/// What to publish: the replication options plus the stream's subjects.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub replicate: ReplicateOptions,
    pub subjects: SubjectTemplate,
}

fn nats_error(target: &NatsUrl, failure: ConnectFailure, detail: impl std::fmt::Display) -> Error {
    Error::Connect {
        target: target.shown(),
        failure,
        detail: detail.to_string(),
    }
}

/// A table's publishing plan, made again when its capture set-up changes.
struct Plan {
    config: Option<TableConfig>,
    strategy: Box<dyn CaptureStrategy>,
    info: TableInfo,
    stream: jetstream::stream::Stream,
    filter: String,
}

/// Where the stream stands for this table, from its last message.
#[derive(Debug, Clone, Default)]
struct Recovered {
    /// Every change up to here is in the stream.
    position: Option<Position>,
    /// An interval whose last message is not in the stream yet.
    partial: Option<Partial>,
}

#[derive(Debug, Clone)]
struct Partial {
    from: Option<Position>,
    to: Position,
    /// The last change id of the interval in the stream (trigger capture).
    change_id: Option<i64>,
    ordinal: u64,
}

/// Publishes one table's changes to one stream.
pub struct Publisher {
    source: Arc<dyn Database>,
    state: StateStore,
    target: NatsUrl,
    opts: PublishOptions,
    replica: ConsumerId,
    source_id: String,
    js: Option<(jetstream::Context, Arc<AtomicBool>)>,
    plan: Option<Plan>,
    wakeups: Option<Box<dyn Wakeups>>,
}

/// What one run published.
#[derive(Debug, Default)]
struct RunOutcome {
    messages: u64,
    upserts: u64,
    deletes: u64,
    intervals: u64,
    position: Option<Position>,
    resync: Option<String>,
    waited_ms: u64,
    held_back_since: Option<Timestamp>,
}

impl Publisher {
    /// A publisher of `opts.replicate.table` of `source` (state in `state`) to `target`.
    pub fn new(
        source: Arc<dyn Database>,
        state: StateStore,
        target: NatsUrl,
        opts: PublishOptions,
    ) -> Result<Self> {
        if opts.replicate.batch_size == 0 {
            return Err(Error::input("--batch-size must be at least 1"));
        }
        let replica = ConsumerId::new(&format!(
            "stream-{}",
            short_hash(&format!(
                "{}\u{1f}{}",
                target.shown(),
                opts.subjects.tokens.join(".")
            ))
        ))?;
        let source_id = short_hash(&source.target());
        Ok(Publisher {
            source,
            state,
            target,
            opts,
            replica,
            source_id,
            js: None,
            plan: None,
            wakeups: None,
        })
    }

    /// The stream's consumer id in the source's state (its lock and its record).
    pub fn replica(&self) -> &ConsumerId {
        &self.replica
    }

    /// Runs once (or, following, until `stop` resolves), holding the publisher's lock.
    pub async fn run(&mut self, stop: impl Future<Output = ()>) -> Result<Summary> {
        let table = self.opts.replicate.table.clone();
        let lock = self.state.lock(&self.replica, &table).await?;
        let result = self.run_locked(stop).await;
        let released = lock.release().await;
        let summary = result?;
        released?;
        Ok(summary)
    }

    async fn run_locked(&mut self, stop: impl Future<Output = ()>) -> Result<Summary> {
        let t0 = Instant::now();
        let o = self.opts.replicate.clone();
        let mut summary = Summary {
            replica: self.replica.clone(),
            table: o.table.clone(),
            target: self.target.shown(),
            target_table: o.table.clone(),
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
        let mut idle = o.idle_min;
        let mut failures = 0u32;
        loop {
            let attempt = tokio::select! {
                r = self.run_once() => r,
                _ = &mut stop => break,
            };
            let wait = match attempt {
                Ok(r) => {
                    failures = 0;
                    summary.runs += 1;
                    summary.rows += r.messages;
                    summary.upserts += r.upserts;
                    summary.deletes += r.deletes;
                    summary.commits += r.intervals;
                    summary.waited_ms += r.waited_ms;
                    summary.held_back_since = r.held_back_since;
                    summary.resyncs.extend(r.resync);
                    if r.position.is_some() {
                        summary.position = r.position;
                    }
                    if !o.follow {
                        break;
                    }
                    self.listen().await;
                    if r.messages > 0 {
                        idle = o.idle_min;
                        continue;
                    }
                    let w = idle;
                    idle = (idle * 2).min(o.idle_max);
                    w
                }
                Err(e) if e.is_transient() && (o.follow || failures + 1 < o.attempts) => {
                    failures += 1;
                    summary.retries += 1;
                    // A new connection and plan: nothing the old connection still buffers may
                    // reach the stream after what the next run publishes.
                    self.js = None;
                    self.plan = None;
                    let backoff = super::backoff(failures);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "publishing failed transiently; retrying");
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
                        tracing::warn!(error = %e, "lost the notification connection");
                        self.wakeups = None;
                    }
                    idle = o.idle_min;
                }
                _ = &mut stop => break,
            }
        }
        summary.seconds = t0.elapsed().as_secs_f64();
        Ok(summary)
    }

    /// Following: wakes on the strategy's notifications where the source has them.
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
            Ok(w) => self.wakeups = w,
            Err(e) => tracing::warn!(error = %e, "cannot listen for notifications; polling"),
        }
    }

    /// The JetStream context, connecting first. A lost connection poisons it: the run fails
    /// and the next one connects again (see [`Publisher::run_locked`]).
    async fn jetstream(&mut self) -> Result<jetstream::Context> {
        if let Some((js, lost)) = &self.js {
            if !lost.load(Ordering::SeqCst) {
                return Ok(js.clone());
            }
        }
        self.js = None;
        let lost = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&lost);
        // The client never reconnects by itself: what it still buffered when the connection
        // broke would reach the stream after messages lost with the connection, leaving a gap
        // behind the last message that recovery trusts. The run fails instead, and the next
        // one connects afresh (only then is the stream's last message read again).
        let connected = Arc::new(AtomicBool::new(false));
        let once = Arc::clone(&connected);
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(move |_| {
                if once.load(Ordering::SeqCst) {
                    Duration::from_secs(365 * 86400)
                } else {
                    Duration::ZERO
                }
            })
            .event_callback(move |e| {
                let flag = Arc::clone(&flag);
                async move {
                    if matches!(
                        e,
                        async_nats::Event::Disconnected | async_nats::Event::Closed
                    ) {
                        flag.store(true, Ordering::SeqCst);
                    }
                }
            })
            .connect(self.target.address.as_str())
            .await
            .map_err(|e| {
                use async_nats::ConnectErrorKind as K;
                let failure = match e.kind() {
                    K::TimedOut => ConnectFailure::TimedOut,
                    K::Dns => ConnectFailure::UnknownHost,
                    K::Authentication | K::AuthorizationViolation => ConnectFailure::BadCredentials,
                    K::Tls => ConnectFailure::Tls,
                    K::Io => ConnectFailure::Refused,
                    _ => ConnectFailure::Network,
                };
                nats_error(&self.target, failure, e)
            })?;
        connected.store(true, Ordering::SeqCst);
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client);
        self.js = Some((js.clone(), lost));
        Ok(js)
    }

    /// The stream, created if missing; refused (exit 2) when it exists and does not take the
    /// table's subjects, or when creating it collides with another stream's subjects.
    async fn stream(
        &self,
        js: &jetstream::Context,
        filter: &str,
    ) -> Result<jetstream::stream::Stream> {
        use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind};
        use async_nats::jetstream::ErrorCode;
        let name = &self.target.stream;
        match js.get_stream(name).await {
            Ok(mut s) => {
                let subjects = s
                    .info()
                    .await
                    .map_err(|e| nats_error(&self.target, ConnectFailure::Network, e))?
                    .config
                    .subjects
                    .clone();
                if !subjects.iter().any(|p| covers(p, filter)) {
                    return Err(Error::input(format!(
                        "the stream {name} on {} takes the subjects {} but not {filter}: name \
                         another stream in the URL or a --subject-template it takes",
                        self.target.address,
                        subjects.join(", ")
                    )));
                }
                Ok(s)
            }
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    let subjects = self.opts.subjects.stream_subjects();
                    let config = jetstream::stream::Config {
                        name: name.clone(),
                        subjects: vec![subjects.clone()],
                        duplicate_window: Duration::from_secs(120),
                        ..Default::default()
                    };
                    match js.create_stream(config).await {
                        Ok(s) => {
                            tracing::info!(stream = %name, %subjects, "created the stream");
                            Ok(s)
                        }
                        Err(e) => match e.kind() {
                            CreateStreamErrorKind::JetStream(j)
                                if j.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP =>
                            {
                                let other = js
                                    .stream_by_subject(filter.replace('*', "insert"))
                                    .await
                                    .unwrap_or_else(|_| "another stream".into());
                                Err(Error::input(format!(
                                    "cannot create the stream {name} with subjects {subjects}: \
                                     they overlap the subjects of the stream {other} on {}; \
                                     publish to that stream (nats://{}/{other}) or choose a \
                                     --subject-template no other stream takes",
                                    self.target.address, self.target.address
                                )))
                            }
                            _ => Err(nats_error(&self.target, ConnectFailure::Network, e)),
                        },
                    }
                }
                GetStreamErrorKind::InvalidStreamName | GetStreamErrorKind::EmptyName => {
                    Err(Error::input(format!("invalid stream name {name:?}: {e}")))
                }
                _ => Err(nats_error(&self.target, ConnectFailure::Network, e)),
            },
        }
    }

    async fn prepare(&mut self) -> Result<()> {
        let table = self.opts.replicate.table.clone();
        let config = self.state.table_config(&table).await?;
        if self.plan.as_ref().is_some_and(|p| p.config == config) && self.js.is_some() {
            return Ok(());
        }
        self.plan = None;
        let filter = self.opts.subjects.filter(&table)?;
        let info = self.source.describe(&table).await?;
        if info.primary_key.is_empty() {
            return Err(Error::UnfitTable {
                table: table.to_string(),
                reason: "it has no primary key (each message names its row by key)".into(),
            });
        }
        let strategy = strategy_for(&info, config.as_ref())?;
        let js = self.jetstream().await?;
        let stream = self.stream(&js, &filter).await?;
        self.plan = Some(Plan {
            config,
            strategy,
            info,
            stream,
            filter,
        });
        Ok(())
    }

    /// Reads the last message of the table's subjects.
    async fn recover(&self, plan: &Plan) -> Result<Recovered> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind as K;
        let last = match plan
            .stream
            .get_last_raw_message_by_subject(&plan.filter)
            .await
        {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), K::NoMessageFound) => return Ok(Recovered::default()),
            Err(e) => return Err(nats_error(&self.target, ConnectFailure::Network, e)),
        };
        let header = |name: &str| last.headers.get(name).map(|v| v.as_str().to_string());
        let corrupt = |what: &str| {
            Error::Runtime(format!(
                "the last message of {} in the stream {} (sequence {}) has {what}; it was not \
                 published by tidemark",
                plan.filter, self.target.stream, last.sequence
            ))
        };
        let source =
            header("Tidemark-Source").ok_or_else(|| corrupt("no Tidemark-Source header"))?;
        if source != self.source_id {
            return Err(Error::input(format!(
                "the subjects {} of the stream {} hold changes of another source database                  (source id {source}, this one is {}): publish to another stream or with a                  --subject-template of its own",
                plan.filter, self.target.stream, self.source_id
            )));
        }
        let to = header("Tidemark-To").ok_or_else(|| corrupt("no Tidemark-To header"))?;
        let to = Position::from_json(&to)?;
        let from = match header("Tidemark-From").filter(|s| !s.is_empty()) {
            Some(s) => Some(Position::from_json(&s)?),
            None => None,
        };
        if header("Tidemark-Last").as_deref() == Some("true") {
            return Ok(Recovered {
                position: Some(to),
                partial: None,
            });
        }
        let ordinal = header("Tidemark-Ordinal")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("no Tidemark-Ordinal header"))?;
        let change_id = header("Tidemark-Change-Id").and_then(|s| s.parse().ok());
        Ok(Recovered {
            position: from.clone(),
            partial: Some(Partial {
                from,
                to,
                change_id,
                ordinal,
            }),
        })
    }

    /// One run: finishes an interval a killed publisher left unfinished, then publishes the
    /// changes from the stream's position to a fresh source snapshot.
    async fn run_once(&mut self) -> Result<RunOutcome> {
        self.prepare().await?;
        let js = self.jetstream().await?;
        let Some(plan) = self.plan.as_ref() else {
            return Err(Error::Runtime("publishing plan missing".into()));
        };
        let mut outcome = RunOutcome::default();
        let recovered = self.recover(plan).await?;
        let mut position = recovered.position.clone();
        if let Some(p) = &recovered.partial {
            let repeatable = match &p.from {
                Some(from) => plan
                    .strategy
                    .change_rows(self.source.dialect(), from, &p.to)?
                    .filter(|_| position_is_current(from, plan.config.as_ref())),
                None => None,
            };
            if let Some(sql) = repeatable {
                // The same interval, read again exactly: skip what the stream has.
                let snapshot = self
                    .source
                    .snapshot(&SnapshotOptions::new(
                        self.opts.replicate.margin,
                        plan.strategy.clock_need(),
                    ))
                    .await?;
                let skip = Skip {
                    change_id: p.change_id,
                    ordinal: p.ordinal,
                };
                self.publish_interval(
                    &js,
                    plan,
                    snapshot,
                    Source::ChangeRows(sql),
                    p.from.as_ref(),
                    &p.to,
                    Some(skip),
                    &mut outcome,
                )
                .await?;
                position = Some(p.to.clone());
            } else {
                tracing::info!(
                    "an interval of {} was left unfinished; publishing it again from its start",
                    self.opts.replicate.table
                );
            }
        }
        if let Some(p) = &position {
            if !position_is_current(p, plan.config.as_ref()) {
                outcome.resync = Some(format!(
                    "the stream's position for {} was made by another capture set-up than the \
                     current one; every live row is published again as INSERT",
                    self.opts.replicate.table
                ));
                position = None;
            }
        }
        let mut snapshot = self
            .source
            .snapshot(&SnapshotOptions::new(
                self.opts.replicate.margin,
                plan.strategy.clock_need(),
            ))
            .await?;
        let settled = snapshot.bound().settled;
        let after = match capture::reach(
            plan.strategy.as_ref(),
            self.source.dialect(),
            snapshot.as_mut(),
            position.as_ref(),
        )
        .await
        {
            Ok(a) => a,
            Err(e) => {
                let _ = snapshot.finish().await;
                return Err(e);
            }
        };
        outcome.waited_ms = settled.waited_ms;
        outcome.held_back_since = capture::held_back_since(&settled, position.as_ref());
        let d = self.source.dialect();
        let source = match position
            .as_ref()
            .map(|p| plan.strategy.change_rows(d, p, &after))
            .transpose()?
            .flatten()
        {
            Some(sql) => Source::ChangeRows(sql),
            None => Source::Delta(
                plan.strategy
                    .select(d, Mode::Delta, position.as_ref(), &after)?
                    .sql,
            ),
        };
        let published = self
            .publish_interval(
                &js,
                plan,
                snapshot,
                source,
                position.as_ref(),
                &after,
                None,
                &mut outcome,
            )
            .await?;
        if published > 0 {
            position = Some(after);
        }
        outcome.position = position.clone();
        if outcome.messages > 0 {
            self.save_record(position, outcome.messages).await;
        }
        Ok(outcome)
    }

    /// The informational copy in the source's state (never ahead of the stream).
    async fn save_record(&self, position: Option<Position>, messages: u64) {
        let record = ReplicaRecord {
            replica: self.replica.clone(),
            table: self.opts.replicate.table.clone(),
            target: self.target.shown(),
            target_table: self.opts.replicate.table.clone(),
            position,
            rows_applied: messages,
            updated_at: Timestamp::now(),
        };
        for attempt in 1..=3 {
            match self.state.save_replica(&record).await {
                Ok(()) => break,
                Err(e) if e.is_transient() && attempt < 3 => {
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not record the stream's position in the source's state");
                    break;
                }
            }
        }
    }

    /// Streams the interval's rows from `snapshot` and publishes them in order, the last one
    /// marked; returns how many were published. Messages up to `skip` are in the stream
    /// already.
    #[allow(clippy::too_many_arguments)]
    async fn publish_interval(
        &self,
        js: &jetstream::Context,
        plan: &Plan,
        mut snapshot: Box<dyn crate::db::Snapshot>,
        source: Source,
        from: Option<&Position>,
        to: &Position,
        skip: Option<Skip>,
        outcome: &mut RunOutcome,
    ) -> Result<u64> {
        let (sender, mut batches) = mpsc::channel::<Vec<Vec<Option<String>>>>(2);
        let batch_size = self.opts.replicate.batch_size;
        let (sql, per_change) = match source {
            Source::ChangeRows(sql) => (sql, true),
            Source::Delta(sql) => (sql, false),
        };
        tracing::debug!(%sql, "reading the interval's changes");
        let reader = tokio::spawn(async move {
            let mut sink = super::Batches::new(sender, batch_size, "publishing");
            let streamed = snapshot.stream(&sql, &mut sink).await;
            let flushed = sink
                .flush()
                .map_err(|e| Error::io("read changes", "<channel>", e));
            drop(sink);
            let finished = snapshot.finish().await;
            let n = streamed?;
            flushed?;
            finished?;
            Ok::<u64, Error>(n)
        });
        let header = Header {
            from: from.map(Position::to_json).unwrap_or_default(),
            to: to.to_json(),
            position: to.clone(),
            to_hash: short_hash(&to.to_json()),
            commit_time: to.time().to_string(),
        };
        let mut inflight = Window::default();
        let mut held: Option<Outgoing> = None;
        let mut ordinal: u64 = 0;
        let mut published = 0u64;
        let result: Result<()> = async {
            while let Some(batch) = batches.recv().await {
                for fields in batch {
                    let n = ordinal;
                    ordinal += 1;
                    let msg = if per_change {
                        self.change_message(plan, &header, &fields, n)?
                    } else {
                        self.delta_message(plan, &header, &fields, n)?
                    };
                    if let Some(s) = &skip {
                        let done = match (s.change_id, msg.change_id) {
                            (Some(last), Some(id)) => id <= last,
                            _ => n <= s.ordinal,
                        };
                        if done {
                            continue;
                        }
                    }
                    if let Some(prev) = held.replace(msg) {
                        self.send(js, prev, false, &mut inflight, outcome).await?;
                        published += 1;
                    }
                }
            }
            // The interval is marked complete only once every row of it was read.
            reader
                .await
                .map_err(|e| Error::Runtime(format!("source reader failed: {e}")))??;
            if let Some(last) = held.take() {
                self.send(js, last, true, &mut inflight, outcome).await?;
                published += 1;
            }
            while let Some(ack) = inflight.pop() {
                self.await_ack(ack).await?;
            }
            Ok(())
        }
        .await;
        result?;
        if let Some((_, lost)) = &self.js {
            if lost.load(Ordering::SeqCst) {
                return Err(nats_error(
                    &self.target,
                    ConnectFailure::Network,
                    "the connection was lost while publishing",
                ));
            }
        }
        if published > 0 {
            outcome.intervals += 1;
        }
        fault("after-interval");
        Ok(published)
    }

    async fn await_ack(&self, ack: PublishAckFuture) -> Result<()> {
        ack.await
            .map(|_| ())
            .map_err(|e| nats_error(&self.target, ConnectFailure::Network, e))
    }

    async fn send(
        &self,
        js: &jetstream::Context,
        msg: Outgoing,
        last: bool,
        inflight: &mut Window,
        outcome: &mut RunOutcome,
    ) -> Result<()> {
        while inflight.full(msg.payload.len()) {
            let Some(ack) = inflight.pop() else { break };
            self.await_ack(ack).await?;
        }
        let size = msg.payload.len();
        let mut headers = msg.headers;
        headers.insert("Tidemark-Last", if last { "true" } else { "false" });
        let ack = js
            .publish_with_headers(msg.subject, headers, msg.payload.into())
            .await
            .map_err(|e| nats_error(&self.target, ConnectFailure::Network, e))?;
        inflight.push(ack, size);
        outcome.messages += 1;
        if msg.delete {
            outcome.deletes += 1;
        } else {
            outcome.upserts += 1;
        }
        if !last && faulty("mid-interval") {
            // Dies with part of an interval acked by the stream, as kill -9 would.
            while let Some(ack) = inflight.pop() {
                self.await_ack(ack).await?;
            }
            std::process::abort();
        }
        Ok(())
    }

    fn headers(&self, plan: &Plan, h: &Header, id: &str, ordinal: u64) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        let setup = plan
            .config
            .as_ref()
            .and_then(|c| c.setup_id.as_deref())
            .unwrap_or("-");
        headers.insert(
            "Nats-Msg-Id",
            format!(
                "{}.{setup}.{}.{id}",
                self.source_id, self.opts.replicate.table
            ),
        );
        headers.insert("Tidemark-Source", self.source_id.as_str());
        headers.insert("Tidemark-From", h.from.as_str());
        headers.insert("Tidemark-To", h.to.as_str());
        headers.insert("Tidemark-Ordinal", ordinal.to_string());
        headers
    }

    /// A message of a change-log row: change id, change time, operation, before and after
    /// images (see [`CaptureStrategy::change_rows`]).
    fn change_message(
        &self,
        plan: &Plan,
        h: &Header,
        fields: &[Option<String>],
        ordinal: u64,
    ) -> Result<Outgoing> {
        let field = |i: usize| fields.get(i).and_then(|f| f.as_deref());
        let change_id: i64 = field(0)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Runtime("a change-log row without a change id".into()))?;
        let operation = field(2).unwrap_or_default().to_string();
        let before = field(3).map(|s| image(&plan.info, s)).transpose()?;
        let after = match operation.as_str() {
            "DELETE" => None,
            _ => field(4).map(|s| image(&plan.info, s)).transpose()?,
        };
        let keyed = if operation == "DELETE" {
            before.as_ref()
        } else {
            after.as_ref()
        };
        let commit_time = field(1)
            .map(|s| {
                Timestamp::parse(s)
                    .map(|t| t.to_string())
                    .unwrap_or_else(|_| s.to_string())
            })
            .unwrap_or_else(|| h.commit_time.clone());
        let body = Body {
            operation: &operation,
            table: self.opts.replicate.table.as_str(),
            key: Key {
                info: &plan.info,
                values: keyed.map(Vec::as_slice),
            },
            before: Some(before.as_deref().map(|values| Row {
                info: &plan.info,
                values,
            })),
            after: after.as_deref().map(|values| Row {
                info: &plan.info,
                values,
            }),
            change_id: Some(change_id),
            position: &h.position,
            commit_time: &commit_time,
        };
        let mut headers = self.headers(plan, h, &format!("c{change_id}"), ordinal);
        headers.insert("Tidemark-Change-Id", change_id.to_string());
        Ok(Outgoing {
            subject: self
                .opts
                .subjects
                .subject(&self.opts.replicate.table, &operation)?,
            headers,
            payload: body.encode()?,
            change_id: Some(change_id),
            delete: operation == "DELETE",
        })
    }

    /// A message of a delta row (operation, then the columns as text): a net change per key.
    fn delta_message(
        &self,
        plan: &Plan,
        h: &Header,
        fields: &[Option<String>],
        ordinal: u64,
    ) -> Result<Outgoing> {
        let operation = fields
            .first()
            .and_then(|f| f.as_deref())
            .unwrap_or_default()
            .to_string();
        let values: Vec<Value> = plan
            .info
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| typed_text(c, fields.get(i + 1).and_then(|f| f.as_deref())))
            .collect();
        let delete = operation == "DELETE";
        let row = Row {
            info: &plan.info,
            values: &values,
        };
        let body = Body {
            operation: &operation,
            table: self.opts.replicate.table.as_str(),
            key: Key {
                info: &plan.info,
                values: Some(&values),
            },
            // A net change has no before image; an insert says so with `null`.
            before: (operation == "INSERT").then_some(None),
            after: (!delete).then_some(row),
            change_id: None,
            position: &h.position,
            commit_time: &h.commit_time,
        };
        let headers = self.headers(plan, h, &format!("{}.{ordinal}", h.to_hash), ordinal);
        Ok(Outgoing {
            subject: self
                .opts
                .subjects
                .subject(&self.opts.replicate.table, &operation)?,
            headers,
            payload: body.encode()?,
            change_id: None,
            delete,
        })
    }
}

/// Where an interval's rows come from.
enum Source {
    /// [`CaptureStrategy::change_rows`]: one row per change.
    ChangeRows(String),
    /// A delta SELECT: one row per changed key (operation first).
    Delta(String),
}

/// What the stream already holds of an interval.
struct Skip {
    change_id: Option<i64>,
    ordinal: u64,
}

struct Header {
    from: String,
    to: String,
    position: Position,
    to_hash: String,
    commit_time: String,
}

struct Outgoing {
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Vec<u8>,
    change_id: Option<i64>,
    delete: bool,
}

fn short_hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
        .get(..16)
        .unwrap_or_default()
        .to_string()
}

/// Crash tests set `TIDEMARK_FAULT` to `mid-interval` (dies once the first message of an
/// interval of several is acked) or `after-interval` (once an interval is acked).
fn faulty(point: &str) -> bool {
    static FAULT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    FAULT
        .get_or_init(|| std::env::var("TIDEMARK_FAULT").ok())
        .as_deref()
        == Some(point)
}

fn fault(point: &str) {
    if faulty(point) {
        std::process::abort();
    }
}

/// A message's JSON body, serialised straight from borrowed parts into the payload (no
/// intermediate JSON tree): `operation`, `table`, `key`, `before` (omitted when `None`), `after`,
/// `change_id` (omitted when `None`), `position`, `commit_time`.
#[derive(serde::Serialize)]
struct Body<'a> {
    operation: &'a str,
    table: &'a str,
    key: Key<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<Option<Row<'a>>>,
    after: Option<Row<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    change_id: Option<i64>,
    position: &'a Position,
    commit_time: &'a str,
}

impl Body<'_> {
    fn encode(&self) -> Result<Vec<u8>> {
        let mut payload = Vec::with_capacity(512);
        serde_json::to_writer(&mut payload, self)
            .map_err(|e| Error::Runtime(format!("cannot encode a message: {e}")))?;
        Ok(payload)
    }
}

/// A row image: the table's columns in order, each with its typed value.
#[derive(Clone, Copy)]
struct Row<'a> {
    info: &'a TableInfo,
    values: &'a [Value],
}

impl serde::Serialize for Row<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.info.columns.len()))?;
        for (c, v) in self.info.columns.iter().zip(self.values) {
            map.serialize_entry(c.name.as_str(), v)?;
        }
        map.end()
    }
}

/// The primary-key columns of a row image (`null` each when there is no image).
struct Key<'a> {
    info: &'a TableInfo,
    values: Option<&'a [Value]>,
}

impl serde::Serialize for Key<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.info.primary_key.len()))?;
        for k in &self.info.primary_key {
            let v = self.values.and_then(|values| {
                self.info
                    .columns
                    .iter()
                    .position(|c| c.name == *k)
                    .and_then(|i| values.get(i))
            });
            map.serialize_entry(k.as_str(), v.unwrap_or(&Value::Null))?;
        }
        map.end()
    }
}

/// Integers within ±2^53 stay numbers; larger ones become strings (JSON readers keep 53 bits).
const EXACT_INT: i128 = 1 << 53;

/// A column's value from its text form (as delta SELECTs render it), typed as JSON Lines
/// exports type it: numbers, booleans, null, timestamps RFC 3339 µs UTC, decimals and large
/// integers as strings, bytes as base64.
pub fn typed_text(column: &Column, text: Option<&str>) -> Value {
    let Some(s) = text else {
        return Value::Null;
    };
    match column.kind {
        ColumnKind::Bool => match s {
            "true" | "t" | "1" => Value::Bool(true),
            "false" | "f" | "0" => Value::Bool(false),
            other => Value::String(other.into()),
        },
        ColumnKind::Integer => match s.parse::<i128>() {
            Ok(n) if (-EXACT_INT..=EXACT_INT).contains(&n) => {
                i64::try_from(n).map_or_else(|_| Value::String(s.into()), Value::from)
            }
            _ => Value::String(s.into()),
        },
        ColumnKind::Float => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(s.into()), Value::Number),
        ColumnKind::Timestamp | ColumnKind::TimestampTz => {
            Value::String(Timestamp::parse(s).map_or_else(|_| s.to_string(), |t| t.to_string()))
        }
        ColumnKind::Bytes => match s.strip_prefix("\\x").map(hex::decode) {
            Some(Ok(bytes)) => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            _ => Value::String(s.into()),
        },
        _ => Value::String(s.into()),
    }
}

/// A row image (a JSON object of the database's making) with each column typed as
/// [`typed_text`] types it; the numbers' own digits are kept (decimals exactly).
fn image(info: &TableInfo, json: &str) -> Result<Vec<Value>> {
    let raw: std::collections::HashMap<String, &RawValue> = serde_json::from_str(json)
        .map_err(|e| Error::Runtime(format!("a change-log image is not a JSON object: {e}")))?;
    let mut row = Vec::with_capacity(info.columns.len());
    for c in &info.columns {
        let Some(v) = raw.get(c.name.as_str()) else {
            row.push(Value::Null);
            continue;
        };
        let text = v.get();
        let value = if text == "null" {
            Value::Null
        } else if text.starts_with('"') {
            let s: String = serde_json::from_str(text).unwrap_or_default();
            typed_text(c, Some(&s))
        } else {
            match (c.kind, text) {
                (ColumnKind::Bool, "true" | "false") => Value::Bool(text == "true"),
                (ColumnKind::Integer | ColumnKind::Float | ColumnKind::Bool, _) => {
                    typed_text(c, Some(text))
                }
                (ColumnKind::Decimal | ColumnKind::Text | ColumnKind::Other, _)
                    if !text.starts_with(['{', '[']) =>
                {
                    Value::String(text.into())
                }
                _ => serde_json::from_str(text).unwrap_or(Value::Null),
            }
        };
        row.push(value);
    }
    Ok(row)
}

/// Publishes `tables` to the stream of `target`, one [`Publisher`] each, side by side; runs
/// until each is done (following: until `stop` resolves). The first failure stops the others.
pub async fn publish_all(
    source: Arc<dyn Database>,
    state: StateStore,
    target: NatsUrl,
    tables: &[TableName],
    subjects: SubjectTemplate,
    opts: ReplicateOptions,
    stop: impl Future<Output = ()>,
) -> Result<Vec<Summary>> {
    let mut publishers = Vec::with_capacity(tables.len());
    for table in tables {
        let mut o = opts.clone();
        o.table = table.clone();
        o.target_table = table.clone();
        // Checked before anything is published: every table makes valid subjects.
        subjects.filter(table)?;
        publishers.push(Publisher::new(
            Arc::clone(&source),
            state.clone(),
            target.clone(),
            PublishOptions {
                replicate: o,
                subjects: subjects.clone(),
            },
        )?);
    }
    let (stop_all, stopped) = tokio::sync::watch::channel(false);
    let runs = publishers.iter_mut().map(|p| {
        let mut stopped = stopped.clone();
        let stop = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        p.run(stop)
    });
    let all = futures_util::future::try_join_all(runs);
    tokio::pin!(all);
    tokio::pin!(stop);
    tokio::select! {
        r = &mut all => r,
        _ = &mut stop => {
            let _ = stop_all.send(true);
            all.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = NatsUrl::parse("nats://127.0.0.1:4333/CDC").unwrap();
        assert_eq!(u.address, "127.0.0.1:4333");
        assert_eq!(u.stream, "CDC");
        assert_eq!(NatsUrl::parse("nats://h").unwrap().stream, DEFAULT_STREAM);
        for bad in [
            "nats://",
            "nats://h:99999",
            "nats://h/a/b",
            "nats://h/a b",
            "http://h",
            "nats://u:p@h",
            "nats://h/S?x=1",
        ] {
            assert!(
                matches!(NatsUrl::parse(bad), Err(Error::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn subjects() {
        let t = SubjectTemplate::parse(DEFAULT_SUBJECT_TEMPLATE).unwrap();
        let users = TableName::parse("users").unwrap();
        assert_eq!(
            t.subject(&users, "UPDATE").unwrap(),
            "tidemark.users.update"
        );
        assert_eq!(t.filter(&users).unwrap(), "tidemark.users.*");
        assert_eq!(t.stream_subjects(), "tidemark.>");
        let t = SubjectTemplate::parse("cdc.app.{operation}.{table}").unwrap();
        assert_eq!(t.stream_subjects(), "cdc.app.>");
        for bad in [
            "{table}.x",
            "cdc.{operation}",
            "cdc..{table}",
            "cdc.*.{table}",
        ] {
            assert!(SubjectTemplate::parse(bad).is_err(), "{bad}");
        }
        assert!(covers("tidemark.>", "tidemark.users.*"));
        assert!(covers("tidemark.*.*", "tidemark.users.*"));
        assert!(!covers("tidemark.users.insert", "tidemark.users.*"));
        assert!(!covers("other.>", "tidemark.users.*"));
    }

    #[test]
    fn typed_values() {
        let col = |kind| Column {
            name: crate::ident::Ident::new("c").unwrap(),
            sql_type: String::new(),
            kind,
            nullable: true,
        };
        assert_eq!(
            typed_text(&col(ColumnKind::Integer), Some("42")),
            Value::from(42)
        );
        assert_eq!(
            typed_text(&col(ColumnKind::Integer), Some("9223372036854775807")),
            Value::from("9223372036854775807")
        );
        assert_eq!(
            typed_text(&col(ColumnKind::Bool), Some("1")),
            Value::Bool(true)
        );
        assert_eq!(
            typed_text(
                &col(ColumnKind::TimestampTz),
                Some("2026-01-02 03:04:05.5+00:00")
            ),
            Value::from("2026-01-02T03:04:05.500000Z")
        );
        assert_eq!(
            typed_text(&col(ColumnKind::Bytes), Some("\\x0102")),
            Value::from("AQI=")
        );
        assert_eq!(
            typed_text(&col(ColumnKind::Float), Some("NaN")),
            Value::from("NaN")
        );
        assert_eq!(
            typed_text(&col(ColumnKind::Decimal), Some("1.50")),
            Value::from("1.50")
        );
        assert_eq!(typed_text(&col(ColumnKind::Text), None), Value::Null);
    }
}
