//! What holds for `organizations`/`agents` when the baseline created them and when it adopted
//! the host's (docs/schema.md, "Created or adopted"): the cascade from organizations to agents is ours
//! only on created tables; the cascade from agents to their delivery history holds in both.

use agent_webhooks::delivery::Enqueued;
use chrono::Utc;
use integration_tests::{Backend, TestDb, backend_tests, enqueue_event, seed_agent};
use migration::{Migrator, MigratorTrait};
use sea_orm::ConnectionTrait;

/// SQLAlchemy's `Boolean, nullable=False, server_default=false()`.
pub(crate) const NOT_NULL_IS_DELETED: &str = "boolean NOT NULL DEFAULT false";

/// The host's tables as SQLAlchemy declares them by default: a plain foreign key (no cascade),
/// a nullable `name` and `created_at` without a server default; `agents.is_deleted` as
/// `is_deleted` declares it (the default declaration is `NOT_NULL_IS_DELETED`).
pub(crate) async fn create_host_tables(t: &TestDb, is_deleted: &str) {
    let (id, ts, now) = match t.backend {
        Backend::Postgres => ("varchar(64)", "timestamptz", "'2024-01-02 03:04:05+00:00'"),
        Backend::MySql => ("varchar(64)", "datetime(6)", "'2024-01-02 03:04:05'"),
        Backend::Sqlite => ("varchar(64)", "text", "'2024-01-02 03:04:05.000+00:00'"),
    };
    t.exec(&format!(
        "CREATE TABLE organizations (id {id} NOT NULL, name varchar(255) NOT NULL, \
         created_at {ts}, updated_at {ts}, is_deleted boolean NOT NULL DEFAULT false, \
         PRIMARY KEY (id))"
    ))
    .await;
    t.exec(&format!(
        "CREATE TABLE agents (id {id} NOT NULL, organization_id {id} NOT NULL, \
         name varchar(255), description text, created_at {ts}, updated_at {ts}, \
         is_deleted {is_deleted}, PRIMARY KEY (id), \
         FOREIGN KEY (organization_id) REFERENCES organizations (id))"
    ))
    .await;
    t.exec("INSERT INTO organizations (id, name) VALUES ('org-1', 'Acme')")
        .await;
    t.exec(&format!(
        "INSERT INTO agents (id, organization_id, name, created_at) VALUES \
         ('agent-1', 'org-1', 'one', {now}), ('agent-2', 'org-1', 'two', {now})"
    ))
    .await;
}

async fn enqueue_for(t: &TestDb, agent: &str) {
    t.exec(&format!(
        "UPDATE agents SET webhook_url = 'https://hooks.example.com/a', webhook_enabled = true \
         WHERE id = '{agent}'"
    ))
    .await;
    let created = enqueue_event(
        &t.db,
        agent,
        &format!("evt_{agent}"),
        "run.completed",
        Utc::now(),
    )
    .await
    .unwrap();
    assert!(matches!(created, Enqueued::Created(_)), "{created:?}");
}

async fn deliveries_of(t: &TestDb, agent: &str) -> i64 {
    t.count(&format!(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE agent_id = '{agent}'"
    ))
    .await
}

async fn cascades_on_created_and_adopted_tables(backend: Backend) {
    // Created: deleting an organization deletes its agents and their history.
    let created = TestDb::migrated(backend).await;
    seed_agent(&created, "agent-1", &[]).await;
    enqueue_for(&created, "agent-1").await;
    created
        .exec("DELETE FROM organizations WHERE id = 'org-1'")
        .await;
    assert_eq!(created.count("SELECT COUNT(*) FROM agents").await, 0);
    assert_eq!(deliveries_of(&created, "agent-1").await, 0);

    // Adopted: the host's foreign key decides; ours still takes an agent's history with it.
    let adopted = TestDb::fresh(backend).await;
    create_host_tables(&adopted, NOT_NULL_IS_DELETED).await;
    Migrator::up(&adopted.db, None).await.unwrap();
    enqueue_for(&adopted, "agent-1").await;
    enqueue_for(&adopted, "agent-2").await;
    let refused = adopted
        .db
        .execute_unprepared("DELETE FROM organizations WHERE id = 'org-1'")
        .await;
    assert!(
        refused.is_err(),
        "the host's foreign key has no cascade: deleting an organization with agents fails"
    );
    adopted
        .exec("DELETE FROM agents WHERE id = 'agent-1'")
        .await;
    assert_eq!(deliveries_of(&adopted, "agent-1").await, 0);
    assert_eq!(deliveries_of(&adopted, "agent-2").await, 1);
}

backend_tests!(cascades_on_created_and_adopted_tables);

/// docs/schema.md says the above, not an unconditional cascade.
#[test]
fn the_schema_doc_says_which_cascade_holds_when() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/schema.md"))
        .expect("docs/schema.md");
    let row = doc
        .lines()
        .find(|l| l.starts_with("| organization_id | varchar → organizations.id"))
        .expect("the agents table's organization_id row");
    assert!(row.contains("only when we created `agents`"), "{row}");
    assert!(doc.contains("## Created or adopted"));
    assert!(doc.contains(
        "| `agents.organization_id` foreign key | ours, `fk_agents_organization_id`, ON DELETE CASCADE"
    ));
}

/// A full rollback on SQLite leaves the host's database as it was before `up`, down to SQLite's
/// own tables: our surrogate keys are rowid aliases (`integer PRIMARY KEY`), not
/// `AUTOINCREMENT`, which would make SQLite create `sqlite_sequence`, a table that can never be
/// dropped. Rows are written to both tables with such a key first, without an id, to show the
/// database assigns them.
#[tokio::test]
async fn a_full_rollback_on_sqlite_leaves_the_hosts_schema_as_it_was() {
    let t = TestDb::fresh(Backend::Sqlite).await;
    create_host_tables(&t, NOT_NULL_IS_DELETED).await;
    let before = integration_tests::schema::snapshot(&t).await;

    Migrator::up(&t.db, None).await.unwrap();
    enqueue_for(&t, "agent-1").await;
    let at = "'2024-01-02 03:04:05.000000+00:00'";
    for attempt in [1, 2] {
        t.exec(&format!(
            "INSERT INTO webhook_delivery_attempts (delivery_id, attempt, started_at, finished_at) \
             SELECT id, {attempt}, {at}, {at} FROM webhook_deliveries"
        ))
        .await;
        t.exec(&format!(
            "INSERT INTO webhook_previous_secrets \
             (agent_id, key_id, sealed_secret, expires_at, created_at) \
             VALUES ('agent-1', 'k{attempt}', 'sealed', {at}, {at})"
        ))
        .await;
    }
    for table in ["webhook_delivery_attempts", "webhook_previous_secrets"] {
        let ids = t
            .strings(&format!("SELECT CAST(id AS TEXT) FROM {table} ORDER BY id"))
            .await;
        assert_eq!(ids, ["1", "2"], "{table}");
    }

    migration::allowing_data_loss(Migrator::down(&t.db, None))
        .await
        .unwrap();
    assert_eq!(
        t.count("SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_sequence'")
            .await,
        0,
        "sqlite_sequence left behind"
    );
    let mut after = integration_tests::schema::snapshot(&t).await;
    after.retain(|line| !line.contains("seaql_migrations"));
    assert_eq!(after, before, "the host's schema changed");
}
