//! Transactions (`POST /v1/txn`) and deletes by prefix (`DELETE /v1/kv?prefix=`)
//! against the real server binary, on both engines: compare semantics, atomicity
//! under concurrent compare-and-swap transfers (checked by a watcher), bad input,
//! and a restart after revisions of several changes.
//!
//! Nothing here sleeps to synchronise: tests wait for answers and stream items,
//! with [`WAIT`] as a safety net only.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use kvstore_client::txn::{Compare, CompareOp, Got, Listed, Txn, TxnOp, TxnResult};
use kvstore_client::{Client, Event, EventKind, Update, WatchOptions};
use rstest::rstest;
use serde_json::{json, Value};
use support::{Backend, Engine, TestServer};

type BoxError = Box<dyn std::error::Error>;
type TestResult = Result<(), BoxError>;
/// An error a spawned task can hand back.
type SendError = Box<dyn std::error::Error + Send + Sync>;

/// Safety net for every wait on the server; a healthy run never gets near it.
const WAIT: Duration = Duration::from_secs(60);

/// `POST /v1/txn` with a raw JSON body: the status and the JSON answer.
async fn post_txn(server: &TestServer, body: &str) -> Result<(u16, Value), BoxError> {
    let res = reqwest::Client::new()
        .post(format!("{}/v1/txn", server.url))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    let status = res.status().as_u16();
    Ok((status, res.json().await?))
}

/// The next `n` events of `watch`.
async fn events(
    watch: &mut (impl futures_util::Stream<Item = Result<Update, kvstore_client::Error>> + Unpin),
    n: usize,
) -> Result<Vec<Event>, BoxError> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(WAIT, watch.next()).await? {
            Some(Ok(Update::Event(event))) => out.push(event),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("the watch ended".into()),
        }
    }
    Ok(out)
}

