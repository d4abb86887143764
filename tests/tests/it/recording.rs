//! Arbitrary response bodies and error messages through the delivery records on every backend:
//! no database refuses any of them, and what is read back is exactly the documented sanitising
//! (a body excerpt as text or `base64:`; each NUL as U+FFFD, then cut on a character boundary).
//!
//! The cases come from proptest strategies drawn with the deterministic `TestRunner` (the
//! database calls are async, so they run in the tokio test rather than under `proptest!`),
//! plus hand-picked edge cases; a failure names its case and prints the input.

use std::collections::HashMap;

use agent_webhooks::delivery::retry::{AttemptOutcome, RetryPolicy};
use agent_webhooks::delivery::{
    self, AttemptRecord, EnqueueItem, Enqueued, ErrorClass, MAX_ERROR_LEN, RESPONSE_PREFIX_LEN,
};
use agent_webhooks::settings::WebhookSettings;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeDelta, Utc};
use integration_tests::{Backend, TestDb, backend_tests, seed_agent};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

/// Random cases per kind (bodies, messages) and backend, besides the edge cases.
const RANDOM_CASES: usize = 48;
/// Deliveries per `record_attempts` / `record_outcomes` call: several rows per statement, so a
/// row the database refuses would fail the others with it.
const BATCH: usize = 24;
/// What `record_attempts` allows a stored `response_body_prefix`.
const PREFIX_MAX: usize = RESPONSE_PREFIX_LEN * 4;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_764_000_000, 0).unwrap()
}

/// An input with the name a failure reports it by.
struct Case<T> {
    name: String,
    value: T,
}

/// Characters as an error message may hold them: any (proptest favours control characters and
/// NUL among them), plus more NUL, emoji (4 bytes, outside the BMP) and `é` (2 bytes).
fn text(chars: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    let char = prop_oneof![
        4 => any::<char>(),
        1 => Just('\0'),
        1 => proptest::char::range('\u{1F300}', '\u{1FAFF}'),
        1 => Just('é'),
    ];
    proptest::collection::vec(char, chars).prop_map(String::from_iter)
}

fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Any bytes: mostly not UTF-8.
        proptest::collection::vec(any::<u8>(), 0..3 * RESPONSE_PREFIX_LEN),
        // UTF-8 text, some past the limit with a character across it.
        text(0..1500).prop_map(String::into_bytes),
        // Text with one byte replaced: invalid UTF-8 (or a NUL) somewhere.
        (text(1..1500), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(text, at, byte)| {
            let mut bytes = text.into_bytes();
            let at = at.index(bytes.len());
            bytes[at] = byte;
            bytes
        }),
        // ASCII up to about the limit, then characters across it.
        (RESPONSE_PREFIX_LEN - 6..RESPONSE_PREFIX_LEN + 2, text(1..8))
            .prop_map(|(n, tail)| ("a".repeat(n) + &tail).into_bytes()),
    ]
}

fn message_strategy() -> impl Strategy<Value = String> {
    // The limits a message meets: as an attempt's message, as the delivery's
    // `connection failed: …` error, and as a raw `response_body_prefix`.
    let limits = prop::sample::select(vec![
        MAX_ERROR_LEN,
        MAX_ERROR_LEN - "connection failed: ".len(),
        PREFIX_MAX,
    ]);
    prop_oneof![
        text(0..64),
        // Up to 12,000 bytes: past every limit.
        text(400..3000),
        (limits, 0..10usize, text(1..8))
            .prop_map(|(limit, before, tail)| "a".repeat(limit - before) + &tail),
    ]
}

/// `n` values of `strategy` from `runner`, named by kind and number.
fn draw<S: Strategy>(
    runner: &mut TestRunner,
    strategy: &S,
    kind: &str,
    n: usize,
) -> Vec<Case<S::Value>> {
    (0..n)
        .map(|i| Case {
            name: format!("random {kind} #{i} of TestRunner::deterministic()"),
            value: strategy.new_tree(runner).expect("draw a value").current(),
        })
        .collect()
}

fn edge<T>(name: &str, value: T) -> Case<T> {
    Case {
        name: format!("edge case: {name}"),
        value,
    }
}

fn bodies(runner: &mut TestRunner) -> Vec<Case<Vec<u8>>> {
    let limit = RESPONSE_PREFIX_LEN;
    let mut cases = vec![
        edge("empty body", vec![]),
        edge("NUL", b"\0".to_vec()),
        edge("exactly the limit", vec![b'x'; limit]),
        edge("one byte past the limit", vec![b'x'; limit + 1]),
        edge(
            "é across the limit",
            ("a".repeat(limit - 1) + "é").into_bytes(),
        ),
        edge(
            "emoji across the limit",
            ("a".repeat(limit - 2) + "😀😀").into_bytes(),
        ),
        edge("5000 bytes of é", "é".repeat(2500).into_bytes()),
        edge(
            "gzip magic",
            vec![0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 0x03],
        ),
        edge("invalid UTF-8 inside", b"abc\xffdef".to_vec()),
        edge("a body ending in a cut character", b"abc\xe2\x82".to_vec()),
        edge("NUL past the limit", {
            let mut body = vec![b'x'; limit];
            body.extend_from_slice(b"\0tail");
            body
        }),
        edge(
            "a truncated sequence at the limit, invalid after it",
            [vec![b'a'; limit - 1], vec![0xe2, 0xff, b'z']].concat(),
        ),
    ];
    cases.extend(draw(runner, &body_strategy(), "body", RANDOM_CASES));
    cases
}

