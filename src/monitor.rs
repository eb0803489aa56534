//! Monitoring: what `/stats`, `/metrics` and `tidemark status` report — per captured table its
//! strategy and changes by operation, per consumer its position, pending changes and lag, and a
//! health verdict against thresholds. One collector, read-only.

use std::collections::BTreeSet;

use crate::capture::strategy_for;
use crate::db::{Bound, Database, Timestamp};
use crate::error::{Error, Result};
use crate::ident::{ConsumerId, TableName};
use crate::state::{Position, StateStore};

/// When a consumer counts as lagging.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub struct Thresholds {
    /// Lag in seconds above which a consumer is lagging.
    pub max_lag_secs: f64,
    /// Pending changes above which a consumer is lagging.
    pub max_pending: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_lag_secs: 3600.0,
            max_pending: 1_000_000,
        }
    }
}

/// Changes by operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub total: u64,
    pub insert: u64,
    pub update: u64,
    pub delete: u64,
}

/// One consumer of one table.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub struct ConsumerStatus {
    #[schema(value_type = String)]
    pub consumer_id: ConsumerId,
    /// `export` (a watermark), `replica` (`tidemark replicate`) or `stream` (`tidemark
    /// replicate --target nats://…`).
    pub kind: &'static str,
    /// A replica's target (without password) and table: `postgres://host/db.users`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The time the watermark stands for.
    #[schema(value_type = String)]
    pub watermark: Timestamp,
    #[schema(value_type = Object)]
    pub position: Position,
    /// When the watermark last moved.
    #[schema(value_type = String)]
    pub updated_at: Timestamp,
    /// Changes not yet delivered to this consumer.
    pub pending: Counts,
    /// The change time of the oldest change not yet delivered (none when nothing is pending,
    /// or when the strategy cannot date it; see `lag_from`).
    #[schema(value_type = Option<String>)]
    pub oldest_pending: Option<Timestamp>,
    /// The age of the oldest change not yet delivered, in seconds: the report's time minus
    /// `oldest_pending`; 0 when nothing is pending.
    pub lag_seconds: f64,
    /// What the lag is measured from: `oldest_pending` (the oldest pending change's time),
    /// `position` (the strategy cannot date its changes, e.g. PostgreSQL `version` without
    /// `track_commit_timestamp`: every pending change was committed after the position's
    /// time, so its age is at most the position's) or `nothing_pending`.
    pub lag_from: &'static str,
    /// `ok` or `lagging`.
    pub health: &'static str,
}

impl ConsumerStatus {
    /// The consumer as people read it: its id, or for a replica `replica of users →
    /// postgres://host/db.users` (its id is an internal hash).
    pub fn display_name(&self, table: &TableName) -> String {
        match &self.target {
            Some(target) if self.kind == "replica" => format!("replica of {table} → {target}"),
            Some(target) if self.kind == "stream" => format!("stream of {table} → {target}"),
            _ => self.consumer_id.to_string(),
        }
    }
}

/// One captured table.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub struct TableStatus {
    #[schema(value_type = String)]
    pub table: TableName,
    /// The registered strategy (`timestamp` defaults when not set up).
    pub strategy: String,
    pub registered: bool,
    /// Every change the strategy can still see, by operation.
    pub changes: Counts,
    pub consumers: Vec<ConsumerStatus>,
    /// Why the table could not be inspected, if it could not.
    pub error: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub struct StatusReport {
    #[schema(value_type = String)]
    pub timestamp: Timestamp,
    pub source: String,
    /// `ok`, `lagging` (a consumer or replica lags) or `unhealthy` (a table cannot be read);
    /// `tidemark status` exits 1 unless `ok`.
    pub health: &'static str,
    pub thresholds: Thresholds,
    pub tables: Vec<TableStatus>,
}

/// What to collect.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope {
    pub thresholds: Thresholds,
    /// Also count every change each table's strategy can see (a scan of the table or its log;
    /// `/metrics` scrapes leave it out and report only what consumers have pending).
    pub table_totals: bool,
}

/// A consumer of a table: an export watermark or a replica's position.
struct Consumer {
    id: ConsumerId,
    kind: &'static str,
    target: Option<String>,
    table: TableName,
    position: Position,
    updated_at: Timestamp,
}

/// Collects the report: every registered table and every table that has a watermark.
pub async fn collect(
    source: &dyn Database,
    state: &StateStore,
    scope: Scope,
) -> Result<StatusReport> {
    collect_tables(source, state, scope, None).await
}

