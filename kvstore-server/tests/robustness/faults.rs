//! The system under test and the faults struck at it: kvstore servers behind held
//! addresses (so a restarted one keeps its clients' URL), on sled or on a 3-member
//! etcd cluster with two kvstore replicas.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::Rng;

use crate::support::{Backend, Engine, HeldAddress, TestServer};

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
            ],
            Engine::Etcd => &[
                Fault::KillLeader,
                Fault::KillFollower,
                Fault::KillServer,
                Fault::StopServer,
            ],
        }
    }
}

/// The store and the servers in front of it.
pub struct System {
    pub backend: Backend,
    pub addresses: Vec<HeldAddress>,
    servers: Vec<Option<TestServer>>,
    args: Vec<String>,
}

impl System {
    /// One server on sled; two replicas on a 3-member etcd cluster. `None` when
    /// the engine cannot run here (the skip is said).
    pub fn start(engine: Engine, args: &[&str]) -> Option<System> {
        let (members, replicas) = match engine {
            Engine::Sled => (1, 1),
            Engine::Etcd => (3, 2),
        };
        let backend = Backend::with_members(engine, members)?;
        // Every revision of a run stays readable: the reference watcher reads them
        // all from the first after the faults.
        let args: Vec<String> = ["--retain-revisions", "1000000000"]
            .iter()
            .chain(args)
            .map(|a| a.to_string())
            .collect();
        let mut system = System {
            backend,
            addresses: Vec::new(),
            servers: Vec::new(),
            args,
        };
        for _ in 0..replicas {
            let address = HeldAddress::new().expect("a held address");
            let server = system.start_behind(&address);
            system.addresses.push(address);
            system.servers.push(Some(server));
        }
        Some(system)
    }

    fn start_behind(&self, address: &HeldAddress) -> TestServer {
        self.start_behind_with(address, &[])
    }

    fn start_behind_with(&self, address: &HeldAddress, env: &[(&str, &str)]) -> TestServer {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        address
            .start_on_with_env(&self.backend, &args, env)
            .unwrap_or_else(|e| panic!("server did not start: {e}"))
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
                self.servers[i] = Some(self.start_behind(&self.addresses[i]));
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
                let mut server =
                    self.start_behind_with(&self.addresses[i], &[("FAILPOINTS", &armed)]);
                let crashed = server.wait_exit(Duration::from_secs(10));
                self.addresses[i].detach();
                drop(server);
                self.servers[i] = Some(self.start_behind(&self.addresses[i]));
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
                self.servers[i] =
                    Some(self.start_behind_with(&self.addresses[i], &[("FAILPOINTS", armed)]));
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
        }
    }
}
