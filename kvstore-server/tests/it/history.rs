//! Reads of the past (issue 24), on both engines: a key and a range at any
//! revision kept, listings whose pages are one snapshot, a key's history, and the
//! errors of revisions compacted or still to come. Through the SDK and raw HTTP
//! against the real server binary.

use crate::support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use kvstore_client::txn::TxnOp;
use kvstore_client::{Client, Error as ClientError, ErrorCode, EventKind};
use rstest::rstest;
use serde_json::Value;
use support::{Engine, EMPTY_REVISION};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), BoxError>;

/// Safety net for a whole test's waits.
const WAIT: Duration = Duration::from_secs(120);

/// The code of a client error, with its HTTP status for a bad request.
fn code_of(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

/// One put's answer, as the test saw it.
#[derive(Debug, Clone)]
struct Put {
    revision: u64,
    create_revision: u64,
    version: u64,
    value: String,
}

/// Every revision of a key written many times reads back as it was: value,
/// version, create and mod revision; a delete reads as absent, and a re-create
/// starts over (version 1, a new create revision). The history lists every
/// change in order, a page at a time.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_revision_of_a_key_reads_as_it_was(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let key = "h/key";
    let mut puts = Vec::new();
    for i in 1..=25 {
        let value = format!("value {i}");
        // Another key between, so that the key's revisions are not consecutive.
        client.put("h/other", format!("other {i}")).await?;
        let put = client.put(key, value.clone()).await?;
        puts.push(Put {
            revision: put.revision,
            create_revision: put.create_revision,
            version: put.version,
            value,
        });
    }
    let deleted = client.delete(key).await?.revision;
    let again = client.put(key, "born again").await?;
    assert_eq!((again.version, again.create_revision), (1, again.revision));

    for (n, put) in puts.iter().enumerate() {
        // At the put's revision, and just before the next change of the key.
        let until = puts.get(n + 1).map_or(deleted, |next| next.revision) - 1;
        for revision in [put.revision, until] {
            let at = client.get_at(key, revision).await?;
            assert_eq!(at.read_revision, revision);
            assert_eq!(at.current_revision, again.revision);
            assert_eq!(at.entry.value, put.value.as_bytes());
            assert_eq!(at.entry.version, put.version);
            assert_eq!(at.entry.version, n as u64 + 1);
            assert_eq!(at.entry.mod_revision, put.revision);
            assert_eq!(at.entry.create_revision, puts[0].revision);
            assert_eq!(at.entry.create_revision, put.create_revision);
        }
    }
    let first = puts[0].revision;
    for revision in [first - 1, deleted, again.revision - 1] {
        match client.get_at(key, revision).await {
            Err(ClientError::NotFound { .. }) => {}
            other => return Err(format!("at {revision}: expected 404, got {other:?}").into()),
        }
    }
    let reborn = client.get_at(key, again.revision).await?;
    assert_eq!(
        (reborn.entry.version, reborn.entry.create_revision),
        (1, again.revision)
    );

    // Raw HTTP: the value itself, with the revision read at and the store's.
    let http = reqwest::Client::new();
    let res = http
        .get(format!(
            "{}/v1/kv/h/key?revision={}",
            server.url, puts[3].revision
        ))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    let header = |name: &str| -> Option<String> {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(
        header("x-kv-read-revision"),
        Some(puts[3].revision.to_string())
    );
    assert_eq!(header("x-kv-revision"), Some(again.revision.to_string()));
    assert_eq!(header("x-kv-version"), Some("4".to_string()));
    assert_eq!(res.text().await?, "value 4");
    let res = http
        .get(format!("{}/v1/kv/h/key?revision={deleted}", server.url))
        .send()
        .await?;
    assert_eq!(res.status(), 404);
    let body: Value = res.json().await?;
    assert_eq!(body["error"]["code"], "key_not_found", "{body}");

    // A range at a revision: each key as it was.
    let page = client
        .list_page_at("h/", None, None, puts[9].revision)
        .await?;
    assert_eq!(page.revision, puts[9].revision);
    assert_eq!(page.current_revision, Some(again.revision));
    let seen: Vec<(String, Vec<u8>)> = page.entries.into_iter().map(|e| (e.key, e.value)).collect();
    assert_eq!(
        seen,
        [
            ("h/key".to_string(), b"value 10".to_vec()),
            ("h/other".to_string(), b"other 10".to_vec()),
        ]
    );
    let page = client.list_page_at("h/", None, None, deleted).await?;
    let keys: Vec<String> = page.entries.into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["h/other"]);

    // The history, 10 at a time, oldest first.
    let mut events = Vec::new();
    let mut after = None;
    loop {
        let page = client.history(key, after, Some(10)).await?;
        assert!(page.events.len() <= 10);
        assert_eq!(page.revision, again.revision);
        events.extend(page.events);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(events.len(), 27);
    for (event, put) in events.iter().zip(&puts) {
        assert_eq!(event.kind, EventKind::Put);
        assert_eq!(event.key, key);
        assert_eq!(event.revision, put.revision);
        assert_eq!(event.value, put.value.as_bytes());
        assert_eq!(event.version, put.version);
    }
    assert_eq!(
        (events[25].kind, events[25].revision),
        (EventKind::Delete, deleted)
    );
    assert_eq!(
        (events[26].kind, events[26].revision, events[26].version),
        (EventKind::Put, again.revision, 1)
    );
    // After the last change: nothing more.
    let rest = client.history(key, Some(again.revision), None).await?;
    assert!(rest.events.is_empty() && rest.next.is_none(), "{rest:?}");
    // Raw: the route's JSON.
    let body: Value = http
        .get(format!("{}/v1/history/h/key?limit=2", server.url))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(body["events"][0]["type"], "put", "{body}");
    assert_eq!(body["events"][0]["value"], "value 1", "{body}");
    assert_eq!(body["next"], puts[1].revision, "{body}");
    Ok(())
}

/// A revision past the store's is `400 future_revision` (naming the store's); one
/// below the oldest kept is `410 compacted` (naming the oldest), for a key, a
/// range, a page that follows a `continue` token and a history. The oldest kept
/// is what `/healthz` reports, and reads there work.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_and_future_revisions_are_refused(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let retention: &[&str] = match engine {
        Engine::Sled => &["--retain-revisions", "10"],
        Engine::Etcd => &[],
    };
    let Some(mut server) = support::serve(engine, retention) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let mut last = 0;
    for i in 0..30 {
        last = client
            .put(&format!("c/{}", i % 3), format!("v{i}"))
            .await?
            .revision;
    }
    let current = client.get_at("c/0", last).await?;
    assert_eq!(current.read_revision, last);

    // The future.
    match client.get_at("c/0", last + 5).await {
        Err(e) if code_of(&e) == Some(ErrorCode::FutureRevision) => {}
        other => return Err(format!("expected future_revision, got {other:?}").into()),
    }
    for path in [
        format!("/v1/kv/c/0?revision={}", last + 5),
        format!("/v1/kv?prefix=c/&revision={}", last + 5),
    ] {
        let res = http.get(format!("{}{path}", server.url)).send().await?;
        assert_eq!(res.status(), 400, "{path}");
        let body: Value = res.json().await?;
        assert_eq!(body["error"]["code"], "future_revision", "{body}");
        assert_eq!(body["error"]["revision"], last, "{body}");
    }

    // The past: keep the last 10 revisions.
    let oldest = last - 9;
    compact(&mut server, &client, oldest).await?;
    let health: Value = http
        .get(format!("{}/healthz", server.url))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(health["oldest_revision"], oldest, "{health}");
    let kept = client.get_at("c/0", oldest).await?;
    assert!(kept.entry.mod_revision <= oldest);
    let page = client.list_page_at("c/", None, Some(1), oldest).await?;
    assert_eq!(page.entries.len(), 1);
    let token = page.continue_token.clone().ok_or("a continue token")?;
    for revision in [1, oldest - 1] {
        match client.get_at("c/0", revision).await {
            Err(ClientError::Compacted { oldest: got, .. }) => assert_eq!(got, oldest),
            other => return Err(format!("at {revision}: expected compacted, got {other:?}").into()),
        }
        let res = http
            .get(format!(
                "{}/v1/kv?prefix=c/&revision={revision}",
                server.url
            ))
            .send()
            .await?;
        assert_eq!(res.status(), 410);
        let body: Value = res.json().await?;
        assert_eq!(body["error"]["code"], "compacted", "{body}");
        assert_eq!(body["error"]["revision"], oldest, "{body}");
    }
    // The history starts at the oldest kept; asking for older is compacted.
    let history = client.history("c/0", None, None).await?;
    assert!(
        history.events.iter().all(|e| e.revision >= oldest),
        "{history:?}"
    );
    assert_eq!(history.events.len(), 3, "{history:?}");
    match client.history("c/0", Some(oldest - 5), None).await {
        Err(ClientError::Compacted { oldest: got, .. }) => assert_eq!(got, oldest),
        other => return Err(format!("expected compacted, got {other:?}").into()),
    }

    // A listing whose revision is compacted between two pages: 410, start again.
    for i in 0..10 {
        last = client.put(&format!("c/{}", i % 3), "more").await?.revision;
    }
    let newer = last - 9;
    compact(&mut server, &client, newer).await?;
    match client.list_continue("c/", &token, Some(1)).await {
        Err(ClientError::Compacted { oldest: got, .. }) => assert_eq!(got, newer),
        other => return Err(format!("expected compacted, got {other:?}").into()),
    }
    Ok(())
}

