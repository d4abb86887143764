//! Schema migrations for agent-webhooks.
//!
//! Every migration runs on SQLite, PostgreSQL and MySQL/MariaDB. Two rules shape them:
//!
//! * **Adoption.** The baseline may find `organizations` and `agents` already made by another
//!   tool (with more columns and rows); it then leaves them as they are. Any object `up` would
//!   create that exists already is adopted only when compatible, and recorded as adopted
//!   (`ownership`); rollback never drops an adopted object.
//! * **Nothing is lost.** No migration, and no CLI command, drops a table or column that holds
//!   data unless the caller allows it ([`allowing_data_loss`], `--allow-data-loss`). [`Migrator`]
//!   replaces the stock `fresh` (which drops *every* table in the database) with "roll back our
//!   migrations, then apply them", and its `up` and `down` run a dry run of every migration
//!   first, so that every refusal comes before the first change and nothing stops half way.
//!
//! Each migration runs in a transaction ([`MigrationTrait::use_transaction`] is `Some(true)`).
//! MariaDB/MySQL commit DDL implicitly, so there each step also checks whether it is already
//! done: `up` after an interrupted `up` completes it, `down` after an interrupted `down` too.
//! And `up` after an interrupted `down` (which leaves the migration recorded as applied with
//! part of its objects gone) finds what is missing and completes it: see `migrator.rs`.
//!
//! This file is edited by `sea-orm-cli migrate generate <name> -d migration`: it adds a module
//! line after the last migration module below, then replaces the text from the start of the
//! migration list to the *last* line of the file that ends in a closing bracket with a list
//! rebuilt from those module lines. So the file ends with that list and nothing may follow it
//! (nor may the list's opening macro appear earlier, even in a comment); the
//! `fresh`/`refresh`/`reset` overrides live in `migrator.rs`. `scripts/check-migrate-generate`
//! (run by CI) proves that a generated migration is registered, compiles, and keeps them.

#![warn(missing_docs)]

pub use sea_orm_migration::prelude::*;

#[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
compile_error!(
    "the migration crate needs a database driver: enable one or more of its features \
     `postgres`, `mysql`, `sqlite` (on by default)"
);

#[cfg(feature = "cli")]
pub mod cli;
mod columns;
mod defaults;
mod drivers;
mod existing_index;
pub mod indexes;
mod lock;
mod migrator;
pub mod owned;
mod ownership;
mod reach;
mod redact;
mod tables;

pub use columns::SQLITE_TIMESTAMP_FORMAT;
pub use defaults::{CONNECT_TIMEOUT, DEFAULT_DATABASE_URL, MAX_PAYLOAD_COLUMN_BYTES};
pub use drivers::{BackendNotCompiled, backend_compiled, check_compiled};
pub use lock::{LOCK_TIMEOUT, MigrationLock, up_locked};
pub use migrator::Migrator;
pub use ownership::allowing_data_loss;
pub use reach::{Endpoint, Unreachable, check_reachable};
pub use redact::{RedactedStderr, redact_secrets, redact_url};

// The migrations, oldest first: one module per file, named `m<YYYYMMDD>_<HHMMSS>_<name>`.
mod m20261128_000001_baseline;
mod m20261128_000002_add_webhook_fields_to_agent;
mod m20261128_000003_delivery_bookkeeping_indexes;
mod m20261129_000004_delivery_worker;
mod m20261129_000005_signing_secrets;
mod m20261205_000006_webhook_content_filter;
mod m20261205_000007_ordered_lanes;

impl Migrator {
    /// Every migration in the order it applies; `sea-orm-cli migrate generate` rebuilds this
    /// list from the module lines above.
    fn list() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_baseline::Migration),
            Box::new(m20261128_000002_add_webhook_fields_to_agent::Migration),
            Box::new(m20261128_000003_delivery_bookkeeping_indexes::Migration),
            Box::new(m20261129_000004_delivery_worker::Migration),
            Box::new(m20261129_000005_signing_secrets::Migration),
            Box::new(m20261205_000006_webhook_content_filter::Migration),
            Box::new(m20261205_000007_ordered_lanes::Migration),
        ]
    }
}
