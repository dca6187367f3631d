//! Several kvstore-server replicas over one store, and clients given several URLs.
//!
//! - A client (SDK and `kv`) given a dead URL and a live one works through the
//!   live one, on both engines; a write whose connection broke after it was sent
//!   is not sent again to the next server, a read is.
//! - Two replicas over one 3-member etcd cluster: a put through one is seen by a
//!   watcher on the other; a watch resumes on the other from its last revision;
//!   killing (or stopping) the replica a watching client (given both URLs) is on,
//!   while a writer keeps writing through the other, loses and repeats nothing.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kvstore_client::{Client, Error as ClientError, Event, EventKind, Update, WatchOptions};
use rstest::rstest;
use support::{Backend, Engine, TestServer, EMPTY_REVISION};
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), BoxError>;

/// Safety net for a wait that a healthy run finishes in well under a second.
const WAIT: Duration = Duration::from_secs(30);

/// A change as a watcher or a writer records it.
type Change = (u64, String, Vec<u8>);

/// The URL of a loopback port nothing listens on (bound, read, released), so
/// connecting to it is refused.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port");
    format!("http://127.0.0.1:{port}")
}

/// The URL of a server that reads each request's head and then drops the
/// connection without answering: one that crashed with the request in hand.
fn dies_with_the_request_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            // Dropped here: closed with nothing answered.
        }
    });
    url
}

/// `kv ARGS` with `KV_URL` (or nothing) in its environment.
fn kv(args: &[&str], env_url: Option<&str>) -> Output {
    let mut command = Command::new(support::kv_bin());
    command.args(args).env_remove("KV_URL");
    if let Some(url) = env_url {
        command.env("KV_URL", url);
    }
    command.stdin(Stdio::null()).output().expect("kv runs")
}

