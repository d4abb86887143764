//! Ordered lanes on SQLite, PostgreSQL and MariaDB: positions without gaps at enqueue, the
//! claim that waits for the delivery before in the lane, a give-up that releases the lane, and
//! order under receiver failures with four worker processes of which two are SIGKILLed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_webhooks::delivery::retry::{AttemptOutcome, Decision};
use agent_webhooks::delivery::{self, EnqueueItem, Enqueued, Payload, lanes};
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::settings::WebhookSettings;
use agent_webhooks::webhook::url_policy::UrlPolicy;
use agent_webhooks::webhook::{self, WebhookConfig, WebhookConfigPatch};
use axum::http::{HeaderMap, StatusCode};
use chrono::{TimeDelta, Utc};
use entity::webhook_deliveries as wd;
use integration_tests::{Backend, TestDb, backend_tests, seed_agent};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use secrecy::SecretString;
use serde_json::json;

fn ordered() -> WebhookConfigPatch {
    WebhookConfigPatch {
        webhook_ordered: Some(true),
        ..WebhookConfigPatch::default()
    }
}

/// `(lane, lane_seq)` of an enqueue result.
fn position(enqueued: &Enqueued) -> (Option<String>, Option<i64>) {
    match enqueued {
        Enqueued::Created(d) | Enqueued::Existing(d) => (d.lane.clone(), d.lane_seq),
        Enqueued::Skipped(reason) => panic!("skipped: {reason:?}"),
    }
}

fn pos(lane: &str, seq: i64) -> (Option<String>, Option<i64>) {
    (Some(lane.to_owned()), Some(seq))
}

async fn positions_follow_enqueue_without_gaps(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let settings = WebhookSettings::default();
    let now = Utc::now();
    seed_agent(&t, "agent-1", &[]).await;
    seed_agent(&t, "agent-2", &[]).await;
    webhook::update(&t.db, &settings, "agent-1", &ordered())
        .await
        .unwrap();
    let payload = json!({"n": 1});
    let one = |event: &'static str| {
        let (db, settings, payload) = (&t.db, &settings, &payload);
        async move {
            delivery::enqueue(db, settings, "agent-1", event, "run.step", payload, now)
                .await
                .unwrap()
        }
    };
    assert_eq!(position(&one("e1").await), pos(lanes::DEFAULT_LANE, 1));
    assert_eq!(position(&one("e2").await), pos(lanes::DEFAULT_LANE, 2));
    // A repeat keeps its position and takes none.
    let repeat = one("e1").await;
    assert!(matches!(repeat, Enqueued::Existing(_)));
    assert_eq!(position(&repeat), pos(lanes::DEFAULT_LANE, 1));
    let in_run = delivery::enqueue_in_lane(
        &t.db, &settings, "agent-1", "run-1", "e3", "run.step", &payload, now,
    )
    .await
    .unwrap();
    assert_eq!(position(&in_run), pos("run-1", 1));

    let body = br#"{"n":2}"#;
    let item = |event_id, lane| EnqueueItem {
        agent_id: "agent-1",
        event_id,
        event_type: "run.step",
        payload: Payload::json(&body[..]),
        lane,
    };
    let many = delivery::enqueue_many(
        &t.db,
        &settings,
        &[
            item("e4", Some("run-1")),
            item("e5", None),
            item("e2", None),
            item("e6", Some("run-2")),
            item("e7", Some("run-1")),
        ],
        now,
    )
    .await
    .unwrap();
    let got: Vec<_> = many.iter().map(position).collect();
    assert_eq!(
        got,
        [
            pos("run-1", 2),
            pos(lanes::DEFAULT_LANE, 3),
            pos(lanes::DEFAULT_LANE, 2),
            pos("run-2", 1),
            pos("run-1", 3),
        ]
    );
    // Read back: what the results say is what is stored.
    let stored = wd::Entity::find()
        .filter(wd::Column::EventId.eq("e7"))
        .one(&t.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.lane, stored.lane_seq), pos("run-1", 3));

    // An unordered agent ignores a lane key.
    let unordered = delivery::enqueue_in_lane(
        &t.db, &settings, "agent-2", "run-1", "e1", "run.step", &payload, now,
    )
    .await
    .unwrap();
    assert_eq!(position(&unordered), (None, None));
    // A lane key that cannot be a header value is refused before anything is written.
    let bad = delivery::enqueue_in_lane(
        &t.db, &settings, "agent-1", "run\n1", "e9", "run.step", &payload, now,
    )
    .await;
    assert!(
        bad.as_ref()
            .is_err_and(|e| e.to_string().contains("webhook-lane")),
        "{bad:?}"
    );
}

