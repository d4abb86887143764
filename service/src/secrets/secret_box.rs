//! Webhook signing secrets encrypted at rest: `agents.webhook_secret` holds an envelope made by
//! [`KeyRing::seal`], never plaintext.
//!
//! # Envelope format
//!
//! ```text
//! v1.<key id>.<payload>
//! payload = base64url, no padding ( nonce (24 bytes) ‖ ciphertext ‖ tag (16 bytes) )
//! ```
//!
//! * Key ids are 1 to 32 characters of `[A-Za-z0-9_-]`, so a valid envelope has exactly two dots.
//! * XChaCha20-Poly1305: its 24-byte random nonce never collides in practice, however many
//!   secrets are written.
//! * Associated data `v1.<key id>.<context>` (the agent id): authenticated, not stored, so an
//!   envelope copied to another agent's row does not open and the header cannot be edited.
//!
//! # Keys and rotation
//!
//! `WEBHOOK_SECRET_KEYS="k2:<base64 of 32 bytes>,k1:<base64>"`: the first key seals, every key
//! opens. To rotate: prepend a key from [`KeyRing::generate_key_entry`], re-seal every secret
//! that [`KeyRing::needs_rotation`] (`webhook::reseal_secrets`, CLI `sealing-keys rotate`),
//! then remove the old key.
//!
//! # Memory hygiene
//!
//! Key bytes, plaintext buffers and opened secrets are zeroized on drop; `Debug` shows key ids
//! only, and no error carries key material or plaintext.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::secrets::webhook_secret::{RngError, fill_random};

const VERSION: &str = "v1";
/// Separates version, key id and payload; neither key ids nor base64url can contain it.
const SEPARATOR: char = '.';
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
pub const MAX_KEY_ID_LEN: usize = 32;
/// Largest plaintext [`KeyRing::seal`] accepts, in bytes: far above any webhook secret, and
/// it bounds the work [`KeyRing::open`] does on hostile input.
pub const MAX_PLAINTEXT_LEN: usize = 64 * 1024;
const MAX_PAYLOAD_LEN: usize = NONCE_LEN + MAX_PLAINTEXT_LEN + TAG_LEN;
const MAX_ENCODED_PAYLOAD_LEN: usize = MAX_PAYLOAD_LEN.div_ceil(3) * 4;
/// Longest accepted digits after `v` in a version we report as unsupported.
const MAX_VERSION_DIGITS: usize = 8;

// Fails to compile if the `zeroize` feature of `chacha20poly1305` is ever dropped: the cipher
// is where key material lives.
const _: fn() = || {
    fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    zeroized_on_drop::<XChaCha20Poly1305>();
};

#[derive(Clone)]
struct RingKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// One current key that seals, plus older keys that still open, so keys rotate without
/// downtime. Never empty: model "no key configured" as `Option<KeyRing>`, and fail rather than
/// fall back to plaintext.
#[derive(Clone)]
pub struct KeyRing {
    current: RingKey,
    older: Vec<RingKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

/// Names the entry by key id or 1-based position, never by key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyRingError {
    #[error("no keys given; expected `<key id>:<base64 of 32 bytes>`, comma separated")]
    Empty,
    #[error("entry {position} is not of the form `<key id>:<base64 of 32 bytes>`")]
    BadEntry { position: usize },
    /// Not echoed: a mangled entry may put key material where the id belongs.
    #[error("entry {position}: key id must be 1 to 32 characters of A-Z, a-z, 0-9, _ and -")]
    BadKeyId { position: usize },
    #[error("key id `{key_id}` appears more than once")]
    DuplicateKeyId { key_id: String },
    #[error("key `{key_id}` is not valid standard base64")]
    BadBase64 { key_id: String },
    #[error("key `{key_id}` must decode to 32 bytes, got {len}")]
    BadKeyLength { key_id: String, len: usize },
    #[error("a key id must be 1 to 32 characters of A-Z, a-z, 0-9, _ and -")]
    InvalidNewKeyId,
    #[error(transparent)]
    Rng(#[from] RngError),
}

/// Diagnoses corrupt rows without echoing what they hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedReason {
    #[error("not of the form v1.<key id>.<payload>")]
    NotAnEnvelope,
    #[error("the key id is not 1 to 32 characters of A-Z, a-z, 0-9, _ and -")]
    BadKeyId,
    #[error("the payload is not base64url without padding")]
    BadBase64,
    #[error("the payload is truncated")]
    Truncated,
    #[error("the payload is too long")]
    TooLong,
}

