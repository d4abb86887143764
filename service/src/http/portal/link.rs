//! Portal links: a token in the path that grants one agent's portal until it expires, signed
//! with the settings' [`PortalKey`], so the app server mints links without storing anything
//! and any replica can check them.
//!
//! A token is `<payload>.<mac>`, both unpadded base64url: the payload is the JSON array
//! `["v1", expires_at_unix, organization_id, agent_id]`, the MAC HMAC-SHA256 over
//! [`LINK_DOMAIN`] and the payload's text. Expired, forged, truncated and other-agent tokens
//! all fail the same way ([`verify`] returns `None`), so a page cannot tell them apart.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use hmac::{KeyInit, Mac};
use sea_orm::ConnectionTrait;
use serde::Serialize;
use sha2::Sha256;

use crate::error::Error;
use crate::settings::{PortalKey, WebhookSettings};
use crate::webhook::find_agent;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Where the portal's pages live under the router; a link's path is this, `/`, the token.
pub const PORTAL_PREFIX: &str = "/webhooks/portal";

/// How long a link lives when the caller does not say: long enough to open it from the app,
/// short enough that a link copied into a chat soon stops working.
pub const DEFAULT_LINK_TTL: Duration = Duration::from_secs(15 * 60);

/// The longest a link may live. A link is a bearer grant: a day bounds what a leaked one does.
pub const MAX_LINK_TTL: Duration = Duration::from_secs(24 * 3600);

/// Separates the MACs of links from those of CSRF tokens made with the same key.
const LINK_DOMAIN: &[u8] = b"agent-webhooks portal link v1\n";
const CSRF_DOMAIN: &[u8] = b"agent-webhooks portal csrf v1\n";

/// A minted link. The token is not a webhook secret, but it opens the agent's portal until
/// `expires_at`: hand it to the agent's owner only.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "axum", derive(utoipa::ToSchema))]
pub struct PortalLink {
    /// The agent the link opens.
    pub agent_id: String,
    /// The page's path under the router, `/webhooks/portal/<token>`; the app puts its own
    /// origin (and mount point) in front.
    pub path: String,
    /// When the link stops working.
    pub expires_at: DateTime<Utc>,
}

/// Why no link was minted.
#[derive(Debug, thiserror::Error)]
pub enum PortalLinkError {
    /// `WEBHOOK_PORTAL_KEY` is not set.
    #[error("portal links are not configured on this server (no WEBHOOK_PORTAL_KEY)")]
    NoKey,
    /// Zero, or longer than [`MAX_LINK_TTL`].
    #[error("a portal link lives from 1 to {max_secs} seconds, got {got_secs}")]
    InvalidTtl {
        /// The asked lifetime.
        got_secs: u64,
        /// [`MAX_LINK_TTL`].
        max_secs: u64,
    },
    /// No such live agent in the organization, or the database failed.
    #[error(transparent)]
    Service(#[from] Error),
}

/// Mints a link to `agent_id`'s portal valid for `valid_for` from `now`, after checking that
/// the agent is live and belongs to `organization_id` (else [`Error::AgentNotFound`], as for a
/// missing agent): the app's own authorization of its user comes first.
pub async fn mint_link<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    organization_id: &str,
    agent_id: &str,
    valid_for: Duration,
    now: DateTime<Utc>,
) -> Result<PortalLink, PortalLinkError> {
    let key = settings.portal_key.as_ref().ok_or(PortalLinkError::NoKey)?;
    let invalid = || PortalLinkError::InvalidTtl {
        got_secs: valid_for.as_secs(),
        max_secs: MAX_LINK_TTL.as_secs(),
    };
    if valid_for.is_zero() || valid_for > MAX_LINK_TTL {
        return Err(invalid());
    }
    let agent = find_agent(db, agent_id).await?;
    if agent.organization_id != organization_id {
        return Err(Error::AgentNotFound(agent_id.to_owned()).into());
    }
    let expires_at = TimeDelta::from_std(valid_for)
        .ok()
        .and_then(|ttl| now.checked_add_signed(ttl))
        .ok_or_else(invalid)?;
    let grant = Grant {
        agent_id: agent_id.to_owned(),
        organization_id: organization_id.to_owned(),
        expires_at: expires_at.timestamp(),
    };
    Ok(PortalLink {
        agent_id: agent_id.to_owned(),
        path: format!("{PORTAL_PREFIX}/{}", sign(key, &grant)),
        expires_at: DateTime::from_timestamp(grant.expires_at, 0).unwrap_or(expires_at),
    })
}

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    pub agent_id: String,
    pub organization_id: String,
    /// Unix seconds.
    pub expires_at: i64,
}

fn mac(key: &PortalKey, domain: &[u8], text: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key.expose()).expect("HMAC takes keys of any length");
    mac.update(domain);
    mac.update(text);
    mac
}

