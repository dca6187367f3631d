//! `/v1/watch`: change streams over WebSocket, or Server-Sent Events when the client
//! asks for `text/event-stream`. Both carry the same JSON frames (see the watch
//! protocol in the README).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use kvstore_core::wire::{ErrorBody, Frame};
use kvstore_core::{Watch, WatchItem, WatchOptions};
use serde::Deserialize;
use tokio::time::{sleep_until, Instant};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Largest frame a watch client may send (it has nothing big to say).
const MAX_CLIENT_FRAME: usize = 16 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/watch", web::get().to(watch));
}

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
    /// `websocket` (with the other WebSocket handshake headers) for a WebSocket watch.
    #[param(rename = "Upgrade", nullable = false)]
    upgrade: Option<String>,
    /// SSE: the last `id:` seen; the stream resumes right after it.
    #[param(rename = "Last-Event-ID", nullable = false)]
    last_event_id: Option<u64>,
}

/// One frame ready to send.
struct Outgoing {
    /// SSE event name: the frame's `type`.
    kind: &'static str,
    /// SSE `id:` (the revision a client resumes after).
    id: Option<u64>,
    /// The JSON text.
    data: String,
    /// The stream ends after this frame.
    last: bool,
}

impl Outgoing {
    fn from_item(item: WatchItem) -> Outgoing {
        let (kind, id, frame) = match item {
            WatchItem::Event(event) => {
                metrics::counter!("kvstore_watch_events_sent_total").increment(1);
                let kind = match event.kind {
                    kvstore_core::wire::EventKind::Put => "put",
                    kvstore_core::wire::EventKind::Delete => "delete",
                };
                let data = serde_json::to_string(&*event);
                return Outgoing::json(kind, Some(event.revision), data);
            }
            WatchItem::Entry(entry) => ("entry", None, Frame::Entry(entry)),
            WatchItem::Synced(revision) => ("synced", Some(revision), Frame::Synced { revision }),
        };
        Outgoing::json(kind, id, serde_json::to_string(&frame))
    }

    fn progress(revision: u64) -> Outgoing {
        let frame = Frame::Progress { revision };
        Outgoing::json("progress", Some(revision), serde_json::to_string(&frame))
    }

    fn error(error: ApiError) -> Outgoing {
        let frame = Frame::Error(error.detail());
        let mut out = Outgoing::json("error", None, serde_json::to_string(&frame));
        out.last = true;
        out
    }

    fn json(kind: &'static str, id: Option<u64>, data: serde_json::Result<String>) -> Outgoing {
        match data {
            Ok(data) => Outgoing {
                kind,
                id,
                data,
                last: false,
            },
            Err(e) => Outgoing::error(ApiError::Internal(format!("encoding a frame: {e}"))),
        }
    }

    fn sse(&self) -> String {
        let mut out = String::with_capacity(self.data.len() + 32);
        if let Some(id) = self.id {
            out.push_str(&format!("id: {id}\n"));
        }
        out.push_str("event: ");
        out.push_str(self.kind);
        out.push_str("\ndata: ");
        out.push_str(&self.data);
        out.push_str("\n\n");
        out
    }
}

fn watch_error(e: kvstore_core::Error) -> ApiError {
    match e {
        kvstore_core::Error::Lagged { last } => {
            metrics::counter!("kvstore_watch_lagged_total").increment(1);
            ApiError::Lagged(last)
        }
        other => ApiError::from_store(other, ""),
    }
}

/// Whether `caller` may see `item`.
fn visible(item: &WatchItem, caller: &Caller) -> bool {
    match item {
        WatchItem::Event(event) => caller.can_read(&event.key),
        WatchItem::Entry(entry) => caller.can_read(&entry.key),
        WatchItem::Synced(_) => true,
    }
}

/// Waits for the next item of `watch` that `caller` may see, or for `deadline`
/// (then a progress frame).
async fn next_frame(watch: &mut Watch, deadline: Instant, caller: &Caller) -> Outgoing {
    loop {
        tokio::select! {
            item = watch.next() => match item {
                Ok(item) if visible(&item, caller) => return Outgoing::from_item(item),
                Ok(_) => continue,
                Err(e) => return Outgoing::error(watch_error(e)),
            },
            _ = sleep_until(deadline) => return Outgoing::progress(watch.position()),
        }
    }
}

