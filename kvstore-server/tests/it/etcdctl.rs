//! etcdctl (Debian's etcd-client, etcd 3.4) against the server's etcd API, on both
//! engines: the commands the docs show, and what a user sees them print, as etcd
//! would print it. Keys written through etcdctl are the HTTP API's keys, at the
//! same revisions.
//!
//! Long-running commands (`watch`, `lease keep-alive`) run as child processes
//! whose output is read as it comes: nothing sleeps to synchronise, and every wait
//! gives up after [`WAIT`] saying what it waited for.

use crate::support;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use kvstore_client::Client;
use rstest::rstest;
use serde_json::Value;
use support::{serve, Engine, TestServer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

type BoxError = Box<dyn std::error::Error>;
type TestResult = Result<(), BoxError>;

/// Safety net for every wait; a healthy run never gets near it.
const WAIT: Duration = Duration::from_secs(15);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> Result<T, BoxError> {
    tokio::time::timeout(WAIT, f)
        .await
        .map_err(|_| format!("timed out after {WAIT:?} waiting for {what}").into())
}

/// etcdctl pointed at one endpoint, as a user runs it: `ETCDCTL_API=3 etcdctl
/// --endpoints URL [--user NAME:PASSWORD] ARGS`.
#[derive(Clone)]
struct Etcdctl {
    bin: PathBuf,
    endpoint: String,
    user: Option<String>,
}

/// A server on `engine` started with `args`, and etcdctl pointed at its etcd API;
/// `None` (having said the test skipped) when etcdctl or the engine is missing.
fn start(engine: Engine, args: &[&str]) -> Result<Option<(TestServer, Etcdctl)>, BoxError> {
    let Some(bin) = support::etcd::etcdctl() else {
        return Ok(None);
    };
    let Some(server) = serve(engine, args) else {
        return Ok(None);
    };
    let endpoint = server
        .etcd_url
        .clone()
        .ok_or("the server serves no etcd API")?;
    let etcdctl = Etcdctl {
        bin,
        endpoint,
        user: None,
    };
    Ok(Some((server, etcdctl)))
}

impl Etcdctl {
    /// The same etcdctl, signed in as `user` (`NAME:PASSWORD`).
    fn as_user(&self, user: &str) -> Etcdctl {
        Etcdctl {
            user: Some(user.to_string()),
            ..self.clone()
        }
    }

    /// The same etcdctl, pointed at `endpoint`.
    fn at(&self, endpoint: &str) -> Etcdctl {
        Etcdctl {
            endpoint: endpoint.to_string(),
            ..self.clone()
        }
    }

    /// The command line, with no `ETCDCTL_*` variable of this environment (which
    /// etcdctl would read, or refuse beside a flag), killed if dropped.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCDCTL_") {
                command.env_remove(name);
            }
        }
        command
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint]);
        if let Some(user) = &self.user {
            command.args(["--user", user]);
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs `etcdctl ARGS` to its end.
    async fn run(&self, args: &[&str]) -> Result<Output, BoxError> {
        let what = format!("`etcdctl {}` to finish", args.join(" "));
        Ok(within(&what, self.command(args).output()).await??)
    }

    /// Runs `etcdctl ARGS`, which must succeed; what it printed.
    async fn ok(&self, args: &[&str]) -> Result<String, BoxError> {
        succeeded(args, self.run(args).await?)
    }

    /// Runs `etcdctl ARGS --write-out=json`, which must succeed; its answer.
    async fn json(&self, args: &[&str]) -> Result<Value, BoxError> {
        let args: Vec<&str> = args.iter().copied().chain(["--write-out=json"]).collect();
        Ok(serde_json::from_str(&self.ok(&args).await?)?)
    }

    /// Runs `etcdctl ARGS`, which must fail; what it said on stderr.
    async fn refused(&self, args: &[&str]) -> Result<String, BoxError> {
        let output = self.run(args).await?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.success() {
            return Err(format!(
                "`etcdctl {}` succeeded; it printed {:?}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout)
            )
            .into());
        }
        Ok(stderr)
    }

    /// `etcdctl txn` reading its compares, success ops and failure ops from
    /// stdin; what it printed.
    async fn txn(&self, input: &str) -> Result<String, BoxError> {
        let mut child = self.command(&["txn"]).stdin(Stdio::piped()).spawn()?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        stdin.write_all(input.as_bytes()).await?;
        drop(stdin);
        let output = within("`etcdctl txn` to finish", child.wait_with_output()).await??;
        succeeded(&["txn"], output)
    }

    /// Starts `etcdctl ARGS`, which runs until stopped, reading its output.
    fn spawn(&self, args: &[&str]) -> Result<Running, BoxError> {
        let mut child = self.command(args).spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        Ok(Running {
            what: format!("etcdctl {}", args.join(" ")),
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        })
    }
}

