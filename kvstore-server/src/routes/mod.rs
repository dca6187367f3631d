//! The HTTP routes, one module per resource.

pub mod health;
pub mod kv;
pub mod legacy;
pub mod snapshot;
pub mod watch;
