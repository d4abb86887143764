//! The `agent-webhooks` operations command line.
//!
//! Exit status: 0 on success, 1 when the command ran and said no (a rejected URL, a failed
//! verification, an error from the database), 2 on usage errors. `DATABASE_URL` defaults to the
//! embedded SQLite file of the migration binary. Secrets never come from argv (they would show
//! in `ps` and shell history): they are read from an environment variable named on the command
//! line, or generated.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use clap::{Args, Parser, Subcommand};
use sea_orm::DatabaseConnection;
use secrecy::SecretString;
use serde::Serialize;

use crate::config::{self, WebhookConfig};
use crate::deliveries::{self, DeliveryState, HistoryQuery};
use crate::secret_box::KeyRing;
use crate::settings::WebhookSettings;
use crate::signing;
use crate::url_policy::UrlPolicy;
use crate::webhook_secret::WebhookSecret;

#[derive(Debug, Parser)]
#[command(
    name = "agent-webhooks",
    version,
    about = "Operate agent webhooks: URLs, configuration, secrets, deliveries, signatures"
)]
struct Cli {
    /// Database URL; defaults to the embedded SQLite file `webhooks.db`.
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,

    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a webhook URL against the policy: `ok` and exit 0, or the failed rule and exit 1.
    CheckUrl {
        /// The URL to check.
        url: String,
        /// Use the development policy (http, loopback and private targets allowed).
        #[arg(long)]
        development: bool,
    },
    /// Show or change an agent's webhook configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Encryption keys for stored secrets.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Delivery history and operations.
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// Print the `webhook-signature` value for the body read from stdin.
    Sign {
        #[command(flatten)]
        message: MessageArgs,
    },
    /// Verify a signature over the body read from stdin: `ok` and exit 0, or the reason and exit 1.
    Verify {
        #[command(flatten)]
        message: MessageArgs,
        /// The `webhook-signature` header value.
        #[arg(long)]
        signature: String,
        /// The current time as unix seconds (default: now).
        #[arg(long)]
        now: Option<i64>,
        /// Accepted clock skew in seconds.
        #[arg(long, default_value_t = 300)]
        tolerance: u64,
    },
}

#[derive(Debug, Args)]
struct MessageArgs {
    /// Name of the environment variable holding the secret (never the secret itself).
    #[arg(long)]
    secret_env: String,
    /// The message id (`webhook-id`).
    #[arg(long)]
    id: String,
    /// The unix timestamp (`webhook-timestamp`).
    #[arg(long)]
    timestamp: i64,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Set the webhook of an agent.
    Set {
        #[arg(long)]
        agent: String,
        /// Where deliveries go.
        #[arg(long)]
        url: String,
        /// Comma-separated event names or wildcards; omitted means all events.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Store the configuration disabled.
        #[arg(long)]
        disabled: bool,
        /// Read the signing secret from this environment variable.
        #[arg(long, conflicts_with = "generate_secret")]
        secret_env: Option<String>,
        /// Generate a `whsec_` secret and print it once.
        #[arg(long)]
        generate_secret: bool,
        /// Accept http and private targets (development policy).
        #[arg(long)]
        development: bool,
    },
    /// Show the webhook of an agent (never the secret).
    Show {
        #[arg(long)]
        agent: String,
    },
    /// Stop enqueueing deliveries for an agent, keeping its configuration.
    Disable {
        #[arg(long)]
        agent: String,
    },
    /// Remove an agent's webhook configuration (history is kept).
    Clear {
        #[arg(long)]
        agent: String,
    },
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Print a new key entry for WEBHOOK_SECRET_KEYS (prepend it to make it current).
    GenerateKey {
        /// The key id.
        #[arg(long, default_value_t = default_key_id())]
        key_id: String,
    },
    /// Re-seal every stored secret under the current (first) key; resumable, safe to repeat.
    Rotate {
        #[arg(long, default_value_t = 500)]
        batch: u64,
    },
}