/// The stdout of a command that must have succeeded.
fn succeeded(args: &[&str], output: Output) -> Result<String, BoxError> {
    if !output.status.success() {
        return Err(format!(
            "`etcdctl {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// An etcdctl that runs until stopped (a watch, a keep-alive); killed if dropped.
struct Running {
    what: String,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
}

impl Running {
    /// Its first `count` lines, waiting for those not printed yet.
    async fn lines(&mut self, count: usize) -> Result<&[String], BoxError> {
        while self.seen.len() < count {
            let what = format!(
                "line {} of `{}` (printed so far: {:?})",
                self.seen.len() + 1,
                self.what,
                self.seen
            );
            match within(&what, self.lines.next_line()).await?? {
                Some(line) => self.seen.push(line),
                None => {
                    let mut stderr = String::new();
                    if let Some(mut err) = self.child.stderr.take() {
                        within("its stderr", err.read_to_string(&mut stderr)).await??;
                    }
                    return Err(format!(
                        "`{}` ended after printing {:?}: {stderr}",
                        self.what, self.seen
                    )
                    .into());
                }
            }
        }
        Ok(&self.seen[..count])
    }

    /// Kills it and waits for it to go.
    async fn stop(mut self) -> TestResult {
        let what = format!("`{}` to stop", self.what);
        within(&what, self.child.kill()).await??;
        Ok(())
    }
}

/// `s` as the lines of etcdctl's simple output.
fn lines(s: &[&str]) -> String {
    s.iter().map(|line| format!("{line}\n")).collect()
}

/// A number of etcdctl's JSON (etcd's int64s print as numbers).
fn number(value: &Value) -> Result<u64, BoxError> {
    value
        .as_u64()
        .ok_or_else(|| format!("not a number: {value}").into())
}

/// A key or value of etcdctl's JSON (base64, as etcd's JSON gateway writes bytes).
fn text(value: &Value) -> Result<String, BoxError> {
    let encoded = value.as_str().unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded)?;
    Ok(String::from_utf8(bytes)?)
}

/// The revision in an answer's header.
fn revision(answer: &Value) -> Result<u64, BoxError> {
    number(&answer["header"]["revision"])
}

/// The keys of a `get --write-out=json` answer.
fn keys(answer: &Value) -> Result<Vec<String>, BoxError> {
    answer["kvs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|kv| text(&kv["key"]))
        .collect()
}

/// `put` prints OK, `get` prints each key and value on lines of their own, and its
/// flags read a prefix, an old revision, keys only, a page, an order and values
/// only, as etcd's do.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_print_keys_and_values(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((_server, etcdctl)) = start(engine, &[])? else {
        return Ok(());
    };
    let first = revision(&etcdctl.json(&["put", "app/a", "1"]).await?)?;
    assert_eq!(etcdctl.ok(&["put", "app/b", "2"]).await?, "OK\n");
    etcdctl.ok(&["put", "app/c", "3"]).await?;
    // --prev-kv shows the value the put replaced.
    assert_eq!(
        etcdctl.ok(&["put", "app/a", "1b", "--prev-kv"]).await?,
        lines(&["OK", "app/a", "1"])
    );
    etcdctl.ok(&["put", "other", "x"]).await?;

    assert_eq!(
        etcdctl.ok(&["get", "app/", "--prefix"]).await?,
        lines(&["app/a", "1b", "app/b", "2", "app/c", "3"])
    );
    assert_eq!(
        etcdctl
            .ok(&["get", "app/a", "--rev", &first.to_string()])
            .await?,
        lines(&["app/a", "1"])
    );
    assert_eq!(
        etcdctl
            .ok(&["get", "app/", "--prefix", "--keys-only"])
            .await?,
        lines(&["app/a", "", "app/b", "", "app/c", ""])
    );
    assert_eq!(
        etcdctl
            .ok(&["get", "app/", "--prefix", "--limit", "2"])
            .await?,
        lines(&["app/a", "1b", "app/b", "2"])
    );
    let page = etcdctl
        .json(&["get", "app/", "--prefix", "--limit", "2"])
        .await?;
    assert_eq!(
        (keys(&page)?, &page["more"], number(&page["count"])?),
        (
            vec!["app/a".to_string(), "app/b".into()],
            &Value::Bool(true),
            3
        )
    );
    // The newest change first: app/a was written last.
    assert_eq!(
        etcdctl
            .ok(&[
                "get",
                "app/",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=DESCEND"
            ])
            .await?,
        lines(&["app/a", "1b", "app/c", "3", "app/b", "2"])
    );
    assert_eq!(
        etcdctl.ok(&["get", "app/b", "--print-value-only"]).await?,
        "2\n"
    );
    assert_eq!(
        etcdctl
            .ok(&["get", "app/", "--prefix", "--print-value-only"])
            .await?,
        lines(&["1b", "2", "3"])
    );
    // A key that is not there prints nothing; a future revision etcd's error.
    assert_eq!(etcdctl.ok(&["get", "app/none"]).await?, "");
    let future = etcdctl.refused(&["get", "app/a", "--rev", "1000"]).await?;
    assert!(
        future.contains("Error: etcdserver: mvcc: required revision is a future revision"),
        "{future}"
    );
    Ok(())
}

/// `get --rev N --write-out=json` answers the key as it was at N, under a header
/// that carries the store's current revision, as etcd's does (clients take it as
/// "the store as of now").
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_at_an_old_revision_carries_the_current_revision_in_its_header(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((_server, etcdctl)) = start(engine, &[])? else {
        return Ok(());
    };
    let first = revision(&etcdctl.json(&["put", "app/a", "1"]).await?)?;
    let now = revision(&etcdctl.json(&["put", "app/a", "2"]).await?)?;
    let then = etcdctl
        .json(&["get", "app/a", "--rev", &first.to_string()])
        .await?;
    assert_eq!(text(&then["kvs"][0]["value"])?, "1");
    assert_eq!(revision(&then)?, now);
    Ok(())
}

/// `del` prints how many keys went, and with `--prev-kv` each key and value it
/// removed; `--prefix` removes every key under the prefix.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_prints_what_it_removed(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((_server, etcdctl)) = start(engine, &[])? else {
        return Ok(());
    };
    for (key, value) in [
        ("app/a", "1"),
        ("app/b", "2"),
        ("app/c", "3"),
        ("other", "x"),
    ] {
        etcdctl.ok(&["put", key, value]).await?;
    }
    assert_eq!(
        etcdctl.ok(&["del", "app/a", "--prev-kv"]).await?,
        lines(&["1", "app/a", "1"])
    );
    assert_eq!(etcdctl.ok(&["del", "app/a"]).await?, "0\n");
    assert_eq!(
        etcdctl
            .ok(&["del", "app/", "--prefix", "--prev-kv"])
            .await?,
        lines(&["2", "app/b", "2", "app/c", "3"])
    );
    assert_eq!(etcdctl.ok(&["get", "app/", "--prefix"]).await?, "");
    etcdctl.ok(&["put", "app/d", "4"]).await?;
    assert_eq!(etcdctl.ok(&["del", "app/", "--prefix"]).await?, "1\n");
    // Outside the prefix, untouched.
    assert_eq!(etcdctl.ok(&["get", "other"]).await?, lines(&["other", "x"]));
    Ok(())
}

