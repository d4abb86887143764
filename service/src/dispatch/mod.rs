//! The delivery worker: claim due deliveries, sign them, send them over an SSRF-safe HTTP
//! client, record the outcomes and attempt rows of finished sends in batches.
//!
//! One [`Dispatcher`] holds what every attempt needs (the settings, the database, the HTTP
//! client), as svix-server hands its workers one context. [`Dispatcher::run_once`] drains what
//! is due now (tests, cron-style use); [`Dispatcher::run`] polls until told to stop, and lets
//! the sends in flight finish first.
//!
//! # Concurrency
//!
//! A drain keeps up to `concurrency` claimed deliveries in flight and claims again as soon as
//! half of them are done (one claim statement per several deliveries, and no slot waits for the
//! slowest request of a batch). At most `per_host` of them send to one host (the URL's host
//! name, any port) at once; the others wait for that host. A delivery that cannot get its
//! host's turn while its lease still covers a whole attempt is released, due again after the
//! poll interval, so it is never sent by two workers (see [`delivery::release`]). Claims are oldest first, so a
//! host with a long backlog can hold every slot with sends and waits while newer deliveries to
//! other hosts wait in the database.
//!
//! # Statements per delivery
//!
//! A claim is one statement for the batch ([`delivery::claim_due`]), followed by one read of
//! the batch's agents and one of their live previous secrets (the signing keys, opened once
//! per agent and batch). Finished attempts are recorded together in one transaction:
//! [`delivery::record_outcomes`] (one guarded `UPDATE`, one read of the agents' health) and
//! [`delivery::record_attempts`] (one `INSERT`). One recording runs at a time, beside the
//! sends and the next claim (on another pooled connection); what finishes meanwhile is the
//! next batch, so a busy worker records many attempts per transaction and an idle one records
//! each as soon as it ends. A worker killed between a send and its
//! recording leaves the claim to its lease: the delivery is sent again, with the same
//! `webhook-id`, and the receiver can drop the duplicate.
//!
//! # Metrics
//!
//! Through the [`metrics`] facade, so the library picks no exporter (the `agent-webhooks`
//! binary serves them for Prometheus with `worker --metrics-addr`); [`crate::metrics`] names
//! and describes them.
//!
//! # The HTTP client
//!
//! `reqwest` with rustls (never OpenSSL), `POST` with `content-type: application/json`, the
//! Standard Webhooks headers (signed as [`sign::prepare_request`] signs) and a user agent naming the
//! product. It follows **no redirects** (a 3xx is the final answer, see [`crate::delivery::retry`]), uses
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
//! policy ([`UrlPolicy::check`]) before anything is signed or sent. A refusal is recorded with
//! [`ErrorClass::SsrfBlocked`]; nothing is sent. The development policy allows every address.
//!
//! # Outcomes
//!
//! | what happened | [`ErrorClass`] | [`AttemptOutcome`] (decides the retry) |
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
//! | no payload stored, no secret | `not_sendable` | connection error (nothing sent) |
//! | the agent was deleted after the enqueue | `not_sendable` | agent deleted: given up at once (nothing sent) |
//! | the key ring does not open the agent's keys | none: no attempt | the claim is given back unsent and uncounted, logged as an error, counted in `agent_webhooks_key_faults_total` |
//!
//! Refusals are retryable like connection errors: the owner may fix the URL or the secret, and
//! DNS answers change; the retry schedule bounds them.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{DatabaseConnection, DatabaseTransaction};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::delivery::retry::{AttemptOutcome, Decision, RetryAfter};
use crate::delivery::{self, AttemptRecord, Claim, ErrorClass, Now};
use crate::error::{Error, Result};
use crate::settings::WebhookSettings;
use crate::webhook::signing_secrets::{self, LiveKeys};
use crate::webhook::url_policy::{Resolver, SystemResolver, UrlPolicy, UrlPolicyError};

pub mod sign;

/// The `user-agent` of every request, so receivers can tell our deliveries apart in their logs.
pub const USER_AGENT: &str = concat!("agent-webhooks/", env!("CARGO_PKG_VERSION"));

