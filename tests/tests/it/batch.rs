//! The lean write paths on SQLite, PostgreSQL and MariaDB: `enqueue_for_agent` (the outbox),
//! `enqueue_many` (idempotent per `(agent, event_id)`, skip rules and checks per item) and
//! `record_outcomes` (guarded per row, stale claims reported, endpoint health kept per agent).

use std::time::Duration;

use agent_webhooks::Error;
use agent_webhooks::delivery::retry::{AttemptOutcome, Decision, RetryPolicy};
use agent_webhooks::delivery::{self, Claim, EnqueueItem, Enqueued, SkipReason};
use agent_webhooks::settings::WebhookSettings;
use agent_webhooks::webhook;
use chrono::{DateTime, TimeDelta, Utc};
use entity::agents;
use integration_tests::{Backend, TestDb, backend_tests, seed_agent};
use sea_orm::{EntityTrait, TransactionTrait};
use serde_json::json;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_764_000_000, 0).unwrap()
}

fn settings() -> WebhookSettings {
    WebhookSettings {
        retry: RetryPolicy {
            schedule: vec![Duration::from_secs(3600)],
            max_attempts: 3,
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        ..WebhookSettings::default()
    }
}

fn item<'a>(
    agent_id: &'a str,
    event_id: &'a str,
    payload: &'a serde_json::Value,
) -> EnqueueItem<'a> {
    EnqueueItem {
        agent_id,
        event_id,
        event_type: "run.completed",
        payload: payload.into(),
        lane: None,
    }
}

fn id_of(enqueued: &Enqueued) -> &str {
    match enqueued {
        Enqueued::Created(d) | Enqueued::Existing(d) => &d.id,
        Enqueued::Skipped(reason) => panic!("skipped: {reason:?}"),
    }
}

async fn deliveries_count(t: &TestDb) -> i64 {
    t.count("SELECT COUNT(*) FROM webhook_deliveries").await
}

