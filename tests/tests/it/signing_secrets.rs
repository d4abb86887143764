//! Signing secrets with a lifecycle, on every backend: during a rotation's grace period a
//! receiver holding only the old secret and one holding only the new one both verify the same
//! delivery (our verifier and the PyPI `standardwebhooks` package); after expiry only the new
//! one does; revocation is immediate; a sealed previous secret does not open for another agent;
//! Ed25519 `v1a` signatures verify here and with Python's `cryptography`; master-key re-sealing
//! covers previous secrets and Ed25519 keys.

use std::time::Duration;

use agent_webhooks::Error;
use agent_webhooks::delivery::{self, Claim};
use agent_webhooks::dispatch::sign::{self, OutgoingRequest};
use agent_webhooks::secrets::ed25519::{self, PublicKey};
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::secrets::signing::{self, DEFAULT_TOLERANCE, VerifyError};
use agent_webhooks::secrets::webhook_secret::WebhookSecret;
use agent_webhooks::settings::WebhookSettings;
use agent_webhooks::webhook::signing_secrets::{
    self, KeyRole, MAX_PREVIOUS_SECRETS, SigningAlgorithm,
};
use agent_webhooks::webhook::{self, ResealReport};
use chrono::{DateTime, TimeDelta, Utc};
use integration_tests::{Backend, TestDb, backend_tests, enqueue_event, seed_webhook};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::standardwebhooks_compat::run_python_script;

const BODY: &[u8] = br#"{"type":"run.completed","data":{"run_id":"run-1"}}"#;

fn settings_with(entries: &str) -> WebhookSettings {
    WebhookSettings {
        keys: Some(KeyRing::parse(entries).unwrap()),
        ..WebhookSettings::default()
    }
}

fn key_entry(id: &str) -> String {
    KeyRing::generate_key_entry(id).unwrap()
}

/// Seeds `agent_id` with a generated secret, returned.
async fn agent_with_secret(
    t: &TestDb,
    settings: &WebhookSettings,
    agent_id: &str,
) -> WebhookSecret {
    let url = format!("https://hooks.example.com/{agent_id}");
    seed_webhook(t, settings, agent_id, &url).await
}

/// Enqueues one event for `agent_id` and claims it.
async fn claim_one(t: &TestDb, settings: &WebhookSettings, agent_id: &str) -> Claim {
    let now = Utc::now();
    enqueue_event(
        &t.db,
        agent_id,
        &format!("evt_{agent_id}"),
        "run.completed",
        now,
    )
    .await
    .unwrap();
    let mut claims = delivery::claim_due(&t.db, settings, now, 10).await.unwrap();
    assert_eq!(claims.len(), 1);
    claims.pop().unwrap()
}

async fn request_at(
    t: &TestDb,
    settings: &WebhookSettings,
    claim: &Claim,
    at: DateTime<Utc>,
) -> OutgoingRequest {
    sign::prepare_request(&t.db, settings, claim, BODY.to_vec(), at)
        .await
        .unwrap()
}

/// Whether a receiver holding only `secret` accepts `request`, checked at its own timestamp.
fn verifies(secret: &WebhookSecret, request: &OutgoingRequest) -> Result<(), VerifyError> {
    let at = request.headers.webhook_timestamp.parse().unwrap();
    signing::verify(
        &[secret],
        request.headers.as_received(),
        &request.body,
        at,
        DEFAULT_TOLERANCE,
    )
}

fn entries(request: &OutgoingRequest) -> Vec<String> {
    request
        .headers
        .webhook_signature
        .split(' ')
        .map(str::to_owned)
        .collect()
}

async fn previous_rows(t: &TestDb) -> i64 {
    t.count("SELECT COUNT(*) FROM webhook_previous_secrets")
        .await
}

