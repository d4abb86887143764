//! Strict adoption and ownership-aware rollback on SQLite, PostgreSQL and MariaDB: what `up`
//! cannot adopt it refuses before the first change, what it adopts it records and `down` never
//! drops, what we created `down` drops only when no data would go or the caller allows it, and
//! the service reads host columns tolerantly.

use agent_webhooks::delivery::Enqueued;
use agent_webhooks::settings::WebhookSettings;
use agent_webhooks::webhook::{self, WebhookConfig};
use chrono::Utc;
use integration_tests::schema::{fingerprints, snapshot, snapshot_of};
use integration_tests::{Backend, TestDb, backend_tests, enqueue_event, seed_agent};
use migration::{Migrator, MigratorTrait, allowing_data_loss};

fn config(url: &str) -> WebhookConfig {
    serde_json::from_value(serde_json::json!({ "webhook_url": url })).unwrap()
}

/// The host's `organizations` and `agents`, as a SQLAlchemy application declares them by
/// default: naive timestamps, a nullable `name`, `created_at` without a server default on
/// `organizations`; plus `extra` columns of the host's own.
async fn create_host_tables(t: &TestDb, extra_agent_columns: &str) {
    let ts = match t.backend {
        Backend::Postgres => "timestamp without time zone",
        Backend::MySql => "datetime(6)",
        Backend::Sqlite => "DATETIME",
    };
    t.exec(&format!(
        "CREATE TABLE organizations (id varchar(64) NOT NULL, name varchar(255) NOT NULL, \
         created_at {ts}, updated_at {ts}, is_deleted boolean NOT NULL DEFAULT false, \
         PRIMARY KEY (id))"
    ))
    .await;
    t.exec(&format!(
        "CREATE TABLE agents (id varchar(64) NOT NULL, organization_id varchar(64) NOT NULL, \
         name varchar(255), description text, created_at {ts}, updated_at {ts}, \
         is_deleted boolean NOT NULL DEFAULT false{extra_agent_columns}, PRIMARY KEY (id), \
         FOREIGN KEY (organization_id) REFERENCES organizations (id))"
    ))
    .await;
    t.exec("INSERT INTO organizations (id, name) VALUES ('org-1', 'Acme')")
        .await;
    // The host's own format: naive, a space, six digits.
    t.exec(
        "INSERT INTO agents (id, organization_id, name, created_at) VALUES \
         ('agent-1', 'org-1', NULL, '2026-11-29 12:38:02.552702')",
    )
    .await;
}

