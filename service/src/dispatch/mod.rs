//! The delivery worker: claim due deliveries, sign them, send them over an SSRF-safe HTTP
//! client, and record outcomes and attempt rows in batches.
//!
//! # Concurrency
//!
//! A drain keeps up to `concurrency` claims in flight and claims again once half are done, so
//! one claim statement serves several deliveries and no slot waits for a batch's slowest
//! request. A claim that does not fill the free slots means nothing more is due: the running
//! worker claims again only when woken (a notification, or the poll), not to find nothing.
//! On PostgreSQL one worker per database listens for notifications (see
//! [`LISTENER_LOCK`]); the others poll and claim whenever their slots free up, so an enqueue
//! wakes one claim however many workers run. Workers share nothing but the database: run
//! as many as the receivers' latency needs, on any machines (`docs/deliveries.md`,
//! "Several workers"). At most `per_host` go to one host name at once; a delivery that cannot get its
//! host's turn while its lease still covers an attempt is released ([`delivery::release`]),
//! so it is never sent by two workers. Claims are oldest first, so one host's backlog can hold
//! every slot.
//!
//! # Statements per delivery
//!
//! One claim per batch, then one read of the batch's agents joined with their previous secrets.
//! Finished attempts are recorded together, one transaction at a time beside the sends
//! ([`delivery::record_outcomes`], [`delivery::record_attempts`]): a busy worker records many
//! per transaction, an idle one each as it ends. A worker killed between a send and its
//! recording leaves the claim to its lease: the receiver gets the same `webhook-id` again and
//! can drop the duplicate. A batch the database refuses for one row's sake is recorded row by
//! row (`record.rs`). Claims are decided by the database's clock ([`Now::Database`]); the
//! instants the worker records and signs follow that clock through the offset each claim
//! measures.
//!
//! # The HTTP client
//!
//! `reqwest` with rustls, following **no redirects** (see [`crate::delivery::retry`]) and no
//! proxy (a proxy would connect past the address check), reading at most `max_response_bytes`
//! of a body. Its resolver vets **every** address with
//! [`UrlPolicy::check_resolved`](crate::webhook::url_policy::UrlPolicy::check_resolved) and
//! connects only to vetted ones, so a name that resolves to one public and one private address,
//! or changes its answer after configuration (DNS rebinding), is refused. IP-literal hosts are
//! checked with [`UrlPolicy::check`](crate::webhook::url_policy::UrlPolicy::check) before
//! anything is signed. Metric names are in [`crate::metrics`].
//!
//! # Outcomes
//!
//! | what happened | [`ErrorClass`] | [`AttemptOutcome`](crate::delivery::retry::AttemptOutcome) (decides the retry) |
//! |---|---|---|
//! | 2xx, body within the cap | none | status |
//! | 2xx, then reading the body failed or timed out | `timeout` or `connect` | status: delivered (the receiver accepted it; the class says the rest of its answer was lost) |
//! | 3xx | `redirect` | status (final) |
//! | other status | `http_status` | status |
//! | body larger than the cap | `body_too_large` | status: the answer counts, the rest is not read |
//! | name did not resolve | `dns` | connection error |
//! | refused, unreachable, connect timeout | `connect` | connection error |
//! | TLS handshake failed | `tls` | connection error |
//! | no answer within the total timeout | `timeout` | timeout |
//! | refused by the URL policy | `ssrf_blocked` | connection error (nothing sent) |
//! | no payload stored, no secret, a stored secret that is not an envelope | `not_sendable` | connection error (nothing sent) |
//! | the agent was deleted after the enqueue | `not_sendable` | agent deleted: given up at once (nothing sent) |
//! | the key ring does not open the agent's keys | none: no attempt | the claim is given back unsent and uncounted, logged as an error, counted in [`KEY_FAULTS`](crate::metrics::KEY_FAULTS) |
//!
//! Refusals are retryable like connection errors: the owner may fix the URL or the secret, and
//! DNS answers change; the retry schedule bounds them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use sea_orm::DatabaseConnection;
#[cfg(feature = "postgres")]
use sea_orm::sqlx::postgres::PgListener;
use tokio::sync::Notify;

