//! [`Migrator`]: the migration list of `lib.rs` plus a checked `up` and `down` (a dry run of
//! every migration first, so refusals come before the first change) and the safe `fresh`,
//! `refresh` and `reset`.
//!
//! **Interrupted rollbacks.** MariaDB commits each DDL statement as it runs, and sea-orm-migration
//! deletes a migration's `seaql_migrations` row only after its whole `down`: a `down` (or
//! `fresh`, `refresh`, `reset`) killed half way leaves the migration recorded as applied with
//! part of its objects dropped. A plain `up` would then do nothing (it is "applied"), or fail on
//! a later migration's missing table. So:
//!
//! * `down` records a marker before each migration's rollback and removes it after
//!   ([`crate::ownership::begin_rollback`]);
//! * `up` first checks every applied migration: a dry run of their `up`s, in order, lists what
//!   each lacks (or removes but is still there), and the markers name interrupted rollbacks.
//!   From the first incomplete migration on, it runs the `up` of each applied migration again
//!   (each step checks whether it is done, so this only adds what is missing and removes what
//!   should be gone), then applies the pending ones, then checks again and fails, naming the
//!   migration and the objects, if anything is still missing. Completing forward, not finishing
//!   the rollback: the rollback may need `--allow-data-loss`, and `up` is what was asked for.
//! * `status` ([`status`]) shows such a migration as `Applied, incomplete: …`.
//!
//! The check runs on every backend (PostgreSQL and SQLite roll a killed migration back, but an
//! object dropped by hand is found the same way); on a migrated MariaDB database it adds about
//! 50–100 ms to `up`. An applied migration whose check fails (an object is there but no longer
//! as it needs, e.g. a column whose type was changed) is reported and left alone, not
//! re-applied, unless an earlier one must be completed, which then fails on it.
//!
//! These overrides live here, not in `lib.rs`, because `sea-orm-cli migrate generate` rewrites
//! `lib.rs` from the migration list to the end of the file.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{
    DatabaseExecutor, DatabaseTransaction, DbBackend, TransactionTrait,
};

use crate::ownership;

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
    /// refuses, before the first change, an existing object it cannot adopt. An applied
    /// migration that is incomplete (its rollback was interrupted) is completed first, and the
    /// migrations applied after it are run again (see the module docs).
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

    /// A transaction (a savepoint inside one).
    async fn begin(self) -> Result<DatabaseTransaction, DbErr> {
        match self {
            Executor::Connection(c) => c.begin().await,
            Executor::Transaction(t) => t.begin().await,
        }
    }

    async fn plain_up(self, steps: Option<u32>) -> Result<(), DbErr> {
        match self {
            Executor::Connection(c) => Plain::up(c, steps).await,
            Executor::Transaction(t) => Plain::up(t, steps).await,
        }
    }

    async fn plain_down(self, steps: Option<u32>) -> Result<(), DbErr> {
        match self {
            Executor::Connection(c) => Plain::down(c, steps).await,
            Executor::Transaction(t) => Plain::down(t, steps).await,
        }
    }
}

/// An applied migration as a dry run of its `up` (after those of the applied migrations before
/// it) finds it.
struct Applied {
    name: String,
    /// Objects it leaves in place that are missing.
    missing: Vec<String>,
    /// Objects it removes that are there.
    left_over: Vec<String>,
    /// Its rollback began and did not end.
    interrupted: bool,
    /// The dry run failed (an object is there but not as needed): not checked further.
    unchecked: Option<String>,
}

impl Applied {
    /// Whether `up` must run it again.
    fn incomplete(&self) -> bool {
        !self.missing.is_empty() || !self.left_over.is_empty() || self.interrupted
    }

    /// What is wrong, e.g. "missing table `x`, column `t.c`; its rollback was interrupted".
    fn problems(&self) -> String {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing {}", self.missing.join(", ")));
        }
        if !self.left_over.is_empty() {
            parts.push(format!("left over {}", self.left_over.join(", ")));
        }
        if self.interrupted {
            parts.push("its rollback was interrupted".to_owned());
        }
        parts.join("; ")
    }
}

