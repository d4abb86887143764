//! The migration command line: the standard sea-orm-migration commands, with an embedded SQLite
//! default and one-line errors instead of panics.
//!
//! The commands are those of `sea-orm-migration`'s own CLI (`up`, `down`, `status`, `fresh`,
//! `refresh`, `reset`; `up` when none is given), but `fresh` here never drops tables that our
//! migrations did not create: see [`crate::Migrator`].
//!
//! Every command but `status` holds the migration lock ([`crate::MigrationLock`]) while it runs,
//! so concurrent deploys take turns: the second `up` waits, finds nothing pending, exits 0.
//! No message or log line carries the database password ([`crate::redact_secrets`]). An
//! unreachable server is one line naming host, port and cause, at once on a refusal
//! ([`crate::check_reachable`]). Output to a closed pipe (`migration owned | head -1`) ends the
//! command quietly with status 0, as if it had finished; log colours only reach a terminal.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sea_orm_migration::MigratorTrait;
use sea_orm_migration::sea_orm::{ConnectOptions, Database, DbErr};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::{
    CONNECT_TIMEOUT, DEFAULT_DATABASE_URL, Migrator, RedactedStderr, check_reachable,
    redact_secrets,
};

#[derive(Debug, Parser)]
#[command(
    name = "migration",
    version,
    about = "Apply and roll back agent-webhooks migrations"
)]
struct Cli {
    /// Database URL (`postgres://`, `mysql://` or `sqlite://`); defaults to the embedded SQLite
    /// file `webhooks.db`.
    #[arg(short = 'u', long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,

    /// PostgreSQL schema to migrate (ignored by MySQL and SQLite).
    #[arg(
        short = 's',
        long,
        env = "DATABASE_SCHEMA",
        global = true,
        default_value = "public"
    )]
    database_schema: String,

    /// Log every SQL statement.
    #[arg(short = 'v', long, global = true)]
    verbose: bool,

    /// Let `down`, `fresh`, `refresh` and `reset` drop tables we created that hold rows and
    /// columns we added that hold values (delivery history, webhook configuration, secrets).
    /// Without it they refuse, naming what would be destroyed. Adopted objects are never
    /// dropped, with or without it.
    #[arg(long, global = true)]
    allow_data_loss: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending migrations (all, or the first N).
    Up {
        #[arg(short, long)]
        num: Option<u32>,
    },
    /// Roll back applied migrations (the last one, or the last N).
    Down {
        #[arg(short, long, default_value_t = 1)]
        num: u32,
    },
    /// Show which migrations are applied and which are pending.
    Status,
    /// Roll back every migration, then apply them all again. Unlike the stock `fresh`, tables
    /// other than ours (and adopted ones) are never dropped, nor, without --allow-data-loss,
    /// tables holding rows.
    Fresh,
    /// Roll back every migration, then apply them all again.
    Refresh,
    /// Roll back every migration and remove the migration table.
    Reset,
    /// List the objects agent-webhooks owns in a database it shares with the host platform,
    /// so the host's schema tool leaves them alone (needs no database).
    Owned {
        /// `json`: the list; `alembic`: an `include_object` hook for an Alembic `env.py`.
        #[arg(long, value_enum, default_value_t = OwnedFormat::Json)]
        format: OwnedFormat,
        /// Instead of printing the list, check it against what the migrations add to an
        /// in-memory SQLite database with the host's tables: exit 1 naming every object the
        /// list misses (or lists in vain). For CI, after adding a migration.
        #[arg(long, conflicts_with = "format")]
        check: bool,
    },
}

/// `migration owned --format`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum OwnedFormat {
    Json,
    Alembic,
}

/// Parses the command line, runs the command and returns the process exit code: 0 on success,
/// 1 on a database or migration error (printed as one line on stderr), 2 on a usage error.
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    let database_url = cli.database_url.clone().unwrap_or_default();
    // `owned --check` migrates a throwaway in-memory database: its progress is no news.
    if cli.verbose || !matches!(cli.command, Some(Command::Owned { .. })) {
        init_tracing(cli.verbose, database_url.clone());
    }
    match execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let message = redact_secrets(&message, &database_url);
            note(&format!("error: {}", message.replace('\n', " ")));
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> Result<(), String> {
    if let Some(Command::Owned { check: true, .. }) = cli.command {
        crate::owned::check_against_migrations().await?;
        note("migration owned: the list matches what the migrations add");
        return Ok(());
    }
    if let Some(Command::Owned { format, .. }) = cli.command {
        let text = crate::owned::render(match format {
            OwnedFormat::Json => crate::owned::Format::Json,
            OwnedFormat::Alembic => crate::owned::Format::Alembic,
        });
        let mut out = std::io::stdout().lock();
        return match writeln!(out, "{text}").and_then(|()| out.flush()) {
            // The reader has all it wanted (`| head -1`): nothing went wrong.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            result => result.map_err(|e| format!("cannot write to stdout: {e}")),
        };
    }
    let command = cli.command.unwrap_or(Command::Up { num: None });
    // Only a command that changes the schema says up front that it falls back to the embedded
    // SQLite default: changing a database the operator did not mean is the mistake worth a
    // line. `status` only reads: it names the default in its error line when it fails.
    let read_only = matches!(command, Command::Status);
    let defaulted = cli.database_url.is_none();
    let url = cli.database_url.unwrap_or_else(|| {
        if !read_only {
            note(&format!(
                "DATABASE_URL is not set: using the embedded SQLite database {DEFAULT_DATABASE_URL}"
            ));
        }
        DEFAULT_DATABASE_URL.to_owned()
    });
    let result = migrate(
        url,
        cli.database_schema,
        cli.verbose,
        cli.allow_data_loss,
        command,
    )
    .await;
    match result {
        Err(message) if defaulted && read_only => Err(format!(
            "DATABASE_URL is not set: read the embedded SQLite database {DEFAULT_DATABASE_URL}: \
             {message}"
        )),
        result => result,
    }
}

