//! `/v1/snapshot`: export every entry at one revision, and restore into an empty store.
//!
//! The format is NDJSON: a [`SnapshotHeader`] line, then one entry per line in key
//! order, values binary-safe as everywhere in the API.

use actix_web::{web, HttpRequest, HttpResponse};
use kvstore_core::wire::{Entry, ErrorBody, RestoreResult, SnapshotHeader};
use serde::Deserialize;

use crate::auth::Caller;
use crate::body::read_limited;
use crate::error::ApiError;
use crate::state::AppState;

/// Largest snapshot accepted by a restore.
const MAX_SNAPSHOT_BYTES: usize = 4 * 1024 * 1024 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/snapshot", web::get().to(export))
        .route("/v1/snapshot", web::post().to(restore));
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ExportQuery {
    /// Only keys starting with this (absent: every key).
    #[serde(default)]
    prefix: String,
}

fn line<T: serde::Serialize>(value: &T) -> Result<web::Bytes, ApiError> {
    let mut bytes = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?;
    bytes.push(b'\n');
    Ok(web::Bytes::from(bytes))
}

/// Export a consistent snapshot of every entry (under `prefix`) as of one revision.
#[utoipa::path(
    get,
    path = "/v1/snapshot",
    tag = "snapshot",
    operation_id = "export_snapshot",
    params(ExportQuery),
    responses(
        (status = 200, description = "NDJSON: a `SnapshotHeader` line, then one `Entry` per \
            line in key order",
         content_type = "application/x-ndjson", body = String,
         headers(("x-kv-revision" = u64, description = "The revision the snapshot shows"))),
        (status = 400, description = "`invalid_request`: a bad query string", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token may read nothing under the prefix",
         body = ErrorBody),
        (status = 503, description = "`storage_unavailable` or `shutting_down`", body = ErrorBody),
    )
)]
async fn export(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<ExportQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::InvalidRequest(format!("bad query string: {e}")))?;
    caller.check_read_some(&query.prefix)?;
    let (mut entries, revision) = state
        .store
        .snapshot(&query.prefix)
        .await
        .map_err(|e| ApiError::from_store(e, &query.prefix))?;
    entries.retain(|e| caller.can_read(&e.key));
    let header = line(&SnapshotHeader {
        format: SnapshotHeader::FORMAT.into(),
        revision,
    })?;
    let lines = std::iter::once(Ok(header)).chain(entries.into_iter().map(|e| line(&e)));
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header((crate::routes::kv::STORE_REVISION, revision))
        .streaming(futures_util::stream::iter(lines)))
}

/// Parses a snapshot: its revision and entries, or which line is wrong.
fn parse(body: &[u8]) -> Result<(u64, Vec<Entry>), ApiError> {
    let mut lines = body
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace));
    let (_, first) = lines
        .next()
        .ok_or_else(|| ApiError::InvalidSnapshot("the snapshot is empty".into()))?;
    let header: SnapshotHeader = serde_json::from_slice(first)
        .map_err(|e| ApiError::InvalidSnapshot(format!("line 1 is not a snapshot header: {e}")))?;
    if header.format != SnapshotHeader::FORMAT {
        return Err(ApiError::InvalidSnapshot(format!(
            "unknown format {:?}; expected {:?}",
            header.format,
            SnapshotHeader::FORMAT
        )));
    }
    let entries = lines
        .map(|(n, l)| {
            serde_json::from_slice::<Entry>(l)
                .map_err(|e| ApiError::InvalidSnapshot(format!("line {}: {e}", n + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((header.revision, entries))
}

/// Restore a snapshot into an empty store, keeping every key's value, version and
/// revisions. Raises no watch events.
#[utoipa::path(
    post,
    path = "/v1/snapshot",
    tag = "snapshot",
    operation_id = "restore_snapshot",
    request_body(
        description = "A snapshot as `GET /v1/snapshot` gives it: a `SnapshotHeader` line \
            (`{\"format\":\"kvstore.snapshot.v1\",\"revision\":N}`), then one `Entry` per line",
        content((crate::openapi::Binary = "application/x-ndjson")),
    ),
    responses(
        (status = 200, description = "Restored", body = RestoreResult),
        (status = 400, description = "`invalid_snapshot`: the body is not a snapshot",
         body = ErrorBody),
        (status = 403, description = "`forbidden`: a restore needs a token that may write \
            every key", body = ErrorBody),
        (status = 408, description = "`request_timeout`", body = ErrorBody),
        (status = 409, description = "`store_not_empty`: restore into a new data dir",
         body = ErrorBody),
        (status = 413, description = "`value_too_large`: over 4 GiB", body = ErrorBody),
        (status = 503, description = "`storage_unavailable` or `shutting_down`", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`", body = ErrorBody),
    )
)]
async fn restore(
    req: HttpRequest,
    caller: Caller,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // A restore writes everything: it takes a token that may write every key.
    caller.check_write("")?;
    let body = read_limited(&req, payload, MAX_SNAPSHOT_BYTES).await?;
    let (revision, entries) = parse(&body)?;
    let restored = state
        .store
        .restore(revision, entries)
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    Ok(HttpResponse::Ok().json(RestoreResult { restored, revision }))
}