/// Never contains key material or plaintext.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretBoxError {
    #[error("malformed envelope: {0}")]
    Malformed(MalformedReason),
    #[error("unsupported envelope version `{version}`")]
    UnsupportedVersion { version: String },
    /// Removed too early, or another deployment's key.
    #[error("envelope sealed with key `{key_id}`, which is not configured")]
    UnknownKey { key_id: String },
    /// Deliberately one variant: it says nothing about which failure it was.
    #[error("envelope failed authentication (tampered, sealed for another agent, or wrong key)")]
    Decrypt,
    #[error("plaintext of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error(transparent)]
    Rng(#[from] RngError),
    /// Authenticated, but not made by [`KeyRing::seal`].
    #[error("opened secret is not UTF-8")]
    NotUtf8,
}

impl KeyRing {
    /// Parses `WEBHOOK_SECRET_KEYS`: `id:base64,…`, standard base64 of 32 bytes, padding
    /// optional, whitespace ignored; the first key is the current one.
    pub fn parse(setting: &str) -> Result<KeyRing, KeyRingError> {
        if setting.trim().is_empty() {
            return Err(KeyRingError::Empty);
        }
        let mut keys: Vec<RingKey> = Vec::new();
        for (index, entry) in setting.split(',').enumerate() {
            let position = index + 1;
            let (id, material) = entry
                .trim()
                .split_once(':')
                .ok_or(KeyRingError::BadEntry { position })?;
            let (id, material) = (id.trim(), material.trim());
            if !valid_key_id(id) {
                return Err(KeyRingError::BadKeyId { position });
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyRingError::DuplicateKeyId {
                    key_id: id.to_owned(),
                });
            }
            let decoded =
                Zeroizing::new(STANDARD_PAD_INDIFFERENT.decode(material).map_err(|_| {
                    KeyRingError::BadBase64 {
                        key_id: id.to_owned(),
                    }
                })?);
            let bad_length = || KeyRingError::BadKeyLength {
                key_id: id.to_owned(),
                len: decoded.len(),
            };
            if decoded.len() != KEY_LEN {
                return Err(bad_length());
            }
            // Borrows the decoded bytes as the key; only the cipher keeps a copy.
            let cipher = XChaCha20Poly1305::new_from_slice(&decoded).map_err(|_| bad_length())?;
            keys.push(RingKey {
                id: id.to_owned(),
                cipher,
            });
        }
        let mut keys = keys.into_iter();
        let current = keys.next().ok_or(KeyRingError::Empty)?;
        Ok(KeyRing {
            current,
            older: keys.collect(),
        })
    }

    /// So a command line can refuse a bad id as a usage error before generating anything.
    pub fn check_new_key_id(key_id: &str) -> Result<(), KeyRingError> {
        if valid_key_id(key_id) {
            Ok(())
        } else {
            Err(KeyRingError::InvalidNewKeyId)
        }
    }

    /// A fresh `"<key_id>:<base64 of 32 random bytes>"` entry for `secrets generate-key`. It is
    /// key material: print it once, never log it.
    pub fn generate_key_entry(key_id: &str) -> Result<String, KeyRingError> {
        Self::check_new_key_id(key_id)?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(key.as_mut_slice())?;
        let mut entry = String::with_capacity(key_id.len() + 1 + KEY_LEN.div_ceil(3) * 4);
        entry.push_str(key_id);
        entry.push(':');
        STANDARD.encode_string(key.as_slice(), &mut entry);
        Ok(entry)
    }

    /// The id of the key that seals.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    /// Current first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys().map(|k| k.id.as_str())
    }

    /// Encrypts under the current key, bound to `context` (the agent id).
    pub fn seal(&self, plaintext: &SecretString, context: &str) -> Result<String, SecretBoxError> {
        self.seal_bytes(plaintext.expose_secret().as_bytes(), context)
    }

    /// Decrypts with whichever ring key the header names, so secrets sealed before a rotation
    /// still open; anything unauthenticated is an error, never garbage plaintext.
    pub fn open(&self, envelope: &str, context: &str) -> Result<SecretString, SecretBoxError> {
        let parsed = Envelope::parse(envelope)?;
        let mut payload = parsed.decode_payload()?;
        let key = self.key(parsed.key_id)?;
        let (nonce, rest) = payload
            .split_first_chunk_mut::<NONCE_LEN>()
            .ok_or(SecretBoxError::Malformed(MalformedReason::Truncated))?;
        let (body, tag) = rest
            .split_last_chunk_mut::<TAG_LEN>()
            .ok_or(SecretBoxError::Malformed(MalformedReason::Truncated))?;
        let nonce: &XNonce = (&*nonce).into();
        let tag = Tag::from(*tag);
        key.cipher
            .decrypt_inout_detached(
                nonce,
                &associated_data(&key.id, context),
                (&mut *body).into(),
                &tag,
            )
            .map_err(|_| SecretBoxError::Decrypt)?;
        // `body` now holds the plaintext, inside `payload`, which is zeroized on drop.
        let text = std::str::from_utf8(body).map_err(|_| SecretBoxError::NotUtf8)?;
        Ok(SecretString::from(Box::<str>::from(text)))
    }

    /// The key id an envelope names (not authenticated), to say which key failed to open it.
    pub fn key_id_of(envelope: &str) -> Result<&str, SecretBoxError> {
        Envelope::parse(envelope).map(|e| e.key_id)
    }

    /// Whether `envelope` was sealed under an older key, so a rotation job skips current ones
    /// without decrypting. Does not authenticate. [`SecretBoxError::UnknownKey`] means it needs
    /// rotating but cannot be: the job should stop and say so.
    pub fn needs_rotation(&self, envelope: &str) -> Result<bool, SecretBoxError> {
        let parsed = Envelope::parse(envelope)?;
        parsed.decode_payload()?;
        let key = self.key(parsed.key_id)?;
        Ok(key.id != self.current.id)
    }

    fn seal_bytes(&self, plaintext: &[u8], context: &str) -> Result<String, SecretBoxError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(SecretBoxError::TooLong {
                len: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        let key = &self.current;
        let mut nonce = XNonce::default();
        fill_random(nonce.as_mut_slice())?;
        // Encrypted in place; zeroized on drop in case encryption fails half way.
        let mut body = Zeroizing::new(plaintext.to_vec());
        let tag = key
            .cipher
            .encrypt_inout_detached(
                &nonce,
                &associated_data(&key.id, context),
                body.as_mut_slice().into(),
            )
            // Only possible for plaintexts of hundreds of GiB, excluded above.
            .map_err(|_| SecretBoxError::TooLong {
                len: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            })?;
        let mut payload = Vec::with_capacity(NONCE_LEN + body.len() + TAG_LEN);
        payload.extend_from_slice(nonce.as_slice());
        payload.extend_from_slice(body.as_slice());
        payload.extend_from_slice(tag.as_slice());
        let mut envelope =
            String::with_capacity(VERSION.len() + key.id.len() + 2 + payload.len().div_ceil(3) * 4);
        envelope.push_str(VERSION);
        envelope.push(SEPARATOR);
        envelope.push_str(&key.id);
        envelope.push(SEPARATOR);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut envelope);
        Ok(envelope)
    }

    fn keys(&self) -> impl Iterator<Item = &RingKey> {
        std::iter::once(&self.current).chain(&self.older)
    }

    fn key(&self, key_id: &str) -> Result<&RingKey, SecretBoxError> {
        self.keys()
            .find(|k| k.id == key_id)
            .ok_or_else(|| SecretBoxError::UnknownKey {
                key_id: key_id.to_owned(),
            })
    }
}

