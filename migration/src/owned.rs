//! Which database objects agent-webhooks owns, for the host platform's own migration tool.
//!
//! The platform's schema tool (Alembic, for a SQLAlchemy platform) compares its models with the
//! database and proposes dropping whatever it does not know: our columns on its `agents`,
//! `webhook_deliveries` with every secret's delivery history, and `seaql_migrations`. This module
//! lists what our migrations add to a database the platform already has, so the host can leave
//! exactly those objects alone: `migration owned --format json` prints the list, and
//! `--format alembic` a ready `include_object` hook for an Alembic `env.py`.
//!
//! `organizations` and `agents` are not ours when the platform has them (the baseline adopts
//! them); they are listed apart, by [`shared_tables`], and the hook does not exclude them.

use std::collections::BTreeSet;

use sea_orm_migration::MigratorTrait;
use sea_orm_migration::prelude::{DbErr, Iden};
use sea_orm_migration::sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};

use crate::Migrator;
use crate::indexes;
use crate::tables::{
    Agents, Organizations, WebhookDeliveries, WebhookDeliveryAttempts, WebhookLanes,
    WebhookPreviousSecrets,
};

/// Tables the baseline adopts when they exist (they are the host's then) and creates otherwise.
pub fn shared_tables() -> [String; 2] {
    [Organizations::Table.to_string(), Agents::Table.to_string()]
}

/// Every table our migrations may create: [`shared_tables`] and the owned ones. A foreign key
/// from any other table to one of them makes dropping it a refusal.
pub fn all_tables() -> Vec<String> {
    let mut tables = shared_tables().to_vec();
    tables.extend(owned_objects().tables);
    tables
}

/// The objects our migrations add to a host's database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedObjects {
    /// Whole tables: created, filled and dropped only by us.
    pub tables: Vec<String>,
    /// `(table, column)`: our columns on a host's table.
    pub columns: Vec<(String, String)>,
    /// `(table, index)`: our indexes, including those on a host's table.
    pub indexes: Vec<(String, String)>,
}

/// Output formats of `migration owned`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A JSON object with `tables`, `columns`, `indexes` and `shared_tables`.
    Json,
    /// Python for an Alembic `env.py`: the lists and an `include_object` hook.
    Alembic,
}

/// What our migrations add to a database whose `organizations` and `agents` the host made.
pub fn owned_objects() -> OwnedObjects {
    let agents = Agents::Table.to_string();
    let deliveries = WebhookDeliveries::Table.to_string();
    let attempts = WebhookDeliveryAttempts::Table.to_string();
    let previous = WebhookPreviousSecrets::Table.to_string();
    let indexes_on = |table: &str, names: &[&str]| -> Vec<(String, String)> {
        names
            .iter()
            .map(|name| (table.to_owned(), (*name).to_owned()))
            .collect()
    };
    let mut owned_indexes = indexes_on(&agents, &[indexes::AGENTS_CREATED_AT]);
    owned_indexes.extend(indexes_on(
        &deliveries,
        &[
            indexes::DELIVERIES_EVENT_ID,
            indexes::DELIVERIES_AGENT_EVENT,
            indexes::DELIVERIES_NEXT_RETRY_AT,
            indexes::DELIVERIES_HISTORY,
            indexes::DELIVERIES_LANE,
        ],
    ));
    owned_indexes.extend(indexes_on(&attempts, &[indexes::ATTEMPTS_DELIVERY_ATTEMPT]));
    owned_indexes.extend(indexes_on(
        &previous,
        &[indexes::PREVIOUS_SECRETS_AGENT_EXPIRES],
    ));
    OwnedObjects {
        tables: vec![
            deliveries,
            attempts,
            previous,
            WebhookLanes::Table.to_string(),
            Migrator::migration_table_name().to_string(),
            crate::ownership::RECORD_TABLE.to_owned(),
        ],
        // The backend only changes column types, never names.
        columns: crate::m20261128_000002_add_webhook_fields_to_agent::agent_columns()
            .iter()
            .chain(
                crate::m20261129_000004_delivery_worker::agent_columns(DbBackend::Postgres).iter(),
            )
            .chain(crate::m20261129_000005_signing_secrets::agent_columns().iter())
            .chain(crate::m20261205_000006_webhook_content_filter::agent_columns().iter())
            .chain(crate::m20261205_000007_ordered_lanes::agent_columns().iter())
            .map(|column| (agents.clone(), column.get_column_name()))
            .collect(),
        indexes: owned_indexes,
    }
}

