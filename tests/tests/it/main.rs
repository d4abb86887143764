//! The integration tests, as one test binary: every former `tests/*.rs` file is a module here,
//! so a change to the library relinks one executable instead of one per file (after a change to
//! the service library, `cargo test --workspace --no-run` rebuilt in 6.4 s instead of 9.8 s,
//! linking 10 test executables instead of 16: median of 3 interleaved runs on the 2-core
//! machine, 2026-11-29). The tests of the `agent-webhooks` and `migration` binaries joined it
//! later (`cli`, `migration_cli`): 9 executables instead of 11, and the rebuild after a library
//! change (`cargo build --workspace --all-targets` and `cargo test --workspace --no-run`, as
//! `scripts/test` runs them) 8.9–10.2 s instead of 10.6–10.9 s, two runs each, 2026-12-06.
//!
//! Run a part with a filter on the module path, e.g.
//! `scripts/test -p integration-tests schema::` or `cargo test -p integration-tests --test it explain`.
//! The modules that run the workspace's programs (`cli`, `migration_cli`, `lanes`,
//! `app_server`) need them built first, as `scripts/test` does: `cargo build --workspace
//! --all-targets`.

mod adoption;
mod app_server;
mod batch;
mod cli;
mod content_filter;
mod deliveries;
mod entities;
mod explain;
mod hardening;
mod health;
mod host_autogenerate;
mod host_schema;
mod http;
mod lanes;
mod migration_cli;
mod portal;
mod recording;
mod schema;
mod sender;
mod settings;
mod signing_secrets;
mod socket;
mod soft_delete;
mod standardwebhooks_compat;
mod timestamps;
mod webhook;
mod worker;
