//! Saying why the database server cannot be reached, at once.
//!
//! sqlx's pool retries a refused connection until its connect timeout runs out, then says only
//! "pool timed out": ten seconds of waiting for a message that names neither the server nor the
//! cause. So both CLIs first open one plain connection themselves ([`check_reachable`]), which
//! fails at the first refusal, and name host, port and cause (DNS, refused, timed out, TLS, the
//! server's own refusal) in one line. It is a full protocol connection, closed properly, rather
//! than a bare TCP probe: a probe that hangs up before the handshake is logged by PostgreSQL
//! ("incomplete startup packet") and counted by MariaDB against `max_connect_errors`.

use std::fmt;
#[cfg(any(feature = "postgres", feature = "mysql"))]
use std::str::FromStr;
use std::time::Duration;

use sea_orm_migration::sea_orm::sqlx;
#[cfg(any(feature = "postgres", feature = "mysql"))]
use sea_orm_migration::sea_orm::sqlx::Connection as _;

/// Where a database server listens: `host:port` in messages (`[::1]:5432` for IPv6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The host name or address, as the URL (or `PGHOST`) gives it.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') && !self.host.starts_with('[') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why [`check_reachable`] could not connect; its message names the server and never the
/// password.
#[derive(Debug)]
pub enum Unreachable {
    /// The host name does not resolve.
    Dns(Endpoint, String),
    /// Nothing listens on the port (or a firewall rejects the connection).
    Refused(Endpoint),
    /// No answer within the timeout: a firewall dropping packets, a hung server.
    TimedOut(Endpoint, Duration),
    /// The TLS handshake failed (or the server offers no TLS where the URL requires it).
    Tls(Endpoint, String),
    /// Anything else: another network error, or the server refusing the login.
    Other(Endpoint, String),
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreachable::Dns(at, cause) => write!(
                f,
                "cannot connect to the database at {at}: cannot resolve {} (DNS): {cause}",
                at.host
            ),
            Unreachable::Refused(at) => write!(
                f,
                "cannot connect to the database at {at}: connection refused (is the server \
                 running, on this port?)"
            ),
            Unreachable::TimedOut(at, after) => write!(
                f,
                "cannot connect to the database at {at}: timed out after {} s without an answer",
                after.as_secs_f32()
            ),
            Unreachable::Tls(at, cause) => write!(
                f,
                "cannot connect to the database at {at}: TLS failed: {cause}"
            ),
            Unreachable::Other(at, cause) => {
                write!(f, "cannot connect to the database at {at}: {cause}")
            }
        }
    }
}

impl std::error::Error for Unreachable {}

/// The server a PostgreSQL or MySQL/MariaDB `url` names, as sqlx reads it; `None` for SQLite,
/// a Unix socket, a URL sqlx cannot parse (connecting then says why), or a backend this build
/// has no driver for ([`crate::check_compiled`] says so).
pub fn endpoint(url: &str) -> Option<Endpoint> {
    let scheme = url.split_once("://")?.0.to_ascii_lowercase();
    let (host, port) = match scheme.as_str() {
        "postgres" | "postgresql" => postgres_server(url)?,
        "mysql" => mysql_server(url)?,
        _ => return None,
    };
    let host = host.trim_matches(['[', ']']).to_owned();
    Some(Endpoint { host, port })
}

/// Opens one connection to the server of `url` and closes it again, within `timeout`, so that
/// the caller can fail at once with the reason when the server cannot be reached (see the
/// module docs). Does nothing for SQLite, Unix sockets and URLs sqlx cannot parse: the pool's
/// own error says enough there.
///
/// # Errors
///
/// [`Unreachable`], naming host, port and cause.
pub async fn check_reachable(url: &str, timeout: Duration) -> Result<(), Unreachable> {
    let Some(at) = endpoint(url) else {
        return Ok(());
    };
    match tokio::time::timeout(timeout, connect_once(url, &at)).await {
        Ok(result) => result,
        Err(_) => Err(Unreachable::TimedOut(at, timeout)),
    }
}

async fn connect_once(url: &str, at: &Endpoint) -> Result<(), Unreachable> {
    // Resolving first tells a name that does not resolve from a server that does not answer.
    if let Err(e) = tokio::net::lookup_host((at.host.as_str(), at.port)).await {
        return Err(Unreachable::Dns(at.clone(), e.to_string()));
    }
    let result = if url.to_ascii_lowercase().starts_with("mysql") {
        connect_mysql(url).await
    } else {
        connect_postgres(url).await
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(classify(at.clone(), e)),
    }
}

/// Host and port of a PostgreSQL `url`; `None` for a Unix socket, a URL sqlx cannot parse, or
/// a build without the `postgres` feature.
#[cfg(feature = "postgres")]
fn postgres_server(url: &str) -> Option<(String, u16)> {
    let options = sqlx::postgres::PgConnectOptions::from_str(url).ok()?;
    if options.get_socket().is_some() || options.get_host().starts_with('/') {
        return None;
    }
    Some((options.get_host().to_owned(), options.get_port()))
}

