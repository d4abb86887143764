//! What operators may type. Every value that can be checked without the database is checked
//! here, by clap, so that a bad one is a usage error (exit 2) that lists what is accepted,
//! before anything runs.

use std::time::Duration;

use agent_webhooks::delivery::{DeliveryState, MAX_PAGE_SIZE};
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::settings::SIGNING_GRACE_SECS;
use chrono::{DateTime, TimeDelta, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "agent-webhooks",
    version,
    about = "Operate agent webhooks: URLs, configuration, secrets, deliveries, signatures",
    after_help = "Exit status: 0 on success, 1 when the command ran and said no (a rejected URL, \
                  a failed verification, an error from the database), 2 on usage errors. \
                  Settings come from the WEBHOOK_* environment variables; flags override them."
)]
pub struct Cli {
    /// Database URL; defaults to the embedded SQLite file `webhooks.db`.
    // `hide_env_values`: `--help` would otherwise print the URL, password included.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a webhook URL against the policy (WEBHOOK_URL_POLICY): `ok` and exit 0, or the
    /// failed rule and exit 1.
    CheckUrl {
        /// The URL to check.
        url: String,
        /// Use the development policy (http, loopback and private targets allowed), whatever
        /// WEBHOOK_URL_POLICY says.
        #[arg(long)]
        development: bool,
    },
    /// Show or change an agent's webhook configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Sealing keys: the master keys (WEBHOOK_SECRET_KEYS) that encrypt stored secrets at rest.
    /// Rotating them changes nothing receivers see. (`secrets` is a hidden alias, the old name.)
    #[command(subcommand, name = "sealing-keys", alias = "secrets")]
    SealingKeys(SecretsCommand),
    /// Signing secrets and keys: what deliveries are signed with and receivers verify.
    /// Rotating a signing secret changes what receivers must hold (with a grace period).
    #[command(subcommand)]
    Signing(SigningCommand),
    /// Delivery history and operations.
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// Enqueue events for agents' webhooks.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Send due deliveries: claim, sign, POST, record each attempt. Runs until SIGTERM or
    /// SIGINT (then finishes the sends in flight), or with `--once` until nothing is due.
    /// Settings: the WEBHOOK_* variables (concurrency, timeouts, caps, poll interval, retry
    /// schedule); with AGENT_WEBHOOKS_LOG=info it logs the retry schedule in effect at start.
    Worker {
        /// Send what is due now, then exit (tests, cron-style use).
        #[arg(long)]
        once: bool,
        /// Serve the worker's metrics for Prometheus at http://ADDR/metrics, e.g.
        /// 127.0.0.1:9464 (sent, failed by class, retried, exhausted, auto-disabled, claim lag,
        /// in flight).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
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
        /// Accepted clock skew in seconds (default: WEBHOOK_SIGNATURE_TOLERANCE_SECS, or the
        /// library's default tolerance when that is unset).
        #[arg(long)]
        tolerance: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct MessageArgs {
    /// Name of the environment variable holding the secret (never the secret itself).
    #[arg(long)]
    pub secret_env: String,
    /// The message id (`webhook-id`).
    #[arg(long)]
    pub id: String,
    /// The unix timestamp (`webhook-timestamp`).
    #[arg(long)]
    pub timestamp: i64,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
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
        /// Deliver in order within each lane (see `events emit --lane`): a lane's next event
        /// waits until the one before it is delivered or given up.
        #[arg(long)]
        ordered: bool,
        /// Read the signing secret from this environment variable.
        #[arg(long, conflicts_with = "generate_secret")]
        secret_env: Option<String>,
        /// Generate a `whsec_` secret and print it once.
        #[arg(long)]
        generate_secret: bool,
        /// Accept http and private targets (development policy), whatever WEBHOOK_URL_POLICY
        /// says.
        #[arg(long)]
        development: bool,
        /// A file holding the content filter, a JSON object (`-` for stdin); omitted means no
        /// filter. See docs/deliveries.md#content-filters.
        #[arg(long, value_name = "FILE")]
        filter_file: Option<std::path::PathBuf>,
    },
    /// Set or remove only the content filter of an agent's webhook, keeping the rest.
    Filter {
        #[arg(long)]
        agent: String,
        /// A file holding the content filter, a JSON object (`-` for stdin).
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "clear",
            conflicts_with = "clear"
        )]
        file: Option<std::path::PathBuf>,
        /// Remove the filter: every payload of a wanted event type is delivered.
        #[arg(long)]
        clear: bool,
    },
    /// Whether an event would be delivered to an agent's webhook, without enqueueing it:
    /// `would deliver` and exit 0, or the rule that holds it back (disabled, no URL, event type
    /// not wanted, content filter) and exit 1.
    CheckFilter {
        #[arg(long)]
        agent: String,
        /// The event type, e.g. `run.completed`.
        #[arg(long)]
        event_type: String,
        /// A file holding the JSON payload (`-` for stdin).
        #[arg(long, value_name = "FILE")]
        payload_file: std::path::PathBuf,
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
pub enum EventsCommand {
    /// Enqueue one event for an agent's webhook: prints the delivery id, or why nothing was
    /// enqueued (webhook disabled, no URL, event not wanted).
    Emit {
        #[arg(long)]
        agent: String,
        /// The event type, e.g. `run.completed`.
        #[arg(long = "type")]
        event_type: String,
        /// The event id (`webhook-id`, the idempotency key); default: a new `evt_<uuid v7>`.
        #[arg(long)]
        event_id: Option<String>,
        /// A file holding the JSON payload (`-` for stdin).
        #[arg(long)]
        payload_file: std::path::PathBuf,
        /// The lane of an ordered webhook (e.g. a run id); default: the agent's one lane.
        #[arg(long)]
        lane: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Print a new key entry for WEBHOOK_SECRET_KEYS (prepend it to make it current).
    GenerateKey {
        /// The key id: 1 to 32 characters of A-Z, a-z, 0-9, _ and -.
        #[arg(long, default_value_t = default_key_id(), value_parser = parse_key_id)]
        key_id: String,
    },
    /// Re-seal every stored secret and key under the current (first) sealing key; resumable,
    /// safe to repeat. Receivers notice nothing (see `signing rotate` for that).
    Rotate {
        /// Rows read per query.
        #[arg(long, default_value_t = 500, value_parser = limit())]
        batch: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum SigningCommand {
    /// Replace an agent's signing secret with a new one, printed once; the old one keeps
    /// signing (next to the new one) for the grace period.
    Rotate {
        #[arg(long)]
        agent: String,
        /// How long the old secret keeps signing, 0s to 7d (e.g. `24h`, `30m`, `0s`); default
        /// WEBHOOK_SIGNING_GRACE_SECS, else 24h.
        #[arg(long, value_parser = parse_grace)]
        grace: Option<Duration>,
    },
    /// Stop every previous signing secret of an agent at once (a leaked secret).
    RevokePrevious {
        #[arg(long)]
        agent: String,
    },
    /// An agent's signing keys: key ids, algorithms, expiries, the Ed25519 public key; never a
    /// secret.
    Show {
        #[arg(long)]
        agent: String,
    },
    /// Give an agent a new Ed25519 key pair (replacing its old one at once): deliveries also
    /// carry a `v1a` signature; prints the `whpk_` public key for receivers.
    GenerateEd25519 {
        #[arg(long)]
        agent: String,
    },
    /// Remove an agent's Ed25519 key pair: no more `v1a` signatures.
    RemoveEd25519 {
        #[arg(long)]
        agent: String,
    },
    /// Delete expired previous signing secrets of every agent (they never sign anyway).
    Prune,
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// An agent's deliveries, newest first.
    List {
        #[arg(long)]
        agent: String,
        /// Only deliveries in this state.
        #[arg(long, value_enum, ignore_case = true)]
        state: Option<StateArg>,
        /// Only this event type.
        #[arg(long)]
        event: Option<String>,
        /// The cursor printed with the previous page.
        #[arg(long)]
        cursor: Option<String>,
        /// Page size (default: the library's page size).
        #[arg(long, value_parser = limit())]
        limit: Option<u64>,
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
    /// Delete delivered and exhausted deliveries older than a duration (e.g. `30d`, `12h`,
    /// `1h 30m`).
    Prune {
        #[arg(long, value_parser = parse_age)]
        older_than: Duration,
        /// Rows deleted per statement.
        #[arg(long, default_value_t = MAX_PAGE_SIZE, value_parser = limit())]
        batch: u64,
        /// Sleep between statements (e.g. `50ms`), so that workers claiming beside a long prune
        /// keep their latency; at most 1 minute.
        #[arg(long, default_value = "0s", value_parser = parse_pause)]
        pause: Duration,
    },
}

/// `--limit` and `--batch`: the library's bounds, checked as usage errors.
fn limit() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(1..=MAX_PAGE_SIZE)
}

/// The `--state` values. A mirror of [`DeliveryState`] (a library type cannot derive a clap
/// trait without the library depending on clap); a test keeps the two in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Waiting to be claimed, now or at its retry time.
    Pending,
    /// Being sent by a worker whose lease has not run out.
    Leased,
    /// Accepted by the receiver.
    Delivered,
    /// Exhausted; only `requeue` sends it again.
    Failed,
}

impl From<StateArg> for DeliveryState {
    fn from(state: StateArg) -> Self {
        match state {
            StateArg::Pending => DeliveryState::Pending,
            StateArg::Leased => DeliveryState::Leased,
            StateArg::Delivered => DeliveryState::Delivered,
            StateArg::Failed => DeliveryState::Failed,
        }
    }
}

/// `--key-id`: refused as a usage error when no key ring could ever hold it.
fn parse_key_id(text: &str) -> Result<String, String> {
    KeyRing::check_new_key_id(text)
        .map(|()| text.to_owned())
        .map_err(|e| e.to_string())
}

fn default_key_id() -> String {
    format!("k{}", Utc::now().format("%Y%m%d"))
}

/// `--grace`: a humantime duration within the library's 0 to 7 days; anything else is a usage
/// error.
fn parse_grace(text: &str) -> Result<Duration, String> {
    let grace = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (expected e.g. 24h, 30m, 7d or 0s)"))?;
    let max = Duration::from_secs((*SIGNING_GRACE_SECS.end()).into());
    if grace > max {
        return Err(format!(
            "{} is longer than the 7 days a grace period may last",
            humantime::format_duration(grace)
        ));
    }
    Ok(grace)
}

/// `--pause`: a humantime duration of at most a minute, so that a slip (`--pause 1d`) cannot
/// turn a prune into one that never ends; anything else is a usage error.
fn parse_pause(text: &str) -> Result<Duration, String> {
    let pause = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (expected e.g. 50ms, 1s or 0s)"))?;
    if pause > Duration::from_secs(60) {
        return Err(format!(
            "{} is longer than the 1 minute a pause may last",
            humantime::format_duration(pause)
        ));
    }
    Ok(pause)
}

/// `--older-than`: a humantime duration (`30d`, `12h`, `15m`, `90s`, `1h 30m`) whose cut-off
/// can be computed; anything else is a usage error.
fn parse_age(text: &str) -> Result<Duration, String> {
    let age = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (expected e.g. 30d, 12h, 15m, 90s or \"1h 30m\")"))?;
    cutoff(Utc::now(), age)?;
    Ok(age)
}

/// The instant `age` before `now`. Refuses cut-offs before 1970: no delivery is that old, and
/// a year outside what the databases store must never reach a query (MySQL's wire format would
/// wrap it into the far future, which would delete everything).
pub fn cutoff(now: DateTime<Utc>, age: Duration) -> Result<DateTime<Utc>, String> {
    TimeDelta::from_std(age)
        .ok()
        .and_then(|age| now.checked_sub_signed(age))
        .filter(|cutoff| *cutoff >= DateTime::UNIX_EPOCH)
        .ok_or_else(|| {
            format!(
                "{} reaches back before 1970; no delivery is that old",
                humantime::format_duration(age)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn grace_periods_from_zero_to_seven_days() {
        assert_eq!(parse_grace("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_grace("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_grace("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["7d 1s", "8d", "", "soon", "-1h", "99999999999999999999d"] {
            assert!(parse_grace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_is_a_hidden_alias_of_sealing_keys() {
        for name in ["sealing-keys", "secrets"] {
            let cli = Cli::try_parse_from(["agent-webhooks", name, "rotate"]).unwrap();
            assert!(matches!(
                cli.command,
                Command::SealingKeys(SecretsCommand::Rotate { .. })
            ));
        }
        let help = Cli::command().render_help().to_string();
        assert!(
            help.contains("sealing-keys") && help.contains("signing"),
            "{help}"
        );
        let listed = |name: &str| help.lines().any(|l| l.trim_start().starts_with(name));
        assert!(listed("sealing-keys") && listed("signing"), "{help}");
        assert!(!listed("secrets"), "{help}");
    }

    #[test]
    fn ages_in_humantime_form() {
        for (text, secs) in [
            ("30d", 30 * 86_400),
            ("12h", 12 * 3_600),
            ("15m", 15 * 60),
            ("90s", 90),
            ("1h 30m", 5_400),
            ("0s", 0),
        ] {
            assert_eq!(parse_age(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        for bad in ["", "d", "30", "30x", "-1d", "soon", "99999999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ages_past_the_date_arithmetic_are_refused_not_panics() {
        // Fits a `Duration` but not chrono's `TimeDelta`; then fits `TimeDelta` but not a date;
        // then is a date, but before any delivery.
        for age in ["500000000000y", "300000y", "60y"] {
            let err = parse_age(age).unwrap_err();
            assert!(err.contains("before 1970"), "{age}: {err}");
        }
        assert!(cutoff(Utc::now(), Duration::MAX).is_err());
    }

    #[test]
    fn a_bad_older_than_is_a_usage_error() {
        let err = Cli::try_parse_from([
            "agent-webhooks",
            "deliveries",
            "prune",
            "--older-than",
            "300000y",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn every_delivery_state_is_a_state_value_and_back() {
        let names: Vec<String> = StateArg::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|v| v.get_name().to_owned())
            .collect();
        assert_eq!(names.len(), DeliveryState::ALL.len());
        for &state in DeliveryState::ALL {
            let arg = StateArg::from_str(state.as_str(), false)
                .unwrap_or_else(|e| panic!("{state} is not a --state value: {e}"));
            assert_eq!(DeliveryState::from(arg), state);
        }
    }

    #[test]
    fn a_bad_state_is_a_usage_error_listing_the_values() {
        let err = Cli::try_parse_from([
            "agent-webhooks",
            "deliveries",
            "list",
            "--agent",
            "a",
            "--state",
            "lost",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
        let text = err.to_string();
        for state in DeliveryState::ALL {
            assert!(text.contains(state.as_str()), "{text}");
        }
        let upper = Cli::try_parse_from([
            "agent-webhooks",
            "deliveries",
            "list",
            "--agent",
            "a",
            "--state",
            "FAILED",
        ]);
        assert!(upper.is_ok(), "state names are case-insensitive");
    }

    /// What an operator may type where a number or a duration goes: any string, and numbers
    /// of every size and sign (past `u64` and `i64` too), with and without units.
    fn hostile_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<String>(),
            "\\PC{0,12}",
            any::<u128>().prop_map(|n| n.to_string()),
            any::<i128>().prop_map(|n| n.to_string()),
            (any::<u64>(), "[a-zµé ]{0,6}").prop_map(|(n, unit)| format!("{n}{unit}")),
            Just((i64::MAX as u64 + 1).to_string()),
            Just(u64::MAX.to_string()),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(512))]

        /// The parser never panics on `--older-than`, `--batch`, `--pause` or `--limit`: a value is
        /// accepted within its bounds or refused as a usage error (exit 2).
        #[test]
        fn the_parser_never_panics_on_numbers_and_durations(value in hostile_value()) {
            let command_lines: [&[&str]; 6] = [
                &["deliveries", "prune", "--older-than"],
                &["deliveries", "prune", "--older-than", "30d", "--batch"],
                &["deliveries", "prune", "--older-than", "30d", "--pause"],
                &["secrets", "rotate", "--batch"],
                &["signing", "rotate", "--agent", "a", "--grace"],
                &["deliveries", "list", "--agent", "a", "--limit"],
            ];
            for args in command_lines {
                let argv = std::iter::once("agent-webhooks")
                    .chain(args.iter().copied())
                    .chain(std::iter::once(value.as_str()));
                match Cli::try_parse_from(argv) {
                    Ok(cli) => {
                        if let Command::Deliveries(DeliveriesCommand::Prune { older_than, batch, pause }) =
                            cli.command
                        {
                            proptest::prop_assert!(cutoff(Utc::now(), older_than).is_ok());
                            proptest::prop_assert!((1..=MAX_PAGE_SIZE).contains(&batch));
                            proptest::prop_assert!(pause <= Duration::from_secs(60));
                        }
                        if let Command::Signing(SigningCommand::Rotate { grace: Some(grace), .. }) =
                            cli.command
                        {
                            proptest::prop_assert!(grace <= Duration::from_secs(604_800));
                        }
                    }
                    Err(err) => proptest::prop_assert_eq!(err.exit_code(), 2, "{:?}: {}", args, err),
                }
            }
        }
    }
}
