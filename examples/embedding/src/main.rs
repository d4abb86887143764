//! An axum app of its own that embeds agent-webhooks: its own API-key authentication, its own
//! `orders` table, the library's webhook API nested under `/api/webhooks` (and its OpenAPI
//! document, with that prefix and the app's API key), the delivery worker in the same process,
//! and an order and its `order.created` event written in one transaction.
//! `docs/embedding.md` walks through this file section by section.
//!
//! ```text
//! cargo run -p embedding-example                      # serve (see the variables below)
//! cargo run -p embedding-example -- --self-check      # start, prove one signed delivery, exit
//! ```
//!
//! Environment (besides the `WEBHOOK_*` settings of `agent_webhooks::settings`):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DATABASE_URL` | where the data lives; migrated at start | `sqlite://embedding.db?mode=rwc` |
//! | `LISTEN` | the address to serve on | `127.0.0.1:3000` |
//! | `API_KEYS` | `key=organization,…`: the app's API keys (sent as `x-api-key`) | `demo-key=org-demo` |
//!
//! `--self-check` serves on a free loopback port with the development URL policy (so the
//! webhook may point at loopback) and a key ring of its own unless `WEBHOOK_SECRET_KEYS` is
//! set; points `agent-demo`'s webhook at the app's demo receiver, creates an order through
//! the API, and waits until the receiver gets the signed `order.created` delivery. It exits 0
//! once the signature verifies, 1 on any failure or when the delivery has not come within
//! [`SELF_CHECK_TIMEOUT`] of serving.

// ---- What the app imports -----------------------------------------------------------------------

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agent_webhooks::delivery::{self, Enqueued};
use agent_webhooks::dispatch::Dispatcher;
use agent_webhooks::entity::{agents, organizations};
use agent_webhooks::http::utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use agent_webhooks::http::{self, FromExtension, HttpState, OrganizationId};
use agent_webhooks::sea_orm::sea_query::{Alias, Query};
use agent_webhooks::sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    TransactionTrait,
};
use agent_webhooks::secrets::signing::{self, ReceivedHeaders};
use agent_webhooks::secrets::webhook_secret::WebhookSecret;
use agent_webhooks::settings::{WebhookSettings, vars};
use agent_webhooks::webhook::signing_secrets;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// The event this app emits when an order is created.
const ORDER_CREATED: &str = "order.created";
/// The header the app's clients authenticate with.
const API_KEY_HEADER: &str = "x-api-key";
/// How long `--self-check` waits, once serving, for its requests and the verified delivery.
const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(60);

// ---- Start-up: settings, database, migrations, the app's own table ------------------------------

fn main() -> ExitCode {
    let self_check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--self-check") => true,
        Some(other) => {
            eprintln!("embedding-example: unknown argument {other}; usage: [--self-check]");
            return ExitCode::from(2);
        }
    };
    let database_url = var("DATABASE_URL", "sqlite://embedding.db?mode=rwc");
    let log_url = database_url.clone();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // The database password never reaches the log.
        .with_writer(move || agent_webhooks::migration::RedactedStderr::new(&log_url))
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("embedding-example: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&database_url, self_check)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = agent_webhooks::migration::redact_secrets(&e.to_string(), &database_url);
            eprintln!("embedding-example: {message}");
            ExitCode::FAILURE
        }
    }
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// What the app's own handlers share.
#[derive(Clone)]
struct App {
    db: DatabaseConnection,
    settings: Arc<WebhookSettings>,
    /// API key → organization. A real app looks its keys up in its own store.
    api_keys: Arc<HashMap<String, String>>,
}

