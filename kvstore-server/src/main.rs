use std::net::TcpListener;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use kvstore_server::Options;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let options = Options::parse();
    match start(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvstore-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(options: &Options) -> anyhow::Result<()> {
    let store = options
        .open_store()
        .with_context(|| match options.etcd_endpoints.is_empty() {
            true => format!("cannot open the data dir {}", options.data_dir.display()),
            false => "cannot connect to the etcd cluster".to_string(),
        })?;
    let access = options
        .access_file
        .as_deref()
        .map(kvstore_server::auth::AccessControl::load)
        .transpose()?;
    let tls = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => Some(kvstore_server::tls::server_config(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = TcpListener::bind(options.listen)
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let address = listener.local_addr()?;
    let etcd_api = options
        .etcd_api_listen
        .0
        .map(|at| {
            TcpListener::bind(at).with_context(|| {
                format!(
                    "cannot listen on {at} for etcd's API (--etcd-api-listen, \
                     KVSTORE_ETCD_API_LISTEN; `--etcd-api-listen off` turns it off)"
                )
            })
        })
        .transpose()?;
    let etcd_address = etcd_api.as_ref().map(TcpListener::local_addr).transpose()?;
    log::info!(
        "listening on {address}; engine {}, {}",
        store.engine(),
        options.describe_store(),
    );
    match &access {
        Some(access) => log::info!("access control on: {} tokens", access.len()),
        None if !address.ip().is_loopback() => log::warn!(
            "no --access-file: anyone who reaches {address} can read and write every key"
        ),
        None => {}
    }
    actix_web::rt::System::new().block_on(async move {
        let stop = kvstore_server::shutdown_signal()?;
        // Printed once the store is open, the socket bound and the signal handlers
        // installed, so scripts and tests can wait for this line instead of polling.
        if let Some(etcd_address) = etcd_address {
            println!("kvstore-server etcd API on {scheme}://{etcd_address}");
        }
        println!("kvstore-server listening on {scheme}://{address}");
        kvstore_server::run(listener, etcd_api, store, access, tls, options, stop).await
    })?;
    Ok(())
}
