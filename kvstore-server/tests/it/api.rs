//! End-to-end tests of the HTTP API (spec of issue #2) against the real server
//! binary: the typed client, raw HTTP with reqwest, raw WebSocket frames and SSE.
//!
//! Nothing here sleeps to synchronise: tests wait for stream items, with
//! [`WAIT`] as a safety net only.

use crate::support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use kvstore_client::{
    Client, Condition, Error as ClientError, Event, EventKind, Update, WatchOptions,
};
use reqwest::header::{ACCEPT, CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH};
use rstest::rstest;
use serde_json::{json, Value};
use support::{Backend, Engine, TestServer, EMPTY_REVISION};
use tokio_tungstenite::tungstenite::Message;

type BoxError = Box<dyn std::error::Error>;
type TestResult = Result<(), BoxError>;

/// Safety net for every wait on the server; a healthy run never gets near it.
const WAIT: Duration = Duration::from_secs(10);

/// Safety net for a whole run of contended durable writes.
const CONTENDED: Duration = Duration::from_secs(300);

/// `f`, or an error after [`WAIT`].
async fn within<T>(what: &str, f: impl Future<Output = T>) -> Result<T, BoxError> {
    tokio::time::timeout(WAIT, f)
        .await
        .map_err(|_| format!("timed out after {WAIT:?} waiting for {what}").into())
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Standard base64 with padding, written here so the test does not trust the
/// encoder it checks.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(chunk[0]) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The field names of a JSON object.
fn fields(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Result<&'a str, BoxError> {
    let value = res
        .headers()
        .get(name)
        .ok_or_else(|| format!("no {name} header in {:?}", res.headers()))?;
    Ok(value.to_str()?)
}

fn header_u64(res: &reqwest::Response, name: &str) -> Result<u64, BoxError> {
    Ok(header(res, name)?.parse()?)
}

/// Asserts that `res` is an error answer `{"error": {"code", "message"}}` with
/// `status` and `code`, and returns the `error` object.
async fn expect_error(res: reqwest::Response, status: u16, code: &str) -> Result<Value, BoxError> {
    let what = format!("{} {}", res.url(), res.status());
    assert_eq!(res.status().as_u16(), status, "status of {what}");
    let content_type = header(&res, CONTENT_TYPE.as_str())?.to_string();
    assert!(
        content_type.starts_with("application/json"),
        "content type of {what}: {content_type}"
    );
    let body: Value = res.json().await?;
    assert_eq!(fields(&body), set(&["error"]), "{what}: {body}");
    let error = &body["error"];
    assert_eq!(error["code"], code, "{what}: {body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: the message must be a non-empty string: {body}"
    );
    Ok(error.clone())
}

/// Waits until the server has published `revision` to watchers, so the store
/// revision it reports (healthz, `x-kv-revision`, progress frames) is at least
/// that. A watch from `revision` delivers it either from the history (then it
/// was already published) or live (published just before).
async fn wait_published(client: &Client, revision: u64) -> TestResult {
    let mut watch = Box::pin(client.watch_with(WatchOptions {
        start_revision: Some(revision),
        reconnect: false,
        ..WatchOptions::default()
    }));
    loop {
        let update = within("the watch to reach a revision", watch.next())
            .await?
            .ok_or("the watch ended")??;
        if let Update::Event(event) = update {
            if event.revision >= revision {
                return Ok(());
            }
        }
    }
}

/// The next item of a client watch.
async fn next_event<S>(watch: &mut S) -> Result<Event, BoxError>
where
    S: Stream<Item = Result<Event, ClientError>> + Unpin,
{
    Ok(within("a watch event", watch.next())
        .await?
        .ok_or("the watch ended")??)
}

/// The next update of a client watch, skipping `Reconnecting`.
async fn next_update<S>(watch: &mut S) -> Result<Update, BoxError>
where
    S: Stream<Item = Result<Update, ClientError>> + Unpin,
{
    loop {
        match within("a watch update", watch.next())
            .await?
            .ok_or("the watch ended")??
        {
            Update::Reconnecting { .. } => continue,
            update => return Ok(update),
        }
    }
}

/// `client.watch` connects lazily and a live watch only sees changes made after
/// it is open: keep writing `marker` until the watch reports it, so every write
/// after this returns is seen. The caller skips the remaining marker events.
async fn sync_watch<S>(client: &Client, watch: &mut S, marker: &str) -> TestResult
where
    S: Stream<Item = Result<Event, ClientError>> + Unpin,
{
    let stop = Arc::new(AtomicBool::new(false));
    let pinger = tokio::spawn({
        let client = client.clone();
        let stop = stop.clone();
        let marker = marker.to_string();
        async move {
            while !stop.load(Ordering::SeqCst) {
                client.put(&marker, "marker").await?;
            }
            Ok::<(), ClientError>(())
        }
    });
    let first = next_event(watch).await;
    stop.store(true, Ordering::SeqCst);
    pinger.await??;
    assert_eq!(first?.key, marker);
    Ok(())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(server: &TestServer, query: &str) -> Result<Ws, BoxError> {
    let url = format!(
        "{}/v1/watch?{query}",
        server.url.replacen("http://", "ws://", 1)
    );
    let (ws, _) = within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(url),
    )
    .await??;
    Ok(ws)
}

/// The next text frame, parsed.
async fn ws_next(ws: &mut Ws) -> Result<Value, BoxError> {
    loop {
        let message = within("a WebSocket frame", ws.next())
            .await?
            .ok_or("the WebSocket closed")??;
        match message {
            Message::Text(text) => return Ok(serde_json::from_str(text.as_str())?),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return Err(format!("unexpected WebSocket message {other:?}").into()),
        }
    }
}

/// The next text frame that is not a `progress` frame (those come after idle
/// periods, whose length depends on the machine's load).
async fn ws_next_change(ws: &mut Ws) -> Result<Value, BoxError> {
    loop {
        let frame = ws_next(ws).await?;
        if frame["type"] != "progress" {
            return Ok(frame);
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug)]
struct SseEvent {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// A Server-Sent Events response, read event by event.
struct Sse {
    body: BoxStream<'static, Result<Vec<u8>, reqwest::Error>>,
    buf: Vec<u8>,
}

impl Sse {
    async fn connect(
        http: &reqwest::Client,
        server: &TestServer,
        query: &str,
        last_event_id: Option<u64>,
    ) -> Result<Sse, BoxError> {
        let mut req = http
            .get(format!("{}/v1/watch?{query}", server.url))
            .header(ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let res = within("the SSE response", req.send()).await??;
        Sse::of(res)
    }

    /// The stream of an answer, which must be Server-Sent Events.
    fn of(res: reqwest::Response) -> Result<Sse, BoxError> {
        assert_eq!(res.status(), 200);
        assert!(header(&res, CONTENT_TYPE.as_str())?.starts_with("text/event-stream"));
        Ok(Sse {
            body: res.bytes_stream().map(|r| r.map(|b| b.to_vec())).boxed(),
            buf: Vec::new(),
        })
    }

    async fn next(&mut self) -> Result<SseEvent, BoxError> {
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
                return Ok(SseEvent {
                    id,
                    event: event.ok_or_else(|| format!("SSE event without event: {text:?}"))?,
                    data: data.ok_or_else(|| format!("SSE event without data: {text:?}"))?,
                });
            }
            let chunk = within("SSE bytes", self.body.next())
                .await?
                .ok_or("the SSE stream ended")??;
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next event that is not `progress`.
    async fn next_change(&mut self) -> Result<SseEvent, BoxError> {
        loop {
            let event = self.next().await?;
            if event.event != "progress" {
                return Ok(event);
            }
        }
    }
}

fn bad_request(e: &ClientError) -> Option<(u16, &str)> {
    match e {
        ClientError::BadRequest { status, code, .. } => Some((*status, code.as_str())),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Reads and writes through the client
// ---------------------------------------------------------------------------

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_delete_through_the_client(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(backend) = Backend::new(engine) else {
        return Ok(());
    };
    let server = TestServer::on(&backend, &[]);
    let client = Client::new(&server.url)?;
    assert_eq!(client.health().await?, EMPTY_REVISION);

    let first = client.put("crud/a", "one").await?;
    assert_eq!(first.version, 1);
    assert_eq!(first.create_revision, first.revision);
    let second = client.put("crud/a", "two").await?;
    assert_eq!(
        second.revision,
        first.revision + 1,
        "revisions are gap-free"
    );
    assert_eq!(second.create_revision, first.revision);
    assert_eq!(second.version, 2);

    assert_eq!(client.get("crud/a").await?, b"two");
    let entry = client.get_entry("crud/a").await?;
    assert_eq!(entry.key, "crud/a");
    assert_eq!(entry.value, b"two");
    assert_eq!(entry.create_revision, first.revision);
    assert_eq!(entry.mod_revision, second.revision);
    assert_eq!(entry.version, 2);

    let deleted = client.delete("crud/a").await?;
    assert_eq!(deleted.revision, second.revision + 1);
    match client.get("crud/a").await {
        Err(ClientError::NotFound { key }) => assert_eq!(key, "crud/a"),
        other => panic!("expected NotFound after delete, got {other:?}"),
    }
    assert!(matches!(
        client.get_entry("crud/a").await,
        Err(ClientError::NotFound { .. })
    ));
    assert!(matches!(
        client.delete("crud/a").await,
        Err(ClientError::NotFound { .. })
    ));

    // A key created again starts a new life.
    let again = client.put("crud/a", "three").await?;
    assert_eq!(again.revision, deleted.revision + 1);
    assert_eq!(again.create_revision, again.revision);
    assert_eq!(again.version, 1);
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_a_prefix(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    // Neighbours that must stay out of the "page/" listing.
    client.put("page", "outside").await?;
    client.put("pagf/x", "outside").await?;
    client.put("pag", "outside").await?;
    let mut expected = Vec::new();
    for i in (0..25).rev() {
        let key = format!("page/k{i:02}");
        client.put(key.as_str(), format!("v{i:02}")).await?;
        expected.push(key);
    }
    expected.sort();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let page = client.list("page/", after.as_deref(), Some(10)).await?;
        pages.push(page.entries.len());
        for entry in &page.entries {
            assert_eq!(entry.value, format!("v{}", &entry.key[6..]).as_bytes());
        }
        seen.extend(page.entries.iter().map(|e| e.key.clone()));
        match page.next {
            Some(next) => {
                assert_eq!(Some(&next), seen.last(), "next is the last key of the page");
                after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(pages, [10, 10, 5]);
    assert_eq!(seen, expected);

    // A page that holds exactly the rest has no `next`.
    let whole = client.list("page/", None, Some(25)).await?;
    assert_eq!(whole.entries.len(), 25);
    assert_eq!(whole.next, None);
    let tail = client.list("page/", Some("page/k19"), Some(5)).await?;
    assert_eq!(tail.entries.len(), 5);
    assert_eq!(tail.next, None);

    let all: Vec<String> = client
        .list_all("page/")
        .await?
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(all, expected);
    assert_eq!(client.list_all("").await?.len(), 28);
    assert!(client.list_all("nothing/").await?.is_empty());

    // The limit must be within 1..=1000; at either end it gives that many.
    let one = client.list("page/", None, Some(1)).await?;
    let keys: Vec<&str> = one.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["page/k00"]);
    assert_eq!(one.next.as_deref(), Some("page/k00"));
    let most = client.list("", None, Some(1000)).await?;
    assert_eq!((most.entries.len(), most.next), (28, None));
    for limit in [0, 1001] {
        let err = client
            .list("page/", None, Some(limit))
            .await
            .err()
            .ok_or("an out-of-range limit was accepted")?;
        assert_eq!(bad_request(&err), Some((400, "invalid_request")), "{err:?}");
    }
    Ok(())
}

/// docs/http-api.md: "default 100" for a listing's `limit`.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_without_a_limit_gives_pages_of_100(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let mut writers = Vec::new();
    for w in 0..5 {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..30 {
                client.put(&format!("d/{:03}", w * 30 + i), "v").await?;
            }
            Ok::<(), ClientError>(())
        }));
    }
    for writer in writers {
        within("a writer", writer).await???;
    }
    let expected: Vec<String> = (0..150).map(|i| format!("d/{i:03}")).collect();

    let first = client.list("d/", None, None).await?;
    let keys: Vec<String> = first.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(keys, expected[..100]);
    assert_eq!(first.next.as_deref(), Some("d/099"));
    let rest = client.list("d/", first.next.as_deref(), None).await?;
    let keys: Vec<String> = rest.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(keys, expected[100..]);
    assert_eq!(rest.next, None);

    // Raw, with no query string at all.
    let body: Value = reqwest::get(format!("{}/v1/kv", server.url))
        .await?
        .json()
        .await?;
    assert_eq!(
        body["entries"].as_array().map(Vec::len),
        Some(100),
        "{body}"
    );
    assert_eq!(body["next"], "d/099");
    Ok(())
}

/// docs/http-api.md: values are "1 MiB at most by default".
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_value_limit_is_one_mib(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let largest: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let put = client.put("max", largest.clone()).await?;
    assert_eq!(client.get("max").await?, largest);

    let mut over = largest.clone();
    over.push(0);
    let res = http
        .put(format!("{}/v1/kv/over", server.url))
        .body(over.clone())
        .send()
        .await?;
    let error = expect_error(res, 413, "value_too_large").await?;
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("1048576"), "{message}");
    match client.put("over", over).await {
        Err(ClientError::BadRequest { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (413, "value_too_large"))
        }
        other => panic!("expected 413 value_too_large, got {other:?}"),
    }
    assert!(matches!(
        client.get("over").await,
        Err(ClientError::NotFound { .. })
    ));
    assert_eq!(client.health().await?, put.revision, "nothing else written");
    Ok(())
}

/// A value the server's `--max-value-bytes` takes but etcd's own request limit
/// (1.5 MiB by default) does not is `value_too_large` naming etcd's limit, and
/// nothing is written. sled has no limit of its own.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_the_stores_own_limit_is_value_too_large(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &["--max-value-bytes", "3000000"]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let before = client.health().await?;
    let value = vec![b'x'; 2_000_000];
    let res = reqwest::Client::new()
        .put(format!("{}/v1/kv/big", server.url))
        .body(value.clone())
        .send()
        .await?;
    match engine {
        Engine::Sled => {
            assert_eq!(res.status(), 200);
            assert_eq!(client.get("big").await?, value);
        }
        Engine::Etcd => {
            let error = expect_error(res, 413, "value_too_large").await?;
            let message = error["message"].as_str().unwrap_or_default();
            assert!(message.contains("--max-request-bytes"), "{message}");
            assert!(matches!(
                client.get("big").await,
                Err(ClientError::NotFound { .. })
            ));
            assert_eq!(client.health().await?, before, "nothing written");
        }
    }
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_values_round_trip_raw_and_as_base64(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let all: Vec<u8> = (0..=255u8).collect();
    assert_eq!(base64(&[0, 1, 2, 255]), "AAEC/w==");

    let put = client.put("bin/all", all.clone()).await?;
    assert_eq!(client.get("bin/all").await?, all);
    assert_eq!(client.get_entry("bin/all").await?.value, all);

    let url = format!("{}/v1/kv/bin/all", server.url);
    let res = http.get(&url).send().await?;
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, CONTENT_TYPE.as_str())?,
        "application/octet-stream"
    );
    assert_eq!(res.bytes().await?.as_ref(), all.as_slice());

    let res = http
        .get(&url)
        .header(ACCEPT, "application/json")
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await?;
    assert_eq!(
        body,
        json!({
            "key": "bin/all",
            "value": base64(&all),
            "encoding": "base64",
            "create_revision": put.revision,
            "mod_revision": put.revision,
            "version": 1,
        })
    );

    // Every single byte on its own, written raw and read back through the client.
    for byte in 0..=255u8 {
        let res = http
            .put(format!("{}/v1/kv/bin/byte{byte}", server.url))
            .body(vec![byte])
            .send()
            .await?;
        assert_eq!(res.status(), 200, "byte {byte}");
        assert_eq!(client.get(&format!("bin/byte{byte}")).await?, [byte]);
    }
    let entries = client.list_all("bin/byte").await?;
    assert_eq!(entries.len(), 256);
    let values: BTreeSet<Vec<u8>> = entries.into_iter().map(|e| e.value).collect();
    assert_eq!(values.len(), 256);

    // Text stays plain text in JSON.
    client.put("bin/text", "héllo").await?;
    let body: Value = http
        .get(format!("{}/v1/kv/bin/text", server.url))
        .header(ACCEPT, "application/json")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(body["value"], "héllo");
    assert_eq!(
        fields(&body),
        set(&["key", "value", "create_revision", "mod_revision", "version"])
    );
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sends_etag_and_revision_headers(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let first = client.put("hdr/k", "v1").await?;
    client.put("hdr/other", "x").await?;
    let second = client.put("hdr/k", "v2").await?;
    let last = client.put("hdr/other", "y").await?;
    wait_published(&client, last.revision).await?;

    for accept in ["*/*", "application/json"] {
        let res = http
            .get(format!("{}/v1/kv/hdr/k", server.url))
            .header(ACCEPT, accept)
            .send()
            .await?;
        assert_eq!(res.status(), 200);
        assert_eq!(
            header(&res, ETAG.as_str())?,
            format!("\"{}\"", second.revision)
        );
        assert_eq!(header_u64(&res, "x-kv-create-revision")?, first.revision);
        assert_eq!(header_u64(&res, "x-kv-mod-revision")?, second.revision);
        assert_eq!(header_u64(&res, "x-kv-version")?, 2);
        assert_eq!(header_u64(&res, "x-kv-revision")?, last.revision);
    }

    // PUT answers {revision, create_revision, version}.
    let res = http
        .put(format!("{}/v1/kv/hdr/k", server.url))
        .body("v3")
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await?;
    assert_eq!(
        body,
        json!({"revision": last.revision + 1, "create_revision": first.revision, "version": 3})
    );
    // DELETE answers {revision}.
    let res = http
        .delete(format!("{}/v1/kv/hdr/k", server.url))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await?;
    assert_eq!(body, json!({"revision": last.revision + 2}));
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_the_store_revision(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let url = format!("{}/healthz", server.url);
    let engine = server.engine().name();
    let body: Value = http.get(&url).send().await?.json().await?;
    assert_eq!(
        body,
        json!({"status": "ok", "engine": engine, "revision": EMPTY_REVISION,
               "oldest_revision": 1})
    );
    client.put("h/a", "1").await?;
    let put = client.put("h/b", "2").await?;
    wait_published(&client, put.revision).await?;
    let res = http.get(&url).send().await?;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await?;
    assert_eq!(
        body,
        json!({"status": "ok", "engine": engine, "revision": put.revision,
               "oldest_revision": 1})
    );
    assert_eq!(client.health().await?, put.revision);
    Ok(())
}

/// Once a write is acknowledged, the store revision the server reports next
/// (`x-kv-revision` on a read of that key, `/healthz`, a listing's `revision`)
/// must not be older than the write: a reader must never see an entry whose
/// `mod_revision` is newer than the "current" store revision in the same answer.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_store_revision_covers_acknowledged_writes(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/kv/ryw/k", server.url);
    for i in 0..200 {
        let put = client.put("ryw/k", format!("{i}")).await?;
        let res = http.get(&url).send().await?;
        let mod_revision = header_u64(&res, "x-kv-mod-revision")?;
        let store_revision = header_u64(&res, "x-kv-revision")?;
        assert_eq!(mod_revision, put.revision);
        assert!(
            store_revision >= mod_revision,
            "iteration {i}: GET returned mod_revision {mod_revision} with x-kv-revision {store_revision}"
        );
        let health = client.health().await?;
        assert!(
            health >= put.revision,
            "iteration {i}: /healthz says {health} after put {} was acknowledged",
            put.revision
        );
        let page = client.list("ryw/", None, None).await?;
        assert!(
            page.revision >= put.revision,
            "iteration {i}: list revision {} after put {} was acknowledged",
            page.revision,
            put.revision
        );
    }
    Ok(())
}

/// While writes are in flight, a read must not show an entry whose
/// `x-kv-mod-revision` is newer than the `x-kv-revision` (store revision: the last
/// durable change) sent with it: that would be a value that is not durable yet
/// and that a crash could still take back.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_writes_never_outrun_the_store_revision(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    client.put("dirty/k", "0").await?;
    let done = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let client = client.clone();
        let done = done.clone();
        async move {
            let result = async {
                for i in 1..=300 {
                    client.put("dirty/k", format!("{i}")).await?;
                }
                Ok::<(), ClientError>(())
            }
            .await;
            done.store(true, Ordering::SeqCst);
            result
        }
    });
    let url = format!("{}/v1/kv/dirty/k", server.url);
    let mut reads = 0u32;
    let mut ahead = Vec::new();
    while !done.load(Ordering::SeqCst) {
        let res = http.get(&url).send().await?;
        let mod_revision = header_u64(&res, "x-kv-mod-revision")?;
        let store_revision = header_u64(&res, "x-kv-revision")?;
        reads += 1;
        if mod_revision > store_revision {
            ahead.push((mod_revision, store_revision));
        }
    }
    within("the writer", writer).await???;
    assert!(
        ahead.is_empty(),
        "{} of {reads} reads showed a mod_revision newer than the store revision, \
         e.g. (x-kv-mod-revision, x-kv-revision) = {:?}",
        ahead.len(),
        &ahead[..ahead.len().min(5)]
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Conditional writes
// ---------------------------------------------------------------------------

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_and_create_only(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/kv/cas/k", server.url);

    let first = client.put("cas/k", "v1").await?;
    let swapped = client
        .put_if("cas/k", "v2", Condition::ModRevision(first.revision))
        .await?;
    assert_eq!(swapped.version, 2);
    match client
        .put_if("cas/k", "stale", Condition::ModRevision(first.revision))
        .await
    {
        Err(ClientError::PreconditionFailed { current, .. }) => {
            assert_eq!(current, Some(swapped.revision))
        }
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }
    assert_eq!(client.get("cas/k").await?, b"v2");

    // Raw: 412 with the current mod_revision in the error object.
    let res = http
        .put(&url)
        .header(IF_MATCH, format!("\"{}\"", first.revision))
        .body("stale")
        .send()
        .await?;
    let error = expect_error(res, 412, "precondition_failed").await?;
    assert_eq!(error["revision"], swapped.revision);
    let res = http
        .put(&url)
        .header(IF_MATCH, format!("\"{}\"", swapped.revision))
        .body("v3")
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await?;
    assert_eq!(
        fields(&body),
        set(&["revision", "create_revision", "version"])
    );
    assert_eq!(body["version"], 3);
    let current = body["revision"].as_u64().ok_or("revision")?;
    assert_eq!(client.get("cas/k").await?, b"v3");

    // Create-only.
    let created = client.put_if("cas/new", "n1", Condition::Absent).await?;
    assert_eq!(created.version, 1);
    match client.put_if("cas/new", "n2", Condition::Absent).await {
        Err(ClientError::PreconditionFailed { current, .. }) => {
            assert_eq!(current, Some(created.revision))
        }
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }
    let res = http
        .put(format!("{}/v1/kv/cas/new", server.url))
        .header(IF_NONE_MATCH, "*")
        .body("n3")
        .send()
        .await?;
    let error = expect_error(res, 412, "precondition_failed").await?;
    assert_eq!(error["revision"], created.revision);
    assert_eq!(client.get("cas/new").await?, b"n1");

    // Conditions on a missing key: no current revision.
    for condition in [Condition::Exists, Condition::ModRevision(current)] {
        match client.put_if("cas/missing", "x", condition).await {
            Err(ClientError::PreconditionFailed { current, .. }) => assert_eq!(current, None),
            other => panic!("{condition:?} on a missing key: {other:?}"),
        }
    }
    assert!(matches!(
        client.get("cas/missing").await,
        Err(ClientError::NotFound { .. })
    ));
    assert_eq!(
        client
            .put_if("cas/k", "v4", Condition::Exists)
            .await?
            .version,
        4
    );
    let current = client.get_entry("cas/k").await?.mod_revision;

    // Conditional deletes.
    match client
        .delete_if("cas/k", Condition::ModRevision(first.revision))
        .await
    {
        Err(ClientError::PreconditionFailed { current: c, .. }) => assert_eq!(c, Some(current)),
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }
    client
        .delete_if("cas/k", Condition::ModRevision(current))
        .await?;
    assert!(matches!(
        client.get("cas/k").await,
        Err(ClientError::NotFound { .. })
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_have_the_right_variants(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(mut server) = support::serve(engine, &["--max-value-bytes", "1024"]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;

    match client.get("err/missing").await {
        Err(ClientError::NotFound { key }) => assert_eq!(key, "err/missing"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        client.delete("err/missing").await,
        Err(ClientError::NotFound { .. })
    ));

    let long_key = "k".repeat(4097);
    for result in [
        client.get("").await.map(|_| ()),
        client.put("", "v").await.map(|_| ()),
        client.get(&long_key).await.map(|_| ()),
        client.put(long_key.as_str(), "v").await.map(|_| ()),
    ] {
        let err = result.err().ok_or("an invalid key was accepted")?;
        assert_eq!(bad_request(&err), Some((400, "invalid_key")), "{err:?}");
    }
    let longest = "k".repeat(4096);
    client.put(longest.as_str(), "v").await?;
    assert_eq!(client.get(&longest).await?, b"v");

    let err = client
        .put("err/big", vec![7u8; 1025])
        .await
        .err()
        .ok_or("a value over the limit was accepted")?;
    assert_eq!(bad_request(&err), Some((413, "value_too_large")), "{err:?}");
    assert!(!err.is_transient());
    client.put("err/big", vec![7u8; 1024]).await?;
    assert_eq!(client.get("err/big").await?.len(), 1024);

    match client
        .put_if("err/big", "x", Condition::ModRevision(1))
        .await
    {
        Err(ClientError::PreconditionFailed { current, .. }) => assert!(current.is_some()),
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }

    // A server that is gone: Connection, transient.
    let url = server.url.clone();
    server.kill();
    for err in [
        client.get("err/big").await.err(),
        client.put("err/x", "v").await.err(),
        client.health().await.err(),
    ] {
        let err = err.ok_or("a dead server answered")?;
        assert!(matches!(err, ClientError::Connection(_)), "{err:?}");
        assert!(err.is_transient());
    }
    let mut watch = Box::pin(Client::new(&url)?.watch_with(WatchOptions {
        reconnect: false,
        ..WatchOptions::default()
    }));
    let item = within("the watch to fail", watch.next())
        .await?
        .ok_or("the watch ended without an error")?;
    assert!(matches!(item, Err(ClientError::Connection(_))), "{item:?}");
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_error_bodies_are_json_with_codes(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &["--max-value-bytes", "1024"]) else {
        return Ok(());
    };
    let http = reqwest::Client::new();
    let base = &server.url;

    // Unknown routes.
    for path in ["/nope", "/v1/nope", "/v2/kv/a", "/v1/kvx", "/v1/kvx/a"] {
        let res = http.get(format!("{base}{path}")).send().await?;
        expect_error(res, 404, "not_found").await?;
    }
    // A known path with a method it does not take (see also
    // `unsupported_methods_on_keys_answer_405`, and the OpenAPI test for every path).
    for (method, path) in [
        (reqwest::Method::PUT, "/v1/kv"),
        (reqwest::Method::POST, "/v1/kv"),
    ] {
        let res = http.request(method, format!("{base}{path}")).send().await?;
        assert_eq!(header(&res, "allow")?, "GET, HEAD, DELETE");
        expect_error(res, 405, "method_not_allowed").await?;
    }

    // Keys.
    for path in ["/v1/kv/%FF", "/v1/kv/a%C3", "/v1/kv/"] {
        let res = http.get(format!("{base}{path}")).send().await?;
        expect_error(res, 400, "invalid_key").await?;
        let res = http.put(format!("{base}{path}")).body("v").send().await?;
        expect_error(res, 400, "invalid_key").await?;
        let res = http.delete(format!("{base}{path}")).send().await?;
        expect_error(res, 400, "invalid_key").await?;
    }
    let long = "a".repeat(4097);
    let res = http.get(format!("{base}/v1/kv/{long}")).send().await?;
    expect_error(res, 400, "invalid_key").await?;
    // 4095 ASCII bytes and a two-byte é: 4097 bytes once decoded.
    let long = format!("{}%C3%A9", "a".repeat(4095));
    let res = http
        .put(format!("{base}/v1/kv/{long}"))
        .body("v")
        .send()
        .await?;
    expect_error(res, 400, "invalid_key").await?;

    // Missing keys.
    let res = http.get(format!("{base}/v1/kv/missing")).send().await?;
    expect_error(res, 404, "key_not_found").await?;
    let res = http.delete(format!("{base}/v1/kv/missing")).send().await?;
    expect_error(res, 404, "key_not_found").await?;

    // Values over the limit, announced by Content-Length or streamed.
    let res = http
        .put(format!("{base}/v1/kv/big"))
        .body(vec![1u8; 1025])
        .send()
        .await?;
    expect_error(res, 413, "value_too_large").await?;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(vec![1u8; 600]), Ok(vec![2u8; 600])];
    let res = http
        .put(format!("{base}/v1/kv/big"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await?;
    expect_error(res, 413, "value_too_large").await?;
    let res = http.get(format!("{base}/v1/kv/big")).send().await?;
    expect_error(res, 404, "key_not_found").await?;

    // List parameters.
    for query in ["limit=0", "limit=1001", "limit=abc", "limit=-1"] {
        let res = http.get(format!("{base}/v1/kv?{query}")).send().await?;
        expect_error(res, 400, "invalid_request").await?;
    }

    // Failed preconditions.
    let res = http
        .put(format!("{base}/v1/kv/pre"))
        .body("1")
        .send()
        .await?;
    let body: Value = res.json().await?;
    let revision = body["revision"].as_u64().ok_or("revision")?;
    let res = http
        .put(format!("{base}/v1/kv/pre"))
        .header(IF_MATCH, format!("\"{}\"", revision + 100))
        .body("2")
        .send()
        .await?;
    let error = expect_error(res, 412, "precondition_failed").await?;
    assert_eq!(error["revision"], revision);
    let res = http
        .put(format!("{base}/v1/kv/pre"))
        .header(IF_NONE_MATCH, "*")
        .body("2")
        .send()
        .await?;
    let error = expect_error(res, 412, "precondition_failed").await?;
    assert_eq!(error["revision"], revision);
    let res = http
        .delete(format!("{base}/v1/kv/pre"))
        .header(IF_MATCH, "\"999\"")
        .send()
        .await?;
    let error = expect_error(res, 412, "precondition_failed").await?;
    assert_eq!(error["revision"], revision);
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_methods_on_keys_answer_405(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let http = reqwest::Client::new();
    let base = &server.url;
    let client = Client::new(base)?;
    client.put("a", "v").await?;
    let revision = client.health().await?;

    for method in ["POST", "PATCH", "OPTIONS", "TRACE", "FOO"] {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        for path in ["/v1/kv/a", "/v1/kv/missing", "/v1/kv/app/db", "/v1/kv/"] {
            let res = http
                .request(method.clone(), format!("{base}{path}"))
                .body("x")
                .send()
                .await?;
            assert_eq!(
                header(&res, "allow")?,
                "GET, HEAD, PUT, DELETE",
                "{method} {path}"
            );
            let error = expect_error(res, 405, "method_not_allowed").await?;
            let message = error["message"].as_str().unwrap_or_default();
            assert!(message.contains(method.as_str()), "{message}");
        }
    }
    // Nothing changed, and the supported methods still work.
    assert_eq!(client.health().await?, revision);
    assert_eq!(client.get("a").await?, b"v");
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_methods_on_keys_answer_405_before_the_token_check(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = support::admin_access_file(dir.path())?;
    let Some(server) = support::serve(engine, &["--access-file", &file]) else {
        return Ok(());
    };
    let http = reqwest::Client::new();
    let res = http.post(format!("{}/v1/kv/a", server.url)).send().await?;
    expect_error(res, 405, "method_not_allowed").await?;
    let res = http.get(format!("{}/v1/kv/a", server.url)).send().await?;
    expect_error(res, 401, "unauthorized").await?;
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_keys_are_decoded(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let base = &server.url;

    let res = http
        .put(format!("{base}/v1/kv/pct%2Fa%2Fb"))
        .body("x")
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    let res = http.get(format!("{base}/v1/kv/pct/a/b")).send().await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await?.as_ref(), b"x");
    assert_eq!(client.get("pct/a/b").await?, b"x");
    // Overwriting through the other spelling bumps the same key.
    let put = client.put("pct/a/b", "y").await?;
    assert_eq!(put.version, 2);
    let res = http.get(format!("{base}/v1/kv/pct%2fa%2Fb")).send().await?;
    assert_eq!(res.bytes().await?.as_ref(), b"y");

    let res = http
        .put(format!("{base}/v1/kv/pct/caf%C3%A9%20au%20lait"))
        .body("hot")
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert_eq!(client.get("pct/café au lait").await?, b"hot");
    let res = http
        .put(format!("{base}/v1/kv/pct/a+b"))
        .body("plus")
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert_eq!(client.get("pct/a+b").await?, b"plus");

    // Characters that mean something in a URL survive the client.
    let odd = "pct/q?x=1&y#frag%41 ;,é\u{1F600}";
    client.put(odd, "odd").await?;
    assert_eq!(client.get(odd).await?, b"odd");

    let keys: Vec<String> = client
        .list_all("pct/")
        .await?
        .into_iter()
        .map(|e| e.key)
        .collect();
    let mut expected = vec![
        "pct/a/b".to_string(),
        "pct/a+b".to_string(),
        "pct/café au lait".to_string(),
        odd.to_string(),
    ];
    expected.sort();
    assert_eq!(keys, expected);

    // Deleting through one spelling deletes the key of the other.
    let res = http
        .delete(format!("{base}/v1/kv/pct%2Fa%2Fb"))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert!(matches!(
        client.get("pct/a/b").await,
        Err(ClientError::NotFound { .. })
    ));
    Ok(())
}

/// Routes are matched on the path as sent: a route's own name spelled with
/// percent-escapes is no route of ours (`404 not_found`, not a key or a missing
/// key), while escapes inside a key are decoded as ever.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_name_spelled_with_escapes_is_not_found(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let base = &server.url;
    client.put("x", "v").await?;
    let revision = client.health().await?;

    for (method, path) in [
        (reqwest::Method::GET, "/v1/%6Bv/x"),
        (reqwest::Method::PUT, "/v1/%6Bv/x"),
        (reqwest::Method::DELETE, "/v1/%6bv/x"),
        (reqwest::Method::GET, "/v1/%6Bv"),
        (reqwest::Method::GET, "/%761/kv/x"),
        (reqwest::Method::GET, "/v1%2Fkv/x"),
        (reqwest::Method::GET, "/%68ealthz"),
        (reqwest::Method::PUT, "/%6Bv"),
    ] {
        let res = http
            .request(method.clone(), format!("{base}{path}"))
            .body("w")
            .send()
            .await?;
        let error = expect_error(res, 404, "not_found").await?;
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(path), "{method} {path}: {message}");
    }
    assert_eq!(client.health().await?, revision, "nothing was written");

    // Inside a key, an escape is decoded: `/v1/kv/%78` is the key `x`.
    let res = http.get(format!("{base}/v1/kv/%78")).send().await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await?.as_ref(), b"v");
    Ok(())
}

/// Keys are arbitrary strings and `/` is an ordinary character, so `.` and `..`
/// path segments inside a key are part of the key. The client must not let URL
/// normalisation rewrite them into a different key.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keeps_dot_segments_in_keys(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let keys = ["dots/x/../y", "dots/./z"];
    for key in keys {
        client.put(key, key).await?;
        assert_eq!(client.get(key).await?, key.as_bytes());
    }
    // The keys stored must be the keys given, not "dots/y" and "dots/z".
    let stored: Vec<String> = client
        .list_all("")
        .await?
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(stored, ["dots/./z", "dots/x/../y"]);
    // A trailing ".." must not turn into another (here: the empty) key: the key
    // stored is "dots/..", as given.
    let put = client.put("dots/..", "v").await?;
    assert_eq!(put.version, 1);
    assert_eq!(client.get("dots/..").await?, b"v");
    let stored: Vec<String> = client
        .list_all("")
        .await?
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(stored, ["dots/..", "dots/./z", "dots/x/../y"]);
    // Raw, with the dots percent-encoded so no HTTP client can rewrite them.
    let http = reqwest::Client::new();
    let res = http
        .get(format!("{}/v1/kv/dots%2F%2E%2E", server.url))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await?.as_ref(), b"v");
    Ok(())
}

// ---------------------------------------------------------------------------
// Legacy /kv
// ---------------------------------------------------------------------------

async fn body_of(res: reqwest::Response) -> Result<(u16, String, Vec<u8>), BoxError> {
    let status = res.status().as_u16();
    let content_type = header(&res, CONTENT_TYPE.as_str())?.to_string();
    Ok((status, content_type, res.bytes().await?.to_vec()))
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_kv_answers_byte_for_byte(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let url = format!("{}/kv", server.url);
    let json_ct = "application/json".to_string();

    let res = http
        .put(&url)
        .json(&json!({"key": "greeting", "value": "hello"}))
        .send()
        .await?;
    assert_eq!(
        body_of(res).await?,
        (
            200,
            json_ct.clone(),
            b"{\"greeting\": \"hello\"}\n".to_vec()
        )
    );
    let found = (200, json_ct.clone(), b"{\"value\": \"hello\"}\n".to_vec());
    let res = http
        .get(&url)
        .json(&json!({"key": "greeting"}))
        .send()
        .await?;
    assert_eq!(body_of(res).await?, found);
    let res = http.get(format!("{url}?key=greeting")).send().await?;
    assert_eq!(body_of(res).await?, found);

    let missing = (
        404,
        json_ct.clone(),
        b"{\"status_code\": 404, \"error\": \"Key Doesn't exist\"}\n".to_vec(),
    );
    let res = http.get(&url).json(&json!({"key": "nope"})).send().await?;
    assert_eq!(body_of(res).await?, missing);
    let res = http.get(format!("{url}?key=nope")).send().await?;
    assert_eq!(body_of(res).await?, missing);

    // Non-ASCII as \uXXXX, like Python's json.dumps.
    let res = http
        .put(&url)
        .json(&json!({"key": "word", "value": "café"}))
        .send()
        .await?;
    assert_eq!(
        body_of(res).await?,
        (
            200,
            json_ct.clone(),
            b"{\"word\": \"caf\\u00e9\"}\n".to_vec()
        )
    );
    let res = http.get(&url).json(&json!({"key": "word"})).send().await?;
    assert_eq!(
        body_of(res).await?,
        (
            200,
            json_ct.clone(),
            b"{\"value\": \"caf\\u00e9\"}\n".to_vec()
        )
    );
    assert_eq!(client.get("word").await?, "café".as_bytes());

    // Escapes and non-ASCII keys through the query string.
    let res = http
        .put(&url)
        .json(&json!({"key": "dir/clé", "value": "a\"b\nc\\d"}))
        .send()
        .await?;
    assert_eq!(
        body_of(res).await?,
        (
            200,
            json_ct.clone(),
            b"{\"dir/cl\\u00e9\": \"a\\\"b\\nc\\\\d\"}\n".to_vec()
        )
    );
    let res = http.get(format!("{url}?key=dir%2Fcl%C3%A9")).send().await?;
    assert_eq!(
        body_of(res).await?,
        (
            200,
            json_ct.clone(),
            b"{\"value\": \"a\\\"b\\nc\\\\d\"}\n".to_vec()
        )
    );

    // A /v1 write is visible through /kv.
    client.put("from/v1", "new api").await?;
    let res = http.get(format!("{url}?key=from/v1")).send().await?;
    assert_eq!(
        body_of(res).await?,
        (200, json_ct, b"{\"value\": \"new api\"}\n".to_vec())
    );
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_writes_show_in_v1_and_in_watches(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let mut watch = Box::pin(client.watch_with(WatchOptions {
        prefix: "legacy/".into(),
        start_revision: Some(1),
        reconnect: false,
        ..WatchOptions::default()
    }));
    let mut ws = ws_connect(&server, "prefix=legacy%2F&start_revision=1").await?;

    for value in ["v1", "v2"] {
        let res = http
            .put(format!("{}/kv", server.url))
            .json(&json!({"key": "legacy/k", "value": value}))
            .send()
            .await?;
        assert_eq!(res.status(), 200);
    }
    let entry = client.get_entry("legacy/k").await?;
    assert_eq!(entry.value, b"v2");
    assert_eq!(entry.version, 2);
    // The first two writes of the store.
    let first = EMPTY_REVISION + 1;
    assert_eq!(entry.create_revision, first);
    assert_eq!(entry.mod_revision, first + 1);
    let page = client.list("legacy/", None, None).await?;
    assert_eq!(page.entries, [entry]);

    for (version, value) in [(1, "v1"), (2, "v2")] {
        let revision = first + version - 1;
        let Update::Event(event) = next_update(&mut watch).await? else {
            return Err("expected an event".into());
        };
        assert_eq!(event.kind, EventKind::Put);
        assert_eq!(event.key, "legacy/k");
        assert_eq!(event.value, value.as_bytes());
        assert_eq!(event.revision, revision);
        assert_eq!(event.version, version);
        let frame = ws_next_change(&mut ws).await?;
        assert_eq!(
            frame,
            json!({"type": "put", "key": "legacy/k", "value": value, "revision": revision,
                   "create_revision": first, "version": version})
        );
    }
    Ok(())
}

/// A value written as bytes through `/v1` that is not UTF-8 cannot be shown by the
/// text-only legacy API: `409 value_not_text` (the request was fine; the value is
/// what conflicts), pointing at `/v1/kv`, which can.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_kv_cannot_show_a_binary_value(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    client
        .put("blob", vec![0x89, b'P', b'N', b'G', 0xFF])
        .await?;
    let res = http
        .get(format!("{}/kv?key=blob", server.url))
        .send()
        .await?;
    let error = expect_error(res, 409, "value_not_text").await?;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("/v1/kv/"),
        "{error}"
    );
    let res = http
        .get(format!("{}/kv", server.url))
        .json(&json!({"key": "blob"}))
        .send()
        .await?;
    expect_error(res, 409, "value_not_text").await?;
    assert_eq!(client.get("blob").await?, [0x89, b'P', b'N', b'G', 0xFF]);
    Ok(())
}

/// The legacy `/kv` takes `{"key": ...}` objects only: a JSON array (which serde
/// would read as the fields in order) is refused like any other non-object, and
/// nothing is stored.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_kv_refuses_a_json_array_for_an_object(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let url = format!("{}/kv", server.url);
    client.put("arr", "stored").await?;
    let revision = client.health().await?;

    for body in [
        json!(["arr", "overwritten"]),
        json!([["arr", "x"]]),
        json!("arr"),
    ] {
        let res = http.put(&url).json(&body).send().await?;
        let error = expect_error(res, 400, "invalid_request").await?;
        assert!(
            error["message"]
                .as_str()
                .unwrap_or_default()
                .contains("JSON object"),
            "PUT {body}: {error}"
        );
    }
    for body in [json!(["arr"]), json!(["missing"]), json!(null)] {
        let res = http.get(&url).json(&body).send().await?;
        expect_error(res, 400, "invalid_request").await?;
    }
    // Whitespace before the object is still an object.
    let res = http
        .get(&url)
        .header(CONTENT_TYPE, "application/json")
        .body(" \n{\"key\": \"arr\"}")
        .send()
        .await?;
    assert_eq!(
        body_of(res).await?,
        (
            200,
            "application/json".to_string(),
            b"{\"value\": \"stored\"}\n".to_vec()
        )
    );
    assert_eq!(client.health().await?, revision, "nothing was written");
    assert_eq!(client.get("arr").await?, b"stored");
    Ok(())
}

/// A legacy read that names its key in `?key=` and sends a body too: the body must
/// still be `{"key": K}` with a valid key, else the read is refused, not half read.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_kv_refuses_a_bad_body_beside_the_query_key(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let url = format!("{}/kv?key=both", server.url);
    client.put("both", "stored").await?;

    let res = http.get(&url).json(&json!({"key": ""})).send().await?;
    expect_error(res, 400, "invalid_key").await?;
    let res = http.get(&url).json(&json!(["both"])).send().await?;
    expect_error(res, 400, "invalid_request").await?;
    // A well-formed body beside `?key=`: the query names the key.
    let res = http.get(&url).json(&json!({"key": "other"})).send().await?;
    assert_eq!(
        body_of(res).await?,
        (
            200,
            "application/json".to_string(),
            b"{\"value\": \"stored\"}\n".to_vec()
        )
    );
    // HEAD carries no body: it names its key in `?key=`, and without one is refused.
    let res = http.head(format!("{}/kv", server.url)).send().await?;
    assert_eq!(res.status().as_u16(), 400);
    let res = http.head(&url).send().await?;
    assert_eq!(res.status().as_u16(), 200);
    Ok(())
}

// ---------------------------------------------------------------------------
// Watches through the client
// ---------------------------------------------------------------------------

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_watch_sees_changes_in_order_under_its_prefix(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let marker = "cw/~marker";
    let mut watch = Box::pin(client.watch("cw/"));
    let mut everything = Box::pin(client.watch(""));
    sync_watch(&client, &mut watch, marker).await?;
    sync_watch(&client, &mut everything, marker).await?;

    let a1 = client.put("cw/a", "1").await?;
    let other = client.put("other/b", "x").await?;
    let b = client.put("cw/b", "2").await?;
    let a2 = client.put("cw/a", vec![0u8, 255]).await?;
    let deleted = client.delete("cw/b").await?;
    let deleted_other = client.delete("other/b").await?;
    let last = client.put("cw/zz", "end").await?;

    let expected = [
        (
            EventKind::Put,
            "cw/a",
            b"1".to_vec(),
            a1.revision,
            a1.version,
        ),
        (EventKind::Put, "cw/b", b"2".to_vec(), b.revision, b.version),
        (
            EventKind::Put,
            "cw/a",
            vec![0, 255],
            a2.revision,
            a2.version,
        ),
        (EventKind::Delete, "cw/b", vec![], deleted.revision, 0),
        (EventKind::Put, "cw/zz", b"end".to_vec(), last.revision, 1),
    ];
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let event = next_event(&mut watch).await?;
        if event.key != marker {
            got.push(event);
        }
    }
    for (event, (kind, key, value, revision, version)) in got.iter().zip(&expected) {
        assert_eq!(
            (
                event.kind,
                event.key.as_str(),
                &event.value,
                event.revision,
                event.version
            ),
            (*kind, *key, value, *revision, *version),
            "{got:#?}"
        );
    }
    assert_eq!(got[2].create_revision, a1.revision);

    // The unfiltered watch sees the other prefix too, in revision order.
    let mut revisions = Vec::new();
    while revisions.last() != Some(&last.revision) {
        let event = next_event(&mut everything).await?;
        if event.key != marker {
            revisions.push(event.revision);
        }
    }
    let mut all = vec![
        a1.revision,
        other.revision,
        b.revision,
        a2.revision,
        deleted.revision,
        deleted_other.revision,
        last.revision,
    ];
    all.sort_unstable();
    assert_eq!(revisions, all);
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_watch_from_a_revision_and_with_initial_state(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let a = client.put("hw/a", "1").await?;
    client.put("skip/x", "x").await?;
    let b = client.put("hw/b", "2").await?;
    let del = client.delete("hw/a").await?;
    let b2 = client.put("hw/b", "3").await?;

    let mut watch = Box::pin(client.watch_with(WatchOptions {
        prefix: "hw/".into(),
        start_revision: Some(b.revision),
        reconnect: false,
        ..WatchOptions::default()
    }));
    let mut got = Vec::new();
    for _ in 0..3 {
        match next_update(&mut watch).await? {
            Update::Event(e) => got.push((e.kind, e.key, e.revision)),
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    assert_eq!(
        got,
        [
            (EventKind::Put, "hw/b".to_string(), b.revision),
            (EventKind::Delete, "hw/a".to_string(), del.revision),
            (EventKind::Put, "hw/b".to_string(), b2.revision),
        ]
    );
    assert!(a.revision < b.revision);

    // Initial state, then synced, then live changes.
    let mut watch = Box::pin(client.watch_with(WatchOptions {
        prefix: "hw/".into(),
        initial: true,
        reconnect: false,
        ..WatchOptions::default()
    }));
    match next_update(&mut watch).await? {
        Update::Entry(entry) => {
            assert_eq!(entry.key, "hw/b");
            assert_eq!(entry.value, b"3");
            assert_eq!(entry.mod_revision, b2.revision);
            assert_eq!(entry.create_revision, b.revision);
            assert_eq!(entry.version, 2);
        }
        other => return Err(format!("expected the entry of hw/b, got {other:?}").into()),
    }
    match next_update(&mut watch).await? {
        Update::Synced { revision } => assert_eq!(revision, b2.revision),
        other => return Err(format!("expected synced, got {other:?}").into()),
    }
    let c = client.put("hw/c", "4").await?;
    match next_update(&mut watch).await? {
        Update::Event(e) => {
            assert_eq!((e.key.as_str(), e.revision), ("hw/c", c.revision));
        }
        other => return Err(format!("expected the put of hw/c, got {other:?}").into()),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Raw WebSocket frames
// ---------------------------------------------------------------------------

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_have_the_documented_shape(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let pre = client.put("ws/pre", "p").await?;
    wait_published(&client, pre.revision).await?;

    let mut ws = ws_connect(&server, "prefix=ws%2F").await?;
    assert_eq!(
        ws_next(&mut ws).await?,
        json!({"type": "progress", "revision": pre.revision})
    );

    let p1 = client.put("ws/a", "hello").await?;
    assert_eq!(
        ws_next_change(&mut ws).await?,
        json!({"type": "put", "key": "ws/a", "value": "hello", "revision": p1.revision,
               "create_revision": p1.revision, "version": 1})
    );
    client.put("elsewhere/a", "filtered").await?;
    let p2 = client.put("ws/a", vec![0xffu8, 0, 1]).await?;
    assert_eq!(
        ws_next_change(&mut ws).await?,
        json!({"type": "put", "key": "ws/a", "value": base64(&[0xff, 0, 1]),
               "encoding": "base64", "revision": p2.revision,
               "create_revision": p1.revision, "version": 2})
    );
    let d = client.delete("ws/a").await?;
    // A delete: empty value, create_revision and version 0 (as in docs/watches.md).
    assert_eq!(
        ws_next_change(&mut ws).await?,
        json!({"type": "delete", "key": "ws/a", "value": "", "revision": d.revision,
               "create_revision": 0, "version": 0})
    );
    ws.close(None).await?;
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_initial_entries_then_synced(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let b = client.put("ini/b", "2").await?;
    let a1 = client.put("ini/a", "1").await?;
    let a2 = client.put("ini/a", "1b").await?;
    client.put("other/z", "z").await?;
    client.put("ini/c", "3").await?;
    let last = client.delete("ini/c").await?;

    let mut ws = ws_connect(&server, "prefix=ini%2F&initial=true").await?;
    let entry_fields = set(&[
        "type",
        "key",
        "value",
        "create_revision",
        "mod_revision",
        "version",
    ]);
    let first = ws_next(&mut ws).await?;
    assert_eq!(fields(&first), entry_fields);
    assert_eq!(
        first,
        json!({"type": "entry", "key": "ini/a", "value": "1b", "create_revision": a1.revision,
               "mod_revision": a2.revision, "version": 2})
    );
    assert_eq!(
        ws_next(&mut ws).await?,
        json!({"type": "entry", "key": "ini/b", "value": "2", "create_revision": b.revision,
               "mod_revision": b.revision, "version": 1})
    );
    assert_eq!(
        ws_next(&mut ws).await?,
        json!({"type": "synced", "revision": last.revision})
    );
    let d = client.put("ini/d", "4").await?;
    assert_eq!(d.revision, last.revision + 1);
    assert_eq!(
        ws_next_change(&mut ws).await?,
        json!({"type": "put", "key": "ini/d", "value": "4", "revision": d.revision,
               "create_revision": d.revision, "version": 1})
    );
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_start_revision_replays_exactly_the_history(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    // Revisions of the changes under "hist/", in order.
    let mut history = vec![client.put("hist/a", "1").await?.revision];
    client.put("x/other", "x").await?;
    let r3 = client.put("hist/b", "2").await?.revision;
    history.push(r3);
    history.push(client.delete("hist/a").await?.revision);
    history.push(client.put("hist/b", "3").await?.revision);

    for start in [r3, 1, r3 + 1] {
        let query = format!("prefix=hist%2F&start_revision={start}");
        let mut ws = ws_connect(&server, &query).await?;
        let first = ws_next(&mut ws).await?;
        assert_eq!(first["type"], "progress", "{first}");
        let expected: Vec<u64> = history.iter().copied().filter(|&r| r >= start).collect();
        let mut got = Vec::new();
        for _ in 0..expected.len() {
            let frame = ws_next_change(&mut ws).await?;
            assert!(
                frame["key"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("hist/")),
                "{frame}"
            );
            got.push(frame["revision"].as_u64().ok_or("revision")?);
        }
        assert_eq!(got, expected, "start_revision={start}");
        // Nothing else comes before the next live change.
        let sentinel = client.put("hist/sentinel", "s").await?;
        history.push(sentinel.revision);
        let frame = ws_next_change(&mut ws).await?;
        assert_eq!(frame["revision"], sentinel.revision, "{frame}");
        assert_eq!(frame["key"], "hist/sentinel", "{frame}");
        ws.close(None).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_ids_are_revisions_and_last_event_id_resumes(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();

    let mut sse = Sse::connect(&http, &server, "prefix=s%2F", None).await?;
    let first = sse.next().await?;
    assert_eq!(first.event, "progress");
    assert_eq!(first.id, Some(EMPTY_REVISION));
    assert_eq!(
        first.data,
        json!({"type": "progress", "revision": EMPTY_REVISION})
    );

    let p1 = client.put("s/a", "1").await?;
    let p2 = client.put("s/b", "2").await?;
    client.put("t/c", "filtered").await?;
    let d3 = client.delete("s/a").await?;
    let p4 = client.put("s/b", "4").await?;
    let expected = [
        ("put", "s/a", p1.revision),
        ("put", "s/b", p2.revision),
        ("delete", "s/a", d3.revision),
        ("put", "s/b", p4.revision),
    ];
    for (kind, key, revision) in expected {
        let event = sse.next_change().await?;
        assert_eq!(event.event, kind, "{event:?}");
        assert_eq!(event.id, Some(revision), "{event:?}");
        assert_eq!(event.data["type"], kind, "{event:?}");
        assert_eq!(event.data["key"], key, "{event:?}");
        assert_eq!(event.data["revision"], revision, "{event:?}");
    }
    drop(sse);

    // Resuming after p2 gives the changes after it, and nothing else.
    let mut sse = Sse::connect(&http, &server, "prefix=s%2F", Some(p2.revision)).await?;
    let mut got = Vec::new();
    for _ in 0..2 {
        let event = sse.next_change().await?;
        assert_eq!(event.id, event.data["revision"].as_u64(), "{event:?}");
        got.push(event.id);
    }
    assert_eq!(got, [Some(d3.revision), Some(p4.revision)]);
    let sentinel = client.put("s/z", "z").await?;
    let event = sse.next_change().await?;
    assert_eq!(event.id, Some(sentinel.revision), "{event:?}");
    assert_eq!(event.data["key"], "s/z");

    // Resuming at the latest revision: only new changes.
    let mut sse = Sse::connect(&http, &server, "prefix=s%2F", Some(sentinel.revision)).await?;
    let next = client.put("s/y", "y").await?;
    let event = sse.next_change().await?;
    assert_eq!(event.id, Some(next.revision), "{event:?}");
    assert_eq!(
        event.data,
        json!({"type": "put", "key": "s/y", "value": "y", "revision": next.revision,
               "create_revision": next.revision, "version": 1})
    );
    Ok(())
}

/// A watch is Server-Sent Events unless it is a WebSocket handshake: a plain GET
/// (`curl -N`: `Accept: */*`) streams, as does one with an `Upgrade` to anything
/// but `websocket`. An `Accept` that refuses `text/event-stream`, or an incomplete
/// WebSocket handshake, gets `400 invalid_request`.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_is_server_sent_events_unless_it_upgrades(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let put = client.put("neg/k", "v").await?;
    let url = format!(
        "{}/v1/watch?prefix=neg/&start_revision={}",
        server.url, put.revision
    );
    for headers in [
        vec![],
        vec![(ACCEPT.as_str(), "*/*")],
        vec![(ACCEPT.as_str(), "text/html, */*;q=0.8")],
        vec![("upgrade", "h2c")],
    ] {
        let mut req = http.get(&url);
        for (name, value) in &headers {
            req = req.header(*name, *value);
        }
        let res = within("the watch's answer", req.send()).await??;
        let mut sse = Sse::of(res)?;
        let event = sse.next_change().await?;
        assert_eq!(event.event, "put", "{headers:?}");
        assert_eq!(event.data["key"], "neg/k", "{headers:?}");
    }
    for accept in ["application/json", "text/event-stream;q=0"] {
        let res = http.get(&url).header(ACCEPT, accept).send().await?;
        let error = expect_error(res, 400, "invalid_request").await?;
        assert!(
            error["message"]
                .as_str()
                .unwrap_or_default()
                .contains(accept),
            "{error}"
        );
    }
    let res = http.get(&url).header("upgrade", "websocket").send().await?;
    let error = expect_error(res, 400, "invalid_request").await?;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("WebSocket handshake"),
        "{error}"
    );
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_initial_entries_then_synced(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let a = client.put("si/a", "1").await?;
    let b = client.put("si/b", "2").await?;
    let mut sse = Sse::connect(&http, &server, "prefix=si%2F&initial=true", None).await?;
    for (key, revision) in [("si/a", a.revision), ("si/b", b.revision)] {
        let event = sse.next().await?;
        assert_eq!(event.event, "entry", "{event:?}");
        assert_eq!(event.data["key"], key, "{event:?}");
        assert_eq!(event.data["mod_revision"], revision, "{event:?}");
    }
    let synced = sse.next().await?;
    assert_eq!(synced.event, "synced");
    assert_eq!(synced.id, Some(b.revision));
    assert_eq!(
        synced.data,
        json!({"type": "synced", "revision": b.revision})
    );
    let c = client.put("si/c", "3").await?;
    let event = sse.next_change().await?;
    assert_eq!(event.id, Some(c.revision));
    Ok(())
}

// ---------------------------------------------------------------------------
// Concurrency and durability
// ---------------------------------------------------------------------------

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_increments_are_never_lost(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    client.put("counter", "0").await?;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for _ in 0..50 {
                loop {
                    let entry = client.get_entry("counter").await?;
                    let n: u64 = String::from_utf8_lossy(&entry.value)
                        .parse()
                        .map_err(|e| ClientError::Decode(format!("counter: {e}")))?;
                    match client
                        .put_if(
                            "counter",
                            (n + 1).to_string(),
                            Condition::ModRevision(entry.mod_revision),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(ClientError::PreconditionFailed { .. }) => conflicts += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok::<u32, ClientError>(conflicts)
        }));
    }
    // Each increment waits on durable writes that contend with 15 others: on a
    // loaded machine that can take long, so one generous deadline for the whole
    // run (it takes a few seconds here) rather than WAIT per task.
    let all = futures_util::future::try_join_all(tasks);
    let conflicts: u32 = tokio::time::timeout(CONTENDED, all)
        .await
        .map_err(|_| format!("800 CAS increments took over {CONTENDED:?}"))??
        .into_iter()
        .collect::<Result<Vec<u32>, _>>()?
        .into_iter()
        .sum();
    println!("800 increments, {conflicts} conflicts");
    let entry = client.get_entry("counter").await?;
    assert_eq!(entry.value, b"800");
    assert_eq!(entry.version, 801);
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_get_distinct_revisions(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..100 {
                let key = format!("many/{t}/{i:03}");
                let put = client.put(key.as_str(), format!("{t}-{i}")).await?;
                written.push((key, put.revision));
            }
            Ok::<_, ClientError>(written)
        }));
    }
    let mut written = BTreeMap::new();
    for task in tasks {
        written.extend(within("a writer task", task).await???);
    }
    assert_eq!(written.len(), 800);
    let revisions: HashSet<u64> = written.values().copied().collect();
    assert_eq!(revisions.len(), 800, "every put has its own revision");
    assert_eq!(
        revisions.iter().max(),
        Some(&(EMPTY_REVISION + 800)),
        "revisions are gap-free"
    );

    let entries = client.list_all("many/").await?;
    assert_eq!(entries.len(), 800);
    for entry in entries {
        assert_eq!(
            written.get(&entry.key),
            Some(&entry.mod_revision),
            "{entry:?}"
        );
        let (t, i) = entry.key[5..].split_once('/').ok_or("key shape")?;
        let i: u32 = i.parse()?;
        assert_eq!(entry.value, format!("{t}-{i}").as_bytes());
    }
    Ok(())
}

/// What a put answers (its revision, the key's create revision and version) is
/// what a watcher sees of it, with writers racing on one key and deleting it.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_of_one_key_answer_what_a_watch_sees(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let start = client.put("race/one", "start").await?;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut answers = vec![];
            for i in 0..50 {
                let put = client.put("race/one", format!("{t}-{i}")).await?;
                answers.push(put);
                // Writer 0 deletes the key now and then: the next put creates it again.
                if t == 0 && i % 10 == 9 {
                    match client.delete("race/one").await {
                        Ok(_) | Err(ClientError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok::<_, ClientError>(answers)
        }));
    }
    let mut answers = vec![start];
    for task in tasks {
        answers.extend(within("a writer task", task).await???);
    }
    let last = answers.iter().map(|a| a.revision).max().ok_or("no puts")?;

    let mut watch = Box::pin(client.watch_with(WatchOptions {
        prefix: "race/".into(),
        start_revision: Some(start.revision),
        reconnect: false,
        ..WatchOptions::default()
    }));
    let mut seen = BTreeMap::new();
    loop {
        let Update::Event(event) = next_update(&mut watch).await? else {
            continue;
        };
        let revision = event.revision;
        seen.insert(revision, event);
        if revision >= last {
            break;
        }
    }
    let mut creations = HashSet::new();
    for answer in &answers {
        let event = seen
            .get(&answer.revision)
            .ok_or(format!("no event at {}", answer.revision))?;
        assert_eq!(event.kind, EventKind::Put, "{answer:?}");
        assert_eq!(
            (event.create_revision, event.version),
            (answer.create_revision, answer.version),
            "the answer {answer:?} against the watch"
        );
        creations.insert(answer.create_revision);
    }
    assert_eq!(answers.len(), 201);
    assert!(creations.len() > 1, "the deletes made the key anew");
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_continue_after_a_restart(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(backend) = Backend::new(engine) else {
        return Ok(());
    };
    let mut first = TestServer::on(&backend, &[]);
    let client = Client::new(&first.url)?;
    // Concurrent writes (committed in shared flushes), then a few in sequence.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..10 {
                let key = format!("burst/{t}/{i}");
                written.push((key.clone(), client.put(key.as_str(), "b").await?.revision));
            }
            Ok::<_, ClientError>(written)
        }));
    }
    let mut burst = BTreeMap::new();
    for task in tasks {
        burst.extend(within("a writer task", task).await???);
    }
    let a = client.put("r/a", "1").await?;
    let b = client.put("r/b", "2").await?;
    let del = client.delete("r/a").await?;
    let b2 = client.put("r/b", "3").await?;
    // SIGKILL: acknowledged writes are already durable.
    first.kill();
    assert!(matches!(
        client.get("r/b").await,
        Err(ClientError::Connection(_))
    ));

    let second = TestServer::on(&backend, &[]);
    let client = Client::new(&second.url)?;
    assert_eq!(client.health().await?, b2.revision);
    let entry = client.get_entry("r/b").await?;
    assert_eq!(entry.value, b"3");
    assert_eq!(entry.create_revision, b.revision);
    assert_eq!(entry.mod_revision, b2.revision);
    assert_eq!(entry.version, 2);
    assert!(matches!(
        client.get("r/a").await,
        Err(ClientError::NotFound { .. })
    ));
    let c = client.put("r/c", "4").await?;
    assert_eq!(c.revision, b2.revision + 1);
    let after: BTreeMap<String, u64> = client
        .list_all("burst/")
        .await?
        .into_iter()
        .map(|e| (e.key, e.mod_revision))
        .collect();
    assert_eq!(after, burst);

    // The history survived too.
    let mut watch = Box::pin(client.watch_with(WatchOptions {
        prefix: "r/".into(),
        start_revision: Some(1),
        reconnect: false,
        ..WatchOptions::default()
    }));
    let mut got = Vec::new();
    for _ in 0..5 {
        if let Update::Event(e) = next_update(&mut watch).await? {
            got.push((e.kind, e.key, e.revision));
        }
    }
    assert_eq!(
        got,
        [
            (EventKind::Put, "r/a".to_string(), a.revision),
            (EventKind::Put, "r/b".to_string(), b.revision),
            (EventKind::Delete, "r/a".to_string(), del.revision),
            (EventKind::Put, "r/b".to_string(), b2.revision),
            (EventKind::Put, "r/c".to_string(), c.revision),
        ]
    );
    Ok(())
}