async fn the_claim_waits_for_the_delivery_before_in_its_lane(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let settings = WebhookSettings::default();
    let now = Utc::now();
    seed_agent(&t, "agent-1", &[]).await;
    webhook::update(&t.db, &settings, "agent-1", &ordered())
        .await
        .unwrap();
    let payload = json!({});
    for (lane, event) in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1")] {
        delivery::enqueue_in_lane(
            &t.db, &settings, "agent-1", lane, event, "run.step", &payload, now,
        )
        .await
        .unwrap();
    }
    let claimed = |at| {
        let (db, settings) = (&t.db, &settings);
        async move {
            let mut claims = delivery::claim_due(db, settings, at, 10).await.unwrap();
            claims.sort_by(|a, b| a.delivery.event_id.cmp(&b.delivery.event_id));
            claims
        }
    };
    let first = claimed(now).await;
    let events: Vec<&str> = first.iter().map(|c| c.delivery.event_id.as_str()).collect();
    assert_eq!(events, ["a1", "b1"], "one head per lane");
    // While a1 is leased, and after its retryable failure, a2 waits.
    let later = now + TimeDelta::seconds(1);
    assert!(claimed(later).await.is_empty());
    let ok = AttemptOutcome::Status {
        code: 200,
        retry_after: None,
    };
    delivery::record_outcome(&t.db, &settings, &first[1], &ok, later)
        .await
        .unwrap();
    let failed = AttemptOutcome::Status {
        code: 503,
        retry_after: None,
    };
    let decision = delivery::record_outcome(&t.db, &settings, &first[0], &failed, later)
        .await
        .unwrap();
    assert!(matches!(decision, Decision::RetryAt(_)), "{decision:?}");
    assert!(claimed(later).await.is_empty(), "a1 waits for its retry");
    // The retry is due: a1 again, still not a2.
    let retry = claimed(later + TimeDelta::minutes(1)).await;
    let events: Vec<&str> = retry.iter().map(|c| c.delivery.event_id.as_str()).collect();
    assert_eq!(events, ["a1"]);
    // A final refusal gives a1 up and releases the lane: a2 is next.
    let gone = AttemptOutcome::Status {
        code: 410,
        retry_after: None,
    };
    let at = later + TimeDelta::minutes(1);
    let decision = delivery::record_outcome(&t.db, &settings, &retry[0], &gone, at)
        .await
        .unwrap();
    assert!(matches!(decision, Decision::GiveUp(_)), "{decision:?}");
    let next = claimed(at).await;
    let events: Vec<_> = next
        .iter()
        .map(|c| (c.delivery.event_id.as_str(), c.delivery.lane_seq))
        .collect();
    assert_eq!(events, [("a2", Some(2))]);
    // Delivered: a3 follows.
    delivery::record_outcome(&t.db, &settings, &next[0], &ok, at)
        .await
        .unwrap();
    let last = claimed(at).await;
    let events: Vec<&str> = last.iter().map(|c| c.delivery.event_id.as_str()).collect();
    assert_eq!(events, ["a3"]);
}

/// What the receiver of the process test saw: per lane, the positions answered 2xx, and every
/// request that came before the one ahead of it in its lane was accepted.
#[derive(Default)]
struct Lanes {
    accepted: HashMap<String, Vec<i64>>,
    attempts: HashMap<(String, i64), u32>,
    out_of_order: Vec<String>,
    requests: usize,
}

