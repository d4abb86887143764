//! `signing_secrets`: what signing-secret rotation and Ed25519 signatures need.
//!
//! * `webhook_previous_secrets`: an agent's previous signing secrets, each sealed exactly like
//!   `agents.webhook_secret` (the same envelope, key id and agent-id binding), with the instant
//!   it stops signing (`expires_at`). Deleted with the agent (`ON DELETE CASCADE`). The index
//!   `(agent_id, expires_at)` serves the sender's "live secrets of this agent" lookup and the
//!   per-agent clean-up (and the foreign key on MariaDB).
//! * On `agents`: `webhook_ed25519_secret_key` (the sealed `whsk_` private key) and
//!   `webhook_ed25519_public_key` (the `whpk_` public key, readable). Nullable without a
//!   default, so adding them rewrites no rows.
//!
//! Every step checks whether it is done already, so an interrupted run on MariaDB (no
//! transactional DDL) can be repeated; `down` removes exactly what `up` added.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{string, text, text_null};
use sea_orm_migration::sea_orm::DbBackend;

use crate::columns::{add_missing_columns, drop_present_columns, id_pk, utc_timestamp};
use crate::existing_index::ensure_index;
use crate::indexes;
use crate::ownership::{Strictness, drop_our_table, ensure_table};
use crate::tables::{Agents, WebhookPreviousSecrets as Previous};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The Ed25519 columns this migration adds to `agents`, in order (also the list
/// [`crate::owned`] gives the host).
pub(crate) fn agent_columns() -> [ColumnDef; 2] {
    [
        text_null(Agents::WebhookEd25519SecretKey),
        text_null(Agents::WebhookEd25519PublicKey),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend: DbBackend = manager.get_database_backend();

        add_missing_columns(manager, Agents::Table, agent_columns()).await?;

        ensure_table(
            manager,
            Previous::Table,
            Table::create()
                .table(Previous::Table)
                .if_not_exists()
                .col(id_pk(backend, Previous::Id))
                .col(string(Previous::AgentId))
                .col(string(Previous::KeyId))
                .col(text(Previous::SealedSecret))
                .col(
                    utc_timestamp(backend, Previous::ExpiresAt)
                        .not_null()
                        .take(),
                )
                .col(
                    utc_timestamp(backend, Previous::CreatedAt)
                        .not_null()
                        .take(),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_webhook_previous_secrets_agent_id")
                        .from(Previous::Table, Previous::AgentId)
                        .to(Agents::Table, Agents::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
            Strictness::Ours,
        )
        .await?;

        ensure_index(
            manager,
            &Previous::Table.to_string(),
            Index::create()
                .name(indexes::PREVIOUS_SECRETS_AGENT_EXPIRES)
                .table(Previous::Table)
                .col(Previous::AgentId)
                .col(Previous::ExpiresAt)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_our_table(
            manager,
            Previous::Table,
            &[indexes::PREVIOUS_SECRETS_AGENT_EXPIRES],
        )
        .await?;
        if manager.has_table(Agents::Table.to_string()).await? {
            drop_present_columns(manager, Agents::Table, &agent_columns()).await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
