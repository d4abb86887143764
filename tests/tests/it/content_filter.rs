//! Content filters on SQLite, PostgreSQL and MariaDB: configured through the library (set,
//! keep, replace, clear, refused with the place and the rule), applied by `enqueue`,
//! `enqueue_for_agent` and `enqueue_many` together with the event-type rule (a payload that does
//! not match is not stored, `SkipReason::Filtered`; the statements each path sends), a stored
//! filter that no longer parses fails the enqueue, and through the HTTP API: a refused filter's
//! problem and the dry-run route.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agent_webhooks::Error;
use agent_webhooks::delivery::{self, EnqueueItem, Enqueued, Payload, SkipReason, VerdictReason};
use agent_webhooks::settings::WebhookSettings;
use agent_webhooks::webhook::content_filter::FilterRefusal;
use agent_webhooks::webhook::{self, WebhookConfigPatch};
use chrono::{DateTime, Utc};
use entity::agents;
use integration_tests::{Backend, TestDb, backend_tests, seed_agent};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};
use serde_json::{Value, json};

use crate::http::Api;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_764_000_000, 0).unwrap()
}

fn item<'a>(
    agent_id: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    payload: &'a Value,
) -> EnqueueItem<'a> {
    EnqueueItem {
        agent_id,
        event_id,
        event_type,
        payload: payload.into(),
        lane: None,
    }
}

fn keep() -> Value {
    json!({"kind": "keep"})
}

async fn set_filter(t: &TestDb, agent_id: &str, filter: Option<Value>) {
    let patch = WebhookConfigPatch {
        webhook_filter: Some(filter),
        ..WebhookConfigPatch::default()
    };
    webhook::update(&t.db, &WebhookSettings::default(), agent_id, &patch)
        .await
        .unwrap();
}

/// The event ids stored for `agent_id`, sorted.
async fn stored(t: &TestDb, agent_id: &str) -> Vec<String> {
    let mut ids = t
        .strings(&format!(
            "SELECT event_id FROM webhook_deliveries WHERE agent_id = '{agent_id}'"
        ))
        .await;
    ids.sort();
    ids
}

/// A connection to the same database that counts the statements it sends.
async fn counting(t: &TestDb) -> (TestDb, Arc<AtomicUsize>) {
    let mut counted = TestDb::reconnect(t).await;
    let statements = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&statements);
    counted.db.set_metric_callback(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
    });
    (counted, statements)
}

