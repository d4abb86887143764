//! Timestamps have one stored format per column, whoever writes them, and the host's
//! `agents.updated_at` is the host's: the webhook functions never write it.
//!
//! On SQLite a timestamp is text, and text order is what `claim_due`, `history` and `prune`
//! compare: every writer (the server default, the library's inserts and updates) must write
//! `YYYY-MM-DD HH:MM:SS.ffffff+00:00`, fixed width, so that text order is time order.

use agent_webhooks::delivery::retry::AttemptOutcome;
use agent_webhooks::delivery::{self, Enqueued};
use agent_webhooks::settings::WebhookSettings;
use agent_webhooks::webhook::{self, WebhookConfig};
use chrono::{Duration, TimeZone, Utc};
use integration_tests::{Backend, TestDb, backend_tests, enqueue_event, seed_agent};

/// The host's value, in the format SQLAlchemy writes on SQLite (naive, space, 6 digits).
const HOST_UPDATED_AT: &str = "2026-11-29 12:38:02.552702";

fn request(url: &str) -> WebhookConfig {
    serde_json::from_value(serde_json::json!({ "webhook_url": url })).unwrap()
}

async fn updated_at(t: &TestDb) -> String {
    let sql = match t.backend {
        Backend::Postgres => {
            "SELECT to_char(updated_at AT TIME ZONE 'UTC', \
                              'YYYY-MM-DD HH24:MI:SS.US') FROM agents WHERE id = 'agent-1'"
        }
        Backend::MySql => {
            "SELECT CAST(DATE_FORMAT(updated_at, '%Y-%m-%d %H:%i:%s.%f') AS CHAR) \
                           FROM agents WHERE id = 'agent-1'"
        }
        Backend::Sqlite => "SELECT updated_at FROM agents WHERE id = 'agent-1'",
    };
    t.strings(sql).await.remove(0)
}

async fn webhook_functions_leave_the_hosts_updated_at_alone(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    let literal = match backend {
        Backend::Postgres => format!("'{HOST_UPDATED_AT}+00:00'"),
        _ => format!("'{HOST_UPDATED_AT}'"),
    };
    t.exec(&format!(
        "UPDATE agents SET updated_at = {literal} WHERE id = 'agent-1'"
    ))
    .await;
    let settings = WebhookSettings::default();
    webhook::configure(
        &t.db,
        &settings,
        "agent-1",
        &request("https://hooks.example.com/a"),
    )
    .await
    .unwrap();
    // Twice each: a statement that changes nothing (MySQL counts changed rows unless told
    // otherwise) is still not "not found".
    for _ in 0..2 {
        webhook::disable(&t.db, "agent-1").await.unwrap();
    }
    for _ in 0..2 {
        webhook::clear(&t.db, "agent-1").await.unwrap();
    }
    assert_eq!(updated_at(&t).await, HOST_UPDATED_AT);
    let agent = webhook::get_agent(&t.db, "agent-1").await.unwrap();
    assert_eq!(
        agent.updated_at,
        Some(
            Utc.with_ymd_and_hms(2026, 11, 29, 12, 38, 2).unwrap()
                + Duration::microseconds(552_702)
        )
    );
}

backend_tests!(webhook_functions_leave_the_hosts_updated_at_alone);

/// `YYYY-MM-DD HH:MM:SS.ffffff+00:00`.
fn is_canonical(value: &str) -> bool {
    let b = value.as_bytes();
    b.len() == 32
        && value.ends_with("+00:00")
        && b.iter().enumerate().take(26).all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            _ => c.is_ascii_digit(),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_timestamps_have_one_format_whoever_writes_them() {
    let t = TestDb::migrated(Backend::Sqlite).await;
    seed_agent(&t, "agent-1", &[]).await; // created_at by the server default
    let settings = WebhookSettings::default();
    // Nanoseconds, and an instant on a whole second: both must come out six digits wide.
    let now = Utc::now();
    let whole = Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap();
    for (event, at) in [
        ("evt_1", now),
        ("evt_2", now),
        ("evt_3", whole),
        ("evt_4", now),
    ] {
        let created = enqueue_event(&t.db, "agent-1", event, "run.completed", at)
            .await
            .unwrap();
        assert!(matches!(created, Enqueued::Created(_)), "{created:?}");
    }
    // A row another writer inserted, created_at from the server default.
    t.exec(
        "INSERT INTO webhook_deliveries (id, organization_id, agent_id, event_id, event_type, \
         webhook_url) VALUES ('dlv-raw', 'org-1', 'agent-1', 'evt_raw', 'run.completed', \
         'https://hooks.example.com/agent-1')",
    )
    .await;

    let later = now + Duration::seconds(1);
    let claims = delivery::claim_due(&t.db, &settings, later, 10)
        .await
        .unwrap();
    assert_eq!(claims.len(), 4);
    let outcome = |code| AttemptOutcome::Status {
        code,
        retry_after: None,
    };
    for claim in &claims {
        let code = match claim.delivery.event_id.as_str() {
            "evt_1" => 200,
            "evt_2" => 503,
            "evt_3" => 400,
            _ => continue, // evt_4 stays leased
        };
        delivery::record_outcome(&t.db, &settings, claim, &outcome(code), later)
            .await
            .unwrap();
    }
    let failed = claims
        .iter()
        .find(|c| c.delivery.event_id == "evt_3")
        .unwrap();
    delivery::requeue(&t.db, &failed.delivery.id, later)
        .await
        .unwrap();

    let mut values = Vec::new();
    for (table, column) in [
        ("webhook_deliveries", "created_at"),
        ("webhook_deliveries", "delivered_at"),
        ("webhook_deliveries", "next_retry_at"),
        ("agents", "created_at"),
        ("organizations", "created_at"),
    ] {
        let found = t
            .strings(&format!(
                "SELECT {column} FROM {table} WHERE {column} IS NOT NULL"
            ))
            .await;
        assert!(!found.is_empty(), "{table}.{column} has values");
        values.extend(found.into_iter().map(|v| format!("{table}.{column} = {v}")));
    }
    let odd: Vec<&String> = values
        .iter()
        .filter(|v| !is_canonical(v.rsplit(" = ").next().unwrap()))
        .collect();
    assert!(
        odd.is_empty(),
        "not YYYY-MM-DD HH:MM:SS.ffffff+00:00: {odd:#?}"
    );

    // Text order is time order, so history pages in time order whoever wrote the row.
    let texts = t
        .strings("SELECT created_at FROM webhook_deliveries ORDER BY created_at, id")
        .await;
    let mut by_time = texts.clone();
    by_time.sort_by_key(|v| chrono::DateTime::parse_from_str(v, "%F %T%.f%:z").unwrap());
    assert_eq!(texts, by_time);
}
