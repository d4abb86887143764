//! The HTTP API an app server mounts (feature `axum`): an agent's webhook configuration, test
//! events, delivery history, retries and recovery, built on [`crate::webhook`] and
//! [`crate::delivery`], so every app server does not write the same routes, validation, error
//! mapping and tenant checks by hand.
//!
//! ```no_run
//! use agent_webhooks::http::{self, CallerOrganization, HttpState};
//! use axum::http::request::Parts;
//! use futures::future::BoxFuture;
//!
//! /// The app's own authentication, reduced to the one thing the API needs.
//! struct FromHeader;
//!
//! impl CallerOrganization for FromHeader {
//!     fn organization_id<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Option<String>> {
//!         let org = parts.headers.get("x-org").and_then(|v| v.to_str().ok()).map(str::to_owned);
//!         Box::pin(async move { org })
//!     }
//! }
//!
//! # async fn app(db: sea_orm::DatabaseConnection) {
//! let settings = agent_webhooks::settings::WebhookSettings::from_env().unwrap();
//! let app = axum::Router::new()
//!     .merge(http::router(HttpState::new(db, settings, FromHeader)))
//!     .merge(http::openapi_router());
//! # let _: axum::Router = app;
//! # }
//! ```
//!
//! # Routes
//!
//! | method | path | does | success |
//! |---|---|---|---|
//! | GET | `/v1/agents/{agent_id}/webhook` | the configuration ([`WebhookConfigView`]), never the secret | 200 |
//! | PUT | `/v1/agents/{agent_id}/webhook` | sets it ([`WebhookConfig`]) | 200 |
//! | PATCH | `/v1/agents/{agent_id}/webhook` | changes the given fields ([`WebhookConfigPatch`]) | 200 |
//! | DELETE | `/v1/agents/{agent_id}/webhook` | clears URL, secret and filter ([`webhook::clear`]) | 204 |
//! | POST | `/v1/agents/{agent_id}/webhook/secret/rotate` | a new `whsec_` secret, in this answer only | 200 |
//! | POST | `/v1/agents/{agent_id}/webhook/test` | enqueues a [`TEST_EVENT`] delivery | 202 |
//! | GET | `/v1/agents/{agent_id}/webhook/deliveries` | history, newest first (`state`, `event_type`, `cursor`, `limit`) | 200 |
//! | POST | `/v1/agents/{agent_id}/webhook/recover` | requeues every failed delivery since `since` ([`delivery::recover`]) | 200 |
//! | GET | `/v1/agents/{agent_id}/webhook/stats` | [`DeliveryStats`] | 200 |
//! | GET | `/v1/webhook-deliveries/{delivery_id}` | one delivery with its attempt log | 200 |
//! | POST | `/v1/webhook-deliveries/{delivery_id}/retry` | requeues one failed delivery | 200 |
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
//! id that does not exist, before it looks at the request body's content. A soft-deleted
//! agent is missing too.
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
//! | `invalid-secret` | 422 | `webhook_secret` is not an accepted form |
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

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sea_orm::DatabaseConnection;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::delivery::{
    self, AttemptRecord, DeliveryState, DeliveryStats, Enqueued, HistoryPage, HistoryQuery,
    MAX_PAGE_SIZE, RecoverReport, SkipReason, WebhookDelivery,
};
use crate::error::Error;
use crate::settings::WebhookSettings;
use crate::webhook::events::TEST_EVENT;
use crate::webhook::{self, WebhookConfig, WebhookConfigPatch, WebhookConfigView};

/// Largest request body the API reads, in bytes; larger bodies are refused (413) before they
/// are parsed. The largest valid body (a 2 KiB URL, a 256-character secret, 64 event names)
/// is far below it.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Where [`openapi_router`] serves the OpenAPI document.
pub const OPENAPI_PATH: &str = "/v1/webhooks/openapi.json";

/// The prefix of every problem `type`.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:agent-webhooks:problem:";

const TAG: &str = "webhooks";

