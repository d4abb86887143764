//! The migration binary: `cargo run -p migration -- <up|down|status|fresh|refresh|reset>`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    migration::cli::run().await
}
