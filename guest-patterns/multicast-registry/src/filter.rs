//! The Multicast Registry filter language: parse a JSON filter once into a
//! [`Filter`], then evaluate it against many identities' metadata.
//!
//! # Grammar
//!
//! A filter is a JSON map whose entries must all hold (an empty map, or
//! `null`, matches everything):
//!
//! | entry                          | holds when                                           |
//! |--------------------------------|------------------------------------------------------|
//! | `"field": value`               | the field equals `value` (type-aware, see below)     |
//! | `"field": "*"`                 | the field is present (any value, including `null`)   |
//! | `"field.eq": value`            | the field equals `value` (`"*"` is literal here)     |
//! | `"field.ne": value`            | the field is missing or does not equal `value`       |
//! | `"field.lt"` / `lte` / `gt` / `gte` | number vs number or string vs string (byte order) |
//! | `"field.startswith": "s"`      | string field starting with `s`                       |
//! | `"field.endswith": "s"`        | string field ending with `s`                         |
//! | `"field.contains": value`      | string field containing the string `value`, or list field with an element equal to `value` |
//! | `"field.in": [v, ..]`          | the field equals one of the listed values            |
//! | `"field.exists": true/false`   | the field is present / missing                       |
//! | `"field.regex": "re"`          | string field matched (unanchored) by the Rust `regex` pattern `re` |
//! | `"field.type": "t"`            | `t` is one of `string number bool null list map`     |
//! | `"$and": [filter, ..]`         | every filter holds (`[]` is true)                    |
//! | `"$or": [filter, ..]`          | some filter holds (`[]` is false)                    |
//! | `"$not": filter`               | the filter does not hold                             |
//!
//! ## Keys and paths
//!
//! A key is split on `.`. Its **last** segment is an operator only when it
//! is one of the known operator names above; otherwise the whole key is a
//! path, so `"location.building": "HQ"` compares the nested field
//! `location → building`. Consequently a misspelt operator
//! (`"floor.gtee": 3`) is simply a path that does not exist; there is no way
//! to tell the two apart. A field whose own name is an operator name (a map
//! key literally called `gte`, say) can only be addressed through an operator
//! key: `"limits.gte.eq": 5`, whereas `"limits.gte": 5` means "limits ≥ 5".
//!
//! Each path segment indexes into a JSON map; a segment applied to a
//! non-map, or naming an absent key, makes the field *missing*. Empty
//! segments (`"a..b"`, `".a"`, `"a."`, `""`) are an error.
//!
//! Keys starting with `$` are reserved: `$and`, `$or` and `$not` are the only
//! ones, and any other (`$nor`, `$xor`, `a.$x`, `$x.y`) is an
//! "unknown operator" error. A metadata field whose name starts with `$`
//! can therefore only be reached when it is not the first or last segment.
//!
//! A plain `"field": {..}` compares the field with that whole map (key sets
//! equal, values equal); it is not a nested filter — use dotted paths.
//!
//! ## Equality
//!
//! Numbers compare by numeric value whatever their JSON spelling (`1 == 1.0`;
//! integers compare exactly, even beyond 2^53, and integer-vs-float
//! comparisons are exact too). Strings compare by bytes, booleans and `null`
//! as themselves, lists element-wise and maps by equal key sets with equal
//! values, recursively with the same rule. Values of different JSON types are
//! never equal (`1 != "1"`, `true != 1`, `null != false`).
//!
//! ## Missing fields
//!
//! On a missing field only `ne`, `exists: false` and conditions wrapped in
//! `$not` can hold. Ordering operators, `startswith`, `endswith`, `contains`,
//! `regex` and `type` are false whenever the field's type does not fit.
//!
//! ## Errors
//!
//! A malformed filter is rejected by [`Filter::parse`] with a [`FilterError`]
//! whose `key` is the offending key as written (the innermost one, e.g.
//! `"floor.gte"`, or `"$or"` when `$or` is not a list, or `"$"` when the
//! filter itself is not a map). Use its `Display` (`filter key 'floor.gte':
//! needs a number or a string, found bool`) as the INVALID_ARGUMENT message.
//!
//! ## Limits ([`FilterLimits`])
//!
//! * `max_depth`: how deeply `$and`/`$or`/`$not` may nest (the top-level map
//!   is depth 0, each logical operator adds one);
//! * `max_conditions`: every key of every filter map counts as one condition,
//!   and so does every element of an `$and`/`$or` list;
//! * `max_regex_bytes`: length of a `regex` pattern's source;
//! * `max_in_list`: number of values an `in` list may hold.
//!
//! Regexes are compiled by the `regex` crate, whose engines never backtrack
//! (matching is linear in the input), with a compiled-size limit of
//! [`REGEX_SIZE_LIMIT`] bytes (256 KiB). One Unicode `\w` costs about 20 KB
//! of that, so `\w{12}` is the most that fits, whereas `(?-u:\w)` or
//! `[A-Za-z0-9_]` cost about 100 bytes. Prism builds `regex` with only its
//! `std`, `unicode-perl` and `unicode-case` features: `\w \d \s \b` are
//! Unicode-aware and `(?i)` folds Unicode case, but `\p{..}` classes are
//! rejected (no general-category/script tables). The tests check this, so
//! dropping `unicode-case` or `unicode-perl` makes them fail.
//!
//! ## Evaluation cost
//!
//! [`Filter::matches`] does not allocate (regexes reuse a cached matcher
//! after their first use). Measured natively (x86-64, release, 2-core VM,
//! 1000 identities, see the ignored test `timing_two_condition_filter`):
//! 15–50 ns per identity for two-condition filters without a regex, 250–450
//! ns when one of the conditions is a regex (the `regex` crate is built
//! without its `perf-*` features, so it runs its PikeVM).

use std::cmp::Ordering;
use std::fmt;

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Number, Value};

/// Compiled-program size limit for `regex` operands (bytes).
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Lazy-DFA cache limit for `regex` operands (bytes; only used when the
/// `regex` crate is built with its DFA feature).
pub const REGEX_DFA_SIZE_LIMIT: usize = 1024 * 1024;

/// Why a filter was rejected; `key` is the offending key as written.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterError {
    pub key: String,
    pub message: String,
}

impl FilterError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        FilterError {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "filter key '{}': {}", self.key, self.message)
    }
}

impl std::error::Error for FilterError {}

/// Bounds on what a filter may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// How deeply `$and` / `$or` / `$not` may nest.
    pub max_depth: usize,
    /// Keys in all filter maps plus elements of all `$and` / `$or` lists.
    pub max_conditions: usize,
    /// Longest `regex` pattern source, in bytes.
    pub max_regex_bytes: usize,
    /// Most values in one `in` list.
    pub max_in_list: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits {
            max_depth: 8,
            max_conditions: 256,
            max_regex_bytes: 1024,
            max_in_list: 1024,
        }
    }
}

/// A parsed, reusable filter.
#[derive(Debug, Clone)]
pub struct Filter {
    root: Node,
}

#[derive(Debug, Clone)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Cond(Cond),
}

#[derive(Debug, Clone)]
struct Cond {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Eq(Value),
    Ne(Value),
    Cmp(CmpOp, Scalar),
    StartsWith(String),
    EndsWith(String),
    Contains(Value),
    In(Vec<Value>),
    Exists(bool),
    Regex(Regex),
    Type(JsonType),
}

