//! Engine.IO sessions: one task per session speaks the protocol (pings, the
//! Socket.IO namespace, the change feed); the transports (long-polling requests, a
//! WebSocket) only carry its packets. Sessions live in one process-wide table, as
//! the requests of one polling client may reach any worker thread.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use kvstore_core::SharedEvent;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use super::feed::{self, Feed};
use super::protocol::{self, DEFAULT_NAMESPACE};
use super::{engine, Handshake};
use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::http::limits::WatcherSlot;
use crate::http::metrics::WatcherGauge;
use crate::http::state::AppState;

/// Packets queued for one client. A client that lets this many pile up (it stops
/// polling or reading) is dropped as a slow client.
pub const OUTBOX: usize = 1024;
/// Packets from the transports not yet handled by the session task.
const INBOX: usize = 64;

/// Which transport carries the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP long-polling.
    Polling,
    /// A WebSocket asked to take over and is being probed; polling goes on.
    Probing,
    /// The probe was answered: polls return at once so the client pauses them.
    Upgrading,
    /// The WebSocket carries everything.
    WebSocket,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed it (an Engine.IO close packet or a WebSocket close).
    ClientClosed,
    /// No pong within pingTimeout.
    PingTimeout,
    /// No Socket.IO CONNECT within pingTimeout.
    NoConnect,
    /// Its queue filled up, or a send to it did not complete within the peer timeout.
    Slow,
    /// It fell further behind the store's change feed than the event buffer.
    Lagged,
    /// It sent something that is not Engine.IO or Socket.IO, or two polls at once.
    Malformed,
    /// It sent a WebSocket message over the size limit.
    TooLarge,
    /// The server is stopping (or its store closed).
    ShuttingDown,
}

impl End {
    fn describe(self) -> &'static str {
        match self {
            End::ClientClosed => "closed by the client",
            End::PingTimeout => "no pong in time",
            End::NoConnect => "no Socket.IO CONNECT in time",
            End::Slow => "a slow client (not reading)",
            End::Lagged => "lagged behind the change feed",
            End::Malformed => "a malformed packet",
            End::TooLarge => "a message over the size limit",
            End::ShuttingDown => "the server is shutting down",
        }
    }
}

/// What the session task sends: a packet, or a change worded when it is sent (so
/// a queue holds the store's shared events, not copies of their values).
pub enum Out {
    /// An Engine.IO packet.
    Packet(String),
    /// A change for the client.
    Change(Arc<SharedEvent>),
}

impl Out {
    /// The Engine.IO packet text.
    pub fn encode(self) -> String {
        match self {
            Out::Packet(text) => text,
            Out::Change(event) => {
                metrics::counter!("kvstore_watch_events_sent_total").increment(1);
                feed::packet(&event)
            }
        }
    }
}

/// What the transports hand the session task.
pub enum Incoming {
    /// A packet from the client.
    Packet(engine::Packet),
    /// The transport ended the session.
    End(End),
}

/// One Engine.IO session, shared by the session task and the transports.
pub struct Session {
    /// The id clients name it by.
    pub sid: String,
    /// To the session task.
    pub inbox: mpsc::Sender<Incoming>,
    /// From the session task. Whoever holds the lock is the transport: a pending
    /// poll, or the WebSocket.
    pub outbox: tokio::sync::Mutex<mpsc::Receiver<Out>>,
    /// The current transport.
    pub transport: watch::Sender<Transport>,
    /// Set once, when the session task has stopped.
    pub ended: watch::Sender<Option<End>>,
}

impl Session {
    /// A short, loggable form of the id (the full id lets anyone read the session).
    pub fn tag(&self) -> &str {
        self.sid.get(..8).unwrap_or(&self.sid)
    }

    /// Tells the session task that a transport ends the session.
    pub async fn report(&self, end: End) {
        let _ = self.inbox.send(Incoming::End(end)).await;
    }
}

/// Waits until the session behind `ended` (a receiver of [`Session::ended`]) has
/// stopped, and says why.
pub async fn ended(ended: &mut watch::Receiver<Option<End>>) -> Option<End> {
    ended
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|end| *end)
}

static SESSIONS: LazyLock<Mutex<HashMap<String, Arc<Session>>>> = LazyLock::new(Default::default);

