//! The webhook portal: server-rendered pages where an agent's owner sees and changes the
//! agent's webhook, sends a test event, reads the delivery history, retries and recovers
//! deliveries and rotates the signing secret. An app server gets it by mounting
//! [`router`](super::router); it mints a link per agent with [`mint_link`] (or the API's
//! `POST /v1/agents/{agent_id}/webhook/portal-link`) and shows it to its user, in a tab or an
//! iframe. docs/portal.md is the guide; this is how it works.
//!
//! * Access: the token in the path (`link.rs`) names one agent and an expiry, under an HMAC
//!   of the settings' `WEBHOOK_PORTAL_KEY`. Every page checks it, then that the agent is live
//!   and still in the token's organization, then (delivery pages) that the delivery is the
//!   agent's. Any failure is the same 404 page.
//! * No session cookie: the token stays in the path of every page, so the portal works in an
//!   iframe of another site without third-party cookies (`SameSite=None`), and there is no
//!   session to steal or fixate. The price: the token is in the browser's history, so links
//!   are short-lived, and `Referrer-Policy: no-referrer` keeps it from other sites.
//! * Forms: every POST carries a CSRF token derived from the link (`link.rs`) and
//!   is refused when the browser says it comes from another site (`Sec-Fetch-Site`).
//! * Headers: a Content-Security-Policy without inline script or style (`script-src 'self'`
//!   for the one static script), `frame-ancestors` from the settings, `no-store`.
//! * Reuse: the pages call the functions the JSON API calls ([`crate::webhook::update`],
//!   [`crate::delivery::history`], [`crate::delivery::requeue`], [`crate::delivery::recover`],
//!   [`crate::webhook::signing_secrets::rotate_signing_secret`], the API's test event), so the
//!   rules and the error texts are the API's.

mod link;
mod page;

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use utoipa::ToSchema;

pub use link::{
    DEFAULT_LINK_TTL, MAX_LINK_TTL, PORTAL_PREFIX, PortalLink, PortalLinkError, mint_link,
};

use super::extract::{AgentPath, JsonBody, OwnAgent};
use super::problem::{AgentNotFound, ApiError, JsonBodyProblems, Problem, Unauthorized};
use super::webhook::enqueue_test;
use super::{HttpState, TAG};
use crate::delivery::{self, HistoryQuery, WebhookDelivery};
use crate::error::Error;
use crate::settings::check_frame_ancestors;
use crate::webhook::url_policy::UrlPolicy;
use crate::webhook::{self, AgentWebhook, WebhookConfigPatch, signing_secrets};
use link::Grant;
use page::{Banner, ConfigForm, Overview, Place, Rotated};

/// Where the static CSS and script are served, beside [`PORTAL_PREFIX`].
const ASSETS: &str = "/webhooks/portal-assets";
const CSS: &str = include_str!("portal.css");
const JS: &str = include_str!("portal.js");

/// History rows per portal page.
const PAGE_SIZE: u64 = 25;

/// The body of `POST /v1/agents/{agent_id}/webhook/portal-link`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortalLinkRequest {
    /// How long the link works, in seconds: 1 to 86400, default 900.
    #[serde(default)]
    pub valid_for_secs: Option<u64>,
}

/// Mints a link to the agent's portal, for the app to show its user (in a tab or an iframe).
#[utoipa::path(
    post,
    path = "/v1/agents/{agent_id}/webhook/portal-link",
    tag = TAG,
    params(AgentPath),
    request_body = PortalLinkRequest,
    responses(
        (status = 200, description = "The link: `path` under the router's mount point", body = PortalLink),
        Unauthorized,
        AgentNotFound,
        JsonBodyProblems,
        (status = 503, description = "No portal key configured", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn mint_portal_link(
    State(state): State<HttpState>,
    OwnAgent { id, agent }: OwnAgent,
    JsonBody(request): JsonBody<PortalLinkRequest>,
) -> Result<Response, ApiError> {
    let valid_for = request
        .valid_for_secs
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LINK_TTL);
    let link = mint_link(
        &state.db,
        &state.settings,
        &agent.organization_id,
        &id,
        valid_for,
        Utc::now(),
    )
    .await
    .map_err(|e| match e {
        PortalLinkError::NoKey => ApiError::PortalUnavailable,
        PortalLinkError::InvalidTtl { .. } => ApiError::InvalidBody {
            field: Some("valid_for_secs".to_owned()),
            rule: "range",
            detail: e.to_string(),
        },
        PortalLinkError::Service(e) => e.into(),
    })?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(link)).into_response())
}

