//! Query parameters: a request naming one that its endpoint does not take is
//! refused with `400 invalid_request`, never ignored (a `?ttl=30` that a server
//! without TTLs dropped would store a key that never expires).
//!
//! Which parameters an endpoint takes is read from the routes, as `Allow` is (see
//! [`super::methods`]): each takes exactly its documented query parameters. The
//! endpoints outside the document have their own lists here: Socket.IO's (the
//! Engine.IO parameters, its clients' cache-busting `t` included) and the
//! console's (none; its state lives in the URL's fragment).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web;
use percent_encoding::percent_decode_str;

use super::route::Endpoints;
use crate::http::error::ApiError;

/// The parameters Engine.IO clients send (`EIO`, `transport`, `sid`; `t` to defeat
/// caches; `b64` and `j` of older clients' polling).
const SOCKET_IO: &[&str] = &["EIO", "transport", "sid", "t", "b64", "j"];

/// The query parameters a request to `path` with `method` may name; `None` when
/// the request goes to no endpoint (its 404 or 405 answer says so).
fn known<'a>(endpoints: &'a Endpoints, path: &str, method: &Method) -> Option<Vec<&'a str>> {
    if path == "/socket.io/" {
        return Some(SOCKET_IO.to_vec());
    }
    if path == "/ui" || path.starts_with("/ui/") {
        return Some(Vec::new());
    }
    endpoints.query(path, method)
}

/// The names in a query string, decoded as forms encode them.
fn names(query: &str) -> impl Iterator<Item = String> + '_ {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            percent_decode_str(&name.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
}

/// Middleware: refuses a request that names a query parameter its endpoint does
/// not take.
pub async fn known_only(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if !req.query_string().is_empty() {
        let endpoints = req
            .app_data::<web::Data<&'static Endpoints>>()
            .map(|data| *data.get_ref());
        if let Some(known) = endpoints.and_then(|e| known(e, req.path(), req.method())) {
            if let Some(unknown) = names(req.query_string()).find(|n| !known.contains(&n.as_str()))
            {
                let takes = if known.is_empty() {
                    "no query parameters".to_string()
                } else {
                    known.join(", ")
                };
                return Err(ApiError::invalid_request(format!(
                    "unknown query parameter {unknown:?}: this endpoint takes {takes}"
                ))
                .into());
            }
        }
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_io_and_the_console_have_their_own_lists() {
        let endpoints = Endpoints::of([]);
        let get = |path| known(&endpoints, path, &Method::GET);
        assert_eq!(get("/socket.io/").map(|k| k.contains(&"t")), Some(true));
        assert_eq!(get("/ui/app.js"), Some(vec![]));
        assert_eq!(get("/nope"), None);
        let seen: Vec<String> = names("a=1&b%20c=2&&d&e+f=").collect();
        assert_eq!(seen, ["a", "b c", "d", "e f"]);
    }
}
