//! What each command does, on top of the `agent_webhooks` library.
//!
//! Settings come from the environment ([`WebhookSettings::from_env`]) and flags override them.
//! Secrets never come from argv (they would show in `ps` and shell history): they are read from
//! an environment variable named on the command line, or generated.

use std::io::Read;
use std::time::Duration;

use agent_webhooks::delivery::{
    self, AttemptRecord, Enqueued, HistoryQuery, SkipReason, Verdict, VerdictReason,
    WebhookDelivery,
};
use agent_webhooks::dispatch::{Dispatcher, DrainReport};
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::secrets::signing;
use agent_webhooks::secrets::webhook_secret::WebhookSecret;
use agent_webhooks::settings::{WebhookSettings, format_retry_schedule};
use agent_webhooks::webhook::signing_secrets::{self, SigningKeyView, SigningKeysView};
use agent_webhooks::webhook::url_policy::UrlPolicy;
use agent_webhooks::webhook::{self, WebhookConfig, WebhookConfigPatch, WebhookConfigView};
use anyhow::{Context, anyhow, bail};
use chrono::Utc;
use sea_orm::{DatabaseConnection, TransactionTrait};
use secrecy::SecretString;

use crate::args::{
    Cli, Command, ConfigCommand, DeliveriesCommand, EventsCommand, SecretsCommand, SigningCommand,
};
use crate::output::{self, Progress, count, instant};
use crate::stop::StopSignals;

/// What a command does with the database. Without `DATABASE_URL` every command uses the
/// embedded SQLite default; only those that write say so up front (once, on stderr), because
/// writing to a database the operator did not mean is the mistake worth a line. A command that
/// only reads stays quiet when it succeeds, and names the default database in its error line
/// when it fails (an unknown agent on the wrong database).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    None,
    Read,
    Write,
}

fn access(command: &Command) -> Access {
    match command {
        Command::CheckUrl { .. }
        | Command::Sign { .. }
        | Command::Verify { .. }
        | Command::SealingKeys(SecretsCommand::GenerateKey { .. }) => Access::None,
        Command::Config(ConfigCommand::Show { .. } | ConfigCommand::CheckFilter { .. })
        | Command::Signing(SigningCommand::Show { .. })
        | Command::Deliveries(
            DeliveriesCommand::List { .. }
            | DeliveriesCommand::Show { .. }
            | DeliveriesCommand::Stats { .. },
        ) => Access::Read,
        Command::SealingKeys(SecretsCommand::Rotate { .. })
        | Command::Config(_)
        | Command::Signing(_)
        | Command::Deliveries(_)
        | Command::Events(_)
        | Command::Worker { .. } => Access::Write,
    }
}

/// Runs the parsed command line; an error is what the operator reads (exit 1). `stop`: the
/// worker's stop signals, caught by `main` before anything else.
pub async fn execute(mut cli: Cli, stop: Option<StopSignals>) -> anyhow::Result<()> {
    let access = access(&cli.command);
    let defaulted = cli.database_url.is_none();
    let database_url = cli.database_url.take().unwrap_or_else(|| {
        if access == Access::Write {
            output::note(&format!(
                "DATABASE_URL is not set: using the embedded SQLite database {}",
                migration::DEFAULT_DATABASE_URL
            ));
        }
        migration::DEFAULT_DATABASE_URL.to_owned()
    });
    let result = run(cli, database_url, stop).await;
    match result {
        Err(e)
            if defaulted
                && access == Access::Read
                && !e.chain().any(|c| c.is::<output::StdoutClosed>()) =>
        {
            Err(e.context(format!(
                "DATABASE_URL is not set: read the embedded SQLite database {}",
                migration::DEFAULT_DATABASE_URL
            )))
        }
        result => result,
    }
}

