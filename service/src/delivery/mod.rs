//! Delivery bookkeeping: what to send, what happened, what to try again.
//!
//! `webhook_deliveries` is the only source of truth; a worker may crash at any point and the
//! next one carries on. The lifecycle diagram and the decisions behind it are in
//! `docs/deliveries.md`; the states are defined once, on [`DeliveryState`].
//!
//! * [`enqueue`] inserts a delivery with its payload bytes, due at once, if the agent's webhook
//!   is enabled and wants the event; the unique `(agent_id, event_id)` index makes it
//!   idempotent, also under races.
//! * [`enqueue_for_agent`] is `enqueue` for an agent row the caller holds (the transactional
//!   outbox: one statement for a new delivery); [`enqueue_many`] enqueues a batch (fan-out or
//!   bulk) in one statement per batch; [`record_outcomes`] records a finished batch of claims in
//!   one guarded statement. Their statement counts are in `docs/benchmarks.md`.
//! * [`claim_due`] leases due deliveries to one worker in one atomic step and counts the
//!   attempt as started (a delivery that crashes its worker still runs out of attempts). It
//!   does not look at the agent (the claim stays a scan of one index of one table): a delivery
//!   whose agent was soft-deleted after enqueue is claimed, refused by
//!   [`crate::dispatch::sign::prepare_request`] with [`Error::AgentNotFound`], and the worker records
//!   it as failed with that reason through [`abandon`].
//! * [`record_outcome`] stores the result and asks the [`RetryPolicy`](crate::delivery::retry::RetryPolicy)
//!   of the settings what comes next, guarded by the claim so a late report cannot overwrite a
//!   newer attempt. It also keeps the agent's endpoint health: a run of failures that lasts
//!   the settings' `disable_after` disables the webhook (see `docs/deliveries.md`).
//! * [`record_attempt`] appends to the attempt log (`webhook_delivery_attempts`), which
//!   [`attempts`] reads back.
//! * [`requeue`] lets an operator send an exhausted delivery again, [`recover`] every exhausted
//!   delivery of an agent since an instant (after an outage); [`prune`] keeps the table
//!   small (the attempt log goes with its deliveries).
//!
//! Every function can run inside the caller's transaction. Under concurrency PostgreSQL and
//! MySQL pick deadlock victims. The functions that retry a victim themselves ([`claim_due`],
//! [`record_outcome`], [`record_outcomes`], [`release`], [`abandon`]) take an
//! [`IntoDatabaseExecutor`]: `&DatabaseConnection`, `&DatabaseTransaction` or a
//! [`DatabaseExecutor`], which tells them which they were handed. (Pass a transaction by
//! reference: an owned one would be rolled back when the call drops it.) Handed a pool, they
//! run the victim statement again, a few times. Handed a transaction, they cannot: MySQL
//! rolled back all of the caller's work with the victim and PostgreSQL aborted it, so the
//! error goes back, [`Error::is_transient`] says so, and the caller runs its whole transaction
//! again; they begin no savepoint in it. The other functions take any `&C: ConnectionTrait`
//! and never retry, so a victim among them is reported the same way.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use entity::{agents, webhook_deliveries as wd};
use sea_orm::prelude::DateTimeWithTimeZone;
use sea_orm::sea_query::extension::mysql::{IndexHintScope, MySqlSelectStatementExt};
use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, Func, LockBehavior, LockType, OnConflict, Query, SelectStatement,
    UpdateStatement,
};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseExecutor, DbBackend, DbErr, EntityTrait,
    IntoDatabaseExecutor, Order, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select,
    Statement,
};
use serde::Serialize;

use crate::agent::AgentWebhook;
pub use crate::db::{MAX_PAGE_SIZE, Now};
use crate::db::{at, check_limit, in_transaction, instant_expr, retry_statement, stamp};
use crate::delivery::retry::{AttemptOutcome, Decision};
use crate::error::sql_state;
use crate::error::{Error, Result};
use crate::settings::WebhookSettings;

mod batch;
pub mod retry;

pub use batch::{EnqueueItem, enqueue_for_agent, enqueue_many, record_outcomes};

/// Longest error text kept per attempt; a receiver's error page can be large.
pub const MAX_ERROR_LEN: usize = 2000;
/// The history page size when the caller does not choose one.
pub const DEFAULT_PAGE_SIZE: u64 = 50;

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
#[cfg_attr(feature = "axum", derive(utoipa::ToSchema))]
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
    fn condition(self, backend: DbBackend, now: DateTime<Utc>) -> Condition {
        let now = stamp(backend, now);
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

/// A delivery as the app server and operators see it (the specification's `WebhookDelivery`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "axum", derive(utoipa::ToSchema))]
pub struct WebhookDelivery {
    /// `dlv-<uuid v7>`, so ids sort by creation time.
    pub id: String,
    /// The agent whose webhook this is.
    pub agent_id: String,
    /// The agent's organization, for tenant checks without a join.
    pub organization_id: String,
    /// The `webhook-id` a receiver uses to drop duplicates.
    pub event_id: String,
    /// The event's type, e.g. `run.completed`.
    pub event_type: String,
    /// The URL captured at enqueue: a later change of configuration does not redirect it.
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
    /// The agent is soft-deleted (`is_deleted = true`): the platform treats it as gone.
    AgentDeleted,
}

/// A worker's lease on one delivery, returned by [`claim_due`] and handed back when reporting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The delivery as claimed (state `Leased`).
    pub delivery: WebhookDelivery,
    /// The attempt this claim is for (1 for the first): the guard of [`record_outcome`].
    pub attempt: i32,
    /// When the lease runs out and the delivery becomes due again.
    pub lease_until: DateTime<Utc>,
    /// The body bytes fixed at enqueue, sent unchanged by every attempt; `None` for deliveries
    /// enqueued before payloads were stored (the worker cannot send those).
    pub payload: Option<Vec<u8>>,
}

