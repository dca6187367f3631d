//! Watch streams under stress, against the real server binary: concurrent writers
//! with watchers that disconnect and resume at random points, a consumer that
//! stops reading, compacted history, progress frames, dead WebSocket peers, and
//! SSE resumption across a restart, and a peer the server is blocked sending to.
//!
//! Nothing here sleeps to synchronise: tests wait for stream items and events,
//! with [`WAIT`] as a safety net only. The randomized test prints its seed; set
//! `WATCH_TEST_SEED` to replay a run.

use crate::support;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use kvstore_client::{Client, Error as ClientError, Update, WatchOptions};
use rstest::rstest;
use serde_json::{json, Value};
use support::{Backend, Engine, EMPTY_REVISION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), BoxError>;

/// Safety net for every wait on the server; a healthy run never gets near it.
const WAIT: Duration = Duration::from_secs(10);

/// `f`, or an error after [`WAIT`].
async fn within<T>(what: &str, f: impl Future<Output = T>) -> Result<T, BoxError> {
    tokio::time::timeout(WAIT, f)
        .await
        .map_err(|_| format!("timed out after {WAIT:?} waiting for {what}").into())
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A tiny deterministic PRNG (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Spread small seeds over the state; xorshift must not start at 0.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The seed of this run: `WATCH_TEST_SEED`, or one from the pid and the clock.
fn seed() -> u64 {
    if let Some(seed) = std::env::var("WATCH_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return seed;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    (u64::from(std::process::id()) << 32) ^ nanos
}

/// A value for a query string (the prefixes used here only need `/` escaped).
fn query_value(s: &str) -> String {
    s.replace('%', "%25")
        .replace('/', "%2F")
        .replace('&', "%26")
        .replace('+', "%2B")
}

/// One change as a watcher sees it: (revision, kind, key, value).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Change {
    revision: u64,
    kind: String,
    key: String,
    value: String,
}

impl Change {
    fn new(revision: u64, kind: &str, key: &str, value: &str) -> Change {
        Change {
            revision,
            kind: kind.into(),
            key: key.into(),
            value: value.into(),
        }
    }

    /// The change a `put` / `delete` frame carries; `None` for other frames.
    fn of_frame(frame: &Value) -> Result<Option<Change>, BoxError> {
        let kind = frame["type"]
            .as_str()
            .ok_or_else(|| format!("frame without a type: {frame}"))?;
        if kind != "put" && kind != "delete" {
            return Ok(None);
        }
        let field = |name: &str| {
            frame[name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("frame without a string {name}: {frame}"))
        };
        Ok(Some(Change {
            revision: frame["revision"]
                .as_u64()
                .ok_or_else(|| format!("frame without a revision: {frame}"))?,
            kind: kind.into(),
            key: field("key")?,
            value: field("value")?,
        }))
    }

    fn of_event(event: &kvstore_client::Event) -> Change {
        let kind = match event.kind {
            kvstore_client::EventKind::Put => "put",
            kvstore_client::EventKind::Delete => "delete",
        };
        Change {
            revision: event.revision,
            kind: kind.into(),
            key: event.key.clone(),
            value: String::from_utf8_lossy(&event.value).into_owned(),
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(server_url: &str, query: &str) -> String {
    format!(
        "{}/v1/watch?{query}",
        server_url.replacen("http://", "ws://", 1)
    )
}

async fn ws_connect(server_url: &str, query: &str) -> Result<Ws, BoxError> {
    let (ws, _) = within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(ws_url(server_url, query)),
    )
    .await??;
    Ok(ws)
}

/// What a WebSocket watch gave next, pings and pongs aside.
#[derive(Debug)]
enum WsItem {
    Frame(Value),
    /// A close frame, or the end of the stream (`None`).
    Closed(Option<CloseFrame>),
}

async fn ws_item<S>(ws: &mut S) -> Result<WsItem, BoxError>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        match within("a WebSocket frame", ws.next()).await? {
            None => return Ok(WsItem::Closed(None)),
            Some(Err(e)) => return Err(format!("WebSocket error: {e}").into()),
            Some(Ok(Message::Text(text))) => {
                return Ok(WsItem::Frame(serde_json::from_str(text.as_str())?))
            }
            Some(Ok(Message::Close(frame))) => return Ok(WsItem::Closed(frame)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => return Err(format!("unexpected WebSocket message {other:?}").into()),
        }
    }
}

/// The next text frame; a close is an error.
async fn ws_frame<S>(ws: &mut S) -> Result<Value, BoxError>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    match ws_item(ws).await? {
        WsItem::Frame(frame) => Ok(frame),
        WsItem::Closed(close) => Err(format!("the watch closed: {close:?}").into()),
    }
}

/// The next change, skipping progress frames; any other frame is an error.
async fn ws_change<S>(ws: &mut S) -> Result<Change, BoxError>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        let frame = ws_frame(ws).await?;
        if frame["type"] == "progress" {
            continue;
        }
        return Change::of_frame(&frame)?
            .ok_or_else(|| format!("expected a change: {frame}").into());
    }
}

/// Every change of the store from revision 1 through `last`, from a fresh
/// WebSocket watch on every key: the server's own log.
async fn history(server_url: &str, last: u64) -> Result<Vec<Change>, BoxError> {
    let mut ws = ws_connect(server_url, "prefix=&start_revision=1").await?;
    let mut changes: Vec<Change> = Vec::new();
    while changes.last().is_none_or(|c| c.revision < last) {
        changes.push(ws_change(&mut ws).await?);
    }
    Ok(changes)
}

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS line")?;
    Ok(line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?)
}

