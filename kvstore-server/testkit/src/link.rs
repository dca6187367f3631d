//! A network link that a test can cut or slow: a TCP proxy in front of one
//! address (an etcd member's peer or client port), as etcd's own robustness tests
//! put one in front of each member.
//!
//! - [`Link::blackhole`]: every byte either way is dropped and nothing more gets
//!   through, on the connections already open and on new ones (accepted, then
//!   silent), as when a network partition falls: callers see no answer, not a
//!   refusal. [`Link::heal`] ends it and closes every connection that lived through
//!   it (their byte streams have holes), so that the two sides connect again.
//! - [`Link::drop_answers`]: what the connecting side sends still arrives, what
//!   the far side answers is dropped (a one-way partition): requests take effect
//!   and their callers never learn it. [`Link::heal`] closes those connections too.
//! - [`Link::delay`]: every chunk waits that long before it is passed on.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Blackhole,
    DropAnswers,
    Delay(Duration),
}

/// Which way a pump carries bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// From the side that connects to the far side.
    Request,
    /// Back.
    Answer,
}

struct State {
    mode: Mode,
    /// Both ends of every open connection, to close them when a partition heals.
    open: HashMap<u64, (TcpStream, TcpStream)>,
    next: u64,
}

/// See the module docs.
pub struct Link {
    /// `http://127.0.0.1:PORT`: what to give the side that connects.
    pub url: String,
    state: Arc<Mutex<State>>,
}

/// Listens on a port of its own for connections to `target` (`http://host:port` or
/// `host:port`) and hands each, on a thread of its own, to `carry` with the
/// target's address: the start of every relay here. Returns `http://127.0.0.1:PORT`.
pub(crate) fn relay(
    target: &str,
    carry: impl Fn(TcpStream, SocketAddr) + Clone + Send + 'static,
) -> std::io::Result<String> {
    let target: SocketAddr = target
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            let carry = carry.clone();
            std::thread::spawn(move || carry(client, target));
        }
    });
    Ok(url)
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Link {
    /// A link to `target` (`http://host:port` or `host:port`), passing everything.
    pub fn new(target: &str) -> std::io::Result<Link> {
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Pass,
            open: HashMap::new(),
            next: 0,
        }));
        let shared = state.clone();
        let url = relay(target, move |client, target| {
            carry(client, target, shared.clone())
        })?;
        Ok(Link { url, state })
    }

    /// Drops everything from now on, both ways, until [`Link::heal`].
    pub fn blackhole(&self) {
        lock(&self.state).mode = Mode::Blackhole;
    }

    /// Drops what the far side sends from now on, until [`Link::heal`].
    pub fn drop_answers(&self) {
        lock(&self.state).mode = Mode::DropAnswers;
    }

    /// Every chunk waits `by` before it is passed on, until [`Link::heal`].
    pub fn delay(&self, by: Duration) {
        lock(&self.state).mode = Mode::Delay(by);
    }

    /// Passes everything again; after a blackhole or dropped answers, closes the
    /// connections that lived through it.
    pub fn heal(&self) {
        let mut state = lock(&self.state);
        if matches!(state.mode, Mode::Blackhole | Mode::DropAnswers) {
            for (_, (a, b)) in state.open.drain() {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
        }
        state.mode = Mode::Pass;
    }
}

/// One connection through the link, until either side ends it.
fn carry(client: TcpStream, target: SocketAddr, state: Arc<Mutex<State>>) {
    // Under a partition the far side is not reached: the caller waits.
    let server = loop {
        if lock(&state).mode != Mode::Blackhole {
            match TcpStream::connect(target) {
                Ok(server) => break server,
                Err(_) => return,
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let clones = || Some((client.try_clone().ok()?, server.try_clone().ok()?));
    let (Some(open), Some((client_in, server_out)), Some((client_out, server_in))) =
        (clones(), clones(), clones())
    else {
        return;
    };
    let id = {
        let mut state = lock(&state);
        state.next += 1;
        let id = state.next;
        state.open.insert(id, open);
        id
    };
    let upstream = std::thread::spawn({
        let state = state.clone();
        move || pump(client_in, server_out, Way::Request, &state)
    });
    pump(server_in, client_out, Way::Answer, &state);
    let _ = upstream.join();
    lock(&state).open.remove(&id);
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// Copies `from` to `to` as the link's mode says, until `from` ends.
fn pump(mut from: TcpStream, mut to: TcpStream, way: Way, state: &Mutex<State>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mode = lock(state).mode;
        match mode {
            Mode::Pass => {}
            Mode::Blackhole => continue,
            Mode::DropAnswers if way == Way::Answer => continue,
            Mode::DropAnswers => {}
            Mode::Delay(by) => std::thread::sleep(by),
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