struct Envelope<'a> {
    key_id: &'a str,
    payload: &'a str,
}

impl<'a> Envelope<'a> {
    fn parse(envelope: &'a str) -> Result<Self, SecretBoxError> {
        let not_an_envelope = SecretBoxError::Malformed(MalformedReason::NotAnEnvelope);
        let (version, rest) = envelope
            .split_once(SEPARATOR)
            .ok_or(not_an_envelope.clone())?;
        if version != VERSION {
            return Err(if looks_like_version(version) {
                SecretBoxError::UnsupportedVersion {
                    version: version.to_owned(),
                }
            } else {
                not_an_envelope
            });
        }
        let (key_id, payload) = rest.split_once(SEPARATOR).ok_or(not_an_envelope.clone())?;
        if payload.contains(SEPARATOR) {
            return Err(not_an_envelope);
        }
        if !valid_key_id(key_id) {
            return Err(SecretBoxError::Malformed(MalformedReason::BadKeyId));
        }
        Ok(Envelope { key_id, payload })
    }

    /// Zeroized on drop since it is decrypted in place.
    fn decode_payload(&self) -> Result<Zeroizing<Vec<u8>>, SecretBoxError> {
        if self.payload.len() > MAX_ENCODED_PAYLOAD_LEN {
            return Err(SecretBoxError::Malformed(MalformedReason::TooLong));
        }
        let payload = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(self.payload)
                .map_err(|_| SecretBoxError::Malformed(MalformedReason::BadBase64))?,
        );
        if payload.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretBoxError::Malformed(MalformedReason::Truncated));
        }
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(SecretBoxError::Malformed(MalformedReason::TooLong));
        }
        Ok(payload)
    }
}

