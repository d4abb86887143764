//! Ordered delivery, opt-in per agent (`webhook_ordered`): within one lane, delivery N+1 is not
//! sent before delivery N is delivered or given up.
//!
//! A lane is a key the app passes at enqueue ([`enqueue_in_lane`], [`EnqueueItem::lane`]), such
//! as a run or conversation id; without one an ordered agent's events share [`DEFAULT_LANE`].
//! Lanes are independent: a slow or failing conversation holds up only itself.
//!
//! * **Positions.** The enqueue locks the lane's `webhook_lanes` row (creating it), numbers the
//!   new deliveries after the lane's last position and moves it on, in one transaction (a
//!   savepoint inside the caller's). The lock is held until the caller's transaction ends, so
//!   positions follow commit order and have no gaps, also when callers race or repeat an event.
//! * **The claim's rule** (`predecessor_settled`): a delivery at position n is due only when
//!   the delivery at n−1 of its lane is not pending (delivered, given up, or pruned). While n−1
//!   is leased, waiting for a retry, or its lease ran out after a crash, n waits; so two workers
//!   never hold two deliveries of one lane, and a killed worker's lane continues after its
//!   lease. One point lookup per candidate, on `ix_webhook_deliveries_lane`.
//! * **Giving up releases the lane**: an exhausted delivery (its `error_message` is the recorded
//!   reason) is no longer pending, so the next one is sent. An automatically disabled webhook
//!   keeps its pending deliveries on their schedule: they are given up in order.
//! * **Requeue and recover.** [`requeue`] makes one exhausted delivery due at once: it is sent
//!   out of order, beside its lane's current head (its position header tells the receiver where
//!   it belonged). [`recover`] requeues an agent's failed deliveries together: each waits for
//!   the one before it, so they are resent in order among themselves, beside the lane's new
//!   events.
//! * **The receiver** gets [`HEADER_LANE`] and [`HEADER_SEQUENCE`] and can detect a gap. They
//!   are not covered by the Standard Webhooks signature (which signs id, timestamp and body);
//!   put the position in the payload too when a receiver must trust it.
//!
//! Costs: an ordered enqueue takes a savepoint (or transaction), the lane lock, the insert and
//! the lane update; concurrent enqueues into one lane wait for each other's commit. The claim
//! adds a lookup per ordered candidate, and a lane with a backlog of n waiting deliveries is
//! scanned past by each claim (`docs/benchmarks.md` measures both).

use entity::webhook_lanes;
use sea_orm::{TransactionSession, TransactionTrait};

use super::*;

/// The lane of an ordered agent's events enqueued without a lane key.
pub const DEFAULT_LANE: &str = "default";
/// The request header naming the delivery's lane.
pub const HEADER_LANE: &str = "webhook-lane";
/// The request header holding the delivery's position in its lane (1, 2, …).
pub const HEADER_SEQUENCE: &str = "webhook-sequence";

/// A lane key is sent as a header value: 1 to 255 visible ASCII characters.
pub(super) fn check_lane(lane: &str) -> Result<()> {
    let visible = lane.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if lane.trim().is_empty() || lane.len() > 255 || !visible {
        return Err(Error::InvalidEvent {
            field: "lane",
            rule: "it is the webhook-lane header: 1 to 255 visible ASCII characters",
        });
    }
    Ok(())
}

/// The claim's rule as a condition on `webhook_deliveries`: unordered, or the delivery before
/// it in its lane is not pending.
///
/// Written as a scalar subquery (`(SELECT 1 … LIMIT 1) IS NULL`), not `NOT EXISTS`: inside the
/// `OR`, PostgreSQL turns `NOT EXISTS` into a hashed subplan and MariaDB into a materialized
/// table, each reading the whole table once per claim (4.8 ms against 0.27 ms on PostgreSQL,
/// 72 ms against 8 ms on MariaDB, with 10,000 lanes); the scalar form stays one lookup on
/// `ix_webhook_deliveries_lane` per candidate on every backend.
pub(super) fn predecessor_settled() -> Condition {
    let before = Alias::new("before_in_lane");
    let col = |c: wd::Column| Expr::col((before.clone(), c));
    let this = |c: wd::Column| Expr::col((wd::Entity, c));
    let mut pending_before = Query::select();
    pending_before
        .expr(Expr::value(1))
        .from_as(wd::Entity, before.clone())
        .and_where(col(wd::Column::AgentId).eq(this(wd::Column::AgentId)))
        .and_where(col(wd::Column::Lane).eq(this(wd::Column::Lane)))
        .and_where(col(wd::Column::LaneSeq).eq(this(wd::Column::LaneSeq).sub(1)))
        .and_where(col(wd::Column::DeliveredAt).is_null())
        .and_where(col(wd::Column::NextRetryAt).is_not_null())
        .limit(1);
    Condition::any()
        .add(this(wd::Column::Lane).is_null())
        .add(Expr::SubQuery(None, Box::new(pending_before.into())).is_null())
}

