//! Watch streams over WebSocket that resume by themselves.
//!
//! The stream remembers the revision through which it has seen everything (from
//! events, `synced` and `progress` frames). After a dropped connection, a `lagged`
//! or `storage_unavailable` error or a server shutdown it reconnects with backoff
//! and asks for `start_revision = that + 1`, so the program sees every change
//! exactly once. A revision can hold several changes (a transaction): until a
//! later revision or a `progress` frame shows it complete, the stream resumes at
//! that revision and passes over the changes of it already seen (the server sends
//! them in the same order every time). With several servers (replicas of one
//! store, whose revisions are the cluster's) it connects to the client's server in
//! use and moves on to the next while one cannot be reached, resuming there the
//! same way.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use kvstore_core::wire::{Entry, Event, Frame};
use kvstore_core::ErrorCode;
use tokio_tungstenite::tungstenite::Message;

use crate::client::query_value;
use crate::{Client, Error};

/// Where a watch starts and how it behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// Only keys starting with this (empty: all keys).
    pub prefix: String,
    /// Start with every change from this revision on (from the server's history).
    pub start_revision: Option<u64>,
    /// Start with the current entries, then [`Update::Synced`], then the changes.
    pub initial: bool,
    /// Reconnect and resume after a dropped connection (default `true`).
    pub reconnect: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            prefix: String::new(),
            start_revision: None,
            initial: false,
            reconnect: true,
        }
    }
}

/// What a watch stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Update {
    /// A change.
    Event(Event),
    /// A key of the initial state (with [`WatchOptions::initial`]).
    Entry(Entry),
    /// The initial state is complete as of this revision.
    Synced {
        /// The revision of the initial state.
        revision: u64,
    },
    /// The connection dropped; the stream reconnects after `delay` and resumes.
    /// Informational: nothing is lost.
    Reconnecting {
        /// Why the connection ended.
        reason: String,
        /// How long until the next attempt.
        delay: Duration,
    },
}

/// Changes seen of a revision that may hold more.
#[derive(Debug, Clone, Copy)]
struct Partial {
    revision: u64,
    /// Changes of it delivered to the program.
    seen: usize,
    /// Changes of it received on the current connection.
    received: usize,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct State {
    client: Client,
    options: WatchOptions,
    /// Everything through this revision has been seen (`None`: not known yet).
    position: Option<u64>,
    /// The revision of the last event, not known to be complete yet.
    partial: Option<Partial>,
    /// The initial state has been delivered completely.
    synced: bool,
    socket: Option<Socket>,
    failures: u32,
    done: bool,
}

enum Step {
    Yield(Update),
    Fail(Error),
    Retry(String),
    Nothing,
}

/// How opening the WebSocket on one server failed.
enum Attempt {
    /// No answer (refused, reset, timed out): try the next server.
    Unreachable(String),
    /// The server answered with an error: what the watch does about it.
    Answered(Step),
}

/// A watch stream, from [`Client::watch_with`]: every [`Update`] in order, across
/// reconnections. A plain `Stream + Unpin`, so `watch.next().await` needs no pinning.
pub struct Watch {
    inner: Pin<Box<dyn Stream<Item = Result<Update, Error>> + Send>>,
}

impl Watch {
    pub(crate) fn new(client: Client, options: WatchOptions) -> Watch {
        Watch {
            inner: Box::pin(stream(client, options)),
        }
    }
}

impl Stream for Watch {
    type Item = Result<Update, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

/// The changes of a watch alone, from [`Client::watch`]: each [`Event`] once, in
/// revision order, across reconnections.
#[derive(Debug)]
pub struct Events {
    watch: Watch,
}

impl Events {
    pub(crate) fn new(watch: Watch) -> Events {
        Events { watch }
    }
}

impl Stream for Events {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match std::task::ready!(Pin::new(&mut self.watch).poll_next(cx)) {
                Some(Ok(Update::Event(event))) => return Poll::Ready(Some(Ok(event))),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }
}

fn stream(client: Client, options: WatchOptions) -> impl Stream<Item = Result<Update, Error>> {
    let state = State {
        position: options.start_revision.map(|r| r.saturating_sub(1)),
        partial: None,
        synced: false,
        client,
        options,
        socket: None,
        failures: 0,
        done: false,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if state.done {
                return None;
            }
            let step = state.step().await;
            match step {
                Step::Yield(update) => return Some((Ok(update), state)),
                Step::Nothing => {}
                Step::Fail(e) => {
                    state.done = true;
                    return Some((Err(e), state));
                }
                Step::Retry(reason) => {
                    state.socket = None;
                    if !state.options.reconnect {
                        state.done = true;
                        return Some((Err(Error::Connection(reason)), state));
                    }
                    let delay = backoff(state.failures);
                    state.failures += 1;
                    tokio::time::sleep(delay).await;
                    return Some((Ok(Update::Reconnecting { reason, delay }), state));
                }
            }
        }
    })
}

