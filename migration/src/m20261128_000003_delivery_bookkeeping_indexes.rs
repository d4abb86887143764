//! Indexes the delivery bookkeeping queries need, and nothing else.
//!
//! * `ux_webhook_deliveries_agent_event (agent_id, event_id)`, unique: enqueue is idempotent by
//!   constraint (`INSERT … ON CONFLICT DO NOTHING`), so two racing callers cannot both insert.
//! * `ix_webhook_deliveries_next_retry_at (next_retry_at)`: `claim_due` takes the earliest due
//!   rows by a range scan in this order. Delivered and exhausted rows have a NULL
//!   `next_retry_at`, so the scan only ever touches undelivered rows.
//! * `ix_webhook_deliveries_history (agent_id, created_at, id)`: an agent's history, newest
//!   first, with keyset pagination over `(created_at, id)`.
//!
//! Each index is created only when missing and dropped only when present, so an interrupted run
//! on MariaDB can be repeated.

use sea_orm_migration::prelude::*;

use crate::tables::WebhookDeliveries;

/// `(name, unique, columns)` of every index this migration owns.
const INDEXES: [(&str, bool, &[WebhookDeliveries]); 3] = [
    (
        "ux_webhook_deliveries_agent_event",
        true,
        &[WebhookDeliveries::AgentId, WebhookDeliveries::EventId],
    ),
    (
        "ix_webhook_deliveries_next_retry_at",
        false,
        &[WebhookDeliveries::NextRetryAt],
    ),
    (
        "ix_webhook_deliveries_history",
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
            if manager.has_index(&table, name).await? {
                continue;
            }
            let mut index = Index::create();
            index.name(name).table(WebhookDeliveries::Table);
            if unique {
                index.unique();
            }
            for column in columns {
                index.col(*column);
            }
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let table = WebhookDeliveries::Table.to_string();
        for (name, _, _) in INDEXES.iter().rev() {
            if manager.has_index(&table, name).await? {
                manager
                    .drop_index(
                        Index::drop()
                            .name(*name)
                            .table(WebhookDeliveries::Table)
                            .to_owned(),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
