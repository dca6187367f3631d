//! Calls to etcd with a deadline per attempt and retries where they are safe.
//!
//! The crate routes calls to every endpoint, dead members included, and a call in
//! flight when its member dies (or loses the leader) fails or hangs until a server
//! timeout. So every call here gets [`ATTEMPT`] per try; a read (which changes
//! nothing) is tried again on any transport or availability error until
//! [`DEADLINE`]; a write only when the failure proves etcd never took it
//! ([`never_taken`]), since otherwise it may have been applied: sent again, a
//! delete applied by the first try would be answered "not found", a put under a
//! condition "precondition failed". Calls go to the leader when it is known
//! (`route`).

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
        // etcd's answer, not a lost one: the lease is gone (a keep-alive answered
        // with TTL 0, which the crate turns into this error).
        etcd_client::Error::LeaseKeepAliveError(message) => !message.contains("lease not found"),
        _ => true,
    }
}

/// etcd's refusals of a call made before it is proposed to raft: the call changed
/// nothing. "no leader" is the answer of a member without a leader to a call that
/// requires one (every call here does); "too many requests" that of a member whose
/// applying lags its log; a dropped proposal never entered the log.
const REFUSED_BEFORE_PROPOSAL: [&str; 3] = [
    "etcdserver: no leader",
    "etcdserver: too many requests",
    "raft proposal dropped",
];

/// Whether the failure proves etcd never took the call: no connection to the
/// member could be made (tonic's `ConnectError`, found by type in the error's
/// causes, not by words in its text), or etcd refused it before proposing it.
/// Only then is a write sent again. Anything else may come after etcd applied it:
/// a connection that broke once the call was sent ("transport error", "h2
/// protocol error", hyper's "connection error"), a timeout, "leader changed",
/// "request timed out", "request timed out, possibly due to previous leader
/// failure"; such a write is answered as of unknown outcome, never tried again.
fn never_taken(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return false;
    };
    if REFUSED_BEFORE_PROPOSAL.contains(&status.message()) {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(error) = cause {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Whether the failure may pass on a retry, for a call of kind `retry`: the one
/// rule for which failures a call is tried again after.
fn retryable(e: &etcd_client::Error, retry: Retry) -> bool {
    never_taken(e) || (retry == Retry::Read && out_of_reach(e))
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
                    (Error::Unavailable(m), Retry::Write) if never_taken(&e) => {
                        Error::Unavailable(format!("{m} (during {what}; it was not applied)"))
                    }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tonic::{Code, Status};

    use super::*;

    fn status(code: Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(Status::new(code, message))
    }

    /// A cause around another, as tonic's transport error wraps a connect error.
    #[derive(Debug)]
    struct Around(Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Around {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }

    impl std::error::Error for Around {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    /// A call whose connection was refused, as tonic reports it: `Unavailable`,
    /// its `ConnectError` among the causes.
    fn refused_connection() -> etcd_client::Error {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let connect = tonic::ConnectError(Box::new(refused));
        etcd_client::Error::GRpcStatus(Status::from_error(Box::new(Around(Box::new(connect)))))
    }

    /// Failures after which etcd may have applied the write: etcd's own (the codes
    /// and words of etcd 3.4's rpctypes) and the client's when the connection
    /// broke after the call left (tonic's and hyper's words).
    const MAY_HAVE_BEEN_APPLIED: [(Code, &str); 10] = [
        (Code::Unavailable, "etcdserver: leader changed"),
        (Code::Unavailable, "etcdserver: request timed out"),
        (
            Code::Unavailable,
            "etcdserver: request timed out, possibly due to previous leader failure",
        ),
        (
            Code::Unavailable,
            "etcdserver: request timed out, possibly due to connection lost",
        ),
        (Code::Unavailable, "etcdserver: server stopped"),
        (Code::DeadlineExceeded, "context deadline exceeded"),
        (Code::Unknown, "transport error"),
        (Code::Unknown, "connection error"),
        (
            Code::Internal,
            "h2 protocol error: error reading a body from connection",
        ),
        // Words about a refused connection prove nothing by themselves (here a
        // member's own, about a peer): only the connect error's type does.
        (
            Code::Unavailable,
            "connection error: desc = \"transport: Error while dialing dial tcp \
             127.0.0.1:2380: connect: Connection refused\"",
        ),
    ];

    #[test]
    fn a_write_is_sent_again_only_after_a_failure_that_proves_etcd_never_took_it() {
        for (code, message) in MAY_HAVE_BEEN_APPLIED {
            let e = status(code, message);
            assert!(!never_taken(&e), "{message}");
            assert!(!retryable(&e, Retry::Write), "{message}");
        }
        for e in [
            refused_connection(),
            status(Code::Unavailable, "etcdserver: no leader"),
            status(Code::ResourceExhausted, "etcdserver: too many requests"),
            status(Code::Unknown, "raft proposal dropped"),
        ] {
            assert!(retryable(&e, Retry::Write), "{e}");
            assert!(retryable(&e, Retry::Read), "{e}");
        }
        // A read changes nothing: it goes on after a lost member too.
        let lost = status(Code::Unavailable, "etcdserver: leader changed");
        assert!(retryable(&lost, Retry::Read));
    }

    /// A connection to nothing: the calls below never use it.
    async fn connection() -> Connection {
        let endpoints = ["http://127.0.0.1:9".to_string()];
        Connection::open(&endpoints, ConnectOptions::new())
            .await
            .expect("a client connects lazily")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_write_that_may_have_been_applied_is_sent_once_and_answered_unknown() {
        let connection = connection().await;
        for (code, message) in MAY_HAVE_BEEN_APPLIED {
            let tries = AtomicUsize::new(0);
            let answer: Result<(), Error> = connection
                .call("a delete", Retry::Write, |_| {
                    tries.fetch_add(1, Ordering::Relaxed);
                    async move { Err(status(code, message)) }
                })
                .await;
            assert_eq!(tries.load(Ordering::Relaxed), 1, "{message}: sent once");
            match answer {
                Err(Error::Unavailable(m)) => assert!(
                    m.contains(message) && m.contains("may or may not have been applied"),
                    "{message}: {m}"
                ),
                other => panic!("{message}: expected storage_unavailable, got {other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_write_etcd_never_took_is_sent_again() {
        let connection = connection().await;
        let tries = AtomicUsize::new(0);
        let answer = connection
            .call("a delete", Retry::Write, |_| {
                let n = tries.fetch_add(1, Ordering::Relaxed);
                async move {
                    match n {
                        0 => Err(refused_connection()),
                        1 => Err(status(Code::Unavailable, "etcdserver: no leader")),
                        _ => Ok(7),
                    }
                }
            })
            .await;
        assert_eq!(answer, Ok(7));
        assert_eq!(tries.load(Ordering::Relaxed), 3);
    }
}
