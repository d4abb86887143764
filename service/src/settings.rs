//! Settings of the webhook service, read from the environment.
//!
//! Every operation that depends on a setting takes the one [`WebhookSettings`], so a variable
//! that is set is a variable that is read. This table is the home of each variable's meaning
//! and default; the range constants below say why they stop where they do.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `WEBHOOK_URL_POLICY` | `production` (https, public targets only) or `development` (also http, loopback and private targets) | `production` |
//! | `WEBHOOK_SECRET_KEYS` | `id:<base64 32 bytes>,…`; the first key seals, all keys open (see [`crate::secrets::secret_box`]) | none: secrets cannot be written |
//! | `WEBHOOK_RETRY_SCHEDULE` | the delays between attempts, comma-separated, in [`humantime`] units, e.g. `5s,5m,30m,2h,5h,10h,10h`; the *n*th delay is the wait after attempt *n* failed. Each within [`MIN_DELAY`]..=[`MAX_DELAY`] (1 ms to 30 days), at most [`MAX_RETRY_DELAYS`] of them. Set alone, it also sets the attempts: one more than its delays. With `WEBHOOK_MAX_ATTEMPTS` set too, that variable decides the attempts: more attempts than delays repeat the last delay, fewer leave the last delays unused | Svix's schedule ([the retry module](crate::delivery::retry#default-schedule)) |
//! | `WEBHOOK_MAX_ATTEMPTS` | attempts per delivery before it is exhausted, the first one included ([`MAX_ATTEMPTS`]) | 8 ([`RetryPolicy::default`]), or one more than the delays of `WEBHOOK_RETRY_SCHEDULE` |
//! | `WEBHOOK_CLAIM_LEASE_SECS` | how long [`claim_due`](crate::delivery::claim_due) leases a delivery to its worker ([`CLAIM_LEASE_SECS`]) | 60 ([`DEFAULT_CLAIM_LEASE`]) |
//! | `WEBHOOK_SIGNATURE_TOLERANCE_SECS` | accepted clock skew when the ops CLI verifies signatures ([`SIGNATURE_TOLERANCE_SECS`]) | 300 ([`DEFAULT_TOLERANCE`]) |
//! | `WEBHOOK_MAX_PAYLOAD_BYTES` | largest event payload [`enqueue`](crate::delivery::enqueue) accepts, in bytes of compact JSON ([`MAX_PAYLOAD_BYTES`]) | 262144 (256 KiB) |
//! | `WEBHOOK_WORKER_CONCURRENCY` | requests one worker process sends at once, and its claim batch ([`WORKER_CONCURRENCY`]) | 64 |
//! | `WEBHOOK_WORKER_PER_HOST` | requests one worker process sends at once to one receiving host (the URL's host name, any port), so a slow receiver holds at most this many of the worker's slots in requests ([`WORKER_PER_HOST`]) | 64 (the concurrency: lower it to share a worker among many slow hosts) |
//! | `WEBHOOK_CONNECT_TIMEOUT_SECS` | how long connecting (DNS, TCP, TLS) to a receiver may take ([`CONNECT_TIMEOUT_SECS`]) | 10 |
//! | `WEBHOOK_REQUEST_TIMEOUT_SECS` | how long one attempt may take in all, response body included; must be shorter than the claim lease ([`REQUEST_TIMEOUT_SECS`]) | 30 |
//! | `WEBHOOK_MAX_RESPONSE_BYTES` | how much of a response body the worker reads before it stops and closes the connection ([`MAX_RESPONSE_BYTES`]) | 65536 (64 KiB) |
//! | `WEBHOOK_POLL_INTERVAL_MS` | how long an idle worker waits before it looks for due deliveries again ([`POLL_INTERVAL_MS`]) | 1000 |
//! | `WEBHOOK_GATHER_MS` | on PostgreSQL with `WEBHOOK_LISTEN`, how long an idle worker woken by a notification waits before it claims, so that one claim (and one recording) serves the events of that window rather than each its own; adds up to this much latency to an event that finds the worker idle, none to a busy worker ([`GATHER_MS`]) | 10 ([`DEFAULT_GATHER`]) |
//! | `WEBHOOK_SIGNING_GRACE_SECS` | how long a previous signing secret keeps signing after [`rotate_signing_secret`](crate::webhook::signing_secrets::rotate_signing_secret) when the caller names no grace period ([`SIGNING_GRACE_SECS`]) | 86400 (24 h; [`DEFAULT_SIGNING_GRACE`]) |
//! | `WEBHOOK_LISTEN` | on PostgreSQL, [`enqueue`](crate::delivery::enqueue) sends a `NOTIFY` (delivered on commit) and an idle worker `LISTEN`s, so a new delivery is sent at once rather than at the next poll (one worker per database listens: [`Dispatcher`](crate::dispatch::Dispatcher)); `false` for connection poolers that do not pass `LISTEN` through (PgBouncer in transaction mode). Set it alike for the app server and the workers. Ignored on other backends | `true` |
//! | `WEBHOOK_PORTAL_KEY` | the base64 of at least 32 random bytes (`openssl rand -base64 32`) that signs the webhook portal's links ([`PortalKey`]; see docs/portal.md); one key for all replicas of the app server | none: portal links cannot be minted |
//! | `WEBHOOK_PORTAL_FRAME_ANCESTORS` | the CSP `frame-ancestors` sources of the portal's pages: who may show them in an iframe, e.g. `'self' https://app.example.com` | `'self'` |
//! | `WEBHOOK_DISABLE_AFTER_SECS` | how long an agent's attempts may fail without a single success before the worker disables its webhook ([`DISABLE_AFTER_SECS`]) | 432000 (5 days, like Svix; [`DEFAULT_DISABLE_AFTER`]) |
//!
//! A development policy is never implied: it must be asked for by name.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::delivery::retry::{MAX_DELAY, MIN_DELAY, RetryPolicy};
use crate::secrets::secret_box::{KeyRing, KeyRingError};
use crate::secrets::signing::DEFAULT_TOLERANCE;
use crate::webhook::url_policy::{ParseUrlPolicyError, UrlPolicy};

