//! Recording what an attempt came to: the outcome, guarded by each claim, and the attempt log.

use super::*;

/// The ids among `ids` of deliveries that exist, in one statement (none for no ids), locked
/// against deletion until the caller's transaction ends, so that an attempt row written for
/// one of them still finds its delivery.
pub(crate) async fn existing_ids<C: ConnectionTrait>(
    db: &C,
    ids: &[&str],
) -> Result<std::collections::HashSet<String>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let mut select = wd::Entity::find()
        .select_only()
        .column(wd::Column::Id)
        .filter(wd::Column::Id.is_in(ids.iter().copied()));
    select = match db.get_database_backend() {
        DbBackend::Postgres => select.lock(LockType::KeyShare),
        DbBackend::MySql => select.lock_shared(),
        // One writer at a time: nobody deletes meanwhile.
        _ => select,
    };
    Ok(select
        .into_tuple::<String>()
        .all(db)
        .await?
        .into_iter()
        .collect())
}

/// [`record_outcomes`] for one claim.
pub async fn record_outcome(
    db: impl IntoDatabaseExecutor<'_>,
    settings: &WebhookSettings,
    claim: &Claim,
    outcome: &AttemptOutcome,
    now: DateTime<Utc>,
) -> Result<Decision> {
    record_outcomes(db, settings, [(claim, outcome, now)])
        .await?
        .pop()
        .unwrap_or_else(|| Err(stale(claim)))
}

/// One `INSERT` per [`MAX_PAGE_SIZE`] rows. The same attempt twice keeps the first row, so a
/// retried report cannot duplicate it.
pub async fn record_attempts<'a, C, I>(db: &C, attempts: I) -> Result<()>
where
    C: ConnectionTrait,
    I: IntoIterator<Item = (&'a str, &'a AttemptRecord)>,
{
    let attempts: Vec<(&str, &AttemptRecord)> = attempts.into_iter().collect();
    for chunk in attempts.chunks(MAX_PAGE_SIZE as usize) {
        let mut insert = attempts_insert();
        for (delivery_id, record) in chunk {
            insert
                .values(
                    attempt_values(delivery_id, record)
                        .into_iter()
                        .map(Expr::value),
                )
                .map_err(|err| DbErr::Custom(err.to_string()))?;
        }
        db.execute(&insert).await?;
    }
    Ok(())
}

/// The attempt log's `INSERT` (rows or a query to add): the same attempt twice keeps the first
/// row.
fn attempts_insert() -> sea_orm::sea_query::InsertStatement {
    use entity::webhook_delivery_attempts as wa;
    let mut insert = Query::insert();
    insert
        .into_table(wa::Entity)
        .columns(ATTEMPT_COLUMNS)
        // MySQL names no conflict target: a no-op update of the key stands for DO NOTHING.
        .on_conflict(
            OnConflict::columns([wa::Column::DeliveryId, wa::Column::Attempt])
                .do_nothing_on([wa::Column::Id])
                .to_owned(),
        );
    insert
}

/// The attempt log's columns an attempt fills, in the order of [`attempt_values`].
const ATTEMPT_COLUMNS: [entity::webhook_delivery_attempts::Column; 9] = {
    use entity::webhook_delivery_attempts::Column as C;
    [
        C::DeliveryId,
        C::Attempt,
        C::StartedAt,
        C::FinishedAt,
        C::StatusCode,
        C::ErrorClass,
        C::Message,
        C::ResponseBodyPrefix,
        C::RemoteAddr,
    ]
};

/// An attempt's row in the attempt log, its texts cut to what the log keeps.
fn attempt_values(delivery_id: &str, record: &AttemptRecord) -> Vec<sea_orm::Value> {
    let bounded = |text: &Option<String>, max: usize| text.as_deref().map(|t| truncate(t, max));
    vec![
        delivery_id.into(),
        record.attempt.into(),
        at(record.started_at).into(),
        at(record.finished_at).into(),
        record.status_code.into(),
        record.error_class.map(|c| c.as_str().to_owned()).into(),
        bounded(&record.message, MAX_ERROR_LEN).into(),
        bounded(&record.response_body_prefix, RESPONSE_PREFIX_LEN * 4).into(),
        record.remote_addr.clone().into(),
    ]
}

/// Marks the claimed delivery failed without sending it, for one that can never be sent (its
/// agent was soft-deleted); an operator can still [`requeue`] it. Guarded by the claim like
/// [`record_outcome`].
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

