//! The worker's HTTP client: rustls, no redirects, no proxy, and a resolver that vets every
//! address it hands the connector; and what an attempt's answer or failure comes to.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};

use super::sign::OutgoingRequest;
use crate::delivery::retry::{AttemptOutcome, RetryAfter};
use crate::delivery::{self, ErrorClass};
use crate::error::{Error, Result};
use crate::settings::WebhookSettings;
use crate::webhook::url_policy::{Resolver, UrlPolicy, UrlPolicyError};

/// The `user-agent` of every request, so receivers can tell our deliveries apart in their logs.
pub const USER_AGENT: &str = concat!("agent-webhooks/", env!("CARGO_PKG_VERSION"));

pub(super) fn build<R>(settings: &WebhookSettings, resolver: R) -> Result<reqwest::Client>
where
    R: Resolver + Send + Sync + 'static,
{
    let vetting = VettingResolver {
        policy: settings.url_policy,
        inner: Arc::new(resolver),
    };
    reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(settings.worker.connect_timeout)
        .timeout(settings.worker.request_timeout)
        .dns_resolver(Arc::new(vetting))
        .build()
        .map_err(Error::HttpClient)
}

/// Posts `request` and reads the answer (at most `cap` body bytes); every failure becomes the
/// attempt's outcome.
pub(super) async fn post(
    http: &reqwest::Client,
    request: OutgoingRequest,
    cap: usize,
    now: DateTime<Utc>,
) -> Attempt {
    let headers = request.header_pairs();
    let mut builder = http
        .post(request.url)
        .header(CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    match builder.body(request.body).send().await {
        Ok(response) => read_response(response, cap, now).await,
        Err(err) => Attempt::failed(&err),
    }
}

/// `Retry-After` is taken relative to `now`, when the answer arrived.
async fn read_response(mut response: reqwest::Response, cap: usize, now: DateTime<Utc>) -> Attempt {
    let code = response.status().as_u16();
    let remote_addr = response.remote_addr();
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header(RETRY_AFTER).and_then(|v| RetryAfter::parse(&v, now));
    let location = header(LOCATION);
    let mut body = Vec::new();
    let mut too_large = false;
    let mut read_error = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - body.len();
                if chunk.len() > room {
                    too_large = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(err) => {
                read_error = Some(err);
                break;
            }
        }
    }
    // Dropping the response closes the connection without reading the rest.
    drop(response);
    let (class, message) = if too_large {
        (
            Some(ErrorClass::BodyTooLarge),
            Some(format!(
                "HTTP {code}; response body larger than {cap} bytes, not read further"
            )),
        )
    } else if let Some(err) = read_error {
        let class = if err.is_timeout() {
            ErrorClass::Timeout
        } else {
            ErrorClass::Connect
        };
        (
            Some(class),
            Some(format!(
                "HTTP {code}; reading the body failed: {}",
                chain(&err)
            )),
        )
    } else if (300..400).contains(&code) {
        let to = location.map_or_else(String::new, |l| format!(" to {l}"));
        (
            Some(ErrorClass::Redirect),
            Some(format!("HTTP {code}: redirect{to} not followed")),
        )
    } else if !(200..300).contains(&code) {
        (Some(ErrorClass::HttpStatus), Some(format!("HTTP {code}")))
    } else {
        (None, None)
    };
    Attempt {
        outcome: AttemptOutcome::Status { code, retry_after },
        status: Some(code),
        class,
        message,
        body_prefix: delivery::body_excerpt(&body),
        remote_addr,
    }
}

/// One attempt's result before it is stored.
pub(super) struct Attempt {
    pub(super) outcome: AttemptOutcome,
    pub(super) status: Option<u16>,
    pub(super) class: Option<ErrorClass>,
    pub(super) message: Option<String>,
    pub(super) body_prefix: Option<String>,
    pub(super) remote_addr: Option<SocketAddr>,
}

impl Attempt {
    /// Nothing was sent.
    pub(super) fn refused(class: ErrorClass, message: String) -> Attempt {
        Attempt {
            outcome: AttemptOutcome::Connection(message.clone()),
            status: None,
            class: Some(class),
            message: Some(message),
            body_prefix: None,
            remote_addr: None,
        }
    }

    /// Nothing was sent, and nothing will be: the agent was deleted.
    pub(super) fn agent_deleted(message: String) -> Attempt {
        Attempt {
            outcome: AttemptOutcome::AgentDeleted(message.clone()),
            ..Attempt::refused(ErrorClass::NotSendable, message)
        }
    }

