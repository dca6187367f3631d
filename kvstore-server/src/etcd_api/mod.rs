//! etcd's v3 gRPC API over the same store: `etcdctl` and every etcd client
//! library (clientv3, jetcd, python-etcd3, etcd-client) work against kvstore.
//!
//! Served on its own address (`--etcd-api-listen`, port 2379 by default) by tonic,
//! from code generated from etcd's `.proto` files. Every service speaks to the
//! store only through [`Storage`], as the HTTP routes do, so a put through
//! `etcdctl` is seen by every HTTP, SSE and Socket.IO watcher at the same revision,
//! and the other way round.
//!
//! | module | etcd service |
//! | --- | --- |
//! | `kv` | KV: Range, Put, DeleteRange, Txn, Compact |
//! | `watch` | Watch: many watches on one stream |
//! | `lease` | Lease: Grant, Revoke, KeepAlive, TimeToLive, Leases |
//! | `maintenance` | Maintenance and Cluster: Status, Alarm, MemberList, ... |
//! | `auth` | Auth: Authenticate with a token of the access file |
//! | `lock` | Lock and Election: `etcdctl lock` and `etcdctl elect` |
//! | `keys` | etcd's key ranges over our prefixes |
//! | `status` | our errors as etcd's gRPC codes and messages |

/// Methods of an etcd service that kvstore does not serve, each answering
/// `Unimplemented` with why (written out as `#[tonic::async_trait]` would write
/// them: that attribute does not look inside macro calls).
macro_rules! not_served_rpcs {
    ($why:expr; $($method:ident($request:ty) -> $response:ty;)*) => {
        $(
            fn $method<'life0, 'async_trait>(
                &'life0 self,
                _request: tonic::Request<$request>,
            ) -> std::pin::Pin<
                Box<
                    dyn std::future::Future<
                            Output = Result<tonic::Response<$response>, tonic::Status>,
                        > + Send
                        + 'async_trait,
                >,
            >
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(std::future::ready(Err(super::status::not_served(
                    stringify!($method),
                    $why,
                ))))
            }
        )*
    };
}

mod auth;
mod authority;
mod keys;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod pb;
mod status;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use kvstore_core::Storage;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Status};

use self::pb::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
    ResponseHeader,
};
use self::pb::v3electionpb::election_server::ElectionServer;
use self::pb::v3lockpb::lock_server::LockServer;
use crate::auth::{AccessControl, Caller};

/// The cluster id in every header: this server is a cluster of one.
const CLUSTER_ID: u64 = 0x6b76_7374_6f72_6531;
/// The member id in every header and in `MemberList`.
const MEMBER_ID: u64 = 0x6b76_7374_6f72_6501;

/// What every service shares.
pub(crate) struct Api {
    store: Arc<dyn Storage>,
    access: Option<Arc<AccessControl>>,
    /// The URL clients reach this API on, for `MemberList`.
    client_url: String,
    /// Ops a transaction may carry (etcd's `--max-txn-ops`).
    max_txn_ops: usize,
}

impl Api {
    /// etcd's response header at `revision`.
    fn header(&self, revision: u64) -> Option<ResponseHeader> {
        header(revision)
    }

    /// The header at the store's current revision.
    fn header_now(&self) -> Option<ResponseHeader> {
        self.header(self.store.revision())
    }

    /// Who is calling: everyone without an access file, else the bearer of the
    /// token in the call's `token` metadata (what `Authenticate` answered), as
    /// etcd's clients send it.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let Some(access) = &self.access else {
            return Ok(Caller::Open);
        };
        let token = request
            .metadata()
            .get("token")
            .or_else(|| request.metadata().get("authorization"))
            .ok_or_else(|| Status::invalid_argument("etcdserver: user name is empty"))?;
        let token = token
            .to_str()
            .map_err(|_| Status::unauthenticated("etcdserver: invalid auth token"))?;
        let token = token.strip_prefix("Bearer ").unwrap_or(token);
        access
            .role_of(token)
            .map(Caller::Token)
            .ok_or_else(|| Status::unauthenticated("etcdserver: invalid auth token"))
    }
}

/// etcd's response header at `revision`.
fn header(revision: u64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: CLUSTER_ID,
        member_id: MEMBER_ID,
        revision: keys::signed(revision),
        raft_term: 1,
    })
}

/// A stream of answers, as the services hand their streaming calls' to tonic.
pub(crate) type ServerStream<T> =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

/// The answers sent on `rx`, as a stream that ends once every sender is gone.
pub(crate) fn stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<Result<T, Status>>,
) -> ServerStream<T> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|answer| (answer, rx))
    }))
}

/// Where and how the API is served.
pub struct EtcdApiConfig {
    /// The socket, bound already (so a taken port fails the start, not later).
    pub listener: std::net::TcpListener,
    /// The server's certificate chain and key (PEM), for TLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Ops a transaction may carry.
    pub max_txn_ops: usize,
}

/// The URL a client reaches `addr` on (the loopback address for a wildcard one).
fn client_url(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

/// Serves etcd's API for `store` until `stop` completes.
pub async fn serve(
    config: EtcdApiConfig,
    store: Arc<dyn Storage>,
    access: Option<Arc<AccessControl>>,
    stop: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    config.listener.set_nonblocking(true)?;
    let addr = config.listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(config.listener)?;
    let api = Arc::new(Api {
        store,
        access,
        client_url: client_url(addr, config.tls.is_some()),
        max_txn_ops: config.max_txn_ops,
    });
    let mut server = tonic::transport::Server::builder();
    let tls = config.tls.is_some();
    if let Some((cert, key)) = config.tls {
        server = server
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .map_err(std::io::Error::other)?;
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // The :authority of etcdctl 3.4 mended on plaintext connections (under TLS
    // the bytes here are encrypted; there, give etcdctl HOST:PORT).
    let incoming = futures_util::StreamExt::map(incoming, move |conn| {
        conn.map(|tcp| match tls {
            false => authority::FixAuthority::new(tcp),
            true => authority::FixAuthority::passing(tcp),
        })
    });
    server
        .add_service(KvServer::from_arc(api.clone()))
        .add_service(WatchServer::new(watch::WatchService::new(api.clone())))
        .add_service(LeaseServer::from_arc(api.clone()))
        .add_service(MaintenanceServer::from_arc(api.clone()))
        .add_service(ClusterServer::from_arc(api.clone()))
        .add_service(LockServer::from_arc(api.clone()))
        .add_service(ElectionServer::from_arc(api.clone()))
        .add_service(AuthServer::from_arc(api))
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .map_err(std::io::Error::other)
}
