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
use axum::{Extension, Json, Router};
use serde_json::json;
use utoipa::OpenApi;

use super::access::{Access, Principal};
use super::jobs::{Jobs, SubmitError};
use super::metrics::Metrics;
use crate::capture::Mode;
use crate::db::Timestamp;
use crate::error::Error;
use crate::export::Exporter;
use crate::format::FileFormat;
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
    /// Who may do what (tokens).
    pub access: Access,
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
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({ "error": crate::db::redact_text(&message.into()) }),
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
            Error::UnknownTable(_) | Error::UnknownSchema(_) => StatusCode::NOT_FOUND,
            Error::Busy { .. }
            | Error::Conflict { .. }
            | Error::StalePosition { .. }
            | Error::PositionGone { .. } => StatusCode::CONFLICT,
            // The server's database role lacks a grant: not the client's to fix.
            Error::Permission { .. } => StatusCode::INTERNAL_SERVER_ERROR,
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

/// `200` answer of `POST /export/{consumer_id}` when rows were exported.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ExportedBody {
    /// Always `success`.
    status: &'static str,
    consumer_id: String,
    /// The file's name in the output directory.
    file: String,
    /// The file's path on the server.
    #[schema(value_type = String)]
    path: PathBuf,
    rows: u64,
    #[serde(rename = "jobId")]
    job_id: String,
    /// Milliseconds the export waited for its snapshot to cover every change committed
    /// before it started.
    #[serde(rename = "waitedMs")]
    waited_ms: Option<u64>,
    /// Changes from this time on were held back by a write transaction open when the export
    /// started; a later export delivers them.
    #[serde(rename = "heldBackSince")]
    #[schema(value_type = Option<String>)]
    held_back_since: Option<Timestamp>,
}

/// `200` answer of `POST /export/{consumer_id}` when nothing changed since the watermark.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct NoDataBody {
    /// Always `No new data to export`.
    message: &'static str,
    consumer_id: String,
    #[serde(rename = "waitedMs")]
    waited_ms: Option<u64>,
    #[serde(rename = "heldBackSince")]
    #[schema(value_type = Option<String>)]
    held_back_since: Option<Timestamp>,
}

/// The two shapes of a synchronous export's answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SyncExportBody {
    Exported(ExportedBody),
    NoData(NoDataBody),
}

/// Export jobs of this server.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct JobsSummary {
    /// Jobs pending or running.
    active: usize,
}

/// `GET /stats` answer: the report of `tidemark status --json`, plus the database's state and
/// the server's jobs.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StatsBody {
    #[serde(flatten)]
    report: monitor::StatusReport,
    /// Always `ok` (an unreachable database gives 503).
    database: &'static str,
    jobs: JobsSummary,
}

/// The export formats the API serves, as `?format=` names them. The one place to extend: a
/// variant here is accepted by the handlers and listed in the OpenAPI document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FormatParam {
    /// RFC 4180 CSV with a header row.
    #[default]
    Csv,
    /// JSON Lines: one JSON object per row.
    Jsonl,
    /// Apache Parquet with typed columns.
    Parquet,
}

impl From<FormatParam> for FileFormat {
    fn from(f: FormatParam) -> FileFormat {
        match f {
            FormatParam::Csv => FileFormat::Csv,
            FormatParam::Jsonl => FileFormat::Jsonl,
            FormatParam::Parquet => FileFormat::Parquet,
        }
    }
}

/// The export modes, as `POST /exports/{id}` names them.
#[derive(Debug, Clone, Copy, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModeParam {
    Full,
    Incremental,
    Delta,
}

