//! The HTTP routes, one module per resource, and what they share: HEAD beside GET,
//! routing on the path as sent ([`match_as_sent`]), and the answer to a request no
//! route takes ([`methods`]).

pub mod health;
pub mod history;
pub mod kv;
pub mod leases;
pub mod methods;
pub mod params;
pub mod snapshot;
pub mod txn;
pub mod watch;

use std::sync::OnceLock;

use actix_router::Quoter;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{guard, web, Route};

/// A route for GET that answers HEAD the same way, without the body (actix leaves
/// the body of an answer to HEAD unsent), as caches and tools expect.
/// The key named by the request path after `prefix`, percent-decoded once (`a%2Fb`
/// is `a/b`) and checked.
pub(crate) fn key_in_path(
    req: &actix_web::HttpRequest,
    prefix: &str,
) -> Result<String, crate::error::ApiError> {
    use crate::error::ApiError;
    let raw = req
        .uri()
        .path()
        .strip_prefix(prefix)
        .ok_or_else(|| ApiError::invalid_key("the key is missing from the path"))?;
    let key = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::invalid_key("the key is not valid UTF-8 once percent-decoded"))?
        .into_owned();
    kvstore_core::key::validate_key(&key).map_err(|e| ApiError::invalid_key(e.to_string()))?;
    Ok(key)
}

pub fn get_or_head() -> Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// Middleware: routes match the path as sent. actix matches routes against the
/// path with its percent-escapes decoded (all but `%2F`, `%25` and `%2B`), so
/// `/v1/%6Bv/x` would reach the key route, which reads its key from the path as
/// sent and finds none there. A route's own name must be spelled as is: that path
/// is no route of ours (`404 not_found`). Escapes inside a key or a path parameter
/// are decoded as before (the key route decodes its key; actix's `Path` extractor
/// decodes parameters).
pub async fn match_as_sent(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if req.path().contains('%') {
        // Decodes nothing actix would match differently: every ASCII byte is kept
        // escaped (a `Quoter` can only protect ASCII; escaped bytes above 127 are
        // never part of a route's name).
        static AS_SENT: OnceLock<Quoter> = OnceLock::new();
        let quoter = AS_SENT.get_or_init(|| {
            let ascii: Vec<u8> = (0..128).collect();
            Quoter::new(b"", &ascii)
        });
        let uri = req.uri().clone();
        req.match_info_mut()
            .get_mut()
            .update_with_quoter(&uri, quoter);
    }
    next.call(req).await
}
