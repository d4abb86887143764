//! Batched writes (docs/benchmarks.md section 7): `enqueue_many` against `enqueue`, and
//! `record_outcomes` against `record_outcome` in a worker without HTTP, per row.

use std::time::{Duration, Instant};

use agent_webhooks::delivery;
use agent_webhooks::delivery::retry::AttemptOutcome;
use agent_webhooks::settings::WebhookSettings;
use chrono::Utc;
use integration_tests::{Backend, TestDb, seed_agent};
use sea_orm::DatabaseConnection;
use serde_json::json;

use super::Report;

/// Enqueue rows/s one at a time against `enqueue_many` in batches of 100, and claim+record
/// deliveries/s with 1 and 4 workers recording one outcome at a time against one batch at a
/// time; `n` deliveries per path, enqueue in `rounds` rounds.
pub(super) async fn figures(report: &mut Report, backend: Backend, n: usize, rounds: usize) {
    let settings = WebhookSettings::default();
    let payload = json!({"n": 1});
    let events: Vec<String> = (0..n).map(|i| format!("evt-{i}")).collect();
    let agent_of = |i: usize| format!("agent-{}", i % 10);
    let agents: Vec<String> = (0..n).map(agent_of).collect();
    let new_db = || async {
        let t = TestDb::migrated_with(backend, 4).await;
        for a in 0..10 {
            seed_agent(&t, &format!("agent-{a}"), &[]).await;
        }
        t
    };
    let items = enqueue_items(&agents, &events, &payload);
    // Enqueue: the two paths alternate in rounds, on fresh databases. Both paths leave the same
    // `n` due deliveries behind: the claim+record runs below start from these databases
    // (fresh databases cost a migration and, on PostgreSQL, a checkpoint at their drop).
    let mut enqueued = Vec::new();
    let mut enqueue = [Duration::ZERO; 2];
    for _round in 0..rounds {
        for (path, time) in enqueue.iter_mut().enumerate() {
            let t = new_db().await;
            let now = Utc::now();
            let start = Instant::now();
            if path == 0 {
                for i in 0..n {
                    delivery::enqueue(
                        &t.db,
                        &settings,
                        &agents[i],
                        &events[i],
                        "run.completed",
                        &payload,
                        now,
                    )
                    .await
                    .expect("enqueue");
                }
            } else {
                for chunk in items.chunks(100) {
                    delivery::enqueue_many(&t.db, &settings, chunk, now)
                        .await
                        .expect("enqueue_many");
                }
            }
            *time += start.elapsed();
            enqueued.push(t);
        }
    }
    let single = (rounds * n) as f64 / enqueue[0].as_secs_f64();
    let many = (rounds * n) as f64 / enqueue[1].as_secs_f64();
    report.add(
        backend,
        "batched",
        "enqueue, one at a time",
        single,
        "rows/s",
    );
    report.add(
        backend,
        "batched",
        "enqueue_many, batch of 100",
        many,
        "rows/s",
    );
    report.add(
        backend,
        "batched",
        "enqueue_many/enqueue",
        many / single,
        "ratio",
    );

    // Claim + record, with the deliveries enqueued beforehand: by the enqueue runs above, else
    // (fewer rounds than runs) `n` more events enqueued in the previous run's database, whose
    // deliveries are all recorded by then.
    let mut previous: Option<TestDb> = None;
    let mut refills = 0;
    for workers in [1usize, 4] {
        let mut rates = [0.0; 2];
        for (batched, rate) in rates.iter_mut().enumerate() {
            let t = match enqueued.pop() {
                Some(t) => t,
                None => {
                    let t = match previous.take() {
                        Some(t) => t,
                        None => new_db().await,
                    };
                    refills += 1;
                    let again: Vec<String> =
                        (0..n).map(|i| format!("evt-again{refills}-{i}")).collect();
                    for chunk in enqueue_items(&agents, &again, &payload).chunks(500) {
                        delivery::enqueue_many(&t.db, &settings, chunk, Utc::now())
                            .await
                            .expect("seed");
                    }
                    t
                }
            };
            let start = Instant::now();
            let tasks: Vec<_> = (0..workers)
                .map(|_| {
                    let db = t.db.clone();
                    tokio::spawn(claim_and_record(db, batched == 1))
                })
                .collect();
            let mut done = 0;
            for task in tasks {
                done += task.await.expect("worker");
            }
            assert_eq!(done, n, "every delivery recorded once");
            *rate = n as f64 / start.elapsed().as_secs_f64();
            previous = Some(t);
        }
        report.add(
            backend,
            "batched",
            format!("claim+record, {workers} worker(s), one at a time"),
            rates[0],
            "deliveries/s",
        );
        report.add(
            backend,
            "batched",
            format!("claim+record, {workers} worker(s), batched"),
            rates[1],
            "deliveries/s",
        );
        report.add(
            backend,
            "batched",
            format!("claim+record, {workers} worker(s), batched/one"),
            rates[1] / rates[0],
            "ratio",
        );
    }
}

/// One `run.completed` item per event, for the agent at the same index.
fn enqueue_items<'a>(
    agents: &'a [String],
    events: &'a [String],
    payload: &'a serde_json::Value,
) -> Vec<delivery::EnqueueItem<'a>> {
    agents
        .iter()
        .zip(events)
        .map(|(agent_id, event_id)| delivery::EnqueueItem {
            agent_id,
            event_id,
            event_type: "run.completed",
            payload: payload.into(),
            lane: None,
        })
        .collect()
}

/// A worker without HTTP: claims batches of 100 and records each as delivered, until nothing
/// is due; returns how many it recorded.
async fn claim_and_record(db: DatabaseConnection, batched: bool) -> usize {
    let settings = WebhookSettings::default();
    let success = AttemptOutcome::Status {
        code: 200,
        retry_after: None,
    };
    let mut done = 0;
    loop {
        let now = Utc::now();
        let claims = delivery::claim_due(&db, &settings, now, 100)
            .await
            .expect("claim");
        if claims.is_empty() {
            return done;
        }
        if batched {
            let results = delivery::record_outcomes(
                &db,
                &settings,
                claims.iter().map(|c| (c, &success, now)),
            )
            .await
            .expect("record_outcomes");
            assert!(results.iter().all(Result::is_ok), "no stale claim");
        } else {
            for claim in &claims {
                delivery::record_outcome(&db, &settings, claim, &success, now)
                    .await
                    .expect("record");
            }
        }
        done += claims.len();
    }
}