pub(super) fn error_text(outcome: &AttemptOutcome) -> String {
    let text = match outcome {
        AttemptOutcome::Status { code, .. } => format!("HTTP {code}"),
        AttemptOutcome::Timeout => "timed out".to_owned(),
        AttemptOutcome::Connection(message) => format!("connection failed: {message}"),
        AttemptOutcome::AgentDeleted(message) => message.clone(),
    };
    truncate(&text, MAX_ERROR_LEN)
}

pub(super) fn bounded(text: &str) -> String {
    truncate(text, MAX_ERROR_LEN)
}

/// Cut on a character boundary, each NUL replaced: PostgreSQL refuses NUL in text and would
/// fail the whole batch.
pub(super) fn truncate(text: &str, max: usize) -> String {
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

/// The first [`RESPONSE_PREFIX_LEN`] bytes as text, or `base64:…` when they are not UTF-8
/// without NUL, so a compressed or binary answer is stored exactly.
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
        // A text that starts like the encoded form is encoded too, so every stored value reads
        // back one way.
        Some(text) if !text.contains('\0') && !text.starts_with("base64:") => text.to_owned(),
        _ => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(kept)
        ),
    })
}

/// Stores a batch of outcomes in one guarded `UPDATE` and decides each one's next step by
/// the retry policy. Each applies only while its claim is current; otherwise its result is
/// [`Error::StaleClaim`] and nothing changes. Each outcome carries the instant it was had, so
/// a `Retry-After` counts from the answer, not from the recording. Up to [`MAX_PAGE_SIZE`].
pub async fn record_outcomes<'a, I>(
    db: impl IntoDatabaseExecutor<'_>,
    settings: &WebhookSettings,
    outcomes: I,
) -> Result<Vec<Result<Decision>>>
where
    I: IntoIterator<Item = (&'a Claim, &'a AttemptOutcome, DateTime<Utc>)>,
{
    let db = &db.into_database_executor();
    let backend = db.get_database_backend();
    let Some(plan) = OutcomePlan::new(backend, settings, outcomes.into_iter().collect())? else {
        return Ok(Vec::new());
    };
    let applied: HashSet<String> = match backend {
        DbBackend::MySql => {
            let mut lock = Query::select();
            lock.column(wd::Column::Id)
                .from(wd::Entity)
                .cond_where(plan.current.clone())
                .lock(LockType::Update);
            in_transaction(db, |txn| {
                let (lock, update) = (lock.clone(), plan.update.clone());
                Box::pin(async move { Ok(update_locked(txn, &lock, &update).await?) })
            })
            .await?
            .into_iter()
            .collect()
        }
        _ => {
            let mut update = plan.update.clone();
            update.returning_col(wd::Column::Id);
            let update = backend.build(&update);
            retry_statement(db, || first_column(db, update.clone())).await?
        }
    };
    let (results, mut health) = plan.results(&applied);
    if !health.is_empty() {
        // Agent rows are written in one order by every worker, so two batches that share
        // agents cannot deadlock on them.
        health.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let current: HashMap<String, (bool, Option<DateTimeWithTimeZone>)> = agents::Entity::find()
            .select_only()
            .column(agents::Column::Id)
            .column(agents::Column::WebhookEnabled)
            .column(agents::Column::WebhookFailingSince)
            .filter(agents::Column::Id.is_in(health.iter().map(|(agent, _, _)| *agent)))
            .into_tuple::<(String, bool, Option<DateTimeWithTimeZone>)>()
            .all(db)
            .await?
            .into_iter()
            .map(|(id, enabled, since)| (id, (enabled, since)))
            .collect();
        for (agent_id, delivered, success_before) in health {
            let Some(&state) = current.get(agent_id) else {
                continue;
            };
            if !delivered && success_before {
                // A success ended the run, the failures after it start a new one now.
                agents::Entity::update_many()
                    .col_expr(
                        agents::Column::WebhookFailingSince,
                        Expr::value(stamp(backend, plan.now)),
                    )
                    .filter(agents::Column::Id.eq(agent_id))
                    .exec(db)
                    .await?;
            } else {
                apply_health(db, settings, agent_id, state, delivered, plan.now).await?;
            }
        }
    }
    Ok(results)
}