/// `etcdctl txn` reads compares, then success ops, then failure ops, each block
/// ended by a blank line; it prints SUCCESS or FAILURE and each op's answer, and
/// the writes of a branch land at one revision.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_from_stdin_runs_one_branch(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((_server, etcdctl)) = start(engine, &[])? else {
        return Ok(());
    };
    etcdctl.ok(&["put", "acct/1", "100"]).await?;
    let transfer = "value(\"acct/1\") = \"100\"\n\n\
                    put acct/1 90\nput acct/2 10\n\n\
                    get acct/1\n\n";
    assert_eq!(
        etcdctl.txn(transfer).await?,
        lines(&["SUCCESS", "", "OK", "", "OK"])
    );
    let both = etcdctl.json(&["get", "acct/", "--prefix"]).await?;
    assert_eq!(
        number(&both["kvs"][0]["mod_revision"])?,
        number(&both["kvs"][1]["mod_revision"])?
    );
    // Again: the value is no longer 100, so the failure branch reads.
    assert_eq!(
        etcdctl.txn(transfer).await?,
        lines(&["FAILURE", "", "acct/1", "90"])
    );
    // Compares on mod revision, version and creation; no failure ops.
    assert_eq!(
        etcdctl
            .txn(
                "mod(\"acct/1\") > \"0\"\nversion(\"acct/2\") = \"1\"\n\
                 create(\"acct/3\") = \"0\"\n\n\
                 put acct/3 new\nget acct/ --prefix\n\n\n"
            )
            .await?,
        lines(&["SUCCESS", "", "OK", "", "acct/1", "90", "acct/2", "10", "acct/3", "new"])
    );
    assert_eq!(
        etcdctl
            .txn("value(\"acct/3\") != \"new\"\n\ndel acct/3\n\ndel acct/2\n\n")
            .await?,
        lines(&["FAILURE", "", "1"])
    );
    assert_eq!(etcdctl.ok(&["get", "acct/2"]).await?, "");
    Ok(())
}

