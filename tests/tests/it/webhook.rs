//! Webhook configuration on SQLite, PostgreSQL and MariaDB: validation before writing, secrets
//! sealed at rest and never shown, key rotation.

use std::io::Write;
use std::sync::{Arc, Mutex};

use agent_webhooks::Error;
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::secrets::signing;
use agent_webhooks::secrets::webhook_secret::WebhookSecret;
use agent_webhooks::settings::WebhookSettings;
use agent_webhooks::webhook::url_policy::UrlPolicy;
use agent_webhooks::webhook::{self, WebhookConfig};
use integration_tests::{Backend, TestDb, backend_tests, seed_agent};
use secrecy::SecretString;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn settings_with(keys: &[&str]) -> WebhookSettings {
    let entries: Vec<String> = keys
        .iter()
        .map(|id| KeyRing::generate_key_entry(id).unwrap())
        .collect();
    WebhookSettings {
        keys: Some(KeyRing::parse(&entries.join(",")).unwrap()),
        ..WebhookSettings::default()
    }
}

fn request(url: &str, secret: Option<&str>, events: &[&str]) -> WebhookConfig {
    serde_json::from_value(serde_json::json!({
        "webhook_url": url,
        "webhook_secret": secret,
        "webhook_events": events,
    }))
    .unwrap()
}

async fn migrated(backend: Backend) -> TestDb {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    seed_agent(&t, "agent-2", &[]).await;
    t
}

/// A `tracing` subscriber that writes into a buffer, to prove what is (not) logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn set_get_disable_clear_and_not_found(backend: Backend) {
    let t = migrated(backend).await;
    let settings = settings_with(&["k1"]);

    let view = webhook::configure(
        &t.db,
        &settings,
        "agent-1",
        &request(
            "https://hooks.example.com/a",
            Some(SECRET),
            &[" Run.* ", "agent.created", "run.*"],
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        view.webhook_url.as_deref(),
        Some("https://hooks.example.com/a")
    );
    assert!(view.has_secret && view.webhook_enabled && !view.all_events);
    assert_eq!(view.webhook_events, vec!["run.*", "agent.created"]);
    assert_eq!(webhook::get(&t.db, "agent-1").await.unwrap(), view);

    let agent = webhook::get_agent(&t.db, "agent-1").await.unwrap();
    assert_eq!(agent.webhook, view);
    let json = serde_json::to_string(&agent).unwrap();
    assert!(
        json.contains("\"has_secret\":true") && !json.contains("whsec_"),
        "{json}"
    );

    // The secret is stored (sealed): its key id is the one of SECRET.
    assert_eq!(
        stored_key_id(&t, &settings, "agent-1").await.unwrap(),
        Some(secret_key_id(SECRET))
    );

    // Setting again without a secret keeps it; an empty filter means all events.
    let view = webhook::configure(
        &t.db,
        &settings,
        "agent-1",
        &request("https://hooks.example.com/b", None, &[]),
    )
    .await
    .unwrap();
    assert!(view.has_secret && view.all_events);
    assert_eq!(
        stored_key_id(&t, &settings, "agent-1").await.unwrap(),
        Some(secret_key_id(SECRET))
    );

    let view = webhook::disable(&t.db, "agent-1").await.unwrap();
    assert!(!view.webhook_enabled && view.has_secret);
    let view = webhook::clear(&t.db, "agent-1").await.unwrap();
    assert_eq!(
        (view.webhook_url, view.has_secret, view.webhook_enabled),
        (None, false, false)
    );
    assert_eq!(stored_key_id(&t, &settings, "agent-1").await.unwrap(), None);

    for result in [
        webhook::get(&t.db, "agent-404").await,
        webhook::disable(&t.db, "agent-404").await,
        webhook::clear(&t.db, "agent-404").await,
        webhook::configure(
            &t.db,
            &settings,
            "agent-404",
            &request("https://hooks.example.com/a", None, &[]),
        )
        .await,
    ] {
        assert!(
            matches!(result, Err(Error::AgentNotFound(ref id)) if id == "agent-404"),
            "{result:?}"
        );
    }
}

