//! The `wharf` operator CLI (design §7): a thin client of the operator API
//! (docs/api.md).
//!
//! - [`args`]: the command line (clap).
//! - [`parse`] and [`request`]: pure parsing and checking of flags and deploy files into
//!   the [`SubmitRequest`](crate::engine::model::SubmitRequest) body; invalid input is
//!   refused before any connection (exit 2).
//! - [`client`]: the HTTP client (bearer token, core's CA, typed errors).
//! - [`wait`]: `--wait`, following a task's event stream, with polling as fallback.
//! - [`output`]: text rendering; `--output json` prints the API's documents as they are.
//! - [`error`]: exit codes 0/1/2/3 and the errors that choose them.
//!
//! The binary (`src/bin/wharf.rs`) calls [`main`].

pub mod args;
pub mod client;
pub mod commands;
pub mod error;
pub mod output;
pub mod parse;
pub mod request;
pub mod wait;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

pub use args::Cli;
pub use error::{exit_code_of, InvalidInput};

/// Parses the process arguments, runs the command, prints any error on stderr, and returns
/// the exit code (clap's own usage errors exit 2).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code_of(&err))
        }
    }
}

/// Runs a parsed command line on a single-threaded runtime; returns the exit code of a
/// command that ran to its end (0, or 1 for a task that did not succeed).
pub fn run(cli: Cli) -> Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(commands::run(cli))
}
