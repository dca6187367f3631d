//! Socket.IO on `/socket.io/`, against the real server binary: the replaced
//! service's `kv watch` loop (tests/socketio/kv_watch.py) on python-socketio at the
//! versions that CLI pinned (5.3.0, python-engineio 4.2.0, websocket-client 1.1.0)
//! and on a current 5.x; then raw Engine.IO clients for what those never do: stop
//! answering pings, stop polling, poll twice at once, send garbage.
//!
//! The Python clients are installed by the tests into venvs under `target/` from
//! tests/socketio/requirements-*.txt (see kvstore-testkit's venv.rs: without python3 the
//! Python tests say SKIPPED; with `KVSTORE_REQUIRE_PYTHON=1` or under CI they fail).
//! Nothing here sleeps to synchronise: tests wait for output lines, frames, answers
//! and log lines, with [`WAIT`] as a safety net only.

use crate::support;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::TestServer;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), BoxError>;

/// Safety net for every wait; a healthy run never gets near it.
const WAIT: Duration = Duration::from_secs(30);

/// What the server announces as `maxPayload`.
const MAX_PAYLOAD: usize = 64 * 1024;

/// The separator of packets in a polling payload.
const SEP: &str = "\u{1e}";

/// `f`, or an error after [`WAIT`].
async fn within<T>(what: &str, f: impl Future<Output = T>) -> Result<T, BoxError> {
    tokio::time::timeout(WAIT, f)
        .await
        .map_err(|_| format!("timed out after {WAIT:?} waiting for {what}").into())
}

// ---------------------------------------------------------------------------
// The Python client
// ---------------------------------------------------------------------------

/// One of the python-socketio installs.
#[derive(Debug, Clone, Copy)]
enum Python {
    /// The versions the replaced service's CLI pinned.
    Pinned,
    /// A current python-socketio 5.x.
    Current,
}

impl Python {
    fn venv(self) -> Option<PathBuf> {
        let (name, file) = match self {
            Python::Pinned => ("socketio-venv-5.3.0", "requirements-5.3.0.txt"),
            Python::Current => ("socketio-venv-current", "requirements-current.txt"),
        };
        support::venv::venv(
            &format!("Socket.IO test with the {self:?} python-socketio"),
            name,
            &scripts().join(file),
        )
    }
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio")
}

