//! Enqueueing: one event for one agent, for an agent row the caller holds (the transactional
//! outbox), or many at once (fan-out, bulk), each in as few statements as the backend allows.

use sea_orm::TransactionTrait;

use super::*;

/// Enqueues an event for the agent's webhook, unless a [`SkipReason`] applies.
///
/// Every attempt signs and sends exactly the stored bytes ([`Payload`] says how they are
/// kept); a payload over the settings' `max_payload_bytes` is refused before the agent is read.
///
/// Idempotent per `(agent, event_id)`, also when callers race and inside a caller's
/// transaction: the unique index decides, the loser gets [`Enqueued::Existing`] and the first
/// payload stays. An ordered agent's event goes to [`lanes::DEFAULT_LANE`].
pub async fn enqueue<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_id: &str,
    event_id: &str,
    event_type: &str,
    payload: impl Into<Payload<'_>>,
    now: DateTime<Utc>,
) -> Result<Enqueued> {
    let payload = checked_event(settings, event_id, event_type, payload.into())?;
    let agent = match db.get_database_backend() {
        DbBackend::MySql => None,
        _ => {
            match insert_if_deliverable(db, settings, agent_id, event_id, event_type, &payload, now)
                .await?
            {
                OneStatement::Created(created) => return Ok(Enqueued::Created(created)),
                OneStatement::Read(agent) => Some(agent),
                OneStatement::NotRead => None,
            }
        }
    };
    // Nothing was created: the agent's row says why (skipped, a repeat, ordered, a content
    // filter to apply, no such agent).
    let agent = match agent {
        Some(agent) => agent,
        None => {
            let agent = crate::agent::find_any_agent(db, agent_id).await?;
            if db.get_database_backend() == DbBackend::Sqlite {
                let text = agent.webhook_filter.as_ref().map(|f| f.to_string());
                learn_filter(settings, &agent, text);
            }
            agent
        }
    };
    insert_for_agent(
        db, settings, &agent, None, event_id, event_type, payload, now,
    )
    .await
}

/// [`enqueue`] into the lane `lane` (e.g. a run or conversation id) of an ordered agent: it is
/// sent after the lane's earlier events are delivered or given up ([`lanes`]). For an agent
/// that is not ordered the lane is ignored.
#[allow(clippy::too_many_arguments)]
pub async fn enqueue_in_lane<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_id: &str,
    lane: &str,
    event_id: &str,
    event_type: &str,
    payload: impl Into<Payload<'_>>,
    now: DateTime<Utc>,
) -> Result<Enqueued> {
    let payload = checked_event(settings, event_id, event_type, payload.into())?;
    lanes::check_lane(lane)?;
    let agent = crate::agent::find_any_agent(db, agent_id).await?;
    insert_for_agent(
        db,
        settings,
        &agent,
        Some(lane),
        event_id,
        event_type,
        payload,
        now,
    )
    .await
}

/// What the one statement of [`insert_if_deliverable`] did.
enum OneStatement {
    Created(WebhookDelivery),
    /// Nothing created; the agent as the statement read it (PostgreSQL).
    Read(AgentWebhook),
    /// Nothing created, and the agent not read (SQLite).
    NotRead,
}

