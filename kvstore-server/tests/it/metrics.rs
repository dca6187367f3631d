//! `/metrics`: Prometheus text with request, watch and store figures.

use crate::support;

use std::time::Duration;

use futures_util::StreamExt;
use kvstore_client::Client;
use rstest::rstest;
use support::{Engine, EMPTY_REVISION};

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_requests_watchers_and_the_store(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> Result<(), Box<dyn std::error::Error>> {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    let mut watch = Box::pin(client.watch_with(kvstore_client::WatchOptions {
        start_revision: Some(1),
        ..Default::default()
    }));
    for i in 0..5 {
        client.put(&format!("k{i}"), "v").await?;
    }
    client.delete("k0").await?;
    assert!(client.get("missing").await.is_err());
    // The watch is open once it has delivered the first change.
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await?
        .ok_or("watch ended")??;

    let text = reqwest::get(format!("{}/metrics", server.url))
        .await?
        .text()
        .await?;
    let put = r#"kvstore_http_requests_total{route="/v1/kv/{key:.*}",method="PUT",status="200"}"#;
    assert_eq!(sample(&text, put), Some(5.0), "{text}");
    let missing =
        r#"kvstore_http_requests_total{route="/v1/kv/{key:.*}",method="GET",status="404"}"#;
    assert_eq!(sample(&text, missing), Some(1.0), "{text}");
    let revision = EMPTY_REVISION + 6;
    assert_eq!(
        sample(&text, "kvstore_store_revision"),
        Some(revision as f64)
    );
    assert_eq!(sample(&text, "kvstore_keys"), Some(4.0));
    assert_eq!(sample(&text, "kvstore_watchers"), Some(1.0));
    // On etcd, the database size of the member that answered.
    assert!(sample(&text, "kvstore_disk_bytes").is_some_and(|b| b > 0.0));
    // The embedded store's writer: its commit groups and flushes. etcd commits
    // for us (and reports its own figures on its /metrics), so none of these.
    let writer = [
        sample(&text, "kvstore_commit_group_size_count"),
        sample(&text, "kvstore_flush_seconds_count"),
    ];
    match engine {
        Engine::Sled => assert!(writer.iter().all(|n| n.is_some_and(|n| n >= 1.0)), "{text}"),
        Engine::Etcd => assert_eq!(writer, [None; 2], "{text}"),
    }
    assert!(sample(&text, "kvstore_watch_events_sent_total").is_some_and(|n| n >= 1.0));
    assert!(text.contains("kvstore_http_request_duration_seconds_bucket"));
    Ok(())
}

async fn scrape(url: &str) -> Result<String, Box<dyn std::error::Error>> {
    Ok(reqwest::get(format!("{url}/metrics")).await?.text().await?)
}

/// A server nobody scrapes still folds its histogram samples into their buckets:
/// however many requests it serves, only a fixed number of samples wait.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_samples_do_not_pile_up_without_a_scrape(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> Result<(), Box<dyn std::error::Error>> {
    use kvstore_server::metrics::{DRAIN_EVERY, MAX_PENDING_SAMPLES};
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let client = Client::new(&server.url)?;
    client.put("k", "v").await?;
    // A scrape drains everything: from here on the count starts again.
    scrape(&server.url).await?;

    // A few requests: each leaves its latency sample (and a put its commit's).
    let few = 100;
    for _ in 0..few {
        client.get("k").await?;
    }
    let text = scrape(&server.url).await?;
    let pending = sample(&text, "kvstore_metrics_pending_samples").ok_or("no pending gauge")?;
    assert!(
        (few as f64) <= pending && pending < DRAIN_EVERY as f64,
        "{pending} samples pending after {few} requests"
    );

    // Many more requests than a drain's worth, with no scrape in between.
    let many = 3 * MAX_PENDING_SAMPLES;
    let mut gets = futures_util::stream::iter(0..many)
        .map(|_| client.get("k"))
        .buffer_unordered(8);
    while let Some(got) = gets.next().await {
        got?;
    }
    let text = scrape(&server.url).await?;
    let pending = sample(&text, "kvstore_metrics_pending_samples").ok_or("no pending gauge")?;
    // One more sample a thread may land while another drains.
    assert!(
        pending <= (MAX_PENDING_SAMPLES + 16) as f64,
        "{pending} samples pending after {many} requests without a scrape"
    );
    // Drained samples are counted, not lost.
    let count =
        r#"kvstore_http_request_duration_seconds_count{route="/v1/kv/{key:.*}",method="GET"}"#;
    assert_eq!(sample(&text, count), Some((few + many) as f64), "{text}");
    Ok(())
}

/// Made-up methods share one `other` series: each label set is kept for good, so
/// a client inventing methods must not grow the server's metrics.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_share_one_series(
    #[values(Engine::Sled, Engine::Etcd)] engine: Engine,
) -> Result<(), Box<dyn std::error::Error>> {
    let Some(server) = support::serve(engine, &[]) else {
        return Ok(());
    };
    let http = reqwest::Client::new();
    let methods = 50;
    for i in 0..methods {
        let method = reqwest::Method::from_bytes(format!("M{i}").as_bytes())?;
        let res = http
            .request(method, format!("{}/v1/kv/k", server.url))
            .send()
            .await?;
        assert_eq!(res.status(), 405);
    }
    let text = scrape(&server.url).await?;
    assert!(!text.contains("method=\"M"), "{text}");
    let other =
        r#"kvstore_http_requests_total{route="/v1/kv/{key:.*}",method="other",status="405"}"#;
    assert_eq!(sample(&text, other), Some(methods as f64), "{text}");
    Ok(())
}
