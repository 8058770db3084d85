//! JSON at the pattern's edges: identity metadata in, filters in, message metadata out.

use serde_json::Value;

use crate::filter::{self, Filter};
use crate::limits::Limits;
use crate::prism::pattern::types::PatternError;

/// The message metadata key that tells a listener which identity a multicast
/// was addressed to; the pattern sets it, a caller cannot.
pub const IDENTITY_KEY: &str = "prism-registry-identity";

/// Checks registration metadata (JSON text) and returns the form to store:
/// canonical JSON (no whitespace, keys sorted), which is also what the size
/// limit measures, so spacing in the request neither costs nor saves bytes.
pub fn canonical(text: &str, limits: &Limits) -> Result<String, PatternError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| invalid(format!("metadata is not valid JSON: {e}")))?;
    match filter::validate_metadata(&value, limits.max_metadata_depth) {
        Ok(()) => {}
        // Only the depth complaint is about a setting; "must be a map" is not.
        Err(e) if value.is_object() => {
            return Err(invalid(format!("{e} (setting max_metadata_depth)")));
        }
        Err(e) => return Err(invalid(e)),
    }
    let canonical = serde_json::to_string(&value)
        .map_err(|e| PatternError::Internal(format!("cannot re-encode metadata: {e}")))?;
    if canonical.len() > limits.max_metadata_bytes {
        return Err(invalid(format!(
            "metadata is {} bytes as compact JSON; the limit is {} bytes (setting max_metadata_bytes)",
            canonical.len(),
            limits.max_metadata_bytes
        )));
    }
    Ok(canonical)
}

/// Parses a request's filter; empty (or blank) text selects every identity.
pub fn parse_filter(text: &str, limits: &Limits) -> Result<Filter, PatternError> {
    let text = text.trim();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).map_err(|e| invalid(format!("filter is not valid JSON: {e}")))?
    };
    Filter::parse(&value, &limits.filter_limits()).map_err(|e| invalid(e.to_string()))
}

/// Metadata of the message multicast to `identity`: the caller's pairs plus
/// [`IDENTITY_KEY`], sorted by key (stably, so repeated keys keep their order).
/// A caller's own `IDENTITY_KEY` pair is dropped so a listener can trust it.
pub fn for_identity(request: &[(String, String)], identity: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = request
        .iter()
        .filter(|(k, _)| k != IDENTITY_KEY)
        .cloned()
        .collect();
    pairs.push((IDENTITY_KEY.to_string(), identity.to_string()));
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
}

/// Source bytes of metadata kept parsed per instance. Parsing dominates a
/// scan (every enumerate and multicast reads every identity), while
/// metadata rarely changes: a scan over the same registry then only hashes
/// and compares text. Parsed values take a few times their source size, so
/// this keeps an instance well inside its memory limit.
const PARSED_CACHE_BYTES: usize = 2 << 20;

/// Metadata text → its parse (None: not JSON). Instances are pooled and
/// single-threaded, so a thread-local is this instance's own.
#[derive(Default)]
struct ParsedCache {
    map: std::collections::HashMap<String, Option<Value>>,
    bytes: usize,
}

thread_local! {
    static PARSED: std::cell::RefCell<ParsedCache> = std::cell::RefCell::new(ParsedCache::default());
}

/// Whether a stored record's metadata satisfies `filter`. Metadata the
/// pattern did not write (not JSON) never matches; it must not trap a scan.
pub fn matches(filter: &Filter, stored: &str) -> bool {
    PARSED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(parsed) = cache.map.get(stored) {
            return parsed.as_ref().is_some_and(|md| filter.matches(md));
        }
        let parsed = serde_json::from_str::<Value>(stored).ok();
        let matched = parsed.as_ref().is_some_and(|md| filter.matches(md));
        if cache.bytes + stored.len() > PARSED_CACHE_BYTES {
            // Simplest bound: start over (a registry this large re-warms).
            cache.map.clear();
            cache.bytes = 0;
        }
        cache.bytes += stored.len();
        cache.map.insert(stored.to_string(), parsed);
        matched
    })
}

