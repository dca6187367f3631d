//! Watchers: each records every update it is sent, resuming from the last revision
//! it saw when its stream is dropped (by a fault, or on purpose).

use futures_util::StreamExt;
use kvstore_client::{Client, Event, EventKind, Update, WatchOptions};
use tokio::sync::watch;

use super::traffic::PREFIX;

/// A change as a watcher saw it, revisions relative to the store's first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    pub key: String,
    /// `None` for a delete.
    pub value: Option<String>,
    pub create_revision: u64,
    pub version: u64,
    /// The key's lease after a put (0: none).
    pub lease: u64,
}

impl Change {
    pub fn of(event: &Event, base: u64) -> Change {
        Change {
            revision: event.revision.saturating_sub(base),
            key: event.key.clone(),
            value: (event.kind == EventKind::Put)
                .then(|| String::from_utf8_lossy(&event.value).into_owned()),
            create_revision: event.create_revision.saturating_sub(base),
            version: event.version,
            lease: event.lease.unwrap_or(0),
        }
    }
}

/// What one watcher recorded.
#[derive(Debug, Default)]
pub struct Recorded {
    pub name: String,
    /// With `initial`: the entries and the revision they show.
    pub initial: Option<(Vec<kvstore_client::Entry>, u64)>,
    pub changes: Vec<Change>,
    /// Times its stream was dropped and opened again from the last revision.
    pub resumes: usize,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
    /// When its (re)start was refused as compacted: the revision it asked for
    /// (the end of its record: a client would now list again).
    pub compacted: Option<u64>,
}

impl Recorded {
    pub fn last_revision(&self) -> u64 {
        self.changes
            .last()
            .map(|c| c.revision)
            .or(self.initial.as_ref().map(|(_, r)| *r))
            .unwrap_or(0)
    }
}

/// How a watcher starts.
pub enum Start {
    /// Every change from the store's first write on.
    Beginning,
    /// The current entries, then the changes after them.
    Initial,
    /// Every change from a revision on (relative to the store's first).
    At(u64),
}

/// How a watcher reads its stream.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as changes come.
    Steady,
    /// Drops its stream and resumes from its last revision every so many changes.
    ResumeEvery(usize),
    /// Stops reading for a while every so many changes, as a busy consumer does
    /// (it falls behind, and history may be compacted under it).
    StallEvery(usize, std::time::Duration),
}

/// Watches [`PREFIX`] through `client` at `pace` until `done` holds a revision
/// it has reached.
pub async fn run_watcher(
    name: String,
    client: Client,
    base: u64,
    start: Start,
    pace: Pace,
    mut done: watch::Receiver<Option<u64>>,
) -> Recorded {
    let mut recorded = Recorded {
        name,
        ..Recorded::default()
    };
    let mut options = WatchOptions {
        prefix: PREFIX.into(),
        ..WatchOptions::default()
    };
    match start {
        Start::Beginning => options.start_revision = Some(base + 1),
        Start::Initial => options.initial = true,
        Start::At(revision) => options.start_revision = Some(base + revision),
    }
    let mut initial = Vec::new();
    loop {
        let mut stream = Box::pin(client.watch_with(options.clone()));
        let mut since_resume = 0;
        loop {
            let reached = |recorded: &Recorded, done: &watch::Receiver<Option<u64>>| {
                done.borrow()
                    .is_some_and(|end| recorded.last_revision() >= end)
            };
            if reached(&recorded, &done) {
                return recorded;
            }
            let update = tokio::select! {
                update = stream.next() => update,
                _ = done.changed() => continue,
            };
            match update {
                Some(Ok(Update::Event(event))) => {
                    recorded.changes.push(Change::of(&event, base));
                    since_resume += 1;
                }
                Some(Ok(Update::Entry(entry))) => initial.push(entry),
                Some(Ok(Update::Synced { revision })) => {
                    recorded.initial =
                        Some((std::mem::take(&mut initial), revision.saturating_sub(base)));
                }
                Some(Ok(_)) => continue,
                Some(Err(kvstore_client::Error::Compacted { .. })) => {
                    recorded.compacted = Some(recorded.last_revision() + 1);
                    return recorded;
                }
                Some(Err(e)) => {
                    recorded.error = Some(e.to_string());
                    return recorded;
                }
                None => {
                    recorded.error = Some("the stream ended".into());
                    return recorded;
                }
            }
            match pace {
                // Resume at a revision's end only: a transaction's changes share one.
                Pace::ResumeEvery(n) if since_resume >= n => break,
                Pace::StallEvery(n, pause) if since_resume % n == 0 => {
                    tokio::time::sleep(pause).await
                }
                _ => {}
            }
        }
        drop(stream);
        recorded.resumes += 1;
        options.initial = false;
        options.start_revision = Some(recorded.last_revision() + base + 1);
        // Let a stream cut mid-revision resume after the whole revision: the
        // changes of the last one seen are dropped and read again.
        let last = recorded.last_revision();
        if recorded.changes.iter().any(|c| c.revision == last) {
            recorded.changes.retain(|c| c.revision != last);
            options.start_revision = Some(last + base);
        }
    }
}

