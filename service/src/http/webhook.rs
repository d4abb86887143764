//! The routes of an agent's webhook configuration: read, set, change and clear it, rotate its
//! signing secret, and send it a test event.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{AgentPath, JsonBody, OwnAgent};
use super::problem::{AgentNotFound, ApiError, JsonBodyProblems, Problem, Unauthorized};
use super::{HttpState, TAG};
use crate::delivery::{self, Enqueued, SkipReason, Verdict, WebhookDelivery};
use crate::error::Error;
use crate::webhook::events::TEST_EVENT;
use crate::webhook::{
    self, AgentWebhook, WebhookConfig, WebhookConfigPatch, WebhookConfigView, signing_secrets,
};

/// The configuration of an agent's webhook, without the secret.
#[utoipa::path(
    get,
    path = "/v1/agents/{agent_id}/webhook",
    tag = TAG,
    params(AgentPath),
    responses(
        (status = 200, description = "The configuration", body = WebhookConfigView),
        Unauthorized,
        AgentNotFound,
    )
)]
pub(super) async fn get_webhook(
    State(state): State<HttpState>,
    OwnAgent { id: agent_id, .. }: OwnAgent,
) -> Result<Json<WebhookConfigView>, ApiError> {
    Ok(Json(webhook::get(&state.db, &agent_id).await?))
}

/// Sets an agent's webhook: URL, secret (absent keeps the stored one), events, enabled.
#[utoipa::path(
    put,
    path = "/v1/agents/{agent_id}/webhook",
    tag = TAG,
    params(AgentPath),
    request_body = WebhookConfig,
    responses(
        (status = 200, description = "The configuration as stored", body = WebhookConfigView),
        Unauthorized,
        AgentNotFound,
        JsonBodyProblems,
    )
)]
pub(super) async fn put_webhook(
    State(state): State<HttpState>,
    OwnAgent { id: agent_id, .. }: OwnAgent,
    JsonBody(config): JsonBody<WebhookConfig>,
) -> Result<Json<WebhookConfigView>, ApiError> {
    Ok(Json(
        webhook::configure(&state.db, &state.settings, &agent_id, &config).await?,
    ))
}

/// Changes the given fields of an agent's webhook and keeps the others.
#[utoipa::path(
    patch,
    path = "/v1/agents/{agent_id}/webhook",
    tag = TAG,
    params(AgentPath),
    request_body = WebhookConfigPatch,
    responses(
        (status = 200, description = "The configuration as stored", body = WebhookConfigView),
        Unauthorized,
        AgentNotFound,
        JsonBodyProblems,
    )
)]
pub(super) async fn patch_webhook(
    State(state): State<HttpState>,
    OwnAgent { id: agent_id, .. }: OwnAgent,
    JsonBody(patch): JsonBody<WebhookConfigPatch>,
) -> Result<Json<WebhookConfigView>, ApiError> {
    Ok(Json(
        webhook::update(&state.db, &state.settings, &agent_id, &patch).await?,
    ))
}

/// Clears an agent's webhook (URL, secret, events) and disables it; the history stays.
#[utoipa::path(
    delete,
    path = "/v1/agents/{agent_id}/webhook",
    tag = TAG,
    params(AgentPath),
    responses(
        (status = 204, description = "Cleared"),
        Unauthorized,
        AgentNotFound,
    )
)]
pub(super) async fn delete_webhook(
    State(state): State<HttpState>,
    OwnAgent { id: agent_id, .. }: OwnAgent,
) -> Result<StatusCode, ApiError> {
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
    params(AgentPath),
    responses(
        (status = 200, description = "The new secret (not shown again)", body = RotatedSecret),
        Unauthorized,
        AgentNotFound,
        (status = 409, description = "The secret changed meanwhile; nothing was changed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No encryption key configured", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn rotate_secret(
    State(state): State<HttpState>,
    OwnAgent { id: agent_id, .. }: OwnAgent,
) -> Result<Response, ApiError> {
    let rotated = signing_secrets::rotate_signing_secret(
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
    params(AgentPath),
    responses(
        (status = 202, description = "The test delivery, queued", body = WebhookDelivery),
        Unauthorized,
        AgentNotFound,
        (status = 409, description = "Disabled, or no URL or secret", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn send_test(
    State(state): State<HttpState>,
    OwnAgent {
        id: agent_id,
        agent,
    }: OwnAgent,
) -> Result<(StatusCode, Json<WebhookDelivery>), ApiError> {
    let delivery = enqueue_test(&state, &agent_id, &agent).await?;
    Ok((StatusCode::ACCEPTED, Json(delivery)))
}

/// Enqueues a [`TEST_EVENT`] delivery to `agent`'s webhook: the API's test route and the
/// portal's "send a test event" button.
pub(super) async fn enqueue_test(
    state: &HttpState,
    agent_id: &str,
    agent: &AgentWebhook,
) -> Result<WebhookDelivery, ApiError> {
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
        agent_id,
        &event_id,
        TEST_EVENT,
        &payload,
        now,
    )
    .await?;
    match enqueued {
        Enqueued::Created(delivery) | Enqueued::Existing(delivery) => Ok(delivery),
        Enqueued::Skipped(SkipReason::Disabled) => Err(ApiError::NotSendable {
            field: "webhook_enabled",
            detail: "the webhook is disabled",
        }),
        Enqueued::Skipped(SkipReason::NoUrl) => Err(ApiError::NotSendable {
            field: "webhook_url",
            detail: "the webhook has no URL",
        }),
        Enqueued::Skipped(SkipReason::AgentDeleted) => {
            Err(Error::AgentNotFound(agent_id.to_owned()).into())
        }
        Enqueued::Skipped(SkipReason::NotWanted | SkipReason::Filtered) => {
            // The test event is never filtered (see `TEST_EVENT`).
            Err(Error::InvalidEvent {
                field: "event_type",
                rule: "the test event is not filtered",
            }
            .into())
        }
    }
}

/// The body of a filter check: an event as the app would enqueue it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterCheck {
    /// The event's type, e.g. `run.completed`.
    pub event_type: String,
    /// The event's JSON payload.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// Whether an event would be delivered to the agent's webhook, and if not which rule holds it
/// back (disabled, no URL, event type not wanted, content filter, naming the filter's first
/// failing top-level clause); nothing is enqueued
/// ([`delivery::would_deliver`](crate::delivery::would_deliver)).
#[utoipa::path(
    post,
    path = "/v1/agents/{agent_id}/webhook/filter-check",
    tag = TAG,
    params(AgentPath),
    request_body = FilterCheck,
    responses(
        (status = 200, description = "What an enqueue would do", body = Verdict),
        Unauthorized,
        AgentNotFound,
        JsonBodyProblems,
    )
)]
pub(super) async fn filter_check(
    State(state): State<HttpState>,
    OwnAgent { id: agent_id, .. }: OwnAgent,
    JsonBody(check): JsonBody<FilterCheck>,
) -> Result<Json<Verdict>, ApiError> {
    Ok(Json(
        delivery::would_deliver(&state.db, &agent_id, &check.event_type, &check.payload).await?,
    ))
}