async fn run(cli: Cli, database_url: String, stop: Option<StopSignals>) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::CheckUrl { url, development } => {
            let mut policy = WebhookSettings::from_env()?.url_policy;
            if development {
                policy = UrlPolicy::Development;
            }
            match policy.check(&url) {
                Ok(_) => output::line("ok"),
                // The library's message starts with "rejected:" already.
                Err(e) => bail!(
                    "rejected ({}): {}",
                    e.rule(),
                    e.to_string().trim_start_matches("rejected: ")
                ),
            }
        }
        Command::Sign { message } => {
            let secret = secret_from_env(&message.secret_env)?;
            let body = read_stdin()?;
            let headers = signing::sign(&[&secret], &message.id, message.timestamp, &body)?;
            output::line(&headers.webhook_signature)
        }
        Command::Verify {
            message,
            signature,
            now,
            tolerance,
        } => {
            let tolerance = match tolerance {
                Some(secs) => Duration::from_secs(secs),
                None => WebhookSettings::from_env()?.signature_tolerance,
            };
            let secret = secret_from_env(&message.secret_env)?;
            let body = read_stdin()?;
            let timestamp = message.timestamp.to_string();
            let headers = signing::ReceivedHeaders {
                id: &message.id,
                timestamp: &timestamp,
                signature: &signature,
            };
            let now = now.unwrap_or_else(|| Utc::now().timestamp());
            signing::verify(&[&secret], headers, &body, now, tolerance).context("rejected")?;
            output::line("ok")
        }
        Command::SealingKeys(SecretsCommand::GenerateKey { key_id }) => {
            output::line(&KeyRing::generate_key_entry(&key_id)?)
        }
        Command::SealingKeys(SecretsCommand::Rotate { batch }) => {
            let settings = WebhookSettings::from_env()?;
            let db = connect(&database_url).await?;
            let progress = Progress::start("re-sealing secrets");
            let report = webhook::reseal_secrets(&db, &settings, batch, |so_far| {
                progress.update(|| {
                    format!(
                        "re-sealing secrets: examined {}, re-sealed {}",
                        so_far.examined, so_far.resealed
                    )
                })
            })
            .await?;
            drop(progress);
            output::print(json, &report, |report| {
                let mut line = format!(
                    "examined {}, re-sealed {}, already current {}",
                    report.examined, report.resealed, report.already_current
                );
                if report.skipped > 0 {
                    line.push_str(&format!(
                        ", skipped {} (changed meanwhile; run again)",
                        report.skipped
                    ));
                }
                line
            })
        }
        Command::Config(command) => {
            let settings = WebhookSettings::from_env()?;
            let db = connect(&database_url).await?;
            run_config(&db, settings, command, json).await
        }
        Command::Signing(command) => {
            let settings = WebhookSettings::from_env()?;
            let db = connect(&database_url).await?;
            run_signing(&db, &settings, command, json).await
        }
        Command::Deliveries(command) => {
            let db = connect(&database_url).await?;
            run_deliveries(&db, command, json).await
        }
        Command::Events(EventsCommand::Emit {
            agent,
            event_type,
            event_id,
            payload_file,
            lane,
        }) => {
            let settings = WebhookSettings::from_env()?;
            let payload = read_payload(&payload_file)?;
            let event_id = event_id.unwrap_or_else(|| format!("evt_{}", uuid::Uuid::now_v7()));
            let db = connect(&database_url).await?;
            let payload = delivery::Payload::json(&payload);
            let enqueued = match &lane {
                Some(lane) => {
                    delivery::enqueue_in_lane(
                        &db,
                        &settings,
                        &agent,
                        lane,
                        &event_id,
                        &event_type,
                        payload,
                        Utc::now(),
                    )
                    .await
                }
                None => {
                    delivery::enqueue(
                        &db,
                        &settings,
                        &agent,
                        &event_id,
                        &event_type,
                        payload,
                        Utc::now(),
                    )
                    .await
                }
            }
            .with_context(|| format!("{} was not enqueued", payload_file.display()))?;
            let (status, delivery_id, reason) = match &enqueued {
                Enqueued::Created(d) => ("created", Some(d.id.as_str()), None),
                Enqueued::Existing(d) => ("existing", Some(d.id.as_str()), None),
                Enqueued::Skipped(why) => ("skipped", None, Some(skip_text(*why))),
            };
            let value = serde_json::json!({
                "status": status,
                "event_id": event_id,
                "delivery_id": delivery_id,
                "reason": reason,
            });
            output::print(json, &value, |_| match (delivery_id, reason) {
                (Some(id), _) if status == "existing" => format!("{id} (enqueued before)"),
                (Some(id), _) => id.to_owned(),
                (None, reason) => format!("skipped: {}", reason.unwrap_or_default()),
            })
        }
        Command::Worker { once, metrics_addr } => {
            let stop = match stop {
                Some(stop) => stop,
                None => StopSignals::catch().context("cannot catch SIGTERM and SIGINT")?,
            };
            run_worker(&database_url, once, metrics_addr, stop, json).await
        }
    }
}

