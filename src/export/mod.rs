//! Exports: one export of one (consumer, table) in one mode, end to end — lock, repair what a
//! crashed export left, snapshot, stream the rows into a file of the requested format
//! ([`crate::format`]) written aside, record the export as prepared, publish the file and its
//! manifest, then move the watermark. A format that cannot represent the table's columns is
//! refused before anything is read or written. A crash at any instant
//! leaves either nothing (the next export starts where this one did) or published files whose
//! prepared record the next export completes. The CLI and the HTTP API both run this.

pub mod manifest;
pub mod replay;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capture::{self, strategy_for, Mode, Select};
use crate::db::portable::ColumnType;
use crate::db::{Bound, Database, Privilege, RowSink, SnapshotOptions, TableInfo, Timestamp};
use crate::error::{Error, Result};
// Crash tests set `TIDEMARK_FAULT` to `after-write`, `after-prepare` or `after-publish`.
use crate::failpoint::fault;
use crate::format::{self, FileFormat, Rows};
use crate::ident::{ConsumerId, TableName};
use crate::sink::file::{free_name, publish, temporary_writer, tmp_name, write_aside, AtomicFile};
use crate::state::{position_is_current, status, ExportRecord, Position, StateStore, TableConfig};
use manifest::Manifest;
use tokio_util::sync::CancellationToken;

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub consumer: ConsumerId,
    pub table: TableName,
    pub mode: Mode,
    pub out_dir: PathBuf,
    /// The export's id (the HTTP job id); a fresh one when `None`.
    pub id: Option<String>,
    /// The time that names the file (when the export was requested); now when `None`.
    pub named_at: Option<Timestamp>,
    /// Once cancelled, the export stops at its next row, removes its file and fails without
    /// moving the watermark. Past its last row it finishes: publishing and committing take
    /// milliseconds, and stopping there would leave work for the next export to repair.
    pub cancel: Option<CancellationToken>,
    /// The file format (CSV by default).
    pub format: FileFormat,
}

impl ExportRequest {
    /// A request with a fresh id, named by the time it runs.
    pub fn new(consumer: ConsumerId, table: TableName, mode: Mode, out_dir: PathBuf) -> Self {
        ExportRequest {
            consumer,
            table,
            mode,
            out_dir,
            id: None,
            named_at: None,
            cancel: None,
            format: FileFormat::Csv,
        }
    }

    /// The same request for a file of `format`.
    pub fn with_format(mut self, format: FileFormat) -> Self {
        self.format = format;
        self
    }
}

/// The file name of an export without its extension: `{mode}_{consumer}_{YYYYMMDDTHHMMSSZ}`
/// for the table `users`, `{mode}_{consumer}_{table}_{YYYYMMDDTHHMMSSZ}` for any other, the
/// table as [`TableName::file_part`] writes it (`sales.orders`); a suffix is added when that
/// name is taken.
pub fn file_stem(mode: Mode, consumer: &ConsumerId, table: &TableName, at: &Timestamp) -> String {
    let at = at.as_datetime().format("%Y%m%dT%H%M%SZ");
    if table.schema().is_none() && table.name().as_str() == crate::seed::USERS {
        format!("{mode}_{consumer}_{at}")
    } else {
        format!("{mode}_{consumer}_{}_{at}", table.file_part())
    }
}

/// What an export did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportOutcome {
    pub export_id: String,
    pub consumer: ConsumerId,
    pub table: TableName,
    pub mode: Mode,
    /// The file's format.
    pub format: FileFormat,
    pub rows: u64,
    /// The file, or none when there was nothing to export.
    pub file: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
    pub sha256: Option<String>,
    pub bytes: u64,
    pub watermark_before: Option<Position>,
    pub watermark_after: Option<Position>,
    pub duration_ms: u64,
    /// Exports of an earlier, interrupted run that this one completed or rolled back.
    pub repaired: Vec<String>,
    /// Milliseconds the export waited for its snapshot to cover every change committed
    /// before it started (writes in flight, the capture margin).
    pub waited_ms: u64,
    /// Set when changes from this time on are held back: a write transaction that was open
    /// when the export started still is. A later export delivers them once it ends.
    pub held_back_since: Option<Timestamp>,
}

/// Called with the number of rows written so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// Runs exports from one source with one state store.
#[derive(Clone)]
pub struct Exporter {
    source: Arc<dyn Database>,
    state: StateStore,
    margin: Duration,
}