/// The variable names; see the table in the [module documentation](super).
pub mod vars {
    pub const URL_POLICY: &str = "WEBHOOK_URL_POLICY";
    pub const SECRET_KEYS: &str = "WEBHOOK_SECRET_KEYS";
    pub const RETRY_SCHEDULE: &str = "WEBHOOK_RETRY_SCHEDULE";
    pub const MAX_ATTEMPTS: &str = "WEBHOOK_MAX_ATTEMPTS";
    pub const CLAIM_LEASE_SECS: &str = "WEBHOOK_CLAIM_LEASE_SECS";
    pub const SIGNATURE_TOLERANCE_SECS: &str = "WEBHOOK_SIGNATURE_TOLERANCE_SECS";
    pub const MAX_PAYLOAD_BYTES: &str = "WEBHOOK_MAX_PAYLOAD_BYTES";
    pub const WORKER_CONCURRENCY: &str = "WEBHOOK_WORKER_CONCURRENCY";
    pub const WORKER_PER_HOST: &str = "WEBHOOK_WORKER_PER_HOST";
    pub const CONNECT_TIMEOUT_SECS: &str = "WEBHOOK_CONNECT_TIMEOUT_SECS";
    pub const REQUEST_TIMEOUT_SECS: &str = "WEBHOOK_REQUEST_TIMEOUT_SECS";
    pub const MAX_RESPONSE_BYTES: &str = "WEBHOOK_MAX_RESPONSE_BYTES";
    pub const POLL_INTERVAL_MS: &str = "WEBHOOK_POLL_INTERVAL_MS";
    pub const GATHER_MS: &str = "WEBHOOK_GATHER_MS";
    pub const DISABLE_AFTER_SECS: &str = "WEBHOOK_DISABLE_AFTER_SECS";
    pub const SIGNING_GRACE_SECS: &str = "WEBHOOK_SIGNING_GRACE_SECS";
    pub const LISTEN: &str = "WEBHOOK_LISTEN";
    pub const PORTAL_KEY: &str = "WEBHOOK_PORTAL_KEY";
    pub const PORTAL_FRAME_ANCESTORS: &str = "WEBHOOK_PORTAL_FRAME_ANCESTORS";
}