/// The optional `?table=` and `?format=` of export requests; nothing else is accepted.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TableParam {
    /// The table (default `users`): `name` or `schema.name`, a part with a dot in it written
    /// in double quotes (`"odd.name"`). The pattern states printable ASCII without leading or
    /// trailing space; any printable name of up to 63 UTF-8 bytes per part is accepted.
    #[param(
        min_length = 1,
        max_length = 129,
        pattern = r#"^((?:[!#-\-/-~](?:[ !#-\-/-~]{0,61}[!#-\-/-~])?|"[!#-~](?:[ !#-~]{0,61}[!#-~])?")\.)?(?:[!#-\-/-~](?:[ !#-\-/-~]{0,61}[!#-\-/-~])?|"[!#-~](?:[ !#-~]{0,61}[!#-~])?")$"#
    )]
    table: Option<String>,
    /// The file format (default `csv`).
    #[param(inline)]
    format: Option<FormatParam>,
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
    components(schemas(
        HealthBody,
        StartedBody,
        JobBody,
        WatermarkBody,
        ErrorBody,
        SyncExportBody,
        StatsBody,
        ModeParam
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// States the bearer-token scheme of [`super::access`] and requires it everywhere except
/// `/health` (which says so itself).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("tdm_ token from `tidemark token create`")
            .description(Some(
                "Needed once any token exists (or the server listens beyond loopback). A \
                 consumer token acts only as its consumer (403 otherwise); an admin token may \
                 do everything. Missing, unknown or revoked tokens get 401.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
        // A bearer token, or none: a server with no token configured (loopback only) takes
        // requests without one, so the document cannot say one is always required; the 401
        // and 403 answers of every path say what happens once tokens exist.
        openapi.security = Some(vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::default(),
        ]);
        let error = |description: &str| {
            utoipa::openapi::ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == "/health" {
                continue;
            }
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                let r = &mut op.responses.responses;
                r.entry("401".into()).or_insert_with(|| {
                    error("No valid token (missing, unknown, revoked or malformed)").into()
                });
                r.entry("403".into()).or_insert_with(|| {
                    error("A consumer token used for another consumer, or for a status endpoint")
                        .into()
                });
            }
        }
    }
}

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
        .merge(super::page::routes(&state))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::access::authorize,
        ))
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

/// The table of `?table=` (default `users`), after checking that `?format=` names a format
/// this server writes.
fn table_param(uri: &Uri) -> ApiResult<TableName> {
    Ok(table_and_format(uri)?.0)
}

/// The table of `?table=` (default `users`) and the format of `?format=` (default `csv`).
fn table_and_format(uri: &Uri) -> ApiResult<(TableName, FileFormat)> {
    let Query(p) = Query::<TableParam>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let format = p.format.unwrap_or_default().into();
    Ok((
        TableName::parse(p.table.as_deref().unwrap_or("users"))?,
        format,
    ))
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

/// Checks that the table exists and that `format` can hold its columns before a job is started
/// (when the database answers quickly; if it does not, the job starts and fails on its own,
/// recorded like any failure), and returns it as tidemark keys it.
async fn check_table(s: &AppState, table: TableName, format: FileFormat) -> ApiResult<TableName> {
    let table = resolve_table(s, table).await?;
    match tokio::time::timeout(s.health_timeout, s.exporter.source().describe(&table)).await {
        Ok(Err(e)) if !e.is_unavailable() => Err(e.into()),
        // A format that cannot hold a column is refused here (400), before any job starts.
        Ok(Ok(info)) => {
            let kind = s.exporter.source().kind();
            let types: Vec<crate::db::portable::ColumnType> = info
                .columns
                .iter()
                .map(|c| crate::db::portable::ColumnType::of(kind, c))
                .collect();
            crate::format::check(format, &types)?;
            Ok(table)
        }
        _ => Ok(table),
    }
}

/// Health of the service and its source database.
#[utoipa::path(get, path = "/health", security(()), responses(
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
    params(("consumer_id" = String, Path, description = "The consumer: 1–128 of [A-Za-z0-9_.-], not starting with '.'",
            pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$", min_length = 1, max_length = 128),
        TableParam),
    responses(
        (status = 200, description = "Exported (`status`, `consumer_id`, `file`, `path`, `rows`) or `No new data to export`", body = SyncExportBody),
        (status = 400, description = "Invalid consumer id, table or format", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 409, description = "An export for this consumer and table runs, or the consumer's position was made by an earlier capture set-up or removed (take a full export)", body = ErrorBody),
        (status = 500, description = "The export failed", body = ErrorBody),
        (status = 503, description = "The database does not answer, or too many jobs", body = ErrorBody)))]
