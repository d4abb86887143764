//! [`Migrator`]: the migration list of `lib.rs` plus a checked `up` and `down` (a dry run of
//! every migration first, so refusals come before the first change) and the safe `fresh`,
//! `refresh` and `reset`.
//!
//! These overrides live here, not in `lib.rs`, because `sea-orm-cli migrate generate` rewrites
//! `lib.rs` from the migration list to the end of the file.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseExecutor;

/// The ordered list of agent-webhooks migrations, with a `fresh` that never drops other tools'
/// tables.
pub struct Migrator;

/// The same migrations with the stock `up` and `down`, which [`Migrator`]'s run after their
/// dry run.
struct Plain;

#[async_trait::async_trait]
impl MigratorTrait for Plain {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        Migrator::list()
    }
}

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    /// The list that `sea-orm-cli migrate generate` maintains at the end of `lib.rs`.
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        Self::list()
    }

    /// Applies pending migrations (all, or the first `steps`), after a dry run of each that
    /// refuses, before the first change, an existing object it cannot adopt.
    async fn up<'c, C>(db: C, steps: Option<u32>) -> Result<(), DbErr>
    where
        C: IntoSchemaManagerConnection<'c>,
    {
        on_executor(db, |conn| Box::pin(checked(conn, Direction::Up(steps)))).await
    }

    /// Rolls back applied migrations (the last `steps`, or all), after a dry run of each that
    /// refuses, before the first change, to drop data (unless [`crate::allowing_data_loss`]) or
    /// a table another table references. Adopted objects are never dropped.
    async fn down<'c, C>(db: C, steps: Option<u32>) -> Result<(), DbErr>
    where
        C: IntoSchemaManagerConnection<'c>,
    {
        on_executor(db, |conn| Box::pin(checked(conn, Direction::Down(steps)))).await
    }

    /// Roll back every applied migration, then apply them all again.
    ///
    /// Unlike the stock implementation, which drops every table in the database (including
    /// tables another tool made and filled), this only undoes what our migrations did, and
    /// refuses up front (see [`Migrator::down`]) when that would destroy data.
    async fn fresh<'c, C>(db: C) -> Result<(), DbErr>
    where
        C: IntoSchemaManagerConnection<'c>,
    {
        on_executor(db, |conn| {
            Box::pin(rollback_on(conn, AfterRollback::ApplyAll))
        })
        .await
    }

    /// The same as [`Migrator::fresh`] (the standard CLI has both names).
    async fn refresh<'c, C>(db: C) -> Result<(), DbErr>
    where
        C: IntoSchemaManagerConnection<'c>,
    {
        Self::fresh(db).await
    }

    /// Roll back every applied migration and remove the migration table; refuses up front when
    /// the rollback would destroy data.
    async fn reset<'c, C>(db: C) -> Result<(), DbErr>
    where
        C: IntoSchemaManagerConnection<'c>,
    {
        on_executor(db, |conn| {
            Box::pin(rollback_on(conn, AfterRollback::Uninstall))
        })
        .await
    }
}

/// What `fresh`, `refresh` and `reset` do once every migration is rolled back.
#[derive(Clone, Copy)]
enum AfterRollback {
    ApplyAll,
    Uninstall,
}

#[derive(Clone, Copy)]
enum Direction {
    Up(Option<u32>),
    Down(Option<u32>),
}

type Boxed<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), DbErr>> + Send + 'a>>;

/// Runs `f` on the connection or transaction behind `db` (committing an owned transaction).
async fn on_executor<'c, C>(
    db: C,
    f: impl for<'a> FnOnce(Executor<'a>) -> Boxed<'a> + Send,
) -> Result<(), DbErr>
where
    C: IntoSchemaManagerConnection<'c>,
{
    match db.into_database_executor() {
        DatabaseExecutor::Connection(conn) => f(Executor::Connection(conn)).await,
        DatabaseExecutor::Transaction(txn) => f(Executor::Transaction(txn)).await,
        DatabaseExecutor::OwnedTransaction(txn) => {
            f(Executor::Transaction(&txn)).await?;
            txn.commit().await
        }
    }
}

/// A borrowed connection or transaction, which every step below can reuse.
#[derive(Clone, Copy)]
enum Executor<'a> {
    Connection(&'a sea_orm_migration::sea_orm::DatabaseConnection),
    Transaction(&'a sea_orm_migration::sea_orm::DatabaseTransaction),
}

impl<'a> Executor<'a> {
    fn manager(self) -> SchemaManager<'a> {
        match self {
            Executor::Connection(c) => SchemaManager::new(c),
            Executor::Transaction(t) => SchemaManager::new(t),
        }
    }
}

/// The dry run of the migrations `direction` would run, then the real run.
async fn checked(conn: Executor<'_>, direction: Direction) -> Result<(), DbErr> {
    let manager = conn.manager();
    let db = manager.get_connection();
    let (todo, steps): (Vec<String>, Option<u32>) = match direction {
        Direction::Up(steps) => (
            names(Plain::get_pending_migrations_read_only(db).await?),
            steps,
        ),
        Direction::Down(steps) => {
            let mut applied = names(Plain::get_applied_migrations_read_only(db).await?);
            applied.reverse();
            (applied, steps)
        }
    };
    let take = steps.map_or(usize::MAX, |s| s as usize);
    let list = Migrator::list();
    let (checked, losses) = crate::ownership::in_dry_run(async {
        for name in todo.iter().take(take) {
            let Some(migration) = list.iter().find(|m| m.name() == name) else {
                continue;
            };
            match direction {
                Direction::Up(_) => migration.up(&manager).await?,
                Direction::Down(_) => migration.down(&manager).await?,
            }
        }
        Ok::<(), DbErr>(())
    })
    .await;
    checked?;
    crate::ownership::refuse_losses(&losses)?;
    match (direction, conn) {
        (Direction::Up(s), Executor::Connection(c)) => Plain::up(c, s).await,
        (Direction::Up(s), Executor::Transaction(t)) => Plain::up(t, s).await,
        (Direction::Down(s), Executor::Connection(c)) => Plain::down(c, s).await,
        (Direction::Down(s), Executor::Transaction(t)) => Plain::down(t, s).await,
    }
}

fn names(migrations: Vec<sea_orm_migration::Migration>) -> Vec<String> {
    migrations.iter().map(|m| m.name().to_owned()).collect()
}

async fn rollback_on(conn: Executor<'_>, after: AfterRollback) -> Result<(), DbErr> {
    checked(conn, Direction::Down(None)).await?;
    match (after, conn) {
        (AfterRollback::ApplyAll, _) => checked(conn, Direction::Up(None)).await,
        (AfterRollback::Uninstall, Executor::Connection(c)) => Migrator::uninstall(c).await,
        (AfterRollback::Uninstall, Executor::Transaction(t)) => Migrator::uninstall(t).await,
    }
}
