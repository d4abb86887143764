//! Schema migrations for agent-webhooks.
//!
//! Every migration runs on SQLite, PostgreSQL and MySQL/MariaDB. Two rules shape them:
//!
//! * **Adoption.** The baseline may find `organizations` and `agents` already made by another
//!   tool (with more columns and rows); it then leaves them as they are.
//! * **Nothing is lost.** No migration, and no CLI command, drops a table that holds rows it did
//!   not create. [`Migrator`] therefore replaces the stock `fresh` (which drops *every* table in
//!   the database) with "roll back our migrations, then apply them", and checks before `fresh`,
//!   `refresh` and `reset` that the whole rollback can succeed, so that it never stops half way.
//!
//! Each migration runs in a transaction ([`MigrationTrait::use_transaction`] is `Some(true)`).
//! MariaDB/MySQL commit DDL implicitly, so there each step also checks whether it is already
//! done: `up` after an interrupted `up` completes it, `down` after an interrupted `down` too.

#![warn(missing_docs)]

pub use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseExecutor;

#[cfg(feature = "cli")]
pub mod cli;
mod columns;
pub mod indexes;
mod m20261128_000001_baseline;
mod m20261128_000002_add_webhook_fields_to_agent;
mod m20261128_000003_delivery_bookkeeping_indexes;
pub mod owned;
mod tables;

pub use columns::SQLITE_TIMESTAMP_FORMAT;
pub use m20261128_000001_baseline::ensure_baseline_droppable;

/// Where the migration binary, the ops CLI and the service go when `DATABASE_URL` is not set:
/// a SQLite file in the working directory, created if missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://webhooks.db?mode=rwc";

/// How long connecting (and waiting for a pooled connection) may take, so an unreachable
/// server fails within seconds instead of sqlx's 30 s default.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The ordered list of agent-webhooks migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_baseline::Migration),
            Box::new(m20261128_000002_add_webhook_fields_to_agent::Migration),
            Box::new(m20261128_000003_delivery_bookkeeping_indexes::Migration),
        ]
    }

    /// Roll back every applied migration, then apply them all again.
    ///
    /// Unlike the stock implementation, which drops every table in the database (including
    /// tables another tool made and filled), this only undoes what our migrations did, and
    /// refuses up front when the baseline tables hold rows.
    async fn fresh<'c, C>(db: C) -> Result<(), DbErr>
    where
        C: IntoSchemaManagerConnection<'c>,
    {
        full_rollback(db, AfterRollback::ApplyAll).await
    }

    /// Roll back every applied migration, then apply them all again; refuses up front when the
    /// rollback would have to drop a table that holds rows.
    async fn refresh<'c, C>(db: C) -> Result<(), DbErr>
    where
        C: IntoSchemaManagerConnection<'c>,
    {
        full_rollback(db, AfterRollback::ApplyAll).await
    }

    /// Roll back every applied migration and remove the migration table; refuses up front when
    /// the rollback would have to drop a table that holds rows.
    async fn reset<'c, C>(db: C) -> Result<(), DbErr>
    where
        C: IntoSchemaManagerConnection<'c>,
    {
        full_rollback(db, AfterRollback::Uninstall).await
    }
}

/// What `fresh`, `refresh` and `reset` do once every migration is rolled back.
#[derive(Clone, Copy)]
enum AfterRollback {
    ApplyAll,
    Uninstall,
}

/// Checks that a full rollback can succeed, performs it, then does `after`.
async fn full_rollback<'c, C>(db: C, after: AfterRollback) -> Result<(), DbErr>
where
    C: IntoSchemaManagerConnection<'c>,
{
    match db.into_database_executor() {
        DatabaseExecutor::Connection(conn) => rollback_on(conn, after).await,
        DatabaseExecutor::Transaction(txn) => rollback_on(txn, after).await,
        DatabaseExecutor::OwnedTransaction(txn) => {
            rollback_on(&txn, after).await?;
            txn.commit().await
        }
    }
}

async fn rollback_on<'c, T>(conn: &'c T, after: AfterRollback) -> Result<(), DbErr>
where
    T: ConnectionTrait + Sync,
    &'c T: IntoSchemaManagerConnection<'c>,
{
    let baseline = m20261128_000001_baseline::Migration;
    let applied = Migrator::get_applied_migrations(conn).await?;
    if applied.iter().any(|m| m.name() == baseline.name()) {
        ensure_baseline_droppable(&SchemaManager::new(conn)).await?;
    }
    Migrator::down(conn, None).await?;
    match after {
        AfterRollback::ApplyAll => Migrator::up(conn, None).await,
        AfterRollback::Uninstall => Migrator::uninstall(conn).await,
    }
}
