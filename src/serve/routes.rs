//! The HTTP API of PRODUCT.md on axum: handlers, their JSON shapes, the mapping of library
//! errors to status codes, and the OpenAPI document generated from the handlers (utoipa).
//! Every answer, errors included, is JSON (the CSV download and the metrics text aside).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use utoipa::OpenApi;

use super::jobs::{Jobs, SubmitError};
use super::metrics::Metrics;
use crate::capture::Mode;
use crate::db::Timestamp;
use crate::error::Error;
use crate::export::Exporter;
use crate::ident::{ConsumerId, TableName};
use crate::monitor::{self, Thresholds};
use crate::state::jobs::{job_status, JobRecord};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub jobs: Jobs,
    pub exporter: Exporter,
    pub out_dir: PathBuf,
    pub metrics: Arc<Metrics>,
    /// How long `/health` waits for the database.
    pub health_timeout: Duration,
    pub thresholds: Thresholds,
}

impl AppState {
    /// The monitor's report (`/stats`, `/metrics`), given up after `limit`.
    async fn report(
        &self,
        table_totals: bool,
        limit: Duration,
    ) -> ApiResult<monitor::StatusReport> {
        let scope = monitor::Scope {
            thresholds: self.thresholds,
            table_totals,
        };
        let collect = monitor::collect(
            self.exporter.source().as_ref(),
            self.exporter.state(),
            scope,
        );
        tokio::time::timeout(limit, collect)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database did not answer in time",
                )
            })?
            .map_err(ApiError::from)
    }
}

/// The header naming the consumer.
pub const CONSUMER_HEADER: &str = "x-consumer-id";

