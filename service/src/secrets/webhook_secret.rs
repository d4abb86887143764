//! What a webhook signing secret is, so that every secret the service stores can sign a
//! delivery that receivers are able to verify.
//!
//! Two forms are accepted:
//! * **Standard Webhooks** `whsec_<base64>`: the standard base64 alphabet, padding optional,
//!   encoding 24 to 64 bytes (192 to 512 bits, the range the Standard Webhooks specification
//!   gives). The HMAC key is the *decoded bytes*, which is what every Standard Webhooks and Svix
//!   library does with such a secret. [`WebhookSecret::generate`] makes these, from 32 bytes of
//!   the operating system's random number generator.
//! * **A user secret**: any other string of 16 to 256 printable ASCII characters (space through
//!   `~`) that neither starts nor ends with a space. The HMAC key is its *UTF-8 bytes* (for
//!   ASCII, the characters themselves). ASCII only, because a non-ASCII secret can be typed as
//!   different bytes on different systems (Unicode normalization), which would silently break
//!   verification; leading or trailing spaces are refused because they are nearly always
//!   copy-paste accidents. Note that Standard Webhooks libraries base64-decode any *string*
//!   secret, so a receiver must hand them a user secret's UTF-8 bytes (for example
//!   `Webhook(secret.encode())` in Python); prefer `whsec_` secrets.
//!
//! A string that starts with `whsec_` is always judged as the first form, never as a user
//! secret, so a mistyped `whsec_` secret is an error rather than a different key.
//!
//! The secret lives in a [`SecretString`]: zeroized when dropped, redacted in `Debug`, and not
//! serializable (no `Serialize` impl), so it cannot leak into logs or API responses by accident.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// The prefix that marks a Standard Webhooks secret, so the key form is never ambiguous.
pub const WHSEC_PREFIX: &str = "whsec_";
/// Accepted decoded sizes of a `whsec_` key in bytes: the specification's 192 to 512 bits.
pub const WHSEC_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
/// Accepted lengths of a user secret in characters: long enough to resist guessing, short
/// enough to fit any receiver's configuration field.
pub const USER_SECRET_CHARS: std::ops::RangeInclusive<usize> = 16..=256;
/// Size in bytes of the keys [`WebhookSecret::generate`] makes: 256 bits, like Svix's.
pub const GENERATED_KEY_BYTES: usize = 32;

/// A validated webhook signing secret, so signing code never has to re-check the format.
///
/// Not serializable; `Debug` prints `WebhookSecret([REDACTED])`; the text is zeroized on drop.
#[derive(Clone)]
pub struct WebhookSecret {
    text: SecretString,
    /// Derived once, when `text` was validated.
    key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

/// Why a string is not an accepted secret, so a user can fix it; never contains the secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretFormatError {
    /// `whsec_` followed by something that is not standard base64.
    #[error("a whsec_ secret must continue with standard base64")]
    BadBase64,
    /// `whsec_` followed by base64 of a key outside [`WHSEC_BYTES`].
    #[error("a whsec_ secret must encode 24 to 64 bytes, this one encodes {len}")]
    BadKeyLength {
        /// The decoded length in bytes.
        len: usize,
    },
    /// A user secret shorter than [`USER_SECRET_CHARS`].
    #[error("a secret must have at least 16 characters, this one has {len}")]
    TooShort {
        /// Its length in characters.
        len: usize,
    },
    /// A user secret longer than [`USER_SECRET_CHARS`].
    #[error("a secret must have at most 256 characters, this one has {len}")]
    TooLong {
        /// Its length in characters.
        len: usize,
    },
    /// A user secret with a character outside printable ASCII, or a space at either end.
    #[error(
        "a secret must consist of printable ASCII characters and must not start or end with a space"
    )]
    NotPrintable,
}

/// The operating system's random number generator failed, so no secret, key or nonce could be
/// drawn. The one error for that, wherever random bytes are needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RngError(#[source] getrandom::Error);

/// Fills `buf` from the operating system's random number generator, so every caller reports
/// a failure as [`RngError`].
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), RngError> {
    getrandom::fill(buf).map_err(RngError)
}

impl WebhookSecret {
    /// Validates `secret` against the forms in the module documentation, so that only
    /// secrets receivers can use are stored.
    pub fn parse(secret: SecretString) -> Result<Self, SecretFormatError> {
        let key = check(secret.expose_secret())?;
        Ok(WebhookSecret { text: secret, key })
    }

    /// Makes a new `whsec_` secret from [`GENERATED_KEY_BYTES`] random bytes, for users who do
    /// not bring their own.
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

    /// The secret's text, to encrypt it at rest or to show it to its owner once. Never log it.
    pub fn expose(&self) -> &str {
        self.text.expose_secret()
    }

    /// Whether this is a Standard Webhooks `whsec_` secret (keyed with its decoded bytes),
    /// so callers can warn owners of user secrets about receiver compatibility.
    pub fn is_whsec(&self) -> bool {
        self.expose().starts_with(WHSEC_PREFIX)
    }

    /// The HMAC-SHA256 key, so signing and verifying agree on it: the base64-decoded bytes of
    /// a `whsec_` secret, the UTF-8 bytes of a user secret.
    pub fn signing_key(&self) -> Zeroizing<Vec<u8>> {
        self.key.clone()
    }
}

/// The format rules of [`WebhookSecret::parse`]; returns the HMAC key of a valid secret.
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

/// Decodes standard base64 with or without padding into memory that is zeroized on drop,
/// also when decoding fails half-way.
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