/// Makes `oldest` the oldest revision kept: etcd is compacted through its API; the
/// sled server keeps its last `--retain-revisions` (10) and trims after each write
/// group, so a request through its writer (a delete of an absent key) returns
/// once the trim after the last write is done.
async fn compact(server: &mut support::TestServer, client: &Client, oldest: u64) -> TestResult {
    if server.engine() == Engine::Etcd {
        // Through the server (etcd's API), which keeps every change from there on.
        let url = server.etcd_url.clone().ok_or("no etcd API")?;
        let mut etcd = etcd_client::Client::connect([url], None).await?;
        etcd.compact(oldest as i64, None).await?;
        return Ok(());
    }
    match client.delete("c/absent").await {
        Err(ClientError::NotFound { .. }) => Ok(()),
        other => Err(format!("expected 404, got {other:?}").into()),
    }
}

/// A tiny deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A listing of 5,000 keys, 100 a page, while 4 writers put, delete and create
/// keys in the range: the pages together are exactly the store at the first
/// page's revision, as computed from the writes' acknowledgements (no key missed,
/// none twice, each in the version it had then).
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_is_one_snapshot_while_writers_run(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let key = |i: u64| format!("p/{i:05}");
    // key -> (value, mod_revision), as acknowledged.
    let mut initial = BTreeMap::new();
    for chunk in 0..50 {
        let mut txn = client.transaction();
        for i in chunk * 100..(chunk + 1) * 100 {
            txn = txn.and_then(TxnOp::put(&key(i), format!("initial {i}")));
        }
        let answer = txn.commit().await?;
        for i in chunk * 100..(chunk + 1) * 100 {
            initial.insert(key(i), (format!("initial {i}"), answer.revision));
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    // Writes acknowledged so far, by every writer.
    let (progress, _) = tokio::sync::watch::channel(0u64);
    let progress = Arc::new(progress);
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (client, stop, progress) = (client.clone(), stop.clone(), progress.clone());
        writers.push(tokio::spawn(async move {
            // (revision, key, value; None for a delete), acknowledged.
            let mut acked: Vec<(u64, String, Option<String>)> = Vec::new();
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w + 1));
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Keys 0..6000: some exist, some are created.
                let k = format!("p/{:05}", rng.below(6000));
                if rng.below(3) == 0 {
                    match client.delete(&k).await {
                        Ok(deleted) => acked.push((deleted.revision, k, None)),
                        Err(ClientError::NotFound { .. }) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                } else {
                    let value = format!("writer {w} op {n}");
                    let put = client
                        .put(&k, value.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    acked.push((put.revision, k, Some(value)));
                }
                progress.send_modify(|n| *n += 1);
            }
            Ok::<_, String>(acked)
        }));
    }

    // Let the writers get going, then list.
    tokio::time::timeout(WAIT, progress.subscribe().wait_for(|&n| n >= 20)).await??;
    let pages: Vec<kvstore_client::ListPage> =
        tokio::time::timeout(WAIT, client.list_at("p/", None, Some(100)).try_collect()).await??;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await??);
    }

    let revision = pages[0].revision;
    assert!(pages.len() >= 50, "{} pages", pages.len());
    assert!(pages.iter().all(|p| p.revision == revision));
    let written_meanwhile = acked.iter().filter(|(r, _, _)| *r > revision).count();
    assert!(written_meanwhile > 0, "no write while the pages were read");

    let mut expected = initial;
    acked.sort_by_key(|(r, _, _)| *r);
    for (r, k, value) in acked.into_iter().filter(|(r, _, _)| *r <= revision) {
        match value {
            Some(v) => expected.insert(k, (v, r)),
            None => expected.remove(&k),
        };
    }
    let mut listed = BTreeMap::new();
    for page in &pages {
        assert!(page.entries.len() <= 100);
        for entry in &page.entries {
            let value = String::from_utf8(entry.value.clone())?;
            let twice = listed.insert(entry.key.clone(), (value, entry.mod_revision));
            assert!(twice.is_none(), "{} listed twice", entry.key);
        }
    }
    assert_eq!(listed.len(), expected.len());
    assert!(
        listed == expected,
        "the pages are not the store at {revision}"
    );
    println!(
        "{engine:?}: {} keys in {} pages at revision {revision}; {written_meanwhile} writes meanwhile",
        listed.len(),
        pages.len()
    );
    Ok(())
}

