//! Keeping the database password out of messages and logs.
//!
//! Drivers quote the whole connection string when they cannot parse it (an unescaped `/` or `#`
//! in the password, port 99999), so every message a CLI prints about the database goes through
//! [`redact_secrets`] first. The password is found without a URL parser, because the URLs that
//! matter most here are exactly those that do not parse. One home for both CLIs (`migration`
//! and `agent-webhooks`).

/// `url` with the password of its userinfo replaced by `***`
/// (`postgres://ops:***@db/webhooks`); URLs without a password come back unchanged.
pub fn redact_url(url: &str) -> String {
    match password_span(url) {
        Some((start, end)) => format!("{}***{}", &url[..start], &url[end..]),
        None => url.to_owned(),
    }
}

/// `text` with `database_url`, and its password in either form (as written and
/// percent-decoded), masked wherever they appear: the URL becomes [`redact_url`]'s form, the
/// password `***`.
pub fn redact_secrets(text: &str, database_url: &str) -> String {
    if database_url.is_empty() {
        return text.to_owned();
    }
    let mut text = text.replace(database_url, &redact_url(database_url));
    if let Some((start, end)) = password_span(database_url) {
        let password = &database_url[start..end];
        let decoded = percent_encoding::percent_decode_str(password).decode_utf8_lossy();
        for form in [password, decoded.as_ref()] {
            text = text.replace(form, "***");
        }
    }
    text
}

/// Where the password of `scheme://user:password@host…` is, as byte offsets into `url`.
///
/// The userinfo ends at the *last* `@` before the query, so a password holding `@`, `/`, `#`
/// or `:` unescaped is still found whole.
fn password_span(url: &str) -> Option<(usize, usize)> {
    let authority = url.find("://")? + 3;
    let rest = &url[authority..];
    let before_query = rest.split('?').next()?;
    let at = before_query.rfind('@')?;
    let colon = before_query[..at].find(':')?;
    let (start, end) = (authority + colon + 1, authority + at);
    (start < end).then_some((start, end))
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
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
        for no_password in [
            "sqlite://webhooks.db?mode=rwc",
            "postgres://ops@db/x",
            "postgres://db/x?user=a@b",
            "postgres://ops:@db/x",
            "not a url",
        ] {
            assert_eq!(redact_url(no_password), no_password);
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
    }
}
