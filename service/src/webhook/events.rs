//! Event type names the platform emits, and per-webhook event filters.
//!
//! **An empty filter means every event**, so a webhook created without choosing events still
//! receives deliveries; to subscribe to nothing, disable the webhook.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// Filters are validated against it, so a typo is reported instead of matching nothing.
pub const EVENT_CATALOGUE: &[&str] = &[
    // Agent lifecycle.
    "agent.created",
    "agent.updated",
    "agent.deleted",
    // Messages: `created` when a message is added, `completed` when an
    // agent's reply has been fully produced.
    "message.created",
    "message.completed",
    // Runs of an agent.
    "run.started",
    "run.completed",
    "run.failed",
    "run.cancelled",
    // Background jobs.
    "job.created",
    "job.completed",
    "job.failed",
    "job.cancelled",
];

/// A test delivery's type: not in the catalogue and not filtered, so a test reaches an enabled
/// webhook whatever it subscribes to.
pub const TEST_EVENT: &str = "webhook.test";

/// After de-duplication, so one webhook cannot make storage or matching unbounded.
pub const MAX_EVENT_FILTERS: usize = 64;

const WILDCARD: &str = "*";

/// Exact names, `*` or `<family>.*`. Deserialises through [`EventFilter::parse`], so stored or
/// submitted filters are always valid.
///
/// ```
/// use agent_webhooks::webhook::events::EventFilter;
///
/// let filter = EventFilter::parse([" Run.* ", "job.failed", "run.*"]).unwrap();
/// assert_eq!(filter.as_slice(), ["run.*", "job.failed"]);
/// assert!(filter.wants("run.started"));
/// assert!(!filter.wants("job.completed"));
/// assert!(EventFilter::default().wants("job.completed"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct EventFilter {
    entries: Vec<String>,
}

impl EventFilter {
    /// Trims, ASCII-lowercases and de-duplicates in first-seen order.
    pub fn parse<I, S>(input: I) -> Result<Self, EventFilterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        for raw in input {
            // ASCII-only lowercasing: Unicode case folding could turn look-alike
            // characters (e.g. the Kelvin sign) into valid names.
            let name = raw.as_ref().trim().to_ascii_lowercase();
            if name.is_empty() {
                return Err(EventFilterError::Empty);
            }
            if seen.insert(name.clone()) {
                entries.push(name);
            }
        }
        if entries.len() > MAX_EVENT_FILTERS {
            return Err(EventFilterError::TooMany {
                count: entries.len(),
                max: MAX_EVENT_FILTERS,
            });
        }
        if let Some(name) = entries.iter().find(|name| !is_valid_entry(name)) {
            return Err(EventFilterError::Unknown {
                name: name.clone(),
                valid: valid_entries(),
            });
        }
        Ok(Self { entries })
    }

    pub fn wants(&self, event_type: &str) -> bool {
        self.entries.is_empty()
            || self
                .entries
                .iter()
                .any(|entry| entry_matches(entry, event_type))
    }

    /// Every entry that [`wants`](Self::wants) `event_type` through: `*`, each `<prefix>.*`
    /// ending at one of its dots, and the name itself. A filter wants the event exactly when it
    /// is empty or holds one of them, which lets the enqueue check a stored filter inside its
    /// `INSERT` instead of reading the agent first.
    pub fn entries_matching(event_type: &str) -> Vec<String> {
        let mut entries = vec![WILDCARD.to_owned()];
        entries.extend(
            event_type
                .match_indices('.')
                .filter(|(dot, _)| dot + 1 < event_type.len())
                .map(|(dot, _)| format!("{}{WILDCARD}", &event_type[..=dot])),
        );
        if event_type != WILDCARD {
            entries.push(event_type.to_owned());
        }
        entries
    }

    /// Empty or containing `*`, e.g. to show "all events" in a UI.
    pub fn is_all(&self) -> bool {
        self.entries.is_empty() || self.entries.iter().any(|entry| entry == WILDCARD)
    }

    pub fn as_slice(&self) -> &[String] {
        &self.entries
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(String::as_str)
    }
}

impl TryFrom<Vec<String>> for EventFilter {
    type Error = EventFilterError;

    fn try_from(entries: Vec<String>) -> Result<Self, Self::Error> {
        Self::parse(entries)
    }
}

impl From<EventFilter> for Vec<String> {
    fn from(filter: EventFilter) -> Self {
        filter.entries
    }
}

/// Messages are meant for the API caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventFilterError {
    #[error("unknown event type {name:?}; valid values are: {valid}")]
    Unknown { name: String, valid: String },
    #[error("event filter entries must not be empty")]
    Empty,
    #[error("too many event filter entries: {count} (at most {max})")]
    TooMany { count: usize, max: usize },
}

