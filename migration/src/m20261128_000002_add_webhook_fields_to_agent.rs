//! `add_webhook_fields_to_agent`: the four webhook columns on `agents` and the
//! `webhook_deliveries` table, after the platform's specification
//! (`shared/seed/agent-webhook-fields.md`) with these corrections:
//!
//! * `webhook_enabled` is NOT NULL with a **server-side** default of false. The specification's
//!   `default=False` is client-side only, so rows that existed before the migration would read
//!   NULL; here they read `false`, and adding the column rewrites no rows on any backend.
//! * Timestamps are UTC-aware (`timestamp with time zone` on PostgreSQL, see
//!   [`crate::columns`]); `created_at` is NOT NULL with a server default of the current time.
//! * `organization_id` and `agent_id` are NOT NULL and reference their parents with
//!   `ON DELETE CASCADE`: with the specification's plain foreign keys an agent with any delivery
//!   history could not be deleted at all. Deleting an agent now takes its history with it.
//! * `attempt_count` is NOT NULL, default 0, and counts attempts made (the specification's
//!   client-side default of 1 counted an attempt that had not happened yet).
//! * `webhook_url` of a delivery and the agent's `webhook_url` are `text`: URLs may be up to
//!   2048 characters, beyond MySQL's default `varchar(255)`.
//! * `down` drops exactly what `up` added, column by column, and each step of either direction
//!   is skipped when already done, so an interrupted run on MariaDB (no transactional DDL) can
//!   simply be run again.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    boolean, integer, integer_null, json_null, string, text, text_null,
};

use crate::columns::{
    add_missing_columns, drop_present_columns, utc_timestamp, utc_timestamp_default_now,
};
use crate::existing_index::ensure_index;
use crate::indexes;
use crate::ownership::{Strictness, drop_our_table, ensure_table};
use crate::tables::{Agents, Organizations, WebhookDeliveries};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The columns this migration adds to `agents`, in order (also the list [`crate::owned`] gives
/// the host).
pub(crate) fn agent_columns() -> [ColumnDef; 4] {
    [
        text_null(Agents::WebhookUrl),
        text_null(Agents::WebhookSecret),
        json_null(Agents::WebhookEvents),
        boolean(Agents::WebhookEnabled).default(false).take(),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        add_missing_columns(manager, Agents::Table, agent_columns()).await?;

        ensure_table(
            manager,
            WebhookDeliveries::Table,
            Table::create()
                .table(WebhookDeliveries::Table)
                .if_not_exists()
                .col(string(WebhookDeliveries::Id).primary_key())
                .col(string(WebhookDeliveries::OrganizationId))
                .col(string(WebhookDeliveries::AgentId))
                .col(string(WebhookDeliveries::EventId))
                .col(string(WebhookDeliveries::EventType))
                .col(text(WebhookDeliveries::WebhookUrl))
                .col(integer_null(WebhookDeliveries::StatusCode))
                .col(text_null(WebhookDeliveries::ErrorMessage))
                .col(integer(WebhookDeliveries::AttemptCount).default(0))
                .col(utc_timestamp_default_now(
                    backend,
                    WebhookDeliveries::CreatedAt,
                ))
                .col(utc_timestamp(backend, WebhookDeliveries::DeliveredAt))
                .col(utc_timestamp(backend, WebhookDeliveries::NextRetryAt))
                .foreign_key(&mut cascade(
                    "fk_webhook_deliveries_organization_id",
                    WebhookDeliveries::OrganizationId,
                    (Organizations::Table, Organizations::Id),
                ))
                .foreign_key(&mut cascade(
                    "fk_webhook_deliveries_agent_id",
                    WebhookDeliveries::AgentId,
                    (Agents::Table, Agents::Id),
                ))
                .to_owned(),
            Strictness::Ours,
        )
        .await?;

        let deliveries = WebhookDeliveries::Table.to_string();
        for (name, column) in [
            (indexes::DELIVERIES_EVENT_ID, WebhookDeliveries::EventId),
            (indexes::DELIVERIES_AGENT_ID, WebhookDeliveries::AgentId),
        ] {
            ensure_index(
                manager,
                &deliveries,
                Index::create()
                    .name(name)
                    .table(WebhookDeliveries::Table)
                    .col(column)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_our_table(
            manager,
            WebhookDeliveries::Table,
            &[indexes::DELIVERIES_EVENT_ID, indexes::DELIVERIES_AGENT_ID],
        )
        .await?;

        drop_present_columns(manager, Agents::Table, &agent_columns()).await?;
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

/// A foreign key from `webhook_deliveries.column` that deletes a delivery with its agent or
/// organization: history has no meaning without them.
fn cascade(
    name: &str,
    column: WebhookDeliveries,
    (table, key): (impl IntoIden, impl IntoIden),
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(WebhookDeliveries::Table, column)
        .to(table, key)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}
