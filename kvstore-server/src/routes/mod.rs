//! The HTTP routes, one module per resource, and the one list of them all
//! ([`all`]): the app mounts it, the OpenAPI document describes it, and `Allow`
//! and the query whitelist are read from it ([`route::Endpoints`]).

pub mod headers;
pub mod health;
pub mod history;
pub mod kv;
pub mod leases;
pub mod methods;
pub mod params;
pub mod route;
pub mod snapshot;
pub mod txn;
pub mod watch;

use std::sync::OnceLock;

use actix_web::web;

use route::{Endpoints, Route};

/// Every route of the HTTP API, in the order they are mounted: the v1 API, the
/// legacy `/kv`, `/healthz`, `/metrics` and the document itself.
pub(crate) fn all() -> impl Iterator<Item = &'static Route> {
    [
        health::ROUTES,
        kv::ROUTES,
        history::ROUTES,
        leases::ROUTES,
        watch::ROUTES,
        snapshot::ROUTES,
        txn::ROUTES,
        crate::metrics::ROUTES,
        crate::openapi::ROUTES,
        crate::compat::legacy::ROUTES,
    ]
    .into_iter()
    .flatten()
}

/// Mounts every route on `cfg`.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::Data::new(crate::openapi::Document(spec())))
        .app_data(web::Data::new(endpoints()));
    for route in all() {
        route.mount(cfg);
    }
}

/// The OpenAPI document of every route, built once.
pub(crate) fn spec() -> &'static utoipa::openapi::OpenApi {
    static SPEC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    SPEC.get_or_init(|| crate::openapi::build(all()))
}

/// What every route takes, built once.
pub(crate) fn endpoints() -> &'static Endpoints {
    static ENDPOINTS: OnceLock<Endpoints> = OnceLock::new();
    ENDPOINTS.get_or_init(|| Endpoints::of(all()))
}
