//! The `agent-webhooks` operations CLI; see `agent-webhooks --help`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    agent_webhooks::cli::run().await
}
