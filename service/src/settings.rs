//! Settings of the webhook service, read from the environment.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `WEBHOOK_URL_POLICY` | `production` (https, public targets only) or `development` (also http, loopback and private targets) | `production` |
//! | `WEBHOOK_SECRET_KEYS` | `id:<base64 32 bytes>,…`; the first key seals, all keys open (see [`crate::secret_box`]) | none: secrets cannot be written |
//! | `WEBHOOK_MAX_ATTEMPTS` | attempts per delivery before it is exhausted, 1..=50 | 8 |
//! | `WEBHOOK_CLAIM_LEASE_SECS` | how long a worker holds a claimed delivery, 1..=3600 | 60 |
//! | `WEBHOOK_SIGNATURE_TOLERANCE_SECS` | accepted clock skew when verifying signatures, 1..=3600 | 300 |
//!
//! A development policy is never implied: it must be asked for by name.

use std::time::Duration;

use crate::retry::RetryPolicy;
use crate::secret_box::KeyRing;
use crate::url_policy::UrlPolicy;

/// The environment variable names, in one place.
pub mod vars {
    /// See the module documentation.
    pub const URL_POLICY: &str = "WEBHOOK_URL_POLICY";
    /// See the module documentation.
    pub const SECRET_KEYS: &str = "WEBHOOK_SECRET_KEYS";
    /// See the module documentation.
    pub const MAX_ATTEMPTS: &str = "WEBHOOK_MAX_ATTEMPTS";
    /// See the module documentation.
    pub const CLAIM_LEASE_SECS: &str = "WEBHOOK_CLAIM_LEASE_SECS";
    /// See the module documentation.
    pub const SIGNATURE_TOLERANCE_SECS: &str = "WEBHOOK_SIGNATURE_TOLERANCE_SECS";
}

/// Everything the service functions need to know besides the database.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Which webhook URLs are accepted.
    pub url_policy: UrlPolicy,
    /// Keys that seal and open stored secrets; `None` when not configured.
    pub keys: Option<KeyRing>,
    /// When failed deliveries are tried again.
    pub retry: RetryPolicy,
    /// How long a claimed delivery stays leased to its worker.
    pub claim_lease: Duration,
    /// Accepted clock skew when verifying signatures.
    pub signature_tolerance: Duration,
}

impl Default for WebhookSettings {
    /// The production defaults, without encryption keys.
    fn default() -> Self {
        WebhookSettings {
            url_policy: UrlPolicy::Production,
            keys: None,
            retry: RetryPolicy::default(),
            claim_lease: Duration::from_secs(60),
            signature_tolerance: Duration::from_secs(300),
        }
    }
}

/// A setting with a value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}: {reason}")]
pub struct SettingsError {
    /// The variable.
    pub var: &'static str,
    /// What is wrong with it (never the value of a key).
    pub reason: String,
}

impl WebhookSettings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (a variable name to its value), for tests and for
    /// callers with their own configuration source. Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let get = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        let mut settings = WebhookSettings::default();
        if let Some(value) = get(vars::URL_POLICY) {
            settings.url_policy = value.parse().map_err(|e| SettingsError {
                var: vars::URL_POLICY,
                reason: format!("{e}"),
            })?;
        }
        if let Some(value) = get(vars::SECRET_KEYS) {
            settings.keys = Some(KeyRing::parse(&value).map_err(|e| SettingsError {
                var: vars::SECRET_KEYS,
                reason: e.to_string(),
            })?);
        }
        if let Some(value) = get(vars::MAX_ATTEMPTS) {
            settings.retry.max_attempts = parse_in_range(vars::MAX_ATTEMPTS, &value, 1, 50)?;
            settings.retry.validate().map_err(|e| SettingsError {
                var: vars::MAX_ATTEMPTS,
                reason: e.to_string(),
            })?;
        }
        if let Some(value) = get(vars::CLAIM_LEASE_SECS) {
            settings.claim_lease = Duration::from_secs(
                parse_in_range(vars::CLAIM_LEASE_SECS, &value, 1, 3600)?.into(),
            );
        }
        if let Some(value) = get(vars::SIGNATURE_TOLERANCE_SECS) {
            settings.signature_tolerance = Duration::from_secs(
                parse_in_range(vars::SIGNATURE_TOLERANCE_SECS, &value, 1, 3600)?.into(),
            );
        }
        Ok(settings)
    }
}

fn parse_in_range(
    var: &'static str,
    value: &str,
    min: u32,
    max: u32,
) -> Result<u32, SettingsError> {
    match value.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(SettingsError {
            var,
            reason: format!(
                "expected a whole number from {min} to {max}, got `{}`",
                value.trim()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<WebhookSettings, SettingsError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WebhookSettings::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_are_production_without_keys() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.url_policy, UrlPolicy::Production);
        assert!(s.keys.is_none());
        assert_eq!(s.claim_lease, Duration::from_secs(60));
        assert_eq!(s.signature_tolerance, Duration::from_secs(300));
        assert_eq!(s.retry.max_attempts, RetryPolicy::default().max_attempts);
    }

    #[test]
    fn reads_every_variable() {
        let key = KeyRing::generate_key_entry("k1").unwrap();
        let s = settings(&[
            (vars::URL_POLICY, "Development"),
            (vars::SECRET_KEYS, &key),
            (vars::MAX_ATTEMPTS, "3"),
            (vars::CLAIM_LEASE_SECS, "15"),
            (vars::SIGNATURE_TOLERANCE_SECS, "60"),
        ])
        .unwrap();
        assert_eq!(s.url_policy, UrlPolicy::Development);
        assert_eq!(s.keys.unwrap().current_key_id(), "k1");
        assert_eq!(s.retry.max_attempts, 3);
        assert_eq!(s.claim_lease, Duration::from_secs(15));
        assert_eq!(s.signature_tolerance, Duration::from_secs(60));
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        for (var, value) in [
            (vars::URL_POLICY, "staging"),
            (vars::SECRET_KEYS, "k1:not-base64!"),
            (vars::SECRET_KEYS, "k1"),
            (vars::MAX_ATTEMPTS, "0"),
            (vars::MAX_ATTEMPTS, "many"),
            (vars::CLAIM_LEASE_SECS, "-5"),
            (vars::CLAIM_LEASE_SECS, "3601"),
            (vars::SIGNATURE_TOLERANCE_SECS, "1.5"),
        ] {
            let err = settings(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{value}");
            assert!(
                err.to_string().starts_with(&format!("invalid {var}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn key_errors_never_echo_key_material() {
        let material = "c2VjcmV0LWtleS1tYXRlcmlhbC10aGF0LWlzLXRvby1zaG9ydA";
        let err = settings(&[(vars::SECRET_KEYS, &format!("k1:{material}"))]).unwrap_err();
        assert!(!err.to_string().contains(material), "{err}");
    }
}
