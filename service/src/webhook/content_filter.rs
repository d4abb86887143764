//! Content filters: an agent's webhook may receive only the events whose JSON payload matches a
//! small query, e.g. `{"data.run.status": {"$in": ["failed", "cancelled"]}}`.
//!
//! The language (a subset of MongoDB's, like Convoy's filters):
//!
//! * A filter is a JSON object. Each key is a dotted path into the payload (`data.run.status`;
//!   a segment that is a number indexes an array: `data.items.0.id`) and its value is either a
//!   literal, which the value at the path must equal, or an object of operators, which must all
//!   hold. Several keys: all must hold.
//! * Operators on a path: `$eq`, `$ne`, `$in`, `$nin` (an array), `$gt`, `$gte`, `$lt`, `$lte`
//!   (a number or a string: numbers compare with numbers, strings with strings, anything else
//!   is false), `$exists` (a boolean).
//! * Operators on filters, at the top or nested: `$and` and `$or` (non-empty arrays of filters),
//!   `$not` (a filter).
//! * Equality compares by value: `1 == 1.0`, objects and arrays element by element.
//! * A path that leads nowhere (a missing key, a non-object in between) has no value: equality,
//!   `$in` and the comparisons are false there, `$ne` and `$nin` (the negations of `$eq` and
//!   `$in`) true, `$exists: false` true.
//!
//! [`ContentFilter::parse`] validates: a filter that breaks a rule is refused with a
//! [`ContentFilterError`] naming where in the filter (`$or[1].data.count`) and why. Evaluation
//! ([`ContentFilter::matches`]) never fails and never panics, whatever shape the payload has.

use std::cmp::Ordering;
use std::fmt;

use serde_json::{Map, Number, Value};

/// The longest filter accepted, in bytes of its compact JSON: keeps the stored row and the
/// work per enqueue small.
pub const MAX_FILTER_BYTES: usize = 16 * 1024;
/// The deepest nesting of objects and arrays a filter document may have (the filter object
/// itself is level 1): bounds every recursion over a filter.
pub const MAX_FILTER_DEPTH: usize = 16;