/// How long, by default, a write on a server may take from stamping its time to being listed as
/// running (`pg_stat_activity`, the MySQL process list): a snapshot waits this long before it
/// trusts the list (see `Database::snapshot`). The race it covers lies between two steps of
/// starting a transaction in the server; 20 ms is a wide allowance for it.
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(20);

impl Exporter {
    /// An exporter of `source` keeping its state in `state`.
    pub fn new(source: Arc<dyn Database>, state: StateStore) -> Self {
        Exporter {
            source,
            state,
            margin: DEFAULT_MARGIN,
        }
    }

    /// Sets the safety margin of capture bounds.
    pub fn with_margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// Runs one export. Fails with [`Error::Busy`] if another export of the same consumer and
    /// table is running.
    pub async fn export(
        &self,
        req: &ExportRequest,
        progress: Option<Progress<'_>>,
    ) -> Result<ExportOutcome> {
        prepare_out_dir(&req.out_dir)?;
        let lock = self.state.lock(&req.consumer, &req.table).await?;
        let result = self.export_locked(req, progress).await;
        let released = lock.release().await;
        let outcome = result?;
        released?;
        Ok(outcome)
    }

    async fn export_locked(
        &self,
        req: &ExportRequest,
        progress: Option<Progress<'_>>,
    ) -> Result<ExportOutcome> {
        let t0 = Instant::now();
        let repaired = self.repair(&req.consumer, &req.table).await?;
        sweep_stale_temporaries(&req.out_dir);
        let info = self.source.describe(&req.table).await?;
        let config = self.state.table_config(&req.table).await?;
        let strategy = strategy_for(&info, config.as_ref())?;
        // A format that cannot hold a column is refused before anything is read or written
        // (the `operation` column of delta exports is text, which every format holds).
        let table_types: Vec<ColumnType> = info
            .columns
            .iter()
            .map(|c| ColumnType::of(self.source.kind(), c))
            .collect();
        format::check(req.format, &table_types)?;
        let stored = self
            .state
            .watermark(&req.consumer, &req.table)
            .await?
            .map(|w| w.position);
        // `stored` is what the watermark moves from (compare-and-set); `before` what the
        // export reads from. A position of another capture set-up is never read.
        let before = match &stored {
            Some(p) if !position_is_current(p, config.as_ref()) => {
                if req.mode != Mode::Full {
                    return Err(stale_position(
                        &req.consumer,
                        &req.table,
                        p,
                        config.as_ref(),
                    ));
                }
                None
            }
            Some(p) => Some(p.clone()),
            None if req.mode != Mode::Full
                && self
                    .state
                    .has_committed_exports(&req.consumer, &req.table)
                    .await? =>
            {
                return Err(Error::PositionGone {
                    consumer: req.consumer.to_string(),
                    table: req.table.to_string(),
                    mode: req.mode.to_string(),
                });
            }
            None => None,
        };
        let started_at = Timestamp::now();
        let export_id = req.id.clone().unwrap_or_else(new_export_id);

        crate::privilege::require(self.source.as_ref(), &req.table, &[Privilege::Select]).await?;
        let mut snapshot = self
            .source
            .snapshot(&SnapshotOptions::new(self.margin, strategy.clock_need()))
            .await?;
        let settled = snapshot.bound().settled;
        let waited_ms = settled.waited_ms;
        let held_back_since = capture::held_back_since(&settled, before.as_ref());
        if let Some(since) = &held_back_since {
            tracing::info!(%since, "changes held back by a transaction still open");
        }
        let after = capture::reach(
            strategy.as_ref(),
            self.source.dialect(),
            snapshot.as_mut(),
            before.as_ref(),
        )
        .await?;
        let select = strategy.select(self.source.dialect(), req.mode, before.as_ref(), &after)?;
        let stem = file_stem(
            req.mode,
            &req.consumer,
            &req.table,
            req.named_at.as_ref().unwrap_or(&started_at),
        );
        let csv_path = free_name(&req.out_dir, &stem, req.format.extension());
        let csv_name = file_name(&csv_path);
        let mut columns = column_types(self.source.kind(), &info, &select.header);
        if req.mode == Mode::Delta {
            // A DELETE row may carry only its key (the trigger strategy's change log knows no
            // more of a deleted row): in a delta file every other column may be NULL.
            for c in &mut columns {
                if c.sql_type.is_some() && !info.primary_key.iter().any(|k| k.as_str() == c.name) {
                    c.nullable = true;
                }
            }
        }
        let file = AtomicFile::create(&req.out_dir, &csv_name)?;
        // A failed header write drops the file, which removes it.
        let encoder = format::encoder(req.format, file, &columns).map_err(|e| match e {
            Error::Runtime(m) => Error::write(&csv_path, std::io::Error::other(m)),
            e => e,
        })?;
        let mut writer = Rows::new(encoder, &columns);
        let (streamed, stopped) = {
            let mut sink = Counting {
                inner: &mut writer,
                rows: 0,
                progress,
                cancel: req.cancel.as_ref(),
                stopped: None,
            };
            let streamed = snapshot.stream(&select.sql, &mut sink).await;
            (streamed, sink.stopped)
        };
        let rows = match streamed {
            Ok(n) => match snapshot.finish().await {
                Ok(()) => n,
                Err(e) => {
                    // Dropping the encoder drops its file, which removes it.
                    drop(writer);
                    return Err(e);
                }
            },
            Err(e) => {
                // The read is abandoned (its transaction rolls back as the snapshot drops).
                drop(snapshot);
                let invalid = writer.invalid().map(str::to_string);
                drop(writer);
                // Each adapter wraps what the sink said its own way; say it with the file.
                return Err(match stopped {
                    Some(Stop::Write(_)) if invalid.is_some() => Error::input(format!(
                        "table {}: {} cannot be written as {}; nothing was written and the \
                         watermark did not move",
                        req.table,
                        invalid.unwrap_or_default(),
                        req.format
                    )),
                    Some(Stop::Write(cause)) => Error::write(&csv_path, cause),
                    Some(Stop::Cancelled) => Error::Runtime(format!(
                        "export into {} {ABANDONED}; its temporary file was removed",
                        csv_path.display()
                    )),
                    None => e.needing(|| {
                        format!(
                            "SELECT on table {} and on what its capture reads with it \
                             (the change log of trigger capture)",
                            req.table
                        )
                    }),
                });
            }
        };
        if rows == 0 && req.mode != Mode::Full {
            // Nothing changed: no file, and the watermark stays where it is so that the
            // manifest chain has no gap.
            drop(writer);
            return Ok(ExportOutcome {
                export_id,
                consumer: req.consumer.clone(),
                table: req.table.clone(),
                mode: req.mode,
                format: req.format,
                rows: 0,
                file: None,
                manifest: None,
                sha256: None,
                bytes: 0,
                watermark_before: before.clone(),
                watermark_after: before,
                duration_ms: elapsed_ms(t0),
                repaired,
                waited_ms,
                held_back_since,
            });
        }
        let file = writer.finish().map_err(|e| Error::write(&csv_path, e))?;
        let written = file.finish()?;
        fault("after-write");

        let manifest = Manifest {
            format: manifest::FORMAT,
            export_id: export_id.clone(),
            consumer: req.consumer.to_string(),
            table: req.table.to_string(),
            mode: req.mode,
            file: csv_name.clone(),
            file_format: req.format,
            rows,
            bytes: written.bytes,
            sha256: written.sha256.clone(),
            columns,
            primary_key: info.primary_key.iter().map(ToString::to_string).collect(),
            watermark_before: stored.clone(),
            watermark_after: after.clone(),
            started_at,
            finished_at: Timestamp::now(),
            source: self.source.kind().to_string(),
        };
        let manifest_json = serde_json::to_string_pretty(&manifest)
            .map_err(|e| Error::Runtime(format!("cannot encode manifest: {e}")))?;
        let manifest_path = manifest_path_of(&csv_path);
        let record = ExportRecord {
            export_id: export_id.clone(),
            consumer: req.consumer.clone(),
            table: req.table.clone(),
            mode: req.mode.to_string(),
            status: status::PREPARED.into(),
            before: stored.clone(),
            after: Some(after.clone()),
            file: Some(csv_path.to_string_lossy().into_owned()),
            tmp_file: Some(written.tmp.to_string_lossy().into_owned()),
            manifest_file: Some(manifest_path.to_string_lossy().into_owned()),
            manifest_json: Some(manifest_json.clone()),
            rows: Some(rows as i64),
            started_at,
            finished_at: None,
            error: None,
        };
        if let Err(e) = self.state.prepare_export(&record).await {
            let _ = std::fs::remove_file(&written.tmp);
            return Err(e);
        }
        fault("after-prepare");
        if let Err(e) = publish_pair(&written.tmp, &csv_path, &manifest_path, &manifest_json) {
            let _ = std::fs::remove_file(&written.tmp);
            let _ = std::fs::remove_file(&csv_path);
            let _ = self.state.abort_export(&export_id, &e.to_string()).await;
            return Err(e);
        }
        fault("after-publish");
        self.state.commit_export(&record).await.map_err(|e| {
            Error::Runtime(format!(
                "{} was written but the watermark could not be moved ({e}); \
                 the next export of {} on {} completes it",
                csv_path.display(),
                req.consumer,
                req.table
            ))
        })?;
        Ok(ExportOutcome {
            export_id,
            consumer: req.consumer.clone(),
            table: req.table.clone(),
            mode: req.mode,
            format: req.format,
            rows,
            file: Some(csv_path),
            manifest: Some(manifest_path),
            sha256: Some(written.sha256),
            bytes: written.bytes,
            watermark_before: stored,
            watermark_after: Some(after),
            duration_ms: elapsed_ms(t0),
            repaired,
            waited_ms,
            held_back_since,
        })
    }

