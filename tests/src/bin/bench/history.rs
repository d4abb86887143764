//! History paging (docs/benchmarks.md section 4): the first page against a deep page of one
//! agent's history. Keyset pagination should make both cost the same.

use std::time::Instant;

use agent_webhooks::delivery::{self, HistoryQuery};
use chrono::Utc;
use integration_tests::{Backend, TestDb};

use super::{Report, ms, org, percentile, seed_agent_quiet, seed_deliveries};

/// p50 of the first page and of page `deep_page` (50 a page) of one agent with `rows`
/// deliveries, and their ratio.
pub(super) async fn figures(report: &mut Report, backend: Backend, rows: usize, deep_page: usize) {
    let t = TestDb::migrated_with(backend, 2).await;
    org(&t).await;
    seed_agent_quiet(&t, 0).await;
    seed_deliveries(&t, rows, 1).await;
    let now = Utc::now();
    let mut query = HistoryQuery {
        limit: 50,
        ..HistoryQuery::default()
    };
    let first = query.clone();
    for _ in 1..deep_page {
        let page = delivery::history(&t.db, "agent-0", &query, now)
            .await
            .expect("page");
        query.cursor = page.next_cursor;
    }
    assert!(query.cursor.is_some(), "page {deep_page} exists");
    let mut timings = [Vec::new(), Vec::new()];
    for _ in 0..50 {
        for (i, q) in [&first, &query].into_iter().enumerate() {
            let start = Instant::now();
            let page = delivery::history(&t.db, "agent-0", q, now)
                .await
                .expect("page");
            timings[i].push(start.elapsed());
            assert_eq!(page.items.len(), 50);
        }
    }
    let first_p50 = percentile(&mut timings[0], 0.5);
    let deep_p50 = percentile(&mut timings[1], 0.5);
    report.add(
        backend,
        "history",
        format!("p50 first page ({rows} rows)"),
        ms(first_p50),
        "ms",
    );
    report.add(
        backend,
        "history",
        format!("p50 page {deep_page}"),
        ms(deep_p50),
        "ms",
    );
    report.add(
        backend,
        "history",
        format!("p50 ratio page {deep_page}/first"),
        deep_p50.as_secs_f64() / first_p50.as_secs_f64(),
        "x",
    );
}