/// A validated content filter. Keeps the JSON it was parsed from, which is what is stored and
/// shown.
///
/// ```
/// use agent_webhooks::webhook::content_filter::ContentFilter;
/// use serde_json::json;
///
/// let filter = ContentFilter::parse(&json!({"kind": "keep"})).unwrap();
/// assert!(filter.matches(&json!({"kind": "keep", "n": 1})));
/// assert!(!filter.matches(&json!({"kind": "drop"})));
/// assert!(!filter.matches(&json!([1, 2])));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ContentFilter {
    source: Value,
    root: Node,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    /// Every clause holds; each is named by its top-level key, for [`ContentFilter::explain`].
    All(Vec<(String, Node)>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Field {
        path: Vec<String>,
        ops: Vec<Op>,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Cmp(CmpOp, Value),
    Exists(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl CmpOp {
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            CmpOp::Gt => ordering == Ordering::Greater,
            CmpOp::Gte => ordering != Ordering::Less,
            CmpOp::Lt => ordering == Ordering::Less,
            CmpOp::Lte => ordering != Ordering::Greater,
        }
    }
}

/// Why a filter was refused, and where: `path` is the place inside the filter (`$or[1].data.count`,
/// empty for the filter as a whole).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if path.is_empty() { String::new() } else { format!("at `{path}`: ") })]
pub struct ContentFilterError {
    /// Where in the filter, as a dotted path with `[i]` for array items; empty for the whole.
    pub path: String,
    /// What is wrong there.
    pub reason: FilterRefusal,
}

/// The rule a refused filter breaks.
#[allow(missing_docs, reason = "each variant's message says what it means")]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterRefusal {
    #[error("a filter must be a JSON object")]
    NotAnObject,
    #[error("unknown operator `{0}`")]
    UnknownOperator(String),
    #[error("`{0}` needs an array")]
    NeedsArray(&'static str),
    #[error("`{0}` needs a non-empty array")]
    EmptyArray(&'static str),
    #[error("`{0}` needs a number or a string")]
    NeedsNumberOrString(&'static str),
    #[error("`$exists` needs true or false")]
    NeedsBool,
    #[error("`{0}` needs a filter (a JSON object)")]
    NeedsFilter(&'static str),
    #[error("an object of operators cannot also hold fields (`{0}`)")]
    MixedOperators(String),
    #[error("a path must be non-empty segments separated by dots, not `{0}`")]
    BadPath(String),
    #[error("nested deeper than {max} levels of objects and arrays")]
    TooDeep { max: usize },
    #[error("{size} bytes, more than the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
}

impl FilterRefusal {
    /// A stable slug for the rule, e.g. for an API problem's `rule`.
    pub fn rule(&self) -> &'static str {
        match self {
            FilterRefusal::NotAnObject => "object",
            FilterRefusal::UnknownOperator(_) => "known-operator",
            FilterRefusal::NeedsArray(_) => "array-operand",
            FilterRefusal::EmptyArray(_) => "non-empty",
            FilterRefusal::NeedsNumberOrString(_) => "number-or-string-operand",
            FilterRefusal::NeedsBool => "boolean-operand",
            FilterRefusal::NeedsFilter(_) => "filter-operand",
            FilterRefusal::MixedOperators(_) => "operators-or-fields",
            FilterRefusal::BadPath(_) => "path",
            FilterRefusal::TooDeep { .. } => "max-depth",
            FilterRefusal::TooLarge { .. } => "max-size",
        }
    }
}

impl ContentFilter {
    /// Validates `source` and compiles it; the first broken rule is the error.
    pub fn parse(source: &Value) -> Result<Self, ContentFilterError> {
        let whole = |reason| ContentFilterError {
            path: String::new(),
            reason,
        };
        // Depth first: it bounds the recursion of everything after it.
        if depth_exceeds(source, MAX_FILTER_DEPTH) {
            return Err(whole(FilterRefusal::TooDeep {
                max: MAX_FILTER_DEPTH,
            }));
        }
        let size = serde_json::to_vec(source).map_or(usize::MAX, |bytes| bytes.len());
        if size > MAX_FILTER_BYTES {
            return Err(whole(FilterRefusal::TooLarge {
                size,
                max: MAX_FILTER_BYTES,
            }));
        }
        let root = parse_filter(source, &Place::Root)?;
        Ok(ContentFilter {
            source: source.clone(),
            root,
        })
    }

    /// The JSON this filter was parsed from: what is stored and shown.
    pub fn as_json(&self) -> &Value {
        &self.source
    }

    /// Whether `payload` passes the filter.
    pub fn matches(&self, payload: &Value) -> bool {
        self.root.matches(payload)
    }

    /// `None` when `payload` passes, else the first top-level clause (in key order) that does
    /// not hold: its key, e.g. `data.run.status` or `$or`, for a dry run to say why.
    pub fn explain(&self, payload: &Value) -> Option<String> {
        match &self.root {
            Node::All(clauses) => clauses
                .iter()
                .find(|(_, node)| !node.matches(payload))
                .map(|(key, _)| key.clone()),
            node => (!node.matches(payload)).then(String::new),
        }
    }

    /// Whether the JSON text `payload` passes. Text that is not JSON (or nests deeper than the
    /// JSON reader allows) passes no filter.
    pub fn matches_bytes(&self, payload: &[u8]) -> bool {
        serde_json::from_slice::<Value>(payload).is_ok_and(|value| self.matches(&value))
    }
}

/// Where the parser is, to name it in an error without building strings on the happy path.
enum Place<'a> {
    Root,
    Key(&'a Place<'a>, &'a str),
    Index(&'a Place<'a>, usize),
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Root => Ok(()),
            Place::Key(Place::Root, key) => write!(f, "{key}"),
            Place::Key(parent, key) => write!(f, "{parent}.{key}"),
            Place::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

fn refuse<T>(place: &Place<'_>, reason: FilterRefusal) -> Result<T, ContentFilterError> {
    Err(ContentFilterError {
        path: place.to_string(),
        reason,
    })
}

/// Whether `value` nests more than `max` objects and arrays; looks no deeper than that.
fn depth_exceeds(value: &Value, max: usize) -> bool {
    let children: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Array(items) => Box::new(items.iter()),
        Value::Object(map) => Box::new(map.values()),
        _ => return false,
    };
    if max == 0 {
        return true;
    }
    let mut children = children;
    children.any(|child| depth_exceeds(child, max - 1))
}

fn parse_filter(value: &Value, place: &Place<'_>) -> Result<Node, ContentFilterError> {
    let Value::Object(map) = value else {
        return refuse(place, FilterRefusal::NotAnObject);
    };
    let mut clauses = Vec::with_capacity(map.len());
    for (key, operand) in map {
        let here = Place::Key(place, key);
        let node = match key.as_str() {
            "$and" | "$or" => {
                let op = if key == "$and" { "$and" } else { "$or" };
                let Value::Array(items) = operand else {
                    return refuse(&here, FilterRefusal::NeedsArray(op));
                };
                if items.is_empty() {
                    return refuse(&here, FilterRefusal::EmptyArray(op));
                }
                let nodes = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| parse_filter(item, &Place::Index(&here, i)))
                    .collect::<Result<Vec<_>, _>>()?;
                if op == "$and" {
                    Node::All(nodes.into_iter().map(|n| (String::new(), n)).collect())
                } else {
                    Node::Any(nodes)
                }
            }
            "$not" => {
                if !operand.is_object() {
                    return refuse(&here, FilterRefusal::NeedsFilter("$not"));
                }
                Node::Not(Box::new(parse_filter(operand, &here)?))
            }
            _ if key.starts_with('$') => {
                return refuse(place, FilterRefusal::UnknownOperator(key.clone()));
            }
            _ => Node::Field {
                path: parse_path(key, &here)?,
                ops: parse_ops(operand, &here)?,
            },
        };
        clauses.push((key.clone(), node));
    }
    Ok(Node::All(clauses))
}

fn parse_path(key: &str, place: &Place<'_>) -> Result<Vec<String>, ContentFilterError> {
    let segments: Vec<String> = key.split('.').map(str::to_owned).collect();
    if segments.iter().any(String::is_empty) {
        return refuse(place, FilterRefusal::BadPath(key.to_owned()));
    }
    Ok(segments)
}

/// The operators of one path: an object whose keys all start with `$`, or a literal to equal.
fn parse_ops(operand: &Value, place: &Place<'_>) -> Result<Vec<Op>, ContentFilterError> {
    let Value::Object(map) = operand else {
        return Ok(vec![Op::Eq(operand.clone())]);
    };
    let operators = map.keys().filter(|k| k.starts_with('$')).count();
    if operators == 0 {
        return Ok(vec![Op::Eq(operand.clone())]);
    }
    if operators < map.len() {
        let field = map.keys().find(|k| !k.starts_with('$')).cloned();
        return refuse(
            place,
            FilterRefusal::MixedOperators(field.unwrap_or_default()),
        );
    }
    map.iter()
        .map(|(op, arg)| parse_op(op, arg, place))
        .collect()
}

fn parse_op(op: &str, arg: &Value, place: &Place<'_>) -> Result<Op, ContentFilterError> {
    let list = |name: &'static str| match arg {
        Value::Array(items) => Ok(items.clone()),
        _ => refuse(place, FilterRefusal::NeedsArray(name)),
    };
    let ordered = |name: &'static str, cmp: CmpOp| match arg {
        Value::Number(_) | Value::String(_) => Ok(Op::Cmp(cmp, arg.clone())),
        _ => refuse(place, FilterRefusal::NeedsNumberOrString(name)),
    };
    match op {
        "$eq" => Ok(Op::Eq(arg.clone())),
        "$ne" => Ok(Op::Ne(arg.clone())),
        "$in" => list("$in").map(Op::In),
        "$nin" => list("$nin").map(Op::Nin),
        "$gt" => ordered("$gt", CmpOp::Gt),
        "$gte" => ordered("$gte", CmpOp::Gte),
        "$lt" => ordered("$lt", CmpOp::Lt),
        "$lte" => ordered("$lte", CmpOp::Lte),
        "$exists" => match arg {
            Value::Bool(b) => Ok(Op::Exists(*b)),
            _ => refuse(place, FilterRefusal::NeedsBool),
        },
        _ => refuse(place, FilterRefusal::UnknownOperator(op.to_owned())),
    }
}

