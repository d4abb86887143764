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
//! app that nests them under a prefix of its own, behind its own authentication, serves
//! [`openapi_router_with`] instead: the document with the prefix on every path and the app's
//! security scheme ([`OpenApiOptions`]).
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
//!   stored one, an absent `webhook_filter` means no content filter); `PATCH` changes only the
//!   given fields ([`webhook::update`]; `"webhook_filter": null` removes the filter).
//! * The test event is sent whatever the event and content filters say ([`TEST_EVENT`]), but only to an
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
//! [`delivery::would_deliver`]: crate::delivery::would_deliver
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
use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use deliveries::{DeliveryDetail, RecoverRequest};
pub use problem::{ApiError, PROBLEM_TYPE_PREFIX, Problem};
/// The `utoipa` the documents are built with, so an app's [`SecurityScheme`] (for
/// [`OpenApiOptions::security`]) is of the same version without a dependency of its own.
pub use utoipa;
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
    openapi_router_with(&OpenApiOptions::new())
}

/// How the document describes the API as an app publishes it: nested under the app's prefix
/// and behind the app's authentication, which [`openapi`] cannot know. The default changes
/// nothing.
///
/// The prefix goes in front of every path (`/api/webhooks/v1/agents/{agent_id}/webhook`)
/// rather than into a `servers` entry, because tools take a server URL as something to
/// replace: openapi-generator's clients and schemathesis (`--url`) swap their base URL for the
/// document's `servers`, so a caller who points them at `https://app.example.com` would lose
/// a prefix kept there, while prefixed paths work under any base URL. An app can also
/// [`merge`](utoipa::openapi::OpenApi::merge) the prefixed document into its own, whose
/// routes have no such prefix, which one `servers` list for both could not express.
///
/// ```
/// use agent_webhooks::http::{self, OpenApiOptions};
/// use agent_webhooks::http::utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
///
/// let api_key = SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key")));
/// let options = OpenApiOptions::new().prefix("/api/webhooks")?.security("apiKey", api_key)?;
/// let doc = http::openapi_with(&options);
/// assert!(doc.paths.paths.contains_key("/api/webhooks/v1/agents/{agent_id}/webhook"));
/// # Ok::<(), http::OpenApiOptionsError>(())
/// ```
#[derive(Clone, Default, PartialEq)]
pub struct OpenApiOptions {
    prefix: String,
    security: Option<(String, SecurityScheme)>,
}

/// By hand: utoipa's types are `Debug` only under its `debug` feature, so the scheme shows by
/// its name.
impl std::fmt::Debug for OpenApiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenApiOptions")
            .field("prefix", &self.prefix)
            .field("security", &self.security.as_ref().map(|(name, _)| name))
            .finish()
    }
}

/// Why [`OpenApiOptions`] refused a prefix or a scheme name: either would make a document
/// that tools reject or that describes paths the app does not serve.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenApiOptionsError {
    #[error(
        "the OpenAPI prefix must be empty or a path like `/api/webhooks`: starting with `/`, not ending with one, without empty segments, in letters, digits and `-._~`; got `{0}`"
    )]
    Prefix(String),
    #[error(
        "a security scheme name must be letters, digits and `.-_` (an OpenAPI component name); got `{0}`"
    )]
    SchemeName(String),
}

impl OpenApiOptions {
    /// No prefix, no security scheme: [`openapi`]'s document.
    pub fn new() -> Self {
        OpenApiOptions::default()
    }

    /// The path the app nests [`router`] under, as given to `nest` (`/api/webhooks`); `""` is
    /// none.
    pub fn prefix(mut self, prefix: &str) -> Result<Self, OpenApiOptionsError> {
        let plain = |segment: &str| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        };
        let valid = match prefix.strip_prefix('/') {
            None => prefix.is_empty(),
            Some(rest) => rest.split('/').all(plain),
        };
        if !valid {
            return Err(OpenApiOptionsError::Prefix(prefix.to_owned()));
        }
        self.prefix = prefix.to_owned();
        Ok(self)
    }

    /// The app's security scheme, added to the document's components under `name` and
    /// required (with no scopes) by every operation: the routes run behind the app's
    /// authentication, so each of them needs what it asks for.
    pub fn security(
        mut self,
        name: &str,
        scheme: SecurityScheme,
    ) -> Result<Self, OpenApiOptionsError> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !valid {
            return Err(OpenApiOptionsError::SchemeName(name.to_owned()));
        }
        self.security = Some((name.to_owned(), scheme));
        Ok(self)
    }

    /// Where [`openapi_router_with`] serves the document: [`OPENAPI_PATH`] under the prefix.
    pub fn document_path(&self) -> String {
        format!("{}{OPENAPI_PATH}", self.prefix)
    }
}