/// How the app tells the API which organization a request acts for: the app's authentication
/// (sessions, tokens, mTLS) stays the app's, and every route is scoped by the answer.
pub trait CallerOrganization: Send + Sync + 'static {
    /// The caller's `organization_id`, or `None` when the request is not authenticated (the
    /// API answers 401 `unauthenticated`).
    fn organization_id<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Option<String>>;
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
            get_webhook,
            put_webhook,
            patch_webhook,
            delete_webhook
        ))
        .routes(routes!(rotate_secret))
        .routes(routes!(send_test))
        .routes(routes!(list_deliveries))
        .routes(routes!(recover))
        .routes(routes!(get_stats))
        .routes(routes!(get_delivery))
        .routes(routes!(retry_delivery))
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An RFC 9457 problem: the body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// `urn:agent-webhooks:problem:<slug>`, stable.
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong in this request, for a human.
    pub detail: String,
    /// The JSON field or query parameter at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The rule that field broke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

// The problem responses the routes share, for the OpenAPI document only (never constructed).

/// 401 on every route.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 401,
    description = "Not authenticated",
    content_type = "application/problem+json"
)]
#[allow(dead_code)]
struct Unauthorized(Problem);

/// 404 on every route under an agent (also another organization's agent).
#[derive(utoipa::IntoResponses)]
#[response(
    status = 404,
    description = "No such agent",
    content_type = "application/problem+json"
)]
#[allow(dead_code)]
struct AgentNotFound(Problem);

/// 404 on every route under a delivery (also another organization's delivery).
#[derive(utoipa::IntoResponses)]
#[response(
    status = 404,
    description = "No such delivery",
    content_type = "application/problem+json"
)]
#[allow(dead_code)]
struct DeliveryNotFound(Problem);

/// The problems of a JSON request body.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum JsonBodyProblems {
    #[response(
        status = 400,
        description = "Not JSON",
        content_type = "application/problem+json"
    )]
    Malformed(Problem),
    #[response(
        status = 413,
        description = "Body too large",
        content_type = "application/problem+json"
    )]
    TooLarge(Problem),
    #[response(
        status = 415,
        description = "Not JSON",
        content_type = "application/problem+json"
    )]
    NotJson(Problem),
    #[response(
        status = 422,
        description = "A field breaks a rule",
        content_type = "application/problem+json"
    )]
    Invalid(Problem),
}

