//! `claim_due` latency against table size (docs/benchmarks.md section 3): a batch of 100 with
//! 1 % of the table due; each claim runs in a transaction that is rolled back, so every sample
//! sees the same table.

use std::time::Instant;

use agent_webhooks::delivery;
use agent_webhooks::settings::WebhookSettings;
use chrono::Utc;
use integration_tests::{Backend, TestDb};
use sea_orm::TransactionTrait;

use super::{Report, ms, org, percentile, seed_agent_quiet, seed_deliveries};

/// `samples` claims on a table of each of `sizes` deliveries: p50 and p99 per size, and the
/// p50 ratio of the largest to the smallest.
pub(super) async fn figures(
    report: &mut Report,
    backend: Backend,
    sizes: &[usize],
    samples: usize,
) {
    let settings = WebhookSettings::default();
    let mut p50s = Vec::new();
    for &rows in sizes {
        let t = TestDb::migrated_with(backend, 2).await;
        org(&t).await;
        for a in 0..10 {
            seed_agent_quiet(&t, a).await;
        }
        seed_deliveries(&t, rows, 10).await;
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let txn = t.db.begin().await.expect("begin");
            let start = Instant::now();
            let claims = delivery::claim_due(&txn, &settings, Utc::now(), 100)
                .await
                .expect("claim");
            times.push(start.elapsed());
            assert_eq!(claims.len(), 100.min(rows / 100));
            txn.rollback().await.expect("rollback");
        }
        let p50 = percentile(&mut times, 0.5);
        let p99 = percentile(&mut times, 0.99);
        report.add(
            backend,
            "claim_due",
            format!("p50, {rows} rows"),
            ms(p50),
            "ms",
        );
        report.add(
            backend,
            "claim_due",
            format!("p99, {rows} rows"),
            ms(p99),
            "ms",
        );
        p50s.push((rows, p50));
    }
    if let [(small, a), .., (large, b)] = p50s.as_slice() {
        report.add(
            backend,
            "claim_due",
            format!("p50 ratio {large}/{small}"),
            b.as_secs_f64() / a.as_secs_f64(),
            "x",
        );
    }
}
