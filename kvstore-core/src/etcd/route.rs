//! Which client a call goes through: to the etcd leader when it is known, and made
//! on the caller's own thread when the caller runs on a current-thread runtime.
//!
//! etcd's own client balances calls over every endpoint. A write that reaches a
//! follower is forwarded to the leader and answered once the follower has applied
//! it too: a hop more, and work on one more member. So a task asks each configured
//! endpoint which member leads (every few seconds, and at once after a call sent
//! to the leader failed), and calls go to the endpoint the leader answers on; while
//! no leader is known, through the client that balances over them all. The
//! endpoints are matched by what each answers about itself, not by the URLs the
//! members advertise (which a client behind a proxy may not reach).
//!
//! A client's connection tasks run on the runtime that made it. The server's
//! workers are current-thread runtimes: a call from one of them through a client of
//! the engine's runtime crosses threads twice (the request to the connection task,
//! the answer back). So such a thread makes clients of its own, one per store,
//! runtime and target, kept in a thread-local list; a runtime on more threads uses
//! the engine's clients.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{watch, Notify};
use tokio::time::timeout;

/// How often the leader is looked up while one is known.
const RECHECK: Duration = Duration::from_secs(5);
/// How often it is looked up while none is.
const SEARCH: Duration = Duration::from_millis(250);
/// Longest one lookup (or one connection) may take.
const ASK: Duration = Duration::from_secs(1);

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Balanced over every endpoint.
    All,
    /// The endpoint with this index, the leader's.
    Leader(usize),
}

/// The cluster's endpoints, a client for each and one over them all, and which of
/// them leads.
pub struct Members {
    endpoints: Vec<String>,
    options: ConnectOptions,
    all: Client,
    each: Vec<Mutex<Option<Client>>>,
    /// Where calls go; its receivers follow the leader.
    leader: watch::Sender<Target>,
    recheck: Notify,
}

/// A client made on a current-thread runtime for `members`.
struct Local {
    members: Weak<Members>,
    runtime: tokio::runtime::Id,
    target: Target,
    client: Client,
}

