//! The agent-webhooks service layer: what an app server imports to let users configure an
//! agent's webhook safely, and what its sender workers use to keep an honest record of every
//! delivery.
//!
//! # Quick start: in your own axum app
//!
//! An app embeds the library in four steps: migrate, run the worker, mount the API behind its
//! own authentication, and enqueue events in the transactions of its own writes.
//! `docs/embedding.md` walks through a whole app built this way, `examples/embedding`
//! (`cargo run -p embedding-example -- --self-check` proves a signed delivery end to end).
//!
//! ```no_run
//! use agent_webhooks::dispatch::Dispatcher;
//! use agent_webhooks::http::{self, FromExtension, HttpState};
//! use agent_webhooks::sea_orm::TransactionTrait;
//! use agent_webhooks::settings::WebhookSettings;
//!
//! # async fn app() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let settings = WebhookSettings::from_env()?;
//! let db = agent_webhooks::db::connect("postgres://app@db/app", 8).await?;
//!
//! // 1. The library's tables, under the migration lock (replicas take turns).
//! agent_webhooks::migrate(&db).await?;
//!
//! // 2. The delivery worker, in this process (or in `agent-webhooks worker` processes).
//! let worker = Dispatcher::new(settings.clone(), db.clone())?;
//! tokio::spawn(async move { worker.run(std::future::pending()).await });
//!
//! // 3. The API under the app's prefix. The app's own auth middleware (a layer on `app`)
//! //    inserts an `http::OrganizationId` into each request's extensions.
//! let api = http::router(HttpState::new(db.clone(), settings.clone(), FromExtension::new()));
//! let app: axum::Router = axum::Router::new().nest("/api/webhooks", api);
//!
//! // 4. An event, in the same transaction as the app's own write.
//! let txn = db.begin().await?;
//! // ... the app's INSERT of the order ...
//! let event = serde_json::json!({"type": "order.created", "data": {"id": "ord_1"}});
//! agent_webhooks::delivery::enqueue(
//!     &txn, &settings, "agent-1", "ord_1", "order.created", &event, chrono::Utc::now(),
//! )
//! .await?;
//! txn.commit().await?;
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! [`sea_orm`], [`migration`] and [`entity`] are re-exported: they are the versions this crate
//! is built with, so an app uses them through it rather than matching versions by hand.
//!
//! ## Cargo features
//!
//! | feature | default | gives |
//! |---|---|---|
//! | `postgres` | on | the PostgreSQL driver (sqlx-postgres), and the worker's `LISTEN` wake-ups |
//! | `mysql` | on | the MySQL/MariaDB driver (sqlx-mysql) |
//! | `sqlite` | on | the SQLite driver (sqlx-sqlite, with SQLite itself compiled from C) |
//! | `axum` | off | `http`: the router, OpenAPI document and portal an app server mounts |
//!
//! An app on one database turns the defaults off and names its backend
//! (`default-features = false, features = ["postgres"]`), leaving the other drivers and their
//! dependencies out; `docs/embedding.md` ("Only the drivers you use") shows the line and what it
//! saves. At least one backend feature is required. The rest of the library (the SQL for each
//! backend, the migrations) is the same in every build; only connecting differs:
//! [`db::connect`] refuses a URL whose backend is left out with
//! [`Error::BackendNotCompiled`], naming the feature, before trying to connect, and the
//! `migration` binary does the same.
//!
//! ## TCP_NODELAY: your app needs the workspace's sqlx-core patch too
//!
//! sqlx-core 0.9.0 (under SeaORM 2.0.4) does not set `TCP_NODELAY` on PostgreSQL and MySQL
//! connections, so a statement that reaches the socket in two writes waits about 40 ms for the
//! server's delayed ACK. This workspace patches it (`[patch.crates-io]` in its `Cargo.toml`,
//! which says why; figures in `docs/benchmarks.md` section 7). Cargo applies a `[patch]` only
//! in the workspace that declares it, so an app that depends on agent-webhooks declares it in
//! its own workspace's `Cargo.toml`:
//!
//! ```toml
//! [patch.crates-io]
//! sqlx-core = { path = "<a checkout of agent-webhooks>/vendor/sqlx-core" }
//! ```
//!
//! [`db::connect`] warns (a `tracing` warning) when the socket of its connection lacks
//! `TCP_NODELAY`, and [`db::tcp_nodelay`] answers for any connection: on Linux, by finding the
//! socket whose local port is the client port the server reports; elsewhere, or behind a
//! proxy, it cannot tell and says nothing.
//! SQLite does not use TCP and is not affected.
//!
//! # Layout
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
//! | `http` | (feature `axum`) the HTTP API an app server mounts: routes, problem responses, OpenAPI, and the owner-facing webhook portal (`http::portal`) |
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

#[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
compile_error!(
    "agent-webhooks needs a database driver: enable one or more of its features `postgres`, \
     `mysql`, `sqlite` (on by default)"
);

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
