//! Standard Webhooks signatures (<https://www.standardwebhooks.com>), so that receivers can
//! check deliveries with any Standard Webhooks or Svix library instead of custom code.
//!
//! A delivery carries three headers:
//! * `webhook-id`: the message id, here the delivery's `event_id` (the same for every retry, so
//!   receivers can drop duplicates);
//! * `webhook-timestamp`: unix seconds when it was signed (each attempt is signed afresh);
//! * `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256>` signatures over
//!   `"{id}.{timestamp}.{body}"`, one per live secret (the primary and every previous secret
//!   still in its grace period, see [`crate::webhook::signing_secrets`]), so that a receiver keeps
//!   accepting deliveries while a secret is rotated; and, for an agent with an Ed25519 key, one
//!   `v1a,<base64 Ed25519 signature>` over the same content ([`sign_with_keys`], checked by
//!   [`verify_v1a`] with the `whpk_` public key).
//!
//! [`sign`] is the sender's side. [`verify`] is the receiver's side (used by tests, the ops CLI
//! and anyone receiving our webhooks in Rust): constant-time comparison (`subtle`), and a
//! timestamp tolerance in both directions ([`DEFAULT_TOLERANCE`]) against replays.
//!
//! The signing is our own, not a Standard Webhooks crate's, because it must accept both secret
//! forms of [`crate::secrets::webhook_secret`] and sign with several secrets at once during rotation.
//! HMAC-SHA256 comes from `hmac` + `sha2`: they are in the build anyway (SQLx's PostgreSQL and
//! MySQL authentication), and `sha2` uses the CPU's SHA extensions where there are any.
//!
//! ```
//! use agent_webhooks::secrets::signing::{self, DEFAULT_TOLERANCE, ReceivedHeaders};
//! use agent_webhooks::secrets::webhook_secret::WebhookSecret;
//! use secrecy::SecretString;
//!
//! let secret = WebhookSecret::parse(SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))?;
//! let body = br#"{"test": 2432232314}"#;
//! let signed = signing::sign_one(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)?;
//! assert_eq!(signed.webhook_signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
//!
//! // A receiver passes the three header values as its HTTP library gives them:
//! let received = ReceivedHeaders {
//!     id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
//!     timestamp: "1614265330",
//!     signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
//! };
//! assert_eq!(received, signed.as_received());
//! signing::verify(&[&secret], received, body, 1614265330, DEFAULT_TOLERANCE)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::secrets::ed25519;
use crate::secrets::webhook_secret::WebhookSecret;

/// Name of the message id header, as [`VerifyError::MissingHeader`] reports it.
pub const HEADER_ID: &str = "webhook-id";
/// Name of the timestamp header, as [`VerifyError::MissingHeader`] reports it.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Name of the signature header, as [`VerifyError::MissingHeader`] reports it.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// How far a timestamp may be from the verifier's clock, either way, before a message is
/// treated as a replay: 5 minutes, the value of the reference libraries. The one home of this
/// default.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// The signature version of symmetric (HMAC-SHA256) signatures; other versions are ignored.
pub const SIGNATURE_VERSION: &str = "v1";

const TAG_LEN: usize = 32;

/// The signature header values of one delivery attempt, so a sender can attach them to any
/// HTTP client's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `webhook-id`.
    pub webhook_id: String,
    /// `webhook-timestamp`: unix seconds in decimal.
    pub webhook_timestamp: String,
    /// `webhook-signature`: `v1,<base64>` entries separated by single spaces.
    pub webhook_signature: String,
}

impl SignedHeaders {
    /// The headers as `(name, value)` pairs with lower-case names, ready to add to a request.
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            (HEADER_ID, &self.webhook_id),
            (HEADER_TIMESTAMP, &self.webhook_timestamp),
            (HEADER_SIGNATURE, &self.webhook_signature),
        ]
    }

    /// The headers as a receiver gets them, to check a signature round trip.
    pub fn as_received(&self) -> ReceivedHeaders<'_> {
        ReceivedHeaders {
            id: &self.webhook_id,
            timestamp: &self.webhook_timestamp,
            signature: &self.webhook_signature,
        }
    }
}