/// The owned objects in `format`, as `migration owned` prints them.
pub fn render(format: Format) -> String {
    let owned = owned_objects();
    match format {
        Format::Json => json(&owned),
        Format::Alembic => alembic(&owned),
    }
}

fn json(owned: &OwnedObjects) -> String {
    let pairs = |items: &[(String, String)], key: &str| -> Vec<serde_json::Value> {
        items
            .iter()
            .map(|(table, name)| serde_json::json!({ "table": table, key: name }))
            .collect()
    };
    let value = serde_json::json!({
        "tables": owned.tables,
        "columns": pairs(&owned.columns, "column"),
        "indexes": pairs(&owned.indexes, "name"),
        "shared_tables": shared_tables(),
    });
    // Serialising a `Value` of strings cannot fail; fall back to the compact form regardless.
    serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
}

fn alembic(owned: &OwnedObjects) -> String {
    let quote = |s: &str| format!("{s:?}");
    let set = |items: Vec<String>| {
        let mut out = String::from("frozenset({\n");
        for item in items {
            out.push_str(&format!("    {item},\n"));
        }
        out.push_str("})");
        out
    };
    let tables = set(owned.tables.iter().map(|t| quote(t)).collect());
    let pair = |(table, name): &(String, String)| format!("({}, {})", quote(table), quote(name));
    let columns = set(owned.columns.iter().map(pair).collect());
    let indexes = set(owned.indexes.iter().map(pair).collect());
    format!(
        r#"# agent-webhooks owns these objects (printed by `migration owned --format alembic`).
# They hold webhook secrets and delivery history: autogenerate must neither drop nor alter
# them. Pass the hook to context.configure(..., include_object=include_object).
AGENT_WEBHOOKS_TABLES = {tables}
AGENT_WEBHOOKS_COLUMNS = {columns}
AGENT_WEBHOOKS_INDEXES = {indexes}


def include_object(object, name, type_, reflected, compare_to):
    """False for agent-webhooks' objects, which only its own migrations change."""
    if type_ == "table":
        return name not in AGENT_WEBHOOKS_TABLES
    table = getattr(getattr(object, "table", None), "name", None)
    if table in AGENT_WEBHOOKS_TABLES:
        return False
    if type_ == "column":
        return (table, name) not in AGENT_WEBHOOKS_COLUMNS
    if type_ in ("index", "unique_constraint"):
        return (table, name) not in AGENT_WEBHOOKS_INDEXES
    return True
"#
    )
}