/// The portal's pages and assets, with their security headers.
pub(super) fn routes(state: &HttpState) -> axum::Router<HttpState> {
    let pages = axum::Router::new()
        .route(&format!("{PORTAL_PREFIX}/{{token}}"), get(overview))
        .route(
            &format!("{PORTAL_PREFIX}/{{token}}/webhook"),
            post(save_config),
        )
        .route(
            &format!("{PORTAL_PREFIX}/{{token}}/enabled"),
            post(set_enabled),
        )
        .route(&format!("{PORTAL_PREFIX}/{{token}}/test"), post(send_test))
        .route(&format!("{PORTAL_PREFIX}/{{token}}/rotate"), post(rotate))
        .route(&format!("{PORTAL_PREFIX}/{{token}}/recover"), post(recover))
        .route(
            &format!("{PORTAL_PREFIX}/{{token}}/deliveries/{{delivery_id}}"),
            get(delivery_page),
        )
        .route(
            &format!("{PORTAL_PREFIX}/{{token}}/deliveries/{{delivery_id}}/state"),
            get(delivery_state),
        )
        .route(
            &format!("{PORTAL_PREFIX}/{{token}}/deliveries/{{delivery_id}}/retry"),
            post(retry),
        )
        .route(&format!("{ASSETS}/portal.css"), get(css))
        .route(&format!("{ASSETS}/portal.js"), get(js));
    // Checked again here: the field is public, and a value set in code rather than read by
    // `from_env` must not add directives either. An invalid one forbids framing.
    let frame_ancestors = check_frame_ancestors(&state.settings.portal_frame_ancestors)
        .unwrap_or_else(|_| {
            tracing::error!("invalid portal_frame_ancestors; the portal forbids framing");
            "'none'".to_owned()
        });
    let policy = content_security_policy(&frame_ancestors);
    let deny_framing = frame_ancestors == "'none'";
    pages.layer(axum::middleware::map_response(
        move |mut response: Response| {
            let policy = policy.clone();
            async move {
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_SECURITY_POLICY, policy);
                headers.insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                headers.insert(
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                );
                if deny_framing {
                    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
                }
                headers
                    .entry(header::CACHE_CONTROL)
                    .or_insert(HeaderValue::from_static("no-store"));
                response
            }
        },
    ))
}

/// No inline script or style anywhere; the one script and style sheet are ours.
fn content_security_policy(frame_ancestors: &str) -> HeaderValue {
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors {frame_ancestors}"
    );
    // `check_frame_ancestors` admits only header-safe characters.
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static(
        "default-src 'none'; frame-ancestors 'none'",
    ))
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// How far a page's directory is from the portal's root, by the request's path.
#[derive(Clone, Copy)]
enum Depth {
    /// `/webhooks/portal/{token}`
    Home,
    /// `/webhooks/portal/{token}/<action>`
    Action,
    /// `/webhooks/portal/{token}/deliveries/{id}`
    Delivery,
    /// `/webhooks/portal/{token}/deliveries/{id}/<action>`
    DeliveryAction,
}

impl Depth {
    fn base(self) -> &'static str {
        match self {
            Depth::Home => "",
            Depth::Action => "../",
            Depth::Delivery => "../../",
            Depth::DeliveryAction => "../../../",
        }
    }
}

/// A portal page's failure, as a page.
enum PortalError {
    /// Any link or id that does not open this portal: one page for all.
    NotFound { depth: Depth },
    /// A POST without the link's CSRF token, or from another site.
    Forbidden {
        token: String,
        csrf: String,
        depth: Depth,
    },
    /// The database failed; logged, never shown.
    Internal,
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        match self {
            PortalError::NotFound { depth } => {
                // The path's token is not ours: nothing on the page is made from it.
                let place = Place {
                    base: depth.base(),
                    token: "",
                    csrf: "",
                };
                html(StatusCode::NOT_FOUND, page::not_found(&place))
            }
            PortalError::Forbidden { token, csrf, depth } => {
                let place = Place {
                    base: depth.base(),
                    token: &token,
                    csrf: &csrf,
                };
                html(StatusCode::FORBIDDEN, page::forbidden(&place))
            }
            PortalError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "The request failed; the cause is logged.",
            )
                .into_response(),
        }
    }
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// The agent a valid link opens: checked before a handler runs (see the module
/// documentation).
struct Portal {
    token: String,
    csrf: String,
    agent: AgentWebhook,
    delivery_id: Option<String>,
    depth: Depth,
}