fn sessions() -> std::sync::MutexGuard<'static, HashMap<String, Arc<Session>>> {
    SESSIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The session named `sid`, if it is open.
pub fn find(sid: &str) -> Option<Arc<Session>> {
    sessions().get(sid).cloned()
}

/// Opens a session (and its task) for the client that sent `handshake`.
pub fn start(
    state: Arc<AppState>,
    handshake: Handshake,
    sid: String,
    socket_sid: String,
    transport: Transport,
) -> Arc<Session> {
    let (inbox, inbox_rx) = mpsc::channel(INBOX);
    let (outbox_tx, outbox) = mpsc::channel(OUTBOX);
    let session = Arc::new(Session {
        sid: sid.clone(),
        inbox,
        outbox: tokio::sync::Mutex::new(outbox),
        transport: watch::Sender::new(transport),
        ended: watch::Sender::new(None),
    });
    sessions().insert(sid, session.clone());
    let task = Task {
        state,
        handshake,
        socket_sid,
        outbox: outbox_tx,
        joined: None,
    };
    let shared = session.clone();
    actix_web::rt::spawn(async move {
        log::debug!("Socket.IO session {} opened ({transport:?})", shared.tag());
        let end = task.run(inbox_rx).await;
        sessions().remove(&shared.sid);
        log::debug!(
            "Socket.IO session {} closed: {}",
            shared.tag(),
            end.describe()
        );
        shared.ended.send_replace(Some(end));
    });
    session
}

/// A client in the default namespace.
struct Joined {
    caller: Caller,
    feed: Feed,
    _slot: WatcherSlot,
    _gauge: WatcherGauge,
}

/// The session task's state.
struct Task {
    state: Arc<AppState>,
    handshake: Handshake,
    socket_sid: String,
    outbox: mpsc::Sender<Out>,
    joined: Option<Joined>,
}