/// Compares [`owned_objects`] with what the migrations actually add to a host's database, so
/// that a table, column or index a contributor adds through the ownership helpers
/// (`ensure_table`, `ensure_column`, `existing_index::ensure_index`) cannot be missing from the
/// list the host's schema tool relies on: that tool would otherwise propose dropping it.
///
/// The migrations run on an in-memory SQLite database that already has the host's
/// `organizations` and `agents` (with an extra column and index of the host's own), as a
/// platform database has them; everything `up` adds there, other than the columns of a table it
/// adds, must be listed, and everything listed must be added. `Err` is one line naming each
/// object missing from the list and each listed object no migration adds (`migration owned
/// --check`, run by `scripts/check-migrate-generate`; a unit test runs it too).
pub async fn check_against_migrations() -> Result<(), String> {
    let added = added_by_migrations()
        .await
        .map_err(|e| format!("cannot migrate an in-memory SQLite database: {e}"))?;
    let owned = owned_objects();
    let mut listed = BTreeSet::new();
    for table in &owned.tables {
        listed.insert(format!("table `{table}`"));
    }
    for (table, column) in &owned.columns {
        listed.insert(format!("column `{table}.{column}`"));
    }
    for (table, index) in &owned.indexes {
        listed.insert(format!("index `{table}.{index}`"));
    }
    // Columns of a table the migrations add come with the table.
    let tables: Vec<String> = added
        .iter()
        .filter_map(|o| o.strip_prefix("table `")?.strip_suffix('`'))
        .map(str::to_owned)
        .collect();
    let added: BTreeSet<String> = added
        .into_iter()
        .filter(|o| {
            !tables
                .iter()
                .any(|t| o.starts_with(&format!("column `{t}.")))
        })
        .collect();
    let unlisted: Vec<&String> = added.difference(&listed).collect();
    let not_added: Vec<&String> = listed.difference(&added).collect();
    if unlisted.is_empty() && not_added.is_empty() {
        return Ok(());
    }
    let join = |items: &[&String]| {
        items
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut problems = Vec::new();
    if !unlisted.is_empty() {
        problems.push(format!(
            "the migrations add {} but `migration owned` does not list {}",
            join(&unlisted),
            if unlisted.len() == 1 { "it" } else { "them" }
        ));
    }
    if !not_added.is_empty() {
        problems.push(format!(
            "`migration owned` lists {}, which no migration adds",
            join(&not_added)
        ));
    }
    Err(format!(
        "{}: update `owned_objects` in migration/src/owned.rs",
        problems.join("; ")
    ))
}

/// What `up` adds to an in-memory SQLite database that has the host's tables, each as
/// ``table `t` ``, ``column `t.c` `` or ``index `t.i` ``.
async fn added_by_migrations() -> Result<BTreeSet<String>, DbErr> {
    let db = Database::connect("sqlite::memory:").await?;
    db.execute_unprepared(
        "CREATE TABLE organizations (id varchar PRIMARY KEY, name varchar NOT NULL, \
         created_at text, updated_at text, is_deleted boolean NOT NULL DEFAULT false); \
         CREATE TABLE agents (id varchar PRIMARY KEY, \
         organization_id varchar NOT NULL REFERENCES organizations (id), name varchar, \
         description text, created_at text, updated_at text, \
         is_deleted boolean NOT NULL DEFAULT false, plan varchar); \
         CREATE INDEX ix_agents_organization_id ON agents (organization_id)",
    )
    .await?;
    let before = sqlite_objects(&db).await?;
    Migrator::up(&db, None).await?;
    let after = sqlite_objects(&db).await?;
    db.close().await?;
    Ok(after.difference(&before).cloned().collect())
}

/// Every table, `table.column` and `table.index` of a SQLite database, without SQLite's own
/// (`sqlite_sequence` appears with the first `AUTOINCREMENT` table).
async fn sqlite_objects(db: &DatabaseConnection) -> Result<BTreeSet<String>, DbErr> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT m.name, p.name, 'column' FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' \
             UNION ALL SELECT tbl_name, name, 'index' FROM sqlite_master \
             WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%' \
             UNION ALL SELECT name, '', 'table' FROM sqlite_master \
             WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        ))
        .await?;
    rows.iter()
        .map(|row| {
            let table: String = row.try_get_by_index(0)?;
            let name: String = row.try_get_by_index(1)?;
            let kind: String = row.try_get_by_index(2)?;
            Ok(if kind == "table" {
                format!("table `{table}`")
            } else {
                format!("{kind} `{table}.{name}`")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list is what `up` adds to a host's database, no more and no less: a migration that
    /// adds an object without listing it here (or a listed object no migration makes) fails,
    /// naming the object.
    #[tokio::test]
    async fn the_list_is_exactly_what_up_adds_to_a_host_database() {
        if let Err(problem) = check_against_migrations().await {
            panic!("{problem}");
        }
    }

    #[test]
    fn json_lists_every_object_and_the_shared_tables() {
        let value: serde_json::Value = serde_json::from_str(&render(Format::Json)).unwrap();
        assert_eq!(
            value["tables"],
            serde_json::json!([
                "webhook_deliveries",
                "webhook_delivery_attempts",
                "webhook_previous_secrets",
                "webhook_lanes",
                "seaql_migrations",
                "agent_webhooks_schema_objects"
            ])
        );
        assert_eq!(
            value["columns"][0],
            serde_json::json!({"table": "agents", "column": "webhook_url"})
        );
        assert_eq!(value["indexes"].as_array().unwrap().len(), 8);
        assert_eq!(
            value["shared_tables"],
            serde_json::json!(["organizations", "agents"])
        );
    }
}
