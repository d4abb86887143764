//! Keeping the database password out of messages and logs.
//!
//! Drivers quote the whole connection string when they cannot parse it (a `?`, `/` or `#` in
//! the password, port 99999), so every message a CLI prints about the database goes through
//! [`redact_secrets`] first.
//!
//! **Finding the password.** The URL is taken apart by position, without a URL parser, because
//! the URLs that matter most here are exactly those that do not parse. A password is
//! * the userinfo's, from the first `:` after the user name up to the *last* `@` whose user name
//!   (the text before that `:`) holds no `/`, `?`, `#` or `@`: so a password holding any of
//!   `?#/@:` unescaped is found whole. A query value holding `@` after a password may make the
//!   mask reach into the host and path; it never reaches less than the whole password;
//! * the value of every query parameter whose name ends in `password` (`?password=…`, which
//!   sqlx accepts), up to the next `&`.
//!
//! **Masking a message.** [`redact_url`] replaces those spans by `***`. [`redact_secrets`]
//! replaces, in a message, (1) the database URL as written by its redacted form, (2) every
//! other `scheme://…` URL (up to a space or a quote) by its redacted form, since a driver may
//! quote the URL re-serialised, and (3) outside those URLs, the password's own text (as written
//! and percent-decoded) only where it stands as a whole token, not next to a letter, digit or
//! `_`. Masking every occurrence of the text instead would turn password `none` and the path
//! `/nonexistent/` into `/***existent/`; the whole-token rule keeps such words intact and still
//! masks a password that a message quotes on its own (`auth failed for hunter2`). A password
//! that is itself a word of the message (`test`) masks that word: a message may lose a word,
//! never show the password. No length threshold: a short password is still a password.

use std::ops::Range;

/// `url` with its password replaced by `***` (`postgres://ops:***@db/webhooks`,
/// `postgres://ops@db/webhooks?password=***`); URLs without a password come back unchanged.
pub fn redact_url(url: &str) -> String {
    let mut redacted = String::with_capacity(url.len());
    let mut done = 0;
    for span in password_spans(url) {
        redacted.push_str(&url[done..span.start]);
        redacted.push_str("***");
        done = span.end;
    }
    redacted.push_str(&url[done..]);
    redacted
}

/// `text` with the secrets of `database_url` masked: that URL and every other URL in `text` in
/// [`redact_url`]'s form, and the password's own text where it stands as a whole token (see
/// the module docs for why not everywhere).
pub fn redact_secrets(text: &str, database_url: &str) -> String {
    let text = if database_url.is_empty() {
        text.to_owned()
    } else {
        text.replace(database_url, &redact_url(database_url))
    };
    let mut secrets: Vec<String> = Vec::new();
    for span in password_spans(database_url) {
        let written = &database_url[span];
        let decoded = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        secrets.extend([
            written.to_owned(),
            decoded(written),
            // A query value as sqlx reads it: form-encoded, `+` for a space.
            decoded(&written.replace('+', " ")),
        ]);
    }
    // Longest first, so that a decoded form inside a written one masks nothing twice.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    // Whitespace is no word to mask (a `+` decodes to a space in a query value).
    secrets.retain(|s| !s.trim().is_empty() && s != "***");
    let mut out = String::with_capacity(text.len());
    for (range, is_url) in split_urls(&text) {
        if is_url {
            out.push_str(&redact_url(&text[range]));
        } else {
            let mut part = text[range].to_owned();
            for secret in &secrets {
                part = mask_tokens(&part, secret);
            }
            out.push_str(&part);
        }
    }
    out
}

/// Byte ranges of `url`'s password and of its `…password=` query values, in order.
fn password_spans(url: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let authority = url.find("://").map_or(0, |i| i + 3);
    let mut host = authority;
    if let Some((password, at)) = userinfo_password(url, authority) {
        spans.extend(password);
        host = at + 1;
    }
    if let Some(query) = url[host..].find('?').map(|i| host + i + 1) {
        let mut start = query;
        for pair in url[query..].split('&') {
            if let Some(eq) = pair.find('=') {
                let name = percent_encoding::percent_decode_str(&pair[..eq]).decode_utf8_lossy();
                let value = start + eq + 1..start + pair.len();
                if name.to_ascii_lowercase().ends_with("password") && !value.is_empty() {
                    spans.push(value);
                }
            }
            start += pair.len() + 1;
        }
    }
    spans
}

/// The userinfo password of the URL whose authority starts at `authority`, and the position of
/// the `@` that ends the userinfo (also when there is no password).
fn userinfo_password(url: &str, authority: usize) -> Option<(Option<Range<usize>>, usize)> {
    let rest = &url[authority..];
    for (at, _) in rest.rmatch_indices('@') {
        let userinfo = &rest[..at];
        let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
        if user.contains(['/', '?', '#', '@']) {
            continue;
        }
        let password = (user.len() < userinfo.len())
            .then(|| authority + user.len() + 1..authority + at)
            .filter(|span| !span.is_empty());
        return Some((password, authority + at));
    }
    None
}

