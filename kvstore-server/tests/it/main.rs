//! The server's integration tests, one binary with a module per area (linking the
//! server and its dependencies once instead of once per area). Each runs the real
//! server: the `kvstore-server` binary on an ephemeral port with a temp data dir
//! (`support`), or the app in-process. `cargo test -p kvstore-server --test it
//! api::` runs one area.

use kvstore_testkit as support;

mod api;
mod app;
mod auth;
mod console;
mod docker;
mod docs;
mod etcd_api;
mod etcd_faults;
mod etcd_shared;
mod etcdctl;
mod fuzz;
mod history;
mod leases;
mod lifecycle;
mod metrics;
mod openapi;
mod promises;
mod replicas;
mod snapshot;
mod socketio;
mod tls;
mod txn;
mod watch;