#[derive(Debug, Clone, Copy)]
enum CmpOp {
    Lt,
    Lte,
    Gt,
    Gte,
}

impl CmpOp {
    fn holds(self, ord: Ordering) -> bool {
        match self {
            CmpOp::Lt => ord == Ordering::Less,
            CmpOp::Lte => ord != Ordering::Greater,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::Gte => ord != Ordering::Less,
        }
    }
}

/// Operand of an ordering comparison.
#[derive(Debug, Clone)]
enum Scalar {
    Num(Number),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    String,
    Number,
    Bool,
    Null,
    List,
    Map,
}

const TYPE_NAMES: &str = "\"string\", \"number\", \"bool\", \"null\", \"list\", \"map\"";

impl JsonType {
    fn parse(name: &str) -> Option<JsonType> {
        Some(match name {
            "string" => JsonType::String,
            "number" => JsonType::Number,
            "bool" => JsonType::Bool,
            "null" => JsonType::Null,
            "list" => JsonType::List,
            "map" => JsonType::Map,
            _ => return None,
        })
    }

    fn of(v: &Value) -> JsonType {
        match v {
            Value::Null => JsonType::Null,
            Value::Bool(_) => JsonType::Bool,
            Value::Number(_) => JsonType::Number,
            Value::String(_) => JsonType::String,
            Value::Array(_) => JsonType::List,
            Value::Object(_) => JsonType::Map,
        }
    }

