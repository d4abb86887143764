//! Webhook secrets encrypted at rest, behind one type: [`KeyRing`].
//!
//! Envelope format (text, stored in `agents.webhook_secret`):
//!
//! ```text
//! v1.<key id>.<base64url, no padding, of nonce (24 bytes) ‖ ciphertext ‖ tag (16 bytes)>
//! ```
//!
//! * Algorithm: XChaCha20-Poly1305. Its 24-byte nonce is drawn fresh from the OS RNG for every
//!   write; random nonces that long never collide in practice, whatever the number of writes.
//! * Associated data: `v1.<key id>.` followed by a context the caller passes (the agent id).
//!   The context is authenticated but not stored, so an envelope copied to another agent's row
//!   does not open, and the version and key id cannot be swapped either.
//! * Key ids are 1 to 32 characters of `[A-Za-z0-9_-]`, so they never contain the `.`
//!   separator.
//!
//! Keys come from `WEBHOOK_SECRET_KEYS="k2:<base64 of 32 bytes>,k1:<base64>"`: the first key
//! seals, all keys open. To rotate, prepend a new key, run `agent-webhooks secrets rotate`
//! (which [re-seals](KeyRing::reseal) every secret under the new key), then drop the old key.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};
use zeroize::{Zeroize, Zeroizing};

const VERSION: &str = "v1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const MAX_KEY_ID_LEN: usize = 32;

/// One named 32-byte key, zeroized on drop.
struct NamedKey {
    id: String,
    key: Zeroizing<[u8; KEY_LEN]>,
}

/// An ordered set of named keys: the first seals, all open.
///
/// `Debug` shows key ids only.
pub struct KeyRing {
    keys: Vec<NamedKey>,
}

impl Clone for KeyRing {
    fn clone(&self) -> Self {
        KeyRing {
            keys: self
                .keys
                .iter()
                .map(|k| NamedKey {
                    id: k.id.clone(),
                    key: Zeroizing::new(*k.key),
                })
                .collect(),
        }
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field(
                "key_ids",
                &self.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A key setting that cannot be used; never contains key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyRingError {
    /// No key at all.
    #[error("no keys given")]
    Empty,
    /// An entry is not `id:base64`.
    #[error("entry {position} is not of the form `<key id>:<base64 key>`")]
    BadEntry {
        /// 1-based position in the list.
        position: usize,
    },
    /// A key id with other characters than `[A-Za-z0-9_-]`, or too long.
    #[error("entry {position}: key id must be 1 to 32 characters of A-Z, a-z, 0-9, _ and -")]
    BadKeyId {
        /// 1-based position in the list.
        position: usize,
    },
    /// Two keys with one id.
    #[error("key id `{key_id}` appears twice")]
    DuplicateKeyId {
        /// The id.
        key_id: String,
    },
    /// The key is not base64.
    #[error("key `{key_id}` is not valid base64")]
    BadBase64 {
        /// The id.
        key_id: String,
    },
    /// The key does not decode to 32 bytes.
    #[error("key `{key_id}` must decode to 32 bytes, got {len}")]
    BadLength {
        /// The id.
        key_id: String,
        /// Decoded length.
        len: usize,
    },
    /// The OS random number generator failed.
    #[error("the operating system's random number generator failed")]
    Rng,
}

/// Why an envelope cannot be made or opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretBoxError {
    /// Not an envelope: wrong shape, bad base64, or too short.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// An envelope version this code does not know.
    #[error("unsupported envelope version `{version}`")]
    UnsupportedVersion {
        /// The version found.
        version: String,
    },
    /// Sealed under a key that is not in the ring.
    #[error("envelope sealed with unknown key `{key_id}`")]
    UnknownKey {
        /// The key id found.
        key_id: String,
    },
    /// Authentication failed: tampered, truncated, foreign (another agent), or a wrong key
    /// under a known id. Deliberately one error: it says nothing about which.
    #[error("envelope failed authentication (tampered, or sealed for another agent)")]
    Decrypt,
    /// The OS random number generator failed.
    #[error("the operating system's random number generator failed")]
    Rng,
    /// The opened plaintext is not UTF-8.
    #[error("opened secret is not UTF-8")]
    NotUtf8,
}

impl KeyRing {
    /// Parses `id:base64,id:base64,…` (standard base64, padding optional, whitespace around
    /// entries ignored). The first key is the current one.
    pub fn parse(setting: &str) -> Result<KeyRing, KeyRingError> {
        let mut keys: Vec<NamedKey> = Vec::new();
        for (index, entry) in setting.split(',').map(str::trim).enumerate() {
            let position = index + 1;
            if entry.is_empty() && setting.trim().is_empty() {
                return Err(KeyRingError::Empty);
            }
            let (id, material) = entry
                .split_once(':')
                .ok_or(KeyRingError::BadEntry { position })?;
            let id = id.trim();
            if !valid_key_id(id) {
                return Err(KeyRingError::BadKeyId { position });
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyRingError::DuplicateKeyId {
                    key_id: id.to_owned(),
                });
            }
            let material = material.trim();
            let mut decoded = Zeroizing::new(
                STANDARD
                    .decode(material)
                    .or_else(|_| STANDARD_NO_PAD.decode(material))
                    .map_err(|_| KeyRingError::BadBase64 {
                        key_id: id.to_owned(),
                    })?,
            );
            let key: [u8; KEY_LEN] =
                decoded
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyRingError::BadLength {
                        key_id: id.to_owned(),
                        len: decoded.len(),
                    })?;
            decoded.zeroize();
            keys.push(NamedKey {
                id: id.to_owned(),
                key: Zeroizing::new(key),
            });
        }
        if keys.is_empty() {
            return Err(KeyRingError::Empty);
        }
        Ok(KeyRing { keys })
    }

