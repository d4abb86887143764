//! Delivery bookkeeping: what to send, what happened, what to try again.
//!
//! `webhook_deliveries` is the only source of truth. A sender worker claims due deliveries,
//! sends them, and reports each outcome; it may crash at any point and the next worker carries
//! on. The life of a delivery (see `docs/deliveries.md` for the diagram):
//!
//! * [`enqueue`] inserts it, due at once, if the agent's webhook is enabled and wants the event.
//!   The unique index on `(agent_id, event_id)` makes this idempotent, also under races.
//! * [`claim_due`] leases up to `limit` due deliveries to one worker in one atomic step: it
//!   bumps `attempt_count` (an attempt has started), clears the previous result and moves
//!   `next_retry_at` to the end of the lease. A worker that dies lets the lease run out, and the
//!   delivery becomes due again.
//! * [`record_outcome`] (or [`record_success`] / [`record_failure`]) stores the result and asks
//!   the [`RetryPolicy`] what comes next: delivered, a retry at some instant, or exhausted. The
//!   update is guarded by the claim (attempt number, and no result yet), so a late report from a
//!   worker whose lease was taken over cannot overwrite the newer attempt.
//! * [`requeue`] lets an operator send an exhausted delivery again.
//!
//! Attempts are counted when they start, not when they fail: a delivery whose sending crashes
//! its worker still runs out of attempts instead of being retried forever.
//!
//! The state is derived from the columns, never stored twice; see [`DeliveryState`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Timelike, Utc};
use entity::{agents, webhook_deliveries as wd};
use sea_orm::prelude::DateTimeWithTimeZone;
use sea_orm::sea_query::extension::mysql::{IndexHintScope, MySqlSelectStatementExt};
use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, LockBehavior, LockType, Query, SelectStatement, UpdateStatement,
};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, Order, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait, RuntimeErr, Select, Statement,
    TransactionSession, TransactionTrait,
};
use serde::Serialize;

use crate::retry::{AttemptOutcome, Decision, GiveUpReason, JitterSource, RetryPolicy};

/// Evaluates and awaits `$step` again when the database aborted it as a deadlock victim or a
/// serialization failure (SQLSTATE 40001, PostgreSQL 40P01): the step was rolled back whole, so
/// repeating it is safe, and callers should not see what is a normal event under concurrency.
/// (A macro rather than a function taking an async closure: such futures lose `Send`.)
macro_rules! retry_transient {
    ($step:expr) => {{
        let mut tries = 0;
        loop {
            match $step.await {
                Err(err) if tries < TRANSIENT_RETRIES && is_transient(&err) => {
                    tries += 1;
                    tracing::debug!(%err, tries, "retrying after a transient database error");
                }
                result => break result,
            }
        }
    }};
}

/// The policy [`record_success`] applies; built once, not on every report.
static DEFAULT_POLICY: std::sync::LazyLock<RetryPolicy> =
    std::sync::LazyLock::new(RetryPolicy::default);

/// Longest error text kept per attempt; a receiver's error page can be large.
pub const MAX_ERROR_LEN: usize = 2000;
/// Largest page [`history`] returns.
pub const MAX_PAGE_SIZE: u64 = 1000;

/// Where a delivery is in its life, derived from its columns at an instant `now`.
///
/// | state | `delivered_at` | `next_retry_at` | other |
/// |---|---|---|---|
/// | `Delivered` | set | NULL | |
/// | `Failed` (exhausted) | NULL | NULL | |
/// | `Leased` | NULL | after `now` | an attempt started (`attempt_count > 0`) and has no result yet |
/// | `Pending` | NULL | set | otherwise: never tried, waiting for a retry, or its lease ran out |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting to be claimed (due now or at `next_retry_at`).
    Pending,
    /// Claimed by a worker whose lease has not run out.
    Leased,
    /// Accepted by the receiver.
    Delivered,
    /// Exhausted: no attempt will be made unless an operator requeues it.
    Failed,
}

impl DeliveryState {
    /// All states, in lifecycle order.
    pub const ALL: [DeliveryState; 4] =
        [Self::Pending, Self::Leased, Self::Delivered, Self::Failed];

    /// The state of a stored row at `now`.
    pub fn of(row: &wd::Model, now: DateTime<Utc>) -> Self {
        match (row.delivered_at, row.next_retry_at) {
            (Some(_), _) => Self::Delivered,
            (None, None) => Self::Failed,
            (None, Some(next)) => {
                let in_flight = row.attempt_count > 0
                    && row.status_code.is_none()
                    && row.error_message.is_none();
                if in_flight && next.to_utc() > now {
                    Self::Leased
                } else {
                    Self::Pending
                }
            }
        }
    }

