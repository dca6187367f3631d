//! The WebSocket transport: one Engine.IO packet per text frame, after the probe
//! of an upgrade or the open packet of a WebSocket-only session.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, ProtocolError};

use super::engine::{self, Packet};
use super::session::{self, End, Incoming, Session, Transport};
use super::{HttpError, MAX_PAYLOAD};
use crate::http::state::WatchTimings;

/// The handshake's answer and the two halves of the connection.
pub fn accept(
    req: &HttpRequest,
    body: web::Payload,
) -> Result<(HttpResponse, actix_ws::Session, AggregatedMessageStream), HttpError> {
    let (res, ws, stream) = actix_ws::handle(req, body)
        .map_err(|e| HttpError::bad_request(format!("WebSocket handshake: {e}")))?;
    let stream = stream
        .max_frame_size(MAX_PAYLOAD)
        .aggregate_continuations()
        .max_continuation_size(MAX_PAYLOAD);
    Ok((res, ws, stream))
}

/// Carries `session` until it ends: first the open packet (`open`), or the probe of
/// an upgrade from polling (no `open`).
pub async fn run(
    session: Arc<Session>,
    mut ws: actix_ws::Session,
    mut stream: AggregatedMessageStream,
    open: Option<String>,
    timings: WatchTimings,
) {
    let opened = match open {
        Some(packet) => ws.text(packet).await.is_ok(),
        None => {
            let upgraded = tokio::time::timeout(
                timings.peer_timeout,
                upgrade(&session, &mut ws, &mut stream),
            )
            .await
            .unwrap_or(false);
            if !upgraded {
                // Polling goes on.
                session.transport.send_if_modified(|t| {
                    let probing = matches!(t, Transport::Probing | Transport::Upgrading);
                    if probing {
                        *t = Transport::Polling;
                    }
                    probing
                });
                log::debug!("Socket.IO session {}: upgrade failed", session.tag());
                let _ = ws.close(None).await;
                return;
            }
            log::debug!("Socket.IO session {} upgraded to WebSocket", session.tag());
            true
        }
    };
    if !opened {
        session.report(End::ClientClosed).await;
        return;
    }
    carry(&session, &mut ws, &mut stream, timings.peer_timeout).await;
    // The session task says why it ended (it has been told, if the cause was here).
    let mut ended = session.ended.subscribe();
    let end = tokio::time::timeout(timings.peer_timeout, session::ended(&mut ended))
        .await
        .ok()
        .flatten();
    let code = match end {
        Some(End::ShuttingDown | End::PingTimeout) => CloseCode::Away,
        Some(End::Malformed) => CloseCode::Protocol,
        Some(End::TooLarge) => CloseCode::Size,
        Some(End::Slow | End::Lagged | End::NoConnect) => CloseCode::Policy,
        Some(End::ClientClosed) | None => CloseCode::Normal,
    };
    // The close frame may not get through to a peer that stopped reading.
    let _ = tokio::time::timeout(timings.peer_timeout, ws.close(Some(code.into()))).await;
}

/// The client's next text frame (answering WebSocket pings meanwhile), or `None`
/// once it closes or breaks the protocol.
async fn next_text(
    ws: &mut actix_ws::Session,
    stream: &mut AggregatedMessageStream,
) -> Option<String> {
    loop {
        match stream.recv().await? {
            Ok(AggregatedMessage::Text(text)) => return Some(text.to_string()),
            Ok(AggregatedMessage::Ping(bytes)) => ws.pong(&bytes).await.ok()?,
            Ok(AggregatedMessage::Pong(_) | AggregatedMessage::Binary(_)) => {}
            Ok(AggregatedMessage::Close(_)) | Err(_) => return None,
        }
    }
}

/// The upgrade from polling: `2probe` → `3probe`, then `5`.
async fn upgrade(
    session: &Session,
    ws: &mut actix_ws::Session,
    stream: &mut AggregatedMessageStream,
) -> bool {
    if next_text(ws, stream).await.as_deref() != Some(engine::out::PROBE_PING) {
        return false;
    }
    if ws.text(engine::out::PROBE_PONG).await.is_err() {
        return false;
    }
    // A pending poll now returns, and the client stops polling.
    session.transport.send_replace(Transport::Upgrading);
    if next_text(ws, stream)
        .await
        .and_then(|t| Packet::decode(&t).ok())
        != Some(Packet::Upgrade)
    {
        return false;
    }
    session.transport.send_replace(Transport::WebSocket);
    true
}

/// Sends the session's packets and hands it the client's, until either side ends.
async fn carry(
    session: &Session,
    ws: &mut actix_ws::Session,
    stream: &mut AggregatedMessageStream,
    send_timeout: Duration,
) {
    let mut ended = session.ended.subscribe();
    // A poll still pending from before the upgrade returns at once.
    let mut outbox = tokio::select! {
        outbox = session.outbox.lock() => outbox,
        _ = session::ended(&mut ended) => return,
    };
    loop {
        tokio::select! {
            out = outbox.recv() => {
                let Some(out) = out else { return };
                // A peer that stops reading leaves the send pending once the buffers
                // are full: bound it, and let the session's end cut it short.
                let sent = tokio::select! {
                    sent = tokio::time::timeout(send_timeout, ws.text(out.encode())) => sent,
                    _ = session::ended(&mut ended) => return,
                };
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_closed)) => return session.report(End::ClientClosed).await,
                    Err(_elapsed) => return session.report(End::Slow).await,
                }
            }
            message = stream.recv() => {
                let packet = match message {
                    Some(Ok(AggregatedMessage::Text(text))) => Packet::decode(&text),
                    Some(Ok(AggregatedMessage::Binary(_))) => Ok(Packet::Binary),
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        if ws.pong(&bytes).await.is_err() {
                            return session.report(End::ClientClosed).await;
                        }
                        continue;
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => continue,
                    Some(Ok(AggregatedMessage::Close(_)) | Err(ProtocolError::Io(_))) | None => {
                        return session.report(End::ClientClosed).await
                    }
                    Some(Err(ProtocolError::Overflow)) => return session.report(End::TooLarge).await,
                    Some(Err(e)) => {
                        log::debug!("Socket.IO client sent a bad frame: {e}");
                        return session.report(End::Malformed).await;
                    }
                };
                match packet {
                    Ok(packet) => {
                        if session.inbox.send(Incoming::Packet(packet)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        log::debug!("{e}");
                        return session.report(End::Malformed).await;
                    }
                }
            }
            _ = session::ended(&mut ended) => return,
        }
    }
}