/// More than 50 attempts is a unit mix-up, not a policy.
pub const MAX_ATTEMPTS: RangeInclusive<u32> = 1..=50;
/// One delay per retry of the most attempts [`MAX_ATTEMPTS`] allows: a longer
/// `WEBHOOK_RETRY_SCHEDULE` could never be used up, so it is a slip (a pasted list), not a
/// policy.
pub const MAX_RETRY_DELAYS: usize = (*MAX_ATTEMPTS.end() - 1) as usize;
/// Seconds: more than an hour keeps a crashed worker's deliveries stuck that long.
pub const CLAIM_LEASE_SECS: RangeInclusive<u32> = 1..=3600;
pub const SIGNATURE_TOLERANCE_SECS: RangeInclusive<u32> = 1..=3600;
/// Bytes: up to what the payload column holds on every backend.
pub const MAX_PAYLOAD_BYTES: RangeInclusive<u32> = 1..=migration::MAX_PAYLOAD_COLUMN_BYTES;
/// Up to what a claim batch may lease, [`MAX_PAGE_SIZE`](crate::db::MAX_PAGE_SIZE).
pub const WORKER_CONCURRENCY: RangeInclusive<u32> = 1..=1000;
/// A limit above the worker's concurrency never binds.
pub const WORKER_PER_HOST: RangeInclusive<u32> = 1..=1000;
pub const CONNECT_TIMEOUT_SECS: RangeInclusive<u32> = 1..=60;
/// Seconds; also bounded by the claim lease.
pub const REQUEST_TIMEOUT_SECS: RangeInclusive<u32> = 1..=600;
/// Bytes: at least the KiB kept in the attempt log.
pub const MAX_RESPONSE_BYTES: RangeInclusive<u32> = 1024..=16 * 1024 * 1024;
pub const POLL_INTERVAL_MS: RangeInclusive<u32> = 10..=60_000;
/// Milliseconds: 0 claims at once; beyond a second, polling does the same job.
pub const GATHER_MS: RangeInclusive<u32> = 0..=1000;
/// At 200 events/s a claim then serves about three events, at a p50 of about 10 ms from
/// enqueue to arrival (docs/benchmarks.md, scale-out: light load).
pub const DEFAULT_GATHER: Duration = Duration::from_millis(10);
/// Seconds: a period under a minute would disable a webhook over one slow retry.
pub const DISABLE_AFTER_SECS: RangeInclusive<u32> = 60..=365 * 24 * 3600;
/// As Svix does.
pub const DEFAULT_DISABLE_AFTER: Duration = Duration::from_secs(5 * 24 * 3600);
/// Seconds: receivers that need longer than a week to switch should be told before the
/// rotation.
pub const SIGNING_GRACE_SECS: RangeInclusive<u32> = 0..=7 * 24 * 3600;
/// As Svix does.
pub const DEFAULT_SIGNING_GRACE: Duration = Duration::from_secs(24 * 3600);
/// What Svix accepts by default.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// Well above an attempt's timeout, short enough that a crashed worker's deliveries resume
/// soon.
pub const DEFAULT_CLAIM_LEASE: Duration = Duration::from_secs(60);

/// Everything the service functions need besides the database; each field is one variable of
/// the [module documentation](self).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url_policy: UrlPolicy,
    /// `None` when not configured: secrets can then be neither written nor read.
    pub keys: Option<KeyRing>,
    pub retry: RetryPolicy,
    pub claim_lease: Duration,
    pub signature_tolerance: Duration,
    pub max_payload_bytes: usize,
    pub worker: WorkerSettings,
    pub disable_after: Duration,
    pub signing_grace: Duration,
    /// `None` when not configured: portal links can then be neither minted nor opened.
    pub portal_key: Option<PortalKey>,
    /// The CSP `frame-ancestors` source list of the portal's pages, checked by
    /// [`check_frame_ancestors`].
    pub portal_frame_ancestors: String,
    /// Not a variable: what [`enqueue`](crate::delivery::enqueue) learned of agents' content
    /// filters. Clones of these settings share it.
    pub filter_cache: crate::delivery::filter_cache::FilterCache,
}

/// Shortest portal key, in bytes: HMAC-SHA256's block of security.
pub const MIN_PORTAL_KEY_BYTES: usize = 32;

/// What portal pages may be framed by unless `WEBHOOK_PORTAL_FRAME_ANCESTORS` says otherwise:
/// the app that mounts the router, nobody else (clickjacking).
pub const DEFAULT_PORTAL_FRAME_ANCESTORS: &str = "'self'";

/// The key that signs portal links and their forms' CSRF tokens. A key of its own rather than
/// one of `WEBHOOK_SECRET_KEYS`, so that rotating it (which ends every link in flight) never
/// touches stored secrets. `Debug` never shows it.
#[derive(Clone)]
pub struct PortalKey(zeroize::Zeroizing<Vec<u8>>);