async fn export_sync(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    path: std::result::Result<Path<String>, PathRejection>,
    uri: Uri,
) -> ApiResult<Json<SyncExportBody>> {
    let consumer = ConsumerId::new(&path_text(path)?)?;
    who.may_act_as(&consumer)?;
    let (table, format) = table_and_format(&uri)?;
    let table = check_table(&s, table, format).await?;
    let job = s
        .jobs
        .submit(consumer.clone(), table, Mode::Incremental, format)
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
        } else if finished.position {
            StatusCode::CONFLICT
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        return Err(ApiError::new(status, message).with("jobId", json!(done.job_id)));
    }
    Ok(Json(match done.output_filename {
        Some(file) => SyncExportBody::Exported(ExportedBody {
            status: "success",
            consumer_id: consumer.to_string(),
            path: s.out_dir.join(&file),
            file,
            rows: done.rows.unwrap_or(0),
            job_id: done.job_id,
            waited_ms: done.waited_ms,
            held_back_since: done.held_back_since,
        }),
        None => SyncExportBody::NoData(NoDataBody {
            message: "No new data to export",
            consumer_id: consumer.to_string(),
            waited_ms: done.waited_ms,
            held_back_since: done.held_back_since,
        }),
    }))
}

/// Starts a background export; follow it at `/exports/{jobId}`.
///
/// `POST /exports/{mode}` of the seed projects: `id` is the mode. (OpenAPI has one path for
/// `/exports/{mode}` and `/exports/{jobId}`: templated paths that differ only in the
/// parameter's name are the same path.)
#[utoipa::path(post, path = "/exports/{id}",
    params(("id" = ModeParam, Path, description = "The export mode: full, incremental or delta"),
        ("X-Consumer-ID" = String, Header, description = "The consumer: 1–128 of [A-Za-z0-9_.-], not starting with '.'",
            pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$", min_length = 1, max_length = 128),
        TableParam),
    responses(
        (status = 202, description = "The job started; follow it at `/exports/{jobId}`", body = StartedBody,
            links(
                ("job" = (operation_id = "job_status_handler",
                    parameters(("id" = "$response.body#/jobId")))),
                ("file" = (operation_id = "job_file",
                    parameters(("id" = "$response.body#/jobId")))))),
        (status = 400, description = "Missing or invalid consumer id, table or format", body = ErrorBody),
        (status = 404, description = "No such mode or table", body = ErrorBody),
        (status = 409, description = "An export for this consumer and table runs; `jobId` names it", body = ErrorBody),
        (status = 503, description = "The database does not answer, or too many jobs", body = ErrorBody)))]
async fn start_export(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    path: std::result::Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<(StatusCode, Json<StartedBody>)> {
    let mode_text = path_text(path)?;
    let mode = Mode::parse(&mode_text).map_err(|e| ApiError::not_found(e.to_string()))?;
    let consumer = consumer_header(&headers)?;
    who.may_act_as(&consumer)?;
    let (table, format) = table_and_format(&uri)?;
    let table = check_table(&s, table, format).await?;
    let job = s.jobs.submit(consumer, table, mode, format).await?;
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

/// The job, if `who` may see it (403 for another consumer's).
async fn find_job(s: &AppState, who: &Principal, id: &str) -> ApiResult<JobRecord> {
    let job = s
        .jobs
        .get(job_id(id)?)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown job"))?;
    who.may_act_as(&job.consumer)?;
    Ok(job)
}

/// A job's state (`GET /exports/{jobId}`).
#[utoipa::path(get, path = "/exports/{id}",
    params(("id" = String, Path, description = "The job id, as returned by POST /exports/{mode}", pattern = "^[0-9a-f]{32}$", min_length = 32, max_length = 32)),
    responses((status = 200, description = "The job", body = JobBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "The state database does not answer", body = ErrorBody)))]