async fn enqueue_applies_the_filter_on_every_path(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let s = WebhookSettings::default();
    seed_agent(&t, "picky", &[]).await;
    seed_agent(&t, "runs", &["run.*"]).await;
    seed_agent(&t, "plain", &[]).await;
    set_filter(&t, "picky", Some(keep())).await;
    set_filter(&t, "runs", Some(json!({"data.n": {"$gte": 2}}))).await;
    let (counted, statements) = counting(&t).await;
    let count = || statements.load(Ordering::SeqCst);

    // `enqueue`: the one-statement insert creates nothing for a filtered agent; on PostgreSQL
    // the same statement returns the agent's row, on SQLite it is read next, and the filter
    // decides; MariaDB reads first anyway.
    let (kept, dropped) = match backend {
        Backend::Sqlite => (3, 2),
        _ => (2, 1),
    };
    let enqueue = |agent: &'static str,
                   event_id: &'static str,
                   event_type: &'static str,
                   payload: Value| {
        let db = counted.db.clone();
        let s = s.clone();
        async move { delivery::enqueue(&db, &s, agent, event_id, event_type, &payload, t0()).await }
    };
    let before = count();
    let created = enqueue(
        "picky",
        "e1",
        "run.completed",
        json!({"kind": "keep", "x": 1}),
    )
    .await
    .unwrap();
    assert!(matches!(created, Enqueued::Created(_)), "{created:?}");
    assert_eq!(count() - before, kept, "a matching payload");
    let before = count();
    let skipped = enqueue("picky", "e2", "run.completed", json!({"kind": "drop"}))
        .await
        .unwrap();
    assert_eq!(skipped, Enqueued::Skipped(SkipReason::Filtered));
    assert_eq!(count() - before, dropped, "a payload that does not match");
    // Read once, the filter is remembered: a matching payload is then the one statement
    // (MariaDB reads the agent first, as for every event).
    let one = if backend == Backend::MySql { 2 } else { 1 };
    let before = count();
    let created = enqueue("picky", "e8", "run.completed", keep())
        .await
        .unwrap();
    assert!(matches!(created, Enqueued::Created(_)), "{created:?}");
    assert_eq!(
        count() - before,
        one,
        "a matching payload, the filter remembered"
    );
    // Not an object, or no `kind` at all: not delivered either.
    for (id, payload) in [("e3", json!(["keep"])), ("e4", json!({"other": "keep"}))] {
        let got = enqueue("picky", id, "run.completed", payload)
            .await
            .unwrap();
        assert_eq!(got, Enqueued::Skipped(SkipReason::Filtered), "{id}");
    }
    // The app's JSON text is filtered as it is stored.
    let text = delivery::enqueue(
        &counted.db,
        &s,
        "picky",
        "e5",
        "run.completed",
        Payload::json(br#"{ "kind" : "keep" }"#),
        t0(),
    )
    .await
    .unwrap();
    assert!(matches!(text, Enqueued::Created(_)), "{text:?}");
    // The test event passes the content filter, as it passes the event-type rule.
    let test = enqueue(
        "picky",
        "e6",
        "webhook.test",
        json!({"type": "webhook.test"}),
    )
    .await
    .unwrap();
    assert!(matches!(test, Enqueued::Created(_)), "{test:?}");
    // An agent without a filter keeps the one-statement enqueue on PostgreSQL and SQLite.
    let before = count();
    let plain = enqueue("plain", "e1", "run.completed", json!({"kind": "drop"}))
        .await
        .unwrap();
    assert!(matches!(plain, Enqueued::Created(_)), "{plain:?}");
    assert_eq!(count() - before, one, "an agent without a filter");

    // Both rules apply: the event type first, then the content.
    let cases = [
        (
            "r1",
            "job.failed",
            json!({"data": {"n": 5}}),
            Some(SkipReason::NotWanted),
        ),
        (
            "r2",
            "run.failed",
            json!({"data": {"n": 1}}),
            Some(SkipReason::Filtered),
        ),
        ("r3", "run.failed", json!({"data": {"n": 2.0}}), None),
    ];
    for (id, event_type, payload, skipped) in cases {
        let got = enqueue("runs", id, event_type, payload).await.unwrap();
        match skipped {
            Some(reason) => assert_eq!(got, Enqueued::Skipped(reason), "{id}"),
            None => assert!(matches!(got, Enqueued::Created(_)), "{id}: {got:?}"),
        }
    }

    // `enqueue_for_agent`: the caller's row decides, no extra statement (none at all for a
    // payload that does not match).
    let row = agents::Entity::find_by_id("picky")
        .one(&t.db)
        .await
        .unwrap()
        .unwrap();
    let txn = counted.db.begin().await.unwrap();
    let before = count();
    let skipped = delivery::enqueue_for_agent(
        &txn,
        &s,
        &row,
        "f1",
        "run.completed",
        &json!({"kind": "drop"}),
        t0(),
    )
    .await
    .unwrap();
    assert_eq!(skipped, Enqueued::Skipped(SkipReason::Filtered));
    assert_eq!(count() - before, 0);
    let before = count();
    let created = delivery::enqueue_for_agent(
        &txn,
        &s,
        &row,
        "f2",
        "run.completed",
        &json!({"kind": "keep"}),
        t0(),
    )
    .await
    .unwrap();
    assert!(matches!(created, Enqueued::Created(_)), "{created:?}");
    assert_eq!(count() - before, 1, "the insert alone");
    txn.commit().await.unwrap();

    // `enqueue_many`: per item, in the same call.
    let (drop_payload, keep_payload, n3) = (
        json!({"kind": "drop"}),
        json!({"kind": "keep"}),
        json!({"data": {"n": 3}}),
    );
    let items = [
        item("picky", "m1", "run.completed", &keep_payload),
        item("picky", "m2", "run.completed", &drop_payload),
        item("plain", "m3", "run.completed", &drop_payload),
        item("runs", "m4", "run.started", &n3),
        item("runs", "m5", "run.started", &drop_payload),
        item("runs", "m6", "job.failed", &n3),
    ];
    let done = delivery::enqueue_many(&counted.db, &s, &items, t0())
        .await
        .unwrap();
    assert!(matches!(done[0], Enqueued::Created(_)), "{:?}", done[0]);
    assert_eq!(done[1], Enqueued::Skipped(SkipReason::Filtered));
    assert!(matches!(done[2], Enqueued::Created(_)), "{:?}", done[2]);
    assert!(matches!(done[3], Enqueued::Created(_)), "{:?}", done[3]);
    assert_eq!(done[4], Enqueued::Skipped(SkipReason::Filtered));
    assert_eq!(done[5], Enqueued::Skipped(SkipReason::NotWanted));

    // What is stored is exactly what was created.
    assert_eq!(
        stored(&t, "picky").await,
        ["e1", "e5", "e6", "e8", "f2", "m1"]
    );
    assert_eq!(stored(&t, "runs").await, ["m4", "r3"]);
    assert_eq!(stored(&t, "plain").await, ["e1", "m3"]);

    // A repeat of a stored event whose payload would now be filtered: skipped, the first kept.
    let again = enqueue("picky", "e1", "run.completed", json!({"kind": "drop"}))
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Skipped(SkipReason::Filtered));
    let again = enqueue("picky", "e1", "run.completed", json!({"kind": "keep"}))
        .await
        .unwrap();
    assert!(matches!(again, Enqueued::Existing(_)), "{again:?}");

    // Removing the filter delivers everything again, in one statement on PostgreSQL/SQLite.
    set_filter(&t, "picky", None).await;
    let before = count();
    let got = enqueue("picky", "e7", "run.completed", json!({"kind": "drop"}))
        .await
        .unwrap();
    assert!(matches!(got, Enqueued::Created(_)), "{got:?}");
    assert_eq!(count() - before, one);

    // A filter remembered and then changed by someone else decides nothing: the stored one
    // does, and is remembered in its place.
    set_filter(&t, "picky", Some(keep())).await;
    for id in ["e9", "e10"] {
        let got = enqueue("picky", id, "run.completed", keep()).await.unwrap();
        assert!(matches!(got, Enqueued::Created(_)), "{id}: {got:?}");
    }
    set_filter(&t, "picky", Some(json!({"kind": "other"}))).await;
    let before = count();
    let got = enqueue("picky", "e11", "run.completed", keep())
        .await
        .unwrap();
    assert_eq!(got, Enqueued::Skipped(SkipReason::Filtered));
    assert_eq!(count() - before, dropped, "a changed filter");
    let before = count();
    let got = enqueue("picky", "e12", "run.completed", json!({"kind": "other"}))
        .await
        .unwrap();
    assert!(matches!(got, Enqueued::Created(_)), "{got:?}");
    assert_eq!(count() - before, one, "the changed filter, remembered");
    assert_eq!(
        stored(&t, "picky").await,
        ["e1", "e10", "e12", "e5", "e6", "e7", "e8", "e9", "f2", "m1"]
    );
}

