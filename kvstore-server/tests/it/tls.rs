//! HTTPS and WSS with a certificate generated in the test.

use crate::support;

use std::time::Duration;

use futures_util::StreamExt;
use kvstore_client::{Client, Error, Update, WatchOptions};
use support::{TestServer, EMPTY_REVISION};

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct TlsServer {
    server: TestServer,
    cert_pem: String,
    cert_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn tls_server() -> Result<TlsServer, Box<dyn std::error::Error>> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let cert_pem = certified.cert.pem();
    let dir = tempfile::tempdir()?;
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, &cert_pem)?;
    std::fs::write(&key_file, certified.signing_key.serialize_pem())?;
    let server = TestServer::start_with(&[
        "--tls-cert",
        &cert_file.to_string_lossy(),
        "--tls-key",
        &key_file.to_string_lossy(),
    ]);
    Ok(TlsServer {
        server,
        cert_pem,
        cert_file,
        _dir: dir,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_round_trip_with_a_private_ca() -> TestResult {
    let tls = tls_server()?;
    assert!(tls.server.url.starts_with("https://"), "{}", tls.server.url);
    let client = Client::new(&tls.server.url)?.with_ca_pem(tls.cert_pem.as_bytes())?;
    let mut watch = Box::pin(client.watch_with(WatchOptions {
        start_revision: Some(1),
        reconnect: false,
        ..WatchOptions::default()
    }));
    client.put("secure/k", "v").await?;
    assert_eq!(client.get("secure/k").await?, b"v");
    match tokio::time::timeout(Duration::from_secs(10), watch.next()).await? {
        Some(Ok(Update::Event(event))) => {
            assert_eq!(
                (event.key.as_str(), event.revision),
                ("secure/k", EMPTY_REVISION + 1)
            )
        }
        other => panic!("expected the put over wss, got {other:?}"),
    }

    // Without the CA the server's certificate is not trusted.
    let untrusting = Client::new(&tls.server.url)?;
    match untrusting.get("secure/k").await {
        Err(Error::Connection(message)) => {
            assert!(message.to_lowercase().contains("certificate"), "{message}")
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
    // Plain HTTP to the TLS port does not get data, nor an HTTP answer: the
    // connection is refused at the TLS layer.
    let plain = Client::new(&tls.server.url.replacen("https", "http", 1))?;
    match plain.get("secure/k").await {
        Err(Error::Connection(message)) => println!("plain HTTP to the TLS port: {message}"),
        other => panic!("expected a connection error, got {other:?}"),
    }
    // On the wire: what comes back to a plain request is a TLS alert record
    // (content type 21, a TLS 1.x version), or nothing; never an HTTP answer.
    let mut tcp = std::net::TcpStream::connect(tls.server.addr())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    std::io::Write::write_all(
        &mut tcp,
        b"GET /v1/kv/secure/k HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )?;
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tcp, &mut answer);
    assert!(
        answer.is_empty() || (answer[0] == 21 && answer.get(1) == Some(&3)),
        "a plain request to the TLS port got {:?}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

#[test]
fn kv_talks_https_with_a_ca_file() -> TestResult {
    let tls = tls_server()?;
    let kv = support::kv_bin();
    let run = |args: &[&str]| {
        std::process::Command::new(&kv)
            .args(args)
            .env("KV_URL", &tls.server.url)
            .env("KV_CA_FILE", &tls.cert_file)
            .output()
    };
    assert!(run(&["put", "k", "over tls"])?.status.success());
    assert_eq!(run(&["get", "k"])?.stdout, b"over tls");
    let out = std::process::Command::new(&kv)
        .args(["get", "k"])
        .env("KV_URL", &tls.server.url)
        .env_remove("KV_CA_FILE")
        .output()?;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    Ok(())
}

#[test]
fn unreadable_certificates_stop_the_server_with_one_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate")?;
    let out = std::process::Command::new(support::server_bin())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&bogus)
        .arg("--tls-key")
        .arg(&bogus)
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    Ok(())
}

/// etcd's API is served with the same certificate: an etcd client that trusts
/// it reads what HTTPS wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_api_serves_tls_with_the_same_files() -> TestResult {
    let tls = tls_server()?;
    let etcd_url = tls.server.etcd_url.clone().ok_or("no etcd API")?;
    assert!(etcd_url.starts_with("https://"), "{etcd_url}");
    let client = Client::new(&tls.server.url)?.with_ca_pem(tls.cert_pem.as_bytes())?;
    client.put("secure/etcd", "v").await?;
    let options = etcd_client::ConnectOptions::new().with_tls(
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(tls.cert_pem.as_bytes())),
    );
    let mut etcd = etcd_client::Client::connect([etcd_url], Some(options)).await?;
    let got = etcd.get("secure/etcd", None).await?;
    assert_eq!(got.kvs()[0].value(), b"v");
    Ok(())
}
