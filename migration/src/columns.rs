//! Column definitions whose SQL type differs per backend, and the idempotent steps that add
//! and drop columns.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

/// How every writer stores a UTC instant in our SQLite columns (a `chrono` format string):
/// `YYYY-MM-DD HH:MM:SS.ffffff+00:00`. Fixed width, so text order is time order (the claim,
/// history and prune queries compare text on SQLite); microseconds, the precision of the other
/// backends. The server default below writes the same format; the service binds its instants
/// as text in this format, because sqlx's own encoding (`T`, 0 to 9 digits) would not be.
pub const SQLITE_TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f+00:00";

/// A UTC instant, nullable unless the caller says otherwise.
///
/// * PostgreSQL: `timestamp with time zone`.
/// * SQLite: text in one fixed format, [`SQLITE_TIMESTAMP_FORMAT`].
/// * MySQL/MariaDB: `datetime(6)`: microseconds kept, and no year-2038 limit as with
///   `timestamp`. sqlx sets the session time zone to UTC, so values are UTC.
pub fn utc_timestamp(backend: DbBackend, col: impl IntoIden) -> ColumnDef {
    let mut def = ColumnDef::new(col);
    match backend {
        DbBackend::MySql => def.custom(Alias::new("datetime(6)")),
        _ => def.timestamp_with_time_zone(),
    };
    def.null().take()
}

/// A UTC instant that is NOT NULL and defaults to the current time on the server.
pub fn utc_timestamp_default_now(backend: DbBackend, col: impl IntoIden) -> ColumnDef {
    let now = match backend {
        DbBackend::MySql => Expr::cust("CURRENT_TIMESTAMP(6)"),
        // SQLite's clock has milliseconds: padded to the six digits of SQLITE_TIMESTAMP_FORMAT.
        DbBackend::Sqlite => Expr::cust("(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000+00:00')"),
        _ => Expr::current_timestamp(),
    };
    utc_timestamp(backend, col).not_null().default(now).take()
}

/// A surrogate key the database assigns: `bigint` identity on PostgreSQL and MariaDB
/// (`big_pk_auto`); on SQLite `integer PRIMARY KEY` without `AUTOINCREMENT`, an alias of the
/// rowid. `AUTOINCREMENT` would only add that ids of deleted rows are never reused (nothing
/// refers to these ids outside their row), and it makes SQLite create `sqlite_sequence`, a
/// table that can never be dropped: a full rollback would leave it in the host's database.
pub(crate) fn id_pk(backend: DbBackend, col: impl IntoIden) -> ColumnDef {
    match backend {
        DbBackend::Sqlite => ColumnDef::new(col)
            .integer()
            .not_null()
            .primary_key()
            .take(),
        _ => sea_orm_migration::schema::big_pk_auto(col),
    }
}

/// Adds each of `columns` that `table` lacks, one statement per column (SQLite allows a single
/// change per `ALTER TABLE`), so an interrupted run on MariaDB can be repeated. A column that
/// exists already must be compatible with ours and is then adopted (and recorded as such): see
/// [`crate::ownership`].
pub(crate) async fn add_missing_columns<T: IntoIden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    table: T,
    columns: impl IntoIterator<Item = ColumnDef>,
) -> Result<(), DbErr> {
    let name = table.into_iden().to_string();
    for column in columns {
        crate::ownership::ensure_column(manager, &name, column).await?;
    }
    Ok(())
}

/// Drops each of `columns` that `table` has and that we added, last first: the reverse of
/// [`add_missing_columns`], repeatable in the same way. Adopted columns stay; a column holding
/// values (other than its default) is refused unless data loss is allowed.
pub(crate) async fn drop_present_columns<T: IntoIden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    table: T,
    columns: &[ColumnDef],
) -> Result<(), DbErr> {
    let name = table.into_iden().to_string();
    for column in columns.iter().rev() {
        crate::ownership::drop_column_if_ours(manager, &name, column).await?;
    }
    Ok(())
}
