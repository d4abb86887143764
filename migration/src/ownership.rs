//! What our migrations created and what they adopted, and the checks that keep both safe.
//!
//! * **Adoption is strict.** Before `up` creates a table, a column or an index, it looks for one
//!   that exists already. One that is compatible ([`Family`], nullability and default, index
//!   columns) is adopted; one that is not is refused with one line naming it, what was found and
//!   what is needed.
//! * **Adoption is recorded**, in our table `agent_webhooks_schema_objects` (one row per table, column
//!   or index: `created` or `adopted`), whether or not the adopted table holds rows. `down`
//!   (and so `fresh`, `refresh`, `reset`) never drops an object recorded as adopted; it only
//!   forgets the record. `created` is written *before* the object is made, so that on MariaDB
//!   (no transactional DDL) an object left by an interrupted run is still known as ours.
//! * **Rollback does not destroy data by accident.** Dropping a table we created that holds
//!   rows, or a column we added that holds values, is refused unless the caller allows it
//!   ([`allowing_data_loss`], the CLI's `--allow-data-loss`).
//! * **Refusals come before the first change.** [`crate::Migrator`]'s `up` and `down` first run
//!   every migration they are about to run in a *dry run*, in which these helpers only check,
//!   and the refusals (all losses at once) come out of that.
//! * **A dry run also says what is not in place.** Each helper notes whether its object is there
//!   and whether the migration leaves it there ([`Findings::gaps`]). A dry run of the `up` of
//!   every *applied* migration, in order, therefore lists what an applied migration lacks (or
//!   what it removes that is still there): how `up` and `status` find a migration whose `down`
//!   was interrupted on MariaDB, where DDL is not transactional.
//! * **A rollback in progress is recorded** in the same table (kind `rollback`, the migration's
//!   name), written before a migration's `down` starts and removed once its `seaql_migrations`
//!   row is gone, so that an interrupted rollback is known even when it had dropped nothing yet,
//!   or only forgot records.
//!
//! Databases migrated before the record existed have no `agent_webhooks_schema_objects`: there,
//! `organizations` and `agents` count as adopted (in production they are the host's), and every
//! other object as ours.

use std::future::Future;
use std::sync::Mutex;

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::tables::{Agents, Organizations};

/// Our record of created and adopted objects.
pub(crate) const RECORD_TABLE: &str = "agent_webhooks_schema_objects";

tokio::task_local! {
    static ALLOW_DATA_LOSS: bool;
    static DRY_RUN: DryRun;
}

/// What a dry run found so far.
#[derive(Default)]
pub(crate) struct DryRun {
    losses: Mutex<Vec<String>>,
    expected: Mutex<Expected>,
}

/// The objects the dry run's migrations leave in place or remove, and whether each is there.
#[derive(Default)]
struct Expected {
    /// The migration running now, which the next notes are charged to.
    migration: String,
    objects: Vec<Gap>,
}

/// An object a migration leaves in place (`wanted`) or removes, and whether it `is_there`; a gap
/// in the schema when the two differ.
#[derive(Clone, Debug)]
pub(crate) struct Gap {
    /// The migration that last said whether the object should be there.
    pub migration: String,
    pub kind: Kind,
    pub table: String,
    pub name: String,
    pub wanted: bool,
    pub is_there: bool,
}

impl Gap {
    /// The object as messages name it: table `x`, column `t.c`, index `t.i`.
    pub(crate) fn object(&self) -> String {
        if self.kind == Kind::Table {
            format!("table `{}`", self.table)
        } else {
            format!("{} `{}.{}`", self.kind.as_str(), self.table, self.name)
        }
    }
}

/// What a dry run found: the data a rollback would destroy, and the objects that are not as the
/// migrations it ran leave them.
pub(crate) struct Findings {
    pub losses: Vec<String>,
    /// Objects wanted and missing, or removed and still there; a column or index of a missing
    /// table is left out (the table says it all).
    pub gaps: Vec<Gap>,
}