async fn enqueue_many_is_idempotent_and_applies_the_rules_per_item(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let s = settings();
    seed_agent(&t, "a1", &[]).await;
    seed_agent(&t, "a2", &[]).await;
    seed_agent(&t, "picky", &["job.failed"]).await;
    t.exec("UPDATE agents SET webhook_enabled = false WHERE id = 'a2'")
        .await;
    let first = json!({"n": 1});
    let second = json!({"n": 2});
    // evt-0 exists before the batch.
    let before = delivery::enqueue(&t.db, &s, "a1", "evt-0", "run.completed", &first, t0())
        .await
        .unwrap();
    let items = [
        item("a1", "evt-0", &second),
        item("a1", "evt-1", &first),
        item("a1", "evt-1", &second),
        item("a2", "evt-1", &first),
        item("picky", "evt-1", &first),
        item("a1", "evt-2", &first),
    ];
    let done = delivery::enqueue_many(&t.db, &s, &items, t0())
        .await
        .unwrap();
    assert_eq!(done.len(), items.len());
    assert!(
        matches!(&done[0], Enqueued::Existing(d) if d.id == id_of(&before)),
        "{:?}",
        done[0]
    );
    assert!(
        matches!(&done[1], Enqueued::Created(d) if d.event_id == "evt-1" && d.agent_id == "a1")
    );
    assert!(
        matches!(&done[2], Enqueued::Existing(d) if d.id == id_of(&done[1])),
        "{:?}",
        done[2]
    );
    assert_eq!(done[3], Enqueued::Skipped(SkipReason::Disabled));
    assert_eq!(done[4], Enqueued::Skipped(SkipReason::NotWanted));
    assert!(matches!(&done[5], Enqueued::Created(_)));
    assert_eq!(deliveries_count(&t).await, 3);
    // The Created view is what is stored.
    let Enqueued::Created(created) = &done[5] else {
        unreachable!()
    };
    assert_eq!(
        &delivery::get(&t.db, &created.id, t0()).await.unwrap(),
        created
    );
    // The first payload stays.
    let claims = delivery::claim_due(&t.db, &s, t0(), 10).await.unwrap();
    let evt1 = claims
        .iter()
        .find(|c| c.delivery.id == id_of(&done[1]))
        .unwrap();
    assert_eq!(evt1.payload.as_deref(), Some(br#"{"n":1}"#.as_slice()));

    // Again: nothing new, the same deliveries.
    let again = delivery::enqueue_many(&t.db, &s, &items, t0())
        .await
        .unwrap();
    for (i, (a, b)) in again.iter().zip(&done).enumerate() {
        match (a, b) {
            (Enqueued::Skipped(x), Enqueued::Skipped(y)) => assert_eq!(x, y),
            (Enqueued::Existing(_), _) => assert_eq!(id_of(a), id_of(b), "item {i}"),
            other => panic!("item {i}: {other:?}"),
        }
    }
    assert_eq!(deliveries_count(&t).await, 3);
}

async fn enqueue_many_refuses_a_bad_item_and_writes_nothing(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let s = WebhookSettings {
        max_payload_bytes: 32,
        ..settings()
    };
    seed_agent(&t, "a1", &[]).await;
    let small = json!({"n": 1});
    let large = json!({"text": "x".repeat(64)});
    let too_large = [item("a1", "evt-1", &small), item("a1", "evt-2", &large)];
    let err = delivery::enqueue_many(&t.db, &s, &too_large, t0())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Payload(_)), "{err}");
    let unknown = [item("a1", "evt-1", &small), item("nobody", "evt-1", &small)];
    let err = delivery::enqueue_many(&t.db, &s, &unknown, t0())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::AgentNotFound(ref a) if a == "nobody"),
        "{err}"
    );
    let bad_id = [item("a1", "evt.1", &small)];
    let err = delivery::enqueue_many(&t.db, &s, &bad_id, t0())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidEvent {
                field: "event_id",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(deliveries_count(&t).await, 0);
    assert_eq!(
        delivery::enqueue_many(&t.db, &s, &[], t0()).await.unwrap(),
        vec![]
    );
}

async fn enqueue_many_fans_out_past_one_statement(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let s = settings();
    let agents: Vec<String> = (0..5).map(|a| format!("a{a}")).collect();
    for a in &agents {
        seed_agent(&t, a, &[]).await;
    }
    let events: Vec<String> = (0..250).map(|e| format!("evt-{e}")).collect();
    let payload = json!({"n": 1});
    let items: Vec<EnqueueItem<'_>> = agents
        .iter()
        .flat_map(|a| events.iter().map(move |e| (a, e)))
        .map(|(a, e)| item(a, e, &payload))
        .collect();
    let done = delivery::enqueue_many(&t.db, &s, &items, t0())
        .await
        .unwrap();
    assert!(done.iter().all(|d| matches!(d, Enqueued::Created(_))));
    assert_eq!(deliveries_count(&t).await, 1250);
}

async fn enqueue_for_agent_uses_the_callers_row_in_its_transaction(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let s = settings();
    seed_agent(&t, "a1", &["run.completed"]).await;
    let payload = json!({"n": 1});
    let txn = t.db.begin().await.unwrap();
    let agent = agents::Entity::find_by_id("a1")
        .one(&txn)
        .await
        .unwrap()
        .unwrap();
    let created =
        delivery::enqueue_for_agent(&txn, &s, &agent, "evt-1", "run.completed", &payload, t0())
            .await
            .unwrap();
    let Enqueued::Created(delivery) = &created else {
        panic!("{created:?}")
    };
    let again =
        delivery::enqueue_for_agent(&txn, &s, &agent, "evt-1", "run.completed", &payload, t0())
            .await
            .unwrap();
    assert_eq!(again, Enqueued::Existing(delivery.clone()));
    assert_eq!(
        delivery::enqueue_for_agent(&txn, &s, &agent, "evt-2", "run.failed", &payload, t0())
            .await
            .unwrap(),
        Enqueued::Skipped(SkipReason::NotWanted)
    );
    txn.commit().await.unwrap();
    assert_eq!(
        &delivery::get(&t.db, &delivery.id, t0()).await.unwrap(),
        delivery
    );
    // The same through `enqueue`.
    let through_enqueue =
        delivery::enqueue(&t.db, &s, "a1", "evt-1", "run.completed", &payload, t0())
            .await
            .unwrap();
    assert_eq!(through_enqueue, Enqueued::Existing(delivery.clone()));
}

