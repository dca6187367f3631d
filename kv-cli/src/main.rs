//! `kv`: the command-line client of kvstore.

mod bench;
mod cli;
mod commands;
mod lease;
mod output;
mod txn;

use std::io::ErrorKind;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use kvstore_client::Error;

use cli::{exit, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // What kv says about itself needs no server and no runtime.
    match &cli.command {
        cli::Command::Completion { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(*shell, &mut command, "kv", &mut std::io::stdout());
            return ExitCode::from(exit::OK);
        }
        cli::Command::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::from(exit::OK),
                Err(e) if e.kind() == ErrorKind::BrokenPipe => ExitCode::from(exit::OK),
                Err(e) => {
                    eprintln!("kv: cannot write the man page: {e}");
                    ExitCode::from(exit::UNAVAILABLE)
                }
            };
        }
        _ => {}
    }
    let mut builder = match &cli.command {
        cli::Command::Bench(bench) => bench::runtime_builder(bench),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kv: cannot start: {e}");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            if is_broken_pipe(&e) {
                // `kv watch | head` ends this way: not an error.
                return ExitCode::from(exit::OK);
            }
            if let Some(lease::Exit(code)) = e.downcast_ref::<lease::Exit>() {
                // `kv lock -- CMD`: CMD said what it had to.
                return ExitCode::from(*code);
            }
            eprintln!("kv: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
    })
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|cause| cause.is::<lease::Lost>()) {
        return exit::LEASE_LOST;
    }
    if e.chain().any(|cause| cause.is::<txn::Malformed>()) {
        return exit::USAGE;
    }
    match e.chain().find_map(|cause| cause.downcast_ref::<Error>()) {
        Some(Error::BadRequest { code, .. })
            if *code == kvstore_client::ErrorCode::LeaseNotFound =>
        {
            exit::NOT_FOUND
        }
        Some(Error::LeaseLost(_)) => exit::LEASE_LOST,
        Some(
            Error::NotFound { .. } | Error::PreconditionFailed { .. } | Error::Compacted { .. },
        ) => exit::NOT_FOUND,
        Some(
            Error::BadRequest { .. } | Error::InvalidUrl(_) | Error::InvalidToken | Error::Tls(_),
        ) => exit::USAGE,
        Some(Error::Unauthorized { .. } | Error::Forbidden { .. }) => exit::DENIED,
        Some(_) => exit::UNAVAILABLE,
        // Local failures (reading stdin, writing stdout).
        None => exit::UNAVAILABLE,
    }
}
