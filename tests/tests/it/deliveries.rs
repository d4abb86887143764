//! Delivery bookkeeping on SQLite, PostgreSQL and MariaDB: every transition with an injected
//! clock, the stale-claim guard, exhaustion, requeue, races, pagination, retention and many
//! concurrent workers.

use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_webhooks::Error;
use agent_webhooks::delivery::retry::{AttemptOutcome, Decision, GiveUpReason, RetryPolicy};
use agent_webhooks::delivery::{self, Claim, DeliveryState, Enqueued, HistoryQuery, SkipReason};
use agent_webhooks::settings::WebhookSettings;
use chrono::{DateTime, TimeDelta, Utc};
use entity::{agents, webhook_deliveries};
use integration_tests::{Backend, TestDb, backend_tests, seed_agent};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sea_orm::sea_query::{Expr, LockType, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, IntoDatabaseExecutor,
    PaginatorTrait, QueryFilter, TransactionTrait,
};

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_764_000_000, 0).unwrap()
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

/// Retries after 5 s, then 60 s, without jitter so instants are exact; a lease of [`LEASE`].
fn policy(max_attempts: u32) -> WebhookSettings {
    WebhookSettings {
        retry: RetryPolicy {
            schedule: vec![Duration::from_secs(5), Duration::from_secs(60)],
            max_attempts,
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        claim_lease: LEASE,
        ..WebhookSettings::default()
    }
}

/// Records an HTTP response; a 2xx is delivered under any policy.
async fn record_status(
    db: impl IntoDatabaseExecutor<'_>,
    claim: &Claim,
    code: u16,
    now: DateTime<Utc>,
) -> Result<Decision, Error> {
    delivery::record_outcome(db, &WebhookSettings::default(), claim, &status(code), now).await
}

fn status(code: u16) -> AttemptOutcome {
    AttemptOutcome::Status {
        code,
        retry_after: None,
    }
}

const LEASE: Duration = Duration::from_secs(30);

async fn created(
    t: &TestDb,
    agent: &str,
    event_id: &str,
    event_type: &str,
    now: DateTime<Utc>,
) -> String {
    match delivery::enqueue(
        &t.db,
        &WebhookSettings::default(),
        agent,
        event_id,
        event_type,
        &json!({"n": 1}),
        now,
    )
    .await
    .unwrap()
    {
        Enqueued::Created(d) => d.id,
        other => panic!("expected a new delivery, got {other:?}"),
    }
}

async fn claim_one(t: &TestDb, policy: &WebhookSettings, now: DateTime<Utc>) -> Claim {
    let mut claims = delivery::claim_due(&t.db, policy, now, 10).await.unwrap();
    assert_eq!(
        claims.len(),
        1,
        "expected one due delivery at {now}: {claims:?}"
    );
    claims.remove(0)
}

async fn state(t: &TestDb, id: &str, now: DateTime<Utc>) -> DeliveryState {
    delivery::get(&t.db, id, now).await.unwrap().state
}

async fn every_transition_with_an_injected_clock(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &["run.*"]).await;
    let p = policy(3);
    let now = t0();

    // Enqueue: due at once, idempotent, filtered.
    let id = created(&t, "agent-1", "evt-1", "run.completed", now).await;
    let d = delivery::get(&t.db, &id, now).await.unwrap();
    assert_eq!(
        (d.state, d.attempt_count, d.next_retry_at),
        (DeliveryState::Pending, 0, Some(now))
    );
    assert_eq!(d.webhook_url, "https://hooks.example.com/agent-1");
    match delivery::enqueue(
        &t.db,
        &WebhookSettings::default(),
        "agent-1",
        "evt-1",
        "run.completed",
        &json!({"n": 1}),
        now + secs(1),
    )
    .await
    .unwrap()
    {
        Enqueued::Existing(again) => assert_eq!(again.id, id),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        delivery::enqueue(
            &t.db,
            &WebhookSettings::default(),
            "agent-1",
            "evt-2",
            "message.created",
            &json!({"n": 1}),
            now
        )
        .await
        .unwrap(),
        Enqueued::Skipped(SkipReason::NotWanted)
    );
    assert!(matches!(
        delivery::enqueue(
            &t.db,
            &WebhookSettings::default(),
            "agent-404",
            "evt-1",
            "run.completed",
            &json!({"n": 1}),
            now
        )
        .await,
        Err(Error::AgentNotFound(_))
    ));
    for (event_id, event_type) in [
        ("evt.1", "run.completed"),
        ("evt 1", "run.completed"),
        ("", "run.completed"),
        ("evt-5", ""),
    ] {
        let err = delivery::enqueue(
            &t.db,
            &WebhookSettings::default(),
            "agent-1",
            event_id,
            event_type,
            &json!({"n": 1}),
            now,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, Error::InvalidEvent { .. }),
            "{event_id:?}: {err}"
        );
    }

    // Claim: leased, attempt 1, not claimable again while leased.
    let first = claim_one(&t, &p, now).await;
    assert_eq!((first.attempt, first.lease_until), (1, now + secs(30)));
    assert_eq!(first.delivery.state, DeliveryState::Leased);
    assert_eq!(state(&t, &id, now + secs(1)).await, DeliveryState::Leased);
    assert!(
        delivery::claim_due(&t.db, &p, now + secs(1), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A retryable failure: pending again after the schedule's first delay.
    let recorded = delivery::record_outcome(&t.db, &p, &first, &status(503), now + secs(2))
        .await
        .unwrap();
    assert_eq!(recorded, Decision::RetryAt(now + secs(7)));
    let d = delivery::get(&t.db, &id, now + secs(2)).await.unwrap();
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(
        (d.status_code, d.error_message.as_deref()),
        (Some(503), Some("HTTP 503"))
    );
    // Reporting the same attempt twice is refused.
    assert!(matches!(
        record_status(&t.db, &first, 200, now + secs(3)).await,
        Err(Error::StaleClaim { attempt: 1, .. })
    ));
    assert!(
        delivery::claim_due(&t.db, &p, now + secs(6), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Attempt 2 is claimed, its worker stalls past the lease, attempt 3 takes over.
    let second = claim_one(&t, &p, now + secs(7)).await;
    assert_eq!(second.attempt, 2);
    assert_eq!(
        second.delivery.status_code, None,
        "a claim clears the previous result"
    );
    assert_eq!(
        state(&t, &id, now + secs(37)).await,
        DeliveryState::Pending,
        "lease ran out"
    );
    let third = claim_one(&t, &p, now + secs(40)).await;
    assert_eq!(third.attempt, 3);
    // The stale worker's report must not overwrite the newer attempt.
    assert!(matches!(
        record_status(&t.db, &second, 200, now + secs(41)).await,
        Err(Error::StaleClaim { attempt: 2, .. })
    ));
    assert_eq!(state(&t, &id, now + secs(41)).await, DeliveryState::Leased);
    assert_eq!(
        record_status(&t.db, &third, 204, now + secs(42))
            .await
            .unwrap(),
        Decision::Delivered
    );
    let d = delivery::get(&t.db, &id, now + secs(42)).await.unwrap();
    assert_eq!(d.state, DeliveryState::Delivered);
    assert_eq!(
        (
            d.delivered_at,
            d.next_retry_at,
            d.status_code,
            d.attempt_count
        ),
        (Some(now + secs(42)), None, Some(204), 3)
    );
    assert!(matches!(
        delivery::requeue(&t.db, &id, now + secs(43)).await,
        Err(Error::NotRequeueable {
            state: DeliveryState::Delivered,
            ..
        })
    ));

    // Exhaustion by attempts: 3 retryable failures with max_attempts 3.
    let id = created(&t, "agent-1", "evt-3", "run.failed", now + secs(100)).await;
    let mut clock = now + secs(100);
    for attempt in 1..=3 {
        let claim = claim_one(&t, &p, clock).await;
        assert_eq!(claim.attempt, attempt);
        let recorded = delivery::record_outcome(&t.db, &p, &claim, &AttemptOutcome::Timeout, clock)
            .await
            .unwrap();
        if attempt < 3 {
            let Decision::RetryAt(next) = recorded else {
                panic!("{recorded:?}")
            };
            clock = next;
        } else {
            assert_eq!(recorded, Decision::GiveUp(GiveUpReason::MaxAttempts(3)));
        }
    }
    let d = delivery::get(&t.db, &id, clock).await.unwrap();
    assert_eq!(
        (d.state, d.next_retry_at, d.delivered_at),
        (DeliveryState::Failed, None, None)
    );
    assert_eq!(d.error_message.as_deref(), Some("timed out"));

    // Requeue: due now, a fresh budget of attempts.
    let requeued = delivery::requeue(&t.db, &id, clock + secs(1))
        .await
        .unwrap();
    assert_eq!(
        (
            requeued.state,
            requeued.attempt_count,
            requeued.next_retry_at
        ),
        (DeliveryState::Pending, 0, Some(clock + secs(1)))
    );
    let claim = claim_one(&t, &p, clock + secs(1)).await;
    assert_eq!(claim.attempt, 1);

    // A final status exhausts at once.
    let recorded = delivery::record_outcome(&t.db, &p, &claim, &status(410), clock + secs(2))
        .await
        .unwrap();
    assert_eq!(recorded, Decision::GiveUp(GiveUpReason::FinalStatus(410)));
    assert_eq!(state(&t, &id, clock + secs(2)).await, DeliveryState::Failed);

    // A worker lost during the final attempt: exhausted when its lease runs out.
    let one_shot = policy(1);
    let id = created(&t, "agent-1", "evt-4", "run.started", now + secs(500)).await;
    let lost = claim_one(&t, &one_shot, now + secs(500)).await;
    assert!(
        delivery::claim_due(&t.db, &one_shot, now + secs(531), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let d = delivery::get(&t.db, &id, now + secs(531)).await.unwrap();
    assert_eq!(d.state, DeliveryState::Failed);
    assert!(d.error_message.unwrap().contains("lease ran out"));
    assert!(
        record_status(&t.db, &lost, 200, now + secs(532))
            .await
            .is_err()
    );

    // Disabled webhook: nothing is enqueued.
    agents::Entity::update_many()
        .col_expr(
            agents::Column::WebhookEnabled,
            sea_orm::sea_query::Expr::value(false),
        )
        .exec(&t.db)
        .await
        .unwrap();
    assert_eq!(
        delivery::enqueue(
            &t.db,
            &WebhookSettings::default(),
            "agent-1",
            "evt-9",
            "run.completed",
            &json!({"n": 1}),
            now
        )
        .await
        .unwrap(),
        Enqueued::Skipped(SkipReason::Disabled)
    );

    // Stats at the end: one delivered, two failed, nothing pending.
    let stats = delivery::stats(&t.db, "agent-1", now + secs(600))
        .await
        .unwrap();
    assert_eq!(
        (stats.pending, stats.leased, stats.delivered, stats.failed),
        (0, 0, 1, 2)
    );
    assert_eq!(stats.last_success_at, Some(now + secs(42)));
    assert_eq!(stats.consecutive_failures, 2);
}

async fn racing_enqueues_make_exactly_one_row(backend: Backend) {
    let t = TestDb::migrated_with(backend, 16).await;
    seed_agent(&t, "agent-1", &[]).await;
    let db = Arc::new(t.db.clone());
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                delivery::enqueue(
                    db.as_ref(),
                    &WebhookSettings::default(),
                    "agent-1",
                    "evt-race",
                    "run.completed",
                    &json!({"n": 1}),
                    t0(),
                )
                .await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(Enqueued::Created(d)) => {
                created += 1;
                ids.insert(d.id);
            }
            Ok(Enqueued::Existing(d)) => {
                ids.insert(d.id);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    assert_eq!(
        webhook_deliveries::Entity::find()
            .count(&t.db)
            .await
            .unwrap(),
        1
    );
}

async fn pages_yield_every_row_once_in_order_while_rows_arrive(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    seed_agent(&t, "agent-2", &[]).await;
    // 230 deliveries; groups of three share a created_at, so the id breaks ties.
    let mut expected = Vec::new();
    for i in 0..230 {
        let now = t0() + secs(i / 3);
        let kind = if i % 4 == 0 {
            "run.failed"
        } else {
            "run.completed"
        };
        expected.push((
            now,
            created(&t, "agent-1", &format!("evt-{i}"), kind, now).await,
        ));
        created(&t, "agent-2", &format!("evt-{i}"), kind, now).await;
    }
    expected.sort_by(|a, b| b.cmp(a));

    let mut seen = Vec::new();
    let mut query = HistoryQuery {
        limit: 37,
        ..HistoryQuery::default()
    };
    let mut pages = 0;
    loop {
        let page = delivery::history(&t.db, "agent-1", &query, t0())
            .await
            .unwrap();
        assert!(page.items.len() <= 37);
        seen.extend(page.items.iter().map(|d| (d.created_at, d.id.clone())));
        pages += 1;
        // New deliveries arrive between pages; they are newer than every cursor.
        created(
            &t,
            "agent-1",
            &format!("late-{pages}"),
            "run.completed",
            t0() + secs(10_000 + pages),
        )
        .await;
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    assert_eq!(pages, 230usize.div_ceil(37) as i64);
    assert_eq!(seen, expected, "every row once, newest first");

    // Filters: event type and state.
    let failed_kind = HistoryQuery {
        event_type: Some("run.failed".into()),
        limit: 1000,
        ..HistoryQuery::default()
    };
    let page = delivery::history(&t.db, "agent-1", &failed_kind, t0())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 58);
    assert!(page.items.iter().all(|d| d.event_type == "run.failed"));
    let claim = claim_one_of(&t, t0() + secs(100_000)).await;
    let leased = HistoryQuery {
        state: Some(DeliveryState::Leased),
        limit: 1000,
        ..HistoryQuery::default()
    };
    let page = delivery::history(
        &t.db,
        &claim.delivery.agent_id,
        &leased,
        t0() + secs(100_000),
    )
    .await
    .unwrap();
    assert_eq!(
        page.items.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        vec![claim.delivery.id.clone()]
    );

    // Bad input is a typed error.
    let bad = HistoryQuery {
        cursor: Some("garbage".into()),
        ..HistoryQuery::default()
    };
    assert!(matches!(
        delivery::history(&t.db, "agent-1", &bad, t0()).await,
        Err(Error::BadCursor)
    ));
    let too_big = HistoryQuery {
        limit: 1001,
        ..HistoryQuery::default()
    };
    assert!(matches!(
        delivery::history(&t.db, "agent-1", &too_big, t0()).await,
        Err(Error::InvalidLimit { limit: 1001, .. })
    ));
}

async fn claim_one_of(t: &TestDb, now: DateTime<Utc>) -> Claim {
    let mut claims = delivery::claim_due(&t.db, &policy(3), now, 1)
        .await
        .unwrap();
    claims.pop().expect("a due delivery")
}

async fn prune_deletes_only_finished_old_deliveries(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    let p = policy(1);
    let old = t0();
    for i in 0..25 {
        created(&t, "agent-1", &format!("evt-{i}"), "run.completed", old).await;
    }
    // 10 delivered, 10 exhausted, 3 leased, 2 pending: all old.
    for (i, claim) in delivery::claim_due(&t.db, &p, old, 23)
        .await
        .unwrap()
        .into_iter()
        .enumerate()
    {
        match i {
            0..10 => {
                record_status(&t.db, &claim, 200, old).await.unwrap();
            }
            10..20 => {
                delivery::record_outcome(&t.db, &p, &claim, &status(500), old)
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    // A recent delivered one survives the cut-off.
    let recent = (old + secs(86_400)).fixed_offset();
    webhook_deliveries::Entity::insert(webhook_deliveries::ActiveModel {
        id: Set("dlv-recent".into()),
        organization_id: Set("org-1".into()),
        agent_id: Set("agent-1".into()),
        event_id: Set("evt-recent".into()),
        event_type: Set("run.completed".into()),
        webhook_url: Set("https://hooks.example.com/agent-1".into()),
        status_code: Set(Some(200)),
        error_message: Set(None),
        attempt_count: Set(1),
        created_at: Set(recent),
        delivered_at: Set(Some(recent)),
        next_retry_at: Set(None),
        payload: Set(None),
        lane: Set(None),
        lane_seq: Set(None),
    })
    .exec(&t.db)
    .await
    .unwrap();

    // With a pause: every statement after the first starts at least `pause` after the one
    // before it ended (`on_batch` runs right after each statement).
    let pause = Duration::from_millis(30);
    let mut progress = Vec::new();
    let deleted = delivery::prune(&t.db, old + secs(3_600), 4, pause, |n| {
        progress.push((n, std::time::Instant::now()))
    })
    .await
    .unwrap();
    assert_eq!(deleted, 20);
    let counts: Vec<u64> = progress.iter().map(|(n, _)| *n).collect();
    assert_eq!(counts, [4, 8, 12, 16, 20, 20], "one call per statement");
    for pair in progress.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(gap >= pause, "statements {gap:?} apart, pause {pause:?}");
    }
    let stats = delivery::stats(&t.db, "agent-1", old + secs(10))
        .await
        .unwrap();
    assert_eq!(
        (stats.pending, stats.leased, stats.delivered, stats.failed),
        (2, 3, 1, 0)
    );
    assert_eq!(
        delivery::prune(&t.db, old + secs(3_600), 4, Duration::ZERO, |_| {})
            .await
            .unwrap(),
        0,
        "idempotent"
    );
}

/// Eight workers on separate connections drain 2,000 deliveries with random failures and
/// random crashes (claims dropped without a report). At the end every delivery is delivered or
/// exhausted, none was accepted as delivered twice, and none is lost.
async fn eight_workers_drain_two_thousand_deliveries(backend: Backend) {
    const DELIVERIES: usize = 2_000;
    const WORKERS: u64 = 8;
    let t = TestDb::migrated_with(backend, 4).await;
    for agent in 0..10 {
        seed_agent(&t, &format!("agent-{agent}"), &[]).await;
    }
    // Bulk-insert the deliveries, then make them all due now. The instants come from the
    // server default: through the entity, sqlx would write SQLite text in its own format, not
    // the one the service writes and compares (`migration::SQLITE_TIMESTAMP_FORMAT`).
    for chunk in (0..DELIVERIES).collect::<Vec<_>>().chunks(500) {
        let rows = chunk.iter().map(|i| webhook_deliveries::ActiveModel {
            id: Set(format!("dlv-{i:05}")),
            organization_id: Set("org-1".into()),
            agent_id: Set(format!("agent-{}", i % 10)),
            event_id: Set(format!("evt-{i}")),
            event_type: Set("run.completed".into()),
            webhook_url: Set("https://hooks.example.com/x".into()),
            status_code: Set(None),
            error_message: Set(None),
            attempt_count: Set(0),
            delivered_at: Set(None),
            payload: Set(Some(b"{}".to_vec())),
            ..Default::default()
        });
        webhook_deliveries::Entity::insert_many(rows)
            .exec(&t.db)
            .await
            .unwrap();
    }
    t.exec("UPDATE webhook_deliveries SET next_retry_at = created_at")
        .await;

    let policy = RetryPolicy {
        schedule: vec![Duration::from_millis(20)],
        max_attempts: 4,
        jitter: 0.0,
        ..RetryPolicy::default()
    };
    let settings = WebhookSettings {
        retry: policy,
        claim_lease: Duration::from_millis(400),
        ..WebhookSettings::default()
    };
    let accepted: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let url = t.url.clone();
        let settings = settings.clone();
        let accepted = accepted.clone();
        workers.push(tokio::spawn(async move {
            let db = agent_webhooks::db::connect(&url, 1)
                .await
                .expect("worker connection");
            let mut rng = StdRng::seed_from_u64(w);
            let mut crashes = 0u32;
            loop {
                let claims = delivery::claim_due(&db, &settings, Utc::now(), 25)
                    .await
                    .expect("claim");
                if claims.is_empty() {
                    let open = webhook_deliveries::Entity::find()
                        .filter(webhook_deliveries::Column::NextRetryAt.is_not_null())
                        .count(&db)
                        .await
                        .expect("count");
                    if open == 0 {
                        return crashes;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                for claim in claims {
                    let roll: f64 = rng.random();
                    if roll < 0.05 {
                        crashes += 1; // the worker "dies" with this claim: no report
                        continue;
                    }
                    let result = if roll < 0.30 {
                        delivery::record_outcome(&db, &settings, &claim, &status(503), Utc::now())
                            .await
                    } else {
                        record_status(&db, &claim, 200, Utc::now()).await
                    };
                    match result {
                        Ok(Decision::Delivered) => {
                            *accepted
                                .lock()
                                .unwrap()
                                .entry(claim.delivery.id.clone())
                                .or_default() += 1;
                        }
                        Ok(_) | Err(Error::StaleClaim { .. }) => {}
                        Err(e) => panic!("worker {w}: {e}"),
                    }
                }
            }
        }));
    }
    let crashes: u32 = futures::future::try_join_all(workers)
        .await
        .unwrap()
        .into_iter()
        .sum();
    assert!(crashes > 0, "the test must exercise crashed workers");

    let now = Utc::now();
    let all = webhook_deliveries::Entity::find().all(&t.db).await.unwrap();
    assert_eq!(all.len(), DELIVERIES, "no delivery lost");
    let accepted = accepted.lock().unwrap();
    let twice: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "accepted as delivered twice: {twice:?}");
    let mut delivered = 0;
    for row in all {
        match DeliveryState::of(&row, now) {
            DeliveryState::Delivered => {
                delivered += 1;
                assert_eq!(
                    accepted.get(&row.id),
                    Some(&1),
                    "{} delivered without an accepted report",
                    row.id
                );
            }
            DeliveryState::Failed => assert!(!accepted.contains_key(&row.id)),
            other => panic!("{} left {other}", row.id),
        }
    }
    assert_eq!(delivered, accepted.len());
    assert!(
        delivered > DELIVERIES / 2,
        "most deliveries succeed: {delivered}"
    );
}

/// The payload is stored as the exact bytes of its compact JSON, claimed with the delivery,
/// and refused above the settings' cap (the cap counts bytes, the limit itself is accepted).
async fn payload_is_stored_once_and_capped(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    let payload = json!({"run": "r-1", "text": "héllo", "n": [1, 2]});
    let bytes = serde_json::to_vec(&payload).unwrap();
    let settings = WebhookSettings {
        max_payload_bytes: bytes.len(),
        ..policy(3)
    };
    let enqueue = |event_id: &'static str, payload: serde_json::Value| {
        let (db, settings) = (&t.db, &settings);
        async move {
            delivery::enqueue(
                db,
                settings,
                "agent-1",
                event_id,
                "run.completed",
                &payload,
                t0(),
            )
            .await
        }
    };
    assert!(matches!(
        enqueue("evt-1", payload.clone()).await.unwrap(),
        Enqueued::Created(_)
    ));
    let too_big = json!({"run": "r-1", "text": "héllo", "n": [1, 2, 3]});
    match enqueue("evt-2", too_big).await {
        Err(Error::Payload(delivery::PayloadError::TooLarge { size, max })) => {
            assert_eq!((size, max), (bytes.len() + 2, bytes.len()));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // A second enqueue of the same event keeps the first payload.
    enqueue("evt-1", json!({})).await.unwrap();
    let claims = delivery::claim_due(&t.db, &settings, t0(), 10)
        .await
        .unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].payload.as_deref(), Some(&bytes[..]));
}

/// An enqueue that creates a delivery is one statement on PostgreSQL and SQLite (two on
/// MariaDB, which reads the agent first), one that is skipped one statement on PostgreSQL and
/// MariaDB (two on SQLite), and every other ending — skipped for each reason, a
/// repeat, a filter that is not a list, no such agent — is the same as the agent-first path
/// decides; inside a caller's transaction too.
async fn enqueue_is_one_statement_and_ends_as_the_rules_say(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let mut counted = TestDb::reconnect(&t).await;
    let statements = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&statements);
    counted.db.set_metric_callback(move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    seed_agent(&t, "all", &[]).await;
    seed_agent(&t, "runs", &["run.*"]).await;
    seed_agent(&t, "exact", &["run.completed", "job.failed"]).await;
    seed_agent(&t, "jobs", &["job.*"]).await;
    seed_agent(&t, "no-filter", &[]).await;
    seed_agent(&t, "disabled", &[]).await;
    seed_agent(&t, "no-url", &[]).await;
    seed_agent(&t, "deleted", &[]).await;
    seed_agent(&t, "corrupt", &[]).await;
    let set = |id: &'static str, column: agents::Column, value: sea_orm::Value| {
        let db = t.db.clone();
        async move {
            agents::Entity::update_many()
                .col_expr(column, Expr::value(value))
                .filter(agents::Column::Id.eq(id))
                .exec(&db)
                .await
                .unwrap();
        }
    };
    set(
        "no-filter",
        agents::Column::WebhookEvents,
        sea_orm::Value::Json(None),
    )
    .await;
    set("disabled", agents::Column::WebhookEnabled, false.into()).await;
    set(
        "no-url",
        agents::Column::WebhookUrl,
        sea_orm::Value::String(None),
    )
    .await;
    set("deleted", agents::Column::IsDeleted, true.into()).await;
    set(
        "corrupt",
        agents::Column::WebhookEvents,
        sea_orm::Value::Json(Some(Box::new(json!({"run.*": true})))),
    )
    .await;

    let one = match backend {
        Backend::MySql => 2,
        _ => 1,
    };
    // A skipped event: the statement that creates nothing also returns the agent's row on
    // PostgreSQL; SQLite reads it next; MariaDB reads it and stops.
    let skipped_in = match backend {
        Backend::Sqlite => 2,
        _ => 1,
    };
    let cases: &[(&str, &str, Option<SkipReason>)] = &[
        ("all", "run.completed", None),
        ("runs", "run.started", None),
        ("runs", "job.failed", Some(SkipReason::NotWanted)),
        ("exact", "job.failed", None),
        ("exact", "run.failed", Some(SkipReason::NotWanted)),
        ("jobs", "jobx.failed", Some(SkipReason::NotWanted)),
        ("jobs", "webhook.test", None),
        ("no-filter", "anything.at.all", None),
        ("disabled", "run.completed", Some(SkipReason::Disabled)),
        ("no-url", "run.completed", Some(SkipReason::NoUrl)),
        ("deleted", "run.completed", Some(SkipReason::AgentDeleted)),
    ];
    for (n, (agent, event_type, skipped)) in cases.iter().enumerate() {
        for in_transaction in [false, true] {
            let event_id = format!("evt-{n}-{in_transaction}");
            let settings = WebhookSettings::default();
            let payload = json!({"n": n});
            let counter = || statements.load(std::sync::atomic::Ordering::SeqCst);
            // The enqueue's statements only, without the caller's BEGIN and COMMIT.
            let (enqueued, sent) = if in_transaction {
                let txn = counted.db.begin().await.unwrap();
                let before = counter();
                let enqueued = delivery::enqueue(
                    &txn,
                    &settings,
                    agent,
                    &event_id,
                    event_type,
                    &payload,
                    t0(),
                )
                .await
                .unwrap();
                let sent = counter() - before;
                txn.commit().await.unwrap();
                (enqueued, sent)
            } else {
                let before = counter();
                let enqueued = delivery::enqueue(
                    &counted.db,
                    &settings,
                    agent,
                    &event_id,
                    event_type,
                    &payload,
                    t0(),
                )
                .await
                .unwrap();
                (enqueued, counter() - before)
            };
            let context = format!("{agent} {event_type} in transaction: {in_transaction}");
            match (skipped, &enqueued) {
                (None, Enqueued::Created(d)) => {
                    assert_eq!(sent, one, "{context}");
                    assert_eq!(
                        (d.agent_id.as_str(), d.event_type.as_str()),
                        (*agent, *event_type)
                    );
                    assert_eq!(d.organization_id, "org-1");
                    assert_eq!(d.webhook_url, format!("https://hooks.example.com/{agent}"));
                    let stored = delivery::get(&t.db, &d.id, t0()).await.unwrap();
                    assert_eq!(&stored, d, "{context}");
                }
                (Some(reason), Enqueued::Skipped(got)) => {
                    assert_eq!(got, reason, "{context}");
                    assert_eq!(sent, skipped_in, "{context}");
                }
                _ => panic!("{context}: {enqueued:?}, expected {skipped:?}"),
            }
        }
    }
    // A repeat returns the stored delivery.
    let first = delivery::enqueue(
        &counted.db,
        &WebhookSettings::default(),
        "all",
        "evt-0-false",
        "run.completed",
        &json!({"n": "other"}),
        t0(),
    )
    .await
    .unwrap();
    let Enqueued::Existing(existing) = first else {
        panic!("{first:?}")
    };
    assert_eq!(existing.event_id, "evt-0-false");
    // A stored filter that is not a list is reported, as the agent-first path reports it.
    let corrupt = delivery::enqueue(
        &counted.db,
        &WebhookSettings::default(),
        "corrupt",
        "evt-c",
        "run.completed",
        &json!({}),
        t0(),
    )
    .await;
    assert!(
        matches!(corrupt, Err(Error::CorruptEvents { .. })),
        "{corrupt:?}"
    );
    let missing = delivery::enqueue(
        &counted.db,
        &WebhookSettings::default(),
        "nobody",
        "evt-m",
        "run.completed",
        &json!({}),
        t0(),
    )
    .await;
    assert!(
        matches!(missing, Err(Error::AgentNotFound(_))),
        "{missing:?}"
    );
}

backend_tests!(
    payload_is_stored_once_and_capped,
    enqueue_is_one_statement_and_ends_as_the_rules_say,
    every_transition_with_an_injected_clock,
    racing_enqueues_make_exactly_one_row,
    pages_yield_every_row_once_in_order_while_rows_arrive,
    prune_deletes_only_finished_old_deliveries,
    eight_workers_drain_two_thousand_deliveries,
);

/// A library call inside the caller's transaction that the database picks as a deadlock
/// victim reports it ([`Error::is_transient`]) instead of running again: on MySQL the victim's
/// whole transaction, the caller's earlier write included, is gone, and a repeat would store
/// the outcome outside it while the caller goes on as if nothing happened; on PostgreSQL a
/// repeat only meets the aborted transaction and would hide the deadlock behind 25P02. With
/// `savepoint` (PostgreSQL) the caller handed a savepoint of its transaction: rolling that back
/// must leave the outer transaction and its earlier write whole. With `batched` the outcome
/// goes through `record_outcomes`, whose MySQL lock-then-update ran in a savepoint of its own
/// before (the CI failure "SAVEPOINT _sqlx_savepoint_1 does not exist").
///
/// PostgreSQL: the other transaction sets its own `deadlock_timeout`, which takes a superuser
/// (the tests' `postgres`).
///
/// The cycle: `other` holds the delivery row and then wants the caller's agent row; the caller
/// holds that agent row and records an outcome, which wants the delivery row. `other` wrote
/// more rows, so InnoDB rolls back the caller (it picks the smaller transaction); PostgreSQL
/// aborts the caller, whose `deadlock_timeout` (1 s) runs out long before `other`'s (10 s).
async fn deadlock_victim_inside_a_callers_transaction_is_reported(
    backend: Backend,
    savepoint: bool,
    batched: bool,
) {
    let t = TestDb::migrated(backend).await;
    for agent in ["agent-1", "agent-2", "agent-3"] {
        seed_agent(&t, agent, &[]).await;
    }
    let now = t0();
    let id = created(&t, "agent-1", "evt-1", "run.completed", now).await;
    let claim = claim_one(&t, &policy(5), now).await;
    let rename = |agent: &str, name: &str| {
        agents::Entity::update_many()
            .col_expr(agents::Column::Name, Expr::value(name))
            .filter(agents::Column::Id.eq(agent))
    };
    let name = async |agent: &str| {
        let row = agents::Entity::find_by_id(agent).one(&t.db).await.unwrap();
        row.unwrap().name
    };

    let other = t.db.begin().await.unwrap();
    if backend == Backend::Postgres {
        other
            .execute_unprepared("SET LOCAL deadlock_timeout = '10s'")
            .await
            .unwrap();
    }
    for i in 0..20 {
        rename("agent-1", &format!("ballast {i}"))
            .exec(&other)
            .await
            .unwrap();
    }
    let mut lock = Query::select();
    lock.column(webhook_deliveries::Column::Id)
        .from(webhook_deliveries::Entity)
        .and_where(webhook_deliveries::Column::Id.eq(id.as_str()))
        .lock(LockType::Update);
    other.query_all(&lock).await.unwrap();

    let outer = t.db.begin().await.unwrap();
    rename("agent-3", "outer").exec(&outer).await.unwrap();
    let nested = match savepoint {
        true => Some(outer.begin().await.unwrap()),
        false => None,
    };
    rename("agent-2", "caller")
        .exec(nested.as_ref().unwrap_or(&outer))
        .await
        .unwrap();
    let again = claim.clone();
    let recording = tokio::spawn(async move {
        let ours = nested.as_ref().unwrap_or(&outer);
        let result = if batched {
            let settings = WebhookSettings::default();
            delivery::record_outcomes(ours, &settings, [(&claim, &status(200), now)])
                .await
                .and_then(|mut one| one.remove(0))
        } else {
            record_status(ours, &claim, 200, now).await
        };
        (outer, nested, result)
    });
    // Either order of the two waits closes the cycle with the caller as the victim: InnoDB
    // picks by size whenever the cycle forms, and PostgreSQL's check of `other` comes 9 s after
    // the caller's. The pause only makes the caller wait first, as a worker would.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let closing = tokio::spawn(async move {
        rename("agent-2", "other").exec(&other).await.unwrap();
        other.commit().await.unwrap();
    });

    let (outer, nested, result) = tokio::time::timeout(Duration::from_secs(20), recording)
        .await
        .expect("the outcome is reported, not repeated outside the caller's transaction")
        .unwrap();
    match result {
        Err(err) => assert!(err.is_transient(), "{err}"),
        Ok(decision) => panic!("recorded {decision:?} after the caller's transaction was lost"),
    }
    let kept = match nested {
        Some(nested) => {
            // Rolling back to the savepoint keeps the outer transaction, which goes on.
            nested.rollback().await.unwrap();
            outer.commit().await.unwrap();
            "outer"
        }
        None => {
            outer.rollback().await.unwrap();
            "agent-3"
        }
    };
    closing.await.unwrap();
    assert_eq!(name("agent-3").await, kept);
    assert_eq!(name("agent-2").await, "other");
    assert_eq!(state(&t, &id, now).await, DeliveryState::Leased);
    // The claim still holds: the outcome is stored when the caller runs again.
    assert_eq!(
        record_status(&t.db, &again, 200, now).await.unwrap(),
        Decision::Delivered
    );
}

/// SQLite has no deadlocks to pick a victim of: it serializes writers. MySQL rolls back the
/// whole transaction of a victim, savepoints and all, so only PostgreSQL has the savepoint case.
mod deadlock_victim_inside_a_callers_transaction_is_reported {
    use integration_tests::Backend;

    use super::deadlock_victim_inside_a_callers_transaction_is_reported as run;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        run(Backend::Postgres, false, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_savepoint() {
        run(Backend::Postgres, true, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_batched() {
        run(Backend::Postgres, false, true).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        run(Backend::MySql, false, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_batched() {
        run(Backend::MySql, false, true).await
    }
}
