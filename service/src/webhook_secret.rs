//! What a webhook signing secret is.
//!
//! Two forms are accepted:
//! * Standard Webhooks style `whsec_<base64 of 24 to 64 bytes>` (standard alphabet, padding
//!   optional). The signing key is the decoded bytes, as every Standard Webhooks and Svix
//!   library expects. [`WebhookSecret::generate`] makes these, with 32 random bytes.
//! * Any other string of 16 to 256 characters without control characters and without
//!   leading or trailing white space (so copy-paste accidents are caught). The signing key is
//!   its UTF-8 bytes. Receivers using a Standard Webhooks library must then pass it in a form
//!   their library accepts; prefer `whsec_` secrets.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// The prefix of Standard Webhooks secrets.
pub const WHSEC_PREFIX: &str = "whsec_";
/// Decoded length bounds of a `whsec_` secret, in bytes.
pub const WHSEC_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
/// Length bounds of a user secret, in characters.
pub const USER_SECRET_CHARS: std::ops::RangeInclusive<usize> = 16..=256;

/// A validated webhook signing secret. Not serializable; `Debug` is redacted; the memory is
/// zeroized on drop.
#[derive(Clone)]
pub struct WebhookSecret(SecretString);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

/// Why a string is not an accepted secret; never contains the secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretFormatError {
    /// `whsec_` followed by something that is not base64.
    #[error("a whsec_ secret must be followed by base64")]
    BadBase64,
    /// `whsec_` with a key of the wrong size.
    #[error("a whsec_ secret must encode 24 to 64 bytes, this one encodes {0}")]
    BadKeyLength(usize),
    /// A user secret that is too short.
    #[error("a secret must be at least 16 characters, this one has {0}")]
    TooShort(usize),
    /// A user secret that is too long.
    #[error("a secret must be at most 256 characters, this one has {0}")]
    TooLong(usize),
    /// Control characters, or white space at either end.
    #[error("a secret must not contain control characters or start or end with white space")]
    NotPrintable,
    /// The OS random number generator failed.
    #[error("the operating system's random number generator failed")]
    Rng,
}

impl WebhookSecret {
    /// Validates `secret` (see the module documentation for the accepted forms).
    pub fn parse(secret: SecretString) -> Result<Self, SecretFormatError> {
        let text = secret.expose_secret();
        if let Some(encoded) = text.strip_prefix(WHSEC_PREFIX) {
            let len = decode(encoded).ok_or(SecretFormatError::BadBase64)?.len();
            if !WHSEC_BYTES.contains(&len) {
                return Err(SecretFormatError::BadKeyLength(len));
            }
        } else {
            let chars = text.chars().count();
            if chars < *USER_SECRET_CHARS.start() {
                return Err(SecretFormatError::TooShort(chars));
            }
            if chars > *USER_SECRET_CHARS.end() {
                return Err(SecretFormatError::TooLong(chars));
            }
            if text.chars().any(char::is_control) || text.trim() != text {
                return Err(SecretFormatError::NotPrintable);
            }
        }
        Ok(WebhookSecret(secret))
    }

    /// A new `whsec_` secret of 32 bytes from the OS RNG.
    pub fn generate() -> Result<Self, SecretFormatError> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut()).map_err(|_| SecretFormatError::Rng)?;
        let text = format!("{WHSEC_PREFIX}{}", STANDARD.encode(key.as_ref()));
        Ok(WebhookSecret(SecretString::from(text)))
    }

    /// The secret's text, to seal it at rest or hand it to a receiver. Never log it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The HMAC key: the decoded bytes of a `whsec_` secret, the UTF-8 bytes otherwise.
    pub fn signing_key(&self) -> Zeroizing<Vec<u8>> {
        let text = self.0.expose_secret();
        match text.strip_prefix(WHSEC_PREFIX).and_then(decode) {
            Some(bytes) => bytes,
            None => Zeroizing::new(text.as_bytes().to_vec()),
        }
    }
}

fn decode(encoded: &str) -> Option<Zeroizing<Vec<u8>>> {
    STANDARD
        .decode(encoded)
        .or_else(|_| STANDARD_NO_PAD.decode(encoded))
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<WebhookSecret, SecretFormatError> {
        WebhookSecret::parse(SecretString::from(s.to_owned()))
    }

    #[test]
    fn accepted_and_rejected_forms() {
        assert!(parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(parse(&format!("whsec_{}", STANDARD_NO_PAD.encode([1u8; 64]))).is_ok());
        assert!(parse("a perfectly fine user secret").is_ok());
        assert!(parse(&"é".repeat(256)).is_ok());
        assert_eq!(
            parse("whsec_!!!").unwrap_err(),
            SecretFormatError::BadBase64
        );
        assert_eq!(
            parse(&format!("whsec_{}", STANDARD.encode([1u8; 23]))).unwrap_err(),
            SecretFormatError::BadKeyLength(23)
        );
        assert_eq!(
            parse(&format!("whsec_{}", STANDARD.encode([1u8; 65]))).unwrap_err(),
            SecretFormatError::BadKeyLength(65)
        );
        assert_eq!(parse("short").unwrap_err(), SecretFormatError::TooShort(5));
        assert_eq!(
            parse(&"x".repeat(257)).unwrap_err(),
            SecretFormatError::TooLong(257)
        );
        assert_eq!(
            parse("sixteen chars ok\n").unwrap_err(),
            SecretFormatError::NotPrintable
        );
        assert_eq!(
            parse(" leading white space").unwrap_err(),
            SecretFormatError::NotPrintable
        );
    }

    #[test]
    fn generated_secrets_are_whsec_of_32_bytes_and_differ() {
        let a = WebhookSecret::generate().unwrap();
        let b = WebhookSecret::generate().unwrap();
        assert!(a.expose().starts_with(WHSEC_PREFIX));
        assert_eq!(a.signing_key().len(), 32);
        assert_ne!(a.expose(), b.expose());
        assert!(parse(a.expose()).is_ok());
    }

    #[test]
    fn signing_keys() {
        let whsec = parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            whsec.signing_key().as_slice(),
            STANDARD
                .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap()
                .as_slice()
        );
        let user = parse("a perfectly fine user secret").unwrap();
        assert_eq!(
            user.signing_key().as_slice(),
            b"a perfectly fine user secret"
        );
    }

    #[test]
    fn debug_and_errors_never_show_the_secret() {
        let secret = parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{secret:?}"), "WebhookSecret([REDACTED])");
        let err = parse("not-a-good-secret\u{7}x").unwrap_err();
        assert!(!err.to_string().contains("not-a-good"));
    }
}
