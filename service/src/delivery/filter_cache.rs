//! What [`enqueue`](super::enqueue) remembers of agents' content filters, so that an event a
//! filter accepts is inserted by the one statement of the common case instead of a read and
//! an insert.
//!
//! The cache is a hint, never the decision: the statement inserts only while the agent's
//! stored filter is, text for text, the one remembered (`webhook_filter IS NULL OR
//! webhook_filter = <text>`), and every other rule stays in its `WHERE`. A filter changed
//! since, by this process or any other, fails that test; the statement creates nothing and
//! enqueue decides from the row as it is now, and remembers it. So a stale or foreign entry
//! costs one statement, never a wrong outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::webhook::content_filter::ContentFilter;

/// Agents remembered at most; past it the cache starts again empty (a miss costs one
/// statement, so a plain bound beats bookkeeping).
const CAPACITY: usize = 10_000;

/// The content filters [`enqueue`](super::enqueue) saw last, per agent id. Part of
/// [`WebhookSettings`](crate::settings::WebhookSettings): clones share it, and a new settings
/// value starts empty.
#[derive(Clone, Default)]
pub struct FilterCache(Arc<Mutex<HashMap<String, Arc<Remembered>>>>);

/// One agent's filter as the database stores it, and parsed.
pub(super) struct Remembered {
    /// The stored text the insert compares with (PostgreSQL: `webhook_filter::text`).
    pub(super) text: String,
    pub(super) filter: ContentFilter,
}

impl FilterCache {
    pub(super) fn get(&self, agent_id: &str) -> Option<Arc<Remembered>> {
        self.lock().get(agent_id).cloned()
    }

    /// Remembers `agent_id`'s filter as stored just now, `text` (`None`: no filter). `parse`
    /// runs only when the text differs from the one remembered, so an agent whose filter did
    /// not change costs no parse; a filter it cannot parse (`None`) is forgotten.
    pub(super) fn learn(
        &self,
        agent_id: &str,
        text: Option<String>,
        parse: impl FnOnce() -> Option<ContentFilter>,
    ) {
        let mut map = self.lock();
        if map.get(agent_id).map(|known| &known.text) == text.as_ref() {
            return;
        }
        match text.and_then(|text| Some((text, parse()?))) {
            Some((text, filter)) => {
                if map.len() >= CAPACITY && !map.contains_key(agent_id) {
                    map.clear();
                }
                map.insert(agent_id.to_owned(), Arc::new(Remembered { text, filter }));
            }
            None => {
                map.remove(agent_id);
            }
        }
    }

    /// Agents remembered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no agent is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Remembered>>> {
        // A panic while holding the lock cannot leave the map half-written (one insert or
        // remove), so a poisoned lock is still a good map.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for FilterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterCache")
            .field("agents", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learn(cache: &FilterCache, agent_id: &str, text: &str) {
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        cache.learn(agent_id, Some(text.to_owned()), || {
            Some(ContentFilter::parse(&value).unwrap())
        });
    }

    #[test]
    fn learns_replaces_forgets_and_stays_bounded() {
        let cache = FilterCache::default();
        let shared = cache.clone();
        learn(&cache, "a", r#"{"kind":"keep"}"#);
        assert_eq!(shared.get("a").unwrap().text, r#"{"kind":"keep"}"#);
        // The same text again is not parsed again.
        cache.learn("a", Some(r#"{"kind":"keep"}"#.to_owned()), || {
            panic!("parsed an unchanged filter")
        });
        learn(&cache, "a", r#"{"kind":"other"}"#);
        assert_eq!(shared.get("a").unwrap().text, r#"{"kind":"other"}"#);
        cache.learn("a", None, || panic!("parsed no filter"));
        assert!(shared.get("a").is_none());
        // A text that does not parse is forgotten.
        learn(&cache, "b", r#"{"kind":"keep"}"#);
        cache.learn("b", Some("not a filter".to_owned()), || None);
        assert!(shared.get("b").is_none());
        for n in 0..CAPACITY {
            learn(&cache, &n.to_string(), r#"{"k":1}"#);
        }
        // Replacing a remembered agent never empties the cache; a new one past the bound does.
        learn(&cache, "0", r#"{"k":2}"#);
        assert_eq!(cache.len(), CAPACITY);
        learn(&cache, "one more", r#"{"k":1}"#);
        assert_eq!(cache.len(), 1);
    }
}
