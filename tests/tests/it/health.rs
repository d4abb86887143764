//! Endpoint health on SQLite, PostgreSQL and MariaDB, with an injected clock: a failed outcome
//! starts the agent's failure run, a success ends it, and a failure once the run is as old as
//! the settings' `disable_after` disables the webhook with a reason; enqueue then skips the
//! agent, its pending deliveries stay pending, and enabling it through `configure` clears it all.

use std::time::Duration;

use agent_webhooks::delivery::retry::{AttemptOutcome, Decision, RetryPolicy};
use agent_webhooks::delivery::{self, DeliveryState, Enqueued, SkipReason};
use agent_webhooks::settings::{WebhookSettings, vars};
use agent_webhooks::webhook::url_policy::UrlPolicy;
use agent_webhooks::webhook::{self, WebhookConfig, WebhookConfigView};
use chrono::{DateTime, TimeDelta, Utc};
use integration_tests::{Backend, TestDb, backend_tests, seed_agent};
use serde_json::json;

const AGENT: &str = "agent-1";

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_764_000_000, 0).unwrap()
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn days(n: i64) -> TimeDelta {
    TimeDelta::days(n)
}

/// Default disable period (5 days); one retry 20 days later, so a failed delivery stays
/// pending (not due) for the whole of a test and each [`attempt`] claims only its own event.
fn settings() -> WebhookSettings {
    WebhookSettings {
        url_policy: UrlPolicy::Development,
        retry: RetryPolicy {
            schedule: vec![Duration::from_secs(20 * 24 * 3600)],
            max_attempts: 2,
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        ..WebhookSettings::default()
    }
}

/// An agent with an enabled webhook and no health state yet.
async fn agent(backend: Backend) -> TestDb {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, AGENT, &[]).await;
    t
}

/// Enqueues a fresh event at `now`, claims it and records HTTP `code` for it at `now`; returns
/// the delivery id and what was decided.
async fn attempt(
    t: &TestDb,
    settings: &WebhookSettings,
    code: u16,
    now: DateTime<Utc>,
) -> (String, Decision) {
    let event_id = format!("evt-{}", now.timestamp());
    match delivery::enqueue(
        &t.db,
        settings,
        AGENT,
        &event_id,
        "run.completed",
        &json!({"n": 1}),
        now,
    )
    .await
    .unwrap()
    {
        Enqueued::Created(_) => {}
        other => panic!("expected a new delivery at {now}, got {other:?}"),
    }
    let claims = delivery::claim_due(&t.db, settings, now, 10).await.unwrap();
    assert_eq!(claims.len(), 1, "only the new event is due at {now}");
    let claim = &claims[0];
    let outcome = AttemptOutcome::Status {
        code,
        retry_after: None,
    };
    let decision = delivery::record_outcome(&t.db, settings, claim, &outcome, now)
        .await
        .unwrap();
    (claim.delivery.id.clone(), decision)
}

async fn view(t: &TestDb) -> WebhookConfigView {
    webhook::get(&t.db, AGENT).await.unwrap()
}

async fn failure_run_starts_at_the_first_failure_and_a_success_ends_it(backend: Backend) {
    let t = agent(backend).await;
    let s = settings();
    assert_eq!(view(&t).await.failing_since, None);

    let (_, decision) = attempt(&t, &s, 500, t0()).await;
    assert!(matches!(decision, Decision::RetryAt(_)), "{decision:?}");
    assert_eq!(view(&t).await.failing_since, Some(t0()));

    // A later failure keeps the run's start.
    attempt(&t, &s, 500, t0() + secs(3600)).await;
    assert_eq!(view(&t).await.failing_since, Some(t0()));

    let (_, decision) = attempt(&t, &s, 200, t0() + secs(7200)).await;
    assert_eq!(decision, Decision::Delivered);
    let healthy = view(&t).await;
    assert_eq!(healthy.failing_since, None);
    assert!(healthy.webhook_enabled);

    // The next failure starts a new run.
    attempt(&t, &s, 503, t0() + secs(10_800)).await;
    assert_eq!(view(&t).await.failing_since, Some(t0() + secs(10_800)));
}