async fn job_status_handler(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    path: std::result::Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JobBody>> {
    let id = path_text(path)?;
    Ok(Json(find_job(&s, &who, &id).await?.into()))
}

/// The file of a completed job, streamed (`GET /exports/{jobId}/file`): CSV, JSON Lines or
/// Parquet, as the job was asked for.
#[utoipa::path(get, path = "/exports/{id}/file",
    params(("id" = String, Path, description = "The job id, as returned by POST /exports/{mode}", pattern = "^[0-9a-f]{32}$", min_length = 32, max_length = 32)),
    responses(
        (status = 200, description = "The file, in the format the job was started with",
            content((String = "text/csv"), (String = "application/x-ndjson"),
                (String = "application/vnd.apache.parquet"))),
        (status = 404, description = "Unknown job, failed job, or a job that found nothing to export", body = ErrorBody),
        (status = 409, description = "The job is not finished yet", body = ErrorBody),
        (status = 503, description = "The state database does not answer", body = ErrorBody)))]
async fn job_file(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    path: std::result::Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let id = path_text(path)?;
    let job = find_job(&s, &who, &id).await?;
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
        && !name.starts_with('.');
    let format = FileFormat::of_file(&name).filter(|_| plain);
    let Some(format) = format else {
        return Err(ApiError::not_found(
            "the job's file is not in the output directory",
        ));
    };
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
        header::HeaderValue::from_static(format.content_type()),
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
    params(("X-Consumer-ID" = String, Header, description = "The consumer: 1–128 of [A-Za-z0-9_.-], not starting with '.'",
            pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$", min_length = 1, max_length = 128),
        TableParam),
    responses((status = 200, description = "The watermark", body = WatermarkBody),
        (status = 400, description = "Missing or invalid consumer id, table or format", body = ErrorBody),
        (status = 404, description = "No watermark yet", body = ErrorBody),
        (status = 503, description = "The state database does not answer", body = ErrorBody)))]
async fn watermark(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Json<WatermarkBody>> {
    let consumer = consumer_header(&headers)?;
    who.may_act_as(&consumer)?;
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
    (status = 200, description = "The monitor's report (same as `tidemark status --json`) plus jobs", body = StatsBody),
    (status = 503, description = "The database does not answer", body = ErrorBody)))]
async fn stats(State(s): State<AppState>) -> ApiResult<Json<StatsBody>> {
    let report = s.report(true, Duration::from_secs(30)).await?;
    Ok(Json(StatsBody {
        report,
        database: "ok",
        jobs: JobsSummary {
            active: s.jobs.active().await,
        },
    }))
}

/// Prometheus metrics: the Prometheus text format (0.0.4) unless the `Accept` header asks for
/// OpenMetrics (`application/openmetrics-text`), as Prometheus itself does.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Exports by mode and outcome, rows, durations, HTTP requests, pending changes, lag",
        content(
            (String = "text/plain"),
            (String = "application/openmetrics-text")))))]
async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let report = s.report(false, s.health_timeout * 5).await.ok();
    s.metrics.refresh(report.as_ref());
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if super::metrics::wants_openmetrics(accept) {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            s.metrics.render(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            s.metrics.render_text(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// The `pattern` the OpenAPI document gives the `table` query parameter.
    fn table_pattern() -> String {
        let doc = serde_json::to_value(super::openapi()).expect("the document serializes");
        let params = doc["paths"]["/exports/{id}"]["post"]["parameters"].clone();
        params
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "table")
            .and_then(|p| p["schema"]["pattern"].as_str())
            .expect("a pattern for ?table=")
            // Generation needs the pattern without its anchors (the whole value matches).
            .trim_start_matches('^')
            .trim_end_matches('$')
            .to_string()
    }

    proptest! {
        // schemathesis sends what the document allows and expects it accepted: every name the
        // pattern allows must parse (a quoted part ending in a space did not).
        #[test]
        fn every_table_the_document_allows_parses(
            name in proptest::string::string_regex(&table_pattern()).expect("a regex")
        ) {
            prop_assert!(crate::ident::TableName::parse(&name).is_ok(), "{name:?}");
        }
    }
}
