//! # kvstore-server
//!
//! The HTTP face of a [`kvstore_core::Storage`]: `/v1/kv` (get, put, delete, list),
//! `/v1/watch` (WebSocket or Server-Sent Events), `/v1/snapshot`, `/healthz`,
//! `/metrics`, the legacy `/kv`, and the OpenAPI document of them all at
//! `/v1/openapi.json`. The binary `kvstore-server` is a thin `main` over [`run`].
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`app`] (this page) | the app factory: every route and middleware on a given state |
//! | `api` | the HTTP API: its routes, each declared once, and the OpenAPI document of them |
//! | `http` | the plumbing: bodies, limits, CORS, [`error`]s, [`state`], [`tls`], [`metrics`] |
//! | `compat` | what the replaced service offered: the legacy `/kv` API, Socket.IO |
//! | `console` | the web console at `/ui/` |
//! | [`etcd_api`] | etcd's v3 gRPC API, on its own address |
//! | [`watch`] | the watch pump and its two transports |
//! | [`config`] | flags and their environment twins; where the engine is chosen |
//! | [`auth`] | tokens and roles |
//!
//! # Example
//!
//! The whole app in-process, as its tests run it:
//!
//! ```
//! # #[actix_web::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use actix_web::test;
//! use kvstore_core::{SledConfig, SledStore};
//! use kvstore_server::AppState;
//!
//! let store = Arc::new(SledStore::open(SledConfig::temporary())?);
//! let app = test::init_service(kvstore_server::app(AppState::new(store))).await;
//!
//! let put = test::TestRequest::put().uri("/v1/kv/app%2Fmode").set_payload("blue").to_request();
//! assert!(test::call_service(&app, put).await.status().is_success());
//! let get = test::TestRequest::get().uri("/v1/kv/app/mode").to_request();
//! assert_eq!(test::call_and_read_body(&app, get).await, "blue");
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod api;
pub mod auth;
mod compat;
pub mod config;
mod console;
pub mod etcd_api;
mod http;
pub mod watch;

pub use http::{error, limits, metrics, state, tls};

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, OnceLock};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::{Condition, Logger};
use actix_web::{web, App, HttpRequest, HttpServer};
use kvstore_core::Storage;
use tokio::sync::watch as signal;

use api::route::{Endpoints, Route};

pub use config::Options;
pub use error::ApiError;
pub use state::{AppState, WatchTimings};

/// The log target of the access log (`--access-log`).
pub const ACCESS_LOG_TARGET: &str = "kvstore_server::access";

/// The whole app on `state`: every route (matched on the path as sent), and the
/// middleware that bounds headers, counts requests for `/metrics`, (with
/// `state.access_log`) logs them and (with `state.cors_origins`) answers CORS. Used
/// by [`run`] for each worker, and by tests in-process with `actix_web::test`.
pub fn app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let access_log = state.access_log;
    let cors_origins = state.cors_origins.clone();
    App::new()
        .wrap(actix_web::middleware::from_fn(api::params::known_only))
        .wrap(actix_web::middleware::from_fn(api::route::match_as_sent))
        .wrap(actix_web::middleware::from_fn(limits::bound_headers))
        .wrap(actix_web::middleware::from_fn(metrics::record))
        .wrap(Condition::new(
            access_log,
            Logger::new("%a \"%r\" %s %b %Dms")
                .log_target(ACCESS_LOG_TARGET)
                // Health checks poll every few seconds; they would drown the request log.
                .exclude("/healthz"),
        ))
        .wrap(http::cors::middleware(&cors_origins, api::headers::EXPOSED))
        .wrap(Condition::new(
            !cors_origins.is_empty(),
            actix_web::middleware::from_fn(http::cors::json_errors),
        ))
        .configure(|cfg| configure(cfg, state))
}