/// A JSON error answer: `{"error": "…"}` plus optional fields.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({ "error": message.into() }),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        if let Some(map) = self.body.as_object_mut() {
            map.insert(key.to_string(), value);
        }
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::UnknownTable(_) => StatusCode::NOT_FOUND,
            Error::Busy { .. } | Error::Conflict { .. } => StatusCode::CONFLICT,
            _ if e.is_input_error() => StatusCode::BAD_REQUEST,
            _ if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match &e {
            SubmitError::Busy { job_id, .. } => {
                let id = job_id.clone();
                ApiError::new(StatusCode::CONFLICT, e.to_string()).with("jobId", json!(id))
            }
            SubmitError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// `GET /health` answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct HealthBody {
    /// `ok` or `error`.
    status: &'static str,
    #[schema(value_type = String)]
    timestamp: Timestamp,
    /// `ok` or `error`.
    database: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `202` answer of `POST /exports/{mode}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartedBody {
    job_id: String,
    /// Always `started`.
    status: &'static str,
    export_type: String,
    table: String,
    output_filename: Option<String>,
}

/// A job as `GET /exports/{jobId}` shows it.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobBody {
    job_id: String,
    /// `pending`, `running`, `completed` or `failed`.
    status: String,
    export_type: String,
    consumer_id: String,
    table: String,
    output_filename: Option<String>,
    rows_exported: Option<u64>,
    duration_ms: Option<u64>,
    /// Milliseconds the export waited for its snapshot to cover every change committed
    /// before it started.
    waited_ms: Option<u64>,
    /// Changes from this time on were held back by a write transaction open when the export
    /// started; a later export delivers them.
    #[schema(value_type = Option<String>)]
    held_back_since: Option<Timestamp>,
    error: Option<String>,
    #[schema(value_type = String)]
    created_at: Timestamp,
    #[schema(value_type = Option<String>)]
    finished_at: Option<Timestamp>,
}

impl From<JobRecord> for JobBody {
    fn from(j: JobRecord) -> Self {
        JobBody {
            job_id: j.job_id,
            status: j.status,
            export_type: j.mode.to_string(),
            consumer_id: j.consumer.to_string(),
            table: j.table.to_string(),
            output_filename: j.output_filename,
            rows_exported: j.rows,
            duration_ms: j.duration_ms,
            waited_ms: j.waited_ms,
            held_back_since: j.held_back_since,
            error: j.error,
            created_at: j.created_at,
            finished_at: j.finished_at,
        }
    }
}

/// `GET /exports/watermark` answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatermarkBody {
    consumer_id: String,
    table: String,
    /// Every change before this instant has been exported to the consumer.
    #[schema(value_type = String)]
    last_exported_at: Timestamp,
    #[schema(value_type = Object)]
    position: crate::state::Position,
    #[schema(value_type = String)]
    updated_at: Timestamp,
}

/// An error answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: String,
}

/// The optional `?table=` of export requests (default `users`); nothing else is accepted.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TableParam {
    /// The table (default `users`).
    table: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tidemark",
        description = "Change data capture exports over HTTP"
    ),
    paths(
        health,
        export_sync,
        start_export,
        job_status_handler,
        job_file,
        watermark,
        stats,
        metrics
    ),
    components(schemas(HealthBody, StartedBody, JobBody, WatermarkBody, ErrorBody))
)]
struct ApiDoc;

/// The OpenAPI document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The router with every route, the JSON fallbacks and per-route metrics.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/export/{consumer_id}", post(export_sync))
        .route("/exports/watermark", get(watermark))
        .route("/exports/{id}", post(start_export).get(job_status_handler))
        .route("/exports/{id}/file", get(job_file))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_request,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn count_request(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().clone();
    let t0 = Instant::now();
    let resp = next.run(req).await;
    s.metrics.request(
        &route,
        method.as_str(),
        resp.status().as_u16(),
        t0.elapsed().as_secs_f64(),
    );
    resp
}

async fn not_found(State(s): State<AppState>, req: Request) -> ApiError {
    s.metrics
        .request("unmatched", req.method().as_str(), 404, 0.0);
    ApiError::not_found("no such endpoint; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint; see /openapi.json",
    )
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

/// The consumer named by `X-Consumer-ID`.
fn consumer_header(headers: &HeaderMap) -> ApiResult<ConsumerId> {
    let value = headers
        .get(CONSUMER_HEADER)
        .ok_or_else(|| ApiError::bad_request("missing X-Consumer-ID header naming the consumer"))?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("X-Consumer-ID must be visible ASCII"))?;
    Ok(ConsumerId::new(text)?)
}

/// The table of `?table=` (default `users`).
fn table_param(uri: &Uri) -> ApiResult<TableName> {
    let Query(p) = Query::<TableParam>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    Ok(TableName::parse(p.table.as_deref().unwrap_or("users"))?)
}

fn path_text(path: std::result::Result<Path<String>, PathRejection>) -> ApiResult<String> {
    path.map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))
}

/// The table as tidemark keys it (`public.users` is `users`; a schema that does not exist is
/// refused), when the database answers quickly; as given when it does not.
async fn resolve_table(s: &AppState, table: TableName) -> ApiResult<TableName> {
    match tokio::time::timeout(s.health_timeout, s.exporter.source().resolve_table(&table)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) if !e.is_unavailable() => Err(e.into()),
        _ => Ok(table),
    }
}

/// Checks that the table exists before a job is started (when the database answers quickly;
/// if it does not, the job starts and fails on its own, recorded like any failure), and
/// returns it as tidemark keys it.
async fn check_table(s: &AppState, table: TableName) -> ApiResult<TableName> {
    let table = resolve_table(s, table).await?;
    match tokio::time::timeout(s.health_timeout, s.exporter.source().describe(&table)).await {
        Ok(Err(e)) if !e.is_unavailable() => Err(e.into()),
        _ => Ok(table),
    }
}

/// Health of the service and its source database.
#[utoipa::path(get, path = "/health", responses(
    (status = 200, description = "The database answers", body = HealthBody),
    (status = 503, description = "The database does not answer", body = HealthBody)))]
async fn health(State(s): State<AppState>) -> (StatusCode, Json<HealthBody>) {
    let ping = tokio::time::timeout(s.health_timeout, s.exporter.source().ping()).await;
    let error = match ping {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "the database did not answer within {} ms",
            s.health_timeout.as_millis()
        )),
    };
    let ok = error.is_none();
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(HealthBody {
            status: if ok { "ok" } else { "error" },
            timestamp: Timestamp::now(),
            database: if ok { "ok" } else { "error" },
            error,
        }),
    )
}

/// Runs an incremental export for the consumer and waits for it.
#[utoipa::path(post, path = "/export/{consumer_id}",
    params(("consumer_id" = String, Path, description = "1–128 of [A-Za-z0-9_.-], not starting with '.'"),
        TableParam),
    responses(
        (status = 200, description = "Exported (`status`, `consumer_id`, `file`, `path`, `rows`) or `No new data to export`"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "An export for this consumer and table runs", body = ErrorBody),
        (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn export_sync(
    State(s): State<AppState>,
    path: std::result::Result<Path<String>, PathRejection>,
    uri: Uri,
) -> ApiResult<Json<serde_json::Value>> {
    let consumer = ConsumerId::new(&path_text(path)?)?;
    let table = check_table(&s, table_param(&uri)?).await?;
    let job = s
        .jobs
        .submit(consumer.clone(), table, Mode::Incremental)
        .await?;
    let finished = s
        .jobs
        .wait(&job.job_id)
        .await
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "job vanished"))?;
    let done = finished.record;
    if done.status != job_status::COMPLETED {
        let message = done.error.clone().unwrap_or_else(|| "export failed".into());
        let status = if finished.unavailable {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        return Err(ApiError::new(status, message).with("jobId", json!(done.job_id)));
    }
    Ok(Json(match &done.output_filename {
        Some(file) => json!({
            "status": "success",
            "consumer_id": consumer,
            "file": file,
            "path": s.out_dir.join(file),
            "rows": done.rows.unwrap_or(0),
            "jobId": done.job_id,
            "waitedMs": done.waited_ms,
            "heldBackSince": done.held_back_since,
        }),
        None => json!({
            "message": "No new data to export",
            "consumer_id": consumer,
            "waitedMs": done.waited_ms,
            "heldBackSince": done.held_back_since,
        }),
    }))
}

/// Starts a background export; follow it at `/exports/{jobId}`.
#[utoipa::path(post, path = "/exports/{mode}",
    params(("mode" = String, Path, description = "full, incremental or delta"),
        ("X-Consumer-ID" = String, Header, description = "The consumer"), TableParam),
    responses(
        (status = 202, body = StartedBody),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "An export for this consumer and table runs; `jobId` names it", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn start_export(
    State(s): State<AppState>,
    path: std::result::Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<(StatusCode, Json<StartedBody>)> {
    let mode_text = path_text(path)?;
    let mode = Mode::parse(&mode_text).map_err(|e| ApiError::not_found(e.to_string()))?;
    let consumer = consumer_header(&headers)?;
    let table = check_table(&s, table_param(&uri)?).await?;
    let job = s.jobs.submit(consumer, table, mode).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(StartedBody {
            job_id: job.job_id,
            status: "started",
            export_type: mode.to_string(),
            table: job.table.to_string(),
            output_filename: job.output_filename,
        }),
    ))
}

/// A job id as the server makes them: 32 lowercase hex digits.
fn job_id(text: &str) -> ApiResult<&str> {
    if text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(text)
    } else {
        Err(ApiError::not_found("unknown job"))
    }
}

async fn find_job(s: &AppState, id: &str) -> ApiResult<JobRecord> {
    s.jobs
        .get(job_id(id)?)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown job"))
}

/// A job's state.
#[utoipa::path(get, path = "/exports/{jobId}",
    params(("jobId" = String, Path, description = "As returned by POST /exports/{mode}")),
    responses((status = 200, body = JobBody), (status = 404, body = ErrorBody)))]
async fn job_status_handler(
    State(s): State<AppState>,
    path: std::result::Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JobBody>> {
    let id = path_text(path)?;
    Ok(Json(find_job(&s, &id).await?.into()))
}

/// The CSV of a completed job, streamed.
#[utoipa::path(get, path = "/exports/{jobId}/file",
    params(("jobId" = String, Path, description = "As returned by POST /exports/{mode}")),
    responses(
        (status = 200, description = "The CSV", content_type = "text/csv"),
        (status = 404, description = "Unknown job, failed job, or a job that found nothing to export", body = ErrorBody),
        (status = 409, description = "The job is not finished yet", body = ErrorBody)))]
async fn job_file(
    State(s): State<AppState>,
    path: std::result::Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let id = path_text(path)?;
    let job = find_job(&s, &id).await?;
    match job.status.as_str() {
        job_status::COMPLETED => {}
        job_status::FAILED => {
            return Err(ApiError::not_found(format!(
                "job {} failed, it has no file: {}",
                job.job_id,
                job.error.unwrap_or_default()
            )))
        }
        other => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "job {} is {other}; its file is available once it is completed",
                    job.job_id
                ),
            )
            .with("status", json!(other)))
        }
    }
    let name = job
        .output_filename
        .ok_or_else(|| ApiError::not_found("the export found no changes; it wrote no file"))?;
    // Names come from our own records, but a file is only ever served from the output
    // directory itself.
    let plain = std::path::Path::new(&name)
        .file_name()
        .is_some_and(|n| n == name.as_str())
        && !name.starts_with('.')
        && name.ends_with(".csv");
    if !plain {
        return Err(ApiError::not_found(
            "the job's file is not in the output directory",
        ));
    }
    let path = s.out_dir.join(&name);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::not_found(format!("{name} cannot be read: {e}")))?;
    let len = file.metadata().await.map(|m| m.len()).ok();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, len.into());
    }
    if let Ok(v) = header::HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// The consumer's watermark on a table.
#[utoipa::path(get, path = "/exports/watermark",
    params(("X-Consumer-ID" = String, Header, description = "The consumer"), TableParam),
    responses((status = 200, body = WatermarkBody), (status = 400, body = ErrorBody),
        (status = 404, description = "No watermark yet", body = ErrorBody)))]
async fn watermark(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Json<WatermarkBody>> {
    let consumer = consumer_header(&headers)?;
    let table = resolve_table(&s, table_param(&uri)?).await?;
    let w = s
        .exporter
        .state()
        .watermark(&consumer, &table)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "consumer {consumer} has no watermark on table {table} yet"
            ))
        })?;
    Ok(Json(WatermarkBody {
        consumer_id: consumer.to_string(),
        table: table.to_string(),
        last_exported_at: w.position.time(),
        position: w.position,
        updated_at: w.updated_at,
    }))
}

/// Changes by operation, consumers with their watermarks, pending changes and lag, health.
#[utoipa::path(get, path = "/stats", responses(
    (status = 200, description = "The monitor's report (same as `tidemark status --json`) plus jobs"),
    (status = 503, body = ErrorBody)))]
async fn stats(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let report = s.report(true, Duration::from_secs(30)).await?;
    let mut value = serde_json::to_value(&report)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("database".into(), json!("ok"));
        map.insert("jobs".into(), json!({ "active": s.jobs.active().await }));
    }
    Ok(Json(value))
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Exports by mode and outcome, rows, durations, HTTP requests, pending changes, lag", content_type = "application/openmetrics-text")))]
async fn metrics(State(s): State<AppState>) -> Response {
    let report = s.report(false, s.health_timeout * 5).await.ok();
    s.metrics.refresh(report.as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}
