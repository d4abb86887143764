//! The signed request for one claimed delivery, for senders other than [`crate::dispatch`].
//!
//! Secrets are used only to sign (which keys sign is in [`crate::webhook::signing_secrets`]);
//! [`OutgoingRequest`] holds none. An agent without keys fails with [`Error::NoSecret`], never
//! sent unsigned; one soft-deleted since the enqueue fails with [`Error::AgentNotFound`]:
//! record it with [`crate::delivery::abandon`], since a retry repeats the refusal.
//!
//! The URL is checked again against the current policy, but a sender must still vet the
//! addresses it connects to with
//! [`UrlPolicy::check_resolved`](crate::webhook::url_policy::UrlPolicy::check_resolved) and
//! connect to exactly those: a DNS answer may change between check and use.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;

use crate::delivery::Claim;
use crate::error::{Error, Result};
use crate::secrets::signing::{self, SignedHeaders};
use crate::secrets::webhook_secret::WebhookSecret;
use crate::settings::WebhookSettings;
use crate::webhook::signing_secrets::{self, LiveKeys};

/// POST `body` to `url` with `headers` and `content-type: application/json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingRequest {
    pub url: url::Url,
    pub headers: SignedHeaders,
    /// The signed bytes; send them unchanged.
    pub body: Vec<u8>,
    /// For an ordered delivery, its lane and position: send them as
    /// [`HEADER_LANE`](crate::delivery::lanes::HEADER_LANE) and
    /// [`HEADER_SEQUENCE`](crate::delivery::lanes::HEADER_SEQUENCE).
    pub lane: Option<(String, i64)>,
}

impl OutgoingRequest {
    /// Every header to send besides `content-type`: the signature's, then the lane's.
    pub fn header_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs: Vec<(&'static str, String)> = self
            .headers
            .pairs()
            .into_iter()
            .map(|(name, value)| (name, value.to_owned()))
            .collect();
        if let Some((lane, seq)) = &self.lane {
            pairs.push((crate::delivery::lanes::HEADER_LANE, lane.clone()));
            pairs.push((crate::delivery::lanes::HEADER_SEQUENCE, seq.to_string()));
        }
        pairs
    }
}

/// Signs `body` for the claimed delivery at `now`: `webhook-id` is the delivery's `event_id`, so
/// a receiver can drop duplicates of a retried event.
pub async fn prepare_request<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    claim: &Claim,
    body: Vec<u8>,
    now: DateTime<Utc>,
) -> Result<OutgoingRequest> {
    let agent_id = claim.delivery.agent_id.as_str();
    let url = settings.url_policy.check(&claim.delivery.webhook_url)?;
    let keys = signing_secrets::live_keys(db, settings, &[agent_id], now)
        .await?
        .remove(agent_id)
        .unwrap_or_else(|| Err(Error::AgentNotFound(agent_id.to_owned())))?;
    sign_request(url, claim, &keys, body, now)
}

/// [`prepare_request`] for a checked `url` and keys already read for the whole batch.
pub(crate) fn sign_request(
    url: url::Url,
    claim: &Claim,
    keys: &LiveKeys,
    body: Vec<u8>,
    now: DateTime<Utc>,
) -> Result<OutgoingRequest> {
    let delivery = &claim.delivery;
    if keys.secrets.is_empty() && keys.ed25519.is_none() {
        return Err(Error::NoSecret(delivery.agent_id.clone()));
    }
    let secrets: Vec<&WebhookSecret> = keys.secrets.iter().collect();
    let ed25519: Vec<_> = keys.ed25519.iter().collect();
    let headers = signing::sign_with_keys(
        &secrets,
        &ed25519,
        &delivery.event_id,
        now.timestamp(),
        &body,
    )?;
    let lane = delivery.lane.clone().zip(delivery.lane_seq);
    Ok(OutgoingRequest {
        url,
        headers,
        body,
        lane,
    })
}
