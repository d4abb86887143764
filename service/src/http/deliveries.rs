//! The routes of an agent's deliveries: history, stats and recovery under the agent, and one
//! delivery with its attempts, and its retry, under `/v1/webhook-deliveries`.

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{AgentPath, DeliveryPath, JsonBody, OwnAgent, OwnDelivery};
use super::problem::{
    AgentNotFound, ApiError, DeliveryNotFound, JsonBodyProblems, Problem, Unauthorized,
};
use super::{HttpState, TAG};
use crate::delivery::{
    self, AttemptRecord, DeliveryState, DeliveryStats, HistoryPage, HistoryQuery, MAX_PAGE_SIZE,
    RecoverReport, WebhookDelivery,
};

/// Query parameters of the delivery history.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryParams {
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

impl HistoryParams {
    /// The query of these parameters; a bad `state` or `limit` is a 400 naming it (a bad
    /// `cursor` is found by [`delivery::history`]).
    fn into_query(self) -> Result<HistoryQuery, ApiError> {
        let state = self
            .state
            .as_deref()
            .map(|s| {
                s.parse::<DeliveryState>()
                    .map_err(|_| ApiError::InvalidParameter {
                        field: Some("state".to_owned()),
                        rule: "one-of",
                        detail: "state must be one of pending, leased, delivered, failed"
                            .to_owned(),
                    })
            })
            .transpose()?;
        let limit = match self.limit.as_deref() {
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
        Ok(HistoryQuery {
            state,
            event_type: self.event_type,
            cursor: self.cursor,
            limit,
        })
    }
}

/// An agent's deliveries, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/agents/{agent_id}/webhook/deliveries",
    tag = TAG,
    params(AgentPath, HistoryParams),
    responses(
        (status = 200, description = "One page", body = HistoryPage),
        (status = 400, description = "An invalid parameter", body = Problem, content_type = "application/problem+json"),
        Unauthorized,
        AgentNotFound,
    )
)]
pub(super) async fn list_deliveries(
    State(state): State<HttpState>,
    OwnAgent { id: agent_id, .. }: OwnAgent,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::InvalidParameter {
        field: None,
        rule: "known-parameters",
        detail: e.body_text(),
    })?;
    let query = params.into_query()?;
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
    params(AgentPath),
    request_body = RecoverRequest,
    responses(
        (status = 200, description = "How many were requeued", body = RecoverReport),
        Unauthorized,
        AgentNotFound,
        JsonBodyProblems,
    )
)]
pub(super) async fn recover(
    State(state): State<HttpState>,
    OwnAgent { id: agent_id, .. }: OwnAgent,
    JsonBody(request): JsonBody<RecoverRequest>,
) -> Result<Json<RecoverReport>, ApiError> {
    Ok(Json(
        delivery::recover(&state.db, &agent_id, request.since, Utc::now()).await?,
    ))
}

/// Counts by state, last success and the current run of failures of the agent's deliveries.
#[utoipa::path(
    get,
    path = "/v1/agents/{agent_id}/webhook/stats",
    tag = TAG,
    params(AgentPath),
    responses(
        (status = 200, description = "The figures now", body = DeliveryStats),
        Unauthorized,
        AgentNotFound,
    )
)]
pub(super) async fn get_stats(
    State(state): State<HttpState>,
    OwnAgent { id: agent_id, .. }: OwnAgent,
) -> Result<Json<DeliveryStats>, ApiError> {
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
    params(DeliveryPath),
    responses(
        (status = 200, description = "The delivery", body = DeliveryDetail),
        Unauthorized,
        DeliveryNotFound,
    )
)]
pub(super) async fn get_delivery(
    State(state): State<HttpState>,
    OwnDelivery { id, delivery }: OwnDelivery,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let attempts = delivery::attempts(&state.db, &id).await?;
    Ok(Json(DeliveryDetail { delivery, attempts }))
}

/// Sends a failed delivery again, with a fresh budget of attempts.
#[utoipa::path(
    post,
    path = "/v1/webhook-deliveries/{delivery_id}/retry",
    tag = TAG,
    params(DeliveryPath),
    responses(
        (status = 200, description = "The delivery, due now", body = WebhookDelivery),
        Unauthorized,
        DeliveryNotFound,
        (status = 409, description = "Not failed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn retry_delivery(
    State(state): State<HttpState>,
    OwnDelivery { id, .. }: OwnDelivery,
) -> Result<Json<WebhookDelivery>, ApiError> {
    Ok(Json(delivery::requeue(&state.db, &id, Utc::now()).await?))
}
