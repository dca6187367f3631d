//! `/socket.io/`: the Socket.IO change feed of the service kvstore replaces, for its
//! `kv watch` (python-socketio 5) and any other Socket.IO v5 client. On joining, a
//! client gets a `connected` event; then a `key_update` for every put and a
//! `key_delete` for every delete it may read (see [`feed`] for the texts).
//!
//! No crate serves Socket.IO from actix-web (socketioxide is a tower layer for
//! hyper-based servers), so this is a small server of its own: only what a
//! subscriber needs, no rooms, no acknowledgements, no events from clients.
//!
//! # Engine.IO v4 (the transport)
//!
//! Every request names the protocol and transport in its query:
//! `/socket.io/?EIO=4&transport=polling|websocket[&sid=SID]` (other parameters, such
//! as the cache-busting `t`, are ignored). A packet is one text: a type digit, then
//! its data:
//!
//! | packet | meaning |
//! | --- | --- |
//! | `0{"sid":..,"upgrades":[..],"pingInterval":ms,"pingTimeout":ms,"maxPayload":bytes}` | open (server) |
//! | `1` | close |
//! | `2` / `3` | ping / pong (`2probe` / `3probe` during an upgrade) |
//! | `4<text>` | message: here always a Socket.IO packet |
//! | `5` | upgrade complete (client) |
//! | `6` | noop (server: ends a pending poll during an upgrade) |
//! | `b<base64>` | binary message on polling (a binary frame on WebSocket); ignored |
//!
//! - Long-polling: `GET` without `sid` opens a session and answers the open packet.
//!   `GET` with `sid` waits until the server has packets and answers all of them,
//!   separated by `\x1e` (`text/plain`). `POST` with `sid` carries the client's
//!   packets the same way (at most `maxPayload` bytes) and is answered `ok`.
//! - Upgrade: the client opens `transport=websocket&sid=SID`, sends `2probe`, gets
//!   `3probe`; a pending poll is answered `6`; the client sends `5` and from then on
//!   everything goes over the WebSocket, one packet per text frame.
//! - WebSocket only: `transport=websocket` without `sid` opens a session whose first
//!   frame is the open packet, with no upgrades.
//! - Heartbeat: the server sends `2` every pingInterval (`--ping-interval`); a client
//!   that does not answer `3` within pingTimeout (`--peer-timeout`) is dropped.
//! - Errors: HTTP 400 with `{"code": N, "message": M}`: 0 `Transport unknown`, 1
//!   `Session ID unknown`, 2 `Bad handshake method`, 3 `Bad request`, 5 `Unsupported
//!   protocol version`; the body also carries our usual `{"error": {...}}` object.
//!   A payload over `maxPayload` gets 413 `value_too_large`. Packets that are not
//!   Engine.IO (or Socket.IO) close the session; so do two polls at once.
//!
//! # Socket.IO v5 (in Engine.IO messages)
//!
//! `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`, the namespace left out
//! for the default one, `/`, the only one served:
//!
//! | packet | meaning |
//! | --- | --- |
//! | `0{"token":..}` (client) | join; the optional object is the client's `auth` |
//! | `0{"sid":..}` (server) | joined |
//! | `4{"message":..,"data":{"code":..,"message":..}}` | refused (CONNECT_ERROR), `data` our error detail |
//! | `1` | leave |
//! | `2["name",data]` | an event (the server's `connected`, `key_update`, `key_delete`) |
//! | `3`, `5`, `6` | ack, binary event, binary ack: accepted, ignored |
//!
//! A client joins with a token in its `auth` (`{"token": T}`), else the
//! `Authorization: Bearer T` header of the request that opened the session. An
//! unknown token, a token that may read nothing, or one already holding
//! `--max-watchers-per-client` watches is refused with CONNECT_ERROR. Keys the token
//! may not read are never sent. A client that lets [`session::OUTBOX`] packets pile
//! up, or falls behind the store's event buffer, is dropped (like a slow WebSocket
//! watcher); its Socket.IO client reconnects, and what changed meanwhile is not
//! replayed.

mod engine;
mod feed;
mod polling;
mod protocol;
mod session;
mod websocket;

use std::sync::Arc;

use actix_web::http::header::AUTHORIZATION;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use engine::EngineError;
use session::Transport;

/// Most bytes a client may send in one polling payload or WebSocket message (it
/// has nothing big to say: a CONNECT with a token).
const MAX_PAYLOAD: usize = 64 * 1024;

/// Mounts `/socket.io/`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/socket.io/")
            .route(web::get().to(get))
            .route(web::post().to(post))
            .default_service(web::to(|req: HttpRequest| async move {
                Err::<HttpResponse, _>(ApiError::method_not_allowed(req.method(), "GET, POST"))
            })),
    );
}

/// Who opened a session, for the Socket.IO CONNECT to decide on.
pub struct Handshake {
    /// The client's address (its watch limit without an access file).
    address: String,
    /// The caller its `Authorization` header names, or why it names none; `None`
    /// without the header.
    header_caller: Option<Result<Caller, ApiError>>,
}