/// Runs `f` (a [`crate::Migrator`] call: `down`, `fresh`, `refresh`, `reset`) allowing it to
/// drop tables we created that hold rows and columns we added that hold values. Without it those
/// commands refuse, naming what would be destroyed; this is the library's `--allow-data-loss`.
///
/// ```no_run
/// # async fn f(db: &sea_orm_migration::sea_orm::DatabaseConnection) -> Result<(), sea_orm_migration::DbErr> {
/// use migration::{Migrator, MigratorTrait, allowing_data_loss};
/// allowing_data_loss(Migrator::down(db, Some(1))).await
/// # }
/// ```
pub async fn allowing_data_loss<F: Future>(f: F) -> F::Output {
    ALLOW_DATA_LOSS.scope(true, f).await
}

fn data_loss_allowed() -> bool {
    ALLOW_DATA_LOSS
        .try_with(|allowed| *allowed)
        .unwrap_or(false)
}

/// Whether the helpers only check (a dry run) instead of changing anything.
pub(crate) fn dry_run() -> bool {
    DRY_RUN.try_with(|_| ()).is_ok()
}

/// Runs `f` as a dry run and returns its result with what it found.
pub(crate) async fn in_dry_run<F, T>(f: F) -> (T, Findings)
where
    F: Future<Output = T>,
{
    DRY_RUN
        .scope(DryRun::default(), async {
            let out = f.await;
            let findings = DRY_RUN.with(|d| {
                let losses = std::mem::take(&mut *d.losses.lock().expect("poisoned"));
                let objects = std::mem::take(&mut d.expected.lock().expect("poisoned").objects);
                Findings {
                    losses,
                    gaps: gaps(objects),
                }
            });
            (out, findings)
        })
        .await
}

/// The objects not as wanted, tables first, without those of a missing table.
fn gaps(objects: Vec<Gap>) -> Vec<Gap> {
    let missing_table = |table: &str| {
        objects
            .iter()
            .any(|o| o.kind == Kind::Table && o.table == table && !o.is_there)
    };
    let mut gaps: Vec<Gap> = objects
        .iter()
        .filter(|o| o.wanted != o.is_there)
        .filter(|o| o.kind == Kind::Table || !missing_table(&o.table))
        .cloned()
        .collect();
    gaps.sort_by_key(|o| match o.kind {
        Kind::Table => 0,
        Kind::Column => 1,
        _ => 2,
    });
    gaps
}

/// Charges the notes that follow (in this dry run) to `migration`.
pub(crate) fn dry_run_migration(migration: &str) {
    let _ = DRY_RUN.try_with(|d| {
        migration.clone_into(&mut d.expected.lock().expect("poisoned").migration);
    });
}

/// Notes, in a dry run, whether an object is there and whether the running migration leaves it
/// there (`wanted`); a later note on the same object replaces an earlier one.
pub(crate) fn expect(kind: Kind, table: &str, name: &str, is_there: bool, wanted: bool) {
    let _ = DRY_RUN.try_with(|d| {
        let mut expected = d.expected.lock().expect("poisoned");
        let migration = expected.migration.clone();
        let same = |o: &Gap| o.kind == kind && o.table == table && o.name == name;
        expected.objects.retain(|o| !same(o));
        expected.objects.push(Gap {
            migration,
            kind,
            table: table.to_owned(),
            name: name.to_owned(),
            wanted,
            is_there,
        });
    });
}

/// The refusal for `losses`, unless the caller allowed data loss.
pub(crate) fn refuse_losses(losses: &[String]) -> Result<(), DbErr> {
    if losses.is_empty() || data_loss_allowed() {
        return Ok(());
    }
    Err(DbErr::Migration(format!(
        "refusing to destroy data: {}{RUN_AGAIN}",
        losses.join(", ")
    )))
}

/// The end of a data-loss refusal: what a library caller does. The migration binary replaces
/// it with its own command line (`crate::cli`), because the standard `sea-orm-cli migrate`,
/// which runs that binary, cannot pass `--allow-data-loss`.
pub(crate) const RUN_AGAIN: &str = concat!(
    "; if that is intended, run again with --allow-data-loss",
    " (library: migration::allowing_data_loss)"
);