use crate::delivery::retry::Decision;
use crate::delivery::{self, AttemptRecord, Claim, ErrorClass, Now};
use crate::error::{Error, Result};
use crate::settings::WebhookSettings;
use crate::webhook::signing_secrets::{self, LiveKeys};
use crate::webhook::url_policy::{Resolver, SystemResolver};

mod client;
mod hosts;
mod record;
pub mod sign;

use client::Attempt;
pub use client::USER_AGENT;
use hosts::{HostLimits, host_key};
use record::FinishedAttempt;

/// How much longer than one attempt's timeout a stopping worker waits for its sends in flight.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// Lease left, beyond one attempt's timeout, for a delivery that waited for its host to be sent:
/// its recording may wait for the one in progress (on SQLite behind this process's writes).
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The worker's context, shared by every attempt, as svix-server hands its workers one context.
#[derive(Clone, Debug)]
pub struct Dispatcher {
    settings: Arc<WebhookSettings>,
    db: DatabaseConnection,
    http: reqwest::Client,
    hosts: Arc<HostLimits>,
    /// On SQLite this process's writes take turns here: writers queued in SQLite's busy handler
    /// sleep in growing steps and give up, so concurrent recordings were slow and could fail
    /// with "database is locked".
    sqlite_writes: Option<Arc<tokio::sync::Mutex<()>>>,
    clock: fn() -> DateTime<Utc>,
    clock_offset: Arc<ClockOffset>,
}

/// The database's clock minus this host's, in microseconds, measured from each claim's lease,
/// so the instants the worker records and signs follow the clock that decides claims.
#[derive(Debug, Default)]
struct ClockOffset(std::sync::atomic::AtomicI64);

impl ClockOffset {
    /// The database read its clock between `before` and `after`, taken as the middle.
    fn measure(
        &self,
        claims: &[Claim],
        settings: &WebhookSettings,
        before: DateTime<Utc>,
        after: DateTime<Utc>,
    ) {
        let Some(claim) = claims.first() else { return };
        let database = claim.lease_until - crate::delivery::lease(settings);
        let host = before + (after - before) / 2;
        if let Some(micros) = (database - host).num_microseconds() {
            self.0.store(micros, Ordering::Relaxed);
        }
    }

    fn get(&self) -> chrono::TimeDelta {
        chrono::TimeDelta::microseconds(self.0.load(Ordering::Relaxed))
    }
}

/// What a drain did, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DrainReport {
    pub attempts: u64,
    pub delivered: u64,
    pub retrying: u64,
    pub given_up: u64,
    /// Claim taken over before the report: the outcome was not stored.
    pub stale: u64,
    /// Given back unsent (host busy); not counted as attempts.
    pub released: u64,
    /// The database refused the outcome.
    pub unrecorded: u64,
    /// Given back unsent: the agent's keys do not open with the key ring; not attempts.
    pub key_faults: u64,
}

impl DrainReport {
    fn add(&mut self, other: DrainReport) {
        self.attempts += other.attempts;
        self.delivered += other.delivered;
        self.retrying += other.retrying;
        self.given_up += other.given_up;
        self.stale += other.stale;
        self.released += other.released;
        self.unrecorded += other.unrecorded;
        self.key_faults += other.key_faults;
    }

    fn count(&mut self, recorded: Recorded) {
        match recorded {
            Recorded::Released => {
                self.released += 1;
                return;
            }
            Recorded::KeyFault => {
                self.key_faults += 1;
                return;
            }
            Recorded::Decided(Decision::Delivered) => self.delivered += 1,
            Recorded::Decided(Decision::RetryAt(_)) => self.retrying += 1,
            Recorded::Decided(Decision::GiveUp(_)) => self.given_up += 1,
            Recorded::Stale => self.stale += 1,
            Recorded::Unrecorded => self.unrecorded += 1,
        }
        self.attempts += 1;
    }
}