impl Node {
    fn matches(&self, payload: &Value) -> bool {
        match self {
            Node::All(clauses) => clauses.iter().all(|(_, node)| node.matches(payload)),
            Node::Any(nodes) => nodes.iter().any(|node| node.matches(payload)),
            Node::Not(node) => !node.matches(payload),
            Node::Field { path, ops } => {
                let found = resolve(payload, path);
                ops.iter().all(|op| op.holds(found))
            }
        }
    }
}

impl Op {
    fn holds(&self, found: Option<&Value>) -> bool {
        let equals = |wanted: &Value| found.is_some_and(|v| same_value(v, wanted));
        match self {
            Op::Eq(wanted) => equals(wanted),
            Op::Ne(wanted) => !equals(wanted),
            Op::In(list) => list.iter().any(equals),
            Op::Nin(list) => !list.iter().any(equals),
            Op::Cmp(cmp, bound) => found
                .and_then(|v| order(v, bound))
                .is_some_and(|ordering| cmp.holds(ordering)),
            Op::Exists(wanted) => found.is_some() == *wanted,
        }
    }
}

/// The value at `path`, if the path leads somewhere: object keys, and array indexes for
/// segments that are numbers.
fn resolve<'v>(payload: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(payload, |value, segment| match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Equality by value, numbers numerically (`1 == 1.0`). Recursion is bounded by the filter's
/// side, which is at most [`MAX_FILTER_DEPTH`] deep.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => same_object(x, y),
        _ => a == b,
    }
}

