//! `webhook_content_filter`: `agents.webhook_filter`, an agent's optional content filter over
//! the event payload (JSON, like `webhook_events`; the language is the service's
//! `webhook::content_filter`). NULL means no filter: every payload of a wanted event type is
//! delivered, and the one-statement enqueue applies. Nullable without a default, so adding it
//! rewrites no rows.
//!
//! The step checks whether it is done already, so an interrupted run on MariaDB (no
//! transactional DDL) can be repeated; `down` removes exactly what `up` added.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::json_null;

use crate::columns::{add_missing_columns, drop_present_columns};
use crate::tables::Agents;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The column this migration adds to `agents` (also the list [`crate::owned`] gives the host).
pub(crate) fn agent_columns() -> [ColumnDef; 1] {
    [json_null(Agents::WebhookFilter)]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_missing_columns(manager, Agents::Table, agent_columns()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.has_table(Agents::Table.to_string()).await? {
            drop_present_columns(manager, Agents::Table, &agent_columns()).await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
