//! Baseline: `organizations` and `agents`, the tables the webhook feature extends.
//!
//! Production databases usually have these tables already, made by another tool (the platform's
//! Alembic history, for instance) with more columns than ours and many rows. The baseline adopts
//! them: a table that exists is left exactly as it is, after checking that it has the columns the
//! service reads, each of a compatible type family ([`crate::ownership`]), and the adoption is
//! recorded. Its `down` never drops an adopted table (it drops only our index on it), and refuses
//! to drop a table it created that holds rows unless data loss is allowed.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{boolean, string, text_null};

use crate::columns::{utc_timestamp, utc_timestamp_default_now};
use crate::existing_index::{drop_index_if_present, ensure_index};
use crate::indexes;
use crate::ownership::{Strictness, drop_record_table_if_empty, drop_table_if_ours, ensure_table};
use crate::tables::{Agents, Organizations};

const FK_AGENTS_ORGANIZATION_ID: &str = "fk_agents_organization_id";

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();

        let organizations = Table::create()
            .table(Organizations::Table)
            .col(string(Organizations::Id).primary_key())
            .col(string(Organizations::Name))
            .col(utc_timestamp_default_now(backend, Organizations::CreatedAt))
            .col(utc_timestamp(backend, Organizations::UpdatedAt))
            .col(boolean(Organizations::IsDeleted).default(false))
            .to_owned();
        ensure_table(
            manager,
            Organizations::Table,
            organizations,
            Strictness::Host,
        )
        .await?;

        let agents = Table::create()
            .table(Agents::Table)
            .col(string(Agents::Id).primary_key())
            .col(string(Agents::OrganizationId))
            .col(string(Agents::Name))
            .col(text_null(Agents::Description))
            .col(utc_timestamp_default_now(backend, Agents::CreatedAt))
            .col(utc_timestamp(backend, Agents::UpdatedAt))
            .col(boolean(Agents::IsDeleted).default(false))
            .foreign_key(
                ForeignKey::create()
                    .name(FK_AGENTS_ORGANIZATION_ID)
                    .from(Agents::Table, Agents::OrganizationId)
                    .to(Organizations::Table, Organizations::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            )
            .to_owned();
        ensure_table(manager, Agents::Table, agents, Strictness::Host).await?;

        ensure_index(
            manager,
            &Agents::Table.to_string(),
            Index::create()
                .name(indexes::AGENTS_CREATED_AT)
                .table(Agents::Table)
                .col(Agents::CreatedAt)
                .col(Agents::Id)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Our index on an adopted `agents` goes; on our own `agents` it goes with the table.
        drop_index_if_present(manager, Agents::Table, indexes::AGENTS_CREATED_AT).await?;
        let ours = crate::owned::all_tables();
        // `agents` first: it references `organizations`.
        for table in [Agents::Table.to_string(), Organizations::Table.to_string()] {
            drop_table_if_ours(manager, &table, &ours).await?;
        }
        drop_record_table_if_empty(manager).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
