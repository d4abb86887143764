//! Delivery bookkeeping: what to send, what happened, what to try again.
//!
//! `webhook_deliveries` is the only source of truth, so a worker may crash at any point and the
//! next one carries on. The lifecycle is in `docs/deliveries.md`; the states are defined on
//! [`DeliveryState`]. One room per step of a delivery's life:
//!
//! | file | what |
//! |---|---|
//! | `enqueue.rs` | [`enqueue`], [`enqueue_for_agent`] (the transactional outbox), [`enqueue_many`] |
//! | `filter_cache.rs` | [`FilterCache`]: the content filters enqueue saw, so a matching event is one statement |
//! | `claim.rs` | [`claim_due`], [`release`] |
//! | `record.rs` | [`record_outcomes`], [`record_outcome`], [`record_attempts`], [`record_delivered`], [`abandon`] |
//! | `health.rs` | the run of failures an outcome starts or ends, and the automatic disable |
//! | `lanes.rs` | ordered delivery: positions in a lane at enqueue, the claim's rule |
//! | `history.rs` | [`get`], [`history`], [`stats`], [`attempts`], [`prune`] |
//! | `requeue.rs` | [`requeue`], [`recover`] |
//! | `retry.rs` | [`retry::RetryPolicy`]: the schedule and which outcomes are final |
//! | `dry_run.rs` | [`would_deliver`]: what an enqueue would do with an event, writing nothing |
//!
//! Every function can run inside the caller's transaction. The ones that retry a deadlock
//! victim themselves ([`claim_due`], [`record_outcome`], [`record_outcomes`], [`release`],
//! [`abandon`]) take an [`IntoDatabaseExecutor`] so they know whether they were handed a pool
//! (pass a transaction by reference, or the call rolls it back). Inside a transaction they
//! cannot retry, since MySQL rolled back and PostgreSQL aborted the caller's work: the error
//! goes back with [`Error::is_transient`] set and the caller reruns its transaction. The other
//! functions never retry.

use std::collections::{HashMap, HashSet};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use entity::{agents, webhook_deliveries as wd};
use sea_orm::FromQueryResult;
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

mod claim;
mod dry_run;
mod enqueue;
pub(crate) mod filter_cache;
mod health;
mod history;
pub mod lanes;
pub(crate) mod payload;
mod record;
mod requeue;
pub mod retry;
pub(crate) mod state;

pub use claim::*;
pub use dry_run::*;
pub use enqueue::*;
pub use filter_cache::FilterCache;
pub use health::*;
pub use history::*;
pub use payload::*;
pub use record::*;
pub use requeue::*;
pub use state::*;

/// Longest error text kept per attempt; a receiver's error page can be large.
pub const MAX_ERROR_LEN: usize = 2000;
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
    /// The lane of an ordered webhook's delivery (see [`lanes`]); `None` when unordered.
    pub lane: Option<String>,
    /// Its position in the lane: 1, 2, … without gaps, sent to the receiver as
    /// [`lanes::HEADER_SEQUENCE`].
    pub lane_seq: Option<i64>,
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
            lane: row.lane,
            lane_seq: row.lane_seq,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Due at once.
    Created(WebhookDelivery),
    /// This `(agent, event_id)` was enqueued before; this is that delivery.
    Existing(WebhookDelivery),
    Skipped(SkipReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    Disabled,
    NoUrl,
    /// The agent's event filter does not want this event type.
    NotWanted,
    /// Soft-deleted (`is_deleted = true`): the platform treats it as gone.
    AgentDeleted,
    /// The payload does not match the agent's content filter
    /// ([`content_filter`](crate::webhook::content_filter)).
    Filtered,
}

/// A worker's lease on one delivery, handed back when reporting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub delivery: WebhookDelivery,
    /// The attempt this claim is for (1 for the first): the guard of [`record_outcome`].
    pub attempt: i32,
    /// When the delivery becomes due again unless the outcome is recorded first.
    pub lease_until: DateTime<Utc>,
    /// The bytes fixed at enqueue; `None` for deliveries enqueued before payloads were stored
    /// (the worker cannot send those).
    pub payload: Option<Vec<u8>>,
}

/// One word an operator can filter the attempt log on; which outcome gets which class is
/// tabled in [`crate::dispatch`].
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
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
    /// The delivery cannot be sent at all (no payload stored, no secret, agent deleted):
    /// nothing was sent.
    NotSendable,
}

impl ErrorClass {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        self.into()
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

/// Statements exposed for `EXPLAIN` tests and the benchmark's raw-SQL baseline; not an API.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// On MySQL only the claim's first step, the locking `SELECT`.
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

    pub fn history_select(
        backend: DbBackend,
        agent_id: &str,
        query: &HistoryQuery,
        now: DateTime<Utc>,
    ) -> Result<(Select<wd::Entity>, u64)> {
        super::history_select(backend, agent_id, query, now)
    }
}

/// The first column of every row `statement` returns, as text: the ids an `… RETURNING id` or
/// a locking read touched.
pub(crate) async fn first_column<C, T>(db: &C, statement: Statement) -> Result<T, DbErr>
where
    C: ConnectionTrait,
    T: FromIterator<String>,
{
    db.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| row.try_get_by_index::<String>(0))
        .collect()
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
