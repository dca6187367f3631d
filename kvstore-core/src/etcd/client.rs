//! Calls to etcd with a deadline per attempt and retries where they are safe.
//!
//! The crate routes calls to every endpoint, dead members included, and a call in
//! flight when its member dies (or loses the leader) fails or hangs until a server
//! timeout. So every call here gets [`ATTEMPT`] per try; a read (which changes
//! nothing) is tried again on any transport or availability error until
//! [`DEADLINE`]; a write only when the error says it never reached a member (a
//! refused connection), since otherwise it may have been applied. Calls go to the
//! leader when it is known (`route`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::time::{sleep, timeout, Instant};

use super::route::Members;
use crate::storage::Error;
use crate::txn::TxnError;

/// Longest one try of a call may take.
const ATTEMPT: Duration = Duration::from_secs(2);
/// Longest a call may take, retries included.
const DEADLINE: Duration = Duration::from_secs(5);

/// Whether a call may be repeated after a failure whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A read: always safe to repeat.
    Read,
    /// A write: repeated only when it never reached etcd.
    Write,
}

/// What etcd said, in our terms.
pub fn error(e: &etcd_client::Error) -> Error {
    if let etcd_client::Error::GRpcStatus(status) = e {
        let message = status.message();
        if message.contains("required revision has been compacted") {
            return Error::Compacted {
                requested: 0,
                oldest: 0,
            };
        }
        // Both refused before they are proposed: nothing was applied.
        if message.contains("request is too large") {
            return Error::RequestTooLarge(format!(
                "etcd: {message} (etcd's own --max-request-bytes, 1.5 MiB by default, is below \
                 what this server's --max-value-bytes lets through)"
            ));
        }
        if message.contains("too many operations in txn request") {
            return Error::InvalidTxn(TxnError::OverStoreLimit(format!(
                "etcd: {message} (etcd's own --max-txn-ops, 128 by default, is below this server's)"
            )));
        }
        return Error::Unavailable(format!("etcd: {message}"));
    }
    Error::Unavailable(format!("etcd: {e}"))
}

/// Whether the failure says the member called is gone or cut off (not an answer to
/// the call itself): a read may then be tried again, on the leader found next.
fn out_of_reach(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Aborted
                | tonic::Code::Cancelled
        ),
        etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => false,
        _ => true,
    }
}

/// Whether the failure says the call never reached a member (a write may then be
/// sent again).
fn not_sent(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("tcp connect error")
        || text.contains("Connection refused")
        || text.contains("error trying to connect")
        || text.contains("connection error")
}

/// Whether the failure may pass on a retry, for a call of kind `retry`.
fn retryable(e: &etcd_client::Error, retry: Retry) -> bool {
    match retry {
        Retry::Read => out_of_reach(e),
        Retry::Write => not_sent(e),
    }
}

/// The connection to the cluster: a client that balances over every endpoint, and
/// one to the leader's.
#[derive(Clone)]
pub struct Connection {
    members: Arc<Members>,
}

impl Connection {
    /// Connects to `endpoints`. A cluster that does not answer yet is no error:
    /// calls fail (and are retried) until it does.
    pub async fn open(endpoints: &[String], options: ConnectOptions) -> Result<Connection, Error> {
        let options = options
            .with_connect_timeout(ATTEMPT)
            .with_keep_alive(Duration::from_secs(5), ATTEMPT)
            // A member cut off from the others refuses at once, instead of
            // answering (or watching) on its own.
            .with_require_leader(true);
        let deadline = Instant::now() + DEADLINE;
        loop {
            match timeout(ATTEMPT, Client::connect(endpoints, Some(options.clone()))).await {
                Ok(Ok(client)) => {
                    return Ok(Connection {
                        members: Members::start(endpoints, options, client),
                    })
                }
                Ok(Err(
                    e @ (etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_)),
                )) => return Err(Error::Unavailable(format!("etcd: {e}"))),
                Ok(Err(e)) if Instant::now() >= deadline => return Err(error(&e)),
                Err(_) if Instant::now() >= deadline => {
                    return Err(Error::Unavailable(
                        "etcd: no member answered the connection".into(),
                    ))
                }
                _ => sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The members, for a call that stays open (a watch stream).
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// Runs `call` with a deadline per try, retrying as `retry` allows until
    /// [`DEADLINE`]. `what` names the call in errors.
    pub async fn call<T, F, Fut>(&self, what: &str, retry: Retry, mut call: F) -> Result<T, Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + DEADLINE;
        let mut pause = Duration::from_millis(20);
        loop {
            let target = self.members.target();
            let client = self.members.client(target).await;
            let answer = timeout(ATTEMPT, call(client)).await;
            if answer
                .as_ref()
                .map_or(true, |a| a.as_ref().is_err_and(out_of_reach))
            {
                self.members.failed(target);
            }
            let failure = match answer {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) if retryable(&e, retry) && Instant::now() + pause < deadline => {
                    log::debug!("etcd {what} failed, trying again: {e}");
                    None
                }
                Ok(Err(e)) => Some(match (error(&e), retry) {
                    (Error::Unavailable(m), Retry::Write) => Error::Unavailable(format!(
                        "{m} (during {what}; the write may or may not have been applied)"
                    )),
                    (other, _) => other,
                }),
                Err(_) if retry == Retry::Read && Instant::now() + pause < deadline => None,
                Err(_) => Some(Error::Unavailable(match retry {
                    Retry::Read => format!("etcd: no answer to {what} in time"),
                    Retry::Write => format!(
                        "etcd: no answer to {what} in time; the write may or may not have been applied"
                    ),
                })),
            };
            if let Some(error) = failure {
                return Err(error);
            }
            sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}
