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
//! - `kvstore_metrics_pending_samples`: histogram samples recorded since the last
//!   drain, as this scrape found them (at most [`MAX_PENDING_SAMPLES`])
//!
//! # Memory
//!
//! The exporter keeps every histogram sample (16 bytes and more) until it folds it
//! into its buckets, which only a render or its "upkeep" does: a server nobody
//! scrapes would grow by each request. So the recorder is wrapped to count the
//! samples it is handed: from [`DRAIN_EVERY`] on, a thread of its own runs the
//! exporter's upkeep, and a recording that finds [`MAX_PENDING_SAMPLES`] waiting
//! runs it in place. What the metrics hold is then fixed by the number of series
//! (bounded: route patterns, standard methods, statuses), not by the number of
//! requests, however often `/metrics` is read.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse};
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Latency buckets, in seconds: 50 µs to 10 s.
const SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];
/// Writes per commit group.
const GROUP_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Pending histogram samples at which the drain thread is woken.
pub const DRAIN_EVERY: usize = 4096;
/// Most histogram samples ever waiting for a drain: a recording that brings the
/// count here drains in place (the drain thread may be starved of CPU).
pub const MAX_PENDING_SAMPLES: usize = 2 * DRAIN_EVERY;

/// The installed recorder's handle and its count of samples not yet drained.
struct Installed {
    handle: PrometheusHandle,
    pending: Arc<Pending>,
}

static INSTALLED: OnceLock<Option<Installed>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls reuse it) and its drain
/// thread. `None` if another recorder was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    installed().map(|i| &i.handle)
}

/// Histogram samples recorded and not yet folded into the exporter's buckets (an
/// upper bound: a sample drained while it was being counted counts until the
/// next drain). At most [`MAX_PENDING_SAMPLES`] plus one a recording thread.
pub fn pending_samples() -> Option<usize> {
    installed().map(|i| i.pending.samples.load(Ordering::Relaxed))
}

fn installed() -> Option<&'static Installed> {
    INSTALLED.get_or_init(install).as_ref()
}

fn install() -> Option<Installed> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("kvstore_commit_group_size".into()),
                GROUP_SIZES,
            )
        });
    let recorder = match builder {
        Ok(builder) => builder.build_recorder(),
        Err(e) => {
            log::warn!("metrics are off: {e}");
            return None;
        }
    };
    let handle = recorder.handle();
    let (wake, woken) = mpsc::sync_channel(1);
    let pending = Arc::new(Pending {
        samples: AtomicUsize::new(0),
        handle: handle.clone(),
        wake,
    });
    let bounded = Bounded {
        inner: recorder,
        pending: pending.clone(),
    };
    if let Err(e) = metrics::set_global_recorder(bounded) {
        log::warn!("metrics are off: {e}");
        return None;
    }
    let drainer = pending.clone();
    let spawned = std::thread::Builder::new()
        .name("kvstore-metrics".into())
        .spawn(move || {
            // Ends only with the process: the sender lives in the global recorder.
            for () in woken {
                drainer.drain();
            }
        });
    if let Err(e) = spawned {
        // Recordings still drain in place at MAX_PENDING_SAMPLES.
        log::warn!("could not start the metrics drain thread: {e}");
    }
    Some(Installed { handle, pending })
}

/// Samples handed to the exporter since its last drain.
struct Pending {
    samples: AtomicUsize,
    handle: PrometheusHandle,
    wake: SyncSender<()>,
}

impl Pending {
    /// Counts `n` samples just recorded (after recording them, so that the count is
    /// never below what waits), and has them drained when there are enough.
    fn recorded(&self, n: usize) {
        let before = self.samples.fetch_add(n, Ordering::Relaxed);
        let now = before + n;
        if now >= MAX_PENDING_SAMPLES {
            self.drain();
        } else if before < DRAIN_EVERY && now >= DRAIN_EVERY {
            // Full: a drain is already due.
            let _ = self.wake.try_send(());
        }
    }

    /// Folds every waiting sample into the exporter's buckets.
    fn drain(&self) {
        // Reset first: samples recorded during the upkeep are counted again (over,
        // never under, what waits).
        self.samples.store(0, Ordering::Relaxed);
        self.handle.run_upkeep();
    }

    /// What a render is about to drain: the count, reset.
    fn take(&self) -> usize {
        self.samples.swap(0, Ordering::Relaxed)
    }
}

/// The exporter's recorder with each histogram counted into [`Pending`].
struct Bounded {
    inner: PrometheusRecorder,
    pending: Arc<Pending>,
}

/// A histogram of the exporter whose samples are counted.
struct Counted {
    inner: Histogram,
    pending: Arc<Pending>,
}

impl HistogramFn for Counted {
    fn record(&self, value: f64) {
        self.inner.record(value);
        self.pending.recorded(1);
    }

    fn record_many(&self, value: f64, count: usize) {
        self.inner.record_many(value, count);
        self.pending.recorded(count);
    }
}

impl Recorder for Bounded {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.inner.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Counted {
            inner: self.inner.register_histogram(key, metadata),
            pending: self.pending.clone(),
        }))
    }
}

/// Mounts `/metrics`.
/// The metrics in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4",
         content_type = "text/plain", body = String),
    )
)]
pub(crate) async fn render(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Store-wide figures (keys, size, every route's traffic): for a token that may
    // read the whole store.
    caller
        .check_read_all("")
        .map_err(|e| e.prefixed("/metrics shows store-wide figures"))?;
    let installed = installed().ok_or_else(|| ApiError::internal("metrics are not installed"))?;
    // The render drains every histogram.
    metrics::gauge!("kvstore_metrics_pending_samples").set(installed.pending.take() as f64);
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
        .body(installed.handle.render()))
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
type SeriesKey = (Cow<'static, str>, &'static str, u16);

thread_local! {
    /// Each worker's series by (route, method, status), registered on first use: a
    /// request then costs one hash lookup, not label strings and two registry
    /// lookups. Thread-local, as each actix worker is one thread; bounded, as routes
    /// are patterns and methods the standard ones or `other` (see [`method_label`]).
    static SERIES: RefCell<HashMap<SeriesKey, Handles>> = RefCell::new(HashMap::new());
}

/// Registers the series of (route, method, status) with the global recorder.
fn register(route: &str, method: &'static str, status: u16) -> Handles {
    let route = route.to_string();
    let counter = metrics::counter!(
        "kvstore_http_requests_total",
        "route" => route.clone(),
        "method" => method,
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
    let method = method_label(req.method());
    let status = res.status().as_u16();
    // Handles are only kept once the recorder is in place (it never changes after).
    if INSTALLED.get().is_some() {
        SERIES.with_borrow_mut(|series| {
            let (counter, histogram) = series
                .entry((route, method, status))
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

/// The methods of RFC 9110 (and PATCH) with their labels.
const METHODS: [(Method, &str); 9] = [
    (Method::GET, "GET"),
    (Method::HEAD, "HEAD"),
    (Method::POST, "POST"),
    (Method::PUT, "PUT"),
    (Method::DELETE, "DELETE"),
    (Method::CONNECT, "CONNECT"),
    (Method::OPTIONS, "OPTIONS"),
    (Method::TRACE, "TRACE"),
    (Method::PATCH, "PATCH"),
];

/// The `method` label: a standard method's name, else `other`. Each label is a
/// series the exporter keeps forever, so a client making up method tokens must
/// not create one each.
fn method_label(method: &Method) -> &'static str {
    METHODS
        .iter()
        .find(|(m, _)| m == method)
        .map_or("other", |&(_, label)| label)
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
