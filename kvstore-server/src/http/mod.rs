//! The HTTP plumbing every surface shares: bodies read with a limit ([`body`]),
//! bounds on headers and watch streams ([`limits`]), CORS ([`cors`]), the one
//! error answer ([`error`]), the state every handler shares ([`state`]), TLS
//! ([`tls`]), and the metrics middleware with `/metrics` ([`metrics`]).

pub(crate) mod body;
pub(crate) mod cors;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod state;
pub mod tls;
