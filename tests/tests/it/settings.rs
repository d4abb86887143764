//! Each `WEBHOOK_*` variable, set through `WebhookSettings::from_lookup` exactly as
//! `from_env` reads it, changes what the service does (`WEBHOOK_SIGNATURE_TOLERANCE_SECS` is read
//! by the ops CLI's `verify`; its test is in `tests/tests/it/cli.rs`).

use serde_json::json;
use std::collections::HashMap;

use agent_webhooks::delivery::retry::{AttemptOutcome, Decision, GiveUpReason};
use agent_webhooks::delivery::{self, Enqueued};
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::settings::{WebhookSettings, vars};
use agent_webhooks::webhook::{self, WebhookConfig};
use agent_webhooks::{Error, webhook::url_policy::UrlPolicyError};
use chrono::{DateTime, TimeDelta, Utc};
use integration_tests::{Backend, TestDb, backend_tests, seed_agent};
use secrecy::SecretString;

fn settings(pairs: &[(&str, &str)]) -> WebhookSettings {
    let map: HashMap<&str, &str> = pairs.iter().copied().collect();
    WebhookSettings::from_lookup(|name| map.get(name).map(|v| (*v).to_owned()))
        .expect("valid settings")
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_764_000_000, 0).unwrap()
}

fn config(url: &str, secret: Option<&str>) -> WebhookConfig {
    WebhookConfig {
        webhook_url: url.to_owned(),
        webhook_secret: secret.map(|s| SecretString::from(s.to_owned())),
        webhook_events: Vec::new(),
        webhook_enabled: true,
        webhook_filter: None,
        webhook_ordered: false,
    }
}

async fn url_policy_decides_which_urls_configure(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    let local = config("http://127.0.0.1:8080/hook", None);
    let refused = webhook::configure(&t.db, &settings(&[]), "agent-1", &local).await;
    assert!(
        matches!(
            refused,
            Err(Error::Url(UrlPolicyError::SchemeNotAllowed { .. }))
        ),
        "{refused:?}"
    );
    let development = settings(&[(vars::URL_POLICY, "development")]);
    let view = webhook::configure(&t.db, &development, "agent-1", &local)
        .await
        .expect("the development policy accepts a loopback receiver");
    assert_eq!(
        view.webhook_url.as_deref(),
        Some("http://127.0.0.1:8080/hook")
    );
}

async fn secret_keys_decide_whether_a_secret_can_be_stored(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    let with_secret = config(
        "https://hooks.example.com/a",
        Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    );
    let refused = webhook::configure(&t.db, &settings(&[]), "agent-1", &with_secret).await;
    assert!(
        matches!(refused, Err(Error::NoEncryptionKey)),
        "{refused:?}"
    );
    let key = KeyRing::generate_key_entry("k1").unwrap();
    let keyed = settings(&[(vars::SECRET_KEYS, &key)]);
    let view = webhook::configure(&t.db, &keyed, "agent-1", &with_secret)
        .await
        .unwrap();
    assert!(view.has_secret);
}

/// Fails every attempt with a 500 and returns the decisions until the delivery gives up or
/// `limit` attempts were made.
async fn decisions_until_given_up(
    t: &TestDb,
    settings: &WebhookSettings,
    limit: usize,
) -> Vec<Decision> {
    let event = format!("evt-{}", uuid::Uuid::new_v4().simple());
    assert!(matches!(
        delivery::enqueue(
            &t.db,
            &WebhookSettings::default(),
            "agent-1",
            &event,
            "run.completed",
            &json!({"n": 1}),
            t0()
        )
        .await
        .unwrap(),
        Enqueued::Created(_)
    ));
    let failure = AttemptOutcome::Status {
        code: 500,
        retry_after: None,
    };
    let mut now = t0();
    let mut decisions = Vec::new();
    while decisions.len() < limit {
        let claims = delivery::claim_due(&t.db, settings, now, 10).await.unwrap();
        assert_eq!(claims.len(), 1, "one due delivery at {now}");
        let decision = delivery::record_outcome(&t.db, settings, &claims[0], &failure, now)
            .await
            .unwrap();
        decisions.push(decision);
        match decision {
            Decision::RetryAt(next) => now = next,
            _ => break,
        }
    }
    decisions
}

async fn max_attempts_bounds_every_delivery(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    let two = settings(&[(vars::MAX_ATTEMPTS, "2")]);
    let decisions = decisions_until_given_up(&t, &two, 10).await;
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    assert_eq!(decisions[1], Decision::GiveUp(GiveUpReason::MaxAttempts(2)));

    // The default budget (8) still retries after the second failure.
    let default = decisions_until_given_up(&t, &settings(&[]), 3).await;
    assert!(
        default.iter().all(|d| matches!(d, Decision::RetryAt(_))),
        "{default:?}"
    );
}

async fn claim_lease_sets_how_long_a_claim_holds(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    for (event, pairs, lease) in [
        ("evt-default", &[][..], 60),
        (
            "evt-short",
            &[
                (vars::CLAIM_LEASE_SECS, "15"),
                (vars::REQUEST_TIMEOUT_SECS, "10"),
            ][..],
            15,
        ),
    ] {
        delivery::enqueue(
            &t.db,
            &WebhookSettings::default(),
            "agent-1",
            event,
            "run.completed",
            &json!({"n": 1}),
            t0(),
        )
        .await
        .unwrap();
        let s = settings(pairs);
        let claims = delivery::claim_due(&t.db, &s, t0(), 10).await.unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].lease_until, t0() + TimeDelta::seconds(lease));
        // Due again exactly when the lease ends, not before.
        let before = t0() + TimeDelta::seconds(lease - 1);
        assert!(
            delivery::claim_due(&t.db, &s, before, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let again = delivery::claim_due(&t.db, &s, claims[0].lease_until, 10)
            .await
            .unwrap();
        assert_eq!(again.len(), 1, "lease of {lease} s ran out");
        assert_eq!(again[0].attempt, 2);
        delivery::record_outcome(
            &t.db,
            &s,
            &again[0],
            &AttemptOutcome::Status {
                code: 200,
                retry_after: None,
            },
            claims[0].lease_until,
        )
        .await
        .unwrap();
    }
}