/// The common case of [`enqueue`] in one round trip (PostgreSQL, SQLite): `INSERT … SELECT …
/// FROM agents` with the rules of [`destination`] as its `WHERE` (an ordered agent's events
/// take the other path, which numbers them in their lane; the event-type filter through
/// [`EventFilter::entries_matching`](crate::webhook::events::EventFilter::entries_matching)),
/// notifying like [`insert_rows`]. When it creates nothing, [`destination`] decides in Rust, so
/// an event-type list this statement cannot read (not a JSON array), a content filter
/// (evaluated in Rust) or a repeated event ends exactly as the two-statement path decides.
///
/// On PostgreSQL the insert is a data-modifying `WITH` whose outer `SELECT` also returns the
/// agent's row, so that decision needs no second statement: a skipped event (a content filter
/// that does not match, a disabled webhook) costs one round trip, like a created one.
async fn insert_if_deliverable<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent_id: &str,
    event_id: &str,
    event_type: &str,
    payload: &[u8],
    now: DateTime<Utc>,
) -> Result<OneStatement> {
    let backend = db.get_database_backend();
    let stamped = stamp(backend, now);
    let id = new_id();
    let mut select = Query::select();
    select
        .exprs([
            Expr::value(id.as_str()),
            Expr::col((agents::Entity, agents::Column::OrganizationId)),
            Expr::col((agents::Entity, agents::Column::Id)),
            Expr::value(event_id),
            Expr::value(event_type),
            Expr::col((agents::Entity, agents::Column::WebhookUrl)),
            Expr::value(0),
            Expr::value(stamped.clone()),
            Expr::value(stamped),
            Expr::value(payload.to_vec()),
            Expr::value(None::<String>),
            Expr::value(None::<i64>),
        ])
        .from(agents::Entity)
        .and_where(Expr::col((agents::Entity, agents::Column::Id)).eq(agent_id))
        .cond_where(crate::agent::live())
        .and_where(Expr::col((agents::Entity, agents::Column::WebhookEnabled)).eq(true))
        .and_where(Expr::col((agents::Entity, agents::Column::WebhookOrdered)).eq(false))
        .and_where(Expr::col((agents::Entity, agents::Column::WebhookUrl)).is_not_null());
    if event_type != crate::webhook::events::TEST_EVENT {
        select.and_where(wants_event(backend, event_type));
        let no_filter = Expr::col((agents::Entity, agents::Column::WebhookFilter)).is_null();
        match settings.filter_cache.get(agent_id) {
            // The filter remembered accepts the payload: so does the stored one while its text
            // is the same ([`FilterCache`]).
            Some(known) if known.filter.matches_bytes(payload) => {
                select.and_where(no_filter.or(Expr::cust_with_values(
                    filter_text(backend),
                    [known.text.clone()],
                )));
            }
            _ => {
                select.and_where(no_filter);
            }
        }
    }
    let mut insert = Query::insert();
    insert
        .into_table(wd::Entity)
        .columns(INSERTED_COLUMNS)
        .select_from(select)
        .map_err(|e| DbErr::Custom(e.to_string()))?
        .on_conflict(
            OnConflict::columns([wd::Column::AgentId, wd::Column::EventId])
                .do_nothing()
                .to_owned(),
        )
        .returning(Query::returning().columns([
            wd::Column::Id,
            wd::Column::OrganizationId,
            wd::Column::WebhookUrl,
        ]));
    let created = |organization_id: &str, url: String| {
        NewRow {
            id: id.clone(),
            organization_id,
            agent_id,
            event_id,
            event_type,
            url,
            payload: Vec::new(),
            lane: None,
            lane_seq: None,
        }
        .delivery(now)
    };
    if backend != DbBackend::Postgres {
        let Some(row) = db.query_one_raw(backend.build(&insert)).await? else {
            return Ok(OneStatement::NotRead);
        };
        let organization_id: String = row.try_get_by_index(1)?;
        return Ok(OneStatement::Created(created(
            &organization_id,
            row.try_get_by_index(2)?,
        )));
    }
    let statement = with_agent_row(insert, agent_id, settings.worker.listen);
    let Some(row) = db.query_one_raw(backend.build(&statement)).await? else {
        return Err(Error::AgentNotFound(agent_id.to_owned()));
    };
    let agent = AgentWebhook::from_query_result(&row, "")?;
    learn_filter(settings, &agent, row.try_get("", FILTER_TEXT)?);
    if row.try_get::<Option<String>>("", CREATED_ID)?.is_none() {
        return Ok(OneStatement::Read(agent));
    }
    let url = agent.webhook_url.clone().unwrap_or_default();
    Ok(OneStatement::Created(created(&agent.organization_id, url)))
}

/// The column of [`with_agent_row`]'s result that holds the created delivery's id (NULL when
/// none was created).
const CREATED_ID: &str = "aw_created_id";
/// The column of [`with_agent_row`]'s result that holds the stored filter's text, the text
/// [`filter_text`] compares.
const FILTER_TEXT: &str = "aw_filter_text";