    /// A fresh `id:<base64>` entry from the OS RNG, to prepend to `WEBHOOK_SECRET_KEYS`.
    pub fn generate_key_entry(key_id: &str) -> Result<String, KeyRingError> {
        if !valid_key_id(key_id) {
            return Err(KeyRingError::BadKeyId { position: 1 });
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(key.as_mut()).map_err(|_| KeyRingError::Rng)?;
        Ok(format!("{key_id}:{}", STANDARD.encode(key.as_ref())))
    }

    /// The id of the key that seals.
    pub fn current_key_id(&self) -> &str {
        self.current().id.as_str()
    }

    /// Seals `plaintext` under the current key, bound to `context` (the agent id).
    pub fn seal(&self, plaintext: &SecretString, context: &str) -> Result<String, SecretBoxError> {
        let key = self.current();
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SecretBoxError::Rng)?;
        let cipher =
            XChaCha20Poly1305::new_from_slice(key.key.as_ref()).map_err(|_| SecretBoxError::Rng)?;
        let aad = associated_data(&key.id, context);
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext.expose_secret().as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SecretBoxError::Decrypt)?;
        let mut payload = Vec::with_capacity(NONCE_LEN + sealed.len());
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(&sealed);
        Ok(format!(
            "{VERSION}.{}.{}",
            key.id,
            URL_SAFE_NO_PAD.encode(payload)
        ))
    }

    /// Opens an envelope made by [`KeyRing::seal`] with the same `context`.
    pub fn open(&self, envelope: &str, context: &str) -> Result<SecretString, SecretBoxError> {
        let (key_id, payload) = split(envelope)?;
        let key = self.keys.iter().find(|k| k.id == key_id).ok_or_else(|| {
            SecretBoxError::UnknownKey {
                key_id: key_id.to_owned(),
            }
        })?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| SecretBoxError::Malformed("payload is not base64url"))?;
        if payload.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretBoxError::Malformed("payload is too short"));
        }
        let (nonce, sealed) = payload.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| SecretBoxError::Malformed("payload is too short"))?;
        let cipher = XChaCha20Poly1305::new_from_slice(key.key.as_ref())
            .map_err(|_| SecretBoxError::Decrypt)?;
        let aad = associated_data(&key.id, context);
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: sealed,
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| SecretBoxError::Decrypt)?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| SecretBoxError::NotUtf8)?;
        Ok(SecretString::from(text.to_owned()))
    }

    /// Whether `envelope` is sealed under a key other than the current one.
    pub fn needs_rotation(&self, envelope: &str) -> Result<bool, SecretBoxError> {
        let (key_id, _) = split(envelope)?;
        Ok(key_id != self.current_key_id())
    }

    /// Opens `envelope` and seals it again under the current key (for key rotation).
    pub fn reseal(&self, envelope: &str, context: &str) -> Result<String, SecretBoxError> {
        self.seal(&self.open(envelope, context)?, context)
    }

    fn current(&self) -> &NamedKey {
        // `parse` guarantees at least one key; `keys` is never changed afterwards.
        &self.keys[0]
    }
}

