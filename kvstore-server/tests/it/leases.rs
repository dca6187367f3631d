//! Leases and TTL keys, on both engines, against the server binary: expiry seen by
//! watchers, keep-alives, revoke, a restart with live leases, and bad input.
//!
//! Nothing sleeps to synchronise: tests wait for the watch to show the deletions.
//! A lease of 2 s (etcd's minimum) keeps the runs short; where time must pass, a
//! key of a lease of its own is the clock, and its deletion the event waited for.

use crate::support;

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kvstore_client::{Client, Error as ClientError, ErrorCode, Event, EventKind, Update, Watch};
use kvstore_client::{Lease, WatchOptions};
use rstest::rstest;
use serde_json::{json, Value};
use support::{Backend, Engine, TestServer};

type BoxError = Box<dyn std::error::Error>;
type TestResult = Result<(), BoxError>;

/// Safety net for every wait; a healthy run never gets near it.
const WAIT: Duration = Duration::from_secs(15);

/// The TTL of the tests' leases, in seconds.
const TTL: u64 = 2;

async fn within<T>(what: &str, f: impl Future<Output = T>) -> Result<T, BoxError> {
    tokio::time::timeout(WAIT, f)
        .await
        .map_err(|_| format!("timed out after {WAIT:?} waiting for {what}").into())
}

/// A watch of `prefix` from the store's next revision on.
async fn watch_from_now(client: &Client, prefix: &str) -> Result<Watch, BoxError> {
    let from = client.health().await? + 1;
    Ok(client.watch_with(WatchOptions {
        prefix: prefix.into(),
        start_revision: Some(from),
        ..WatchOptions::default()
    }))
}

/// The next change the watch shows.
async fn next_event(watch: &mut Watch) -> Result<Event, BoxError> {
    within("a change", async {
        loop {
            match watch.next().await {
                Some(Ok(Update::Event(event))) => return Ok(event),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err("the watch ended".into()),
            }
        }
    })
    .await?
}