/// How much longer than one attempt's timeout a stopping worker waits for its sends in flight.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// How much of a lease must be left, beyond one attempt's timeout, for a delivery that waited
/// for its host to be sent at all: after the answer, its recording may wait for the recording
/// in progress and then record its own batch (on SQLite behind this process's other writes).
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The worker's context: settings, database and HTTP client, shared by every attempt.
#[derive(Clone, Debug)]
pub struct Dispatcher {
    settings: Arc<WebhookSettings>,
    db: DatabaseConnection,
    http: reqwest::Client,
    hosts: Arc<HostLimits>,
    /// On SQLite, which has one writer at a time, this process's writes take turns here:
    /// writers queued in SQLite's busy handler sleep in growing steps (up to 100 ms) and give
    /// up after the busy timeout, so sixteen concurrent recordings were both slow and could
    /// fail with "database is locked". `None` on the other backends.
    sqlite_writes: Option<Arc<tokio::sync::Mutex<()>>>,
    /// This host's clock (`Utc::now` but in tests that skew it).
    clock: fn() -> DateTime<Utc>,
    /// How far the database's clock is ahead of `clock`, as last measured by a claim.
    clock_offset: Arc<ClockOffset>,
}

/// The database's clock minus this host's, in microseconds: every claim is decided by the
/// database's clock in its statement, and the lease it returns tells the worker that clock's
/// reading, so the instants the worker records (attempt times, `Retry-After`, releases) and
/// signs are on the database's clock too, not on a host clock that may be off.
#[derive(Debug, Default)]
struct ClockOffset(std::sync::atomic::AtomicI64);

