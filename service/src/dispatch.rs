//! The delivery worker: claim due deliveries, sign them, send them over an SSRF-safe HTTP
//! client, record each outcome and its attempt row.
//!
//! One [`Dispatcher`] holds what every attempt needs (the settings, the database, the HTTP
//! client), as svix-server hands its workers one context. [`Dispatcher::run_once`] drains what
//! is due now (tests, cron-style use); [`Dispatcher::run`] polls until told to stop, and lets
//! the sends in flight finish first.
//!
//! # The HTTP client
//!
//! `reqwest` with rustls (never OpenSSL), `POST` with `content-type: application/json`, the
//! Standard Webhooks headers from [`sender::prepare_request`] and a user agent naming the
//! product. It follows **no redirects** (a 3xx is the final answer, see [`crate::retry`]), uses
//! no proxy (a proxy would connect for us, past the address check), and reads at most
//! `max_response_bytes` of a response body; the connect and total timeouts come from
//! [`WorkerSettings`](crate::settings::WorkerSettings).
//!
//! # Connect-time SSRF defence
//!
//! The client resolves host names only through a resolver that vets **every** address with
//! [`UrlPolicy::check_resolved`] and hands the connector exactly the vetted addresses: a name
//! that resolves to one public and one private address is refused, and a name that changes its
//! answer between configuration and sending (DNS rebinding) is judged by the answer the socket
//! would use. IP-literal hosts, which the connector does not resolve, are judged by the same
//! policy in [`sender::prepare_request`] before anything is sent. A refusal is recorded with
//! [`ErrorClass::SsrfBlocked`]; nothing is sent. The development policy allows every address.
//!
//! # Outcomes
//!
//! | what happened | [`ErrorClass`] | [`AttemptOutcome`] (decides the retry) |
//! |---|---|---|
//! | 2xx, body within the cap | none | status |
//! | 3xx | `redirect` | status (final) |
//! | other status | `http_status` | status |
//! | body larger than the cap | `body_too_large` | status: the answer counts, the rest is not read |
//! | name did not resolve | `dns` | connection error |
//! | refused, unreachable, connect timeout | `connect` | connection error |
//! | TLS handshake failed | `tls` | connection error |
//! | no answer within the total timeout | `timeout` | timeout |
//! | refused by the URL policy | `ssrf_blocked` | connection error (nothing sent) |
//! | no payload stored, no secret | `not_sendable` | connection error (nothing sent) |
//!
//! Refusals are retryable like connection errors: the owner may fix the URL or the secret, and
//! DNS answers change; the retry schedule bounds them.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use sea_orm::{DatabaseConnection, TransactionTrait};

use crate::deliveries::{self, AttemptRecord, Claim, ErrorClass, RESPONSE_PREFIX_LEN};
use crate::error::{Error, Result};
use crate::retry::{AttemptOutcome, Decision, RetryAfter};
use crate::sender;
use crate::settings::WebhookSettings;
use crate::url_policy::{Resolver, SystemResolver, UrlPolicy, UrlPolicyError};

/// The `user-agent` of every request, so receivers can tell our deliveries apart in their logs.
pub const USER_AGENT: &str = concat!("agent-webhooks/", env!("CARGO_PKG_VERSION"));

/// How much longer than one attempt's timeout a stopping worker waits for its sends in flight.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// The worker's context: settings, database and HTTP client, shared by every attempt.
#[derive(Clone, Debug)]
pub struct Dispatcher {
    settings: Arc<WebhookSettings>,
    db: DatabaseConnection,
    http: reqwest::Client,
}

/// What a drain did, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DrainReport {
    /// Attempts made (claims processed).
    pub attempts: u64,
    /// Attempts that delivered.
    pub delivered: u64,
    /// Attempts that failed and were scheduled again.
    pub retrying: u64,
    /// Attempts after which the delivery was given up.
    pub given_up: u64,
    /// Attempts whose claim had been taken over before the report (the outcome was not stored).
    pub stale: u64,
}

impl DrainReport {
    fn add(&mut self, other: DrainReport) {
        self.attempts += other.attempts;
        self.delivered += other.delivered;
        self.retrying += other.retrying;
        self.given_up += other.given_up;
        self.stale += other.stale;
    }
}

impl Dispatcher {
    /// A dispatcher resolving host names with the operating system's resolver.
    pub fn new(settings: WebhookSettings, db: DatabaseConnection) -> Result<Dispatcher> {
        Self::with_resolver(settings, db, SystemResolver)
    }