    /// The same rule as [`DeliveryState::of`], as an SQL condition.
    fn condition(self, now: DateTime<Utc>) -> Condition {
        let now = at(now);
        let in_flight = || {
            Condition::all()
                .add(wd::Column::AttemptCount.gt(0))
                .add(wd::Column::StatusCode.is_null())
                .add(wd::Column::ErrorMessage.is_null())
        };
        let undelivered = Condition::all().add(wd::Column::DeliveredAt.is_null());
        match self {
            Self::Delivered => Condition::all().add(wd::Column::DeliveredAt.is_not_null()),
            Self::Failed => undelivered.add(wd::Column::NextRetryAt.is_null()),
            Self::Leased => undelivered
                .add(wd::Column::NextRetryAt.gt(now))
                .add(in_flight()),
            Self::Pending => undelivered.add(wd::Column::NextRetryAt.is_not_null()).add(
                Condition::any()
                    .add(wd::Column::NextRetryAt.lte(now))
                    .add(in_flight().not()),
            ),
        }
    }

    /// The lower-case name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Leased => "leased",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryState {
    type Err = DeliveryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| DeliveryError::UnknownState(s.to_owned()))
    }
}

/// A delivery as the app server and operators see it (the specification's `WebhookDelivery`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebhookDelivery {
    /// `dlv-<uuid v7>`.
    pub id: String,
    /// The agent whose webhook this is.
    pub agent_id: String,
    /// The agent's organization.
    pub organization_id: String,
    /// The event's id: the `webhook-id` a receiver uses to drop duplicates.
    pub event_id: String,
    /// The event's type, e.g. `run.completed`.
    pub event_type: String,
    /// The URL captured when the delivery was enqueued.
    pub webhook_url: String,
    /// HTTP status of the last attempt, if it got a response.
    pub status_code: Option<i32>,
    /// What went wrong in the last failed attempt.
    pub error_message: Option<String>,
    /// Attempts started so far.
    pub attempt_count: i32,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When the receiver accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When it is due next (or, while leased, when the lease ends).
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Derived state at the time it was read.
    pub state: DeliveryState,
}

impl WebhookDelivery {
    /// The read model of a stored row, with its state at `now`.
    pub fn from_model(row: wd::Model, now: DateTime<Utc>) -> Self {
        let state = DeliveryState::of(&row, now);
        WebhookDelivery {
            id: row.id,
            agent_id: row.agent_id,
            organization_id: row.organization_id,
            event_id: row.event_id,
            event_type: row.event_type,
            webhook_url: row.webhook_url,
            status_code: row.status_code,
            error_message: row.error_message,
            attempt_count: row.attempt_count,
            created_at: row.created_at.to_utc(),
            delivered_at: row.delivered_at.map(|t| t.to_utc()),
            next_retry_at: row.next_retry_at.map(|t| t.to_utc()),
            state,
        }
    }
}

/// Errors of the delivery bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No agent has this id.
    #[error("agent `{0}` not found")]
    AgentNotFound(String),
    /// No delivery has this id.
    #[error("delivery `{0}` not found")]
    NotFound(String),
    /// The claim was taken over (its lease ran out and another worker claimed the delivery) or
    /// already reported; the report was not stored.
    #[error(
        "stale claim on delivery `{id}` (attempt {attempt}): the delivery was re-claimed or already reported"
    )]
    StaleClaim {
        /// The delivery.
        id: String,
        /// The attempt number the claim was for.
        attempt: i32,
    },
    /// Only exhausted deliveries can be requeued.
    #[error("delivery `{id}` is {state}, not failed; only failed deliveries can be requeued")]
    NotRequeueable {
        /// The delivery.
        id: String,
        /// Its current state.
        state: DeliveryState,
    },
    /// The agent's stored event filter cannot be read.
    #[error("agent `{agent_id}` has an unreadable event filter: {reason}")]
    CorruptEventFilter {
        /// The agent.
        agent_id: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// An event id or type that cannot be stored or signed.
    #[error("invalid {field}: {rule}")]
    InvalidEvent {
        /// Which argument.
        field: &'static str,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A page size outside 1..=[`MAX_PAGE_SIZE`], or a batch or claim limit of 0.
    #[error("invalid limit {0}: must be between 1 and {MAX_PAGE_SIZE}")]
    InvalidLimit(u64),
    /// A history cursor that this service did not make.
    #[error("invalid cursor")]
    BadCursor,
    /// A state name other than pending, leased, delivered, failed.
    #[error("unknown delivery state `{0}`: expected pending, leased, delivered or failed")]
    UnknownState(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// What [`enqueue`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// A new delivery, due at once.
    Created(WebhookDelivery),
    /// This `(agent, event_id)` was enqueued before; this is that delivery.
    Existing(WebhookDelivery),
    /// Nothing to send.
    Skipped(SkipReason),
}

/// Why [`enqueue`] did not enqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The agent's webhook is disabled.
    Disabled,
    /// The agent has no webhook URL.
    NoUrl,
    /// The agent's event filter does not want this event type.
    NotWanted,
}

/// A worker's lease on one delivery, returned by [`claim_due`] and handed back when reporting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The delivery as claimed (state `Leased`).
    pub delivery: WebhookDelivery,
    /// The attempt number this claim is for (1 for the first attempt).
    pub attempt: i32,
    /// When the lease runs out and the delivery becomes due again.
    pub lease_until: DateTime<Utc>,
}