/// Reports `count` rows or values that dropping `what` would destroy: noted in a dry run,
/// refused otherwise unless allowed.
async fn guard_loss(
    manager: &SchemaManager<'_>,
    what: String,
    count_sql: String,
) -> Result<(), DbErr> {
    let count = count(manager, &count_sql, []).await?;
    if count == 0 {
        return Ok(());
    }
    let loss = format!(
        "{what} holds {count} {}",
        if what.starts_with("table") {
            if count == 1 { "row" } else { "rows" }
        } else if count == 1 {
            "value"
        } else {
            "values"
        }
    );
    if DRY_RUN
        .try_with(|d| d.losses.lock().expect("poisoned").push(loss.clone()))
        .is_ok()
    {
        return Ok(());
    }
    if data_loss_allowed() {
        tracing::warn!("destroying data as allowed: {loss}");
        return Ok(());
    }
    refuse_losses(&[loss])
}

/// A table, a column or an index; or a rollback in progress (not an object: a marker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Table,
    Column,
    Index,
    Rollback,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Table => "table",
            Kind::Column => "column",
            Kind::Index => "index",
            Kind::Rollback => "rollback",
        }
    }
}

/// Who made an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Created,
    Adopted,
}

fn quote(backend: DbBackend, name: &str) -> String {
    match backend {
        DbBackend::MySql => format!("`{name}`"),
        _ => format!("\"{name}\""),
    }
}

async fn count<const N: usize>(
    manager: &SchemaManager<'_>,
    sql: &str,
    values: [sea_orm_migration::sea_orm::Value; N],
) -> Result<i64, DbErr> {
    let backend = manager.get_database_backend();
    let row = manager
        .get_connection()
        .query_one_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?
        .ok_or_else(|| DbErr::Custom(format!("{sql} returned no row")))?;
    row.try_get_by_index::<i64>(0)
}

/// Whether the baseline is recorded as applied (for databases from before the record).
async fn baseline_applied(manager: &SchemaManager<'_>) -> Result<bool, DbErr> {
    use sea_orm_migration::MigrationName;
    let table = <crate::Migrator as MigratorTrait>::migration_table_name().to_string();
    if !manager.has_table(&table).await? {
        return Ok(false);
    }
    let backend = manager.get_database_backend();
    let sql = format!(
        "SELECT COUNT(*) FROM {} WHERE version = '{}'",
        quote(backend, &table),
        crate::m20261128_000001_baseline::Migration.name()
    );
    Ok(count(manager, &sql, []).await? > 0)
}

/// The recorded origin of an object, `None` when nothing is recorded.
pub(crate) async fn origin(
    manager: &SchemaManager<'_>,
    kind: Kind,
    table: &str,
    name: &str,
) -> Result<Option<Origin>, DbErr> {
    let backend = manager.get_database_backend();
    if !manager.has_table(RECORD_TABLE).await? {
        // From before the record: the baseline tables are the host's.
        let shared = [Organizations::Table.to_string(), Agents::Table.to_string()];
        if kind == Kind::Table
            && shared.iter().any(|t| t == table)
            && baseline_applied(manager).await?
        {
            return Ok(Some(Origin::Adopted));
        }
        return Ok(None);
    }
    let (p1, p2, p3) = match backend {
        DbBackend::Postgres => ("$1", "$2", "$3"),
        _ => ("?", "?", "?"),
    };
    let sql = format!(
        "SELECT origin FROM {RECORD_TABLE} WHERE kind = {p1} AND table_name = {p2} AND object_name = {p3}"
    );
    let row = manager
        .get_connection()
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            &sql,
            [kind.as_str().into(), table.into(), name.into()],
        ))
        .await?;
    Ok(match row {
        None => None,
        Some(row) => match row.try_get_by_index::<String>(0)?.as_str() {
            "adopted" => Some(Origin::Adopted),
            _ => Some(Origin::Created),
        },
    })
}

/// Creates the record table when missing; on a database from before the record, it starts with
/// `organizations` and `agents` as adopted.
async fn ensure_record_table(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    if manager.has_table(RECORD_TABLE).await? {
        return Ok(());
    }
    let legacy = baseline_applied(manager).await?;
    manager
        .create_table(
            Table::create()
                .table(Alias::new(RECORD_TABLE))
                .if_not_exists()
                .col(ColumnDef::new(Alias::new("kind")).string_len(16).not_null())
                .col(
                    ColumnDef::new(Alias::new("table_name"))
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(Alias::new("object_name"))
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(Alias::new("origin"))
                        .string_len(16)
                        .not_null(),
                )
                .primary_key(
                    Index::create()
                        .col(Alias::new("kind"))
                        .col(Alias::new("table_name"))
                        .col(Alias::new("object_name")),
                )
                .to_owned(),
        )
        .await?;
    if legacy {
        for table in [Organizations::Table.to_string(), Agents::Table.to_string()] {
            insert_record(manager, Kind::Table, &table, "", "adopted").await?;
        }
    }
    Ok(())
}

