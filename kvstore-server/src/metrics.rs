//! `/metrics` in the Prometheus text format, through the `metrics` facade (the
//! store records its commit figures the same way) and its Prometheus exporter.
//!
//! - `kvstore_http_requests_total{route,method,status}`,
//!   `kvstore_http_request_duration_seconds{route,method}`
//! - `kvstore_watchers` (open watch streams), `kvstore_watch_events_sent_total`,
//!   `kvstore_watch_lagged_total`
//! - `kvstore_store_revision`, `kvstore_keys`, `kvstore_disk_bytes`
//! - `kvstore_commit_group_size`, `kvstore_commit_seconds`, `kvstore_flush_seconds`
//!   (group commit: writes per flush, time per group, time per flush)

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Latency buckets, in seconds: 50 µs to 10 s.
const SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];
/// Writes per commit group.
const GROUP_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls reuse it). `None` if
/// another recorder was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("kvstore_commit_group_size".into()),
                        GROUP_SIZES,
                    )
                });
            match builder.map(|b| b.install_recorder()) {
                Ok(Ok(handle)) => Some(handle),
                Ok(Err(e)) => {
                    log::warn!("metrics are off: {e}");
                    None
                }
                Err(e) => {
                    log::warn!("metrics are off: {e}");
                    None
                }
            }
        })
        .as_ref()
}

/// Mounts `/metrics`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", crate::routes::get_or_head().to(render));
}

async fn render(_caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let handle = handle().ok_or_else(|| ApiError::internal("metrics are not installed"))?;
    metrics::gauge!("kvstore_store_revision").set(state.store.revision() as f64);
    // A store that cannot answer now still lets the rest be scraped.
    if let Ok(status) = state.store.status().await {
        metrics::gauge!("kvstore_keys").set(status.keys as f64);
        if let Some(bytes) = status.size_on_disk {
            metrics::gauge!("kvstore_disk_bytes").set(bytes as f64);
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render()))
}

/// The route label of a request that a route serves from a default service, where
/// actix has no pattern to report (`/v1/kv/{key}`): put in the request's extensions
/// by the handler, read by [`record`].
#[derive(Clone, Copy)]
pub(crate) struct RouteLabel(pub &'static str);

/// A request's series: `kvstore_http_requests_total` and
/// `kvstore_http_request_duration_seconds` with its labels.
type Handles = (Counter, Histogram);
/// (route, method, status).
type SeriesKey = (Cow<'static, str>, Method, u16);

thread_local! {
    /// Each worker's series by (route, method, status), registered on first use: a
    /// request then costs one hash lookup, not label strings and two registry
    /// lookups. Thread-local, as each actix worker is one thread; bounded, as routes
    /// are patterns and methods the standard ones (see [`record`]).
    static SERIES: RefCell<HashMap<SeriesKey, Handles>> = RefCell::new(HashMap::new());
}

/// Registers the series of (route, method, status) with the global recorder.
fn register(route: &str, method: &Method, status: u16) -> Handles {
    let route = route.to_string();
    let method = method.to_string();
    let counter = metrics::counter!(
        "kvstore_http_requests_total",
        "route" => route.clone(),
        "method" => method.clone(),
        "status" => status.to_string()
    );
    let histogram = metrics::histogram!(
        "kvstore_http_request_duration_seconds",
        "route" => route,
        "method" => method
    );
    (counter, histogram)
}

/// Middleware: counts every request by route pattern (bounded cardinality),
/// method and status, and records its latency.
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let res = next.call(req).await?;
    let seconds = started.elapsed().as_secs_f64();
    let req = res.request();
    // After routing the pattern comes from the matched resource, without matching
    // the path again.
    let label = req.extensions().get::<RouteLabel>().copied();
    let route: Cow<'static, str> = match label {
        Some(RouteLabel(route)) => Cow::Borrowed(route),
        None => req
            .match_pattern()
            .map_or(Cow::Borrowed("unmatched"), Cow::Owned),
    };
    let method = req.method();
    let status = res.status().as_u16();
    // Handles are only kept once the recorder is in place (it never changes after),
    // and for standard methods: any other token is a series of its own, so a
    // client making them up must not grow the cache.
    let cached = HANDLE.get().is_some() && is_standard(method);
    if cached {
        SERIES.with_borrow_mut(|series| {
            let (counter, histogram) = series
                .entry((route, method.clone(), status))
                .or_insert_with_key(|(route, method, status)| register(route, method, *status));
            counter.increment(1);
            histogram.record(seconds);
        });
    } else {
        let (counter, histogram) = register(&route, method, status);
        counter.increment(1);
        histogram.record(seconds);
    }
    Ok(res)
}

/// One of the methods of RFC 9110 (and PATCH).
fn is_standard(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ]
    .contains(method)
}

/// Counts an open watch stream while alive.
pub struct WatcherGauge;

impl WatcherGauge {
    /// One more watcher.
    pub fn open() -> WatcherGauge {
        metrics::gauge!("kvstore_watchers").increment(1.0);
        WatcherGauge
    }
}

impl Drop for WatcherGauge {
    fn drop(&mut self) {
        metrics::gauge!("kvstore_watchers").decrement(1.0);
    }
}