/// A running `kv_watch.py`, killed when dropped.
struct Watcher {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Watcher {
    fn start(venv: &Path, url: &str, args: &[&str]) -> Result<Watcher, BoxError> {
        let mut child = Command::new(venv.join("bin/python"))
            .arg("-u")
            .arg(scripts().join("kv_watch.py"))
            .arg(url)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[kv_watch] {line}");
                let _ = tx.send(line);
            }
        });
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("[kv_watch stderr] {line}");
                }
            });
        }
        Ok(Watcher {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// The next line it prints.
    async fn next_line(&mut self) -> Result<String, BoxError> {
        let line = within("a line from kv_watch.py", self.lines.recv())
            .await
            .map_err(|e| format!("{e}; it printed {:?}", self.seen))?
            .ok_or_else(|| format!("kv_watch.py exited; it printed {:?}", self.seen))?;
        self.seen.push(line.clone());
        Ok(line)
    }

    /// The next lines are `want`, in any order.
    async fn expect_lines(&mut self, want: &[&str]) -> TestResult {
        let mut got = Vec::new();
        for _ in want {
            got.push(self.next_line().await?);
        }
        let mut sorted_want: Vec<&str> = want.to_vec();
        sorted_want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, sorted_want, "all it printed: {:?}", self.seen);
        Ok(())
    }

    /// The next line is `want`.
    async fn expect(&mut self, want: &str) -> TestResult {
        let line = self.next_line().await?;
        assert_eq!(line, want, "all it printed: {:?}", self.seen);
        Ok(())
    }

    /// The next line is `key_update` payload `{"data": text}` (printed as JSON).
    async fn expect_update(&mut self, text: &str) -> TestResult {
        let line = self.next_line().await?;
        let got: Value = serde_json::from_str(&line)
            .map_err(|e| format!("{line:?} is not a key_update payload: {e}"))?;
        assert_eq!(
            got,
            json!({ "data": text }),
            "all it printed: {:?}",
            self.seen
        );
        Ok(())
    }

    /// Waits for it to exit; its status code.
    async fn exit_code(&mut self) -> Result<Option<i32>, BoxError> {
        // Its stdout closes when it exits.
        while let Some(line) = within("kv_watch.py to exit", self.lines.recv()).await? {
            self.seen.push(line);
        }
        let status = tokio::task::block_in_place(|| self.child.wait())?;
        Ok(status.code())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines every session starts with (the order of the last two varies: they
/// come from the client's main thread and its reader thread).
fn joined_lines(transport: &str) -> [String; 3] {
    [
        "connected to server".into(),
        format!("transport {transport}"),
        r#"connected {"data": "Connected", "count": 0}"#.into(),
    ]
}

async fn expect_joined(watcher: &mut Watcher) -> TestResult {
    let lines = joined_lines("websocket");
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    watcher.expect_lines(&lines).await
}

// ---------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------

/// One HTTP client for every test (building one costs more than a request). It
/// keeps no idle connections: each test runs on a runtime of its own, and a pooled
/// connection belongs to the runtime that opened it.
fn http() -> &'static reqwest::Client {
    static CLIENT: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(|| {
        kvstore_client::install_crypto_provider();
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("an HTTP client")
    });
    &CLIENT
}

async fn legacy_put(server: &TestServer, key: &str, value: &str) -> TestResult {
    let res = http()
        .put(format!("{}/kv", server.url))
        .json(&json!({ "key": key, "value": value }))
        .send()
        .await?;
    assert_eq!(res.status(), 200, "{}", res.text().await?);
    Ok(())
}

async fn put(server: &TestServer, key: &str, value: impl Into<reqwest::Body>) -> TestResult {
    put_as(server, None, key, value).await
}

async fn put_as(
    server: &TestServer,
    token: Option<&str>,
    key: &str,
    value: impl Into<reqwest::Body>,
) -> TestResult {
    let key = key.replace('/', "%2F");
    let mut req = http()
        .put(format!("{}/v1/kv/{key}", server.url))
        .body(value);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await?;
    assert_eq!(res.status(), 200, "{}", res.text().await?);
    Ok(())
}

async fn delete(server: &TestServer, key: &str) -> TestResult {
    let key = key.replace('/', "%2F");
    let res = http()
        .delete(format!("{}/v1/kv/{key}", server.url))
        .send()
        .await?;
    assert_eq!(res.status(), 200, "{}", res.text().await?);
    Ok(())
}

/// A sample of `/metrics`.
async fn metric(server: &TestServer, token: Option<&str>, series: &str) -> Result<f64, BoxError> {
    let mut req = http().get(format!("{}/metrics", server.url));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let text = req.send().await?.text().await?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .ok_or_else(|| format!("no {series} in /metrics").into())
}

async fn revision(server: &TestServer) -> Result<u64, BoxError> {
    let health: Value = http()
        .get(format!("{}/healthz", server.url))
        .send()
        .await?
        .json()
        .await?;
    health["revision"]
        .as_u64()
        .ok_or_else(|| format!("no revision in {health}").into())
}

/// A request on `/socket.io/` with `query`: status and body.
async fn engine_request(
    server: &TestServer,
    method: reqwest::Method,
    query: &str,
    body: impl Into<reqwest::Body>,
) -> Result<(u16, String), BoxError> {
    let res = http()
        .request(method, format!("{}/socket.io/?{query}", server.url))
        .body(body)
        .send()
        .await?;
    Ok((res.status().as_u16(), res.text().await?))
}

/// Asserts an Engine.IO error answer: 400, `{"code": code, "message": message}`
/// and our error object.
fn assert_engine_error(answer: &(u16, String), code: u64, message: &str) {
    let (status, body) = answer;
    assert_eq!(*status, 400, "{body}");
    let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["message"], message, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(message)),
        "{body}"
    );
}

// ---------------------------------------------------------------------------
// Raw Engine.IO clients
// ---------------------------------------------------------------------------

/// A long-polling session driven by hand.
struct Polling {
    query: String,
    /// The open packet's data.
    open: Value,
}