/// Every applied migration, oldest first, checked (read-only): see the module docs.
async fn check_applied(manager: &SchemaManager<'_>) -> Result<Vec<Applied>, DbErr> {
    let db = manager.get_connection();
    let applied = names(Plain::get_applied_migrations_read_only(db).await?);
    let interrupted = ownership::interrupted_rollbacks(manager).await?;
    let list = Migrator::list();
    let mut failed: Vec<(String, String)> = Vec::new();
    let ((), findings) = ownership::in_dry_run(async {
        for name in &applied {
            let Some(migration) = list.iter().find(|m| m.name() == name) else {
                continue;
            };
            ownership::dry_run_migration(name);
            if let Err(err) = migration.up(manager).await {
                failed.push((name.clone(), describe(&err)));
            }
        }
    })
    .await;
    Ok(applied
        .into_iter()
        .map(|name| {
            let mine = findings.gaps.iter().filter(|g| g.migration == name);
            let (missing, left_over): (Vec<_>, Vec<_>) = mine.partition(|g| g.wanted);
            Applied {
                missing: missing.iter().map(|g| g.object()).collect(),
                left_over: left_over.iter().map(|g| g.object()).collect(),
                interrupted: interrupted.contains(&name),
                unchecked: failed
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, e)| e.clone()),
                name,
            }
        })
        .collect())
}

fn describe(err: &DbErr) -> String {
    match err {
        DbErr::Migration(message) | DbErr::Custom(message) => message.clone(),
        other => other.to_string(),
    }
}

/// Logs each migration's status as sea-orm-migration's `status` does (`Migration 'name'...
/// Applied`), adding what an applied migration lacks: `Applied, incomplete: missing table `x`;
/// `migration up` completes it`. Read-only: it creates no table and takes no lock.
#[cfg(feature = "cli")]
pub(crate) async fn status<'c, C>(db: C) -> Result<(), DbErr>
where
    C: IntoSchemaManagerConnection<'c>,
{
    on_executor(db, |conn| {
        Box::pin(async move {
            let manager = conn.manager();
            let checked = check_applied(&manager).await?;
            tracing::info!("Checking migration status");
            for migration in Plain::get_migration_with_status_read_only(manager.get_connection())
                .await?
            {
                let name = migration.name();
                let Some(applied) = checked.iter().find(|a| a.name == name) else {
                    tracing::info!("Migration '{name}'... Pending");
                    continue;
                };
                if applied.incomplete() {
                    tracing::info!(
                        "Migration '{name}'... Applied, incomplete: {}; `migration up` completes it",
                        applied.problems()
                    );
                } else if let Some(err) = &applied.unchecked {
                    tracing::info!("Migration '{name}'... Applied, cannot be checked: {err}");
                } else {
                    tracing::info!("Migration '{name}'... Applied");
                }
            }
            Ok(())
        })
    })
    .await
}

/// Runs `up` of `migration` again, in a transaction when it asks for one (as sea-orm-migration
/// does), without touching its `seaql_migrations` row.
async fn reapply(conn: Executor<'_>, migration: &dyn MigrationTrait) -> Result<(), DbErr> {
    let manager = conn.manager();
    let use_transaction = migration
        .use_transaction()
        .unwrap_or(manager.get_database_backend() == DbBackend::Postgres);
    if !use_transaction {
        return migration.up(&manager).await;
    }
    let txn = conn.begin().await?;
    migration.up(&SchemaManager::new(&txn)).await?;
    txn.commit().await
}