/// Connections of the worker's pool: requests in flight hold none, so it needs one to claim
/// with, one for the recording running beside the claim, and two for claims given back (the
/// listening worker's `LISTEN` connection is its own, outside the pool). A pool per request in flight would let four workers at the default concurrency
/// use up PostgreSQL's default `max_connections` (100).
const WORKER_POOL: u32 = 4;

/// `worker`. SIGTERM or SIGINT stops it at any moment, also during start-up (settings,
/// metrics endpoint, database): the long-running worker then finishes the sends in flight,
/// prints its report and exits 0 (an empty report when it had not started yet); `--once`,
/// whose pass cannot be finished early, stops at once and exits 1, leaving the deliveries it
/// had claimed to their leases, as a kill would.
async fn run_worker(
    database_url: &str,
    once: bool,
    metrics_addr: Option<std::net::SocketAddr>,
    mut stop: StopSignals,
    json: bool,
) -> anyhow::Result<()> {
    const INTERRUPTED: &str = "stopped by a signal before the pass finished; the deliveries it \
                               had claimed are left to their leases";
    let start = async {
        let settings = WebhookSettings::from_env()?;
        if let Some(addr) = metrics_addr {
            serve_metrics(addr)?;
        }
        let db = connect_with(database_url, WORKER_POOL).await?;
        // A worker that cannot open the stored secrets would send nothing and blame every
        // receiver: refuse to start instead, before anything is claimed.
        let key_ids = agent_webhooks::webhook::signing_secrets::check_key_ring(&db, &settings)
            .await
            .context("the worker cannot open the stored signing secrets")?;
        tracing::info!(key_ids, "WEBHOOK_SECRET_KEYS opens every stored key id");
        tracing::info!(
            max_attempts = settings.retry.max_attempts,
            "retry schedule {} (WEBHOOK_RETRY_SCHEDULE and WEBHOOK_MAX_ATTEMPTS in effect)",
            format_retry_schedule(settings.retry.delays())
        );
        anyhow::Ok(Dispatcher::new(settings, db)?)
    };
    let dispatcher = tokio::select! {
        dispatcher = start => dispatcher?,
        () = stop.recv() => {
            if once {
                bail!(INTERRUPTED);
            }
            return output::print(json, &DrainReport::default(), report_text);
        }
    };
    let report = if once {
        tokio::select! {
            report = dispatcher.run_once() => report?,
            () = stop.recv() => bail!(INTERRUPTED),
        }
    } else {
        dispatcher.run(stop.recv()).await
    };
    output::print(json, &report, report_text)
}

/// Installs the Prometheus recorder and its scrape endpoint on `addr` (any path answers; the
/// convention is `/metrics`). Fails when the address cannot be bound.
fn serve_metrics(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    agent_webhooks::metrics::describe();
    Ok(())
}

fn report_text(r: &DrainReport) -> String {
    format!(
        "attempts {}, delivered {}, retrying {}, given up {}, stale {}",
        r.attempts, r.delivered, r.retrying, r.given_up, r.stale
    )
}

fn skip_text(reason: SkipReason) -> &'static str {
    match reason {
        SkipReason::Disabled => "the agent's webhook is disabled",
        SkipReason::NoUrl => "the agent has no webhook URL",
        SkipReason::NotWanted => "the agent's webhook does not want this event type",
        SkipReason::AgentDeleted => "the agent is deleted",
        SkipReason::Filtered => "the payload does not match the agent's content filter",
    }
}

/// The one line of `config check-filter` for an event that would not be delivered.
fn verdict_text(verdict: &Verdict) -> String {
    let why = match verdict.reason {
        VerdictReason::WouldDeliver => return "would deliver".to_owned(),
        VerdictReason::AgentNotFound => "no such agent",
        VerdictReason::AgentDeleted => skip_text(SkipReason::AgentDeleted),
        VerdictReason::Disabled => skip_text(SkipReason::Disabled),
        VerdictReason::NoUrl => skip_text(SkipReason::NoUrl),
        VerdictReason::NotWanted => skip_text(SkipReason::NotWanted),
        VerdictReason::Filtered => skip_text(SkipReason::Filtered),
    };
    match &verdict.failed_clause {
        Some(clause) => format!(
            "would not deliver ({}): {why}; clause `{clause}` does not hold",
            verdict.reason.as_str()
        ),
        None => format!("would not deliver ({}): {why}", verdict.reason.as_str()),
    }
}

