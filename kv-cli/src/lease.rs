//! `kv lease ...` and `kv lock NAME -- CMD ...`: leases and locks on them.

use std::io::Write;
use std::process::ExitStatus;

use anyhow::Context;
use clap::{Args, Subcommand};
use kvstore_client::{Client, LeaseLost};

/// A duration in whole seconds: `30`, `30s`, `5m`, `2h`.
pub fn seconds(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 5m or 2h"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// `kv lease ...`
#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease of TTL (e.g. 30s, 5m) and print its id.
    Grant {
        /// How long the lease lives without a keep-alive.
        #[arg(value_parser = seconds)]
        ttl: u64,
    },
    /// Keep lease ID alive until Ctrl-C (exits 5 if the lease is lost).
    Keepalive {
        /// The lease id.
        id: u64,
        /// One keep-alive, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Revoke lease ID: its keys are deleted, at one revision.
    Revoke {
        /// The lease id.
        id: u64,
    },
    /// Print the TTL left of lease ID, its granted TTL and its keys.
    Ttl {
        /// The lease id.
        id: u64,
    },
}

/// `kv lock NAME [--ttl T] [-- CMD ARGS...]`
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name (a key prefix: its waiters' keys go under NAME/).
    pub name: String,
    /// TTL of the lock's lease: how long the lock stays held after this process
    /// dies without releasing it.
    #[arg(long, env = "KV_LOCK_TTL", value_parser = seconds, default_value = "10s")]
    pub ttl: u64,
    /// The command to run holding the lock; kv exits with its exit code. Without
    /// one, kv prints the holder's key and holds the lock until Ctrl-C.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// A command's end that sets kv's own exit code (with nothing more to print).
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the command exited with {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// The lease was lost while kv held it: exit code 5.
#[derive(Debug)]
pub struct Lost(pub LeaseLost);

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lease lost: {}", self.0)
    }
}

impl std::error::Error for Lost {}

pub async fn lease(
    client: &Client,
    command: LeaseCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        LeaseCommand::Grant { ttl } => {
            let lease = client.grant(ttl).await?;
            if json {
                crate::output::print_json(out, &lease)?;
            } else {
                writeln!(out, "{}", lease.id)?;
            }
        }
        LeaseCommand::Keepalive { id, once: true } => {
            let lease = client.keep_alive_once(id).await?;
            if json {
                crate::output::print_json(out, &lease)?;
            } else {
                writeln!(out, "lease {id} kept alive for {}s", lease.ttl)?;
            }
        }
        LeaseCommand::Keepalive { id, once: false } => {
            let lease = client.keep_alive_once(id).await?;
            writeln!(
                out,
                "lease {id} kept alive (TTL {}s); Ctrl-C to stop",
                lease.ttl
            )?;
            out.flush()?;
            let alive = client.keep_alive(lease);
            tokio::select! {
                lost = alive.lost() => return Err(Lost(lost).into()),
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        LeaseCommand::Revoke { id } => {
            let result = client.revoke(id).await?;
            if json {
                crate::output::print_json(out, &result)?;
            } else {
                writeln!(out, "revoked (revision {})", result.revision)?;
            }
        }
        LeaseCommand::Ttl { id } => {
            let info = client.lease(id).await?;
            if json {
                crate::output::print_json(out, &info)?;
            } else {
                writeln!(
                    out,
                    "lease {id}: {}s left of {}s",
                    info.ttl, info.granted_ttl
                )?;
                for key in info.keys {
                    writeln!(out, "{key}")?;
                }
            }
        }
    }
    Ok(())
}

pub async fn lock(client: &Client, args: LockArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let guard = client
        .lock_with_ttl(&args.name, args.ttl)
        .await
        .with_context(|| format!("taking the lock {:?}", args.name))?;
    let Some((program, rest)) = args.command.split_first() else {
        writeln!(out, "{}", guard.key())?;
        out.flush()?;
        let lost = tokio::select! {
            lost = guard.lost() => Some(lost),
            _ = tokio::signal::ctrl_c() => None,
        };
        return match lost {
            Some(lost) => Err(Lost(lost).into()),
            None => Ok(guard.unlock().await?),
        };
    };
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {program:?}"))?;
    let ended = tokio::select! {
        status = child.wait() => Ok(status.with_context(|| format!("waiting for {program:?}"))?),
        lost = guard.lost() => Err(lost),
    };
    match ended {
        Ok(status) => {
            guard.unlock().await?;
            match exit_code(status) {
                0 => Ok(()),
                code => Err(Exit(code).into()),
            }
        }
        Err(lost) => {
            // Another may hold the lock now: the command must not go on.
            let _ = child.kill().await;
            Err(Lost(lost).into())
        }
    }
}

/// The exit code of a finished child: its own, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code).unwrap_or(1);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return u8::try_from(128 + signal).unwrap_or(1);
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_seconds() {
        assert_eq!(seconds("30"), Ok(30));
        assert_eq!(seconds("30s"), Ok(30));
        assert_eq!(seconds("5m"), Ok(300));
        assert_eq!(seconds("2h"), Ok(7200));
        assert!(seconds("").is_err());
        assert!(seconds("1d").is_err());
        assert!(seconds("-1s").is_err());
    }
}