/// Mounts every route on `cfg`, with `state` as shared data.
fn configure(cfg: &mut web::ServiceConfig, state: AppState) {
    cfg.app_data(web::Data::new(auth::Access(state.access.clone())))
        .app_data(web::Data::new(state))
        .app_data(web::Data::new(api::openapi::Document(spec())))
        .app_data(web::Data::new(endpoints()))
        .configure(|cfg| {
            for route in routes() {
                route.mount(cfg);
            }
        })
        .configure(compat::configure)
        .configure(console::configure)
        // A request no route takes: 405 on a documented path, else 404.
        .default_service(web::to(|req: HttpRequest| async move {
            Err::<actix_web::HttpResponse, _>(api::methods::unmatched(&req))
        }));
}

/// Every route of the OpenAPI document, in the order they are mounted: the API's
/// (`/v1`, `/healthz`, `/metrics`, the document) and the legacy `/kv`. The app
/// mounts this list, the document describes it, and `Allow` and the query
/// whitelist are read from it ([`endpoints`]).
fn routes() -> impl Iterator<Item = &'static Route> {
    api::routes().chain(compat::legacy::ROUTES)
}

/// The OpenAPI document of every route, built once.
fn spec() -> &'static utoipa::openapi::OpenApi {
    static SPEC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    SPEC.get_or_init(|| api::openapi::build(routes()))
}

/// What every route takes, built once.
pub(crate) fn endpoints() -> &'static Endpoints {
    static ENDPOINTS: OnceLock<Endpoints> = OnceLock::new();
    ENDPOINTS.get_or_init(|| Endpoints::of(routes()))
}

/// Serves `store` on `listener` (and etcd's API on `etcd_api`, when given) until
/// `stop_signal` completes (see [`shutdown_signal`]), then stops gracefully: no
/// new connections, requests in flight finish, watch streams are closed, the store
/// is flushed.
pub async fn run(
    listener: TcpListener,
    etcd_api: Option<TcpListener>,
    store: Arc<dyn Storage>,
    access: Option<auth::AccessControl>,
    tls: Option<rustls::ServerConfig>,
    options: &Options,
    stop_signal: impl std::future::Future<Output = ()> + 'static,
) -> std::io::Result<()> {
    metrics::handle();
    ::metrics::gauge!("kvstore_watchers").set(0.0);
    let (stop, shutdown) = signal::channel(false);
    let access = access.map(Arc::new);
    let etcd_api = match etcd_api {
        Some(listener) => Some(start_etcd_api(
            listener,
            store.clone(),
            access.clone(),
            options,
            shutdown.clone(),
        )?),
        None => None,
    };
    let state = AppState {
        store: store.clone(),
        shutdown,
        timings: options.timings(),
        watchers: limits::WatcherLimit::new(options.max_watchers_per_client),
        body_timeout: std::time::Duration::from_secs_f64(options.request_timeout.max(0.1)),
        access,
        access_log: options.access_log,
        cors_origins: options.cors_origin.clone(),
        max_txn_ops: options.max_txn_ops,
    };
    let server = HttpServer::new(move || app(state.clone()))
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
    if let Some(etcd_api) = etcd_api {
        match actix_web::rt::task::spawn_blocking(move || etcd_api.join()).await {
            Ok(Ok(Err(e))) => log::error!("etcd's API stopped with an error: {e}"),
            Ok(Err(_)) | Err(_) => log::error!("etcd's API thread panicked"),
            Ok(Ok(Ok(()))) => {}
        }
    }
    if let Err(e) = store.flush().await {
        log::error!("final flush failed: {e}");
        return Err(std::io::Error::other(e));
    }
    log::info!("stopped at revision {}", store.revision());
    Ok(())
}