/// `watch --prefix --rev N --prev-kv` prints every change under the prefix from
/// revision N, from whichever protocol it came, each with the value it replaced;
/// with `--write-out=json`, at the revisions the writers were answered.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_each_change_from_a_revision(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((server, etcdctl)) = start(engine, &[])? else {
        return Ok(());
    };
    let http = Client::new(&server.url)?;
    let first = revision(&etcdctl.json(&["put", "cfg/a", "1"]).await?)?;
    let from = first.to_string();
    let mut watch = etcdctl.spawn(&["watch", "cfg/", "--prefix", "--rev", &from, "--prev-kv"])?;
    let mut json = etcdctl.spawn(&["watch", "cfg/", "--prefix", "--rev", &from, "-w", "json"])?;

    // Written after `first`, so the watches print them however soon they start.
    let b = http.put("cfg/b", "2").await?.revision;
    http.put("other", "x").await?;
    let a = http.put("cfg/a", "3").await?.revision;
    let gone = http.delete("cfg/b").await?.revision;

    let expected = [
        "PUT", "cfg/a", "1", // created: no previous value
        "PUT", "cfg/b", "2", //
        "PUT", "cfg/a", "1", "cfg/a", "3", // the previous value, then the new
        "DELETE", "cfg/b", "2", "cfg/b", "", // a deletion has no value
    ];
    assert_eq!(watch.lines(expected.len()).await?, expected);
    watch.stop().await?;

    // One line per answer, which may carry more than one event.
    let mut seen = Vec::new();
    let mut answers = 0;
    while seen.len() < 4 {
        answers += 1;
        let answer: Value = serde_json::from_str(&json.lines(answers).await?[answers - 1])?;
        for event in answer["Events"].as_array().ok_or("no events")? {
            // etcd's JSON leaves out a PUT's type (0).
            let kind = if event["type"] == 1 { "DELETE" } else { "PUT" };
            let kv = &event["kv"];
            seen.push((kind, text(&kv["key"])?, number(&kv["mod_revision"])?));
        }
    }
    json.stop().await?;
    let key = |k: &str| k.to_string();
    assert_eq!(
        seen,
        vec![
            ("PUT", key("cfg/a"), first),
            ("PUT", key("cfg/b"), b),
            ("PUT", key("cfg/a"), a),
            ("DELETE", key("cfg/b"), gone),
        ]
    );
    Ok(())
}

