//! Bad input and races on SQLite, PostgreSQL and MariaDB: key rotation with a
//! wrong key, enqueue racing inside a caller's transaction, library entry points over arbitrary
//! limits.

use agent_webhooks::Error;
use agent_webhooks::delivery::{self, Enqueued};
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::settings::WebhookSettings;
use agent_webhooks::webhook::{self, ResealReport, WebhookConfig};
use integration_tests::{Backend, TestDb, backend_tests, enqueue_event, seed_agent};
use sea_orm::TransactionTrait;

fn ring(entries: &str) -> WebhookSettings {
    WebhookSettings {
        keys: Some(KeyRing::parse(entries).unwrap()),
        ..WebhookSettings::default()
    }
}

fn with_secret(secret: &str) -> WebhookConfig {
    serde_json::from_value(serde_json::json!({
        "webhook_url": "https://hooks.example.com/a",
        "webhook_secret": secret,
    }))
    .unwrap()
}

async fn rotation_with_wrong_key_bytes_under_the_right_id_fails_naming_the_key(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let k1 = KeyRing::generate_key_entry("k1").unwrap();
    for i in 1..=3 {
        let agent = format!("agent-{i}");
        seed_agent(&t, &agent, &[]).await;
        webhook::configure(
            &t.db,
            &ring(&k1),
            &agent,
            &with_secret(&format!("a user secret for agent {i}")),
        )
        .await
        .unwrap();
    }
    let stored = || t.strings("SELECT webhook_secret FROM agents ORDER BY id");
    let before = stored().await;
    // Same id, other bytes: as the current key (everything looks current by id) and behind a
    // new current key (everything needs rewriting).
    let wrong_k1 = KeyRing::generate_key_entry("k1").unwrap();
    let k2 = KeyRing::generate_key_entry("k2").unwrap();
    for entries in [wrong_k1.clone(), format!("{k2},{wrong_k1}")] {
        let err = webhook::reseal_secrets(&t.db, &ring(&entries), 2, |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::WrongKey { key_id, agent_id } if key_id == "k1" && agent_id == "agent-1"),
            "{backend:?}: {err:?}"
        );
        assert!(err.to_string().contains("key `k1`"), "{err}");
        assert_eq!(stored().await, before, "nothing rewritten");
    }
    // The right keys: the summary counts what happened, run after run.
    let right = ring(&format!("{k2},{k1}"));
    let first = webhook::reseal_secrets(&t.db, &right, 2, |_| {})
        .await
        .unwrap();
    let expected = ResealReport {
        examined: 3,
        resealed: 3,
        already_current: 0,
        skipped: 0,
    };
    assert_eq!(first, expected);
    let again = webhook::reseal_secrets(&t.db, &right, 2, |_| {})
        .await
        .unwrap();
    let expected = ResealReport {
        examined: 3,
        resealed: 0,
        already_current: 3,
        skipped: 0,
    };
    assert_eq!(again, expected);
}

/// The transactional outbox: an app enqueues in the same transaction as its agent change. When
/// another worker enqueued the same event first and committed, the caller's enqueue returns
/// that delivery (`Existing`), on MariaDB too, where the transaction's repeatable-read snapshot
/// (taken by its first read) does not show the winner's row.
async fn enqueue_in_a_callers_transaction_finds_the_winners_delivery(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    let other = TestDb::reconnect(&t).await;
    let now = chrono::Utc::now();
    let txn = t.db.begin().await.unwrap();
    if backend != Backend::Sqlite {
        // The caller reads first (taking MariaDB's snapshot). SQLite cannot let another writer
        // commit between a transaction's read and its write at all: the write would fail with
        // SQLITE_BUSY, by design, so there the caller's transaction starts with the enqueue.
        webhook::get_agent(&txn, "agent-1").await.unwrap();
    }
    let winner = match enqueue_event(&other.db, "agent-1", "evt-1", "run.completed", now)
        .await
        .unwrap()
    {
        Enqueued::Created(d) => d,
        other => panic!("{other:?}"),
    };
    let outcome = enqueue_event(&txn, "agent-1", "evt-1", "run.completed", now).await;
    match outcome {
        Ok(Enqueued::Existing(d)) => assert_eq!(d.id, winner.id),
        other => panic!("{backend:?}: expected the winner's delivery, got {other:?}"),
    }
    txn.commit().await.unwrap();
    assert_eq!(
        t.count("SELECT COUNT(*) FROM webhook_deliveries").await,
        1,
        "one delivery"
    );
}

