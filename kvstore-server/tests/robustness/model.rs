//! The store as a sequential specification for the linearizability checker: keys
//! with their values, create and mod revisions and versions, and the store's
//! revision, which every write that changes something raises by one.

use std::collections::{BTreeMap, BTreeSet};

use porcupine_rs::Model;

use super::history::{Kv, Request, Response};

/// The store's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Store {
    pub revision: u64,
    pub keys: BTreeMap<String, Kv>,
    /// The leases that exist.
    pub leases: BTreeSet<u64>,
}

impl Store {
    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Kv)> + 'a {
        self.keys
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// The state after puts of `writes` (key, value, lease), all at the next
    /// revision.
    fn put_all<'a>(&self, writes: impl IntoIterator<Item = (&'a str, &'a str, u64)>) -> Store {
        let mut next = self.clone();
        next.revision += 1;
        for (key, value, lease) in writes {
            let (create_revision, version) = match self.keys.get(key) {
                Some(kv) => (kv.create_revision, kv.version + 1),
                None => (next.revision, 1),
            };
            next.keys.insert(
                key.to_string(),
                Kv {
                    value: value.to_string(),
                    create_revision,
                    mod_revision: next.revision,
                    version,
                    lease,
                },
            );
        }
        next
    }

    fn put(&self, key: &str, value: &str) -> Store {
        self.put_all([(key, value, 0)])
    }

    /// Whether a put answered `response` is the put that leads to `next`.
    fn put_answered(next: &Store, key: &str, response: &Response) -> bool {
        let kv = &next.keys[key];
        matches!(response, Response::Put { revision, create_revision, version }
            if *revision == next.revision
                && *create_revision == kv.create_revision
                && *version == kv.version)
    }

    fn mod_revision(&self, key: &str) -> u64 {
        self.keys.get(key).map_or(0, |kv| kv.mod_revision)
    }
}

/// The whole store in one state: the revision ties every key to every other, so
/// the history is checked as one.
#[derive(Debug, Clone)]
pub struct StoreModel;

impl Model for StoreModel {
    type State = Store;
    type Op = (Request, Response);
    type Metadata = u32;

    fn init() -> Store {
        Store::default()
    }

    fn step(state: &Store, (request, response): &(Request, Response)) -> (bool, Store) {
        let same = |ok: bool| (ok, state.clone());
        match (request, response) {
            (Request::Get { key }, Response::Get { kv, revision }) => same(
                state.keys.get(key) == kv.as_ref() && revision.is_none_or(|r| r >= state.revision),
            ),
            (Request::List { prefix }, Response::List { entries, revision }) => {
                let now: BTreeMap<String, Kv> = state
                    .under(prefix)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                same(&now == entries && *revision == state.revision)
            }
            (Request::Put { key, value, cond }, response) => {
                let holds = cond.holds(state.keys.get(key));
                match response {
                    Response::Put { .. } => {
                        let next = state.put(key, value);
                        (holds && Store::put_answered(&next, key, response), next)
                    }
                    Response::PreconditionFailed => same(!holds),
                    Response::Unknown(_) if holds => (true, state.put(key, value)),
                    Response::Unknown(_) => same(true),
                    _ => same(false),
                }
            }
            (Request::PutLeased { key, value, lease }, response) => {
                let exists = state.leases.contains(lease);
                let next = || state.put_all([(key.as_str(), value.as_str(), *lease)]);
                match response {
                    Response::Put { .. } => {
                        let next = next();
                        (exists && Store::put_answered(&next, key, response), next)
                    }
                    Response::LeaseNotFound => same(!exists),
                    Response::Unknown(_) if exists => (true, next()),
                    Response::Unknown(_) => same(true),
                    _ => same(false),
                }
            }
            (Request::PutTtl { key, value, lease }, response) => {
                // A lease of its own, granted for it.
                let mut next = state.put_all([(key.as_str(), value.as_str(), *lease)]);
                next.leases.insert(*lease);
                match response {
                    Response::Put { .. } => (
                        !state.leases.contains(lease) && Store::put_answered(&next, key, response),
                        next,
                    ),
                    Response::Unknown(_) => (true, next),
                    _ => same(false),
                }
            }
            (Request::Grant, Response::Granted { lease }) => {
                let mut next = state.clone();
                (next.leases.insert(*lease), next)
            }
            (Request::Revoke { lease }, response) => {
                let exists = state.leases.contains(lease);
                let revoked = || {
                    let mut next = state.clone();
                    next.leases.remove(lease);
                    let doomed: Vec<String> = state
                        .keys
                        .iter()
                        .filter(|(_, kv)| kv.lease == *lease)
                        .map(|(k, _)| k.clone())
                        .collect();
                    if !doomed.is_empty() {
                        next.revision += 1;
                        for key in doomed {
                            next.keys.remove(&key);
                        }
                    }
                    next
                };
                match response {
                    Response::Revoked { revision } => {
                        let next = revoked();
                        (exists && *revision == next.revision, next)
                    }
                    Response::LeaseNotFound => same(!exists),
                    Response::Unknown(_) if exists => (true, revoked()),
                    Response::Unknown(_) => same(true),
                    _ => same(false),
                }
            }
            (Request::Delete { key, cond }, response) => {
                let current = state.keys.get(key);
                let applies = current.is_some() && cond.holds(current);
                let deleted = || {
                    let mut next = state.clone();
                    next.revision += 1;
                    next.keys.remove(key);
                    next
                };
                match response {
                    Response::Deleted { revision }
                        if applies && *revision == state.revision + 1 =>
                    {
                        (true, deleted())
                    }
                    Response::Deleted { .. } => same(false),
                    // A conditional delete of an absent key may be either.
                    Response::NotFound => same(current.is_none()),
                    Response::PreconditionFailed => same(current.is_none() || !applies),
                    Response::Unknown(_) if applies => (true, deleted()),
                    Response::Unknown(_) => same(true),
                    _ => same(false),
                }
            }
            (Request::DeletePrefix { prefix }, response) => {
                let doomed: Vec<String> = state.under(prefix).map(|(k, _)| k.clone()).collect();
                let deleted = || {
                    let mut next = state.clone();
                    if !doomed.is_empty() {
                        next.revision += 1;
                        for key in &doomed {
                            next.keys.remove(key);
                        }
                    }
                    next
                };
                match response {
                    Response::DeletedPrefix {
                        revision,
                        deleted: n,
                    } => {
                        let next = deleted();
                        (*n == doomed.len() && *revision == next.revision, next)
                    }
                    Response::Unknown(_) => (true, deleted()),
                    _ => same(false),
                }
            }
            (
                Request::Txn {
                    keys,
                    expect,
                    values,
                },
                response,
            ) => {
                let holds = state.mod_revision(&keys[0]) == expect[0]
                    && state.mod_revision(&keys[1]) == expect[1];
                let written = || {
                    state.put_all([
                        (keys[0].as_str(), values[0].as_str(), 0),
                        (keys[1].as_str(), values[1].as_str(), 0),
                    ])
                };
                match response {
                    Response::Txn {
                        succeeded: true,
                        revision,
                        ..
                    } => {
                        let next = written();
                        (holds && *revision == next.revision, next)
                    }
                    Response::Txn {
                        succeeded: false,
                        revision,
                        reads,
                    } => same(
                        !holds
                            && *revision == state.revision
                            && reads[0].as_ref() == state.keys.get(&keys[0])
                            && reads[1].as_ref() == state.keys.get(&keys[1]),
                    ),
                    Response::Unknown(_) if holds => (true, written()),
                    Response::Unknown(_) => same(true),
                    _ => same(false),
                }
            }
            _ => same(false),
        }
    }

