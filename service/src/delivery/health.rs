//! Endpoint health: the run of failures an outcome starts or ends, and the automatic disable.

use super::*;

/// Keeps the agent's endpoint health after an outcome: a failure starts the streak
/// (`webhook_failing_since`) if none is running, a success ends it, and a failure once the
/// streak is `settings.disable_after` old disables the webhook with a reason. Its pending
/// deliveries are left as they are.
///
/// The agent is read first without a lock and written only when something changes, so the
/// usual outcome (success of a healthy webhook) locks no agent row. Every write is guarded by
/// the state it changes, so concurrent workers start a streak once and disable once.
pub(super) async fn record_health<C: ConnectionTrait>(
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
pub(super) async fn apply_health<C: ConnectionTrait>(
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
