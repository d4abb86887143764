//! The HTTP API an app server mounts (feature `axum`): an agent's webhook configuration, test
//! events, delivery history, retries and recovery, built on [`crate::webhook`] and
//! [`crate::delivery`], so every app server does not write the same routes, validation, error
//! mapping and tenant checks by hand.
//!
//! ```no_run
//! use agent_webhooks::http::{self, FromExtension, HttpState};
//!
//! # async fn app(db: agent_webhooks::sea_orm::DatabaseConnection) {
//! let settings = agent_webhooks::settings::WebhookSettings::from_env().unwrap();
//! // The app's own auth middleware inserts an `http::OrganizationId` into the request's
//! // extensions; `FromExtension` reads it.
//! let webhooks = http::router(HttpState::new(db, settings, FromExtension::new()));
//! let app = axum::Router::new().nest("/api/webhooks", webhooks);
//! # let _: axum::Router = app;
//! # }
//! ```
//!
//! `docs/embedding.md` walks through a whole app built this way (`examples/embedding`).
//! [`openapi_router`] serves the document with the routes at their own paths (`/v1/…`); an
//! app that nests them under a prefix and publishes the document adds the prefix as a server
//! to [`openapi`]'s document and serves that instead.
//!
//! # Routes
//!
//! | method | path | does | success |
//! |---|---|---|---|
//! | GET | `/v1/agents/{agent_id}/webhook` | the configuration ([`WebhookConfigView`]), never the secret | 200 |
//! | PUT | `/v1/agents/{agent_id}/webhook` | sets it ([`WebhookConfig`]) | 200 |
//! | PATCH | `/v1/agents/{agent_id}/webhook` | changes the given fields ([`WebhookConfigPatch`]) | 200 |
//! | DELETE | `/v1/agents/{agent_id}/webhook` | clears URL, secret, event and content filters ([`webhook::clear`]) | 204 |
//! | POST | `/v1/agents/{agent_id}/webhook/secret/rotate` | a new `whsec_` secret, in this answer only | 200 |
//! | POST | `/v1/agents/{agent_id}/webhook/test` | enqueues a [`TEST_EVENT`] delivery | 202 |
//! | POST | `/v1/agents/{agent_id}/webhook/filter-check` | whether an event ([`FilterCheck`]) would be delivered, and why not ([`delivery::would_deliver`]); writes nothing | 200 |
//! | GET | `/v1/agents/{agent_id}/webhook/deliveries` | history, newest first (`state`, `event_type`, `cursor`, `limit`) | 200 |
//! | POST | `/v1/agents/{agent_id}/webhook/recover` | requeues every failed delivery since `since` ([`delivery::recover`]) | 200 |
//! | GET | `/v1/agents/{agent_id}/webhook/stats` | [`DeliveryStats`] | 200 |
//! | GET | `/v1/webhook-deliveries/{delivery_id}` | one delivery with its attempt log | 200 |
//! | POST | `/v1/webhook-deliveries/{delivery_id}/retry` | requeues one failed delivery | 200 |
//! | POST | `/v1/agents/{agent_id}/webhook/portal-link` | a link to the agent's [`portal`] page (`valid_for_secs`) | 200 |
//!
//! The router also serves the [`portal`]'s HTML pages under [`portal::PORTAL_PREFIX`]; they
//! are not API routes and not in the OpenAPI document.
//!
//! [`openapi_router`] serves the OpenAPI 3.1 document of exactly these routes at
//! [`OPENAPI_PATH`]; it is built from the same route list as [`router`] (utoipa-axum), so the
//! two cannot drift apart.
//!
//! # Tenancy
//!
//! The app says who calls through [`CallerOrganization`]: its own authentication stays its
//! own, the API only needs the caller's `organization_id` (no organization: 401). Every route
//! loads the agent or delivery first and answers 404 `agent-not-found` /
//! `delivery-not-found` when it belongs to another organization, with the same body as for an
//! id that does not exist, before it reads the query string or the body. A soft-deleted
//! agent is missing too. Handlers take the agent or delivery from an extractor that does all
//! of this (caller, path id, row, organization), so a route cannot forget the check.
//!
//! # Errors
//!
//! Every failure is an RFC 9457 `application/problem+json` body, mapped in one place
//! ([`ApiError`]): `type` is `urn:agent-webhooks:problem:<slug>` (stable; match on it, not on
//! `title` or `detail`), `status`, `title`, `detail`, and where one field is at fault `field`
//! (the JSON field or query parameter) and `rule` (the rule it broke; for a URL the
//! [`UrlPolicyError::rule`](crate::webhook::url_policy::UrlPolicyError::rule) name, e.g. `loopback`).
//!
//! | slug | status | when |
//! |---|---|---|
//! | `unauthenticated` | 401 | [`CallerOrganization`] named no organization |
//! | `malformed-json` | 400 | the body is not JSON |
//! | `invalid-parameter` | 400 | a query parameter is unknown or invalid (`state`, `limit`, `cursor`) |
//! | `agent-not-found` | 404 | no such agent in the caller's organization |
//! | `delivery-not-found` | 404 | no such delivery in the caller's organization |
//! | `not-found` | 404 | no route matches the path ([`router`]'s fallback) |
//! | `method-not-allowed` | 405 | the path does not take this method; `allow` lists those it takes |
//! | `not-requeueable` | 409 | retry of a delivery that is not failed |
//! | `secret-changed` | 409 | the signing secret changed while it was being rotated; nothing was changed, retry |
//! | `webhook-not-sendable` | 409 | a test event for a webhook that is disabled, has no URL or no secret (`field`, `rule`) |
//! | `body-too-large` | 413 | the body is over [`MAX_BODY_BYTES`]; refused before it is parsed |
//! | `unsupported-media-type` | 415 | a body that is not `application/json` |
//! | `invalid-body` | 422 | JSON of the wrong shape: an unknown field (`rule: unknown-field`), a missing one (`required`), a wrong type (`type`; also a body that is not an object) |
//! | `invalid-webhook-url` | 422 | the URL breaks a rule of the URL policy |
//! | `invalid-event-filter` | 422 | `webhook_events` holds an unknown name, an empty entry or too many |
//! | `invalid-content-filter` | 422 | `webhook_filter` breaks a rule of the filter language; `detail` names the place in the filter, `rule` the rule ([`FilterRefusal::rule`](crate::webhook::content_filter::FilterRefusal::rule)) |
//! | `invalid-secret` | 422 | `webhook_secret` is not an accepted form |
//! | `portal-unavailable` | 503 | a portal link was asked for, but the server has no `WEBHOOK_PORTAL_KEY` |
//! | `secrets-unavailable` | 503 | the server has no `WEBHOOK_SECRET_KEYS`, so it cannot store a secret |
//! | `internal` | 500 | anything else; the cause is logged, never sent |
//!
//! A request line longer than hyper's limit (a URI over 65,534 bytes) is answered 414 by hyper
//! itself, with no body, before any router sees the request.
//!
//! Bodies never carry a secret: the configuration views say `has_secret`, and only the rotate
//! answer holds the new secret (with `cache-control: no-store`).
//!
//! # Decisions
//!
//! * Check and act are separate statements: an agent moved to another organization between
//!   them is acted on once more. Agents do not change organization in the platform.
//! * `PUT` replaces the configuration ([`webhook::configure`]; an absent secret keeps the
//!   stored one); `PATCH` changes only the given fields ([`webhook::update`]).
//! * The test event is sent whatever the event filter says ([`TEST_EVENT`]), but only to an
//!   enabled webhook with a URL and a secret; otherwise 409 says which is missing.
//! * Secret rotation keeps the replaced secret signing alongside the new one for the
//!   settings' grace period (`WEBHOOK_SIGNING_GRACE_SECS`, default 24 h). The route takes no
//!   body: another grace (or none) is `agent-webhooks signing rotate --grace`, and a leaked
//!   secret is cut off at once with `signing revoke-previous`.
//! * Recovery runs within the request, in bounded batches ([`delivery::recover`]), and
//!   answers how many deliveries it requeued.
//!
//! [`WebhookConfigView`]: crate::webhook::WebhookConfigView
//! [`WebhookConfig`]: crate::webhook::WebhookConfig
//! [`WebhookConfigPatch`]: crate::webhook::WebhookConfigPatch
//! [`webhook::clear`]: crate::webhook::clear
//! [`webhook::configure`]: crate::webhook::configure
//! [`webhook::update`]: crate::webhook::update
//! [`TEST_EVENT`]: crate::webhook::events::TEST_EVENT
//! [`delivery::recover`]: crate::delivery::recover
//! [`DeliveryStats`]: crate::delivery::DeliveryStats

