//! The answer to a request no route takes: `405 method_not_allowed` with `Allow` on
//! a path the API has (as etcd's and Consul's HTTP APIs answer), `404 not_found`
//! on any other.
//!
//! Which methods a path takes is read from the OpenAPI document
//! ([`crate::openapi`]), the list of every operation that the server is tested to
//! serve: so `Allow` names exactly the documented methods, and a new route gets its
//! 405 by being documented, wherever and however it is mounted. The app's default
//! service (every request no route matched) and routes that dispatch methods
//! themselves (the key route) answer with [`unmatched`].

use std::sync::OnceLock;

use actix_web::http::Method;
use actix_web::{HttpMessage, HttpRequest};
use utoipa::openapi::path::{Operation, PathItem};

use crate::error::ApiError;
use crate::metrics::RouteLabel;

/// A documented path and the methods it takes.
struct Known {
    /// As documented: `/healthz`, `/v1/kv/{key}`.
    template: String,
    /// The `Allow` header: `GET, HEAD, PUT, DELETE`.
    allow: String,
}

/// The operations of a path item with their methods, in the order `Allow` lists
/// them.
pub(crate) fn operations(item: &PathItem) -> impl Iterator<Item = (Method, &Operation)> {
    [
        (Method::GET, &item.get),
        (Method::HEAD, &item.head),
        (Method::PUT, &item.put),
        (Method::POST, &item.post),
        (Method::DELETE, &item.delete),
        (Method::OPTIONS, &item.options),
        (Method::PATCH, &item.patch),
        (Method::TRACE, &item.trace),
    ]
    .into_iter()
    .filter_map(|(method, operation)| Some((method, operation.as_ref()?)))
}

/// Every documented path, built once from the document.
fn known() -> &'static [Known] {
    static KNOWN: OnceLock<Vec<Known>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        crate::openapi::spec()
            .paths
            .paths
            .iter()
            .map(|(template, item)| Known {
                template: template.clone(),
                allow: operations(item)
                    .map(|(method, _)| method.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
            .collect()
    })
}

/// Whether `path` (as sent) is one of `template`'s: a `{parameter}` stands for one
/// non-empty segment, or, last, for the rest of the path (a key holds `/`s, and an
/// empty key is the key route's to refuse).
pub(crate) fn matches(template: &str, path: &str) -> bool {
    let mut wanted = template.split('/').peekable();
    let mut given = path.split('/');
    while let Some(part) = wanted.next() {
        let is_parameter = part.starts_with('{') && part.ends_with('}');
        let last = wanted.peek().is_none();
        match given.next() {
            None => return false,
            Some(_) if is_parameter && last => return true,
            Some(segment) if is_parameter => {
                if segment.is_empty() {
                    return false;
                }
            }
            Some(segment) => {
                if segment != part {
                    return false;
                }
            }
        }
    }
    given.next().is_none()
}

/// The answer to a request that no route of its path takes: `405
/// method_not_allowed` with `Allow` if the path is documented, else `404
/// not_found`. Either way before any token check.
pub(crate) fn unmatched(req: &HttpRequest) -> ApiError {
    let path = req.path();
    // The most specific template: `/v1/leases/{id}/keepalive` before
    // `/v1/leases/{id}`, whose last parameter would take the rest.
    let known = known()
        .iter()
        .filter(|k| matches(&k.template, path))
        .max_by_key(|k| k.template.matches('/').count());
    match known {
        Some(known) => {
            // Counted under the path's route (unless its route named one), not
            // among unknown paths.
            let mut extensions = req.extensions_mut();
            if extensions.get::<RouteLabel>().is_none() {
                extensions.insert(RouteLabel(&known.template));
            }
            ApiError::method_not_allowed(req.method(), &known.allow)
        }
        None => crate::not_found(req),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn templates_match_paths_segment_by_segment() {
        assert!(matches("/healthz", "/healthz"));
        assert!(!matches("/healthz", "/healthz/"));
        assert!(!matches("/healthz", "/healthzx"));
        assert!(!matches("/v1/kv", "/v1/kv/"));
        assert!(matches("/v1/kv/{key}", "/v1/kv/a"));
        assert!(matches("/v1/kv/{key}", "/v1/kv/a/b/"));
        assert!(matches("/v1/kv/{key}", "/v1/kv/"));
        assert!(!matches("/v1/kv/{key}", "/v1/kv"));
        assert!(!matches("/v1/kv/{key}", "/v1/%6Bv/a"));
        assert!(matches("/v1/leases/{id}/keys", "/v1/leases/7/keys"));
        assert!(!matches("/v1/leases/{id}/keys", "/v1/leases//keys"));
        assert!(!matches("/v1/leases/{id}/keys", "/v1/leases/7/keys/x"));
    }

    #[test]
    fn every_documented_path_has_its_methods() {
        let known = super::known();
        let allow = |template: &str| {
            known
                .iter()
                .find(|k| k.template == template)
                .map(|k| k.allow.as_str())
        };
        assert_eq!(allow("/v1/kv/{key}"), Some("GET, HEAD, PUT, DELETE"));
        assert_eq!(allow("/kv"), Some("GET, HEAD, PUT"));
        assert_eq!(allow("/v1/snapshot"), Some("GET, HEAD, POST"));
        assert_eq!(allow("/healthz"), Some("GET, HEAD"));
        assert_eq!(allow("/v1/leases/{id}"), Some("GET, HEAD, DELETE"));
        assert_eq!(allow("/v1/leases/{id}/keepalive"), Some("POST"));
    }
}