/// What a crash writer sent: a put of a value (unique) or a delete of a key, and
/// the revision of its acknowledgement when one came back.
#[derive(Debug, Clone)]
struct Sent {
    key: String,
    value: Option<String>,
    acked: Option<u64>,
}

/// sled: the server is SIGKILLed at random points of a write load (4 writers, 20
/// keys, puts and deletes), three times over on one data dir. After each restart:
/// the history holds every acknowledged write at its revision and nothing that
/// was never sent, one change per revision with no gap, exactly as the `log`
/// replays it to a watch from revision 1; and a read of the range and of each key
/// at every revision up to the last one acknowledged shows the state those changes
/// make. (Writes cut off by the kill may be there or not, as a 503's may.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_every_revision_reads_as_the_acknowledged_writes_made_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let mut sent: Vec<Sent> = Vec::new();
    for round in 0..3u64 {
        let mut server = support::TestServer::start_in(dir.path(), &[]);
        let client = Client::new(&server.url)?;
        check_after_crash(&client, &sent).await?;

        // The load, killed after a random number of acknowledgements.
        let kill_after = 30 + rng.below(200);
        let (progress, _) = tokio::sync::watch::channel(0u64);
        let progress = Arc::new(progress);
        let mut writers = Vec::new();
        for w in 0..4u64 {
            let (client, progress) = (client.clone(), progress.clone());
            let mut rng = Rng(seed ^ (round * 8 + w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            writers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                for n in 0.. {
                    let key = format!("crash/{:02}", rng.below(20));
                    let value = (rng.below(4) != 0).then(|| format!("r{round} w{w} n{n}"));
                    let answer = match &value {
                        Some(v) => client.put(&key, v.clone()).await.map(|p| Some(p.revision)),
                        None => match client.delete(&key).await {
                            Ok(d) => Ok(Some(d.revision)),
                            // Nothing deleted, no revision taken.
                            Err(ClientError::NotFound { .. }) => Ok(None),
                            Err(e) => Err(e),
                        },
                    };
                    match answer {
                        Ok(acked) => {
                            if acked.is_some() {
                                mine.push(Sent { key, value, acked });
                            }
                            progress.send_modify(|n| *n += 1);
                        }
                        // The kill: this write may or may not be there.
                        Err(_) => {
                            mine.push(Sent {
                                key,
                                value,
                                acked: None,
                            });
                            return mine;
                        }
                    }
                }
                mine
            }));
        }
        tokio::time::timeout(WAIT, progress.subscribe().wait_for(|&n| n >= kill_after)).await??;
        server.kill();
        for writer in writers {
            sent.extend(writer.await?);
        }
        println!(
            "round {round}: killed after {kill_after} acknowledgements; {} writes sent so far",
            sent.len()
        );
    }
    let server = support::TestServer::start_in(dir.path(), &[]);
    check_after_crash(&Client::new(&server.url)?, &sent).await
}