async fn insert_record(
    manager: &SchemaManager<'_>,
    kind: Kind,
    table: &str,
    name: &str,
    origin: &str,
) -> Result<(), DbErr> {
    manager
        .exec_stmt(
            Query::insert()
                .into_table(Alias::new(RECORD_TABLE))
                .columns([
                    Alias::new("kind"),
                    Alias::new("table_name"),
                    Alias::new("object_name"),
                    Alias::new("origin"),
                ])
                .values_panic([
                    kind.as_str().into(),
                    table.into(),
                    name.into(),
                    origin.into(),
                ])
                .to_owned(),
        )
        .await
}

/// Records who made an object (nothing in a dry run).
pub(crate) async fn record(
    manager: &SchemaManager<'_>,
    kind: Kind,
    table: &str,
    name: &str,
    origin: Origin,
) -> Result<(), DbErr> {
    if dry_run() {
        return Ok(());
    }
    ensure_record_table(manager).await?;
    forget(manager, kind, table, Some(name)).await?;
    let origin = match origin {
        Origin::Created => "created",
        Origin::Adopted => "adopted",
    };
    insert_record(manager, kind, table, name, origin).await
}

/// Records that the rollback of `migration` starts (committed at once on MariaDB, before its
/// first `DROP`); [`end_rollback`] removes the marker once the migration is recorded as pending.
pub(crate) async fn begin_rollback(
    manager: &SchemaManager<'_>,
    migration: &str,
) -> Result<(), DbErr> {
    ensure_record_table(manager).await?;
    forget(manager, Kind::Rollback, "", Some(migration)).await?;
    insert_record(manager, Kind::Rollback, "", migration, "in progress").await
}

/// Removes the marker of [`begin_rollback`].
pub(crate) async fn end_rollback(
    manager: &SchemaManager<'_>,
    migration: &str,
) -> Result<(), DbErr> {
    forget(manager, Kind::Rollback, "", Some(migration)).await
}

/// The migrations whose rollback began and did not end (a process killed during `down`).
pub(crate) async fn interrupted_rollbacks(
    manager: &SchemaManager<'_>,
) -> Result<Vec<String>, DbErr> {
    if !manager.has_table(RECORD_TABLE).await? {
        return Ok(Vec::new());
    }
    let backend = manager.get_database_backend();
    let p1 = if backend == DbBackend::Postgres {
        "$1"
    } else {
        "?"
    };
    let sql = format!("SELECT object_name FROM {RECORD_TABLE} WHERE kind = {p1}");
    let rows = manager
        .get_connection()
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            &sql,
            [Kind::Rollback.as_str().into()],
        ))
        .await?;
    rows.iter()
        .map(|row| row.try_get_by_index::<String>(0))
        .collect()
}

/// Forgets the record of an object (of every object of `table` when `name` is `None`).
pub(crate) async fn forget(
    manager: &SchemaManager<'_>,
    kind: Kind,
    table: &str,
    name: Option<&str>,
) -> Result<(), DbErr> {
    if dry_run() || !manager.has_table(RECORD_TABLE).await? {
        return Ok(());
    }
    let mut delete = Query::delete();
    delete
        .from_table(Alias::new(RECORD_TABLE))
        .and_where(Expr::col(Alias::new("table_name")).eq(table));
    if let Some(name) = name {
        delete
            .and_where(Expr::col(Alias::new("kind")).eq(kind.as_str()))
            .and_where(Expr::col(Alias::new("object_name")).eq(name));
    }
    manager.exec_stmt(delete.to_owned()).await
}

