//! What the service it replaced offered, kept for its clients: the legacy `/kv`
//! API ([`legacy`], answering in the old service's JSON, `pyjson`) and the
//! Socket.IO feed of the old `kv watch` ([`socketio`]).

pub mod legacy;
mod pyjson;
pub mod socketio;

use actix_web::web;

/// Mounts the compatibility routes outside the OpenAPI document (the legacy `/kv`
/// is in it, mounted with the API's routes).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(socketio::configure);
}
