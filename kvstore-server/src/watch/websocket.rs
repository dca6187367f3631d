//! WebSocket: each frame a text frame. The server pings every `--ping-interval`
//! and drops a peer silent for `--peer-timeout`, or one that stops reading (a send
//! that stays pending that long); it ignores what clients send apart from pings,
//! pongs and close frames.

use actix_ws::{CloseCode, CloseReason, Message};
use bytestring::ByteString;
use kvstore_core::ErrorCode;
use tokio::time::Instant;

use super::Pump;
use crate::http::state::{stopping, WatchTimings};

/// Serves `pump` on an upgraded connection until the watch ends or the peer goes.
pub async fn serve(
    mut session: actix_ws::Session,
    mut stream: actix_ws::MessageStream,
    mut pump: Pump,
    timings: WatchTimings,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut ping = tokio::time::interval(timings.ping);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let away = |why: &str| CloseReason {
        code: CloseCode::Away,
        description: Some(why.into()),
    };
    let reason = loop {
        tokio::select! {
            frame = pump.next() => {
                let Some(frame) = frame else {
                    break CloseCode::Normal.into();
                };
                let text = match ByteString::try_from(frame.json.clone()) {
                    Ok(text) => text,
                    Err(e) => {
                        log::error!("a watch frame is not UTF-8: {e}");
                        break CloseCode::Error.into();
                    }
                };
                // A peer that stops reading leaves this send pending once the
                // buffers are full: bound it by the peer timeout, and let shutdown
                // cut it short, so a stuck peer is dropped like a silent one.
                let sent = tokio::select! {
                    sent = bounded(timings.peer_timeout, session.text(text)) => sent,
                    () = stopping(&mut shutdown) => break away("server shutting down"),
                };
                if !sent {
                    return;
                }
                match frame.error {
                    None => {}
                    Some(ErrorCode::ShuttingDown) => break away("server shutting down"),
                    Some(_) => break CloseCode::Policy.into(),
                }
            }
            message = stream.recv() => match message {
                Some(Ok(Message::Ping(bytes))) => {
                    heard = Instant::now();
                    if !bounded(timings.peer_timeout, session.pong(&bytes)).await {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    break CloseCode::Normal.into();
                }
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
                    break away("no pong");
                }
                if !bounded(timings.peer_timeout, session.ping(b"")).await {
                    return;
                }
            }
        }
    };
    // The close frame may not get through to a peer that stopped reading.
    let _ = tokio::time::timeout(timings.peer_timeout, session.close(Some(reason))).await;
}

/// Whether a send to the peer went through within `timeout`. Every send (text,
/// ping, pong) shares one bounded channel, so a peer that stops reading leaves any
/// of them pending once the buffers are full: it is dropped like a silent one.
async fn bounded<E>(
    timeout: std::time::Duration,
    send: impl std::future::Future<Output = Result<(), E>>,
) -> bool {
    match tokio::time::timeout(timeout, send).await {
        Ok(Ok(())) => true,
        Ok(Err(_closed)) => false,
        Err(_elapsed) => {
            log::debug!("dropping a silent watch client (not reading)");
            false
        }
    }
}
