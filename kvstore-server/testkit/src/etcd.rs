//! etcd clusters on loopback for the tests of the etcd engine, started and stopped
//! by the tests themselves: each member on free ports with a temp data dir; and
//! `etcdctl`, for the tests that drive the etcd API as its users do.
//!
//! The `etcd` binary, always as an absolute path, is `KVSTORE_ETCD_BIN` (a path or
//! a name on the PATH), or `etcd` on the PATH, or Debian's
//! `etcd-server` package unpacked under the target dir (`apt-get download` and
//! `dpkg -x`: no root, no service started; as root, `apt-get update` first when the
//! package lists are empty). Without any, the tests that need etcd say they skipped,
//! or fail under `KVSTORE_REQUIRE_ETCD=1`. `etcdctl` is found the same way
//! (`KVSTORE_ETCDCTL_BIN`, the PATH, Debian's `etcd-client`), and its tests skip or
//! fail under `KVSTORE_REQUIRE_ETCDCTL=1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::link::Link;

/// A program of one of Debian's etcd packages (bookworm's: etcd 3.4, the release
/// the project tests against).
struct Tool {
    /// The variable that names another binary.
    var: &'static str,
    /// The Debian package that ships it.
    package: &'static str,
    /// The binary's name, on the PATH and in the package's `usr/bin/`.
    binary: &'static str,
    /// Arguments with which a working binary prints its version and exits 0.
    version: &'static [&'static str],
}

const ETCD: Tool = Tool {
    var: "KVSTORE_ETCD_BIN",
    package: "etcd-server",
    binary: "etcd",
    version: &["--version"],
};

const ETCDCTL: Tool = Tool {
    var: "KVSTORE_ETCDCTL_BIN",
    package: "etcd-client",
    binary: "etcdctl",
    version: &["version"],
};

/// The `etcd` binary, found or unpacked once per test process; why not, if none.
pub fn etcd_bin() -> Result<PathBuf, String> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND.get_or_init(|| ETCD.find_or_unpack()).clone()
}

/// The `etcdctl` binary, found or unpacked once per test process; why not, if none.
pub fn etcdctl_bin() -> Result<PathBuf, String> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND.get_or_init(|| ETCDCTL.find_or_unpack()).clone()
}

/// `etcdctl`, or `None` having said that the test skipped (a failure under
/// `KVSTORE_REQUIRE_ETCDCTL=1`): the start of every test driven by etcdctl.
#[track_caller]
pub fn etcdctl() -> Option<PathBuf> {
    match etcdctl_bin() {
        Ok(bin) => Some(bin),
        Err(why) => {
            super::skip("KVSTORE_REQUIRE_ETCDCTL", "a test driven by etcdctl", &why);
            None
        }
    }
}

