//! `migration owned`: the objects we own, for the host's schema tool, printed without a
//! database, and the README's copy of the Alembic hook kept identical to what it prints.

use std::process::Command;

use migration::owned::{Format, render};

fn owned(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_migration"))
        .current_dir(dir.path())
        .arg("owned")
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run the migration binary");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !dir.path().join("webhooks.db").exists(),
        "`owned` must not open a database"
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn prints_json_by_default_and_the_alembic_hook_on_request() {
    let json: serde_json::Value = serde_json::from_str(&owned(&[])).unwrap();
    assert_eq!(
        json["tables"],
        serde_json::json!(["webhook_deliveries", "seaql_migrations"])
    );
    assert_eq!(
        owned(&["--format", "json"]),
        format!("{}\n", render(Format::Json))
    );
    let alembic = owned(&["--format", "alembic"]);
    assert_eq!(alembic, format!("{}\n", render(Format::Alembic)));
    assert!(alembic.contains("def include_object(object, name, type_, reflected, compare_to):"));
}

#[test]
fn the_readme_shows_the_hook_the_command_prints() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let hook = render(Format::Alembic);
    assert!(
        readme.contains(&format!("```python\n{hook}```")),
        "README.md must show the output of `migration owned --format alembic` verbatim:\n{hook}"
    );
}
