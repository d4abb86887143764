//! One migration at a time: a lock that every process changing the schema takes first.
//!
//! Two deploy pods starting at once both run `migration up`. Without a lock both read the same
//! list of pending migrations and the slower one fails half way (a duplicate `seaql_migrations`
//! row, an object that appeared meanwhile, SQLite's "database is locked"). With it the second
//! waits, then finds nothing pending and succeeds.
//!
//! How it works per backend, and how a library caller takes it: [`MigrationLock`].

use std::time::Duration;

use sea_orm_migration::MigratorTrait;
use sea_orm_migration::sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseExecutor, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};

/// How long a process waits for another one's migration before it gives up with an error.
/// Long enough for the webhook migration on millions of agents; a deploy that waits longer has a
/// stuck peer, which an operator should look at.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The PostgreSQL advisory lock key (`awmigrat` in ASCII); advisory locks are per database.
const POSTGRES_KEY: i64 = 0x6177_6d69_6772_6174;

/// The migration lock, held until [`MigrationLock::release`] (or until the session ends), so
/// that concurrent deploys take turns instead of failing half way.
///
/// | backend | the lock | waits at most |
/// |---|---|---|
/// | PostgreSQL | `pg_advisory_xact_lock` (per database) in a transaction of its own, held open beside the migrations | [`LOCK_TIMEOUT`] (`lock_timeout`) |
/// | MariaDB/MySQL | `GET_LOCK` named after the database, on a connection of its own | [`LOCK_TIMEOUT`] |
/// | SQLite | the database's write lock: the whole command runs in one `BEGIN IMMEDIATE` transaction | the connection's busy timeout (the CLI sets [`LOCK_TIMEOUT`]) |
///
/// The lock ends with the session that holds it, so a killed process never leaves it behind.
///
/// The migration CLI takes it around every command that changes the schema. An app server that
/// migrates at start-up calls [`up_locked`] (re-exported as `agent_webhooks::migrate`), which
/// takes it the same way; never `Migrator::up` on the pool directly. A caller that runs another
/// command of [`crate::Migrator`] takes it with [`MigrationLock::acquire`] and runs the
/// migrator on [`MigrationLock::executor`], as [`up_locked`] does:
///
/// ```no_run
/// # async fn f(db: &sea_orm_migration::sea_orm::DatabaseConnection) -> Result<(), sea_orm_migration::DbErr> {
/// use migration::{MigrationLock, Migrator, MigratorTrait};
/// let lock = MigrationLock::acquire(db).await?;
/// let result = Migrator::down(lock.executor(), Some(1)).await;
/// lock.release(result.is_ok()).await?;
/// result
/// # }
/// ```
///
/// On PostgreSQL and MariaDB the lock occupies one pooled connection while the migrations use
/// others, so the pool needs at least two.
pub struct MigrationLock<'a> {
    db: &'a DatabaseConnection,
    held: Held,
}

enum Held {
    /// PostgreSQL: a transaction holding the advisory transaction lock.
    Postgres(DatabaseTransaction),
    /// MariaDB/MySQL: a transaction pinning the connection that holds the named lock.
    MySql(DatabaseTransaction, String),
    /// SQLite: the `BEGIN IMMEDIATE` transaction the command runs in.
    Sqlite(DatabaseTransaction),
}

impl<'a> MigrationLock<'a> {
    /// Waits until no other process holds the migration lock of this database, then takes it.
    ///
    /// # Errors
    ///
    /// A database error, or [`DbErr::Custom`] saying how long it waited when another process
    /// held the lock for longer than [`LOCK_TIMEOUT`].
    pub async fn acquire(db: &'a DatabaseConnection) -> Result<MigrationLock<'a>, DbErr> {
        let held = match db.get_database_backend() {
            DbBackend::Postgres => {
                let txn = db.begin().await?;
                let got = query_value::<bool>(
                    &txn,
                    &format!("SELECT pg_try_advisory_xact_lock({POSTGRES_KEY})"),
                )
                .await?;
                if !got {
                    tracing::info!("another migration is running: waiting for it to finish");
                    let ms = LOCK_TIMEOUT.as_millis();
                    txn.execute_unprepared(&format!("SET LOCAL lock_timeout = {ms}"))
                        .await?;
                    txn.execute_unprepared(&format!(
                        "SELECT pg_advisory_xact_lock({POSTGRES_KEY})"
                    ))
                    .await
                    .map_err(|e| timed_out(&e))?;
                }
                Held::Postgres(txn)
            }
            DbBackend::MySql => {
                let txn = db.begin().await?;
                // Named locks are server-wide: name it after the database so migrations of
                // other databases on the server do not wait for each other (64 characters at
                // most, hence the hash).
                let name =
                    query_value::<String>(&txn, "SELECT CONCAT('aw_migrate_', SHA1(DATABASE()))")
                        .await?;
                let mut got = get_lock(&txn, &name, 0).await?;
                if !got {
                    tracing::info!("another migration is running: waiting for it to finish");
                    got = get_lock(&txn, &name, LOCK_TIMEOUT.as_secs()).await?;
                }
                if !got {
                    return Err(DbErr::Custom(format!(
                        "another migration held the migration lock for more than {} s; \
                         is one stuck?",
                        LOCK_TIMEOUT.as_secs()
                    )));
                }
                Held::MySql(txn, name)
            }
            DbBackend::Sqlite => {
                let options = TransactionOptions {
                    sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                    ..Default::default()
                };
                let txn = db
                    .begin_with_options(options)
                    .await
                    .map_err(|e| timed_out(&e))?;
                Held::Sqlite(txn)
            }
            other => {
                return Err(DbErr::Custom(format!(
                    "no migration lock for the {other:?} backend"
                )));
            }
        };
        Ok(MigrationLock { db, held })
    }

    /// Where the migrator runs while the lock is held: the pool on PostgreSQL and MariaDB, the
    /// lock's own transaction on SQLite (whose write lock is the lock).
    pub fn executor(&self) -> DatabaseExecutor<'_> {
        match &self.held {
            Held::Sqlite(txn) => DatabaseExecutor::Transaction(txn),
            Held::Postgres(_) | Held::MySql(..) => DatabaseExecutor::Connection(self.db),
        }
    }

