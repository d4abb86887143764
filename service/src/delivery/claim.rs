//! Claiming: leasing due deliveries to one worker in one atomic step, and giving a claim back
//! unsent.

use super::*;

/// Leases up to `limit` due deliveries, earliest first, for the settings' `claim_lease`, in one
/// atomic step so concurrent workers never get the same delivery (the statement per backend
/// is in `docs/deliveries.md`).
///
/// A final attempt whose lease ran out without a report is marked exhausted by the same
/// statement and not returned, so a call may return fewer than `limit` while more are due:
/// call again until it returns none.
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
    let lease = lease(settings);
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

/// The two halves of a claim: the due rows (locked, skipping held rows where the backend can)
/// and the update that leases them.
pub(super) struct ClaimPlan {
    pub(super) due: SelectStatement,
    pub(super) lease: UpdateStatement,
}

impl ClaimPlan {
    pub(super) fn new(
        backend: DbBackend,
        settings: &WebhookSettings,
        now: Now,
        limit: u64,
    ) -> Self {
        let max_attempts = i32::try_from(settings.retry.max_attempts).unwrap_or(i32::MAX);
        let lease_for = lease(settings);

        let mut due = Query::select();
        due.column(wd::Column::Id)
            .from(wd::Entity)
            .and_where(Expr::col(wd::Column::NextRetryAt).lte(instant_expr(
                backend,
                now,
                chrono::Duration::zero(),
            )))
            .and_where(wd::Column::DeliveredAt.is_null())
            .cond_where(super::lanes::predecessor_settled())
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
    pub(super) fn single_statement(mut self, backend: DbBackend) -> Statement {
        backend.build(
            self.lease
                .and_where(Expr::col(wd::Column::Id).in_subquery(self.due))
                .returning_all(),
        )
    }
}

/// The error of a delivery whose final attempt's lease ran out without a report.
pub(super) const LOST_FINAL_ATTEMPT: &str =
    "no result was reported for the final attempt before its lease ran out";

/// MySQL's stand-in for `UPDATE … RETURNING id`, in the caller's transaction: locks the rows
/// `lock` selects (its first column is their id) and applies `update` to exactly those; returns
/// their ids. Shared by the claim and the batched record.
pub(super) async fn update_locked<C: ConnectionTrait>(
    txn: &C,
    lock: &SelectStatement,
    update: &UpdateStatement,
) -> Result<Vec<String>, DbErr> {
    let ids: Vec<String> = first_column(txn, txn.get_database_backend().build(lock)).await?;
    if !ids.is_empty() {
        let mut update = update.clone();
        update.and_where(wd::Column::Id.is_in(ids.clone()));
        txn.execute(&update).await?;
    }
    Ok(ids)
}

pub(super) async fn claim_locked<C: ConnectionTrait>(
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
pub(super) async fn exec_claimed(
    db: &DatabaseExecutor<'_>,
    update: &sea_orm::UpdateMany<wd::Entity>,
) -> Result<u64, DbErr> {
    let result = retry_statement(db, || update.clone().exec(db)).await?;
    Ok(result.rows_affected)
}

/// Gives a claim back unsent and uncounted, due again at `due`: for a worker whose host stays
/// busy (see [`crate::dispatch`]), since letting the lease run out would delay the delivery
/// and use up an attempt. Guarded by the claim like [`record_outcome`] ([`Error::StaleClaim`]).
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
pub(super) fn claimed(claim: &Claim) -> sea_orm::UpdateMany<wd::Entity> {
    wd::Entity::update_many()
        .filter(wd::Column::Id.eq(claim.delivery.id.as_str()))
        .filter(wd::Column::AttemptCount.eq(claim.attempt))
        .filter(wd::Column::DeliveredAt.is_null())
        .filter(wd::Column::StatusCode.is_null())
        .filter(wd::Column::ErrorMessage.is_null())
}

pub(super) fn stale(claim: &Claim) -> Error {
    Error::StaleClaim {
        id: claim.delivery.id.clone(),
        attempt: claim.attempt,
    }
}

/// How long a claim leases a delivery: the settings' `claim_lease`, at most the longest the
/// settings allow ([`CLAIM_LEASE_SECS`](crate::settings::CLAIM_LEASE_SECS)), since a lease
/// beyond a clock's range would make every backend fail or store no lease at all.
pub(crate) fn lease(settings: &WebhookSettings) -> chrono::TimeDelta {
    let longest = std::time::Duration::from_secs((*crate::settings::CLAIM_LEASE_SECS.end()).into());
    chrono::TimeDelta::from_std(settings.claim_lease.min(longest)).unwrap_or(chrono::TimeDelta::MAX)
}
