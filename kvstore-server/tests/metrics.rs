//! `/metrics`: Prometheus text with request, watch and store figures.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use kvstore_client::Client;
use support::TestServer;

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_requests_watchers_and_the_store() -> Result<(), Box<dyn std::error::Error>>
{
    let server = TestServer::start();
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
    assert_eq!(sample(&text, "kvstore_store_revision"), Some(6.0));
    assert_eq!(sample(&text, "kvstore_keys"), Some(4.0));
    assert_eq!(sample(&text, "kvstore_watchers"), Some(1.0));
    assert!(sample(&text, "kvstore_disk_bytes").is_some_and(|b| b > 0.0));
    assert!(sample(&text, "kvstore_commit_group_size_count").is_some_and(|n| n >= 1.0));
    assert!(sample(&text, "kvstore_flush_seconds_count").is_some_and(|n| n >= 1.0));
    assert!(sample(&text, "kvstore_watch_events_sent_total").is_some_and(|n| n >= 1.0));
    assert!(text.contains("kvstore_http_request_duration_seconds_bucket"));
    Ok(())
}