/// Drops the record table once it records nothing (the end of the baseline's `down`, and of a
/// rollback of every migration: the baseline's own marker kept it until then).
pub(crate) async fn drop_record_table_if_empty(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    if dry_run() || !manager.has_table(RECORD_TABLE).await? {
        return Ok(());
    }
    let sql = format!("SELECT COUNT(*) FROM {RECORD_TABLE}");
    if count(manager, &sql, []).await? == 0 {
        manager
            .drop_table(Table::drop().table(Alias::new(RECORD_TABLE)).to_owned())
            .await?;
    }
    Ok(())
}

/// The type families adoption compares (decided once, here): a found column is compatible when
/// its family is the one our definition needs.
///
/// | family | PostgreSQL | MariaDB | SQLite (declared type) |
/// |---|---|---|---|
/// | text | `varchar`, `char`, `text` | `varchar`, `char`, `*text` | `*CHAR*`, `*CLOB*`, `*TEXT*` |
/// | integer | `smallint`, `integer`, `bigint` | `*int*` | `*INT*` |
/// | boolean | `boolean` | `tinyint(1)`, or any integer | `*BOOL*`, or any integer |
/// | timestamp | `timestamp with time zone` | `datetime`, `timestamp` (UTC session) | `*TIME*`, `*DATE*`, or text |
/// | naive timestamp | `timestamp without time zone` | — | — |
/// | json | `json`, `jsonb` | `json`, or text (MariaDB's JSON is `longtext`) | `*JSON*`, or text |
/// | blob | `bytea` | `*blob` | `*BLOB*` |
///
/// A naive timestamp is accepted only for the host's columns of an adopted `organizations` or
/// `agents` (SQLAlchemy's default `DateTime`): the service reads them as UTC. Our own timestamp
/// columns must be `timestamp with time zone` on PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Text,
    Integer,
    Boolean,
    Timestamp,
    NaiveTimestamp,
    Json,
    Blob,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Text => "text",
            Family::Integer => "integer",
            Family::Boolean => "boolean",
            Family::Timestamp => "timestamp with time zone",
            Family::NaiveTimestamp => "timestamp without time zone",
            Family::Json => "json",
            Family::Blob => "blob",
        }
    }

    /// The family our column definition needs, `None` for a type adoption does not check.
    fn of_definition(def: &ColumnDef) -> Option<Family> {
        Some(match def.get_column_type()? {
            ColumnType::Char(_) | ColumnType::String(_) | ColumnType::Text => Family::Text,
            ColumnType::TinyInteger
            | ColumnType::SmallInteger
            | ColumnType::Integer
            | ColumnType::BigInteger => Family::Integer,
            ColumnType::Boolean => Family::Boolean,
            ColumnType::DateTime | ColumnType::Timestamp | ColumnType::TimestampWithTimeZone => {
                Family::Timestamp
            }
            ColumnType::Json | ColumnType::JsonBinary => Family::Json,
            ColumnType::Blob | ColumnType::Binary(_) | ColumnType::VarBinary(_) => Family::Blob,
            ColumnType::Custom(name) => {
                let name = name.to_string().to_ascii_lowercase();
                if name.contains("datetime") || name.contains("timestamp") {
                    Family::Timestamp
                } else if name.contains("blob") {
                    Family::Blob
                } else {
                    return None;
                }
            }
            _ => return None,
        })
    }

    /// The family of a type as the catalog names it, `None` for any other type.
    fn of_catalog(backend: DbBackend, found: &str) -> Option<Family> {
        let t = found.to_ascii_lowercase();
        let has = |s: &str| t.contains(s);
        Some(match backend {
            DbBackend::Postgres => match t.as_str() {
                "character varying" | "character" | "text" => Family::Text,
                "smallint" | "integer" | "bigint" => Family::Integer,
                "boolean" => Family::Boolean,
                "timestamp with time zone" => Family::Timestamp,
                "timestamp without time zone" => Family::NaiveTimestamp,
                "json" | "jsonb" => Family::Json,
                "bytea" => Family::Blob,
                _ => return None,
            },
            DbBackend::MySql => {
                if t.starts_with("tinyint(1)") || t.starts_with("bool") {
                    Family::Boolean
                } else if has("int") {
                    Family::Integer
                } else if has("char") || has("text") {
                    Family::Text
                } else if has("datetime") || has("timestamp") {
                    Family::Timestamp
                } else if has("json") {
                    Family::Json
                } else if has("blob") {
                    Family::Blob
                } else {
                    return None;
                }
            }
            _ => {
                if has("bool") {
                    Family::Boolean
                } else if has("time") || has("date") {
                    Family::Timestamp
                } else if has("json") {
                    Family::Json
                } else if has("int") {
                    Family::Integer
                } else if has("char") || has("clob") || has("text") {
                    Family::Text
                } else if has("blob") || t.is_empty() {
                    Family::Blob
                } else {
                    return None;
                }
            }
        })
    }

    /// Whether a found column of family `found` serves where we need `self`.
    fn accepts(self, found: Family, backend: DbBackend, host: bool) -> bool {
        let lenient = backend != DbBackend::Postgres;
        self == found
            || match self {
                Family::Boolean => lenient && found == Family::Integer,
                Family::Json => lenient && found == Family::Text,
                Family::Timestamp => {
                    (host && found == Family::NaiveTimestamp)
                        || (backend == DbBackend::Sqlite && found == Family::Text)
                }
                _ => false,
            }
    }
}