async fn invalid_input_writes_nothing(backend: Backend) {
    let t = migrated(backend).await;
    let settings = settings_with(&["k1"]);
    let before = webhook::get(&t.db, "agent-1").await.unwrap();
    let cases: Vec<(WebhookConfig, &str)> = vec![
        (request("http://hooks.example.com/a", None, &[]), "scheme"),
        (request("https://127.0.0.1/a", None, &[]), "loopback"),
        (
            request("https://169.254.169.254/latest", None, &[]),
            "link-local",
        ),
        (
            request("https://hooks.example.com/a", None, &["run.exploded"]),
            "run.exploded",
        ),
        (
            request("https://hooks.example.com/a", Some("short"), &[]),
            "webhook_secret",
        ),
    ];
    for (config, expected) in cases {
        let err = webhook::configure(&t.db, &settings, "agent-1", &config)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
    assert_eq!(webhook::get(&t.db, "agent-1").await.unwrap(), before);

    // Development policy is explicit and allows loopback http targets.
    let dev = WebhookSettings {
        url_policy: UrlPolicy::Development,
        ..settings
    };
    webhook::configure(
        &t.db,
        &dev,
        "agent-1",
        &request("http://127.0.0.1:8080/hook", None, &[]),
    )
    .await
    .unwrap();

    // Without a key, a secret is refused rather than stored in plaintext.
    let no_keys = WebhookSettings::default();
    let err = webhook::configure(
        &t.db,
        &no_keys,
        "agent-2",
        &request("https://hooks.example.com/a", Some(SECRET), &[]),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::NoEncryptionKey), "{err}");
    assert!(!webhook::get(&t.db, "agent-2").await.unwrap().has_secret);
}

async fn plaintext_secret_is_nowhere(backend: Backend) {
    let t = migrated(backend).await;
    let settings = settings_with(&["k1"]);
    let secret = WebhookSecret::generate().unwrap();
    let plain = secret.expose().to_owned();
    let body = WebhookConfig {
        webhook_url: "https://hooks.example.com/a".into(),
        webhook_secret: Some(SecretString::from(plain.clone())),
        webhook_events: vec![],
        webhook_enabled: true,
        webhook_filter: None,
        webhook_ordered: false,
    };
    // Debug of the request, the secret and the settings never show it.
    for debug in [
        format!("{body:?}"),
        format!("{secret:?}"),
        format!("{settings:?}"),
    ] {
        assert!(!debug.contains(&plain), "{debug}");
    }

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // tracing caches each callsite's interest for the whole process, asked of the subscriber
    // of whichever thread reaches it first: a sibling test, with none, would cache "never" and
    // this capture would stay empty. A global subscriber that takes everything and writes
    // nowhere keeps every callsite live; the rebuild repairs one cached before it.
    static EVERY_CALLSITE_LIVE: std::sync::Once = std::sync::Once::new();
    EVERY_CALLSITE_LIVE.call_once(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    });
    let guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    webhook::configure(&t.db, &settings, "agent-1", &body)
        .await
        .unwrap();
    let view = webhook::get(&t.db, "agent-1").await.unwrap();
    let revealed = stored_key_id(&t, &settings, "agent-1").await.unwrap();
    drop(guard);
    assert_eq!(revealed, Some(secret_key_id(&plain)));
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("webhook configured"),
        "the capture works: {logs}"
    );
    assert!(!logs.contains(&plain), "{logs}");
    assert!(!serde_json::to_string(&view).unwrap().contains(&plain));

    // The stored column is an envelope naming the key, not the secret.
    let stored = t
        .strings("SELECT webhook_secret FROM agents WHERE id = 'agent-1'")
        .await;
    assert!(stored[0].starts_with("v1.k1."), "{stored:?}");
    assert!(!stored[0].contains(&plain));
    let all_text = t
        .strings("SELECT COALESCE(webhook_url, '') || COALESCE(webhook_secret, '') FROM agents")
        .await
        .join("\n");
    assert!(!all_text.contains(&plain) && !all_text.contains(&plain["whsec_".len()..]));

    // A ciphertext copied to another agent does not open there.
    t.exec(&format!(
        "UPDATE agents SET webhook_secret = '{}' WHERE id = 'agent-2'",
        stored[0]
    ))
    .await;
    let err = stored_key_id(&t, &settings, "agent-2").await.unwrap_err();
    assert!(matches!(err, Error::Sealed { .. }), "{err}");

    if backend == Backend::Sqlite {
        // And not in the database file's bytes either (after a checkpoint).
        t.exec("PRAGMA wal_checkpoint(TRUNCATE)").await;
        let path = t
            .url
            .trim_start_matches("sqlite://")
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        for file in [path.clone(), format!("{path}-wal")] {
            if let Ok(bytes) = std::fs::read(&file) {
                let needle = plain.as_bytes();
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "plaintext in {file}"
                );
            }
        }
    }
}