/// One Server-Sent Event.
#[derive(Debug)]
struct SseEvent {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// A Server-Sent Events response over a plain TCP stream, read event by event.
/// (Raw HTTP/1.1 rather than reqwest: the test reads the exact bytes, and does not
/// depend on how the HTTP client is configured.)
struct Sse {
    tcp: tokio::net::TcpStream,
    /// Body bytes not yet decoded (chunked transfer encoding).
    raw: Vec<u8>,
    chunked: bool,
    /// Decoded body bytes not yet parsed into events.
    buf: Vec<u8>,
    /// The body ended (last chunk, EOF or a broken connection).
    ended: bool,
}

/// Reads an HTTP response head; returns it (lowercased) and the bytes after it.
async fn read_head(tcp: &mut tokio::net::TcpStream) -> Result<(String, Vec<u8>), BoxError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = within("a response head", tcp.read(&mut chunk)).await??;
        if n == 0 {
            return Err("the server closed before answering".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    Ok((head, buf.split_off(end)))
}

impl Sse {
    async fn connect(
        server_url: &str,
        query: &str,
        last_event_id: Option<u64>,
    ) -> Result<Sse, BoxError> {
        let addr = server_url.trim_start_matches("http://");
        let mut tcp = within("connecting", tokio::net::TcpStream::connect(addr)).await??;
        let last_event_id = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /v1/watch?{query} HTTP/1.1\r\nHost: {addr}\r\n\
             Accept: text/event-stream\r\n{last_event_id}\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let (head, raw) = read_head(&mut tcp).await?;
        assert!(head.starts_with("http/1.1 200"), "{query}: {head}");
        assert!(
            head.contains("\r\ncontent-type: text/event-stream"),
            "{query}: {head}"
        );
        let chunked = head.contains("\r\ntransfer-encoding: chunked");
        let mut sse = Sse {
            tcp,
            raw,
            chunked,
            buf: Vec::new(),
            ended: false,
        };
        sse.decode()?;
        Ok(sse)
    }

    /// Moves the complete chunks of `raw` into `buf`.
    fn decode(&mut self) -> Result<(), BoxError> {
        if !self.chunked {
            self.buf.append(&mut self.raw);
            return Ok(());
        }
        while let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size_line = std::str::from_utf8(&self.raw[..line_end])?;
            let size_hex = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|e| format!("bad chunk size {size_line:?}: {e}"))?;
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return Ok(());
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return Ok(());
            }
            self.buf.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
        Ok(())
    }

