//! The agent-webhooks service layer: what an app server imports to let users configure an
//! agent's webhook safely, and what its sender workers use to keep an honest record of every
//! delivery.
//!
//! Every database function is a plain `async fn` over any [`sea_orm::ConnectionTrait`] (a
//! pool or a transaction), like SeaORM's own service examples; those that depend on a setting
//! take the one [`WebhookSettings`](settings::WebhookSettings), and all of them fail with the
//! one [`Error`].
//!
//! The modules, each using only those listed below it (checked by
//! `scripts/check-import-cycles`):
//!
//! | module | holds |
//! |---|---|
//! | `http` | (feature `axum`) the HTTP API an app server mounts: routes, problem responses, OpenAPI |
//! | [`dispatch`] | the delivery worker: claim, sign ([`dispatch::sign`]), send over an SSRF-safe client, record every attempt |
//! | [`delivery`] | the books: enqueue, claim, record, endpoint health, history, requeue, the retry policy |
//! | [`webhook`] | an agent's webhook: configuration, the URL policy ([`webhook::url_policy`]), event filters ([`webhook::events`]), signing-secret rotation ([`webhook::signing_secrets`]) |
//! | [`secrets`] | pure values: signing-secret forms, secrets sealed at rest, Standard Webhooks signatures, Ed25519 keys |
//! | `agent` | the host's `agents` row and the one rule for a live agent |
//! | [`settings`] | the environment, read once |
//! | [`db`] | connecting; instants as stored, limits, the database's clock, running again after a deadlock |
//! | [`metrics`] | the worker's metric names |
//! | [`Error`] | the one error of database-facing operations |
//!
//! The paths of the earlier flat layout (`deliveries`, `retry`, `sender`, `url_policy`, …) are
//! re-exported for one release; `CHANGELOG.md` lists where each went.

mod agent;
pub mod db;
pub mod delivery;
pub mod dispatch;
mod error;
#[cfg(feature = "axum")]
pub mod http;
pub mod metrics;
pub mod secrets;
pub mod settings;
pub mod webhook;

pub use db::migrate;
pub use error::{Error, Result};

// The versions this crate is built with, so an app names them through it instead of matching
// them by hand in its own Cargo.toml.
pub use entity;
pub use migration;
pub use sea_orm;

// The paths of the flat layout, kept for one release (see CHANGELOG.md).
#[doc(hidden)]
pub use delivery as deliveries;
#[doc(hidden)]
pub use delivery::retry;
#[doc(hidden)]
pub use dispatch::sign as sender;
#[doc(hidden)]
pub use secrets::{ed25519, secret_box, signing, webhook_secret};
#[doc(hidden)]
pub use webhook::{events, signing_secrets, url_policy};