impl Dispatcher {
    pub fn new(settings: WebhookSettings, db: DatabaseConnection) -> Result<Dispatcher> {
        Self::with_resolver(settings, db, SystemResolver)
    }

    /// For tests and deployments with their own DNS; every answer is still vetted.
    pub fn with_resolver<R>(
        settings: WebhookSettings,
        db: DatabaseConnection,
        resolver: R,
    ) -> Result<Dispatcher>
    where
        R: Resolver + Send + Sync + 'static,
    {
        let http = client::build(&settings, resolver)?;
        let sqlite = db.get_database_backend() == sea_orm::DbBackend::Sqlite;
        Ok(Dispatcher {
            sqlite_writes: sqlite.then(Arc::default),
            clock: Utc::now,
            clock_offset: Arc::default(),
            hosts: Arc::new(HostLimits::new(settings.worker.per_host)),
            settings: Arc::new(settings),
            db,
            http,
        })
    }

    /// For tests that skew the host's clock; claims follow the database's clock either way
    /// ([`Now::Database`]).
    pub fn with_clock(mut self, clock: fn() -> DateTime<Utc>) -> Dispatcher {
        self.clock = clock;
        self
    }

    /// Now on the database's clock, as far as the last claim measured it.
    fn now(&self) -> DateTime<Utc> {
        (self.clock)() + self.clock_offset.get()
    }

    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    /// Claims and sends until nothing is due (tests, cron-style use).
    pub async fn run_once(&self) -> Result<DrainReport> {
        self.drain(&AtomicBool::new(false), Mode::Once, None).await
    }

