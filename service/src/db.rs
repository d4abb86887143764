//! Database plumbing every module shares.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Timelike, Utc};
use migration::CONNECT_TIMEOUT;
use sea_orm::prelude::DateTimeWithTimeZone;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseExecutor,
    DatabaseTransaction, DbBackend, DbErr, IntoDatabaseExecutor, TransactionTrait,
};

use crate::error::{Error, Result};

/// How long a pooled connection of [`connect`]'s may sit idle before it is pinged at checkout:
/// long enough that a busy pool never pings, short against the minutes after which proxies and
/// firewalls drop idle connections.
pub const PING_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a pool fit for concurrent workers: SQLite in write-ahead logging with sqlx's 5 s busy
/// timeout, so claimers wait for the write lock instead of failing; connecting and acquiring
/// give up after the migration binary's [`CONNECT_TIMEOUT`].
///
/// A pooled connection is checked with a ping only once it has been idle for
/// [`PING_AFTER_IDLE`]. sqlx's default pings on every checkout, and SeaORM checks a connection
/// out per statement, so every statement would cost two round trips; a connection that died
/// in use fails its statement instead, as it would between ping and statement.
///
/// # Errors
///
/// [`Error::BackendNotCompiled`] when `url` names a backend whose cargo feature (`postgres`,
/// `mysql`, `sqlite`) this build leaves out, before any connection is tried; else
/// [`Error::Db`].
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection> {
    migration::check_compiled(url)?;
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .min_connections(0)
        .connect_timeout(CONNECT_TIMEOUT)
        .acquire_timeout(CONNECT_TIMEOUT)
        .test_before_acquire_if_idle_for(PING_AFTER_IDLE)
        .sqlx_logging(false);
    let db = Database::connect(options).await?;
    if db.get_database_backend() == DbBackend::Sqlite {
        // Persistent in the database file: one connection setting it is enough.
        db.execute_unprepared("PRAGMA journal_mode = WAL").await?;
    }
    // A diagnosis only: a server that will not say the client port (a proxy, a restricted
    // role) must not fail the connect.
    match tcp_nodelay(&db).await {
        Ok(Some(false)) => tracing::warn!(
            "the database connection's socket lacks TCP_NODELAY, so a statement written in two \
             parts waits ~40 ms for the server's delayed ACK: declare the sqlx-core patch in \
             your workspace (agent_webhooks crate docs, \"TCP_NODELAY\")"
        ),
        Ok(_) => {}
        Err(error) => {
            tracing::debug!(%error, "could not tell whether the database socket has TCP_NODELAY")
        }
    }
    Ok(db)
}

/// Whether the socket of one of `db`'s connections has `TCP_NODELAY`, which sqlx-core 0.9.0
/// leaves off unless patched (crate docs, "TCP_NODELAY"); [`connect`] warns when it is off.
///
/// `None` when it cannot tell: SQLite, a Unix socket, a platform other than Linux, or a proxy
/// between the app and the server (the port the server sees is then not one of ours). The
/// socket is found by the client port the server reports for the connection, so no other
/// socket of the app is read.
///
/// # Errors
///
/// [`Error::Db`] when the statement asking for the client port fails.
pub async fn tcp_nodelay(db: &impl ConnectionTrait) -> Result<Option<bool>> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "SELECT CAST(inet_client_port() AS TEXT) AS port",
        DbBackend::MySql => {
            "SELECT host AS port FROM information_schema.processlist WHERE id = CONNECTION_ID()"
        }
        _ => return Ok(None),
    };
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(backend, sql))
        .await?;
    // PostgreSQL: the port, or NULL over a Unix socket; MySQL: `address:port`, or
    // `localhost` over a Unix socket.
    let port = row
        .and_then(|row| row.try_get::<Option<String>>("", "port").ok().flatten())
        .and_then(|text| text.rsplit(':').next()?.parse::<u16>().ok());
    Ok(port.and_then(nodelay_of_local_port))
}

/// `TCP_NODELAY` of this process's TCP socket bound to local `port`, found among its open
/// descriptors (`/proc/self/fd`); `None` when there is none.
#[cfg(target_os = "linux")]
fn nodelay_of_local_port(port: u16) -> Option<bool> {
    use std::os::fd::{BorrowedFd, RawFd};
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is only borrowed for `getsockname` and `getsockopt`, which
        // read and change nothing; if the app closed it meanwhile they fail (or answer for
        // the descriptor's next owner, which the port check then almost surely rejects).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let local = socket.local_addr().ok().and_then(|addr| addr.as_socket());
        let connected = socket.peer_addr().is_ok();
        if connected
            && local.is_some_and(|addr| addr.port() == port)
            && let Ok(on) = socket.tcp_nodelay()
        {
            return Some(on);
        }
    }
    None
}

