//! Watch streams: one pump that every transport shares ([`pump`]), and the
//! transports, which differ only in framing and keep-alive: WebSocket
//! ([`websocket`]) and Server-Sent Events ([`sse`]).

pub mod pump;
pub mod sse;
pub mod websocket;

pub use pump::{Frame, Pump};