impl ClockOffset {
    /// Takes the offset from a claim sent at `before` and answered at `after` (host clock):
    /// the database read its clock in between, taken as the middle.
    fn measure(
        &self,
        claims: &[Claim],
        settings: &WebhookSettings,
        before: DateTime<Utc>,
        after: DateTime<Utc>,
    ) {
        let Some(claim) = claims.first() else { return };
        let lease = chrono::TimeDelta::from_std(settings.claim_lease).unwrap_or_default();
        let database = claim.lease_until - lease;
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
    /// Claims given back unsent: their host stayed busy while the lease could still cover an
    /// attempt. They are due again after the poll interval and were not counted as attempts.
    pub released: u64,
    /// Attempts whose outcome the database refused to store (see [`Recorded::Unrecorded`]).
    pub unrecorded: u64,
    /// Claims given back unsent because their agent's keys do not open with the key ring (see
    /// [`Recorded::KeyFault`]); due again after one lease, not counted as attempts.
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

    /// This dispatcher with `clock` as its host's clock instead of `Utc::now`, for tests that
    /// run a worker on a skewed clock. Due-ness and leases are decided by the database's clock
    /// either way, and the worker's other instants follow it (see [`Now::Database`]).
    pub fn with_clock(mut self, clock: fn() -> DateTime<Utc>) -> Dispatcher {
        self.clock = clock;
        self
    }

    /// Now on the database's clock, as far as the last claim measured it.
    fn now(&self) -> DateTime<Utc> {
        (self.clock)() + self.clock_offset.get()
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

    /// Drains, waits the poll interval (on PostgreSQL with `listen`, or until a delivery is
    /// enqueued), drains again, until `shutdown` completes. Then it
    /// claims nothing more and waits for the sends in flight (up to the attempt timeout plus a
    /// margin), records what finished and returns; anything unfinished is left to its lease.
    /// A database error is logged and the loop goes on after the poll interval.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> DrainReport {
        let mut shutdown = pin!(shutdown);
        let stop = AtomicBool::new(false);
        let grace = self.settings.worker.request_timeout + SHUTDOWN_MARGIN;
        let mut total = DrainReport::default();
        // Dropping the set stops the listening task.
        let mut listener = tokio::task::JoinSet::new();
        let wake = self.listen(&mut listener).await;
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
                () = notified(wake.as_deref()) => {}
                () = &mut shutdown => return total,
            }
        }
    }

    /// On PostgreSQL with `listen` set: a task on its own connection that `LISTEN`s on
    /// [`delivery::NOTIFY_CHANNEL`] and wakes the worker on each notification. `None` (the
    /// worker polls only) elsewhere, or when listening fails; a lost connection is reconnected
    /// by the listener, and the poll finds what was enqueued meanwhile.
    async fn listen(&self, tasks: &mut tokio::task::JoinSet<()>) -> Option<Arc<Notify>> {
        if !self.settings.worker.listen
            || self.db.get_database_backend() != sea_orm::DbBackend::Postgres
        {
            return None;
        }
        let pool = self.db.get_postgres_connection_pool();
        let listener = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(delivery::NOTIFY_CHANNEL).await?;
            Ok::<_, sea_orm::sqlx::Error>(listener)
        };
        let listener = match listener.await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(%err, "delivery worker: cannot LISTEN; polling only");
                return None;
            }
        };
        let wake = Arc::new(Notify::new());
        let waker = Arc::clone(&wake);
        tasks.spawn(async move {
            let mut notifications = listener.into_stream();
            while let Some(notification) = notifications.next().await {
                match notification {
                    // Several notifications before the worker looks make one wake-up.
                    Ok(_) => waker.notify_one(),
                    Err(err) => {
                        tracing::warn!(%err, "delivery worker: LISTEN connection failed; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Some(wake)
    }

    /// Keeps up to `concurrency` claims in flight until nothing is due (or `stop` is set), then
    /// waits for the sends in flight. Attempts are recorded in batches by one recording task at
    /// a time, alongside the sends and the next claim: whatever has finished when the previous
    /// recording ends is the next batch ([`Dispatcher::record`]), so the busier the worker, the
    /// fewer statements per delivery, and an idle worker records each attempt as soon as it
    /// ends. A database error stops the claiming; it is returned once the sends in flight are
    /// recorded.
    async fn drain(&self, stop: &AtomicBool) -> Result<DrainReport> {
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
                !(nothing_due && recording.is_some())
            } else {
                !nothing_due && free * 2 >= concurrency
            };
            if failure.is_none() && refill && !stop.load(Ordering::SeqCst) {
                match self.claim(free).await {
                    Ok((claims, keys)) => {
                        nothing_due = claims.is_empty();
                        for claim in claims {
                            let this = self.clone();
                            let keys = Arc::clone(&keys);
                            tasks.spawn(async move { this.send_claimed(claim, &keys).await });
                        }
                    }
                    Err(err) => failure = Some(err),
                }
            }
            // Wait for one task, then take every other one that has finished meanwhile.
            let mut joined = tasks.join_next_with_id().await;
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

    /// Claims up to `limit` due deliveries and reads the signing keys of their agents, in two
    /// statements for the batch rather than two per delivery. The keys are read at the claim,
    /// so a send uses the keys that were live then (a rotation or revocation in between takes
    /// effect from the next claim, within one lease).
    async fn claim(&self, limit: usize) -> Result<(Vec<Claim>, Arc<AgentKeys>)> {
        let claims = {
            let _turn = self.write_turn().await;
            let before = (self.clock)();
            let claims =
                delivery::claim_due(&self.db, &self.settings, Now::Database, limit as u64).await?;
            self.clock_offset
                .measure(&claims, &self.settings, before, (self.clock)());
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
            && !matches!(err, Error::AgentNotFound(_))
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

    /// Gives back, unsent and uncounted, a claim whose agent's keys do not open with this
    /// worker's key ring: the operator's fault (a missing or wrong `WEBHOOK_SECRET_KEYS` entry),
    /// not the receiver's, so no attempt is recorded and endpoint health is untouched. Due
    /// again after one lease, so a worker that cannot open a secret does not spin on it.
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

    /// Records finished attempts: their outcomes (each guarded by its claim) and their rows in
    /// the attempt log, in one transaction per [`crate::db::MAX_PAGE_SIZE`] attempts, with
    /// [`delivery::record_outcomes`] and [`delivery::record_attempts`]. An attempt whose
    /// claim was taken over meanwhile is [`Recorded::Stale`]: it stays in the log, its outcome
    /// is not stored; one whose delivery was deleted meanwhile is stale too, and not logged.
    ///
    /// A batch the database refuses (a row it cannot store) is recorded again one attempt at a
    /// time, so that one row's failure costs only that row: an attempt whose log row is refused
    /// still has its outcome stored, and one whose outcome is refused too is left to its lease
    /// ([`Recorded::Unrecorded`]). A lost connection fails the whole recording as before.
    async fn record(&self, finished: Vec<FinishedAttempt>) -> Result<Vec<Recorded>> {
        let mut recorded = Vec::with_capacity(finished.len());
        let mut finished = finished.into_iter().peekable();
        while finished.peek().is_some() {
            let batch: Arc<[FinishedAttempt]> = finished
                .by_ref()
                .take(crate::db::MAX_PAGE_SIZE as usize)
                .collect();
            let outcomes = match self.record_in_transaction(Arc::clone(&batch), true).await {
                Ok(outcomes) => outcomes,
                Err(err) if !err.is_connection() => {
                    tracing::warn!(%err, attempts = batch.len(), "recording a batch failed; recording its attempts one by one");
                    let mut outcomes = Vec::with_capacity(batch.len());
                    for done in batch.iter() {
                        outcomes.push(self.record_alone(done).await?);
                    }
                    outcomes
                }
                Err(err) => return Err(err),
            };
            for (outcome, done) in outcomes.into_iter().zip(batch.iter()) {
                recorded.push(match outcome {
                    Ok(decision) => {
                        count_outcome(&decision, done.record.error_class);
                        Recorded::Decided(decision)
                    }
                    Err(Error::StaleClaim { .. }) => {
                        tracing::warn!(delivery = %done.claim.delivery.id, attempt = done.claim.attempt, "stale claim: outcome not stored");
                        Recorded::Stale
                    }
                    Err(_) => Recorded::Unrecorded,
                });
            }
        }
        Ok(recorded)
    }

    /// One attempt of a refused batch: outcome and log row, else the outcome alone.
    async fn record_alone(&self, done: &FinishedAttempt) -> Result<Result<Decision>> {
        let one: Arc<[FinishedAttempt]> = Arc::new([done.clone()]);
        let err = match self.record_in_transaction(Arc::clone(&one), true).await {
            Ok(mut outcome) => return Ok(outcome.remove(0)),
            Err(err) if err.is_connection() => return Err(err),
            Err(err) => err,
        };
        tracing::error!(%err, delivery = %done.claim.delivery.id, attempt = done.claim.attempt, "the attempt log refused this attempt; storing its outcome without it");
        metrics::counter!(crate::metrics::UNRECORDED, "part" => "attempt").increment(1);
        match self.record_in_transaction(one, false).await {
            Ok(mut outcome) => Ok(outcome.remove(0)),
            Err(err) if err.is_connection() => Err(err),
            Err(err) => {
                tracing::error!(%err, delivery = %done.claim.delivery.id, attempt = done.claim.attempt, "the database refused this outcome; the delivery is left to its lease");
                metrics::counter!(crate::metrics::UNRECORDED, "part" => "outcome").increment(1);
                Ok(Err(err))
            }
        }
    }

    /// Records `batch` in one transaction of its own, run again if chosen as a deadlock
    /// victim: outcomes are guarded by their claims and attempt rows kept once, so a repeat
    /// cannot double anything. `with_log`: the attempt rows too.
    async fn record_in_transaction(
        &self,
        batch: Arc<[FinishedAttempt]>,
        with_log: bool,
    ) -> Result<Vec<Result<Decision>>> {
        let _turn = self.write_turn().await;
        let this = self.clone();
        crate::db::transaction(&self.db, |txn| {
            let (this, batch) = (this.clone(), Arc::clone(&batch));
            Box::pin(async move { this.record_batch(txn, &batch, with_log).await })
        })
        .await
    }

    /// One transaction of [`Dispatcher::record`]: the outcomes, then the attempt rows of the
    /// deliveries that still exist.
    async fn record_batch(
        &self,
        txn: &DatabaseTransaction,
        batch: &[FinishedAttempt],
        with_log: bool,
    ) -> Result<Vec<Result<Decision>>> {
        let outcomes = delivery::record_outcomes(
            txn,
            &self.settings,
            batch
                .iter()
                .map(|done| (&done.claim, &done.outcome, done.record.finished_at)),
        )
        .await?;
        if !with_log {
            return Ok(outcomes);
        }
        // An applied outcome's row is locked by this transaction, so its delivery exists until
        // the commit. A stale claim's delivery may have been deleted meanwhile (a hard-deleted
        // agent takes its deliveries with it): its attempt has nowhere to go.
        let stale: Vec<&str> = batch
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.is_err())
            .map(|(done, _)| done.claim.delivery.id.as_str())
            .collect();
        let existing = delivery::existing_ids(txn, &stale).await?;
        delivery::record_attempts(
            txn,
            batch
                .iter()
                .zip(&outcomes)
                .filter(|(done, outcome)| {
                    outcome.is_ok() || existing.contains(done.claim.delivery.id.as_str())
                })
                .map(|(done, _)| (done.claim.delivery.id.as_str(), &done.record)),
        )
        .await?;
        Ok(outcomes)
    }

    /// Signs and sends one claimed delivery with its agent's keys from `keys`.
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
            // Key faults were released before the send (`release_key_fault`): what is left is
            // an agent deleted since the enqueue, for which nothing will ever be sent.
            Some(Err(err)) => return Attempt::agent_deleted(err.to_string()),
            None => {
                let gone = Error::AgentNotFound(claim.delivery.agent_id.clone());
                return Attempt::agent_deleted(gone.to_string());
            }
        };
        let request = match signed {
            Ok(request) => request,
            Err(err) => return Attempt::refused(ErrorClass::NotSendable, err.to_string()),
        };
        let mut builder = self
            .http
            .post(request.url)
            .header(CONTENT_TYPE, "application/json");
        for (name, value) in request.headers.pairs() {
            builder = builder.header(name, value);
        }
        match builder.body(request.body).send().await {
            Ok(response) => self.read_response(response).await,
            Err(err) => Attempt::failed(&err),
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
        let retry_after = header(RETRY_AFTER).and_then(|v| RetryAfter::parse(&v, self.now()));
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
        Attempt {
            outcome: AttemptOutcome::Status { code, retry_after },
            status: Some(code),
            class,
            message,
            body_prefix: delivery::body_excerpt(&body),
            remote_addr,
        }
    }
}

/// The signing keys of a claimed batch's agents, by agent id (see [`Dispatcher::claim`]).
type AgentKeys = HashMap<String, Result<LiveKeys>>;

/// One attempt that has its outcome and waits to be recorded ([`Dispatcher::record`]).
#[derive(Clone)]
struct FinishedAttempt {
    /// The claim the attempt was made under (its guard).
    claim: Claim,
    /// What the attempt came to, for the retry decision.
    outcome: AttemptOutcome,
    /// Its row in the attempt log.
    record: AttemptRecord,
}

/// What one of a drain's tasks came to.
enum Step {
    /// An attempt was made; it waits to be recorded.
    Sent(Box<FinishedAttempt>),
    /// Nothing was sent: the delivery's host stayed busy, and the claim was given back.
    Released,
    /// Nothing was sent: the agent's keys do not open with the key ring, and the claim was
    /// given back.
    KeyFault,
    /// A batch of attempts was recorded.
    Recorded(Vec<Recorded>),
}

/// What recording an attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The outcome was stored; this is what comes next.
    Decided(Decision),
    /// The claim had been taken over (its lease ran out): the attempt is in the log, the
    /// outcome was not stored.
    Stale,
    /// Nothing was sent: the delivery's host stayed busy, and the claim was given back.
    Released,
    /// Nothing was sent: the agent's keys do not open with this worker's key ring (the
    /// operator's fault), and the claim was given back uncounted.
    KeyFault,
    /// The attempt was made but the database refused its outcome: the delivery is left to its
    /// lease and sent again once it runs out.
    Unrecorded,
}

/// Completes when `wake` is notified; never without one.
async fn notified(wake: Option<&Notify>) {
    match wake {
        Some(wake) => wake.notified().await,
        None => std::future::pending().await,
    }
}

/// Counts a stored outcome in the worker's metrics.
fn count_outcome(decision: &Decision, class: Option<ErrorClass>) {
    if matches!(decision, Decision::Delivered) {
        metrics::counter!(crate::metrics::SENT).increment(1);
        return;
    }
    let class = class.map_or("unknown", ErrorClass::as_str);
    metrics::counter!(crate::metrics::FAILED, "class" => class).increment(1);
    match decision {
        Decision::RetryAt(_) => metrics::counter!(crate::metrics::RETRIED).increment(1),
        _ => metrics::counter!(crate::metrics::EXHAUSTED).increment(1),
    }
}

/// The per-host limit: one semaphore per host with sends in flight or waiting, dropped when
/// the host has none, so the map holds only the hosts being sent to.
#[derive(Debug)]
struct HostLimits {
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A turn to send to one host; gives it back (and forgets an idle host) when dropped.
struct HostPermit<'a> {
    limits: &'a HostLimits,
    host: &'a str,
    permit: Option<OwnedSemaphorePermit>,
}

impl HostLimits {
    fn new(per_host: usize) -> HostLimits {
        HostLimits {
            per_host: per_host.max(1),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// A turn to send to `host`, or `None` when none came free within `wait`.
    async fn acquire<'a>(&'a self, host: &'a str, wait: Duration) -> Option<HostPermit<'a>> {
        let semaphore = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
            let entry = hosts
                .entry(host.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)));
            Arc::clone(entry)
        };
        let permit = match semaphore.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => tokio::time::timeout(wait, semaphore.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        };
        match permit {
            Some(permit) => Some(HostPermit {
                limits: self,
                host,
                permit: Some(permit),
            }),
            None => {
                self.forget_if_idle(host);
                None
            }
        }
    }

    /// Drops `host`'s semaphore when nobody holds or waits for it (only the map refers to it).
    fn forget_if_idle(&self, host: &str) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if hosts.get(host).is_some_and(|s| Arc::strong_count(s) == 1) {
            hosts.remove(host);
        }
    }
}

impl Drop for HostPermit<'_> {
    fn drop(&mut self) {
        // The permit holds the semaphore too: give it back before counting who refers to it.
        drop(self.permit.take());
        self.limits.forget_if_idle(self.host);
    }
}

