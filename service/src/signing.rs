//! Standard Webhooks signatures (<https://www.standardwebhooks.com>, the contract every
//! Standard Webhooks and Svix verification library implements).
//!
//! A delivery carries three headers:
//! * `webhook-id`: the message id, here the delivery's `event_id` (the same for every retry, so
//!   receivers can drop duplicates);
//! * `webhook-timestamp`: unix seconds when it was signed;
//! * `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256>` signatures over
//!   `"{id}.{timestamp}.{body}"`, one per active secret, so a receiver that rotates its secret
//!   accepts deliveries during the change-over.
//!
//! [`verify`] is the receiver's side: constant-time comparison, and a timestamp tolerance in
//! both directions ([`DEFAULT_TOLERANCE`], 5 minutes) against replays.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::webhook_secret::WebhookSecret;

/// The message id header.
pub const HEADER_ID: &str = "webhook-id";
/// The timestamp header.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// The signature header.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// How far a timestamp may be from the verifier's clock, either way.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// The signature headers of one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `webhook-id`.
    pub webhook_id: String,
    /// `webhook-timestamp`, unix seconds.
    pub webhook_timestamp: i64,
    /// `webhook-signature`: `v1,<base64>` entries separated by spaces.
    pub webhook_signature: String,
}

impl SignedHeaders {
    /// The headers as `(name, value)` pairs, names in lower case.
    pub fn pairs(&self) -> [(&'static str, String); 3] {
        [
            (HEADER_ID, self.webhook_id.clone()),
            (HEADER_TIMESTAMP, self.webhook_timestamp.to_string()),
            (HEADER_SIGNATURE, self.webhook_signature.clone()),
        ]
    }
}

/// Why a message cannot be signed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// No secret to sign with.
    #[error("no secret to sign with")]
    NoSecret,
    /// An empty message id, or one with white space or control characters (it would not
    /// survive as a header value).
    #[error("the message id must be non-empty and without white space or control characters")]
    BadMessageId,
}

/// Why a message does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent.
    #[error("missing header {name}")]
    MissingHeader {
        /// Which.
        name: &'static str,
    },
    /// `webhook-timestamp` is not an integer.
    #[error("webhook-timestamp is not a unix timestamp")]
    BadTimestamp,
    /// The timestamp is older than the tolerance.
    #[error("message timestamp too old ({age_secs} s)")]
    TooOld {
        /// Its age in seconds.
        age_secs: i64,
    },
    /// The timestamp is further in the future than the tolerance.
    #[error("message timestamp too new ({skew_secs} s ahead)")]
    TooNew {
        /// How far ahead, in seconds.
        skew_secs: i64,
    },
    /// No `v1` signature matches any of the secrets.
    #[error("no matching signature")]
    NoMatchingSignature,
    /// No secret to verify with.
    #[error("no secret to verify with")]
    NoSecret,
}

/// A source of request headers for [`verify`]; names are compared case-insensitively.
pub trait HeaderSource {
    /// The value of header `name`, if present.
    fn header(&self, name: &str) -> Option<&str>;
}

