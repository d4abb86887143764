//! The migrations on SQLite, PostgreSQL and MariaDB: round trips, adoption of existing tables,
//! refusal to drop data, and resumption after an interrupted run.

use integration_tests::schema::{checksum, fingerprints, snapshot, snapshot_of};
use integration_tests::{Backend, TestDb, backend_tests};
use migration::{Migrator, MigratorTrait};
use sea_orm::DbErr;

/// How many migrations there are.
fn migrations() -> usize {
    Migrator::migrations().len()
}

/// `down` steps from fully migrated back to the baseline alone.
fn to_baseline() -> u32 {
    migrations() as u32 - 1
}

/// `down` steps from fully migrated that undo the migration `name` and every later one.
fn steps_to_undo(name: &str) -> u32 {
    let names: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let index = names
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no migration {name} in {names:?}"));
    (names.len() - index) as u32
}

const OUR_TABLES: [&str; 6] = [
    "organizations",
    "agents",
    "webhook_deliveries",
    "webhook_delivery_attempts",
    "webhook_previous_secrets",
    "webhook_lanes",
];

async fn has_table(t: &TestDb, table: &str) -> bool {
    let sql = match t.backend {
        Backend::Postgres => format!(
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = '{table}'"
        ),
        Backend::MySql => format!(
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = '{table}'"
        ),
        Backend::Sqlite => {
            format!("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'")
        }
    };
    t.count(&sql).await == 1
}

async fn up_on_empty_then_status_then_round_trip(backend: Backend) {
    let t = TestDb::fresh(backend).await;
    assert_eq!(
        Migrator::get_pending_migrations(&t.db).await.unwrap().len(),
        migrations()
    );

    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(
        Migrator::get_applied_migrations(&t.db).await.unwrap().len(),
        migrations()
    );
    assert!(
        Migrator::get_pending_migrations(&t.db)
            .await
            .unwrap()
            .is_empty()
    );
    Migrator::status(&t.db).await.unwrap();
    for table in OUR_TABLES {
        assert!(has_table(&t, table).await, "{table} missing after up");
    }
    let after_up = snapshot(&t).await;
    for expected in [
        "ix_agents_created_at",
        "ix_webhook_deliveries_event_id",
        "ux_webhook_delivery_attempts_delivery_attempt",
        "webhook_failing_since",
        "webhook_disabled_at",
        "webhook_disabled_reason",
        "ix_webhook_previous_secrets_agent_expires",
        "webhook_ed25519_secret_key",
        "webhook_ed25519_public_key",
        "webhook_filter",
    ] {
        assert!(
            after_up.iter().any(|l| l.contains(expected)),
            "{expected} missing: {after_up:#?}"
        );
    }
    // The worker migration dropped the `(agent_id)` index: the history index covers it.
    assert!(
        !after_up
            .iter()
            .any(|l| l.contains("ix_webhook_deliveries_agent_id")),
        "redundant index still there: {after_up:#?}"
    );

    // Down the ordered-lanes migration alone: its table and columns are gone.
    Migrator::down(&t.db, Some(steps_to_undo("m20261205_000007_ordered_lanes")))
        .await
        .unwrap();
    let before_lanes = snapshot(&t).await;
    assert!(!has_table(&t, "webhook_lanes").await);
    for gone in ["webhook_ordered", "lane_seq", "ix_webhook_deliveries_lane"] {
        assert!(
            !before_lanes.iter().any(|l| l.contains(gone)),
            "{gone} left behind: {before_lanes:#?}"
        );
    }
    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(snapshot(&t).await, after_up);

    // Down the content-filter migration and the later ones: its column is gone too.
    Migrator::down(
        &t.db,
        Some(steps_to_undo("m20261205_000006_webhook_content_filter")),
    )
    .await
    .unwrap();
    assert!(
        !snapshot(&t)
            .await
            .iter()
            .any(|l| l.contains("webhook_filter")),
        "webhook_filter left behind"
    );
    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(snapshot(&t).await, after_up);

    // Down the signing-secrets migration and the later ones: its table and the Ed25519
    // columns are gone.
    Migrator::down(
        &t.db,
        Some(steps_to_undo("m20261129_000005_signing_secrets")),
    )
    .await
    .unwrap();
    let before_signing = snapshot(&t).await;
    assert!(!has_table(&t, "webhook_previous_secrets").await);
    assert!(
        !before_signing.iter().any(|l| l.contains("ed25519")),
        "ed25519 columns left behind: {before_signing:#?}"
    );
    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(snapshot(&t).await, after_up);

    // Down the worker migration too: the index is back, the payload and the attempt log gone.
    Migrator::down(
        &t.db,
        Some(steps_to_undo("m20261129_000004_delivery_worker")),
    )
    .await
    .unwrap();
    let before_worker = snapshot(&t).await;
    assert!(
        before_worker
            .iter()
            .any(|l| l.contains("ix_webhook_deliveries_agent_id")),
        "index not restored: {before_worker:#?}"
    );
    assert!(!has_table(&t, "webhook_delivery_attempts").await);
    assert!(
        !before_worker.iter().any(|l| l.contains("payload")),
        "payload column left behind: {before_worker:#?}"
    );
    for health in [
        "webhook_failing_since",
        "webhook_disabled_at",
        "webhook_disabled_reason",
    ] {
        assert!(
            !before_worker.iter().any(|l| l.contains(health)),
            "{health} left behind: {before_worker:#?}"
        );
    }
    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(snapshot(&t).await, after_up);

    // Down to the baseline, then up again: identical schema.
    Migrator::down(&t.db, Some(to_baseline())).await.unwrap();
    assert!(!has_table(&t, "webhook_deliveries").await);
    assert!(
        snapshot_of(&t, "webhook_").await.is_empty(),
        "webhook columns left behind"
    );
    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(snapshot(&t).await, after_up);

    // Down everything, then up again: identical schema.
    Migrator::down(&t.db, None).await.unwrap();
    for table in OUR_TABLES {
        assert!(!has_table(&t, table).await, "{table} left after down");
    }
    assert!(
        Migrator::get_applied_migrations(&t.db)
            .await
            .unwrap()
            .is_empty()
    );
    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(snapshot(&t).await, after_up);
}