fn stdout_of(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The next event of a watch, skipping what is not one.
async fn next_event(updates: &mut kvstore_client::Watch) -> Result<Event, BoxError> {
    loop {
        let update = tokio::time::timeout(WAIT, updates.next())
            .await
            .map_err(|_| format!("no event within {WAIT:?}"))?
            .ok_or("the watch ended")??;
        if let Update::Event(event) = update {
            return Ok(event);
        }
    }
}

fn change(event: &Event) -> Change {
    (event.revision, event.key.clone(), event.value.clone())
}

// ---------------------------------------------------------------------------
// One live server behind a dead URL, on both engines
// ---------------------------------------------------------------------------

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_watches_move_past_a_server_that_cannot_be_reached(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let dead = dead_url();
    let client = Client::new(&format!("{dead},{}", server.url))?;
    assert_eq!(client.urls(), [dead.clone(), server.url.clone()]);
    assert_eq!(client.url(), dead, "the first URL is used first");

    // A watch opened before any request finds the live server by itself.
    let from = Client::new(&server.url)?.health().await? + 1;
    let mut watch = client.watch_with(WatchOptions {
        prefix: "fo/".into(),
        start_revision: Some(from),
        ..WatchOptions::default()
    });
    let put = client.put("fo/a", "one").await?;
    assert_eq!(put.revision, from, "the put went to the live server");
    assert_eq!(client.url(), server.url, "the client keeps the live server");
    assert_eq!(client.get("fo/a").await?, b"one");
    assert_eq!(client.list_all("fo/").await?.len(), 1);
    assert_eq!(client.health().await?, put.revision);
    let event = next_event(&mut watch).await?;
    assert_eq!(
        change(&event),
        (put.revision, "fo/a".into(), b"one".to_vec())
    );

    // A fresh client, the dead URL first again: each kind of request gets there.
    let fresh = Client::with_urls([dead.as_str(), server.url.as_str()])?;
    assert_eq!(fresh.get_entry("fo/a").await?.mod_revision, put.revision);
    let fresh = Client::with_urls([dead.as_str(), server.url.as_str()])?;
    let deleted = fresh.delete("fo/a").await?;
    assert_eq!(deleted.revision, put.revision + 1);
    let event = next_event(&mut watch).await?;
    assert_eq!(
        (event.kind, event.revision),
        (EventKind::Delete, deleted.revision)
    );

    // Only dead servers: a connection error naming how many were tried.
    let nowhere = Client::new(&format!("{dead},{}", dead_url()))?;
    match nowhere.get("fo/a").await {
        Err(ClientError::Connection(message)) => {
            assert!(message.contains("none of 2 servers"), "{message}")
        }
        other => panic!("expected a connection error, got {other:?}"),
    }

    // The CLI: comma-separated, repeated, and through KV_URL.
    let both = format!("{dead},{}", server.url);
    let out = kv(&["--url", &both, "put", "fo/cli", "v1"], None);
    stdout_of(&out, "kv --url dead,live put");
    let out = kv(
        &["--url", &dead, "--url", &server.url, "get", "fo/cli"],
        None,
    );
    assert_eq!(stdout_of(&out, "kv --url dead --url live get"), "v1");
    let out = kv(&["get", "fo/cli"], Some(&both));
    assert_eq!(stdout_of(&out, "KV_URL=dead,live kv get"), "v1");
    let out = kv(&["--url", &dead, "get", "fo/cli"], None);
    assert_eq!(out.status.code(), Some(3), "a dead server alone: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
    Ok(())
}

/// A put whose connection broke after it was sent is not sent to the next server
/// (it may have been applied: sending it again would write it twice); a read is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_may_have_arrived_is_not_sent_again_a_read_is() -> TestResult {
    let Some(backend) = Backend::new(Engine::Sled) else {
        return Ok(());
    };
    let server = TestServer::on(&backend, &[]);
    let dying = dies_with_the_request_url();
    let live = Client::new(&server.url)?;

    let client = Client::with_urls([dying.as_str(), server.url.as_str()])?;
    match client.put("once/a", "x").await {
        Err(ClientError::Connection(message)) => assert!(
            message.contains("may or may not have been applied"),
            "{message}"
        ),
        other => panic!("expected a connection error, got {other:?}"),
    }
    assert!(
        matches!(live.get("once/a").await, Err(ClientError::NotFound { .. })),
        "the put must not have been sent to the second server"
    );
    assert_eq!(
        live.health().await?,
        EMPTY_REVISION,
        "nothing was written anywhere"
    );

    live.put("once/a", "y").await?;
    let client = Client::with_urls([dying.as_str(), server.url.as_str()])?;
    assert_eq!(client.get("once/a").await?, b"y", "a read moves on");
    assert_eq!(client.url(), server.url);
    // Now on the live server, writes go there directly.
    assert_eq!(
        client.put("once/a", "z").await?.revision,
        EMPTY_REVISION + 2
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Two replicas over one 3-member etcd cluster
// ---------------------------------------------------------------------------

/// A 3-member etcd cluster and two replicas on it, or `None` (said skipped).
fn two_replicas() -> Option<(Backend, TestServer, TestServer)> {
    let backend = Backend::with_members(Engine::Etcd, 3)?;
    let a = TestServer::on(&backend, &[]);
    let b = TestServer::on(&backend, &[]);
    Some((backend, a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_through_one_replica_is_seen_by_a_watcher_on_the_other() -> TestResult {
    let Some((_backend, a, b)) = two_replicas() else {
        return Ok(());
    };
    let on_a = Client::new(&a.url)?;
    let on_b = Client::new(&b.url)?;
    let from = on_b.health().await? + 1;
    let mut watch = on_b.watch_with(WatchOptions {
        prefix: "x/".into(),
        start_revision: Some(from),
        ..WatchOptions::default()
    });
    let mut initial = on_b.watch_with(WatchOptions {
        prefix: "x/".into(),
        initial: true,
        ..WatchOptions::default()
    });
    // The initial state comes first: nothing yet.
    let first = tokio::time::timeout(WAIT, initial.next()).await?;
    assert!(
        matches!(first, Some(Ok(Update::Synced { .. }))),
        "{first:?}"
    );

    let put = on_a.put("x/k", "through A").await?;
    assert_eq!(put.revision, from);
    let event = next_event(&mut watch).await?;
    assert_eq!(
        change(&event),
        (put.revision, "x/k".into(), b"through A".to_vec())
    );
    let event = next_event(&mut initial).await?;
    assert_eq!(event.revision, put.revision);
    // Reads on B see it too, at the same revisions.
    let entry = on_b.get_entry("x/k").await?;
    assert_eq!(
        (entry.mod_revision, entry.value),
        (put.revision, b"through A".to_vec())
    );
    assert_eq!(on_b.health().await?, on_a.health().await?);

    let deleted = on_b.delete("x/k").await?;
    let mut on_a_watch = on_a.watch_with(WatchOptions {
        prefix: "x/".into(),
        start_revision: Some(from),
        ..WatchOptions::default()
    });
    let history = [
        next_event(&mut on_a_watch).await?,
        next_event(&mut on_a_watch).await?,
    ];
    assert_eq!(
        history.map(|e| (e.kind, e.revision)),
        [
            (EventKind::Put, put.revision),
            (EventKind::Delete, deleted.revision)
        ],
        "A replays what B wrote, by the cluster's revisions"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_on_the_other_replica_from_its_last_revision() -> TestResult {
    let Some((_backend, a, b)) = two_replicas() else {
        return Ok(());
    };
    let on_a = Client::new(&a.url)?;
    let from = on_a.health().await? + 1;
    let mut written = Vec::new();
    for n in 0..6 {
        let value = format!("v{n}").into_bytes();
        let put = on_a.put(&format!("r/{n}"), value.clone()).await?;
        written.push((put.revision, format!("r/{n}"), value));
    }

    // Three changes through A, then the watch ends.
    let mut watch = on_a.watch_with(WatchOptions {
        prefix: "r/".into(),
        start_revision: Some(from),
        reconnect: false,
        ..WatchOptions::default()
    });
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(change(&next_event(&mut watch).await?));
    }
    drop(watch);
    let last = seen[2].0;

    // On B, from the revision after the last one delivered.
    let on_b = Client::new(&b.url)?;
    let mut watch = on_b.watch_with(WatchOptions {
        prefix: "r/".into(),
        start_revision: Some(last + 1),
        ..WatchOptions::default()
    });
    for _ in 0..3 {
        seen.push(change(&next_event(&mut watch).await?));
    }
    let put = on_a.put("r/after", "live").await?;
    written.push((put.revision, "r/after".into(), b"live".to_vec()));
    seen.push(change(&next_event(&mut watch).await?));
    assert_eq!(
        seen, written,
        "every change once, in order, across replicas"
    );
    Ok(())
}

/// The next update forwarded from a watch.
async fn next(
    updates: &mut mpsc::UnboundedReceiver<Result<Update, ClientError>>,
) -> Result<Update, BoxError> {
    let update = tokio::time::timeout(WAIT, updates.recv())
        .await
        .map_err(|_| format!("no update within {WAIT:?}"))?
        .ok_or("the watch ended")??;
    Ok(update)
}

/// Puts `w/N` through `client` for N = 0, 1, ... until `stop`, returning what was
/// acknowledged.
async fn writer(client: Client, stop: Arc<AtomicBool>) -> Result<Vec<Change>, ClientError> {
    let mut acked = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w/{n:05}");
        let value = format!("value {n}").into_bytes();
        let put = client.put(&key, value.clone()).await?;
        acked.push((put.revision, key, value));
        n += 1;
    }
    Ok(acked)
}

/// How the replica a client is on goes away.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGKILL: connections just break.
    Kill,
    /// SIGTERM: a graceful stop (watchers are told `shutting_down`).
    Terminate,
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_the_replica_a_watching_client_is_on_loses_and_repeats_nothing(
    #[values(Stop::Kill, Stop::Terminate)] stop_how: Stop,
) -> TestResult {
    let Some((_backend, mut a, b)) = two_replicas() else {
        return Ok(());
    };
    let watching = Client::with_urls([a.url.as_str(), b.url.as_str()])?;
    let from = watching.health().await? + 1;
    assert_eq!(watching.url(), a.url, "the watching client starts on A");

    // The watch's updates, as they come, to this task.
    let (tx, mut updates) = mpsc::unbounded_channel();
    let mut watch = watching.watch_with(WatchOptions {
        prefix: "w/".into(),
        start_revision: Some(from),
        ..WatchOptions::default()
    });
    let forward = tokio::spawn(async move {
        while let Some(update) = watch.next().await {
            let end = update.is_err();
            if tx.send(update).is_err() || end {
                return;
            }
        }
    });

    // A writer through B alone, before, during and after the kill.
    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(writer(Client::new(&b.url)?, stop.clone()));

    let mut seen: Vec<Change> = Vec::new();
    let mut reconnects = Vec::new();
    while seen.len() < 30 {
        match next(&mut updates).await? {
            Update::Event(event) => seen.push(change(&event)),
            other => panic!("before the kill: {other:?}"),
        }
    }
    let stopped = std::time::Instant::now();
    match stop_how {
        Stop::Kill => a.kill(),
        // Its exit is awaited below, while the watch moves on.
        Stop::Terminate => a.signal_term(),
    }
    let at_kill = seen.len();
    let mut moved = false;
    // Until 30 more changes have come after the watch moved to B.
    while reconnects.is_empty() || seen.len() < at_kill + 30 {
        match next(&mut updates).await? {
            Update::Event(event) => {
                if !reconnects.is_empty() && !moved {
                    moved = true;
                    let after = stopped.elapsed();
                    eprintln!("{stop_how:?}: first change through B {after:?} after the stop");
                }
                seen.push(change(&event))
            }
            Update::Reconnecting { reason, .. } => reconnects.push(reason),
            other => panic!("after the kill: {other:?}"),
        }
    }
    if let Stop::Terminate = stop_how {
        let status = a.wait_exit(WAIT).ok_or("replica A did not exit")?;
        assert!(status.success(), "a graceful stop: {status}");
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = writing.await??;
    let on_b = Client::new(&b.url)?;
    let end = on_b.put("w/end", "end").await?;
    acked.push((end.revision, "w/end".into(), b"end".to_vec()));
    while seen.last().map(|c| c.1.as_str()) != Some("w/end") {
        if let Update::Event(event) = next(&mut updates).await? {
            seen.push(change(&event));
        }
    }
    eprintln!("the watch reconnected: {reconnects:?}");
    assert_eq!(watching.url(), b.url, "the watching client moved to B");
    assert_eq!(
        seen.len(),
        acked.len(),
        "as many changes as acknowledged puts"
    );
    assert_eq!(seen, acked, "every acknowledged put once, in order");
    forward.abort();

    // `kv` with the dead replica first works through the live one.
    let both = format!("{},{}", a.url, b.url);
    stdout_of(
        &kv(&["--url", &both, "put", "w/cli", "cli"], None),
        "kv put",
    );
    let out = kv(&["--url", &both, "get", "w/cli"], None);
    assert_eq!(stdout_of(&out, "kv get"), "cli");
    Ok(())
}