fn status(code: u16) -> AttemptOutcome {
    AttemptOutcome::Status {
        code,
        retry_after: None,
    }
}

async fn enqueue_and_claim(
    t: &TestDb,
    s: &WebhookSettings,
    agent: &str,
    n: usize,
    now: DateTime<Utc>,
) -> Vec<Claim> {
    let payload = json!({"n": 1});
    let events: Vec<String> = (0..n)
        .map(|e| format!("evt-{}-{e}", now.timestamp()))
        .collect();
    let items: Vec<EnqueueItem<'_>> = events.iter().map(|e| item(agent, e, &payload)).collect();
    delivery::enqueue_many(&t.db, s, &items, now).await.unwrap();
    let claims = delivery::claim_due(&t.db, s, now, 100).await.unwrap();
    assert_eq!(claims.len(), n);
    claims
}

/// `record_outcomes` with every outcome had at `at`.
async fn record_at(
    t: &TestDb,
    s: &WebhookSettings,
    outcomes: &[(&Claim, &AttemptOutcome)],
    at: DateTime<Utc>,
) -> Vec<Result<Decision, Error>> {
    let timed = outcomes
        .iter()
        .map(|(claim, outcome)| (*claim, *outcome, at));
    delivery::record_outcomes(&t.db, s, timed).await.unwrap()
}

async fn record_outcomes_is_guarded_per_row(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let s = settings();
    seed_agent(&t, "a1", &[]).await;
    let claims = enqueue_and_claim(&t, &s, "a1", 3, t0()).await;
    let (ok, fail) = (status(200), status(500));
    let outcomes = [
        (&claims[0], &ok),
        (&claims[1], &fail),
        (&claims[0], &fail),
        (&claims[2], &ok),
    ];
    let results = record_at(&t, &s, &outcomes, t0()).await;
    assert!(
        matches!(results[0], Ok(Decision::Delivered)),
        "{:?}",
        results[0]
    );
    assert_eq!(
        results[1].as_ref().unwrap(),
        &Decision::RetryAt(t0() + TimeDelta::hours(1))
    );
    assert!(
        matches!(&results[2], Err(Error::StaleClaim { id, .. }) if id == &claims[0].delivery.id)
    );
    assert!(matches!(results[3], Ok(Decision::Delivered)));
    let state = |i: usize| {
        let id = claims[i].delivery.id.clone();
        let t = &t;
        async move { delivery::get(&t.db, &id, t0()).await.unwrap() }
    };
    assert_eq!(state(0).await.state, delivery::DeliveryState::Delivered);
    assert_eq!(state(0).await.status_code, Some(200));
    let retried = state(1).await;
    assert_eq!(retried.state, delivery::DeliveryState::Pending);
    assert_eq!(retried.status_code, Some(500));
    assert_eq!(retried.error_message.as_deref(), Some("HTTP 500"));
    assert_eq!(retried.next_retry_at, Some(t0() + TimeDelta::hours(1)));
    // Reported already: every row is stale now, and nothing changes.
    let again = record_at(&t, &s, &[(&claims[1], &ok)], t0()).await;
    assert!(matches!(again[0], Err(Error::StaleClaim { .. })));
    assert_eq!(state(1).await, retried);
    // Its next attempt is current again.
    let later = t0() + TimeDelta::hours(2);
    let next = delivery::claim_due(&t.db, &s, later, 10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].attempt, 2);
    // The first attempt's late report does not touch the second attempt's lease.
    let late = record_at(&t, &s, &[(&claims[1], &ok)], later).await;
    assert!(matches!(late[0], Err(Error::StaleClaim { attempt: 1, .. })));
    let results = record_at(&t, &s, &[(&next[0], &ok), (&claims[1], &ok)], later).await;
    assert!(matches!(results[0], Ok(Decision::Delivered)));
    assert!(matches!(
        results[1],
        Err(Error::StaleClaim { attempt: 1, .. })
    ));
}

