//! How results and errors look: JSON with `--json`, otherwise aligned text for a person; an
//! error is one line on stderr that never carries the database password; progress is drawn only
//! on a terminal, so that scripts and logs get the one summary line. A reader that closes
//! stdout early (`agent-webhooks … | head -1`) ends the command quietly with status 0, as
//! `head` expects of the commands it reads: see [`StdoutClosed`].

use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use comfy_table::{Table, presets};
use indicatif::ProgressBar;
use serde::Serialize;

/// Prints `value` as pretty JSON, or the text `text` makes from it, on stdout.
pub fn print<T: Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    let rendered = if json {
        serde_json::to_string_pretty(value)?
    } else {
        text(value)
    };
    line(&rendered)
}

/// Prints one line (or several, joined by `\n`) on stdout; a closed stdout is
/// [`StdoutClosed`].
pub fn line(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        result => Ok(result?),
    }
}

/// Stdout's reader went away (`| head -1`): the command stops, and `main` exits 0 without a
/// word, because the reader has all it asked for. Rust ignores SIGPIPE, so this is an error
/// to handle rather than the signal that ends C tools; restoring the signal's default instead
/// would also let a write to a closed socket kill a worker.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// A line on stderr (notes, the error line); a closed stderr is no reason to panic.
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// An instant as every text output shows it: RFC 3339 in UTC with milliseconds and `Z`
/// (`2026-12-04T18:30:00.123Z`). One form, so that a reader can compare the instants of
/// `deliveries list`, `deliveries prune` and `config show` by eye and a script can parse them
/// with one pattern; `--json` output is the library's serialization instead (the HTTP API's).
pub fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `n` with the noun that fits it: `1 delivery`, `0 deliveries`, `2 deliveries`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `name: value` lines with the values aligned in one column.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(name, _)| name.len()).max().unwrap_or(0) + 1;
    pairs
        .iter()
        .map(|(name, value)| format!("{:<width$} {value}", format!("{name}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A table without borders whose columns are aligned by the widest cell, two spaces apart.
pub fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table.trim_fmt()
}

/// A spinner with a running count on stderr while a long operation runs, drawn only when
/// stderr is a terminal; it is cleared when dropped, also when the operation fails.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// Starts the spinner with `message` (nothing is drawn when stderr is not a terminal).
    pub fn start(message: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = ProgressBar::new_spinner();
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(Some(bar))
    }

    /// Replaces the message; `message` is only called when something is drawn.
    pub fn update(&self, message: impl FnOnce() -> String) {
        if let Some(bar) = &self.0 {
            bar.set_message(message());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// The error as one line: the causes joined with ": ", each skipped when the message before it
/// already says it (our error types print their source themselves), line breaks flattened.
/// The database URL's password is masked wherever it appears ([`migration::redact_secrets`]): a
/// driver may quote the URL it could not parse.
pub fn error_line(err: &anyhow::Error, database_url: Option<&str>) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
    match database_url {
        Some(url) => migration::redact_secrets(&line, url),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_utc_with_milliseconds_and_z() {
        let t = DateTime::parse_from_rfc3339("2026-12-04T19:30:00.123456789+01:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(instant(t), "2026-12-04T18:30:00.123Z");
        assert_eq!(instant(DateTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn counts_take_the_noun_that_fits() {
        assert_eq!(count(0, "delivery", "deliveries"), "0 deliveries");
        assert_eq!(count(1, "delivery", "deliveries"), "1 delivery");
        assert_eq!(count(2, "delivery", "deliveries"), "2 deliveries");
    }

    #[test]
    fn fields_align_their_values() {
        let text = fields(&[
            ("id", "dlv-1".into()),
            ("event_type", "run.completed".into()),
        ]);
        assert_eq!(text, "id:         dlv-1\nevent_type: run.completed");
    }

    #[test]
    fn tables_align_columns_without_trailing_space() {
        let text = table(
            &["ID", "STATE"],
            [
                vec!["dlv-1".to_owned(), "pending".to_owned()],
                vec!["dlv-22222".to_owned(), "failed".to_owned()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let column = lines[0].find("STATE").unwrap();
        assert_eq!(lines[1].find("pending"), Some(column), "{text}");
        assert_eq!(lines[2].find("failed"), Some(column), "{text}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text:?}");
    }

    #[test]
    fn errors_are_one_line_without_repeated_causes() {
        let inner = std::io::Error::other("disk\nfull");
        let err = anyhow::Error::new(inner).context("cannot write");
        assert_eq!(error_line(&err, None), "cannot write: disk full");
        // A message that already embeds its cause does not print it twice.
        let err = anyhow::anyhow!("boom").context("wrapped: boom");
        assert_eq!(error_line(&err, None), "wrapped: boom");
    }

    #[test]
    fn the_database_password_is_masked_in_either_form() {
        let url = "postgres://ops:p%40ss%2Fw0rd@db.internal/webhooks";
        let err = anyhow::anyhow!("auth failed for p@ss/w0rd (p%40ss%2Fw0rd)")
            .context("cannot connect to postgres://ops:p%40ss%2Fw0rd@db.internal");
        let line = error_line(&err, Some(url));
        assert_eq!(
            line,
            "cannot connect to postgres://ops:***@db.internal: auth failed for *** (***)"
        );
    }

    #[test]
    fn a_url_that_does_not_parse_is_quoted_without_its_password() {
        let url = "postgres://ops:hunter2@127.0.0.1:notaport/db";
        let err = anyhow::anyhow!("The connection string '{url}' cannot be parsed.");
        let line = error_line(&err, Some(url));
        assert_eq!(
            line,
            "The connection string 'postgres://ops:***@127.0.0.1:notaport/db' cannot be parsed."
        );
    }
}
