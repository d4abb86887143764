//! The per-host limit: how many sends may go to one receiver at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One semaphore per host, dropped when idle, so the map holds only hosts being sent to.
#[derive(Debug)]
pub(super) struct HostLimits {
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A turn to send to one host; gives it back (and forgets an idle host) when dropped.
pub(super) struct HostPermit<'a> {
    limits: &'a HostLimits,
    host: &'a str,
    permit: Option<OwnedSemaphorePermit>,
}

impl HostLimits {
    pub(super) fn new(per_host: usize) -> HostLimits {
        HostLimits {
            per_host: per_host.max(1),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// A turn to send to `host`, or `None` when none came free within `wait`.
    pub(super) async fn acquire<'a>(
        &'a self,
        host: &'a str,
        wait: Duration,
    ) -> Option<HostPermit<'a>> {
        let semaphore = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
            let entry = hosts
                .entry(host.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)));
            Arc::clone(entry)
        };
        let permit = match semaphore.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => tokio::time::timeout(wait, semaphore.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        };
        match permit {
            Some(permit) => Some(HostPermit {
                limits: self,
                host,
                permit: Some(permit),
            }),
            None => {
                self.forget_if_idle(host);
                None
            }
        }
    }

    /// Drops `host`'s semaphore when nobody holds or waits for it (only the map refers to it).
    fn forget_if_idle(&self, host: &str) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if hosts.get(host).is_some_and(|s| Arc::strong_count(s) == 1) {
            hosts.remove(host);
        }
    }
}

impl Drop for HostPermit<'_> {
    fn drop(&mut self) {
        // The permit holds the semaphore too: give it back before counting who refers to it.
        drop(self.permit.take());
        self.limits.forget_if_idle(self.host);
    }
}

/// Without the port: one machine behind several ports is one receiver to spare.
pub(super) fn host_key(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_else(|| url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn host_limits_bound_one_host_and_forget_idle_ones() {
        let limits = HostLimits::new(2);
        let a1 = limits.acquire("a", Duration::ZERO).await.unwrap();
        let _a2 = limits.acquire("a", Duration::ZERO).await.unwrap();
        // A third turn at host a is refused; host b is not affected.
        assert!(
            limits
                .acquire("a", Duration::from_millis(20))
                .await
                .is_none()
        );
        let b = limits.acquire("b", Duration::ZERO).await.unwrap();
        drop(b);
        assert!(!limits.hosts.lock().unwrap().contains_key("b"));
        drop(a1);
        assert!(limits.acquire("a", Duration::ZERO).await.is_some());
        assert_eq!(
            host_key("https://Hooks.Example.com:8443/x"),
            "hooks.example.com"
        );
    }
}