    /// A dispatcher resolving host names with `resolver` (every answer still vetted by the
    /// settings' URL policy), for tests and for deployments with their own DNS.
    pub fn with_resolver<R>(
        settings: WebhookSettings,
        db: DatabaseConnection,
        resolver: R,
    ) -> Result<Dispatcher>
    where
        R: Resolver + Send + Sync + 'static,
    {
        let vetting = VettingResolver {
            policy: settings.url_policy,
            inner: Arc::new(resolver),
        };
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(settings.worker.connect_timeout)
            .timeout(settings.worker.request_timeout)
            .dns_resolver(Arc::new(vetting))
            .build()
            .map_err(Error::HttpClient)?;
        Ok(Dispatcher {
            settings: Arc::new(settings),
            db,
            http,
        })
    }

    /// The settings this dispatcher works with.
    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    /// Claims and sends what is due until nothing is due, then returns. Deliveries whose retry
    /// falls due while it runs are sent too; later ones are left for the next call.
    pub async fn run_once(&self) -> Result<DrainReport> {
        self.drain(&AtomicBool::new(false)).await
    }

    /// Drains, waits the poll interval, drains again, until `shutdown` completes. Then it
    /// claims nothing more and waits for the sends in flight (up to the attempt timeout plus a
    /// margin), records what finished and returns; anything unfinished is left to its lease.
    /// A database error is logged and the loop goes on after the poll interval.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> DrainReport {
        let mut shutdown = pin!(shutdown);
        let stop = AtomicBool::new(false);
        let grace = self.settings.worker.request_timeout + SHUTDOWN_MARGIN;
        let mut total = DrainReport::default();
        loop {
            let mut drain = pin!(self.drain(&stop));
            let result = tokio::select! {
                result = &mut drain => result,
                () = &mut shutdown => {
                    stop.store(true, Ordering::SeqCst);
                    match tokio::time::timeout(grace, drain).await {
                        Ok(Ok(report)) => total.add(report),
                        Ok(Err(err)) => tracing::error!(%err, "delivery worker: drain failed"),
                        Err(_) => tracing::warn!(
                            "delivery worker: sends still in flight at the shutdown deadline; \
                             their leases will run out"
                        ),
                    }
                    return total;
                }
            };
            match result {
                Ok(report) => total.add(report),
                Err(err) => tracing::error!(%err, "delivery worker: drain failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.worker.poll_interval) => {}
                () = &mut shutdown => return total,
            }
        }
    }

    async fn drain(&self, stop: &AtomicBool) -> Result<DrainReport> {
        let mut report = DrainReport::default();
        let concurrency = self.settings.worker.concurrency.max(1);
        while !stop.load(Ordering::SeqCst) {
            let claims =
                deliveries::claim_due(&self.db, &self.settings, Utc::now(), concurrency as u64)
                    .await?;
            if claims.is_empty() {
                break;
            }
            let results: Vec<Result<Recorded>> = futures::stream::iter(claims)
                .map(|claim| async move { self.deliver(&claim).await })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            for result in results {
                report.attempts += 1;
                match result? {
                    Recorded::Decided(Decision::Delivered) => report.delivered += 1,
                    Recorded::Decided(Decision::RetryAt(_)) => report.retrying += 1,
                    Recorded::Decided(Decision::GiveUp(_)) => report.given_up += 1,
                    Recorded::Stale => report.stale += 1,
                }
            }
        }
        Ok(report)
    }

    /// Makes one attempt of a claimed delivery and records it: the outcome on the delivery
    /// (guarded by the claim) and a row in the attempt log, in one transaction.
    pub async fn deliver(&self, claim: &Claim) -> Result<Recorded> {
        let started_at = Utc::now();
        let clock = Instant::now();
        let attempt = self.attempt(claim, started_at).await?;
        let finished_at = Utc::now();
        let record = AttemptRecord {
            attempt: claim.attempt,
            started_at,
            finished_at,
            status_code: attempt.status.map(i32::from),
            error_class: attempt.class,
            message: attempt.message,
            response_body_prefix: attempt.body_prefix,
            remote_addr: attempt.remote_addr.map(|addr| addr.to_string()),
        };
        let delivery = &claim.delivery;
        tracing::info!(
            delivery = %delivery.id,
            agent = %delivery.agent_id,
            attempt = claim.attempt,
            status = ?attempt.status,
            class = record.error_class.map(ErrorClass::as_str),
            duration_ms = clock.elapsed().as_millis() as u64,
            "delivery attempt",
        );
        let txn = self.db.begin().await?;
        match deliveries::record_outcome(&txn, &self.settings, claim, &attempt.outcome, finished_at)
            .await
        {
            Ok(decision) => {
                deliveries::record_attempt(&txn, &delivery.id, &record).await?;
                txn.commit().await?;
                Ok(Recorded::Decided(decision))
            }
            Err(Error::StaleClaim { .. }) => {
                txn.rollback().await?;
                // The attempt happened all the same: keep it in the log.
                deliveries::record_attempt(&self.db, &delivery.id, &record).await?;
                tracing::warn!(delivery = %delivery.id, attempt = claim.attempt, "stale claim: outcome not stored");
                Ok(Recorded::Stale)
            }
            Err(err) => Err(err),
        }
    }

