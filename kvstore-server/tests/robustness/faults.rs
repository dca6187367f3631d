//! The system under test and the faults struck at it: kvstore servers behind held
//! addresses (so a restarted one keeps its clients' URL), on sled or on a 3-member
//! etcd cluster with two kvstore replicas, each replica reaching the members
//! through links of its own (so that it can be cut off from them), the members
//! reaching one another through links too.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::Rng;
use tokio::runtime::Handle;

use crate::support::link::Link;
use crate::support::{Backend, Engine, HeldAddress, TestServer};
use crate::watchers::{self, Change, Pace, Start};

/// The faults a run picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a kvstore server, then start it again on the same data.
    KillServer,
    /// SIGTERM a kvstore server (a graceful stop), then start it again.
    StopServer,
    /// Restart a sled server with a failpoint that crashes its writer at the next
    /// few groups (`kvstore-core`'s `failpoints`): before or after a flush, or
    /// between the change log and the kv tree; then start it again, plainly.
    CrashBeforeFlush,
    CrashAfterFlush,
    CrashBetweenLogAndKv,
    /// Restart a sled server whose flush fails twice a little later.
    FlushError,
    /// SIGKILL the etcd leader, then restart it.
    KillLeader,
    /// SIGKILL an etcd follower, then restart it.
    KillFollower,
    /// Cut an etcd member (the leader half the time) off from its peers for a
    /// second or two.
    PartitionMember,
    /// Cut a kvstore replica off from every etcd member for a second or two.
    PartitionReplica,
    /// Drop what etcd answers a kvstore replica for a second or two (its
    /// requests still arrive and take effect), then close those connections.
    OneWayReplica,
    /// Slow a kvstore replica's links to etcd by 20–200 ms for two seconds.
    DelayReplica,
    /// Compact the store's history at (or a little before) its revision, through
    /// etcd's API on a server, while the watchers go on and resume.
    Compact,
}

impl Fault {
    /// The faults a run on `engine` picks from: `KVSTORE_ROBUSTNESS_FAULT_MIX`
    /// (names, comma-separated) or every one the engine has.
    pub fn mix(engine: Engine) -> Vec<Fault> {
        let all = Self::all(engine);
        let wanted = std::env::var("KVSTORE_ROBUSTNESS_FAULT_MIX").unwrap_or_default();
        let picked: Vec<Fault> = all
            .iter()
            .copied()
            .filter(|f| wanted.split(',').any(|w| w.trim() == format!("{f:?}")))
            .collect();
        if picked.is_empty() {
            all.to_vec()
        } else {
            picked
        }
    }

    fn all(engine: Engine) -> &'static [Fault] {
        match engine {
            Engine::Sled => &[
                Fault::KillServer,
                Fault::StopServer,
                Fault::CrashBeforeFlush,
                Fault::CrashAfterFlush,
                Fault::CrashBetweenLogAndKv,
                Fault::FlushError,
                Fault::Compact,
            ],
            Engine::Etcd => &[
                Fault::KillLeader,
                Fault::KillFollower,
                Fault::KillServer,
                Fault::StopServer,
                Fault::PartitionMember,
                Fault::PartitionReplica,
                Fault::OneWayReplica,
                Fault::DelayReplica,
                Fault::Compact,
            ],
        }
    }
}

/// The history before a compaction, read just before it.
pub struct Compaction {
    /// The revision compacted at (relative to the store's first): history from
    /// it on is kept.
    pub revision: u64,
    /// Every change before it since the previous compaction.
    pub changes: Vec<Change>,
}

/// The store and the servers in front of it.
pub struct System {
    pub backend: Backend,
    pub addresses: Vec<HeldAddress>,
    servers: Vec<Option<TestServer>>,
    /// Each replica's links to the etcd members (none on sled).
    links: Vec<Vec<Link>>,
    args: Vec<String>,
    /// The compactions made, in order.
    pub compactions: Vec<Compaction>,
    /// The store's revision before any write.
    base: u64,
    runtime: Handle,
}