/// How strictly an existing column is compared with our definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strictness {
    /// A column of the host's `organizations`/`agents`: the type family only (naive timestamps
    /// accepted); the service reads such columns tolerating NULL.
    Host,
    /// A column we read and write: family, NOT NULL and the presence of a default too.
    Ours,
}

/// A column as the catalog has it.
#[derive(Debug)]
struct FoundColumn {
    name: String,
    found_type: String,
    nullable: bool,
    has_default: bool,
}

/// Every column of `table` from the catalog (on SQLite from `pragma_table_info`: a double-quoted
/// name matching no column would read as a string literal, so columns are never probed by use).
async fn columns_of(manager: &SchemaManager<'_>, table: &str) -> Result<Vec<FoundColumn>, DbErr> {
    let backend = manager.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT column_name::text, data_type::text, \
             CASE WHEN is_nullable = 'YES' THEN 1 ELSE 0 END::int8, \
             CASE WHEN column_default IS NULL THEN 0 ELSE 1 END::int8 \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1"
        }
        DbBackend::MySql => {
            "SELECT CAST(column_name AS CHAR), CAST(column_type AS CHAR), \
             CAST(is_nullable = 'YES' AS SIGNED), \
             CAST(column_default IS NOT NULL AND column_default <> 'NULL' AS SIGNED) \
             FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ?"
        }
        _ => {
            "SELECT name, type, CASE WHEN \"notnull\" = 0 AND pk = 0 THEN 1 ELSE 0 END, \
             CASE WHEN dflt_value IS NULL THEN 0 ELSE 1 END FROM pragma_table_info(?1)"
        }
    };
    let rows = manager
        .get_connection()
        .query_all_raw(Statement::from_sql_and_values(backend, sql, [table.into()]))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(FoundColumn {
                name: row.try_get_by_index(0)?,
                found_type: row.try_get_by_index(1)?,
                nullable: row.try_get_by_index::<i64>(2)? == 1,
                has_default: row.try_get_by_index::<i64>(3)? == 1,
            })
        })
        .collect()
}

/// Checks an existing column against our definition: `Ok` when it can be adopted, otherwise the
/// one-line refusal naming it, what was found and what is needed.
fn check_column(
    backend: DbBackend,
    table: &str,
    def: &ColumnDef,
    found: &FoundColumn,
    strictness: Strictness,
) -> Result<(), DbErr> {
    let column = def.get_column_name();
    let refuse = |found: String, need: String| {
        Err(DbErr::Migration(format!(
            "cannot adopt existing column `{table}.{column}`: found {found}, need {need}; \
             change or drop it, then run up again"
        )))
    };
    if let Some(need) = Family::of_definition(def) {
        let family = Family::of_catalog(backend, &found.found_type);
        if !family.is_some_and(|f| need.accepts(f, backend, strictness == Strictness::Host)) {
            return refuse(
                format!("type `{}`", found.found_type),
                format!("the {} family", need.name()),
            );
        }
    }
    if strictness == Strictness::Ours {
        let spec = def.get_column_spec();
        let not_null = spec.nullable == Some(false) || spec.primary_key;
        if not_null && found.nullable {
            return refuse("a nullable column".into(), "NOT NULL".into());
        }
        if not_null && spec.default.is_some() && !found.has_default {
            return refuse(
                "no default".into(),
                "a default (existing rows and other writers rely on it)".into(),
            );
        }
    }
    Ok(())
}