    /// Drains and polls until `shutdown` completes, then lets the sends in flight finish (up to
    /// the attempt timeout plus a margin) and leaves the rest to their leases. A database error
    /// is logged and the loop goes on.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> DrainReport {
        let mut shutdown = pin!(shutdown);
        let stop = AtomicBool::new(false);
        let grace = self.settings.worker.request_timeout + SHUTDOWN_MARGIN;
        let mut total = DrainReport::default();
        // Dropping the set stops the listening task.
        let mut listener = tokio::task::JoinSet::new();
        let wake = self.listen(&mut listener).await;
        let mut gather_until = None;
        loop {
            let mut drain = pin!(self.drain(&stop, Mode::Running(wake.as_deref()), gather_until));
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
            gather_until = tokio::select! {
                () = tokio::time::sleep(self.settings.worker.poll_interval) => None,
                () = notified(wake.as_deref()) => {
                    Some(tokio::time::Instant::now() + self.settings.worker.gather)
                }
                () = &mut shutdown => return total,
            };
        }
    }

    /// On PostgreSQL with `listen`, a task that wakes the worker on each
    /// [`delivery::NOTIFY_CHANNEL`] notification; `None` (poll only) elsewhere or on failure.
    ///
    /// Of all the workers on one database only one listens at a time: the one whose listening
    /// connection holds the session advisory lock [`LISTENER_LOCK`]. Every notification would
    /// otherwise wake every idle worker, each would send a claim, and all but one would come back
    /// empty. The others poll every `poll_interval` and try for the lock each time, so when the
    /// listening process ends (its connection and lock go with it) another takes over within one
    /// interval. A busy worker needs no wake-up: it claims again as its sends finish.
    #[cfg(feature = "postgres")]
    async fn listen(&self, tasks: &mut tokio::task::JoinSet<()>) -> Option<Arc<Notify>> {
        if !self.settings.worker.listen
            || self.db.get_database_backend() != sea_orm::DbBackend::Postgres
        {
            return None;
        }
        let options = (*self.db.get_postgres_connection_pool().connect_options()).clone();
        let wake = Arc::new(Notify::new());
        let waker = Arc::clone(&wake);
        let poll = self.settings.worker.poll_interval;
        tasks.spawn(async move {
            loop {
                match listen_when_first(&options, poll).await {
                    Ok(mut listener) => loop {
                        match listener.try_recv().await {
                            // Several notifications before the worker looks make one wake-up.
                            Ok(Some(_)) => waker.notify_one(),
                            // The connection, and the lock with it, was lost: start over rather
                            // than let the listener reconnect without the lock.
                            Ok(None) => break,
                            Err(err) => {
                                tracing::warn!(%err, "delivery worker: LISTEN connection failed; reconnecting");
                                break;
                            }
                        }
                    },
                    Err(err) => {
                        tracing::warn!(%err, "delivery worker: cannot LISTEN; polling until it can");
                    }
                }
                // Whatever was notified meanwhile is found by the next claim.
                waker.notify_one();
                tokio::time::sleep(poll.max(Duration::from_secs(1))).await;
            }
        });
        Some(wake)
    }

    /// Without the `postgres` feature there is no PostgreSQL pool to listen on: poll only.
    #[cfg(not(feature = "postgres"))]
    async fn listen(&self, _tasks: &mut tokio::task::JoinSet<()>) -> Option<Arc<Notify>> {
        None
    }

    /// See the module documentation. A database error stops the claiming and is returned once
    /// the sends in flight are recorded.
    ///
    /// [`Mode::Once`] claims until a claim comes back empty. [`Mode::Running`] takes a claim
    /// that did not fill its free slots as "nothing more is due" and ends the drain once its
    /// sends are recorded, without a claim that would find nothing: a wake-up (or the next poll)
    /// starts the next one, and a wake-up during the drain lets it claim again beside the sends
    /// in flight.
    ///
    /// A claim that follows a wake-up waits until the wake-up's `gather_until` (the worker's
    /// `gather` after it), so that it brings what is enqueued meanwhile; `run` hands in the
    /// deadline of the wake-up that started this drain.
    async fn drain(
        &self,
        stop: &AtomicBool,
        mode: Mode<'_>,
        mut gather_until: Option<tokio::time::Instant>,
    ) -> Result<DrainReport> {
        let mut report = DrainReport::default();
        let concurrency = self.settings.worker.concurrency.max(1);
        // Tasks, not futures polled by this loop: while it waits for a claim, the sends in
        // flight and the recording still make progress. The recording is one of them.
        let mut tasks = tokio::task::JoinSet::new();
        let mut recording: Option<tokio::task::Id> = None;
        // Set when a claim found nothing: claim again only once the sends in flight are done
        // and recorded (their retries may be due by then), not after each of them.
        let mut nothing_due = false;
        let mut failure = None;
        let mut finished = Vec::new();
        loop {
            let sends = tasks.len() - usize::from(recording.is_some());
            let free = concurrency - sends;
            let refill = if sends == 0 {
                !(nothing_due && (recording.is_some() || matches!(mode, Mode::Running(_))))
            } else {
                !nothing_due && free * 2 >= concurrency
            };
            let gathering = gather_until.is_some_and(|until| tokio::time::Instant::now() < until);
            if failure.is_none() && refill && !gathering && !stop.load(Ordering::SeqCst) {
                gather_until = None;
                if let Mode::Running(Some(wake)) = mode {
                    forget_wake_ups(wake);
                }
                match self.claim(free).await {
                    Ok((claims, keys)) => {
                        nothing_due = match mode {
                            Mode::Once => claims.is_empty(),
                            Mode::Running(_) => claims.len() < free,
                        };
                        for claim in claims {
                            let this = self.clone();
                            let keys = Arc::clone(&keys);
                            tasks.spawn(async move { this.send_claimed(claim, &keys).await });
                        }
                    }
                    Err(err) => failure = Some(err),
                }
            }
            // Wait for one task (or, with nothing due, a wake-up), then take every other one
            // that has finished meanwhile.
            let mut joined = match (mode, gather_until) {
                (_, Some(until)) if gathering => {
                    if tasks.is_empty() {
                        tokio::time::sleep_until(until).await;
                        continue;
                    }
                    tokio::select! {
                        joined = tasks.join_next_with_id() => joined,
                        () = tokio::time::sleep_until(until) => continue,
                    }
                }
                (Mode::Running(Some(wake)), _)
                    if nothing_due && failure.is_none() && !stop.load(Ordering::SeqCst) =>
                {
                    tokio::select! {
                        joined = tasks.join_next_with_id() => joined,
                        () = wake.notified() => {
                            nothing_due = false;
                            gather_until =
                                Some(tokio::time::Instant::now() + self.settings.worker.gather);
                            continue;
                        }
                    }
                }
                _ => tasks.join_next_with_id().await,
            };
            if joined.is_none() {
                break;
            }
            while let Some(result) = joined {
                match result {
                    Ok((_, Ok(Step::Sent(done)))) => finished.push(*done),
                    Ok((_, Ok(Step::Released))) => report.count(Recorded::Released),
                    Ok((_, Ok(Step::KeyFault))) => report.count(Recorded::KeyFault),
                    Ok((_, Ok(Step::Recorded(recorded)))) => {
                        recording = None;
                        recorded.into_iter().for_each(|r| report.count(r));
                    }
                    Ok((id, Err(err))) => {
                        if recording == Some(id) {
                            // Those attempts are left to their leases: sent again, with the
                            // same `webhook-id`, once the lease runs out.
                            recording = None;
                        }
                        failure.get_or_insert(err);
                    }
                    // A task that panicked: its claims are left to their leases.
                    Err(panicked) => {
                        if recording == Some(panicked.id()) {
                            recording = None;
                        }
                        tracing::error!(%panicked, "delivery worker: a task failed");
                    }
                }
                joined = tasks.try_join_next_with_id();
            }
            if recording.is_none() && !finished.is_empty() {
                let this = self.clone();
                let batch = std::mem::take(&mut finished);
                let task = tasks.spawn(async move { this.record(batch).await.map(Step::Recorded) });
                recording = Some(task.id());
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(report),
        }
    }

    /// The keys are read at the claim: a rotation or revocation takes effect from the next
    /// claim, within one lease.
    async fn claim(&self, limit: usize) -> Result<(Vec<Claim>, Arc<AgentKeys>)> {
        let claims = {
            let _turn = self.write_turn().await;
            let before = (self.clock)();
            let claims =
                delivery::claim_due(&self.db, &self.settings, Now::Database, limit as u64).await?;
            self.clock_offset
                .measure(&claims, &self.settings, before, (self.clock)());
            let result = if claims.is_empty() { "empty" } else { "rows" };
            metrics::counter!(crate::metrics::CLAIMS, "result" => result).increment(1);
            claims
        };
        let now = self.now();
        for claim in claims.iter().filter(|claim| claim.attempt == 1) {
            let lag = (now - claim.delivery.created_at).to_std();
            metrics::histogram!(crate::metrics::CLAIM_LAG)
                .record(lag.unwrap_or_default().as_secs_f64());
        }
        let agents: Vec<&str> = claims
            .iter()
            .map(|c| c.delivery.agent_id.as_str())
            .collect();
        if agents.is_empty() {
            return Ok((claims, Arc::default()));
        }
        match signing_secrets::live_keys(&self.db, &self.settings, &agents, now).await {
            Ok(keys) => Ok((claims, Arc::new(keys))),
            Err(err) => {
                // Nothing was sent: give the claims back (due now) rather than leave them to
                // their leases; if the database is gone, the leases run out all the same.
                let _turn = self.write_turn().await;
                for claim in &claims {
                    if let Err(release) = delivery::release(&self.db, claim, now).await {
                        tracing::warn!(%release, delivery = %claim.delivery.id, "claim not released");
                    }
                }
                Err(err)
            }
        }
    }

    /// Waits for the delivery's host to have a free slot, then makes the attempt; gives the
    /// claim back unsent when the wait would leave the lease too short for an attempt.
    async fn send_claimed(&self, claim: Claim, keys: &AgentKeys) -> Result<Step> {
        if let Some(Err(err)) = keys.get(&claim.delivery.agent_id)
            && err.is_key_ring_fault()
        {
            return self.release_key_fault(&claim, err).await;
        }
        let host = host_key(&claim.delivery.webhook_url);
        let budget = (claim.lease_until - self.now())
            .to_std()
            .unwrap_or_default()
            .saturating_sub(self.settings.worker.request_timeout + LEASE_MARGIN);
        let Some(_permit) = self.hosts.acquire(&host, budget).await else {
            tracing::info!(delivery = %claim.delivery.id, host, "host busy: claim released");
            metrics::counter!(crate::metrics::RELEASED).increment(1);
            // Due again after a poll interval, so that a host busy for longer than the leases
            // allow does not make the worker claim and release in a loop.
            let due = self.now()
                + chrono::TimeDelta::from_std(self.settings.worker.poll_interval)
                    .unwrap_or_default();
            let _turn = self.write_turn().await;
            return match delivery::release(&self.db, &claim, due).await {
                Ok(()) | Err(Error::StaleClaim { .. }) => Ok(Step::Released),
                Err(err) => Err(err),
            };
        };
        let in_flight = metrics::gauge!(crate::metrics::IN_FLIGHT);
        in_flight.increment(1.0);
        let done = self.attempt(claim, keys).await;
        in_flight.decrement(1.0);
        Ok(Step::Sent(Box::new(done)))
    }

    /// Keys the key ring cannot open are the operator's fault, not the receiver's: no attempt,
    /// health untouched, due again after one lease so the worker does not spin on it.
    async fn release_key_fault(&self, claim: &Claim, err: &Error) -> Result<Step> {
        tracing::error!(
            %err,
            delivery = %claim.delivery.id,
            agent = %claim.delivery.agent_id,
            "cannot open the agent's signing keys with WEBHOOK_SECRET_KEYS: claim released unsent; fix the key ring",
        );
        metrics::counter!(crate::metrics::KEY_FAULTS).increment(1);
        let due =
            self.now() + chrono::TimeDelta::from_std(self.settings.claim_lease).unwrap_or_default();
        let _turn = self.write_turn().await;
        match delivery::release(&self.db, claim, due).await {
            Ok(()) | Err(Error::StaleClaim { .. }) => Ok(Step::KeyFault),
            Err(err) => Err(err),
        }
    }

    /// This process's turn to write, on SQLite (see `sqlite_writes`); nothing elsewhere.
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.sqlite_writes {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }

    async fn attempt(&self, mut claim: Claim, keys: &AgentKeys) -> FinishedAttempt {
        let started_at = self.now();
        let clock = Instant::now();
        // The body moves into the request; the recording needs only the claim's guard.
        let payload = claim.payload.take();
        let attempt = self.send(&claim, payload, keys, started_at).await;
        let took = clock.elapsed();
        metrics::histogram!(crate::metrics::ATTEMPT_DURATION).record(took.as_secs_f64());
        let record = AttemptRecord {
            attempt: claim.attempt,
            started_at,
            finished_at: self.now(),
            status_code: attempt.status.map(i32::from),
            error_class: attempt.class,
            message: attempt.message,
            response_body_prefix: attempt.body_prefix,
            remote_addr: attempt.remote_addr.map(|addr| addr.to_string()),
        };
        tracing::info!(
            delivery = %claim.delivery.id,
            agent = %claim.delivery.agent_id,
            attempt = claim.attempt,
            status = ?attempt.status,
            class = record.error_class.map(ErrorClass::as_str),
            duration_ms = took.as_millis() as u64,
            "delivery attempt",
        );
        FinishedAttempt {
            claim,
            outcome: attempt.outcome,
            record,
        }
    }

    /// Signs and sends; every failure becomes the attempt's outcome.
    async fn send(
        &self,
        claim: &Claim,
        payload: Option<Vec<u8>>,
        keys: &AgentKeys,
        now: DateTime<Utc>,
    ) -> Attempt {
        let Some(payload) = payload else {
            return Attempt::refused(
                ErrorClass::NotSendable,
                "no payload stored (enqueued before payloads were kept)".to_owned(),
            );
        };
        let url = match self.settings.url_policy.check(&claim.delivery.webhook_url) {
            Ok(url) => url,
            Err(err) => return Attempt::refused(ErrorClass::SsrfBlocked, err.to_string()),
        };
        let signed = match keys.get(&claim.delivery.agent_id) {
            Some(Ok(keys)) => sign::sign_request(url, claim, keys, payload, now),
            // Key-ring faults were released before the send (`release_key_fault`); an agent
            // deleted since the enqueue will never be sent to; a stored value that is not what
            // it should be (malformed, not a secret) is the agent's data, retried like one.
            Some(Err(err @ Error::AgentNotFound(_))) => {
                return Attempt::agent_deleted(err.to_string());
            }
            Some(Err(err)) => return Attempt::refused(ErrorClass::NotSendable, err.to_string()),
            None => {
                let gone = Error::AgentNotFound(claim.delivery.agent_id.clone());
                return Attempt::agent_deleted(gone.to_string());
            }
        };
        let request = match signed {
            Ok(request) => request,
            Err(err) => return Attempt::refused(ErrorClass::NotSendable, err.to_string()),
        };
        client::post(
            &self.http,
            request,
            self.settings.worker.max_response_bytes,
            self.now(),
        )
        .await
    }
}