impl System {
    /// One server on sled; two replicas on a 3-member etcd cluster. `None` when
    /// the engine cannot run here (the skip is said).
    pub fn start(engine: Engine, args: &[&str]) -> Option<System> {
        let (members, replicas) = match engine {
            Engine::Sled => (1, 1),
            Engine::Etcd => (3, 2),
        };
        let mut backend = Backend::with_members(engine, members)?;
        // Every revision of a run stays readable: the reference watcher reads them
        // all from the first after the faults.
        let args: Vec<String> = ["--retain-revisions", "1000000000"]
            .iter()
            .chain(args)
            .map(|a| a.to_string())
            .collect();
        let endpoints = backend
            .cluster()
            .map(|cluster| cluster.endpoints())
            .unwrap_or_default();
        let links = (0..replicas)
            .map(|_| {
                endpoints
                    .iter()
                    .map(|e| Link::new(e).expect("a link"))
                    .collect()
            })
            .collect();
        let mut system = System {
            base: crate::support::EMPTY_REVISION,
            backend,
            addresses: Vec::new(),
            servers: Vec::new(),
            links,
            args,
            compactions: Vec::new(),
            runtime: Handle::current(),
        };
        for i in 0..replicas {
            let address = HeldAddress::new().expect("a held address");
            system.addresses.push(address);
            let server = system.start_behind(i);
            system.servers.push(Some(server));
        }
        Some(system)
    }

    fn start_behind(&self, i: usize) -> TestServer {
        self.start_behind_with(i, &[])
    }

