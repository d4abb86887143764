//! The generated entities on every backend: CRUD through ActiveModels, relations both ways,
//! foreign keys and cascades.

use chrono::{DateTime, Duration, FixedOffset, Utc};
use entity::{agents, organizations, webhook_deliveries};
use integration_tests::{Backend, TestDb, backend_tests};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, ModelTrait, PaginatorTrait};

fn at(seconds: i64) -> DateTime<FixedOffset> {
    (DateTime::<Utc>::from_timestamp(1_764_000_000, 123_456_000).unwrap()
        + Duration::seconds(seconds))
    .fixed_offset()
}

fn delivery(id: &str, agent: &agents::Model, event: &str) -> webhook_deliveries::ActiveModel {
    webhook_deliveries::ActiveModel {
        id: Set(id.to_owned()),
        organization_id: Set(agent.organization_id.clone()),
        agent_id: Set(agent.id.clone()),
        event_id: Set(format!("evt-{id}")),
        event_type: Set(event.to_owned()),
        webhook_url: Set("https://hooks.example.com/a".to_owned()),
        ..Default::default()
    }
}

async fn crud_relations_and_cascade(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let db = &t.db;

    let org = organizations::ActiveModel {
        id: Set("org-1".to_owned()),
        name: Set("Acme".to_owned()),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap();
    // Server defaults: created_at is now-ish and UTC, is_deleted false.
    assert!((Utc::now() - org.created_at.to_utc()).num_seconds().abs() < 60);
    assert!(!org.is_deleted);

    let agent = agents::ActiveModel {
        id: Set("agent-1".to_owned()),
        organization_id: Set(org.id.clone()),
        name: Set("helper".to_owned()),
        created_at: Set(at(0)),
        webhook_url: Set(Some("https://hooks.example.com/a".to_owned())),
        webhook_events: Set(Some(serde_json::json!(["run.completed"]))),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap();
    assert!(!agent.webhook_enabled, "webhook_enabled defaults to false");
    assert!(!agent.webhook_ordered, "webhook_ordered defaults to false");
    assert_eq!(agent.created_at, at(0), "timestamps keep microseconds");

    let mut first = delivery("d-1", &agent, "run.completed");
    first.created_at = Set(at(1));
    first.next_retry_at = Set(Some(at(5)));
    let first = first.insert(db).await.unwrap();
    assert_eq!(first.attempt_count, 0);
    assert_eq!(first.next_retry_at, Some(at(5)));
    delivery("d-2", &agent, "run.failed")
        .insert(db)
        .await
        .unwrap();

    // Update through the ActiveModel.
    let mut update: webhook_deliveries::ActiveModel = first.clone().into();
    update.status_code = Set(Some(503));
    update.error_message = Set(Some("upstream unavailable".to_owned()));
    update.attempt_count = Set(1);
    let updated = update.update(db).await.unwrap();
    assert_eq!(updated.status_code, Some(503));

    // Relations both ways.
    let history = agent
        .find_related(webhook_deliveries::Entity)
        .all(db)
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
    let owner = updated
        .find_related(agents::Entity)
        .one(db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.id, agent.id);
    let org_agents = org.find_related(agents::Entity).all(db).await.unwrap();
    assert_eq!(org_agents.len(), 1);
    assert_eq!(
        org.find_related(webhook_deliveries::Entity)
            .count(db)
            .await
            .unwrap(),
        2
    );

    // A delivery for an unknown agent violates the foreign key.
    let mut orphan = delivery("d-3", &agent, "run.completed");
    orphan.agent_id = Set("agent-missing".to_owned());
    let err = orphan.insert(db).await.unwrap_err();
    let message = err.to_string().to_lowercase();
    assert!(message.contains("foreign key"), "unexpected error: {err}");

    // Deleting the agent takes its history with it.
    agent.delete(db).await.unwrap();
    assert_eq!(
        webhook_deliveries::Entity::find().count(db).await.unwrap(),
        0
    );
    assert_eq!(organizations::Entity::find().count(db).await.unwrap(), 1);

    // And deleting the organization takes its agents.
    agents::ActiveModel {
        id: Set("agent-2".to_owned()),
        organization_id: Set(org.id.clone()),
        name: Set("second".to_owned()),
        webhook_ordered: Set(false),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap();
    org.delete(db).await.unwrap();
    assert_eq!(agents::Entity::find().count(db).await.unwrap(), 0);
}

backend_tests!(crud_relations_and_cascade);
