//! CPU-bound operations without a database (docs/benchmarks.md section 5): sealing and opening
//! secret envelopes, the URL policy check, signing a body; to show none is near a database
//! round trip.

use std::time::Instant;

use agent_webhooks::secrets::secret_box::KeyRing;
use agent_webhooks::secrets::signing;
use agent_webhooks::secrets::webhook_secret::WebhookSecret;
use agent_webhooks::webhook::url_policy::UrlPolicy;
use secrecy::SecretString;

use super::Report;

/// Operations per second of each, over `n` operations, on one thread.
pub(super) fn figures(report: &mut Report, n: usize) {
    let entry = KeyRing::generate_key_entry("k1").expect("key");
    let keys = KeyRing::parse(&entry).expect("ring");
    let secret = WebhookSecret::generate().expect("secret");
    let plain = SecretString::from(secret.expose().to_owned());
    let per_second = |start: Instant| n as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut sealed = String::new();
    for i in 0..n {
        sealed = keys.seal(&plain, &format!("agent-{i}")).expect("seal");
    }
    let seal_rate = per_second(start);
    let start = Instant::now();
    for _ in 0..n {
        keys.open(&sealed, &format!("agent-{}", n - 1))
            .expect("open");
    }
    let open_rate = per_second(start);
    let urls = [
        "https://hooks.example.com/a",
        "https://127.1/",
        "https://[::ffff:10.0.0.1]/",
        "http://x.example/",
    ];
    let start = Instant::now();
    for i in 0..n {
        let _ = UrlPolicy::Production.check(urls[i % urls.len()]);
    }
    let policy_rate = per_second(start);
    let body = vec![b'x'; 1024];
    let start = Instant::now();
    for i in 0..n {
        signing::sign_one(&secret, &format!("msg_{i}"), 1_700_000_000, &body).expect("sign");
    }
    let sign_rate = per_second(start);
    report.push(
        "-",
        "cpu",
        "secret envelope seal".to_owned(),
        seal_rate,
        "ops/s",
    );
    report.push(
        "-",
        "cpu",
        "secret envelope open".to_owned(),
        open_rate,
        "ops/s",
    );
    report.push(
        "-",
        "cpu",
        "URL policy check".to_owned(),
        policy_rate,
        "ops/s",
    );
    report.push("-", "cpu", "sign 1 KiB body".to_owned(), sign_rate, "ops/s");
}
