//! `EXPLAIN` on PostgreSQL: each bookkeeping query uses the index the third migration made
//! for it. Run with `--nocapture` to see the plans.

use agent_webhooks::delivery::{self, HistoryQuery};
use agent_webhooks::settings::WebhookSettings;
use chrono::Utc;
use entity::webhook_deliveries;
use integration_tests::{Backend, TestDb, seed_agent};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbBackend, EntityTrait, QueryTrait, Statement};

async fn plan(t: &TestDb, statement: Statement) -> String {
    let explain = Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!("EXPLAIN {}", statement.sql),
        statement.values.map(|v| v.0).unwrap_or_default(),
    );
    let rows = t.db.query_all_raw(explain).await.expect("EXPLAIN");
    let text: Vec<String> = rows
        .iter()
        .map(|r| r.try_get_by_index::<String>(0).expect("plan line"))
        .collect();
    text.join("\n")
}

#[tokio::test]
async fn each_bookkeeping_query_uses_its_index_on_postgres() {
    let t = TestDb::migrated(Backend::Postgres).await;
    seed_agent(&t, "agent-1", &[]).await;
    seed_agent(&t, "agent-2", &[]).await;
    // 100k deliveries over two agents, 1% of them due: the shape of a live table.
    t.exec(
        "INSERT INTO webhook_deliveries (id, organization_id, agent_id, event_id, event_type, \
         webhook_url, attempt_count, created_at, delivered_at, next_retry_at) \
         SELECT 'dlv-' || lpad(g::text, 8, '0'), 'org-1', \
                CASE WHEN g % 2 = 0 THEN 'agent-1' ELSE 'agent-2' END, 'evt-' || g, \
                'run.completed', 'https://hooks.example.com/x', 1, \
                now() - make_interval(secs => g), \
                CASE WHEN g % 100 = 0 THEN NULL ELSE now() END, \
                CASE WHEN g % 100 = 0 THEN now() - interval '1 minute' ELSE NULL END \
         FROM generate_series(1, 100000) g",
    )
    .await;
    t.exec("ANALYZE webhook_deliveries").await;

    let claim = delivery::testing::claim_statement(
        DbBackend::Postgres,
        &WebhookSettings::default(),
        Utc::now(),
        100,
    );
    let claim_plan = plan(&t, claim).await;
    println!("claim_due:\n{claim_plan}\n");
    assert!(
        claim_plan.contains("ix_webhook_deliveries_next_retry_at"),
        "{claim_plan}"
    );

    let first = HistoryQuery {
        limit: 50,
        ..HistoryQuery::default()
    };
    let (select, _) =
        delivery::testing::history_select(DbBackend::Postgres, "agent-1", &first, Utc::now())
            .unwrap();
    let first_plan = plan(&t, select.build(DbBackend::Postgres)).await;
    println!("history, first page:\n{first_plan}\n");
    assert!(
        first_plan.contains("ix_webhook_deliveries_history"),
        "{first_plan}"
    );

    let page = delivery::history(&t.db, "agent-1", &first, Utc::now())
        .await
        .unwrap();
    let next = HistoryQuery {
        cursor: page.next_cursor,
        ..first
    };
    let (select, _) =
        delivery::testing::history_select(DbBackend::Postgres, "agent-1", &next, Utc::now())
            .unwrap();
    let next_plan = plan(&t, select.build(DbBackend::Postgres)).await;
    println!("history, next page:\n{next_plan}\n");
    assert!(
        next_plan.contains("ix_webhook_deliveries_history"),
        "{next_plan}"
    );
    assert!(
        next_plan.contains("Index Cond") && next_plan.contains("created_at <="),
        "the cursor is an index range, not a filter: {next_plan}"
    );

    let insert = webhook_deliveries::Entity::insert(webhook_deliveries::ActiveModel {
        id: Set("dlv-new".into()),
        organization_id: Set("org-1".into()),
        agent_id: Set("agent-1".into()),
        event_id: Set("evt-1".into()),
        event_type: Set("run.completed".into()),
        webhook_url: Set("https://hooks.example.com/x".into()),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::columns([
            webhook_deliveries::Column::AgentId,
            webhook_deliveries::Column::EventId,
        ])
        .do_nothing()
        .to_owned(),
    )
    .build(DbBackend::Postgres);
    let enqueue_plan = plan(&t, insert).await;
    println!("enqueue:\n{enqueue_plan}\n");
    assert!(
        enqueue_plan.contains("Conflict Arbiter Indexes: ux_webhook_deliveries_agent_event"),
        "{enqueue_plan}"
    );
}

/// The claim's lane rule is one lookup on `ix_webhook_deliveries_lane` per candidate, not a
/// pass over the whole table per claim: with 10,000 lanes (each row its lane's head), neither
/// PostgreSQL (a hashed subplan) nor MariaDB (a materialized subquery) reads the table.
#[tokio::test]
async fn the_claims_lane_rule_is_a_lookup_per_candidate() {
    // PostgreSQL.
    let (t, claim) = lanes_claim(Backend::Postgres).await;
    let claim_plan = plan(&t, claim).await;
    println!("claim_due with 10,000 lanes:\n{claim_plan}\n");
    // (How the `UPDATE` finds the 100 chosen rows by id is the planner's choice at this size.)
    assert!(!claim_plan.contains("hashed SubPlan"), "{claim_plan}");
    assert!(
        claim_plan.contains(
            "Index Scan using ix_webhook_deliveries_lane on webhook_deliveries before_in_lane"
        ),
        "{claim_plan}"
    );

    // MariaDB: the locking `SELECT` that starts its claim.
    let (t, claim) = lanes_claim(Backend::MySql).await;
    let explain = Statement::from_sql_and_values(
        DbBackend::MySql,
        format!("EXPLAIN {}", claim.sql),
        claim.values.map(|v| v.0).unwrap_or_default(),
    );
    let steps: Vec<(String, Option<String>)> =
        t.db.query_all_raw(explain)
            .await
            .expect("EXPLAIN")
            .iter()
            .map(|row| {
                (
                    row.try_get::<String>("", "select_type")
                        .expect("select_type"),
                    row.try_get::<Option<String>>("", "key").expect("key"),
                )
            })
            .collect();
    println!("claim_due with 10,000 lanes (MariaDB): {steps:?}");
    assert!(
        steps.iter().any(|(kind, key)| kind == "DEPENDENT SUBQUERY"
            && key.as_deref() == Some("ix_webhook_deliveries_lane")),
        "{steps:?}"
    );
    assert!(
        !steps.iter().any(|(kind, _)| kind == "MATERIALIZED"),
        "{steps:?}"
    );
}

/// A database of `backend` (PostgreSQL, else MariaDB) with 10,000 due deliveries, each the head
/// of its own lane, analyzed, and the claim statement for it.
async fn lanes_claim(backend: Backend) -> (TestDb, Statement) {
    let (series, n, now, analyze, db_backend) = match backend {
        Backend::Postgres => (
            "generate_series(1, 10000) g",
            "g",
            "now()",
            "ANALYZE webhook_deliveries",
            DbBackend::Postgres,
        ),
        _ => (
            "seq_1_to_10000",
            "seq",
            "UTC_TIMESTAMP(6)",
            "ANALYZE TABLE webhook_deliveries",
            DbBackend::MySql,
        ),
    };
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    t.exec(&format!(
        "INSERT INTO webhook_deliveries (id, organization_id, agent_id, event_id, event_type, \
         webhook_url, attempt_count, created_at, next_retry_at, lane, lane_seq) \
         SELECT CONCAT('dlv-', {n}), 'org-1', 'agent-1', CONCAT('evt-', {n}), \
                'run.completed', 'https://hooks.example.com/x', 0, {now}, {now}, \
                CONCAT('lane-', {n}), 1 FROM {series}"
    ))
    .await;
    t.exec(analyze).await;
    let claim = delivery::testing::claim_statement(
        db_backend,
        &WebhookSettings::default(),
        Utc::now(),
        100,
    );
    (t, claim)
}