/// Item 10.2: a `webhook_*` column of another type is refused, before the first change.
async fn a_webhook_column_of_another_type_is_refused_before_any_change(backend: Backend) {
    let t = TestDb::fresh(backend).await;
    create_host_tables(&t, ", webhook_url integer").await;
    let before = snapshot(&t).await;
    let err = Migrator::up(&t.db, None).await.unwrap_err().to_string();
    assert!(
        err.to_lowercase()
            .contains("cannot adopt existing column `agents.webhook_url`: found type `int")
            && err.contains("need the text family"),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
    assert_eq!(snapshot(&t).await, before, "up changed something");
}

/// Item 10.1: a `webhook_deliveries` with unrelated columns is refused (on SQLite its indexes
/// were built on string literals), before the first change.
async fn an_unrelated_webhook_deliveries_is_refused_before_any_change(backend: Backend) {
    let t = TestDb::fresh(backend).await;
    t.exec("CREATE TABLE webhook_deliveries (id varchar(64) PRIMARY KEY, note text)")
        .await;
    let before = snapshot(&t).await;
    let err = Migrator::up(&t.db, None).await.unwrap_err().to_string();
    assert!(
        err.contains("cannot adopt existing table `webhook_deliveries`: it has no column"),
        "{err}"
    );
    assert_eq!(snapshot(&t).await, before, "up changed something");
}

/// Items 10.1, 10.2 and 15.1: objects that existed before `up` (here: a complete schema whose
/// migration history was lost, so every object is someone else's) are adopted and recorded, and
/// neither `down` nor `fresh`/`reset` drops them or their rows, empty or not.
async fn adopted_objects_survive_down_fresh_and_reset(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    for i in 0..20 {
        enqueue_event(
            &t.db,
            "agent-1",
            &format!("evt-{i}"),
            "run.completed",
            Utc::now(),
        )
        .await
        .unwrap();
    }
    t.exec("DELETE FROM seaql_migrations").await;
    t.exec("DROP TABLE agent_webhooks_schema_objects").await;
    let before = snapshot(&t).await;

    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(
        t.count("SELECT COUNT(*) FROM agent_webhooks_schema_objects WHERE origin = 'adopted'")
            .await,
        t.count("SELECT COUNT(*) FROM agent_webhooks_schema_objects")
            .await
    );
    Migrator::fresh(&t.db).await.unwrap();
    Migrator::down(&t.db, Some(2)).await.unwrap();
    Migrator::reset(&t.db).await.unwrap();
    let mut after = snapshot(&t).await;
    after.retain(|l| !l.contains("seaql_migrations"));
    let mut expected = before.clone();
    expected.retain(|l| !l.contains("seaql_migrations"));
    assert_eq!(after, expected, "an adopted object was dropped");
    assert_eq!(t.count("SELECT COUNT(*) FROM webhook_deliveries").await, 20);
    assert_eq!(
        t.count("SELECT COUNT(*) FROM agents WHERE webhook_url IS NOT NULL")
            .await,
        1
    );
}

/// Item 10.3 and 15.1: down of what we created refuses to destroy rows or values, names them
/// with their counts, changes nothing, and proceeds when the caller allows it.
async fn down_refuses_data_loss_unless_allowed(backend: Backend) {
    let t = TestDb::fresh(backend).await;
    create_host_tables(&t, "").await;
    Migrator::up(&t.db, None).await.unwrap();
    let settings = WebhookSettings::default();
    webhook::configure(
        &t.db,
        &settings,
        "agent-1",
        &config("https://hooks.example.com/a"),
    )
    .await
    .unwrap();
    for i in 0..3 {
        let e = enqueue_event(
            &t.db,
            "agent-1",
            &format!("evt-{i}"),
            "run.done",
            Utc::now(),
        )
        .await
        .unwrap();
        assert!(matches!(e, Enqueued::Created(_)), "{e:?}");
    }
    let before = snapshot(&t).await;
    // Every migration above the baseline.
    let above_baseline = u32::try_from(Migrator::migrations().len() - 1).unwrap();
    let err = Migrator::down(&t.db, Some(above_baseline))
        .await
        .unwrap_err()
        .to_string();
    for needed in [
        "refusing to destroy data: ",
        "column `agents.webhook_url` holds 1 value",
        "column `agents.webhook_enabled` holds 1 value",
        "table `webhook_deliveries` holds 3 rows",
        "--allow-data-loss",
    ] {
        assert!(err.contains(needed), "{needed:?} missing: {err}");
    }
    assert_eq!(snapshot(&t).await, before, "down changed something");
    for (name, result) in [
        ("fresh", Migrator::fresh(&t.db).await),
        ("refresh", Migrator::refresh(&t.db).await),
        ("reset", Migrator::reset(&t.db).await),
    ] {
        let err = result.expect_err(name).to_string();
        assert!(
            err.contains("table `webhook_deliveries` holds 3 rows"),
            "{name}: {err}"
        );
        assert_eq!(snapshot(&t).await, before, "{name} changed something");
    }

    allowing_data_loss(Migrator::down(&t.db, Some(above_baseline)))
        .await
        .unwrap();
    assert!(snapshot_of(&t, "webhook_").await.is_empty());
    // Past the baseline: the host's adopted tables stay, with their rows.
    Migrator::down(&t.db, None).await.unwrap();
    assert_eq!(t.count("SELECT COUNT(*) FROM agents").await, 1);
    assert_eq!(t.count("SELECT COUNT(*) FROM organizations").await, 1);
}

/// Items 10.3 and 15.5: naive timestamps, a NULL name and extra host columns break neither `up`
/// nor the service.
async fn the_service_reads_host_columns_of_any_accepted_form(backend: Backend) {
    let t = TestDb::fresh(backend).await;
    create_host_tables(&t, ", model varchar(64), settings text").await;
    Migrator::up(&t.db, None).await.unwrap();
    let settings = WebhookSettings::default();
    let view = webhook::configure(
        &t.db,
        &settings,
        "agent-1",
        &config("https://hooks.example.com/a"),
    )
    .await
    .unwrap();
    assert!(view.webhook_enabled);
    let agent = webhook::get_agent(&t.db, "agent-1").await.unwrap();
    assert_eq!(agent.name, None);
    assert_eq!(
        agent.created_at.unwrap().to_rfc3339(),
        "2026-11-29T12:38:02.552702+00:00"
    );
    let e = enqueue_event(&t.db, "agent-1", "evt-1", "run.done", Utc::now())
        .await
        .unwrap();
    assert!(matches!(e, Enqueued::Created(_)), "{e:?}");
    webhook::disable(&t.db, "agent-1").await.unwrap();
    webhook::clear(&t.db, "agent-1").await.unwrap();
    // Our own columns are written in our format; the host's are untouched.
    assert_eq!(
        fingerprints(&t, "agents", &["name", "updated_at"]).await,
        ["∅|∅"]
    );
}

/// Databases migrated before the record existed: the baseline tables count as adopted.
async fn without_a_record_the_baseline_tables_count_as_adopted(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    t.exec("DELETE FROM agents").await;
    t.exec("DELETE FROM organizations").await;
    t.exec("DROP TABLE agent_webhooks_schema_objects").await;
    Migrator::reset(&t.db).await.unwrap();
    assert!(snapshot_of(&t, "webhook_").await.is_empty());
    assert!(!snapshot_of(&t, "agents").await.is_empty());
    assert!(!snapshot_of(&t, "organizations").await.is_empty());
}

/// A table of ours that another tool's table references is not dropped, and the
/// refusal comes before the first change (PostgreSQL used to fail half way, after rolling back
/// the webhook migrations).
async fn a_referenced_table_of_ours_is_refused_before_any_change(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    t.exec(
        "CREATE TABLE runs (id varchar(64) PRIMARY KEY, agent_id varchar(64), \
         FOREIGN KEY (agent_id) REFERENCES agents (id))",
    )
    .await;
    let before = snapshot(&t).await;
    for (name, result) in [
        ("reset", Migrator::reset(&t.db).await),
        ("fresh", allowing_data_loss(Migrator::fresh(&t.db)).await),
        ("down", Migrator::down(&t.db, None).await),
    ] {
        let err = result.expect_err(name).to_string();
        assert!(
            err.contains("refusing to drop table `agents`: table `runs` references it"),
            "{name}: {err}"
        );
        assert_eq!(snapshot(&t).await, before, "{name} changed something");
    }
}

backend_tests!(
    a_referenced_table_of_ours_is_refused_before_any_change,
    a_webhook_column_of_another_type_is_refused_before_any_change,
    an_unrelated_webhook_deliveries_is_refused_before_any_change,
    adopted_objects_survive_down_fresh_and_reset,
    down_refuses_data_loss_unless_allowed,
    the_service_reads_host_columns_of_any_accepted_form,
    without_a_record_the_baseline_tables_count_as_adopted,
);
