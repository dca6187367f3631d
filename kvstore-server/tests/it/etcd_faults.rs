//! The etcd engine under faults: a 3-member cluster on loopback, started and
//! stopped by the test, members killed with SIGKILL while writers and watchers
//! run through one kvstore server.
//!
//! What must hold: every acknowledged write reads back at its revision; each
//! watcher delivers exactly the history under its prefix (no gap, no duplicate);
//! writes go on once a new leader is elected; without a quorum requests get clear
//! `503 storage_unavailable` answers naming etcd, and service resumes when members
//! return; with puts and deletes through two replicas, every change a watcher sees
//! is one a client asked for, answered at its revision or told its outcome is
//! unknown (nothing applied is answered as if it had not been, nothing is undone);
//! and a write whose connection breaks after etcd took it (through a relay that
//! cuts etcd's answer) is answered 503 "may or may not" and applied once.

use crate::support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kvstore_client::{Client, Error as ClientError, Update, WatchOptions};
use support::h2cut::{Cut, CuttingRelay};
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

// ---------------------------------------------------------------------------
// Puts and deletes of a few keys through two replicas, the leader killed: every
// change the watchers see is one a client asked for
// ---------------------------------------------------------------------------

/// How a write was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// 2xx at this revision.
    Acked(u64),
    /// 404 (a delete of a key the store did not hold).
    NotFound,
    /// 503 or a broken connection: it may or may not have been applied.
    Unknown(String),
}

/// What a writer asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    /// A put of this value (each value is written once).
    Put(Vec<u8>),
    Delete,
}

/// One write and its answer.
#[derive(Debug, Clone)]
struct Op {
    writer: usize,
    key: String,
    asked: Asked,
    outcome: Outcome,
    /// Since the start of the test, when it was sent and when it was answered.
    sent: Duration,
    answered: Duration,
}

/// The keys the writers share (few, so that deletes find them and race).
const KEYS: usize = 4;

/// Acknowledged writes so far, and a wake-up for each.
#[derive(Default)]
struct Progress {
    acked: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

impl Progress {
    fn acked(&self) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Waits until `more` writes more than now are acknowledged.
    async fn more(&self, more: usize) -> TestResult {
        let target = self.acked.load(Ordering::Relaxed) + more;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let changed = self.changed.notified();
            if self.acked.load(Ordering::Relaxed) >= target {
                return Ok(());
            }
            tokio::time::timeout_at(deadline, changed)
                .await
                .map_err(|_| format!("fewer than {more} writes acknowledged in {WAIT:?}"))?;
        }
    }
}

