//! An agent the platform soft-deleted (`is_deleted = true`) is gone for the webhook feature:
//! configuration answers not found, enqueue skips it, and a delivery enqueued before the
//! deletion is not sent but recorded as failed with the reason. On every backend.

use agent_webhooks::Error;
use agent_webhooks::delivery::{self, DeliveryState, Enqueued, SkipReason};
use agent_webhooks::dispatch::sign;
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::secrets::webhook_secret::WebhookSecret;
use agent_webhooks::settings::WebhookSettings;
use agent_webhooks::webhook::{self, WebhookConfig};
use chrono::Utc;
use integration_tests::{Backend, TestDb, backend_tests, enqueue_event, seed_agent};
use secrecy::SecretString;

fn config() -> WebhookConfig {
    WebhookConfig {
        webhook_url: "https://hooks.example.com/agent-1".into(),
        webhook_secret: Some(SecretString::from(
            WebhookSecret::generate().unwrap().expose().to_owned(),
        )),
        webhook_events: vec![],
        webhook_enabled: true,
        webhook_filter: None,
        webhook_ordered: false,
    }
}

/// Default settings with a key ring, so that secrets can be sealed.
fn settings() -> WebhookSettings {
    WebhookSettings {
        keys: Some(KeyRing::parse(&KeyRing::generate_key_entry("k1").unwrap()).unwrap()),
        ..WebhookSettings::default()
    }
}

fn is_not_found<T: std::fmt::Debug>(result: &Result<T, Error>) -> bool {
    matches!(result, Err(Error::AgentNotFound(id)) if id == "agent-1")
}

async fn soft_deleted_agents_are_gone(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    seed_agent(&t, "agent-2", &[]).await;
    let settings = settings();
    webhook::configure(&t.db, &settings, "agent-1", &config())
        .await
        .unwrap();
    let now = Utc::now();
    // Enqueued while the agent was live: the worker must still not send it afterwards.
    let before = enqueue_event(&t.db, "agent-1", "evt_before", "run.completed", now)
        .await
        .unwrap();
    assert!(matches!(before, Enqueued::Created(_)), "{before:?}");

    t.exec("UPDATE agents SET is_deleted = true WHERE id = 'agent-1'")
        .await;

    let configured = webhook::configure(&t.db, &settings, "agent-1", &config()).await;
    assert!(is_not_found(&configured), "configure: {configured:?}");
    let got = webhook::get(&t.db, "agent-1").await;
    assert!(is_not_found(&got), "get: {got:?}");
    let agent = webhook::get_agent(&t.db, "agent-1").await;
    assert!(is_not_found(&agent), "get_agent: {agent:?}");
    let disabled = webhook::disable(&t.db, "agent-1").await;
    assert!(is_not_found(&disabled), "disable: {disabled:?}");
    let cleared = webhook::clear(&t.db, "agent-1").await;
    assert!(is_not_found(&cleared), "clear: {cleared:?}");
    let keys =
        agent_webhooks::webhook::signing_secrets::signing_keys(&t.db, &settings, "agent-1", now)
            .await;
    assert!(is_not_found(&keys), "signing_keys: {keys:?}");
    // disable/clear changed nothing on the deleted row.
    assert_eq!(
        t.count(
            "SELECT COUNT(*) FROM agents WHERE id = 'agent-1' AND webhook_enabled = true \
             AND webhook_url IS NOT NULL"
        )
        .await,
        1
    );

    let skipped = enqueue_event(&t.db, "agent-1", "evt_after", "run.completed", now)
        .await
        .unwrap();
    assert_eq!(skipped, Enqueued::Skipped(SkipReason::AgentDeleted));
    // A live agent is unaffected.
    let live = enqueue_event(&t.db, "agent-2", "evt_live", "run.completed", now)
        .await
        .unwrap();
    assert!(matches!(live, Enqueued::Created(_)), "{live:?}");

    // The delivery from before the deletion is claimed like any other, refused by the sender,
    // and recorded as failed with the reason, so it is neither sent nor retried.
    let claims = delivery::claim_due(&t.db, &settings, now, 10)
        .await
        .unwrap();
    let claim = claims
        .iter()
        .find(|c| c.delivery.agent_id == "agent-1")
        .expect("the earlier delivery is claimed");
    let refused = sign::prepare_request(&t.db, &settings, claim, b"{}".to_vec(), now).await;
    assert!(is_not_found(&refused), "prepare_request: {refused:?}");
    let Err(error) = refused else { unreachable!() };
    delivery::abandon(&t.db, claim, &error.to_string())
        .await
        .unwrap();
    let stored = delivery::get(&t.db, &claim.delivery.id, now).await.unwrap();
    assert_eq!(stored.state, DeliveryState::Failed);
    assert_eq!(
        stored.error_message.as_deref(),
        Some("agent `agent-1` not found")
    );
    // The claim is spent: a second report of it is stale.
    let again = delivery::abandon(&t.db, claim, "again").await;
    assert!(matches!(again, Err(Error::StaleClaim { .. })), "{again:?}");
}

backend_tests!(soft_deleted_agents_are_gone);

/// A host table adopted from another tool may leave `is_deleted` NULL: such an agent is live
/// for every function, configuration, signing-secret rotation and Ed25519 keys alike.
async fn null_is_deleted_is_live(backend: Backend) {
    use agent_webhooks::webhook::signing_secrets;
    use migration::{Migrator, MigratorTrait};
    let t = TestDb::fresh(backend).await;
    crate::host_schema::create_host_tables(&t, "boolean NULL").await;
    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(
        t.count("SELECT COUNT(*) FROM agents WHERE id = 'agent-1' AND is_deleted IS NULL")
            .await,
        1
    );
    let settings = settings();
    webhook::configure(&t.db, &settings, "agent-1", &config())
        .await
        .unwrap();
    let now = Utc::now();
    signing_secrets::rotate_signing_secret(&t.db, &settings, "agent-1", None, now)
        .await
        .expect("rotation of a live agent with a NULL is_deleted");
    signing_secrets::generate_ed25519_key(&t.db, &settings, "agent-1")
        .await
        .expect("an Ed25519 key for a live agent with a NULL is_deleted");
    let keys = signing_secrets::signing_keys(&t.db, &settings, "agent-1", now)
        .await
        .unwrap();
    assert_eq!(keys.keys.len(), 3, "{keys:?}");
    let created = enqueue_event(&t.db, "agent-1", "evt_1", "run.completed", now)
        .await
        .unwrap();
    assert!(matches!(created, Enqueued::Created(_)), "{created:?}");
}

backend_tests!(null_is_deleted_is_live);
