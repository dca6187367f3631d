//! Leader election with a lock: every instance asks for the same lock, one holds
//! it and does the leader's work, the others wait in line. The lock is held on a
//! lease the SDK keeps alive; if the leader dies, its lease runs out and the next
//! instance takes over (after at most the lease's TTL).
//!
//! ```sh
//! cargo run -p kvstore-client --example leader -- worker-1 &
//! cargo run -p kvstore-client --example leader -- worker-2    # waits, then leads
//! ```

use std::time::Duration;

use kvstore_client::Client;

/// How long a dead leader keeps the lock, in seconds.
const TTL: u64 = 5;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KV_URL").unwrap_or_else(|_| "http://localhost:5000".into());
    let name = std::env::args().nth(1).unwrap_or_else(|| "worker".into());
    let client = Client::new(&url)?;

    println!("{name}: waiting to lead");
    let guard = client.lock_with_ttl("election/report-job", TTL).await?;
    println!("{name}: leading");
    // The leader's work: here, announcing itself every second, five times.
    for round in 1..=5 {
        client
            .put("election/leader", format!("{name} (round {round})"))
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    guard.unlock().await?;
    println!("{name}: stepped down");
    Ok(())
}