/// The token of `grant`.
pub(crate) fn sign(key: &PortalKey, grant: &Grant) -> String {
    let payload = serde_json::json!([
        "v1",
        grant.expires_at,
        grant.organization_id,
        grant.agent_id
    ])
    .to_string();
    let payload = URL_SAFE_NO_PAD.encode(payload);
    let tag = mac(key, LINK_DOMAIN, payload.as_bytes())
        .finalize()
        .into_bytes();
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
}

/// The grant of `token` when the MAC is the key's and it has not expired at `now`; `None`
/// otherwise, whatever the reason.
pub(crate) fn verify(key: &PortalKey, token: &str, now: DateTime<Utc>) -> Option<Grant> {
    // Longer than any link we mint (ids are bounded by their columns): not worth a MAC.
    if token.len() > 4096 {
        return None;
    }
    let (payload, tag) = token.split_once('.')?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    // Constant time: the MAC is checked before anything in the payload is believed.
    mac(key, LINK_DOMAIN, payload.as_bytes())
        .verify_slice(&tag)
        .ok()?;
    let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let (version, expires_at, organization_id, agent_id): (String, i64, String, String) =
        serde_json::from_slice(&json).ok()?;
    if version != "v1" || expires_at <= now.timestamp() {
        return None;
    }
    Some(Grant {
        agent_id,
        organization_id,
        expires_at,
    })
}

/// The CSRF token of the forms of the pages under `token`: derived, so nothing is stored, and
/// tied to the link, so a token from another link (or agent) does not pass.
pub(crate) fn csrf_token(key: &PortalKey, token: &str) -> String {
    URL_SAFE_NO_PAD.encode(
        mac(key, CSRF_DOMAIN, token.as_bytes())
            .finalize()
            .into_bytes(),
    )
}

/// Whether `given` is the CSRF token of `token`, in constant time.
pub(crate) fn check_csrf(key: &PortalKey, token: &str, given: &str) -> bool {
    match URL_SAFE_NO_PAD.decode(given) {
        Ok(tag) => mac(key, CSRF_DOMAIN, token.as_bytes())
            .verify_slice(&tag)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> PortalKey {
        PortalKey::from_bytes(&[byte; 32]).unwrap()
    }

    fn grant(agent: &str, expires_at: i64) -> Grant {
        Grant {
            agent_id: agent.to_owned(),
            organization_id: "org-1".to_owned(),
            expires_at,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn a_token_grants_its_agent_until_it_expires() {
        let token = sign(&key(1), &grant("agent-1", 1_000));
        assert_eq!(
            verify(&key(1), &token, at(999)),
            Some(grant("agent-1", 1_000))
        );
        assert_eq!(
            verify(&key(1), &token, at(1_000)),
            None,
            "expired at the second"
        );
        assert_eq!(verify(&key(1), &token, at(5_000)), None);
        assert_eq!(verify(&key(2), &token, at(999)), None, "another key");
        // Tokens are path segments: no `/`, `?`, `#` or `%`.
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        );
    }

    #[test]
    fn a_changed_payload_or_mac_is_refused() {
        let token = sign(&key(1), &grant("agent-1", 1_000));
        let (payload, tag) = token.split_once('.').unwrap();
        // The payload of another agent (or a later expiry) under the first token's MAC.
        let other = sign(&key(1), &grant("agent-2", 9_000));
        let (other_payload, other_tag) = other.split_once('.').unwrap();
        assert_eq!(
            verify(&key(1), &format!("{other_payload}.{tag}"), at(0)),
            None
        );
        assert_eq!(
            verify(&key(1), &format!("{payload}.{other_tag}"), at(0)),
            None
        );
        // Every single-character change of the token.
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            if changed != token {
                assert_eq!(verify(&key(1), &changed, at(0)), None, "{changed}");
            }
        }
        for junk in [
            "",
            ".",
            "a.b",
            "..",
            &token[..token.len() - 2],
            &format!("{token}.x"),
        ] {
            assert_eq!(verify(&key(1), junk, at(0)), None, "{junk}");
        }
    }

    #[test]
    fn csrf_tokens_belong_to_one_link() {
        let one = sign(&key(1), &grant("agent-1", 1_000));
        let two = sign(&key(1), &grant("agent-2", 1_000));
        let csrf = csrf_token(&key(1), &one);
        assert!(check_csrf(&key(1), &one, &csrf));
        assert!(!check_csrf(&key(1), &two, &csrf));
        assert!(!check_csrf(&key(2), &one, &csrf));
        assert!(!check_csrf(&key(1), &one, ""));
        assert!(!check_csrf(&key(1), &one, "not base64!"));
        assert_ne!(csrf, one, "the CSRF token is not the link");
    }
}
