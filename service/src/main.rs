//! The `agent-webhooks` operations CLI.

fn main() {}