/// [`record_outcomes`] and [`record_attempts`] for a batch of attempts that all delivered, as
/// one statement on PostgreSQL: the guarded `UPDATE` of the outcomes, the end of their agents'
/// runs of failures and the attempt rows, in one `WITH … UPDATE … INSERT`, so a worker's
/// recording costs one round trip and one commit. Each attempt is logged while its delivery
/// exists, whether its outcome applied or its claim was stale.
///
/// Answers `None`, writing nothing, where that does not apply (another backend, an attempt
/// that did not deliver, which may start a run of failures or disable a webhook): the caller
/// records with the two functions in one transaction. Up to [`MAX_PAGE_SIZE`].
pub async fn record_delivered<'a, I>(
    db: impl IntoDatabaseExecutor<'_>,
    settings: &WebhookSettings,
    attempts: I,
) -> Result<Option<Vec<Result<Decision>>>>
where
    I: IntoIterator<Item = (&'a Claim, &'a AttemptOutcome, &'a AttemptRecord)>,
{
    let db = &db.into_database_executor();
    let backend = db.get_database_backend();
    if backend != DbBackend::Postgres {
        return Ok(None);
    }
    let attempts: Vec<_> = attempts.into_iter().collect();
    let timed = attempts
        .iter()
        .map(|(claim, outcome, record)| (*claim, *outcome, record.finished_at))
        .collect();
    let Some(plan) = OutcomePlan::new(backend, settings, timed)? else {
        return Ok(Some(Vec::new()));
    };
    if !plan
        .decisions
        .iter()
        .all(|d| matches!(d, Decision::Delivered))
    {
        return Ok(None);
    }
    let applied = Alias::new("applied");
    let mut update = plan.update.clone();
    update.returning(Query::returning().columns([wd::Column::Id, wd::Column::AgentId]));

    let mut heal = Query::update();
    heal.table(agents::Entity)
        .value(
            agents::Column::WebhookFailingSince,
            Expr::value(None::<DateTimeWithTimeZone>),
        )
        .and_where(
            agents::Column::Id.in_subquery(
                Query::select()
                    .column(wd::Column::AgentId)
                    .from(applied.clone())
                    .to_owned(),
            ),
        )
        .and_where(agents::Column::WebhookFailingSince.is_not_null());

    let rows = Alias::new("attempt");
    let column = |i: usize| Expr::col((rows.clone(), Alias::new(format!("column{}", i + 1))));
    let mut logged = Query::select();
    logged
        .exprs((0..ATTEMPT_COLUMNS.len()).map(column))
        .from_values(
            attempts.iter().map(|(claim, _, record)| {
                sea_orm::sea_query::ValueTuple::Many(attempt_values(&claim.delivery.id, record))
            }),
            rows.clone(),
        )
        .and_where(Expr::exists(
            Query::select()
                .expr(Expr::val(1))
                .from(wd::Entity)
                .and_where(Expr::col((wd::Entity, wd::Column::Id)).eq(column(0)))
                .to_owned(),
        ));
    let mut insert = attempts_insert();
    insert
        .select_from(logged)
        .map_err(|err| DbErr::Custom(err.to_string()))?;

    let cte = |name: &str, query: sea_orm::sea_query::SubQueryStatement| {
        sea_orm::sea_query::CommonTableExpression::new()
            .query(query)
            .table_name(Alias::new(name))
            .to_owned()
    };
    let statement = sea_orm::sea_query::WithClause::new()
        .cte(cte("applied", update.into()))
        .cte(cte("healed", heal.into()))
        .cte(cte("logged", insert.into()))
        .to_owned()
        .query(
            Query::select()
                .column(wd::Column::Id)
                .from(applied)
                .to_owned(),
        );
    let statement = backend.build(&statement);
    let applied = retry_statement(db, || first_column(db, statement.clone())).await?;
    Ok(Some(plan.results(&applied).0))
}

/// An agent's endpoint health after a batch: (agent, last outcome delivered, a success before
/// a later failure).
type HealthChange<'a> = (&'a str, bool, bool);

/// A batch of outcomes, each decided by the retry policy, and the guarded `UPDATE` that stores
/// those that apply while their claim is current (the first outcome of a delivery counts).
struct OutcomePlan<'a> {
    timed: Vec<(&'a Claim, &'a AttemptOutcome, DateTime<Utc>)>,
    decisions: Vec<Decision>,
    first: Vec<bool>,
    /// The claims still current; the update applies to these.
    current: Condition,
    update: UpdateStatement,
    /// The latest of the outcomes' instants: when the batch's health changes happen.
    now: DateTime<Utc>,
}