thread_local! {
    static LOCAL: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

impl Members {
    /// `all` is the client that balances over `endpoints`. With more than one
    /// endpoint, starts the task that finds the leader, on the current runtime (the
    /// engine's: the task ends with it, or when the members are dropped).
    pub fn start(endpoints: &[String], options: ConnectOptions, all: Client) -> Arc<Members> {
        let members = Arc::new(Members {
            endpoints: endpoints.to_vec(),
            options,
            all,
            each: endpoints.iter().map(|_| Mutex::new(None)).collect(),
            leader: watch::channel(Target::All).0,
            recheck: Notify::new(),
        });
        if endpoints.len() > 1 {
            tokio::spawn(find_leader(Arc::downgrade(&members)));
        }
        members
    }

    /// A client of the engine's runtime for a call that stays open (a watch), to
    /// the leader when it is known, and where it goes.
    ///
    /// A follower learns that a change is committed after the leader does, at
    /// worst with the next heartbeat: a watch on it may show a change up to a
    /// heartbeat after the leader acknowledged its write.
    pub fn stream_client(&self) -> (Client, Target) {
        let target = self.target();
        (self.engine_client(target), target)
    }

    /// Changes of the leader found, for a stream to follow it.
    pub fn moves(&self) -> watch::Receiver<Target> {
        self.leader.subscribe()
    }

    /// Where calls go now.
    pub fn target(&self) -> Target {
        *self.leader.borrow()
    }

    /// A client for `target`, made on this thread when it runs a current-thread
    /// runtime; the engine's otherwise, or when one cannot be made.
    pub async fn client(self: &Arc<Members>, target: Target) -> Client {
        let Some(runtime) = Handle::try_current()
            .ok()
            .filter(|handle| handle.runtime_flavor() == RuntimeFlavor::CurrentThread)
            .map(|handle| handle.id())
        else {
            return self.engine_client(target);
        };
        let mine = |local: &Local| {
            local.runtime == runtime
                && local.target == target
                && std::ptr::eq(local.members.as_ptr(), Arc::as_ptr(self))
        };
        let found = LOCAL.with(|list| {
            list.borrow()
                .iter()
                .find(|l| mine(l))
                .map(|l| l.client.clone())
        });
        if let Some(client) = found {
            return client;
        }
        let endpoints = match target {
            Target::All => self.endpoints.clone(),
            Target::Leader(i) => vec![self.endpoints[i].clone()],
        };
        match self.connect(endpoints).await {
            Some(client) => {
                LOCAL.with(|list| {
                    let mut list = list.borrow_mut();
                    // Clients of dropped stores go, and this thread's earlier client
                    // for another leader of this store.
                    list.retain(|l| {
                        l.members.strong_count() > 0
                            && !(l.runtime == runtime
                                && std::ptr::eq(l.members.as_ptr(), Arc::as_ptr(self)))
                    });
                    list.push(Local {
                        members: Arc::downgrade(self),
                        runtime,
                        target,
                        client: client.clone(),
                    });
                });
                client
            }
            None => self.engine_client(target),
        }
    }

    /// A client of `endpoints`, made on the current runtime; `None` when it cannot
    /// be made in time.
    async fn connect(&self, endpoints: Vec<String>) -> Option<Client> {
        match timeout(ASK, Client::connect(&endpoints, Some(self.options.clone()))).await {
            Ok(Ok(client)) => Some(client),
            Ok(Err(e)) => {
                log::debug!("cannot connect to etcd at {endpoints:?}: {e}");
                None
            }
            Err(_) => None,
        }
    }

    fn engine_client(&self, target: Target) -> Client {
        let one = match target {
            Target::All => None,
            Target::Leader(i) => lock(&self.each[i]).clone(),
        };
        one.unwrap_or_else(|| self.all.clone())
    }

    /// A call sent to `target` failed in a way that may mean it no longer leads:
    /// calls go to every endpoint until the leader is found again.
    pub fn failed(&self, target: Target) {
        if let Target::Leader(i) = target {
            let forgot = self.leader.send_if_modified(|now| {
                let forget = *now == target;
                if forget {
                    *now = Target::All;
                }
                forget
            });
            if forgot {
                log::debug!(
                    "etcd: the call to {} failed; looking for the leader",
                    self.endpoints[i]
                );
                self.recheck.notify_one();
            }
        }
    }

    /// Asks endpoint `i` which member leads: true when it says it does.
    async fn leads(&self, i: usize) -> bool {
        let client = lock(&self.each[i]).clone();
        let mut client = match client {
            Some(client) => client,
            None => {
                let Some(client) = self.connect(vec![self.endpoints[i].clone()]).await else {
                    return false;
                };
                *lock(&self.each[i]) = Some(client.clone());
                client
            }
        };
        match timeout(ASK, client.status()).await {
            Ok(Ok(status)) => status.header().is_some_and(|header| {
                header.member_id() == status.leader() && status.leader() != 0
            }),
            _ => false,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The task that keeps `Members::leader` current.
async fn find_leader(members: Weak<Members>) {
    loop {
        let Some(strong) = members.upgrade() else {
            return;
        };
        let asked =
            futures_util::future::join_all((0..strong.endpoints.len()).map(|i| strong.leads(i)))
                .await;
        let found = asked
            .iter()
            .position(|&leads| leads)
            .map_or(Target::All, Target::Leader);
        let moved = strong.leader.send_if_modified(|now| {
            let moved = *now != found;
            *now = found;
            moved
        });
        if moved {
            match found {
                Target::All => log::debug!("etcd: no endpoint answers as the leader"),
                Target::Leader(i) => {
                    log::debug!("etcd: the leader answers on {}", strong.endpoints[i])
                }
            }
        }
        let wait = if found == Target::All {
            SEARCH
        } else {
            RECHECK
        };
        let _ = timeout(wait, strong.recheck.notified()).await;
    }
}
