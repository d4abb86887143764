//! [`Migrator`]: the migration list of `lib.rs` plus the safe `fresh`, `refresh` and `reset`.
//!
//! These overrides live here, not in `lib.rs`, because `sea-orm-cli migrate generate` rewrites
//! `lib.rs` from the migration list to the end of the file.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseExecutor;

use crate::ensure_baseline_droppable;

/// The ordered list of agent-webhooks migrations, with a `fresh` that never drops other tools'
/// tables.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    /// The list that `sea-orm-cli migrate generate` maintains at the end of `lib.rs`.
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        Self::list()
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
    let baseline = crate::m20261128_000001_baseline::Migration;
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