#[derive(Debug, Subcommand)]
enum DeliveriesCommand {
    /// An agent's deliveries, newest first.
    List {
        #[arg(long)]
        agent: String,
        /// pending, leased, delivered or failed.
        #[arg(long)]
        state: Option<String>,
        /// Only this event type.
        #[arg(long)]
        event: Option<String>,
        /// The cursor printed with the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// One delivery.
    Show { id: String },
    /// Counts by state, last success, current run of failures.
    Stats {
        #[arg(long)]
        agent: String,
    },
    /// Send an exhausted delivery again.
    Requeue { id: String },
    /// Delete delivered and exhausted deliveries older than a duration (e.g. `30d`, `12h`).
    Prune {
        #[arg(long, value_parser = parse_age)]
        older_than: Duration,
        #[arg(long, default_value_t = 1000)]
        batch: u64,
    },
}

fn default_key_id() -> String {
    format!("k{}", Utc::now().format("%Y%m%d"))
}

/// `30d`, `12h`, `15m`, `90s`.
fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{text}`: expected a number followed by s, m, h or d"
            ));
        }
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a number followed by s, m, h or d"))?;
    number
        .checked_mul(seconds_per)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// A failed command: the message printed on stderr, exit status 1.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(err: E) -> Self {
        Failure(err.to_string())
    }
}

/// Runs the command line and returns the exit status.
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENT_WEBHOOKS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("{}", message.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> Result<(), Failure> {
    let json = cli.json;
    match cli.command {
        Command::CheckUrl { url, development } => {
            let policy = if development {
                UrlPolicy::Development
            } else {
                UrlPolicy::Production
            };
            match policy.check(&url) {
                Ok(_) => println!("ok"),
                Err(e) => return Err(Failure(format!("rejected ({}): {e}", e.rule()))),
            }
        }
        Command::Sign { message } => {
            let secret = secret_from_env(&message.secret_env)?;
            let body = read_stdin()?;
            let headers = signing::sign(&[&secret], &message.id, message.timestamp, &body)?;
            println!("{}", headers.webhook_signature);
        }
        Command::Verify {
            message,
            signature,
            now,
            tolerance,
        } => {
            let secret = secret_from_env(&message.secret_env)?;
            let body = read_stdin()?;
            let timestamp = message.timestamp.to_string();
            let headers = signing::ReceivedHeaders {
                id: &message.id,
                timestamp: &timestamp,
                signature: &signature,
            };
            let now = now.unwrap_or_else(|| Utc::now().timestamp());
            signing::verify(
                &[&secret],
                headers,
                &body,
                now,
                Duration::from_secs(tolerance),
            )
            .map_err(|e| Failure(format!("rejected: {e}")))?;
            println!("ok");
        }
        Command::Secrets(SecretsCommand::GenerateKey { key_id }) => {
            println!("{}", KeyRing::generate_key_entry(&key_id)?);
        }
        Command::Secrets(SecretsCommand::Rotate { batch }) => {
            let settings = WebhookSettings::from_env()?;
            let db = connect(cli.database_url).await?;
            let report = config::rotate_secret_keys(&db, &settings, batch).await?;
            print(json, &report, || {
                format!(
                    "examined {}, re-sealed {}, skipped {} (changed meanwhile; run again)",
                    report.examined, report.resealed, report.skipped
                )
            })?;
        }
        Command::Config(command) => {
            let mut settings = WebhookSettings::from_env()?;
            let db = connect(cli.database_url).await?;
            run_config(&db, &mut settings, command, json).await?;
        }
        Command::Deliveries(command) => {
            let db = connect(cli.database_url).await?;
            run_deliveries(&db, command, json).await?;
        }
    }
    Ok(())
}

async fn run_config(
    db: &DatabaseConnection,
    settings: &mut WebhookSettings,
    command: ConfigCommand,
    json: bool,
) -> Result<(), Failure> {
    let view = match command {
        ConfigCommand::Set {
            agent,
            url,
            events,
            disabled,
            secret_env,
            generate_secret,
            development,
        } => {
            if development {
                settings.url_policy = UrlPolicy::Development;
            }
            let (secret, generated) = match (secret_env, generate_secret) {
                (Some(var), _) => (Some(secret_from_env(&var)?), false),
                (None, true) => (Some(WebhookSecret::generate()?), true),
                (None, false) => (None, false),
            };
            let request = WebhookConfig {
                webhook_url: url,
                webhook_secret: secret
                    .as_ref()
                    .map(|s| SecretString::from(s.expose().to_owned())),
                webhook_events: events,
                webhook_enabled: !disabled,
            };
            let view = config::set_webhook_config(db, settings, &agent, &request).await?;
            if let (true, Some(secret)) = (generated, &secret) {
                // Shown once, on purpose: the operator hands it to the receiver.
                eprintln!("generated signing secret (shown once, store it now):");
                println!("{}", secret.expose());
            }
            view
        }
        ConfigCommand::Show { agent } => config::get_webhook_config(db, &agent).await?,
        ConfigCommand::Disable { agent } => config::disable_webhook(db, &agent).await?,
        ConfigCommand::Clear { agent } => config::clear_webhook_config(db, &agent).await?,
    };
    print(json, &view, || {
        format!(
            "agent {}\n  url: {}\n  enabled: {}\n  secret: {}\n  events: {}",
            view.agent_id,
            view.webhook_url.as_deref().unwrap_or("(none)"),
            view.webhook_enabled,
            if view.has_secret { "set" } else { "not set" },
            if view.all_events {
                "all".to_owned()
            } else {
                view.webhook_events.join(", ")
            },
        )
    })
}

async fn run_deliveries(
    db: &DatabaseConnection,
    command: DeliveriesCommand,
    json: bool,
) -> Result<(), Failure> {
    let now = Utc::now();
    match command {
        DeliveriesCommand::List {
            agent,
            state,
            event,
            cursor,
            limit,
        } => {
            let query = HistoryQuery {
                state: state
                    .as_deref()
                    .map(str::parse::<DeliveryState>)
                    .transpose()?,
                event_type: event,
                cursor,
                limit,
            };
            let page = deliveries::history(db, &agent, &query, now).await?;
            print(json, &page, || {
                let mut lines: Vec<String> = page
                    .items
                    .iter()
                    .map(|d| {
                        format!(
                            "{}  {}  {:<9}  {}  attempts={} status={}",
                            d.id,
                            d.created_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                            d.state.as_str(),
                            d.event_type,
                            d.attempt_count,
                            d.status_code.map_or("-".to_owned(), |c| c.to_string()),
                        )
                    })
                    .collect();
                if let Some(cursor) = &page.next_cursor {
                    lines.push(format!("next page: --cursor {cursor}"));
                }
                lines.join("\n")
            })
        }
        DeliveriesCommand::Show { id } => {
            let delivery = deliveries::get(db, &id, now).await?;
            print(json, &delivery, || format!("{delivery:#?}"))
        }
        DeliveriesCommand::Stats { agent } => {
            let stats = deliveries::stats(db, &agent, now).await?;
            print(json, &stats, || {
                format!(
                    "pending {}\nleased {}\ndelivered {}\nfailed {}\nlast success {}\nconsecutive failures {}",
                    stats.pending,
                    stats.leased,
                    stats.delivered,
                    stats.failed,
                    stats
                        .last_success_at
                        .map_or("never".to_owned(), |t| t.to_rfc3339()),
                    stats.consecutive_failures
                )
            })
        }
        DeliveriesCommand::Requeue { id } => {
            let delivery = deliveries::requeue(db, &id, now).await?;
            print(json, &delivery, || format!("{} requeued", delivery.id))
        }
        DeliveriesCommand::Prune { older_than, batch } => {
            let cutoff = now - chrono::Duration::from_std(older_than)?;
            let deleted = deliveries::prune(db, cutoff, batch).await?;
            print(json, &serde_json::json!({ "deleted": deleted }), || {
                format!(
                    "deleted {deleted} deliveries created before {}",
                    cutoff.to_rfc3339()
                )
            })
        }
    }
}

fn print<T: Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<(), Failure> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", text());
    }
    Ok(())
}

async fn connect(url: Option<String>) -> Result<DatabaseConnection, Failure> {
    let url = url.unwrap_or_else(|| {
        eprintln!(
            "DATABASE_URL is not set: using the embedded SQLite database {}",
            crate::db::DEFAULT_DATABASE_URL
        );
        crate::db::DEFAULT_DATABASE_URL.to_owned()
    });
    crate::db::connect(&url, 2)
        .await
        .map_err(|e| Failure(format!("cannot connect to the database: {e}")))
}

fn secret_from_env(var: &str) -> Result<WebhookSecret, Failure> {
    let value = std::env::var(var)
        .map_err(|_| Failure(format!("environment variable {var} is not set")))?;
    Ok(WebhookSecret::parse(SecretString::from(value))?)
}

fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::parse_age;
    use std::time::Duration;

    #[test]
    fn ages() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3_600)));
        for bad in ["", "d", "30", "30w", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
