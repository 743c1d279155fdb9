//! A cursor over a parsed YAML/JSON document that knows its YAML path.
//!
//! Owns the bookkeeping every reader needs: which fields were read, which
//! were ignored on purpose, and every problem found (all of them, not just
//! the first). Pure data; no I/O. Called by the spec readers, on any thread.

use serde_norway::{Mapping, Value};
use std::collections::BTreeMap;
use std::fmt;

use super::quantity::Quantity;

/// One problem in a definition: where (YAML path) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A field that was present, understood, and deliberately not acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub path: String,
    pub reason: String,
}

/// Everything learned while reading one definition.
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub problems: Vec<Problem>,
    pub ignored: Vec<Ignored>,
}

impl Diagnostics {
    pub fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    pub fn ignore(&mut self, path: &str, reason: impl Into<String>) {
        self.ignored.push(Ignored {
            path: path.to_owned(),
            reason: reason.into(),
        });
    }
}

/// Joins a YAML path and a field name: `spec` + `domain` → `spec.domain`.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Describes a value's type the way the error messages name it.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Shortens a value for quoting in an error message.
pub fn quote(text: &str) -> String {
    const LIMIT: usize = 60;
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// A value and the YAML path it was found at.
pub struct Field<'v> {
    pub value: &'v Value,
    pub path: String,
}

impl<'v> Field<'v> {
    fn expected(&self, what: &str, diag: &mut Diagnostics) {
        diag.problem(
            &self.path,
            format!("expected {what}, found {}", kind_of(self.value)),
        );
    }

    pub fn string(&self, diag: &mut Diagnostics) -> Option<String> {
        match self.value {
            Value::String(text) => Some(text.clone()),
            _ => {
                self.expected("a string", diag);
                None
            }
        }
    }

    pub fn bool(&self, diag: &mut Diagnostics) -> Option<bool> {
        match self.value {
            Value::Bool(flag) => Some(*flag),
            _ => {
                self.expected("true or false", diag);
                None
            }
        }
    }

    /// A non-negative integer no larger than `max`.
    pub fn integer(&self, max: u64, diag: &mut Diagnostics) -> Option<u64> {
        let Value::Number(number) = self.value else {
            self.expected("an integer", diag);
            return None;
        };
        match number.as_u64() {
            Some(value) if value <= max => Some(value),
            _ => {
                diag.problem(
                    &self.path,
                    format!("{number} is not an integer between 0 and {max}"),
                );
                None
            }
        }
    }

    /// A Kubernetes quantity (string or number), as a whole non-negative count rounded up.
    pub fn quantity(&self, diag: &mut Diagnostics) -> Option<u64> {
        let text = match self.value {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            _ => {
                self.expected("a quantity such as \"512Mi\"", diag);
                return None;
            }
        };
        match Quantity::parse(&text).and_then(Quantity::to_u64_ceil) {
            Ok(value) => Some(value),
            Err(error) => {
                diag.problem(&self.path, format!("{} {error}", quote(&text)));
                None
            }
        }
    }

    pub fn object(&self, diag: &mut Diagnostics) -> Option<Object<'v>> {
        match self.value {
            Value::Mapping(map) => Object::from_mapping(map, &self.path, diag),
            _ => {
                self.expected("a mapping", diag);
                None
            }
        }
    }

    /// A list; each element comes back with its indexed path (`disks[2]`).
    pub fn list(&self, diag: &mut Diagnostics) -> Vec<Field<'v>> {
        match self.value {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(index, value)| Field {
                    value,
                    path: format!("{}[{index}]", self.path),
                })
                .collect(),
            _ => {
                self.expected("a list", diag);
                Vec::new()
            }
        }
    }

    /// A mapping of strings to strings (labels, annotations).
    pub fn string_map(&self, diag: &mut Diagnostics) -> BTreeMap<String, String> {
        let Some(mut object) = self.object(diag) else {
            return BTreeMap::new();
        };
        let keys: Vec<String> = object.keys().map(str::to_owned).collect();
        let mut strings = BTreeMap::new();
        for key in keys {
            if let Some(field) = object.field(&key) {
                if let Some(text) = field.string(diag) {
                    strings.insert(key, text);
                }
            }
        }
        strings
    }
}

/// A mapping being read: every key must be read, ignored or reported.
pub struct Object<'v> {
    entries: Vec<(&'v str, &'v Value)>,
    path: String,
    taken: Vec<bool>,
}

impl<'v> Object<'v> {
    /// Reads a top-level document (or any mapping value) at `path`.
    pub fn new(value: &'v Value, path: &str, diag: &mut Diagnostics) -> Option<Self> {
        Field {
            value,
            path: path.to_owned(),
        }
        .object(diag)
    }