/// [`openapi`]'s document as an app that nests [`router`] publishes it: see
/// [`OpenApiOptions`].
pub fn openapi_with(options: &OpenApiOptions) -> utoipa::openapi::OpenApi {
    let mut doc = openapi();
    if !options.prefix.is_empty() {
        let paths = std::mem::take(&mut doc.paths.paths);
        doc.paths.paths = paths
            .into_iter()
            .map(|(path, item)| (format!("{}{path}", options.prefix), item))
            .collect();
    }
    if let Some((name, scheme)) = &options.security {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(name, scheme.clone());
        doc.security = Some(vec![SecurityRequirement::new(name, Vec::<String>::new())]);
    }
    doc
}

/// `GET` [`OpenApiOptions::document_path`] (the prefix, then [`OPENAPI_PATH`]): the
/// [`openapi_with`] document as JSON. The path already holds the prefix, so the app merges
/// this router at its root rather than nesting it; outside the app's authentication layer the
/// document is public, and its `security` says what the operations need.
pub fn openapi_router_with(options: &OpenApiOptions) -> axum::Router {
    let doc = Arc::new(openapi_with(options));
    axum::Router::new()
        .route(
            &options.document_path(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};

    fn api_key() -> SecurityScheme {
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key")))
    }

    fn json(doc: &utoipa::openapi::OpenApi) -> serde_json::Value {
        serde_json::to_value(doc).unwrap()
    }

    #[test]
    fn the_default_options_change_nothing() {
        assert_eq!(
            json(&openapi_with(&OpenApiOptions::new())),
            json(&openapi())
        );
        let empty = OpenApiOptions::new().prefix("").unwrap();
        assert_eq!(json(&openapi_with(&empty)), json(&openapi()));
        assert_eq!(OpenApiOptions::new().document_path(), OPENAPI_PATH);
    }

    #[test]
    fn the_prefix_is_on_every_path_and_the_scheme_is_required_everywhere() {
        let options = OpenApiOptions::new()
            .prefix("/api/webhooks")
            .unwrap()
            .security("apiKey", api_key())
            .unwrap();
        assert_eq!(
            options.document_path(),
            "/api/webhooks/v1/webhooks/openapi.json"
        );
        let plain = json(&openapi());
        let doc = json(&openapi_with(&options));
        let paths = |doc: &serde_json::Value| {
            doc["paths"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        let expected: Vec<String> = paths(&plain)
            .iter()
            .map(|path| format!("/api/webhooks{path}"))
            .collect();
        assert!(expected.contains(&"/api/webhooks/v1/agents/{agent_id}/webhook".to_owned()));
        assert_eq!(paths(&doc), expected);
        // The operations themselves are unchanged, only moved.
        assert_eq!(
            doc["paths"]["/api/webhooks/v1/webhook-deliveries/{delivery_id}"],
            plain["paths"]["/v1/webhook-deliveries/{delivery_id}"]
        );
        assert_eq!(doc["security"], serde_json::json!([{"apiKey": []}]));
        assert_eq!(
            doc["components"]["securitySchemes"],
            serde_json::json!({"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}})
        );
        // The library's own components stay.
        assert_eq!(
            doc["components"]["schemas"]["Problem"],
            plain["components"]["schemas"]["Problem"]
        );
        assert!(doc.get("servers").is_none());
    }

    #[test]
    fn security_without_a_prefix_and_the_last_scheme_wins() {
        let bearer =
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        let options = OpenApiOptions::new()
            .security("first", api_key())
            .unwrap()
            .security("bearer_auth", bearer)
            .unwrap();
        let doc = json(&openapi_with(&options));
        assert_eq!(doc["security"], serde_json::json!([{"bearer_auth": []}]));
        assert_eq!(
            doc["components"]["securitySchemes"],
            serde_json::json!({"bearer_auth": {"type": "http", "scheme": "bearer"}})
        );
        assert_eq!(doc["paths"], json(&openapi())["paths"]);
    }

    #[test]
    fn bad_prefixes_and_scheme_names_are_refused() {
        for prefix in [
            "api",
            "/api/",
            "/",
            "//api",
            "/api//webhooks",
            "/api/{org}",
            "/a b",
            "/api?x",
            "/é",
        ] {
            assert_eq!(
                OpenApiOptions::new().prefix(prefix),
                Err(OpenApiOptionsError::Prefix(prefix.to_owned())),
                "{prefix}"
            );
        }
        for prefix in ["/api", "/api/webhooks", "/v-1.2_~x"] {
            assert!(OpenApiOptions::new().prefix(prefix).is_ok(), "{prefix}");
        }
        for name in ["", "api key", "api/key", "#key"] {
            assert_eq!(
                OpenApiOptions::new().security(name, api_key()),
                Err(OpenApiOptionsError::SchemeName(name.to_owned())),
                "{name:?}"
            );
        }
        assert_eq!(
            OpenApiOptionsError::Prefix("api".into()).to_string(),
            "the OpenAPI prefix must be empty or a path like `/api/webhooks`: starting with `/`, \
             not ending with one, without empty segments, in letters, digits and `-._~`; got `api`"
        );
    }
}