    /// Takes the export lock of (consumer, table) and repairs what an interrupted export left
    /// (see [`Exporter::export`]); returns what it did.
    pub async fn recover(&self, consumer: &ConsumerId, table: &TableName) -> Result<Vec<String>> {
        let lock = self.state.lock(consumer, table).await?;
        let result = self.repair(consumer, table).await;
        let released = lock.release().await;
        let done = result?;
        released?;
        Ok(done)
    }

    /// The state store this exporter records in.
    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// The source it exports from.
    pub fn source(&self) -> &Arc<dyn Database> {
        &self.source
    }

    /// Completes or rolls back exports of (consumer, table) that a dead process left prepared:
    /// a published CSV is delivered, so its watermark move is committed; otherwise its
    /// temporary file is removed and the record aborted.
    async fn repair(&self, consumer: &ConsumerId, table: &TableName) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for rec in self.state.prepared_exports(consumer, table).await? {
            let csv = rec.file.as_deref().map(PathBuf::from);
            let published = csv.as_deref().is_some_and(Path::exists);
            if let (true, Some(csv)) = (published, &csv) {
                let manifest_path = manifest_path_of(csv);
                if !manifest_path.exists() {
                    let json = rec.manifest_json.clone().unwrap_or_default();
                    let dir = csv.parent().unwrap_or(Path::new("."));
                    let w = write_aside(dir, &file_name(&manifest_path), json.as_bytes())?;
                    publish(&w.tmp, &manifest_path)?;
                }
                match self.state.commit_export(&rec).await {
                    Ok(()) => done.push(format!("completed interrupted export {}", csv.display())),
                    Err(Error::Conflict { .. }) => {
                        self.state
                            .abort_export(&rec.export_id, "watermark changed before repair")
                            .await?;
                        done.push(format!(
                            "left {} in place: the watermark was changed by hand since",
                            csv.display()
                        ));
                    }
                    Err(e) => return Err(e),
                }
            } else {
                if let Some(tmp) = &rec.tmp_file {
                    let _ = std::fs::remove_file(tmp);
                }
                self.state
                    .abort_export(&rec.export_id, "interrupted before its file was published")
                    .await?;
                done.push(format!("rolled back interrupted export {}", rec.export_id));
            }
        }
        Ok(done)
    }
}