/// The three header values a receiver got, for [`verify`]. Look them up in whatever header map
/// the HTTP library has (header names are case-insensitive) and pass an absent one as `""`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceivedHeaders<'a> {
    /// `webhook-id`.
    pub id: &'a str,
    /// `webhook-timestamp`.
    pub timestamp: &'a str,
    /// `webhook-signature`.
    pub signature: &'a str,
}

/// Why a message cannot be signed, so the caller can tell bad input from a missing secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// No secret was given; a delivery is never sent unsigned.
    #[error("no secret to sign with")]
    NoSecret,
    /// See [`check_message_id`] for what a message id may contain.
    #[error(
        "the message id must be non-empty visible ASCII without '.' (it is a header value and part of the signed content)"
    )]
    BadMessageId,
    /// A negative timestamp: a clock error, and not an integer that receivers parse.
    #[error("the timestamp must not be negative, got {0}")]
    NegativeTimestamp(i64),
    /// The HMAC implementation refused a key. HMAC-SHA256 takes keys of any length, so this
    /// is not expected; it exists so that signing can never panic.
    #[error("the HMAC implementation refused the signing key")]
    InvalidKey,
}

/// Why a received message does not verify, so a receiver can log a useful reason (none of
/// them reveals a secret or an expected signature).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No secret to verify with (a configuration error on the receiver's side).
    #[error("no secret to verify with")]
    NoSecret,
    /// A header is empty or white space (an absent header is passed as empty, and the
    /// reference libraries treat the two alike).
    #[error("missing header {name}")]
    MissingHeader {
        /// [`HEADER_ID`], [`HEADER_TIMESTAMP`] or [`HEADER_SIGNATURE`].
        name: &'static str,
    },
    /// `webhook-timestamp` is not a non-negative integer of seconds.
    #[error("webhook-timestamp is not an integer unix timestamp")]
    BadTimestamp,
    /// The timestamp is further in the past than the tolerance allows (a possible replay).
    #[error("message timestamp too old ({age_secs} s)")]
    TooOld {
        /// Saturates at `i64::MAX`.
        age_secs: i64,
    },
    /// The timestamp is further in the future than the tolerance allows.
    #[error("message timestamp too new ({skew_secs} s ahead)")]
    TooNew {
        /// Saturates at `i64::MAX`.
        skew_secs: i64,
    },
    /// `webhook-signature` has no well-formed entry at all: no `<version>,<value>` entry of
    /// an unknown version, and no `v1,<base64 of 32 bytes>` entry.
    #[error("webhook-signature holds no well-formed signature")]
    MalformedSignature,
    /// Well-formed entries, but no `v1` signature matches any of the secrets (wrong secret,
    /// altered body or headers, or only signatures of versions this library does not know).
    #[error("no matching signature")]
    NoMatchingSignature,
}

/// Checks that `msg_id` can be signed, so callers can refuse an id when it is first accepted
/// (say, when an event is enqueued) rather than when its delivery is signed.
///
/// An id must be non-empty and consist of visible ASCII (`!` through `~`): it travels as an
/// HTTP header value, where white space and control characters do not survive and non-ASCII
/// is refused by common HTTP libraries. It must not contain `.`, which delimits the signed
/// content `{id}.{timestamp}.{body}`; the specification asks for this so that bytes cannot be
/// shifted between id, timestamp and body under the same signature.
pub fn check_message_id(msg_id: &str) -> Result<(), SignError> {
    let allowed = |b: u8| b.is_ascii_graphic() && b != b'.';
    if msg_id.is_empty() || !msg_id.bytes().all(allowed) {
        return Err(SignError::BadMessageId);
    }
    Ok(())
}