/// How long open etcd API streams (watches, keep-alives) may take to end once
/// the server stops.
const ETCD_API_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves etcd's API on `listener` on a thread and runtime of its own (as many
/// threads as the HTTP workers), until `shutdown` turns true.
fn start_etcd_api(
    listener: TcpListener,
    store: Arc<dyn Storage>,
    access: Option<Arc<auth::AccessControl>>,
    options: &Options,
    mut shutdown: signal::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<std::io::Result<()>>> {
    let tls = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => Some((std::fs::read(cert)?, std::fs::read(key)?)),
        _ => None,
    };
    let config = etcd_api::EtcdApiConfig {
        listener,
        tls,
        max_txn_ops: options.max_txn_ops,
    };
    let threads = options
        .workers
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    std::thread::Builder::new()
        .name("kvstore-etcd-api".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .thread_name("kvstore-etcd-api")
                .enable_all()
                .build()?;
            let mut stopped = shutdown.clone();
            let served = runtime.block_on(async move {
                let serve = etcd_api::serve(config, store, access, async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                });
                tokio::select! {
                    served = serve => served,
                    // Streams still open after the grace period are cut.
                    _ = async {
                        let _ = stopped.wait_for(|stop| *stop).await;
                        tokio::time::sleep(ETCD_API_GRACE).await;
                    } => Ok(()),
                }
            });
            runtime.shutdown_timeout(ETCD_API_GRACE);
            served
        })
}

/// A server [`spawn`]ed on a thread of its own; stopped gracefully when dropped.
pub struct Spawned {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Spawned {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it gracefully (as SIGTERM does the binary) and waits until it has.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the server thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::error!("the server stopped with an error: {e}");
        }
    }
}

/// Serves `store` on `listener` (and etcd's API on `etcd_api`) on a new thread
/// with its own runtime, as [`run`] does, until the returned [`Spawned`] is
/// stopped or dropped: a real server in the same process, for programs that embed
/// one and for tests.
pub fn spawn(
    listener: TcpListener,
    etcd_api: Option<TcpListener>,
    store: Arc<dyn Storage>,
    access: Option<auth::AccessControl>,
    tls: Option<rustls::ServerConfig>,
    options: Options,
) -> std::io::Result<Spawned> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("kvstore-server-{addr}"))
        .spawn(move || {
            actix_web::rt::System::new().block_on(run(
                listener,
                etcd_api,
                store,
                access,
                tls,
                &options,
                async move {
                    let _ = stopped.await;
                },
            ))
        })?;
    Ok(Spawned {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
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

#[cfg(test)]
mod tests {
    use actix_web::http::Method;

    #[test]
    fn every_documented_path_has_its_methods() {
        let allow = |template: &str| super::endpoints().allow(template);
        assert_eq!(allow("/v1/kv/{key}"), "GET, HEAD, PUT, DELETE");
        assert_eq!(allow("/kv"), "GET, HEAD, PUT");
        assert_eq!(allow("/v1/snapshot"), "GET, HEAD, POST");
        assert_eq!(allow("/healthz"), "GET, HEAD");
        assert_eq!(allow("/v1/leases/{id}"), "GET, HEAD, DELETE");
        assert_eq!(allow("/v1/leases/{id}/keepalive"), "POST");
    }

    #[test]
    fn each_endpoint_takes_its_documented_parameters() {
        let known = |path, method| super::endpoints().query(path, method);
        let get = |path| known(path, &Method::GET);
        assert_eq!(get("/v1/kv").map(|k| k.contains(&"limit")), Some(true));
        assert_eq!(get("/v1/kv/a/b"), Some(vec!["revision"]));
        assert_eq!(known("/v1/kv/a", &Method::PUT), Some(vec!["lease", "ttl"]));
        assert_eq!(
            known("/v1/kv", &Method::DELETE).map(|k| k.contains(&"all")),
            Some(true)
        );
        assert_eq!(
            get("/v1/watch").map(|k| k.contains(&"start_revision")),
            Some(true)
        );
        assert_eq!(get("/kv").map(|k| k.contains(&"key")), Some(true));
        assert_eq!(get("/nope"), None);
    }
}