impl Handshake {
    fn of(req: &HttpRequest) -> Handshake {
        let header_caller = req
            .headers()
            .contains_key(AUTHORIZATION)
            .then(|| Caller::extract(req).into_inner());
        Handshake {
            address: req
                .peer_addr()
                .map_or_else(|| "unknown".to_string(), |a| a.ip().to_string()),
            header_caller,
        }
    }
}

/// A refused request: an Engine.IO error, or one of the API's.
#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error("{}: {}", .0.message(), .1)]
    Engine(EngineError, String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl HttpError {
    fn bad_request(why: impl Into<String>) -> HttpError {
        HttpError::Engine(EngineError::BadRequest, why.into())
    }
}

impl ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        match self {
            HttpError::Engine(..) => StatusCode::BAD_REQUEST,
            HttpError::Api(e) => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            HttpError::Engine(kind, _) => HttpResponse::BadRequest().json(serde_json::json!({
                "code": kind.code(),
                "message": kind.message(),
                "error": ApiError::invalid_request(self.to_string()).detail(),
            })),
            HttpError::Api(e) => e.error_response(),
        }
    }
}

#[derive(Deserialize)]
struct Query {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

/// The transport and session a request names.
fn parse(req: &HttpRequest) -> Result<(Transport, Option<String>), HttpError> {
    let query = web::Query::<Query>::from_query(req.query_string())
        .map_err(|e| HttpError::bad_request(format!("bad query string: {e}")))?
        .into_inner();
    if query.eio.as_deref() != Some("4") {
        return Err(HttpError::Engine(
            EngineError::UnsupportedProtocolVersion,
            "only Engine.IO 4 (EIO=4) is served".into(),
        ));
    }
    let transport = match query.transport.as_deref() {
        Some("polling") => Transport::Polling,
        Some("websocket") => Transport::WebSocket,
        _ => {
            return Err(HttpError::Engine(
                EngineError::UnknownTransport,
                "transport must be polling or websocket".into(),
            ))
        }
    };
    Ok((transport, query.sid))
}

fn find(sid: &str) -> Result<Arc<session::Session>, HttpError> {
    session::find(sid).ok_or_else(|| {
        HttpError::Engine(
            EngineError::UnknownSid,
            "no such session (it ended, or never was)".into(),
        )
    })
}

/// A new session id: 128 random bits, as it is all a client shows to read a session.
fn random_id() -> Result<String, HttpError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| ApiError::internal("no random numbers for a session id"))?;
    Ok(hex::encode(bytes))
}

/// Opens a session carried by `transport`; returns it and its open packet.
fn open(
    req: &HttpRequest,
    state: web::Data<AppState>,
    transport: Transport,
) -> Result<(Arc<session::Session>, String), HttpError> {
    let sid = random_id()?;
    let upgrades: &[&str] = match transport {
        Transport::Polling => &["websocket"],
        _ => &[],
    };
    let packet = engine::Handshake {
        sid: &sid,
        upgrades,
        ping_interval: state.timings.ping.as_millis(),
        ping_timeout: state.timings.peer_timeout.as_millis(),
        max_payload: MAX_PAYLOAD,
    }
    .packet();
    let session = session::start(
        state.into_inner(),
        Handshake::of(req),
        sid,
        random_id()?,
        transport,
    );
    Ok((session, packet))
}

/// Engine.IO requests with GET: a new session, a poll, or a WebSocket.
async fn get(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, HttpError> {
    let (transport, sid) = parse(&req)?;
    match (transport, sid) {
        (Transport::Polling, None) => {
            let (_, packet) = open(&req, state, Transport::Polling)?;
            Ok(polling::text(packet))
        }
        (Transport::Polling, Some(sid)) => polling::poll(find(&sid)?).await,
        (_, None) => {
            let (res, ws, stream) = websocket::accept(&req, body)?;
            let timings = state.timings;
            let (session, packet) = open(&req, state, Transport::WebSocket)?;
            actix_web::rt::spawn(websocket::run(session, ws, stream, Some(packet), timings));
            Ok(res)
        }
        (_, Some(sid)) => {
            let session = find(&sid)?;
            let (res, ws, stream) = websocket::accept(&req, body)?;
            let probing = session.transport.send_if_modified(|t| {
                let polling = *t == Transport::Polling;
                if polling {
                    *t = Transport::Probing;
                }
                polling
            });
            if !probing {
                return Err(HttpError::bad_request(
                    "the session is already upgrading or upgraded",
                ));
            }
            actix_web::rt::spawn(websocket::run(session, ws, stream, None, state.timings));
            Ok(res)
        }
    }
}

/// Engine.IO requests with POST: packets from a polling client.
async fn post(req: HttpRequest, body: web::Payload) -> Result<HttpResponse, HttpError> {
    match parse(&req)? {
        (Transport::Polling, Some(sid)) => polling::post(find(&sid)?, &req, body).await,
        (_, None) => Err(HttpError::Engine(
            EngineError::BadHandshakeMethod,
            "a session is opened with GET".into(),
        )),
        (_, Some(_)) => Err(HttpError::bad_request("a WebSocket session takes no POST")),
    }
}