async fn order_holds_across_failures_and_killed_workers(backend: Backend) {
    const LANES: i64 = 4;
    const PER_LANE: i64 = 15;
    let binary = integration_tests::workspace_program("agent-webhooks", "-p agent-webhooks-cli");
    let t = TestDb::migrated(backend).await;
    let keys = KeyRing::generate_key_entry("k1").unwrap();
    let settings = WebhookSettings {
        url_policy: UrlPolicy::Development,
        keys: Some(KeyRing::parse(&keys).unwrap()),
        ..WebhookSettings::default()
    };

    // The receiver: 500 to the first attempt of every third position, 2xx otherwise after a
    // few milliseconds (so that kills land on requests in flight).
    let seen = Arc::new(Mutex::new(Lanes::default()));
    let state = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let seen = Arc::clone(&state);
        async move {
            let header = |name| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let lane = header(lanes::HEADER_LANE);
            let seq: i64 = header(lanes::HEADER_SEQUENCE).parse().unwrap_or(0);
            let status = {
                let mut seen = seen.lock().unwrap();
                seen.requests += 1;
                let accepted = seen.accepted.entry(lane.clone()).or_default();
                if accepted.last().copied().unwrap_or(0) < seq - 1 {
                    let got = format!("{lane}#{seq} before #{} was accepted", seq - 1);
                    seen.out_of_order.push(got);
                }
                let attempts = seen.attempts.entry((lane.clone(), seq)).or_default();
                *attempts += 1;
                if seq % 3 == 0 && *attempts == 1 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    let accepted = seen.accepted.entry(lane).or_default();
                    if !accepted.contains(&seq) {
                        accepted.push(seq);
                    }
                    StatusCode::OK
                }
            };
            tokio::time::sleep(Duration::from_millis(5)).await;
            status
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    seed_agent(&t, "agent-1", &[]).await;
    let config = WebhookConfig {
        webhook_url: format!("http://{addr}/hook"),
        webhook_secret: Some(SecretString::from(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
        )),
        webhook_events: vec![],
        webhook_enabled: true,
        webhook_ordered: true,
        webhook_filter: None,
    };
    webhook::configure(&t.db, &settings, "agent-1", &config)
        .await
        .unwrap();
    let now = Utc::now();
    let body = json!({"kind": "step"});
    // Interleaved across lanes, as an agent's runs emit them.
    for n in 1..=PER_LANE {
        for lane in 0..LANES {
            delivery::enqueue_in_lane(
                &t.db,
                &settings,
                "agent-1",
                &format!("run-{lane}"),
                &format!("evt-{lane}-{n}"),
                "run.step",
                &body,
                now,
            )
            .await
            .unwrap();
        }
    }

    let start = |name: usize| -> Child {
        Command::new(&binary)
            .arg("worker")
            .env("DATABASE_URL", &t.url)
            .env("WEBHOOK_SECRET_KEYS", &keys)
            .env("WEBHOOK_URL_POLICY", "development")
            .env("WEBHOOK_POLL_INTERVAL_MS", "50")
            // Generous for a machine loaded by the rest of the suite: a timed-out attempt is
            // retried, and enough attempts that no delivery is given up under load.
            .env("WEBHOOK_CLAIM_LEASE_SECS", "5")
            .env("WEBHOOK_REQUEST_TIMEOUT_SECS", "3")
            .env("WEBHOOK_MAX_ATTEMPTS", "50")
            .env("WEBHOOK_RETRY_SCHEDULE", "200ms")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("worker {name}: {e}"))
    };
    let mut workers: Vec<Child> = (0..4).map(start).collect();
    let total = (LANES * PER_LANE) as usize;
    let accepted = |seen: &Mutex<Lanes>| -> usize {
        seen.lock().unwrap().accepted.values().map(Vec::len).sum()
    };
    // Kill two workers with SIGKILL once a quarter is accepted, and start two new ones.
    let deadline = Instant::now() + Duration::from_secs(150);
    while accepted(&seen) < total / 4 {
        assert!(Instant::now() < deadline, "no progress before the kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for worker in workers.iter_mut().take(2) {
        worker.kill().unwrap();
        worker.wait().unwrap();
    }
    workers.extend((4..6).map(start));

    let delivered = || {
        wd::Entity::find()
            .filter(wd::Column::DeliveredAt.is_not_null())
            .count(&t.db)
    };
    while delivered().await.unwrap() < total as u64 {
        if Instant::now() > deadline {
            for worker in &mut workers {
                let _ = worker.kill();
            }
            panic!(
                "{} of {total} delivered within 150 s",
                delivered().await.unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }

    let seen = seen.lock().unwrap();
    assert!(
        seen.out_of_order.is_empty(),
        "sent out of order: {:?}",
        seen.out_of_order
    );
    let expected: Vec<i64> = (1..=PER_LANE).collect();
    let lanes: BTreeMap<_, _> = seen.accepted.iter().collect();
    assert_eq!(lanes.len(), LANES as usize);
    for (lane, accepted) in lanes {
        assert_eq!(accepted, &expected, "lane {lane}");
    }
    // Every third position failed once and was retried.
    for lane in 0..LANES {
        let tries = seen.attempts[&(format!("run-{lane}"), 3)];
        assert!(tries >= 2, "run-{lane}#3 was tried {tries} times");
    }
    assert!(seen.requests >= total + (LANES * PER_LANE / 3) as usize);
}

backend_tests!(
    positions_follow_enqueue_without_gaps,
    the_claim_waits_for_the_delivery_before_in_its_lane,
    order_holds_across_failures_and_killed_workers,
);
