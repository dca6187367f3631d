//! The HTTP routes, one module per resource.

pub mod health;
pub mod kv;
pub mod legacy;
pub mod snapshot;
pub mod watch;

use actix_web::{guard, web, Route};

/// A route for GET that answers HEAD the same way, without the body (actix leaves
/// the body of an answer to HEAD unsent), as caches and tools expect.
pub fn get_or_head() -> Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}
