//! # kvstore-server
//!
//! The HTTP face of [`kvstore_core::Store`]: `/v1/kv` (get, put, delete, list),
//! `/v1/watch` (WebSocket or Server-Sent Events), `/healthz`, the legacy `/kv`, and
//! the OpenAPI document of them all at `/v1/openapi.json` ([`openapi`]).
//! The binary `kvstore-server` is a thin `main` over [`run`].
//!
//! # Example
//!
//! Mount the routes in-process, as the tests of a handler would:
//!
//! ```
//! # #[actix_web::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use actix_web::{test, App};
//! use kvstore_core::{Config, Store};
//! use kvstore_server::{configure, AppState};
//!
//! let (_stop, shutdown) = tokio::sync::watch::channel(false);
//! let state = AppState {
//!     store: Store::open(Config::temporary())?,
//!     shutdown,
//!     timings: Default::default(),
//!     access: None,
//!     watchers: kvstore_server::limits::WatcherLimit::new(100),
//!     body_timeout: std::time::Duration::from_secs(30),
//! };
//! let app = test::init_service(App::new().configure(|cfg| configure(cfg, state))).await;
//!
//! let put = test::TestRequest::put().uri("/v1/kv/app%2Fmode").set_payload("blue").to_request();
//! assert!(test::call_service(&app, put).await.status().is_success());
//! let get = test::TestRequest::get().uri("/v1/kv/app/mode").to_request();
//! assert_eq!(test::call_and_read_body(&app, get).await, "blue");
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod auth;
mod body;
pub mod config;
mod console;
mod cors;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod openapi;
mod pyjson;
mod routes;
pub mod state;
pub mod tls;

use std::net::TcpListener;

use actix_web::middleware::{Condition, Logger};
use actix_web::{web, App, HttpRequest, HttpServer};
use kvstore_core::Store;
use tokio::sync::watch;

pub use config::Options;
pub use error::ApiError;
pub use state::{AppState, WatchTimings};

/// Mounts every route on `cfg`, with `state` as shared data.
pub fn configure(cfg: &mut web::ServiceConfig, state: AppState) {
    cfg.app_data(web::Data::new(state))
        .configure(routes::health::configure)
        .configure(routes::kv::configure)
        .configure(routes::watch::configure)
        .configure(routes::legacy::configure)
        .configure(routes::snapshot::configure)
        .configure(metrics::configure)
        .configure(openapi::configure)
        .configure(console::configure)
        .default_service(web::to(|req: HttpRequest| async move {
            Err::<actix_web::HttpResponse, _>(not_found(&req))
        }));
}

/// The answer to a request no route serves: `404 not_found`.
pub(crate) fn not_found(req: &HttpRequest) -> ApiError {
    ApiError::NotFound(format!("{} {}", req.method(), req.path()))
}

/// The log target of actix's [`Logger`] (its default, set explicitly so that the
/// check of whether the access log is on asks about the same target).
const ACCESS_LOG_TARGET: &str = "actix_web::middleware::logger";

/// Serves `store` on `listener` until `stop` completes (see [`shutdown_signal`]),
/// then stops gracefully: no new connections, requests in flight finish, watch
/// streams are closed, the store is flushed.
pub async fn run(
    listener: TcpListener,
    store: Store,
    access: Option<auth::AccessControl>,
    tls: Option<rustls::ServerConfig>,
    options: &Options,
    stop_signal: impl std::future::Future<Output = ()> + 'static,
) -> std::io::Result<()> {
    metrics::handle();
    ::metrics::gauge!("kvstore_watchers").set(0.0);
    let (stop, shutdown) = watch::channel(false);
    let state = AppState {
        store: store.clone(),
        shutdown,
        timings: options.timings(),
        watchers: limits::WatcherLimit::new(options.max_watchers_per_client),
        body_timeout: std::time::Duration::from_secs_f64(options.request_timeout.max(0.1)),
        access: access.map(std::sync::Arc::new),
    };
    // Asked once the logger is installed (`main` does that first): with access lines
    // filtered out (e.g. `RUST_LOG=warn`), the Logger is not mounted at all, so it
    // costs no per-request work (timing, formatting its fields).
    let access_log = log::log_enabled!(target: ACCESS_LOG_TARGET, log::Level::Info);
    let cors_origins = options.cors_origin.clone();
    let server = HttpServer::new(move || {
        let state = state.clone();
        App::new()
            .wrap(actix_web::middleware::from_fn(limits::bound_headers))
            .wrap(actix_web::middleware::from_fn(metrics::record))
            .wrap(Condition::new(
                access_log,
                Logger::new("%a \"%r\" %s %b %Dms")
                    .log_target(ACCESS_LOG_TARGET)
                    // Health checks poll every few seconds; they would drown the request log.
                    .exclude("/healthz"),
            ))
            .wrap(cors::middleware(&cors_origins))
            .wrap(Condition::new(
                !cors_origins.is_empty(),
                actix_web::middleware::from_fn(cors::json_errors),
            ))
            .configure(move |cfg| configure(cfg, state))
    })
    .disable_signals()
    .shutdown_timeout(10)
    .max_connections(options.max_connections)
    .client_request_timeout(std::time::Duration::from_secs_f64(
        options.request_timeout.max(0.1),
    ));
    let mut server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    };
    if let Some(workers) = options.workers {
        server = server.workers(workers);
    }
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(async move {
        stop_signal.await;
        log::info!("stopping: finishing requests in flight and closing watches");
        let _ = stop.send(true);
        handle.stop(true).await;
    });
    server.await?;
    if let Err(e) = store.flush() {
        log::error!("final flush failed: {e}");
        return Err(std::io::Error::other(e));
    }
    log::info!("stopped at revision {}", store.revision());
    Ok(())
}

/// A future that completes on SIGTERM or SIGINT. The handlers are installed when
/// this is called (inside a runtime), so a signal that arrives before the future
/// is first polled is not lost, and cannot kill the process ungracefully.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
