//! Ed25519 key pairs in the Standard Webhooks forms, so that a receiver can verify deliveries
//! (`v1a` signatures, see [`crate::secrets::signing`]) with a public key that cannot forge them.
//!
//! What `whsk_` and `whpk_` encode follows the reference implementation
//! (`standard-webhooks/libraries/go`, `webhook_asymmetric.go`): the 32-byte seed and the 32-byte
//! compressed point. [`SecretKey`] is redacted, not serializable and zeroized on drop, like
//! [`WebhookSecret`](crate::secrets::webhook_secret::WebhookSecret).
//!
//! ```
//! use agent_webhooks::secrets::ed25519::{PublicKey, SecretKey};
//!
//! let secret = SecretKey::generate()?;
//! let public = secret.public_key();
//! assert!(public.to_string().starts_with("whpk_"));
//! assert_eq!(PublicKey::parse(&public.to_string())?, public);
//! assert_eq!(format!("{secret:?}"), "ed25519::SecretKey([REDACTED])");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::secrets::webhook_secret::{RngError, fill_random};

pub const WHSK_PREFIX: &str = "whsk_";
pub const WHPK_PREFIX: &str = "whpk_";
/// The `webhook-signature` version of Ed25519 signatures.
pub const SIGNATURE_VERSION: &str = "v1a";

/// Never holds key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("expected a key starting with {expected}")]
    MissingPrefix { expected: &'static str },
    #[error("the key is not valid base64")]
    BadBase64,
    #[error("a {prefix} key decodes to {expected} bytes, got {len}")]
    BadLength {
        prefix: &'static str,
        expected: &'static str,
        len: usize,
    },
    /// A 64-byte secret key whose halves do not belong together, or a point off the curve.
    #[error("the key is not a valid Ed25519 key")]
    Invalid,
}

/// What the sender signs `v1a` signatures with.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ed25519::SecretKey([REDACTED])")
    }
}

impl SecretKey {
    pub fn generate() -> Result<Self, RngError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        fill_random(seed.as_mut())?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Also accepts the 64-byte `seed || public` form some libraries write (Go, libsodium).
    pub fn parse(text: &str) -> Result<Self, KeyFormatError> {
        let bytes = decode(text, WHSK_PREFIX)?;
        match bytes.len() {
            32 => {
                let mut seed = Zeroizing::new([0u8; 32]);
                seed.copy_from_slice(&bytes);
                Ok(SecretKey(SigningKey::from_bytes(&seed)))
            }
            64 => {
                let mut pair = Zeroizing::new([0u8; 64]);
                pair.copy_from_slice(&bytes);
                SigningKey::from_keypair_bytes(&pair)
                    .map(SecretKey)
                    .map_err(|_| KeyFormatError::Invalid)
            }
            len => Err(KeyFormatError::BadLength {
                prefix: WHSK_PREFIX,
                expected: "32 (seed) or 64 (seed and public key)",
                len,
            }),
        }
    }

    /// The `whsk_` form, to seal at rest or hand to a signer. Never log it.
    pub fn expose(&self) -> SecretString {
        let seed = Zeroizing::new(self.0.to_bytes());
        let mut text = Zeroizing::new(String::from(WHSK_PREFIX));
        STANDARD.encode_string(seed.as_ref(), &mut text);
        SecretString::from(text.as_str())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// What a receiver verifies `v1a` signatures with. Not secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519::PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{WHPK_PREFIX}{}", STANDARD.encode(self.0.as_bytes()))
    }
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<Self, KeyFormatError> {
        let bytes = decode(text, WHPK_PREFIX)?;
        let bytes: [u8; 32] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyFormatError::BadLength {
                    prefix: WHPK_PREFIX,
                    expected: "32",
                    len: bytes.len(),
                })?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| KeyFormatError::Invalid)
    }

    /// `ed_` and 16 hex digits of its SHA-256, so operator and receiver can tell keys apart.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        format!("ed_{}", hex(&digest[..8]))
    }

    /// RFC 8032 strict: no malleable signatures, no small-order keys.
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode(text: &str, prefix: &'static str) -> Result<Zeroizing<Vec<u8>>, KeyFormatError> {
    let encoded = text
        .trim()
        .strip_prefix(prefix)
        .ok_or(KeyFormatError::MissingPrefix { expected: prefix })?;
    STANDARD_PAD_INDIFFERENT
        .decode(encoded)
        .map(Zeroizing::new)
        .map_err(|_| KeyFormatError::BadBase64)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    /// RFC 8032, section 7.1, test 1: the seed, its public key and the signature of the empty
    /// message.
    const RFC_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const RFC_SIGNATURE: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
                                 5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn whsk(bytes: &[u8]) -> String {
        format!("{WHSK_PREFIX}{}", STANDARD.encode(bytes))
    }

    #[test]
    fn the_rfc_8032_vector_signs_and_verifies() {
        let secret = SecretKey::parse(&whsk(&unhex(RFC_SEED))).unwrap();
        let public = secret.public_key();
        assert_eq!(
            public.to_string(),
            format!("{WHPK_PREFIX}{}", STANDARD.encode(unhex(RFC_PUBLIC)))
        );
        let signature = secret.sign(b"");
        assert_eq!(signature.to_vec(), unhex(RFC_SIGNATURE));
        assert!(public.verifies(b"", &signature));
        assert!(!public.verifies(b"x", &signature));
    }

    #[test]
    fn the_secret_key_round_trips_through_whsk_and_the_64_byte_form() {
        let secret = SecretKey::generate().unwrap();
        let text = secret.expose();
        assert!(text.expose_secret().starts_with(WHSK_PREFIX));
        let again = SecretKey::parse(text.expose_secret()).unwrap();
        assert_eq!(again.public_key(), secret.public_key());

        let mut pair = unhex(RFC_SEED);
        pair.extend(unhex(RFC_PUBLIC));
        let long = SecretKey::parse(&whsk(&pair)).unwrap();
        assert_eq!(
            long.sign(b""),
            SecretKey::parse(&whsk(&unhex(RFC_SEED))).unwrap().sign(b"")
        );
        // A public half that does not belong to the seed.
        pair[40] ^= 1;
        assert_eq!(
            SecretKey::parse(&whsk(&pair)).unwrap_err(),
            KeyFormatError::Invalid
        );
    }

    #[test]
    fn malformed_keys_are_typed_errors() {
        assert!(matches!(
            SecretKey::parse("whpk_AAAA").unwrap_err(),
            KeyFormatError::MissingPrefix { .. }
        ));
        assert_eq!(
            SecretKey::parse("whsk_!!").unwrap_err(),
            KeyFormatError::BadBase64
        );
        assert!(matches!(
            SecretKey::parse(&whsk(&[1; 31])).unwrap_err(),
            KeyFormatError::BadLength { len: 31, .. }
        ));
        assert!(matches!(
            PublicKey::parse(&whsk(&[1; 32])).unwrap_err(),
            KeyFormatError::MissingPrefix { .. }
        ));
        assert!(matches!(
            PublicKey::parse(&format!("{WHPK_PREFIX}{}", STANDARD.encode([1; 33]))).unwrap_err(),
            KeyFormatError::BadLength { len: 33, .. }
        ));
    }

    #[test]
    fn key_ids_are_stable_and_distinct() {
        let a = SecretKey::generate().unwrap().public_key();
        let b = SecretKey::generate().unwrap().public_key();
        assert_eq!(
            a.key_id(),
            PublicKey::parse(&a.to_string()).unwrap().key_id()
        );
        assert_ne!(a.key_id(), b.key_id());
        assert_eq!(a.key_id().len(), 19);
    }
}