/// `WEBHOOK_RETRY_SCHEDULE` decides when a failed delivery is due again (the stored
/// `next_retry_at`) and, set alone, how many attempts it gets: one more than its delays.
async fn retry_schedule_decides_when_a_failed_delivery_is_due(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    let mut s = settings(&[(vars::RETRY_SCHEDULE, "3h, 90s")]);
    assert_eq!(s.retry.max_attempts, 3);
    // Without jitter (no variable sets it), so the instants are exact.
    s.retry.jitter = 0.0;
    let Enqueued::Created(created) = delivery::enqueue(
        &t.db,
        &s,
        "agent-1",
        "evt-schedule",
        "run.completed",
        &json!({"n": 1}),
        t0(),
    )
    .await
    .unwrap() else {
        panic!("the event was not enqueued");
    };
    let failure = AttemptOutcome::Status {
        code: 500,
        retry_after: None,
    };
    // The default schedule would retry after 5 s and then 5 min.
    let mut now = t0();
    for delay in [TimeDelta::hours(3), TimeDelta::seconds(90)] {
        let claims = delivery::claim_due(&t.db, &s, now, 10).await.unwrap();
        assert_eq!(claims.len(), 1, "due at {now}");
        let decision = delivery::record_outcome(&t.db, &s, &claims[0], &failure, now)
            .await
            .unwrap();
        let next = now + delay;
        assert_eq!(decision, Decision::RetryAt(next));
        let stored = delivery::get(&t.db, &created.id, now).await.unwrap();
        assert_eq!(stored.next_retry_at, Some(next));
        let early = next - TimeDelta::seconds(1);
        assert!(
            delivery::claim_due(&t.db, &s, early, 10)
                .await
                .unwrap()
                .is_empty(),
            "due before {next}"
        );
        now = next;
    }
    let claims = delivery::claim_due(&t.db, &s, now, 10).await.unwrap();
    assert_eq!(claims.len(), 1, "due at {now}");
    let last = delivery::record_outcome(&t.db, &s, &claims[0], &failure, now)
        .await
        .unwrap();
    assert_eq!(last, Decision::GiveUp(GiveUpReason::MaxAttempts(3)));
}

backend_tests!(
    url_policy_decides_which_urls_configure,
    secret_keys_decide_whether_a_secret_can_be_stored,
    max_attempts_bounds_every_delivery,
    retry_schedule_decides_when_a_failed_delivery_is_due,
    claim_lease_sets_how_long_a_claim_holds,
);

/// `WEBHOOK_PORTAL_KEY` decides whether portal links can be minted and which open a page;
/// `WEBHOOK_PORTAL_FRAME_ANCESTORS` is the pages' `frame-ancestors`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_settings_decide_links_and_framing() {
    use agent_webhooks::http::portal::{self, PortalLinkError};
    use agent_webhooks::http::{self, CallerOrganization, HttpState};
    use std::time::Duration;

    struct Nobody;
    impl CallerOrganization for Nobody {
        fn organization_id<'a>(
            &'a self,
            _: &'a axum::http::request::Parts,
        ) -> futures::future::BoxFuture<'a, Option<String>> {
            Box::pin(async { None })
        }
    }

    let t = TestDb::migrated(Backend::Sqlite).await;
    seed_agent(&t, "agent-1", &[]).await;
    let ttl = Duration::from_secs(60);
    let unset = settings(&[]);
    assert!(matches!(
        portal::mint_link(&t.db, &unset, "org-1", "agent-1", ttl, Utc::now()).await,
        Err(PortalLinkError::NoKey)
    ));
    let key_a = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let key_b = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
    let with_a = settings(&[
        (vars::PORTAL_KEY, key_a),
        (vars::PORTAL_FRAME_ANCESTORS, "https://app.example.com"),
    ]);
    let link = portal::mint_link(&t.db, &with_a, "org-1", "agent-1", ttl, Utc::now())
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for (settings, status, frame_ancestors, x_frame) in [
        (with_a, 200, "frame-ancestors https://app.example.com", None),
        // Another key: the link does not open (and the default framing is the app's own).
        (
            settings(&[(vars::PORTAL_KEY, key_b)]),
            404,
            "frame-ancestors 'self'",
            None,
        ),
        (
            settings(&[
                (vars::PORTAL_KEY, key_a),
                (vars::PORTAL_FRAME_ANCESTORS, "'none'"),
            ]),
            200,
            "frame-ancestors 'none'",
            Some("DENY"),
        ),
        // Set in code rather than read: a value that would add a directive forbids framing.
        (
            WebhookSettings {
                portal_frame_ancestors: "'self'; script-src *".to_owned(),
                ..settings(&[(vars::PORTAL_KEY, key_a)])
            },
            200,
            "frame-ancestors 'none'",
            Some("DENY"),
        ),
    ] {
        let app = http::router(HttpState::new(t.db.clone(), settings, Nobody));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let answer = client
            .get(format!("http://{addr}{}", link.path))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), status);
        let csp = answer.headers()["content-security-policy"]
            .to_str()
            .unwrap();
        assert!(csp.ends_with(frame_ancestors), "{csp}");
        assert_eq!(
            answer
                .headers()
                .get("x-frame-options")
                .map(|v| v.to_str().unwrap()),
            x_frame
        );
    }
}