    /// The next event, or `None` when the stream ended (cleanly or not) between events.
    async fn next_or_end(&mut self) -> Result<Option<SseEvent>, BoxError> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = std::str::from_utf8(&block)?;
                let (mut id, mut event, mut data) = (None, None, None);
                for line in text.lines().filter(|l| !l.is_empty()) {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse::<u64>()?);
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str::<Value>(v)?);
                    } else {
                        return Err(format!("unexpected SSE line {line:?}").into());
                    }
                }
                return Ok(Some(SseEvent {
                    id,
                    event: event.ok_or_else(|| format!("SSE event without event: {text:?}"))?,
                    data: data.ok_or_else(|| format!("SSE event without data: {text:?}"))?,
                }));
            }
            if self.ended {
                if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
                    return Ok(None);
                }
                let rest = String::from_utf8_lossy(&self.buf);
                return Err(format!("the SSE stream ended inside an event: {rest:?}").into());
            }
            let mut chunk = [0u8; 8192];
            match within("SSE bytes", self.tcp.read(&mut chunk)).await? {
                Ok(0) | Err(_) => self.ended = true,
                Ok(n) => {
                    self.raw.extend_from_slice(&chunk[..n]);
                    self.decode()?;
                }
            }
        }
    }

    async fn next(&mut self) -> Result<SseEvent, BoxError> {
        self.next_or_end()
            .await?
            .ok_or_else(|| "the SSE stream ended".into())
    }

    /// The next change (its id checked against its revision), skipping progress.
    async fn next_change(&mut self) -> Result<Change, BoxError> {
        loop {
            let event = self.next().await?;
            if event.event == "progress" {
                continue;
            }
            let change = Change::of_frame(&event.data)?
                .ok_or_else(|| format!("expected a change: {event:?}"))?;
            assert_eq!(event.event, change.kind, "{event:?}");
            assert_eq!(event.id, Some(change.revision), "{event:?}");
            return Ok(change);
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Random writers, watchers that drop and resume at random points
// ---------------------------------------------------------------------------

/// The revision of the last change under `prefix` among the final sentinels.
fn target_of(sentinels: &[Change], prefix: &str) -> Option<u64> {
    sentinels
        .iter()
        .filter(|c| c.key.starts_with(prefix))
        .map(|c| c.revision)
        .max()
}

type Target = tokio::sync::watch::Receiver<Option<Vec<Change>>>;

/// Whether the watcher at `last` has seen its final sentinel.
fn reached(target: &Option<Vec<Change>>, prefix: &str, last: u64) -> bool {
    target
        .as_deref()
        .and_then(|s| target_of(s, prefix))
        .is_some_and(|t| last >= t)
}

/// What a watcher got.
struct Watched {
    /// The changes delivered, in order.
    changes: Vec<Change>,
    /// The revision of each progress frame (and `lagged` error), with how many
    /// changes had come before it.
    progress: Vec<(u64, usize)>,
    connections: usize,
    /// `lagged` errors received.
    lags: usize,
}

/// A watcher made of repeated raw WebSocket connections, each resuming at the
/// revision after the last change it delivered, each reading a random number of
/// frames before it drops (sometimes with a close frame, sometimes not).
async fn raw_watcher(
    server_url: String,
    prefix: String,
    seed: u64,
    mut target: Target,
) -> Result<Watched, BoxError> {
    let mut rng = Rng::new(seed);
    let mut seen: Vec<Change> = Vec::new();
    let mut progress = Vec::new();
    let (mut connections, mut lags) = (0, 0);
    'connections: loop {
        let last = seen.last().map_or(0, |c| c.revision);
        if reached(&target.borrow(), &prefix, last) {
            break;
        }
        let query = format!(
            "prefix={}&start_revision={}",
            query_value(&prefix),
            last + 1
        );
        let mut ws = ws_connect(&server_url, &query).await?;
        connections += 1;
        let budget = 1 + rng.below(15);
        for n in 0..budget {
            let last = seen.last().map_or(0, |c| c.revision);
            let item = within(&format!("watcher {prefix:?} at {last}"), async {
                tokio::select! {
                    item = ws_item(&mut ws) => Some(item),
                    _ = target.wait_for(|t| reached(t, &prefix, last)) => None,
                }
            })
            .await?;
            let Some(item) = item else {
                break 'connections;
            };
            let frame = match item? {
                WsItem::Frame(frame) => frame,
                WsItem::Closed(close) => {
                    return Err(format!("watcher {prefix:?}: the server closed: {close:?}").into())
                }
            };
            match frame["type"].as_str() {
                Some("progress") => {
                    let p = frame["revision"].as_u64().ok_or("progress revision")?;
                    progress.push((p, seen.len()));
                    continue;
                }
                _ if n == 0 => {
                    return Err(format!("watcher {prefix:?}: opened with {frame}").into())
                }
                Some("put" | "delete") => {}
                // Fell behind the (small) event buffer: the server closes; resume.
                Some("error") if frame["code"] == "lagged" => {
                    let at = frame["revision"].as_u64().ok_or("lagged revision")?;
                    progress.push((at, seen.len()));
                    lags += 1;
                    break;
                }
                _ => return Err(format!("watcher {prefix:?}: unexpected frame {frame}").into()),
            }
            let change = Change::of_frame(&frame)?.ok_or("not a change")?;
            if change.revision <= last || !change.key.starts_with(&prefix) {
                return Err(format!(
                    "watcher {prefix:?} after revision {last} got {change:?} \
                     (start_revision={})",
                    query
                )
                .into());
            }
            seen.push(change);
        }
        // Drop at this random point, half the time saying goodbye first.
        if rng.below(2) == 0 {
            let _ = within("closing a watch", ws.close(None)).await;
        }
        drop(ws);
        if rng.below(4) == 0 {
            // Not synchronisation: a bounded random pause so that some resumptions
            // come from the history rather than the live feed.
            tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
        }
    }
    Ok(Watched {
        changes: seen,
        progress,
        connections,
        lags,
    })
}

/// A watcher on the client SDK's self-resuming stream.
async fn sdk_watcher(
    client: Client,
    prefix: String,
    mut target: Target,
) -> Result<Watched, BoxError> {
    let mut updates = Box::pin(client.watch_with(WatchOptions {
        prefix: prefix.clone(),
        start_revision: Some(1),
        ..WatchOptions::default()
    }));
    let mut seen: Vec<Change> = Vec::new();
    let mut reconnects = 0;
    loop {
        let last = seen.last().map_or(0, |c| c.revision);
        let update = within(&format!("SDK watcher {prefix:?} at {last}"), async {
            tokio::select! {
                update = updates.next() => Some(update),
                _ = target.wait_for(|t| reached(t, &prefix, last)) => None,
            }
        })
        .await?;
        let Some(update) = update else {
            break;
        };
        match update.ok_or("the SDK watch ended")?? {
            Update::Event(event) => {
                let change = Change::of_event(&event);
                if change.revision <= last || !change.key.starts_with(&prefix) {
                    return Err(
                        format!("SDK watcher {prefix:?} after {last} got {change:?}").into(),
                    );
                }
                seen.push(change);
            }
            Update::Reconnecting { .. } => reconnects += 1,
            other => return Err(format!("SDK watcher: unexpected {other:?}").into()),
        }
    }
    Ok(Watched {
        changes: seen,
        progress: Vec::new(),
        connections: reconnects + 1,
        lags: 0,
    })
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_writers_and_resuming_watchers_see_exactly_the_history(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    const WRITERS: u64 = 4;
    const OPS_PER_WRITER: u64 = 250;
    let seed = seed();
    println!("seed {seed} (replay with WATCH_TEST_SEED={seed})");
    // A small event buffer: a watcher that falls behind (a loaded machine) is told
    // `lagged` and resumes like after any other disconnect.
    let Some(server) = support::serve(engine, &["--event-buffer", "16"]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let keys: Vec<String> = (0..10)
        .map(|i| format!("a/{i}"))
        .chain((0..10).map(|i| format!("b/{i}")))
        .chain((0..5).map(|i| format!("ab/{i}")))
        .collect();

    // Watchers first, all from revision 1: they run alongside the writers.
    let (target_tx, target_rx) = tokio::sync::watch::channel(None::<Vec<Change>>);
    let mut watchers = Vec::new();
    for (i, prefix) in ["", "a/", "b/", "a", "ab/", ""].into_iter().enumerate() {
        let task = tokio::spawn(raw_watcher(
            server.url.clone(),
            prefix.to_string(),
            seed ^ (0x1000 + i as u64),
            target_rx.clone(),
        ));
        watchers.push((format!("raw watcher #{i}"), prefix, task));
    }
    for prefix in ["a", ""] {
        let task = tokio::spawn(sdk_watcher(
            client.clone(),
            prefix.to_string(),
            target_rx.clone(),
        ));
        watchers.push(("SDK watcher".to_string(), prefix, task));
    }

    // Writers: puts and deletes over overlapping keys.
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        let keys = keys.clone();
        let mut rng = Rng::new(seed ^ (0x2000 + w));
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..OPS_PER_WRITER {
                let key = &keys[rng.below(keys.len() as u64) as usize];
                if rng.below(10) < 7 {
                    let value = format!("w{w}-{i}");
                    let put = client.put(key, value.as_str()).await?;
                    acked.push(Change::new(put.revision, "put", key, &value));
                } else {
                    match client.delete(key).await {
                        Ok(deleted) => acked.push(Change::new(deleted.revision, "delete", key, "")),
                        Err(ClientError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok::<_, ClientError>(acked)
        }));
    }
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(within("a writer", writer).await???);
    }
    // Sentinels: each watcher stops once it has the last one under its prefix.
    let mut sentinels = Vec::new();
    for key in ["a/end", "b/end", "ab/end"] {
        let put = client.put(key, "end").await?;
        sentinels.push(Change::new(put.revision, "put", key, "end"));
    }
    acked.extend(sentinels.iter().cloned());
    acked.sort();
    let last = acked.last().map_or(0, |c| c.revision);
    target_tx.send_replace(Some(sentinels));

    // The committed history, from the server's log, is exactly what was
    // acknowledged: every revision after the empty store's through `last`, each once.
    let history = history(&server.url, last).await?;
    let revisions: Vec<u64> = history.iter().map(|c| c.revision).collect();
    let first = EMPTY_REVISION + 1;
    assert_eq!(revisions, (first..=last).collect::<Vec<_>>(), "seed {seed}");
    assert_eq!(history, acked, "seed {seed}");

    // Catching up on a thousand changes with random drops and lags is work, not a
    // wait on one event: a minute, for the whole suite running on two cores.
    let sentinels_written = std::time::Instant::now();
    for (name, prefix, task) in watchers {
        let watched = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .map_err(|_| format!("{name} did not catch up within a minute"))???;
        let got = watched.changes;
        let expected: Vec<Change> = history
            .iter()
            .filter(|c| c.key.starts_with(prefix))
            .cloned()
            .collect();
        println!(
            "{name} on {prefix:?}: {} changes, {} progress frames, {} connection(s), {} lagged; \
             caught up {:?} after the sentinels",
            got.len(),
            watched.progress.len(),
            watched.connections,
            watched.lags,
            sentinels_written.elapsed()
        );
        // A progress frame at P came after every change under the prefix up to P
        // and before any later one: resuming from it would have missed nothing.
        for (p, before) in watched.progress {
            let covered = expected.iter().filter(|c| c.revision <= p).count();
            assert!(
                p <= last,
                "{name} on {prefix:?}: progress {p} beyond {last}"
            );
            assert_eq!(
                covered, before,
                "{name} on {prefix:?} (seed {seed}): progress {p} came after {before} \
                 changes, but {covered} changes under the prefix are at or before it"
            );
        }
        if got != expected {
            let got_revs: BTreeSet<u64> = got.iter().map(|c| c.revision).collect();
            let missing: Vec<&Change> = expected
                .iter()
                .filter(|c| !got_revs.contains(&c.revision))
                .collect();
            panic!(
                "{name} on {prefix:?} (seed {seed}): got {} changes, expected {}; \
                 missing {missing:?}; got {got:?}",
                got.len(),
                expected.len()
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. A consumer that stops reading
// ---------------------------------------------------------------------------

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_blocks_nothing_and_is_told_lagged(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    const WRITERS: usize = 4;
    const PUTS_PER_WRITER: usize = 750;
    const VALUE_BYTES: usize = 4096;
    // peer-timeout: the unread watcher cannot answer pings, and must not be dropped
    // for that before it lags.
    let Some(server) = support::serve(
        engine,
        &[
            "--event-buffer",
            "64",
            "--peer-timeout",
            "60",
            "--cache-mb",
            "16",
        ],
    ) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let pid = server.pid();

    // A watch over a socket with a small receive buffer, so the backlog does not
    // fit in the kernel buffers. It reads its opening frame, then nothing.
    let addr: std::net::SocketAddr = server.addr().parse()?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let tcp = within("connecting", socket.connect(addr)).await??;
    let (mut ws, _) = within(
        "the WebSocket handshake",
        tokio_tungstenite::client_async(ws_url(&server.url, "prefix=slow%2F"), tcp),
    )
    .await??;
    let opening = ws_frame(&mut ws).await?;
    assert_eq!(
        opening,
        json!({"type": "progress", "revision": EMPTY_REVISION})
    );
    let baseline = rss_kib(pid)?;

    // Several thousand puts of 4 KiB values, concurrently (a few MiB per round).
    let mut peak = baseline;
    let value = "v".repeat(VALUE_BYTES);
    let mut last = 0;
    for round in 0..5 {
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let client = client.clone();
            let value = value.clone();
            writers.push(tokio::spawn(async move {
                let mut last = 0;
                for i in 0..PUTS_PER_WRITER / 5 {
                    let key = format!("slow/{w}/{}", i % 10);
                    let put = within(
                        "a put while a watcher is stuck",
                        client.put(&key, value.as_str()),
                    )
                    .await??;
                    last = last.max(put.revision);
                }
                Ok::<u64, BoxError>(last)
            }));
        }
        for writer in writers {
            last = last.max(within("a writer", writer).await???);
        }
        let rss = rss_kib(pid)?;
        println!("round {round}: revision {last}, server RSS {rss} KiB (baseline {baseline} KiB)");
        peak = peak.max(rss);
    }
    // (a) A plain put still goes through.
    let plain = within("a plain put", client.put("slow/plain", "p")).await??;
    assert!(plain.revision > last);
    let last = plain.revision;
    assert_eq!(
        last,
        EMPTY_REVISION + (WRITERS * PUTS_PER_WRITER) as u64 + 1
    );
    // (b) The unread backlog does not pile up in the server's memory.
    let rss = rss_kib(pid)?;
    peak = peak.max(rss);
    assert!(
        peak < baseline + 100 * 1024,
        "server RSS grew from {baseline} KiB to {peak} KiB with an unread watcher"
    );

    // (c) Reading now: changes in order from the first write, then `lagged` at the
    // last one delivered, then a close.
    let mut delivered = EMPTY_REVISION;
    let lagged_at = loop {
        let frame = ws_frame(&mut ws).await?;
        match frame["type"].as_str() {
            Some("put") => {
                let revision = frame["revision"].as_u64().ok_or("revision")?;
                assert_eq!(revision, delivered + 1, "{}", frame["key"]);
                delivered = revision;
            }
            Some("progress") => {
                assert_eq!(frame["revision"], delivered, "{frame}");
            }
            Some("error") => {
                assert_eq!(frame["code"], "lagged", "{frame}");
                assert!(frame["message"].as_str().is_some_and(|m| !m.is_empty()));
                break frame["revision"]
                    .as_u64()
                    .ok_or("lagged without a revision")?;
            }
            _ => return Err(format!("unexpected frame {frame}").into()),
        }
    };
    println!("lagged at {lagged_at} after {delivered} changes (last revision {last})");
    assert_eq!(
        lagged_at, delivered,
        "lagged must name the last delivered revision"
    );
    assert!(lagged_at < last);
    match ws_item(&mut ws).await? {
        WsItem::Closed(_) => {}
        WsItem::Frame(frame) => return Err(format!("a frame after lagged: {frame}").into()),
    }

    // Resuming after it delivers the rest, without a gap.
    let query = format!("prefix=slow%2F&start_revision={}", lagged_at + 1);
    let mut ws = ws_connect(&server.url, &query).await?;
    let mut next = lagged_at + 1;
    while next <= last {
        let change = ws_change(&mut ws).await?;
        assert_eq!(change.revision, next, "{}", change.key);
        next += 1;
    }
    assert_eq!(client.get("slow/plain").await?, b"p");
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Compacted history
// ---------------------------------------------------------------------------

#[rstest]
/// On sled the server trims its history by its own retention flag; etcd compacts
/// its own history (here through the cluster, as an operator or etcd's
/// auto-compaction would): either way a watch from before the oldest kept
/// revision is told `compacted` with that revision.
///
/// An etcd replica also keeps the last `--event-buffer` changes in its copy and
/// resumes watchers from there, like kube-apiserver's watch cache, even once etcd
/// compacted them; the small buffer here makes the watches that start before the
/// last ten revisions go to etcd's history.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_into_compacted_history_get_compacted_with_the_oldest_kept(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let retention: &[&str] = match engine {
        Engine::Sled => &["--retain-revisions", "10"],
        Engine::Etcd => &["--event-buffer", "8"],
    };
    let Some(mut server) = support::serve(engine, retention) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    for i in 1..=50u64 {
        let put = client.put(&format!("c/{}", i % 7), format!("v{i}")).await?;
        assert_eq!(put.revision, EMPTY_REVISION + i);
    }
    let last = EMPTY_REVISION + 50;
    let oldest = last - 9;
    if let Some(cluster) = server.backend().and_then(Backend::cluster) {
        // Compacted behind the server's back: the revision etcd compacts at
        // counts as compacted too (a delete made there may be lost to a watch).
        cluster.compact(oldest - 1)?;
    }
    // The writer trims the history right after answering a group. A watch with
    // `initial=true` reads its snapshot behind a barrier the writer answers only
    // after that: once `synced` arrives, the history is the last ten revisions.
    let mut ws = ws_connect(&server.url, "prefix=c%2F&initial=true").await?;
    loop {
        let frame = ws_frame(&mut ws).await?;
        if frame["type"] == "synced" {
            assert_eq!(frame["revision"], last);
            break;
        }
        assert_eq!(frame["type"], "entry", "{frame}");
    }

    // WebSocket: an error frame, then a close.
    for start in [1, oldest - 1] {
        let mut ws =
            ws_connect(&server.url, &format!("prefix=c%2F&start_revision={start}")).await?;
        let frame = ws_frame(&mut ws).await?;
        assert_eq!(frame["type"], "error", "{frame}");
        assert_eq!(frame["code"], "compacted", "{frame}");
        assert_eq!(frame["revision"], oldest, "{frame}");
        assert!(matches!(ws_item(&mut ws).await?, WsItem::Closed(_)));
    }
    // The oldest kept revision is indeed there.
    let query = format!("prefix=c%2F&start_revision={oldest}");
    let mut ws = ws_connect(&server.url, &query).await?;
    for revision in oldest..=last {
        let change = ws_change(&mut ws).await?;
        assert_eq!(change.revision, revision);
        assert_eq!(change.value, format!("v{}", revision - EMPTY_REVISION));
    }

    // The SDK: Err(Compacted), then the end of the stream (no reconnecting).
    let mut watch = Box::pin(client.watch_with(WatchOptions {
        prefix: "c/".into(),
        start_revision: Some(1),
        ..WatchOptions::default()
    }));
    match within("the SDK watch", watch.next()).await? {
        Some(Err(ClientError::Compacted { oldest: got, .. })) => assert_eq!(got, oldest),
        other => return Err(format!("expected Compacted, got {other:?}").into()),
    }
    assert!(within("the SDK watch to end", watch.next())
        .await?
        .is_none());

    // SSE, by start_revision or Last-Event-ID: HTTP 410 `compacted` with the
    // JSON error body (the error table of docs/http-api.md), not a stream.
    let http = reqwest::Client::new();
    for (query, last_event_id) in [
        ("prefix=c%2F&start_revision=1".to_string(), None),
        (format!("prefix=c%2F&start_revision={}", oldest - 1), None),
        ("prefix=c%2F".to_string(), Some(5)),
    ] {
        let mut req = http
            .get(format!("{}/v1/watch?{query}", server.url))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let res = within("the SSE answer", req.send()).await??;
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = within("the SSE body", res.text()).await??;
        assert_eq!(status, 410, "{query} {last_event_id:?}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        let body: Value = serde_json::from_str(&body)?;
        assert_eq!(body["error"]["code"], "compacted", "{body}");
        assert_eq!(body["error"]["revision"], oldest, "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // From the oldest kept revision on, a stream.
    let mut sse = Sse::connect(&server.url, &query, None).await?;
    assert_eq!(sse.next_change().await?.revision, oldest);
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. Progress frames
// ---------------------------------------------------------------------------

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watches_get_progress_frames_that_are_safe_to_resume_from(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &["--progress-interval", "0.2"]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    client.put("other/0", "x").await?;
    let idle_at = client.put("other/1", "x").await?.revision;

    // Idle: the opening frame, then one every interval, at the store's revision.
    let mut ws = ws_connect(&server.url, "prefix=mine%2F").await?;
    for _ in 0..3 {
        let frame = ws_frame(&mut ws).await?;
        assert_eq!(frame, json!({"type": "progress", "revision": idle_at}));
    }
    let mut sse = Sse::connect(&server.url, "prefix=mine%2F", None).await?;
    for _ in 0..2 {
        let event = sse.next().await?;
        assert_eq!(event.event, "progress", "{event:?}");
        assert_eq!(event.id, Some(idle_at), "{event:?}");
        assert_eq!(event.data, json!({"type": "progress", "revision": idle_at}));
    }
    drop(sse);

    // Rounds of writes mostly elsewhere (in one round only elsewhere); after each,
    // read until a progress frame covers the round. A progress frame at P comes
    // after every change under the prefix up to P and before every later one, and
    // never claims more than the store has.
    let mut mine: Vec<Change> = Vec::new();
    let mut got: Vec<Change> = Vec::new();
    let mut progress: Vec<u64> = Vec::new();
    for round in 0..4 {
        let mut last = 0;
        for i in 0..12 {
            let key = if round != 2 && i == (round * 5) % 12 {
                format!("mine/{round}-{i}")
            } else {
                format!("other/{round}-{i}")
            };
            let value = format!("v{round}-{i}");
            last = client.put(&key, value.as_str()).await?.revision;
            if key.starts_with("mine/") {
                mine.push(Change::new(last, "put", &key, &value));
            }
        }
        while progress.last().is_none_or(|&p| p < last) {
            let frame = ws_frame(&mut ws).await?;
            if frame["type"] == "progress" {
                let p = frame["revision"].as_u64().ok_or("revision")?;
                assert!(p <= last, "progress {p} beyond the store's revision {last}");
                assert!(
                    progress.last().is_none_or(|&q| q <= p),
                    "{progress:?} then {p}"
                );
                let covered = mine.iter().filter(|c| c.revision <= p).count();
                assert_eq!(&got[..], &mine[..covered], "at progress {p}");
                progress.push(p);
            } else {
                let change = Change::of_frame(&frame)?.ok_or_else(|| format!("{frame}"))?;
                assert!(
                    progress.last().is_none_or(|&p| change.revision > p),
                    "{change:?} after progress {progress:?}"
                );
                got.push(change);
            }
        }
    }
    assert_eq!(got, mine);
    println!("progress frames during the writes: {progress:?}");

    // Resuming right after any progress frame misses nothing and repeats nothing.
    progress.dedup();
    for (n, p) in progress.into_iter().enumerate() {
        let query = format!("prefix=mine%2F&start_revision={}", p + 1);
        let mut resumed = ws_connect(&server.url, &query).await?;
        for expected in mine.iter().filter(|c| c.revision > p) {
            assert_eq!(
                &ws_change(&mut resumed).await?,
                expected,
                "after progress {p}"
            );
        }
        let key = format!("mine/sentinel{n}");
        let put = client.put(&key, "s").await?;
        let sentinel = Change::new(put.revision, "put", &key, "s");
        assert_eq!(
            ws_change(&mut resumed).await?,
            sentinel,
            "after progress {p}"
        );
        mine.push(sentinel);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. Dead peers
// ---------------------------------------------------------------------------

/// A WebSocket handshake written by hand on a plain TCP stream; returns the
/// stream and whatever bytes came after the response head.
async fn raw_handshake(
    addr: &str,
    query: &str,
) -> Result<(tokio::net::TcpStream, Vec<u8>), BoxError> {
    let mut tcp = within("connecting", tokio::net::TcpStream::connect(addr)).await??;
    let request = format!(
        "GET /v1/watch?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let (head, rest) = read_head(&mut tcp).await?;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // The accept key of RFC 6455's example key.
    assert!(head.contains("s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    Ok((tcp, rest))
}

/// Server-to-client frames parsed out of `buf` (consumed): (opcode, payload).
fn parse_frames(buf: &mut Vec<u8>) -> Result<Vec<(u8, Vec<u8>)>, BoxError> {
    let mut frames = Vec::new();
    loop {
        if buf.len() < 2 {
            return Ok(frames);
        }
        if buf[1] & 0x80 != 0 {
            return Err("the server masked a frame".into());
        }
        let (len, head) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            126 | 127 => return Ok(frames),
            n => (u64::from(n), 2),
        };
        let total = head + usize::try_from(len)?;
        if buf.len() < total {
            return Ok(frames);
        }
        let frame: Vec<u8> = buf.drain(..total).collect();
        frames.push((frame[0] & 0x0f, frame[head..].to_vec()));
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_are_dropped_and_live_ones_kept(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    // The peer timeout is ten ping intervals, so a live peer whose pongs are late
    // on a loaded machine is not taken for a silent one.
    const PEER_TIMEOUT: Duration = Duration::from_secs(2);
    let Some(server) = support::serve(engine, &["--ping-interval", "0.2", "--peer-timeout", "2"])
    else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;

    // A peer that reads but never answers pings: the server closes it.
    let silent = async {
        let started = Instant::now();
        let (mut tcp, mut buf) = raw_handshake(server.addr(), "prefix=dead%2F").await?;
        let (mut pings, mut texts, mut close_code, mut closed_after) = (0, 0, None, None);
        let mut chunk = [0u8; 4096];
        let outcome = tokio::time::timeout(WAIT, async {
            loop {
                for (opcode, payload) in parse_frames(&mut buf)? {
                    match opcode {
                        0x1 => texts += 1,
                        0x9 => pings += 1,
                        0x8 if payload.len() >= 2 => {
                            close_code = Some(u16::from_be_bytes([payload[0], payload[1]]));
                            closed_after = Some(started.elapsed());
                        }
                        0x8 => {
                            close_code = Some(0);
                            closed_after = Some(started.elapsed());
                        }
                        _ => {}
                    }
                }
                match tcp.read(&mut chunk).await {
                    Ok(0) => return Ok::<_, BoxError>("EOF"),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        return Ok("connection reset")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        })
        .await
        .map_err(|_| {
            format!(
                "a silent peer still connected after {WAIT:?} \
                 ({pings} pings, close frame {close_code:?})"
            )
        })??;
        let elapsed = started.elapsed();
        println!(
            "silent peer: close frame {close_code:?} after {closed_after:?}, {outcome} after \
             {elapsed:?}; {pings} pings, {texts} text frames before"
        );
        assert!(pings >= 1, "no ping before the drop");
        assert!(texts >= 1, "not even the opening progress frame");
        assert_eq!(
            close_code,
            Some(1001),
            "the close frame (Away) before the end"
        );
        // Never before the peer timeout (a lower bound only).
        let closed_after = closed_after.ok_or("no close frame")?;
        assert!(
            closed_after >= PEER_TIMEOUT,
            "dropped after {closed_after:?}"
        );
        Ok::<(), BoxError>(())
    };

    // A peer that reads (tungstenite answers pings as it reads) stays connected.
    let live = async {
        let started = Instant::now();
        let mut ws = ws_connect(&server.url, "prefix=alive%2F").await?;
        let mut pings = 0;
        // Letting time pass is the point here: keep reading (and so answering
        // pings) until well past the peer timeout, and until a few pings came
        // (every 0.2 s, later on a loaded machine: the count is not timed).
        while started.elapsed() < PEER_TIMEOUT * 3 / 2 || pings < 3 {
            match within("a ping", ws.next())
                .await?
                .ok_or("the watch ended")??
            {
                Message::Ping(_) => pings += 1,
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(text.as_str())?;
                    assert_eq!(frame["type"], "progress", "{frame}");
                }
                other => return Err(format!("a live peer got {other:?}").into()),
            }
        }
        println!("live peer: {pings} pings in {:?}", started.elapsed());
        let put = client.put("alive/k", "still here").await?;
        let change = ws_change(&mut ws).await?;
        assert_eq!(
            change,
            Change::new(put.revision, "put", "alive/k", "still here")
        );
        Ok::<(), BoxError>(())
    };

    let (silent, live) = tokio::join!(silent, live);
    silent?;
    live?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 6. SSE resumption across restarts
// ---------------------------------------------------------------------------

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_last_event_id_resumes_across_a_restart(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(store) = Backend::new(engine) else {
        return Ok(());
    };
    // Restarts keep this address (held by the test, so no other test can take it
    // while the server is down).
    let held = support::HeldAddress::new()?;
    let mut server = held.start_on(&store, &[])?;
    let client = Client::new(&held.url)?;

    let put = |key: &'static str, value: &'static str| {
        let client = client.clone();
        async move {
            let r = client.put(key, value).await?;
            Ok::<_, BoxError>(Change::new(r.revision, "put", key, value))
        }
    };
    let p1 = put("r/a", "1").await?;
    put("x/other", "x").await?;
    let p2 = put("r/b", "2").await?;
    let mut sse = Sse::connect(&held.url, "prefix=r%2F&start_revision=1", None).await?;
    assert_eq!(sse.next_change().await?, p1);
    assert_eq!(sse.next_change().await?, p2);
    let seen = p2.revision;

    // Changes this client does not see: some before the crash...
    let p3 = put("r/a", "3").await?;
    let deleted = client.delete("r/b").await?;
    let d4 = Change::new(deleted.revision, "delete", "r/b", "");
    put("x/other", "y").await?;
    held.kill(&mut server);
    drop(sse);

    // ...and some after the restart, on the same address and data.
    let mut server = held.start_on(&store, &[])?;
    let p5 = put("r/c", "5").await?;
    put("x/other", "z").await?;

    let mut sse = Sse::connect(&held.url, "prefix=r%2F", Some(seen)).await?;
    for expected in [&p3, &d4, &p5] {
        assert_eq!(&sse.next_change().await?, expected);
    }
    // Nothing else before the next live change.
    let p6 = put("r/d", "6").await?;
    assert_eq!(sse.next_change().await?, p6);

    // A second crash with this stream open: it ends, and resuming from its last
    // id gives only what came after.
    held.kill(&mut server);
    while let Ok(Some(event)) = sse.next_or_end().await {
        assert_eq!(event.event, "progress", "{event:?}");
    }
    let _server = held.start_on(&store, &[])?;
    let p7 = put("r/e", "7").await?;
    let mut sse = Sse::connect(&held.url, "prefix=r%2F", Some(p6.revision)).await?;
    assert_eq!(sse.next_change().await?, p7);
    let p8 = put("r/a", "8").await?;
    assert_eq!(sse.next_change().await?, p8);
    Ok(())
}

// ---------------------------------------------------------------------------
// 7. A peer that neither reads nor answers pings, once sends to it block
// ---------------------------------------------------------------------------

/// docs/watches.md: the server "drops those silent for 30 s". A peer that stopped reading
/// is silent too (it cannot answer pings), and once the server's send to it blocks
/// (socket buffers and the session channel full) the send itself must give up
/// after the peer timeout, or the peer would never be dropped.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_peer_is_dropped_even_while_a_send_to_it_is_pending(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    // --sync none: this is about the watch path, and the writes are many.
    let Some(server) = support::serve(
        engine,
        &[
            "--ping-interval",
            "0.2",
            "--peer-timeout",
            "2",
            "--event-buffer",
            "64",
            "--sync",
            "none",
        ],
    ) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let addr: std::net::SocketAddr = server.addr().parse()?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let tcp = within("connecting", socket.connect(addr)).await??;
    let (mut ws, _) = within(
        "the WebSocket handshake",
        tokio_tungstenite::client_async(ws_url(&server.url, "prefix=stuck%2F"), tcp),
    )
    .await??;
    assert_eq!(ws_frame(&mut ws).await?["type"], "progress");

    // Fill the buffers towards the client, well within the peer timeout: 25 MB,
    // far more than the kernel's socket buffers hold (4 MiB at most here; with
    // 6 MB the sends never blocked, and the test passed without the send timeout).
    let value = "v".repeat(16 * 1024);
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = client.clone();
        let value = value.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..400 {
                let key = format!("stuck/{w}/{}", i % 10);
                client.put(&key, value.as_str()).await?;
            }
            Ok::<(), ClientError>(())
        }));
    }
    // 26 MB of puts is work, not a wait on an event: its bound is a minute, for a
    // loaded machine.
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(60), writer)
            .await
            .map_err(|_| "the writers took over a minute")???;
    }
    // The verdict is the server's debug line (on by default in the harness): it
    // must come while this client is still stuck. What the client reads after
    // does not tell: once it reads, the server's send completes and the overdue
    // peer check may then drop it, or the watch may report `lagged`.
    let (logged, server) = tokio::task::spawn_blocking(move || {
        // Waits on the line; the bound is only a safety net, fifteen peer timeouts.
        let logged = server.wait_for_log("dropping a silent watch client", Duration::from_secs(30));
        (logged, server)
    })
    .await?;
    let ending = loop {
        match ws_item(&mut ws).await {
            Ok(WsItem::Frame(frame)) if frame["type"] == "put" || frame["type"] == "progress" => {}
            Ok(WsItem::Frame(frame)) => break format!("frame {frame}"),
            Ok(WsItem::Closed(close)) => break format!("close {close:?}"),
            Err(e) => break format!("{e}"),
        }
    };
    drop(server);
    assert!(
        logged,
        "a peer silent for over the peer timeout was kept while sends to it were \
         blocked; once it read, its stream ended with {ending}"
    );
    Ok(())
}

/// The same for a peer that keeps talking (pings, so it never looks silent) but
/// stopped reading: once the server's answers to it (pongs) fill the buffers,
/// the answer it is sending must give up after the peer timeout too, or the
/// peer, its task and its watcher slot would be kept for ever.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_talks_but_never_reads_is_dropped(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &["--ping-interval", "0.2", "--peer-timeout", "2"])
    else {
        return Ok(());
    };
    let addr: std::net::SocketAddr = server.addr().parse()?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let tcp = within("connecting", socket.connect(addr)).await??;
    let (mut ws, _) = within(
        "the WebSocket handshake",
        tokio_tungstenite::client_async(ws_url(&server.url, "prefix=talker%2F"), tcp),
    )
    .await??;
    assert_eq!(ws_frame(&mut ws).await?["type"], "progress");
    // Pings with the largest payload, as fast as they go, never reading: each
    // gets a pong of the same size, which this client leaves unread.
    let flood = tokio::spawn(async move {
        use futures_util::SinkExt;
        let mut sent = 0u64;
        while ws.send(Message::Ping(vec![7u8; 125].into())).await.is_ok() {
            sent += 1;
        }
        sent
    });
    // The verdict is the server's debug line; the bound is a safety net (fifteen
    // peer timeouts).
    let (logged, server) = tokio::task::spawn_blocking(move || {
        let logged = server.wait_for_log("dropping a silent watch client", Duration::from_secs(30));
        (logged, server)
    })
    .await?;
    flood.abort();
    drop(server);
    assert!(
        logged,
        "a peer that stopped reading was kept for over fifteen peer timeouts"
    );
    Ok(())
}

/// etcd before 3.4.34 and 3.5.15 drops a delete made at the very revision it
/// compacts at (etcd issue #18089). A compaction through the server keeps every
/// change from its revision on, that delete too; after a compaction made behind
/// the server's back, a watch from that revision is refused, not served without
/// the delete.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_at_the_compacted_revision_is_never_lost_to_a_watch(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    // A buffer of one change: the watches below read the store's history.
    let Some(mut server) = support::serve(engine, &["--event-buffer", "1"]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let etcd_url = server.etcd_url.clone().ok_or("no etcd API")?;
    let mut etcd = etcd_client::Client::connect([etcd_url], None).await?;
    for round in 0..2 {
        let key = format!("d/{round}");
        client.put(&key, "v").await?;
        let deleted = client.delete(&key).await?.revision;
        client.put("d/after", format!("{round}")).await?;
        let behind_its_back = round == 1;
        if behind_its_back {
            let Some(cluster) = server.backend().and_then(Backend::cluster) else {
                break;
            };
            cluster.compact(deleted)?;
        } else {
            etcd.compact(deleted as i64, None).await?;
        }
        let mut watch = Box::pin(client.watch_with(WatchOptions {
            prefix: "d/".into(),
            start_revision: Some(deleted),
            ..WatchOptions::default()
        }));
        match within("the first change", watch.next()).await? {
            Some(Ok(Update::Event(event))) if !behind_its_back => {
                assert_eq!(
                    (event.key.as_str(), event.revision),
                    (key.as_str(), deleted)
                );
                assert_eq!(event.kind, kvstore_client::EventKind::Delete);
            }
            Some(Err(ClientError::Compacted { oldest, .. })) if behind_its_back => {
                assert_eq!(oldest, deleted + 1);
            }
            other => return Err(format!("round {round}: got {other:?}").into()),
        }
    }
    Ok(())
}