/// Python's `standardwebhooks` verifies `request` with each secret; `expect` per secret.
fn python_verifies(request: &OutgoingRequest, secrets: &[(&str, &WebhookSecret, &str)]) {
    let cases: Vec<Value> = secrets
        .iter()
        .map(|(name, secret, expect)| {
            json!({
                "name": name,
                "secret": secret.expose(),
                "id": request.headers.webhook_id,
                "timestamp": request.headers.webhook_timestamp.parse::<i64>().unwrap(),
                "body": std::str::from_utf8(&request.body).unwrap(),
                "signature": request.headers.webhook_signature,
                "expect": expect,
            })
        })
        .collect();
    let output = run_python_script("standardwebhooks_compat.py", &[], &Value::Array(cases));
    assert!(
        output.status.success(),
        "standardwebhooks disagrees:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn both_secrets_verify_during_grace_and_only_the_new_after(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let settings = settings_with(&key_entry("k1"));
    let old = agent_with_secret(&t, &settings, "agent-1").await;
    let claim = claim_one(&t, &settings, "agent-1").await;
    let now = Utc::now();

    let rotated = signing_secrets::rotate_signing_secret(&t.db, &settings, "agent-1", None, now)
        .await
        .unwrap();
    let new = rotated.secret;
    assert_eq!(rotated.key_id, signing::secret_key_id(&new));
    let kept = rotated.previous.expect("the old secret is kept");
    assert_eq!(kept.key_id, signing::secret_key_id(&old));
    let expires = kept.expires_at.unwrap();
    // The default grace: the settings' 24 hours.
    assert!(
        (expires - now - TimeDelta::hours(24))
            .num_milliseconds()
            .abs()
            <= 1
    );

    // The same delivery verifies for a receiver with only the old and one with only the new.
    let during = request_at(&t, &settings, &claim, now).await;
    assert_eq!(entries(&during).len(), 2, "{:?}", entries(&during));
    verifies(&old, &during).unwrap();
    verifies(&new, &during).unwrap();
    let stranger = WebhookSecret::generate().unwrap();
    assert_eq!(
        verifies(&stranger, &during),
        Err(VerifyError::NoMatchingSignature)
    );
    python_verifies(
        &during,
        &[
            ("old secret only", &old, "accept"),
            ("new secret only", &new, "accept"),
            ("another secret", &stranger, "reject"),
        ],
    );

    let view = signing_secrets::signing_keys(&t.db, &settings, "agent-1", now)
        .await
        .unwrap();
    let shown: Vec<_> = view
        .keys
        .iter()
        .map(|k| (k.key_id.clone(), k.algorithm, k.role))
        .collect();
    assert_eq!(
        shown,
        [
            (
                signing::secret_key_id(&new),
                SigningAlgorithm::HmacSha256,
                KeyRole::Primary
            ),
            (
                signing::secret_key_id(&old),
                SigningAlgorithm::HmacSha256,
                KeyRole::Previous
            ),
        ]
    );
    let serialized = serde_json::to_string(&view).unwrap();
    assert!(!serialized.contains(new.expose()) && !serialized.contains(old.expose()));

    // Just before the expiry the old secret still signs; from the expiry on it never does.
    let last_moment = expires - TimeDelta::seconds(1);
    verifies(&old, &request_at(&t, &settings, &claim, last_moment).await).unwrap();
    let after = request_at(&t, &settings, &claim, expires).await;
    assert_eq!(entries(&after).len(), 1);
    assert_eq!(
        verifies(&old, &after),
        Err(VerifyError::NoMatchingSignature)
    );
    verifies(&new, &after).unwrap();
    let view = signing_secrets::signing_keys(&t.db, &settings, "agent-1", expires)
        .await
        .unwrap();
    assert_eq!(view.keys.len(), 1);

    // The expired row goes with the next write (another rotation) ...
    assert_eq!(previous_rows(&t).await, 1);
    let third = signing_secrets::rotate_signing_secret(
        &t.db,
        &settings,
        "agent-1",
        Some(Duration::from_secs(3600)),
        expires,
    )
    .await
    .unwrap();
    assert_eq!(previous_rows(&t).await, 1, "the expired one is gone");
    let request = request_at(&t, &settings, &claim, expires).await;
    verifies(&new, &request).unwrap();
    verifies(&third.secret, &request).unwrap();
    assert_eq!(
        verifies(&old, &request),
        Err(VerifyError::NoMatchingSignature)
    );
    // ... or with a prune.
    let later = expires + TimeDelta::hours(1);
    assert_eq!(
        signing_secrets::prune_expired(&t.db, later).await.unwrap(),
        1
    );
    assert_eq!(previous_rows(&t).await, 0);
}

async fn revoking_stops_previous_secrets_at_once(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let settings = settings_with(&key_entry("k1"));
    let old = agent_with_secret(&t, &settings, "agent-1").await;
    let claim = claim_one(&t, &settings, "agent-1").await;
    let now = Utc::now();
    let new = signing_secrets::rotate_signing_secret(&t.db, &settings, "agent-1", None, now)
        .await
        .unwrap()
        .secret;
    verifies(&old, &request_at(&t, &settings, &claim, now).await).unwrap();

    assert_eq!(
        signing_secrets::revoke_previous(&t.db, "agent-1")
            .await
            .unwrap(),
        1
    );
    let request = request_at(&t, &settings, &claim, now).await;
    assert_eq!(
        verifies(&old, &request),
        Err(VerifyError::NoMatchingSignature)
    );
    verifies(&new, &request).unwrap();
    assert!(matches!(
        signing_secrets::revoke_previous(&t.db, "nobody").await,
        Err(Error::AgentNotFound(_))
    ));

    // Clearing the webhook takes previous secrets and the Ed25519 key with the primary.
    signing_secrets::rotate_signing_secret(&t.db, &settings, "agent-1", None, now)
        .await
        .unwrap();
    signing_secrets::generate_ed25519_key(&t.db, &settings, "agent-1")
        .await
        .unwrap();
    webhook::clear(&t.db, "agent-1").await.unwrap();
    assert_eq!(previous_rows(&t).await, 0);
    assert_eq!(
        t.count("SELECT COUNT(*) FROM agents WHERE webhook_ed25519_secret_key IS NOT NULL OR webhook_ed25519_public_key IS NOT NULL")
            .await,
        0
    );
    let view = signing_secrets::signing_keys(&t.db, &settings, "agent-1", now)
        .await
        .unwrap();
    assert!(view.keys.is_empty());
}

async fn grace_bounds_and_at_most_ten_previous_secrets(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let k1 = key_entry("k1");
    let settings = settings_with(&k1);
    let old = agent_with_secret(&t, &settings, "agent-1").await;
    let claim = claim_one(&t, &settings, "agent-1").await;
    let now = Utc::now();

    let too_long = Duration::from_secs(7 * 24 * 3600 + 1);
    let err =
        signing_secrets::rotate_signing_secret(&t.db, &settings, "agent-1", Some(too_long), now)
            .await
            .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidGrace {
                got_secs: 604_801,
                ..
            }
        ),
        "{err}"
    );
    verifies(&old, &request_at(&t, &settings, &claim, now).await).unwrap();

    // No grace: the old secret stops at once and nothing is kept.
    let rotated = signing_secrets::rotate_signing_secret(
        &t.db,
        &settings,
        "agent-1",
        Some(Duration::ZERO),
        now,
    )
    .await
    .unwrap();
    assert!(rotated.previous.is_none());
    let no_grace = rotated.secret;
    assert_eq!(previous_rows(&t).await, 0);
    let request = request_at(&t, &settings, &claim, now).await;
    assert_eq!(
        verifies(&old, &request),
        Err(VerifyError::NoMatchingSignature)
    );

    // The settings' grace (WEBHOOK_SIGNING_GRACE_SECS) applies when none is named.
    let settings = WebhookSettings::from_lookup(|var| match var {
        "WEBHOOK_SECRET_KEYS" => Some(k1.clone()),
        "WEBHOOK_SIGNING_GRACE_SECS" => Some("7200".to_owned()),
        _ => None,
    })
    .unwrap();
    let rotated = signing_secrets::rotate_signing_secret(&t.db, &settings, "agent-1", None, now)
        .await
        .unwrap();
    assert_eq!(
        rotated.previous.unwrap().expires_at.unwrap().timestamp(),
        (now + TimeDelta::hours(2)).timestamp()
    );

    // Twelve more rotations: ten previous secrets are kept, those that expire last.
    let mut secrets = vec![rotated.secret];
    for i in 0..12 {
        let grace = Duration::from_secs(3600 + i * 60);
        let rotated =
            signing_secrets::rotate_signing_secret(&t.db, &settings, "agent-1", Some(grace), now)
                .await
                .unwrap();
        secrets.push(rotated.secret);
    }
    assert_eq!(previous_rows(&t).await, MAX_PREVIOUS_SECRETS as i64);
    let request = request_at(&t, &settings, &claim, now).await;
    assert_eq!(entries(&request).len(), 1 + MAX_PREVIOUS_SECRETS);
    // Kept: the one with two hours of grace and the nine latest hour-long ones, next to the
    // primary (the last); dropped: the three that expire first.
    verifies(&no_grace, &request).unwrap();
    for (i, secret) in secrets.iter().enumerate() {
        let signs = verifies(secret, &request).is_ok();
        assert_eq!(signs, i >= 3, "secret {i}");
    }
}