impl Polling {
    async fn open(server: &TestServer) -> Result<Polling, BoxError> {
        let (status, body) = engine_request(
            server,
            reqwest::Method::GET,
            "EIO=4&transport=polling&t=1",
            "",
        )
        .await?;
        assert_eq!(status, 200, "{body}");
        let open: Value = serde_json::from_str(body.strip_prefix('0').ok_or("no open packet")?)?;
        let sid = open["sid"].as_str().ok_or("no sid")?;
        Ok(Polling {
            query: format!("EIO=4&transport=polling&sid={sid}"),
            open,
        })
    }

    fn sid(&self) -> &str {
        self.open["sid"].as_str().unwrap_or_default()
    }

    async fn get(&self, server: &TestServer) -> Result<(u16, String), BoxError> {
        engine_request(server, reqwest::Method::GET, &self.query, "").await
    }

    async fn post(
        &self,
        server: &TestServer,
        body: impl Into<reqwest::Body>,
    ) -> Result<(u16, String), BoxError> {
        engine_request(server, reqwest::Method::POST, &self.query, body).await
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a raw WebSocket client got next.
#[derive(Debug, PartialEq)]
enum Frame {
    Text(String),
    /// The server closed, with this close code (`None`: no close frame).
    Closed(Option<u16>),
}

async fn ws_connect(server: &TestServer, query: &str) -> Result<Ws, WsError> {
    let url = format!("ws://{}/socket.io/?{query}", server.addr());
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(ws, _)| ws)
}

/// The next text frame, or how the connection ended.
async fn ws_next(ws: &mut Ws) -> Result<Frame, BoxError> {
    within("a WebSocket frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => return Frame::Text(text.to_string()),
                Some(Ok(Message::Close(frame))) => {
                    return Frame::Closed(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Frame::Closed(None),
            }
        }
    })
    .await
}

async fn ws_text(ws: &mut Ws) -> Result<String, BoxError> {
    match ws_next(ws).await? {
        Frame::Text(text) => Ok(text),
        other => Err(format!("expected a text frame, got {other:?}").into()),
    }
}

async fn ws_send(ws: &mut Ws, text: &str) -> TestResult {
    ws.send(Message::Text(text.into())).await?;
    Ok(())
}

/// A WebSocket-only session: its open packet's data.
async fn ws_open(server: &TestServer) -> Result<(Ws, Value), BoxError> {
    let mut ws = ws_connect(server, "EIO=4&transport=websocket").await?;
    let open = ws_text(&mut ws).await?;
    let open: Value = serde_json::from_str(open.strip_prefix('0').ok_or("no open packet")?)?;
    Ok((ws, open))
}

/// Sends a Socket.IO CONNECT (with `auth`) and returns the answer's packet,
/// answering pings meanwhile.
async fn ws_join(ws: &mut Ws, auth: Option<Value>) -> Result<String, BoxError> {
    let auth = auth.map(|a| a.to_string()).unwrap_or_default();
    ws_send(ws, &format!("40{auth}")).await?;
    loop {
        let packet = ws_text(ws).await?;
        if packet == "2" {
            ws_send(ws, "3").await?;
            continue;
        }
        return Ok(packet);
    }
}

/// A WebSocket-only session in the default namespace, past its `connected` event.
async fn ws_joined(server: &TestServer) -> Result<Ws, BoxError> {
    let (mut ws, _) = ws_open(server).await?;
    let answer = ws_join(&mut ws, None).await?;
    assert!(answer.starts_with("40{\"sid\":"), "{answer}");
    assert_eq!(
        ws_text(&mut ws).await?,
        r#"42["connected",{"data":"Connected","count":0}]"#
    );
    Ok(ws)
}

/// Answers the server's pings on `ws` from a task of its own. Every text packet
/// comes out of the receiver, the pings (`2`) once answered.
fn keep_alive(mut ws: Ws) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            if text.as_str() == "2" && ws.send(Message::Text("3".into())).await.is_err() {
                break;
            }
            if tx.send(text.to_string()).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next packet from a [`keep_alive`] client that is not a ping.
async fn next_packet(client: &mut mpsc::UnboundedReceiver<String>) -> Result<String, BoxError> {
    loop {
        let packet = within("a packet", client.recv())
            .await?
            .ok_or("the connection closed")?;
        if packet != "2" {
            return Ok(packet);
        }
    }
}

