//! The data's life cycle: graceful stop, crashes, bad environments, full disks,
//! export and restore. Every test runs the real `kvstore-server` binary.

use crate::support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kvstore_client::{Client, Entry, Error, Update, WatchOptions};
use support::{server_bin, TestServer, EMPTY_REVISION};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DEADLINE: Duration = Duration::from_secs(20);

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_zero() -> TestResult {
    let data = tempfile::tempdir()?;
    let mut server = TestServer::start_in(data.path(), &[]);
    let mut conn = TcpStream::connect(server.addr())?;
    conn.set_read_timeout(Some(DEADLINE))?;
    // Half a request: the server is now reading its body.
    conn.write_all(
        b"PUT /v1/kv/slow HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 10\r\n\r\nhello",
    )?;
    conn.flush()?;
    assert!(
        server.wait_for_log("reading the body of PUT /v1/kv/slow", DEADLINE),
        "the server never started on the request"
    );
    server.signal_term();
    assert!(
        server.wait_for_log("stopping", DEADLINE),
        "no stop log line"
    );
    conn.write_all(b"world")?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let status = server
        .wait_exit(DEADLINE)
        .ok_or("the server did not stop")?;
    assert!(status.success(), "exit status {status:?}");

    let server = TestServer::start_in(data.path(), &[]);
    let rt = tokio::runtime::Runtime::new()?;
    let value = rt.block_on(Client::new(&server.url)?.get("slow"))?;
    assert_eq!(value, b"helloworld");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_watch_streams_properly() -> TestResult {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let mut server = TestServer::start();
    let ws_url = format!("{}/v1/watch", server.url.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
    // The opening progress frame says the watch is live.
    let first = tokio::time::timeout(DEADLINE, ws.next())
        .await?
        .ok_or("no frame")??;
    assert!(first.to_text()?.contains("progress"), "{first:?}");

    let sse = reqwest::Client::new()
        .get(format!("{}/v1/watch", server.url))
        .header("accept", "text/event-stream")
        .send()
        .await?;
    let mut sse_body = sse.bytes_stream();
    let opening = tokio::time::timeout(DEADLINE, sse_body.next())
        .await?
        .ok_or("no SSE")??;
    assert!(String::from_utf8_lossy(&opening).contains("event: progress"));

    server.signal_term();
    let close = loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await? {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => return Err(format!("expected a close frame, got {other:?}").into()),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));

    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(DEADLINE, sse_body.next()).await? {
        match chunk {
            Ok(bytes) => rest.extend_from_slice(&bytes),
            Err(_) => break,
        }
    }
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("\"code\":\"shutting_down\""), "{rest}");

    let status = tokio::task::spawn_blocking(move || server.wait_exit(DEADLINE))
        .await?
        .ok_or("the server did not stop")?;
    assert!(status.success(), "exit status {status:?}");
    Ok(())
}

