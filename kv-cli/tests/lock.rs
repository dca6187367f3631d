//! `kv lock` on both engines: mutual exclusion between processes, and a holder
//! killed with SIGKILL freeing the lock after its TTL.

use kvstore_testkit as support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rstest::rstest;
use support::Engine;

/// Safety net for a whole run; a healthy one never gets near it.
const WAIT: Duration = Duration::from_secs(120);

fn kv_path() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("kv")
}

/// Waits for `child` to end (at most [`WAIT`]): its status and its output.
fn finish(child: Child) -> Output {
    within("kv to finish", move || {
        child.wait_with_output().expect("kv ran")
    })
}

/// A `kv` killed and reaped when dropped, so that a failing test leaves none
/// behind (a `kv watch` would go on retrying its vanished server).
struct Running(Option<Child>);

impl Running {
    fn spawn(command: &mut Command) -> Running {
        Running(Some(command.spawn().expect("kv runs")))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("still running")
    }

    /// Waits for it to end (at most [`WAIT`]).
    fn finish(mut self) -> Output {
        finish(self.0.take().expect("still running"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `f`'s answer, run on a thread of its own, or a failure after [`WAIT`].
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

#[rstest]
fn increments_inside_kv_lock_add_up(#[values(Engine::Sled, Engine::Etcd)] engine: Engine) {
    let Some(server) = support::serve(engine, &[]) else {
        return;
    };
    const PROCESSES: usize = 4;
    const TIMES: usize = 5;
    // Read, then write without any condition: only the lock keeps increments apart.
    let increment =
        r#"v=$("$KV" get counter 2>/dev/null || echo 0); "$KV" put counter $((v + 1)) >/dev/null"#;
    let script = format!(
        r#"for i in $(seq {TIMES}); do "$KV" lock --ttl 5s locks/counter -- sh -c '{increment}' || exit 1; done"#
    );
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new("sh")
                .args(["-c", &script])
                .env("KV", kv_path())
                .env("KV_URL", &server.url)
                .spawn()
                .expect("sh runs")
        })
        .collect();
    for child in children {
        assert!(finish(child).status.success(), "a locked increment failed");
    }
    let out = Command::new(kv_path())
        .args(["get", "counter"])
        .env("KV_URL", &server.url)
        .output()
        .expect("kv runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (PROCESSES * TIMES).to_string()
    );
    // Every holder released its lock: no waiter's key is left.
    let out = Command::new(kv_path())
        .args(["ls", "locks/counter/"])
        .env("KV_URL", &server.url)
        .output()
        .expect("kv runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

#[rstest]
fn a_holder_killed_with_sigkill_frees_the_lock_after_its_ttl(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) {
    let Some(server) = support::serve(engine, &[]) else {
        return;
    };
    // Without a command, kv prints the holder's key once it holds the lock.
    let mut holder = Running::spawn(
        Command::new(kv_path())
            .args(["lock", "--ttl", "2s", "locks/job"])
            .env("KV_URL", &server.url)
            .stdout(Stdio::piped()),
    );
    let mut line = String::new();
    BufReader::new(holder.child().stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("the holder's key");
    assert!(line.starts_with("locks/job/"), "{line:?}");

    let mut waiter = Running::spawn(
        Command::new(kv_path())
            .args(["lock", "--ttl", "2s", "locks/job", "--", "echo", "mine"])
            .env("KV_URL", &server.url)
            .stdout(Stdio::piped()),
    );
    // The holder keeps its lease alive: the waiter waits.
    let mut watch = Running::spawn(
        Command::new(kv_path())
            .args(["watch", "locks/job/"])
            .env("KV_URL", &server.url)
            .stdout(Stdio::piped()),
    );
    let changes = BufReader::new(watch.child().stdout.take().expect("piped")).lines();
    assert!(
        waiter.child().try_wait().expect("waiter").is_none(),
        "the waiter did not wait"
    );

    holder.child().kill().expect("SIGKILL the holder");
    let killed = Instant::now();
    holder.child().wait().expect("reaped");
    // The holder's key goes when its lease expires (the watch shows it), then the
    // waiter's own key comes and goes: it ran its command.
    let holder_key = line.trim().to_string();
    let deleted = within("the holder's key to go", move || {
        changes
            .map_while(Result::ok)
            .any(|change| change.starts_with(&format!("DELETE {holder_key} ")))
    });
    assert!(deleted, "the holder's key was never deleted");
    // The TTL is what frees it, not the store's default nor a lease never revoked:
    // etcd revokes expired leases on a 500 ms round, through its log, and on two
    // cores shared with the whole suite the delete has come 3.1 s after the kill.
    let freed = killed.elapsed();
    assert!(
        freed <= Duration::from_secs(2 + 3),
        "the lock was freed {freed:?} after its holder died, with a TTL of 2 s"
    );
    let out = waiter.finish();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "mine\n");
}