/// The signing keys of a claimed batch's agents, by agent id (see [`Dispatcher::claim`]).
type AgentKeys = HashMap<String, Result<LiveKeys>>;

/// How a drain ends (see [`Dispatcher::drain`]).
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// `run_once`: until a claim finds nothing.
    Once,
    /// `run`: when nothing more is due, woken (on PostgreSQL with `listen`) by this.
    Running(Option<&'a Notify>),
}

/// What one of a drain's tasks came to.
enum Step {
    Sent(Box<FinishedAttempt>),
    /// Nothing was sent: the delivery's host stayed busy, and the claim was given back.
    Released,
    /// The agent's keys do not open with the key ring; the claim was given back.
    KeyFault,
    Recorded(Vec<Recorded>),
}

/// What recording an attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    Decided(Decision),
    /// The lease ran out and the claim was taken over: the attempt is logged, not its outcome.
    Stale,
    /// Nothing was sent: the delivery's host stayed busy, and the claim was given back.
    Released,
    /// The key ring does not open the agent's keys (the operator's fault); given back uncounted.
    KeyFault,
    /// The database refused the outcome: the delivery is sent again once its lease runs out.
    Unrecorded,
}

/// The key of the session advisory lock held by the one worker per database that listens
/// (see `Dispatcher::listen`); a constant chosen for this purpose ("awhk" in ASCII).
pub const LISTENER_LOCK: i64 = 0x6177_686b;