/// What a report did to the delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Delivered.
    Delivered,
    /// Failed; the next attempt is due at this instant.
    RetryAt(DateTime<Utc>),
    /// Failed for good.
    Exhausted(GiveUpReason),
}

/// Enqueues `event_id` of `event_type` for the agent's webhook, if it is enabled and wants it.
///
/// Idempotent: the same `(agent, event_id)` yields the same delivery, also when callers race
/// (the unique index decides, not a read-then-write).
pub async fn enqueue<C: ConnectionTrait>(
    db: &C,
    agent_id: &str,
    event_id: &str,
    event_type: &str,
    now: DateTime<Utc>,
) -> Result<Enqueued, DeliveryError> {
    check_event_field("event_id", event_id)?;
    // The event id is the `webhook-id` every attempt is signed with: refuse now what could
    // never be signed, rather than fail every attempt later.
    crate::signing::check_message_id(event_id).map_err(|_| DeliveryError::InvalidEvent {
        field: "event_id",
        rule: "it is the webhook-id header: visible ASCII only, without `.`",
    })?;
    check_event_field("event_type", event_type)?;
    let agent = agents::Entity::find_by_id(agent_id)
        .one(db)
        .await?
        .ok_or_else(|| DeliveryError::AgentNotFound(agent_id.to_owned()))?;
    if !agent.webhook_enabled {
        return Ok(Enqueued::Skipped(SkipReason::Disabled));
    }
    let Some(url) = agent.webhook_url.clone() else {
        return Ok(Enqueued::Skipped(SkipReason::NoUrl));
    };
    let filter =
        crate::config::stored_events(&agent).map_err(|e| DeliveryError::CorruptEventFilter {
            agent_id: agent.id.clone(),
            reason: e.to_string(),
        })?;
    if !filter.wants(event_type) {
        return Ok(Enqueued::Skipped(SkipReason::NotWanted));
    }

    let now = at(now);
    let id = format!("dlv-{}", uuid::Uuid::now_v7());
    let row = wd::ActiveModel {
        id: sea_orm::Set(id.clone()),
        organization_id: sea_orm::Set(agent.organization_id.clone()),
        agent_id: sea_orm::Set(agent.id.clone()),
        event_id: sea_orm::Set(event_id.to_owned()),
        event_type: sea_orm::Set(event_type.to_owned()),
        webhook_url: sea_orm::Set(url),
        status_code: sea_orm::Set(None),
        error_message: sea_orm::Set(None),
        attempt_count: sea_orm::Set(0),
        created_at: sea_orm::Set(now),
        delivered_at: sea_orm::Set(None),
        next_retry_at: sea_orm::Set(Some(now)),
    };
    wd::Entity::insert(row)
        .on_conflict_do_nothing_on([wd::Column::AgentId, wd::Column::EventId])
        .exec_without_returning(db)
        .await?;
    // Whose row won tells whether this call created it; affected-row counts cannot (MySQL
    // reports found rows for the no-op `ON DUPLICATE KEY UPDATE`).
    let stored = wd::Entity::find()
        .filter(wd::Column::AgentId.eq(agent_id))
        .filter(wd::Column::EventId.eq(event_id))
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("delivery of {event_id} for {agent_id}")))?;
    let created = stored.id == id;
    let delivery = WebhookDelivery::from_model(stored, now.to_utc());
    Ok(if created {
        Enqueued::Created(delivery)
    } else {
        Enqueued::Existing(delivery)
    })
}

