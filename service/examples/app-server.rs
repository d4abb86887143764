//! A minimal app server: mounts [`agent_webhooks::http`] behind a demo bearer-token →
//! organization mapping, runs the delivery worker in the same process, on embedded SQLite.
//! The README walks through it with curl.
//!
//! Environment (besides the `WEBHOOK_*` settings of `agent_webhooks::settings`):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DATABASE_URL` | where the data lives; migrated at start | `sqlite://app-server.db?mode=rwc` |
//! | `LISTEN` | the address to serve on | `127.0.0.1:3000` |
//! | `DEMO_TOKENS` | `token=organization,…`: which bearer token acts for which organization | `demo-token=org-demo` |
//!
//! It creates organization `org-demo` with agent `agent-demo` if they are missing, and serves
//! `POST /demo/receiver`, a local webhook receiver that prints what it gets. Demo only: real
//! apps authenticate their own way and implement `CallerOrganization` on top of it.

use std::collections::HashMap;

use agent_webhooks::dispatch::Dispatcher;
use agent_webhooks::http::{self, CallerOrganization, HttpState};
use agent_webhooks::settings::WebhookSettings;
use axum::body::Bytes;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use entity::{agents, organizations};
use futures::future::BoxFuture;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection, EntityTrait};
use tokio::sync::watch;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Bearer token → organization, from `DEMO_TOKENS`.
struct DemoTokens(HashMap<String, String>);

impl CallerOrganization for DemoTokens {
    fn organization_id<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Option<String>> {
        let org = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|token| self.0.get(token.trim()))
            .cloned();
        Box::pin(async move { org })
    }
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let settings = WebhookSettings::from_env()?;
    let tokens = var("DEMO_TOKENS", "demo-token=org-demo")
        .split(',')
        .map(|pair| {
            let (token, org) = pair
                .split_once('=')
                .ok_or("DEMO_TOKENS: expected token=org")?;
            Ok((token.trim().to_owned(), org.trim().to_owned()))
        })
        .collect::<Result<HashMap<_, _>, AnyError>>()?;

    let db =
        agent_webhooks::db::connect(&var("DATABASE_URL", "sqlite://app-server.db?mode=rwc"), 8)
            .await?;
    Migrator::up(&db, None).await?;
    seed(&db).await?;

    // One shutdown signal (Ctrl-C) for the server and the worker.
    let (stop, stopped) = watch::channel(false);
    let on_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let worker = Dispatcher::new(settings.clone(), db.clone())?;
    let shutdown = on_stop(stopped.clone());
    let worker = tokio::spawn(async move { worker.run(shutdown).await });
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
    });

    let app = http::router(HttpState::new(db, settings, DemoTokens(tokens)))
        .merge(http::openapi_router())
        .route("/demo/receiver", axum::routing::post(receive));
    let listener = tokio::net::TcpListener::bind(var("LISTEN", "127.0.0.1:3000")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(on_stop(stopped))
        .await?;
    let report = worker.await?;
    println!("worker stopped: {report:?}");
    Ok(())
}

/// The local receiver of the README: prints each delivery's id, type and body.
async fn receive(headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok());
    println!(
        "receiver: webhook-id {} body {}",
        id.unwrap_or("?"),
        String::from_utf8_lossy(&body)
    );
    StatusCode::NO_CONTENT
}

/// `org-demo` and its agent `agent-demo`, the platform's rows the demo needs.
async fn seed(db: &DatabaseConnection) -> Result<(), AnyError> {
    if organizations::Entity::find_by_id("org-demo")
        .one(db)
        .await?
        .is_none()
    {
        organizations::ActiveModel {
            id: Set("org-demo".into()),
            name: Set("Demo".into()),
            ..Default::default()
        }
        .insert(db)
        .await?;
    }
    if agents::Entity::find_by_id("agent-demo")
        .one(db)
        .await?
        .is_none()
    {
        agents::ActiveModel {
            id: Set("agent-demo".into()),
            organization_id: Set("org-demo".into()),
            name: Set("Demo agent".into()),
            webhook_enabled: Set(false),
            ..Default::default()
        }
        .insert(db)
        .await?;
    }
    Ok(())
}