/// A stored filter that does not parse (written by another tool) fails every enqueue path
/// with `CorruptFilter`, naming the agent and the fault; nothing is stored.
async fn a_corrupt_stored_filter_fails_the_enqueue(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let s = WebhookSettings::default();
    seed_agent(&t, "corrupt", &[]).await;
    agents::Entity::update_many()
        .col_expr(
            agents::Column::WebhookFilter,
            Expr::value(Some(json!({"kind": {"$regex": "k.*"}}))),
        )
        .filter(agents::Column::Id.eq("corrupt"))
        .exec(&t.db)
        .await
        .unwrap();
    let payload = json!({"kind": "keep"});
    let check = |result: agent_webhooks::Result<()>| match result {
        Err(Error::CorruptFilter { agent_id, source }) => {
            assert_eq!(agent_id, "corrupt");
            assert_eq!(source.to_string(), "at `kind`: unknown operator `$regex`");
        }
        other => panic!("expected CorruptFilter, got {other:?}"),
    };
    check(
        delivery::enqueue(&t.db, &s, "corrupt", "e1", "run.completed", &payload, t0())
            .await
            .map(|_| ()),
    );
    let row = agents::Entity::find_by_id("corrupt")
        .one(&t.db)
        .await
        .unwrap()
        .unwrap();
    check(
        delivery::enqueue_for_agent(&t.db, &s, &row, "e2", "run.completed", &payload, t0())
            .await
            .map(|_| ()),
    );
    let items = [item("corrupt", "e3", "run.completed", &payload)];
    check(
        delivery::enqueue_many(&t.db, &s, &items, t0())
            .await
            .map(|_| ()),
    );
    let err = delivery::would_deliver(&t.db, "corrupt", "run.completed", &payload)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CorruptFilter { .. }), "{err}");
    assert!(stored(&t, "corrupt").await.is_empty());
    // The configuration still reads, showing the stored value, so it can be replaced.
    let view = webhook::get(&t.db, "corrupt").await.unwrap();
    assert_eq!(
        view.webhook_filter,
        Some(json!({"kind": {"$regex": "k.*"}}))
    );
    set_filter(&t, "corrupt", Some(keep())).await;
    let got = delivery::enqueue(&t.db, &s, "corrupt", "e4", "run.completed", &payload, t0())
        .await
        .unwrap();
    assert!(matches!(got, Enqueued::Created(_)), "{got:?}");
}