#[cfg(not(target_os = "linux"))]
fn nodelay_of_local_port(_port: u16) -> Option<bool> {
    None
}

/// Applies every pending migration under the migration lock ([`migration::up_locked`]): what an
/// app server calls at start-up, so that replicas starting together take turns instead of
/// failing half way. Calling `Migrator::up` on the pool directly skips the lock.
///
/// The pool needs at least two connections on PostgreSQL and MariaDB (the lock holds one);
/// [`connect`] with 2 or more is enough.
///
/// # Errors
///
/// [`Error::Db`]: a database error, an existing object the migrations cannot adopt, or another
/// process holding the lock for longer than [`migration::LOCK_TIMEOUT`].
pub async fn migrate(db: &DatabaseConnection) -> Result<()> {
    migration::up_locked(db).await?;
    Ok(())
}

/// Largest history page, claim or delete batch: bounds the memory and lock time of one call.
pub const MAX_PAGE_SIZE: u64 = 1000;
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Now {
    /// Read by the claim statement itself, so a worker whose clock is off neither takes over
    /// live leases nor sends early.
    Database,
    /// For tests, tools and callers that keep their own clock.
    At(DateTime<Utc>),
}

impl From<DateTime<Utc>> for Now {
    fn from(t: DateTime<Utc>) -> Now {
        Now::At(t)
    }
}

/// `now`, or `now + ahead`, as an SQL value in the backend's stored format: the database's
/// clock for [`Now::Database`] (microseconds; milliseconds on SQLite), else [`stamp`].
pub(crate) fn instant_expr(backend: DbBackend, now: Now, ahead: chrono::Duration) -> Expr {
    match now {
        Now::At(t) => Expr::value(stamp(
            backend,
            t.checked_add_signed(ahead)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )),
        Now::Database => {
            let micros = ahead.num_microseconds().unwrap_or(i64::MAX);
            Expr::cust(match backend {
                DbBackend::Postgres => {
                    format!("(statement_timestamp() + INTERVAL '{micros} microseconds')")
                }
                DbBackend::MySql => format!("(UTC_TIMESTAMP(6) + INTERVAL {micros} MICROSECOND)"),
                // SQLite's clock has milliseconds; padded to SQLITE_TIMESTAMP_FORMAT's six digits.
                _ => format!(
                    "(strftime('%Y-%m-%d %H:%M:%f', 'now', '{}{}.{:03} seconds') || '000+00:00')",
                    if micros < 0 { '-' } else { '+' },
                    micros.unsigned_abs() / 1_000_000,
                    micros.unsigned_abs() % 1_000_000 / 1_000
                ),
            })
        }
    }
}

/// An instant in the backend's one stored format, for every write and comparison: on SQLite
/// the text of [`migration::SQLITE_TIMESTAMP_FORMAT`], since sqlx's own encoding (`…T…`, 0 to 9
/// digits) would not sort in time order.
pub(crate) fn stamp(backend: DbBackend, t: DateTime<Utc>) -> sea_orm::Value {
    let t = at(t);
    match backend {
        DbBackend::Sqlite => t
            .format(migration::SQLITE_TIMESTAMP_FORMAT)
            .to_string()
            .into(),
        _ => t.into(),
    }
}

/// Truncated to microseconds (PostgreSQL's and MariaDB's precision), so what is written
/// compares equal to what is read back.
pub(crate) fn at(t: DateTime<Utc>) -> DateTimeWithTimeZone {
    let micros = t
        .with_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t);
    micros.fixed_offset()
}

pub(crate) fn check_limit(limit: u64) -> Result<u64> {
    if (1..=MAX_PAGE_SIZE).contains(&limit) {
        Ok(limit)
    } else {
        Err(Error::InvalidLimit {
            limit,
            max: MAX_PAGE_SIZE,
        })
    }
}

/// Sends one statement, again after a deadlock or serialization failure when it ran on its
/// own: a normal event under concurrency. Inside the caller's transaction the error goes back
/// ([`Error::is_transient`]).
pub(crate) async fn retry_statement<T, F, Fut>(
    db: &DatabaseExecutor<'_>,
    mut step: F,
) -> Result<T, DbErr>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DbErr>>,
{
    let mut tries = 0;
    loop {
        match step().await {
            Err(err)
                if tries < TRANSIENT_RETRIES
                    && crate::error::is_transient(&err)
                    && !db.is_transaction() =>
            {
                tries += 1;
                tracing::debug!(%err, tries, "retrying after a transient database error");
            }
            result => return result,
        }
    }
}