/// The refusal of a delta or incremental export (or a replica, `who`) from a position that
/// another capture set-up of the table made.
pub fn stale_position(
    consumer: &ConsumerId,
    table: &TableName,
    position: &Position,
    config: Option<&TableConfig>,
) -> Error {
    let made_by = match position.setup() {
        Some(id) => format!("set-up {id}"),
        None => "a set-up without an id".into(),
    };
    let current = match config {
        Some(c) => format!(
            "the table is now captured by {} set-up {}",
            c.strategy,
            c.setup_id.as_deref().unwrap_or("without an id")
        ),
        None => "the table is no longer set up (timestamp defaults)".into(),
    };
    Error::StalePosition {
        who: format!("consumer {consumer}"),
        table: table.to_string(),
        reason: format!("a {} position of {made_by}; {current}", position.kind()),
        remedy: "the changes since then cannot be told from it, so nothing was exported; \
                 take a full export to start again",
    }
}

struct Counting<'a> {
    inner: &'a mut dyn RowSink,
    rows: u64,
    progress: Option<Progress<'a>>,
    cancel: Option<&'a CancellationToken>,
    /// Why the sink stopped the stream, if it did.
    stopped: Option<Stop>,
}

/// Why an export's sink refused a row.
enum Stop {
    /// Writing the file failed (the file system's error as it was).
    Write(std::io::Error),
    /// [`ExportRequest::cancel`] fired.
    Cancelled,
}

/// The message of an export stopped by [`ExportRequest::cancel`].
const ABANDONED: &str = "stopped before its last row";

