//! etcd's v3 gRPC API, driven by the etcd-client crate as any Rust etcd user
//! would, on both engines: KV, Watch, Lease, Maintenance, Cluster and Auth, and
//! the same keys and revisions seen through the HTTP API.

use crate::support;

use std::time::Duration;

use etcd_client::{
    Client as EtcdClient, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use kvstore_client::Client;
use rstest::rstest;
use support::{serve, Engine, TestServer};

type BoxError = Box<dyn std::error::Error>;
type TestResult = Result<(), BoxError>;

/// Safety net for every wait; a healthy run never gets near it.
const WAIT: Duration = Duration::from_secs(15);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T, BoxError> {
    tokio::time::timeout(WAIT, f)
        .await
        .map_err(|_| format!("timed out after {WAIT:?} waiting for {what}").into())
}

/// A client of the server's etcd API.
async fn etcd(
    server: &TestServer,
    options: Option<ConnectOptions>,
) -> Result<EtcdClient, BoxError> {
    let url = server
        .etcd_url
        .clone()
        .ok_or("the server serves no etcd API")?;
    Ok(EtcdClient::connect([url], options).await?)
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(-1, |h| h.revision())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_read_and_written_through_etcd_clients_are_the_http_apis_keys(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = serve(engine, &[]) else {
        return Ok(());
    };
    let http = Client::new(&server.url)?;
    let mut etcd = etcd(&server, None).await?;

    // A put through etcd is read through HTTP, and seen by an HTTP watcher, at the
    // same revision.
    let mut watcher = http.watch_with(kvstore_client::WatchOptions {
        prefix: "app/".into(),
        start_revision: Some(1),
        ..Default::default()
    });
    let put = etcd.put("app/a", "1", None).await?;
    let written = revision_of(put.header());
    let entry = http.get_entry("app/a").await?;
    assert_eq!(
        (entry.value.as_slice(), entry.mod_revision as i64),
        (&b"1"[..], written)
    );
    let event = loop {
        match within(
            "the HTTP watcher",
            futures_util::StreamExt::next(&mut watcher),
        )
        .await?
        {
            Some(Ok(kvstore_client::Update::Event(event))) => break event,
            Some(Ok(_)) => continue,
            other => return Err(format!("the HTTP watch ended: {other:?}").into()),
        }
    };
    assert_eq!(
        (event.key.as_str(), event.revision as i64),
        ("app/a", written)
    );

    // And the other way round.
    let http_put = http.put("app/b", "2").await?;
    let got = etcd.get("app/b", None).await?;
    let kv = &got.kvs()[0];
    assert_eq!(
        (kv.value(), kv.mod_revision()),
        (&b"2"[..], http_put.revision as i64)
    );
    assert_eq!(
        (kv.create_revision(), kv.version()),
        (http_put.create_revision as i64, 1)
    );

    // prev_kv answers the value a put replaced.
    let put = etcd
        .put("app/a", "1b", Some(PutOptions::new().with_prev_key()))
        .await?;
    assert_eq!(put.prev_key().map(|kv| kv.value()), Some(&b"1"[..]));
    http.put("app/c", "3").await?;
    http.put("other", "x").await?;

    // A prefix: every key under it, counted, limited, sorted, at a revision.
    let all = etcd
        .get("app/", Some(GetOptions::new().with_prefix()))
        .await?;
    let keys: Vec<&str> = all
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        (keys, all.count(), all.more()),
        (vec!["app/a", "app/b", "app/c"], 3, false)
    );
    let limited = etcd
        .get(
            "app/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_limit(2)
                    .with_sort(SortTarget::Key, SortOrder::Descend),
            ),
        )
        .await?;
    let keys: Vec<&str> = limited
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        (keys, limited.count(), limited.more()),
        (vec!["app/c", "app/b"], 3, true)
    );
    let counted = etcd
        .get(
            "app/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?;
    assert_eq!((counted.kvs().len(), counted.count()), (0, 3));
    let keys_only = etcd
        .get("app/a", Some(GetOptions::new().with_keys_only()))
        .await?;
    assert_eq!(keys_only.kvs()[0].value(), b"");
    let then = etcd
        .get("app/a", Some(GetOptions::new().with_revision(written)))
        .await?;
    assert_eq!(then.kvs()[0].value(), b"1");
    let from_key = etcd
        .get("app/b", Some(GetOptions::new().with_from_key()))
        .await?;
    let keys: Vec<&str> = from_key
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap_or("?"))
        .collect();
    assert_eq!(keys, vec!["app/b", "app/c", "other"]);
    let range = etcd
        .get("app/b", Some(GetOptions::new().with_range("app/c")))
        .await?;
    assert_eq!(range.kvs().len(), 1);

    // A future revision is refused with etcd's message.
    let future = etcd
        .get(
            "app/a",
            Some(GetOptions::new().with_revision(written + 1000)),
        )
        .await
        .expect_err("a future revision");
    assert!(
        future
            .to_string()
            .contains("required revision is a future revision"),
        "{future}"
    );

    // Deletes: one key with its previous value, then a prefix, each at one revision.
    let deleted = etcd
        .delete("app/a", Some(DeleteOptions::new().with_prev_key()))
        .await?;
    assert_eq!(
        (deleted.deleted(), deleted.prev_kvs()[0].value()),
        (1, &b"1b"[..])
    );
    let gone = etcd
        .delete("app/", Some(DeleteOptions::new().with_prefix()))
        .await?;
    assert_eq!(gone.deleted(), 2);
    assert!(http.list_all("app/").await?.is_empty());
    let missing = etcd.delete("app/a", None).await?;
    assert_eq!(missing.deleted(), 0);
    Ok(())
}