fn entry_of(result: &TxnResult) -> Option<(String, Vec<u8>)> {
    match result {
        TxnResult::Get(Got { entry }) => entry.as_ref().map(|e| (e.key.clone(), e.value.clone())),
        _ => None,
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compares_pick_the_branch_and_writes_share_one_revision(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let a = client.put("t/a", "m").await?;
    client.put("t/a", "m").await?;
    let start = client.health().await?;

    // The issue's shape, raw: a compare that holds, puts, a delete and a get.
    let (status, answer) = post_txn(
        &server,
        &json!({
            "compare": [{"key": "t/a", "target": "mod_revision", "op": "==", "value": a.revision + 1}],
            "success": [{"put": {"key": "t/a", "value": "90"}},
                        {"put": {"key": "t/b", "value": "AAE=", "encoding": "base64"}},
                        {"delete": {"key": "t/missing"}},
                        {"get": {"key": "t/a"}}],
            "failure": [{"get": {"key": "t/a"}}]
        })
        .to_string(),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["succeeded"], true);
    let revision = start + 1;
    assert_eq!(answer["revision"], revision);
    assert_eq!(answer["results"][0]["put"]["revision"], revision);
    assert_eq!(answer["results"][0]["put"]["version"], 3);
    assert_eq!(answer["results"][1]["put"]["version"], 1);
    assert_eq!(answer["results"][2]["delete"]["deleted"], 0);
    // A read sees the writes before it in the branch.
    assert_eq!(answer["results"][3]["get"]["entry"]["value"], "90");
    assert_eq!(client.get("t/b").await?, [0, 1]);
    let b = client.get_entry("t/b").await?;
    assert_eq!((b.mod_revision, b.create_revision), (revision, revision));
    assert_eq!(client.health().await?, revision);

    // Each target and op, one compare at a time: (compare, holds).
    let cases = [
        (Compare::value("t/a", CompareOp::Equal, "90"), true),
        (Compare::value("t/a", CompareOp::Less, "91"), true),
        (Compare::value("t/a", CompareOp::Greater, "90"), false),
        (Compare::value("t/none", CompareOp::NotEqual, "x"), false),
        (Compare::version("t/a", CompareOp::Equal, 3), true),
        (Compare::version("t/none", CompareOp::Equal, 0), true),
        (Compare::version("t/a", CompareOp::Less, 3), false),
        (
            Compare::create_revision("t/a", CompareOp::Equal, a.revision),
            true,
        ),
        (
            Compare::create_revision("t/b", CompareOp::Greater, a.revision),
            true,
        ),
        (
            Compare::mod_revision("t/a", CompareOp::NotEqual, revision),
            false,
        ),
        (Compare::mod_revision("t/none", CompareOp::Less, 1), true),
        (Compare::lease("t/a", CompareOp::Equal, 0), true),
    ];
    for (compare, holds) in cases {
        let answer = client
            .transaction()
            .when(compare.clone())
            .and_then(TxnOp::get("t/a"))
            .or_else(TxnOp::list("t/", Some(1)))
            .commit()
            .await?;
        assert_eq!(answer.succeeded, holds, "{compare:?}");
        // Reads only: no revision taken, the store's is reported.
        assert_eq!(answer.revision, revision, "{compare:?}");
        match &answer.results[..] {
            [TxnResult::Get(_)] if holds => {}
            [TxnResult::List(Listed {
                entries,
                more: true,
            })] if !holds => {
                assert_eq!(entries.len(), 1);
                assert_eq!(entries[0].key, "t/a");
            }
            other => panic!("{compare:?}: {other:?}"),
        }
    }

    // A failed compare runs the failure branch, with its writes.
    let answer = client
        .transaction()
        .when(Compare::value("t/a", CompareOp::Equal, "nope"))
        .and_then(TxnOp::put("t/a", "no"))
        .or_else(TxnOp::get("t/a"))
        .or_else(TxnOp::delete_prefix("t/"))
        .or_else(TxnOp::list("t/", None))
        .commit()
        .await?;
    assert!(!answer.succeeded);
    assert_eq!(answer.revision, revision + 1);
    assert_eq!(
        entry_of(&answer.results[0]),
        Some(("t/a".into(), b"90".to_vec()))
    );
    assert_eq!(
        answer.results[1],
        TxnResult::Delete(kvstore_client::txn::Deleted { deleted: 2 })
    );
    assert_eq!(
        answer.results[2],
        TxnResult::List(Listed {
            entries: vec![],
            more: false
        })
    );
    assert!(client.list_all("t/").await?.is_empty());
    Ok(())
}

/// N accounts, concurrent random transfers as compare-and-swap transactions from
/// several clients: the sum holds, each committed transfer is one revision, and a
/// watcher sees both of its changes at that revision.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_keep_the_sum(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    const ACCOUNTS: u64 = 5;
    const CLIENTS: u64 = 4;
    const TRANSFERS: u64 = 15;
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    for i in 0..ACCOUNTS {
        client.put(&format!("acct/{i}"), "100").await?;
    }
    let from = client.health().await? + 1;
    let mut watch = client.watch_with(WatchOptions {
        prefix: "acct/".into(),
        start_revision: Some(from),
        ..WatchOptions::default()
    });

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = Client::new(&server.url)?;
        tasks.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            let mut seed = c * 7919 + 17;
            let mut next = move || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                seed >> 33
            };
            while (committed.len() as u64) < TRANSFERS {
                let src = next() % ACCOUNTS;
                let dst = (src + 1 + next() % (ACCOUNTS - 1)) % ACCOUNTS;
                let (src, dst) = (format!("acct/{src}"), format!("acct/{dst}"));
                let (a, b) = (client.get_entry(&src).await?, client.get_entry(&dst).await?);
                let amount = next() % 10 + 1;
                let number = |v: &[u8]| -> Result<u64, SendError> {
                    Ok(std::str::from_utf8(v)?.parse::<u64>()?)
                };
                let (av, bv) = (number(&a.value)?, number(&b.value)?);
                if av < amount {
                    continue;
                }
                let answer = client
                    .transaction()
                    .when(Compare::mod_revision(
                        &src,
                        CompareOp::Equal,
                        a.mod_revision,
                    ))
                    .when(Compare::mod_revision(
                        &dst,
                        CompareOp::Equal,
                        b.mod_revision,
                    ))
                    .and_then(TxnOp::put(&src, (av - amount).to_string()))
                    .and_then(TxnOp::put(&dst, (bv + amount).to_string()))
                    .commit()
                    .await?;
                if answer.succeeded {
                    committed.push((answer.revision, src, dst));
                }
            }
            Ok::<_, SendError>(committed)
        }));
    }
    let mut committed = Vec::new();
    for task in tasks {
        committed.extend(
            task.await?
                .map_err(|e| -> BoxError { e.to_string().into() })?,
        );
    }
    let total: u64 = client
        .list_all("acct/")
        .await?
        .iter()
        .map(|e| std::str::from_utf8(&e.value).map(|v| v.parse::<u64>().unwrap_or(0)))
        .sum::<Result<u64, _>>()?;
    assert_eq!(total, ACCOUNTS * 100);
    let mut revisions: Vec<u64> = committed.iter().map(|c| c.0).collect();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        committed.len(),
        "one revision per transfer"
    );

    // The watcher: exactly the two puts of each transfer, at its revision.
    let seen = events(&mut watch, committed.len() * 2).await?;
    let mut by_revision: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for event in &seen {
        assert_eq!(event.kind, EventKind::Put);
        by_revision
            .entry(event.revision)
            .or_default()
            .push(event.key.clone());
    }
    let expected: BTreeMap<u64, Vec<String>> = committed
        .into_iter()
        .map(|(revision, src, dst)| (revision, vec![src, dst]))
        .collect();
    assert_eq!(by_revision, expected);
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transactions_are_refused_and_change_nothing(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &["--max-txn-ops", "4"]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    client.put("k", "v").await?;
    let revision = client.health().await?;
    let puts = |n: usize| -> Value {
        (0..n)
            .map(|i| json!({"put": {"key": format!("p/{i}"), "value": "x"}}))
            .collect()
    };
    let cases = [
        ("not json".to_string(), "invalid_request"),
        (r#"{"success": [{"put": {"key": "a"}}]}"#.into(), "invalid_request"),
        (r#"{"success": [{"rename": {"key": "a"}}]}"#.into(), "invalid_request"),
        (
            r#"{"compare": [{"key": "k", "target": "version", "op": "=~", "value": 1}]}"#.into(),
            "invalid_request",
        ),
        (r#"{"success": [{"delete": {"prefix": ""}}]}"#.into(), "invalid_request"),
        (r#"{"success": [{"get": {"key": ""}}]}"#.into(), "invalid_key"),
        (json!({ "success": puts(5) }).to_string(), "too_many_ops"),
        (
            json!({"success": [{"put": {"key": "k", "value": "1"}}, {"delete": {"key": "k"}}]})
                .to_string(),
            "duplicate_key",
        ),
        (
            json!({"success": [{"delete": {"prefix": "p/"}}, {"put": {"key": "p/1", "value": "1"}}]})
                .to_string(),
            "duplicate_key",
        ),
        (
            json!({"success": [{"put": {"key": "k", "value": "1", "lease": 7, "ttl": 30}}]})
                .to_string(),
            "invalid_request",
        ),
        (
            json!({"success": [{"put": {"key": "k", "value": "1", "ttl": 0}}]}).to_string(),
            "invalid_ttl",
        ),
        (
            json!({"success": [{"put": {"key": "k", "value": "1", "ttl": 400_000_000}}]})
                .to_string(),
            "invalid_ttl",
        ),
    ];
    for (body, code) in cases {
        let (status, answer) = post_txn(&server, &body).await?;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert!(answer["error"]["message"].is_string());
    }
    // At the limit is fine; the same key in both branches too.
    let at_limit =
        json!({ "success": puts(4), "failure": [{"put": {"key": "p/0", "value": "y"}}] });
    let (status, answer) = post_txn(&server, &at_limit.to_string()).await?;
    assert_eq!((status, &answer["revision"]), (200, &json!(revision + 1)));
    assert_eq!(client.list_all("p/").await?.len(), 4);
    assert_eq!(client.get("k").await?, b"v");
    Ok(())
}

/// Above etcd's own limit (128 ops, the test cluster's default) a transaction the
/// server's `--max-txn-ops` lets through is refused by etcd: `too_many_ops`, not
/// an outage, and nothing is written. sled has no limit of its own.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_the_stores_own_limit_is_too_many_ops(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &["--max-txn-ops", "200"]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let puts: Value = (0..150)
        .map(|i| json!({"put": {"key": format!("big/{i:03}"), "value": "x"}}))
        .collect();
    let (status, answer) = post_txn(&server, &json!({ "success": puts }).to_string()).await?;
    match engine {
        Engine::Sled => {
            assert_eq!(status, 200, "{answer}");
            assert_eq!(client.list_all("big/").await?.len(), 150);
        }
        Engine::Etcd => {
            assert_eq!(status, 400, "{answer}");
            assert_eq!(answer["error"]["code"], "too_many_ops", "{answer}");
            let message = answer["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("--max-txn-ops"), "{message}");
            assert!(client.list_all("big/").await?.is_empty());
        }
    }
    Ok(())
}

/// The TTL of the leases of the tests, in seconds (etcd's minimum).
const TTL: u64 = 2;

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_with_a_lease_or_a_ttl_behave_as_plain_ones(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let lease = client.grant(60).await?;
    client
        .put_with_lease("tl/detached", "old", lease.id)
        .await?;
    let mut watch = client.watch_with(WatchOptions {
        prefix: "tl/".into(),
        start_revision: Some(client.health().await? + 1),
        ..WatchOptions::default()
    });

    // The issue's shape: a put with a ttl, one on a lease, one without (which
    // detaches its key); the failure branch's ttl put does not run.
    let (status, answer) = post_txn(
        &server,
        &json!({
            "compare": [{"key": "tl/detached", "target": "lease", "op": "==", "value": lease.id}],
            "success": [{"put": {"key": "tl/ttl", "value": "110", "ttl": TTL}},
                        {"put": {"key": "tl/leased", "value": "v", "lease": lease.id}},
                        {"put": {"key": "tl/detached", "value": "mine"}}],
            "failure": [{"put": {"key": "tl/failure", "value": "x", "ttl": 30}}],
        })
        .to_string(),
    )
    .await?;
    assert_eq!(
        (status, &answer["succeeded"]),
        (200, &json!(true)),
        "{answer}"
    );
    let revision = answer["revision"].as_u64().ok_or("no revision")?;
    let own = client.get_entry("tl/ttl").await?.lease.ok_or("no lease")?;
    assert_ne!(own, lease.id);
    let info = client.lease(own).await?;
    assert_eq!(info.keys, ["tl/ttl"]);
    assert!(info.granted_ttl >= TTL, "{info:?}");
    assert_eq!(client.get_entry("tl/leased").await?.lease, Some(lease.id));
    assert_eq!(client.get_entry("tl/detached").await?.lease, None);
    assert_eq!(client.lease(lease.id).await?.keys, ["tl/leased"]);
    for event in events(&mut watch, 3).await? {
        assert_eq!((event.kind, event.revision), (EventKind::Put, revision));
    }

    // Compares see the real lease.
    for (compare, holds) in [
        (
            Compare::lease("tl/leased", CompareOp::Equal, lease.id),
            true,
        ),
        (Compare::lease("tl/leased", CompareOp::Equal, 0), false),
        (Compare::lease("tl/detached", CompareOp::Equal, 0), true),
        (Compare::lease("tl/ttl", CompareOp::Equal, own), true),
    ] {
        let txn = Txn {
            compare: vec![compare.clone()],
            ..Txn::default()
        };
        assert_eq!(client.txn(&txn).await?.succeeded, holds, "{compare:?}");
    }

    // The ttl key expires as a TTL key does: one delete, at its own revision.
    let gone = events(&mut watch, 1).await?.remove(0);
    assert_eq!(
        (gone.kind, gone.key.as_str()),
        (EventKind::Delete, "tl/ttl")
    );
    assert!(client.get_entry("tl/ttl").await.is_err());
    // The key on the lease goes with it; the detached one stays.
    let revoked = client.revoke(lease.id).await?;
    let gone = events(&mut watch, 1).await?.remove(0);
    assert_eq!(
        (gone.kind, gone.key.as_str(), gone.revision),
        (EventKind::Delete, "tl/leased", revoked.revision)
    );
    assert_eq!(client.get("tl/detached").await?, b"mine");

    // An unknown lease: 404 and nothing changes, not even the ttl put before it.
    let before = client.health().await?;
    let (status, answer) = post_txn(
        &server,
        &json!({"success": [{"put": {"key": "tl/x", "value": "1", "ttl": 30}},
                            {"put": {"key": "tl/y", "value": "1", "lease": lease.id}}]})
        .to_string(),
    )
    .await?;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["code"], "lease_not_found", "{answer}");
    assert_eq!(client.health().await?, before);
    let keys: Vec<String> = client
        .list_all("tl/")
        .await?
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["tl/detached"]);
    // Nothing else happened: the next change is the next write.
    let marker = client.put("tl/marker", "x").await?;
    assert_eq!(events(&mut watch, 1).await?[0].revision, marker.revision);
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_prefix_is_one_revision(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    for key in ["d/1", "d/2", "d/3/x", "dz", "keep"] {
        client.put(key, "v").await?;
    }
    let from = client.health().await? + 1;
    let mut watch = client.watch_with(WatchOptions {
        start_revision: Some(from),
        ..WatchOptions::default()
    });
    let http = reqwest::Client::new();
    // An empty `prefix=` is refused even with `all=true` (a variable left unset
    // sends it): every key goes only with `prefix` left out.
    for query in ["", "?prefix=", "?prefix=&all=false", "?prefix=&all=true"] {
        let res = http
            .delete(format!("{}/v1/kv{query}", server.url))
            .send()
            .await?;
        assert_eq!(res.status().as_u16(), 400, "{query}");
        let body: Value = res.json().await?;
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    let deleted = client.delete_prefix("d/").await?;
    assert_eq!((deleted.deleted, deleted.revision), (3, from));
    let seen = events(&mut watch, 3).await?;
    assert!(seen
        .iter()
        .all(|e| e.kind == EventKind::Delete && e.revision == from));
    let none = client.delete_prefix("d/").await?;
    assert_eq!((none.deleted, none.revision), (0, from));
    assert_eq!(client.list_all("").await?.len(), 2);
    let all = client.delete_all().await?;
    assert_eq!((all.deleted, all.revision), (2, from + 1));
    Ok(())
}

/// Revisions of several changes survive a restart: read back, and a watch resumed
/// from before them gets each whole, at its revision.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_back_and_resumes_multi_change_revisions(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(backend) = Backend::new(engine) else {
        return Ok(());
    };
    let from;
    let committed;
    {
        let server = TestServer::on(&backend, &[]);
        let client = Client::new(&server.url)?;
        from = client.health().await? + 1;
        let mut txn = Txn::default();
        for i in 0..10 {
            txn.success
                .push(TxnOp::put(&format!("r/{i}"), i.to_string()));
        }
        let first = client.txn(&txn).await?;
        let second = client
            .transaction()
            .and_then(TxnOp::delete_prefix("r/1"))
            .and_then(TxnOp::put("r/0", "zero"))
            .commit()
            .await?;
        committed = (first.revision, second.revision);
        assert_eq!(committed, (from, from + 1));
    }
    let server = TestServer::on(&backend, &[]);
    let client = Client::new(&server.url)?;
    assert_eq!(client.health().await?, committed.1);
    assert_eq!(client.get("r/0").await?, b"zero");
    assert_eq!(client.list_all("r/").await?.len(), 9);
    let mut watch = client.watch_with(WatchOptions {
        prefix: "r/".into(),
        start_revision: Some(from),
        ..WatchOptions::default()
    });
    let seen = events(&mut watch, 12).await?;
    let at = |r: u64| seen.iter().filter(|e| e.revision == r).count();
    assert_eq!((at(committed.0), at(committed.1)), (10, 2));
    assert_eq!(seen[10].key, "r/1");
    assert_eq!(seen[10].kind, EventKind::Delete);
    assert_eq!(
        (seen[11].key.as_str(), seen[11].kind),
        ("r/0", EventKind::Put)
    );
    Ok(())
}

/// Unknown query parameters are refused everywhere, before anything is done; each
/// endpoint's own ones still work.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_query_parameters_are_refused(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let http = reqwest::Client::new();
    let url = |rest: &str| format!("{}{rest}", server.url);
    let refused = [
        // (?ttl= and ?lease= are a put's own: tests/leases.rs.)
        http.put(url("/v1/kv/t?ttl_seconds=3")).body("v"),
        // (?revision= is a read of the past: tests/history.rs.)
        http.get(url("/v1/kv/t?rev=1")),
        http.get(url("/v1/kv?prefix=a&limt=5")),
        http.delete(url("/v1/kv?prefix=t&recursive=true")),
        http.post(url("/v1/txn?dry_run=1")).body("{}"),
        http.get(url("/v1/watch?prefix=a&since=1")),
        http.get(url("/v1/snapshot?format=tar")),
        http.get(url("/healthz?verbose")),
        http.get(url("/kv?key=t&x=1")),
        http.get(url("/socket.io/?EIO=4&transport=polling&debug=1")),
        http.get(url("/ui/?tab=keys")),
    ];
    for request in refused {
        let res = request.send().await?;
        let what = res.url().to_string();
        assert_eq!(res.status().as_u16(), 400, "{what}");
        let body: Value = res.json().await?;
        assert_eq!(body["error"]["code"], "invalid_request", "{what}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("unknown query parameter")),
            "{what}: {body}"
        );
    }
    // Nothing was written.
    assert!(client.list_all("").await?.is_empty());
    // Known parameters, in any spelling forms allow, still work.
    client.put("t", "v").await?;
    for ok in [
        "/v1/kv?prefix=t&limit=1&after=",
        "/v1/kv/t",
        "/kv?key=t",
        "/healthz",
        "/v1/snapshot?prefix=t",
    ] {
        let res = http.get(url(ok)).send().await?;
        assert!(res.status().is_success(), "{ok}: {}", res.status());
    }
    let res = http
        .get(url("/socket.io/?EIO=4&transport=polling&t=Nx1"))
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 200);
    Ok(())
}
