//! Baseline: `organizations` and `agents`, the tables the webhook feature extends.
//!
//! Production databases usually have these tables already, made by another tool (the platform's
//! Alembic history, for instance) with more columns than ours and many rows. The baseline adopts
//! them: a table that exists is left exactly as it is, after checking that it has the columns our
//! entities read. Its `down` refuses to drop a table that still holds rows, because those rows
//! were not created by this migration.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{boolean, string, text_null};

use crate::columns::{utc_timestamp, utc_timestamp_default_now};
use crate::existing_index::ensure_index;
use crate::indexes;
use crate::tables::{Agents, Organizations};

const FK_AGENTS_ORGANIZATION_ID: &str = "fk_agents_organization_id";

/// The columns an adopted table must have, since the generated entities select them.
const ORGANIZATION_COLUMNS: [Organizations; 5] = [
    Organizations::Id,
    Organizations::Name,
    Organizations::CreatedAt,
    Organizations::UpdatedAt,
    Organizations::IsDeleted,
];
const AGENT_COLUMNS: [Agents; 7] = [
    Agents::Id,
    Agents::OrganizationId,
    Agents::Name,
    Agents::Description,
    Agents::CreatedAt,
    Agents::UpdatedAt,
    Agents::IsDeleted,
];

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
        adopt_or_create(
            manager,
            Organizations::Table,
            &ORGANIZATION_COLUMNS,
            organizations,
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
        adopt_or_create(manager, Agents::Table, &AGENT_COLUMNS, agents).await?;

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
        ensure_baseline_droppable(manager).await?;
        // `agents` first: it references `organizations`.
        for table in [Agents::Table.to_string(), Organizations::Table.to_string()] {
            manager
                .drop_table(
                    Table::drop()
                        .table(Alias::new(table))
                        .if_exists()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

/// Fails, naming the table, when `agents` or `organizations` holds rows.
///
/// The baseline's `down`, and `fresh`/`refresh`/`reset` before they start, call this: no command
/// drops rows this crate did not create.
pub async fn ensure_baseline_droppable(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    for table in [Agents::Table.to_string(), Organizations::Table.to_string()] {
        if !manager.has_table(&table).await? {
            continue;
        }
        let probe = Query::select()
            .expr(Expr::val(1))
            .from(Alias::new(table.as_str()))
            .limit(1)
            .to_owned();
        if manager.get_connection().query_one(&probe).await?.is_some() {
            return Err(DbErr::Migration(format!(
                "refusing to drop table `{table}`: it still holds rows, which this migration did \
                 not create; delete them (or drop the table) yourself if that is really intended"
            )));
        }
    }
    Ok(())
}

/// Fails, naming table and column, when an adopted table lacks a column our entities read.
/// Adopts `table` when it exists (after checking it has `columns`), or creates it.
async fn adopt_or_create<T: Iden + Copy>(
    manager: &SchemaManager<'_>,
    table: T,
    columns: &[T],
    create: TableCreateStatement,
) -> Result<(), DbErr> {
    if manager.has_table(table.to_string()).await? {
        require_columns(manager, table, columns).await
    } else {
        manager.create_table(create).await
    }
}

async fn require_columns<T: Iden + Copy>(
    manager: &SchemaManager<'_>,
    table: T,
    columns: &[T],
) -> Result<(), DbErr> {
    let table = table.to_string();
    for column in columns {
        let column = column.to_string();
        if !manager.has_column(&table, &column).await? {
            return Err(DbErr::Migration(format!(
                "cannot adopt existing table `{table}`: it has no column `{column}`"
            )));
        }
    }
    Ok(())
}