impl<'a> OutcomePlan<'a> {
    /// `None` for no outcomes.
    fn new(
        backend: DbBackend,
        settings: &WebhookSettings,
        timed: Vec<(&'a Claim, &'a AttemptOutcome, DateTime<Utc>)>,
    ) -> Result<Option<Self>> {
        let Some(now) = timed.iter().map(|(_, _, at)| *at).max() else {
            return Ok(None);
        };
        check_limit(timed.len() as u64)?;
        // Decided before the first await: the thread-local generator is not `Send`.
        let decisions: Vec<Decision> = {
            let mut rng = rand::rng();
            timed
                .iter()
                .map(|(claim, outcome, at)| {
                    let attempts = u32::try_from(claim.attempt).unwrap_or(0);
                    settings
                        .retry
                        .next_attempt(attempts, outcome, *at, &mut rng)
                })
                .collect()
        };
        let mut seen = HashSet::new();
        let first: Vec<bool> = timed
            .iter()
            .map(|(claim, _, _)| seen.insert(claim.delivery.id.as_str()))
            .collect();

        let case = |column: wd::Column, value: &dyn Fn(usize) -> sea_orm::Value| {
            let mut expr: Option<sea_orm::sea_query::CaseStatement> = None;
            for (i, (claim, _, _)) in timed.iter().enumerate().filter(|(i, _)| first[*i]) {
                let when = Expr::col(wd::Column::Id).eq(claim.delivery.id.as_str());
                expr = Some(match expr {
                    None => Expr::case(when, Expr::value(value(i))),
                    Some(case) => case.case(when, Expr::value(value(i))),
                });
            }
            expr.map(|case| case.finally(Expr::col(column)))
        };
        let no_stamp = || sea_orm::Value::from(None::<DateTimeWithTimeZone>);
        let ids: Vec<&str> = timed
            .iter()
            .zip(&first)
            .filter(|(_, first)| **first)
            .map(|((claim, _, _), _)| claim.delivery.id.as_str())
            .collect();
        let (Some(attempt), Some(status), Some(error), Some(delivered_at), Some(next_retry_at)) = (
            case(wd::Column::AttemptCount, &|i| timed[i].0.attempt.into()),
            case(wd::Column::StatusCode, &|i| match timed[i].1 {
                AttemptOutcome::Status { code, .. } => Some(i32::from(*code)).into(),
                _ => None::<i32>.into(),
            }),
            case(wd::Column::ErrorMessage, &|i| match decisions[i] {
                Decision::Delivered => None::<String>.into(),
                _ => Some(error_text(timed[i].1)).into(),
            }),
            case(wd::Column::DeliveredAt, &|i| match decisions[i] {
                Decision::Delivered => stamp(backend, timed[i].2),
                _ => no_stamp(),
            }),
            case(wd::Column::NextRetryAt, &|i| match decisions[i] {
                Decision::RetryAt(next) => stamp(backend, next),
                _ => no_stamp(),
            }),
        ) else {
            return Err(DbErr::Custom("an empty batch of outcomes".to_owned()).into());
        };
        let current = Condition::all()
            .add(wd::Column::Id.is_in(ids.iter().copied()))
            .add(Expr::col(wd::Column::AttemptCount).eq(attempt))
            .add(wd::Column::DeliveredAt.is_null())
            .add(wd::Column::StatusCode.is_null())
            .add(wd::Column::ErrorMessage.is_null());
        let mut update = Query::update();
        update
            .table(wd::Entity)
            .value(wd::Column::StatusCode, status)
            .value(wd::Column::ErrorMessage, error)
            .value(wd::Column::DeliveredAt, delivered_at)
            .value(wd::Column::NextRetryAt, next_retry_at)
            .cond_where(current.clone());
        Ok(Some(OutcomePlan {
            timed,
            decisions,
            first,
            current,
            update,
            now,
        }))
    }

    /// Each outcome's result, given the ids the update `applied` to, and the endpoint health
    /// those results change, per agent in order.
    fn results(&self, applied: &HashSet<String>) -> (Vec<Result<Decision>>, Vec<HealthChange<'a>>) {
        let mut health: Vec<HealthChange<'a>> = Vec::new();
        let mut results = Vec::with_capacity(self.timed.len());
        for (i, (claim, _, _)) in self.timed.iter().enumerate() {
            if !self.first[i] || !applied.contains(&claim.delivery.id) {
                results.push(Err(stale(claim)));
                continue;
            }
            let decision = match self.decisions[i] {
                Decision::RetryAt(next) => Decision::RetryAt(at(next).to_utc()),
                decision => decision,
            };
            let delivered = matches!(decision, Decision::Delivered);
            match health
                .iter_mut()
                .find(|(agent, _, _)| *agent == claim.delivery.agent_id)
            {
                Some(entry) => {
                    entry.2 |= entry.1;
                    entry.1 = delivered;
                }
                None => health.push((&claim.delivery.agent_id, delivered, false)),
            }
            tracing::debug!(delivery = %claim.delivery.id, attempt = claim.attempt, ?decision, "recorded attempt");
            results.push(Ok(decision));
        }
        (results, health)
    }
}
