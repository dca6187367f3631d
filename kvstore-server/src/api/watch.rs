//! `/v1/watch`: change streams over WebSocket (`Upgrade: websocket`), else as
//! Server-Sent Events, unless `Accept` refuses `text/event-stream`. Both carry the
//! same JSON frames (see the watch protocol in docs/watches.md).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use kvstore_core::WatchOptions;
use serde::Deserialize;

use super::route::{Mount, Route};
use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::watch::{sse, websocket, Pump};
use kvstore_core::ErrorCode;

/// Largest frame a watch client may send (it has nothing big to say).
const MAX_CLIENT_FRAME: usize = 16 * 1024;

/// The route of `/v1/watch`.
pub(crate) const ROUTES: &[Route] = &[Route::new::<__path_watch>(
    Mount::To(|r| r.to(watch)),
    &[
        ErrorCode::InvalidRequest,
        ErrorCode::Forbidden,
        ErrorCode::Compacted,
        ErrorCode::TooManyWatchers,
    ],
)];

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct WatchQuery {
    /// Only keys starting with this (absent: every key).
    #[serde(default)]
    prefix: String,
    /// First every change with revision >= this from the history, then live.
    #[param(nullable = false)]
    start_revision: Option<u64>,
    /// First the current entries under the prefix, then a `synced` frame, then changes.
    #[serde(default)]
    initial: bool,
}

/// The headers that pick and resume a watch.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct WatchHeaders {
    /// `websocket`, with the other WebSocket handshake headers (`Connection:
    /// Upgrade`, `Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`): a WebSocket
    /// watch; an incomplete handshake is `400`. Any other value is ignored.
    #[param(rename = "Upgrade", nullable = false)]
    upgrade: Option<String>,
    /// SSE: the last `id:` seen; the stream resumes right after it.
    #[param(rename = "Last-Event-ID", nullable = false)]
    last_event_id: Option<u64>,
}

/// Watch changes under a prefix: a WebSocket (`Upgrade: websocket`), else Server-Sent
/// Events (`text/event-stream`; `Accept`, if sent, must admit it).
///
/// Both carry the same JSON frames, each an object whose `type` names it: `put` and
/// `delete` (an `Event`), `entry` (an `Entry` with `"type":"entry"`, for
/// `initial=true`), `synced` and `progress` (`{"type":..., "revision": N}`), and
/// `error` (an `ErrorDetail` with `"type":"error"`: `compacted`, `lagged` or
/// `shutting_down`), the last frame before the server closes the stream. An SSE
/// event's `event:` is the frame's type and its `id:` the revision. The stream does
/// not end by itself.
#[utoipa::path(
    get,
    path = "/v1/watch",
    tag = "watch",
    operation_id = "watch",
    params(WatchQuery, WatchHeaders),
    responses(
        (status = 101, description = "WebSocket: the connection is upgraded; every frame is \
            a text frame holding one JSON frame. The server ignores what the client sends \
            apart from pings, pongs and close frames (at most 16 KiB a frame)."),
        (status = 200, description = "Server-Sent Events, endless: `event:` the frame type, \
            `id:` its revision, `data:` the JSON frame",
         content_type = "text/event-stream", body = String),
    )
)]
async fn watch(
    req: HttpRequest,
    caller: Caller,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<WatchQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid_request(format!("bad query string: {e}")))?
        .into_inner();
    caller.check_read_some(&query.prefix)?;
    let client = match &caller {
        Caller::Token(role) => format!("token {}", role.token_name),
        Caller::Open => req
            .peer_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.ip().to_string()),
    };
    let mut options = WatchOptions {
        prefix: query.prefix,
        start_revision: query.start_revision,
        initial: query.initial,
    };
    if is_websocket(&req) {
        let slot = state.watchers.acquire(client)?;
        let (res, session, stream) = actix_ws::handle(&req, body)
            .map_err(|e| ApiError::invalid_request(format!("WebSocket handshake: {e}")))?;
        let stream = stream.max_frame_size(MAX_CLIENT_FRAME);
        let pump = Pump::new(&state, options, caller, slot);
        let (timings, shutdown) = (state.timings, state.shutdown.clone());
        actix_web::rt::spawn(websocket::serve(session, stream, pump, timings, shutdown));
        return Ok(res);
    }
    let accept = req.headers().get(header::ACCEPT);
    if !admits_event_stream(accept) {
        let accept = accept.map_or_else(String::new, |v| {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        });
        return Err(ApiError::invalid_request(format!(
            "a watch is Server-Sent Events (text/event-stream), which Accept: {accept} \
             refuses, or a WebSocket (Upgrade: websocket)"
        )));
    }
    if let Some(last) = req.headers().get("last-event-id") {
        let last: u64 = last
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ApiError::invalid_request("Last-Event-ID must be a revision"))?;
        // The client already has the state up to `last`: resume right after it.
        options.start_revision = Some(last + 1);
        options.initial = false;
    }
    let slot = state.watchers.acquire(client)?;
    let mut pump = Pump::new(&state, options, caller, slot);
    // Opened before answering, so that a watch the store refuses (its history is
    // compacted) gets its HTTP status, 410, rather than a 200 and an error event.
    // (A WebSocket watch gets the error frame: a browser cannot read the status of
    // a refused handshake.)
    pump.open().await?;
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(sse::body(pump)))
}

/// Whether the request asks for a WebSocket: `Upgrade: websocket`. (actix takes the
/// connection for an upgrade on that header alone, so a watch must not answer it
/// with anything but the handshake or an error.)
fn is_websocket(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Whether `Accept` admits `text/event-stream`: when absent (anything goes), or when
/// the most specific range that covers it (`text/event-stream`, `text/*`, `*/*`) has
/// a non-zero `q`.
fn admits_event_stream(accept: Option<&header::HeaderValue>) -> bool {
    let Some(accept) = accept else {
        return true;
    };
    let Ok(accept) = accept.to_str() else {
        return false;
    };
    let mut best: Option<(u8, bool)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let specificity = ["*/*", "text/*", "text/event-stream"]
            .iter()
            .position(|m| media.eq_ignore_ascii_case(m));
        let Some(specificity) = specificity.and_then(|s| u8::try_from(s).ok()) else {
            continue;
        };
        let refused = parts.any(|param| {
            param.split_once('=').is_some_and(|(name, q)| {
                name.trim().eq_ignore_ascii_case("q")
                    && q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
            })
        });
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, !refused));
        }
    }
    best.is_some_and(|(_, admitted)| admitted)
}

#[cfg(test)]
mod tests {
    use super::admits_event_stream;
    use actix_web::http::header::HeaderValue;

    #[test]
    fn accept_admits_event_streams_by_its_most_specific_range() {
        let admits = |v: &'static str| admits_event_stream(Some(&HeaderValue::from_static(v)));
        assert!(admits_event_stream(None));
        for yes in [
            "text/event-stream",
            "*/*",
            "text/*",
            "application/json, */*;q=0.1",
            "Text/Event-Stream; charset=utf-8",
            "text/html, text/event-stream;q=0.5",
        ] {
            assert!(admits(yes), "{yes}");
        }
        for no in [
            "application/json",
            "text/html",
            "",
            "text/event-stream;q=0",
            "text/event-stream; q=0.0, */*",
            "*/*;q=0",
        ] {
            assert!(!admits(no), "{no}");
        }
    }
}
