//! Our signatures against the reference Python library `standardwebhooks` (PyPI), through
//! `scripts/standardwebhooks_compat.py`: Python must accept what we sign, and we must accept
//! (and byte-for-byte reproduce) what Python signs.
//!
//! Needs Python with `standardwebhooks` (`scripts/test` installs it into its virtual environment
//! and names the interpreter in `TEST_PYTHON`); without them these tests fail with a message
//! saying so, rather than passing silently.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use agent_webhooks::secrets::signing::{self, DEFAULT_TOLERANCE};
use agent_webhooks::secrets::webhook_secret::WebhookSecret;
use secrecy::SecretString;
use serde_json::{Value, json};

const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SPEC_TS: i64 = 1_614_265_330;
const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

/// The workspace root: the parent of this crate.
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the script with `args`, `cases` on standard input; panics with a clear message when
/// python3 or the package is missing.
fn run_script(args: &[&str], cases: &Value) -> Output {
    run_python_script("standardwebhooks_compat.py", args, cases)
}

/// Runs `scripts/<name>` with `args`, `cases` on standard input; panics with a clear message
/// when python3 or the package the script needs (exit status 3) is missing.
pub(crate) fn run_python_script(name: &str, args: &[&str], cases: &Value) -> Output {
    let root = workspace_root();
    let script = PathBuf::from("scripts").join(name);
    assert!(
        root.join(&script).is_file(),
        "{} is missing",
        root.join(&script).display()
    );
    let python = integration_tests::python();
    let mut child = Command::new(&python)
        .arg(&script)
        .args(args)
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {python} ({e}): this test needs Python with the packages \
                 scripts/test installs (it sets TEST_PYTHON)"
            )
        });
    // The script exits early without reading when the package is missing, so a failed write
    // is reported after its exit status.
    let written = child
        .stdin
        .take()
        .unwrap()
        .write_all(cases.to_string().as_bytes());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(
        output.status.code(),
        Some(3),
        "a Python package {name} needs is missing (see scripts/test for the pinned versions): \
         {stderr}"
    );
    if let Err(e) = written {
        panic!("cannot write the cases to the script ({e}): {stderr}");
    }
    output
}

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(secs).unwrap()
}

fn secret(text: &str) -> WebhookSecret {
    WebhookSecret::parse(SecretString::from(text.to_owned())).unwrap()
}

/// `whsec_` secrets of several sizes, padded and unpadded, a generated one, and user secrets.
fn secrets() -> Vec<WebhookSecret> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    let key = |len: usize| (0..len).map(|i| (i * 37 + 11) as u8).collect::<Vec<u8>>();
    vec![
        secret(SPEC_SECRET),
        WebhookSecret::generate().unwrap(),
        secret(&format!("whsec_{}", STANDARD.encode(key(25)))),
        secret(&format!("whsec_{}", STANDARD_NO_PAD.encode(key(26)))),
        secret(&format!("whsec_{}", STANDARD_NO_PAD.encode(key(64)))),
        secret("a perfectly fine user secret"),
        secret(r##"~!"#$%&'()*+,-./ 0123456789:;<=>?@AZ[\]^_`az{|}"##),
    ]
}