/// Why a request failed; [`IntoResponse`] maps each case to its [`Problem`], in this one place.
#[derive(Debug)]
pub enum ApiError {
    /// The service refused or failed.
    Service(Error),
    /// No caller organization.
    Unauthenticated,
    /// No route matches the path.
    RouteNotFound,
    /// The path has routes, none for this method.
    MethodNotAllowed(Method),
    /// A body that is not declared as JSON.
    UnsupportedMediaType,
    /// A body over [`MAX_BODY_BYTES`].
    BodyTooLarge,
    /// A body that is not JSON (or could not be read).
    MalformedJson(String),
    /// JSON of the wrong shape.
    InvalidBody {
        /// The field at fault, when one is.
        field: Option<String>,
        /// `unknown-field`, `required` or `type`.
        rule: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// An invalid query or path parameter.
    InvalidParameter {
        /// The parameter, when known.
        field: Option<String>,
        /// The rule it broke.
        rule: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// No secret could be generated.
    Rng(crate::secrets::webhook_secret::RngError),
    /// A test event cannot be sent to this webhook.
    NotSendable {
        /// The missing piece.
        field: &'static str,
        /// Why.
        detail: &'static str,
    },
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError::Service(error)
    }
}

impl ApiError {
    fn problem(&self) -> Problem {
        let problem = |status: StatusCode, slug: &str, title: &str, detail: String| Problem {
            type_: format!("{PROBLEM_TYPE_PREFIX}{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            field: None,
            rule: None,
        };
        let at = |mut p: Problem, field: Option<&str>, rule: &str| {
            p.field = field.map(str::to_owned);
            p.rule = Some(rule.to_owned());
            p
        };
        match self {
            ApiError::Unauthenticated => problem(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Unauthenticated",
                "the request does not say which organization it acts for".to_owned(),
            ),
            ApiError::RouteNotFound => problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                "no route of this API matches the path".to_owned(),
            ),
            ApiError::MethodNotAllowed(method) => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                format!("this path does not take {method}; the allow header lists what it takes"),
            ),
            ApiError::UnsupportedMediaType => problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "the body must be JSON, with content-type: application/json".to_owned(),
            ),
            ApiError::BodyTooLarge => problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Body too large",
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            ),
            ApiError::MalformedJson(detail) => problem(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                "Malformed JSON",
                detail.clone(),
            ),
            ApiError::InvalidBody {
                field,
                rule,
                detail,
            } => at(
                problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-body",
                    "Invalid body",
                    detail.clone(),
                ),
                field.as_deref(),
                rule,
            ),
            ApiError::InvalidParameter {
                field,
                rule,
                detail,
            } => at(
                problem(
                    StatusCode::BAD_REQUEST,
                    "invalid-parameter",
                    "Invalid parameter",
                    detail.clone(),
                ),
                field.as_deref(),
                rule,
            ),
            ApiError::NotSendable { field, detail } => at(
                problem(
                    StatusCode::CONFLICT,
                    "webhook-not-sendable",
                    "Webhook cannot receive deliveries",
                    (*detail).to_owned(),
                ),
                Some(field),
                "configured",
            ),
            ApiError::Rng(e) => {
                tracing::error!(error = %e, "cannot generate a webhook secret");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "the request failed; the cause is logged".to_owned(),
                )
            }
            ApiError::Service(error) => service_problem(error),
        }
    }
}

fn service_problem(error: &Error) -> Problem {
    let problem = |status: StatusCode, slug: &str, title: &str| Problem {
        type_: format!("{PROBLEM_TYPE_PREFIX}{slug}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail: error.to_string(),
        field: None,
        rule: None,
    };
    let at = |mut p: Problem, field: &str, rule: &str| {
        p.field = Some(field.to_owned());
        p.rule = Some(rule.to_owned());
        p
    };
    use crate::secrets::webhook_secret::SecretFormatError;
    use crate::webhook::events::EventFilterError;
    match error {
        Error::AgentNotFound(_) => {
            problem(StatusCode::NOT_FOUND, "agent-not-found", "Agent not found")
        }
        Error::DeliveryNotFound(_) => problem(
            StatusCode::NOT_FOUND,
            "delivery-not-found",
            "Delivery not found",
        ),
        Error::Url(e) => at(
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-webhook-url",
                "Webhook URL not allowed",
            ),
            "webhook_url",
            e.rule(),
        ),
        Error::Events(e) => at(
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-event-filter",
                "Invalid event filter",
            ),
            "webhook_events",
            match e {
                EventFilterError::Unknown { .. } => "known-event",
                EventFilterError::Empty => "not-empty",
                EventFilterError::TooMany { .. } => "max-entries",
            },
        ),
        Error::SecretFormat(e) => at(
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-secret",
                "Invalid webhook secret",
            ),
            "webhook_secret",
            match e {
                SecretFormatError::BadBase64 => "whsec-base64",
                SecretFormatError::BadKeyLength { .. } => "whsec-key-length",
                SecretFormatError::TooShort { .. } => "min-length",
                SecretFormatError::TooLong { .. } => "max-length",
                SecretFormatError::NotPrintable => "printable-ascii",
            },
        ),
        Error::InvalidLimit { .. } => at(
            problem(
                StatusCode::BAD_REQUEST,
                "invalid-parameter",
                "Invalid parameter",
            ),
            "limit",
            "range",
        ),
        Error::BadCursor => at(
            problem(
                StatusCode::BAD_REQUEST,
                "invalid-parameter",
                "Invalid parameter",
            ),
            "cursor",
            "issued-cursor",
        ),
        Error::NotRequeueable { .. } => problem(
            StatusCode::CONFLICT,
            "not-requeueable",
            "Delivery cannot be retried",
        ),
        Error::SecretChanged(_) => problem(
            StatusCode::CONFLICT,
            "secret-changed",
            "Secret changed meanwhile",
        ),
        Error::NoEncryptionKey => {
            let mut p = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "secrets-unavailable",
                "Secrets unavailable",
            );
            p.detail = "this server cannot store webhook secrets (no encryption key)".to_owned();
            p
        }
        _ => {
            // Never sent: a database error or a sealed secret's trouble is the operator's.
            tracing::error!(error = %error, "webhook API request failed");
            let mut p = problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            );
            p.detail = "the request failed; the cause is logged".to_owned();
            p
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