fn messages(runner: &mut TestRunner) -> Vec<Case<String>> {
    let mut cases = vec![
        edge("empty message", String::new()),
        edge("NUL", "\0".into()),
        edge("3000 NULs", "\0".repeat(3000)),
        edge(
            "control characters",
            "\x01\x07\x08\x1b[31m\r\n\t\x0b\x0c\x7f\u{85}".into(),
        ),
        edge("5000 bytes of é", "é".repeat(2500)),
        edge("emoji past every limit", "😀".repeat(1100)),
        edge("é across 2000 bytes", "x".repeat(MAX_ERROR_LEN - 1) + "é"),
        edge("exactly 2000 bytes", "x".repeat(MAX_ERROR_LEN)),
        edge("NUL at 2000 bytes", "x".repeat(MAX_ERROR_LEN - 1) + "\0"),
        edge("4097 bytes", "x".repeat(PREFIX_MAX + 1)),
        edge(
            "non-characters",
            "\u{FFFE}\u{FFFF}\u{10FFFF}\u{FEFF}".into(),
        ),
    ];
    cases.extend(draw(runner, &message_strategy(), "message", RANDOM_CASES));
    cases
}

/// The documented storable form of text: each NUL as U+FFFD, then the whole characters that fit
/// in `max` bytes.
fn storable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = if c == '\0' { '\u{FFFD}' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// The start of a UTF-8 character and nothing else: what the limit can cut off.
fn cut_char(tail: &[u8]) -> bool {
    !tail.is_empty()
        && matches!(std::str::from_utf8(tail), Err(e) if e.valid_up_to() == 0 && e.error_len().is_none())
}

/// The documented text form of a body's excerpt: its first [`RESPONSE_PREFIX_LEN`] bytes when
/// they are UTF-8 (but for a character the limit cuts) without a NUL; `None` when they are not.
fn text_form(body: &[u8]) -> Option<&str> {
    let kept = &body[..body.len().min(RESPONSE_PREFIX_LEN)];
    let cut_allowed = body.len() > kept.len();
    (0..kept.len().min(3) + 1)
        .filter(|cut| *cut == 0 || cut_allowed)
        .find_map(|cut| {
            let (head, tail) = kept.split_at(kept.len() - cut);
            let head = std::str::from_utf8(head).ok()?;
            (tail.is_empty() || cut_char(tail)).then_some(head)
        })
        .filter(|text| !text.contains('\0'))
}

/// What a reader gets back from a stored excerpt: the decoded bytes of `base64:…`, otherwise
/// the text's bytes.
fn decoded(stored: &str) -> Vec<u8> {
    match stored.strip_prefix("base64:") {
        Some(encoded) => STANDARD
            .decode(encoded)
            .unwrap_or_else(|e| panic!("stored {stored:?} is not base64: {e}")),
        None => stored.as_bytes().to_vec(),
    }
}

/// The excerpt as documented, and the property a reader relies on: it gives back the start of
/// the body (all of the first [`RESPONSE_PREFIX_LEN`] bytes when base64).
fn check_excerpt(case: &Case<Vec<u8>>, excerpt: &Option<String>) {
    let body = &case.value;
    let kept = &body[..body.len().min(RESPONSE_PREFIX_LEN)];
    let what = || format!("{}: body {body:?}", case.name);
    let expected = (!body.is_empty()).then(|| match text_form(body) {
        Some(text) => text.to_owned(),
        None => format!("base64:{}", STANDARD.encode(kept)),
    });
    assert_eq!(excerpt, &expected, "{}", what());
    let Some(excerpt) = excerpt else { return };
    let back = decoded(excerpt);
    if excerpt.starts_with("base64:") {
        assert_eq!(back, kept, "{}", what());
    } else {
        assert!(body.starts_with(&back), "{}", what());
        assert!(
            back.len() == kept.len() || cut_char(&kept[back.len()..]),
            "{}",
            what()
        );
    }
}

async fn arbitrary_text_is_stored_as_documented(backend: Backend) {
    let t = TestDb::migrated(backend).await;
    let s = WebhookSettings {
        retry: RetryPolicy {
            schedule: vec![std::time::Duration::from_secs(3600)],
            max_attempts: 3,
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        ..WebhookSettings::default()
    };
    seed_agent(&t, "a1", &[]).await;
    let mut runner = TestRunner::deterministic();
    let bodies = bodies(&mut runner);
    let messages = messages(&mut runner);
    let n = bodies.len().max(messages.len());
    // Delivery i carries body i and message i (the shorter list starts over).
    let body = |i: usize| &bodies[i % bodies.len()];
    let message = |i: usize| &messages[i % messages.len()];

    let payload = serde_json::json!({});
    let events: Vec<String> = (0..n).map(|i| format!("evt-{i}")).collect();
    let items: Vec<EnqueueItem<'_>> = events
        .iter()
        .map(|event_id| EnqueueItem {
            agent_id: "a1",
            event_id,
            event_type: "run.completed",
            payload: (&payload).into(),
            lane: None,
        })
        .collect();
    let ids: Vec<String> = delivery::enqueue_many(&t.db, &s, &items, t0())
        .await
        .unwrap()
        .into_iter()
        .map(|enqueued| match enqueued {
            Enqueued::Created(d) => d.id,
            other => panic!("not created: {other:?}"),
        })
        .collect();

    // Per delivery: an answered attempt with the message and the body's excerpt, and a failed
    // one with the message given as a raw response prefix.
    let excerpts: Vec<Option<String>> = (0..n)
        .map(|i| delivery::body_excerpt(&body(i).value))
        .collect();
    for case in &bodies {
        check_excerpt(case, &delivery::body_excerpt(&case.value));
    }
    let records: Vec<[AttemptRecord; 2]> = (0..n)
        .map(|i| {
            let answered = AttemptRecord {
                attempt: 1,
                started_at: t0(),
                finished_at: t0() + TimeDelta::seconds(1),
                status_code: Some(502),
                error_class: Some(ErrorClass::HttpStatus),
                message: Some(message(i).value.clone()),
                response_body_prefix: excerpts[i].clone(),
                remote_addr: Some("203.0.113.7:443".to_owned()),
            };
            let failed = AttemptRecord {
                attempt: 2,
                started_at: t0() + TimeDelta::hours(1),
                finished_at: t0() + TimeDelta::hours(1),
                status_code: None,
                error_class: Some(ErrorClass::Connect),
                message: None,
                response_body_prefix: Some(message(i).value.clone()),
                remote_addr: None,
            };
            [answered, failed]
        })
        .collect();
    for chunk in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        let rows = chunk
            .iter()
            .flat_map(|&i| records[i].iter().map(move |r| (i, r)));
        let batch = rows.clone().map(|(i, r)| (ids[i].as_str(), r));
        if let Err(err) = delivery::record_attempts(&t.db, batch).await {
            for (i, record) in rows {
                if let Err(e) = delivery::record_attempts(&t.db, [(ids[i].as_str(), record)]).await
                {
                    panic!(
                        "{backend:?}: attempt {} refused ({e}); {} / {}",
                        record.attempt,
                        describe(body(i)),
                        describe(message(i))
                    );
                }
            }
            panic!("{backend:?}: a batch of attempts was refused ({err}), yet no row alone");
        }
    }

    // The delivery's own error, from `record_outcomes` in batches.
    let claims = delivery::claim_due(&t.db, &s, t0(), n as u64)
        .await
        .unwrap();
    assert_eq!(claims.len(), n);
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let outcomes: Vec<(usize, AttemptOutcome)> = claims
        .iter()
        .map(|claim| {
            let i = index[claim.delivery.id.as_str()];
            (i, AttemptOutcome::Connection(message(i).value.clone()))
        })
        .collect();
    for (claims, outcomes) in claims.chunks(BATCH).zip(outcomes.chunks(BATCH)) {
        let batch = claims
            .iter()
            .zip(outcomes)
            .map(|(claim, (_, outcome))| (claim, outcome, t0()));
        let results = delivery::record_outcomes(&t.db, &s, batch)
            .await
            .unwrap_or_else(|e| panic!("{backend:?}: a batch of outcomes was refused: {e}"));
        for (result, (i, _)) in results.iter().zip(outcomes) {
            assert!(
                result.is_ok(),
                "{backend:?}: {result:?}; {}",
                describe(message(*i))
            );
        }
    }

    for i in 0..n {
        let (body, message) = (body(i), message(i));
        let what = || format!("{backend:?}: {} / {}", describe(body), describe(message));
        let stored = delivery::attempts(&t.db, &ids[i]).await.unwrap();
        let [mut answered, mut failed] = records[i].clone();
        answered.message = Some(storable(&message.value, MAX_ERROR_LEN));
        // The excerpt is storable as it is: at most 1,024 bytes of text without a NUL, or base64.
        assert_eq!(
            excerpts[i].as_deref().map(|e| storable(e, PREFIX_MAX)),
            excerpts[i],
            "{}",
            what()
        );
        failed.response_body_prefix = Some(storable(&message.value, PREFIX_MAX));
        assert_eq!(stored, [answered, failed], "{}", what());
        check_excerpt(body, &stored[0].response_body_prefix);

        let delivery = delivery::get(&t.db, &ids[i], t0()).await.unwrap();
        let error = format!("connection failed: {}", message.value);
        assert_eq!(
            delivery.error_message,
            Some(storable(&error, MAX_ERROR_LEN)),
            "{}",
            what()
        );
    }
}

/// A case's name and input, for a failure's message.
fn describe<T: std::fmt::Debug>(case: &Case<T>) -> String {
    format!("{}: {:?}", case.name, case.value)
}

backend_tests!(arbitrary_text_is_stored_as_documented);