/// A lease as etcdctl shows it: granted with its TTL, keys put on it, kept alive
/// by `lease keep-alive`, listed with its keys by `timetolive --keys`, and revoked
/// with its keys, after which it has expired.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_granted_kept_alive_and_revoked(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((server, etcdctl)) = start(engine, &[])? else {
        return Ok(());
    };
    let http = Client::new(&server.url)?;
    let granted = etcdctl.ok(&["lease", "grant", "60"]).await?;
    let id = granted
        .split_whitespace()
        .nth(1)
        .ok_or("no lease id")?
        .to_string();
    assert_eq!(granted, format!("lease {id} granted with TTL(60s)\n"));
    for key in ["svc/a", "svc/b"] {
        assert_eq!(
            etcdctl.ok(&["put", key, "up", "--lease", &id]).await?,
            "OK\n"
        );
    }
    // The HTTP API sees the same lease on the key (etcdctl prints ids in hex).
    assert_eq!(
        http.get_entry("svc/a").await?.lease,
        Some(u64::from_str_radix(&id, 16)?)
    );

    let mut keeper = etcdctl.spawn(&["lease", "keep-alive", &id])?;
    assert_eq!(
        keeper.lines(1).await?,
        [format!("lease {id} keepalived with TTL(60)")]
    );
    keeper.stop().await?;

    let ttl = etcdctl.ok(&["lease", "timetolive", &id, "--keys"]).await?;
    let (left, attached) = ttl
        .trim_end()
        .strip_prefix(&format!("lease {id} granted with TTL(60s), remaining("))
        .and_then(|rest| rest.split_once("s), attached keys(["))
        .ok_or_else(|| format!("unlike etcdctl's timetolive: {ttl:?}"))?;
    let left: u64 = left.parse()?;
    assert!((50..=60).contains(&left), "{ttl}");
    let mut attached: Vec<&str> = attached
        .strip_suffix("])")
        .ok_or_else(|| format!("unlike etcdctl's timetolive: {ttl:?}"))?
        .split(' ')
        .collect();
    attached.sort();
    assert_eq!(attached, ["svc/a", "svc/b"]);

    assert_eq!(
        etcdctl.ok(&["lease", "revoke", &id]).await?,
        format!("lease {id} revoked\n")
    );
    assert_eq!(etcdctl.ok(&["get", "svc/", "--prefix"]).await?, "");
    assert!(http.get_entry("svc/a").await.is_err());
    assert_eq!(
        etcdctl.ok(&["lease", "timetolive", &id]).await?,
        format!("lease {id} already expired\n")
    );
    let refused = etcdctl.refused(&["lease", "revoke", &id]).await?;
    assert!(
        refused.contains("Error: failed to revoke lease (etcdserver: requested lease not found)"),
        "{refused}"
    );
    let refused = etcdctl
        .refused(&["lease", "keep-alive", "--once", &id])
        .await?;
    assert!(
        refused.contains("Error: etcdserver: requested lease not found"),
        "{refused}"
    );
    Ok(())
}

/// A keep-alive of a lease that was revoked is refused at once, as etcd refuses
/// it (etcd answers in milliseconds).
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_of_a_revoked_lease_is_refused_at_once(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((_server, etcdctl)) = start(engine, &[])? else {
        return Ok(());
    };
    let granted = etcdctl.ok(&["lease", "grant", "60"]).await?;
    let id = granted.split_whitespace().nth(1).ok_or("no lease id")?;
    etcdctl.ok(&["lease", "revoke", id]).await?;
    let asked = std::time::Instant::now();
    let refused = etcdctl
        .refused(&["lease", "keep-alive", "--once", id])
        .await?;
    let took = asked.elapsed();
    assert!(
        refused.contains("Error: etcdserver: requested lease not found"),
        "{refused}"
    );
    assert!(took < Duration::from_secs(2), "refused after {took:?}");
    Ok(())
}