// ---------------------------------------------------------------------------------------------
// Extractors

/// The caller's organization, from the app's [`CallerOrganization`].
struct Caller {
    organization_id: String,
}

impl FromRequestParts<HttpState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        match state.caller.organization_id(parts).await {
            Some(organization_id) => Ok(Caller { organization_id }),
            None => Err(ApiError::Unauthenticated),
        }
    }
}

/// A JSON body: the media type, the size limit (before parsing), then the syntax (400), then
/// the shape with the path of the field at fault (422).
struct JsonBody<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|essence| {
                let essence = essence.trim().to_ascii_lowercase();
                essence == "application/json"
                    || (essence.starts_with("application/") && essence.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge
            } else {
                ApiError::MalformedJson(e.body_text())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Syntax first, over the whole body, so that a body that is not JSON is always a 400.
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::MalformedJson(format!("the body is not JSON: {e}")))?;
    // serde reads a struct from an array too, its fields in declared order, so
    // `["https://…"]` would pass as a configuration: only an object is a body.
    let not_an_object = match value {
        serde_json::Value::Object(_) => None,
        serde_json::Value::Array(_) => Some("an array"),
        serde_json::Value::String(_) => Some("a string"),
        serde_json::Value::Number(_) => Some("a number"),
        serde_json::Value::Bool(_) => Some("a boolean"),
        serde_json::Value::Null => Some("null"),
    };
    if let Some(kind) = not_an_object {
        return Err(ApiError::InvalidBody {
            field: None,
            rule: "type",
            detail: format!("the body must be a JSON object, not {kind}"),
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let named = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned)
        };
        let (field, rule) = if let Some(name) = named("unknown field `") {
            (Some(name), "unknown-field")
        } else if let Some(name) = named("missing field `") {
            (Some(name), "required")
        } else {
            ((path != ".").then_some(path), "type")
        };
        // serde's "invalid type: string \"…\", expected …" quotes the value; a value can be
        // a secret sent in the wrong place, so only the expectation is repeated.
        let detail = match message.split_once(", expected ") {
            Some((_, expected)) if rule == "type" => format!(
                "invalid value for `{}`: expected {expected}",
                field.as_deref().unwrap_or("the body")
            ),
            _ => message,
        };
        ApiError::InvalidBody {
            field,
            rule,
            detail,
        }
    })
}