async fn run(database_url: &str, self_check: bool) -> Result<(), AnyError> {
    // First, so that SIGTERM during start-up is not the signal's default death.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let settings = if self_check {
        self_check_settings()?
    } else {
        WebhookSettings::from_env()?
    };
    let api_keys = parse_api_keys(&var("API_KEYS", "demo-key=org-demo"))?;

    let db = agent_webhooks::db::connect(database_url, 8).await?;
    // The library's tables, under the migration lock: replicas starting together take turns.
    agent_webhooks::migrate(&db).await?;
    create_app_tables(&db).await?;
    seed(&db).await?;

    // ---- The delivery worker, in this process ---------------------------------------------

    // A worker that cannot open the stored secrets would send nothing and blame every
    // receiver: refuse to start instead.
    signing_secrets::check_key_ring(&db, &settings).await?;
    let (stop, stopped) = watch::channel(false);
    let dispatcher = Dispatcher::new(settings.clone(), db.clone())?;
    let shutdown = wait_for_stop(stopped.clone());
    let worker = tokio::spawn(async move { dispatcher.run(shutdown).await });

    // ---- The router: the app's routes and the library's, behind the app's auth ------------

    let app = App {
        db: db.clone(),
        settings: Arc::new(settings.clone()),
        api_keys: Arc::new(api_keys),
    };
    let webhooks = http::router(HttpState::new(db, settings, FromExtension::new()));
    let api = Router::new()
        .route("/orders", post(create_order))
        .with_state(app.clone())
        .nest("/webhooks", webhooks)
        .layer(middleware::from_fn_with_state(app.clone(), authenticate));
    let (received_tx, received) = mpsc::unbounded_channel();
    let router = Router::new()
        .nest("/api", api)
        .merge(http::openapi_router_with(&openapi_options()?))
        .route("/demo/receiver", post(receive).with_state(received_tx));

    // ---- Serving, and stopping cleanly --------------------------------------------------

    let listen = if self_check {
        "127.0.0.1:0".to_owned()
    } else {
        var("LISTEN", "127.0.0.1:3000")
    };
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    let server = tokio::spawn(
        axum::serve(listener, router)
            .with_graceful_shutdown(wait_for_stop(stopped))
            .into_future(),
    );

    let outcome = if self_check {
        let key = app
            .api_keys
            .iter()
            .find(|(_, org)| *org == "org-demo")
            .map(|(key, _)| key.clone())
            .ok_or("--self-check: API_KEYS has no key for org-demo")?;
        match tokio::time::timeout(SELF_CHECK_TIMEOUT, run_self_check(addr, &key, received)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "--self-check: no verified delivery within {} s",
                SELF_CHECK_TIMEOUT.as_secs()
            )
            .into()),
        }
    } else {
        tokio::spawn(print_received(received));
        // SIGINT or SIGTERM: stop taking connections, let requests and sends in flight
        // finish, exit 0.
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    };

    tracing::info!("stopping: finishing requests and sends in flight");
    let _ = stop.send(true);
    server.await??;
    let report = worker.await?;
    tracing::info!(
        attempts = report.attempts,
        delivered = report.delivered,
        "stopped"
    );
    outcome
}

/// The app's own table. A real app creates its tables with its own migrations; this one
/// statement stands in for them. Portable SQL, so it runs on SQLite, PostgreSQL and MariaDB.
async fn create_app_tables(db: &DatabaseConnection) -> Result<(), AnyError> {
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS orders (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            organization_id VARCHAR(255) NOT NULL,
            agent_id VARCHAR(255) NOT NULL,
            item VARCHAR(200) NOT NULL
        )",
    )
    .await?;
    Ok(())
}

/// `org-demo` and its agent `agent-demo`: in a real app these are the platform's own rows.
/// Inserted unless present, one statement each, so replicas starting together do not collide.
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

fn parse_api_keys(setting: &str) -> Result<HashMap<String, String>, AnyError> {
    setting
        .split(',')
        .map(|pair| {
            let (key, org) = pair
                .split_once('=')
                .ok_or("API_KEYS: expected key=organization,…")?;
            Ok((key.trim().to_owned(), org.trim().to_owned()))
        })
        .collect()
}

// ---- The app's own authentication ---------------------------------------------------------------

/// Maps the `x-api-key` header to the caller's organization and puts it into the request's
/// extensions, where the app's handlers and the library's routes (`FromExtension`) read it.
/// No valid key: 401, before any route runs.
async fn authenticate(State(app): State<App>, mut request: Request, next: Next) -> Response {
    let org = request
        .headers()
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|key| app.api_keys.get(key))
        .cloned();
    let Some(org) = org else {
        let body = json!({"error": "unauthenticated"});
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    };
    request.extensions_mut().insert(OrganizationId(org));
    next.run(request).await
}

// ---- The API's OpenAPI document, as this app publishes it ---------------------------------------

/// Where `run` nests the library's router: `/webhooks` within `/api`.
const WEBHOOKS_PREFIX: &str = "/api/webhooks";

