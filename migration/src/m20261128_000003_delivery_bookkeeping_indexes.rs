//! Indexes the delivery bookkeeping queries need, and nothing else: the unique
//! `(agent_id, event_id)`, the claim and the history indexes (what each is for: [`crate::indexes`]).
//!
//! Each index is created only when missing (one that exists must have our definition: see
//! [`ensure_index`]) and dropped only when present, so an interrupted run on MariaDB can be
//! repeated.

use sea_orm_migration::prelude::*;

use crate::existing_index::{drop_index_if_present, ensure_index};
use crate::indexes;
use crate::tables::WebhookDeliveries;

/// `(name, unique, columns)` of every index this migration owns.
const INDEXES: [(&str, bool, &[WebhookDeliveries]); 3] = [
    (
        indexes::DELIVERIES_AGENT_EVENT,
        true,
        &[WebhookDeliveries::AgentId, WebhookDeliveries::EventId],
    ),
    (
        indexes::DELIVERIES_NEXT_RETRY_AT,
        false,
        &[WebhookDeliveries::NextRetryAt],
    ),
    (
        indexes::DELIVERIES_HISTORY,
        false,
        &[
            WebhookDeliveries::AgentId,
            WebhookDeliveries::CreatedAt,
            WebhookDeliveries::Id,
        ],
    ),
];

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let table = WebhookDeliveries::Table.to_string();
        for (name, unique, columns) in INDEXES {
            let mut index = Index::create();
            index.name(name).table(WebhookDeliveries::Table);
            if unique {
                index.unique();
            }
            for column in columns {
                index.col(*column);
            }
            ensure_index(manager, &table, index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, _, _) in INDEXES.iter().rev() {
            drop_index_if_present(manager, WebhookDeliveries::Table, name).await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