    fn from_mapping(map: &'v Mapping, path: &str, diag: &mut Diagnostics) -> Option<Self> {
        let mut entries = Vec::with_capacity(map.len());
        for (key, value) in map {
            match key {
                Value::String(name) => entries.push((name.as_str(), value)),
                other => diag.problem(
                    path,
                    format!("field names must be strings, found {}", kind_of(other)),
                ),
            }
        }
        Some(Object {
            taken: vec![false; entries.len()],
            entries,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn keys(&self) -> impl Iterator<Item = &'v str> + '_ {
        self.entries.iter().map(|(key, _)| *key)
    }

    /// Takes a field; absent and `null` fields (Kubernetes' "unset") give `None`.
    pub fn field(&mut self, key: &str) -> Option<Field<'v>> {
        let index = self.entries.iter().position(|(name, _)| *name == key)?;
        self.taken[index] = true;
        let value = self.entries[index].1;
        if value.is_null() {
            return None;
        }
        Some(Field {
            value,
            path: join(&self.path, key),
        })
    }

    /// Takes a field that must be present (and not null).
    pub fn required(&mut self, key: &str, diag: &mut Diagnostics) -> Option<Field<'v>> {
        let field = self.field(key);
        if field.is_none() {
            diag.problem(&join(&self.path, key), "required");
        }
        field
    }

    /// Whether a field is present and not null, without taking it.
    pub fn has(&self, key: &str) -> bool {
        self.entries
            .iter()
            .any(|(name, value)| *name == key && !value.is_null())
    }

    pub fn string(&mut self, key: &str, diag: &mut Diagnostics) -> Option<String> {
        self.field(key)?.string(diag)
    }

    pub fn bool(&mut self, key: &str, diag: &mut Diagnostics) -> Option<bool> {
        self.field(key)?.bool(diag)
    }

    pub fn integer(&mut self, key: &str, max: u64, diag: &mut Diagnostics) -> Option<u64> {
        self.field(key)?.integer(max, diag)
    }

    pub fn quantity(&mut self, key: &str, diag: &mut Diagnostics) -> Option<u64> {
        self.field(key)?.quantity(diag)
    }

    pub fn object(&mut self, key: &str, diag: &mut Diagnostics) -> Option<Object<'v>> {
        self.field(key)?.object(diag)
    }

    pub fn list(&mut self, key: &str, diag: &mut Diagnostics) -> Vec<Field<'v>> {
        self.field(key).map(|f| f.list(diag)).unwrap_or_default()
    }

    /// Accepts a field that changes nothing for vmpod, and records why.
    pub fn ignore(&mut self, key: &str, reason: &str, diag: &mut Diagnostics) {
        if self.has(key) {
            diag.ignore(&join(&self.path, key), reason);
        }
        self.field(key);
    }

    /// Accepts a field silently (pure metadata that needs no note).
    pub fn skip(&mut self, key: &str) {
        self.field(key);
    }

    /// Rejects a field vmpod understands but cannot honour, with advice.
    pub fn reject(&mut self, key: &str, advice: &str, diag: &mut Diagnostics) {
        if self.has(key) {
            diag.problem(
                &join(&self.path, key),
                format!("not supported by vmpod ({advice})"),
            );
        }
        self.field(key);
    }

    /// Reports every field nobody took as unsupported.
    pub fn finish(self, diag: &mut Diagnostics) {
        for ((key, _), taken) in self.entries.iter().zip(&self.taken) {
            if !taken {
                diag.problem(&join(&self.path, key), "not supported by vmpod");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Value {
        serde_norway::from_str(text).expect("test YAML parses")
    }

    #[test]
    fn unread_fields_are_reported_with_their_paths() {
        let value = parse("a: 1\nb: {c: 2}\nd: x\n");
        let mut diag = Diagnostics::default();
        let mut root = Object::new(&value, "spec", &mut diag).expect("mapping");
        assert_eq!(root.integer("a", 10, &mut diag), Some(1));
        root.finish(&mut diag);
        let paths: Vec<_> = diag.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            paths,
            [
                "spec.b: not supported by vmpod",
                "spec.d: not supported by vmpod"
            ]
        );
    }

    #[test]
    fn type_errors_name_the_path_and_both_types() {
        let value = parse("cores: two\nitems: [1, {x: 1}]\n");
        let mut diag = Diagnostics::default();
        let mut root = Object::new(&value, "", &mut diag).expect("mapping");
        assert_eq!(root.integer("cores", 10, &mut diag), None);
        let items = root.list("items", &mut diag);
        assert!(items[1].object(&mut diag).is_some());
        assert_eq!(items[0].string(&mut diag), None);
        let messages: Vec<_> = diag.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "cores: expected an integer, found a string",
                "items[0]: expected a string, found a number"
            ]
        );
    }

    #[test]
    fn null_means_unset_and_out_of_range_integers_are_named() {
        let value = parse("a: null\nb: 300\nc: -1\n");
        let mut diag = Diagnostics::default();
        let mut root = Object::new(&value, "x", &mut diag).expect("mapping");
        assert!(root.field("a").is_none());
        assert_eq!(root.integer("b", 255, &mut diag), None);
        assert_eq!(root.integer("c", 255, &mut diag), None);
        root.finish(&mut diag);
        assert_eq!(
            diag.problems[0].to_string(),
            "x.b: 300 is not an integer between 0 and 255"
        );
        assert_eq!(
            diag.problems[1].to_string(),
            "x.c: -1 is not an integer between 0 and 255"
        );
        assert_eq!(diag.problems.len(), 2);
    }

    #[test]
    fn quantities_accept_strings_and_numbers() {
        let value = parse("a: 1Gi\nb: 1024\nc: 12Q\n");
        let mut diag = Diagnostics::default();
        let mut root = Object::new(&value, "m", &mut diag).expect("mapping");
        assert_eq!(root.quantity("a", &mut diag), Some(1 << 30));
        assert_eq!(root.quantity("b", &mut diag), Some(1024));
        assert_eq!(root.quantity("c", &mut diag), None);
        assert!(diag.problems[0]
            .to_string()
            .starts_with("m.c: \"12Q\" is not a Kubernetes quantity"));
    }

    #[test]
    fn quotes_are_shortened() {
        assert_eq!(quote("abc"), "\"abc\"");
        assert!(quote(&"x".repeat(500)).len() < 70);
    }
}