/// Puts and deletes on `d/0`..`d/3` through `client` until `stop`, recording each
/// answer; counts the acknowledged ones in `acked`. A write whose outcome is
/// unknown is not retried.
async fn mixed_writer(
    w: usize,
    client: Client,
    start: Instant,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut n: usize = 0;
    // A fixed mix of keys and kinds per writer (a linear congruential sequence).
    let mut mix = w as u64 + 1;
    while !stop.load(Ordering::Relaxed) {
        mix = mix
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let key = format!("d/{}", (mix >> 33) as usize % KEYS);
        let delete = (mix >> 40) & 1 == 1;
        // Some puts on a lease of the key's own (one that outlives the test).
        let own_lease = (mix >> 41) % 3 == 0;
        let sent = start.elapsed();
        let (asked, answer) = if delete {
            let answer = client.delete(&key).await.map(|d| d.revision);
            (Asked::Delete, answer)
        } else {
            let value = format!("w{w} n{n}").into_bytes();
            let answer = if own_lease {
                client.put_with_ttl(&key, value.clone(), 600).await
            } else {
                client.put(&key, value.clone()).await
            };
            let answer = answer.map(|p| p.revision);
            (Asked::Put(value), answer)
        };
        let outcome = match answer {
            Ok(revision) => {
                progress.acked();
                Outcome::Acked(revision)
            }
            Err(ClientError::NotFound { .. }) => Outcome::NotFound,
            Err(e) => Outcome::Unknown(e.to_string()),
        };
        let failed = matches!(outcome, Outcome::Unknown(_));
        ops.push(Op {
            writer: w,
            key,
            asked,
            outcome,
            sent,
            answered: start.elapsed(),
        });
        if failed {
            // Not a busy loop while the cluster elects.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n += 1;
    }
    ops
}

/// Every change under `prefix` from `start` through `client`'s watch, with its
/// kind, until the key `end` appears.
async fn watch_kinds_until(
    client: Client,
    prefix: String,
    start: u64,
    end: String,
) -> Result<Vec<kvstore_client::Event>, BoxError> {
    let mut updates = client.watch_with(WatchOptions {
        prefix,
        start_revision: Some(start),
        ..WatchOptions::default()
    });
    let mut seen = Vec::new();
    loop {
        let event = next_change(&mut updates).await?;
        let done = event.key == end;
        seen.push(event);
        if done {
            return Ok(seen);
        }
    }
}

/// The next change a watch delivers (within [`WAIT`]).
async fn next_change(
    updates: &mut kvstore_client::Watch,
) -> Result<kvstore_client::Event, BoxError> {
    loop {
        let update = tokio::time::timeout(WAIT, updates.next())
            .await
            .map_err(|_| format!("no change within {WAIT:?}"))?
            .ok_or("the watch ended")??;
        if let Update::Event(event) = update {
            return Ok(event);
        }
    }
}

/// What is wrong with `seen` (a watcher's changes, the sentinel last) against the
/// writes `ops`: each change must be one a client asked for, answered at its
/// revision or with an unknown outcome (each unknown write explains one change at
/// most), and each acknowledged write must be there at its revision.
fn unexplained(seen: &[kvstore_client::Event], ops: &[Op]) -> Vec<String> {
    use kvstore_client::EventKind;
    use std::collections::{HashMap, HashSet};
    let mut problems = Vec::new();
    let puts: HashMap<&[u8], &Op> = ops
        .iter()
        .filter_map(|op| match &op.asked {
            Asked::Put(value) => Some((value.as_slice(), op)),
            Asked::Delete => None,
        })
        .collect();
    let acked_deletes: HashSet<(u64, &str)> = ops
        .iter()
        .filter_map(|op| match (&op.asked, &op.outcome) {
            (Asked::Delete, Outcome::Acked(r)) => Some((*r, op.key.as_str())),
            _ => None,
        })
        .collect();
    let mut unknown_deletes: HashMap<&str, usize> = HashMap::new();
    for op in ops {
        if let (Asked::Delete, Outcome::Unknown(_)) = (&op.asked, &op.outcome) {
            *unknown_deletes.entry(op.key.as_str()).or_default() += 1;
        }
    }
    let body = &seen[..seen.len().saturating_sub(1)];
    for event in body {
        match event.kind {
            EventKind::Put => match puts.get(event.value.as_slice()) {
                Some(op) => match &op.outcome {
                    Outcome::Acked(r) if *r == event.revision && op.key == event.key => {}
                    Outcome::Unknown(_) if op.key == event.key => {}
                    other => problems.push(format!(
                        "a put of {} at {} answered {other:?}: {op:?}",
                        event.key, event.revision
                    )),
                },
                None => problems.push(format!(
                    "a put of {} at {} that no client asked for",
                    event.key, event.revision
                )),
            },
            EventKind::Delete => {
                if acked_deletes.contains(&(event.revision, event.key.as_str())) {
                    continue;
                }
                match unknown_deletes.get_mut(event.key.as_str()) {
                    Some(left) if *left > 0 => *left -= 1,
                    _ => {
                        let refused: Vec<&Op> = ops
                            .iter()
                            .filter(|op| {
                                op.key == event.key
                                    && op.asked == Asked::Delete
                                    && op.outcome == Outcome::NotFound
                            })
                            .collect();
                        problems.push(format!(
                            "a delete of {} at {} that no client was given, and no \
                             delete of it has an unknown outcome; its deletes answered \
                             404: {} (the last three: {:?})",
                            event.key,
                            event.revision,
                            refused.len(),
                            &refused[refused.len().saturating_sub(3)..]
                        ))
                    }
                }
            }
        }
    }
    let at: HashMap<u64, &kvstore_client::Event> = body.iter().map(|e| (e.revision, e)).collect();
    for op in ops {
        let Outcome::Acked(revision) = op.outcome else {
            continue;
        };
        let kind = match op.asked {
            Asked::Put(_) => EventKind::Put,
            Asked::Delete => EventKind::Delete,
        };
        match at.get(&revision) {
            Some(event) if event.key == op.key && event.kind == kind => {}
            other => problems.push(format!(
                "{op:?} was acknowledged, but the watcher shows {other:?} at {revision}"
            )),
        }
    }
    problems
}

/// Writers put and delete a few keys through two replicas while the leader is
/// killed (three times): every delete and put the watchers on both replicas see
/// is one a client was answered at that revision, or one whose outcome it was
/// told is unknown. A write applied by one attempt must never be answered 404 or
/// 412 by another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_watchers_see_through_leader_kills_is_one_a_client_asked_for() -> TestResult {
    let Some(mut backend) = Backend::with_members(Engine::Etcd, 3) else {
        return Ok(());
    };
    let a = TestServer::on(&backend, &[]);
    let b = TestServer::on(&backend, &[]);
    let (ca, cb) = (Client::new(&a.url)?, Client::new(&b.url)?);
    let first = ca.health().await? + 1;
    let watchers = [&ca, &cb].map(|client| {
        tokio::spawn(watch_kinds_until(
            client.clone(),
            "d/".into(),
            first,
            "d/end".into(),
        ))
    });

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = if w % 2 == 0 { &ca } else { &cb };
            tokio::spawn(mixed_writer(
                w,
                client.clone(),
                start,
                stop.clone(),
                progress.clone(),
            ))
        })
        .collect();
    let mut kills = Vec::new();
    for round in 0..3 {
        progress.more(100).await?;
        let cluster = backend.cluster().ok_or("an etcd cluster")?;
        let leader = cluster.leader().ok_or("no leader")?;
        kills.push(start.elapsed());
        cluster.kill(leader);
        log_line(&format!(
            "round {round}: killed the leader, member {leader}, at {:?}",
            start.elapsed()
        ));
        progress.more(100).await?;
        cluster.restart(leader)?;
        cluster.wait_healthy(WAIT)?;
    }
    progress.more(50).await?;
    stop.store(true, Ordering::Relaxed);
    let mut ops = Vec::new();
    for writer in writers {
        ops.extend(writer.await?);
    }
    eventually("the sentinel", WAIT, || ca.put("d/end", "end")).await?;
    let count = |f: &dyn Fn(&Op) -> bool| ops.iter().filter(|op| f(op)).count();
    log_line(&format!(
        "{} writes: {} puts acknowledged, {} deletes acknowledged, {} deletes \
         answered 404, {} outcomes unknown; kills at {kills:?}",
        ops.len(),
        count(&|op| matches!((&op.asked, &op.outcome), (Asked::Put(_), Outcome::Acked(_)))),
        count(&|op| op.asked == Asked::Delete && matches!(op.outcome, Outcome::Acked(_))),
        count(&|op| op.outcome == Outcome::NotFound),
        count(&|op| matches!(op.outcome, Outcome::Unknown(_))),
    ));
    for op in &ops {
        if let Outcome::Unknown(why) = &op.outcome {
            log_line(&format!(
                "writer {}: {:?} of {} sent at {:?}, answered at {:?}: {why}",
                op.writer, op.asked, op.key, op.sent, op.answered
            ));
        }
    }

    let mut problems = Vec::new();
    let mut histories = Vec::new();
    for (name, watcher) in ["a", "b"].into_iter().zip(watchers) {
        let seen = watcher.await??;
        for problem in unexplained(&seen, &ops) {
            problems.push(format!("watcher on {name}: {problem}"));
        }
        histories.push(seen);
    }
    // Writes of unknown outcome that etcd did apply: the case where undoing or
    // repeating one on the strength of its failure would show.
    let unknown_puts: Vec<&[u8]> = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Unknown(_)))
        .filter_map(|op| match &op.asked {
            Asked::Put(value) => Some(value.as_slice()),
            Asked::Delete => None,
        })
        .collect();
    let applied = histories[0]
        .iter()
        .filter(|e| unknown_puts.contains(&e.value.as_slice()))
        .count();
    log_line(&format!(
        "{applied} of {} puts of unknown outcome were applied",
        unknown_puts.len()
    ));
    for problem in &problems {
        log_line(problem);
    }
    assert!(
        problems.is_empty(),
        "{} problems, the first: {:?}",
        problems.len(),
        problems.first()
    );
    assert_eq!(histories[0], histories[1], "both replicas show one history");
    Ok(())
}

