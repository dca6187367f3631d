//! The answer to a request no route takes: `405 method_not_allowed` with `Allow` on
//! a path the API has (as etcd's and Consul's HTTP APIs answer), `404 not_found`
//! on any other.
//!
//! Which methods a path takes is read from the routes ([`super::route`]), each
//! declared once with its documented method: so `Allow` names exactly the methods
//! of the document. The app's default service (every request no route matched)
//! and routes that dispatch methods themselves (the key route) answer with
//! [`unmatched`].

use actix_web::{web, HttpMessage, HttpRequest};

use super::route::Endpoints;
use crate::http::error::ApiError;
use crate::http::metrics::RouteLabel;

/// The answer to a request that no route of its path takes: `405
/// method_not_allowed` with `Allow` if the path is documented, else `404
/// not_found`. Either way before any token check.
pub(crate) fn unmatched(req: &HttpRequest) -> ApiError {
    let endpoints: Option<&'static Endpoints> = req
        .app_data::<web::Data<&'static Endpoints>>()
        .map(|data| *data.get_ref());
    match endpoints.and_then(|e| Some((e.template(req.path())?, e))) {
        Some((template, endpoints)) => {
            // Counted under the path's route (unless its route named one), not
            // among unknown paths.
            let mut extensions = req.extensions_mut();
            if extensions.get::<RouteLabel>().is_none() {
                extensions.insert(RouteLabel(template));
            }
            ApiError::method_not_allowed(req.method(), endpoints.allow(template))
        }
        None => ApiError::not_found(format!("{} {}", req.method(), req.path())),
    }
}
