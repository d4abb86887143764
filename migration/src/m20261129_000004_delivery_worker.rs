//! `delivery_worker`: what the delivery worker needs to send real requests and keep a record of
//! each one.
//!
//! * `webhook_deliveries.payload`: the exact body bytes, fixed at enqueue, so that every retry
//!   sends (and signs) the same bytes. Nullable: rows enqueued before this migration have none,
//!   and adding a nullable column without a default rewrites no rows. `bytea` on PostgreSQL,
//!   `blob` on SQLite, `mediumblob` on MariaDB (a plain `blob` stops at 64 KiB; the largest
//!   payload setting is [`crate::MAX_PAYLOAD_COLUMN_BYTES`]).
//! * `webhook_delivery_attempts`: one row per attempt (unique `(delivery_id, attempt)`), deleted
//!   with its delivery (`ON DELETE CASCADE`), so pruning a delivery prunes its attempt log.
//! * `ix_webhook_deliveries_agent_id` is dropped: `(agent_id)` is a prefix of the history index
//!   `(agent_id, created_at, id)` and of the unique `(agent_id, event_id)`, so it only cost
//!   writes. `down` restores it.
//! * Endpoint health on `agents`: `webhook_failing_since` (when the current run of failed
//!   attempts began), `webhook_disabled_at` and `webhook_disabled_reason` (when and why the
//!   worker turned the webhook off). Nullable without a default, so adding them rewrites no rows
//!   (a metadata-only change on PostgreSQL).
//!
//! Every step checks whether it is done already, so an interrupted run on MariaDB (no
//! transactional DDL) can be repeated; `down` removes exactly what `up` added.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{integer, integer_null, string, string_null, text_null};
use sea_orm_migration::sea_orm::DbBackend;

use crate::columns::{add_missing_columns, drop_present_columns, id_pk, utc_timestamp};
use crate::existing_index::{drop_index_if_present, ensure_index};
use crate::indexes;
use crate::ownership::{Strictness, drop_our_table, ensure_table};
use crate::tables::{Agents, WebhookDeliveries, WebhookDeliveryAttempts as Attempts};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The endpoint-health columns this migration adds to `agents`, in order (also the list
/// [`crate::owned`] gives the host).
pub(crate) fn agent_columns(backend: DbBackend) -> [ColumnDef; 3] {
    [
        utc_timestamp(backend, Agents::WebhookFailingSince),
        utc_timestamp(backend, Agents::WebhookDisabledAt),
        text_null(Agents::WebhookDisabledReason),
    ]
}

/// The payload column: large enough for [`crate::MAX_PAYLOAD_COLUMN_BYTES`] on every backend.
fn payload_column(backend: DbBackend) -> ColumnDef {
    let mut def = ColumnDef::new(WebhookDeliveries::Payload);
    match backend {
        DbBackend::MySql => def.custom(Alias::new("mediumblob")),
        _ => def.blob(),
    };
    def.null().take()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();

        add_missing_columns(manager, Agents::Table, agent_columns(backend)).await?;
        add_missing_columns(manager, WebhookDeliveries::Table, [payload_column(backend)]).await?;

        ensure_table(
            manager,
            Attempts::Table,
            Table::create()
                .table(Attempts::Table)
                .if_not_exists()
                .col(id_pk(backend, Attempts::Id))
                .col(string(Attempts::DeliveryId))
                .col(integer(Attempts::Attempt))
                .col(
                    utc_timestamp(backend, Attempts::StartedAt)
                        .not_null()
                        .take(),
                )
                .col(
                    utc_timestamp(backend, Attempts::FinishedAt)
                        .not_null()
                        .take(),
                )
                .col(integer_null(Attempts::StatusCode))
                .col(string_null(Attempts::ErrorClass))
                .col(text_null(Attempts::Message))
                .col(text_null(Attempts::ResponseBodyPrefix))
                .col(string_null(Attempts::RemoteAddr))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_webhook_delivery_attempts_delivery_id")
                        .from(Attempts::Table, Attempts::DeliveryId)
                        .to(WebhookDeliveries::Table, WebhookDeliveries::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
            Strictness::Ours,
        )
        .await?;

        ensure_index(
            manager,
            &Attempts::Table.to_string(),
            Index::create()
                .name(indexes::ATTEMPTS_DELIVERY_ATTEMPT)
                .table(Attempts::Table)
                .unique()
                .col(Attempts::DeliveryId)
                .col(Attempts::Attempt)
                .to_owned(),
        )
        .await?;
        drop_index_if_present(
            manager,
            WebhookDeliveries::Table,
            indexes::DELIVERIES_AGENT_ID,
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let deliveries = WebhookDeliveries::Table.to_string();
        // Gone already when a later `down` of the webhook migration was interrupted.
        let deliveries_exist = manager.has_table(&deliveries).await?;
        if deliveries_exist {
            ensure_index(
                manager,
                &deliveries,
                Index::create()
                    .name(indexes::DELIVERIES_AGENT_ID)
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::AgentId)
                    .to_owned(),
            )
            .await?;
        }

        drop_our_table(
            manager,
            Attempts::Table,
            &[indexes::ATTEMPTS_DELIVERY_ATTEMPT],
        )
        .await?;

        if deliveries_exist {
            drop_present_columns(
                manager,
                WebhookDeliveries::Table,
                &[payload_column(backend)],
            )
            .await?;
        }
        if manager.has_table(Agents::Table.to_string()).await? {
            drop_present_columns(manager, Agents::Table, &agent_columns(backend)).await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