    /// Signs and sends; fails only on database errors (left to the lease).
    async fn attempt(&self, claim: &Claim, now: DateTime<Utc>) -> Result<Attempt> {
        let Some(payload) = claim.payload.clone() else {
            return Ok(Attempt::refused(
                ErrorClass::NotSendable,
                "no payload stored (enqueued before payloads were kept)".to_owned(),
            ));
        };
        let request =
            match sender::prepare_request(&self.db, &self.settings, claim, payload, now).await {
                Ok(request) => request,
                Err(Error::Url(err)) => {
                    return Ok(Attempt::refused(ErrorClass::SsrfBlocked, err.to_string()));
                }
                Err(err @ Error::Db(_)) => return Err(err),
                Err(err) => return Ok(Attempt::refused(ErrorClass::NotSendable, err.to_string())),
            };
        let mut builder = self
            .http
            .post(request.url)
            .header(CONTENT_TYPE, "application/json");
        for (name, value) in request.headers.pairs() {
            builder = builder.header(name, value);
        }
        match builder.body(request.body).send().await {
            Ok(response) => Ok(self.read_response(response).await),
            Err(err) => Ok(Attempt::failed(&err)),
        }
    }

    async fn read_response(&self, mut response: reqwest::Response) -> Attempt {
        let code = response.status().as_u16();
        let remote_addr = response.remote_addr();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header(RETRY_AFTER).and_then(|v| RetryAfter::parse(&v, Utc::now()));
        let location = header(LOCATION);
        let cap = self.settings.worker.max_response_bytes;
        let mut body = Vec::new();
        let mut too_large = false;
        let mut read_error = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = cap - body.len();
                    if chunk.len() > room {
                        too_large = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(err) => {
                    read_error = Some(err);
                    break;
                }
            }
        }
        // Dropping the response closes the connection without reading the rest.
        drop(response);
        let (class, message) = if too_large {
            (
                Some(ErrorClass::BodyTooLarge),
                Some(format!(
                    "HTTP {code}; response body larger than {cap} bytes, not read further"
                )),
            )
        } else if let Some(err) = read_error {
            let class = if err.is_timeout() {
                ErrorClass::Timeout
            } else {
                ErrorClass::Connect
            };
            (
                Some(class),
                Some(format!(
                    "HTTP {code}; reading the body failed: {}",
                    chain(&err)
                )),
            )
        } else if (300..400).contains(&code) {
            let to = location.map_or_else(String::new, |l| format!(" to {l}"));
            (
                Some(ErrorClass::Redirect),
                Some(format!("HTTP {code}: redirect{to} not followed")),
            )
        } else if !(200..300).contains(&code) {
            (Some(ErrorClass::HttpStatus), Some(format!("HTTP {code}")))
        } else {
            (None, None)
        };
        body.truncate(RESPONSE_PREFIX_LEN);
        Attempt {
            outcome: AttemptOutcome::Status { code, retry_after },
            status: Some(code),
            class,
            message,
            body_prefix: (!body.is_empty()).then(|| String::from_utf8_lossy(&body).into_owned()),
            remote_addr,
        }
    }
}

/// What recording an attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The outcome was stored; this is what comes next.
    Decided(Decision),
    /// The claim had been taken over (its lease ran out): the attempt is in the log, the
    /// outcome was not stored.
    Stale,
}

/// One attempt's result before it is stored.
struct Attempt {
    outcome: AttemptOutcome,
    status: Option<u16>,
    class: Option<ErrorClass>,
    message: Option<String>,
    body_prefix: Option<String>,
    remote_addr: Option<SocketAddr>,
}

impl Attempt {
    /// Nothing was sent.
    fn refused(class: ErrorClass, message: String) -> Attempt {
        Attempt {
            outcome: AttemptOutcome::Connection(message.clone()),
            status: None,
            class: Some(class),
            message: Some(message),
            body_prefix: None,
            remote_addr: None,
        }
    }

