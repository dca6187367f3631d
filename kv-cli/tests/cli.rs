//! The `kv` binary against a real server: output, exit codes, watch.

use kvstore_testkit as support;

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command as StdCommand, Stdio};

use assert_cmd::Command;
use rstest::rstest;
use support::{Backend, Engine, TestServer, EMPTY_REVISION};

/// Safety net for each wait on a `kv` process; a healthy run never gets near it.
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn kv(server: &TestServer) -> Command {
    let mut cmd = Command::cargo_bin("kv").expect("kv binary");
    cmd.env("KV_URL", &server.url);
    cmd
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().expect("kv runs");
    assert!(out.status.success(), "kv failed: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs `kv` and returns (exit code, stderr).
fn failure_of(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("kv runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

#[rstest]
fn put_get_del_ls_round_trip(#[values(Engine::Sled, Engine::Etcd)] engine: Engine) {
    let Some(server) = support::serve(engine, &[]) else {
        return;
    };
    assert_eq!(
        stdout_of(kv(&server).args(["put", "app/db/url", "postgres://db"])),
        format!("OK (revision {})\n", EMPTY_REVISION + 1)
    );
    kv(&server)
        .args(["put", "app/mode", "blue"])
        .assert()
        .success();
    kv(&server).args(["put", "other", "x"]).assert().success();
    // `get` prints the value alone, so $(kv get k) works.
    assert_eq!(
        stdout_of(kv(&server).args(["get", "app/db/url"])),
        "postgres://db"
    );
    assert_eq!(
        stdout_of(kv(&server).args(["ls", "app/"])),
        "app/db/url\napp/mode\n"
    );
    assert_eq!(
        stdout_of(kv(&server).arg("ls")),
        "app/db/url\napp/mode\nother\n"
    );
    assert_eq!(
        stdout_of(kv(&server).args(["del", "app/mode"])),
        format!("deleted (revision {})\n", EMPTY_REVISION + 4)
    );
    assert_eq!(stdout_of(kv(&server).args(["ls", "app/"])), "app/db/url\n");
}

#[rstest]
fn binary_values_through_stdin_and_stdout(#[values(Engine::Sled, Engine::Etcd)] engine: Engine) {
    let Some(server) = support::serve(engine, &[]) else {
        return;
    };
    let bytes: Vec<u8> = (0..=255u8).chain([0, 10, 13]).collect();
    kv(&server)
        .args(["put", "blob", "-"])
        .write_stdin(bytes.clone())
        .assert()
        .success();
    let out = kv(&server).args(["get", "blob"]).output().expect("kv runs");
    assert!(out.status.success());
    assert_eq!(out.stdout, bytes);
}

#[rstest]
fn json_output(#[values(Engine::Sled, Engine::Etcd)] engine: Engine) {
    let Some(server) = support::serve(engine, &[]) else {
        return;
    };
    let put: serde_json::Value = serde_json::from_str(&stdout_of(
        kv(&server).args(["-o", "json", "put", "k", "v"]),
    ))
    .expect("JSON");
    assert_eq!(put["revision"], EMPTY_REVISION + 1);
    let entry: serde_json::Value =
        serde_json::from_str(&stdout_of(kv(&server).args(["get", "k", "-o", "json"])))
            .expect("JSON");
    assert_eq!(entry["key"], "k");
    assert_eq!(entry["value"], "v");
    assert_eq!(entry["version"], 1);
    let list: serde_json::Value =
        serde_json::from_str(&stdout_of(kv(&server).args(["ls", "-o", "json"]))).expect("JSON");
    assert_eq!(list[0]["key"], "k");
}

#[rstest]
fn exit_codes_and_one_line_errors(#[values(Engine::Sled, Engine::Etcd)] engine: Engine) {
    let Some(server) = support::serve(engine, &[]) else {
        return;
    };
    let (code, stderr) = failure_of(kv(&server).args(["get", "missing"]));
    assert_eq!(code, 1);
    assert_eq!(stderr, "kv: key not found: missing\n");

    kv(&server).args(["put", "k", "v1"]).assert().success();
    let put = (EMPTY_REVISION + 1).to_string();
    let (code, stderr) = failure_of(kv(&server).args(["put", "k", "v2", "--if-revision", "7"]));
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("mod_revision is {put}")),
        "{stderr}"
    );
    let (code, _) = failure_of(kv(&server).args(["put", "k", "v2", "--create"]));
    assert_eq!(code, 1);
    kv(&server)
        .args(["put", "k", "v2", "--if-revision", &put])
        .assert()
        .success();

    let (code, stderr) = failure_of(kv(&server).args(["del", "missing"]));
    assert_eq!((code, stderr.lines().count()), (1, 1));

    let (code, stderr) = failure_of(kv(&server).args(["put", "", "v"]));
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("kv: ") && stderr.contains("invalid_key"),
        "{stderr}"
    );
    let (code, _) = failure_of(kv(&server).arg("frobnicate"));
    assert_eq!(code, 2);
    let (code, _) = failure_of(kv(&server).args(["--url", "not a url", "get", "k"]));
    assert_eq!(code, 2);

    // Only its address matters: nothing listens there once it is killed.
    let mut down = TestServer::start();
    let url = down.url.clone();
    down.kill();
    let (code, stderr) = failure_of(kv(&server).args(["--url", &url, "get", "k"]));
    assert_eq!(code, 3);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("kv: cannot reach the server"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// On one engine: `--help` asks the server nothing.
#[test]
fn help_documents_exit_codes() {
    let server = TestServer::start();
    let help = stdout_of(kv(&server).arg("--help"));
    for line in [
        "0  success",
        "1  key not found",
        "2  usage error",
        "3  server unreachable",
    ] {
        assert!(help.contains(line), "missing {line:?} in:\n{help}");
    }
}

/// A `kv watch` running in the background, read line by line.
struct Watcher {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Its stderr, line by line.
    errors: std::sync::mpsc::Receiver<String>,
}

impl Watcher {
    fn start(server: &TestServer, args: &[&str]) -> Watcher {
        Watcher::start_at(&server.url, args)
    }

    fn start_at(url: &str, args: &[&str]) -> Watcher {
        let mut child = StdCommand::new(assert_cmd::cargo::cargo_bin("kv"))
            .arg("watch")
            .args(args)
            .env("KV_URL", url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kv watch starts");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, errors) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Watcher {
            child,
            lines: BufReader::new(stdout).lines(),
            errors,
        }
    }

    /// The next line on stderr (waiting at most [`WAIT`]).
    fn error_line(&self) -> String {
        self.errors
            .recv_timeout(WAIT)
            .expect("a line on kv watch's stderr")
    }

    /// Waits (at most [`WAIT`]) for the process to exit: its code, and its stderr.
    fn exit(mut self) -> (Option<i32>, String) {
        let deadline = std::time::Instant::now() + WAIT;
        let code = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("kv watch did not exit");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let stderr: Vec<String> = self.errors.iter().collect();
        (code, stderr.join("\n"))
    }

    fn line(&mut self) -> String {
        self.lines
            .next()
            .expect("kv watch ended early")
            .expect("readable output")
    }

    /// Ctrl-C, and the exit code.
    fn interrupt(mut self) -> Option<i32> {
        let _ = StdCommand::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

#[rstest]
fn watch_prints_history_then_live_changes_and_exits_cleanly_on_ctrl_c(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) {
    let Some(server) = support::serve(engine, &[]) else {
        return;
    };
    kv(&server).args(["put", "app/a", "1"]).assert().success();
    kv(&server)
        .args(["put", "elsewhere", "x"])
        .assert()
        .success();
    // From revision 1: the history comes first, which also shows the watch is open.
    let mut watch = Watcher::start(&server, &["app/", "--from-revision", "1"]);
    assert_eq!(
        watch.line(),
        format!("PUT app/a = 1 (revision {})", EMPTY_REVISION + 1)
    );
    kv(&server).args(["put", "app/b", "2"]).assert().success();
    kv(&server).args(["del", "app/a"]).assert().success();
    assert_eq!(
        watch.line(),
        format!("PUT app/b = 2 (revision {})", EMPTY_REVISION + 3)
    );
    assert_eq!(
        watch.line(),
        format!("DELETE app/a (revision {})", EMPTY_REVISION + 4)
    );
    assert_eq!(watch.interrupt(), Some(0));
}

#[rstest]
fn watch_json_and_initial_state(#[values(Engine::Sled, Engine::Etcd)] engine: Engine) {
    let Some(server) = support::serve(engine, &[]) else {
        return;
    };
    kv(&server).args(["put", "cfg/a", "1"]).assert().success();
    kv(&server).args(["put", "cfg/b", "2"]).assert().success();
    let mut watch = Watcher::start(&server, &["cfg/", "--initial", "-o", "json"]);
    let frames: Vec<serde_json::Value> = (0..3)
        .map(|_| serde_json::from_str(&watch.line()).expect("NDJSON"))
        .collect();
    assert_eq!(frames[0]["type"], "entry");
    assert_eq!(frames[0]["key"], "cfg/a");
    assert_eq!(frames[1]["key"], "cfg/b");
    assert_eq!(frames[2]["type"], "synced");
    assert_eq!(frames[2]["revision"], EMPTY_REVISION + 2);
    kv(&server).args(["put", "cfg/a", "3"]).assert().success();
    let live: serde_json::Value = serde_json::from_str(&watch.line()).expect("NDJSON");
    assert_eq!(live["type"], "put");
    assert_eq!(live["value"], "3");
    assert_eq!(live["revision"], EMPTY_REVISION + 3);
    assert_eq!(live["version"], 2);
    assert_eq!(watch.interrupt(), Some(0));
}

/// docs/cli.md: "`kv watch` reconnects by itself (saying so on stderr) and resumes
/// where it stopped."
#[rstest]
fn watch_stays_up_across_a_server_restart_and_says_it_reconnects(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) {
    let Some(store) = Backend::new(engine) else {
        return;
    };
    // The watch's address, held by the test across the restart.
    let held = support::HeldAddress::new().expect("a loopback port");
    let mut first = held.start_on(&store, &[]).expect("the server starts");
    kv(&first).args(["put", "k", "before"]).assert().success();
    let mut watch = Watcher::start_at(&held.url, &["--from-revision", "1"]);
    assert_eq!(
        watch.line(),
        format!("PUT k = before (revision {})", EMPTY_REVISION + 1)
    );

    held.kill(&mut first);
    let said = watch.error_line();
    assert!(
        said.starts_with("kv: ") && said.contains("reconnecting in"),
        "{said}"
    );
    let second = held.start_on(&store, &[]).expect("the server restarts");
    kv(&second).args(["put", "k", "after"]).assert().success();
    // Exactly once, with the revision continuing after the restart.
    assert_eq!(
        watch.line(),
        format!("PUT k = after (revision {})", EMPTY_REVISION + 2)
    );
    assert_eq!(watch.interrupt(), Some(0));
}

/// docs/cli.md: exit code 1 for "history compacted".
///
/// sled trims its history by its own retention flag; etcd's is compacted in
/// etcd (here through the cluster, as an operator or its auto-compaction would).
#[rstest]
fn watch_from_a_compacted_revision_exits_1_with_one_line(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) {
    let Some(mut server) = support::serve(engine, &["--retain-revisions", "5"]) else {
        return;
    };
    for i in 0..40 {
        kv(&server)
            .args(["put", &format!("k{}", i % 3), "v"])
            .assert()
            .success();
    }
    let last = EMPTY_REVISION + 40;
    if let Some(cluster) = server.backend().and_then(Backend::cluster) {
        cluster.compact(last - 4).expect("etcd compacts");
    }
    // Each put waited for the one before, and the writer trims the history after
    // answering a group: revision 1 is long gone.
    let watch = Watcher::start(&server, &["--from-revision", "1"]);
    let (code, stderr) = watch.exit();
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("kv: ") && stderr.contains("compacted"),
        "{stderr}"
    );
}

/// docs/cli.md: exit code 2 for "value too large", against a server of this build on
/// its default limit of 1 MiB.
#[rstest]
fn a_value_over_the_limit_exits_2_with_one_line(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) {
    let Some(server) = support::serve(engine, &[]) else {
        return;
    };
    let (code, stderr) =
        failure_of(
            kv(&server)
                .args(["put", "big", "-"])
                .write_stdin(vec![b'x'; 1024 * 1024 + 1]),
        );
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("kv: ") && stderr.contains("value_too_large"),
        "{stderr}"
    );
    let (code, _) = failure_of(kv(&server).args(["get", "big"]));
    assert_eq!(code, 1, "nothing stored");
    kv(&server)
        .args(["put", "big", "-"])
        .write_stdin(vec![b'x'; 1024 * 1024])
        .assert()
        .success();
}

/// docs/cli.md: exit code 3 for "server error", here a 503 `storage_unavailable`: on
/// sled while a restore is under way (it refuses every write until it ends), on
/// etcd while no etcd member answers (a restore there writes beside other writes:
/// replicas cannot stop each other's).
#[rstest]
fn a_server_error_exits_3_with_one_line(#[values(Engine::Sled, Engine::Etcd)] engine: Engine) {
    let Some(mut server) = support::serve(engine, &[]) else {
        return;
    };
    let refused = |server: &TestServer, key: &str, condition: &[&str]| {
        let (code, stderr) = failure_of(kv(server).args(["put", key, "v"]).args(condition));
        if code == 3 {
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(
                stderr.starts_with("kv: server error (storage_unavailable)"),
                "{stderr}"
            );
        }
        code
    };
    let upload = match engine {
        Engine::Sled => {
            let upload = stalled_restore(&server);
            // A put that cannot succeed (and changes nothing) tells when the
            // restore runs: 412 before (exit 1), 503 once it has begun (exit 3).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while refused(&server, "probe", &["--if-revision", "999999"]) == 1 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the restore never began"
                );
            }
            Some(upload)
        }
        Engine::Etcd => {
            server
                .backend()
                .and_then(Backend::cluster)
                .expect("an etcd cluster")
                .kill(0);
            None
        }
    };
    assert_eq!(refused(&server, "k", &[]), 3);
    // The upload breaks off (the restore is undone), or etcd is back: writes go on.
    drop(upload);
    if let Some(cluster) = server.backend().and_then(Backend::cluster) {
        cluster.restart(0).expect("etcd restarts");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !kv(&server)
        .args(["put", "k", "v"])
        .output()
        .expect("kv runs")
        .status
        .success()
    {
        assert!(std::time::Instant::now() < deadline, "writes stay refused");
    }
    assert_eq!(
        stdout_of(kv(&server).arg("ls")),
        "k\n",
        "the restore left nothing"
    );
}

/// A restore whose upload stalls after its first entry (until it is dropped).
fn stalled_restore(server: &TestServer) -> std::net::TcpStream {
    use std::io::Write as _;
    let mut upload = std::net::TcpStream::connect(server.addr()).expect("connect");
    let lines = "{\"format\":\"kvstore.snapshot.v1\",\"revision\":3}\n\
        {\"key\":\"a\",\"value\":\"1\",\"create_revision\":1,\"mod_revision\":3,\"version\":2}\n";
    write!(
        upload,
        "POST /v1/snapshot HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-ndjson\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{lines}\r\n",
        lines.len()
    )
    .expect("send the start of a restore");
    upload
}

/// docs/http-api.md: "`kv export [PREFIX] > backup.ndjson` and `kv import < backup.ndjson` do
/// the same" as the snapshot endpoints: through a pipe, every key comes across
/// with its value, revisions and version.
#[rstest]
fn export_piped_into_import_copies_the_store(#[values(Engine::Sled, Engine::Etcd)] engine: Engine) {
    let Some(source) = support::serve(engine, &[]) else {
        return;
    };
    kv(&source).args(["put", "app/a", "1"]).assert().success();
    kv(&source).args(["put", "app/a", "2"]).assert().success();
    let blob: Vec<u8> = (0..=255u8).collect();
    kv(&source)
        .args(["put", "blob", "-"])
        .write_stdin(blob.clone())
        .assert()
        .success();
    kv(&source).args(["put", "gone", "x"]).assert().success();
    kv(&source).args(["del", "gone"]).assert().success();

    let Some(target) = support::serve(engine, &[]) else {
        return;
    };
    let mut export = StdCommand::new(assert_cmd::cargo::cargo_bin("kv"))
        .arg("export")
        .env("KV_URL", &source.url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("kv export starts");
    let pipe = export.stdout.take().expect("piped");
    let import = StdCommand::new(assert_cmd::cargo::cargo_bin("kv"))
        .arg("import")
        .env("KV_URL", &target.url)
        .stdin(Stdio::from(pipe))
        .output()
        .expect("kv import runs");
    assert!(export.wait().expect("kv export ends").success());
    assert!(import.status.success(), "{import:?}");
    let listing = |server: &TestServer| -> serde_json::Value {
        serde_json::from_str(&stdout_of(kv(server).args(["-o", "json", "ls"]))).expect("JSON")
    };
    // sled takes the revisions of the export; etcd gives every write its own, so
    // there the entries come across as new ones, all in one transaction.
    let mut expected = listing(&source);
    let restored_at = match engine {
        Engine::Sled => EMPTY_REVISION + 5,
        Engine::Etcd => {
            let at = EMPTY_REVISION + 1;
            for entry in expected.as_array_mut().expect("a JSON array") {
                entry["create_revision"] = at.into();
                entry["mod_revision"] = at.into();
                entry["version"] = 1.into();
            }
            at
        }
    };
    assert_eq!(
        String::from_utf8_lossy(&import.stdout),
        format!("restored 2 entries (revision {restored_at})\n")
    );
    assert_eq!(listing(&target), expected);
    assert_eq!(
        kv(&target)
            .args(["get", "blob"])
            .output()
            .expect("kv runs")
            .stdout,
        blob
    );
    assert_eq!(
        stdout_of(kv(&target).args(["put", "next", "v"])),
        format!("OK (revision {})\n", restored_at + 1)
    );
}

#[rstest]
fn watch_into_a_closed_pipe_exits_zero(#[values(Engine::Sled, Engine::Etcd)] engine: Engine) {
    let Some(server) = support::serve(engine, &[]) else {
        return;
    };
    kv(&server).args(["put", "k", "v"]).assert().success();
    let mut child = StdCommand::new(assert_cmd::cargo::cargo_bin("kv"))
        .args(["watch", "--from-revision", "1"])
        .env("KV_URL", &server.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kv watch starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    assert!(lines.next().is_some());
    drop(lines);
    // The next line written hits the closed pipe.
    kv(&server).args(["put", "k", "w"]).assert().success();
    // Bounded: a watch that never notices the closed pipe fails the test instead
    // of hanging the suite.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let out = match done_rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(out) => out.expect("kv watch ends"),
        Err(_) => {
            let _ = StdCommand::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("kv watch did not exit after its stdout was closed");
        }
    };
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kv get --rev`, `kv ls --rev` and `kv history` show the past, in text and JSON;
/// a compacted revision exits 1 with one line, a future one 2.
#[rstest]
fn reads_of_the_past(#[values(Engine::Sled, Engine::Etcd)] engine: Engine) {
    let Some(mut server) = support::serve(engine, &["--retain-revisions", "5"]) else {
        return;
    };
    for value in ["one", "two", "three"] {
        kv(&server).args(["put", "h/k", value]).assert().success();
    }
    kv(&server).args(["put", "h/j", "jay"]).assert().success();
    kv(&server).args(["del", "h/k"]).assert().success();
    let (one, two, jay, deleted) = (
        EMPTY_REVISION + 1,
        EMPTY_REVISION + 2,
        EMPTY_REVISION + 4,
        EMPTY_REVISION + 5,
    );
    assert_eq!(
        stdout_of(kv(&server).args(["get", "h/k", "--rev", &two.to_string()])),
        "two"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout_of(kv(&server).args([
        "-o",
        "json",
        "get",
        "h/k",
        "--rev",
        &one.to_string(),
    ])))
    .expect("JSON");
    assert_eq!(json["value"], "one", "{json}");
    assert_eq!(json["version"], 1, "{json}");
    assert_eq!(json["read_revision"], one, "{json}");
    let (code, _) = failure_of(kv(&server).args(["get", "h/k", "--rev", &deleted.to_string()]));
    assert_eq!(code, 1);
    assert_eq!(
        stdout_of(kv(&server).args(["ls", "h/", "--rev", &jay.to_string()])),
        "h/j\nh/k\n"
    );
    assert_eq!(
        stdout_of(kv(&server).args(["ls", "h/", "--rev", &deleted.to_string()])),
        "h/j\n"
    );
    assert_eq!(
        stdout_of(kv(&server).args(["history", "h/k"])),
        format!(
            "{one}\tput\tversion 1\tone\n{two}\tput\tversion 2\ttwo\n{}\tput\tversion 3\tthree\n\
             {deleted}\tdelete\n",
            EMPTY_REVISION + 3
        )
    );
    let lines = stdout_of(kv(&server).args(["-o", "json", "history", "h/k"]));
    let kinds: Vec<String> = lines
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            event["type"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(kinds, ["put", "put", "put", "delete"]);

    let (code, stderr) =
        failure_of(kv(&server).args(["get", "h/k", "--rev", &(deleted + 100).to_string()]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("future"), "{stderr}");
    // Compacted: keep 5 revisions of 40 more.
    for i in 0..40 {
        kv(&server)
            .args(["put", &format!("k{}", i % 3), "v"])
            .assert()
            .success();
    }
    let last = deleted + 40;
    if let Some(cluster) = server.backend().and_then(Backend::cluster) {
        cluster.compact(last - 4).expect("etcd compacts");
    }
    for args in [
        ["get", "h/j", "--rev", &one.to_string()],
        ["ls", "h/", "--rev", &one.to_string()],
    ] {
        let (code, stderr) = failure_of(kv(&server).args(args));
        assert_eq!(code, 1, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("compacted"), "{stderr}");
    }
}

/// `kv completion SHELL` and `kv man` come from the parser's own definitions and
/// need no server: the bash script is valid bash and knows every subcommand, the
/// man page is roff for section 1.
#[test]
fn completions_and_the_man_page_come_from_the_command_line_definitions() {
    let run = |args: &[&str]| {
        let out = Command::cargo_bin("kv")
            .expect("kv binary")
            .args(args)
            .env("KV_URL", "http://127.0.0.1:1")
            .output()
            .expect("kv runs");
        assert!(out.status.success(), "kv {args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let bash = run(&["completion", "bash"]);
    for word in [
        "get",
        "put",
        "history",
        "watch",
        "lease",
        "completion",
        "--rev",
    ] {
        assert!(bash.contains(word), "the bash completion lacks {word}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("kv.bash");
    std::fs::write(&script, &bash).expect("write the script");
    if let Ok(check) = StdCommand::new("bash").arg("-n").arg(&script).output() {
        assert!(check.status.success(), "bash -n: {check:?}");
    }
    for shell in ["zsh", "fish"] {
        assert!(run(&["completion", shell]).contains("history"), "{shell}");
    }
    let man = run(&["man"]);
    assert!(man.contains(".TH kv 1"), "{}", &man[..man.len().min(200)]);
    assert!(man.contains("KV_URL"), "the man page names the variables");
    let refused = Command::cargo_bin("kv")
        .expect("kv binary")
        .args(["completion", "nosh"])
        .output()
        .expect("kv runs");
    assert_eq!(refused.status.code(), Some(2));
}