/// The stored content filter as PostgreSQL prints it, the text the cache remembers there.
const PG_FILTER_TEXT: &str = "\"agents\".\"webhook_filter\"::text";

/// The stored content filter, as text, equal to a bound text: PostgreSQL's `::text` of the
/// value as stored; SQLite's stored text, which SeaORM wrote as `serde_json` prints it.
fn filter_text(backend: DbBackend) -> String {
    match backend {
        DbBackend::Postgres => format!("{PG_FILTER_TEXT} = $1"),
        _ => "\"agents\".\"webhook_filter\" = ?".to_owned(),
    }
}

/// Tells the [`FilterCache`](super::FilterCache) `agent`'s filter, stored as `text`; one that
/// does not parse is not remembered (enqueue then reports it as it reads it).
fn learn_filter(settings: &WebhookSettings, agent: &AgentWebhook, text: Option<String>) {
    settings.filter_cache.learn(&agent.id, text, || {
        crate::webhook::stored_filter(agent).ok().flatten()
    });
}

/// `insert` as a data-modifying `WITH` (PostgreSQL) whose `SELECT` returns the agent's row
/// (the columns of [`AgentWebhook`]) and the created id; no row: no such agent. With `notify`,
/// the same statement notifies [`NOTIFY_CHANNEL`] when it created the delivery, as
/// [`insert_rows`] does.
fn with_agent_row(
    insert: sea_orm::sea_query::InsertStatement,
    agent_id: &str,
    notify: bool,
) -> sea_orm::sea_query::WithQuery {
    use sea_orm::sea_query::{Alias, CommonTableExpression, WithClause};
    use sea_orm::{PartialModelTrait, QuerySelect, QueryTrait};
    let mut select =
        AgentWebhook::select_cols(agents::Entity::find_by_id(agent_id).select_only()).into_query();
    select.expr_as(
        Expr::cust("(SELECT id FROM created)"),
        Alias::new(CREATED_ID),
    );
    select.expr_as(Expr::cust(PG_FILTER_TEXT), Alias::new(FILTER_TEXT));
    if notify {
        select.expr(Expr::cust(format!(
            "(SELECT {} FROM created) IS NULL",
            notify_call()
        )));
    }
    let created = CommonTableExpression::new()
        .query(insert)
        .table_name(Alias::new("created"))
        .to_owned();
    select.with(WithClause::new().cte(created).to_owned())
}

/// The event-type rule of [`destination`] as SQL over the stored `webhook_events`: no filter,
/// an empty list, or one of the entries that want `event_type`. A value that is not a JSON
/// array matches nothing here (and fails the read path as corrupt); `CASE` keeps the database
/// from expanding such a value.
fn wants_event(backend: DbBackend, event_type: &str) -> Expr {
    let entries = crate::webhook::events::EventFilter::entries_matching(event_type);
    // sea-query numbers PostgreSQL's placeholders within the expression.
    let marks: Vec<String> = (1..=entries.len())
        .map(|n| match backend {
            DbBackend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        })
        .collect();
    let marks = marks.join(", ");
    let column = "\"agents\".\"webhook_events\"";
    let sql = match backend {
        DbBackend::Postgres => format!(
            "({column} IS NULL OR CASE WHEN json_typeof({column}::json) <> 'array' THEN FALSE \
             WHEN json_array_length({column}::json) = 0 THEN TRUE \
             ELSE EXISTS (SELECT 1 FROM json_array_elements_text({column}::json) AS entry(name) \
             WHERE entry.name IN ({marks})) END)"
        ),
        _ => format!(
            "({column} IS NULL OR CASE WHEN NOT json_valid({column}) THEN 0 \
             WHEN json_type({column}) <> 'array' THEN 0 \
             WHEN json_array_length({column}) = 0 THEN 1 \
             ELSE EXISTS (SELECT 1 FROM json_each({column}) WHERE json_each.value IN ({marks})) END)"
        ),
    };
    Expr::cust_with_values(sql, entries)
}