/// A path parameter; percent-decoding failures are 400 problems like any other parameter.
struct Id(String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Id(id)),
            Err(e) => Err(ApiError::InvalidParameter {
                field: None,
                rule: "path",
                detail: e.body_text(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tenant scoping

/// The live agent `agent_id` of the caller's organization; another organization's agent is
/// [`Error::AgentNotFound`], exactly like a missing one.
async fn own_agent(
    state: &HttpState,
    caller: &Caller,
    agent_id: &str,
) -> Result<webhook::AgentWebhook, ApiError> {
    let agent = webhook::find_agent(&state.db, agent_id).await?;
    if agent.organization_id != caller.organization_id {
        return Err(Error::AgentNotFound(agent_id.to_owned()).into());
    }
    Ok(agent)
}

/// The delivery `delivery_id` of the caller's organization; another organization's is
/// [`Error::DeliveryNotFound`], exactly like a missing one.
async fn own_delivery(
    state: &HttpState,
    caller: &Caller,
    delivery_id: &str,
    now: DateTime<Utc>,
) -> Result<WebhookDelivery, ApiError> {
    let delivery = delivery::get(&state.db, delivery_id, now).await?;
    if delivery.organization_id != caller.organization_id {
        return Err(Error::DeliveryNotFound(delivery_id.to_owned()).into());
    }
    Ok(delivery)
}

// ---------------------------------------------------------------------------------------------
// Handlers

/// The configuration of an agent's webhook, without the secret.
#[utoipa::path(
    get,
    path = "/v1/agents/{agent_id}/webhook",
    tag = TAG,
    params(("agent_id" = String, Path, description = "The agent")),
    responses(
        (status = 200, description = "The configuration", body = WebhookConfigView),
        Unauthorized,
        AgentNotFound,
    )
)]
async fn get_webhook(
    State(state): State<HttpState>,
    caller: Caller,
    Id(agent_id): Id,
) -> Result<Json<WebhookConfigView>, ApiError> {
    own_agent(&state, &caller, &agent_id).await?;
    Ok(Json(webhook::get(&state.db, &agent_id).await?))
}

/// Sets an agent's webhook: URL, secret (absent keeps the stored one), events, enabled.
#[utoipa::path(
    put,
    path = "/v1/agents/{agent_id}/webhook",
    tag = TAG,
    params(("agent_id" = String, Path, description = "The agent")),
    request_body = WebhookConfig,
    responses(
        (status = 200, description = "The configuration as stored", body = WebhookConfigView),
        Unauthorized,
        AgentNotFound,
        JsonBodyProblems,
    )
)]
async fn put_webhook(
    State(state): State<HttpState>,
    caller: Caller,
    Id(agent_id): Id,
    JsonBody(config): JsonBody<WebhookConfig>,
) -> Result<Json<WebhookConfigView>, ApiError> {
    own_agent(&state, &caller, &agent_id).await?;
    Ok(Json(
        webhook::configure(&state.db, &state.settings, &agent_id, &config).await?,
    ))
}

/// Changes the given fields of an agent's webhook and keeps the others.
#[utoipa::path(
    patch,
    path = "/v1/agents/{agent_id}/webhook",
    tag = TAG,
    params(("agent_id" = String, Path, description = "The agent")),
    request_body = WebhookConfigPatch,
    responses(
        (status = 200, description = "The configuration as stored", body = WebhookConfigView),
        Unauthorized,
        AgentNotFound,
        JsonBodyProblems,
    )
)]
async fn patch_webhook(
    State(state): State<HttpState>,
    caller: Caller,
    Id(agent_id): Id,
    JsonBody(patch): JsonBody<WebhookConfigPatch>,
) -> Result<Json<WebhookConfigView>, ApiError> {
    own_agent(&state, &caller, &agent_id).await?;
    Ok(Json(
        webhook::update(&state.db, &state.settings, &agent_id, &patch).await?,
    ))
}

