//! A counter that many programs increment at once without losing an increment:
//! read it, write the next value only if nobody wrote since (compare-and-swap on
//! the key's `mod_revision`), and start again when somebody did.
//!
//! ```sh
//! cargo run -p kvstore-client --example cas_counter -- counters/visits 100
//! ```

use kvstore_client::{Client, Condition, Error};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KV_URL").unwrap_or_else(|_| "http://localhost:5000".into());
    let key = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "counters/visits".into());
    let times: u32 = std::env::args()
        .nth(2)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(10);
    let client = Client::new(&url)?;

    let mut conflicts = 0;
    for _ in 0..times {
        loop {
            let (current, condition) = match client.get_entry(&key).await {
                Ok(entry) => (
                    String::from_utf8_lossy(&entry.value).parse::<u64>()?,
                    Condition::ModRevision(entry.mod_revision),
                ),
                Err(Error::NotFound { .. }) => (0, Condition::Absent),
                Err(e) => return Err(e.into()),
            };
            match client
                .put_if(&key, (current + 1).to_string(), condition)
                .await
            {
                Ok(_) => break,
                // Someone else incremented it first: read again.
                Err(Error::PreconditionFailed { .. }) => conflicts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    let value = client.get(&key).await?;
    println!(
        "{key} = {} ({times} increments, {conflicts} retried after a conflict)",
        String::from_utf8_lossy(&value)
    );
    Ok(())
}
