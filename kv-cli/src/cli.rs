//! The command line: flags, subcommands and their documentation.

use clap::{Parser, Subcommand, ValueEnum};

/// Exit codes, as documented in `kv --help`.
pub mod exit {
    /// The command did what was asked.
    pub const OK: u8 = 0;
    /// The key was not found, a condition failed, or history was compacted.
    pub const NOT_FOUND: u8 = 1;
    /// The command line (or a key or value it gave) was refused.
    pub const USAGE: u8 = 2;
    /// The server could not be reached or failed.
    pub const UNAVAILABLE: u8 = 3;
    /// No valid token, or the token may not do this.
    pub const DENIED: u8 = 4;
    /// A lease kv kept alive (`kv lease keepalive`, `kv lock`) was lost.
    pub const LEASE_LOST: u8 = 5;
}

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  key not found, lease not found, condition (--if-revision, --create) failed,
     or history compacted
  2  usage error (bad flags, invalid key, value too large)
  3  server unreachable or server error
  4  not authorized (no or unknown --token / KV_TOKEN, or not allowed for this key)
  5  a lease kv kept alive was lost (kv lease keepalive, kv lock)
  kv lock NAME -- CMD ...: CMD's own exit code (128 + N if a signal N ended it)

Examples:
  kv put app/db/url postgres://db      set a value
  kv get app/db/url                    print it (just the value)
  printf '\\x00\\x01' | kv put blob -   binary values from stdin
  kv ls app/                           list keys under a prefix
  kv get app/db/url --rev 42           the value as it was at revision 42
  kv history app/db/url                every change of a key the history keeps
  kv del --prefix tmp/                 delete every key under a prefix
  kv txn < transfer.txt                a transaction (see kv txn --help)
  kv watch app/ --initial              current values, then every change
  kv put session/a up --ttl 30s        a key that goes unless put again in 30 s
  kv lock jobs/report -- ./report.sh   run a command holding a lock
  kv completion bash > /etc/bash_completion.d/kv    completions (bash, zsh, fish, ...)
  kv --url http://a:5000,http://b:5000 ls   replicas: on to b while a is down";

const TXN_HELP: &str = "\
Lines:
  mod(\"acct/1\") = \"5\"        compare: value, ver, create, mod or lease; = != < >
  value(\"acct/2\") != \"closed\"
                                (blank line)
  put acct/1 90                 ops if every compare holds
  del --prefix tmp/
                                (blank line)
  get acct/1                    ops otherwise (get --prefix P lists)

Words with spaces go in double quotes. The exit code is 0 whichever branch ran:
the output says (SUCCESS or FAILURE; with -o json, \"succeeded\").";

/// kv: get, put, list and watch keys of a kvstore server.
#[derive(Debug, Parser)]
#[command(name = "kv", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Server URL. Several replicas of one store: repeat the flag or separate
    /// the URLs with commas; a request moves to the next when one cannot be
    /// reached.
    #[arg(
        long,
        global = true,
        env = "KV_URL",
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        default_value = "http://localhost:5000"
    )]
    pub url: Vec<String>,
    /// Bearer token, for servers started with an access file.
    #[arg(long, global = true, env = "KV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate(s) (PEM) to trust for an https:// URL, instead of the system's.
    #[arg(long, global = true, env = "KV_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people (`get` prints the value alone).
    Text,
    /// JSON (one object per line for `watch`).
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the value of KEY.
    Get {
        /// The key.
        key: String,
        /// As it was at revision R (exit 1 when it did not exist then, or R is
        /// compacted).
        #[arg(long, value_name = "R")]
        rev: Option<u64>,
    },
    /// Set KEY to VALUE (`-` reads the value from stdin, binary-safe).
    Put {
        /// The key.
        key: String,
        /// The value, or `-` for stdin.
        value: String,
        /// Only if the key's current mod_revision is N (compare-and-swap).
        #[arg(long, value_name = "N", conflicts_with = "create")]
        if_revision: Option<u64>,
        /// Only if the key does not exist yet.
        #[arg(long)]
        create: bool,
        /// Put the key on a lease of its own of this TTL (30s, 5m, 2h): it goes
        /// unless put again in time.
        #[arg(long, value_name = "TTL", value_parser = crate::lease::seconds, conflicts_with = "lease")]
        ttl: Option<u64>,
        /// Put the key on lease ID (from `kv lease grant`).
        #[arg(long, value_name = "ID")]
        lease: Option<u64>,
    },
    /// Delete KEY, or every key under a prefix (at one revision).
    #[command(alias = "rm", alias = "delete")]
    Del {
        /// The key.
        #[arg(required_unless_present = "prefix")]
        key: Option<String>,
        /// Only if the key's current mod_revision is N.
        #[arg(long, value_name = "N", conflicts_with = "prefix")]
        if_revision: Option<u64>,
        /// Delete every key starting with PREFIX instead (not empty).
        #[arg(long, value_name = "PREFIX", conflicts_with = "key")]
        prefix: Option<String>,
    },
    /// Run a transaction read from stdin: JSON (as `POST /v1/txn` takes), or
    /// lines like `etcdctl txn`'s: compares, a blank line, the ops if they all
    /// hold, a blank line, the ops otherwise.
    #[command(after_help = TXN_HELP)]
    Txn,
    /// List the keys under PREFIX (all keys without one).
    #[command(alias = "list")]
    Ls {
        /// Key prefix.
        #[arg(default_value = "")]
        prefix: String,
        /// As the store was at revision R (exit 1 when R is compacted). Without
        /// it, every page is read at the revision of the first.
        #[arg(long, value_name = "R")]
        rev: Option<u64>,
    },
    /// Print every change of KEY the history keeps, oldest first: revision,
    /// put or delete, version, value (with -o json, one event object per line).
    History {
        /// The key.
        key: String,
        /// Only changes after revision N.
        #[arg(long, value_name = "N")]
        after: Option<u64>,
    },
    /// Write every entry under PREFIX, as of one revision, to stdout (NDJSON:
    /// a header line, then one entry per line; binary-safe).
    Export {
        /// Key prefix (all keys without one).
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Restore an export read from stdin into a server whose store is empty.
    Import,
    /// Check that the server is up and its store usable (exit 0), e.g. for a
    /// container health check.
    Health,
    /// Measure throughput and latency: put, get, mixed, watch (like redis-benchmark).
    Bench(crate::bench::Bench),
    /// Grant, keep alive, revoke and inspect leases.
    #[command(subcommand)]
    Lease(crate::lease::LeaseCommand),
    /// Take the lock NAME (waiting in line), run CMD holding it, release it.
    Lock(crate::lease::LockArgs),
    /// Print the completion script of SHELL for kv: e.g. `kv completion bash >
    /// ~/.local/share/bash-completion/completions/kv`, or in ~/.zshrc
    /// `source <(kv completion zsh)`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print kv's man page (roff): `kv man > ~/.local/share/man/man1/kv.1`.
    Man,
    /// Print every change under PREFIX as it happens, until Ctrl-C.
    Watch {
        /// Key prefix.
        #[arg(default_value = "")]
        prefix: String,
        /// Start with every change from revision N on (from the server's history).
        #[arg(long, value_name = "N", conflicts_with = "initial")]
        from_revision: Option<u64>,
        /// Start with the current values under the prefix, then the changes.
        #[arg(long)]
        initial: bool,
    },
}