/// Clears an agent's webhook (URL, secret, events) and disables it; the history stays.
#[utoipa::path(
    delete,
    path = "/v1/agents/{agent_id}/webhook",
    tag = TAG,
    params(("agent_id" = String, Path, description = "The agent")),
    responses(
        (status = 204, description = "Cleared"),
        Unauthorized,
        AgentNotFound,
    )
)]
async fn delete_webhook(
    State(state): State<HttpState>,
    caller: Caller,
    Id(agent_id): Id,
) -> Result<StatusCode, ApiError> {
    own_agent(&state, &caller, &agent_id).await?;
    webhook::clear(&state.db, &agent_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The answer of a secret rotation: the only response that carries a secret.
#[derive(Serialize, ToSchema)]
pub struct RotatedSecret {
    /// The agent.
    pub agent_id: String,
    /// The new `whsec_` secret, now the primary; shown once, store it now.
    pub webhook_secret: String,
    /// The new secret's key id (`hs_…`), as `signing_keys` lists it.
    pub key_id: String,
    /// Until when the replaced secret keeps signing alongside the new one (the grace period,
    /// `WEBHOOK_SIGNING_GRACE_SECS`); `None` when there was no secret or the grace is zero.
    pub previous_expires_at: Option<DateTime<Utc>>,
}

/// Replaces the agent's signing secret with a new one and returns it, once. The replaced
/// secret keeps signing alongside it for the configured grace period
/// ([`signing_secrets::rotate_signing_secret`](crate::webhook::signing_secrets::rotate_signing_secret)),
/// so receivers can switch without missing a delivery.
#[utoipa::path(
    post,
    path = "/v1/agents/{agent_id}/webhook/secret/rotate",
    tag = TAG,
    params(("agent_id" = String, Path, description = "The agent")),
    responses(
        (status = 200, description = "The new secret (not shown again)", body = RotatedSecret),
        Unauthorized,
        AgentNotFound,
        (status = 409, description = "The secret changed meanwhile; nothing was changed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No encryption key configured", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn rotate_secret(
    State(state): State<HttpState>,
    caller: Caller,
    Id(agent_id): Id,
) -> Result<Response, ApiError> {
    own_agent(&state, &caller, &agent_id).await?;
    let rotated = crate::webhook::signing_secrets::rotate_signing_secret(
        &state.db,
        &state.settings,
        &agent_id,
        None,
        Utc::now(),
    )
    .await?;
    let body = RotatedSecret {
        agent_id,
        webhook_secret: rotated.secret.expose().to_owned(),
        key_id: rotated.key_id,
        previous_expires_at: rotated.previous.and_then(|previous| previous.expires_at),
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// Enqueues a `webhook.test` event, so a user sees their endpoint work.
#[utoipa::path(
    post,
    path = "/v1/agents/{agent_id}/webhook/test",
    tag = TAG,
    params(("agent_id" = String, Path, description = "The agent")),
    responses(
        (status = 202, description = "The test delivery, queued", body = WebhookDelivery),
        Unauthorized,
        AgentNotFound,
        (status = 409, description = "Disabled, or no URL or secret", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn send_test(
    State(state): State<HttpState>,
    caller: Caller,
    Id(agent_id): Id,
) -> Result<(StatusCode, Json<WebhookDelivery>), ApiError> {
    let agent = own_agent(&state, &caller, &agent_id).await?;
    if agent.webhook_secret.is_none() {
        return Err(ApiError::NotSendable {
            field: "webhook_secret",
            detail: "the webhook has no signing secret; deliveries are never sent unsigned",
        });
    }
    let now = Utc::now();
    let event_id = format!("test-{}", uuid::Uuid::now_v7());
    let payload = serde_json::json!({
        "type": TEST_EVENT,
        "timestamp": now,
        "data": { "agent_id": agent_id },
    });
    let enqueued = delivery::enqueue(
        &state.db,
        &state.settings,
        &agent_id,
        &event_id,
        TEST_EVENT,
        &payload,
        now,
    )
    .await?;
    match enqueued {
        Enqueued::Created(delivery) | Enqueued::Existing(delivery) => {
            Ok((StatusCode::ACCEPTED, Json(delivery)))
        }
        Enqueued::Skipped(SkipReason::Disabled) => Err(ApiError::NotSendable {
            field: "webhook_enabled",
            detail: "the webhook is disabled",
        }),
        Enqueued::Skipped(SkipReason::NoUrl) => Err(ApiError::NotSendable {
            field: "webhook_url",
            detail: "the webhook has no URL",
        }),
        Enqueued::Skipped(SkipReason::AgentDeleted) => Err(Error::AgentNotFound(agent_id).into()),
        Enqueued::Skipped(SkipReason::NotWanted) => {
            // The test event is never filtered (see `TEST_EVENT`).
            Err(Error::InvalidEvent {
                field: "event_type",
                rule: "the test event is not filtered",
            }
            .into())
        }
    }
}

/// Query parameters of the delivery history.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    /// Only deliveries in this state.
    #[param(value_type = Option<DeliveryState>)]
    state: Option<String>,
    /// Only deliveries of this event type.
    event_type: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// An agent's deliveries, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/agents/{agent_id}/webhook/deliveries",
    tag = TAG,
    params(("agent_id" = String, Path, description = "The agent"), HistoryParams),
    responses(
        (status = 200, description = "One page", body = HistoryPage),
        (status = 400, description = "An invalid parameter", body = Problem, content_type = "application/problem+json"),
        Unauthorized,
        AgentNotFound,
    )
)]
async fn list_deliveries(
    State(state): State<HttpState>,
    caller: Caller,
    Id(agent_id): Id,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::InvalidParameter {
        field: None,
        rule: "known-parameters",
        detail: e.body_text(),
    })?;
    let state_filter = params
        .state
        .as_deref()
        .map(|s| {
            s.parse::<DeliveryState>()
                .map_err(|_| ApiError::InvalidParameter {
                    field: Some("state".to_owned()),
                    rule: "one-of",
                    detail: "state must be one of pending, leased, delivered, failed".to_owned(),
                })
        })
        .transpose()?;
    let limit = match params.limit.as_deref() {
        None => 0,
        Some(text) => match text.parse::<u64>() {
            Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                return Err(ApiError::InvalidParameter {
                    field: Some("limit".to_owned()),
                    rule: "range",
                    detail: format!("limit must be a whole number from 1 to {MAX_PAGE_SIZE}"),
                });
            }
        },
    };
    own_agent(&state, &caller, &agent_id).await?;
    let query = HistoryQuery {
        state: state_filter,
        event_type: params.event_type,
        cursor: params.cursor,
        limit,
    };
    Ok(Json(
        delivery::history(&state.db, &agent_id, &query, Utc::now()).await?,
    ))
}

/// The body of a recovery.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    /// Requeue failed deliveries enqueued at or after this instant (RFC 3339).
    pub since: DateTime<Utc>,
}

/// Requeues every failed delivery of the agent enqueued since an instant, e.g. after an outage
/// of the receiver.
#[utoipa::path(
    post,
    path = "/v1/agents/{agent_id}/webhook/recover",
    tag = TAG,
    params(("agent_id" = String, Path, description = "The agent")),
    request_body = RecoverRequest,
    responses(
        (status = 200, description = "How many were requeued", body = RecoverReport),
        Unauthorized,
        AgentNotFound,
        JsonBodyProblems,
    )
)]
async fn recover(
    State(state): State<HttpState>,
    caller: Caller,
    Id(agent_id): Id,
    JsonBody(request): JsonBody<RecoverRequest>,
) -> Result<Json<RecoverReport>, ApiError> {
    own_agent(&state, &caller, &agent_id).await?;
    Ok(Json(
        delivery::recover(&state.db, &agent_id, request.since, Utc::now()).await?,
    ))
}

/// Counts by state, last success and the current run of failures of the agent's deliveries.
#[utoipa::path(
    get,
    path = "/v1/agents/{agent_id}/webhook/stats",
    tag = TAG,
    params(("agent_id" = String, Path, description = "The agent")),
    responses(
        (status = 200, description = "The figures now", body = DeliveryStats),
        Unauthorized,
        AgentNotFound,
    )
)]
async fn get_stats(
    State(state): State<HttpState>,
    caller: Caller,
    Id(agent_id): Id,
) -> Result<Json<DeliveryStats>, ApiError> {
    own_agent(&state, &caller, &agent_id).await?;
    Ok(Json(
        delivery::stats(&state.db, &agent_id, Utc::now()).await?,
    ))
}