// ---------------------------------------------------------------------------
// A write etcd took, its answer lost on the way: never sent again
// ---------------------------------------------------------------------------

/// The writes whose second sending would be answered otherwise than the first.
#[derive(Debug, Clone, Copy)]
enum Write {
    /// A delete: a second one finds no key (404).
    Delete,
    /// A put under `If-Match`: a second one finds another revision (412).
    PutIfMatch,
    /// A create-only put: a second one finds the key (412).
    Create,
    /// A plain put: a second one writes the value again.
    Put,
    /// A transaction under a compare: a second one fails the compare.
    Txn,
    /// A lease revocation: a second one finds no lease (404).
    Revoke,
    /// A put on a lease of the key's own (`?ttl=`): that lease must outlive it.
    PutTtl,
    /// A transaction whose put has a lease of its own.
    TxnTtl,
}

/// A write whose connection to etcd breaks after etcd took it (before etcd
/// answered, after its answer's headers, or before its trailers) is answered 503
/// `storage_unavailable`, "may or may not have been applied", and is not sent
/// again: etcd applied it once, and nothing answers as if it had not been.
#[rstest::rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_etcd_lost_is_unknown_and_not_sent_again(
    #[values(Cut::BeforeAnswer, Cut::AfterHeaders, Cut::BeforeTrailers)] cut: Cut,
    #[values(
        Write::Delete,
        Write::PutIfMatch,
        Write::Create,
        Write::Put,
        Write::Txn,
        Write::Revoke,
        Write::PutTtl,
        Write::TxnTtl
    )]
    write: Write,
) -> TestResult {
    use kvstore_client::txn::{Compare, CompareOp, TxnOp};
    use kvstore_client::{Condition, ErrorCode, EventKind};

    let Some(backend) = Backend::new(Engine::Etcd) else {
        return Ok(());
    };
    let member = backend
        .args()
        .get(1)
        .cloned()
        .ok_or("the member's endpoint")?;
    let relay = CuttingRelay::new(&member)?;
    let server = TestServer::try_start_at(
        "127.0.0.1:0",
        backend.dir(),
        // No progress frame (nor a call of the watch's to etcd) in the test's time.
        &["--etcd-endpoints", &relay.url, "--progress-interval", "600"],
    )?;
    let client = Client::new(&server.url)?;
    let lease = client.grant(60).await?;
    let before = client.put("cut/k", "v0").await?;
    let leased = client.put_with_lease("cut/leased", "l", lease.id).await?;
    let mut updates = client.watch_with(WatchOptions {
        prefix: "cut/".into(),
        start_revision: Some(leased.revision + 1),
        ..WatchOptions::default()
    });
    // The watch is open (it delivered a change) before the cut is armed: no call
    // but the write's starts an answer then.
    client.put("cut/open", "x").await?;
    let mut seen = vec![next_change(&mut updates).await?];

    // A put on a lease of its own is a lease grant first.
    let pass = usize::from(matches!(write, Write::PutTtl | Write::TxnTtl));
    relay.arm_after(pass, cut);
    let (answer, expected) = match write {
        Write::Delete => (
            client.delete("cut/k").await.map(|_| ()),
            (EventKind::Delete, "cut/k", &b""[..]),
        ),
        Write::PutIfMatch => (
            client
                .put_if("cut/k", "v1", Condition::ModRevision(before.revision))
                .await
                .map(|_| ()),
            (EventKind::Put, "cut/k", &b"v1"[..]),
        ),
        Write::Create => (
            client
                .put_if("cut/new", "v1", Condition::Absent)
                .await
                .map(|_| ()),
            (EventKind::Put, "cut/new", &b"v1"[..]),
        ),
        Write::Put => (
            client.put("cut/k", "v1").await.map(|_| ()),
            (EventKind::Put, "cut/k", &b"v1"[..]),
        ),
        Write::Txn => {
            let answer = client
                .transaction()
                .when(Compare::mod_revision(
                    "cut/k",
                    CompareOp::Equal,
                    before.revision,
                ))
                .and_then(TxnOp::put("cut/k", "v1"))
                .commit()
                .await;
            let answer = match answer {
                Ok(r) if !r.succeeded => Err(ClientError::PreconditionFailed {
                    current: None,
                    message: "the transaction's compare failed".into(),
                }),
                other => other.map(|_| ()),
            };
            (answer, (EventKind::Put, "cut/k", &b"v1"[..]))
        }
        Write::Revoke => (
            client.revoke(lease.id).await.map(|_| ()),
            (EventKind::Delete, "cut/leased", &b""[..]),
        ),
        Write::PutTtl => (
            client.put_with_ttl("cut/k", "v1", 600).await.map(|_| ()),
            (EventKind::Put, "cut/k", &b"v1"[..]),
        ),
        Write::TxnTtl => (
            client
                .transaction()
                .and_then(TxnOp::put_ttl("cut/k", "v1", 600))
                .commit()
                .await
                .map(|_| ()),
            (EventKind::Put, "cut/k", &b"v1"[..]),
        ),
    };
    assert!(
        relay.wait_cuts(1, WAIT),
        "{write:?}: no answer was cut at {cut:?}"
    );
    match answer {
        Err(ClientError::Server {
            status: 503,
            code: ErrorCode::StorageUnavailable,
            message,
        }) => assert!(
            message.contains("may or may not have been applied"),
            "{write:?} cut {cut:?}: {message}"
        ),
        other => panic!("{write:?} cut {cut:?}: expected 503 storage_unavailable, got {other:?}"),
    }

    eventually("the sentinel", WAIT, || client.put("cut/end", "end")).await?;
    while seen.last().is_some_and(|e| e.key != "cut/end") {
        seen.push(next_change(&mut updates).await?);
    }
    let changes: Vec<(EventKind, &str, &[u8])> = seen
        .iter()
        .map(|e| (e.kind, e.key.as_str(), e.value.as_slice()))
        .collect();
    assert_eq!(
        changes,
        [
            (EventKind::Put, "cut/open", &b"x"[..]),
            expected,
            (EventKind::Put, "cut/end", &b"end"[..]),
        ],
        "{write:?} cut {cut:?}: etcd applied the write once, and only it"
    );
    Ok(())
}
