//! Export jobs of the HTTP service, kept in `tidemark_jobs` so that a restarted server still
//! answers for earlier jobs. A job's id is also the id of the export it runs, which ties a job
//! that was running when its server died to what its export left behind.

use crate::db::{field, Param, Stmt, Timestamp};
use crate::error::Result;
use crate::ident::{ConsumerId, TableName};
use crate::mode::Mode;

use super::StateStore;

/// Job states.
pub mod job_status {
    pub const PENDING: &str = "pending";
    pub const RUNNING: &str = "running";
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";
}

/// One export job.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobRecord {
    pub job_id: String,
    pub consumer: ConsumerId,
    pub table: TableName,
    pub mode: Mode,
    /// One of [`job_status`].
    pub status: String,
    /// The CSV's file name in the output directory (the expected one until the job ends; none
    /// when it ended with no changes to export).
    pub output_filename: Option<String>,
    pub rows: Option<u64>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    /// The process running it: `host:pid`.
    pub owner: String,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// How long the export waited for its snapshot to cover every change committed before it
    /// started.
    pub waited_ms: Option<u64>,
    /// Changes from this time on were held back by a transaction open when the export started.
    pub held_back_since: Option<Timestamp>,
}

impl JobRecord {
    /// True once the job is completed or failed.
    pub fn is_finished(&self) -> bool {
        self.status == job_status::COMPLETED || self.status == job_status::FAILED
    }
}

const JOB_COLUMNS: &str = "job_id, consumer_id, table_name, mode, status, output_filename, \
    row_count, duration_ms, error, owner, created_at, finished_at, waited_ms, held_back_since";

impl StateStore {
    /// Stores the job (insert or replace).
    pub async fn save_job(&self, job: &JobRecord) -> Result<()> {
        // Counts are stored as text: a NULL bound for an integer column is typed text on
        // PostgreSQL, which it refuses.
        let int = |v: Option<u64>| Param::from(v.map(|n| n.to_string()));
        self.db
            .transaction(&[
                Stmt::new(
                    "DELETE FROM tidemark_jobs WHERE job_id = ?",
                    vec![job.job_id.as_str().into()],
                ),
                Stmt::new(
                    format!(
                        "INSERT INTO tidemark_jobs ({JOB_COLUMNS}) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    ),
                    vec![
                        job.job_id.as_str().into(),
                        job.consumer.as_str().into(),
                        job.table.as_str().into(),
                        job.mode.as_str().into(),
                        job.status.as_str().into(),
                        job.output_filename.clone().into(),
                        int(job.rows),
                        int(job.duration_ms),
                        job.error.clone().into(),
                        job.owner.as_str().into(),
                        job.created_at.to_string().into(),
                        job.finished_at.map(|t| t.to_string()).into(),
                        int(job.waited_ms),
                        job.held_back_since.map(|t| t.to_string()).into(),
                    ],
                ),
            ])
            .await?;
        Ok(())
    }

    /// The job with this id.
    pub async fn job(&self, job_id: &str) -> Result<Option<JobRecord>> {
        Ok(self
            .jobs_where("job_id = ?", &[job_id.into()])
            .await?
            .into_iter()
            .next())
    }

    /// Jobs not finished (pending or running), oldest first.
    pub async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>> {
        self.jobs_where(
            "status IN (?, ?) ORDER BY created_at",
            &[job_status::PENDING.into(), job_status::RUNNING.into()],
        )
        .await
    }

    async fn jobs_where(&self, condition: &str, params: &[Param]) -> Result<Vec<JobRecord>> {
        let rows = self
            .db
            .query(
                &format!("SELECT {JOB_COLUMNS} FROM tidemark_jobs WHERE {condition}"),
                params,
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                let text = |i: usize| field(&r, i).map(str::to_string);
                let int = |i: usize| field(&r, i).and_then(|s| s.parse::<u64>().ok());
                Ok(JobRecord {
                    job_id: text(0).unwrap_or_default(),
                    consumer: ConsumerId::new(field(&r, 1).unwrap_or_default())?,
                    table: TableName::parse(field(&r, 2).unwrap_or_default())?,
                    mode: Mode::parse(field(&r, 3).unwrap_or_default())?,
                    status: text(4).unwrap_or_default(),
                    output_filename: text(5),
                    rows: int(6),
                    duration_ms: int(7),
                    error: text(8),
                    owner: text(9).unwrap_or_default(),
                    created_at: Timestamp::parse(field(&r, 10).unwrap_or_default())?,
                    finished_at: field(&r, 11).map(Timestamp::parse).transpose()?,
                    waited_ms: int(12),
                    held_back_since: field(&r, 13).map(Timestamp::parse).transpose()?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{connect, ConnectOptions};

    /// A state database made before jobs recorded their wait gains the columns, and keeps its
    /// jobs.
    #[tokio::test]
    async fn an_earlier_jobs_table_is_migrated() {
        let file = crate::testkit::SqliteFile::new().unwrap();
        let options = ConnectOptions {
            create_if_missing: true,
            max_connections: None,
        };
        let db = connect(&file.url, options).await.unwrap();
        let first = StateStore::open(std::sync::Arc::clone(&db)).await.unwrap();
        db.execute("DROP TABLE tidemark_jobs", &[]).await.unwrap();
        db.execute(
            "CREATE TABLE tidemark_jobs (job_id TEXT PRIMARY KEY, consumer_id TEXT NOT NULL, \
             table_name TEXT NOT NULL, mode TEXT NOT NULL, status TEXT NOT NULL, \
             output_filename TEXT, row_count TEXT, duration_ms TEXT, error TEXT, \
             owner TEXT NOT NULL, created_at TEXT NOT NULL, finished_at TEXT)",
            &[],
        )
        .await
        .unwrap();
        db.execute(
            "INSERT INTO tidemark_jobs VALUES ('a', 'c', 'users', 'full', 'completed', NULL, \
             '3', '7', NULL, 'h:1', '2026-11-21T04:37:00.000000Z', NULL)",
            &[],
        )
        .await
        .unwrap();
        drop(first);
        let state = StateStore::open(db).await.unwrap();
        let old = state.job("a").await.unwrap().unwrap();
        assert_eq!((old.rows, old.waited_ms), (Some(3), None));
        let mut job = old.clone();
        job.job_id = "b".into();
        job.waited_ms = Some(42);
        job.held_back_since = Some(Timestamp::parse("2026-11-21T04:37:00.5Z").unwrap());
        state.save_job(&job).await.unwrap();
        assert_eq!(state.job("b").await.unwrap().unwrap(), job);
    }
}
