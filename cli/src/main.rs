//! The `agent-webhooks` operations CLI; see `agent-webhooks --help`.

mod commands;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    commands::run().await
}