async fn a_failure_after_the_period_disables_the_webhook(backend: Backend) {
    let t = agent(backend).await;
    let s = settings();
    let (first, _) = attempt(&t, &s, 500, t0()).await;

    // One second short of five days: still enabled.
    attempt(&t, &s, 500, t0() + days(5) - secs(1)).await;
    let before = view(&t).await;
    assert!(before.webhook_enabled);
    assert_eq!(before.disabled_at, None);

    attempt(&t, &s, 500, t0() + days(5)).await;
    let disabled = view(&t).await;
    assert!(!disabled.webhook_enabled);
    assert_eq!(disabled.disabled_at, Some(t0() + days(5)));
    assert_eq!(
        disabled.disabled_reason.as_deref(),
        Some("no successful delivery for 5 days")
    );
    assert_eq!(disabled.failing_since, Some(t0()));

    // New events are no longer enqueued; the failed deliveries are still pending.
    let skipped = delivery::enqueue(
        &t.db,
        &s,
        AGENT,
        "evt-after",
        "run.completed",
        &json!({}),
        t0() + days(6),
    )
    .await
    .unwrap();
    assert_eq!(skipped, Enqueued::Skipped(SkipReason::Disabled));
    let pending = delivery::get(&t.db, &first, t0() + days(6)).await.unwrap();
    assert_eq!(pending.state, DeliveryState::Pending);

    // A later failure (the pending delivery's last attempt) disables nothing twice.
    let later = t0() + days(26);
    let claims = delivery::claim_due(&t.db, &s, later, 10).await.unwrap();
    assert_eq!(claims.len(), 3, "every failed delivery comes due again");
    for claim in &claims {
        let outcome = AttemptOutcome::Status {
            code: 500,
            retry_after: None,
        };
        let decision = delivery::record_outcome(&t.db, &s, claim, &outcome, later)
            .await
            .unwrap();
        assert!(matches!(decision, Decision::GiveUp(_)), "{decision:?}");
    }
    assert_eq!(view(&t).await, disabled);
}

async fn enabling_again_clears_the_health_state(backend: Backend) {
    let t = agent(backend).await;
    let s = settings();
    attempt(&t, &s, 500, t0()).await;
    attempt(&t, &s, 500, t0() + days(5)).await;
    assert!(view(&t).await.disabled_at.is_some());

    let config = WebhookConfig {
        webhook_url: "https://hooks.example.com/agent-1".to_owned(),
        webhook_secret: None,
        webhook_events: vec![],
        webhook_enabled: true,
        webhook_filter: None,
        webhook_ordered: false,
    };
    let enabled = webhook::configure(&t.db, &s, AGENT, &config).await.unwrap();
    assert!(enabled.webhook_enabled);
    assert_eq!(
        (
            enabled.failing_since,
            enabled.disabled_at,
            enabled.disabled_reason.clone()
        ),
        (None, None, None)
    );
    assert_eq!(view(&t).await, enabled);

    // A fresh run: one failure does not disable it again.
    attempt(&t, &s, 500, t0() + days(6)).await;
    let after = view(&t).await;
    assert!(after.webhook_enabled);
    assert_eq!(after.failing_since, Some(t0() + days(6)));
}

async fn the_disable_period_is_read_from_the_setting(backend: Backend) {
    let t = agent(backend).await;
    let from_env = WebhookSettings::from_lookup(|name| {
        (name == vars::DISABLE_AFTER_SECS).then(|| "60".into())
    })
    .unwrap();
    let minute = WebhookSettings {
        disable_after: from_env.disable_after,
        ..settings()
    };
    attempt(&t, &minute, 500, t0()).await;
    attempt(&t, &minute, 500, t0() + secs(59)).await;
    assert!(view(&t).await.webhook_enabled);

    // Under the default (5 days) this failure would change nothing.
    let default = settings();
    attempt(&t, &default, 500, t0() + secs(60)).await;
    assert!(view(&t).await.webhook_enabled);

    attempt(&t, &minute, 500, t0() + secs(61)).await;
    let disabled = view(&t).await;
    assert!(!disabled.webhook_enabled);
    assert_eq!(disabled.disabled_at, Some(t0() + secs(61)));
    assert_eq!(
        disabled.disabled_reason.as_deref(),
        Some("no successful delivery for 1 minute")
    );
}

backend_tests!(
    failure_run_starts_at_the_first_failure_and_a_success_ends_it,
    a_failure_after_the_period_disables_the_webhook,
    enabling_again_clears_the_health_state,
    the_disable_period_is_read_from_the_setting,
);