/// Leases up to `limit` due deliveries (earliest `next_retry_at` first) to the caller until
/// `now + lease`.
///
/// One atomic step per backend, so concurrent workers never get the same delivery:
/// PostgreSQL runs one `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`;
/// SQLite, which serialises writers, one `UPDATE … RETURNING`; MariaDB/MySQL, which have no
/// `UPDATE … RETURNING`, a transaction of `SELECT … FOR UPDATE SKIP LOCKED`, `UPDATE`, `SELECT`.
///
/// A due delivery whose final attempt's lease ran out without a report is marked exhausted by
/// the same statement and not returned, so a call may return fewer than `limit` claims while
/// more deliveries are due; call again until it returns none.
pub async fn claim_due<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
    limit: u64,
    lease: Duration,
) -> Result<Vec<Claim>, DeliveryError> {
    if limit == 0 {
        return Err(DeliveryError::InvalidLimit(limit));
    }
    let backend = db.get_database_backend();
    let plan = ClaimPlan::new(backend, policy, now, limit, lease);
    let lease_until = plan.lease_until.to_utc();
    let rows = match backend {
        DbBackend::MySql => retry_transient!(claim_in_transaction(db, &plan.due, &plan.lease))?,
        _ => {
            let statement = plan.single_statement(backend);
            retry_transient!(wd::Entity::find().from_raw_sql(statement.clone()).all(db))?
        }
    };
    Ok(rows
        .into_iter()
        // Rows marked exhausted by this claim are not leased to the caller.
        .filter(|row| row.next_retry_at.is_some())
        .map(|row| Claim {
            attempt: row.attempt_count,
            lease_until,
            delivery: WebhookDelivery::from_model(row, now),
        })
        .collect())
}

/// The two halves of a claim: the due rows (locked, skipping rows other workers hold, where
/// the backend can) and the update that leases them.
struct ClaimPlan {
    due: SelectStatement,
    lease: UpdateStatement,
    lease_until: DateTimeWithTimeZone,
}

impl ClaimPlan {
    fn new(
        backend: DbBackend,
        policy: &RetryPolicy,
        now: DateTime<Utc>,
        limit: u64,
        lease: Duration,
    ) -> Self {
        let max_attempts = i32::try_from(policy.max_attempts).unwrap_or(i32::MAX);
        let lease_until =
            at(now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX));
        let (due, lease) = claim_parts(backend, at(now), limit, max_attempts, lease_until);
        ClaimPlan {
            due,
            lease,
            lease_until,
        }
    }

    /// The whole claim as one `UPDATE … WHERE id IN (due) RETURNING` (PostgreSQL, SQLite).
    fn single_statement(mut self, backend: DbBackend) -> Statement {
        backend.build(
            self.lease
                .and_where(Expr::col(wd::Column::Id).in_subquery(self.due))
                .returning_all(),
        )
    }
}