async fn a_previous_secret_copied_to_another_agent_does_not_open(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let settings = settings_with(&key_entry("k1"));
    agent_with_secret(&t, &settings, "agent-1").await;
    agent_with_secret(&t, &settings, "agent-2").await;
    let claim = claim_one(&t, &settings, "agent-2").await;
    let now = Utc::now();
    signing_secrets::rotate_signing_secret(&t.db, &settings, "agent-1", None, now)
        .await
        .unwrap();
    let sealed = t
        .strings("SELECT sealed_secret FROM webhook_previous_secrets WHERE agent_id = 'agent-1'")
        .await
        .pop()
        .unwrap();
    let keys = settings.keys.as_ref().unwrap();
    signing_secrets::open_previous(keys, "agent-1", &sealed).unwrap();
    assert!(matches!(
        signing_secrets::open_previous(keys, "agent-2", &sealed),
        Err(Error::Sealed { .. })
    ));

    // Copied into agent-2's rows, it makes agent-2's deliveries fail rather than sign.
    t.exec(
        "INSERT INTO webhook_previous_secrets (agent_id, key_id, sealed_secret, expires_at, created_at) \
         SELECT 'agent-2', key_id, sealed_secret, expires_at, created_at \
         FROM webhook_previous_secrets WHERE agent_id = 'agent-1'",
    )
    .await;
    let err = sign::prepare_request(&t.db, &settings, &claim, BODY.to_vec(), now)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Sealed { ref agent_id, .. } if agent_id == "agent-2"),
        "{err}"
    );
    assert!(!err.to_string().contains(&sealed));
}