/// `endpoint status --write-out=json` shows an etcd 3 version and the store's
/// revision in its header, for an endpoint given as `HOST:PORT` (as the docs
/// set `ETCDCTL_ENDPOINTS`).
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_status_shows_the_version_and_revision(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((server, etcdctl)) = start(engine, &[])? else {
        return Ok(());
    };
    let written = revision(&etcdctl.json(&["put", "k", "v"]).await?)?;
    let host_port = server.etcd_url.as_deref().unwrap_or_default();
    let host_port = host_port.trim_start_matches("http://");
    let statuses = etcdctl.at(host_port).json(&["endpoint", "status"]).await?;
    let status = &statuses[0];
    assert_eq!(status["Endpoint"], host_port);
    let version = status["Status"]["version"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "{statuses}");
    assert!(revision(&status["Status"])? >= written, "{statuses}");
    Ok(())
}

/// `endpoint status` with the endpoint as a URL (`http://HOST:PORT`, the form
/// the server prints), as etcd answers it.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_status_answers_an_endpoint_given_as_a_url(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((server, etcdctl)) = start(engine, &[])? else {
        return Ok(());
    };
    let written = revision(&etcdctl.json(&["put", "k", "v"]).await?)?;
    let statuses = etcdctl.json(&["endpoint", "status"]).await?;
    let status = &statuses[0];
    assert_eq!(
        status["Endpoint"],
        server.etcd_url.as_deref().unwrap_or_default()
    );
    let version = status["Status"]["version"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "{statuses}");
    assert!(revision(&status["Status"])? >= written, "{statuses}");
    Ok(())
}

/// `endpoint health` says the endpoint is healthy, and `member list` shows one
/// started member whose client URL is the etcd API's.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_health_and_member_list_show_one_healthy_member(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((server, etcdctl)) = start(engine, &[])? else {
        return Ok(());
    };
    let url = server.etcd_url.as_deref().unwrap_or_default();
    // etcdctl 3.4 prints the simple form on stderr.
    let health = etcdctl.run(&["endpoint", "health"]).await?;
    let said = String::from_utf8_lossy(&health.stderr);
    assert!(
        health.status.success()
            && said.starts_with(&format!(
                "{url} is healthy: successfully committed proposal: took = "
            )),
        "{health:?}"
    );
    let health = etcdctl.json(&["endpoint", "health"]).await?;
    assert_eq!(
        (&health[0]["endpoint"], &health[0]["health"]),
        (&Value::from(url), &Value::Bool(true))
    );

    let members = etcdctl.ok(&["member", "list"]).await?;
    let fields: Vec<&str> = members.trim_end().split(", ").collect();
    assert_eq!(
        (fields.len(), fields.get(1), fields.get(4), fields.get(5)),
        (6, Some(&"started"), Some(&url), Some(&"false")),
        "{members}"
    );
    let members = etcdctl.json(&["member", "list"]).await?;
    let list = members["members"].as_array().ok_or("no members")?;
    assert_eq!(list.len(), 1, "{members}");
    assert_eq!(list[0]["clientURLs"], Value::from(vec![url]));
    Ok(())
}

/// An access file whose token `deploy` may read and write `app/` only.
fn access_file(dir: &std::path::Path) -> Result<String, BoxError> {
    let file = dir.join("access.toml");
    std::fs::write(
        &file,
        "[roles.app]\nread = [\"app/\"]\nwrite = [\"app/\"]\n\
         [[tokens]]\nname = \"deploy\"\nrole = \"app\"\ntoken = \"s3cret\"\n",
    )?;
    Ok(file.to_string_lossy().into_owned())
}

/// `--user NAME:TOKEN` signs in with a token of the access file: inside its role's
/// prefix etcdctl works, outside it prints etcd's "permission denied"; a wrong
/// password or no user is refused as etcd refuses them.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_kept_to_their_roles_prefix(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let dir = tempfile::tempdir()?;
    let access = access_file(dir.path())?;
    let Some((_server, etcdctl)) = start(engine, &["--access-file", &access])? else {
        return Ok(());
    };
    let deploy = etcdctl.as_user("deploy:s3cret");
    assert_eq!(deploy.ok(&["put", "app/x", "1"]).await?, "OK\n");
    assert_eq!(
        deploy.ok(&["get", "app/", "--prefix"]).await?,
        lines(&["app/x", "1"])
    );
    for args in [
        &["put", "other", "1"][..],
        &["get", "other"],
        &["get", "", "--prefix"],
        &["del", "other"],
    ] {
        let denied = deploy.refused(args).await?;
        assert!(
            denied.contains("Error: etcdserver: permission denied"),
            "etcdctl {args:?}: {denied}"
        );
    }
    // A watch outside the prefix is cancelled, and etcdctl exits saying so.
    let watch = deploy.run(&["watch", "other"]).await?;
    let said = String::from_utf8_lossy(&watch.stderr);
    assert!(
        !watch.status.success()
            && said.starts_with("watch was canceled (")
            && said.contains("permission denied"),
        "{watch:?}"
    );

    let wrong = etcdctl
        .as_user("deploy:nope")
        .refused(&["get", "app/x"])
        .await?;
    assert!(
        wrong.contains("Error: etcdserver: authentication failed, invalid user ID or password"),
        "{wrong}"
    );
    let anonymous = etcdctl.refused(&["get", "app/x"]).await?;
    assert!(
        anonymous.contains("Error: etcdserver: user name is empty"),
        "{anonymous}"
    );
    Ok(())
}