/// As in etcd, a new store is at revision 1 before any write, and its first write
/// is revision 2, on both engines: what etcd's clients count on (clientv3's
/// election reads "created before my revision less one", with 0 as no bound).
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_store_is_at_revision_1_and_its_first_write_is_2(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = serve(engine, &[]) else {
        return Ok(());
    };
    let mut etcd = etcd(&server, None).await?;
    let empty = etcd
        .get("app/", Some(GetOptions::new().with_prefix()))
        .await?;
    assert_eq!((revision_of(empty.header()), empty.count()), (1, 0));
    let status = etcd.status().await?;
    assert_eq!(revision_of(status.header()), 1);
    // A watch from revision 1 starts with the first write.
    let mut stream = etcd
        .watch(
            "app/",
            Some(WatchOptions::new().with_prefix().with_start_revision(1)),
        )
        .await?;

    let put = etcd.put("app/a", "1", None).await?;
    assert_eq!(revision_of(put.header()), 2);
    let got = etcd.get("app/a", None).await?;
    let kv = got.kvs().first().ok_or("app/a is missing")?;
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (2, 2, 1)
    );
    let event = loop {
        let message = within("the first write's event", stream.message())
            .await??
            .ok_or("the watch ended")?;
        if let Some(event) = message.events().first() {
            break event.clone();
        }
    };
    assert_eq!(event.kv().map(|kv| kv.mod_revision()), Some(2));
    // Revision 1 stays readable: the store as it was before the write, empty.
    let before = etcd
        .get(
            "app/",
            Some(GetOptions::new().with_prefix().with_revision(1)),
        )
        .await?;
    assert_eq!(before.count(), 0);
    Ok(())
}

