//! Standard Webhooks signatures (<https://www.standardwebhooks.com>), so that receivers can
//! check deliveries with any Standard Webhooks or Svix library instead of custom code.
//!
//! `webhook-id` is the delivery's `event_id`, the same for every retry so receivers can drop
//! duplicates; each attempt is signed afresh. `webhook-signature` holds one `v1` signature per
//! live secret, so receivers keep accepting deliveries during a rotation (see
//! [`crate::webhook::signing_secrets`]), and a `v1a` (Ed25519) one when the agent has a key.
//!
//! The signing is our own, not a Standard Webhooks crate's, because it must accept both secret
//! forms of [`crate::secrets::webhook_secret`] and sign with several secrets at once. `hmac` +
//! `sha2` are in the build anyway (SQLx's database authentication).
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

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// How far a timestamp may be from the verifier's clock, either way, before a message is
/// treated as a replay: the reference libraries' value.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// The signature version of symmetric (HMAC-SHA256) signatures; other versions are ignored.
pub const SIGNATURE_VERSION: &str = "v1";

const TAG_LEN: usize = 32;

/// So a sender can attach them to any HTTP client's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    pub webhook_id: String,
    /// Unix seconds in decimal.
    pub webhook_timestamp: String,
    /// `v1,<base64>` entries separated by single spaces.
    pub webhook_signature: String,
}

impl SignedHeaders {
    /// `(name, value)` pairs with lower-case names.
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            (HEADER_ID, &self.webhook_id),
            (HEADER_TIMESTAMP, &self.webhook_timestamp),
            (HEADER_SIGNATURE, &self.webhook_signature),
        ]
    }

    pub fn as_received(&self) -> ReceivedHeaders<'_> {
        ReceivedHeaders {
            id: &self.webhook_id,
            timestamp: &self.webhook_timestamp,
            signature: &self.webhook_signature,
        }
    }
}

/// Pass an absent header as `""`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceivedHeaders<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("no secret to sign with")]
    NoSecret,
    /// See [`check_message_id`] for what a message id may contain.
    #[error(
        "the message id must be non-empty visible ASCII without '.' (it is a header value and part of the signed content)"
    )]
    BadMessageId,
    #[error("the timestamp must not be negative, got {0}")]
    NegativeTimestamp(i64),
    /// Not expected (HMAC-SHA256 takes keys of any length); it exists so signing never panics.
    #[error("the HMAC implementation refused the signing key")]
    InvalidKey,
}

/// None reveals a secret or an expected signature, so a receiver can log it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no secret to verify with")]
    NoSecret,
    /// Empty or white space: the reference libraries treat that as absent.
    #[error("missing header {name}")]
    MissingHeader { name: &'static str },
    #[error("webhook-timestamp is not an integer unix timestamp")]
    BadTimestamp,
    #[error("message timestamp too old ({age_secs} s)")]
    TooOld {
        /// Saturates at `i64::MAX`.
        age_secs: i64,
    },
    #[error("message timestamp too new ({skew_secs} s ahead)")]
    TooNew {
        /// Saturates at `i64::MAX`.
        skew_secs: i64,
    },
    #[error("webhook-signature holds no well-formed signature")]
    MalformedSignature,
    /// Wrong secret, altered body or headers, or only versions this library does not know.
    #[error("no matching signature")]
    NoMatchingSignature,
}

/// So callers refuse an id when it is accepted (at enqueue) rather than when it is signed.
/// Visible ASCII only, since it travels as a header value, and no `.`, which delimits the
/// signed content, so bytes cannot shift between id, timestamp and body under one signature.
pub fn check_message_id(msg_id: &str) -> Result<(), SignError> {
    let allowed = |b: u8| b.is_ascii_graphic() && b != b'.';
    if msg_id.is_empty() || !msg_id.bytes().all(allowed) {
        return Err(SignError::BadMessageId);
    }
    Ok(())
}

/// One `v1` signature per secret, in order, so a receiver holding either the old or the new
/// secret during a rotation can verify.
pub fn sign(
    secrets: &[&WebhookSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<SignedHeaders, SignError> {
    sign_with_keys(secrets, &[], msg_id, timestamp, body)
}

/// [`sign`], then one `v1a` signature per Ed25519 key, so receivers holding only a public key
/// verify the same delivery.
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

/// `hs_` and 16 hex digits, so operators and receivers can tell secrets apart without showing
/// one: an HMAC under the secret of a fixed text, which reveals nothing a signed delivery does
/// not, and holds no `.`, so it is never a delivery's signed content.
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

pub fn sign_one(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<SignedHeaders, SignError> {
    sign(&[secret], msg_id, timestamp, body)
}

/// The receiver's side: headers present, the timestamp within `tolerance` of `now` either
/// way (inclusive, whole seconds), and one `v1` signature matching any of `secrets` in
/// constant time. Other versions (`v1a`) are skipped, as the specification asks.
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

/// [`verify`] for receivers that hold a `whpk_` public key: one `v1a` signature must verify
/// strictly (RFC 8032).
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

/// The header and timestamp checks of [`verify`], shared by both signature versions.
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

/// Entries of other versions are skipped but make the list well formed, so the error says
/// whether nothing matched or nothing could be read.
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

fn decode_tag(value: &str) -> Option<[u8; TAG_LEN]> {
    // Room for one spare byte, so a longer value is detected instead of truncated.
    let mut buf = [0u8; TAG_LEN + 3];
    let len = STANDARD_PAD_INDIFFERENT
        .decode_slice(value, &mut buf)
        .ok()?;
    buf.get(..len)?.try_into().ok()
}

/// `None` only if the HMAC implementation refuses the key.
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