/// Splits `v1.<key id>.<payload>`, checking version and key id shape.
fn split(envelope: &str) -> Result<(&str, &str), SecretBoxError> {
    let mut parts = envelope.splitn(3, '.');
    let (Some(version), Some(key_id), Some(payload)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SecretBoxError::Malformed("expected v1.<key id>.<payload>"));
    };
    if version != VERSION {
        return Err(SecretBoxError::UnsupportedVersion {
            version: version.chars().take(16).collect(),
        });
    }
    if !valid_key_id(key_id) {
        return Err(SecretBoxError::Malformed("bad key id"));
    }
    Ok((key_id, payload))
}

fn associated_data(key_id: &str, context: &str) -> String {
    format!("{VERSION}.{key_id}.{context}")
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
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
        SecretString::from(s.to_owned())
    }

    #[test]
    fn round_trip_with_fresh_nonces() {
        let (keys, _) = ring(&["k1"]);
        let a = keys.seal(&secret("whsec_abc"), "agent-1").unwrap();
        let b = keys.seal(&secret("whsec_abc"), "agent-1").unwrap();
        assert_ne!(a, b, "a fresh nonce per write");
        assert!(a.starts_with("v1.k1."));
        assert!(!a.contains("whsec_abc"));
        assert_eq!(
            keys.open(&a, "agent-1").unwrap().expose_secret(),
            "whsec_abc"
        );
    }

    #[test]
    fn another_context_does_not_open() {
        let (keys, _) = ring(&["k1"]);
        let sealed = keys.seal(&secret("s3cret-value-1234"), "agent-1").unwrap();
        assert_eq!(
            keys.open(&sealed, "agent-2").unwrap_err(),
            SecretBoxError::Decrypt
        );
    }

    #[test]
    fn every_bit_flip_and_truncation_fails_cleanly() {
        let (keys, _) = ring(&["k1"]);
        let sealed = keys.seal(&secret("s3cret-value-1234"), "agent-1").unwrap();
        let (head, payload) = sealed.rsplit_once('.').unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                let envelope = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&flipped));
                assert_eq!(
                    keys.open(&envelope, "agent-1").unwrap_err(),
                    SecretBoxError::Decrypt
                );
            }
        }
        for len in 0..sealed.len() {
            assert!(
                keys.open(&sealed[..len], "agent-1").is_err(),
                "prefix of {len}"
            );
        }
        // Swapping the key id in the header is detected too.
        let (both, _) = ring(&["k1", "k2"]);
        let sealed = both.seal(&secret("s3cret-value-1234"), "a").unwrap();
        let renamed = sealed.replacen("v1.k1.", "v1.k2.", 1);
        assert_eq!(
            both.open(&renamed, "a").unwrap_err(),
            SecretBoxError::Decrypt
        );
    }

    #[test]
    fn typed_errors_for_foreign_envelopes() {
        let (keys, _) = ring(&["k1"]);
        assert!(matches!(
            keys.open("plaintext", "a"),
            Err(SecretBoxError::Malformed(_))
        ));
        assert!(matches!(
            keys.open("v2.k1.AAAA", "a"),
            Err(SecretBoxError::UnsupportedVersion { .. })
        ));
        assert!(matches!(
            keys.open("v1.k9.AAAA", "a"),
            Err(SecretBoxError::UnknownKey { .. })
        ));
        assert!(matches!(
            keys.open("v1.k1.!!!", "a"),
            Err(SecretBoxError::Malformed(_))
        ));
        assert!(matches!(
            keys.open("v1.k1.AAAA", "a"),
            Err(SecretBoxError::Malformed(_))
        ));
    }

    #[test]
    fn rotation() {
        let (old, entries) = ring(&["k1"]);
        let sealed = old.seal(&secret("rotate-me-please-1"), "agent-1").unwrap();
        let k2 = KeyRing::generate_key_entry("k2").unwrap();
        let new = KeyRing::parse(&format!("{k2}, {}", entries[0])).unwrap();
        assert_eq!(new.current_key_id(), "k2");
        assert!(new.needs_rotation(&sealed).unwrap());
        let resealed = new.reseal(&sealed, "agent-1").unwrap();
        assert!(resealed.starts_with("v1.k2.") && !new.needs_rotation(&resealed).unwrap());
        let only_k2 = KeyRing::parse(&k2).unwrap();
        assert_eq!(
            only_k2.open(&resealed, "agent-1").unwrap().expose_secret(),
            "rotate-me-please-1"
        );
        assert!(matches!(
            only_k2.open(&sealed, "agent-1"),
            Err(SecretBoxError::UnknownKey { .. })
        ));
    }

    #[test]
    fn parse_errors_name_the_entry_but_never_the_key() {
        let good = KeyRing::generate_key_entry("k1").unwrap();
        let material = good.split_once(':').unwrap().1.to_owned();
        let short = STANDARD.encode([7u8; 16]);
        let cases = [
            ("".to_owned(), KeyRingError::Empty),
            ("  ".to_owned(), KeyRingError::Empty),
            ("k1".to_owned(), KeyRingError::BadEntry { position: 1 }),
            (format!("{good},"), KeyRingError::BadEntry { position: 2 }),
            (
                format!("bad id:{material}"),
                KeyRingError::BadKeyId { position: 1 },
            ),
            (
                format!("k.1:{material}"),
                KeyRingError::BadKeyId { position: 1 },
            ),
            (
                format!("{good},k1:{material}"),
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
                format!("k1:{short}"),
                KeyRingError::BadLength {
                    key_id: "k1".into(),
                    len: 16,
                },
            ),
        ];
        for (setting, expected) in cases {
            let err = KeyRing::parse(&setting).unwrap_err();
            assert_eq!(err, expected, "{setting}");
            assert!(!err.to_string().contains(&material) && !err.to_string().contains(&short));
        }
        // Unpadded base64 is accepted.
        assert!(KeyRing::parse(&format!("k1:{}", material.trim_end_matches('='))).is_ok());
    }

    #[test]
    fn debug_shows_ids_only() {
        let (keys, entries) = ring(&["k2", "k1"]);
        let debug = format!("{keys:?}");
        assert_eq!(debug, r#"KeyRing { key_ids: ["k2", "k1"] }"#);
        for entry in entries {
            assert!(!debug.contains(entry.split_once(':').unwrap().1));
        }
    }

    proptest! {
        #[test]
        fn open_never_panics(input in "\\PC*", context in "\\PC{0,40}") {
            let (keys, _) = ring(&["k1"]);
            let _ = keys.open(&input, &context);
            let _ = keys.open(&format!("v1.k1.{input}"), &context);
            let _ = keys.needs_rotation(&input);
        }

        #[test]
        fn seal_open_round_trips(plain in "[ -~]{1,256}", context in "\\PC{0,64}") {
            let (keys, _) = ring(&["k1"]);
            let sealed = keys.seal(&secret(&plain), &context).unwrap();
            let opened = keys.open(&sealed, &context).unwrap();
            prop_assert_eq!(opened.expose_secret(), plain.as_str());
        }
    }
}