async fn record_outcomes_keeps_endpoint_health_per_agent(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    // Retries far in the future: each step claims only what it enqueued.
    let s = WebhookSettings {
        retry: RetryPolicy {
            schedule: vec![Duration::from_secs(20 * 24 * 3600)],
            max_attempts: 2,
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        ..WebhookSettings::default()
    };
    seed_agent(&t, "a1", &[]).await;
    seed_agent(&t, "a2", &[]).await;
    let (ok, fail) = (status(200), status(500));
    let view = |agent: &'static str| {
        let t = &t;
        async move { webhook::get(&t.db, agent).await.unwrap() }
    };
    // Failures only: the run starts at the first.
    let c1 = enqueue_and_claim(&t, &s, "a1", 2, t0()).await;
    let results = record_at(&t, &s, &[(&c1[0], &fail), (&c1[1], &fail)], t0()).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(view("a1").await.failing_since, Some(t0()));
    assert_eq!(view("a2").await.failing_since, None);
    let c2 = enqueue_and_claim(&t, &s, "a2", 1, t0()).await;
    record_at(&t, &s, &[(&c2[0], &fail)], t0()).await;
    assert_eq!(view("a2").await.failing_since, Some(t0()));

    // A failure after a success within the batch restarts the run at now.
    let t1 = t0() + TimeDelta::days(1);
    let c3 = enqueue_and_claim(&t, &s, "a2", 2, t1).await;
    record_at(&t, &s, &[(&c3[0], &ok), (&c3[1], &fail)], t1).await;
    assert_eq!(view("a2").await.failing_since, Some(t1));
    assert_eq!(
        view("a1").await.failing_since,
        Some(t0()),
        "a1 had no outcome"
    );

    // a1 fails on past the disable period: disabled, once, with a reason.
    let t6 = t0() + TimeDelta::days(6);
    let c4 = enqueue_and_claim(&t, &s, "a1", 1, t6).await;
    record_at(&t, &s, &[(&c4[0], &fail)], t6).await;
    let a1 = view("a1").await;
    assert!(!a1.webhook_enabled);
    assert_eq!(a1.disabled_at, Some(t6));
    assert!(a1.disabled_reason.is_some());

    // A success last ends a2's run.
    let t7 = t0() + TimeDelta::days(7);
    let c5 = enqueue_and_claim(&t, &s, "a2", 2, t7).await;
    record_at(&t, &s, &[(&c5[0], &fail), (&c5[1], &ok)], t7).await;
    let a2 = view("a2").await;
    assert_eq!(a2.failing_since, None);
    assert!(a2.webhook_enabled);
}

/// An attempt as the worker logs it: answered `code` at `at`.
fn attempt_record(claim: &Claim, code: u16, at: DateTime<Utc>) -> delivery::AttemptRecord {
    delivery::AttemptRecord {
        attempt: claim.attempt,
        started_at: at,
        finished_at: at,
        status_code: Some(code.into()),
        error_class: None,
        message: None,
        response_body_prefix: Some("ok".to_owned()),
        remote_addr: Some("127.0.0.1:9".to_owned()),
    }
}