/// Set with `configure`, kept by a patch without the field, replaced, removed by `null`,
/// refused with the place and the rule (nothing changes), removed by `clear`.
async fn the_filter_is_configured_through_the_library(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let s = WebhookSettings::default();
    seed_agent(&t, "a1", &[]).await;
    let config: webhook::WebhookConfig = serde_json::from_value(json!({
        "webhook_url": "https://hooks.example.com/a1",
        "webhook_filter": {"data.run.status": {"$in": ["failed", "cancelled"]}},
    }))
    .unwrap();
    let view = webhook::configure(&t.db, &s, "a1", &config).await.unwrap();
    let first = json!({"data.run.status": {"$in": ["failed", "cancelled"]}});
    assert_eq!(view.webhook_filter, Some(first.clone()));
    assert_eq!(webhook::get(&t.db, "a1").await.unwrap(), view);

    let patch: WebhookConfigPatch =
        serde_json::from_value(json!({"webhook_enabled": true})).unwrap();
    let view = webhook::update(&t.db, &s, "a1", &patch).await.unwrap();
    assert_eq!(view.webhook_filter, Some(first.clone()), "absent keeps it");

    let patch: WebhookConfigPatch =
        serde_json::from_value(json!({"webhook_filter": keep()})).unwrap();
    let view = webhook::update(&t.db, &s, "a1", &patch).await.unwrap();
    assert_eq!(view.webhook_filter, Some(keep()), "replaced");

    let bad: WebhookConfigPatch = serde_json::from_value(json!({
        "webhook_filter": {"$or": [{"a": 1}, {"data.count": {"$gt": [1]}}]}
    }))
    .unwrap();
    match webhook::update(&t.db, &s, "a1", &bad).await {
        Err(Error::Filter(e)) => {
            assert_eq!(e.path, "$or[1].data.count");
            assert_eq!(e.reason, FilterRefusal::NeedsNumberOrString("$gt"));
        }
        other => panic!("expected a refused filter, got {other:?}"),
    }
    assert_eq!(
        webhook::get(&t.db, "a1").await.unwrap().webhook_filter,
        Some(keep()),
        "a refused filter changes nothing"
    );

    let patch: WebhookConfigPatch =
        serde_json::from_value(json!({"webhook_filter": null})).unwrap();
    let view = webhook::update(&t.db, &s, "a1", &patch).await.unwrap();
    assert_eq!(view.webhook_filter, None, "null removes it");
    assert_eq!(
        t.count("SELECT COUNT(*) FROM agents WHERE webhook_filter IS NULL AND id = 'a1'")
            .await,
        1,
        "stored as SQL NULL, so the one-statement enqueue applies"
    );

    set_filter(&t, "a1", Some(keep())).await;
    let view = webhook::clear(&t.db, "a1").await.unwrap();
    assert_eq!(view.webhook_filter, None, "clear removes it");
}

