//! One call gives a sender worker everything for a claimed delivery: URL, signed headers and
//! the exact body, signed with the agent's decrypted secret. On every backend.

use agent_webhooks::Error;
use agent_webhooks::delivery::{self, Enqueued};
use agent_webhooks::dispatch::sign;
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::secrets::signing;
use agent_webhooks::secrets::webhook_secret::WebhookSecret;
use agent_webhooks::settings::WebhookSettings;
use agent_webhooks::webhook::url_policy::UrlPolicy;
use agent_webhooks::webhook::{self, WebhookConfig};
use chrono::Utc;
use integration_tests::{Backend, TestDb, backend_tests, seed_agent};
use secrecy::SecretString;
use serde_json::json;

async fn prepares_a_signed_request_or_refuses_to(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    seed_agent(&t, "agent-2", &[]).await;
    let settings = WebhookSettings {
        keys: Some(KeyRing::parse(&KeyRing::generate_key_entry("k1").unwrap()).unwrap()),
        ..WebhookSettings::default()
    };
    let secret = WebhookSecret::generate().unwrap();
    let request = WebhookConfig {
        webhook_url: "https://hooks.example.com/agent-1".into(),
        webhook_secret: Some(SecretString::from(secret.expose().to_owned())),
        webhook_events: vec![],
        webhook_enabled: true,
        webhook_filter: None,
        webhook_ordered: false,
    };
    webhook::configure(&t.db, &settings, "agent-1", &request)
        .await
        .unwrap();

    let now = Utc::now();
    for agent in ["agent-1", "agent-2"] {
        let created = delivery::enqueue(
            &t.db,
            &WebhookSettings::default(),
            agent,
            &format!("evt_{agent}"),
            "run.completed",
            &json!({"n": 1}),
            now,
        )
        .await
        .unwrap();
        assert!(matches!(created, Enqueued::Created(_)));
    }
    let claims = delivery::claim_due(&t.db, &settings, now, 10)
        .await
        .unwrap();
    assert_eq!(claims.len(), 2);
    let body = br#"{"type":"run.completed","data":{"run_id":"run-1"}}"#.to_vec();
    for claim in &claims {
        let result = sign::prepare_request(&t.db, &settings, claim, body.clone(), now).await;
        if claim.delivery.agent_id == "agent-1" {
            let request = result.unwrap();
            assert_eq!(request.url.as_str(), "https://hooks.example.com/agent-1");
            assert_eq!(request.body, body, "the body is sent exactly as signed");
            assert_eq!(request.headers.webhook_id, "evt_agent-1");
            assert_eq!(
                request.headers.webhook_timestamp,
                now.timestamp().to_string()
            );
            assert!(!format!("{request:?}").contains(secret.expose()));
            // A receiver with the secret accepts it.
            signing::verify(
                &[&secret],
                request.headers.as_received(),
                &request.body,
                now.timestamp(),
                signing::DEFAULT_TOLERANCE,
            )
            .unwrap();
        } else {
            // agent-2 has no secret: never sent unsigned.
            assert!(
                matches!(result, Err(Error::NoSecret(ref id)) if id == "agent-2"),
                "{result:?}"
            );
        }
    }

    // A captured URL the current policy no longer allows is refused.
    let dev = WebhookSettings {
        url_policy: UrlPolicy::Development,
        ..settings.clone()
    };
    let local = WebhookConfig {
        webhook_url: "http://127.0.0.1:9/hook".into(),
        webhook_secret: None,
        webhook_events: vec![],
        webhook_enabled: true,
        webhook_filter: None,
        webhook_ordered: false,
    };
    webhook::configure(&t.db, &dev, "agent-1", &local)
        .await
        .unwrap();
    delivery::enqueue(
        &t.db,
        &WebhookSettings::default(),
        "agent-1",
        "evt_local",
        "run.completed",
        &json!({"n": 1}),
        now,
    )
    .await
    .unwrap();
    let claims = delivery::claim_due(&t.db, &settings, now, 10)
        .await
        .unwrap();
    assert_eq!(claims.len(), 1);
    let refused = sign::prepare_request(&t.db, &settings, &claims[0], body.clone(), now).await;
    assert!(matches!(refused, Err(Error::Url(_))), "{refused:?}");
    sign::prepare_request(&t.db, &dev, &claims[0], body, now)
        .await
        .unwrap();
}

backend_tests!(prepares_a_signed_request_or_refuses_to);
