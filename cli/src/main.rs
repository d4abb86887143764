//! The `agent-webhooks` operations CLI; see `agent-webhooks --help`.
//!
//! It lives in its own crate so that an app server importing the `agent_webhooks` library
//! compiles no command line (clap, tracing-subscriber, tables, progress bars).
//!
//! Exit status: 0 on success; 1 when the command ran and said no (a rejected URL, a failed
//! verification, an error from the database), with one line on stderr; 2 on usage errors.
//! Logs (`AGENT_WEBHOOKS_LOG`, an `EnvFilter` directive, default `warn`) go to stderr.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

mod args;
mod commands;
mod output;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let database_url = cli.database_url.clone();
    let log_url = database_url.clone().unwrap_or_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("AGENT_WEBHOOKS_LOG")
                .unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        // A driver's log line may quote the URL: its password is masked there too.
        .with_writer(move || migration::RedactedStderr::new(&log_url))
        .try_init();
    match commands::execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", output::error_line(&err, database_url.as_deref()));
            ExitCode::FAILURE
        }
    }
}