/// Runs the server on `data_dir` expecting it to refuse to start: (exit code, stderr).
fn refused(data_dir: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(server_bin())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("server runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The etcd API's port taken: the start fails with one line naming the flag and
/// how to turn the API off, and nothing listens.
#[test]
fn a_taken_etcd_api_port_stops_the_start_naming_the_flag() -> TestResult {
    let temp = tempfile::tempdir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let at = taken.local_addr()?.to_string();
    let out = Command::new(server_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--etcd-api-listen",
            &at,
            "--data-dir",
        ])
        .arg(temp.path())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&at) && stderr.contains("--etcd-api-listen off"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[test]
fn bad_data_dirs_give_one_clear_line_and_a_failure_exit() -> TestResult {
    let temp = tempfile::tempdir()?;
    let file = temp.path().join("a-file");
    std::fs::write(&file, "not a folder")?;
    let (code, stderr) = refused(&file);
    assert_eq!(code, Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot open the data dir") && stderr.contains("Not a directory"));

    // Not creatable, even for root.
    let (code, stderr) = refused(std::path::Path::new("/proc/kvstore-data"));
    assert_eq!(code, Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let held = temp.path().join("held");
    let _running = TestServer::start_in(&held, &[]);
    let (code, stderr) = refused(&held);
    assert_eq!(code, Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("in use by another kvstore-server"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
    Ok(())
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_with_507_and_keeps_serving_reads_and_watches() -> TestResult {
    const TEST: &str = "the full-disk test";
    if !is_root() {
        support::skip(
            "KVSTORE_REQUIRE_ROOT",
            TEST,
            "mounting a small tmpfs needs root",
        );
        return Ok(());
    }
    let disk = match SmallDisk::mount("3m") {
        Ok(disk) => disk,
        Err(why) => {
            let why = format!("mounting a small tmpfs failed: {}", why.trim());
            support::skip("KVSTORE_REQUIRE_ROOT", TEST, &why);
            return Ok(());
        }
    };
    let server = TestServer::start_in(&disk.dir.path().join("data"), &[]);
    let client = Client::new(&server.url)?;
    let mut watch = Box::pin(client.watch_with(WatchOptions {
        start_revision: Some(1),
        ..WatchOptions::default()
    }));
    client.put("first", "still here").await?;
    let value = vec![b'x'; 64 * 1024];
    let mut acked = 1;
    let full = loop {
        match client.put(&format!("fill/{acked}"), value.clone()).await {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 200, "a 3 MiB disk took 12 MiB of values");
    };
    match &full {
        Error::Server { status, code, .. } => {
            assert_eq!((*status, code.as_str()), (507, "insufficient_storage"));
        }
        other => panic!("expected 507, got {other:?}"),
    }
    assert_eq!(client.get("first").await?, b"still here");
    client.health().await?;
    // etcd's clients see it as etcd's NOSPACE alarm.
    let etcd_url = server.etcd_url.clone().ok_or("no etcd API")?;
    let mut etcd = etcd_client::Client::connect([etcd_url], None).await?;
    let alarms = etcd
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await?;
    let raised: Vec<etcd_client::AlarmType> = alarms.alarms().iter().map(|a| a.alarm()).collect();
    assert_eq!(raised, vec![etcd_client::AlarmType::Nospace]);
    // The watcher got every acknowledged write, in order.
    for n in 1..=acked {
        match tokio::time::timeout(DEADLINE, watch.next())
            .await?
            .ok_or("watch ended")??
        {
            Update::Event(event) => assert_eq!(event.revision, EMPTY_REVISION + n as u64),
            other => panic!("expected an event, got {other:?}"),
        }
    }
    Ok(())
}

/// An I/O error that is not a full disk (here: the file size limit of the
/// process) answers 503 `storage_unavailable` with the JSON error body, refuses
/// later writes too, and reads and watches go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_write_gets_503_storage_unavailable_and_reads_go_on() -> TestResult {
    let server = TestServer::start_with_file_size_limit(1024, &[]);
    let client = Client::new(&server.url)?;
    let mut watch = Box::pin(client.watch_with(WatchOptions {
        start_revision: Some(1),
        reconnect: false,
        ..WatchOptions::default()
    }));
    client.put("first", "still here").await?;
    // The watch is live (it has the first change) before writes fail: after a
    // failed write sled refuses to read its log from disk, so a watch that starts
    // then from older history ends with `storage_unavailable`; a live one goes on.
    match tokio::time::timeout(DEADLINE, watch.next())
        .await?
        .ok_or("watch ended")??
    {
        Update::Event(event) => assert_eq!(event.revision, EMPTY_REVISION + 1),
        other => panic!("expected an event, got {other:?}"),
    }
    let value = vec![b'x'; 4000];
    let mut acked = 1;
    let failed = loop {
        match client.put(&format!("fill/{acked}"), value.clone()).await {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 2000, "8 MB written under a 1 MiB file size limit");
    };
    match &failed {
        Error::Server { status, code, .. } => {
            assert_eq!((*status, code.as_str()), (503, "storage_unavailable"));
        }
        other => panic!("expected 503 storage_unavailable, got {other:?}"),
    }
    // Raw: the JSON error body, and the store still refuses writes.
    let res = reqwest::Client::new()
        .put(format!("{}/v1/kv/after", server.url))
        .body("small")
        .send()
        .await?;
    assert_eq!(res.status(), 503);
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: serde_json::Value = res.json().await?;
    assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    // Reads and watches go on.
    assert_eq!(client.get("first").await?, b"still here");
    assert_eq!(client.get("fill/1").await?, value);
    client.health().await?;
    for n in 2..=acked {
        match tokio::time::timeout(DEADLINE, watch.next())
            .await?
            .ok_or("watch ended")??
        {
            Update::Event(event) => assert_eq!(event.revision, EMPTY_REVISION + n as u64),
            other => panic!("expected an event, got {other:?}"),
        }
    }
    Ok(())
}

fn comparable(entries: Vec<Entry>) -> BTreeMap<String, (Vec<u8>, u64, u64, u64)> {
    entries
        .into_iter()
        .map(|e| {
            (
                e.key,
                (e.value, e.create_revision, e.mod_revision, e.version),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_restore_reproduces_every_key_value_and_version() -> TestResult {
    let source = TestServer::start();
    let client = Client::new(&source.url)?;
    let binary: Vec<u8> = (0..=255u8).collect();
    client.put("bin", binary.clone()).await?;
    client.put("app/a", "1").await?;
    client.put("app/a", "2").await?;
    client.put("app/b", "text \u{e9}").await?;
    client.put("gone", "x").await?;
    client.delete("gone").await?;
    let mut snapshot = Vec::new();
    let mut chunks = Box::pin(client.export("").await?);
    while let Some(chunk) = chunks.next().await {
        snapshot.extend_from_slice(&chunk?);
    }
    let text = String::from_utf8(snapshot.clone())?;
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(
        text.starts_with(r#"{"format":"kvstore.snapshot.v1","revision":7}"#),
        "{text}"
    );

    let target = TestServer::start();
    let restored_client = Client::new(&target.url)?;
    // Watchers of the empty store, open before the restore: live, and from
    // revision 1 (the empty store's own, which holds no change: live too).
    let mut watching = live_watch(&target, "").await?;
    let mut from_start = live_watch(&target, "start_revision=1").await?;
    let restored = restored_client.restore(snapshot.clone()).await?;
    assert_eq!((restored.restored, restored.revision), (3, 7));
    assert_eq!(
        comparable(restored_client.list_all("").await?),
        comparable(client.list_all("").await?)
    );
    assert_eq!(restored_client.get("bin").await?, binary);
    // Revisions continue after the snapshot's.
    assert_eq!(restored_client.put("new", "v").await?.revision, 8);
    // A restore raises no watch events: the first change either watcher gets is
    // the put after it.
    for watch in [&mut watching, &mut from_start] {
        assert_eq!(
            tokio::time::timeout(DEADLINE, watch.recv()).await?,
            Some((8, "put", "new".to_string(), b"v".to_vec())),
            "a watcher open during the restore"
        );
    }

    match restored_client.restore(snapshot).await {
        Err(Error::BadRequest {
            status: 409, code, ..
        }) => assert_eq!(code.as_str(), "store_not_empty"),
        other => panic!("expected store_not_empty, got {other:?}"),
    }
    match restored_client
        .restore("{\"format\":\"nope\",\"revision\":1}\n")
        .await
    {
        Err(Error::BadRequest {
            status: 400, code, ..
        }) => assert_eq!(code.as_str(), "invalid_snapshot"),
        other => panic!("expected invalid_snapshot, got {other:?}"),
    }
    Ok(())
}

/// A change as a watcher saw it: (revision, kind, key, value).
type Seen = (u64, &'static str, String, Vec<u8>);

fn seen_of(event: &kvstore_client::Event) -> Seen {
    let kind = match event.kind {
        kvstore_client::EventKind::Put => "put",
        kvstore_client::EventKind::Delete => "delete",
    };
    (event.revision, kind, event.key.clone(), event.value.clone())
}

/// A WebSocket watch on every key with `query`, straight to `server` (no
/// reconnecting), open once this returns: every change it is sent, until the
/// connection ends (a SIGKILL ends it).
async fn live_watch(
    server: &TestServer,
    query: &str,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<Seen>, String> {
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("{}/v1/watch?{query}", server.url.replacen("http", "ws", 1));
    let (mut ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| "the WebSocket handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    // The opening progress frame: the watch is live from here on.
    match tokio::time::timeout(DEADLINE, ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) if text.contains("progress") => {}
        other => return Err(format!("no opening progress frame: {other:?}")),
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            // Changes only: progress frames do not parse as one.
            if let Ok(event) = serde_json::from_str::<kvstore_client::Event>(text.as_str()) {
                if tx.send(seen_of(&event)).is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// Several rounds of: concurrent writers, SIGKILL at a random moment, restart on the
/// same data dir. Every acknowledged write must survive, revisions never go back,
/// a watcher that resumes across the restarts sees every revision exactly once,
/// and nothing any watcher saw is undone by a crash: each change seen is in the
/// history after the restarts, at the same revision with the same key and value
/// (a change seen before it was durable could be lost, its revision then reused
/// by another write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_write() -> TestResult {
    const ROUNDS: usize = 4;
    const WRITERS: usize = 8;
    let data = tempfile::tempdir()?;
    // Clients talk to an address held for the whole test, so a restart behind it
    // keeps the address even if another test takes the old port meanwhile.
    let held = support::HeldAddress::new()?;
    let mut server = held.start(data.path(), &[])?;
    let client = Client::new(&held.url)?;

    // The watcher reconnects by itself across the restarts (same address).
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = {
        let mut updates = Box::pin(client.watch_with(WatchOptions {
            start_revision: Some(1),
            ..WatchOptions::default()
        }));
        tokio::spawn(async move {
            while let Some(update) = updates.next().await {
                if let Ok(Update::Event(event)) = update {
                    let _ = seen_tx.send(seen_of(&event));
                }
            }
        })
    };

    let acked: Arc<Mutex<BTreeMap<String, (String, u64)>>> = Arc::default();
    let mut seen_live: Vec<Seen> = Vec::new();
    let mut last_max = 0;
    for round in 0..ROUNDS {
        // Live watchers of this round: they see changes the moment they are
        // published, up to the kill.
        let mut live = Vec::new();
        for _ in 0..2 {
            live.push(live_watch(&server, "").await?);
        }
        let (count_tx, mut count_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let client = client.clone();
            let acked = acked.clone();
            let count_tx = count_tx.clone();
            writers.push(tokio::spawn(async move {
                for n in 0.. {
                    let key = format!("r{round}/w{w}/{n}");
                    let value = format!("value-{round}-{w}-{n}");
                    match client.put(&key, value.clone()).await {
                        Ok(put) => {
                            acked
                                .lock()
                                .expect("lock")
                                .insert(key, (value, put.revision));
                            let _ = count_tx.send(put.revision);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        drop(count_tx);
        // Kill after a pseudo-random number of acknowledged writes (40..=167).
        let kill_after = 40 + (std::process::id() as usize * 31 + round * 97) % 128;
        let mut round_revisions = Vec::new();
        while round_revisions.len() < kill_after {
            let revision = tokio::time::timeout(DEADLINE, count_rx.recv())
                .await?
                .ok_or("writers stopped")?;
            round_revisions.push(revision);
        }
        held.kill(&mut server);
        for writer in writers {
            writer.await?;
        }
        for mut watch in live {
            while let Some(change) = tokio::time::timeout(DEADLINE, watch.recv()).await? {
                seen_live.push(change);
            }
        }
        while let Ok(revision) = count_rx.try_recv() {
            round_revisions.push(revision);
        }
        let min = round_revisions.iter().min().copied().unwrap_or(0);
        assert!(
            min > last_max,
            "round {round}: revision {min} after {last_max}"
        );
        last_max = round_revisions.iter().max().copied().unwrap_or(last_max);

        server = held.start(data.path(), &[])?;
        let acked_so_far = acked.lock().expect("lock").clone();
        for (key, (value, revision)) in acked_so_far {
            let entry = client.get_entry(&key).await?;
            assert_eq!(entry.value, value.as_bytes(), "{key}");
            assert_eq!(entry.mod_revision, revision, "{key}");
        }
    }

    // The watcher catches up to the store and has seen every revision after the
    // empty store's, once each.
    let current = client.health().await?;
    assert!(current >= last_max);
    let mut seen = Vec::new();
    while seen.last().is_none_or(|s: &Seen| s.0 < current) {
        let change = tokio::time::timeout(DEADLINE, seen_rx.recv())
            .await
            .map_err(|_| format!("watcher stuck after {:?}", seen.last()))?
            .ok_or("watcher ended")?;
        seen.push(change);
    }
    watcher.abort();

    // What the store's history holds now, from a fresh watch.
    let mut history: BTreeMap<u64, Seen> = BTreeMap::new();
    let mut replay = Box::pin(client.watch_with(WatchOptions {
        start_revision: Some(1),
        reconnect: false,
        ..WatchOptions::default()
    }));
    while history.len() < (current - EMPTY_REVISION) as usize {
        match tokio::time::timeout(DEADLINE, replay.next())
            .await?
            .ok_or("the history ended")??
        {
            Update::Event(event) => {
                history.insert(event.revision, seen_of(&event));
            }
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    println!(
        "{} changes seen live before a kill, {} by the resuming watcher, history of {current}",
        seen_live.len(),
        seen.len()
    );
    for change in seen_live.iter().chain(&seen) {
        assert_eq!(
            history.get(&change.0),
            Some(change),
            "a watcher saw this change (right), but the history after the crashes has \
             (left) at its revision"
        );
    }
    let revisions: Vec<u64> = seen.iter().map(|s| s.0).collect();
    let written = EMPTY_REVISION + 1..=current;
    if revisions != written.clone().collect::<Vec<_>>() {
        let got: std::collections::BTreeSet<u64> = revisions.iter().copied().collect();
        let missing: Vec<u64> = written.filter(|r| !got.contains(r)).collect();
        panic!(
            "the resuming watcher saw {} changes for revisions {}..={current}; missing {missing:?}",
            EMPTY_REVISION + 1,
            revisions.len()
        );
    }
    Ok(())
}
