//! Schema introspection for comparing databases before and after migrations.

use crate::{Backend, TestDb};

/// Every column, index and foreign key of the database as sorted lines, comparable across two
/// states of the same backend. On SQLite its own `sqlite_sequence` is included: SQLite makes it
/// for the first `AUTOINCREMENT` table and never lets it be dropped, so a migration that made
/// it would leave it behind after its rollback.
pub async fn snapshot(t: &TestDb) -> Vec<String> {
    let queries: &[&str] = match t.backend {
        Backend::Postgres => &[
            "SELECT table_name || '.' || column_name || ' ' || data_type || ' nullable=' \
             || is_nullable || ' default=' || coalesce(column_default, '') \
             FROM information_schema.columns WHERE table_schema = current_schema()",
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema()",
            "SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) \
             FROM pg_constraint WHERE connamespace = current_schema()::regnamespace",
        ],
        Backend::MySql => &[
            "SELECT CAST(CONCAT_WS(' ', table_name, column_name, column_type, is_nullable, \
             IFNULL(column_default, '-')) AS CHAR) \
             FROM information_schema.columns WHERE table_schema = DATABASE()",
            "SELECT CAST(CONCAT_WS(' ', table_name, index_name, seq_in_index, column_name, \
             non_unique) AS CHAR) FROM information_schema.statistics \
             WHERE table_schema = DATABASE()",
            "SELECT CAST(CONCAT_WS(' ', table_name, constraint_name, referenced_table_name, \
             delete_rule) AS CHAR) FROM information_schema.referential_constraints \
             WHERE constraint_schema = DATABASE()",
        ],
        Backend::Sqlite => &[
            "SELECT m.name || '.' || p.name || ' ' || p.type || ' notnull=' || p.\"notnull\" \
             || ' pk=' || p.pk || ' default=' || coalesce(p.dflt_value, '') \
             FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table'",
            "SELECT name || ' ' || coalesce(sql, '') FROM sqlite_master WHERE type = 'index'",
            "SELECT m.name || ' -> ' || f.\"table\" || '(' || f.\"from\" || '=' || f.\"to\" \
             || ') on delete ' || f.on_delete \
             FROM sqlite_master m, pragma_foreign_key_list(m.name) f WHERE m.type = 'table'",
        ],
    };
    let mut lines = Vec::new();
    for query in queries {
        lines.extend(t.strings(query).await);
    }
    lines.sort();
    lines
}

/// Only the lines of [`snapshot`] that mention `needle` (a table or column name).
pub async fn snapshot_of(t: &TestDb, needle: &str) -> Vec<String> {
    snapshot(t)
        .await
        .into_iter()
        .filter(|line| line.contains(needle))
        .collect()
}

/// One text line per row of `table` (ordered by `id`) holding the values of `columns`; NULL is
/// written as `∅`. Comparing two fingerprints compares every value.
pub async fn fingerprints(t: &TestDb, table: &str, columns: &[&str]) -> Vec<String> {
    let parts: Vec<String> = columns
        .iter()
        .map(|c| match t.backend {
            Backend::Postgres => format!("coalesce({c}::text, '∅')"),
            Backend::MySql => format!("IFNULL(CAST({c} AS CHAR), '∅')"),
            Backend::Sqlite => format!("coalesce(CAST({c} AS TEXT), '∅')"),
        })
        .collect();
    let row = match t.backend {
        Backend::MySql => format!("CAST(CONCAT_WS('|', {}) AS CHAR)", parts.join(", ")),
        _ => parts.join(" || '|' || "),
    };
    t.strings(&format!("SELECT {row} FROM {table} ORDER BY id"))
        .await
}

/// A SHA-256 checksum of [`fingerprints`], for messages.
pub fn checksum(lines: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for line in lines {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
