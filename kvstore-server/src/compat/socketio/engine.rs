//! Engine.IO v4: packets, polling payloads, the handshake and the error answers
//! (framing in the module comment of [`super`]).

use serde::Serialize;

/// Separates the packets of one HTTP long-polling payload (ASCII record separator).
pub const SEPARATOR: char = '\x1e';

/// A packet from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// `1`: the client closes the session.
    Close,
    /// `2` and its data (`2probe` opens an upgrade).
    Ping(String),
    /// `3` and its data (the answer to our ping).
    Pong(String),
    /// `4` and its text: a Socket.IO packet.
    Message(String),
    /// A binary message (`b` + base64 on polling, a binary WebSocket frame):
    /// Socket.IO attachments, which nothing here uses.
    Binary,
    /// `5`: the WebSocket upgrade is complete.
    Upgrade,
    /// `6`.
    Noop,
}

/// A packet that is not Engine.IO v4.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an Engine.IO packet: {0}")]
pub struct Malformed(pub String);

impl Packet {
    /// Decodes one text packet from the client.
    pub fn decode(text: &str) -> Result<Packet, Malformed> {
        let mut chars = text.chars();
        let kind = chars.next();
        let data = chars.as_str();
        let bare = |packet: Packet| {
            if data.is_empty() {
                Ok(packet)
            } else {
                Err(Malformed(format!("packet {text:.40?} carries data")))
            }
        };
        match kind {
            Some('1') => bare(Packet::Close),
            Some('2') => Ok(Packet::Ping(data.to_string())),
            Some('3') => Ok(Packet::Pong(data.to_string())),
            Some('4') => Ok(Packet::Message(data.to_string())),
            Some('5') => bare(Packet::Upgrade),
            Some('6') => bare(Packet::Noop),
            Some('b') => Ok(Packet::Binary),
            Some(_) => Err(Malformed(format!("unknown packet type in {text:.40?}"))),
            None => Err(Malformed("an empty packet".into())),
        }
    }

    /// Decodes an HTTP long-polling payload: packets separated by [`SEPARATOR`].
    pub fn decode_payload(payload: &str) -> Result<Vec<Packet>, Malformed> {
        payload.split(SEPARATOR).map(Packet::decode).collect()
    }
}

/// The server's packets, as text.
pub mod out {
    /// `1`: the session is closed.
    pub const CLOSE: &str = "1";
    /// `2`: a ping the client must answer with a pong.
    pub const PING: &str = "2";
    /// `3probe`: the answer to an upgrade's probe.
    pub const PROBE_PONG: &str = "3probe";
    /// `2probe`: an upgrade's probe, from the client.
    pub const PROBE_PING: &str = "2probe";
    /// `6`: ends a pending poll during an upgrade.
    pub const NOOP: &str = "6";

    /// `4` and a Socket.IO packet.
    pub fn message(text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 1);
        out.push('4');
        out.push_str(text);
        out
    }
}

/// The `0` (open) packet's data: the session and its timings.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake<'a> {
    /// The session id.
    pub sid: &'a str,
    /// Transports the client may upgrade to.
    pub upgrades: &'a [&'a str],
    /// Milliseconds between the server's pings.
    pub ping_interval: u128,
    /// Milliseconds the client has to answer a ping.
    pub ping_timeout: u128,
    /// Most bytes the client may send in one payload or WebSocket message.
    pub max_payload: usize,
}

impl Handshake<'_> {
    /// The `0{...}` packet.
    pub fn packet(&self) -> String {
        // A struct of strings and numbers always serializes.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("0{json}")
    }
}

/// The errors Engine.IO answers a request with (HTTP 400 and
/// `{"code": N, "message": "..."}`), by the numbers of the reference server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineError {
    /// 0: no `transport` or not `polling`/`websocket`.
    UnknownTransport,
    /// 1: no session with that `sid`.
    UnknownSid,
    /// 2: a new session asked for with another method than GET.
    BadHandshakeMethod,
    /// 3: anything else the protocol does not allow.
    BadRequest,
    /// 5: `EIO` is not 4.
    UnsupportedProtocolVersion,
}

impl EngineError {
    /// The protocol's number.
    pub fn code(self) -> u8 {
        match self {
            EngineError::UnknownTransport => 0,
            EngineError::UnknownSid => 1,
            EngineError::BadHandshakeMethod => 2,
            EngineError::BadRequest => 3,
            EngineError::UnsupportedProtocolVersion => 5,
        }
    }

    /// The protocol's message.
    pub fn message(self) -> &'static str {
        match self {
            EngineError::UnknownTransport => "Transport unknown",
            EngineError::UnknownSid => "Session ID unknown",
            EngineError::BadHandshakeMethod => "Bad handshake method",
            EngineError::BadRequest => "Bad request",
            EngineError::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_decode_by_their_type_digit() {
        assert_eq!(Packet::decode("3"), Ok(Packet::Pong(String::new())));
        assert_eq!(Packet::decode("2probe"), Ok(Packet::Ping("probe".into())));
        assert_eq!(Packet::decode("40{}"), Ok(Packet::Message("0{}".into())));
        assert_eq!(Packet::decode("5"), Ok(Packet::Upgrade));
        assert_eq!(Packet::decode("bAAEC"), Ok(Packet::Binary));
        for garbage in ["", "0", "7", "x", "1x", "5probe", "é"] {
            assert!(Packet::decode(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn payloads_split_on_the_record_separator() {
        assert_eq!(
            Packet::decode_payload("3\u{1e}40\u{1e}6"),
            Ok(vec![
                Packet::Pong(String::new()),
                Packet::Message("0".into()),
                Packet::Noop
            ])
        );
        assert!(Packet::decode_payload("").is_err());
        assert!(Packet::decode_payload("3\u{1e}").is_err());
    }

    #[test]
    fn the_open_packet_names_the_timings_in_milliseconds() {
        let open = Handshake {
            sid: "abc",
            upgrades: &["websocket"],
            ping_interval: 25000,
            ping_timeout: 20000,
            max_payload: 65536,
        };
        assert_eq!(
            open.packet(),
            r#"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":65536}"#
        );
    }
}