    fn describe_operation((request, response): &(Request, Response)) -> String {
        format!("{request:?} ⇒ {response:?}")
    }

    fn describe_state(state: &Store) -> String {
        let keys: Vec<String> = state
            .keys
            .iter()
            .map(|(k, kv)| {
                format!(
                    "{k}={} (mod {} v{} lease {})",
                    kv.value, kv.mod_revision, kv.version, kv.lease
                )
            })
            .collect();
        format!("rev {}: {}", state.revision, keys.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Cond;
    use porcupine_rs::{check_operations, Operation};

    fn op(call: i64, ret: i64, request: Request, response: Response) -> Operation<StoreModel> {
        Operation {
            client_id: Some(0),
            call_time: call,
            return_time: ret,
            op: (request, response),
            metadata: None,
        }
    }

    fn put(key: &str, value: &str) -> Request {
        Request::Put {
            key: key.into(),
            value: value.into(),
            cond: Cond::None,
        }
    }

    fn get(key: &str) -> Request {
        Request::Get { key: key.into() }
    }

    fn kv(value: &str, create: u64, modr: u64, version: u64) -> Kv {
        Kv {
            value: value.into(),
            create_revision: create,
            mod_revision: modr,
            version,
            lease: 0,
        }
    }

    #[test]
    fn the_model_tells_a_stale_read_from_a_concurrent_one() {
        let written = Response::Put {
            revision: 1,
            create_revision: 1,
            version: 1,
        };
        let seen = Response::Get {
            kv: Some(kv("a", 1, 1, 1)),
            revision: Some(1),
        };
        let absent = Response::Get {
            kv: None,
            revision: None,
        };
        // A read overlapping the put may see either.
        assert!(check_operations(&[
            op(0, 10, put("k", "a"), written.clone()),
            op(5, 15, get("k"), absent.clone()),
        ]));
        // A read after the put returned may not miss it.
        assert!(!check_operations(&[
            op(0, 10, put("k", "a"), written.clone()),
            op(11, 15, get("k"), absent.clone()),
        ]));
        // An unknown put may take effect late, or never.
        let unknown = Response::Unknown("lost".into());
        assert!(check_operations(&[
            op(0, i64::MAX, put("k", "a"), unknown.clone()),
            op(11, 15, get("k"), absent),
            op(16, 20, get("k"), seen),
        ]));
        // A delete answered 404 after the key was written was not applied.
        assert!(!check_operations(&[
            op(0, 10, put("k", "a"), written),
            op(
                11,
                15,
                Request::Delete {
                    key: "k".into(),
                    cond: Cond::None
                },
                Response::NotFound
            ),
        ]));
    }
}