/// The columns every enqueue writes, in the order of its values.
const INSERTED_COLUMNS: [wd::Column; 12] = [
    wd::Column::Id,
    wd::Column::OrganizationId,
    wd::Column::AgentId,
    wd::Column::EventId,
    wd::Column::EventType,
    wd::Column::WebhookUrl,
    wd::Column::AttemptCount,
    wd::Column::CreatedAt,
    wd::Column::NextRetryAt,
    wd::Column::Payload,
    wd::Column::Lane,
    wd::Column::LaneSeq,
];

/// The bytes every attempt sends, once the event passed the checks of [`enqueue`].
pub(super) fn checked_event(
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

/// Where a delivery of `event_type` with `payload` to `agent` goes: its webhook URL, or why it
/// is skipped. The test event passes the event-type rule and the content filter alike.
pub(super) fn destination(
    agent: &AgentWebhook,
    event_type: &str,
    payload: &[u8],
) -> Result<Result<String, SkipReason>> {
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
    if event_type != crate::webhook::events::TEST_EVENT
        && let Some(filter) = crate::webhook::stored_filter(agent)?
        && !filter.matches_bytes(payload)
    {
        return Ok(Err(SkipReason::Filtered));
    }
    Ok(Ok(url))
}

/// The PostgreSQL channel [`enqueue`] notifies when it creates a delivery and idle workers
/// listen on (see the settings' `listen`).
pub const NOTIFY_CHANNEL: &str = "agent_webhooks_deliveries";

pub(super) fn check_event_field(field: &'static str, value: &str) -> Result<()> {
    if value.trim().is_empty() || value.len() > 255 {
        return Err(Error::InvalidEvent {
            field,
            rule: "must be 1 to 255 characters",
        });
    }
    Ok(())
}

/// Rows per `INSERT` of [`enqueue_many`]: well inside every backend's limit of bound
/// parameters (10 a row).
pub(super) const INSERT_ROWS: usize = MAX_PAGE_SIZE as usize;
/// Payload bytes per `INSERT` of [`enqueue_many`]: keeps one statement well under MariaDB's
/// default `max_allowed_packet` (16 MiB) whatever `max_payload_bytes` is.
pub(super) const INSERT_BYTES: usize = 4 << 20;

/// What [`enqueue`] takes, per item of [`enqueue_many`].
#[derive(Clone, Copy, Debug)]
pub struct EnqueueItem<'a> {
    pub agent_id: &'a str,
    /// The `webhook-id`; `(agent_id, event_id)` is unique.
    pub event_id: &'a str,
    pub event_type: &'a str,
    /// The JSON body, stored as [`enqueue`] stores it.
    pub payload: Payload<'a>,
    /// The lane of an ordered agent, as in [`enqueue_in_lane`]; `None` for
    /// [`lanes::DEFAULT_LANE`]. Ignored for an agent that is not ordered.
    pub lane: Option<&'a str>,
}

/// [`enqueue`] for an agent row the caller already read, e.g. in the transaction that changed
/// the agent (the transactional outbox), without reading it again. `agent` should be current:
/// a row read before the webhook was disabled still enqueues.
pub async fn enqueue_for_agent<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent: &agents::Model,
    event_id: &str,
    event_type: &str,
    payload: impl Into<Payload<'_>>,
    now: DateTime<Utc>,
) -> Result<Enqueued> {
    let payload = checked_event(settings, event_id, event_type, payload.into())?;
    insert_for_agent(
        db,
        settings,
        &AgentWebhook::from(agent),
        None,
        event_id,
        event_type,
        payload,
        now,
    )
    .await
}

/// The write half of [`enqueue`], [`enqueue_in_lane`] and [`enqueue_for_agent`]: skip rules,
/// then the insert (numbered in its lane for an ordered agent).
#[allow(clippy::too_many_arguments)]
pub(super) async fn insert_for_agent<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    settings: &WebhookSettings,
    agent: &AgentWebhook,
    lane: Option<&str>,
    event_id: &str,
    event_type: &str,
    payload: Vec<u8>,
    now: DateTime<Utc>,
) -> Result<Enqueued> {
    let url = match destination(agent, event_type, &payload)? {
        Ok(url) => url,
        Err(reason) => return Ok(Enqueued::Skipped(reason)),
    };
    let row = NewRow {
        id: new_id(),
        organization_id: &agent.organization_id,
        agent_id: &agent.id,
        event_id,
        event_type,
        url,
        payload,
        lane: lane_of(agent, lane),
        lane_seq: None,
    };
    let mut done = if row.lane.is_some() {
        lanes::insert_in_lanes(db, settings, vec![row], now).await?
    } else {
        insert_rows(db, settings, std::slice::from_ref(&row), now).await?
    };
    done.pop()
        .ok_or_else(|| DbErr::RecordNotFound(format!("delivery of {event_id}")).into())
}