fn invalid(message: String) -> PatternError {
    PatternError::InvalidArgument(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: PatternError) -> String {
        match e {
            PatternError::InvalidArgument(m) => m,
            other => panic!("expected invalid-argument, got {other:?}"),
        }
    }

    #[test]
    fn canonicalises() {
        let l = Limits::default();
        assert_eq!(canonical("{}", &l).unwrap(), "{}");
        assert_eq!(
            canonical(" {\n \"type\" : \"sensor\", \"floor\": 1 }\n", &l).unwrap(),
            r#"{"floor":1,"type":"sensor"}"#
        );
        // integers and floats keep their JSON spelling, so 1 and 1.0 stay distinct
        assert_eq!(
            canonical(
                r#"{"i": 1, "f": 1.0, "g": 0.1, "big": 18446744073709551615, "neg": -5}"#,
                &l
            )
            .unwrap(),
            r#"{"big":18446744073709551615,"f":1.0,"g":0.1,"i":1,"neg":-5}"#
        );
        // nested maps are sorted too; lists keep their order
        assert_eq!(
            canonical(
                r#"{"b": {"z": [3, 1, {"y": null, "x": true}], "a": "é\u00e9"}}"#,
                &l
            )
            .unwrap(),
            r#"{"b":{"a":"éé","z":[3,1,{"x":true,"y":null}]}}"#
        );
        // a repeated key keeps its last value
        assert_eq!(canonical(r#"{"a": 1, "a": 2}"#, &l).unwrap(), r#"{"a":2}"#);
    }

    #[test]
    fn refuses_what_is_not_a_json_map() {
        let l = Limits::default();
        for bad in [
            "",
            "   ",
            "{",
            "{'a': 1}",
            "{\"a\": 1} x",
            "nul",
            "{\"a\": NaN}",
        ] {
            let e = message(canonical(bad, &l).unwrap_err());
            assert!(
                e.starts_with("metadata is not valid JSON: "),
                "{bad:?}: {e}"
            );
        }
        for (bad, found) in [
            ("[]", "list"),
            ("null", "null"),
            ("\"x\"", "string"),
            ("1", "number"),
            ("true", "bool"),
        ] {
            assert_eq!(
                message(canonical(bad, &l).unwrap_err()),
                format!("metadata must be a map, found {found}")
            );
        }
    }

    #[test]
    fn depth_limit() {
        let l = Limits {
            max_metadata_depth: 2,
            ..Limits::default()
        };
        assert!(canonical(r#"{"a": {"b": 1}, "c": [1, 2]}"#, &l).is_ok());
        let e = message(canonical(r#"{"a": {"b": [1]}}"#, &l).unwrap_err());
        assert_eq!(
            e,
            "metadata nests deeper than 2 levels (setting max_metadata_depth)"
        );
        // far deeper than serde_json's own recursion limit: an error, not a crash
        let deep = format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000));
        assert!(canonical(&deep, &Limits::default()).is_err());
    }

    #[test]
    fn size_limit_measures_the_canonical_form() {
        let l = Limits {
            max_metadata_bytes: 9,
            ..Limits::default()
        };
        // {"a":123} is 9 bytes however it was spaced
        assert_eq!(canonical("{ \"a\" :   123 }", &l).unwrap(), r#"{"a":123}"#);
        let e = message(canonical(r#"{"a":1234}"#, &l).unwrap_err());
        assert_eq!(
            e,
            "metadata is 10 bytes as compact JSON; the limit is 9 bytes (setting max_metadata_bytes)"
        );
        // escapes count as written in the stored form
        let l = Limits {
            max_metadata_bytes: 12,
            ..Limits::default()
        };
        assert!(canonical(r#"{"a":"\n\n"}"#, &l).is_ok());
        assert!(canonical(r#"{"a":"\n\n\n"}"#, &l).is_err());
    }

    #[test]
    fn filters() {
        let l = Limits::default();
        for all in ["", "  ", "{}", "null", " {} ", "{\"$and\": []}"] {
            assert!(parse_filter(all, &l).unwrap().is_all(), "{all:?}");
        }
        let f = parse_filter(r#"{"type": "sensor", "floor.gte": 2}"#, &l).unwrap();
        assert!(!f.is_all());
        assert!(matches(&f, r#"{"type":"sensor","floor":3}"#));
        assert!(!matches(&f, r#"{"type":"sensor","floor":1}"#));
        // stored metadata that is not JSON never matches, even `$not`
        let not = parse_filter(r#"{"$not": {"a": 1}}"#, &l).unwrap();
        assert!(matches(&not, "{}"));
        assert!(!matches(&not, "not json"));
        assert!(!matches(&not, ""));

        let e = message(parse_filter("{\"a\": ", &l).unwrap_err());
        assert!(e.starts_with("filter is not valid JSON: "), "{e}");
        let e = message(parse_filter(r#"{"floor.gte": true}"#, &l).unwrap_err());
        assert_eq!(
            e,
            "filter key 'floor.gte': needs a number or a string, found bool"
        );
        let e = message(parse_filter(r#"{"$or": {"a": 1}}"#, &l).unwrap_err());
        assert!(e.starts_with("filter key '$or': "), "{e}");
        let e = message(parse_filter("[1]", &l).unwrap_err());
        assert!(e.starts_with("filter key '$': "), "{e}");
    }

    #[test]
    fn filter_limits_come_from_the_settings() {
        let l = Limits {
            max_filter_depth: 1,
            max_filter_conditions: 3,
            ..Limits::default()
        };
        assert!(parse_filter(r#"{"$not": {"a": 1}}"#, &l).is_ok());
        let e = message(parse_filter(r#"{"$not": {"$not": {"a": 1}}}"#, &l).unwrap_err());
        assert!(e.contains("nests deeper than 1 levels"), "{e}");
        assert!(parse_filter(r#"{"a": 1, "b": 2, "c": 3}"#, &l).is_ok());
        let e = message(parse_filter(r#"{"a": 1, "b": 2, "c": 3, "d": 4}"#, &l).unwrap_err());
        assert!(e.contains("more than 3 conditions"), "{e}");
    }

    #[test]
    fn message_metadata() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            for_identity(&[], "sensor-1"),
            pairs(&[(IDENTITY_KEY, "sensor-1")])
        );
        assert_eq!(
            for_identity(
                &pairs(&[("z", "1"), ("a", "2"), ("q", "3"), ("a", "0")]),
                "s"
            ),
            pairs(&[
                ("a", "2"),
                ("a", "0"),
                (IDENTITY_KEY, "s"),
                ("q", "3"),
                ("z", "1")
            ])
        );
        // a caller cannot choose the identity a listener sees
        assert_eq!(
            for_identity(&pairs(&[(IDENTITY_KEY, "spoofed"), ("x", "y")]), "real"),
            pairs(&[(IDENTITY_KEY, "real"), ("x", "y")])
        );
    }
}