/// Like [`run_watcher`] over raw Server-Sent Events at `url`, from the first
/// revision: on a dropped stream or an `error` frame it connects again from the
/// start of the last revision it saw (dropping that revision's changes, which may be
/// partial), as a browser's `EventSource` with `Last-Event-ID` would.
pub async fn run_sse_watcher(
    name: String,
    url: String,
    base: u64,
    mut done: watch::Receiver<Option<u64>>,
) -> Recorded {
    let mut recorded = Recorded {
        name,
        ..Recorded::default()
    };
    let http = reqwest::Client::new();
    let mut failures = 0;
    loop {
        if done
            .borrow()
            .is_some_and(|end| recorded.last_revision() >= end)
        {
            return recorded;
        }
        let last = recorded.last_revision();
        recorded.changes.retain(|c| c.revision != last);
        let from = if last == 0 { 1 } else { last };
        let res = http
            .get(format!(
                "{url}/v1/watch?prefix={PREFIX}&start_revision={}",
                from + base
            ))
            .header("accept", "text/event-stream")
            .send()
            .await;
        let mut body = match res {
            Ok(res) if res.status().is_success() => res.bytes_stream(),
            Ok(res) if res.status() == reqwest::StatusCode::GONE => {
                recorded.compacted = Some(from);
                return recorded;
            }
            other => {
                failures += 1;
                if failures > 600 {
                    recorded.error = Some(format!("cannot watch: {other:?}"));
                    return recorded;
                }
                // The server is down (a fault): try again shortly.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        recorded.resumes += usize::from(last != 0);
        let mut buffer = Vec::new();
        'stream: loop {
            let chunk = tokio::select! {
                chunk = body.next() => chunk,
                _ = done.changed() => {
                    if done.borrow().is_some_and(|end| recorded.last_revision() >= end) {
                        return recorded;
                    }
                    continue;
                }
            };
            let Some(Ok(chunk)) = chunk else { break };
            buffer.extend_from_slice(&chunk);
            while let Some(at) = buffer.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = buffer.drain(..at + 2).collect();
                let text = String::from_utf8_lossy(&frame);
                let Some(data) = text.lines().find_map(|l| l.strip_prefix("data:")) else {
                    continue;
                };
                let Ok(json) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
                    recorded.error = Some(format!("a frame that is not JSON: {data}"));
                    return recorded;
                };
                match json["type"].as_str() {
                    Some("put" | "delete") => match serde_json::from_value::<Event>(json) {
                        Ok(event) => recorded.changes.push(Change::of(&event, base)),
                        Err(e) => {
                            recorded.error = Some(format!("a bad change frame: {e}"));
                            return recorded;
                        }
                    },
                    Some("error") if json["code"] == "compacted" => {
                        recorded.compacted = Some(from);
                        return recorded;
                    }
                    Some("error") => break 'stream,
                    _ => {}
                }
                if done
                    .borrow()
                    .is_some_and(|end| recorded.last_revision() >= end)
                {
                    return recorded;
                }
            }
        }
    }
}