fn claim_parts(
    backend: DbBackend,
    now: DateTimeWithTimeZone,
    limit: u64,
    max_attempts: i32,
    lease_until: DateTimeWithTimeZone,
) -> (SelectStatement, UpdateStatement) {
    let mut due = Query::select();
    due.column(wd::Column::Id)
        .from(wd::Entity)
        .and_where(wd::Column::NextRetryAt.lte(now))
        .and_where(wd::Column::DeliveredAt.is_null())
        .order_by(wd::Column::NextRetryAt, Order::Asc)
        .limit(limit);
    if backend != DbBackend::Sqlite {
        due.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    // A due row whose attempts are used up (its final attempt's lease ran out without a
    // report) is marked exhausted instead of leased, in the same statement, so the claim
    // never has to scan the due range for such rows separately. `attempt_count` is assigned
    // last: MySQL evaluates assignments left to right.
    let used_up = || Expr::col(wd::Column::AttemptCount).gte(max_attempts);
    let mut lease = Query::update();
    lease
        .table(wd::Entity)
        .value(
            wd::Column::NextRetryAt,
            Expr::case(used_up(), Expr::value(None::<DateTimeWithTimeZone>))
                .finally(Expr::value(lease_until)),
        )
        .value(
            wd::Column::ErrorMessage,
            Expr::case(used_up(), Expr::value(LOST_FINAL_ATTEMPT))
                .finally(Expr::value(None::<String>)),
        )
        .value(
            wd::Column::StatusCode,
            Expr::case(used_up(), Expr::col(wd::Column::StatusCode))
                .finally(Expr::value(None::<i32>)),
        )
        .value(
            wd::Column::AttemptCount,
            Expr::case(used_up(), Expr::col(wd::Column::AttemptCount))
                .finally(Expr::col(wd::Column::AttemptCount).add(1)),
        );
    (due, lease)
}

/// The index behind [`history`] (third migration).
const HISTORY_INDEX: &str = "ix_webhook_deliveries_history";

/// The error of a delivery whose final attempt's lease ran out without a report.
const LOST_FINAL_ATTEMPT: &str =
    "no result was reported for the final attempt before its lease ran out";

/// The statement [`claim_due`] sends to pick and lease due rows, for inspection (`EXPLAIN`)
/// and for benchmarks that send the same SQL without the ORM. On PostgreSQL and SQLite this is
/// the whole claim (`UPDATE … RETURNING`); on MySQL it is its first step, the locking
/// `SELECT … FOR UPDATE SKIP LOCKED`.
pub fn claim_statement(
    backend: DbBackend,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
    limit: u64,
    lease: Duration,
) -> Statement {
    let plan = ClaimPlan::new(backend, policy, now, limit, lease);
    match backend {
        DbBackend::MySql => backend.build(&plan.due),
        _ => plan.single_statement(backend),
    }
}

/// MySQL's claim: lock the due rows, lease them, read them. InnoDB may pick this transaction
/// as a deadlock victim under concurrency; the caller retries it (`retry_transient!`).
async fn claim_in_transaction<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    due: &SelectStatement,
    lease_update: &UpdateStatement,
) -> Result<Vec<wd::Model>, DbErr> {
    let txn = db.begin().await?;
    let ids: Vec<String> = txn
        .query_all(due)
        .await?
        .iter()
        .map(|row| row.try_get_by_index::<String>(0))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        txn.commit().await?;
        return Ok(Vec::new());
    }
    let mut lease_update = lease_update.clone();
    lease_update.and_where(wd::Column::Id.is_in(ids.clone()));
    txn.execute(&lease_update).await?;
    let rows = wd::Entity::find()
        .filter(wd::Column::Id.is_in(ids))
        .all(&txn)
        .await?;
    txn.commit().await?;
    Ok(rows)
}

/// How often a statement chosen as a deadlock victim is tried again.
const TRANSIENT_RETRIES: usize = 5;

fn is_transient(err: &DbErr) -> bool {
    sqlstate(err).is_some_and(|code| code == "40001" || code == "40P01")
}

/// The SQLSTATE of a database error, if it is one.
fn sqlstate(err: &DbErr) -> Option<String> {
    let (DbErr::Query(RuntimeErr::SqlxError(e))
    | DbErr::Exec(RuntimeErr::SqlxError(e))
    | DbErr::Conn(RuntimeErr::SqlxError(e))) = err
    else {
        return None;
    };
    e.as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned())
}

/// Stores the outcome of the claimed attempt and schedules what comes next by `policy`.
///
/// Fails with [`DeliveryError::StaleClaim`], changing nothing, when the delivery was claimed
/// again since (the lease ran out) or this attempt was already reported.
pub async fn record_outcome<C: ConnectionTrait>(
    db: &C,
    claim: &Claim,
    outcome: &AttemptOutcome,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
    rng: &mut impl JitterSource,
) -> Result<Recorded, DeliveryError> {
    let attempts = u32::try_from(claim.attempt).unwrap_or(0);
    let decision = policy.next_attempt(attempts, outcome, now, rng);
    let status = match outcome {
        AttemptOutcome::Status { code, .. } => Some(i32::from(*code)),
        _ => None,
    };
    let mut update = wd::Entity::update_many()
        .col_expr(wd::Column::StatusCode, Expr::value(status))
        .filter(wd::Column::Id.eq(claim.delivery.id.as_str()))
        .filter(wd::Column::AttemptCount.eq(claim.attempt))
        .filter(wd::Column::DeliveredAt.is_null())
        .filter(wd::Column::StatusCode.is_null())
        .filter(wd::Column::ErrorMessage.is_null());
    let recorded = match decision {
        Decision::Delivered => {
            update = update
                .col_expr(wd::Column::DeliveredAt, Expr::value(Some(at(now))))
                .col_expr(
                    wd::Column::NextRetryAt,
                    Expr::value(None::<DateTimeWithTimeZone>),
                );
            Recorded::Delivered
        }
        Decision::RetryAt(next) => {
            update = update
                .col_expr(wd::Column::ErrorMessage, Expr::value(error_text(outcome)))
                .col_expr(wd::Column::NextRetryAt, Expr::value(Some(at(next))));
            Recorded::RetryAt(at(next).to_utc())
        }
        Decision::GiveUp(reason) => {
            update = update
                .col_expr(wd::Column::ErrorMessage, Expr::value(error_text(outcome)))
                .col_expr(
                    wd::Column::NextRetryAt,
                    Expr::value(None::<DateTimeWithTimeZone>),
                );
            Recorded::Exhausted(reason)
        }
    };
    let result = retry_transient!(update.clone().exec(db))?;
    if result.rows_affected == 0 {
        return Err(DeliveryError::StaleClaim {
            id: claim.delivery.id.clone(),
            attempt: claim.attempt,
        });
    }
    tracing::debug!(delivery = %claim.delivery.id, attempt = claim.attempt, ?recorded, "recorded attempt");
    Ok(recorded)
}