/// A watch the user may not make is cancelled with etcd's reason, a gRPC status,
/// which etcdctl prints as etcd's does.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_watch_is_cancelled_with_etcds_reason(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let dir = tempfile::tempdir()?;
    let access = access_file(dir.path())?;
    let Some((_server, etcdctl)) = start(engine, &["--access-file", &access])? else {
        return Ok(());
    };
    let watch = etcdctl
        .as_user("deploy:s3cret")
        .run(&["watch", "other"])
        .await?;
    let said = String::from_utf8_lossy(&watch.stderr);
    assert!(
        said.starts_with(
            "watch was canceled (rpc error: code = PermissionDenied desc = etcdserver: \
             permission denied)\n"
        ),
        "{watch:?}"
    );
    Ok(())
}

/// A put through etcdctl is read through HTTP at the revision etcdctl printed, and
/// a put through HTTP is read by etcdctl at the revision HTTP answered.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_and_http_see_each_others_writes_at_the_same_revisions(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((server, etcdctl)) = start(engine, &[])? else {
        return Ok(());
    };
    let http = Client::new(&server.url)?;
    let written = revision(&etcdctl.json(&["put", "app/a", "1"]).await?)?;
    let entry = http.get_entry("app/a").await?;
    assert_eq!(
        (entry.value.as_slice(), entry.mod_revision, entry.version),
        (&b"1"[..], written, 1)
    );

    let put = http.put("app/b", "2").await?;
    let got = etcdctl.json(&["get", "app/b"]).await?;
    let kv = &got["kvs"][0];
    assert_eq!(
        (
            text(&kv["key"])?,
            text(&kv["value"])?,
            number(&kv["mod_revision"])?,
            number(&kv["create_revision"])?,
            number(&kv["version"])?,
        ),
        (
            "app/b".into(),
            "2".into(),
            put.revision,
            put.create_revision,
            1
        )
    );
    assert!(revision(&got)? >= put.revision);

    // A delete through etcdctl is gone for HTTP, and one through HTTP for etcdctl.
    assert_eq!(etcdctl.ok(&["del", "app/a"]).await?, "1\n");
    assert!(http.get_entry("app/a").await.is_err());
    http.delete("app/b").await?;
    assert_eq!(etcdctl.ok(&["get", "app/", "--prefix"]).await?, "");
    Ok(())
}

/// Sends SIGINT to a running etcdctl, as Ctrl-C would: `lock` and `elect` then
/// give up what they hold (they revoke their session's lease) and exit.
async fn interrupt(running: &Running) -> TestResult {
    let pid = running.child.id().ok_or("it has exited")?;
    let status = within(
        "kill -INT",
        Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status(),
    )
    .await??;
    if !status.success() {
        return Err(format!("kill -INT {pid}: {status}").into());
    }
    Ok(())
}

