//! A relay in front of one etcd member that can break the connection carrying the
//! answer to the next call, at a chosen point of that answer: the member has then
//! taken the call (and, for a write, applied it), and the caller never learns its
//! outcome, as when a member dies while it answers.
//!
//! It reads the HTTP/2 frames etcd sends (a 9-byte head each: length, type, flags,
//! stream) and passes everything else through as it comes. Once armed, the first
//! stream whose answer starts (its first HEADERS frame) is the one cut: before
//! that frame, after it, or after its message but before its trailers (the
//! HEADERS frame that ends the stream), or the one after a number of others.
//! Streams already open (a watch) pass. Every
//! connection the member's clients make goes through it, and it cuts once per
//! arming.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Where in an answer the connection breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Before any of it: the call reached etcd, its answer never left.
    BeforeAnswer,
    /// After its headers.
    AfterHeaders,
    /// After its message, before the trailers that carry its status.
    BeforeTrailers,
}

const HEADERS: u8 = 0x1;
const END_STREAM: u8 = 0x1;

#[derive(Default)]
struct State {
    /// The cut to make, and how many answers that start are to pass before it.
    armed: Option<(Cut, usize)>,
    /// Cuts made so far.
    cuts: usize,
}

/// See the module docs.
pub struct CuttingRelay {
    /// `http://127.0.0.1:PORT`, for `--etcd-endpoints`.
    pub url: String,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl CuttingRelay {
    /// Relays to the member at `target` (`http://host:port`).
    pub fn new(target: &str) -> std::io::Result<CuttingRelay> {
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let shared = state.clone();
        let url = super::link::relay(target, move |client, target| {
            relay(client, target, shared.clone())
        })?;
        Ok(CuttingRelay { url, state })
    }

    /// Breaks the connection of the next answer that starts, at `cut`.
    pub fn arm(&self, cut: Cut) {
        self.arm_after(0, cut);
    }

    /// Lets `pass` answers that start go by, and breaks the connection of the
    /// next, at `cut` (a call that makes others first: a put with a lease of its
    /// own is a lease grant, then the put).
    pub fn arm_after(&self, pass: usize, cut: Cut) {
        lock(&self.state.0).armed = Some((cut, pass));
    }

    /// Waits (at most `timeout`) until `n` cuts were made in all; whether they were.
    pub fn wait_cuts(&self, n: usize, timeout: Duration) -> bool {
        let (state, changed) = &*self.state;
        let guard = lock(state);
        changed
            .wait_timeout_while(guard, timeout, |s| s.cuts < n)
            .map(|(s, _)| s.cuts >= n)
            .unwrap_or(false)
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn relay(client: TcpStream, target: SocketAddr, state: Arc<(Mutex<State>, Condvar)>) {
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // Requests pass as they come.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    answers(&server, &client, &state);
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// Passes etcd's frames to the client until either side ends or a cut is made.
fn answers(mut server: &TcpStream, mut client: &TcpStream, state: &(Mutex<State>, Condvar)) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    // Streams whose answer started: the one chosen to be cut, and the others.
    let mut started: HashSet<u32> = HashSet::new();
    let mut chosen: Option<(u32, Cut)> = None;
    loop {
        let n = match server.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut used = 0;
        let mut cut = false;
        while pending.len() - used >= 9 {
            let head = &pending[used..used + 9];
            let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            if pending.len() - used < 9 + length {
                break;
            }
            let frame = &pending[used..used + 9 + length];
            used += 9 + length;
            if kind == HEADERS && stream != 0 && started.insert(stream) {
                let mut s = lock(&state.0);
                if let Some((at, pass)) = s.armed.take() {
                    if pass > 0 {
                        s.armed = Some((at, pass - 1));
                        out.extend_from_slice(frame);
                        continue;
                    }
                    chosen = Some((stream, at));
                    if at == Cut::BeforeAnswer {
                        s.cuts += 1;
                        state.1.notify_all();
                        cut = true;
                        break;
                    }
                }
            } else if kind == HEADERS && flags & END_STREAM != 0 {
                if let Some((id, Cut::BeforeTrailers)) = chosen {
                    if id == stream {
                        let mut s = lock(&state.0);
                        s.cuts += 1;
                        state.1.notify_all();
                        cut = true;
                        break;
                    }
                }
            }
            out.extend_from_slice(frame);
            if let Some((id, Cut::AfterHeaders)) = chosen {
                if id == stream && kind == HEADERS {
                    let mut s = lock(&state.0);
                    s.cuts += 1;
                    state.1.notify_all();
                    cut = true;
                    break;
                }
            }
        }
        pending.drain(..used);
        if client.write_all(&out).is_err() || cut {
            return;
        }
    }
}