fn family(name: &str) -> &str {
    name.split_once('.').map_or(name, |(family, _)| family)
}

fn is_valid_entry(entry: &str) -> bool {
    entry == WILDCARD
        || EVENT_CATALOGUE.contains(&entry)
        || entry
            .strip_suffix(".*")
            .is_some_and(|wanted| EVENT_CATALOGUE.iter().any(|name| family(name) == wanted))
}

fn entry_matches(entry: &str, event_type: &str) -> bool {
    match entry.strip_suffix(WILDCARD) {
        Some("") => true,
        // `prefix` keeps its dot ("run."), so `run.*` cannot match `runner.x`.
        Some(prefix) => event_type
            .strip_prefix(prefix)
            .is_some_and(|action| !action.is_empty()),
        None => entry == event_type,
    }
}

/// `*`, every `<family>.*`, then every catalogue name, comma-separated.
fn valid_entries() -> String {
    let mut valid = vec![WILDCARD.to_owned()];
    for name in EVENT_CATALOGUE {
        let wildcard = format!("{}.*", family(name));
        if !valid.contains(&wildcard) {
            valid.push(wildcard);
        }
    }
    valid.extend(EVENT_CATALOGUE.iter().map(|name| (*name).to_owned()));
    valid.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// `entries_matching` is the whole of `wants` for every filter that parses.
        #[test]
        fn entries_matching_agrees_with_wants(
            picks in proptest::collection::vec(0usize..64, 0..4),
            event in proptest::sample::select(test_event_types()),
        ) {
            let valid = valid_entries();
            let names: Vec<&str> = valid.split(", ").collect();
            let chosen: Vec<&str> = picks.iter().map(|i| names[i % names.len()]).collect();
            let Ok(filter) = EventFilter::parse(&chosen) else { return Ok(()) };
            let candidates = EventFilter::entries_matching(&event);
            let by_candidates =
                filter.as_slice().is_empty() || filter.iter().any(|e| candidates.iter().any(|c| c == e));
            proptest::prop_assert_eq!(filter.wants(&event), by_candidates, "{:?} {}", chosen, event);
        }
    }

    /// Catalogue names, names outside it, deeper names and near misses of every wildcard.
    fn test_event_types() -> Vec<String> {
        let mut types: Vec<String> = EVENT_CATALOGUE.iter().map(|n| (*n).to_owned()).collect();
        for name in EVENT_CATALOGUE {
            let family = family(name);
            types.push(format!("{family}.other"));
            types.push(format!("{family}.a.b"));
            types.push(format!("{family}x.y"));
            types.push(format!("{family}."));
            types.push(family.to_owned());
        }
        types.extend(["*".to_owned(), ".".to_owned(), "x".to_owned()]);
        types
    }

    fn entries(filter: &EventFilter) -> Vec<&str> {
        filter.iter().collect()
    }

    #[test]
    fn catalogue_names_are_unique_dotted_lowercase() {
        let mut seen = HashSet::new();
        for name in EVENT_CATALOGUE {
            let parts: Vec<&str> = name.split('.').collect();
            assert_eq!(parts.len(), 2, "{name}");
            assert!(
                parts
                    .iter()
                    .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase())),
                "{name}"
            );
            assert!(seen.insert(name), "duplicate {name}");
        }
    }

    #[test]
    fn parse_normalises_and_deduplicates() {
        let cases: &[(&[&str], &[&str])] = &[
            (&[], &[]),
            (&["run.started"], &["run.started"]),
            (
                &["  Run.Started ", "run.started", "RUN.STARTED"],
                &["run.started"],
            ),
            (
                &["job.failed", "run.*", "job.failed"],
                &["job.failed", "run.*"],
            ),
            (&["\t*\n"], &["*"]),
            (
                &["*", "run.*", "run.started"],
                &["*", "run.*", "run.started"],
            ),
            (
                &["Agent.*", "MESSAGE.*", "job.*"],
                &["agent.*", "message.*", "job.*"],
            ),
        ];
        for &(input, expected) in cases {
            let filter = EventFilter::parse(input).unwrap();
            assert_eq!(entries(&filter), expected, "{input:?}");
        }
        let all = EventFilter::parse(EVENT_CATALOGUE).unwrap();
        assert_eq!(entries(&all), EVENT_CATALOGUE);
    }

    #[test]
    fn parse_rejects_unknown_names() {
        let cases = [
            "bogus",
            "run",
            "run.",
            "runner.*",
            "*.started",
            "run.**",
            "**",
            ".*",
            "*.*",
            "run.started.extra",
            "agent. created",
            "agent..created",
            "run.*x",
            "\u{ff52}un.started", // fullwidth r
        ];
        for bad in cases {
            match EventFilter::parse(["run.started", bad]) {
                Err(EventFilterError::Unknown { name, .. }) => {
                    assert_eq!(name, bad.trim().to_ascii_lowercase(), "{bad:?}");
                }
                other => panic!("{bad:?}: expected Unknown, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_name_message_lists_valid_values() {
        let message = EventFilter::parse(["run.strated"]).unwrap_err().to_string();
        assert!(
            message
                .starts_with("unknown event type \"run.strated\"; valid values are: *, agent.*,")
        );
        for expected in ["run.*", "job.*", "message.*"]
            .iter()
            .chain(EVENT_CATALOGUE)
        {
            assert!(
                message.contains(expected),
                "{expected} missing from {message}"
            );
        }
    }

    #[test]
    fn parse_rejects_empty_entries() {
        for input in [
            &[""][..],
            &["   "],
            &["run.started", "\t\n"],
            &["", "bogus"],
        ] {
            assert_eq!(
                EventFilter::parse(input),
                Err(EventFilterError::Empty),
                "{input:?}"
            );
        }
    }

    #[test]
    fn entry_limit_counts_distinct_entries() {
        let distinct = |n: usize| (0..n).map(|i| format!("custom.e{i}")).collect::<Vec<_>>();
        assert_eq!(
            EventFilter::parse(distinct(MAX_EVENT_FILTERS + 1)),
            Err(EventFilterError::TooMany {
                count: MAX_EVENT_FILTERS + 1,
                max: MAX_EVENT_FILTERS
            })
        );
        // At the limit the size check passes and validation runs.
        assert!(matches!(
            EventFilter::parse(distinct(MAX_EVENT_FILTERS)),
            Err(EventFilterError::Unknown { .. })
        ));
        let repeated = vec![" run.started "; 10 * MAX_EVENT_FILTERS];
        assert_eq!(
            entries(&EventFilter::parse(repeated).unwrap()),
            ["run.started"]
        );
    }

    #[test]
    fn wants_table() {
        let cases: &[(&[&str], &str, bool)] = &[
            (&[], "run.started", true),
            (&[], "something.new", true),
            (&["*"], "job.failed", true),
            (&["run.*"], "run.started", true),
            (&["run.*"], "run.cancelled", true),
            (&["run.*"], "runner.x", false),
            (&["run.*"], "run", false),
            (&["run.*"], "run.", false),
            (&["run.*"], "job.failed", false),
            (&["run.started"], "run.started", true),
            (&["run.started"], "run.failed", false),
            (&["run.started"], "Run.Started", false),
            (&["run.started"], "run.started.extra", false),
            (&["job.failed", "agent.*"], "agent.deleted", true),
            (&["job.failed", "agent.*"], "job.failed", true),
            (&["job.failed", "agent.*"], "job.completed", false),
        ];
        for &(input, event, expected) in cases {
            let filter = EventFilter::parse(input).unwrap();
            assert_eq!(filter.wants(event), expected, "{input:?} wants {event}?");
        }
    }

    #[test]
    fn every_catalogue_name_is_wanted_by_itself_and_its_family() {
        for name in EVENT_CATALOGUE {
            let wildcard = format!("{}.*", family(name));
            for entry in [*name, wildcard.as_str()] {
                assert!(
                    EventFilter::parse([entry]).unwrap().wants(name),
                    "{entry} / {name}"
                );
            }
        }
    }

    #[test]
    fn is_all_table() {
        let cases: &[(&[&str], bool)] = &[
            (&[], true),
            (&["*"], true),
            (&["run.*", "*"], true),
            (&["run.*"], false),
            (&["agent.*", "message.*", "run.*", "job.*"], false),
        ];
        for &(input, expected) in cases {
            assert_eq!(
                EventFilter::parse(input).unwrap().is_all(),
                expected,
                "{input:?}"
            );
        }
    }

    #[test]
    fn serde_round_trips_through_parse() {
        let filter = EventFilter::parse(["run.*", "job.failed"]).unwrap();
        let json = serde_json::to_string(&filter).unwrap();
        assert_eq!(json, r#"["run.*","job.failed"]"#);
        assert_eq!(serde_json::from_str::<EventFilter>(&json).unwrap(), filter);

        let normalised: EventFilter =
            serde_json::from_str(r#"["Run.Started", " run.started"]"#).unwrap();
        assert_eq!(entries(&normalised), ["run.started"]);
        assert!(serde_json::from_str::<EventFilter>("[]").unwrap().is_all());

        for (bad, message) in [
            (r#"["bogus"]"#, "unknown event type \"bogus\""),
            (r#"[" "]"#, "must not be empty"),
            (r#""run.*""#, "invalid type"),
        ] {
            let err = serde_json::from_str::<EventFilter>(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{bad}: {err}");
        }
    }
}
