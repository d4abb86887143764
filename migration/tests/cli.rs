//! The migration binary as operators run it.

use std::path::Path;
use std::process::{Command, Output};

fn migration(cwd: &Path, url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_migration"));
    cmd.current_dir(cwd).args(args).env_remove("DATABASE_URL");
    if let Some(url) = url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.output().expect("run the migration binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn defaults_to_embedded_sqlite_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = migration(dir.path(), None, &["up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("DATABASE_URL is not set: using the embedded SQLite database"),
        "{}",
        stderr(&out)
    );
    assert!(dir.path().join("webhooks.db").exists());

    let status = migration(dir.path(), None, &["status"]);
    assert!(status.status.success());
    let text = stderr(&status);
    assert!(
        text.contains("m20261129_000004_delivery_worker'... Applied"),
        "{text}"
    );

    let down = migration(dir.path(), None, &["down"]);
    assert!(down.status.success(), "{}", stderr(&down));
    let text = stderr(&migration(dir.path(), None, &["status"]));
    assert!(
        text.contains("m20261129_000004_delivery_worker'... Pending"),
        "{text}"
    );
}

#[test]
fn refuses_to_drop_tables_with_rows_with_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("ops.db").display());
    assert!(migration(dir.path(), Some(&url), &["up"]).status.success());
    // Put a row in through sqlite itself: the binary has no insert command.
    let conn = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             c.execute(\"INSERT INTO organizations (id, name) VALUES ('org-1', 'Acme')\"); c.commit()",
        ])
        .arg(dir.path().join("ops.db"))
        .status()
        .expect("python3");
    assert!(conn.success());
    for command in ["reset", "refresh", "fresh"] {
        let out = migration(dir.path(), Some(&url), &[command]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        let err = stderr(&out);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: refusing to drop table `organizations`"),
            "{command}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn bad_url_gives_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "not a url",
        "oracle://scott:tiger@127.0.0.1/db",
        "postgres://nobody@127.0.0.1:1/none",
        "mysql://nobody@127.0.0.1:1/none",
    ] {
        let out = migration(dir.path(), Some(url), &["status"]);
        assert_eq!(out.status.code(), Some(1), "{url}");
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{url}: {err}");
        assert!(err.starts_with("error: "), "{url}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = migration(dir.path(), None, &["sideways"]);
    assert_eq!(out.status.code(), Some(2));
}
