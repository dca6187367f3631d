//! The HTTP long-polling transport: a `GET` takes what the session has queued, a
//! `POST` brings the client's packets.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};

use super::engine::{self, Packet};
use super::session::{self, End, Incoming, Session, Transport};
use super::{HttpError, MAX_PAYLOAD};
use crate::http::body::read_limited;

/// A poll is answered with what is queued, up to about this many bytes (one packet
/// more at most); the rest waits for the next poll.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// A payload as Engine.IO clients expect it.
pub fn text(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=UTF-8")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .body(body)
}

/// Waits until the session has packets (or upgrades, or ends), then answers all of
/// them at once.
pub async fn poll(session: Arc<Session>) -> Result<HttpResponse, HttpError> {
    if *session.transport.borrow() == Transport::WebSocket {
        return Err(HttpError::bad_request("the session moved to WebSocket"));
    }
    let Ok(mut outbox) = session.outbox.try_lock() else {
        session.report(End::Malformed).await;
        return Err(HttpError::bad_request(
            "a poll is already pending on this session",
        ));
    };
    let mut transport = session.transport.subscribe();
    let mut ended = session.ended.subscribe();
    let mut packets = Vec::new();
    tokio::select! {
        Some(out) = outbox.recv() => packets.push(out.encode()),
        // The probe was answered: return, so that the client pauses polling.
        _ = transport.wait_for(|t| matches!(t, Transport::Upgrading | Transport::WebSocket)) => {}
        _ = session::ended(&mut ended) => {}
    }
    let mut bytes: usize = packets.iter().map(String::len).sum();
    while bytes < MAX_ANSWER_BYTES {
        match outbox.try_recv() {
            Ok(out) => {
                let packet = out.encode();
                bytes += packet.len() + 1;
                packets.push(packet);
            }
            Err(_) => break,
        }
    }
    if outbox.is_closed() && outbox.is_empty() {
        packets.push(engine::out::CLOSE.into());
    }
    if packets.is_empty() {
        packets.push(engine::out::NOOP.into());
    }
    Ok(text(packets.join(&engine::SEPARATOR.to_string())))
}

/// Hands the packets of a `POST` to the session.
pub async fn post(
    session: Arc<Session>,
    req: &HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, HttpError> {
    if *session.transport.borrow() == Transport::WebSocket {
        return Err(HttpError::bad_request("the session moved to WebSocket"));
    }
    let body = read_limited(req, body, MAX_PAYLOAD).await?;
    let packets = std::str::from_utf8(&body)
        .map_err(|_| engine::Malformed("a payload that is not UTF-8".into()))
        .and_then(Packet::decode_payload);
    let packets = match packets {
        Ok(packets) => packets,
        Err(e) => {
            session.report(End::Malformed).await;
            return Err(HttpError::bad_request(e.to_string()));
        }
    };
    for packet in packets {
        if session.inbox.send(Incoming::Packet(packet)).await.is_err() {
            return Err(HttpError::Engine(
                engine::EngineError::UnknownSid,
                "the session ended".into(),
            ));
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=UTF-8")
        .body("ok"))
}
