//! Generates the server side of etcd's v3 gRPC API from etcd's `.proto` files in
//! `proto/` (as the etcd-client crate ships them; the server code only: this crate
//! serves the API, its tests use etcd-client as a client).

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let generated = tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_protos(
            &[
                "proto/etcd/api/etcdserverpb/rpc.proto",
                "proto/etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
                "proto/etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
            ],
            &["proto"],
        );
    if let Err(e) = generated {
        // Without the generated code nothing builds: say why, once, plainly.
        println!("cargo:warning=cannot generate etcd's gRPC code: {e}");
        std::process::exit(1);
    }
}