/// Signs `body` as message `msg_id` at `timestamp` (unix seconds) with every secret in
/// `secrets`, one `v1` signature each in the given order, so that a receiver holding any one
/// of them (the old or the new one during rotation) can verify the delivery.
pub fn sign(
    secrets: &[&WebhookSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<SignedHeaders, SignError> {
    sign_with_keys(secrets, &[], msg_id, timestamp, body)
}

/// [`sign`], and one `v1a` (Ed25519) signature per key in `ed25519_keys` after the `v1`
/// ones, so that receivers holding a secret and receivers holding only a public key verify the
/// same delivery. Fails with [`SignError::NoSecret`] when both lists are empty.
pub fn sign_with_keys(
    secrets: &[&WebhookSecret],
    ed25519_keys: &[&ed25519::SecretKey],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<SignedHeaders, SignError> {
    if secrets.is_empty() && ed25519_keys.is_empty() {
        return Err(SignError::NoSecret);
    }
    check_message_id(msg_id)?;
    if timestamp < 0 {
        return Err(SignError::NegativeTimestamp(timestamp));
    }
    let timestamp = timestamp.to_string();
    let mut signature = String::new();
    let mut push = |version: &str, bytes: &[u8]| {
        if !signature.is_empty() {
            signature.push(' ');
        }
        signature.push_str(version);
        signature.push(',');
        STANDARD.encode_string(bytes, &mut signature);
    };
    for secret in secrets {
        let tag = tag(secret, msg_id, &timestamp, body).ok_or(SignError::InvalidKey)?;
        push(SIGNATURE_VERSION, &tag);
    }
    if !ed25519_keys.is_empty() {
        let content = signed_content(msg_id, &timestamp, body);
        for key in ed25519_keys {
            push(ed25519::SIGNATURE_VERSION, &key.sign(&content));
        }
    }
    Ok(SignedHeaders {
        webhook_id: msg_id.to_owned(),
        webhook_timestamp: timestamp,
        webhook_signature: signature,
    })
}

/// A short, stable name for a signing secret (`hs_` and 16 hex digits), so that operators and
/// receivers can tell which secret is which without ever showing one: the first 8 bytes of
/// HMAC-SHA256 under the secret's key of the fixed text `agent-webhooks key id`. That is what
/// every delivery's signature already is (an HMAC under the secret of a known text), so a key
/// id reveals nothing a signed delivery does not; and that text holds no `.`, so it can never
/// be a delivery's signed content `{id}.{timestamp}.{body}`. A receiver computes the same value
/// from the secret it holds.
pub fn secret_key_id(secret: &WebhookSecret) -> String {
    match <Hmac<Sha256> as KeyInit>::new_from_slice(&secret.signing_key()) {
        Ok(mut mac) => {
            mac.update(KEY_ID_TEXT);
            let digest = mac.finalize().into_bytes();
            format!("hs_{}", ed25519::hex(&digest[..8]))
        }
        // HMAC takes keys of any length; never reached.
        Err(_) => "hs_unknown".to_owned(),
    }
}

const KEY_ID_TEXT: &[u8] = b"agent-webhooks key id";

/// [`sign`] with a single secret, the common case outside a rotation.
pub fn sign_one(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<SignedHeaders, SignError> {
    sign(&[secret], msg_id, timestamp, body)
}

/// Verifies a received message, so a receiver acts only on genuine, fresh deliveries.
///
/// In order:
/// 1. The id, timestamp and signature must be non-empty and not only white space, else
///    [`VerifyError::MissingHeader`] names the first that is not.
/// 2. The timestamp, after trimming surrounding white space, must be ASCII digits fitting an
///    `i64` (no sign, no fraction) and within `tolerance` of `now` (unix seconds) in either
///    direction; exactly `tolerance` away is accepted. Sub-second parts of `tolerance` are
///    ignored.
/// 3. At least one `v1` signature must match the HMAC under any of `secrets`, compared in
///    constant time. Entries are separated by white space; entries of other versions (such as
///    the asymmetric `v1a`) are skipped, as the specification asks.
pub fn verify(
    secrets: &[&WebhookSecret],
    headers: ReceivedHeaders<'_>,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    if secrets.is_empty() {
        return Err(VerifyError::NoSecret);
    }
    let (msg_id, timestamp, signatures) = fresh_headers(headers, now, tolerance)?;
    let timestamp = timestamp.to_string();
    let expected: Vec<[u8; TAG_LEN]> = secrets
        .iter()
        .filter_map(|secret| tag(secret, msg_id, &timestamp, body))
        .collect();
    match_signatures(signatures, SIGNATURE_VERSION, decode_tag, |given| {
        // Every candidate is compared, so the time taken does not depend on which matched.
        expected.iter().fold(false, |matched, want| {
            matched | bool::from(want.ct_eq(given))
        })
    })
}

/// Verifies a received message against Ed25519 public keys: [`verify`] for receivers that
/// hold a `whpk_` key instead of a secret.
///
/// The same header and timestamp checks as [`verify`]; then at least one `v1a` signature must
/// be a valid Ed25519 signature (strict RFC 8032 verification) of `"{id}.{timestamp}.{body}"`
/// under any of `public_keys`. Entries of other versions (`v1`) are skipped.
pub fn verify_v1a(
    public_keys: &[&ed25519::PublicKey],
    headers: ReceivedHeaders<'_>,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    if public_keys.is_empty() {
        return Err(VerifyError::NoSecret);
    }
    let (msg_id, timestamp, signatures) = fresh_headers(headers, now, tolerance)?;
    let content = signed_content(msg_id, &timestamp.to_string(), body);
    let decode = |value: &str| {
        let mut buf = [0u8; 64 + 3];
        STANDARD_PAD_INDIFFERENT
            .decode_slice(value, &mut buf)
            .ok()
            .and_then(|len| <[u8; 64]>::try_from(buf.get(..len)?).ok())
    };
    // Signatures are public values: no constant-time concern in which key matched.
    match_signatures(signatures, ed25519::SIGNATURE_VERSION, decode, |given| {
        public_keys.iter().any(|key| key.verifies(&content, given))
    })
}

/// Steps 1 and 2 of [`verify`], shared by both signature versions: the id, the fresh timestamp
/// and the signature list.
fn fresh_headers<'h>(
    headers: ReceivedHeaders<'h>,
    now: i64,
    tolerance: Duration,
) -> Result<(&'h str, i64, &'h str), VerifyError> {
    let msg_id = required(HEADER_ID, headers.id)?;
    let timestamp = parse_timestamp(required(HEADER_TIMESTAMP, headers.timestamp)?)?;
    let signatures = required(HEADER_SIGNATURE, headers.signature)?;
    check_freshness(timestamp, now, tolerance)?;
    Ok((msg_id, timestamp, signatures))
}

/// Scans the white-space separated `version,value` entries for one of `version` that decodes
/// and `matches`. Entries of other versions are skipped but make the list well formed, so the
/// error says whether nothing matched or nothing could be read.
fn match_signatures<T>(
    signatures: &str,
    version: &str,
    decode: impl Fn(&str) -> Option<T>,
    matches: impl Fn(&T) -> bool,
) -> Result<(), VerifyError> {
    let mut well_formed = false;
    let mut matched = false;
    for entry in signatures.split_ascii_whitespace() {
        let Some((given_version, value)) = entry.split_once(',') else {
            continue;
        };
        if given_version.is_empty() || value.is_empty() {
            continue;
        }
        if given_version != version {
            well_formed = true;
            continue;
        }
        let Some(given) = decode(value) else {
            continue;
        };
        well_formed = true;
        // Every entry is checked, so the time taken does not depend on which one matched.
        matched |= matches(&given);
    }
    match (matched, well_formed) {
        (true, _) => Ok(()),
        (false, true) => Err(VerifyError::NoMatchingSignature),
        (false, false) => Err(VerifyError::MalformedSignature),
    }
}

/// `"{id}.{timestamp}.{body}"`, what both signature versions sign.
fn signed_content(msg_id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(msg_id.len() + timestamp.len() + body.len() + 2);
    for part in [msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
        content.extend_from_slice(part);
    }
    content
}

fn required<'a>(name: &'static str, value: &'a str) -> Result<&'a str, VerifyError> {
    if value.trim().is_empty() {
        return Err(VerifyError::MissingHeader { name });
    }
    Ok(value)
}

/// Optional surrounding white space, then digits only.
fn parse_timestamp(value: &str) -> Result<i64, VerifyError> {
    let digits = value.trim();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::BadTimestamp);
    }
    digits.parse().map_err(|_| VerifyError::BadTimestamp)
}