/// Waits until the session task has handled everything sent on `ws` before: it
/// answers a ping after them.
async fn ws_sync(ws: &mut Ws) -> TestResult {
    ws_send(ws, "2sync").await?;
    loop {
        match ws_text(ws).await?.as_str() {
            "3sync" => return Ok(()),
            "2" => ws_send(ws, "3").await?,
            _ => {}
        }
    }
}

/// Polls until `n` packets came, answering pings.
async fn poll_packets(
    server: &TestServer,
    polling: &Polling,
    n: usize,
) -> Result<Vec<String>, BoxError> {
    let mut packets = Vec::new();
    while packets.len() < n {
        let (status, body) = polling.get(server).await?;
        assert_eq!(status, 200, "{body}");
        for packet in body.split(SEP) {
            if packet == "2" {
                assert_eq!(polling.post(server, "3").await?, (200, "ok".into()));
            } else {
                packets.push(packet.to_string());
            }
        }
    }
    Ok(packets)
}

/// The data of a CONNECT_ERROR packet (`44{...}`).
fn connect_error(packet: &str) -> Value {
    let data = packet
        .strip_prefix("44")
        .unwrap_or_else(|| panic!("not a CONNECT_ERROR: {packet}"));
    serde_json::from_str(data).unwrap_or_else(|_| panic!("not JSON: {packet}"))
}

// ---------------------------------------------------------------------------
// The replaced service's `kv watch`
// ---------------------------------------------------------------------------