/// A JSON value (a content filter, a payload to check) from a file or stdin (`-`).
fn read_json(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let bytes = read_payload(path)?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))
}

/// The JSON payload of `events emit`, from a file or stdin (`-`), as bytes: stored and sent
/// unchanged, checked to be JSON by the enqueue.
fn read_payload(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        read_stdin()
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

async fn run_config(
    db: &DatabaseConnection,
    mut settings: WebhookSettings,
    command: ConfigCommand,
    json: bool,
) -> anyhow::Result<()> {
    let view = match command {
        ConfigCommand::Set {
            agent,
            url,
            events,
            disabled,
            ordered,
            secret_env,
            generate_secret,
            development,
            filter_file,
        } => {
            let webhook_filter = filter_file.as_deref().map(read_json).transpose()?;
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
                webhook_filter,
                webhook_ordered: ordered,
            };
            let view = webhook::configure(db, &settings, &agent, &request).await?;
            if let (true, Some(secret)) = (generated, &secret) {
                // Shown once, on purpose: the operator hands it to the receiver.
                output::note("generated signing secret (shown once, store it now):");
                output::line(secret.expose())?;
            }
            view
        }
        ConfigCommand::Filter { agent, file, .. } => {
            // clap requires `--file` or `--clear`: no file means clear.
            let filter = file.as_deref().map(read_json).transpose()?;
            let patch = WebhookConfigPatch {
                webhook_filter: Some(filter),
                ..WebhookConfigPatch::default()
            };
            webhook::update(db, &settings, &agent, &patch).await?
        }
        ConfigCommand::CheckFilter {
            agent,
            event_type,
            payload_file,
        } => {
            let payload = read_json(&payload_file)?;
            let verdict = delivery::would_deliver(db, &agent, &event_type, &payload).await?;
            if json {
                output::print(true, &verdict, |_| String::new())?;
            } else if verdict.deliver {
                output::line(&verdict_text(&verdict))?;
            }
            if !verdict.deliver {
                bail!(verdict_text(&verdict));
            }
            return Ok(());
        }
        ConfigCommand::Show { agent } => webhook::get(db, &agent).await?,
        ConfigCommand::Disable { agent } => webhook::disable(db, &agent).await?,
        ConfigCommand::Clear { agent } => webhook::clear(db, &agent).await?,
    };
    output::print(json, &view, config_text)
}

async fn run_signing(
    db: &DatabaseConnection,
    settings: &WebhookSettings,
    command: SigningCommand,
    json: bool,
) -> anyhow::Result<()> {
    match command {
        SigningCommand::Rotate { agent, grace } => {
            // One transaction: the new primary and the kept previous secret land together.
            let txn = db.begin().await?;
            let rotated =
                signing_secrets::rotate_signing_secret(&txn, settings, &agent, grace, Utc::now())
                    .await?;
            txn.commit().await?;
            // Shown once, on purpose: the operator hands it to the receivers.
            let value = serde_json::json!({
                "agent_id": agent,
                "secret": rotated.secret.expose(),
                "key_id": rotated.key_id,
                "previous": rotated.previous,
            });
            if json {
                return output::print(true, &value, |_| String::new());
            }
            output::note("new signing secret (shown once, store it now):");
            output::line(rotated.secret.expose())?;
            output::note(&format!(
                "key id {}; {}",
                rotated.key_id,
                match &rotated.previous {
                    Some(previous) => format!(
                        "the previous secret {} keeps signing until {}",
                        previous.key_id,
                        optional(previous.expires_at.map(instant))
                    ),
                    None => "no previous secret keeps signing".to_owned(),
                }
            ));
            Ok(())
        }
        SigningCommand::RevokePrevious { agent } => {
            let revoked = signing_secrets::revoke_previous(db, &agent).await?;
            output::print(json, &serde_json::json!({ "revoked": revoked }), |_| {
                format!(
                    "revoked {}",
                    count(
                        revoked,
                        "previous signing secret",
                        "previous signing secrets"
                    )
                )
            })
        }
        SigningCommand::Show { agent } => {
            let view = signing_secrets::signing_keys(db, settings, &agent, Utc::now()).await?;
            output::print(json, &view, signing_keys_text)
        }
        SigningCommand::GenerateEd25519 { agent } => {
            let key = signing_secrets::generate_ed25519_key(db, settings, &agent).await?;
            output::print(json, &key, |key| {
                format!(
                    "{}\nkey id {} (give receivers the public key above)",
                    optional(key.public_key.as_ref()),
                    key.key_id
                )
            })
        }
        SigningCommand::RemoveEd25519 { agent } => {
            signing_secrets::remove_ed25519_key(db, &agent).await?;
            output::line("removed")
        }
        SigningCommand::Prune => {
            let deleted = signing_secrets::prune_expired(db, Utc::now()).await?;
            output::print(json, &serde_json::json!({ "deleted": deleted }), |_| {
                format!(
                    "deleted {}",
                    count(
                        deleted,
                        "expired previous signing secret",
                        "expired previous signing secrets"
                    )
                )
            })
        }
    }
}

