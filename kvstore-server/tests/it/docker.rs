//! The container image of `docker/Dockerfile`, run the way users run it: a named
//! volume on `/data`, a published port, `kv` from the host and `docker exec kv`
//! inside, `docker stop`, a new container on the same volume, the health check.
//! And `docker/compose.cluster.yaml`: three etcd members (the image of
//! `docker/etcd.Dockerfile`) and two kvstore replicas serving one store.
//!
//! No base image can be pulled here, so the image is built by
//! `docker/build-local.sh` (the documented way to build without a registry): the
//! same Dockerfile on base images made locally from this build's binaries.
//!
//! Without a Docker engine (`docker info` fails) the test says it is skipped and
//! passes; with `KVSTORE_REQUIRE_DOCKER=1` that is a failure instead. Every
//! container, volume and image it creates is removed at the end, also on failure.

use crate::support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kvstore_client::{Client, EventKind, Update, WatchOptions};
use serde_json::{json, Value};
use support::EMPTY_REVISION;

/// What `docker stop` gives the server before it sends SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Safety net for each wait on a container; a healthy run stays far below it.
const WAIT: Duration = Duration::from_secs(60);
/// The value size limit the containers get through `KVSTORE_MAX_VALUE_BYTES`.
const MAX_VALUE_BYTES: usize = 64;
/// A value that is not UTF-8.
const BLOB: &[u8] = &[0, 1, 2, 0xff, b'\n'];

/// A change as a watch reports it: kind, key, value, revision.
type Change = (EventKind, String, Vec<u8>, u64);

#[test]
fn image_serves_persists_across_containers_and_stops_gracefully() {
    if let Err(why) = docker_engine() {
        support::skip(
            "KVSTORE_REQUIRE_DOCKER",
            "the docker image test",
            &format!("no Docker engine ({why})"),
        );
        return;
    }

    let bins = Binaries::of_this_build();
    let mut docker = Resources::new();
    let started = Instant::now();

    // --- Build the image users run, from the Dockerfile. ---
    docker.build_image(&bins);
    eprintln!("built {} in {:?}", docker.image, started.elapsed());
    check_image_config(&docker.image);

    // --- First container: a new named volume and a published port. ---
    docker_ok(&["volume", "create", &docker.volume]);
    let first = docker.run_container("1");
    let kv = Kv::new(&bins.kv, &first.url);
    let uid = docker_ok(&["top", &first.name, "-o", "pid,uid,comm"]);
    assert!(
        uid.lines()
            .skip(1)
            .all(|line| line.split_whitespace().nth(1) == Some("10001")),
        "the server should run as uid 10001:\n{uid}"
    );

    // Values through the published port with the host's `kv`.
    let mut expected: Vec<Change> = Vec::new();
    kv.put(&mut expected, "app/db/url", b"postgres://db");
    kv.put(&mut expected, "app/mode", b"blue");
    kv.put(&mut expected, "greeting", "héllo wörld".as_bytes());
    kv.put(&mut expected, "blob", BLOB);
    kv.put(&mut expected, "app/mode", b"green");
    kv.put(&mut expected, "tmp/scratch", b"x");
    let deleted = kv.json(&["del", "tmp/scratch"]);
    let last = deleted["revision"].as_u64().expect("revision");
    expected.push((EventKind::Delete, "tmp/scratch".into(), Vec::new(), last));
    let revisions: Vec<u64> = expected.iter().map(|e| e.3).collect();
    assert_eq!(
        revisions,
        (EMPTY_REVISION + 1..=last).collect::<Vec<_>>(),
        "revisions of a new store"
    );

    // Configuration through the environment: KVSTORE_MAX_VALUE_BYTES.
    let too_large = kv.run(&["put", "big", &"v".repeat(MAX_VALUE_BYTES + 1)], None);
    assert_eq!(
        too_large.status.code(),
        Some(2),
        "a value over KVSTORE_MAX_VALUE_BYTES: {too_large:?}"
    );

    let keys = ["app/db/url", "app/mode", "greeting", "blob"];
    let entries: BTreeMap<&str, Value> = keys.iter().map(|k| (*k, kv.json(&["get", k]))).collect();
    assert_eq!(entries["app/mode"]["value"], "green");
    assert_eq!(entries["app/mode"]["version"], 2);
    assert_eq!(kv.get_raw("blob"), BLOB);
    assert_eq!(kv.run(&["get", "tmp/scratch"], None).status.code(), Some(1));
    assert_eq!(kv.json(&["health"])["revision"], last);
    assert_eq!(history(&first.url, last), expected, "change history");

    // `kv` inside the container needs no flags (KV_URL is in the image).
    assert_eq!(
        docker_ok(&["exec", &first.name, "kv", "get", "app/mode"]),
        "green"
    );
    docker_ok(&["exec", &first.name, "kv", "health"]);
    wait_healthy(&first.name);

    // --- docker stop: SIGTERM, a graceful exit 0 within the timeout. ---
    let stopping = Instant::now();
    docker_ok(&[
        "stop",
        "-t",
        &STOP_TIMEOUT.as_secs().to_string(),
        &first.name,
    ]);
    let took = stopping.elapsed();
    let state = docker_ok(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}} {{.State.OOMKilled}}",
        &first.name,
    ]);
    assert_eq!(
        state,
        "0 false",
        "exit code and OOM kill of the stopped server (137 would mean SIGKILL); logs:\n{}",
        logs(&first.name)
    );
    assert!(
        took < STOP_TIMEOUT,
        "docker stop took {took:?}, the whole timeout"
    );
    eprintln!("docker stop took {took:?}");

    // --- A new container on the same volume sees everything. ---
    let second = docker.run_container("2");
    let kv = Kv::new(&bins.kv, &second.url);
    for key in keys {
        assert_eq!(
            kv.json(&["get", key]),
            entries[key],
            "{key} after the restart"
        );
    }
    assert_eq!(kv.get_raw("blob"), BLOB);
    assert_eq!(kv.run(&["get", "tmp/scratch"], None).status.code(), Some(1));
    assert_eq!(kv.json(&["health"])["revision"], last);
    assert_eq!(
        history(&second.url, last),
        expected,
        "history after the restart"
    );
    // Revisions go on from where the first container stopped.
    let after = kv.put(&mut expected, "app/mode", b"after-restart");
    assert_eq!(after, last + 1);
    assert_eq!(
        kv.json(&["get", "app/mode"]),
        json!({"key": "app/mode", "value": "after-restart", "create_revision": EMPTY_REVISION + 2,
               "mod_revision": last + 1, "version": 3})
    );
    assert_eq!(history(&second.url, last + 1), expected);
    assert_eq!(
        docker_ok(&["exec", &second.name, "kv", "get", "greeting"]),
        "héllo wörld"
    );
    wait_healthy(&second.name);
    eprintln!("docker image test passed in {:?}", started.elapsed());
}

