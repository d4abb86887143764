//! What a sender worker needs for one claimed delivery, in one call: the URL, the signed
//! Standard Webhooks headers and the body bytes to send unchanged.
//!
//! The secrets are opened from the agent's rows (see [`crate::webhook`] and
//! [`crate::webhook::signing_secrets`]) and used only to sign: one `v1` signature with the primary secret
//! and one with every previous secret still in its grace period at `now`, and a `v1a` signature
//! when the agent has an Ed25519 key. [`OutgoingRequest`] holds none of them. A delivery whose
//! agent has neither a secret nor an Ed25519 key is not sent unsigned: [`prepare_request`]
//! fails with [`Error::NoSecret`]. A delivery whose agent was
//! soft-deleted after it was enqueued is not sent either: [`prepare_request`] fails with
//! [`Error::AgentNotFound`], and the worker should record it as failed with
//! [`crate::delivery::abandon`] (retrying would only repeat the refusal).
//!
//! The URL was checked when it was configured; it is checked again here against the current
//! policy (which also judges IP-literal hosts), and a sender must still vet the addresses it
//! connects to with
//! [`UrlPolicy::check_resolved`](crate::webhook::url_policy::UrlPolicy::check_resolved) (a DNS name may
//! point inside the network, or change between check and use) and connect to exactly the
//! addresses that check returns. The worker in [`crate::dispatch`] does so in its HTTP client's
//! resolver.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;

use crate::delivery::Claim;
use crate::error::{Error, Result};
use crate::secrets::signing::{self, SignedHeaders};
use crate::secrets::webhook_secret::WebhookSecret;
use crate::settings::WebhookSettings;
use crate::webhook::signing_secrets::{self, LiveKeys};

/// An HTTP request ready to send: POST `body` to `url` with `headers` and
/// `content-type: application/json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingRequest {
    /// The delivery's captured URL, checked against the current policy.
    pub url: url::Url,
    /// `webhook-id`, `webhook-timestamp` and `webhook-signature`.
    pub headers: SignedHeaders,
    /// The exact bytes that were signed; send them unchanged.
    pub body: Vec<u8>,
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

/// [`prepare_request`] for a checked `url` and keys already read (the worker reads the keys of
/// a claimed batch at once, [`signing_secrets::live_keys`]).
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
    Ok(OutgoingRequest { url, headers, body })
}