/// Records that the receiver accepted the claimed attempt with `status_code` (2xx).
///
/// A status outside 2xx is recorded as the failure it is, by the default policy's rules; call
/// [`record_outcome`] to use another policy.
pub async fn record_success<C: ConnectionTrait>(
    db: &C,
    claim: &Claim,
    status_code: u16,
    now: DateTime<Utc>,
) -> Result<Recorded, DeliveryError> {
    let outcome = AttemptOutcome::Status {
        code: status_code,
        retry_after: None,
    };
    record_outcome(
        db,
        claim,
        &outcome,
        &DEFAULT_POLICY,
        now,
        &mut crate::retry::FixedJitter(0.5),
    )
    .await
}

/// Records a failed attempt (an error status, a timeout or a connection error) and schedules
/// the next one by `policy`, or marks the delivery exhausted.
pub async fn record_failure<C: ConnectionTrait>(
    db: &C,
    claim: &Claim,
    outcome: &AttemptOutcome,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
    rng: &mut impl JitterSource,
) -> Result<Recorded, DeliveryError> {
    record_outcome(db, claim, outcome, policy, now, rng).await
}

/// Makes an exhausted delivery due again at `now`, with a fresh budget of attempts. The last
/// error stays visible until the next attempt starts.
pub async fn requeue<C: ConnectionTrait>(
    db: &C,
    id: &str,
    now: DateTime<Utc>,
) -> Result<WebhookDelivery, DeliveryError> {
    let current = get(db, id, now).await?;
    if current.state != DeliveryState::Failed {
        return Err(DeliveryError::NotRequeueable {
            id: id.to_owned(),
            state: current.state,
        });
    }
    let result = wd::Entity::update_many()
        .col_expr(wd::Column::NextRetryAt, Expr::value(Some(at(now))))
        .col_expr(wd::Column::AttemptCount, Expr::value(0))
        .filter(wd::Column::Id.eq(id))
        .filter(DeliveryState::Failed.condition(now))
        .exec(db)
        .await?;
    if result.rows_affected == 0 {
        // Requeued (or deleted) by someone else in between.
        let current = get(db, id, now).await?;
        return Err(DeliveryError::NotRequeueable {
            id: id.to_owned(),
            state: current.state,
        });
    }
    get(db, id, now).await
}

/// One delivery by id.
pub async fn get<C: ConnectionTrait>(
    db: &C,
    id: &str,
    now: DateTime<Utc>,
) -> Result<WebhookDelivery, DeliveryError> {
    wd::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(|row| WebhookDelivery::from_model(row, now))
        .ok_or_else(|| DeliveryError::NotFound(id.to_owned()))
}

/// Filters and position of a [`history`] page.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    /// Only deliveries in this state.
    pub state: Option<DeliveryState>,
    /// Only deliveries of this event type.
    pub event_type: Option<String>,
    /// Where the previous page ended ([`HistoryPage::next_cursor`]); `None` for the first page.
    pub cursor: Option<String>,
    /// Page size, 1..=[`MAX_PAGE_SIZE`]; 0 means 50.
    pub limit: u64,
}

/// One page of an agent's history, newest first.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryPage {
    /// The deliveries.
    pub items: Vec<WebhookDelivery>,
    /// The cursor of the next page, `None` on the last page.
    pub next_cursor: Option<String>,
}