/// The lane a delivery of `agent` goes to: none unless the agent is ordered.
fn lane_of(agent: &AgentWebhook, lane: Option<&str>) -> Option<String> {
    agent
        .webhook_ordered
        .then(|| lane.unwrap_or(lanes::DEFAULT_LANE).to_owned())
}

/// [`enqueue`] for many items (fan-out or bulk), one [`Enqueued`] per item in order, in one
/// `INSERT` per batch of up to [`MAX_PAGE_SIZE`] rows. A repeat within `items` is
/// [`Enqueued::Existing`].
///
/// Every item is checked before anything is written: one that [`enqueue`] would refuse fails
/// the whole call and writes nothing.
pub async fn enqueue_many<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    settings: &WebhookSettings,
    items: &[EnqueueItem<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<Enqueued>> {
    let payloads = items
        .iter()
        .map(|item| {
            if let Some(lane) = item.lane {
                lanes::check_lane(lane)?;
            }
            checked_event(settings, item.event_id, item.event_type, item.payload)
        })
        .collect::<Result<Vec<_>>>()?;
    let agent_ids: Vec<&str> = items.iter().map(|item| item.agent_id).collect();
    let agents_by_id = crate::agent::agents_by_id(db, &agent_ids).await?;

    let mut results: Vec<Option<Enqueued>> = Vec::with_capacity(items.len());
    let (mut rows, mut ordered) = (Vec::new(), Vec::new());
    for (index, (item, payload)) in items.iter().zip(payloads).enumerate() {
        let agent = agents_by_id
            .get(item.agent_id)
            .ok_or_else(|| Error::AgentNotFound(item.agent_id.to_owned()))?;
        match destination(agent, item.event_type, &payload)? {
            Err(reason) => results.push(Some(Enqueued::Skipped(reason))),
            Ok(url) => {
                results.push(None);
                let row = NewRow {
                    id: new_id(),
                    organization_id: &agent.organization_id,
                    agent_id: &agent.id,
                    event_id: item.event_id,
                    event_type: item.event_type,
                    url,
                    payload,
                    lane: lane_of(agent, item.lane),
                    lane_seq: None,
                };
                if row.lane.is_some() {
                    ordered.push((index, row));
                } else {
                    rows.push((index, row));
                }
            }
        }
    }

    let mut start = 0;
    while start < rows.len() {
        let (mut end, mut bytes) = (start, 0);
        while end < rows.len()
            && end - start < INSERT_ROWS
            && (end == start || bytes + rows[end].1.payload.len() <= INSERT_BYTES)
        {
            bytes += rows[end].1.payload.len();
            end += 1;
        }
        let batch: Vec<NewRow<'_>> = rows[start..end]
            .iter()
            .map(|(_, row)| row.clone())
            .collect();
        let done = insert_rows(db, settings, &batch, now).await?;
        for ((index, _), enqueued) in rows[start..end].iter().zip(done) {
            results[*index] = Some(enqueued);
        }
        start = end;
    }
    if !ordered.is_empty() {
        let (indexes, ordered): (Vec<usize>, Vec<NewRow<'_>>) = ordered.into_iter().unzip();
        let done = lanes::insert_in_lanes(db, settings, ordered, now).await?;
        for (index, enqueued) in indexes.into_iter().zip(done) {
            results[index] = Some(enqueued);
        }
    }
    results
        .into_iter()
        .map(|result| {
            result.ok_or_else(|| DbErr::Custom("an enqueued item has no result".to_owned()).into())
        })
        .collect()
}

#[derive(Clone)]
pub(super) struct NewRow<'a> {
    id: String,
    organization_id: &'a str,
    pub(super) agent_id: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    url: String,
    payload: Vec<u8>,
    /// Set for an ordered agent's delivery; its position is assigned by [`lanes`].
    pub(super) lane: Option<String>,
    pub(super) lane_seq: Option<i64>,
}

impl NewRow<'_> {
    /// The delivery as this insert stores it, without reading it back.
    fn delivery(&self, now: DateTime<Utc>) -> WebhookDelivery {
        let created = at(now).to_utc();
        WebhookDelivery {
            id: self.id.clone(),
            agent_id: self.agent_id.to_owned(),
            organization_id: self.organization_id.to_owned(),
            event_id: self.event_id.to_owned(),
            event_type: self.event_type.to_owned(),
            webhook_url: self.url.clone(),
            status_code: None,
            error_message: None,
            attempt_count: 0,
            created_at: created,
            delivered_at: None,
            next_retry_at: Some(created),
            state: DeliveryState::Pending,
            lane: self.lane.clone(),
            lane_seq: self.lane_seq,
        }
    }
}

