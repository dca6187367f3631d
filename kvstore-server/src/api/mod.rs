//! The HTTP API: the routes, one module per resource, each declared once
//! ([`route`]), with the OpenAPI document built from them ([`openapi`]), the
//! answers to what no route takes ([`methods`], [`params`]) and the names of the
//! response headers ([`headers`]). The app mounts [`routes`] beside the legacy
//! `/kv`'s.

pub mod headers;
pub mod health;
pub mod history;
pub mod kv;
pub mod leases;
pub mod methods;
pub mod openapi;
pub mod params;
pub mod route;
pub mod snapshot;
pub mod txn;
pub mod watch;

use kvstore_core::ErrorCode;

use route::{Mount, Route};

/// The routes of the API, in the order they are mounted: `/healthz`, `/v1`,
/// `/metrics` and the document itself (the app adds the legacy `/kv`).
pub(crate) fn routes() -> impl Iterator<Item = &'static Route> {
    [
        health::ROUTES,
        kv::ROUTES,
        history::ROUTES,
        leases::ROUTES,
        watch::ROUTES,
        snapshot::ROUTES,
        txn::ROUTES,
        METRICS,
        openapi::ROUTES,
    ]
    .into_iter()
    .flatten()
}

/// `GET /metrics` (served by `http::metrics`, with the exporter it reads).
const METRICS: &[Route] = &[Route::new::<crate::http::metrics::__path_render>(
    Mount::To(|r| r.to(crate::http::metrics::render)),
    &[ErrorCode::Forbidden],
)];
