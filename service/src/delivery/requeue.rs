//! Sending exhausted deliveries again: one (requeue) or an agent's since an instant (recover).

use super::*;

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
        .filter(state_condition(
            DeliveryState::Failed,
            db.get_database_backend(),
            now,
        ))
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

/// [`requeue`] for every failed delivery of `agent_id` enqueued in `since..=now`, after a
/// receiver's outage (Svix's "recover"). It walks forward in [`MAX_PAGE_SIZE`] batches, so it
/// ends even while workers exhaust deliveries again, and an interrupted run can be repeated.
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
            .filter(state_condition(DeliveryState::Failed, backend, now));
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
            .filter(state_condition(DeliveryState::Failed, backend, now))
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
