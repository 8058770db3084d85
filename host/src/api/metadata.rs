//! Typed metadata on the wire (`prism.v1.Value`) to and from the JSON text
//! patterns exchange with the host (WIT has no recursive types). Integers
//! stay integers and floats floats through the round trip: serde_json
//! writes a float with a fraction or exponent, and reads it back as one.

use std::collections::HashMap;

use serde_json::{Map, Number};
use tonic::Status;

use crate::pb;
use crate::pb::value::Kind;

/// Deepest nesting accepted from a client, before any pattern limit.
const MAX_DEPTH: usize = 64;

/// A metadata map as JSON text.
pub fn map_to_json(map: &pb::MapValue, what: &str) -> Result<String, Status> {
    let value = fields_to_json(&map.fields, what, 0)?;
    serde_json::to_string(&value).map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

/// A filter (a map at the top level) as JSON text; empty for no filter.
pub fn filter_to_json(filter: &HashMap<String, pb::Value>) -> Result<String, Status> {
    if filter.is_empty() {
        return Ok(String::new());
    }
    let value = fields_to_json(filter, "filter", 0)?;
    serde_json::to_string(&value).map_err(|e| Status::invalid_argument(format!("filter: {e}")))
}

fn fields_to_json(
    fields: &HashMap<String, pb::Value>,
    path: &str,
    depth: usize,
) -> Result<serde_json::Value, Status> {
    let mut map = Map::new();
    for (key, value) in fields {
        let path = format!("{path}.{}", short(key));
        map.insert(key.clone(), to_json(value, &path, depth + 1)?);
    }
    Ok(serde_json::Value::Object(map))
}

fn to_json(value: &pb::Value, path: &str, depth: usize) -> Result<serde_json::Value, Status> {
    if depth > MAX_DEPTH {
        return Err(Status::invalid_argument(format!(
            "{path}: nested deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::IntValue(i)) => serde_json::Value::Number((*i).into()),
        Some(Kind::DoubleValue(f)) => match Number::from_f64(*f) {
            Some(n) => serde_json::Value::Number(n),
            None => {
                return Err(Status::invalid_argument(format!(
                    "{path}: {f} is not a finite number"
                )));
            }
        },
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => serde_json::Value::Array(
            list.values
                .iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &format!("{path}[{i}]"), depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::MapValue(map)) => fields_to_json(&map.fields, path, depth)?,
    })
}

/// Metadata a pattern returned (JSON text) as a typed map; a pattern that
/// returns something else is a pattern bug, reported as INTERNAL.
pub fn json_to_map(text: &str) -> Result<pb::MapValue, Status> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        Status::internal(format!(
            "the pattern returned metadata that is not JSON: {e}"
        ))
    })?;
    match from_json(value) {
        pb::Value {
            kind: Some(Kind::MapValue(map)),
        } => Ok(map),
        _ => Err(Status::internal(
            "the pattern returned metadata that is not a JSON object",
        )),
    }
}

fn from_json(value: serde_json::Value) -> pb::Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(pb::NullValue::NullValue as i32),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntValue(i),
            None => Kind::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(pb::ListValue {
            values: items.into_iter().map(from_json).collect(),
        }),
        serde_json::Value::Object(map) => Kind::MapValue(pb::MapValue {
            fields: map.into_iter().map(|(k, v)| (k, from_json(v))).collect(),
        }),
    };
    pb::Value { kind: Some(kind) }
}

/// Keys in error paths: at most 64 characters.
fn short(key: &str) -> String {
    crate::text::shorten(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(kind: Kind) -> pb::Value {
        pb::Value { kind: Some(kind) }
    }

    #[test]
    fn types_survive_the_round_trip() -> Result<(), Status> {
        let map = pb::MapValue {
            fields: HashMap::from([
                ("int".to_string(), v(Kind::IntValue(1))),
                ("float".to_string(), v(Kind::DoubleValue(1.0))),
                ("tenth".to_string(), v(Kind::DoubleValue(0.1))),
                ("big".to_string(), v(Kind::IntValue(i64::MAX))),
                ("null".to_string(), v(Kind::NullValue(0))),
                ("flag".to_string(), v(Kind::BoolValue(true))),
                (
                    "list".to_string(),
                    v(Kind::ListValue(pb::ListValue {
                        values: vec![v(Kind::StringValue("ü".into())), v(Kind::IntValue(-3))],
                    })),
                ),
            ]),
        };
        let json = map_to_json(&map, "metadata")?;
        assert!(json.contains("\"float\":1.0"), "{json}");
        assert!(json.contains("\"int\":1,"), "{json}");
        assert_eq!(json_to_map(&json)?, map);
        Ok(())
    }

    #[test]
    fn non_finite_numbers_are_refused_naming_the_path() {
        let map = pb::MapValue {
            fields: HashMap::from([(
                "a".to_string(),
                v(Kind::MapValue(pb::MapValue {
                    fields: HashMap::from([("b".to_string(), v(Kind::DoubleValue(f64::NAN)))]),
                })),
            )]),
        };
        let err = map_to_json(&map, "metadata")
            .err()
            .map(|s| s.message().to_string());
        assert_eq!(
            err.as_deref(),
            Some("metadata.a.b: NaN is not a finite number")
        );
    }
}
