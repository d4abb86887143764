//! Ordered lanes (docs/benchmarks.md section 12): what the claim's rule costs, and what an
//! ordered enqueue costs, each against the unordered case in the same run.
//!
//! Claim: `n` due deliveries, claimed 100 at a time in a transaction that is rolled back (every
//! sample sees the same table), laid out three ways: unordered; one ordered lane each (every
//! row is its lane's head: one lookup per candidate); and one hot lane of `n` waiting behind its
//! head, followed by `n` unordered rows (the claim scans past the backlog to fill its batch).
//! Enqueue: `n / 10` events on one connection into an unordered and into an ordered agent.

use std::time::{Duration, Instant};

use agent_webhooks::delivery;
use agent_webhooks::settings::WebhookSettings;
use chrono::Utc;
use integration_tests::{Backend, TestDb};
use sea_orm::TransactionTrait;

use super::{Report, analyze_deliveries, ms, org, percentile, seed_agent_quiet};

/// How the seeded due rows sit in lanes.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    Unordered,
    LanePerRow,
    HotLane,
}

pub(super) async fn figures(report: &mut Report, backend: Backend, n: usize, samples: usize) {
    let settings = WebhookSettings::default();
    let mut p50 = Vec::new();
    for (layout, name) in [
        (Layout::Unordered, "unordered".to_owned()),
        (Layout::LanePerRow, format!("{n} lanes")),
        (Layout::HotLane, "one hot lane".to_owned()),
    ] {
        let t = TestDb::migrated_with(backend, 2).await;
        org(&t).await;
        for a in 0..10 {
            seed_agent_quiet(&t, a).await;
        }
        seed(&t, n, layout).await;
        analyze_deliveries(&t).await;
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let txn = t.db.begin().await.expect("begin");
            let start = Instant::now();
            let claims = delivery::claim_due(&txn, &settings, Utc::now(), 100)
                .await
                .expect("claim");
            times.push(start.elapsed());
            // The hot lane gives its head only; unordered rows behind it fill the batch.
            assert_eq!(claims.len(), 100, "{name}");
            if layout == Layout::HotLane {
                let hot = claims.iter().filter(|c| c.delivery.lane.is_some()).count();
                assert_eq!(hot, 1, "one delivery of the hot lane");
            }
            txn.rollback().await.expect("rollback");
        }
        let median = percentile(&mut times, 0.5);
        report.add(
            backend,
            "lanes",
            format!("claim p50, {name}"),
            ms(median),
            "ms",
        );
        p50.push(median);
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    report.add(
        backend,
        "lanes",
        format!("claim p50 {n} lanes / unordered"),
        ratio(p50[1], p50[0]),
        "x",
    );
    report.add(
        backend,
        "lanes",
        "claim p50 one hot lane / unordered",
        ratio(p50[2], p50[0]),
        "x",
    );

    // Enqueue on one connection: an unordered agent, then an ordered one (one lane).
    let t = TestDb::migrated_with(backend, 1).await;
    org(&t).await;
    seed_agent_quiet(&t, 0).await;
    seed_agent_quiet(&t, 1).await;
    t.exec("UPDATE agents SET webhook_ordered = true WHERE id = 'agent-1'")
        .await;
    let events = (n / 10).max(10);
    let payload = serde_json::json!({"kind": "step"});
    let mut rate = Vec::new();
    for agent in ["agent-0", "agent-1"] {
        let start = Instant::now();
        for i in 0..events {
            let created = delivery::enqueue(
                &t.db,
                &settings,
                agent,
                &format!("evt-{i}"),
                "run.step",
                &payload,
                Utc::now(),
            )
            .await
            .expect("enqueue");
            assert!(matches!(created, delivery::Enqueued::Created(_)));
        }
        rate.push(events as f64 / start.elapsed().as_secs_f64());
    }
    report.add(backend, "lanes", "enqueue, unordered", rate[0], "events/s");
    report.add(backend, "lanes", "enqueue, ordered", rate[1], "events/s");
    report.add(
        backend,
        "lanes",
        "enqueue ordered / unordered",
        rate[1] / rate[0],
        "x",
    );
}

/// `n` due deliveries (never tried, `next_retry_at` one second apart, oldest first) laid out
/// as `layout` says; for [`Layout::HotLane`], `n` unordered ones due after them.
async fn seed(t: &TestDb, n: usize, layout: Layout) {
    let (lane, seq, agent) = match layout {
        Layout::Unordered => ("NULL", "NULL", "g % 10"),
        Layout::LanePerRow => ("'l-' || g", "1", "g % 10"),
        Layout::HotLane => ("'hot'", "g", "0"),
    };
    let span = 3 * n;
    t.exec(&insert(t.backend, 1, n, span, lane, seq, agent))
        .await;
    if layout == Layout::HotLane {
        t.exec(&insert(
            t.backend,
            n + 1,
            2 * n,
            span,
            "NULL",
            "NULL",
            "g % 10",
        ))
        .await;
    }
}

/// `INSERT … SELECT` of the rows `from..=to` (`g`), due `span - g` seconds ago.
fn insert(
    backend: Backend,
    from: usize,
    to: usize,
    span: usize,
    lane: &str,
    seq: &str,
    agent: &str,
) -> String {
    let columns = "id, organization_id, agent_id, event_id, event_type, webhook_url, \
                   attempt_count, created_at, next_retry_at, lane, lane_seq";
    match backend {
        Backend::Postgres => format!(
            "INSERT INTO webhook_deliveries ({columns}) \
             SELECT 'dlv-' || lpad(g::text, 9, '0'), 'org-1', 'agent-' || ({agent}), 'evt-' || g, \
             'run.step', 'https://hooks.example.com/x', 0, now(), \
             now() - make_interval(secs => {span} - g), {lane}, {seq} \
             FROM generate_series({from}, {to}) g"
        ),
        Backend::Sqlite => format!(
            "WITH RECURSIVE s(g) AS (SELECT {from} UNION ALL SELECT g + 1 FROM s WHERE g < {to}) \
             INSERT INTO webhook_deliveries ({columns}) \
             SELECT printf('dlv-%09d', g), 'org-1', 'agent-' || ({agent}), 'evt-' || g, \
             'run.step', 'https://hooks.example.com/x', 0, \
             strftime('%Y-%m-%d %H:%M:%f+00:00', 'now'), \
             strftime('%Y-%m-%d %H:%M:%f+00:00', 'now', '-' || ({span} - g) || ' seconds'), \
             {lane}, {seq} FROM s"
        ),
        Backend::MySql => {
            let lane = lane.replace("'l-' || g", "CONCAT('l-', g)");
            let agent = format!("CONCAT('agent-', {agent})");
            format!(
                "INSERT INTO webhook_deliveries ({columns}) \
                 SELECT CONCAT('dlv-', LPAD(g, 9, '0')), 'org-1', {agent}, CONCAT('evt-', g), \
                 'run.step', 'https://hooks.example.com/x', 0, UTC_TIMESTAMP(6), \
                 UTC_TIMESTAMP(6) - INTERVAL ({span} - g) SECOND, {lane}, {seq} \
                 FROM (SELECT seq AS g FROM seq_{from}_to_{to}) s"
            )
        }
    }
}
