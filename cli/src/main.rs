//! The `agent-webhooks` operations CLI; see `agent-webhooks --help`.
//!
//! It lives in its own crate so that an app server importing the `agent_webhooks` library
//! compiles no command line (clap, tracing-subscriber, tables, progress bars).
//!
//! Exit status: 0 on success; 1 when the command ran and said no (a rejected URL, a failed
//! verification, an error from the database), with one line on stderr; 2 on usage errors.
//! Logs (`AGENT_WEBHOOKS_LOG`, an `EnvFilter` directive, default `warn`) go to stderr, in
//! colour only when stderr is a terminal. A closed stdout (`| head -1`) ends a command quietly
//! with status 0 ([`output::StdoutClosed`]).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

mod args;
mod commands;
mod output;
mod stop;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = args::Cli::parse();
    // Before anything else, so that a stop request during start-up is seen (see `stop`).
    let stop = match cli.command {
        args::Command::Worker { .. } => match stop::StopSignals::catch() {
            Ok(stop) => Some(stop),
            Err(e) => {
                output::note(&format!("cannot catch SIGTERM and SIGINT: {e}"));
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let database_url = cli.database_url.clone();
    let log_url = database_url.clone().unwrap_or_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("AGENT_WEBHOOKS_LOG")
                .unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        // A driver's log line may quote the URL: its password is masked there too.
        .with_writer(move || migration::RedactedStderr::new(&log_url))
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    match commands::execute(cli, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.chain().any(|cause| cause.is::<output::StdoutClosed>()) => {
            ExitCode::SUCCESS
        }
        Err(err) => {
            output::note(&output::error_line(&err, database_url.as_deref()));
            ExitCode::FAILURE
        }
    }
}