/// An agent's deliveries, newest first, by keyset pagination over `(created_at, id)`.
///
/// Each page is an index range scan on `(agent_id, created_at, id)` that starts where the
/// previous one ended, so page 1000 costs what page 1 costs. Rows inserted while a client
/// walks the pages are newer than its cursor: they never shift the pages it has not read yet.
pub async fn history<C: ConnectionTrait>(
    db: &C,
    agent_id: &str,
    query: &HistoryQuery,
    now: DateTime<Utc>,
) -> Result<HistoryPage, DeliveryError> {
    let (select, limit) = history_select(db.get_database_backend(), agent_id, query, now)?;
    let mut rows = select.all(db).await?;
    let more = rows.len() as u64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = match rows.last() {
        Some(last) if more => Some(encode_cursor(last.created_at.to_utc(), &last.id)),
        _ => None,
    };
    Ok(HistoryPage {
        items: rows
            .into_iter()
            .map(|row| WebhookDelivery::from_model(row, now))
            .collect(),
        next_cursor,
    })
}

/// The query [`history`] runs for one page (it fetches one row more than the page size to
/// know whether another page follows), with that page size; exposed for `EXPLAIN`.
pub fn history_select(
    backend: DbBackend,
    agent_id: &str,
    query: &HistoryQuery,
    now: DateTime<Utc>,
) -> Result<(Select<wd::Entity>, u64), DeliveryError> {
    let limit = match query.limit {
        0 => 50,
        n if n > MAX_PAGE_SIZE => return Err(DeliveryError::InvalidLimit(n)),
        n => n,
    };
    let mut select = wd::Entity::find().filter(wd::Column::AgentId.eq(agent_id));
    if let Some(state) = query.state {
        select = select.filter(state.condition(now));
    }
    if let Some(event_type) = &query.event_type {
        select = select.filter(wd::Column::EventType.eq(event_type.as_str()));
    }
    if let Some(cursor) = &query.cursor {
        let (created_at, id) = decode_cursor(cursor)?;
        let created_at = at(created_at);
        select = select.filter(
            Condition::all()
                .add(wd::Column::CreatedAt.lte(created_at))
                .add(
                    Condition::any()
                        .add(wd::Column::CreatedAt.lt(created_at))
                        .add(wd::Column::Id.lt(id)),
                ),
        );
    }
    let mut select = select
        .order_by_desc(wd::Column::CreatedAt)
        .order_by_desc(wd::Column::Id)
        .limit(limit + 1);
    if backend == DbBackend::MySql {
        // MariaDB otherwise reads the index by `agent_id` alone and filters the rows newer
        // than the cursor one by one, so page 100 costs 10x page 1 (measured by the bench).
        QueryTrait::query(&mut select).force_index(Alias::new(HISTORY_INDEX), IndexHintScope::All);
    }
    Ok((select, limit))
}

/// An agent's delivery figures at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryStats {
    /// Deliveries waiting to be claimed.
    pub pending: u64,
    /// Deliveries a worker is sending.
    pub leased: u64,
    /// Deliveries the receiver accepted.
    pub delivered: u64,
    /// Exhausted deliveries.
    pub failed: u64,
    /// When the receiver last accepted a delivery.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Exhausted deliveries enqueued after the last delivered one: the current run of failures.
    pub consecutive_failures: u64,
}

/// Counts by state, last success and the current run of failures of one agent.
pub async fn stats<C: ConnectionTrait>(
    db: &C,
    agent_id: &str,
    now: DateTime<Utc>,
) -> Result<DeliveryStats, DeliveryError> {
    let of_agent = || wd::Entity::find().filter(wd::Column::AgentId.eq(agent_id));
    let mut stats = DeliveryStats::default();
    for state in DeliveryState::ALL {
        let count = of_agent().filter(state.condition(now)).count(db).await?;
        match state {
            DeliveryState::Pending => stats.pending = count,
            DeliveryState::Leased => stats.leased = count,
            DeliveryState::Delivered => stats.delivered = count,
            DeliveryState::Failed => stats.failed = count,
        }
    }
    let last_success = of_agent()
        .filter(wd::Column::DeliveredAt.is_not_null())
        .order_by_desc(wd::Column::DeliveredAt)
        .one(db)
        .await?;
    let mut failures = of_agent().filter(DeliveryState::Failed.condition(now));
    if let Some(last) = &last_success {
        stats.last_success_at = last.delivered_at.map(|t| t.to_utc());
        failures = failures.filter(wd::Column::CreatedAt.gt(last.created_at));
    }
    stats.consecutive_failures = failures.count(db).await?;
    Ok(stats)
}

