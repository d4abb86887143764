//! `ordered_lanes`: ordered delivery per agent, opt-in.
//!
//! * `agents.webhook_ordered`: whether the agent's events are delivered in order within their
//!   lane. `NOT NULL DEFAULT false`, a metadata-only change on PostgreSQL 11+ and MariaDB 10.3+.
//! * `webhook_deliveries.lane` and `lane_seq`: the lane key of an ordered delivery and its
//!   position in the lane (1, 2, …, without gaps); NULL for unordered deliveries. Nullable
//!   without a default, so adding them rewrites no rows.
//! * `ix_webhook_deliveries_lane (agent_id, lane, lane_seq)`: the claim's lookup of the
//!   delivery before an ordered one.
//! * `webhook_lanes`: one row per `(agent_id, lane)` holding the last position handed out; the
//!   enqueue locks it, so positions follow commit order. Deleted with the agent.
//!
//! Every step checks whether it is done already, so an interrupted run on MariaDB (no
//! transactional DDL) can be repeated; `down` removes exactly what `up` added.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_integer_null, boolean, string, string_null};

use crate::columns::{add_missing_columns, drop_present_columns};
use crate::existing_index::{drop_index_if_present, ensure_index};
use crate::indexes;
use crate::ownership::{Strictness, drop_our_table, ensure_table};
use crate::tables::{Agents, WebhookDeliveries as Deliveries, WebhookLanes as Lanes};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The column this migration adds to `agents` (also the list [`crate::owned`] gives the host).
pub(crate) fn agent_columns() -> [ColumnDef; 1] {
    [boolean(Agents::WebhookOrdered).default(false).take()]
}

/// The columns this migration adds to `webhook_deliveries`, in order.
fn delivery_columns() -> [ColumnDef; 2] {
    [
        string_null(Deliveries::Lane),
        big_integer_null(Deliveries::LaneSeq),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_missing_columns(manager, Agents::Table, agent_columns()).await?;
        add_missing_columns(manager, Deliveries::Table, delivery_columns()).await?;
        ensure_index(
            manager,
            &Deliveries::Table.to_string(),
            Index::create()
                .name(indexes::DELIVERIES_LANE)
                .table(Deliveries::Table)
                .col(Deliveries::AgentId)
                .col(Deliveries::Lane)
                .col(Deliveries::LaneSeq)
                .to_owned(),
        )
        .await?;
        ensure_table(
            manager,
            Lanes::Table,
            Table::create()
                .table(Lanes::Table)
                .if_not_exists()
                .col(string(Lanes::AgentId))
                .col(string(Lanes::Lane))
                .col(big_integer(Lanes::LastSeq))
                .primary_key(Index::create().col(Lanes::AgentId).col(Lanes::Lane))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_webhook_lanes_agent_id")
                        .from(Lanes::Table, Lanes::AgentId)
                        .to(Agents::Table, Agents::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
            Strictness::Ours,
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_our_table(manager, Lanes::Table, &[]).await?;
        if manager.has_table(Deliveries::Table.to_string()).await? {
            drop_index_if_present(manager, Deliveries::Table, indexes::DELIVERIES_LANE).await?;
            drop_present_columns(manager, Deliveries::Table, &delivery_columns()).await?;
        }
        if manager.has_table(Agents::Table.to_string()).await? {
            drop_present_columns(manager, Agents::Table, &agent_columns()).await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