fn bodies() -> Vec<String> {
    vec![
        SPEC_BODY.to_owned(),
        String::new(),
        "{\n  \"text\": \"h\u{e9}llo w\u{f6}rld \u{1f980}\",\n  \"n\": 1.5e3\n}\n".to_owned(),
        format!(r#"{{"blob":"{}"}}"#, "x.y ".repeat(3_000)),
    ]
}

fn case(name: String, secret: &WebhookSecret, id: &str, ts: i64, body: &str) -> Value {
    json!({ "name": name, "secret": secret.expose(), "id": id, "timestamp": ts, "body": body })
}

#[test]
fn python_accepts_our_signatures_and_rejects_altered_ones() {
    let now = now();
    let secrets = secrets();
    let mut cases = Vec::new();
    let mut expect = |mut case: Value, signature: &str, outcome: &str| {
        case["signature"] = json!(signature);
        case["expect"] = json!(outcome);
        cases.push(case);
    };
    for (i, s) in secrets.iter().enumerate() {
        for (j, body) in bodies().iter().enumerate() {
            let id = format!("evt_{i}_{j}");
            let signed = signing::sign_one(s, &id, now, body.as_bytes()).unwrap();
            let c = case(format!("secret{i}-body{j}"), s, &id, now, body);
            expect(c, &signed.webhook_signature, "accept");
        }
    }
    // Rotation: one header with two signatures; Python holding either secret accepts.
    let (old, new) = (&secrets[0], &secrets[1]);
    let rotated = signing::sign(&[new, old], "evt_rotation", now, b"{}").unwrap();
    assert_eq!(rotated.webhook_signature.split(' ').count(), 2);
    for (name, s) in [("rotation-old", old), ("rotation-new", new)] {
        let c = case(name.to_owned(), s, "evt_rotation", now, "{}");
        expect(c, &rotated.webhook_signature, "accept");
    }
    // And what Python must refuse, so that acceptance above means something.
    let signed = signing::sign_one(old, "evt_x", now, b"{\"a\":1}").unwrap();
    let sig = signed.webhook_signature.as_str();
    expect(
        case("altered-body".into(), old, "evt_x", now, "{\"a\":2}"),
        sig,
        "reject",
    );
    expect(
        case("altered-id".into(), old, "evt_y", now, "{\"a\":1}"),
        sig,
        "reject",
    );
    expect(
        case("wrong-secret".into(), new, "evt_x", now, "{\"a\":1}"),
        sig,
        "reject",
    );
    expect(
        case(
            "unknown-version-only".into(),
            old,
            "evt_x",
            now,
            "{\"a\":1}",
        ),
        &sig.replace("v1,", "v1a,"),
        "reject",
    );
    let stale = now - 600;
    let old_signed = signing::sign_one(old, "evt_x", stale, b"{\"a\":1}").unwrap();
    expect(
        case("ten-minutes-old".into(), old, "evt_x", stale, "{\"a\":1}"),
        &old_signed.webhook_signature,
        "reject",
    );

    let count = cases.len();
    let output = run_script(&[], &Value::Array(cases));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Python disagrees:\n{stdout}\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), count, "one line per case:\n{stdout}");
    assert!(lines.iter().all(|l| l.starts_with("ok ")), "{stdout}");
}

#[test]
fn we_accept_and_reproduce_python_signatures() {
    let now = now();
    let secrets = secrets();
    let mut cases = vec![case(
        "specification-example".into(),
        &secrets[0],
        SPEC_ID,
        SPEC_TS,
        SPEC_BODY,
    )];
    for (i, s) in secrets.iter().enumerate() {
        for (j, body) in bodies().iter().enumerate() {
            let name = format!("secret{i}-body{j}");
            cases.push(case(name, s, &format!("msg_{i}_{j}"), now, body));
        }
    }
    let count = cases.len();
    let output = run_script(&["--sign"], &Value::Array(cases));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python --sign failed: {stderr}");
    let signed: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(signed.len(), count);
    assert_eq!(signed[0]["signature"], SPEC_SIGNATURE);

    for c in &signed {
        let name = c["name"].as_str().unwrap();
        let s = secret(c["secret"].as_str().unwrap());
        let id = c["id"].as_str().unwrap();
        let ts = c["timestamp"].as_i64().unwrap();
        let body = c["body"].as_str().unwrap().as_bytes();
        let python_signature = c["signature"].as_str().unwrap();
        let ts_text = ts.to_string();
        let headers = signing::ReceivedHeaders {
            id,
            timestamp: &ts_text,
            signature: python_signature,
        };
        let verify_at = if ts == SPEC_TS { SPEC_TS } else { now };
        assert_eq!(
            signing::verify(&[&s], headers, body, verify_at, DEFAULT_TOLERANCE),
            Ok(()),
            "{name}"
        );
        let ours = signing::sign_one(&s, id, ts, body).unwrap();
        assert_eq!(ours.webhook_signature, python_signature, "{name}");
        // And a Python signature over another body does not verify here.
        assert_eq!(
            signing::verify(&[&s], headers, b"{}x", verify_at, DEFAULT_TOLERANCE),
            Err(signing::VerifyError::NoMatchingSignature),
            "{name}"
        );
    }
}