fn same_object(x: &Map<String, Value>, y: &Map<String, Value>) -> bool {
    x.len() == y.len()
        && x.iter()
            .all(|(key, value)| y.get(key).is_some_and(|other| same_value(value, other)))
}

/// Numbers with numbers, strings with strings (by code point); `None` for anything else.
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Integers exactly, anything else as `f64` (JSON numbers are finite).
fn compare_numbers(x: &Number, y: &Number) -> Option<Ordering> {
    let int = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(x), int(y)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(value: Value) -> ContentFilter {
        ContentFilter::parse(&value).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    #[test]
    fn a_table_of_payloads_and_filters() {
        let run = json!({
            "kind": "keep",
            "data": {
                "run": {"status": "failed", "attempt": 3, "cost": 1.5, "tags": ["a", "b"]},
                "items": [{"id": "x"}, {"id": "y"}],
                "none": null
            }
        });
        let cases: &[(Value, bool)] = &[
            (json!({"kind": "keep"}), true),
            (json!({"kind": "drop"}), false),
            (json!({}), true),
            (json!({"data.run.status": "failed"}), true),
            (json!({"data.run.status": "FAILED"}), false),
            (json!({"data.run.attempt": 3.0}), true),
            (json!({"data.run.attempt": {"$eq": 3}}), true),
            (json!({"data.run.attempt": {"$ne": 3}}), false),
            (json!({"data.run.tags": ["a", "b"]}), true),
            (json!({"data.run.tags": ["b", "a"]}), false),
            (json!({"data.items.1.id": "y"}), true),
            (json!({"data.items.2.id": {"$exists": true}}), false),
            (json!({"data.none": null}), true),
            (json!({"data.none": {"$exists": true}}), true),
            (json!({"data.missing": null}), false),
            (json!({"data.missing": {"$exists": false}}), true),
            (json!({"data.missing": {"$ne": 1}}), true),
            (json!({"data.missing": {"$nin": [1]}}), true),
            (json!({"data.missing": {"$gt": 1}}), false),
            (json!({"data.run.status.deeper": {"$exists": false}}), true),
            (
                json!({"data.run.status": {"$in": ["failed", "cancelled"]}}),
                true,
            ),
            (json!({"data.run.status": {"$nin": ["failed"]}}), false),
            (json!({"data.run.attempt": {"$gt": 2, "$lte": 3}}), true),
            (json!({"data.run.attempt": {"$gte": 3.5}}), false),
            (json!({"data.run.cost": {"$lt": 2}}), true),
            (json!({"data.run.status": {"$gt": "a"}}), true),
            // A number is never compared with a string.
            (json!({"data.run.attempt": {"$gt": "1"}}), false),
            (json!({"data.run.status": {"$lt": 10}}), false),
            (
                json!({"$or": [{"kind": "drop"}, {"data.run.attempt": 3}]}),
                true,
            ),
            (
                json!({"$or": [{"kind": "drop"}, {"data.run.attempt": 4}]}),
                false,
            ),
            (
                json!({"$and": [{"kind": "keep"}, {"data.run.cost": 1.5}]}),
                true,
            ),
            (json!({"$not": {"kind": "keep"}}), false),
            (json!({"$not": {"$not": {"kind": "keep"}}}), true),
            (json!({"kind": "keep", "data.run.status": "ok"}), false),
            (json!({"data.run": {"status": "failed"}}), false),
        ];
        for (f, expected) in cases {
            assert_eq!(filter(f.clone()).matches(&run), *expected, "{f}");
        }
    }

    #[test]
    fn the_keep_example() {
        let f = filter(json!({"kind": "keep"}));
        assert!(f.matches(&json!({"kind": "keep"})));
        assert!(!f.matches(&json!({"kind": "Keep"})));
        assert!(!f.matches(&json!({"other": "keep"})));
        assert!(!f.matches(&json!("keep")));
        assert!(f.matches_bytes(br#"{"kind":"keep"}"#));
        assert!(!f.matches_bytes(b"not json"));
    }

    #[test]
    fn numbers_compare_numerically_also_past_f64() {
        let big = json!({"n": u64::MAX});
        assert!(filter(json!({"n": {"$gt": i64::MAX}})).matches(&big));
        assert!(!filter(json!({"n": {"$gt": u64::MAX}})).matches(&big));
        assert!(filter(json!({"n": {"$lt": -1}})).matches(&json!({"n": -2.5})));
        assert!(filter(json!({"n": 1})).matches(&json!({"n": 1.0})));
        assert!(filter(json!({"n": {"$in": [2, 1.0]}})).matches(&json!({"n": 1})));
    }

    #[test]
    fn explain_names_the_first_failing_top_level_clause() {
        let f = filter(json!({"a": 1, "b": {"$gt": 5}, "$or": [{"c": 1}]}));
        assert_eq!(f.explain(&json!({"a": 1, "b": 6, "c": 1})), None);
        assert_eq!(f.explain(&json!({"a": 1, "b": 6})).as_deref(), Some("$or"));
        // Keys in their sorted order: `$or` before `a` and `b`.
        assert_eq!(f.explain(&json!({"a": 1, "b": 2})).as_deref(), Some("$or"));
        assert_eq!(
            f.explain(&json!({"a": 1, "b": 2, "c": 1})).as_deref(),
            Some("b")
        );
    }

    #[test]
    fn refusals_name_the_place_and_the_rule() {
        let cases: &[(Value, &str)] = &[
            (json!([]), "a filter must be a JSON object"),
            (
                json!({"a": {"$regex": "x"}}),
                "at `a`: unknown operator `$regex`",
            ),
            (json!({"$where": "x"}), "unknown operator `$where`"),
            (
                json!({"$or": [{"a": 1}, {"data.count": {"$gt": true}}]}),
                "at `$or[1].data.count`: `$gt` needs a number or a string",
            ),
            (json!({"a": {"$in": 1}}), "at `a`: `$in` needs an array"),
            (
                json!({"$and": []}),
                "at `$and`: `$and` needs a non-empty array",
            ),
            (json!({"$or": {}}), "at `$or`: `$or` needs an array"),
            (
                json!({"$not": [1]}),
                "at `$not`: `$not` needs a filter (a JSON object)",
            ),
            (
                json!({"$and": [1]}),
                "at `$and[0]`: a filter must be a JSON object",
            ),
            (
                json!({"a": {"$exists": 1}}),
                "at `a`: `$exists` needs true or false",
            ),
            (
                json!({"a": {"$eq": 1, "b": 2}}),
                "at `a`: an object of operators cannot also hold fields (`b`)",
            ),
            (
                json!({"a..b": 1}),
                "at `a..b`: a path must be non-empty segments separated by dots, not `a..b`",
            ),
            (
                json!({"$not": {"$or": [{"x": {"$lt": [1]}}]}}),
                "at `$not.$or[0].x`: `$lt` needs a number or a string",
            ),
        ];
        for (f, message) in cases {
            let err = ContentFilter::parse(f).unwrap_err();
            assert_eq!(err.to_string(), *message, "{f}");
        }
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let mut deep = json!({"a": 1});
        for _ in 0..MAX_FILTER_DEPTH {
            deep = json!({ "$not": deep });
        }
        let err = ContentFilter::parse(&deep).unwrap_err();
        assert_eq!(err.reason, FilterRefusal::TooDeep { max: 16 });
        assert_eq!(
            err.to_string(),
            "nested deeper than 16 levels of objects and arrays"
        );

        let mut fits = json!({"a": 1});
        for _ in 0..MAX_FILTER_DEPTH - 2 {
            fits = json!({ "$not": fits });
        }
        ContentFilter::parse(&fits).unwrap();

        let big = json!({"a": {"$in": vec!["x".repeat(100); 200]}});
        let err = ContentFilter::parse(&big).unwrap_err();
        assert!(
            matches!(err.reason, FilterRefusal::TooLarge { max: 16384, .. }),
            "{err}"
        );

        // A literal nested past any limit is refused without recursing through it.
        let mut literal = json!(1);
        for _ in 0..100_000 {
            literal = Value::Array(vec![literal]);
        }
        // Not `json!`, which would copy the literal recursively.
        let f = Value::Object(Map::from_iter([("a".to_owned(), literal)]));
        assert!(matches!(
            ContentFilter::parse(&f).unwrap_err().reason,
            FilterRefusal::TooDeep { .. }
        ));
        // Dropping 100 000 nested arrays recursively would overflow the stack: leak it.
        std::mem::forget(f);
    }

    /// Any JSON value, up to a few levels deep.
    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|n| json!(n)),
            "[a-c]{0,2}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c$.0-1]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Filters that parse: paths over the same small key set as the payloads.
    fn valid_filter() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let path = "[a-c]{1,2}(\\.[a-c0-1]{1,2}){0,2}";
        let scalar = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..3).prop_map(|n| json!(n)),
            "[a-c]{0,2}".prop_map(Value::String),
        ];
        let ordered = prop_oneof![
            (-3i64..3).prop_map(|n| json!(n)),
            (-3.0f64..3.0).prop_map(|n| json!(n)),
            "[a-c]{0,2}".prop_map(Value::String),
        ];
        let op = prop_oneof![
            scalar.clone().prop_map(|v| json!({ "$eq": v })),
            scalar.clone().prop_map(|v| json!({ "$ne": v })),
            proptest::collection::vec(scalar.clone(), 0..3).prop_map(|v| json!({ "$in": v })),
            proptest::collection::vec(scalar.clone(), 0..3).prop_map(|v| json!({ "$nin": v })),
            ordered.clone().prop_map(|v| json!({ "$gt": v })),
            ordered.clone().prop_map(|v| json!({ "$gte": v })),
            ordered.clone().prop_map(|v| json!({ "$lt": v })),
            ordered.prop_map(|v| json!({ "$lte": v })),
            any::<bool>().prop_map(|b| json!({ "$exists": b })),
            scalar,
        ];
        let field = (path, op).prop_map(|(p, op)| {
            let mut map = Map::new();
            map.insert(p, op);
            Value::Object(map)
        });
        field.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({ "$and": v })),
                proptest::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({ "$or": v })),
                inner.prop_map(|v| json!({ "$not": v })),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(512))]

        /// Any JSON parses or is refused, and a filter that parses evaluates any payload.
        #[test]
        fn parsing_and_evaluation_never_panic(f in json_value(), payload in json_value()) {
            if let Ok(filter) = ContentFilter::parse(&f) {
                let _ = filter.matches(&payload);
                let _ = filter.explain(&payload);
            }
        }

        /// `$not` inverts, on every payload; a generated filter always parses.
        #[test]
        fn not_inverts(f in valid_filter(), payload in json_value()) {
            let filter = ContentFilter::parse(&f).unwrap();
            let negated = ContentFilter::parse(&json!({ "$not": f })).unwrap();
            proptest::prop_assert_eq!(negated.matches(&payload), !filter.matches(&payload));
            proptest::prop_assert_eq!(filter.explain(&payload).is_none(), filter.matches(&payload));
        }
    }
}