/// Runs `command` on the database at `url`.
async fn migrate(
    url: String,
    database_schema: String,
    verbose: bool,
    allow_data_loss: bool,
    command: Command,
) -> Result<(), String> {
    crate::check_compiled(&url).map_err(|e| e.to_string())?;
    check_reachable(&url, CONNECT_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let mut options = ConnectOptions::new(url);
    options
        .set_schema_search_path(database_schema)
        .sqlx_logging(verbose)
        .connect_timeout(CONNECT_TIMEOUT)
        .acquire_timeout(CONNECT_TIMEOUT);
    // SQLite's migration lock is its write lock: wait for it as long as for the others.
    #[cfg(feature = "sqlite")]
    options.map_sqlx_sqlite_opts(|o| o.busy_timeout(crate::LOCK_TIMEOUT));
    let db = Database::connect(options)
        .await
        .map_err(|e| format!("cannot connect to the database: {}", describe(&e)))?;

    if let Command::Status = command {
        // Read-only: it neither needs nor waits for the lock. It also names what an applied
        // migration lacks (an interrupted rollback on MariaDB).
        return crate::migrator::status(&db).await.map_err(|e| describe(&e));
    }
    let typed = command_line(&command);
    crate::lock::under_lock(&db, move |on| {
        Box::pin(async move {
            let run = async {
                match command {
                    Command::Up { num } => Migrator::up(on, num).await,
                    Command::Down { num } => Migrator::down(on, Some(num)).await,
                    Command::Fresh => Migrator::fresh(on).await,
                    Command::Refresh => Migrator::refresh(on).await,
                    Command::Reset => Migrator::reset(on).await,
                    Command::Status | Command::Owned { .. } => Ok(()),
                }
            };
            if allow_data_loss {
                crate::allowing_data_loss(run).await
            } else {
                run.await
            }
        })
    })
    .await
    .map_err(|e| {
        let message = describe(&e);
        match message.split_once(crate::ownership::RUN_AGAIN) {
            Some((refusal, _)) => format!(
                "{refusal}; if that is intended, run `cargo run -p migration -- {typed} \
                 --allow-data-loss` (`sea-orm-cli migrate` cannot pass --allow-data-loss)"
            ),
            None => message,
        }
    })
}

/// `command` as typed on the command line, for the advice of a data-loss refusal.
fn command_line(command: &Command) -> String {
    match command {
        Command::Up { num: Some(n) } => format!("up -n {n}"),
        Command::Up { num: None } => "up".to_owned(),
        Command::Down { num: 1 } => "down".to_owned(),
        Command::Down { num } => format!("down -n {num}"),
        Command::Fresh => "fresh".to_owned(),
        Command::Refresh => "refresh".to_owned(),
        Command::Reset => "reset".to_owned(),
        Command::Status => "status".to_owned(),
        Command::Owned { .. } => "owned".to_owned(),
    }
}

/// `DbErr`'s message without the variant's prefix where the message says it all.
fn describe(err: &DbErr) -> String {
    match err {
        DbErr::Migration(message) | DbErr::Custom(message) => message.clone(),
        other => other.to_string(),
    }
}

fn init_tracing(verbose: bool, database_url: String) {
    let filter = if verbose {
        "debug"
    } else {
        "sea_orm_migration=info,migration=info"
    };
    // Progress goes to stderr like the errors; `try_init` so a second call is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(move || RedactedStderr::new(&database_url))
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_level(false)
        .without_time()
        .finish()
        .with(WithoutStockCounts)
        .try_init();
}

/// Drops sea-orm-migration's "Applying N pending migrations" and "Rolling back N applied
/// migrations": [`Migrator`] hands it one migration at a time on the way down (so it said
/// "Rolling back 1 applied migrations" before each) and the number asked for on the way up
/// (not the number pending). [`Migrator`] says how many it applies or rolls back itself.
struct WithoutStockCounts;

impl<S: tracing::Subscriber> Layer<S> for WithoutStockCounts {
    fn event_enabled(&self, event: &tracing::Event<'_>, _: Context<'_, S>) -> bool {
        if !event.metadata().target().starts_with("sea_orm_migration") {
            return true;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        !is_stock_count(&message.0)
    }
}

/// Whether `message` is one of sea-orm-migration's counts ([`WithoutStockCounts`]).
fn is_stock_count(message: &str) -> bool {
    let counted = |prefix: &str, suffix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .is_some_and(|n| n.parse::<u32>().is_ok())
    };
    counted("Applying ", " pending migrations") || counted("Rolling back ", " applied migrations")
}

/// The `message` field of an event.
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

/// A line on stderr; a closed stderr is no reason to panic (there is no one left to tell).
fn note(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stock_counts_are_dropped() {
        assert!(is_stock_count("Rolling back 1 applied migrations"));
        assert!(is_stock_count("Applying 3 pending migrations"));
        assert!(!is_stock_count("Applying all pending migrations"));
        assert!(!is_stock_count("Rolling back 1 applied migration"));
        assert!(!is_stock_count(
            "Applying migration 'm20261128_000001_baseline'"
        ));
    }
}