    fn name(self) -> &'static str {
        match self {
            JsonType::String => "string",
            JsonType::Number => "number",
            JsonType::Bool => "bool",
            JsonType::Null => "null",
            JsonType::List => "list",
            JsonType::Map => "map",
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    JsonType::of(v).name()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpName {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    StartsWith,
    EndsWith,
    Contains,
    In,
    Exists,
    Regex,
    Type,
}

impl OpName {
    fn parse(s: &str) -> Option<OpName> {
        Some(match s {
            "eq" => OpName::Eq,
            "ne" => OpName::Ne,
            "lt" => OpName::Lt,
            "lte" => OpName::Lte,
            "gt" => OpName::Gt,
            "gte" => OpName::Gte,
            "startswith" => OpName::StartsWith,
            "endswith" => OpName::EndsWith,
            "contains" => OpName::Contains,
            "in" => OpName::In,
            "exists" => OpName::Exists,
            "regex" => OpName::Regex,
            "type" => OpName::Type,
            _ => return None,
        })
    }
}

impl Filter {
    /// Parses `filter`. `null` and `{}` give the match-all filter; any other
    /// non-map is an error with key `"$"`.
    pub fn parse(filter: &Value, limits: &FilterLimits) -> Result<Filter, FilterError> {
        let root = match filter {
            Value::Null => Node::And(Vec::new()),
            Value::Object(map) => {
                let mut compiler = Compiler {
                    limits,
                    conditions: 0,
                };
                compiler.map(map, 0)?
            }
            other => {
                return Err(FilterError::new(
                    "$",
                    format!("a filter must be a map or null, found {}", type_name(other)),
                ));
            }
        };
        Ok(Filter { root })
    }

    /// Whether `metadata` (an identity's metadata map) satisfies the filter.
    pub fn matches(&self, metadata: &Value) -> bool {
        self.root.eval(metadata)
    }

    /// True when the filter matches every identity without looking at it
    /// (`null`, `{}`, and trivially-true combinations such as `{"$and": []}`).
    pub fn is_all(&self) -> bool {
        self.root.always_true()
    }

    /// Equalities every matching identity's metadata meets: `(path, value
    /// as JSON)` for each string, boolean or null equality the filter's
    /// top level (and nested `$and`s) requires. The host may use them to
    /// leave out records early (`registry::list-where`); the filter itself
    /// is still applied to whatever comes back. Numbers are left out: the
    /// filter compares them by value, a backend may compare their spelling.
    pub fn implied_equalities(&self) -> Vec<(Vec<String>, String)> {
        fn walk(node: &Node, out: &mut Vec<(Vec<String>, String)>) {
            match node {
                Node::And(children) => children.iter().for_each(|c| walk(c, out)),
                Node::Cond(Cond {
                    path,
                    op: Op::Eq(v @ (Value::String(_) | Value::Bool(_) | Value::Null)),
                }) => {
                    if let Ok(text) = serde_json::to_string(v) {
                        out.push((path.clone(), text));
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }
}

/// Checks identity metadata: it must be a map, and lists/maps may nest at
/// most `max_depth` levels (the top-level map is level 1).
pub fn validate_metadata(v: &Value, max_depth: usize) -> Result<(), String> {
    if !v.is_object() {
        return Err(format!("metadata must be a map, found {}", type_name(v)));
    }
    if exceeds_depth(v, 1, max_depth) {
        return Err(format!("metadata nests deeper than {max_depth} levels"));
    }
    Ok(())
}

/// Whether the container `v`, sitting at `level`, or anything inside it goes
/// beyond `max`. Recursion stops one level past `max`.
fn exceeds_depth(v: &Value, level: usize, max: usize) -> bool {
    match v {
        Value::Array(items) => {
            level > max || items.iter().any(|c| exceeds_depth(c, level + 1, max))
        }
        Value::Object(map) => level > max || map.values().any(|c| exceeds_depth(c, level + 1, max)),
        _ => false,
    }
}

struct Compiler<'a> {
    limits: &'a FilterLimits,
    conditions: usize,
}

impl Compiler<'_> {
    fn count(&mut self, key: &str) -> Result<(), FilterError> {
        self.conditions += 1;
        if self.conditions > self.limits.max_conditions {
            return Err(FilterError::new(
                key,
                format!(
                    "the filter has more than {} conditions",
                    self.limits.max_conditions
                ),
            ));
        }
        Ok(())
    }

    /// Compiles one filter map found at logical nesting `depth`.
    fn map(&mut self, map: &Map<String, Value>, depth: usize) -> Result<Node, FilterError> {
        let mut nodes = Vec::with_capacity(map.len());
        for (key, value) in map {
            self.count(key)?;
            nodes.push(self.entry(key, value, depth)?);
        }
        if nodes.len() == 1
            && let Some(node) = nodes.pop()
        {
            return Ok(node);
        }
        Ok(Node::And(nodes))
    }

    fn nested_depth(&self, key: &str, depth: usize) -> Result<usize, FilterError> {
        let inner = depth + 1;
        if inner > self.limits.max_depth {
            return Err(FilterError::new(
                key,
                format!("nests deeper than {} levels", self.limits.max_depth),
            ));
        }
        Ok(inner)
    }

    fn entry(&mut self, key: &str, value: &Value, depth: usize) -> Result<Node, FilterError> {
        match key {
            "$and" | "$or" => {
                let inner = self.nested_depth(key, depth)?;
                let Value::Array(items) = value else {
                    return Err(FilterError::new(
                        key,
                        format!("needs a list of filter maps, found {}", type_name(value)),
                    ));
                };
                let mut nodes = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let Value::Object(map) = item else {
                        return Err(FilterError::new(
                            key,
                            format!(
                                "needs a list of filter maps, element {i} is a {}",
                                type_name(item)
                            ),
                        ));
                    };
                    self.count(key)?;
                    nodes.push(self.map(map, inner)?);
                }
                Ok(if key == "$and" {
                    Node::And(nodes)
                } else {
                    Node::Or(nodes)
                })
            }
            "$not" => {
                let inner = self.nested_depth(key, depth)?;
                let Value::Object(map) = value else {
                    return Err(FilterError::new(
                        key,
                        format!("needs a filter map, found {}", type_name(value)),
                    ));
                };
                Ok(Node::Not(Box::new(self.map(map, inner)?)))
            }
            _ => self.condition(key, value).map(Node::Cond),
        }
    }

    fn condition(&self, key: &str, value: &Value) -> Result<Cond, FilterError> {
        if key.starts_with('$') {
            return Err(unknown_operator(key, key));
        }
        let (path_part, op) = match key.rsplit_once('.') {
            Some((path, last)) => {
                if last.starts_with('$') {
                    return Err(unknown_operator(key, last));
                }
                match OpName::parse(last) {
                    Some(op) => (path, Some(op)),
                    None => (key, None),
                }
            }
            None => (key, None),
        };
        let mut path = Vec::new();
        for segment in path_part.split('.') {
            if segment.is_empty() {
                return Err(FilterError::new(key, "the field path has an empty segment"));
            }
            path.push(segment.to_owned());
        }
        let op = match op {
            None if value.as_str() == Some("*") => Op::Present,
            None => Op::Eq(value.clone()),
            Some(op) => self.operator(key, op, value)?,
        };
        Ok(Cond { path, op })
    }

    fn operator(&self, key: &str, op: OpName, value: &Value) -> Result<Op, FilterError> {
        let wrong =
            |what: &str| FilterError::new(key, format!("needs {what}, found {}", type_name(value)));
        Ok(match op {
            OpName::Eq => Op::Eq(value.clone()),
            OpName::Ne => Op::Ne(value.clone()),
            OpName::Lt | OpName::Lte | OpName::Gt | OpName::Gte => {
                let cmp = match op {
                    OpName::Lt => CmpOp::Lt,
                    OpName::Lte => CmpOp::Lte,
                    OpName::Gt => CmpOp::Gt,
                    _ => CmpOp::Gte,
                };
                let operand = match value {
                    Value::Number(n) => Scalar::Num(n.clone()),
                    Value::String(s) => Scalar::Str(s.clone()),
                    _ => return Err(wrong("a number or a string")),
                };
                Op::Cmp(cmp, operand)
            }
            OpName::StartsWith | OpName::EndsWith => {
                let Value::String(s) = value else {
                    return Err(wrong("a string"));
                };
                if op == OpName::StartsWith {
                    Op::StartsWith(s.clone())
                } else {
                    Op::EndsWith(s.clone())
                }
            }
            OpName::Contains => Op::Contains(value.clone()),
            OpName::In => {
                let Value::Array(items) = value else {
                    return Err(wrong("a list"));
                };
                if items.len() > self.limits.max_in_list {
                    return Err(FilterError::new(
                        key,
                        format!(
                            "the list has {} values, more than the limit of {}",
                            items.len(),
                            self.limits.max_in_list
                        ),
                    ));
                }
                Op::In(items.clone())
            }
            OpName::Exists => {
                let Value::Bool(b) = value else {
                    return Err(wrong("true or false"));
                };
                Op::Exists(*b)
            }
            OpName::Regex => {
                let Value::String(pattern) = value else {
                    return Err(wrong("a string (a regex)"));
                };
                if pattern.len() > self.limits.max_regex_bytes {
                    return Err(FilterError::new(
                        key,
                        format!(
                            "the regex is {} bytes long, more than the limit of {}",
                            pattern.len(),
                            self.limits.max_regex_bytes
                        ),
                    ));
                }
                let re = RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
                    .build()
                    .map_err(|e| FilterError::new(key, regex_error_message(&e)))?;
                Op::Regex(re)
            }
            OpName::Type => {
                let parsed = value.as_str().and_then(JsonType::parse);
                let Some(t) = parsed else {
                    return Err(FilterError::new(
                        key,
                        format!("needs one of {TYPE_NAMES}, found {value}"),
                    ));
                };
                Op::Type(t)
            }
        })
    }
}

fn unknown_operator(key: &str, name: &str) -> FilterError {
    FilterError::new(
        key,
        format!("unknown operator '{name}' ($and, $or and $not are the only $ keys)"),
    )
}

/// One-line description of a regex compile error.
fn regex_error_message(e: &regex::Error) -> String {
    match e {
        regex::Error::CompiledTooBig(limit) => {
            format!("invalid regex: too large once compiled (limit {limit} bytes)")
        }
        regex::Error::Syntax(text) => {
            let detail = text
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix("error:"))
                .map(str::trim)
                .unwrap_or_else(|| text.trim());
            format!("invalid regex: {}", detail.replace('\n', " "))
        }
        other => format!("invalid regex: {}", other.to_string().replace('\n', " ")),
    }
}

impl Node {
    fn eval(&self, meta: &Value) -> bool {
        match self {
            Node::And(nodes) => nodes.iter().all(|n| n.eval(meta)),
            Node::Or(nodes) => nodes.iter().any(|n| n.eval(meta)),
            Node::Not(node) => !node.eval(meta),
            Node::Cond(cond) => cond.op.eval(lookup(meta, &cond.path)),
        }
    }

    fn always_true(&self) -> bool {
        match self {
            Node::And(nodes) => nodes.iter().all(Node::always_true),
            Node::Or(nodes) => nodes.iter().any(Node::always_true),
            Node::Not(node) => node.always_false(),
            Node::Cond(_) => false,
        }
    }

    fn always_false(&self) -> bool {
        match self {
            Node::And(nodes) => nodes.iter().any(Node::always_false),
            Node::Or(nodes) => nodes.iter().all(Node::always_false),
            Node::Not(node) => node.always_true(),
            Node::Cond(_) => false,
        }
    }
}

fn lookup<'v>(meta: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut cur = meta;
    for segment in path {
        cur = cur.as_object()?.get(segment.as_str())?;
    }
    Some(cur)
}

impl Op {
    fn eval(&self, field: Option<&Value>) -> bool {
        let Some(field) = field else {
            return matches!(self, Op::Ne(_) | Op::Exists(false));
        };
        match self {
            Op::Present => true,
            Op::Exists(wanted) => *wanted,
            Op::Eq(v) => json_eq(field, v),
            Op::Ne(v) => !json_eq(field, v),
            Op::Cmp(cmp, operand) => {
                let ord = match (field, operand) {
                    (Value::Number(a), Scalar::Num(b)) => num_cmp(a, b),
                    (Value::String(a), Scalar::Str(b)) => Some(a.as_str().cmp(b.as_str())),
                    _ => None,
                };
                ord.is_some_and(|o| cmp.holds(o))
            }
            Op::StartsWith(s) => field.as_str().is_some_and(|f| f.starts_with(s.as_str())),
            Op::EndsWith(s) => field.as_str().is_some_and(|f| f.ends_with(s.as_str())),
            Op::Contains(v) => match (field, v) {
                (Value::String(f), Value::String(s)) => f.contains(s.as_str()),
                (Value::Array(items), _) => items.iter().any(|item| json_eq(item, v)),
                _ => false,
            },
            Op::In(items) => items.iter().any(|item| json_eq(field, item)),
            Op::Regex(re) => field.as_str().is_some_and(|f| re.is_match(f)),
            Op::Type(t) => JsonType::of(field) == *t,
        }
    }
}

/// Type-aware JSON equality (see the module docs).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y) == Some(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k.as_str()).is_some_and(|w| json_eq(v, w)))
        }
        _ => false,
    }
}