/// Runs `docker/build-local.sh ARGS`, which must succeed.
fn build_local(args: &[&str]) {
    build_local_with(args, &[]);
}

/// Runs `docker/build-local.sh ARGS` with the variables `env` set, which must succeed.
fn build_local_with(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) {
    let output = Command::new("bash")
        .arg(workspace_root().join("docker/build-local.sh"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .expect("bash docker/build-local.sh");
    succeeded(
        &format!("docker/build-local.sh {}", args.join(" ")),
        &output,
        "",
    );
}

/// The trimmed stdout of the command `what`, which must have succeeded (else a
/// failure with its output and `context`).
fn succeeded(what: &str, out: &Output, context: &str) -> String {
    assert!(
        out.status.success(),
        "`{what}` failed ({}): {}{}{context}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `Ok` when `docker info` reaches an engine, else why not.
fn docker_engine() -> Result<(), String> {
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => Err(format!("cannot run `docker`: {e}")),
        Ok(out) if !out.status.success() => Err(format!(
            "`docker info` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => Ok(()),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `kvstore-server` and `kv` of this build, side by side in the target dir.
struct Binaries {
    dir: PathBuf,
    kv: PathBuf,
}

impl Binaries {
    fn of_this_build() -> Binaries {
        let kv = support::kv_bin();
        let dir = kv.parent().expect("target dir").to_path_buf();
        Binaries { dir, kv }
    }
}

/// Runs `docker ARGS`.
fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")))
}

/// The trimmed stdout of `docker ARGS`, which must succeed.
fn docker_ok(args: &[&str]) -> String {
    succeeded(&format!("docker {}", args.join(" ")), &docker(args), "")
}

/// A container's output so far, for failure messages.
fn logs(container: &str) -> String {
    let out = docker(&["logs", container]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What the Dockerfile promises about the image.
fn check_image_config(image: &str) {
    let config: Value = serde_json::from_str(&docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        image,
    ]))
    .expect("image config JSON");
    assert_eq!(config["User"], "10001:10001", "non-root user");
    assert!(
        config["Volumes"].get("/data").is_some(),
        "VOLUME /data: {config}"
    );
    assert!(
        config["ExposedPorts"].get("5000/tcp").is_some(),
        "EXPOSE 5000: {config}"
    );
    assert_eq!(
        config["Healthcheck"]["Test"],
        json!(["CMD", "kv", "health"])
    );
    assert_eq!(config["StopSignal"], "SIGTERM");
    let env: Vec<&str> = config["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for var in [
        "KVSTORE_DATA_DIR=/data",
        "KVSTORE_LISTEN=0.0.0.0:5000",
        "KV_URL=http://127.0.0.1:5000",
    ] {
        assert!(env.contains(&var), "{var} in {env:?}");
    }
}

/// The names this test run uses, removed (containers, then the volume, then the
/// image) when dropped, also when the test fails.
struct Resources {
    image: String,
    volume: String,
    containers: Vec<String>,
}

/// A running container and its published port.
struct Container {
    name: String,
    /// `http://127.0.0.1:PORT`
    url: String,
}

impl Resources {
    /// Builds the kvstore image from `bins` as `self.image`.
    fn build_image(&self, bins: &Binaries) {
        let dir = bins.dir.to_string_lossy();
        build_local(&["--bin-dir", &dir, "-t", &self.image]);
    }

    fn new() -> Resources {
        let unique = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis()
        );
        Resources {
            image: format!("kvstore-test:{unique}"),
            volume: format!("kvstore-test-{unique}"),
            containers: Vec::new(),
        }
    }

    /// Starts a container of the image on the volume, with port 5000 published
    /// on a free port of 127.0.0.1, and waits until the server is listening.
    fn run_container(&mut self, suffix: &str) -> Container {
        let name = format!("{}-{suffix}", self.volume);
        self.containers.push(name.clone());
        let max_value = format!("KVSTORE_MAX_VALUE_BYTES={MAX_VALUE_BYTES}");
        docker_ok(&[
            "run",
            "--detach",
            "--name",
            &name,
            "--volume",
            &format!("{}:/data", self.volume),
            "--publish",
            "127.0.0.1::5000",
            // The Dockerfile's health check, more often than its default.
            "--health-interval",
            "1s",
            "--env",
            &max_value,
            &self.image,
        ]);
        wait_listening(&name);
        let port = docker_ok(&["port", &name, "5000/tcp"]);
        let addr = port.lines().next().expect("published address");
        Container {
            url: format!("http://{addr}"),
            name,
        }
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        let mut leftovers = Vec::new();
        for container in &self.containers {
            let out = docker(&["rm", "--force", "--volumes", container]);
            if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("No such") {
                leftovers.push(format!("container {container}"));
            }
        }
        for (what, args) in [
            ("volume", ["volume", "rm", "--force", &self.volume]),
            ("image", ["image", "rm", "--force", &self.image]),
        ] {
            if !docker(&args).status.success() {
                leftovers.push(format!("{what} {}", args[3]));
            }
        }
        if !leftovers.is_empty() {
            let _ = writeln!(std::io::stderr(), "could not remove: {leftovers:?}");
        }
    }
}

/// Waits for the server's `listening` line on the container's stdout.
fn wait_listening(container: &str) {
    let mut follow = Command::new("docker")
        .args(["logs", "--follow", container])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker logs --follow");
    let stdout = follow.stdout.take().expect("piped stdout");
    let (lines, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let ready = loop {
        match receive.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.starts_with("kvstore-server listening on ") => break true,
            Ok(_) => {}
            // The container exited (end of the log) or the deadline passed.
            Err(_) => break false,
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        ready,
        "{container} is not listening ({}); logs:\n{}",
        docker_ok(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            container
        ]),
        logs(container)
    );
}

/// Waits until Docker reports the container healthy; fails if it turns unhealthy.
/// Docker has no event for this here, so it polls, with [`WAIT`] as the bound.
fn wait_healthy(container: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let health = docker_ok(&[
            "inspect",
            "--format",
            "{{.State.Health.Status}} {{json .State.Health.Log}}",
            container,
        ]);
        let (status, log) = health.split_once(' ').unwrap_or((&health, ""));
        match status {
            "healthy" => return,
            "starting" if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            _ => panic!("{container} is {status} after {WAIT:?} at most; checks: {log}"),
        }
    }
}

/// Every change from revision 1 through `last`, read with a watch.
fn history(url: &str, last: u64) -> Vec<Change> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let client = Client::new(url).expect("client");
        let mut updates = Box::pin(client.watch_with(WatchOptions {
            start_revision: Some(1),
            reconnect: false,
            ..WatchOptions::default()
        }));
        let mut events = Vec::new();
        let read = async {
            while let Some(update) = updates.next().await {
                if let Update::Event(event) = update.expect("watch") {
                    let revision = event.revision;
                    events.push((event.kind, event.key, event.value, revision));
                    if revision >= last {
                        break;
                    }
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("history within the wait");
        events
    })
}

/// The host's `kv` against one server.
struct Kv {
    bin: PathBuf,
    url: String,
}

impl Kv {
    fn new(bin: &Path, url: &str) -> Kv {
        Kv {
            bin: bin.to_path_buf(),
            url: url.to_string(),
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = Command::new(&self.bin)
            .args(args)
            .env("KV_URL", &self.url)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kv");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("piped stdin");
            pipe.write_all(input).expect("kv stdin");
        }
        child.wait_with_output().expect("kv output")
    }

    fn ok(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "kv {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `kv -o json ARGS`, parsed.
    fn json(&self, args: &[&str]) -> Value {
        self.json_inner(args, None)
    }

    fn json_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Value {
        self.json_inner(args, Some(stdin))
    }

    fn json_inner(&self, args: &[&str], stdin: Option<&[u8]>) -> Value {
        let all: Vec<&str> = ["-o", "json"].iter().chain(args).copied().collect();
        let out = self.ok(&all, stdin);
        serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!(
                "kv {}: {e}: {}",
                all.join(" "),
                String::from_utf8_lossy(&out)
            )
        })
    }

    /// `kv put KEY -` with the value on stdin; records the change and returns
    /// its revision.
    fn put(&self, changes: &mut Vec<Change>, key: &str, value: &[u8]) -> u64 {
        let result = self.json_with_stdin(&["put", key, "-"], value);
        let revision = result["revision"].as_u64().expect("revision");
        changes.push((EventKind::Put, key.to_string(), value.to_vec(), revision));
        revision
    }

    /// The raw value, as `kv get` prints it.
    fn get_raw(&self, key: &str) -> Vec<u8> {
        self.ok(&["get", key], None)
    }
}

/// `docker/compose.cluster.yaml` as users run it: three etcd members and two
/// kvstore replicas, images built without a registry. A put through replica 1 is
/// read and watched through replica 2; with replica 1 stopped, `kv` given both
/// URLs goes on through replica 2.
#[test]
fn compose_cluster_serves_one_store_through_two_replicas() {
    const TEST: &str = "the compose cluster test";
    if let Err(why) = docker_engine() {
        support::skip(
            "KVSTORE_REQUIRE_DOCKER",
            TEST,
            &format!("no Docker engine ({why})"),
        );
        return;
    }
    if !cfg!(feature = "etcd") {
        let why = "built without the etcd engine (test with --all-features)";
        support::skip("KVSTORE_REQUIRE_DOCKER", TEST, why);
        return;
    }
    let Some(compose) = compose_command() else {
        let why = "neither `docker compose` nor `docker-compose` runs";
        support::skip("KVSTORE_REQUIRE_DOCKER", TEST, why);
        return;
    };
    let etcd = match support::etcd::etcd_bin() {
        Ok(etcd) => etcd,
        Err(why) => {
            support::skip("KVSTORE_REQUIRE_ETCD", TEST, &why);
            return;
        }
    };

    let bins = Binaries::of_this_build();
    let docker = Resources::new();
    let started = Instant::now();
    docker.build_image(&bins);
    let etcd_image = format!("{}-etcd", docker.image);
    // As a user with etcd installed calls it: by the name on the PATH (the test
    // support's own etcd may be elsewhere, so a PATH of its own holds it).
    let on_path = tempfile::tempdir().expect("a temp dir");
    std::os::unix::fs::symlink(&etcd, on_path.path().join("etcd")).expect("a link to etcd");
    let path = std::env::join_paths(std::iter::once(on_path.path().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("a PATH");
    build_local_with(
        &["--etcd", "--etcd-bin", "etcd", "-t", &etcd_image],
        &[("PATH", path.as_os_str())],
    );
    eprintln!("built both images in {:?}", started.elapsed());

    let cluster = Compose {
        command: compose,
        project: docker.volume.clone(),
        env: vec![
            ("KVSTORE_IMAGE", docker.image.clone()),
            ("KVSTORE_ETCD_IMAGE", etcd_image),
            ("KVSTORE1_PUBLISH", "127.0.0.1:".into()),
            ("KVSTORE2_PUBLISH", "127.0.0.1:".into()),
            ("KVSTORE1_ETCD_API_PUBLISH", "127.0.0.1:".into()),
            ("KVSTORE2_ETCD_API_PUBLISH", "127.0.0.1:".into()),
        ],
    };
    cluster.ok(&["up", "-d", "--no-build"]);
    let url = |service: &str| {
        let port = cluster.ok(&["port", service, "5000"]);
        format!("http://{}", port.lines().next().expect("published address"))
    };
    let (one, two) = (url("kvstore1"), url("kvstore2"));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let on_two = Client::new(&two).expect("client");
        // Both replicas answer once etcd has elected a leader (no event to wait on:
        // polled, with WAIT as the bound).
        let deadline = Instant::now() + WAIT;
        for client in [Client::new(&one).expect("client"), on_two.clone()] {
            while let Err(e) = client.health().await {
                assert!(
                    Instant::now() < deadline,
                    "{} not healthy within {WAIT:?}: {e}; logs:\n{}",
                    client.url(),
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        eprintln!("cluster up in {:?}", started.elapsed());
        let from = on_two.health().await.expect("health") + 1;
        let mut changes = Box::pin(on_two.watch_with(WatchOptions {
            prefix: "cluster/".into(),
            start_revision: Some(from),
            ..WatchOptions::default()
        }));

        let kv1 = Kv::new(&bins.kv, &one);
        let kv2 = Kv::new(&bins.kv, &two);
        let mut expected: Vec<Change> = Vec::new();
        kv1.put(&mut expected, "cluster/a", b"through replica 1");
        kv1.put(&mut expected, "cluster/b", BLOB);
        assert_eq!(kv2.get_raw("cluster/a"), b"through replica 1");
        let entry = kv2.json(&["get", "cluster/a"]);
        assert_eq!(entry["mod_revision"], expected[0].3);
        assert_eq!(
            cluster.ok(&["exec", "-T", "kvstore2", "kv", "get", "cluster/a"]),
            "through replica 1"
        );

        // Replica 1 goes away: `kv` given both URLs goes on through replica 2.
        cluster.ok(&["stop", "kvstore1"]);
        let both = Kv::new(&bins.kv, &format!("{one},{two}"));
        both.put(&mut expected, "cluster/c", b"after the stop");
        assert_eq!(both.get_raw("cluster/c"), b"after the stop");

        let mut seen = Vec::new();
        while seen.len() < expected.len() {
            let update = tokio::time::timeout(WAIT, changes.next())
                .await
                .expect("a change within the wait")
                .expect("the watch goes on")
                .expect("watch");
            if let Update::Event(event) = update {
                let revision = event.revision;
                seen.push((event.kind, event.key, event.value, revision));
            }
        }
        assert_eq!(
            seen, expected,
            "replica 2's watch: every put, once, in order"
        );
    });
    eprintln!("compose cluster test passed in {:?}", started.elapsed());
}

/// `docker compose` (the plugin) or `docker-compose`, whichever runs.
fn compose_command() -> Option<Vec<String>> {
    [vec!["docker", "compose"], vec!["docker-compose"]]
        .into_iter()
        .find(|command| {
            Command::new(command[0])
                .args(&command[1..])
                .arg("version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|command| command.into_iter().map(String::from).collect())
}

/// A project of `docker/compose.cluster.yaml`, taken down with its volumes (and
/// the etcd image) when dropped, also when the test fails.
struct Compose {
    command: Vec<String>,
    project: String,
    env: Vec<(&'static str, String)>,
}

impl Compose {
    fn run(&self, args: &[&str]) -> Output {
        let file = workspace_root().join("docker/compose.cluster.yaml");
        Command::new(&self.command[0])
            .args(&self.command[1..])
            .args(["--project-name", &self.project, "--file"])
            .arg(file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", self.command.join(" ")))
    }

    /// The trimmed stdout of `compose ARGS`, which must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let context = if out.status.success() {
            String::new()
        } else {
            format!("\nlogs:\n{}", self.logs())
        };
        succeeded(&format!("compose {}", args.join(" ")), &out, &context)
    }

    fn logs(&self) -> String {
        let out = self.run(&["logs", "--no-color", "--tail", "50"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let down = self.run(&["down", "--volumes", "--timeout", "5"]);
        if !down.status.success() {
            let _ = writeln!(
                std::io::stderr(),
                "could not take down {}: {}",
                self.project,
                String::from_utf8_lossy(&down.stderr)
            );
        }
        if let Some((_, image)) = self.env.iter().find(|(k, _)| *k == "KVSTORE_ETCD_IMAGE") {
            let _ = docker(&["image", "rm", "--force", image]);
        }
    }
}