    /// Server `i`, behind its held address, reaching etcd through its own links.
    fn start_behind_with(&self, i: usize, env: &[(&str, &str)]) -> TestServer {
        let endpoints: Vec<&str> = self.links[i].iter().map(|l| l.url.as_str()).collect();
        let endpoints = endpoints.join(",");
        let mut args: Vec<&str> = Vec::new();
        if !endpoints.is_empty() {
            args.extend(["--etcd-endpoints", &endpoints]);
        }
        args.extend(self.args.iter().map(String::as_str));
        self.addresses[i]
            .start_process(self.backend.dir(), &args, env)
            .unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// Where the history kept starts (relative to the store's first revision).
    pub fn kept_from(&self) -> u64 {
        self.compactions.last().map_or(1, |c| c.revision)
    }

    pub fn urls(&self) -> Vec<String> {
        self.addresses.iter().map(|a| a.url.clone()).collect()
    }

    /// Strikes `fault` and recovers from it; what was done, for the report.
    pub fn strike(&mut self, fault: Fault, rng: &mut SmallRng) -> String {
        let pause = Duration::from_millis(rng.random_range(100..800));
        match fault {
            Fault::KillServer | Fault::StopServer => {
                let i = rng.random_range(0..self.servers.len());
                let Some(mut server) = self.servers[i].take() else {
                    return "no server to stop".into();
                };
                if fault == Fault::KillServer {
                    self.addresses[i].kill(&mut server);
                } else {
                    server.terminate(Duration::from_secs(10));
                }
                drop(server);
                std::thread::sleep(pause);
                self.servers[i] = Some(self.start_behind(i));
                format!("{fault:?} of server {i}, back after {pause:?}")
            }
            Fault::CrashBeforeFlush | Fault::CrashAfterFlush | Fault::CrashBetweenLogAndKv => {
                let point = match fault {
                    Fault::CrashBeforeFlush => "sled::before-flush",
                    Fault::CrashAfterFlush => "sled::after-flush",
                    _ => "sled::between-log-and-kv",
                };
                let i = rng.random_range(0..self.servers.len());
                if let Some(mut server) = self.servers[i].take() {
                    self.addresses[i].kill(&mut server);
                }
                // Crashes at one of the next groups, with traffic under way.
                let armed = format!("{point}=10%return");
                let mut server = self.start_behind_with(i, &[("FAILPOINTS", &armed)]);
                let crashed = server.wait_exit(Duration::from_secs(10));
                self.addresses[i].detach();
                drop(server);
                self.servers[i] = Some(self.start_behind(i));
                match crashed {
                    Some(status) => format!("{fault:?} of server {i} ({status})"),
                    None => format!("{fault:?} of server {i}: no crash within 10 s, killed"),
                }
            }
            Fault::FlushError => {
                let i = rng.random_range(0..self.servers.len());
                if let Some(mut server) = self.servers[i].take() {
                    self.addresses[i].kill(&mut server);
                }
                let armed = "sled::flush-error=20*off->2*return->off";
                self.servers[i] = Some(self.start_behind_with(i, &[("FAILPOINTS", armed)]));
                format!("{fault:?} of server {i} (after a restart: 20 flushes, then 2 fail)")
            }
            Fault::KillLeader | Fault::KillFollower => {
                let Some(cluster) = self.backend.cluster() else {
                    return "no cluster".into();
                };
                let Some(leader) = cluster.leader() else {
                    return "no leader to tell the members apart".into();
                };
                let member = if fault == Fault::KillLeader {
                    leader
                } else {
                    (leader + 1 + rng.random_range(0..2)) % 3
                };
                cluster.kill(member);
                std::thread::sleep(pause + Duration::from_secs(1));
                let restarted = cluster.restart(member);
                format!(
                    "{fault:?}: member {member} killed, restarted after {:?}: {restarted:?}",
                    pause + Duration::from_secs(1)
                )
            }
            Fault::PartitionMember => {
                let Some(cluster) = self.backend.cluster() else {
                    return "no cluster".into();
                };
                let before = cluster.leader();
                let member = match before {
                    Some(leader) if rng.random_bool(0.5) => leader,
                    _ => rng.random_range(0..3),
                };
                let held = pause + Duration::from_secs(1);
                cluster.partition(member);
                std::thread::sleep(held);
                let during = cluster.leader();
                cluster.heal(member);
                format!(
                    "{fault:?}: member {member} cut off from its peers for {held:?} (leader \
                     {before:?}, then {during:?})"
                )
            }
            Fault::PartitionReplica | Fault::OneWayReplica | Fault::DelayReplica => {
                if self.links.iter().all(Vec::is_empty) {
                    return "no replica links".into();
                }
                let i = rng.random_range(0..self.links.len());
                let (held, what) = if fault == Fault::PartitionReplica {
                    self.links[i].iter().for_each(Link::blackhole);
                    (
                        pause + Duration::from_secs(1),
                        "cut off from etcd".to_string(),
                    )
                } else if fault == Fault::OneWayReplica {
                    self.links[i].iter().for_each(Link::drop_answers);
                    (
                        pause + Duration::from_secs(1),
                        "deaf to etcd's answers".to_string(),
                    )
                } else {
                    let by = Duration::from_millis(rng.random_range(20..200));
                    self.links[i].iter().for_each(|l| l.delay(by));
                    (
                        Duration::from_secs(2),
                        format!("its links to etcd slowed by {by:?}"),
                    )
                };
                std::thread::sleep(held);
                self.links[i].iter().for_each(Link::heal);
                format!("{fault:?}: replica {i} {what} for {held:?}")
            }
            Fault::Compact => {
                let i = rng.random_range(0..self.servers.len());
                let back = rng.random_range(0..20);
                let runtime = self.runtime.clone();
                match runtime.block_on(self.compact(i, back)) {
                    Ok(what) => format!("{fault:?} through server {i}: {what}"),
                    Err(e) => format!("{fault:?} through server {i} not made: {e}"),
                }
            }
        }
    }

    /// Compacts the history through server `i`'s etcd API at `back` revisions
    /// before the store's, having read every change before that revision since
    /// the last compaction (the run's reference for them, read once they are
    /// durable, as the rest is read after the faults).
    async fn compact(&mut self, i: usize, back: u64) -> Result<String, String> {
        let server = self.servers[i].as_ref().ok_or("the server is down")?;
        let etcd_url = server.etcd_url.clone().ok_or("no etcd API")?;
        let mut etcd = etcd_client::Client::connect([etcd_url], None)
            .await
            .map_err(|e| e.to_string())?;
        let now = etcd
            .get("r/", None)
            .await
            .map_err(|e| e.to_string())?
            .header()
            .map_or(0, |h| h.revision() as u64)
            .saturating_sub(self.base);
        let from = self.kept_from();
        let at = now.saturating_sub(back).max(from);
        if at <= from {
            return Err(format!("nothing to compact (revision {now})"));
        }
        let client = kvstore_client::Client::with_urls(vec![self.addresses[i].url.clone()])
            .map_err(|e| e.to_string())?;
        // Through `at` itself: a watcher stops at the first change of the revision
        // it waits for, and the revision before may hold several.
        let (_done_tx, done) = tokio::sync::watch::channel(Some(at));
        let read = watchers::run_watcher(
            format!("the reference before the compaction at {at}"),
            client,
            self.base,
            Start::At(from),
            Pace::Steady,
            done,
        );
        let read = tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .map_err(|_| format!("revisions {from}..{at} not read within 30 s"))?;
        if let Some(error) = read
            .error
            .or(read.compacted.map(|r| format!("{r} compacted")))
        {
            return Err(format!("revisions {from}..{at} not read: {error}"));
        }
        let options = etcd_client::CompactionOptions::new().with_physical();
        etcd.compact((self.base + at) as i64, Some(options))
            .await
            .map_err(|e| e.to_string())?;
        let mut changes = read.changes;
        changes.retain(|c| c.revision < at);
        self.compactions.push(Compaction {
            revision: at,
            changes,
        });
        Ok(format!("at revision {at} (the store at {now})"))
    }
}
