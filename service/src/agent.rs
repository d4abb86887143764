//! The host platform's `agents` row, as far as this service reads it, and the one rule for
//! which agents are live: [`live`] in queries, [`AgentWebhook::is_live`] on a loaded row.

use entity::agents;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DerivePartialModel, EntityTrait, QueryFilter,
};

use crate::error::{Error, Result};

/// `is_deleted` false or NULL: a host table adopted from another tool may leave it NULL.
pub(crate) fn live() -> Condition {
    Condition::any()
        .add(agents::Column::IsDeleted.eq(false))
        .add(agents::Column::IsDeleted.is_null())
}

/// Only the columns we read, so a host column of a type we do not expect (a naive
/// `created_at`, a NULL `name`) cannot break us.
#[derive(Clone, Debug, DerivePartialModel)]
#[sea_orm(entity = "agents::Entity")]
pub(crate) struct AgentWebhook {
    pub id: String,
    /// Copied onto each delivery.
    pub organization_id: String,
    pub is_deleted: Option<bool>,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    pub webhook_events: Option<serde_json::Value>,
    pub webhook_enabled: bool,
    pub webhook_failing_since: Option<sea_orm::prelude::DateTimeWithTimeZone>,
    pub webhook_disabled_at: Option<sea_orm::prelude::DateTimeWithTimeZone>,
    pub webhook_disabled_reason: Option<String>,
    /// The sealed `whsk_` key, when the agent signs with Ed25519 too.
    pub webhook_ed25519_secret_key: Option<String>,
    /// The `whpk_` public key of that pair.
    pub webhook_ed25519_public_key: Option<String>,
    /// The content filter as stored; parsed by `webhook::stored_filter`.
    pub webhook_filter: Option<serde_json::Value>,
    /// Deliveries go out in order within their lane ([`crate::delivery::lanes`]).
    pub webhook_ordered: bool,
}

impl AgentWebhook {
    /// The rule of [`live`] on a loaded row.
    pub(crate) fn is_live(&self) -> bool {
        self.is_deleted != Some(true)
    }
}

impl From<&agents::Model> for AgentWebhook {
    fn from(agent: &agents::Model) -> Self {
        AgentWebhook {
            id: agent.id.clone(),
            organization_id: agent.organization_id.clone(),
            is_deleted: Some(agent.is_deleted),
            webhook_url: agent.webhook_url.clone(),
            webhook_secret: agent.webhook_secret.clone(),
            webhook_events: agent.webhook_events.clone(),
            webhook_enabled: agent.webhook_enabled,
            webhook_failing_since: agent.webhook_failing_since,
            webhook_disabled_at: agent.webhook_disabled_at,
            webhook_disabled_reason: agent.webhook_disabled_reason.clone(),
            webhook_ed25519_secret_key: agent.webhook_ed25519_secret_key.clone(),
            webhook_ed25519_public_key: agent.webhook_ed25519_public_key.clone(),
            webhook_filter: agent.webhook_filter.clone(),
            webhook_ordered: agent.webhook_ordered,
        }
    }
}

/// The agents among `ids`, soft-deleted or not: one `SELECT` per
/// [`MAX_PAGE_SIZE`](crate::db::MAX_PAGE_SIZE) ids for the batched paths.
pub(crate) async fn agents_by_id<C: ConnectionTrait>(
    db: &C,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, AgentWebhook>> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut found = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(crate::db::MAX_PAGE_SIZE as usize) {
        for agent in agents::Entity::find()
            .filter(agents::Column::Id.is_in(chunk.iter().copied()))
            .into_partial_model::<AgentWebhook>()
            .all(db)
            .await?
        {
            found.insert(agent.id.clone(), agent);
        }
    }
    Ok(found)
}

/// The live (not soft-deleted) agent with this id.
pub(crate) async fn find_agent<C: ConnectionTrait>(db: &C, agent_id: &str) -> Result<AgentWebhook> {
    find(db, agent_id, live()).await
}

/// The agent with this id, soft-deleted or not: for enqueue, which says which rule skipped it.
pub(crate) async fn find_any_agent<C: ConnectionTrait>(
    db: &C,
    agent_id: &str,
) -> Result<AgentWebhook> {
    find(db, agent_id, Condition::all()).await
}

async fn find<C: ConnectionTrait>(db: &C, agent_id: &str, rows: Condition) -> Result<AgentWebhook> {
    agents::Entity::find_by_id(agent_id)
        .filter(rows)
        .into_partial_model::<AgentWebhook>()
        .one(db)
        .await?
        .ok_or_else(|| Error::AgentNotFound(agent_id.to_owned()))
}