/// The code of a client error answered by the server.
fn code_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Option<ErrorCode> {
    match result {
        Err(e) => e.code(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_key_goes_after_its_ttl_in_one_delete(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let mut watch = watch_from_now(&client, "ttl/").await?;

    let asked = Instant::now();
    let put = client.put_with_ttl("ttl/session", "alive", TTL).await?;
    let entry = client.get_entry("ttl/session").await?;
    let lease = entry.lease.ok_or("the entry shows no lease")?;
    let res = reqwest::Client::new()
        .get(format!("{}/v1/kv/ttl/session", server.url))
        .send()
        .await?;
    assert_eq!(
        res.headers()
            .get("x-kv-lease")
            .and_then(|v| v.to_str().ok()),
        Some(lease.to_string().as_str())
    );
    let info = client.lease(lease).await?;
    assert_eq!(info.keys, ["ttl/session"]);
    assert!(
        info.ttl <= info.granted_ttl && info.granted_ttl >= TTL,
        "{info:?}"
    );

    let created = next_event(&mut watch).await?;
    assert_eq!(
        (created.kind, created.revision),
        (EventKind::Put, put.revision)
    );
    assert_eq!(created.lease, Some(lease));
    let gone = next_event(&mut watch).await?;
    let after = asked.elapsed();
    assert_eq!(
        (gone.kind, gone.key.as_str()),
        (EventKind::Delete, "ttl/session")
    );
    let granted = Duration::from_secs(info.granted_ttl);
    assert!(
        after >= granted && after <= granted + Duration::from_secs(1),
        "the key went {after:?} after its put, with a TTL of {granted:?}"
    );
    assert!(matches!(
        client.get("ttl/session").await,
        Err(ClientError::NotFound { .. })
    ));
    assert_eq!(
        code_of(client.lease(lease).await),
        Some(ErrorCode::LeaseNotFound)
    );
    // One delete: the next change the watch shows is the next write.
    let marker = client.put("ttl/marker", "x").await?;
    let next = next_event(&mut watch).await?;
    assert_eq!(
        (next.key.as_str(), next.revision),
        ("ttl/marker", marker.revision)
    );
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_key_stays(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let lease = client.grant(TTL).await?;
    client
        .put_with_lease("alive/worker", "busy", lease.id)
        .await?;
    let alive = client.keep_alive(lease);

    // The clock: a key on a lease of twice the TTL, not kept alive.
    let mut watch = watch_from_now(&client, "alive/clock").await?;
    client
        .put_with_ttl("alive/clock", "tick", 2 * lease.ttl)
        .await?;
    let put = next_event(&mut watch).await?;
    assert_eq!(put.kind, EventKind::Put);
    let gone = next_event(&mut watch).await?;
    assert_eq!(
        (gone.kind, gone.key.as_str()),
        (EventKind::Delete, "alive/clock")
    );

    assert_eq!(client.get("alive/worker").await?, b"busy");
    assert!(!alive.is_lost());
    let info = client.lease(lease.id).await?;
    assert_eq!(info.keys, ["alive/worker"]);
    alive.revoke().await?;
    assert!(matches!(
        client.get("alive/worker").await,
        Err(ClientError::NotFound { .. })
    ));
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_deletes_every_key_of_the_lease_at_one_revision(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let lease = client.grant(60).await?;
    for key in ["rv/a", "rv/b", "rv/c", "rv/detached"] {
        client.put_with_lease(key, "v", lease.id).await?;
    }
    // Put again without the lease: permanent again.
    client.put("rv/detached", "mine").await?;
    client.put("rv/other", "permanent").await?;
    let info = client.lease(lease.id).await?;
    assert_eq!(info.keys, ["rv/a", "rv/b", "rv/c"]);
    assert_eq!(info.granted_ttl, 60);

    let mut watch = watch_from_now(&client, "rv/").await?;
    let revoked = client.revoke(lease.id).await?;
    let mut deleted = Vec::new();
    for _ in 0..3 {
        let event = next_event(&mut watch).await?;
        assert_eq!(event.kind, EventKind::Delete, "{event:?}");
        assert_eq!(event.revision, revoked.revision, "{event:?}");
        deleted.push(event.key);
    }
    deleted.sort();
    assert_eq!(deleted, ["rv/a", "rv/b", "rv/c"]);
    assert_eq!(client.get("rv/detached").await?, b"mine");
    assert_eq!(client.get("rv/other").await?, b"permanent");
    assert_eq!(client.list_all("rv/").await?.len(), 2);
    assert_eq!(
        code_of(client.revoke(lease.id).await),
        Some(ErrorCode::LeaseNotFound)
    );
    assert_eq!(
        code_of(client.keep_alive_once(lease.id).await),
        Some(ErrorCode::LeaseNotFound)
    );
    // Nothing else happened: the next change is the next write.
    let marker = client.put("rv/marker", "x").await?;
    assert_eq!(next_event(&mut watch).await?.revision, marker.revision);
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_live_leases_then_expires_them(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(backend) = Backend::new(engine) else {
        return Ok(());
    };
    let server = TestServer::on(&backend, &[]);
    let client = Client::new(&server.url)?;
    let lease: Lease = client.grant(3).await?;
    client.put_with_lease("restart/a", "1", lease.id).await?;
    client.put_with_lease("restart/b", "2", lease.id).await?;
    client.put("restart/permanent", "3").await?;
    drop(server);

    let server = TestServer::on(&backend, &[]);
    let client = Client::new(&server.url)?;
    let started = Instant::now();
    let mut watch = watch_from_now(&client, "restart/").await?;
    assert_eq!(client.get("restart/a").await?, b"1");
    let info = client.lease(lease.id).await?;
    assert_eq!(info.keys, ["restart/a", "restart/b"]);
    let first = next_event(&mut watch).await?;
    let second = next_event(&mut watch).await?;
    for event in [&first, &second] {
        assert_eq!(event.kind, EventKind::Delete, "{event:?}");
    }
    assert_eq!(first.revision, second.revision);
    assert!(
        started.elapsed() <= Duration::from_secs(info.granted_ttl + 1),
        "expired {:?} after the restart",
        started.elapsed()
    );
    assert_eq!(client.get("restart/permanent").await?, b"3");
    assert!(client.list_all("restart/").await?.len() == 1);
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lease_input_is_refused_and_changes_nothing(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let before = client.health().await?;
    let url = |path: &str| format!("{}{path}", server.url);

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            http.post(url("/v1/leases")).json(&json!({"ttl": 0})),
            400,
            "invalid_ttl",
        ),
        (
            http.post(url("/v1/leases"))
                .json(&json!({"ttl": 10_000_000_000u64})),
            400,
            "invalid_ttl",
        ),
        (
            http.post(url("/v1/leases")).json(&json!({"ttl": -5})),
            400,
            "invalid_ttl",
        ),
        (
            http.post(url("/v1/leases")).json(&json!({"ttl": 2.5})),
            400,
            "invalid_ttl",
        ),
        (
            http.post(url("/v1/leases")).json(&json!({"ttl": "10"})),
            400,
            "invalid_request",
        ),
        (
            http.post(url("/v1/leases"))
                .json(&json!({"ttl": 5, "x": 1})),
            400,
            "invalid_request",
        ),
        (
            http.post(url("/v1/leases")).body("[30]"),
            400,
            "invalid_request",
        ),
        (
            http.post(url("/v1/leases")).body("{"),
            400,
            "invalid_request",
        ),
        (
            http.post(url("/v1/leases/424242/keepalive")),
            404,
            "lease_not_found",
        ),
        (http.get(url("/v1/leases/424242")), 404, "lease_not_found"),
        (
            http.delete(url("/v1/leases/424242")),
            404,
            "lease_not_found",
        ),
        (http.get(url("/v1/leases/abc")), 400, "invalid_request"),
        (
            http.put(url("/v1/kv/bad/a?lease=424242")).body("v"),
            404,
            "lease_not_found",
        ),
        (
            http.put(url("/v1/kv/bad/a?lease=x")).body("v"),
            400,
            "invalid_request",
        ),
        (
            http.put(url("/v1/kv/bad/a?ttl=0")).body("v"),
            400,
            "invalid_ttl",
        ),
        (
            http.put(url("/v1/kv/bad/a?ttl=abc")).body("v"),
            400,
            "invalid_ttl",
        ),
        (
            http.put(url("/v1/kv/bad/a?ttl=99999999999")).body("v"),
            400,
            "invalid_ttl",
        ),
        (
            http.put(url("/v1/kv/bad/a?ttl=5&lease=1")).body("v"),
            400,
            "invalid_request",
        ),
    ];
    for (request, status, code) in cases {
        let request = request.build()?;
        let what = format!("{} {}", request.method(), request.url());
        let res = http.execute(request).await?;
        assert_eq!(res.status().as_u16(), status, "{what}");
        let body: Value = res.json().await?;
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
    }
    assert!(matches!(
        client.get("bad/a").await,
        Err(ClientError::NotFound { .. })
    ));
    assert_eq!(client.health().await?, before, "nothing was written");
    Ok(())
}