/// Through the API: a refused filter is a 422 naming the field, the rule and the place; the
/// dry run says what an enqueue would do and why, and writes nothing; the library's dry run
/// says when the agent does not exist.
async fn the_api_refuses_bad_filters_and_dry_runs(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &["run.*"]).await;
    let mut api = Api::start(&t).await;
    let path = |rest: &str| format!("/v1/agents/agent-1/webhook{rest}");

    let refused = api
        .call(
            "org-1",
            "PUT",
            &path(""),
            Some(json!({
                "webhook_url": "https://hooks.example.com/x",
                "webhook_filter": {"$or": [{"kind": "keep"}, {"data.count": {"$regex": "1"}}]},
            })),
        )
        .await;
    let p = refused.problem(422, "invalid-content-filter");
    assert_eq!(p["field"], "webhook_filter");
    assert_eq!(p["rule"], "known-operator");
    assert_eq!(
        p["detail"],
        "invalid webhook_filter: at `$or[1].data.count`: unknown operator `$regex`"
    );
    let empty_and = api
        .call(
            "org-1",
            "PATCH",
            &path(""),
            Some(json!({"webhook_filter": {"$and": []}})),
        )
        .await;
    assert_eq!(
        empty_and.problem(422, "invalid-content-filter")["rule"],
        "non-empty"
    );
    let view = api.call("org-1", "GET", &path(""), None).await.json();
    assert_eq!(view["webhook_url"], "https://hooks.example.com/agent-1");
    assert_eq!(view["webhook_filter"], Value::Null, "nothing changed");

    let set = api
        .call(
            "org-1",
            "PATCH",
            &path(""),
            Some(json!({"webhook_filter": {"kind": "keep", "data.n": {"$gt": 1}}})),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(
        set.json()["webhook_filter"],
        json!({"kind": "keep", "data.n": {"$gt": 1}})
    );

    let check =
        |event_type: &str, payload: Value| json!({"event_type": event_type, "payload": payload});
    let cases = [
        (
            check("run.completed", json!({"kind": "keep", "data": {"n": 2}})),
            json!({"deliver": true, "reason": "would_deliver", "failed_clause": null}),
        ),
        (
            check("run.completed", json!({"kind": "keep", "data": {"n": 1}})),
            json!({"deliver": false, "reason": "filtered", "failed_clause": "data.n"}),
        ),
        (
            check("run.completed", json!({"kind": "drop", "data": {"n": 2}})),
            json!({"deliver": false, "reason": "filtered", "failed_clause": "kind"}),
        ),
        (
            check("job.failed", json!({"kind": "keep", "data": {"n": 2}})),
            json!({"deliver": false, "reason": "not_wanted", "failed_clause": null}),
        ),
    ];
    for (body, expected) in cases {
        let got = api
            .call("org-1", "POST", &path("/filter-check"), Some(body.clone()))
            .await;
        assert_eq!(got.status, 200, "{}", got.body);
        assert_eq!(got.json(), expected, "{body}");
    }
    // Another organization's agent is 404, like a missing one.
    api.call(
        "org-2",
        "POST",
        &path("/filter-check"),
        Some(check("run.completed", json!({}))),
    )
    .await
    .problem(404, "agent-not-found");
    // The dry run wrote nothing.
    assert!(stored(&t, "agent-1").await.is_empty());

    t.exec("UPDATE agents SET webhook_enabled = false WHERE id = 'agent-1'")
        .await;
    let got = api
        .call(
            "org-1",
            "POST",
            &path("/filter-check"),
            Some(check(
                "run.completed",
                json!({"kind": "keep", "data": {"n": 2}}),
            )),
        )
        .await;
    assert_eq!(got.json()["reason"], "disabled", "{}", got.body);

    let missing = delivery::would_deliver(&t.db, "agent-missing", "run.completed", &json!({}))
        .await
        .unwrap();
    assert_eq!(
        (missing.deliver, missing.reason),
        (false, VerdictReason::AgentNotFound)
    );
}

backend_tests!(
    enqueue_applies_the_filter_on_every_path,
    a_corrupt_stored_filter_fails_the_enqueue,
    the_filter_is_configured_through_the_library,
    the_api_refuses_bad_filters_and_dry_runs,
);