async fn rotation_reseals_every_secret_and_is_idempotent(backend: Backend) {
    let t = migrated(backend).await;
    for i in 3..12 {
        seed_agent(&t, &format!("agent-{i}"), &[]).await;
    }
    let k1 = KeyRing::generate_key_entry("k1").unwrap();
    let k2 = KeyRing::generate_key_entry("k2").unwrap();
    let ring = |entries: &str| WebhookSettings {
        keys: Some(KeyRing::parse(entries).unwrap()),
        ..WebhookSettings::default()
    };
    let old = ring(&k1);
    let secret = |i: usize| format!("a user secret for agent number {i}");
    let agents: Vec<String> = (1..12).map(|i| format!("agent-{i}")).collect();
    for (i, agent) in agents.iter().enumerate() {
        webhook::configure(
            &t.db,
            &old,
            agent,
            &request("https://hooks.example.com/a", Some(&secret(i)), &[]),
        )
        .await
        .unwrap();
    }
    // The new ring: k2 current, k1 still able to open.
    let new = ring(&format!("{k2},{k1}"));
    let mut progress = Vec::new();
    let report = webhook::reseal_secrets(&t.db, &new, 4, |r| progress.push(r.examined))
        .await
        .unwrap();
    assert_eq!(progress, [4, 8, 11], "one call per batch");
    assert_eq!(
        (report.examined, report.resealed, report.skipped),
        (11, 11, 0)
    );
    let again = webhook::reseal_secrets(&t.db, &new, 4, |_| {})
        .await
        .unwrap();
    assert_eq!(
        (again.examined, again.resealed),
        (11, 0),
        "safe to run twice"
    );
    let stored = t
        .strings("SELECT webhook_secret FROM agents WHERE webhook_secret IS NOT NULL")
        .await;
    assert_eq!(stored.len(), 11);
    assert!(stored.iter().all(|s| s.starts_with("v1.k2.")), "{stored:?}");
    // Every secret still opens, with only k2 now.
    let only_k2 = ring(&k2);
    for (i, agent) in agents.iter().enumerate() {
        let revealed = stored_key_id(&t, &only_k2, agent).await.unwrap();
        assert_eq!(revealed, Some(secret_key_id(&secret(i))));
    }
}

backend_tests!(
    set_get_disable_clear_and_not_found,
    invalid_input_writes_nothing,
    plaintext_secret_is_nowhere,
    rotation_reseals_every_secret_and_is_idempotent,
);

/// The key id of `agent`'s stored primary secret, opened with the settings' key ring (the
/// secret itself never leaves the service).
async fn stored_key_id(
    t: &TestDb,
    settings: &WebhookSettings,
    agent: &str,
) -> Result<Option<String>, Error> {
    let keys = agent_webhooks::webhook::signing_secrets::signing_keys(
        &t.db,
        settings,
        agent,
        chrono::Utc::now(),
    )
    .await?;
    Ok(keys
        .keys
        .into_iter()
        .find(|k| {
            k.algorithm == agent_webhooks::webhook::signing_secrets::SigningAlgorithm::HmacSha256
        })
        .map(|k| k.key_id))
}

fn secret_key_id(secret: &str) -> String {
    signing::secret_key_id(
        &WebhookSecret::parse(secrecy::SecretString::from(secret.to_owned())).unwrap(),
    )
}