#[cfg(not(feature = "postgres"))]
fn postgres_server(_url: &str) -> Option<(String, u16)> {
    None
}

/// [`postgres_server`] for MySQL/MariaDB.
#[cfg(feature = "mysql")]
fn mysql_server(url: &str) -> Option<(String, u16)> {
    let options = sqlx::mysql::MySqlConnectOptions::from_str(url).ok()?;
    if options.get_socket().is_some() {
        return None;
    }
    Some((options.get_host().to_owned(), options.get_port()))
}

#[cfg(not(feature = "mysql"))]
fn mysql_server(_url: &str) -> Option<(String, u16)> {
    None
}

/// One connection to the server of `url`, closed again; `Ok` when sqlx cannot parse the URL
/// (only called when [`endpoint`] found a server, so the driver is compiled).
#[cfg(any(feature = "mysql", feature = "postgres"))]
async fn open_and_close<O>(url: &str) -> Result<(), sqlx::Error>
where
    O: sqlx::ConnectOptions,
    O::Connection: Sized,
{
    match O::from_str(url) {
        Ok(options) => {
            options
                .disable_statement_logging()
                .connect()
                .await?
                .close()
                .await
        }
        Err(_) => Ok(()),
    }
}

#[cfg(feature = "mysql")]
async fn connect_mysql(url: &str) -> Result<(), sqlx::Error> {
    open_and_close::<sqlx::mysql::MySqlConnectOptions>(url).await
}

#[cfg(not(feature = "mysql"))]
async fn connect_mysql(_url: &str) -> Result<(), sqlx::Error> {
    Ok(())
}

#[cfg(feature = "postgres")]
async fn connect_postgres(url: &str) -> Result<(), sqlx::Error> {
    open_and_close::<sqlx::postgres::PgConnectOptions>(url).await
}

#[cfg(not(feature = "postgres"))]
async fn connect_postgres(_url: &str) -> Result<(), sqlx::Error> {
    Ok(())
}

fn classify(at: Endpoint, err: sqlx::Error) -> Unreachable {
    match err {
        sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Unreachable::Refused(at)
        }
        sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            Unreachable::Other(at, format!("timed out: {e}"))
        }
        sqlx::Error::Tls(e) => Unreachable::Tls(at, e.to_string()),
        other => Unreachable::Other(at, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn endpoints_as_sqlx_reads_them() {
        let at = |url| endpoint(url).map(|e| e.to_string());
        assert_eq!(
            at("postgres://ops:pw@db.internal/x").as_deref(),
            Some("db.internal:5432")
        );
        assert_eq!(
            at("postgresql://ops@10.0.0.1:6543/x").as_deref(),
            Some("10.0.0.1:6543")
        );
        assert_eq!(at("mysql://root@[::1]/x").as_deref(), Some("[::1]:3306"));
        assert_eq!(at("postgres://ops@localhost/x?host=/run/postgresql"), None);
        assert_eq!(at("sqlite://webhooks.db?mode=rwc"), None);
        assert_eq!(at("postgres://ops:hun/ter2@127.0.0.1:5432/db"), None);
    }

    /// A port nobody listens on: a listener's, closed again.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_refused_port_fails_at_once_naming_it() {
        let port = closed_port();
        for scheme in ["postgres", "mysql"] {
            let url = format!("{scheme}://ops:hunter2@127.0.0.1:{port}/db");
            let started = std::time::Instant::now();
            let err = check_reachable(&url, Duration::from_secs(10))
                .await
                .unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(2), "{err}");
            assert!(matches!(err, Unreachable::Refused(_)), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
            assert!(
                text.contains("refused") && !text.contains("hunter2"),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("postgres://ops@127.0.0.1:{port}/db?sslmode=disable");
        let err = check_reachable(&url, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, Unreachable::TimedOut(..)), "{err:?}");
        assert!(err.to_string().contains("timed out"), "{err}");
        drop(listener);
    }

    /// A server that answers PostgreSQL's TLS request with "no": with `sslmode=require` that
    /// is a TLS failure, and said so.
    #[tokio::test]
    async fn a_tls_failure_says_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0_u8; 8];
            socket.read_exact(&mut request).await.unwrap();
            socket.write_all(b"N").await.unwrap();
            let _ = socket.read(&mut [0_u8; 64]).await;
        });
        let url = format!("postgres://ops@127.0.0.1:{port}/db?sslmode=require");
        let err = check_reachable(&url, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Unreachable::Tls(..)), "{err:?}");
        assert!(err.to_string().contains("TLS"), "{err}");
        server.abort();
    }
}
