//! Registry metadata and filters: `serde_json::Value` to and from the wire's
//! typed `prism.v1.Value` (integers and floats stay distinct: `json!(1)`
//! travels as an integer, `json!(1.0)` as a double).

use std::collections::HashMap;

use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};
use crate::pb;
use crate::pb::value::Kind;

/// Containers (maps and lists) metadata or a filter may nest, the top-level
/// map counting as 1: above what a pattern allows (the built-in one: 16 by
/// default) and within what protobuf decoding accepts back.
const MAX_DEPTH: usize = 32;

/// A metadata or filter argument (a JSON object; `null` for none) as the
/// wire's map; `what` names it in errors.
pub(crate) fn to_fields(value: Value, what: &str) -> Result<HashMap<String, pb::Value>> {
    match value {
        Value::Null => Ok(HashMap::new()),
        Value::Object(map) => fields(map, what, 1),
        other => Err(Error::invalid(format!(
            "{what} must be a JSON object (or null for none), not {}",
            kind_name(&other)
        ))),
    }
}

fn fields(map: Map<String, Value>, path: &str, depth: usize) -> Result<HashMap<String, pb::Value>> {
    if depth > MAX_DEPTH {
        return Err(Error::invalid(format!(
            "{path} nests deeper than {MAX_DEPTH} levels"
        )));
    }
    map.into_iter()
        .map(|(key, value)| {
            let value = to_value(value, &format!("{path}[{key:?}]"), depth)?;
            Ok((key, value))
        })
        .collect()
}

fn to_value(value: Value, path: &str, depth: usize) -> Result<pb::Value> {
    let kind = match value {
        Value::Null => Kind::NullValue(pb::NullValue::NullValue.into()),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => number(&n, path)?,
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => {
            if depth + 1 > MAX_DEPTH {
                return Err(Error::invalid(format!(
                    "{path} nests deeper than {MAX_DEPTH} levels"
                )));
            }
            let values = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| to_value(item, &format!("{path}[{i}]"), depth + 1))
                .collect::<Result<_>>()?;
            Kind::ListValue(pb::ListValue { values })
        }
        Value::Object(map) => Kind::MapValue(pb::MapValue {
            fields: fields(map, path, depth + 1)?,
        }),
    };
    Ok(pb::Value { kind: Some(kind) })
}

fn number(n: &Number, path: &str) -> Result<Kind> {
    if let Some(i) = n.as_i64() {
        return Ok(Kind::IntValue(i));
    }
    if n.is_u64() {
        return Err(Error::invalid(format!(
            "{path} = {n} does not fit in a 64-bit signed integer"
        )));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() => Ok(Kind::DoubleValue(f)),
        _ => Err(Error::invalid(format!(
            "{path} = {n} is not a finite number"
        ))),
    }
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The wire's typed map back as a JSON object.
pub(crate) fn from_map(map: pb::MapValue) -> Value {
    Value::Object(
        map.fields
            .into_iter()
            .map(|(key, value)| (key, from_value(value)))
            .collect(),
    )
}

fn from_value(value: pb::Value) -> Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::IntValue(i)) => Value::from(i),
        // JSON has no NaN or infinity; a server never sends them.
        Some(Kind::DoubleValue(f)) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.into_iter().map(from_value).collect())
        }
        Some(Kind::MapValue(map)) => from_map(map),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_values_round_trip() {
        let metadata = json!({
            "floor": 1, "ratio": 1.0, "name": "s", "on": true, "none": null,
            "tags": ["a", 2], "location": {"building": "HQ", "level": -3},
        });
        let wire = to_fields(metadata.clone(), "metadata");
        let Ok(wire) = wire else {
            unreachable!("valid metadata: {wire:?}")
        };
        assert_eq!(
            wire.get("floor").and_then(|v| v.kind.clone()),
            Some(Kind::IntValue(1))
        );
        assert_eq!(
            wire.get("ratio").and_then(|v| v.kind.clone()),
            Some(Kind::DoubleValue(1.0))
        );
        let back = from_map(pb::MapValue { fields: wire });
        assert_eq!(back, metadata);
        assert!(back["ratio"].is_f64() && back["floor"].is_i64());
    }

    #[test]
    fn what_the_wire_cannot_carry_is_refused() {
        assert!(to_fields(Value::Null, "filter").is_ok_and(|f| f.is_empty()));
        assert!(matches!(
            to_fields(json!([1]), "metadata"),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            to_fields(json!({"big": u64::MAX}), "metadata"),
            Err(Error::InvalidArgument { .. })
        ));
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!({ "d": deep });
        }
        let err = to_fields(deep, "metadata");
        assert!(
            matches!(err, Err(Error::InvalidArgument { message }) if message.contains("deeper"))
        );
    }
}