/// `kv_watch.py` (with `args`) joins, then prints every put through the legacy
/// and the v1 API, the deletes, a binary value, in revision order; it sees the
/// server stop.
async fn watch_every_write(python: Python, args: &[&str], opened: &str) -> TestResult {
    let Some(venv) = python.venv() else {
        return Ok(());
    };
    let mut server = TestServer::start();
    let mut watcher = Watcher::start(&venv, &server.url, args)?;
    expect_joined(&mut watcher).await?;
    assert!(server.wait_for_log(opened, WAIT), "no log line {opened:?}");

    legacy_put(&server, "k1", "v1").await?;
    watcher.expect_update("Key: k1 set with value: v1").await?;
    put(&server, "app/mode", "blue").await?;
    watcher
        .expect_update("Key: app/mode set with value: blue")
        .await?;
    put(&server, "quote", "say \"hi\" ✓\nnext line").await?;
    watcher
        .expect_update("Key: quote set with value: say \"hi\" ✓\nnext line")
        .await?;
    delete(&server, "app/mode").await?;
    watcher
        .expect(r#"key_delete {"data": "Key: app/mode deleted"}"#)
        .await?;
    put(&server, "blob", vec![0xff_u8, 0x00, 0xfe]).await?;
    watcher
        .expect_update("Key: blob set with value: <binary, 3 bytes>")
        .await?;
    legacy_put(&server, "k1", "v2").await?;
    watcher.expect_update("Key: k1 set with value: v2").await?;

    // Stopping the server ends the session (the client would reconnect).
    let status = server.terminate(WAIT).ok_or("the server did not stop")?;
    assert!(status.success(), "{status}");
    watcher.expect("disconnected").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_python_socketio_polls_upgrades_and_prints_every_write() -> TestResult {
    watch_every_write(Python::Pinned, &[], "upgraded to WebSocket").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_python_socketio_polls_upgrades_and_prints_every_write() -> TestResult {
    watch_every_write(Python::Current, &[], "upgraded to WebSocket").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_python_socketio_connects_over_websocket_only() -> TestResult {
    let args = ["--transports", "websocket"];
    watch_every_write(Python::Pinned, &args, "opened (WebSocket)").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_python_socketio_connects_over_websocket_only() -> TestResult {
    let args = ["--transports", "websocket"];
    watch_every_write(Python::Current, &args, "opened (WebSocket)").await
}

const READER_TOKEN: &str = "reader-token";

/// An access file: `admin-token` reads and writes everything, `reader-token`
/// reads `app/`, `blind-token` reads nothing.
fn access_file(dir: &Path) -> Result<String, BoxError> {
    let file = dir.join("access.toml");
    std::fs::write(
        &file,
        format!(
            "[roles.admin]\nread = [\"\"]\nwrite = [\"\"]\n\
             [roles.reader]\nread = [\"app/\"]\n\
             [roles.blind]\nread = []\n\
             [[tokens]]\nname = \"admin\"\nrole = \"admin\"\ntoken = \"{}\"\n\
             [[tokens]]\nname = \"reader\"\nrole = \"reader\"\ntoken = \"{READER_TOKEN}\"\n\
             [[tokens]]\nname = \"blind\"\nrole = \"blind\"\ntoken = \"blind-token\"\n",
            support::ADMIN_TOKEN
        ),
    )?;
    Ok(file.to_string_lossy().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_pass_tokens_and_never_see_unreadable_keys() -> TestResult {
    let (Some(pinned), Some(current)) = (Python::Pinned.venv(), Python::Current.venv()) else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let server = TestServer::start_with(&["--access-file", &access_file(dir.path())?]);
    let admin = Some(support::ADMIN_TOKEN);

    // The token in the CONNECT auth payload (pinned client), and in the
    // Authorization header (current client).
    let mut by_auth = Watcher::start(&pinned, &server.url, &["--auth-token", READER_TOKEN])?;
    let mut by_header = Watcher::start(&current, &server.url, &["--header-token", READER_TOKEN])?;
    expect_joined(&mut by_auth).await?;
    expect_joined(&mut by_header).await?;
    // A change it may not read, then one it may: changes come in revision order,
    // so seeing the second without the first shows the first was left out.
    put_as(&server, admin, "secret/x", "hidden").await?;
    put_as(&server, admin, "app/x", "shown").await?;
    for watcher in [&mut by_auth, &mut by_header] {
        watcher
            .expect_update("Key: app/x set with value: shown")
            .await?;
    }

    // An unknown token: the connect is refused and the client gives up.
    let mut refused = Watcher::start(&pinned, &server.url, &["--auth-token", "nope"])?;
    let line = refused.next_line().await?;
    let data: Value =
        serde_json::from_str(line.strip_prefix("connect_error ").ok_or(line.clone())?)?;
    assert_eq!(data["message"], "unauthorized: unknown token", "{data}");
    assert_eq!(data["data"]["code"], "unauthorized", "{data}");
    let line = refused.next_line().await?;
    assert!(line.starts_with("connection failed"), "{line}");
    assert_eq!(refused.exit_code().await?, Some(2));
    Ok(())
}

// ---------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_answering_pings_are_dropped() -> TestResult {
    let server = TestServer::start_with(&["--ping-interval", "0.2", "--peer-timeout", "1"]);

    // The handshake announces the flags' timings.
    let (mut silent, open) = ws_open(&server).await?;
    assert_eq!(open["pingInterval"], 200, "{open}");
    assert_eq!(open["pingTimeout"], 1000, "{open}");
    assert_eq!(open["upgrades"], json!([]), "{open}");
    assert_eq!(open["maxPayload"], MAX_PAYLOAD, "{open}");
    let answer = ws_join(&mut silent, None).await?;
    assert!(answer.starts_with("40"), "{answer}");

    // A client that answers: it stays through several pings.
    let mut lively = keep_alive(ws_joined(&server).await?);
    assert_eq!(metric(&server, None, "kvstore_watchers").await?, 2.0);

    // The silent one gets its pings, answers none, and is closed.
    let mut pings = 0;
    let end = loop {
        match ws_next(&mut silent).await? {
            Frame::Text(packet) if packet == "2" => pings += 1,
            Frame::Text(_) => {}
            closed => break closed,
        }
    };
    assert_eq!(end, Frame::Closed(Some(1001)));
    assert_eq!(pings, 1, "one ping, then closed for want of a pong");

    // The silent client's watch is gone; the lively one answers ping after ping
    // and still gets changes.
    assert_eq!(metric(&server, None, "kvstore_watchers").await?, 1.0);
    let mut answered = 0;
    while answered < 8 {
        let packet = within("a ping", lively.recv())
            .await?
            .ok_or("lively closed")?;
        assert_eq!(packet, "2");
        answered += 1;
    }
    put(&server, "k", "v").await?;
    assert_eq!(
        next_packet(&mut lively).await?,
        r#"42["key_update",{"data":"Key: k set with value: v"}]"#
    );

    // A polling client that stops polling gets no pong back to us either.
    let polling = Polling::open(&server).await?;
    assert_eq!(polling.post(&server, "40").await?, (200, "ok".into()));
    let tag = &polling.sid()[..8];
    assert!(
        server.wait_for_log(&format!("session {tag} closed: no pong in time"), WAIT),
        "the polling session was not dropped"
    );
    assert_engine_error(&polling.get(&server).await?, 1, "Session ID unknown");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_taking_packets_are_dropped() -> TestResult {
    let server = TestServer::start_with(&["--sync", "none"]);
    // Joins, then never polls again: its queue fills up with changes.
    let polling = Polling::open(&server).await?;
    assert_eq!(polling.post(&server, "40").await?, (200, "ok".into()));
    poll_packets(&server, &polling, 2).await?;
    let mut healthy = keep_alive(ws_joined(&server).await?);
    assert_eq!(metric(&server, None, "kvstore_watchers").await?, 2.0);

    let writes = futures_util::stream::iter(0..1100)
        .map(|i| {
            let server = &server;
            async move { put(server, &format!("k{i}"), "v").await }
        })
        .buffer_unordered(16);
    let results: Vec<TestResult> = writes.collect().await;
    results.into_iter().collect::<TestResult>()?;

    let tag = &polling.sid()[..8];
    assert!(
        server.wait_for_log(&format!("session {tag} closed: a slow client"), WAIT),
        "the slow client was not dropped"
    );
    assert_eq!(metric(&server, None, "kvstore_watchers").await?, 1.0);
    assert!(metric(&server, None, "kvstore_watch_lagged_total").await? >= 1.0);
    // The client that kept reading got every change.
    for _ in 0..1100 {
        let packet = next_packet(&mut healthy).await?;
        assert!(packet.starts_with(r#"42["key_update""#), "{packet}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_changes_reach_a_polling_client_over_bounded_polls() -> TestResult {
    const VALUE: usize = 400 * 1024;
    let server = TestServer::start();
    let polling = Polling::open(&server).await?;
    assert_eq!(polling.post(&server, "40").await?, (200, "ok".into()));
    poll_packets(&server, &polling, 2).await?;
    for i in 0..4 {
        put(&server, &format!("big{i}"), i.to_string().repeat(VALUE)).await?;
    }
    // Every change arrives, none twice, and no answer is much over 1 MiB (what
    // is queued beyond that waits for the next poll).
    let mut got = Vec::new();
    while got.len() < 4 {
        let (status, body) = polling.get(&server).await?;
        assert_eq!(status, 200);
        assert!(
            body.len() < 1024 * 1024 + VALUE + 1024,
            "{} bytes",
            body.len()
        );
        for packet in body.split(SEP).filter(|p| *p != "2") {
            let data: Value = serde_json::from_str(packet.strip_prefix("42").ok_or("no event")?)?;
            got.push(data[1]["data"].as_str().ok_or("no data")?.len());
        }
    }
    let expected = "Key: big0 set with value: ".len() + VALUE;
    assert_eq!(got, [expected; 4]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_refused_with_connect_error_and_counted_against_the_limit() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = TestServer::start_with(&[
        "--access-file",
        &access_file(dir.path())?,
        "--max-watchers-per-client",
        "1",
    ]);
    let admin = Some(support::ADMIN_TOKEN);

    let (mut ws, _) = ws_open(&server).await?;
    // No token at all, an unknown one, one of the wrong type, one that may read
    // nothing; each refusal leaves the session open for another try.
    for (auth, code, message) in [
        (None, "unauthorized", "unauthorized: send the token"),
        (
            Some(json!({"token": "nope"})),
            "unauthorized",
            "unauthorized: unknown token",
        ),
        (
            Some(json!({"token": 7})),
            "unauthorized",
            "unauthorized: the auth token must be a string",
        ),
        (
            Some(json!({"token": "blind-token"})),
            "forbidden",
            "forbidden: this token may not read anything",
        ),
    ] {
        let data = connect_error(&ws_join(&mut ws, auth).await?);
        assert_eq!(data["data"]["code"], code, "{data}");
        assert!(
            data["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message)),
            "{data}"
        );
    }
    // Another namespace is not served.
    ws_send(&mut ws, "40/admin,").await?;
    assert_eq!(
        ws_text(&mut ws).await?,
        r#"44/admin,{"message":"Invalid namespace"}"#
    );
    // The reader's one watch.
    let answer = ws_join(&mut ws, Some(json!({"token": READER_TOKEN}))).await?;
    assert!(answer.starts_with("40{\"sid\":"), "{answer}");
    assert_eq!(metric(&server, admin, "kvstore_watchers").await?, 1.0);

    // A second one for the same token is refused, over Socket.IO and /v1/watch.
    let (mut second, _) = ws_open(&server).await?;
    let data = connect_error(&ws_join(&mut second, Some(json!({"token": READER_TOKEN}))).await?);
    assert_eq!(data["data"]["code"], "too_many_watchers", "{data}");
    let res = http()
        .get(format!("{}/v1/watch", server.url))
        .bearer_auth(READER_TOKEN)
        .header("accept", "text/event-stream")
        .send()
        .await?;
    assert_eq!(res.status(), 429);

    // Leaving the namespace frees the place.
    ws_send(&mut ws, "41").await?;
    ws_sync(&mut ws).await?;
    assert_eq!(metric(&server, admin, "kvstore_watchers").await?, 0.0);
    let answer = ws_join(&mut second, Some(json!({"token": READER_TOKEN}))).await?;
    assert!(answer.starts_with("40{\"sid\":"), "{answer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_poll_is_released_by_the_upgrade_as_javascript_clients_do() -> TestResult {
    let server = TestServer::start();
    let polling = Polling::open(&server).await?;
    assert_eq!(polling.open["upgrades"], json!(["websocket"]));
    // Join over polling, as socket.io-client does before upgrading.
    assert_eq!(polling.post(&server, "40").await?, (200, "ok".into()));
    let packets = poll_packets(&server, &polling, 2).await?;
    assert!(packets[0].starts_with("40{\"sid\":"), "{packets:?}");
    assert_eq!(
        packets[1],
        r#"42["connected",{"data":"Connected","count":0}]"#
    );

    // A poll waits; the upgrade's probe releases it with a noop.
    let pending = tokio::spawn({
        let url = server.url.clone();
        let query = polling.query.clone();
        async move {
            let res = http()
                .get(format!("{url}/socket.io/?{query}"))
                .send()
                .await?;
            Ok::<_, reqwest::Error>((res.status().as_u16(), res.text().await?))
        }
    });
    let mut ws = ws_connect(
        &server,
        &format!("EIO=4&transport=websocket&sid={}", polling.sid()),
    )
    .await?;
    ws_send(&mut ws, "2probe").await?;
    assert_eq!(ws_text(&mut ws).await?, "3probe");
    assert_eq!(
        within("the pending poll", pending).await???,
        (200, "6".into())
    );
    ws_send(&mut ws, "5").await?;

    // Changes now come over the WebSocket, and polling is over.
    put(&server, "k", "v").await?;
    assert_eq!(
        ws_text(&mut ws).await?,
        r#"42["key_update",{"data":"Key: k set with value: v"}]"#
    );
    assert_engine_error(&polling.get(&server).await?, 3, "Bad request");
    assert_engine_error(&polling.post(&server, "3").await?, 3, "Bad request");
    // A second upgrade of the same session is refused.
    let again = ws_connect(
        &server,
        &format!("EIO=4&transport=websocket&sid={}", polling.sid()),
    )
    .await;
    match again {
        Err(WsError::Http(res)) => assert_eq!(res.status(), 400),
        other => panic!("a second upgrade was not refused: {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_protocols_errors_and_changes_nothing() -> TestResult {
    use reqwest::Method;
    let server = TestServer::start();
    put(&server, "keep", "me").await?;
    let before = revision(&server).await?;

    // Requests that name no session or a wrong one.
    for (method, query, code, message) in [
        (
            Method::GET,
            "EIO=4&transport=polling&sid=nope",
            1,
            "Session ID unknown",
        ),
        (
            Method::POST,
            "EIO=4&transport=polling&sid=nope",
            1,
            "Session ID unknown",
        ),
        (
            Method::GET,
            "EIO=3&transport=polling",
            5,
            "Unsupported protocol version",
        ),
        (
            Method::GET,
            "transport=polling",
            5,
            "Unsupported protocol version",
        ),
        (
            Method::GET,
            "EIO=4&transport=pigeon",
            0,
            "Transport unknown",
        ),
        (Method::GET, "EIO=4", 0, "Transport unknown"),
        (
            Method::POST,
            "EIO=4&transport=polling",
            2,
            "Bad handshake method",
        ),
        (Method::GET, "EIO=4&transport=websocket", 3, "Bad request"),
        (
            Method::GET,
            "EIO=4&EIO=4&transport=polling",
            3,
            "Bad request",
        ),
    ] {
        let answer = engine_request(&server, method.clone(), query, "").await?;
        assert_engine_error(&answer, code, message);
    }
    let (status, body) = engine_request(&server, Method::PUT, "EIO=4", "").await?;
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("method_not_allowed"), "{body}");
    match ws_connect(&server, "EIO=4&transport=websocket&sid=nope").await {
        Err(WsError::Http(res)) => assert_eq!(res.status(), 400),
        other => panic!("an upgrade of no session was not refused: {other:?}"),
    }

    // A payload over maxPayload: 413, and the session goes on.
    let polling = Polling::open(&server).await?;
    let (status, body) = polling.post(&server, "4".repeat(MAX_PAYLOAD + 1)).await?;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("value_too_large"), "{body}");
    assert_eq!(polling.post(&server, "6").await?, (200, "ok".into()));

    // Packets that are not Engine.IO, or not Socket.IO, close the session: a poll
    // then gets the close packet, or no such session once it is gone.
    let closed = |answer: &(u16, String)| {
        (answer.0 == 200 && answer.1.ends_with('1'))
            || (answer.0 == 400 && answer.1.contains("\"code\":1"))
    };
    for garbage in [
        &b"9nine"[..],
        b"",
        b"3\x1e",
        b"\xff\xfe",
        b"4{not socket.io",
        b"40[1]",
    ] {
        let polling = Polling::open(&server).await?;
        let answer = polling.post(&server, garbage.to_vec()).await?;
        if garbage.starts_with(b"4") {
            // Engine.IO was fine; the Socket.IO packet inside was not.
            assert_eq!(answer, (200, "ok".into()), "{garbage:?}");
        } else {
            assert_engine_error(&answer, 3, "Bad request");
        }
        let after = polling.get(&server).await?;
        assert!(closed(&after), "{garbage:?}: {after:?}");
    }

    // Two polls at once: one is refused, the session closes, the other returns.
    let polling = Polling::open(&server).await?;
    let (first, second) = tokio::join!(polling.get(&server), polling.get(&server));
    let mut answers = [first?, second?];
    answers.sort();
    assert_eq!(answers[0], (200, "1".into()), "{answers:?}");
    assert_engine_error(&answers[1], 3, "Bad request");

    // Over WebSocket: garbage closes with 1002, an oversized message with 1009.
    for (message, code) in [
        ("zzz".to_string(), 1002),
        ("4{not socket.io".to_string(), 1002),
        ("4".repeat(MAX_PAYLOAD + 1), 1009),
    ] {
        let (mut ws, _) = ws_open(&server).await?;
        ws_send(&mut ws, &message).await?;
        assert_eq!(
            ws_next(&mut ws).await?,
            Frame::Closed(Some(code)),
            "{message:.20}"
        );
    }
    // A WebSocket-only session takes no polls, posts or upgrade.
    let (_ws, open) = ws_open(&server).await?;
    let sid = open["sid"].as_str().ok_or("sid")?;
    let query = format!("EIO=4&transport=polling&sid={sid}");
    assert_engine_error(
        &engine_request(&server, Method::GET, &query, "").await?,
        3,
        "Bad request",
    );
    assert_engine_error(
        &engine_request(&server, Method::POST, &query, "6").await?,
        3,
        "Bad request",
    );

    // Nothing stored changed, and the server is still up.
    assert_eq!(revision(&server).await?, before);
    let kept = http()
        .get(format!("{}/v1/kv/keep", server.url))
        .send()
        .await?;
    assert_eq!(kept.text().await?, "me");
    Ok(())
}