/// As [`collect`], of the tables in `only` (all when `None`).
pub async fn collect_tables(
    source: &dyn Database,
    state: &StateStore,
    scope: Scope,
    only: Option<&[TableName]>,
) -> Result<StatusReport> {
    let thresholds = scope.thresholds;
    let now = source.now().await?;
    let configs = state.table_configs().await?;
    let mut positions: Vec<Consumer> = state
        .watermarks()
        .await?
        .into_iter()
        .map(|w| Consumer {
            id: w.consumer,
            kind: "export",
            target: None,
            table: w.table,
            position: w.position,
            updated_at: w.updated_at,
        })
        .collect();
    positions.extend(state.replicas().await?.into_iter().filter_map(|r| {
        // A NATS JetStream stream (`replicate --target nats://…`) is a replica whose target
        // is the stream itself.
        let stream = crate::replicate::nats::is_nats_url(&r.target);
        Some(Consumer {
            position: r.position?,
            id: r.replica,
            kind: if stream { "stream" } else { "replica" },
            target: Some(if stream {
                r.target.clone()
            } else {
                format!("{}.{}", r.target, r.target_table)
            }),
            table: r.table,
            updated_at: r.updated_at,
        })
    }));
    let names: BTreeSet<TableName> = configs
        .iter()
        .map(|(t, _)| t.clone())
        .chain(positions.iter().map(|w| w.table.clone()))
        .filter(|t| only.is_none_or(|o| o.contains(t)))
        .collect();
    let mut tables = Vec::new();
    for name in names {
        let config = configs.iter().find(|(t, _)| *t == name).map(|(_, c)| c);
        let mine: Vec<&Consumer> = positions.iter().filter(|w| w.table == name).collect();
        let mut status = TableStatus {
            table: name.clone(),
            strategy: config.map_or_else(|| "timestamp".into(), |c| c.strategy.clone()),
            registered: config.is_some(),
            changes: Counts::default(),
            consumers: Vec::new(),
            error: None,
        };
        match inspect(source, &name, config, &mine, now, scope).await {
            Ok((changes, consumers)) => {
                status.changes = changes;
                status.consumers = consumers;
            }
            Err(e) if e.is_unavailable() => return Err(e),
            Err(e) => status.error = Some(e.to_string()),
        }
        tables.push(status);
    }
    let health = if tables.iter().any(|t| t.error.is_some()) {
        "unhealthy"
    } else if tables
        .iter()
        .any(|t| t.consumers.iter().any(|c| c.health != "ok"))
    {
        "lagging"
    } else {
        "ok"
    };
    Ok(StatusReport {
        timestamp: now,
        source: source.kind().to_string(),
        health,
        thresholds,
        tables,
    })
}

async fn inspect(
    source: &dyn Database,
    table: &TableName,
    config: Option<&crate::state::TableConfig>,
    watermarks: &[&Consumer],
    now: Timestamp,
    scope: Scope,
) -> Result<(Counts, Vec<ConsumerStatus>)> {
    let thresholds = scope.thresholds;
    let info = source.describe(table).await?;
    let strategy = strategy_for(&info, config)?;
    let tally = |sql: Result<String>| async move {
        let mut counts = Counts::default();
        for row in source.query(&sql?, &[]).await? {
            let n: u64 = row
                .get(1)
                .cloned()
                .flatten()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            match row.first().cloned().flatten().as_deref() {
                Some("INSERT") => counts.insert += n,
                Some("UPDATE") => counts.update += n,
                Some("DELETE") => counts.delete += n,
                _ => {}
            }
            counts.total += n;
        }
        Ok::<_, Error>(counts)
    };
    let count = |before: Option<Position>| {
        let after = strategy.position_after(&Bound::at(now), before.as_ref());
        tally(strategy.count_changes(source.dialect(), before.as_ref(), &after))
    };
    let changes = if scope.table_totals {
        // A change log counts its entries by operation; a strategy without one counts what a
        // delta from the beginning would deliver.
        match strategy.count_recorded(source.dialect()) {
            Some(sql) => tally(Ok(sql)).await?,
            None => count(None).await?,
        }
    } else {
        Counts::default()
    };
    let mut consumers = Vec::new();
    for w in watermarks {
        // A position of another capture set-up is never read (its consumer must take a full
        // export): everything the table's capture sees is pending for it.
        let current = crate::state::position_is_current(&w.position, config);
        let from = current.then(|| w.position.clone());
        let pending = count(from.clone()).await?;
        let (oldest_pending, lag_from) = if pending.total == 0 {
            (None, "nothing_pending")
        } else {
            let after = strategy.position_after(&Bound::at(now), from.as_ref());
            let oldest = match strategy.oldest_change(source.dialect(), from.as_ref(), &after)? {
                Some(q) => {
                    let rows = source.query(&q.sql, &[]).await?;
                    q.parse(
                        rows.first()
                            .and_then(|r| r.first())
                            .and_then(|v| v.as_deref()),
                    )?
                }
                None => None,
            };
            match oldest {
                Some(t) => (Some(t), "oldest_pending"),
                None => (None, "position"),
            }
        };
        let lag_seconds = if pending.total == 0 {
            0.0
        } else {
            seconds_between(oldest_pending.unwrap_or_else(|| w.position.time()), now)
        };
        let lagging =
            lag_seconds > thresholds.max_lag_secs || pending.total > thresholds.max_pending;
        consumers.push(ConsumerStatus {
            consumer_id: w.id.clone(),
            kind: w.kind,
            target: w.target.clone(),
            watermark: w.position.time(),
            position: w.position.clone(),
            updated_at: w.updated_at,
            pending,
            oldest_pending,
            lag_seconds,
            lag_from,
            health: if !current {
                "stale_position"
            } else if lagging {
                "lagging"
            } else {
                "ok"
            },
        });
    }
    Ok((changes, consumers))
}