async fn ed25519_signatures_verify_here_and_in_python(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let settings = settings_with(&key_entry("k1"));
    let secret = agent_with_secret(&t, &settings, "agent-1").await;
    let claim = claim_one(&t, &settings, "agent-1").await;
    let now = Utc::now();

    let key = signing_secrets::generate_ed25519_key(&t.db, &settings, "agent-1")
        .await
        .unwrap();
    let whpk = key.public_key.clone().unwrap();
    let public = PublicKey::parse(&whpk).unwrap();
    assert_eq!(key.key_id, public.key_id());
    // The private key is sealed at rest, the public key stored as it is shown.
    let stored = t
        .strings("SELECT webhook_ed25519_secret_key FROM agents WHERE id = 'agent-1'")
        .await
        .pop()
        .unwrap();
    assert_eq!(KeyRing::key_id_of(&stored).unwrap(), "k1");
    assert!(!stored.contains("whsk_"));
    let view = signing_secrets::signing_keys(&t.db, &settings, "agent-1", now)
        .await
        .unwrap();
    assert_eq!(view.keys.last(), Some(&key));

    let request = request_at(&t, &settings, &claim, now).await;
    let parts = entries(&request);
    assert_eq!(parts.len(), 2);
    assert!(parts[0].starts_with("v1,") && parts[1].starts_with("v1a,"));
    let at = now.timestamp();
    signing::verify_v1a(
        &[&public],
        request.headers.as_received(),
        &request.body,
        at,
        DEFAULT_TOLERANCE,
    )
    .unwrap();
    verifies(&secret, &request).unwrap();
    let other = ed25519::SecretKey::generate().unwrap().public_key();
    assert_eq!(
        signing::verify_v1a(
            &[&other],
            request.headers.as_received(),
            &request.body,
            at,
            DEFAULT_TOLERANCE
        ),
        Err(VerifyError::NoMatchingSignature)
    );

    // OpenSSL's Ed25519, through Python's `cryptography`, accepts our signature with the
    // public key as shown, and rejects it for another body or key.
    let case = |name: &str, key: &str, body: &str, expect: &str| {
        json!({
            "name": name,
            "public_key": key,
            "id": request.headers.webhook_id,
            "timestamp": at,
            "body": body,
            "signature": request.headers.webhook_signature,
            "expect": expect,
        })
    };
    let body = std::str::from_utf8(&request.body).unwrap();
    let cases = json!([
        case("our v1a signature", &whpk, body, "accept"),
        case("altered body", &whpk, "{}", "reject"),
        case("another key", &other.to_string(), body, "reject"),
    ]);
    let output = run_python_script("ed25519_compat.py", &[], &cases);
    assert!(
        output.status.success(),
        "cryptography disagrees:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // Removing the key pair stops v1a signatures.
    signing_secrets::remove_ed25519_key(&t.db, "agent-1")
        .await
        .unwrap();
    let request = request_at(&t, &settings, &claim, now).await;
    assert_eq!(entries(&request).len(), 1);
}

/// Python signs with our `whsk_` key and derives the `whpk_` key: both agree with ours.
#[test]
fn we_accept_python_ed25519_signatures_and_agree_on_the_public_key() {
    let key = ed25519::SecretKey::generate().unwrap();
    let now = Utc::now().timestamp();
    let cases = json!([{
        "name": "python signs",
        "secret_key": key.expose().expose_secret(),
        "id": "msg_1",
        "timestamp": now,
        "body": "{\"a\": 1}",
    }]);
    let output = run_python_script("ed25519_compat.py", &["--sign"], &cases);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let signed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let signed = &signed[0];
    assert_eq!(signed["public_key"], key.public_key().to_string());
    let headers = signing::ReceivedHeaders {
        id: "msg_1",
        timestamp: &now.to_string(),
        signature: signed["signature"].as_str().unwrap(),
    };
    signing::verify_v1a(
        &[&key.public_key()],
        headers,
        b"{\"a\": 1}",
        now,
        DEFAULT_TOLERANCE,
    )
    .unwrap();
    assert_eq!(
        signing::verify_v1a(&[&key.public_key()], headers, b"{}", now, DEFAULT_TOLERANCE),
        Err(VerifyError::NoMatchingSignature)
    );
}

async fn master_key_reseal_covers_previous_secrets_and_ed25519_keys(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let k1 = key_entry("k1");
    let settings = settings_with(&k1);
    let old = agent_with_secret(&t, &settings, "agent-1").await;
    let claim = claim_one(&t, &settings, "agent-1").await;
    let now = Utc::now();
    let new = signing_secrets::rotate_signing_secret(&t.db, &settings, "agent-1", None, now)
        .await
        .unwrap()
        .secret;
    let key = signing_secrets::generate_ed25519_key(&t.db, &settings, "agent-1")
        .await
        .unwrap();

    let k2 = key_entry("k2");
    let both = settings_with(&format!("{k2},{k1}"));
    let report = webhook::reseal_secrets(&t.db, &both, 2, |_| {})
        .await
        .unwrap();
    assert_eq!(
        report,
        ResealReport {
            examined: 3,
            resealed: 3,
            already_current: 0,
            skipped: 0
        }
    );
    for sealed in t
        .strings(
            "SELECT sealed_secret FROM webhook_previous_secrets \
             UNION ALL SELECT webhook_ed25519_secret_key FROM agents WHERE id = 'agent-1' \
             UNION ALL SELECT webhook_secret FROM agents WHERE id = 'agent-1'",
        )
        .await
    {
        assert_eq!(KeyRing::key_id_of(&sealed).unwrap(), "k2");
    }

    // With k1 retired, every key still signs.
    let only_k2 = settings_with(&k2);
    let request = request_at(&t, &only_k2, &claim, now).await;
    verifies(&old, &request).unwrap();
    verifies(&new, &request).unwrap();
    signing::verify_v1a(
        &[&PublicKey::parse(key.public_key.as_deref().unwrap()).unwrap()],
        request.headers.as_received(),
        &request.body,
        now.timestamp(),
        DEFAULT_TOLERANCE,
    )
    .unwrap();
}

backend_tests!(
    both_secrets_verify_during_grace_and_only_the_new_after,
    revoking_stops_previous_secrets_at_once,
    grace_bounds_and_at_most_ten_previous_secrets,
    a_previous_secret_copied_to_another_agent_does_not_open,
    ed25519_signatures_verify_here_and_in_python,
    master_key_reseal_covers_previous_secrets_and_ed25519_keys,
);