impl Portal {
    fn place(&self) -> Place<'_> {
        Place {
            base: self.depth.base(),
            token: &self.token,
            csrf: &self.csrf,
        }
    }

    fn not_found(&self) -> PortalError {
        PortalError::NotFound { depth: self.depth }
    }

    /// The CSRF token of the form and the browser's word on where the request comes from.
    fn check_post(
        &self,
        headers: &HeaderMap,
        given: &str,
        state: &HttpState,
    ) -> Result<(), PortalError> {
        let cross_site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|site| !matches!(site, "same-origin" | "none"));
        let key_ok = state
            .settings
            .portal_key
            .as_ref()
            .is_some_and(|key| link::check_csrf(key, &self.token, given));
        if cross_site || !key_ok {
            return Err(PortalError::Forbidden {
                token: self.token.clone(),
                csrf: self.csrf.clone(),
                depth: self.depth,
            });
        }
        Ok(())
    }

    /// The delivery of the path when it is this agent's.
    async fn delivery(&self, state: &HttpState) -> Result<WebhookDelivery, PortalError> {
        let id = self
            .delivery_id
            .as_deref()
            .ok_or_else(|| self.not_found())?;
        match delivery::get(&state.db, id, Utc::now()).await {
            Ok(d)
                if d.agent_id == self.agent.id
                    && d.organization_id == self.agent.organization_id =>
            {
                Ok(d)
            }
            Ok(_) | Err(Error::DeliveryNotFound(_)) => Err(self.not_found()),
            Err(e) => Err(internal(e)),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> PortalError {
    tracing::error!(error = %e, "webhook portal request failed");
    PortalError::Internal
}

impl FromRequestParts<HttpState> for Portal {
    type Rejection = PortalError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        let params = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| p)
            .unwrap_or_default();
        let token = params.get("token").cloned().unwrap_or_default();
        let delivery_id = params.get("delivery_id").cloned();
        // Segments after the token: where the page's directory is (links are relative).
        let segments: Vec<&str> = parts.uri.path().split('/').collect();
        let after = segments
            .iter()
            .rposition(|s| *s == token)
            .map_or(0, |i| segments.len() - i - 1);
        let depth = match after {
            0 => Depth::Home,
            1 => Depth::Action,
            2 => Depth::Delivery,
            _ => Depth::DeliveryAction,
        };
        let not_found = || PortalError::NotFound { depth };
        let key = state.settings.portal_key.as_ref().ok_or_else(not_found)?;
        let Grant {
            agent_id,
            organization_id,
            ..
        } = link::verify(key, &token, Utc::now()).ok_or_else(not_found)?;
        let agent = match webhook::find_agent(&state.db, &agent_id).await {
            Ok(agent) if agent.organization_id == organization_id => agent,
            Ok(_) | Err(Error::AgentNotFound(_)) => return Err(not_found()),
            Err(e) => return Err(internal(e)),
        };
        Ok(Portal {
            csrf: link::csrf_token(key, &token),
            token,
            agent,
            delivery_id,
            depth,
        })
    }
}

/// What the overview's query string may say: the history page, and what the last form did.
#[derive(Debug, Default, Deserialize)]
struct OverviewQuery {
    cursor: Option<String>,
    notice: Option<String>,
    n: Option<u64>,
}

fn notice(query: &OverviewQuery) -> Option<Banner> {
    let text = match query.notice.as_deref()? {
        "saved" => "Saved.".to_owned(),
        "enabled" => "Deliveries enabled.".to_owned(),
        "disabled" => {
            "Deliveries disabled: no event is queued until you enable them again.".to_owned()
        }
        "test-sent" => "Test event queued; its state below updates as it is sent.".to_owned(),
        "recovered" => match query.n.unwrap_or(0) {
            1 => "1 failed delivery queued again.".to_owned(),
            n => format!("{n} failed deliveries queued again."),
        },
        _ => return None,
    };
    Some(Banner { error: false, text })
}

