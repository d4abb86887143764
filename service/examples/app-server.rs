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
//! With `WEBHOOK_PORTAL_KEY` set (`openssl rand -base64 32`) it prints a portal link for the
//! demo agent, valid for an hour (docs/portal.md).
//!
//! It creates organization `org-demo` with agent `agent-demo` if they are missing, and serves
//! `POST /demo/receiver`, a local webhook receiver that prints what it gets. Demo only: real
//! apps authenticate their own way and implement `CallerOrganization` on top of it.
//!
//! What a real app server should do too: it logs to stderr (`RUST_LOG`, default `info`; colour
//! only on a terminal; the database password masked), migrates under the migration lock so
//! that replicas starting together take turns, and on SIGTERM or SIGINT stops taking
//! connections, lets requests and the worker's sends in flight finish, and exits 0.

use std::collections::HashMap;
use std::io::IsTerminal;

use agent_webhooks::dispatch::Dispatcher;
use agent_webhooks::http::{self, CallerOrganization, HttpState};
use agent_webhooks::settings::WebhookSettings;
use agent_webhooks::webhook::signing_secrets;
use axum::body::Bytes;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use entity::{agents, organizations};
use futures::future::BoxFuture;
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};
use tokio::signal::unix::{SignalKind, signal};
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
    // First of all, so that a stop request during start-up is not the signal's default death.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: finishing requests and sends in flight");
        let _ = stop.send(true);
    });
    let on_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let database_url = var("DATABASE_URL", "sqlite://app-server.db?mode=rwc");
    let log_url = database_url.clone();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(move || migration::RedactedStderr::new(&log_url))
        .with_ansi(std::io::stderr().is_terminal())
        .init();

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

    let start = async {
        migration::check_reachable(&database_url, migration::CONNECT_TIMEOUT).await?;
        let db = agent_webhooks::db::connect(&database_url, 8).await?;
        migrate(&db).await?;
        seed(&db).await?;
        Ok::<_, AnyError>(db)
    };
    let db = tokio::select! {
        db = start => db.map_err(|e| migration::redact_secrets(&e.to_string(), &database_url))?,
        () = on_stop(stopped.clone()) => return Ok(()),
    };

    // The in-process worker must be able to open the stored secrets, or it would send nothing
    // and blame every receiver: refuse to start without a key ring that opens them.
    signing_secrets::check_key_ring(&db, &settings)
        .await
        .map_err(|e| format!("the worker cannot open the stored signing secrets: {e}"))?;
    let worker = Dispatcher::new(settings.clone(), db.clone())?;
    tracing::info!(
        max_attempts = settings.retry.max_attempts,
        "retry schedule {}",
        agent_webhooks::settings::format_retry_schedule(settings.retry.delays())
    );
    let shutdown = on_stop(stopped.clone());
    let worker = tokio::spawn(async move { worker.run(shutdown).await });

    let portal_link = http::portal::mint_link(
        &db,
        &settings,
        "org-demo",
        "agent-demo",
        std::time::Duration::from_secs(3600),
        chrono::Utc::now(),
    )
    .await;
    let app = http::router(HttpState::new(db, settings, DemoTokens(tokens)))
        .merge(http::openapi_router())
        .route("/demo/receiver", axum::routing::post(receive));
    let listener = tokio::net::TcpListener::bind(var("LISTEN", "127.0.0.1:3000")).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    match portal_link {
        Ok(link) => println!("portal of agent-demo: http://{addr}{}", link.path),
        Err(e) => println!("no portal link: {e}"),
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(on_stop(stopped))
        .await?;
    let report = worker.await?;
    tracing::info!(
        attempts = report.attempts,
        delivered = report.delivered,
        "stopped"
    );
    Ok(())
}

/// Applies pending migrations under the migration lock ([`agent_webhooks::migrate`]), as the
/// `migration` binary does: two replicas starting at once take turns instead of failing half
/// way.
async fn migrate(db: &DatabaseConnection) -> Result<(), AnyError> {
    agent_webhooks::migrate(db).await?;
    tracing::info!("database schema up to date");
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

/// `org-demo` and its agent `agent-demo`, the platform's rows the demo needs; inserted unless
/// present, in one statement each, so that replicas starting together do not collide.
async fn seed(db: &DatabaseConnection) -> Result<(), AnyError> {
    organizations::Entity::insert(organizations::ActiveModel {
        id: Set("org-demo".into()),
        name: Set("Demo".into()),
        ..Default::default()
    })
    .on_conflict_do_nothing()
    .exec_without_returning(db)
    .await?;
    agents::Entity::insert(agents::ActiveModel {
        id: Set("agent-demo".into()),
        organization_id: Set("org-demo".into()),
        name: Set("Demo agent".into()),
        webhook_enabled: Set(false),
        ..Default::default()
    })
    .on_conflict_do_nothing()
    .exec_without_returning(db)
    .await?;
    Ok(())
}
