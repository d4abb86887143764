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
    let timed: Vec<(&Claim, &AttemptOutcome, DateTime<Utc>)> = outcomes.into_iter().collect();
    let Some(now) = timed.iter().map(|(_, _, at)| *at).max() else {
        return Ok(Vec::new());
    };
    let outcomes: Vec<(&Claim, &AttemptOutcome)> = timed.iter().map(|(c, o, _)| (*c, *o)).collect();
    check_limit(outcomes.len() as u64)?;
    let backend = db.get_database_backend();
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
    let first: Vec<bool> = outcomes
        .iter()
        .map(|(claim, _)| seen.insert(claim.delivery.id.as_str()))
        .collect();

    let case = |column: wd::Column, value: &dyn Fn(usize) -> sea_orm::Value| {
        let mut expr: Option<sea_orm::sea_query::CaseStatement> = None;
        for (i, (claim, _)) in outcomes.iter().enumerate().filter(|(i, _)| first[*i]) {
            let when = Expr::col(wd::Column::Id).eq(claim.delivery.id.as_str());
            expr = Some(match expr {
                None => Expr::case(when, Expr::value(value(i))),
                Some(case) => case.case(when, Expr::value(value(i))),
            });
        }
        expr.map(|case| case.finally(Expr::col(column)))
    };
    let no_stamp = || sea_orm::Value::from(None::<DateTimeWithTimeZone>);
    let ids: Vec<&str> = outcomes
        .iter()
        .zip(&first)
        .filter(|(_, first)| **first)
        .map(|((claim, _), _)| claim.delivery.id.as_str())
        .collect();
    let (Some(attempt), Some(status), Some(error), Some(delivered_at), Some(next_retry_at)) = (
        case(wd::Column::AttemptCount, &|i| outcomes[i].0.attempt.into()),
        case(wd::Column::StatusCode, &|i| match outcomes[i].1 {
            AttemptOutcome::Status { code, .. } => Some(i32::from(*code)).into(),
            _ => None::<i32>.into(),
        }),
        case(wd::Column::ErrorMessage, &|i| match decisions[i] {
            Decision::Delivered => None::<String>.into(),
            _ => Some(error_text(outcomes[i].1)).into(),
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
    let applied: HashSet<String> = match backend {
        DbBackend::MySql => {
            let mut lock = Query::select();
            lock.column(wd::Column::Id)
                .from(wd::Entity)
                .cond_where(current)
                .lock(LockType::Update);
            in_transaction(db, |txn| {
                let (lock, update) = (lock.clone(), update.clone());
                Box::pin(async move { Ok(update_locked(txn, &lock, &update).await?) })
            })
            .await?
            .into_iter()
            .collect()
        }
        _ => {
            update.returning_col(wd::Column::Id);
            retry_statement(db, || async {
                db.query_all(&update)
                    .await?
                    .iter()
                    .map(|row| row.try_get_by_index::<String>(0))
                    .collect::<Result<HashSet<_>, _>>()
            })
            .await?
        }
    };

    // Endpoint health, per agent, from the outcomes that applied, in order.
    let mut health: Vec<(&str, bool, bool)> = Vec::new(); // (agent, last delivered, success before)
    let mut results = Vec::with_capacity(outcomes.len());
    for (i, (claim, _)) in outcomes.iter().enumerate() {
        if !first[i] || !applied.contains(&claim.delivery.id) {
            results.push(Err(stale(claim)));
            continue;
        }
        let decision = match decisions[i] {
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
                        Expr::value(stamp(backend, now)),
                    )
                    .filter(agents::Column::Id.eq(agent_id))
                    .exec(db)
                    .await?;
            } else {
                apply_health(db, settings, agent_id, state, delivered, now).await?;
            }
        }
    }
    Ok(results)
}