/// The dry run of the migrations `direction` would run, then the real run. `up` first completes
/// incomplete applied migrations; `down` marks each rollback while it runs (module docs).
async fn checked(conn: Executor<'_>, direction: Direction) -> Result<(), DbErr> {
    let manager = conn.manager();
    let db = manager.get_connection();
    let mut applied_checks = Vec::new();
    // Applied migrations whose `up` runs again: from the first incomplete one on.
    let mut redo: Vec<String> = Vec::new();
    let (todo, steps): (Vec<String>, Option<u32>) = match direction {
        Direction::Up(steps) => {
            applied_checks = check_applied(&manager).await?;
            if let Some(first) = applied_checks.iter().position(Applied::incomplete) {
                redo = applied_checks[first..]
                    .iter()
                    .map(|a| a.name.clone())
                    .collect();
            }
            (
                names(Plain::get_pending_migrations_read_only(db).await?),
                steps,
            )
        }
        Direction::Down(steps) => {
            let mut applied = names(Plain::get_applied_migrations_read_only(db).await?);
            applied.reverse();
            (applied, steps)
        }
    };
    let take = steps.map_or(usize::MAX, |s| s as usize);
    let list = Migrator::list();
    let find = |name: &str| list.iter().find(|m| m.name() == name);
    let (checked, findings) = ownership::in_dry_run(async {
        for name in redo.iter().chain(todo.iter().take(take)) {
            let Some(migration) = find(name) else {
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
    ownership::refuse_losses(&findings.losses)?;
    match direction {
        Direction::Up(steps) => {
            for applied in &applied_checks {
                if applied.incomplete() {
                    tracing::warn!(
                        "Migration '{}' is applied but incomplete ({}): completing it",
                        applied.name,
                        applied.problems()
                    );
                } else if let Some(err) = &applied.unchecked {
                    tracing::warn!("Migration '{}' cannot be checked: {err}", applied.name);
                }
            }
            for name in &redo {
                if let Some(migration) = find(name) {
                    tracing::info!("Applying migration '{name}' again");
                    reapply(conn, migration.as_ref()).await?;
                }
            }
            // Markers of rollbacks that completed but for the marker's removal go too.
            for name in ownership::interrupted_rollbacks(&manager).await? {
                if redo.contains(&name) || !applied_checks.iter().any(|a| a.name == name) {
                    ownership::end_rollback(&manager, &name).await?;
                }
            }
            if let Some(steps) = steps {
                // sea-orm-migration would say the number asked for, not the number applied.
                let n = todo.len().min(steps as usize);
                if n > 0 {
                    tracing::info!("Applying {}", migrations(n, "pending"));
                }
            }
            conn.plain_up(steps).await?;
            if redo.is_empty() {
                return Ok(());
            }
            match check_applied(&manager)
                .await?
                .iter()
                .find(|a| a.incomplete())
            {
                None => Ok(()),
                Some(still) => Err(DbErr::Migration(format!(
                    "migration `{}` is still incomplete after being applied again: {}",
                    still.name,
                    still.problems()
                ))),
            }
        }
        Direction::Down(_) => {
            // A marker of a migration not applied is left from a rollback killed after its
            // row went; it would keep the record table alive after the last rollback.
            for name in ownership::interrupted_rollbacks(&manager).await? {
                if !todo.contains(&name) {
                    ownership::end_rollback(&manager, &name).await?;
                }
            }
            // Rolled back one at a time, each with its marker: sea-orm-migration's own count
            // would be "1 applied migrations" each time.
            match todo.iter().take(take).count() {
                0 => tracing::info!("No applied migrations"),
                n => tracing::info!("Rolling back {}", migrations(n, "applied")),
            }
            for name in todo.iter().take(take) {
                ownership::begin_rollback(&manager, name).await?;
                conn.plain_down(Some(1)).await?;
                ownership::end_rollback(&manager, name).await?;
            }
            if Plain::get_applied_migrations_read_only(db)
                .await?
                .is_empty()
            {
                ownership::drop_record_table_if_empty(&manager).await?;
            }
            Ok(())
        }
    }
}

/// `1 applied migration`, `3 pending migrations`.
fn migrations(n: usize, state: &str) -> String {
    format!("{n} {state} migration{}", if n == 1 { "" } else { "s" })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_of_migrations_take_the_noun_that_fits() {
        assert_eq!(migrations(1, "applied"), "1 applied migration");
        assert_eq!(migrations(2, "pending"), "2 pending migrations");
    }

    /// A rollback marker holds the migration's name in the record table's `object_name`,
    /// `varchar(64)`: a longer name would make every `down` of that migration fail.
    #[test]
    fn every_migration_name_fits_the_rollback_marker() {
        for migration in Migrator::list() {
            assert!(migration.name().len() <= 64, "{}", migration.name());
        }
    }
}