impl PortalKey {
    /// Standard base64 (padding optional) of at least [`MIN_PORTAL_KEY_BYTES`] bytes.
    pub fn parse(text: &str) -> Result<PortalKey, SettingProblem> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
            .decode(text.trim())
            .map_err(|_| SettingProblem::PortalKey)?;
        if bytes.len() < MIN_PORTAL_KEY_BYTES {
            return Err(SettingProblem::PortalKey);
        }
        Ok(PortalKey(zeroize::Zeroizing::new(bytes)))
    }

    /// A key from raw bytes, for tests and apps that keep keys elsewhere.
    pub fn from_bytes(bytes: &[u8]) -> Result<PortalKey, SettingProblem> {
        if bytes.len() < MIN_PORTAL_KEY_BYTES {
            return Err(SettingProblem::PortalKey);
        }
        Ok(PortalKey(zeroize::Zeroizing::new(bytes.to_vec())))
    }

    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for PortalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PortalKey(<redacted>)")
    }
}

/// A `frame-ancestors` source list goes into a header verbatim: only the CSP keywords `'self'`
/// and `'none'` and host sources (`https://app.example.com`, `https://*.example.com:8443`) are
/// taken, so a value cannot end the directive and add another (`; script-src *`).
pub fn check_frame_ancestors(value: &str) -> Result<String, SettingProblem> {
    let sources: Vec<&str> = value.split_whitespace().collect();
    let bad = |got: &str| SettingProblem::FrameAncestors {
        got: got.to_owned(),
    };
    if sources.is_empty() {
        return Err(bad(value));
    }
    for source in &sources {
        let keyword = matches!(*source, "'self'" | "'none'");
        let host_source = !source.is_empty()
            && source.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b':' | b'/' | b'.' | b'-' | b'*' | b'[' | b']')
            });
        if !keyword && !host_source {
            return Err(bad(source));
        }
    }
    if sources.len() > 1 && sources.contains(&"'none'") {
        return Err(bad(value));
    }
    Ok(sources.join(" "))
}

/// So one slow or hostile receiver cannot hold a worker (or its memory) beyond an attempt's
/// budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Also the claim batch size. The default, 64, keeps one worker ahead of an app enqueueing
    /// to one endpoint from 8 connections (docs/benchmarks.md, scale-out); 16 fell seconds
    /// behind.
    pub concurrency: usize,
    /// By host name, any port. The default equals the concurrency, so one busy endpoint may
    /// use the whole worker; lower it to share a worker fairly among many hosts.
    pub per_host: usize,
    pub connect_timeout: Duration,
    /// Shorter than the claim lease, so a lease never runs out under a running request.
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
    pub poll_interval: Duration,
    /// See `WEBHOOK_GATHER_MS` in the [module documentation](self).
    pub gather: Duration,
    pub listen: bool,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            concurrency: 64,
            per_host: 64,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: 64 * 1024,
            poll_interval: Duration::from_secs(1),
            gather: DEFAULT_GATHER,
            listen: true,
        }
    }
}

/// Names the variable, never a key.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}: {problem}")]
pub struct SettingsError {
    pub var: &'static str,
    #[source]
    pub problem: SettingProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingProblem {
    #[error(transparent)]
    UrlPolicy(#[from] ParseUrlPolicyError),
    #[error(transparent)]
    Keys(#[from] KeyRingError),
    /// Else a second worker would send the delivery again under a request still in flight.
    #[error("must be shorter than the claim lease ({lease_secs} s), got {got_secs} s")]
    NotShorterThanLease { lease_secs: u64, got_secs: u64 },
    /// The value is a key: never repeated.
    #[error("expected the standard base64 of at least {MIN_PORTAL_KEY_BYTES} bytes")]
    PortalKey,
    #[error(
        "expected CSP frame-ancestors sources ('self', 'none' alone, or host sources such as https://app.example.com), got `{got}`"
    )]
    FrameAncestors { got: String },
    #[error("expected true or false, got `{got}`")]
    NotABool { got: String },
    /// `WEBHOOK_RETRY_SCHEDULE` with nothing between two commas, or before the first or after
    /// the last; `position` counts from 1.
    #[error("delay {position} is empty; expected comma-separated delays such as `5s,5m,30m`")]
    EmptyDelay { position: usize },
    #[error(
        "delay {position} `{got}` is not a duration ({reason}); expected a number and a unit, such as `5s`, `30m`, `2h` or `1h 30m`"
    )]
    NotADelay {
        position: usize,
        got: String,
        reason: String,
    },
    #[error(
        "delay {position} `{got}` is outside {} to {}",
        humantime::format_duration(MIN_DELAY),
        humantime::format_duration(MAX_DELAY)
    )]
    DelayOutOfRange { position: usize, got: String },
    #[error(
        "{count} delays, more than the {MAX_RETRY_DELAYS} retries of the most attempts allowed"
    )]
    TooManyDelays { count: usize },
    #[error("expected a whole number from {} to {}, got `{got}`", range.start(), range.end())]
    OutOfRange {
        range: RangeInclusive<u32>,
        got: String,
    },
}