/// 100 ms, doubling, at most 5 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5))
}

impl State {
    /// The watch's URL on the server at `base`.
    fn url(&self, base: &str) -> String {
        let base = base.replacen("http", "ws", 1);
        let mut url = format!(
            "{base}/v1/watch?prefix={}",
            query_value(&self.options.prefix)
        );
        if self.options.initial && !self.synced {
            url.push_str("&initial=true");
        } else if let Some(position) = self.position {
            url.push_str(&format!("&start_revision={}", position + 1));
        }
        url
    }

    /// Opens the WebSocket on the client's server in use, or on the next ones
    /// (each once) while they cannot be reached. A refusal with an HTTP error
    /// (401, 403, 400) ends the watch, anything else is retried.
    async fn connect(&self) -> Result<Socket, Step> {
        let endpoints = &self.client.endpoints;
        let mut unreachable = Vec::new();
        for (index, base) in endpoints.order() {
            match self.connect_to(base).await {
                Ok(socket) => {
                    if !unreachable.is_empty() {
                        log::info!(
                            "watch of {:?} moved to {base} ({} could not be reached)",
                            self.options.prefix,
                            unreachable.join(", ")
                        );
                    }
                    endpoints.answered(index);
                    return Ok(socket);
                }
                Err(Attempt::Unreachable(reason)) => {
                    endpoints.failed(index);
                    unreachable.push(format!("{base}: {reason}"));
                }
                Err(Attempt::Answered(step)) => return Err(step),
            }
        }
        Err(Step::Retry(format!(
            "cannot connect: {}",
            unreachable.join("; ")
        )))
    }