/// A campaign whose key is the store's very first write is elected at once: the
/// election service says so, and clientv3's own wait (no contender created at or
/// before its key's revision less one, a bound of 0 meaning none) finds nobody,
/// where it used to find the campaign's own key and wait on itself.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_that_is_the_first_write_is_elected_at_once(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = serve(engine, &[]) else {
        return Ok(());
    };
    let mut etcd = etcd(&server, None).await?;
    // A lease takes no revision: the campaign's key is the first write.
    let lease = etcd.lease_grant(30, None).await?.id();
    let won = within("the campaign", etcd.campaign("primary", "a", lease)).await??;
    let leader = won.leader().ok_or("no leader key")?;
    assert_eq!(leader.rev(), 2, "the first write");
    let now = etcd.leader("primary").await?;
    assert_eq!(now.kv().map(|kv| kv.value()), Some(&b"a"[..]));

    // clientv3's Campaign: waitDeletes(prefix, rev - 1), a read of the last created
    // contender no later than that.
    let before_me = etcd
        .get(
            "primary/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Descend)
                    .with_limit(1)
                    .with_max_create_revision(leader.rev() - 1),
            ),
        )
        .await?;
    assert!(
        before_me.kvs().is_empty(),
        "a contender before the first write: {:?}",
        before_me.kvs()
    );
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_compare_and_answer_as_etcds_do(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = serve(engine, &[]) else {
        return Ok(());
    };
    let mut etcd = etcd(&server, None).await?;
    let put = etcd.put("acct/1", "100", None).await?;
    let at = revision_of(put.header());

    let txn = Txn::new()
        .when([Compare::mod_revision("acct/1", CompareOp::Equal, at)])
        .and_then([
            TxnOp::put("acct/1", "90", None),
            TxnOp::put("acct/2", "10", None),
            TxnOp::get("acct/1", None),
        ])
        .or_else([TxnOp::get("acct/1", None)]);
    let done = etcd.txn(txn.clone()).await?;
    assert!(done.succeeded());
    let written = revision_of(done.header());
    match &done.op_responses()[2] {
        TxnOpResponse::Get(get) => {
            assert_eq!(get.kvs()[0].value(), b"90");
            assert_eq!(get.kvs()[0].mod_revision(), written);
        }
        other => panic!("a get's answer, not {other:?}"),
    }
    // Both writes at one revision.
    let second = etcd.get("acct/2", None).await?;
    assert_eq!(second.kvs()[0].mod_revision(), written);

    // Run again, the compare fails: the failure branch reads.
    let again = etcd.txn(txn).await?;
    assert!(!again.succeeded());
    match &again.op_responses()[0] {
        TxnOpResponse::Get(get) => assert_eq!(get.kvs()[0].value(), b"90"),
        other => panic!("a get's answer, not {other:?}"),
    }

    // A compare on a value and a delete with prev_kv.
    let txn = Txn::new()
        .when([Compare::value("acct/2", CompareOp::Equal, "10")])
        .and_then([TxnOp::delete(
            "acct/2",
            Some(DeleteOptions::new().with_prev_key()),
        )]);
    let done = etcd.txn(txn).await?;
    match &done.op_responses()[0] {
        TxnOpResponse::Delete(delete) => {
            assert_eq!(
                (delete.deleted(), delete.prev_kvs()[0].value()),
                (1, &b"10"[..])
            )
        }
        other => panic!("a delete's answer, not {other:?}"),
    }

    // A read at a past revision inside a transaction: the key as it was then,
    // beside a write. One at a revision still to come refuses the whole
    // transaction, which then writes nothing.
    let txn = Txn::new().and_then([
        TxnOp::get("acct/1", Some(GetOptions::new().with_revision(at))),
        TxnOp::put("acct/3", "1", None),
    ]);
    let done = etcd.txn(txn).await?;
    assert!(done.succeeded());
    match &done.op_responses()[0] {
        TxnOpResponse::Get(get) => assert_eq!(
            (get.kvs()[0].value(), get.kvs()[0].mod_revision()),
            (&b"100"[..], at)
        ),
        other => panic!("a get's answer, not {other:?}"),
    }
    let to_come = revision_of(done.header()) + 10;
    let txn = Txn::new().and_then([
        TxnOp::put("acct/4", "1", None),
        TxnOp::get("acct/1", Some(GetOptions::new().with_revision(to_come))),
    ]);
    let refused = etcd.txn(txn).await.expect_err("a revision to come");
    assert!(
        refused
            .to_string()
            .contains("required revision is a future revision"),
        "{refused}"
    );
    assert!(etcd.get("acct/4", None).await?.kvs().is_empty());
    // As in etcd, only the path taken counts: the same read on the path not taken
    // refuses nothing.
    let txn = Txn::new()
        .when([Compare::value("acct/1", CompareOp::Equal, "90")])
        .and_then([TxnOp::put("acct/4", "1", None)])
        .or_else([TxnOp::get(
            "acct/1",
            Some(GetOptions::new().with_revision(to_come)),
        )]);
    assert!(etcd.txn(txn).await?.succeeded());
    assert_eq!(etcd.get("acct/4", None).await?.kvs()[0].value(), b"1");

    // Over --max-txn-ops: etcd's error.
    let ops: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("many/{i}"), "x", None))
        .collect();
    let refused = etcd
        .txn(Txn::new().and_then(ops))
        .await
        .expect_err("too many ops");
    assert!(
        refused
            .to_string()
            .contains("too many operations in txn request"),
        "{refused}"
    );
    Ok(())
}

/// An event as a watch delivered it: watch id, type, key, previous value, revision.
type Seen = (i64, EventType, String, Vec<u8>, i64);