impl Task {
    async fn run(mut self, mut inbox: mpsc::Receiver<Incoming>) -> End {
        let interval = self.state.timings.ping;
        let timeout = self.state.timings.peer_timeout;
        let mut shutdown = self.state.shutdown.clone();
        let mut next_ping = Instant::now() + interval;
        let mut pong_due: Option<Instant> = None;
        // A session that is not in the namespace is closed after the ping timeout.
        let mut connect_due = Some(Instant::now() + timeout);
        loop {
            // While a pong is awaited its deadline is the next thing to check.
            let heartbeat = pong_due.unwrap_or(next_ping);
            let wake = connect_due.map_or(heartbeat, |due| due.min(heartbeat));
            let result = tokio::select! {
                incoming = inbox.recv() => match incoming {
                    Some(Incoming::Packet(engine::Packet::Pong(_))) => {
                        if pong_due.take().is_some() {
                            next_ping = Instant::now() + interval;
                        }
                        Ok(())
                    }
                    Some(Incoming::Packet(engine::Packet::Ping(data))) => {
                        self.send(Out::Packet(format!("3{data}")))
                    }
                    Some(Incoming::Packet(engine::Packet::Message(text))) => {
                        let result = self.on_message(&text).await;
                        connect_due = match self.joined {
                            Some(_) => None,
                            None => connect_due.or(Some(Instant::now() + timeout)),
                        };
                        result
                    }
                    Some(Incoming::Packet(engine::Packet::Close)) => Err(End::ClientClosed),
                    Some(Incoming::Packet(_)) => Ok(()),
                    Some(Incoming::End(end)) => Err(end),
                    // Every transport holds the session, which holds the sender.
                    None => Err(End::ClientClosed),
                },
                change = next_change(&mut self.joined) => match change {
                    Ok(event) => self.send(Out::Change(event)),
                    Err(kvstore_core::Error::Lagged { .. }) => {
                        metrics::counter!("kvstore_watch_lagged_total").increment(1);
                        Err(End::Lagged)
                    }
                    Err(e) => {
                        log::warn!("Socket.IO change feed ended: {e}");
                        Err(End::ShuttingDown)
                    }
                },
                _ = sleep_until(wake) => {
                    let now = Instant::now();
                    if connect_due.is_some_and(|due| now >= due) {
                        Err(End::NoConnect)
                    } else if pong_due.is_some_and(|due| now >= due) {
                        Err(End::PingTimeout)
                    } else if pong_due.is_none() && now >= next_ping {
                        pong_due = Some(now + timeout);
                        self.send(Out::Packet(engine::out::PING.into()))
                    } else {
                        Ok(())
                    }
                }
                _ = shutdown.wait_for(|stop| *stop) => Err(End::ShuttingDown),
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    /// Queues `out`; a full queue means the client stopped taking packets.
    fn send(&self, out: Out) -> Result<(), End> {
        self.outbox.try_send(out).map_err(|_| {
            metrics::counter!("kvstore_watch_lagged_total").increment(1);
            End::Slow
        })
    }

    fn send_socket(&self, packet: &str) -> Result<(), End> {
        self.send(Out::Packet(engine::out::message(packet)))
    }

    async fn on_message(&mut self, text: &str) -> Result<(), End> {
        let packet = protocol::Packet::decode(text).map_err(|e| {
            log::debug!("{e}");
            End::Malformed
        })?;
        match packet {
            protocol::Packet::Connect { namespace, .. } if namespace != DEFAULT_NAMESPACE => self
                .send_socket(&protocol::out::connect_error(
                    &namespace,
                    "Invalid namespace",
                    None,
                )),
            protocol::Packet::Connect { auth, .. } => {
                if self.joined.is_some() {
                    return Ok(());
                }
                match self.join(auth.as_ref()).await {
                    Ok(joined) => {
                        self.joined = Some(joined);
                        self.send_socket(&protocol::out::connected(&self.socket_sid))?;
                        self.send(Out::Packet(feed::connected_packet()))
                    }
                    Err(e) => {
                        log::debug!("Socket.IO CONNECT refused: {e}");
                        let detail = serde_json::to_value(e.detail()).ok();
                        self.send_socket(&protocol::out::connect_error(
                            DEFAULT_NAMESPACE,
                            &e.to_string(),
                            detail,
                        ))
                    }
                }
            }
            protocol::Packet::Disconnect { namespace } if namespace == DEFAULT_NAMESPACE => {
                self.joined = None;
                Ok(())
            }
            protocol::Packet::Disconnect { .. } | protocol::Packet::Other => Ok(()),
        }
    }

    /// Admits the client to the default namespace: who it is, whether it may read
    /// anything, a place among its watchers, and the change feed from now on.
    async fn join(&self, auth: Option<&serde_json::Value>) -> Result<Joined, ApiError> {
        let caller = self.caller(auth)?;
        caller.check_read_some("")?;
        let client = match &caller {
            Caller::Token(role) => format!("token {}", role.token_name),
            Caller::Open => self.handshake.address.clone(),
        };
        let slot = self.state.watchers.acquire(client)?;
        let feed = Feed::open(&self.state)
            .await
            .map_err(|e| ApiError::from_store(e, ""))?;
        Ok(Joined {
            caller,
            feed,
            _slot: slot,
            _gauge: WatcherGauge::open(),
        })
    }

    /// The caller named by the CONNECT's `auth` token, else by the handshake's
    /// `Authorization` header.
    fn caller(&self, auth: Option<&serde_json::Value>) -> Result<Caller, ApiError> {
        let Some(access) = &self.state.access else {
            return Ok(Caller::Open);
        };
        match auth.and_then(|auth| auth.get("token")) {
            Some(serde_json::Value::String(token)) => access
                .role_of(token)
                .map(Caller::Token)
                .ok_or_else(|| ApiError::unauthorized("unknown token")),
            Some(_) => Err(ApiError::unauthorized("the auth token must be a string")),
            None => match &self.handshake.header_caller {
                Some(result) => result.clone(),
                None => Err(ApiError::unauthorized(
                    "send the token in the CONNECT auth ({\"token\": ...}) or as \
                     Authorization: Bearer <token>",
                )),
            },
        }
    }
}

/// The next change for a client in the namespace; never, for one outside it.
async fn next_change(joined: &mut Option<Joined>) -> Result<Arc<SharedEvent>, kvstore_core::Error> {
    match joined {
        Some(joined) => joined.feed.next(&joined.caller).await,
        None => std::future::pending().await,
    }
}