/// Deletes delivered and exhausted deliveries enqueued before `older_than`, `batch` rows per
/// statement, and returns how many it deleted. Pending and leased deliveries are never deleted
/// (they have a `next_retry_at`). Safe to interrupt and to run concurrently with workers.
///
/// `on_batch` is called after each statement with the number deleted so far, so that a long
/// prune can show progress; pass `|_| {}` when nobody watches.
pub async fn prune<C: ConnectionTrait>(
    db: &C,
    older_than: DateTime<Utc>,
    batch: u64,
    mut on_batch: impl FnMut(u64),
) -> Result<u64, DeliveryError> {
    if batch == 0 {
        return Err(DeliveryError::InvalidLimit(batch));
    }
    let finished_before = Condition::all()
        .add(wd::Column::CreatedAt.lt(at(older_than)))
        .add(wd::Column::NextRetryAt.is_null());
    let mut total = 0;
    loop {
        let deleted = match db.get_database_backend() {
            // MySQL cannot `DELETE … WHERE id IN (SELECT … LIMIT n)` but has `DELETE … LIMIT`.
            DbBackend::MySql => {
                let mut delete = Query::delete();
                delete
                    .from_table(wd::Entity)
                    .cond_where(finished_before.clone())
                    .limit(batch);
                db.execute(&delete).await?.rows_affected()
            }
            _ => {
                let mut ids = Query::select();
                ids.column(wd::Column::Id)
                    .from(wd::Entity)
                    .cond_where(finished_before.clone())
                    .limit(batch);
                wd::Entity::delete_many()
                    .filter(Expr::col(wd::Column::Id).in_subquery(ids))
                    .exec(db)
                    .await?
                    .rows_affected
            }
        };
        total += deleted;
        on_batch(total);
        if deleted < batch {
            return Ok(total);
        }
    }
}

/// An instant as stored: UTC, truncated to microseconds (the precision of PostgreSQL and
/// MariaDB), so that what is written compares equal to what is read back.
fn at(t: DateTime<Utc>) -> DateTimeWithTimeZone {
    let micros = t
        .with_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t);
    micros.fixed_offset()
}

fn check_event_field(field: &'static str, value: &str) -> Result<(), DeliveryError> {
    if value.trim().is_empty() || value.len() > 255 {
        return Err(DeliveryError::InvalidEvent {
            field,
            rule: "must be 1 to 255 characters",
        });
    }
    Ok(())
}

fn error_text(outcome: &AttemptOutcome) -> String {
    let mut text = match outcome {
        AttemptOutcome::Status { code, .. } => format!("HTTP {code}"),
        AttemptOutcome::Timeout => "timed out".to_owned(),
        AttemptOutcome::Connection(message) => format!("connection failed: {message}"),
    };
    if text.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn encode_cursor(created_at: DateTime<Utc>, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{id}", created_at.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, String), DeliveryError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| DeliveryError::BadCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| DeliveryError::BadCursor)?;
    let (micros, id) = text.split_once('|').ok_or(DeliveryError::BadCursor)?;
    let micros: i64 = micros.parse().map_err(|_| DeliveryError::BadCursor)?;
    let created_at = DateTime::from_timestamp_micros(micros).ok_or(DeliveryError::BadCursor)?;
    Ok((created_at, id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let t = DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let cursor = encode_cursor(t, "dlv-1|x");
        assert_eq!(decode_cursor(&cursor).unwrap(), (t, "dlv-1|x".to_owned()));
        for bad in [
            "",
            "!!!",
            "bm90IGEgY3Vyc29y",
            &URL_SAFE_NO_PAD.encode("abc|id"),
        ] {
            assert!(
                matches!(decode_cursor(bad), Err(DeliveryError::BadCursor)),
                "{bad}"
            );
        }
    }

    #[test]
    fn state_names_parse() {
        for state in DeliveryState::ALL {
            assert_eq!(state.as_str().parse::<DeliveryState>().unwrap(), state);
        }
        assert!("exhausted".parse::<DeliveryState>().is_err());
    }

    #[test]
    fn error_text_is_bounded_on_a_char_boundary() {
        let long = AttemptOutcome::Connection("é".repeat(MAX_ERROR_LEN));
        let text = error_text(&long);
        assert!(text.len() <= MAX_ERROR_LEN);
        assert!(text.starts_with("connection failed: é"));
    }
}