/// Watch changes under a prefix: a WebSocket (`Upgrade: websocket`), or Server-Sent
/// Events with `Accept: text/event-stream`.
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
        (status = 400, description = "`invalid_request`: a bad query string or \
            `Last-Event-ID`, or neither a WebSocket handshake nor `Accept: text/event-stream`",
         body = ErrorBody),
        (status = 403, description = "`forbidden`: the token may read nothing under the prefix",
         body = ErrorBody),
        (status = 410, description = "`compacted` (Server-Sent Events): `start_revision` or \
            `Last-Event-ID` asks for history older than what is kept (`revision`: the oldest \
            kept). A WebSocket watch gets the `error` frame instead.", body = ErrorBody),
        (status = 429, description = "`too_many_watchers`: this client already holds \
            `--max-watchers-per-client` watch streams", body = ErrorBody),
    )
)]
async fn watch(
    req: HttpRequest,
    caller: Caller,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<WatchQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::InvalidRequest(format!("bad query string: {e}")))?
        .into_inner();
    caller.check_read_some(&query.prefix)?;
    let client = match &caller {
        Caller::Token(role) => format!("token {}", role.token_name),
        Caller::Open => req
            .peer_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.ip().to_string()),
    };
    let slot = state.watchers.acquire(client)?;
    let mut options = WatchOptions {
        prefix: query.prefix,
        start_revision: query.start_revision,
        initial: query.initial,
    };
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_upgrade {
        let (res, session, stream) = actix_ws::handle(&req, body)
            .map_err(|e| ApiError::InvalidRequest(format!("WebSocket handshake: {e}")))?;
        let stream = stream.max_frame_size(MAX_CLIENT_FRAME);
        actix_web::rt::spawn(async move {
            websocket(session, stream, state.into_inner(), options, caller).await;
            drop(slot);
        });
        return Ok(res);
    }
    let accepts_sse = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !accepts_sse {
        return Err(ApiError::InvalidRequest(
            "a watch is a WebSocket (Upgrade: websocket) or Server-Sent Events \
             (Accept: text/event-stream)"
                .into(),
        ));
    }
    if let Some(last) = req.headers().get("last-event-id") {
        let last: u64 = last
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ApiError::InvalidRequest("Last-Event-ID must be a revision".into()))?;
        // The client already has the state up to `last`: resume right after it.
        options.start_revision = Some(last + 1);
        options.initial = false;
    }
    // Opened before answering, so that a watch the store refuses (its history is
    // compacted) gets its HTTP status, 410, rather than a 200 and an error event.
    let initial = options.initial;
    let watch = state.store.watch(options).await.map_err(watch_error)?;
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(sse(state.into_inner(), watch, initial, caller, slot)))
}

fn sse(
    state: std::sync::Arc<AppState>,
    watch: Watch,
    initial: bool,
    caller: Caller,
    slot: crate::limits::WatcherSlot,
) -> impl futures_util::Stream<Item = Result<web::Bytes, ApiError>> {
    enum Phase {
        Opening(Box<Watch>, bool),
        Open(Box<Watch>),
        Done,
    }
    let progress = state.timings.progress;
    // The stream holds its gauge and its watcher slot: dropping the stream (the
    // client left) releases both.
    let held = std::sync::Arc::new((crate::metrics::WatcherGauge::open(), slot));
    let opening = Phase::Opening(Box::new(watch), initial);
    futures_util::stream::unfold(opening, move |phase| {
        let _held = held.clone();
        let state = state.clone();
        let caller = caller.clone();
        async move {
            let mut watch = match phase {
                Phase::Done => return None,
                Phase::Open(watch) => watch,
                Phase::Opening(watch, false) => {
                    let out = Outgoing::progress(watch.position());
                    return Some((Ok(web::Bytes::from(out.sse())), Phase::Open(watch)));
                }
                Phase::Opening(watch, true) => {
                    return Some((Ok(web::Bytes::new()), Phase::Open(watch)));
                }
            };
            let mut shutdown = state.shutdown.clone();
            let out = tokio::select! {
                out = next_frame(&mut watch, Instant::now() + progress, &caller) => out,
                _ = shutdown.wait_for(|stop| *stop) => Outgoing::error(ApiError::ShuttingDown),
            };
            let next = if out.last {
                Phase::Done
            } else {
                Phase::Open(watch)
            };
            Some((Ok(web::Bytes::from(out.sse())), next))
        }
    })
}

