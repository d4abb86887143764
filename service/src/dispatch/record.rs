//! Recording finished attempts in batches, one attempt at a time when the database refuses a
//! batch.

use std::sync::Arc;

use sea_orm::DatabaseTransaction;

use super::{Dispatcher, Recorded};
use crate::delivery::retry::{AttemptOutcome, Decision};
use crate::delivery::{self, AttemptRecord, Claim, ErrorClass};
use crate::error::{Error, Result};

/// One attempt that has its outcome and waits to be recorded ([`Dispatcher::record`]).
#[derive(Clone)]
pub(super) struct FinishedAttempt {
    pub(super) claim: Claim,
    pub(super) outcome: AttemptOutcome,
    pub(super) record: AttemptRecord,
}

impl Dispatcher {
    /// Records finished attempts: their outcomes (each guarded by its claim) and their rows in
    /// the attempt log, in one transaction per [`crate::db::MAX_PAGE_SIZE`] attempts, with
    /// [`delivery::record_outcomes`] and [`delivery::record_attempts`], or in one statement
    /// with [`delivery::record_delivered`] where it applies. An attempt whose
    /// claim was taken over meanwhile is [`Recorded::Stale`]: it stays in the log, its outcome
    /// is not stored; one whose delivery was deleted meanwhile is stale too, and not logged.
    ///
    /// A batch the database refuses for what a row holds ([`Error::is_row_refusal`]: a value
    /// it cannot store, a constraint, a trigger) is recorded again one attempt at a time, so
    /// that one row's failure costs only that row: an attempt whose log row is refused still
    /// has its outcome stored, and one whose outcome is refused too is left to its lease
    /// ([`Recorded::Unrecorded`]). Any other failure (a lost connection, locks, a timeout) is
    /// the database's state, not a row's: it fails the whole recording, and the claims are left
    /// to their leases.
    pub(super) async fn record(&self, finished: Vec<FinishedAttempt>) -> Result<Vec<Recorded>> {
        let mut recorded = Vec::with_capacity(finished.len());
        let mut finished = finished.into_iter().peekable();
        while finished.peek().is_some() {
            let batch: Arc<[FinishedAttempt]> = finished
                .by_ref()
                .take(crate::db::MAX_PAGE_SIZE as usize)
                .collect();
            let outcomes = match self.record_in_transaction(Arc::clone(&batch), true).await {
                Ok(outcomes) => outcomes,
                Err(err) if err.is_row_refusal() => {
                    tracing::warn!(%err, attempts = batch.len(), "recording a batch failed; recording its attempts one by one");
                    let mut outcomes = Vec::with_capacity(batch.len());
                    for done in batch.iter() {
                        outcomes.push(self.record_alone(done).await?);
                    }
                    outcomes
                }
                Err(err) => return Err(err),
            };
            for (outcome, done) in outcomes.into_iter().zip(batch.iter()) {
                recorded.push(match outcome {
                    Ok(decision) => {
                        count_outcome(&decision, done.record.error_class);
                        Recorded::Decided(decision)
                    }
                    Err(Error::StaleClaim { .. }) => {
                        tracing::warn!(delivery = %done.claim.delivery.id, attempt = done.claim.attempt, "stale claim: outcome not stored");
                        Recorded::Stale
                    }
                    Err(_) => Recorded::Unrecorded,
                });
            }
        }
        Ok(recorded)
    }

    /// One attempt of a refused batch: outcome and log row, else the outcome alone.
    async fn record_alone(&self, done: &FinishedAttempt) -> Result<Result<Decision>> {
        let one: Arc<[FinishedAttempt]> = Arc::new([done.clone()]);
        let err = match self.record_in_transaction(Arc::clone(&one), true).await {
            Ok(mut outcome) => return Ok(outcome.remove(0)),
            Err(err) if err.is_row_refusal() => err,
            Err(err) => return Err(err),
        };
        tracing::error!(%err, delivery = %done.claim.delivery.id, attempt = done.claim.attempt, "the attempt log refused this attempt; storing its outcome without it");
        metrics::counter!(crate::metrics::UNRECORDED, "part" => "attempt").increment(1);
        match self.record_in_transaction(one, false).await {
            Ok(mut outcome) => Ok(outcome.remove(0)),
            Err(err) if !err.is_row_refusal() => Err(err),
            Err(err) => {
                tracing::error!(%err, delivery = %done.claim.delivery.id, attempt = done.claim.attempt, "the database refused this outcome; the delivery is left to its lease");
                metrics::counter!(crate::metrics::UNRECORDED, "part" => "outcome").increment(1);
                Ok(Err(err))
            }
        }
    }

    /// Run again after a deadlock: guarded outcomes and once-kept rows make a repeat harmless.
    async fn record_in_transaction(
        &self,
        batch: Arc<[FinishedAttempt]>,
        with_log: bool,
    ) -> Result<Vec<Result<Decision>>> {
        let _turn = self.write_turn().await;
        if with_log {
            let attempts = batch
                .iter()
                .map(|done| (&done.claim, &done.outcome, &done.record));
            if let Some(outcomes) =
                delivery::record_delivered(&self.db, &self.settings, attempts).await?
            {
                return Ok(outcomes);
            }
        }
        let this = self.clone();
        crate::db::transaction(&self.db, |txn| {
            let (this, batch) = (this.clone(), Arc::clone(&batch));
            Box::pin(async move { this.record_batch(txn, &batch, with_log).await })
        })
        .await
    }

    /// A delivery deleted meanwhile is stale, and its attempt is not logged.
    async fn record_batch(
        &self,
        txn: &DatabaseTransaction,
        batch: &[FinishedAttempt],
        with_log: bool,
    ) -> Result<Vec<Result<Decision>>> {
        let outcomes = delivery::record_outcomes(
            txn,
            &self.settings,
            batch
                .iter()
                .map(|done| (&done.claim, &done.outcome, done.record.finished_at)),
        )
        .await?;
        if !with_log {
            return Ok(outcomes);
        }
        // An applied outcome's row is locked by this transaction, so its delivery exists until
        // the commit. A stale claim's delivery may have been deleted meanwhile (a hard-deleted
        // agent takes its deliveries with it): its attempt has nowhere to go.
        let stale: Vec<&str> = batch
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.is_err())
            .map(|(done, _)| done.claim.delivery.id.as_str())
            .collect();
        let existing = delivery::existing_ids(txn, &stale).await?;
        delivery::record_attempts(
            txn,
            batch
                .iter()
                .zip(&outcomes)
                .filter(|(done, outcome)| {
                    outcome.is_ok() || existing.contains(done.claim.delivery.id.as_str())
                })
                .map(|(done, _)| (done.claim.delivery.id.as_str(), &done.record)),
        )
        .await?;
        Ok(outcomes)
    }
}

pub(super) fn count_outcome(decision: &Decision, class: Option<ErrorClass>) {
    if matches!(decision, Decision::Delivered) {
        metrics::counter!(crate::metrics::SENT).increment(1);
        return;
    }
    let class = class.map_or("unknown", ErrorClass::as_str);
    metrics::counter!(crate::metrics::FAILED, "class" => class).increment(1);
    match decision {
        Decision::RetryAt(_) => metrics::counter!(crate::metrics::RETRIED).increment(1),
        _ => metrics::counter!(crate::metrics::EXHAUSTED).increment(1),
    }
}