/// Why an attempt did not end in a usable HTTP answer (or which kind of answer it was), as the
/// attempt log stores it: one word an operator can filter on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "axum", derive(utoipa::ToSchema))]
pub enum ErrorClass {
    /// The host name did not resolve.
    Dns,
    /// TCP connect failed (refused, unreachable, connect timeout).
    Connect,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// No complete answer within the attempt's timeout.
    Timeout,
    /// A 3xx: redirects are never followed.
    Redirect,
    /// Any other non-2xx status.
    HttpStatus,
    /// The response body was larger than the cap; the rest was not read.
    BodyTooLarge,
    /// The URL or an address its host resolved to is not allowed by the URL policy: nothing
    /// was sent.
    SsrfBlocked,
    /// The delivery cannot be sent at all (no payload stored, no secret): nothing was sent.
    NotSendable,
}

impl ErrorClass {
    /// Every class, for parsing and documentation.
    pub const ALL: [ErrorClass; 9] = [
        Self::Dns,
        Self::Connect,
        Self::Tls,
        Self::Timeout,
        Self::Redirect,
        Self::HttpStatus,
        Self::BodyTooLarge,
        Self::SsrfBlocked,
        Self::NotSendable,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Timeout => "timeout",
            Self::Redirect => "redirect",
            Self::HttpStatus => "http_status",
            Self::BodyTooLarge => "body_too_large",
            Self::SsrfBlocked => "ssrf_blocked",
            Self::NotSendable => "not_sendable",
        }
    }

    /// The class of a stored spelling; `None` for a word this version does not know.
    pub fn parse(value: &str) -> Option<ErrorClass> {
        Self::ALL.into_iter().find(|class| class.as_str() == value)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Response-body bytes kept per attempt in the attempt log.
pub const RESPONSE_PREFIX_LEN: usize = 1024;

/// One row of the attempt log: what one attempt did, for operators debugging a receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "axum", derive(utoipa::ToSchema))]
pub struct AttemptRecord {
    /// The attempt number (1 for the first), as in [`Claim::attempt`].
    pub attempt: i32,
    /// When the worker started the attempt.
    pub started_at: DateTime<Utc>,
    /// When it had its outcome.
    pub finished_at: DateTime<Utc>,
    /// The HTTP status, when the receiver answered.
    pub status_code: Option<i32>,
    /// `None` for a 2xx whose body was read within the cap.
    pub error_class: Option<ErrorClass>,
    /// A short description (bounded by [`MAX_ERROR_LEN`]); never the payload or a secret.
    pub message: Option<String>,
    /// The start of the response body, as [`body_excerpt`] keeps it: text, or `base64:…` for a
    /// body that is not UTF-8 text (compressed, binary, holding a NUL byte).
    pub response_body_prefix: Option<String>,
    /// The socket address actually connected to, when a connection was made.
    pub remote_addr: Option<String>,
}

/// An event's JSON body as the app hands it to [`enqueue`]: what the receiver gets.
#[derive(Clone, Copy, Debug)]
pub struct Payload<'a>(PayloadSource<'a>);

#[derive(Clone, Copy, Debug)]
enum PayloadSource<'a> {
    Json(&'a [u8]),
    Value(&'a serde_json::Value),
}

impl<'a> Payload<'a> {
    /// JSON text, stored and sent byte for byte; [`enqueue`] refuses it with
    /// [`PayloadError::NotJson`] unless it is one JSON value in UTF-8.
    pub fn json(text: &'a [u8]) -> Payload<'a> {
        Payload(PayloadSource::Json(text))
    }

    /// The bytes to store: the app's own, checked, or `serde_json`'s compact writing of a
    /// value; refused beyond `max` bytes.
    fn bytes(self, max: usize) -> Result<Vec<u8>, PayloadError> {
        let bytes = match self.0 {
            PayloadSource::Json(text) => {
                if text.len() <= max {
                    let text = std::str::from_utf8(text).map_err(|e| {
                        PayloadError::NotJson(serde::de::Error::custom(format_args!(
                            "not UTF-8 at byte {}",
                            e.valid_up_to()
                        )))
                    })?;
                    serde_json::from_str::<serde::de::IgnoredAny>(text)
                        .map_err(PayloadError::NotJson)?;
                }
                text.to_vec()
            }
            PayloadSource::Value(value) => {
                serde_json::to_vec(value).map_err(PayloadError::NotJson)?
            }
        };
        if bytes.len() > max {
            return Err(PayloadError::TooLarge {
                size: bytes.len(),
                max,
            });
        }
        Ok(bytes)
    }
}

impl<'a> From<&'a serde_json::Value> for Payload<'a> {
    fn from(value: &'a serde_json::Value) -> Self {
        Payload(PayloadSource::Value(value))
    }
}

impl<'a> From<&'a serde_json::value::RawValue> for Payload<'a> {
    fn from(raw: &'a serde_json::value::RawValue) -> Self {
        Payload::json(raw.get().as_bytes())
    }
}

/// Why a payload cannot be enqueued.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Larger than the `WEBHOOK_MAX_PAYLOAD_BYTES` setting.
    #[error("payload is {size} bytes, more than the {max}-byte limit (WEBHOOK_MAX_PAYLOAD_BYTES)")]
    TooLarge {
        /// Its size as stored.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The text is not one JSON value in UTF-8, or the value cannot be written as JSON.
    #[error("payload is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
}

/// Enqueues `event_id` of `event_type` with `payload` for the agent's webhook, if it is enabled
/// and wants it and the agent is not soft-deleted ([`SkipReason`] says which rule skipped it).
///
/// The payload is stored as bytes and every attempt signs and sends exactly those bytes: JSON
/// text the app hands over ([`Payload::json`], a `&RawValue`) is checked to be JSON and kept
/// byte for byte (key order, duplicate keys, number spelling, escapes), and a
/// `&serde_json::Value` is written once by `serde_json`, compact. A payload larger than the
/// settings' `max_payload_bytes` is refused with [`PayloadError::TooLarge`], before the agent
/// is read.
///
/// Idempotent: the same `(agent, event_id)` yields the same delivery, also when callers race
/// (the unique index decides, not a read-then-write), and also inside a caller's transaction
/// (the transactional outbox) on every backend: the loser gets [`Enqueued::Existing`], and the
/// first payload stays.
pub async fn enqueue<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_id: &str,
    event_id: &str,
    event_type: &str,
    payload: impl Into<Payload<'_>>,
    now: DateTime<Utc>,
) -> Result<Enqueued> {
    let payload = checked_event(settings, event_id, event_type, payload.into())?;
    let agent = agents::Entity::find_by_id(agent_id)
        .into_partial_model::<AgentWebhook>()
        .one(db)
        .await?
        .ok_or_else(|| Error::AgentNotFound(agent_id.to_owned()))?;
    batch::insert_for_agent(db, settings, &agent, event_id, event_type, payload, now).await
}

