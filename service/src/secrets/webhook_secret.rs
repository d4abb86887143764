//! The signing-secret forms receivers can verify:
//! * **Standard Webhooks** `whsec_<base64>` of [`WHSEC_BYTES`]: the HMAC key is the *decoded
//!   bytes*, as every Standard Webhooks and Svix library does.
//! * **A user secret** of [`USER_SECRET_CHARS`] printable ASCII, no space at either end: the HMAC
//!   key is its bytes. ASCII only, since Unicode normalization could type it as other bytes;
//!   edge spaces are nearly always copy-paste accidents. Standard Webhooks libraries
//!   base64-decode any *string* secret, so a receiver must pass its bytes (Python:
//!   `Webhook(secret.encode())`); prefer `whsec_`.
//!
//! Anything starting with `whsec_` is judged as the first form, so a mistyped one is an error
//! rather than a different key. Secrets are redacted, not serializable and zeroized on drop.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

pub const WHSEC_PREFIX: &str = "whsec_";
/// Decoded bytes of a `whsec_` key: the specification's 192 to 512 bits.
pub const WHSEC_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
/// Characters: long enough to resist guessing, short enough for any receiver's settings field.
pub const USER_SECRET_CHARS: std::ops::RangeInclusive<usize> = 16..=256;
/// 256 bits, like Svix's.
pub const GENERATED_KEY_BYTES: usize = 32;

/// Validated once, so signing code never re-checks the format.
#[derive(Clone)]
pub struct WebhookSecret {
    text: SecretString,
    key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

/// Never contains the secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretFormatError {
    #[error("a whsec_ secret must continue with standard base64")]
    BadBase64,
    #[error("a whsec_ secret must encode 24 to 64 bytes, this one encodes {len}")]
    BadKeyLength { len: usize },
    #[error("a secret must have at least 16 characters, this one has {len}")]
    TooShort { len: usize },
    #[error("a secret must have at most 256 characters, this one has {len}")]
    TooLong { len: usize },
    #[error(
        "a secret must consist of printable ASCII characters and must not start or end with a space"
    )]
    NotPrintable,
}

/// The operating system's random number generator failed: the one error for that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RngError(#[source] getrandom::Error);

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), RngError> {
    getrandom::fill(buf).map_err(RngError)
}

impl WebhookSecret {
    /// Accepts the forms in the module documentation.
    pub fn parse(secret: SecretString) -> Result<Self, SecretFormatError> {
        let key = check(secret.expose_secret())?;
        Ok(WebhookSecret { text: secret, key })
    }

    /// A new `whsec_` secret, for users who do not bring their own.
    pub fn generate() -> Result<Self, RngError> {
        let mut key = Zeroizing::new([0u8; GENERATED_KEY_BYTES]);
        fill_random(key.as_mut())?;
        let mut text = Zeroizing::new(String::with_capacity(
            WHSEC_PREFIX.len() + GENERATED_KEY_BYTES.div_ceil(3) * 4,
        ));
        text.push_str(WHSEC_PREFIX);
        STANDARD.encode_string(key.as_ref(), &mut text);
        Ok(WebhookSecret {
            text: SecretString::from(text.as_str()),
            key: Zeroizing::new(key.to_vec()),
        })
    }

    /// To seal at rest or show its owner once. Never log it.
    pub fn expose(&self) -> &str {
        self.text.expose_secret()
    }

    /// So callers can warn owners of user secrets about receiver compatibility.
    pub fn is_whsec(&self) -> bool {
        self.expose().starts_with(WHSEC_PREFIX)
    }

    /// The HMAC-SHA256 key, one derivation for signing and verifying.
    pub fn signing_key(&self) -> Zeroizing<Vec<u8>> {
        self.key.clone()
    }
}

fn check(text: &str) -> Result<Zeroizing<Vec<u8>>, SecretFormatError> {
    if let Some(encoded) = text.strip_prefix(WHSEC_PREFIX) {
        let key = decode(encoded).ok_or(SecretFormatError::BadBase64)?;
        if !WHSEC_BYTES.contains(&key.len()) {
            return Err(SecretFormatError::BadKeyLength { len: key.len() });
        }
        return Ok(key);
    }
    let len = text.chars().count();
    if len < *USER_SECRET_CHARS.start() {
        return Err(SecretFormatError::TooShort { len });
    }
    if len > *USER_SECRET_CHARS.end() {
        return Err(SecretFormatError::TooLong { len });
    }
    let printable = |c: char| c == ' ' || c.is_ascii_graphic();
    if !text.chars().all(printable) || text.starts_with(' ') || text.ends_with(' ') {
        return Err(SecretFormatError::NotPrintable);
    }
    Ok(Zeroizing::new(text.as_bytes().to_vec()))
}