pub(super) fn new_id() -> String {
    format!("dlv-{}", uuid::Uuid::now_v7())
}

/// MySQL's "You have an error in your SQL syntax": MySQL (unlike MariaDB) has no
/// `INSERT … RETURNING`.
pub(super) const MYSQL_PARSE_ERROR: &str = "42000";

/// Wraps an `INSERT … RETURNING` on PostgreSQL so that the same statement notifies
/// [`NOTIFY_CHANNEL`] for the rows it creates (none for none), still returning `columns` of
/// them first. PostgreSQL sends one notification per transaction and channel, on commit.
fn notify_on_insert(statement: &mut Statement, columns: &str) {
    statement.sql = format!(
        "WITH created AS ({}) SELECT {columns}, {}::text IS NULL FROM created",
        statement.sql,
        notify_call()
    );
}

/// How the statements that insert and notify in one ([`with_agent_row`], [`notify_on_insert`])
/// notify [`NOTIFY_CHANNEL`].
fn notify_call() -> String {
    format!("pg_notify('{NOTIFY_CHANNEL}', '')")
}

/// Inserts `rows` in one statement, each unless its `(agent_id, event_id)` exists, and says per
/// row whether it was created or which delivery already was. With `listen` on PostgreSQL the
/// same statement also notifies [`NOTIFY_CHANNEL`] when it creates a row (`pg_notify` over
/// the inserted rows; PostgreSQL sends one notification per transaction and channel, when the
/// caller's transaction commits), so an enqueue costs no round trip for the wake-up.
pub(super) async fn insert_rows<C: ConnectionTrait>(
    db: &C,
    settings: &WebhookSettings,
    rows: &[NewRow<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<Enqueued>> {
    let backend = db.get_database_backend();
    let notify = settings.worker.listen && backend == DbBackend::Postgres;
    let stamped = stamp(backend, now);
    // Built by hand rather than from an `ActiveModel`, whose instants sqlx would encode in its
    // own format on SQLite (see `stamp`).
    let mut insert = Query::insert();
    insert.into_table(wd::Entity).columns(INSERTED_COLUMNS);
    for row in rows {
        insert
            .values([
                Expr::value(row.id.as_str()),
                Expr::value(row.organization_id),
                Expr::value(row.agent_id),
                Expr::value(row.event_id),
                Expr::value(row.event_type),
                Expr::value(row.url.as_str()),
                Expr::value(0),
                Expr::value(stamped.clone()),
                Expr::value(stamped.clone()),
                Expr::value(row.payload.clone()),
                Expr::value(row.lane.clone()),
                Expr::value(row.lane_seq),
            ])
            .map_err(|e| DbErr::Custom(e.to_string()))?;
    }
    insert.on_conflict(
        OnConflict::columns([wd::Column::AgentId, wd::Column::EventId])
            .do_nothing_on([wd::Column::Id])
            .to_owned(),
    );
    // The ids this statement created, and the stored row of each `(agent_id, event_id)` it
    // did not create.
    let (created, stored): (HashSet<String>, HashMap<(String, String), wd::Model>) = match backend {
        DbBackend::MySql => {
            // `ON DUPLICATE KEY UPDATE id = id RETURNING` returns the stored row for every
            // input row, new or not, read under the row lock (the latest committed version, also
            // inside a caller's repeatable-read transaction). sea-query writes no `RETURNING`
            // for MySQL, so it is appended.
            let mut statement = backend.build(&insert);
            statement.sql.push_str(" RETURNING ");
            statement.sql.push_str(&returned_columns());
            let stored = match db.query_all_raw(statement).await {
                Ok(found) => by_key(found)?,
                Err(err) if sql_state(&err).as_deref() == Some(MYSQL_PARSE_ERROR) => {
                    // MySQL: insert, then a locking read (the insert holds the locks already).
                    db.execute(&insert).await?;
                    let mut read = stored_rows(rows);
                    read = read.lock_exclusive();
                    index_models(read.all(db).await?)
                }
                Err(err) => return Err(err.into()),
            };
            let created = rows
                .iter()
                .filter(|row| {
                    stored
                        .get(&(row.agent_id.to_owned(), row.event_id.to_owned()))
                        .is_some_and(|model| model.id == row.id)
                })
                .map(|row| row.id.clone())
                .collect();
            (created, stored)
        }
        _ => {
            insert.returning_col(wd::Column::Id);
            let mut statement = backend.build(&insert);
            if notify {
                notify_on_insert(&mut statement, "id");
            }
            let created: HashSet<String> = first_column(db, statement).await?;
            let existing: Vec<&NewRow<'_>> = rows
                .iter()
                .filter(|row| !created.contains(&row.id))
                .collect();
            let stored = if existing.is_empty() {
                HashMap::new()
            } else {
                let rows: Vec<NewRow<'_>> = existing.into_iter().cloned().collect();
                index_models(stored_rows(&rows).all(db).await?)
            };
            (created, stored)
        }
    };
    rows.iter()
        .map(|row| {
            if created.contains(&row.id) {
                return Ok(Enqueued::Created(row.delivery(now)));
            }
            let key = (row.agent_id.to_owned(), row.event_id.to_owned());
            let model = stored.get(&key).ok_or_else(|| {
                DbErr::RecordNotFound(format!("delivery of {} for {}", row.event_id, row.agent_id))
            })?;
            Ok(Enqueued::Existing(WebhookDelivery::from_model(
                model.clone(),
                now,
            )))
        })
        .collect()
}

/// Every column of a delivery but the payload (read as NULL, so the row still decodes as the
/// entity's model), for a `RETURNING` or `SELECT` list.
pub(super) fn returned_columns() -> String {
    use sea_orm::Iterable;
    let mut columns: Vec<String> = wd::Column::iter()
        .filter(|c| !matches!(c, wd::Column::Payload))
        .map(|c| sea_orm::IdenStatic::as_str(&c).to_owned())
        .collect();
    columns.push("NULL AS payload".to_owned());
    columns.join(", ")
}

/// The stored deliveries of the `(agent_id, event_id)` pairs of `rows`, without payloads.
pub(super) fn stored_rows(rows: &[NewRow<'_>]) -> Select<wd::Entity> {
    let mut pairs = Condition::any();
    for row in rows {
        pairs = pairs.add(
            Condition::all()
                .add(wd::Column::AgentId.eq(row.agent_id))
                .add(wd::Column::EventId.eq(row.event_id)),
        );
    }
    wd::Entity::find()
        .select_only()
        .columns(
            <wd::Column as sea_orm::Iterable>::iter().filter(|c| !matches!(c, wd::Column::Payload)),
        )
        .column_as(Expr::cust("NULL"), "payload")
        .filter(pairs)
}

pub(super) fn by_key(
    found: Vec<sea_orm::QueryResult>,
) -> Result<HashMap<(String, String), wd::Model>> {
    let models = found
        .iter()
        .map(|row| wd::Model::from_query_result(row, ""))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(index_models(models))
}

pub(super) fn index_models(models: Vec<wd::Model>) -> HashMap<(String, String), wd::Model> {
    models
        .into_iter()
        .map(|model| ((model.agent_id.clone(), model.event_id.clone()), model))
        .collect()
}
