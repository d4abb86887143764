//! The `agent-webhooks` binary as operators run it, against SQLite, PostgreSQL and MariaDB.

use agent_webhooks::settings::WebhookSettings;
use serde_json::json;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use std::time::{Duration, Instant};

use agent_webhooks::delivery::{self, DeliveryState, Enqueued};
use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::webhook::url_policy::UrlPolicy;
use agent_webhooks::webhook::{self, WebhookConfig};
use integration_tests::{Backend, TestDb, backend_tests, seed_agent};
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Statement};
use secrecy::SecretString;

const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The `agent-webhooks` binary.
fn cli() -> std::path::PathBuf {
    integration_tests::workspace_program("agent-webhooks", "-p agent-webhooks-cli")
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Run {
    let mut cmd = Command::new(cli());
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("WEBHOOK_SECRET_KEYS")
        .env_remove("WEBHOOK_URL_POLICY")
        .env_remove("WEBHOOK_SIGNATURE_TOLERANCE_SECS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run agent-webhooks");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default())
        .expect("write stdin");
    drop(input);
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("wait");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// [`run`] for a command that must succeed.
#[track_caller]
fn run_ok(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Run {
    let out = run(args, env, stdin);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out
}

/// Every instant in text output has one form: RFC 3339 in UTC with milliseconds and `Z`
/// (`2026-12-04T18:30:00.123Z`), whichever command prints it.
fn assert_output_instant(text: &str) {
    assert!(
        text.len() == 24
            && text.ends_with('Z')
            && text.as_bytes()[19] == b'.'
            && chrono::DateTime::parse_from_rfc3339(text).is_ok(),
        "not an instant of the form 2026-12-04T18:30:00.123Z: {text:?}"
    );
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn check_url_exit_codes_and_rules() {
    let ok = run(&["check-url", "https://hooks.example.com/a"], &[], None);
    assert_eq!((ok.code, ok.stdout.trim()), (Some(0), "ok"));
    for (url, rule) in [
        ("http://hooks.example.com/a", "scheme"),
        ("https://127.1/", "loopback"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://user:pw@example.com/", "userinfo"),
        ("https://localhost./", "local-name"),
        ("https://hooks.example.com:0/a", "port"),
        ("https://hooks..example.com/a", "host-name"),
    ] {
        let out = run(&["check-url", url], &[], None);
        assert_eq!(out.code, Some(1), "{url}");
        assert!(out.stderr.contains(rule), "{url}: {}", out.stderr);
        assert!(out.stdout.is_empty());
    }
    run_ok(
        &["check-url", "--development", "http://127.0.0.1:8080/hook"],
        &[],
        None,
    );
    assert_eq!(run(&["check-url"], &[], None).code, Some(2));
}

#[test]
fn a_bad_retry_schedule_stops_the_worker_in_one_line() {
    let bad = run(
        &["worker", "--once"],
        &[
            ("DATABASE_URL", "sqlite::memory:"),
            ("WEBHOOK_RETRY_SCHEDULE", "5s,5m,30"),
        ],
        None,
    );
    assert_eq!(bad.code, Some(1), "{}", bad.stdout);
    assert!(
        bad.stderr
            .contains("invalid WEBHOOK_RETRY_SCHEDULE: delay 3 `30` is not a duration")
            && bad.stderr.lines().count() == 1,
        "{}",
        bad.stderr
    );
}

#[test]
fn check_url_honours_webhook_url_policy_and_the_flag_overrides_it() {
    let url = "http://127.0.0.1:8080/hook";
    let by_env = run(
        &["check-url", url],
        &[("WEBHOOK_URL_POLICY", "development")],
        None,
    );
    assert_eq!(
        (by_env.code, by_env.stdout.trim()),
        (Some(0), "ok"),
        "{}",
        by_env.stderr
    );
    run_ok(
        &["check-url", "--development", url],
        &[("WEBHOOK_URL_POLICY", "production")],
        None,
    );
    let production = run(
        &["check-url", url],
        &[("WEBHOOK_URL_POLICY", "production")],
        None,
    );
    assert_eq!(production.code, Some(1));
    let bad = run(
        &["check-url", url],
        &[("WEBHOOK_URL_POLICY", "staging")],
        None,
    );
    assert_eq!(bad.code, Some(1));
    assert!(
        bad.stderr.contains("invalid WEBHOOK_URL_POLICY") && bad.stderr.lines().count() == 1,
        "{}",
        bad.stderr
    );
}

#[test]
fn verify_tolerance_defaults_to_webhook_signature_tolerance_secs() {
    let env = [("SIGNING_SECRET", SPEC_SECRET)];
    let body = br#"{"test": 1}"#;
    let sent_at = 1_700_000_000_i64;
    let message = [
        "--secret-env",
        "SIGNING_SECRET",
        "--id",
        "msg_1",
        "--timestamp",
        "1700000000",
    ];
    let signed = run_ok(&[&["sign"][..], &message].concat(), &env, Some(body));
    let signature = signed.stdout.trim().to_owned();
    // Received 100 s after it was sent.
    let now = (sent_at + 100).to_string();
    let verify = |tolerance_env: Option<&str>, flag: &[&str]| {
        let mut env = env.to_vec();
        if let Some(secs) = tolerance_env {
            env.push(("WEBHOOK_SIGNATURE_TOLERANCE_SECS", secs));
        }
        let args = [
            &["verify", "--signature", &signature, "--now", &now][..],
            &message,
            flag,
        ]
        .concat();
        run(&args, &env, Some(body))
    };
    let default = verify(None, &[]);
    assert_eq!(default.code, Some(0), "{}", default.stderr);
    let strict = verify(Some("60"), &[]);
    assert_eq!(strict.code, Some(1));
    assert!(
        strict.stderr.contains("too old (100 s)"),
        "{}",
        strict.stderr
    );
    let overridden = verify(Some("60"), &["--tolerance", "200"]);
    assert_eq!(overridden.code, Some(0), "{}", overridden.stderr);
    let flag_only = verify(None, &["--tolerance", "99"]);
    assert_eq!(flag_only.code, Some(1), "{}", flag_only.stderr);
}

#[test]
fn errors_never_show_the_database_password() {
    // A URL the driver cannot parse, which it quotes in its error.
    let url = "postgres://ops:hunter2@127.0.0.1:notaport/webhooks";
    let out = run(
        &["deliveries", "stats", "--agent", "a"],
        &[("DATABASE_URL", url)],
        None,
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("cannot connect to the database"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    // Passwords that make the URL unparseable, also with every log line on.
    for url in [
        "postgres://ops:hun/ter2@127.0.0.1:5432/db",
        "postgres://ops:hun#ter2@127.0.0.1:5432/db",
        "postgres://ops:hunter2@127.0.0.1:99999/db",
        "mysql://ops:hun/ter2@127.0.0.1:99999/db",
    ] {
        let out = run(
            &["deliveries", "stats", "--agent", "a"],
            &[("DATABASE_URL", url), ("AGENT_WEBHOOKS_LOG", "trace")],
            None,
        );
        assert_eq!(out.code, Some(1), "{url}");
        assert!(!out.stderr.contains("ter2"), "{}", out.stderr);
        assert!(out.stderr.contains("ops:***@127.0.0.1"), "{}", out.stderr);
    }
    let help = run(&["deliveries", "--help"], &[("DATABASE_URL", url)], None);
    assert!(!help.stdout.contains("hunter2"), "{}", help.stdout);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["check-url", "a", "--nope"][..],
        &["frobnicate"],
        &["deliveries", "stats"],
        &[
            "verify",
            "--secret-env",
            "S",
            "--id",
            "m",
            "--timestamp",
            "1",
            "--signature",
            "v1,x",
            "--tolerance",
            "soon",
        ],
    ] {
        let out = run(args, &[], Some(b""));
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn sign_and_verify_the_specification_example() {
    let env = [("SIGNING_SECRET", SPEC_SECRET)];
    let body = br#"{"test": 2432232314}"#;
    let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    let signed = run_ok(
        &[
            "sign",
            "--secret-env",
            "SIGNING_SECRET",
            "--id",
            id,
            "--timestamp",
            "1614265330",
        ],
        &env,
        Some(body),
    );
    assert_eq!(
        signed.stdout.trim(),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
    let signature = signed.stdout.trim().to_owned();
    let verify = |body: &[u8], now: &str| {
        run(
            &[
                "verify",
                "--secret-env",
                "SIGNING_SECRET",
                "--id",
                id,
                "--timestamp",
                "1614265330",
                "--signature",
                &signature,
                "--now",
                now,
            ],
            &env,
            Some(body),
        )
    };
    let ok = verify(body, "1614265330");
    assert_eq!((ok.code, ok.stdout.trim()), (Some(0), "ok"));
    let tampered = verify(br#"{"test": 2432232315}"#, "1614265330");
    assert_eq!(tampered.code, Some(1));
    assert!(
        tampered.stderr.contains("no matching signature"),
        "{}",
        tampered.stderr
    );
    let late = verify(body, "1614265931");
    assert_eq!(late.code, Some(1));
    assert!(late.stderr.contains("too old"), "{}", late.stderr);
    let missing = run(
        &[
            "sign",
            "--secret-env",
            "UNSET_VAR",
            "--id",
            "m",
            "--timestamp",
            "1",
        ],
        &[],
        Some(b""),
    );
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("UNSET_VAR is not set"));
}

#[test]
fn generate_key_prints_a_usable_entry() {
    let out = run(&["secrets", "generate-key", "--key-id", "k7"], &[], None);
    assert_eq!(out.code, Some(0));
    let ring = KeyRing::parse(out.stdout.trim()).expect("a valid key entry");
    assert_eq!(ring.current_key_id(), "k7");
    assert_eq!(
        run(
            &["secrets", "generate-key", "--key-id", "bad id"],
            &[],
            None
        )
        .code,
        Some(2),
        "a bad key id is a usage error"
    );
}

async fn config_commands(backend: Backend) {
    let t = TestDb::fresh(backend).await;
    Migrator::up(&t.db, None).await.unwrap();
    seed_agent(&t, "agent-1", &[]).await;
    let k1 = KeyRing::generate_key_entry("k1").unwrap();
    let user_secret = "a user secret that is long enough";
    let env = [
        ("DATABASE_URL", t.url.as_str()),
        ("WEBHOOK_SECRET_KEYS", k1.as_str()),
        ("HOOK_SECRET", user_secret),
    ];

    let set = run_ok(
        &[
            "config",
            "set",
            "--agent",
            "agent-1",
            "--url",
            "https://hooks.example.com/a",
            "--events",
            "run.*,agent.created",
            "--secret-env",
            "HOOK_SECRET",
        ],
        &env,
        None,
    );
    assert!(!set.stdout.contains(user_secret) && !set.stderr.contains(user_secret));

    let show = run_ok(
        &["config", "show", "--agent", "agent-1", "--json"],
        &env,
        None,
    );
    let view = json(&show.stdout);
    assert_eq!(view["has_secret"], true);
    assert_eq!(
        view["webhook_events"],
        serde_json::json!(["run.*", "agent.created"])
    );
    assert!(!show.stdout.contains(user_secret));

    // A generated secret is printed once, on stdout.
    let generated = run_ok(
        &[
            "config",
            "set",
            "--agent",
            "agent-1",
            "--url",
            "https://hooks.example.com/b",
            "--generate-secret",
        ],
        &env,
        None,
    );
    let secret_line = generated
        .stdout
        .lines()
        .find(|l| l.starts_with("whsec_"))
        .expect("the generated secret")
        .to_owned();
    let again = run(&["config", "show", "--agent", "agent-1"], &env, None);
    assert!(!again.stdout.contains(&secret_line) && again.stdout.contains("secret: set"));

    // Rotation to a new key.
    let k2 = KeyRing::generate_key_entry("k2").unwrap();
    let both = format!("{k2},{k1}");
    let rotate = run_ok(
        &["secrets", "rotate", "--json"],
        &[("DATABASE_URL", &t.url), ("WEBHOOK_SECRET_KEYS", &both)],
        None,
    );
    let report = json(&rotate.stdout);
    assert_eq!(
        (report["examined"].as_u64(), report["resealed"].as_u64()),
        (Some(1), Some(1))
    );
    let again = run_ok(
        &["secrets", "rotate"],
        &[("DATABASE_URL", &t.url), ("WEBHOOK_SECRET_KEYS", &both)],
        None,
    );
    assert_eq!(again.stdout, "examined 1, re-sealed 0, already current 1\n");
    assert!(
        again.stderr.is_empty(),
        "no progress off a terminal: {}",
        again.stderr
    );

    // A key whose id matches but whose bytes do not: an error naming the key, not success.
    let wrong_k2 = KeyRing::generate_key_entry("k2").unwrap();
    let wrong = run(
        &["secrets", "rotate"],
        &[("DATABASE_URL", &t.url), ("WEBHOOK_SECRET_KEYS", &wrong_k2)],
        None,
    );
    assert_eq!(wrong.code, Some(1), "{}", wrong.stdout);
    assert!(
        wrong.stderr.contains("key `k2` does not open") && wrong.stdout.is_empty(),
        "{}",
        wrong.stderr
    );

    // Errors: bad URL, no key, unknown agent; secrets on argv are not accepted at all.
    let bad = run(
        &[
            "config",
            "set",
            "--agent",
            "agent-1",
            "--url",
            "https://10.0.0.1/",
        ],
        &env,
        None,
    );
    assert_eq!(bad.code, Some(1));
    assert!(bad.stderr.contains("private"), "{}", bad.stderr);
    let no_key = run(
        &[
            "config",
            "set",
            "--agent",
            "agent-1",
            "--url",
            "https://hooks.example.com/a",
            "--secret-env",
            "HOOK_SECRET",
        ],
        &[("DATABASE_URL", &t.url), ("HOOK_SECRET", user_secret)],
        None,
    );
    assert_eq!(no_key.code, Some(1));
    assert!(
        no_key.stderr.contains("no encryption key"),
        "{}",
        no_key.stderr
    );
    let unknown = run(&["config", "show", "--agent", "agent-404"], &env, None);
    assert_eq!(unknown.code, Some(1));
    assert!(unknown.stderr.contains("agent `agent-404` not found"));
    let on_argv = run(
        &[
            "config",
            "set",
            "--agent",
            "a",
            "--url",
            "https://x.example",
            "--secret",
            "s",
        ],
        &env,
        None,
    );
    assert_eq!(on_argv.code, Some(2));

    let disable = run(
        &["config", "disable", "--agent", "agent-1", "--json"],
        &env,
        None,
    );
    assert_eq!(json(&disable.stdout)["webhook_enabled"], false);
    let clear = run(
        &["config", "clear", "--agent", "agent-1", "--json"],
        &env,
        None,
    );
    let view = json(&clear.stdout);
    assert_eq!(view["has_secret"], false);
    assert!(view["webhook_url"].is_null());
}

async fn deliveries_commands(backend: Backend) {
    let t = TestDb::fresh(backend).await;
    Migrator::up(&t.db, None).await.unwrap();
    seed_agent(&t, "agent-1", &[]).await;
    let now = chrono::Utc::now();
    let mut ids = Vec::new();
    for i in 0..3 {
        match delivery::enqueue(
            &t.db,
            &WebhookSettings::default(),
            "agent-1",
            &format!("evt-{i}"),
            "run.completed",
            &json!({"n": 1}),
            now,
        )
        .await
        .unwrap()
        {
            Enqueued::Created(d) => ids.push(d.id),
            other => panic!("{other:?}"),
        }
    }
    let env = [("DATABASE_URL", t.url.as_str())];

    let list = run_ok(
        &[
            "deliveries",
            "list",
            "--agent",
            "agent-1",
            "--json",
            "--limit",
            "2",
        ],
        &env,
        None,
    );
    let page = json(&list.stdout);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let rest = run(
        &[
            "deliveries",
            "list",
            "--agent",
            "agent-1",
            "--json",
            "--limit",
            "2",
            "--cursor",
            &cursor,
        ],
        &env,
        None,
    );
    let rest = json(&rest.stdout);
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());

    let pending = run(
        &[
            "deliveries",
            "list",
            "--agent",
            "agent-1",
            "--state",
            "pending",
        ],
        &env,
        None,
    );
    assert_eq!(
        pending
            .stdout
            .lines()
            .filter(|l| l.contains("pending"))
            .count(),
        3
    );
    let bad_state = run(
        &[
            "deliveries",
            "list",
            "--agent",
            "agent-1",
            "--state",
            "lost",
        ],
        &env,
        None,
    );
    assert_eq!(bad_state.code, Some(2), "a usage error");
    assert!(
        bad_state
            .stderr
            .contains("[possible values: pending, leased, delivered, failed]"),
        "{}",
        bad_state.stderr
    );

    // The text page: a header and aligned columns, then the cursor line.
    let table = run_ok(
        &["deliveries", "list", "--agent", "agent-1", "--limit", "2"],
        &env,
        None,
    );
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", table.stdout);
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATE"),
        "{}",
        table.stdout
    );
    let state_column = lines[0].find("STATE").unwrap();
    for row in &lines[1..3] {
        assert_eq!(row.find("pending"), Some(state_column), "{}", table.stdout);
        assert_output_instant(row.split_whitespace().nth(1).unwrap());
    }
    assert!(
        lines[3].starts_with("next page: --cursor "),
        "{}",
        table.stdout
    );

    let show = run(&["deliveries", "show", &ids[0], "--json"], &env, None);
    let shown = json(&show.stdout);
    assert_eq!(shown["id"].as_str(), Some(ids[0].as_str()));
    assert_eq!(shown["state"].as_str(), Some("pending"));
    // As text: one aligned `name: value` line per field, never `Debug` output.
    let text = run_ok(&["deliveries", "show", &ids[0]], &env, None);
    // Every field, the attempts as their count (their table follows when there are any).
    let fields = shown.as_object().unwrap();
    assert_eq!(shown["attempts"], serde_json::json!([]));
    let lines: Vec<(&str, usize, &str)> = text
        .stdout
        .lines()
        .map(|line| {
            let (name, rest) = line.split_once(": ").expect("a `name: value` line");
            let value = rest.trim_start();
            (name, line.len() - value.len(), value)
        })
        .collect();
    assert_eq!(lines.len(), fields.len(), "{}", text.stdout);
    for (name, column, value) in &lines {
        assert!(fields.contains_key(*name), "{name}: {}", text.stdout);
        assert_eq!(*column, lines[0].1, "values aligned: {}", text.stdout);
        if let Some(expected) = fields[*name].as_str().filter(|_| !name.ends_with("_at")) {
            assert_eq!(*value, expected, "{name}");
        }
    }

    let stats = run(
        &["deliveries", "stats", "--agent", "agent-1", "--json"],
        &env,
        None,
    );
    assert_eq!(json(&stats.stdout)["pending"], 3);
    for command in ["list", "stats"] {
        let unknown = run(&["deliveries", command, "--agent", "agent-404"], &env, None);
        assert_eq!(unknown.code, Some(1), "{command}: {}", unknown.stdout);
        assert!(
            unknown.stderr.contains("agent `agent-404` not found") && unknown.stdout.is_empty(),
            "{command}: {}",
            unknown.stderr
        );
    }

    let requeue = run(&["deliveries", "requeue", &ids[0]], &env, None);
    assert_eq!(requeue.code, Some(1));
    assert!(
        requeue
            .stderr
            .contains("only failed deliveries can be requeued"),
        "{}",
        requeue.stderr
    );

    let prune = run_ok(
        &["deliveries", "prune", "--older-than", "30d", "--json"],
        &env,
        None,
    );
    assert_eq!(json(&prune.stdout)["deleted"], 0);
    // Not on a terminal: no progress drawn, one summary line.
    let summary = run_ok(
        &["deliveries", "prune", "--older-than", "1h 30m"],
        &env,
        None,
    );
    assert_eq!(summary.stdout.lines().count(), 1, "{}", summary.stdout);
    let cutoff = summary
        .stdout
        .trim_end()
        .strip_prefix("deleted 0 deliveries created before ")
        .unwrap_or_else(|| panic!("{}", summary.stdout));
    assert_output_instant(cutoff);
    assert!(summary.stderr.is_empty(), "{}", summary.stderr);
    for bad in ["soon", "30", "300000y", "99999999999999999999d"] {
        let out = run(&["deliveries", "prune", "--older-than", bad], &env, None);
        assert_eq!(out.code, Some(2), "{bad}: {}", out.stderr);
    }
    run_ok(
        &[
            "deliveries",
            "prune",
            "--older-than",
            "30d",
            "--pause",
            "10ms",
        ],
        &env,
        None,
    );
    for bad in ["2m", "1d", "fast"] {
        let out = run(
            &["deliveries", "prune", "--older-than", "30d", "--pause", bad],
            &env,
            None,
        );
        assert_eq!(out.code, Some(2), "{bad}: {}", out.stderr);
    }
}

/// One request as the test receiver got it.
#[derive(Clone, Debug)]
struct Received {
    /// The request line and headers, as sent.
    head: String,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.trim())
    }
}

type Requests = std::sync::Arc<std::sync::Mutex<Vec<Received>>>;

/// A minimal HTTP/1.1 receiver on loopback: answers every request with 204 after `delay` and
/// keeps the requests (the CLI tests have no web framework; one request per connection is
/// enough).
async fn receiver_with(delay: std::time::Duration) -> (Requests, u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Requests::default();
    let kept = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let received = loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&request[..end]).into_owned();
                    let len: usize = head
                        .to_ascii_lowercase()
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + len {
                        let body = request[end + 4..end + 4 + len].to_vec();
                        break Some(Received { head, body });
                    }
                };
                if let Some(received) = received {
                    kept.lock().unwrap().push(received);
                    tokio::time::sleep(delay).await;
                    let _ = socket
                        .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                }
            });
        }
    });
    (requests, port)
}

