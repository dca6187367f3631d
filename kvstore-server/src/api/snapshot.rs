//! `/v1/snapshot`: export every entry at one revision, and restore into an empty store.
//!
//! The format is NDJSON: a [`SnapshotHeader`] line, then one entry per line in key
//! order, values binary-safe as everywhere in the API. Both directions stream: an
//! export is written as the store reads it, a restore is written as it arrives, so
//! neither holds a whole snapshot.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::{StreamExt, TryStreamExt};
use kvstore_core::wire::{Entry, RestoreResult, SnapshotHeader};
use kvstore_core::{ErrorCode, Snapshot};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::route::{Mount, Route};
use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use kvstore_core::ErrorCode::*;

/// Entries sent to the client per chunk of an export.
const EXPORT_CHUNK: usize = 256;
/// Entries parsed ahead of the store during a restore.
const RESTORE_AHEAD: usize = 256;

/// The routes of `/v1/snapshot`.
pub(crate) const ROUTES: &[Route] = &[
    Route::new::<__path_export>(
        Mount::To(|r| r.to(export)),
        &[InvalidRequest, Forbidden, StorageUnavailable, ShuttingDown],
    ),
    Route::new::<__path_restore>(
        Mount::To(|r| r.to(restore)),
        &[
            InvalidSnapshot,
            Forbidden,
            RequestTimeout,
            StoreNotEmpty,
            ValueTooLarge,
            StorageUnavailable,
            ShuttingDown,
            InsufficientStorage,
        ],
    ),
];

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ExportQuery {
    /// Only keys starting with this (absent: every key).
    #[serde(default)]
    prefix: String,
}

fn push_line<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), ApiError> {
    serde_json::to_writer(&mut *out, value).map_err(|e| ApiError::internal(e.to_string()))?;
    out.push(b'\n');
    Ok(())
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
    )
)]
async fn export(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<ExportQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid_request(format!("bad query string: {e}")))?;
    caller.check_read_some(&query.prefix)?;
    let Snapshot { revision, entries } = state
        .store
        .snapshot(&query.prefix)
        .await
        .map_err(|e| ApiError::from_store(e, &query.prefix))?;
    let mut header = Vec::new();
    push_line(
        &mut header,
        &SnapshotHeader {
            format: SnapshotHeader::FORMAT.into(),
            revision,
        },
    )?;
    // An error part way ends the body early: the client sees a broken transfer,
    // never a snapshot that looks complete.
    let lines = entries
        .map_err(ApiError::from)
        .try_filter(move |entry| std::future::ready(caller.can_read(&entry.key)))
        .chunks(EXPORT_CHUNK)
        .map(|chunk| {
            let mut out = Vec::new();
            for entry in chunk {
                push_line(&mut out, &entry?)?;
            }
            Ok::<_, ApiError>(web::Bytes::from(out))
        });
    let body =
        futures_util::stream::once(std::future::ready(Ok(web::Bytes::from(header)))).chain(lines);
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header((super::headers::STORE_REVISION, revision))
        .streaming(body))
}

/// Reads a restore body line by line, within `max_line` bytes a line and
/// `timeout` between chunks.
struct Lines {
    payload: web::Payload,
    buf: Vec<u8>,
    /// Number of the last line handed out.
    number: usize,
    max_line: usize,
    timeout: std::time::Duration,
    done: bool,
}

impl Lines {
    /// The next line that is not blank, with its number; `None` at the end.
    async fn next(&mut self) -> Result<Option<(usize, Vec<u8>)>, ApiError> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                self.number += 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some((self.number, line)));
            }
            if self.buf.len() > self.max_line {
                return Err(ApiError::value_too_large(self.max_line));
            }
            if self.done {
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                self.number += 1;
                return Ok(Some((self.number, std::mem::take(&mut self.buf))));
            }
            match tokio::time::timeout(self.timeout, self.payload.next()).await {
                Err(_) => return Err(ApiError::request_timeout()),
                Ok(None) => self.done = true,
                Ok(Some(chunk)) => self
                    .buf
                    .extend_from_slice(&chunk.map_err(|e| {
                        ApiError::invalid_request(format!("reading the body: {e}"))
                    })?),
            }
        }
    }
}

/// The snapshot's revision, from its first line.
async fn header(lines: &mut Lines) -> Result<u64, ApiError> {
    let (_, first) = lines
        .next()
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidSnapshot, "the snapshot is empty"))?;
    let header: SnapshotHeader = serde_json::from_slice(&first).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidSnapshot,
            format!("invalid snapshot: line 1 is not a snapshot header: {e}"),
        )
    })?;
    if header.format != SnapshotHeader::FORMAT {
        return Err(ApiError::new(
            ErrorCode::InvalidSnapshot,
            format!(
                "invalid snapshot: unknown format {:?}; expected {:?}",
                header.format,
                SnapshotHeader::FORMAT
            ),
        ));
    }
    Ok(header.revision)
}

/// Parses the entry lines into `tx` as they arrive, stopping at the first bad one.
async fn parse_entries(mut lines: Lines, tx: mpsc::Sender<Result<Entry, kvstore_core::Error>>) {
    loop {
        let parsed = match lines.next().await {
            Ok(None) => return,
            Ok(Some((n, line))) => serde_json::from_slice::<Entry>(&line)
                .map_err(|e| kvstore_core::Error::InvalidSnapshot(format!("line {n}: {e}"))),
            Err(e) => Err(kvstore_core::Error::InvalidSnapshot(e.to_string())),
        };
        let failed = parsed.is_err();
        if tx.send(parsed).await.is_err() || failed {
            return;
        }
    }
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
        content((super::route::Binary = "application/x-ndjson")),
    ),
    responses(
        (status = 200, description = "Restored", body = RestoreResult),
    )
)]
async fn restore(
    caller: Caller,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // A restore writes everything: it takes a token that may write every key.
    caller.check_write("")?;
    let mut lines = Lines {
        payload,
        buf: Vec::new(),
        number: 0,
        // A line is an entry: its key and its value, each escaped as JSON (6 bytes
        // a byte at worst), with room for the rest.
        max_line: (state.store.max_value_bytes() + kvstore_core::key::MAX_KEY_BYTES) * 6 + 1024,
        timeout: state.body_timeout,
        done: false,
    };
    let revision = header(&mut lines).await?;
    // The request body is read on this worker (it cannot move between threads);
    // the store takes its entries from a bounded channel.
    let (tx, mut rx) = mpsc::channel(RESTORE_AHEAD);
    actix_web::rt::spawn(parse_entries(lines, tx));
    let entries = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let result = state
        .store
        .restore(Snapshot {
            revision,
            entries: Box::pin(entries),
        })
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    Ok(HttpResponse::Ok().json(result))
}