#[derive(Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

fn num(n: &Number) -> Option<Num> {
    if let Some(i) = n.as_i64() {
        Some(Num::Int(i128::from(i)))
    } else if let Some(u) = n.as_u64() {
        Some(Num::Int(i128::from(u)))
    } else {
        n.as_f64().map(Num::Float)
    }
}

/// Exact numeric ordering of two JSON numbers.
fn num_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    match (num(a)?, num(b)?) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y),
        (Num::Int(x), Num::Float(y)) => int_float_cmp(x, y),
        (Num::Float(x), Num::Int(y)) => int_float_cmp(y, x).map(Ordering::reverse),
    }
}

/// Compares an integer with a float without rounding either.
fn int_float_cmp(i: i128, f: f64) -> Option<Ordering> {
    const TWO_POW_127: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;
    if f.is_nan() {
        return None;
    }
    if f >= TWO_POW_127 {
        return Some(Ordering::Less);
    }
    if f < -TWO_POW_127 {
        return Some(Ordering::Greater);
    }
    let whole = f.trunc();
    // |whole| < 2^127 and integral, so the conversion is exact.
    #[allow(clippy::cast_possible_truncation)]
    let whole_int = whole as i128;
    Some(match i.cmp(&whole_int) {
        Ordering::Equal => {
            if f > whole {
                Ordering::Less
            } else if f < whole {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        other => other,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(f: Value) -> Filter {
        Filter::parse(&f, &FilterLimits::default()).unwrap()
    }

    fn m(f: Value, meta: &Value) -> bool {
        parse(f).matches(meta)
    }

    #[test]
    fn implied_equalities_are_only_what_every_match_must_hold() {
        let f = parse(json!({
            "type": "sensor",
            "location.building.eq": "HQ",
            "on": true,
            "gone": null,
            "floor": 2,
            "name": "*",
            "zone.ne": "x",
            "$and": [{"kind": "a"}, {"$or": [{"x": "1"}, {"y": "2"}]}],
            "$not": {"z": "q"},
        }));
        let mut got = f.implied_equalities();
        got.sort();
        let p = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            got,
            vec![
                (p(&["gone"]), "null".to_string()),
                (p(&["kind"]), "\"a\"".to_string()),
                (p(&["location", "building"]), "\"HQ\"".to_string()),
                (p(&["on"]), "true".to_string()),
                (p(&["type"]), "\"sensor\"".to_string()),
            ]
        );
        assert!(parse(json!({})).implied_equalities().is_empty());
    }

    fn err(f: Value) -> FilterError {
        Filter::parse(&f, &FilterLimits::default()).unwrap_err()
    }

    fn err_with(f: Value, limits: &FilterLimits) -> FilterError {
        Filter::parse(&f, limits).unwrap_err()
    }

    fn meta() -> Value {
        json!({
            "name": "sensor-42",
            "floor": 3,
            "temp": 21.5,
            "big": 9_007_199_254_740_993_u64,
            "active": true,
            "note": null,
            "tags": ["a", "b", 7, 2.0, null, {"k": 1}],
            "location": {"building": "HQ", "room": {"no": 101}},
            "empty": "",
            "city": "Zürich",
            "emoji": "🚀 launch",
        })
    }

    // ----- equality ---------------------------------------------------------

    #[test]
    fn equality_plain() {
        let md = meta();
        assert!(m(json!({"name": "sensor-42"}), &md));
        assert!(!m(json!({"name": "sensor-43"}), &md));
        assert!(m(json!({"floor": 3}), &md));
        assert!(m(json!({"floor": 3.0}), &md));
        assert!(!m(json!({"floor": "3"}), &md));
        assert!(!m(json!({"floor": 3.5}), &md));
        assert!(m(json!({"temp": 21.5}), &md));
        assert!(m(json!({"active": true}), &md));
        assert!(!m(json!({"active": 1}), &md));
        assert!(!m(json!({"active": "true"}), &md));
        assert!(m(json!({"note": null}), &md));
        assert!(!m(json!({"note": false}), &md));
        assert!(!m(json!({"note": 0}), &md));
        assert!(!m(json!({"note": ""}), &md));
        assert!(!m(json!({"empty": null}), &md));
        assert!(m(json!({"empty": ""}), &md));
    }

    #[test]
    fn equality_numbers_are_exact() {
        let md =
            json!({"i": 1, "neg": -1, "f": 1.0, "u": u64::MAX, "big": 9_007_199_254_740_993_u64});
        assert!(m(json!({"i": 1.0}), &md));
        assert!(m(json!({"f": 1}), &md));
        assert!(m(json!({"neg": -1.0}), &md));
        assert!(!m(json!({"neg": 1}), &md));
        assert!(m(json!({"u": u64::MAX}), &md));
        assert!(!m(json!({"u": u64::MAX - 1}), &md));
        // 2^53 + 1 is not representable as f64; integer comparisons stay exact.
        assert!(m(json!({"big": 9_007_199_254_740_993_u64}), &md));
        assert!(!m(json!({"big": 9_007_199_254_740_992_u64}), &md));
        // ... and an integer never equals a float that merely rounds to it.
        assert!(!m(json!({"big": 9_007_199_254_740_992.0}), &md));
        assert!(m(json!({"big.gt": 9_007_199_254_740_992.0}), &md));
        assert!(m(json!({"big.lt": 9_007_199_254_740_994_u64}), &md));
        assert!(m(json!({"neg.lt": -0.5}), &md));
        assert!(m(json!({"neg.gt": -1.5}), &md));
        assert!(m(json!({"i.gt": 0.999}), &md));
        assert!(m(json!({"u.lt": 1e300}), &md));
        assert!(m(json!({"neg.gt": -1e300}), &md));
        let zero = json!({"z": -0.0});
        assert!(m(json!({"z": 0}), &zero));
    }

    #[test]
    fn equality_lists_and_maps() {
        let md = meta();
        assert!(m(
            json!({"tags": ["a", "b", 7.0, 2, null, {"k": 1.0}]}),
            &md
        ));
        assert!(!m(json!({"tags": ["a", "b", 7, 2]}), &md));
        assert!(!m(json!({"tags": ["b", "a", 7, 2.0, null, {"k": 1}]}), &md));
        assert!(m(
            json!({"location": {"building": "HQ", "room": {"no": 101.0}}}),
            &md
        ));
        assert!(!m(json!({"location": {"building": "HQ"}}), &md));
        assert!(!m(
            json!({"location": {"building": "HQ", "room": {"no": "101"}}}),
            &md
        ));
        assert!(!m(
            json!({"location": {"building": "HQ", "rooms": {"no": 101}}}),
            &md
        ));
        // A list never equals a map, a scalar never equals a one-element list.
        assert!(!m(json!({"floor": [3]}), &json!({"floor": 3})));
        assert!(!m(json!({"x": {}}), &json!({"x": []})));
    }

    #[test]
    fn star_means_present() {
        let md = meta();
        assert!(m(json!({"name": "*"}), &md));
        assert!(m(json!({"note": "*"}), &md), "null is present");
        assert!(m(json!({"location.room": "*"}), &md));
        assert!(!m(json!({"missing": "*"}), &md));
        // The eq operator compares with a literal "*".
        assert!(!m(json!({"name.eq": "*"}), &md));
        assert!(m(json!({"s.eq": "*"}), &json!({"s": "*"})));
        assert!(m(json!({"s": "*"}), &json!({"s": 1})));
    }

    #[test]
    fn eq_and_ne() {
        let md = meta();
        assert!(m(json!({"floor.eq": 3.0}), &md));
        assert!(!m(json!({"floor.eq": "3"}), &md));
        assert!(!m(json!({"floor.ne": 3}), &md));
        assert!(m(json!({"floor.ne": "3"}), &md));
        assert!(m(json!({"floor.ne": 4}), &md));
        assert!(m(json!({"note.eq": null}), &md));
        assert!(!m(json!({"note.ne": null}), &md));
        assert!(m(json!({"tags.eq": ["a", "b", 7, 2, null, {"k": 1}]}), &md));
    }

    // ----- ordering -----------------------------------------------------------

    #[test]
    fn ordering_numbers() {
        let md = meta();
        assert!(m(json!({"floor.lt": 4}), &md));
        assert!(!m(json!({"floor.lt": 3}), &md));
        assert!(m(json!({"floor.lte": 3}), &md));
        assert!(m(json!({"floor.lte": 3.0}), &md));
        assert!(!m(json!({"floor.lte": 2.9}), &md));
        assert!(m(json!({"floor.gt": 2.5}), &md));
        assert!(!m(json!({"floor.gt": 3}), &md));
        assert!(m(json!({"floor.gte": 3}), &md));
        assert!(!m(json!({"floor.gte": 3.0001}), &md));
        assert!(m(json!({"temp.gt": 21}), &md));
        assert!(m(json!({"temp.lt": 22}), &md));
        assert!(m(json!({"floor.gte": -5}), &md));
    }

    #[test]
    fn ordering_strings() {
        let md = meta();
        assert!(m(json!({"name.gt": "sensor-4"}), &md));
        assert!(m(json!({"name.lt": "sensor-5"}), &md));
        assert!(m(json!({"name.gte": "sensor-42"}), &md));
        assert!(m(json!({"name.lte": "sensor-42"}), &md));
        assert!(!m(json!({"name.lt": "sensor-42"}), &md));
        assert!(!m(json!({"name.gt": "t"}), &md));
        // byte order: uppercase sorts before lowercase, non-ASCII after ASCII.
        assert!(m(json!({"name.gt": "Sensor"}), &md));
        assert!(m(json!({"city.gt": "Zz"}), &md));
        assert!(m(json!({"empty.lt": "a"}), &md));
    }

    #[test]
    fn ordering_mixed_types_is_false() {
        let md = meta();
        assert!(!m(json!({"floor.lt": "9"}), &md));
        assert!(!m(json!({"floor.gt": "0"}), &md));
        assert!(!m(json!({"name.gt": 0}), &md));
        assert!(!m(json!({"active.gte": 0}), &md));
        assert!(!m(json!({"note.lte": 0}), &md));
        assert!(!m(json!({"tags.gt": 0}), &md));
        assert!(!m(json!({"location.gt": ""}), &md));
    }

    // ----- string operators -------------------------------------------------

    #[test]
    fn startswith_endswith() {
        let md = meta();
        assert!(m(json!({"name.startswith": "sensor"}), &md));
        assert!(m(json!({"name.startswith": ""}), &md));
        assert!(!m(json!({"name.startswith": "42"}), &md));
        assert!(m(json!({"name.endswith": "-42"}), &md));
        assert!(!m(json!({"name.endswith": "sensor"}), &md));
        assert!(!m(json!({"floor.startswith": "3"}), &md));
        assert!(!m(json!({"tags.startswith": "a"}), &md));
        assert!(m(json!({"city.startswith": "Zü"}), &md));
        assert!(m(json!({"emoji.startswith": "🚀"}), &md));
        assert!(m(json!({"city.endswith": "rich"}), &md));
    }

    #[test]
    fn contains_substring_and_membership() {
        let md = meta();
        assert!(m(json!({"name.contains": "sor-4"}), &md));
        assert!(m(json!({"name.contains": ""}), &md));
        assert!(!m(json!({"name.contains": "xyz"}), &md));
        assert!(!m(json!({"name.contains": 4}), &md));
        assert!(m(json!({"tags.contains": "a"}), &md));
        assert!(m(json!({"tags.contains": 7.0}), &md));
        assert!(m(json!({"tags.contains": 2}), &md));
        assert!(m(json!({"tags.contains": null}), &md));
        assert!(m(json!({"tags.contains": {"k": 1.0}}), &md));
        assert!(!m(json!({"tags.contains": "7"}), &md));
        assert!(!m(json!({"tags.contains": "c"}), &md));
        // no substring search inside list elements
        assert!(!m(json!({"tags.contains": ""}), &md));
        assert!(!m(json!({"floor.contains": 3}), &md));
        assert!(!m(json!({"location.contains": "building"}), &md));
        assert!(m(json!({"city.contains": "ü"}), &md));
    }

    #[test]
    fn in_operator() {
        let md = meta();
        assert!(m(json!({"floor.in": [1, 2, 3]}), &md));
        assert!(m(json!({"floor.in": [3.0]}), &md));
        assert!(!m(json!({"floor.in": ["3"]}), &md));
        assert!(!m(json!({"floor.in": []}), &md));
        assert!(m(json!({"name.in": ["x", "sensor-42"]}), &md));
        assert!(m(json!({"note.in": [null]}), &md));
        assert!(m(
            json!({"tags.in": [[], ["a", "b", 7, 2, null, {"k": 1}]]}),
            &md
        ));
        assert!(!m(json!({"tags.in": ["a"]}), &md));
        assert!(m(json!({"city.in": ["Zürich"]}), &md));
    }

    #[test]
    fn exists_operator() {
        let md = meta();
        assert!(m(json!({"name.exists": true}), &md));
        assert!(!m(json!({"name.exists": false}), &md));
        assert!(m(json!({"note.exists": true}), &md));
        assert!(m(json!({"missing.exists": false}), &md));
        assert!(!m(json!({"missing.exists": true}), &md));
        assert!(m(json!({"location.room.no.exists": true}), &md));
        assert!(m(json!({"location.room.nope.exists": false}), &md));
    }

    #[test]
    fn regex_operator() {
        let md = meta();
        assert!(m(json!({"name.regex": "^sensor-\\d+$"}), &md));
        assert!(m(json!({"name.regex": "or-4"}), &md), "unanchored");
        assert!(!m(json!({"name.regex": "^or"}), &md));
        assert!(m(json!({"name.regex": "(?i)SENSOR"}), &md));
        assert!(!m(json!({"floor.regex": "3"}), &md));
        assert!(!m(json!({"tags.regex": "a"}), &md));
        assert!(!m(json!({"note.regex": ".*"}), &md));
        assert!(m(json!({"city.regex": "^Z\\w+h$"}), &md), "unicode \\w");
        assert!(
            m(json!({"city.regex": "(?i)zÜRICH"}), &md),
            "unicode case folding"
        );
        assert!(
            m(json!({"emoji.regex": "^.\\slaunch$"}), &md),
            ". is a code point"
        );
        assert!(m(json!({"city.regex": "\\bZürich\\b"}), &md), "unicode \\b");
        assert!(
            m(json!({"d.regex": "^\\d$"}), &json!({"d": "٣"})),
            "unicode \\d"
        );
        assert!(!m(json!({"d.regex": "^(?-u:\\d)$"}), &json!({"d": "٣"})));
    }

    #[test]
    fn type_operator() {
        let md = meta();
        assert!(m(json!({"name.type": "string"}), &md));
        assert!(m(json!({"floor.type": "number"}), &md));
        assert!(m(json!({"temp.type": "number"}), &md));
        assert!(m(json!({"active.type": "bool"}), &md));
        assert!(m(json!({"note.type": "null"}), &md));
        assert!(m(json!({"tags.type": "list"}), &md));
        assert!(m(json!({"location.type": "map"}), &md));
        assert!(!m(json!({"name.type": "number"}), &md));
        assert!(!m(json!({"floor.type": "string"}), &md));
        assert!(!m(json!({"note.type": "map"}), &md));
        assert!(!m(json!({"missing.type": "null"}), &md));
    }

    // ----- paths --------------------------------------------------------------

    #[test]
    fn nested_paths() {
        let md = meta();
        assert!(m(json!({"location.building": "HQ"}), &md));
        assert!(!m(json!({"location.building": "Annex"}), &md));
        assert!(m(json!({"location.room.no": 101}), &md));
        assert!(m(json!({"location.room.no.gte": 100}), &md));
        assert!(m(json!({"location.building.startswith": "H"}), &md));
        // indexing through a non-map is missing
        assert!(!m(json!({"name.first": "*"}), &md));
        assert!(m(json!({"name.first.exists": false}), &md));
        assert!(!m(json!({"tags.0": "a"}), &md), "lists are not indexed");
        assert!(!m(json!({"note.x.exists": true}), &md));
    }

    #[test]
    fn unknown_last_segment_is_a_path() {
        let md = json!({"floor": {"gtee": 4}, "limits": {"gte": 5}});
        assert!(m(json!({"floor.gtee": 4}), &md));
        assert!(!m(json!({"floor.gtee": 4}), &meta()));
        // a field named like an operator is reachable through an explicit op
        assert!(m(json!({"limits.gte.eq": 5}), &md));
        assert!(!m(json!({"limits.gte": 5}), &md), "means limits >= 5");
        // a key without dots is always a field, even if named like an op
        assert!(m(json!({"eq": 1}), &json!({"eq": 1})));
        assert!(m(json!({"in.in": [1, 2]}), &json!({"in": 2})));
    }

    #[test]
    fn dotted_metadata_key_is_not_reachable_as_one_segment() {
        let md = json!({"a.b": 1});
        assert!(!m(json!({"a.b": 1}), &md));
    }

    // ----- missing fields -----------------------------------------------------

    #[test]
    fn missing_field_for_every_op() {
        let md = meta();
        let f = |op: &str, v: Value| m(json!({ format!("nope.{op}"): v }), &md);
        assert!(!m(json!({"nope": 1}), &md));
        assert!(!m(json!({"nope": null}), &md));
        assert!(!m(json!({"nope": "*"}), &md));
        assert!(!f("eq", json!(null)));
        assert!(f("ne", json!(null)));
        assert!(f("ne", json!(1)));
        assert!(!f("lt", json!(1)));
        assert!(!f("lte", json!(1)));
        assert!(!f("gt", json!(1)));
        assert!(!f("gte", json!("")));
        assert!(!f("startswith", json!("")));
        assert!(!f("endswith", json!("")));
        assert!(!f("contains", json!("")));
        assert!(!f("in", json!([null])));
        assert!(!f("exists", json!(true)));
        assert!(f("exists", json!(false)));
        assert!(!f("regex", json!("")));
        assert!(!f("type", json!("null")));
        assert!(m(json!({"$not": {"nope": 1}}), &md));
        assert!(m(json!({"$not": {"nope.lt": 1}}), &md));
        // nested missing
        assert!(m(json!({"location.floor.ne": 1}), &md));
        assert!(!m(json!({"location.floor.eq": 1}), &md));
    }

    #[test]
    fn non_map_metadata_has_no_fields() {
        let f = parse(json!({"a.exists": false, "b.ne": 1}));
        assert!(f.matches(&json!(null)));
        assert!(f.matches(&json!([1, 2])));
        assert!(!parse(json!({"a": "*"})).matches(&json!("a")));
    }

    // ----- logic --------------------------------------------------------------

    #[test]
    fn implicit_and() {
        let md = meta();
        assert!(m(json!({"name": "sensor-42", "floor.gte": 2}), &md));
        assert!(!m(json!({"name": "sensor-42", "floor.gte": 4}), &md));
    }

    #[test]
    fn and_or_not() {
        let md = meta();
        assert!(m(json!({"$and": [{"floor": 3}, {"active": true}]}), &md));
        assert!(!m(json!({"$and": [{"floor": 3}, {"active": false}]}), &md));
        assert!(m(json!({"$or": [{"floor": 4}, {"active": true}]}), &md));
        assert!(!m(json!({"$or": [{"floor": 4}, {"active": false}]}), &md));
        assert!(m(json!({"$not": {"floor": 4}}), &md));
        assert!(!m(json!({"$not": {"floor": 3}}), &md));
        assert!(!m(json!({"$not": {"floor": 3, "active": true}}), &md));
        assert!(m(json!({"$not": {"floor": 3, "active": false}}), &md));
        // empty lists / maps
        assert!(m(json!({"$and": []}), &md));
        assert!(!m(json!({"$or": []}), &md));
        assert!(!m(json!({"$not": {}}), &md));
        assert!(m(json!({"$and": [{}]}), &md));
        assert!(m(json!({"$or": [{}]}), &md));
        assert!(m(json!({"$not": {"$or": []}}), &md));
        // nesting
        let f = json!({
            "$or": [
                {"$and": [{"location.building": "HQ"}, {"floor.in": [1, 2]}]},
                {"$and": [{"location.building": "HQ"}, {"$not": {"floor.lt": 3}}]},
            ],
            "name.startswith": "sensor",
        });
        assert!(m(f.clone(), &md));
        assert!(!m(
            f,
            &json!({"name": "sensor-1", "floor": 0, "location": {"building": "HQ"}})
        ));
        // a map mixing logical operators and conditions
        assert!(m(
            json!({"$or": [{"floor": 1}, {"floor": 3}], "$not": {"active": false}, "temp.gt": 20}),
            &md
        ));
    }

    #[test]
    fn empty_and_null_filters_match_all() {
        let md = meta();
        let all = parse(json!({}));
        assert!(all.is_all());
        assert!(all.matches(&md));
        assert!(all.matches(&json!({})));
        let null = parse(json!(null));
        assert!(null.is_all());
        assert!(null.matches(&md));
        assert!(parse(json!({"$and": []})).is_all());
        assert!(parse(json!({"$not": {"$or": []}})).is_all());
        assert!(!parse(json!({"$or": []})).is_all());
        assert!(!parse(json!({"$not": {}})).is_all());
        assert!(!parse(json!({"a": "*"})).is_all());
        assert!(!parse(json!({"a.exists": false})).is_all());
    }

    #[test]
    fn filter_is_reusable() {
        let f = parse(json!({"floor.gte": 2, "name.regex": "^s"}));
        let hits = (0..10)
            .filter(|i| f.matches(&json!({"floor": i, "name": "s"})))
            .count();
        assert_eq!(hits, 8);
    }

    // ----- malformed filters --------------------------------------------------

    #[test]
    fn top_level_must_be_a_map() {
        for bad in [
            json!([]),
            json!("x"),
            json!(1),
            json!(true),
            json!([{"a": 1}]),
        ] {
            let e = err(bad);
            assert_eq!(e.key, "$");
            assert!(e.message.contains("map"), "{e}");
        }
    }

    #[test]
    fn unknown_dollar_keys() {
        for key in ["$nor", "$xor", "$", "$AND", "$and.x", "$x.y"] {
            let e = err(json!({ key: [] }));
            assert_eq!(e.key, key);
            assert!(e.message.contains("unknown operator"), "{e}");
        }
        let e = err(json!({"a.$in": [1]}));
        assert_eq!(e.key, "a.$in");
        assert!(e.message.contains("'$in'"), "{e}");
        let e = err(json!({"$or": [{"ok": 1}, {"$nand": []}]}));
        assert_eq!(e.key, "$nand");
        // a `$` in a middle segment is just a field name
        assert!(m(json!({"a.$b.c": 1}), &json!({"a": {"$b": {"c": 1}}})));
    }

    #[test]
    fn logical_operators_need_the_right_shape() {
        for (f, key) in [
            (json!({"$or": {"a": 1}}), "$or"),
            (json!({"$or": "a"}), "$or"),
            (json!({"$and": null}), "$and"),
            (json!({"$and": [1]}), "$and"),
            (json!({"$or": [{"a": 1}, [{"b": 2}]]}), "$or"),
            (json!({"$not": [{"a": 1}]}), "$not"),
            (json!({"$not": true}), "$not"),
            (json!({"$not": null}), "$not"),
        ] {
            let e = err(f.clone());
            assert_eq!(e.key, key, "{f}");
            assert!(e.message.contains("filter map"), "{e}");
        }
    }

    #[test]
    fn operator_operands_are_checked() {
        for (f, key, needle) in [
            (json!({"x.in": 3}), "x.in", "needs a list"),
            (json!({"x.in": "abc"}), "x.in", "needs a list"),
            (json!({"x.in": {"a": 1}}), "x.in", "needs a list"),
            (json!({"x.exists": "yes"}), "x.exists", "true or false"),
            (json!({"x.exists": 1}), "x.exists", "true or false"),
            (json!({"x.type": "integer"}), "x.type", "\"number\""),
            (json!({"x.type": 1}), "x.type", "\"string\""),
            (json!({"x.regex": "("}), "x.regex", "invalid regex"),
            (json!({"x.regex": 5}), "x.regex", "needs a string"),
            (json!({"x.lt": true}), "x.lt", "a number or a string"),
            (json!({"x.lte": [1]}), "x.lte", "a number or a string"),
            (json!({"x.gt": null}), "x.gt", "a number or a string"),
            (json!({"x.gte": {}}), "x.gte", "a number or a string"),
            (json!({"x.startswith": 1}), "x.startswith", "needs a string"),
            (json!({"x.endswith": null}), "x.endswith", "needs a string"),
        ] {
            let e = err(f.clone());
            assert_eq!(e.key, key, "{f}");
            assert!(e.message.contains(needle), "{e}");
            assert!(
                e.to_string().starts_with(&format!("filter key '{key}': ")),
                "{e}"
            );
        }
        // eq / ne / contains take any value
        parse(json!({"a.eq": {"x": [1]}, "b.ne": [], "c.contains": {"k": null}}));
    }

    #[test]
    fn errors_inside_logical_operators_name_the_inner_key() {
        let e = err(json!({"$and": [{"ok": 1}, {"$not": {"floor.gte": "x", "x.in": 1}}]}));
        assert_eq!(e.key, "x.in");
        let e = err(json!({"$or": [{"a.b..c": 1}]}));
        assert_eq!(e.key, "a.b..c");
    }

    #[test]
    fn empty_path_segments() {
        for key in ["", ".", "a..b", ".a", "a.", ".eq", "a..gte", "..", "a.b."] {
            let e = err(json!({ key: 1 }));
            assert_eq!(e.key, key);
            assert!(e.message.contains("empty segment"), "{e}");
        }
    }

    #[test]
    fn display_names_the_key() {
        let e = err(json!({"floor.gte": true}));
        assert_eq!(
            e.to_string(),
            "filter key 'floor.gte': needs a number or a string, found bool"
        );
        let e = err(json!({"x.regex": "("}));
        assert!(!e.message.contains('\n'), "{e}");
        assert_eq!(e.message, "invalid regex: unclosed group");
    }

    // ----- limits -------------------------------------------------------------

    fn nested_not(levels: usize) -> Value {
        let mut f = json!({"a": 1});
        for _ in 0..levels {
            f = json!({ "$not": f });
        }
        f
    }

    #[test]
    fn depth_limit() {
        let limits = FilterLimits::default();
        assert_eq!(limits.max_depth, 8);
        // 8 levels are fine; an even count of $not is the identity
        assert!(m(nested_not(8), &json!({"a": 1})));
        assert_eq!(err(nested_not(9)).key, "$not");

        let mut f = json!({"a": 1});
        for i in 0..9 {
            f = if i % 2 == 0 {
                json!({"$and": [f]})
            } else {
                json!({"$or": [f]})
            };
        }
        // The outermost operator is a $and; the ninth level from the top is
        // the innermost, which is the $and at i == 0.
        assert_eq!(err(f).key, "$and");

        let mut f = json!({"a": 1});
        for i in 0..9 {
            f = if i == 0 {
                json!({"$or": [f]})
            } else {
                json!({"$and": [f]})
            };
        }
        assert_eq!(err(f).key, "$or");

        let tight = FilterLimits {
            max_depth: 1,
            ..FilterLimits::default()
        };
        assert!(Filter::parse(&json!({"$and": [{"a": 1}], "$not": {"b": 1}}), &tight).is_ok());
        assert_eq!(
            err_with(json!({"$and": [{"$not": {"b": 1}}]}), &tight).key,
            "$not"
        );
        let zero = FilterLimits {
            max_depth: 0,
            ..FilterLimits::default()
        };
        assert!(Filter::parse(&json!({"a": 1, "b.gt": 2}), &zero).is_ok());
        assert_eq!(err_with(json!({"$or": []}), &zero).key, "$or");
    }

    #[test]
    fn condition_limit() {
        let limits = FilterLimits {
            max_conditions: 4,
            ..FilterLimits::default()
        };
        let ok = json!({"a": 1, "b": 2, "c": 3, "d": 4});
        assert!(Filter::parse(&ok, &limits).is_ok());
        let e = err_with(json!({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}), &limits);
        assert_eq!(e.key, "e");
        assert!(e.message.contains("more than 4 conditions"), "{e}");
        // $or (1) + two elements (2) + their keys (2) = 5
        let e = err_with(json!({"$or": [{"a": 1}, {"b": 2}]}), &limits);
        assert_eq!(e.key, "b");
        // empty maps in lists still count
        let e = err_with(json!({"$and": [{}, {}, {}, {}]}), &limits);
        assert_eq!(e.key, "$and");

        let many: Map<String, Value> = (0..257).map(|i| (format!("k{i}"), json!(i))).collect();
        let e = err(Value::Object(many));
        assert!(e.message.contains("256"), "{e}");
        let many: Map<String, Value> = (0..256).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(Filter::parse(&Value::Object(many), &FilterLimits::default()).is_ok());
    }

    #[test]
    fn in_list_limit() {
        let limits = FilterLimits {
            max_in_list: 3,
            ..FilterLimits::default()
        };
        assert!(Filter::parse(&json!({"x.in": [1, 2, 3]}), &limits).is_ok());
        let e = err_with(json!({"x.in": [1, 2, 3, 4]}), &limits);
        assert_eq!(e.key, "x.in");
        let list: Vec<u32> = (0..1025).collect();
        assert_eq!(err(json!({"x.in": list})).key, "x.in");
        let list: Vec<u32> = (0..1024).collect();
        assert!(m(json!({"x.in": list}), &json!({"x": 1023})));
    }

    #[test]
    fn regex_source_limit() {
        let limits = FilterLimits {
            max_regex_bytes: 4,
            ..FilterLimits::default()
        };
        assert!(Filter::parse(&json!({"x.regex": "abcd"}), &limits).is_ok());
        let e = err_with(json!({"x.regex": "abcde"}), &limits);
        assert_eq!(e.key, "x.regex");
        assert!(e.message.contains("limit of 4"), "{e}");
        // the limit is in bytes, not characters
        assert_eq!(err_with(json!({"x.regex": "üüü"}), &limits).key, "x.regex");
        assert_eq!(err(json!({"x.regex": "a".repeat(1025)})).key, "x.regex");
        assert!(
            Filter::parse(
                &json!({"x.regex": "a".repeat(1024)}),
                &FilterLimits::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn regex_compiled_size_limit() {
        // A Unicode `\w` class compiles to ~20 KB, so `\w{20}` is already
        // over the 256 KiB limit while the ASCII form is tiny.
        for pattern in [
            "(a{1000}){1000}",
            "\\w{1000}",
            "\\w{20}",
            "([\\w\\d]{100}){100}",
        ] {
            let e = err(json!({"name.regex": pattern}));
            assert_eq!(e.key, "name.regex");
            assert!(
                e.message.contains("too large") || e.message.contains("exceeds"),
                "{e}"
            );
        }
        // ordinary patterns are well within the limit
        parse(json!({"name.regex": "^[a-z0-9-]{1,64}\\.(eu|us|ap)-\\w+-\\d$"}));
        parse(json!({"name.regex": "\\w{10}"}));
        parse(json!({"name.regex": "(?-u:\\w){200}"}));
        parse(json!({"name.regex": "[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,10}"}));
    }

    #[test]
    fn regex_features_not_compiled_in_are_errors() {
        let e = err(json!({"x.regex": "\\p{Greek}"}));
        assert_eq!(e.key, "x.regex");
        assert!(e.message.starts_with("invalid regex"), "{e}");
        // backreferences / lookaround do not exist in the regex crate
        assert_eq!(err(json!({"x.regex": "(a)\\1"})).key, "x.regex");
        assert_eq!(err(json!({"x.regex": "a(?=b)"})).key, "x.regex");
    }

    #[test]
    fn pathological_regex_is_linear() {
        let long = "a".repeat(50_000);
        let md = json!({ "s": long });
        let start = std::time::Instant::now();
        for pattern in ["(a*)*b", "(a|a)*b", "(a|aa)*$x", "^(a+)+$"] {
            let f = parse(json!({"s.regex": pattern}));
            let expected = pattern == "^(a+)+$";
            assert_eq!(f.matches(&md), expected, "{pattern}");
        }
        let elapsed = start.elapsed();
        // A backtracking engine would never finish; the generous bound only
        // guards against a catastrophic regression on a slow debug build.
        assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
    }

    // ----- unicode ------------------------------------------------------------

    #[test]
    fn unicode_strings() {
        let md = json!({"名前": {"都市": "東京"}, "city": "Zürich", "e": "é", "e2": "e\u{301}"});
        assert!(m(json!({"名前.都市": "東京"}), &md));
        assert!(m(json!({"名前.都市.startswith": "東"}), &md));
        assert!(m(json!({"名前.都市.endswith": "京"}), &md));
        assert!(m(json!({"名前.都市.contains": "京"}), &md));
        assert!(m(json!({"名前.都市.in": ["大阪", "東京"]}), &md));
        assert!(m(json!({"名前.都市.regex": "^..$"}), &md));
        assert!(m(json!({"city.gt": "Zz"}), &md));
        assert!(m(json!({"city": "Zürich"}), &md));
        // no normalisation: precomposed and decomposed é differ
        assert!(!m(json!({"e": "e\u{301}"}), &md));
        assert!(m(json!({"e2": "e\u{301}"}), &md));
    }

    // ----- metadata validation ------------------------------------------------

    #[test]
    fn validate_metadata_shape_and_depth() {
        assert!(validate_metadata(&json!({}), 1).is_ok());
        assert!(validate_metadata(&json!({"a": 1, "b": "x"}), 1).is_ok());
        assert!(validate_metadata(&json!({"a": []}), 1).is_err());
        assert!(validate_metadata(&json!({"a": []}), 2).is_ok());
        assert!(validate_metadata(&json!({"a": {"b": [1, {"c": null}]}}), 4).is_ok());
        let e = validate_metadata(&json!({"a": {"b": [1, {"c": null}]}}), 3).unwrap_err();
        assert!(e.contains("deeper than 3"), "{e}");
        for bad in [json!(null), json!([]), json!("x"), json!(1), json!(false)] {
            let e = validate_metadata(&bad, 8).unwrap_err();
            assert!(e.contains("must be a map"), "{e}");
        }
        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!({ "x": deep });
        }
        assert!(validate_metadata(&deep, 8).is_err());
        assert!(validate_metadata(&deep, 100).is_ok());
    }

    // ----- timing -------------------------------------------------------------

    /// `cargo test --release -- --ignored --nocapture timing`
    #[test]
    #[ignore = "timing measurement; run in release"]
    fn timing_two_condition_filter() {
        let identities: Vec<Value> = (0..1000)
            .map(|i| {
                json!({
                    "name": format!("device-{i}"),
                    "floor": i % 10,
                    "active": i % 3 == 0,
                    "location": {"building": if i % 2 == 0 { "HQ" } else { "Annex" }, "room": i},
                    "tags": ["sensor", "v2", i % 7],
                })
            })
            .collect();
        let filters = [
            json!({"location.building": "HQ", "floor.gte": 5}),
            json!({"active": true, "tags.contains": 3}),
            json!({"name.startswith": "device-9", "$not": {"floor.in": [1, 2, 3]}}),
            json!({"name.regex": "^device-\\d*7$", "floor.lt": 8}),
        ];
        for f in filters {
            let filter = parse(f.clone());
            let rounds = 200;
            let mut hits = 0usize;
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                hits += identities.iter().filter(|md| filter.matches(md)).count();
            }
            let per = start.elapsed().as_nanos() as f64 / (rounds * identities.len()) as f64;
            println!(
                "{f}: {per:.1} ns/identity ({} hits per pass)",
                hits / rounds
            );
        }
    }
}
