//! Column definitions whose SQL type differs per backend.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

/// A UTC instant, nullable unless the caller says otherwise.
///
/// * PostgreSQL: `timestamp with time zone`.
/// * SQLite: text in one fixed format (`YYYY-MM-DD HH:MM:SS.fff+00:00`), the format sqlx
///   writes, so that text order is time order.
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
        DbBackend::Sqlite => Expr::cust("(strftime('%Y-%m-%d %H:%M:%f+00:00', 'now'))"),
        _ => Expr::current_timestamp(),
    };
    utc_timestamp(backend, col).not_null().default(now).take()
}