/// The checks of the crash test on a server restarted after a kill; see it.
async fn check_after_crash(client: &Client, sent: &[Sent]) -> TestResult {
    let last_acked = sent
        .iter()
        .filter_map(|s| s.acked)
        .max()
        .unwrap_or(EMPTY_REVISION);
    // Every change the history holds, by revision.
    let mut changes: BTreeMap<u64, (String, Option<String>)> = BTreeMap::new();
    for k in 0..20 {
        let key = format!("crash/{k:02}");
        let mut after = None;
        loop {
            let page = client.history(&key, after, Some(1000)).await?;
            for event in page.events {
                let value = match event.kind {
                    EventKind::Put => Some(String::from_utf8(event.value)?),
                    EventKind::Delete => None,
                };
                let twice = changes.insert(event.revision, (key.clone(), value));
                assert!(
                    twice.is_none(),
                    "two changes at revision {}",
                    event.revision
                );
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    let last = changes
        .keys()
        .next_back()
        .copied()
        .unwrap_or(EMPTY_REVISION);
    assert!(
        last >= last_acked,
        "revision {last_acked} was acknowledged, the store is at {last}"
    );
    assert_eq!(
        changes.keys().copied().collect::<Vec<_>>(),
        (EMPTY_REVISION + 1..=last).collect::<Vec<_>>(),
        "the revisions have a gap"
    );
    // Acknowledged writes are there, at their revision; nothing else but writes sent.
    for s in sent {
        if let Some(revision) = s.acked {
            assert_eq!(
                changes.get(&revision),
                Some(&(s.key.clone(), s.value.clone())),
                "acknowledged at {revision}"
            );
        }
    }
    let mut unacked_deletes: BTreeMap<&str, usize> = BTreeMap::new();
    for s in sent
        .iter()
        .filter(|s| s.acked.is_none() && s.value.is_none())
    {
        *unacked_deletes.entry(s.key.as_str()).or_default() += 1;
    }
    let acked: std::collections::HashSet<u64> = sent.iter().filter_map(|s| s.acked).collect();
    for (revision, (key, value)) in &changes {
        if acked.contains(revision) {
            continue;
        }
        match value {
            Some(v) => assert!(
                sent.iter().any(|s| s.acked.is_none()
                    && s.value.as_deref() == Some(v.as_str())
                    && &s.key == key),
                "revision {revision}: {key} = {v} was never sent"
            ),
            None => {
                let left = unacked_deletes.entry(key.as_str()).or_default();
                assert!(
                    *left > 0,
                    "revision {revision}: a delete of {key} that was never sent"
                );
                *left -= 1;
            }
        }
    }
    // The log, replayed to a watch from revision 1, says the same.
    if last > EMPTY_REVISION {
        let mut watch = Box::pin(client.watch_with(kvstore_client::WatchOptions {
            prefix: "crash/".into(),
            start_revision: Some(1),
            ..kvstore_client::WatchOptions::default()
        }));
        let mut replayed = BTreeMap::new();
        while replayed.len() < changes.len() {
            let update = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut watch))
                .await?
                .ok_or("the watch ended")??;
            if let kvstore_client::Update::Event(event) = update {
                let value = match event.kind {
                    EventKind::Put => Some(String::from_utf8(event.value)?),
                    EventKind::Delete => None,
                };
                replayed.insert(event.revision, (event.key, value));
            }
        }
        assert!(replayed == changes, "the history and the log differ");
    }
    // Reads at every revision up to the last acknowledged one (the empty store's
    // own holds no change).
    let mut state: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for revision in EMPTY_REVISION + 1..=last_acked {
        let (key, value) = &changes[&revision];
        match value {
            Some(v) => state.insert(key.clone(), (v.clone(), revision)),
            None => state.remove(key),
        };
        let page = client
            .list_page_at("crash/", None, Some(100), revision)
            .await?;
        let listed: BTreeMap<String, (String, u64)> = page
            .entries
            .into_iter()
            .map(|e| Ok((e.key, (String::from_utf8(e.value)?, e.mod_revision))))
            .collect::<Result<_, BoxError>>()?;
        assert!(listed == state, "the range at revision {revision}");
        match (client.get_at(key, revision).await, state.get(key)) {
            (Ok(at), Some((v, _))) => assert_eq!(at.entry.value, v.as_bytes()),
            (Err(ClientError::NotFound { .. }), None) => {}
            (other, expected) => {
                return Err(format!("{key} at {revision}: {other:?}, expected {expected:?}").into())
            }
        }
    }
    Ok(())
}

/// A restore keeps its meaning: the store reads from the oldest revision it reports
/// (`/healthz`) on. On sled that is the snapshot's revision (the keys keep their
/// revisions; what came before is not known, so older reads are compacted); on etcd
/// the restored keys are new writes.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_store_reads_from_the_oldest_revision_it_reports(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let source = support::TestServer::start();
    let from = Client::new(&source.url)?;
    for i in 0..5 {
        from.put("r/a", format!("a{i}")).await?;
    }
    from.put("r/b", "b").await?;
    let mut snapshot = Vec::new();
    let mut chunks = Box::pin(from.export("r/").await?);
    while let Some(chunk) = futures_util::StreamExt::next(&mut chunks).await {
        snapshot.extend_from_slice(&chunk?);
    }
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let restored = client.restore(snapshot).await?;
    let health: Value = reqwest::get(format!("{}/healthz", server.url))
        .await?
        .json()
        .await?;
    let oldest = health["oldest_revision"]
        .as_u64()
        .ok_or("oldest_revision")?;
    let at = client.get_at("r/a", restored.revision).await?;
    assert_eq!(at.entry.value, b"a4");
    let page = client
        .list_page_at("r/", None, None, restored.revision)
        .await?;
    assert_eq!(page.entries.len(), 2);
    if engine == Engine::Sled {
        assert_eq!(oldest, restored.revision);
        assert_eq!(at.entry.version, 5, "the snapshot's own revisions");
        match client.get_at("r/a", restored.revision - 1).await {
            Err(ClientError::Compacted { oldest: got, .. }) => assert_eq!(got, oldest),
            other => return Err(format!("expected compacted, got {other:?}").into()),
        }
    }
    assert!(oldest <= restored.revision);
    match client.get_at("r/a", oldest).await {
        Ok(_) | Err(ClientError::NotFound { .. }) => {}
        other => return Err(format!("at the oldest revision {oldest}: {other:?}").into()),
    }
    // Writes after it are read at their revisions as always.
    let put = client.put("r/a", "after").await?;
    assert_eq!(
        client.get_at("r/a", put.revision).await?.entry.value,
        b"after"
    );
    assert_eq!(
        client.get_at("r/a", put.revision - 1).await?.entry.value,
        b"a4"
    );
    Ok(())
}