/// Zeroized on drop, also when decoding fails half-way.
fn decode(encoded: &str) -> Option<Zeroizing<Vec<u8>>> {
    // Reserve enough for the decoder's estimate so it never reallocates (a reallocation would
    // leave an unzeroized copy of the key behind).
    let mut out = Zeroizing::new(Vec::with_capacity(encoded.len() / 4 * 3 + 3));
    STANDARD_PAD_INDIFFERENT
        .decode_vec(encoded, &mut out)
        .ok()
        .map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    use proptest::prelude::*;

    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn parse(s: &str) -> Result<WebhookSecret, SecretFormatError> {
        WebhookSecret::parse(SecretString::from(s.to_owned()))
    }

    fn whsec(bytes: &[u8], padded: bool) -> String {
        let engine = if padded { STANDARD } else { STANDARD_NO_PAD };
        format!("{WHSEC_PREFIX}{}", engine.encode(bytes))
    }

    #[test]
    fn whsec_secrets_of_24_to_64_bytes_are_accepted_with_or_without_padding() {
        assert!(parse(SPEC_SECRET).unwrap().is_whsec());
        for len in [24, 25, 26, 32, 63, 64] {
            let key: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for padded in [true, false] {
                let secret = parse(&whsec(&key, padded)).unwrap();
                assert_eq!(secret.signing_key().as_slice(), key.as_slice(), "{len}");
            }
        }
    }

    #[test]
    fn whsec_secrets_of_other_sizes_or_bad_base64_are_rejected() {
        assert_eq!(
            parse(&whsec(&[1; 23], true)).unwrap_err(),
            SecretFormatError::BadKeyLength { len: 23 }
        );
        assert_eq!(
            parse(&whsec(&[1; 65], false)).unwrap_err(),
            SecretFormatError::BadKeyLength { len: 65 }
        );
        assert_eq!(
            parse("whsec_").unwrap_err(),
            SecretFormatError::BadKeyLength { len: 0 }
        );
        let url_safe = format!("{WHSEC_PREFIX}{}", "-_".repeat(16));
        let with_space = format!("{SPEC_SECRET} ");
        let inner_space = SPEC_SECRET.replace('K', " ");
        for bad in [
            "whsec_!!!!",
            url_safe.as_str(),
            with_space.as_str(),
            inner_space.as_str(),
        ] {
            assert_eq!(
                parse(bad).unwrap_err(),
                SecretFormatError::BadBase64,
                "{bad}"
            );
        }
    }

    #[test]
    fn user_secrets_are_printable_ascii_of_16_to_256_characters() {
        let ok = "a perfectly fine user secret";
        assert!(!parse(ok).unwrap().is_whsec());
        assert!(parse(&"x".repeat(16)).is_ok());
        assert!(parse(&"x".repeat(256)).is_ok());
        assert!(parse("~!\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}").is_ok());
        assert_eq!(
            parse(&"x".repeat(15)).unwrap_err(),
            SecretFormatError::TooShort { len: 15 }
        );
        assert_eq!(
            parse("").unwrap_err(),
            SecretFormatError::TooShort { len: 0 }
        );
        assert_eq!(
            parse(&"x".repeat(257)).unwrap_err(),
            SecretFormatError::TooLong { len: 257 }
        );
        // Lengths count characters, not bytes.
        assert_eq!(
            parse(&"é".repeat(10)).unwrap_err(),
            SecretFormatError::TooShort { len: 10 }
        );
        for bad in [
            "sixteen chars ok\n",
            " leading space is refused",
            "trailing space is refused ",
            "tab\tinside the secret",
            "non-ASCII café secret",
            "null\0inside the secret",
        ] {
            assert_eq!(
                parse(bad).unwrap_err(),
                SecretFormatError::NotPrintable,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_user_secret_is_keyed_with_its_utf8_bytes() {
        let user = parse("a perfectly fine user secret").unwrap();
        assert_eq!(
            user.signing_key().as_slice(),
            b"a perfectly fine user secret"
        );
        let spec = parse(SPEC_SECRET).unwrap();
        assert_eq!(
            spec.signing_key().as_slice(),
            STANDARD
                .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap()
                .as_slice()
        );
    }

    #[test]
    fn generated_secrets_are_whsec_of_32_random_bytes() {
        let a = WebhookSecret::generate().unwrap();
        let b = WebhookSecret::generate().unwrap();
        assert!(a.expose().starts_with(WHSEC_PREFIX));
        assert_eq!(a.expose().len(), WHSEC_PREFIX.len() + 44);
        assert_eq!(a.signing_key().len(), GENERATED_KEY_BYTES);
        assert_ne!(a.expose(), b.expose());
        assert_eq!(
            parse(a.expose()).unwrap().signing_key().as_slice(),
            a.signing_key().as_slice()
        );
    }

    #[test]
    fn neither_debug_nor_errors_show_the_secret() {
        let secret = parse(SPEC_SECRET).unwrap();
        assert_eq!(format!("{secret:?}"), "WebhookSecret([REDACTED])");
        assert_eq!(format!("{secret:#?}"), "WebhookSecret([REDACTED])");
        for bad in [
            "whsec_MfKQ9r8G!!!",
            "whsec_MfKQ9r8GKYqrTwjUPD8I",
            "MfKQ9r8G",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\u{7}",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(!err.to_string().contains("MfKQ"), "{err}");
            assert!(!format!("{err:?}").contains("MfKQ"), "{err:?}");
        }
    }

    #[test]
    fn random_number_failures_are_one_error_that_keeps_its_source() {
        use crate::secrets::secret_box::{KeyRingError, SecretBoxError};
        use std::error::Error;
        let rng = RngError(getrandom::Error::UNSUPPORTED);
        let reported: [&dyn Error; 3] =
            [&rng, &KeyRingError::from(rng), &SecretBoxError::from(rng)];
        for err in reported {
            assert_eq!(
                err.to_string(),
                "the operating system's random number generator failed"
            );
            let source = err.source().map(ToString::to_string);
            assert_eq!(source, Some(getrandom::Error::UNSUPPORTED.to_string()));
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepted_secrets_have_keys(text in "\\PC{0,300}|whsec_[A-Za-z0-9+/=]{0,100}") {
            if let Ok(secret) = parse(&text) {
                prop_assert!(!secret.signing_key().is_empty());
                prop_assert_eq!(secret.expose(), text.as_str());
            }
        }
    }
}