fn signing_keys_text(view: &SigningKeysView) -> String {
    if view.keys.is_empty() {
        return format!("agent {}: no signing keys", view.agent_id);
    }
    let row = |key: &SigningKeyView| {
        vec![
            key.key_id.clone(),
            key.algorithm.as_str().to_owned(),
            key.role.to_string(),
            optional(key.expires_at.map(instant)),
            optional(key.public_key.as_ref()),
        ]
    };
    output::table(
        &["KEY ID", "ALGORITHM", "ROLE", "EXPIRES", "PUBLIC KEY"],
        view.keys.iter().map(row),
    )
}

/// The configuration; when the worker disabled the webhook, also when and why, and since when
/// attempts have been failing (what an operator needs to decide whether to enable it again).
fn config_text(view: &WebhookConfigView) -> String {
    let mut text = format!(
        "agent {}\n  url: {}\n  enabled: {}\n  ordered: {}\n  secret: {}\n  events: {}",
        view.agent_id,
        view.webhook_url.as_deref().unwrap_or("(none)"),
        view.webhook_enabled,
        view.webhook_ordered,
        if view.has_secret { "set" } else { "not set" },
        if view.all_events {
            "all".to_owned()
        } else {
            view.webhook_events.join(", ")
        },
    );
    if let Some(at) = view.disabled_at {
        text.push_str(&format!(
            "\n  disabled by the worker: {} ({})",
            instant(at),
            view.disabled_reason
                .as_deref()
                .unwrap_or("no reason recorded")
        ));
    }
    if let Some(since) = view.failing_since {
        text.push_str(&format!("\n  failing since: {}", instant(since)));
    }
    text.push_str(&format!(
        "\n  content filter: {}",
        view.webhook_filter
            .as_ref()
            .map_or_else(|| "none".to_owned(), |filter| filter.to_string())
    ));
    text
}

async fn run_deliveries(
    db: &DatabaseConnection,
    command: DeliveriesCommand,
    json: bool,
) -> anyhow::Result<()> {
    let now = Utc::now();
    match command {
        DeliveriesCommand::List {
            agent,
            state,
            event,
            cursor,
            limit,
        } => {
            // An unknown agent is an error, not an empty page that looks like "no deliveries".
            webhook::get_agent(db, &agent).await?;
            let query = HistoryQuery {
                state: state.map(Into::into),
                event_type: event,
                cursor,
                // 0 asks for the library's default page size.
                limit: limit.unwrap_or(0),
            };
            let page = delivery::history(db, &agent, &query, now).await?;
            output::print(json, &page, |page| {
                let mut text = output::table(
                    &["ID", "CREATED", "STATE", "EVENT", "ATTEMPTS", "STATUS"],
                    page.items.iter().map(|d| {
                        vec![
                            d.id.clone(),
                            instant(d.created_at),
                            d.state.to_string(),
                            d.event_type.clone(),
                            d.attempt_count.to_string(),
                            optional(d.status_code),
                        ]
                    }),
                );
                if let Some(cursor) = &page.next_cursor {
                    text.push_str(&format!("\nnext page: --cursor {cursor}"));
                }
                text
            })
        }
        DeliveriesCommand::Show { id } => {
            let delivery = delivery::get(db, &id, now).await?;
            let attempts = delivery::attempts(db, &id).await?;
            let shown = Shown {
                delivery: &delivery,
                attempts: &attempts,
            };
            output::print(json, &shown, |shown| {
                let mut text = delivery_text(shown.delivery, shown.attempts.len());
                if !shown.attempts.is_empty() {
                    text.push_str("\n\n");
                    text.push_str(&attempts_table(shown.attempts));
                }
                text
            })
        }
        DeliveriesCommand::Stats { agent } => {
            webhook::get_agent(db, &agent).await?;
            let stats = delivery::stats(db, &agent, now).await?;
            output::print(json, &stats, |stats| {
                format!(
                    "pending {}\nleased {}\ndelivered {}\nfailed {}\nlast success {}\nconsecutive failures {}",
                    stats.pending,
                    stats.leased,
                    stats.delivered,
                    stats.failed,
                    stats.last_success_at.map_or("never".to_owned(), instant),
                    stats.consecutive_failures
                )
            })
        }
        DeliveriesCommand::Requeue { id } => {
            let delivery = delivery::requeue(db, &id, now).await?;
            output::print(json, &delivery, |d| format!("{} requeued", d.id))
        }
        DeliveriesCommand::Prune {
            older_than,
            batch,
            pause,
        } => {
            // Checked when parsing too; checked again because `now` moved on since.
            let cutoff = crate::args::cutoff(now, older_than).map_err(|e| anyhow!(e))?;
            let progress = Progress::start("pruning deliveries");
            let deleted = delivery::prune(db, cutoff, batch, pause, |so_far| {
                progress.update(|| format!("pruning deliveries: deleted {so_far}"))
            })
            .await?;
            drop(progress);
            output::print(json, &serde_json::json!({ "deleted": deleted }), |_| {
                format!(
                    "deleted {} created before {}",
                    count(deleted, "delivery", "deliveries"),
                    instant(cutoff)
                )
            })
        }
    }
}