mod deliveries;
mod extract;
pub mod portal;
mod problem;
mod webhook;

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use axum::Json;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::http::request::Parts;
use futures::future::BoxFuture;
use sea_orm::DatabaseConnection;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use deliveries::{DeliveryDetail, RecoverRequest};
pub use problem::{ApiError, PROBLEM_TYPE_PREFIX, Problem};
pub use webhook::{FilterCheck, RotatedSecret};

use crate::settings::WebhookSettings;

/// Largest request body the API reads, in bytes; larger bodies are refused (413) before they
/// are parsed. The largest valid body (a 2 KiB URL, a 256-character secret, 64 event names)
/// is far below it.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Where [`openapi_router`] serves the OpenAPI document.
pub const OPENAPI_PATH: &str = "/v1/webhooks/openapi.json";

const TAG: &str = "webhooks";

/// How the app tells the API which organization a request acts for: the app's authentication
/// (sessions, tokens, mTLS) stays the app's, and every route is scoped by the answer.
///
/// Three ways to give one, from the simplest:
///
/// * [`FromExtension`]: the app's own middleware already authenticated the request and
///   inserted an [`OrganizationId`] into its extensions;
/// * a closure `|parts: &Parts| -> impl Future<Output = Option<String>>` (annotate the
///   parameter's type). Its future cannot borrow `parts`: read what it needs first, then move
///   it in:
///
///   ```
///   use agent_webhooks::http::CallerOrganization;
///   use axum::http::request::Parts;
///
///   let caller = |parts: &Parts| {
///       let org = parts.headers.get("x-org").and_then(|v| v.to_str().ok()).map(str::to_owned);
///       async move { org }
///   };
///   # fn is_caller(_: impl CallerOrganization) {}
///   # is_caller(caller);
///   ```
/// * implementing this trait, for a type that holds state of its own.
pub trait CallerOrganization: Send + Sync + 'static {
    /// The caller's `organization_id`, or `None` when the request is not authenticated (the
    /// API answers 401 `unauthenticated`).
    fn organization_id<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Option<String>>;
}

