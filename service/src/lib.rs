//! The agent-webhooks service layer: what an app server imports to let users configure an
//! agent's webhook safely, and what its sender workers use to keep an honest record of every
//! delivery.
//!
//! Every database function is a plain `async fn` over any [`sea_orm::ConnectionTrait`] (a
//! pool or a transaction), like SeaORM's own service examples; those that depend on a setting
//! take the one [`WebhookSettings`](settings::WebhookSettings), and all of them fail with the
//! one [`Error`].
//!
//! | module | holds |
//! |---|---|
//! | [`webhook`] | set/get/disable/clear an agent's webhook; read models that never carry the secret |
//! | [`url_policy`] | which webhook URLs are allowed (SSRF defence), at configuration and at connect time |
//! | [`events`] | the event catalogue and event filters |
//! | [`webhook_secret`] | accepted signing-secret forms, generation |
//! | [`secret_box`] | secrets encrypted at rest under rotating keys |
//! | [`signing`] | Standard Webhooks signatures (`v1`, `v1a`) and their verification |
//! | [`signing_secrets`] | signing-secret rotation with a grace period, revocation, Ed25519 key pairs |
//! | [`ed25519`] | Ed25519 keys in the `whsk_` / `whpk_` forms |
//! | [`deliveries`] | enqueue, claim, record, requeue, history, stats, retention |
//! | [`retry`] | the retry schedule and which outcomes are final |
//! | [`sender`] | one call that gives a worker the URL, signed headers and body |
//! | [`dispatch`] | the delivery worker: claim, sign, send over an SSRF-safe client, record every attempt |
//! | [`settings`] | settings from the environment |
//! | [`db`] | connecting with the settings the service expects |
//! | `http` | (feature `axum`) the HTTP API an app server mounts: routes, problem responses, OpenAPI |

#![warn(missing_docs)]

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

pub use error::{Error, Result};

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