async fn overview(
    State(state): State<HttpState>,
    portal: Portal,
    query: Result<Query<OverviewQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PortalError> {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let banner = notice(&query);
    render_overview(
        &state,
        &portal,
        StatusCode::OK,
        banner,
        ConfigForm::default(),
        None,
        query.cursor,
    )
    .await
}

/// The overview with a banner saying why a form was not carried out, and nothing else kept.
async fn refused_page(
    state: &HttpState,
    portal: &Portal,
    status: StatusCode,
    banner: Banner,
) -> Result<Response, PortalError> {
    render_overview(
        state,
        portal,
        status,
        Some(banner),
        ConfigForm::default(),
        None,
        None,
    )
    .await
}

/// The overview, with what the last form left (a banner, a refused form, a new secret).
async fn render_overview(
    state: &HttpState,
    portal: &Portal,
    status: StatusCode,
    banner: Option<Banner>,
    form: ConfigForm,
    rotated: Option<Rotated>,
    cursor: Option<String>,
) -> Result<Response, PortalError> {
    let now = Utc::now();
    let agent = webhook::get_agent(&state.db, &portal.agent.id)
        .await
        .map_err(|e| match e {
            Error::AgentNotFound(_) => portal.not_found(),
            e => internal(e),
        })?;
    let keys = signing_secrets::signing_keys(&state.db, &state.settings, &portal.agent.id, now)
        .await
        .ok();
    let paged = cursor.is_some();
    let query = HistoryQuery {
        cursor,
        limit: PAGE_SIZE,
        ..HistoryQuery::default()
    };
    let (history, banner) = match delivery::history(&state.db, &portal.agent.id, &query, now).await
    {
        Ok(history) => (history, banner),
        Err(Error::BadCursor) => {
            let first = HistoryQuery {
                limit: PAGE_SIZE,
                ..HistoryQuery::default()
            };
            let history = delivery::history(&state.db, &portal.agent.id, &first, now)
                .await
                .map_err(internal)?;
            let banner = Some(Banner {
                error: true,
                text: "That page of the history does not exist; showing the newest deliveries."
                    .to_owned(),
            });
            (history, banner)
        }
        Err(e) => return Err(internal(e)),
    };
    let page = Overview {
        agent: &agent,
        keys: keys.as_ref(),
        history: &history,
        paged,
        banner,
        form,
        rotated,
        grace_hours: state.settings.signing_grace.as_secs() / 3600,
        url_help: match state.settings.url_policy {
            UrlPolicy::Production => {
                "Where deliveries are sent: an https URL of a host on the public internet."
            }
            UrlPolicy::Development => {
                "Where deliveries are sent: an http or https URL; this server also allows local \
                 and private addresses (development policy)."
            }
        },
    };
    Ok(html(status, page::overview(&portal.place(), &page)))
}

/// Back to the overview after a form, by a relative `Location` (the router may be mounted
/// under a prefix), so that reloading the page does not post again.
fn back_home(portal: &Portal, notice: &str, n: Option<u64>) -> Response {
    let mut to = format!("{}{}?notice={notice}", portal.depth.base(), portal.token);
    if let Some(n) = n {
        to.push_str(&format!("&n={n}"));
    }
    Redirect::to(&to).into_response()
}

/// A refused form's message, from the API's problem document for the same error.
fn refused(error: ApiError) -> Result<(StatusCode, Banner), PortalError> {
    let problem = error.problem();
    if problem.status >= 500 && problem.type_.ends_with(":internal") {
        return Err(PortalError::Internal);
    }
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::BAD_REQUEST);
    Ok((
        status,
        Banner {
            error: true,
            text: format!("{}: {}", problem.title, problem.detail),
        },
    ))
}

fn bad_form(e: FormRejection) -> Banner {
    Banner {
        error: true,
        text: format!("The form could not be read: {}", e.body_text()),
    }
}

#[derive(Deserialize)]
struct ConfigFields {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    webhook_url: String,
    #[serde(default)]
    webhook_events: String,
}