    /// Releases the lock. `succeeded` says whether the work done under it should stay: on
    /// SQLite, where the work ran inside the lock's transaction, `false` rolls it back.
    ///
    /// # Errors
    ///
    /// A database error while committing (SQLite) or releasing; the lock ends with its session
    /// anyway.
    pub async fn release(self, succeeded: bool) -> Result<(), DbErr> {
        match self.held {
            Held::Postgres(txn) => txn.rollback().await,
            Held::MySql(txn, name) => {
                let stmt = Statement::from_sql_and_values(
                    DbBackend::MySql,
                    "SELECT RELEASE_LOCK(?)",
                    [name.into()],
                );
                let released = txn.query_one_raw(stmt).await;
                txn.rollback().await?;
                released.map(|_| ())
            }
            Held::Sqlite(txn) if succeeded => txn.commit().await,
            Held::Sqlite(txn) => txn.rollback().await,
        }
    }
}

/// Applies every pending migration under the migration lock: the one call an app server that
/// migrates at start-up needs, so that replicas starting together take turns instead of
/// failing half way (see [`MigrationLock`]). Nothing pending is a quick no-op.
///
/// On PostgreSQL and MariaDB the pool needs at least two connections (the lock holds one). On
/// SQLite a second process waits for the first as long as the pool's busy timeout (sqlx's
/// default is 5 s; the migration CLI sets [`LOCK_TIMEOUT`]).
///
/// # Errors
///
/// What [`MigrationLock::acquire`] and `Migrator::up` return: a database error, an existing
/// object that cannot be adopted, or a lock held by another process for longer than
/// [`LOCK_TIMEOUT`].
pub async fn up_locked(db: &DatabaseConnection) -> Result<(), DbErr> {
    under_lock(db, |on| crate::Migrator::up(on, None)).await
}

/// A migrator's future running on the lock's executor.
pub(crate) type LockedWork<'e, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, DbErr>> + Send + 'e>>;

/// Runs `work` on [`MigrationLock::executor`] while the lock is held, then releases it, keeping
/// the work only if it succeeded: the one sequence [`up_locked`] and the CLI share. The work's
/// error comes first; a failed release is reported when the work succeeded.
pub(crate) async fn under_lock<T>(
    db: &DatabaseConnection,
    work: impl for<'e> FnOnce(DatabaseExecutor<'e>) -> LockedWork<'e, T>,
) -> Result<T, DbErr> {
    let lock = MigrationLock::acquire(db).await?;
    let result = work(lock.executor()).await;
    let released = lock.release(result.is_ok()).await;
    let value = result?;
    released.map(|()| value)
}

/// `GET_LOCK(name, secs)`: whether it was granted within `secs`.
async fn get_lock(txn: &DatabaseTransaction, name: &str, secs: u64) -> Result<bool, DbErr> {
    let stmt = Statement::from_sql_and_values(
        DbBackend::MySql,
        "SELECT CAST(COALESCE(GET_LOCK(?, ?), 0) AS SIGNED)",
        [name.into(), secs.into()],
    );
    let row = txn
        .query_one_raw(stmt)
        .await?
        .ok_or_else(|| DbErr::Custom("GET_LOCK returned no row".to_owned()))?;
    Ok(row.try_get_by_index::<i64>(0)? == 1)
}

/// The first column of the one row `sql` returns.
async fn query_value<T>(txn: &DatabaseTransaction, sql: &str) -> Result<T, DbErr>
where
    T: sea_orm_migration::sea_orm::TryGetable,
{
    let stmt = Statement::from_string(txn.get_database_backend(), sql);
    let row = txn
        .query_one_raw(stmt)
        .await?
        .ok_or_else(|| DbErr::Custom(format!("{sql} returned no row")))?;
    row.try_get_by_index::<T>(0)
}

/// The error of a wait for the lock, saying what was waited for.
fn timed_out(err: &DbErr) -> DbErr {
    DbErr::Custom(format!(
        "waiting for another migration to finish (the migration lock): {err}"
    ))
}
