//! Creating an index that may already exist: ours (done), or someone else's (an error).
//!
//! A name alone proves nothing: an index another tool made under our name, on other columns,
//! would make every query we planned for it slow (or, for a unique index, wrong). And on
//! MariaDB, after a `migration up` was killed during `CREATE INDEX`, the server may finish the
//! orphaned build *after* the rerun checked for the index, so the rerun's `CREATE INDEX` fails
//! with "Duplicate key name". [`ensure_index`] therefore compares what exists with what we
//! would create, before creating and again after such a failure.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::ownership::{Kind, Origin, dry_run, expect, forget, origin, record};

/// An index as found in the catalog: whether it is unique, and its columns in order.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    unique: bool,
    columns: Vec<String>,
}

/// Creates `index` on `table` unless an index of that name exists already. One that exists
/// with the same columns and uniqueness is ours (an earlier, interrupted run made it) and
/// is kept; one with another definition is an error naming it.
pub(crate) async fn ensure_index(
    manager: &SchemaManager<'_>,
    table: &str,
    index: IndexCreateStatement,
) -> Result<(), DbErr> {
    let name = index
        .get_index_spec()
        .get_name()
        .ok_or_else(|| DbErr::Migration(format!("an index on `{table}` has no name")))?
        .to_owned();
    let wanted = Found {
        unique: index.is_unique_key(),
        columns: index.get_index_spec().get_column_names(),
    };
    let existing = find(manager, table, &name).await?;
    expect(Kind::Index, table, &name, existing.is_some(), true);
    if let Some(found) = existing {
        compare(table, &name, &wanted, &found)?;
        if origin(manager, Kind::Index, table, &name).await?.is_none() {
            record(manager, Kind::Index, table, &name, Origin::Adopted).await?;
        }
        return Ok(());
    }
    if dry_run() {
        return Ok(());
    }
    record(manager, Kind::Index, table, &name, Origin::Created).await?;
    match manager.create_index(index).await {
        Ok(()) => Ok(()),
        // PostgreSQL and SQLite create indexes inside the migration's transaction, so only
        // MariaDB/MySQL can see one appear between the check and the `CREATE INDEX`.
        Err(err) if manager.get_database_backend() == DbBackend::MySql => {
            match find(manager, table, &name).await? {
                Some(found) => compare(table, &name, &wanted, &found),
                None => Err(err),
            }
        }
        Err(err) => Err(err),
    }
}

fn compare(table: &str, name: &str, wanted: &Found, found: &Found) -> Result<(), DbErr> {
    let same_columns = wanted.columns.len() == found.columns.len()
        && wanted
            .columns
            .iter()
            .zip(&found.columns)
            .all(|(w, f)| w.eq_ignore_ascii_case(f));
    if same_columns && wanted.unique == found.unique {
        return Ok(());
    }
    Err(DbErr::Migration(format!(
        "index `{name}` on `{table}` already exists as {} but must be {}; \
         drop or rename it, then run up again",
        describe(found),
        describe(wanted)
    )))
}

fn describe(index: &Found) -> String {
    format!(
        "{}({})",
        if index.unique { "UNIQUE " } else { "" },
        index.columns.join(", ")
    )
}

/// The index `name` of `table` as the catalog has it, or `None` when there is none.
async fn find(
    manager: &SchemaManager<'_>,
    table: &str,
    name: &str,
) -> Result<Option<Found>, DbErr> {
    let backend = manager.get_database_backend();
    let sql = match backend {
        DbBackend::MySql => {
            "SELECT column_name, CAST(non_unique AS SIGNED) FROM information_schema.statistics \
             WHERE table_schema = DATABASE() AND table_name = ? AND index_name = ? \
             ORDER BY seq_in_index"
        }
        DbBackend::Postgres => {
            // An expression column (attnum 0) has no attribute: it shows as a missing column.
            "SELECT a.attname::text, CASE WHEN ix.indisunique THEN 0 ELSE 1 END::int8 \
             FROM pg_index ix \
             JOIN pg_class i ON i.oid = ix.indexrelid \
             JOIN pg_class t ON t.oid = ix.indrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             CROSS JOIN LATERAL unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum \
             WHERE n.nspname = current_schema() AND t.relname = $1 AND i.relname = $2 \
             ORDER BY k.ord"
        }
        _ => {
            "SELECT ii.name, CASE WHEN il.\"unique\" THEN 0 ELSE 1 END \
             FROM pragma_index_list(?1) il, pragma_index_info(il.name) ii \
             WHERE il.name = ?2 ORDER BY ii.seqno"
        }
    };
    let stmt = Statement::from_sql_and_values(backend, sql, [table.into(), name.into()]);
    let rows = manager.get_connection().query_all_raw(stmt).await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let unique = first.try_get_by_index::<i64>(1)? == 0;
    let columns = rows
        .iter()
        .map(|row| {
            row.try_get_by_index::<Option<String>>(0)
                .map(|c| c.unwrap_or_else(|| "<expression>".to_owned()))
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(Found { unique, columns }))
}

/// Drops index `name` of `table` when it is there and not adopted, so a `down` (or an `up` that
/// removes an index) can be run again after an interruption.
pub(crate) async fn drop_index_if_present<T: IntoIden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    table: T,
    name: &str,
) -> Result<(), DbErr> {
    let table_name = table.into_iden().to_string();
    if !manager.has_table(&table_name).await? || !manager.has_index(&table_name, name).await? {
        expect(Kind::Index, &table_name, name, false, false);
        return forget(manager, Kind::Index, &table_name, Some(name)).await;
    }
    if origin(manager, Kind::Index, &table_name, name).await? == Some(Origin::Adopted) {
        return forget(manager, Kind::Index, &table_name, Some(name)).await;
    }
    if dry_run() {
        expect(Kind::Index, &table_name, name, true, false);
        return Ok(());
    }
    manager
        .drop_index(Index::drop().name(name).table(table).to_owned())
        .await?;
    forget(manager, Kind::Index, &table_name, Some(name)).await
}
