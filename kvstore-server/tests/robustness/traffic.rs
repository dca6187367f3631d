//! The clients: each sends a random mix of requests over a small key space, so that
//! they collide, and records every one with its outcome.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kvstore_client::{Client, Condition, Error, ErrorCode, PutResult};
use kvstore_core::txn::{Compare, CompareOp, TxnOp, TxnResult};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::history::{nanos_since, Cond, Kv, Record, Request, Response};

/// The keys the clients share; prefixes `r/a` and `r/b` hold two each.
pub const KEYS: [&str; 5] = ["r/a0", "r/a1", "r/b0", "r/b1", "r/c0"];
/// Every key the traffic touches starts with this.
pub const PREFIX: &str = "r/";
const PREFIXES: [&str; 3] = ["r/a", "r/b", "r/"];
/// Leases outlive a run: none ends but by a revoke.
const LEASE_TTL: u64 = 600;

/// How one client reaches the server.
pub struct Target {
    /// The SDK, with the server's URLs (more than one: it moves on as it does).
    pub sdk: Client,
    /// The first URL, for the requests sent as raw HTTP.
    pub url: String,
    /// The store's first revision, subtracted from every revision recorded.
    pub base: u64,
}

/// One client's loop until `until`: its records, in the order sent.
pub async fn run_client(
    id: u32,
    seed: u64,
    target: Target,
    start: Instant,
    until: Instant,
) -> Vec<Record> {
    let mut rng = SmallRng::seed_from_u64(seed ^ (u64::from(id) << 32));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    // The mod revision this client last saw of each key (0: absent), for its
    // conditional writes.
    let mut seen: HashMap<&'static str, u64> = HashMap::new();
    let mut records = Vec::new();
    // The leases this client was granted and has not revoked.
    let mut granted: Vec<u64> = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let value = format!("c{id}-{n}");
        let key = KEYS[rng.random_range(0..KEYS.len())];
        let last = seen.get(key).copied().unwrap_or(0);
        let request = match rng.random_range(0..100) {
            0..25 => Request::Get { key: key.into() },
            25..32 => Request::List {
                prefix: PREFIX.into(),
            },
            32..52 => Request::Put {
                key: key.into(),
                value,
                cond: Cond::None,
            },
            52..62 => Request::Put {
                key: key.into(),
                value,
                cond: if last == 0 {
                    Cond::Absent
                } else {
                    Cond::ModRevision(last)
                },
            },
            62..67 => Request::Put {
                key: key.into(),
                value,
                cond: Cond::Absent,
            },
            67..75 => Request::Delete {
                key: key.into(),
                cond: Cond::None,
            },
            75..81 if last != 0 => Request::Delete {
                key: key.into(),
                cond: Cond::ModRevision(last),
            },
            75..83 => Request::DeletePrefix {
                prefix: PREFIXES[rng.random_range(0..2)].into(),
            },
            90..92 if granted.len() < 2 => Request::Grant,
            90..95 if !granted.is_empty() => Request::PutLeased {
                key: key.into(),
                value,
                lease: granted[rng.random_range(0..granted.len())],
            },
            95..98 => Request::PutTtl {
                key: key.into(),
                value,
                lease: 0,
            },
            98..100 if !granted.is_empty() => Request::Revoke {
                lease: granted.swap_remove(rng.random_range(0..granted.len())),
            },
            _ => {
                let other = loop {
                    let other = KEYS[rng.random_range(0..KEYS.len())];
                    if other != key {
                        break other;
                    }
                };
                Request::Txn {
                    keys: [key.into(), other.into()],
                    expect: [last, seen.get(other).copied().unwrap_or(0)],
                    values: [value.clone(), format!("{value}b")],
                }
            }
        };
        let call = nanos_since(start);
        let response = send(&target, &http, &request).await;
        let ret = match &response {
            Some(Response::Unknown(_)) => i64::MAX,
            _ => nanos_since(start),
        };
        let Some(response) = response else {
            // A definite failure (a read that got no answer, a write refused
            // before it was sent): nothing happened.
            continue;
        };
        learn(&mut seen, &request, &response);
        if let Response::Granted { lease } = response {
            granted.push(lease);
        }
        records.push(Record {
            client: id,
            call,
            ret,
            request,
            response,
        });
    }
    records
}

/// What the client learns of keys' mod revisions from an answer.
fn learn(seen: &mut HashMap<&'static str, u64>, request: &Request, response: &Response) {
    let mut note = |key: &str, rev: u64| {
        if let Some(k) = KEYS.iter().find(|k| **k == key) {
            seen.insert(k, rev);
        }
    };
    match (request, response) {
        (Request::Get { key }, Response::Get { kv, .. }) => {
            note(key, kv.as_ref().map_or(0, |kv| kv.mod_revision))
        }
        (Request::List { .. }, Response::List { entries, .. }) => {
            for key in KEYS {
                note(key, entries.get(key).map_or(0, |kv| kv.mod_revision));
            }
        }
        (
            Request::Put { key, .. } | Request::PutLeased { key, .. } | Request::PutTtl { key, .. },
            Response::Put { revision, .. },
        ) => note(key, *revision),
        (Request::Delete { key, .. }, Response::Deleted { .. } | Response::NotFound) => {
            note(key, 0)
        }
        (
            Request::Txn { keys, .. },
            Response::Txn {
                succeeded: true,
                revision,
                ..
            },
        ) => {
            note(&keys[0], *revision);
            note(&keys[1], *revision);
        }
        (Request::Txn { keys, .. }, Response::Txn { reads, .. }) => {
            for (key, kv) in keys.iter().zip(reads) {
                note(key, kv.as_ref().map_or(0, |kv| kv.mod_revision));
            }
        }
        _ => {}
    }
}