/// A closure is a [`CallerOrganization`], so an app needs neither a type nor `BoxFuture`.
impl<F, Fut> CallerOrganization for F
where
    F: Fn(&Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<String>> + Send + 'static,
{
    fn organization_id<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Option<String>> {
        Box::pin(self(parts))
    }
}

/// The organization a request acts for, as the app's own authentication middleware found it:
/// inserted into the request's extensions (`request.extensions_mut().insert(..)`) and read by
/// [`FromExtension`]. A type of its own, so that no other layer's `String` extension is taken
/// for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OrganizationId(pub String);

impl AsRef<str> for OrganizationId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A [`CallerOrganization`] that reads the organization the app's middleware inserted into
/// the request's extensions: an [`OrganizationId`] ([`FromExtension::new`]), or the app's own
/// type `T` that is [`AsRef<str>`] (`FromExtension::<T>::default()`). No extension: 401.
///
/// The middleware must run before the API's routes: put it on the app's router as a layer
/// around (or `route_layer` of) the router it nests or merges [`router`] into.
pub struct FromExtension<T = OrganizationId>(PhantomData<fn() -> T>);

impl FromExtension {
    /// Reads an [`OrganizationId`].
    pub const fn new() -> Self {
        FromExtension(PhantomData)
    }
}

impl<T> Default for FromExtension<T> {
    fn default() -> Self {
        FromExtension(PhantomData)
    }
}

impl<T> Clone for FromExtension<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for FromExtension<T> {}

impl<T> std::fmt::Debug for FromExtension<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FromExtension<{}>", std::any::type_name::<T>())
    }
}

impl<T> CallerOrganization for FromExtension<T>
where
    T: AsRef<str> + Send + Sync + 'static,
{
    fn organization_id<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Option<String>> {
        let org = parts.extensions.get::<T>().map(|t| t.as_ref().to_owned());
        Box::pin(std::future::ready(org))
    }
}

/// What the routes need: the database, the one settings context and the app's
/// [`CallerOrganization`]. Cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    db: DatabaseConnection,
    settings: Arc<WebhookSettings>,
    caller: Arc<dyn CallerOrganization>,
}

impl HttpState {
    /// The state of [`router`].
    pub fn new(
        db: DatabaseConnection,
        settings: WebhookSettings,
        caller: impl CallerOrganization,
    ) -> Self {
        HttpState {
            db,
            settings: Arc::new(settings),
            caller: Arc::new(caller),
        }
    }
}

/// The API's routes (see the [module documentation](self)), ready to merge into the app's
/// router (and to put behind its layers). Its fallback answers every path it does not know with
/// a 404 problem; an app with a fallback of its own calls
/// [`reset_fallback`](axum::Router::reset_fallback) on it first, as axum merges only one.
pub fn router(state: HttpState) -> axum::Router {
    let (router, _) = routes().split_for_parts();
    router
        .merge(portal::routes(&state))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(route_not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The fallback of [`router`], so that an unknown path is a problem document like any error.
async fn route_not_found() -> ApiError {
    ApiError::RouteNotFound
}

/// The answer to a method a path does not take: axum adds the `allow` header, this the body.
async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method)
}

/// The OpenAPI 3.1 document of the routes of [`router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// `GET` [`OPENAPI_PATH`]: the [`openapi`] document as JSON, for the app to mount where (and
/// behind what) it wants.
pub fn openapi_router() -> axum::Router {
    let doc = Arc::new(openapi());
    axum::Router::new()
        .route(
            OPENAPI_PATH,
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { Json(doc) }
            }),
        )
        .method_not_allowed_fallback(method_not_allowed)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "agent-webhooks",
        description = "Agent webhook configuration, test events and delivery history."
    ),
    components(schemas(Problem)),
    tags((name = "webhooks", description = "An agent's webhook and its deliveries"))
)]
struct ApiDoc;

/// One list of routes for the router and the document.
fn routes() -> OpenApiRouter<HttpState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(
            webhook::get_webhook,
            webhook::put_webhook,
            webhook::patch_webhook,
            webhook::delete_webhook
        ))
        .routes(routes!(webhook::rotate_secret))
        .routes(routes!(webhook::send_test))
        .routes(routes!(webhook::filter_check))
        .routes(routes!(deliveries::list_deliveries))
        .routes(routes!(deliveries::recover))
        .routes(routes!(deliveries::get_stats))
        .routes(routes!(deliveries::get_delivery))
        .routes(routes!(deliveries::retry_delivery))
        .routes(routes!(portal::mint_portal_link))
}