/// Waits (watching, through HTTP) until `count` keys lie under `prefix`.
async fn until_keys(http: &Client, prefix: &str, count: usize) -> TestResult {
    use futures_util::StreamExt;
    let mut watch = Box::pin(http.watch_with(kvstore_client::WatchOptions {
        prefix: prefix.into(),
        initial: true,
        ..Default::default()
    }));
    let mut keys = std::collections::BTreeSet::new();
    loop {
        let what = format!("{count} keys under {prefix:?} (seen {keys:?})");
        match within(&what, watch.next()).await? {
            Some(Ok(kvstore_client::Update::Entry(entry))) => {
                keys.insert(entry.key);
            }
            Some(Ok(kvstore_client::Update::Event(event))) => {
                match event.kind {
                    kvstore_client::EventKind::Put => keys.insert(event.key),
                    kvstore_client::EventKind::Delete => keys.remove(&event.key),
                };
            }
            Some(Ok(_)) => {}
            other => return Err(format!("the watch ended: {other:?}").into()),
        }
        if keys.len() >= count {
            return Ok(());
        }
    }
}

/// `etcdctl lock`: one holder at a time; the next gets it when the first lets go.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_held_by_one_process_at_a_time(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((server, etcdctl)) = start(engine, &[])? else {
        return Ok(());
    };
    let http = Client::new(&server.url)?;
    let mut first = etcdctl.spawn(&["lock", "jobs"])?;
    let held = first.lines(1).await?[0].clone();
    assert!(held.starts_with("jobs/"), "{held}");
    let mut second = etcdctl.spawn(&["lock", "jobs"])?;
    // The second waits in line: its key is there, its lock not printed.
    until_keys(&http, "jobs/", 2).await?;
    assert!(second.seen.is_empty());
    interrupt(&first).await?;
    let next = second.lines(1).await?[0].clone();
    assert!(
        next.starts_with("jobs/") && next != held,
        "{next} after {held}"
    );
    interrupt(&second).await?;
    Ok(())
}

/// `etcdctl elect`: one leader at a time, and `elect -l` prints each one.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_has_one_leader_and_listeners_follow_it(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((server, etcdctl)) = start(engine, &[])? else {
        return Ok(());
    };
    let http = Client::new(&server.url)?;
    // The first campaign's key is the store's very first write: clientv3's
    // election waits for the keys created at or before its own revision less one,
    // and takes a bound of 0 for none, so it is elected at once only because that
    // write is revision 2 (a new store is at 1) on both engines.
    let mut first = etcdctl.spawn(&["elect", "primary", "a"])?;
    let won = first.lines(2).await?.to_vec();
    assert!(won[0].starts_with("primary/") && won[1] == "a", "{won:?}");
    let mut listener = etcdctl.spawn(&["elect", "-l", "primary"])?;
    assert_eq!(listener.lines(2).await?, won.as_slice());
    let mut second = etcdctl.spawn(&["elect", "primary", "b"])?;
    until_keys(&http, "primary/", 2).await?;
    assert!(second.seen.is_empty());
    interrupt(&first).await?;
    let next = second.lines(2).await?.to_vec();
    assert!(
        next[0].starts_with("primary/") && next[1] == "b",
        "{next:?}"
    );
    assert_eq!(&listener.lines(4).await?[2..], next.as_slice());
    interrupt(&second).await?;
    listener.stop().await?;
    Ok(())
}

/// `etcdctl compaction` and `etcdctl lease list`.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_lease_list(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some((_server, etcdctl)) = start(engine, &[])? else {
        return Ok(());
    };
    let first = revision(&etcdctl.json(&["put", "k", "1"]).await?)?;
    etcdctl.ok(&["put", "k", "2"]).await?;
    let last = revision(&etcdctl.json(&["put", "k", "3"]).await?)?;
    assert_eq!(
        etcdctl.ok(&["compaction", &last.to_string()]).await?,
        format!("compacted revision {last}\n")
    );
    let refused = etcdctl
        .refused(&["get", "k", "--rev", &first.to_string()])
        .await?;
    assert!(
        refused.contains("required revision has been compacted"),
        "{refused}"
    );
    assert_eq!(
        etcdctl.ok(&["get", "k", "--print-value-only"]).await?,
        "3\n"
    );

    let granted = etcdctl.ok(&["lease", "grant", "60"]).await?;
    let id = granted.split_whitespace().nth(1).ok_or("no lease id")?;
    let listed = etcdctl.ok(&["lease", "list"]).await?;
    assert!(
        listed.starts_with("found ") && listed.lines().any(|l| l == id),
        "{listed}"
    );
    Ok(())
}