/// The payload of an event as the bytes every attempt sends, once the event passed the checks
/// of [`enqueue`]: payload cap, `event_id` and `event_type` rules.
fn checked_event(
    settings: &WebhookSettings,
    event_id: &str,
    event_type: &str,
    payload: Payload<'_>,
) -> Result<Vec<u8>> {
    let payload = payload.bytes(settings.max_payload_bytes)?;
    check_event_field("event_id", event_id)?;
    // The event id is the `webhook-id` every attempt is signed with: refuse now what could
    // never be signed, rather than fail every attempt later.
    crate::secrets::signing::check_message_id(event_id).map_err(|_| Error::InvalidEvent {
        field: "event_id",
        rule: "it is the webhook-id header: visible ASCII only, without `.`",
    })?;
    check_event_field("event_type", event_type)?;
    Ok(payload)
}

/// Where a delivery of `event_type` to `agent` goes: its webhook URL, or why it is skipped.
fn destination(agent: &AgentWebhook, event_type: &str) -> Result<Result<String, SkipReason>> {
    if !agent.is_live() {
        return Ok(Err(SkipReason::AgentDeleted));
    }
    if !agent.webhook_enabled {
        return Ok(Err(SkipReason::Disabled));
    }
    let Some(url) = agent.webhook_url.clone() else {
        return Ok(Err(SkipReason::NoUrl));
    };
    if event_type != crate::webhook::events::TEST_EVENT
        && !crate::webhook::stored_events(agent)?.wants(event_type)
    {
        return Ok(Err(SkipReason::NotWanted));
    }
    Ok(Ok(url))
}

/// The PostgreSQL channel [`enqueue`] notifies when it creates a delivery and idle workers
/// listen on (see the settings' `listen`).
pub const NOTIFY_CHANNEL: &str = "agent_webhooks_deliveries";

/// Leases up to `limit` due deliveries (earliest `next_retry_at` first) to the caller for the
/// settings' `claim_lease`.
///
/// One atomic step per backend, so concurrent workers never get the same delivery:
/// PostgreSQL runs one `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`;
/// SQLite, which serialises writers, one `UPDATE … RETURNING`; MariaDB/MySQL, which have no
/// `UPDATE … RETURNING`, a transaction of `SELECT … FOR UPDATE SKIP LOCKED`, `UPDATE`, `SELECT`.
///
/// A due delivery whose final attempt (by the settings' `retry.max_attempts`) ran out of lease
/// without a report is marked exhausted by the same statement and not returned, so a call may
/// return fewer than `limit` claims while more are due; call again until it returns none.
pub async fn claim_due(
    db: impl IntoDatabaseExecutor<'_>,
    settings: &WebhookSettings,
    now: impl Into<Now>,
    limit: u64,
) -> Result<Vec<Claim>> {
    let db = &db.into_database_executor();
    let limit = check_limit(limit)?;
    let backend = db.get_database_backend();
    let plan = ClaimPlan::new(backend, settings, now.into(), limit);
    let rows = match backend {
        DbBackend::MySql => {
            let (due, lease) = (plan.due, plan.lease);
            in_transaction(db, |txn| {
                let (due, lease) = (due.clone(), lease.clone());
                Box::pin(async move { Ok(claim_locked(txn, &due, &lease).await?) })
            })
            .await?
        }
        _ => {
            let statement = plan.single_statement(backend);
            retry_statement(db, || {
                wd::Entity::find().from_raw_sql(statement.clone()).all(db)
            })
            .await?
        }
    };
    let lease = chrono::Duration::from_std(settings.claim_lease).unwrap_or(chrono::Duration::MAX);
    Ok(rows
        .into_iter()
        .filter_map(|mut row| {
            // Rows marked exhausted by this claim are not leased to the caller. A leased row's
            // `next_retry_at` is its lease, on the clock the claim was decided by.
            let lease_until = row.next_retry_at?.to_utc();
            let now = lease_until.checked_sub_signed(lease).unwrap_or(lease_until);
            Some(Claim {
                attempt: row.attempt_count,
                lease_until,
                payload: row.payload.take(),
                delivery: WebhookDelivery::from_model(row, now),
            })
        })
        .collect())
}

/// The two halves of a claim: the due rows (locked, skipping rows other workers hold, where
/// the backend can) and the update that leases them.
struct ClaimPlan {
    due: SelectStatement,
    lease: UpdateStatement,
}

