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

use std::sync::OnceLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
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
    cfg.route("/metrics", web::get().to(render));
}

async fn render(_caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let handle = handle().ok_or_else(|| ApiError::Internal("metrics are not installed".into()))?;
    let store = &state.store;
    metrics::gauge!("kvstore_store_revision").set(store.revision() as f64);
    metrics::gauge!("kvstore_keys").set(store.key_count() as f64);
    if let Ok(bytes) = store.size_on_disk() {
        metrics::gauge!("kvstore_disk_bytes").set(bytes as f64);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render()))
}

/// Middleware: counts every request by route pattern (bounded cardinality),
/// method and status, and records its latency.
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let res = next.call(req).await?;
    let status = res.status().as_u16().to_string();
    metrics::counter!(
        "kvstore_http_requests_total",
        "route" => route.clone(),
        "method" => method.clone(),
        "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "kvstore_http_request_duration_seconds",
        "route" => route,
        "method" => method
    )
    .record(started.elapsed().as_secs_f64());
    Ok(res)
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