/// The per-host limit's key: the URL's host, lowercase, without the port (one machine behind
/// several ports is one receiver to spare). A URL that does not parse keys by itself; sending
/// it fails anyway.
fn host_key(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_else(|| url.to_owned())
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

    /// Nothing was sent, and nothing will be: the agent was deleted.
    fn agent_deleted(message: String) -> Attempt {
        Attempt {
            outcome: AttemptOutcome::AgentDeleted(message.clone()),
            ..Attempt::refused(ErrorClass::NotSendable, message)
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

    #[tokio::test]
    async fn host_limits_bound_one_host_and_forget_idle_ones() {
        let limits = HostLimits::new(2);
        let a1 = limits.acquire("a", Duration::ZERO).await.unwrap();
        let _a2 = limits.acquire("a", Duration::ZERO).await.unwrap();
        // A third turn at host a is refused; host b is not affected.
        assert!(
            limits
                .acquire("a", Duration::from_millis(20))
                .await
                .is_none()
        );
        let b = limits.acquire("b", Duration::ZERO).await.unwrap();
        drop(b);
        assert!(!limits.hosts.lock().unwrap().contains_key("b"));
        drop(a1);
        assert!(limits.acquire("a", Duration::ZERO).await.is_some());
        assert_eq!(
            host_key("https://Hooks.Example.com:8443/x"),
            "hooks.example.com"
        );
    }

    #[test]
    fn user_agent_names_the_product() {
        assert!(USER_AGENT.starts_with("agent-webhooks/"));
    }
}
