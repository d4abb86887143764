//! Endpoint health: the run of failures an outcome starts or ends, and the automatic disable.

use super::*;

/// A failure starts a run of failures, a success ends it, and a failure once the run is
/// `disable_after` old disables the webhook (pending deliveries stay). Each write is guarded by
/// the state it changes, so concurrent workers start a run once and disable once.
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

/// The period in its largest whole unit, so an operator reads the setting back.
pub fn disabled_reason(period: std::time::Duration) -> String {
    let secs = period.as_secs();
    let (n, unit) = [(86_400, "day"), (3_600, "hour"), (60, "minute")]
        .into_iter()
        .find(|(size, _)| secs >= *size && secs.is_multiple_of(*size))
        .map_or((secs, "second"), |(size, unit)| (secs / size, unit));
    let plural = if n == 1 { "" } else { "s" };
    format!("no successful delivery for {n} {unit}{plural}")
}
