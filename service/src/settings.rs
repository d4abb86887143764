//! Settings of the webhook service, read from the environment.
//!
//! Every database-facing operation that depends on a setting takes the one
//! [`WebhookSettings`] (as svix-server hands its workers one configuration), so a variable that
//! is set is a variable that is read.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `WEBHOOK_URL_POLICY` | `production` (https, public targets only) or `development` (also http, loopback and private targets) | `production` |
//! | `WEBHOOK_SECRET_KEYS` | `id:<base64 32 bytes>,…`; the first key seals, all keys open (see [`crate::secret_box`]) | none: secrets cannot be written |
//! | `WEBHOOK_MAX_ATTEMPTS` | attempts per delivery before it is exhausted ([`MAX_ATTEMPTS`]) | 8 ([`RetryPolicy::default`]) |
//! | `WEBHOOK_CLAIM_LEASE_SECS` | how long [`claim_due`](crate::deliveries::claim_due) leases a delivery to its worker ([`CLAIM_LEASE_SECS`]) | 60 ([`DEFAULT_CLAIM_LEASE`]) |
//! | `WEBHOOK_SIGNATURE_TOLERANCE_SECS` | accepted clock skew when the ops CLI verifies signatures ([`SIGNATURE_TOLERANCE_SECS`]) | 300 ([`DEFAULT_TOLERANCE`]) |
//!
//! A development policy is never implied: it must be asked for by name.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::retry::RetryPolicy;
use crate::secret_box::{KeyRing, KeyRingError};
use crate::signing::DEFAULT_TOLERANCE;
use crate::url_policy::{ParseUrlPolicyError, UrlPolicy};

/// The environment variable names, in one place.
pub mod vars {
    /// See the [module documentation](super).
    pub const URL_POLICY: &str = "WEBHOOK_URL_POLICY";
    /// See the [module documentation](super).
    pub const SECRET_KEYS: &str = "WEBHOOK_SECRET_KEYS";
    /// See the [module documentation](super).
    pub const MAX_ATTEMPTS: &str = "WEBHOOK_MAX_ATTEMPTS";
    /// See the [module documentation](super).
    pub const CLAIM_LEASE_SECS: &str = "WEBHOOK_CLAIM_LEASE_SECS";
    /// See the [module documentation](super).
    pub const SIGNATURE_TOLERANCE_SECS: &str = "WEBHOOK_SIGNATURE_TOLERANCE_SECS";
}

/// Accepted attempt budgets: more than 50 attempts is a unit mix-up, not a policy.
pub const MAX_ATTEMPTS: RangeInclusive<u32> = 1..=50;
/// Accepted claim leases in seconds: a lease must outlive one HTTP attempt, and a lease of more
/// than an hour keeps a crashed worker's deliveries stuck for that long.
pub const CLAIM_LEASE_SECS: RangeInclusive<u32> = 1..=3600;
/// Accepted signature tolerances in seconds.
pub const SIGNATURE_TOLERANCE_SECS: RangeInclusive<u32> = 1..=3600;
/// How long a claimed delivery stays leased when `WEBHOOK_CLAIM_LEASE_SECS` is not set: well
/// above an HTTP attempt's timeout, short enough that a crashed worker's deliveries resume soon.
pub const DEFAULT_CLAIM_LEASE: Duration = Duration::from_secs(60);

/// Everything the service functions need to know besides the database.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Which webhook URLs are accepted, when configured and when sent.
    pub url_policy: UrlPolicy,
    /// Keys that seal and open stored secrets; `None` when not configured.
    pub keys: Option<KeyRing>,
    /// When failed deliveries are tried again, and how often at most.
    pub retry: RetryPolicy,
    /// How long a claimed delivery stays leased to its worker.
    pub claim_lease: Duration,
    /// Accepted clock skew when verifying signatures.
    pub signature_tolerance: Duration,
}

/// A setting whose value cannot be used; names the variable, never a key.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}: {problem}")]
pub struct SettingsError {
    /// The variable.
    pub var: &'static str,
    /// What is wrong with its value.
    #[source]
    pub problem: SettingProblem,
}

/// What is wrong with a setting's value.
#[derive(Debug, thiserror::Error)]
pub enum SettingProblem {
    /// Not a URL policy name.
    #[error(transparent)]
    UrlPolicy(#[from] ParseUrlPolicyError),
    /// Not a usable key ring.
    #[error(transparent)]
    Keys(#[from] KeyRingError),
    /// Not a whole number in the accepted range.
    #[error("expected a whole number from {} to {}, got `{got}`", range.start(), range.end())]
    OutOfRange {
        /// The accepted range.
        range: RangeInclusive<u32>,
        /// The value as given (a number, never key material).
        got: String,
    },
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
            settings.url_policy = value
                .parse::<UrlPolicy>()
                .map_err(SettingProblem::from)
                .map_err(fail(vars::URL_POLICY))?;
        }
        if let Some(value) = get(vars::SECRET_KEYS) {
            let keys = KeyRing::parse(&value)
                .map_err(SettingProblem::from)
                .map_err(fail(vars::SECRET_KEYS))?;
            settings.keys = Some(keys);
        }
        if let Some(value) = get(vars::MAX_ATTEMPTS) {
            settings.retry.max_attempts =
                in_range(&value, MAX_ATTEMPTS).map_err(fail(vars::MAX_ATTEMPTS))?;
        }
        if let Some(value) = get(vars::CLAIM_LEASE_SECS) {
            let secs = in_range(&value, CLAIM_LEASE_SECS).map_err(fail(vars::CLAIM_LEASE_SECS))?;
            settings.claim_lease = Duration::from_secs(secs.into());
        }
        if let Some(value) = get(vars::SIGNATURE_TOLERANCE_SECS) {
            let secs = in_range(&value, SIGNATURE_TOLERANCE_SECS)
                .map_err(fail(vars::SIGNATURE_TOLERANCE_SECS))?;
            settings.signature_tolerance = Duration::from_secs(secs.into());
        }
        Ok(settings)
    }
}

impl Default for WebhookSettings {
    /// The production defaults, without encryption keys.
    fn default() -> Self {
        WebhookSettings {
            url_policy: UrlPolicy::Production,
            keys: None,
            retry: RetryPolicy::default(),
            claim_lease: DEFAULT_CLAIM_LEASE,
            signature_tolerance: DEFAULT_TOLERANCE,
        }
    }
}

fn fail(var: &'static str) -> impl Fn(SettingProblem) -> SettingsError {
    move |problem| SettingsError { var, problem }
}

fn in_range(value: &str, range: RangeInclusive<u32>) -> Result<u32, SettingProblem> {
    match value.trim().parse::<u32>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(SettingProblem::OutOfRange {
            range,
            got: value.trim().to_owned(),
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
        assert_eq!(s.retry, RetryPolicy::default());
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
            (vars::MAX_ATTEMPTS, "51"),
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