impl Tool {
    fn works(&self, bin: &Path) -> bool {
        Command::new(bin)
            .args(self.version)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A working binary on the PATH `path` (or in Debian's place for it), as an
    /// absolute path.
    fn on_path(&self, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
        [
            super::resolve_program(self.binary.as_ref(), path),
            Some(Path::new("/usr/bin").join(self.binary)),
        ]
        .into_iter()
        .flatten()
        .find(|bin| self.works(bin))
    }

    fn find_or_unpack(&self) -> Result<PathBuf, String> {
        if let Some(given) = std::env::var_os(self.var) {
            return match super::program(&given) {
                Some(bin) if self.works(&bin) => Ok(bin),
                _ => Err(format!(
                    "{}={} does not run",
                    self.var,
                    given.to_string_lossy()
                )),
            };
        }
        if let Some(bin) = self.on_path(std::env::var_os("PATH").as_deref()) {
            return Ok(bin);
        }
        self.unpack()
    }

    /// The binary of Debian's package, downloaded and unpacked (once) under the
    /// target dir's `tools/PACKAGE/`.
    fn unpack(&self) -> Result<PathBuf, String> {
        let package = self.package;
        let dir = super::target_dir().join("tools").join(package);
        let bin = dir.join("usr/bin").join(self.binary);
        if self.works(&bin) {
            return Ok(bin);
        }
        let download = dir.join("download");
        std::fs::create_dir_all(&download).map_err(|e| e.to_string())?;
        let fetch = || {
            Command::new("apt-get")
                .args(["download", package])
                .current_dir(&download)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        let fetched = fetch()
            || (root
                && Command::new("apt-get")
                    .arg("update")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
                && fetch());
        if !fetched {
            return Err(format!(
                "no {} binary: not on the PATH, and `apt-get download {package}` failed",
                self.binary
            ));
        }
        let deb = std::fs::read_dir(&download)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or("apt-get download left no .deb")?;
        let unpacked = Command::new("dpkg")
            .arg("-x")
            .arg(&deb)
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if unpacked && self.works(&bin) {
            Ok(bin)
        } else {
            Err(format!(
                "unpacking {} did not give a working {}",
                deb.display(),
                self.binary
            ))
        }
    }
}

/// A working `etcd` on the PATH `path` (or Debian's place for it), as an absolute
/// path: the scripts it is handed to take it for a file.
pub fn on_path(path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    ETCD.on_path(path)
}

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

struct Member {
    name: String,
    client: String,
    /// Where it listens to its peers.
    peer: String,
    /// Where its peers reach it: a [`Link`] in front of `peer`, in a cluster of
    /// more than one, so that a test can cut the member off from its peers.
    peer_link: Option<Link>,
    data: PathBuf,
    child: Option<Child>,
}

impl Member {
    /// The peer URL the others are given.
    fn advertised_peer(&self) -> &str {
        self.peer_link.as_ref().map_or(&self.peer, |link| &link.url)
    }
}

/// Why a cluster did not start: a member exited (its ports were taken).
struct Exited(String);

/// A cluster of etcd members on loopback; every member is killed when dropped.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// `size` members, all answering, or why there is no etcd here.
    pub fn start(size: usize) -> Result<EtcdCluster, String> {
        let bin = etcd_bin()?;
        // A free port found is released before etcd binds it, so another test (or
        // anything else) may take it first: then the member exits at once, and the
        // cluster starts again on other ports.
        let mut attempts = 0;
        loop {
            match Self::try_start(size, &bin) {
                Err(Exited(why)) if attempts < 4 => {
                    attempts += 1;
                    eprintln!("{why}; starting the cluster again on other ports");
                }
                Err(Exited(why)) => return Err(why),
                Ok(cluster) => return cluster,
            }
        }
    }

    /// A cluster on fresh ports; `Err` when a member exits while starting.
    fn try_start(size: usize, bin: &Path) -> Result<Result<EtcdCluster, String>, Exited> {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let mut members = Vec::new();
        for i in 0..size {
            let peer = format!("http://127.0.0.1:{}", free_port());
            let peer_link = if size > 1 {
                match Link::new(&peer) {
                    Ok(link) => Some(link),
                    Err(e) => return Ok(Err(format!("no link for a peer: {e}"))),
                }
            } else {
                None
            };
            members.push(Member {
                name: format!("m{i}"),
                client: format!("http://127.0.0.1:{}", free_port()),
                peer,
                peer_link,
                data: dir.path().join(format!("m{i}")),
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.advertised_peer()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            token: format!("kvstore-test-{}-{}", std::process::id(), free_port()),
            _dir: dir,
        };
        for i in 0..size {
            if let Err(why) = cluster.spawn(i, bin) {
                return Ok(Err(why));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for member in &mut cluster.members {
            while !healthy(&member.client) {
                if let Some(Ok(Some(status))) = member.child.as_mut().map(Child::try_wait) {
                    return Err(Exited(format!(
                        "etcd member {} on {} exited ({status})",
                        member.name, member.client
                    )));
                }
                if Instant::now() > deadline {
                    return Ok(Err(format!(
                        "etcd member {} never became healthy",
                        member.name
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(Ok(cluster))
    }

    fn spawn(&mut self, i: usize, bin: &Path) -> Result<(), String> {
        // Quick elections, so fault tests take seconds (the lease minimum is then
        // 0.75 s). A member of its own has no peer to lose: it elects itself after
        // one timeout, so a shorter one starts each suite test's cluster in about
        // 0.2 s instead of 0.4 s.
        let (heartbeat, election) = if self.members.len() == 1 {
            ("20", "100")
        } else {
            ("50", "500")
        };
        let member = &mut self.members[i];
        let child = Command::new(bin)
            .args(["--name", &member.name, "--data-dir"])
            .arg(&member.data)
            .args(["--listen-client-urls", &member.client])
            .args(["--advertise-client-urls", &member.client])
            .args(["--listen-peer-urls", &member.peer])
            .args(["--initial-advertise-peer-urls", member.advertised_peer()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args([
                "--heartbeat-interval",
                heartbeat,
                "--election-timeout",
                election,
            ])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start etcd: {e}"))?;
        member.child = Some(child);
        Ok(())
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// `--etcd-endpoints` for every member.
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// Waits until every running member says it is healthy (has a leader).
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            while !healthy(&member.client) {
                if Instant::now() > deadline {
                    return Err(format!("etcd member {} never became healthy", member.name));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The index of the member that leads, as the members report it.
    pub fn leader(&self) -> Option<usize> {
        let ids: Vec<Option<(u64, u64)>> = self
            .members
            .iter()
            .map(|m| m.child.as_ref().and(status(&m.client)))
            .collect();
        let leader = ids.iter().flatten().map(|(_, leader)| *leader).next()?;
        ids.iter()
            .position(|s| s.is_some_and(|(id, _)| id == leader))
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Cuts member `i` off from its peers (both ways, as far as its own link
    /// carries: what it sends them, and what they send it over connections they
    /// opened), until [`EtcdCluster::heal`]. `false` for a member of its own.
    pub fn partition(&self, i: usize) -> bool {
        self.members[i]
            .peer_link
            .as_ref()
            .map(Link::blackhole)
            .is_some()
    }

    /// Ends [`EtcdCluster::partition`] of member `i`.
    pub fn heal(&self, i: usize) {
        if let Some(link) = &self.members[i].peer_link {
            link.heal();
        }
    }

    /// Starts member `i` again on its data dir (after [`EtcdCluster::kill`]).
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        let bin = etcd_bin()?;
        self.spawn(i, &bin)
    }

    /// Compacts the cluster's history up to `revision` (through the JSON gateway).
    pub fn compact(&self, revision: u64) -> Result<(), String> {
        let member = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .ok_or("no member runs")?;
        let body = format!("{{\"revision\": {revision}, \"physical\": true}}");
        post(&member.client, "/v3/kv/compaction", &body).map(|_| ())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// `POST path` with a JSON body to a member's gateway, over a plain socket.
fn post(base: &str, path: &str, body: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        tcp,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let (head, rest) = answer.split_once("\r\n\r\n").ok_or("no answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{path}: {head}"));
    }
    Ok(rest.to_string())
}

fn healthy(base: &str) -> bool {
    post(base, "/v3/maintenance/status", "{}").is_ok() && {
        // A member answers its status before it has a leader; the range needs one.
        post(base, "/v3/kv/range", "{\"key\": \"aGVhbHRo\"}").is_ok()
    }
}

/// A member's id and the id of the leader it knows, from its status.
fn status(base: &str) -> Option<(u64, u64)> {
    let text = post(base, "/v3/maintenance/status", "{}").ok()?;
    let json: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    let number = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse().ok());
    Some((
        number(&json["header"]["member_id"])?,
        number(&json["leader"])?,
    ))
}