/// Sends `request`; `None` when it certainly had no effect and told nothing.
async fn send(target: &Target, http: &reqwest::Client, request: &Request) -> Option<Response> {
    let base = target.base;
    let rel = |rev: u64| rev.saturating_sub(base);
    let abs = |rev: u64| if rev == 0 { 0 } else { rev + base };
    let condition = |cond: Cond| match cond {
        Cond::None => None,
        Cond::ModRevision(rev) => Some(Condition::ModRevision(abs(rev))),
        Cond::Absent => Some(Condition::Absent),
    };
    let sdk = &target.sdk;
    let outcome: Result<Response, Error> = match request {
        Request::Get { key } => return get_raw(http, &target.url, key, base).await,
        Request::List { prefix } => {
            sdk.list(prefix, None, Some(1000))
                .await
                .map(|page| Response::List {
                    entries: page.entries.iter().map(|e| Kv::of(e, base)).collect(),
                    revision: rel(page.revision),
                })
        }
        Request::Put { key, value, cond } => {
            let put = match condition(*cond) {
                Some(c) => sdk.put_if(key, value.as_bytes(), c).await,
                None => sdk.put(key, value.as_bytes()).await,
            };
            put.map(|p| put_response(&p, base))
        }
        Request::PutLeased { key, value, lease } => sdk
            .put_with_lease(key, value.as_bytes(), *lease)
            .await
            .map(|p| put_response(&p, base)),
        Request::PutTtl { key, value, .. } => sdk
            .put_with_ttl(key, value.as_bytes(), LEASE_TTL)
            .await
            .map(|p| put_response(&p, base)),
        Request::Grant => sdk
            .grant(LEASE_TTL)
            .await
            .map(|lease| Response::Granted { lease: lease.id }),
        Request::Revoke { lease } => sdk.revoke(*lease).await.map(|r| Response::Revoked {
            revision: rel(r.revision),
        }),
        Request::Delete { key, cond } => {
            let deleted = match condition(*cond) {
                Some(c) => sdk.delete_if(key, c).await,
                None => sdk.delete(key).await,
            };
            deleted.map(|d| Response::Deleted {
                revision: rel(d.revision),
            })
        }
        Request::DeletePrefix { prefix } => {
            sdk.delete_prefix(prefix)
                .await
                .map(|d| Response::DeletedPrefix {
                    revision: rel(d.revision),
                    deleted: d.deleted,
                })
        }
        Request::Txn {
            keys,
            expect,
            values,
        } => {
            let txn = sdk
                .transaction()
                .when(Compare::mod_revision(
                    &keys[0],
                    CompareOp::Equal,
                    abs(expect[0]),
                ))
                .when(Compare::mod_revision(
                    &keys[1],
                    CompareOp::Equal,
                    abs(expect[1]),
                ))
                .and_then(TxnOp::put(&keys[0], values[0].as_bytes()))
                .and_then(TxnOp::put(&keys[1], values[1].as_bytes()))
                .or_else(TxnOp::get(&keys[0]))
                .or_else(TxnOp::get(&keys[1]))
                .build();
            sdk.txn(&txn).await.map(|answer| {
                let mut reads = [None, None];
                if !answer.succeeded {
                    for (slot, result) in reads.iter_mut().zip(&answer.results) {
                        if let TxnResult::Get(got) = result {
                            *slot = got.entry.as_ref().map(|e| Kv::of(e, base).1);
                        }
                    }
                }
                Response::Txn {
                    succeeded: answer.succeeded,
                    revision: rel(answer.revision),
                    reads,
                }
            })
        }
    };
    match outcome {
        Ok(response) => Some(response),
        Err(e) if e.code() == Some(ErrorCode::LeaseNotFound) => Some(Response::LeaseNotFound),
        Err(Error::NotFound { .. }) => Some(Response::NotFound),
        Err(Error::PreconditionFailed { .. }) => Some(Response::PreconditionFailed),
        // A read that failed tells nothing.
        Err(_) if !request.is_write() => None,
        // 4xx other than these: refused before anything was written.
        Err(Error::BadRequest { .. } | Error::Unauthorized { .. } | Error::Forbidden { .. }) => {
            None
        }
        // Anything else may or may not have been applied.
        Err(e) => Some(Response::Unknown(e.to_string())),
    }
}

/// A put's answer, its revisions relative to `base`.
fn put_response(put: &PutResult, base: u64) -> Response {
    Response::Put {
        revision: put.revision.saturating_sub(base),
        create_revision: put.create_revision.saturating_sub(base),
        version: put.version,
    }
}

/// A GET as raw HTTP, which says the store revision it read at.
async fn get_raw(http: &reqwest::Client, url: &str, key: &str, base: u64) -> Option<Response> {
    let res = http
        .get(format!("{url}/v1/kv/{key}"))
        .header("accept", "application/json")
        .send()
        .await
        .ok()?;
    let revision = res
        .headers()
        .get("x-kv-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|r| r.saturating_sub(base));
    match res.status().as_u16() {
        200 => {
            let entry: kvstore_client::Entry = res.json().await.ok()?;
            Some(Response::Get {
                kv: Some(Kv::of(&entry, base).1),
                revision,
            })
        }
        404 => Some(Response::Get { kv: None, revision }),
        _ => None,
    }
}