/// The pre-existing tables another tool made: our columns plus some of its own.
async fn create_foreign_tables(t: &TestDb, agents: usize) {
    let (ts, json) = match t.backend {
        Backend::Postgres => ("timestamptz", "jsonb"),
        Backend::MySql => ("datetime(6)", "json"),
        Backend::Sqlite => ("text", "text"),
    };
    let (id, text) = match t.backend {
        Backend::MySql => ("varchar(64)", "text"),
        _ => ("varchar", "text"),
    };
    t.exec(&format!(
        "CREATE TABLE organizations (id {id} PRIMARY KEY, name {text} NOT NULL, \
         created_at {ts} NOT NULL, updated_at {ts}, is_deleted boolean NOT NULL DEFAULT false, \
         privileged_tools boolean NOT NULL DEFAULT false, _created_by_id {id})"
    ))
    .await;
    t.exec(&format!(
        "CREATE TABLE agents (id {id} PRIMARY KEY, organization_id {id} NOT NULL \
         REFERENCES organizations(id) ON DELETE CASCADE, name {text} NOT NULL, \
         description {text}, system {text}, llm_config {json}, message_ids {json}, \
         created_at {ts} NOT NULL, updated_at {ts}, is_deleted boolean NOT NULL DEFAULT false)"
    ))
    .await;
    t.exec(
        "INSERT INTO organizations (id, name, created_at, updated_at, _created_by_id) VALUES \
         ('org-00000000-0000-4000-8000-000000000001', 'Acme', '2024-01-02 03:04:05.123456+00:00', NULL, 'user-1'), \
         ('org-00000000-0000-4000-8000-000000000002', 'Globex', '2024-02-03 04:05:06+00:00', '2024-03-01 00:00:00+00:00', NULL)"
            .replace("+00:00", if t.backend == Backend::MySql { "" } else { "+00:00" })
            .as_str(),
    )
    .await;
    for chunk in (0..agents).collect::<Vec<_>>().chunks(500) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|i| {
                let org = 1 + i % 2;
                let description = if i % 3 == 0 { "NULL".to_owned() } else { format!("'agent number {i} – ünïcode'") };
                let offset = if t.backend == Backend::MySql { "" } else { "+00:00" };
                format!(
                    "('agent-{i:08}-0000-4000-8000-000000000000', \
                     'org-00000000-0000-4000-8000-00000000000{org}', 'agent {i}', {description}, \
                     'You are agent {i}.', '{{\"model\": \"m{m}\", \"temperature\": 0.{m}}}', '[\"msg-{i}\"]', \
                     '2024-05-{day:02} 10:{min:02}:{sec:02}.{micro:06}{offset}', NULL, {deleted})",
                    m = i % 10,
                    day = 1 + i % 28,
                    min = i % 60,
                    sec = (i * 7) % 60,
                    micro = (i * 7919) % 1_000_000,
                    deleted = if i % 17 == 0 { "true" } else { "false" },
                )
            })
            .collect();
        t.exec(&format!(
            "INSERT INTO agents (id, organization_id, name, description, system, llm_config, \
             message_ids, created_at, updated_at, is_deleted) VALUES {}",
            rows.join(", ")
        ))
        .await;
    }
}