const TRANSIENT_RETRIES: usize = 5;

pub(crate) type TxnFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'c>>;

/// SeaORM's `TransactionTrait::transaction`, run again after a transient failure. `step` owns
/// what it needs (clone it in), because its future may only borrow the transaction.
pub(crate) async fn transaction<C, T, F>(db: &C, mut step: F) -> Result<T>
where
    C: TransactionTrait<Transaction = DatabaseTransaction>,
    F: for<'c> FnMut(&'c DatabaseTransaction) -> TxnFuture<'c, T>,
{
    let mut tries = 0;
    loop {
        let txn = db.begin().await?;
        let result = step(&txn).await;
        if let Some(value) = settle(txn, result, &mut tries).await? {
            return Ok(value);
        }
    }
}

/// Runs `step` in the caller's transaction when `db` is one, without a savepoint or a repeat,
/// else as [`transaction`] does.
pub(crate) async fn in_transaction<T, F>(db: &DatabaseExecutor<'_>, mut step: F) -> Result<T>
where
    F: for<'c> FnMut(&'c DatabaseExecutor<'c>) -> TxnFuture<'c, T>,
{
    if db.is_transaction() {
        return step(db).await;
    }
    let mut tries = 0;
    loop {
        let txn = db.begin().await?;
        let result = step(&IntoDatabaseExecutor::into_database_executor(&txn)).await;
        if let Some(value) = settle(txn, result, &mut tries).await? {
            return Ok(value);
        }
    }
}

/// Commits, or after a transient failure rolls back and answers `None`, "run again". A failed
/// rollback (the connection is gone) ends the tries.
async fn settle<T>(
    txn: DatabaseTransaction,
    result: Result<T>,
    tries: &mut usize,
) -> Result<Option<T>> {
    match result {
        Ok(value) => {
            txn.commit().await?;
            Ok(Some(value))
        }
        Err(err) if *tries < TRANSIENT_RETRIES && err.is_transient() => {
            if txn.rollback().await.is_err() {
                return Err(err);
            }
            *tries += 1;
            tracing::debug!(%err, tries, "retrying after a transient database error");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The descriptor scan finds a connected socket by its local port and reads the option
    /// both ways; a port with no socket of ours is `None`.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_socket_of_a_local_port_reports_its_nodelay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let port = stream.local_addr().unwrap().port();
        stream.set_nodelay(false).unwrap();
        assert_eq!(nodelay_of_local_port(port), Some(false));
        stream.set_nodelay(true).unwrap();
        assert_eq!(nodelay_of_local_port(port), Some(true));
        drop(stream);
        assert_eq!(nodelay_of_local_port(port), None);
    }

    /// A URL of a backend whose feature is off is refused by name before any connection is
    /// tried (port 1: nothing listens there). `cargo test` builds every backend (the
    /// integration-tests dev-dependency asks for the default features), so only the SQLite
    /// connection runs here; `migration`'s `drivers` tests cover each combination, and
    /// `scripts/check-backend-features --run` runs a SQLite-only build.
    #[tokio::test]
    async fn a_url_of_a_backend_left_out_is_a_typed_error() {
        for (url, backend) in [
            ("postgres://nobody@127.0.0.1:1/x", "postgres"),
            ("mysql://nobody@127.0.0.1:1/x", "mysql"),
            ("sqlite::memory:", "sqlite"),
        ] {
            let result = if migration::backend_compiled(backend) {
                if backend != "sqlite" {
                    continue;
                }
                connect(url, 1).await.map(drop)
            } else {
                match connect(url, 1).await {
                    Err(Error::BackendNotCompiled(err)) => {
                        assert_eq!(err.backend, backend, "{url}");
                        assert!(err.to_string().contains(backend), "{err}");
                        continue;
                    }
                    other => other.map(drop),
                }
            };
            assert!(
                result.is_ok() && migration::backend_compiled(backend),
                "{url}: {result:?}"
            );
        }
    }

    #[test]
    fn limits_outside_one_to_max_are_refused_not_wrapped() {
        for bad in [0, MAX_PAGE_SIZE + 1, u64::MAX] {
            assert!(
                matches!(check_limit(bad), Err(Error::InvalidLimit { limit, .. }) if limit == bad)
            );
        }
        assert_eq!(check_limit(MAX_PAGE_SIZE).unwrap(), MAX_PAGE_SIZE);
    }
}