fn record(message: &etcd_client::WatchResponse, seen: &mut Vec<Seen>) -> Result<(), BoxError> {
    for event in message.events() {
        let kv = event.kv().ok_or("an event without its key")?;
        seen.push((
            message.watch_id(),
            event.event_type(),
            kv.key_str()?.to_string(),
            event
                .prev_kv()
                .map(|p| p.value().to_vec())
                .unwrap_or_default(),
            kv.mod_revision(),
        ));
    }
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_watch_stream_carries_many_watches_of_every_protocols_writes(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = serve(engine, &[]) else {
        return Ok(());
    };
    let http = Client::new(&server.url)?;
    let mut etcd = etcd(&server, None).await?;
    let first = etcd.put("cfg/a", "1", None).await?;
    let first = revision_of(first.header());

    // A prefix watch from the put's revision, with previous values.
    let mut stream = etcd
        .watch(
            "cfg/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(first)
                    .with_prev_key(),
            ),
        )
        .await?;
    let created = within("created", stream.message()).await??.ok_or("ended")?;
    assert!(created.created());
    let prefix_watch = created.watch_id();
    // A second watch on the same stream, of one key, puts only.
    stream
        .watch(
            "cfg/b",
            Some(WatchOptions::new().with_filters([etcd_client::WatchFilterType::NoDelete])),
        )
        .await?;

    let mut seen: Vec<Seen> = Vec::new();
    let mut key_watch = None;
    // The second watch starts with the changes after it is created: write then.
    while key_watch.is_none() {
        let message = within("the second watch", stream.message())
            .await??
            .ok_or("ended")?;
        if message.created() {
            key_watch = Some(message.watch_id());
        }
        record(&message, &mut seen)?;
    }
    let b = http.put("cfg/b", "2").await?;
    http.delete("cfg/b").await?;
    let a = etcd
        .put("cfg/a", "3", None)
        .await
        .map(|put| revision_of(put.header()))?;
    // Wanted: a=1 (history), b put, b delete, a=3 on the prefix watch; b put on
    // the key watch.
    while seen.len() < 5 {
        let message = within("watch events", stream.message())
            .await??
            .ok_or("ended")?;
        record(&message, &mut seen)?;
    }
    let key_watch = key_watch.ok_or("the key watch was not created")?;
    let on = |id: i64| {
        seen.iter()
            .filter(|s| s.0 == id)
            .map(|s| (s.1, s.2.as_str(), s.3.as_slice(), s.4))
            .collect::<Vec<_>>()
    };
    let b = b.revision as i64;
    assert_eq!(
        on(prefix_watch),
        vec![
            (EventType::Put, "cfg/a", &b""[..], first),
            (EventType::Put, "cfg/b", &b""[..], b),
            (EventType::Delete, "cfg/b", &b"2"[..], b + 1),
            (EventType::Put, "cfg/a", &b"1"[..], a),
        ]
    );
    assert_eq!(on(key_watch), vec![(EventType::Put, "cfg/b", &b""[..], b)]);

    // Cancelled, the key watch says so and hears nothing more.
    stream.cancel(key_watch).await?;
    loop {
        let message = within("the cancel", stream.message())
            .await??
            .ok_or("ended")?;
        if message.canceled() {
            assert_eq!(message.watch_id(), key_watch);
            break;
        }
    }
    // A progress request is answered with a revision through which every watch
    // has delivered.
    stream.request_progress().await?;
    let progress = within("progress", stream.message())
        .await??
        .ok_or("ended")?;
    assert!(progress.events().is_empty());
    assert!(revision_of(progress.header()) >= a);
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_granted_kept_alive_and_revoked(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = serve(engine, &[]) else {
        return Ok(());
    };
    let http = Client::new(&server.url)?;
    let mut etcd = etcd(&server, None).await?;
    let lease = etcd.lease_grant(30, None).await?;
    assert!(lease.ttl() >= 30);
    let id = lease.id();
    etcd.put("svc/a", "up", Some(PutOptions::new().with_lease(id)))
        .await?;
    assert_eq!(http.get_entry("svc/a").await?.lease, Some(id as u64));

    let (mut keeper, mut answers) = etcd.lease_keep_alive(id).await?;
    keeper.keep_alive().await?;
    let kept = within("a keep-alive", answers.message())
        .await??
        .ok_or("ended")?;
    assert_eq!((kept.id(), kept.ttl()), (id, 30));

    let ttl = etcd
        .lease_time_to_live(
            id,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await?;
    assert_eq!(ttl.granted_ttl(), 30);
    assert_eq!(ttl.keys(), &[b"svc/a".to_vec()]);

    etcd.lease_revoke(id).await?;
    assert!(etcd.get("svc/a", None).await?.kvs().is_empty());
    // A lease that ended: TTL -1 from TimeToLive, 0 from a keep-alive, etcd's
    // error from a revoke.
    let ttl = etcd.lease_time_to_live(id, None).await?;
    assert_eq!(ttl.ttl(), -1);
    keeper.keep_alive().await?;
    let kept = within("a keep-alive", answers.message())
        .await??
        .ok_or("ended")?;
    assert_eq!(kept.ttl(), 0);
    let revoked = etcd.lease_revoke(id).await.expect_err("revoked already");
    assert!(
        revoked.to_string().contains("requested lease not found"),
        "{revoked}"
    );
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_and_cluster_answer_what_etcds_tools_ask(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = serve(engine, &[]) else {
        return Ok(());
    };
    let mut etcd = etcd(&server, None).await?;
    let put = etcd.put("k", "v", None).await?;
    let status = etcd.status().await?;
    assert!(status.version().starts_with("3."), "{}", status.version());
    assert!(revision_of(status.header()) >= revision_of(put.header()));
    let members = etcd.member_list().await?;
    let urls: Vec<&str> = members.members()[0]
        .client_urls()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(urls, vec![server.etcd_url.as_deref().unwrap_or("?")]);
    etcd.defragment().await?;
    let snapshot = match etcd.snapshot().await {
        Ok(mut stream) => stream.message().await.map(|_| ()),
        Err(e) => Err(e),
    };
    let refused = snapshot.expect_err("no etcd snapshots");
    assert!(refused.to_string().contains("kv export"), "{refused}");
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_the_access_file_authenticate_and_keep_to_their_prefixes(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("access.toml");
    std::fs::write(
        &file,
        "[roles.app]\nread = [\"app/\"]\nwrite = [\"app/\"]\n\
         [[tokens]]\nname = \"deploy\"\nrole = \"app\"\ntoken = \"s3cret\"\n",
    )?;
    let access = file.to_string_lossy().into_owned();
    let Some(server) = serve(engine, &["--access-file", &access]) else {
        return Ok(());
    };
    let mut deploy = etcd(
        &server,
        Some(ConnectOptions::new().with_user("deploy", "s3cret")),
    )
    .await?;
    deploy.put("app/x", "1", None).await?;
    assert_eq!(deploy.get("app/x", None).await?.kvs()[0].value(), b"1");
    let denied = deploy
        .put("other", "1", None)
        .await
        .expect_err("outside app/");
    assert!(denied.to_string().contains("permission denied"), "{denied}");
    let denied = deploy
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect_err("every key");
    assert!(denied.to_string().contains("permission denied"), "{denied}");

    let wrong = etcd(
        &server,
        Some(ConnectOptions::new().with_user("deploy", "nope")),
    )
    .await
    .err()
    .ok_or("a wrong password authenticated")?;
    assert!(
        wrong.to_string().contains("authentication failed"),
        "{wrong}"
    );
    let mut anonymous = etcd(&server, None).await?;
    assert!(anonymous.get("app/x", None).await.is_err());
    Ok(())
}

/// Waits until `count` keys lie under `prefix` (contenders in a lock's or an
/// election's line), watching for them.
async fn contenders(etcd: &mut EtcdClient, prefix: &str, count: usize) -> TestResult {
    let now = etcd
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    if now.kvs().len() >= count {
        return Ok(());
    }
    let from = revision_of(now.header()) + 1;
    let mut stream = etcd
        .watch(
            prefix,
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await?;
    loop {
        within("a contender", stream.message())
            .await??
            .ok_or("ended")?;
        let now = etcd
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?;
        if now.count() >= count as i64 {
            return Ok(());
        }
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_taken_in_turn(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = serve(engine, &[]) else {
        return Ok(());
    };
    let mut etcd = etcd(&server, None).await?;
    let first = etcd.lease_grant(30, None).await?.id();
    let second = etcd.lease_grant(30, None).await?.id();
    let held = etcd
        .lock(
            "jobs",
            Some(etcd_client::LockOptions::new().with_lease(first)),
        )
        .await?;
    assert!(held.key().starts_with(b"jobs/"));

    // The second contender waits in line while the first holds the lock.
    let mut other = etcd.clone();
    let mut waiting = tokio::spawn(async move {
        other
            .lock(
                "jobs",
                Some(etcd_client::LockOptions::new().with_lease(second)),
            )
            .await
    });
    contenders(&mut etcd, "jobs/", 2).await?;
    assert!(futures_util::FutureExt::now_or_never(&mut waiting).is_none());

    etcd.unlock(held.key()).await?;
    let taken = within("the second lock", waiting).await???;
    assert_eq!(taken.key(), format!("jobs/{second:x}").as_bytes());
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_have_one_leader_at_a_time_and_observers_follow_it(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = serve(engine, &[]) else {
        return Ok(());
    };
    let mut etcd = etcd(&server, None).await?;
    let first = etcd.lease_grant(30, None).await?.id();
    let second = etcd.lease_grant(30, None).await?.id();
    let won = etcd.campaign("primary", "a", first).await?;
    let leader = won.leader().ok_or("no leader key")?.clone();
    let mut observer = etcd.observe("primary").await?;
    let seen = within("the leader", observer.message())
        .await??
        .ok_or("ended")?;
    assert_eq!(seen.kv().map(|kv| kv.value()), Some(&b"a"[..]));

    let mut other = etcd.clone();
    let mut waiting = tokio::spawn(async move { other.campaign("primary", "b", second).await });
    contenders(&mut etcd, "primary/", 2).await?;
    assert!(futures_util::FutureExt::now_or_never(&mut waiting).is_none());

    etcd.proclaim(
        "a2",
        Some(etcd_client::ProclaimOptions::new().with_leader(leader.clone())),
    )
    .await?;
    let seen = within("the proclaimed value", observer.message())
        .await??
        .ok_or("ended")?;
    assert_eq!(seen.kv().map(|kv| kv.value()), Some(&b"a2"[..]));

    etcd.resign(Some(
        etcd_client::ResignOptions::new().with_leader(leader.clone()),
    ))
    .await?;
    within("the second campaign", waiting).await???;
    let seen = within("the new leader", observer.message())
        .await??
        .ok_or("ended")?;
    assert_eq!(seen.kv().map(|kv| kv.value()), Some(&b"b"[..]));
    let now = etcd.leader("primary").await?;
    assert_eq!(now.kv().map(|kv| kv.value()), Some(&b"b"[..]));
    // The old leader key no longer leads.
    let refused = etcd
        .proclaim(
            "a3",
            Some(etcd_client::ProclaimOptions::new().with_leader(leader)),
        )
        .await
        .expect_err("not the leader");
    assert!(refused.to_string().contains("not leader"), "{refused}");
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_drops_the_past_for_reads_and_watches(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = serve(engine, &[]) else {
        return Ok(());
    };
    let mut etcd = etcd(&server, None).await?;
    let first = revision_of(etcd.put("k", "1", None).await?.header());
    etcd.put("k", "2", None).await?;
    let last = revision_of(etcd.put("k", "3", None).await?.header());
    etcd.compact(last, None).await?;

    let refused = etcd
        .get("k", Some(GetOptions::new().with_revision(first)))
        .await
        .expect_err("compacted");
    assert!(
        refused
            .to_string()
            .contains("required revision has been compacted"),
        "{refused}"
    );
    let now = etcd
        .get("k", Some(GetOptions::new().with_revision(last)))
        .await?;
    assert_eq!(now.kvs()[0].value(), b"3");

    // A watch from before it is created, then cancelled with where to start.
    let mut stream = etcd
        .watch("k", Some(WatchOptions::new().with_start_revision(first)))
        .await?;
    let mut cancelled = None;
    while cancelled.is_none() {
        let message = within("the cancel", stream.message())
            .await??
            .ok_or("ended")?;
        if message.canceled() {
            cancelled = Some(message.compact_revision());
        }
    }
    let compact_revision = cancelled.unwrap_or(0);
    assert!(
        compact_revision > first && compact_revision <= last,
        "{compact_revision}"
    );
    // From there, the watch replays what is left.
    let mut stream = etcd
        .watch(
            "k",
            Some(WatchOptions::new().with_start_revision(compact_revision)),
        )
        .await?;
    loop {
        let message = within("the replay", stream.message())
            .await??
            .ok_or("ended")?;
        if let Some(event) = message.events().last() {
            assert_eq!(event.kv().map(|kv| kv.value()), Some(&b"3"[..]));
            break;
        }
    }

    // And the leases that exist are listed.
    let a = etcd.lease_grant(30, None).await?.id();
    let b = etcd.lease_grant(30, None).await?.id();
    let listed: Vec<i64> = etcd
        .leases()
        .await?
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert!(listed.contains(&a) && listed.contains(&b), "{listed:?}");
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_are_not_utf8_come_back_as_they_were_sent(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = serve(engine, &[]) else {
        return Ok(());
    };
    let mut etcd = etcd(&server, None).await?;
    let key = b"bin/\xff\x00\xc3".to_vec();
    etcd.put(key.clone(), b"\x01\x02".to_vec(), None).await?;
    etcd.put("bin/text", "t", None).await?;
    let got = etcd.get(key.clone(), None).await?;
    assert_eq!(
        (got.kvs()[0].key(), got.kvs()[0].value()),
        (&key[..], &b"\x01\x02"[..])
    );
    let listed = etcd
        .get("bin/", Some(GetOptions::new().with_prefix()))
        .await?;
    let keys: Vec<&[u8]> = listed.kvs().iter().map(|kv| kv.key()).collect();
    assert!(
        keys.contains(&&key[..]) && keys.contains(&&b"bin/text"[..]),
        "{keys:?}"
    );
    // A range that starts inside the bytes that are not UTF-8.
    let from = etcd
        .get(
            b"bin/\xff".to_vec(),
            Some(GetOptions::new().with_range(b"bin/\xff\x01".to_vec())),
        )
        .await?;
    assert_eq!(from.kvs().len(), 1);
    let deleted = etcd.delete(key.clone(), None).await?;
    assert_eq!(deleted.deleted(), 1);
    Ok(())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_transactions_decide_every_compare_before_any_op(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = serve(engine, &[]) else {
        return Ok(());
    };
    let mut etcd = etcd(&server, None).await?;
    etcd.put("n/a", "1", None).await?;
    // The nested compare reads n/b as the transaction found it (absent), not as
    // the put before it in the branch left it: etcd's order.
    let nested = Txn::new()
        .when([Compare::version("n/b", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("n/c", "new", None)])
        .or_else([TxnOp::put("n/c", "old", None)]);
    let txn = Txn::new()
        .when([Compare::value("n/a", CompareOp::Equal, "1")])
        .and_then([TxnOp::put("n/b", "x", None), TxnOp::txn(nested)])
        .or_else([TxnOp::get("n/a", None)]);
    let done = etcd.txn(txn).await?;
    assert!(done.succeeded());
    let written = revision_of(done.header());
    match &done.op_responses()[1] {
        TxnOpResponse::Txn(inner) => {
            assert!(inner.succeeded());
            assert!(matches!(inner.op_responses()[0], TxnOpResponse::Put(_)));
        }
        other => panic!("a nested transaction's answer, not {other:?}"),
    }
    let c = etcd.get("n/c", None).await?;
    assert_eq!(
        (c.kvs()[0].value(), c.kvs()[0].mod_revision()),
        (&b"new"[..], written)
    );
    let b = etcd.get("n/b", None).await?;
    assert_eq!(b.kvs()[0].mod_revision(), written);
    Ok(())
}

/// `Hash` and `HashKV` (what `etcdctl endpoint hashkv` asks) hash the keys as
/// they were at a revision: the same answer for the same revision however the
/// store moved on since, another one for another store state.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashes_name_the_store_at_a_revision(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> TestResult {
    let Some(server) = serve(engine, &[]) else {
        return Ok(());
    };
    let mut etcd = etcd(&server, None).await?;
    etcd.put("h/a", "1", None).await?;
    let first = revision_of(etcd.put("h/b", "2", None).await?.header());
    let then = etcd.hash_kv(first).await?;
    assert_eq!(then.hash_revision(), first);
    assert_eq!(etcd.hash_kv(first).await?.hash(), then.hash());

    let now = revision_of(etcd.put("h/a", "3", None).await?.header());
    assert_eq!(etcd.hash_kv(first).await?.hash(), then.hash());
    let current = etcd.hash_kv(0).await?;
    assert_eq!(current.hash_revision(), now);
    assert_ne!(current.hash(), then.hash());
    assert_eq!(etcd.hash().await?.hash(), current.hash());
    Ok(())
}
