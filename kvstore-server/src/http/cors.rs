//! CORS for browser apps served from other origins (`--cors-origin`), on
//! [`actix_cors`]. Off unless origins are given: then no response carries CORS
//! headers and browsers keep other origins out. The console is served by the server
//! itself (same origin) and needs none.
//!
//! Cross-origin callers authenticate with `Authorization: Bearer`: credentials
//! (cookies) are never allowed across origins, so the console's login cookie only
//! ever works on the server's own pages.

use actix_cors::{Cors, CorsError};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName};
use actix_web::http::Method;
use actix_web::middleware::{Condition, Next};
use actix_web::ResponseError;

use crate::http::error::ApiError;

/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: usize = 3600;

/// Parses a `--cors-origin`: `*`, or `http[s]://host[:port]` with no path, as a
/// browser sends it in `Origin`.
pub fn parse_origin(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(text.to_string());
    }
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.is_empty()
                && !host.contains('/')
                && host.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(text.to_string())
        }
        _ => Err(format!(
            "expected an origin like https://app.example.com or http://localhost:3000 \
             (scheme, host and port, no path), or *; got {text:?}"
        )),
    }
}

/// The CORS middleware for `origins` (as given to `--cors-origin`); it does
/// nothing when `origins` is empty. A browser may read `ETag` and the headers
/// `expose` names (the API's, see `api::headers`).
pub fn middleware(origins: &[String], expose: &[&'static str]) -> Condition<Cors> {
    let mut cors = Cors::default()
        .allowed_methods([Method::GET, Method::PUT, Method::DELETE, Method::POST])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers(
            std::iter::once(header::ETAG).chain(expose.iter().map(|h| HeaderName::from_static(h))),
        )
        .max_age(PREFLIGHT_MAX_AGE)
        // Requests from other origins still run (as they would with no CORS at
        // all); they just get no CORS headers, so the browser hides the answer.
        .block_on_origin_mismatch(false);
    for origin in origins {
        cors = if origin == "*" {
            cors.allow_any_origin().send_wildcard()
        } else {
            cors.allowed_origin(origin)
        };
    }
    Condition::new(!origins.is_empty(), cors)
}

/// Middleware around [`middleware`]: a refused preflight gets our JSON error body
/// (`400 invalid_request`) instead of actix-cors's plain text.
pub async fn json_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let res = next.call(req).await?;
    let refusal = res
        .response()
        .error()
        .and_then(|e| e.as_error::<CorsError>())
        .map(|e| ApiError::invalid_request(format!("CORS: {e}")));
    Ok(match refusal {
        Some(error) => res
            .into_response(error.error_response())
            .map_into_right_body(),
        None => res.map_into_left_body(),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_origin;

    #[test]
    fn origins_are_scheme_host_and_port() {
        assert!(parse_origin("https://app.example.com").is_ok());
        assert!(parse_origin("http://localhost:3000").is_ok());
        assert!(parse_origin("*").is_ok());
        for bad in [
            "app.example.com",
            "https://",
            "https://a/b",
            "ftp://a",
            "http://a b",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}
