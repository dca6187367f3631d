//! The etcd engine under faults: a 3-member cluster on loopback, started and
//! stopped by the test, members killed with SIGKILL while writers and watchers
//! run through one kvstore server.
//!
//! What must hold: every acknowledged write reads back at its revision; each
//! watcher delivers exactly the history under its prefix (no gap, no duplicate);
//! writes go on once a new leader is elected; without a quorum requests get clear
//! `503 storage_unavailable` answers naming etcd, and service resumes when members
//! return.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kvstore_client::{Client, Error as ClientError, Update, WatchOptions};
use support::{Backend, Engine, TestServer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), BoxError>;

/// Safety net for a wait that a healthy run finishes in seconds.
const WAIT: Duration = Duration::from_secs(60);

/// A change as a watcher or the history shows it.
type Change = (u64, String, Vec<u8>);

/// An acknowledged put.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    value: Vec<u8>,
    revision: u64,
}

/// What one writer did.
struct Written {
    acked: Vec<Acked>,
    failures: usize,
    /// When its writes succeeded, to see how soon they went on after a fault.
    successes: Vec<Instant>,
}

/// Puts `prefix/N` for N = 0, 1, ... until `stop`, each key once, counting what
/// was acknowledged; a failed put (its outcome unknown) is not retried.
async fn writer(client: Client, prefix: String, stop: Arc<AtomicBool>) -> Written {
    let mut written = Written {
        acked: Vec::new(),
        failures: 0,
        successes: Vec::new(),
    };
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{prefix}{n:05}");
        let value = format!("value {n} of {prefix}").into_bytes();
        match client.put(&key, value.clone()).await {
            Ok(put) => {
                written.acked.push(Acked {
                    key,
                    value,
                    revision: put.revision,
                });
                written.successes.push(Instant::now());
            }
            Err(_) => {
                written.failures += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        n += 1;
    }
    written
}

/// Every change under `prefix` from `start`, through the SDK's watch, until the
/// key `end` appears (a sentinel written last).
async fn watch_until(
    client: Client,
    prefix: String,
    start: u64,
    end: String,
) -> Result<Vec<Change>, BoxError> {
    let mut updates = client.watch_with(WatchOptions {
        prefix,
        start_revision: Some(start),
        ..WatchOptions::default()
    });
    let mut seen = Vec::new();
    loop {
        let update = tokio::time::timeout(WAIT, updates.next())
            .await
            .map_err(|_| format!("no change within {WAIT:?} after {} changes", seen.len()))?
            .ok_or("the watch ended")??;
        if let Update::Event(event) = update {
            let done = event.key == end;
            seen.push((event.revision, event.key, event.value));
            if done {
                return Ok(seen);
            }
        }
    }
}

/// Retries `f` until it succeeds or `within` has passed.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> Result<T, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(answer) => return Ok(answer),
            Err(e) if Instant::now() < deadline => {
                log_line(&format!("{what} not yet: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("{what}: {e}").into()),
        }
    }
}

fn log_line(line: &str) {
    eprintln!("[test] {line}");
}

/// Kills the leader under load and brings it back: nothing acknowledged is lost,
/// every watcher delivers the history exactly, and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_loses_nothing_and_writes_go_on() -> TestResult {
    let Some(mut backend) = Backend::with_members(Engine::Etcd, 3) else {
        return Ok(());
    };
    let server = TestServer::on(&backend, &[]);
    let client = Client::new(&server.url)?;
    let first = client.health().await? + 1;

    // Watchers: one from the start of the history (an etcd watch of its own), one
    // on every key from now (fed by the server's copy).
    let live = tokio::spawn(watch_until(
        client.clone(),
        String::new(),
        first,
        "w0/end".into(),
    ));
    let history = tokio::spawn(watch_until(
        client.clone(),
        "w1/".into(),
        1,
        "w1/end".into(),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(writer(client.clone(), format!("w{w}/"), stop.clone())))
        .collect();
    // Some writes before the fault.
    eventually("writes before the fault", WAIT, || async {
        match client.list("w0/", None, Some(20)).await {
            Ok(page) if page.entries.len() >= 20 => Ok(()),
            Ok(_) => Err(ClientError::Connection("not yet".into())),
            Err(e) => Err(e),
        }
    })
    .await?;

    let cluster = backend.cluster().ok_or("an etcd cluster")?;
    let leader = cluster.leader().ok_or("no leader")?;
    let killed = Instant::now();
    cluster.kill(leader);
    log_line(&format!("killed the leader, member {leader}"));
    // Writes go on: every writer succeeds again after the kill.
    let resumed = eventually("a write after the kill", WAIT, || async {
        client.put("probe/after-kill", "x").await
    })
    .await?;
    log_line(&format!(
        "a write succeeded {:?} after the kill, at revision {}",
        killed.elapsed(),
        resumed.revision
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart(leader)?;
    cluster.wait_healthy(WAIT)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acked: Vec<Acked> = Vec::new();
    let mut failures = 0;
    for (w, writer) in writers.into_iter().enumerate() {
        let written = writer.await?;
        let after_kill = written.successes.iter().filter(|t| **t > killed).count();
        log_line(&format!(
            "writer {w}: {} acknowledged, {} failed, {after_kill} after the kill",
            written.acked.len(),
            written.failures
        ));
        assert!(
            after_kill > 0,
            "writer {w} never wrote again after the kill"
        );
        failures += written.failures;
        acked.extend(written.acked);
    }
    log_line(&format!(
        "{} acknowledged writes, {failures} failed",
        acked.len()
    ));

    // Sentinels end the watches.
    for prefix in ["w0/", "w1/"] {
        let sentinel = format!("{prefix}end");
        eventually("a sentinel", WAIT, || client.put(&sentinel, "end")).await?;
    }
    let live = live.await??;
    let history = history.await??;

    // Every acknowledged write reads back at its revision.
    for write in &acked {
        let entry = eventually("a read", WAIT, || client.get_entry(&write.key)).await?;
        assert_eq!(entry.value, write.value, "{}", write.key);
        assert_eq!(entry.mod_revision, write.revision, "{}", write.key);
    }

    // Each watcher delivered exactly the history under its prefix, which holds
    // every acknowledged write at its revision.
    for (prefix, from, seen) in [("", first, &live), ("w1/", 1, &history)] {
        let truth = watch_until(
            client.clone(),
            prefix.into(),
            from,
            seen.last().map(|c| c.1.clone()).unwrap_or_default(),
        )
        .await?;
        assert_eq!(
            seen, &truth,
            "the watcher on {prefix:?} against the history"
        );
        let revisions: Vec<u64> = seen.iter().map(|c| c.0).collect();
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "{prefix:?}: revisions in order"
        );
        let at: BTreeMap<u64, &Change> = seen.iter().map(|c| (c.0, c)).collect();
        for write in acked
            .iter()
            .filter(|w| w.key.starts_with(prefix) && w.revision >= from)
        {
            let change = at
                .get(&write.revision)
                .ok_or_else(|| format!("{prefix:?} missed {write:?}"))?;
            assert_eq!((&change.1, &change.2), (&write.key, &write.value));
        }
    }
    Ok(())
}

/// Without a quorum, requests get clear 503s naming etcd, and the server keeps
/// running; with the members back, it serves again and an open watch goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_requests_get_503_and_service_resumes() -> TestResult {
    let Some(mut backend) = Backend::with_members(Engine::Etcd, 3) else {
        return Ok(());
    };
    let server = TestServer::on(&backend, &[]);
    let client = Client::new(&server.url)?;
    let before = client.put("q/before", "1").await?;
    let watch = tokio::spawn(watch_until(
        client.clone(),
        "q/".into(),
        before.revision,
        "q/after".into(),
    ));

    let cluster = backend.cluster().ok_or("an etcd cluster")?;
    cluster.kill(0);
    cluster.kill(1);
    let http = reqwest::Client::new();
    for (method, path) in [
        ("PUT", "/v1/kv/q/lost"),
        ("GET", "/v1/kv/q/before"),
        ("GET", "/healthz"),
    ] {
        let res = http
            .request(method.parse()?, format!("{}{path}", server.url))
            .body("x")
            .send()
            .await?;
        assert_eq!(res.status(), 503, "{method} {path}");
        let body: serde_json::Value = res.json().await?;
        assert_eq!(
            body["error"]["code"], "storage_unavailable",
            "{method} {path}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("etcd"), "{method} {path}: {message}");
    }

    cluster.restart(0)?;
    cluster.restart(1)?;
    cluster.wait_healthy(WAIT)?;
    let after = eventually("a write once the members are back", WAIT, || {
        client.put("q/after", "2")
    })
    .await?;
    assert!(after.revision > before.revision);
    assert_eq!(
        eventually("a read", WAIT, || client.get("q/before")).await?,
        b"1"
    );
    let seen = watch.await??;
    let keys: Vec<&str> = seen.iter().map(|c| c.1.as_str()).collect();
    // The put made without a quorum was refused with 503: it may or may not have
    // been applied, and nothing else came between.
    assert!(
        keys == ["q/before", "q/after"] || keys == ["q/before", "q/lost", "q/after"],
        "{keys:?}"
    );
    Ok(())
}