/// `text` cut into pieces that are `scheme://…` URLs (up to whitespace or a quote; `true`)
/// and the text between them (`false`).
fn split_urls(text: &str) -> Vec<(Range<usize>, bool)> {
    let mut pieces = Vec::new();
    let mut done = 0;
    while let Some(found) = text[done..].find("://") {
        let separator = done + found;
        let start = text[done..separator]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .map_or(done, |i| done + i + 1);
        let end = text[separator..]
            .find(|c: char| c.is_whitespace() || "'\"`<>".contains(c))
            .map_or(text.len(), |i| separator + i);
        if done < start {
            pieces.push((done..start, false));
        }
        pieces.push((start..end, true));
        done = end;
    }
    if done < text.len() {
        pieces.push((done..text.len(), false));
    }
    pieces
}

/// `text` with each occurrence of `secret` that is not next to a letter, digit or `_`
/// replaced by `***`.
fn mask_tokens(text: &str, secret: &str) -> String {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    for (at, _) in text.match_indices(secret) {
        let end = at + secret.len();
        if at < done
            || is_word(text[..at].chars().next_back())
            || is_word(text[end..].chars().next())
        {
            continue;
        }
        out.push_str(&text[done..at]);
        out.push_str("***");
        done = end;
    }
    out.push_str(&text[done..]);
    out
}

/// Stderr for log lines, with [`redact_secrets`] applied: a driver's log message may quote the
/// URL. Hand `move || RedactedStderr::new(&url)` to `tracing_subscriber`'s `with_writer`; each
/// event is written once, redacted whole, when the writer is dropped.
pub struct RedactedStderr {
    database_url: String,
    pending: Vec<u8>,
}

impl RedactedStderr {
    /// A writer for one log event that masks `database_url` and its password.
    pub fn new(database_url: &str) -> Self {
        RedactedStderr {
            database_url: database_url.to_owned(),
            pending: Vec::new(),
        }
    }
}

impl std::io::Write for RedactedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.pending);
        let line = redact_secrets(&text, &self.database_url);
        self.pending.clear();
        std::io::stderr().write_all(line.as_bytes())
    }
}