/// `v1.<key id>.<context>`: unambiguous, since key ids never contain the separator.
fn associated_data(key_id: &str, context: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(VERSION.len() + key_id.len() + context.len() + 2);
    aad.extend_from_slice(VERSION.as_bytes());
    aad.push(b'.');
    aad.extend_from_slice(key_id.as_bytes());
    aad.push(b'.');
    aad.extend_from_slice(context.as_bytes());
    aad
}

/// 1 to 32 characters of `[A-Za-z0-9_-]`: safe in the envelope, in the setting, and in logs.
fn valid_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `v` followed by a few digits: worth reporting as a version rather than as garbage.
fn looks_like_version(s: &str) -> bool {
    s.strip_prefix('v').is_some_and(|digits| {
        (1..=MAX_VERSION_DIGITS).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    /// Opens and seals again under the current key, as the key-rotation job does.
    fn reseal(keys: &KeyRing, envelope: &str, context: &str) -> Result<String, SecretBoxError> {
        keys.seal(&keys.open(envelope, context)?, context)
    }

    use super::*;
    use proptest::prelude::*;

    fn ring(ids: &[&str]) -> (KeyRing, Vec<String>) {
        let entries: Vec<String> = ids
            .iter()
            .map(|id| KeyRing::generate_key_entry(id).unwrap())
            .collect();
        (KeyRing::parse(&entries.join(",")).unwrap(), entries)
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s)
    }

    fn material(entry: &str) -> &str {
        entry.split_once(':').unwrap().1
    }

    fn malformed(reason: MalformedReason) -> SecretBoxError {
        SecretBoxError::Malformed(reason)
    }

    const PLAIN: &str = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTAxMjM0NTY3";

    #[test]
    fn round_trip() {
        let (keys, _) = ring(&["k1"]);
        let sealed = keys.seal(&secret(PLAIN), "agent-1").unwrap();
        assert!(sealed.starts_with("v1.k1."), "{sealed}");
        assert!(!sealed.contains(PLAIN));
        assert_eq!(sealed.matches('.').count(), 2);
        let payload = URL_SAFE_NO_PAD
            .decode(sealed.rsplit_once('.').unwrap().1)
            .unwrap();
        assert_eq!(payload.len(), NONCE_LEN + PLAIN.len() + TAG_LEN);
        let opened = keys.open(&sealed, "agent-1").unwrap();
        assert_eq!(opened.expose_secret(), PLAIN);
    }

    #[test]
    fn empty_and_unicode_plaintexts_round_trip() {
        let (keys, _) = ring(&["k1"]);
        for plain in ["", "ünïcödé 🔑 secret", "a"] {
            let sealed = keys.seal(&secret(plain), "ägent").unwrap();
            assert_eq!(keys.open(&sealed, "ägent").unwrap().expose_secret(), plain);
        }
    }

    #[test]
    fn two_seals_of_one_plaintext_differ_in_nonce_and_ciphertext() {
        let (keys, _) = ring(&["k1"]);
        let a = keys.seal(&secret(PLAIN), "agent-1").unwrap();
        let b = keys.seal(&secret(PLAIN), "agent-1").unwrap();
        assert_ne!(a, b);
        let decode = |e: &str| {
            URL_SAFE_NO_PAD
                .decode(e.rsplit_once('.').unwrap().1)
                .unwrap()
        };
        let (a, b) = (decode(&a), decode(&b));
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN], "fresh nonce per seal");
        assert_ne!(a[NONCE_LEN..], b[NONCE_LEN..]);
    }

    #[test]
    fn another_context_fails_with_decrypt() {
        let (keys, _) = ring(&["k1"]);
        let sealed = keys.seal(&secret(PLAIN), "agent-1").unwrap();
        for other in ["agent-2", "agent-1 ", "", "AGENT-1", "agent-"] {
            assert_eq!(
                keys.open(&sealed, other).unwrap_err(),
                SecretBoxError::Decrypt,
                "{other:?}"
            );
            assert_eq!(
                reseal(&keys, &sealed, other).unwrap_err(),
                SecretBoxError::Decrypt
            );
        }
    }

    #[test]
    fn every_bit_flip_of_nonce_ciphertext_and_tag_fails_with_decrypt() {
        let (keys, _) = ring(&["k1"]);
        let sealed = keys.seal(&secret(PLAIN), "agent-1").unwrap();
        let (head, payload) = sealed.rsplit_once('.').unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        let mut flips = 0;
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                let envelope = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&flipped));
                assert_eq!(
                    keys.open(&envelope, "agent-1").unwrap_err(),
                    SecretBoxError::Decrypt,
                    "byte {i} bit {bit}"
                );
                flips += 1;
            }
        }
        // Nonce region (first 24 bytes) included.
        assert_eq!(flips, (NONCE_LEN + PLAIN.len() + TAG_LEN) * 8);
    }

    #[test]
    fn every_bit_flip_of_the_envelope_text_fails() {
        let (keys, _) = ring(&["k1"]);
        let sealed = keys.seal(&secret(PLAIN), "agent-1").unwrap();
        let payload_start = sealed.rfind('.').unwrap() + 1;
        let mut tried = 0;
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bytes = sealed.clone().into_bytes();
                bytes[i] ^= 1 << bit;
                // Flipping the high bit makes invalid UTF-8, which cannot be a `&str`.
                let Ok(text) = String::from_utf8(bytes) else {
                    continue;
                };
                let err = keys.open(&text, "agent-1").unwrap_err();
                if i >= payload_start {
                    assert!(
                        matches!(
                            err,
                            SecretBoxError::Decrypt
                                | SecretBoxError::Malformed(
                                    MalformedReason::BadBase64 | MalformedReason::NotAnEnvelope
                                )
                        ),
                        "char {i} bit {bit}: {err:?}"
                    );
                }
                tried += 1;
            }
        }
        assert_eq!(tried, sealed.len() * 7);
    }

    #[test]
    fn every_truncation_fails_without_panic() {
        let (keys, _) = ring(&["k1"]);
        let sealed = keys.seal(&secret(PLAIN), "agent-1").unwrap();
        for len in 0..sealed.len() {
            assert!(
                keys.open(&sealed[..len], "agent-1").is_err(),
                "prefix of {len}"
            );
            assert!(keys.open(&sealed[len + 1..], "agent-1").is_err());
        }
        // Truncated payload bytes, re-encoded so the base64 itself is valid.
        let (head, payload) = sealed.rsplit_once('.').unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        for len in 0..bytes.len() {
            let envelope = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&bytes[..len]));
            let expected = if len < NONCE_LEN + TAG_LEN {
                malformed(MalformedReason::Truncated)
            } else {
                SecretBoxError::Decrypt
            };
            assert_eq!(keys.open(&envelope, "agent-1").unwrap_err(), expected);
        }
    }

    #[test]
    fn non_envelopes_give_typed_errors() {
        let (keys, _) = ring(&["k1"]);
        let good = keys.seal(&secret(PLAIN), "a").unwrap();
        let payload = good.rsplit_once('.').unwrap().1;
        let cases = [
            ("".to_owned(), malformed(MalformedReason::NotAnEnvelope)),
            (PLAIN.to_owned(), malformed(MalformedReason::NotAnEnvelope)),
            ("v1".to_owned(), malformed(MalformedReason::NotAnEnvelope)),
            (
                "v1.k1".to_owned(),
                malformed(MalformedReason::NotAnEnvelope),
            ),
            (
                format!("v1.k1.{payload}.x"),
                malformed(MalformedReason::NotAnEnvelope),
            ),
            (
                format!("secret.k1.{payload}"),
                malformed(MalformedReason::NotAnEnvelope),
            ),
            (
                format!("v2.k1.{payload}"),
                SecretBoxError::UnsupportedVersion {
                    version: "v2".into(),
                },
            ),
            (
                format!("v123456789.k1.{payload}"),
                malformed(MalformedReason::NotAnEnvelope),
            ),
            (
                format!("v1..{payload}"),
                malformed(MalformedReason::BadKeyId),
            ),
            (
                format!("v1.k 1.{payload}"),
                malformed(MalformedReason::BadKeyId),
            ),
            (
                format!("v1.{}.{payload}", "k".repeat(33)),
                malformed(MalformedReason::BadKeyId),
            ),
            ("v1.k1.".to_owned(), malformed(MalformedReason::Truncated)),
            (
                "v1.k1.AAAA".to_owned(),
                malformed(MalformedReason::Truncated),
            ),
            (
                "v1.k1.!!!!".to_owned(),
                malformed(MalformedReason::BadBase64),
            ),
            (
                format!("v1.k1.{payload}="),
                malformed(MalformedReason::BadBase64),
            ),
            (
                format!(
                    "v1.k1.{}",
                    payload.replace('-', "+").replace('_', "/") + "+/"
                ),
                malformed(MalformedReason::BadBase64),
            ),
            (
                format!("v1.k1.{}", "A".repeat(MAX_ENCODED_PAYLOAD_LEN + 4)),
                malformed(MalformedReason::TooLong),
            ),
        ];
        for (envelope, expected) in cases {
            assert_eq!(
                keys.open(&envelope, "a").unwrap_err(),
                expected,
                "{envelope}"
            );
            assert_eq!(keys.needs_rotation(&envelope).unwrap_err(), expected);
            assert_eq!(reseal(&keys, &envelope, "a").unwrap_err(), expected);
        }
    }

    #[test]
    fn unknown_key_id_and_wrong_key_under_known_id() {
        let (k1, _) = ring(&["k1"]);
        let sealed = k1.seal(&secret(PLAIN), "agent-1").unwrap();
        let (k2, _) = ring(&["k2"]);
        let unknown = SecretBoxError::UnknownKey {
            key_id: "k1".into(),
        };
        assert_eq!(k2.open(&sealed, "agent-1").unwrap_err(), unknown);
        assert_eq!(k2.needs_rotation(&sealed).unwrap_err(), unknown);
        assert_eq!(reseal(&k2, &sealed, "agent-1").unwrap_err(), unknown);
        // Another deployment's `k1`: same id, other key.
        let (other_k1, _) = ring(&["k1"]);
        assert_eq!(
            other_k1.open(&sealed, "agent-1").unwrap_err(),
            SecretBoxError::Decrypt
        );
    }

    #[test]
    fn key_id_in_header_is_authenticated() {
        // The same key under two ids: only the associated data tells them apart.
        let entry = KeyRing::generate_key_entry("k1").unwrap();
        let keys = KeyRing::parse(&format!("{entry},k2:{}", material(&entry))).unwrap();
        let sealed = keys.seal(&secret(PLAIN), "a").unwrap();
        let renamed = sealed.replacen("v1.k1.", "v1.k2.", 1);
        assert_ne!(renamed, sealed);
        assert_eq!(
            keys.open(&renamed, "a").unwrap_err(),
            SecretBoxError::Decrypt
        );
    }

    #[test]
    fn non_utf8_plaintext_is_reported_not_returned() {
        let (keys, _) = ring(&["k1"]);
        let sealed = keys.seal_bytes(&[0x66, 0xff, 0xfe], "a").unwrap();
        assert_eq!(
            keys.open(&sealed, "a").unwrap_err(),
            SecretBoxError::NotUtf8
        );
    }

    #[test]
    fn plaintext_size_limit() {
        let (keys, _) = ring(&["k1"]);
        let largest = "x".repeat(MAX_PLAINTEXT_LEN);
        let sealed = keys.seal(&secret(&largest), "a").unwrap();
        assert_eq!(keys.open(&sealed, "a").unwrap().expose_secret(), largest);
        assert_eq!(
            keys.seal(&secret(&format!("{largest}x")), "a").unwrap_err(),
            SecretBoxError::TooLong {
                len: MAX_PLAINTEXT_LEN + 1,
                max: MAX_PLAINTEXT_LEN
            }
        );
        // A payload one byte longer than the largest seal: base64 within bounds, bytes not.
        let (head, payload) = sealed.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        bytes.push(0);
        let too_long = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&bytes));
        assert_eq!(
            keys.open(&too_long, "a").unwrap_err(),
            malformed(MalformedReason::TooLong)
        );
    }

    #[test]
    fn rotation() {
        let (old, old_entries) = ring(&["k1"]);
        let sealed = old.seal(&secret(PLAIN), "agent-1").unwrap();
        assert!(!old.needs_rotation(&sealed).unwrap());

        let k2 = KeyRing::generate_key_entry("k2").unwrap();
        let new = KeyRing::parse(&format!("{k2}, {}", old_entries[0])).unwrap();
        assert_eq!(new.current_key_id(), "k2");
        assert_eq!(new.key_ids().collect::<Vec<_>>(), ["k2", "k1"]);
        assert_eq!(new.open(&sealed, "agent-1").unwrap().expose_secret(), PLAIN);
        assert!(new.needs_rotation(&sealed).unwrap());

        let resealed = reseal(&new, &sealed, "agent-1").unwrap();
        assert!(resealed.starts_with("v1.k2."), "{resealed}");
        assert!(!new.needs_rotation(&resealed).unwrap());
        assert_eq!(
            new.open(&resealed, "agent-1").unwrap().expose_secret(),
            PLAIN
        );
        // Re-sealing something already current still draws a fresh nonce.
        assert_ne!(reseal(&new, &resealed, "agent-1").unwrap(), resealed);

        // Once rotated, the old key can go.
        let only_new = KeyRing::parse(&k2).unwrap();
        assert_eq!(
            only_new.open(&resealed, "agent-1").unwrap().expose_secret(),
            PLAIN
        );
        assert!(matches!(
            only_new.open(&sealed, "agent-1"),
            Err(SecretBoxError::UnknownKey { .. })
        ));
        // The old ring does not know the new key.
        assert!(matches!(
            old.open(&resealed, "agent-1"),
            Err(SecretBoxError::UnknownKey { .. })
        ));
    }

    #[test]
    fn parse_accepts_padding_optional_and_whitespace() {
        let k1 = KeyRing::generate_key_entry("k1").unwrap();
        let k2 = KeyRing::generate_key_entry("key_2-B").unwrap();
        assert!(material(&k1).ends_with('='));
        let unpadded = k1.trim_end_matches('=');
        let ring = KeyRing::parse(&format!("  {k2} ,\t{unpadded}\n")).unwrap();
        assert_eq!(ring.key_ids().collect::<Vec<_>>(), ["key_2-B", "k1"]);
        let (id, key) = k1.split_once(':').unwrap();
        let spaced = KeyRing::parse(&format!("{id} : {key}")).unwrap();
        assert_eq!(spaced.current_key_id(), "k1");
        // Padded, unpadded and spaced spellings give the same key.
        let as_k1 = KeyRing::parse(&k1).unwrap();
        let from_k1 = as_k1.seal(&secret(PLAIN), "a").unwrap();
        assert_eq!(ring.open(&from_k1, "a").unwrap().expose_secret(), PLAIN);
        assert_eq!(spaced.open(&from_k1, "a").unwrap().expose_secret(), PLAIN);
    }

    #[test]
    fn parse_errors_name_the_entry_but_never_the_key() {
        let good = KeyRing::generate_key_entry("k1").unwrap();
        let key = material(&good).to_owned();
        let unpadded = key.trim_end_matches('=').to_owned();
        let short = STANDARD.encode([7u8; 16]);
        let long = STANDARD.encode([9u8; 33]);
        let cases = [
            (String::new(), KeyRingError::Empty),
            (" \t\n".to_owned(), KeyRingError::Empty),
            ("k1".to_owned(), KeyRingError::BadEntry { position: 1 }),
            (key.clone(), KeyRingError::BadEntry { position: 1 }),
            (format!("{good},"), KeyRingError::BadEntry { position: 2 }),
            (
                format!("{good}, ,k3:{key}"),
                KeyRingError::BadEntry { position: 2 },
            ),
            (format!(":{key}"), KeyRingError::BadKeyId { position: 1 }),
            (
                format!("bad id:{key}"),
                KeyRingError::BadKeyId { position: 1 },
            ),
            (
                format!("{good},k.2:{key}"),
                KeyRingError::BadKeyId { position: 2 },
            ),
            (
                format!("{}:{key}", "k".repeat(33)),
                KeyRingError::BadKeyId { position: 1 },
            ),
            // Key and id swapped: the key lands in the id slot and must not be echoed.
            (format!("{key}:k1"), KeyRingError::BadKeyId { position: 1 }),
            (
                format!("{unpadded}:k1"),
                KeyRingError::BadKeyId { position: 1 },
            ),
            (
                format!("{good},k1:{key}"),
                KeyRingError::DuplicateKeyId {
                    key_id: "k1".into(),
                },
            ),
            (
                "k1:not base64!".to_owned(),
                KeyRingError::BadBase64 {
                    key_id: "k1".into(),
                },
            ),
            (
                // A URL-safe character in a standard base64 key.
                format!("k1:-{}", &key[1..]),
                KeyRingError::BadBase64 {
                    key_id: "k1".into(),
                },
            ),
            (
                format!("k1:{key}:{key}"),
                KeyRingError::BadBase64 {
                    key_id: "k1".into(),
                },
            ),
            (
                "k1:".to_owned(),
                KeyRingError::BadKeyLength {
                    key_id: "k1".into(),
                    len: 0,
                },
            ),
            (
                format!("k1:{short}"),
                KeyRingError::BadKeyLength {
                    key_id: "k1".into(),
                    len: 16,
                },
            ),
            (
                format!("{good},k2:{long}"),
                KeyRingError::BadKeyLength {
                    key_id: "k2".into(),
                    len: 33,
                },
            ),
        ];
        for (setting, expected) in cases {
            let err = KeyRing::parse(&setting).unwrap_err();
            assert_eq!(err, expected, "{setting:?}");
            let shown = format!("{err} {err:?}");
            for material in [&key, &unpadded, &short, &long] {
                assert!(!shown.contains(material.as_str()), "{shown}");
            }
        }
    }

    #[test]
    fn generated_entries_parse_and_are_random() {
        let a = KeyRing::generate_key_entry("k1").unwrap();
        let b = KeyRing::generate_key_entry("k1").unwrap();
        assert_ne!(a, b);
        let (id, key) = a.split_once(':').unwrap();
        assert_eq!(id, "k1");
        assert_eq!(STANDARD.decode(key).unwrap().len(), KEY_LEN);
        let max_id = "Z".repeat(MAX_KEY_ID_LEN);
        let entry = KeyRing::generate_key_entry(&max_id).unwrap();
        assert_eq!(KeyRing::parse(&entry).unwrap().current_key_id(), max_id);
        for bad in [
            "",
            "k.1",
            "k:1",
            "k 1",
            "k,1",
            "ключ",
            "k".repeat(MAX_KEY_ID_LEN + 1).as_str(),
        ] {
            assert_eq!(
                KeyRing::generate_key_entry(bad).unwrap_err(),
                KeyRingError::InvalidNewKeyId,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let k2 = KeyRing::generate_key_entry("k2").unwrap();
        let k1 = KeyRing::generate_key_entry("k1").unwrap();
        let keys = KeyRing::parse(&format!("{k2},{k1}")).unwrap();
        let debug = format!("{keys:?} {keys:#?} {:?}", keys.clone());
        assert!(
            debug.starts_with(r#"KeyRing { key_ids: ["k2", "k1"] }"#),
            "{debug}"
        );
        for entry in [&k2, &k1] {
            let key = material(entry);
            let bytes = STANDARD.decode(key).unwrap();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert!(!debug.contains(key));
            assert!(!debug.contains(key.trim_end_matches('=')));
            assert!(!debug.contains(&format!("{bytes:?}")));
            assert!(!debug.contains(&hex));
        }
    }

    #[test]
    fn opened_secret_and_errors_do_not_show_plaintext() {
        let (keys, _) = ring(&["k1"]);
        let sealed = keys.seal(&secret(PLAIN), "agent-1").unwrap();
        let opened = keys.open(&sealed, "agent-1").unwrap();
        assert_eq!(opened.expose_secret(), PLAIN);
        let debug = format!("{opened:?}");
        assert!(
            !debug.contains(PLAIN) && !debug.contains("whsec"),
            "{debug}"
        );
        // A plaintext secret stored by mistake is not echoed by the error.
        let err = keys.open(PLAIN, "agent-1").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("whsec"));
    }

    proptest! {
        #[test]
        fn open_never_panics_on_arbitrary_strings(
            input in "\\PC*",
            context in "\\PC{0,40}",
        ) {
            let (keys, _) = ring(&["k1"]);
            for envelope in [input.clone(), format!("v1.k1.{input}"), format!("v1.{input}")] {
                prop_assert!(keys.open(&envelope, &context).is_err());
                let _ = keys.needs_rotation(&envelope);
                prop_assert!(reseal(&keys, &envelope, &context).is_err());
            }
        }

        #[test]
        fn open_rejects_arbitrary_payload_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let (keys, _) = ring(&["k1"]);
            let envelope = format!("v1.k1.{}", URL_SAFE_NO_PAD.encode(&bytes));
            let err = keys.open(&envelope, "agent-1").unwrap_err();
            let expected = if bytes.len() < NONCE_LEN + TAG_LEN {
                malformed(MalformedReason::Truncated)
            } else {
                SecretBoxError::Decrypt
            };
            prop_assert_eq!(err, expected);
        }

        #[test]
        fn seal_open_round_trips(
            plain in "[ -~]{0,300}",
            context in "\\PC{0,64}",
            other in "\\PC{0,64}",
        ) {
            let (keys, _) = ring(&["k1"]);
            let sealed = keys.seal(&secret(&plain), &context).unwrap();
            let opened = keys.open(&sealed, &context).unwrap();
            prop_assert_eq!(opened.expose_secret(), plain.as_str());
            if other != context {
                prop_assert_eq!(keys.open(&sealed, &other).unwrap_err(), SecretBoxError::Decrypt);
            }
        }
    }
}