/// On PostgreSQL a batch of deliveries is recorded in one statement: outcomes guarded per
/// claim, the run of failures ended, each attempt logged while its delivery exists. Elsewhere,
/// or with an outcome that did not deliver, it declines and writes nothing.
async fn record_delivered_is_one_statement_on_postgres(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let s = settings();
    seed_agent(&t, "a1", &[]).await;
    seed_agent(&t, "a2", &[]).await;
    let (ok, fail) = (status(200), status(500));
    let failed = enqueue_and_claim(&t, &s, "a1", 1, t0()).await;
    record_at(&t, &s, &[(&failed[0], &fail)], t0()).await;
    let failing = |agent: &'static str| {
        let t = &t;
        async move { webhook::get(&t.db, agent).await.unwrap().failing_since }
    };
    assert_eq!(failing("a1").await, Some(t0()));

    let t1 = t0() + TimeDelta::minutes(1);
    let mut claims = enqueue_and_claim(&t, &s, "a1", 2, t1).await;
    claims.extend(enqueue_and_claim(&t, &s, "a2", 2, t1 + TimeDelta::seconds(1)).await);
    // claims[2] was reported already (stale, still there); claims[3] was deleted meanwhile.
    record_at(&t, &s, &[(&claims[2], &ok)], t1).await;
    t.exec(&format!(
        "DELETE FROM webhook_deliveries WHERE id = '{}'",
        claims[3].delivery.id
    ))
    .await;
    let logged = "SELECT COUNT(*) FROM webhook_delivery_attempts";
    let before = t.count(logged).await;
    let records: Vec<_> = claims.iter().map(|c| attempt_record(c, 200, t1)).collect();
    // Every attempt delivered, or the second failed.
    let with = |second_failed: bool| {
        let outcome = |i| if i == 1 && second_failed { &fail } else { &ok };
        claims
            .iter()
            .zip(&records)
            .enumerate()
            .map(|(i, (claim, record))| (claim, outcome(i), record))
            .collect::<Vec<_>>()
    };

    let declined = delivery::record_delivered(&t.db, &s, with(true))
        .await
        .unwrap();
    assert!(declined.is_none(), "a failure goes the long way");
    let results = delivery::record_delivered(&t.db, &s, with(false))
        .await
        .unwrap();
    if backend != Backend::Postgres {
        assert!(results.is_none(), "one statement is PostgreSQL's");
        assert_eq!(t.count(logged).await, before);
        assert_eq!(failing("a1").await, Some(t0()));
        return;
    }
    let results = results.unwrap();
    assert!(matches!(results[0], Ok(Decision::Delivered)), "{results:?}");
    assert!(matches!(results[1], Ok(Decision::Delivered)), "{results:?}");
    assert!(matches!(results[2], Err(Error::StaleClaim { .. })));
    assert!(matches!(results[3], Err(Error::StaleClaim { .. })));
    let stored = delivery::get(&t.db, &claims[0].delivery.id, t1)
        .await
        .unwrap();
    assert_eq!(stored.state, delivery::DeliveryState::Delivered);
    assert_eq!(stored.delivered_at, Some(t1));
    assert_eq!(failing("a1").await, None, "a success ends the run");
    // The two applied and the stale one whose delivery is there; not the deleted one.
    assert_eq!(t.count(logged).await, before + 3);
    // The same report again: every claim is stale now, and no row is logged twice.
    let again = delivery::record_delivered(&t.db, &s, with(false))
        .await
        .unwrap()
        .unwrap();
    assert!(
        again
            .iter()
            .all(|r| matches!(r, Err(Error::StaleClaim { .. })))
    );
    assert_eq!(t.count(logged).await, before + 3);
}

backend_tests!(
    record_delivered_is_one_statement_on_postgres,
    enqueue_many_is_idempotent_and_applies_the_rules_per_item,
    enqueue_many_refuses_a_bad_item_and_writes_nothing,
    enqueue_many_fans_out_past_one_statement,
    enqueue_for_agent_uses_the_callers_row_in_its_transaction,
    record_outcomes_is_guarded_per_row,
    record_outcomes_keeps_endpoint_health_per_agent,
);