impl Drop for RedactedStderr {
    fn drop(&mut self) {
        // Nowhere to report a failed write of a log line to.
        let _ = std::io::Write::flush(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn passwords_that_break_url_parsers_are_found_whole() {
        for (url, redacted) in [
            (
                "postgres://ops:hun/ter2@127.0.0.1:5432/db",
                "postgres://ops:***@127.0.0.1:5432/db",
            ),
            (
                "postgres://ops:hun#ter2@127.0.0.1/db",
                "postgres://ops:***@127.0.0.1/db",
            ),
            (
                "mysql://ops:hunter2@127.0.0.1:99999/db",
                "mysql://ops:***@127.0.0.1:99999/db",
            ),
            (
                "mysql://ops:a@b:c@host/db?ssl-mode=required",
                "mysql://ops:***@host/db?ssl-mode=required",
            ),
            (
                "postgres://ops:ab?cd@127.0.0.1:5432/db",
                "postgres://ops:***@127.0.0.1:5432/db",
            ),
            (
                "postgres://ops:a?b#c/d@e:f@db/x?sslmode=disable",
                "postgres://ops:***@db/x?sslmode=disable",
            ),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
        for no_password in [
            "sqlite://webhooks.db?mode=rwc",
            "postgres://ops@db/x",
            "postgres://db/x?user=a@b",
            "postgres://db/x?user=a:b@c",
            "postgres://ops@db/x?application_name=a:b@c",
            "postgres://ops:@db/x",
            "not a url",
        ] {
            assert_eq!(redact_url(no_password), no_password);
        }
    }

    #[test]
    fn password_query_parameters_are_masked() {
        for (url, redacted) in [
            (
                "postgres://ops@127.0.0.1/db?password=hunter2",
                "postgres://ops@127.0.0.1/db?password=***",
            ),
            (
                "postgres://ops@db/x?sslmode=disable&password=a%26b&application_name=x",
                "postgres://ops@db/x?sslmode=disable&password=***&application_name=x",
            ),
            (
                "mysql://db/x?PASSWORD=pw&sslpassword=key",
                "mysql://db/x?PASSWORD=***&sslpassword=***",
            ),
            (
                "postgres://ops:one@db/x?password=two",
                "postgres://ops:***@db/x?password=***",
            ),
            (
                "postgres://db/x?password=a@b",
                "postgres://db/x?password=***",
            ),
            ("postgres://db/x?password=", "postgres://db/x?password="),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }

    #[test]
    fn the_password_is_masked_in_either_form() {
        let url = "postgres://ops:p%40ss%2Fw0rd@db.internal/webhooks";
        let text = format!("cannot connect to {url}: auth failed for p@ss/w0rd (p%40ss%2Fw0rd)");
        assert_eq!(
            redact_secrets(&text, url),
            "cannot connect to postgres://ops:***@db.internal/webhooks: auth failed for *** (***)"
        );
        assert_eq!(redact_secrets("nothing to hide", ""), "nothing to hide");
        let query = "postgres://ops@db/x?password=s3cr%21t";
        assert_eq!(
            redact_secrets("bad password s3cr!t for ops", query),
            "bad password *** for ops"
        );
    }

    #[test]
    fn a_short_password_leaves_words_that_contain_it_alone() {
        let url = "postgres://ops:none@127.0.0.1:99999/nonexistent";
        let text = format!(
            "The connection string '{url}' cannot be parsed; /nonexistent/ none: nonetheless"
        );
        assert_eq!(
            redact_secrets(&text, url),
            "The connection string 'postgres://ops:***@127.0.0.1:99999/nonexistent' cannot be \
             parsed; /nonexistent/ ***: nonetheless"
        );
    }

    #[test]
    fn urls_the_driver_quotes_in_another_form_are_redacted_too() {
        let url = "postgres://ops:hunter2@db.internal:5432/webhooks?sslmode=require";
        // Re-serialised: no query, a trailing slash.
        let text = "connecting to \"postgres://ops:hunter2@db.internal:5432/\" failed";
        assert_eq!(
            redact_secrets(text, url),
            "connecting to \"postgres://ops:***@db.internal:5432/\" failed"
        );
        assert_eq!(
            redact_secrets("see https://u:p@hooks.example.com/a and more", ""),
            "see https://u:***@hooks.example.com/a and more"
        );
    }

    /// Printable ASCII without whitespace: what a generated password may hold, `?#/@:&=%`
    /// included.
    fn password() -> impl Strategy<Value = String> {
        "[!-~]{1,24}"
    }

    #[test]
    fn a_password_that_decodes_to_whitespace_masks_no_spaces() {
        for pw in ["+", "%20", "++"] {
            let url = format!("postgres://ops:{pw}@db/x");
            assert_eq!(redact_secrets("a  b", &url), "a  b", "{pw}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the password holds, exactly it is masked, by position.
        #[test]
        fn any_password_is_masked_exactly(
            user in "[a-z][a-z0-9_]{0,7}",
            pw in password(),
            host in "[a-z]{1,8}(\\.[a-z]{1,6}){0,2}",
            port in 1u16..,
            db in "[a-z_]{1,8}",
            query in prop_oneof![Just(String::new()), Just("?sslmode=require".to_owned())],
        ) {
            let url = format!("postgres://{user}:{pw}@{host}:{port}/{db}{query}");
            let redacted = format!("postgres://{user}:***@{host}:{port}/{db}{query}");
            prop_assert_eq!(redact_url(&url), redacted.clone());
            let message = format!("The connection string '{url}' cannot be parsed.");
            // A password that is also text of the message around the URL masks that text too
            // (a message may lose a word, never show the password): not this property.
            prop_assume!(!"The connection string '' cannot be parsed.".contains(pw.as_str()));
            prop_assert_eq!(
                redact_secrets(&message, &url),
                format!("The connection string '{redacted}' cannot be parsed.")
            );
        }

        /// The same for a password given as a query parameter (`&` ends the value, as it does
        /// for sqlx).
        #[test]
        fn any_query_password_is_masked_exactly(
            pw in "[!-%'-~]{1,24}",
            before in prop_oneof![Just(""), Just("sslmode=disable&")],
        ) {
            let url = format!("postgres://ops@db:5432/x?{before}password={pw}");
            prop_assert_eq!(
                redact_url(&url),
                format!("postgres://ops@db:5432/x?{before}password=***")
            );
        }

        /// A message that holds neither a URL nor the password is left as it is.
        #[test]
        fn messages_without_the_password_are_left_alone(
            pw in password(),
            text in "[a-zA-Z0-9 ./:_-]{0,60}",
        ) {
            prop_assume!(!text.contains("://") && !text.contains(&pw));
            let url = format!("postgres://ops:{pw}@db/x");
            prop_assert_eq!(redact_secrets(&text, &url), text);
        }

        /// The password's text inside a longer word is not the password: the word stays whole.
        #[test]
        fn a_password_inside_a_longer_word_is_left_alone(
            pw in "[a-z0-9]{1,12}",
            (before, after) in ("[a-z]{0,4}", "[a-z]{0,4}"),
            separator in "[ /:.]",
        ) {
            prop_assume!(!(before.is_empty() && after.is_empty()));
            prop_assume!(pw != "open" && pw != "failed");
            let url = format!("postgres://ops:{pw}@db/x");
            let text = format!("open{separator}{before}{pw}{after}{separator}failed");
            prop_assert_eq!(redact_secrets(&text, &url), text);
        }
    }
}