backend_tests!(
    rotation_with_wrong_key_bytes_under_the_right_id_fails_naming_the_key,
    enqueue_in_a_callers_transaction_finds_the_winners_delivery
);

/// The library entry points that take a `u64` limit never panic, whatever the limit (and
/// whatever cursor or cutoff comes with it): a result within bounds, or `Error::InvalidLimit`.
#[test]
fn entry_points_never_panic_on_arbitrary_limits() {
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t = rt.block_on(async {
        let t = TestDb::migrated(Backend::Sqlite).await;
        seed_agent(&t, "agent-1", &[]).await;
        let k1 = KeyRing::generate_key_entry("k1").unwrap();
        webhook::configure(
            &t.db,
            &ring(&k1),
            "agent-1",
            &with_secret("a long user secret"),
        )
        .await
        .unwrap();
        enqueue_event(&t.db, "agent-1", "evt-1", "run.completed", Utc::now())
            .await
            .unwrap();
        t
    });
    let settings = ring(&KeyRing::generate_key_entry("k1").unwrap());
    let limits = prop_oneof![
        any::<u64>(),
        0..=1_001_u64,
        Just(i64::MAX as u64),
        Just(i64::MAX as u64 + 1),
        Just(u64::MAX),
    ];
    let instants = prop_oneof![
        (-8_000_000_000_000_i64..8_000_000_000_000).prop_map(|s| {
            DateTime::<Utc>::from_timestamp(s, 0).unwrap_or(DateTime::UNIX_EPOCH)
        }),
        Just(DateTime::<Utc>::MAX_UTC),
        Just(DateTime::<Utc>::MIN_UTC),
        Just(Utc::now()),
    ];
    let mut runner =
        proptest::test_runner::TestRunner::new(proptest::test_runner::Config::with_cases(128));
    runner
        .run(
            &(limits, any::<Option<String>>(), instants),
            |(limit, cursor, instant)| {
                rt.block_on(async {
                    let in_bounds = (1..=delivery::MAX_PAGE_SIZE).contains(&limit);
                    let claimed = delivery::claim_due(&t.db, &settings, instant, limit).await;
                    prop_assert!(
                        claimed.is_ok() == in_bounds && (in_bounds || invalid(&claimed, limit)),
                        "{claimed:?}"
                    );
                    let query = delivery::HistoryQuery {
                        cursor,
                        limit,
                        ..Default::default()
                    };
                    // A bad cursor is a typed error too; only a panic fails this.
                    let page = delivery::history(&t.db, "agent-1", &query, instant).await;
                    prop_assert!(in_bounds || limit == 0 || invalid(&page, limit), "{page:?}");
                    let pruned =
                        delivery::prune(&t.db, instant, limit, std::time::Duration::ZERO, |_| {})
                            .await;
                    prop_assert!(pruned.is_ok() == in_bounds, "{pruned:?}");
                    let resealed = webhook::reseal_secrets(&t.db, &settings, limit, |_| {}).await;
                    prop_assert!(in_bounds || invalid(&resealed, limit), "{resealed:?}");
                    Ok(())
                })
            },
        )
        .unwrap();
}

/// Whether `result` is the typed refusal of `limit`.
fn invalid<T>(result: &agent_webhooks::Result<T>, limit: u64) -> bool {
    matches!(result, Err(Error::InvalidLimit { limit: n, .. }) if *n == limit)
}