/// Creates `create` (the table `table`) unless it exists; an existing one must have every
/// column of `create`, each compatible ([`check_column`]), and is then adopted.
pub(crate) async fn ensure_table<T: Iden>(
    manager: &SchemaManager<'_>,
    table: T,
    create: TableCreateStatement,
    strictness: Strictness,
) -> Result<(), DbErr> {
    let table = table.to_string();
    let exists = manager.has_table(&table).await?;
    expect(Kind::Table, &table, "", exists, true);
    if exists {
        let backend = manager.get_database_backend();
        let found = columns_of(manager, &table).await?;
        for def in create.get_columns() {
            let name = def.get_column_name();
            let Some(column) = found.iter().find(|c| c.name.eq_ignore_ascii_case(&name)) else {
                return Err(DbErr::Migration(format!(
                    "cannot adopt existing table `{table}`: it has no column `{name}`"
                )));
            };
            check_column(backend, &table, def, column, strictness)?;
        }
        if origin(manager, Kind::Table, &table, "").await?.is_none() {
            record(manager, Kind::Table, &table, "", Origin::Adopted).await?;
        }
        return Ok(());
    }
    if dry_run() {
        return Ok(());
    }
    record(manager, Kind::Table, &table, "", Origin::Created).await?;
    manager.create_table(create).await
}

/// Adds `def` to `table` unless the column exists; an existing one must be compatible and is
/// then adopted. In a dry run (or when `table` does not exist yet) only checks.
pub(crate) async fn ensure_column(
    manager: &SchemaManager<'_>,
    table: &str,
    mut def: ColumnDef,
) -> Result<(), DbErr> {
    let name = def.get_column_name();
    let found = columns_of(manager, table).await?;
    let column = found.iter().find(|c| c.name.eq_ignore_ascii_case(&name));
    expect(Kind::Column, table, &name, column.is_some(), true);
    if let Some(column) = column {
        check_column(
            manager.get_database_backend(),
            table,
            &def,
            column,
            Strictness::Ours,
        )?;
        if origin(manager, Kind::Column, table, &name).await?.is_none() {
            record(manager, Kind::Column, table, &name, Origin::Adopted).await?;
        }
        return Ok(());
    }
    if dry_run() {
        return Ok(());
    }
    record(manager, Kind::Column, table, &name, Origin::Created).await?;
    manager
        .alter_table(
            Table::alter()
                .table(Alias::new(table))
                .add_column(&mut def)
                .to_owned(),
        )
        .await
}

/// Drops column `def` of `table` when it is there and ours (an adopted one stays, its record is
/// forgotten); refuses when it holds values (other than its default) unless allowed.
pub(crate) async fn drop_column_if_ours(
    manager: &SchemaManager<'_>,
    table: &str,
    def: &ColumnDef,
) -> Result<(), DbErr> {
    let name = def.get_column_name();
    if !manager.has_table(table).await? || !manager.has_column(table, &name).await? {
        expect(Kind::Column, table, &name, false, false);
        return forget(manager, Kind::Column, table, Some(&name)).await;
    }
    if origin(manager, Kind::Column, table, &name).await? == Some(Origin::Adopted) {
        return forget(manager, Kind::Column, table, Some(&name)).await;
    }
    expect(Kind::Column, table, &name, true, false);
    let backend = manager.get_database_backend();
    let mut held = Expr::col(Alias::new(&name)).is_not_null();
    if let Some(Expr::Value(value)) = &def.get_column_spec().default {
        held = held.and(Expr::col(Alias::new(&name)).ne(Expr::Value(value.clone())));
    }
    let probe = Query::select()
        .expr(Expr::cust("COUNT(*)"))
        .from(Alias::new(table))
        .and_where(held)
        .to_owned();
    let sql = match backend {
        DbBackend::Postgres => probe.to_string(PostgresQueryBuilder),
        DbBackend::MySql => probe.to_string(MysqlQueryBuilder),
        _ => probe.to_string(SqliteQueryBuilder),
    };
    guard_loss(manager, format!("column `{table}.{name}`"), sql).await?;
    if dry_run() {
        return Ok(());
    }
    manager
        .alter_table(
            Table::alter()
                .table(Alias::new(table))
                .drop_column(Alias::new(&name))
                .to_owned(),
        )
        .await?;
    forget(manager, Kind::Column, table, Some(&name)).await
}