impl WebhookSettings {
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// For tests and callers with their own configuration source; empty values count as unset.
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
        if let Some(value) = get(vars::RETRY_SCHEDULE) {
            let schedule = parse_retry_schedule(&value).map_err(fail(vars::RETRY_SCHEDULE))?;
            // At most MAX_RETRY_DELAYS (49) delays: the count fits.
            settings.retry.max_attempts = u32::try_from(schedule.len() + 1).unwrap_or(u32::MAX);
            settings.retry.schedule = schedule;
        }
        // After the schedule: when both are set, this one decides the attempts.
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
        if let Some(value) = get(vars::MAX_PAYLOAD_BYTES) {
            let n = in_range(&value, MAX_PAYLOAD_BYTES).map_err(fail(vars::MAX_PAYLOAD_BYTES))?;
            settings.max_payload_bytes = n as usize;
        }
        let worker = &mut settings.worker;
        if let Some(value) = get(vars::WORKER_CONCURRENCY) {
            let n = in_range(&value, WORKER_CONCURRENCY).map_err(fail(vars::WORKER_CONCURRENCY))?;
            worker.concurrency = n as usize;
        }
        if let Some(value) = get(vars::WORKER_PER_HOST) {
            let n = in_range(&value, WORKER_PER_HOST).map_err(fail(vars::WORKER_PER_HOST))?;
            worker.per_host = n as usize;
        }
        if let Some(value) = get(vars::CONNECT_TIMEOUT_SECS) {
            let secs =
                in_range(&value, CONNECT_TIMEOUT_SECS).map_err(fail(vars::CONNECT_TIMEOUT_SECS))?;
            worker.connect_timeout = Duration::from_secs(secs.into());
        }
        if let Some(value) = get(vars::REQUEST_TIMEOUT_SECS) {
            let secs =
                in_range(&value, REQUEST_TIMEOUT_SECS).map_err(fail(vars::REQUEST_TIMEOUT_SECS))?;
            worker.request_timeout = Duration::from_secs(secs.into());
        }
        if let Some(value) = get(vars::MAX_RESPONSE_BYTES) {
            let n = in_range(&value, MAX_RESPONSE_BYTES).map_err(fail(vars::MAX_RESPONSE_BYTES))?;
            worker.max_response_bytes = n as usize;
        }
        if let Some(value) = get(vars::POLL_INTERVAL_MS) {
            let ms = in_range(&value, POLL_INTERVAL_MS).map_err(fail(vars::POLL_INTERVAL_MS))?;
            worker.poll_interval = Duration::from_millis(ms.into());
        }
        if let Some(value) = get(vars::GATHER_MS) {
            let ms = in_range(&value, GATHER_MS).map_err(fail(vars::GATHER_MS))?;
            worker.gather = Duration::from_millis(ms.into());
        }
        if let Some(value) = get(vars::LISTEN) {
            settings.worker.listen = match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "on" | "yes" => true,
                "false" | "0" | "off" | "no" => false,
                _ => {
                    return Err(SettingsError {
                        var: vars::LISTEN,
                        problem: SettingProblem::NotABool {
                            got: value.trim().to_owned(),
                        },
                    });
                }
            };
        }
        if let Some(value) = get(vars::DISABLE_AFTER_SECS) {
            let secs =
                in_range(&value, DISABLE_AFTER_SECS).map_err(fail(vars::DISABLE_AFTER_SECS))?;
            settings.disable_after = Duration::from_secs(secs.into());
        }
        if let Some(value) = get(vars::SIGNING_GRACE_SECS) {
            let secs =
                in_range(&value, SIGNING_GRACE_SECS).map_err(fail(vars::SIGNING_GRACE_SECS))?;
            settings.signing_grace = Duration::from_secs(secs.into());
        }
        if let Some(value) = get(vars::PORTAL_KEY) {
            settings.portal_key = Some(PortalKey::parse(&value).map_err(fail(vars::PORTAL_KEY))?);
        }
        if let Some(value) = get(vars::PORTAL_FRAME_ANCESTORS) {
            settings.portal_frame_ancestors =
                check_frame_ancestors(&value).map_err(fail(vars::PORTAL_FRAME_ANCESTORS))?;
        }
        if settings.worker.request_timeout >= settings.claim_lease {
            return Err(SettingsError {
                var: vars::REQUEST_TIMEOUT_SECS,
                problem: SettingProblem::NotShorterThanLease {
                    lease_secs: settings.claim_lease.as_secs(),
                    got_secs: settings.worker.request_timeout.as_secs(),
                },
            });
        }
        Ok(settings)
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            url_policy: UrlPolicy::Production,
            keys: None,
            retry: RetryPolicy::default(),
            claim_lease: DEFAULT_CLAIM_LEASE,
            signature_tolerance: DEFAULT_TOLERANCE,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            worker: WorkerSettings::default(),
            disable_after: DEFAULT_DISABLE_AFTER,
            signing_grace: DEFAULT_SIGNING_GRACE,
            portal_key: None,
            portal_frame_ancestors: DEFAULT_PORTAL_FRAME_ANCESTORS.to_owned(),
            filter_cache: crate::delivery::filter_cache::FilterCache::default(),
        }
    }
}