impl<K: AsRef<str>, V: AsRef<str>> HeaderSource for [(K, V)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

impl<K: AsRef<str>, V: AsRef<str>, S> HeaderSource for std::collections::HashMap<K, V, S> {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

/// Signs `body` as message `msg_id` at `timestamp` with every secret in `secrets`.
pub fn sign(
    secrets: &[&WebhookSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<SignedHeaders, SignError> {
    if secrets.is_empty() {
        return Err(SignError::NoSecret);
    }
    if msg_id.is_empty() || msg_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SignError::BadMessageId);
    }
    let signatures: Vec<String> = secrets
        .iter()
        .map(|secret| {
            format!(
                "v1,{}",
                STANDARD.encode(mac(secret, msg_id, timestamp, body))
            )
        })
        .collect();
    Ok(SignedHeaders {
        webhook_id: msg_id.to_owned(),
        webhook_timestamp: timestamp,
        webhook_signature: signatures.join(" "),
    })
}

/// [`sign`] with one secret.
pub fn sign_one(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<SignedHeaders, SignError> {
    sign(&[secret], msg_id, timestamp, body)
}

/// Verifies a received message: the timestamp within `tolerance` of `now` (unix seconds)
/// either way, and any `v1` signature matching any secret. Entries of other versions are
/// ignored, as the specification asks.
pub fn verify<H: HeaderSource + ?Sized>(
    secrets: &[&WebhookSecret],
    headers: &H,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    if secrets.is_empty() {
        return Err(VerifyError::NoSecret);
    }
    let get = |name: &'static str| {
        headers
            .header(name)
            .ok_or(VerifyError::MissingHeader { name })
    };
    let msg_id = get(HEADER_ID)?;
    let timestamp: i64 = get(HEADER_TIMESTAMP)?
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let signatures = get(HEADER_SIGNATURE)?;

    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    let age = now.saturating_sub(timestamp);
    if age > tolerance {
        return Err(VerifyError::TooOld { age_secs: age });
    }
    if -age > tolerance {
        return Err(VerifyError::TooNew { skew_secs: -age });
    }

    let expected: Vec<_> = secrets
        .iter()
        .map(|secret| mac(secret, msg_id, timestamp, body))
        .collect();
    let matched = signatures
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .any(|given| {
            expected
                .iter()
                .any(|want| bool::from(want.as_slice().ct_eq(given.as_slice())))
        });
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

/// HMAC-SHA256 of `"{id}.{timestamp}.{body}"` under the secret's signing key.
fn mac(secret: &WebhookSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let key = secret.signing_key();
    // HMAC takes keys of any length, so this cannot fail; fall back to an empty MAC that
    // matches nothing rather than panic.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&key) else {
        return Vec::new();
    };
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use secrecy::SecretString;

    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1_614_265_330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret(s: &str) -> WebhookSecret {
        WebhookSecret::parse(SecretString::from(s.to_owned())).unwrap()
    }

    fn headers(h: &SignedHeaders) -> Vec<(&'static str, String)> {
        h.pairs().to_vec()
    }

    #[test]
    fn reproduces_the_specification_example() {
        let s = secret(SPEC_SECRET);
        let signed = sign_one(&s, SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes()).unwrap();
        assert_eq!(signed.webhook_signature, SPEC_SIGNATURE);
        let received = [
            ("Webhook-Id", SPEC_ID),
            ("webhook-timestamp", "1614265330"),
            ("WEBHOOK-SIGNATURE", SPEC_SIGNATURE),
        ];
        verify(
            &[&s],
            &received[..],
            SPEC_BODY.as_bytes(),
            SPEC_TS,
            DEFAULT_TOLERANCE,
        )
        .unwrap();
    }

    #[test]
    fn rotation_carries_one_signature_per_secret() {
        let (old, new) = (secret(SPEC_SECRET), WebhookSecret::generate().unwrap());
        let signed = sign(&[&new, &old], "msg_1", SPEC_TS, b"{}").unwrap();
        assert_eq!(signed.webhook_signature.split(' ').count(), 2);
        for only in [&old, &new] {
            verify(
                &[only],
                &headers(&signed)[..],
                b"{}",
                SPEC_TS,
                DEFAULT_TOLERANCE,
            )
            .unwrap();
        }
    }

    #[test]
    fn user_secrets_round_trip() {
        let s = secret("a perfectly fine user secret");
        let signed = sign_one(&s, "msg_2", SPEC_TS, b"body").unwrap();
        verify(
            &[&s],
            &headers(&signed)[..],
            b"body",
            SPEC_TS + 10,
            DEFAULT_TOLERANCE,
        )
        .unwrap();
    }

    #[test]
    fn every_rejection() {
        let s = secret(SPEC_SECRET);
        let body = SPEC_BODY.as_bytes();
        let ok = sign_one(&s, SPEC_ID, SPEC_TS, body).unwrap();
        let check = |h: &[(&str, String)], body: &[u8], now: i64| {
            verify(&[&s], h, body, now, DEFAULT_TOLERANCE)
        };
        let mut h = headers(&ok);
        for (i, name) in [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE]
            .into_iter()
            .enumerate()
        {
            let mut missing = h.clone();
            missing.remove(i);
            assert_eq!(
                check(&missing, body, SPEC_TS),
                Err(VerifyError::MissingHeader { name })
            );
        }
        h[1].1 = "yesterday".into();
        assert_eq!(check(&h, body, SPEC_TS), Err(VerifyError::BadTimestamp));
        let h = headers(&ok);
        assert_eq!(
            check(&h, body, SPEC_TS + 301),
            Err(VerifyError::TooOld { age_secs: 301 })
        );
        assert_eq!(
            check(&h, body, SPEC_TS - 301),
            Err(VerifyError::TooNew { skew_secs: 301 })
        );
        assert_eq!(check(&h, body, SPEC_TS + 300), Ok(()));
        assert_eq!(check(&h, body, SPEC_TS - 300), Ok(()));
        assert_eq!(
            check(&h, b"{\"test\": 2432232315}", SPEC_TS),
            Err(VerifyError::NoMatchingSignature)
        );
        let mut other_id = headers(&ok);
        other_id[0].1 = "msg_other".into();
        assert_eq!(
            check(&other_id, body, SPEC_TS),
            Err(VerifyError::NoMatchingSignature)
        );
        let wrong = WebhookSecret::generate().unwrap();
        assert_eq!(
            verify(&[&wrong], &h[..], body, SPEC_TS, DEFAULT_TOLERANCE),
            Err(VerifyError::NoMatchingSignature)
        );
        let mut unknown_version = headers(&ok);
        unknown_version[2].1 = ok.webhook_signature.replace("v1,", "v1a,");
        assert_eq!(
            check(&unknown_version, body, SPEC_TS),
            Err(VerifyError::NoMatchingSignature)
        );
        let mut with_unknown = headers(&ok);
        with_unknown[2].1 = format!("v2,AAAA {}", ok.webhook_signature);
        assert_eq!(check(&with_unknown, body, SPEC_TS), Ok(()));
        assert_eq!(
            verify(&[], &h[..], body, SPEC_TS, DEFAULT_TOLERANCE),
            Err(VerifyError::NoSecret)
        );
    }

    #[test]
    fn sign_rejects_bad_input() {
        let s = secret(SPEC_SECRET);
        assert_eq!(sign(&[], "msg", 1, b""), Err(SignError::NoSecret));
        for id in ["", "msg 1", "msg\n1"] {
            assert_eq!(
                sign_one(&s, id, 1, b""),
                Err(SignError::BadMessageId),
                "{id:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn verify_never_panics(id in "\\PC*", ts in "\\PC*", sig in "\\PC*", body in proptest::collection::vec(any::<u8>(), 0..64), now in any::<i64>()) {
            let s = secret(SPEC_SECRET);
            let h = [(HEADER_ID, id), (HEADER_TIMESTAMP, ts), (HEADER_SIGNATURE, sig)];
            let _ = verify(&[&s], &h[..], &body, now, DEFAULT_TOLERANCE);
        }
    }
}