    /// The request failed before a response arrived.
    fn failed(err: &reqwest::Error) -> Attempt {
        let message = chain(err);
        let class = classify_error(err);
        let outcome = match class {
            ErrorClass::Timeout => AttemptOutcome::Timeout,
            _ => AttemptOutcome::Connection(message.clone()),
        };
        Attempt {
            outcome,
            status: None,
            class: Some(class),
            message: Some(message),
            body_prefix: None,
            remote_addr: None,
        }
    }
}

/// Which class a transport error belongs to, from the causes it carries.
fn classify_error(err: &reqwest::Error) -> ErrorClass {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    let mut tls = false;
    while let Some(cause) = source {
        if let Some(refusal) = find::<UrlPolicyError>(cause) {
            return match refusal {
                UrlPolicyError::ResolutionFailed { .. } | UrlPolicyError::NoAddresses { .. } => {
                    ErrorClass::Dns
                }
                _ => ErrorClass::SsrfBlocked,
            };
        }
        tls |= find::<rustls::Error>(cause).is_some();
        source = cause.source();
    }
    if tls {
        ErrorClass::Tls
    } else if err.is_connect() {
        ErrorClass::Connect
    } else if err.is_timeout() {
        ErrorClass::Timeout
    } else {
        ErrorClass::Connect
    }
}

/// `cause` as a `T`, also when it is an `io::Error` wrapping a `T`, however deeply (the
/// resolver's and the TLS layer's errors arrive that way, and `io::Error::source` skips the
/// error it wraps).
fn find<'a, T: StdError + 'static>(cause: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    if let Some(found) = cause.downcast_ref::<T>() {
        return Some(found);
    }
    let mut current = cause.downcast_ref::<std::io::Error>()?.get_ref()?;
    loop {
        if let Some(found) = current.downcast_ref::<T>() {
            return Some(found);
        }
        current = current.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

/// An error and its causes on one line, without the URL (it may hold a token in its query).
fn chain(err: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(cause) = source {
        let part = if text.is_empty() {
            // reqwest's own message names the URL; say what failed without it.
            match err.status() {
                Some(status) => format!("HTTP {status}"),
                None if err.is_timeout() => "timed out".to_owned(),
                None if err.is_connect() => "connect failed".to_owned(),
                None => "request failed".to_owned(),
            }
        } else {
            cause.to_string()
        };
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// The resolver the HTTP client connects through: every address is vetted by the policy, and
/// only vetted addresses reach the connector.
struct VettingResolver<R> {
    policy: UrlPolicy,
    inner: Arc<R>,
}

impl<R: Resolver + Send + Sync + 'static> Resolve for VettingResolver<R> {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let host = name.as_str();
            // The scheme and port do not matter here: the connector keeps the request's own.
            // Errors are boxed by `?` as they are (not boxed twice), so that the classifier
            // finds the `UrlPolicyError` among the causes.
            let url = url::Url::parse(&format!("https://{host}/"))
                .map_err(UrlPolicyError::Unparseable)?;
            let addrs = policy.check_resolved(&url, inner.as_ref()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::net::IpAddr;

    struct Fixed(Vec<IpAddr>);

    impl Resolver for Fixed {
        async fn resolve(&self, _host: &str, _port: u16) -> io::Result<Vec<IpAddr>> {
            Ok(self.0.clone())
        }
    }

    async fn vet(policy: UrlPolicy, ips: &[&str]) -> Result<Vec<SocketAddr>, String> {
        let resolver = VettingResolver {
            policy,
            inner: Arc::new(Fixed(ips.iter().map(|ip| ip.parse().unwrap()).collect())),
        };
        match resolver
            .resolve(Name::from_str("hooks.example.com").unwrap())
            .await
        {
            Ok(addrs) => Ok(addrs.collect()),
            Err(err) => Err(err.to_string()),
        }
    }

    use std::str::FromStr;

    #[tokio::test]
    async fn every_resolved_address_is_vetted() {
        let public = vet(
            UrlPolicy::Production,
            &["93.184.216.34", "2606:2800:220:1::"],
        )
        .await;
        assert_eq!(public.unwrap().len(), 2);
        // One private address among public ones refuses the name.
        let mixed = vet(UrlPolicy::Production, &["93.184.216.34", "10.0.0.7"]).await;
        assert!(mixed.unwrap_err().contains("10.0.0.7"));
        let metadata = vet(UrlPolicy::Production, &["169.254.169.254"]).await;
        assert!(metadata.is_err());
        // Development allows loopback for local receivers.
        assert_eq!(
            vet(UrlPolicy::Development, &["127.0.0.1"]).await.unwrap(),
            vec!["127.0.0.1:443".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn user_agent_names_the_product() {
        assert!(USER_AGENT.starts_with("agent-webhooks/"));
    }
}