/// Drops `table` when it is there and ours (an adopted one stays, its records are forgotten).
/// Refuses when it holds rows unless allowed, and always when a table that is not ours
/// references it (dropping it would fail half way, or take the reference with it).
pub(crate) async fn drop_table_if_ours(
    manager: &SchemaManager<'_>,
    table: &str,
    ours: &[String],
) -> Result<(), DbErr> {
    if !manager.has_table(table).await? {
        expect(Kind::Table, table, "", false, false);
        return forget(manager, Kind::Table, table, None).await;
    }
    if origin(manager, Kind::Table, table, "").await? == Some(Origin::Adopted) {
        return forget(manager, Kind::Table, table, Some("")).await;
    }
    expect(Kind::Table, table, "", true, false);
    if let Some(other) = referenced_by(manager, table)
        .await?
        .into_iter()
        .find(|t| !ours.iter().any(|o| o.eq_ignore_ascii_case(t)))
    {
        return Err(DbErr::Migration(format!(
            "refusing to drop table `{table}`: table `{other}` references it; drop that \
             reference first"
        )));
    }
    let backend = manager.get_database_backend();
    let sql = format!("SELECT COUNT(*) FROM {}", quote(backend, table));
    guard_loss(manager, format!("table `{table}`"), sql).await?;
    if dry_run() {
        return Ok(());
    }
    manager
        .drop_table(Table::drop().table(Alias::new(table)).to_owned())
        .await?;
    forget(manager, Kind::Table, table, None).await
}

/// The `down` of a table a migration created with the indexes `indexes`: the table goes when
/// it is ours (its indexes with it); an adopted one stays and loses only our indexes, by name.
pub(crate) async fn drop_our_table<T: IntoIden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    table: T,
    indexes: &[&str],
) -> Result<(), DbErr> {
    let name = table.into_iden().to_string();
    if is_adopted(manager, &name).await? {
        for index in indexes {
            crate::existing_index::drop_index_if_present(manager, table, index).await?;
        }
    }
    drop_table_if_ours(manager, &name, &crate::owned::all_tables()).await
}

/// Whether `table` exists and is recorded as adopted: then our indexes on it must be dropped
/// by name, where on our own table they go with it.
async fn is_adopted(manager: &SchemaManager<'_>, table: &str) -> Result<bool, DbErr> {
    Ok(manager.has_table(table).await?
        && origin(manager, Kind::Table, table, "").await? == Some(Origin::Adopted))
}

/// The tables with a foreign key to `table` (other than `table` itself).
async fn referenced_by(manager: &SchemaManager<'_>, table: &str) -> Result<Vec<String>, DbErr> {
    let backend = manager.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT DISTINCT c.conrelid::regclass::text FROM pg_constraint c \
             WHERE c.contype = 'f' AND c.confrelid = to_regclass(quote_ident($1)) \
             AND c.conrelid <> c.confrelid"
        }
        DbBackend::MySql => {
            "SELECT DISTINCT CAST(table_name AS CHAR) FROM information_schema.referential_constraints \
             WHERE constraint_schema = DATABASE() AND referenced_table_name = ? AND table_name <> ?"
        }
        _ => {
            "SELECT DISTINCT m.name FROM sqlite_master m, pragma_foreign_key_list(m.name) f \
             WHERE m.type = 'table' AND f.\"table\" = ?1 AND m.name <> ?2"
        }
    };
    let values: Vec<sea_orm_migration::sea_orm::Value> = match backend {
        DbBackend::Postgres => vec![table.into()],
        _ => vec![table.into(), table.into()],
    };
    let rows = manager
        .get_connection()
        .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    rows.iter()
        .map(|r| r.try_get_by_index::<String>(0))
        .collect()
}