async fn save_config(
    State(state): State<HttpState>,
    portal: Portal,
    headers: HeaderMap,
    form: Result<Form<ConfigFields>, FormRejection>,
) -> Result<Response, PortalError> {
    let Form(fields) = match form {
        Ok(form) => form,
        Err(e) => {
            return refused_page(&state, &portal, StatusCode::BAD_REQUEST, bad_form(e)).await;
        }
    };
    portal.check_post(&headers, &fields.csrf, &state)?;
    let events: Vec<String> = fields
        .webhook_events
        .split([',', '\n', '\r'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    let patch = WebhookConfigPatch {
        webhook_url: Some(fields.webhook_url.trim().to_owned()),
        webhook_events: Some(events),
        ..WebhookConfigPatch::default()
    };
    match webhook::update(&state.db, &state.settings, &portal.agent.id, &patch).await {
        Ok(_) => Ok(back_home(&portal, "saved", None)),
        Err(e) => {
            let mut form = ConfigForm {
                url: Some(fields.webhook_url),
                events: Some(fields.webhook_events),
                ..ConfigForm::default()
            };
            let banner = match &e {
                Error::Url(rule) => {
                    form.url_error = Some(format!("This URL is not allowed: {rule}."));
                    None
                }
                Error::Events(problem) => {
                    form.events_error =
                        Some(format!("These event types are not accepted: {problem}."));
                    None
                }
                _ => None,
            };
            let (status, fallback) = refused(e.into())?;
            let banner = banner.or_else(|| {
                (form.url_error.is_none() && form.events_error.is_none()).then_some(fallback)
            });
            render_overview(&state, &portal, status, banner, form, None, None).await
        }
    }
}

#[derive(Deserialize)]
struct EnabledFields {
    #[serde(default)]
    csrf: String,
    enabled: String,
}

async fn set_enabled(
    State(state): State<HttpState>,
    portal: Portal,
    headers: HeaderMap,
    form: Result<Form<EnabledFields>, FormRejection>,
) -> Result<Response, PortalError> {
    let Form(fields) = match form {
        Ok(form) => form,
        Err(e) => {
            return refused_page(&state, &portal, StatusCode::BAD_REQUEST, bad_form(e)).await;
        }
    };
    portal.check_post(&headers, &fields.csrf, &state)?;
    let enabled = fields.enabled == "true";
    let patch = WebhookConfigPatch {
        webhook_enabled: Some(enabled),
        ..WebhookConfigPatch::default()
    };
    match webhook::update(&state.db, &state.settings, &portal.agent.id, &patch).await {
        Ok(_) => Ok(back_home(
            &portal,
            if enabled { "enabled" } else { "disabled" },
            None,
        )),
        Err(e) => {
            let (status, banner) = refused(e.into())?;
            refused_page(&state, &portal, status, banner).await
        }
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

async fn send_test(
    State(state): State<HttpState>,
    portal: Portal,
    headers: HeaderMap,
    Form(fields): Form<CsrfOnly>,
) -> Result<Response, PortalError> {
    portal.check_post(&headers, &fields.csrf, &state)?;
    match enqueue_test(&state, &portal.agent.id, &portal.agent).await {
        Ok(_) => Ok(back_home(&portal, "test-sent", None)),
        Err(e) => {
            let (status, banner) = refused(e)?;
            refused_page(&state, &portal, status, banner).await
        }
    }
}

async fn rotate(
    State(state): State<HttpState>,
    portal: Portal,
    headers: HeaderMap,
    Form(fields): Form<CsrfOnly>,
) -> Result<Response, PortalError> {
    portal.check_post(&headers, &fields.csrf, &state)?;
    let rotated = signing_secrets::rotate_signing_secret(
        &state.db,
        &state.settings,
        &portal.agent.id,
        None,
        Utc::now(),
    )
    .await;
    match rotated {
        // Answered here rather than after a redirect: the secret never travels in a URL and
        // is gone from the page once it is left.
        Ok(rotated) => {
            let shown = Rotated {
                secret: rotated.secret.expose().to_owned(),
                key_id: rotated.key_id,
                previous_expires_at: rotated.previous.and_then(|p| p.expires_at),
            };
            render_overview(
                &state,
                &portal,
                StatusCode::OK,
                None,
                ConfigForm::default(),
                Some(shown),
                None,
            )
            .await
        }
        Err(e) => {
            let (status, banner) = refused(e.into())?;
            refused_page(&state, &portal, status, banner).await
        }
    }
}

#[derive(Deserialize)]
struct RecoverFields {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    since: String,
}

/// `datetime-local` sends `2026-12-04T18:30` (seconds optional); RFC 3339 is taken too.
fn parse_since(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.to_utc());
    }
    [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
    .map(|t| t.and_utc())
}

async fn recover(
    State(state): State<HttpState>,
    portal: Portal,
    headers: HeaderMap,
    Form(fields): Form<RecoverFields>,
) -> Result<Response, PortalError> {
    portal.check_post(&headers, &fields.csrf, &state)?;
    let Some(since) = parse_since(&fields.since) else {
        let banner = Banner {
            error: true,
            text: "Recover: give the date and time to recover from.".to_owned(),
        };
        return refused_page(&state, &portal, StatusCode::BAD_REQUEST, banner).await;
    };
    match delivery::recover(&state.db, &portal.agent.id, since, Utc::now()).await {
        Ok(report) => Ok(back_home(&portal, "recovered", Some(report.requeued))),
        Err(e) => {
            let (status, banner) = refused(e.into())?;
            refused_page(&state, &portal, status, banner).await
        }
    }
}

async fn delivery_page(
    State(state): State<HttpState>,
    portal: Portal,
) -> Result<Response, PortalError> {
    let d = portal.delivery(&state).await?;
    render_delivery(&state, &portal, d, StatusCode::OK, None).await
}

async fn render_delivery(
    state: &HttpState,
    portal: &Portal,
    d: WebhookDelivery,
    status: StatusCode,
    banner: Option<Banner>,
) -> Result<Response, PortalError> {
    let attempts = delivery::attempts(&state.db, &d.id)
        .await
        .map_err(internal)?;
    Ok(html(
        status,
        page::delivery(&portal.place(), &d, &attempts, banner),
    ))
}

/// What the script polls while a delivery is on its way.
async fn delivery_state(
    State(state): State<HttpState>,
    portal: Portal,
) -> Result<Response, PortalError> {
    let d = portal.delivery(&state).await?;
    Ok(Json(serde_json::json!({
        "state": d.state,
        "attempt_count": d.attempt_count,
        "status_code": d.status_code,
    }))
    .into_response())
}

async fn retry(
    State(state): State<HttpState>,
    portal: Portal,
    headers: HeaderMap,
    Form(fields): Form<CsrfOnly>,
) -> Result<Response, PortalError> {
    portal.check_post(&headers, &fields.csrf, &state)?;
    let d = portal.delivery(&state).await?;
    match delivery::requeue(&state.db, &d.id, Utc::now()).await {
        Ok(d) => {
            let banner = Banner {
                error: false,
                text: "Queued again; it is sent within moments.".to_owned(),
            };
            render_delivery(&state, &portal, d, StatusCode::OK, Some(banner)).await
        }
        Err(e) => {
            let (status, banner) = refused(e.into())?;
            render_delivery(&state, &portal, d, status, Some(banner)).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_the_forms_of_datetime_local_and_rfc_3339() {
        let t = |s: &str| parse_since(s).map(|t| t.to_rfc3339());
        assert_eq!(
            t("2026-12-04T18:30").as_deref(),
            Some("2026-12-04T18:30:00+00:00")
        );
        assert_eq!(
            t("2026-12-04T18:30:05").as_deref(),
            Some("2026-12-04T18:30:05+00:00")
        );
        assert_eq!(
            t("2026-12-04T19:30:00+01:00").as_deref(),
            Some("2026-12-04T18:30:00+00:00")
        );
        assert_eq!(t(""), None);
        assert_eq!(t("yesterday"), None);
    }

    #[test]
    fn the_policy_has_no_inline_code_and_the_configured_framing() {
        let policy = content_security_policy("'self' https://app.example.com");
        let policy = policy.to_str().unwrap();
        assert!(policy.contains("script-src 'self';") && policy.contains("style-src 'self';"));
        assert!(!policy.contains("unsafe"));
        assert!(policy.ends_with("frame-ancestors 'self' https://app.example.com"));
    }
}