    /// The request failed before a response arrived.
    fn failed(err: &reqwest::Error) -> Attempt {
        let message = chain(err);
        let class = classify_error(err);
        let outcome = match class {
            ErrorClass::Timeout => AttemptOutcome::Timeout,
            _ => AttemptOutcome::Connection(message.clone()),
        };
        Attempt {
            outcome,
            status: None,
            class: Some(class),
            message: Some(message),
            body_prefix: None,
            remote_addr: None,
        }
    }
}

/// Which class a transport error belongs to, from the causes it carries.
fn classify_error(err: &reqwest::Error) -> ErrorClass {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    let mut tls = false;
    while let Some(cause) = source {
        if let Some(refusal) = find::<UrlPolicyError>(cause) {
            return match refusal {
                UrlPolicyError::ResolutionFailed { .. } | UrlPolicyError::NoAddresses { .. } => {
                    ErrorClass::Dns
                }
                _ => ErrorClass::SsrfBlocked,
            };
        }
        tls |= find::<rustls::Error>(cause).is_some();
        source = cause.source();
    }
    if tls {
        ErrorClass::Tls
    } else if err.is_connect() {
        ErrorClass::Connect
    } else if err.is_timeout() {
        ErrorClass::Timeout
    } else {
        ErrorClass::Connect
    }
}

/// Also looks inside `io::Error`s, however deeply: the resolver's and TLS layer's errors arrive
/// wrapped, and `io::Error::source` skips the error it wraps.
fn find<'a, T: StdError + 'static>(cause: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    if let Some(found) = cause.downcast_ref::<T>() {
        return Some(found);
    }
    let mut current = cause.downcast_ref::<std::io::Error>()?.get_ref()?;
    loop {
        if let Some(found) = current.downcast_ref::<T>() {
            return Some(found);
        }
        current = current.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

/// An error and its causes on one line, without the URL (it may hold a token in its query).
fn chain(err: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(cause) = source {
        let part = if text.is_empty() {
            // reqwest's own message names the URL; say what failed without it.
            match err.status() {
                Some(status) => format!("HTTP {status}"),
                None if err.is_timeout() => "timed out".to_owned(),
                None if err.is_connect() => "connect failed".to_owned(),
                None => "request failed".to_owned(),
            }
        } else {
            cause.to_string()
        };
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// The resolver the HTTP client connects through: every address is vetted by the policy, and
/// only vetted addresses reach the connector.
struct VettingResolver<R> {
    policy: UrlPolicy,
    inner: Arc<R>,
}

impl<R: Resolver + Send + Sync + 'static> Resolve for VettingResolver<R> {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let host = name.as_str();
            // The scheme and port do not matter here: the connector keeps the request's own.
            // Errors are boxed by `?` as they are (not boxed twice), so that the classifier
            // finds the `UrlPolicyError` among the causes.
            let url = url::Url::parse(&format!("https://{host}/"))
                .map_err(UrlPolicyError::Unparseable)?;
            let addrs = policy.check_resolved(&url, inner.as_ref()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::net::IpAddr;

    struct Fixed(Vec<IpAddr>);

    impl Resolver for Fixed {
        async fn resolve(&self, _host: &str, _port: u16) -> io::Result<Vec<IpAddr>> {
            Ok(self.0.clone())
        }
    }

    async fn vet(policy: UrlPolicy, ips: &[&str]) -> Result<Vec<SocketAddr>, String> {
        let resolver = VettingResolver {
            policy,
            inner: Arc::new(Fixed(ips.iter().map(|ip| ip.parse().unwrap()).collect())),
        };
        match resolver
            .resolve(Name::from_str("hooks.example.com").unwrap())
            .await
        {
            Ok(addrs) => Ok(addrs.collect()),
            Err(err) => Err(err.to_string()),
        }
    }

    use std::str::FromStr;

    #[tokio::test]
    async fn every_resolved_address_is_vetted() {
        let public = vet(
            UrlPolicy::Production,
            &["93.184.216.34", "2606:2800:220:1::"],
        )
        .await;
        assert_eq!(public.unwrap().len(), 2);
        // One private address among public ones refuses the name.
        let mixed = vet(UrlPolicy::Production, &["93.184.216.34", "10.0.0.7"]).await;
        assert!(mixed.unwrap_err().contains("10.0.0.7"));
        let metadata = vet(UrlPolicy::Production, &["169.254.169.254"]).await;
        assert!(metadata.is_err());
        // Development allows loopback for local receivers.
        assert_eq!(
            vet(UrlPolicy::Development, &["127.0.0.1"]).await.unwrap(),
            vec!["127.0.0.1:443".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn user_agent_names_the_product() {
        assert!(USER_AGENT.starts_with("agent-webhooks/"));
    }
}