const AGENT_COLUMNS: [&str; 10] = [
    "id",
    "organization_id",
    "name",
    "description",
    "system",
    "llm_config",
    "message_ids",
    "created_at",
    "updated_at",
    "is_deleted",
];
const ORG_COLUMNS: [&str; 7] = [
    "id",
    "name",
    "created_at",
    "updated_at",
    "is_deleted",
    "privileged_tools",
    "_created_by_id",
];

async fn adopts_existing_tables_and_keeps_every_value(backend: Backend) {
    const AGENTS: usize = 3_000;
    let t = TestDb::fresh(backend).await;
    create_foreign_tables(&t, AGENTS).await;
    let agents_before = fingerprints(&t, "agents", &AGENT_COLUMNS).await;
    let orgs_before = fingerprints(&t, "organizations", &ORG_COLUMNS).await;
    assert_eq!(agents_before.len(), AGENTS);

    Migrator::up(&t.db, None).await.unwrap();
    let agents_after = fingerprints(&t, "agents", &AGENT_COLUMNS).await;
    assert_eq!(
        checksum(&agents_after),
        checksum(&agents_before),
        "agents changed by up"
    );
    assert_eq!(agents_after, agents_before);
    assert_eq!(
        fingerprints(&t, "organizations", &ORG_COLUMNS).await,
        orgs_before
    );
    // Old rows read as "no webhook": disabled, no event filter, no URL, no secret.
    let untouched = t
        .count(
            "SELECT COUNT(*) FROM agents WHERE webhook_enabled = false AND webhook_events IS NULL \
             AND webhook_url IS NULL AND webhook_secret IS NULL",
        )
        .await;
    assert_eq!(untouched, AGENTS as i64);
    assert!(!snapshot_of(&t, "ix_agents_created_at").await.is_empty());

    // Down of the webhook migration: the foreign columns and every value are as before.
    Migrator::down(&t.db, Some(to_baseline())).await.unwrap();
    assert!(snapshot_of(&t, "webhook_").await.is_empty());
    assert_eq!(
        fingerprints(&t, "agents", &AGENT_COLUMNS).await,
        agents_before
    );
    assert_eq!(
        fingerprints(&t, "organizations", &ORG_COLUMNS).await,
        orgs_before
    );

    // The baseline's down never drops the adopted tables: it removes only what it added.
    Migrator::down(&t.db, Some(1)).await.unwrap();
    assert_eq!(
        fingerprints(&t, "agents", &AGENT_COLUMNS).await,
        agents_before
    );
    assert_eq!(
        fingerprints(&t, "organizations", &ORG_COLUMNS).await,
        orgs_before
    );
    assert!(snapshot_of(&t, "ix_agents_created_at").await.is_empty());
    assert!(
        snapshot_of(&t, "agent_webhooks_schema_objects")
            .await
            .is_empty()
    );
    assert!(
        Migrator::get_applied_migrations(&t.db)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn adoption_rejects_a_table_missing_our_columns(backend: Backend) {
    let t = TestDb::fresh(backend).await;
    t.exec("CREATE TABLE organizations (id varchar(64) PRIMARY KEY, name text NOT NULL)")
        .await;
    let err = Migrator::up(&t.db, None).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot adopt existing table `organizations`: it has no column `created_at`"),
        "unexpected error: {err}"
    );
}

async fn baseline_down_refuses_non_empty_tables_and_drops_empty_ones(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    t.exec("INSERT INTO organizations (id, name) VALUES ('org-1', 'Acme')")
        .await;
    let before = snapshot(&t).await;

    // fresh, refresh and reset check first, and change nothing when they refuse.
    for (name, result) in [
        ("fresh", Migrator::fresh(&t.db).await),
        ("refresh", Migrator::refresh(&t.db).await),
        ("reset", Migrator::reset(&t.db).await),
    ] {
        let err = result.expect_err(name);
        assert!(
            err.to_string()
                .contains("refusing to destroy data: table `organizations` holds 1 row;"),
            "{name}: {err}"
        );
        assert_eq!(snapshot(&t).await, before, "{name} changed the schema");
    }

    // Down of the webhook migration is allowed; the baseline's is not.
    Migrator::down(&t.db, Some(to_baseline())).await.unwrap();
    let err: DbErr = Migrator::down(&t.db, Some(1)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("refusing to destroy data: table `organizations` holds 1 row;"),
        "{err}"
    );
    assert_eq!(t.count("SELECT COUNT(*) FROM organizations").await, 1);

    // Empty tables are dropped.
    t.exec("DELETE FROM organizations").await;
    Migrator::down(&t.db, Some(1)).await.unwrap();
    for table in OUR_TABLES {
        assert!(!has_table(&t, table).await, "{table} left after down");
    }

    // And with no rows, fresh/refresh/reset work.
    Migrator::fresh(&t.db).await.unwrap();
    let clean = snapshot(&t).await;
    Migrator::refresh(&t.db).await.unwrap();
    assert_eq!(snapshot(&t).await, clean);
    Migrator::reset(&t.db).await.unwrap();
    assert!(!has_table(&t, "agents").await);
}

async fn fresh_never_drops_tables_it_did_not_create(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    t.exec("CREATE TABLE billing_accounts (id varchar(64) PRIMARY KEY, owner text)")
        .await;
    t.exec("INSERT INTO billing_accounts (id, owner) VALUES ('b-1', 'Acme')")
        .await;
    Migrator::fresh(&t.db).await.unwrap();
    assert_eq!(t.count("SELECT COUNT(*) FROM billing_accounts").await, 1);
    assert!(has_table(&t, "webhook_deliveries").await);
}

/// MariaDB commits DDL as it goes, so an `up` can stop half way; running it again completes it.
async fn interrupted_webhook_migration_completes_on_rerun(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let complete = snapshot(&t).await;

    // Simulate a crash after two of the webhook migration's steps: roll back cleanly, then
    // replay its first statements by hand, without recording the migration as applied.
    Migrator::down(&t.db, Some(to_baseline())).await.unwrap();
    // A new connection: SQLite checks ALTER TABLE against a connection's cached schema, and a
    // pooled connection may not have seen the rollback yet.
    let crash = TestDb::reconnect(&t).await;
    crash
        .exec("ALTER TABLE agents ADD COLUMN webhook_url text NULL")
        .await;
    crash
        .exec("ALTER TABLE agents ADD COLUMN webhook_secret text NULL")
        .await;
    // As on MariaDB, each object's `created` record precedes it (and is committed with it).
    crash
        .exec(
            "INSERT INTO agent_webhooks_schema_objects (kind, table_name, object_name, origin) \
             VALUES ('column', 'agents', 'webhook_url', 'created'), \
             ('column', 'agents', 'webhook_secret', 'created')",
        )
        .await;
    crash.db.close().await.unwrap();
    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(snapshot(&t).await, complete);

    // Likewise a `down` that stopped after dropping the tables.
    t.exec("DROP TABLE webhook_previous_secrets").await;
    t.exec("DROP TABLE webhook_delivery_attempts").await;
    t.exec("DROP TABLE webhook_deliveries").await;
    Migrator::down(&t.db, Some(to_baseline())).await.unwrap();
    assert!(snapshot_of(&t, "webhook_").await.is_empty());
}

backend_tests!(
    up_on_empty_then_status_then_round_trip,
    adopts_existing_tables_and_keeps_every_value,
    adoption_rejects_a_table_missing_our_columns,
    baseline_down_refuses_non_empty_tables_and_drops_empty_ones,
    fresh_never_drops_tables_it_did_not_create,
    interrupted_webhook_migration_completes_on_rerun,
);