/// Seconds from `then` to `now`, never negative (a change stamped ahead of the database clock
/// is not late).
fn seconds_between(then: Timestamp, now: Timestamp) -> f64 {
    let micros = (now.as_datetime() - then.as_datetime())
        .num_microseconds()
        .unwrap_or(i64::MAX);
    (micros.max(0) as f64) / 1_000_000.0
}

impl StatusReport {
    /// Why the verdict is not `ok`, one line each: tables that cannot be read, consumers and
    /// replicas that lag (and by what).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.tables {
            if let Some(e) = &t.error {
                out.push(format!("{}: cannot inspect: {e}", t.table));
            }
            let who = |c: &ConsumerStatus| match c.kind {
                "replica" | "stream" => c.display_name(&t.table),
                kind => format!("{kind} {} on {}", c.consumer_id, t.table),
            };
            for c in t.consumers.iter().filter(|c| c.health == "stale_position") {
                out.push(format!(
                    "{}: its position was made by an earlier capture set-up; it needs a \
                     full export (replicas resynchronise at their next run)",
                    who(c)
                ));
            }
            for c in t.consumers.iter().filter(|c| c.health == "lagging") {
                out.push(format!(
                    "{}: lagging ({} pending, oldest {:.1} s old; thresholds {} pending, {} s)",
                    who(c),
                    c.pending.total,
                    c.lag_seconds,
                    self.thresholds.max_pending,
                    self.thresholds.max_lag_secs
                ));
            }
        }
        out
    }
}

/// The report as text for people.
pub fn render(report: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tidemark status at {} ({} source): {}",
        report.timestamp,
        report.source,
        report.health.to_uppercase()
    );
    if report.tables.is_empty() {
        out.push_str("  no tables set up and no consumers yet (run `tidemark setup`)\n");
    }
    for t in &report.tables {
        let c = &t.changes;
        let _ = writeln!(
            out,
            "\n{} — {} capture{}",
            t.table,
            t.strategy,
            if t.registered {
                ""
            } else {
                " (defaults; not set up)"
            }
        );
        if let Some(e) = &t.error {
            let _ = writeln!(out, "  cannot inspect: {e}");
            continue;
        }
        let _ = writeln!(
            out,
            "  changes visible: {} ({} INSERT, {} UPDATE, {} DELETE)",
            c.total, c.insert, c.update, c.delete
        );
        if t.consumers.is_empty() {
            out.push_str("  no consumers yet\n");
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<28} {:>10} {:>10}  {:<8} consumer",
            "watermark", "pending", "lag (s)", "health"
        );
        for k in &t.consumers {
            let _ = writeln!(
                out,
                "  {:<28} {:>10} {:>10}  {:<8} {}",
                k.watermark.to_string(),
                k.pending.total,
                // Measured from the position: an upper bound.
                if k.lag_from == "position" {
                    format!("≤{:.1}", k.lag_seconds)
                } else {
                    format!("{:.1}", k.lag_seconds)
                },
                k.health,
                k.display_name(&t.table)
            );
        }
    }
    let _ = writeln!(
        out,
        "\nlag: the age of the oldest change not yet delivered (0 when none is pending)\n\
         thresholds: lag > {} s or pending > {} is lagging",
        report.thresholds.max_lag_secs, report.thresholds.max_pending
    );
    out
}