async fn receiver() -> (Requests, u16) {
    receiver_with(std::time::Duration::ZERO).await
}

fn bodies(requests: &Requests) -> Vec<Vec<u8>> {
    requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.body.clone())
        .collect()
}

async fn events_emit_then_worker_once(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    let (requests, port) = receiver().await;
    let k1 = KeyRing::generate_key_entry("k1").unwrap();
    let env = [
        ("DATABASE_URL", t.url.as_str()),
        ("WEBHOOK_SECRET_KEYS", k1.as_str()),
        ("WEBHOOK_URL_POLICY", "development"),
        ("HOOK_SECRET", SPEC_SECRET),
    ];
    let url = format!("http://127.0.0.1:{port}/hook");
    run_ok(
        &[
            "config",
            "set",
            "--agent",
            "agent-1",
            "--url",
            &url,
            "--secret-env",
            "HOOK_SECRET",
        ],
        &env,
        None,
    );

    let emit = |payload: &[u8]| {
        run(
            &[
                "events",
                "emit",
                "--agent",
                "agent-1",
                "--type",
                "run.completed",
                "--event-id",
                "evt_cli",
                "--payload-file",
                "-",
                "--json",
            ],
            &env,
            Some(payload),
        )
    };
    let first = emit(b"{ \"run\": \"r-1\" }");
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let first = json(&first.stdout);
    assert_eq!(first["status"], "created");
    let id = first["delivery_id"].as_str().unwrap().to_owned();
    let again = json(&emit(b"{}").stdout);
    assert_eq!(
        (again["status"].as_str(), again["delivery_id"].as_str()),
        (Some("existing"), Some(id.as_str()))
    );
    let bad = emit(b"not json");
    assert_eq!(bad.code, Some(1), "{}", bad.stdout);
    assert!(bad.stderr.contains("payload is not JSON"), "{}", bad.stderr);

    // With its per-attempt log lines on, into a pipe: no colour codes there. The start shows
    // the retry schedule in effect, here the last delay repeated up to WEBHOOK_MAX_ATTEMPTS.
    let logged = [
        &env[..],
        &[
            ("AGENT_WEBHOOKS_LOG", "info"),
            ("WEBHOOK_RETRY_SCHEDULE", "1s, 90s"),
            ("WEBHOOK_MAX_ATTEMPTS", "4"),
        ],
    ]
    .concat();
    let worker = run_ok(&["worker", "--once", "--json"], &logged, None);
    assert!(worker.stderr.contains("agent-1"), "{}", worker.stderr);
    assert!(
        worker.stderr.contains("retry schedule 1s,1m 30s,1m 30s ")
            && worker.stderr.contains("max_attempts=4"),
        "{}",
        worker.stderr
    );
    assert!(!worker.stderr.contains('\x1b'), "{:?}", worker.stderr);
    let report = json(&worker.stdout);
    assert_eq!(
        (report["attempts"].as_u64(), report["delivered"].as_u64()),
        (Some(1), Some(1))
    );
    // The body is the payload as emitted first, byte for byte.
    assert_eq!(bodies(&requests), vec![br#"{ "run": "r-1" }"#.to_vec()]);

    let show = run(&["deliveries", "show", &id, "--json"], &env, None);
    let show = json(&show.stdout);
    assert_eq!(show["state"], "delivered");
    assert_eq!(show["attempts"][0]["status_code"], 204);
    assert_eq!(show["attempts"][0]["error_class"], serde_json::Value::Null);
    let text = run(&["deliveries", "show", &id], &env, None);
    assert!(text.stdout.contains("204"), "{}", text.stdout);

    // Without --once the worker keeps polling, and stops on SIGTERM with its report.
    let mut worker = Command::new(cli())
        .args(["worker", "--json"])
        .envs(env)
        .env("WEBHOOK_POLL_INTERVAL_MS", "20")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    run_ok(
        &[
            "events",
            "emit",
            "--agent",
            "agent-1",
            "--type",
            "run.completed",
            "--payload-file",
            "-",
        ],
        &env,
        Some(b"[2]"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while requests.lock().unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the running worker sent nothing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let kill = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker ignored SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut worker.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(json(&out)["delivered"], 1, "{out}");
}

/// `signing …`: rotate prints the new secret once and keeps the old one for the grace period;
/// show never prints a secret; revoke, Ed25519 and prune; `sealing-keys` re-seals the new
/// envelopes too. Master-key and signing-secret rotation are different commands.
async fn signing_commands(backend: Backend) {
    let t = TestDb::fresh(backend).await;
    Migrator::up(&t.db, None).await.unwrap();
    seed_agent(&t, "agent-1", &[]).await;
    let k1 = KeyRing::generate_key_entry("k1").unwrap();
    let env = [
        ("DATABASE_URL", t.url.as_str()),
        ("WEBHOOK_SECRET_KEYS", k1.as_str()),
    ];
    let set = run_ok(
        &[
            "config",
            "set",
            "--agent",
            "agent-1",
            "--url",
            "https://hooks.example.com/a",
            "--generate-secret",
        ],
        &env,
        None,
    );
    let old = set
        .stdout
        .lines()
        .find(|l| l.starts_with("whsec_"))
        .unwrap()
        .to_owned();

    let rotate = run_ok(
        &["signing", "rotate", "--agent", "agent-1", "--grace", "1h"],
        &env,
        None,
    );
    let new = rotate.stdout.trim().to_owned();
    assert!(new.starts_with("whsec_") && new != old, "{}", rotate.stdout);
    assert!(
        rotate.stderr.contains("keeps signing until"),
        "{}",
        rotate.stderr
    );

    let show = run_ok(
        &["signing", "show", "--agent", "agent-1", "--json"],
        &env,
        None,
    );
    assert!(!show.stdout.contains(&new) && !show.stdout.contains(&old));
    let view = json(&show.stdout);
    let roles: Vec<&str> = view["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["primary", "previous"]);
    assert_eq!(view["keys"][0]["algorithm"], "hmac-sha256");
    assert!(view["keys"][1]["expires_at"].is_string());

    // Grace periods beyond 7 days are usage errors; an unknown agent is an error line.
    let long = run(
        &["signing", "rotate", "--agent", "agent-1", "--grace", "8d"],
        &env,
        None,
    );
    assert_eq!(long.code, Some(2), "{}", long.stderr);
    let nobody = run(&["signing", "rotate", "--agent", "nobody"], &env, None);
    assert_eq!(nobody.code, Some(1));
    assert_eq!(nobody.stderr.lines().count(), 1, "{}", nobody.stderr);

    let ed = run_ok(
        &[
            "signing",
            "generate-ed25519",
            "--agent",
            "agent-1",
            "--json",
        ],
        &env,
        None,
    );
    let public_key = json(&ed.stdout)["public_key"].as_str().unwrap().to_owned();
    assert!(public_key.starts_with("whpk_") && !ed.stdout.contains("whsk_"));

    let revoke = run_ok(
        &["signing", "revoke-previous", "--agent", "agent-1"],
        &env,
        None,
    );
    assert_eq!(revoke.stdout, "revoked 1 previous signing secret\n");
    let show = run_ok(&["signing", "show", "--agent", "agent-1"], &env, None);
    assert!(
        show.stdout.contains("hmac-sha256")
            && show.stdout.contains("ed25519")
            && show.stdout.contains(&public_key)
            && !show.stdout.contains("previous"),
        "{}",
        show.stdout
    );
    run_ok(&["signing", "prune"], &env, None);

    // Master-key rotation re-seals the primary secret and the Ed25519 private key.
    let k2 = KeyRing::generate_key_entry("k2").unwrap();
    let both = format!("{k2},{k1}");
    let reseal = run_ok(
        &["sealing-keys", "rotate", "--json"],
        &[("DATABASE_URL", &t.url), ("WEBHOOK_SECRET_KEYS", &both)],
        None,
    );
    let report = json(&reseal.stdout);
    assert_eq!(
        (report["examined"].as_u64(), report["resealed"].as_u64()),
        (Some(2), Some(2))
    );

    // `--json` rotation: the secret is in the one JSON document, once.
    let rotate = run_ok(
        &[
            "signing", "rotate", "--agent", "agent-1", "--grace", "0s", "--json",
        ],
        &[("DATABASE_URL", &t.url), ("WEBHOOK_SECRET_KEYS", &both)],
        None,
    );
    let rotated = json(&rotate.stdout);
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsec_"));
    assert!(rotated["previous"].is_null());
}

/// The agent `agent-1`, whose webhook posts to the receiver on `port` with `SPEC_SECRET`, and
/// `n` events enqueued for it: the environment a worker process needs and the delivery ids.
async fn queue(t: &TestDb, port: u16, n: usize) -> (Vec<(String, String)>, Vec<String>) {
    seed_agent(t, "agent-1", &[]).await;
    let k1 = KeyRing::generate_key_entry("k1").unwrap();
    let settings = WebhookSettings {
        url_policy: UrlPolicy::Development,
        keys: Some(KeyRing::parse(&k1).unwrap()),
        ..WebhookSettings::default()
    };
    let config = WebhookConfig {
        webhook_url: format!("http://127.0.0.1:{port}/hook"),
        webhook_secret: Some(SecretString::from(SPEC_SECRET)),
        webhook_events: vec![],
        webhook_enabled: true,
        webhook_ordered: false,
        webhook_filter: None,
    };
    webhook::configure(&t.db, &settings, "agent-1", &config)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let event = format!("evt_{i}");
        let payload = json!({"n": i, "text": "héllo"});
        let now = chrono::Utc::now();
        match delivery::enqueue(
            &t.db,
            &settings,
            "agent-1",
            &event,
            "run.completed",
            &payload,
            now,
        )
        .await
        .unwrap()
        {
            Enqueued::Created(d) => ids.push(d.id),
            other => panic!("{other:?}"),
        }
    }
    let env = [
        ("DATABASE_URL", t.url.as_str()),
        ("WEBHOOK_SECRET_KEYS", k1.as_str()),
        ("WEBHOOK_URL_POLICY", "development"),
        ("WEBHOOK_POLL_INTERVAL_MS", "50"),
    ];
    let env = env.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec();
    (env, ids)
}

/// Starts `agent-webhooks worker ARGS` with `env` (and nothing from the test's environment).
fn spawn_worker(env: &[(String, String)], args: &[&str]) -> std::process::Child {
    Command::new(cli())
        .arg("worker")
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("WEBHOOK_SECRET_KEYS")
        .env_remove("WEBHOOK_URL_POLICY")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agent-webhooks worker")
}

/// Waits for `child` to exit, up to `limit`; its status and stdout.
async fn wait_exit(child: &mut std::process::Child, limit: Duration) -> (i32, String) {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker did not exit within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    (status.code().unwrap(), out)
}

/// Polls `done` every 50 ms until it holds, for at most `limit`.
async fn wait_for<F: AsyncFn() -> bool>(what: &str, limit: Duration, done: F) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn delivered_count(t: &TestDb) -> i64 {
    let sql = "SELECT COUNT(*) FROM webhook_deliveries WHERE delivered_at IS NOT NULL";
    let row =
        t.db.query_one_raw(Statement::from_string(t.db.get_database_backend(), sql))
            .await
            .unwrap()
            .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// The books: every delivery is delivered, with exactly one successful attempt in its log.
async fn assert_delivered_once_in_the_books(t: &TestDb, ids: &[String]) {
    for id in ids {
        let delivery = delivery::get(&t.db, id, chrono::Utc::now()).await.unwrap();
        assert_eq!(delivery.state, DeliveryState::Delivered, "{id}");
        let attempts = delivery::attempts(&t.db, id).await.unwrap();
        let successes = attempts
            .iter()
            .filter(|a| a.status_code == Some(204))
            .count();
        assert_eq!(successes, 1, "{id}: {attempts:?}");
    }
}

/// The webhook-ids the receiver saw, with how often each came.
fn seen_ids(requests: &Requests) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for r in requests.lock().unwrap().iter() {
        *seen.entry(r.header("webhook-id").to_owned()).or_insert(0) += 1;
    }
    seen
}

/// A worker killed with SIGKILL while its receiver is slow (sends in flight, claims leased)
/// loses nothing: a new worker sends the rest once the leases run out; the receiver sees every
/// event at least once and the books have each delivery delivered once.
async fn killed_worker_loses_no_delivery(backend: Backend) {
    const EVENTS: usize = 24;
    let t = TestDb::migrated(backend).await;
    let (requests, port) = receiver_with(Duration::from_millis(500)).await;
    let (mut env, ids) = queue(&t, port, EVENTS).await;
    for (k, v) in [
        ("WEBHOOK_WORKER_CONCURRENCY", "4"),
        ("WEBHOOK_CLAIM_LEASE_SECS", "3"),
        ("WEBHOOK_REQUEST_TIMEOUT_SECS", "2"),
    ] {
        env.push((k.to_owned(), v.to_owned()));
    }
    let mut first = spawn_worker(&env, &[]);
    wait_for("the first sends", Duration::from_secs(30), async || {
        requests.lock().unwrap().len() >= 6
    })
    .await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let before = requests.lock().unwrap().len();
    assert!(before < EVENTS, "the worker was done before it was killed");

    let mut second = spawn_worker(&env, &["--json"]);
    wait_for(
        "every delivery delivered",
        Duration::from_secs(60),
        async || delivered_count(&t).await == EVENTS as i64,
    )
    .await;
    let term = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    wait_exit(&mut second, Duration::from_secs(20)).await;

    let seen = seen_ids(&requests);
    for i in 0..EVENTS {
        assert!(
            seen.contains_key(&format!("evt_{i}")),
            "evt_{i} never arrived"
        );
    }
    // The sends in flight at the kill were answered after the first worker died: sent again.
    assert!(
        seen.values().any(|&n| n > 1),
        "nothing was in flight at the kill: {seen:?}"
    );
    assert_delivered_once_in_the_books(&t, &ids).await;
}

/// Four worker processes drain one queue: every event arrives exactly once, each delivery has
/// one attempt, and the reference Python library `standardwebhooks` accepts every request.
async fn four_workers_drain_one_queue(backend: Backend) {
    const EVENTS: usize = 200;
    let t = TestDb::migrated(backend).await;
    let (requests, port) = receiver_with(Duration::from_millis(5)).await;
    let (mut env, ids) = queue(&t, port, EVENTS).await;
    env.push(("WEBHOOK_WORKER_CONCURRENCY".to_owned(), "8".to_owned()));
    let mut workers: Vec<_> = (0..4)
        .map(|_| spawn_worker(&env, &["--once", "--json"]))
        .collect();
    let mut attempts = Vec::new();
    for worker in &mut workers {
        let (_, out) = wait_exit(worker, Duration::from_secs(60)).await;
        let report = json(&out);
        assert_eq!(report["attempts"], report["delivered"], "{out}");
        attempts.push(report["attempts"].as_u64().unwrap());
    }
    assert_eq!(attempts.iter().sum::<u64>(), EVENTS as u64, "{attempts:?}");
    let seen = seen_ids(&requests);
    assert_eq!(seen.len(), EVENTS);
    assert!(seen.values().all(|&n| n == 1), "sent twice: {seen:?}");
    assert_delivered_once_in_the_books(&t, &ids).await;
    for id in &ids {
        assert_eq!(delivery::attempts(&t.db, id).await.unwrap().len(), 1);
    }
    python_verifies(&requests);
}

/// Every received request passes `standardwebhooks.Webhook(SPEC_SECRET).verify` in Python
/// (`scripts/standardwebhooks_compat.py`, as the compat tests run it).
fn python_verifies(requests: &Requests) {
    let cases: Vec<_> = requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            json!({
                "name": r.header("webhook-id"),
                "secret": SPEC_SECRET,
                "id": r.header("webhook-id"),
                "timestamp": r.header("webhook-timestamp").parse::<i64>().unwrap(),
                "body": String::from_utf8(r.body.clone()).unwrap(),
                "signature": r.header("webhook-signature"),
            })
        })
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = Command::new(integration_tests::python())
        .arg("scripts/standardwebhooks_compat.py")
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("Python with standardwebhooks (scripts/test installs it and sets TEST_PYTHON)");
    let input = serde_json::to_vec(&cases).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        cases.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_drain_one_queue_postgres() {
    four_workers_drain_one_queue(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_drain_one_queue_mysql() {
    four_workers_drain_one_queue(Backend::MySql).await;
}

/// A GET of `path` on loopback `port`; the whole response.
async fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    socket.read_to_string(&mut response).await?;
    Ok(response)
}

/// `worker --metrics-addr` serves the worker's counters for Prometheus on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_serves_metrics_for_prometheus() {
    let t = TestDb::migrated(Backend::Sqlite).await;
    let (requests, port) = receiver().await;
    let (env, _ids) = queue(&t, port, 2).await;
    // A second agent whose receiver refuses connections: one failed attempt, retried later.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    seed_agent(&t, "agent-2", &[]).await;
    let settings = WebhookSettings {
        url_policy: UrlPolicy::Development,
        keys: Some(KeyRing::parse(&env[1].1).unwrap()),
        ..WebhookSettings::default()
    };
    let config = WebhookConfig {
        webhook_url: format!("http://127.0.0.1:{closed}/hook"),
        webhook_secret: Some(SecretString::from(SPEC_SECRET)),
        webhook_events: vec![],
        webhook_enabled: true,
        webhook_ordered: false,
        webhook_filter: None,
    };
    webhook::configure(&t.db, &settings, "agent-2", &config)
        .await
        .unwrap();
    let payload = json!({});
    let now = chrono::Utc::now();
    delivery::enqueue(
        &t.db,
        &settings,
        "agent-2",
        "evt_x",
        "run.failed",
        &payload,
        now,
    )
    .await
    .unwrap();

    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{metrics_port}");
    let mut worker = spawn_worker(&env, &["--metrics-addr", &addr]);
    wait_for("two deliveries", Duration::from_secs(20), async || {
        requests.lock().unwrap().len() >= 2
    })
    .await;
    let wanted = [
        "agent_webhooks_sent_total 2",
        "agent_webhooks_failed_total{class=\"connect\"} 1",
        "agent_webhooks_retried_total 1",
        "agent_webhooks_in_flight 0",
        "agent_webhooks_claim_lag_seconds_count 3",
    ];
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !wanted.iter().all(|w| last.lines().any(|l| l == *w)) {
        assert!(Instant::now() < deadline, "missing {wanted:?} in:\n{last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = http_get(metrics_port, "/metrics").await.unwrap_or_default();
    }
    assert!(last.contains("# HELP agent_webhooks_sent_total"), "{last}");
    let term = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    wait_exit(&mut worker, Duration::from_secs(20)).await;
}

/// A worker whose key ring cannot open the stored secrets (none at all, or the right key id
/// with other bytes) does not start: one line, exit 1, nothing claimed or sent.
async fn worker_without_usable_keys_does_not_start(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let (requests, port) = receiver().await;
    let (env, ids) = queue(&t, port, 1).await;
    let wrong_bytes = KeyRing::generate_key_entry("k1").unwrap();
    for keys in [None, Some(wrong_bytes.as_str())] {
        let mut env: Vec<(&str, &str)> = env
            .iter()
            .filter(|(k, _)| k != "WEBHOOK_SECRET_KEYS")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend(keys.map(|keys| ("WEBHOOK_SECRET_KEYS", keys)));
        let worker = run(&["worker", "--once"], &env, None);
        assert_eq!(worker.code, Some(1), "{keys:?}: {}", worker.stderr);
        assert_eq!(worker.stderr.trim().lines().count(), 1, "{}", worker.stderr);
        assert!(
            worker.stderr.contains("WEBHOOK_SECRET_KEYS"),
            "{}",
            worker.stderr
        );
    }
    assert!(bodies(&requests).is_empty(), "nothing was sent");
    let attempts = t
        .count(&format!(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE id = '{}' AND attempt_count = 0",
            ids[0]
        ))
        .await;
    assert_eq!(attempts, 1, "nothing was claimed");
}

/// `config set --ordered` and `events emit --lane`: positions count per lane, `config show` and
/// `deliveries show` say so.
async fn ordered_lanes_from_the_cli(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    let k1 = KeyRing::generate_key_entry("k1").unwrap();
    let env = [
        ("DATABASE_URL", t.url.as_str()),
        ("WEBHOOK_SECRET_KEYS", k1.as_str()),
        ("HOOK_SECRET", SPEC_SECRET),
    ];
    let set = run_ok(
        &[
            "config",
            "set",
            "--agent",
            "agent-1",
            "--url",
            "https://hooks.example.com/a",
            "--secret-env",
            "HOOK_SECRET",
            "--ordered",
        ],
        &env,
        None,
    );
    assert!(set.stdout.contains("ordered: true"), "{}", set.stdout);
    let emit = |lane: &str, event: &str| {
        let out = run_ok(
            &[
                "events",
                "emit",
                "--agent",
                "agent-1",
                "--type",
                "run.step",
                "--event-id",
                event,
                "--lane",
                lane,
                "--payload-file",
                "-",
                "--json",
            ],
            &env,
            Some(b"{}"),
        );
        json(&out.stdout)["delivery_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    emit("run-1", "e1");
    emit("run-2", "e2");
    let second = emit("run-1", "e3");
    let show = json(&run(&["deliveries", "show", &second, "--json"], &env, None).stdout);
    assert_eq!(
        (show["lane"].as_str(), show["lane_seq"].as_i64()),
        (Some("run-1"), Some(2))
    );
    let bad = run(
        &[
            "events",
            "emit",
            "--agent",
            "agent-1",
            "--type",
            "run.step",
            "--lane",
            "",
            "--payload-file",
            "-",
        ],
        &env,
        Some(b"{}"),
    );
    assert_eq!(bad.code, Some(1), "{}", bad.stdout);
    assert!(bad.stderr.contains("webhook-lane"), "{}", bad.stderr);
}

/// `config set --filter-file` (a file or stdin), `config filter --file`/`--clear`, `config show`
/// printing it, a refused filter (exit 1, one line naming the place), and `config check-filter`:
/// one line, exit 0 when the event would be delivered, 1 with the rule when not.
async fn content_filter_commands(backend: Backend) {
    let t = TestDb::fresh(backend).await;
    Migrator::up(&t.db, None).await.unwrap();
    seed_agent(&t, "agent-1", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let env = [("DATABASE_URL", t.url.as_str())];
    let keep = file("keep.json", r#"{"kind": "keep"}"#);
    let set = run_ok(
        &[
            "config",
            "set",
            "--agent",
            "agent-1",
            "--url",
            "https://hooks.example.com/a",
            "--filter-file",
            &keep,
        ],
        &env,
        None,
    );
    assert!(
        set.stdout.contains(r#"content filter: {"kind":"keep"}"#),
        "{}",
        set.stdout
    );

    let check = |payload: &str, event_type: &str| {
        let payload = file("payload.json", payload);
        run(
            &[
                "config",
                "check-filter",
                "--agent",
                "agent-1",
                "--event-type",
                event_type,
                "--payload-file",
                &payload,
            ],
            &env,
            None,
        )
    };
    let yes = check(r#"{"kind": "keep"}"#, "run.completed");
    assert_eq!(
        (yes.code, yes.stdout.as_str()),
        (Some(0), "would deliver\n"),
        "{}",
        yes.stderr
    );
    let no = check(r#"{"kind": "drop"}"#, "run.completed");
    assert_eq!(no.code, Some(1));
    assert_eq!(no.stdout, "");
    assert_eq!(no.stderr.lines().count(), 1, "{}", no.stderr);
    assert!(
        no.stderr.contains(
            "would not deliver (filtered): the payload does not match the agent's content \
             filter; clause `kind` does not hold"
        ),
        "{}",
        no.stderr
    );

    // From stdin, refused: one line naming the place and the rule, nothing changed.
    let bad = run(
        &["config", "filter", "--agent", "agent-1", "--file", "-"],
        &env,
        Some(br#"{"$or": [{"a": 1}, {"b": {"$gt": null}}]}"#),
    );
    assert_eq!(bad.code, Some(1));
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("invalid webhook_filter: at `$or[1].b`: `$gt` needs a number or a string"),
        "{}",
        bad.stderr
    );
    let show = run(
        &["config", "show", "--agent", "agent-1", "--json"],
        &env,
        None,
    );
    assert_eq!(
        json(&show.stdout)["webhook_filter"],
        serde_json::json!({"kind": "keep"})
    );

    let clear = run_ok(
        &["config", "filter", "--agent", "agent-1", "--clear"],
        &env,
        None,
    );
    assert!(
        clear.stdout.contains("content filter: none"),
        "{}",
        clear.stdout
    );
    let now_yes = check(r#"{"kind": "drop"}"#, "run.completed");
    assert_eq!(now_yes.code, Some(0), "{}", now_yes.stderr);

    // Neither --file nor --clear, or both: usage errors.
    let neither = run(&["config", "filter", "--agent", "agent-1"], &env, None);
    assert_eq!(neither.code, Some(2), "{}", neither.stderr);
    let both = run(
        &[
            "config", "filter", "--agent", "agent-1", "--clear", "--file", &keep,
        ],
        &env,
        None,
    );
    assert_eq!(both.code, Some(2), "{}", both.stderr);
}

backend_tests!(
    content_filter_commands,
    ordered_lanes_from_the_cli,
    worker_without_usable_keys_does_not_start,
    config_commands,
    deliveries_commands,
    events_emit_then_worker_once,
    signing_commands,
    killed_worker_loses_no_delivery,
    config_show_says_when_and_why_the_worker_disabled_it
);

/// Runs `agent-webhooks ARGS` with stdout (or, with `stderr_closed`, stderr) a pipe whose
/// reader is gone before it starts, as after `| head -1` has read its line; its exit status
/// and the other stream.
fn run_into_closed_pipe(args: &[&str], env: &[(&str, &str)], stderr_closed: bool) -> Run {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let mut cmd = Command::new(cli());
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("WEBHOOK_SECRET_KEYS")
        .env_remove("WEBHOOK_URL_POLICY")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    if stderr_closed {
        cmd.stdout(Stdio::piped()).stderr(writer);
    } else {
        cmd.stdout(writer).stderr(Stdio::piped());
    }
    let out = cmd.output().expect("run agent-webhooks");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    for args in [
        &["check-url", "https://hooks.example.com/a"][..],
        &["sealing-keys", "generate-key", "--key-id", "k1"],
        &["check-url", "https://hooks.example.com/a", "--json"],
    ] {
        let out = run_into_closed_pipe(args, &[], false);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        assert!(out.stderr.is_empty(), "{args:?}: {}", out.stderr);
    }
    // Nor does a closed stderr turn the error line into a panic (status 101).
    let failed = run_into_closed_pipe(&["check-url", "http://hooks.example.com/a"], &[], true);
    assert_eq!(failed.code, Some(1));
}

/// A port nothing listens on: a listener's, closed again.
fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn a_refused_database_fails_at_once_naming_host_port_and_cause() {
    let port = refused_port();
    for scheme in ["postgres", "mysql"] {
        let url = format!("{scheme}://ops:hunter2@127.0.0.1:{port}/webhooks");
        let started = Instant::now();
        let out = run(
            &["deliveries", "stats", "--agent", "a"],
            &[("DATABASE_URL", &url)],
            None,
        );
        let took = started.elapsed();
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        assert!(took < Duration::from_secs(3), "{took:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(
            out.stderr.contains(&format!("127.0.0.1:{port}")) && out.stderr.contains("refused"),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    }
}

#[test]
fn passwords_with_url_characters_never_show() {
    let port = refused_port();
    for (url, secret) in [
        // A `?` ends the authority for a URL parser: the driver quotes the URL it cannot parse.
        (
            format!("postgres://ops:hun?ter2@127.0.0.1:{port}/db"),
            "ter2",
        ),
        (
            format!("postgres://ops:a?b#c/hun@ter2@127.0.0.1:{port}/db"),
            "ter2",
        ),
        // sqlx takes the password from the query too.
        (
            "postgres://ops@127.0.0.1:99999/db?password=hunter2".to_owned(),
            "hunter2",
        ),
        (
            "mysql://ops@127.0.0.1:99999/db?sslmode=disable&password=hunter2".to_owned(),
            "hunter2",
        ),
    ] {
        let out = run(
            &["deliveries", "stats", "--agent", "a"],
            &[("DATABASE_URL", &url), ("AGENT_WEBHOOKS_LOG", "trace")],
            None,
        );
        assert_eq!(out.code, Some(1), "{url}");
        assert!(!out.stderr.contains(secret), "{url}: {}", out.stderr);
    }
    // A short password masks itself, not every word that contains it.
    let url = "postgres://ops:none@127.0.0.1:99999/nonexistent";
    let out = run(
        &["deliveries", "stats", "--agent", "a"],
        &[("DATABASE_URL", url)],
        None,
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("ops:***@127.0.0.1:99999/nonexistent"),
        "{}",
        out.stderr
    );
}

/// SIGTERM while the worker is still connecting (here to a server that accepts and never
/// answers) stops it cleanly: exit 0 at once with an empty report, not death by the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_start_up_stops_the_worker_cleanly() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("postgres://ops:hunter2@127.0.0.1:{port}/db?sslmode=disable");
    let env = [("DATABASE_URL".to_owned(), url)];
    for (args, code) in [(&["--json"][..], 0), (&["--once"], 1)] {
        let mut worker = spawn_worker(&env, args);
        // Accepted: the worker is connecting, past its first milliseconds.
        let (socket, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
            .await
            .expect("the worker connects")
            .unwrap();
        let term = Command::new("kill")
            .args(["-TERM", &worker.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let started = Instant::now();
        let status = loop {
            if let Some(status) = worker.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "the worker ignored SIGTERM while connecting"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        drop(socket);
        let output = worker.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert_eq!(status.code(), Some(code), "{args:?}: {status:?} {stderr}");
        if code == 0 {
            assert_eq!(json(&stdout)["attempts"], 0, "{stdout}");
            assert!(stderr.is_empty(), "{stderr}");
        } else {
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.contains("stopped by a signal"), "{stderr}");
        }
    }
}

/// `config show` says when and why the worker disabled a webhook, and since when its attempts
/// fail.
async fn config_show_says_when_and_why_the_worker_disabled_it(backend: Backend) {
    use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
    let t = TestDb::migrated(backend).await;
    seed_agent(&t, "agent-1", &[]).await;
    let k1 = KeyRing::generate_key_entry("k1").unwrap();
    let env = [
        ("DATABASE_URL", t.url.as_str()),
        ("WEBHOOK_SECRET_KEYS", k1.as_str()),
    ];
    run_ok(
        &[
            "config",
            "set",
            "--agent",
            "agent-1",
            "--url",
            "https://hooks.example.com/a",
        ],
        &env,
        None,
    );
    let healthy = run(&["config", "show", "--agent", "agent-1"], &env, None);
    assert!(
        !healthy.stdout.contains("disabled by"),
        "{}",
        healthy.stdout
    );

    // What the worker's health rule writes.
    let at = |s: &str| -> sea_orm::Value {
        let t = chrono::DateTime::parse_from_rfc3339(s).unwrap();
        match backend {
            Backend::Sqlite => t
                .format(migration::SQLITE_TIMESTAMP_FORMAT)
                .to_string()
                .into(),
            _ => t.into(),
        }
    };
    let reason = "no successful delivery for 5 days";
    let update = Query::update()
        .table(Alias::new("agents"))
        .values([
            (Alias::new("webhook_enabled"), Expr::value(false)),
            (
                Alias::new("webhook_failing_since"),
                Expr::value(at("2026-11-15T10:00:00Z")),
            ),
            (
                Alias::new("webhook_disabled_at"),
                Expr::value(at("2026-11-20T10:00:01Z")),
            ),
            (Alias::new("webhook_disabled_reason"), Expr::value(reason)),
        ])
        .and_where(Expr::col(Alias::new("id")).eq("agent-1"))
        .to_owned();
    t.db.execute_raw(t.db.get_database_backend().build(&update))
        .await
        .unwrap();

    let show = run_ok(&["config", "show", "--agent", "agent-1"], &env, None);
    assert!(show.stdout.contains("enabled: false"), "{}", show.stdout);
    assert!(
        show.stdout.contains(&format!(
            "disabled by the worker: 2026-11-20T10:00:01.000Z ({reason})"
        )),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout
            .contains("failing since: 2026-11-15T10:00:00.000Z"),
        "{}",
        show.stdout
    );
}

/// Without `DATABASE_URL` every command uses the embedded SQLite file; one that writes says so
/// once, on stderr, before it starts; one that only reads says nothing when it succeeds and
/// names the default database in its one error line when it fails.
#[tokio::test]
async fn only_commands_that_write_announce_the_sqlite_default() {
    const NOTE: &str =
        "DATABASE_URL is not set: using the embedded SQLite database sqlite://webhooks.db?mode=rwc";
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/webhooks.db?mode=rwc", dir.path().display());
    let db = sea_orm::Database::connect(&db_url).await.unwrap();
    Migrator::up(&db, None).await.unwrap();
    db.execute_unprepared(
        "INSERT INTO organizations (id, name) VALUES ('org-1', 'Org'); \
         INSERT INTO agents (id, organization_id, name) VALUES ('agent-1', 'org-1', 'Agent')",
    )
    .await
    .unwrap();
    db.close().await.unwrap();
    let in_dir = |args: &[&str]| {
        let out = Command::new(cli())
            .current_dir(dir.path())
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("WEBHOOK_SECRET_KEYS")
            .output()
            .expect("run agent-webhooks");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };

    let show = in_dir(&["config", "show", "--agent", "agent-1"]);
    assert_eq!(show.code, Some(0), "{}", show.stderr);
    assert_eq!(show.stderr, "", "a read that succeeds says nothing");

    let missing = in_dir(&["deliveries", "list", "--agent", "agent-2"]);
    assert_eq!(missing.code, Some(1));
    assert_eq!(
        missing.stderr,
        "DATABASE_URL is not set: read the embedded SQLite database \
         sqlite://webhooks.db?mode=rwc: agent `agent-2` not found\n"
    );

    let prune = in_dir(&["signing", "prune"]);
    assert_eq!(prune.code, Some(0), "{}", prune.stderr);
    assert_eq!(prune.stderr, format!("{NOTE}\n"), "said once");
    assert_eq!(prune.stdout, "deleted 0 expired previous signing secrets\n");

    // Commands without a database say nothing about it.
    let keys = in_dir(&["sealing-keys", "generate-key", "--key-id", "k1"]);
    assert_eq!(keys.code, Some(0), "{}", keys.stderr);
    assert_eq!(keys.stderr, "");
}