/// Parses a `WEBHOOK_RETRY_SCHEDULE` value, `5s,5m,30m`, into the delays of
/// [`RetryPolicy::schedule`]; blanks around an entry are ignored. Public so an app with its own
/// configuration source can take the same format.
pub fn parse_retry_schedule(text: &str) -> Result<Vec<Duration>, SettingProblem> {
    let entries: Vec<&str> = text.split(',').map(str::trim).collect();
    if entries.len() > MAX_RETRY_DELAYS {
        return Err(SettingProblem::TooManyDelays {
            count: entries.len(),
        });
    }
    entries
        .iter()
        .enumerate()
        .map(|(index, &entry)| {
            let position = index + 1;
            if entry.is_empty() {
                return Err(SettingProblem::EmptyDelay { position });
            }
            let delay =
                humantime::parse_duration(entry).map_err(|e| SettingProblem::NotADelay {
                    position,
                    got: entry.to_owned(),
                    reason: e.to_string(),
                })?;
            if !(MIN_DELAY..=MAX_DELAY).contains(&delay) {
                return Err(SettingProblem::DelayOutOfRange {
                    position,
                    got: entry.to_owned(),
                });
            }
            Ok(delay)
        })
        .collect()
}

/// Delays in `WEBHOOK_RETRY_SCHEDULE`'s own form (`5s,5m,30m`), so what a log line shows can be
/// set as the variable again.
pub fn format_retry_schedule(delays: impl IntoIterator<Item = Duration>) -> String {
    delays
        .into_iter()
        .map(|delay| humantime::format_duration(delay).to_string())
        .collect::<Vec<_>>()
        .join(",")
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
            (vars::RETRY_SCHEDULE, "1s,2m"),
            (vars::CLAIM_LEASE_SECS, "15"),
            (vars::SIGNATURE_TOLERANCE_SECS, "60"),
            (vars::MAX_PAYLOAD_BYTES, "1024"),
            (vars::WORKER_CONCURRENCY, "4"),
            (vars::WORKER_PER_HOST, "3"),
            (vars::CONNECT_TIMEOUT_SECS, "2"),
            (vars::REQUEST_TIMEOUT_SECS, "5"),
            (vars::MAX_RESPONSE_BYTES, "2048"),
            (vars::POLL_INTERVAL_MS, "250"),
            (vars::GATHER_MS, "0"),
            (vars::DISABLE_AFTER_SECS, "60"),
            (vars::SIGNING_GRACE_SECS, "0"),
            (vars::LISTEN, "off"),
        ])
        .unwrap();
        assert_eq!(s.signing_grace, Duration::ZERO);
        assert_eq!(s.disable_after, Duration::from_secs(60));
        assert_eq!(s.max_payload_bytes, 1024);
        assert_eq!(
            s.worker,
            WorkerSettings {
                concurrency: 4,
                per_host: 3,
                connect_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(5),
                max_response_bytes: 2048,
                poll_interval: Duration::from_millis(250),
                gather: Duration::ZERO,
                listen: false,
            }
        );
        assert_eq!(s.url_policy, UrlPolicy::Development);
        assert_eq!(s.keys.unwrap().current_key_id(), "k1");
        assert_eq!(s.retry.max_attempts, 3);
        assert_eq!(
            s.retry.schedule,
            [Duration::from_secs(1), Duration::from_secs(120)]
        );
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
            (vars::RETRY_SCHEDULE, "5s,,5m"),
            (vars::RETRY_SCHEDULE, "5"),
            (vars::RETRY_SCHEDULE, "0s"),
            (vars::CLAIM_LEASE_SECS, "-5"),
            (vars::CLAIM_LEASE_SECS, "3601"),
            (vars::SIGNATURE_TOLERANCE_SECS, "1.5"),
            (vars::MAX_PAYLOAD_BYTES, "0"),
            (vars::MAX_PAYLOAD_BYTES, "16777216"),
            (vars::WORKER_CONCURRENCY, "1001"),
            (vars::WORKER_PER_HOST, "0"),
            (vars::CONNECT_TIMEOUT_SECS, "0"),
            (vars::REQUEST_TIMEOUT_SECS, "601"),
            (vars::MAX_RESPONSE_BYTES, "1023"),
            (vars::POLL_INTERVAL_MS, "9"),
            (vars::GATHER_MS, "1001"),
            (vars::DISABLE_AFTER_SECS, "59"),
            (vars::LISTEN, "maybe"),
            (vars::DISABLE_AFTER_SECS, "31536001"),
            (vars::SIGNING_GRACE_SECS, "604801"),
            (vars::SIGNING_GRACE_SECS, "-1"),
            (vars::PORTAL_KEY, "c2hvcnQ="),
            (vars::PORTAL_KEY, "not base64!"),
            (vars::PORTAL_FRAME_ANCESTORS, "'self'; script-src *"),
            (vars::PORTAL_FRAME_ANCESTORS, "'none' https://a.example"),
            (vars::PORTAL_FRAME_ANCESTORS, "'unsafe-inline'"),
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
    fn retry_schedule_replaces_the_delays_and_sets_the_attempts() {
        let secs = Duration::from_secs;
        let delays = |s: &WebhookSettings| s.retry.delays().collect::<Vec<_>>();
        let custom = settings(&[(vars::RETRY_SCHEDULE, " 1s, 2m ,1h 30m,500ms")]).unwrap();
        let listed = [secs(1), secs(120), secs(5400), Duration::from_millis(500)];
        assert_eq!(custom.retry.schedule, listed);
        assert_eq!(custom.retry.max_attempts, 5);
        assert_eq!(delays(&custom), listed);
        // The rest of the policy is the default's.
        let default = RetryPolicy::default();
        assert_eq!(
            (custom.retry.jitter, custom.retry.max_retry_after),
            (default.jitter, default.max_retry_after)
        );
        assert_eq!(custom.retry.validate(), Ok(()));

        // WEBHOOK_MAX_ATTEMPTS decides the attempts: the last delay repeats ...
        let more = settings(&[(vars::RETRY_SCHEDULE, "1s,2m"), (vars::MAX_ATTEMPTS, "5")]).unwrap();
        assert_eq!(delays(&more), [secs(1), secs(120), secs(120), secs(120)]);
        // ... or the last delays go unused, in whichever order the variables come.
        let fewer = settings(&[
            (vars::MAX_ATTEMPTS, "2"),
            (vars::RETRY_SCHEDULE, "1s,2m,3m"),
        ])
        .unwrap();
        assert_eq!(delays(&fewer), [secs(1)]);
        assert_eq!(fewer.retry.schedule.len(), 3);

        // Unset or blank: exactly the documented default.
        for unset in [&[][..], &[(vars::RETRY_SCHEDULE, "  ")][..]] {
            assert_eq!(settings(unset).unwrap().retry, default);
        }
        // The most delays allowed.
        let longest = vec!["1m"; MAX_RETRY_DELAYS].join(",");
        let longest = settings(&[(vars::RETRY_SCHEDULE, &longest)]).unwrap();
        assert_eq!(longest.retry.max_attempts, *MAX_ATTEMPTS.end());
    }

    #[test]
    fn retry_schedule_is_written_as_it_is_read() {
        let default = RetryPolicy::default();
        let text = format_retry_schedule(default.delays());
        assert_eq!(text, "5s,5m,30m,2h,5h,10h,10h");
        assert_eq!(parse_retry_schedule(&text).unwrap(), default.schedule);
        let odd = [Duration::from_millis(1500), Duration::from_secs(5400)];
        assert_eq!(format_retry_schedule(odd), "1s 500ms,1h 30m");
        assert_eq!(
            parse_retry_schedule(&format_retry_schedule(odd)).unwrap(),
            odd
        );
    }

    #[test]
    fn retry_schedule_errors_name_the_variable_and_the_entry() {
        let message = |value: &str| {
            let err = settings(&[(vars::RETRY_SCHEDULE, value)]).unwrap_err();
            assert_eq!(err.var, vars::RETRY_SCHEDULE);
            err.to_string()
        };
        let prefix = "invalid WEBHOOK_RETRY_SCHEDULE: ";
        let empty = "is empty; expected comma-separated delays such as `5s,5m,30m`";
        assert_eq!(message("5s,,5m"), format!("{prefix}delay 2 {empty}"));
        assert_eq!(message(",5s"), format!("{prefix}delay 1 {empty}"));
        assert_eq!(message("5s,5m,"), format!("{prefix}delay 3 {empty}"));
        assert_eq!(message(","), format!("{prefix}delay 1 {empty}"));
        let unit = "expected a number and a unit, such as `5s`, `30m`, `2h` or `1h 30m`";
        assert_eq!(
            message("5s,5"),
            format!(
                "{prefix}delay 2 `5` is not a duration (time unit needed, for example 5sec or 5ms); {unit}"
            )
        );
        let unknown = message("5s, 5m ,30x");
        assert!(
            unknown.starts_with(&format!(
                "{prefix}delay 3 `30x` is not a duration (unknown time unit \"x\""
            )),
            "{unknown}"
        );
        assert!(unknown.ends_with(unit), "{unknown}");
        assert!(message("-5s").contains("delay 1 `-5s` is not a duration"));
        assert_eq!(
            message("5s,0s"),
            format!("{prefix}delay 2 `0s` is outside 1ms to 30days")
        );
        assert_eq!(
            message("999us"),
            format!("{prefix}delay 1 `999us` is outside 1ms to 30days")
        );
        assert_eq!(
            message("1h,30days 1s"),
            format!("{prefix}delay 2 `30days 1s` is outside 1ms to 30days")
        );
        // The ends of the range are in it.
        assert!(settings(&[(vars::RETRY_SCHEDULE, "1ms,30days")]).is_ok());
        let too_many = vec!["1m"; MAX_RETRY_DELAYS + 1].join(",");
        assert_eq!(
            message(&too_many),
            format!("{prefix}50 delays, more than the 49 retries of the most attempts allowed")
        );
        // A bad schedule is refused even when WEBHOOK_MAX_ATTEMPTS would not reach the entry.
        let err =
            settings(&[(vars::MAX_ATTEMPTS, "2"), (vars::RETRY_SCHEDULE, "5s,nope")]).unwrap_err();
        assert_eq!(err.var, vars::RETRY_SCHEDULE);
    }

    #[test]
    fn request_timeout_must_be_shorter_than_the_lease() {
        let err = settings(&[
            (vars::CLAIM_LEASE_SECS, "20"),
            (vars::REQUEST_TIMEOUT_SECS, "20"),
        ])
        .unwrap_err();
        assert_eq!(err.var, vars::REQUEST_TIMEOUT_SECS);
        // The default attempt timeout (30 s) against a shorter lease is refused too.
        assert!(settings(&[(vars::CLAIM_LEASE_SECS, "30")]).is_err());
        assert!(settings(&[(vars::CLAIM_LEASE_SECS, "31")]).is_ok());
    }

    #[test]
    fn defaults_of_the_worker() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.max_payload_bytes, 256 * 1024);
        assert_eq!(s.worker.concurrency, 64);
        assert_eq!(s.worker.per_host, 64);
        assert_eq!(s.worker.request_timeout, Duration::from_secs(30));
        assert_eq!(s.disable_after, Duration::from_secs(432_000));
        assert_eq!(s.signing_grace, Duration::from_secs(86_400));
    }

    #[test]
    fn reads_the_portal_settings() {
        let s = settings(&[]).unwrap();
        assert!(s.portal_key.is_none());
        assert_eq!(s.portal_frame_ancestors, "'self'");
        let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let s = settings(&[
            (vars::PORTAL_KEY, key),
            (
                vars::PORTAL_FRAME_ANCESTORS,
                " 'self'   https://app.example.com ",
            ),
        ])
        .unwrap();
        assert_eq!(s.portal_key.as_ref().unwrap().expose().len(), 32);
        assert!(!format!("{s:?}").contains(key));
        assert_eq!(s.portal_frame_ancestors, "'self' https://app.example.com");
    }

    #[test]
    fn key_errors_never_echo_key_material() {
        let material = "c2VjcmV0LWtleS1tYXRlcmlhbC10aGF0LWlzLXRvby1zaG9ydA";
        let err = settings(&[(vars::SECRET_KEYS, &format!("k1:{material}"))]).unwrap_err();
        assert!(!err.to_string().contains(material), "{err}");
    }
}