/// Enforces the tolerance in both directions, without overflow for any inputs.
fn check_freshness(timestamp: i64, now: i64, tolerance: Duration) -> Result<(), VerifyError> {
    let tolerance = i128::from(tolerance.as_secs());
    let age = i128::from(now) - i128::from(timestamp);
    let clamp = |secs: i128| i64::try_from(secs).unwrap_or(i64::MAX);
    if age > tolerance {
        return Err(VerifyError::TooOld {
            age_secs: clamp(age),
        });
    }
    if -age > tolerance {
        return Err(VerifyError::TooNew {
            skew_secs: clamp(-age),
        });
    }
    Ok(())
}

/// Decodes a `v1` value (standard base64, padding optional) that must hold exactly one tag.
fn decode_tag(value: &str) -> Option<[u8; TAG_LEN]> {
    // Room for one spare byte, so a longer value is detected instead of truncated.
    let mut buf = [0u8; TAG_LEN + 3];
    let len = STANDARD_PAD_INDIFFERENT
        .decode_slice(value, &mut buf)
        .ok()?;
    buf.get(..len)?.try_into().ok()
}

/// HMAC-SHA256 of `"{id}.{timestamp}.{body}"` under the secret's signing key; `None` only if
/// the HMAC implementation refuses the key (it takes any length).
fn tag(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp: &str,
    body: &[u8],
) -> Option<[u8; TAG_LEN]> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&secret.signing_key()).ok()?;
    for part in [msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
        mac.update(part);
    }
    Some(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use secrecy::SecretString;

    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    /// The specification example's headers.
    const SPEC: ReceivedHeaders<'static> = ReceivedHeaders {
        id: SPEC_ID,
        timestamp: "1614265330",
        signature: SPEC_SIGNATURE,
    };

    fn secret(s: &str) -> WebhookSecret {
        WebhookSecret::parse(SecretString::from(s.to_owned())).unwrap()
    }

    fn spec_secret() -> WebhookSecret {
        secret(SPEC_SECRET)
    }

    /// [`SPEC`] with the header called `name` set to `value`.
    fn spec_with<'a>(name: &str, value: &'a str) -> ReceivedHeaders<'a> {
        match name {
            HEADER_ID => ReceivedHeaders { id: value, ..SPEC },
            HEADER_TIMESTAMP => ReceivedHeaders {
                timestamp: value,
                ..SPEC
            },
            _ => ReceivedHeaders {
                signature: value,
                ..SPEC
            },
        }
    }

    fn verify_spec(headers: ReceivedHeaders<'_>, body: &[u8], now: i64) -> Result<(), VerifyError> {
        verify(&[&spec_secret()], headers, body, now, DEFAULT_TOLERANCE)
    }

    #[test]
    fn sign_reproduces_the_specification_example() {
        let signed = sign_one(&spec_secret(), SPEC_ID, SPEC_TS, SPEC_BODY).unwrap();
        assert_eq!(
            signed,
            SignedHeaders {
                webhook_id: SPEC_ID.to_owned(),
                webhook_timestamp: "1614265330".to_owned(),
                webhook_signature: SPEC_SIGNATURE.to_owned(),
            }
        );
        assert_eq!(
            signed.pairs(),
            [
                ("webhook-id", SPEC_ID),
                ("webhook-timestamp", "1614265330"),
                ("webhook-signature", SPEC_SIGNATURE),
            ]
        );
        assert_eq!(signed.as_received(), SPEC);
        assert_eq!(verify_spec(SPEC, SPEC_BODY, SPEC_TS), Ok(()));
    }

    #[test]
    fn round_trips_for_generated_whsec_and_user_secrets() {
        let generated = WebhookSecret::generate().unwrap();
        let user = secret("a perfectly fine user secret");
        for s in [&generated, &user] {
            let body = "{\"text\":\"héllo\\nwörld\"}".as_bytes();
            let signed = sign_one(s, "evt_01J9Z", 1_700_000_000, body).unwrap();
            assert_eq!(
                verify(
                    &[s],
                    signed.as_received(),
                    body,
                    1_700_000_010,
                    DEFAULT_TOLERANCE
                ),
                Ok(())
            );
        }
        // The two key forms are really different keys.
        let a = sign_one(&generated, "evt", 1, b"x").unwrap();
        let b = sign_one(&user, "evt", 1, b"x").unwrap();
        assert_ne!(a.webhook_signature, b.webhook_signature);
    }

    #[test]
    fn a_user_secret_is_keyed_with_its_utf8_bytes() {
        // HMAC-SHA256(key = b"a perfectly fine user secret", "evt_1.1700000000.{}"), computed
        // independently with Python's hmac module.
        let signed = sign_one(
            &secret("a perfectly fine user secret"),
            "evt_1",
            1_700_000_000,
            b"{}",
        )
        .unwrap();
        assert_eq!(
            signed.webhook_signature,
            "v1,7s1Bd9/P2K92jtkFUa14k1IoLvCMRQv0iFgw8VtnyMM="
        );
    }

    #[test]
    fn rotation_sends_one_signature_per_secret_and_either_secret_verifies() {
        let old = spec_secret();
        let new = WebhookSecret::generate().unwrap();
        let signed = sign(&[&new, &old], SPEC_ID, SPEC_TS, SPEC_BODY).unwrap();
        let entries: Vec<&str> = signed.webhook_signature.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1], SPEC_SIGNATURE);
        assert_eq!(
            entries[0],
            sign_one(&new, SPEC_ID, SPEC_TS, SPEC_BODY)
                .unwrap()
                .webhook_signature
        );
        let headers = signed.as_received();
        for secrets in [vec![&old], vec![&new], vec![&old, &new]] {
            assert_eq!(
                verify(&secrets, headers, SPEC_BODY, SPEC_TS, DEFAULT_TOLERANCE),
                Ok(())
            );
        }
        // A receiver holding both secrets accepts a message signed with only one.
        assert_eq!(
            verify(&[&new, &old], SPEC, SPEC_BODY, SPEC_TS, DEFAULT_TOLERANCE),
            Ok(())
        );
        let stranger = WebhookSecret::generate().unwrap();
        assert_eq!(
            verify(&[&stranger], headers, SPEC_BODY, SPEC_TS, DEFAULT_TOLERANCE),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn each_missing_or_empty_header_is_named() {
        for name in [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE] {
            for value in ["", "  ", "\t\r\n"] {
                assert_eq!(
                    verify_spec(spec_with(name, value), SPEC_BODY, SPEC_TS),
                    Err(VerifyError::MissingHeader { name }),
                    "{name} {value:?}"
                );
            }
        }
        let none = ReceivedHeaders {
            id: "",
            timestamp: "",
            signature: "",
        };
        assert_eq!(
            verify_spec(none, SPEC_BODY, SPEC_TS),
            Err(VerifyError::MissingHeader { name: HEADER_ID })
        );
    }

    #[test]
    fn timestamps_must_be_plain_integers() {
        for bad in [
            "yesterday",
            "1614265330.0",
            "+1614265330",
            "-1614265330",
            "1_614_265_330",
            "0x6037A0F2",
            "99999999999999999999",
        ] {
            assert_eq!(
                verify_spec(spec_with(HEADER_TIMESTAMP, bad), SPEC_BODY, SPEC_TS),
                Err(VerifyError::BadTimestamp),
                "{bad}"
            );
        }
        // Surrounding white space (as left by some header parsers) is tolerated.
        assert_eq!(
            verify_spec(
                spec_with(HEADER_TIMESTAMP, " 1614265330 "),
                SPEC_BODY,
                SPEC_TS
            ),
            Ok(())
        );
    }

    #[test]
    fn the_tolerance_holds_in_both_directions_and_includes_its_bound() {
        let tol = 300;
        assert_eq!(verify_spec(SPEC, SPEC_BODY, SPEC_TS + tol), Ok(()));
        assert_eq!(verify_spec(SPEC, SPEC_BODY, SPEC_TS - tol), Ok(()));
        assert_eq!(
            verify_spec(SPEC, SPEC_BODY, SPEC_TS + tol + 1),
            Err(VerifyError::TooOld { age_secs: 301 })
        );
        assert_eq!(
            verify_spec(SPEC, SPEC_BODY, SPEC_TS - tol - 1),
            Err(VerifyError::TooNew { skew_secs: 301 })
        );
        let s = spec_secret();
        let strict = Duration::from_millis(1_999);
        assert_eq!(verify(&[&s], SPEC, SPEC_BODY, SPEC_TS + 1, strict), Ok(()));
        assert_eq!(
            verify(&[&s], SPEC, SPEC_BODY, SPEC_TS + 2, strict),
            Err(VerifyError::TooOld { age_secs: 2 })
        );
        // Extreme clocks saturate instead of overflowing.
        assert_eq!(
            verify(&[&s], SPEC, SPEC_BODY, i64::MIN, DEFAULT_TOLERANCE),
            Err(VerifyError::TooNew {
                skew_secs: i64::MAX
            })
        );
        assert_eq!(
            verify(&[&s], SPEC, SPEC_BODY, SPEC_TS, Duration::MAX),
            Ok(())
        );
    }

    #[test]
    fn any_change_to_body_id_or_timestamp_breaks_the_signature() {
        let tampered_body = br#"{"test": 2432232315}"#;
        assert_eq!(
            verify_spec(SPEC, tampered_body, SPEC_TS),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify_spec(SPEC, b"", SPEC_TS),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify_spec(
                spec_with(HEADER_ID, "msg_p5jXN8AQM9LWM0D4loKWxJeK"),
                SPEC_BODY,
                SPEC_TS
            ),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify_spec(
                spec_with(HEADER_TIMESTAMP, "1614265331"),
                SPEC_BODY,
                SPEC_TS
            ),
            Err(VerifyError::NoMatchingSignature)
        );
        // Moving bytes between the fields of the signed content is not possible either, since
        // sign refuses ids with '.'.
        assert_eq!(
            sign_one(&spec_secret(), "msg.1614265330", 1, b"x"),
            Err(SignError::BadMessageId)
        );
    }

    #[test]
    fn the_wrong_secret_does_not_verify() {
        for wrong in [
            WebhookSecret::generate().unwrap(),
            secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSx"),
            secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ] {
            assert_eq!(
                verify(&[&wrong], SPEC, SPEC_BODY, SPEC_TS, DEFAULT_TOLERANCE),
                Err(VerifyError::NoMatchingSignature)
            );
        }
        assert_eq!(
            verify(&[], SPEC, SPEC_BODY, SPEC_TS, DEFAULT_TOLERANCE),
            Err(VerifyError::NoSecret)
        );
    }

    #[test]
    fn unknown_versions_are_skipped_and_malformed_entries_ignored() {
        let value = SPEC_SIGNATURE.trim_start_matches("v1,");
        let unpadded = value.trim_end_matches('=');
        let check = |sig: &str| verify_spec(spec_with(HEADER_SIGNATURE, sig), SPEC_BODY, SPEC_TS);
        // Only unknown versions, even carrying the right bytes: no match.
        assert_eq!(
            check(&format!("v1a,{value}")),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            check(&format!("v2,{value} V1,{value}")),
            Err(VerifyError::NoMatchingSignature)
        );
        // Nothing well-formed at all.
        for garbage in [
            value,
            "v1,",
            ",abc",
            "v1,!!!!",
            "v1,AAAA",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=AAAA",
        ] {
            assert_eq!(
                check(garbage),
                Err(VerifyError::MalformedSignature),
                "{garbage}"
            );
        }
        // A valid v1 among other entries, in any position, with any spacing; padding optional.
        for ok in [
            format!("v1a,hnO3f9T8Ytu9Hw== {SPEC_SIGNATURE}"),
            format!("{SPEC_SIGNATURE} v1,AAAA garbage"),
            format!("v1,{}  \t{SPEC_SIGNATURE} ", "A".repeat(44)),
            format!("v1,{unpadded}"),
        ] {
            assert_eq!(check(&ok), Ok(()), "{ok}");
        }
        // A well-formed but wrong v1 signature.
        assert_eq!(
            check(&format!("v1,{}", "A".repeat(43) + "=")),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn sign_rejects_what_it_cannot_sign() {
        let s = spec_secret();
        assert_eq!(sign(&[], "msg", 1, b""), Err(SignError::NoSecret));
        for id in ["", "msg 1", "msg\n1", "msg\t", "msg.1", "mség", "msg\u{7f}"] {
            assert_eq!(
                sign_one(&s, id, 1, b""),
                Err(SignError::BadMessageId),
                "{id:?}"
            );
            assert_eq!(check_message_id(id), Err(SignError::BadMessageId));
        }
        for id in [
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "0190b9a2-7c1e-7d35-8c7e-3b2f1a0e9d11",
            "a",
            "~!#$%&'*+-/:;<=>?@[]^_`{|}",
        ] {
            assert_eq!(check_message_id(id), Ok(()), "{id}");
            assert!(sign_one(&s, id, 0, b"").is_ok());
        }
        assert_eq!(
            sign_one(&s, "msg", -1, b""),
            Err(SignError::NegativeTimestamp(-1))
        );
    }

    fn arbitrary_header() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,80}",
            any::<String>(),
            // Plausible values, to reach the deeper checks.
            (0i64..3_000_000_000).prop_map(|t| t.to_string()),
            "((v1|v1a|v2),[A-Za-z0-9+/=]{0,50}[ ]{0,2}){0,4}",
            Just(SPEC_SIGNATURE.to_owned()),
        ]
    }

    proptest! {
        #[test]
        fn verify_never_panics_on_arbitrary_headers(
            id in arbitrary_header(),
            ts in arbitrary_header(),
            sig in arbitrary_header(),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            now in any::<i64>(),
            tolerance in any::<u64>(),
        ) {
            let s = spec_secret();
            let h = ReceivedHeaders { id: &id, timestamp: &ts, signature: &sig };
            let result = verify(&[&s], h, &body, now, Duration::from_secs(tolerance));
            // Only a genuine signature passes: with arbitrary input that means the spec one.
            if result.is_ok() {
                prop_assert!(sig.contains(SPEC_SIGNATURE));
            }
        }

        #[test]
        fn every_signed_message_verifies_and_no_altered_body_does(
            id in "[!-~&&[^.]]{1,40}",
            ts in 0i64..=i64::MAX,
            body in proptest::collection::vec(any::<u8>(), 0..256),
            flip in any::<prop::sample::Index>(),
        ) {
            let s = spec_secret();
            let signed = sign_one(&s, &id, ts, &body).unwrap();
            prop_assert_eq!(verify(&[&s], signed.as_received(), &body, ts, DEFAULT_TOLERANCE), Ok(()));
            let mut altered = body.clone();
            if altered.is_empty() {
                altered.push(0);
            } else {
                let i = flip.index(altered.len());
                altered[i] ^= 1;
            }
            prop_assert_eq!(
                verify(&[&s], signed.as_received(), &altered, ts, DEFAULT_TOLERANCE),
                Err(VerifyError::NoMatchingSignature)
            );
        }
    }

    #[test]
    fn v1_and_v1a_signatures_travel_together_and_each_verifier_takes_its_own() {
        let secret = spec_secret();
        let key = ed25519::SecretKey::generate().unwrap();
        let public = key.public_key();
        let signed = sign_with_keys(&[&secret], &[&key], SPEC_ID, SPEC_TS, SPEC_BODY).unwrap();
        let entries: Vec<&str> = signed.webhook_signature.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert!(entries[0].starts_with("v1,") && entries[1].starts_with("v1a,"));
        let received = signed.as_received();
        verify(&[&secret], received, SPEC_BODY, SPEC_TS, DEFAULT_TOLERANCE).unwrap();
        verify_v1a(&[&public], received, SPEC_BODY, SPEC_TS, DEFAULT_TOLERANCE).unwrap();
        assert_eq!(
            verify_v1a(&[&public], received, b"{}", SPEC_TS, DEFAULT_TOLERANCE),
            Err(VerifyError::NoMatchingSignature)
        );
        let other = ed25519::SecretKey::generate().unwrap().public_key();
        assert_eq!(
            verify_v1a(&[&other], received, SPEC_BODY, SPEC_TS, DEFAULT_TOLERANCE),
            Err(VerifyError::NoMatchingSignature)
        );
        // Only the v1a entry: the HMAC verifier finds nothing of its version.
        let only_v1a = ReceivedHeaders {
            signature: entries[1],
            ..received
        };
        assert_eq!(
            verify(&[&secret], only_v1a, SPEC_BODY, SPEC_TS, DEFAULT_TOLERANCE),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            sign_with_keys(&[], &[], SPEC_ID, SPEC_TS, SPEC_BODY),
            Err(SignError::NoSecret)
        );
    }

    #[test]
    fn key_ids_name_secrets_without_showing_them() {
        let secret = spec_secret();
        let id = secret_key_id(&secret);
        assert!(id.starts_with("hs_") && id.len() == 19, "{id}");
        assert_eq!(id, secret_key_id(&spec_secret()));
        let other = WebhookSecret::generate().unwrap();
        assert_ne!(id, secret_key_id(&other));
        assert!(!SPEC_SECRET.contains(&id[3..]));
    }
}