/// One delivery with its attempt log.
#[derive(Serialize, ToSchema)]
pub struct DeliveryDetail {
    /// The delivery.
    #[serde(flatten)]
    pub delivery: WebhookDelivery,
    /// Its attempts, first first.
    pub attempts: Vec<AttemptRecord>,
}

/// One delivery with its attempt log.
#[utoipa::path(
    get,
    path = "/v1/webhook-deliveries/{delivery_id}",
    tag = TAG,
    params(("delivery_id" = String, Path, description = "The delivery")),
    responses(
        (status = 200, description = "The delivery", body = DeliveryDetail),
        Unauthorized,
        DeliveryNotFound,
    )
)]
async fn get_delivery(
    State(state): State<HttpState>,
    caller: Caller,
    Id(delivery_id): Id,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let delivery = own_delivery(&state, &caller, &delivery_id, Utc::now()).await?;
    let attempts = delivery::attempts(&state.db, &delivery_id).await?;
    Ok(Json(DeliveryDetail { delivery, attempts }))
}

/// Sends a failed delivery again, with a fresh budget of attempts.
#[utoipa::path(
    post,
    path = "/v1/webhook-deliveries/{delivery_id}/retry",
    tag = TAG,
    params(("delivery_id" = String, Path, description = "The delivery")),
    responses(
        (status = 200, description = "The delivery, due now", body = WebhookDelivery),
        Unauthorized,
        DeliveryNotFound,
        (status = 409, description = "Not failed", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn retry_delivery(
    State(state): State<HttpState>,
    caller: Caller,
    Id(delivery_id): Id,
) -> Result<Json<WebhookDelivery>, ApiError> {
    let now = Utc::now();
    own_delivery(&state, &caller, &delivery_id, now).await?;
    Ok(Json(delivery::requeue(&state.db, &delivery_id, now).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    fn shape(body: &str) -> (Option<String>, &'static str) {
        match parse_json::<Body>(body.as_bytes()) {
            Err(ApiError::InvalidBody { field, rule, .. }) => (field, rule),
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn json_errors_name_the_field_and_the_rule() {
        assert_eq!(
            shape(r#"{"name":"a","nme":1}"#),
            (Some("nme".to_owned()), "unknown-field")
        );
        assert_eq!(shape(r#"{}"#), (Some("name".to_owned()), "required"));
        assert_eq!(shape(r#"{"name":1}"#), (Some("name".to_owned()), "type"));
        // A struct's fields in an array are not a body; nor is any JSON but an object.
        for not_an_object in [
            r#"["a", null]"#,
            r#"["a"]"#,
            "[]",
            r#""a""#,
            "1",
            "true",
            "null",
        ] {
            assert_eq!(shape(not_an_object), (None, "type"), "{not_an_object}");
        }
        match parse_json::<Body>(br#"{"name":"a","inner":{"n":"whsec_notshown"}}"#) {
            Err(ApiError::InvalidBody { detail, .. }) => {
                assert!(!detail.contains("whsec_notshown"), "{detail}");
                assert!(detail.contains("expected u32"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            shape(r#"{"name":"a","inner":{"n":"x"}}"#),
            (Some("inner.n".to_owned()), "type")
        );
        for bad in ["", "{", "{\"name\":\"a\"} x", "nul"] {
            assert!(
                matches!(
                    parse_json::<Body>(bad.as_bytes()),
                    Err(ApiError::MalformedJson(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_problem_type_has_the_prefix_and_its_status() {
        let p = ApiError::from(Error::BadCursor).problem();
        assert_eq!(p.type_, "urn:agent-webhooks:problem:invalid-parameter");
        assert_eq!((p.status, p.field.as_deref()), (400, Some("cursor")));
        let p = ApiError::from(Error::Db(sea_orm::DbErr::Custom("password=x".into()))).problem();
        assert_eq!(p.status, 500);
        assert!(!p.detail.contains("password"), "{}", p.detail);
    }
}