impl Counting<'_> {
    /// Records a write failure and hands the adapter an error of the same kind.
    fn failed(&mut self, e: std::io::Error) -> std::io::Error {
        let copy = std::io::Error::new(e.kind(), e.to_string());
        self.stopped = Some(Stop::Write(e));
        copy
    }

    fn tick(&mut self) -> std::io::Result<()> {
        if self.cancel.is_some_and(CancellationToken::is_cancelled) {
            self.stopped = Some(Stop::Cancelled);
            return Err(std::io::Error::other(ABANDONED));
        }
        self.rows += 1;
        if self.rows.is_multiple_of(8192) {
            if let Some(p) = self.progress {
                p(self.rows);
            }
        }
        Ok(())
    }
}

impl RowSink for Counting<'_> {
    fn write_fields(&mut self, fields: &[Option<&str>]) -> std::io::Result<()> {
        self.tick()?;
        self.inner.write_fields(fields).map_err(|e| self.failed(e))
    }

    fn write_csv_record(&mut self, record: &[u8]) -> std::io::Result<()> {
        self.tick()?;
        self.inner
            .write_csv_record(record)
            .map_err(|e| self.failed(e))
    }
}

fn publish_pair(csv_tmp: &Path, csv: &Path, manifest: &Path, json: &str) -> Result<()> {
    let dir = csv.parent().unwrap_or(Path::new("."));
    let m = write_aside(dir, &file_name(manifest), json.as_bytes())?;
    if let Err(e) = publish(csv_tmp, csv) {
        let _ = std::fs::remove_file(&m.tmp);
        return Err(e);
    }
    if let Err(e) = publish(&m.tmp, manifest) {
        let _ = std::fs::remove_file(&m.tmp);
        return Err(e);
    }
    Ok(())
}

/// The table's description and the SELECT a full export of it runs now (its registration, or
/// the timestamp defaults). For checking and measuring; exports build theirs in a snapshot.
pub async fn full_select(
    db: &dyn Database,
    state: &StateStore,
    table: &TableName,
) -> Result<(TableInfo, Select)> {
    let info = db.describe(table).await?;
    let config = state.table_config(table).await?;
    let strategy = strategy_for(&info, config.as_ref())?;
    let after = strategy.position_after(&Bound::at(Timestamp::now()), None);
    let select = strategy.select(db.dialect(), Mode::Full, None, &after)?;
    Ok((info, select))
}

/// The types of the columns named in an export's `header`: the table's columns from the
/// catalog, and the `operation` column of delta exports.
pub fn column_types(
    engine: crate::db::DbKind,
    info: &TableInfo,
    header: &[String],
) -> Vec<ColumnType> {
    // Columns beyond the table's lead the header: the `operation` of delta exports.
    let added = header.len().saturating_sub(info.columns.len());
    header
        .iter()
        .enumerate()
        .map(|(i, name)| match info.column(name) {
            _ if i < added && name == "operation" => ColumnType::operation(),
            Some(c) => ColumnType::of(engine, c),
            None => ColumnType::untyped(name),
        })
        .collect()
}

/// `X.csv` → `X.csv.manifest.json`.
pub fn manifest_path_of(csv: &Path) -> PathBuf {
    let mut s = csv.as_os_str().to_owned();
    s.push(manifest::SUFFIX);
    PathBuf::from(s)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn elapsed_ms(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn new_export_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Creates the output directory if needed and checks that files can be created in it.
pub fn prepare_out_dir(dir: &Path) -> Result<()> {
    // A path that cannot be a directory is the command's fault (exit 2); a directory that
    // exists but cannot be written (read-only, permissions, full) is the environment's (exit 1).
    let unusable = |e: std::io::Error| {
        use std::io::ErrorKind;
        if matches!(
            e.kind(),
            ErrorKind::PermissionDenied
                | ErrorKind::ReadOnlyFilesystem
                | ErrorKind::StorageFull
                | ErrorKind::QuotaExceeded
        ) {
            Error::write(dir, e)
        } else {
            Error::input(format!(
                "output directory {} is not usable: {e}",
                dir.display()
            ))
        }
    };
    std::fs::create_dir_all(dir).map_err(unusable)?;
    let probe = dir.join(tmp_name(
        "tidemark-probe",
        std::process::id(),
        rand::random::<u32>(),
    ));
    std::fs::File::create(&probe).map_err(unusable)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Removes temporary files whose writing process is gone (killed mid-export).
fn sweep_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = temporary_writer(&name) {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