/// A connection that listens on [`delivery::NOTIFY_CHANNEL`] once it holds [`LISTENER_LOCK`],
/// trying for the lock every `poll`.
///
/// The connection is its own, in a pool of one that only the listener holds, never one of the
/// worker's pool: the lock is the session's, and a pooled connection would go back to the
/// app's pool still holding it when the worker stops (or its task is dropped), so no other
/// worker could listen. Dropped, the listener closes its connection and the lock goes with it.
#[cfg(feature = "postgres")]
async fn listen_when_first(
    options: &sea_orm::sqlx::postgres::PgConnectOptions,
    poll: Duration,
) -> std::result::Result<PgListener, sea_orm::sqlx::Error> {
    let own = sea_orm::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&own).await?;
    loop {
        let (first,): (bool,) = sea_orm::sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(LISTENER_LOCK)
            .fetch_one(&mut listener)
            .await?;
        if first {
            listener.listen(delivery::NOTIFY_CHANNEL).await?;
            return Ok(listener);
        }
        tokio::time::sleep(poll.max(Duration::from_millis(100))).await;
    }
}

/// Drops a wake-up stored by notifications that arrived before a claim: their deliveries were
/// committed before they were notified, so the claim about to start sees them, and the wake-up
/// would only bring an empty claim after it.
fn forget_wake_ups(wake: &Notify) {
    let _ = wake.notified().now_or_never();
}

/// Completes when `wake` is notified; never without one.
async fn notified(wake: Option<&Notify>) {
    match wake {
        Some(wake) => wake.notified().await,
        None => std::future::pending().await,
    }
}
