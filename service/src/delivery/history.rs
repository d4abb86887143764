//! Reading the books: one delivery, an agent's history page by page, its figures, the attempt
//! log; and retention (prune).

use super::*;

/// The history page size when the caller does not choose one.
pub const DEFAULT_PAGE_SIZE: u64 = 50;

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
                Some(word) => Some(word.parse::<ErrorClass>().map_err(|_| {
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

#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    pub state: Option<DeliveryState>,
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

/// An agent's deliveries, newest first, by keyset pagination over `(created_at, id)`: page
/// 1000 costs what page 1 costs, and rows inserted meanwhile never shift unread pages.
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

/// One row more than the page, to know whether another follows.
pub(super) fn history_select(
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
        select = select.filter(state_condition(state, backend, now));
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

/// One query.
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
    for &state in DeliveryState::ALL {
        select.expr_as(
            count(state_condition(state, backend, now)),
            Alias::new(state.as_str()),
        );
    }
    select
        .expr_as(
            Func::max(Expr::col(wd::Column::DeliveredAt)),
            Alias::new("last_success_at"),
        )
        .expr_as(
            count(state_condition(DeliveryState::Failed, backend, now).add(in_run)),
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
/// statement; pending and leased ones never. Safe to interrupt and to run beside workers.
///
/// `pause` is slept between statements: each is a burst of database CPU that delays the
/// workers' claims on a small server (docs/benchmarks.md, section 9). `on_batch` gets the
/// number deleted so far.
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

pub(super) fn encode_cursor(created_at: DateTime<Utc>, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{id}", created_at.timestamp_micros()))
}

pub(super) fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, String)> {
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

/// The rule of [`DeliveryState::of`] as an SQL condition.
pub(super) fn state_condition(
    state: DeliveryState,
    backend: DbBackend,
    now: DateTime<Utc>,
) -> Condition {
    let now = stamp(backend, now);
    let in_flight = || {
        Condition::all()
            .add(wd::Column::AttemptCount.gt(0))
            .add(wd::Column::StatusCode.is_null())
            .add(wd::Column::ErrorMessage.is_null())
    };
    let undelivered = Condition::all().add(wd::Column::DeliveredAt.is_null());
    match state {
        DeliveryState::Delivered => Condition::all().add(wd::Column::DeliveredAt.is_not_null()),
        DeliveryState::Failed => undelivered.add(wd::Column::NextRetryAt.is_null()),
        DeliveryState::Leased => undelivered
            .add(wd::Column::NextRetryAt.gt(now))
            .add(in_flight()),
        DeliveryState::Pending => undelivered.add(wd::Column::NextRetryAt.is_not_null()).add(
            Condition::any()
                .add(wd::Column::NextRetryAt.lte(now))
                .add(in_flight().not()),
        ),
    }
}