    /// Opens the WebSocket on the server at `base`.
    async fn connect_to(&self, base: &str) -> Result<Socket, Attempt> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::Error as WsError;
        let mut request = self
            .url(base)
            .into_client_request()
            .map_err(|e| Attempt::Answered(Step::Fail(Error::InvalidUrl(e.to_string()))))?;
        if let Some(value) = &self.client.authorization {
            request
                .headers_mut()
                .insert(reqwest::header::AUTHORIZATION, value.clone());
        }
        let connector = self
            .client
            .tls
            .clone()
            .map(tokio_tungstenite::Connector::Rustls);
        // Frames are small: tungstenite's default 128 KiB read buffer, zeroed on
        // every read, cost a program with many watches much of its CPU.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(8 * 1024);
        match tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            false,
            connector,
        )
        .await
        {
            Ok((socket, _)) => Ok(socket),
            Err(WsError::Http(res)) => {
                let status = res.status().as_u16();
                let detail = res
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<kvstore_core::wire::ErrorBody>(b).ok())
                    .map(|b| b.error);
                let error = Error::from_status(status, detail, &self.options.prefix);
                Err(Attempt::Answered(if error.is_transient() {
                    Step::Retry(error.to_string())
                } else {
                    Step::Fail(error)
                }))
            }
            // No answer at all: the handshake changes nothing on a server, so
            // the next one may be tried at once.
            Err(e) => Err(Attempt::Unreachable(e.to_string())),
        }
    }

    async fn step(&mut self) -> Step {
        let socket = match &mut self.socket {
            Some(socket) => socket,
            None => match self.connect().await {
                Ok(socket) => {
                    if let Some(partial) = &mut self.partial {
                        partial.received = 0;
                    }
                    self.socket.insert(socket)
                }
                Err(step) => return step,
            },
        };
        let message = match socket.next().await {
            None => return Step::Retry("the server closed the watch".into()),
            Some(Err(e)) => return Step::Retry(format!("watch connection broke: {e}")),
            Some(Ok(message)) => message,
        };
        match message {
            Message::Text(text) => match serde_json::from_str::<Frame>(&text) {
                Ok(frame) => self.on_frame(frame),
                Err(e) => Step::Fail(Error::Decode(format!("bad watch frame {text:?}: {e}"))),
            },
            Message::Close(frame) => Step::Retry(match frame {
                Some(f) => format!("the server closed the watch: {}", f.reason),
                None => "the server closed the watch".into(),
            }),
            Message::Ping(data) => {
                // tungstenite queues the pong; flush so it goes out now.
                let _ = socket.send(Message::Pong(data)).await;
                Step::Nothing
            }
            _ => Step::Nothing,
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Step {
        self.failures = 0;
        match frame {
            Frame::Event(event) => {
                if self.position.is_some_and(|p| event.revision <= p) {
                    return Step::Nothing;
                }
                match &mut self.partial {
                    Some(partial) if partial.revision == event.revision => {
                        partial.received += 1;
                        if partial.received <= partial.seen {
                            // Seen before the connection dropped.
                            return Step::Nothing;
                        }
                        partial.seen += 1;
                    }
                    _ => {
                        // A new revision: the ones before it are complete.
                        self.position = Some(event.revision - 1);
                        self.partial = Some(Partial {
                            revision: event.revision,
                            seen: 1,
                            received: 1,
                        });
                    }
                }
                Step::Yield(Update::Event(event))
            }
            Frame::Entry(entry) => Step::Yield(Update::Entry(entry)),
            Frame::Synced { revision } => {
                self.synced = true;
                self.position = Some(revision);
                self.partial = None;
                Step::Yield(Update::Synced { revision })
            }
            Frame::Progress { revision } => {
                if self.position.is_none_or(|p| revision > p) {
                    self.position = Some(revision);
                }
                if self.partial.is_some_and(|p| p.revision <= revision) {
                    self.partial = None;
                }
                Step::Nothing
            }
            Frame::Error(detail) => match detail.code {
                // The server (or its store) could not go on for now: resume from the
                // position, as after a broken connection.
                ErrorCode::Lagged | ErrorCode::ShuttingDown | ErrorCode::StorageUnavailable => {
                    if let Some(last) = detail.revision {
                        self.position = Some(self.position.map_or(last, |p| p.max(last)));
                        if self.partial.is_some_and(|p| p.revision <= last) {
                            self.partial = None;
                        }
                    }
                    Step::Retry(detail.message)
                }
                _ => Step::Fail(Error::from_status(410, Some(detail), &self.options.prefix)),
            },
        }
    }
}

impl Client {
    /// Every change under `prefix` from now on, in revision order. The stream
    /// reconnects by itself after a dropped connection and resumes where it left
    /// off, so each change arrives exactly once; it ends only with an error that
    /// cannot be retried (e.g. [`Error::Compacted`]). With several servers it
    /// reconnects to the next one when the one in use cannot be reached.
    pub fn watch(&self, prefix: &str) -> Events {
        Events::new(self.watch_with(WatchOptions {
            prefix: prefix.to_string(),
            ..WatchOptions::default()
        }))
    }

    /// A watch with every option: start revision, initial state, reconnection.
    pub fn watch_with(&self, options: WatchOptions) -> Watch {
        Watch::new(self.clone(), options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvstore_core::wire::EventKind;

    fn event(revision: u64, key: &str) -> Frame {
        Frame::Event(Event {
            kind: EventKind::Put,
            key: key.into(),
            value: b"v".to_vec(),
            revision,
            create_revision: revision,
            version: 1,
            lease: None,
        })
    }

    fn yielded(step: Step) -> Option<(u64, String)> {
        match step {
            Step::Yield(Update::Event(e)) => Some((e.revision, e.key)),
            _ => None,
        }
    }

    /// A connection that drops inside a revision of several changes resumes at that
    /// revision and passes over what the program already has.
    #[test]
    fn a_revision_seen_in_part_is_resumed_without_duplicates() -> Result<(), Error> {
        let client = Client::new("http://127.0.0.1:1")?;
        let mut state = State {
            client,
            options: WatchOptions::default(),
            position: Some(4),
            partial: None,
            synced: false,
            socket: None,
            failures: 0,
            done: false,
        };
        assert_eq!(
            yielded(state.on_frame(event(5, "a"))),
            Some((5, "a".into()))
        );
        assert_eq!(
            yielded(state.on_frame(event(5, "b"))),
            Some((5, "b".into()))
        );
        // Not known to be complete: resume at 5.
        let url = state.url("http://test");
        assert!(url.ends_with("start_revision=5"), "{url}");
        // Reconnected: the server sends revision 5 again, whole.
        if let Some(partial) = &mut state.partial {
            partial.received = 0;
        }
        assert_eq!(yielded(state.on_frame(event(5, "a"))), None);
        assert_eq!(yielded(state.on_frame(event(5, "b"))), None);
        assert_eq!(
            yielded(state.on_frame(event(5, "c"))),
            Some((5, "c".into()))
        );
        assert_eq!(
            yielded(state.on_frame(event(6, "d"))),
            Some((6, "d".into()))
        );
        assert_eq!(state.position, Some(5));
        // A progress frame completes the revision.
        assert!(yielded(state.on_frame(Frame::Progress { revision: 6 })).is_none());
        let url = state.url("http://test");
        assert!(url.ends_with("start_revision=7"), "{url}");
        Ok(())
    }
}