/// A delivery with its attempt log, as `deliveries show` prints it.
#[derive(serde::Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    delivery: &'a WebhookDelivery,
    attempts: &'a [AttemptRecord],
}

fn attempts_table(attempts: &[AttemptRecord]) -> String {
    output::table(
        &[
            "attempt",
            "started_at",
            "ms",
            "status",
            "class",
            "remote",
            "message",
        ],
        attempts.iter().map(|a| {
            vec![
                a.attempt.to_string(),
                instant(a.started_at),
                (a.finished_at - a.started_at)
                    .num_milliseconds()
                    .to_string(),
                optional(a.status_code),
                optional(a.error_class),
                a.remote_addr.clone().unwrap_or_else(|| "-".to_owned()),
                a.message.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        }),
    )
}

/// Every field of a delivery, under its JSON name, and how many attempts its log holds (the
/// log itself follows as a table).
fn delivery_text(d: &WebhookDelivery, attempts: usize) -> String {
    output::fields(&[
        ("id", d.id.clone()),
        ("state", d.state.to_string()),
        ("agent_id", d.agent_id.clone()),
        ("organization_id", d.organization_id.clone()),
        ("event_id", d.event_id.clone()),
        ("event_type", d.event_type.clone()),
        ("webhook_url", d.webhook_url.clone()),
        ("attempt_count", d.attempt_count.to_string()),
        ("status_code", optional(d.status_code)),
        (
            "error_message",
            d.error_message.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        ("created_at", instant(d.created_at)),
        ("delivered_at", optional(d.delivered_at.map(instant))),
        ("next_retry_at", optional(d.next_retry_at.map(instant))),
        ("lane", optional(d.lane.as_ref())),
        ("lane_seq", optional(d.lane_seq)),
        ("attempts", attempts.to_string()),
    ])
}

fn optional(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

async fn connect(url: &str) -> anyhow::Result<DatabaseConnection> {
    connect_with(url, 2).await
}

async fn connect_with(url: &str, pool: u32) -> anyhow::Result<DatabaseConnection> {
    // The pool would retry a refused connection for the whole connect timeout, then say only
    // "pool timed out": one connection of our own first fails at once and names host, port
    // and cause.
    migration::check_reachable(url, migration::CONNECT_TIMEOUT).await?;
    // The URL stays out of the message: it may hold a password.
    agent_webhooks::db::connect(url, pool)
        .await
        .context("cannot connect to the database")
}

fn secret_from_env(var: &str) -> anyhow::Result<WebhookSecret> {
    let value = std::env::var(var).map_err(|_| anyhow!("environment variable {var} is not set"))?;
    Ok(WebhookSecret::parse(SecretString::from(value))?)
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .context("cannot read the body from stdin")?;
    Ok(body)
}