async fn websocket(
    mut session: actix_ws::Session,
    mut stream: actix_ws::MessageStream,
    state: std::sync::Arc<AppState>,
    options: WatchOptions,
    caller: Caller,
) {
    let _gauge = crate::metrics::WatcherGauge::open();
    let initial = options.initial;
    let mut watch = match state.store.watch(options).await {
        Ok(watch) => watch,
        Err(e) => {
            let out = Outgoing::error(watch_error(e));
            let _ = session.text(out.data).await;
            let _ = session.close(Some(CloseCode::Policy.into())).await;
            return;
        }
    };
    // Tell the client where the stream starts, so it can resume even before the
    // first change (the initial state ends with its own `synced` marker instead).
    if !initial
        && session
            .text(Outgoing::progress(watch.position()).data)
            .await
            .is_err()
    {
        return;
    }
    let timings = state.timings;
    let mut shutdown = state.shutdown.clone();
    let mut stopping = state.shutdown.clone();
    let mut ping = tokio::time::interval(timings.ping);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let mut deadline = Instant::now() + timings.progress;
    let reason = loop {
        tokio::select! {
            out = next_frame(&mut watch, deadline, &caller) => {
                // A peer that stops reading leaves this send pending once the
                // buffers are full: bound it by the peer timeout, and let shutdown
                // cut it short, so a stuck peer is dropped like a silent one.
                let sent = tokio::select! {
                    sent = tokio::time::timeout(timings.peer_timeout, session.text(out.data)) => sent,
                    _ = stopping.wait_for(|stop| *stop) => break CloseReason {
                        code: CloseCode::Away,
                        description: Some("server shutting down".into()),
                    },
                };
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_closed)) => return,
                    Err(_elapsed) => {
                        log::debug!("dropping a silent watch client (not reading)");
                        return;
                    }
                }
                deadline = Instant::now() + timings.progress;
                if out.last {
                    break CloseReason::from(CloseCode::Policy);
                }
            }
            message = stream.recv() => match message {
                Some(Ok(Message::Ping(bytes))) => {
                    heard = Instant::now();
                    // Bounded like every send: a peer that pings but does not read
                    // would otherwise hold this loop for ever.
                    match tokio::time::timeout(timings.peer_timeout, session.pong(&bytes)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_closed)) => return,
                        Err(_elapsed) => {
                            log::debug!("dropping a silent watch client (not reading)");
                            return;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None => break CloseCode::Normal.into(),
                Some(Ok(_)) => heard = Instant::now(),
                Some(Err(e)) => {
                    log::debug!("watch client sent a bad frame: {e}");
                    break CloseReason {
                        code: CloseCode::Protocol,
                        description: Some(e.to_string()),
                    };
                }
            },
            _ = ping.tick() => {
                if heard.elapsed() > timings.peer_timeout {
                    log::debug!("dropping a silent watch client");
                    break CloseReason {
                        code: CloseCode::Away,
                        description: Some("no pong".into()),
                    };
                }
                match tokio::time::timeout(timings.peer_timeout, session.ping(b"")).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_closed)) => return,
                    Err(_elapsed) => {
                        log::debug!("dropping a silent watch client (not reading)");
                        return;
                    }
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => {
                break CloseReason {
                    code: CloseCode::Away,
                    description: Some("server shutting down".into()),
                };
            }
        }
    };
    // The close frame may not get through to a peer that stopped reading.
    let _ = tokio::time::timeout(timings.peer_timeout, session.close(Some(reason))).await;
}