/// Inserts `rows` of ordered agents, each carrying its lane, and numbers them in their lanes;
/// one [`Enqueued`] per row, in order. Lanes are locked in `(agent, lane)` order, so two calls
/// never wait for each other crosswise.
pub(super) async fn insert_in_lanes<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    settings: &WebhookSettings,
    rows: Vec<NewRow<'_>>,
    now: DateTime<Utc>,
) -> Result<Vec<Enqueued>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| {
        (rows[a].agent_id, &rows[a].lane, a).cmp(&(rows[b].agent_id, &rows[b].lane, b))
    });
    let mut results: Vec<Option<Enqueued>> = vec![None; rows.len()];
    let txn = db.begin().await?;
    let mut start = 0;
    while start < order.len() {
        let first = &rows[order[start]];
        let end = start
            + order[start..]
                .iter()
                .take_while(|&&i| rows[i].agent_id == first.agent_id && rows[i].lane == first.lane)
                .count();
        let lane: Vec<NewRow<'_>> = order[start..end].iter().map(|&i| rows[i].clone()).collect();
        for (index, enqueued) in order[start..end]
            .iter()
            .zip(insert_lane(&txn, settings, lane, now).await?)
        {
            results[*index] = Some(enqueued);
        }
        start = end;
    }
    txn.commit().await?;
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| DbErr::Custom("an ordered row has no result".to_owned()).into()))
        .collect()
}

/// [`insert_in_lanes`] for rows of one `(agent, lane)`, inside its transaction.
async fn insert_lane<C: ConnectionTrait>(
    txn: &C,
    settings: &WebhookSettings,
    mut rows: Vec<NewRow<'_>>,
    now: DateTime<Utc>,
) -> Result<Vec<Enqueued>> {
    let (agent_id, lane) = (rows[0].agent_id, rows[0].lane.clone().unwrap_or_default());
    let last = lock_lane(txn, agent_id, &lane).await?;
    for (n, row) in (1..).zip(rows.iter_mut()) {
        row.lane_seq = Some(last + n);
    }
    let mut done = insert_rows(txn, settings, &rows, now).await?;
    // Repeated events take no position: renumber the created ones without a gap.
    let mut next = last;
    for enqueued in &mut done {
        if let Enqueued::Created(delivery) = enqueued {
            next += 1;
            if delivery.lane_seq != Some(next) {
                wd::Entity::update_many()
                    .col_expr(wd::Column::LaneSeq, Expr::value(next))
                    .filter(wd::Column::Id.eq(delivery.id.as_str()))
                    .exec(txn)
                    .await?;
                delivery.lane_seq = Some(next);
            }
        }
    }
    if next > last {
        webhook_lanes::Entity::update_many()
            .col_expr(webhook_lanes::Column::LastSeq, Expr::value(next))
            .filter(webhook_lanes::Column::AgentId.eq(agent_id))
            .filter(webhook_lanes::Column::Lane.eq(lane.as_str()))
            .exec(txn)
            .await?;
    }
    Ok(done)
}

/// Locks the lane's row until the transaction ends, creating it at position 0, and answers
/// its last position, read after the lock (the latest committed value, whatever snapshot the
/// caller's transaction holds).
async fn lock_lane<C: ConnectionTrait>(txn: &C, agent_id: &str, lane: &str) -> Result<i64> {
    let backend = txn.get_database_backend();
    let mut upsert = Query::insert();
    upsert
        .into_table(webhook_lanes::Entity)
        .columns([
            webhook_lanes::Column::AgentId,
            webhook_lanes::Column::Lane,
            webhook_lanes::Column::LastSeq,
        ])
        .values([agent_id.into(), lane.into(), 0i64.into()])
        .map_err(|e| DbErr::Custom(e.to_string()))?
        // An update to the same value: on conflict the row is locked like a write.
        .on_conflict(
            OnConflict::columns([webhook_lanes::Column::AgentId, webhook_lanes::Column::Lane])
                .value(
                    webhook_lanes::Column::LastSeq,
                    Expr::col((webhook_lanes::Entity, webhook_lanes::Column::LastSeq)),
                )
                .to_owned(),
        );
    if backend == DbBackend::MySql {
        txn.execute(&upsert).await?;
        let last = webhook_lanes::Entity::find()
            .select_only()
            .column(webhook_lanes::Column::LastSeq)
            .filter(webhook_lanes::Column::AgentId.eq(agent_id))
            .filter(webhook_lanes::Column::Lane.eq(lane))
            .lock_exclusive()
            .into_tuple::<i64>()
            .one(txn)
            .await?;
        return last.ok_or_else(|| DbErr::RecordNotFound(format!("lane {lane}")).into());
    }
    upsert.returning_col(webhook_lanes::Column::LastSeq);
    let row = txn
        .query_one(&upsert)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("lane {lane}")))?;
    Ok(row.try_get_by_index::<i64>(0)?)
}