/// The library's OpenAPI document with the app's prefix on every path and the app's API key
/// required by every operation. `run` serves it, outside the authentication layer, at
/// `/api/webhooks/v1/webhooks/openapi.json`.
fn openapi_options() -> Result<http::OpenApiOptions, http::OpenApiOptionsError> {
    let api_key = SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
        API_KEY_HEADER,
        "An API key of the app (`API_KEYS`); it names the caller's organization.",
    )));
    http::OpenApiOptions::new()
        .prefix(WEBHOOKS_PREFIX)?
        .security("apiKey", api_key)
}

// ---- The app's own write and its event, in one transaction --------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    agent_id: String,
    item: String,
}

/// `POST /api/orders`: inserts the order and enqueues its `order.created` event in one
/// transaction, so there is never an order without its event or an event without its order.
/// The worker sends the event once the transaction commits.
async fn create_order(
    State(app): State<App>,
    Extension(OrganizationId(org)): Extension<OrganizationId>,
    Json(order): Json<NewOrder>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let id = uuid::Uuid::now_v7().to_string();
    let payload = json!({
        "type": ORDER_CREATED,
        "data": {"id": id, "agent_id": order.agent_id, "item": order.item},
    });

    let txn = app.db.begin().await?;
    // The agent, read in the transaction and only within the caller's organization.
    let agent = agents::Entity::find_by_id(order.agent_id.as_str())
        .filter(agents::Column::OrganizationId.eq(org.as_str()))
        .one(&txn)
        .await?
        .ok_or(AppError::AgentNotFound)?;
    let insert = Query::insert()
        .into_table(Alias::new("orders"))
        .columns([
            Alias::new("id"),
            Alias::new("organization_id"),
            Alias::new("agent_id"),
            Alias::new("item"),
        ])
        .values([
            id.as_str().into(),
            org.as_str().into(),
            order.agent_id.as_str().into(),
            order.item.as_str().into(),
        ])?
        .to_owned();
    txn.execute(&insert).await?;
    // The event id is the order id: it becomes the delivery's `webhook-id`, and enqueueing
    // the same event twice is one delivery.
    let enqueued = delivery::enqueue_for_agent(
        &txn,
        &app.settings,
        &agent,
        &id,
        ORDER_CREATED,
        &payload,
        chrono::Utc::now(),
    )
    .await?;
    txn.commit().await?;

    let delivery = match enqueued {
        Enqueued::Created(d) | Enqueued::Existing(d) => json!({"queued": d.id}),
        // The agent's webhook is off, has no URL or does not want this event: the order
        // stands, nothing is sent.
        Enqueued::Skipped(reason) => json!({"skipped": format!("{reason:?}")}),
    };
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "delivery": delivery})),
    ))
}

/// The app's errors, as JSON. Causes are logged, never sent.
enum AppError {
    AgentNotFound,
    Internal(String),
}

impl<E: std::fmt::Display> From<E> for AppError {
    fn from(err: E) -> Self {
        AppError::Internal(err.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::AgentNotFound => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "agent not found"})),
            )
                .into_response(),
            AppError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                let body = json!({"error": "internal"});
                (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
            }
        }
    }
}

// ---- A demo receiver, and the self-check --------------------------------------------------------

/// One delivery as the demo receiver got it.
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// `POST /demo/receiver`: a stand-in for a customer's endpoint, on this very server (outside
/// `/api`, so without an API key). It hands each delivery on and answers 204.
async fn receive(
    State(received): State<mpsc::UnboundedSender<Received>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let _ = received.send(Received { headers, body });
    StatusCode::NO_CONTENT
}

async fn print_received(mut received: mpsc::UnboundedReceiver<Received>) {
    while let Some(Received { headers, body }) = received.recv().await {
        let id = headers
            .get(signing::HEADER_ID)
            .and_then(|v| v.to_str().ok());
        println!(
            "receiver: webhook-id {} body {}",
            id.unwrap_or("?"),
            String::from_utf8_lossy(&body)
        );
    }
}