impl ClaimPlan {
    fn new(backend: DbBackend, settings: &WebhookSettings, now: Now, limit: u64) -> Self {
        let max_attempts = i32::try_from(settings.retry.max_attempts).unwrap_or(i32::MAX);
        let lease_for =
            chrono::Duration::from_std(settings.claim_lease).unwrap_or(chrono::Duration::MAX);

        let mut due = Query::select();
        due.column(wd::Column::Id)
            .from(wd::Entity)
            .and_where(Expr::col(wd::Column::NextRetryAt).lte(instant_expr(
                backend,
                now,
                chrono::Duration::zero(),
            )))
            .and_where(wd::Column::DeliveredAt.is_null())
            .order_by(wd::Column::NextRetryAt, Order::Asc)
            .limit(limit);
        if backend != DbBackend::Sqlite {
            due.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        // A due row whose attempts are used up (its final attempt's lease ran out without a
        // report) is marked exhausted instead of leased, in the same statement, so the claim
        // never has to scan the due range for such rows separately. `attempt_count` is
        // assigned last: MySQL evaluates assignments left to right.
        let used_up = || Expr::col(wd::Column::AttemptCount).gte(max_attempts);
        let mut lease = Query::update();
        lease
            .table(wd::Entity)
            .value(
                wd::Column::NextRetryAt,
                Expr::case(used_up(), Expr::value(None::<DateTimeWithTimeZone>))
                    .finally(instant_expr(backend, now, lease_for)),
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
        ClaimPlan { due, lease }
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

/// The error of a delivery whose final attempt's lease ran out without a report.
const LOST_FINAL_ATTEMPT: &str =
    "no result was reported for the final attempt before its lease ran out";

/// MySQL's stand-in for `UPDATE … RETURNING id`, in the caller's transaction: locks the rows
/// `lock` selects (its first column is their id) and applies `update` to exactly those; returns
/// their ids. Shared by the claim and the batched record.
async fn update_locked<C: ConnectionTrait>(
    txn: &C,
    lock: &SelectStatement,
    update: &UpdateStatement,
) -> Result<Vec<String>, DbErr> {
    let ids: Vec<String> = txn
        .query_all(lock)
        .await?
        .iter()
        .map(|row| row.try_get_by_index::<String>(0))
        .collect::<Result<_, _>>()?;
    if !ids.is_empty() {
        let mut update = update.clone();
        update.and_where(wd::Column::Id.is_in(ids.clone()));
        txn.execute(&update).await?;
    }
    Ok(ids)
}

/// MySQL's claim, run [`in_transaction`]: lock the due rows, lease them, read them.
async fn claim_locked<C: ConnectionTrait>(
    txn: &C,
    due: &SelectStatement,
    lease_update: &UpdateStatement,
) -> Result<Vec<wd::Model>, DbErr> {
    let ids = update_locked(txn, due, lease_update).await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    wd::Entity::find()
        .filter(wd::Column::Id.is_in(ids))
        .all(txn)
        .await
}

/// Sends a guarded single-row update (see [`claimed`]) with [`retry_statement`]; answers how
/// many rows it changed.
async fn exec_claimed(
    db: &DatabaseExecutor<'_>,
    update: &sea_orm::UpdateMany<wd::Entity>,
) -> Result<u64, DbErr> {
    let result = retry_statement(db, || update.clone().exec(db)).await?;
    Ok(result.rows_affected)
}

/// The ids among `ids` of deliveries that exist, in one statement (none for no ids).
pub(crate) async fn existing_ids<C: ConnectionTrait>(
    db: &C,
    ids: &[&str],
) -> Result<std::collections::HashSet<String>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    Ok(wd::Entity::find()
        .select_only()
        .column(wd::Column::Id)
        .filter(wd::Column::Id.is_in(ids.iter().copied()))
        .into_tuple::<String>()
        .all(db)
        .await?
        .into_iter()
        .collect())
}

/// Stores the outcome of the claimed attempt and decides, by the settings' retry policy, what
/// comes next: [`Decision::Delivered`], a retry at an instant (as stored, to the microsecond),
/// or [`Decision::GiveUp`].
///
/// Fails with [`Error::StaleClaim`], changing nothing, when the delivery was claimed again
/// since (the lease ran out) or this attempt was already reported.
pub async fn record_outcome(
    db: impl IntoDatabaseExecutor<'_>,
    settings: &WebhookSettings,
    claim: &Claim,
    outcome: &AttemptOutcome,
    now: DateTime<Utc>,
) -> Result<Decision> {
    let db = &db.into_database_executor();
    let attempts = u32::try_from(claim.attempt).unwrap_or(0);
    // The thread-local generator is not `Send`: it is used and dropped before the first await.
    let decision = settings
        .retry
        .next_attempt(attempts, outcome, now, &mut rand::rng());
    let status = match outcome {
        AttemptOutcome::Status { code, .. } => Some(i32::from(*code)),
        _ => None,
    };
    let no_retry = || Expr::value(None::<DateTimeWithTimeZone>);
    let backend = db.get_database_backend();
    let mut update = claimed(claim).col_expr(wd::Column::StatusCode, Expr::value(status));
    let decision = match decision {
        Decision::Delivered => {
            update = update
                .col_expr(wd::Column::DeliveredAt, Expr::value(stamp(backend, now)))
                .col_expr(wd::Column::NextRetryAt, no_retry());
            decision
        }
        Decision::RetryAt(next) => {
            update = update
                .col_expr(wd::Column::ErrorMessage, Expr::value(error_text(outcome)))
                .col_expr(wd::Column::NextRetryAt, Expr::value(stamp(backend, next)));
            Decision::RetryAt(at(next).to_utc())
        }
        Decision::GiveUp(_) => {
            update = update
                .col_expr(wd::Column::ErrorMessage, Expr::value(error_text(outcome)))
                .col_expr(wd::Column::NextRetryAt, no_retry());
            decision
        }
    };
    if exec_claimed(db, &update).await? == 0 {
        return Err(stale(claim));
    }
    tracing::debug!(delivery = %claim.delivery.id, attempt = claim.attempt, ?decision, "recorded attempt");
    let delivered = matches!(decision, Decision::Delivered);
    record_health(db, settings, &claim.delivery.agent_id, delivered, now).await?;
    Ok(decision)
}

/// Keeps the agent's endpoint health after an outcome: a failure starts the streak
/// (`webhook_failing_since`) if none is running, a success ends it, and a failure once the
/// streak is `settings.disable_after` old disables the webhook with a reason. Its pending
/// deliveries are left as they are.
///
/// The agent is read first without a lock and written only when something changes, so the
/// usual outcome (success of a healthy webhook) locks no agent row. Every write is guarded by
/// the state it changes, so concurrent workers start a streak once and disable once.
async fn record_health<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_id: &str,
    delivered: bool,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some((enabled, failing_since)) = agents::Entity::find_by_id(agent_id)
        .select_only()
        .column(agents::Column::WebhookEnabled)
        .column(agents::Column::WebhookFailingSince)
        .into_tuple::<(bool, Option<DateTimeWithTimeZone>)>()
        .one(db)
        .await?
    else {
        return Ok(());
    };
    apply_health(
        db,
        settings,
        agent_id,
        (enabled, failing_since),
        delivered,
        now,
    )
    .await
}

/// The writes of [`record_health`] for an agent whose health columns (`webhook_enabled`,
/// `webhook_failing_since`) were read as `health`: shared with the batched
/// [`record_outcomes`], which reads every agent of a batch in one statement.
async fn apply_health<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_id: &str,
    (enabled, failing_since): (bool, Option<DateTimeWithTimeZone>),
    delivered: bool,
    now: DateTime<Utc>,
) -> Result<()> {
    let backend = db.get_database_backend();
    let agent = || agents::Entity::update_many().filter(agents::Column::Id.eq(agent_id));
    if delivered {
        if failing_since.is_some() {
            agent()
                .col_expr(
                    agents::Column::WebhookFailingSince,
                    Expr::value(None::<DateTimeWithTimeZone>),
                )
                .filter(agents::Column::WebhookFailingSince.is_not_null())
                .exec(db)
                .await?;
        }
        return Ok(());
    }
    let Some(since) = failing_since else {
        agent()
            .col_expr(
                agents::Column::WebhookFailingSince,
                Expr::value(stamp(backend, now)),
            )
            .filter(agents::Column::WebhookFailingSince.is_null())
            .exec(db)
            .await?;
        return Ok(());
    };
    let Some(cutoff) = chrono::TimeDelta::from_std(settings.disable_after)
        .ok()
        .and_then(|period| now.checked_sub_signed(period))
    else {
        return Ok(());
    };
    if !enabled || since.to_utc() > cutoff {
        return Ok(());
    }
    let reason = disabled_reason(settings.disable_after);
    let disabled = agent()
        .col_expr(agents::Column::WebhookEnabled, Expr::value(false))
        .col_expr(
            agents::Column::WebhookDisabledAt,
            Expr::value(stamp(backend, now)),
        )
        .col_expr(
            agents::Column::WebhookDisabledReason,
            Expr::value(reason.as_str()),
        )
        .filter(agents::Column::WebhookEnabled.eq(true))
        .filter(agents::Column::WebhookFailingSince.lte(stamp(backend, cutoff)))
        .exec(db)
        .await?;
    if disabled.rows_affected > 0 {
        metrics::counter!(crate::metrics::AUTO_DISABLED).increment(1);
        tracing::warn!(agent = %agent_id, %reason, "webhook disabled automatically");
    }
    Ok(())
}

/// The reason stored when a webhook is disabled automatically, e.g. "no successful delivery
/// for 5 days": the period in the largest whole unit, so an operator reads the setting back.
pub fn disabled_reason(period: std::time::Duration) -> String {
    let secs = period.as_secs();
    let (n, unit) = [(86_400, "day"), (3_600, "hour"), (60, "minute")]
        .into_iter()
        .find(|(size, _)| secs >= *size && secs.is_multiple_of(*size))
        .map_or((secs, "second"), |(size, unit)| (secs / size, unit));
    let plural = if n == 1 { "" } else { "s" };
    format!("no successful delivery for {n} {unit}{plural}")
}

/// Appends one attempt of `delivery_id` to the attempt log. Recording the same attempt twice
/// keeps the first row (the unique `(delivery_id, attempt)` decides), so a retried report
/// cannot duplicate it.
pub async fn record_attempt<C: ConnectionTrait>(
    db: &C,
    delivery_id: &str,
    record: &AttemptRecord,
) -> Result<()> {
    record_attempts(db, [(delivery_id, record)]).await
}

/// [`record_attempt`] for many attempts, in one `INSERT` per [`MAX_PAGE_SIZE`] rows (the
/// worker appends a finished batch at once).
pub async fn record_attempts<'a, C, I>(db: &C, attempts: I) -> Result<()>
where
    C: ConnectionTrait,
    I: IntoIterator<Item = (&'a str, &'a AttemptRecord)>,
{
    use entity::webhook_delivery_attempts as wa;
    let bounded = |text: &Option<String>, max: usize| text.as_deref().map(|t| truncate(t, max));
    let rows: Vec<wa::ActiveModel> = attempts
        .into_iter()
        .map(|(delivery_id, record)| wa::ActiveModel {
            id: sea_orm::NotSet,
            delivery_id: sea_orm::Set(delivery_id.to_owned()),
            attempt: sea_orm::Set(record.attempt),
            started_at: sea_orm::Set(at(record.started_at)),
            finished_at: sea_orm::Set(at(record.finished_at)),
            status_code: sea_orm::Set(record.status_code),
            error_class: sea_orm::Set(record.error_class.map(|c| c.as_str().to_owned())),
            message: sea_orm::Set(bounded(&record.message, MAX_ERROR_LEN)),
            response_body_prefix: sea_orm::Set(bounded(
                &record.response_body_prefix,
                RESPONSE_PREFIX_LEN * 4,
            )),
            remote_addr: sea_orm::Set(record.remote_addr.clone()),
        })
        .collect();
    for chunk in rows.chunks(MAX_PAGE_SIZE as usize) {
        wa::Entity::insert_many(chunk.to_vec())
            .on_conflict_do_nothing_on([wa::Column::DeliveryId, wa::Column::Attempt])
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// The attempt log of one delivery, first attempt first.
pub async fn attempts<C: ConnectionTrait>(db: &C, delivery_id: &str) -> Result<Vec<AttemptRecord>> {
    use entity::webhook_delivery_attempts as wa;
    let rows = wa::Entity::find()
        .filter(wa::Column::DeliveryId.eq(delivery_id))
        .order_by_asc(wa::Column::Attempt)
        .all(db)
        .await?;
    rows.into_iter()
        .map(|row| {
            let error_class = match row.error_class.as_deref() {
                None => None,
                Some(word) => Some(ErrorClass::parse(word).ok_or_else(|| {
                    DbErr::Type(format!("unknown error_class `{word}` in the attempt log"))
                })?),
            };
            Ok(AttemptRecord {
                attempt: row.attempt,
                started_at: row.started_at.to_utc(),
                finished_at: row.finished_at.to_utc(),
                status_code: row.status_code,
                error_class,
                message: row.message,
                response_body_prefix: row.response_body_prefix,
                remote_addr: row.remote_addr,
            })
        })
        .collect()
}

/// Marks the claimed delivery failed (exhausted) without sending it, with `reason` as its
/// error: for a delivery that can never be sent, such as one whose agent was soft-deleted after
/// it was enqueued ([`crate::dispatch::sign::prepare_request`] then fails with
/// [`Error::AgentNotFound`]). Retrying would only repeat the refusal; an operator can still
/// [`requeue`] it.
///
/// Guarded by the claim like [`record_outcome`]: fails with [`Error::StaleClaim`], changing
/// nothing, when the delivery was claimed again since or this attempt was already reported.
pub async fn abandon(db: impl IntoDatabaseExecutor<'_>, claim: &Claim, reason: &str) -> Result<()> {
    let db = &db.into_database_executor();
    let update = claimed(claim)
        .col_expr(wd::Column::ErrorMessage, Expr::value(bounded(reason)))
        .col_expr(
            wd::Column::NextRetryAt,
            Expr::value(None::<DateTimeWithTimeZone>),
        );
    if exec_claimed(db, &update).await? == 0 {
        return Err(stale(claim));
    }
    tracing::info!(delivery = %claim.delivery.id, attempt = claim.attempt, reason, "abandoned delivery");
    Ok(())
}

/// Gives a claim back unsent: the delivery is due again at `due` and the attempt the claim
/// counted is uncounted, as if it had never been claimed. For a worker that cannot start the
/// attempt while the lease still covers it (its host is busy, see [`crate::dispatch`]): letting
/// the lease run out instead would delay the delivery by the lease and use up an attempt.
///
/// Guarded by the claim like [`record_outcome`]: fails with [`Error::StaleClaim`], changing
/// nothing, when the delivery was claimed again since or this attempt was already reported.
pub async fn release(
    db: impl IntoDatabaseExecutor<'_>,
    claim: &Claim,
    due: DateTime<Utc>,
) -> Result<()> {
    let db = &db.into_database_executor();
    let update = claimed(claim)
        .col_expr(
            wd::Column::NextRetryAt,
            Expr::value(stamp(db.get_database_backend(), due)),
        )
        .col_expr(wd::Column::AttemptCount, Expr::value(claim.attempt - 1));
    if exec_claimed(db, &update).await? == 0 {
        return Err(stale(claim));
    }
    Ok(())
}

/// The update of a claimed delivery, applying only while the claim is current: same attempt,
/// no result recorded yet.
fn claimed(claim: &Claim) -> sea_orm::UpdateMany<wd::Entity> {
    wd::Entity::update_many()
        .filter(wd::Column::Id.eq(claim.delivery.id.as_str()))
        .filter(wd::Column::AttemptCount.eq(claim.attempt))
        .filter(wd::Column::DeliveredAt.is_null())
        .filter(wd::Column::StatusCode.is_null())
        .filter(wd::Column::ErrorMessage.is_null())
}

fn stale(claim: &Claim) -> Error {
    Error::StaleClaim {
        id: claim.delivery.id.clone(),
        attempt: claim.attempt,
    }
}

/// Makes an exhausted delivery due again at `now`, with a fresh budget of attempts. The last
/// error stays visible until the next attempt starts.
pub async fn requeue<C: ConnectionTrait>(
    db: &C,
    id: &str,
    now: DateTime<Utc>,
) -> Result<WebhookDelivery> {
    let not_requeueable = |current: WebhookDelivery| Error::NotRequeueable {
        id: id.to_owned(),
        state: current.state,
    };
    let current = get(db, id, now).await?;
    if current.state != DeliveryState::Failed {
        return Err(not_requeueable(current));
    }
    let result = wd::Entity::update_many()
        .col_expr(
            wd::Column::NextRetryAt,
            Expr::value(stamp(db.get_database_backend(), now)),
        )
        .col_expr(wd::Column::AttemptCount, Expr::value(0))
        .filter(wd::Column::Id.eq(id))
        .filter(DeliveryState::Failed.condition(db.get_database_backend(), now))
        .exec(db)
        .await?;
    if result.rows_affected == 0 {
        // Requeued (or deleted) by someone else in between.
        return Err(not_requeueable(get(db, id, now).await?));
    }
    get(db, id, now).await
}

/// What [`recover`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "axum", derive(utoipa::ToSchema))]
pub struct RecoverReport {
    /// Failed deliveries made due again.
    pub requeued: u64,
}

/// Requeues every failed (exhausted) delivery of `agent_id` enqueued at or after `since` and
/// not after `now`, like [`requeue`] does for one: for after an outage of the receiver (Svix's
/// "recover").
///
/// Bounded work per statement: it walks the agent's deliveries in `(created_at, id)` order on
/// the history index, [`MAX_PAGE_SIZE`] failed ones at a time, and requeues each batch with one
/// `UPDATE` guarded by the failed state (a delivery requeued or deleted meanwhile is left
/// alone). The walk moves forward only, so it ends even while workers exhaust deliveries again,
/// and a run that is interrupted can be repeated: what it requeued is no longer failed.
pub async fn recover<C: ConnectionTrait>(
    db: &C,
    agent_id: &str,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<RecoverReport> {
    let backend = db.get_database_backend();
    let mut report = RecoverReport::default();
    let mut after: Option<(DateTimeWithTimeZone, String)> = None;
    loop {
        let mut select = wd::Entity::find()
            .select_only()
            .column(wd::Column::CreatedAt)
            .column(wd::Column::Id)
            .filter(wd::Column::AgentId.eq(agent_id))
            .filter(wd::Column::CreatedAt.gte(stamp(backend, since)))
            .filter(wd::Column::CreatedAt.lte(stamp(backend, now)))
            .filter(DeliveryState::Failed.condition(backend, now));
        if let Some((created_at, id)) = &after {
            let created_at = stamp(backend, created_at.to_utc());
            select = select.filter(
                Condition::any()
                    .add(wd::Column::CreatedAt.gt(created_at.clone()))
                    .add(
                        Condition::all()
                            .add(wd::Column::CreatedAt.eq(created_at))
                            .add(wd::Column::Id.gt(id.as_str())),
                    ),
            );
        }
        let rows: Vec<(DateTimeWithTimeZone, String)> = select
            .order_by_asc(wd::Column::CreatedAt)
            .order_by_asc(wd::Column::Id)
            .limit(MAX_PAGE_SIZE)
            .into_tuple()
            .all(db)
            .await?;
        let Some(last) = rows.last().cloned() else {
            return Ok(report);
        };
        let full = rows.len() as u64 == MAX_PAGE_SIZE;
        let ids = rows.into_iter().map(|(_, id)| id);
        let updated = wd::Entity::update_many()
            .col_expr(wd::Column::NextRetryAt, Expr::value(stamp(backend, now)))
            .col_expr(wd::Column::AttemptCount, Expr::value(0))
            .filter(wd::Column::Id.is_in(ids))
            .filter(DeliveryState::Failed.condition(backend, now))
            .exec(db)
            .await?;
        report.requeued += updated.rows_affected;
        if !full {
            tracing::info!(
                agent = agent_id,
                requeued = report.requeued,
                "recovered failed deliveries"
            );
            return Ok(report);
        }
        after = Some(last);
    }
}

/// One delivery by id.
pub async fn get<C: ConnectionTrait>(
    db: &C,
    id: &str,
    now: DateTime<Utc>,
) -> Result<WebhookDelivery> {
    wd::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(|row| WebhookDelivery::from_model(row, now))
        .ok_or_else(|| Error::DeliveryNotFound(id.to_owned()))
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
    /// Page size, 1..=[`MAX_PAGE_SIZE`]; 0 means [`DEFAULT_PAGE_SIZE`].
    pub limit: u64,
}

/// One page of an agent's history, newest first.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "axum", derive(utoipa::ToSchema))]
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
) -> Result<HistoryPage> {
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

/// The query of one [`history`] page (one row more than the page, to know whether another
/// follows), with the page size.
fn history_select(
    backend: DbBackend,
    agent_id: &str,
    query: &HistoryQuery,
    now: DateTime<Utc>,
) -> Result<(Select<wd::Entity>, u64)> {
    let limit = match query.limit {
        0 => DEFAULT_PAGE_SIZE,
        n => check_limit(n)?,
    };
    // Every column but the payload (up to `max_payload_bytes` a row; a page needs none), read
    // as NULL so that the rows still decode as the entity's model.
    let mut select = wd::Entity::find()
        .select_only()
        .columns(
            <wd::Column as sea_orm::Iterable>::iter().filter(|c| !matches!(c, wd::Column::Payload)),
        )
        .column_as(Expr::cust("NULL"), "payload")
        .filter(wd::Column::AgentId.eq(agent_id));
    if let Some(state) = query.state {
        select = select.filter(state.condition(backend, now));
    }
    if let Some(event_type) = &query.event_type {
        select = select.filter(wd::Column::EventType.eq(event_type.as_str()));
    }
    if let Some(cursor) = &query.cursor {
        let (created_at, id) = decode_cursor(cursor)?;
        let created_at = stamp(backend, created_at);
        select = select.filter(
            Condition::all()
                .add(wd::Column::CreatedAt.lte(created_at.clone()))
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
        QueryTrait::query(&mut select).force_index(
            Alias::new(migration::indexes::DELIVERIES_HISTORY),
            IndexHintScope::All,
        );
    }
    Ok((select, limit))
}

/// An agent's delivery figures at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "axum", derive(utoipa::ToSchema))]
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

/// Counts by state, last success and the current run of failures of one agent, in one query.
pub async fn stats<C: ConnectionTrait>(
    db: &C,
    agent_id: &str,
    now: DateTime<Utc>,
) -> Result<DeliveryStats> {
    // `created_at` of the most recently delivered delivery: failures after it are the run.
    let last_success_created = || {
        let mut last = Query::select();
        last.column(wd::Column::CreatedAt)
            .from(wd::Entity)
            .and_where(wd::Column::AgentId.eq(agent_id))
            .and_where(wd::Column::DeliveredAt.is_not_null())
            .order_by(wd::Column::DeliveredAt, Order::Desc)
            .limit(1);
        Expr::SubQuery(None, Box::new(last.into()))
    };
    let in_run = Condition::any()
        .add(last_success_created().is_null())
        .add(Expr::col(wd::Column::CreatedAt).gt(last_success_created()));
    let backend = db.get_database_backend();
    let count = |condition: Condition| Func::count(Expr::case(condition, Expr::val(1)));
    let mut select = Query::select();
    select
        .from(wd::Entity)
        .and_where(wd::Column::AgentId.eq(agent_id));
    for state in DeliveryState::ALL {
        select.expr_as(
            count(state.condition(backend, now)),
            Alias::new(state.as_str()),
        );
    }
    select
        .expr_as(
            Func::max(Expr::col(wd::Column::DeliveredAt)),
            Alias::new("last_success_at"),
        )
        .expr_as(
            count(DeliveryState::Failed.condition(backend, now).add(in_run)),
            Alias::new("consecutive_failures"),
        );
    let row = db
        .query_one(&select)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("an aggregate returned no row".to_owned()))?;
    let count_of = |name: &str| -> Result<u64> {
        let n: i64 = row.try_get("", name)?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    let last: Option<DateTimeWithTimeZone> = row.try_get("", "last_success_at")?;
    Ok(DeliveryStats {
        pending: count_of(DeliveryState::Pending.as_str())?,
        leased: count_of(DeliveryState::Leased.as_str())?,
        delivered: count_of(DeliveryState::Delivered.as_str())?,
        failed: count_of(DeliveryState::Failed.as_str())?,
        last_success_at: last.map(|t| t.to_utc()),
        consecutive_failures: count_of("consecutive_failures")?,
    })
}

/// Deletes delivered and exhausted deliveries enqueued before `older_than`, `batch` rows per
/// statement, and returns how many it deleted. Pending and leased deliveries are never deleted
/// (they have a `next_retry_at`). Safe to interrupt and to run concurrently with workers.
///
/// `pause` is slept between two statements (not after the last). Each statement is a burst of
/// database CPU, and on a small server that burst is what delays the workers' claims running
/// beside it (measured on 2 cores: the claims waited longer for a CPU, their own CPU time
/// unchanged; a pause as long as a batch brought their latency back to its level without a
/// prune, docs/benchmarks.md section 9). `Duration::ZERO` prunes as fast as the server
/// allows, for a quiet database.
///
/// `on_batch` is called after each statement with the number deleted so far, so that a long
/// prune can show progress; pass `|_| {}` when nobody watches.
pub async fn prune<C: ConnectionTrait>(
    db: &C,
    older_than: DateTime<Utc>,
    batch: u64,
    pause: std::time::Duration,
    mut on_batch: impl FnMut(u64),
) -> Result<u64> {
    let batch = check_limit(batch)?;
    let finished_before = Condition::all()
        .add(wd::Column::CreatedAt.lt(stamp(db.get_database_backend(), older_than)))
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
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Statements exposed for `EXPLAIN` tests and the benchmark's raw-SQL baseline; not an API.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// The statement [`claim_due`] sends to pick and lease due rows: on PostgreSQL and SQLite
    /// the whole claim; on MySQL its first step, the locking `SELECT`.
    pub fn claim_statement(
        backend: DbBackend,
        settings: &WebhookSettings,
        now: impl Into<Now>,
        limit: u64,
    ) -> Statement {
        let plan = ClaimPlan::new(backend, settings, now.into(), limit);
        match backend {
            DbBackend::MySql => backend.build(&plan.due),
            _ => plan.single_statement(backend),
        }
    }

    /// The query of one [`history`] page and its page size.
    pub fn history_select(
        backend: DbBackend,
        agent_id: &str,
        query: &HistoryQuery,
        now: DateTime<Utc>,
    ) -> Result<(Select<wd::Entity>, u64)> {
        super::history_select(backend, agent_id, query, now)
    }
}

fn check_event_field(field: &'static str, value: &str) -> Result<()> {
    if value.trim().is_empty() || value.len() > 255 {
        return Err(Error::InvalidEvent {
            field,
            rule: "must be 1 to 255 characters",
        });
    }
    Ok(())
}

fn error_text(outcome: &AttemptOutcome) -> String {
    let text = match outcome {
        AttemptOutcome::Status { code, .. } => format!("HTTP {code}"),
        AttemptOutcome::Timeout => "timed out".to_owned(),
        AttemptOutcome::Connection(message) => format!("connection failed: {message}"),
        AttemptOutcome::AgentDeleted(message) => message.clone(),
    };
    truncate(&text, MAX_ERROR_LEN)
}

/// `text` cut to [`MAX_ERROR_LEN`] bytes on a character boundary.
fn bounded(text: &str) -> String {
    truncate(text, MAX_ERROR_LEN)
}

/// `text` as every backend's text column can hold it, cut to at most `max` bytes on a
/// character boundary. PostgreSQL refuses a NUL character in text (and so fails the whole
/// statement, with every other row of a batch), so each NUL becomes U+FFFD; Rust strings are
/// valid UTF-8 already, which is all MySQL (utf8mb4) and SQLite ask.
fn truncate(text: &str, max: usize) -> String {
    let text: std::borrow::Cow<'_, str> = if text.contains('\0') {
        text.replace('\0', "\u{FFFD}").into()
    } else {
        text.into()
    };
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// How a response body is kept in the attempt log ([`AttemptRecord::response_body_prefix`]):
/// its first [`RESPONSE_PREFIX_LEN`] bytes as text when they are UTF-8 without a NUL byte (a
/// character cut by the limit is left out), otherwise `base64:` followed by the standard
/// base64 of those bytes, so a compressed or binary answer is stored exactly and can be
/// decoded. `None` for an empty body.
pub fn body_excerpt(body: &[u8]) -> Option<String> {
    let kept = &body[..body.len().min(RESPONSE_PREFIX_LEN)];
    if kept.is_empty() {
        return None;
    }
    let text = match std::str::from_utf8(kept) {
        Ok(text) => Some(text),
        // Only a character cut short by the limit: the text before it is whole.
        Err(e) if e.error_len().is_none() && kept.len() < body.len() => {
            std::str::from_utf8(&kept[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    Some(match text {
        Some(text) if !text.contains('\0') => text.to_owned(),
        _ => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(kept)
        ),
    })
}

fn encode_cursor(created_at: DateTime<Utc>, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{id}", created_at.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, String)> {
    let text = URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or(Error::BadCursor)?;
    let (micros, id) = text.split_once('|').ok_or(Error::BadCursor)?;
    let created_at = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or(Error::BadCursor)?;
    Ok((created_at, id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_reason_names_the_period_in_its_largest_unit() {
        let reason = |secs| disabled_reason(std::time::Duration::from_secs(secs));
        assert_eq!(reason(432_000), "no successful delivery for 5 days");
        assert_eq!(reason(86_400), "no successful delivery for 1 day");
        assert_eq!(reason(7_200), "no successful delivery for 2 hours");
        assert_eq!(reason(60), "no successful delivery for 1 minute");
        assert_eq!(reason(90), "no successful delivery for 90 seconds");
    }

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
            assert!(matches!(decode_cursor(bad), Err(Error::BadCursor)), "{bad}");
        }
    }

    #[test]
    fn error_text_is_bounded_on_a_char_boundary() {
        let long = AttemptOutcome::Connection("é".repeat(MAX_ERROR_LEN));
        let text = error_text(&long);
        assert!(text.len() <= MAX_ERROR_LEN);
        assert!(text.starts_with("connection failed: é"));
    }
}