/// The settings of `--self-check`: the environment's, with the development URL policy (the
/// receiver is on loopback), a fast poll, and a key ring of its own unless one is set.
fn self_check_settings() -> Result<WebhookSettings, AnyError> {
    let own_keys = agent_webhooks::secrets::secret_box::KeyRing::generate_key_entry("self-check")?;
    let settings = WebhookSettings::from_lookup(|name| match name {
        vars::URL_POLICY => Some("development".to_owned()),
        vars::POLL_INTERVAL_MS => Some("100".to_owned()),
        vars::SECRET_KEYS => Some(std::env::var(name).unwrap_or_else(|_| own_keys.clone())),
        other => std::env::var(other).ok(),
    })?;
    Ok(settings)
}

/// Calls the running app as a client would: without a key (401), then configures
/// `agent-demo`'s webhook through the library's routes, creates an order through the app's,
/// and checks the delivery the receiver gets: its id, its body, its signature.
async fn run_self_check(
    addr: SocketAddr,
    api_key: &str,
    mut received: mpsc::UnboundedReceiver<Received>,
) -> Result<(), AnyError> {
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;

    // The API's document, without a key: the library's paths under the app's prefix, and
    // the app's API key required.
    let document = client
        .get(format!("{base}{}", openapi_options()?.document_path()))
        .send()
        .await?;
    let document = expect_status(document, 200, "the OpenAPI document").await?;
    let webhook_path = format!("{WEBHOOKS_PREFIX}/v1/agents/{{agent_id}}/webhook");
    if document["paths"].get(&webhook_path).is_none()
        || document["security"] != json!([{"apiKey": []}])
    {
        return Err(format!("the OpenAPI document lacks {webhook_path} or the API key").into());
    }

    let anonymous = client
        .post(format!("{base}/api/orders"))
        .header("content-type", "application/json")
        .body(json!({"agent_id": "agent-demo", "item": "nothing"}).to_string())
        .send()
        .await?;
    expect_status(anonymous, 401, "an order without an API key").await?;

    let secret = WebhookSecret::generate()?;
    let configured = client
        .put(format!("{base}/api/webhooks/v1/agents/agent-demo/webhook"))
        .header(API_KEY_HEADER, api_key)
        .header("content-type", "application/json")
        .body(
            json!({
                "webhook_url": format!("{base}/demo/receiver"),
                "webhook_secret": secret.expose(),
            })
            .to_string(),
        )
        .send()
        .await?;
    expect_status(configured, 200, "configuring agent-demo's webhook").await?;

    let created = client
        .post(format!("{base}/api/orders"))
        .header(API_KEY_HEADER, api_key)
        .header("content-type", "application/json")
        .body(json!({"agent_id": "agent-demo", "item": "one teapot"}).to_string())
        .send()
        .await?;
    let created = expect_status(created, 201, "creating an order").await?;
    let order_id = created["id"]
        .as_str()
        .ok_or("the order has no id")?
        .to_owned();
    if created["delivery"]["queued"].as_str().is_none() {
        return Err(format!("the order's event was not queued: {created}").into());
    }

    let Received { headers, body } = received.recv().await.ok_or("the demo receiver stopped")?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, timestamp, signature) = (
        header(signing::HEADER_ID),
        header(signing::HEADER_TIMESTAMP),
        header(signing::HEADER_SIGNATURE),
    );
    let now = chrono::Utc::now().timestamp();
    signing::verify(
        &[&secret],
        ReceivedHeaders {
            id: &id,
            timestamp: &timestamp,
            signature: &signature,
        },
        &body,
        now,
        signing::DEFAULT_TOLERANCE,
    )
    .map_err(|e| format!("the delivery's signature does not verify: {e}"))?;
    let event: Value = serde_json::from_slice(&body)?;
    if id != order_id || event["type"] != ORDER_CREATED || event["data"]["id"] != order_id.as_str()
    {
        return Err(format!("unexpected delivery: webhook-id {id}, body {event}").into());
    }
    println!("self-check ok: order {order_id} delivered as {ORDER_CREATED}, signature verified");
    Ok(())
}

/// The JSON body of `response` if its status is `want`; otherwise an error naming `what`.
async fn expect_status(
    response: reqwest::Response,
    want: u16,
    what: &str,
) -> Result<Value, AnyError> {
    let status = response.status().as_u16();
    let text = response.text().await?;
    if status != want {
        return Err(format!("{what}: expected {want}, got {status}: {text}").into());
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Resolves once `stop` is set.
async fn wait_for_stop(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}
